//! The daemon's end of the control socket: accept `smtpctl` connections, run one request
//! each, answer, close.
//!
//! Only root and the daemon's own user may steer the daemon (OpenSMTPD refuses non-root
//! requests the same way); the socket itself is mode 0666 so that others get a clear
//! refusal instead of a permission error.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

use super::gate::SmtpGate;
use super::protocol::{Agent, Reply, Request, envelopes_text};
use super::show;
use crate::deliver::runner::Runner;
use crate::queue::DeliveryKind;
use crate::rules::UpdateError;
use crate::smtp::server::SMTP_STATS;

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the control socket steers.
pub struct Control {
    runner: Arc<Runner>,
    started: u64,
    sessions: AtomicU64,
    /// Whether the SMTP listeners accept sessions.
    smtp: Arc<SmtpGate>,
}

impl Control {
    /// `smtp` is the switch the listeners are served behind ([`SmtpGate::serve`]).
    pub fn new(runner: Arc<Runner>, smtp: Arc<SmtpGate>) -> Arc<Control> {
        Arc::new(Control {
            runner,
            started: now(),
            sessions: AtomicU64::new(0),
            smtp,
        })
    }

    /// Carry out one request.
    pub async fn apply(&self, request: Request) -> Reply {
        match request {
            Request::ShowQueue => {
                let spool = self.runner.spool().clone();
                let envelopes = tokio::task::spawn_blocking(move || spool.envelopes()).await;
                let mut list = match envelopes {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => return Reply::failed(Some(&e.to_string())),
                    Err(_) => return Reply::failed(None),
                };
                list.sort_by_key(|e| e.id);
                let t = now();
                let text: String = list
                    .iter()
                    .map(|e| {
                        let status = self.runner.envelope_status(e.id);
                        show::queue_line(e, status.as_ref(), t) + "\n"
                    })
                    .collect();
                Reply::ok(text)
            }
            Request::ShowStats => Reply::ok(show::stats_text(self.stats_pairs(false))),
            Request::Digest => Reply::ok(show::stats_text(self.stats_pairs(true))),
            Request::ShowEnvelope(evpid) => {
                let spool = self.runner.spool().clone();
                match tokio::task::spawn_blocking(move || spool.load_envelope(evpid)).await {
                    Ok(Ok(e)) => match e.to_file_text() {
                        Ok(text) => Reply::ok(text),
                        Err(err) => Reply::failed(Some(&err.to_string())),
                    },
                    Ok(Err(err)) => Reply::failed(Some(&err.to_string())),
                    Err(_) => Reply::failed(None),
                }
            }
            Request::ShowMessage(msgid) => {
                let spool = self.runner.spool().clone();
                let read = tokio::task::spawn_blocking(move || {
                    use std::io::Read;
                    let mut f = spool.open_message(msgid).map_err(|e| e.to_string())?;
                    let mut buf = Vec::new();
                    f.read_to_end(&mut buf).map_err(|e| e.to_string())?;
                    Ok::<_, String>(buf)
                })
                .await;
                match read {
                    Ok(Ok(bytes)) => Reply::ok(String::from_utf8_lossy(&bytes).into_owned()),
                    Ok(Err(err)) => Reply::failed(Some(&err)),
                    Err(_) => Reply::failed(None),
                }
            }
            Request::ShowRoutes => Reply::lines(self.runner.routes_text()),
            Request::ShowHostStats => Reply::ok(self.runner.hoststats_text()),
            Request::ShowRelays => Reply::lines(self.runner.relays_text()),
            Request::ShowHosts => Reply::lines(self.runner.hosts_text()),
            Request::ShowStatus => Reply::ok(show::status_text(
                self.runner.is_paused(DeliveryKind::Mda),
                self.runner.is_paused(DeliveryKind::Mta),
                self.smtp.is_paused(),
            )),
            Request::Schedule(sel) => Reply::ok(envelopes_text(
                self.runner.schedule_now(sel.id()),
                "scheduled",
            )),
            Request::Remove(sel) => Reply::ok(envelopes_text(
                self.runner.remove(sel.id()).await,
                "removed",
            )),
            Request::Suspend(sel, on) => Reply::ok(envelopes_text(
                self.runner.suspend(sel.id(), on),
                if on { "paused" } else { "resumed" },
            )),
            Request::Pause(agent) => self.pause(agent, true),
            Request::Resume(agent) => self.pause(agent, false),
            Request::LogVerbose(on) => {
                crate::log::set_verbose(on);
                Reply::succeeded()
            }
            Request::Trace(category, on) => {
                crate::log::set_trace(&category, on);
                Reply::succeeded()
            }
            Request::ResumeRoute(id) => match self.runner.resume_route(id) {
                // As 6.8, resuming a route that is not disabled succeeds and does nothing.
                Some(_) => Reply::succeeded(),
                None => Reply::failed(Some(&format!("no route {id}"))),
            },
            Request::BlockMta(addr, domain, on) => {
                self.runner.set_mta_blocked(addr, &domain, on);
                Reply::succeeded()
            }
            Request::Profile(keyword, on) => {
                if let Some(c) = crate::log::profile_category(&keyword) {
                    crate::log::set_trace(c, on);
                }
                Reply::succeeded()
            }
            Request::ShowMtaBlocks => Reply::lines(self.runner.mta_blocks_text()),
            Request::Discover(id) => {
                let n = self.runner.discover(id);
                Reply::ok(format!(
                    "{n} envelope{} discovered\n",
                    if n == 1 { "" } else { "s" }
                ))
            }
            Request::UpdateTable(name) => {
                let graph = self.runner.graph().clone();
                let table = name.clone();
                let outcome = tokio::task::spawn_blocking(move || graph.update_table(&table))
                    .await
                    .unwrap_or_else(|_| Err(UpdateError::Failed("update task failed".into())));
                match outcome {
                    Ok(_) => {
                        info!("info: Table \"{name}\" successfully updated");
                        Reply::succeeded()
                    }
                    Err(UpdateError::NoSuchTable) => {
                        warn!("warn: Lookup table not found: \"{name}\"");
                        Reply::failed(None)
                    }
                    Err(UpdateError::Failed(why)) => {
                        info!("info: Failed to update table \"{name}\"");
                        warn!("warn: update table {name}: {why}");
                        Reply::failed(None)
                    }
                }
            }
        }
    }

    /// The counters of `show stats`, in key order: those something changed (6.8 lists no
    /// other: a counter at 0 has not been touched; a gauge keeps the mark once it moved),
    /// or with `all` every one, smtpd's own `queue.envelope.enqueued` too (it feeds
    /// `monitor`).
    fn stats_pairs(&self, all: bool) -> Vec<(String, String)> {
        let s = self.runner.stats();
        let count = |a: &AtomicU64| {
            let v = a.load(Ordering::Relaxed);
            (v.to_string(), v > 0)
        };
        let gauge = |g: &crate::deliver::runner::Gauge| match g.get() {
            Some(v) => (v.to_string(), true),
            None => ("0".to_string(), false),
        };
        let uptime = now().saturating_sub(self.started);
        let sessions_seen = [&SMTP_STATS.inet4, &SMTP_STATS.inet6, &SMTP_STATS.local]
            .iter()
            .any(|a| a.load(Ordering::Relaxed) > 0);
        let (scheduled, messages) = self.runner.scheduled_counts();
        let envelopes_seen = scheduled > 0 || s.enqueued.load(Ordering::Relaxed) > 0;
        let (_, mda_seen) = gauge(&s.mda_user);
        let mta = self.runner.mta_census();
        let mta_seen = mta.is_some();
        let mta = mta.unwrap_or_default();
        let mta_gauge = |n: usize| (n.to_string(), mta_seen);
        let listed: Vec<(&str, (String, bool))> = vec![
            ("bounce.envelope", gauge(&s.bounce_envelope)),
            ("bounce.message", gauge(&s.bounce_message)),
            ("bounce.session", gauge(&s.bounce_session)),
            (
                "control.session",
                (self.sessions.load(Ordering::Relaxed).to_string(), true),
            ),
            ("mda.envelope", gauge(&s.mda_envelope)),
            ("mda.pending", gauge(&s.mda_pending)),
            ("mda.running", gauge(&s.mda_running)),
            (
                "mda.user",
                (self.runner.mda_users_busy().to_string(), mda_seen),
            ),
            ("mta.connector", mta_gauge(mta.connector)),
            ("mta.domain", mta_gauge(mta.domain)),
            ("mta.envelope", mta_gauge(mta.envelope)),
            ("mta.host", mta_gauge(mta.host)),
            ("mta.relay", mta_gauge(mta.relay)),
            ("mta.route", mta_gauge(mta.route)),
            ("mta.session", mta_gauge(mta.session)),
            ("mta.source", mta_gauge(mta.source)),
            ("mta.task", mta_gauge(mta.task)),
            ("mta.task.running", mta_gauge(mta.task_running)),
            ("queue.bounce", count(&s.bounces)),
            (
                "queue.envelope.enqueued",
                (s.enqueued.load(Ordering::Relaxed).to_string(), false),
            ),
            ("scheduler.delivery.ok", count(&s.ok)),
            ("scheduler.delivery.permfail", count(&s.permfail)),
            ("scheduler.delivery.tempfail", count(&s.tempfail)),
            (
                "scheduler.envelope",
                (scheduled.to_string(), envelopes_seen),
            ),
            ("scheduler.envelope.expired", count(&s.expired)),
            ("scheduler.envelope.incoming", gauge(&s.incoming)),
            ("scheduler.envelope.inflight", gauge(&s.inflight)),
            ("scheduler.envelope.removed", count(&s.removed)),
            (
                "scheduler.ramqueue.envelope",
                (scheduled.to_string(), envelopes_seen),
            ),
            (
                "scheduler.ramqueue.message",
                (messages.to_string(), envelopes_seen),
            ),
            ("scheduler.ramqueue.update", gauge(&s.rescheduling)),
            (
                "smtp.session",
                (
                    SMTP_STATS.current.load(Ordering::Relaxed).to_string(),
                    sessions_seen,
                ),
            ),
            ("smtp.session.inet4", count(&SMTP_STATS.inet4)),
            ("smtp.session.inet6", count(&SMTP_STATS.inet6)),
            ("smtp.session.local", count(&SMTP_STATS.local)),
            ("uptime", (uptime.to_string(), true)),
            (
                "uptime.human",
                (crate::deliver::log::duration_to_text(uptime as i64), true),
            ),
        ];
        listed
            .into_iter()
            .filter(|(_, (_, seen))| all || *seen)
            .map(|(k, (v, _))| (k.to_string(), v))
            .collect()
    }

    fn pause(&self, agent: Agent, pause: bool) -> Reply {
        let was = match agent {
            Agent::Mda => self.runner.is_paused(DeliveryKind::Mda),
            Agent::Mta => self.runner.is_paused(DeliveryKind::Mta),
            Agent::Smtp => self.smtp.is_paused(),
        };
        let name = agent.as_str();
        if was == pause {
            let state = if pause { "paused" } else { "running" };
            // 6.8 says no more than that.
            debug!("debug: {name} is already {state}");
            return Reply::failed(None);
        }
        match agent {
            Agent::Mda => self.runner.set_paused(DeliveryKind::Mda, pause),
            Agent::Mta => self.runner.set_paused(DeliveryKind::Mta, pause),
            Agent::Smtp => {
                self.smtp.set_paused(pause);
            }
        }
        info!("info: {name} {}", if pause { "paused" } else { "resumed" });
        Reply::succeeded()
    }

    async fn session(self: Arc<Self>, stream: UnixStream) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        let mut stream = stream;
        let reply = self.read_and_apply(&mut stream).await;
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(&reply.encode())).await;
        let _ = stream.shutdown().await;
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    async fn read_and_apply(&self, stream: &mut UnixStream) -> Reply {
        let allowed = match stream.peer_cred() {
            Ok(c) => c.uid() == 0 || c.uid() == nix::unistd::geteuid().as_raw(),
            Err(_) => false,
        };
        // The request is read before anyone is refused: closing a socket with unread data
        // resets it, and the client would read a reset instead of the refusal.
        let mut line = String::new();
        let mut reader = BufReader::new(stream.take(super::protocol::MAX_REQUEST as u64));
        let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
        if !allowed {
            return Reply::need_root();
        }
        match read {
            Ok(Ok(n)) if n > 0 && line.ends_with('\n') => {}
            _ => return Reply::failed(Some("incomplete request")),
        }
        match Request::parse(line.trim_end()) {
            Ok(r) => self.apply(r).await,
            Err(e) => Reply::failed(Some(&e.0)),
        }
    }
}

/// Bind the control socket at `path`: refuse if a daemon already answers there, replace a
/// stale socket file, make it reachable by everyone (mode 0666; requests are checked).
pub fn bind(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{}: control socket already in use", path.display()),
        ));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serve `smtpctl` requests on `listener` until the daemon exits.
pub async fn serve(control: Arc<Control>, listener: UnixListener, path: PathBuf) {
    tracing::debug!("debug: control: listening on {}", path.display());
    let mut failures = 0u32;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                failures = 0;
                tokio::spawn(control.clone().session(stream));
            }
            Err(e) => {
                warn!("warn: control: accept: {}", crate::log::strerror(&e));
                failures = failures.saturating_add(1);
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(50)))).await;
            }
        }
    }
}

/// Serve on a socket bound beforehand with [`bind`] (before privileges were dropped);
/// logs and returns false when it cannot be used.
pub fn start_bound(
    control: Arc<Control>,
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
) -> bool {
    match UnixListener::from_std(listener) {
        Ok(listener) => {
            tokio::spawn(serve(control, listener, path));
            true
        }
        Err(e) => {
            warn!("warn: control: {}: {e}", path.display());
            false
        }
    }
}

/// Bind and start serving; logs and returns false when the socket cannot be bound.
pub fn start(control: Arc<Control>, path: PathBuf) -> bool {
    match bind(&path) {
        Ok(listener) => start_bound(control, listener, path),
        Err(e) => {
            warn!("warn: control: {}: {e}", path.display());
            false
        }
    }
}
