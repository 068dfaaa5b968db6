//! The `Resolver` trait: the three questions smtpd asks the DNS.
//!
//! The SMTP side asks for the client's PTR name and its forward addresses
//! (rDNS/FCrDNS filters), delivery asks for MX records and the addresses of
//! mail exchangers. Everything above this trait sees only [`Answer`]s, so the
//! production resolver ([`HickoryResolver`](super::HickoryResolver)) and the
//! in-memory one used by tests ([`ZoneResolver`](super::ZoneResolver)) are
//! interchangeable behind an `Arc<dyn Resolver>`.
//!
//! # Why boxed futures
//!
//! The resolver is picked at run time (the daemon's `--resolv-conf`, or a
//! zone in a test) and shared by every session, so callers hold
//! `Arc<dyn Resolver>`. An `async fn` in a trait is not dyn-compatible: its
//! future type is different for every implementation. Returning
//! `Pin<Box<dyn Future + Send>>` makes the trait object-safe with no extra
//! crate, at the price of one allocation per lookup, which is nothing next to
//! a network round trip. `Send` futures let sessions run on tokio's
//! multi-threaded runtime.
//!
//! Implementations bound their own work (timeouts, attempts); callers that
//! need a hard deadline wrap calls in [`within`](super::within).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use super::answer::Answer;

/// The future one lookup returns.
pub type Lookup<'a, T> = Pin<Box<dyn Future<Output = Answer<T>> + Send + 'a>>;

/// Which address records a forward lookup asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressFamily {
    /// A records only.
    Ipv4,
    /// AAAA records only.
    Ipv6,
    /// A and AAAA, merged with [`Answer::merge`].
    Any,
}

impl AddressFamily {
    /// The family of `address`: FCrDNS asks only for the client's own
    /// family, as OpenSMTPD does (`hints.ai_family = ss_family`).
    pub fn of(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(_) => AddressFamily::Ipv4,
            IpAddr::V6(_) => AddressFamily::Ipv6,
        }
    }

    /// Whether `address` belongs to this family.
    pub fn admits(self, address: IpAddr) -> bool {
        match self {
            AddressFamily::Ipv4 => address.is_ipv4(),
            AddressFamily::Ipv6 => address.is_ipv6(),
            AddressFamily::Any => true,
        }
    }
}

/// One MX record: a mail exchanger and its preference (lower is tried first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    /// The preference value; lower values are more preferred.
    pub preference: u16,
    /// The exchanger's host name without trailing dot; `"."` for the root,
    /// which is how a null MX (RFC 7505) says "no mail here".
    pub exchange: String,
}

impl MxRecord {
    /// Whether this record names the root, i.e. is a null MX target.
    pub fn is_root(&self) -> bool {
        self.exchange == "."
    }
}

/// A source of DNS answers for smtpd.
///
/// Names passed in may carry a trailing dot or not; they are always treated
/// as fully qualified (mail domains and PTR targets are never relative, so no
/// search list applies). Names handed back follow [`super::name`]: no
/// trailing dot, root as `"."`.
pub trait Resolver: Send + Sync {
    /// The PTR names of `address` (the address is used as given: callers
    /// normalise IPv4-mapped IPv6 first).
    fn ptr(&self, address: IpAddr) -> Lookup<'_, String>;

    /// The A and/or AAAA addresses of `name`.
    fn a_aaaa<'a>(&'a self, name: &'a str, family: AddressFamily) -> Lookup<'a, IpAddr>;

    /// The MX records of `domain`, in the order the server gave them.
    fn mx<'a>(&'a self, domain: &'a str) -> Lookup<'a, MxRecord>;

    /// The TXT records of `name`, each one's strings joined (`smtpctl spf walk`).
    fn txt<'a>(&'a self, name: &'a str) -> Lookup<'a, String>;
}
