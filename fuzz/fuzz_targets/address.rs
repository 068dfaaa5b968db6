//! Arbitrary text as addresses, alias and `.forward` values, and relay URLs: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    smtpd::smtp::address::fuzz_address(data);
});
