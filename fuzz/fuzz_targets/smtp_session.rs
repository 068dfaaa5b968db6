//! Arbitrary client bytes into the SMTP session layer: it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    smtpd::smtp::session::fuzz_session(data);
});
