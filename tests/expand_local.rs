//! Expansion scenarios beyond the walkthrough: loops and the depth limit, include files,
//! `error:` values, file and command destinations, `.forward` files (through the fake),
//! forward-only and expand-only actions, sub-addresses, virtual key order, userbase errors
//! and rule outcomes for expanded addresses. Replies and trace lines are OpenSMTPD's.

mod expand_support;

use std::collections::BTreeMap;

use expand_support::*;
use smtpd::expand::forward::{FakeForwards, ForwardOpen};
use smtpd::expand::node::Mailaddr;
use smtpd::expand::userbase::{FakePasswd, UserInfo};
use smtpd::expand::{Delivery, ExpandOutcome, RunAs, Sources, Target};
use smtpd::rules::RuleGraph;

/// An `example.org` server whose local action is `METHOD` with `OPTIONS`; relays for local
/// senders; users come from the (fake) password database.
fn conf(aliases: &str, method: &str, options: &str) -> String {
    // An inline table cannot be empty.
    let aliases = if aliases.is_empty() {
        "unused = foo"
    } else {
        aliases
    };
    format!(
        "table aliases {{ {aliases} }}\n\
         action \"local\" {method} alias <aliases> {options}\n\
         action \"outbound\" relay\n\
         match from any for domain {{ example.org }} action \"local\"\n\
         match from local for any action \"outbound\"\n"
    )
}

fn passwd() -> FakePasswd {
    FakePasswd::new()
        .with_user("foo", 1001, 1001, "/home/foo")
        .with_user("bar", 1002, 1002, "/home/bar")
        .with_user("alice", 1003, 1003, "/home/alice")
        .with_user("bob", 1004, 1004, "/home/bob")
        .with_user("carol", 1005, 1005, "/home/carol")
        .with_user("dave", 1006, 1006, "/home/dave")
}

fn info(name: &str) -> UserInfo {
    passwd_info(name).unwrap()
}

fn passwd_info(name: &str) -> Option<UserInfo> {
    use smtpd::expand::userbase::Userbase;
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        passwd().lookup(name).ok().flatten()
    })
}

struct World {
    passwd: FakePasswd,
    forwards: FakeForwards,
    includes: BTreeMap<String, String>,
}

impl World {
    fn new() -> World {
        World {
            passwd: passwd(),
            forwards: FakeForwards::new(),
            includes: BTreeMap::new(),
        }
    }

    fn sources(&self) -> Sources<'_> {
        Sources {
            passwd: &self.passwd,
            forwards: &self.forwards,
            includes: &self.includes,
        }
    }

    fn expand(&self, g: &RuleGraph, rcpt: &str) -> (ExpandOutcome, Vec<String>) {
        run(
            g,
            &facts("203.0.113.5", "sender@remote.example"),
            rcpt,
            &self.sources(),
        )
    }
}

fn reply(outcome: &ExpandOutcome, rcpt: &str) -> String {
    match outcome {
        ExpandOutcome::Refused(r) => r.reply(rcpt),
        ExpandOutcome::Accepted(_) => "250 2.1.5 Destination address valid: Recipient ok".into(),
    }
}

fn mailbox_users(outcome: &ExpandOutcome) -> Vec<String> {
    outcome
        .deliveries()
        .unwrap_or_else(|| panic!("refused: {outcome:?}"))
        .iter()
        .map(|d| match &d.target {
            Target::Mailbox { user, .. } => user.name.clone(),
            Target::File { path, .. } => path.clone(),
            Target::Command { command, .. } => format!("|{command}"),
            Target::Relay => format!("relay:{}", d.dest),
        })
        .collect()
}

#[test]
fn alias_loop_expands_to_nothing() {
    let g = graph("mx.example.org", &conf("a = b, b = a", "mbox", ""));
    let w = World::new();
    let (outcome, lines) = w.expand(&g, "a@example.org");
    assert_eq!(
        reply(&outcome, "a@example.org"),
        "524 5.2.4 Mailing list expansion problem: <a@example.org>"
    );
    assert!(lines.contains(&"expand: 0x1000: node found, discarding".to_string()));
    assert_eq!(
        lines[lines.len() - 2..],
        [
            "expand: lka_done: expanded to empty delivery list",
            "expand: 0x1000: clearing expand tree"
        ]
    );
}

#[test]
fn address_loop_stops_at_depth_ten() {
    let g = graph(
        "mx.example.org",
        &conf("a = \"b@example.org\", b = \"a@example.org\"", "mbox", ""),
    );
    let w = World::new();
    let (outcome, lines) = w.expand(&g, "a@example.org");
    assert_eq!(
        reply(&outcome, "a@example.org"),
        "524 5.2.4 Mailing list expansion problem: <a@example.org>"
    );
    let levels = starting_with(&lines, "expand: lka_expand:");
    assert_eq!(levels.len(), 11);
    assert_eq!(
        levels[9],
        "expand: lka_expand: username: a [depth=9, sameuser=0]"
    );
    assert_eq!(levels[10], "expand: lka_expand: node too deep.");
}

#[test]
fn long_alias_chain_hits_the_depth_limit() {
    let chain: Vec<String> = (1..12).map(|i| format!("u{i} = u{}", i + 1)).collect();
    let g = graph("mx.example.org", &conf(&chain.join(", "), "mbox", ""));
    let w = World::new();
    let (outcome, lines) = w.expand(&g, "u1@example.org");
    assert_eq!(
        reply(&outcome, "u1@example.org"),
        "524 5.2.4 Mailing list expansion problem: <u1@example.org>"
    );
    assert!(lines.contains(&"expand: lka_expand: username: u9 [depth=9, sameuser=0]".into()));
    assert!(!lines.iter().any(|l| l.contains("username: u10 [")));
    assert!(lines.contains(&"expand: lka_expand: node too deep.".into()));
    // A user at depth nine is still delivered.
    let chain: Vec<String> = (1..8)
        .map(|i| format!("u{i} = u{}", i + 1))
        .chain(["u8 = foo".into()])
        .collect();
    let g = graph("mx.example.org", &conf(&chain.join(", "), "mbox", ""));
    let (outcome, _) = w.expand(&g, "u1@example.org");
    assert_eq!(mailbox_users(&outcome), ["foo"]);
}

#[test]
fn one_delivery_per_user_per_rcpt() {
    let g = graph(
        "mx.example.org",
        &conf("list = \"a, b, foo, foo\", a = foo, b = foo", "mbox", ""),
    );
    let w = World::new();
    let (outcome, lines) = w.expand(&g, "list@example.org");
    assert_eq!(mailbox_users(&outcome), ["foo"]);
    // `foo` twice in the value: discarded by the value's own tree; again from `a` and `b`.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.ends_with(": node found, discarding"))
            .count(),
        3
    );
    assert!(lines.contains(&"debug: aliases_get: returned 3 aliases".into()));
}

#[test]
fn include_files_and_merge_order() {
    let g = graph(
        "mx.example.org",
        &conf(
            "list = \":include:/etc/mail/list, zed@remote.example, carol\", \
             broken = \":include:/nope\", other = \":include:/nope, bar\"",
            "mbox",
            "",
        ),
    );
    let mut w = World::new();
    w.includes.insert(
        "/etc/mail/list".into(),
        "# the members\nalice\nbob, #\ndave, :include:/etc/mail/other\n".into(),
    );
    let (outcome, lines) = w.expand(&g, "list@example.org");
    // Usernames of the value first, then the include's entries, then addresses (relayed:
    // expanded addresses are `from local`).
    assert_eq!(
        mailbox_users(&outcome),
        ["carol", "alice", "bob", "dave", "relay:zed@remote.example"]
    );
    assert!(lines.contains(&"debug: aliases_get: returned 3 aliases".into()));
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("/etc/mail/other") && l.contains("expand: 0x1000: expand_insert"))
    );

    // A missing include contributes nothing; alone it leaves the user to the userbase.
    let (outcome, lines) = w.expand(&g, "broken@example.org");
    assert_eq!(
        reply(&outcome, "broken@example.org"),
        "550 Invalid recipient: <broken@example.org>"
    );
    assert!(lines.contains(
        &"warn: failed to open include file \"/nope\".: No such file or directory".into()
    ));
    assert!(lines.contains(&"expand: lka_expand: user-part does not match system user".into()));
    let (outcome, _) = w.expand(&g, "other@example.org");
    assert_eq!(mailbox_users(&outcome), ["bar"]);
}

#[test]
fn error_values_refuse_with_their_text() {
    let g = graph(
        "mx.example.org",
        &conf(
            "err = \"error:550 go away\", later = \"error:421 try again later\"",
            "mbox",
            "",
        ),
    );
    let w = World::new();
    let (outcome, lines) = w.expand(&g, "err@example.org");
    assert_eq!(
        reply(&outcome, "err@example.org"),
        "550 go away: <err@example.org>"
    );
    assert!(!outcome.refusal().unwrap().temporary);
    assert!(lines.contains(&"expand: lka_expand: error: 550 go away [depth=2]".into()));
    let (outcome, _) = w.expand(&g, "later@example.org");
    assert_eq!(
        reply(&outcome, "later@example.org"),
        "421 try again later: <later@example.org>"
    );
    assert!(outcome.refusal().unwrap().temporary);
}

#[test]
fn invalid_alias_value_is_a_temporary_failure() {
    let g = graph(
        "mx.example.org",
        &conf("bad = \"foo, not valid\"", "mbox", ""),
    );
    let w = World::new();
    let (outcome, lines) = w.expand(&g, "bad@example.org");
    assert_eq!(
        reply(&outcome, "bad@example.org"),
        "424 4.2.4 Mailing list expansion problem: <bad@example.org>"
    );
    assert_eq!(
        lines[lines.len() - 6..],
        [
            "expand: 0x1120: expand_insert() called for username:foo[parent=(nil), rule=(nil)]",
            "expand: 0x1120: inserted node 0x1180",
            "expand: 0x1120: clearing expand tree",
            "expand: 0x1120: freeing expand tree",
            "expand: lka_expand: error in alias lookup",
            "expand: 0x1000: clearing expand tree",
        ]
    );
}

#[test]
fn commands_and_files_from_aliases_run_as_smtpd() {
    let g = graph(
        "mx.example.org",
        &conf(
            "pipe = \"|/bin/cat > /dev/null\", file = \"/var/mail/file\", both = \"foo, /var/mail/file, |/bin/true\"",
            "mbox",
            "",
        ),
    );
    let w = World::new();
    let (outcome, lines) = w.expand(&g, "pipe@example.org");
    assert_eq!(
        outcome.deliveries().unwrap(),
        [Delivery {
            action: "local".into(),
            rcpt: Mailaddr::parse("pipe@example.org"),
            dest: Mailaddr::parse("pipe@example.org"),
            target: Target::Command {
                command: "/bin/cat > /dev/null".into(),
                run_as: RunAs::Smtpd,
            },
        }]
    );
    assert!(lines.contains(&"expand: lka_expand: filter: /bin/cat > /dev/null [depth=2]".into()));
    assert!(lines.contains(&"commands executed from aliases run with opensmtpd privileges".into()));
    let (outcome, lines) = w.expand(&g, "file@example.org");
    assert_eq!(
        outcome.deliveries().unwrap()[0].target,
        Target::File {
            path: "/var/mail/file".into(),
            run_as: RunAs::Smtpd
        }
    );
    assert!(lines.contains(&"expand: lka_expand: filename: /var/mail/file [depth=2]".into()));
    let (outcome, _) = w.expand(&g, "both@example.org");
    assert_eq!(
        mailbox_users(&outcome),
        ["foo", "/var/mail/file", "|/bin/true"]
    );
}

#[test]
fn forward_file_with_self_command_and_remote_address() {
    let g = graph("mx.example.org", &conf("", "mbox", ""));
    let mut w = World::new();
    w.forwards = FakeForwards::new().with_file(
        "foo",
        "# keep a copy, run vacation, forward\nfoo, \"|/usr/bin/vacation foo\"\nfriend@remote.example\n",
    );
    let (outcome, lines) = w.expand(&g, "foo@example.org");
    let d = outcome.deliveries().unwrap();
    assert_eq!(
        mailbox_users(&outcome),
        [
            "foo",
            "|/usr/bin/vacation foo",
            "relay:friend@remote.example"
        ]
    );
    // The command runs as the user whose .forward named it.
    assert_eq!(
        d[1].target,
        Target::Command {
            command: "/usr/bin/vacation foo".into(),
            run_as: RunAs::User(info("foo")),
        }
    );
    assert_eq!(d[2].dest, Mailaddr::parse("friend@remote.example"));
    assert_eq!(d[2].rcpt, Mailaddr::parse("foo@example.org"));
    assert!(!lines.iter().any(|l| l.contains("opensmtpd privileges")));
    let expected_tail = [
        "expand: lka_expand: username: foo [depth=1, sameuser=0]",
        "lookup: lookup \"foo\" as ALIAS in table static:aliases -> none",
        "lookup: lookup \"foo\" as USERINFO in table getpwnam:<getpwnam> -> \"1001:1001:/home/foo\"",
        "expand: 0x1000: expand_insert() called for username:foo[parent=0x10c0, rule=0xa0000, dispatcher=0xd0000]",
        "expand: 0x1000: setting sameuser = 1",
        "expand: 0x1000: inserted node 0x1120",
        "expand: 0x1000: expand_insert() called for filter:/usr/bin/vacation foo[parent=0x10c0, rule=0xa0000, dispatcher=0xd0000]",
        "expand: 0x1000: inserted node 0x1180",
        "expand: 0x1000: expand_insert() called for address:friend@remote.example[parent=0x10c0, rule=0xa0000, dispatcher=0xd0000]",
        "expand: 0x1000: inserted node 0x11e0",
        "expand: lka_expand: username: foo [depth=2, sameuser=1]",
        "lookup: lookup \"foo\" as USERINFO in table getpwnam:<getpwnam> -> \"1001:1001:/home/foo\"",
        "expand: lka_expand: same user, submitting",
        "expand: lka_expand: filter: /usr/bin/vacation foo [depth=2]",
        "expand: lka_expand: address: friend@remote.example [depth=2]",
        // The address is routed again: rule #1 does not match, rule #2 does.
        "lookup: match \"local\" as NETADDR in table static:<anyhost> -> true",
        "lookup: match \"remote.example\" as DOMAIN in table static:<dynamic:0> -> false",
        "lookup: match \"local\" as NETADDR in table static:<localhost> -> true",
        "lookup: match \"remote.example\" as DOMAIN in table static:<anydestination> -> true",
        "rule #2 matched: match from local for any action outbound",
        "expand: 0x1000: clearing expand tree",
    ];
    assert_eq!(lines[lines.len() - expected_tail.len()..], expected_tail);
}

#[test]
fn forward_file_outcomes() {
    let g = graph("mx.example.org", &conf("", "mbox", ""));
    let cases: Vec<(ForwardOpen, &str, &[&str])> = vec![
        (
            ForwardOpen::Found(Vec::new()),
            "250 2.1.5 Destination address valid: Recipient ok",
            &[
                "info: forward file is empty",
                "expand: empty .forward for user foo, just deliver",
            ],
        ),
        (
            ForwardOpen::Found(b"# nothing but a comment\n".to_vec()),
            "250 2.1.5 Destination address valid: Recipient ok",
            &["expand: empty .forward for user foo, just deliver"],
        ),
        (
            ForwardOpen::Found(b"bar, b@d@x\n".to_vec()),
            "424 4.2.4 Mailing list expansion problem: <foo@example.org>",
            &[
                "info: parse error in forward file",
                "expand: temporary forward error for user foo",
            ],
        ),
        (
            ForwardOpen::Found(vec![b'a'; 4096]),
            "424 4.2.4 Mailing list expansion problem: <foo@example.org>",
            &[
                "info: forward file exceeds max size",
                "expand: temporary forward error for user foo",
            ],
        ),
        (
            ForwardOpen::Found(
                (0..101)
                    .map(|i| format!("u{i}@remote.example\n"))
                    .collect::<String>()
                    .into_bytes(),
            ),
            "424 4.2.4 Mailing list expansion problem: <foo@example.org>",
            &["info: forward file expanded too many nodes"],
        ),
        (
            ForwardOpen::PermanentFailure,
            "524 5.2.4 Mailing list expansion problem: <foo@example.org>",
            &["expand: ~/.forward failed for user foo"],
        ),
        (
            ForwardOpen::TemporaryFailure,
            "424 4.2.4 Mailing list expansion problem: <foo@example.org>",
            &[],
        ),
    ];
    for (open, expected_reply, expected_lines) in cases {
        let mut w = World::new();
        w.forwards = FakeForwards::new().with_outcome("foo", open.clone());
        let (outcome, lines) = w.expand(&g, "foo@example.org");
        assert_eq!(
            reply(&outcome, "foo@example.org"),
            expected_reply,
            "{open:?}"
        );
        for l in expected_lines {
            assert!(
                lines.contains(&l.to_string()),
                "{open:?}: missing {l} in {lines:#?}"
            );
        }
    }
    // A .forward that only repeats nodes already there is "empty" too; `:include:` entries
    // of a .forward are ignored.
    let mut w = World::new();
    w.forwards = FakeForwards::new().with_file("foo", ":include:/etc/passwd\n");
    let (outcome, lines) = w.expand(&g, "foo@example.org");
    assert_eq!(mailbox_users(&outcome), ["foo"]);
    assert!(lines.contains(&"expand: empty .forward for user foo, just deliver".into()));
}

#[test]
fn forward_only_and_expand_only() {
    for (method, no_file, with_pipe) in [
        (
            "forward-only",
            (
                "424 4.2.4 Mailing list expansion problem",
                "expand: no .forward for user foo on forward-only rule",
            ),
            (
                "451 Temporary failure",
                Some("expand: filter matched on forward-only rule"),
            ),
        ),
        (
            "expand-only",
            (
                "524 5.2.4 Mailing list expansion problem",
                "expand: no .forward for user foo and no default action on rule",
            ),
            ("250 2.1.5 Destination address valid: Recipient ok", None),
        ),
    ] {
        let g = graph("mx.example.org", &conf("", method, ""));
        let w = World::new();
        let (outcome, lines) = w.expand(&g, "foo@example.org");
        assert_eq!(
            reply(&outcome, "foo@example.org"),
            format!("{}: <foo@example.org>", no_file.0)
        );
        assert!(lines.contains(&no_file.1.to_string()), "{lines:#?}");

        let mut w = World::new();
        w.forwards = FakeForwards::new().with_file("foo", "|/usr/bin/procmail\n");
        let (outcome, lines) = w.expand(&g, "foo@example.org");
        let expected = if with_pipe.0.starts_with("250") {
            with_pipe.0.to_string()
        } else {
            format!("{}: <foo@example.org>", with_pipe.0)
        };
        assert_eq!(reply(&outcome, "foo@example.org"), expected, "{method}");
        if let Some(l) = with_pipe.1 {
            assert!(lines.contains(&l.to_string()));
        }

        // Forwarding elsewhere is what these methods are for.
        let mut w = World::new();
        w.forwards = FakeForwards::new().with_file("foo", "foo@remote.example\n");
        let (outcome, _) = w.expand(&g, "foo@example.org");
        assert_eq!(
            mailbox_users(&outcome),
            ["relay:foo@remote.example"],
            "{method}"
        );

        // Listing oneself leaves nothing to deliver to: refused (OpenSMTPD queues a
        // delivery that crashes).
        let mut w = World::new();
        w.forwards = FakeForwards::new().with_file("foo", "foo\n");
        let (outcome, lines) = w.expand(&g, "foo@example.org");
        assert_eq!(
            reply(&outcome, "foo@example.org"),
            format!("{}: <foo@example.org>", no_file.0),
            "{method}"
        );
        assert!(lines.contains(&format!(
            "expand: lka_submit: user foo has no mailbox on {method} rule"
        )));
    }
    let g = graph(
        "mx.example.org",
        &conf("e = \"error:550 no\"", "forward-only", ""),
    );
    let (outcome, lines) = World::new().expand(&g, "e@example.org");
    assert_eq!(
        reply(&outcome, "e@example.org"),
        "451 Temporary failure: <e@example.org>"
    );
    assert!(lines.contains(&"expand: error matched on forward-only rule".into()));
}

#[test]
fn sub_addresses_with_aliases() {
    let g = graph(
        "mx.example.org",
        &conf("\"foo+lists\" = bar, alice = bob", "maildir", ""),
    );
    let w = World::new();
    let (outcome, lines) = w.expand(&g, "Foo+Lists@example.org");
    assert_eq!(mailbox_users(&outcome), ["bar"]);
    assert!(lines.contains(
        &"lookup: lookup \"foo+lists\" as ALIAS in table static:aliases -> \"bar\"".into()
    ));
    let (outcome, lines) = w.expand(&g, "alice+news@example.org");
    assert_eq!(mailbox_users(&outcome), ["bob"]);
    // The rule's matches come first (`from any`, `for domain`), then the alias lookups.
    assert_eq!(
        starting_with(&lines, "lookup:")[..4],
        [
            "lookup: match \"203.0.113.5\" as NETADDR in table static:<anyhost> -> true",
            "lookup: match \"example.org\" as DOMAIN in table static:<dynamic:0> -> true",
            "lookup: lookup \"alice+news\" as ALIAS in table static:aliases -> none",
            "lookup: lookup \"alice\" as ALIAS in table static:aliases -> \"bob\"",
        ]
    );
    let (outcome, _) = w.expand(&g, "foo+x+y@example.org");
    match &outcome.deliveries().unwrap()[0].target {
        Target::Mailbox {
            user, subaddress, ..
        } => {
            assert_eq!((user.name.as_str(), subaddress.as_str()), ("foo", "x+y"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn virtual_keys_in_order_with_tags() {
    let g = graph(
        "mx.example.org",
        "table virt { \"x+tag@virt.test\" = foo, \"@virt.test\" = bar, \"@\" = dave }\n\
         action \"v\" mbox virtual <virt>\n\
         match from any for domain { virt.test, other.test } action \"v\"\n",
    );
    let w = World::new();
    let (outcome, lines) = w.expand(&g, "x+tag@virt.test");
    assert_eq!(mailbox_users(&outcome), ["foo"]);
    assert!(
        lines.contains(&"debug: aliases_virtual_get: 'x+tag@virt.test' resolved to 1 nodes".into())
    );
    let (outcome, lines) = w.expand(&g, "X+Other@virt.test");
    assert_eq!(mailbox_users(&outcome), ["bar"]);
    assert_eq!(
        starting_with(&lines, "lookup: lookup")[..5],
        [
            "lookup: lookup \"x+other@virt.test\" as ALIAS in table static:virt -> none",
            "lookup: lookup \"x@virt.test\" as ALIAS in table static:virt -> none",
            "lookup: lookup \"x+other\" as ALIAS in table static:virt -> none",
            "lookup: lookup \"x\" as ALIAS in table static:virt -> none",
            "lookup: lookup \"@virt.test\" as ALIAS in table static:virt -> \"bar\"",
        ]
    );
    let (outcome, _) = w.expand(&g, "anyone@other.test");
    assert_eq!(mailbox_users(&outcome), ["dave"]);
}

#[test]
fn userbase_errors_and_default_userbase() {
    let g = graph("mx.example.org", &conf("", "mbox", ""));
    let mut w = World::new();
    w.passwd = FakePasswd::new().failing("Input/output error");
    let (outcome, lines) = w.expand(&g, "foo@example.org");
    assert_eq!(
        reply(&outcome, "foo@example.org"),
        "451 Temporary failure: <foo@example.org>"
    );
    assert!(lines.contains(
        &"lookup: lookup \"foo\" as USERINFO in table getpwnam:<getpwnam> -> error: Input/output error".into()
    ));
    assert!(lines.contains(&"expand: lka_expand: backend error while searching user".into()));

    // Without a userbase the system database answers, lower-cased.
    let g = graph(
        "mx.example.org",
        "action \"l\" mbox\nmatch from any for domain { example.org } action \"l\"\n",
    );
    let (outcome, lines) = World::new().expand(&g, "Carol@example.org");
    assert_eq!(mailbox_users(&outcome), ["carol"]);
    assert!(lines.contains(
        &"lookup: lookup \"carol\" as USERINFO in table getpwnam:<getpwnam> -> \"1005:1005:/home/carol\"".into()
    ));

    // A malformed userinfo value is a backend error, not an unknown user.
    let g = graph(
        "mx.example.org",
        "table users { foo = \"x:1:/home/foo\" }\naction \"l\" mbox userbase <users>\n\
         match from any for domain { example.org } action \"l\"\n",
    );
    let (outcome, _) = World::new().expand(&g, "foo@example.org");
    assert_eq!(
        reply(&outcome, "foo@example.org"),
        "451 Temporary failure: <foo@example.org>"
    );
}

#[test]
fn rule_outcomes_for_the_rcpt_and_for_expanded_addresses() {
    let g = graph(
        "mx.example.org",
        "table aliases { out = \"x@remote.example\" }\n\
         action \"l\" mbox alias <aliases>\n\
         match from any for domain { spam.example.org } reject\n\
         match from any for domain { example.org } action \"l\"\n\
         match from any for domain { secure.example.org } tls action \"l\"\n",
    );
    let w = World::new();
    let (outcome, lines) = w.expand(&g, "x@spam.example.org");
    assert_eq!(
        reply(&outcome, "x@spam.example.org"),
        "550 Invalid recipient: <x@spam.example.org>"
    );
    assert!(
        lines.contains(
            &"rule #1 matched: match from any for domain <dynamic:0> action reject".into()
        ),
        "{lines:#?}"
    );
    let (outcome, lines) = w.expand(&g, "x@secure.example.org");
    assert_eq!(
        reply(&outcome, "x@secure.example.org"),
        "451 Temporary failure: <x@secure.example.org>"
    );
    assert!(lines.contains(&"temporary failure in processing of a rule".into()));
    // The alias target has no rule: the whole RCPT is refused, with the RCPT's address.
    let (outcome, lines) = w.expand(&g, "out@example.org");
    assert_eq!(
        reply(&outcome, "out@example.org"),
        "550 Invalid recipient: <out@example.org>"
    );
    assert!(lines.contains(&"expand: lka_expand: address: x@remote.example [depth=2]".into()));
    assert!(lines.contains(&"no rule matched".into()));
}

#[test]
fn relay_delivery_keeps_the_address() {
    let g = graph("mx.example.org", &conf("", "mbox", ""));
    let (outcome, lines) = run(
        &g,
        &facts("127.0.0.1", "me@example.org"),
        "Someone@Remote.Example",
        &World::new().sources(),
    );
    assert_eq!(
        outcome.deliveries().unwrap(),
        [Delivery {
            action: "outbound".into(),
            rcpt: Mailaddr::parse("Someone@Remote.Example"),
            dest: Mailaddr::parse("Someone@Remote.Example"),
            target: Target::Relay,
        }]
    );
    assert!(lines.contains(&"rule #2 matched: match from local for any action outbound".into()));
}
