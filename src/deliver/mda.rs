//! `mda "COMMAND"` and `|command` destinations: the expanded command runs
//! as `/bin/sh -c COMMAND` with the message on stdin, as OpenSMTPD runs it.
//!
//! What the program gets (`mda_unpriv.c`, `smtpd.c:forkmda`):
//! * environment `PATH=/bin:/usr/bin`, `DOMAIN`, `HOME`, `RECIPIENT`,
//!   `SHELL=/bin/sh`, `LOCAL`, `LOGNAME`, `USER`, `SENDER` (empty for `<>`)
//!   and `EXTENSION` when the recipient had a sub-address - nothing else;
//! * the working directory is the user's home (`/` if it cannot be entered);
//! * stdout and stderr go to one unlinked temporary file whose last line
//!   becomes the error text;
//! * its own session (`setsid`) and a five-minute alarm;
//! * no descriptor other than 0, 1 and 2 (OpenSMTPD's `closefrom`).
//!
//! How it ends: its exit status is the outcome. `mda` commands run under
//! OpenSMTPD's `mail.mda`, which turns a command killed by a signal into
//! exit 75; `|command` destinations run directly, so a signal is reported
//! as such. A program that exits 0 without reading the whole message
//! "exited prematurely" (temporary failure); one still running when the
//! alarm fires is `terminated; timeout`, and whatever it started in its
//! session is killed with it.
//!
//! The command line itself is built by [`super::format::expand_for_shell`],
//! which guarantees that no envelope value is shell syntax in it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::format::MailAddr;
use super::request::{Account, EnvelopeInfo};
use super::result::{EX_OSERR, EX_TEMPFAIL, Exit, Outcome, strerror};

/// `_PATH_DEFPATH` of OpenSMTPD on Linux.
pub const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// `close_range(2)` flag: mark close-on-exec instead of closing.
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// Bytes of the last output line kept (more than the 253 the log shows).
const LAST_LINE_KEEP: usize = 1024;

/// One command to run.
#[derive(Clone, Debug)]
pub struct MdaCommand {
    /// The expanded command line for `/bin/sh -c`.
    pub command: String,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    /// The home directory to start in.
    pub home: PathBuf,
    /// The alarm.
    pub timeout: Duration,
    /// Runs as OpenSMTPD's `mail.mda` would (signals become exit 75).
    pub through_mail_mda: bool,
}

/// The environment OpenSMTPD 6.8 gives delivery programs.
pub fn environment(identity: &Account, envelope: &EnvelopeInfo) -> Vec<(String, String)> {
    let rcpt = MailAddr::parse(&envelope.rcpt);
    let dest = MailAddr::parse(&envelope.dest);
    let sender = MailAddr::parse(&envelope.sender);
    let mut env = vec![
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
        ("DOMAIN".to_string(), rcpt.domain.clone()),
        ("HOME".to_string(), identity.home.clone()),
        (
            "RECIPIENT".to_string(),
            format!("{}@{}", dest.user, dest.domain),
        ),
        ("SHELL".to_string(), "/bin/sh".to_string()),
        ("LOCAL".to_string(), rcpt.user.clone()),
        ("LOGNAME".to_string(), identity.name.clone()),
        ("USER".to_string(), identity.name.clone()),
        (
            "SENDER".to_string(),
            if sender.user.is_empty() {
                String::new()
            } else {
                format!("{}@{}", sender.user, sender.domain)
            },
        ),
    ];
    if !envelope.subaddress.is_empty() {
        env.push(("EXTENSION".to_string(), envelope.subaddress.clone()));
    }
    env
}

/// Runs the command with `input` (delivery headers and message) on its stdin.
pub fn run(cmd: &MdaCommand, input: impl Read) -> Outcome {
    let mut capture = match capture_file() {
        Ok(file) => file,
        Err(e) => return Outcome::failure(EX_OSERR, format!("mkstemp: {}", strerror(&e))),
    };
    let (out, err) = match (capture.try_clone(), capture.try_clone()) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => {
            return Outcome::failure(EX_OSERR, format!("dup: {}", strerror(&e)));
        }
    };

    // The message goes through a pipe, as OpenSMTPD feeds it. What fits in the pipe is
    // written before the program starts: a program that exits without reading a message
    // that fits (a notification script) has taken it, whatever the timing; one that leaves
    // part of a larger message unread "exited prematurely".
    let (read_end, write_end) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            return Outcome::failure(EX_OSERR, format!("pipe: {}", strerror(&io::Error::from(e))));
        }
    };
    let stdin = File::from(write_end);
    if nix::fcntl::fcntl(
        stdin.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .is_err()
    {
        return Outcome::failure(EX_OSERR, "fcntl: cannot make the pipe non-blocking");
    }
    let mut input = input;
    let mut pending = Pending::new();
    if pending.fill(&stdin, &mut input) == Fill::ReadError {
        return Outcome {
            exit: Exit::Killed("Error reading body".into()),
            last_line: None,
            premature: false,
        };
    }

    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(&cmd.command)
        .env_clear()
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .current_dir(start_directory(&cmd.home))
        .stdin(Stdio::from(read_end))
        .stdout(out)
        .stderr(err);
    let alarm_secs = u32::try_from(cmd.timeout.as_secs().max(1)).unwrap_or(u32::MAX);
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe functions may be called; setsid(2), alarm(2)
    // and close_range(2) are plain system calls, and the closure allocates
    // nothing and touches only a copied integer.
    unsafe {
        command.pre_exec(move || {
            libc::setsid();
            libc::alarm(alarm_secs);
            // closefrom(3) as close-on-exec: nothing of smtpd's leaks into
            // the program, while std's exec-error pipe works until the exec.
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return Outcome::failure(EX_OSERR, format!("fork: {}", strerror(&e))),
    };

    // `command` holds the read end until it is dropped: only the program may keep it, or
    // its exit would not be seen as the pipe's end.
    drop(command);
    let fed = feed(stdin, input, pending, &mut child);
    if fed == Feed::ReadError {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::SIGTERM,
        );
        let _ = child.wait();
        return Outcome {
            exit: Exit::Killed("Error reading body".into()),
            last_line: None,
            premature: false,
        };
    }
    let status = match child.wait() {
        Ok(status) => status,
        Err(e) => return Outcome::failure(EX_OSERR, format!("waitpid: {}", strerror(&e))),
    };
    let exit = match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(libc::SIGALRM)) => Exit::Timeout,
        (None, Some(_)) if cmd.through_mail_mda => Exit::Code(EX_TEMPFAIL),
        (None, Some(sig)) => Exit::Signal(sig),
        (None, None) => Exit::Code(EX_TEMPFAIL),
    };
    if exit == Exit::Timeout {
        // What the timed-out shell started dies with it (its own session).
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::SIGKILL,
        );
    }
    let last_line = if exit == Exit::Code(0) {
        None
    } else {
        last_line(&mut capture)
    };
    Outcome {
        exit,
        last_line,
        premature: fed == Feed::Premature,
    }
}

/// The home directory if this process can enter it, else `/` (`forkmda`).
fn start_directory(home: &Path) -> PathBuf {
    let usable = nix::unistd::access(home, nix::unistd::AccessFlags::X_OK).is_ok() && home.is_dir();
    if usable {
        home.to_path_buf()
    } else {
        PathBuf::from("/")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feed {
    /// Everything was written (the program may not have read it all yet).
    Complete,
    /// The program went away before taking everything.
    Premature,
    /// The message could not be read.
    ReadError,
}

/// Message bytes read and not yet written to the pipe.
struct Pending {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// How far [`Pending::fill`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fill {
    /// The whole message is in the pipe.
    Done,
    /// The pipe takes no more for now.
    Full,
    /// The pipe is gone: nobody reads it any more.
    Broken,
    /// The message could not be read.
    ReadError,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            buf: vec![0u8; 64 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// Writes what the (non-blocking) pipe takes now.
    fn fill(&mut self, mut pipe: &File, input: &mut impl Read) -> Fill {
        loop {
            if self.start == self.end {
                match input.read(&mut self.buf) {
                    Ok(0) => return Fill::Done,
                    Ok(n) => (self.start, self.end) = (0, n),
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => return Fill::ReadError,
                }
            }
            match pipe.write(&self.buf[self.start..self.end]) {
                Ok(n) => self.start += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Fill::Full,
                Err(_) => return Fill::Broken,
            }
        }
    }
}

/// Writes the rest of `input` to the program without ever blocking on it: a program
/// that stops reading cannot hang the delivery past its own exit.
fn feed(
    stdin: File,
    mut input: impl Read,
    mut pending: Pending,
    child: &mut std::process::Child,
) -> Feed {
    loop {
        match pending.fill(&stdin, &mut input) {
            Fill::Done => return Feed::Complete,
            Fill::ReadError => return Feed::ReadError,
            Fill::Broken => return Feed::Premature,
            Fill::Full => {
                if !matches!(child.try_wait(), Ok(None)) {
                    return Feed::Premature;
                }
                wait_writable(stdin.as_raw_fd(), 200);
            }
        }
    }
}

/// poll(2) for POLLOUT on one descriptor, at most `millis`.
fn wait_writable(fd: i32, millis: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid, initialised pollfd that outlives the call,
    // and nfds is 1, so the kernel reads and writes only that struct.
    unsafe {
        libc::poll(&mut pfd, 1, millis);
    }
}

/// An unlinked temporary file in /tmp for the program's output.
fn capture_file() -> io::Result<File> {
    let anonymous = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open("/tmp");
    if let Ok(file) = anonymous {
        return Ok(file);
    }
    for _ in 0..8 {
        let random = getrandom::u64().map_err(|e| io::Error::other(e.to_string()))?;
        let path = PathBuf::from(format!("/tmp/smtpd.out.{random:016x}"));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => {
                let _ = std::fs::remove_file(&path);
                return Ok(file);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from(ErrorKind::AlreadyExists))
}

/// The last line of the output, as `getline` would have left it.
fn last_line(file: &mut File) -> Option<Vec<u8>> {
    file.seek(SeekFrom::Start(0)).ok()?;
    let mut reader = BufReader::new(file);
    let mut current = Vec::new();
    let mut open_line = false;
    let mut last = None;
    loop {
        let chunk = match reader.fill_buf() {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        for &b in chunk {
            if b == b'\n' {
                last = Some(std::mem::take(&mut current));
                open_line = false;
            } else {
                if current.len() < LAST_LINE_KEEP {
                    current.push(b);
                }
                open_line = true;
            }
        }
        let n = chunk.len();
        reader.consume(n);
    }
    if open_line { Some(current) } else { last }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(cmd: &str) -> MdaCommand {
        MdaCommand {
            command: cmd.into(),
            env: vec![
                ("PATH".into(), DEFAULT_PATH.into()),
                ("X".into(), "1".into()),
            ],
            home: PathBuf::from("/"),
            timeout: Duration::from_secs(30),
            through_mail_mda: true,
        }
    }

    #[test]
    fn environment_as_observed() {
        let who = Account {
            name: "foo".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/foo".into(),
        };
        let envelope = EnvelopeInfo {
            evpid: 1,
            sender: "Sender@Example.NET".into(),
            rcpt: "Foo+Ext@MDA.test".into(),
            dest: "Foo+Ext@MDA.test".into(),
            subaddress: "ext".into(),
        };
        let mut env = environment(&who, &envelope);
        env.sort();
        let text: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            text.join(" "),
            "DOMAIN=MDA.test EXTENSION=ext HOME=/home/foo LOCAL=Foo+Ext LOGNAME=foo PATH=/bin:/usr/bin \
             RECIPIENT=Foo+Ext@MDA.test SENDER=Sender@Example.NET SHELL=/bin/sh USER=foo"
        );
        let null = EnvelopeInfo {
            sender: String::new(),
            subaddress: String::new(),
            ..envelope
        };
        let env = environment(&who, &null);
        assert!(env.contains(&("SENDER".into(), String::new())));
        assert!(!env.iter().any(|(k, _)| k == "EXTENSION"));
    }

    #[test]
    fn success_and_stdin() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let o = run(
            &command(&format!("cat > {} && echo $X", out.display())),
            "hello\n".as_bytes(),
        );
        assert_eq!(o, Outcome::success());
        assert_eq!(std::fs::read(&out).unwrap(), b"hello\n");
    }

    #[test]
    fn exit_codes_and_last_line() {
        let o = run(
            &command("cat >/dev/null; echo first; echo 'custom failure message' >&2; exit 67"),
            "x".as_bytes(),
        );
        assert_eq!(o.exit, Exit::Code(67));
        assert_eq!(o.last_line.as_deref(), Some(&b"custom failure message"[..]));
        let o = run(
            &command("cat >/dev/null; printf 'a\\nb'; exit 75"),
            "x".as_bytes(),
        );
        assert_eq!(o.last_line.as_deref(), Some(&b"b"[..]));
        let o = run(&command("cat >/dev/null; exit 3"), "x".as_bytes());
        assert_eq!((o.exit, o.last_line), (Exit::Code(3), None));
    }

    #[test]
    fn signals_depend_on_mail_mda() {
        let o = run(&command("kill -SEGV $$"), "".as_bytes());
        assert_eq!(o.exit, Exit::Code(75));
        let mut direct = command("kill -SEGV $$");
        direct.through_mail_mda = false;
        assert_eq!(
            run(&direct, "".as_bytes()).exit,
            Exit::Signal(libc::SIGSEGV)
        );
    }

    #[test]
    fn timeout_is_an_alarm_and_kills_the_session() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let mut slow = command(&format!("sleep 30 & echo $! > {}; wait", pidfile.display()));
        slow.timeout = Duration::from_secs(1);
        let start = std::time::Instant::now();
        let o = run(&slow, "".as_bytes());
        assert_eq!(o.exit, Exit::Timeout);
        assert!(start.elapsed() < Duration::from_secs(4));
        // The background sleep is gone (or at most a zombie awaiting its reaper).
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .to_string();
        let gone = (0..40).any(|_| {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let dead = state.is_empty()
                || state
                    .rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'));
            if !dead {
                std::thread::sleep(Duration::from_millis(50));
            }
            dead
        });
        assert!(gone, "sleep {pid} survived the timeout");
    }

    #[test]
    fn a_message_that_fits_the_pipe_is_taken_even_unread() {
        // A notification script that never reads its input: the message was in the
        // pipe before it started, whatever the timing.
        let small = vec![b'x'; 4 * 1024];
        for _ in 0..20 {
            assert_eq!(run(&command("exit 0"), &small[..]), Outcome::success());
        }
    }

    #[test]
    fn premature_exit_with_unread_input() {
        let big = vec![b'x'; 4 * 1024 * 1024];
        let o = run(&command("exit 0"), &big[..]);
        assert!(o.premature);
        assert_eq!(o.exit, Exit::Code(0));
        // A program that reads everything is not premature.
        let o = run(&command("cat > /dev/null"), &big[..]);
        assert_eq!(o, Outcome::success());
    }

    #[test]
    fn unreadable_message_kills_the_program() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("broken"))
            }
        }
        let o = run(&command("cat >/dev/null"), Broken);
        assert_eq!(o.exit, Exit::Killed("Error reading body".into()));
    }

    #[test]
    fn environment_is_exactly_the_given_one() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("env");
        let o = run(&command(&format!("env > {}", out.display())), "".as_bytes());
        assert_eq!(o.exit, Exit::Code(0));
        let mut vars: Vec<String> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        vars.retain(|v| !v.starts_with("PWD=") && !v.starts_with("SHLVL=") && !v.starts_with("_="));
        vars.sort();
        assert_eq!(vars, ["PATH=/bin:/usr/bin", "X=1"]);
    }
}
