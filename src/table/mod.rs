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

/// Build a table's map from entries in file order: a later duplicate key replaces an earlier
/// one. Sorting once and building the map in bulk is several times faster than inserting
/// 100,000 keys one by one.
pub fn build_entries(pairs: Vec<(String, String)>) -> BTreeMap<String, String> {
    // Files are often written sorted already: then there is nothing to sort. Otherwise an
    // unstable sort on (key, position) puts a later duplicate after an earlier one.
    let mut out: Vec<(String, String)> = Vec::with_capacity(pairs.len());
    if pairs.windows(2).all(|w| w[0].0 <= w[1].0) {
        for (k, v) in pairs {
            push_last_wins(&mut out, k, v);
        }
    } else {
        let mut indexed: Vec<(String, String, usize)> = pairs
            .into_iter()
            .enumerate()
            .map(|(i, (k, v))| (k, v, i))
            .collect();
        indexed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
        for (k, v, _) in indexed {
            push_last_wins(&mut out, k, v);
        }
    }
    out.into_iter().collect()
}

fn push_last_wins(out: &mut Vec<(String, String)>, k: String, v: String) {
    match out.last_mut() {
        Some(last) if last.0 == k => last.1 = v,
        _ => out.push((k, v)),
    }
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
