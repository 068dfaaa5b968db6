//! Where mail for a domain goes: the MX step of relaying.
//!
//! [`mail_exchangers`] turns the MX answer for a destination domain into the
//! list of hosts to try, or the reason there is none:
//!
//! * MX records are sorted by preference, lowest first. Equal preferences keep
//!   the server's order; RFC 5321 §5.1 asks senders to randomise among them,
//!   which is left to the relay (it also knows which hosts it already tried).
//!   A host listed twice is kept once, at its best preference.
//! * No MX records (NODATA): RFC 5321 §5.1's implicit MX. If the domain has
//!   A or AAAA records it is its own exchanger, preference 0
//!   ([`MailExchanger::implicit`]); if it has neither, there is no mail host.
//!   (OpenSMTPD's `dns.c` does the same fallback.)
//! * A null MX (RFC 7505: a single MX record whose exchanger is the root `.`)
//!   means the domain accepts no mail. Root exchangers mixed with real ones
//!   are dropped and the real ones used.
//!
//! [`MxRoute::failure`] gives the delivery outcome OpenSMTPD 6.8 reports for
//! each failure (`mta.c`, the `stat=` of `mta delivery` and the
//! `smtp-out: Failed to resolve MX for ...: REASON` line), with one deliberate
//! difference: 6.8 knows nothing of null MX (it looks up the host "" and ends
//! in a temporary "No MX found for domain", retried until expiry); smtpd fails
//! such mail permanently with RFC 7505's "Domain does not accept mail".
//!
//! Addresses of the exchangers are looked up by the relay with
//! [`Resolver::a_aaaa`] when it connects.

use tokio::time::Instant;

use super::answer::{Answer, TempFailure};
use super::deadline::within;
use super::name::strip_root_dot;
use super::resolver::{AddressFamily, MxRecord, Resolver};

/// One host to deliver to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailExchanger {
    /// Lower is tried first.
    pub preference: u16,
    /// Host name, without trailing dot.
    pub host: String,
    /// True when the domain had no MX records and is its own exchanger.
    pub implicit: bool,
}

/// The MX step's result for a destination domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxRoute {
    /// Hosts to try, most preferred first. Never empty.
    Exchangers(Vec<MailExchanger>),
    /// RFC 7505 null MX: the domain does not accept mail.
    NullMx,
    /// NXDOMAIN: the domain does not exist.
    NoSuchDomain,
    /// The domain exists but has neither MX nor address records.
    NoMailHost,
    /// The lookup failed temporarily; try again later.
    TempFail(TempFailure),
    /// The domain is not a valid DNS name.
    BadName,
}

/// How a failed MX step ends a delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteFailure {
    /// Bounce now (true) or keep the mail queued for a retry (false).
    pub permanent: bool,
    /// OpenSMTPD's reason text.
    pub reason: &'static str,
}

impl MxRoute {
    /// `None` for [`MxRoute::Exchangers`]; otherwise the delivery outcome.
    pub fn failure(&self) -> Option<RouteFailure> {
        let (permanent, reason) = match self {
            MxRoute::Exchangers(_) => return None,
            MxRoute::NoSuchDomain => (true, "Domain does not exist"),
            MxRoute::BadName => (true, "Invalid domain name"),
            MxRoute::NullMx => (true, "Domain does not accept mail"),
            MxRoute::NoMailHost => (false, "No MX found for domain"),
            MxRoute::TempFail(_) => (false, "Temporary failure in MX lookup"),
        };
        Some(RouteFailure { permanent, reason })
    }
}

/// The exchangers for `domain`, with every lookup ending by `deadline`.
pub async fn mail_exchangers(resolver: &dyn Resolver, domain: &str, deadline: Instant) -> MxRoute {
    match within(deadline, resolver.mx(domain)).await {
        Answer::Records(records) => explicit(records),
        Answer::NoData => implicit(resolver, domain, deadline).await,
        Answer::NxDomain => MxRoute::NoSuchDomain,
        Answer::TempFail(failure) => MxRoute::TempFail(failure),
        Answer::BadName => MxRoute::BadName,
    }
}

/// MX records to a route: null MX check, sort, de-duplicate.
fn explicit(records: Vec<MxRecord>) -> MxRoute {
    let (roots, mut real): (Vec<MxRecord>, Vec<MxRecord>) =
        records.into_iter().partition(MxRecord::is_root);
    if real.is_empty() {
        // Only root targets: the null MX. (`records` was non-empty.)
        debug_assert!(!roots.is_empty());
        return MxRoute::NullMx;
    }
    real.sort_by_key(|record| record.preference);
    let mut exchangers: Vec<MailExchanger> = Vec::with_capacity(real.len());
    for record in real {
        if exchangers
            .iter()
            .any(|seen| seen.host.eq_ignore_ascii_case(&record.exchange))
        {
            continue;
        }
        exchangers.push(MailExchanger {
            preference: record.preference,
            host: record.exchange,
            implicit: false,
        });
    }
    MxRoute::Exchangers(exchangers)
}

/// RFC 5321 §5.1: no MX records, so the domain itself, if it has addresses.
async fn implicit(resolver: &dyn Resolver, domain: &str, deadline: Instant) -> MxRoute {
    match within(deadline, resolver.a_aaaa(domain, AddressFamily::Any)).await {
        Answer::Records(_) => MxRoute::Exchangers(vec![MailExchanger {
            preference: 0,
            host: strip_root_dot(domain),
            implicit: true,
        }]),
        Answer::NoData => MxRoute::NoMailHost,
        Answer::NxDomain => MxRoute::NoSuchDomain,
        Answer::TempFail(failure) => MxRoute::TempFail(failure),
        Answer::BadName => MxRoute::BadName,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::ZoneResolver;
    use std::time::Duration;

    const ZONE: &str = "
        two.example.        MX   20 backup.two.example.
        two.example.        MX   10 primary.two.example.
        ties.example.       MX   10 b.example.
        ties.example.       MX   5  first.example.
        ties.example.       MX   10 a.example.
        ties.example.       MX   30 A.example.
        only-a.example.     A    192.0.2.1
        only-aaaa.example.  AAAA 2001:db8::1
        bare.example.       MX   10 .
        bare.example.       A    192.0.2.1
        null.example.       MX   0 .
        mixed.example.      MX   0 .
        mixed.example.      MX   10 real.example.
        txt-only.example.   PTR  somewhere.example.
        broken.example.     SERVFAIL
        slow.example.       TIMEOUT
        half.example.       MX   0 .
        half.example.       A    192.0.2.9
    ";

    async fn route(domain: &str) -> MxRoute {
        let zone = ZoneResolver::from_zone(ZONE).expect("zone parses");
        mail_exchangers(&zone, domain, Instant::now() + Duration::from_secs(5)).await
    }

    fn mx(preference: u16, host: &str) -> MailExchanger {
        MailExchanger {
            preference,
            host: host.into(),
            implicit: false,
        }
    }

    #[tokio::test]
    async fn sorted_by_preference() {
        assert_eq!(
            route("two.example").await,
            MxRoute::Exchangers(vec![
                mx(10, "primary.two.example"),
                mx(20, "backup.two.example")
            ])
        );
    }

    #[tokio::test]
    async fn ties_keep_server_order_and_duplicates_go() {
        assert_eq!(
            route("ties.example").await,
            MxRoute::Exchangers(vec![
                mx(5, "first.example"),
                mx(10, "b.example"),
                mx(10, "a.example")
            ])
        );
    }

    #[tokio::test]
    async fn implicit_mx_from_a_or_aaaa() {
        for domain in ["only-a.example", "only-aaaa.example", "only-a.example."] {
            assert_eq!(
                route(domain).await,
                MxRoute::Exchangers(vec![MailExchanger {
                    preference: 0,
                    host: domain.trim_end_matches('.').into(),
                    implicit: true,
                }]),
                "{domain}"
            );
        }
    }

    #[tokio::test]
    async fn null_mx() {
        for domain in ["null.example", "bare.example", "half.example"] {
            let route = route(domain).await;
            assert_eq!(route, MxRoute::NullMx, "{domain}");
            let failure = route.failure().unwrap();
            assert!(failure.permanent);
            assert_eq!(failure.reason, "Domain does not accept mail");
        }
        assert_eq!(
            route("mixed.example").await,
            MxRoute::Exchangers(vec![mx(10, "real.example")])
        );
    }

    #[tokio::test]
    async fn no_such_domain_is_permanent() {
        let route = route("nowhere.example").await;
        assert_eq!(route, MxRoute::NoSuchDomain);
        assert_eq!(
            route.failure(),
            Some(RouteFailure {
                permanent: true,
                reason: "Domain does not exist"
            })
        );
    }

    #[tokio::test]
    async fn no_mail_host_is_temporary() {
        let route = route("txt-only.example").await;
        assert_eq!(route, MxRoute::NoMailHost);
        assert_eq!(
            route.failure(),
            Some(RouteFailure {
                permanent: false,
                reason: "No MX found for domain"
            })
        );
        // An empty non-terminal has no records of any kind either.
        assert_eq!(self::route("example").await, MxRoute::NoMailHost);
    }

    #[tokio::test]
    async fn servfail_is_temporary() {
        let route = route("broken.example").await;
        assert_eq!(route, MxRoute::TempFail(TempFailure::ServFail));
        assert_eq!(
            route.failure(),
            Some(RouteFailure {
                permanent: false,
                reason: "Temporary failure in MX lookup"
            })
        );
    }

    #[tokio::test]
    async fn bad_name_is_permanent() {
        let route = route("").await;
        assert_eq!(route, MxRoute::BadName);
        assert_eq!(
            route.failure().map(|f| (f.permanent, f.reason)),
            Some((true, "Invalid domain name"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_is_bounded() {
        let zone = ZoneResolver::from_zone(ZONE).expect("zone parses");
        let start = Instant::now();
        let route = mail_exchangers(&zone, "slow.example", start + Duration::from_secs(1)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(route, MxRoute::TempFail(TempFailure::Timeout));
    }

    #[tokio::test]
    async fn exchangers_have_no_failure() {
        assert_eq!(route("two.example").await.failure(), None);
    }
}
