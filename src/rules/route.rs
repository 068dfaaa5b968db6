//! `match` rules: which action a recipient goes to, as OpenSMTPD's ruleset decides it.
//!
//! Rules are tried in file order and the first whose criteria all hold wins. Inside a rule the
//! criteria are checked in OpenSMTPD's fixed order (tag, from, for, helo, auth, tls,
//! mail-from, rcpt-to); the first false one skips the rule. A criterion that cannot be
//! evaluated (`tls`, which OpenSMTPD never records in the envelope) makes the whole lookup a
//! temporary failure.

use super::{RuleGraph, Service};
use crate::config::model::*;

/// What the rules can see of a recipient's session and transaction.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    /// The listener's tag (empty when it has none).
    pub tag: &'a str,
    /// The client address as text: `a.b.c.d`, `[v6]`, or `local` for the local socket.
    pub source: &'a str,
    /// Reverse DNS name of the client, `None` when unknown.
    pub rdns: Option<&'a str>,
    /// HELO/EHLO name.
    pub helo: &'a str,
    /// The session is authenticated (by AUTH, or because it came through the local socket).
    pub authenticated: bool,
    /// The authenticated user name, if any.
    pub auth_user: Option<&'a str>,
    /// The sender as `user@domain`, `@` for the null sender.
    pub sender: &'a str,
    /// The address being routed was produced by alias/virtual/.forward expansion.
    pub expanded: bool,
}

/// The outcome of routing one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Rule `rule` (0-based) matched and sends the address to `action`.
    Action { rule: usize, action: String },
    /// Rule `rule` matched and rejects the address.
    Reject { rule: usize },
    /// No rule matched: the address is refused like a `reject`.
    NoMatch,
    /// A rule could not be evaluated.
    TempFail,
}

fn split(addr: &str) -> (&str, &str) {
    match addr.rfind('@') {
        Some(i) => (&addr[..i], &addr[i + 1..]),
        None => (addr, ""),
    }
}

impl RuleGraph {
    fn builtin(&self, name: &str) -> Option<TableMatch> {
        self.config.table_named(name).map(|table| TableMatch {
            regex: false,
            table,
        })
    }

    /// Route `rcpt` (`user@domain`) through the `match` rules.
    pub fn route(&self, facts: &Facts, rcpt: &str) -> Verdict {
        for (i, rule) in self.config.rules.iter().enumerate() {
            match self.rule_matches(rule, facts, rcpt) {
                Some(true) => {
                    return match &rule.decision {
                        RuleDecision::Reject => Verdict::Reject { rule: i },
                        RuleDecision::Action(a) => Verdict::Action {
                            rule: i,
                            action: a.clone(),
                        },
                    };
                }
                Some(false) => continue,
                None => return Verdict::TempFail,
            }
        }
        Verdict::NoMatch
    }

    /// Does `rule` match? `None` when it cannot be evaluated.
    pub fn rule_matches(&self, rule: &Rule, f: &Facts, rcpt: &str) -> Option<bool> {
        let neg = |n: bool, v: bool| if n { !v } else { v };
        let (_, rcpt_domain) = split(rcpt);
        if let Some(t) = &rule.tag
            && !neg(
                t.negate,
                self.table_match(&t.value, f.tag, Service::String)?,
            )
        {
            return Some(false);
        }
        // from (default: from local)
        let from = rule.from.unwrap_or(Negatable {
            negate: false,
            value: FromCriterion::Local,
        });
        let source = if f.expanded { "local" } else { f.source };
        let from_ok = match &from.value {
            FromCriterion::Socket => {
                if f.expanded {
                    return Some(false);
                }
                neg(from.negate, f.source == "local")
            }
            FromCriterion::Local => neg(
                from.negate,
                self.builtin_match("<localhost>", source, Service::Netaddr)?,
            ),
            FromCriterion::Any | FromCriterion::Auth(_) | FromCriterion::MailFrom(_) => {
                let any = self.builtin_match("<anyhost>", source, Service::Netaddr)?;
                if matches!(from.value, FromCriterion::Any) {
                    neg(from.negate, any)
                } else {
                    any
                }
            }
            FromCriterion::Src(tm) => {
                neg(from.negate, self.table_match(tm, source, Service::Netaddr)?)
            }
            FromCriterion::Rdns(None) => {
                if f.expanded {
                    return Some(false);
                }
                neg(from.negate, f.rdns.is_some())
            }
            FromCriterion::Rdns(Some(tm)) => match f.rdns {
                None => false,
                Some(name) => neg(from.negate, self.table_match(tm, name, Service::Domain)?),
            },
        };
        if !from_ok {
            return Some(false);
        }
        // for (default: for local)
        let for_ = rule.for_.unwrap_or(Negatable {
            negate: false,
            value: ForCriterion::Local,
        });
        let for_ok = match &for_.value {
            ForCriterion::Local => neg(
                for_.negate,
                self.builtin_match("<localnames>", rcpt_domain, Service::Domain)?,
            ),
            ForCriterion::Any => neg(
                for_.negate,
                self.builtin_match("<anydestination>", rcpt_domain, Service::Domain)?,
            ),
            ForCriterion::RcptTo(_) => {
                self.builtin_match("<anydestination>", rcpt_domain, Service::Domain)?
            }
            ForCriterion::Domain(tm) => neg(
                for_.negate,
                self.table_match(tm, rcpt_domain, Service::Domain)?,
            ),
        };
        if !for_ok {
            return Some(false);
        }
        if let Some(h) = &rule.helo
            && !neg(
                h.negate,
                self.table_match(&h.value, f.helo, Service::Domain)?,
            )
        {
            return Some(false);
        }
        if let Some(a) = &rule.auth {
            let v = match (&a.value, f.authenticated) {
                (None, authed) => authed,
                (Some(_), false) => false,
                (Some(tm), true) => {
                    self.table_match(tm, f.auth_user.unwrap_or(""), Service::Auth)?
                }
            };
            if !neg(a.negate, v) {
                return Some(false);
            }
        }
        if rule.tls.is_some() {
            return None;
        }
        if let Some(m) = &rule.mail_from
            && !neg(
                m.negate,
                self.table_match(&m.value, f.sender, Service::Mailaddr)?,
            )
        {
            return Some(false);
        }
        if let Some(m) = &rule.rcpt_to
            && !neg(
                m.negate,
                self.table_match(&m.value, rcpt, Service::Mailaddr)?,
            )
        {
            return Some(false);
        }
        Some(true)
    }

    fn builtin_match(&self, name: &str, subject: &str, service: Service) -> Option<bool> {
        match self.builtin(name) {
            Some(tm) => self.table_match(&tm, subject, service),
            None => Some(false),
        }
    }

    /// A rule as OpenSMTPD's traces print it (`match from any for domain domains action x`).
    pub fn rule_to_text(&self, rule: &Rule) -> String {
        let name = |tm: &TableMatch| {
            let t = &self.config.table(tm.table).name;
            t.clone()
        };
        let neg = |n: bool| if n { " !" } else { " " };
        let mut s = String::from("match");
        if let Some(t) = &rule.tag {
            s += &format!("{}tag {}", neg(t.negate), name(&t.value));
        }
        if let Some(f) = &rule.from {
            s += &match &f.value {
                FromCriterion::Socket => format!("{}from socket", neg(f.negate)),
                FromCriterion::Local => format!("{}from local", neg(f.negate)),
                FromCriterion::Any | FromCriterion::Auth(_) | FromCriterion::MailFrom(_) => {
                    format!("{}from any", neg(f.negate))
                }
                FromCriterion::Src(t) => format!("{}from src {}", neg(f.negate), name(t)),
                FromCriterion::Rdns(None) => format!("{}from rdns", neg(f.negate)),
                FromCriterion::Rdns(Some(t)) => format!("{}from rdns {}", neg(f.negate), name(t)),
            };
        }
        if let Some(f) = &rule.for_ {
            s += &match &f.value {
                ForCriterion::Local => format!("{}for local", neg(f.negate)),
                ForCriterion::Any | ForCriterion::RcptTo(_) => format!("{}for any", neg(f.negate)),
                ForCriterion::Domain(t) => format!("{}for domain {}", neg(f.negate), name(t)),
            };
        }
        if let Some(h) = &rule.helo {
            s += &format!("{}helo {}", neg(h.negate), name(&h.value));
        }
        if let Some(a) = &rule.auth {
            s += &match &a.value {
                None => format!("{}auth", neg(a.negate)),
                Some(t) => format!("{}auth {}", neg(a.negate), name(t)),
            };
        }
        if let Some(t) = &rule.tls {
            s += &format!("{}tls", neg(t.negate));
        }
        if let Some(m) = &rule.mail_from {
            s += &format!("{}mail-from {}", neg(m.negate), name(&m.value));
        }
        if let Some(m) = &rule.rcpt_to {
            s += &format!("{}rcpt-to {}", neg(m.negate), name(&m.value));
        }
        match &rule.decision {
            RuleDecision::Reject => s += " action reject",
            RuleDecision::Action(a) => s += &format!(" action {a}"),
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, parse::Options, system::System};
    use std::net::IpAddr;
    use std::sync::Arc;

    struct Fake;
    impl System for Fake {
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

    fn graph(text: &str) -> Arc<RuleGraph> {
        let opts = Options {
            defines: vec![],
            hostname: Some("mx.bsdsx.fr".into()),
        };
        let c = config::check_text("t.conf", text.as_bytes(), &opts, &Fake);
        RuleGraph::compile(
            c.config
                .unwrap_or_else(|| panic!("{}", c.diagnostics.render(false, &|_| None))),
        )
    }

    fn facts(source: &str) -> Facts<'_> {
        Facts {
            source,
            sender: "sender@example.net",
            helo: "client.example.net",
            ..Facts::default()
        }
    }

    const WALKTHROUGH: &str = "table domains { \"bsdsx.fr\", \"*.bsdsx.fr\" }\n\
        action \"local\" mbox\naction \"relay\" relay\n\
        match from any for domain <domains> action \"local\"\n\
        match from local for any action \"relay\"\n";

    #[test]
    fn domain_wildcards_and_first_match() {
        let g = graph(WALKTHROUGH);
        let remote = facts("203.0.113.7");
        assert_eq!(
            g.route(&remote, "bar@bsdsx.fr"),
            Verdict::Action {
                rule: 0,
                action: "local".into()
            }
        );
        assert_eq!(
            g.route(&remote, "root@mail.bsdsx.fr"),
            Verdict::Action {
                rule: 0,
                action: "local".into()
            }
        );
        assert_eq!(g.route(&remote, "root@absdsx.fr"), Verdict::NoMatch);
        assert_eq!(g.route(&remote, "root@bsdsx.fr.fr"), Verdict::NoMatch);
        assert_eq!(
            g.route(&remote, "foo@example.com"),
            Verdict::NoMatch,
            "never an open relay"
        );
        let local = facts("127.0.0.1");
        assert_eq!(
            g.route(&local, "foo@example.com"),
            Verdict::Action {
                rule: 1,
                action: "relay".into()
            }
        );
        // 127.0.0.5 is not an interface address: not local.
        assert_eq!(
            g.route(&facts("127.0.0.5"), "foo@example.com"),
            Verdict::NoMatch
        );
    }

    #[test]
    fn defaults_are_from_local_for_local() {
        let g = graph("action \"l\" mbox\nmatch action \"l\"\n");
        assert_eq!(
            g.route(&facts("127.0.0.1"), "root@mx.bsdsx.fr"),
            Verdict::Action {
                rule: 0,
                action: "l".into()
            }
        );
        assert_eq!(
            g.route(&facts("127.0.0.1"), "root@localhost"),
            Verdict::Action {
                rule: 0,
                action: "l".into()
            }
        );
        assert_eq!(
            g.route(&facts("127.0.0.1"), "root@[127.0.0.1]"),
            Verdict::Action {
                rule: 0,
                action: "l".into()
            }
        );
        assert_eq!(
            g.route(&facts("10.0.0.1"), "root@mx.bsdsx.fr"),
            Verdict::NoMatch
        );
        assert_eq!(
            g.route(&facts("127.0.0.1"), "root@example.org"),
            Verdict::NoMatch
        );
    }

    #[test]
    fn auth_tls_reject_and_negation() {
        let g = graph(
            "table users { alice, \"bob@example.org\" }\naction \"r\" relay\n\
             match from any for any tls action \"r\"\n",
        );
        assert_eq!(
            g.route(&facts("10.0.0.1"), "x@example.org"),
            Verdict::TempFail
        );
        let g = graph(
            "table users { alice, \"bob@example.org\" }\naction \"r\" relay\n\
             match from any for domain { spam.example } reject\n\
             match from auth <users> for any action \"r\"\n\
             match !from auth for domain { example.org } action \"r\"\n",
        );
        let mut f = facts("10.0.0.1");
        assert_eq!(g.route(&f, "x@spam.example"), Verdict::Reject { rule: 0 });
        assert_eq!(g.route(&f, "x@elsewhere.example"), Verdict::NoMatch);
        assert_eq!(
            g.route(&f, "x@example.org"),
            Verdict::Action {
                rule: 2,
                action: "r".into()
            }
        );
        f.authenticated = true;
        f.auth_user = Some("alice");
        assert_eq!(
            g.route(&f, "x@elsewhere.example"),
            Verdict::Action {
                rule: 1,
                action: "r".into()
            }
        );
        f.auth_user = Some("mallory");
        assert_eq!(g.route(&f, "x@elsewhere.example"), Verdict::NoMatch);
        assert_eq!(
            g.route(&f, "x@example.org"),
            Verdict::NoMatch,
            "authenticated: the !from auth rule does not apply"
        );
    }

    #[test]
    fn sender_recipient_src_rdns_helo_tag() {
        let g = graph(
            "action \"a\" mbox\n\
             match from src { 192.0.2.0/24 } for any mail-from { \"@partner.example\" } action \"a\"\n\
             match from rdns { \"*.trusted.example\" } for rcpt-to regex { \"^postmaster@\" } action \"a\"\n\
             match from any for any helo { \"mx.friend.example\" } tag { inbound } action \"a\"\n",
        );
        let mut f = facts("192.0.2.9");
        f.sender = "x@partner.example";
        assert_eq!(
            g.route(&f, "a@b.example"),
            Verdict::Action {
                rule: 0,
                action: "a".into()
            }
        );
        f.sender = "@";
        assert_eq!(g.route(&f, "a@b.example"), Verdict::NoMatch);
        let mut f = facts("198.51.100.1");
        f.rdns = Some("a.trusted.example");
        assert_eq!(
            g.route(&f, "PostMaster@x.example"),
            Verdict::Action {
                rule: 1,
                action: "a".into()
            }
        );
        assert_eq!(g.route(&f, "root@x.example"), Verdict::NoMatch);
        let mut f = facts("198.51.100.1");
        f.helo = "mx.friend.example";
        assert_eq!(g.route(&f, "root@x.example"), Verdict::NoMatch);
        f.tag = "inbound";
        assert_eq!(
            g.route(&f, "root@x.example"),
            Verdict::Action {
                rule: 2,
                action: "a".into()
            }
        );
    }

    #[test]
    fn trace_text() {
        let g = graph(WALKTHROUGH);
        assert_eq!(
            g.rule_to_text(&g.config.rules[0]),
            "match from any for domain domains action local"
        );
        assert_eq!(
            g.rule_to_text(&g.config.rules[1]),
            "match from local for any action relay"
        );
    }
}
