//! The delivery loop: the scheduler hands out envelopes that are due, the local agents
//! deliver them, and the queue records the outcome (envelope removed on success, retry
//! bookkeeping on a temporary failure).
//!
//! New envelopes arrive through [`Runner::submit`] right after their message is committed;
//! at start-up the envelopes the queue recovered are scheduled. Relay envelopes go to the
//! SMTP client of [`super::relay`].
//!
//! A permanent failure, an expiry or a due delay warning queues a report for the sender
//! ([`Runner::bounce`]): a new message from `<>`, routed through the rules like local mail.
//! The control socket steers the loop through the methods at the end of this file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, Semaphore};
use tracing::{info, warn};

use super::DeliveryAgent;
use super::log::{MdaLogEntry, mda_delivery_line};
use super::mta::{Job, MtaLimits, Pool, RouteKey, RouteSpec};
use super::relay::{RelayOutcome, Relayer};
use super::request::{
    Account, DeliveryRequest, EnvelopeInfo, LmtpRecipient, MessageSource, Method,
};
use super::result::{DeliveryResult, Status};
use crate::config::model::{ActionMethod, LocalMethod};
use crate::dns::Resolver;
use crate::expand::userbase::{SystemPasswd, TableUserbase, Userbase};
use crate::log::smtp_in;
use crate::queue::scheduler::{
    Action, EnvelopeStatus, ScheduleEntry, Scheduler, SchedulerConfig, TempFailure,
};
use crate::queue::{
    BounceKind, BounceTarget, DeliveryKind, Envelope, Evpid, MessageWriter, Msgid, QueueId, Spool,
    StatusCode, Target,
};
use crate::rules::RuleGraph;
use crate::table::Service;

/// How many deliveries run at once (OpenSMTPD's `mda limit max-session` default is 50).
const MAX_INFLIGHT: usize = 50;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The delivery side of the daemon.
pub struct Runner {
    graph: Arc<RuleGraph>,
    spool: Arc<Spool>,
    agent: DeliveryAgent,
    scheduler: Mutex<Scheduler>,
    wake: Notify,
    inflight: Arc<Semaphore>,
    mta: Arc<Pool>,
    /// Counters for `smtpctl show stats`.
    stats: DeliveryStats,
    /// Reports being gathered: (message, kind, delay, relay notice) → recipients so far.
    reports: Mutex<HashMap<(Msgid, BounceKind, u64, bool), PendingReport>>,
    /// The last relay result per destination domain (`smtpctl show hoststats`), with the
    /// envelopes deferred meanwhile (`mta max-deferred`).
    hoststats: Mutex<std::collections::BTreeMap<String, HostStat>>,
    /// Local deliveries at once (`mda limit max-session`).
    mda_sessions: Arc<Semaphore>,
    /// Local deliveries at once per user (`mda limit max-session-per-user`), by user.
    mda_users: Mutex<HashMap<String, Arc<Semaphore>>>,
    mda_per_user: usize,
}

/// `mda limit max-session`'s default (OpenSMTPD's).
const DEFAULT_MDA_SESSIONS: usize = 50;
/// `mda limit max-session-per-user`'s default (OpenSMTPD's).
const DEFAULT_MDA_PER_USER: usize = 7;

/// How long a domain's last relay result is kept (OpenSMTPD: 4 hours).
const HOSTSTAT_EXPIRY: u64 = 4 * 3600;
/// `mta max-deferred`'s default.
const DEFAULT_MAX_DEFERRED: usize = 100;

/// The last relay result for one destination domain.
struct HostStat {
    time: u64,
    status: String,
    /// Envelopes that failed temporarily since: scheduled again at once when the domain
    /// takes mail again (at most `mta max-deferred`).
    deferred: Vec<Evpid>,
}

/// How long the first failure of a message waits for others to share its report.
const REPORT_GATHERING: Duration = Duration::from_secs(1);

/// A report being gathered, and the deliveries waiting for it to be queued.
struct PendingReport {
    recipients: Vec<crate::queue::bounce::ReportedRecipient>,
    waiters: Vec<tokio::sync::oneshot::Sender<()>>,
}

/// Delivery outcomes counted since start (`smtpctl show stats`).
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Successful deliveries.
    pub ok: AtomicU64,
    /// Temporary failures.
    pub tempfail: AtomicU64,
    /// Permanent failures.
    pub permfail: AtomicU64,
    /// Envelopes expired.
    pub expired: AtomicU64,
    /// Envelopes removed by the administrator.
    pub removed: AtomicU64,
    /// Reports (bounces) queued.
    pub bounces: AtomicU64,
    /// Envelopes accepted (queued, or delivered before the reply).
    pub enqueued: AtomicU64,
    /// Failed envelopes being reported on (6.8's `bounce.envelope`).
    pub bounce_envelope: Gauge,
    /// Reports being written (`bounce.message`).
    pub bounce_message: Gauge,
    /// Reports being handed to the queue (`bounce.session`).
    pub bounce_session: Gauge,
    /// Envelopes in local delivery (`mda.envelope`).
    pub mda_envelope: Gauge,
    /// Local deliveries waiting for a slot of their user (`mda.pending`).
    pub mda_pending: Gauge,
    /// Local deliveries running (`mda.running`).
    pub mda_running: Gauge,
    /// Users with local deliveries running (`mda.user`).
    pub mda_user: Gauge,
    /// Envelopes of messages being committed (`scheduler.envelope.incoming`).
    pub incoming: Gauge,
    /// Envelopes being delivered or relayed (`scheduler.envelope.inflight`).
    pub inflight: Gauge,
    /// Envelopes being rescheduled after a temporary failure
    /// (`scheduler.ramqueue.update`).
    pub rescheduling: Gauge,
}

/// A gauge of `smtpctl show stats`: a value that goes up and down, listed once it has
/// changed (as OpenSMTPD lists its counters).
#[derive(Debug, Default)]
pub struct Gauge {
    value: AtomicU64,
    touched: std::sync::atomic::AtomicBool,
}

impl Gauge {
    /// Adds `n` until the returned guard is dropped.
    pub fn hold(&self, n: u64) -> GaugeHold<'_> {
        self.touched.store(true, Ordering::Relaxed);
        self.value.fetch_add(n, Ordering::Relaxed);
        GaugeHold { gauge: self, n }
    }

    /// The value, or `None` while it has never changed.
    pub fn get(&self) -> Option<u64> {
        self.touched
            .load(Ordering::Relaxed)
            .then(|| self.value.load(Ordering::Relaxed))
    }
}

/// `n` held on a [`Gauge`], given back when dropped.
#[derive(Debug)]
pub struct GaugeHold<'a> {
    gauge: &'a Gauge,
    n: u64,
}

impl Drop for GaugeHold<'_> {
    fn drop(&mut self) {
        self.gauge.value.fetch_sub(self.n, Ordering::Relaxed);
    }
}

impl Runner {
    pub fn new(
        graph: Arc<RuleGraph>,
        spool: Arc<Spool>,
        recovered: &[Envelope],
        resolver: Arc<dyn Resolver>,
        tls: crate::tls::TlsStore,
    ) -> Arc<Runner> {
        let cfg = &graph.config;
        let relayer = Relayer::new(resolver, tls, &cfg.hostname);
        let config = SchedulerConfig {
            default_ttl: cfg.queue.ttl.seconds,
            warn_intervals: if cfg.bounce_warn_interval.is_empty() {
                SchedulerConfig::default().warn_intervals
            } else {
                cfg.bounce_warn_interval.iter().map(|d| d.seconds).collect()
            },
        };
        let mut scheduler = Scheduler::new(config);
        for e in recovered {
            scheduler.insert(schedule_entry(cfg, e));
        }
        trace_scheduled(recovered, Scheduled::Walked);
        let agent = DeliveryAgent::new().with_subaddress_delimiter(cfg.smtp.sub_addr_delim);
        let limit = |key: &str, default: usize| {
            cfg.mda_limit(key)
                .and_then(|v| usize::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        let mda_sessions = limit("max-session", DEFAULT_MDA_SESSIONS);
        let mda_per_user = limit("max-session-per-user", DEFAULT_MDA_PER_USER);
        Arc::new(Runner {
            graph,
            spool,
            agent,
            scheduler: Mutex::new(scheduler),
            wake: Notify::new(),
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
            mta: Pool::new(relayer),
            stats: DeliveryStats::default(),
            reports: Mutex::new(HashMap::new()),
            hoststats: Mutex::new(std::collections::BTreeMap::new()),
            mda_sessions: Arc::new(Semaphore::new(mda_sessions)),
            mda_users: Mutex::new(HashMap::new()),
            mda_per_user,
        })
    }

    /// Pause or resume an agent (`smtpd -P mda|mta`, `smtpctl pause`).
    pub fn set_paused(&self, kind: DeliveryKind, paused: bool) {
        crate::log::scheduler_trace(|| {
            let agent = if kind == DeliveryKind::Mta {
                "mta"
            } else {
                "mda"
            };
            let verb = if paused { "pausing" } else { "resuming" };
            format!("{verb} {agent}")
        });
        if let Ok(mut s) = self.scheduler.lock() {
            if paused {
                s.pause_agent(kind);
            } else {
                s.resume_agent(kind);
            }
        }
        self.wake.notify_one();
    }

    /// Schedule envelopes that were just committed.
    pub fn submit(&self, envelopes: &[Envelope]) {
        self.stats
            .enqueued
            .fetch_add(envelopes.len() as u64, Ordering::Relaxed);
        if let Ok(mut s) = self.scheduler.lock() {
            for e in envelopes {
                s.insert(schedule_entry(&self.graph.config, e));
            }
        }
        trace_scheduled(envelopes, Scheduled::Committed);
        self.wake.notify_one();
    }

    /// Run forever: deliver what is due, sleep until the next wake-up or a new envelope.
    pub async fn run(self: Arc<Self>) {
        loop {
            let actions = match self.scheduler.lock() {
                Ok(mut s) => s.poll(now(), MAX_INFLIGHT),
                Err(_) => Vec::new(),
            };
            // Relayed envelopes of one message go to the sessions together, so that they
            // can share a transaction.
            let mut relayed: Vec<(Msgid, Vec<Evpid>)> = Vec::new();
            for a in &actions {
                if let Action::Deliver {
                    evpid,
                    kind: DeliveryKind::Mta,
                } = a
                {
                    match relayed.iter_mut().find(|(m, _)| *m == evpid.msgid()) {
                        Some((_, v)) => v.push(*evpid),
                        None => relayed.push((evpid.msgid(), vec![*evpid])),
                    }
                }
            }
            for (_, evpids) in relayed {
                let n = evpids.len().clamp(1, MAX_INFLIGHT) as u32;
                let permit = match self.inflight.clone().acquire_many_owned(n).await {
                    Ok(p) => p,
                    Err(_) => return,
                };
                let me = self.clone();
                tokio::spawn(async move {
                    let inflight = me.stats.inflight.hold(evpids.len() as u64);
                    me.clone().relay_message(evpids).await;
                    drop(inflight);
                    drop(permit);
                });
            }
            let polled = actions.len();
            for a in actions {
                match a {
                    Action::Deliver {
                        kind: DeliveryKind::Mta,
                        ..
                    } => {}
                    Action::Deliver { evpid, kind } => {
                        let slots = if kind == DeliveryKind::Mda {
                            &self.mda_sessions
                        } else {
                            &self.inflight
                        };
                        let permit = match slots.clone().acquire_owned().await {
                            Ok(p) => p,
                            Err(_) => return,
                        };
                        let me = self.clone();
                        tokio::spawn(async move {
                            let inflight = me.stats.inflight.hold(1);
                            me.deliver(evpid, kind).await;
                            drop(inflight);
                            drop(permit);
                        });
                    }
                    Action::Expire { evpid, .. } => {
                        // Its report may wait for others on the same message.
                        let me = self.clone();
                        tokio::spawn(async move { me.expire(evpid).await });
                    }
                }
            }
            let next = self.scheduler.lock().ok().and_then(|s| s.next_wakeup());
            // More is due already (a backlog larger than one poll): go on at once. The
            // in-flight permits above are the back-pressure. Only after a poll that found
            // work, so that due envelopes of a paused agent cannot make this spin.
            if polled > 0 && next.is_some_and(|t| t <= now()) {
                continue;
            }
            let sleep = match next {
                Some(t) => Duration::from_secs(t.saturating_sub(now()).max(1)),
                None => Duration::from_secs(60),
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    async fn load(&self, evpid: Evpid) -> Option<Envelope> {
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || spool.load_envelope(evpid)).await {
            Ok(Ok(e)) => Some(e),
            Ok(Err(e)) => {
                warn!("warn: queue: envelope {evpid}: {e}");
                None
            }
            Err(_) => None,
        }
    }

    async fn expire(&self, evpid: Evpid) {
        // The scheduler has let it go already (see `Scheduler::poll`); in 6.8 the queue
        // acknowledges that before it loads, reports and deletes the envelope.
        crate::log::scheduler_trace(|| format!("queue ack removal of evp:{evpid}"));
        if let Some(e) = self.load(evpid).await {
            let prefix = if e.kind() == DeliveryKind::Mta {
                "relay"
            } else {
                "delivery"
            };
            info!(
                "{prefix}: Expire for {evpid}: from=<{}>, to=<{}>, rcpt=<{}>, delay={}, stat=Envelope expired",
                e.sender,
                e.dest,
                if e.rcpt == e.dest {
                    "-".to_string()
                } else {
                    e.rcpt.clone()
                },
                super::log::duration_to_text(now().saturating_sub(e.ctime) as i64)
            );
            self.stats.expired.fetch_add(1, Ordering::Relaxed);
            // The report OpenSMTPD's later versions send: a failure with 5.4.7 (6.8 sends a
            // misleading "delayed" notice with 4.4.7 and then drops the message).
            self.bounce(
                &e,
                BounceKind::Failed,
                0,
                StatusCode { class: 5, code: 47 },
                "Envelope expired",
            )
            .await;
        }
        let spool = self.spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.remove_envelope(evpid)).await;
        if let Ok(mut s) = self.scheduler.lock() {
            s.delivered(evpid);
        }
    }

    /// Build the request of a local delivery, or the reason it cannot be made.
    fn request(&self, e: &Envelope) -> Result<DeliveryRequest, (Status, String)> {
        let Target::Mda(t) = &e.target else {
            return Err((Status::TempFail, "not a local delivery".into()));
        };
        let cfg = &self.graph.config;
        let Some(action) = cfg.action_named(&e.dispatcher) else {
            return Err((
                Status::TempFail,
                format!("no such dispatcher: {}", e.dispatcher),
            ));
        };
        let ActionMethod::Local(local) = &action.method else {
            return Err((Status::TempFail, "dispatcher is not local".into()));
        };
        // The user's record comes from the action's userbase, or the system.
        let found = match local.userbase {
            Some(id) => TableUserbase {
                compiled: &self.graph.table(id),
            }
            .lookup(&t.user),
            None => SystemPasswd.lookup(&t.user),
        };
        let user = match found {
            Ok(Some(u)) => u,
            Ok(None) => return Err((Status::PermFail, "Permanent failure in user lookup".into())),
            Err(_) => return Err((Status::TempFail, "Temporary failure in user lookup".into())),
        };
        let userinfo = Account {
            name: user.name.clone(),
            uid: user.uid,
            gid: user.gid,
            home: user.home.clone(),
        };
        let run_as = match &local.user {
            Some(name) => match SystemPasswd.lookup(name) {
                Ok(Some(u)) => Some(Account {
                    name: u.name,
                    uid: u.uid,
                    gid: u.gid,
                    home: u.home,
                }),
                Ok(None) => {
                    return Err((
                        Status::PermFail,
                        format!("delivery user '{name}' does not exist"),
                    ));
                }
                Err(_) => {
                    return Err((Status::TempFail, "Temporary failure in user lookup".into()));
                }
            },
            None => None,
        };
        let method = if !t.exec.is_empty() {
            Method::Pipe {
                command: t.exec.clone(),
            }
        } else if !t.path.is_empty() {
            Method::File {
                path: t.path.clone(),
            }
        } else {
            match &local.method {
                LocalMethod::Mbox => Method::Mbox,
                LocalMethod::Maildir { path, junk } => Method::Maildir {
                    path: path.clone(),
                    junk: *junk,
                },
                LocalMethod::Lmtp {
                    destination,
                    rcpt_to,
                } => Method::Lmtp {
                    destination: destination.clone(),
                    rcpt_to: if *rcpt_to {
                        LmtpRecipient::Recipient
                    } else {
                        LmtpRecipient::User
                    },
                },
                LocalMethod::Mda(command) => Method::Mda {
                    command: command.clone(),
                },
                LocalMethod::ForwardOnly => Method::ForwardOnly,
                LocalMethod::ExpandOnly => Method::ExpandOnly,
            }
        };
        let wrapper = local.wrapper.as_ref().and_then(|w| {
            cfg.mda_wrappers
                .iter()
                .find(|(n, _)| n == w)
                .map(|(_, c)| c.clone())
        });
        Ok(DeliveryRequest {
            method,
            wrapper,
            userinfo,
            run_as,
            envelope: EnvelopeInfo {
                evpid: e.id.get(),
                sender: e.sender.clone(),
                rcpt: e.rcpt.clone(),
                dest: e.dest.clone(),
                subaddress: t.subaddress.clone(),
            },
            message: MessageSource::Path(self.spool.layout().message_file(e.id.msgid())),
        })
    }

    async fn deliver(&self, evpid: Evpid, kind: DeliveryKind) {
        let Some(mut e) = self.load(evpid).await else {
            if let Ok(mut s) = self.scheduler.lock() {
                s.delivered(evpid);
            }
            return;
        };
        if kind != DeliveryKind::Mda {
            // Relayed mail and bounces wait in the queue for outbound delivery.
            self.temporary(&mut e, "Outbound delivery is not available yet")
                .await;
            return;
        }
        let user = match &e.target {
            Target::Mda(t) => t.user.clone(),
            _ => String::new(),
        };
        let _envelope = self.stats.mda_envelope.hold(1);
        let _user = self.stats.mda_user.hold(0);
        // `mda limit max-session-per-user`: this user's deliveries at once.
        let slot = self.user_slot(&user);
        let pending = self.stats.mda_pending.hold(1);
        let _user_slot = slot.acquire_owned().await;
        drop(pending);
        let running = self.stats.mda_running.hold(1);
        let result = match self.request(&e) {
            Ok(req) => self.agent.deliver(req).await,
            Err((status, text)) => super::result::DeliveryResult::refused(status, 75, &text),
        };
        drop(running);
        let entry = MdaLogEntry {
            group_id: evpid.get(),
            evpid: evpid.get(),
            sender: &e.sender,
            dest: &e.dest,
            rcpt: &e.rcpt,
            user: &user,
            delay_secs: now().saturating_sub(e.ctime) as i64,
        };
        info!("{}", mda_delivery_line(&entry, &result));
        self.settle(
            e,
            result.status,
            StatusCode { class: 5, code: 30 },
            &result.error,
        )
        .await;
    }

    /// The per-user delivery slots of `user` (`mda limit max-session-per-user`). Users
    /// with no delivery running are forgotten once the table grows.
    fn user_slot(&self, user: &str) -> Arc<Semaphore> {
        let Ok(mut users) = self.mda_users.lock() else {
            return Arc::new(Semaphore::new(self.mda_per_user));
        };
        if users.len() >= 1024 && !users.contains_key(user) {
            users.retain(|_, s| Arc::strong_count(s) > 1);
        }
        users
            .entry(user.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.mda_per_user)))
            .clone()
    }

    /// Relay attempts for envelopes of one message: each goes to the session of its route,
    /// and its outcome is logged and recorded as it comes back.
    async fn relay_message(self: Arc<Self>, evpids: Vec<Evpid>) {
        let mut jobs = Vec::new();
        let mut waiting = Vec::new();
        for evpid in evpids {
            let Some(mut e) = self.load(evpid).await else {
                if let Ok(mut s) = self.scheduler.lock() {
                    s.delivered(evpid);
                }
                continue;
            };
            if !matches!(e.target, Target::Mta(_)) {
                self.temporary(&mut e, "Outbound delivery is not available yet")
                    .await;
                continue;
            }
            match self.route_of(&e) {
                Ok((key, spec)) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    // OpenSMTPD logs the sender as announced (`mail-from`, SRS).
                    let announced = super::mta::envelope_sender(&spec, &e);
                    jobs.push((
                        key,
                        spec,
                        Job {
                            envelope: e.clone(),
                            reply: tx,
                        },
                    ));
                    waiting.push((e, announced, rx));
                }
                Err(RouteError::Outcome(outcome)) => {
                    let sender = e.sender.clone();
                    self.relayed(e, &sender, outcome).await;
                }
                Err(RouteError::NoSmarthost) => {
                    // As 6.8's `mta_on_smarthost`: no `mta delivery` line, a retry later.
                    warn!("warn: Failed to retrieve smarthost for envelope {}", e.id);
                    self.temporary(&mut e, "Cannot retrieve smarthost").await;
                }
            }
        }
        self.mta.enqueue_all(jobs);
        let mut finishing = tokio::task::JoinSet::new();
        for (e, announced, rx) in waiting {
            let me = self.clone();
            finishing.spawn(async move {
                let outcome = rx
                    .await
                    .unwrap_or_else(|_| RelayOutcome::new(Status::TempFail, "Internal error", "-"));
                me.relayed(e, &announced, outcome).await;
            });
        }
        while finishing.join_next().await.is_some() {}
    }

    /// The route of a relayed envelope: its key (with the source address chosen, `src`)
    /// and how its sessions are opened. `Err` when it cannot be relayed at all.
    fn route_of(&self, e: &Envelope) -> Result<(RouteKey, Arc<RouteSpec>), RouteError> {
        let evpid = e.id;
        let cfg = &self.graph.config;
        match cfg.action_named(&e.dispatcher).map(|a| &a.method) {
            Some(ActionMethod::Relay(action)) => {
                let domain = e.dest.rsplit_once('@').map_or("", |(_, d)| d);
                // `host` wins; then the `domain` mapping; else the MX of the domain. A
                // `host` or `domain` table that gives no relay (a domain the mapping does
                // not hold, a failed lookup) defers the envelope, as in 6.8.
                let url: Option<String> = match (action.host, action.domain) {
                    (Some(t), _) => Some(
                        self.entry_in_turn(t, evpid.get(), Service::Relayhost)
                            .ok_or(RouteError::NoSmarthost)?,
                    ),
                    (None, Some(t)) => match self.graph.table(t).get(Service::Relayhost, domain) {
                        Ok(Some(v)) => Some(v.into_owned()),
                        Ok(None) => return Err(RouteError::NoSmarthost),
                        Err(crate::table::LookupError(why)) => {
                            warn!(
                                "warn: table {}: lookup of {domain} failed: {why}",
                                self.graph.table(t).name
                            );
                            return Err(RouteError::NoSmarthost);
                        }
                    },
                    (None, None) => None,
                };
                let auth_table = action.auth;
                let graph = self.graph.clone();
                let auth = move |label: &str| {
                    auth_table.and_then(|t| {
                        graph
                            .table(t)
                            .get(Service::Credentials, label)
                            .ok()
                            .flatten()
                            .map(std::borrow::Cow::into_owned)
                    })
                };
                // Limits and pauses follow the smarthost's name, or the destination domain.
                let limit_domain = url
                    .as_deref()
                    .and_then(super::relay::parse_relay_url)
                    .map_or_else(|| domain.to_ascii_lowercase(), |u| u.host);
                // `src`: a source address taken in turn, passing over those paused for
                // this destination; `helo-src`: the name announced from it.
                let source = match action.src {
                    None => None,
                    Some(t) => self.source_in_turn(t, evpid, &limit_domain)?,
                };
                let mut action = action.clone();
                if let (Some(src), Some(t)) = (source, action.helo_src)
                    && let Ok(Some(name)) =
                        self.graph.table(t).get(Service::Addrname, &src.to_string())
                {
                    action.helo = Some(name.into_owned());
                }
                let srs = if action.srs {
                    crate::srs::SrsKeys::from_config(&cfg.srs)
                } else {
                    None
                };
                let layout = self.spool.layout().clone();
                let relay_text = super::mta::relay_text(
                    url.as_deref(),
                    &domain.to_ascii_lowercase(),
                    &action,
                    cfg,
                );
                let spec = Arc::new(RouteSpec {
                    limits: MtaLimits::for_domain(cfg, &limit_domain),
                    domain: limit_domain,
                    relay_text,
                    action,
                    source,
                    auth: Box::new(auth),
                    srs,
                    message_file: Box::new(move |m| layout.message_file(m)),
                });
                let key = RouteKey {
                    dispatcher: e.dispatcher.clone(),
                    domain: if url.is_some() {
                        String::new()
                    } else {
                        domain.to_ascii_lowercase()
                    },
                    url,
                    source,
                };
                Ok((key, spec))
            }
            _ => Err(RelayOutcome::new(
                Status::TempFail,
                format!("no such relay dispatcher: {}", e.dispatcher),
                "-",
            )
            .into()),
        }
    }

    /// The source address of a relayed envelope from the `src` table `t`: its entries
    /// taken in turn, skipping those paused for `domain` (`smtpctl pause mta from ADDR for
    /// DOMAIN`). When every one is paused, the envelope waits, as 6.8's `All routes to
    /// destination blocked`.
    fn source_in_turn(
        &self,
        t: crate::config::model::TableId,
        evpid: Evpid,
        domain: &str,
    ) -> Result<Option<std::net::IpAddr>, RelayOutcome> {
        let table = self.graph.table(t);
        let tries = if table.is_external() {
            8
        } else {
            table.entries.len().clamp(1, 64)
        };
        let mut chosen = None;
        for k in 0..tries as u64 {
            let Some(addr) = self
                .entry_in_turn(t, evpid.get().wrapping_add(k), Service::Source)
                .and_then(|k| k.trim_matches(['[', ']']).parse::<std::net::IpAddr>().ok())
            else {
                continue;
            };
            if !self.mta.is_blocked(addr, domain) {
                return Ok(Some(addr));
            }
            chosen = Some(addr);
        }
        match chosen {
            None => Ok(None),
            Some(_) => Err(RelayOutcome::new(
                Status::TempFail,
                "All routes to destination blocked",
                domain,
            )),
        }
    }

    /// A key of table `t` chosen in turn by envelope (`host <table>`, `src <table>`): the
    /// envelopes of a route spread over its entries. An external table's program hands
    /// out its entries in turn itself (`FETCH`).
    fn entry_in_turn(
        &self,
        t: crate::config::model::TableId,
        turn: u64,
        service: Service,
    ) -> Option<String> {
        let table = self.graph.table(t);
        if table.is_external() {
            return match table.program().and_then(|p| p.fetch(service)) {
                Ok(v) => v,
                Err(crate::table::LookupError(e)) => {
                    tracing::warn!("warn: table {}: fetch failed: {e}", table.name);
                    None
                }
            };
        }
        let n = table.entries.len().max(1);
        table
            .entries
            .keys()
            .nth((turn % n as u64) as usize)
            .cloned()
    }

    /// Log the `mta delivery` line of a relay attempt (with the sender as announced to
    /// the next hop) and record its outcome.
    async fn relayed(&self, e: Envelope, announced: &str, outcome: RelayOutcome) {
        let evpid = e.id;
        let result = match outcome.status {
            Status::Ok => "Ok",
            Status::TempFail => "TempFail",
            Status::PermFail => "PermFail",
        };
        info!(
            "{} mta delivery evpid={evpid} from=<{}> to=<{}> rcpt=<{}> source=\"{}\" relay=\"{}\" delay={} result=\"{result}\" stat=\"{}\"",
            outcome.session,
            announced,
            e.dest,
            if e.rcpt == e.dest { "-" } else { &e.rcpt },
            outcome.source.as_deref().unwrap_or("-"),
            outcome.relay,
            super::log::duration_to_text(now().saturating_sub(e.ctime) as i64),
            outcome.stat
        );
        self.note_host(&e, &outcome);
        // A next hop that offered DSN took NOTIFY=SUCCESS over: no report from here.
        let mut e = e;
        if outcome.status == Status::Ok && outcome.next_hop_dsn {
            e.dsn.notify.0 &= !crate::queue::DsnNotify::SUCCESS;
        }
        self.settle(
            e,
            outcome.status,
            StatusCode { class: 5, code: 0 },
            &outcome.stat,
        )
        .await;
    }

    /// Keeps the relay result of `e`'s destination domain, as 6.8's `mta_hoststat_*` do:
    /// - the result of a session (a recipient refused, the transaction's end) becomes the
    ///   domain's last result; a success there schedules at once the envelopes kept back
    ///   for the domain (`mta max-deferred`);
    /// - an envelope deferred because the domain could not be reached at all (`Network
    ///   error on destination MXs`, or a session ended by `max-failures-per-session`) is
    ///   kept back, if the domain has a result already and fewer than `mta max-deferred`
    ///   are kept. A recipient the next hop deferred (a 4xx to RCPT: greylisting, a full
    ///   mailbox) waits for its own retry.
    fn note_host(&self, e: &Envelope, outcome: &RelayOutcome) {
        let domain = e
            .dest
            .rsplit_once('@')
            .map_or("", |(_, d)| d)
            .to_ascii_lowercase();
        if domain.is_empty() {
            return;
        }
        let max = self
            .graph
            .config
            .mta_max_deferred
            .map_or(DEFAULT_MAX_DEFERRED, |n| usize::try_from(n).unwrap_or(0));
        let from_session = outcome.session != super::relay::NO_SESSION;
        let unreachable = outcome.status == Status::TempFail
            && (outcome.stat == "Network error on destination MXs"
                || outcome.stat == "Too many consecutive errors, closing connection");
        let t = now();
        let release = {
            let Ok(mut stats) = self.hoststats.lock() else {
                return;
            };
            stats.retain(|_, h| h.time + HOSTSTAT_EXPIRY > t);
            if from_session {
                let h = stats.entry(domain.clone()).or_insert_with(|| HostStat {
                    time: t,
                    status: String::new(),
                    deferred: Vec::new(),
                });
                h.time = t;
                h.status = outcome.stat.clone();
            }
            match stats.get_mut(&domain) {
                None => Vec::new(),
                Some(h) => {
                    // The envelope was tried: it is no longer kept back.
                    h.deferred.retain(|id| *id != e.id);
                    if unreachable {
                        if h.deferred.len() < max {
                            h.deferred.push(e.id);
                        }
                        Vec::new()
                    } else if from_session && outcome.status == Status::Ok {
                        std::mem::take(&mut h.deferred)
                    } else {
                        Vec::new()
                    }
                }
            }
        };
        for evpid in release {
            self.schedule_now(Some(QueueId::Envelope(evpid)));
        }
    }

    /// `smtpctl show hoststats`: `DOMAIN|TIME|STATUS` per domain relayed to in the last
    /// four hours, in domain order.
    pub fn hoststats_text(&self) -> String {
        let t = now();
        let Ok(mut stats) = self.hoststats.lock() else {
            return String::new();
        };
        stats.retain(|_, h| h.time + HOSTSTAT_EXPIRY > t);
        stats
            .iter()
            .map(|(d, h)| format!("{d}|{}|{}\n", h.time, h.status))
            .collect()
    }

    /// Record the outcome of one delivery attempt, local or relayed: delivered or failed
    /// for good (a report to the sender first), the envelope leaves the queue; a temporary
    /// failure is rescheduled.
    async fn settle(&self, mut e: Envelope, status: Status, code: StatusCode, why: &str) {
        let evpid = e.id;
        match status {
            Status::Ok | Status::PermFail => {
                if status == Status::PermFail {
                    self.stats.permfail.fetch_add(1, Ordering::Relaxed);
                    // The report needs the message: it is queued before the envelope goes.
                    self.bounce(&e, BounceKind::Failed, 0, code, why).await;
                } else {
                    self.stats.ok.fetch_add(1, Ordering::Relaxed);
                    // NOTIFY=SUCCESS: a delivery report goes to the sender.
                    // Its line says what the envelope last recorded (a temporary failure
                    // before this delivery), nothing for most, as 6.8's.
                    if e.dsn.notify.has(crate::queue::DsnNotify::SUCCESS) && !e.sender.is_empty() {
                        let last = e.errorline.clone();
                        self.bounce(
                            &e,
                            BounceKind::Delivered,
                            0,
                            StatusCode { class: 2, code: 0 },
                            &last,
                        )
                        .await;
                    }
                }
                let spool = self.spool.clone();
                if let Ok(Err(err)) =
                    tokio::task::spawn_blocking(move || spool.remove_envelope(evpid)).await
                {
                    warn!("warn: queue: remove {evpid}: {err}");
                }
                crate::log::scheduler_trace(|| {
                    let how = if status == Status::Ok { "ok" } else { "fail" };
                    format!("deleting evp:{evpid} ({how})")
                });
                if let Ok(mut s) = self.scheduler.lock() {
                    s.delivered(evpid);
                }
            }
            Status::TempFail => self.temporary(&mut e, why).await,
        }
    }

    async fn temporary(&self, e: &mut Envelope, why: &str) {
        let _update = self.stats.rescheduling.hold(1);
        let t = now();
        // As 6.8 records it: class 4, and its agents' code (local delivery: 4.3.0 "other
        // mail system status"; relaying: 4.0.0).
        let code = if e.kind() == DeliveryKind::Mda { 30 } else { 0 };
        e.record_temporary_failure(t, why, Some(StatusCode { class: 4, code }));
        let copy = e.clone();
        let spool = self.spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.update_envelope(&copy)).await;
        crate::log::scheduler_trace(|| format!("updating evp:{}", e.id));
        let outcome = self
            .scheduler
            .lock()
            .ok()
            .and_then(|mut s| s.temp_failure(e.id, t));
        // The loop may be asleep with nothing due: it must learn the new retry time.
        self.wake.notify_one();
        self.stats.tempfail.fetch_add(1, Ordering::Relaxed);
        if let Some(TempFailure::Rescheduled(r)) = outcome
            && let Some(w) = r.delay_warning
        {
            self.delay_warning(e, w.delay, w.timestamp).await;
        }
        if let Some(TempFailure::Removed) = outcome {
            let spool = self.spool.clone();
            let id = e.id;
            let _ = tokio::task::spawn_blocking(move || spool.remove_envelope(id)).await;
        }
    }
}

/// Reports to senders (OpenSMTPD's `queue_bounce` and `bounce.c`) and the administrator's
/// view of the queue (`smtpctl`).
impl Runner {
    /// Queue a report about `failed` to its sender, unless OpenSMTPD would not: the sender
    /// is empty (`warn: queue: no return path!`), the envelope is itself a report
    /// (`warn: queue: double bounce!`), or `NOTIFY=NEVER` was asked for.
    ///
    /// The report is a new message with the null sender, routed like mail submitted
    /// locally (origin `local`, authenticated) through the rules and expansion, and
    /// scheduled at once.
    pub async fn bounce(
        &self,
        failed: &Envelope,
        kind: BounceKind,
        delay: u64,
        status: StatusCode,
        errorline: &str,
    ) {
        let target = BounceTarget {
            kind,
            delay,
            ttl: crate::queue::BOUNCE_TTL,
        };
        // Refusals are decided by the queue's own rules; the copy itself is not stored.
        if let Err(r) = failed.bounce(failed.id, target, now()) {
            if let Some(line) = r.log_line() {
                warn!("{line}");
            }
            return;
        }
        // 6.8 counts the failed envelopes it reports on, not the reports.
        self.stats.bounces.fetch_add(1, Ordering::Relaxed);
        let line = crate::queue::bounce::ReportedRecipient {
            dest: failed.dest.clone(),
            errorline: if kind == BounceKind::Delivered {
                crate::queue::envelope::one_line(errorline, crate::queue::envelope::MAX_ERRORLINE)
            } else {
                failed_line(errorline)
            },
            status,
        };
        // Reports on one message and of one kind are grouped, as OpenSMTPD's bounce engine
        // groups them: the first failure waits a moment for the others, then writes one
        // report for all. Every caller returns once the report is durable (or given up), so
        // the failed envelopes, and with them the message, are still queued meanwhile.
        let key = (failed.id.msgid(), kind, delay, relay_notice(failed, kind));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let first = match self.reports.lock() {
            Ok(mut pending) => match pending.get_mut(&key) {
                Some(batch) => {
                    batch.recipients.push(line);
                    batch.waiters.push(tx);
                    false
                }
                None => {
                    pending.insert(
                        key,
                        PendingReport {
                            recipients: vec![line],
                            waiters: vec![tx],
                        },
                    );
                    true
                }
            },
            Err(_) => return,
        };
        if !first {
            let _ = rx.await;
            return;
        }
        tokio::time::sleep(REPORT_GATHERING).await;
        let batch = self.reports.lock().ok().and_then(|mut p| p.remove(&key));
        let Some(batch) = batch else {
            return;
        };
        self.write_report(failed, kind, delay, &batch.recipients)
            .await;
        for w in batch.waiters {
            let _ = w.send(());
        }
    }

    /// Queue one report about `recipients` of `failed`'s message, routed to its sender.
    async fn write_report(
        &self,
        failed: &Envelope,
        kind: BounceKind,
        delay: u64,
        recipients: &[crate::queue::bounce::ReportedRecipient],
    ) {
        let _envelopes = self.stats.bounce_envelope.hold(recipients.len() as u64);
        let _message = self.stats.bounce_message.hold(1);
        let _session = self.stats.bounce_session.hold(1);
        let t = now();
        let hostname = self.graph.config.hostname.clone();
        let sender = failed.sender.clone();
        let graph = self.graph.clone();
        // Rules and expansion may read .forward and alias include files.
        let outcome = tokio::task::spawn_blocking({
            let hostname = hostname.clone();
            let sender = sender.clone();
            move || {
                let facts = crate::rules::route::Facts {
                    tag: "",
                    source: "local",
                    rdns: Some(&hostname),
                    helo: &hostname,
                    authenticated: true,
                    auth_user: None,
                    sender: "@",
                    expanded: false,
                };
                crate::expand::expand(&graph, &facts, &sender, &crate::expand::Sources::system())
            }
        })
        .await;
        let deliveries = match outcome {
            Ok(crate::expand::ExpandOutcome::Accepted(d)) => d,
            Ok(crate::expand::ExpandOutcome::Refused(r)) => {
                // As 6.8's bounce session meets the refusal: its local session's lines,
                // then the report given up.
                let reply = r.reply(&sender);
                let sid = report_session(&hostname);
                smtp_in::failed_command(&sid, format!("RCPT TO: <{sender}>"), &reply);
                smtp_in::disconnected(&sid, "quit");
                let n = recipients.len();
                self.stats.permfail.fetch_add(n as u64, Ordering::Relaxed);
                warn!(
                    "warn: PermFail injecting failure report on message {} to <{sender}> for {n} envelope{}: {reply}",
                    failed.id.msgid(),
                    if n > 1 { "s" } else { "" }
                );
                return;
            }
            Err(_) => return,
        };
        let spool = self.spool.clone();
        let msgid = failed.id.msgid();
        let original = match tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut buf = Vec::new();
            let mut f = spool.open_message(msgid).map_err(|e| e.to_string())?;
            f.read_to_end(&mut buf).map_err(|e| e.to_string())?;
            Ok::<_, String>(buf)
        })
        .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                warn!("warn: bounce: cannot read message {msgid}: {e}");
                return;
            }
            Err(_) => return,
        };
        let mut writer = match self.spool.begin_message().await {
            Ok(w) => w,
            Err(e) => {
                warn!("warn: bounce: cannot create message: {e}");
                return;
            }
        };
        let date = crate::smtp::received::time_to_text(t as i64, 0, "UTC");
        let message_id = format!("<{:016x}@{hostname}>", random_u64());
        let report = crate::queue::bounce::Report {
            kind,
            hostname: &hostname,
            message_id: &message_id,
            to: &sender,
            date: &date,
            boundary_id: random_u64(),
            delay,
            ttl: crate::queue::BOUNCE_TTL,
            recipients,
            original: &original,
            // RET=HDRS (RFC 3461): only the headers come back, in every kind of report
            // (6.8 heeds it in success reports only).
            headers_only: failed.dsn.ret == Some(crate::queue::envelope::DsnRet::Headers),
            relayed: relay_notice(failed, kind),
        };
        let mut text = crate::queue::bounce::received_line(
            &hostname,
            &writer.msgid().to_string(),
            &sender,
            &date,
        )
        .into_bytes();
        text.extend_from_slice(&crate::queue::bounce::report_message(&report));
        if let Err(e) = writer.write(&text).await {
            warn!("warn: bounce: cannot write message: {e}");
            let _ = writer.abort();
            return;
        }
        let mut envelopes = Vec::new();
        for d in deliveries {
            let Ok(evpid) = writer.new_evpid() else {
                let _ = writer.abort();
                return;
            };
            let mut e = Envelope::new(
                evpid,
                queue_target(&d.target),
                "",
                &d.rcpt.to_string(),
                &d.dest.to_string(),
                t,
            );
            e.dispatcher = d.action.clone();
            e.smtpname = hostname.clone();
            e.helo = hostname.clone();
            e.hostname = hostname.clone();
            e.client = crate::queue::ClientAddr::Local;
            // As 6.8's report session: local and authenticated (`flags: authenticated`,
            // `auth` in `show queue`). Its sender is `<>`, so it is never reported on.
            e.flags.authenticated = true;
            envelopes.push(e);
        }
        let scheduled = envelopes.clone();
        let size = text.len();
        match writer.commit(envelopes).await {
            Ok(m) => {
                let sid = report_session(&hostname);
                smtp_in::message(&sid, m, size as u64, 1, true);
                if let Some(last) = scheduled.last() {
                    smtp_in::envelope(&sid, last.id, "", &sender);
                }
                smtp_in::disconnected(&sid, "quit");
                // Each failed envelope's report was delivered, as 6.8 counts it.
                self.stats
                    .ok
                    .fetch_add(recipients.len() as u64, Ordering::Relaxed);
                tracing::debug!(
                    "debug: bounce: {} report on {} ({} recipient(s)) queued as {m} to <{sender}>",
                    kind.as_str(),
                    failed.id.msgid(),
                    recipients.len()
                );
                self.submit(&scheduled);
            }
            Err(e) => warn!("warn: bounce: commit failed: {e}"),
        }
    }

    /// A temporary failure crossed a `bounce warn-interval`: record it on the envelope
    /// (`last-bounce`) and send a "delayed" notice.
    async fn delay_warning(&self, e: &mut Envelope, delay: u64, timestamp: u64) {
        e.last_bounce = timestamp;
        let copy = e.clone();
        let spool = self.spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.update_envelope(&copy)).await;
        let status = e.status.unwrap_or(StatusCode { class: 4, code: 0 });
        let why = e.errorline.clone();
        self.bounce(e, BounceKind::Delayed, delay, status, &why)
            .await;
    }

    /// The spool the runner delivers from.
    /// The rule graph deliveries and sessions share.
    pub fn graph(&self) -> &Arc<RuleGraph> {
        &self.graph
    }

    /// Relay sessions of actions with a `filter` send `smtp-out` reports to the programs of
    /// that chain (6.8 sends them nothing else).
    pub fn set_filter_reports(&self, processors: Arc<crate::processor::Processors>) {
        let chains = self
            .graph
            .chains
            .iter()
            .map(|(name, chain)| (name.clone(), chain.procs.clone()))
            .collect();
        self.mta.relayer().set_reports(processors, chains);
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// The scheduler's view of one envelope (`None`: not scheduled).
    pub fn envelope_status(&self, evpid: Evpid) -> Option<EnvelopeStatus> {
        self.scheduler.lock().ok().and_then(|s| s.status(evpid))
    }

    /// Whether an agent is paused (`smtpctl show status`).
    pub fn is_paused(&self, kind: DeliveryKind) -> bool {
        self.scheduler
            .lock()
            .map(|s| s.is_agent_paused(kind))
            .unwrap_or(false)
    }

    /// The outbound routes, as `smtpctl show routes` lists them.
    pub fn routes_text(&self) -> Vec<String> {
        self.mta.relayer().routes_text()
    }

    /// The destinations with mail or sessions, as `smtpctl show relays` lists them.
    pub fn relays_text(&self) -> Vec<String> {
        self.mta.relays_text()
    }

    /// `smtpctl pause|resume mta from ADDR for DOMAIN`.
    pub fn set_mta_blocked(&self, source: std::net::IpAddr, domain: &str, on: bool) {
        self.mta.set_blocked(source, domain, on);
    }

    /// `smtpctl show mta paused`.
    pub fn mta_blocks_text(&self) -> Vec<String> {
        self.mta.blocks_text()
    }

    /// `smtpctl resume route ID` (see [`super::relay::Relayer::resume_route`]).
    pub fn resume_route(&self, id: u64) -> Option<bool> {
        self.mta.relayer().resume_route(id)
    }

    /// The remote hosts of the routes, as `smtpctl show hosts` lists them.
    pub fn hosts_text(&self) -> Vec<String> {
        self.mta.relayer().hosts_text()
    }

    /// Counters since start.
    pub fn stats(&self) -> &DeliveryStats {
        &self.stats
    }

    /// Envelopes the scheduler knows, of the selected message or envelope (all if `None`).
    fn known(&self, id: Option<QueueId>) -> Vec<Evpid> {
        let spool = self.spool.clone();
        let all = match spool.envelopes() {
            Ok(v) => v,
            Err(e) => {
                warn!("warn: queue: {e}");
                Vec::new()
            }
        };
        all.into_iter()
            .map(|e| e.id)
            .filter(|evpid| id.is_none_or(|q| q.selects(*evpid)))
            .collect()
    }

    /// `smtpctl discover ID|MSGID`: schedule the envelopes of the queue on disk that the
    /// scheduler does not know (moved into `queue/` by hand, say). Returns how many.
    pub fn discover(&self, id: QueueId) -> usize {
        let evpids = match id {
            QueueId::Envelope(e) => vec![e],
            QueueId::Message(m) => self.spool.envelope_ids(m).unwrap_or_default(),
        };
        let mut found = Vec::new();
        for evpid in evpids {
            let Ok(e) = self.spool.load_envelope(evpid) else {
                continue;
            };
            if let Ok(mut s) = self.scheduler.lock()
                && s.insert(schedule_entry(&self.graph.config, &e))
            {
                found.push(e);
            }
        }
        trace_scheduled(&found, Scheduled::Discovered);
        let found = found.len();
        if found > 0 {
            self.wake.notify_one();
        }
        found
    }

    /// `smtpctl schedule ID|MSGID|all`: make pending envelopes due now. Returns the count.
    pub fn schedule_now(&self, id: Option<QueueId>) -> usize {
        let t = now();
        let n = match (id, self.scheduler.lock()) {
            (Some(q), Ok(mut s)) => s.schedule(q, t),
            (None, Ok(s)) => {
                drop(s);
                let ids = self.known(None);
                let Ok(mut s) = self.scheduler.lock() else {
                    return 0;
                };
                ids.into_iter()
                    .map(|e| s.schedule(QueueId::Envelope(e), t))
                    .sum()
            }
            (_, Err(_)) => 0,
        };
        self.wake.notify_one();
        n
    }

    /// `smtpctl pause|resume envelope ID|MSGID|all`: suspend (or lift the suspension of)
    /// envelopes. Returns how many changed.
    pub fn suspend(&self, id: Option<QueueId>, suspend: bool) -> usize {
        let targets: Vec<QueueId> = match id {
            Some(q) => vec![q],
            None => self
                .known(None)
                .into_iter()
                .map(QueueId::Envelope)
                .collect(),
        };
        let n = match self.scheduler.lock() {
            Ok(mut s) => targets
                .into_iter()
                .map(|q| if suspend { s.suspend(q) } else { s.resume(q) })
                .sum(),
            Err(_) => 0,
        };
        self.wake.notify_one();
        n
    }

    /// `smtpctl remove ID|MSGID|all`: forget envelopes without a report, logging
    /// `Remove for ...`. Envelopes in flight go when their delivery reports back.
    pub async fn remove(&self, id: Option<QueueId>) -> usize {
        let targets: Vec<QueueId> = match id {
            Some(q) => vec![q],
            None => self
                .known(None)
                .into_iter()
                .map(QueueId::Envelope)
                .collect(),
        };
        let mut removed = Vec::new();
        let mut count = 0;
        if let Ok(mut s) = self.scheduler.lock() {
            for q in targets {
                let r = s.remove(q);
                count += r.count();
                removed.extend(r.removed);
            }
        }
        for evpid in removed {
            crate::log::scheduler_trace(|| format!("queue ack removal of evp:{evpid}"));
            if let Some(e) = self.load(evpid).await {
                let prefix = if e.kind() == DeliveryKind::Mta {
                    "relay"
                } else {
                    "delivery"
                };
                info!(
                    "{prefix}: Remove for {evpid}: from=<{}>, to=<{}>, rcpt=<{}>, delay={}, stat=Removed by administrator",
                    e.sender,
                    e.dest,
                    if e.rcpt == e.dest { "-" } else { &e.rcpt },
                    super::log::duration_to_text(now().saturating_sub(e.ctime) as i64)
                );
            }
            let spool = self.spool.clone();
            let _ = tokio::task::spawn_blocking(move || spool.remove_envelope(evpid)).await;
            self.stats.removed.fetch_add(1, Ordering::Relaxed);
        }
        count
    }

    /// The number of envelopes scheduled.
    pub fn scheduled(&self) -> usize {
        self.scheduler.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// The envelopes scheduled, and the messages they belong to.
    pub fn scheduled_counts(&self) -> (usize, usize) {
        self.scheduler
            .lock()
            .map(|s| (s.len(), s.messages()))
            .unwrap_or((0, 0))
    }

    /// The outbound side's objects (`mta.*` of `show stats`), `None` before it was used.
    pub fn mta_census(&self) -> Option<super::mta::MtaCensus> {
        self.mta.census()
    }

    /// The users with queued local deliveries waiting or running.
    pub fn mda_users_busy(&self) -> usize {
        self.mda_users
            .lock()
            .map(|u| u.values().filter(|s| Arc::strong_count(s) > 1).count())
            .unwrap_or(0)
    }
}

/// The queue target of an expanded delivery (as the SMTP side records it).
fn queue_target(t: &crate::expand::Target) -> Target {
    use crate::expand::{RunAs, SMTPD_USER, Target as X};
    let run_as = |r: &RunAs| match r {
        RunAs::User(u) => u.name.clone(),
        RunAs::Smtpd => SMTPD_USER.to_string(),
    };
    match t {
        X::Relay => Target::Mta(crate::queue::MtaTarget::default()),
        X::Mailbox {
            user, subaddress, ..
        } => Target::Mda(crate::queue::MdaTarget {
            user: user.name.clone(),
            subaddress: subaddress.clone(),
            ..Default::default()
        }),
        X::File { path, run_as: r } => Target::Mda(crate::queue::MdaTarget {
            user: run_as(r),
            path: path.clone(),
            ..Default::default()
        }),
        X::Command { command, run_as: r } => Target::Mda(crate::queue::MdaTarget {
            user: run_as(r),
            exec: command.clone(),
            ..Default::default()
        }),
    }
}

/// The scheduling facts of `e`, its lifetime the `ttl` of its action when the envelope has
/// none of its own (reports have theirs), else `queue ttl`: OpenSMTPD takes the action's
/// at scheduling time too, and keeps 0 in the envelope.
fn schedule_entry(cfg: &crate::config::model::Config, e: &Envelope) -> ScheduleEntry {
    let mut entry = ScheduleEntry::from_envelope(e);
    if entry.ttl == 0
        && let Some(ttl) = cfg.action_named(&e.dispatcher).and_then(|a| a.ttl.as_ref())
    {
        entry.ttl = ttl.seconds;
    }
    entry
}

/// Opens the local SMTP session a report is submitted over, as 6.8 submits its reports
/// (logged as one: `smtp connected address=local host=HOSTNAME`, counted in
/// `smtp.session.local`); its session id.
fn report_session(hostname: &str) -> String {
    let sid = format!("{:016x}", random_u64());
    smtp_in::connected(&sid, "local", hostname);
    crate::smtp::server::SMTP_STATS
        .local
        .fetch_add(1, Ordering::Relaxed);
    sid
}

/// Whether a success report on `e` is 6.8's relay notice: relayed mail still asks for one
/// only when the next hop did not offer DSN (it takes the request over otherwise).
fn relay_notice(e: &Envelope, kind: BounceKind) -> bool {
    kind == BounceKind::Delivered && matches!(e.target, Target::Mta(_))
}

/// The report line's error text: OpenSMTPD quotes an agent's message as it recorded it;
/// an empty one still says something.
fn failed_line(errorline: &str) -> String {
    let line = crate::queue::envelope::one_line(errorline, crate::queue::envelope::MAX_ERRORLINE);
    if line.is_empty() {
        "Delivery failed".to_string()
    } else {
        line
    }
}

/// 64 random bits (report boundary and Message-ID); the clock serves when the operating
/// system's source fails, since these need only be unique, not secret.
fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    })
}

/// Most recipients of one message delivered before its commit; a larger message goes
/// through the queue, so that its client does not wait on many mailboxes.
const MAX_DIRECT_RECIPIENTS: usize = 16;

/// How long a message waits for delivery slots before it goes to the queue instead. Under
/// load the slots are the bottleneck either way, and a message delivered directly costs
/// less than one queued and delivered later.
const DIRECT_SLOT_WAIT: Duration = Duration::from_millis(500);

/// Deliveries that may be made before a commit, and the delivery slots they hold.
#[derive(Debug)]
pub struct DirectPlan {
    requests: Vec<DeliveryRequest>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// What [`Runner::deliver_direct`] did.
#[derive(Debug, Default)]
pub struct DirectOutcome {
    /// The `mda delivery` lines of the recipients delivered, to log after the message's
    /// `smtp message` line.
    pub log: Vec<String>,
    /// The envelopes not delivered: they go through the queue as usual.
    pub remaining: Vec<Envelope>,
    /// The transaction, to commit `remaining` with; `None` once discarded (everything
    /// delivered) or lost with a failed task.
    pub writer: Option<MessageWriter>,
}

/// Deliveries made before the commit of a message.
///
/// When every recipient of a message goes to a maildir through the delivery workers, the
/// message is delivered while its client waits for the reply to the final dot: each
/// delivery fsyncs the new file and its `new/` directory before it reports success, so
/// the mail is on disk before the `250`, as it is after a queue commit, and the queue's
/// files, fsyncs and later removal are not needed at all. A recipient whose delivery does
/// not succeed is committed to the queue like any other and retried from there; its
/// first attempt is not logged (the queue's attempt is).
impl Runner {
    /// The deliveries of `envelopes` if they may be made before the commit: all local
    /// maildir deliveries through the workers, none asking for a success report, local
    /// delivery not paused, and delivery slots for all of them within
    /// [`DIRECT_SLOT_WAIT`] (a delivery side that stays busy leaves new mail to the queue).
    pub async fn plan_direct(&self, envelopes: &[Envelope]) -> Option<DirectPlan> {
        if envelopes.is_empty()
            || envelopes.len() > MAX_DIRECT_RECIPIENTS
            || self.is_paused(DeliveryKind::Mda)
        {
            return None;
        }
        let mut requests = Vec::with_capacity(envelopes.len());
        for e in envelopes {
            if e.kind() != DeliveryKind::Mda || e.dsn.notify.has(crate::queue::DsnNotify::SUCCESS) {
                return None;
            }
            match self.request(e) {
                Ok(r) if matches!(r.method, Method::Maildir { .. }) && r.wrapper.is_none() => {
                    requests.push(r)
                }
                _ => return None,
            }
        }
        let slots = self
            .inflight
            .clone()
            .acquire_many_owned(envelopes.len() as u32);
        let permit = tokio::time::timeout(DIRECT_SLOT_WAIT, slots)
            .await
            .ok()?
            .ok()?;
        Some(DirectPlan { requests, permit })
    }

    /// Makes the deliveries of `plan` (from [`Runner::plan_direct`] for the same
    /// `envelopes`) from the open transaction `writer`. When all succeed the transaction
    /// is discarded; otherwise it comes back in the outcome, to commit what remains.
    /// A message for one recipient is written out, delivered and discarded in a single
    /// blocking task: one hand-off between threads instead of three.
    pub async fn deliver_direct(
        self: &Arc<Self>,
        envelopes: Vec<Envelope>,
        mut writer: MessageWriter,
        plan: DirectPlan,
    ) -> DirectOutcome {
        let mut outcome = DirectOutcome::default();
        let mut results = Vec::with_capacity(envelopes.len());
        let mut requests = plan.requests;
        let n = envelopes.len() as u64;
        let _incoming = self.stats.incoming.hold(0);
        let _inflight = self.stats.inflight.hold(n);
        let _envelopes = self.stats.mda_envelope.hold(n);
        let _running = self.stats.mda_running.hold(requests.len() as u64);
        let _user = self.stats.mda_user.hold(0);
        if requests.len() == 1
            && let Some(mut req) = requests.pop()
        {
            let agent = self.agent.clone();
            let joined = tokio::task::spawn_blocking(move || {
                let result = match writer.body_file_blocking() {
                    Ok(body) => {
                        req.message = MessageSource::File(body);
                        agent.deliver_blocking(req)
                    }
                    Err(e) => DeliveryResult::plain(Status::TempFail, &e.to_string()),
                };
                if result.status == Status::Ok {
                    writer.discard_blocking();
                    (result, None)
                } else {
                    (result, Some(writer))
                }
            })
            .await;
            // A task that died took the transaction with it: nothing can be committed.
            if let Ok((result, writer)) = joined {
                results.push((0, result));
                outcome.writer = writer;
            }
        } else {
            // One reader of the body per delivery (in memory while the body is).
            let n = requests.len();
            let opened = tokio::task::spawn_blocking(move || {
                let files = writer.body_files_blocking(n);
                (writer, files)
            })
            .await;
            let Ok((returned, files)) = opened else {
                // The task died with the transaction: nothing was delivered or can be committed.
                drop(plan.permit);
                outcome.remaining = envelopes;
                return outcome;
            };
            writer = returned;
            let mut running = tokio::task::JoinSet::new();
            if let Ok(files) = files {
                for ((i, mut req), file) in requests.into_iter().enumerate().zip(files) {
                    req.message = MessageSource::File(file);
                    let agent = self.agent.clone();
                    running.spawn(async move { (i, agent.deliver(req).await) });
                }
            }
            while let Some(done) = running.join_next().await {
                if let Ok(r) = done {
                    results.push(r);
                }
            }
            let all = results.len() == envelopes.len()
                && results.iter().all(|(_, r)| r.status == Status::Ok);
            if all {
                if let Err(e) = writer.discard().await {
                    warn!("warn: queue: {e}");
                }
            } else {
                outcome.writer = Some(writer);
            }
        }
        drop(plan.permit);
        results.sort_by_key(|(i, _)| *i);
        let mut delivered = vec![false; envelopes.len()];
        for (i, result) in results {
            if result.status != Status::Ok {
                continue;
            }
            let e = &envelopes[i];
            let user = match &e.target {
                Target::Mda(t) => t.user.as_str(),
                _ => "",
            };
            let entry = MdaLogEntry {
                group_id: e.id.get(),
                evpid: e.id.get(),
                sender: &e.sender,
                dest: &e.dest,
                rcpt: &e.rcpt,
                user,
                delay_secs: now().saturating_sub(e.ctime) as i64,
            };
            outcome.log.push(mda_delivery_line(&entry, &result));
            self.stats.ok.fetch_add(1, Ordering::Relaxed);
            self.stats.enqueued.fetch_add(1, Ordering::Relaxed);
            delivered[i] = true;
        }
        outcome.remaining.extend(
            envelopes
                .into_iter()
                .zip(delivered)
                .filter(|(_, d)| !d)
                .map(|(e, _)| e),
        );
        outcome
    }
}

/// Why an envelope has no route to be relayed on.
enum RouteError {
    /// It cannot be relayed: the outcome to log and record as its attempt.
    Outcome(RelayOutcome),
    /// Its `host` or `domain` table gave no relay: deferred without an attempt.
    NoSmarthost,
}

impl From<RelayOutcome> for RouteError {
    fn from(o: RelayOutcome) -> RouteError {
        RouteError::Outcome(o)
    }
}

#[cfg(test)]
mod tests {
    use super::Gauge;

    #[test]
    fn a_gauge_is_listed_once_it_moved_and_holds_only_while_held() {
        let g = Gauge::default();
        assert_eq!(g.get(), None);
        let a = g.hold(3);
        let b = g.hold(2);
        assert_eq!(g.get(), Some(5));
        drop(a);
        assert_eq!(g.get(), Some(2));
        drop(b);
        assert_eq!(g.get(), Some(0));
        // Touching it without a value still lists it, at 0.
        let t = Gauge::default();
        drop(t.hold(0));
        assert_eq!(t.get(), Some(0));
    }
}

/// How envelopes came to the scheduler, for its `-T scheduler` lines (and the queue's walk
/// at start-up, for `-T queue`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scheduled {
    /// Found in the queue at start-up.
    Walked,
    /// Just committed by a session or a report.
    Committed,
    /// `smtpctl discover`.
    Discovered,
}

/// 6.8's trace of envelopes handed to the scheduler: `inserting evp:ID` for each (or
/// `discovering evp:ID`), then `committing msg:ID` once the message's envelopes are all in.
/// At start-up the queue's walk comes first (`queue_envelope_walk() -> LENGTH (ID)`, then
/// `-> -1` at its end), as 6.8 loads its queue into the scheduler.
fn trace_scheduled(envelopes: &[Envelope], how: Scheduled) {
    let walked = how == Scheduled::Walked && crate::log::tracing("queue");
    if !walked && !crate::log::tracing("scheduler") {
        return;
    }
    let verb = if how == Scheduled::Discovered {
        "discovering"
    } else {
        "inserting"
    };
    // A session's envelopes come in the order of its recipients; the queue's walk goes
    // message by message.
    let mut ordered: Vec<&Envelope> = envelopes.iter().collect();
    if how == Scheduled::Walked {
        ordered.sort_by_key(|e| e.id);
    }
    let mut open: Option<crate::queue::Msgid> = None;
    for e in ordered {
        if walked {
            crate::log::queue_trace(|| {
                let len = e.to_file_text().map(|t| t.len()).unwrap_or(0);
                format!("queue_envelope_walk() -> {len} ({})", e.id)
            });
        }
        let msgid = e.id.msgid();
        if let Some(done) = open.filter(|m| *m != msgid) {
            crate::log::scheduler_trace(|| format!("committing msg:{done}"));
        }
        open = Some(msgid);
        crate::log::scheduler_trace(|| format!("{verb} evp:{}", e.id));
    }
    if walked {
        crate::log::queue_trace(|| "queue_envelope_walk() -> -1 (0000000000000000)".into());
    }
    if let Some(done) = open {
        crate::log::scheduler_trace(|| format!("committing msg:{done}"));
    }
}
