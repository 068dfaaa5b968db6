//! The relay side: TLS towards the next hop (STARTTLS after `EHLO`, or `smtps://`).
//!
//! As in OpenSMTPD 6.8's MTA, the handshake itself accepts any server certificate (the
//! server still has to prove it holds the key); the chain and the host name are checked
//! afterwards. The result goes into `mta server-cert-check result="…"`, and a relay that
//! must verify (`tls` without `no-verify`, `smtp+tls://`, `smtps://`) gives up on the
//! session with `SSL certificate check failed` when [`ClientUpgrade::refusal`] says so.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use super::pki::{CaRoots, LoadedPki, TlsStore};
use super::{CertFailure, HandshakeFacts, PeerCert, TlsError, TlsSetupError, provider};
use crate::config::model::RelayAction;

/// What a relay needs to run TLS handshakes to its next hops; cheap to clone and share.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    /// Post-handshake chain and name check; `None` when there is no anchor at all.
    checker: Option<Arc<WebPkiServerVerifier>>,
    verify: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("verify", &self.verify)
            .finish()
    }
}

/// A finished client-side handshake.
pub struct ClientUpgrade<S> {
    /// The encrypted stream.
    pub stream: tokio_rustls::client::TlsStream<S>,
    /// What to log.
    pub facts: HandshakeFacts,
    verify: bool,
}

impl<S> ClientUpgrade<S> {
    /// When the relay must verify and the server's certificate did not pass: the error to
    /// fail the session with (OpenSMTPD: `SSL certificate check failed`). `None` when the
    /// session goes on.
    pub fn refusal(&self) -> Option<&'static str> {
        (self.verify && self.facts.peer_cert != PeerCert::Verified)
            .then_some("SSL certificate check failed")
    }
}

impl ClientTls {
    /// A client configuration checking servers against `roots`, presenting `client_cert`
    /// when the server asks for one; with `verify`, a failed check refuses the session.
    pub fn new(
        roots: CaRoots,
        client_cert: Option<LoadedPki>,
        verify: bool,
    ) -> Result<Self, TlsSetupError> {
        let provider = provider();
        let checker = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(roots.store(), provider.clone())
                    .build()
                    .map_err(|e| TlsSetupError::Config(e.to_string()))?,
            )
        };
        let handshake_check = Arc::new(AcceptAnyServerCert {
            algorithms: provider.signature_verification_algorithms,
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(handshake_check);
        let mut config = match client_cert {
            Some(pki) => builder.with_client_cert_resolver(Arc::new(ClientCertificate(pki.key))),
            None => builder.with_no_client_auth(),
        };
        config.resumption = Resumption::disabled();
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            checker,
            verify,
        })
    }

    /// The TLS setup of a relay action (6.8 `mta_cert_init` / `mta_cert_verify`): its
    /// `pki` as client certificate (else the pki named after the HELO name, else `*`,
    /// else none), its `ca` as anchors (else the HELO name's, else `*`, else the
    /// system's). `verify` comes from the relay's `tls` option and URL scheme.
    pub fn for_relay(
        store: &TlsStore,
        relay: &RelayAction,
        helo: &str,
        verify: bool,
    ) -> Result<Self, TlsSetupError> {
        let client_cert = match relay.pki.as_deref() {
            Some(_) => Some(store.initial_pki(relay.pki.as_deref(), helo)?.clone()),
            None => store.initial_pki(None, helo).ok().cloned(),
        };
        let roots = store.verifying_ca(relay.ca.as_deref(), helo)?;
        Self::new(roots, client_cert, verify)
    }

    /// Runs the client side of the handshake to `host` (a DNS name, an address, or an
    /// address in brackets) over `stream`. The caller bounds it in time.
    pub async fn connect<S>(&self, host: &str, stream: S) -> Result<ClientUpgrade<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let bare = bare
            .get(..5)
            .filter(|p| p.eq_ignore_ascii_case("ipv6:"))
            .map_or(bare, |_| &bare[5..]);
        let name = ServerName::try_from(bare.to_string())
            .map_err(|_| TlsError::BadServerName(host.to_string()))?;
        let stream = self
            .connector
            .connect(name.clone(), stream)
            .await
            .map_err(TlsError::Handshake)?;
        let (_, conn) = stream.get_ref();
        let peer_cert = match conn.peer_certificates() {
            None | Some([]) => PeerCert::None,
            Some([end_entity, intermediates @ ..]) => match &self.checker {
                None => PeerCert::Failed(CertFailure::Invalid),
                Some(v) => check_server(v, end_entity, intermediates, &name),
            },
        };
        let facts = HandshakeFacts::from_state(conn, None, peer_cert);
        Ok(ClientUpgrade {
            stream,
            facts,
            verify: self.verify,
        })
    }
}

fn check_server(
    verifier: &WebPkiServerVerifier,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    name: &ServerName<'_>,
) -> PeerCert {
    match verifier.verify_server_cert(end_entity, intermediates, name, &[], UnixTime::now()) {
        Ok(_) => PeerCert::Verified,
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => PeerCert::Failed(CertFailure::NameMismatch),
        Err(_) => PeerCert::Failed(CertFailure::Invalid),
    }
}

/// Presents one certificate whenever the server asks.
#[derive(Debug)]
struct ClientCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts any server chain during the handshake but checks the server's handshake
/// signature; the chain is judged afterwards.
#[derive(Debug)]
struct AcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
