//! Loading `pki` and `ca` entries from a real configuration and files, OpenSMTPD's error
//! texts for broken ones, the choice of a listener's and a relay's certificate, and the
//! certificate names SNI is matched against.

use std::path::Path;

use rcgen::{CertificateParams, DnType, KeyPair};
use smtpd::config::model::{Config, ListenOn, Listener, RelayAction, Span, TlsMode};
use smtpd::config::{self, parse::Options, system::RealSystem};
use smtpd::tls::names::certificate_names;
use smtpd::tls::{CaRoots, ClientTls, LoadedPki, PkiResolver, ServerTls, TlsSetupError, TlsStore};

fn self_signed(names: &[&str], cn: Option<&str>) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    if let Some(cn) = cn {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes a file only its owner may read, as a private key must be.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    set_mode(&path, 0o600);
    path.to_str().unwrap().to_string()
}

fn set_mode(path: impl AsRef<Path>, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn load_config(text: &str) -> Config {
    let options = Options {
        defines: Vec::new(),
        hostname: Some("mx.example.test".into()),
    };
    let checked = config::check_text("test.conf", text.as_bytes(), &options, &RealSystem);
    match checked.config {
        Some(c) => c,
        None => panic!("{}", checked.diagnostics.render(false, &|_| None)),
    }
}

#[test]
fn store_loads_the_configuration_and_builds_listener_and_relay_setups() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = self_signed(&["mail.a.test"], None);
    let (cert_star, key_star) = self_signed(&["*.example.test"], None);
    let (ca_pem, _) = self_signed(&["ca.test"], None);
    let text = format!(
        "pki mail.a.test cert \"{}\" key \"{}\"\n\
         pki \"*\" cert \"{}\" key \"{}\"\n\
         ca clients cert \"{}\"\n\
         listen on 127.0.0.1 port 10587 tls-require verify pki mail.a.test ca clients\n\
         listen on 127.0.0.1 port 10465 smtps\n\
         action \"out\" relay tls pki mail.a.test\n\
         match from any for any action \"out\"\n",
        write(dir.path(), "a.pem", &cert_a),
        write(dir.path(), "a.key", &key_a),
        write(dir.path(), "star.pem", &cert_star),
        write(dir.path(), "star.key", &key_star),
        write(dir.path(), "ca.pem", &ca_pem),
    );
    let config = load_config(&text);
    let store = TlsStore::load(&config).unwrap();
    assert_eq!(store.pkis().len(), 2);
    assert_eq!(store.pki("MAIL.A.TEST").unwrap().names, vec!["mail.a.test"]);
    assert!(store.ca("clients").is_some());

    // A listener naming its pki starts with it; a listener naming none starts with the
    // pki named after the server name, else `*`.
    assert_eq!(
        store
            .initial_pki(Some("mail.a.test"), "mx.example.test")
            .unwrap()
            .name,
        "mail.a.test"
    );
    assert_eq!(
        store.initial_pki(None, "mail.a.test").unwrap().name,
        "mail.a.test"
    );
    assert_eq!(
        store.initial_pki(None, "mx.example.test").unwrap().name,
        "*"
    );
    let resolver = store.resolver(None, "mx.example.test").unwrap();
    assert_eq!(resolver.entries()[0].name, "*");
    assert_eq!(resolver.choose(Some("mail.a.test")).name, "mail.a.test");

    for listener in &config.listeners {
        ServerTls::for_listener(&store, listener, "mx.example.test").unwrap();
    }
    let relay = RelayAction {
        tls: Some(false),
        pki: Some("mail.a.test".into()),
        ..RelayAction::default()
    };
    ClientTls::for_relay(&store, &relay, "mx.example.test", true).unwrap();
    // Without a pki of its own, a relay presents the HELO name's pki or `*`, else none.
    ClientTls::for_relay(&store, &RelayAction::default(), "nothing.test", false).unwrap();
    ClientTls::for_relay(
        &TlsStore::default(),
        &RelayAction::default(),
        "x.test",
        false,
    )
    .unwrap();
}

#[test]
fn missing_pki_and_ca_names() {
    let store = TlsStore::default();
    let err = store.initial_pki(None, "mx.example.test").unwrap_err();
    assert_eq!(
        err,
        TlsSetupError::NoPki {
            name: "mx.example.test".into()
        }
    );
    let err = store
        .initial_pki(Some("nosuch"), "mx.example.test")
        .unwrap_err();
    assert_eq!(err.to_string(), "pki name not found: nosuch");
    let err = store.verifying_ca(Some("nosuch"), "mx").unwrap_err();
    assert_eq!(err.to_string(), "ca name not found: nosuch");

    let mut listener = Listener::new(
        ListenOn::Interface("127.0.0.1".into()),
        Span {
            file: "t".into(),
            line: 1,
        },
    );
    listener.tls = Some(TlsMode::Tls);
    let err = ServerTls::for_listener(&store, &listener, "mx.example.test").unwrap_err();
    assert!(matches!(err, TlsSetupError::NoPki { .. }), "{err}");
    let relay = RelayAction {
        pki: Some("nosuch".into()),
        ..RelayAction::default()
    };
    let err = ClientTls::for_relay(&store, &relay, "mx", true).unwrap_err();
    assert_eq!(err.to_string(), "pki name not found: nosuch");
}

#[test]
fn broken_files_give_opensmtpd_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(&["a.test"], None);
    let (_, other_key) = self_signed(&["b.test"], None);
    let cert_path = write(dir.path(), "c.pem", &cert);
    let key_path = write(dir.path(), "k.pem", &key);
    let other_key_path = write(dir.path(), "o.pem", &other_key);
    let garbage = write(dir.path(), "g.pem", "not pem at all\n");
    let p = |s: &String| Some(Path::new(s.as_str()).to_path_buf());
    let load = |c: Option<std::path::PathBuf>, k: Option<std::path::PathBuf>| {
        LoadedPki::load("a", c.as_deref(), k.as_deref())
            .map(|_| ())
            .map_err(|e| e.to_string())
    };

    assert_eq!(load(p(&cert_path), p(&key_path)), Ok(()));
    assert_eq!(
        load(None, p(&key_path)),
        Err("load_pki_tree: missing certificate file".into())
    );
    assert_eq!(
        load(p(&cert_path), None),
        Err("load_pki_tree: missing key file".into())
    );
    assert_eq!(
        load(Some(dir.path().join("absent.pem")), p(&key_path)),
        Err("load_pki_tree: failed to load certificate file".into())
    );
    assert_eq!(
        load(p(&garbage), p(&key_path)),
        Err("load_pki_tree: failed to load certificate file".into())
    );
    assert_eq!(
        load(p(&cert_path), p(&garbage)),
        Err("load_pki_keys: failed to load key file".into())
    );
    // A key that does not belong to the certificate.
    let err = LoadedPki::load(
        "a",
        Some(Path::new(&cert_path)),
        Some(Path::new(&other_key_path)),
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "load_pki_keys: failed to load key file");
    assert!(err.detail().is_some_and(|d| !d.is_empty()), "{err:?}");
    // The key where the certificate should be.
    assert_eq!(
        load(p(&key_path), p(&key_path)),
        Err("load_pki_tree: failed to load certificate file".into())
    );

    let err = CaRoots::load("c", Path::new(&garbage)).unwrap_err();
    assert_eq!(err.to_string(), "load_pki_tree: failed to load CA file");
    let err = CaRoots::load("c", &dir.path().join("absent")).unwrap_err();
    assert_eq!(err.to_string(), "load_pki_tree: failed to load CA file");
    assert!(
        !CaRoots::load("c", Path::new(&cert_path))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn certificate_names_from_san_or_common_name() {
    let (cert, key) = self_signed(
        &["Mail.Example.Test", "*.example.test", "192.0.2.1"],
        Some("ignored.test"),
    );
    let pki = LoadedPki::from_pem("x", cert.as_bytes(), key.as_bytes()).unwrap();
    // dNSName entries only (the address is an iPAddress entry), lower-cased; the CN is
    // ignored when there are dNSNames.
    assert_eq!(pki.names, vec!["mail.example.test", "*.example.test"]);
    assert_eq!(certificate_names(pki.key.cert[0].as_ref()), pki.names);

    // A certificate with only a common name (`openssl req -x509 -subj /CN=…`).
    let (cert, key) = self_signed(&[], Some("legacy.example.test"));
    let legacy = LoadedPki::from_pem("legacy", cert.as_bytes(), key.as_bytes()).unwrap();
    assert_eq!(legacy.names, vec!["legacy.example.test"]);
}

#[test]
fn resolver_prefers_exact_names_over_wildcards() {
    let make = |name: &str, names: &[&str]| {
        let (cert, key) = self_signed(names, None);
        LoadedPki::from_pem(name, cert.as_bytes(), key.as_bytes()).unwrap()
    };
    let wildcard = make("wild", &["*.example.test"]);
    let exact = make("exact", &["mail.example.test"]);
    let legacy = {
        let (cert, key) = self_signed(&[], Some("legacy.test"));
        LoadedPki::from_pem("legacy", cert.as_bytes(), key.as_bytes()).unwrap()
    };
    let r = PkiResolver::new(wildcard, vec![exact, legacy]);
    assert_eq!(r.choose(Some("mail.example.test")).name, "exact");
    assert_eq!(r.choose(Some("MAIL.EXAMPLE.TEST.")).name, "exact");
    assert_eq!(r.choose(Some("smtp.example.test")).name, "wild");
    assert_eq!(r.choose(Some("legacy.test")).name, "legacy");
    assert_eq!(r.choose(Some("exact")).name, "exact", "pki name, as 6.8");
    assert_eq!(r.choose(Some("example.test")).name, "wild", "default");
    assert_eq!(r.choose(None).name, "wild");
    assert_eq!(r.choose(Some("")).name, "wild");
}

mod mutated_certificates {
    use proptest::prelude::*;
    use smtpd::tls::names::certificate_names;

    fn certificate() -> Vec<u8> {
        let (cert, _) =
            super::self_signed(&["mail.example.test", "*.example.test"], Some("cn.test"));
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert.as_bytes());
        let der: rustls_pki_types::CertificateDer<'static> = der.unwrap();
        der.to_vec()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Damaged certificates give some names or none, never a panic.
        #[test]
        fn damaged_certificates_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut der = certificate();
            for (at, byte) in flips {
                let i = at % der.len();
                der[i] = byte;
            }
            let keep = cut % (der.len() + 1);
            let _ = certificate_names(&der[..keep]);
        }

        /// Arbitrary bytes likewise.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = certificate_names(&bytes);
        }
    }
}

/// As OpenSMTPD: a private key others may read (beyond `rwxr-----`), or a certificate or
/// CA file others may write (beyond `rwxr-xr-x`), is refused at start-up, and so is a file
/// owned by someone else than root (or the user smtpd runs as).
#[test]
fn key_and_certificate_files_open_to_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(&["a.test"], None);
    let cert_path = write(dir.path(), "c.pem", &cert);
    let key_path = write(dir.path(), "k.pem", &key);
    let load = || LoadedPki::load("a", Some(Path::new(&cert_path)), Some(Path::new(&key_path)));
    // Group-readable keys and world-readable certificates are fine.
    set_mode(&key_path, 0o740);
    set_mode(&cert_path, 0o755);
    assert!(load().is_ok());

    set_mode(&key_path, 0o644);
    let err = load().unwrap_err();
    assert_eq!(err.to_string(), "load_pki_keys: failed to load key file");
    assert_eq!(
        err.detail(),
        Some(format!("{key_path}: insecure permissions: must be at most rwxr----- ").as_str())
    );
    set_mode(&key_path, 0o600);

    set_mode(&cert_path, 0o664);
    let err = load().unwrap_err();
    assert_eq!(
        err.to_string(),
        "load_pki_tree: failed to load certificate file"
    );
    assert_eq!(
        err.detail(),
        Some(format!("{cert_path}: insecure permissions: must be at most rwxr-xr-x ").as_str())
    );
    let err = CaRoots::load("c", Path::new(&cert_path)).unwrap_err();
    assert_eq!(err.to_string(), "load_pki_tree: failed to load CA file");
    set_mode(&cert_path, 0o644);
    assert!(CaRoots::load("c", Path::new(&cert_path)).is_ok());

    if nix::unistd::geteuid().is_root() {
        // Root's smtpd takes only root's files.
        std::os::unix::fs::chown(&key_path, Some(65534), None).unwrap();
        let err = load().unwrap_err();
        assert_eq!(
            err.detail(),
            Some(format!("{key_path}: not owned by uid 0").as_str())
        );
    }
}
