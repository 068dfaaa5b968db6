//! The command-line parser: one client line → a verb and its argument text, then typed parsers
//! for the arguments of MAIL FROM, RCPT TO (ESMTP parameters) and AUTH.
//!
//! It is split in two on purpose. OpenSMTPD checks a command's *state* before its *syntax*
//! for some verbs (MAIL FROM outside a transaction is `503` even when its address is garbage)
//! and the other way round for others (`DATA x` is `500 ... does not accept arguments` in any
//! state). To give the same answers the session needs the verb first and calls the typed
//! parsers itself, at the point where OpenSMTPD would.
//!
//! Verb splitting follows `smtp_command`: a line starting (case-insensitively) with
//! `mail from:` or `rcpt to:` splits at the `:`, anything else at the first space; blanks after
//! the separator are skipped. So `MAIL  FROM:<a>`, `MAIL FROM <a>` and `MAIL` are all unknown
//! commands, and `mail from: <a@b>` is fine. An argument that is present but empty (`NOOP `)
//! is still an argument.

use super::address::{Mailaddr, valid_domainpart, valid_localpart};
use super::reply::Reply;

/// The commands OpenSMTPD knows. Everything else (VRFY, EXPN, ETRN, TURN, BDAT, ...) is
/// [`Verb::Unknown`] and gets `500 5.5.1 Invalid command: Command unrecognized`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// `HELO domain`
    Helo,
    /// `EHLO domain`
    Ehlo,
    /// `STARTTLS`
    StartTls,
    /// `AUTH mechanism [initial-response]`
    Auth,
    /// `MAIL FROM:<path> [params]`
    MailFrom,
    /// `RCPT TO:<path> [params]`
    RcptTo,
    /// `DATA`
    Data,
    /// `RSET`
    Rset,
    /// `QUIT`
    Quit,
    /// `NOOP`
    Noop,
    /// `HELP`
    Help,
    /// `WIZ` (answered with a joke, as OpenSMTPD does)
    Wiz,
    /// Anything else.
    Unknown,
}

impl Verb {
    /// The verb's canonical spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Helo => "HELO",
            Verb::Ehlo => "EHLO",
            Verb::StartTls => "STARTTLS",
            Verb::Auth => "AUTH",
            Verb::MailFrom => "MAIL FROM",
            Verb::RcptTo => "RCPT TO",
            Verb::Data => "DATA",
            Verb::Rset => "RSET",
            Verb::Quit => "QUIT",
            Verb::Noop => "NOOP",
            Verb::Help => "HELP",
            Verb::Wiz => "WIZ",
            Verb::Unknown => "",
        }
    }
}

const VERBS: [Verb; 12] = [
    Verb::Helo,
    Verb::Ehlo,
    Verb::StartTls,
    Verb::Auth,
    Verb::MailFrom,
    Verb::RcptTo,
    Verb::Data,
    Verb::Rset,
    Verb::Quit,
    Verb::Noop,
    Verb::Help,
    Verb::Wiz,
];

/// One command line split into verb and argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine {
    /// Which command.
    pub verb: Verb,
    /// The text after the separator with leading blanks skipped; `None` when the line had no
    /// separator at all (`NOOP` vs `NOOP `).
    pub args: Option<String>,
}

fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Splits a command line (CR already stripped) into verb and argument.
pub fn parse_command(line: &str) -> CommandLine {
    let separator = if starts_with_ignore_case(line, "mail from:")
        || starts_with_ignore_case(line, "rcpt to:")
    {
        line.find(':')
    } else {
        line.find(' ')
    };
    let (word, args) = match separator {
        Some(i) => (
            &line[..i],
            Some(line[i + 1..].trim_start_matches(is_c_space).to_string()),
        ),
        None => (line, None),
    };
    let verb = VERBS
        .iter()
        .copied()
        .find(|v| word.eq_ignore_ascii_case(v.as_str()))
        .unwrap_or(Verb::Unknown);
    CommandLine { verb, args }
}

/// The body type a sender declared with `BODY=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    /// `BODY=7BIT`
    SevenBit,
    /// `BODY=8BITMIME`
    EightBitMime,
}

/// What DSN should return on failure (`RET=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DsnRet {
    /// `RET=HDRS`: headers only.
    Headers,
    /// `RET=FULL`: the whole message.
    Full,
}

/// ESMTP parameters of MAIL FROM that OpenSMTPD keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=` as given; OpenSMTPD accepts and ignores it (no size check at MAIL time).
    pub size: Option<String>,
    /// `BODY=`.
    pub body: Option<BodyType>,
    /// `AUTH=` as given; ignored.
    pub auth: Option<String>,
    /// `RET=` (DSN listeners only; unknown values are silently ignored).
    pub ret: Option<DsnRet>,
    /// `ENVID=` (DSN listeners only; at most 100 characters).
    pub envid: Option<String>,
}

/// `NOTIFY=` of RCPT TO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notify {
    /// `SUCCESS`
    pub success: bool,
    /// `FAILURE`
    pub failure: bool,
    /// `DELAY`
    pub delay: bool,
    /// `NEVER`
    pub never: bool,
}

/// ESMTP parameters of RCPT TO that OpenSMTPD keeps (DSN listeners only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// `NOTIFY=` words; unknown words are ignored.
    pub notify: Option<Notify>,
    /// `ORCPT=[rfc822;]addr`, split like any table address.
    pub orcpt: Option<Mailaddr>,
}

const ENVID_MAX: usize = 100;

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    starts_with_ignore_case(s, prefix).then(|| &s[prefix.len()..])
}

/// Parses the parameters after MAIL FROM's path (space separated, names case-insensitive).
/// `dsn` says whether the listener advertises DSN; without it RET and ENVID are unknown.
/// The error is the exact reply; OpenSMTPD then drops the transaction. SMTPUTF8 is not
/// advertised, so it is an unsupported option like any other.
pub fn parse_mail_params(text: &str, dsn: bool) -> Result<MailParams, Reply> {
    let mut params = MailParams::default();
    for opt in text.split(' ').filter(|o| !o.is_empty()) {
        if let Some(v) = strip_prefix_ignore_case(opt, "AUTH=") {
            params.auth = Some(v.to_string());
        } else if let Some(v) = strip_prefix_ignore_case(opt, "SIZE=") {
            params.size = Some(v.to_string());
        } else if opt.eq_ignore_ascii_case("BODY=7BIT") {
            params.body = Some(BodyType::SevenBit);
        } else if opt.eq_ignore_ascii_case("BODY=8BITMIME") {
            params.body = Some(BodyType::EightBitMime);
        } else if let Some(v) = strip_prefix_ignore_case(opt, "RET=").filter(|_| dsn) {
            if v.eq_ignore_ascii_case("HDRS") {
                params.ret = Some(DsnRet::Headers);
            } else if v.eq_ignore_ascii_case("FULL") {
                params.ret = Some(DsnRet::Full);
            }
        } else if let Some(v) = strip_prefix_ignore_case(opt, "ENVID=").filter(|_| dsn) {
            if v.len() > ENVID_MAX {
                return Err(Reply::option_too_large(v));
            }
            params.envid = Some(v.to_string());
        } else {
            return Err(Reply::unsupported_mail_option(opt));
        }
    }
    Ok(params)
}

/// Parses the parameters after RCPT TO's path. Without DSN every parameter is unsupported.
/// NOTIFY words are a comma list; NEVER with anything else is refused. ORCPT's address must
/// have a valid local part and, if it has one, a valid domain. Each RCPT's parameters stand
/// alone (OpenSMTPD 6.8 lets NOTIFY flags leak from one RCPT into the next; we do not).
pub fn parse_rcpt_params(text: &str, dsn: bool) -> Result<RcptParams, Reply> {
    let mut params = RcptParams::default();
    for opt in text.split(' ').filter(|o| !o.is_empty()) {
        if let Some(v) = strip_prefix_ignore_case(opt, "NOTIFY=").filter(|_| dsn) {
            let mut notify = params.notify.unwrap_or_default();
            for word in v.split(',') {
                if word.eq_ignore_ascii_case("SUCCESS") {
                    notify.success = true;
                } else if word.eq_ignore_ascii_case("FAILURE") {
                    notify.failure = true;
                } else if word.eq_ignore_ascii_case("DELAY") {
                    notify.delay = true;
                } else if word.eq_ignore_ascii_case("NEVER") {
                    notify.never = true;
                }
            }
            if notify.never && (notify.success || notify.failure || notify.delay) {
                return Err(Reply::notify_never_combined());
            }
            params.notify = Some(notify);
        } else if let Some(v) = strip_prefix_ignore_case(opt, "ORCPT=").filter(|_| dsn) {
            let v = strip_prefix_ignore_case(v, "rfc822;").unwrap_or(v);
            let addr = Mailaddr::from_text(v)
                .filter(|a| valid_localpart(&a.user))
                .filter(|a| a.domain.is_empty() || valid_domainpart(&a.domain))
                .ok_or_else(Reply::orcpt_syntax_error)?;
            params.orcpt = Some(addr);
        } else {
            return Err(Reply::unsupported_rcpt_option(opt));
        }
    }
    Ok(params)
}

/// Entry point for a fuzzer: runs one arbitrary line through every parser of this module and
/// of the address and AUTH decoders. It must return without panicking for any input.
pub fn fuzz_command_line(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    let cmd = parse_command(&line);
    let args = cmd.args.as_deref().unwrap_or("");
    for null_allowed in [true, false] {
        if let Ok(path) = super::address::parse_path(args, null_allowed, "fuzz.example") {
            let _ = parse_mail_params(path.params, true);
            let _ = parse_rcpt_params(path.params, true);
            let _ = parse_mail_params(path.params, false);
            let _ = parse_rcpt_params(path.params, false);
        }
    }
    let _ = valid_domainpart(args);
    if let super::auth::AuthRequest::Plain(Some(r)) = super::auth::parse_auth_args(args) {
        let _ = super::auth::decode_plain(&r);
    }
    let _ = super::auth::decode_login_user(args);
    let _ = super::auth::decode_login_password(args);
    let _ = Reply::parse(&line).map(|r| r.to_wire());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(line: &str) -> (Verb, Option<String>) {
        let c = parse_command(line);
        (c.verb, c.args)
    }

    fn s(text: &str) -> Option<String> {
        Some(text.to_string())
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(cmd("helo a.test"), (Verb::Helo, s("a.test")));
        assert_eq!(cmd("EhLo a.test"), (Verb::Ehlo, s("a.test")));
        assert_eq!(cmd("starttls"), (Verb::StartTls, None));
        assert_eq!(cmd("auth PLAIN x"), (Verb::Auth, s("PLAIN x")));
        assert_eq!(cmd("Mail From:<a@b>"), (Verb::MailFrom, s("<a@b>")));
        assert_eq!(cmd("rcpt to:<a@b>"), (Verb::RcptTo, s("<a@b>")));
        assert_eq!(cmd("data"), (Verb::Data, None));
        assert_eq!(cmd("RSET"), (Verb::Rset, None));
        assert_eq!(cmd("quit"), (Verb::Quit, None));
        assert_eq!(cmd("noop"), (Verb::Noop, None));
        assert_eq!(cmd("help"), (Verb::Help, None));
        assert_eq!(cmd("wiz"), (Verb::Wiz, None));
    }

    #[test]
    fn splitting_follows_opensmtpd() {
        // Observed: these three are "Command unrecognized".
        assert_eq!(cmd("MAIL  FROM:<a@b>").0, Verb::Unknown);
        assert_eq!(cmd("MAIL FROM <a@b>").0, Verb::Unknown);
        assert_eq!(cmd("MAIL").0, Verb::Unknown);
        // Space after the colon is fine.
        assert_eq!(cmd("mail from: <a@b>"), (Verb::MailFrom, s("<a@b>")));
        assert_eq!(
            cmd("RCPT TO:\t <a@b> NOTIFY=NEVER"),
            (Verb::RcptTo, s("<a@b> NOTIFY=NEVER"))
        );
        // An empty argument is an argument.
        assert_eq!(cmd("NOOP "), (Verb::Noop, s("")));
        assert_eq!(cmd("HELO "), (Verb::Helo, s("")));
        // A tab does not separate the verb.
        assert_eq!(cmd("HELO\tx").0, Verb::Unknown);
        for other in [
            "VRFY root",
            "EXPN list",
            "ETRN x",
            "TURN",
            "BDAT 10 LAST",
            "",
            " ",
        ] {
            assert_eq!(cmd(other).0, Verb::Unknown, "{other:?}");
        }
    }

    #[test]
    fn mail_params() {
        let p = parse_mail_params("SIZE=999999999 BODY=8BITMIME AUTH=<>", false).unwrap();
        assert_eq!(p.size.as_deref(), Some("999999999"));
        assert_eq!(p.body, Some(BodyType::EightBitMime));
        assert_eq!(
            parse_mail_params("body=7bit", false).unwrap().body,
            Some(BodyType::SevenBit)
        );
        let p = parse_mail_params("RET=HDRS ENVID=abc", true).unwrap();
        assert_eq!(
            (p.ret, p.envid.as_deref()),
            (Some(DsnRet::Headers), Some("abc"))
        );
        assert_eq!(parse_mail_params("RET=whatever", true).unwrap().ret, None);
        assert_eq!(parse_mail_params("", true), Ok(MailParams::default()));
        assert_eq!(parse_mail_params("   ", true), Ok(MailParams::default()));
    }

    #[test]
    fn mail_param_errors() {
        let err = |t: &str, dsn| parse_mail_params(t, dsn).unwrap_err().to_string();
        assert_eq!(
            err("FOO=BAR", true),
            "503 5.5.4 Invalid command arguments: Unsupported option FOO=BAR"
        );
        assert_eq!(
            err("BODY=BINARYMIME", true),
            "503 5.5.4 Invalid command arguments: Unsupported option BODY=BINARYMIME"
        );
        assert_eq!(
            err("RET=FULL", false),
            "503 5.5.4 Invalid command arguments: Unsupported option RET=FULL"
        );
        assert_eq!(
            err("SMTPUTF8", true),
            "503 5.5.4 Invalid command arguments: Unsupported option SMTPUTF8"
        );
        assert_eq!(
            err("SIZE", true),
            "503 5.5.4 Invalid command arguments: Unsupported option SIZE"
        );
        let envid = "e".repeat(101);
        assert_eq!(
            err(&format!("ENVID={envid}"), true),
            format!("503 5.5.4 Invalid command arguments: option too large, truncated: {envid}")
        );
        assert!(parse_mail_params(&format!("ENVID={}", "e".repeat(100)), true).is_ok());
    }

    #[test]
    fn rcpt_params() {
        let p =
            parse_rcpt_params("NOTIFY=SUCCESS,delay,bogus ORCPT=rfc822;x@y.test", true).unwrap();
        assert_eq!(
            p.notify,
            Some(Notify {
                success: true,
                delay: true,
                ..Notify::default()
            })
        );
        assert_eq!(p.orcpt, Some(Mailaddr::new("x", "y.test")));
        assert_eq!(
            parse_rcpt_params("ORCPT=bare", true).unwrap().orcpt,
            Some(Mailaddr::new("bare", ""))
        );
        let err = |t: &str, dsn| parse_rcpt_params(t, dsn).unwrap_err().to_string();
        assert_eq!(
            err("NOTIFY=NEVER,SUCCESS", true),
            "553 NOTIFY option NEVER cannot be combined with other options"
        );
        assert_eq!(
            err("ORCPT=rfc822;\"q\"@y", true),
            "553 ORCPT address syntax error"
        );
        assert_eq!(err("ORCPT=a@b..c", true), "553 ORCPT address syntax error");
        assert_eq!(err("XYZ=1", true), "503 Unsupported option XYZ=1");
        assert_eq!(
            err("NOTIFY=NEVER", false),
            "503 Unsupported option NOTIFY=NEVER"
        );
        assert!(
            parse_rcpt_params("NOTIFY=NEVER", true)
                .unwrap()
                .notify
                .unwrap()
                .never
        );
    }

    #[test]
    fn fuzz_entry_survives_odd_lines() {
        for line in [
            &b"MAIL FROM:<\xff@\xfe> SIZE=\x00"[..],
            b"AUTH PLAIN ====",
            b"RCPT TO:<a@b> ORCPT=rfc822;",
            b"\xe9\xe9\xe9",
            b"MAIL FROM:<",
        ] {
            fuzz_command_line(line);
        }
    }
}
