//! The mail address: one type and one parser for the whole project.
//!
//! OpenSMTPD's idea of an address is deliberately small: a local part and a domain, split at
//! the **last** `@`, no quoted strings, no comments. The local part must be a dot-atom over
//! letters, digits and ``!#$%&'*/?^`{|}~+-=_``; the domain must be an address literal or a
//! host name. That narrowness is a security property: these strings end up in file names,
//! `%{...}` expansions and command lines, and CVE-2020-7247 was exactly a local part that
//! skipped validation because the domain was missing. So validation here happens **before**
//! a missing domain is filled in, always.
//!
//! Case: nothing is lower-cased on the way in. OpenSMTPD keeps the address as the client
//! typed it (`to=<FOO@BSDSX.FR>` in logs, `%{rcpt}` as given); domains compare
//! case-insensitively, and table lookups lower-case their key. [`Mailaddr::lowercased`] gives
//! that lookup form.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest local part and longest domain OpenSMTPD stores (its buffers hold 255 bytes + NUL).
pub const MAX_PART_LEN: usize = 255;

/// Longest text `text_to_mailaddr` accepts for a whole address (LINE_MAX - 1).
const MAX_ADDRESS_TEXT: usize = 2047;

/// Characters allowed in a local-part atom besides ASCII letters and digits
/// (OpenSMTPD's `MAILADDR_ALLOWED`).
const ATEXT_SPECIALS: &[u8] = b"!#$%&'*/?^`{|}~+-=_";

/// A mail address as OpenSMTPD stores it: `user@domain`, case preserved.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Mailaddr {
    /// The local part, as typed.
    pub user: String,
    /// The domain, as typed (or the server name when the client gave none).
    pub domain: String,
}

/// Why an SMTP path (`<...>`) was refused. The session answers every one of these with the
/// same reply (`553 5.1.0 Sender address syntax error` or `501 5.1.3 Recipient address syntax
/// error`); the variants exist for tests and traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressError {
    /// The argument does not start with `<`.
    MissingOpenBracket,
    /// No `>` closes the path.
    MissingCloseBracket,
    /// The address text, local part or domain is longer than OpenSMTPD's buffers.
    TooLong,
    /// `<>` where the null path is not allowed (RCPT TO).
    NullNotAllowed,
    /// The local part is empty or not a dot-atom of allowed characters.
    InvalidLocalPart,
    /// The domain is neither a host name nor an address literal.
    InvalidDomain,
}

impl Mailaddr {
    /// Builds an address from its two parts without checking them.
    pub fn new(user: impl Into<String>, domain: impl Into<String>) -> Mailaddr {
        Mailaddr {
            user: user.into(),
            domain: domain.into(),
        }
    }

    /// Splits `text` at its last `@` the way OpenSMTPD's `text_to_mailaddr` does (tables,
    /// aliases, ORCPT): no `@` means a bare local part, a leading `@` a bare domain. Only the
    /// lengths are checked; use [`valid_localpart`] / [`valid_domainpart`] for syntax.
    pub fn from_text(text: &str) -> Option<Mailaddr> {
        if text.len() > MAX_ADDRESS_TEXT {
            return None;
        }
        let (user, domain) = match text.rfind('@') {
            None => (text, ""),
            Some(at) => (&text[..at], &text[at + 1..]),
        };
        if user.len() > MAX_PART_LEN || domain.len() > MAX_PART_LEN {
            return None;
        }
        Some(Mailaddr::new(user, domain))
    }

    /// The form table lookups use: both parts lower-cased (ASCII only, as OpenSMTPD's
    /// `lowercase()` does).
    pub fn lowercased(&self) -> Mailaddr {
        Mailaddr::new(
            self.user.to_ascii_lowercase(),
            self.domain.to_ascii_lowercase(),
        )
    }

    /// True when the domain names the same host, ignoring ASCII case.
    pub fn domain_is(&self, domain: &str) -> bool {
        self.domain.eq_ignore_ascii_case(domain)
    }
}

impl fmt::Display for Mailaddr {
    /// `user@domain`; a missing half is left out together with the `@`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.user.is_empty(), self.domain.is_empty()) {
            (_, true) => f.write_str(&self.user),
            (true, false) => f.write_str(&self.domain),
            (false, false) => write!(f, "{}@{}", self.user, self.domain),
        }
    }
}

/// Writes an optional sender the way log lines and DSNs do: `<>` for the null sender.
pub fn path_text(addr: Option<&Mailaddr>) -> String {
    match addr {
        None => "<>".to_string(),
        Some(a) => format!("<{a}>"),
    }
}

/// A parsed SMTP path plus whatever followed its `>`: the ESMTP parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path<'a> {
    /// The address; `None` for the null reverse path `<>`.
    pub addr: Option<Mailaddr>,
    /// Text after `>`, leading spaces skipped.
    pub params: &'a str,
}

/// Parses the argument of `MAIL FROM:` / `RCPT TO:` (`smtp_mailaddr`).
///
/// * the text must start with `<`; the path ends at the first `>`;
/// * the address inside is split at its last `@`;
/// * a source route (`@a,@b:user@dom`) is dropped: everything up to the first `:` of the
///   local part goes;
/// * `<>` is accepted only when `null_allowed` (MAIL FROM);
/// * the local part must be a valid dot-atom **before** anything else happens;
/// * a missing domain becomes `default_domain` (the session's server name, §4.4);
/// * the domain must then be valid.
pub fn parse_path<'a>(
    arg: &'a str,
    null_allowed: bool,
    default_domain: &str,
) -> Result<Path<'a>, AddressError> {
    let inner_and_rest = arg
        .strip_prefix('<')
        .ok_or(AddressError::MissingOpenBracket)?;
    let close = inner_and_rest
        .find('>')
        .ok_or(AddressError::MissingCloseBracket)?;
    let inner = &inner_and_rest[..close];
    let params = inner_and_rest[close + 1..].trim_start_matches(' ');

    let mut addr = Mailaddr::from_text(inner).ok_or(AddressError::TooLong)?;
    if let Some(colon) = addr.user.find(':') {
        addr.user.drain(..=colon);
    }

    if addr.user.is_empty() && addr.domain.is_empty() {
        return if null_allowed {
            Ok(Path { addr: None, params })
        } else {
            Err(AddressError::NullNotAllowed)
        };
    }

    // CVE-2020-7247: the local part is checked whether or not a domain follows.
    if !valid_localpart(&addr.user) {
        return Err(AddressError::InvalidLocalPart);
    }
    if addr.domain.is_empty() {
        if default_domain.len() > MAX_PART_LEN {
            return Err(AddressError::TooLong);
        }
        addr.domain = default_domain.to_string();
    }
    if !valid_domainpart(&addr.domain) {
        return Err(AddressError::InvalidDomain);
    }
    Ok(Path {
        addr: Some(addr),
        params,
    })
}

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || ATEXT_SPECIALS.contains(&b)
}

/// Is `s` a dot-atom over OpenSMTPD's allowed characters (no empty atom, no leading,
/// trailing or doubled dot, no quoted string)?
pub fn valid_localpart(s: &str) -> bool {
    !s.is_empty()
        && s.as_bytes()
            .split(|&b| b == b'.')
            .all(|atom| !atom.is_empty() && atom.iter().all(|&b| is_atext(b)))
}

/// Is `s` acceptable as the domain of an address or as a HELO/EHLO argument
/// (`valid_domainpart`)?
///
/// Either an address literal — `[1.2.3.4]`, `[IPv6:…]`, or `[…]` holding any IPv6 or IPv4
/// address — or a host name shorter than 256 bytes, not ending with `.`, whose labels are
/// 1–63 characters of letters, digits, `-` and `_`, with no leading `-` on the first label
/// (the resolver's `res_hnok`). Backslash escapes, which the C resolver would decode, are
/// refused: the text is kept verbatim and must mean what it says.
pub fn valid_domainpart(s: &str) -> bool {
    if let Some(rest) = s.strip_prefix('[') {
        let inner = match rest.get(..5) {
            Some(p) if p.eq_ignore_ascii_case("IPv6:") => &rest[5..],
            _ => rest,
        };
        if inner.len() > MAX_PART_LEN {
            return false;
        }
        let Some(literal) = inner.strip_suffix(']') else {
            return false;
        };
        if literal.contains(']') {
            return false;
        }
        return literal.parse::<Ipv6Addr>().is_ok() || literal.parse::<Ipv4Addr>().is_ok();
    }
    if s.is_empty() || s.len() > MAX_PART_LEN || s.ends_with('.') {
        return false;
    }
    host_name_ok(s)
}

/// The resolver's host name check (`res_hnok`) for a name without trailing dot.
fn host_name_ok(s: &str) -> bool {
    // Wire form: one length byte per label plus the root byte; at most 255.
    if s.len() + 2 > 255 || s.starts_with('-') {
        return false;
    }
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Entry point for a fuzzer: arbitrary text through every reader of addresses and
/// address-like values — SMTP paths, table and alias addresses, alias/`.forward` values
/// and their files, relay URLs. Must never panic, for any input.
pub fn fuzz_address(data: &[u8]) {
    use crate::expand::node::{self, FORWARD_SYNTAX, INCLUDE_SYNTAX};
    let text = String::from_utf8_lossy(data);
    if let Some(addr) = Mailaddr::from_text(&text) {
        let lower = addr.lowercased();
        let _ = addr.domain_is(&lower.domain);
        let _ = path_text(Some(&lower));
    }
    let _ = valid_localpart(&text);
    let _ = valid_domainpart(&text);
    for null_allowed in [true, false] {
        if let Ok(path) = parse_path(&text, null_allowed, "fuzz.example") {
            let _ = path_text(path.addr.as_ref());
        }
    }
    for line in text.lines() {
        for n in node::parse_line(line).nodes {
            let _ = (n.type_name(), n.value_text());
        }
    }
    for syntax in [FORWARD_SYNTAX, INCLUDE_SYNTAX] {
        for line in node::logical_lines(data, syntax) {
            let _ = node::parse_line(&String::from_utf8_lossy(&line));
        }
    }
    let _ = node::Mailaddr::parse(&text);
    let _ = crate::deliver::relay::parse_relay_url(&text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(arg: &str, null_allowed: bool) -> Result<Option<String>, AddressError> {
        parse_path(arg, null_allowed, "mx.example.test").map(|p| p.addr.map(|a| a.to_string()))
    }

    #[test]
    fn parses_ordinary_paths_and_keeps_case() {
        assert_eq!(path("<a@b.test>", true), Ok(Some("a@b.test".into())));
        assert_eq!(
            path("<FOO@BSDSX.FR>", false),
            Ok(Some("FOO@BSDSX.FR".into()))
        );
        assert_eq!(
            path("<foo+tag@bsdsx.fr>", false),
            Ok(Some("foo+tag@bsdsx.fr".into()))
        );
        assert_eq!(
            path("<a@[127.0.0.1]>", false),
            Ok(Some("a@[127.0.0.1]".into()))
        );
        assert_eq!(
            path("<a@[IPv6:::1]>", false),
            Ok(Some("a@[IPv6:::1]".into()))
        );
        assert!(path("<a@[ipv6:2001:db8::1]>", false).is_ok());
    }

    #[test]
    fn null_path_only_for_senders() {
        assert_eq!(path("<>", true), Ok(None));
        assert_eq!(path("<>", false), Err(AddressError::NullNotAllowed));
        // `<@>` splits into an empty user and an empty domain: the null path again.
        assert_eq!(path("<@>", true), Ok(None));
    }

    #[test]
    fn bare_local_parts_are_qualified_with_the_server_name() {
        // §4.4: `RCPT TO:<postmaster>` becomes postmaster@HOSTNAME, `MAIL FROM:<bad>` too.
        assert_eq!(
            path("<postmaster>", false),
            Ok(Some("postmaster@mx.example.test".into()))
        );
        assert_eq!(path("<bad>", true), Ok(Some("bad@mx.example.test".into())));
        assert_eq!(
            path("<bsdsx.fr>", false),
            Ok(Some("bsdsx.fr@mx.example.test".into()))
        );
    }

    #[test]
    fn source_routes_are_stripped() {
        assert_eq!(
            path("<@route,@r2:a@b.test>", true),
            Ok(Some("a@b.test".into()))
        );
        // Split at the last '@' first: here the whole "r:a" is the domain, the user is empty.
        assert_eq!(path("<@r:a>", true), Err(AddressError::InvalidLocalPart));
        assert_eq!(path("<r:a>", true), Ok(Some("a@mx.example.test".into())));
        assert_eq!(
            path("<x:@b.test>", true),
            Err(AddressError::InvalidLocalPart)
        );
    }

    #[test]
    fn refuses_what_opensmtpd_refuses() {
        assert_eq!(path("<a@b@c>", true), Err(AddressError::InvalidLocalPart));
        assert_eq!(
            path("<\"quoted local\"@b.test>", true),
            Err(AddressError::InvalidLocalPart)
        );
        assert_eq!(path("bad", true), Err(AddressError::MissingOpenBracket));
        assert_eq!(
            path("<a@b.test", true),
            Err(AddressError::MissingCloseBracket)
        );
        assert_eq!(
            path("<a..b@c.test>", true),
            Err(AddressError::InvalidLocalPart)
        );
        assert_eq!(
            path("<.a@c.test>", true),
            Err(AddressError::InvalidLocalPart)
        );
        assert_eq!(
            path("<a.@c.test>", true),
            Err(AddressError::InvalidLocalPart)
        );
        assert_eq!(path("<a@c.test.>", true), Err(AddressError::InvalidDomain));
        assert_eq!(path("<a@-c.test>", true), Err(AddressError::InvalidDomain));
        assert_eq!(path("<a@c..test>", true), Err(AddressError::InvalidDomain));
        assert_eq!(
            path("<a@[300.0.0.1]>", true),
            Err(AddressError::InvalidDomain)
        );
        assert_eq!(
            path("<a@[1.2.3.4]x>", true),
            Err(AddressError::InvalidDomain)
        );
        assert_eq!(
            path("<a@exa mple.test>", true),
            Err(AddressError::InvalidDomain)
        );
        assert_eq!(
            path("<a@ex\\097mple.test>", true),
            Err(AddressError::InvalidDomain)
        );
        assert_eq!(
            path("<a@\u{e9}.test>", true),
            Err(AddressError::InvalidDomain)
        );
    }

    #[test]
    fn cve_2020_7247_sender_without_domain_is_still_validated() {
        assert_eq!(
            path("<;sleep 66;>", true),
            Err(AddressError::InvalidLocalPart)
        );
        assert_eq!(
            path(
                "<;for i in 0 1 2 3 4 5 6 7 8 9 a b c d;do read r;done;sh;exit 0;>",
                true
            ),
            Err(AddressError::InvalidLocalPart)
        );
        assert!(
            path("<`id`>", true).is_ok(),
            "backquote is atext, as in OpenSMTPD"
        );
        assert_eq!(path("<a b>", true), Err(AddressError::InvalidLocalPart));
        assert_eq!(path("<a|b;c>", true), Err(AddressError::InvalidLocalPart));
    }

    #[test]
    fn length_limits() {
        let user255 = "u".repeat(255);
        let user256 = "u".repeat(256);
        assert!(path(&format!("<{user255}@b.test>"), true).is_ok());
        assert_eq!(
            path(&format!("<{user256}@b.test>"), true),
            Err(AddressError::TooLong)
        );
        let label63 = "l".repeat(63);
        let label64 = "l".repeat(64);
        assert!(path(&format!("<a@{label63}.test>"), true).is_ok());
        assert_eq!(
            path(&format!("<a@{label64}.test>"), true),
            Err(AddressError::InvalidDomain)
        );
        // 253 characters of host name is the most DNS can carry.
        let long = [label63.as_str(); 4].join(".");
        assert_eq!(long.len(), 255);
        assert!(!valid_domainpart(&long));
        assert!(valid_domainpart(long[..253].trim_end_matches('.')));
    }

    #[test]
    fn params_follow_the_closing_bracket() {
        let p = parse_path("<a@b.test>   SIZE=10 BODY=8BITMIME", true, "h").unwrap();
        assert_eq!(p.params, "SIZE=10 BODY=8BITMIME");
        let p = parse_path("<a@b.test>", true, "h").unwrap();
        assert_eq!(p.params, "");
    }

    #[test]
    fn domainpart_rules_for_helo() {
        assert!(valid_domainpart("client.example"));
        assert!(valid_domainpart("[127.0.0.1]"));
        assert!(valid_domainpart("[::1]"));
        assert!(valid_domainpart("1.2.3.4"));
        assert!(valid_domainpart("under_score.test"));
        assert!(
            valid_domainpart("a.-b.test"),
            "only the first label may not start with '-'"
        );
        assert!(!valid_domainpart(""));
        assert!(!valid_domainpart("a b"));
        assert!(!valid_domainpart("[127.0.0.1"));
        assert!(!valid_domainpart("[]"));
        assert!(!valid_domainpart("[127.0.0.1]]"));
        assert!(!valid_domainpart("."));
    }

    #[test]
    fn from_text_splits_at_last_at_sign() {
        assert_eq!(
            Mailaddr::from_text("a@b@c"),
            Some(Mailaddr::new("a@b", "c"))
        );
        assert_eq!(Mailaddr::from_text("@dom"), Some(Mailaddr::new("", "dom")));
        assert_eq!(Mailaddr::from_text("user"), Some(Mailaddr::new("user", "")));
        assert_eq!(Mailaddr::from_text(&"x".repeat(300)), None);
    }

    #[test]
    fn display_and_lowercase() {
        let a = Mailaddr::new("Foo", "Example.ORG");
        assert_eq!(a.to_string(), "Foo@Example.ORG");
        assert_eq!(a.lowercased().to_string(), "foo@example.org");
        assert!(a.domain_is("example.org"));
        assert_eq!(path_text(None), "<>");
        assert_eq!(path_text(Some(&a)), "<Foo@Example.ORG>");
    }
}
