//! The rule graph: a checked configuration compiled once into the immutable form the SMTP
//! side evaluates at every phase. Shared between sessions with `Arc`; a reload builds a new
//! one.
//!
//! Compilation indexes every table (networks by prefix length, exact domains in a hash set,
//! regular expressions compiled once), flattens each listener's filter chain into per-phase
//! lists, and keeps `match` rules in file order (first match wins).

pub mod filter;
pub mod matching;
pub mod route;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::model::*;
use matching::CompiledTable;

/// One step of a flattened filter chain at one phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainStep {
    /// A builtin filter (index into [`Config::filters`]).
    Builtin { filter: String, rule: BuiltinFilter },
    /// An external filter process, asked at every phase it registers for.
    Proc { filter: String, proc: String },
}

/// A filter chain flattened per phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseChains {
    pub phases: BTreeMap<Phase, Vec<ChainStep>>,
    /// Processes the chain talks to, in chain order.
    pub procs: Vec<String>,
}

/// The compiled configuration.
#[derive(Debug)]
pub struct RuleGraph {
    pub config: Config,
    /// Compiled tables by [`TableId`]; `smtpctl update table` swaps one for a re-read copy
    /// (lookups already running keep the copy they started with).
    tables: Vec<std::sync::RwLock<Arc<CompiledTable>>>,
    /// Flattened chains, by filter name (listeners and relay actions refer to them by name).
    pub chains: BTreeMap<String, PhaseChains>,
}

impl PartialEq for RuleGraph {
    /// Two graphs are equal when they were compiled from equal configurations: everything else
    /// is derived from the configuration deterministically.
    fn eq(&self, other: &RuleGraph) -> bool {
        self.config == other.config && self.chains == other.chains
    }
}

/// The lookup service a criterion or filter condition asks of a table (OpenSMTPD's `K_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Service {
    Netaddr,
    Domain,
    Mailaddr,
    /// `K_STRING`: the subject is a key of the list or mapping.
    String,
    /// `auth <t>` in a rule: a user name with `@` is matched as an address, else as a string.
    Auth,
}

/// Why `smtpctl update table` did not update a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateError {
    /// The configuration names no such table (6.8: `Lookup table not found`).
    NoSuchTable,
    /// The table could not be re-read, and keeps its entries: why.
    Failed(String),
}

impl RuleGraph {
    /// Does `subject` match the table as `service` does (or as a regex table)? `None` when
    /// an external table could not answer. Traced (`-T lookup`) as 6.8 traces every match
    /// of a rule or filter criterion.
    pub(crate) fn table_match(
        &self,
        tm: &TableMatch,
        subject: &str,
        service: Service,
    ) -> Option<bool> {
        use crate::table::Service as K;
        let t = self.table(tm.table);
        let k = match service {
            _ if tm.regex => K::Regex,
            Service::Netaddr => K::Netaddr,
            Service::Domain => K::Domain,
            Service::Mailaddr => K::Mailaddr,
            Service::Auth if subject.contains('@') => K::Mailaddr,
            Service::String | Service::Auth => K::String,
        };
        let found = t.matches(k, subject, self.config.smtp.sub_addr_delim);
        crate::table::trace_match(t.backend(), &t.name, k.name(), subject, &found);
        match found {
            Ok(b) => Some(b),
            Err(crate::table::LookupError(e)) => {
                tracing::warn!(
                    "warn: failure to perform a table lookup on table {}: {e}",
                    t.name
                );
                None
            }
        }
    }

    /// Start the programs of the external tables (`sqlite:`, `passwd:`...), each once, as
    /// the daemon's own user; a program that cannot open its table stops the start, as in
    /// OpenSMTPD. Returns how many were started.
    pub fn open_tables(&self) -> Result<usize, String> {
        let mut started = 0;
        for (i, t) in self.config.tables.iter().enumerate() {
            let TableBackend::External { backend, config } = &t.backend else {
                continue;
            };
            let compiled = self.table(TableId(i));
            if !compiled.is_external() || compiled.program().is_ok() {
                continue;
            }
            let program = crate::table::proc::ProcTable::open(&t.name, backend, config)?;
            compiled.attach(Arc::new(program));
            started += 1;
        }
        Ok(started)
    }

    /// Compile a checked configuration.
    pub fn compile(config: Config) -> Arc<RuleGraph> {
        let tables: Vec<CompiledTable> = config.tables.iter().map(CompiledTable::compile).collect();
        // Tables used as regular expressions are compiled now, once, not at the first lookup.
        for id in regex_tables(&config) {
            tables[id.0].compile_regexes();
        }
        let tables = tables
            .into_iter()
            .map(|t| std::sync::RwLock::new(Arc::new(t)))
            .collect();
        let mut chains = BTreeMap::new();
        for f in &config.filters {
            chains.insert(f.name.clone(), flatten(&config, f));
        }
        Arc::new(RuleGraph {
            config,
            tables,
            chains,
        })
    }

    /// The table as compiled now.
    pub fn table(&self, id: TableId) -> Arc<CompiledTable> {
        match self.tables[id.0].read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// `smtpctl update table NAME`: re-reads a `file:` or `db:` table and puts the new
    /// entries in effect for every lookup that starts afterwards, or has an external
    /// table's program re-read its configuration (`UPDATE`). Returns the number of
    /// entries (0 for an external table). The table keeps its kind: a list that became a mapping (or the reverse)
    /// is refused, since the configuration was checked against the kind it had.
    pub fn update_table(&self, name: &str) -> Result<usize, UpdateError> {
        let Some(id) = self
            .config
            .tables
            .iter()
            .position(|t| t.name == name && !t.anonymous)
        else {
            return Err(UpdateError::NoSuchTable);
        };
        self.reload_table(id, name).map_err(UpdateError::Failed)
    }

    /// Re-reads table `id` (named `name`) for [`RuleGraph::update_table`].
    fn reload_table(&self, id: usize, name: &str) -> Result<usize, String> {
        let old = &self.config.tables[id];
        let compiled = self.table(TableId(id));
        if compiled.is_external() {
            // The program re-reads its own configuration and keeps its old one on failure.
            let program = compiled
                .program()
                .map_err(|crate::table::LookupError(e)| e)?;
            return match program.update() {
                Ok(true) => Ok(0),
                Ok(false) => Err(format!("table \"{name}\": the backend could not update")),
                Err(crate::table::LookupError(e)) => Err(format!("table \"{name}\": {e}")),
            };
        }
        let loaded = match &old.backend {
            TableBackend::File { path, .. } => crate::table::file::load(path),
            TableBackend::Db { path } => crate::table::db::load(path),
            _ => return Err(format!("table \"{name}\" is not read from a file")),
        };
        let loaded = loaded.map_err(|e| match e {
            crate::table::LoadError::Open(m) | crate::table::LoadError::Format(m) => m,
        })?;
        if loaded.kind != old.kind && !loaded.entries.is_empty() && !old.entries.is_empty() {
            return Err(format!(
                "table \"{name}\" changed from {:?} to {:?}",
                old.kind, loaded.kind
            )
            .to_ascii_lowercase());
        }
        let count = loaded.entries.len();
        let fresh = Table {
            entries: Arc::new(loaded.entries),
            ..old.clone()
        };
        let compiled = CompiledTable::compile(&fresh);
        if regex_tables(&self.config).contains(&TableId(id)) {
            compiled.compile_regexes();
        }
        match self.tables[id].write() {
            Ok(mut t) => *t = Arc::new(compiled),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(compiled),
        }
        Ok(count)
    }

    /// The flattened chain a listener runs, if it is filtered.
    pub fn listener_chain(&self, l: &Listener) -> Option<&PhaseChains> {
        l.filter.as_ref().and_then(|f| self.chains.get(f))
    }
}

/// Every table some rule or filter uses with `regex`.
fn regex_tables(config: &Config) -> Vec<TableId> {
    let mut out = Vec::new();
    let mut add = |tm: Option<&TableMatch>| {
        if let Some(tm) = tm.filter(|t| t.regex) {
            out.push(tm.table);
        }
    };
    for r in &config.rules {
        if let Some(f) = &r.from {
            match &f.value {
                FromCriterion::Src(t) | FromCriterion::MailFrom(t) => add(Some(t)),
                FromCriterion::Rdns(t) | FromCriterion::Auth(t) => add(t.as_ref()),
                _ => {}
            }
        }
        if let Some(f) = &r.for_
            && let ForCriterion::Domain(t) | ForCriterion::RcptTo(t) = &f.value
        {
            add(Some(t));
        }
        for n in [&r.tag, &r.helo, &r.mail_from, &r.rcpt_to]
            .into_iter()
            .flatten()
        {
            add(Some(&n.value));
        }
        if let Some(a) = &r.auth {
            add(a.value.as_ref());
        }
    }
    for f in &config.filters {
        if let FilterKind::Builtin(b) = &f.kind {
            match &b.condition {
                Condition::Rdns(t) | Condition::Auth(t) => add(t.as_ref()),
                Condition::Src(t)
                | Condition::Helo(t)
                | Condition::MailFrom(t)
                | Condition::RcptTo(t) => add(Some(t)),
                Condition::Fcrdns => {}
            }
        }
    }
    out
}

fn flatten(config: &Config, f: &Filter) -> PhaseChains {
    let members: Vec<&Filter> = match &f.kind {
        FilterKind::Chain(names) => names
            .iter()
            .filter_map(|n| config.filter_named(n))
            .collect(),
        _ => vec![f],
    };
    let mut out = PhaseChains::default();
    for m in members {
        match &m.kind {
            FilterKind::Builtin(b) => {
                out.phases
                    .entry(b.phase)
                    .or_default()
                    .push(ChainStep::Builtin {
                        filter: m.name.clone(),
                        rule: b.clone(),
                    });
            }
            FilterKind::Proc(p) => {
                out.procs.push(p.clone());
                for phase in ALL_PHASES {
                    out.phases.entry(phase).or_default().push(ChainStep::Proc {
                        filter: m.name.clone(),
                        proc: p.clone(),
                    });
                }
            }
            FilterKind::ProcExec { .. } => {
                out.procs.push(m.name.clone());
                for phase in ALL_PHASES {
                    out.phases.entry(phase).or_default().push(ChainStep::Proc {
                        filter: m.name.clone(),
                        proc: m.name.clone(),
                    });
                }
            }
            FilterKind::Chain(_) => {}
        }
    }
    out
}

const ALL_PHASES: [Phase; 8] = [
    Phase::Connect,
    Phase::Helo,
    Phase::Ehlo,
    Phase::Auth,
    Phase::MailFrom,
    Phase::RcptTo,
    Phase::Data,
    Phase::Commit,
];
