//! `/etc/hosts` as the resolver's second source, after the DNS.
//!
//! OpenSMTPD resolves through libasr, whose default order on Linux is
//! "lookup bind file": ask the DNS, and only when it gives nothing usable
//! (no such name, no data, or a failure) look in the hosts file. A reverse
//! lookup then takes the **first line** carrying the address (its first name
//! is the host name, the others are aliases); a forward lookup collects the
//! addresses of **every line** naming the host, case-insensitively.
//!
//! hickory has its own hosts support, but it reads the file *before* the DNS
//! and returns the names of an address in hash-map order, so smtpd keeps its
//! own reading of the file and hickory's is switched off.

use std::net::IpAddr;
use std::path::PathBuf;

use super::name::strip_root_dot;
use super::resolver::AddressFamily;

/// The standard location.
pub const SYSTEM_HOSTS: &str = "/etc/hosts";

/// Which hosts file, if any, answers after the DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostsFile {
    /// `/etc/hosts` (the daemon's default).
    System,
    /// A file in hosts(5) format, for tests.
    File(PathBuf),
    /// DNS only.
    Ignore,
}

/// A hosts file, read once when the resolver is built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostsTable {
    lines: Vec<(IpAddr, Vec<String>)>,
}

impl HostsTable {
    /// Reads `source`; a missing or unreadable file is an empty table, as it
    /// is for libasr.
    pub fn load(source: &HostsFile) -> Self {
        let path = match source {
            HostsFile::System => PathBuf::from(SYSTEM_HOSTS),
            HostsFile::File(path) => path.clone(),
            HostsFile::Ignore => return HostsTable::default(),
        };
        std::fs::read_to_string(path)
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    /// Parses hosts(5) text: `ADDRESS NAME [ALIAS...]`, `#` comments. Lines
    /// whose address does not parse, or without a name, are skipped.
    pub fn parse(text: &str) -> Self {
        let lines = text
            .lines()
            .filter_map(|line| {
                let line = line.split('#').next().unwrap_or("");
                let mut words = line.split_ascii_whitespace();
                let address = words.next()?.parse::<IpAddr>().ok()?;
                let names: Vec<String> = words.map(strip_root_dot).collect();
                (!names.is_empty()).then_some((address, names))
            })
            .collect();
        HostsTable { lines }
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The names of the first line carrying `address`: host name first.
    pub fn names_of(&self, address: IpAddr) -> Vec<String> {
        self.lines
            .iter()
            .find(|(line_address, _)| *line_address == address)
            .map(|(_, names)| names.clone())
            .unwrap_or_default()
    }

    /// The addresses of every line naming `name`, in file order.
    pub fn addresses_of(&self, name: &str, family: AddressFamily) -> Vec<IpAddr> {
        let name = strip_root_dot(name);
        self.lines
            .iter()
            .filter(|(address, names)| {
                family.admits(*address) && names.iter().any(|n| n.eq_ignore_ascii_case(&name))
            })
            .map(|(address, _)| *address)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTS: &str = "\
# static table
127.0.0.1   localhost localhost.localdomain
::1         localhost ip6-localhost
127.0.1.1   box.example box
192.0.2.7   Multi.example   # first line for this name
192.0.2.8   multi.example
not-an-ip   broken.example
192.0.2.9
127.0.0.1   second-line-for-loopback
";

    #[test]
    fn reverse_takes_the_first_line() {
        let table = HostsTable::parse(HOSTS);
        assert_eq!(
            table.names_of("127.0.0.1".parse().unwrap()),
            vec!["localhost".to_string(), "localhost.localdomain".to_string()]
        );
        assert_eq!(table.names_of("::1".parse().unwrap())[0], "localhost");
        assert!(table.names_of("192.0.2.9".parse().unwrap()).is_empty());
        assert!(table.names_of("192.0.2.1".parse().unwrap()).is_empty());
    }

    #[test]
    fn forward_collects_every_line() {
        let table = HostsTable::parse(HOSTS);
        assert_eq!(
            table.addresses_of("multi.example.", AddressFamily::Any),
            vec![
                "192.0.2.7".parse::<IpAddr>().unwrap(),
                "192.0.2.8".parse().unwrap()
            ]
        );
        assert_eq!(
            table.addresses_of("LOCALHOST", AddressFamily::Ipv6),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            table.addresses_of("localhost", AddressFamily::Ipv4),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert!(
            table
                .addresses_of("broken.example", AddressFamily::Any)
                .is_empty()
        );
    }

    #[test]
    fn missing_file_is_empty() {
        let table = HostsTable::load(&HostsFile::File("/nonexistent/hosts".into()));
        assert!(table.is_empty());
        assert!(HostsTable::load(&HostsFile::Ignore).is_empty());
    }
}
