//! Filter programs: every `proc NAME CMD` and every `filter NAME proc-exec CMD` of the
//! configuration is a *processor*, started once when the daemon starts and spoken to in
//! OpenSMTPD's line protocol 0.6 (spec §3.7–§3.8) for the whole life of the daemon.
//!
//! * [`spawn_all`] starts the programs (`/bin/sh -c "exec CMD"`, CMD under
//!   [`PATH_LIBEXEC`] unless absolute) while the daemon is still privileged, so that each can
//!   run as its `user`/`group` (default: the daemon's unprivileged user) in its `chroot`.
//! * [`Processors::register`] sends the `config|…` lines and waits for `register|ready` from
//!   every program; smtpd accepts no mail before that.
//! * Afterwards one task per program writes its queue of lines, one reads its answers
//!   (`filter-result|…`, `filter-dataline|…`) and routes them to the session they name.
//!   A session talks to the programs of its chain through a [`ProcSession`].
//!
//! A program that exits, or breaks the protocol, stops the daemon (`warn: lost processor:
//! NAME CAUSE`), as in OpenSMTPD: a mail server whose filters are gone must not go on
//! accepting mail unfiltered.

use std::collections::{HashMap, HashSet};
use std::io;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::model::{Config, FilterKind, Proc};
use crate::rules::filter::ProgramDecision;

/// Where a processor command that is not an absolute path is looked for (the directory
/// OpenSMTPD's filter packages install into).
pub const PATH_LIBEXEC: &str = "/usr/libexec/opensmtpd";
/// The protocol version in every `report|` and `filter|` line.
pub const PROTOCOL: &str = "0.6";
/// The `smtpd-version` announced to processors.
pub const ANNOUNCED_VERSION: &str = "6.8.0p2";
/// Longest line read from a processor: a data line of the longest message line smtpd
/// accepts (65,535 bytes) with its `filter-dataline|SID|TOKEN|` prefix fits (OpenSMTPD
/// 6.8 truncated at LINE_MAX, 2,048 bytes).
const MAX_LINE: usize = 2 * 64 * 1024;

/// The phases a processor may register a filter for.
pub const FILTER_PHASES: [&str; 15] = [
    "connect",
    "helo",
    "ehlo",
    "starttls",
    "auth",
    "mail-from",
    "rcpt-to",
    "data",
    "data-line",
    "rset",
    "quit",
    "noop",
    "help",
    "wiz",
    "commit",
];

/// The events a processor may subscribe to.
pub const REPORT_EVENTS: [&str; 20] = [
    "link-connect",
    "link-disconnect",
    "link-greeting",
    "link-identify",
    "link-tls",
    "link-auth",
    "tx-reset",
    "tx-begin",
    "tx-mail",
    "tx-rcpt",
    "tx-envelope",
    "tx-data",
    "tx-commit",
    "tx-rollback",
    "protocol-client",
    "protocol-server",
    "filter-report",
    "filter-response",
    "timeout",
    "link-reconnect",
];

/// Every processor the configuration defines, in order: `proc` lines first, then the
/// `proc-exec` filters (each a processor named after its filter).
pub fn specs(config: &Config) -> Vec<Proc> {
    let mut out = config.procs.clone();
    for f in &config.filters {
        if let FilterKind::ProcExec {
            command,
            user,
            group,
            chroot,
        } = &f.kind
        {
            out.push(Proc {
                name: f.name.clone(),
                command: command.clone(),
                user: user.clone(),
                group: group.clone(),
                chroot: chroot.clone(),
                span: f.span.clone(),
            });
        }
    }
    out
}

/// What a processor serves, as its `config|subsystem|…` lines say: `smtp-in` when a
/// listener's filter runs it, `smtp-out` when a relay action's does (through chains too),
/// both, or neither (6.8 starts it all the same).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Subsystems {
    pub smtp_in: bool,
    pub smtp_out: bool,
}

/// The subsystems of every processor of `config`, by processor name.
pub fn subsystems(config: &Config) -> HashMap<String, Subsystems> {
    let mut out: HashMap<String, Subsystems> = HashMap::new();
    // The processors a filter runs: itself (`proc-exec`), its `proc`, or its chain's.
    fn procs_of<'a>(config: &'a Config, filter: &'a str, depth: u32, found: &mut Vec<&'a str>) {
        let Some(f) = config.filters.iter().find(|f| f.name == filter) else {
            return;
        };
        match &f.kind {
            FilterKind::Proc(name) => found.push(name),
            FilterKind::ProcExec { .. } => found.push(&f.name),
            FilterKind::Builtin(_) => {}
            FilterKind::Chain(members) if depth < 8 => {
                for m in members {
                    procs_of(config, m, depth + 1, found);
                }
            }
            FilterKind::Chain(_) => {}
        }
    }
    let mut mark = |filter: &str, inbound: bool| {
        let mut found = Vec::new();
        procs_of(config, filter, 0, &mut found);
        for name in found {
            let e = out.entry(name.to_string()).or_default();
            if inbound {
                e.smtp_in = true;
            } else {
                e.smtp_out = true;
            }
        }
    };
    for l in &config.listeners {
        if let Some(f) = &l.filter {
            mark(f, true);
        }
    }
    for a in &config.actions {
        if let crate::config::model::ActionMethod::Relay(r) = &a.method
            && let Some(f) = &r.filter
        {
            mark(f, false);
        }
    }
    out
}

/// The shell command a processor runs: CMD, under [`PATH_LIBEXEC`] unless it is absolute.
pub fn shell_command(command: &str) -> String {
    if command.starts_with('/') {
        format!("exec {command}")
    } else {
        format!("exec {PATH_LIBEXEC}/{command}")
    }
}

/// A processor started but not yet registered.
pub struct Spawned {
    spec: Proc,
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: ChildStderr,
}

/// The identity a processor runs as when the daemon is root.
fn identity(spec: &Proc) -> Result<(u32, u32), String> {
    let user_name = match &spec.user {
        Some(u) => u.clone(),
        None => crate::privsep::unprivileged_user()?.name,
    };
    let user = nix::unistd::User::from_name(&user_name)
        .ok()
        .flatten()
        .ok_or_else(|| format!("processor {}: unknown user {user_name}", spec.name))?;
    let gid = match &spec.group {
        Some(g) => {
            nix::unistd::Group::from_name(g)
                .ok()
                .flatten()
                .ok_or_else(|| format!("processor {}: unknown group {g}", spec.name))?
                .gid
        }
        None => user.gid,
    };
    Ok((user.uid.as_raw(), gid.as_raw()))
}

/// Starts every processor. Run while still privileged: as root each program gets its own
/// user, group and chroot; otherwise it runs as the daemon's user (and a `chroot` is
/// refused).
pub fn spawn_all(specs: &[Proc]) -> Result<Vec<Spawned>, String> {
    let root = nix::unistd::geteuid().is_root();
    let mut out = Vec::new();
    for spec in specs {
        // As 6.8 runs it (system(3)): the shell's own errors read `sh: 1: …`.
        let mut cmd = Command::new("/bin/sh");
        std::os::unix::process::CommandExt::arg0(&mut cmd, "sh");
        cmd.arg("-c")
            .arg(shell_command(&spec.command))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let chroot = spec.chroot.clone();
        if chroot.is_some() && !root {
            return Err(format!(
                "processor {}: chroot needs the daemon to start as root",
                spec.name
            ));
        }
        let ids = if root { Some(identity(spec)?) } else { None };
        let croot = match &chroot {
            Some(dir) => Some(
                std::ffi::CString::new(dir.as_str())
                    .map_err(|_| format!("processor {}: bad chroot path", spec.name))?,
            ),
            None => None,
        };
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the child between fork and exec. It only makes raw
        // system calls through nix — chroot(2), chdir(2), setgroups(2), setgid(2), setuid(2)
        // and setsid(2) — which are async-signal-safe; it allocates nothing (the chroot path
        // became a C string before the fork) and touches no lock or shared state.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(dir) = &croot {
                    nix::unistd::chroot(dir.as_c_str()).map_err(io::Error::from)?;
                    nix::unistd::chdir(c"/").map_err(io::Error::from)?;
                }
                if let Some((uid, gid)) = ids {
                    let gid = nix::unistd::Gid::from_raw(gid);
                    nix::unistd::setgroups(&[gid]).map_err(io::Error::from)?;
                    nix::unistd::setgid(gid).map_err(io::Error::from)?;
                    nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))
                        .map_err(io::Error::from)?;
                }
                nix::unistd::setsid().map_err(io::Error::from)?;
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("processor {}: {e}", spec.name))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(format!("processor {}: no pipes", spec.name));
        };
        out.push(Spawned {
            spec: spec.clone(),
            child,
            stdin,
            stdout,
            stderr,
        });
    }
    Ok(out)
}

/// A line from a processor, for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Result {
        proc: usize,
        token: u64,
        decision: ProgramDecision,
    },
    DataLine {
        proc: usize,
        token: u64,
        /// The line as the program wrote it: message lines need not be UTF-8.
        line: Vec<u8>,
    },
}

/// A line a processor sent after `register|ready`, parsed. Errors are the fatal texts of
/// OpenSMTPD 6.8.
pub fn parse_answer(proc: usize, raw: &[u8]) -> Result<Option<(u64, Response)>, String> {
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    // A data line keeps its bytes; everything else is text.
    if let Some(rest) = raw.strip_prefix(b"filter-dataline|") {
        let mut f = rest.splitn(3, |&b| b == b'|');
        let (Some(sid), Some(token), Some(data)) = (f.next(), f.next(), f.next()) else {
            return Err(format!(
                "Missing fields in filter-dataline: {}",
                String::from_utf8_lossy(raw)
            ));
        };
        let (Some(sid), Some(token)) = (hex(&text(sid)), hex(&text(token))) else {
            return Err(format!(
                "Invalid session or token in filter-dataline: {}",
                String::from_utf8_lossy(raw)
            ));
        };
        return Ok(Some((
            sid,
            Response::DataLine {
                proc,
                token,
                line: data.to_vec(),
            },
        )));
    }
    let owned = String::from_utf8_lossy(raw);
    let line: &str = &owned;
    if let Some(rest) = line.strip_prefix("filter-result|") {
        let mut f = rest.splitn(4, '|');
        let (Some(sid), Some(token), Some(what)) = (f.next(), f.next(), f.next()) else {
            return Err(format!("Missing fields in filter-result: {line}"));
        };
        let (Some(sid), Some(token)) = (hex(sid), hex(token)) else {
            return Err(format!("Invalid session or token in filter-result: {line}"));
        };
        let param = f.next();
        let decision = match (what, param) {
            ("proceed", None) => ProgramDecision::Proceed,
            ("junk", None) => ProgramDecision::Junk,
            ("proceed" | "junk", Some(_)) => {
                return Err(format!("Unexpected parameter after {what}: {line}"));
            }
            ("reject", Some(p)) => ProgramDecision::Reject(p.to_string()),
            ("disconnect", Some(p)) => ProgramDecision::Disconnect(p.to_string()),
            ("rewrite", Some(p)) => ProgramDecision::Rewrite(p.to_string()),
            ("report", Some(p)) => ProgramDecision::Report(p.to_string()),
            ("reject" | "disconnect" | "rewrite" | "report", None) => {
                return Err(format!("Missing parameter: {line}"));
            }
            _ => return Err(format!("Invalid filter-result decision: {line}")),
        };
        return Ok(Some((
            sid,
            Response::Result {
                proc,
                token,
                decision,
            },
        )));
    }
    if line.starts_with("report|") {
        // Processors may report to smtpd; nothing is done with it (as 6.8).
        return Ok(None);
    }
    Err(format!("Invalid filter message type: {line}"))
}

/// The report events of one direction a processor subscribed to (`*`: all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscriptions {
    pub all: bool,
    pub events: HashSet<String>,
}

impl Subscriptions {
    /// Does the processor want this event?
    pub fn wants(&self, event: &str) -> bool {
        self.all || self.events.contains(event)
    }

    /// Did it subscribe to anything?
    pub fn any(&self) -> bool {
        self.all || !self.events.is_empty()
    }
}

/// What a processor registered for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registration {
    pub filters: HashSet<String>,
    /// `smtp-in` report events.
    pub reports: Subscriptions,
    /// `smtp-out` report events (relay sessions of actions with a `filter`).
    pub out_reports: Subscriptions,
}

impl Registration {
    /// Takes one line before `register|ready`. `Ok(true)` at `register|ready`.
    pub fn take(&mut self, line: &str) -> Result<bool, String> {
        if line == "register|ready" {
            return Ok(true);
        }
        let Some(rest) = line.strip_prefix("register|") else {
            return Err(format!(
                "Non-register message before register|ready: {line}"
            ));
        };
        let f: Vec<&str> = rest.split('|').collect();
        match f.as_slice() {
            ["report", dir, event] => {
                if *dir != "smtp-in" && *dir != "smtp-out" {
                    return Err(format!("Invalid message direction: {dir}"));
                }
                let subscriptions = if *dir == "smtp-in" {
                    &mut self.reports
                } else {
                    &mut self.out_reports
                };
                if *event == "*" {
                    subscriptions.all = true;
                } else if REPORT_EVENTS.contains(event) {
                    subscriptions.events.insert(event.to_string());
                } else {
                    return Err(format!("Unrecognized report name: {event}"));
                }
                Ok(false)
            }
            ["filter", dir, phase] => {
                if *dir != "smtp-in" {
                    return Err(format!("Invalid message direction: {dir}"));
                }
                if !FILTER_PHASES.contains(phase) {
                    return Err(format!("Invalid register line received: {line}"));
                }
                self.filters.insert(phase.to_string());
                Ok(false)
            }
            _ => Err(format!("Invalid register line received: {line}")),
        }
    }

    /// The subscriptions of a direction (`smtp-in`, `smtp-out`).
    fn reports_for(&self, direction: &str) -> &Subscriptions {
        if direction == "smtp-in" {
            &self.reports
        } else {
            &self.out_reports
        }
    }
}

/// Sends `report|…|DIRECTION|EVENT|SID[|PARAMS]` to those of `procs` that want it.
fn send_report(
    procs: &[Arc<Processor>],
    direction: &str,
    sid: u64,
    event: &str,
    params: Option<&str>,
) {
    let mut line = None;
    for p in procs {
        if p.registration.reports_for(direction).wants(event) {
            let l = line.get_or_insert_with(|| {
                let head = format!(
                    "report|{PROTOCOL}|{}|{direction}|{event}|{sid:016x}",
                    timestamp()
                );
                match params {
                    Some(x) => format!("{head}|{x}"),
                    None => head,
                }
            });
            p.send(l.clone());
        }
    }
}

/// An outbound (relay) session's link to the programs of its action's `filter` chain that
/// subscribed to `smtp-out` reports. As in 6.8, relay sessions send these programs reports
/// only, never filter requests.
pub struct OutReports {
    sid: u64,
    procs: Vec<Arc<Processor>>,
}

impl OutReports {
    /// The chain's programs with `smtp-out` report subscriptions; `None` without any.
    pub fn open(all: &Arc<Processors>, chain: &[String], sid: u64) -> Option<OutReports> {
        let procs: Vec<Arc<Processor>> = chain
            .iter()
            .filter_map(|n| all.named(n).cloned())
            .filter(|p| p.registration.out_reports.any())
            .collect();
        (!procs.is_empty()).then_some(OutReports { sid, procs })
    }

    /// Sends an `smtp-out` report event to the programs that subscribed to it.
    pub fn report(&self, event: &str, params: Option<&str>) {
        send_report(&self.procs, "smtp-out", self.sid, event, params);
    }
}

/// One running processor.
pub struct Processor {
    pub name: String,
    index: usize,
    out: mpsc::UnboundedSender<Vec<u8>>,
    pub registration: Registration,
    sessions: Mutex<HashMap<u64, mpsc::UnboundedSender<Response>>>,
}

impl Processor {
    fn send(&self, line: impl Into<Vec<u8>>) {
        let _ = self.out.send(line.into());
    }

    /// Does it filter this phase?
    pub fn filters(&self, phase: &str) -> bool {
        self.registration.filters.contains(phase)
    }
}

/// Every running processor, by name.
#[derive(Default)]
pub struct Processors {
    procs: Vec<Arc<Processor>>,
    by_name: HashMap<String, usize>,
}

/// Stops the daemon because a processor failed: OpenSMTPD shuts down too.
fn fatal(name: &str, why: &str) -> ! {
    error!("fatal: processor {name}: {why}");
    std::process::exit(1);
}

fn timestamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

/// Reads one line (without its end); `None` at the end of the stream.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Vec<u8>>> {
    buf.clear();
    let n = (&mut *r)
        .take(MAX_LINE as u64)
        .read_until(b'\n', buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Ok(Some(buf.clone()))
}

/// A line as text (for the log and the handshake).
fn text(line: &[u8]) -> String {
    String::from_utf8_lossy(line).into_owned()
}

impl Processors {
    /// No processors (a configuration without `proc` or `proc-exec`).
    pub fn none() -> Arc<Processors> {
        Arc::new(Processors::default())
    }

    /// Sends the `config|…` handshake to every spawned processor and waits until each has
    /// sent `register|ready`; then starts their reader, writer and reaper tasks. Must run
    /// inside the runtime.
    pub async fn register(
        spawned: Vec<Spawned>,
        subsystems: &HashMap<String, Subsystems>,
        admd: &str,
        session_timeout: Duration,
    ) -> Result<Arc<Processors>, RegisterError> {
        let mut procs = Vec::new();
        let mut by_name = HashMap::new();
        let mut readers = Vec::new();
        for (index, s) in spawned.into_iter().enumerate() {
            let name = s.spec.name.clone();
            let mut stdin = tokio::process::ChildStdin::from_std(s.stdin)
                .map_err(|e| format!("processor {name}: {e}"))?;
            let stdout = tokio::process::ChildStdout::from_std(s.stdout)
                .map_err(|e| format!("processor {name}: {e}"))?;
            let stderr = tokio::process::ChildStderr::from_std(s.stderr)
                .map_err(|e| format!("processor {name}: {e}"))?;
            // Its error output is logged line by line, as `NAME: LINE`.
            let err_name = name.clone();
            let err_task = tokio::spawn(async move {
                let mut r = BufReader::new(stderr);
                let mut buf = Vec::new();
                while let Ok(Some(line)) = read_line(&mut r, &mut buf).await {
                    info!("{err_name}: {}", text(&line));
                }
            });
            let mut reader = BufReader::new(stdout);
            let mut registration = Registration::default();
            let handshake = async {
                let serves = subsystems.get(&name).copied().unwrap_or_default();
                let hello = format!(
                    "config|smtpd-version|{ANNOUNCED_VERSION}\nconfig|smtp-session-timeout|{}\n\
                     {}{}config|admd|{admd}\nconfig|ready\n",
                    session_timeout.as_secs(),
                    if serves.smtp_in {
                        "config|subsystem|smtp-in\n"
                    } else {
                        ""
                    },
                    if serves.smtp_out {
                        "config|subsystem|smtp-out\n"
                    } else {
                        ""
                    },
                );
                stdin
                    .write_all(hello.as_bytes())
                    .await
                    .map_err(|e| format!("processor {name}: {e}"))?;
                let mut buf = Vec::new();
                // Bounded by what the program sends: every line is one registration or the end.
                loop {
                    match read_line(&mut reader, &mut buf).await {
                        Ok(Some(line)) => match registration.take(&text(&line)) {
                            Ok(true) => break,
                            Ok(false) => {}
                            Err(e) => return Err(format!("processor {name}: {e}")),
                        },
                        Ok(None) => {
                            return Err(format!("processor {name}: exited before register|ready"));
                        }
                        Err(e) => return Err(format!("processor {name}: {e}")),
                    }
                }
                Ok::<(), String>(())
            };
            // A program that never gets ready holds the daemon back: say so, every 30 s.
            let waiting = name.clone();
            let reminder = tokio::spawn(async move {
                let mut waited = 0u64;
                loop {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    waited += 30;
                    warn!(
                        "warn: processor {waiting}: no register|ready after {waited}s; \
                         smtpd accepts no mail until it registers"
                    );
                }
            });
            let outcome = handshake.await;
            reminder.abort();
            if let Err(e) = outcome {
                // What the program said on its way out explains it best: logged first.
                let _ = tokio::time::timeout(Duration::from_secs(1), err_task).await;
                // A program that ended (could not start, refused its configuration) is
                // lost, as 6.8 says it; one that broke the protocol is stopped.
                let mut child = s.child;
                let ended = tokio::task::spawn_blocking(move || {
                    for _ in 0..50 {
                        match child.try_wait() {
                            Ok(Some(st)) => return Some(exit_cause(st)),
                            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                            Err(_) => return None,
                        }
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    None
                })
                .await
                .ok()
                .flatten();
                return Err(match ended {
                    Some(cause) => RegisterError::Lost(format!("{name} {cause}")),
                    None => RegisterError::Failed(e),
                });
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let p = Arc::new(Processor {
                name: name.clone(),
                index,
                out: tx,
                registration,
                sessions: Mutex::new(HashMap::new()),
            });
            tokio::spawn(write_loop(name.clone(), stdin, rx));
            readers.push((p.clone(), reader, s.child));
            by_name.insert(name, index);
            procs.push(p);
        }
        for (p, reader, child) in readers {
            tokio::spawn(read_loop(p, reader, child));
        }
        Ok(Arc::new(Processors { procs, by_name }))
    }

    fn named(&self, name: &str) -> Option<&Arc<Processor>> {
        self.by_name.get(name).map(|&i| &self.procs[i])
    }
}

async fn write_loop(
    name: String,
    mut stdin: tokio::process::ChildStdin,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let mut out = Vec::with_capacity(4096);
    while let Some(line) = rx.recv().await {
        out.clear();
        out.extend_from_slice(&line);
        out.push(b'\n');
        // Everything else already queued goes in the same write.
        while out.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(l) => {
                    out.extend_from_slice(&l);
                    out.push(b'\n');
                }
                Err(_) => break,
            }
        }
        if let Err(e) = stdin.write_all(&out).await {
            warn!(
                "warn: processor {name}: write: {}",
                crate::log::strerror(&e)
            );
            return;
        }
    }
}

async fn read_loop(
    p: Arc<Processor>,
    mut reader: BufReader<tokio::process::ChildStdout>,
    child: Child,
) {
    let mut buf = Vec::new();
    while let Ok(Some(line)) = read_line(&mut reader, &mut buf).await {
        match parse_answer(p.index, &line) {
            Ok(Some((sid, response))) => {
                let target = p.sessions.lock().ok().and_then(|s| s.get(&sid).cloned());
                // An unknown session is ignored: it may have ended meanwhile.
                if let Some(t) = target {
                    let _ = t.send(response);
                }
            }
            Ok(None) => {}
            Err(e) => fatal(&p.name, &e),
        }
    }
    let name = p.name.clone();
    let cause = tokio::task::spawn_blocking(move || {
        let mut child = child;
        match child.wait() {
            Ok(st) => exit_cause(st),
            Err(e) => format!("wait: {e}"),
        }
    })
    .await
    .unwrap_or_else(|_| "lost".to_string());
    // A stop signal sent to every process (a service manager's stop) may end the program
    // a moment before the daemon starts its own orderly exit: that is no failure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    if STOPPING.load(std::sync::atomic::Ordering::SeqCst) {
        info!("info: processor {name} {cause} while smtpd stops");
        return;
    }
    warn!("warn: lost processor: {name} {cause}");
    info!("Exiting");
    std::process::exit(1);
}

/// How a program ended, in 6.8's words.
fn exit_cause(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = st.signal() {
        format!("terminated; signal {sig}")
    } else if st.code() == Some(0) {
        "exited okay".to_string()
    } else {
        "exited abnormally".to_string()
    }
}

/// Why the processors could not all register.
#[derive(Debug)]
pub enum RegisterError {
    /// A program ended before it registered: `NAME CAUSE` (6.8's `lost processor`).
    Lost(String),
    /// A program broke the protocol or could not be talked to.
    Failed(String),
}

impl From<String> for RegisterError {
    fn from(why: String) -> Self {
        RegisterError::Failed(why)
    }
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegisterError::Lost(what) => write!(f, "warn: lost processor: {what}"),
            RegisterError::Failed(why) => write!(f, "fatal: {why}"),
        }
    }
}

/// Set once smtpd has begun its orderly exit (SIGTERM or SIGINT).
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// smtpd is stopping: a filter program that ends now is not lost.
pub fn set_stopping() {
    STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// A session's link to the processors of its listener's chain.
pub struct ProcSession {
    sid: u64,
    /// The chain's processors, in chain order.
    procs: Vec<Arc<Processor>>,
    rx: mpsc::UnboundedReceiver<Response>,
    /// Data lines that arrived while a filter result was awaited.
    early: Vec<Response>,
    /// The token of the current message's data-line stream.
    data_token: u64,
}

/// What [`ProcSession::finish_data`] can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataError {
    Timeout,
    TooBig,
}

impl ProcSession {
    /// Joins the processors named by the chain (in its order); `None` without any.
    pub fn open(all: &Arc<Processors>, chain: &[String], sid: u64) -> Option<ProcSession> {
        let procs: Vec<Arc<Processor>> =
            chain.iter().filter_map(|n| all.named(n).cloned()).collect();
        if procs.is_empty() {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        for p in &procs {
            if let Ok(mut s) = p.sessions.lock() {
                s.insert(sid, tx.clone());
            }
        }
        Some(ProcSession {
            sid,
            procs,
            rx,
            early: Vec::new(),
            data_token: 0,
        })
    }

    /// Sends a report event to the chain's processors that subscribed to it.
    pub fn report(&self, event: &str, params: Option<&str>) {
        send_report(&self.procs, "smtp-in", self.sid, event, params);
    }

    /// Does the named processor filter this phase?
    pub fn hooks(&self, proc: &str, phase: &str) -> bool {
        self.procs
            .iter()
            .any(|p| p.name == proc && p.filters(phase))
    }

    /// Asks the named processor about a phase and waits (at most `limit`) for its decision.
    pub async fn query(
        &mut self,
        proc: &str,
        phase: &str,
        params: &str,
        limit: Duration,
    ) -> Option<ProgramDecision> {
        let p = self.procs.iter().find(|p| p.name == proc)?.clone();
        let token = crate::smtp::server::rand_u64();
        p.send(format!(
            "filter|{PROTOCOL}|{}|smtp-in|{phase}|{:016x}|{token:016x}|{params}",
            timestamp(),
            self.sid
        ));
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Response::Result {
                    proc: i,
                    token: t,
                    decision,
                })) if i == p.index && t == token => return Some(decision),
                Ok(Some(r @ Response::DataLine { .. })) => self.early.push(r),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Does a processor of the chain filter data lines?
    pub fn filters_data_lines(&self) -> bool {
        self.procs.iter().any(|p| p.filters("data-line"))
    }

    /// Starts a message's data-line stream.
    pub fn begin_data(&mut self) {
        self.data_token = crate::smtp::server::rand_u64();
        self.early.clear();
    }

    fn send_data_line(&self, p: &Processor, line: &[u8]) {
        let mut out = format!(
            "filter|{PROTOCOL}|{}|smtp-in|data-line|{:016x}|{:016x}|",
            timestamp(),
            self.sid,
            self.data_token
        )
        .into_bytes();
        out.extend_from_slice(line);
        p.send(out);
    }

    /// Sends message lines (each without its line end, as received, dot-stuffed, bytes as
    /// they came) to the first data-line filter.
    pub fn data_lines<'a>(&self, lines: impl Iterator<Item = &'a [u8]>) {
        let Some(first) = self.procs.iter().find(|p| p.filters("data-line")) else {
            return;
        };
        for line in lines {
            self.send_data_line(first, line);
        }
    }

    /// After the final `.` was sent: collects the first filter's output up to its `.`, feeds
    /// it through the other data-line filters in turn, and returns the last output (the
    /// final `.` left out). At most `limit` to wait, at most `max_bytes` of output.
    pub async fn finish_data(
        &mut self,
        limit: Duration,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, DataError> {
        let deadline = tokio::time::Instant::now() + limit;
        let filters: Vec<Arc<Processor>> = self
            .procs
            .iter()
            .filter(|p| p.filters("data-line"))
            .cloned()
            .collect();
        let mut lines: Vec<Vec<u8>> = Vec::new();
        for (n, p) in filters.iter().enumerate() {
            if n > 0 {
                for l in &lines {
                    self.send_data_line(p, l);
                }
                self.send_data_line(p, b".");
            }
            lines = self.collect(p.index, deadline, max_bytes).await?;
        }
        Ok(lines)
    }

    async fn collect(
        &mut self,
        proc: usize,
        deadline: tokio::time::Instant,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, DataError> {
        let mut out = Vec::new();
        let mut size = 0usize;
        let token = self.data_token;
        let mut early = std::mem::take(&mut self.early).into_iter();
        loop {
            let next = match early.next() {
                Some(r) => Some(r),
                None => match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(r) => r,
                    Err(_) => return Err(DataError::Timeout),
                },
            };
            match next {
                Some(Response::DataLine {
                    proc: i,
                    token: t,
                    line,
                }) if i == proc && t == token => {
                    if line == b"." {
                        // Lines of a later filter that came early stay for its turn.
                        self.early.extend(early);
                        return Ok(out);
                    }
                    size += line.len() + 2;
                    if size > max_bytes {
                        return Err(DataError::TooBig);
                    }
                    out.push(line);
                }
                Some(r @ Response::DataLine { .. }) => self.early.push(r),
                Some(_) => {}
                None => return Err(DataError::Timeout),
            }
        }
    }
}

impl Drop for ProcSession {
    fn drop(&mut self) {
        for p in &self.procs {
            if let Ok(mut s) = p.sessions.lock() {
                s.remove(&self.sid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsystems_follow_listeners_relays_and_chains() {
        use crate::config::{self, parse::Options, system::RealSystem};
        let text = "proc \"p\" \"/bin/cat\"\n\
                    filter \"in\" proc \"p\"\n\
                    filter \"out\" proc-exec \"/bin/cat\"\n\
                    filter \"both\" proc-exec \"/bin/cat\"\n\
                    filter \"idle\" proc-exec \"/bin/cat\"\n\
                    filter \"chain\" chain { \"in\", \"both\" }\n\
                    listen on 127.0.0.1 filter \"chain\"\n\
                    action \"r\" relay filter \"out\"\n\
                    action \"r2\" relay host smtp://192.0.2.1 filter \"both\"\n\
                    match from any for domain \"a.test\" action \"r\"\n\
                    match from any for domain \"b.test\" action \"r2\"\n";
        let opts = Options {
            defines: vec![],
            hostname: Some("mx.test".into()),
        };
        let c = config::check_text("t.conf", text.as_bytes(), &opts, &RealSystem);
        let cfg = c
            .config
            .unwrap_or_else(|| panic!("{}", c.diagnostics.render(false, &|_| None)));
        let s = subsystems(&cfg);
        let of = |n: &str| s.get(n).copied().unwrap_or_default();
        assert_eq!(
            of("p"),
            Subsystems {
                smtp_in: true,
                smtp_out: false
            }
        );
        assert_eq!(
            of("out"),
            Subsystems {
                smtp_in: false,
                smtp_out: true
            }
        );
        assert_eq!(
            of("both"),
            Subsystems {
                smtp_in: true,
                smtp_out: true
            }
        );
        assert_eq!(of("idle"), Subsystems::default());
    }

    #[test]
    fn commands_go_under_libexec_unless_absolute() {
        assert_eq!(
            shell_command("filter-rspamd"),
            "exec /usr/libexec/opensmtpd/filter-rspamd"
        );
        assert_eq!(
            shell_command("/usr/local/bin/f -v"),
            "exec /usr/local/bin/f -v"
        );
    }

    #[test]
    fn registration_takes_filters_reports_and_ready() {
        let mut r = Registration::default();
        assert_eq!(r.take("register|report|smtp-in|link-connect"), Ok(false));
        assert_eq!(r.take("register|report|smtp-out|*"), Ok(false));
        assert_eq!(r.take("register|filter|smtp-in|data-line"), Ok(false));
        assert_eq!(r.take("register|ready"), Ok(true));
        assert!(r.reports.wants("link-connect"));
        assert!(
            !r.reports.wants("tx-begin"),
            "smtp-out's * is not smtp-in's"
        );
        assert!(r.out_reports.wants("tx-begin"));
        assert!(!r.out_reports.wants("link-connect") || r.out_reports.all);
        let mut only = Registration::default();
        only.take("register|report|smtp-out|tx-mail").unwrap();
        assert!(only.out_reports.wants("tx-mail") && !only.out_reports.wants("tx-rcpt"));
        assert!(
            !only.reports.wants("tx-mail"),
            "smtp-in's tx-mail is not smtp-out's"
        );
        assert!(r.filters.contains("data-line"));
        assert_eq!(
            r.take("hello"),
            Err("Non-register message before register|ready: hello".into())
        );
        assert_eq!(
            r.take("register|report|smtp-x|link-connect"),
            Err("Invalid message direction: smtp-x".into())
        );
        assert_eq!(
            r.take("register|report|smtp-in|nope"),
            Err("Unrecognized report name: nope".into())
        );
        assert_eq!(
            r.take("register|filter|smtp-in|nope"),
            Err("Invalid register line received: register|filter|smtp-in|nope".into())
        );
        r.take("register|report|smtp-in|*").unwrap();
        assert!(r.reports.wants("tx-begin"));
    }

    #[test]
    fn answers_are_parsed_strictly() {
        let r = parse_answer(3, b"filter-result|00000000000000aa|0b|proceed").unwrap();
        assert_eq!(
            r,
            Some((
                0xaa,
                Response::Result {
                    proc: 3,
                    token: 0xb,
                    decision: ProgramDecision::Proceed
                }
            ))
        );
        let r = parse_answer(0, b"filter-result|1|2|reject|550 no | way").unwrap();
        assert_eq!(
            r.unwrap().1,
            Response::Result {
                proc: 0,
                token: 2,
                decision: ProgramDecision::Reject("550 no | way".into())
            }
        );
        let r = parse_answer(0, b"filter-dataline|1|2|a|b|c").unwrap();
        assert_eq!(
            r.unwrap().1,
            Response::DataLine {
                proc: 0,
                token: 2,
                line: b"a|b|c".to_vec()
            }
        );
        let r = parse_answer(0, b"filter-dataline|1|2|").unwrap();
        assert_eq!(
            r.unwrap().1,
            Response::DataLine {
                proc: 0,
                token: 2,
                line: Vec::new()
            }
        );
        // Message bytes need not be UTF-8: they are kept as they are.
        let r = parse_answer(0, b"filter-dataline|1|2|caf\xe9").unwrap();
        assert_eq!(
            r.unwrap().1,
            Response::DataLine {
                proc: 0,
                token: 2,
                line: b"caf\xe9".to_vec()
            }
        );
        assert_eq!(parse_answer(0, b"report|0.6|x").unwrap(), None);
        assert!(parse_answer(0, b"filter-result|1|2|proceed|x").is_err());
        assert!(parse_answer(0, b"filter-result|1|2|junk|x").is_err());
        assert!(parse_answer(0, b"filter-result|1|2|reject").is_err());
        assert!(parse_answer(0, b"filter-result|1|2|maybe").is_err());
        assert!(parse_answer(0, b"filter-result|zz|2|proceed").is_err());
        assert_eq!(
            parse_answer(0, b"hello"),
            Err("Invalid filter message type: hello".into())
        );
    }
}
