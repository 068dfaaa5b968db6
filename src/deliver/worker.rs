//! Long-lived delivery workers: helper processes, per recipient identity, that deliver
//! maildir jobs in batches.
//!
//! A one-shot helper ([`super::privsep`]) costs a process start per message: an
//! `exec` of the smtpd binary, its dynamic linking and page faults — about a
//! millisecond of CPU, more than the delivery itself. A mailbox that receives a
//! steady flow of mail gets workers instead: the same helper program, started with
//! [`WORKER_ENV`] naming its uid and gid, drops to that identity once, then serves
//! jobs over a Unix socket until the privileged side closes it.
//!
//! Deliveries to one identity that arrive while its workers are busy wait in a queue;
//! a worker that becomes free takes all of them (up to [`BATCH`]) at once. It writes and
//! fsyncs each message file and renames it into `new/`, then fsyncs each distinct `new/`
//! directory **once for the batch**, and only then reports: every success it reports is
//! as durable as a lone delivery's, and a busy mailbox pays one directory fsync per batch
//! instead of one per message (group commit, as the queue does for its own directories).
//! At most [`WORKERS_PER_IDENTITY`] workers serve one identity at a time.
//!
//! Protocol: packets ([`crate::fdpass`]) on a socket pair, the worker's end as its standard
//! input at start:
//!
//! ```text
//! agent  → worker   per job: "1" or "0" (more jobs follow or not), then the job text
//!                   (Job::encode), with the message file as SCM_RIGHTS
//! worker → agent    per job, when it takes it: "A" (from here on it may have had effects)
//! worker → agent    after the batch's directory fsyncs, per job: the outcome text
//! ```
//!
//! The acknowledgement makes a retry safe: a reused worker that died while idle closes
//! the socket before `A`, and only then is the job given to a newly started worker. A job whose
//! worker dies after `A` is reported as a one-shot helper's death would be (signal, time
//! limit), and never retried here. Each job, and the batch's directory fsyncs, run under
//! `alarm()` with the delivery time limit, as a one-shot helper does; the privileged side
//! also bounds each of its reads.
//!
//! Who starts them: the process that runs the pool when it may take the recipient's
//! identity (root, or already that user). The network side of a daemon started as root
//! may not: it asks the privileged broker, which starts the worker, keeps it as its own
//! child (collecting it when it ends, waiting for one given up, killing it after 10 s)
//! and passes back only the socket and the process id. The jobs then go from the network
//! side to the worker with no hop through the broker.
//!
//! Only maildir deliveries use workers: they run no program of the recipient's, need
//! no per-job session or environment, and are the common case. Idle workers are
//! closed after [`IDLE_LIMIT`] by a reaper thread, and all of them go when the daemon
//! exits (their sockets close).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use super::maildir;
use super::privsep::{
    HelperProgram, become_identity, decode_outcome, encode_outcome, helper_ended,
};
use super::request::{Job, Method};
use super::result::Failure;
use super::result::{EX_TEMPFAIL, Outcome, strerror};
use super::run::run_job_deferring_sync;
use crate::fdpass;

/// The environment variable that starts a worker: `UID:GID`.
pub const WORKER_ENV: &str = "SMTPD_DELIVERY_WORKER";

/// A worker idle this long is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(5);

/// Most jobs handed to a worker at once.
pub const BATCH: usize = 32;

/// Most workers serving one identity at the same time. Two keep two fsyncs in flight for a
/// busy mailbox while the jobs that arrive meanwhile gather into the next batches (one
/// fsync of `new/` each); four made batches of one under load and cost 10-20 % more CPU
/// per message for no more messages per second (bench/solo.sh-style runs, 50 and 200
/// sessions).
pub const WORKERS_PER_IDENTITY: usize = 2;

/// Longest job or outcome packet (the broker takes jobs of the same size).
const MAX_PACKET: usize = 64 * 1024;

/// Extra time the privileged side waits beyond the job's own alarm.
const WAIT_GRACE: Duration = Duration::from_secs(15);

type Key = (u32, u32);

/// One running worker: a child of this process, or one the privileged broker started and
/// lent to this (unprivileged) process, which can neither wait for it nor signal it.
struct Worker {
    child: Option<Child>,
    pid: u32,
    socket: OwnedFd,
}

/// Most workers the broker lends out at once (a bound on what the network side may ask).
pub const MAX_LEASED: usize = 256;

/// Most workers one pool keeps, busy and idle, over all identities: before it starts one
/// more, it closes the one idle longest. Below [`MAX_LEASED`], so that the broker still
/// counts a worker just closed (until it has exited) without refusing the next one.
pub const MAX_WORKERS: usize = 192;

/// A lent worker as the broker keeps it: running, or ended (and how) until the borrower
/// asks or [`LEASE_MEMORY`] passes.
enum Leased {
    Running(Child),
    Ended(std::process::ExitStatus, Instant),
}

/// How long the broker remembers how a lent worker ended.
const LEASE_MEMORY: Duration = Duration::from_secs(60);

/// How long the broker waits for a lent worker whose borrower gave it up before it kills it.
const LEASE_END_WAIT: Duration = Duration::from_secs(10);

/// Where a waiting delivery gets its result.
#[derive(Default)]
struct Slot {
    result: Mutex<Option<Result<Outcome, String>>>,
    ready: Condvar,
}

impl Slot {
    fn fill(&self, result: Result<Outcome, String>) {
        let mut r = self.result.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(result);
        }
        self.ready.notify_all();
    }

    fn wait(&self) -> Result<Outcome, String> {
        let mut r = self.result.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(result) = r.take() {
                return result;
            }
            r = self.ready.wait(r).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A job waiting for a worker. Dropped without a result (a path nobody foresaw), it fills
/// its slot with a temporary failure, so that no delivery waits forever.
struct Pending {
    text: String,
    message: File,
    slot: Arc<Slot>,
    retried: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.slot.fill(Err("delivery worker lost the job".into()));
    }
}

/// The state of one identity: jobs waiting, workers at work, idle workers.
#[derive(Default)]
struct Lane {
    pending: VecDeque<Pending>,
    drivers: usize,
    idle: Vec<(Worker, Instant)>,
}

type Lanes = Mutex<HashMap<Key, Lane>>;

/// The workers of one privileged side, by identity.
pub struct WorkerPool {
    helper: HelperProgram,
    lanes: Arc<Lanes>,
    /// [`MAX_WORKERS`], or less for tests.
    max_workers: usize,
    /// Workers started for another process (the broker's side), by process id.
    leased: Arc<Mutex<HashMap<u32, Leased>>>,
    reaper: std::sync::Once,
    /// Jobs and batches handed to workers so far.
    jobs: AtomicU64,
    batches: AtomicU64,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("helper", &self.helper)
            .field("idle", &self.idle_pids().len())
            .finish()
    }
}

/// Does this job go to a worker?
pub fn uses_worker(job: &Job) -> bool {
    matches!(job.method, Method::Maildir { .. }) && job.wrapper.is_none()
}

fn lock(lanes: &Lanes) -> std::sync::MutexGuard<'_, HashMap<Key, Lane>> {
    // The map holds no invariant a panic elsewhere could break halfway.
    lanes.lock().unwrap_or_else(|p| p.into_inner())
}

impl WorkerPool {
    /// A pool starting `helper` as its workers.
    pub fn new(helper: HelperProgram) -> WorkerPool {
        WorkerPool {
            helper,
            lanes: Arc::new(Mutex::new(HashMap::new())),
            max_workers: MAX_WORKERS,
            leased: Arc::new(Mutex::new(HashMap::new())),
            reaper: std::sync::Once::new(),
            jobs: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        }
    }

    /// A pool that keeps at most `n` workers (at least one).
    pub fn with_max_workers(mut self, n: usize) -> WorkerPool {
        self.max_workers = n.max(1);
        self
    }

    /// The process ids of the idle workers.
    pub fn idle_pids(&self) -> Vec<u32> {
        lock(&self.lanes)
            .values()
            .flat_map(|l| l.idle.iter().map(|(w, _)| w.pid))
            .collect()
    }

    /// Jobs and batches handed to workers so far: how much the batching saved.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.jobs.load(Ordering::Relaxed),
            self.batches.load(Ordering::Relaxed),
        )
    }

    /// Runs `job` on a worker of its identity (blocks until it is done); `Err` carries a
    /// text for a temporary failure when no worker could be started.
    pub fn run(&self, job: &Job, message: &File, timeout: Duration) -> Result<Outcome, String> {
        let key = (job.identity.uid, job.identity.gid);
        let message = message
            .try_clone()
            .map_err(|e| format!("dup: {}", strerror(&e)))?;
        let slot = Arc::new(Slot::default());
        let drive = {
            let mut lanes = lock(&self.lanes);
            let lane = lanes.entry(key).or_default();
            lane.pending.push_back(Pending {
                text: job.encode(),
                message,
                slot: slot.clone(),
                retried: false,
            });
            let drive = lane.drivers < WORKERS_PER_IDENTITY;
            if drive {
                lane.drivers += 1;
            }
            drive
        };
        // Jobs are pushed and drivers counted under one lock, and a driver stops only when
        // it sees the queue empty under that lock: every queued job is taken by a driver.
        if drive {
            self.drive(key, timeout);
        }
        slot.wait()
    }

    /// Hands the identity's waiting jobs to a worker, batch after batch, until none wait.
    fn drive(&self, key: Key, timeout: Duration) {
        // Bounded by the jobs queued: each pass takes at least one, and a job goes back
        // to the queue at most once.
        loop {
            let (batch, idle, evicted) = {
                let mut lanes = lock(&self.lanes);
                let lane = lanes.entry(key).or_default();
                if lane.pending.is_empty() {
                    lane.drivers -= 1;
                    return;
                }
                let n = lane.pending.len().min(BATCH);
                let batch: Vec<Pending> = lane.pending.drain(..n).collect();
                // Jobs a dead idle worker refused go to a new worker: the other idle ones
                // may have died the same way.
                let idle = if batch.iter().any(|p| p.retried) {
                    None
                } else {
                    lane.idle.pop().map(|(w, _)| w)
                };
                // A worker is to be started: make room first, if the pool is full.
                let evicted = if idle.is_none() {
                    evict_oldest_idle(&mut lanes, self.max_workers)
                } else {
                    None
                };
                (batch, idle, evicted)
            };
            if let Some(worker) = evicted {
                close(worker);
            }
            let (worker, reused) = match idle {
                Some(w) => (w, true),
                None => match self.spawn(key) {
                    Ok(w) => (w, false),
                    Err(e) => {
                        for p in batch {
                            p.slot.fill(Err(e.clone()));
                        }
                        continue;
                    }
                },
            };
            self.jobs.fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.batches.fetch_add(1, Ordering::Relaxed);
            match exchange(&worker.socket, &batch, timeout) {
                Ok(outcomes) => {
                    for (p, o) in batch.iter().zip(outcomes) {
                        p.slot.fill(Ok(o));
                    }
                    self.put_back(key, worker);
                }
                Err(taken) => {
                    let death = finish(worker);
                    let mut again = Vec::new();
                    for (i, mut p) in batch.into_iter().enumerate() {
                        if i < taken || !reused || p.retried {
                            p.slot.fill(Ok(death.clone()));
                        } else {
                            p.retried = true;
                            again.push(p);
                        }
                    }
                    let mut lanes = lock(&self.lanes);
                    let lane = lanes.entry(key).or_default();
                    for p in again.into_iter().rev() {
                        lane.pending.push_front(p);
                    }
                }
            }
        }
    }

    fn put_back(&self, key: Key, worker: Worker) {
        self.start_reaper();
        lock(&self.lanes)
            .entry(key)
            .or_default()
            .idle
            .push((worker, Instant::now()));
    }

    /// A worker of identity `key`: from the privileged broker when this process has one
    /// (the network side, unprivileged, cannot start processes as other users), else a
    /// child of this process.
    fn spawn(&self, key: Key) -> Result<Worker, String> {
        if let Some(broker) = crate::privsep::broker::client() {
            let (socket, pid) = broker.lease_worker(key.0, key.1)?;
            return Ok(Worker {
                child: None,
                pid,
                socket,
            });
        }
        let (child, socket) = self.start(key)?;
        Ok(Worker {
            pid: child.id(),
            child: Some(child),
            socket,
        })
    }

    /// Starts a worker process of identity `(uid, gid)`: the child and our end of its socket.
    fn start(&self, (uid, gid): Key) -> Result<(Child, OwnedFd), String> {
        let (ours, theirs) =
            fdpass::pair().map_err(|e| format!("socketpair: {}", strerror(&e.into())))?;
        let mut command = Command::new(&self.helper.program);
        command
            .args(&self.helper.args)
            .env_clear()
            .env(WORKER_ENV, format!("{uid}:{gid}"))
            .current_dir("/")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command
            .spawn()
            .map_err(|e| format!("fork: {}", strerror(&e)))?;
        Ok((child, ours))
    }

    /// The broker's side of [`WorkerPool::spawn`]: starts a worker of identity `(uid, gid)`
    /// for another process and hands over its socket (with the process id); the worker
    /// stays this process's child, reaped here. Never as root, and at most
    /// [`MAX_LEASED`] at a time.
    pub fn lease(&self, uid: u32, gid: u32) -> Result<(OwnedFd, u32), String> {
        if uid == 0 {
            return Err("no delivery worker runs as root".into());
        }
        reap_leased(&self.leased);
        let running = lock_leased(&self.leased)
            .values()
            .filter(|l| matches!(l, Leased::Running(_)))
            .count();
        if running >= MAX_LEASED {
            return Err("too many delivery workers".into());
        }
        let (child, socket) = self.start((uid, gid))?;
        let pid = child.id();
        lock_leased(&self.leased).insert(pid, Leased::Running(child));
        self.start_reaper();
        Ok((socket, pid))
    }

    /// How the lent worker `pid` ended, once its borrower has closed its socket: waited
    /// for at most [`LEASE_END_WAIT`], then killed. `None` for a process never lent out
    /// (or ended too long ago).
    pub fn end_lease(&self, pid: u32) -> Option<Outcome> {
        let entry = lock_leased(&self.leased).remove(&pid)?;
        let mut child = match entry {
            Leased::Ended(status, _) => return Some(ended(Ok(status))),
            Leased::Running(child) => child,
        };
        let deadline = Instant::now() + LEASE_END_WAIT;
        // Bounded by the deadline.
        loop {
            match child.try_wait() {
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = child.kill();
                    return Some(ended(child.wait()));
                }
                Ok(Some(status)) => return Some(ended(Ok(status))),
                Err(e) => return Some(ended(Err(e))),
            }
        }
    }

    fn start_reaper(&self) {
        let weak: Weak<Lanes> = Arc::downgrade(&self.lanes);
        let leased = Arc::downgrade(&self.leased);
        self.reaper.call_once(move || {
            let _ = std::thread::Builder::new()
                .name("delivery-workers".into())
                .spawn(move || reap_idle(weak, leased));
        });
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        let all: Vec<Worker> = lock(&self.lanes)
            .drain()
            .flat_map(|(_, lane)| lane.idle)
            .map(|(w, _)| w)
            .collect();
        for worker in all {
            close(worker);
        }
    }
}

/// When the pool holds `max` workers or more (busy ones count through their drivers, this
/// one's included), takes out the worker idle longest, of any identity, to be closed.
fn evict_oldest_idle(lanes: &mut HashMap<Key, Lane>, max: usize) -> Option<Worker> {
    let held: usize = lanes.values().map(|l| l.idle.len() + l.drivers).sum();
    if held <= max {
        return None;
    }
    let (key, i) = lanes
        .iter()
        .flat_map(|(k, l)| {
            l.idle
                .iter()
                .enumerate()
                .map(move |(i, (_, at))| (*at, *k, i))
        })
        .min_by_key(|(at, _, _)| *at)
        .map(|(_, k, i)| (k, i))?;
    lanes.get_mut(&key).map(|l| l.idle.swap_remove(i).0)
}

fn lock_leased(
    leased: &Mutex<HashMap<u32, Leased>>,
) -> std::sync::MutexGuard<'_, HashMap<u32, Leased>> {
    // The map holds no invariant a panic elsewhere could break halfway.
    leased.lock().unwrap_or_else(|p| p.into_inner())
}

fn reap_leased(leased: &Mutex<HashMap<u32, Leased>>) {
    let mut map = lock_leased(leased);
    for entry in map.values_mut() {
        if let Leased::Running(child) = entry
            && let Ok(Some(status)) = child.try_wait()
        {
            *entry = Leased::Ended(status, Instant::now());
        }
    }
    map.retain(|_, l| !matches!(l, Leased::Ended(_, at) if at.elapsed() >= LEASE_MEMORY));
}

/// Closes workers idle longer than [`IDLE_LIMIT`], and collects lent workers that ended,
/// until the pool is gone.
fn reap_idle(pool: Weak<Lanes>, leased: Weak<Mutex<HashMap<u32, Leased>>>) {
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if let Some(leased) = leased.upgrade() {
            reap_leased(&leased);
        }
        let Some(lanes) = pool.upgrade() else { return };
        let mut expired = Vec::new();
        {
            let mut map = lock(&lanes);
            for lane in map.values_mut() {
                let mut i = 0;
                while i < lane.idle.len() {
                    if lane.idle[i].1.elapsed() >= IDLE_LIMIT {
                        expired.push(lane.idle.swap_remove(i).0);
                    } else {
                        i += 1;
                    }
                }
            }
            map.retain(|_, l| !(l.idle.is_empty() && l.pending.is_empty() && l.drivers == 0));
        }
        drop(lanes);
        for worker in expired {
            close(worker);
        }
    }
}

/// Closes a worker's socket, waits for it, and says how it ended (for a worker lost
/// during a job, that is the job's outcome). A lent worker is waited for by the broker.
fn finish(worker: Worker) -> Outcome {
    let Worker { child, pid, socket } = worker;
    drop(socket);
    match child {
        Some(mut child) => ended(child.wait()),
        None => match crate::privsep::broker::client() {
            Some(broker) => broker.end_worker_lease(pid),
            None => Outcome::failure(EX_TEMPFAIL, "smtpd: delivery worker lost"),
        },
    }
}

/// How a worker ended, as its job's outcome (or why that cannot be known).
fn ended(status: std::io::Result<std::process::ExitStatus>) -> Outcome {
    match status {
        Ok(status) => helper_ended(status, ""),
        Err(e) => Outcome::failure(EX_TEMPFAIL, format!("smtpd: waitpid: {e}")),
    }
}

/// Closes an idle worker: it exits at the end of its socket. A child of ours is waited
/// for; a lent one is the broker's to collect.
fn close(worker: Worker) {
    if worker.child.is_some() {
        finish(worker);
    }
}

/// Sends a batch and reads its outcomes, in order; `Err(n)`: the worker was lost after
/// taking the first `n` jobs.
fn exchange(socket: &OwnedFd, batch: &[Pending], timeout: Duration) -> Result<Vec<Outcome>, usize> {
    let len = batch.iter().map(|p| 1 + p.text.len()).sum();
    let _profile = crate::log::imsg_timer("worker", "deliver", len);
    let mut sent = 0;
    for (i, p) in batch.iter().enumerate() {
        let mut packet = Vec::with_capacity(1 + p.text.len());
        packet.push(if i + 1 < batch.len() { b'1' } else { b'0' });
        packet.extend_from_slice(p.text.as_bytes());
        if packet.len() > MAX_PACKET
            || fdpass::send(socket, &packet, &[p.message.as_raw_fd()]).is_err()
        {
            break;
        }
        sent += 1;
    }
    // Jobs run one after the other, each under its alarm: no single receive waits longer.
    let _ = fdpass::receive_timeout(socket, timeout + WAIT_GRACE);
    let answer = || match fdpass::receive(socket, MAX_PACKET) {
        Ok(Some(p)) if !p.truncated && p.fds.is_empty() => Some(p.payload),
        _ => None,
    };
    let mut taken = 0;
    while taken < sent {
        match answer() {
            Some(ack) if ack == b"A" => taken += 1,
            _ => return Err(taken),
        }
    }
    if sent < batch.len() {
        return Err(taken);
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for _ in 0..batch.len() {
        let report = answer().ok_or(taken)?;
        outcomes.push(decode_outcome(&String::from_utf8_lossy(&report)).ok_or(taken)?);
    }
    Ok(outcomes)
}

/// A job as the worker receives it: its text, the message, and whether more jobs of the
/// batch follow. `None` at the end of the socket or for anything that is not a job.
fn receive_job(socket: &OwnedFd) -> Option<(Vec<u8>, Option<File>, bool)> {
    let packet = fdpass::receive(socket, MAX_PACKET).ok()??;
    let (&more, text) = packet.payload.split_first()?;
    if packet.truncated || packet.fds.len() > 1 || !matches!(more, b'0' | b'1') {
        return None;
    }
    let message = packet.fds.into_iter().next().map(File::from);
    Some((text.to_vec(), message, more == b'1'))
}

/// The worker process: `spec` is `UID:GID`; the socket is standard input. Returns the
/// exit status.
pub(crate) fn worker_main(spec: &str) -> i32 {
    let Ok(fd) = nix::fcntl::fcntl(0, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)) else {
        return 70;
    };
    // SAFETY: `fd` was just returned by fcntl(F_DUPFD_CLOEXEC), is open, and nothing else
    // in this process owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Ok(null) = std::fs::OpenOptions::new().read(true).open("/dev/null") {
        // SAFETY: dup2(2) on two open descriptors has no memory effects; fd 0 is replaced
        // atomically and `null` stays owned by its File.
        if unsafe { libc::dup2(null.as_raw_fd(), 0) } == -1 {
            return 70;
        }
    }
    let identity = spec
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)));
    let refusal = match identity {
        None => Some(format!("smtpd: bad delivery worker identity: {spec}")),
        Some((uid, gid)) => match become_identity(uid, gid) {
            Err(e) => Some(format!("smtpd: cannot change identity: {e}")),
            Ok(()) if nix::unistd::geteuid().is_root() => {
                Some("smtpd: delivery helper may not run as root".to_string())
            }
            Ok(()) => None,
        },
    };
    let _ = nix::unistd::setsid();
    // Bounded by the privileged side: it closes the socket when the daemon ends or the
    // worker has been idle too long.
    loop {
        let mut batch: Vec<(Outcome, Option<PathBuf>)> = Vec::new();
        let mut alarm_secs = 1;
        loop {
            let Some((text, message, more)) = receive_job(&socket) else {
                return 0;
            };
            if fdpass::send(&socket, b"A", &[]).is_err() {
                return 0;
            }
            let done = match (&refusal, message) {
                (Some(why), _) => (Outcome::failure(EX_TEMPFAIL, why.clone()), None),
                (None, None) => (
                    Outcome::failure(EX_TEMPFAIL, "smtpd: no message with the job"),
                    None,
                ),
                (None, Some(message)) => run_one(&text, message, identity, &mut alarm_secs),
            };
            batch.push(done);
            if !more {
                break;
            }
            if batch.len() > 4 * BATCH {
                return 70;
            }
        }
        // One fsync per distinct `new/` directory, then the reports.
        let mut synced: Vec<(PathBuf, Option<Failure>)> = Vec::new();
        for dir in batch.iter().filter_map(|(_, d)| d.as_ref()) {
            if synced.iter().all(|(d, _)| d != dir) {
                nix::unistd::alarm::set(alarm_secs);
                let result = maildir::sync_new_dir(dir).err();
                nix::unistd::alarm::cancel();
                synced.push((dir.clone(), result));
            }
        }
        for (outcome, dir) in batch {
            let failed = dir.and_then(|d| synced.iter().find(|(s, _)| *s == d)?.1.clone());
            let outcome = failed.map_or(outcome, Outcome::from);
            if fdpass::send(&socket, encode_outcome(&outcome).as_bytes(), &[]).is_err() {
                return 0;
            }
        }
    }
}

/// One job in the worker: its outcome, and the `new/` directory still to fsync when the
/// delivery got that far.
fn run_one(
    text: &[u8],
    message: File,
    identity: Option<Key>,
    alarm_secs: &mut u32,
) -> (Outcome, Option<PathBuf>) {
    let job = match std::str::from_utf8(text)
        .map_err(|_| "not text".to_string())
        .and_then(Job::decode)
    {
        Ok(job) => job,
        Err(e) => {
            let o = Outcome::failure(EX_TEMPFAIL, format!("smtpd: bad delivery job: {e}"));
            return (o, None);
        }
    };
    if Some((job.identity.uid, job.identity.gid)) != identity || !uses_worker(&job) {
        let o = Outcome::failure(EX_TEMPFAIL, "smtpd: job not for this delivery worker");
        return (o, None);
    }
    if std::env::set_current_dir(&job.identity.home).is_err() {
        let _ = std::env::set_current_dir("/");
    }
    *alarm_secs = u32::try_from(job.timeout_secs.max(1)).unwrap_or(u32::MAX);
    let mut unsynced = Vec::new();
    nix::unistd::alarm::set(*alarm_secs);
    let outcome = run_job_deferring_sync(&job, message, &mut unsynced);
    nix::unistd::alarm::cancel();
    (outcome, unsynced.pop())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_and_descriptors_cross_a_socket() {
        let (a, b) = fdpass::pair().unwrap();
        let file = tempfile_with(b"hello");
        for packet in [&b"1method=maildir\n"[..], &b"0second\n"[..]] {
            fdpass::send(&a, packet, &[file.as_raw_fd()]).unwrap();
        }
        let (text, message, more) = receive_job(&b).unwrap();
        assert_eq!(text, b"method=maildir\n");
        assert!(more);
        let mut content = String::new();
        std::io::Read::read_to_string(&mut message.unwrap(), &mut content).unwrap();
        assert_eq!(content, "hello");
        let (text, message, more) = receive_job(&b).unwrap();
        assert_eq!(text, b"second\n");
        assert!(!more);
        assert!(message.is_some());
        // Not a job: no batch flag.
        fdpass::send(&a, b"xjob", &[]).unwrap();
        assert!(receive_job(&b).is_none());
        drop(a);
        assert!(receive_job(&b).is_none());
    }

    #[test]
    fn a_dropped_job_still_answers_its_waiter() {
        let slot = Arc::new(Slot::default());
        let p = Pending {
            text: String::new(),
            message: tempfile_with(b""),
            slot: slot.clone(),
            retried: false,
        };
        drop(p);
        assert_eq!(slot.wait(), Err("delivery worker lost the job".to_string()));
        // A filled slot keeps its first result.
        let slot = Slot::default();
        slot.fill(Ok(Outcome::success()));
        slot.fill(Err("late".into()));
        assert_eq!(slot.wait(), Ok(Outcome::success()));
    }

    fn tempfile_with(content: &[u8]) -> File {
        let dir = std::env::temp_dir().join(format!(
            "smtpd-worker-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("msg");
        std::fs::write(&path, content).unwrap();
        let file = File::open(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        file
    }
}
