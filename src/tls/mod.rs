//! TLS for both directions of mail: STARTTLS and SMTPS on listeners, and the relay's
//! outbound TLS, built on rustls with the `ring` provider.
//!
//! The configuration's `pki` entries (certificate chain and key) and `ca` entries (trust
//! anchors) are loaded once into a [`TlsStore`]. From it, [`ServerTls::for_listener`]
//! makes what a listener needs and [`ClientTls::for_relay`] what a relay action needs.
//! Both upgrade an established byte stream and hand back the stream together with
//! [`HandshakeFacts`]: what OpenSMTPD logs as `smtp tls ciphers=TLSv1.3:…:256`, puts in the
//! `Received:` header, and the outcome of the peer-certificate check.
//!
//! Certificates are checked the way OpenSMTPD 6.8 checks them: *after* the handshake, so
//! that the session can log the cipher line first and then either the check result
//! (`client-cert-check result="success"`) or the reason it drops the connection
//! (`smtp disconnected  reason=cert-invalid`). During the handshake the peer still has to
//! prove it holds the key of the certificate it presented.
//!
//! Differences from 6.8 that come with rustls: only TLS 1.2 and 1.3 are spoken; the
//! `smtp ciphers` string (an OpenSSL cipher list) and `dhe` have no effect.

mod client;
pub mod names;
mod pki;
mod server;

use std::fmt;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{CipherSuite, CommonState, ProtocolVersion};

pub use client::{ClientTls, ClientUpgrade};
pub use pki::{CaRoots, LoadedPki, PkiResolver, SYSTEM_CA_FILES, TlsStore};
pub use server::{ClientCertPolicy, ServerTls, ServerUpgrade};

/// The one cryptographic provider smtpd uses: `ring` (aws-lc-rs would need cmake and a
/// long C build).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a finished handshake tells the session and the logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeFacts {
    /// Protocol version as OpenSSL names it: `TLSv1.2`, `TLSv1.3`.
    pub version: String,
    /// Cipher suite as OpenSSL names it: `TLS_AES_256_GCM_SHA384`,
    /// `ECDHE-RSA-AES256-GCM-SHA384`.
    pub cipher: String,
    /// Symmetric key strength in bits (OpenSSL's `SSL_get_cipher_bits`).
    pub bits: u32,
    /// The host name the client asked for (SNI), on the server side.
    pub server_name: Option<String>,
    /// Outcome of the peer-certificate check.
    pub peer_cert: PeerCert,
}

impl HandshakeFacts {
    /// `VERSION:CIPHER:BITS`, the value of `ciphers=` in `smtp tls ciphers=…` and
    /// `mta tls ciphers=…`, and of the filter event `link-tls`.
    pub fn ciphers(&self) -> String {
        format!("{}:{}:{}", self.version, self.cipher, self.bits)
    }

    fn from_state(state: &CommonState, server_name: Option<String>, peer_cert: PeerCert) -> Self {
        let version = match state.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "unknown".to_string(),
        };
        let (cipher, bits) = match state.negotiated_cipher_suite() {
            Some(suite) => openssl_cipher(suite.suite()),
            None => ("unknown".to_string(), 0),
        };
        HandshakeFacts {
            version,
            cipher,
            bits,
            server_name,
            peer_cert,
        }
    }
}

/// OpenSSL's name and strength for a cipher suite, so that log lines read as OpenSMTPD's.
fn openssl_cipher(suite: CipherSuite) -> (String, u32) {
    let (name, bits) = match suite {
        CipherSuite::TLS13_AES_256_GCM_SHA384 => ("TLS_AES_256_GCM_SHA384", 256),
        CipherSuite::TLS13_AES_128_GCM_SHA256 => ("TLS_AES_128_GCM_SHA256", 128),
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => ("TLS_CHACHA20_POLY1305_SHA256", 256),
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => {
            ("ECDHE-ECDSA-AES256-GCM-SHA384", 256)
        }
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => {
            ("ECDHE-ECDSA-AES128-GCM-SHA256", 128)
        }
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
            ("ECDHE-ECDSA-CHACHA20-POLY1305", 256)
        }
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => ("ECDHE-RSA-AES256-GCM-SHA384", 256),
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => ("ECDHE-RSA-AES128-GCM-SHA256", 128),
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => {
            ("ECDHE-RSA-CHACHA20-POLY1305", 256)
        }
        other => return (format!("{other:?}"), 0),
    };
    (name.to_string(), bits)
}

/// The outcome of checking the peer's certificate after the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerCert {
    /// The peer presented no certificate (or none was asked for).
    None,
    /// Presented and verified against the trust anchors (and, for a server, its name).
    Verified,
    /// Presented but not verified.
    Failed(CertFailure),
}

impl PeerCert {
    /// The flag in the `Received:` header's TLS part: `YES` (verified), `FAIL` (presented,
    /// not verified), `NO` (none).
    pub fn received_flag(self) -> &'static str {
        match self {
            PeerCert::Verified => "YES",
            PeerCert::Failed(_) => "FAIL",
            PeerCert::None => "NO",
        }
    }

    /// `success` or `failure` for `client-cert-check result="…"` / `server-cert-check
    /// result="…"`; `None` when no certificate was presented (no line is logged then).
    pub fn check_result(self) -> Option<&'static str> {
        match self {
            PeerCert::Verified => Some("success"),
            PeerCert::Failed(_) => Some("failure"),
            PeerCert::None => None,
        }
    }
}

/// Why a presented certificate was not verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertFailure {
    /// The chain does not lead to a trusted anchor, is expired, or is unusable.
    Invalid,
    /// The chain is trusted but does not name the host connected to (relay side).
    NameMismatch,
}

/// Why a pki, ca or the TLS setup of a listener or relay could not be made. `Display`
/// gives the text OpenSMTPD prints (after `smtpd: `) where it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSetupError {
    /// `pki NAME` has no `cert`.
    MissingCertificate { pki: String },
    /// `pki NAME` has no `key`.
    MissingKey { pki: String },
    /// The certificate file could not be read or holds no certificate.
    Certificate { pki: String, detail: String },
    /// The key file could not be read, holds no usable key, or the key does not belong to
    /// the certificate.
    Key { pki: String, detail: String },
    /// A `ca` file could not be read or holds no usable certificate.
    Ca { ca: String, detail: String },
    /// No pki to use: the name given (or the server name, then `*`) names none. A session
    /// that meets this logs `smtp disconnected reason=ca-failure`.
    NoPki { name: String },
    /// `ca NAME` names no `ca` entry.
    NoCa { name: String },
    /// rustls refused the configuration.
    Config(String),
}

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsSetupError::MissingCertificate { .. } => {
                f.write_str("load_pki_tree: missing certificate file")
            }
            TlsSetupError::MissingKey { .. } => f.write_str("load_pki_tree: missing key file"),
            TlsSetupError::Certificate { .. } => {
                f.write_str("load_pki_tree: failed to load certificate file")
            }
            TlsSetupError::Key { .. } => f.write_str("load_pki_keys: failed to load key file"),
            TlsSetupError::Ca { .. } => f.write_str("load_pki_tree: failed to load CA file"),
            TlsSetupError::NoPki { name } => write!(f, "pki name not found: {name}"),
            TlsSetupError::NoCa { name } => write!(f, "ca name not found: {name}"),
            TlsSetupError::Config(detail) => write!(f, "ssl_setup failure: {detail}"),
        }
    }
}

impl TlsSetupError {
    /// The underlying reason, for a debug line next to OpenSMTPD's terse text.
    pub fn detail(&self) -> Option<&str> {
        match self {
            TlsSetupError::Certificate { detail, .. }
            | TlsSetupError::Key { detail, .. }
            | TlsSetupError::Ca { detail, .. }
            | TlsSetupError::Config(detail) => Some(detail),
            _ => None,
        }
    }
}

impl std::error::Error for TlsSetupError {}

/// A handshake that did not complete.
#[derive(Debug)]
pub enum TlsError {
    /// The handshake failed (protocol error, alert, I/O error, peer went away).
    Handshake(std::io::Error),
    /// The relay host is neither a DNS name nor an address usable for TLS.
    BadServerName(String),
}

impl TlsError {
    /// The `reason=` of the disconnect line: `"io-error: MSG"` as OpenSMTPD logs an I/O or
    /// TLS failure.
    pub fn reason(&self) -> String {
        match self {
            TlsError::Handshake(e) => format!("io-error: {e}"),
            TlsError::BadServerName(name) => format!("io-error: invalid server name {name}"),
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Handshake(e) => write!(f, "TLS handshake failed: {e}"),
            TlsError::BadServerName(name) => write!(f, "invalid TLS server name: {name}"),
        }
    }
}

impl std::error::Error for TlsError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_names_follow_openssl() {
        assert_eq!(
            openssl_cipher(CipherSuite::TLS13_AES_256_GCM_SHA384),
            ("TLS_AES_256_GCM_SHA384".to_string(), 256)
        );
        assert_eq!(
            openssl_cipher(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
            ("ECDHE-RSA-AES128-GCM-SHA256".to_string(), 128)
        );
    }

    #[test]
    fn ciphers_text_and_flags() {
        let facts = HandshakeFacts {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            bits: 256,
            server_name: None,
            peer_cert: PeerCert::None,
        };
        assert_eq!(facts.ciphers(), "TLSv1.3:TLS_AES_256_GCM_SHA384:256");
        assert_eq!(PeerCert::None.received_flag(), "NO");
        assert_eq!(PeerCert::None.check_result(), None);
        assert_eq!(
            PeerCert::Failed(CertFailure::Invalid).received_flag(),
            "FAIL"
        );
        assert_eq!(PeerCert::Verified.check_result(), Some("success"));
    }

    #[test]
    fn setup_errors_read_as_opensmtpd() {
        let e = TlsSetupError::MissingCertificate { pki: "x".into() };
        assert_eq!(e.to_string(), "load_pki_tree: missing certificate file");
        let e = TlsSetupError::Key {
            pki: "x".into(),
            detail: "no key".into(),
        };
        assert_eq!(e.to_string(), "load_pki_keys: failed to load key file");
        assert_eq!(e.detail(), Some("no key"));
    }
}
