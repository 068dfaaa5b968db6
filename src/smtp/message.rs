//! What happens to a message's lines between the DATA receiver and the queue file
//! (OpenSMTPD's `rfc5322.c` parser driven by `smtp_tx_dataline`).
//!
//! OpenSMTPD does not store the client's bytes verbatim. It walks the header block and
//!
//! * drops `Bcc:` headers (with their continuation lines), so blind copies stay blind;
//! * appends `@HOSTNAME` to every address without a domain in `To:`, `Cc:` and `From:`
//!   (inside `<>` when present; groups and unparsable values are left alone), and with
//!   `senders <t> masquerade` replaces the `From:` address by the envelope sender;
//! * counts `Received:` headers: at 100 the message is a routing loop;
//! * on local listeners adds `Date:` and `Message-ID:` at the end of the header block when
//!   the client sent none;
//! * refuses a message whose header block is not followed by an empty line (or the end), or
//!   whose header name is absurdly long: "not RFC 2822 compliant".
//!
//! Every other line is copied byte for byte, with LF line endings. The rules are kept exactly
//! (including the odd corners of the address rewriting), because they decide what recipients
//! see and whether a message is accepted at all.

/// The fixed headers the writer needs from the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageOptions {
    /// The listener's host name: appended to bare addresses, and the domain of an added
    /// `Message-ID:`.
    pub hostname: String,
    /// Local listener (loopback or socket): add missing `Date:` and `Message-ID:`.
    pub add_date_and_message_id: bool,
    /// The `Date:` value to add (the same text as the Received header's date).
    pub date: String,
    /// The unique number in an added `Message-ID: <%016x@HOSTNAME>`.
    pub message_id: u64,
    /// With `senders <t> masquerade` on an authenticated session: the envelope sender that
    /// replaces the `From:` address.
    pub masquerade_from: Option<String>,
}

/// Why the message was refused at the final dot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageError {
    /// 100 or more `Received:` headers: `500 5.4.6 Routing loop detected: Loop detected`.
    Loop,
    /// Broken header block: `550 5.7.1 ... Message is not RFC 2822 compliant`.
    NotCompliant,
}

/// A `Received:` count that means a mail loop (`MAX_HOPS_COUNT`).
pub const MAX_HOPS: u32 = 100;

/// Header names of this many bytes or more make the message non-compliant (the parser's
/// 1024-byte name buffer, NUL included).
const MAX_HEADER_NAME: usize = 1023;

/// An unfolded To/Cc/From value must stay below the parser's 64 KiB value buffer.
const MAX_ADDRESS_VALUE: usize = 65535;

/// OpenSMTPD's per-address rewrite buffer.
const ADDRESS_BUFFER: usize = 65535;

#[derive(Debug)]
enum HeaderKind {
    Copy,
    Drop,
    Address(Vec<u8>),
}

#[derive(Debug)]
enum State {
    BeforeHeader,
    InHeader { name: Vec<u8>, kind: HeaderKind },
    EndOfHeaders,
    Body,
    Done,
}

/// Rewrites one message's lines into the bytes stored in the queue.
#[derive(Debug)]
pub struct MessageWriter {
    opts: MessageOptions,
    state: State,
    received: u32,
    has_date: bool,
    has_message_id: bool,
    error: Option<MessageError>,
}

impl MessageWriter {
    /// A writer for one message.
    pub fn new(opts: MessageOptions) -> MessageWriter {
        MessageWriter {
            opts,
            state: State::BeforeHeader,
            received: 0,
            has_date: false,
            has_message_id: false,
            error: None,
        }
    }

    /// The first error seen; lines after it are ignored.
    pub fn error(&self) -> Option<MessageError> {
        self.error
    }

    /// Takes one message line (un-stuffed, no terminator) and appends what is to be stored.
    pub fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        self.step(Some(line), out);
    }

    /// Ends the message (the final dot): flushes a pending header, adds `Date:` /
    /// `Message-ID:` if the header block ended here, and reports the verdict.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), MessageError> {
        self.step(None, out);
        match self.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: MessageError) {
        self.error = Some(e);
    }

    fn step(&mut self, line: Option<&[u8]>, out: &mut Vec<u8>) {
        // Each pass either consumes the line (return) or changes state and looks again.
        for _ in 0..4 {
            if self.error.is_some() {
                return;
            }
            match &mut self.state {
                State::InHeader { name, kind } => {
                    if let Some(l) = line.filter(|l| matches!(l.first(), Some(b' ' | b'\t'))) {
                        match kind {
                            HeaderKind::Copy => {
                                out.extend_from_slice(l);
                                out.push(b'\n');
                            }
                            HeaderKind::Drop => {}
                            HeaderKind::Address(value) => {
                                if value.len() + 1 + l.len() >= MAX_ADDRESS_VALUE {
                                    self.fail(MessageError::NotCompliant);
                                    return;
                                }
                                value.push(b'\n');
                                value.extend_from_slice(l);
                            }
                        }
                        return;
                    }
                    if let HeaderKind::Address(value) = kind {
                        let masquerade = self
                            .opts
                            .masquerade_from
                            .as_deref()
                            .filter(|_| name.eq_ignore_ascii_case(b"From"));
                        rewrite_address_header(
                            name,
                            value,
                            self.opts.hostname.as_bytes(),
                            masquerade.map(str::as_bytes),
                            out,
                        );
                    }
                    self.state = State::BeforeHeader;
                }
                State::BeforeHeader => {
                    if let Some(l) = line
                        && let Some(colon) = l.iter().position(|&b| b == b':')
                    {
                        self.start_header(&l[..colon], &l[colon + 1..], out);
                        return;
                    }
                    if self.opts.add_date_and_message_id {
                        if !self.has_date {
                            out.extend_from_slice(format!("Date: {}\n", self.opts.date).as_bytes());
                        }
                        if !self.has_message_id {
                            out.extend_from_slice(
                                format!(
                                    "Message-ID: <{:016x}@{}>\n",
                                    self.opts.message_id, self.opts.hostname
                                )
                                .as_bytes(),
                            );
                        }
                    }
                    self.state = State::EndOfHeaders;
                }
                State::EndOfHeaders => {
                    match line {
                        None => self.state = State::Done,
                        Some([]) => {
                            out.push(b'\n');
                            self.state = State::Body;
                        }
                        Some(_) => self.fail(MessageError::NotCompliant),
                    }
                    return;
                }
                State::Body => {
                    match line {
                        None => self.state = State::Done,
                        Some(l) => {
                            out.extend_from_slice(l);
                            out.push(b'\n');
                        }
                    }
                    return;
                }
                State::Done => return,
            }
        }
    }

    fn start_header(&mut self, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        if name.len() >= MAX_HEADER_NAME {
            self.fail(MessageError::NotCompliant);
            return;
        }
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        let kind = if is("Bcc") {
            HeaderKind::Drop
        } else if is("To") || is("Cc") || is("From") {
            HeaderKind::Address(value.to_vec())
        } else {
            if is("Received") {
                self.received += 1;
                if self.received >= MAX_HOPS {
                    self.fail(MessageError::Loop);
                    return;
                }
            } else if !self.has_date && is("Date") {
                self.has_date = true;
            } else if !self.has_message_id && is("Message-Id") {
                self.has_message_id = true;
            }
            out.extend_from_slice(name);
            out.push(b':');
            out.extend_from_slice(value);
            out.push(b'\n');
            HeaderKind::Copy
        };
        self.state = State::InHeader {
            name: name.to_vec(),
            kind,
        };
    }
}

fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Tracks quoting the way OpenSMTPD's header scanners do: comments nest, quotes toggle, a
/// backslash escapes the next character outside comments and quotes.
#[derive(Default)]
struct Scan {
    escape: bool,
    quote: bool,
    comment: u32,
}

impl Scan {
    fn step(&mut self, c: u8) {
        if c == b'(' && !self.escape && !self.quote {
            self.comment += 1;
        }
        if c == b'"' && !self.escape && self.comment == 0 {
            self.quote = !self.quote;
        }
        if c == b')' && !self.escape && !self.quote && self.comment > 0 {
            self.comment -= 1;
        }
        self.escape = c == b'\\' && !self.escape && self.comment == 0 && !self.quote;
    }

    fn plain(&self) -> bool {
        !self.escape && self.comment == 0 && !self.quote
    }

    fn broken(&self) -> bool {
        self.escape || self.quote || self.comment > 0
    }
}

/// Writes `NAME:` and the value with each comma-separated address qualified
/// (`header_domain_append_callback`). The value keeps its folding.
fn rewrite_address_header(
    name: &[u8],
    value: &[u8],
    hostname: &[u8],
    masquerade: Option<&[u8]>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(name);
    out.push(b':');
    let mut scan = Scan::default();
    let mut buffer: Vec<u8> = Vec::new();
    let mut skip = false;
    let finish_address = |buffer: &mut Vec<u8>| {
        if buffer.len() + hostname.len() + 1 < ADDRESS_BUFFER {
            append_domain(buffer, hostname);
            if let Some(sender) = masquerade {
                replace_address(buffer, sender);
            }
        }
    };
    for line in value.split(|&b| b == b'\n') {
        for &c in line {
            scan.step(c);
            if c == b',' && !scan.escape && !scan.quote && scan.comment == 0 {
                if !skip {
                    finish_address(&mut buffer);
                }
                out.extend_from_slice(&buffer);
                out.push(b',');
                buffer.clear();
                skip = false;
            } else if skip {
                out.push(c);
            } else {
                buffer.push(c);
                if buffer.len() == ADDRESS_BUFFER - 1 {
                    out.extend_from_slice(&buffer);
                    buffer.clear();
                    skip = true;
                }
            }
        }
        if skip {
            out.push(b'\n');
        } else {
            buffer.push(b'\n');
            if buffer.len() == ADDRESS_BUFFER - 1 {
                out.extend_from_slice(&buffer);
                buffer.clear();
                skip = true;
            }
        }
    }
    if !buffer.is_empty() {
        finish_address(&mut buffer);
        out.extend_from_slice(&buffer);
    }
}

/// Appends `@domain` to one address unless it has a domain, is a group, is `<>` or empty,
/// or its quoting is broken (`header_append_domain_buffer`).
fn append_domain(buf: &mut Vec<u8>, domain: &[u8]) {
    let mut scan = Scan::default();
    let mut bracket = false;
    let (mut has_domain, mut has_bracket, mut has_group) = (false, false, false);
    let (mut pos_bracket, mut pos_component) = (0usize, 0usize);
    for (i, &c) in buf.iter().enumerate() {
        scan.step(c);
        if c == b'<' && scan.plain() && !bracket {
            bracket = true;
            has_bracket = true;
        }
        if c == b'>' && scan.plain() && bracket {
            bracket = false;
            pos_bracket = i;
        }
        if c == b'@' && scan.plain() {
            has_domain = true;
        }
        if c == b':' && scan.plain() {
            has_group = true;
        }
        if scan.comment == 0 && c != b')' && !is_c_space(c) {
            pos_component = i;
        }
    }
    if scan.broken() || bracket || has_domain || has_group {
        return;
    }
    let insert = if has_bracket {
        // Before the closing bracket, skipping blanks; `<>` stays empty.
        let mut p = pos_bracket;
        while p > 0 {
            p -= 1;
            if !is_c_space(buf[p]) {
                break;
            }
        }
        if buf.get(p) == Some(&b'<') {
            return;
        }
        p + 1
    } else {
        match buf.get(pos_component) {
            None => return,
            Some(&c) if is_c_space(c) => return,
            Some(_) => pos_component + 1,
        }
    };
    if buf.len() + 1 + domain.len() >= ADDRESS_BUFFER {
        return;
    }
    let mut with = Vec::with_capacity(buf.len() + domain.len() + 1);
    with.extend_from_slice(&buf[..insert]);
    with.push(b'@');
    with.extend_from_slice(domain);
    with.extend_from_slice(&buf[insert..]);
    *buf = with;
}

/// Replaces the address in one `From:` entry by the envelope sender
/// (`header_address_rewrite_buffer`, for `masquerade`).
fn replace_address(buf: &mut Vec<u8>, address: &[u8]) {
    let mut scan = Scan::default();
    let mut bracket = false;
    let (mut has_bracket, mut has_group) = (false, false);
    let (mut bracket_beg, mut bracket_end, mut component_end) = (0usize, 0usize, 0usize);
    for (i, &c) in buf.iter().enumerate() {
        scan.step(c);
        if c == b'<' && scan.plain() && !bracket {
            bracket = true;
            has_bracket = true;
            bracket_beg = i + 1;
        }
        if c == b'>' && scan.plain() && bracket {
            bracket = false;
            bracket_end = i;
        }
        if c == b':' && scan.plain() {
            has_group = true;
        }
        if scan.comment == 0 && c != b')' && !is_c_space(c) {
            component_end = i;
        }
    }
    if scan.broken() || bracket || has_group {
        return;
    }
    let (beg, end) = if has_bracket {
        (bracket_beg, bracket_end)
    } else if component_end == 0 {
        (0, 0)
    } else {
        let mut beg = component_end;
        loop {
            if buf[beg] == b')' || is_c_space(buf[beg]) {
                beg += 1;
                break;
            }
            if beg == 0 {
                break;
            }
            beg -= 1;
        }
        (beg, component_end + 1)
    };
    if end < beg || buf.len() - (end - beg) + address.len() >= ADDRESS_BUFFER {
        return;
    }
    let mut with = Vec::with_capacity(buf.len() + address.len());
    with.extend_from_slice(&buf[..beg]);
    with.extend_from_slice(address);
    with.extend_from_slice(&buf[end..]);
    *buf = with;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(local: bool) -> MessageOptions {
        MessageOptions {
            hostname: "vm".into(),
            add_date_and_message_id: local,
            date: "Sun, 22 Nov 2026 07:30:56 +0000 (UTC)".into(),
            message_id: 0xfc386eed5ef97003,
            masquerade_from: None,
        }
    }

    fn write(o: MessageOptions, lines: &[&str]) -> Result<String, MessageError> {
        let mut w = MessageWriter::new(o);
        let mut out = Vec::new();
        for l in lines {
            w.line(l.as_bytes(), &mut out);
        }
        w.finish(&mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn copies_headers_and_body_with_lf() {
        let m = write(
            opts(false),
            &["Subject: hi", "X-Long: a", "\tb", "", "body", ".x", ""],
        )
        .unwrap();
        assert_eq!(m, "Subject: hi\nX-Long: a\n\tb\n\nbody\n.x\n\n");
    }

    #[test]
    fn adds_date_and_message_id_on_local_listeners_only() {
        // Baseline §1.3: the client sent no Date, one was appended after its headers.
        let lines = [
            "From: <sender@client.example>",
            "To: <foo@bsdsx.fr>",
            "Subject: baseline dialogue test",
            "Message-ID: <dialogue-1795332656@client.example>",
            "",
            "Hello",
        ];
        assert_eq!(
            write(opts(true), &lines).unwrap(),
            "From: <sender@client.example>\nTo: <foo@bsdsx.fr>\nSubject: baseline dialogue test\n\
             Message-ID: <dialogue-1795332656@client.example>\n\
             Date: Sun, 22 Nov 2026 07:30:56 +0000 (UTC)\n\nHello\n"
        );
        assert_eq!(
            write(opts(true), &["Subject: x", "", "b"]).unwrap(),
            "Subject: x\nDate: Sun, 22 Nov 2026 07:30:56 +0000 (UTC)\n\
             Message-ID: <fc386eed5ef97003@vm>\n\nb\n"
        );
        assert_eq!(
            write(opts(false), &["Subject: x", "", "b"]).unwrap(),
            "Subject: x\n\nb\n"
        );
        // Header block ending at the final dot still gets them; so does an empty message.
        assert_eq!(
            write(opts(true), &[]).unwrap(),
            "Date: Sun, 22 Nov 2026 07:30:56 +0000 (UTC)\nMessage-ID: <fc386eed5ef97003@vm>\n"
        );
        assert_eq!(
            write(opts(true), &["date: x", "message-id: y"]).unwrap(),
            "date: x\nmessage-id: y\n"
        );
    }

    #[test]
    fn bcc_is_removed_with_its_continuations() {
        assert_eq!(
            write(opts(false), &["Bcc: a@b", " c@d", "Subject: s", "", "x"]).unwrap(),
            "Subject: s\n\nx\n"
        );
    }

    #[test]
    fn bare_addresses_get_the_hostname() {
        // Observed in spec §8.5.
        assert_eq!(
            write(
                opts(false),
                &["To: bob, carol", "Cc: dave <dave>", "From: me", ""]
            )
            .unwrap(),
            "To: bob@vm, carol@vm\nCc: dave <dave@vm>\nFrom: me@vm\n\n"
        );
        // Folding is kept; addresses with a domain, groups and `<>` are left alone.
        assert_eq!(
            write(
                opts(false),
                &[
                    "To: bob,",
                    "  carol@x.test",
                    "Cc: list: a, b;",
                    "From: <>",
                    ""
                ]
            )
            .unwrap(),
            "To: bob@vm,\n  carol@x.test\nCc: list: a, b;@vm\nFrom: <>\n\n",
            "the group test looks at one comma-separated piece at a time, as in OpenSMTPD"
        );
        assert_eq!(
            write(opts(false), &["To: \"Doe, John\" <jd>, (comment) x", ""]).unwrap(),
            "To: \"Doe, John\" <jd@vm>, (comment) x@vm\n\n"
        );
        assert_eq!(
            write(opts(false), &["To: \"unclosed", ""]).unwrap(),
            "To: \"unclosed\n\n"
        );
        assert_eq!(write(opts(false), &["To:", ""]).unwrap(), "To:\n\n");
    }

    #[test]
    fn masquerade_replaces_the_from_address() {
        let mut o = opts(false);
        o.masquerade_from = Some("real@example.org".into());
        assert_eq!(
            write(o.clone(), &["From: Fake <fake@evil.test>", "To: x", ""]).unwrap(),
            "From: Fake <real@example.org>\nTo: x@vm\n\n"
        );
        assert_eq!(
            write(o, &["From: me", ""]).unwrap(),
            "From: real@example.org\n\n"
        );
    }

    #[test]
    fn non_compliant_header_blocks() {
        for lines in [
            &["no header line", ""][..],
            &["Subject: a", "stray", "", "b"],
            &[" starts with space", ""],
        ] {
            assert_eq!(
                write(opts(false), lines),
                Err(MessageError::NotCompliant),
                "{lines:?}"
            );
        }
        // A message starting with an empty line is fine.
        assert_eq!(write(opts(false), &["", "body"]).unwrap(), "\nbody\n");
        let long = format!("{}: x", "N".repeat(MAX_HEADER_NAME));
        assert_eq!(
            write(opts(false), &[&long, ""]),
            Err(MessageError::NotCompliant)
        );
        let ok = format!("{}: x", "N".repeat(MAX_HEADER_NAME - 1));
        assert!(write(opts(false), &[&ok, ""]).is_ok());
    }

    #[test]
    fn hundred_received_headers_are_a_loop() {
        let mut lines: Vec<String> = (0..99).map(|i| format!("Received: hop {i}")).collect();
        lines.push(String::new());
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        assert!(write(opts(false), &refs).is_ok(), "99 are accepted");
        lines.insert(0, "Received: one more".into());
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        assert_eq!(write(opts(false), &refs), Err(MessageError::Loop));
    }

    #[test]
    fn huge_folded_address_header_is_refused() {
        let cont = format!(" {}", "a".repeat(40000));
        assert_eq!(
            write(opts(false), &["To: x", &cont, &cont, ""]),
            Err(MessageError::NotCompliant)
        );
    }
}
