//! `sendmail(8)`: the local submission client, as OpenSMTPD's `enqueue`.
//!
//! Programs that send mail (cron, mail(1), scripts) run `sendmail` with the message on
//! stdin. It speaks plain SMTP, without pipelining, over the daemon's local enqueue socket,
//! where the session starts authenticated as a local submission. Before the message it adds
//! the headers a bare message lacks (`From:` naming the submitting user, `Date:`); the daemon
//! adds `Message-ID:` on that listener.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// `EX_USAGE`: bad command line.
pub const EX_USAGE: i32 = 64;
/// `EX_UNAVAILABLE`: the message could not be read or written.
pub const EX_UNAVAILABLE: i32 = 69;
/// `EX_SOFTWARE`: the daemon refused a command (OpenSMTPD's status for that case).
pub const EX_SOFTWARE: i32 = 70;
/// `EX_TEMPFAIL`: the daemon is not reachable; try again later.
pub const EX_TEMPFAIL: i32 = 75;

/// What the command line asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Submission {
    /// `-f`/`-r`: the envelope sender; else the login name.
    pub sender: Option<String>,
    /// `-F`: the full name put in an added `From:`.
    pub full_name: Option<String>,
    /// `-t`: recipients also come from `To:`, `Cc:` and `Bcc:` (and `Bcc:` is removed).
    pub recipients_from_headers: bool,
    /// `-N`: DSN NOTIFY for every recipient.
    pub notify: Option<String>,
    /// `-R`: DSN RET.
    pub ret: Option<String>,
    /// `-V`: DSN ENVID.
    pub envid: Option<String>,
    /// `-v`: print the dialogue on stderr.
    pub verbose: bool,
    /// Recipients named on the command line.
    pub recipients: Vec<String>,
}

/// Why the command line cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError(pub String, pub i32);

/// Parse sendmail's options (getopt style: `-fADDR` or `-f ADDR`, flags may be grouped).
/// Options that only matter to Sendmail are accepted and ignored, as OpenSMTPD does.
pub fn parse_args(args: &[String]) -> Result<Submission, UsageError> {
    let mut s = Submission::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            s.recipients.extend(args[i..].iter().cloned());
            break;
        }
        let Some(flags) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
            s.recipients.push(arg.clone());
            continue;
        };
        for (at, c) in flags.char_indices() {
            let takes_value = matches!(
                c,
                'f' | 'r' | 'F' | 'N' | 'R' | 'V' | 'o' | 'b' | 'B' | 'e' | 'p' | 'L' | 'A'
            );
            if !takes_value {
                match c {
                    't' => s.recipients_from_headers = true,
                    'v' => s.verbose = true,
                    'i' | 'm' | 'x' | 'E' | 'S' => {}
                    'q' => return Err(UsageError("sendmail: -q is not supported".into(), 70)),
                    _ => {
                        return Err(UsageError(
                            format!("sendmail: unknown option -- {c}"),
                            EX_USAGE,
                        ));
                    }
                }
                continue;
            }
            let rest = &flags[at + c.len_utf8()..];
            let value = if !rest.is_empty() {
                rest.to_string()
            } else if i < args.len() {
                i += 1;
                args[i - 1].clone()
            } else {
                return Err(UsageError(
                    format!("sendmail: option requires an argument -- {c}"),
                    EX_USAGE,
                ));
            };
            match c {
                'f' | 'r' => s.sender = Some(value),
                'F' => s.full_name = Some(value),
                'N' => s.notify = Some(value),
                'R' => s.ret = Some(value),
                'V' => s.envid = Some(value),
                'b' if value == "i" => {
                    return Err(UsageError(
                        "sendmail: -bi (newaliases) is not supported".into(),
                        EX_USAGE,
                    ));
                }
                _ => {}
            }
            break;
        }
    }
    Ok(s)
}

/// The message split into its header lines (continuations joined to their field) and body.
struct Parsed {
    headers: Vec<String>,
    body: Vec<String>,
}

fn split_message(raw: &[u8]) -> Parsed {
    let text = String::from_utf8_lossy(raw);
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let lines: Vec<String> = lines
        .into_iter()
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect();
    let mut headers: Vec<String> = Vec::new();
    let mut n = 0;
    for line in &lines {
        if line.is_empty() {
            break;
        }
        let continuation = line.starts_with([' ', '\t']);
        let is_field = !continuation
            && line
                .split_once(':')
                .is_some_and(|(name, _)| !name.is_empty() && !name.contains([' ', '\t']));
        match headers.last_mut() {
            Some(last) if continuation => {
                last.push('\n');
                last.push_str(line);
            }
            _ if is_field => headers.push(line.clone()),
            // Not a header: the body starts here.
            _ => break,
        }
        n += 1;
    }
    // The empty separator line belongs to neither part.
    let body_start = if lines.get(n).is_some_and(|l| l.is_empty()) {
        n + 1
    } else {
        n
    };
    Parsed {
        headers,
        body: lines[body_start.min(lines.len())..].to_vec(),
    }
}

fn field_name(header: &str) -> String {
    header
        .split_once(':')
        .map(|(n, _)| n.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// The addresses of an address-list header value (`a@b, "Name" <c@d>, (comment) e@f`).
pub fn header_addresses(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut cur, mut quoted, mut angle, mut comment) = (String::new(), false, false, 0u32);
    for c in value.chars() {
        match c {
            '"' if comment == 0 => quoted = !quoted,
            '(' if !quoted => comment += 1,
            ')' if !quoted && comment > 0 => comment -= 1,
            '<' if !quoted && comment == 0 => angle = true,
            '>' if !quoted && comment == 0 => angle = false,
            ',' if !quoted && !angle && comment == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts
        .iter()
        .filter_map(|p| {
            let addr = match (p.find('<'), p.rfind('>')) {
                (Some(a), Some(b)) if a < b => p[a + 1..b].to_string(),
                _ => {
                    // Drop comments and a group name (`undisclosed:`).
                    let mut out = String::new();
                    let mut depth = 0u32;
                    for c in p.chars() {
                        match c {
                            '(' => depth += 1,
                            ')' => depth = depth.saturating_sub(1),
                            _ if depth == 0 => out.push(c),
                            _ => {}
                        }
                    }
                    let out = out.rsplit(':').next().unwrap_or("").to_string();
                    out.trim_end_matches(';').to_string()
                }
            };
            let addr = addr.trim().to_string();
            (!addr.is_empty()).then_some(addr)
        })
        .collect()
}

/// The SMTP dialogue and message a submission sends, worked out before connecting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Envelope sender.
    pub sender: String,
    /// Envelope recipients.
    pub recipients: Vec<String>,
    /// The message as sent after DATA: CRLF lines, dot-stuffed, without the final dot.
    pub data: Vec<u8>,
}

/// Who runs sendmail: login name and full name (from the password file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitter {
    /// Login name.
    pub login: String,
    /// Full name (the first GECOS field), if any.
    pub gecos: Option<String>,
}

impl Submitter {
    /// The user running this process: `LOGNAME`/`USER` if they name the real uid's account,
    /// else the account of the real uid.
    pub fn current() -> Submitter {
        let uid = nix::unistd::getuid();
        let user = nix::unistd::User::from_uid(uid).ok().flatten();
        let gecos = user.as_ref().and_then(|u| {
            let g = u.gecos.to_string_lossy();
            let first = g.split(',').next().unwrap_or("").trim().to_string();
            (!first.is_empty()).then_some(first)
        });
        let login = user
            .map(|u| u.name)
            .or_else(|| std::env::var("LOGNAME").ok())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| uid.to_string());
        Submitter { login, gecos }
    }
}

fn qualify(addr: &str, host: &str) -> String {
    if addr.is_empty() || addr.contains('@') {
        addr.to_string()
    } else {
        format!("{addr}@{host}")
    }
}

/// Build the envelope and message: recipients (command line, plus headers with `-t`), the
/// added `From:` and `Date:` when missing, `Bcc:` removed with `-t`, CRLF line ends and
/// dot-stuffing. `host` qualifies bare names, `date` is the text of an added `Date:`.
pub fn prepare(
    sub: &Submission,
    who: &Submitter,
    raw: &[u8],
    host: &str,
    date: &str,
) -> Result<Envelope, UsageError> {
    let parsed = split_message(raw);
    let sender = qualify(sub.sender.as_deref().unwrap_or(&who.login), host);
    let mut recipients: Vec<String> = sub.recipients.iter().map(|r| qualify(r, host)).collect();
    let mut headers = Vec::new();
    let (mut has_from, mut has_date) = (false, false);
    for h in &parsed.headers {
        let name = field_name(h);
        match name.as_str() {
            "from" => has_from = true,
            "date" => has_date = true,
            _ => {}
        }
        if sub.recipients_from_headers && matches!(name.as_str(), "to" | "cc" | "bcc") {
            let value = h.split_once(':').map(|(_, v)| v).unwrap_or("");
            recipients.extend(header_addresses(value).iter().map(|r| qualify(r, host)));
            if name == "bcc" {
                continue;
            }
        }
        headers.push(h.clone());
    }
    if recipients.is_empty() {
        return Err(UsageError("sendmail: no recipients".into(), EX_USAGE));
    }
    let mut out = Vec::new();
    let mut line = |l: &str| {
        if l.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    if !has_from {
        let name = sub.full_name.as_deref().or(who.gecos.as_deref());
        match name {
            Some(n) => line(&format!("From: {n} <{sender}>")),
            None => line(&format!("From: <{sender}>")),
        }
    }
    if !has_date {
        line(&format!("Date: {date}"));
    }
    for h in &headers {
        for l in h.split('\n') {
            line(l);
        }
    }
    line("");
    for l in &parsed.body {
        line(l);
    }
    Ok(Envelope {
        sender,
        recipients,
        data: out,
    })
}

/// Why a submission failed.
#[derive(Debug)]
pub enum SubmitError {
    /// The daemon could not be reached.
    Unreachable(std::io::Error),
    /// The connection broke.
    Io(std::io::Error),
    /// The daemon refused a command; the reply line.
    Refused(String),
}

impl SubmitError {
    /// The message and exit status of sendmail for this error.
    pub fn report(&self, socket: &Path) -> (String, i32) {
        match self {
            SubmitError::Unreachable(e) => (
                format!("sendmail: cannot connect to {}: {e}", socket.display()),
                EX_TEMPFAIL,
            ),
            SubmitError::Io(e) => (format!("sendmail: {e}"), EX_TEMPFAIL),
            SubmitError::Refused(r) => (format!("sendmail: command failed: {r}"), EX_SOFTWARE),
        }
    }
}

/// An SMTP client over the enqueue socket.
struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    verbose: bool,
}

impl Client {
    /// Read one (possibly multi-line) reply; returns its code and its last line.
    fn reply(&mut self) -> Result<(u16, String), SubmitError> {
        // Bound: a reply of more than 100 lines is not a reply.
        for _ in 0..100 {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).map_err(SubmitError::Io)?;
            if n == 0 {
                return Err(SubmitError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed by smtpd",
                )));
            }
            let line = line.trim_end().to_string();
            if self.verbose {
                eprintln!("<<< {line}");
            }
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let last = line.as_bytes().get(3) != Some(&b'-');
            match code {
                Some(code) if last => return Ok((code, line)),
                Some(_) => continue,
                None => return Err(SubmitError::Refused(line)),
            }
        }
        Err(SubmitError::Refused("reply too long".into()))
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), SubmitError> {
        self.writer.write_all(bytes).map_err(SubmitError::Io)
    }

    /// Send a command and require a reply of class `class` (2 or 3).
    fn command(&mut self, cmd: &str, class: u16) -> Result<String, SubmitError> {
        if self.verbose {
            eprintln!(">>> {cmd}");
        }
        self.send(format!("{cmd}\r\n").as_bytes())?;
        let (code, line) = self.reply()?;
        if code / 100 != class {
            return Err(SubmitError::Refused(line));
        }
        Ok(line)
    }
}

/// Connect to the enqueue socket and read the banner; returns the client and the server's
/// name (from `220 NAME ESMTP ...`), which qualifies bare addresses.
fn connect(socket: &Path, verbose: bool) -> Result<(Client, String), SubmitError> {
    let stream = UnixStream::connect(socket).map_err(SubmitError::Unreachable)?;
    let limit = Some(Duration::from_secs(300));
    let _ = stream.set_read_timeout(limit);
    let _ = stream.set_write_timeout(limit);
    let writer = stream.try_clone().map_err(SubmitError::Io)?;
    let mut c = Client {
        reader: BufReader::new(stream),
        writer,
        verbose,
    };
    let (code, banner) = c.reply()?;
    if code != 220 {
        return Err(SubmitError::Refused(banner));
    }
    let name = banner
        .get(4..)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("localhost")
        .to_string();
    Ok((c, name))
}

/// Submit the message read from `raw`, as `sendmail` with `sub` does: connect, build the
/// envelope (qualifying with the server's name), then EHLO, MAIL, RCPT..., DATA, QUIT.
pub fn submit(
    socket: &Path,
    sub: &Submission,
    who: &Submitter,
    raw: &[u8],
    date: &str,
) -> Result<Envelope, SubmitError> {
    let (mut c, host) = connect(socket, sub.verbose)?;
    let env =
        prepare(sub, who, raw, &host, date).map_err(|UsageError(m, _)| SubmitError::Refused(m))?;
    c.command("EHLO localhost", 2)?;
    // As OpenSMTPD's enqueue: `MAIL FROM:<s> [RET=r ][ENVID=e ]`, `RCPT TO:<r> [NOTIFY=n ]`,
    // always with a trailing space.
    let mut mail = format!("MAIL FROM:<{}> ", env.sender);
    if let Some(r) = &sub.ret {
        mail.push_str(&format!("RET={r} "));
    }
    if let Some(v) = &sub.envid {
        mail.push_str(&format!("ENVID={v} "));
    }
    c.command(&mail, 2)?;
    for r in &env.recipients {
        let mut rcpt = format!("RCPT TO:<{r}> ");
        if let Some(n) = &sub.notify {
            rcpt.push_str(&format!("NOTIFY={n} "));
        }
        c.command(&rcpt, 2)?;
    }
    c.command("DATA", 3)?;
    let mut data = env.data.clone();
    data.extend_from_slice(b".\r\n");
    c.send(&data)?;
    let (code, line) = c.reply()?;
    if code / 100 != 2 {
        return Err(SubmitError::Refused(line));
    }
    let _ = c.command("QUIT", 2);
    Ok(env)
}

/// The whole `sendmail` command: arguments (without argv\[0\]), the socket, the message
/// reader. Returns the exit status; messages go to stderr.
pub fn run(args: &[String], socket: &Path, input: &mut dyn std::io::Read, date: &str) -> i32 {
    let sub = match parse_args(args) {
        Ok(s) => s,
        Err(UsageError(m, code)) => {
            eprintln!("{m}");
            return code;
        }
    };
    let mut raw = Vec::new();
    if let Err(e) = input.read_to_end(&mut raw) {
        eprintln!("sendmail: read error on stdin: {e}");
        return EX_UNAVAILABLE;
    }
    match submit(socket, &sub, &Submitter::current(), &raw, date) {
        Ok(_) => 0,
        Err(e) => {
            let (m, code) = e.report(socket);
            eprintln!("{m}");
            code
        }
    }
}

/// The current date as in an added `Date:` header.
pub fn date_now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (off, zone) = super::server::local_offset(t);
    super::received::time_to_text(t, off, &zone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn who() -> Submitter {
        Submitter {
            login: "root".into(),
            gecos: Some("Charlie Root".into()),
        }
    }

    #[test]
    fn options_as_getopt() {
        let s = parse_args(&args(&[
            "-oi",
            "-t",
            "-fbob@x.test",
            "-F",
            "Bob B",
            "-i",
            "carol",
        ]))
        .unwrap();
        assert_eq!(s.sender.as_deref(), Some("bob@x.test"));
        assert_eq!(s.full_name.as_deref(), Some("Bob B"));
        assert!(s.recipients_from_headers);
        assert_eq!(s.recipients, vec!["carol".to_string()]);
        let s = parse_args(&args(&["-ti", "-r", "a@b", "--", "-odd"])).unwrap();
        assert_eq!(s.sender.as_deref(), Some("a@b"));
        assert_eq!(s.recipients, vec!["-odd".to_string()]);
        assert_eq!(parse_args(&args(&["-q"])).unwrap_err().1, 70);
        assert_eq!(parse_args(&args(&["-f"])).unwrap_err().1, EX_USAGE);
        assert_eq!(parse_args(&args(&["-Z"])).unwrap_err().1, EX_USAGE);
    }

    #[test]
    fn adds_from_and_date_qualifies_and_dot_stuffs() {
        let sub = parse_args(&args(&["bob"])).unwrap();
        let e = prepare(
            &sub,
            &who(),
            b"Subject: hi\n\n.leading dot\nend\n",
            "mx.test",
            "D",
        )
        .unwrap();
        assert_eq!(e.sender, "root@mx.test");
        assert_eq!(e.recipients, vec!["bob@mx.test".to_string()]);
        assert_eq!(
            String::from_utf8(e.data).unwrap(),
            "From: Charlie Root <root@mx.test>\r\nDate: D\r\nSubject: hi\r\n\r\n..leading dot\r\nend\r\n"
        );
    }

    #[test]
    fn keeps_existing_from_and_date() {
        let sub = parse_args(&args(&["-f", "a@x.test", "b@y.test"])).unwrap();
        let e = prepare(
            &sub,
            &who(),
            b"From: A <a@x.test>\r\nDate: today\r\n\r\nbody\r\n",
            "mx.test",
            "D",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(e.data).unwrap(),
            "From: A <a@x.test>\r\nDate: today\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn recipients_from_headers_and_bcc_removed() {
        let sub = parse_args(&args(&["-t", "-F", "X"])).unwrap();
        let e = prepare(
            &sub,
            &who(),
            b"To: \"Doe, J\" <j@a.test>, k@b.test (K)\nCc: undisclosed: l;\nBcc: hidden@c.test,\n  more@c.test\nSubject: s\n\nx\n",
            "mx.test",
            "D",
        )
        .unwrap();
        assert_eq!(
            e.recipients,
            vec![
                "j@a.test",
                "k@b.test",
                "l@mx.test",
                "hidden@c.test",
                "more@c.test"
            ]
        );
        let text = String::from_utf8(e.data).unwrap();
        assert!(!text.contains("Bcc") && !text.contains("hidden"), "{text}");
        assert!(text.starts_with("From: X <root@mx.test>\r\n"), "{text}");
        assert!(
            prepare(&parse_args(&[]).unwrap(), &who(), b"\n", "h", "D").is_err(),
            "no recipients"
        );
    }
}
