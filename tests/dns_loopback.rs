//! `HickoryResolver` against a real DNS server on loopback.
//!
//! Each test starts hickory-server in-process on 127.0.0.1 with a free port
//! (UDP and TCP), authoritative for `0.0.127.in-addr.arpa.` and `test.`, and
//! points a resolver at it through a temporary resolv.conf that uses smtpd's
//! `nameserver ADDR:PORT` extension. The dead-server test binds a UDP socket
//! that never answers and checks that lookups end, as temporary failures,
//! within the configured bound.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::LowerName;
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use tokio::net::{TcpListener, UdpSocket};
use tokio::time::Instant;

use smtpd::dns::{
    AddressFamily, Answer, Fcrdns, HickoryResolver, HostsFile, MailExchanger, MxRecord, MxRoute,
    RdnsOutcome, Resolver, TempFailure, fcrdns, mail_exchangers,
};

const REVERSE_ZONE: &str = "
$ORIGIN 0.0.127.in-addr.arpa.
$TTL 60
@   IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60
@   IN NS  ns.test.
; 127.0.0.2 has no PTR record
3   IN PTR elsewhere.test.
4   IN PTR fcrdns.test.
5   IN PTR noaddr.test.
";

const FORWARD_ZONE: &str = "
$ORIGIN test.
$TTL 60
@            IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60
@            IN NS  ns.test.
ns           IN A   127.0.0.1
fcrdns       IN A   127.0.0.4
elsewhere    IN A   127.0.0.33
noaddr       IN TXT \"a name with no address\"
twomx        IN MX  20 backup.twomx.test.
twomx        IN MX  10 primary.twomx.test.
primary.twomx IN A  127.0.0.10
backup.twomx IN A   127.0.0.11
onlya        IN A   127.0.0.20
nullmx       IN MX  0 .
";

/// A hickory-server serving the two zones; stops when dropped.
struct LoopbackDns {
    address: SocketAddr,
    _server: Server<Catalog>,
}

impl LoopbackDns {
    async fn start() -> Self {
        let mut catalog = Catalog::new();
        for zone in [REVERSE_ZONE, FORWARD_ZONE] {
            let (origin, records) = Parser::new(zone, None, None)
                .parse()
                .expect("test zone parses");
            let handler = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
                origin.clone(),
                records,
                ZoneType::Primary,
                AxfrPolicy::Deny,
            )
            .expect("test zone loads");
            catalog.upsert(LowerName::new(&origin), vec![Arc::new(handler)]);
        }
        let (udp, tcp) = bind_udp_and_tcp().await;
        let address = udp.local_addr().expect("udp address");
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        LoopbackDns {
            address,
            _server: server,
        }
    }
}

/// A UDP socket and a TCP listener on the same free loopback port.
async fn bind_udp_and_tcp() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let port = udp.local_addr().expect("udp address").port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
            return (udp, tcp);
        }
    }
    panic!("no free loopback port for both UDP and TCP after 50 tries");
}

/// A temporary resolv.conf naming `server`.
fn resolv_conf(dir: &tempfile::TempDir, server: SocketAddr, options: &str) -> PathBuf {
    let path = dir.path().join("resolv.conf");
    let text = format!("# test resolver\nnameserver {server}\noptions {options}\n");
    std::fs::write(&path, text).expect("write resolv.conf");
    path
}

async fn resolver_for(server: &LoopbackDns) -> (HickoryResolver, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = resolv_conf(&dir, server.address, "timeout:2 attempts:2");
    let resolver = HickoryResolver::from_file(&path, &HostsFile::Ignore).expect("resolver");
    (resolver, dir)
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

#[tokio::test]
async fn no_ptr_record() {
    let server = LoopbackDns::start().await;
    let (resolver, _dir) = resolver_for(&server).await;

    assert_eq!(resolver.ptr(ip("127.0.0.2")).await, Answer::NxDomain);
    let outcome = fcrdns(&resolver, ip("127.0.0.2"), deadline()).await;
    println!(
        "127.0.0.2: host={} fcrdns={}",
        outcome.host(),
        outcome.fcrdns
    );
    assert_eq!(outcome.rdns, RdnsOutcome::NoName);
    assert_eq!(outcome.host(), "<unknown>");
    assert_eq!(outcome.fcrdns, Fcrdns::Fail);
    assert!(!outcome.rdns.rdns_condition());
}

#[tokio::test]
async fn ptr_that_does_not_resolve_back() {
    let server = LoopbackDns::start().await;
    let (resolver, _dir) = resolver_for(&server).await;

    let outcome = fcrdns(&resolver, ip("127.0.0.3"), deadline()).await;
    println!(
        "127.0.0.3: host={} fcrdns={}",
        outcome.host(),
        outcome.fcrdns
    );
    assert_eq!(outcome.host(), "elsewhere.test");
    assert!(outcome.rdns.rdns_condition());
    assert_eq!(outcome.fcrdns, Fcrdns::Fail);
    assert_eq!(outcome.warning(), None);

    // A PTR name with no address records at all (NODATA) fails the same way.
    assert_eq!(
        resolver.a_aaaa("noaddr.test", AddressFamily::Ipv4).await,
        Answer::NoData
    );
    let outcome = fcrdns(&resolver, ip("127.0.0.5"), deadline()).await;
    println!(
        "127.0.0.5: host={} fcrdns={}",
        outcome.host(),
        outcome.fcrdns
    );
    assert_eq!(outcome.host(), "noaddr.test");
    assert_eq!(outcome.fcrdns, Fcrdns::Fail);
}

#[tokio::test]
async fn forward_confirmed_name() {
    let server = LoopbackDns::start().await;
    let (resolver, _dir) = resolver_for(&server).await;

    assert_eq!(
        resolver.ptr(ip("127.0.0.4")).await,
        Answer::Records(vec!["fcrdns.test".to_string()])
    );
    for client in ["127.0.0.4", "::ffff:127.0.0.4"] {
        let outcome = fcrdns(&resolver, ip(client), deadline()).await;
        println!(
            "{client}: host={} fcrdns={}",
            outcome.host(),
            outcome.fcrdns
        );
        assert_eq!(outcome.host(), "fcrdns.test");
        assert_eq!(outcome.fcrdns, Fcrdns::Pass);
        assert!(outcome.fcrdns_condition());
    }
}

#[tokio::test]
async fn mx_with_two_preferences() {
    let server = LoopbackDns::start().await;
    let (resolver, _dir) = resolver_for(&server).await;

    let mut raw = resolver.mx("twomx.test").await.records().to_vec();
    raw.sort_by_key(|record| record.preference);
    assert_eq!(
        raw,
        vec![
            MxRecord {
                preference: 10,
                exchange: "primary.twomx.test".into()
            },
            MxRecord {
                preference: 20,
                exchange: "backup.twomx.test".into()
            },
        ]
    );
    let route = mail_exchangers(&resolver, "twomx.test", deadline()).await;
    println!("twomx.test: {route:?}");
    assert_eq!(
        route,
        MxRoute::Exchangers(vec![
            MailExchanger {
                preference: 10,
                host: "primary.twomx.test".into(),
                implicit: false
            },
            MailExchanger {
                preference: 20,
                host: "backup.twomx.test".into(),
                implicit: false
            },
        ])
    );
    assert_eq!(
        resolver
            .a_aaaa("primary.twomx.test", AddressFamily::Any)
            .await,
        Answer::Records(vec![ip("127.0.0.10")])
    );
}

#[tokio::test]
async fn implicit_mx_from_a_record() {
    let server = LoopbackDns::start().await;
    let (resolver, _dir) = resolver_for(&server).await;

    assert_eq!(resolver.mx("onlya.test").await, Answer::NoData);
    let route = mail_exchangers(&resolver, "onlya.test", deadline()).await;
    println!("onlya.test: {route:?}");
    assert_eq!(
        route,
        MxRoute::Exchangers(vec![MailExchanger {
            preference: 0,
            host: "onlya.test".into(),
            implicit: true,
        }])
    );
}

#[tokio::test]
async fn null_mx() {
    let server = LoopbackDns::start().await;
    let (resolver, _dir) = resolver_for(&server).await;

    assert_eq!(
        resolver.mx("nullmx.test").await,
        Answer::Records(vec![MxRecord {
            preference: 0,
            exchange: ".".into()
        }])
    );
    let route = mail_exchangers(&resolver, "nullmx.test", deadline()).await;
    println!("nullmx.test: {route:?} {:?}", route.failure());
    assert_eq!(route, MxRoute::NullMx);
    assert!(route.failure().is_some_and(|failure| failure.permanent));
}

#[tokio::test]
async fn nonexistent_domain_and_refused_zone() {
    let server = LoopbackDns::start().await;
    let (resolver, _dir) = resolver_for(&server).await;

    let route = mail_exchangers(&resolver, "nosuch.test", deadline()).await;
    assert_eq!(route, MxRoute::NoSuchDomain);
    assert_eq!(
        route.failure().map(|failure| failure.reason),
        Some("Domain does not exist")
    );
    // The server is not authoritative for other names and refuses them:
    // a temporary failure, never a bounce.
    let answer = resolver.mx("example.org").await;
    println!("example.org: {answer:?}");
    assert!(
        matches!(answer, Answer::TempFail(TempFailure::Rcode(_))),
        "{answer:?}"
    );
}

#[tokio::test]
async fn hosts_file_answers_after_the_dns() {
    let server = LoopbackDns::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = resolv_conf(&dir, server.address, "timeout:2 attempts:2");
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost localhost.localdomain\n\
         127.0.0.4 fromhosts.test\n\
         127.0.0.40 hostsonly.test\n",
    )
    .expect("write hosts");
    let resolver = HickoryResolver::from_file(&conf, &HostsFile::File(hosts)).expect("resolver");

    // No PTR in the DNS for 127.0.0.1: the hosts file names it, which is
    // OpenSMTPD's observed `address=127.0.0.1 host=localhost`.
    let outcome = fcrdns(&resolver, ip("127.0.0.1"), deadline()).await;
    println!(
        "127.0.0.1 with hosts file: host={} fcrdns={}",
        outcome.host(),
        outcome.fcrdns
    );
    assert_eq!(outcome.host(), "localhost");
    assert_eq!(outcome.fcrdns, Fcrdns::Pass);

    // The DNS answers first when it has an answer.
    let outcome = fcrdns(&resolver, ip("127.0.0.4"), deadline()).await;
    assert_eq!(outcome.host(), "fcrdns.test");
    assert_eq!(outcome.fcrdns, Fcrdns::Pass);

    // Names known only to the hosts file, both ways.
    assert_eq!(
        resolver.a_aaaa("hostsonly.test", AddressFamily::Ipv4).await,
        Answer::Records(vec![ip("127.0.0.40")])
    );
    let outcome = fcrdns(&resolver, ip("127.0.0.40"), deadline()).await;
    assert_eq!(outcome.host(), "hostsonly.test");
    assert_eq!(outcome.fcrdns, Fcrdns::Pass);

    // Without the hosts file, 127.0.0.1 has no name.
    let (dns_only, _dir) = resolver_for(&server).await;
    assert_eq!(
        fcrdns(&dns_only, ip("127.0.0.1"), deadline()).await.host(),
        "<unknown>"
    );
}

#[tokio::test]
async fn dead_server_is_a_bounded_temporary_failure() {
    // Bound and kept open, never read: queries vanish without an ICMP error.
    let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = resolv_conf(
        &dir,
        silent.local_addr().expect("address"),
        "timeout:1 attempts:2",
    );
    let resolver = HickoryResolver::from_file(&path, &HostsFile::Ignore).expect("resolver");
    assert_eq!(resolver.worst_case(), Duration::from_secs(2));

    // The resolver's own bound: timeout × attempts.
    let start = Instant::now();
    let answer = resolver.ptr(ip("127.0.0.4")).await;
    let took = start.elapsed();
    println!("dead server, resolver bound: {answer:?} after {took:?}");
    assert!(answer.is_temporary(), "{answer:?}");
    assert!(
        took >= Duration::from_millis(900),
        "gave up too early: {took:?}"
    );
    assert!(took < Duration::from_millis(2900), "not bounded: {took:?}");

    // The caller's deadline, shorter than the resolver's bound.
    let start = Instant::now();
    let outcome = fcrdns(
        &resolver,
        ip("127.0.0.4"),
        start + Duration::from_millis(300),
    )
    .await;
    let took = start.elapsed();
    println!(
        "dead server, 300ms deadline: host={} fcrdns={} after {took:?}",
        outcome.host(),
        outcome.fcrdns
    );
    assert_eq!(outcome.rdns, RdnsOutcome::TempFail(TempFailure::Timeout));
    assert_eq!(outcome.host(), "<unknown>");
    assert_eq!(outcome.fcrdns, Fcrdns::Fail);
    assert!(
        took < Duration::from_millis(900),
        "deadline not kept: {took:?}"
    );

    let start = Instant::now();
    let route = mail_exchangers(&resolver, "twomx.test", start + Duration::from_millis(300)).await;
    assert_eq!(route, MxRoute::TempFail(TempFailure::Timeout));
    assert!(start.elapsed() < Duration::from_millis(900));
    drop(silent);
}
