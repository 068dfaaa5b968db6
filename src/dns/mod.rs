//! DNS lookups behind a `Resolver` trait: PTR, A/AAAA, MX, and forward-confirmed rDNS.
//!
//! Everything smtpd asks the DNS goes through [`Resolver`], whose answers keep
//! apart what mail handling must not confuse: records, NXDOMAIN, NODATA and
//! temporary failure ([`Answer`]). On top of it sit the two questions the rest
//! of smtpd actually has:
//!
//! * [`fcrdns`] / [`rdns`] — who is connecting: the `host=` of the connect
//!   log line and the facts for the `rdns` and `fcrdns` filter conditions,
//!   computed as OpenSMTPD 6.8 does (see [`rdns`](mod@rdns) for the details).
//! * [`mail_exchangers`] — where to relay mail for a domain (MX, implicit MX,
//!   null MX).
//!
//! Implementations: [`HickoryResolver`] for the daemon (resolv.conf, with an
//! `ADDR:PORT` extension for tests), [`ZoneResolver`] for unit tests of other
//! modules. Callers bound every lookup with a deadline ([`within`]).

mod answer;
mod deadline;
mod hickory;
mod hosts;
mod mx;
pub mod name;
mod rdns;
mod resolv_conf;
mod resolver;
pub mod spf;
mod zone;

pub use answer::{Answer, TempFailure};
pub use deadline::within;
pub use hickory::{HickoryResolver, ResolverSetupError};
pub use hosts::{HostsFile, HostsTable, SYSTEM_HOSTS};
pub use mx::{MailExchanger, MxRoute, RouteFailure, mail_exchangers};
pub use rdns::{Fcrdns, FcrdnsOutcome, RdnsOutcome, UNKNOWN_HOST, fcrdns, rdns};
pub use resolv_conf::{
    IgnoredLine, MAX_NAMESERVERS, ResolvConf, ResolvConfError, SYSTEM_RESOLV_CONF,
};
pub use resolver::{AddressFamily, Lookup, MxRecord, Resolver};
pub use zone::{ZoneError, ZoneResolver};
