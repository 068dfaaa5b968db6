//! Arbitrary bytes as smtpd.conf: the check must never panic, and an accepted configuration
//! must print back to text that is accepted again and means the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    smtpd::config::fuzz_config(data);
});
