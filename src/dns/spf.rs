//! `smtpctl spf walk`: the addresses and networks the SPF records of some domains allow,
//! includes and redirects followed — what an administrator feeds to a greylisting or
//! allow list (OpenSMTPD's `spfwalk.c`).
//!
//! For each domain: its TXT records starting with `v=spf1`; in them, terms with the `+`
//! qualifier or none: `ip4:` and `ip6:` give their address or network as written, `a` and
//! `mx` (with an optional `:domain`) give the addresses of the domain or of its mail
//! exchangers, `include:` and `redirect=` are walked in turn. Terms qualified `-`, `~` or
//! `?`, and `exists:`, `ptr`, `exp=`, `all`, give nothing. Each domain is walked once, each
//! address printed once, and at most [`MAX_LOOKUPS`] DNS questions are asked in all.

use std::collections::HashSet;
use std::net::IpAddr;

use super::answer::Answer;
use super::resolver::{AddressFamily, Resolver};

/// DNS questions one walk may ask.
pub const MAX_LOOKUPS: usize = 1000;

/// A walk in progress: what was printed and walked, and the questions left.
pub struct Walk<'r> {
    resolver: &'r dyn Resolver,
    walked: HashSet<String>,
    seen: HashSet<String>,
    /// Addresses and networks, in the order found.
    pub found: Vec<String>,
    lookups: usize,
    /// Domains whose records could not be read (temporary failure), for a warning.
    pub failed: Vec<String>,
}

impl<'r> Walk<'r> {
    pub fn new(resolver: &'r dyn Resolver) -> Walk<'r> {
        Walk {
            resolver,
            walked: HashSet::new(),
            seen: HashSet::new(),
            found: Vec::new(),
            lookups: 0,
            failed: Vec::new(),
        }
    }

    fn budget(&mut self) -> bool {
        if self.lookups >= MAX_LOOKUPS {
            return false;
        }
        self.lookups += 1;
        true
    }

    fn emit(&mut self, item: String) {
        if self.seen.insert(item.clone()) {
            self.found.push(item);
        }
    }

    /// Walks `domain`'s SPF records (and what they name).
    pub async fn domain(&mut self, domain: &str) {
        // Bounded by the lookup budget and the walked set (each domain once).
        let mut pending = vec![domain.trim().trim_end_matches('.').to_ascii_lowercase()];
        while let Some(name) = pending.pop() {
            if name.is_empty() || !self.walked.insert(name.clone()) || !self.budget() {
                continue;
            }
            let records = match self.resolver.txt(&name).await {
                Answer::Records(r) => r,
                Answer::TempFail(_) => {
                    self.failed.push(name.clone());
                    continue;
                }
                _ => continue,
            };
            let mut next = Vec::new();
            for record in records {
                let mut terms = record.split_ascii_whitespace();
                if !terms
                    .next()
                    .is_some_and(|v| v.eq_ignore_ascii_case("v=spf1"))
                {
                    continue;
                }
                for term in terms {
                    let term = match term.as_bytes().first() {
                        Some(b'+') => &term[1..],
                        Some(b'-' | b'~' | b'?') => continue,
                        _ => term,
                    };
                    let lower = term.to_ascii_lowercase();
                    if let Some(net) = lower
                        .strip_prefix("ip4:")
                        .or_else(|| lower.strip_prefix("ip6:"))
                    {
                        let address = net.split('/').next().unwrap_or("");
                        if address.parse::<IpAddr>().is_ok() {
                            self.emit(net.to_string());
                        }
                    } else if let Some(d) = lower
                        .strip_prefix("include:")
                        .or_else(|| lower.strip_prefix("redirect="))
                    {
                        next.push(d.trim_end_matches('.').to_string());
                    } else if lower == "a" || lower.starts_with("a:") || lower.starts_with("a/") {
                        let target = lower
                            .strip_prefix("a:")
                            .map(|t| t.split('/').next().unwrap_or(""))
                            .unwrap_or(&name)
                            .to_string();
                        self.addresses(&target).await;
                    } else if lower == "mx" || lower.starts_with("mx:") || lower.starts_with("mx/")
                    {
                        let target = lower
                            .strip_prefix("mx:")
                            .map(|t| t.split('/').next().unwrap_or(""))
                            .unwrap_or(&name)
                            .to_string();
                        if !self.budget() {
                            continue;
                        }
                        if let Answer::Records(mxs) = self.resolver.mx(&target).await {
                            for mx in mxs {
                                self.addresses(&mx.exchange).await;
                            }
                        }
                    }
                }
            }
            // Walked in the order written.
            pending.extend(next.into_iter().rev());
        }
    }

    async fn addresses(&mut self, name: &str) {
        if !self.budget() {
            return;
        }
        if let Answer::Records(addrs) = self.resolver.a_aaaa(name, AddressFamily::Any).await {
            for a in addrs {
                self.emit(a.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::ZoneResolver;

    const ZONE: &str = r#"
        example.org.        TXT  "v=spf1 ip4:192.0.2.0/24 include:_spf.example.net -ip4:198.51.100.1 ~all"
        example.org.        TXT  "google-site-verification=abc"
        _spf.example.net.   TXT  "v=spf1 ip6:2001:db8::/32 a mx redirect=loop.example.org"
        _spf.example.net.   A    203.0.113.5
        _spf.example.net.   MX   10 mx.example.net.
        mx.example.net.     A    203.0.113.25
        mx.example.net.     AAAA 2001:db8::25
        loop.example.org.   TXT  "v=spf1 include:example.org ip4:192.0.2.0/24 +ip4:198.51.100.7 a:host.example.net ?ip4:10.0.0.1"
        host.example.net.   A    203.0.113.9
        broken.example.     SERVFAIL
    "#;

    #[tokio::test]
    async fn walks_includes_and_redirects_once_each() {
        let r = ZoneResolver::from_zone(ZONE).unwrap();
        let mut w = Walk::new(&r);
        w.domain("Example.org").await;
        w.domain("broken.example").await;
        w.domain("nothing.example").await;
        assert_eq!(
            w.found,
            vec![
                "192.0.2.0/24",
                "2001:db8::/32",
                "203.0.113.5",
                "203.0.113.25",
                "2001:db8::25",
                "198.51.100.7",
                "203.0.113.9",
            ]
        );
        assert_eq!(w.failed, vec!["broken.example".to_string()]);
    }
}
