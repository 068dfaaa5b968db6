//! A small SMTP sink for relay tests: it records the commands and DATA it receives and
//! answers RCPT as planned per connection; optional STARTTLS (rustls) and AUTH.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// What the sink does and what it saw.
#[derive(Clone, Default)]
pub struct Sink {
    /// Reply to RCPT per connection (index); missing = `250 2.1.5 Ok`.
    pub rcpt_replies: Vec<String>,
    /// Offer STARTTLS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Offer AUTH PLAIN LOGIN once secured.
    pub auth: bool,
    /// Every command line received, `TLS` when a handshake finished.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Every DATA payload, raw bytes up to and including the final dot line.
    pub data: Arc<Mutex<Vec<Vec<u8>>>>,
    /// The client address of every connection.
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
    /// Advertise DSN in the EHLO reply.
    pub dsn: bool,
    /// Refuse RCPT for addresses containing this text with `550 5.1.1 no such user`.
    pub refuse_rcpt: Option<String>,
    /// Wait this long before answering the end of DATA.
    pub data_delay: Option<std::time::Duration>,
    /// Before answering the end of DATA, take a permit of this (the test adds one to let
    /// the reply go); the message is in `data` while it waits.
    pub data_hold: Option<Arc<tokio::sync::Semaphore>>,
    /// Wait this long before the greeting.
    pub greeting_delay: Option<std::time::Duration>,
    /// Hang up instead of answering the MAIL that follows this many messages.
    pub hang_up_after: Option<usize>,
    /// Defer RCPT for addresses containing this text with `451 4.3.0 try later`.
    pub defer_rcpt: Option<String>,
    /// Connections (by index) closed at once, without a greeting.
    pub drop_connections: Vec<usize>,
    /// Connections open now, and the most open at once.
    pub open_now: Arc<std::sync::atomic::AtomicUsize>,
    pub open_max: Arc<std::sync::atomic::AtomicUsize>,
    /// When each connection was accepted, and when each ended.
    pub accepted_at: Arc<Mutex<Vec<std::time::Instant>>>,
    pub closed_at: Arc<Mutex<Vec<std::time::Instant>>>,
}

impl Sink {
    pub async fn start(self, addr: &str) -> std::io::Result<(Sink, SocketAddr)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let me = self.clone();
        tokio::spawn(async move {
            use std::sync::atomic::Ordering::SeqCst;
            for index in 0..100 {
                let Ok((socket, peer)) = listener.accept().await else {
                    return;
                };
                me.peers.lock().unwrap().push(peer);
                me.accepted_at
                    .lock()
                    .unwrap()
                    .push(std::time::Instant::now());
                let now = me.open_now.fetch_add(1, SeqCst) + 1;
                me.open_max.fetch_max(now, SeqCst);
                let me = me.clone();
                tokio::spawn(async move {
                    if let Some(plain) = me.dialogue(socket, index, false).await
                        && let Some(cfg) = me.tls.clone()
                    {
                        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                        if let Ok(secure) = acceptor.accept(plain).await {
                            me.log.lock().unwrap().push("TLS".into());
                            me.dialogue(secure, index, true).await;
                        }
                    }
                    me.closed_at.lock().unwrap().push(std::time::Instant::now());
                    me.open_now.fetch_sub(1, SeqCst);
                });
            }
        });
        Ok((self, local))
    }

    /// The client addresses the connections came from, each once.
    pub fn source_addresses(&self) -> std::collections::BTreeSet<String> {
        self.peers
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.ip().to_string())
            .collect()
    }

    pub fn commands(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.peers.lock().unwrap().len()
    }

    /// One SMTP conversation; returns the stream when the client asked for STARTTLS.
    async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        index: usize,
        secured: bool,
    ) -> Option<S> {
        if self.drop_connections.contains(&index) {
            return None;
        }
        let mut r = BufReader::new(stream);
        if !secured {
            if let Some(d) = self.greeting_delay {
                tokio::time::sleep(d).await;
            }
            r.get_mut()
                .write_all(b"220 sink.test ESMTP\r\n")
                .await
                .ok()?;
        }
        let mut received = 0usize;
        for _ in 0..5000 {
            let mut line = String::new();
            if r.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            let line = line.trim_end().to_string();
            self.log.lock().unwrap().push(line.clone());
            let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
            let reply = match verb.as_str() {
                "EHLO" => {
                    let mut r = String::from("250-sink.test\r\n");
                    if self.tls.is_some() && !secured {
                        r.push_str("250-STARTTLS\r\n");
                    }
                    if self.auth && secured {
                        r.push_str("250-AUTH PLAIN LOGIN\r\n");
                    }
                    if self.dsn {
                        r.push_str("250-DSN\r\n");
                    }
                    r.push_str("250 8BITMIME\r\n");
                    r
                }
                "STARTTLS" => {
                    r.get_mut().write_all(b"220 go ahead\r\n").await.ok()?;
                    return Some(r.into_inner());
                }
                "AUTH" => "235 2.7.0 Authentication succeeded\r\n".into(),
                "MAIL" if self.hang_up_after.is_some_and(|n| received >= n) => return None,
                "MAIL" => "250 2.0.0 Ok\r\n".into(),
                "RSET" => "250 2.0.0 Reset\r\n".into(),
                "RCPT"
                    if self
                        .refuse_rcpt
                        .as_ref()
                        .is_some_and(|r| line.contains(r.as_str())) =>
                {
                    "550 5.1.1 no such user\r\n".into()
                }
                "RCPT"
                    if self
                        .defer_rcpt
                        .as_ref()
                        .is_some_and(|r| line.contains(r.as_str())) =>
                {
                    "451 4.3.0 try later\r\n".into()
                }
                "RCPT" => match self.rcpt_replies.get(index) {
                    Some(x) => format!("{x}\r\n"),
                    None => "250 2.1.5 Ok\r\n".into(),
                },
                "DATA" => {
                    r.get_mut().write_all(b"354 go\r\n").await.ok()?;
                    let mut body = Vec::new();
                    for _ in 0..10_000 {
                        let mut l = Vec::new();
                        if r.read_until(b'\n', &mut l).await.ok()? == 0 {
                            return None;
                        }
                        body.extend_from_slice(&l);
                        if l == b".\r\n" {
                            break;
                        }
                    }
                    self.data.lock().unwrap().push(body);
                    received += 1;
                    if let Some(d) = self.data_delay {
                        tokio::time::sleep(d).await;
                    }
                    if let Some(hold) = &self.data_hold {
                        hold.acquire().await.ok()?.forget();
                    }
                    "250 2.0.0 queued as 42\r\n".into()
                }
                "QUIT" => {
                    let _ = r.get_mut().write_all(b"221 bye\r\n").await;
                    return None;
                }
                _ => "500 what\r\n".into(),
            };
            r.get_mut().write_all(reply.as_bytes()).await.ok()?;
        }
        None
    }
}

/// A self-signed certificate for `sink.test`, as a server configuration.
pub fn tls_config() -> Arc<rustls::ServerConfig> {
    let ck = rcgen::generate_simple_self_signed(vec!["sink.test".to_string()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(
        ck.signing_key.serialize_der(),
    ));
    let cfg = rustls::ServerConfig::builder_with_provider(smtpd::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    Arc::new(cfg)
}
