//! Listening sockets for `listen on` lines.
//!
//! Each listener address gets its own socket with a large accept backlog: OpenSMTPD listens
//! with a backlog of 5, so a burst of clients loses seconds to dropped SYNs; smtpd asks for
//! 4096 (the kernel caps it at `net.core.somaxconn`).

use std::net::{IpAddr, SocketAddr};

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
}
