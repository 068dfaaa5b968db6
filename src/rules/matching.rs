//! Table lookups as OpenSMTPD's services do them, over tables compiled once for speed.
//!
//! Every subject is lower-cased first and static table keys are stored lower-cased, so
//! matching is case-insensitive — including regular expressions, whose patterns OpenSMTPD
//! lower-cases too (a pattern `\S` becomes `\s`; smtpd keeps that behaviour so that the same
//! table means the same thing, and documents the trap).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use regex::Regex;

use crate::config::model::{Table, TableBackend, TableKind};
use crate::table::LookupError;
use crate::table::Service;
use crate::table::proc::ProcTable;

/// A table ready for lookups: the entries, plus indexes built at load time so that large
/// tables are not scanned per lookup.
#[derive(Debug)]
pub struct CompiledTable {
    pub name: String,
    pub kind: TableKind,
    pub entries: std::sync::Arc<BTreeMap<String, String>>,
    /// netaddr: networks grouped by prefix length (longest first), holding masked networks.
    networks: Vec<(u8, bool, HashSet<IpAddr>)>,
    /// domain: keys with `*`, in sorted order.
    wild_domains: Vec<String>,
    /// regex: compiled patterns in key order, built on first use (most tables are never
    /// used as regular expressions); `None` never matches (invalid pattern).
    regexes: std::sync::OnceLock<Vec<Option<Regex>>>,
    /// An external table (`sqlite:`, `passwd:`...): its entries live in its program.
    external: bool,
    /// The backend word of lookup traces (`static`, `db`, `proc`...).
    backend: &'static str,
    /// The external table's program, once the daemon started it (`RuleGraph::open_tables`).
    program: std::sync::OnceLock<std::sync::Arc<ProcTable>>,
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// Parse a netaddr table entry or subject: `a.b.c.d[/n]` (with inet_net_pton's short forms,
/// `10.1` = `10.1.0.0/16`), `[v6]`, `IPv6:v6`, optional `/n`.
pub fn parse_netaddr(text: &str) -> Option<IpNetwork> {
    let t = text.trim();
    let (addr, bits) = match t.rsplit_once('/') {
        Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
        None => (t, None),
    };
    let addr = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr);
    let addr = addr
        .strip_prefix("IPv6:")
        .or_else(|| addr.strip_prefix("ipv6:"))
        .unwrap_or(addr);
    if let Ok(ip) = addr.parse::<IpAddr>() {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        return IpNetwork::new(ip, bits.unwrap_or(max)).ok();
    }
    // inet_net_pton short forms: 1 to 3 dotted decimal parts.
    let parts: Vec<&str> = addr.split('.').collect();
    if parts.is_empty()
        || parts.len() > 4
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let mut octets = [0u8; 4];
    for (i, p) in parts.iter().enumerate() {
        octets[i] = p.parse().ok()?;
    }
    let implied = (parts.len() * 8) as u8;
    IpNetwork::new(IpAddr::from(octets), bits.unwrap_or(implied)).ok()
}

/// `util.c:hostname_match`: `*` skips subject characters up to the next pattern character.
pub fn hostname_match(subject: &str, pattern: &str) -> bool {
    let s = subject.as_bytes();
    let p = pattern.as_bytes();
    let (mut i, mut j) = (0usize, 0usize);
    while j < p.len() {
        if p[j] == b'*' {
            j += 1;
            if j == p.len() {
                return i < s.len() || i > 0;
            }
            let next = p[j].to_ascii_lowercase();
            while i < s.len() && s[i].to_ascii_lowercase() != next {
                i += 1;
            }
            if i == s.len() {
                return false;
            }
            continue;
        }
        if i >= s.len() || !s[i].eq_ignore_ascii_case(&p[j]) {
            return false;
        }
        i += 1;
        j += 1;
    }
    i == s.len()
}

/// A mail address split at its last `@` (the null sender is `@`).
fn split_addr(a: &str) -> (&str, &str) {
    match a.rfind('@') {
        Some(i) => (&a[..i], &a[i + 1..]),
        None => (a, ""),
    }
}

/// `mailaddr_match`: does `subject` match the table entry `entry`?
pub fn mailaddr_match(subject: &str, entry: &str, delim: char) -> bool {
    let (su, sd) = split_addr(subject);
    let (eu, ed) = split_addr(entry);
    if entry == "@" {
        return true;
    }
    if !ed.is_empty() && !hostname_match(sd, ed) {
        return false;
    }
    if !eu.is_empty() {
        let su = if eu.contains(delim) {
            su
        } else {
            su.split(delim).next().unwrap_or(su)
        };
        if !su.eq_ignore_ascii_case(eu) {
            return false;
        }
    }
    !(eu.is_empty() && ed.is_empty())
}

/// Compile a POSIX-ERE-style pattern (as OpenSMTPD stores it: lower-cased); `(?i)` prefix =
/// case-insensitive. An invalid pattern never matches.
pub fn compile_regex(pattern: &str) -> Option<Regex> {
    let (flags, pat) = match pattern.strip_prefix("(?i)") {
        Some(rest) => ("(?i)", rest),
        None => ("", pattern),
    };
    regex::RegexBuilder::new(&format!("{flags}{pat}"))
        .size_limit(1 << 20)
        .build()
        .ok()
}

impl CompiledTable {
    pub fn compile(t: &Table) -> CompiledTable {
        let mut by_prefix: HashMap<(u8, bool), HashSet<IpAddr>> = HashMap::new();
        let mut wild_domains = Vec::new();
        for key in t.entries.keys() {
            // Only keys that can be addresses are parsed as such (a cheap test first: most
            // keys of big tables are names or mail addresses).
            let first = key.as_bytes().first().copied().unwrap_or(b'x');
            let maybe_addr = first.is_ascii_digit() || first == b'[' || key.contains(':');
            if let Some(net) = maybe_addr.then(|| parse_netaddr(key)).flatten() {
                let v6 = net.is_ipv6();
                by_prefix
                    .entry((net.prefix(), v6))
                    .or_default()
                    .insert(mask(net.ip(), net.prefix()));
            }
            if key.contains('*') {
                wild_domains.push(key.clone());
            }
        }
        let mut networks: Vec<(u8, bool, HashSet<IpAddr>)> = by_prefix
            .into_iter()
            .map(|((p, v6), set)| (p, v6, set))
            .collect();
        networks.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        CompiledTable {
            name: t.name.clone(),
            kind: t.kind,
            entries: t.entries.clone(),
            networks,
            wild_domains,
            regexes: std::sync::OnceLock::new(),
            external: matches!(&t.backend, TableBackend::External { backend, .. } if backend != "getpwnam"),
            backend: crate::table::backend_name(t),
            program: std::sync::OnceLock::new(),
        }
    }

    /// Is this an external table, answered by a program?
    pub fn is_external(&self) -> bool {
        self.external
    }

    /// Give an external table its running program.
    pub fn attach(&self, program: std::sync::Arc<ProcTable>) {
        let _ = self.program.set(program);
    }

    /// The program of an external table; without one (as under `smtpd -n`), lookups fail.
    pub fn program(&self) -> Result<&ProcTable, LookupError> {
        self.program
            .get()
            .map(|p| p.as_ref())
            .ok_or_else(|| LookupError("Operation not supported".into()))
    }

    /// The value stored for `key` (looked up lower-cased), for a service: from the entries,
    /// or asked of an external table's program; traced (`-T lookup`) as OpenSMTPD traces
    /// lookups, except that credentials are shown as `********`.
    pub fn get(
        &self,
        service: Service,
        key: &str,
    ) -> Result<Option<std::borrow::Cow<'_, str>>, LookupError> {
        let answer = self.get_untraced(service, key);
        let shown = match (&answer, service) {
            (Ok(Some(_)), Service::Credentials) => Ok(Some("********")),
            (Ok(v), _) => Ok(v.as_deref()),
            (Err(e), _) => Err(e.clone()),
        };
        crate::table::trace_answer(self.backend, &self.name, service.name(), key, &shown);
        answer
    }

    /// [`CompiledTable::get`] without the trace line, for callers that write their own.
    pub fn get_untraced(
        &self,
        service: Service,
        key: &str,
    ) -> Result<Option<std::borrow::Cow<'_, str>>, LookupError> {
        if self.kind == TableKind::Unusable {
            // A table that failed to load has no entries to trust: no answer, not "none".
            return Err(LookupError("Operation not supported".into()));
        }
        if !self.external {
            return Ok(self.lookup(key).map(std::borrow::Cow::Borrowed));
        }
        Ok(self
            .program()?
            .lookup(service, key)?
            .map(std::borrow::Cow::Owned))
    }

    /// Does `subject` match the table for a lookup service (OpenSMTPD's `table_match`)?
    /// Static tables use the service's match function; an external table's program
    /// decides. `delim` is the sub-address delimiter of mailaddr matching.
    pub fn matches(
        &self,
        service: Service,
        subject: &str,
        delim: char,
    ) -> Result<bool, LookupError> {
        if self.external {
            return self.program()?.check(service, subject);
        }
        Ok(match service {
            Service::Regex => self.match_regex(subject),
            Service::Netaddr => self.match_netaddr(subject),
            Service::Domain => self.match_domain(subject),
            Service::Mailaddr => self.match_mailaddr(subject, delim),
            _ => self.contains(subject),
        })
    }

    /// The backend word of lookup traces (`static`, `db`, `proc`, `getpwnam`).
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Exact lookup (alias, credentials, userinfo, string services).
    pub fn lookup(&self, key: &str) -> Option<&str> {
        self.entries
            .get(&key.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// string service: exact, case-insensitive.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(&key.to_ascii_lowercase())
    }

    /// domain service.
    pub fn match_domain(&self, subject: &str) -> bool {
        let s = subject.to_ascii_lowercase();
        self.entries.contains_key(&s) || self.wild_domains.iter().any(|p| hostname_match(&s, p))
    }

    /// netaddr service: `subject` is the client address text (`a.b.c.d`, `[v6]`, `local`).
    pub fn match_netaddr(&self, subject: &str) -> bool {
        let s = subject.to_ascii_lowercase();
        if self.entries.contains_key(&s) {
            return true;
        }
        let Some(net) = parse_netaddr(&s) else {
            return false;
        };
        let ip = match net.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.networks
            .iter()
            .any(|(prefix, v6, set)| *v6 == ip.is_ipv6() && set.contains(&mask(ip, *prefix)))
    }

    /// mailaddr service.
    pub fn match_mailaddr(&self, subject: &str, delim: char) -> bool {
        let s = subject.to_ascii_lowercase();
        self.entries.keys().any(|k| mailaddr_match(&s, k, delim))
    }

    /// Compile the table's keys as regular expressions (done once).
    pub fn compile_regexes(&self) {
        self.regexes
            .get_or_init(|| self.entries.keys().map(|k| compile_regex(k)).collect());
    }

    /// regex service: unanchored search of the lower-cased subject.
    pub fn match_regex(&self, subject: &str) -> bool {
        let s = subject.to_ascii_lowercase();
        let regexes = self
            .regexes
            .get_or_init(|| self.entries.keys().map(|k| compile_regex(k)).collect());
        regexes.iter().flatten().any(|r| r.is_match(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{Span, TableBackend};

    fn table(keys: &[&str]) -> CompiledTable {
        CompiledTable::compile(&Table {
            name: "t".into(),
            backend: TableBackend::Inline,
            kind: TableKind::List,
            entries: std::sync::Arc::new(
                keys.iter()
                    .map(|k| (k.to_ascii_lowercase(), String::new()))
                    .collect(),
            ),
            anonymous: false,
            span: Span::default(),
        })
    }

    #[test]
    fn hostname_wildcards() {
        assert!(hostname_match("a.example.org", "*.example.org"));
        assert!(!hostname_match("example.org", "*.example.org"));
        assert!(!hostname_match("a.b.example.org", "*.example.org"));
        assert!(hostname_match("anything", "*"));
        assert!(hostname_match("mail.example.org", "mail.*"));
        assert!(hostname_match("Bsdsx.FR", "bsdsx.fr"));
        assert!(!hostname_match("absdsx.fr", "bsdsx.fr"));
    }

    #[test]
    fn netaddr() {
        let t = table(&["10.0.0.0/8", "192.168.1.2", "local", "fd00::/8", "10.1"]);
        assert!(t.match_netaddr("10.2.3.4"));
        assert!(t.match_netaddr("192.168.1.2"));
        assert!(!t.match_netaddr("192.168.1.3"));
        assert!(t.match_netaddr("local"));
        assert!(t.match_netaddr("[fd12::1]"));
        assert!(t.match_netaddr("::ffff:10.9.9.9"));
        assert!(!t.match_netaddr("11.0.0.1"));
        let any = table(&["local", "0.0.0.0/0", "::/0"]);
        assert!(any.match_netaddr("203.0.113.9"));
        assert!(any.match_netaddr("[2001:db8::1]"));
    }

    #[test]
    fn large_table_is_indexed() {
        let keys: Vec<String> = (0..100_000u32)
            .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
            .collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let t = table(&refs);
        assert_eq!(t.networks.len(), 1);
        assert!(t.match_netaddr("10.1.134.159"));
        assert!(!t.match_netaddr("10.2.0.0"));
    }

    #[test]
    fn mailaddr() {
        assert!(mailaddr_match("foo@example.org", "@example.org", '+'));
        assert!(mailaddr_match(
            "foo+tag@example.org",
            "foo@example.org",
            '+'
        ));
        assert!(mailaddr_match("foo@example.org", "foo", '+'));
        assert!(!mailaddr_match("bar@example.org", "foo@example.org", '+'));
        assert!(mailaddr_match(
            "foo@a.example.org",
            "foo@*.example.org",
            '+'
        ));
        assert!(mailaddr_match("@", "@", '+'));
        assert!(!mailaddr_match("@", "foo", '+'));
    }

    #[test]
    fn regexes_lowercased_and_invalid_never_match() {
        let t = table(&["^admin@", "(["]);
        assert!(t.match_regex("Admin@example.org"));
        assert!(!t.match_regex("user@example.org"));
        let t = table(&["(?i)^BOB"]);
        assert!(t.match_regex("bob@x"));
    }
}
