//! Logging in OpenSMTPD's format, through `tracing`.
//!
//! With `-d` every line goes to stderr as is (no timestamp, no prefix), flushed at once;
//! otherwise to syslog (facility mail, ident `smtpd`). Info and warning lines are always
//! written; `debug` lines only with `-v` (or `smtpctl log verbose`); trace lines (`-T NAME`)
//! when their category is on. A trace category is the `target` of a `trace!` event:
//! `tracing::trace!(target: "expand", "expand: ...")`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Stderr,
    Syslog,
}

/// The C library's wording of an I/O error (`No such file or directory`), as OpenSMTPD's
/// `log_warn` and its error texts give it: Rust's ` (os error N)` suffix left out.
pub fn strerror(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(cut) if text.ends_with(')') => text[..cut].to_string(),
        _ => text,
    }
}

/// Runtime-switchable log settings (`smtpctl log verbose`, `smtpctl trace`).
pub struct Settings {
    verbose: AtomicBool,
    traces: RwLock<BTreeSet<String>>,
}

static SETTINGS: Settings = Settings {
    verbose: AtomicBool::new(false),
    traces: RwLock::new(BTreeSet::new()),
};

/// Whether any trace category is on: the queue and the scheduler ask on every message,
/// and with no `-T` that question costs one load instead of a lock.
static ANY_TRACE: AtomicBool = AtomicBool::new(false);

/// Canonical trace category for a `-T` name (aliases folded), `None` if unknown.
pub fn trace_category(name: &str) -> Option<&'static str> {
    Some(match name {
        "imsg" => "imsg",
        "io" => "io",
        "smtp" => "smtp",
        "filters" => "filters",
        "mta" | "transfer" => "mta",
        "bounce" | "bounces" => "bounce",
        "scheduler" => "scheduler",
        "lookup" => "lookup",
        "stat" | "stats" => "stat",
        "rules" => "rules",
        "mproc" => "mproc",
        "expand" => "expand",
        "table" | "tables" => "tables",
        "queue" => "queue",
        "all" => "all",
        "profstat" => "profstat",
        "profile-imsg" => "profile-imsg",
        "profile-queue" => "profile-queue",
        _ => return None,
    })
}

pub fn set_verbose(on: bool) {
    SETTINGS.verbose.store(on, Ordering::Relaxed);
}

pub fn set_trace(category: &str, on: bool) {
    let bit = profile_bit(category);
    if bit != 0 {
        if on {
            PROFILING.fetch_or(bit, Ordering::Relaxed);
        } else {
            PROFILING.fetch_and(!bit, Ordering::Relaxed);
        }
    }
    if let Ok(mut t) = SETTINGS.traces.write() {
        if on {
            t.insert(category.to_string());
        } else {
            t.remove(category);
        }
        ANY_TRACE.store(!t.is_empty(), Ordering::Relaxed);
    }
}

/// Is the trace category on?
pub fn tracing(category: &str) -> bool {
    ANY_TRACE.load(Ordering::Relaxed)
        && SETTINGS
            .traces
            .read()
            .map(|t| t.contains(category) || t.contains("all"))
            .unwrap_or(false)
}

/// 6.8's `-T queue` lines, one per queue operation: `queue-backend: OPERATION -> RESULT`.
/// The words are made only when the category is on.
pub fn queue_trace(words: impl FnOnce() -> String) {
    if tracing("queue") {
        tracing::trace!(target: "queue", "queue-backend: {}", words());
    }
}

/// 6.8's `-T scheduler` lines: `scheduler: WHAT` (inserting, committing, deleting,
/// updating an envelope or a message, pausing and resuming an agent).
pub fn scheduler_trace(words: impl FnOnce() -> String) {
    if tracing("scheduler") {
        tracing::trace!(target: "scheduler", "scheduler: {}", words());
    }
}

/// What is being profiled (`-T profile-imsg|profile-queue`, `smtpctl profile imsg|queue`).
/// As in 6.8, `-T all` does not turn profiling on.
static PROFILING: AtomicU8 = AtomicU8::new(0);
const PROFILE_IMSG: u8 = 1;
const PROFILE_QUEUE: u8 = 2;

fn profile_bit(category: &str) -> u8 {
    match category {
        "profile-imsg" => PROFILE_IMSG,
        "profile-queue" => PROFILE_QUEUE,
        _ => 0,
    }
}

/// The trace category of a `smtpctl profile` keyword (`imsg`, `queue`).
pub fn profile_category(keyword: &str) -> Option<&'static str> {
    match keyword {
        "imsg" => Some("profile-imsg"),
        "queue" => Some("profile-queue"),
        _ => None,
    }
}

/// `S.NNNNNNNNN`, as 6.8 prints a duration in its profile lines.
fn seconds_text(d: Duration) -> String {
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// Times one profiled operation (`profile queue`, `profile imsg`): when dropped, writes
/// 6.8's debug line, the operation's words then `S.NNNNNNNNN` (shown with `-v` or
/// `smtpctl log verbose`). Nothing is measured or formatted while profiling is off.
pub struct ProfileTimer(Option<(String, Instant)>);

impl ProfileTimer {
    fn start(bit: u8, words: impl FnOnce() -> String) -> ProfileTimer {
        ProfileTimer(
            (PROFILING.load(Ordering::Relaxed) & bit != 0).then(|| (words(), Instant::now())),
        )
    }
}

impl Drop for ProfileTimer {
    fn drop(&mut self) {
        if let Some((words, t0)) = self.0.take() {
            tracing::debug!("{words} {}", seconds_text(t0.elapsed()));
        }
    }
}

/// Times the queue operation `name` (6.8's names: `queue_message_create`,
/// `queue_envelope_load`, ...): `profile-queue: NAME S.NNNNNNNNN`.
pub fn queue_timer(name: &'static str) -> ProfileTimer {
    ProfileTimer::start(PROFILE_QUEUE, || format!("profile-queue: {name}"))
}

/// Times one round trip of the network side (`smtpd`) with the privileged broker
/// (`parent`) or a delivery worker (`worker`): 6.8's `profile-imsg: PROCESS PEER MESSAGE
/// LENGTH S.NNNNNNNNN`.
pub fn imsg_timer(peer: &str, message: &str, len: usize) -> ProfileTimer {
    ProfileTimer::start(PROFILE_IMSG, || {
        format!("profile-imsg: smtpd {peer} {message} {len}")
    })
}

/// The mail log lines of an incoming SMTP session, as OpenSMTPD writes them. The SMTP
/// server writes them, and so does the queue side for the reports it makes itself, which
/// 6.8 submits over a local session of its own.
pub mod smtp_in {
    use std::fmt::Display;

    /// `SID smtp connected address=ADDRESS host=NAME`.
    pub fn connected(sid: impl Display, address: impl Display, host: impl Display) {
        tracing::info!("{sid} smtp connected address={address} host={host}");
    }

    /// `SID smtp message msgid=MSGID size=N nrcpt=N proto=ESMTP|SMTP`.
    pub fn message(sid: impl Display, msgid: impl Display, size: u64, nrcpt: usize, esmtp: bool) {
        let proto = if esmtp { "ESMTP" } else { "SMTP" };
        tracing::info!("{sid} smtp message msgid={msgid} size={size} nrcpt={nrcpt} proto={proto}");
    }

    /// `SID smtp envelope evpid=EVPID from=<SENDER> to=<RCPT>`.
    pub fn envelope(sid: impl Display, evpid: impl Display, from: impl Display, to: impl Display) {
        tracing::info!("{sid} smtp envelope evpid={evpid} from=<{from}> to=<{to}>");
    }

    /// `SID smtp failed-command command="COMMAND" result="REPLY"` (the command as the
    /// log may show it: made safe by the caller).
    pub fn failed_command(sid: impl Display, command: impl Display, result: impl Display) {
        tracing::info!("{sid} smtp failed-command command=\"{command}\" result=\"{result}\"");
    }

    /// `SID smtp disconnected reason=REASON`.
    pub fn disconnected(sid: impl Display, reason: impl Display) {
        tracing::info!("{sid} smtp disconnected reason={reason}");
    }
}

struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            use std::fmt::Write as _;
            let _ = write!(self.0, "{value:?}");
        }
    }
}

struct Writer {
    dest: Destination,
    syslog: Option<UnixDatagram>,
}

impl Writer {
    fn write(&mut self, level: Level, line: &str) {
        if self.dest == Destination::Syslog
            && let Some(sock) = &self.syslog
        {
            let sev = match level {
                Level::ERROR => 3,
                Level::WARN => 4,
                Level::INFO => 6,
                _ => 7,
            };
            let msg = format!("<{}>smtpd[{}]: {line}", 2 * 8 + sev, std::process::id());
            if sock.send(msg.as_bytes()).is_ok() {
                return;
            }
        }
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "{line}");
        let _ = e.flush();
    }
}

struct OpenSmtpdLayer {
    out: Mutex<Writer>,
}

impl<S: Subscriber> Layer<S> for OpenSmtpdLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let level = *meta.level();
        // Only smtpd's own lines: libraries (the resolver, TLS) log through tracing too.
        let ours = meta.target().starts_with("smtpd") || trace_category(meta.target()).is_some();
        if !ours {
            return;
        }
        let show = match level {
            Level::ERROR | Level::WARN | Level::INFO => true,
            Level::DEBUG => SETTINGS.verbose.load(Ordering::Relaxed),
            Level::TRACE => tracing(meta.target()),
        };
        if !show {
            return;
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        if let Ok(mut w) = self.out.lock() {
            w.write(level, &m.0);
        }
    }
}

/// Install the logger. Safe to call once; later calls are ignored.
pub fn init(dest: Destination, verbose: bool, traces: &[String]) {
    set_verbose(verbose);
    for t in traces {
        if let Some(c) = trace_category(t) {
            set_trace(c, true);
        }
    }
    let syslog = if dest == Destination::Syslog {
        UnixDatagram::unbound()
            .ok()
            .filter(|s| s.connect("/dev/log").is_ok())
    } else {
        None
    };
    let layer = OpenSmtpdLayer {
        out: Mutex::new(Writer { dest, syslog }),
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// `vis(3)` with VIS_SAFE | VIS_CSTYLE, as OpenSMTPD escapes commands in its logs.
pub fn vis(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push('\t'),
            0 => s.push_str("\\0"),
            0x07 => s.push_str("\\a"),
            0x08 => s.push_str("\\b"),
            0x0b => s.push_str("\\v"),
            0x0c => s.push_str("\\f"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\{b:03o}")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vis_escapes_like_opensmtpd() {
        assert_eq!(vis(b"RCPT TO:<a@b> "), "RCPT TO:<a@b> ");
        assert_eq!(vis(b"A\r\nB\\\x01"), "A\\r\\nB\\\\\\001");
    }

    #[test]
    fn profiling_follows_its_categories_only() {
        assert_eq!(seconds_text(Duration::new(1, 2_500)), "1.000002500");
        assert!(queue_timer("queue_message_create").0.is_none());
        assert_eq!(profile_bit("all"), 0);
        set_trace(profile_category("queue").unwrap(), true);
        assert!(queue_timer("queue_message_create").0.is_some());
        assert!(imsg_timer("parent", "deliver", 1).0.is_none());
        set_trace("profile-imsg", true);
        assert!(imsg_timer("parent", "deliver", 1).0.is_some());
        set_trace("profile-queue", false);
        set_trace("profile-imsg", false);
        assert!(queue_timer("queue_message_create").0.is_none());
        assert!(imsg_timer("parent", "deliver", 1).0.is_none());
        assert_eq!(profile_category("stat"), None);
    }

    #[test]
    fn categories() {
        assert_eq!(trace_category("bounces"), Some("bounce"));
        assert_eq!(trace_category("tables"), Some("tables"));
        assert_eq!(trace_category("bogus"), None);
        set_trace("expand", true);
        assert!(tracing("expand"));
        set_trace("expand", false);
        assert!(!tracing("expand"));
    }
}
