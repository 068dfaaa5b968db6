//! The SMTP server: accept loops (TCP listeners and the local enqueue socket), the session
//! cap, and the thin task that drives one [`Session`] over a connection.
//!
//! The driver is where the session's questions meet the rest of smtpd: filters and `match`
//! rules (the rule graph), the queue (message files, envelopes, the durable commit before
//! `250`), DNS (the client's reverse name, looked up before the banner but never for longer
//! than a short bound) and the log.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, trace, warn};

use super::action::{
    Action, Answer, AuthVerdict, CommitVerdict, Event, FilterPhase, FilterVerdict, MessageStamp,
    OpenVerdict, Question, RecipientVerdict, SenderVerdict,
};
use super::address::Mailaddr;
use super::ids::{EnvelopeId, MsgId, SessionId};
use super::params::{
    AuthMode, ClientAddress, ClientCert, ClientInfo, Fcrdns, Limits, SessionParams, TlsInfo,
    TlsMode,
};
use super::received::time_to_text;
use super::reply::Reply;
use super::session::Session;
use crate::config::model::{self as cfg, Phase};
use crate::dns::{self, Resolver};
use crate::expand;
use crate::log::{smtp_in, vis};
use crate::processor::{ProcSession, Processors};
use crate::queue::{self, Spool};
use crate::rules::RuleGraph;
use crate::rules::filter::{
    ChainWalk, FilterFacts, FilterOutcome, FilterSessionTrace, ProgramDecision, WalkStep,
};
use crate::rules::route::Facts;

/// A connection: plain TCP, or TLS over it after STARTTLS or on an SMTPS listener.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
type Stream = Box<dyn Io>;

/// SMTP counters since start (`smtpctl show stats`, `smtpctl monitor`).
#[derive(Debug, Default)]
pub struct SmtpStats {
    /// Sessions open now.
    pub current: std::sync::atomic::AtomicU64,
    /// Sessions served, by kind of client.
    pub inet4: std::sync::atomic::AtomicU64,
    pub inet6: std::sync::atomic::AtomicU64,
    pub local: std::sync::atomic::AtomicU64,
}

/// The process's SMTP counters.
pub static SMTP_STATS: SmtpStats = SmtpStats {
    current: std::sync::atomic::AtomicU64::new(0),
    inet4: std::sync::atomic::AtomicU64::new(0),
    inet6: std::sync::atomic::AtomicU64::new(0),
    local: std::sync::atomic::AtomicU64::new(0),
};

/// Counts a session from its start to its end (the guard's drop).
struct SessionCount;

impl SessionCount {
    fn start(kind: &std::sync::atomic::AtomicU64) -> SessionCount {
        use std::sync::atomic::Ordering::Relaxed;
        kind.fetch_add(1, Relaxed);
        SMTP_STATS.current.fetch_add(1, Relaxed);
        SessionCount
    }
}

impl Drop for SessionCount {
    fn drop(&mut self) {
        SMTP_STATS
            .current
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Everything sessions share.
pub struct Server {
    pub graph: Arc<RuleGraph>,
    pub spool: Arc<Spool>,
    pub resolver: Arc<dyn Resolver>,
    /// Concurrent sessions allowed; a client beyond gets a 421 instead of silence.
    pub sessions: Arc<Semaphore>,
    /// Longest wait for the client's reverse name before the banner.
    pub rdns_bound: Duration,
    /// Idle time after which a session is closed (OpenSMTPD: 300 s).
    pub timeout: Duration,
    /// Where committed envelopes go to be delivered.
    pub delivery: Option<Arc<crate::deliver::runner::Runner>>,
    /// TLS of each listener (by index), when it has `tls`, `tls-require` or `smtps`.
    pub tls: Vec<Option<Arc<crate::tls::ServerTls>>>,
    /// The running filter programs (`proc`, `proc-exec`).
    pub processors: Arc<Processors>,
}

/// Serve one listening socket until the task is dropped.
pub async fn accept_loop(server: Arc<Server>, listener: TcpListener, index: usize) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!("warn: smtp: accept: {}", crate::log::strerror(&e));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        match server.sessions.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    serve(server, stream, peer, index).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(refuse_over_capacity(server, stream, peer.ip().to_string()));
            }
        }
    }
}

/// Serve the local enqueue socket (`listen on socket`) until the task is dropped.
pub async fn accept_local_loop(
    server: Arc<Server>,
    listener: tokio::net::UnixListener,
    index: usize,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("warn: smtp: accept: {}", crate::log::strerror(&e));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let server = server.clone();
        match server.sessions.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    serve_local(server, stream, index).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(refuse_over_capacity(server, stream, "local".to_string()));
            }
        }
    }
}

/// Drive one local enqueue session (sendmail): already authenticated with an empty user
/// name, client `local` whose name is the server's own, with the socket listener's own
/// `filter`, `tag`, `mask-src` and `received-auth`.
pub async fn serve_local(server: Arc<Server>, stream: tokio::net::UnixStream, listener: usize) {
    let _count = SessionCount::start(&SMTP_STATS.local);
    let sid = SessionId(rand_u64());
    let l = server.graph.config.listeners[listener].clone();
    trace_connected(&server, sid, listener, &l, 0);
    let loopback = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let mut client = ClientInfo::unknown(ClientAddress::Local);
    client.rdns = l
        .hostname
        .clone()
        .unwrap_or_else(|| server.graph.config.hostname.clone());
    client.fcrdns = Fcrdns::Pass;
    smtp_in::connected(sid, client.address.text(), &client.rdns);
    let _filter_trace = l.filter.is_some().then(|| FilterSessionTrace::begin(sid));
    let mut params = session_params(&server, sid, &l, client.clone(), loopback);
    params.local_enqueue = true;
    params.local_listener = true;
    let procs = open_procs(&server, &l, sid);
    params.data_filtered = procs.as_ref().is_some_and(ProcSession::filters_data_lines);
    let mut session = Session::new(params);
    let mut conn = Conn::new(server.clone(), sid, listener, client, loopback, None);
    conn.procs = procs;
    conn.report_connect(LOCAL_LINK, LOCAL_LINK);
    let mut stream: Stream = Box::new(stream);
    let reason = drive(&mut conn, &mut session, &mut stream).await;
    if let Some(w) = conn.writer.take() {
        let _ = w.abort();
    }
    smtp_in::disconnected(sid, &reason);
    conn.report("link-disconnect", None);
}

/// Both ends of a local enqueue session, as filter reports name them.
const LOCAL_LINK: &str = "unix:/var/run/smtpd.sock";

/// The session's link to the filter programs of its listener's chain, if it has any.
fn open_procs(server: &Server, l: &cfg::Listener, sid: SessionId) -> Option<ProcSession> {
    let chain = server.graph.listener_chain(l)?;
    ProcSession::open(&server.processors, &chain.procs, sid.0)
}

/// A client beyond the session cap gets a 421 instead of silence, then the connection closes.
async fn refuse_over_capacity<S: tokio::io::AsyncWrite + Unpin>(
    server: Arc<Server>,
    mut stream: S,
    from: String,
) {
    let name = &server.graph.config.hostname;
    let line = format!("421 4.3.2 {name} Too many connections, try again later\r\n");
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(line.as_bytes())).await;
    info!("smtp: refused connection from {from} (session limit reached)");
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The local time zone's offset (seconds east of UTC) and abbreviation at `t`.
pub(crate) fn local_offset(t: i64) -> (i32, String) {
    let tt: libc::time_t = t as libc::time_t;
    // SAFETY: `tm` is a plain C struct for which all-zero bytes are a valid value;
    // localtime_r only writes into the struct we pass and reads `tt`, both valid for the
    // duration of the call, and it is the thread-safe variant.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: see above; the pointers are to live locals.
    let ok = unsafe { !libc::localtime_r(&tt, &mut tm).is_null() };
    if !ok {
        return (0, "UTC".into());
    }
    let zone = if tm.tm_zone.is_null() {
        "UTC".to_string()
    } else {
        // SAFETY: tm_zone points to a NUL-terminated string owned by the C library that
        // stays valid at least until the next call to tzset; we copy it at once.
        unsafe { std::ffi::CStr::from_ptr(tm.tm_zone) }
            .to_string_lossy()
            .into_owned()
    };
    (tm.tm_gmtoff as i32, zone)
}

fn addr_text(a: &Option<Mailaddr>) -> String {
    a.as_ref().map(|m| m.to_string()).unwrap_or_default()
}

struct Conn {
    server: Arc<Server>,
    sid: SessionId,
    listener: usize,
    client: ClientInfo,
    client_ip: IpAddr,
    /// Message being received, from MAIL FROM to the end of DATA.
    writer: Option<queue::MessageWriter>,
    /// Envelopes of the accepted recipients, written at commit.
    envelopes: Vec<queue::Envelope>,
    /// A write to the message file failed: the commit must refuse.
    write_failed: bool,
    /// `mda delivery` lines of recipients delivered before the commit, logged after the
    /// message's `smtp message` line.
    delivered_log: Vec<String>,
    helo: String,
    auth_user: Option<String>,
    mail_from: String,
    /// The reverse lookup still running after the banner, if any.
    pending_rdns: Option<PendingRdns>,
    /// The filter programs of the listener's chain.
    procs: Option<ProcSession>,
    /// Reports that follow the reply being prepared (`tx-mail` after the `250`, …).
    after_reply: Vec<(&'static str, String)>,
    /// `link-greeting` was reported.
    greeted: bool,
    /// The transaction's queue message, for `tx-*` reports.
    msgid: Option<MsgId>,
}

impl Conn {
    /// A connection before its first command: no message, no recipients, no identity.
    fn new(
        server: Arc<Server>,
        sid: SessionId,
        listener: usize,
        client: ClientInfo,
        client_ip: IpAddr,
        pending_rdns: Option<PendingRdns>,
    ) -> Conn {
        Conn {
            server,
            sid,
            listener,
            client,
            client_ip,
            writer: None,
            envelopes: Vec::new(),
            write_failed: false,
            delivered_log: Vec::new(),
            helo: String::new(),
            auth_user: None,
            mail_from: String::new(),
            pending_rdns,
            procs: None,
            after_reply: Vec::new(),
            greeted: false,
            msgid: None,
        }
    }

    /// Sends a report event to the chain's programs that subscribed to it.
    fn report(&self, event: &str, params: Option<&str>) {
        if let Some(p) = &self.procs {
            p.report(event, params);
        }
    }

    /// Holds a report until the reply being prepared was reported.
    fn report_after_reply(&mut self, event: &'static str, params: String) {
        if self.procs.is_some() {
            self.after_reply.push((event, params));
        }
    }

    /// `protocol-server` for each reply line, `link-greeting` after the banner, then the
    /// reports that wait for the reply.
    fn report_sent(&mut self, bytes: &[u8]) {
        if self.procs.is_none() {
            return;
        }
        for line in String::from_utf8_lossy(bytes).split("\r\n") {
            if line.is_empty() {
                continue;
            }
            self.report("protocol-server", Some(line));
            if !self.greeted && line.starts_with("220 ") {
                self.greeted = true;
                let name = self.server.graph.config.listeners[self.listener]
                    .hostname
                    .clone()
                    .unwrap_or_else(|| self.server.graph.config.hostname.clone());
                self.report("link-greeting", Some(&name));
            }
        }
        self.flush_reports();
    }

    fn flush_reports(&mut self) {
        for (event, params) in std::mem::take(&mut self.after_reply) {
            self.report(event, Some(&params));
        }
    }

    /// `link-connect`: `RDNS|FCRDNS|SRC|DEST`.
    fn report_connect(&self, src: &str, dest: &str) {
        let fcrdns = match self.client.fcrdns {
            Fcrdns::Pass => "pass",
            Fcrdns::Fail => "fail",
            Fcrdns::Error => "error",
        };
        self.report(
            "link-connect",
            Some(&format!("{}|{fcrdns}|{src}|{dest}", self.client.rdns)),
        );
    }

    /// `tx-rollback` and `tx-reset` of the open transaction, if any.
    fn report_rollback(&mut self) {
        if let Some(m) = self.msgid.take() {
            self.report("tx-rollback", Some(&m.to_string()));
            self.report("tx-reset", Some(&m.to_string()));
        }
    }

    fn listener(&self) -> &cfg::Listener {
        &self.server.graph.config.listeners[self.listener]
    }

    /// `max-message-size`, the bound of what data-line filters may give back (twice it).
    fn listener_max_size(&self) -> usize {
        usize::try_from(self.server.graph.config.smtp.max_message_size).unwrap_or(usize::MAX)
    }

    /// Logs the `mda delivery` lines of the deliveries made before the commit.
    fn log_delivered(&mut self) {
        for line in std::mem::take(&mut self.delivered_log) {
            info!("{line}");
        }
    }

    fn log_event(&mut self, e: &Event) {
        let sid = self.sid;
        match e {
            Event::ClientLine(line) => self.report("protocol-client", Some(line)),
            Event::Identified { verb, helo } => {
                let verb = match verb {
                    super::reply::HeloVerb::Helo => "HELO",
                    super::reply::HeloVerb::Ehlo => "EHLO",
                };
                self.report("link-identify", Some(&format!("{verb}|{helo}")));
            }
            Event::FailedCommand { command, result } => {
                crate::log::smtp_in::failed_command(sid, vis(command), result);
            }
            Event::BadInput { result } => info!("{sid} smtp bad-input result=\"{result}\""),
            Event::Trace(line) => trace!(target: "smtp", "{line}"),
            Event::Authentication { user, result } => {
                let outcome = match result {
                    super::action::AuthResult::Ok => "pass",
                    super::action::AuthResult::PermFail => "fail",
                    super::action::AuthResult::TempFail => "error",
                };
                let shown = String::from_utf8_lossy(user).into_owned();
                self.report("link-auth", Some(&format!("{shown}|{outcome}")));
                info!(
                    "{sid} smtp authentication user={} result={}",
                    vis(user),
                    result.as_str()
                );
            }
            Event::MessageAccepted {
                msgid,
                size,
                esmtp,
                sender,
                recipients,
            } => {
                smtp_in::message(sid, msgid, *size as u64, recipients.len(), *esmtp);
                for (evpid, to) in recipients {
                    smtp_in::envelope(sid, evpid, addr_text(sender), to);
                }
                self.log_delivered();
            }
        }
    }

    /// Runs the listener's filter chain for one phase, as OpenSMTPD's lookup process does:
    /// the rule graph walks it ([`ChainWalk`]) and this asks the filter programs it names.
    /// Traces every step under `-T filters` and reports the decision (`filter-response`)
    /// to the programs.
    async fn filter(&mut self, phase: FilterPhase, param: &str, query: &str) -> FilterVerdict {
        let graph = self.server.graph.clone();
        let Some(chain) = graph.listener_chain(self.listener()) else {
            return FilterVerdict::Proceed;
        };
        let builtin = match phase {
            FilterPhase::Connect => Some(Phase::Connect),
            FilterPhase::Helo => Some(Phase::Helo),
            FilterPhase::Ehlo => Some(Phase::Ehlo),
            FilterPhase::Auth => Some(Phase::Auth),
            FilterPhase::MailFrom => Some(Phase::MailFrom),
            FilterPhase::RcptTo => Some(Phase::RcptTo),
            FilterPhase::Data => Some(Phase::Data),
            FilterPhase::Commit => Some(Phase::Commit),
            FilterPhase::StartTls | FilterPhase::Rset | FilterPhase::Quit | FilterPhase::Noop => {
                None
            }
        };
        // The filter session keeps the HELO name and the sender as given at their phases.
        match phase {
            FilterPhase::Helo | FilterPhase::Ehlo => self.helo = query.to_string(),
            FilterPhase::MailFrom => self.mail_from = query.to_string(),
            _ => {}
        }
        let source = self.client.address.text();
        let rdns = self.client.rdns.clone();
        let helo = self.helo.clone();
        let auth_user = self.auth_user.clone();
        let mail_from = self.mail_from.clone();
        let sender_known = matches!(
            phase,
            FilterPhase::MailFrom | FilterPhase::RcptTo | FilterPhase::Data | FilterPhase::Commit
        );
        let facts = FilterFacts {
            source: &source,
            rdns: (rdns != dns::UNKNOWN_HOST).then_some(rdns.as_str()),
            fcrdns: self.client.fcrdns == Fcrdns::Pass,
            helo: (!helo.is_empty()).then_some(helo.as_str()),
            auth_user: auth_user.as_deref(),
            mail_from: sender_known.then_some(mail_from.as_str()),
        };
        let name = phase.as_str();
        // The parameter programs get: `RDNS|ADDRESS` at connect, the address at mail-from
        // and rcpt-to, the command's argument otherwise.
        let params = match phase {
            FilterPhase::Connect => format!("{rdns}|{source}"),
            FilterPhase::MailFrom | FilterPhase::RcptTo => query.to_string(),
            _ => param.to_string(),
        };
        let mut walk = ChainWalk::new(chain, name, builtin, query);
        // Bounded: every step moves the walk forward by one member at least.
        let run = loop {
            let procs = self.procs.as_ref();
            let hooks = |proc: &str, phase: &str| procs.is_some_and(|p| p.hooks(proc, phase));
            let (filter, proc) = match walk.step(&graph, &facts, &hooks) {
                WalkStep::Done(run) => break run,
                WalkStep::Ask { filter, proc } => (filter, proc),
            };
            let timeout = self.server.timeout;
            let decision = match self.procs.as_mut() {
                Some(ps) => ps.query(&proc, name, &params, timeout).await,
                None => None,
            };
            match decision {
                Some(d) => {
                    if let ProgramDecision::Report(m) = &d {
                        self.report("filter-report", Some(&format!("proc|{filter}|{m}")));
                    }
                    walk.answer(&params, d);
                }
                None => {
                    warn!("warn: smtp: {}: filter {filter} did not answer", self.sid);
                    walk.no_answer(Reply::temporary_failure().to_string());
                }
            }
        };
        for note in &run.notes {
            trace!(target: "filters", "{} {note}", self.sid);
        }
        // A builtin `report` goes to the programs as `filter-report` (a program's own
        // report was sent when it answered).
        for (f, m) in walk.builtin_reports() {
            self.report("filter-report", Some(&format!("builtin|{f}|{m}")));
        }
        let outcome = run.outcome;
        let verdict = match outcome {
            FilterOutcome::Proceed => FilterVerdict::Proceed,
            FilterOutcome::Junk => FilterVerdict::Junk,
            FilterOutcome::Reject(m) => FilterVerdict::Reject(m),
            FilterOutcome::Disconnect(m) => FilterVerdict::Disconnect(m),
            FilterOutcome::Rewrite(m) => FilterVerdict::Rewrite(m),
        };
        if self.procs.is_some() {
            let shown = if phase == FilterPhase::Connect {
                "connected"
            } else {
                name
            };
            let response = match &verdict {
                FilterVerdict::Proceed => "proceed".to_string(),
                FilterVerdict::Junk => "junk".to_string(),
                FilterVerdict::Reject(m) => format!("reject|{m}"),
                FilterVerdict::Disconnect(m) => format!("disconnect|{m}"),
                FilterVerdict::Rewrite(m) => format!("rewrite|{m}"),
            };
            self.report("filter-response", Some(&format!("{shown}|{response}")));
            if phase == FilterPhase::RcptTo
                && let FilterVerdict::Reject(m) | FilterVerdict::Disconnect(m) = &verdict
                && let Some(msgid) = self.msgid
            {
                let result = if m.starts_with('4') {
                    "tempfail"
                } else {
                    "permfail"
                };
                self.report_after_reply("tx-rcpt", format!("{msgid}|{result}|{query}"));
            }
        }
        match phase {
            FilterPhase::Data
                if matches!(verdict, FilterVerdict::Proceed | FilterVerdict::Junk) =>
            {
                FilterSessionTrace::data_begin(self.sid)
            }
            FilterPhase::Commit => FilterSessionTrace::data_end(self.sid),
            _ => {}
        }
        verdict
    }

    async fn sender(&mut self, sender: Option<Mailaddr>) -> SenderVerdict {
        if let Some(w) = self.writer.take() {
            let _ = w.abort();
        }
        self.envelopes.clear();
        self.write_failed = false;
        self.mail_from = addr_text(&sender);
        if let Some(refusal) = self.senders_refusal(&sender) {
            return refusal;
        }
        match self.server.spool.begin_message().await {
            Ok(w) => {
                let msgid = MsgId(w.msgid().get());
                self.msgid = Some(msgid);
                self.writer = Some(w);
                SenderVerdict::Accept { msgid }
            }
            Err(e) => {
                warn!("warn: queue: cannot create message: {e}");
                SenderVerdict::Disconnect(Reply::temporary_error())
            }
        }
    }

    /// `senders <table>`: an authenticated user may only use the sender addresses the table
    /// lists for them (comma-separated mailaddr patterns); an unknown user may use none. As
    /// in OpenSMTPD, a local enqueue session counts as authenticated, with an empty name.
    /// A table that cannot answer ends the session with OpenSMTPD's 421.
    fn senders_refusal(&self, sender: &Option<Mailaddr>) -> Option<SenderVerdict> {
        let (table, _) = self.listener().senders?;
        let user = match (&self.auth_user, self.client.address) {
            (Some(u), _) => u.as_str(),
            (None, ClientAddress::Local) => "",
            (None, ClientAddress::Ip(_)) => return None,
        };
        let graph = &self.server.graph;
        let delim = graph.config.smtp.sub_addr_delim;
        let subject = sender
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let compiled = graph.table(table);
        let patterns = match compiled.get(crate::table::Service::Mailaddrmap, user) {
            Ok(p) => p,
            Err(crate::table::LookupError(e)) => {
                warn!(
                    "warn: {} senders table {} could not answer: {e}",
                    self.sid, compiled.name
                );
                return Some(SenderVerdict::Disconnect(Reply::temporary_error()));
            }
        };
        let allowed = patterns.is_some_and(|patterns| {
            patterns
                .split(|c: char| c == ',' || c.is_ascii_whitespace())
                .filter(|p| !p.is_empty())
                .any(|p| {
                    crate::rules::matching::mailaddr_match(&subject, &p.to_ascii_lowercase(), delim)
                })
        });
        (!allowed).then(|| SenderVerdict::Refuse(Reply::sender_rejected()))
    }

    fn recipient(
        &mut self,
        rcpt: &Mailaddr,
        params: &super::command::RcptParams,
        envelope: &super::action::Envelope,
    ) -> RecipientVerdict {
        let dsn = dsn_of(params, &envelope.mail_params);
        let graph = self.server.graph.clone();
        let source = self.client.address.text();
        let listener = self.listener().clone();
        let tag = listener.tag.clone().unwrap_or_default();
        let sender = envelope
            .sender
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_else(|| "@".to_string());
        let authenticated =
            envelope.auth_user.is_some() || matches!(self.client.address, ClientAddress::Local);
        let facts = Facts {
            tag: &tag,
            source: &source,
            rdns: (self.client.rdns != dns::UNKNOWN_HOST).then_some(self.client.rdns.as_str()),
            helo: &envelope.helo,
            authenticated,
            auth_user: envelope.auth_user.as_deref(),
            sender: &sender,
            expanded: false,
        };
        let rcpt_text = rcpt.to_string();
        // Rules and expansion (aliases, virtual, userbase, .forward) decide the RCPT; the
        // expansion may read .forward and include files.
        let outcome = tokio::task::block_in_place(|| {
            expand::expand(&graph, &facts, &rcpt_text, &expand::Sources::system())
        });
        let deliveries = match outcome {
            expand::ExpandOutcome::Accepted(d) => d,
            expand::ExpandOutcome::Refused(r) => {
                let text = r.reply(&rcpt_text);
                let reply = Reply::parse(&text).unwrap_or_else(|| {
                    if r.temporary {
                        Reply::recipient_tempfail(rcpt)
                    } else {
                        Reply::invalid_recipient(rcpt)
                    }
                });
                return RecipientVerdict::Refuse(reply);
            }
        };
        let Some(writer) = self.writer.as_mut() else {
            return RecipientVerdict::Disconnect(Reply::temporary_failure());
        };
        let sender_text = envelope
            .sender
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        let mut last = None;
        for d in deliveries {
            let evpid = match writer.new_evpid() {
                Ok(e) => e,
                Err(_) => return RecipientVerdict::Disconnect(Reply::temporary_failure()),
            };
            let target = match &d.target {
                expand::Target::Relay => queue::Target::Mta(queue::MtaTarget::default()),
                expand::Target::Mailbox {
                    user, subaddress, ..
                } => queue::Target::Mda(queue::MdaTarget {
                    user: user.name.clone(),
                    subaddress: subaddress.clone(),
                    ..Default::default()
                }),
                expand::Target::File { path, run_as } => queue::Target::Mda(queue::MdaTarget {
                    user: run_as_name(run_as),
                    path: path.clone(),
                    ..Default::default()
                }),
                expand::Target::Command { command, run_as } => {
                    queue::Target::Mda(queue::MdaTarget {
                        user: run_as_name(run_as),
                        exec: command.clone(),
                        ..Default::default()
                    })
                }
            };
            let mut e = queue::Envelope::new(
                evpid,
                target,
                &sender_text,
                &d.rcpt.to_string(),
                &d.dest.to_string(),
                now(),
            );
            e.dispatcher = d.action.clone();
            e.tag = tag.clone();
            e.smtpname = self.server.graph.config.hostname.clone();
            e.helo = envelope.helo.clone();
            e.hostname = self.client.rdns.clone();
            e.client = self.client.address;
            e.auth_user = envelope.auth_user.clone().unwrap_or_default();
            e.flags.authenticated = envelope.auth_user.is_some();
            e.dsn = dsn.clone();
            self.envelopes.push(e);
            last = Some(evpid);
        }
        match last {
            Some(evpid) => RecipientVerdict::Accept {
                evpid: EnvelopeId(evpid.get()),
            },
            None => RecipientVerdict::Refuse(Reply::invalid_recipient(rcpt)),
        }
    }

    /// Wait for a reverse lookup that was left running after the banner (it is bounded by
    /// its own deadline), log the connection and give the session the client's name.
    async fn resolve_client(&mut self, session: &mut Session) {
        let Some(task) = self.pending_rdns.take() else {
            return;
        };
        if let Ok(outcome) = task.await {
            self.client = client_info(self.client_ip, &outcome);
        }
        smtp_in::connected(self.sid, self.client.address.text(), &self.client.rdns);
        session.set_client(self.client.clone());
    }

    /// Check AUTH credentials against the listener's table, or the system's accounts.
    async fn authenticate(&mut self, c: super::auth::Credentials) -> AuthVerdict {
        use crate::table::credentials::{AuthCheck, authenticate};
        let table = match self.listener().auth {
            Some(cfg::AuthMode::Required(t) | cfg::AuthMode::Optional(t)) => t,
            None => None,
        };
        let graph = self.server.graph.clone();
        let user = c.user.clone();
        let check = tokio::task::spawn_blocking(move || match table {
            Some(id) => authenticate(&c.user, &c.password, |key| {
                Ok(graph
                    .table(id)
                    .get(crate::table::Service::Credentials, key)?
                    .map(std::borrow::Cow::into_owned))
            }),
            // System accounts: the hash in the shadow file, which only root reads; an
            // unprivileged daemon has its privileged broker check it.
            None => match crate::privsep::broker::client() {
                Some(broker) => broker.check_password(&c.user, &c.password),
                None => crate::privsep::broker::shadow_check(&c.user, &c.password),
            },
        })
        .await
        .unwrap_or_else(|_| AuthCheck::TempFail("authentication task failed".into()));
        let verdict = match &check {
            AuthCheck::Ok => AuthVerdict::Accepted,
            AuthCheck::PermFail => AuthVerdict::Rejected,
            AuthCheck::Unusable(e) => {
                warn!("warn: smtp: {}: unusable password hash: {e}", self.sid);
                AuthVerdict::Rejected
            }
            AuthCheck::TempFail(e) => {
                warn!("warn: smtp: {}: credentials lookup failed: {e}", self.sid);
                AuthVerdict::TempFail
            }
        };
        if verdict == AuthVerdict::Accepted {
            self.auth_user = Some(String::from_utf8_lossy(&user).into_owned());
        } else {
            // As OpenSMTPD, a failed attempt is answered after a random delay of up to 1 s.
            tokio::time::sleep(Duration::from_millis(rand_u64() % 1000)).await;
        }
        verdict
    }

    async fn commit(&mut self) -> CommitVerdict {
        let Some(mut writer) = self.writer.take() else {
            return CommitVerdict::Disconnect(Reply::temporary_failure());
        };
        if self.write_failed {
            let _ = writer.abort();
            return CommitVerdict::Refuse(Reply::temporary_failure());
        }
        let mut envelopes = std::mem::take(&mut self.envelopes);
        // Local maildir recipients are delivered before the reply when they can be (see
        // `Runner::deliver_direct`); what is left goes through the queue.
        if let Some(d) = self.server.delivery.clone()
            && let Some(plan) = d.plan_direct(&envelopes).await
        {
            let done = d.deliver_direct(envelopes, writer, plan).await;
            self.delivered_log = done.log;
            envelopes = done.remaining;
            match done.writer {
                _ if envelopes.is_empty() => return CommitVerdict::Committed,
                Some(w) => writer = w,
                None => {
                    warn!("warn: queue: commit failed: delivery task failed");
                    self.log_delivered();
                    return CommitVerdict::Refuse(Reply::temporary_failure());
                }
            }
        }
        let scheduled = envelopes.clone();
        let delivery = self.server.delivery.clone();
        let incoming = delivery
            .as_ref()
            .map(|d| d.stats().incoming.hold(scheduled.len() as u64));
        let committed = writer.commit(envelopes).await;
        drop(incoming);
        match committed {
            Ok(_) => {
                if let Some(d) = &self.server.delivery {
                    d.submit(&scheduled);
                }
                CommitVerdict::Committed
            }
            Err(e) => {
                warn!("warn: queue: commit failed: {e}");
                // Deliveries made before the failed commit stand: they are logged now.
                self.log_delivered();
                CommitVerdict::Refuse(Reply::temporary_failure())
            }
        }
    }
}

/// The DSN parameters of a recipient (NOTIFY, ORCPT) and its transaction (RET, ENVID), as
/// the envelope keeps them for reports.
fn dsn_of(rcpt: &super::command::RcptParams, mail: &super::command::MailParams) -> queue::Dsn {
    let mut notify = 0;
    if let Some(n) = &rcpt.notify {
        for (on, bit) in [
            (n.success, queue::DsnNotify::SUCCESS),
            (n.failure, queue::DsnNotify::FAILURE),
            (n.delay, queue::DsnNotify::DELAY),
            (n.never, queue::DsnNotify::NEVER),
        ] {
            if on {
                notify |= bit;
            }
        }
    }
    queue::Dsn {
        notify: queue::DsnNotify(notify),
        ret: mail.ret.map(|r| match r {
            super::command::DsnRet::Headers => queue::DsnRet::Headers,
            super::command::DsnRet::Full => queue::DsnRet::Full,
        }),
        envid: mail.envid.clone().unwrap_or_default(),
        orcpt: rcpt
            .orcpt
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default(),
    }
}

fn run_as_name(r: &expand::RunAs) -> String {
    match r {
        expand::RunAs::User(u) => u.name.clone(),
        expand::RunAs::Smtpd => expand::SMTPD_USER.to_string(),
    }
}

fn session_params(
    server: &Server,
    sid: SessionId,
    l: &cfg::Listener,
    client: ClientInfo,
    local: IpAddr,
) -> SessionParams {
    let cfg = &server.graph.config;
    let mut p = SessionParams::new(sid, &cfg.hostname, client);
    // The listener's own name (`hostname`, else the server name) is the domain of an
    // added `Message-ID:` and of bare addresses in headers, as 6.8 uses it.
    p.listener_hostname = l.hostname.clone().unwrap_or_else(|| cfg.hostname.clone());
    // OpenSMTPD's session name (banner, EHLO, `Received:`, qualification of bare local
    // parts) is that name, or the `hostnames` entry of the local address.
    p.server_name = match (&l.hostname, l.hostnames) {
        (None, Some(t)) => server
            .graph
            .table(t)
            .get(crate::table::Service::Addrname, &local.to_string())
            .ok()
            .flatten()
            .map(std::borrow::Cow::into_owned),
        _ => None,
    }
    .unwrap_or_else(|| p.listener_hostname.clone());
    p.tls = match l.tls {
        None => TlsMode::None,
        Some(cfg::TlsMode::Tls) => TlsMode::StartTls,
        Some(cfg::TlsMode::TlsRequire { .. }) => TlsMode::StartTlsRequired,
        Some(cfg::TlsMode::Smtps { .. }) => TlsMode::Smtps,
    };
    p.auth = match l.auth {
        None => AuthMode::None,
        Some(cfg::AuthMode::Required(_)) => AuthMode::Required,
        Some(cfg::AuthMode::Optional(_)) => AuthMode::Optional,
    };
    p.auth_plaintext = l.auth_plaintext;
    p.dsn = !l.no_dsn;
    p.filtered = l.filter.is_some();
    p.mask_source = l.mask_src;
    p.received_auth = l.received_auth;
    p.local_listener = l
        .addresses
        .iter()
        .any(|a| matches!(a.to_string().as_str(), "127.0.0.1" | "::1"));
    p.masquerade = l.senders.is_some_and(|(_, m)| m);
    p.limits = Limits {
        max_message_size: usize::try_from(cfg.smtp.max_message_size).unwrap_or(usize::MAX),
        max_rcpt: usize::try_from(cfg.smtp.max_rcpt).unwrap_or(1000),
        max_mails: usize::try_from(cfg.smtp.max_mails).unwrap_or(100),
        ..Limits::default()
    };
    p
}

fn client_info(ip: IpAddr, outcome: &dns::FcrdnsOutcome) -> ClientInfo {
    if let Some(w) = outcome.warning() {
        warn!("{w}");
    }
    if let Some(failure) = outcome.failure() {
        debug!("smtp: client {ip}: {failure}; taken as no record, as OpenSMTPD does");
    }
    ClientInfo {
        address: ClientAddress::Ip(ip),
        rdns: outcome.host().to_string(),
        fcrdns: match outcome.fcrdns {
            dns::Fcrdns::Pass => Fcrdns::Pass,
            dns::Fcrdns::Fail => Fcrdns::Fail,
            dns::Fcrdns::Error => Fcrdns::Error,
        },
    }
}

/// Read a PROXY v2 header (bounded in size and time); returns the client it names and the
/// bytes read past it.
async fn read_proxy_header(
    stream: &mut TcpStream,
) -> Result<(Option<SocketAddr>, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 512];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Bounded: the header is at most 16 + 65535 bytes, and every read adds at least one.
    while buf.len() <= 16 + 65535 {
        match super::proxy::parse(&buf) {
            Ok(Some(h)) => return Ok((h.source, buf.split_off(h.len))),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return Err("timeout".into()),
            Ok(Ok(0)) => return Err("connection closed".into()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
    Err("header too long".into())
}

/// `-T smtp`: `smtp: SID: connected to listener 0xN [hostname=NAME, port=N, tag=TAG]`, with
/// the listener's position in the configuration standing for OpenSMTPD's pointer, then the
/// session's first state change.
fn trace_connected(server: &Server, sid: SessionId, index: usize, l: &cfg::Listener, port: u16) {
    trace!(
        target: "smtp",
        "smtp: {sid}: connected to listener {:#x} [hostname={}, port={port}, tag={}]",
        index + 1,
        l.hostname.as_deref().unwrap_or(&server.graph.config.hostname),
        l.tag.as_deref().unwrap_or("")
    );
    trace!(target: "smtp", "smtp: {sid}: STATE_NEW -> STATE_CONNECTED");
}

/// The reverse lookup of a client whose banner did not wait for it.
type PendingRdns = tokio::task::JoinHandle<dns::FcrdnsOutcome>;

/// Drive one session to its end.
pub async fn serve(server: Arc<Server>, mut stream: TcpStream, peer: SocketAddr, listener: usize) {
    let sid = SessionId(rand_u64());
    let l = server.graph.config.listeners[listener].clone();
    // `proxy-v2`: the real client is named by the header the proxy sends first.
    let mut peer = peer;
    let mut early = Vec::new();
    if l.proxy_v2 {
        match read_proxy_header(&mut stream).await {
            Ok((source, rest)) => {
                peer = source.unwrap_or(peer);
                early = rest;
            }
            Err(why) => {
                smtp_in::disconnected(sid, format!("\"proxy-v2: {why}\""));
                return;
            }
        }
    }
    let ip = canonical(peer.ip());
    let _count = SessionCount::start(if ip.is_ipv4() {
        &SMTP_STATS.inet4
    } else {
        &SMTP_STATS.inet6
    });
    let local = stream.local_addr().map(|a| canonical(a.ip())).unwrap_or(ip);
    trace_connected(
        &server,
        sid,
        listener,
        &l,
        stream.local_addr().map_or(0, |a| a.port()),
    );
    let deadline = tokio::time::Instant::now() + server.rdns_bound;
    // A listener with connect-phase filters needs the client's name before the banner, as
    // OpenSMTPD always does. Otherwise the banner goes out at once and the
    // lookup finishes meanwhile; it is awaited (within the same bound) before the first
    // command is processed, so logs, rules and the Received header still have it.
    // Only connect-phase filters run before the banner; other filtered listeners defer the
    // lookup like unfiltered ones.
    let rdns_before_banner = server.graph.listener_chain(&l).is_some_and(|c| {
        c.phases
            .get(&cfg::Phase::Connect)
            .is_some_and(|steps| !steps.is_empty())
    });
    let (client, pending) = if rdns_before_banner {
        let outcome = dns::fcrdns(server.resolver.as_ref(), ip, deadline).await;
        (client_info(ip, &outcome), None)
    } else {
        let resolver = server.resolver.clone();
        let task: PendingRdns =
            tokio::spawn(async move { dns::fcrdns(resolver.as_ref(), ip, deadline).await });
        (ClientInfo::unknown(ClientAddress::Ip(ip)), Some(task))
    };
    if pending.is_none() {
        smtp_in::connected(sid, client.address.text(), &client.rdns);
    }
    // `-T filters`: session-begin now; session-end when this guard drops at the very end,
    // after the `smtp disconnected` line. Filtered listeners only.
    let _filter_trace = l.filter.is_some().then(|| FilterSessionTrace::begin(sid));
    let mut params = session_params(&server, sid, &l, client.clone(), local);
    let procs = open_procs(&server, &l, sid);
    params.data_filtered = procs.as_ref().is_some_and(ProcSession::filters_data_lines);
    let local_end = stream.local_addr().ok();
    let mut session = Session::new(params);
    let mut conn = Conn::new(server.clone(), sid, listener, client, ip, pending);
    conn.procs = procs;
    if conn.procs.is_some() {
        let src = SocketAddr::new(ip, peer.port()).to_string();
        let dest = local_end
            .map(|a| SocketAddr::new(canonical(a.ip()), a.port()).to_string())
            .unwrap_or_default();
        conn.report_connect(&src, &dest);
    }
    if !early.is_empty() {
        session.input(&early);
    }
    let mut stream: Stream = Box::new(stream);
    let reason = drive(&mut conn, &mut session, &mut stream).await;
    // A client gone before its first command: the connection is still logged.
    conn.resolve_client(&mut session).await;
    if let Some(w) = conn.writer.take() {
        let _ = w.abort();
    }
    let _ = conn.client_ip;
    smtp_in::disconnected(sid, &reason);
    conn.report("link-disconnect", None);
}

/// Run the session over the stream; returns the disconnect reason for the log.
async fn drive(conn: &mut Conn, session: &mut Session, stream: &mut Stream) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(512);
    // Small while the session is idle (thousands of idle sessions must stay cheap); it grows
    // once a read fills it, as during DATA.
    let mut buf = vec![0u8; 1024];
    let timeout = conn.server.timeout;
    loop {
        // Everything the session wants done, in order.
        while let Some(action) = session.next_action() {
            match action {
                Action::Send(bytes) => {
                    conn.report_sent(&bytes);
                    out.extend_from_slice(&bytes);
                }
                Action::Event(e) => conn.log_event(&e),
                Action::FilterData(lines) => {
                    if let Some(p) = &conn.procs {
                        let body = lines.strip_suffix(b"\n").unwrap_or(&lines);
                        p.data_lines(body.split(|&b| b == b'\n'));
                    }
                }
                Action::MessageData(bytes) => {
                    if let Some(w) = conn.writer.as_mut()
                        && !conn.write_failed
                        && w.write(&bytes).await.is_err()
                    {
                        conn.write_failed = true;
                    }
                }
                Action::Rollback(_) => {
                    if let Some(w) = conn.writer.take() {
                        let _ = w.abort();
                    }
                    conn.envelopes.clear();
                    conn.report_rollback();
                }
                Action::StartTls => {
                    if !out.is_empty() && write_all(stream, &mut out, timeout).await.is_err() {
                        return "io-error".into();
                    }
                    let Some(tls) = conn.server.tls.get(conn.listener).cloned().flatten() else {
                        session.tls_failed();
                        continue;
                    };
                    let (placeholder, _) = tokio::io::duplex(1);
                    let plain = std::mem::replace(stream, Box::new(placeholder));
                    match tokio::time::timeout(timeout, tls.accept(plain)).await {
                        Ok(Ok(up)) => {
                            info!("{} smtp tls ciphers={}", conn.sid, up.facts.ciphers());
                            if let Some(check) = up.facts.peer_cert.check_result() {
                                info!("{} smtp client-cert-check result=\"{check}\"", conn.sid);
                            }
                            if let Some(reason) = up.refusal() {
                                return reason.to_string();
                            }
                            let info = TlsInfo {
                                version: up.facts.version.clone(),
                                cipher: up.facts.cipher.clone(),
                                bits: up.facts.bits,
                                client_cert: match up.facts.peer_cert {
                                    crate::tls::PeerCert::Verified => ClientCert::Verified,
                                    crate::tls::PeerCert::Failed(_) => ClientCert::Unverified,
                                    crate::tls::PeerCert::None => ClientCert::None,
                                },
                            };
                            conn.report(
                                "link-tls",
                                Some(&format!("{}:{}:{}", info.version, info.cipher, info.bits)),
                            );
                            *stream = Box::new(up.stream);
                            session.tls_established(info);
                        }
                        Ok(Err(e)) => return format!("\"{}\"", e.reason()),
                        Err(_) => return "timeout".into(),
                    }
                }
                Action::Close => {
                    let _ = write_all(stream, &mut out, timeout).await;
                    let _ = stream.shutdown().await;
                    return "quit".into();
                }
                Action::Ask(q) => {
                    let answer = match *q {
                        Question::Filter {
                            phase,
                            param,
                            query,
                        } => Answer::Filter(conn.filter(phase, &param, &query).await),
                        Question::Sender { sender, .. } => {
                            let verdict = conn.sender(sender).await;
                            if let SenderVerdict::Accept { msgid } = &verdict {
                                let from = conn.mail_from.clone();
                                conn.report_after_reply("tx-begin", msgid.to_string());
                                conn.report_after_reply("tx-mail", format!("{msgid}|ok|{from}"));
                            }
                            Answer::Sender(verdict)
                        }
                        Question::Recipient {
                            rcpt,
                            params,
                            envelope,
                        } => {
                            let verdict = conn.recipient(&rcpt, &params, &envelope);
                            let msgid = envelope.msgid;
                            match &verdict {
                                RecipientVerdict::Accept { evpid } => {
                                    conn.report("tx-envelope", Some(&format!("{msgid}|{evpid}")));
                                    conn.report_after_reply(
                                        "tx-rcpt",
                                        format!("{msgid}|ok|{rcpt}"),
                                    );
                                }
                                RecipientVerdict::Refuse(r) | RecipientVerdict::Disconnect(r) => {
                                    let result = if r.code() < 500 {
                                        "tempfail"
                                    } else {
                                        "permfail"
                                    };
                                    conn.report_after_reply(
                                        "tx-rcpt",
                                        format!("{msgid}|{result}|{rcpt}"),
                                    );
                                }
                            }
                            Answer::Recipient(verdict)
                        }
                        Question::FilteredData => {
                            let max = conn.listener_max_size().saturating_mul(2).max(1 << 20);
                            let timeout = conn.server.timeout;
                            let data = match conn.procs.as_mut() {
                                Some(p) => p.finish_data(timeout, max).await,
                                None => Ok(Vec::new()),
                            };
                            Answer::FilteredData(match data {
                                Ok(lines) => {
                                    let mut bytes = Vec::new();
                                    for l in lines {
                                        bytes.extend_from_slice(&l);
                                        bytes.extend_from_slice(b"\r\n");
                                    }
                                    Ok(bytes)
                                }
                                Err(e) => {
                                    warn!(
                                        "warn: smtp: {}: data-line filters failed: {e:?}",
                                        conn.sid
                                    );
                                    Err(Reply::filter_tempfail())
                                }
                            })
                        }
                        Question::OpenMessage(env) => {
                            if let Some(p) = conn.procs.as_mut() {
                                p.begin_data();
                            }
                            conn.report_after_reply("tx-data", format!("{}|ok", env.msgid));
                            let t = now() as i64;
                            let (off, zone) = local_offset(t);
                            Answer::OpenMessage(OpenVerdict::Ready(MessageStamp {
                                date: time_to_text(t, off, &zone),
                                message_id: rand_u64(),
                            }))
                        }
                        Question::CommitMessage { size, .. } => {
                            // The reply waits for the durable commit; send what is pending first.
                            if !out.is_empty()
                                && write_all(stream, &mut out, timeout).await.is_err()
                            {
                                return "io-error".into();
                            }
                            let verdict = conn.commit().await;
                            if let Some(m) = conn.msgid.take() {
                                match &verdict {
                                    CommitVerdict::Committed => {
                                        conn.report_after_reply("tx-commit", format!("{m}|{size}"));
                                        conn.report_after_reply("tx-reset", m.to_string());
                                    }
                                    _ => {
                                        conn.report_after_reply("tx-rollback", m.to_string());
                                        conn.report_after_reply("tx-reset", m.to_string());
                                    }
                                }
                            }
                            Answer::CommitMessage(verdict)
                        }
                        Question::Credentials(c) => Answer::Credentials(conn.authenticate(c).await),
                    };
                    if let Err(e) = session.answer(answer) {
                        debug!("debug: smtp: {}: answer refused: {e:?}", conn.sid);
                    }
                }
            }
        }
        conn.flush_reports();
        if session.is_closed() {
            let _ = write_all(stream, &mut out, timeout).await;
            return "quit".into();
        }
        if !out.is_empty() && write_all(stream, &mut out, timeout).await.is_err() {
            return "io-error".into();
        }
        match tokio::time::timeout(timeout, stream.read(&mut buf)).await {
            Err(_) => {
                conn.report("timeout", None);
                let _ = stream
                    .write_all(
                        format!(
                            "421 {} Timeout exceeded\r\n",
                            conn.server.graph.config.hostname
                        )
                        .as_bytes(),
                    )
                    .await;
                return "timeout".into();
            }
            Ok(Ok(0)) => {
                session.abort();
                return "disconnect".into();
            }
            Ok(Ok(n)) => {
                conn.resolve_client(session).await;
                session.input(&buf[..n]);
                if n == buf.len() && buf.len() < 64 * 1024 {
                    buf.resize(buf.len() * 4, 0);
                }
            }
            Ok(Err(e)) => return format!("\"io-error: {e}\""),
        }
    }
}

async fn write_all(
    stream: &mut Stream,
    out: &mut Vec<u8>,
    timeout: Duration,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let r = tokio::time::timeout(timeout, stream.write_all(out)).await;
    out.clear();
    match r {
        Ok(x) => x,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timeout",
        )),
    }
}

/// A random 64-bit number (session ids, Message-ID values).
pub fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
    }
    u64::from_le_bytes(b)
}
