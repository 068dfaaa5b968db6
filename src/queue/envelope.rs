//! The envelope: one delivery of one message to one destination, with
//! everything the delivery side needs and nothing it has to look up again
//! in the SMTP session (which is long gone when delivery runs, possibly
//! after a restart).
//!
//! The fields follow OpenSMTPD's version 3 envelope (§10.3 of the spec) so
//! that `smtpctl show envelope` prints what OpenSMTPD prints; the few
//! additions are listed in [`super::envelope_file`].

use std::net::IpAddr;

use super::id::Evpid;

/// Default lifetime of an envelope in the queue (`queue ttl`, 4 days).
pub const DEFAULT_TTL: u64 = 4 * 24 * 3600;

/// Lifetime of a bounce envelope (OpenSMTPD hard-codes 7 days).
pub const BOUNCE_TTL: u64 = 7 * 24 * 3600;

/// Longest error line kept; longer ones end in `...` (OpenSMTPD truncates
/// the same way, at its buffer size).
pub const MAX_ERRORLINE: usize = 1024;

/// Which delivery agent takes the envelope (`type:` in the file).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DeliveryKind {
    /// Local delivery (maildir, mbox, mda, lmtp, file).
    Mda,
    /// Relaying to another host.
    Mta,
    /// A delivery status notification to be generated and sent.
    Bounce,
}

impl DeliveryKind {
    /// The name used in the envelope file and in `show queue`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryKind::Mda => "mda",
            DeliveryKind::Mta => "mta",
            DeliveryKind::Bounce => "bounce",
        }
    }
}

/// Where a local delivery goes, resolved at RCPT time by the rules and the
/// expansion (aliases, `.forward`), so that delivery needs no lookup.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct MdaTarget {
    /// The system user the delivery runs as (`mda-user`).
    pub user: String,
    /// A command from an alias or `.forward` (`|cmd`), run instead of the
    /// dispatcher's method (`mda-exec`).
    pub exec: String,
    /// The `+detail` part of the recipient, for maildir folders
    /// (`mda-subaddress`).
    pub subaddress: String,
    /// A file from an alias or `.forward` (`/path`), appended to instead of
    /// the dispatcher's method (`mda-path`, our addition).
    pub path: String,
}

/// Where a relayed delivery goes.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct MtaTarget {
    /// The relay host URL from the action (`relay host smtp://...`), or
    /// empty to use the destination domain's MX (`mta-relay`, our addition;
    /// OpenSMTPD re-reads it from the dispatcher).
    pub relay: String,
}

/// What kind of report a bounce envelope produces.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum BounceKind {
    /// Permanent failure or expiry: `Subject: ... failed`.
    Failed,
    /// Delay warning: `Subject: ... delayed`.
    Delayed,
    /// `NOTIFY=SUCCESS`: `Subject: ... delivered`.
    Delivered,
}

impl BounceKind {
    /// The name used in the envelope file and in the report's subject.
    pub fn as_str(self) -> &'static str {
        match self {
            BounceKind::Failed => "failed",
            BounceKind::Delayed => "delayed",
            BounceKind::Delivered => "delivered",
        }
    }
}

/// The report a bounce envelope stands for.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BounceTarget {
    /// Failed, delayed or delivered.
    pub kind: BounceKind,
    /// For delay warnings: the warn interval that was crossed, in seconds
    /// (`bounce-delay`).
    pub delay: u64,
    /// For delay warnings: how long the original stays queued, in seconds
    /// (`bounce-ttl`).
    pub ttl: u64,
}

/// The delivery agent and its resolved destination (`type:` plus the
/// type-specific fields).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Target {
    /// Local delivery.
    Mda(MdaTarget),
    /// Relay.
    Mta(MtaTarget),
    /// Delivery status notification.
    Bounce(BounceTarget),
}

impl Target {
    /// The agent kind.
    pub fn kind(&self) -> DeliveryKind {
        match self {
            Target::Mda(_) => DeliveryKind::Mda,
            Target::Mta(_) => DeliveryKind::Mta,
            Target::Bounce(_) => DeliveryKind::Bounce,
        }
    }
}

/// The client the message came from (`sockaddr:`); `Local` for the
/// sendmail interface and internally generated bounces.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ClientAddr {
    /// Submitted locally (`local`).
    Local,
    /// A network client.
    Ip(IpAddr),
}

impl ClientAddr {
    /// The address as OpenSMTPD's `sa_to_text` writes it, in envelopes and log lines:
    /// `a.b.c.d`, `[v6]`, or `local`.
    pub fn text(self) -> String {
        match self {
            ClientAddr::Local => "local".to_string(),
            ClientAddr::Ip(IpAddr::V4(v4)) => v4.to_string(),
            ClientAddr::Ip(IpAddr::V6(v6)) => format!("[{v6}]"),
        }
    }

    /// The address inside exactly one pair of brackets, as in the greeting and
    /// `Received:`: `[127.0.0.1]`, `[::1]`, `[local]`.
    pub fn bracketed(self) -> String {
        match self {
            ClientAddr::Ip(IpAddr::V6(_)) => self.text(),
            _ => format!("[{}]", self.text()),
        }
    }

    /// The address family as `show queue` prints it.
    pub fn family(self) -> &'static str {
        match self {
            ClientAddr::Local => "local",
            ClientAddr::Ip(IpAddr::V4(_)) => "inet4",
            ClientAddr::Ip(IpAddr::V6(_)) => "inet6",
        }
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

/// Envelope flags (`flags:`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct EnvelopeFlags {
    /// The client authenticated (AUTH) before sending.
    pub authenticated: bool,
    /// The message is itself a bounce (sent with `MAIL FROM:<>` by us);
    /// a failure must not bounce again.
    pub bounce: bool,
    /// Generated internally.
    pub internal: bool,
}

/// `NOTIFY=` of RCPT (RFC 3461) as OpenSMTPD's bit mask (`dsn-notify:`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DsnNotify(pub u8);

impl DsnNotify {
    /// `NOTIFY=SUCCESS`.
    pub const SUCCESS: u8 = 0x01;
    /// `NOTIFY=FAILURE`.
    pub const FAILURE: u8 = 0x02;
    /// `NOTIFY=DELAY`.
    pub const DELAY: u8 = 0x04;
    /// `NOTIFY=NEVER`.
    pub const NEVER: u8 = 0x08;

    /// True if `bit` was requested.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// `RET=` of MAIL FROM (RFC 3461).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DsnRet {
    /// `RET=HDRS`: return only the headers.
    Headers,
    /// `RET=FULL`: return the whole message.
    Full,
}

/// The DSN parameters given by the client.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Dsn {
    /// `NOTIFY=` of the RCPT.
    pub notify: DsnNotify,
    /// `RET=` of the MAIL FROM, if given.
    pub ret: Option<DsnRet>,
    /// `ENVID=` of the MAIL FROM.
    pub envid: String,
    /// `ORCPT=` of the RCPT.
    pub orcpt: String,
}

/// An enhanced status code (RFC 3463) of the last failure, stored as
/// OpenSMTPD does: the class (2, 4 or 5) and `subject * 10 + detail`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct StatusCode {
    /// 2, 4 or 5.
    pub class: u8,
    /// `subject * 10 + detail`, e.g. 47 for `x.4.7`.
    pub code: u8,
}

impl std::fmt::Display for StatusCode {
    /// `4.4.7`, as in a report's `Status:` line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.code / 10, self.code % 10)
    }
}

/// One delivery of a message: who sent it, to whom, how, and how the
/// attempts went so far.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Envelope {
    /// The envelope id (also the file name in the spool).
    pub id: Evpid,
    /// The action (dispatcher) name chosen by the `match` rule.
    pub dispatcher: String,
    /// The tag set by the listener (`tag`), empty if none.
    pub tag: String,
    /// The name of the listener that accepted the message (our addition).
    pub listener: String,
    /// The server name we announced to the client.
    pub smtpname: String,
    /// The name the client gave in HELO/EHLO.
    pub helo: String,
    /// The client's host name (rDNS), or `<unknown>`.
    pub hostname: String,
    /// The client's address.
    pub client: ClientAddr,
    /// The user the client authenticated as, empty if none.
    pub auth_user: String,
    /// The reverse path (`MAIL FROM`), `user@domain`; empty for the null
    /// sender `<>`.
    pub sender: String,
    /// The recipient as the client typed it in RCPT TO (the original
    /// recipient, `rcpt=` in delivery logs).
    pub rcpt: String,
    /// The recipient after expansion (the address actually delivered to,
    /// `to=` in delivery logs).
    pub dest: String,
    /// When the envelope was created (Unix seconds).
    pub ctime: u64,
    /// When delivery was last attempted (Unix seconds, 0 = never).
    pub last_try: u64,
    /// The delay-warning timestamp last reported (Unix seconds, 0 = none).
    pub last_bounce: u64,
    /// Lifetime in the queue in seconds; 0 means the scheduler's default
    /// (`queue ttl`).
    pub ttl: u64,
    /// Number of temporary failures so far.
    pub retry: u16,
    /// Flags.
    pub flags: EnvelopeFlags,
    /// DSN parameters.
    pub dsn: Dsn,
    /// The last error, one line (e.g. `Network error on destination MXs`).
    pub errorline: String,
    /// The enhanced status of the last failure, if any.
    pub status: Option<StatusCode>,
    /// The delivery agent and its resolved destination.
    pub target: Target,
}

/// Why no bounce is generated for a failed envelope; the first two are
/// logged by OpenSMTPD with the exact texts of [`BounceRefusal::log_line`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BounceRefusal {
    /// The failed envelope is itself a bounce.
    DoubleBounce,
    /// The sender is `<>`.
    NoReturnPath,
    /// The client asked for `NOTIFY=NEVER` (silently dropped).
    NotifyNever,
}

impl BounceRefusal {
    /// The warning OpenSMTPD logs, if any.
    pub fn log_line(self) -> Option<&'static str> {
        match self {
            BounceRefusal::DoubleBounce => Some("warn: queue: double bounce!"),
            BounceRefusal::NoReturnPath => Some("warn: queue: no return path!"),
            BounceRefusal::NotifyNever => None,
        }
    }
}

impl Envelope {
    /// A fresh envelope with every optional field empty; the SMTP side fills
    /// in the session facts.
    pub fn new(
        id: Evpid,
        target: Target,
        sender: &str,
        rcpt: &str,
        dest: &str,
        ctime: u64,
    ) -> Self {
        Envelope {
            id,
            dispatcher: String::new(),
            tag: String::new(),
            listener: String::new(),
            smtpname: String::new(),
            helo: String::new(),
            hostname: String::new(),
            client: ClientAddr::Local,
            auth_user: String::new(),
            sender: sender.to_string(),
            rcpt: rcpt.to_string(),
            dest: dest.to_string(),
            ctime,
            last_try: 0,
            last_bounce: 0,
            ttl: 0,
            retry: 0,
            flags: EnvelopeFlags::default(),
            dsn: Dsn::default(),
            errorline: String::new(),
            status: None,
            target,
        }
    }

    /// The delivery agent kind.
    pub fn kind(&self) -> DeliveryKind {
        self.target.kind()
    }

    /// When the envelope expires, given the scheduler's default ttl.
    pub fn expiry(&self, default_ttl: u64) -> u64 {
        let ttl = if self.ttl > 0 { self.ttl } else { default_ttl };
        self.ctime.saturating_add(ttl)
    }

    /// Sets the error line from text that may come from a remote server:
    /// control characters become spaces (a newline in an envelope field was
    /// CVE-2020-8794), surrounding blanks are trimmed, and overlong text is
    /// cut to [`MAX_ERRORLINE`] bytes ending in `...`.
    pub fn set_errorline(&mut self, text: &str) {
        self.errorline = one_line(text, MAX_ERRORLINE);
    }

    /// Records a temporary failure: one more retry, the time of the attempt,
    /// the error line and status. The caller then stores the envelope with
    /// `Spool::update_envelope` and tells the scheduler.
    pub fn record_temporary_failure(
        &mut self,
        now: u64,
        errorline: &str,
        status: Option<StatusCode>,
    ) {
        self.retry = self.retry.saturating_add(1);
        self.last_try = now;
        self.set_errorline(errorline);
        self.status = status;
    }

    /// Builds the bounce envelope that reports on this one (OpenSMTPD's
    /// `queue_bounce`): a copy of it, of type bounce, with a fresh id in the
    /// same message, created `now`, no retries, and a 7-day lifetime. The
    /// bounce engine later reads sender, recipient and error from it.
    ///
    /// Refused for `NOTIFY=NEVER`, for bounces of bounces and for the null
    /// sender, as OpenSMTPD does. `id` must belong to the same message
    /// (`Spool::new_evpid`); `Spool::add_envelope` refuses it otherwise.
    pub fn bounce(
        &self,
        id: Evpid,
        report: BounceTarget,
        now: u64,
    ) -> std::result::Result<Envelope, BounceRefusal> {
        if self.dsn.notify.has(DsnNotify::NEVER) {
            return Err(BounceRefusal::NotifyNever);
        }
        // With an explicit NOTIFY list only the reports it names are sent (RFC 3461 §4.1);
        // without one, failures are reported (and delays, as OpenSMTPD does).
        let notify = self.dsn.notify;
        if notify.0 != 0 {
            let wanted = match report.kind {
                BounceKind::Failed => notify.has(DsnNotify::FAILURE),
                BounceKind::Delayed => notify.has(DsnNotify::DELAY),
                BounceKind::Delivered => notify.has(DsnNotify::SUCCESS),
            };
            if !wanted {
                return Err(BounceRefusal::NotifyNever);
            }
        }
        if self.kind() == DeliveryKind::Bounce {
            return Err(BounceRefusal::DoubleBounce);
        }
        if self.sender.is_empty() {
            return Err(BounceRefusal::NoReturnPath);
        }
        let mut b = self.clone();
        b.id = id;
        b.target = Target::Bounce(report);
        b.retry = 0;
        b.last_try = 0;
        b.ctime = now;
        b.ttl = BOUNCE_TTL;
        Ok(b)
    }
}

/// Makes `text` a single safe line of at most `max` bytes.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = cleaned.trim();
    if trimmed.len() <= max {
        return trimmed.to_string();
    }
    let mut cut = max.saturating_sub(3);
    while cut > 0 && !trimmed.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", trimmed[..cut].trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::id::Msgid;

    fn evp() -> Envelope {
        let m = Msgid::new(0xc70b0203).unwrap();
        Envelope::new(
            Evpid::from_parts(m, 0x1d875f5a).unwrap(),
            Target::Mta(MtaTarget::default()),
            "sender@example.net",
            "x@queue.test",
            "x@queue.test",
            1795333122,
        )
    }

    #[test]
    fn notify_list_selects_the_reports() {
        let target = |kind| BounceTarget {
            kind,
            delay: 0,
            ttl: 0,
        };
        let mut e = evp();
        let id = Evpid::from_parts(e.id.msgid(), 0x2222).unwrap();
        assert!(
            e.bounce(id, target(BounceKind::Failed), 1).is_ok(),
            "no NOTIFY: failures reported"
        );
        e.dsn.notify = DsnNotify(DsnNotify::DELAY);
        assert_eq!(
            e.bounce(id, target(BounceKind::Failed), 1),
            Err(BounceRefusal::NotifyNever)
        );
        assert!(e.bounce(id, target(BounceKind::Delayed), 1).is_ok());
        e.dsn.notify = DsnNotify(DsnNotify::SUCCESS | DsnNotify::FAILURE);
        assert!(e.bounce(id, target(BounceKind::Failed), 1).is_ok());
        assert_eq!(
            e.bounce(id, target(BounceKind::Delayed), 1),
            Err(BounceRefusal::NotifyNever)
        );
        e.dsn.notify = DsnNotify(DsnNotify::NEVER);
        assert_eq!(
            e.bounce(id, target(BounceKind::Failed), 1),
            Err(BounceRefusal::NotifyNever)
        );
    }

    #[test]
    fn errorline_is_one_safe_line() {
        let mut e = evp();
        e.set_errorline("  421 bad\r\nrcpt: evil@x\0  ");
        assert_eq!(e.errorline, "421 bad  rcpt: evil@x");
        assert!(!e.errorline.contains('\n'));
        e.set_errorline(&"é".repeat(2000));
        assert!(e.errorline.len() <= MAX_ERRORLINE);
        assert!(e.errorline.ends_with("..."));
    }

    #[test]
    fn temporary_failure_bookkeeping() {
        let mut e = evp();
        e.record_temporary_failure(
            1795333200,
            "Network error on destination MXs",
            Some(StatusCode { class: 4, code: 0 }),
        );
        assert_eq!(e.retry, 1);
        assert_eq!(e.last_try, 1795333200);
        assert_eq!(e.status.unwrap().to_string(), "4.0.0");
        e.retry = u16::MAX;
        e.record_temporary_failure(1, "x", None);
        assert_eq!(e.retry, u16::MAX);
    }

    #[test]
    fn expiry_uses_default_ttl_when_unset() {
        let mut e = evp();
        assert_eq!(e.expiry(DEFAULT_TTL), 1795333122 + 345600);
        e.ttl = 20;
        assert_eq!(e.expiry(DEFAULT_TTL), 1795333142);
    }

    #[test]
    fn bounce_copies_and_refuses_like_opensmtpd() {
        let e = evp();
        let id = Evpid::from_parts(e.id.msgid(), 42).unwrap();
        let report = BounceTarget {
            kind: BounceKind::Failed,
            delay: 0,
            ttl: 0,
        };
        let b = e.bounce(id, report.clone(), 1795334000).unwrap();
        assert_eq!(b.kind(), DeliveryKind::Bounce);
        assert_eq!(b.id, id);
        assert_eq!(b.sender, e.sender);
        assert_eq!(b.ctime, 1795334000);
        assert_eq!(b.ttl, 7 * 24 * 3600);
        assert_eq!(b.retry, 0);

        assert_eq!(
            b.bounce(id, report.clone(), 1).unwrap_err().log_line(),
            Some("warn: queue: double bounce!")
        );
        let mut null = e.clone();
        null.sender.clear();
        assert_eq!(
            null.bounce(id, report.clone(), 1).unwrap_err().log_line(),
            Some("warn: queue: no return path!")
        );
        let mut never = e.clone();
        never.dsn.notify = DsnNotify(DsnNotify::NEVER);
        assert_eq!(
            never.bounce(id, report, 1).unwrap_err(),
            BounceRefusal::NotifyNever
        );
    }

    #[test]
    fn status_code_text() {
        assert_eq!(StatusCode { class: 4, code: 47 }.to_string(), "4.4.7");
        assert_eq!(StatusCode { class: 5, code: 30 }.to_string(), "5.3.0");
    }
}
