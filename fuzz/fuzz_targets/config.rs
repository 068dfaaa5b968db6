//! Arbitrary bytes as smtpd.conf: the check must never panic, and an accepted configuration
//! must print back to text that is accepted again and means the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpd::config::{self, parse::Options, print::print, system::System};
use std::net::IpAddr;

/// A machine with one loopback interface, so that the target does no real lookups.
struct Fake;

impl System for Fake {
    fn resolve_listen(&self, name: &str, _: Option<config::model::Family>) -> Option<Vec<IpAddr>> {
        match name {
            "lo" | "all" | "localhost" => Some(vec!["127.0.0.1".parse().ok()?]),
            _ => name.parse().ok().map(|ip| vec![ip]),
        }
    }
    fn service_port(&self, name: &str) -> Option<u16> {
        (name == "submission").then_some(587)
    }
    fn table_helper_exists(&self, _: &str) -> bool {
        false
    }
    fn local_addresses(&self) -> Vec<IpAddr> {
        vec!["127.0.0.1".parse().expect("address")]
    }
}

fuzz_target!(|data: &[u8]| {
    let opts = Options { defines: Vec::new(), hostname: Some("mx.example.org".into()) };
    let checked = config::check_text("fuzz.conf", data, &opts, &Fake);
    if let Some(cfg) = checked.config {
        let text = print(&cfg);
        let again = config::check_text("printed.conf", text.as_bytes(), &opts, &Fake);
        let cfg2 = again.config.expect("printed configuration must be accepted");
        assert!(cfg == cfg2, "printed configuration differs:\n{text}");
    }
});
