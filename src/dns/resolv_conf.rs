//! Reading `/etc/resolv.conf` (or a file in the same format).
//!
//! smtpd reads the resolver configuration itself instead of letting the
//! resolver library do it, for two reasons: the daemon takes
//! `--resolv-conf FILE`, and tests must point it at a DNS server on a
//! loopback port other than 53, which plain resolv.conf cannot express.
//!
//! # Accepted syntax
//!
//! The glibc format, one keyword per line, `#` or `;` starting a comment:
//!
//! * `nameserver ADDR` — an IPv4 or IPv6 address, port 53. At most five are
//!   kept (libasr's limit, the resolver OpenSMTPD uses); further ones are
//!   reported in [`ResolvConf::ignored`].
//! * **Extension:** `nameserver 127.0.0.1:5353` or `nameserver [::1]:5353`
//!   selects another port. Standard resolvers would reject these lines, so
//!   files meant for both must not use them.
//! * `options timeout:N attempts:N ndots:N` — `timeout` seconds per try
//!   (default 5, clamped to 1..=30 like glibc), `attempts` tries in total
//!   (default 2, clamped to 1..=5); `ndots` and other options are read and
//!   ignored, because smtpd only asks about fully qualified names.
//! * `domain`, `search`, `sortlist`, `lookup`, `family` — accepted and
//!   ignored, for the same reason.
//!
//! A line that cannot be understood does not stop the daemon (glibc ignores
//! such lines too) but is kept in [`ResolvConf::ignored`] so it can be
//! logged. With no usable `nameserver` line, the server is `127.0.0.1:53`,
//! as with glibc.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The standard location.
pub const SYSTEM_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Most name servers kept, as in libasr (`ASR_MAXNS`).
pub const MAX_NAMESERVERS: usize = 5;

const DEFAULT_TIMEOUT_SECS: u64 = 5;
const MAX_TIMEOUT_SECS: u64 = 30;
const DEFAULT_ATTEMPTS: u32 = 2;
const MAX_ATTEMPTS: u32 = 5;

/// The resolver settings smtpd uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    /// Servers to ask, in file order.
    pub nameservers: Vec<SocketAddr>,
    /// How long one try waits for an answer.
    pub timeout: Duration,
    /// Total tries of a question before it is a temporary failure.
    pub attempts: u32,
    /// Lines (1-based number and text) that were not understood or not used,
    /// with the reason, for the daemon to log.
    pub ignored: Vec<IgnoredLine>,
}

/// A resolv.conf line smtpd did not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredLine {
    /// 1-based line number.
    pub line: usize,
    /// The line as written (trimmed).
    pub text: String,
    /// Why it was not used.
    pub reason: &'static str,
}

/// The file could not be read.
#[derive(Debug)]
pub struct ResolvConfError {
    /// The file that was being read.
    pub path: PathBuf,
    /// The underlying error.
    pub error: std::io::Error,
}

impl fmt::Display for ResolvConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.error)
    }
}

impl std::error::Error for ResolvConfError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl Default for ResolvConf {
    fn default() -> Self {
        ResolvConf {
            nameservers: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53)],
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            attempts: DEFAULT_ATTEMPTS,
            ignored: Vec::new(),
        }
    }
}

impl ResolvConf {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ResolvConfError> {
        std::fs::read_to_string(path)
            .map(|text| Self::parse(&text))
            .map_err(|error| ResolvConfError {
                path: path.to_path_buf(),
                error,
            })
    }

    /// Parses resolv.conf text. Never fails: see the module documentation.
    pub fn parse(text: &str) -> Self {
        let mut conf = ResolvConf {
            nameservers: Vec::new(),
            ..ResolvConf::default()
        };
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split(['#', ';']).next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_ascii_whitespace();
            let keyword = words.next().unwrap_or("");
            let mut ignore = |reason| {
                conf.ignored.push(IgnoredLine {
                    line: index + 1,
                    text: raw.trim().to_string(),
                    reason,
                })
            };
            match keyword {
                "nameserver" => match words.next().and_then(parse_nameserver) {
                    Some(_) if conf.nameservers.len() >= MAX_NAMESERVERS => {
                        ignore("too many nameserver lines")
                    }
                    Some(server) => conf.nameservers.push(server),
                    None => ignore("not an address or [address]:port"),
                },
                "options" => {
                    for option in words {
                        if let Some(value) = option.strip_prefix("timeout:") {
                            match value.parse::<u64>() {
                                Ok(secs) => {
                                    conf.timeout =
                                        Duration::from_secs(secs.clamp(1, MAX_TIMEOUT_SECS))
                                }
                                Err(_) => ignore("bad timeout: value"),
                            }
                        } else if let Some(value) = option.strip_prefix("attempts:") {
                            match value.parse::<u32>() {
                                Ok(n) => conf.attempts = n.clamp(1, MAX_ATTEMPTS),
                                Err(_) => ignore("bad attempts: value"),
                            }
                        }
                    }
                }
                "domain" | "search" | "sortlist" | "lookup" | "family" => {}
                _ => ignore("unknown keyword"),
            }
        }
        if conf.nameservers.is_empty() {
            conf.nameservers = ResolvConf::default().nameservers;
        }
        conf
    }

    /// The longest one question can take: every try timing out.
    pub fn worst_case(&self) -> Duration {
        self.timeout * self.attempts
    }
}

/// `ADDR`, or the extension forms `IPV4:PORT` / `[IPV6]:PORT`.
fn parse_nameserver(word: &str) -> Option<SocketAddr> {
    if let Ok(address) = word.parse::<IpAddr>() {
        return Some(SocketAddr::new(address, 53));
    }
    word.parse::<SocketAddr>()
        .ok()
        .filter(|server| server.port() != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_file() {
        let conf = ResolvConf::parse(
            "# generated\nnameserver 192.0.2.53\nnameserver 2001:db8::53 # v6\n\
             search example.org\noptions ndots:2 timeout:3 attempts:4 rotate\n",
        );
        assert_eq!(
            conf.nameservers,
            vec![
                "192.0.2.53:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
            ]
        );
        assert_eq!(conf.timeout, Duration::from_secs(3));
        assert_eq!(conf.attempts, 4);
        assert_eq!(conf.worst_case(), Duration::from_secs(12));
        assert!(conf.ignored.is_empty(), "{:?}", conf.ignored);
    }

    #[test]
    fn port_extension() {
        let conf = ResolvConf::parse("nameserver 127.0.0.1:5353\nnameserver [::1]:5354\n");
        assert_eq!(
            conf.nameservers,
            vec![
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:5354".parse().unwrap()
            ]
        );
    }

    #[test]
    fn defaults_and_clamping() {
        let conf = ResolvConf::parse("");
        assert_eq!(conf.nameservers, vec!["127.0.0.1:53".parse().unwrap()]);
        assert_eq!(conf.timeout, Duration::from_secs(5));
        assert_eq!(conf.attempts, 2);

        let conf = ResolvConf::parse("options timeout:0 attempts:99\n");
        assert_eq!(conf.timeout, Duration::from_secs(1));
        assert_eq!(conf.attempts, 5);
        let conf = ResolvConf::parse("options timeout:600 attempts:0\n");
        assert_eq!(conf.timeout, Duration::from_secs(30));
        assert_eq!(conf.attempts, 1);
    }

    #[test]
    fn bad_lines_are_reported_not_fatal() {
        let conf = ResolvConf::parse(
            "nameserver dns.example\nnameserver 127.0.0.1:0\nbogus line\n\
             options timeout:x\nnameserver 127.0.0.2\n",
        );
        assert_eq!(conf.nameservers, vec!["127.0.0.2:53".parse().unwrap()]);
        let lines: Vec<(usize, &str)> = conf.ignored.iter().map(|i| (i.line, i.reason)).collect();
        assert_eq!(
            lines,
            vec![
                (1, "not an address or [address]:port"),
                (2, "not an address or [address]:port"),
                (3, "unknown keyword"),
                (4, "bad timeout: value"),
            ]
        );
    }

    #[test]
    fn at_most_five_servers() {
        let text: String = (1..=7)
            .map(|i| format!("nameserver 127.0.0.{i}\n"))
            .collect();
        let conf = ResolvConf::parse(&text);
        assert_eq!(conf.nameservers.len(), 5);
        assert_eq!(conf.ignored.len(), 2);
        assert_eq!(conf.ignored[0].line, 6);
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let err = ResolvConf::load(Path::new("/nonexistent/resolv.conf")).unwrap_err();
        assert!(
            err.to_string().starts_with("/nonexistent/resolv.conf: "),
            "{err}"
        );
    }
}
