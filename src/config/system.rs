//! What a configuration check asks of the machine: interface addresses, host names, the
//! services database, the server name. Behind a trait so that tests can check a
//! configuration without depending on the machine they run on.

use std::net::{IpAddr, ToSocketAddrs};

use super::model::Family;

/// The machine, as seen by the configuration checker.
pub trait System {
    /// Addresses for `listen on NAME`: an interface name, `all`, an address or a host name.
    /// `None` when NAME is none of those.
    fn resolve_listen(&self, name: &str, family: Option<Family>) -> Option<Vec<IpAddr>>;
    /// Port number of a service name (`submission` → 587).
    fn service_port(&self, name: &str) -> Option<u16>;
    /// Is there a helper program for an external table backend?
    fn table_helper_exists(&self, backend: &str) -> bool;
    /// Every address of every local interface.
    fn local_addresses(&self) -> Vec<IpAddr>;
}

/// A machine with one loopback interface and no lookups: `lo`, `all` and `localhost` are
/// 127.0.0.1, an address is itself, any other name is unknown; `submission` is port 587.
/// For checking configurations where the real machine must not matter (fuzzing, tests).
pub struct LoopbackSystem;

impl System for LoopbackSystem {
    fn resolve_listen(&self, name: &str, _: Option<Family>) -> Option<Vec<IpAddr>> {
        match name {
            "lo" | "all" | "localhost" => Some(vec![IpAddr::from([127, 0, 0, 1])]),
            _ => name.parse().ok().map(|ip| vec![ip]),
        }
    }
    fn service_port(&self, name: &str) -> Option<u16> {
        (name == "submission").then_some(587)
    }
    fn table_helper_exists(&self, _: &str) -> bool {
        false
    }
    fn local_addresses(&self) -> Vec<IpAddr> {
        vec![IpAddr::from([127, 0, 0, 1])]
    }
}

/// The real machine.
pub struct RealSystem;

fn interfaces() -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(addr) = a.address else { continue };
            let ip = if let Some(v4) = addr.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            out.push((a.interface_name, ip));
        }
    }
    out
}

fn family_ok(ip: &IpAddr, family: Option<Family>) -> bool {
    match family {
        None => true,
        Some(Family::Inet4) => ip.is_ipv4(),
        Some(Family::Inet6) => ip.is_ipv6(),
    }
}

impl System for RealSystem {
    fn resolve_listen(&self, name: &str, family: Option<Family>) -> Option<Vec<IpAddr>> {
        let ifs = interfaces();
        let mut found: Vec<IpAddr> = Vec::new();
        let mut known_iface = false;
        for (ifname, ip) in &ifs {
            if name == "all" || ifname == name {
                known_iface = true;
                if family_ok(ip, family) {
                    found.push(*ip);
                }
            }
        }
        if known_iface {
            return Some(found);
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Some(vec![ip]);
        }
        if name.contains('/') || name.parse::<f64>().is_ok() {
            return None;
        }
        let addrs: Vec<IpAddr> = (name, 0u16)
            .to_socket_addrs()
            .ok()?
            .map(|a| a.ip())
            .filter(|ip| family_ok(ip, family))
            .collect();
        if addrs.is_empty() { None } else { Some(addrs) }
    }

    fn service_port(&self, name: &str) -> Option<u16> {
        if let Ok(text) = std::fs::read_to_string("/etc/services") {
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("");
                let mut f = line.split_whitespace();
                let (Some(svc), Some(pp)) = (f.next(), f.next()) else {
                    continue;
                };
                let Some((port, proto)) = pp.split_once('/') else {
                    continue;
                };
                if proto != "tcp" {
                    continue;
                }
                if svc == name || f.any(|alias| alias == name) {
                    return port.parse().ok();
                }
            }
            return None;
        }
        match name {
            "smtp" => Some(25),
            "submission" => Some(587),
            "smtps" | "submissions" | "urd" => Some(465),
            "lmtp" => Some(24),
            _ => None,
        }
    }

    fn table_helper_exists(&self, backend: &str) -> bool {
        crate::table::proc::find_program(backend).is_some()
    }

    fn local_addresses(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = interfaces().into_iter().map(|(_, ip)| ip).collect();
        v.dedup();
        v
    }
}

/// The server name: the first line of `/etc/mailname`, else the host name.
pub fn server_name() -> String {
    if let Ok(s) = std::fs::read_to_string("/etc/mailname")
        && let Some(l) = s.lines().next()
    {
        let l = l.trim();
        if !l.is_empty() {
            return l.to_string();
        }
    }
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}
