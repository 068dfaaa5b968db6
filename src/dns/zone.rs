//! An in-memory [`Resolver`] built from zone-like text, for tests.
//!
//! Modules above the DNS layer (filters, sessions, relaying) test their
//! decisions against every DNS outcome without a server:
//!
//! ```text
//! ; comments start with ';'
//! 1.0.0.127.in-addr.arpa.  PTR   host.example.
//! host.example.            A     127.0.0.1
//! host.example.            AAAA  ::1
//! x.example.               MX    10 mx.example.
//! null.example.            MX    0 .
//! broken.example.          SERVFAIL
//! slow.example.            TIMEOUT
//! ```
//!
//! Lines are `NAME [TTL] [IN] TYPE DATA`; names are absolute (the trailing dot
//! is optional) and compared without regard to case. Types: `PTR`, `A`,
//! `AAAA`, `MX`. Two markers replace the type for a whole name: `SERVFAIL`
//! answers every question about it with a server failure, `TIMEOUT` never
//! answers (the lookup sleeps for [`ZoneResolver::with_stall`], one hour by
//! default, so the caller's deadline is what ends it).
//!
//! Answers follow the DNS: a name with no records at all is NXDOMAIN, unless
//! it is an ancestor of a name that has some (an "empty non-terminal", e.g.
//! `example.` above), which is NODATA like a name with records of other types.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use super::answer::{Answer, TempFailure};
use super::name::{reverse_name, strip_root_dot};
use super::resolver::{AddressFamily, Lookup, MxRecord, Resolver};

/// How a name behaves in a [`ZoneResolver`].
#[derive(Debug, Clone, Default)]
struct Node {
    ptr: Vec<String>,
    addresses: Vec<IpAddr>,
    mx: Vec<MxRecord>,
    txt: Vec<String>,
    fault: Option<Fault>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    ServFail,
    Stall,
}

/// A zone line could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for ZoneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "zone line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ZoneError {}

/// In-memory resolver answering from zone-like text.
#[derive(Debug, Clone)]
pub struct ZoneResolver {
    nodes: HashMap<String, Node>,
    stall: Duration,
}

impl ZoneResolver {
    /// Parses `text` (see the module documentation).
    pub fn from_zone(text: &str) -> Result<Self, ZoneError> {
        let mut resolver = ZoneResolver {
            nodes: HashMap::new(),
            stall: Duration::from_secs(3600),
        };
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split(';').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let error = |message: String| ZoneError {
                line: index + 1,
                message,
            };
            let mut words = line.split_ascii_whitespace().peekable();
            let owner = key(words.next().unwrap_or(""));
            if words.peek().is_some_and(|w| w.parse::<u32>().is_ok()) {
                words.next();
            }
            if words.peek().is_some_and(|w| w.eq_ignore_ascii_case("IN")) {
                words.next();
            }
            let kind = words
                .next()
                .ok_or_else(|| error("missing record type".to_string()))?
                .to_ascii_uppercase();
            let data: Vec<&str> = words.collect();
            let node = resolver.nodes.entry(owner).or_default();
            match (kind.as_str(), data.as_slice()) {
                ("PTR", [target]) => node.ptr.push(strip_root_dot(target)),
                ("A", [address]) => match address.parse() {
                    Ok(IpAddr::V4(v4)) => node.addresses.push(IpAddr::V4(v4)),
                    _ => return Err(error(format!("not an IPv4 address: {address}"))),
                },
                ("AAAA", [address]) => match address.parse() {
                    Ok(IpAddr::V6(v6)) => node.addresses.push(IpAddr::V6(v6)),
                    _ => return Err(error(format!("not an IPv6 address: {address}"))),
                },
                ("MX", [preference, exchange]) => {
                    let preference = preference
                        .parse()
                        .map_err(|_| error(format!("bad MX preference: {preference}")))?;
                    node.mx.push(MxRecord {
                        preference,
                        exchange: strip_root_dot(exchange),
                    });
                }
                ("TXT", [_, ..]) => node.txt.push(
                    data.iter()
                        .map(|w| w.trim_matches('"'))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                ("SERVFAIL", []) => node.fault = Some(Fault::ServFail),
                ("TIMEOUT", []) => node.fault = Some(Fault::Stall),
                ("PTR" | "A" | "AAAA" | "MX" | "TXT" | "SERVFAIL" | "TIMEOUT", _) => {
                    return Err(error(format!("wrong number of fields for {kind}")));
                }
                _ => return Err(error(format!("unsupported record type {kind}"))),
            }
        }
        Ok(resolver)
    }

    /// How long a `TIMEOUT` name keeps a lookup waiting.
    pub fn with_stall(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    /// Marks `name` as answering SERVFAIL to every question.
    pub fn servfail(mut self, name: &str) -> Self {
        self.nodes.entry(key(name)).or_default().fault = Some(Fault::ServFail);
        self
    }

    /// Marks `name` as never answering.
    pub fn timeout(mut self, name: &str) -> Self {
        self.nodes.entry(key(name)).or_default().fault = Some(Fault::Stall);
        self
    }

    /// Answers one question about `name`, `select` picking the records.
    async fn answer<T: Clone>(&self, name: &str, select: impl Fn(&Node) -> Vec<T>) -> Answer<T> {
        let key = key(name);
        match self.nodes.get(&key) {
            Some(node) => match node.fault {
                Some(Fault::ServFail) => Answer::TempFail(TempFailure::ServFail),
                Some(Fault::Stall) => {
                    tokio::time::sleep(self.stall).await;
                    Answer::TempFail(TempFailure::Timeout)
                }
                None => Answer::from_records(select(node)),
            },
            None if self.is_empty_non_terminal(&key) => Answer::NoData,
            None => Answer::NxDomain,
        }
    }

    fn is_empty_non_terminal(&self, key: &str) -> bool {
        let suffix = format!(".{key}");
        self.nodes.keys().any(|owner| owner.ends_with(&suffix))
    }
}

/// The lookup key for a name: lower case, no trailing dot.
fn key(name: &str) -> String {
    strip_root_dot(name).to_ascii_lowercase()
}

impl Resolver for ZoneResolver {
    fn ptr(&self, address: IpAddr) -> Lookup<'_, String> {
        Box::pin(async move {
            self.answer(&reverse_name(address), |node| node.ptr.clone())
                .await
        })
    }

    fn a_aaaa<'a>(&'a self, name: &'a str, family: AddressFamily) -> Lookup<'a, IpAddr> {
        Box::pin(async move {
            if name.is_empty() {
                return Answer::BadName;
            }
            self.answer(name, |node| {
                node.addresses
                    .iter()
                    .copied()
                    .filter(|address| family.admits(*address))
                    .collect()
            })
            .await
        })
    }

    fn mx<'a>(&'a self, domain: &'a str) -> Lookup<'a, MxRecord> {
        Box::pin(async move {
            if domain.is_empty() {
                return Answer::BadName;
            }
            self.answer(domain, |node| node.mx.clone()).await
        })
    }

    fn txt<'a>(&'a self, name: &'a str) -> Lookup<'a, String> {
        Box::pin(async move {
            if name.is_empty() {
                return Answer::BadName;
            }
            self.answer(name, |node| node.txt.clone()).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::within;
    use tokio::time::Instant;

    const ZONE: &str = "
        ; reverse
        1.0.0.127.in-addr.arpa.  PTR   host.example.
        2.0.0.127.in-addr.arpa.  SERVFAIL
        3.0.0.127.in-addr.arpa.  3600 IN PTR a.example.
        3.0.0.127.in-addr.arpa.  PTR   b.example.
        ; forward
        host.example.            A     127.0.0.1
        Host.Example.            AAAA  ::1
        x.example.               MX    20 mx2.example.
        x.example.               MX    10 mx1.example.
        only-a.example.          A     192.0.2.7
        broken.example.          SERVFAIL
        slow.example.            TIMEOUT
    ";

    fn zone() -> ZoneResolver {
        ZoneResolver::from_zone(ZONE).expect("zone parses")
    }

    #[tokio::test]
    async fn found() {
        let zone = zone();
        assert_eq!(
            zone.ptr("127.0.0.1".parse().unwrap()).await,
            Answer::Records(vec!["host.example".to_string()])
        );
        assert_eq!(
            zone.ptr("127.0.0.3".parse().unwrap()).await,
            Answer::Records(vec!["a.example".to_string(), "b.example".to_string()])
        );
        assert_eq!(
            zone.a_aaaa("HOST.example", AddressFamily::Any).await,
            Answer::Records(vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()])
        );
        assert_eq!(
            zone.a_aaaa("host.example.", AddressFamily::Ipv6).await,
            Answer::Records(vec!["::1".parse().unwrap()])
        );
        assert_eq!(
            zone.mx("x.example").await,
            Answer::Records(vec![
                MxRecord {
                    preference: 20,
                    exchange: "mx2.example".into()
                },
                MxRecord {
                    preference: 10,
                    exchange: "mx1.example".into()
                },
            ])
        );
    }

    #[tokio::test]
    async fn nxdomain() {
        let zone = zone();
        assert_eq!(
            zone.ptr("127.0.0.9".parse().unwrap()).await,
            Answer::NxDomain
        );
        assert_eq!(
            zone.a_aaaa("nowhere.example", AddressFamily::Any).await,
            Answer::NxDomain
        );
        assert_eq!(zone.mx("nowhere.example").await, Answer::NxDomain);
    }

    #[tokio::test]
    async fn nodata() {
        let zone = zone();
        // The name exists with other types.
        assert_eq!(zone.mx("only-a.example").await, Answer::NoData);
        assert_eq!(
            zone.a_aaaa("only-a.example", AddressFamily::Ipv6).await,
            Answer::NoData
        );
        assert_eq!(
            zone.a_aaaa("x.example", AddressFamily::Any).await,
            Answer::NoData
        );
        // Empty non-terminal: exists because names below it exist.
        assert_eq!(
            zone.a_aaaa("example", AddressFamily::Any).await,
            Answer::NoData
        );
        assert_eq!(
            zone.ptr("127.0.0.0".parse().unwrap()).await,
            Answer::NxDomain
        );
    }

    #[tokio::test]
    async fn servfail() {
        let zone = zone();
        let servfail = Answer::TempFail(TempFailure::ServFail);
        assert_eq!(zone.ptr("127.0.0.2".parse().unwrap()).await, servfail);
        assert_eq!(
            zone.mx("broken.example").await,
            Answer::TempFail(TempFailure::ServFail)
        );
        assert_eq!(
            zone.a_aaaa("broken.example", AddressFamily::Ipv4).await,
            Answer::TempFail(TempFailure::ServFail)
        );
        // Builder form.
        let zone = zone.servfail("host.example");
        assert!(
            zone.a_aaaa("host.example", AddressFamily::Any)
                .await
                .is_temporary()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_is_bounded_by_the_callers_deadline() {
        let zone = zone();
        let start = Instant::now();
        let answer = within(start + Duration::from_millis(250), zone.mx("slow.example")).await;
        assert_eq!(answer, Answer::TempFail(TempFailure::Timeout));
        assert_eq!(start.elapsed(), Duration::from_millis(250));

        let zone = zone
            .timeout("host.example")
            .with_stall(Duration::from_secs(2));
        let start = Instant::now();
        let answer = zone.a_aaaa("host.example", AddressFamily::Any).await;
        assert_eq!(answer, Answer::TempFail(TempFailure::Timeout));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[test]
    fn zone_errors_name_the_line() {
        let err = ZoneResolver::from_zone("a. A 1.2.3.4\nb. A not-an-address\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(
            err.to_string(),
            "zone line 2: not an IPv4 address: not-an-address"
        );
        assert!(ZoneResolver::from_zone("a. MX mx.example.").is_err());
        assert!(ZoneResolver::from_zone("a. CNAME b.").is_err());
        assert!(ZoneResolver::from_zone("a. TXT").is_err());
        assert!(ZoneResolver::from_zone("a.").is_err());
        assert!(ZoneResolver::from_zone("a. AAAA 127.0.0.1").is_err());
    }

    #[tokio::test]
    async fn usable_as_shared_trait_object() {
        let shared: std::sync::Arc<dyn Resolver> = std::sync::Arc::new(zone());
        let task = tokio::spawn({
            let shared = shared.clone();
            async move { shared.mx("x.example").await.records().len() }
        });
        assert_eq!(task.await.unwrap(), 2);
    }
}
