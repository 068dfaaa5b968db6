//! The delivery loop: the scheduler hands out envelopes that are due, the local agents
//! deliver them, and the queue records the outcome (envelope removed on success, retry
//! bookkeeping on a temporary failure).
//!
//! New envelopes arrive through [`Runner::submit`] right after their message is committed;
//! at start-up the envelopes the queue recovered are scheduled. Relay envelopes go to the
//! SMTP client of [`super::relay`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, Semaphore};
use tracing::{info, warn};

use super::DeliveryAgent;
use super::log::{MdaLogEntry, mda_delivery_line};
use super::relay::{Outgoing, RelayOutcome, Relayer};
use super::request::{
    Account, DeliveryRequest, EnvelopeInfo, LmtpRecipient, MessageSource, Method,
};
use super::result::Status;
use crate::config::model::{ActionMethod, LocalMethod};
use crate::dns::Resolver;
use crate::expand::userbase::{SystemPasswd, TableUserbase, Userbase};
use crate::queue::scheduler::{Action, ScheduleEntry, Scheduler, SchedulerConfig, TempFailure};
use crate::queue::{DeliveryKind, Envelope, Evpid, Spool, Target};
use crate::rules::RuleGraph;

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
    relayer: Relayer,
}

impl Runner {
    pub fn new(
        graph: Arc<RuleGraph>,
        spool: Arc<Spool>,
        recovered: &[Envelope],
        resolver: Arc<dyn Resolver>,
    ) -> Arc<Runner> {
        let cfg = &graph.config;
        let tls = crate::tls::TlsStore::load(cfg).unwrap_or_else(|e| {
            warn!("warn: relay: {e}");
            crate::tls::TlsStore::default()
        });
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
            scheduler.insert(ScheduleEntry::from_envelope(e));
        }
        let agent = DeliveryAgent::new().with_subaddress_delimiter(cfg.smtp.sub_addr_delim);
        Arc::new(Runner {
            graph,
            spool,
            agent,
            scheduler: Mutex::new(scheduler),
            wake: Notify::new(),
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
            relayer,
        })
    }

    /// Pause or resume an agent (`smtpd -P mda|mta`, `smtpctl pause`).
    pub fn set_paused(&self, kind: DeliveryKind, paused: bool) {
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
        if let Ok(mut s) = self.scheduler.lock() {
            for e in envelopes {
                s.insert(ScheduleEntry::from_envelope(e));
            }
        }
        self.wake.notify_one();
    }

    /// Run forever: deliver what is due, sleep until the next wake-up or a new envelope.
    pub async fn run(self: Arc<Self>) {
        loop {
            let actions = match self.scheduler.lock() {
                Ok(mut s) => s.poll(now(), MAX_INFLIGHT),
                Err(_) => Vec::new(),
            };
            for a in actions {
                match a {
                    Action::Deliver { evpid, kind } => {
                        let permit = match self.inflight.clone().acquire_owned().await {
                            Ok(p) => p,
                            Err(_) => return,
                        };
                        let me = self.clone();
                        tokio::spawn(async move {
                            me.deliver(evpid, kind).await;
                            drop(permit);
                        });
                    }
                    Action::Expire { evpid, .. } => self.expire(evpid).await,
                }
            }
            let sleep = match self.scheduler.lock().ok().and_then(|s| s.next_wakeup()) {
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
                table: cfg.table(id),
                compiled: self.graph.table(id),
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
        if kind == DeliveryKind::Mta && matches!(e.target, Target::Mta(_)) {
            self.relay(e).await;
            return;
        }
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
        let result = match self.request(&e) {
            Ok(req) => self.agent.deliver(req).await,
            Err((status, text)) => super::result::DeliveryResult::refused(status, 75, &text),
        };
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
        match result.status {
            Status::Ok | Status::PermFail => {
                // A permanent failure should bounce to the sender; until bounces exist the
                // envelope is dropped with its log line, as OpenSMTPD does for `<>` senders.
                let spool = self.spool.clone();
                if let Ok(Err(err)) =
                    tokio::task::spawn_blocking(move || spool.remove_envelope(evpid)).await
                {
                    warn!("warn: queue: remove {evpid}: {err}");
                }
                if let Ok(mut s) = self.scheduler.lock() {
                    s.delivered(evpid);
                }
            }
            Status::TempFail => self.temporary(&mut e, &result.error).await,
        }
    }

    /// One relay attempt for `e`: route, SMTP session, `mta delivery` line, queue update.
    async fn relay(&self, mut e: Envelope) {
        let evpid = e.id;
        let cfg = &self.graph.config;
        let mut used_source = None;
        let outcome = match cfg.action_named(&e.dispatcher).map(|a| &a.method) {
            Some(ActionMethod::Relay(action)) => {
                let domain = e.dest.rsplit_once('@').map_or("", |(_, d)| d);
                // `host` wins; then the `domain` mapping; else the MX of the domain.
                let url: Option<String> = match (action.host, action.domain) {
                    (Some(t), _) => {
                        let table = self.graph.table(t);
                        let n = table.entries.len().max(1);
                        table
                            .entries
                            .keys()
                            .nth((evpid.get() as usize) % n)
                            .cloned()
                    }
                    (None, Some(t)) => self.graph.table(t).lookup(domain).map(str::to_string),
                    (None, None) => None,
                };
                let path = self.spool.layout().message_file(evpid.msgid());
                match tokio::fs::read(&path).await {
                    Ok(content) => {
                        let auth = |label: &str| {
                            action
                                .auth
                                .and_then(|t| self.graph.table(t).lookup(label))
                                .map(str::to_string)
                        };
                        // `src`: a source address taken in turn; `helo-src`: the name
                        // announced from it.
                        let source: Option<std::net::IpAddr> = action.src.and_then(|t| {
                            let table = self.graph.table(t);
                            let n = table.entries.len().max(1);
                            table
                                .entries
                                .keys()
                                .nth((evpid.get() as usize) % n)
                                .and_then(|k| k.trim_matches(['[', ']']).parse().ok())
                        });
                        let mut action = action.clone();
                        if let (Some(src), Some(t)) = (source, action.helo_src)
                            && let Some(name) = self.graph.table(t).lookup(&src.to_string())
                        {
                            action.helo = Some(name.to_string());
                        }
                        used_source = source;
                        let mail = Outgoing {
                            sender: &e.sender,
                            recipient: &e.dest,
                            content: &content,
                        };
                        self.relayer
                            .deliver(&action, url.as_deref(), &auth, &mail, source)
                            .await
                    }
                    Err(err) => RelayOutcome {
                        status: Status::TempFail,
                        stat: format!("Cannot read message: {err}"),
                        relay: "-".into(),
                        session: super::relay::NO_SESSION.into(),
                    },
                }
            }
            _ => RelayOutcome {
                status: Status::TempFail,
                stat: format!("no such relay dispatcher: {}", e.dispatcher),
                relay: "-".into(),
                session: super::relay::NO_SESSION.into(),
            },
        };
        let result = match outcome.status {
            Status::Ok => "Ok",
            Status::TempFail => "TempFail",
            Status::PermFail => "PermFail",
        };
        info!(
            "{} mta delivery evpid={evpid} from=<{}> to=<{}> rcpt=<{}> source=\"{}\" relay=\"{}\" delay={} result=\"{result}\" stat=\"{}\"",
            outcome.session,
            e.sender,
            e.dest,
            if e.rcpt == e.dest { "-" } else { &e.rcpt },
            used_source.map_or_else(|| "-".to_string(), |a| a.to_string()),
            outcome.relay,
            super::log::duration_to_text(now().saturating_sub(e.ctime) as i64),
            outcome.stat
        );
        match outcome.status {
            Status::Ok | Status::PermFail => {
                if outcome.status == Status::PermFail {
                    self.relay_permanent_failure(&e, &outcome.stat);
                }
                let spool = self.spool.clone();
                if let Ok(Err(err)) =
                    tokio::task::spawn_blocking(move || spool.remove_envelope(evpid)).await
                {
                    warn!("warn: queue: remove {evpid}: {err}");
                }
                if let Ok(mut s) = self.scheduler.lock() {
                    s.delivered(evpid);
                }
            }
            Status::TempFail => self.temporary(&mut e, &outcome.stat).await,
        }
    }

    /// Where a relayed envelope that failed for good should turn into a bounce; for now
    /// the envelope is dropped after its `mta delivery` line, as local failures are.
    fn relay_permanent_failure(&self, e: &Envelope, stat: &str) {
        warn!(
            "warn: relay: {} failed permanently, no bounce is sent: {stat}",
            e.id
        );
    }

    async fn temporary(&self, e: &mut Envelope, why: &str) {
        let t = now();
        e.record_temporary_failure(t, why, None);
        let copy = e.clone();
        let spool = self.spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.update_envelope(&copy)).await;
        let outcome = self
            .scheduler
            .lock()
            .ok()
            .and_then(|mut s| s.temp_failure(e.id, t));
        if let Some(TempFailure::Removed) = outcome {
            let spool = self.spool.clone();
            let id = e.id;
            let _ = tokio::task::spawn_blocking(move || spool.remove_envelope(id)).await;
        }
    }
}
