//! Arbitrary client bytes into the SMTP command layer: it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    smtpd::smtp::command::fuzz_command_line(data);
});
