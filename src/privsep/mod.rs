//! Privilege separation: when smtpd starts as root, nothing that parses network input keeps
//! root's privileges (OpenSMTPD's trust boundaries: network parsing never as root, spool
//! owned by a dedicated user, deliveries under the recipient's identity).
//!
//! Start-up as root, in order (see `run_daemon` in the smtpd binary):
//!
//! 1. root-only set-up while the process is still single-threaded: listeners bound (ports
//!    below 1024 included), TLS certificates and keys read, the spool created and handed to
//!    the unprivileged user ([`prepare_spool`]), the enqueue and control sockets bound;
//! 2. [`start_broker`] forks the privileged broker ([`broker`]), which stays root and serves
//!    deliveries, `.forward` files, system-password checks and, at start-up, the offline
//!    queue ([`offline`]) over a socket pair;
//! 3. the daemon process drops to the unprivileged user ([`drop_privileges`]): the first of
//!    [`UNPRIVILEGED_USERS`] that exists, else [`FALLBACK_USER`] with a warning; it then
//!    opens the spool and runs the SMTP server, the queue, the scheduler, the relay client
//!    and the control socket as that user.
//!
//! When smtpd starts as another user nothing of this happens: there is no broker, and local
//! deliveries run as that user, as before.

pub mod broker;
pub mod offline;

/// The pid file written at start-up, removed when smtpd ends (by the broker, which stays
/// root and may remove it from the root-owned directory, or by the daemon without one).
static PIDFILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Where init scripts look for the daemon's pid (`/run/smtpd.pid`, as OpenSMTPD's
/// `pidfile(3)` writes it on Debian; `/var/run/smtpd.pid` where there is no `/run`).
pub fn default_pidfile() -> std::path::PathBuf {
    if std::path::Path::new("/run").is_dir() {
        "/run/smtpd.pid".into()
    } else {
        "/var/run/smtpd.pid".into()
    }
}

/// Writes this process's id to `path` (`PID` and a newline, mode 0644), whole or not at all
/// (written beside it, then renamed), and remembers the path for [`remove_pidfile`].
pub fn write_pidfile(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(format!("{}\n", std::process::id()).as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    let _ = PIDFILE.set(path.to_path_buf());
    Ok(())
}

/// Removes the pid file written at start-up, if any.
pub fn remove_pidfile() {
    if let Some(p) = PIDFILE.get() {
        let _ = std::fs::remove_file(p);
    }
}

use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::deliver::DeliveryAgent;

/// The users the network side may run as, the first that exists wins: OpenSMTPD's `_smtpd`,
/// then `opensmtpd` as the Debian package names it.
pub const UNPRIVILEGED_USERS: &[&str] = &["_smtpd", "opensmtpd"];

/// The user taken (with a warning) when none of [`UNPRIVILEGED_USERS`] exists.
pub const FALLBACK_USER: &str = "nobody";

/// Most spool entries whose owner is fixed at start-up (a bound on the walk).
const MAX_SPOOL_ENTRIES: usize = 50_000_000;

/// The identity the network side runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unprivileged {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// [`FALLBACK_USER`] was taken because no dedicated user exists.
    pub fallback: bool,
}

/// The unprivileged user to run as.
pub fn unprivileged_user() -> Result<Unprivileged, String> {
    let candidates = UNPRIVILEGED_USERS.iter().map(|n| (n, false));
    for (name, fallback) in candidates.chain(std::iter::once((&FALLBACK_USER, true))) {
        if let Ok(Some(u)) = nix::unistd::User::from_name(name) {
            if u.uid.is_root() {
                continue;
            }
            return Ok(Unprivileged {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                fallback,
            });
        }
    }
    Err(format!(
        "no unprivileged user: none of {}, {FALLBACK_USER} exists",
        UNPRIVILEGED_USERS.join(", ")
    ))
}

/// Whether `user` (with its primary group only) may search the directory `meta` describes.
fn searchable(meta: &std::fs::Metadata, user: &Unprivileged) -> bool {
    let mode = meta.mode();
    if meta.uid() == user.uid {
        mode & 0o100 != 0
    } else if meta.gid() == user.gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// Create the spool at `root` (as root, with OpenSMTPD's modes) and give it to `user`:
/// every directory above it must be searchable by that user, and the spool directory and
/// everything in it become `user`'s (symbolic links are not followed).
pub fn prepare_spool(root: &Path, user: &Unprivileged) -> Result<(), String> {
    let layout = crate::queue::layout::Layout::new(root);
    layout
        .create()
        .map_err(|e| format!("{}: {}", root.display(), crate::config::diag::strerror(&e)))?;
    let canonical = std::fs::canonicalize(root)
        .map_err(|e| format!("{}: {}", root.display(), crate::config::diag::strerror(&e)))?;
    for dir in canonical.ancestors().skip(1) {
        let meta = std::fs::metadata(dir)
            .map_err(|e| format!("{}: {}", dir.display(), crate::config::diag::strerror(&e)))?;
        if !searchable(&meta, user) {
            return Err(format!(
                "{}: not reachable by user {}: {} is not searchable",
                root.display(),
                user.name,
                dir.display()
            ));
        }
    }
    // offline/ holds files of the users who wrote them: neither it nor they change owner.
    let offline = crate::queue::layout::Layout::new(&canonical).offline();
    let _ = std::os::unix::fs::lchown(&offline, Some(0), Some(0));
    let mut stack = vec![canonical];
    let mut seen = 0usize;
    while let Some(path) = stack.pop() {
        seen += 1;
        if seen > MAX_SPOOL_ENTRIES {
            return Err(format!("{}: too many entries", root.display()));
        }
        if path == offline {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| format!("{}: {}", path.display(), crate::config::diag::strerror(&e)))?;
        if meta.uid() != user.uid || meta.gid() != user.gid {
            std::os::unix::fs::lchown(&path, Some(user.uid), Some(user.gid)).map_err(|e| {
                format!(
                    "chown {}: {}",
                    path.display(),
                    crate::config::diag::strerror(&e)
                )
            })?;
        }
        if meta.file_type().is_dir() {
            let entries = std::fs::read_dir(&path).map_err(|e| {
                format!("{}: {}", path.display(), crate::config::diag::strerror(&e))
            })?;
            for e in entries.flatten() {
                stack.push(e.path());
            }
        }
    }
    Ok(())
}

/// Become `user` for good: supplementary groups, then group, then user (real, effective and
/// saved), and check that root cannot be regained.
pub fn drop_privileges(user: &Unprivileged) -> Result<(), String> {
    use nix::unistd::{
        Gid, Uid, getegid, geteuid, getgid, getuid, setgroups, setresgid, setresuid,
    };
    let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
    setgroups(&[gid]).map_err(|e| format!("setgroups: {}", e.desc()))?;
    setresgid(gid, gid, gid).map_err(|e| format!("setresgid: {}", e.desc()))?;
    setresuid(uid, uid, uid).map_err(|e| format!("setresuid: {}", e.desc()))?;
    if getuid() != uid || geteuid() != uid || getgid() != gid || getegid() != gid {
        return Err("cannot drop privileges".into());
    }
    if setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok() {
        return Err("root privileges could be regained".into());
    }
    Ok(())
}

/// The number of threads of this process (from `/proc`), if it can be read.
fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// The daemon's side of a started broker.
#[derive(Debug)]
pub struct StartedBroker {
    /// The broker's process id.
    pub pid: nix::unistd::Pid,
    /// The client on the channel.
    pub client: broker::BrokerClient,
}

/// Fork the privileged broker, which serves [`broker::Broker::system`] with `agent` until
/// the channel closes and then exits. `close_in_broker` are descriptors the broker has no
/// business with (listeners, sockets); it closes them first thing. Must be called while the
/// process has a single thread; refuses otherwise.
pub fn start_broker(
    agent: DeliveryAgent,
    offline: offline::Submitter,
    close_in_broker: &[RawFd],
) -> Result<StartedBroker, String> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use nix::unistd::{ForkResult, fork};
    match thread_count() {
        Some(1) => {}
        Some(n) => return Err(format!("cannot fork the broker: {n} threads are running")),
        None => return Err("cannot fork the broker: thread count unknown".into()),
    }
    let (daemon_end, broker_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| format!("socketpair: {}", e.desc()))?;
    // SAFETY: the process has exactly one thread (checked just above through /proc, and
    // nothing between the check and the fork starts one), so no lock can be held by
    // another thread at the fork: the child may allocate, lock and start threads freely,
    // as any freshly started process.
    match unsafe { fork() } {
        Err(e) => Err(format!("fork: {}", e.desc())),
        Ok(ForkResult::Parent { child }) => {
            drop(broker_end);
            Ok(StartedBroker {
                pid: child,
                client: broker::BrokerClient::new(daemon_end),
            })
        }
        Ok(ForkResult::Child) => {
            drop(daemon_end);
            for fd in close_in_broker {
                // The objects owning these descriptors belong to the caller's stack, which
                // this process never returns to (it exits below): closing them here cannot
                // make anything use or close them again.
                let _ = nix::unistd::close(*fd);
            }
            // ^C in a terminal, or a service manager's stop (SIGTERM to every process of
            // the service), reaches the broker too: the daemon's orderly exit closes the
            // channel, which ends the broker, so the broker waits for it rather than dying
            // first (the daemon would take that for a crash). A hangup (SIGHUP) does not
            // stop the daemon, so it must not stop the broker either.
            for sig in [
                nix::sys::signal::Signal::SIGINT,
                nix::sys::signal::Signal::SIGTERM,
                nix::sys::signal::Signal::SIGHUP,
            ] {
                // SAFETY: SIG_IGN installs no handler code; changing a disposition is sound.
                let _ =
                    unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn) };
            }
            let mut broker = broker::Broker::system(agent);
            broker.offline = Some(offline);
            broker.serve(broker_end);
            // The daemon has ended (its channel closed): its pid file goes with it.
            remove_pidfile();
            std::process::exit(0);
        }
    }
}
