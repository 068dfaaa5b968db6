//! The message as a delivery sees it: the loop check, the two headers
//! OpenSMTPD prepends at delivery, and line-by-line reading.
//!
//! Every method receives the same stream (`mda.c`):
//!
//! ```text
//! Return-Path: <SENDER>        only for a non-empty sender
//! Delivered-To: RCPT           the original recipient, as given in RCPT TO
//! <the queued message, unchanged: X-Spam, Received, the client's headers, body>
//! ```

use std::io::{self, BufRead};

/// The headers prepended at delivery, exactly as OpenSMTPD writes them (LF endings).
pub fn delivery_headers(sender: &str, rcpt: &str) -> String {
    if sender.is_empty() {
        format!("Delivered-To: {rcpt}\n")
    } else {
        format!("Return-Path: <{sender}>\nDelivered-To: {rcpt}\n")
    }
}

/// `mda_check_loop`: does the header block already carry
/// `Delivered-To: DEST` (case-insensitive) for this destination?
///
/// The header block ends at the first line that has no `:` and does not
/// start with white space (usually the empty line before the body).
pub fn has_delivery_loop(mut message: impl BufRead, dest: &str) -> io::Result<bool> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if message.read_until(b'\n', &mut line)? == 0 {
            return Ok(false);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let text = c_string(&line);
        let continuation = text.first().is_some_and(|b| b.is_ascii_whitespace());
        if !text.contains(&b':') && !continuation {
            return Ok(false);
        }
        if text.len() >= 14
            && text[..14].eq_ignore_ascii_case(b"Delivered-To: ")
            && text[14..].eq_ignore_ascii_case(dest.as_bytes())
        {
            return Ok(true);
        }
    }
}

/// Calls `each` with every line of `input`, without its `\n`, plus whether
/// it had one; the last line may lack it. Stops at the first error.
pub fn for_each_line(
    mut input: impl BufRead,
    mut each: impl FnMut(&[u8], bool) -> io::Result<()>,
) -> io::Result<()> {
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let had_newline = line.last() == Some(&b'\n');
        if had_newline {
            line.pop();
        }
        each(&line, had_newline)?;
    }
}

/// The line as a C string sees it: up to the first NUL. OpenSMTPD's helpers
/// print lines with `%s`, so a NUL byte ends the line they write.
pub fn c_string(line: &[u8]) -> &[u8] {
    match line.iter().position(|&b| b == 0) {
        Some(nul) => &line[..nul],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(
            delivery_headers("a@remote.test", "bar@example.org"),
            "Return-Path: <a@remote.test>\nDelivered-To: bar@example.org\n"
        );
        assert_eq!(
            delivery_headers("", "foo@bsdsx.fr"),
            "Delivered-To: foo@bsdsx.fr\n"
        );
    }

    #[test]
    fn loop_check() {
        let msg = "Received: from x\n\tby y\nDelivered-To: Foo@Example.ORG\nSubject: s\n\nbody\n";
        assert!(has_delivery_loop(msg.as_bytes(), "foo@example.org").unwrap());
        assert!(!has_delivery_loop(msg.as_bytes(), "bar@example.org").unwrap());
        // Only the header block counts.
        let body = "Subject: s\n\nDelivered-To: foo@example.org\n";
        assert!(!has_delivery_loop(body.as_bytes(), "foo@example.org").unwrap());
        // The prefix must be exactly "Delivered-To: " (one space).
        let odd = "Delivered-To:foo@example.org\n\n";
        assert!(!has_delivery_loop(odd.as_bytes(), "foo@example.org").unwrap());
        // A header line with a value after the address is not a match.
        let more = "Delivered-To: foo@example.org (x)\n\n";
        assert!(!has_delivery_loop(more.as_bytes(), "foo@example.org").unwrap());
        assert!(!has_delivery_loop("".as_bytes(), "foo@example.org").unwrap());
    }

    #[test]
    fn lines() {
        let mut seen = Vec::new();
        for_each_line("a\n\nb".as_bytes(), |l, nl| {
            seen.push((String::from_utf8_lossy(l).into_owned(), nl));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [("a".into(), true), ("".into(), true), ("b".into(), false)]
        );
        assert_eq!(c_string(b"ab\0cd"), b"ab");
    }
}
