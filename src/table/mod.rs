//! Table backends: how the entries of `file:` and `db:` tables are read, and how external
//! tables' programs are asked (`proc`); the lookup services every use names, and the
//! lookup trace lines. The match functions of static tables live with the rule graph that
//! compiles them.

pub mod credentials;
pub mod db;
pub mod file;
pub mod makemap;
pub mod proc;

use std::collections::BTreeMap;

use crate::config::model::TableKind;

/// Table backends of OpenSMTPD's extras that smtpd knows by name. They pass `smtpd -n` like
/// any other table and answer every kind of lookup.
pub const EXTERNAL_BACKENDS: &[&str] = &[
    "ldap",
    "mysql",
    "passwd",
    "postgres",
    "python",
    "redis",
    "socketmap",
    "sqlite",
];

/// A lookup service (OpenSMTPD's `enum table_service`, `K_*`): what the caller wants to
/// know, and so which match function a static table uses, or which query an external
/// table's program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Alias,
    Domain,
    Credentials,
    Netaddr,
    Userinfo,
    Source,
    Mailaddr,
    Addrname,
    Mailaddrmap,
    Relayhost,
    String,
    Regex,
}

impl Service {
    /// The service's bit (`K_ALIAS` = 0x001 ... `K_REGEX` = 0x800).
    pub fn bit(self) -> i32 {
        1 << self as i32
    }

    /// The name lookup traces print (`table_service_name`).
    pub fn name(self) -> &'static str {
        match self {
            Service::Alias => "ALIAS",
            Service::Domain => "DOMAIN",
            Service::Credentials => "CREDENTIALS",
            Service::Netaddr => "NETADDR",
            Service::Userinfo => "USERINFO",
            Service::Source => "SOURCE",
            Service::Mailaddr => "MAILADDR",
            Service::Addrname => "ADDRNAME",
            Service::Mailaddrmap => "MAILADDRMAP",
            Service::Relayhost => "RELAYHOST",
            Service::String => "STRING",
            Service::Regex => "REGEX",
        }
    }
}

/// A lookup the table could not answer (its backend failed): the caller answers with a
/// temporary failure, never as if the key were absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupError(pub String);

/// The backend word of lookup trace lines for a table (`static` for inline and file tables,
/// as OpenSMTPD names its backend for both).
pub fn backend_name(t: &crate::config::model::Table) -> &'static str {
    use crate::config::model::TableBackend;
    match &t.backend {
        TableBackend::Inline | TableBackend::File { .. } => "static",
        TableBackend::Db { .. } => "db",
        TableBackend::External { backend, .. } if backend == "getpwnam" => "getpwnam",
        TableBackend::External { .. } => "proc",
        TableBackend::Builtin if t.name == "<getpwnam>" => "getpwnam",
        TableBackend::Builtin => "static",
    }
}

/// `-T tables`: every table, in name order, as OpenSMTPD 6.8's lookup process dumps them
/// once the configuration is in — `TABLE "NAME" backend=BACKEND type=HASH|LIST|DYNAMIC`,
/// ` config="PATH"` for a table read from a file or run by a program, then for the tables
/// smtpd holds itself one line per entry (`<TAB>"KEY" -> "VALUE"`, or `<TAB>"KEY"` in a
/// list). Debug lines, as in 6.8: shown with `-v`.
pub fn trace_dump(tables: &[crate::config::model::Table]) {
    use crate::config::model::{TableBackend, TableKind};
    if !crate::log::tracing("tables") {
        return;
    }
    let mut sorted: Vec<&crate::config::model::Table> = tables.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for t in sorted {
        let backend = backend_name(t);
        let config = match &t.backend {
            TableBackend::File { path, .. } | TableBackend::Db { path } => {
                format!(" config=\"{path}\"")
            }
            TableBackend::External { backend, config } if config.is_empty() => {
                format!(" config=\"{backend}\"")
            }
            TableBackend::External { backend, config } => {
                format!(" config=\"{backend}:{config}\"")
            }
            TableBackend::Inline | TableBackend::Builtin => String::new(),
        };
        // 6.8 types a table by its contents only when it holds them itself; a file
        // without entries stays untyped.
        let kind = match (backend, t.kind) {
            ("static", _) if t.entries.is_empty() => "NONE",
            ("static", TableKind::List) => "LIST",
            ("static", TableKind::Mapping) => "HASH",
            _ => "DYNAMIC",
        };
        tracing::debug!("TABLE \"{}\" backend={backend} type={kind}{config}", t.name);
        if backend != "static" {
            continue;
        }
        for (key, value) in t.entries.iter() {
            if t.kind == TableKind::List {
                tracing::debug!("\t\"{key}\"");
            } else {
                tracing::debug!("\t\"{key}\" -> \"{value}\"");
            }
        }
    }
}

/// Writes OpenSMTPD's lookup trace line (`-T lookup`): `lookup: lookup "KEY" as SERVICE in
/// table BACKEND:NAME -> "VALUE"|none|error: WHY`.
pub fn trace_answer<T: AsRef<str>>(
    backend: &str,
    table: &str,
    service: &str,
    key: &str,
    answer: &Result<Option<T>, LookupError>,
) {
    let result = match answer {
        Ok(Some(v)) => format!("\"{}\"", v.as_ref()),
        Ok(None) => "none".to_string(),
        Err(LookupError(e)) => format!("error: {e}"),
    };
    tracing::trace!(
        target: "lookup",
        "lookup: lookup \"{}\" as {} in table {}:{} -> {}",
        key,
        service,
        backend,
        table,
        result
    );
}

/// Writes OpenSMTPD's match trace line (`-T lookup`): `lookup: match "KEY" as SERVICE in
/// table BACKEND:NAME -> true|false|error: WHY`.
pub fn trace_match(
    backend: &str,
    table: &str,
    service: &str,
    key: &str,
    answer: &Result<bool, LookupError>,
) {
    let result = match answer {
        Ok(b) => b.to_string(),
        Err(LookupError(e)) => format!("error: {e}"),
    };
    tracing::trace!(
        target: "lookup",
        "lookup: match \"{}\" as {} in table {}:{} -> {}",
        key,
        service,
        backend,
        table,
        result
    );
}

/// Entries read from a table source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub kind: TableKind,
    pub entries: BTreeMap<String, String>,
}

/// Why a table could not be loaded; the text is the line OpenSMTPD prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    Open(String),
    Format(String),
}

/// Build a table's map from entries in file order: a later duplicate key replaces an earlier
/// one. Sorting once and building the map in bulk is several times faster than inserting
/// 100,000 keys one by one.
pub fn build_entries(mut pairs: Vec<(String, String)>) -> BTreeMap<String, String> {
    // Reversed, a stable sort puts the last of equal keys first; dedup keeps it. Everything
    // happens in the one vector, and the map is then built in bulk from sorted input.
    pairs.reverse();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs.dedup_by(|later, first| later.0 == first.0);
    pairs.into_iter().collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn later_duplicates_win() {
        let m = super::build_entries(vec![
            ("b".into(), "1".into()),
            ("a".into(), "x".into()),
            ("b".into(), "2".into()),
        ]);
        assert_eq!(m.len(), 2);
        assert_eq!(m["b"], "2");
    }
}
