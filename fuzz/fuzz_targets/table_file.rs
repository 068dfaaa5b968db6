//! Arbitrary bytes as a table file or a makemap database: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = smtpd::table::file::parse("fuzz", &String::from_utf8_lossy(data));
    let _ = smtpd::table::db::parse(data);
});
