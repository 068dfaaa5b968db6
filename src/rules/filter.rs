//! Builtin filters at one SMTP phase, as OpenSMTPD 6.8 runs them (`lka_filter.c`; spec §3).
//!
//! A listener's chain is flattened per phase ([`PhaseChains`]); at each phase its members run
//! in declaration order. A member whose condition is false lets the next one run; `report`
//! notes its message and lets the next one run too; `junk`, `bypass`, `reject`,
//! `disconnect` and `rewrite` end the chain **for this phase only**. The end of the chain
//! means proceed. Members served by filter programs (`proc`, `proc-exec`) are not run yet:
//! they are skipped.
//!
//! # What a condition sees
//!
//! OpenSMTPD keeps, per filtered session, the client address text, the reverse name
//! (`<unknown>` without one), the FCrDNS state, the HELO name and sender given at their
//! phases, and the authenticated user ([`FilterFacts`]). The RCPT TO address is only the
//! parameter of the rcpt-to phase, so a `rcpt-to` condition is false (even with `!`) at any
//! other phase; the parser allows it nowhere else anyway. A fact that does not exist yet (no
//! HELO, no MAIL FROM, no login) makes its table and regex conditions false, so their
//! negations are true — OpenSMTPD's rule for `auth`; for HELO and MAIL FROM OpenSMTPD would
//! look up a null pointer, which only its `phase auth` bug can reach (see below).
//!
//! Every lookup lower-cases its subject, and tables hold lower-cased keys — regular
//! expressions included, so `\S` in a pattern means `\s` (the trap of spec §7.2, kept for
//! compatibility and documented in smtpd.conf.md §6.5).
//!
//! # `phase auth`
//!
//! OpenSMTPD 6.8's parser never stores the phase of `filter … phase auth`, so such a filter
//! is hooked on connect, and its builtin evaluation at the real AUTH phase does not exist.
//! smtpd does not copy that: a `phase auth` filter runs at AUTH, where the configuration
//! puts it (docs/compatibility.md §3.9).
//!
//! # `-T filters`
//!
//! Every step leaves a [`FilterNote`], whose text is OpenSMTPD's
//! `filters protocol phase=…, resume=…, action=…` trace line; [`RuleGraph::filter_init_lines`]
//! gives the `filters init` lines and [`FilterSessionTrace`] the session-begin/-end pair.

use std::fmt;

use super::{ChainStep, PhaseChains, RuleGraph, Service};
use crate::config::model::{BuiltinFilter, Condition, Decision, FilterKind, Phase};
use crate::dns::{FcrdnsOutcome, UNKNOWN_HOST, name::looks_like_address};

/// What a filtered session knows when a filter runs: OpenSMTPD's `struct filter_session`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FilterFacts<'a> {
    /// Client address text (`a.b.c.d`, `[v6]`, `local`).
    pub source: &'a str,
    /// Reverse name; `None` when it is `<unknown>`.
    pub rdns: Option<&'a str>,
    /// Forward-confirmed reverse DNS passed (OpenSMTPD's state 1; fail and error are false).
    pub fcrdns: bool,
    /// The HELO/EHLO name, once given.
    pub helo: Option<&'a str>,
    /// The authenticated user, if any.
    pub auth_user: Option<&'a str>,
    /// The MAIL FROM address without brackets (empty for `<>`), once given.
    pub mail_from: Option<&'a str>,
}

impl<'a> FilterFacts<'a> {
    /// The connect-time facts of a client from its reverse-DNS outcome.
    pub fn client(source: &'a str, dns: &'a FcrdnsOutcome) -> FilterFacts<'a> {
        FilterFacts {
            source,
            rdns: dns.rdns.name(),
            fcrdns: dns.fcrdns_condition(),
            ..FilterFacts::default()
        }
    }
}

/// A chain's decision for one phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterOutcome {
    /// Run the command (end of chain, or `bypass`).
    Proceed,
    /// Mark the transaction (or the session) as junk, then run the command.
    Junk,
    /// Answer this instead of running the command.
    Reject(String),
    /// Answer this and close.
    Disconnect(String),
    /// Run the command with this parameter.
    Rewrite(String),
}

/// The `action=` word of a trace line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterAction {
    Proceed,
    Junk,
    Bypass,
    Reject,
    Disconnect,
    Rewrite,
    Report,
    /// The question went to a filter program, whose answer is awaited.
    Deferred,
}

impl FilterAction {
    /// The word OpenSMTPD prints.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterAction::Proceed => "proceed",
            FilterAction::Junk => "junk",
            FilterAction::Bypass => "bypass",
            FilterAction::Reject => "reject",
            FilterAction::Disconnect => "disconnect",
            FilterAction::Rewrite => "rewrite",
            FilterAction::Report => "report",
            FilterAction::Deferred => "deferred",
        }
    }
}

/// One step of a chain at one phase, printed as OpenSMTPD's `-T filters` protocol line
/// (without the leading session id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterNote {
    /// The phase name (`connect`, `mail-from`, …).
    pub phase: &'static str,
    /// `false` for the first step of the phase, `true` afterwards.
    pub resume: bool,
    pub action: FilterAction,
    /// The filter that decided; `None` on the end-of-chain line.
    pub filter: Option<String>,
    /// The phase parameter the filter saw.
    pub query: String,
    /// The decision's text (reject, disconnect, rewrite, report).
    pub response: Option<String>,
}

impl FilterNote {
    /// The line that ends a phase without a decision: `action=proceed`, no filter.
    pub fn end_of_chain(phase: &'static str, resume: bool) -> FilterNote {
        FilterNote {
            phase,
            resume,
            action: FilterAction::Proceed,
            filter: None,
            query: String::new(),
            response: None,
        }
    }
}

impl fmt::Display for FilterNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "filters protocol phase={}, resume={}, action={}",
            self.phase,
            if self.resume { "y" } else { "n" },
            self.action.as_str()
        )?;
        match &self.filter {
            Some(name) if self.action == FilterAction::Deferred => write!(f, ", filter={name}")?,
            Some(name) => write!(f, ", filter={name}, query={}", self.query)?,
            None => {}
        }
        if let Some(response) = &self.response {
            // OpenSMTPD's report line has no comma before `response`.
            let sep = if self.action == FilterAction::Report {
                " "
            } else {
                ", "
            };
            write!(f, "{sep}response={response}")?;
        }
        Ok(())
    }
}

/// The result of one phase: the decision and the trace of how it was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterRun {
    pub outcome: FilterOutcome,
    /// One note per step, in order (`-T filters` lines).
    pub notes: Vec<FilterNote>,
}

impl FilterRun {
    /// A phase no builtin filter can hook (starttls, rset, quit, noop): it proceeds, and
    /// OpenSMTPD still traces it.
    pub fn unhooked(phase: &'static str) -> FilterRun {
        FilterRun {
            outcome: FilterOutcome::Proceed,
            notes: vec![FilterNote::end_of_chain(phase, false)],
        }
    }

    /// The `report` messages of this phase, as `(filter, message)`, for the session's proc
    /// filters (`filter-report` events).
    pub fn reports(&self) -> impl Iterator<Item = (&str, &str)> {
        self.notes
            .iter()
            .filter_map(|n| match (&n.filter, &n.response) {
                (Some(f), Some(r)) if n.action == FilterAction::Report => {
                    Some((f.as_str(), r.as_str()))
                }
                _ => None,
            })
    }
}

/// OpenSMTPD's phase index, whose bit is the `hooks=` mask of the init trace.
fn phase_index(phase: Phase) -> u32 {
    match phase {
        Phase::Connect => 0,
        Phase::Helo => 1,
        Phase::Ehlo => 2,
        Phase::Auth => 4,
        Phase::MailFrom => 5,
        Phase::RcptTo => 6,
        Phase::Data => 7,
        Phase::Commit => 14,
    }
}

impl RuleGraph {
    /// The filter's condition, negation applied, at `phase` with parameter `query`.
    fn filter_holds(
        &self,
        rule: &BuiltinFilter,
        phase: Phase,
        query: &str,
        f: &FilterFacts,
    ) -> bool {
        let truth = match &rule.condition {
            Condition::RcptTo(t) => {
                if phase != Phase::RcptTo {
                    // Not evaluated outside rcpt-to: false whatever the negation.
                    return false;
                }
                self.table_match(t, query, Service::Mailaddr) == Some(true)
            }
            Condition::Fcrdns => f.fcrdns,
            Condition::Rdns(None) => f.rdns.is_some_and(|name| !looks_like_address(name)),
            Condition::Rdns(Some(t)) => {
                self.table_match(t, f.rdns.unwrap_or(UNKNOWN_HOST), Service::Domain) == Some(true)
            }
            Condition::Src(t) => self.table_match(t, f.source, Service::Netaddr) == Some(true),
            Condition::Helo(t) => f
                .helo
                .is_some_and(|h| self.table_match(t, h, Service::Domain) == Some(true)),
            Condition::Auth(None) => f.auth_user.is_some(),
            Condition::Auth(Some(t)) => f
                .auth_user
                .is_some_and(|u| self.table_match(t, u, Service::String) == Some(true)),
            Condition::MailFrom(t) => f
                .mail_from
                .is_some_and(|m| self.table_match(t, m, Service::Mailaddr) == Some(true)),
        };
        truth != rule.negate
    }

    /// Run the builtin members of `chain` hooked on `phase` (its filter programs, if any,
    /// are not asked: see [`ChainWalk`]). `query` is the phase's parameter as OpenSMTPD's
    /// filter layer sees it: the client address at connect, the HELO name, the MAIL FROM /
    /// RCPT TO address without brackets and parameters, empty at data and commit.
    pub fn run_filters(
        &self,
        chain: &PhaseChains,
        phase: Phase,
        query: &str,
        facts: &FilterFacts,
    ) -> FilterRun {
        let mut walk = ChainWalk::new(chain, phase.keyword(), Some(phase), query);
        // Bounded: every step moves the walk forward, and nothing is asked here.
        loop {
            match walk.step(self, facts, &|_, _| false) {
                WalkStep::Done(run) => return run,
                WalkStep::Ask { .. } => walk.answer("", ProgramDecision::Proceed),
            }
        }
    }

    /// Runs one builtin member of a chain: adds its trace notes and returns the outcome
    /// that ends the chain for this phase, or `None` to go on with the next member.
    #[allow(clippy::too_many_arguments)]
    pub fn run_builtin(
        &self,
        filter: &str,
        rule: &BuiltinFilter,
        phase: Phase,
        query: &str,
        facts: &FilterFacts,
        resume: bool,
        notes: &mut Vec<FilterNote>,
    ) -> Option<FilterOutcome> {
        let note = |action: FilterAction, response: Option<&String>| FilterNote {
            phase: phase.keyword(),
            resume,
            action,
            filter: Some(filter.to_string()),
            query: query.to_string(),
            response: response.cloned(),
        };
        if !self.filter_holds(rule, phase, query, facts) {
            notes.push(note(FilterAction::Proceed, None));
            return None;
        }
        let (action, outcome, response) = match &rule.decision {
            Decision::Report(msg) => {
                // Reported, then the same filter proceeds (two lines, as in 6.8).
                notes.push(note(FilterAction::Report, Some(msg)));
                notes.push(note(FilterAction::Proceed, None));
                return None;
            }
            Decision::Bypass => (FilterAction::Bypass, FilterOutcome::Proceed, None),
            Decision::Junk => (FilterAction::Junk, FilterOutcome::Junk, None),
            Decision::Reject(m) => (
                FilterAction::Reject,
                FilterOutcome::Reject(m.clone()),
                Some(m),
            ),
            Decision::Disconnect(m) => (
                FilterAction::Disconnect,
                FilterOutcome::Disconnect(m.clone()),
                Some(m),
            ),
            Decision::Rewrite(m) => (
                FilterAction::Rewrite,
                FilterOutcome::Rewrite(m.clone()),
                Some(m),
            ),
        };
        notes.push(note(action, response));
        Some(outcome)
    }

    /// OpenSMTPD's start-up `-T filters` lines: every builtin and proc filter by name
    /// (`hooks=` is the phase bit mask), then every chain by name with its members.
    pub fn filter_init_lines(&self) -> Vec<String> {
        let mut filters: Vec<_> = self.config.filters.iter().collect();
        filters.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        let mut lines = Vec::new();
        for f in &filters {
            match &f.kind {
                FilterKind::Builtin(b) => lines.push(format!(
                    "filters init type=builtin, name={}, hooks={:08x}",
                    f.name,
                    1u32 << phase_index(b.phase)
                )),
                FilterKind::Proc(p) => {
                    lines.push(format!("filters init type=proc, name={}, proc={p}", f.name))
                }
                FilterKind::ProcExec { .. } => lines.push(format!(
                    "filters init type=proc, name={0}, proc={0}",
                    f.name
                )),
                FilterKind::Chain(_) => {}
            }
        }
        for f in &filters {
            if let FilterKind::Chain(members) = &f.kind {
                lines.push(format!(
                    "filters init type=chain, name={} {{ {} }}",
                    f.name,
                    members.join(", ")
                ));
            }
        }
        lines
    }

    /// Emit [`filter_init_lines`](Self::filter_init_lines) under `-T filters`; called once
    /// when the daemon starts with this graph.
    pub fn trace_filter_init(&self) {
        for line in self.filter_init_lines() {
            tracing::trace!(target: "filters", "{line}");
        }
    }
}

/// A filtered session's `-T filters` bracket: `<id> filters session-begin` when made,
/// `<id> filters session-end` when dropped (after the session's `smtp disconnected` line,
/// when it lives as long as the session).
#[derive(Debug)]
pub struct FilterSessionTrace {
    id: String,
}

impl FilterSessionTrace {
    /// Trace the beginning of session `id` (OpenSMTPD prints it as 16 hex digits).
    pub fn begin(id: impl fmt::Display) -> FilterSessionTrace {
        let id = id.to_string();
        tracing::trace!(target: "filters", "{id} filters session-begin");
        FilterSessionTrace { id }
    }

    /// The message of the transaction is about to be received.
    ///
    /// OpenSMTPD prints the descriptor of the stream that carries the message through its
    /// filter layer; builtin filters never see message lines, so smtpd has no such stream and
    /// prints `fd=-1`.
    pub fn data_begin(id: impl fmt::Display) {
        tracing::trace!(target: "filters", "{id} filters data-begin fd=-1");
    }

    /// The message's final dot went through the commit phase.
    pub fn data_end(id: impl fmt::Display) {
        tracing::trace!(target: "filters", "{id} filters data-end");
    }
}

impl Drop for FilterSessionTrace {
    fn drop(&mut self) {
        tracing::trace!(target: "filters", "{} filters session-end", self.id);
    }
}

/// A filter program's decision on one request (`filter-result|…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramDecision {
    Proceed,
    Junk,
    Reject(String),
    Disconnect(String),
    Rewrite(String),
    /// Protocol 0.7: report a message, then proceed.
    Report(String),
}

/// What a [`ChainWalk`] needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkStep {
    /// Ask the program `proc` (member `filter` of the chain); give its decision to
    /// [`ChainWalk::answer`].
    Ask { filter: String, proc: String },
    /// The chain decided for this phase.
    Done(FilterRun),
}

/// One phase of a listener's chain, member by member: builtin members are evaluated here,
/// and at a member served by a filter program the walk stops and asks for the program's
/// answer (sans I/O: the SMTP driver talks to the program). Builds the `-T filters` notes,
/// with OpenSMTPD 6.8's quirk of naming the phase `connect` on every line after a program
/// answered.
#[derive(Debug)]
pub struct ChainWalk {
    phase: &'static str,
    builtin: Option<Phase>,
    query: String,
    steps: Vec<ChainStep>,
    next: usize,
    notes: Vec<FilterNote>,
    answered_at: Option<usize>,
    asked: Option<String>,
    outcome: Option<FilterOutcome>,
    builtin_reports: Vec<(String, String)>,
}

impl ChainWalk {
    /// A walk of `chain` at the phase named `phase`: its builtin members when it is a
    /// builtin phase (`builtin`), and filter programs at every phase (the chain lists each
    /// program at connect).
    pub fn new(
        chain: &PhaseChains,
        phase: &'static str,
        builtin: Option<Phase>,
        query: &str,
    ) -> ChainWalk {
        let steps = match builtin {
            Some(p) => chain.phases.get(&p).cloned().unwrap_or_default(),
            None => chain
                .phases
                .get(&Phase::Connect)
                .map(|s| {
                    s.iter()
                        .filter(|s| matches!(s, ChainStep::Proc { .. }))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
        };
        ChainWalk {
            phase,
            builtin,
            query: query.to_string(),
            steps,
            next: 0,
            notes: Vec::new(),
            answered_at: None,
            asked: None,
            outcome: None,
            builtin_reports: Vec::new(),
        }
    }

    /// Goes on until a program must be asked or the chain decided. `hooks(proc, phase)`
    /// says whether a program registered for the phase; members whose program did not are
    /// passed over.
    pub fn step(
        &mut self,
        graph: &RuleGraph,
        facts: &FilterFacts,
        hooks: &dyn Fn(&str, &str) -> bool,
    ) -> WalkStep {
        while self.outcome.is_none() {
            let Some(step) = self.steps.get(self.next).cloned() else {
                break;
            };
            self.next += 1;
            let resume = !self.notes.is_empty();
            match step {
                ChainStep::Builtin { filter, rule } => {
                    let Some(p) = self.builtin else { continue };
                    let before = self.notes.len();
                    self.outcome = graph.run_builtin(
                        &filter,
                        &rule,
                        p,
                        &self.query,
                        facts,
                        resume,
                        &mut self.notes,
                    );
                    for n in &self.notes[before..] {
                        if let (FilterAction::Report, Some(m)) = (n.action, &n.response) {
                            self.builtin_reports.push((filter.clone(), m.clone()));
                        }
                    }
                }
                ChainStep::Proc { filter, proc } => {
                    if !hooks(&proc, self.phase) {
                        continue;
                    }
                    self.notes.push(FilterNote {
                        phase: self.phase,
                        resume,
                        action: FilterAction::Deferred,
                        filter: Some(filter.clone()),
                        query: String::new(),
                        response: None,
                    });
                    self.asked = Some(filter.clone());
                    return WalkStep::Ask { filter, proc };
                }
            }
        }
        let outcome = self.outcome.take().unwrap_or_else(|| {
            let resume = !self.notes.is_empty();
            self.notes
                .push(FilterNote::end_of_chain(self.phase, resume));
            FilterOutcome::Proceed
        });
        let mut notes = std::mem::take(&mut self.notes);
        if let Some(from) = self.answered_at {
            for n in &mut notes[from..] {
                n.phase = "connect";
            }
        }
        WalkStep::Done(FilterRun { outcome, notes })
    }

    /// The asked program's decision on the request it got with `params`.
    pub fn answer(&mut self, params: &str, decision: ProgramDecision) {
        let filter = self.asked.take();
        self.answered_at.get_or_insert(self.notes.len());
        let (action, outcome, response) = match decision {
            ProgramDecision::Proceed => return,
            ProgramDecision::Report(m) => (FilterAction::Report, None, Some(m)),
            ProgramDecision::Junk => (FilterAction::Junk, Some(FilterOutcome::Junk), None),
            ProgramDecision::Reject(m) => (
                FilterAction::Reject,
                Some(FilterOutcome::Reject(m.clone())),
                Some(m),
            ),
            ProgramDecision::Disconnect(m) => (
                FilterAction::Disconnect,
                Some(FilterOutcome::Disconnect(m.clone())),
                Some(m),
            ),
            ProgramDecision::Rewrite(m) => (
                FilterAction::Rewrite,
                Some(FilterOutcome::Rewrite(m.clone())),
                Some(m),
            ),
        };
        self.notes.push(FilterNote {
            phase: self.phase,
            resume: true,
            action,
            filter,
            query: params.to_string(),
            response,
        });
        self.outcome = outcome;
    }

    /// The asked program gave no answer in time: the session ends with `reply`.
    pub fn no_answer(&mut self, reply: String) {
        self.asked = None;
        self.answered_at.get_or_insert(self.notes.len());
        self.outcome = Some(FilterOutcome::Disconnect(reply));
    }

    /// The `report` messages of the builtin members walked so far, as `(filter, message)`
    /// (`filter-report` events for the session's programs).
    pub fn builtin_reports(&self) -> &[(String, String)] {
        &self.builtin_reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::Family;
    use crate::config::{self, parse::Options, system::System};
    use crate::dns::{self, Fcrdns, ZoneResolver};
    use std::net::IpAddr;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::time::Instant;

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
            vec!["127.0.0.1".parse().unwrap()]
        }
    }

    const RULES: &str = "table domains { \"bsdsx.fr\", \"*.bsdsx.fr\" }\n\
        action \"local\" mbox\n\
        match from any for domain <domains> action \"local\"\n";

    fn graph(filters: &str) -> Arc<RuleGraph> {
        let text = format!("{filters}\n{RULES}");
        let opts = Options {
            defines: vec![],
            hostname: Some("vm".into()),
        };
        let c = config::check_text("t.conf", text.as_bytes(), &opts, &Fake);
        RuleGraph::compile(
            c.config
                .unwrap_or_else(|| panic!("{text}\n{}", c.diagnostics.render(false, &|_| None))),
        )
    }

    fn chain<'g>(g: &'g RuleGraph, name: &str) -> &'g PhaseChains {
        g.chains
            .get(name)
            .unwrap_or_else(|| panic!("no chain {name}"))
    }

    fn lines(run: &FilterRun) -> Vec<String> {
        run.notes.iter().map(|n| n.to_string()).collect()
    }

    /// The DNS of the reference transcripts (baseline §1.7) plus every failure mode.
    const ZONE: &str = "
        1.0.0.127.in-addr.arpa.   PTR   localhost.
        3.0.0.127.in-addr.arpa.   A     127.0.0.3            ; the name exists, no PTR: NODATA
        4.0.0.127.in-addr.arpa.   PTR   norev.bsdsx.test.    ; no address records: NXDOMAIN
        5.0.0.127.in-addr.arpa.   PTR   fcrdns.bsdsx.test.
        6.0.0.127.in-addr.arpa.   PTR   mismatch.bsdsx.test.
        7.0.0.127.in-addr.arpa.   SERVFAIL
        8.0.0.127.in-addr.arpa.   TIMEOUT
        9.0.0.127.in-addr.arpa.   PTR   flaky.bsdsx.test.
        10.0.0.127.in-addr.arpa.  PTR   slow.bsdsx.test.
        11.0.0.127.in-addr.arpa.  PTR   nodata.bsdsx.test.
        12.0.0.127.in-addr.arpa.  PTR   127.0.0.12.
        localhost.                A     127.0.0.1
        fcrdns.bsdsx.test.        A     127.0.0.5
        mismatch.bsdsx.test.      A     127.0.0.66
        flaky.bsdsx.test.         SERVFAIL
        slow.bsdsx.test.          TIMEOUT
        nodata.bsdsx.test.        MX    10 mx.bsdsx.test.
        127.0.0.12.               A     127.0.0.12
    ";

    fn zone() -> ZoneResolver {
        ZoneResolver::from_zone(ZONE).expect("zone parses")
    }

    async fn client_dns(client: &str) -> dns::FcrdnsOutcome {
        let ip: IpAddr = client.parse().unwrap();
        dns::fcrdns(&zone(), ip, Instant::now() + Duration::from_secs(2)).await
    }

    /// The chain of the reference transcripts (spec §3.9, baseline §1.7).
    const CHECK: &str = "table trusted { 127.0.0.2/32 }\n\
        table myfroms { \"@bsdsx\\.fr$\", \"@.*\\.bsdsx\\.fr$\" }\n\
        filter check_rdns phase connect match !rdns junk\n\
        filter check_fcrdns phase connect match !fcrdns junk\n\
        filter check_trusted phase mail-from match src <trusted> bypass\n\
        filter check_myfroms phase mail-from match mail-from regex <myfroms> disconnect \"550 invalid mail from\"\n\
        filter rej_rcpt phase rcpt-to match rcpt-to regex \"^nobody@\" reject \"550 no such luser\"\n\
        filter check chain { check_rdns, check_fcrdns, check_trusted, check_myfroms, rej_rcpt }";

    /// Every DNS outcome, through the connect phase of the reference chain: the `host=`
    /// value, what each condition saw, and the trace OpenSMTPD prints.
    #[tokio::test]
    async fn dns_outcomes_at_connect() {
        let g = graph(CHECK);
        let c = chain(&g, "check");
        let junk_rdns = |ip: &str| {
            vec![format!(
                "filters protocol phase=connect, resume=n, action=junk, filter=check_rdns, query={ip}"
            )]
        };
        let junk_fcrdns = |ip: &str| {
            vec![
                format!(
                    "filters protocol phase=connect, resume=n, action=proceed, filter=check_rdns, query={ip}"
                ),
                format!(
                    "filters protocol phase=connect, resume=y, action=junk, filter=check_fcrdns, query={ip}"
                ),
            ]
        };
        let clean = |ip: &str| {
            vec![
                format!(
                    "filters protocol phase=connect, resume=n, action=proceed, filter=check_rdns, query={ip}"
                ),
                format!(
                    "filters protocol phase=connect, resume=y, action=proceed, filter=check_fcrdns, query={ip}"
                ),
                "filters protocol phase=connect, resume=y, action=proceed".to_string(),
            ]
        };
        // (client, what the DNS does, host=, fcrdns state, junked, trace)
        type Expect<'a> = (&'a str, &'a str, &'a str, Fcrdns, bool, Vec<String>);
        let cases: Vec<Expect> = vec![
            (
                "127.0.0.1",
                "PTR + A",
                "localhost",
                Fcrdns::Pass,
                false,
                clean("127.0.0.1"),
            ),
            (
                "127.0.0.2",
                "NXDOMAIN",
                "<unknown>",
                Fcrdns::Fail,
                true,
                junk_rdns("127.0.0.2"),
            ),
            (
                "127.0.0.3",
                "NODATA",
                "<unknown>",
                Fcrdns::Fail,
                true,
                junk_rdns("127.0.0.3"),
            ),
            (
                "127.0.0.4",
                "PTR, name NXDOMAIN",
                "norev.bsdsx.test",
                Fcrdns::Fail,
                true,
                junk_fcrdns("127.0.0.4"),
            ),
            (
                "127.0.0.5",
                "forward-confirmed",
                "fcrdns.bsdsx.test",
                Fcrdns::Pass,
                false,
                clean("127.0.0.5"),
            ),
            (
                "127.0.0.6",
                "A elsewhere",
                "mismatch.bsdsx.test",
                Fcrdns::Fail,
                true,
                junk_fcrdns("127.0.0.6"),
            ),
            (
                "127.0.0.7",
                "PTR SERVFAIL",
                "<unknown>",
                Fcrdns::Fail,
                true,
                junk_rdns("127.0.0.7"),
            ),
            (
                "127.0.0.9",
                "A SERVFAIL",
                "flaky.bsdsx.test",
                Fcrdns::Fail,
                true,
                junk_fcrdns("127.0.0.9"),
            ),
            (
                "127.0.0.11",
                "name NODATA",
                "nodata.bsdsx.test",
                Fcrdns::Fail,
                true,
                junk_fcrdns("127.0.0.11"),
            ),
            // A reverse name that is an address literal is no reverse name for `rdns`.
            (
                "127.0.0.12",
                "literal PTR",
                "127.0.0.12",
                Fcrdns::Pass,
                true,
                junk_rdns("127.0.0.12"),
            ),
        ];
        for (ip, what, host, state, junk, trace) in cases {
            let dns = client_dns(ip).await;
            assert_eq!(dns.host(), host, "{ip} ({what})");
            assert_eq!(dns.fcrdns, state, "{ip} ({what})");
            let run = g.run_filters(c, Phase::Connect, ip, &FilterFacts::client(ip, &dns));
            println!(
                "{ip:<11} {what:<19} host={host} fcrdns={state} -> {:?}",
                run.outcome
            );
            let expected = if junk {
                FilterOutcome::Junk
            } else {
                FilterOutcome::Proceed
            };
            assert_eq!(run.outcome, expected, "{ip} ({what})");
            assert_eq!(lines(&run), trace, "{ip} ({what})");
        }
        // A forward lookup that fails is not logged, as in OpenSMTPD (libasr).
        assert_eq!(client_dns("127.0.0.9").await.warning(), None);
    }

    /// A DNS server that never answers costs the bounded wait, then gives OpenSMTPD's
    /// outcome for a failed lookup: no name (PTR) or not confirmed (forward).
    #[tokio::test(start_paused = true)]
    async fn dns_timeout_is_bounded_then_fails_like_opensmtpd() {
        let g = graph(CHECK);
        let c = chain(&g, "check");
        let bound = Duration::from_secs(2);
        for (ip, host, state, junker) in [
            ("127.0.0.8", "<unknown>", Fcrdns::Fail, "check_rdns"),
            (
                "127.0.0.10",
                "slow.bsdsx.test",
                Fcrdns::Fail,
                "check_fcrdns",
            ),
        ] {
            let start = Instant::now();
            let dns = dns::fcrdns(&zone(), ip.parse().unwrap(), start + bound).await;
            let waited = start.elapsed();
            println!(
                "{ip}: waited {waited:?}, host={} fcrdns={}",
                dns.host(),
                dns.fcrdns
            );
            assert_eq!(waited, bound, "{ip}");
            assert_eq!(dns.host(), host);
            assert_eq!(dns.fcrdns, state);
            let run = g.run_filters(c, Phase::Connect, ip, &FilterFacts::client(ip, &dns));
            assert_eq!(run.outcome, FilterOutcome::Junk, "{ip}");
            let last = run.notes.last().unwrap();
            assert_eq!(last.action, FilterAction::Junk);
            assert_eq!(last.filter.as_deref(), Some(junker));
        }
    }

    /// The mail-from and rcpt-to phases of baseline §1.7, line for line.
    #[test]
    fn reference_transcript_traces() {
        let g = graph(CHECK);
        let c = chain(&g, "check");
        let facts = |source: &'static str, from: &'static str| FilterFacts {
            source,
            rdns: None,
            fcrdns: false,
            helo: Some("client.example"),
            auth_user: None,
            mail_from: Some(from),
        };
        // Untrusted: alice passes, bob@sub.bsdsx.fr is disconnected.
        let run = g.run_filters(
            c,
            Phase::MailFrom,
            "alice@client.example",
            &facts("127.0.0.3", "alice@client.example"),
        );
        assert_eq!(run.outcome, FilterOutcome::Proceed);
        assert_eq!(
            lines(&run),
            [
                "filters protocol phase=mail-from, resume=n, action=proceed, filter=check_trusted, query=alice@client.example",
                "filters protocol phase=mail-from, resume=y, action=proceed, filter=check_myfroms, query=alice@client.example",
                "filters protocol phase=mail-from, resume=y, action=proceed",
            ]
        );
        let run = g.run_filters(
            c,
            Phase::MailFrom,
            "bob@sub.bsdsx.fr",
            &facts("127.0.0.3", "bob@sub.bsdsx.fr"),
        );
        assert_eq!(
            run.outcome,
            FilterOutcome::Disconnect("550 invalid mail from".into())
        );
        assert_eq!(
            lines(&run),
            [
                "filters protocol phase=mail-from, resume=n, action=proceed, filter=check_trusted, query=bob@sub.bsdsx.fr",
                "filters protocol phase=mail-from, resume=y, action=disconnect, filter=check_myfroms, query=bob@sub.bsdsx.fr, response=550 invalid mail from",
            ]
        );
        // Case does not matter; the null sender and look-alike domains pass.
        for (from, caught) in [
            ("bob@bsdsx.fr", true),
            ("BOB@BSDSX.FR", true),
            ("bob@notbsdsx.fr", false),
            ("", false),
        ] {
            let run = g.run_filters(c, Phase::MailFrom, from, &facts("127.0.0.5", from));
            assert_eq!(
                matches!(run.outcome, FilterOutcome::Disconnect(_)),
                caught,
                "{from:?}"
            );
        }
        // Trusted: bypass at mail-from only; the rcpt-to filter still rejects.
        let run = g.run_filters(
            c,
            Phase::MailFrom,
            "bob@sub.bsdsx.fr",
            &facts("127.0.0.2", "bob@sub.bsdsx.fr"),
        );
        assert_eq!(run.outcome, FilterOutcome::Proceed);
        assert_eq!(
            lines(&run),
            [
                "filters protocol phase=mail-from, resume=n, action=bypass, filter=check_trusted, query=bob@sub.bsdsx.fr"
            ]
        );
        let run = g.run_filters(
            c,
            Phase::RcptTo,
            "nobody@example.org",
            &facts("127.0.0.2", "me@example.org"),
        );
        assert_eq!(
            run.outcome,
            FilterOutcome::Reject("550 no such luser".into())
        );
        assert_eq!(
            lines(&run),
            [
                "filters protocol phase=rcpt-to, resume=n, action=reject, filter=rej_rcpt, query=nobody@example.org, response=550 no such luser"
            ]
        );
        let run = g.run_filters(
            c,
            Phase::RcptTo,
            "foo@bsdsx.fr",
            &facts("127.0.0.2", "me@example.org"),
        );
        assert_eq!(run.outcome, FilterOutcome::Proceed);
        // Phases no member hooks: one end-of-chain line.
        for phase in [Phase::Ehlo, Phase::Data, Phase::Commit] {
            let run = g.run_filters(c, phase, "", &facts("127.0.0.3", "a@b"));
            assert_eq!(
                lines(&run),
                [format!(
                    "filters protocol phase={phase}, resume=n, action=proceed"
                )]
            );
        }
        assert_eq!(
            lines(&FilterRun::unhooked("quit")),
            ["filters protocol phase=quit, resume=n, action=proceed"]
        );
    }

    /// One condition, its phase, the query, and facts under which it is true and false.
    struct Case {
        phase: &'static str,
        condition: &'static str,
        query_true: &'static str,
        query_false: &'static str,
        when_true: FilterFacts<'static>,
        when_false: FilterFacts<'static>,
    }

    fn base() -> FilterFacts<'static> {
        FilterFacts {
            source: "127.0.0.5",
            rdns: Some("fcrdns.bsdsx.test"),
            fcrdns: true,
            helo: Some("client.example"),
            auth_user: None,
            mail_from: Some("alice@client.example"),
        }
    }

    fn cases() -> Vec<Case> {
        let b = base();
        vec![
            Case {
                phase: "connect",
                condition: "fcrdns",
                query_true: "127.0.0.5",
                query_false: "127.0.0.6",
                when_true: b,
                when_false: FilterFacts { fcrdns: false, ..b },
            },
            Case {
                phase: "connect",
                condition: "rdns",
                query_true: "127.0.0.5",
                query_false: "127.0.0.2",
                when_true: b,
                when_false: FilterFacts { rdns: None, ..b },
            },
            Case {
                phase: "connect",
                condition: "rdns <names>",
                query_true: "127.0.0.5",
                query_false: "127.0.0.2",
                when_true: b,
                when_false: FilterFacts { rdns: None, ..b },
            },
            Case {
                phase: "connect",
                condition: "rdns regex <namesre>",
                query_true: "127.0.0.5",
                query_false: "127.0.0.6",
                when_true: b,
                when_false: FilterFacts {
                    rdns: Some("mismatch.bsdsx.test"),
                    ..b
                },
            },
            Case {
                phase: "connect",
                condition: "src <nets>",
                query_true: "127.0.0.5",
                query_false: "192.0.2.1",
                when_true: b,
                when_false: FilterFacts {
                    source: "192.0.2.1",
                    ..b
                },
            },
            Case {
                phase: "connect",
                condition: "src regex <netsre>",
                query_true: "127.0.0.5",
                query_false: "127.0.0.6",
                when_true: b,
                when_false: FilterFacts {
                    source: "127.0.0.6",
                    ..b
                },
            },
            Case {
                phase: "ehlo",
                condition: "helo <helos>",
                query_true: "mx.example.org",
                query_false: "client.example",
                when_true: FilterFacts {
                    helo: Some("mx.example.org"),
                    ..b
                },
                when_false: b,
            },
            Case {
                phase: "helo",
                condition: "helo regex <helosre>",
                query_true: "MX2.example.org",
                query_false: "client.example",
                when_true: FilterFacts {
                    helo: Some("MX2.example.org"),
                    ..b
                },
                when_false: b,
            },
            Case {
                phase: "mail-from",
                condition: "auth",
                query_true: "a@b",
                query_false: "a@b",
                when_true: FilterFacts {
                    auth_user: Some("alice"),
                    ..b
                },
                when_false: b,
            },
            Case {
                phase: "mail-from",
                condition: "auth <staff>",
                query_true: "a@b",
                query_false: "a@b",
                when_true: FilterFacts {
                    auth_user: Some("Alice"),
                    ..b
                },
                when_false: FilterFacts {
                    auth_user: Some("eve"),
                    ..b
                },
            },
            Case {
                phase: "data",
                condition: "auth regex <robots>",
                query_true: "",
                query_false: "",
                when_true: FilterFacts {
                    auth_user: Some("backup-1"),
                    ..b
                },
                when_false: FilterFacts {
                    auth_user: Some("alice"),
                    ..b
                },
            },
            Case {
                phase: "mail-from",
                condition: "mail-from <froms>",
                query_true: "bob+tag@bsdsx.fr",
                query_false: "bob@notbsdsx.fr",
                when_true: FilterFacts {
                    mail_from: Some("bob+tag@bsdsx.fr"),
                    ..b
                },
                when_false: FilterFacts {
                    mail_from: Some("bob@notbsdsx.fr"),
                    ..b
                },
            },
            Case {
                phase: "rcpt-to",
                condition: "mail-from regex <fromsre>",
                query_true: "x@y",
                query_false: "x@y",
                when_true: FilterFacts {
                    mail_from: Some("BOB@SUB.BSDSX.FR"),
                    ..b
                },
                when_false: FilterFacts {
                    mail_from: Some(""),
                    ..b
                },
            },
            Case {
                phase: "rcpt-to",
                condition: "rcpt-to <rcpts>",
                query_true: "Nobody@BSDSX.fr",
                query_false: "foo@bsdsx.fr",
                when_true: b,
                when_false: b,
            },
            Case {
                phase: "rcpt-to",
                condition: "rcpt-to regex \"^nobody@\"",
                query_true: "nobody@example.org",
                query_false: "anybody@example.org",
                when_true: b,
                when_false: b,
            },
        ]
    }

    const TABLES: &str = "table names { \"*.bsdsx.test\" }\n\
        table namesre { \"^fcrdns\\.\" }\n\
        table nets { 127.0.0.0/29 }\n\
        table netsre { \"\\.5$\" }\n\
        table helos { \"*.example.org\" }\n\
        table helosre { \"^mx[0-9]*\\.\" }\n\
        table staff { alice, bob }\n\
        table robots { \"^(backup|monitor)-\" }\n\
        table froms { \"@bsdsx.fr\" }\n\
        table fromsre { \"@(.*\\.)?bsdsx\\.fr$\" }\n\
        table rcpts { \"nobody@bsdsx.fr\" }\n";

    /// Every condition, plain and negated, with every decision its phase allows: the
    /// decision when the condition holds, the next filter otherwise.
    #[test]
    fn every_condition_with_every_decision() {
        let decisions: [(&str, FilterAction, FilterOutcome, Option<&str>); 6] = [
            ("junk", FilterAction::Junk, FilterOutcome::Junk, None),
            ("bypass", FilterAction::Bypass, FilterOutcome::Proceed, None),
            (
                "reject \"550 5.7.1 no\"",
                FilterAction::Reject,
                FilterOutcome::Reject("550 5.7.1 no".into()),
                Some("550 5.7.1 no"),
            ),
            (
                "disconnect \"421 go away\"",
                FilterAction::Disconnect,
                FilterOutcome::Disconnect("421 go away".into()),
                Some("421 go away"),
            ),
            (
                "rewrite \"<new@bsdsx.fr>\"",
                FilterAction::Rewrite,
                FilterOutcome::Rewrite("<new@bsdsx.fr>".into()),
                Some("<new@bsdsx.fr>"),
            ),
            (
                "report \"seen\"",
                FilterAction::Report,
                FilterOutcome::Proceed,
                Some("seen"),
            ),
        ];
        let mut checked = 0;
        for case in cases() {
            for negate in [false, true] {
                for (decision, action, outcome, response) in &decisions {
                    let bang = if negate { "!" } else { "" };
                    let text = format!(
                        "{TABLES}filter f phase {} match {bang}{} {decision}\nfilter c chain {{ f }}",
                        case.phase, case.condition
                    );
                    let g = graph(&text);
                    let phase = g.chains["c"].phases.keys().next().copied().unwrap();
                    assert_eq!(phase.keyword(), case.phase);
                    for (query, facts, truth) in [
                        (case.query_true, &case.when_true, true),
                        (case.query_false, &case.when_false, false),
                    ] {
                        let holds = truth != negate;
                        let run = g.run_filters(&g.chains["c"], phase, query, facts);
                        let what = format!("{text} / true={truth}");
                        let p = case.phase;
                        let proceed = format!(
                            "filters protocol phase={p}, resume=n, action=proceed, filter=f, query={query}"
                        );
                        let end = format!("filters protocol phase={p}, resume=y, action=proceed");
                        let expected: Vec<String> = match (holds, action) {
                            (false, _) => vec![proceed, end],
                            (true, FilterAction::Report) => vec![
                                format!(
                                    "filters protocol phase={p}, resume=n, action=report, filter=f, query={query} response=seen"
                                ),
                                proceed,
                                end,
                            ],
                            (true, _) => vec![match response {
                                Some(r) => format!(
                                    "filters protocol phase={p}, resume=n, action={}, filter=f, query={query}, response={r}",
                                    action.as_str()
                                ),
                                None => format!(
                                    "filters protocol phase={p}, resume=n, action={}, filter=f, query={query}",
                                    action.as_str()
                                ),
                            }],
                        };
                        assert_eq!(lines(&run), expected, "{what}");
                        let want = if holds {
                            outcome.clone()
                        } else {
                            FilterOutcome::Proceed
                        };
                        assert_eq!(run.outcome, want, "{what}");
                        if holds && *action == FilterAction::Report {
                            assert_eq!(run.reports().collect::<Vec<_>>(), [("f", "seen")]);
                        }
                        checked += 1;
                    }
                }
            }
        }
        println!("{checked} condition x negation x decision x truth combinations checked");
        assert_eq!(checked, 15 * 2 * 6 * 2);
    }

    /// `report` continues, the first deciding member ends the phase, and members of other
    /// phases do not take part.
    #[test]
    fn chain_order_report_and_first_decision() {
        let g = graph(
            "filter seen phase mail-from match mail-from regex \".\" report \"sender seen\"\n\
             filter early phase connect match !rdns junk\n\
             filter ban phase mail-from match mail-from regex \"@spam\\.example$\" reject \"550 5.7.1 banned\"\n\
             filter never phase mail-from match mail-from regex \"@spam\\.example$\" disconnect \"421 unreachable\"\n\
             filter c chain { seen, early, ban, never }",
        );
        let facts = FilterFacts {
            source: "127.0.0.3",
            mail_from: Some("x@spam.example"),
            ..FilterFacts::default()
        };
        let run = g.run_filters(&g.chains["c"], Phase::MailFrom, "x@spam.example", &facts);
        assert_eq!(
            run.outcome,
            FilterOutcome::Reject("550 5.7.1 banned".into())
        );
        assert_eq!(
            lines(&run),
            [
                "filters protocol phase=mail-from, resume=n, action=report, filter=seen, query=x@spam.example response=sender seen",
                "filters protocol phase=mail-from, resume=n, action=proceed, filter=seen, query=x@spam.example",
                "filters protocol phase=mail-from, resume=y, action=reject, filter=ban, query=x@spam.example, response=550 5.7.1 banned",
            ]
        );
        assert_eq!(run.reports().collect::<Vec<_>>(), [("seen", "sender seen")]);
        // At connect only `early` runs.
        let run = g.run_filters(&g.chains["c"], Phase::Connect, "127.0.0.3", &facts);
        assert_eq!(run.outcome, FilterOutcome::Junk);
        assert_eq!(run.notes.len(), 1);
    }

    /// Facts that do not exist yet make table conditions false (negations true); a
    /// `rcpt-to` condition is never true outside the rcpt-to phase.
    #[test]
    fn absent_facts_and_phase_bound_conditions() {
        let g = graph(&format!(
            "{TABLES}filter nh phase mail-from match !helo <helos> junk\n\
             filter nm phase mail-from match !mail-from <froms> junk\n\
             filter na phase mail-from match !auth <staff> junk\n\
             filter nr phase rcpt-to match !rcpt-to <rcpts> junk\n\
             filter c chain {{ nh, nm, na, nr }}"
        ));
        let rule = |name: &str| match &g.config.filter_named(name).unwrap().kind {
            FilterKind::Builtin(b) => b.clone(),
            other => panic!("{other:?}"),
        };
        let none = FilterFacts::default();
        for name in ["nh", "nm", "na"] {
            assert!(
                g.filter_holds(&rule(name), Phase::MailFrom, "", &none),
                "{name}"
            );
        }
        // `!rcpt-to <t>` holds at rcpt-to for another address, never elsewhere.
        let nr = rule("nr");
        assert!(g.filter_holds(&nr, Phase::RcptTo, "foo@bsdsx.fr", &none));
        assert!(!g.filter_holds(&nr, Phase::RcptTo, "nobody@bsdsx.fr", &none));
        for phase in [Phase::Connect, Phase::MailFrom, Phase::Data, Phase::Commit] {
            assert!(
                !g.filter_holds(&nr, phase, "foo@bsdsx.fr", &none),
                "{phase}"
            );
        }
        // A chain hand-made with `!rcpt-to` at mail-from proceeds.
        let mut c = PhaseChains::default();
        c.phases.insert(
            Phase::MailFrom,
            vec![ChainStep::Builtin {
                filter: "nr".into(),
                rule: nr,
            }],
        );
        assert_eq!(
            g.run_filters(&c, Phase::MailFrom, "foo@bsdsx.fr", &none)
                .outcome,
            FilterOutcome::Proceed
        );
    }

    /// Mail addresses: the null sender is the empty string and matches only `@`.
    #[test]
    fn null_sender_and_mailaddr_forms() {
        let g = graph(
            "table everyone { \"@\" }\n\
             table dom { \"@bsdsx.fr\" }\n\
             table pm { \"postmaster\" }\n\
             filter a phase mail-from match mail-from <everyone> junk\n\
             filter d phase mail-from match mail-from <dom> junk\n\
             filter u phase mail-from match mail-from <pm> junk",
        );
        let run = |chain: &str, from: &str| {
            let facts = FilterFacts {
                mail_from: Some(from),
                ..FilterFacts::default()
            };
            g.run_filters(&g.chains[chain], Phase::MailFrom, from, &facts)
                .outcome
                == FilterOutcome::Junk
        };
        assert!(run("a", ""));
        assert!(run("a", "x@y.example"));
        assert!(!run("d", ""));
        assert!(run("d", "Bob@BSDSX.fr"));
        assert!(!run("d", "bob@sub.bsdsx.fr"));
        assert!(run("u", "postmaster@anywhere.example"));
        assert!(!run("u", ""));
    }

    /// Regular expressions are stored lower-cased, like every static table key (spec §7.2):
    /// `[A-Z]` still matches (subjects are lower-cased too), `\S` turns into `\s`, a `(?i)`
    /// prefix is accepted, and a pattern that does not compile never matches.
    #[test]
    fn regex_tables_are_lower_cased() {
        let g = graph(
            "filter upper phase mail-from match mail-from regex \"^[A-Z]+@\" junk\n\
             filter nonspace phase mail-from match mail-from regex \"^\\S+@bsdsx\\.fr$\" junk\n\
             filter icase phase mail-from match mail-from regex \"(?i)^BOB@\" junk\n\
             filter broken phase mail-from match mail-from regex \"(unclosed\" junk\n\
             filter notbroken phase mail-from match !mail-from regex \"(unclosed\" junk",
        );
        let junk = |chain: &str, from: &str| {
            let facts = FilterFacts {
                mail_from: Some(from),
                ..FilterFacts::default()
            };
            g.run_filters(&g.chains[chain], Phase::MailFrom, from, &facts)
                .outcome
                == FilterOutcome::Junk
        };
        assert!(junk("upper", "BOB@bsdsx.fr"));
        assert!(junk("upper", "bob@bsdsx.fr"));
        assert!(!junk("nonspace", "bob@bsdsx.fr"), "\\S is read as \\s");
        assert!(junk("icase", "bob@x.example"));
        assert!(!junk("broken", "(unclosed"));
        assert!(junk("notbroken", "anything"));
    }

    /// The start-up lines: filters sorted by name, then chains.
    #[test]
    fn init_trace_lines() {
        let g = graph(&format!(
            "{CHECK}\n\
             filter late phase commit match !fcrdns reject \"550 no\"\n\
             filter at_auth phase auth match src {{ 192.0.2.1 }} reject \"530 no auth from you\"\n\
             filter on_data phase data match helo {{ \"bad.example\" }} reject \"550 no\""
        ));
        assert_eq!(
            g.filter_init_lines(),
            [
                "filters init type=builtin, name=at_auth, hooks=00000010",
                "filters init type=builtin, name=check_fcrdns, hooks=00000001",
                "filters init type=builtin, name=check_myfroms, hooks=00000020",
                "filters init type=builtin, name=check_rdns, hooks=00000001",
                "filters init type=builtin, name=check_trusted, hooks=00000020",
                "filters init type=builtin, name=late, hooks=00004000",
                "filters init type=builtin, name=on_data, hooks=00000080",
                "filters init type=builtin, name=rej_rcpt, hooks=00000040",
                "filters init type=chain, name=check { check_rdns, check_fcrdns, check_trusted, check_myfroms, rej_rcpt }",
            ]
        );
    }

    /// `phase auth` runs at AUTH (not at connect as in 6.8).
    #[test]
    fn phase_auth_runs_at_auth() {
        let g = graph(
            "filter at_auth phase auth match src { 192.0.2.1 } reject \"530 no auth from you\"",
        );
        let facts = FilterFacts {
            source: "192.0.2.1",
            helo: Some("client.example"),
            ..FilterFacts::default()
        };
        let c = &g.chains["at_auth"];
        assert_eq!(
            g.run_filters(c, Phase::Connect, "192.0.2.1", &facts)
                .outcome,
            FilterOutcome::Proceed
        );
        assert_eq!(
            g.run_filters(c, Phase::Auth, "PLAIN", &facts).outcome,
            FilterOutcome::Reject("530 no auth from you".into())
        );
    }

    #[test]
    fn rewrite_line_shape() {
        let note = FilterNote {
            phase: "rcpt-to",
            resume: true,
            action: FilterAction::Rewrite,
            filter: Some("rw".into()),
            query: "old@bsdsx.fr".into(),
            response: Some("<new@bsdsx.fr>".into()),
        };
        assert_eq!(
            note.to_string(),
            "filters protocol phase=rcpt-to, resume=y, action=rewrite, filter=rw, query=old@bsdsx.fr, response=<new@bsdsx.fr>"
        );
    }
}
