//! The envelope file: OpenSMTPD's version 3 text format, written and read
//! back without loss.
//!
//! ```text
//! version: 3
//! dispatcher: stuck
//! type: mta
//! smtpname: HOSTNAME
//! helo: c.test
//! hostname: fcrdns.example.test
//! sockaddr: 127.0.0.5
//! sender: sender@example.net
//! rcpt: x@queue.test
//! dest: x@queue.test
//! ctime: 1795333122
//! last-try: 0
//! last-bounce: 0
//! ttl: 0
//! retry: 0
//! dsn-notify: 0
//! ```
//!
//! One `key: value` per line, keys in OpenSMTPD's order, empty values
//! omitted, times in Unix seconds, the null sender written `@`. The parser
//! accepts what OpenSMTPD's `envelope_load_buffer` accepts (keys in any
//! case, blanks around `:`, flags separated by space, comma or `|`) and is
//! stricter where OpenSMTPD is lax: a duplicate key, an empty line, a CR or
//! NUL byte, invalid UTF-8 or a file over [`MAX_ENVELOPE_FILE`] bytes are
//! errors too. Unknown keys and other versions are rejected, as in
//! OpenSMTPD. Errors are values, never panics: the file comes from disk and
//! may be truncated or damaged.
//!
//! The writer refuses any value containing a newline, CR or NUL (the
//! injection behind CVE-2020-8794) or starting with a blank (which the
//! parser would strip), so what is written always reads back identically.
//!
//! Additions to OpenSMTPD's keys (only written when non-empty, so a plain
//! envelope is byte-identical to OpenSMTPD's):
//! * `listener`: the name of the listener that accepted the message;
//! * `mda-path`: a file target from an alias or `.forward`;
//! * `mta-relay`: the relay host URL of the action (the key of OpenSMTPD's
//!   older envelope versions);
//! * flags are written space-separated as OpenSMTPD's writer does (the spec
//!   calls them a comma list; both are read).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use super::envelope::{
    BounceKind, BounceTarget, ClientAddr, Dsn, DsnNotify, DsnRet, Envelope, EnvelopeFlags,
    MdaTarget, MtaTarget, StatusCode, Target,
};
use super::id::Evpid;

/// The envelope format version written and accepted.
pub const ENVELOPE_VERSION: u32 = 3;

/// Largest envelope file read; real ones are well under 2 KB.
pub const MAX_ENVELOPE_FILE: usize = 64 * 1024;

/// Why an envelope file was rejected (or could not be written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeFormatError {
    /// 1-based line number, 0 when the problem is not on one line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl EnvelopeFormatError {
    fn at(line: usize, message: impl Into<String>) -> Self {
        EnvelopeFormatError {
            line,
            message: message.into(),
        }
    }

    fn whole(message: impl Into<String>) -> Self {
        Self::at(0, message)
    }
}

impl fmt::Display for EnvelopeFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "line {}: {}", self.line, self.message)
        } else {
            f.write_str(&self.message)
        }
    }
}

impl std::error::Error for EnvelopeFormatError {}

/// Every key the parser knows; anything else is an error.
const KNOWN_KEYS: &[&str] = &[
    "version",
    "dispatcher",
    "tag",
    "listener",
    "type",
    "smtpname",
    "helo",
    "hostname",
    "username",
    "errorline",
    "sockaddr",
    "sender",
    "rcpt",
    "dest",
    "ctime",
    "last-try",
    "last-bounce",
    "ttl",
    "retry",
    "flags",
    "dsn-notify",
    "dsn-ret",
    "dsn-envid",
    "dsn-orcpt",
    "esc-class",
    "esc-code",
    "mda-exec",
    "mda-subaddress",
    "mda-user",
    "mda-path",
    "mta-relay",
    "bounce-ttl",
    "bounce-delay",
    "bounce-type",
];

/// Keys that belong to one delivery type only.
const MDA_KEYS: &[&str] = &["mda-exec", "mda-subaddress", "mda-user", "mda-path"];
const MTA_KEYS: &[&str] = &["mta-relay"];
const BOUNCE_KEYS: &[&str] = &["bounce-ttl", "bounce-delay", "bounce-type"];

/// Accumulates `key: value` lines, refusing values that would not read back.
struct Writer {
    out: String,
}

impl Writer {
    fn field(&mut self, key: &str, value: &str) -> Result<(), EnvelopeFormatError> {
        if value.is_empty() {
            return Ok(());
        }
        if value.contains(['\n', '\r', '\0']) {
            return Err(EnvelopeFormatError::whole(format!(
                "field {key} contains a line break or NUL"
            )));
        }
        if value.starts_with([' ', '\t']) {
            return Err(EnvelopeFormatError::whole(format!(
                "field {key} starts with a blank"
            )));
        }
        self.out.push_str(key);
        self.out.push_str(": ");
        self.out.push_str(value);
        self.out.push('\n');
        Ok(())
    }

    fn number(&mut self, key: &str, value: u64) -> Result<(), EnvelopeFormatError> {
        self.field(key, &value.to_string())
    }
}

fn flags_text(flags: EnvelopeFlags) -> String {
    let mut words = Vec::new();
    if flags.authenticated {
        words.push("authenticated");
    }
    if flags.bounce {
        words.push("bounce");
    }
    if flags.internal {
        words.push("internal");
    }
    words.join(" ")
}

impl Envelope {
    /// The envelope as the text stored in its spool file.
    pub fn to_file_text(&self) -> Result<String, EnvelopeFormatError> {
        if self.rcpt.is_empty() || self.dest.is_empty() {
            return Err(EnvelopeFormatError::whole(
                "recipient and destination must not be empty",
            ));
        }
        if self.sender == "@" {
            return Err(EnvelopeFormatError::whole(
                "sender \"@\" is how the null sender is written; use an empty sender",
            ));
        }
        let mut w = Writer {
            out: String::with_capacity(512),
        };
        w.number("version", ENVELOPE_VERSION.into())?;
        w.field("dispatcher", &self.dispatcher)?;
        w.field("tag", &self.tag)?;
        w.field("listener", &self.listener)?;
        w.field("type", self.kind().as_str())?;
        w.field("smtpname", &self.smtpname)?;
        w.field("helo", &self.helo)?;
        w.field("hostname", &self.hostname)?;
        w.field("username", &self.auth_user)?;
        w.field("errorline", &self.errorline)?;
        w.field("sockaddr", &ClientAddr::text(self.client))?;
        w.field(
            "sender",
            if self.sender.is_empty() {
                "@"
            } else {
                &self.sender
            },
        )?;
        w.field("rcpt", &self.rcpt)?;
        w.field("dest", &self.dest)?;
        w.number("ctime", self.ctime)?;
        w.number("last-try", self.last_try)?;
        w.number("last-bounce", self.last_bounce)?;
        w.number("ttl", self.ttl)?;
        w.number("retry", self.retry.into())?;
        w.field("flags", &flags_text(self.flags))?;
        w.number("dsn-notify", self.dsn.notify.0.into())?;
        w.field(
            "dsn-ret",
            match self.dsn.ret {
                Some(DsnRet::Headers) => "HDRS",
                Some(DsnRet::Full) => "FULL",
                None => "",
            },
        )?;
        w.field("dsn-envid", &self.dsn.envid)?;
        w.field("dsn-orcpt", &self.dsn.orcpt)?;
        if let Some(status) = self.status.filter(|s| s.class != 0) {
            w.number("esc-class", status.class.into())?;
            w.number("esc-code", status.code.into())?;
        }
        match &self.target {
            Target::Mda(mda) => {
                w.field("mda-exec", &mda.exec)?;
                w.field("mda-subaddress", &mda.subaddress)?;
                w.field("mda-user", &mda.user)?;
                w.field("mda-path", &mda.path)?;
            }
            Target::Mta(mta) => {
                w.field("mta-relay", &mta.relay)?;
            }
            Target::Bounce(b) => {
                // OpenSMTPD writes these for delay warnings only.
                if b.kind == BounceKind::Delayed || b.ttl != 0 {
                    w.number("bounce-ttl", b.ttl)?;
                }
                if b.kind == BounceKind::Delayed || b.delay != 0 {
                    w.number("bounce-delay", b.delay)?;
                }
                w.field("bounce-type", b.kind.as_str())?;
            }
        }
        Ok(w.out)
    }

    /// Reads an envelope file; `id` comes from the file name, since the
    /// format does not carry it.
    pub fn from_file_text(id: Evpid, bytes: &[u8]) -> Result<Envelope, EnvelopeFormatError> {
        if bytes.len() > MAX_ENVELOPE_FILE {
            return Err(EnvelopeFormatError::whole(format!(
                "file is {} bytes, more than the {MAX_ENVELOPE_FILE} allowed",
                bytes.len()
            )));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| EnvelopeFormatError::whole(format!("not UTF-8: {e}")))?;
        let fields = split_fields(text)?;
        build(id, &fields)
    }
}

/// A parsed line: the value and the line it came from (for messages).
struct Field<'a> {
    value: &'a str,
    line: usize,
}

fn split_fields(text: &str) -> Result<HashMap<String, Field<'_>>, EnvelopeFormatError> {
    let mut fields: HashMap<String, Field<'_>> = HashMap::new();
    let body = text.strip_suffix('\n').unwrap_or(text);
    if body.is_empty() {
        return Err(EnvelopeFormatError::whole("file is empty"));
    }
    for (n, line) in body.split('\n').enumerate() {
        let lineno = n + 1;
        if line.is_empty() {
            return Err(EnvelopeFormatError::at(lineno, "empty line"));
        }
        if line.contains(['\r', '\0']) {
            return Err(EnvelopeFormatError::at(lineno, "CR or NUL byte"));
        }
        let key_len = line
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-')
            .count();
        if key_len == 0 {
            return Err(EnvelopeFormatError::at(
                lineno,
                "line does not start with a key",
            ));
        }
        let (key, rest) = line.split_at(key_len);
        let Some(value) = rest.trim_start_matches([' ', '\t']).strip_prefix(':') else {
            return Err(EnvelopeFormatError::at(
                lineno,
                format!("no ':' after key \"{key}\""),
            ));
        };
        let value = value.trim_start_matches([' ', '\t']);
        let key = key.to_ascii_lowercase();
        if !KNOWN_KEYS.contains(&key.as_str()) {
            return Err(EnvelopeFormatError::at(
                lineno,
                format!("unknown key \"{key}\""),
            ));
        }
        if fields.contains_key(&key) {
            return Err(EnvelopeFormatError::at(
                lineno,
                format!("duplicate key \"{key}\""),
            ));
        }
        fields.insert(
            key,
            Field {
                value,
                line: lineno,
            },
        );
    }
    Ok(fields)
}

/// Typed access to the parsed fields.
struct Fields<'a, 'b> {
    map: &'b HashMap<String, Field<'a>>,
}

impl Fields<'_, '_> {
    fn text(&self, key: &str) -> String {
        self.map
            .get(key)
            .map(|f| f.value.to_string())
            .unwrap_or_default()
    }

    fn required(&self, key: &str) -> Result<&str, EnvelopeFormatError> {
        match self.map.get(key) {
            Some(f) if !f.value.is_empty() => Ok(f.value),
            Some(f) => Err(EnvelopeFormatError::at(f.line, format!("{key} is empty"))),
            None => Err(EnvelopeFormatError::whole(format!("missing key \"{key}\""))),
        }
    }

    /// A decimal number in `0..=max`, 0 when absent.
    fn number(&self, key: &str, max: u64) -> Result<u64, EnvelopeFormatError> {
        let Some(f) = self.map.get(key) else {
            return Ok(0);
        };
        let bad =
            || EnvelopeFormatError::at(f.line, format!("{key}: invalid number \"{}\"", f.value));
        if f.value.is_empty() || f.value.len() > 20 || !f.value.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let v: u64 = f.value.parse().map_err(|_| bad())?;
        if v > max {
            return Err(EnvelopeFormatError::at(
                f.line,
                format!("{key}: {v} is out of range (at most {max})"),
            ));
        }
        Ok(v)
    }

    fn time(&self, key: &str) -> Result<u64, EnvelopeFormatError> {
        self.number(key, i64::MAX as u64)
    }

    fn line(&self, key: &str) -> usize {
        self.map.get(key).map(|f| f.line).unwrap_or(0)
    }
}

fn parse_sockaddr(text: &str, line: usize) -> Result<ClientAddr, EnvelopeFormatError> {
    if text == "local" {
        return Ok(ClientAddr::Local);
    }
    let bad = || EnvelopeFormatError::at(line, format!("sockaddr: invalid address \"{text}\""));
    let v6 = |t: &str| -> Result<ClientAddr, EnvelopeFormatError> {
        let t = if t.len() >= 5 && t[..5].eq_ignore_ascii_case("IPv6:") {
            &t[5..]
        } else {
            t
        };
        t.parse::<Ipv6Addr>()
            .map(|a| ClientAddr::Ip(IpAddr::V6(a)))
            .map_err(|_| bad())
    };
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return v6(inner);
    }
    if text.len() >= 5 && text.is_char_boundary(5) && text[..5].eq_ignore_ascii_case("IPv6:") {
        return v6(text);
    }
    text.parse::<std::net::Ipv4Addr>()
        .map(|a| ClientAddr::Ip(IpAddr::V4(a)))
        .map_err(|_| bad())
}

fn parse_flags(text: &str, line: usize) -> Result<EnvelopeFlags, EnvelopeFormatError> {
    let mut flags = EnvelopeFlags::default();
    for word in text.split([' ', ',', '|']).filter(|w| !w.is_empty()) {
        match word.to_ascii_lowercase().as_str() {
            "authenticated" => flags.authenticated = true,
            "bounce" => flags.bounce = true,
            "internal" => flags.internal = true,
            "enqueued" => {}
            other => {
                return Err(EnvelopeFormatError::at(
                    line,
                    format!("unknown flag \"{other}\""),
                ));
            }
        }
    }
    Ok(flags)
}

fn build(id: Evpid, map: &HashMap<String, Field<'_>>) -> Result<Envelope, EnvelopeFormatError> {
    let f = Fields { map };

    let version = f.required("version")?;
    if version != ENVELOPE_VERSION.to_string() {
        return Err(EnvelopeFormatError::at(
            f.line("version"),
            format!("unsupported envelope version \"{version}\" (expected {ENVELOPE_VERSION})"),
        ));
    }

    let kind = f.required("type")?.to_ascii_lowercase();
    let (allowed, target): (&[&str], Target) = match kind.as_str() {
        "mda" => (
            MDA_KEYS,
            Target::Mda(MdaTarget {
                user: f.text("mda-user"),
                exec: f.text("mda-exec"),
                subaddress: f.text("mda-subaddress"),
                path: f.text("mda-path"),
            }),
        ),
        "mta" => (
            MTA_KEYS,
            Target::Mta(MtaTarget {
                relay: f.text("mta-relay"),
            }),
        ),
        "bounce" => {
            let kind = match map.get("bounce-type") {
                None => BounceKind::Failed,
                Some(b) => match b.value.to_ascii_lowercase().as_str() {
                    "failed" | "error" => BounceKind::Failed,
                    "delayed" | "warn" => BounceKind::Delayed,
                    "delivered" | "dsn" => BounceKind::Delivered,
                    other => {
                        return Err(EnvelopeFormatError::at(
                            b.line,
                            format!("unknown bounce-type \"{other}\""),
                        ));
                    }
                },
            };
            (
                BOUNCE_KEYS,
                Target::Bounce(BounceTarget {
                    kind,
                    delay: f.time("bounce-delay")?,
                    ttl: f.time("bounce-ttl")?,
                }),
            )
        }
        other => {
            return Err(EnvelopeFormatError::at(
                f.line("type"),
                format!("unknown type \"{other}\""),
            ));
        }
    };
    for key in MDA_KEYS.iter().chain(MTA_KEYS).chain(BOUNCE_KEYS) {
        if map.contains_key(*key) && !allowed.contains(key) {
            return Err(EnvelopeFormatError::at(
                f.line(key),
                format!("key \"{key}\" does not belong in a {kind} envelope"),
            ));
        }
    }

    let sender = match f.required("sender")? {
        "@" => String::new(),
        s => s.to_string(),
    };
    let client = match map.get("sockaddr") {
        Some(s) => parse_sockaddr(s.value, s.line)?,
        None => ClientAddr::Local,
    };
    let flags = match map.get("flags") {
        Some(s) => parse_flags(s.value, s.line)?,
        None => EnvelopeFlags::default(),
    };
    let ret = match map.get("dsn-ret") {
        None => None,
        Some(r) if r.value.is_empty() => None,
        Some(r) if r.value.eq_ignore_ascii_case("HDRS") => Some(DsnRet::Headers),
        Some(r) if r.value.eq_ignore_ascii_case("FULL") => Some(DsnRet::Full),
        Some(r) => {
            return Err(EnvelopeFormatError::at(
                r.line,
                format!("dsn-ret: expected HDRS or FULL, got \"{}\"", r.value),
            ));
        }
    };
    let class = f.number("esc-class", u8::MAX.into())? as u8;
    let code = f.number("esc-code", u8::MAX.into())? as u8;

    Ok(Envelope {
        id,
        dispatcher: f.text("dispatcher"),
        tag: f.text("tag"),
        listener: f.text("listener"),
        smtpname: f.text("smtpname"),
        helo: f.text("helo"),
        hostname: f.text("hostname"),
        client,
        auth_user: f.text("username"),
        sender,
        rcpt: f.required("rcpt")?.to_string(),
        dest: f.required("dest")?.to_string(),
        ctime: f.time("ctime")?,
        last_try: f.time("last-try")?,
        last_bounce: f.time("last-bounce")?,
        ttl: f.time("ttl")?,
        retry: f.number("retry", u16::MAX.into())? as u16,
        flags,
        dsn: Dsn {
            notify: DsnNotify(f.number("dsn-notify", u8::MAX.into())? as u8),
            ret,
            envid: f.text("dsn-envid"),
            orcpt: f.text("dsn-orcpt"),
        },
        errorline: f.text("errorline"),
        status: (class != 0).then_some(StatusCode { class, code }),
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::id::Msgid;
    use std::net::Ipv4Addr;

    /// The fresh envelope observed from OpenSMTPD 6.8 (§10.3), verbatim.
    const OBSERVED: &str = "version: 3
dispatcher: stuck
type: mta
smtpname: HOSTNAME
helo: c.test
hostname: fcrdns.example.test
sockaddr: 127.0.0.5
sender: sender@example.net
rcpt: x@queue.test
dest: x@queue.test
ctime: 1795333122
last-try: 0
last-bounce: 0
ttl: 0
retry: 0
dsn-notify: 0
";

    fn id() -> Evpid {
        Evpid::from_parts(Msgid::new(0xc70b0203).unwrap(), 0x1d875f5a).unwrap()
    }

    fn observed_envelope() -> Envelope {
        let mut e = Envelope::new(
            id(),
            Target::Mta(MtaTarget::default()),
            "sender@example.net",
            "x@queue.test",
            "x@queue.test",
            1795333122,
        );
        e.dispatcher = "stuck".into();
        e.smtpname = "HOSTNAME".into();
        e.helo = "c.test".into();
        e.hostname = "fcrdns.example.test".into();
        e.client = ClientAddr::Ip(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)));
        e
    }

    fn full_envelope(target: Target) -> Envelope {
        let mut e = observed_envelope();
        e.target = target;
        e.tag = "TAGGED".into();
        e.listener = "lo0".into();
        e.auth_user = "joe".into();
        e.errorline = "Network error on destination MXs  ".into();
        e.client = ClientAddr::Ip("2001:db8::1".parse().unwrap());
        e.sender = String::new();
        e.rcpt = "List@Example.org".into();
        e.dest = "joe@example.org".into();
        e.last_try = 1795333200;
        e.last_bounce = 1795347522;
        e.ttl = 600;
        e.retry = 7;
        e.flags = EnvelopeFlags {
            authenticated: true,
            bounce: true,
            internal: true,
        };
        e.dsn = Dsn {
            notify: DsnNotify(DsnNotify::SUCCESS | DsnNotify::DELAY),
            ret: Some(DsnRet::Headers),
            envid: "QQ314159".into(),
            orcpt: "rfc822;list@example.org".into(),
        };
        e.status = Some(StatusCode { class: 4, code: 47 });
        e
    }

    #[test]
    fn writes_the_observed_envelope_byte_for_byte() {
        assert_eq!(observed_envelope().to_file_text().unwrap(), OBSERVED);
    }

    #[test]
    fn reads_the_observed_envelope() {
        let e = Envelope::from_file_text(id(), OBSERVED.as_bytes()).unwrap();
        assert_eq!(e, observed_envelope());
    }

    #[test]
    fn round_trips_every_field_of_every_type() {
        let targets = [
            Target::Mda(MdaTarget {
                user: "joe".into(),
                exec: "/usr/bin/procmail -f -".into(),
                subaddress: "lists".into(),
                path: "/var/mail/archive".into(),
            }),
            Target::Mda(MdaTarget::default()),
            Target::Mta(MtaTarget {
                relay: "smtps://mx.example.net:465".into(),
            }),
            Target::Bounce(BounceTarget {
                kind: BounceKind::Delayed,
                delay: 14400,
                ttl: 345600,
            }),
            Target::Bounce(BounceTarget {
                kind: BounceKind::Failed,
                delay: 0,
                ttl: 0,
            }),
            Target::Bounce(BounceTarget {
                kind: BounceKind::Delivered,
                delay: 0,
                ttl: 0,
            }),
        ];
        for t in targets {
            let e = full_envelope(t);
            let text = e.to_file_text().unwrap();
            let back = Envelope::from_file_text(e.id, text.as_bytes()).unwrap();
            assert_eq!(back, e, "file was:\n{text}");
            // Writing again gives the same bytes.
            assert_eq!(back.to_file_text().unwrap(), text);
        }
        let local = {
            let mut e = observed_envelope();
            e.client = ClientAddr::Local;
            e
        };
        let text = local.to_file_text().unwrap();
        assert!(text.contains("sockaddr: local\n"));
        assert_eq!(
            Envelope::from_file_text(local.id, text.as_bytes()).unwrap(),
            local
        );
    }

    #[test]
    fn full_envelope_text_is_in_opensmtpd_key_order() {
        let e = full_envelope(Target::Mda(MdaTarget {
            user: "joe".into(),
            exec: String::new(),
            subaddress: "lists".into(),
            path: String::new(),
        }));
        let text = e.to_file_text().unwrap();
        let keys: Vec<&str> = text.lines().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "version",
                "dispatcher",
                "tag",
                "listener",
                "type",
                "smtpname",
                "helo",
                "hostname",
                "username",
                "errorline",
                "sockaddr",
                "sender",
                "rcpt",
                "dest",
                "ctime",
                "last-try",
                "last-bounce",
                "ttl",
                "retry",
                "flags",
                "dsn-notify",
                "dsn-ret",
                "dsn-envid",
                "dsn-orcpt",
                "esc-class",
                "esc-code",
                "mda-subaddress",
                "mda-user",
            ]
        );
        assert!(text.contains("sender: @\n"));
        assert!(text.contains("sockaddr: [2001:db8::1]\n"));
        assert!(text.contains("flags: authenticated bounce internal\n"));
        assert!(text.contains("esc-class: 4\nesc-code: 47\n"));
        assert!(text.contains("dsn-notify: 5\ndsn-ret: HDRS\n"));
    }

    #[test]
    fn reads_opensmtpd_variants() {
        let text = "VERSION :  3\ntype: MDA\nsender: a@b\nrcpt: c@d\ndest: c@d\n\
                    flags: authenticated,enqueued|internal\nsockaddr: IPv6:::1\n\
                    dsn-ret: full\nmda-user: joe";
        let e = Envelope::from_file_text(id(), text.as_bytes()).unwrap();
        assert_eq!(e.kind(), crate::queue::envelope::DeliveryKind::Mda);
        assert!(e.flags.authenticated && e.flags.internal && !e.flags.bounce);
        assert_eq!(e.client, ClientAddr::Ip("::1".parse().unwrap()));
        assert_eq!(e.dsn.ret, Some(DsnRet::Full));
        assert_eq!(e.ctime, 0);
        let old_bounce =
            "version: 3\ntype: bounce\nsender: a@b\nrcpt: c@d\ndest: c@d\nbounce-type: warn\n";
        let e = Envelope::from_file_text(id(), old_bounce.as_bytes()).unwrap();
        assert!(matches!(
            e.target,
            Target::Bounce(BounceTarget {
                kind: BounceKind::Delayed,
                ..
            })
        ));
        let bracketed =
            "version: 3\ntype: mta\nsender: a@b\nrcpt: c@d\ndest: c@d\nsockaddr: [IPv6:fe80::1]\n";
        assert!(Envelope::from_file_text(id(), bracketed.as_bytes()).is_ok());
    }

    #[test]
    fn malformed_files_are_errors_not_panics() {
        let base = "version: 3\ntype: mta\nsender: a@b\nrcpt: c@d\ndest: c@d\n";
        assert!(Envelope::from_file_text(id(), base.as_bytes()).is_ok());
        let cases: &[(&str, &str)] = &[
            ("", "file is empty"),
            ("\n", "file is empty"),
            (
                "version: 2\ntype: mta\nsender: a@b\nrcpt: c@d\ndest: c@d\n",
                "unsupported envelope version",
            ),
            (
                "type: mta\nsender: a@b\nrcpt: c@d\ndest: c@d\n",
                "missing key \"version\"",
            ),
            (
                "version: 3\nsender: a@b\nrcpt: c@d\ndest: c@d\n",
                "missing key \"type\"",
            ),
            (
                "version: 3\ntype: smtp\nsender: a@b\nrcpt: c@d\ndest: c@d\n",
                "unknown type",
            ),
            (
                "version: 3\ntype: mta\nrcpt: c@d\ndest: c@d\n",
                "missing key \"sender\"",
            ),
            (
                "version: 3\ntype: mta\nsender: a@b\ndest: c@d\n",
                "missing key \"rcpt\"",
            ),
            (
                "version: 3\ntype: mta\nsender: a@b\nrcpt:\ndest: c@d\n",
                "rcpt is empty",
            ),
            (
                "version: 3\ntype: mta\nsender: a@b\nrcpt: c@d\n",
                "missing key \"dest\"",
            ),
            ("version: 3\nbogus: 1\n", "unknown key \"bogus\""),
            ("version: 3\nversion: 3\n", "duplicate key"),
            ("version: 3\n\ntype: mta\n", "empty line"),
            ("version 3\n", "no ':'"),
            (": 3\n", "does not start with a key"),
            ("version: 3\r\n", "CR or NUL"),
            ("version: 3\ntype: mta\nsender: a\0@b\n", "CR or NUL"),
            (&format!("{base}ctime: -1\n"), "ctime: invalid number"),
            (&format!("{base}ctime: 12x\n"), "ctime: invalid number"),
            (
                &format!("{base}ctime: 99999999999999999999999\n"),
                "ctime: invalid number",
            ),
            (
                &format!("{base}ctime: 9223372036854775808\n"),
                "out of range",
            ),
            (&format!("{base}retry: 65536\n"), "out of range"),
            (&format!("{base}dsn-notify: 256\n"), "out of range"),
            (&format!("{base}flags: urgent\n"), "unknown flag"),
            (&format!("{base}sockaddr: 300.1.2.3\n"), "invalid address"),
            (&format!("{base}sockaddr: [127.0.0.1]\n"), "invalid address"),
            (&format!("{base}dsn-ret: SOME\n"), "dsn-ret"),
            (
                &format!("{base}mda-user: joe\n"),
                "does not belong in a mta envelope",
            ),
            (&format!("{base}bounce-type: failed\n"), "does not belong"),
            (
                "version: 3\ntype: bounce\nsender: a@b\nrcpt: c@d\ndest: c@d\nbounce-type: lost\n",
                "unknown bounce-type",
            ),
        ];
        for (text, want) in cases {
            let err = Envelope::from_file_text(id(), text.as_bytes())
                .expect_err(&format!("accepted {text:?}"));
            assert!(
                err.to_string().contains(want),
                "{text:?}: got \"{err}\", want \"{want}\""
            );
        }
        assert!(Envelope::from_file_text(id(), b"version: 3\ntype: mta\xff\n").is_err());
        let huge = vec![b'a'; MAX_ENVELOPE_FILE + 1];
        assert!(Envelope::from_file_text(id(), &huge).is_err());
    }

    #[test]
    fn truncated_files_never_panic() {
        let text = full_envelope(Target::Bounce(BounceTarget {
            kind: BounceKind::Delayed,
            delay: 1,
            ttl: 2,
        }))
        .to_file_text()
        .unwrap();
        for cut in 0..text.len() {
            // Any prefix either parses or is an error; none may panic.
            let _ = Envelope::from_file_text(id(), &text.as_bytes()[..cut]);
        }
    }

    #[test]
    fn writer_refuses_values_that_would_not_read_back() {
        let mut e = observed_envelope();
        e.helo = "evil\nrcpt: root@localhost".into();
        assert!(e.to_file_text().unwrap_err().message.contains("helo"));
        let mut e = observed_envelope();
        e.dest = "a@b\r".into();
        assert!(e.to_file_text().is_err());
        let mut e = observed_envelope();
        e.tag = " leading".into();
        assert!(e.to_file_text().is_err());
        let mut e = observed_envelope();
        e.sender = "@".into();
        assert!(e.to_file_text().is_err());
        let mut e = observed_envelope();
        e.rcpt.clear();
        assert!(e.to_file_text().is_err());
    }
}
