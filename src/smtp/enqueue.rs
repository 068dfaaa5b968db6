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
    /// How many bytes at the head of `data` are header lines sendmail added (`From:`,
    /// `Date:`, MIME fields, the blank line before a header-less body).
    pub added: usize,
}

impl Envelope {
    /// The text of `dead.letter` for a message that could not be submitted, as OpenSMTPD's
    /// enqueue writes it: the header lines sendmail added, then the message exactly as it
    /// was read (not dot-stuffed, not re-encoded), then an empty line.
    pub fn dead_letter(&self, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.added + raw.len() + 2);
        for line in self.data[..self.added.min(self.data.len())].split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
            out.push(b'\n');
        }
        out.extend_from_slice(raw);
        if !raw.is_empty() && !raw.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.push(b'\n');
        out
    }
}

/// Who runs sendmail: login name and full name (from the password file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitter {
    /// Login name.
    pub login: String,
    /// Full name (the first GECOS field), if any.
    pub gecos: Option<String>,
    /// Home directory, where `dead.letter` goes.
    pub home: Option<std::path::PathBuf>,
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
        // `$HOME` when set (as mail(1) does for dead.letter), else the account's.
        let home = std::env::var_os("HOME")
            .map(std::path::PathBuf::from)
            .filter(|h| h.is_absolute())
            .or_else(|| user.as_ref().map(|u| u.dir.clone()));
        let login = user
            .map(|u| u.name)
            .or_else(|| std::env::var("LOGNAME").ok())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| uid.to_string());
        Submitter { login, gecos, home }
    }
}

fn qualify(addr: &str, host: &str) -> String {
    if addr.is_empty() || addr.contains('@') {
        addr.to_string()
    } else {
        format!("{addr}@{host}")
    }
}

/// Lines this long (with their newline) or longer make sendmail re-encode the body as
/// quoted-printable, as OpenSMTPD's enqueue does (`LINESPLIT`).
const LINESPLIT: usize = 990;

/// The header fields enqueue recognises; a message without any of them is all body.
const KEYWORDS: [&str; 12] = [
    "from:",
    "to:",
    "cc:",
    "bcc:",
    "subject:",
    "date:",
    "message-id:",
    "mime-version:",
    "content-type:",
    "content-disposition:",
    "content-transfer-encoding:",
    "user-agent:",
];

fn keyword(line: &[u8]) -> Option<&'static str> {
    KEYWORDS
        .iter()
        .copied()
        .find(|k| line.len() > k.len() && line[..k.len()].eq_ignore_ascii_case(k.as_bytes()))
}

fn starts_with_ci(line: &[u8], prefix: &str) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Quoted-printable (RFC 2045 §6.7) of one line, soft breaks before column 76, a dot at the
/// start of a continuation doubled for DATA.
fn qp_line(out: &mut Vec<u8>, line: &[u8]) {
    let mut col = 0usize;
    for (i, &b) in line.iter().enumerate() {
        let last = i + 1 == line.len();
        let literal = match b {
            b' ' | b'\t' => !last,
            33..=60 | 62..=126 => true,
            _ => false,
        };
        let size = if literal { 1 } else { 3 };
        if col + size + 1 > 76 {
            out.extend_from_slice(b"=\r\n");
            if b == b'.' {
                out.push(b'.');
            }
            col = 0;
        }
        col += size;
        if literal {
            out.push(b);
        } else {
            out.extend_from_slice(format!("={b:02X}").as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// The full name of an added `From:`: the first GECOS field, `&` standing for the login
/// name with a capital.
fn gecos_name(gecos: &str, login: &str) -> String {
    let field = gecos.split(',').next().unwrap_or("");
    match field.split_once('&') {
        Some((a, b)) => {
            let mut cap = login.chars();
            let login = match cap.next() {
                Some(c) => c.to_uppercase().chain(cap).collect::<String>(),
                None => String::new(),
            };
            format!("{a}{login}{b}")
        }
        None => field.to_string(),
    }
}

/// Build the envelope and message as OpenSMTPD's enqueue does: the sender is `-f`, else the
/// last address of `From:`, else the login name; recipients from the command line (split on
/// commas), plus `To:`/`Cc:`/`Bcc:` with `-t` (`Bcc:` removed); `From:` and `Date:` added when
/// missing; a message without any known header field becomes the body; mbox `From ` and
/// `Return-Path:` lines dropped from the header; lines of 990 bytes or more turn the body into
/// quoted-printable with MIME headers. CRLF line ends and dot-stuffing. `host` qualifies bare
/// names, `date` is the text of an added `Date:`.
pub fn prepare(
    sub: &Submission,
    who: &Submitter,
    raw: &[u8],
    host: &str,
    date: &str,
) -> Result<Envelope, UsageError> {
    let mut lines: Vec<&[u8]> = raw.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let lines: Vec<&[u8]> = lines
        .into_iter()
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();

    // First pass: which fields the header has, the address fields, long lines.
    let (mut header_done, mut header_seen, mut need_linesplit) = (false, false, false);
    let mut cur: Option<&'static str> = None;
    let mut seen: Vec<&'static str> = Vec::new();
    let mut from_values: Vec<String> = Vec::new();
    let mut rcpt_values: Vec<String> = Vec::new();
    let mut keep = vec![true; lines.len()];
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() {
            header_done = true;
        }
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            cur = None;
        }
        if line.len() + 1 >= LINESPLIT {
            need_linesplit = true;
        }
        if !header_done && cur.is_none() {
            cur = keyword(line);
            if let Some(k) = cur {
                header_seen = true;
                seen.push(k);
            }
        }
        let text = String::from_utf8_lossy(line);
        let value = if continuation {
            text.to_string()
        } else {
            text.split_once(':')
                .map(|(_, v)| v.to_string())
                .unwrap_or_default()
        };
        match cur {
            Some("from:") => from_values.push(value),
            Some("to:" | "cc:" | "bcc:") if sub.recipients_from_headers => rcpt_values.push(value),
            _ => {}
        }
        if cur == Some("bcc:") {
            keep[i] = false;
        }
    }
    let saw = |k: &str| seen.contains(&k);
    let noheader = !header_seen;

    let fake_from = sub.sender.as_deref().map(|f| {
        f.strip_prefix('<')
            .and_then(|f| f.strip_suffix('>'))
            .unwrap_or(f)
    });
    let sender = match fake_from {
        Some(f) => qualify(f, host),
        None => header_addresses(&from_values.join(","))
            .last()
            .map(|a| qualify(a, host))
            .unwrap_or_else(|| qualify(&who.login, host)),
    };
    let mut recipients: Vec<String> = sub
        .recipients
        .iter()
        .flat_map(|r| r.split(','))
        .filter(|r| !r.is_empty())
        .map(|r| qualify(r, host))
        .collect();
    recipients.extend(
        header_addresses(&rcpt_values.join(","))
            .iter()
            .map(|r| qualify(r, host)),
    );
    if recipients.is_empty() {
        return Err(UsageError("sendmail: no recipients".into(), EX_SOFTWARE));
    }
    let full_name = match (&sub.full_name, fake_from) {
        (Some(n), _) => Some(n.clone()),
        (None, None) => who.gecos.as_deref().map(|g| gecos_name(g, &who.login)),
        (None, Some(_)) => None,
    };

    let mut out = Vec::new();
    let put = |out: &mut Vec<u8>, l: &[u8]| {
        out.extend_from_slice(l);
        out.extend_from_slice(b"\r\n");
    };
    if !saw("from:") {
        let name = full_name.map(|n| format!("{n} ")).unwrap_or_default();
        put(&mut out, format!("From: {name}<{sender}>").as_bytes());
    }
    if !saw("date:") {
        put(&mut out, format!("Date: {date}").as_bytes());
    }
    let cte = saw("content-transfer-encoding:");
    if need_linesplit {
        if !saw("mime-version:") {
            put(&mut out, b"MIME-Version: 1.0");
        }
        if !saw("content-type:") {
            put(&mut out, b"Content-Type: text/plain; charset=unknown-8bit");
        }
        if !saw("content-disposition:") {
            put(&mut out, b"Content-Disposition: inline");
        }
        if !cte {
            put(&mut out, b"Content-Transfer-Encoding: quoted-printable");
        }
    }
    let mut in_headers = true;
    if noheader {
        put(&mut out, b"");
        in_headers = false;
    }
    let added = out.len();
    for (line, keep) in lines.iter().zip(keep) {
        if !keep
            || (in_headers
                && (starts_with_ci(line, "from ") || starts_with_ci(line, "return-path: ")))
        {
            continue;
        }
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        if cte || noheader || in_headers || !need_linesplit {
            put(&mut out, line);
            if line.is_empty() {
                in_headers = false;
            }
        } else {
            qp_line(&mut out, line);
        }
    }
    Ok(Envelope {
        sender,
        recipients,
        data: out,
        added,
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
    /// The message cannot be sent as given (no recipients); what is wrong.
    Invalid(String),
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
            SubmitError::Invalid(m) => (m.clone(), EX_SOFTWARE),
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
/// A failure of the dialogue comes with the message it was sending (for `dead.letter`).
pub fn submit(
    socket: &Path,
    sub: &Submission,
    who: &Submitter,
    raw: &[u8],
    date: &str,
) -> Result<Envelope, (SubmitError, Option<Envelope>)> {
    let (mut c, host) = connect(socket, sub.verbose).map_err(|e| (e, None))?;
    let env = prepare(sub, who, raw, &host, date)
        .map_err(|UsageError(m, _)| (SubmitError::Invalid(m), None))?;
    match dialogue(&mut c, sub, &env) {
        Ok(()) => Ok(env),
        Err(e) => Err((e, Some(env))),
    }
}

/// Keeps what the daemon did not take in the user's `dead.letter` (appended to, where
/// OpenSMTPD's enqueue replaces the file). Returns the line sendmail prints about it.
pub fn save_dead_letter(who: &Submitter, env: &Envelope, raw: &[u8]) -> Option<String> {
    let home = who.home.as_ref()?;
    let path = home.join("dead.letter");
    Some(match append_private(&path, &env.dead_letter(raw)) {
        Ok(()) => format!("sendmail: the message was saved in {}", path.display()),
        Err(why) => format!("sendmail: cannot save {}: {why}", path.display()),
    })
}

/// Appends `bytes` to the file at `path`, created mode 0600 if new; a symbolic link there
/// is refused.
fn append_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// EHLO, MAIL, RCPT..., DATA, the message, QUIT.
fn dialogue(c: &mut Client, sub: &Submission, env: &Envelope) -> Result<(), SubmitError> {
    c.command("EHLO localhost", 2)?;
    // Exactly as OpenSMTPD's enqueue words them, trailing spaces included:
    // `MAIL FROM:<s> [RET=r] [ENVID=e]` and `RCPT TO:<r> [NOTIFY=n]`.
    let ret = sub
        .ret
        .as_ref()
        .map(|r| format!("RET={r}"))
        .unwrap_or_default();
    let envid = sub
        .envid
        .as_ref()
        .filter(|v| !v.is_empty())
        .map(|v| format!("ENVID={v}"))
        .unwrap_or_default();
    c.command(&format!("MAIL FROM:<{}> {ret} {envid}", env.sender), 2)?;
    for r in &env.recipients {
        let notify = sub
            .notify
            .as_ref()
            .map(|n| format!("NOTIFY={n}"))
            .unwrap_or_default();
        c.command(&format!("RCPT TO:<{r}> {notify}"), 2)?;
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
    Ok(())
}

/// The whole `sendmail` command: arguments (without argv\[0\]), the socket, the message
/// reader. Returns the exit status; messages go to stderr.
pub fn run(
    args: &[String],
    socket: &Path,
    offline: Option<&Path>,
    input: &mut dyn std::io::Read,
    date: &str,
) -> i32 {
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
    let who = Submitter::current();
    match submit(socket, &sub, &who, &raw, date) {
        Ok(_) => 0,
        // The daemon is down: the message waits in the offline queue for its next start
        // (still status 75, as OpenSMTPD's sendmail).
        Err((SubmitError::Unreachable(_), _)) if let Some(dir) = offline => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            match save_offline(dir, args, &raw, now) {
                Ok(_) => EX_TEMPFAIL,
                Err(SaveError(m, code)) => {
                    eprintln!("{m}");
                    code
                }
            }
        }
        Err((e, undelivered)) => {
            let (m, code) = e.report(socket);
            eprintln!("{m}");
            // As OpenSMTPD's enqueue: a message the daemon did not take is kept.
            if let Some(env) = &undelivered
                && let Some(note) = save_dead_letter(&who, env, &raw)
            {
                eprintln!("{note}");
            }
            code
        }
    }
}

/// Why sendmail could not save a message in the offline queue; the line it prints and its
/// exit status.
#[derive(Debug)]
pub struct SaveError(pub String, pub i32);

/// Writes a message to the offline queue (`dir`) for the daemon's next start: a first line
/// with the arguments joined by `|`, then the message (mode 0600, the caller's file).
/// Returns the file's path.
pub fn save_offline(
    dir: &Path,
    args: &[String],
    message: &[u8],
    now: u64,
) -> Result<std::path::PathBuf, SaveError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(bad) = args.iter().find(|a| a.contains('|') || a.contains('\n')) {
        return Err(SaveError(
            format!("sendmail: {bad} contains illegal character"),
            EX_SOFTWARE,
        ));
    }
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // Bounded: a name is taken only if it is new; 100 tries of 62^10 names.
    let mut last = None;
    for _ in 0..100 {
        let mut random = [0u8; 10];
        if getrandom::fill(&mut random).is_err() {
            random = (super::server::rand_u64() as u128).to_le_bytes()[..10]
                .try_into()
                .unwrap_or([b'x'; 10]);
        }
        let suffix: String = random
            .iter()
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
            .collect();
        let path = dir.join(format!("{now}.{suffix}"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        match file {
            Ok(mut f) => {
                let mut head = args.join("|");
                head.push('\n');
                let written = f
                    .write_all(head.as_bytes())
                    .and_then(|_| f.write_all(message))
                    .and_then(|_| f.sync_all());
                return match written {
                    Ok(()) => Ok(path),
                    Err(e) => {
                        let _ = std::fs::remove_file(&path);
                        Err(SaveError(
                            format!("sendmail: cannot write {}: {e}", path.display()),
                            EX_UNAVAILABLE,
                        ))
                    }
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(path),
            Err(e) => {
                return Err(SaveError(
                    format!(
                        "sendmail: cannot create temporary file {}: {}",
                        path.display(),
                        crate::config::diag::strerror(&e)
                    ),
                    EX_UNAVAILABLE,
                ));
            }
        }
    }
    Err(SaveError(
        format!(
            "sendmail: cannot create temporary file {}: File exists",
            last.unwrap_or_else(|| dir.to_path_buf()).display()
        ),
        EX_UNAVAILABLE,
    ))
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
    #[test]
    fn saved_files_hold_the_arguments_then_the_message() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let args = vec!["-f".to_string(), "a@b.test".into(), "carol".into()];
        let p = save_offline(dir.path(), &args, b"Subject: x\n\nbody\n", 1700000000).unwrap();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with("1700000000."), "{name}");
        assert_eq!(name.len(), "1700000000.".len() + 10);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "-f|a@b.test|carol\nSubject: x\n\nbody\n"
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let e = save_offline(dir.path(), &["a|b".to_string()], b"x", 1).unwrap_err();
        assert_eq!(e.0, "sendmail: a|b contains illegal character");
        assert_eq!(e.1, 70);
        let e = save_offline(&dir.path().join("missing"), &[], b"x", 1).unwrap_err();
        assert!(
            e.0.starts_with("sendmail: cannot create temporary file ")
                && e.0.ends_with(": No such file or directory"),
            "{}",
            e.0
        );
        assert_eq!(e.1, 69);
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn who() -> Submitter {
        Submitter {
            login: "root".into(),
            gecos: Some("Charlie Root".into()),
            home: None,
        }
    }

    #[test]
    fn a_dead_letter_holds_the_added_headers_and_the_message_as_read() {
        let sub = parse_args(&args(&["bob@example.org"])).unwrap();
        // Not dot-stuffed, line ends as read, a last line without its newline completed.
        let raw = b"Subject: hi\r\n\r\n.dot line\nlast";
        let env = prepare(&sub, &who(), raw, "host.test", "DATE").unwrap();
        assert_eq!(
            String::from_utf8(env.dead_letter(raw)).unwrap(),
            "From: Charlie Root <root@host.test>\nDate: DATE\n\
             Subject: hi\r\n\r\n.dot line\nlast\n\n"
        );
        // A message without header fields: the blank line before its body is added too.
        let raw = b"just text\n";
        let env = prepare(&sub, &who(), raw, "host.test", "DATE").unwrap();
        assert_eq!(
            String::from_utf8(env.dead_letter(raw)).unwrap(),
            "From: Charlie Root <root@host.test>\nDate: DATE\n\njust text\n\n"
        );
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

    #[test]
    fn sender_from_the_from_header_unless_given() {
        let raw = b"From: Boss <boss@corp.test>\nSubject: s\n\nx\n";
        let e = prepare(
            &parse_args(&args(&["a,b@x.test"])).unwrap(),
            &who(),
            raw,
            "h",
            "D",
        )
        .unwrap();
        assert_eq!(e.sender, "boss@corp.test");
        assert_eq!(
            e.recipients,
            vec!["a@h".to_string(), "b@x.test".to_string()]
        );
        let sub = parse_args(&args(&["-f", "<list@x.test>", "a"])).unwrap();
        let e = prepare(&sub, &who(), b"Subject: s\n\nx\n", "h", "D").unwrap();
        assert_eq!(e.sender, "list@x.test");
        // With -f, no GECOS name.
        assert!(
            String::from_utf8(e.data)
                .unwrap()
                .starts_with("From: <list@x.test>\r\n")
        );
    }

    #[test]
    fn headerless_input_is_body_and_mbox_lines_are_dropped() {
        let sub = parse_args(&args(&["a"])).unwrap();
        let e = prepare(&sub, &who(), b"just text: here\nmore\n", "h", "D").unwrap();
        assert_eq!(
            String::from_utf8(e.data).unwrap(),
            "From: Charlie Root <root@h>\r\nDate: D\r\n\r\njust text: here\r\nmore\r\n"
        );
        let e = prepare(
            &sub,
            &who(),
            b"From root Sun Nov 29 2026\nReturn-Path: <x@y>\nSubject: s\n\nFrom here\n",
            "h",
            "D",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(e.data).unwrap(),
            "From: Charlie Root <root@h>\r\nDate: D\r\nSubject: s\r\n\r\nFrom here\r\n"
        );
    }

    #[test]
    fn long_lines_become_quoted_printable() {
        let sub = parse_args(&args(&["a"])).unwrap();
        let long = format!("{}=\u{e9} .end \n", "x".repeat(1000));
        let raw = format!("Subject: s\n\n{long}short\n");
        let e = prepare(&sub, &who(), raw.as_bytes(), "h", "D").unwrap();
        let text = String::from_utf8(e.data).unwrap();
        assert!(
            text.starts_with(
                "From: Charlie Root <root@h>\r\nDate: D\r\nMIME-Version: 1.0\r\n\
                 Content-Type: text/plain; charset=unknown-8bit\r\n\
                 Content-Disposition: inline\r\n\
                 Content-Transfer-Encoding: quoted-printable\r\nSubject: s\r\n\r\n"
            ),
            "{text}"
        );
        let body: Vec<&str> = text
            .split("\r\n\r\n")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .collect();
        assert!(body.iter().all(|l| l.len() <= 76), "{body:?}");
        assert_eq!(body[0], format!("{}=", "x".repeat(75)));
        let tail = body.iter().rev().find(|l| l.contains("=3D")).unwrap();
        assert!(tail.ends_with("x=3D=C3=A9 .end=20"), "{tail}");
        assert!(body.contains(&"short"));
    }

    #[test]
    fn gecos_ampersand_is_the_login_capitalised() {
        assert_eq!(gecos_name("& Root,,,", "charlie"), "Charlie Root");
        assert_eq!(gecos_name("Plain Name,room", "x"), "Plain Name");
    }
}
