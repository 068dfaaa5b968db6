//! Certificates, keys and trust anchors from the configuration, and the choice of
//! certificate for a connection.
//!
//! OpenSMTPD 6.8 picks a listener's certificate in two steps: before the handshake, the
//! listener's `pki` (else the pki named after the session's server name, else the pki
//! named `*`); during the handshake, a client's SNI name that equals another pki's *name*
//! switches to that pki. Later versions choose among several pki by the names *in* the
//! certificates. [`PkiResolver`] does both: SNI equal to a pki name or to a certificate
//! name wins, then a wildcard certificate name, and otherwise the first (default) entry.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::names::{NameMatch, certificate_names, match_name};
use super::{TlsSetupError, provider};
use crate::config::model::Config;

/// Where the system's trust anchors are looked for when no `ca` applies, in order:
/// OpenSMTPD's compiled-in default, then Debian's bundle.
pub const SYSTEM_CA_FILES: &[&str] = &["/etc/ssl/cert.pem", "/etc/ssl/certs/ca-certificates.crt"];

/// A `pki` entry ready for use: the chain and key rustls signs with, and the names a
/// client can ask for it by.
#[derive(Clone, Debug)]
pub struct LoadedPki {
    /// The pki name as configured (lower-cased, as OpenSMTPD stores it).
    pub name: String,
    /// The DNS names of the end-entity certificate (see [`super::names`]).
    pub names: Vec<String>,
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
}

impl LoadedPki {
    /// Reads the files of a `pki` entry.
    pub fn load(
        name: &str,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, TlsSetupError> {
        let cert = cert.ok_or_else(|| TlsSetupError::MissingCertificate { pki: name.into() })?;
        let key = key.ok_or_else(|| TlsSetupError::MissingKey { pki: name.into() })?;
        check_file_mode(cert, CERTIFICATE_MODE).map_err(|detail| TlsSetupError::Certificate {
            pki: name.into(),
            detail,
        })?;
        check_file_mode(key, KEY_MODE).map_err(|detail| TlsSetupError::Key {
            pki: name.into(),
            detail,
        })?;
        let cert_pem = std::fs::read(cert).map_err(|e| TlsSetupError::Certificate {
            pki: name.into(),
            detail: format!("{}: {e}", cert.display()),
        })?;
        let key_pem = std::fs::read(key).map_err(|e| TlsSetupError::Key {
            pki: name.into(),
            detail: format!("{}: {e}", key.display()),
        })?;
        Self::from_pem(name, &cert_pem, &key_pem)
    }

    /// Builds a pki from PEM text: the certificate chain (end-entity first) and the
    /// private key (PKCS#8, PKCS#1 RSA or SEC1 EC). The key must belong to the certificate.
    pub fn from_pem(name: &str, cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsSetupError> {
        let chain = read_certificates(cert_pem).map_err(|detail| TlsSetupError::Certificate {
            pki: name.into(),
            detail,
        })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsSetupError::Key {
            pki: name.into(),
            detail: format!("no private key: {e}"),
        })?;
        let names = certificate_names(chain[0].as_ref());
        let certified =
            CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsSetupError::Key {
                pki: name.into(),
                detail: e.to_string(),
            })?;
        Ok(LoadedPki {
            name: name.to_ascii_lowercase(),
            names,
            key: Arc::new(certified),
        })
    }

    /// How well this pki answers for the SNI name `sni`: its pki name or a certificate
    /// name equal to it, or a wildcard certificate name covering it.
    fn answers_for(&self, sni: &str) -> Option<NameMatch> {
        if self.name.eq_ignore_ascii_case(sni) {
            return Some(NameMatch::Exact);
        }
        self.names.iter().filter_map(|n| match_name(n, sni)).max()
    }
}

/// The most a private key file may allow, as in OpenSMTPD: `rwxr-----`.
pub const KEY_MODE: u32 = 0o740;
/// The most a certificate or CA file may allow: `rwxr-xr-x` (no one else may write it).
pub const CERTIFICATE_MODE: u32 = 0o755;

/// OpenSMTPD's checks on a certificate or key file before it is read: owned by root (or,
/// for an smtpd not started as root, by the user it runs as), and no permission beyond
/// `most`. A refusal is logged with 6.8's warning (`warn:  PATH: insecure permissions:
/// must be at most rwxr----- `) and returned as the error's detail. A file that cannot be
/// examined is left to the read that follows, which says why.
pub fn check_file_mode(path: &Path, most: u32) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(path) else {
        return Ok(());
    };
    let refusal = if md.uid() != 0 && md.uid() != nix::unistd::geteuid().as_raw() {
        format!("{}: not owned by uid 0", path.display())
    } else if md.mode() & 0o777 & !most != 0 {
        format!(
            "{}: insecure permissions: must be at most {} ",
            path.display(),
            mode_text(most)
        )
    } else {
        return Ok(());
    };
    tracing::warn!("warn:  {refusal}");
    Err(refusal)
}

/// `rwxr-----` for 0o740, as strmode(3) writes the permission bits.
fn mode_text(mode: u32) -> String {
    (0..9)
        .map(|i| {
            if mode & (0o400 >> i) == 0 {
                '-'
            } else {
                ['r', 'w', 'x'][i % 3]
            }
        })
        .collect()
}

/// All certificates of a PEM text; at least one.
fn read_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut chain = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem) {
        chain.push(item.map_err(|e| e.to_string())?);
    }
    if chain.is_empty() {
        return Err("no certificate found".into());
    }
    Ok(chain)
}

/// Trust anchors from a `ca` file (or the system bundle), to verify a peer's certificate.
#[derive(Clone, Debug)]
pub struct CaRoots {
    roots: Arc<RootCertStore>,
}

impl CaRoots {
    /// Reads a PEM file of trust anchors.
    pub fn load(name: &str, path: &Path) -> Result<CaRoots, TlsSetupError> {
        check_file_mode(path, CERTIFICATE_MODE).map_err(|detail| TlsSetupError::Ca {
            ca: name.into(),
            detail,
        })?;
        let pem = std::fs::read(path).map_err(|e| TlsSetupError::Ca {
            ca: name.into(),
            detail: format!("{}: {e}", path.display()),
        })?;
        Self::from_pem(name, &pem)
    }

    /// Trust anchors from PEM text. Certificates that cannot serve as anchors are skipped;
    /// a text with no usable one is an error.
    pub fn from_pem(name: &str, pem: &[u8]) -> Result<CaRoots, TlsSetupError> {
        let certs = read_certificates(pem).map_err(|detail| TlsSetupError::Ca {
            ca: name.into(),
            detail,
        })?;
        let mut store = RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TlsSetupError::Ca {
                ca: name.into(),
                detail: "no usable certificate".into(),
            });
        }
        Ok(CaRoots {
            roots: Arc::new(store),
        })
    }

    /// No anchors: every presented certificate fails its check.
    pub fn empty() -> CaRoots {
        CaRoots {
            roots: Arc::new(RootCertStore::empty()),
        }
    }

    /// The system's anchors: the first readable file of [`SYSTEM_CA_FILES`], else none
    /// (then every check fails, as OpenSMTPD's does with an unreadable CA file).
    pub fn system() -> CaRoots {
        SYSTEM_CA_FILES
            .iter()
            .find_map(|p| CaRoots::load("*", Path::new(p)).ok())
            .unwrap_or_else(CaRoots::empty)
    }

    /// Whether there is no anchor at all.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    pub(super) fn store(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }
}

/// Chooses a listener's certificate from the client's SNI name. The first entry is the
/// default, used when the client sends no name or a name nothing answers for.
#[derive(Clone, Debug)]
pub struct PkiResolver {
    entries: Vec<LoadedPki>,
}

impl PkiResolver {
    /// A resolver over `default` and the `others` SNI may switch to.
    pub fn new(default: LoadedPki, others: Vec<LoadedPki>) -> PkiResolver {
        let mut entries = vec![default];
        entries.extend(others);
        PkiResolver { entries }
    }

    /// The entry for SNI name `sni`: an exact name (pki name or certificate name) first,
    /// in entry order; then a wildcard certificate name; then the default.
    pub fn choose(&self, sni: Option<&str>) -> &LoadedPki {
        let default = &self.entries[0];
        let Some(sni) = sni.filter(|s| !s.is_empty()) else {
            return default;
        };
        for wanted in [NameMatch::Exact, NameMatch::Wildcard] {
            if let Some(entry) = self
                .entries
                .iter()
                .find(|e| e.answers_for(sni) == Some(wanted))
            {
                return entry;
            }
        }
        default
    }

    /// The entries, default first.
    pub fn entries(&self) -> &[LoadedPki] {
        &self.entries
    }
}

impl ResolvesServerCert for PkiResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(client_hello.server_name()).key.clone())
    }
}

/// Every `pki` and `ca` of a configuration, loaded once at start-up; listeners and relays
/// take theirs from here.
#[derive(Clone, Debug, Default)]
pub struct TlsStore {
    pkis: Vec<LoadedPki>,
    cas: Vec<(String, CaRoots)>,
}

impl TlsStore {
    /// Loads every pki (certificate and key) and ca of `config`. The first failure stops,
    /// with OpenSMTPD's fatal message as the error's `Display`.
    pub fn load(config: &Config) -> Result<TlsStore, TlsSetupError> {
        let mut store = TlsStore::default();
        for pki in &config.pkis {
            let loaded = LoadedPki::load(
                &pki.name,
                pki.cert.as_deref().map(Path::new),
                pki.key.as_deref().map(Path::new),
            )?;
            store.add_pki(loaded);
        }
        for ca in &config.cas {
            let roots = CaRoots::load(&ca.name, Path::new(&ca.cert))?;
            store.add_ca(&ca.name, roots);
        }
        Ok(store)
    }

    /// Adds (or replaces) a pki.
    pub fn add_pki(&mut self, pki: LoadedPki) {
        self.pkis.retain(|p| p.name != pki.name);
        self.pkis.push(pki);
    }

    /// Adds (or replaces) a ca.
    pub fn add_ca(&mut self, name: &str, roots: CaRoots) {
        let name = name.to_ascii_lowercase();
        self.cas.retain(|(n, _)| *n != name);
        self.cas.push((name, roots));
    }

    /// The pki of that name (names are case-insensitive).
    pub fn pki(&self, name: &str) -> Option<&LoadedPki> {
        self.pkis.iter().find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// The ca of that name.
    pub fn ca(&self, name: &str) -> Option<&CaRoots> {
        self.cas
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, r)| r)
    }

    /// All pki, in configuration order.
    pub fn pkis(&self) -> &[LoadedPki] {
        &self.pkis
    }

    /// The pki a session starts with (6.8 `smtp_cert_init`): `named` if given, else the
    /// one named after the server name, else `*`.
    pub fn initial_pki(
        &self,
        named: Option<&str>,
        server_name: &str,
    ) -> Result<&LoadedPki, TlsSetupError> {
        match named {
            Some(name) => self.pki(name).ok_or_else(|| TlsSetupError::NoPki {
                name: name.to_string(),
            }),
            None => self
                .pki(server_name)
                .or_else(|| self.pki("*"))
                .ok_or_else(|| TlsSetupError::NoPki {
                    name: server_name.to_string(),
                }),
        }
    }

    /// The trust anchors a peer certificate is checked against (6.8 `cert_do_verify`):
    /// `named` if given, else the ca named after the server name, else `*`, else the
    /// system's.
    pub fn verifying_ca(
        &self,
        named: Option<&str>,
        server_name: &str,
    ) -> Result<CaRoots, TlsSetupError> {
        match named {
            Some(name) => self.ca(name).cloned().ok_or_else(|| TlsSetupError::NoCa {
                name: name.to_string(),
            }),
            None => Ok(self
                .ca(server_name)
                .or_else(|| self.ca("*"))
                .cloned()
                .unwrap_or_else(CaRoots::system)),
        }
    }

    /// A resolver for a listener: the initial pki as default, every other pki reachable
    /// by SNI.
    pub fn resolver(
        &self,
        named: Option<&str>,
        server_name: &str,
    ) -> Result<PkiResolver, TlsSetupError> {
        let default = self.initial_pki(named, server_name)?.clone();
        let others = self
            .pkis
            .iter()
            .filter(|p| p.name != default.name)
            .cloned()
            .collect();
        Ok(PkiResolver::new(default, others))
    }
}
