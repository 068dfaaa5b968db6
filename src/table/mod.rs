//! Table backends: how the entries of `file:` and `db:` tables are read. Lookup services
//! (domain, netaddr, mailaddr, regex matching) live with the rule graph that uses them.

pub mod db;
pub mod file;

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
