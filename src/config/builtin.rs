//! The tables smtpd creates before reading the file, as OpenSMTPD does: `<localhost>`,
//! `<anyhost>`, `<localnames>`, `<anydestination>` and `<getpwnam>`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::model::*;
use super::system::System;

fn builtin(name: &str, kind: TableKind, keys: Vec<String>) -> Table {
    let entries: BTreeMap<String, String> = keys
        .into_iter()
        .map(|k| (k.to_ascii_lowercase(), String::new()))
        .collect();
    Table {
        name: name.to_string(),
        backend: TableBackend::Builtin,
        kind,
        entries: std::sync::Arc::new(entries),
        anonymous: false,
        span: Span::default(),
    }
}

pub fn add_builtin_tables(cfg: &mut Config, system: &dyn System) {
    let addrs = system.local_addresses();
    let mut localhost = vec!["local".to_string()];
    localhost.extend(addrs.iter().map(|a| a.to_string()));
    cfg.tables
        .push(builtin("<localhost>", TableKind::List, localhost));
    cfg.tables.push(builtin(
        "<anyhost>",
        TableKind::List,
        vec!["local".into(), "0.0.0.0/0".into(), "::/0".into()],
    ));
    let mut names = vec!["localhost".to_string(), cfg.hostname.clone()];
    for a in &addrs {
        match a {
            IpAddr::V4(v4) => {
                names.push(v4.to_string());
                names.push(format!("[{v4}]"));
            }
            IpAddr::V6(v6) => {
                names.push(v6.to_string());
                names.push(format!("[{v6}]"));
                names.push(format!("[ipv6:{v6}]"));
            }
        }
    }
    cfg.tables
        .push(builtin("<localnames>", TableKind::List, names));
    let mut anydest = vec!["*".to_string()];
    if let Some((short, _)) = cfg.hostname.split_once('.') {
        anydest.push(short.to_string());
    }
    cfg.tables
        .push(builtin("<anydestination>", TableKind::List, anydest));
    let mut pw = builtin("<getpwnam>", TableKind::Mapping, Vec::new());
    pw.kind = TableKind::Dynamic;
    cfg.tables.push(pw);
}
