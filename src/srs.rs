//! Sender Rewriting Scheme, as OpenSMTPD's `srs.c` speaks it.
//!
//! A relay action with `srs` rewrites the sender of forwarded mail so that the next hop
//! sees an address of ours: `SRS0=HHHH=TT=origdomain=origuser@ourdomain`, where `TT` is
//! the day number modulo 1024 in two base32 characters and `HHHH` the first four base64
//! characters of SHA-1 over the key followed by the rest of the address (OpenSMTPD hashes
//! key and text together rather than using an HMAC; addresses must verify between the
//! two implementations, so the same construction is used). A sender that is already SRS
//! becomes an `SRS1=` address. Bounces to such addresses are decoded back to the original
//! sender during expansion.

use base64::Engine;
use sha1::{Digest, Sha1};

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const DAY: u64 = 24 * 60 * 60;
/// Longest address produced (OpenSMTPD's `SMTPD_MAXMAILADDRSIZE` less its terminator).
const MAX_ADDRESS: usize = 255 + 1 + 255;

/// The keys and lifetime of `srs key`, `srs key backup` and `srs ttl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrsKeys {
    pub key: String,
    pub backup: Option<String>,
    /// Days an address stays valid (default 4).
    pub ttl_days: u16,
}

impl SrsKeys {
    /// The keys of a configuration, `None` without `srs key`.
    pub fn from_config(o: &crate::config::model::SrsOptions) -> Option<SrsKeys> {
        let key = o.key.clone()?;
        let ttl_days = o
            .ttl
            .as_ref()
            .map_or(4, |d| (d.seconds / DAY).clamp(1, 1023) as u16);
        Some(SrsKeys {
            key,
            backup: o.key_backup.clone(),
            ttl_days,
        })
    }
}

/// The 4-character hash of `value` under `key`.
fn hash(key: &str, value: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(value.as_bytes());
    let digest = h.finalize();
    let b64 = base64::engine::general_purpose::STANDARD.encode(digest.as_slice());
    b64[..4].to_string()
}

/// The day stamp of `now` (seconds since the epoch): 10 bits.
pub fn day_stamp(now: u64) -> u16 {
    ((now / DAY) % 1024) as u16
}

fn stamp_text(t: u16) -> String {
    let a = BASE32[((t >> 5) & 0x1f) as usize] as char;
    let b = BASE32[(t & 0x1f) as usize] as char;
    format!("{a}{b}")
}

fn stamp_value(a: u8, b: u8) -> Option<u16> {
    let hi = BASE32.iter().position(|&c| c == a)? as u16;
    let lo = BASE32.iter().position(|&c| c == b)? as u16;
    Some((hi << 5) | lo)
}

/// Whether a stamp `t` is acceptable on day `today`: at most `ttl` days old, or up to one
/// day ahead, counting modulo 1024.
fn stamp_fresh(today: u16, t: u16, ttl: u16) -> bool {
    if today == t {
        return true;
    }
    let (today, t, ttl) = (today as i32, t as i32, ttl as i32);
    let behind = if today > ttl {
        t <= today && t >= today - ttl
    } else {
        t <= today || t >= 1024 - (ttl - today)
    };
    let ahead = if today + 1 < 1024 {
        t >= today && t <= today + 1
    } else {
        t >= today || t <= (today + 1) % 1024
    };
    behind || ahead
}

/// `user@domain` split at the last `@`; both parts non-empty.
fn split(addr: &str) -> Option<(&str, &str)> {
    let (u, d) = addr.rsplit_once('@')?;
    (!u.is_empty() && !d.is_empty()).then_some((u, d))
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

fn bounded(s: String) -> Option<String> {
    (s.len() <= MAX_ADDRESS).then_some(s)
}

/// The sender to announce for mail forwarded from `rcpt_domain` (the domain of the
/// original recipient). An address that cannot be rewritten is returned unchanged.
pub fn encode(keys: &SrsKeys, sender: &str, rcpt_domain: &str, now: u64) -> String {
    let out = if starts_with_ignore_case(sender, "SRS0=") {
        // SRS0 from a previous hop: SRS1=HHHH=hopdomain==<SRS0 local part>@ours.
        split(&sender[5..]).and_then(|(user, domain)| {
            let tail = format!("{domain}=={user}@{rcpt_domain}");
            bounded(format!("SRS1={}={tail}", hash(&keys.key, &tail)))
        })
    } else if starts_with_ignore_case(sender, "SRS1=") {
        // SRS1 again: keep the first hop's part, with our own hash.
        split(&sender[5..]).and_then(|(user, _)| {
            let tail = format!("{user}@{rcpt_domain}");
            let b = tail.as_bytes();
            if b.len() < 5 || !matches!(b[4], b'=' | b'+' | b'-') {
                return None;
            }
            let rest = &tail[5..];
            bounded(format!("SRS1={}={rest}", hash(&keys.key, rest)))
        })
    } else {
        split(sender).and_then(|(user, domain)| {
            let tail = format!(
                "{}={domain}={user}@{rcpt_domain}",
                stamp_text(day_stamp(now))
            );
            bounded(format!("SRS0={}={tail}", hash(&keys.key, &tail)))
        })
    };
    out.unwrap_or_else(|| sender.to_string())
}

/// Whether the hash at the start of `text` (`HHHH=rest`) is right under a key.
fn verified(keys: &SrsKeys, text: &str) -> bool {
    let (Some(given), Some(rest)) = (text.get(..4), text.get(5..)) else {
        return false;
    };
    hash(&keys.key, rest) == given || keys.backup.as_ref().is_some_and(|b| hash(b, rest) == given)
}

/// The address an SRS address stands for, or `None` when it is not one of ours, was
/// tampered with, or is too old. `rcpt` is `local@domain`.
pub fn decode(keys: &SrsKeys, rcpt: &str, now: u64) -> Option<String> {
    let today = day_stamp(now);
    if starts_with_ignore_case(rcpt, "SRS0=") {
        let text = &rcpt[5..];
        if text.len() < 5 || !verified(keys, text) {
            return None;
        }
        let text = text.get(5..)?;
        let b = text.as_bytes();
        if b.len() < 3 {
            return None;
        }
        let t = stamp_value(b[0], b[1])?;
        if !stamp_fresh(today, t, keys.ttl_days) {
            return None;
        }
        let (user, _) = split(text.get(3..)?)?;
        let (domain, local) = user.split_once('=')?;
        bounded(format!("{local}@{domain}"))
    } else if starts_with_ignore_case(rcpt, "SRS1=") {
        let text = &rcpt[5..];
        if text.len() < 5 || !verified(keys, text) {
            return None;
        }
        let (user, _) = split(text.get(5..)?)?;
        // hopdomain==HHHH=TT=...: the SRS0 address at the first hop.
        let (domain, rest) = user.split_once('=')?;
        let out = bounded(format!("SRS0{rest}@{domain}"))?;
        let stamp = rest.get(6..)?.as_bytes();
        if stamp.len() < 3 || !matches!(stamp[2], b'=' | b'+' | b'-') {
            return None;
        }
        let t = stamp_value(stamp[0], stamp[1])?;
        if !stamp_fresh(today, t, keys.ttl_days) {
            return None;
        }
        Some(out)
    } else {
        None
    }
}

/// Whether a local part looks like an SRS address (`SRS0=`/`SRS1=`, any case).
pub fn is_srs(local: &str) -> bool {
    starts_with_ignore_case(local, "SRS0=") || starts_with_ignore_case(local, "SRS1=")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SrsKeys {
        SrsKeys {
            key: "secret".into(),
            backup: None,
            ttl_days: 4,
        }
    }

    /// 2026-11-29 12:00 UTC: day 20786, stamp 20786 % 1024 = 306 = "JS".
    const NOW: u64 = 20786 * DAY + 12 * 3600;

    #[test]
    fn stamp_is_two_base32_characters() {
        assert_eq!(day_stamp(NOW), 306);
        assert_eq!(stamp_text(306), "JS");
        assert_eq!(stamp_value(b'J', b'S'), Some(306));
        assert_eq!(stamp_value(b'j', b'S'), None);
    }

    // Vectors computed independently with Python:
    //   base64.b64encode(hashlib.sha1(b"secret" + tail).digest())[:4]
    #[test]
    fn srs0_matches_known_vector() {
        let out = encode(&keys(), "alice@origin.test", "local.test", NOW);
        assert_eq!(out, "SRS0=nups=JS=origin.test=alice@local.test");
        assert_eq!(
            decode(&keys(), &out, NOW).as_deref(),
            Some("alice@origin.test")
        );
    }

    #[test]
    fn srs1_from_srs0_and_back() {
        let srs0 = "SRS0=nups=JS=origin.test=alice@local.test";
        let out = encode(&keys(), srs0, "second.test", NOW);
        assert_eq!(
            out,
            "SRS1=qsaZ=local.test==nups=JS=origin.test=alice@second.test"
        );
        assert_eq!(decode(&keys(), &out, NOW).as_deref(), Some(srs0));
        // Again through a third hop: only the hash and the domain change.
        let again = encode(&keys(), &out, "third.test", NOW);
        assert_eq!(
            again,
            "SRS1=U0Bi=local.test==nups=JS=origin.test=alice@third.test"
        );
    }

    #[test]
    fn tampering_and_age_are_refused() {
        let k = keys();
        assert_eq!(
            decode(&k, "SRS0=nups=JS=origin.test=mallory@local.test", NOW),
            None
        );
        let out = encode(&k, "alice@origin.test", "local.test", NOW);
        assert!(decode(&k, &out, NOW + 4 * DAY).is_some());
        assert_eq!(decode(&k, &out, NOW + 5 * DAY), None);
        // One day ahead is tolerated (clock skew), two are not.
        assert!(decode(&k, &out, NOW - DAY).is_some());
        assert_eq!(decode(&k, &out, NOW - 2 * DAY), None);
        // The prefix is case-insensitive; the hash is not.
        let lower = format!("srs0={}", &out[5..]);
        assert!(decode(&k, &lower, NOW).is_some());
        assert_eq!(
            decode(&k, "SRS0=nUps=JS=origin.test=alice@local.test", NOW),
            None
        );
    }

    #[test]
    fn backup_key_still_decodes() {
        let old = encode(&keys(), "alice@origin.test", "local.test", NOW);
        let rotated = SrsKeys {
            key: "newer".into(),
            backup: Some("secret".into()),
            ttl_days: 4,
        };
        assert_eq!(
            decode(&rotated, &old, NOW).as_deref(),
            Some("alice@origin.test")
        );
        let no_backup = SrsKeys {
            backup: None,
            ..rotated
        };
        assert_eq!(decode(&no_backup, &old, NOW), None);
    }

    #[test]
    fn wrapping_stamps() {
        assert!(stamp_fresh(1, 1022, 4));
        assert!(!stamp_fresh(1, 1020, 4));
        assert!(stamp_fresh(1023, 0, 4));
        assert!(!stamp_fresh(1023, 1, 4));
    }

    #[test]
    fn garbage_never_panics() {
        let k = keys();
        for s in [
            "",
            "SRS0=",
            "SRS0=abcd",
            "SRS0=abcd=",
            "SRS0=abcd=JS",
            "SRS1=x",
            "SRS1=abcd=@",
            "SRS0=é€=JS=a=b@c",
            "SRS1=ééé=x==y@z",
            "@",
            "SRS0=@",
            "no-at-sign",
        ] {
            let _ = decode(&k, s, NOW);
            let _ = encode(&k, s, "d.test", NOW);
        }
        assert_eq!(encode(&k, "no-at-sign", "d.test", NOW), "no-at-sign");
    }
}
