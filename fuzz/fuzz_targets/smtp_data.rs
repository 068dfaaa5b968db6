//! Arbitrary client bytes into the SMTP data layer: it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    smtpd::smtp::data::fuzz_data(data);
});
