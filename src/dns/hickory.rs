//! The production resolver: hickory-resolver, configured from resolv.conf.
//!
//! hickory's API changed at every 0.x minor (0.24, 0.25, 0.26), so it stays
//! inside this file; the rest of smtpd sees only the [`Resolver`] trait.
//!
//! * Configuration comes from [`ResolvConf`] (so `--resolv-conf FILE` and the
//!   `ADDR:PORT` test extension work), not from hickory's own reader.
//! * Every question is fully qualified: no search list, no ndots games.
//! * Caching is hickory's: positive and negative answers are kept for their
//!   TTL (negative TTL from the SOA).
//! * Bounded: hickory gets the file's timeout and attempts, and every lookup
//!   is additionally cut at [`HickoryResolver::worst_case`] so that a dead
//!   server costs at most `timeout × attempts` whatever hickory does inside.
//! * `/etc/hosts` answers after the DNS, in libasr's way ([`super::hosts`]),
//!   when the resolver is built with [`HostsFile::System`] or
//!   [`HostsFile::File`]; hickory's own hosts support is off.
//!
//! # Loopback reverse names
//!
//! hickory answers every PTR question under `127.in-addr.arpa` and for `::1`
//! itself with `localhost`, without asking any server (RFC 6761 "special
//! use" handling inside its caching layer, which cannot be switched off).
//! OpenSMTPD asks the DNS for them like for any other address, and its
//! observed behaviour depends on it (`127.0.0.3` logs `host=<unknown>` when
//! the DNS has no PTR for it; tests serve PTRs for `127.0.0.x`). So these
//! questions go straight to the configured servers through hickory's name
//! server pool, with the same timeouts and attempts but without the cache.
//! When the DNS has no name for them the hosts file is read, as for any
//! address; that is how `127.0.0.1` shows as `host=localhost` on a usual
//! system.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::{DnsHandle, FirstAnswer, RetryDnsHandle};
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::{DnsRequestOptions, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig, TokioResolver};

use super::answer::{Answer, TempFailure};
use super::hosts::{HostsFile, HostsTable};
use super::name::strip_root_dot;
use super::resolv_conf::{ResolvConf, ResolvConfError, SYSTEM_RESOLV_CONF};
use super::resolver::{AddressFamily, Lookup, MxRecord, Resolver};

/// The resolver could not be set up.
#[derive(Debug)]
pub enum ResolverSetupError {
    /// The resolv.conf file could not be read.
    Config(ResolvConfError),
    /// hickory refused the configuration.
    Build(String),
}

impl fmt::Display for ResolverSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolverSetupError::Config(error) => error.fmt(f),
            ResolverSetupError::Build(reason) => write!(f, "resolver: {reason}"),
        }
    }
}

impl std::error::Error for ResolverSetupError {}

/// [`Resolver`] over hickory-resolver with the tokio runtime.
#[derive(Clone)]
pub struct HickoryResolver {
    /// hickory's caching resolver, for every question but loopback PTRs.
    inner: TokioResolver,
    /// The bare server pool, for loopback PTRs (see the module docs).
    direct: RetryDnsHandle<NameServerPool<TokioRuntimeProvider>>,
    /// The hosts file, asked after the DNS.
    hosts: Arc<HostsTable>,
    worst_case: Duration,
}

impl fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HickoryResolver")
            .field("worst_case", &self.worst_case)
            .finish_non_exhaustive()
    }
}

impl HickoryResolver {
    /// `/etc/resolv.conf`, then `/etc/hosts`.
    pub fn from_system() -> Result<Self, ResolverSetupError> {
        Self::from_file(Path::new(SYSTEM_RESOLV_CONF), &HostsFile::System)
    }

    /// A resolv.conf-format file (`--resolv-conf FILE`).
    pub fn from_file(path: &Path, hosts: &HostsFile) -> Result<Self, ResolverSetupError> {
        let conf = ResolvConf::load(path).map_err(ResolverSetupError::Config)?;
        Self::new(&conf, hosts)
    }

    /// From parsed settings.
    pub fn new(conf: &ResolvConf, hosts: &HostsFile) -> Result<Self, ResolverSetupError> {
        let name_servers: Vec<NameServerConfig> = conf
            .nameservers
            .iter()
            .map(|server| {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                NameServerConfig::new(server.ip(), true, vec![udp, tcp])
            })
            .collect();
        let config = ResolverConfig::from_name_servers(name_servers.clone());

        let mut options = ResolverOpts::default();
        options.timeout = conf.timeout;
        // resolv.conf counts tries in total; hickory counts retries after
        // the first.
        options.attempts = conf.attempts.saturating_sub(1) as usize;
        // The hosts file is read after the DNS, by this type (module docs).
        options.use_hosts_file = ResolveHosts::Never;

        let setup = |error: NetError| ResolverSetupError::Build(error.to_string());
        let tls = TlsConfig::new().map_err(setup)?;
        let pool_context = Arc::new(PoolContext::new(options.clone(), tls));
        let pool = NameServerPool::from_config(
            name_servers,
            pool_context,
            TokioRuntimeProvider::default(),
        );
        let direct = RetryDnsHandle::new(pool, options.attempts);
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(setup)?;
        Ok(HickoryResolver {
            inner,
            direct,
            hosts: Arc::new(HostsTable::load(hosts)),
            worst_case: conf.worst_case(),
        })
    }

    /// The longest one lookup can take before it is a temporary failure.
    pub fn worst_case(&self) -> Duration {
        self.worst_case
    }

    /// Runs one hickory lookup under the worst-case bound and classifies
    /// its outcome; `Ok` carries the answer section.
    async fn bounded<L>(
        &self,
        lookup: impl Future<Output = Result<L, NetError>>,
        answers: impl FnOnce(&L) -> Vec<Record>,
    ) -> Result<Vec<Record>, Answer<()>> {
        match tokio::time::timeout(self.worst_case, lookup).await {
            Ok(Ok(lookup)) => Ok(answers(&lookup)),
            Ok(Err(error)) => Err(classify(&error)),
            Err(_elapsed) => Err(Answer::TempFail(TempFailure::Timeout)),
        }
    }

    /// The PTR names of `address` from the DNS alone.
    async fn dns_ptr(&self, address: IpAddr) -> Answer<String> {
        if is_special_loopback(address) {
            // hickory's cache would answer `localhost` by itself: ask the
            // servers through the bare pool (module docs).
            let query = Query::query(address_name(address), RecordType::PTR);
            let lookup = self
                .direct
                .lookup(query, DnsRequestOptions::default())
                .first_answer();
            let result = self
                .bounded(lookup, |response| response.answers.clone())
                .await;
            return to_answer(result, ptr_name);
        }
        let lookup = self.inner.reverse_lookup(address_name(address));
        to_answer(self.bounded(lookup, answers).await, ptr_name)
    }

    async fn addresses_of(&self, name: Name, family: AddressFamily) -> Answer<IpAddr> {
        let v4 = async {
            let result = self
                .bounded(self.inner.ipv4_lookup(name.clone()), answers)
                .await;
            to_answer(result, |data| match data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })
        };
        let v6 = async {
            let result = self
                .bounded(self.inner.ipv6_lookup(name.clone()), answers)
                .await;
            to_answer(result, |data| match data {
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                _ => None,
            })
        };
        match family {
            AddressFamily::Ipv4 => v4.await,
            AddressFamily::Ipv6 => v6.await,
            AddressFamily::Any => {
                let (v4, v6) = tokio::join!(v4, v6);
                v4.merge(v6)
            }
        }
    }
}

impl Resolver for HickoryResolver {
    fn ptr(&self, address: IpAddr) -> Lookup<'_, String> {
        Box::pin(async move {
            let answer = self.dns_ptr(address).await;
            if matches!(answer, Answer::Records(_)) || self.hosts.is_empty() {
                return answer;
            }
            match self.hosts.names_of(address) {
                names if names.is_empty() => answer,
                names => Answer::Records(names),
            }
        })
    }

    fn a_aaaa<'a>(&'a self, name: &'a str, family: AddressFamily) -> Lookup<'a, IpAddr> {
        Box::pin(async move {
            let Some(question) = question_name(name) else {
                return Answer::BadName;
            };
            let answer = self.addresses_of(question, family).await;
            if matches!(answer, Answer::Records(_)) || self.hosts.is_empty() {
                return answer;
            }
            match self.hosts.addresses_of(name, family) {
                addresses if addresses.is_empty() => answer,
                addresses => Answer::Records(addresses),
            }
        })
    }

    fn mx<'a>(&'a self, domain: &'a str) -> Lookup<'a, MxRecord> {
        Box::pin(async move {
            let Some(name) = question_name(domain) else {
                return Answer::BadName;
            };
            let result = self.bounded(self.inner.mx_lookup(name), answers).await;
            to_answer(result, |data| match data {
                RData::MX(mx) => Some(MxRecord {
                    preference: mx.preference,
                    exchange: strip_root_dot(&mx.exchange.to_ascii()),
                }),
                _ => None,
            })
        })
    }

    fn txt<'a>(&'a self, name: &'a str) -> Lookup<'a, String> {
        Box::pin(async move {
            let Some(question) = question_name(name) else {
                return Answer::BadName;
            };
            let result = self.bounded(self.inner.txt_lookup(question), answers).await;
            to_answer(result, |data| match data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part))
                        .collect::<String>(),
                ),
                _ => None,
            })
        })
    }
}

/// Whether hickory would answer the PTR question for `address` itself.
fn is_special_loopback(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// The answer section of a hickory lookup.
fn answers(lookup: &hickory_resolver::lookup::Lookup) -> Vec<Record> {
    lookup.answers().to_vec()
}

/// The target of a PTR record, in smtpd's name form.
fn ptr_name(data: &RData) -> Option<String> {
    match data {
        RData::PTR(ptr) => Some(strip_root_dot(&ptr.0.to_ascii())),
        _ => None,
    }
}

/// The reverse owner name of `address`, fully qualified.
fn address_name(address: IpAddr) -> Name {
    let mut name = Name::from(address);
    name.set_fqdn(true);
    name
}

/// `text` as a fully qualified question name, or `None` if it cannot be one.
fn question_name(text: &str) -> Option<Name> {
    if text.is_empty() {
        return None;
    }
    let parsed = if text.is_ascii() {
        Name::from_ascii(text)
    } else {
        Name::from_utf8(text)
    };
    let mut name = parsed.ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// Keeps the answer records `pick` recognises (CNAMEs on the way are
/// skipped); no recognised record is NODATA.
fn to_answer<T>(
    result: Result<Vec<Record>, Answer<()>>,
    pick: impl Fn(&RData) -> Option<T>,
) -> Answer<T> {
    match result {
        Ok(records) => Answer::from_records(
            records
                .iter()
                .filter_map(|record| pick(&record.data))
                .collect(),
        ),
        Err(failure) => failure.map_records(|_| Vec::new()),
    }
}

/// hickory's error for a failed lookup, in smtpd's terms.
fn classify(error: &NetError) -> Answer<()> {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. })) => {
            match *response_code {
                ResponseCode::NXDomain => Answer::NxDomain,
                ResponseCode::NoError => Answer::NoData,
                ResponseCode::ServFail => Answer::TempFail(TempFailure::ServFail),
                code => Answer::TempFail(TempFailure::Rcode(code.to_string())),
            }
        }
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => {
            Answer::TempFail(TempFailure::ServFail)
        }
        NetError::Dns(DnsError::ResponseCode(code)) => {
            Answer::TempFail(TempFailure::Rcode(code.to_string()))
        }
        NetError::Timeout => Answer::TempFail(TempFailure::Timeout),
        NetError::Io(io) => Answer::TempFail(TempFailure::Network(io.to_string())),
        NetError::NoConnections => {
            Answer::TempFail(TempFailure::Network("no connections available".to_string()))
        }
        other => Answer::TempFail(TempFailure::Other(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_outside_a_runtime() {
        let conf = ResolvConf::parse("nameserver 127.0.0.1:5353\noptions timeout:1 attempts:3\n");
        let resolver = HickoryResolver::new(&conf, &HostsFile::Ignore).expect("builds");
        assert_eq!(resolver.worst_case(), Duration::from_secs(3));
    }

    #[test]
    fn question_names() {
        assert_eq!(
            question_name("Host.Example").unwrap().to_ascii(),
            "Host.Example."
        );
        assert_eq!(
            question_name("host.example.").unwrap().to_ascii(),
            "host.example."
        );
        assert_eq!(
            question_name("_dmarc.example").unwrap().to_ascii(),
            "_dmarc.example."
        );
        assert_eq!(
            question_name("bücher.example").unwrap().to_ascii(),
            "xn--bcher-kva.example."
        );
        assert!(question_name("").is_none());
        assert!(question_name("a..b").is_none());
        assert!(question_name(&format!("{}.example", "a".repeat(64))).is_none());
    }

    #[test]
    fn reverse_question() {
        assert_eq!(
            address_name("127.0.0.4".parse().unwrap()).to_ascii(),
            "4.0.0.127.in-addr.arpa."
        );
    }

    #[test]
    fn error_classes() {
        let nx = NetError::Dns(DnsError::NoRecordsFound(NoRecords::new(
            hickory_resolver::proto::op::Query::default(),
            ResponseCode::NXDomain,
        )));
        assert_eq!(classify(&nx), Answer::NxDomain);
        let nodata = NetError::Dns(DnsError::NoRecordsFound(NoRecords::new(
            hickory_resolver::proto::op::Query::default(),
            ResponseCode::NoError,
        )));
        assert_eq!(classify(&nodata), Answer::NoData);
        assert_eq!(
            classify(&NetError::Dns(DnsError::ResponseCode(
                ResponseCode::ServFail
            ))),
            Answer::TempFail(TempFailure::ServFail)
        );
        assert_eq!(
            classify(&NetError::Dns(DnsError::ResponseCode(
                ResponseCode::Refused
            ))),
            Answer::TempFail(TempFailure::Rcode(ResponseCode::Refused.to_string()))
        );
        assert_eq!(
            classify(&NetError::Timeout),
            Answer::TempFail(TempFailure::Timeout)
        );
    }
}
