//! The control protocol: one request line, one reply, then the daemon closes.
//!
//! ```text
//! smtpctl → smtpd   show queue\n            (the canonical words, one space apart)
//! smtpd → smtpctl   ok\n                    (or "failed\n")
//!                   <output lines>          (what smtpctl prints, as is)
//!                   <end of stream>
//! ```
//!
//! Requests are parsed on both ends with the same code, so an `smtpctl` and a daemon of the
//! same build always agree; the daemon never trusts the client's parse.

use crate::queue::{Evpid, Msgid, QueueId};

/// The longest request line the daemon reads.
pub const MAX_REQUEST: usize = 1024;

/// Which part of the daemon a `pause`/`resume` is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agent {
    /// Local deliveries.
    Mda,
    /// Relayed deliveries.
    Mta,
    /// Accepting SMTP sessions.
    Smtp,
}

impl Agent {
    /// The command word.
    pub fn as_str(self) -> &'static str {
        match self {
            Agent::Mda => "mda",
            Agent::Mta => "mta",
            Agent::Smtp => "smtp",
        }
    }

    fn parse(word: &str) -> Option<Agent> {
        match word {
            "mda" => Some(Agent::Mda),
            "mta" => Some(Agent::Mta),
            "smtp" => Some(Agent::Smtp),
            _ => None,
        }
    }
}

/// Envelopes a `schedule`/`remove` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// `all`.
    All,
    /// One message or one envelope.
    Id(QueueId),
}

impl Selection {
    /// `None` for `all`.
    pub fn id(self) -> Option<QueueId> {
        match self {
            Selection::All => None,
            Selection::Id(q) => Some(q),
        }
    }
}

/// A request to the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `show queue`.
    ShowQueue,
    /// `show stats`.
    ShowStats,
    /// Every counter, changed or not, with smtpd's own ones (what `monitor` reads, as
    /// 6.8's smtpctl reads its digest).
    Digest,
    /// `show status`.
    ShowStatus,
    /// `show routes`: the outbound routes and their penalties.
    ShowRoutes,
    /// `show hoststats`: the last relay result per destination domain.
    ShowHostStats,
    /// `show hosts`: the remote hosts relayed to.
    ShowHosts,
    /// `show relays`: the destinations with mail or sessions.
    ShowRelays,
    /// `show envelope EVPID`: the envelope file.
    ShowEnvelope(Evpid),
    /// `show message EVPID|MSGID`: the queued message.
    ShowMessage(Msgid),
    /// `schedule ID|MSGID|all`.
    Schedule(Selection),
    /// `remove ID|MSGID|all`.
    Remove(Selection),
    /// `pause mda|mta|smtp`.
    Pause(Agent),
    /// `pause envelope ID|MSGID|all` (true) / `resume envelope ...` (false).
    Suspend(Selection, bool),
    /// `resume mda|mta|smtp`.
    Resume(Agent),
    /// `log verbose` (true) / `log brief` (false).
    LogVerbose(bool),
    /// `trace CAT` (true) / `untrace CAT` (false), with the canonical category.
    Trace(String, bool),
    /// `update table NAME`: re-read a `file:` or `db:` table.
    UpdateTable(String),
    /// `discover ID|MSGID`: schedule envelopes found on disk.
    Discover(QueueId),
    /// `resume route ID`: enable a route disabled after errors (the id of `show routes`).
    ResumeRoute(u64),
    /// `pause mta from ADDR for DOMAIN` (true) / `resume mta from ADDR for DOMAIN`
    /// (false): no new session from a source address to a destination.
    BlockMta(std::net::IpAddr, String, bool),
    /// `show mta paused`: the source addresses paused per destination.
    ShowMtaBlocks,
    /// `profile imsg|queue` (true) / `unprofile imsg|queue` (false), with the keyword.
    Profile(String, bool),
}

/// Why a request line is not a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl std::fmt::Display for BadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn selection(word: &str) -> Result<Selection, BadRequest> {
    if word == "all" {
        return Ok(Selection::All);
    }
    word.parse::<QueueId>()
        .map(Selection::Id)
        .map_err(|e| BadRequest(e.to_string()))
}

/// A source address as `pause mta from` takes it: IPv4 or IPv6, the latter bracketed or
/// not.
fn source_address(word: &str) -> Result<std::net::IpAddr, BadRequest> {
    let bare = word
        .strip_prefix('[')
        .and_then(|w| w.strip_suffix(']'))
        .unwrap_or(word);
    let bare = bare.strip_prefix("IPv6:").unwrap_or(bare);
    bare.parse()
        .map_err(|_| BadRequest(format!("invalid address: {}", word.escape_debug())))
}

/// Why a client that is neither root nor smtpd's user is refused.
const NEED_ROOT: &str = "need root privileges";

impl Request {
    /// Parse canonical words (as [`Request::line`] writes them).
    pub fn parse(line: &str) -> Result<Request, BadRequest> {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        let bad = || BadRequest(format!("invalid request: {}", line.escape_debug()));
        Ok(match words.as_slice() {
            ["show", "queue"] => Request::ShowQueue,
            ["show", "stats"] => Request::ShowStats,
            ["digest"] => Request::Digest,
            ["show", "status"] => Request::ShowStatus,
            ["show", "routes"] => Request::ShowRoutes,
            ["show", "hoststats"] => Request::ShowHostStats,
            ["show", "hosts"] => Request::ShowHosts,
            ["show", "relays"] => Request::ShowRelays,
            ["show", "mta", "paused"] => Request::ShowMtaBlocks,
            [
                verb @ ("pause" | "resume"),
                "mta",
                "from",
                addr,
                "for",
                domain,
            ] => Request::BlockMta(source_address(addr)?, domain.to_string(), *verb == "pause"),
            ["show", "envelope", id] => match id.parse::<QueueId>() {
                Ok(QueueId::Envelope(e)) => Request::ShowEnvelope(e),
                _ => {
                    return Err(BadRequest(format!(
                        "invalid evpid \"{}\"",
                        id.escape_debug()
                    )));
                }
            },
            ["show", "message", id] => match id.parse::<QueueId>() {
                Ok(QueueId::Envelope(e)) => Request::ShowMessage(e.msgid()),
                Ok(QueueId::Message(m)) => Request::ShowMessage(m),
                Err(e) => return Err(BadRequest(e.to_string())),
            },
            ["schedule", id] => Request::Schedule(selection(id)?),
            ["remove", id] => Request::Remove(selection(id)?),
            ["pause", "envelope", id] => Request::Suspend(selection(id)?, true),
            ["resume", "envelope", id] => Request::Suspend(selection(id)?, false),
            ["resume", "route", id] => Request::ResumeRoute(
                id.parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| BadRequest(format!("invalid route id: {id}")))?,
            ),
            ["pause", a] => Request::Pause(Agent::parse(a).ok_or_else(bad)?),
            ["resume", a] => Request::Resume(Agent::parse(a).ok_or_else(bad)?),
            ["log", "verbose"] => Request::LogVerbose(true),
            ["log", "brief"] => Request::LogVerbose(false),
            [verb @ ("trace" | "untrace"), cat] => {
                let Some(c) = crate::log::trace_category(cat) else {
                    return Err(BadRequest(format!("invalid trace keyword: {cat}")));
                };
                Request::Trace(c.to_string(), *verb == "trace")
            }
            [verb @ ("profile" | "unprofile"), keyword] => {
                if crate::log::profile_category(keyword).is_none() {
                    return Err(BadRequest(format!(
                        "invalid profile keyword: {}",
                        keyword.escape_debug()
                    )));
                }
                Request::Profile(keyword.to_string(), *verb == "profile")
            }
            ["update", "table", name] => Request::UpdateTable(name.to_string()),
            ["discover", id] => Request::Discover(
                id.parse::<QueueId>()
                    .map_err(|e| BadRequest(e.to_string()))?,
            ),
            _ => return Err(bad()),
        })
    }

    /// The request line, without its LF.
    pub fn line(&self) -> String {
        let sel = |s: &Selection| match s {
            Selection::All => "all".to_string(),
            Selection::Id(q) => q.to_string(),
        };
        match self {
            Request::ShowQueue => "show queue".into(),
            Request::ShowStats => "show stats".into(),
            Request::Digest => "digest".into(),
            Request::ShowStatus => "show status".into(),
            Request::ShowRoutes => "show routes".into(),
            Request::ShowHostStats => "show hoststats".into(),
            Request::ShowHosts => "show hosts".into(),
            Request::ShowRelays => "show relays".into(),
            Request::ShowEnvelope(e) => format!("show envelope {e}"),
            Request::ShowMessage(m) => format!("show message {m}"),
            Request::Schedule(s) => format!("schedule {}", sel(s)),
            Request::Remove(s) => format!("remove {}", sel(s)),
            Request::Pause(a) => format!("pause {}", a.as_str()),
            Request::Suspend(s, true) => format!("pause envelope {}", sel(s)),
            Request::Suspend(s, false) => format!("resume envelope {}", sel(s)),
            Request::Resume(a) => format!("resume {}", a.as_str()),
            Request::LogVerbose(true) => "log verbose".into(),
            Request::LogVerbose(false) => "log brief".into(),
            Request::Trace(c, true) => format!("trace {c}"),
            Request::Trace(c, false) => format!("untrace {c}"),
            Request::UpdateTable(name) => format!("update table {name}"),
            Request::Discover(id) => format!("discover {id}"),
            Request::ResumeRoute(id) => format!("resume route {id}"),
            Request::BlockMta(addr, domain, on) => format!(
                "{} mta from {addr} for {domain}",
                if *on { "pause" } else { "resume" }
            ),
            Request::ShowMtaBlocks => "show mta paused".into(),
            Request::Profile(k, true) => format!("profile {k}"),
            Request::Profile(k, false) => format!("unprofile {k}"),
        }
    }
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The command succeeded (`smtpctl` exits 0).
    pub ok: bool,
    /// What `smtpctl` prints, lines ending in LF.
    pub text: String,
}

impl Reply {
    /// Success with output.
    pub fn ok(text: impl Into<String>) -> Reply {
        Reply {
            ok: true,
            text: text.into(),
        }
    }

    /// Success with output of one line per item (`show routes`, `show relays`, ...).
    pub fn lines(lines: Vec<String>) -> Reply {
        Reply::ok(lines.into_iter().map(|l| l + "\n").collect::<String>())
    }

    /// OpenSMTPD's `command succeeded`.
    pub fn succeeded() -> Reply {
        Reply::ok("command succeeded\n")
    }

    /// The refusal of a client that is neither root nor smtpd's own user; smtpctl prints
    /// it as OpenSMTPD's does: `smtpctl: need root privileges`, status 1.
    pub fn need_root() -> Reply {
        Reply::failed(Some(NEED_ROOT))
    }

    /// Whether this is [`Reply::need_root`].
    pub fn is_need_root(&self) -> bool {
        *self == Reply::need_root()
    }

    /// OpenSMTPD's `command failed` or `command failed: REASON`.
    pub fn failed(reason: Option<&str>) -> Reply {
        Reply {
            ok: false,
            text: match reason {
                Some(r) => format!("command failed: {r}\n"),
                None => "command failed\n".into(),
            },
        }
    }

    /// The bytes on the socket.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = if self.ok {
            b"ok\n".to_vec()
        } else {
            b"failed\n".to_vec()
        };
        out.extend_from_slice(self.text.as_bytes());
        out
    }

    /// Read back what [`Reply::encode`] wrote; `None` if the status line is missing.
    pub fn decode(bytes: &[u8]) -> Option<Reply> {
        let text = String::from_utf8_lossy(bytes);
        let (status, rest) = text.split_once('\n')?;
        let ok = match status {
            "ok" => true,
            "failed" => false,
            _ => return None,
        };
        Some(Reply {
            ok,
            text: rest.to_string(),
        })
    }
}

/// `N envelope scheduled` / `N envelopes removed`: OpenSMTPD's plural is for more than one.
pub fn envelopes_text(n: usize, verb: &str) -> String {
    format!("{n} envelope{} {verb}\n", if n > 1 { "s" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for line in [
            "show queue",
            "show stats",
            "show status",
            "show routes",
            "show relays",
            "show envelope 1a2b3c4d00000001",
            "show message 1a2b3c4d",
            "schedule all",
            "schedule 1a2b3c4d",
            "remove 1a2b3c4d00000001",
            "pause mda",
            "pause envelope all",
            "resume envelope 1a2b3c4d",
            "resume smtp",
            "resume route 3",
            "pause mta from 192.0.2.1 for example.org",
            "resume mta from 2001:db8::1 for Example.ORG",
            "show mta paused",
            "profile queue",
            "unprofile imsg",
            "log verbose",
            "log brief",
            "trace expand",
            "untrace mta",
        ] {
            let r = Request::parse(line).unwrap();
            assert_eq!(r.line(), line);
        }
        assert_eq!(
            Request::parse("trace transfer").unwrap(),
            Request::Trace("mta".into(), true)
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        assert!(Request::parse("pause everything").is_err());
        assert!(Request::parse("schedule xyz").is_err());
        assert!(Request::parse("schedule 0").is_err());
        assert!(Request::parse("resume route 0").is_err());
        assert!(Request::parse("resume route x").is_err());
        assert_eq!(
            Request::parse("pause mta from mx.example.org for example.org")
                .unwrap_err()
                .0,
            "invalid address: mx.example.org"
        );
        assert!(Request::parse("pause mta from 192.0.2.1").is_err());
        assert_eq!(
            Request::parse("profile stat").unwrap_err().0,
            "invalid profile keyword: stat"
        );
        assert_eq!(
            Request::parse("pause mta from [IPv6:2001:db8::1] for example.org").unwrap(),
            Request::BlockMta("2001:db8::1".parse().unwrap(), "example.org".into(), true)
        );
        assert_eq!(
            Request::parse("trace nonsense").unwrap_err().0,
            "invalid trace keyword: nonsense"
        );
        assert!(Request::parse("").is_err());
        assert!(Request::parse("show envelope 1a2b3c4d").is_err());
        assert_eq!(
            Request::parse("show message 1a2b3c4d00000001")
                .unwrap()
                .line(),
            "show message 1a2b3c4d"
        );
    }

    #[test]
    fn replies_round_trip() {
        let r = Reply::ok("a\nb\n");
        assert_eq!(Reply::decode(&r.encode()), Some(r));
        let f = Reply::failed(Some("mda is already paused"));
        assert_eq!(f.text, "command failed: mda is already paused\n");
        assert_eq!(Reply::decode(&f.encode()), Some(f));
        assert_eq!(Reply::decode(b"garbage"), None);
    }

    #[test]
    fn envelope_counts() {
        assert_eq!(envelopes_text(0, "removed"), "0 envelope removed\n");
        assert_eq!(envelopes_text(1, "scheduled"), "1 envelope scheduled\n");
        assert_eq!(envelopes_text(3, "removed"), "3 envelopes removed\n");
    }
}
