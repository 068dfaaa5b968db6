//! What a session needs to know before the first byte: who the client is, what the listener
//! offers, and the limits. Plain data, filled in by the connection driver from the compiled
//! configuration, so the session does not depend on the config module.

use super::ids::SessionId;

/// Where the client connects from: the queue's own record of it (`sockaddr:` of the
/// envelope), under the name the session layer uses.
pub use crate::queue::ClientAddr as ClientAddress;

/// Forward-confirmed reverse DNS outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fcrdns {
    /// The PTR name resolves back to the client address.
    Pass,
    /// No PTR, or the name does not resolve back.
    Fail,
    /// The resolver failed.
    Error,
}

/// The client as known when the session starts (after the reverse DNS lookup).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// Peer address.
    pub address: ClientAddress,
    /// Reverse name, or `<unknown>` when there is none.
    pub rdns: String,
    /// Forward confirmation of `rdns`.
    pub fcrdns: Fcrdns,
}

impl ClientInfo {
    /// A client without a PTR record (`host=<unknown>`).
    pub fn unknown(address: ClientAddress) -> ClientInfo {
        ClientInfo {
            address,
            rdns: "<unknown>".to_string(),
            fcrdns: Fcrdns::Fail,
        }
    }
}

/// How the listener does TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS.
    #[default]
    None,
    /// `tls`: STARTTLS offered.
    StartTls,
    /// `tls-require`: STARTTLS offered, MAIL FROM refused before it.
    StartTlsRequired,
    /// `smtps`: TLS from the first byte; the banner comes after the handshake.
    Smtps,
}

/// How the listener does AUTH (only ever offered on a secure session).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMode {
    /// No AUTH.
    #[default]
    None,
    /// `auth`: AUTH offered and required before MAIL FROM.
    Required,
    /// `auth-optional`: AUTH offered, not required.
    Optional,
}

/// The limits of `smtp limit ...`, `smtp max-message-size` and OpenSMTPD's fixed sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `smtp max-message-size` (default 35 MiB); also the EHLO `SIZE` value.
    pub max_message_size: usize,
    /// `smtp limit max-rcpt`: accepted recipients per transaction.
    pub max_rcpt: usize,
    /// `smtp limit max-mails`: committed messages per session.
    pub max_mails: usize,
    /// Lines of this many bytes or more close the session (`500 5.0.0 Line too long`).
    pub max_line: usize,
    /// Commands of this many bytes or more close the session (`Command line too long`).
    pub max_command_line: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_size: 36_700_160,
            max_rcpt: 1000,
            max_mails: 100,
            max_line: 65535,
            max_command_line: 2048,
        }
    }
}

/// Everything the session needs from the listener and the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionParams {
    /// The session id printed in logs.
    pub id: SessionId,
    /// The server name of this session (`smtpname`): listener `hostname`, or the `hostnames`
    /// lookup of the local address, or the global name. Banner, greeting, Received `by`,
    /// qualification of bare addresses.
    pub server_name: String,
    /// The listener's host name: used by the header rewriting (`To: bob` → `bob@NAME`) and in
    /// added `Message-ID:`s: the listener's `hostname`, else the global name (not the
    /// `hostnames` lookup, as in 6.8). Usually equal to `server_name`.
    pub listener_hostname: String,
    /// The client.
    pub client: ClientInfo,
    /// TLS on this listener.
    pub tls: TlsMode,
    /// AUTH on this listener.
    pub auth: AuthMode,
    /// AUTH is also offered without TLS (`auth-plaintext`, for a trusted network or behind a
    /// TLS-terminating proxy); off by default, as in OpenSMTPD.
    pub auth_plaintext: bool,
    /// Advertise and accept DSN parameters (false with `no-dsn` and on the 6.8 socket).
    pub dsn: bool,
    /// The listener has filters: the session asks its driver at every filter phase.
    pub filtered: bool,
    /// A filter program of the listener's chain filters data lines: the message goes out
    /// through [`Action::FilterData`](super::action::Action::FilterData) as received, and
    /// what comes back (the answer to `Question::FilteredData`) is the message.
    pub data_filtered: bool,
    /// `mask-src`: leave the `from ...` part out of Received.
    pub mask_source: bool,
    /// `received-auth`: Received names the authenticated user (TLS sessions only).
    pub received_auth: bool,
    /// Loopback or socket listener: add missing `Date:` / `Message-ID:` headers.
    pub local_listener: bool,
    /// `senders <t> masquerade`: authenticated sessions get their `From:` replaced.
    pub masquerade: bool,
    /// Local enqueue (sendmail, bounces through the socket): the session starts
    /// authenticated, with an empty user name (`ESMTPA`).
    pub local_enqueue: bool,
    /// Limits.
    pub limits: Limits,
}

impl SessionParams {
    /// Parameters of a plain listener with OpenSMTPD's defaults: no TLS, no AUTH, DSN on,
    /// no filters.
    pub fn new(id: SessionId, server_name: &str, client: ClientInfo) -> SessionParams {
        SessionParams {
            id,
            server_name: server_name.to_string(),
            listener_hostname: server_name.to_string(),
            client,
            tls: TlsMode::None,
            auth: AuthMode::None,
            auth_plaintext: false,
            dsn: true,
            filtered: false,
            data_filtered: false,
            mask_source: false,
            received_auth: false,
            local_listener: false,
            masquerade: false,
            local_enqueue: false,
            limits: Limits::default(),
        }
    }
}

/// Whether the client presented a certificate, and whether it verified (Received's
/// `YES|FAIL|NO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCert {
    /// Presented and verified.
    Verified,
    /// Presented, not verified.
    Unverified,
    /// None presented.
    None,
}

/// What the TLS layer reports once the handshake is done; it goes into Received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// Protocol version, e.g. `TLSv1.3`.
    pub version: String,
    /// Cipher name, e.g. `TLS_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// Cipher strength in bits.
    pub bits: u32,
    /// Client certificate status.
    pub client_cert: ClientCert,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_texts() {
        let v4 = ClientAddress::Ip("127.0.0.1".parse().unwrap());
        let v6 = ClientAddress::Ip("::1".parse().unwrap());
        assert_eq!(
            (v4.text(), v4.bracketed()),
            ("127.0.0.1".into(), "[127.0.0.1]".into())
        );
        assert_eq!(
            (v6.text(), v6.bracketed()),
            ("[::1]".into(), "[::1]".into())
        );
        assert_eq!(
            (
                ClientAddress::Local.text(),
                ClientAddress::Local.bracketed()
            ),
            ("local".into(), "[local]".into())
        );
    }

    #[test]
    fn default_limits_are_opensmtpd_defaults() {
        let l = Limits::default();
        assert_eq!(
            (
                l.max_message_size,
                l.max_rcpt,
                l.max_mails,
                l.max_line,
                l.max_command_line
            ),
            (36700160, 1000, 100, 65535, 2048)
        );
    }
}
