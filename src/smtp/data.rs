//! The DATA receiver: client bytes after `354` → message lines, until the end-of-data marker.
//!
//! OpenSMTPD reads DATA like commands: a line ends at LF, one CR before the LF is dropped,
//! so a bare LF is a line end too, and a line holding only `.` ends the message. That last
//! part is what SMTP smuggling abuses: if a sending server passes a bare `\n.\n` (or
//! `\n.\r\n`, `\r\n.\n`) through while the receiver treats it as the end, text after it is
//! read as new SMTP commands — a second, forged message. This receiver keeps OpenSMTPD's
//! line handling (bare LF still separates lines, bare CR stays inside its line, a NUL cuts its
//! line short, a leading dot is removed) but ends the data **only** on `<CRLF>.<CRLF>`: a `.`
//! line that is itself terminated by CRLF and whose preceding line ended in CRLF (or that is
//! the first line after `354`). Any other lone-dot line is message content (un-stuffed like
//! every line, so it is stored as an empty line); nothing inside a message can ever be read
//! as a command.
//!
//! Limits, as OpenSMTPD: a line of 65535 bytes or more (CR included) stops the session; the
//! size is counted as line length + 1 per line, and once it exceeds `max-message-size` the
//! rest of the lines are dropped and the message is refused at the final dot.

/// Lines this long (or longer) are refused with `500 5.0.0 Line too long`.
pub const MAX_LINE: usize = 65535;

/// How far one call to [`DataReceiver::feed`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataOutcome {
    /// All input consumed; the message goes on.
    NeedMore,
    /// The end-of-data marker was consumed; bytes after it belong to the command stream.
    End,
    /// A line reached [`MAX_LINE`]; the session must reply `500 5.0.0 Line too long` and
    /// close.
    LineTooLong,
}

/// Result of [`DataReceiver::feed`]: how many input bytes were taken and why it stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feed {
    /// Bytes of the input that were consumed (buffered or turned into lines).
    pub consumed: usize,
    /// Why feeding stopped.
    pub outcome: DataOutcome,
}

/// Turns DATA bytes into message lines; see the module documentation for the rules.
#[derive(Clone, Debug)]
pub struct DataReceiver {
    partial: Vec<u8>,
    max_line: usize,
    after_crlf: bool,
    max_size: usize,
    size: usize,
    too_big: bool,
    finished: bool,
    /// Lines are handed on as received (dot-stuffed), for data-line filters.
    raw: bool,
    /// `-T smtp`: each line as received (still dot-stuffed), the final dot too, traced as
    /// `<<< [MSG] LINE`, as 6.8 traces them.
    trace: bool,
}

impl DataReceiver {
    /// A receiver for one message of at most `max_size` bytes (counted as OpenSMTPD does).
    pub fn new(max_size: usize) -> DataReceiver {
        DataReceiver::with_line_limit(max_size, MAX_LINE)
    }

    /// A receiver with a line limit other than OpenSMTPD's 65535 bytes.
    pub fn with_line_limit(max_size: usize, max_line: usize) -> DataReceiver {
        DataReceiver {
            partial: Vec::new(),
            max_line,
            after_crlf: true,
            max_size,
            size: 0,
            too_big: false,
            finished: false,
            raw: false,
            trace: false,
        }
    }

    /// A receiver that hands lines on as received, leading dots kept (for data-line
    /// filters, which get the client's lines dot-stuffed).
    pub fn raw(max_size: usize, max_line: usize) -> DataReceiver {
        DataReceiver {
            raw: true,
            ..DataReceiver::with_line_limit(max_size, max_line)
        }
    }

    /// Traces each line as received (`-T smtp`).
    pub fn traced(mut self, on: bool) -> DataReceiver {
        self.trace = on;
        self
    }

    /// Size counted so far: line length + 1 for every line except the final dot.
    pub fn size(&self) -> usize {
        self.size
    }

    /// True once the counted size exceeded the limit; later lines are dropped.
    pub fn too_big(&self) -> bool {
        self.too_big
    }

    /// True after the end-of-data marker was seen.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Bytes of an unterminated line held back for the next call.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Consumes `input`, calling `on_line` with each complete message line (without line
    /// terminator, un-stuffed, cut at the first NUL). Stops right after the end-of-data marker
    /// so the caller can hand the rest of the input back to the command parser.
    pub fn feed(&mut self, input: &[u8], mut on_line: impl FnMut(&[u8])) -> Feed {
        if self.finished {
            return Feed {
                consumed: 0,
                outcome: DataOutcome::End,
            };
        }
        let mut pos = 0;
        while pos < input.len() {
            let Some(lf) = input[pos..].iter().position(|&b| b == b'\n') else {
                self.partial.extend_from_slice(&input[pos..]);
                let outcome = if self.partial.len() >= self.max_line {
                    DataOutcome::LineTooLong
                } else {
                    DataOutcome::NeedMore
                };
                return Feed {
                    consumed: input.len(),
                    outcome,
                };
            };
            let end = pos + lf;
            let line: std::borrow::Cow<'_, [u8]> = if self.partial.is_empty() {
                std::borrow::Cow::Borrowed(&input[pos..end])
            } else {
                let mut joined = std::mem::take(&mut self.partial);
                joined.extend_from_slice(&input[pos..end]);
                std::borrow::Cow::Owned(joined)
            };
            pos = end + 1;
            if line.len() >= self.max_line {
                return Feed {
                    consumed: pos,
                    outcome: DataOutcome::LineTooLong,
                };
            }
            let (text, crlf) = match line.strip_suffix(b"\r") {
                Some(t) => (t, true),
                None => (&line[..], false),
            };
            if self.trace {
                let shown = text.split(|&b| b == 0).next().unwrap_or_default();
                tracing::trace!(target: "smtp", "<<< [MSG] {}", String::from_utf8_lossy(shown));
            }
            if crlf && self.after_crlf && text == b"." {
                self.finished = true;
                return Feed {
                    consumed: pos,
                    outcome: DataOutcome::End,
                };
            }
            self.after_crlf = crlf;
            let text = match text.iter().position(|&b| b == 0) {
                Some(nul) => &text[..nul],
                None => text,
            };
            self.size = self.size.saturating_add(text.len() + 1);
            if self.size > self.max_size {
                self.too_big = true;
            }
            if !self.too_big {
                if self.raw {
                    on_line(text);
                } else {
                    on_line(text.strip_prefix(b".").unwrap_or(text));
                }
            }
        }
        Feed {
            consumed: input.len(),
            outcome: DataOutcome::NeedMore,
        }
    }
}

/// Runs `input` through a fresh receiver and returns the message as stored (each line followed
/// by LF) and how feeding ended. Convenient for tests and fuzzing.
pub fn receive(input: &[u8], max_size: usize) -> (Vec<u8>, Feed) {
    let mut rx = DataReceiver::new(max_size);
    let mut message = Vec::new();
    let feed = rx.feed(input, |line| {
        message.extend_from_slice(line);
        message.push(b'\n');
    });
    (message, feed)
}

/// Entry point for a fuzzer: feeds `data` in two uneven pieces and whole, and checks that the
/// split does not change the result. Must never panic.
pub fn fuzz_data(data: &[u8]) {
    let (whole, whole_feed) = receive(data, 1 << 20);
    let cut = data.len() / 3;
    let mut rx = DataReceiver::new(1 << 20);
    let mut pieces = Vec::new();
    let first = rx.feed(&data[..cut], |l| {
        pieces.extend_from_slice(l);
        pieces.push(b'\n');
    });
    let outcome = if first.outcome == DataOutcome::NeedMore {
        let second = rx.feed(&data[cut..], |l| {
            pieces.extend_from_slice(l);
            pieces.push(b'\n');
        });
        (second.outcome, cut + second.consumed)
    } else {
        (first.outcome, first.consumed)
    };
    if whole_feed.outcome == DataOutcome::End {
        assert_eq!(outcome, (DataOutcome::End, whole_feed.consumed));
        assert_eq!(pieces, whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = 36700160;

    fn stored(input: &[u8]) -> (String, Feed) {
        let (m, f) = receive(input, BIG);
        (String::from_utf8_lossy(&m).into_owned(), f)
    }

    #[test]
    fn dot_unstuffing_and_end_marker() {
        let (m, f) = stored(b"hi\r\n..\r\n.a\r\n...x\r\n.\r\nQUIT\r\n");
        assert_eq!(m, "hi\n.\na\n..x\n");
        assert_eq!(f.outcome, DataOutcome::End);
        assert_eq!(f.consumed, b"hi\r\n..\r\n.a\r\n...x\r\n.\r\n".len());
    }

    #[test]
    fn empty_message() {
        let (m, f) = stored(b".\r\n");
        assert_eq!(
            (m.as_str(), f.outcome, f.consumed),
            ("", DataOutcome::End, 3)
        );
    }

    #[test]
    fn bare_lf_separates_lines_like_opensmtpd() {
        let (m, f) = stored(b"Subject: x\nTo: y\r\n\nbody\nmore\r\n.\r\n");
        assert_eq!(m, "Subject: x\nTo: y\n\nbody\nmore\n");
        assert_eq!(f.outcome, DataOutcome::End);
    }

    #[test]
    fn bare_cr_stays_inside_its_line_and_nul_truncates() {
        let (m, _) = stored(b"a\rb\r\nc\0hidden\r\nd\r\r\n.\r\n");
        assert_eq!(m, "a\rb\nc\nd\r\n");
    }

    /// SMTP smuggling battery (SEC Consult's sequences and the ones in the brief): each input
    /// holds one real message with a fake end-of-data and a forged second transaction inside.
    /// The receiver must end exactly once, at the real `\r\n.\r\n`, keep the forged commands
    /// as message text, and leave only what follows the real end for the command parser.
    #[test]
    fn smuggling_battery_ends_only_on_crlf_dot_crlf() {
        let fakes: &[(&str, &[u8])] = &[
            ("LF.LF", b"\n.\n"),
            ("LF.CRLF", b"\n.\r\n"),
            ("CR.CRLF", b"\r.\r\n"),
            ("CRLF.CR", b"\r\n.\r"),
            ("CR.CR", b"\r.\r"),
            ("CRLF.LF", b"\r\n.\n"),
            ("CR.LF", b"\r.\n"),
            ("LF.CR", b"\n.\r"),
            ("CRCRLF.CRCRLF", b"\r\r\n.\r\r\n"),
            ("CRLF.CRCRLF", b"\r\n.\r\r\n"),
            ("CRLF.NULCRLF", b"\r\n.\0\r\n"),
            ("CRLF SP.CRLF", b"\r\n .\r\n"),
            ("CRLF.SPCRLF", b"\r\n. \r\n"),
        ];
        let forged = b"MAIL FROM:<admin@victim.test>\r\nRCPT TO:<target@victim.test>\r\nDATA\r\nFrom: admin@victim.test\r\n\r\nforged\r\n";
        for (name, fake) in fakes {
            let mut input = b"From: a@b.test\r\nSubject: smuggle\r\n\r\nfirst".to_vec();
            input.extend_from_slice(fake);
            input.extend_from_slice(forged);
            input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
            // Whole, and byte by byte: chunking must not matter.
            let (m, f) = stored(&input);
            assert_eq!(f.outcome, DataOutcome::End, "{name}");
            assert_eq!(
                &input[f.consumed..],
                b"QUIT\r\n",
                "{name}: one message only"
            );
            assert!(
                m.contains("MAIL FROM:<admin@victim.test>\n"),
                "{name}: forged text stays data"
            );
            assert!(m.contains("\nforged\n"), "{name}");

            let mut rx = DataReceiver::new(BIG);
            let mut ends = 0;
            let mut rest = None;
            for (i, b) in input.iter().enumerate() {
                let feed = rx.feed(std::slice::from_ref(b), |_| {});
                if feed.outcome == DataOutcome::End && feed.consumed == 1 {
                    ends += 1;
                    rest = Some(i + 1);
                }
            }
            assert_eq!(ends, 1, "{name}");
            assert_eq!(rest, Some(f.consumed), "{name}");
        }
    }

    #[test]
    fn lone_dots_that_are_not_the_end_become_empty_lines() {
        assert_eq!(stored(b"a\n.\nb\r\n.\r\n").0, "a\n\nb\n");
        assert_eq!(stored(b"a\r\n.\nb\r\n.\r\n").0, "a\n\nb\n");
        assert_eq!(stored(b"a\n.\r\nb\r\n.\r\n").0, "a\n\nb\n");
        // After a bare-LF line, even a CRLF-terminated dot is content; the next one ends.
        let (m, f) = stored(b"a\n.\r\n.\r\nQUIT\r\n");
        assert_eq!((m.as_str(), f.consumed), ("a\n\n", 8));
    }

    #[test]
    fn size_accounting_as_opensmtpd() {
        let mut rx = DataReceiver::new(10);
        let mut lines = 0;
        let f = rx.feed(b"12345678\r\n", |_| lines += 1);
        assert_eq!((rx.size(), rx.too_big(), lines), (9, false, 1));
        // 9 + 2 = 11 > 10: this line and every later one is dropped.
        rx.feed(b"x\r\nyy\r\n", |_| lines += 1);
        assert_eq!((rx.size(), rx.too_big(), lines), (14, true, 1));
        let f2 = rx.feed(b".\r\n", |_| lines += 1);
        assert_eq!(f.outcome, DataOutcome::NeedMore);
        assert_eq!(f2.outcome, DataOutcome::End);
        assert_eq!(rx.size(), 14, "the final dot is not counted");
        // Exactly at the limit is fine.
        let mut rx = DataReceiver::new(9);
        rx.feed(b"12345678\r\n", |_| {});
        assert!(!rx.too_big());
    }

    #[test]
    fn line_length_limit() {
        let mut line = vec![b'a'; MAX_LINE - 2];
        line.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(stored(&line).1.outcome, DataOutcome::End);
        let mut line = vec![b'a'; MAX_LINE - 1];
        line.extend_from_slice(b"\r\n");
        assert_eq!(
            stored(&line).1.outcome,
            DataOutcome::LineTooLong,
            "the CR counts"
        );
        let mut rx = DataReceiver::new(BIG);
        assert_eq!(
            rx.feed(&vec![b'a'; MAX_LINE - 1], |_| {}).outcome,
            DataOutcome::NeedMore
        );
        assert_eq!(rx.feed(b"b", |_| {}).outcome, DataOutcome::LineTooLong);
    }

    #[test]
    fn finished_receiver_takes_nothing_more() {
        let mut rx = DataReceiver::new(BIG);
        assert_eq!(rx.feed(b".\r\n", |_| {}).outcome, DataOutcome::End);
        assert!(rx.finished());
        assert_eq!(
            rx.feed(b"more\r\n", |_| panic!("no lines after the end")),
            Feed {
                consumed: 0,
                outcome: DataOutcome::End
            }
        );
    }
}
