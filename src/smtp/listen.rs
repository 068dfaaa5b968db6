//! Listening sockets for `listen on` lines.
//!
//! Each listener address gets its own socket with a large accept backlog: OpenSMTPD listens
//! with a backlog of 5, so a burst of clients loses seconds to dropped SYNs; smtpd asks for
//! 4096 (the kernel caps it at `net.core.somaxconn`).
//!
//! `listen on socket` (written or implicit) is the local enqueue socket: a unix stream
//! socket, mode 0666 as OpenSMTPD's, through which `sendmail` submits mail with SMTP. It is
//! not the control socket (`smtpd.sock`, smtpctl's requests): OpenSMTPD passes an enqueue
//! connection through its control socket, smtpd gives it a socket of its own next to it,
//! `/var/run/smtpd-enqueue.sock` for the system spool and `<spool>/smtpd-enqueue.sock` for
//! any other spool, so that a test daemon and its `sendmail` find each other.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::model::{Config, ListenOn, Listener};

/// Backlog requested for every listening socket.
pub const BACKLOG: i32 = 4096;

/// A bound socket and the listener (index into [`Config::listeners`]) it serves.
pub struct Bound {
    pub listener: usize,
    pub addr: SocketAddr,
    pub socket: std::net::TcpListener,
}

/// The addresses a listener listens on.
pub fn addresses(l: &Listener) -> Vec<SocketAddr> {
    let port = l.port_number();
    let mut out: Vec<SocketAddr> = l
        .addresses
        .iter()
        .map(|ip| SocketAddr::new(*ip, port))
        .collect();
    // IPv6 link-local addresses need a scope; skip them rather than fail.
    out.retain(|a| match a.ip() {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
        IpAddr::V4(_) => true,
    });
    out.dedup();
    out
}

/// Bind one TCP socket.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// Bind every TCP listener of the configuration; errors name the address, as start-up
/// must fail loudly when a port is taken.
pub fn bind_all(cfg: &Config) -> Result<Vec<Bound>, String> {
    let mut out = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        if l.on == ListenOn::Socket {
            continue;
        }
        for addr in addresses(l) {
            let socket = bind(addr).map_err(|e| {
                format!("smtpd: bind: {addr}: {}", crate::config::diag::strerror(&e))
            })?;
            out.push(Bound {
                listener: i,
                addr,
                socket,
            });
        }
    }
    Ok(out)
}

/// The system spool directory (`PATH_SPOOL`).
pub const SYSTEM_SPOOL: &str = "/var/spool/smtpd";

/// The system enqueue socket.
pub const SYSTEM_SOCKET: &str = "/var/run/smtpd-enqueue.sock";

/// The enqueue socket of the daemon that uses `spool`.
pub fn socket_path(spool: &Path) -> PathBuf {
    if spool == Path::new(SYSTEM_SPOOL) {
        PathBuf::from(SYSTEM_SOCKET)
    } else {
        spool.join("smtpd-enqueue.sock")
    }
}

/// The index of the socket listener (explicit or implicit), if the configuration has one.
pub fn socket_listener(cfg: &Config) -> Option<usize> {
    cfg.listeners.iter().position(|l| l.on == ListenOn::Socket)
}

/// Bind the enqueue socket at `path`, mode 0666. A socket file left by a daemon that is gone
/// is replaced; one that still answers means another smtpd runs, which is an error.
pub fn bind_socket(path: &Path) -> Result<UnixListener, String> {
    let fail = |e: std::io::Error| {
        format!(
            "smtpd: bind: {}: {}",
            path.display(),
            crate::config::diag::strerror(&e)
        )
    };
    if std::fs::symlink_metadata(path).is_ok() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!("smtpd: {}: socket already in use", path.display()));
        }
        std::fs::remove_file(path).map_err(fail)?;
    }
    let socket = UnixListener::bind(path).map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    Ok(socket)
}

/// Raise the open-file limit to the hard limit, so that thousands of sessions fit; returns
/// the new soft limit.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_with_reuse_and_reports_taken_ports() {
        let a = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = a.local_addr().unwrap();
        assert!(addr.port() > 0);
        // A second bind of the same address while it listens fails.
        assert!(bind(addr).is_err());
        assert!(raise_fd_limit() >= 1024);
    }

    #[test]
    fn socket_path_follows_the_spool() {
        assert_eq!(
            socket_path(Path::new(SYSTEM_SPOOL)),
            PathBuf::from("/var/run/smtpd-enqueue.sock")
        );
        assert_eq!(
            socket_path(Path::new("/tmp/q")),
            PathBuf::from("/tmp/q/smtpd-enqueue.sock")
        );
    }

    #[test]
    fn enqueue_socket_is_world_writable_and_not_stolen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smtpd.sock");
        let first = bind_socket(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666);
        // A live socket is not replaced.
        let err = bind_socket(&path).err().unwrap();
        assert!(err.ends_with("socket already in use"), "{err}");
        drop(first);
        // A stale one is.
        assert!(bind_socket(&path).is_ok());
    }
}
