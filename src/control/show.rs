//! The texts of `smtpctl show ...`, as OpenSMTPD prints them.

use crate::queue::{Envelope, EnvelopeState, EnvelopeStatus};

/// One `show queue` line:
/// `EVPID|FAMILY|TYPE|FLAGS|SENDER|RCPT|DEST|CTIME|EXPIRY|LASTTRY|RETRY|STATE|DELAY|ERROR`.
///
/// `status` is the scheduler's view (`None` when the daemon is not running: state
/// `offline`, empty delay). EXPIRY is ctime plus the envelope's own ttl field, as in 6.8.
pub fn queue_line(e: &Envelope, status: Option<&EnvelopeStatus>, now: u64) -> String {
    let mut flags = Vec::new();
    if e.flags.bounce {
        flags.push("bounce");
    }
    if e.flags.authenticated {
        flags.push("auth");
    }
    if e.flags.internal {
        flags.push("internal");
    }
    if status.is_some_and(|s| s.suspended) {
        flags.push("suspend");
    }
    let (state, delay) = match status.map(|s| s.state) {
        Some(EnvelopeState::Pending { next_try }) => {
            ("pending", next_try.saturating_sub(now).to_string())
        }
        Some(EnvelopeState::Inflight { since }) => {
            ("inflight", now.saturating_sub(since).to_string())
        }
        None => ("offline", String::new()),
    };
    format!(
        "{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
        e.id,
        e.client.family(),
        e.kind().as_str(),
        flags.join(","),
        // 6.8 writes each address as `USER@DOMAIN`: the null sender is `@`.
        if e.sender.is_empty() { "@" } else { &e.sender },
        e.rcpt,
        e.dest,
        e.ctime,
        e.ctime.saturating_add(e.ttl),
        e.last_try,
        e.retry,
        state,
        delay,
        e.errorline
    )
}

/// `show stats`: `key=value` lines in key order, as OpenSMTPD's stat backend lists them.
pub fn stats_text(mut pairs: Vec<(String, String)>) -> String {
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// `smtpctl monitor`'s header, printed every 25 lines.
pub const MONITOR_HEADER: &str = "--- client ---  -- envelope --   ---- relay/delivery --- ------- misc -------\n\
curr conn disc  curr  enq  deq   ok tmpfail prmfail loop expire remove bounce\n";

/// Parses `show stats` output (`key=value` lines).
pub fn parse_stats(text: &str) -> std::collections::HashMap<String, u64> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// One `smtpctl monitor` line: the current values of the `curr` columns and the change of
/// every other counter since `prev` (all of them for the first line, from empty counters).
pub fn monitor_line(
    prev: &std::collections::HashMap<String, u64>,
    cur: &std::collections::HashMap<String, u64>,
) -> String {
    let now = |k: &str| cur.get(k).copied().unwrap_or(0);
    let delta = |k: &str| now(k).saturating_sub(prev.get(k).copied().unwrap_or(0));
    let sessions = |m: &std::collections::HashMap<String, u64>| {
        [
            "smtp.session.inet4",
            "smtp.session.inet6",
            "smtp.session.local",
        ]
        .iter()
        .map(|k| m.get(*k).copied().unwrap_or(0))
        .sum::<u64>()
    };
    let conn = sessions(cur).saturating_sub(sessions(prev));
    let was = |k: &str| prev.get(k).copied().unwrap_or(0);
    // Ended = started − growth of the open ones.
    let disc = (conn + was("smtp.session")).saturating_sub(now("smtp.session"));
    let enq = delta("queue.envelope.enqueued");
    let deq = (enq + was("scheduler.envelope")).saturating_sub(now("scheduler.envelope"));
    format!(
        "{:4} {:4} {:4}  {:4} {:4} {:4} {:4} {:7} {:7} {:4} {:6} {:6} {:6}\n",
        now("smtp.session"),
        conn,
        disc,
        now("scheduler.envelope"),
        enq,
        deq,
        delta("scheduler.delivery.ok"),
        delta("scheduler.delivery.tempfail"),
        delta("scheduler.delivery.permfail"),
        delta("scheduler.delivery.loop"),
        delta("scheduler.envelope.expired"),
        delta("scheduler.envelope.removed"),
        delta("queue.bounce"),
    )
}

/// `show status`: `MDA running` / `MDA paused`, and so on.
pub fn status_text(mda_paused: bool, mta_paused: bool, smtp_paused: bool) -> String {
    let word = |p: bool| if p { "paused" } else { "running" };
    format!(
        "MDA {}\nMTA {}\nSMTP {}\n",
        word(mda_paused),
        word(mta_paused),
        word(smtp_paused)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines_show_current_values_and_changes() {
        let first = parse_stats(
            "queue.bounce=1\nqueue.envelope.enqueued=10\nscheduler.delivery.ok=7\n\
             scheduler.envelope=3\nsmtp.session=2\nsmtp.session.inet4=5\nsmtp.session.local=1\n\
             uptime.human=5s\n",
        );
        let line = monitor_line(&Default::default(), &first);
        assert_eq!(
            line,
            "   2    6    4     3   10    7    7       0       0    0      0      0      1\n"
        );
        let mut second = first.clone();
        second.insert("smtp.session".into(), 1);
        second.insert("smtp.session.inet4".into(), 7);
        second.insert("queue.envelope.enqueued".into(), 12);
        second.insert("scheduler.envelope".into(), 1);
        second.insert("scheduler.delivery.ok".into(), 11);
        assert_eq!(
            monitor_line(&first, &second),
            "   1    2    3     1    2    4    4       0       0    0      0      0      0\n"
        );
        // Every number ends where its column's name ends.
        let ends = |t: &str| -> Vec<usize> {
            let b = t.as_bytes();
            (0..b.len())
                .filter(|&i| b[i] != b' ' && (i + 1 == b.len() || b[i + 1] == b' '))
                .collect()
        };
        let header = MONITOR_HEADER.lines().nth(1).unwrap();
        assert_eq!(ends(line.trim_end()), ends(header));
    }
    use crate::queue::{DeliveryKind, Evpid, MtaTarget, Target};

    fn evp() -> Envelope {
        let mut e = Envelope::new(
            Evpid::new(0xc70b02031d875f5a).unwrap(),
            Target::Mta(MtaTarget::default()),
            "sender@example.net",
            "x@queue.test",
            "x@queue.test",
            1795333122,
        );
        e.client = crate::queue::ClientAddr::Ip("127.0.0.1".parse().unwrap());
        e.retry = 1;
        e.errorline = "Network error on destination MXs".into();
        e
    }

    #[test]
    fn pending_line_is_opensmtpd_format() {
        let status = EnvelopeStatus {
            kind: DeliveryKind::Mta,
            state: EnvelopeState::Pending {
                next_try: 1795333122 + 400,
            },
            suspended: false,
            retry: 1,
            expire: 0,
        };
        assert_eq!(
            queue_line(&evp(), Some(&status), 1795333122 + 11),
            "c70b02031d875f5a|inet4|mta||sender@example.net|x@queue.test|x@queue.test|1795333122|1795333122|0|1|pending|389|Network error on destination MXs"
        );
    }

    #[test]
    fn offline_and_flags() {
        let mut e = evp();
        e.flags.bounce = true;
        e.flags.authenticated = true;
        e.client = crate::queue::ClientAddr::Local;
        let line = queue_line(&e, None, 0);
        assert!(
            line.starts_with("c70b02031d875f5a|local|mta|bounce,auth|"),
            "{line}"
        );
        assert!(
            line.ends_with("|1|offline||Network error on destination MXs"),
            "{line}"
        );
    }

    #[test]
    fn stats_are_sorted_and_status_words() {
        let s = stats_text(vec![
            ("uptime".into(), "3".into()),
            ("scheduler.envelope".into(), "1".into()),
        ]);
        assert_eq!(s, "scheduler.envelope=1\nuptime=3\n");
        assert_eq!(
            status_text(true, false, false),
            "MDA paused\nMTA running\nSMTP running\n"
        );
    }
}
