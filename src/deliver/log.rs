//! The `mda delivery` log line (§9.2) and OpenSMTPD's way of printing a
//! delay, so that log scrapers written for OpenSMTPD keep working:
//!
//! ```text
//! 7115c4e853ef511e mda delivery evpid=f4fe3ff38b32ae2e from=<alice@client.example> to=<foo@bsdsx.fr> rcpt=<foo@bsdsx.fr> user=foo delay=0s result=Ok stat=Delivered
//! ```

use super::result::DeliveryResult;

/// What the `mda delivery` line says about one envelope.
#[derive(Clone, Debug)]
pub struct MdaLogEntry<'a> {
    /// Id of the per-user delivery group (not the SMTP session).
    pub group_id: u64,
    /// Envelope id.
    pub evpid: u64,
    /// Envelope sender, empty for `<>`.
    pub sender: &'a str,
    /// The expanded destination address (`to=`).
    pub dest: &'a str,
    /// The original recipient (`rcpt=`).
    pub rcpt: &'a str,
    /// The delivery user name (the expanded user name, not `user NAME`).
    pub user: &'a str,
    /// Seconds since the envelope was created.
    pub delay_secs: i64,
}

/// The complete `mda delivery` line for a result.
pub fn mda_delivery_line(entry: &MdaLogEntry<'_>, result: &DeliveryResult) -> String {
    format!(
        "{:016x} mda delivery evpid={:016x} from=<{}> to=<{}> rcpt=<{}> user={} delay={} result={} stat={}",
        entry.group_id,
        entry.evpid,
        entry.sender,
        entry.dest,
        entry.rcpt,
        entry.user,
        duration_to_text(entry.delay_secs),
        result.status,
        result.stat
    )
}

/// `duration_to_text`: `0s`, `10s`, `1m5s`, `2h`, `3d4h`; zero units are
/// left out; negative durations get a leading `-`.
pub fn duration_to_text(secs: i64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    if secs < 0 {
        out.push('-');
    }
    let t = secs.unsigned_abs();
    let (s, m, h, d) = (t % 60, (t / 60) % 60, (t / 3600) % 24, t / 86400);
    for (value, unit) in [(d, 'd'), (h, 'h'), (m, 'm'), (s, 's')] {
        if value != 0 {
            out.push_str(&value.to_string());
            out.push(unit);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::result::Status;

    #[test]
    fn durations() {
        let cases = [
            (0, "0s"),
            (10, "10s"),
            (60, "1m"),
            (65, "1m5s"),
            (7200, "2h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (86400 + 1, "1d1s"),
            (-65, "-1m5s"),
            (4 * 86400 + 59 * 60 + 59, "4d59m59s"),
        ];
        for (secs, text) in cases {
            assert_eq!(duration_to_text(secs), text, "{secs}");
        }
    }

    #[test]
    fn observed_lines() {
        let entry = MdaLogEntry {
            group_id: 0x7115c4e853ef511e,
            evpid: 0xf4fe3ff38b32ae2e,
            sender: "alice@client.example",
            dest: "foo@bsdsx.fr",
            rcpt: "foo@bsdsx.fr",
            user: "foo",
            delay_secs: 0,
        };
        assert_eq!(
            mda_delivery_line(&entry, &DeliveryResult::delivered()),
            "7115c4e853ef511e mda delivery evpid=f4fe3ff38b32ae2e from=<alice@client.example> to=<foo@bsdsx.fr> \
             rcpt=<foo@bsdsx.fr> user=foo delay=0s result=Ok stat=Delivered"
        );
        let null = MdaLogEntry {
            group_id: 0xfc386ee3662a9183,
            evpid: 0xf952a52e081dd929,
            sender: "",
            ..entry
        };
        let line = mda_delivery_line(
            &null,
            &DeliveryResult::plain(Status::PermFail, "Permanent failure in user lookup"),
        );
        assert_eq!(
            line,
            "fc386ee3662a9183 mda delivery evpid=f952a52e081dd929 from=<> to=<foo@bsdsx.fr> rcpt=<foo@bsdsx.fr> \
             user=foo delay=0s result=PermFail stat=Permanent failure in user lookup"
        );
    }
}
