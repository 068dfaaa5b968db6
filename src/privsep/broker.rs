//! The privileged broker: the root process that stays behind when the network side drops its
//! privileges, and the narrow request protocol between the two.
//!
//! The broker is forked before the daemon starts any thread (see [`super::start`]) and
//! serves these requests, OpenSMTPD's parent-process duties:
//!
//! * `deliver`: run a delivery job as its user ([`DeliveryAgent::run_privileged`]); the
//!   message travels as an open descriptor, the answer is the delivery result;
//! * `worker`: start a maildir delivery worker ([`crate::deliver::worker`]) as a given
//!   non-root uid and gid, and hand its socket to the network side with the answer, so
//!   that maildir jobs go from the network side to the worker without a hop through the
//!   broker; the worker stays the broker's child;
//! * `worker-end`: the network side gave up a lent worker (lost or past its time limit):
//!   wait for it (at most 10 s, then kill it) and answer how it ended;
//! * `forward`: open a user's `~/.forward` with OpenSMTPD's checks ([`HomeForwards`]); the
//!   answer is the content (at most [`MAX_FORWARD_SIZE`] bytes) or why there is none;
//! * `auth`: check a system account's password against the shadow file; the answer is the
//!   check's result.
//!
//! Transport: the two processes share one `SOCK_SEQPACKET` socket pair, the *channel*. A
//! request is one packet on the channel carrying, as `SCM_RIGHTS`, a fresh reply socket
//! (and the message descriptor for `deliver`); the broker answers with one packet on that
//! reply socket and closes it. Requests are served concurrently by a pool of threads that
//! each read the channel (at most [`MAX_ACTIVE`]). The broker writes nothing on the channel itself: when the network side
//! goes away the channel reads end-of-file and the broker exits; when the broker goes away
//! the network side sees the same end-of-file ([`watch`]) and exits.
//!
//! Everything a request says is checked before use: packets that are truncated or carry
//! the wrong descriptors are dropped, malformed fields are refused, a delivery never runs
//! as uid 0 except `mbox` (whose user must be a system account, as mail.local requires),
//! the privileged side's own settings (mail spool, time limit) override the job's, and the
//! message must be a regular file.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nix::errno::Errno;

use crate::deliver::privsep::{decode_outcome, encode_outcome};
use crate::deliver::request::{Job, escape_into, hex, unescape, unhex};
use crate::deliver::result::{DeliveryResult, EX_NOPERM, EX_TEMPFAIL, Outcome, Status};
use crate::deliver::{DeliveryAgent, Method};
use crate::expand::forward::{ForwardFiles, ForwardOpen, HomeForwards, MAX_FORWARD_SIZE};
use crate::expand::userbase::UserInfo;
use crate::fdpass::{Packet, pair, receive, receive_timeout, send};
use crate::table::credentials::{AuthCheck, HashError, LookupError, Scheme, authenticate};

/// Longest request packet.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Longest answer packet.
const MAX_ANSWER: usize = 16 * 1024;

/// Requests served at once; more wait in the channel until a thread is free.
pub const MAX_ACTIVE: usize = 256;

/// How long a `forward` or `auth` answer may take.
const SHORT_WAIT: Duration = Duration::from_secs(60);

/// How much longer than the delivery's own time limit a `deliver` answer may take.
const DELIVERY_GRACE: Duration = Duration::from_secs(60);

/// Checks a system account's password: user name and password as the client sent them.
pub type PasswordCheck = dyn Fn(&[u8], &[u8]) -> AuthCheck + Send + Sync;

/// The privileged side: what each request is served with.
pub struct Broker {
    /// Runs delivery jobs (its mail spool and time limit are the ones used).
    pub agent: DeliveryAgent,
    /// Opens `.forward` files.
    pub forwards: Box<dyn ForwardFiles + Send + Sync>,
    /// Checks system passwords.
    pub passwords: Box<PasswordCheck>,
    /// Submits the offline queue at start-up (fixed when the broker starts, never taken
    /// from a request).
    pub offline: Option<crate::privsep::offline::Submitter>,
}

/// The system's password check: the hash in `/etc/shadow`.
pub fn shadow_check(user: &[u8], password: &[u8]) -> AuthCheck {
    authenticate(user, password, |key| {
        let shadow =
            std::fs::read_to_string("/etc/shadow").map_err(|e| LookupError(e.to_string()))?;
        Ok(shadow.lines().find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(key)).then(|| f.next().unwrap_or("").to_string())
        }))
    })
}

impl Broker {
    /// The real machine: `agent` for deliveries, `<home>/.forward`, `/etc/shadow`.
    pub fn system(agent: DeliveryAgent) -> Broker {
        Broker {
            agent,
            forwards: Box::new(HomeForwards),
            passwords: Box::new(shadow_check),
            offline: None,
        }
    }

    /// Serve requests on `channel` until the other side closes it. Every thread of the pool
    /// waits on the channel itself and answers the request it receives, so a request costs
    /// no hand-off between threads. A thread that takes the last idle place starts another
    /// (at most [`MAX_ACTIVE`] in all); the threads stay for the next requests, so a
    /// delivery costs no thread start. With all of them busy, requests wait in the channel.
    pub fn serve(self, channel: OwnedFd) {
        let pool = Arc::new(Pool {
            broker: self,
            channel,
            threads: AtomicUsize::new(1),
            idle: AtomicUsize::new(0),
        });
        serve_requests(&pool);
    }

    /// The answer to one request, and the descriptor that goes with it (the socket of a
    /// lent worker).
    pub fn answer_with_fd(
        &self,
        payload: &[u8],
        message: Option<File>,
    ) -> (Vec<u8>, Option<OwnedFd>) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return (b"error\nrequest is not text".to_vec(), None);
        };
        let (verb, body) = text.split_once('\n').unwrap_or((text, ""));
        let error = |e: String| format!("error\n{e}").into_bytes();
        let answer = match verb {
            "deliver" => match message {
                Some(m) => encode_result(&self.deliver(body, m)).into_bytes(),
                None => b"error\ndeliver without a message".to_vec(),
            },
            "worker" if message.is_none() => {
                match decode_identity(body).and_then(|(uid, gid)| self.agent.lease_worker(uid, gid))
                {
                    Ok((socket, pid)) => {
                        return (format!("ok\npid={pid}\n").into_bytes(), Some(socket));
                    }
                    Err(e) => error(e),
                }
            }
            "worker-end" if message.is_none() => match decode_pid(body) {
                Ok(pid) => match self.agent.end_worker_lease(pid) {
                    Some(outcome) => encode_outcome(&outcome).into_bytes(),
                    None => error(format!("no delivery worker {pid}")),
                },
                Err(e) => error(e),
            },
            "forward" if message.is_none() => match decode_user(body) {
                Ok(user) => encode_forward(&self.forwards.open(&user)),
                Err(e) => error(e),
            },
            "auth" if message.is_none() => match decode_credentials(body) {
                Ok((user, password)) => {
                    encode_auth(&(self.passwords)(&user, &password)).into_bytes()
                }
                Err(e) => error(e),
            },
            "offline" if message.is_none() => match &self.offline {
                Some(s) => {
                    let o = crate::privsep::offline::submit_all(s);
                    format!("ok\nsubmitted={}\nkept={}\n", o.submitted, o.kept).into_bytes()
                }
                None => error("no offline queue".into()),
            },
            _ => b"error\nunknown request".to_vec(),
        };
        (answer, None)
    }

    /// The answer to one request, without its descriptor (tests, and requests that have
    /// none).
    pub fn answer(&self, payload: &[u8], message: Option<File>) -> Vec<u8> {
        self.answer_with_fd(payload, message).0
    }

    fn deliver(&self, body: &str, message: File) -> DeliveryResult {
        let job = match Job::decode(body) {
            Ok(j) => j,
            Err(e) => {
                return DeliveryResult::refused(
                    Status::TempFail,
                    EX_TEMPFAIL,
                    &format!("smtpd: bad delivery job: {e}"),
                );
            }
        };
        let regular = message.metadata().map(|m| m.file_type());
        if !matches!(&regular, Ok(t) if t.is_file() && !t.is_fifo()) {
            return DeliveryResult::plain(Status::TempFail, "Cannot get message fd");
        }
        if let Err(e) = valid_name(&job.userinfo.name).and(valid_name(&job.identity.name)) {
            return DeliveryResult::refused(Status::PermFail, EX_NOPERM, &e);
        }
        if job.method == Method::Mbox {
            // mail.local delivers to system accounts only.
            match nix::unistd::User::from_name(&job.userinfo.name) {
                Ok(Some(u)) if u.uid.as_raw() == job.userinfo.uid => {}
                _ => {
                    let cause = format!("{}: unknown user", job.userinfo.name);
                    return DeliveryResult::refused(Status::PermFail, EX_NOPERM, &cause);
                }
            }
        }
        self.agent.run_privileged(job, message)
    }
}

/// A user name a request may carry.
fn valid_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 255
        || name.starts_with(['.', '-'])
        || name.contains(['/', '\0'])
        || name.chars().any(char::is_control)
    {
        return Err(format!("invalid user name {name:?}"));
    }
    Ok(())
}

/// The client's end of the channel, used from blocking code.
#[derive(Debug)]
pub struct BrokerClient {
    channel: OwnedFd,
}

static CLIENT: OnceLock<BrokerClient> = OnceLock::new();

/// Make `client` the process's broker: from now on deliveries, `.forward` files and system
/// passwords go through it. Only the first call has an effect.
pub fn install(client: BrokerClient) -> bool {
    CLIENT.set(client).is_ok()
}

/// The process's broker, if it runs with one.
pub fn client() -> Option<&'static BrokerClient> {
    CLIENT.get()
}

impl BrokerClient {
    /// A client on its end of the channel.
    pub fn new(channel: OwnedFd) -> BrokerClient {
        BrokerClient { channel }
    }

    /// The channel (for [`watch`]).
    pub fn channel(&self) -> &OwnedFd {
        &self.channel
    }

    fn request(
        &self,
        payload: &[u8],
        message: Option<&File>,
        wait: Duration,
    ) -> Result<Vec<u8>, String> {
        let (answer, fds) = self.request_with_fds(payload, message, wait)?;
        if !fds.is_empty() {
            return Err("privileged broker: unexpected descriptor".into());
        }
        Ok(answer)
    }

    fn request_with_fds(
        &self,
        payload: &[u8],
        message: Option<&File>,
        wait: Duration,
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), String> {
        if payload.len() > MAX_REQUEST {
            return Err("request too large".into());
        }
        // The request's first line names it (`deliver`, `worker`, `forward`, ...).
        let name = payload.split(|b| *b == b'\n').next().unwrap_or_default();
        let _profile =
            crate::log::imsg_timer("parent", &String::from_utf8_lossy(name), payload.len());
        let (mine, theirs) = pair().map_err(|e| format!("socketpair: {}", e.desc()))?;
        receive_timeout(&mine, wait).map_err(|e| format!("setsockopt: {}", e.desc()))?;
        let mut fds = vec![theirs.as_raw_fd()];
        if let Some(m) = message {
            fds.push(m.as_raw_fd());
        }
        send(&self.channel, payload, &fds)
            .map_err(|e| format!("privileged broker: {}", e.desc()))?;
        drop(theirs);
        match receive(&mine, MAX_ANSWER) {
            Ok(Some(p)) if !p.truncated => Ok((p.payload, p.fds)),
            Ok(_) => Err("privileged broker did not answer".into()),
            Err(Errno::EAGAIN) => Err("privileged broker did not answer in time".into()),
            Err(e) => Err(format!("privileged broker: {}", e.desc())),
        }
    }

    /// Run `job` with the message on `message`.
    pub fn deliver(&self, job: &Job, message: File) -> DeliveryResult {
        let mut payload = String::from("deliver\n");
        payload.push_str(&job.encode());
        let wait = Duration::from_secs(job.timeout_secs.saturating_add(10)) + DELIVERY_GRACE;
        let tempfail = |e: &str| DeliveryResult::refused(Status::TempFail, EX_TEMPFAIL, e);
        match self.request(payload.as_bytes(), Some(&message), wait) {
            Ok(answer) => decode_result(&answer).unwrap_or_else(|e| tempfail(&e)),
            Err(e) => tempfail(&e),
        }
    }

    /// Submit the offline queue (each file as its owner); how many were submitted and kept.
    pub fn submit_offline(&self) -> Result<crate::privsep::offline::Outcome, String> {
        let answer = self.request(b"offline\n", None, Duration::from_secs(3600))?;
        if let Some(e) = error_of(&answer) {
            return Err(e);
        }
        let text = std::str::from_utf8(&answer).map_err(|_| "malformed answer")?;
        let f = fields(text.strip_prefix("ok\n").ok_or("malformed answer")?)
            .ok_or("malformed answer")?;
        let count = |k| {
            field(&f, k).and_then(|v| v.parse::<usize>().map_err(|_| "malformed answer".into()))
        };
        Ok(crate::privsep::offline::Outcome {
            submitted: count("submitted")?,
            kept: count("kept")?,
        })
    }

    /// A delivery worker of identity `(uid, gid)`, started by the broker: its socket and
    /// process id.
    pub fn lease_worker(&self, uid: u32, gid: u32) -> Result<(OwnedFd, u32), String> {
        let payload = format!("worker\nuid={uid}\ngid={gid}\n");
        let (answer, mut fds) = self.request_with_fds(payload.as_bytes(), None, SHORT_WAIT)?;
        if let Some(e) = error_of(&answer) {
            return Err(e);
        }
        let pid = std::str::from_utf8(&answer)
            .ok()
            .and_then(|a| a.strip_prefix("ok\n"))
            .ok_or_else(|| "privileged broker: bad answer".to_string())
            .and_then(decode_pid)?;
        match (fds.pop(), fds.is_empty()) {
            (Some(socket), true) => Ok((socket, pid)),
            _ => Err("privileged broker: bad answer".into()),
        }
    }

    /// How the lent worker `pid`, whose socket this side has closed, ended.
    pub fn end_worker_lease(&self, pid: u32) -> Outcome {
        let payload = format!("worker-end\npid={pid}\n");
        let wait = SHORT_WAIT;
        let lost =
            |e: &str| Outcome::failure(EX_TEMPFAIL, format!("smtpd: delivery worker lost: {e}"));
        match self.request(payload.as_bytes(), None, wait) {
            Ok(answer) => match error_of(&answer) {
                Some(e) => lost(&e),
                None => decode_outcome(&String::from_utf8_lossy(&answer))
                    .unwrap_or_else(|| lost("bad answer")),
            },
            Err(e) => lost(&e),
        }
    }

    /// Open `user`'s `.forward`.
    pub fn open_forward(&self, user: &UserInfo) -> ForwardOpen {
        let mut payload = String::from("forward\n");
        encode_user(user, &mut payload);
        match self.request(payload.as_bytes(), None, SHORT_WAIT) {
            Ok(answer) => decode_forward(&answer).unwrap_or_else(|e| {
                tracing::warn!("warn: smtpd: forward: {e}");
                ForwardOpen::TemporaryFailure
            }),
            Err(e) => {
                tracing::warn!("warn: smtpd: forward: {e}");
                ForwardOpen::TemporaryFailure
            }
        }
    }

    /// Check a system account's password.
    pub fn check_password(&self, user: &[u8], password: &[u8]) -> AuthCheck {
        let payload = format!("auth\nuser={}\npassword={}\n", hex(user), hex(password));
        match self.request(payload.as_bytes(), None, SHORT_WAIT) {
            Ok(answer) => decode_auth(&answer).unwrap_or_else(AuthCheck::TempFail),
            Err(e) => AuthCheck::TempFail(e),
        }
    }
}

/// Wait (blocking) until the other end of `channel` is gone. The broker never writes on
/// the channel, so anything but a timeout or an interruption means it has exited.
pub fn watch(channel: &OwnedFd) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let mut fds = [PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(0) | Err(Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// `key=value` lines (values escaped) into pairs; `None` on a malformed line.
fn fields(text: &str) -> Option<Vec<(&str, String)>> {
    text.lines()
        .map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k, unescape(v).ok()?))
        })
        .collect()
}

fn field<'a>(fields: &'a [(&str, String)], key: &str) -> Result<&'a str, String> {
    fields
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| format!("field {key} missing"))
}

fn encode_user(user: &UserInfo, out: &mut String) {
    for (k, v) in [
        ("name", user.name.clone()),
        ("uid", user.uid.to_string()),
        ("gid", user.gid.to_string()),
        ("home", user.home.clone()),
    ] {
        out.push_str(k);
        out.push('=');
        escape_into(&v, out);
        out.push('\n');
    }
}

fn decode_user(body: &str) -> Result<UserInfo, String> {
    let f = fields(body).ok_or("malformed request")?;
    let name = field(&f, "name")?.to_string();
    valid_name(&name)?;
    let number =
        |k: &str| -> Result<u32, String> { field(&f, k)?.parse().map_err(|_| format!("bad {k}")) };
    let home = field(&f, "home")?.to_string();
    if !home.starts_with('/') || home.contains('\0') || home.chars().any(char::is_control) {
        return Err("bad home directory".into());
    }
    Ok(UserInfo {
        name,
        uid: number("uid")?,
        gid: number("gid")?,
        home,
    })
}

fn decode_identity(body: &str) -> Result<(u32, u32), String> {
    let f = fields(body).ok_or("malformed request")?;
    let number = |key: &str| -> Result<u32, String> {
        field(&f, key)?.parse().map_err(|_| format!("bad {key}"))
    };
    Ok((number("uid")?, number("gid")?))
}

fn decode_pid(body: &str) -> Result<u32, String> {
    let f = fields(body).ok_or("malformed request")?;
    field(&f, "pid")?
        .parse()
        .ok()
        .filter(|&pid: &u32| pid > 1)
        .ok_or_else(|| "bad pid".to_string())
}

fn decode_credentials(body: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    let f = fields(body).ok_or("malformed request")?;
    let user = unhex(field(&f, "user")?).ok_or("bad user")?;
    let password = unhex(field(&f, "password")?).ok_or("bad password")?;
    if user.contains(&0) || user.contains(&b'\n') || user.contains(&b'\r') {
        return Err("bad user".into());
    }
    Ok((user, password))
}

fn encode_result(r: &DeliveryResult) -> String {
    let status = match r.status {
        Status::Ok => "ok",
        Status::TempFail => "tempfail",
        Status::PermFail => "permfail",
    };
    let mut out = format!("result\nstatus={status}\nstat=");
    escape_into(&r.stat, &mut out);
    out.push_str("\nerror=");
    escape_into(&r.error, &mut out);
    out.push('\n');
    out
}

fn error_of(answer: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(answer).ok()?;
    let rest = text.strip_prefix("error\n")?;
    Some(format!("privileged broker refused the request: {rest}"))
}

fn decode_result(answer: &[u8]) -> Result<DeliveryResult, String> {
    if let Some(e) = error_of(answer) {
        return Err(e);
    }
    let text = std::str::from_utf8(answer).map_err(|_| "malformed answer")?;
    let body = text.strip_prefix("result\n").ok_or("malformed answer")?;
    let f = fields(body).ok_or("malformed answer")?;
    let status = match field(&f, "status")? {
        "ok" => Status::Ok,
        "tempfail" => Status::TempFail,
        "permfail" => Status::PermFail,
        _ => return Err("malformed answer".into()),
    };
    Ok(DeliveryResult {
        status,
        stat: field(&f, "stat")?.to_string(),
        error: field(&f, "error")?.to_string(),
    })
}

fn encode_forward(open: &ForwardOpen) -> Vec<u8> {
    match open {
        ForwardOpen::Missing => b"missing".to_vec(),
        ForwardOpen::TemporaryFailure => b"tempfail".to_vec(),
        ForwardOpen::PermanentFailure => b"permfail".to_vec(),
        ForwardOpen::Found(content) => {
            let mut out = b"found\n".to_vec();
            out.extend_from_slice(&content[..content.len().min(MAX_FORWARD_SIZE)]);
            out
        }
    }
}

fn decode_forward(answer: &[u8]) -> Result<ForwardOpen, String> {
    if let Some(e) = error_of(answer) {
        return Err(e);
    }
    match answer {
        b"missing" => Ok(ForwardOpen::Missing),
        b"tempfail" => Ok(ForwardOpen::TemporaryFailure),
        b"permfail" => Ok(ForwardOpen::PermanentFailure),
        _ => match answer.strip_prefix(b"found\n") {
            Some(content) if content.len() <= MAX_FORWARD_SIZE => {
                Ok(ForwardOpen::Found(content.to_vec()))
            }
            _ => Err("malformed answer".into()),
        },
    }
}

fn scheme_name(s: &Scheme) -> &'static str {
    match s {
        Scheme::Bcrypt => "bcrypt",
        Scheme::Sha256Crypt => "sha256",
        Scheme::Sha512Crypt => "sha512",
        Scheme::Yescrypt => "yescrypt",
    }
}

fn encode_auth(check: &AuthCheck) -> String {
    match check {
        AuthCheck::Ok => "ok".into(),
        AuthCheck::PermFail => "permfail".into(),
        AuthCheck::TempFail(e) => format!("tempfail\n{e}"),
        AuthCheck::Unusable(HashError::Plaintext) => "unusable\nplaintext".into(),
        AuthCheck::Unusable(HashError::TooCostly) => "unusable\ntoo-costly".into(),
        AuthCheck::Unusable(HashError::Unsupported(id)) => format!("unusable\nunsupported {id}"),
        AuthCheck::Unusable(HashError::Malformed(s)) => {
            format!("unusable\nmalformed {}", scheme_name(s))
        }
    }
}

fn decode_auth(answer: &[u8]) -> Result<AuthCheck, String> {
    if let Some(e) = error_of(answer) {
        return Err(e);
    }
    let text = std::str::from_utf8(answer).map_err(|_| "malformed answer")?;
    let (kind, rest) = text.split_once('\n').unwrap_or((text, ""));
    let unusable = |e| Ok(AuthCheck::Unusable(e));
    match kind {
        "ok" => Ok(AuthCheck::Ok),
        "permfail" => Ok(AuthCheck::PermFail),
        "tempfail" => Ok(AuthCheck::TempFail(rest.to_string())),
        "unusable" => match rest.split_once(' ') {
            None if rest == "plaintext" => unusable(HashError::Plaintext),
            None if rest == "too-costly" => unusable(HashError::TooCostly),
            Some(("unsupported", id)) => unusable(HashError::Unsupported(id.to_string())),
            Some(("malformed", s)) => {
                let scheme = [
                    Scheme::Bcrypt,
                    Scheme::Sha256Crypt,
                    Scheme::Sha512Crypt,
                    Scheme::Yescrypt,
                ]
                .into_iter()
                .find(|x| scheme_name(x) == s)
                .ok_or("malformed answer")?;
                unusable(HashError::Malformed(scheme))
            }
            _ => Err("malformed answer".into()),
        },
        _ => Err("malformed answer".into()),
    }
}

/// The broker's threads and what they share.
struct Pool {
    broker: Broker,
    channel: OwnedFd,
    /// Threads serving the channel.
    threads: AtomicUsize,
    /// Threads waiting for a request.
    idle: AtomicUsize,
}

/// One thread of the pool: receive a request, answer it, until the channel ends.
fn serve_requests(pool: &Arc<Pool>) {
    // Bounded by the channel: it ends when the network side goes away.
    loop {
        pool.idle.fetch_add(1, Ordering::SeqCst);
        let received = receive(&pool.channel, MAX_REQUEST);
        let idle_left = pool.idle.fetch_sub(1, Ordering::SeqCst) - 1;
        let packet = match received {
            Ok(Some(p)) => p,
            // End of file, or the channel broke: the network side is gone.
            Ok(None) | Err(_) => return,
        };
        let Packet {
            payload,
            mut fds,
            truncated,
        } = packet;
        if truncated || fds.is_empty() || fds.len() > 2 {
            // Not a request this protocol sends; its descriptors are closed here.
            continue;
        }
        if idle_left == 0 {
            // Nobody else is listening: start another thread before this one gets busy.
            if pool.threads.fetch_add(1, Ordering::SeqCst) < MAX_ACTIVE {
                let next = pool.clone();
                let spawned = std::thread::Builder::new()
                    .name("smtpd-broker".into())
                    .spawn(move || serve_requests(&next));
                if spawned.is_err() {
                    pool.threads.fetch_sub(1, Ordering::SeqCst);
                }
            } else {
                pool.threads.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let reply = fds.remove(0);
        let message = fds.pop().map(File::from);
        let (answer, lent) = pool.broker.answer_with_fd(&payload, message);
        let lent: Vec<_> = lent.iter().map(|fd| fd.as_raw_fd()).collect();
        let _ = send(&reply, &answer, &lent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expand::forward::FakeForwards;

    fn pair() -> (OwnedFd, OwnedFd) {
        crate::fdpass::pair().unwrap()
    }

    fn fake_broker() -> Broker {
        Broker {
            agent: DeliveryAgent::new(),
            offline: None,
            forwards: Box::new(
                FakeForwards::new()
                    .with_file("foo", "bar@example.org\n")
                    .with_outcome("bad", ForwardOpen::PermanentFailure),
            ),
            passwords: Box::new(|user, password| match (user, password) {
                (b"alice", b"secret") => AuthCheck::Ok,
                (b"alice", _) => AuthCheck::PermFail,
                (b"plain", _) => AuthCheck::Unusable(HashError::Plaintext),
                (b"bcrypt", _) => AuthCheck::Unusable(HashError::Malformed(Scheme::Bcrypt)),
                _ => AuthCheck::TempFail("no shadow".into()),
            }),
        }
    }

    fn user(name: &str) -> UserInfo {
        UserInfo {
            name: name.into(),
            uid: 2000,
            gid: 2000,
            home: "/home/x".into(),
        }
    }

    #[test]
    fn requests_and_answers_over_a_real_socket_pair() {
        let (client_end, broker_end) = pair();
        let server = std::thread::spawn(move || fake_broker().serve(broker_end));
        let client = BrokerClient::new(client_end);
        assert_eq!(client.check_password(b"alice", b"secret"), AuthCheck::Ok);
        assert_eq!(
            client.check_password(b"alice", b"wrong"),
            AuthCheck::PermFail
        );
        assert_eq!(
            client.check_password(b"plain", b"x"),
            AuthCheck::Unusable(HashError::Plaintext)
        );
        assert_eq!(
            client.check_password(b"bcrypt", b"x"),
            AuthCheck::Unusable(HashError::Malformed(Scheme::Bcrypt))
        );
        assert_eq!(
            client.check_password(b"bob", b"\xff\x00"),
            AuthCheck::TempFail("no shadow".into())
        );
        assert_eq!(
            client.open_forward(&user("foo")),
            ForwardOpen::Found(b"bar@example.org\n".to_vec())
        );
        assert_eq!(
            client.open_forward(&user("nobody-here")),
            ForwardOpen::Missing
        );
        assert_eq!(
            client.open_forward(&user("bad")),
            ForwardOpen::PermanentFailure
        );
        // A malformed user is refused by the broker: a temporary failure for the client.
        assert_eq!(
            client.open_forward(&user("../etc")),
            ForwardOpen::TemporaryFailure
        );
        let mut relative = user("foo");
        relative.home = "home/foo".into();
        assert_eq!(
            client.open_forward(&relative),
            ForwardOpen::TemporaryFailure
        );
        // The broker ends when the client's end closes.
        drop(client);
        server.join().unwrap();
    }

    /// The pool grows to serve requests at once: eight password checks that each wait
    /// (at most 10 s) until all eight are running succeed only if eight threads serve them.
    #[test]
    fn requests_are_served_at_once_by_a_growing_pool() {
        use std::sync::{Condvar, Mutex};
        const N: usize = 8;
        let inside = Arc::new((Mutex::new(0usize), Condvar::new()));
        let seen = inside.clone();
        let mut broker = fake_broker();
        broker.passwords = Box::new(move |_, _| {
            let (count, wake) = &*seen;
            let mut n = count.lock().unwrap();
            *n += 1;
            wake.notify_all();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while *n < N {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return AuthCheck::TempFail("not served at once".into());
                }
                n = wake.wait_timeout(n, left).unwrap().0;
            }
            AuthCheck::Ok
        });
        let (client_end, broker_end) = pair();
        let server = std::thread::spawn(move || broker.serve(broker_end));
        let client = Arc::new(BrokerClient::new(client_end));
        let callers: Vec<_> = (0..N)
            .map(|_| {
                let c = client.clone();
                std::thread::spawn(move || c.check_password(b"alice", b"x"))
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.join().unwrap(), AuthCheck::Ok);
        }
        assert_eq!(*inside.0.lock().unwrap(), N);
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn malformed_requests_are_answered_with_errors() {
        let b = fake_broker();
        assert!(b.answer(b"\xff\xfe", None).starts_with(b"error\n"));
        assert!(b.answer(b"launch\n", None).starts_with(b"error\n"));
        assert!(
            b.answer(b"deliver\nmethod=maildir\n", None)
                .starts_with(b"error\n")
        );
        assert!(
            b.answer(b"auth\nuser=zz\npassword=\n", None)
                .starts_with(b"error\n")
        );
        assert!(
            b.answer(b"auth\nuser=610a\npassword=\n", None)
                .starts_with(b"error\n")
        );
        assert!(b.answer(b"forward\nname=x\n", None).starts_with(b"error\n"));
        let f = tempfile::tempfile().unwrap();
        let answer = b.answer(b"deliver\nnot a job", Some(f));
        let r = decode_result(&answer).unwrap();
        assert_eq!(r.status, Status::TempFail);
        assert!(r.error.contains("bad delivery job"), "{r:?}");
    }

    #[test]
    fn worker_requests_are_checked_before_any_process_starts() {
        let b = fake_broker();
        let error = |payload: &[u8]| {
            let (answer, fd) = b.answer_with_fd(payload, None);
            assert!(fd.is_none());
            String::from_utf8(answer).unwrap()
        };
        assert_eq!(
            error(b"worker\nuid=0\ngid=2000\n"),
            "error\nno delivery worker runs as root"
        );
        assert_eq!(error(b"worker\nuid=2000\n"), "error\nfield gid missing");
        assert_eq!(error(b"worker\nuid=-1\ngid=0\n"), "error\nbad uid");
        assert_eq!(error(b"worker\nuid"), "error\nmalformed request");
        assert_eq!(error(b"worker-end\npid=1\n"), "error\nbad pid");
        assert_eq!(error(b"worker-end\npid=x\n"), "error\nbad pid");
        let pid = std::process::id();
        assert_eq!(
            error(format!("worker-end\npid={pid}\n").as_bytes()),
            format!("error\nno delivery worker {pid}")
        );
        // With a message attached, neither is a request this protocol sends.
        let f = tempfile::tempfile().unwrap();
        let (answer, fd) = b.answer_with_fd(b"worker\nuid=2000\ngid=2000\n", Some(f));
        assert!(fd.is_none());
        assert_eq!(answer, b"error\nunknown request");
    }

    #[test]
    fn root_jobs_are_refused_except_mbox() {
        use crate::deliver::request::{Account, EnvelopeInfo};
        let root = Account {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: "/root".into(),
        };
        let job = Job {
            method: Method::Maildir {
                path: None,
                junk: false,
            },
            wrapper: None,
            userinfo: root.clone(),
            identity: root,
            envelope: EnvelopeInfo {
                evpid: 1,
                sender: "a@b".into(),
                rcpt: "root@b".into(),
                dest: "root@b".into(),
                subaddress: String::new(),
            },
            mbox_spool: "/var/mail".into(),
            mbox_dotlocked: false,
            subaddress_delimiter: '+',
            timeout_secs: 300,
        };
        let f = tempfile::tempfile().unwrap();
        let payload = format!("deliver\n{}", job.encode());
        let r = decode_result(&fake_broker().answer(payload.as_bytes(), Some(f))).unwrap();
        assert_eq!(r.status, Status::PermFail);
        assert_eq!(r.error, "not allowed to deliver to: root");
        // A message that is not a regular file is refused too.
        let (a, _b) = pair();
        let payload = format!("deliver\n{}", job.encode());
        let r =
            decode_result(&fake_broker().answer(payload.as_bytes(), Some(File::from(a)))).unwrap();
        assert_eq!(r.error, "Cannot get message fd");
    }

    #[test]
    fn answers_round_trip() {
        for r in [
            DeliveryResult::delivered(),
            DeliveryResult::refused(Status::PermFail, 77, "x\ny=z\\"),
            DeliveryResult::plain(Status::TempFail, "Loop detected"),
        ] {
            assert_eq!(decode_result(encode_result(&r).as_bytes()).unwrap(), r);
        }
        for f in [
            ForwardOpen::Missing,
            ForwardOpen::TemporaryFailure,
            ForwardOpen::PermanentFailure,
            ForwardOpen::Found(b"a\nb\xff".to_vec()),
            ForwardOpen::Found(Vec::new()),
        ] {
            assert_eq!(decode_forward(&encode_forward(&f)).unwrap(), f);
        }
        for s in [
            Scheme::Bcrypt,
            Scheme::Sha256Crypt,
            Scheme::Sha512Crypt,
            Scheme::Yescrypt,
        ] {
            let c = AuthCheck::Unusable(HashError::Malformed(s));
            assert_eq!(decode_auth(encode_auth(&c).as_bytes()).unwrap(), c);
        }
        let c = AuthCheck::Unusable(HashError::Unsupported("1".into()));
        assert_eq!(decode_auth(encode_auth(&c).as_bytes()).unwrap(), c);
        assert!(decode_auth(b"maybe").is_err());
        assert!(decode_forward(b"found").is_err());
        assert!(decode_result(b"error\nbusy").is_err());
    }
}
