//! TLS handshakes over loopback TCP between smtpd's server side (listeners) and client side
//! (relay), with certificates made on the fly: one pki, SNI choice between pki, client
//! certificates checked against a ca, relay verification, and the facts OpenSMTPD logs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use smtpd::tls::{
    CaRoots, CertFailure, ClientCertPolicy, ClientTls, HandshakeFacts, LoadedPki, PeerCert,
    PkiResolver, ServerTls, TlsError,
};

const LIMIT: Duration = Duration::from_secs(20);

/// A certificate authority for tests.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn new_ca(name: &str) -> TestCa {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    TestCa {
        issuer: Issuer::new(params, key),
        pem: cert.pem(),
    }
}

/// A leaf certificate and key (PEM) for `names`, signed by `ca`.
fn leaf(ca: &TestCa, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn server_pki(name: &str, ca: &TestCa, names: &[&str]) -> LoadedPki {
    let (cert, key) = leaf(ca, names, ExtendedKeyUsagePurpose::ServerAuth);
    LoadedPki::from_pem(name, cert.as_bytes(), key.as_bytes()).unwrap()
}

fn client_pki(ca: &TestCa) -> LoadedPki {
    let (cert, key) = leaf(ca, &["client.test"], ExtendedKeyUsagePurpose::ClientAuth);
    LoadedPki::from_pem("client", cert.as_bytes(), key.as_bytes()).unwrap()
}

fn roots(ca: &TestCa) -> CaRoots {
    CaRoots::from_pem("test", ca.pem.as_bytes()).unwrap()
}

type ServerResult = Result<(HandshakeFacts, Option<&'static str>), TlsError>;

/// Accepts one connection on loopback, runs the server handshake, greets over TLS unless
/// the session must be refused, and reports what it saw.
async fn serve_once(tls: ServerTls) -> (SocketAddr, JoinHandle<ServerResult>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut upgrade = tls.accept(socket).await?;
        let refusal = upgrade.refusal();
        if refusal.is_none() {
            upgrade.stream.write_all(b"250 over tls\r\n").await.unwrap();
            upgrade.stream.flush().await.unwrap();
        }
        upgrade.stream.shutdown().await.ok();
        Ok((upgrade.facts, refusal))
    });
    (addr, task)
}

struct ClientSide {
    facts: HandshakeFacts,
    refusal: Option<&'static str>,
    server_cert: Vec<u8>,
    line: String,
}

async fn connect(tls: &ClientTls, addr: SocketAddr, host: &str) -> ClientSide {
    let socket = TcpStream::connect(addr).await.unwrap();
    let upgrade = tls.connect(host, socket).await.unwrap();
    let refusal = upgrade.refusal();
    let server_cert = upgrade.stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let facts = upgrade.facts.clone();
    let mut line = String::new();
    BufReader::new(upgrade.stream)
        .read_line(&mut line)
        .await
        .unwrap();
    ClientSide {
        facts,
        refusal,
        server_cert,
        line,
    }
}

async fn exchange(server: ServerTls, client: &ClientTls, host: &str) -> (ServerResult, ClientSide) {
    tokio::time::timeout(LIMIT, async {
        let (addr, task) = serve_once(server).await;
        let client_side = connect(client, addr, host).await;
        (task.await.unwrap(), client_side)
    })
    .await
    .expect("handshake within the time limit")
}

#[tokio::test]
async fn single_pki_handshake_reports_opensmtpd_facts() {
    let ca = new_ca("Test CA");
    let pki = server_pki("mx.example.test", &ca, &["mx.example.test"]);
    let expected_cert = pki.key.cert[0].to_vec();
    let server = ServerTls::new(
        PkiResolver::new(pki, vec![]),
        ClientCertPolicy::NotRequested,
    )
    .unwrap();
    let client = ClientTls::new(roots(&ca), None, true).unwrap();

    let (server_result, client_side) = exchange(server, &client, "mx.example.test").await;
    let (facts, refusal) = server_result.unwrap();

    assert_eq!(client_side.line, "250 over tls\r\n");
    assert_eq!(client_side.server_cert, expected_cert);
    assert_eq!(
        facts.ciphers(),
        "TLSv1.3:TLS_AES_256_GCM_SHA384:256",
        "log line: smtp tls ciphers={}",
        facts.ciphers()
    );
    assert_eq!(facts.server_name.as_deref(), Some("mx.example.test"));
    assert_eq!(facts.peer_cert, PeerCert::None);
    assert_eq!(facts.peer_cert.received_flag(), "NO");
    assert_eq!(refusal, None);
    // The relay side verified the server and logs the same cipher text.
    assert_eq!(client_side.facts.peer_cert, PeerCert::Verified);
    assert_eq!(client_side.facts.peer_cert.check_result(), Some("success"));
    assert_eq!(client_side.facts.ciphers(), facts.ciphers());
    assert_eq!(client_side.refusal, None);
    println!("smtp tls ciphers={}", facts.ciphers());
}

#[tokio::test]
async fn sni_chooses_between_pki() {
    let ca = new_ca("Test CA");
    let one = server_pki("mx1", &ca, &["mail.one.test"]);
    let two = server_pki("mx2", &ca, &["*.two.test"]);
    let (one_der, two_der) = (one.key.cert[0].to_vec(), two.key.cert[0].to_vec());
    let resolver = PkiResolver::new(one, vec![two]);
    let client = ClientTls::new(roots(&ca), None, false).unwrap();

    // (name the client asks for, certificate expected)
    let cases = [
        ("mail.one.test", &one_der, true),
        ("smtp.two.test", &two_der, true),
        // OpenSMTPD 6.8: an SNI name equal to a pki name selects that pki.
        ("mx2", &two_der, false),
        // Nothing answers: the listener's default (first) pki.
        ("unknown.test", &one_der, false),
        // The wildcard covers one label only.
        ("a.b.two.test", &one_der, false),
        // An address sends no SNI at all.
        ("127.0.0.1", &one_der, false),
    ];
    for (host, expected, verifies) in cases {
        let server = ServerTls::new(resolver.clone(), ClientCertPolicy::NotRequested).unwrap();
        let (server_result, client_side) = exchange(server, &client, host).await;
        let (facts, _) = server_result.unwrap();
        assert_eq!(&client_side.server_cert, expected, "certificate for {host}");
        assert_eq!(
            client_side.facts.peer_cert == PeerCert::Verified,
            verifies,
            "verification for {host}: {:?}",
            client_side.facts.peer_cert
        );
        let sni = (host != "127.0.0.1").then(|| host.to_string());
        assert_eq!(facts.server_name, sni, "{host}");
        println!("{host} -> {}", resolver.choose(Some(host)).name);
    }
}

#[tokio::test]
async fn client_certificate_verified_against_the_listener_ca() {
    let ca = new_ca("Server CA");
    let client_ca = new_ca("Client CA");
    let pki = server_pki("mx", &ca, &["mx.test"]);
    let server = ServerTls::new(
        PkiResolver::new(pki, vec![]),
        ClientCertPolicy::Verify(roots(&client_ca)),
    )
    .unwrap();
    let client = ClientTls::new(roots(&ca), Some(client_pki(&client_ca)), true).unwrap();

    let (server_result, client_side) = exchange(server, &client, "mx.test").await;
    let (facts, refusal) = server_result.unwrap();
    assert_eq!(facts.peer_cert, PeerCert::Verified);
    assert_eq!(facts.peer_cert.check_result(), Some("success"));
    assert_eq!(facts.peer_cert.received_flag(), "YES");
    assert_eq!(refusal, None);
    assert_eq!(client_side.line, "250 over tls\r\n");
    println!(
        "smtp client-cert-check result=\"{}\"",
        facts.peer_cert.check_result().unwrap_or("-")
    );
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let ca = new_ca("Server CA");
    let client_ca = new_ca("Client CA");
    let rogue_ca = new_ca("Rogue CA");
    let pki = server_pki("mx", &ca, &["mx.test"]);
    let resolver = PkiResolver::new(pki, vec![]);

    // A certificate from a CA the listener does not trust.
    let server = ServerTls::new(
        resolver.clone(),
        ClientCertPolicy::Verify(roots(&client_ca)),
    )
    .unwrap();
    let client = ClientTls::new(roots(&ca), Some(client_pki(&rogue_ca)), true).unwrap();
    let (server_result, client_side) = exchange(server, &client, "mx.test").await;
    let (facts, refusal) = server_result.unwrap();
    assert_eq!(facts.peer_cert, PeerCert::Failed(CertFailure::Invalid));
    assert_eq!(facts.peer_cert.received_flag(), "FAIL");
    assert_eq!(refusal, Some("cert-invalid"));
    assert_eq!(
        client_side.line, "",
        "a refused session gets nothing over TLS"
    );
    println!("smtp disconnected  reason={}", refusal.unwrap_or("-"));

    // No certificate at all.
    let server = ServerTls::new(resolver, ClientCertPolicy::Verify(roots(&client_ca))).unwrap();
    let client = ClientTls::new(roots(&ca), None, true).unwrap();
    let (server_result, _) = exchange(server, &client, "mx.test").await;
    let (facts, refusal) = server_result.unwrap();
    assert_eq!(facts.peer_cert, PeerCert::None);
    assert_eq!(refusal, Some("no-client-cert"));
}

#[tokio::test]
async fn relay_verification_checks_chain_and_name() {
    let ca = new_ca("Server CA");
    let other_ca = new_ca("Other CA");
    let pki = server_pki("mx", &ca, &["mx.test"]);
    let resolver = PkiResolver::new(pki, vec![]);
    let new_server = || ServerTls::new(resolver.clone(), ClientCertPolicy::NotRequested).unwrap();

    // Trusted chain, wrong name.
    let verifying = ClientTls::new(roots(&ca), None, true).unwrap();
    let (_, c) = exchange(new_server(), &verifying, "other.test").await;
    assert_eq!(
        c.facts.peer_cert,
        PeerCert::Failed(CertFailure::NameMismatch)
    );
    assert_eq!(c.refusal, Some("SSL certificate check failed"));

    // Untrusted chain.
    let verifying = ClientTls::new(roots(&other_ca), None, true).unwrap();
    let (_, c) = exchange(new_server(), &verifying, "mx.test").await;
    assert_eq!(c.facts.peer_cert, PeerCert::Failed(CertFailure::Invalid));
    assert_eq!(c.facts.peer_cert.check_result(), Some("failure"));
    assert_eq!(c.refusal, Some("SSL certificate check failed"));

    // `tls no-verify`: the same failure is only recorded.
    let lenient = ClientTls::new(roots(&other_ca), None, false).unwrap();
    let (_, c) = exchange(new_server(), &lenient, "mx.test").await;
    assert_eq!(c.facts.peer_cert, PeerCert::Failed(CertFailure::Invalid));
    assert_eq!(c.refusal, None);
    assert_eq!(c.line, "250 over tls\r\n");

    // No anchors at all (no system bundle): every check fails.
    let bare = ClientTls::new(CaRoots::empty(), None, true).unwrap();
    let (_, c) = exchange(new_server(), &bare, "mx.test").await;
    assert_eq!(c.refusal, Some("SSL certificate check failed"));
}

#[tokio::test]
async fn tls12_cipher_names_follow_openssl() {
    let ca = new_ca("Test CA");
    let pki = server_pki("mx", &ca, &["mx.test"]);
    let server = ServerTls::new(
        PkiResolver::new(pki, vec![]),
        ClientCertPolicy::NotRequested,
    )
    .unwrap();
    let result = tokio::time::timeout(LIMIT, async {
        let (addr, task) = serve_once(server).await;
        let mut anchors = rustls::RootCertStore::empty();
        let (added, _) = anchors.add_parsable_certificates(
            rustls_pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()).flatten(),
        );
        assert_eq!(added, 1);
        let config = rustls::ClientConfig::builder_with_provider(smtpd::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(anchors)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let socket = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("mx.test").unwrap();
        let stream = connector.connect(name, socket).await.unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await.unwrap();
        assert_eq!(line, "250 over tls\r\n");
        task.await.unwrap()
    })
    .await
    .unwrap();
    let (facts, _) = result.unwrap();
    // rcgen makes ECDSA P-256 keys.
    assert_eq!(facts.ciphers(), "TLSv1.2:ECDHE-ECDSA-AES256-GCM-SHA384:256");
    println!("smtp tls ciphers={}", facts.ciphers());
}

#[tokio::test]
async fn plain_text_instead_of_a_handshake_fails_cleanly() {
    let ca = new_ca("Test CA");
    let pki = server_pki("mx", &ca, &["mx.test"]);
    let server = ServerTls::new(
        PkiResolver::new(pki, vec![]),
        ClientCertPolicy::NotRequested,
    )
    .unwrap();
    let result = tokio::time::timeout(LIMIT, async {
        let (addr, task) = serve_once(server).await;
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket
            .write_all(b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\n")
            .await
            .unwrap();
        task.await.unwrap()
    })
    .await
    .unwrap();
    let Err(err) = result else {
        panic!("a plain-text client must not complete a handshake");
    };
    assert!(err.reason().starts_with("io-error: "), "{}", err.reason());
    println!("smtp disconnected reason=\"{}\"", err.reason());
}

#[tokio::test]
async fn relay_to_an_address_literal() {
    let ca = new_ca("Test CA");
    let pki = server_pki("mx", &ca, &["127.0.0.1"]);
    let server = ServerTls::new(
        PkiResolver::new(pki, vec![]),
        ClientCertPolicy::NotRequested,
    )
    .unwrap();
    let client = ClientTls::new(roots(&ca), None, true).unwrap();
    let (_, c) = exchange(server, &client, "[127.0.0.1]").await;
    assert_eq!(c.facts.peer_cert, PeerCert::Verified);

    let bad = ClientTls::new(roots(&ca), None, true).unwrap();
    let socket = tokio::time::timeout(LIMIT, async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        TcpStream::connect(addr).await.unwrap()
    })
    .await
    .unwrap();
    let err = bad.connect("not a host name", socket).await.err().unwrap();
    assert!(matches!(err, TlsError::BadServerName(_)), "{err}");
}
