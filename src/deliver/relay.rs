//! Outbound delivery for `relay` actions: where the mail goes (smarthost URL, `domain`
//! mapping, or the recipient domain's MX) and the SMTP client session that hands it over.
//!
//! The outcome of one attempt is a [`RelayOutcome`] the delivery loop maps onto the queue:
//! delivered, retried later, or failed for good. Every network step is bounded in time, and
//! nothing the next hop sends can make this code panic.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tracing::{info, warn};

use super::result::Status;
use crate::config::model::RelayAction;
use crate::dns::{
    AddressFamily, Answer, MailExchanger, MxRoute, Resolver, mail_exchangers, within,
};
use crate::table::credentials::RelayCredentials;
use crate::tls::{ClientTls, TlsStore};

/// Time allowed to open a TCP connection to one address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for one reply (OpenSMTPD's mta uses 300 s per command).
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// Time allowed for a TLS handshake.
const TLS_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for the whole DNS part of routing.
const DNS_TIMEOUT: Duration = Duration::from_secs(30);
/// The session id of `mta delivery` lines decided before any session.
pub const NO_SESSION: &str = "0000000000000000";
/// Longest reply line accepted, and most lines in one reply.
const MAX_LINE: usize = 4096;
const MAX_REPLY_LINES: usize = 100;

/// How a smarthost is spoken to (the scheme of a relay URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayScheme {
    /// `smtp://`: STARTTLS when offered.
    Smtp,
    /// `smtp+tls://`: STARTTLS required.
    SmtpTls,
    /// `smtp+notls://`: never TLS.
    SmtpNoTls,
    /// `smtps://`: TLS from the first byte.
    Smtps,
    /// `lmtp://`: LHLO instead of EHLO.
    Lmtp,
}

impl RelayScheme {
    /// The scheme as a relay URL spells it (`smtp+tls` for STARTTLS required).
    pub fn url_text(self) -> &'static str {
        match self {
            RelayScheme::SmtpTls => "smtp+tls",
            other => other.text(),
        }
    }

    fn text(self) -> &'static str {
        match self {
            RelayScheme::Smtp | RelayScheme::SmtpTls => "smtp",
            RelayScheme::SmtpNoTls => "smtp+notls",
            RelayScheme::Smtps => "smtps",
            RelayScheme::Lmtp => "lmtp",
        }
    }
}

/// A parsed smarthost: `[scheme://][label@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrl {
    pub scheme: RelayScheme,
    /// Selects the `auth` table entry.
    pub label: Option<String>,
    /// A host name, or an address (brackets removed).
    pub host: String,
    pub port: u16,
}

/// Reads a relay URL as `to.c:text_to_relayhost` does; `None` when it cannot be used.
pub fn parse_relay_url(text: &str) -> Option<RelayUrl> {
    let (scheme, rest) = match text.split_once("://") {
        Some((s, r)) => {
            let scheme = match s.to_ascii_lowercase().as_str() {
                "smtp" => RelayScheme::Smtp,
                "smtp+tls" => RelayScheme::SmtpTls,
                "smtp+notls" => RelayScheme::SmtpNoTls,
                "smtps" => RelayScheme::Smtps,
                "lmtp" => RelayScheme::Lmtp,
                _ => return None,
            };
            (scheme, r)
        }
        None => (RelayScheme::Smtp, text),
    };
    let (label, hostport) = match rest.rsplit_once('@') {
        Some((l, h)) if !l.is_empty() => (Some(l.to_string()), h),
        Some(_) => return None,
        None => (None, rest),
    };
    if label.is_some() && !matches!(scheme, RelayScheme::SmtpTls | RelayScheme::Smtps) {
        return None;
    }
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let (addr, after) = inner.split_once(']')?;
        let addr = addr
            .get(..5)
            .filter(|p| p.eq_ignore_ascii_case("ipv6:"))
            .map_or(addr, |_| &addr[5..]);
        addr.parse::<IpAddr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
        };
        (addr.to_string(), port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.parse::<u16>().ok()?)),
            None => (hostport.to_string(), None),
        }
    };
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if !valid || port == Some(0) {
        return None;
    }
    let port = match (port, scheme) {
        (Some(p), _) => p,
        (None, RelayScheme::Lmtp) => return None,
        (None, RelayScheme::Smtps) => 465,
        (None, _) => 25,
    };
    Some(RelayUrl {
        scheme,
        label,
        host,
        port,
    })
}

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayOutcome {
    pub status: Status,
    /// The `stat=` text: the next hop's reply, or our reason.
    pub stat: String,
    /// The host the mail went to (or was meant to), for `relay=`.
    pub relay: String,
    /// The id of the last session, or zeros when none was opened (DNS failures).
    pub session: String,
    /// The local address of the session the outcome comes from (`source=`); `None`
    /// when no session carried it.
    pub source: Option<String>,
    /// The next hop offered DSN: it took the notification requests over, so no success
    /// report is ours to send (as 6.8's queue decides).
    pub next_hop_dsn: bool,
}

impl RelayOutcome {
    /// An outcome no session carried (`source="-"`, no session id): a failure decided
    /// before or without a connection.
    pub fn new(status: Status, stat: impl Into<String>, relay: &str) -> Self {
        RelayOutcome {
            status,
            stat: stat.into(),
            relay: relay.to_string(),
            session: NO_SESSION.to_string(),
            source: None,
            next_hop_dsn: false,
        }
    }
}

/// A source address as 6.8's `mta_source_to_text` writes it in `connector` texts: `[]`
/// when the system chooses it, else the address (IPv6 in brackets).
pub fn source_text(source: Option<IpAddr>) -> String {
    source.map_or_else(
        || "[]".to_string(),
        |a| crate::queue::ClientAddr::Ip(a).text(),
    )
}

/// A remote host as 6.8's `mta_host_to_text` writes it in `relay=`: its address and its
/// name (the PTR name, or the address again when it has none, as getnameinfo(3) gives).
pub fn host_text(a: IpAddr, name: &str) -> String {
    format!("{} ({name})", crate::queue::ClientAddr::Ip(a).text())
}

/// One message to hand over: envelope sender, recipients, and the queued content.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// Reverse path without brackets; empty for `<>`.
    pub sender: &'a str,
    /// The recipient (the envelope's `dest`).
    pub recipient: &'a str,
    /// The message as queued (LF or CRLF line ends).
    pub content: &'a [u8],
}

/// Everything a relay attempt needs besides the message.
#[derive(Clone)]
pub struct Relayer {
    resolver: Arc<dyn Resolver>,
    tls: TlsStore,
    /// The server name: default HELO name.
    server_name: String,
    /// Port used for MX hosts (25; tests may move it).
    mx_port: u16,
    /// Source-to-address routes and their penalties.
    routes: SharedRoutes,
    /// Woken when an attempt to connect on a route ends (greeted or not).
    route_events: Arc<tokio::sync::Notify>,
    /// The first penalty of a route (OpenSMTPD's 15 s; tests may shorten it).
    penalty_base: Duration,
    /// Filter programs that take `smtp-out` reports, once they registered (shared by
    /// clones).
    reports: Arc<std::sync::OnceLock<OutReportSetup>>,
}

/// The running filter programs, and the programs of each filter chain by the chain's name
/// (a relay action's `filter`).
struct OutReportSetup {
    processors: Arc<crate::processor::Processors>,
    chains: std::collections::HashMap<String, Vec<String>>,
}

/// How 6.8 queues a message body (lines as sent) for its connection: rounds that each take
/// lines until 64 KiB wait (the last round ends at the end of the file, and may take
/// nothing). The bytes of each round.
fn body_rounds(body: &[u8]) -> Vec<usize> {
    const HIWAT: usize = 65535;
    let mut lines = body.split_inclusive(|&b| b == b'\n').map(<[u8]>::len);
    let mut rounds = Vec::new();
    // Bounded: each round but the last takes at least one line.
    for _ in 0..=body.len() {
        let mut queued = 0;
        let mut eof = false;
        while queued < HIWAT {
            match lines.next() {
                Some(n) => queued += n,
                None => {
                    eof = true;
                    break;
                }
            }
        }
        rounds.push(queued);
        if eof {
            break;
        }
    }
    rounds
}

/// A route: from a source address (`None`: any) to a remote address.
type RouteKey = (Option<IpAddr>, IpAddr);
type SharedRoutes = Arc<std::sync::Mutex<RouteTable>>;

/// Longest a route stays disabled.
const ROUTE_PENALTY_MAX: Duration = Duration::from_secs(3600);

/// What is known of one route, from a source address (`None`: any) to a remote address.
#[derive(Debug)]
struct RouteInfo {
    id: u64,
    /// The remote address's PTR name, once looked up.
    ptr: Option<String>,
    /// No session has reached the greeting since the route was created or enabled.
    fresh: bool,
    penalty: u32,
    disabled_until: Option<Instant>,
    nconn: usize,
    nerror: u32,
    /// When a session was last opened on it (`smtpctl show hosts`, `conn-delay-route`,
    /// `conn-delay-host`).
    last_conn: Option<Instant>,
    /// When a session on it last ended, or a connection failed (`reconn-delay-route`).
    last_disc: Option<Instant>,
    /// Connections being opened on it.
    connecting: usize,
}

#[derive(Debug, Default)]
struct RouteTable {
    next_id: u64,
    routes: std::collections::BTreeMap<RouteKey, RouteInfo>,
    /// The longest pause a route has to be remembered for (the largest
    /// `conn-delay-route`, `reconn-delay-route` or `conn-delay-host` seen).
    keep: Duration,
    /// When routes nobody needs are forgotten next (see [`RouteTable::prune`]).
    next_prune: Option<Instant>,
}

impl RouteTable {
    fn get(&mut self, key: RouteKey) -> &mut RouteInfo {
        let next = &mut self.next_id;
        self.routes.entry(key).or_insert_with(|| {
            *next += 1;
            RouteInfo {
                id: *next,
                ptr: None,
                fresh: true,
                penalty: 0,
                disabled_until: None,
                nconn: 0,
                nerror: 0,
                last_conn: None,
                last_disc: None,
                connecting: 0,
            }
        })
    }

    /// Forgets the routes nothing holds any more, as 6.8 frees a route once no session
    /// uses it, no penalty keeps it (15 s × penalty² after its last attempt) and no pause
    /// is pending on it. A route seen again starts afresh.
    fn prune(&mut self, now: Instant, penalty_base: Duration) {
        let keep = self.keep;
        let within = |t: Option<Instant>, d: Duration| t.is_some_and(|t| t + d > now);
        self.routes.retain(|_, r| {
            r.nconn > 0
                || r.connecting > 0
                || r.disabled_until.is_some_and(|u| u > now)
                || (r.penalty > 0
                    && within(
                        r.last_conn.max(r.last_disc),
                        (penalty_base * r.penalty * r.penalty).min(ROUTE_PENALTY_MAX),
                    ))
                || within(r.last_conn, keep)
                || within(r.last_disc, keep)
        });
    }

    /// A session starts connecting on `key` at `now`: the pauses count from here, and the
    /// route is held until the attempt ends.
    fn opening(&mut self, key: RouteKey, now: Instant) {
        let r = self.get(key);
        r.last_conn = Some(now);
        r.connecting += 1;
    }

    /// Whether a session is open or opening on `key` while none has been greeted on it
    /// yet: 6.8's `mta_find_route` opens no second session on a route it has not
    /// validated ("not validated yet").
    fn unvalidated_busy(&mut self, key: RouteKey) -> bool {
        let r = self.get(key);
        r.fresh && (r.nconn > 0 || r.connecting > 0)
    }

    /// Whether a session may open on `key` now, as 6.8's `mta_find_route` decides: not on
    /// a route not validated yet that has a session open or opening; not before the
    /// pauses of `delays` (a host opened less than `conn-delay-host` ago, a route opened
    /// less than `conn-delay-route` ago or closed less than `reconn-delay-route` ago).
    /// Otherwise the session is counted as opened now.
    fn claim(&mut self, key: RouteKey, delays: RouteDelays, now: Instant) -> Claim {
        if self.unvalidated_busy(key) {
            return Claim::Unvalidated;
        }
        let after = |t: Option<Instant>, d: Duration| t.filter(|_| !d.is_zero()).map(|t| t + d);
        let host_last = self
            .routes
            .iter()
            .filter(|((_, addr), _)| *addr == key.1)
            .filter_map(|(_, r)| r.last_conn)
            .max();
        let r = self.get(key);
        let due = [
            after(host_last, delays.host),
            after(r.last_conn, delays.route),
            after(r.last_disc, delays.reconn),
        ]
        .into_iter()
        .flatten()
        .max()
        .filter(|d| *d > now);
        if due.is_none() {
            self.opening(key, now);
        }
        self.keep = self
            .keep
            .max(delays.host)
            .max(delays.route)
            .max(delays.reconn);
        due.map_or(Claim::Opened, Claim::Wait)
    }
}

/// What [`RouteTable::claim`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// The session is counted as opening now.
    Opened,
    /// A pause keeps the route until then.
    Wait(Instant),
    /// A session is open or opening on a route none has been greeted on yet.
    Unvalidated,
}

/// The pauses between sessions to one remote address (`conn-delay-host`) and on one
/// route, from a source address to a remote address (`conn-delay-route` after a session
/// opened, `reconn-delay-route` after one ended). All zero by default: only the session
/// pool sets them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteDelays {
    pub host: Duration,
    pub route: Duration,
    pub reconn: Duration,
}

/// `[src] <-> address (ptr)` as OpenSMTPD's `mta_route_to_text` writes a route: `[]` for a
/// source the system chooses, IPv6 addresses in brackets (`sa_to_text`).
fn route_text((source, addr): RouteKey, ptr: Option<&str>) -> String {
    let src = source_text(source);
    let dst = crate::queue::ClientAddr::Ip(addr).text();
    match ptr {
        Some(p) => format!("{src} <-> {dst} ({p})"),
        None => format!("{src} <-> {dst}"),
    }
}

/// An open stream, plain or encrypted.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A reply from the next hop.
#[derive(Debug)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn text(&self) -> String {
        self.lines.join(" ")
    }
    fn status(&self) -> Status {
        match self.code {
            200..=399 => Status::Ok,
            500..=599 => Status::PermFail,
            _ => Status::TempFail,
        }
    }
}

/// One SMTP client connection.
struct Conn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    /// How `-T mta` names the session (`0x` and the session id).
    tag: String,
    /// OpenSMTPD's name of the session state, for the `-T mta` transition lines.
    state: &'static str,
    /// `smtp-out` reports to filter programs, when the action has some.
    reports: Option<Arc<crate::processor::OutReports>>,
}

impl Conn {
    /// A connection of session `sid` over `io`, in `state` (a TLS handshake keeps the state
    /// of the plain connection it replaces).
    fn new(io: Box<dyn Io>, sid: &str, state: &'static str) -> Conn {
        Conn {
            io,
            buf: Vec::new(),
            tag: format!("0x{sid}"),
            state,
            reports: None,
        }
    }

    /// An `smtp-out` report event, when filter programs take them.
    fn report(&self, event: &str, params: Option<&str>) {
        if let Some(r) = &self.reports {
            r.report(event, params);
        }
    }

    /// `-T mta`: `mta: 0xSID: MTA_EHLO -> MTA_STARTTLS`, where OpenSMTPD changes state.
    fn enter(&mut self, state: &'static str) {
        tracing::trace!(target: "mta", "mta: {}: {} -> {}", self.tag, self.state, state);
        self.state = state;
    }

    /// `-T mta` for a message body, as 6.8 traces sending it: it queues lines until 64 KiB
    /// are waiting (`>>> [...N bytes...]`), and each time the connection has taken them it
    /// enters `MTA_BODY` again, until the end of the file (`end-of-file`).
    fn trace_body(&mut self, body: &[u8]) {
        if !crate::log::tracing("mta") {
            return;
        }
        for queued in body_rounds(body) {
            if queued > 0 {
                tracing::trace!(target: "mta", "mta: {}: >>> [...{queued} bytes...]", self.tag);
            }
            self.enter("MTA_BODY");
        }
        tracing::trace!(target: "mta", "mta: {}: end-of-file", self.tag);
    }

    async fn read_line(&mut self) -> Result<String, String> {
        for _ in 0..MAX_LINE {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let line = String::from_utf8_lossy(&line).into_owned();
                tracing::trace!(target: "mta", "mta: {}: <<< {}", self.tag, line);
                self.report("protocol-server", Some(&line));
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                return Err("Line too long".into());
            }
            let mut chunk = [0u8; 4096];
            let n = match timeout(REPLY_TIMEOUT, self.io.read(&mut chunk)).await {
                Err(_) => {
                    self.report("timeout", None);
                    return Err("Timeout".into());
                }
                Ok(Err(e)) => return Err(format!("IO Error: {}", crate::log::strerror(&e))),
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                return Err("Connection closed unexpectedly".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Err("Line too long".into())
    }

    async fn reply(&mut self) -> Result<Reply, String> {
        let mut lines = Vec::new();
        for _ in 0..MAX_REPLY_LINES {
            let line = self.read_line().await?;
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (200..600).contains(c))
                .ok_or_else(|| bad_response(&line))?;
            let sep = line.as_bytes().get(3).copied();
            lines.push(line.clone());
            match sep {
                None | Some(b' ') => return Ok(Reply { code, lines }),
                Some(b'-') => continue,
                _ => return Err(bad_response(&line)),
            }
        }
        Err("Reply too long".into())
    }

    async fn send(&mut self, data: &[u8]) -> Result<(), String> {
        match timeout(REPLY_TIMEOUT, async {
            self.io.write_all(data).await?;
            self.io.flush().await
        })
        .await
        {
            Err(_) => Err("Timeout".into()),
            Ok(Err(e)) => Err(format!("IO Error: {}", crate::log::strerror(&e))),
            Ok(Ok(())) => Ok(()),
        }
    }

    async fn command(&mut self, line: &str) -> Result<Reply, String> {
        let shown = match line.get(..11) {
            Some(head) if head.eq_ignore_ascii_case("AUTH PLAIN ") => "AUTH PLAIN ********",
            _ => line,
        };
        self.command_shown(line, shown).await
    }

    /// Sends `line`, traced and reported as `shown` (credentials are never written to the
    /// trace or reported), and reads the reply.
    async fn command_shown(&mut self, line: &str, shown: &str) -> Result<Reply, String> {
        self.send_command(line, shown).await?;
        self.reply().await
    }

    /// EHLO, HELO or LHLO: the command, then `link-identify` (as 6.8 reports it, before
    /// the reply), then the reply.
    async fn identify(&mut self, verb: &str, helo: &str) -> Result<Reply, String> {
        let line = format!("{verb} {helo}");
        self.send_command(&line, &line).await?;
        self.report("link-identify", Some(&format!("{verb}|{helo}")));
        self.reply().await
    }

    /// Sends `line` (traced and reported as `shown`) without reading the reply.
    async fn send_command(&mut self, line: &str, shown: &str) -> Result<(), String> {
        tracing::trace!(target: "mta", "mta: {}: >>> {}", self.tag, shown);
        self.report("protocol-client", Some(shown));
        self.send(format!("{line}\r\n").as_bytes()).await
    }
}

/// A reply line that breaks the protocol, named in the log and the envelope with its
/// control characters escaped (`vis`), so that a hostile next hop cannot forge lines.
fn bad_response(line: &str) -> String {
    format!("Bad response: {}", crate::log::vis(line.as_bytes()))
}

/// The message body for DATA: CRLF line ends, leading dots doubled, ends with `.`.
pub fn data_payload(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 32 + 8);
    let mut at_line_start = true;
    let mut prev = 0u8;
    for &b in content {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        at_line_start = b == b'\n';
        prev = b;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn session_id() -> String {
    format!("{:016x}", getrandom::u64().unwrap_or(0))
}

/// The capabilities of an EHLO reply that matter here.
#[derive(Default)]
struct Capabilities {
    starttls: bool,
    auth_plain: bool,
    auth_login: bool,
    dsn: bool,
}

fn capabilities(reply: &Reply) -> Capabilities {
    let mut caps = Capabilities::default();
    for line in reply.lines.iter().skip(1) {
        let kw = line.get(4..).unwrap_or("").to_ascii_uppercase();
        let mut words = kw.split_whitespace();
        match words.next() {
            Some("STARTTLS") => caps.starttls = true,
            Some("DSN") => caps.dsn = true,
            Some("AUTH") => {
                for w in words {
                    caps.auth_plain |= w == "PLAIN";
                    caps.auth_login |= w == "LOGIN";
                }
            }
            _ => {}
        }
    }
    caps
}

/// A session failure: the status it maps to and its text.
type Failure = (Status, String);

fn temp(text: impl Into<String>) -> Failure {
    (Status::TempFail, text.into())
}

/// One host to try: its name (for logs and TLS), port, scheme and `auth` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub host: String,
    pub port: u16,
    pub scheme: RelayScheme,
    pub label: Option<String>,
}

/// Which address families a route may use (`mta limit inet4|inet6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    Any,
    Inet4,
    Inet6,
}

impl Family {
    fn allows(self, a: IpAddr) -> bool {
        match self {
            Family::Any => true,
            Family::Inet4 => a.is_ipv4(),
            Family::Inet6 => a.is_ipv6(),
        }
    }
}

/// Bounds the connections open to one remote address (`max-conn-per-host`).
#[derive(Debug, Default)]
pub struct HostLimiter {
    slots: std::sync::Mutex<std::collections::HashMap<IpAddr, Arc<tokio::sync::Semaphore>>>,
}

impl HostLimiter {
    /// Waits for a free connection slot to `addr`, `max` of them at most.
    async fn acquire(&self, addr: IpAddr, max: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let sem = {
            let mut slots = self.slots.lock().ok()?;
            slots
                .entry(addr)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(max.max(1))))
                .clone()
        };
        sem.acquire_owned().await.ok()
    }
}

/// How a session is opened: address family, and the per-host bound with its limiter.
#[derive(Clone, Copy, Default)]
pub struct ConnectLimits<'a> {
    pub family: Family,
    pub per_host: Option<(&'a HostLimiter, usize)>,
    /// What 6.8 names the relay in `relay=` when no host could take the mail: the
    /// destination domain, or the smarthost's name. `None`: the first hop's name.
    pub relay_name: Option<&'a str>,
    /// The connector as 6.8's `smtp-out:` lines name it (`[connector:SRC->[relay:…],0x0]`);
    /// `None`: `[relay:HOST,SCHEME]` of the first hop.
    pub connector: Option<&'a str>,
    /// Pauses before a session opens on a route.
    pub delays: RouteDelays,
}

/// One recipient of a transaction, with its DSN parameters.
#[derive(Debug, Clone, Default)]
pub struct Recipient<'a> {
    pub dest: &'a str,
    pub notify: crate::queue::DsnNotify,
    /// `ORCPT` address, empty when none was given.
    pub orcpt: &'a str,
    /// The envelope id (16 hex digits) reports name, empty when there is none.
    pub evpid: String,
}

/// One mail transaction: the reverse path (already rewritten by `mail-from` or SRS), the
/// DSN parameters of MAIL, the recipients, and the queued content.
#[derive(Debug, Clone)]
pub struct Transaction<'a> {
    /// The message id (8 hex digits) reports name, empty when there is none.
    pub msgid: String,
    pub sender: &'a str,
    pub ret: Option<crate::queue::DsnRet>,
    pub envid: &'a str,
    pub rcpts: Vec<Recipient<'a>>,
    pub content: &'a [u8],
}

/// `NOTIFY=` words as RFC 3461 spells them.
fn notify_text(n: crate::queue::DsnNotify) -> String {
    use crate::queue::DsnNotify as N;
    if n.has(N::NEVER) {
        return "NEVER".into();
    }
    let words: Vec<&str> = [
        (N::SUCCESS, "SUCCESS"),
        (N::FAILURE, "FAILURE"),
        (N::DELAY, "DELAY"),
    ]
    .iter()
    .filter(|(b, _)| n.has(*b))
    .map(|(_, w)| *w)
    .collect();
    words.join(",")
}

/// An open SMTP client session, ready for transactions one after the other.
pub struct Session {
    sid: String,
    host: String,
    conn: Conn,
    dsn: bool,
    lmtp: bool,
    /// Messages accepted by the next hop on this session.
    sent: usize,
    /// Set when the connection broke: the reason.
    broken: Option<String>,
    /// The connection broke on the MAIL command of a transaction.
    lost_at_mail: bool,
    /// Consecutive refused recipients, and how many end the session
    /// (`max-failures-per-session`; 0: no bound).
    failures: usize,
    max_failures: usize,
    /// The local address of the connection (`source=` of `mta delivery`).
    local: Option<SocketAddr>,
    /// The remote host as `relay=` names it: `ADDRESS (NAME)`.
    relay: String,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The route the session counts in (`nconn` of `show routes`).
    route: Option<(SharedRoutes, RouteKey)>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some((table, key)) = self.route.take()
            && let Ok(mut t) = table.lock()
        {
            let r = t.get(key);
            r.nconn = r.nconn.saturating_sub(1);
            r.last_disc = Some(Instant::now());
        }
    }
}

impl Session {
    /// The session id of the log lines.
    pub fn id(&self) -> &str {
        &self.sid
    }
    /// The host name spoken to (the MX or smarthost name).
    pub fn host(&self) -> &str {
        &self.host
    }
    /// The remote host as `relay=` names it: `ADDRESS (PTR NAME)`.
    pub fn relay_text(&self) -> &str {
        &self.relay
    }
    /// Whether the next hop offered DSN.
    pub fn offers_dsn(&self) -> bool {
        self.dsn
    }
    /// The local address as `source=` names it.
    pub fn source_text(&self) -> Option<String> {
        self.local
            .map(|l| crate::queue::ClientAddr::Ip(l.ip()).text())
    }
    /// Messages the next hop accepted so far.
    pub fn sent(&self) -> usize {
        self.sent
    }
    /// Whether the connection can carry another transaction.
    pub fn usable(&self) -> bool {
        self.broken.is_none()
    }
    /// Whether the connection was found broken when a transaction began (nothing of
    /// it reached the next hop, so it may be tried again on a new connection).
    pub fn lost_before_mail(&self) -> bool {
        self.lost_at_mail
    }
    /// The local address the connection was made from.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// `max-failures-per-session`: after this many consecutive refused recipients the
    /// session gives up (the rest of the transaction is deferred) and QUITs; 0: no bound.
    pub fn set_max_failures(&mut self, n: usize) {
        self.max_failures = n;
    }

    fn broke(&mut self, why: String) -> String {
        if self.sent > 0 {
            info!(
                "smtp-out: Error on session {} after {} message{} sent: {why}",
                self.sid,
                self.sent,
                if self.sent > 1 { "s" } else { "" }
            );
        } else {
            info!("{} mta error reason={why}", self.sid);
        }
        self.broken = Some(why.clone());
        why
    }

    async fn rset(&mut self) {
        self.conn.enter("MTA_RSET");
        if let Err(e) = self.conn.command("RSET").await {
            self.broke(e);
        }
        self.conn.enter("MTA_READY");
    }

    /// Runs one transaction; the result of each recipient in order. A refused MAIL or
    /// DATA applies to every recipient; a refused RCPT only to its own. When the
    /// connection breaks, the recipients without a result fail temporarily with the
    /// reason, and the session is no longer usable.
    pub async fn transaction(&mut self, tx: &Transaction<'_>) -> Vec<(Status, String)> {
        self.transaction_reporting(tx, &mut |_, _| {}).await
    }

    /// [`Session::transaction`], with `refused` called for each recipient the next hop
    /// refuses, as the refusal arrives (6.8 reports those at once, the others at the end).
    pub async fn transaction_reporting(
        &mut self,
        tx: &Transaction<'_>,
        refused: &mut (dyn FnMut(usize, &(Status, String)) + Send),
    ) -> Vec<(Status, String)> {
        let n = tx.rcpts.len();
        let mut results: Vec<Option<(Status, String)>> = vec![None; n];
        let finish = |results: Vec<Option<(Status, String)>>, why: &str| {
            results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| (Status::TempFail, why.to_string())))
                .collect::<Vec<_>>()
        };
        if let Some(why) = &self.broken {
            return finish(results, &why.clone());
        }
        let mut mail = format!("MAIL FROM:<{}>", tx.sender);
        if self.dsn {
            if let Some(ret) = tx.ret {
                mail.push_str(match ret {
                    crate::queue::DsnRet::Headers => " RET=HDRS",
                    crate::queue::DsnRet::Full => " RET=FULL",
                });
            }
            if !tx.envid.is_empty() {
                mail.push_str(" ENVID=");
                mail.push_str(tx.envid);
            }
        }
        self.conn.enter("MTA_MAIL");
        let r = match self.conn.command(&mail).await {
            Ok(r) => r,
            Err(e) => {
                self.lost_at_mail = true;
                let why = self.broke(e);
                return finish(results, &why);
            }
        };
        if r.code / 100 != 2 {
            self.rset().await;
            return vec![(r.status(), r.text()); n];
        }
        let msgid = tx.msgid.as_str();
        self.conn.report("tx-begin", Some(msgid));
        self.conn
            .report("tx-mail", Some(&format!("{msgid}|ok|{}", tx.sender)));
        let end = |conn: &Conn| {
            conn.report("tx-rollback", Some(msgid));
            conn.report("tx-reset", Some(msgid));
        };
        let result_word = |r: &Reply| {
            if r.code / 100 == 5 {
                "permfail"
            } else {
                "tempfail"
            }
        };
        let mut accepted = Vec::new();
        for (i, rcpt) in tx.rcpts.iter().enumerate() {
            let mut line = format!("RCPT TO:<{}>", rcpt.dest);
            if self.dsn {
                if rcpt.notify.0 != 0 {
                    line.push_str(" NOTIFY=");
                    line.push_str(&notify_text(rcpt.notify));
                }
                if !rcpt.orcpt.is_empty() {
                    line.push_str(" ORCPT=rfc822;");
                    line.push_str(rcpt.orcpt);
                }
            }
            self.conn.enter("MTA_RCPT");
            let sent = self.conn.send_command(&line, &line).await;
            self.conn
                .report("tx-envelope", Some(&format!("{msgid}|{}", rcpt.evpid)));
            let reply = match sent {
                Ok(()) => self.conn.reply().await,
                Err(e) => Err(e),
            };
            match reply {
                Ok(r) if r.code / 100 == 2 => {
                    self.failures = 0;
                    self.conn
                        .report("tx-rcpt", Some(&format!("{msgid}|ok|{}", rcpt.dest)));
                    accepted.push(i);
                }
                Ok(r) => {
                    // As 6.8: a refused recipient is reported after a rollback and reset,
                    // unless the session is given up (too many failures) or no recipient
                    // is left for the transaction (6.8 flushes it and goes to RSET first).
                    end(&self.conn);
                    let word = result_word(&r);
                    let result = (r.status(), r.text());
                    refused(i, &result);
                    results[i] = Some(result);
                    self.failures += 1;
                    let given_up = self.max_failures > 0 && self.failures == self.max_failures;
                    let none_left = i + 1 == tx.rcpts.len() && accepted.is_empty();
                    if !given_up && !none_left {
                        self.conn
                            .report("tx-rcpt", Some(&format!("{msgid}|{word}|{}", rcpt.dest)));
                    }
                    if given_up {
                        // The rest of the transaction waits for another session.
                        const TOO_MANY: &str = "Too many consecutive errors, closing connection";
                        for &j in &accepted {
                            results[j] = Some((Status::TempFail, TOO_MANY.to_string()));
                        }
                        self.broken = Some(TOO_MANY.to_string());
                        self.conn.enter("MTA_QUIT");
                        let _ = timeout(Duration::from_secs(10), self.conn.command("QUIT")).await;
                        return finish(results, TOO_MANY);
                    }
                }
                Err(e) => {
                    let why = self.broke(e);
                    return finish(results, &why);
                }
            }
        }
        if accepted.is_empty() {
            self.rset().await;
            return finish(results, "No envelope");
        }
        self.conn.enter("MTA_DATA");
        let r = match self.conn.command("DATA").await {
            Ok(r) => r,
            Err(e) => {
                let why = self.broke(e);
                return finish(results, &why);
            }
        };
        if r.code != 354 {
            self.conn
                .report("tx-data", Some(&format!("{msgid}|{}", result_word(&r))));
            end(&self.conn);
            for &i in &accepted {
                results[i] = Some((r.status(), r.text()));
            }
            self.rset().await;
            return finish(results, "");
        }
        self.conn.report("tx-data", Some(&format!("{msgid}|ok")));
        self.conn.enter("MTA_BODY");
        let payload = data_payload(tx.content);
        // The message's size as 6.8 reports it in `tx-commit`: its bytes as sent (CRLF line
        // ends, leading dots doubled), the final dot aside.
        let (body, _dot) = payload.split_at(payload.len().saturating_sub(3));
        let size = body.len();
        self.conn.trace_body(body);
        if let Err(e) = self.conn.send(body).await {
            let why = self.broke(e);
            return finish(results, &why);
        }
        self.conn
            .enter(if self.lmtp { "MTA_LMTP_EOM" } else { "MTA_EOM" });
        // The final dot goes as a command of its own: traced and reported (`protocol-client`).
        if let Err(e) = self.conn.send_command(".", ".").await {
            let why = self.broke(e);
            return finish(results, &why);
        }
        // LMTP answers once per accepted recipient, SMTP once for all.
        let replies = if self.lmtp { accepted.len() } else { 1 };
        let mut any_ok = false;
        for k in 0..replies {
            let r = match self.conn.reply().await {
                Ok(r) => r,
                Err(e) => {
                    let why = self.broke(e);
                    return finish(results, &why);
                }
            };
            let status = if r.code / 100 == 2 {
                any_ok = true;
                self.conn
                    .report("tx-commit", Some(&format!("{msgid}|{size}")));
                self.conn.report("tx-reset", Some(msgid));
                Status::Ok
            } else {
                end(&self.conn);
                r.status()
            };
            let text = r.text();
            let targets: Vec<usize> = if self.lmtp {
                vec![accepted[k]]
            } else {
                accepted.clone()
            };
            for i in targets {
                results[i] = Some((status, text.clone()));
            }
        }
        if any_ok {
            self.sent += 1;
        }
        self.conn.enter("MTA_READY");
        finish(results, "")
    }

    /// Ends the session: QUIT on a usable connection, and the `mta disconnected` line.
    pub async fn close(mut self) {
        if self.broken.is_none() {
            self.conn.enter("MTA_QUIT");
            let _ = timeout(Duration::from_secs(10), self.conn.command("QUIT")).await;
            info!(
                "{} mta disconnected reason=quit messages={}",
                self.sid, self.sent
            );
        } else {
            info!(
                "{} mta disconnected reason=error messages={}",
                self.sid, self.sent
            );
        }
        self.conn.report("link-disconnect", None);
    }
}

impl Relayer {
    /// A relayer asking `resolver` for MX and addresses, with `tls` for handshakes and
    /// `server_name` as the default HELO name.
    pub fn new(resolver: Arc<dyn Resolver>, tls: TlsStore, server_name: &str) -> Relayer {
        Relayer {
            resolver,
            tls,
            server_name: server_name.to_string(),
            mx_port: 25,
            routes: Arc::default(),
            route_events: Arc::default(),
            penalty_base: Duration::from_secs(15),
            reports: Arc::default(),
        }
    }

    /// Relay sessions of actions with a `filter` send `smtp-out` reports to that chain's
    /// programs (`chains`: the programs of each chain, by name). Set once.
    pub fn set_reports(
        &self,
        processors: Arc<crate::processor::Processors>,
        chains: std::collections::HashMap<String, Vec<String>>,
    ) {
        let _ = self.reports.set(OutReportSetup { processors, chains });
    }

    /// The `smtp-out` reports of a new session of `action`, if its filter chain has
    /// programs that take them.
    fn out_reports(
        &self,
        action: &RelayAction,
        sid: &str,
    ) -> Option<Arc<crate::processor::OutReports>> {
        let setup = self.reports.get()?;
        let chain = setup.chains.get(action.filter.as_deref()?)?;
        let id = u64::from_str_radix(sid, 16).ok()?;
        crate::processor::OutReports::open(&setup.processors, chain, id).map(Arc::new)
    }

    /// Disable failing routes for `base` × penalty² instead of 15 s × penalty² (tests).
    pub fn with_route_penalty_base(mut self, base: Duration) -> Relayer {
        self.penalty_base = base;
        self
    }

    /// The routes as `smtpctl show routes` lists them:
    /// `1. [] <-> 127.0.0.1 (localhost) ND-- nconn=0 nerror=0 penalty=1 timeout=4s`.
    pub fn routes_text(&self) -> Vec<String> {
        let Ok(mut table) = self.routes.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        table.prune(now, self.penalty_base);
        let mut lines: Vec<(u64, String)> = table
            .routes
            .iter()
            .map(|(key, r)| {
                let pending = r.disabled_until.filter(|t| *t > now);
                let timeout = pending.map_or_else(
                    || "-".to_string(),
                    |t| {
                        super::log::duration_to_text(
                            t.saturating_duration_since(now).as_secs_f64().ceil() as i64,
                        )
                    },
                );
                (
                    r.id,
                    format!(
                        "{}. {} {}{}-- nconn={} nerror={} penalty={} timeout={timeout}",
                        r.id,
                        route_text(*key, r.ptr.as_deref()),
                        if r.fresh { 'N' } else { '-' },
                        if pending.is_some() { 'D' } else { '-' },
                        r.nconn,
                        r.nerror,
                        r.penalty,
                    ),
                )
            })
            .collect();
        lines.sort();
        lines.into_iter().map(|(_, l)| l).collect()
    }

    /// How many routes (source and remote address) and remote hosts are known now, as
    /// `show routes` and `show hosts` list them (`mta.route`, `mta.host`).
    pub fn route_census(&self) -> (usize, usize) {
        let Ok(mut table) = self.routes.lock() else {
            return (0, 0);
        };
        table.prune(Instant::now(), self.penalty_base);
        let hosts: std::collections::BTreeSet<IpAddr> =
            table.routes.keys().map(|(_, addr)| *addr).collect();
        (table.routes.len(), hosts.len())
    }

    /// `smtpctl show hosts`: per remote address of the routes, `ADDR NAME refcount=N
    /// nconn=N lastconn=DELAY` (NAME is its PTR name, `-` until known; refcount the routes
    /// to it and, as 6.8 counts the relay's list of hosts too, one more; lastconn the time
    /// since a session was last opened to it, `-` if never).
    pub fn hosts_text(&self) -> Vec<String> {
        let Ok(mut table) = self.routes.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        table.prune(now, self.penalty_base);
        let mut hosts: std::collections::BTreeMap<
            IpAddr,
            (Option<String>, usize, usize, Option<Instant>),
        > = std::collections::BTreeMap::new();
        for ((_, addr), r) in &table.routes {
            let h = hosts.entry(*addr).or_insert((None, 1, 0, None));
            if h.0.is_none() {
                h.0 = r.ptr.clone();
            }
            h.1 += 1;
            h.2 += r.nconn;
            h.3 = h.3.max(r.last_conn);
        }
        hosts
            .into_iter()
            .map(|(addr, (ptr, refcount, nconn, last))| {
                let last = last.map_or_else(
                    || "-".to_string(),
                    |t| {
                        super::log::duration_to_text(
                            now.saturating_duration_since(t).as_secs() as i64
                        )
                    },
                );
                format!(
                    "{addr} {} refcount={refcount} nconn={nconn} lastconn={last}",
                    ptr.as_deref().unwrap_or("-")
                )
            })
            .collect()
    }

    /// `smtpctl resume route ID`: enables route `id` if it is disabled, with
    /// `smtp-out: Enabling route … per admin request`, its errors and penalty forgotten.
    /// `None` when there is no such route; `Some(false)` when it was not disabled.
    pub fn resume_route(&self, id: u64) -> Option<bool> {
        let Ok(mut table) = self.routes.lock() else {
            return None;
        };
        let now = Instant::now();
        let (key, r) = table.routes.iter_mut().find(|(_, r)| r.id == id)?;
        if r.disabled_until.is_none_or(|u| u <= now) {
            return Some(false);
        }
        info!(
            "smtp-out: Enabling route {} per admin request",
            route_text(*key, r.ptr.as_deref())
        );
        r.disabled_until = None;
        r.fresh = true;
        r.nerror = 0;
        r.penalty = 0;
        Some(true)
    }

    /// Waits until `delays` let a session open on the route, and counts it as opened
    /// then; `false` when the route is disabled (at first, or meanwhile). Bounded: each
    /// round waits for the latest pause, which other sessions may move.
    async fn wait_for_route(&self, key: RouteKey, delays: RouteDelays) -> bool {
        // Now and then, the routes nobody needs are forgotten.
        if let Ok(mut t) = self.routes.lock() {
            let now = Instant::now();
            if t.next_prune.is_none_or(|p| p <= now) {
                t.prune(now, self.penalty_base);
                t.next_prune = Some(now + Duration::from_secs(60));
            }
        }
        // Bounded: each round waits for the latest pause (at most 16 times; other
        // sessions may move it), or, on a route not validated yet, for the attempt under
        // way to end (at most 300 times a second or so: a greeting's time-out).
        let (mut pauses, mut validations) = (0, 0);
        for _ in 0..(16 + 300) {
            if self.route_disabled(key) {
                return false;
            }
            let ended = self.route_events.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let now = Instant::now();
            let claim = match self.routes.lock() {
                Ok(mut t) => t.claim(key, delays, now),
                Err(_) => Claim::Opened,
            };
            match claim {
                Claim::Opened => return true,
                Claim::Unvalidated if validations < 300 => {
                    validations += 1;
                    tracing::debug!(
                        "debug: mta-routing: skipping route {}: not validated yet",
                        route_text(key, None)
                    );
                    let _ = tokio::time::timeout(Duration::from_secs(1), ended).await;
                }
                Claim::Wait(until) if pauses < 16 => {
                    pauses += 1;
                    tracing::debug!(
                        "debug: mta-routing: route {} cannot be used before {}s",
                        route_text(key, None),
                        until.saturating_duration_since(now).as_secs_f64().ceil()
                    );
                    tokio::time::sleep_until(until).await;
                }
                Claim::Unvalidated | Claim::Wait(_) => break,
            }
        }
        if let Ok(mut t) = self.routes.lock() {
            t.opening(key, Instant::now());
        }
        !self.route_disabled(key)
    }

    /// Whether the route is disabled now.
    fn route_disabled(&self, key: RouteKey) -> bool {
        let now = Instant::now();
        self.routes
            .lock()
            .map(|mut t| t.get(key).disabled_until.is_some_and(|u| u > now))
            .unwrap_or(false)
    }

    /// A session on the route reached the greeting.
    fn route_ok(&self, key: RouteKey) {
        if let Ok(mut t) = self.routes.lock() {
            let r = t.get(key);
            r.fresh = false;
            r.nerror = 0;
        }
    }

    /// The name of a route's remote address, as 6.8 has getnameinfo(3) give it: its PTR
    /// name, else the address itself. Looked up once per route (at most 5 s).
    async fn ptr_name(&self, key: RouteKey) -> String {
        let known = self
            .routes
            .lock()
            .ok()
            .and_then(|mut t| t.get(key).ptr.clone());
        if let Some(p) = known {
            return p;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let name = match within(deadline, self.resolver.ptr(key.1)).await {
            Answer::Records(names) => names
                .into_iter()
                .next()
                .map(|n| n.trim_end_matches('.').to_string())
                .filter(|n| !n.is_empty()),
            _ => None,
        }
        .unwrap_or_else(|| key.1.to_string());
        if let Ok(mut t) = self.routes.lock() {
            t.get(key).ptr = Some(name.clone());
        }
        name
    }

    /// A connection on the route failed before the greeting: a route that never worked
    /// is disabled for base × penalty² (at most an hour), then enabled again with one
    /// penalty point less, as OpenSMTPD's `mta_route_disable`/`mta_route_enable` do.
    async fn route_failed(&self, key: RouteKey) {
        // Known for the route text from here on.
        self.ptr_name(key).await;
        let (delay, text) = {
            let Ok(mut t) = self.routes.lock() else {
                return;
            };
            let r = t.get(key);
            r.nerror += 1;
            if !r.fresh {
                return;
            }
            r.penalty += 1;
            let delay = (self.penalty_base * r.penalty * r.penalty).min(ROUTE_PENALTY_MAX);
            r.disabled_until = Some(Instant::now() + delay);
            (delay, route_text(key, r.ptr.as_deref()))
        };
        info!(
            "smtp-out: Disabling route {text} for {}",
            super::log::duration_to_text(delay.as_secs() as i64)
        );
        let routes = self.routes.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Ok(mut t) = routes.lock() else {
                return;
            };
            let r = t.get(key);
            if r.disabled_until.is_some_and(|u| u <= Instant::now()) {
                r.disabled_until = None;
                r.fresh = true;
                r.nerror = 0;
                r.penalty = r.penalty.saturating_sub(1);
                info!("smtp-out: Enabling route {text}");
            }
        });
    }

    /// Deliver to MX hosts on `port` instead of 25 (tests on loopback).
    pub fn with_mx_port(mut self, port: u16) -> Relayer {
        self.mx_port = port;
        self
    }

    /// One delivery attempt of `mail` through the relay action `action`, on a session of
    /// its own. `url` is the smarthost chosen from `host`/`domain` (as written), or `None`
    /// for MX routing. `auth` looks up an `auth` table entry by label; `source` is the
    /// local address to connect from (`src`).
    pub async fn deliver(
        &self,
        action: &RelayAction,
        url: Option<&str>,
        auth: &(dyn Fn(&str) -> Option<String> + Sync),
        mail: &Outgoing<'_>,
        source: Option<IpAddr>,
    ) -> RelayOutcome {
        let domain = mail.recipient.rsplit_once('@').map_or("", |(_, d)| d);
        let hops = match self.route(action, url, domain, None).await {
            Ok(h) => h,
            Err(o) => return o,
        };
        let mut session = match self
            .connect(action, &hops, auth, source, ConnectLimits::default())
            .await
        {
            Ok(s) => s,
            Err(o) => return o,
        };
        let sender = mail_from(action.mail_from.as_deref(), mail.sender);
        let tx = Transaction {
            msgid: String::new(),
            sender: &sender,
            ret: None,
            envid: "",
            rcpts: vec![Recipient {
                dest: mail.recipient,
                ..Recipient::default()
            }],
            content: mail.content,
        };
        let (status, stat) = session
            .transaction(&tx)
            .await
            .into_iter()
            .next()
            .unwrap_or((Status::TempFail, "No envelope".into()));
        let outcome = RelayOutcome {
            status,
            stat,
            relay: session.relay.clone(),
            session: session.sid.clone(),
            source: session.source_text(),
            next_hop_dsn: session.dsn,
        };
        session.close().await;
        outcome
    }

    /// Where mail for `domain` goes: the smarthost `url`, or the MX hosts of the domain.
    /// `Err` is the outcome of a route that cannot be used. `connector` names the route
    /// in the `smtp-out:` line logged when no MX host is left (6.8's text).
    pub async fn route(
        &self,
        action: &RelayAction,
        url: Option<&str>,
        domain: &str,
        connector: Option<&str>,
    ) -> Result<Vec<Hop>, RelayOutcome> {
        // `tls` makes STARTTLS mandatory on MX routes too.
        let mx_scheme = if action.tls.is_some() {
            RelayScheme::SmtpTls
        } else {
            RelayScheme::Smtp
        };
        let hop = |host: String, port, scheme, label| Hop {
            host,
            port,
            scheme,
            label,
        };
        let mut hops = Vec::new();
        match url {
            Some(text) => {
                let Some(mut u) = parse_relay_url(text) else {
                    warn!("warn: Failed to parse smarthost {text}");
                    return Err(RelayOutcome::new(
                        Status::TempFail,
                        "Cannot parse smarthost",
                        text,
                    ));
                };
                if action.tls.is_some() {
                    match u.scheme {
                        RelayScheme::Smtp => u.scheme = RelayScheme::SmtpTls,
                        RelayScheme::SmtpNoTls => {
                            return Err(RelayOutcome::new(
                                Status::TempFail,
                                "TLS required for relaying",
                                &u.host,
                            ));
                        }
                        _ => {}
                    }
                }
                if u.label.is_some() && action.auth.is_none() {
                    return Err(RelayOutcome::new(
                        Status::TempFail,
                        "No auth table for relaying",
                        &u.host,
                    ));
                }
                hops.push(hop(u.host, u.port, u.scheme, u.label));
            }
            None => {
                if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
                    let lit = lit
                        .get(..5)
                        .filter(|p| p.eq_ignore_ascii_case("ipv6:"))
                        .map_or(lit, |_| &lit[5..]);
                    if lit.parse::<IpAddr>().is_err() {
                        return Err(RelayOutcome::new(
                            Status::PermFail,
                            "Invalid domain name",
                            domain,
                        ));
                    }
                    hops.push(hop(lit.to_string(), self.mx_port, mx_scheme, None));
                } else {
                    let deadline = Instant::now() + DNS_TIMEOUT;
                    match mail_exchangers(self.resolver.as_ref(), domain, deadline).await {
                        MxRoute::Exchangers(list) => {
                            let list = match &action.backup {
                                Some(name) => {
                                    let me = name.as_deref().unwrap_or(&self.server_name);
                                    match backup_exchangers(list, me) {
                                        Some(l) => l,
                                        None => {
                                            // This host is the best MX: no route, as
                                            // 6.8's `mta_find_route` finds.
                                            if let Some(c) = connector {
                                                info!("smtp-out: No MX found for {c}");
                                            }
                                            return Err(RelayOutcome::new(
                                                Status::TempFail,
                                                "No MX found for destination",
                                                domain,
                                            ));
                                        }
                                    }
                                }
                                None => list,
                            };
                            for e in list {
                                hops.push(hop(e.host, self.mx_port, mx_scheme, None));
                            }
                        }
                        failed => {
                            let f = failed
                                .failure()
                                .map_or((false, "Temporary failure in MX lookup"), |f| {
                                    (f.permanent, f.reason)
                                });
                            info!(
                                "smtp-out: Failed to resolve MX for [relay:{domain},smtp]: {}",
                                f.1
                            );
                            let status = if f.0 {
                                Status::PermFail
                            } else {
                                Status::TempFail
                            };
                            return Err(RelayOutcome::new(status, f.1, domain));
                        }
                    }
                }
            }
        }
        Ok(hops)
    }

    /// Opens a session to the first of `hops` (and of its addresses) that answers, up to
    /// the end of EHLO, STARTTLS and AUTH. `Err` is the outcome for the mail waiting on
    /// it: the refusal of a host that answered, or a network error on all of them.
    pub async fn connect(
        &self,
        action: &RelayAction,
        hops: &[Hop],
        auth: &(dyn Fn(&str) -> Option<String> + Sync),
        source: Option<IpAddr>,
        limits: ConnectLimits<'_>,
    ) -> Result<Session, RelayOutcome> {
        let helo = action
            .helo
            .clone()
            .unwrap_or_else(|| self.server_name.clone());
        // Outcomes no host answered for name the relay, as 6.8's `mta_flush` does.
        let relay_name = limits
            .relay_name
            .unwrap_or_else(|| hops.first().map_or("-", |h| h.host.as_str()));
        let mut last = RelayOutcome::new(
            Status::TempFail,
            "Network error on destination MXs",
            relay_name,
        );
        // Why no connection was tried, when none was (6.8's connector errors).
        let (mut seen, mut other_family, mut disabled, mut tried) = (0usize, 0usize, 0usize, 0);
        let mut failed_routes: Vec<RouteKey> = Vec::new();
        for Hop {
            host,
            port,
            scheme,
            label,
        } in hops.iter().take(16)
        {
            let addrs = self.addresses(host).await;
            seen += addrs.len();
            other_family += addrs.iter().filter(|a| !limits.family.allows(**a)).count();
            for addr in addrs
                .into_iter()
                .filter(|a| limits.family.allows(*a))
                .take(8)
            {
                let sa = SocketAddr::new(addr, *port);
                let route = (source, addr);
                if !self.wait_for_route(route, limits.delays).await {
                    disabled += 1;
                    continue;
                }
                tried += 1;
                let credentials = match (label, action.auth) {
                    (Some(l), Some(_)) => match auth(l).map(|v| RelayCredentials::parse(l, &v)) {
                        Some(Ok(c)) => Some(c),
                        _ => {
                            return Err(RelayOutcome::new(
                                Status::TempFail,
                                "No credentials for relaying",
                                host,
                            ));
                        }
                    },
                    _ => None,
                };
                let slot = match limits.per_host {
                    Some((limiter, max)) => limiter.acquire(addr, max).await,
                    None => None,
                };
                let sid = session_id();
                let mut greeted = false;
                // The remote name of the log lines, known before connecting, as 6.8 asks
                // for it first.
                let ptr = self.ptr_name(route).await;
                let mut opened = self
                    .open(
                        &sid,
                        action,
                        &helo,
                        (host, &ptr),
                        (source, sa),
                        *scheme,
                        credentials.clone(),
                        &mut greeted,
                    )
                    .await;
                if *scheme == RelayScheme::Smtp
                    && matches!(&opened, Err((_, t)) if t.starts_with("!TLS"))
                {
                    info!(
                        "smtp-out: Error on session {sid}: opportunistic TLS failed, downgrading to plain"
                    );
                    opened = self
                        .open(
                            &sid,
                            action,
                            &helo,
                            (host, &ptr),
                            (source, sa),
                            RelayScheme::SmtpNoTls,
                            credentials,
                            &mut greeted,
                        )
                        .await;
                }
                if greeted {
                    self.route_ok(route);
                } else if opened.is_err() {
                    self.route_failed(route).await;
                }
                // From connecting to connected (or not) at once: the route is never
                // without a hold in between.
                if let Ok(mut t) = self.routes.lock() {
                    let r = t.get(route);
                    r.connecting = r.connecting.saturating_sub(1);
                    if opened.is_ok() {
                        r.nconn += 1;
                    } else {
                        r.last_disc = Some(Instant::now());
                    }
                }
                self.route_events.notify_waiters();
                let with_sid = |mut o: RelayOutcome| {
                    o.session = sid.clone();
                    o
                };
                match opened {
                    Ok((conn, caps, local)) => {
                        return Ok(Session {
                            route: Some((self.routes.clone(), route)),
                            sid: sid.clone(),
                            host: host.clone(),
                            conn,
                            dsn: caps.dsn,
                            lmtp: *scheme == RelayScheme::Lmtp,
                            sent: 0,
                            broken: None,
                            lost_at_mail: false,
                            failures: 0,
                            max_failures: 25,
                            local,
                            relay: host_text(addr, &ptr),
                            _slot: slot,
                        });
                    }
                    // Connection-level trouble: try the next address or MX.
                    Err((Status::TempFail, text)) if text.starts_with('!') => {
                        // 6.8 reports every failed route this way, smarthosts too, once
                        // it gives up on the relay: no session, the relay's name.
                        failed_routes.push(route);
                        last = RelayOutcome::new(
                            Status::TempFail,
                            "Network error on destination MXs",
                            relay_name,
                        );
                    }
                    Err((status, text)) => {
                        return Err(with_sid(RelayOutcome::new(
                            status,
                            text,
                            &host_text(addr, &ptr),
                        )));
                    }
                }
            }
        }
        // How 6.8 names the connector in its `smtp-out:` lines.
        let relay = limits.connector.map_or_else(
            || {
                hops.first().map_or_else(String::new, |h| {
                    format!("[relay:{},{}]", h.host, h.scheme.url_text())
                })
            },
            str::to_string,
        );
        if !failed_routes.is_empty() && failed_routes.iter().all(|r| self.route_disabled(*r)) {
            // 6.8 looks for another route at once, finds those it just disabled, and says so.
            info!("smtp-out: No valid route for {relay}");
        }
        if tried == 0 {
            // Nothing to connect to: say why, as 6.8's `mta_find_route` does.
            let why = if seen == 0 {
                info!("smtp-out: No MX found for {relay}");
                "No MX found for destination"
            } else if other_family == seen {
                info!("smtp-out: Address family mismatch on {relay}");
                "Address family mismatch on destination MXs"
            } else if disabled > 0 {
                info!("smtp-out: No valid route for {relay}");
                "Network error on destination MXs"
            } else {
                "No valid route to destination"
            };
            return Err(RelayOutcome::new(Status::TempFail, why, relay_name));
        }
        Err(last)
    }

    async fn addresses(&self, host: &str) -> Vec<IpAddr> {
        if let Ok(a) = host.parse::<IpAddr>() {
            return vec![a];
        }
        let deadline = Instant::now() + DNS_TIMEOUT;
        match within(deadline, self.resolver.a_aaaa(host, AddressFamily::Any)).await {
            Answer::Records(r) => r,
            _ => Vec::new(),
        }
    }

    /// Opens one connection to `addr` and runs the dialogue up to the first transaction.
    /// `Err` texts starting with `!` are connection-level failures after which another
    /// address may be tried; the connection is then closed with its log lines.
    #[allow(clippy::too_many_arguments)]
    async fn open(
        &self,
        sid: &str,
        action: &RelayAction,
        helo: &str,
        (host, ptr): (&str, &str),
        (source, addr): (Option<IpAddr>, SocketAddr),
        scheme: RelayScheme,
        credentials: Option<RelayCredentials>,
        greeted: &mut bool,
    ) -> Result<(Conn, Capabilities, Option<SocketAddr>), Failure> {
        info!(
            "{sid} mta connecting address={}://{addr} host={ptr}",
            scheme.text()
        );
        let tcp = match timeout(CONNECT_TIMEOUT, connect_from(source, addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let e = crate::log::strerror(&e);
                info!("{sid} mta error reason=IO Error: {e}");
                return Err(temp(format!("!IO Error: {e}")));
            }
            Err(_) => {
                info!("{sid} mta error reason=Connection timeout");
                return Err(temp("!Connection timeout"));
            }
        };
        let local = tcp.local_addr().ok();
        info!("{sid} mta connected");
        // Certificates are checked when TLS is required (`tls`, `smtp+tls://`, `smtps://`)
        // unless `no-verify`; opportunistic STARTTLS takes any certificate.
        let verify =
            action.tls != Some(true) && matches!(scheme, RelayScheme::SmtpTls | RelayScheme::Smtps);
        let mut conn = Conn::new(Box::new(tcp), sid, "MTA_INIT");
        conn.reports = self.out_reports(action, sid);
        if conn.reports.is_some() {
            // `link-connect`: the remote name (its PTR when known), the FCrDNS result 6.8
            // always reports for relays, the local and the remote address.
            let src = local.map(|l| l.to_string()).unwrap_or_default();
            conn.report("link-connect", Some(&format!("{ptr}|pass|{src}|{addr}")));
        }
        conn.enter("MTA_INIT");
        let mut secure = false;
        let reports = conn.reports.clone();
        if scheme == RelayScheme::Smtps {
            conn = match self.handshake(sid, action, helo, host, conn, verify).await {
                Ok(c) => c,
                Err(f) => {
                    if let Some(reason) = f.1.strip_prefix('!') {
                        info!("{sid} mta error reason={reason}");
                    }
                    info!("{sid} mta disconnected reason=error messages=0");
                    if let Some(r) = &reports {
                        r.report("link-disconnect", None);
                    }
                    return Err(f);
                }
            };
            secure = true;
        }
        let result = self
            .dialogue(
                sid,
                action,
                helo,
                host,
                &mut conn,
                scheme,
                verify,
                secure,
                credentials,
                greeted,
            )
            .await;
        match result {
            Ok(caps) => Ok((conn, caps, local)),
            Err((status, why)) => {
                if let Some(reason) = why.strip_prefix('!') {
                    info!("{sid} mta error reason={reason}");
                }
                let _ = timeout(Duration::from_secs(5), conn.command("QUIT")).await;
                info!(
                    "{sid} mta disconnected reason={} messages=0",
                    if why.starts_with('!') {
                        "error"
                    } else {
                        "quit"
                    }
                );
                conn.report("link-disconnect", None);
                Err((status, why))
            }
        }
    }

    async fn handshake(
        &self,
        sid: &str,
        action: &RelayAction,
        helo: &str,
        host: &str,
        conn: Conn,
        verify: bool,
    ) -> Result<Conn, Failure> {
        let state = conn.state;
        let reports = conn.reports.clone();
        let tls = ClientTls::for_relay(&self.tls, action, helo, verify)
            .map_err(|e| temp(format!("!TLS setup: {e}")))?;
        let up = match timeout(TLS_TIMEOUT, tls.connect(host, conn.io)).await {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => return Err(temp(format!("!TLS handshake: {e}"))),
            Err(_) => return Err(temp("!TLS handshake timeout")),
        };
        info!("{sid} mta tls ciphers={}", up.facts.ciphers());
        if let Some(r) = &reports {
            r.report("link-tls", Some(&up.facts.ciphers()));
        }
        if let Some(why) = up.refusal() {
            info!("{sid} mta server-cert-check result=\"failure\"");
            return Err(temp(format!("!{why}")));
        }
        let mut conn = Conn::new(Box::new(up.stream), sid, state);
        conn.reports = reports;
        Ok(conn)
    }

    /// Greeting, EHLO (LHLO, HELO), STARTTLS and AUTH; the capabilities of the last EHLO.
    #[allow(clippy::too_many_arguments)]
    async fn dialogue(
        &self,
        sid: &str,
        action: &RelayAction,
        helo: &str,
        host: &str,
        conn: &mut Conn,
        scheme: RelayScheme,
        verify: bool,
        mut secure: bool,
        credentials: Option<RelayCredentials>,
        greeted: &mut bool,
    ) -> Result<Capabilities, Failure> {
        let net = |e: String| temp(format!("!{e}"));
        conn.enter("MTA_BANNER");
        let greeting = conn.reply().await.map_err(net)?;
        *greeted = true;
        if greeting.code != 220 {
            return Err((greeting.status(), greeting.text()));
        }
        if conn.reports.is_some() {
            // `link-greeting`: the name the banner gives, when it is a domain.
            let name = greeting
                .lines
                .first()
                .and_then(|l| l.get(4..))
                .and_then(|r| r.split(' ').next())
                .filter(|n| crate::smtp::address::valid_domainpart(n))
                .unwrap_or("");
            conn.report("link-greeting", Some(name));
        }
        let (hello, hello_state) = if scheme == RelayScheme::Lmtp {
            ("LHLO", "MTA_LHLO")
        } else {
            ("EHLO", "MTA_EHLO")
        };
        conn.enter(hello_state);
        let mut ehlo = conn.identify(hello, helo).await.map_err(net)?;
        if ehlo.code != 250 {
            conn.enter("MTA_HELO");
            ehlo = conn.identify("HELO", helo).await.map_err(net)?;
            if ehlo.code != 250 {
                return Err((ehlo.status(), ehlo.text()));
            }
        }
        let mut caps = capabilities(&ehlo);
        let want_tls = !secure && scheme != RelayScheme::SmtpNoTls;
        let must_tls = matches!(scheme, RelayScheme::SmtpTls);
        if scheme != RelayScheme::SmtpNoTls && scheme != RelayScheme::Lmtp {
            conn.enter("MTA_STARTTLS");
        }
        if want_tls && caps.starttls {
            let r = conn.command("STARTTLS").await.map_err(net)?;
            if r.code != 220 {
                if must_tls {
                    return Err(temp(format!("!STARTTLS refused: {}", r.text())));
                }
            } else {
                let plain = std::mem::replace(
                    conn,
                    Conn::new(Box::new(tokio::io::empty()), sid, conn.state),
                );
                *conn = self
                    .handshake(sid, action, helo, host, plain, verify)
                    .await?;
                secure = true;
                conn.enter(hello_state);
                let again = conn.identify(hello, helo).await.map_err(net)?;
                if again.code != 250 {
                    return Err((again.status(), again.text()));
                }
                caps = capabilities(&again);
                conn.enter("MTA_STARTTLS");
            }
        } else if must_tls {
            return Err(temp("!TLS required but not supported by remote host"));
        }
        if scheme != RelayScheme::SmtpNoTls && scheme != RelayScheme::Lmtp {
            conn.enter("MTA_AUTH");
        }
        if let Some(c) = credentials {
            if !secure {
                return Err(temp("Refuse to AUTH over unsecure channel"));
            }
            let auth_result = |conn: &Conn, ok: bool| {
                let result = if ok { "pass" } else { "fail" };
                conn.report("link-auth", Some(&format!("{}|{result}", c.username)));
            };
            if caps.auth_plain {
                conn.enter("MTA_AUTH_PLAIN");
                let r = conn
                    .command(&format!("AUTH PLAIN {}", c.plain_response()))
                    .await
                    .map_err(net)?;
                auth_result(conn, r.code == 235);
                if r.code != 235 {
                    return Err((r.status(), r.text()));
                }
            } else if caps.auth_login {
                conn.enter("MTA_AUTH_LOGIN");
                let r = conn.command("AUTH LOGIN").await.map_err(net)?;
                if r.code != 334 {
                    auth_result(conn, false);
                    return Err((r.status(), r.text()));
                }
                conn.enter("MTA_AUTH_LOGIN_USER");
                let r = conn
                    .command_shown(&c.login_username(), "********")
                    .await
                    .map_err(net)?;
                if r.code != 334 {
                    auth_result(conn, false);
                    return Err((r.status(), r.text()));
                }
                conn.enter("MTA_AUTH_LOGIN_PASS");
                let r = conn
                    .command_shown(&c.login_password(), "********")
                    .await
                    .map_err(net)?;
                auth_result(conn, r.code == 235);
                if r.code != 235 {
                    return Err((r.status(), r.text()));
                }
            } else {
                return Err(temp("AUTH not advertised"));
            }
        }
        conn.enter("MTA_READY");
        Ok(caps)
    }
}

/// Opens a TCP connection to `addr`, from `source` when given.
async fn connect_from(source: Option<IpAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(src) = source else {
        return TcpStream::connect(addr).await;
    };
    if src.is_ipv4() != addr.is_ipv4() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            "source and destination address families differ",
        ));
    }
    let socket = if src.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(src, 0))?;
    socket.connect(addr).await
}

/// `backup [mx NAME]`: only the exchangers preferred over NAME. `None` when NAME is the
/// most preferred (nothing better to hand the mail to); all of them when NAME is absent.
pub fn backup_exchangers(list: Vec<MailExchanger>, me: &str) -> Option<Vec<MailExchanger>> {
    let Some(mine) = list
        .iter()
        .find(|e| e.host.eq_ignore_ascii_case(me))
        .map(|e| e.preference)
    else {
        return Some(list);
    };
    let better: Vec<MailExchanger> = list.into_iter().filter(|e| e.preference < mine).collect();
    (!better.is_empty()).then_some(better)
}

/// The envelope sender after `mail-from`: an empty user or domain part keeps the original
/// part; the null sender is never rewritten.
pub fn mail_from(over: Option<&str>, sender: &str) -> String {
    let Some(over) = over else {
        return sender.to_string();
    };
    if sender.is_empty() {
        return String::new();
    }
    let over = over.trim_start_matches('<').trim_end_matches('>');
    let (ou, od) = over.rsplit_once('@').unwrap_or((over, ""));
    let (su, sd) = sender.rsplit_once('@').unwrap_or((sender, ""));
    let user = if ou.is_empty() { su } else { ou };
    let domain = if od.is_empty() { sd } else { od };
    if domain.is_empty() {
        user.to_string()
    } else {
        format!("{user}@{domain}")
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn body_is_queued_in_64k_rounds_as_6_8_does() {
        // One round, then the end of the file.
        assert_eq!(body_rounds(b"a\r\n..b\r\n"), vec![8]);
        // Three 30,002-byte lines: the first round stops once 64 KiB wait (after the
        // third); the next finds the end of the file at once.
        let line = [vec![b'x'; 30000], b"\r\n".to_vec()].concat();
        let body = line.repeat(3);
        assert_eq!(body_rounds(&body), vec![90006, 0]);
        // Five: 90,006, then the two left.
        assert_eq!(body_rounds(&line.repeat(5)), vec![90006, 60004]);
        assert_eq!(body_rounds(b""), vec![0]);
    }
    #[test]
    fn routes_are_written_as_opensmtpd_writes_them() {
        let v4: IpAddr = "192.0.2.25".parse().unwrap();
        let v6: IpAddr = "2001:db8::25".parse().unwrap();
        let src6: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(
            super::route_text((None, v4), Some("mx.example")),
            "[] <-> 192.0.2.25 (mx.example)"
        );
        assert_eq!(
            super::route_text((Some(src6), v6), None),
            "[2001:db8::7] <-> [2001:db8::25]"
        );
        assert_eq!(
            super::route_text((None, v6), Some("mx6.example")),
            "[] <-> [2001:db8::25] (mx6.example)"
        );
    }

    use super::*;

    #[test]
    fn urls() {
        let u = parse_relay_url("smtp+tls://lbl@mail.example:587").unwrap();
        assert_eq!(u.scheme, RelayScheme::SmtpTls);
        assert_eq!(u.label.as_deref(), Some("lbl"));
        assert_eq!((u.host.as_str(), u.port), ("mail.example", 587));
        assert_eq!(parse_relay_url("smtps://[::1]").unwrap().port, 465);
        assert_eq!(parse_relay_url("127.0.0.1").unwrap().port, 25);
        assert!(parse_relay_url("lmtp://host").is_none());
        assert!(parse_relay_url("smtp://lbl@host").is_none());
        assert!(parse_relay_url("gopher://host").is_none());
        assert!(parse_relay_url("smtp://host:x").is_none());
    }

    #[test]
    fn dot_stuffing_and_crlf() {
        assert_eq!(
            data_payload(b"a\n.b\n..c\r\nd"),
            b"a\r\n..b\r\n...c\r\nd\r\n.\r\n".to_vec()
        );
        assert_eq!(data_payload(b""), b".\r\n".to_vec());
    }

    #[test]
    fn backup_keeps_only_better_exchangers() {
        let mx = |p, h: &str| MailExchanger {
            preference: p,
            host: h.into(),
            implicit: false,
        };
        let list = vec![mx(10, "a.test"), mx(20, "me.test"), mx(30, "c.test")];
        assert_eq!(
            backup_exchangers(list.clone(), "ME.test"),
            Some(vec![mx(10, "a.test")])
        );
        assert_eq!(backup_exchangers(list.clone(), "a.test"), None);
        assert_eq!(backup_exchangers(list.clone(), "x.test"), Some(list));
    }

    #[test]
    fn mail_from_override() {
        assert_eq!(mail_from(Some("@b.test"), "x@a.test"), "x@b.test");
        assert_eq!(mail_from(Some("y@"), "x@a.test"), "y@a.test");
        assert_eq!(mail_from(Some("y@b.test"), ""), "");
        assert_eq!(mail_from(None, "x@a.test"), "x@a.test");
    }
}
