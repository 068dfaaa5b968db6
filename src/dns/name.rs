//! Names and addresses as the DNS layer hands them to the rest of smtpd.
//!
//! The SMTP side prints names in log lines and Received headers and compares
//! them against tables, so every name leaving this module is in one shape:
//! presentation form, ASCII, without the trailing root dot (the root itself is
//! `"."`). Case is kept as the zone wrote it; tables lower-case on lookup.
//!
//! Client addresses get one normalisation before any lookup: an IPv4-mapped
//! IPv6 address (`::ffff:a.b.c.d`, what a dual-stack `[::]` listener sees for
//! an IPv4 client) is the IPv4 client it stands for.

use std::net::IpAddr;

/// The client address a lookup should be about: IPv4-mapped IPv6 becomes IPv4.
pub fn canonical_client(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The owner name of the PTR record for `address` (`in-addr.arpa` or
/// `ip6.arpa`), fully qualified with the trailing dot.
///
/// The address is taken as given; callers wanting OpenSMTPD's view of a
/// mapped address pass it through [`canonical_client`] first.
pub fn reverse_name(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa.")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(73);
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0x0f, byte >> 4] {
                    name.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                    name.push('.');
                }
            }
            name.push_str("ip6.arpa.");
            name
        }
    }
}

/// Presentation form without the trailing dot; the root stays `"."`.
pub fn strip_root_dot(name: &str) -> String {
    if name == "." {
        return ".".to_string();
    }
    name.strip_suffix('.').unwrap_or(name).to_string()
}

/// Whether `name` (without trailing dot) is an acceptable host name.
///
/// This is the rule OpenSMTPD's resolver (libasr, through `res_hnok`) applies
/// to PTR targets before it will use one as the client's host name: labels of
/// ASCII letters and digits, with `-` and `_` allowed inside a label but not at
/// either end. A PTR record whose target fails this rule is skipped as if it
/// were not there. Names that fail it would also be unsafe to print in a log
/// line or a Received header, which is the deeper reason to keep the rule.
pub fn is_host_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    name.split('.').all(|label| {
        let bytes = label.as_bytes();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                bytes.len() <= 63
                    && first.is_ascii_alphanumeric()
                    && last.is_ascii_alphanumeric()
                    && bytes
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
            }
            // An empty label: "a..b" or a leading dot.
            _ => false,
        }
    })
}

/// Whether OpenSMTPD would read `name` as an address rather than a host name.
///
/// The `rdns` filter condition is false for a reverse name that "is itself an
/// IP address literal" (`lka_filter.c` tests it with `text_to_netaddr`, which
/// uses `inet_net_pton`). A PTR target that passes [`is_host_name`] can only be
/// such a literal in IPv4 `inet_net_pton` forms: one to four dot-separated
/// decimal octets (`10`, `10.1`, `192.0.2.1`) or `0x` followed by hex digits.
pub fn looks_like_address(name: &str) -> bool {
    let text = name.strip_prefix("IPv6:").unwrap_or(name);
    if text.parse::<IpAddr>().is_ok() {
        return true;
    }
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return !hex.is_empty() && hex.len() <= 8 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    let parts: Vec<&str> = text.split('.').collect();
    (1..=4).contains(&parts.len())
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.len() <= 3
                && part.bytes().all(|b| b.is_ascii_digit())
                && part.parse::<u16>().is_ok_and(|octet| octet <= 255)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn mapped_ipv6_becomes_ipv4() {
        let mapped: IpAddr = "::ffff:127.0.0.4".parse().unwrap();
        assert_eq!(
            canonical_client(mapped),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4))
        );
        let native: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical_client(native), native);
        // The IPv4-compatible form (::a.b.c.d) is deprecated and not a mapping.
        let compat = IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0x7f00, 1));
        assert_eq!(canonical_client(compat), compat);
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name("127.0.0.1".parse().unwrap()),
            "1.0.0.127.in-addr.arpa."
        );
        assert_eq!(
            reverse_name("2001:db8::567:89ab".parse().unwrap()),
            "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."
        );
    }

    #[test]
    fn root_dot_is_stripped_but_root_kept() {
        assert_eq!(strip_root_dot("host.example."), "host.example");
        assert_eq!(strip_root_dot("host.example"), "host.example");
        assert_eq!(strip_root_dot("."), ".");
    }

    #[test]
    fn host_name_rule_matches_res_hnok() {
        for good in [
            "host.example",
            "a",
            "mx-1.example",
            "a_b.example",
            "1.2.3.4",
            "xn--bcher-kva.example",
        ] {
            assert!(is_host_name(good), "{good}");
        }
        for bad in [
            "",
            "-a.example",
            "a-.example",
            "_a.example",
            "a..b",
            ".a",
            "a b",
            "a\\032b",
            "é.example",
            "a/b",
        ] {
            assert!(!is_host_name(bad), "{bad}");
        }
        assert!(!is_host_name(&"a".repeat(64)));
    }

    #[test]
    fn address_literals_as_inet_net_pton_reads_them() {
        for literal in [
            "192.0.2.1",
            "10",
            "10.1",
            "10.1.2",
            "0x0a000001",
            "::1",
            "IPv6:::1",
        ] {
            assert!(looks_like_address(literal), "{literal}");
        }
        for name in [
            "host.example",
            "1.2.3.4.5",
            "256.1.1.1",
            "0x",
            "0xzz",
            "10.example",
            "1a.2.3.4",
        ] {
            assert!(!looks_like_address(name), "{name}");
        }
    }
}
