//! Reverse DNS of an SMTP client: the `host=` of the connect log line and the
//! facts behind the `rdns` and `fcrdns` filter conditions.
//!
//! At connection OpenSMTPD 6.8 (`smtp_session.c`: `smtp_getnameinfo_cb`,
//! `smtp_getaddrinfo_cb`, resolving through libasr) does:
//!
//! 1. a PTR lookup of the client address. Its name becomes the session's
//!    reverse name; without one the name is `<unknown>` and FCrDNS is "fail";
//! 2. with a name, a forward lookup of that name **in the client's address
//!    family only**; FCrDNS is "pass" iff one of the returned addresses is the
//!    client address, "fail" if none is, the name has no such records or the
//!    lookup failed (see below), and "error" only if the name cannot be asked
//!    for at all (logged as `getaddrinfo: NAME: Non-recoverable failure in
//!    name resolution`).
//!
//! # Several PTR names
//!
//! OpenSMTPD uses exactly one name: libasr fills `h_name` from the **first PTR
//! record in the answer whose target is a valid host name** (`res_hnok`:
//! letters, digits, inner `-` and `_`); later ones become aliases that nobody
//! reads, and invalid ones are skipped. FCrDNS is then checked for that name
//! only. smtpd does the same, on purpose: `host=`, the `rdns <table>` match
//! and the `fcrdns` condition then all speak about the same name. (RFC 8601's
//! `iprev` would try up to ten names and pass if any confirms; a client with
//! several PTR records may pass there and fail here, exactly as it does with
//! OpenSMTPD.) The order is the order of the DNS answer, which a server may
//! rotate.
//!
//! # Temporary failures
//!
//! A lookup that fails (SERVFAIL, a timeout) counts as one that found nothing,
//! and nothing is logged, because that is what OpenSMTPD 6.8 really does
//! (measured against 6.8 with a name server answering SERVFAIL, in
//! `tests/corpus_runtime.rs`): libasr's `getnameinfo` with `NI_NAMEREQD`
//! reports every failure to find a name as `EAI_NONAME`, and its
//! `getaddrinfo` every failed query as `EAI_NODATA`, so the session's "error"
//! branches (and their `getnameinfo: ADDR: ERR` and `getaddrinfo: NAME: ERR`
//! warnings) are never reached for DNS trouble. A failed PTR lookup gives
//! `<unknown>` and "fail"; a failed forward lookup gives "fail".
//! [`RdnsOutcome::TempFail`] and [`FcrdnsOutcome::forward_failure`] keep the
//! reason, which smtpd logs at debug level (`-v`).
//!
//! An IPv4-mapped IPv6 client (`::ffff:a.b.c.d`) is looked up as the IPv4
//! client it is (PTR in `in-addr.arpa`, A records), which OpenSMTPD does not
//! do: behind a dual-stack listener it would never confirm such a client.
//!
//! Every lookup runs under the caller's deadline; running out of time counts
//! as a temporary failure of the lookup in progress.

use std::fmt;
use std::net::IpAddr;

use tokio::time::Instant;

use super::answer::{Answer, TempFailure};
use super::deadline::within;
use super::name::{canonical_client, is_host_name, looks_like_address};
use super::resolver::{AddressFamily, Resolver};

/// What OpenSMTPD logs and matches when there is no reverse name.
pub const UNKNOWN_HOST: &str = "<unknown>";

/// The outcome of the PTR lookup of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdnsOutcome {
    /// The client's reverse name: the first valid PTR target.
    Name(String),
    /// NXDOMAIN, NODATA, or only PTR targets that are not host names.
    NoName,
    /// The PTR lookup failed temporarily (or the deadline passed).
    TempFail(TempFailure),
}

impl RdnsOutcome {
    /// The name for `host=` in `smtp connected` and for `rdns <table>`
    /// matching: the reverse name or `<unknown>`.
    pub fn host(&self) -> &str {
        match self {
            RdnsOutcome::Name(name) => name,
            RdnsOutcome::NoName | RdnsOutcome::TempFail(_) => UNKNOWN_HOST,
        }
    }

    /// The reverse name, if there is one.
    pub fn name(&self) -> Option<&str> {
        match self {
            RdnsOutcome::Name(name) => Some(name),
            _ => None,
        }
    }

    /// The builtin `rdns` filter condition (before `!`): there is a reverse
    /// name and it is not itself an address literal (`lka_filter.c`,
    /// `filter_check_rdns`).
    pub fn rdns_condition(&self) -> bool {
        self.name().is_some_and(|name| !looks_like_address(name))
    }
}

/// OpenSMTPD's three FCrDNS states (`s->fcrdns` 1 / 0 / -1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fcrdns {
    /// The reverse name resolves back to the client address.
    Pass,
    /// No reverse name, no forward records, or none of them is the client.
    Fail,
    /// The name could not be asked for (not a valid question).
    Error,
}

impl Fcrdns {
    /// The word used in filter `link-connect` report events.
    pub fn as_str(self) -> &'static str {
        match self {
            Fcrdns::Pass => "pass",
            Fcrdns::Fail => "fail",
            Fcrdns::Error => "error",
        }
    }
}

impl fmt::Display for Fcrdns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reverse name and forward confirmation of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcrdnsOutcome {
    /// The PTR step.
    pub rdns: RdnsOutcome,
    /// The confirmation state.
    pub fcrdns: Fcrdns,
    /// Why the forward lookup failed, if it did (`fcrdns` is then
    /// [`Fcrdns::Fail`], or [`Fcrdns::Error`] for a name that is not a valid
    /// question).
    pub forward_failure: Option<TempFailure>,
}

impl FcrdnsOutcome {
    /// The name for `host=` and `rdns` matching (see [`RdnsOutcome::host`]).
    pub fn host(&self) -> &str {
        self.rdns.host()
    }

    /// The builtin `fcrdns` filter condition (before `!`): state is pass.
    pub fn fcrdns_condition(&self) -> bool {
        self.fcrdns == Fcrdns::Pass
    }

    /// The warning OpenSMTPD logs for this outcome, if any:
    /// `getaddrinfo: NAME: Non-recoverable failure in name resolution` for a
    /// name that cannot be asked for.
    pub fn warning(&self) -> Option<String> {
        match (&self.fcrdns, self.rdns.name()) {
            (Fcrdns::Error, Some(name)) => Some(format!(
                "getaddrinfo: {name}: Non-recoverable failure in name resolution"
            )),
            _ => None,
        }
    }

    /// What failed, for a debug line: a PTR or forward lookup that failed
    /// and was taken as one that found nothing.
    pub fn failure(&self) -> Option<String> {
        if let RdnsOutcome::TempFail(failure) = &self.rdns {
            return Some(format!("reverse lookup failed: {failure}"));
        }
        let name = self.rdns.name()?;
        let failure = self.forward_failure.as_ref()?;
        Some(format!("lookup of {name} failed: {failure}"))
    }
}

/// The PTR step alone: the client's reverse name.
pub async fn rdns(resolver: &dyn Resolver, client: IpAddr, deadline: Instant) -> RdnsOutcome {
    let client = canonical_client(client);
    match within(deadline, resolver.ptr(client)).await {
        Answer::Records(names) => names
            .into_iter()
            .find(|name| is_host_name(name))
            .map_or(RdnsOutcome::NoName, RdnsOutcome::Name),
        Answer::NxDomain | Answer::NoData | Answer::BadName => RdnsOutcome::NoName,
        Answer::TempFail(failure) => RdnsOutcome::TempFail(failure),
    }
}

/// The PTR step, then forward confirmation of the name found, both within
/// `deadline`.
pub async fn fcrdns(resolver: &dyn Resolver, client: IpAddr, deadline: Instant) -> FcrdnsOutcome {
    let client = canonical_client(client);
    let rdns = rdns(resolver, client, deadline).await;
    let Some(name) = rdns.name() else {
        return FcrdnsOutcome {
            rdns,
            fcrdns: Fcrdns::Fail,
            forward_failure: None,
        };
    };
    let forward = within(deadline, resolver.a_aaaa(name, AddressFamily::of(client))).await;
    let (fcrdns, forward_failure) = match forward {
        Answer::Records(addresses) if addresses.contains(&client) => (Fcrdns::Pass, None),
        Answer::Records(_) | Answer::NxDomain | Answer::NoData => (Fcrdns::Fail, None),
        Answer::TempFail(failure) => (Fcrdns::Fail, Some(failure)),
        Answer::BadName => (
            Fcrdns::Error,
            Some(TempFailure::Other(
                "reverse name is not a valid question".into(),
            )),
        ),
    };
    FcrdnsOutcome {
        rdns,
        fcrdns,
        forward_failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::ZoneResolver;
    use std::time::Duration;

    const ZONE: &str = "
        2.0.0.127.in-addr.arpa.   A     127.0.0.2         ; exists, no PTR
        3.0.0.127.in-addr.arpa.   PTR   norev.example.    ; no forward records
        4.0.0.127.in-addr.arpa.   PTR   good.example.
        5.0.0.127.in-addr.arpa.   PTR   elsewhere.example.
        6.0.0.127.in-addr.arpa.   PTR   flaky.example.
        7.0.0.127.in-addr.arpa.   SERVFAIL
        8.0.0.127.in-addr.arpa.   TIMEOUT
        9.0.0.127.in-addr.arpa.   PTR   bad_.example.
        9.0.0.127.in-addr.arpa.   PTR   second.example.
        9.0.0.127.in-addr.arpa.   PTR   good.example.
        10.0.0.127.in-addr.arpa.  PTR   192.0.2.10.
        11.0.0.127.in-addr.arpa.  PTR   slow.example.
        12.0.0.127.in-addr.arpa.  PTR   good.example.
        f.e.e.b.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. PTR v6.example.
        192.0.2.10.               A     127.0.0.10
        good.example.             A     127.0.0.4
        good.example.             A     127.0.0.9
        good.example.             AAAA  ::ffff:127.0.0.12
        norev.example.            MX    10 mx.example.
        elsewhere.example.        A     192.0.2.1
        second.example.           A     192.0.2.2
        flaky.example.            SERVFAIL
        slow.example.             TIMEOUT
        v6.example.               A     127.0.0.1
        v6.example.               AAAA  2001:db8::beef
    ";

    fn zone() -> ZoneResolver {
        ZoneResolver::from_zone(ZONE).expect("zone parses")
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    async fn check(client: &str) -> FcrdnsOutcome {
        fcrdns(&zone(), client.parse().unwrap(), soon()).await
    }

    #[tokio::test]
    async fn no_ptr_is_unknown_and_fail() {
        for client in ["127.0.0.2", "127.0.0.99"] {
            let outcome = check(client).await;
            assert_eq!(outcome.rdns, RdnsOutcome::NoName, "{client}");
            assert_eq!(outcome.host(), "<unknown>");
            assert_eq!(outcome.fcrdns, Fcrdns::Fail);
            assert!(!outcome.rdns.rdns_condition());
            assert!(!outcome.fcrdns_condition());
            assert_eq!(outcome.warning(), None);
        }
    }

    #[tokio::test]
    async fn ptr_without_forward_records_fails() {
        let outcome = check("127.0.0.3").await;
        assert_eq!(outcome.host(), "norev.example");
        assert!(outcome.rdns.rdns_condition());
        assert_eq!(outcome.fcrdns, Fcrdns::Fail);
        assert_eq!(outcome.warning(), None);
    }

    #[tokio::test]
    async fn ptr_pointing_elsewhere_fails() {
        let outcome = check("127.0.0.5").await;
        assert_eq!(outcome.host(), "elsewhere.example");
        assert_eq!(outcome.fcrdns, Fcrdns::Fail);
    }

    #[tokio::test]
    async fn confirmed_name_passes() {
        let outcome = check("127.0.0.4").await;
        assert_eq!(outcome.host(), "good.example");
        assert_eq!(outcome.fcrdns, Fcrdns::Pass);
        assert!(outcome.fcrdns_condition());
        assert_eq!(outcome.fcrdns.to_string(), "pass");
    }

    #[tokio::test]
    async fn mapped_ipv6_client_is_checked_as_ipv4() {
        let outcome = check("::ffff:127.0.0.4").await;
        assert_eq!(outcome.host(), "good.example");
        assert_eq!(outcome.fcrdns, Fcrdns::Pass);
    }

    #[tokio::test]
    async fn ipv6_client_is_confirmed_with_aaaa_only() {
        let outcome = check("2001:db8::beef").await;
        assert_eq!(outcome.host(), "v6.example");
        assert_eq!(outcome.fcrdns, Fcrdns::Pass);
    }

    #[tokio::test]
    async fn forward_servfail_is_fail_without_warning_like_libasr() {
        let outcome = check("127.0.0.6").await;
        assert_eq!(outcome.host(), "flaky.example");
        assert_eq!(outcome.fcrdns, Fcrdns::Fail);
        assert_eq!(outcome.forward_failure, Some(TempFailure::ServFail));
        assert_eq!(outcome.warning(), None);
        assert_eq!(
            outcome.failure().as_deref(),
            Some("lookup of flaky.example failed: server failure (SERVFAIL)")
        );
        assert!(!outcome.fcrdns_condition());
    }

    #[tokio::test]
    async fn ptr_servfail_is_unknown_and_fail_like_libasr() {
        let outcome = check("127.0.0.7").await;
        assert_eq!(outcome.rdns, RdnsOutcome::TempFail(TempFailure::ServFail));
        assert_eq!(outcome.host(), "<unknown>");
        assert_eq!(outcome.fcrdns, Fcrdns::Fail);
        assert_eq!(outcome.warning(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn ptr_timeout_ends_at_the_deadline() {
        let start = Instant::now();
        let outcome = fcrdns(
            &zone(),
            "127.0.0.8".parse().unwrap(),
            start + Duration::from_secs(2),
        )
        .await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(outcome.rdns, RdnsOutcome::TempFail(TempFailure::Timeout));
        assert_eq!(outcome.host(), "<unknown>");
        assert_eq!(outcome.fcrdns, Fcrdns::Fail);
    }

    #[tokio::test(start_paused = true)]
    async fn forward_timeout_ends_at_the_same_deadline() {
        let start = Instant::now();
        let outcome = fcrdns(
            &zone(),
            "127.0.0.11".parse().unwrap(),
            start + Duration::from_secs(3),
        )
        .await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(outcome.host(), "slow.example");
        assert_eq!(outcome.fcrdns, Fcrdns::Fail);
        assert_eq!(outcome.forward_failure, Some(TempFailure::Timeout));
    }

    #[tokio::test]
    async fn first_valid_ptr_name_is_the_one_used() {
        // bad_.example is skipped (not a host name); second.example is the
        // session's name; it does not confirm, and good.example (which
        // would) is not tried.
        let outcome = check("127.0.0.9").await;
        assert_eq!(outcome.host(), "second.example");
        assert_eq!(outcome.fcrdns, Fcrdns::Fail);
    }

    #[tokio::test]
    async fn only_the_clients_family_confirms() {
        // good.example has the client only as a (mapped) AAAA record; an
        // IPv4 client is confirmed by A records alone.
        let outcome = check("127.0.0.12").await;
        assert_eq!(outcome.host(), "good.example");
        assert_eq!(outcome.fcrdns, Fcrdns::Fail);
    }

    #[tokio::test]
    async fn address_literal_name_fails_rdns_condition() {
        let outcome = check("127.0.0.10").await;
        assert_eq!(outcome.host(), "192.0.2.10");
        assert!(!outcome.rdns.rdns_condition());
        // FCrDNS itself only compares addresses.
        assert_eq!(outcome.fcrdns, Fcrdns::Pass);
    }

    #[tokio::test]
    async fn rdns_alone() {
        let zone = zone();
        let outcome = rdns(&zone, "127.0.0.4".parse().unwrap(), soon()).await;
        assert_eq!(outcome, RdnsOutcome::Name("good.example".into()));
        let outcome = rdns(&zone, "127.0.0.3".parse().unwrap(), soon()).await;
        assert_eq!(outcome.name(), Some("norev.example"));
    }
}
