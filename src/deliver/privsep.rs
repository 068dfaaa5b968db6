//! Running a delivery as the recipient: the [`DeliveryAgent`] and the
//! helper process it starts.
//!
//! OpenSMTPD's root parent `fork()`s, drops to the recipient's uid/gid and
//! `exec`s the delivery command. smtpd is a multi-threaded tokio program,
//! and after `fork()` in such a process the child may only call
//! async-signal-safe functions until it `exec`s: another thread may have
//! held the allocator's lock, a `Mutex`, or the stdio lock at the moment of
//! the fork, and the child would deadlock on it. Writing a maildir
//! allocates, formats and locks, so a "fork and deliver" child is unsound.
//!
//! So the job runs in a **fresh process**: the smtpd executable itself
//! (`/proc/self/exe`) is started through `std::process::Command`, whose
//! child side between fork and exec does only async-signal-safe work:
//! `setgroups(0)`, `setgid`, `setuid` (std's `gid()`/`uid()`), `chdir /`,
//! and our `pre_exec` hook, which only `dup2`s the result pipe to fd 3 and
//! makes every descriptor above it close on exec (OpenSMTPD's `closefrom`). The new
//! process sees the job in the `SMTPD_DELIVERY_JOB` environment variable
//! (its environment is otherwise empty), the message file as stdin (opened
//! read-only by the privileged side; the recipient cannot open the queue),
//! and reports an [`Outcome`] on fd 3. `main` of the smtpd binary must call
//! [`helper_main_if_requested`] before anything else.
//!
//! The helper runs in its own session with `alarm()` set to the delivery
//! time limit (five minutes, as OpenSMTPD): a stuck delivery dies of
//! SIGALRM, which the agent reports as `terminated; timeout`, so the agent
//! can simply wait for it. `mda` commands get the same alarm themselves.
//!
//! Identity rules (`smtpd.c:forkmda`): the action's `user NAME` or else the
//! userbase record; uid 0 is refused (`not allowed to deliver to: USER`)
//! except for `mbox`, whose mailbox is created and dot-locked by the
//! privileged side before the drop. The privileged side is this process when
//! it is root; in a daemon started as root, whose network side runs
//! unprivileged, it is the broker ([`crate::privsep::broker`]), which gets the
//! job and the message descriptor and calls [`DeliveryAgent::run_privileged`].
//! When smtpd was not started as root there is no identity to change: the job
//! runs in the calling process as the current user, and
//! [`unprivileged_notice`] gives the line to log once.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::mbox::{self, DotLock, MAIL_LOCAL};
use super::message::has_delivery_loop;
use super::request::{
    Account, DeliveryRequest, Job, MessageSource, Method, escape_into, hex, unescape, unhex,
};
use super::result::{
    DeliveryResult, EX_CONFIG, EX_DATAERR, EX_NOPERM, EX_OSERR, EX_TEMPFAIL, Exit, Outcome, Status,
    strerror,
};
use super::run::run_job;
use super::worker::{WORKER_ENV, WorkerPool, uses_worker, worker_main};

/// The environment variable that carries the job to the helper.
pub const JOB_ENV: &str = "SMTPD_DELIVERY_JOB";

/// Longest outcome report read back.
const MAX_REPORT: u64 = 64 * 1024;

/// Extra time the helper of an `mda` command gets beyond the command's own alarm.
const HELPER_GRACE_SECS: u64 = 10;

/// OpenSMTPD's delivery time limit.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The program started as the delivery helper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelperProgram {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

impl HelperProgram {
    /// The running smtpd executable, re-executed (its `main` calls
    /// [`helper_main_if_requested`]).
    pub fn current_exe() -> HelperProgram {
        HelperProgram {
            program: PathBuf::from("/proc/self/exe"),
            args: Vec::new(),
        }
    }

    /// For test binaries: re-run the current test executable with only the
    /// test `test_name`, which must call [`helper_main_if_requested`].
    pub fn test_harness(test_name: &str) -> HelperProgram {
        let program = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        let args = [
            test_name,
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ];
        HelperProgram {
            program,
            args: args.iter().map(OsString::from).collect(),
        }
    }
}

/// Runs local deliveries (see the module documentation).
#[derive(Clone, Debug)]
pub struct DeliveryAgent {
    helper: HelperProgram,
    workers: Arc<WorkerPool>,
    mbox_spool: PathBuf,
    subaddress_delimiter: char,
    timeout: Duration,
}

impl Default for DeliveryAgent {
    fn default() -> DeliveryAgent {
        DeliveryAgent::new()
    }
}

/// Delivers with the default agent: helper `/proc/self/exe`, spool
/// `/var/mail`, delimiter `+`, five-minute limit.
pub fn deliver(request: DeliveryRequest) -> DeliveryResult {
    DeliveryAgent::new().deliver_blocking(request)
}

/// Does this process run as root? (An unprivileged daemon with a privileged broker still
/// delivers as each recipient: see [`crate::privsep`].)
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The line to log once at start-up when deliveries cannot change identity.
pub fn unprivileged_notice() -> Option<String> {
    if running_as_root() || crate::privsep::broker::client().is_some() {
        return None;
    }
    let me = Account::current();
    Some(format!(
        "mda: not running as root, local deliveries run as {} (uid {})",
        me.name, me.uid
    ))
}

impl DeliveryAgent {
    /// An agent with OpenSMTPD's defaults.
    pub fn new() -> DeliveryAgent {
        DeliveryAgent {
            helper: HelperProgram::current_exe(),
            workers: Arc::new(WorkerPool::new(HelperProgram::current_exe())),
            mbox_spool: PathBuf::from(mbox::DEFAULT_SPOOL),
            subaddress_delimiter: '+',
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Keeps at most `n` delivery workers over all identities (default
    /// [`super::worker::MAX_WORKERS`]); the worker pool is started afresh.
    pub fn with_max_workers(mut self, n: usize) -> DeliveryAgent {
        self.workers = Arc::new(WorkerPool::new(self.helper.clone()).with_max_workers(n));
        self
    }

    /// Uses another helper program.
    pub fn with_helper(mut self, helper: HelperProgram) -> DeliveryAgent {
        self.workers = Arc::new(WorkerPool::new(helper.clone()));
        self.helper = helper;
        self
    }

    /// The process ids of the idle delivery workers (see [`super::worker`]).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.idle_pids()
    }

    /// Maildir jobs and batches handed to delivery workers so far.
    pub fn worker_counts(&self) -> (u64, u64) {
        self.workers.counts()
    }

    /// Uses another mail spool for `mbox`.
    pub fn with_mbox_spool(mut self, spool: impl Into<PathBuf>) -> DeliveryAgent {
        self.mbox_spool = spool.into();
        self
    }

    /// Uses another sub-addressing delimiter for `%{...:strip}`.
    pub fn with_subaddress_delimiter(mut self, delimiter: char) -> DeliveryAgent {
        self.subaddress_delimiter = delimiter;
        self
    }

    /// Uses another delivery time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> DeliveryAgent {
        self.timeout = timeout;
        self
    }

    /// Delivers from tokio: the blocking work runs on the blocking pool.
    pub async fn deliver(&self, request: DeliveryRequest) -> DeliveryResult {
        let agent = self.clone();
        match tokio::task::spawn_blocking(move || agent.deliver_blocking(request)).await {
            Ok(result) => result,
            Err(e) => DeliveryResult::refused(
                Status::TempFail,
                EX_OSERR,
                &format!("delivery task failed: {e}"),
            ),
        }
    }

    /// Delivers one message (blocks until the delivery has ended).
    pub fn deliver_blocking(&self, request: DeliveryRequest) -> DeliveryResult {
        let env = &request.envelope;
        let fields = [&env.sender, &env.rcpt, &env.dest, &env.subaddress];
        if fields.iter().any(|f| f.contains(['\r', '\n', '\0'])) {
            return DeliveryResult::refused(
                Status::PermFail,
                EX_DATAERR,
                "envelope contains a control character",
            );
        }
        match &request.method {
            Method::ForwardOnly | Method::ExpandOnly => {
                let what = if request.method == Method::ForwardOnly {
                    "forward-only"
                } else {
                    "expand-only"
                };
                return DeliveryResult::refused(
                    Status::PermFail,
                    EX_CONFIG,
                    &format!("{what} action cannot deliver to a local user"),
                );
            }
            Method::Mda { .. } | Method::Pipe { .. } => {}
            _ if request.wrapper.is_some() => {
                return DeliveryResult::refused(
                    Status::PermFail,
                    EX_CONFIG,
                    "a wrapper can only wrap mda commands",
                );
            }
            _ => {}
        }
        let identity = request.identity().clone();
        if identity.uid == 0 && request.method != Method::Mbox {
            let cause = format!("not allowed to deliver to: {}", request.userinfo.name);
            return DeliveryResult::refused(Status::PermFail, EX_NOPERM, &cause);
        }

        let mut message = match request.message {
            MessageSource::File(file) => file,
            MessageSource::Path(ref path) => match crate::queue::crypto::open_message_file(path) {
                Ok(file) => file,
                Err(_) => return DeliveryResult::plain(Status::TempFail, "Cannot get message fd"),
            },
        };
        match has_delivery_loop(std::io::BufReader::new(&message), &env.dest) {
            Ok(true) => return DeliveryResult::plain(Status::PermFail, "Loop detected"),
            Ok(false) => {}
            Err(_) => return DeliveryResult::plain(Status::TempFail, "Error reading body"),
        }
        if message.seek(SeekFrom::Start(0)).is_err() {
            return DeliveryResult::plain(Status::TempFail, "Error reading body");
        }

        let job = Job {
            method: request.method.clone(),
            wrapper: request.wrapper.clone(),
            userinfo: request.userinfo.clone(),
            identity,
            envelope: request.envelope.clone(),
            mbox_spool: self.mbox_spool.display().to_string(),
            mbox_dotlocked: false,
            subaddress_delimiter: self.subaddress_delimiter,
            timeout_secs: self.timeout.as_secs().max(1),
        };

        if let Some(broker) = crate::privsep::broker::client() {
            // The network side is unprivileged. A maildir job goes straight to a delivery
            // worker of its identity, which the privileged broker started and lent to this
            // process; anything else the broker runs itself.
            if uses_worker(&job) {
                return self.run_on_worker(&job, &message);
            }
            broker.deliver(&job, message)
        } else if running_as_root() {
            self.run_privileged(job, message)
        } else {
            DeliveryResult::from_outcome(&run_job(&job, message))
        }
    }

    /// Starts a delivery worker of identity `(uid, gid)` for the unprivileged side and
    /// hands over its socket and process id (the broker's `worker` request).
    pub fn lease_worker(&self, uid: u32, gid: u32) -> Result<(OwnedFd, u32), String> {
        self.workers.lease(uid, gid)
    }

    /// How the lent worker `pid` ended (the broker's `worker-end` request).
    pub fn end_worker_lease(&self, pid: u32) -> Option<Outcome> {
        self.workers.end_lease(pid)
    }

    /// Runs `job` from a privileged process: the identity checks again, the mailbox of an
    /// `mbox` job created and dot-locked, then the helper started as the job's identity.
    /// The privileged broker calls this for the unprivileged side; settings the privileged
    /// side owns (mail spool, time limit) are this agent's, whatever the job says.
    pub fn run_privileged(&self, mut job: Job, message: File) -> DeliveryResult {
        if job.identity.uid == 0 && job.method != Method::Mbox {
            let cause = format!("not allowed to deliver to: {}", job.userinfo.name);
            return DeliveryResult::refused(Status::PermFail, EX_NOPERM, &cause);
        }
        job.mbox_spool = self.mbox_spool.display().to_string();
        job.mbox_dotlocked = false;
        job.timeout_secs = self.timeout.as_secs().max(1);
        let _lock = if job.method == Method::Mbox {
            match self.prepare_mbox(&job) {
                Ok(lock) => {
                    job.mbox_dotlocked = true;
                    Some(lock)
                }
                Err(outcome) => return DeliveryResult::from_outcome(&outcome),
            }
        } else {
            None
        };
        if uses_worker(&job) {
            return self.run_on_worker(&job, &message);
        }
        match self.run_helper(&job, message) {
            Ok(outcome) => DeliveryResult::from_outcome(&outcome),
            Err(result) => result,
        }
    }

    /// Runs a maildir `job` on a delivery worker of its identity.
    fn run_on_worker(&self, job: &Job, message: &File) -> DeliveryResult {
        match self.workers.run(job, message, self.timeout) {
            Ok(outcome) => DeliveryResult::from_outcome(&outcome),
            Err(e) => DeliveryResult::refused(Status::TempFail, EX_OSERR, &e),
        }
    }

    /// `mda_mbox_init` and mail.local's privileged dot-lock.
    fn prepare_mbox(&self, job: &Job) -> Result<DotLock, Outcome> {
        let path = mbox::mailbox_path(&self.mbox_spool, &job.userinfo.name)?;
        mbox::prepare_mailbox(&path, job.userinfo.uid, job.userinfo.gid)?;
        DotLock::acquire(&self.mbox_spool, &job.userinfo.name).map_err(|e| {
            let lock = self.mbox_spool.join(format!("{}.lock", job.userinfo.name));
            Outcome::failure(
                EX_OSERR,
                format!("{MAIL_LOCAL}: {}: {}", lock.display(), strerror(&e)),
            )
        })
    }

    /// Starts the helper as the job's identity and collects its outcome.
    fn run_helper(&self, job: &Job, message: File) -> Result<Outcome, DeliveryResult> {
        let oserr = |what: &str, e: std::io::Error| {
            DeliveryResult::refused(
                Status::TempFail,
                EX_OSERR,
                &format!("{what}: {}", strerror(&e)),
            )
        };
        let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| oserr("pipe", e.into()))?;

        // No pre_exec hook and no uid/gid here: std can then start the helper with
        // posix_spawn (vfork-like) instead of fork, which does not copy this large
        // multi-threaded process's page tables. The helper drops to the job's identity
        // itself, first thing (`helper_main`), and takes its report channel from stdout.
        let mut command = Command::new(&self.helper.program);
        command
            .args(&self.helper.args)
            .env_clear()
            .env(JOB_ENV, job.encode())
            .current_dir("/")
            .stdin(Stdio::from(message))
            .stdout(Stdio::from(report_write))
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| oserr("fork", e))?;
        // The Command kept its copy of the write end; it goes with it now, so that the read
        // below ends when the helper exits.
        drop(command);

        let stderr = child.stderr.take();
        let stderr_reader = std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut stderr) = stderr {
                let _ = (&mut stderr).take(MAX_REPORT).read_to_end(&mut text);
                // Keep draining so a chatty helper never blocks on a full pipe.
                let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            }
            text
        });
        let mut report = Vec::new();
        let _ = File::from(report_read)
            .take(MAX_REPORT)
            .read_to_end(&mut report);
        let status = child.wait().map_err(|e| oserr("waitpid", e))?;
        let stderr = stderr_reader.join().unwrap_or_default();

        if let Some(outcome) = decode_outcome(&String::from_utf8_lossy(&report)) {
            return Ok(outcome);
        }
        Ok(helper_ended(status, &String::from_utf8_lossy(&stderr)))
    }
}

/// The outcome of a helper (one-shot or worker) that ended without reporting one: killed by
/// its alarm (the time limit), by another signal, or exited — then the last line it wrote on
/// its standard error, if any, says why.
pub(crate) fn helper_ended(status: std::process::ExitStatus, stderr: &str) -> Outcome {
    let exit = match (status.code(), status.signal()) {
        (_, Some(libc::SIGALRM)) => Exit::Timeout,
        (_, Some(sig)) => Exit::Signal(sig),
        (Some(code), _) => {
            let detail = match stderr.lines().last() {
                Some(last) if !last.is_empty() => last.to_string(),
                _ => format!("exit status {code}"),
            };
            return Outcome::failure(
                EX_TEMPFAIL,
                format!("smtpd: delivery helper failed: {detail}"),
            );
        }
        (None, None) => Exit::Code(EX_TEMPFAIL),
    };
    Outcome {
        exit,
        last_line: None,
        premature: false,
    }
}

/// If this process was started as a delivery helper, runs the job and
/// returns the exit status for `main` to exit with; otherwise `None`.
pub fn helper_main_if_requested() -> Option<i32> {
    if let Some(spec) = std::env::var_os(WORKER_ENV) {
        return Some(worker_main(&spec.to_string_lossy()));
    }
    let job = std::env::var_os(JOB_ENV)?;
    Some(helper_main(job))
}

fn helper_main(job_text: OsString) -> i32 {
    // The report channel arrives as standard output. Keep it on a new close-on-exec
    // descriptor and put /dev/null in its place, so that no program the job runs can
    // write into it.
    let Ok(channel_fd) = nix::fcntl::fcntl(1, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)) else {
        return 70;
    };
    // SAFETY: `channel_fd` was just returned by fcntl(F_DUPFD_CLOEXEC), is open, and
    // nothing else in this process owns it.
    let mut channel = unsafe { File::from_raw_fd(channel_fd) };
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2(2) on two open descriptors has no memory effects; fd 1 is replaced
        // atomically and `null` stays owned by its File.
        if unsafe { libc::dup2(null.as_raw_fd(), 1) } == -1 {
            return 70;
        }
    }
    let outcome = match job_text
        .into_string()
        .map_err(|_| "not text".to_string())
        .and_then(|t| Job::decode(&t))
    {
        Err(e) => Outcome::failure(EX_TEMPFAIL, format!("smtpd: bad delivery job: {e}")),
        Ok(job) => {
            if let Err(e) = become_identity(job.identity.uid, job.identity.gid) {
                let o =
                    Outcome::failure(EX_TEMPFAIL, format!("smtpd: cannot change identity: {e}"));
                let _ = channel.write_all(encode_outcome(&o).as_bytes());
                return 0;
            }
            let uid = nix::unistd::geteuid();
            if uid.is_root() && job.method != Method::Mbox {
                Outcome::failure(1, "smtpd: delivery helper may not run as root")
            } else {
                let _ = nix::unistd::setsid();
                let grace = if matches!(job.method, Method::Mda { .. } | Method::Pipe { .. }) {
                    HELPER_GRACE_SECS
                } else {
                    0
                };
                let secs = u32::try_from(job.timeout_secs + grace).unwrap_or(u32::MAX);
                nix::unistd::alarm::set(secs);
                if std::env::set_current_dir(&job.identity.home).is_err() {
                    let _ = std::env::set_current_dir("/");
                }
                run_job(&job, std::io::stdin().lock())
            }
        }
    };
    let _ = channel.write_all(encode_outcome(&outcome).as_bytes());
    0
}

/// Become `uid`:`gid` (with no supplementary groups) when started with another identity, as
/// the privileged agent starts every helper; a no-op when the identity is already right.
pub(crate) fn become_identity(uid: u32, gid: u32) -> nix::Result<()> {
    use nix::unistd::{Gid, Uid, getegid, geteuid, setgroups, setresgid, setresuid};
    if geteuid().as_raw() == uid && getegid().as_raw() == gid {
        return Ok(());
    }
    if geteuid().is_root() {
        setgroups(&[])?;
    }
    setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))?;
    setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))?;
    if geteuid().as_raw() != uid || getegid().as_raw() != gid {
        return Err(nix::Error::EPERM);
    }
    Ok(())
}

/// The outcome as `key=value` lines (the helper's report).
pub(crate) fn encode_outcome(outcome: &Outcome) -> String {
    let exit = match &outcome.exit {
        Exit::Code(c) => format!("code:{c}"),
        Exit::Signal(s) => format!("signal:{s}"),
        Exit::Timeout => "timeout".to_string(),
        Exit::Killed(reason) => format!("killed:{reason}"),
    };
    let mut out = String::from("exit=");
    escape_into(&exit, &mut out);
    out.push('\n');
    if let Some(line) = &outcome.last_line {
        out.push_str("line=");
        escape_into(&hex(line), &mut out);
        out.push('\n');
    }
    out.push_str(if outcome.premature {
        "premature=1\n"
    } else {
        "premature=0\n"
    });
    out.push_str("end=1\n");
    out
}

pub(crate) fn decode_outcome(text: &str) -> Option<Outcome> {
    let mut exit = None;
    let mut last_line = None;
    let mut premature = None;
    let mut complete = false;
    // The report starts at its `exit=` line: whatever a wrapper printed on the channel
    // before it (a test harness's banner) is not part of it, nor anything after `end=`.
    let mut started = false;
    for line in text.lines() {
        if !started && !line.starts_with("exit=") {
            continue;
        }
        started = true;
        let (key, value) = line.split_once('=')?;
        let value = unescape(value).ok()?;
        match key {
            "exit" => {
                exit = Some(if value == "timeout" {
                    Exit::Timeout
                } else if let Some(c) = value.strip_prefix("code:") {
                    Exit::Code(c.parse().ok()?)
                } else if let Some(s) = value.strip_prefix("signal:") {
                    Exit::Signal(s.parse().ok()?)
                } else {
                    Exit::Killed(value.strip_prefix("killed:")?.to_string())
                })
            }
            "line" => last_line = Some(unhex(&value)?),
            "premature" => premature = Some(value == "1"),
            "end" => {
                complete = true;
                break;
            }
            _ => return None,
        }
    }
    complete.then_some(Outcome {
        exit: exit?,
        last_line,
        premature: premature?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_report_round_trips() {
        let outcomes = [
            Outcome::success(),
            Outcome::failure(75, "mail.maildir: Permission denied"),
            Outcome {
                exit: Exit::Signal(11),
                last_line: Some(b"\xff\n=\\".to_vec()),
                premature: false,
            },
            Outcome {
                exit: Exit::Timeout,
                last_line: None,
                premature: true,
            },
            Outcome {
                exit: Exit::Killed("Error reading body".into()),
                last_line: Some(Vec::new()),
                premature: false,
            },
        ];
        for o in outcomes {
            assert_eq!(decode_outcome(&encode_outcome(&o)), Some(o));
        }
        // A report cut short (the helper died while writing) is no report.
        let text = encode_outcome(&Outcome::success());
        assert_eq!(decode_outcome(&text[..text.len() - 6]), None);
        assert_eq!(decode_outcome(""), None);
        assert_eq!(decode_outcome("exit=code:x\npremature=0\nend=1\n"), None);
    }

    #[test]
    fn notice_only_when_unprivileged() {
        assert_eq!(unprivileged_notice().is_some(), !running_as_root());
    }
}
