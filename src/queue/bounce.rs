//! Delivery status notifications: the report a sender receives when mail for some of its
//! recipients failed for good, expired, or is delayed (OpenSMTPD's `bounce.c`).
//!
//! The report is a new message in the queue, with the null sender and the original sender as
//! its only recipient, so a report that cannot be delivered is never reported again (no
//! "double bounce"). Its text is OpenSMTPD's, byte for byte where the reference shows it: an
//! RFC 3464 `multipart/mixed` with a human-readable notice, a `message/delivery-status` part,
//! and the original message. Lines end in LF, as every queued message does; CRLF is restored
//! on the wire.

use super::envelope::{BounceKind, StatusCode};

/// One failed (or delayed) recipient in a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedRecipient {
    /// The address the delivery was for (`Final-Recipient`).
    pub dest: String,
    /// Why it failed: the envelope's error line.
    pub errorline: String,
    /// The enhanced status code (`Status:`).
    pub status: StatusCode,
}

/// Everything a report is made from.
#[derive(Clone, Debug)]
pub struct Report<'a> {
    /// Failed, delayed or delivered.
    pub kind: BounceKind,
    /// The server's name (`MAILER-DAEMON@NAME`, `Reporting-MTA`, boundary).
    pub hostname: &'a str,
    /// The `Message-ID:` value, `<...@...>`; it ends the header block, where the local
    /// enqueue path adds it.
    pub message_id: &'a str,
    /// The report's `To:`: the original sender.
    pub to: &'a str,
    /// The `Date:` value (`Sun, 22 Nov 2026 07:40:14 +0000 (UTC)`).
    pub date: &'a str,
    /// Random 64-bit number of the MIME boundary.
    pub boundary_id: u64,
    /// For delayed notices: the warn interval crossed, in seconds.
    pub delay: u64,
    /// For delayed notices: how long the message stays queued, in seconds.
    pub ttl: u64,
    /// The recipients reported on, one line and one block each.
    pub recipients: &'a [ReportedRecipient],
    /// The original message as queued.
    pub original: &'a [u8],
    /// Only the header block of the original (`RET=HDRS`).
    pub headers_only: bool,
    /// A success notice on mail relayed to a next hop that does not offer DSN: it says
    /// "relayed", not "delivered" (6.8's `notice_relay`).
    pub relayed: bool,
}

/// OpenSMTPD's duration words in notices: the largest unit that fits, truncated
/// (`5 seconds`, `1 minute`, `4 hours`, `7 days`).
pub fn duration_words(secs: u64) -> String {
    let (n, unit) = if secs < 60 {
        (secs, "second")
    } else if secs < 3600 {
        (secs / 60, "minute")
    } else if secs < 86400 {
        (secs / 3600, "hour")
    } else {
        (secs / 86400, "day")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// The MIME boundary: the id right-aligned in 16 columns, `/`, the server name.
pub fn boundary(id: u64, hostname: &str) -> String {
    format!("{id:>16}/{hostname}")
}

/// The header block of `message`, through the empty line that ends it (or all of it).
fn header_block(message: &[u8]) -> &[u8] {
    let mut start = 0;
    while start < message.len() {
        let end = message[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| start + p + 1)
            .unwrap_or(message.len());
        let line = &message[start..end];
        if line == b"\n" || line == b"\r\n" {
            return &message[..start];
        }
        start = end;
    }
    message
}

/// The report's header block and MIME body (LF line ends), without the Received line
/// that queueing adds.
pub fn report_message(r: &Report<'_>) -> Vec<u8> {
    let b = boundary(r.boundary_id, r.hostname);
    let mut t = String::new();
    t.push_str(&format!(
        "Subject: Delivery status notification: {}\n",
        r.kind.as_str()
    ));
    t.push_str(&format!(
        "From: Mailer Daemon <MAILER-DAEMON@{}>\n",
        r.hostname
    ));
    t.push_str(&format!("To: {}\n", r.to));
    t.push_str(&format!("Date: {}\n", r.date));
    t.push_str("MIME-Version: 1.0\n");
    t.push_str(&format!("Content-Type: multipart/mixed;boundary=\"{b}\"\n"));
    t.push_str(&format!("Message-ID: {}\n", r.message_id));
    t.push('\n');
    t.push_str("This is a MIME-encapsulated message.\n\n");
    t.push_str(&format!("--{b}\n"));
    t.push_str("Content-Description: Notification\n");
    t.push_str("Content-Type: text/plain; charset=us-ascii\n\n");
    t.push_str("    Hi!\n\n");
    t.push_str("    This is the MAILER-DAEMON, please DO NOT REPLY to this email.\n\n");
    match r.kind {
        BounceKind::Failed => {
            t.push_str("    An error has occurred while attempting to deliver a message for\n");
            t.push_str("    the following list of recipients:\n\n");
        }
        BounceKind::Delayed => {
            t.push_str(&format!(
                "    A message is delayed for more than {} for the following\n",
                duration_words(r.delay)
            ));
            t.push_str("    list of recipients:\n\n");
        }
        BounceKind::Delivered if r.relayed => {
            t.push_str("    Your message was relayed to these recipients.\n\n");
        }
        BounceKind::Delivered => {
            t.push_str("    Your message was successfully delivered to these recipients.\n\n");
        }
    }
    for rc in r.recipients {
        t.push_str(&format!("{}: {}\n", rc.dest, rc.errorline));
    }
    t.push('\n');
    if r.kind == BounceKind::Delayed {
        t.push_str("    Please note that this is only a temporary failure report.\n");
        t.push_str(&format!(
            "    The message is kept in the queue for up to {}.\n",
            duration_words(r.ttl)
        ));
        t.push_str("    You DO NOT NEED to re-send the message to these recipients.\n\n");
    }
    t.push_str("    Below is a copy of the original message:\n\n");
    t.push_str(&format!("--{b}\n"));
    t.push_str("Content-Description: Delivery Report\n");
    t.push_str("Content-Type: message/delivery-status\n\n");
    t.push_str(&format!("Reporting-MTA: dns; {}\n\n", r.hostname));
    for rc in r.recipients {
        t.push_str(&format!("Final-Recipient: rfc822; {}\n", rc.dest));
        t.push_str(&format!("Action: {}\n", r.kind.as_str()));
        t.push_str(&format!("Status: {}\n\n", rc.status));
    }
    t.push_str(&format!("--{b}\n"));
    t.push_str("Content-Description: Message headers\n");
    t.push_str("Content-Type: text/rfc822-headers\n\n");
    let mut out = t.into_bytes();
    let original = if r.headers_only {
        header_block(r.original)
    } else {
        r.original
    };
    out.extend_from_slice(original);
    if !original.is_empty() && !original.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(format!("\n--{b}--\n").as_bytes());
    out
}

/// The `Received:` line the report gets when it enters the queue through the local path
/// (OpenSMTPD submits reports over its own enqueue session: `from NAME (NAME [local])`).
pub fn received_line(hostname: &str, msgid: &str, to: &str, date: &str) -> String {
    format!(
        "Received: from {hostname} ({hostname} [local])\n\tby {hostname} (OpenSMTPD) with ESMTPA id {msgid}\n\tfor <{to}>;\n\t{date}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "Sun, 22 Nov 2026 07:40:14 +0000 (UTC)";

    fn failed() -> Vec<ReportedRecipient> {
        vec![ReportedRecipient {
            dest: "foo@fail.test".into(),
            errorline: "\"custom failure message\"".into(),
            status: StatusCode { class: 5, code: 30 },
        }]
    }

    #[test]
    fn failed_report_is_opensmtpd_text() {
        let rcpts = failed();
        let original = b"Subject: hi\nFrom: foo@example.org\n\nbody line\n";
        let r = Report {
            kind: BounceKind::Failed,
            hostname: "HOSTNAME",
            message_id: "<1@HOSTNAME>",
            to: "foo@example.org",
            date: DATE,
            boundary_id: 4090776158732937535,
            delay: 0,
            ttl: 7 * 86400,
            recipients: &rcpts,
            original,
            headers_only: false,
            relayed: false,
        };
        let text = String::from_utf8(report_message(&r)).unwrap();
        let expected = "Subject: Delivery status notification: failed\n\
From: Mailer Daemon <MAILER-DAEMON@HOSTNAME>\n\
To: foo@example.org\n\
Date: Sun, 22 Nov 2026 07:40:14 +0000 (UTC)\n\
MIME-Version: 1.0\n\
Content-Type: multipart/mixed;boundary=\"4090776158732937535/HOSTNAME\"\n\
Message-ID: <1@HOSTNAME>\n\
\n\
This is a MIME-encapsulated message.\n\
\n\
--4090776158732937535/HOSTNAME\n\
Content-Description: Notification\n\
Content-Type: text/plain; charset=us-ascii\n\
\n\
\x20   Hi!\n\
\n\
\x20   This is the MAILER-DAEMON, please DO NOT REPLY to this email.\n\
\n\
\x20   An error has occurred while attempting to deliver a message for\n\
\x20   the following list of recipients:\n\
\n\
foo@fail.test: \"custom failure message\"\n\
\n\
\x20   Below is a copy of the original message:\n\
\n\
--4090776158732937535/HOSTNAME\n\
Content-Description: Delivery Report\n\
Content-Type: message/delivery-status\n\
\n\
Reporting-MTA: dns; HOSTNAME\n\
\n\
Final-Recipient: rfc822; foo@fail.test\n\
Action: failed\n\
Status: 5.3.0\n\
\n\
--4090776158732937535/HOSTNAME\n\
Content-Description: Message headers\n\
Content-Type: text/rfc822-headers\n\
\n\
Subject: hi\n\
From: foo@example.org\n\
\n\
body line\n\
\n\
--4090776158732937535/HOSTNAME--\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn delayed_report_has_the_warning_paragraphs() {
        let rcpts = vec![ReportedRecipient {
            dest: "x@queue.test".into(),
            errorline: "Network error on destination MXs".into(),
            status: StatusCode { class: 4, code: 0 },
        }];
        let r = Report {
            kind: BounceKind::Delayed,
            hostname: "mx.test",
            message_id: "<2@mx.test>",
            to: "s@example.net",
            date: DATE,
            boundary_id: 7,
            delay: 4 * 3600,
            ttl: 7 * 86400,
            recipients: &rcpts,
            original: b"Subject: x\n\nbody\n",
            headers_only: false,
            relayed: false,
        };
        let text = String::from_utf8(report_message(&r)).unwrap();
        assert!(text.starts_with("Subject: Delivery status notification: delayed\n"));
        assert!(text.contains(
            "    A message is delayed for more than 4 hours for the following\n    list of recipients:\n\nx@queue.test: Network error on destination MXs\n\n    Please note that this is only a temporary failure report.\n    The message is kept in the queue for up to 7 days.\n    You DO NOT NEED to re-send the message to these recipients.\n\n"
        ));
        assert!(text.contains("Action: delayed\nStatus: 4.0.0\n"));
        assert!(text.contains("boundary=\"               7/mx.test\""));
        assert!(text.ends_with("\n--               7/mx.test--\n"));
    }

    #[test]
    fn headers_only_keeps_the_header_block() {
        let rcpts = failed();
        let r = Report {
            kind: BounceKind::Delivered,
            hostname: "h",
            message_id: "<3@h>",
            to: "a@b",
            date: DATE,
            boundary_id: 1,
            delay: 0,
            ttl: 0,
            recipients: &rcpts,
            original: b"Subject: secret\n\nthe body\n",
            headers_only: true,
            relayed: false,
        };
        let text = String::from_utf8(report_message(&r)).unwrap();
        assert!(
            text.contains("    Your message was successfully delivered to these recipients.\n")
        );
        assert!(text.contains("Subject: secret\n"));
        assert!(!text.contains("the body"));
        // The header block, then the closing boundary after one empty line, as 6.8.
        assert!(
            text.ends_with("\n\nSubject: secret\n\n--               1/h--\n"),
            "{text}"
        );
        let relayed = Report { relayed: true, ..r };
        let text = String::from_utf8(report_message(&relayed)).unwrap();
        assert!(text.contains("    Your message was relayed to these recipients.\n\n"));
        assert!(text.contains("Subject: Delivery status notification: delivered\n"));
        assert!(text.contains("\nAction: delivered\n"));
    }

    #[test]
    fn durations_in_words() {
        assert_eq!(duration_words(5), "5 seconds");
        assert_eq!(duration_words(1), "1 second");
        assert_eq!(duration_words(60), "1 minute");
        assert_eq!(duration_words(4 * 3600), "4 hours");
        assert_eq!(duration_words(7 * 86400), "7 days");
        assert_eq!(duration_words(90), "1 minute");
        assert_eq!(duration_words(0), "0 seconds");
    }

    #[test]
    fn received_line_names_the_local_path() {
        assert_eq!(
            received_line("mx.test", "0a1b2c3d", "s@x.test", DATE),
            "Received: from mx.test (mx.test [local])\n\tby mx.test (OpenSMTPD) with ESMTPA id 0a1b2c3d\n\tfor <s@x.test>;\n\tSun, 22 Nov 2026 07:40:14 +0000 (UTC)\n"
        );
    }
}
