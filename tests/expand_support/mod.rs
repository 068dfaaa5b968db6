//! Shared by the `expand_*` tests: a configuration checker that needs no machine, and a
//! `tracing` subscriber that captures the lines smtpd would log (trace lines of every
//! category, debug, info and warning lines), in order.

#![allow(dead_code)]

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use smtpd::config::model::Family;
use smtpd::config::{self, parse::Options, system::System};
use smtpd::expand::{self, ExpandOutcome, Sources};
use smtpd::rules::RuleGraph;
use smtpd::rules::route::Facts;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// A machine with one interface, 127.0.0.1 (and ::1).
pub struct Machine;

impl System for Machine {
    fn resolve_listen(&self, _: &str, _: Option<Family>) -> Option<Vec<IpAddr>> {
        Some(vec!["127.0.0.1".parse().unwrap()])
    }
    fn service_port(&self, _: &str) -> Option<u16> {
        None
    }
    fn table_helper_exists(&self, _: &str) -> bool {
        false
    }
    fn local_addresses(&self) -> Vec<IpAddr> {
        vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()]
    }
}

/// Check and compile a configuration; panics with the diagnostics if it is refused.
pub fn graph(hostname: &str, text: &str) -> Arc<RuleGraph> {
    let opts = Options {
        defines: vec![],
        hostname: Some(hostname.into()),
    };
    let c = config::check_text("smtpd.conf", text.as_bytes(), &opts, &Machine);
    RuleGraph::compile(
        c.config
            .unwrap_or_else(|| panic!("{}", c.diagnostics.render(false, &|_| None))),
    )
}

/// The facts of a remote client at `source` sending from `sender` (`@` for `<>`).
pub fn facts<'a>(source: &'a str, sender: &'a str) -> Facts<'a> {
    Facts {
        source,
        rdns: Some("client.example"),
        helo: "client.example",
        sender,
        ..Facts::default()
    }
}

struct Lines(Arc<Mutex<Vec<String>>>);

struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            use std::fmt::Write as _;
            let _ = write!(self.0, "{value:?}");
        }
    }
}

impl<S: Subscriber> Layer<S> for Lines {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut m = Message(String::new());
        event.record(&mut m);
        self.0.lock().unwrap().push(m.0);
    }
}

/// Run `f`, returning what it returned and every line logged meanwhile on this thread.
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Lines(lines.clone()));
    let r = tracing::subscriber::with_default(subscriber, f);
    let out = lines.lock().unwrap().clone();
    (r, out)
}

/// Expand one RCPT, capturing the log lines.
pub fn run(
    graph: &RuleGraph,
    facts: &Facts,
    rcpt: &str,
    sources: &Sources,
) -> (ExpandOutcome, Vec<String>) {
    capture(|| expand::expand(graph, facts, rcpt, sources))
}

/// The lines with every pointer written as `0x?` (OpenSMTPD's pointers vary between runs).
pub fn without_pointers(lines: &[String]) -> Vec<String> {
    let re = regex::Regex::new(r"0x[0-9a-f]+").unwrap();
    lines
        .iter()
        .map(|l| re.replace_all(l, "0x?").into_owned())
        .collect()
}

/// The lines that start with `prefix`.
pub fn starting_with(lines: &[String], prefix: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.starts_with(prefix))
        .cloned()
        .collect()
}

/// Every `parent=0x...` pointer names a node inserted earlier into the same tree.
pub fn assert_parents_known(lines: &[String]) {
    let parent = regex::Regex::new(
        r"^expand: (0x[0-9a-f]+): expand_insert\(\) called for .*\[parent=(0x[0-9a-f]+)",
    )
    .unwrap();
    let inserted =
        regex::Regex::new(r"^expand: (0x[0-9a-f]+): inserted node (0x[0-9a-f]+)$").unwrap();
    let mut known: Vec<(String, String)> = Vec::new();
    for l in lines {
        if let Some(c) = parent.captures(l) {
            assert!(
                known.iter().any(|(t, n)| t == &c[1] && n == &c[2]),
                "parent of {l} was not inserted in that tree before"
            );
        }
        if let Some(c) = inserted.captures(l) {
            known.push((c[1].to_string(), c[2].to_string()));
        }
    }
}
