//! The listener side: STARTTLS and SMTPS handshakes.
//!
//! A listener with `verify` asks the client for a certificate but does not make the
//! handshake depend on it (OpenSMTPD 6.8 installs an accept-everything callback and checks
//! afterwards). The client still proves it holds the certificate's key. After the
//! handshake the chain is checked against the listener's trust anchors and the result is
//! in [`HandshakeFacts::peer_cert`]; [`ServerUpgrade::refusal`] says whether the session
//! must now be dropped and with which reason.
//!
//! The driver must discard anything the client sent after `STARTTLS` and before the
//! handshake (plain-text command injection); this file only sees the stream it is given.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoClientAuth, NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use super::pki::{CaRoots, PkiResolver, TlsStore};
use super::{CertFailure, HandshakeFacts, PeerCert, TlsError, TlsSetupError, provider};
use crate::config::model::{Listener, TlsMode};

/// Whether a listener asks for client certificates.
#[derive(Clone, Debug)]
pub enum ClientCertPolicy {
    /// No certificate is requested (`tls`, `tls-require`, `smtps` without `verify`).
    NotRequested,
    /// A certificate is requested and must verify against these anchors, else the session
    /// is dropped (`verify`).
    Verify(CaRoots),
}

/// What a listener needs to run TLS handshakes; cheap to clone and share.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    /// Post-handshake chain check; `None` when certificates are not requested.
    checker: Option<ChainCheck>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("verify", &self.checker.is_some())
            .finish()
    }
}

#[derive(Clone)]
enum ChainCheck {
    /// No trust anchor at all: every presented chain fails.
    NoAnchors,
    Verifier(Arc<dyn ClientCertVerifier>),
}

/// A finished server-side handshake.
pub struct ServerUpgrade<S> {
    /// The encrypted stream; the SMTP dialogue goes on over it.
    pub stream: tokio_rustls::server::TlsStream<S>,
    /// What to log and record.
    pub facts: HandshakeFacts,
    verify_required: bool,
}

impl<S> ServerUpgrade<S> {
    /// The `reason=` to drop the session with when the listener requires a verified
    /// client certificate and has none: `no-client-cert` or `cert-invalid` (6.8 logs
    /// `smtp disconnected  reason=…`, with two spaces). `None` when the session goes on.
    pub fn refusal(&self) -> Option<&'static str> {
        if !self.verify_required {
            return None;
        }
        match self.facts.peer_cert {
            PeerCert::Verified => None,
            PeerCert::None => Some("no-client-cert"),
            PeerCert::Failed(_) => Some("cert-invalid"),
        }
    }
}

impl ServerTls {
    /// A server configuration choosing certificates with `resolver`.
    pub fn new(
        resolver: PkiResolver,
        client_certs: ClientCertPolicy,
    ) -> Result<Self, TlsSetupError> {
        let provider = provider();
        let algorithms = provider.signature_verification_algorithms;
        let (verifier, checker): (Arc<dyn ClientCertVerifier>, Option<ChainCheck>) =
            match client_certs {
                ClientCertPolicy::NotRequested => (Arc::new(NoClientAuth), None),
                ClientCertPolicy::Verify(roots) => {
                    let checker = if roots.is_empty() {
                        ChainCheck::NoAnchors
                    } else {
                        let v = WebPkiClientVerifier::builder_with_provider(
                            roots.store(),
                            provider.clone(),
                        )
                        .build()
                        .map_err(|e| TlsSetupError::Config(e.to_string()))?;
                        ChainCheck::Verifier(v)
                    };
                    (Arc::new(RequestAnyClientCert { algorithms }), Some(checker))
                }
            };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(resolver));
        // As OpenSMTPD: the server's cipher order, no session cache, no tickets.
        config.ignore_client_order = true;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            checker,
        })
    }

    /// The TLS setup of `listener` for sessions whose server name is `server_name`: its
    /// pki (else the server name's, else `*`) with every other pki reachable by SNI, and
    /// with `verify` its ca (else the server name's, else `*`, else the system's).
    pub fn for_listener(
        store: &TlsStore,
        listener: &Listener,
        server_name: &str,
    ) -> Result<Self, TlsSetupError> {
        let resolver = store.resolver(listener.pki.as_deref(), server_name)?;
        let verify = matches!(
            listener.tls,
            Some(TlsMode::TlsRequire { verify: true } | TlsMode::Smtps { verify: true })
        );
        let policy = if verify {
            ClientCertPolicy::Verify(store.verifying_ca(listener.ca.as_deref(), server_name)?)
        } else {
            ClientCertPolicy::NotRequested
        };
        Self::new(resolver, policy)
    }

    /// Runs the server side of the handshake over `stream` (after `220 2.0.0 Ready to
    /// start TLS`, or at once on an SMTPS listener). The caller bounds it in time.
    pub async fn accept<S>(&self, stream: S) -> Result<ServerUpgrade<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = self
            .acceptor
            .accept(stream)
            .await
            .map_err(TlsError::Handshake)?;
        let (_, conn) = stream.get_ref();
        let peer_cert = match (&self.checker, conn.peer_certificates()) {
            (None, _) => PeerCert::None,
            (Some(_), None) => PeerCert::None,
            (Some(_), Some([])) => PeerCert::None,
            (Some(check), Some([end_entity, intermediates @ ..])) => {
                check.verify(end_entity, intermediates)
            }
        };
        let server_name = conn.server_name().map(str::to_string);
        let facts = HandshakeFacts::from_state(conn, server_name, peer_cert);
        Ok(ServerUpgrade {
            stream,
            facts,
            verify_required: self.checker.is_some(),
        })
    }
}

impl ChainCheck {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> PeerCert {
        match self {
            ChainCheck::NoAnchors => PeerCert::Failed(CertFailure::Invalid),
            ChainCheck::Verifier(v) => {
                match v.verify_client_cert(end_entity, intermediates, UnixTime::now()) {
                    Ok(_) => PeerCert::Verified,
                    Err(_) => PeerCert::Failed(CertFailure::Invalid),
                }
            }
        }
    }
}

/// Asks for a client certificate, accepts any chain during the handshake, and still
/// checks the client's handshake signature against the certificate's key. The chain
/// itself is judged afterwards ([`ChainCheck`]).
#[derive(Debug)]
struct RequestAnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for RequestAnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
