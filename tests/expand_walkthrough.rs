//! The walkthrough of the specification's baseline (OpenSMTPD 6.8 with the bsdsx.fr
//! configuration): every RCPT of sessions 1 and 2 is expanded and its `-T expand` and `-v`
//! lines are compared with the lines OpenSMTPD wrote (pointers aside); then a virtual-domain
//! variant of the same walkthrough, with its exact `-T expand`, `-T rules` and `-T lookup`
//! lines.

mod expand_support;

use std::collections::BTreeMap;

use expand_support::*;
use smtpd::config::model::LocalMethod;
use smtpd::expand::forward::FakeForwards;
use smtpd::expand::node::Mailaddr;
use smtpd::expand::userbase::{FakePasswd, UserInfo};
use smtpd::expand::{Delivery, ExpandOutcome, Sources, Target};

const BASELINE_CONF: &str = r#"listen on 127.0.0.1 port 2525

table domains { "bsdsx.fr", "*.bsdsx.fr" }
table aliases { abuse = postmaster, postmaster = root, root = foo }
table users { foo = "2000:2000:/var/empty", bar = "2000:2000:/var/empty" }

action "local_mail" maildir "/tmp/vmail/%{rcpt}" junk userbase <users> alias <aliases>

match from any for domain <domains> action "local_mail"
"#;

/// baseline.md §1.3, the `expand:` and `debug:` lines of session 1, verbatim.
const BASELINE_SESSION_1: &str = include_str!("data/baseline_session1_expand.txt");

fn addr(s: &str) -> Mailaddr {
    Mailaddr::parse(s)
}

fn vmail_maildir() -> LocalMethod {
    LocalMethod::Maildir {
        path: Some("/tmp/vmail/%{rcpt}".into()),
        junk: true,
    }
}

fn user(name: &str, uid: u32, home: &str) -> UserInfo {
    UserInfo {
        name: name.into(),
        uid,
        gid: uid,
        home: home.into(),
    }
}

/// The baseline blocks, one per RCPT (each ends with the main tree being cleared).
fn baseline_blocks() -> Vec<Vec<String>> {
    let mut blocks = vec![];
    let mut cur = vec![];
    for l in BASELINE_SESSION_1.lines().filter(|l| !l.is_empty()) {
        cur.push(l.to_string());
        if l == "expand: 0x55d81a3861c8: clearing expand tree" {
            blocks.push(std::mem::take(&mut cur));
        }
    }
    assert!(cur.is_empty());
    blocks
}

#[test]
fn session_1_trace_matches_opensmtpd_line_for_line() {
    let g = graph("vm", BASELINE_CONF);
    let passwd = FakePasswd::new();
    let forwards = FakeForwards::new();
    let includes = BTreeMap::new();
    let sources = Sources {
        passwd: &passwd,
        forwards: &forwards,
        includes: &includes,
    };
    let f = facts("127.0.0.1", "@");
    let rcpts = [
        "abuse@bsdsx.fr",
        "postmaster@bsdsx.fr",
        "root@bsdsx.fr",
        "foo@bsdsx.fr",
        "bar@bsdsx.fr",
        "nobody@bsdsx.fr",
        "foo@sub.bsdsx.fr",
        "foo@other.example",
    ];
    let blocks = baseline_blocks();
    assert_eq!(blocks.len(), rcpts.len());
    for (rcpt, expected) in rcpts.iter().zip(blocks) {
        let (outcome, lines) = run(&g, &f, rcpt, &sources);
        let ours: Vec<String> = lines
            .iter()
            .filter(|l| l.starts_with("expand:") || l.starts_with("debug:"))
            .cloned()
            .collect();
        assert_eq!(
            without_pointers(&ours),
            without_pointers(&expected),
            "trace of {rcpt}"
        );
        assert_parents_known(&ours);
        let refused = ["nobody@bsdsx.fr", "foo@other.example"].contains(rcpt);
        match outcome {
            ExpandOutcome::Refused(r) => {
                assert!(refused, "{rcpt} refused: {r:?}");
                assert_eq!(r.reply(rcpt), format!("550 Invalid recipient: <{rcpt}>"));
                assert!(!r.temporary);
            }
            ExpandOutcome::Accepted(d) => {
                assert!(!refused, "{rcpt} accepted");
                let name = if *rcpt == "bar@bsdsx.fr" {
                    "bar"
                } else {
                    "foo"
                };
                // Aliases are delivered as the final user, with the RCPT as dest and rcpt
                // (the maildir is `%{rcpt}`: each alias gets its own, as observed).
                assert_eq!(
                    d,
                    vec![Delivery {
                        action: "local_mail".into(),
                        rcpt: addr(rcpt),
                        dest: addr(rcpt),
                        target: Target::Mailbox {
                            user: user(name, 2000, "/var/empty"),
                            subaddress: String::new(),
                            method: vmail_maildir(),
                        },
                    }]
                );
            }
        }
    }
}

#[test]
fn session_1_pointers_are_stable_per_expansion() {
    let g = graph("vm", BASELINE_CONF);
    let (passwd, forwards, includes) = (FakePasswd::new(), FakeForwards::new(), BTreeMap::new());
    let sources = Sources {
        passwd: &passwd,
        forwards: &forwards,
        includes: &includes,
    };
    let f = facts("127.0.0.1", "@");
    let (_, a) = run(&g, &f, "abuse@bsdsx.fr", &sources);
    let (_, b) = run(&g, &f, "abuse@bsdsx.fr", &sources);
    assert_eq!(a, b);
    let a: Vec<String> = a
        .into_iter()
        .filter(|l| !l.starts_with("lookup:"))
        .collect();
    // The rule and its dispatcher print as fixed numbers, the tree and nodes as allocations.
    assert_eq!(
        a[0],
        "expand: 0x1000: expand_insert() called for address:abuse@bsdsx.fr[parent=(nil), rule=(nil)]"
    );
    assert_eq!(a[1], "expand: 0x1000: inserted node 0x1060");
    assert_eq!(
        a[4],
        "expand: 0x1000: expand_insert() called for username:abuse[parent=0x1060, rule=0xa0000, dispatcher=0xd0000]"
    );
}

/// baseline.md §1.5: bare local parts qualified with the host name, case, `+tag`.
#[test]
fn session_2_bare_names_case_and_tags() {
    let g = graph("vm", BASELINE_CONF);
    let (passwd, forwards, includes) = (FakePasswd::new(), FakeForwards::new(), BTreeMap::new());
    let sources = Sources {
        passwd: &passwd,
        forwards: &forwards,
        includes: &includes,
    };
    let f = facts("127.0.0.1", "@");
    let mut all = vec![];
    let mut replies = vec![];
    for rcpt in [
        "abuse@vm",
        "postmaster@vm",
        "Postmaster@vm",
        "foo@vm",
        "FOO@BSDSX.FR",
        "foo+tag@bsdsx.fr",
        "bsdsx.fr@vm",
        "bar@bsdsx.fr",
    ] {
        let (outcome, lines) = run(&g, &f, rcpt, &sources);
        all.extend(
            lines.into_iter().filter(|l| {
                l.starts_with("expand: lka_expand:") || l.contains(".forward for user")
            }),
        );
        replies.push(match &outcome {
            ExpandOutcome::Refused(r) => r.reply(rcpt),
            ExpandOutcome::Accepted(_) => "250".into(),
        });
        if rcpt == "foo+tag@bsdsx.fr" {
            let d = outcome.deliveries().unwrap();
            assert_eq!(
                d[0].target,
                Target::Mailbox {
                    user: user("foo", 2000, "/var/empty"),
                    subaddress: "tag".into(),
                    method: vmail_maildir(),
                }
            );
        }
    }
    assert_eq!(
        replies,
        [
            "550 Invalid recipient: <abuse@vm>",
            "550 Invalid recipient: <postmaster@vm>",
            "550 Invalid recipient: <Postmaster@vm>",
            "550 Invalid recipient: <foo@vm>",
            "250",
            "250",
            "550 Invalid recipient: <bsdsx.fr@vm>",
            "250",
        ]
    );
    let expected = "expand: lka_expand: address: abuse@vm [depth=0]
expand: lka_expand: address: postmaster@vm [depth=0]
expand: lka_expand: address: Postmaster@vm [depth=0]
expand: lka_expand: address: foo@vm [depth=0]
expand: lka_expand: address: FOO@BSDSX.FR [depth=0]
expand: lka_expand: username: foo [depth=1, sameuser=0]
expand: no .forward for user foo, just deliver
expand: lka_expand: address: foo+tag@bsdsx.fr [depth=0]
expand: lka_expand: username: foo+tag [depth=1, sameuser=0]
expand: no .forward for user foo, just deliver
expand: lka_expand: address: bsdsx.fr@vm [depth=0]
expand: lka_expand: address: bar@bsdsx.fr [depth=0]
expand: lka_expand: username: bar [depth=1, sameuser=0]
expand: no .forward for user bar, just deliver";
    assert_eq!(all, expected.lines().collect::<Vec<_>>());
}

/// The spec's §6.6 sequence with `-T rules` and `-T lookup` on (aliases, then a userinfo
/// table whose home is /home/foo). The rule's criteria are traced as `lookup: match` lines
/// before `rule #1 matched`, as 6.8's `table_match` writes them (`table.c`); §6.6's excerpt
/// leaves them out.
#[test]
fn rules_and_lookup_lines_of_an_alias_chain() {
    let g = graph(
        "mx.example.org",
        r#"table aliases { abuse = postmaster, postmaster = root, root = foo }
table users { foo = "2000:2000:/home/foo" }
table domains { example.org }
action "local_mail" mbox alias <aliases> userbase <users>
match from any for domain <domains> action "local_mail"
"#,
    );
    let (passwd, forwards, includes) = (FakePasswd::new(), FakeForwards::new(), BTreeMap::new());
    let sources = Sources {
        passwd: &passwd,
        forwards: &forwards,
        includes: &includes,
    };
    let (outcome, lines) = run(
        &g,
        &facts("192.0.2.1", "a@b.example"),
        "abuse@example.org",
        &sources,
    );
    assert!(outcome.deliveries().is_some(), "{outcome:?} {lines:#?}");
    let expected = r#"expand: 0x1000: expand_insert() called for address:abuse@example.org[parent=(nil), rule=(nil)]
expand: 0x1000: inserted node 0x1060
expand: lka_expand: address: abuse@example.org [depth=0]
lookup: match "192.0.2.1" as NETADDR in table static:<anyhost> -> true
lookup: match "example.org" as DOMAIN in table static:domains -> true
rule #1 matched: match from any for domain domains action local_mail
expand: 0x1000: expand_insert() called for username:abuse[parent=0x1060, rule=0xa0000, dispatcher=0xd0000]
expand: 0x1000: inserted node 0x10c0
expand: lka_expand: username: abuse [depth=1, sameuser=0]
lookup: lookup "abuse" as ALIAS in table static:aliases -> "postmaster"
expand: 0x1120: expand_insert() called for username:postmaster[parent=(nil), rule=(nil)]
expand: 0x1120: inserted node 0x1180
expand: 0x1000: expand_insert() called for username:postmaster[parent=0x10c0, rule=0xa0000, dispatcher=0xd0000]
expand: 0x1000: inserted node 0x11e0
expand: 0x1120: clearing expand tree
expand: 0x1120: freeing expand tree
debug: aliases_get: returned 1 aliases
expand: lka_expand: username: postmaster [depth=2, sameuser=0]
lookup: lookup "postmaster" as ALIAS in table static:aliases -> "root"
expand: 0x1240: expand_insert() called for username:root[parent=(nil), rule=(nil)]
expand: 0x1240: inserted node 0x12a0
expand: 0x1000: expand_insert() called for username:root[parent=0x11e0, rule=0xa0000, dispatcher=0xd0000]
expand: 0x1000: inserted node 0x1300
expand: 0x1240: clearing expand tree
expand: 0x1240: freeing expand tree
debug: aliases_get: returned 1 aliases
expand: lka_expand: username: root [depth=3, sameuser=0]
lookup: lookup "root" as ALIAS in table static:aliases -> "foo"
expand: 0x1360: expand_insert() called for username:foo[parent=(nil), rule=(nil)]
expand: 0x1360: inserted node 0x13c0
expand: 0x1000: expand_insert() called for username:foo[parent=0x1300, rule=0xa0000, dispatcher=0xd0000]
expand: 0x1000: inserted node 0x1420
expand: 0x1360: clearing expand tree
expand: 0x1360: freeing expand tree
debug: aliases_get: returned 1 aliases
expand: lka_expand: username: foo [depth=4, sameuser=0]
lookup: lookup "foo" as ALIAS in table static:aliases -> none
lookup: lookup "foo" as USERINFO in table static:users -> "2000:2000:/home/foo"
expand: no .forward for user foo, just deliver
expand: 0x1000: clearing expand tree"#;
    assert_eq!(lines, expected.lines().collect::<Vec<_>>());
}

const ALIAS_CONF: &str = r#"table domains { "bsdsx.fr", "*.bsdsx.fr" }
table aliases { abuse = postmaster, postmaster = root, root = foo }
table users { foo = "2000:2000:/var/empty" }
action "local_mail" maildir junk userbase <users> alias <aliases>
action "outbound" relay
match from any for domain <domains> action "local_mail"
match from local for any action "outbound"
"#;

const VIRTUAL_CONF: &str = r#"table domains { "bsdsx.fr", "*.bsdsx.fr" }
table virtuals { "abuse@bsdsx.fr" = "postmaster@bsdsx.fr", "postmaster@bsdsx.fr" = "root@bsdsx.fr", "root@bsdsx.fr" = "foo@bsdsx.fr", "foo@bsdsx.fr" = vmail, "bar@bsdsx.fr" = vmail }
table users { vmail = "2000:2000:/var/empty" }
action "virt" maildir "/var/vmail/%{dest}" virtual <virtuals> userbase <users>
action "outbound" relay
match from any for domain <domains> action "virt"
match from local for any action "outbound"
"#;

fn replies(conf: &str, source: &str, rcpts: &[&str]) -> Vec<String> {
    let g = graph("mail.bsdsx.fr", conf);
    let (passwd, forwards, includes) = (FakePasswd::new(), FakeForwards::new(), BTreeMap::new());
    let sources = Sources {
        passwd: &passwd,
        forwards: &forwards,
        includes: &includes,
    };
    rcpts
        .iter()
        .map(
            |rcpt| match run(&g, &facts(source, "sender@client.example"), rcpt, &sources).0 {
                ExpandOutcome::Refused(r) => r.reply(rcpt),
                ExpandOutcome::Accepted(d) => format!(
                    "250 {}",
                    d.iter()
                        .map(|d| format!("{}:{}", d.action, d.dest))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            },
        )
        .collect()
}

/// The recipients of the walkthrough through an alias table: unknown users, domains that
/// only look like the served ones, and a remote domain (relayed for local clients only).
#[test]
fn alias_walkthrough_recipients() {
    let rcpts = [
        "nobody@mail.bsdsx.fr",
        "vmail@mail.bsdsx.fr",
        "bar@bsdsx.fr",
        "foo@example.com",
        "root@absdsx.fr",
        "root@bsdsx.fr.fr",
        "abuse@bsdsx.fr",
        "foo@sub.bsdsx.fr",
    ];
    assert_eq!(
        replies(ALIAS_CONF, "203.0.113.5", &rcpts),
        [
            "550 Invalid recipient: <nobody@mail.bsdsx.fr>",
            "550 Invalid recipient: <vmail@mail.bsdsx.fr>",
            "550 Invalid recipient: <bar@bsdsx.fr>",
            "550 Invalid recipient: <foo@example.com>",
            "550 Invalid recipient: <root@absdsx.fr>",
            "550 Invalid recipient: <root@bsdsx.fr.fr>",
            "250 local_mail:abuse@bsdsx.fr",
            "250 local_mail:foo@sub.bsdsx.fr",
        ]
    );
    let local = replies(ALIAS_CONF, "127.0.0.1", &rcpts);
    assert_eq!(local[3], "250 outbound:foo@example.com");
    assert_eq!(local[4], "250 outbound:root@absdsx.fr");
    assert_eq!(local[5], "250 outbound:root@bsdsx.fr.fr");
    assert_eq!(local[0], "550 Invalid recipient: <nobody@mail.bsdsx.fr>");
}

/// The same recipients through a virtual table: unknown addresses are `524 5.2.4`, and every
/// address a virtual entry produces is routed by the rules again.
#[test]
fn virtual_walkthrough_recipients() {
    let rcpts = [
        "nobody@mail.bsdsx.fr",
        "vmail@mail.bsdsx.fr",
        "bar@bsdsx.fr",
        "foo@example.com",
        "root@absdsx.fr",
        "root@bsdsx.fr.fr",
        "abuse@bsdsx.fr",
        "Root@BSDSX.fr",
    ];
    assert_eq!(
        replies(VIRTUAL_CONF, "203.0.113.5", &rcpts),
        [
            "524 5.2.4 Mailing list expansion problem: <nobody@mail.bsdsx.fr>",
            "524 5.2.4 Mailing list expansion problem: <vmail@mail.bsdsx.fr>",
            "250 virt:bar@bsdsx.fr",
            "550 Invalid recipient: <foo@example.com>",
            "550 Invalid recipient: <root@absdsx.fr>",
            "550 Invalid recipient: <root@bsdsx.fr.fr>",
            "250 virt:foo@bsdsx.fr",
            "250 virt:foo@bsdsx.fr",
        ]
    );
}

#[test]
fn virtual_walkthrough_exact_trace() {
    let g = graph("mail.bsdsx.fr", VIRTUAL_CONF);
    let (passwd, forwards, includes) = (FakePasswd::new(), FakeForwards::new(), BTreeMap::new());
    let sources = Sources {
        passwd: &passwd,
        forwards: &forwards,
        includes: &includes,
    };
    let (outcome, lines) = run(&g, &facts("203.0.113.5", "@"), "bar@bsdsx.fr", &sources);
    assert_eq!(
        outcome,
        ExpandOutcome::Accepted(vec![Delivery {
            action: "virt".into(),
            rcpt: addr("bar@bsdsx.fr"),
            dest: addr("bar@bsdsx.fr"),
            target: Target::Mailbox {
                user: user("vmail", 2000, "/var/empty"),
                subaddress: String::new(),
                method: LocalMethod::Maildir {
                    path: Some("/var/vmail/%{dest}".into()),
                    junk: false,
                },
            },
        }])
    );
    let expected = r#"expand: 0x1000: expand_insert() called for address:bar@bsdsx.fr[parent=(nil), rule=(nil)]
expand: 0x1000: inserted node 0x1060
expand: lka_expand: address: bar@bsdsx.fr [depth=0]
lookup: match "203.0.113.5" as NETADDR in table static:<anyhost> -> true
lookup: match "bsdsx.fr" as DOMAIN in table static:domains -> true
rule #1 matched: match from any for domain domains action virt
lookup: lookup "bar@bsdsx.fr" as ALIAS in table static:virtuals -> "vmail"
expand: 0x10c0: expand_insert() called for username:vmail[parent=(nil), rule=(nil)]
expand: 0x10c0: inserted node 0x1120
expand: 0x1000: expand_insert() called for username:vmail[parent=0x1060, rule=0xa0000, dispatcher=0xd0000]
expand: 0x1000: inserted node 0x1180
expand: 0x10c0: clearing expand tree
expand: 0x10c0: freeing expand tree
debug: aliases_virtual_get: 'bar@bsdsx.fr' resolved to 1 nodes
expand: lka_expand: username: vmail [depth=1, sameuser=0]
lookup: lookup "vmail@" as ALIAS in table static:virtuals -> none
lookup: lookup "vmail" as ALIAS in table static:virtuals -> none
lookup: lookup "vmail" as USERINFO in table static:users -> "2000:2000:/var/empty"
expand: no .forward for user vmail, just deliver
expand: 0x1000: clearing expand tree"#;
    assert_eq!(lines, expected.lines().collect::<Vec<_>>());

    // An unknown address: every key tried, then 524.
    let (outcome, lines) = run(
        &g,
        &facts("203.0.113.5", "@"),
        "nobody@mail.bsdsx.fr",
        &sources,
    );
    assert_eq!(
        outcome.refusal().map(|r| r.reply("nobody@mail.bsdsx.fr")),
        Some("524 5.2.4 Mailing list expansion problem: <nobody@mail.bsdsx.fr>".into())
    );
    assert_eq!(
        lines[3..],
        [
            "lookup: match \"203.0.113.5\" as NETADDR in table static:<anyhost> -> true",
            "lookup: match \"mail.bsdsx.fr\" as DOMAIN in table static:domains -> true",
            "rule #1 matched: match from any for domain domains action virt",
            "lookup: lookup \"nobody@mail.bsdsx.fr\" as ALIAS in table static:virtuals -> none",
            "lookup: lookup \"nobody\" as ALIAS in table static:virtuals -> none",
            "lookup: lookup \"@mail.bsdsx.fr\" as ALIAS in table static:virtuals -> none",
            "lookup: lookup \"@\" as ALIAS in table static:virtuals -> none",
            "expand: lka_expand: no aliases for virtual",
            "expand: 0x1000: clearing expand tree",
        ]
    );

    // A chain of virtual addresses: each one re-matched by the rules (as an expanded
    // address), the delivery's dest is the last address, its rcpt the original.
    let (outcome, lines) = run(&g, &facts("203.0.113.5", "@"), "abuse@bsdsx.fr", &sources);
    let d = outcome.deliveries().unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].rcpt.to_string(), d[0].dest.to_string()),
        ("abuse@bsdsx.fr".into(), "foo@bsdsx.fr".into())
    );
    assert_eq!(
        starting_with(&lines, "rule #").len(),
        4,
        "the RCPT and three expanded addresses"
    );
    assert_eq!(
        starting_with(&lines, "expand: lka_expand:"),
        [
            "expand: lka_expand: address: abuse@bsdsx.fr [depth=0]",
            "expand: lka_expand: address: postmaster@bsdsx.fr [depth=1]",
            "expand: lka_expand: address: root@bsdsx.fr [depth=2]",
            "expand: lka_expand: address: foo@bsdsx.fr [depth=3]",
            "expand: lka_expand: username: vmail [depth=4, sameuser=0]",
        ]
    );
}
