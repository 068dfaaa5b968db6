//! Plain-text table files (`table NAME file:/path`), in table(5) format.
//!
//! One entry a line; blank lines and lines starting with `#` are skipped; `# @list` before the
//! first entry makes the file a list. Otherwise the first entry decides: with a blank or `:`
//! in it the file is a mapping (`key value`, `key: value`, `key:value`), without one a list.

use super::{LoadError, Loaded};
use crate::config::model::TableKind;

/// Read a table file.
pub fn load(path: &str) -> Result<Loaded, LoadError> {
    let bytes = std::fs::read(path).map_err(|e| {
        LoadError::Open(format!(
            "{path}: fopen: {}",
            crate::config::diag::strerror(&e)
        ))
    })?;
    match std::str::from_utf8(&bytes) {
        Ok(text) => parse(path, text),
        Err(_) => parse(path, &String::from_utf8_lossy(&bytes)),
    }
}

/// Parse table-file text; `path` only names the file in messages.
pub fn parse(path: &str, text: &str) -> Result<Loaded, LoadError> {
    let mut kind: Option<TableKind> = None;
    let mut entries: Vec<(String, String)> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            if kind.is_none() && line == "# @list" {
                kind = Some(TableKind::List);
            }
            continue;
        }
        let k = *kind.get_or_insert(if line.contains([' ', '\t', ':']) {
            TableKind::Mapping
        } else {
            TableKind::List
        });
        if k == TableKind::List {
            entries.push((line.to_ascii_lowercase(), String::new()));
            continue;
        }
        let Some(sep) = line.find([' ', '\t', ':']) else {
            return Err(LoadError::Format(format!(
                "{path}: invalid map entry line {}",
                n + 1
            )));
        };
        let key = &line[..sep];
        let mut rest = &line[sep + 1..];
        loop {
            let r = rest.trim_start_matches([' ', '\t']);
            if let Some(after) = r.strip_prefix(':')
                && after.starts_with([' ', '\t'])
            {
                rest = after;
                continue;
            }
            rest = r;
            break;
        }
        if rest.is_empty() || key.is_empty() {
            return Err(LoadError::Format(format!(
                "{path}: invalid map entry line {}",
                n + 1
            )));
        }
        entries.push((key.to_ascii_lowercase(), rest.to_string()));
    }
    Ok(Loaded {
        kind: kind.unwrap_or(TableKind::Mapping),
        entries: super::build_entries(entries),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_forms() {
        let l = parse("t", "Key value\nb: v\nc:v\nd : v\ne::v\n# c\n\n").unwrap();
        assert_eq!(l.kind, TableKind::Mapping);
        assert_eq!(l.entries["key"], "value");
        assert_eq!(l.entries["b"], "v");
        assert_eq!(l.entries["c"], "v");
        assert_eq!(l.entries["d"], "v");
        assert_eq!(l.entries["e"], ":v");
    }

    #[test]
    fn list_and_forced_list() {
        let l = parse("t", "example.org\nExample.NET\n").unwrap();
        assert_eq!(l.kind, TableKind::List);
        assert!(l.entries.contains_key("example.net"));
        let l = parse("t", "# @list\na b\n").unwrap();
        assert_eq!(l.kind, TableKind::List);
        assert!(l.entries.contains_key("a b"));
    }

    #[test]
    fn empty_is_mapping_and_missing_value_fails() {
        assert_eq!(parse("t", "").unwrap().kind, TableKind::Mapping);
        assert_eq!(
            parse("t", "a b\nc\n"),
            Err(LoadError::Format("t: invalid map entry line 2".into()))
        );
    }
}
