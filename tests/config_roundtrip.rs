//! The printed configuration (`smtpd -n -v`) reads back to an equal rule graph: over every
//! accepted corpus configuration, and over generated configurations.

use std::path::Path;

use proptest::prelude::*;
use smtpd::config::{self, parse::Options, print::print, system::RealSystem};
use smtpd::rules::RuleGraph;

fn options() -> Options {
    Options {
        defines: Vec::new(),
        hostname: Some("mx.example.org".into()),
    }
}

fn graph_of(name: &str, text: &str) -> Result<std::sync::Arc<RuleGraph>, String> {
    let c = config::check_text(name, text.as_bytes(), &options(), &RealSystem);
    match c.config {
        Some(cfg) => Ok(RuleGraph::compile(cfg)),
        None => Err(c.diagnostics.render(false, &|_| None)),
    }
}

#[test]
fn corpus_configs_round_trip_to_equal_graphs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let stubs = root.join("stubs");
    let mut n = 0;
    for e in std::fs::read_dir(root.join("real")).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("@STUBS@", stubs.to_str().unwrap());
        let Ok(g1) = graph_of("a.conf", &text) else {
            continue;
        };
        let printed = print(&g1.config);
        let g2 = graph_of("b.conf", &printed)
            .unwrap_or_else(|e| panic!("{}: {e}\n{printed}", path.display()));
        assert!(
            g1 == g2,
            "{}: graphs differ after printing:\n{printed}",
            path.display()
        );
        assert_eq!(print(&g2.config), printed);
        n += 1;
    }
    assert!(n >= 30, "only {n} accepted configs");
}

/// Words that are safe as names and values (not reserved, no quoting trouble).
fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_.-]{0,8}".prop_filter("not a keyword", |s| !smtpd::config::lexer::is_keyword(s))
}

/// A name that stays a name with `prefix` in front (`t` + `ag` would be the keyword `tag`).
fn prefixed(prefix: &'static str) -> impl Strategy<Value = String> {
    name().prop_filter("not a keyword once prefixed", move |s| {
        !smtpd::config::lexer::is_keyword(&format!("{prefix}{s}"))
    })
}

fn table_body() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(name(), 1..4).prop_map(|v| format!("{{ {} }}", v.join(", "))),
        prop::collection::vec((name(), name()), 1..4).prop_map(|v| format!(
            "{{ {} }}",
            v.iter()
                .map(|(k, x)| format!("{k} = {x}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    ]
}

fn statement() -> impl Strategy<Value = String> {
    prop_oneof![
        (prefixed("t"), table_body()).prop_map(|(n, b)| format!("table t{n} {b}")),
        (1u16..65535, any::<bool>(), name()).prop_map(|(p, m, t)| format!(
            "listen on 127.0.0.1 port {p}{} tag {t}",
            if m { " mask-src" } else { "" }
        )),
        (
            name(),
            prop_oneof![
                Just("mbox".to_string()),
                Just("maildir".to_string()),
                name().prop_map(|p| format!("maildir \"/var/{p}\" junk")),
                name().prop_map(|c| format!("mda \"/bin/{c}\""))
            ]
        )
            .prop_map(|(n, m)| format!("action \"a{n}\" {m}")),
        (name(), name()).prop_map(|(n, h)| format!("action \"r{n}\" relay helo {h} tls")),
        (
            prefixed("f"),
            prop_oneof![Just("rdns"), Just("fcrdns"), Just("!rdns")],
            prop_oneof![
                Just("junk".to_string()),
                Just("bypass".to_string()),
                name().prop_map(|m| format!("reject \"550 {m}\""))
            ]
        )
            .prop_map(|(n, c, d)| format!("filter f{n} phase connect match {c} {d}")),
        (prop_oneof![
            Just("smtp max-message-size 10M"),
            Just("queue ttl 2d"),
            Just("smtp limit max-rcpt 10"),
            Just("bounce warn-interval 1h, 2h")
        ])
        .prop_map(String::from),
    ]
}

fn matches(actions: &[String]) -> Vec<String> {
    actions
        .iter()
        .enumerate()
        .map(|(i, a)| match i % 4 {
            0 => format!("match from any for domain {{ example.org, \"*.example.org\" }} action {a}"),
            1 => format!("match from src {{ 10.0.0.0/8 }} !for local mail-from regex \"^x\" action {a}"),
            2 => format!("match auth for any tag {{ t1 }} action {a}"),
            _ => format!("match from rdns {{ \"*.example.net\" }} for rcpt-to {{ \"@example.org\" }} action {a}"),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn generated_configs_round_trip(stmts in prop::collection::vec(statement(), 1..12)) {
        let mut text = String::new();
        let mut actions = Vec::new();
        for s in &stmts {
            text.push_str(s);
            text.push('\n');
            if let Some(rest) = s.strip_prefix("action ") {
                actions.push(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
        actions.dedup();
        actions.push("\"default\"".into());
        text.push_str("action \"default\" mbox\n");
        for m in matches(&actions) {
            text.push_str(&m);
            text.push('\n');
        }
        text.push_str("match for local action \"default\"\n");
        // Generated names may collide (a duplicate declaration); anything else must be accepted.
        match graph_of("gen.conf", &text) {
            Ok(g1) => {
                let printed = print(&g1.config);
                let g2 = graph_of("printed.conf", &printed).map_err(|e| TestCaseError::fail(format!("{e}\n{printed}")))?;
                prop_assert!(g1 == g2, "differs:\n{}\n---\n{}", text, printed);
            }
            Err(e) => prop_assert!(e.contains("already"), "generated config rejected: {}\n{}", e, text),
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "[ -~\t\n\\\\]{0,300}") {
        let _ = config::check_text("fuzz.conf", text.as_bytes(), &options(), &RealSystem);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = config::check_text("fuzz.conf", &bytes, &options(), &RealSystem);
    }
}
