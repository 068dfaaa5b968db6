//! The reply catalogue: every reply the SMTP server originates, with OpenSMTPD 6.8's exact
//! text (spec §8.6), in one place.
//!
//! Clients, log scrapers and differential tests all compare these strings byte for byte, so
//! no other file formats a reply: the session picks a constructor here, and the only dynamic
//! replies (filter and alias texts) go through [`Reply::parse`], which enforces the same
//! shape OpenSMTPD does. [`Reply::to_wire`] never lets a CR or LF from dynamic text break a
//! line, so nothing a client sends can forge an extra reply line.

use std::fmt;

use super::address::Mailaddr;
use super::ids::MsgId;

/// Longest reply line OpenSMTPD writes (its format buffer is `LINE_MAX * 2`, NUL included).
const MAX_REPLY_LINE: usize = 4095;

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject (address, mailbox, mail system, network, protocol, content, security).
    pub subject: u16,
    /// The detail within the subject.
    pub detail: u16,
}

impl EnhancedCode {
    const fn new(class: u8, subject: u16, detail: u16) -> EnhancedCode {
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One server reply: a three-digit code, an optional enhanced code repeated on every line,
/// and one or more lines of text (several lines make a `250-` style multi-line reply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    lines: Vec<String>,
}

const OK: EnhancedCode = EnhancedCode::new(2, 0, 0);
const DEST_VALID: EnhancedCode = EnhancedCode::new(2, 1, 5);
const TEMP_SYSTEM: EnhancedCode = EnhancedCode::new(4, 3, 0);
const TEMP_TOO_MANY: EnhancedCode = EnhancedCode::new(4, 5, 3);
const PERM_OTHER: EnhancedCode = EnhancedCode::new(5, 0, 0);
const PERM_INVALID_COMMAND: EnhancedCode = EnhancedCode::new(5, 5, 1);
const PERM_SYNTAX: EnhancedCode = EnhancedCode::new(5, 5, 2);
const PERM_INVALID_ARGS: EnhancedCode = EnhancedCode::new(5, 5, 4);
const PERM_SENDER_SYNTAX: EnhancedCode = EnhancedCode::new(5, 1, 0);
const PERM_RCPT_SYNTAX: EnhancedCode = EnhancedCode::new(5, 1, 3);
const PERM_SECURITY: EnhancedCode = EnhancedCode::new(5, 7, 4);
const PERM_TOO_BIG: EnhancedCode = EnhancedCode::new(5, 3, 4);
const PERM_LOOP: EnhancedCode = EnhancedCode::new(5, 4, 6);
const PERM_REFUSED: EnhancedCode = EnhancedCode::new(5, 7, 1);

/// Which greeting verb a client used; the HELO and EHLO replies differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeloVerb {
    /// `HELO`: one-line reply, `with SMTP` in Received.
    Helo,
    /// `EHLO`: extension list, `with ESMTP` in Received.
    Ehlo,
}

impl HeloVerb {
    /// The verb as written on the wire and in error texts.
    pub fn as_str(self) -> &'static str {
        match self {
            HeloVerb::Helo => "HELO",
            HeloVerb::Ehlo => "EHLO",
        }
    }
}

/// The extensions an EHLO reply advertises beyond the fixed ones, decided by the session from
/// the listener and the session state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// `SIZE` value: `smtp max-message-size`.
    pub max_message_size: usize,
    /// `DSN` (listener without `no-dsn`).
    pub dsn: bool,
    /// `STARTTLS` (listener has tls and the session is not yet secure).
    pub starttls: bool,
    /// `AUTH PLAIN LOGIN` (listener offers auth, session secure, not yet authenticated).
    pub auth: bool,
    /// `PIPELINING`: our addition; OpenSMTPD 6.8 drops pipelining clients instead.
    pub pipelining: bool,
}

impl Reply {
    fn one(code: u16, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced,
            lines: vec![text.into()],
        }
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, when the reply carries one.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// Text lines without code prefixes.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// 2xx/3xx: the command went through (or continues).
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// 4xx and 5xx replies: they are logged as failed commands.
    pub fn is_failure(&self) -> bool {
        self.code >= 400
    }

    /// The reply as sent: `CODE[-| ][ENH ]TEXT\r\n` per line, `-` on all but the last.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let last = self.lines.len().saturating_sub(1);
        for (i, text) in self.lines.iter().enumerate() {
            let mut line = format!("{}{}", self.code, if i == last { ' ' } else { '-' });
            if let Some(esc) = self.enhanced {
                line.push_str(&format!("{esc} "));
            }
            for c in text.chars() {
                // Client-controlled text (an unsupported option, a filter message) must not be
                // able to end the line early or forge a second reply.
                line.push(if c == '\r' || c == '\n' { ' ' } else { c });
            }
            truncate_at_char_boundary(&mut line, MAX_REPLY_LINE);
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Parses a reply written by a filter or an alias `error:` entry. OpenSMTPD's
    /// `valid_smtp_response`: at least five characters, a code from 200 to 599 followed by a
    /// space. CR and LF are refused. The text after the code is kept as is (no enhanced code
    /// is added: observed `550 invalid mail from`).
    pub fn parse(text: &str) -> Option<Reply> {
        let b = text.as_bytes();
        if b.len() < 5
            || !(b'2'..=b'5').contains(&b[0])
            || !b[1].is_ascii_digit()
            || !b[2].is_ascii_digit()
            || b[3] != b' '
            || text.contains(['\r', '\n'])
        {
            return None;
        }
        let code =
            u16::from(b[0] - b'0') * 100 + u16::from(b[1] - b'0') * 10 + u16::from(b[2] - b'0');
        Some(Reply::one(code, None, &text[4..]))
    }

    // ---- connection ----------------------------------------------------------------------

    /// `220 SMTPNAME ESMTP OpenSMTPD`
    pub fn banner(server_name: &str) -> Reply {
        Reply::one(220, None, format!("{server_name} ESMTP OpenSMTPD"))
    }

    /// `221 2.0.0 Bye`
    pub fn bye() -> Reply {
        Reply::one(221, Some(OK), "Bye")
    }

    /// The HELO greeting: `250 SMTPNAME Hello HELONAME [ADDR], pleased to meet you`.
    /// `bracketed_addr` is the client address inside exactly one pair of brackets.
    pub fn helo(server_name: &str, helo: &str, bracketed_addr: &str) -> Reply {
        Reply::one(250, None, greeting_text(server_name, helo, bracketed_addr))
    }

    /// The EHLO reply, in OpenSMTPD's order: greeting, `8BITMIME`, `ENHANCEDSTATUSCODES`,
    /// `SIZE n`, then when enabled `DSN`, `STARTTLS`, `AUTH PLAIN LOGIN`, `PIPELINING`, and `HELP`.
    pub fn ehlo(server_name: &str, helo: &str, bracketed_addr: &str, ext: Extensions) -> Reply {
        let mut lines = vec![
            greeting_text(server_name, helo, bracketed_addr),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            format!("SIZE {}", ext.max_message_size),
        ];
        if ext.dsn {
            lines.push("DSN".into());
        }
        if ext.starttls {
            lines.push("STARTTLS".into());
        }
        if ext.auth {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        if ext.pipelining {
            lines.push("PIPELINING".into());
        }
        lines.push("HELP".into());
        Reply {
            code: 250,
            enhanced: None,
            lines,
        }
    }

    /// The four-line HELP text.
    pub fn help() -> Reply {
        Reply {
            code: 214,
            enhanced: Some(OK),
            lines: vec![
                "This is OpenSMTPD".into(),
                "To report bugs in the implementation, please contact bugs@openbsd.org".into(),
                "with full details".into(),
                "End of HELP info".into(),
            ],
        }
    }

    // ---- success ---------------------------------------------------------------------------

    /// `250 2.0.0 Ok` (MAIL FROM accepted, NOOP).
    pub fn ok() -> Reply {
        Reply::one(250, Some(OK), "Ok")
    }

    /// `250 2.0.0 Reset state`
    pub fn reset_state() -> Reply {
        Reply::one(250, Some(OK), "Reset state")
    }

    /// `250 2.1.5 Destination address valid: Recipient ok`
    pub fn recipient_ok() -> Reply {
        Reply::one(
            250,
            Some(DEST_VALID),
            "Destination address valid: Recipient ok",
        )
    }

    /// `354 Enter mail, end with "." on a line by itself`
    pub fn start_mail_input() -> Reply {
        Reply::one(354, None, "Enter mail, end with \".\" on a line by itself")
    }

    /// `250 2.0.0 MSGID Message accepted for delivery`
    pub fn message_accepted(msgid: MsgId) -> Reply {
        Reply::one(
            250,
            Some(OK),
            format!("{msgid} Message accepted for delivery"),
        )
    }

    /// `220 2.0.0 Ready to start TLS`
    pub fn ready_to_start_tls() -> Reply {
        Reply::one(220, Some(OK), "Ready to start TLS")
    }

    /// `235 2.0.0 Authentication succeeded`
    pub fn auth_succeeded() -> Reply {
        Reply::one(235, Some(OK), "Authentication succeeded")
    }

    /// `334 ` — empty AUTH PLAIN challenge (note the trailing space).
    pub fn auth_plain_challenge() -> Reply {
        Reply::one(334, None, "")
    }

    /// `334 VXNlcm5hbWU6` ("Username:")
    pub fn auth_username_challenge() -> Reply {
        Reply::one(334, None, "VXNlcm5hbWU6")
    }

    /// `334 UGFzc3dvcmQ6` ("Password:")
    pub fn auth_password_challenge() -> Reply {
        Reply::one(334, None, "UGFzc3dvcmQ6")
    }

    // ---- temporary failures --------------------------------------------------------------

    /// `421 4.3.0 Temporary Error` (queue could not create or open the message, senders
    /// lookup failed).
    pub fn temporary_error() -> Reply {
        Reply::one(421, Some(TEMP_SYSTEM), "Temporary Error")
    }

    /// `421 4.3.0 Temporary failure` (envelope or commit failure, credentials lookup error).
    pub fn temporary_failure() -> Reply {
        Reply::one(421, Some(TEMP_SYSTEM), "Temporary failure")
    }

    /// `451 4.3.0 Temporary failure`: the data-line filters gave no message back in time.
    pub fn filter_tempfail() -> Reply {
        Reply::one(451, Some(TEMP_SYSTEM), "Temporary failure")
    }

    /// `421 Internal server error` (also what an invalid filter reply becomes).
    pub fn internal_server_error() -> Reply {
        Reply::one(421, None, "Internal server error")
    }

    /// `451 4.5.3 Too many recipients: Too many recipients` (`max-rcpt` reached).
    pub fn too_many_recipients() -> Reply {
        Reply::one(
            451,
            Some(TEMP_TOO_MANY),
            "Too many recipients: Too many recipients",
        )
    }

    /// `452 4.5.3 Too many recipients: Too many messages sent` (`max-mails` reached).
    pub fn too_many_messages() -> Reply {
        Reply::one(
            452,
            Some(TEMP_TOO_MANY),
            "Too many recipients: Too many messages sent",
        )
    }

    // ---- recipient expansion outcomes (§6.2) -------------------------------------------

    /// An expansion failure: the lookup's line followed by `: <RCPT>`, e.g.
    /// `550 Invalid recipient: <foo@example.org>`. `line` must be a valid reply line;
    /// anything else becomes `421 Internal server error`.
    pub fn recipient_failure(line: &str, rcpt: &Mailaddr) -> Reply {
        match Reply::parse(&format!("{line}: <{rcpt}>")) {
            Some(r) if r.is_failure() => r,
            _ => Reply::internal_server_error(),
        }
    }

    /// `550 Invalid recipient: <RCPT>` (no rule matched, reject rule, unknown user).
    pub fn invalid_recipient(rcpt: &Mailaddr) -> Reply {
        Reply::one(550, None, format!("Invalid recipient: <{rcpt}>"))
    }

    /// `451 Temporary failure: <RCPT>` (rule or lookup temporary failure).
    pub fn recipient_tempfail(rcpt: &Mailaddr) -> Reply {
        Reply::one(451, None, format!("Temporary failure: <{rcpt}>"))
    }

    /// `424 4.2.4 Mailing list expansion problem: <RCPT>` (forward-only without .forward).
    pub fn expansion_tempfail(rcpt: &Mailaddr) -> Reply {
        Reply::one(
            424,
            Some(EnhancedCode::new(4, 2, 4)),
            format!("Mailing list expansion problem: <{rcpt}>"),
        )
    }

    /// `524 5.2.4 Mailing list expansion problem: <RCPT>` (expand-only without .forward).
    pub fn expansion_permfail(rcpt: &Mailaddr) -> Reply {
        Reply::one(
            524,
            Some(EnhancedCode::new(5, 2, 4)),
            format!("Mailing list expansion problem: <{rcpt}>"),
        )
    }

    // ---- permanent failures ---------------------------------------------------------------

    /// `500 5.0.0 Line too long` (a line of 65535 bytes or more; the session then closes).
    pub fn line_too_long() -> Reply {
        Reply::one(500, Some(PERM_OTHER), "Line too long")
    }

    /// `500 5.0.0 Command line too long` (a command of 2048 bytes or more; then close).
    pub fn command_line_too_long() -> Reply {
        Reply::one(500, Some(PERM_OTHER), "Command line too long")
    }

    /// `500 5.5.1 Invalid command: Pipelining not supported` — OpenSMTPD 6.8's answer to a
    /// pipelining client. Kept in the catalogue for completeness; this server pipelines.
    pub fn pipelining_not_supported() -> Reply {
        Reply::one(
            500,
            Some(PERM_INVALID_COMMAND),
            "Invalid command: Pipelining not supported",
        )
    }

    /// `500 5.5.1 Invalid command: Command unrecognized` (VRFY, EXPN, BDAT, ... too).
    pub fn command_unrecognized() -> Reply {
        Reply::one(
            500,
            Some(PERM_INVALID_COMMAND),
            "Invalid command: Command unrecognized",
        )
    }

    /// `500 5.5.4 Invalid command arguments: command does not accept arguments.`
    pub fn no_arguments_accepted() -> Reply {
        Reply::one(
            500,
            Some(PERM_INVALID_ARGS),
            "Invalid command arguments: command does not accept arguments.",
        )
    }

    /// `500 5.5.1 Invalid command: this feature is not supported yet ;-)` (WIZ).
    pub fn wiz() -> Reply {
        Reply::one(
            500,
            Some(PERM_INVALID_COMMAND),
            "Invalid command: this feature is not supported yet ;-)",
        )
    }

    /// `500 5.4.6 Routing loop detected: Loop detected` (100 or more Received headers).
    pub fn loop_detected() -> Reply {
        Reply::one(500, Some(PERM_LOOP), "Routing loop detected: Loop detected")
    }

    /// `501 5.5.1 Invalid command: HELO requires domain name` (or EHLO).
    pub fn helo_requires_domain(verb: HeloVerb) -> Reply {
        Reply::one(
            501,
            Some(PERM_INVALID_COMMAND),
            format!("Invalid command: {} requires domain name", verb.as_str()),
        )
    }

    /// `501 5.5.4 Invalid command arguments: Invalid domain name`
    pub fn invalid_domain_name() -> Reply {
        Reply::one(
            501,
            Some(PERM_INVALID_ARGS),
            "Invalid command arguments: Invalid domain name",
        )
    }

    /// `501 5.5.4 Invalid command arguments: No parameters allowed` (STARTTLS with argument).
    pub fn no_parameters_allowed() -> Reply {
        Reply::one(
            501,
            Some(PERM_INVALID_ARGS),
            "Invalid command arguments: No parameters allowed",
        )
    }

    /// `501 5.5.4 Invalid command arguments: No parameters given` (bare AUTH).
    pub fn no_parameters_given() -> Reply {
        Reply::one(
            501,
            Some(PERM_INVALID_ARGS),
            "Invalid command arguments: No parameters given",
        )
    }

    /// `501 5.5.2 Syntax error: Syntax error` (undecodable AUTH response).
    pub fn auth_syntax_error() -> Reply {
        Reply::one(501, Some(PERM_SYNTAX), "Syntax error: Syntax error")
    }

    /// `501 5.1.3 Recipient address syntax error`
    pub fn recipient_syntax_error() -> Reply {
        Reply::one(
            501,
            Some(PERM_RCPT_SYNTAX),
            "Recipient address syntax error",
        )
    }

    /// `503 5.5.1 Invalid command: Command not allowed at this point.` (the final period is
    /// part of the text).
    pub fn command_not_allowed() -> Reply {
        Reply::one(
            503,
            Some(PERM_INVALID_COMMAND),
            "Invalid command: Command not allowed at this point.",
        )
    }

    /// `503 5.5.1 Invalid command: Already identified`
    pub fn already_identified() -> Reply {
        Reply::one(
            503,
            Some(PERM_INVALID_COMMAND),
            "Invalid command: Already identified",
        )
    }

    /// `503 5.5.1 Invalid command: Command not supported`
    pub fn command_not_supported() -> Reply {
        Reply::one(
            503,
            Some(PERM_INVALID_COMMAND),
            "Invalid command: Command not supported",
        )
    }

    /// `503 5.5.1 Invalid command: Channel already secured`
    pub fn channel_already_secured() -> Reply {
        Reply::one(
            503,
            Some(PERM_INVALID_COMMAND),
            "Invalid command: Channel already secured",
        )
    }

    /// `503 5.5.1 Invalid command: Already authenticated`
    pub fn already_authenticated() -> Reply {
        Reply::one(
            503,
            Some(PERM_INVALID_COMMAND),
            "Invalid command: Already authenticated",
        )
    }

    /// `503 5.5.4 Invalid command arguments: No recipient specified`
    pub fn no_recipient() -> Reply {
        Reply::one(
            503,
            Some(PERM_INVALID_ARGS),
            "Invalid command arguments: No recipient specified",
        )
    }

    /// `503 5.5.4 Invalid command arguments: Unsupported option X` (MAIL FROM parameter).
    pub fn unsupported_mail_option(option: &str) -> Reply {
        Reply::one(
            503,
            Some(PERM_INVALID_ARGS),
            format!("Invalid command arguments: Unsupported option {option}"),
        )
    }

    /// `503 5.5.4 Invalid command arguments: option too large, truncated: X` (ENVID > 100).
    pub fn option_too_large(value: &str) -> Reply {
        Reply::one(
            503,
            Some(PERM_INVALID_ARGS),
            format!("Invalid command arguments: option too large, truncated: {value}"),
        )
    }

    /// `503 Unsupported option X` (RCPT TO parameter; no enhanced code, observed).
    pub fn unsupported_rcpt_option(option: &str) -> Reply {
        Reply::one(503, None, format!("Unsupported option {option}"))
    }

    /// `504 5.7.4 Security features not supported: AUTH method "X" not supported`
    pub fn auth_method_not_supported(method: &str) -> Reply {
        Reply::one(
            504,
            Some(PERM_SECURITY),
            format!("Security features not supported: AUTH method \"{method}\" not supported"),
        )
    }

    /// `530 5.5.1 Invalid command: Must issue a STARTTLS command first`
    pub fn starttls_required() -> Reply {
        Reply::one(
            530,
            Some(PERM_INVALID_COMMAND),
            "Invalid command: Must issue a STARTTLS command first",
        )
    }

    /// `530 5.5.1 Invalid command: Must issue an AUTH command first`
    pub fn auth_required() -> Reply {
        Reply::one(
            530,
            Some(PERM_INVALID_COMMAND),
            "Invalid command: Must issue an AUTH command first",
        )
    }

    /// `530 Sender rejected` (`senders` table refused the authenticated user).
    pub fn sender_rejected() -> Reply {
        Reply::one(530, None, "Sender rejected")
    }

    /// `535 Authentication failed`
    pub fn auth_failed() -> Reply {
        Reply::one(535, None, "Authentication failed")
    }

    /// `550 5.7.1 Delivery not authorized, message refused: Message is not RFC 2822 compliant`
    pub fn not_rfc2822_compliant() -> Reply {
        Reply::one(
            550,
            Some(PERM_REFUSED),
            "Delivery not authorized, message refused: Message is not RFC 2822 compliant",
        )
    }

    /// `553 5.1.0 Sender address syntax error`
    pub fn sender_syntax_error() -> Reply {
        Reply::one(553, Some(PERM_SENDER_SYNTAX), "Sender address syntax error")
    }

    /// `553 NOTIFY option NEVER cannot be combined with other options`
    pub fn notify_never_combined() -> Reply {
        Reply::one(
            553,
            None,
            "NOTIFY option NEVER cannot be combined with other options",
        )
    }

    /// `553 ORCPT address syntax error`
    pub fn orcpt_syntax_error() -> Reply {
        Reply::one(553, None, "ORCPT address syntax error")
    }

    /// `554 5.3.4 Message too big for system: Transaction failed, message too big`
    pub fn message_too_big() -> Reply {
        Reply::one(
            554,
            Some(PERM_TOO_BIG),
            "Message too big for system: Transaction failed, message too big",
        )
    }
}

fn greeting_text(server_name: &str, helo: &str, bracketed_addr: &str) -> String {
    format!("{server_name} Hello {helo} {bracketed_addr}, pleased to meet you")
}

fn truncate_at_char_boundary(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

impl fmt::Display for Reply {
    /// The reply as logged (`result="..."`): the wire text without CRLF, lines joined by LF.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wire = self.to_wire();
        let text = String::from_utf8_lossy(&wire);
        let text = text.strip_suffix("\r\n").unwrap_or(&text);
        f.write_str(&text.replace("\r\n", "\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &Reply) -> String {
        String::from_utf8(r.to_wire()).unwrap()
    }

    /// Every fixed text of spec §8.6, byte for byte.
    #[test]
    fn catalogue_matches_opensmtpd_texts() {
        let rcpt = Mailaddr::new("nobody", "bsdsx.fr");
        let table: Vec<(Reply, &str)> = vec![
            (Reply::banner("vm"), "220 vm ESMTP OpenSMTPD"),
            (Reply::ready_to_start_tls(), "220 2.0.0 Ready to start TLS"),
            (Reply::bye(), "221 2.0.0 Bye"),
            (
                Reply::auth_succeeded(),
                "235 2.0.0 Authentication succeeded",
            ),
            (Reply::ok(), "250 2.0.0 Ok"),
            (Reply::reset_state(), "250 2.0.0 Reset state"),
            (
                Reply::recipient_ok(),
                "250 2.1.5 Destination address valid: Recipient ok",
            ),
            (
                Reply::message_accepted(MsgId(0xf952a52e)),
                "250 2.0.0 f952a52e Message accepted for delivery",
            ),
            (Reply::auth_plain_challenge(), "334 "),
            (Reply::auth_username_challenge(), "334 VXNlcm5hbWU6"),
            (Reply::auth_password_challenge(), "334 UGFzc3dvcmQ6"),
            (
                Reply::start_mail_input(),
                "354 Enter mail, end with \".\" on a line by itself",
            ),
            (Reply::temporary_error(), "421 4.3.0 Temporary Error"),
            (Reply::temporary_failure(), "421 4.3.0 Temporary failure"),
            (Reply::internal_server_error(), "421 Internal server error"),
            (
                Reply::expansion_tempfail(&rcpt),
                "424 4.2.4 Mailing list expansion problem: <nobody@bsdsx.fr>",
            ),
            (
                Reply::recipient_tempfail(&rcpt),
                "451 Temporary failure: <nobody@bsdsx.fr>",
            ),
            (
                Reply::too_many_recipients(),
                "451 4.5.3 Too many recipients: Too many recipients",
            ),
            (
                Reply::too_many_messages(),
                "452 4.5.3 Too many recipients: Too many messages sent",
            ),
            (Reply::line_too_long(), "500 5.0.0 Line too long"),
            (
                Reply::command_line_too_long(),
                "500 5.0.0 Command line too long",
            ),
            (
                Reply::pipelining_not_supported(),
                "500 5.5.1 Invalid command: Pipelining not supported",
            ),
            (
                Reply::command_unrecognized(),
                "500 5.5.1 Invalid command: Command unrecognized",
            ),
            (
                Reply::no_arguments_accepted(),
                "500 5.5.4 Invalid command arguments: command does not accept arguments.",
            ),
            (
                Reply::wiz(),
                "500 5.5.1 Invalid command: this feature is not supported yet ;-)",
            ),
            (
                Reply::loop_detected(),
                "500 5.4.6 Routing loop detected: Loop detected",
            ),
            (
                Reply::helo_requires_domain(HeloVerb::Helo),
                "501 5.5.1 Invalid command: HELO requires domain name",
            ),
            (
                Reply::helo_requires_domain(HeloVerb::Ehlo),
                "501 5.5.1 Invalid command: EHLO requires domain name",
            ),
            (
                Reply::invalid_domain_name(),
                "501 5.5.4 Invalid command arguments: Invalid domain name",
            ),
            (
                Reply::no_parameters_allowed(),
                "501 5.5.4 Invalid command arguments: No parameters allowed",
            ),
            (
                Reply::no_parameters_given(),
                "501 5.5.4 Invalid command arguments: No parameters given",
            ),
            (
                Reply::auth_syntax_error(),
                "501 5.5.2 Syntax error: Syntax error",
            ),
            (
                Reply::recipient_syntax_error(),
                "501 5.1.3 Recipient address syntax error",
            ),
            (
                Reply::command_not_allowed(),
                "503 5.5.1 Invalid command: Command not allowed at this point.",
            ),
            (
                Reply::already_identified(),
                "503 5.5.1 Invalid command: Already identified",
            ),
            (
                Reply::command_not_supported(),
                "503 5.5.1 Invalid command: Command not supported",
            ),
            (
                Reply::channel_already_secured(),
                "503 5.5.1 Invalid command: Channel already secured",
            ),
            (
                Reply::already_authenticated(),
                "503 5.5.1 Invalid command: Already authenticated",
            ),
            (
                Reply::no_recipient(),
                "503 5.5.4 Invalid command arguments: No recipient specified",
            ),
            (
                Reply::unsupported_mail_option("FOO=BAR"),
                "503 5.5.4 Invalid command arguments: Unsupported option FOO=BAR",
            ),
            (
                Reply::option_too_large("x"),
                "503 5.5.4 Invalid command arguments: option too large, truncated: x",
            ),
            (
                Reply::unsupported_rcpt_option("XYZ=1"),
                "503 Unsupported option XYZ=1",
            ),
            (
                Reply::auth_method_not_supported("X"),
                "504 5.7.4 Security features not supported: AUTH method \"X\" not supported",
            ),
            (
                Reply::expansion_permfail(&rcpt),
                "524 5.2.4 Mailing list expansion problem: <nobody@bsdsx.fr>",
            ),
            (
                Reply::starttls_required(),
                "530 5.5.1 Invalid command: Must issue a STARTTLS command first",
            ),
            (
                Reply::auth_required(),
                "530 5.5.1 Invalid command: Must issue an AUTH command first",
            ),
            (Reply::sender_rejected(), "530 Sender rejected"),
            (Reply::auth_failed(), "535 Authentication failed"),
            (
                Reply::invalid_recipient(&rcpt),
                "550 Invalid recipient: <nobody@bsdsx.fr>",
            ),
            (
                Reply::not_rfc2822_compliant(),
                "550 5.7.1 Delivery not authorized, message refused: Message is not RFC 2822 compliant",
            ),
            (
                Reply::sender_syntax_error(),
                "553 5.1.0 Sender address syntax error",
            ),
            (
                Reply::notify_never_combined(),
                "553 NOTIFY option NEVER cannot be combined with other options",
            ),
            (
                Reply::orcpt_syntax_error(),
                "553 ORCPT address syntax error",
            ),
            (
                Reply::message_too_big(),
                "554 5.3.4 Message too big for system: Transaction failed, message too big",
            ),
        ];
        for (reply, text) in table {
            assert_eq!(wire(&reply), format!("{text}\r\n"));
            assert_eq!(reply.to_string(), text);
        }
    }

    #[test]
    fn ehlo_lines_in_opensmtpd_order() {
        let ext = Extensions {
            max_message_size: 36700160,
            dsn: true,
            ..Extensions::default()
        };
        assert_eq!(
            wire(&Reply::ehlo("vm", "client.example", "[127.0.0.1]", ext)),
            "250-vm Hello client.example [127.0.0.1], pleased to meet you\r\n\
             250-8BITMIME\r\n\
             250-ENHANCEDSTATUSCODES\r\n\
             250-SIZE 36700160\r\n\
             250-DSN\r\n\
             250 HELP\r\n"
        );
        let all = Extensions {
            max_message_size: 2000,
            dsn: true,
            starttls: true,
            auth: true,
            pipelining: true,
        };
        assert_eq!(
            wire(&Reply::ehlo("mx", "c", "[::1]", all)),
            "250-mx Hello c [::1], pleased to meet you\r\n\
             250-8BITMIME\r\n\
             250-ENHANCEDSTATUSCODES\r\n\
             250-SIZE 2000\r\n\
             250-DSN\r\n\
             250-STARTTLS\r\n\
             250-AUTH PLAIN LOGIN\r\n\
             250-PIPELINING\r\n\
             250 HELP\r\n"
        );
    }

    #[test]
    fn helo_and_help_texts() {
        assert_eq!(
            wire(&Reply::helo("vm", "[127.0.0.1]", "[127.0.0.1]")),
            "250 vm Hello [127.0.0.1] [127.0.0.1], pleased to meet you\r\n"
        );
        assert_eq!(
            wire(&Reply::help()),
            "214-2.0.0 This is OpenSMTPD\r\n\
             214-2.0.0 To report bugs in the implementation, please contact bugs@openbsd.org\r\n\
             214-2.0.0 with full details\r\n\
             214 2.0.0 End of HELP info\r\n"
        );
    }

    #[test]
    fn parse_follows_valid_smtp_response() {
        let r = Reply::parse("550 invalid mail from").unwrap();
        assert_eq!(r.code(), 550);
        assert_eq!(wire(&r), "550 invalid mail from\r\n");
        assert_eq!(Reply::parse("550 x").unwrap().code(), 550);
        for bad in [
            "550",
            "550 ",
            "55 x",
            "150 nope",
            "650 nope",
            "550-x",
            "5a0 x",
            "550 a\r\n250 b",
        ] {
            assert_eq!(Reply::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn recipient_failure_appends_the_address() {
        let rcpt = Mailaddr::new("x", "y.test");
        assert_eq!(
            Reply::recipient_failure("550 go away", &rcpt).to_string(),
            "550 go away: <x@y.test>"
        );
        assert_eq!(
            Reply::recipient_failure("garbage", &rcpt).to_string(),
            "421 Internal server error"
        );
        assert_eq!(
            Reply::recipient_failure("250 fine", &rcpt).to_string(),
            "421 Internal server error"
        );
    }

    #[test]
    fn dynamic_text_cannot_break_lines() {
        let r = Reply::unsupported_mail_option("A=\r\n250 forged");
        assert_eq!(
            wire(&r),
            "503 5.5.4 Invalid command arguments: Unsupported option A=  250 forged\r\n"
        );
        let long = Reply::unsupported_rcpt_option(&"é".repeat(5000));
        let w = long.to_wire();
        assert!(w.len() <= MAX_REPLY_LINE + 2);
        assert!(String::from_utf8(w).is_ok());
    }
}
