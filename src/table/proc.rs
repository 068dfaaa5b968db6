//! External table backends (`table NAME BACKEND:CONFIG` with a backend other than `file`,
//! `db` or `getpwnam`): the `table-BACKEND` programs of OpenSMTPD's extras (sqlite, passwd,
//! ldap, mysql, postgres, redis, socketmap...), spoken to as OpenSMTPD 6.x does.
//!
//! The program is started as `table-BACKEND` from the helper directories, with the table's
//! name as `argv[0]` and CONFIG as its only argument, one end of a Unix socket pair as its
//! standard input. Requests and answers are imsg frames (a 16-byte header: type, total
//! length, flags, peer id, pid, in host byte order) of the table API, version 2:
//!
//! * `OPEN` carries the version and the table name (a 2,048-byte field); the answer is `OK`.
//! * `CHECK` and `LOOKUP` carry the service (`int`), a parameter count (`size_t`, always 0)
//!   and the key with its NUL; `FETCH` the service and the count. The answer is `OK` with
//!   an `int` result (1 found, 0 not found, -1 failure) and, for a found `LOOKUP` or
//!   `FETCH`, the value with its NUL.
//! * `UPDATE` asks the program to re-read its configuration; `CLOSE` ends it.
//!
//! One program runs per table, and requests to it are serialized, as in OpenSMTPD's lookup
//! process. Where OpenSMTPD stops the whole daemon when a table program fails, smtpd answers
//! that lookup as a temporary failure, logs why, and starts the program again at the next
//! lookup (at most once a second).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{LookupError, Service};

/// The table API version of OpenSMTPD 6.x (`PROC_TABLE_API_VERSION`).
pub const API_VERSION: u32 = 2;
/// Where `table-BACKEND` programs are looked for, in order.
pub const HELPER_DIRS: &[&str] = &[
    "/usr/libexec/opensmtpd",
    "/usr/lib/x86_64-linux-gnu/opensmtpd",
    "/usr/local/libexec/smtpd",
    "/usr/libexec/smtpd",
];
const HEADER: usize = 16;
/// imsg's `MAX_IMSGSIZE`: no frame is longer.
const MAX_FRAME: usize = 16384;
/// `struct table_open_params`'s name field (`LINE_MAX`).
const NAME_FIELD: usize = 2048;
/// OpenSMTPD lower-cases keys into a 1,024-byte buffer; a longer key is refused.
const KEY_MAX: usize = 1024;
/// How long an answer is awaited before the program is given up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The least time between two starts of a table's program.
const RESPAWN_DELAY: Duration = Duration::from_secs(1);

/// imsg types of the table API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
enum Msg {
    Ok = 0,
    Open = 2,
    Close = 3,
    Update = 4,
    Check = 5,
    Lookup = 6,
    Fetch = 7,
}

/// The program of a backend: `table-BACKEND` in the first helper directory that has it.
pub fn find_program(backend: &str) -> Option<PathBuf> {
    find_program_in(HELPER_DIRS, backend)
}

fn find_program_in(dirs: &[&str], backend: &str) -> Option<PathBuf> {
    if backend.is_empty() || backend.contains('/') {
        return None;
    }
    dirs.iter()
        .map(|d| Path::new(d).join(format!("table-{backend}")))
        .find(|p| p.is_file())
}

/// A running table program and the socket to it.
struct Running {
    child: Child,
    socket: UnixStream,
    /// The thread that logs the program's standard error.
    stderr: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    running: Option<Running>,
    last_start: Option<Instant>,
}

/// The client side of one external table.
pub struct ProcTable {
    name: String,
    backend: String,
    config: String,
    program: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for ProcTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcTable")
            .field("name", &self.name)
            .field("program", &self.program)
            .field("config", &self.config)
            .finish()
    }
}

/// An answer of the program that breaks the protocol, or a lost program.
#[derive(Debug)]
struct Broken(String);

impl From<std::io::Error> for Broken {
    fn from(e: std::io::Error) -> Broken {
        match e.kind() {
            // The program is gone, with or without our request unread.
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => Broken("pipe closed".into()),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                Broken(format!("no answer in {} s", ANSWER_TIMEOUT.as_secs()))
            }
            _ => Broken(e.to_string()),
        }
    }
}

impl ProcTable {
    /// Start the program of table `name` and open the table. Fails with the reason the
    /// program gave up (its standard error is logged line by line).
    pub fn open(name: &str, backend: &str, config: &str) -> Result<ProcTable, String> {
        let program = find_program(backend).ok_or_else(|| {
            format!(
                "table \"{name}\": no program table-{backend} in {}",
                HELPER_DIRS.join(", ")
            )
        })?;
        ProcTable::open_program(name, backend, config, program)
    }

    /// [`ProcTable::open`] with the program given.
    fn open_program(
        name: &str,
        backend: &str,
        config: &str,
        program: PathBuf,
    ) -> Result<ProcTable, String> {
        let table = ProcTable {
            name: name.to_string(),
            backend: backend.to_string(),
            config: config.to_string(),
            program,
            state: Mutex::new(State::default()),
        };
        {
            let mut state = table.lock();
            table
                .start(&mut state)
                .map_err(|Broken(e)| format!("table \"{name}\": {}: {e}", table.program_name()))?;
        }
        Ok(table)
    }

    fn program_name(&self) -> String {
        format!("table-{}", self.backend)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Start the program and send `OPEN`.
    fn start(&self, state: &mut State) -> Result<(), Broken> {
        state.last_start = Some(Instant::now());
        let (ours, theirs) = UnixStream::pair()?;
        let mut cmd = Command::new(&self.program);
        cmd.arg0(&self.name);
        if !self.config.is_empty() {
            cmd.arg(&self.config);
        }
        cmd.stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        // The command holds the program's end of the pair: closed here, so that the end of
        // the program is the end of our input.
        drop(cmd);
        let mut logger = None;
        if let Some(stderr) = child.stderr.take() {
            let label = self.program_name();
            // The program's own lines (`NAME[PID]: warn: ...`) go to the log, at their level.
            logger = std::thread::Builder::new()
                .name("smtpd-table-stderr".into())
                .spawn(move || {
                    let mut r = BufReader::new(stderr);
                    let mut buf = Vec::new();
                    loop {
                        // A line is read 8 KiB at most at a time: a program that writes
                        // without newlines cannot make smtpd hold all of it.
                        buf.clear();
                        match (&mut r).take(8192).read_until(b'\n', &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                        let text = String::from_utf8_lossy(&buf);
                        let line = text.trim_end_matches(['\n', '\r']);
                        if line.contains(": debug: ") {
                            tracing::debug!("{label}: {line}");
                        } else if line.contains(": info: ") {
                            tracing::info!("{label}: {line}");
                        } else {
                            tracing::warn!("{label}: {line}");
                        }
                    }
                })
                .ok();
        }
        ours.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        ours.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        let mut running = Running {
            child,
            socket: ours,
            stderr: logger,
        };
        let mut body = Vec::with_capacity(4 + NAME_FIELD);
        body.extend_from_slice(&API_VERSION.to_ne_bytes());
        let mut field = [0u8; NAME_FIELD];
        let n = self.name.len().min(NAME_FIELD - 1);
        field[..n].copy_from_slice(&self.name.as_bytes()[..n]);
        body.extend_from_slice(&field);
        let answer = call(&mut running.socket, Msg::Open, &body);
        match answer {
            Ok(a) if a.is_empty() => {
                state.running = Some(running);
                Ok(())
            }
            Ok(_) => {
                stop(running);
                Err(Broken("bogus data".into()))
            }
            Err(e) => {
                let status = stop(running);
                Err(Broken(format!("{} ({status})", e.0)))
            }
        }
    }

    /// Run one request, starting the program first if it is not running, and read its
    /// answer with `parse`. An answer `parse` finds broken (`Err(text)`), or none at all,
    /// ends the program: it is out of step. The next request starts it again.
    fn request<T>(
        &self,
        msg: Msg,
        body: &[u8],
        parse: impl FnOnce(&[u8]) -> Result<Result<T, LookupError>, &'static str>,
    ) -> Result<T, LookupError> {
        let work = || {
            let mut state = self.lock();
            if state.running.is_none() {
                if state
                    .last_start
                    .is_some_and(|t| t.elapsed() < RESPAWN_DELAY)
                {
                    return Err(LookupError(format!(
                        "{} is not running",
                        self.program_name()
                    )));
                }
                if let Err(Broken(e)) = self.start(&mut state) {
                    tracing::warn!(
                        "warn: table-proc: table \"{}\": cannot start {}: {e}",
                        self.name,
                        self.program_name()
                    );
                    return Err(LookupError(e));
                }
                tracing::info!(
                    "info: table-proc: table \"{}\": {} started again",
                    self.name,
                    self.program_name()
                );
            }
            let Some(running) = state.running.as_mut() else {
                return Err(LookupError("not running".into()));
            };
            let broken = match call(&mut running.socket, msg, body) {
                Ok(answer) => match parse(&answer) {
                    Ok(result) => return result,
                    Err(what) => what.to_string(),
                },
                Err(Broken(e)) => e,
            };
            let status = state.running.take().map(stop).unwrap_or_default();
            tracing::warn!(
                "warn: table-proc: table \"{}\": {broken}; {} {status}",
                self.name,
                self.program_name()
            );
            Err(LookupError(broken))
        };
        blocking(work)
    }

    /// `CHECK`: does the key match for the service?
    pub fn check(&self, service: Service, key: &str) -> Result<bool, LookupError> {
        self.request(
            Msg::Check,
            &keyed(service, key)?,
            |answer| match result_of(answer)? {
                (1, []) => Ok(Ok(true)),
                (0, []) => Ok(Ok(false)),
                (_, []) => Ok(Err(LookupError("backend failure".into()))),
                _ => Err("bogus data"),
            },
        )
    }

    /// `LOOKUP`: the value stored for the key.
    pub fn lookup(&self, service: Service, key: &str) -> Result<Option<String>, LookupError> {
        self.request(Msg::Lookup, &keyed(service, key)?, value_answer)
    }

    /// `FETCH`: the next value of a list (the program goes round its entries).
    pub fn fetch(&self, service: Service) -> Result<Option<String>, LookupError> {
        let mut body = service.bit().to_ne_bytes().to_vec();
        body.extend_from_slice(&0usize.to_ne_bytes());
        self.request(Msg::Fetch, &body, value_answer)
    }

    /// `UPDATE`: the program re-reads its configuration. `Ok(false)` when it could not (it
    /// keeps the configuration it had).
    pub fn update(&self) -> Result<bool, LookupError> {
        self.request(Msg::Update, &[], |answer| match result_of(answer)? {
            (r, []) => Ok(Ok(r == 1)),
            _ => Err("bogus data"),
        })
    }
}

/// A `LOOKUP` or `FETCH` answer: the result, and the value when found.
fn value_answer(answer: &[u8]) -> Result<Result<Option<String>, LookupError>, &'static str> {
    match result_of(answer)? {
        (1, []) => Err("empty response"),
        (1, rest) => match rest.split_last() {
            Some((&0, value)) if !value.contains(&0) => {
                Ok(Ok(Some(String::from_utf8_lossy(value).into_owned())))
            }
            Some((&0, _)) => Err("bogus data"),
            _ => Err("not NUL-terminated"),
        },
        (0, []) => Ok(Ok(None)),
        (0, _) => Err("bogus data"),
        _ => Ok(Err(LookupError("backend failure".into()))),
    }
}

impl Drop for ProcTable {
    fn drop(&mut self) {
        if let Some(mut r) = self.lock().running.take() {
            let _ = send(&mut r.socket, Msg::Close, &[]);
            drop(r.socket);
            // The program ends at CLOSE or at the end of its input; reap it in passing.
            let _ = r.child.try_wait();
        }
    }
}

/// Run `f`, telling the runtime first when this is one of its worker threads (a lookup
/// blocks until the program answers).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The body of `CHECK`/`LOOKUP`: service, no parameters, key.
fn keyed(service: Service, key: &str) -> Result<Vec<u8>, LookupError> {
    if key.len() >= KEY_MAX {
        return Err(LookupError(format!("lookup key too long: {key}")));
    }
    if key.contains('\0') {
        return Err(LookupError("Invalid argument".into()));
    }
    let key = key.to_ascii_lowercase();
    let mut body = Vec::with_capacity(4 + 8 + key.len() + 1);
    body.extend_from_slice(&service.bit().to_ne_bytes());
    body.extend_from_slice(&0usize.to_ne_bytes());
    body.extend_from_slice(key.as_bytes());
    body.push(0);
    Ok(body)
}

/// The `int` result at the head of an answer, and what follows it.
fn result_of(answer: &[u8]) -> Result<(i32, &[u8]), &'static str> {
    match answer.split_first_chunk::<4>() {
        Some((r, rest)) => Ok((i32::from_ne_bytes(*r), rest)),
        None => Err("bad msg len"),
    }
}

fn send(socket: &mut UnixStream, msg: Msg, body: &[u8]) -> Result<(), Broken> {
    let len = HEADER + body.len();
    if len > MAX_FRAME {
        return Err(Broken("request too long".into()));
    }
    let mut frame = Vec::with_capacity(len);
    frame.extend_from_slice(&(msg as u32).to_ne_bytes());
    frame.extend_from_slice(&(len as u16).to_ne_bytes());
    frame.extend_from_slice(&0u16.to_ne_bytes());
    frame.extend_from_slice(&0u32.to_ne_bytes());
    frame.extend_from_slice(&std::process::id().to_ne_bytes());
    frame.extend_from_slice(body);
    socket.write_all(&frame)?;
    Ok(())
}

/// Send a request and read its answer's body; anything but an `OK` frame is broken.
fn call(socket: &mut UnixStream, msg: Msg, body: &[u8]) -> Result<Vec<u8>, Broken> {
    send(socket, msg, body)?;
    let mut header = [0u8; HEADER];
    socket.read_exact(&mut header)?;
    let kind = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]);
    let len = usize::from(u16::from_ne_bytes([header[4], header[5]]));
    if !(HEADER..=MAX_FRAME).contains(&len) {
        return Err(Broken("bad msg len".into()));
    }
    let mut answer = vec![0u8; len - HEADER];
    socket.read_exact(&mut answer)?;
    if kind != Msg::Ok as u32 {
        return Err(Broken("bad response".into()));
    }
    Ok(answer)
}

/// Stop a program (closing its input ends it; a program that does not end is killed) and
/// say how it ended.
fn stop(mut r: Running) -> String {
    drop(r.socket);
    let mut status = None;
    for _ in 0..20 {
        if let Ok(Some(s)) = r.child.try_wait() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let said = match status {
        Some(s) => describe(s),
        None => {
            let _ = r.child.kill();
            match r.child.wait() {
                Ok(s) => describe(s),
                Err(e) => format!("could not be reaped: {e}"),
            }
        }
    };
    // The program's last words are logged before ours (at most 0.5 s is waited for them).
    if let Some(logger) = r.stderr.take() {
        for _ in 0..50 {
            if logger.is_finished() {
                let _ = logger.join();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    said
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => "exited okay".into(),
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("terminated; signal {s}"),
        _ => "ended".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_have_opensmtpd_bits() {
        assert_eq!(Service::Alias.bit(), 0x001);
        assert_eq!(Service::Domain.bit(), 0x002);
        assert_eq!(Service::Credentials.bit(), 0x004);
        assert_eq!(Service::Userinfo.bit(), 0x010);
        assert_eq!(Service::Mailaddrmap.bit(), 0x100);
        assert_eq!(Service::Regex.bit(), 0x800);
    }

    #[test]
    fn request_bodies_are_laid_out_as_the_api_reads_them() {
        let b = keyed(Service::Domain, "Example.ORG").unwrap();
        assert_eq!(&b[..4], &2i32.to_ne_bytes());
        assert_eq!(&b[4..12], &0usize.to_ne_bytes());
        assert_eq!(&b[12..], b"example.org\0");
        assert!(keyed(Service::Domain, &"a".repeat(KEY_MAX)).is_err());
        assert!(keyed(Service::Domain, "a\0b").is_err());
    }

    #[test]
    fn helper_names_cannot_leave_the_directory() {
        assert_eq!(find_program_in(&["/usr/bin"], "../bin/sh"), None);
        assert_eq!(find_program_in(&["/usr/bin"], ""), None);
        assert!(find_program_in(&["/nonexistent", "/usr/bin"], "no-such-backend").is_none());
    }

    /// A peer that answers like a table program, on the other end of a socket pair.
    fn peer(answers: Vec<(u32, Vec<u8>)>) -> (UnixStream, std::thread::JoinHandle<Vec<Vec<u8>>>) {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (kind, body) in answers {
                let mut header = [0u8; HEADER];
                if theirs.read_exact(&mut header).is_err() {
                    break;
                }
                let len = usize::from(u16::from_ne_bytes([header[4], header[5]]));
                let mut req = vec![0u8; len - HEADER];
                theirs.read_exact(&mut req).unwrap();
                seen.push(req);
                let mut frame = kind.to_ne_bytes().to_vec();
                frame.extend_from_slice(&((HEADER + body.len()) as u16).to_ne_bytes());
                frame.extend_from_slice(&[0u8; 10]);
                frame.extend_from_slice(&body);
                theirs.write_all(&frame).unwrap();
            }
            seen
        });
        (ours, h)
    }

    /// A table program in Python speaking the protocol: OPEN and CHECK answered, LOOKUP
    /// answers `good` with a value, `bad` without its NUL, and exits at `exit`; UPDATE
    /// fails.
    const FAKE: &str = r#"#!/usr/bin/env python3
import struct, sys, os
i, o = sys.stdin.buffer, os.fdopen(0, "wb", buffering=0)
def reply(body):
    o.write(struct.pack("=IHHII", 0, 16 + len(body), 0, 0, os.getpid()) + body)
while True:
    head = i.read(16)
    if len(head) < 16:
        sys.exit(0)
    kind, length = struct.unpack("=IH", head[:6])
    body = i.read(length - 16)
    if kind == 2:
        reply(b"")
    elif kind == 5:
        reply(struct.pack("=i", 1))
    elif kind == 6:
        key = body[12:-1]
        if key == b"good":
            reply(struct.pack("=i", 1) + b"value\0")
        elif key == b"bad":
            reply(struct.pack("=i", 1) + b"x")
        elif key == b"exit":
            sys.exit(3)
        else:
            reply(struct.pack("=i", 0))
    elif kind == 4:
        reply(struct.pack("=i", 0))
"#;

    #[test]
    fn a_program_that_breaks_the_protocol_is_started_again() {
        if std::process::Command::new("python3")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED: python3 is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("table-fake");
        std::fs::write(&program, FAKE).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let t = ProcTable::open_program("t", "fake", "", program).unwrap();
        assert_eq!(t.check(Service::Domain, "a"), Ok(true));
        assert_eq!(t.lookup(Service::Alias, "GOOD"), Ok(Some("value".into())));
        assert_eq!(t.lookup(Service::Alias, "nope"), Ok(None));
        assert_eq!(
            t.lookup(Service::Alias, "bad"),
            Err(LookupError("not NUL-terminated".into()))
        );
        // Stopped; started again at most once a second.
        assert!(t.lock().running.is_none());
        std::thread::sleep(RESPAWN_DELAY + Duration::from_millis(100));
        assert_eq!(t.lookup(Service::Alias, "good"), Ok(Some("value".into())));
        assert_eq!(t.update(), Ok(false));
        assert_eq!(
            t.lookup(Service::Alias, "exit"),
            Err(LookupError("pipe closed".into()))
        );
        assert_eq!(
            t.lookup(Service::Alias, "good"),
            Err(LookupError("table-fake is not running".into()))
        );
    }

    #[test]
    fn frames_round_trip_and_wrong_types_are_broken() {
        let mut found = 1i32.to_ne_bytes().to_vec();
        found.extend_from_slice(b"bob@example.org\0");
        let (mut s, h) = peer(vec![(0, found.clone()), (1, vec![])]);
        let a = call(&mut s, Msg::Lookup, &keyed(Service::Alias, "x").unwrap()).unwrap();
        assert_eq!(a, found);
        let e = call(&mut s, Msg::Check, &keyed(Service::Alias, "x").unwrap()).unwrap_err();
        assert_eq!(e.0, "bad response");
        let seen = h.join().unwrap();
        assert_eq!(seen[0], keyed(Service::Alias, "x").unwrap());
    }
}
