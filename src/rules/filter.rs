//! Builtin filters at one phase: OpenSMTPD's chain semantics (§3.3–3.5 of the reference).
//!
//! Members run in order; a false condition passes to the next member; `report` continues;
//! `junk` marks and skips the rest of the phase's chain; `bypass` skips the rest of the
//! phase's chain; `reject`, `disconnect` and `rewrite` end the phase with their decision.

use super::{ChainStep, PhaseChains, RuleGraph};
use crate::config::model::{Condition, Decision, Phase, TableMatch};

/// What the session knows when a filter runs.
#[derive(Debug, Clone, Default)]
pub struct FilterFacts<'a> {
    /// Client address text (`a.b.c.d`, `[v6]`, `local`).
    pub source: &'a str,
    /// Reverse name, `None` when unknown.
    pub rdns: Option<&'a str>,
    /// Forward-confirmed reverse DNS passed.
    pub fcrdns: bool,
    pub helo: &'a str,
    /// Authenticated user, if any.
    pub auth_user: Option<&'a str>,
    /// The MAIL FROM address without brackets (empty for `<>`).
    pub mail_from: &'a str,
    /// The RCPT TO address being processed.
    pub rcpt_to: &'a str,
}

/// A chain's decision for one phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterOutcome {
    Proceed,
    Junk,
    Reject(String),
    Disconnect(String),
    Rewrite(String),
}

/// One trace/report line produced while running a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterNote {
    pub filter: String,
    pub decision: &'static str,
}

impl RuleGraph {
    fn condition(&self, c: &Condition, f: &FilterFacts) -> bool {
        let tm = |tm: &TableMatch, subject: &str, domain: bool, mail: bool| {
            let t = self.table(tm.table);
            if tm.regex {
                t.match_regex(subject)
            } else if mail {
                t.match_mailaddr(subject, self.config.smtp.sub_addr_delim)
            } else if domain {
                t.match_domain(subject)
            } else {
                t.contains(subject)
            }
        };
        match c {
            Condition::Fcrdns => f.fcrdns,
            Condition::Rdns(None) => f
                .rdns
                .is_some_and(|n| n.parse::<std::net::IpAddr>().is_err()),
            Condition::Rdns(Some(t)) => tm(t, f.rdns.unwrap_or("<unknown>"), true, false),
            Condition::Src(t) => {
                if t.regex {
                    self.table(t.table).match_regex(f.source)
                } else {
                    self.table(t.table).match_netaddr(f.source)
                }
            }
            Condition::Helo(t) => tm(t, f.helo, true, false),
            Condition::Auth(None) => f.auth_user.is_some(),
            Condition::Auth(Some(t)) => f.auth_user.is_some_and(|u| tm(t, u, false, false)),
            Condition::MailFrom(t) => tm(t, f.mail_from, false, true),
            Condition::RcptTo(t) => tm(t, f.rcpt_to, false, true),
        }
    }

    /// Run the builtin members of `chain` hooked on `phase`.
    pub fn run_filters(
        &self,
        chain: &PhaseChains,
        phase: Phase,
        facts: &FilterFacts,
    ) -> (FilterOutcome, Vec<FilterNote>) {
        let mut notes = Vec::new();
        let Some(steps) = chain.phases.get(&phase) else {
            return (FilterOutcome::Proceed, notes);
        };
        for step in steps {
            let ChainStep::Builtin { filter, rule } = step else {
                // External filter processes are not run yet: they let everything through.
                continue;
            };
            let holds = self.condition(&rule.condition, facts) != rule.negate;
            if !holds {
                continue;
            }
            let (outcome, word) = match &rule.decision {
                Decision::Report(_) => {
                    notes.push(FilterNote {
                        filter: filter.clone(),
                        decision: "report",
                    });
                    continue;
                }
                Decision::Bypass => (FilterOutcome::Proceed, "bypass"),
                Decision::Junk => (FilterOutcome::Junk, "junk"),
                Decision::Reject(m) => (FilterOutcome::Reject(m.clone()), "reject"),
                Decision::Disconnect(m) => (FilterOutcome::Disconnect(m.clone()), "disconnect"),
                Decision::Rewrite(m) => (FilterOutcome::Rewrite(m.clone()), "rewrite"),
            };
            notes.push(FilterNote {
                filter: filter.clone(),
                decision: word,
            });
            return (outcome, notes);
        }
        (FilterOutcome::Proceed, notes)
    }
}
