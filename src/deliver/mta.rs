//! The outbound side's sessions: envelopes relayed the same way (same dispatcher,
//! smarthost or destination domain, and source address) share a route, and a route's
//! sessions carry one transaction after the other without reconnecting.
//!
//! Envelopes of one message on a route travel in one transaction with several RCPTs (at
//! most [`MAX_RCPT_PER_TRANSACTION`]); each recipient's result is its own. A session
//! carries at most `session-mail-max` transactions; the last session of a route waits
//! `session-keepalive` seconds for more mail before QUIT. A route opens at most
//! `max-conn-per-route` sessions, and at most `max-conn-per-host` sessions are open to one
//! address. Bounds shared between routes (`max-conn-per-relay`, `-domain`, `-source`) and
//! the `conn-delay-relay`, `-connector`, `-domain`, `-source` spacings are checked before a
//! session opens; the `conn-delay-host`, `conn-delay-route` and `reconn-delay-route`
//! pauses when its remote address is chosen.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::relay::{
    ConnectLimits, Family, HostLimiter, Recipient, RelayOutcome, Relayer, RouteDelays, Session,
    Transaction, mail_from,
};
use super::result::Status;
use crate::config::model::{Config, RelayAction};
use crate::queue::{Envelope, Msgid};
use crate::srs::SrsKeys;

/// Most recipients in one transaction (RFC 5321's minimum a server must accept).
pub const MAX_RCPT_PER_TRANSACTION: usize = 100;

/// The `mta limit` values in use for one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtaLimits {
    pub max_conn_per_host: usize,
    pub max_conn_per_route: usize,
    pub session_mail_max: usize,
    pub session_keepalive: Duration,
    pub conn_delay_relay: Duration,
    /// Pause between two transactions of one session (`session-transaction-delay`).
    pub session_transaction_delay: Duration,
    /// Consecutive refused recipients that end a session (`max-failures-per-session`).
    pub max_failures_per_session: usize,
    /// Sessions of one route and source address together (`max-conn-per-connector`).
    pub max_conn_per_connector: usize,
    /// Sessions of one relay, whatever their source (`max-conn-per-relay`).
    pub max_conn_per_relay: usize,
    /// Sessions to one destination domain or smarthost (`max-conn-per-domain`).
    pub max_conn_per_domain: usize,
    /// Sessions from one source address, to any destination (`max-conn-per-source`).
    pub max_conn_per_source: usize,
    /// Least time between two sessions opened on one route and source
    /// (`conn-delay-connector`), to one domain (`conn-delay-domain`), from one source
    /// address (`conn-delay-source`).
    pub conn_delay_connector: Duration,
    pub conn_delay_domain: Duration,
    pub conn_delay_source: Duration,
    /// Least time between two sessions opened to one remote address
    /// (`conn-delay-host`), on one route from a source to a remote address
    /// (`conn-delay-route`), and from the end of a route's session to the next one
    /// (`reconn-delay-route`).
    pub conn_delay_host: Duration,
    pub conn_delay_route: Duration,
    pub reconn_delay_route: Duration,
    pub family: Family,
}

impl Default for MtaLimits {
    fn default() -> Self {
        MtaLimits {
            max_conn_per_host: 10,
            max_conn_per_route: 5,
            session_mail_max: 100,
            session_keepalive: Duration::from_secs(10),
            conn_delay_relay: Duration::from_secs(2),
            session_transaction_delay: Duration::ZERO,
            max_failures_per_session: 25,
            max_conn_per_connector: 20,
            max_conn_per_relay: 100,
            max_conn_per_domain: 100,
            max_conn_per_source: 100,
            conn_delay_connector: Duration::ZERO,
            conn_delay_domain: Duration::ZERO,
            conn_delay_source: Duration::ZERO,
            conn_delay_host: Duration::ZERO,
            conn_delay_route: Duration::from_secs(5),
            reconn_delay_route: Duration::from_secs(3),
            family: Family::Any,
        }
    }
}

impl MtaLimits {
    /// The limits for `domain`. As OpenSMTPD reads them, the first `mta limit for domain`
    /// line of a domain starts from a copy of the general limits declared so far; later
    /// general lines no longer change that domain.
    pub fn for_domain(cfg: &Config, domain: &str) -> MtaLimits {
        let mut general = MtaLimits::default();
        let mut own: Option<MtaLimits> = None;
        for m in &cfg.mta_limits {
            let target = match m.domain.as_deref() {
                None => &mut general,
                Some(d) if d.eq_ignore_ascii_case(domain) => own.get_or_insert(general),
                Some(_) => continue,
            };
            target.apply(m);
        }
        own.unwrap_or(general)
    }

    fn apply(&mut self, m: &crate::config::model::MtaLimit) {
        match (m.inet4, m.inet6) {
            (true, false) => self.family = Family::Inet4,
            (false, true) => self.family = Family::Inet6,
            (true, true) => self.family = Family::Any,
            (false, false) => {}
        }
        for (key, value) in &m.limits {
            let n = (*value).max(0) as u64;
            match key.as_str() {
                "max-conn-per-host" => self.max_conn_per_host = n.max(1) as usize,
                "max-conn-per-route" => self.max_conn_per_route = n.max(1) as usize,
                "session-mail-max" => self.session_mail_max = n.max(1) as usize,
                "session-keepalive" => self.session_keepalive = Duration::from_secs(n),
                "conn-delay-relay" => self.conn_delay_relay = Duration::from_secs(n),
                "session-transaction-delay" => {
                    self.session_transaction_delay = Duration::from_secs(n)
                }
                "max-failures-per-session" => self.max_failures_per_session = n as usize,
                "max-conn-per-connector" => self.max_conn_per_connector = n.max(1) as usize,
                "max-conn-per-relay" => self.max_conn_per_relay = n.max(1) as usize,
                "max-conn-per-domain" => self.max_conn_per_domain = n.max(1) as usize,
                "max-conn-per-source" => self.max_conn_per_source = n.max(1) as usize,
                "conn-delay-connector" => self.conn_delay_connector = Duration::from_secs(n),
                "conn-delay-domain" => self.conn_delay_domain = Duration::from_secs(n),
                "conn-delay-source" => self.conn_delay_source = Duration::from_secs(n),
                "conn-delay-host" => self.conn_delay_host = Duration::from_secs(n),
                "conn-delay-route" => self.conn_delay_route = Duration::from_secs(n),
                "reconn-delay-route" => self.reconn_delay_route = Duration::from_secs(n),
                _ => {}
            }
        }
    }
}

/// What identifies a route: envelopes with equal keys may share sessions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub dispatcher: String,
    /// The smarthost URL, or `None` for MX routing.
    pub url: Option<String>,
    /// The destination domain (MX routing), lower-cased; empty for smarthosts.
    pub domain: String,
    pub source: Option<IpAddr>,
}

/// Looks up an `auth` table entry by label.
pub type AuthLookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How a route's sessions are opened.
pub struct RouteSpec {
    /// The action, `helo` already chosen for the source address.
    pub action: RelayAction,
    /// What limits and pauses follow: the destination domain (lower case), or the
    /// smarthost's name.
    pub domain: String,
    /// The relay as 6.8 names it (`[relay:…]`, see [`relay_text`]).
    pub relay_text: String,
    pub source: Option<IpAddr>,
    pub limits: MtaLimits,
    /// `auth` table entries by label.
    pub auth: AuthLookup,
    /// The SRS keys when the action rewrites senders (`srs` and `srs key`).
    pub srs: Option<SrsKeys>,
    /// Where a message's content is read from.
    pub message_file: Box<dyn Fn(Msgid) -> std::path::PathBuf + Send + Sync>,
}

/// An envelope waiting for a session, and where its outcome goes.
pub struct Job {
    pub envelope: Envelope,
    pub reply: oneshot::Sender<RelayOutcome>,
}

struct RouteState {
    spec: Arc<RouteSpec>,
    queue: VecDeque<Job>,
    /// Sessions (open or opening).
    workers: usize,
    /// Sessions waiting for mail.
    idle: usize,
    last_connect: Option<Instant>,
    /// A delayed attempt to open another session is pending.
    retry_pending: bool,
    notify: Arc<Notify>,
}

/// The routes with their queues and sessions.
pub struct Pool {
    relayer: Relayer,
    routes: Mutex<HashMap<RouteKey, RouteState>>,
    hosts: HostLimiter,
    /// Source addresses paused for a destination (`smtpctl pause mta from ADDR for
    /// DOMAIN`): the address and the domain as given, compared without case.
    blocks: Mutex<Vec<(IpAddr, String)>>,
    /// When a session was last opened per connector, domain and source, for the
    /// `conn-delay-*` limits: kept after a route's sessions end, pruned past an hour.
    recent: Mutex<Recent>,
    /// Envelopes and transactions being sent (`mta.envelope`, `mta.task.running`).
    running: Mutex<(usize, usize)>,
    /// Mail was handed to the pool once (its `mta.*` counters are then listed).
    used: std::sync::atomic::AtomicBool,
}

/// The `show stats` gauges of the outbound side, as 6.8 names its objects: relays
/// (destinations), connectors (a relay from one source), domains, sources, routes and
/// hosts (remote addresses, as `show routes` and `show hosts` list them), sessions,
/// envelopes waiting or being sent, tasks (a message's envelopes on one relay) and tasks
/// being sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MtaCensus {
    pub connector: usize,
    pub domain: usize,
    pub envelope: usize,
    pub host: usize,
    pub relay: usize,
    pub route: usize,
    pub session: usize,
    pub source: usize,
    pub task: usize,
    pub task_running: usize,
}

/// A batch being sent, counted in [`Pool::census`] until dropped.
struct Running<'a> {
    pool: &'a Pool,
    envelopes: usize,
}

impl<'a> Running<'a> {
    fn new(pool: &'a Pool, envelopes: usize) -> Running<'a> {
        if let Ok(mut r) = pool.running.lock() {
            r.0 += envelopes;
            r.1 += 1;
        }
        Running { pool, envelopes }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Ok(mut r) = self.pool.running.lock() {
            r.0 = r.0.saturating_sub(self.envelopes);
            r.1 = r.1.saturating_sub(1);
        }
    }
}

#[derive(Default)]
struct Recent {
    /// By relay: the route key without its source address.
    relay: HashMap<RouteKey, Instant>,
    connector: HashMap<RouteKey, Instant>,
    domain: HashMap<String, Instant>,
    source: HashMap<Option<IpAddr>, Instant>,
}

impl Recent {
    const KEEP: Duration = Duration::from_secs(3600);

    fn opened(&mut self, key: &RouteKey, domain: &str, now: Instant) {
        if self.connector.len() + self.domain.len() > 4096 {
            self.connector
                .retain(|_, t| now.duration_since(*t) < Self::KEEP);
            self.domain
                .retain(|_, t| now.duration_since(*t) < Self::KEEP);
            self.source
                .retain(|_, t| now.duration_since(*t) < Self::KEEP);
            self.relay
                .retain(|_, t| now.duration_since(*t) < Self::KEEP);
        }
        self.relay.insert(relay_key(key), now);
        self.connector.insert(key.clone(), now);
        self.domain.insert(domain.to_string(), now);
        self.source.insert(key.source, now);
    }

    /// The earliest time the `conn-delay-relay`, `-connector`, `-domain` and `-source`
    /// limits let another session open.
    fn due(&self, key: &RouteKey, domain: &str, l: &MtaLimits) -> Option<Instant> {
        let after = |t: Option<&Instant>, d: Duration| t.filter(|_| !d.is_zero()).map(|t| *t + d);
        [
            after(self.relay.get(&relay_key(key)), l.conn_delay_relay),
            after(self.connector.get(key), l.conn_delay_connector),
            after(self.domain.get(domain), l.conn_delay_domain),
            after(self.source.get(&key.source), l.conn_delay_source),
        ]
        .into_iter()
        .flatten()
        .max()
    }
}

/// Who an outcome names: the session's next hop, id and source address, and whether the
/// next hop takes DSN requests over; with no session, the relay and no session id.
struct SentBy {
    relay: String,
    session: String,
    source: Option<String>,
    dsn: bool,
}

impl SentBy {
    fn of(s: Option<&Session>, spec: &RouteSpec) -> SentBy {
        match s {
            Some(s) => SentBy {
                relay: s.relay_text().to_string(),
                session: s.id().to_string(),
                source: s.source_text(),
                dsn: s.offers_dsn(),
            },
            None => SentBy {
                relay: spec.domain.clone(),
                session: super::relay::NO_SESSION.to_string(),
                source: None,
                dsn: false,
            },
        }
    }

    /// Sends recipient `i`'s outcome, unless it was sent already.
    fn send(
        &self,
        replies: &mut [Option<oneshot::Sender<RelayOutcome>>],
        i: usize,
        (status, stat): &(Status, String),
    ) {
        if let Some(reply) = replies.get_mut(i).and_then(Option::take) {
            let _ = reply.send(RelayOutcome {
                status: *status,
                stat: stat.clone(),
                relay: self.relay.clone(),
                session: self.session.clone(),
                source: self.source.clone(),
                next_hop_dsn: self.dsn,
            });
        }
    }
}

/// A relay, as 6.8 shares `conn-delay-relay` and `max-conn-per-relay` between its
/// connectors: the route key without the source address.
fn relay_key(key: &RouteKey) -> RouteKey {
    RouteKey {
        source: None,
        ..key.clone()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The sender announced for `e`: `mail-from`, then SRS for forwarded mail.
pub fn envelope_sender(spec: &RouteSpec, e: &Envelope) -> String {
    let sender = mail_from(spec.action.mail_from.as_deref(), &e.sender);
    match &spec.srs {
        Some(keys) if sender.contains('@') && e.rcpt != e.dest => match e.rcpt.rsplit_once('@') {
            Some((_, domain)) if !domain.is_empty() => {
                crate::srs::encode(keys, &sender, domain, now_secs())
            }
            _ => sender,
        },
        _ => sender,
    }
}

/// A relay as 6.8's `mta_relay_to_text` names it: `[relay:NAME,port=N,SCHEME,auth=TABLE:
/// LABEL,pki_name=P,mx,backup=NAME,sourcetable=T,helotable=T,heloname=H]`, for the
/// smarthost `url` or
/// the destination `domain` (MX routing).
pub fn relay_text(url: Option<&str>, domain: &str, action: &RelayAction, cfg: &Config) -> String {
    let table = |t: Option<crate::config::model::TableId>| t.map(|id| cfg.table(id).name.clone());
    let url = url.and_then(super::relay::parse_relay_url);
    let mut words = Vec::new();
    match &url {
        Some(u) => {
            words.push(format!("relay:{}", u.host));
            if u.port != 25 {
                words.push(format!("port={}", u.port));
            }
            words.push(u.scheme.url_text().to_string());
            if let (Some(t), Some(label)) = (table(action.auth), &u.label) {
                words.push(format!("auth={t}:{label}"));
            }
        }
        None => {
            words.push(format!("relay:{domain}"));
            words.push(
                if action.tls.is_some() {
                    "smtp+tls"
                } else {
                    "smtp"
                }
                .into(),
            );
        }
    }
    if let Some(p) = &action.pki {
        words.push(format!("pki_name={p}"));
    }
    if url.is_some() {
        // 6.8 marks a relay whose name is a host, not a domain, this way.
        words.push("mx".into());
    }
    if let Some(name) = &action.backup {
        words.push(format!(
            "backup={}",
            name.as_deref().unwrap_or(&cfg.hostname)
        ));
    }
    if let Some(t) = table(action.src) {
        words.push(format!("sourcetable={t}"));
    }
    if let Some(t) = table(action.helo_src) {
        words.push(format!("helotable={t}"));
    }
    if let Some(h) = &action.helo {
        words.push(format!("heloname={h}"));
    }
    format!("[{}]", words.join(","))
}

impl Pool {
    pub fn new(relayer: Relayer) -> Arc<Pool> {
        Arc::new(Pool {
            relayer,
            routes: Mutex::new(HashMap::new()),
            hosts: HostLimiter::default(),
            blocks: Mutex::new(Vec::new()),
            recent: Mutex::new(Recent::default()),
            running: Mutex::new((0, 0)),
            used: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The outbound side's objects now ([`MtaCensus`]), or `None` before any mail was
    /// handed to it.
    pub fn census(&self) -> Option<MtaCensus> {
        if !self.used.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let (running_envelopes, running_tasks) = self.running.lock().map_or((0, 0), |r| *r);
        let mut c = MtaCensus {
            envelope: running_envelopes,
            task: running_tasks,
            task_running: running_tasks,
            ..MtaCensus::default()
        };
        if let Ok(routes) = self.routes.lock() {
            let mut relays = std::collections::HashSet::new();
            let mut domains = std::collections::HashSet::new();
            let mut sources = std::collections::HashSet::new();
            for (key, state) in routes.iter() {
                relays.insert((&key.dispatcher, &key.url, &key.domain));
                domains.insert(&state.spec.domain);
                sources.insert(key.source);
                c.session += state.workers;
                c.envelope += state.queue.len();
                let mut messages: Vec<Msgid> =
                    state.queue.iter().map(|j| j.envelope.id.msgid()).collect();
                messages.sort_unstable();
                messages.dedup();
                c.task += messages.len();
            }
            c.connector = routes.len();
            c.relay = relays.len();
            c.domain = domains.len();
            c.source = sources.len();
        }
        (c.route, c.host) = self.relayer.route_census();
        Some(c)
    }

    /// `smtpctl pause mta from ADDR for DOMAIN` (`on`) and `resume mta from ADDR for
    /// DOMAIN`: no new session from `source` for the relay `domain` (the destination
    /// domain, or the smarthost's name) while paused. As in 6.8, pausing twice or resuming
    /// what is not paused changes nothing.
    pub fn set_blocked(&self, source: IpAddr, domain: &str, on: bool) {
        let Ok(mut blocks) = self.blocks.lock() else {
            return;
        };
        let at = blocks
            .iter()
            .position(|(a, d)| *a == source && d.eq_ignore_ascii_case(domain));
        match (at, on) {
            (None, true) => blocks.push((source, domain.to_string())),
            (Some(i), false) => {
                blocks.remove(i);
            }
            _ => {}
        }
    }

    /// Whether relaying to `domain` from `source` is paused.
    pub fn is_blocked(&self, source: IpAddr, domain: &str) -> bool {
        self.blocks.lock().is_ok_and(|b| {
            b.iter()
                .any(|(a, d)| *a == source && d.eq_ignore_ascii_case(domain))
        })
    }

    /// `smtpctl show mta paused`: `ADDR -> DOMAIN` a line (IPv6 addresses in brackets,
    /// as 6.8 prints a source), ordered by address, then domain.
    pub fn blocks_text(&self) -> Vec<String> {
        let mut list = self.blocks.lock().map(|b| b.clone()).unwrap_or_default();
        list.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| a.1.to_ascii_lowercase().cmp(&b.1.to_ascii_lowercase()))
        });
        list.into_iter()
            .map(|(a, d)| format!("{} -> {d}", crate::queue::ClientAddr::Ip(a).text()))
            .collect()
    }

    /// The SMTP client the sessions use.
    pub fn relayer(&self) -> &Relayer {
        &self.relayer
    }

    /// `smtpctl show relays`: each destination with mail or sessions, as 6.8 names its
    /// relays (`[relay:NAME,port=N,SCHEME,auth=TABLE:LABEL,mx,sourcetable=T,helotable=T,
    /// heloname=H]`), then `refcount=` (sessions and waiting envelopes), `ntask=` (waiting
    /// envelopes), `nconn=` (sessions open or opening), `lastconn=` (since the last session
    /// was opened), `timeout=-` and `wait=`; under it, as 6.8's `connector` lines, each
    /// source address (`[]` for the one the system chooses) with `refcount=0` (as 6.8, which
    /// never counts them), its sessions, its `lastconn`, and `flags=WAIT` while a limit holds
    /// it back.
    pub fn relays_text(&self) -> Vec<String> {
        let Ok(routes) = self.routes.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        let age = |t: Option<Instant>| {
            t.map_or_else(
                || "-".to_string(),
                |t| super::log::duration_to_text(now.saturating_duration_since(t).as_secs() as i64),
            )
        };
        // A relay's connectors: its routes, one per source address.
        let mut relays: std::collections::BTreeMap<
            (String, RouteKey),
            Vec<(&RouteKey, &RouteState)>,
        > = std::collections::BTreeMap::new();
        for (key, state) in routes.iter() {
            relays
                .entry((state.spec.relay_text.clone(), relay_key(key)))
                .or_default()
                .push((key, state));
        }
        let mut lines = Vec::new();
        for ((text, _), mut connectors) in relays {
            connectors.sort_by_key(|(k, _)| k.source);
            let (mut refcount, mut ntask, mut nconn) = (0, 0, 0);
            for (_, st) in &connectors {
                refcount += st.workers + st.queue.len();
                ntask += st.queue.len();
                nconn += st.workers;
            }
            let lastconn = connectors
                .iter()
                .filter_map(|(_, st)| st.last_connect)
                .max();
            lines.push(format!(
                "{text} refcount={refcount} ntask={ntask} nconn={nconn} lastconn={} timeout=- wait=",
                age(lastconn)
            ));
            for (key, st) in connectors {
                // 6.8 never counts a connector's references: its refcount is always 0.
                lines.push(format!(
                    "  connector {} refcount=0 nconn={} lastconn={} timeout=- flags={}",
                    super::relay::source_text(key.source),
                    st.workers,
                    age(st.last_connect),
                    if st.retry_pending { "WAIT" } else { "" },
                ));
            }
        }
        lines
    }

    /// Queue `job` on the route `key`; its outcome arrives on the job's channel.
    pub fn enqueue(self: &Arc<Self>, key: RouteKey, spec: Arc<RouteSpec>, job: Job) {
        self.enqueue_all(vec![(key, spec, job)]);
    }

    /// Queue several jobs at once (the envelopes of one message), so that a session
    /// sees them together.
    pub fn enqueue_all(self: &Arc<Self>, jobs: Vec<(RouteKey, Arc<RouteSpec>, Job)>) {
        let Ok(mut routes) = self.routes.lock() else {
            for (_, _, job) in jobs {
                let _ = job
                    .reply
                    .send(RelayOutcome::new(Status::TempFail, "Internal error", "-"));
            }
            return;
        };
        let mut touched: Vec<RouteKey> = Vec::new();
        if !jobs.is_empty() {
            self.used.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        for (key, spec, job) in jobs {
            let state = routes.entry(key.clone()).or_insert_with(|| RouteState {
                spec: spec.clone(),
                queue: VecDeque::new(),
                workers: 0,
                idle: 0,
                last_connect: None,
                retry_pending: false,
                notify: Arc::new(Notify::new()),
            });
            state.spec = spec;
            state.queue.push_back(job);
            if !touched.contains(&key) {
                touched.push(key);
            }
        }
        for key in touched {
            self.dispatch(&mut routes, &key);
        }
    }

    /// Hand the queue to an idle session, or open another when the limits allow. A
    /// route held back by a limit is looked at again when its delay is over, or every
    /// second while sessions of others fill a shared limit.
    fn dispatch(self: &Arc<Self>, routes: &mut HashMap<RouteKey, RouteState>, key: &RouteKey) {
        let Some(state) = routes.get(key) else {
            return;
        };
        if state.queue.is_empty() {
            return;
        }
        if state.idle > 0 {
            state.notify.notify_one();
            return;
        }
        let limits = state.spec.limits;
        if state.workers >= limits.max_conn_per_route.min(limits.max_conn_per_connector) {
            return;
        }
        let domain = state.spec.domain.clone();
        // Sessions shared with other routes: same relay, same domain, same source.
        let (mut relay, mut same_domain, mut source) = (0, 0, 0);
        for (k, st) in routes.iter() {
            if k.dispatcher == key.dispatcher && k.url == key.url && k.domain == key.domain {
                relay += st.workers;
            }
            if st.spec.domain == domain {
                same_domain += st.workers;
            }
            if k.source == key.source {
                source += st.workers;
            }
        }
        let full = relay >= limits.max_conn_per_relay
            || same_domain >= limits.max_conn_per_domain
            || source >= limits.max_conn_per_source;
        let now = Instant::now();
        let due = self.spacing_due(key, &state.spec);
        let wait_until = if full {
            tracing::debug!("debug: mta: limits reached for {domain}");
            Some(now + Duration::from_secs(1))
        } else {
            due.filter(|d| *d > now)
        };
        let Some(state) = routes.get_mut(key) else {
            return;
        };
        if let Some(until) = wait_until {
            if !state.retry_pending {
                state.retry_pending = true;
                let me = self.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(until).await;
                    if let Ok(mut routes) = me.routes.lock() {
                        if let Some(state) = routes.get_mut(&key) {
                            state.retry_pending = false;
                        }
                        me.dispatch(&mut routes, &key);
                    }
                });
            }
            return;
        }
        state.workers += 1;
        state.last_connect = Some(now);
        self.note_opened(key, &state.spec, now);
        let me = self.clone();
        let key = key.clone();
        let spec = state.spec.clone();
        let notify = state.notify.clone();
        tokio::spawn(async move { me.worker(key, spec, notify).await });
    }

    /// The next transaction: the first waiting envelope and those of the same message
    /// with the same sender.
    fn take_batch(spec: &RouteSpec, state: &mut RouteState) -> Vec<(Job, String)> {
        let Some(first) = state.queue.pop_front() else {
            return Vec::new();
        };
        let msgid = first.envelope.id.msgid();
        let sender = envelope_sender(spec, &first.envelope);
        let mut batch = vec![(first, sender.clone())];
        let mut rest = VecDeque::with_capacity(state.queue.len());
        while let Some(job) = state.queue.pop_front() {
            if batch.len() < MAX_RCPT_PER_TRANSACTION
                && job.envelope.id.msgid() == msgid
                && envelope_sender(spec, &job.envelope) == sender
            {
                batch.push((job, sender.clone()));
            } else {
                rest.push_back(job);
            }
        }
        state.queue = rest;
        batch
    }

    /// One session of a route: opened when there is mail, closed after
    /// `session-mail-max` transactions or when idle past `session-keepalive`.
    async fn worker(self: Arc<Self>, key: RouteKey, spec: Arc<RouteSpec>, notify: Arc<Notify>) {
        let mut session: Option<Session> = None;
        let mut opened_before = false;
        let mut transactions = 0usize;
        let mut idle_since: Option<Instant> = None;
        loop {
            enum Next {
                Batch(Vec<(Job, String)>),
                Idle,
                Exit,
            }
            let next = match self.routes.lock() {
                Err(_) => Next::Exit,
                Ok(mut routes) => match routes.get_mut(&key) {
                    None => Next::Exit,
                    Some(state) => {
                        let batch = Self::take_batch(&spec, state);
                        if !batch.is_empty() {
                            idle_since = None;
                            Next::Batch(batch)
                        } else {
                            // Only the last session of a route waits for more mail.
                            let waited = idle_since.map_or(Duration::ZERO, |t| t.elapsed());
                            let keep = session.is_some()
                                && state.workers == 1
                                && waited < spec.limits.session_keepalive;
                            if keep {
                                state.idle += 1;
                                Next::Idle
                            } else {
                                state.workers = state.workers.saturating_sub(1);
                                if state.workers == 0 && state.queue.is_empty() {
                                    routes.remove(&key);
                                }
                                Next::Exit
                            }
                        }
                    }
                },
            };
            let batch = match next {
                Next::Batch(b) => b,
                Next::Exit => {
                    if let Some(s) = session.take() {
                        s.close().await;
                    }
                    return;
                }
                Next::Idle => {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    let until = since + spec.limits.session_keepalive;
                    tokio::select! {
                        _ = notify.notified() => {}
                        _ = tokio::time::sleep_until(until) => {}
                    }
                    if let Ok(mut routes) = self.routes.lock()
                        && let Some(state) = routes.get_mut(&key)
                    {
                        state.idle = state.idle.saturating_sub(1);
                    }
                    continue;
                }
            };
            let running = Running::new(&self, batch.len());
            // A session for the batch. The worker's first one was allowed by `dispatch`;
            // a later one (after `session-mail-max`, or a lost session) waits for the
            // `conn-delay-*` spacings like any other.
            if session.is_none() {
                transactions = 0;
                if opened_before {
                    self.wait_for_spacing(&key, &spec).await;
                }
                opened_before = true;
                let opened = self.open_session(&key, &spec).await;
                match opened {
                    Ok(s) => session = Some(s),
                    Err(outcome) => {
                        // The route failed: everything waiting on it shares the outcome.
                        let mut jobs: Vec<Job> = batch.into_iter().map(|(j, _)| j).collect();
                        if let Ok(mut routes) = self.routes.lock()
                            && let Some(state) = routes.get_mut(&key)
                        {
                            jobs.extend(state.queue.drain(..));
                            state.workers = state.workers.saturating_sub(1);
                            if state.workers == 0 {
                                routes.remove(&key);
                            }
                        }
                        for j in jobs {
                            let _ = j.reply.send(outcome.clone());
                        }
                        return;
                    }
                }
            }
            // The outcomes go out as they are known: refused recipients at once.
            let mut replies = Vec::with_capacity(batch.len());
            let batch: Vec<(Envelope, String)> = batch
                .into_iter()
                .map(|(job, sender)| {
                    replies.push(Some(job.reply));
                    (job.envelope, sender)
                })
                .collect();
            let msgid = batch[0].0.id.msgid();
            let content = tokio::fs::read((spec.message_file)(msgid))
                .await
                .and_then(crate::queue::crypto::open_queue_bytes);
            let results = match &content {
                Ok(content) => {
                    let tx = Transaction {
                        msgid: msgid.to_string(),
                        sender: &batch[0].1,
                        ret: batch[0].0.dsn.ret,
                        envid: &batch[0].0.dsn.envid,
                        rcpts: batch
                            .iter()
                            .map(|(e, _)| Recipient {
                                dest: &e.dest,
                                notify: e.dsn.notify,
                                orcpt: &e.dsn.orcpt,
                                evpid: e.id.to_string(),
                            })
                            .collect(),
                        content,
                    };
                    transactions += 1;
                    let Some(s) = session.as_mut() else {
                        continue;
                    };
                    let by = SentBy::of(Some(s), &spec);
                    let mut results = s
                        .transaction_reporting(&tx, &mut |i, r| by.send(&mut replies, i, r))
                        .await;
                    // A reused connection the next hop closed meanwhile: once more on a
                    // new one.
                    if s.lost_before_mail()
                        && s.sent() > 0
                        && let Some(old) = session.take()
                    {
                        old.close().await;
                        self.wait_for_spacing(&key, &spec).await;
                        if let Ok(mut fresh) = self.open_session(&key, &spec).await {
                            transactions = 1;
                            let by = SentBy::of(Some(&fresh), &spec);
                            results = fresh
                                .transaction_reporting(&tx, &mut |i, r| by.send(&mut replies, i, r))
                                .await;
                            session = Some(fresh);
                        }
                    }
                    results
                }
                Err(err) => {
                    vec![(Status::TempFail, format!("Cannot read message: {err}")); batch.len()]
                }
            };
            let by = SentBy::of(session.as_ref(), &spec);
            for (i, result) in results.iter().enumerate() {
                by.send(&mut replies, i, result);
            }
            drop(running);
            if session
                .as_ref()
                .is_some_and(|s| !s.usable() || transactions >= spec.limits.session_mail_max)
                && let Some(s) = session.take()
            {
                s.close().await;
            }
            // `session-transaction-delay`: the session rests before its next transaction.
            let rest = spec.limits.session_transaction_delay;
            if session.is_some() && !rest.is_zero() {
                tracing::debug!(
                    "debug: mta: waiting for {}s before next transaction",
                    rest.as_secs()
                );
                tokio::time::sleep(rest).await;
            }
        }
    }

    /// Waits until the `conn-delay-connector`, `-domain` and `-source` spacings let a
    /// session of `key` open, and records it as opened.
    async fn wait_for_spacing(&self, key: &RouteKey, spec: &RouteSpec) {
        // Bounded: each round waits for the latest spacing; others' sessions may move it.
        for _ in 0..16 {
            match self.spacing_due(key, spec).filter(|d| *d > Instant::now()) {
                Some(until) => tokio::time::sleep_until(until).await,
                None => break,
            }
        }
        self.note_opened(key, spec, Instant::now());
    }

    /// When the `conn-delay-connector`, `-domain` and `-source` spacings let another
    /// session of `key` open (`None`: no session they count was opened yet).
    fn spacing_due(&self, key: &RouteKey, spec: &RouteSpec) -> Option<Instant> {
        self.recent
            .lock()
            .ok()
            .and_then(|r| r.due(key, &spec.domain, &spec.limits))
    }

    /// A session of `key` opens at `now`: the spacings count from here.
    fn note_opened(&self, key: &RouteKey, spec: &RouteSpec, now: Instant) {
        if let Ok(mut r) = self.recent.lock() {
            r.opened(key, &spec.domain, now);
        }
    }

    /// Opens a session on the route: its hops, then the first that answers.
    async fn open_session(
        &self,
        key: &RouteKey,
        spec: &RouteSpec,
    ) -> Result<Session, RelayOutcome> {
        // As 6.8's `mta_connector_to_text` names the relay from this source.
        let connector = format!(
            "[connector:{}->{},0x0]",
            super::relay::source_text(spec.source),
            spec.relay_text
        );
        let hops = self
            .relayer
            .route(
                &spec.action,
                key.url.as_deref(),
                &key.domain,
                Some(&connector),
            )
            .await?;
        let limits = ConnectLimits {
            family: spec.limits.family,
            per_host: Some((&self.hosts, spec.limits.max_conn_per_host)),
            relay_name: Some(&spec.domain),
            connector: Some(&connector),
            delays: RouteDelays {
                host: spec.limits.conn_delay_host,
                route: spec.limits.conn_delay_route,
                reconn: spec.limits.reconn_delay_route,
            },
        };
        let mut session = self
            .relayer
            .connect(&spec.action, &hops, spec.auth.as_ref(), spec.source, limits)
            .await?;
        session.set_max_failures(spec.limits.max_failures_per_session);
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, parse::Options, system::RealSystem};

    fn config(text: &str) -> Config {
        let opts = Options {
            defines: vec![],
            hostname: Some("mx.test".into()),
        };
        let c = config::check_text("t.conf", text.as_bytes(), &opts, &RealSystem);
        c.config
            .unwrap_or_else(|| panic!("{}", c.diagnostics.render(false, &|_| None)))
    }

    #[test]
    fn per_domain_limits_start_from_the_general_ones_declared_before() {
        let cfg = config(
            "mta limit session-mail-max 7 max-conn-per-route 3\n\
             mta limit for domain far.test inet6 session-keepalive 2 max-conn-per-host 1\n\
             mta limit inet4 session-mail-max 9\n\
             action \"r\" relay\n\
             match for any action \"r\"\n",
        );
        let d = MtaLimits::for_domain(&cfg, "elsewhere.test");
        assert_eq!(
            d,
            MtaLimits {
                session_mail_max: 9,
                max_conn_per_route: 3,
                family: Family::Inet4,
                ..MtaLimits::default()
            }
        );
        let f = MtaLimits::for_domain(&cfg, "FAR.test");
        assert_eq!(
            f,
            MtaLimits {
                session_mail_max: 7,
                max_conn_per_route: 3,
                max_conn_per_host: 1,
                session_keepalive: Duration::from_secs(2),
                family: Family::Inet6,
                ..MtaLimits::default()
            }
        );
        assert_eq!(
            MtaLimits::default(),
            MtaLimits {
                max_conn_per_host: 10,
                max_conn_per_route: 5,
                session_mail_max: 100,
                session_keepalive: Duration::from_secs(10),
                conn_delay_relay: Duration::from_secs(2),
                session_transaction_delay: Duration::ZERO,
                max_failures_per_session: 25,
                max_conn_per_connector: 20,
                max_conn_per_relay: 100,
                max_conn_per_domain: 100,
                max_conn_per_source: 100,
                conn_delay_connector: Duration::ZERO,
                conn_delay_domain: Duration::ZERO,
                conn_delay_source: Duration::ZERO,
                conn_delay_host: Duration::ZERO,
                conn_delay_route: Duration::from_secs(5),
                reconn_delay_route: Duration::from_secs(3),
                family: Family::Any,
            }
        );
        let cfg = config(
            "mta limit max-conn-per-connector 2 max-conn-per-relay 3 max-conn-per-domain 4
             mta limit max-conn-per-source 5 conn-delay-connector 6 conn-delay-domain 7
             mta limit conn-delay-source 8
             action \"r\" relay
             match for any action \"r\"
",
        );
        let l = MtaLimits::for_domain(&cfg, "x.test");
        assert_eq!(
            (
                l.max_conn_per_connector,
                l.max_conn_per_relay,
                l.max_conn_per_domain,
                l.max_conn_per_source
            ),
            (2, 3, 4, 5)
        );
        assert_eq!(
            (
                l.conn_delay_connector.as_secs(),
                l.conn_delay_domain.as_secs(),
                l.conn_delay_source.as_secs()
            ),
            (6, 7, 8)
        );
        let cfg = config(
            "mta limit session-transaction-delay 3
             action \"r\" relay
             match for any action \"r\"
",
        );
        assert_eq!(
            MtaLimits::for_domain(&cfg, "x.test").session_transaction_delay,
            Duration::from_secs(3)
        );
    }

    #[test]
    fn srs_applies_to_forwarded_mail_only() {
        let spec = RouteSpec {
            action: RelayAction::default(),
            domain: "far.test".into(),
            relay_text: "[relay:far.test,smtp]".into(),
            source: None,
            limits: MtaLimits::default(),
            auth: Box::new(|_| None),
            srs: Some(SrsKeys {
                key: "k".into(),
                backup: None,
                ttl_days: 4,
            }),
            message_file: Box::new(|_| std::path::PathBuf::new()),
        };
        let id = crate::queue::Evpid::new(0x1234_5678_9abc_def0).unwrap();
        let target = crate::queue::Target::Mta(Default::default());
        let direct = Envelope::new(
            id,
            target.clone(),
            "a@o.test",
            "b@far.test",
            "b@far.test",
            0,
        );
        assert_eq!(envelope_sender(&spec, &direct), "a@o.test");
        let fwd = Envelope::new(id, target.clone(), "a@o.test", "b@me.test", "c@far.test", 0);
        let s = envelope_sender(&spec, &fwd);
        assert!(
            s.starts_with("SRS0=") && s.ends_with("=o.test=a@me.test"),
            "{s}"
        );
        let null = Envelope::new(id, target, "", "b@me.test", "c@far.test", 0);
        assert_eq!(envelope_sender(&spec, &null), "");
    }
}
