//! Long-lived delivery workers: one helper process per recipient identity that
//! delivers maildir jobs one after the other.
//!
//! A one-shot helper ([`super::privsep`]) costs a process start per message: an
//! `exec` of the smtpd binary, its dynamic linking and page faults — about a
//! millisecond of CPU, more than the delivery itself. A mailbox that receives a
//! steady flow of mail gets a worker instead: the same helper program, started with
//! [`WORKER_ENV`] naming its uid and gid, drops to that identity once, then serves
//! jobs over a Unix socket until the privileged side closes it.
//!
//! Protocol on the socket (the worker's standard input at start):
//!
//! ```text
//! agent  → worker   u32 length, job text (Job::encode); the message file as SCM_RIGHTS
//! worker → agent    "A" (job taken: from here on the job may have had effects)
//! worker → agent    u32 length, outcome text (the one-shot helper's report)
//! ```
//!
//! The acknowledgement makes a retry safe: a reused worker that died while idle closes
//! the socket before `A`, and only then is the job given to a fresh worker. A worker
//! that dies after `A` is reported exactly as a one-shot helper's death (signal, time
//! limit), and never retried. Each job runs under `alarm()` with the delivery time
//! limit, as a one-shot helper does; the privileged side also bounds its wait.
//!
//! Only maildir deliveries use workers: they run no program of the recipient's, need
//! no per-job session or environment, and are the common case. Idle workers are
//! closed after [`IDLE_LIMIT`] by a reaper thread, and all of them go when the daemon
//! exits (their sockets close).

use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, recvmsg, sendmsg};

use super::privsep::{HelperProgram, become_identity, decode_outcome, encode_outcome};
use super::request::{Job, Method};
use super::result::{EX_TEMPFAIL, Exit, Outcome, strerror};
use super::run::run_job;

/// The environment variable that starts a worker: `UID:GID`.
pub const WORKER_ENV: &str = "SMTPD_DELIVERY_WORKER";

/// A worker idle this long is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(5);

/// Longest job or report frame.
const MAX_FRAME: usize = 1 << 20;

/// Extra time the privileged side waits beyond the job's own alarm.
const WAIT_GRACE: Duration = Duration::from_secs(15);

/// One running worker.
struct Worker {
    child: Child,
    socket: UnixStream,
}

/// Why an exchange with a worker failed.
enum Lost {
    /// Before the worker took the job: nothing happened, another worker may take it.
    BeforeTaken,
    /// After: the job may have had effects; the worker's fate is the outcome.
    AfterTaken,
}

/// Idle workers by identity (uid, gid), each with the moment it became idle.
type IdleMap = Mutex<HashMap<(u32, u32), Vec<(Worker, Instant)>>>;

/// The workers of one privileged side, by identity.
pub struct WorkerPool {
    helper: HelperProgram,
    inner: Arc<IdleMap>,
    reaper: std::sync::Once,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self
            .inner
            .lock()
            .map(|m| m.values().map(Vec::len).sum::<usize>())
            .unwrap_or(0);
        f.debug_struct("WorkerPool")
            .field("helper", &self.helper)
            .field("idle", &idle)
            .finish()
    }
}

/// Does this job go to a worker?
pub fn uses_worker(job: &Job) -> bool {
    matches!(job.method, Method::Maildir { .. }) && job.wrapper.is_none()
}

impl WorkerPool {
    /// A pool starting `helper` as its workers.
    pub fn new(helper: HelperProgram) -> WorkerPool {
        WorkerPool {
            helper,
            inner: Arc::new(Mutex::new(HashMap::new())),
            reaper: std::sync::Once::new(),
        }
    }

    /// Idle workers right now (for tests and `smtpctl show stats`).
    pub fn idle_workers(&self) -> usize {
        self.inner
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// The process ids of the idle workers.
    pub fn idle_pids(&self) -> Vec<u32> {
        self.inner
            .lock()
            .map(|m| m.values().flatten().map(|(w, _)| w.child.id()).collect())
            .unwrap_or_default()
    }

    /// Runs `job` on a worker of its identity; `Err` carries a text for a temporary
    /// failure when no worker could be started.
    pub fn run(&self, job: &Job, message: &File, timeout: Duration) -> Result<Outcome, String> {
        let key = (job.identity.uid, job.identity.gid);
        let text = job.encode();
        // A reused worker may have died while idle: then (and only then, the job not
        // taken) the job goes to a fresh one. Bounded: at most every idle worker, then one
        // fresh worker.
        loop {
            let (mut worker, reused) = match self.take_idle(key) {
                Some(w) => (w, true),
                None => (self.spawn(key)?, false),
            };
            match exchange(&mut worker.socket, &text, message, timeout) {
                Ok(outcome) => {
                    self.put_back(key, worker);
                    return Ok(outcome);
                }
                Err(Lost::BeforeTaken) if reused => {
                    finish(worker);
                    continue;
                }
                Err(_) => return Ok(finish(worker)),
            }
        }
    }

    fn take_idle(&self, key: (u32, u32)) -> Option<Worker> {
        let mut map = self.inner.lock().ok()?;
        let list = map.get_mut(&key)?;
        let (worker, _) = list.pop()?;
        Some(worker)
    }

    fn put_back(&self, key: (u32, u32), worker: Worker) {
        self.start_reaper();
        match self.inner.lock() {
            Ok(mut map) => map.entry(key).or_default().push((worker, Instant::now())),
            Err(_) => {
                finish(worker);
            }
        }
    }

    fn spawn(&self, (uid, gid): (u32, u32)) -> Result<Worker, String> {
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| format!("socketpair: {}", strerror(&e)))?;
        let mut command = Command::new(&self.helper.program);
        command
            .args(&self.helper.args)
            .env_clear()
            .env(WORKER_ENV, format!("{uid}:{gid}"))
            .current_dir("/")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command
            .spawn()
            .map_err(|e| format!("fork: {}", strerror(&e)))?;
        Ok(Worker {
            child,
            socket: ours,
        })
    }

    fn start_reaper(&self) {
        let weak: Weak<IdleMap> = Arc::downgrade(&self.inner);
        self.reaper.call_once(move || {
            let _ = std::thread::Builder::new()
                .name("delivery-workers".into())
                .spawn(move || reap_idle(weak));
        });
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        let all: Vec<Worker> = match self.inner.lock() {
            Ok(mut map) => map.drain().flat_map(|(_, v)| v).map(|(w, _)| w).collect(),
            Err(_) => Vec::new(),
        };
        for worker in all {
            finish(worker);
        }
    }
}

/// Closes workers idle longer than [`IDLE_LIMIT`], until the pool is gone.
fn reap_idle(pool: Weak<IdleMap>) {
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let Some(inner) = pool.upgrade() else { return };
        let mut expired = Vec::new();
        if let Ok(mut map) = inner.lock() {
            for list in map.values_mut() {
                let mut i = 0;
                while i < list.len() {
                    if list[i].1.elapsed() >= IDLE_LIMIT {
                        expired.push(list.swap_remove(i).0);
                    } else {
                        i += 1;
                    }
                }
            }
            map.retain(|_, v| !v.is_empty());
        }
        drop(inner);
        for worker in expired {
            finish(worker);
        }
    }
}

/// Closes a worker's socket, waits for it, and says how it ended (for a worker lost
/// during a job, that is the job's outcome).
fn finish(worker: Worker) -> Outcome {
    let Worker { mut child, socket } = worker;
    drop(socket);
    let exit = match child.wait() {
        Ok(status) => match (status.code(), status.signal()) {
            (_, Some(libc::SIGALRM)) => Exit::Timeout,
            (_, Some(sig)) => Exit::Signal(sig),
            (Some(code), _) => {
                return Outcome::failure(
                    EX_TEMPFAIL,
                    format!("smtpd: delivery helper failed: exit status {code}"),
                );
            }
            (None, None) => Exit::Code(EX_TEMPFAIL),
        },
        Err(e) => return Outcome::failure(EX_TEMPFAIL, format!("smtpd: waitpid: {e}")),
    };
    Outcome {
        exit,
        last_line: None,
        premature: false,
    }
}

/// Sends one job and reads its outcome.
fn exchange(
    socket: &mut UnixStream,
    text: &str,
    message: &File,
    timeout: Duration,
) -> Result<Outcome, Lost> {
    let mut frame = Vec::with_capacity(4 + text.len());
    frame.extend_from_slice(&(text.len() as u32).to_be_bytes());
    frame.extend_from_slice(text.as_bytes());
    let fds = [message.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let sent = sendmsg::<UnixAddr>(
        socket.as_raw_fd(),
        &[IoSlice::new(&frame)],
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|_| Lost::BeforeTaken)?;
    if sent < frame.len() && socket.write_all(&frame[sent..]).is_err() {
        return Err(Lost::BeforeTaken);
    }
    let _ = socket.set_read_timeout(Some(timeout + WAIT_GRACE));
    let mut ack = [0u8; 1];
    match socket.read_exact(&mut ack) {
        Ok(()) if ack[0] == b'A' => {}
        _ => return Err(Lost::BeforeTaken),
    }
    let report = read_frame(socket).map_err(|_| Lost::AfterTaken)?;
    decode_outcome(&String::from_utf8_lossy(&report)).ok_or(Lost::AfterTaken)
}

fn read_frame(socket: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    socket.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other("frame too long"));
    }
    let mut body = vec![0u8; len];
    socket.read_exact(&mut body)?;
    Ok(body)
}

fn write_frame(socket: &mut impl Write, body: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    socket.write_all(&frame)
}

/// Receives a job's length and the message descriptor; `Ok(None)` at the end of the
/// socket.
fn receive_job(socket: &mut UnixStream) -> std::io::Result<Option<(Vec<u8>, Option<File>)>> {
    let mut head = [0u8; 4];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let (got, fds) = {
        let mut iov = [IoSliceMut::new(&mut head)];
        let msg = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(list) = c {
                    fds.extend(list);
                }
            }
        }
        (msg.bytes, fds)
    };
    let files: Vec<File> = fds
        .into_iter()
        // SAFETY: each descriptor was just installed in this process by the kernel for
        // this message (SCM_RIGHTS) and nothing else refers to it; the File takes sole
        // ownership and closes it.
        .map(|fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    if got == 0 {
        return Ok(None);
    }
    if got < head.len() {
        socket.read_exact(&mut head[got..])?;
    }
    let len = u32::from_be_bytes(head) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other("job too long"));
    }
    let mut body = vec![0u8; len];
    socket.read_exact(&mut body)?;
    Ok(Some((body, files.into_iter().next())))
}

/// The worker process: `spec` is `UID:GID`; the socket is standard input. Returns the
/// exit status.
pub(crate) fn worker_main(spec: &str) -> i32 {
    let Ok(fd) = nix::fcntl::fcntl(0, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)) else {
        return 70;
    };
    // SAFETY: `fd` was just returned by fcntl(F_DUPFD_CLOEXEC), is open, and nothing else
    // in this process owns it.
    let mut socket = unsafe { UnixStream::from_raw_fd(fd) };
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
        let (text, message) = match receive_job(&mut socket) {
            Ok(Some(job)) => job,
            Ok(None) | Err(_) => return 0,
        };
        if socket.write_all(b"A").is_err() {
            return 0;
        }
        let outcome = match (&refusal, message) {
            (Some(why), _) => Outcome::failure(EX_TEMPFAIL, why.clone()),
            (None, None) => Outcome::failure(EX_TEMPFAIL, "smtpd: no message with the job"),
            (None, Some(message)) => run_one(&text, message, identity),
        };
        if write_frame(&mut socket, encode_outcome(&outcome).as_bytes()).is_err() {
            return 0;
        }
    }
}

fn run_one(text: &[u8], message: File, identity: Option<(u32, u32)>) -> Outcome {
    let job = match std::str::from_utf8(text)
        .map_err(|_| "not text".to_string())
        .and_then(Job::decode)
    {
        Ok(job) => job,
        Err(e) => return Outcome::failure(EX_TEMPFAIL, format!("smtpd: bad delivery job: {e}")),
    };
    if Some((job.identity.uid, job.identity.gid)) != identity || !uses_worker(&job) {
        return Outcome::failure(EX_TEMPFAIL, "smtpd: job not for this delivery worker");
    }
    if std::env::set_current_dir(&job.identity.home).is_err() {
        let _ = std::env::set_current_dir("/");
    }
    nix::unistd::alarm::set(u32::try_from(job.timeout_secs.max(1)).unwrap_or(u32::MAX));
    let outcome = run_job(&job, message);
    nix::unistd::alarm::cancel();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_are_bounded() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"exit=code:0\n").unwrap();
        assert_eq!(read_frame(&mut buf.as_slice()).unwrap(), b"exit=code:0\n");
        let mut long = Vec::new();
        long.extend_from_slice(&((MAX_FRAME + 1) as u32).to_be_bytes());
        assert!(read_frame(&mut long.as_slice()).is_err());
        assert!(read_frame(&mut &b"\0\0"[..]).is_err());
    }

    #[test]
    fn job_and_descriptor_cross_a_socket() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let mut file = tempfile_with(b"hello");
        let text = "method=maildir\n";
        let mut frame = Vec::new();
        frame.extend_from_slice(&(text.len() as u32).to_be_bytes());
        frame.extend_from_slice(text.as_bytes());
        let fds = [file.as_raw_fd()];
        sendmsg::<UnixAddr>(
            a.as_raw_fd(),
            &[IoSlice::new(&frame)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let (body, got) = receive_job(&mut b).unwrap().unwrap();
        assert_eq!(body, text.as_bytes());
        let mut content = String::new();
        got.unwrap().read_to_string(&mut content).unwrap();
        assert_eq!(content, "hello");
        let _ = file.flush();
        drop(a.flush());
        drop(a);
        assert!(receive_job(&mut b).unwrap().is_none());
    }

    fn tempfile_with(content: &[u8]) -> File {
        let dir = std::env::temp_dir().join(format!("smtpd-worker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("msg");
        std::fs::write(&path, content).unwrap();
        let file = File::open(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        file
    }
}
