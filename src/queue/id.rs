//! Message and envelope identifiers, shaped exactly like OpenSMTPD's.
//!
//! They appear in log lines (`smtp message msgid=23e4b886`, `smtp envelope
//! evpid=23e4b886cb965599`), in the `250 2.0.0 <msgid> Message accepted`
//! reply, in `smtpctl` arguments and as spool file names, so operators and
//! their scripts depend on the shape:
//!
//! * a message id is 32 random bits, never 0, printed as 8 lower-case hex
//!   digits;
//! * an envelope id is the message id in the top 32 bits and 32 more random
//!   non-zero bits below, printed as 16 lower-case hex digits. Every envelope
//!   therefore names its message, and `smtpctl schedule 23e4b886` can select
//!   all envelopes of a message by prefix.
//!
//! Uniqueness in the spool is checked by the spool itself when it creates
//! the directory or file that carries the id (`O_EXCL`-style), not here.

use std::fmt;
use std::str::FromStr;

use super::error::{QueueError, Result};

/// Identifies one accepted message (the body shared by its envelopes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Msgid(u32);

/// Identifies one delivery of a message to one destination.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Evpid(u64);

/// Why a piece of text is not a queue id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadId(String);

impl fmt::Display for BadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadId {}

/// Draws 32 random bits from the operating system.
fn random_u32() -> Result<u32> {
    getrandom::u32().map_err(|e| QueueError::Random(e.to_string()))
}

/// Draws a random non-zero 32-bit value (zero is re-drawn, as OpenSMTPD does).
fn random_nonzero_u32() -> Result<u32> {
    // The chance of drawing zero 8 times in a row is 2^-256; the bound only
    // keeps the loop provably finite.
    for _ in 0..8 {
        let v = random_u32()?;
        if v != 0 {
            return Ok(v);
        }
    }
    Err(QueueError::Random(
        "the random source returned only zeros".into(),
    ))
}

/// Parses exactly `digits` hex digits (either case) into a number.
fn parse_hex_exact(text: &str, digits: usize, what: &str) -> std::result::Result<u64, BadId> {
    if text.len() != digits || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BadId(format!(
            "invalid {what} \"{}\": expected {digits} hex digits",
            text.escape_debug()
        )));
    }
    u64::from_str_radix(text, 16).map_err(|e| BadId(format!("invalid {what}: {e}")))
}

impl Msgid {
    /// Wraps a raw value; `None` for 0, which OpenSMTPD never uses.
    pub fn new(raw: u32) -> Option<Msgid> {
        (raw != 0).then_some(Msgid(raw))
    }

    /// Draws a fresh random message id (not yet checked against the spool).
    pub fn random() -> Result<Msgid> {
        random_nonzero_u32().map(Msgid)
    }

    /// The raw 32-bit value.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The spool bucket: the high byte, as in `queue/c7/c70b0203/`.
    pub fn bucket(self) -> u8 {
        (self.0 >> 24) as u8
    }
}

impl Evpid {
    /// Wraps a raw value; `None` when either half is 0.
    pub fn new(raw: u64) -> Option<Evpid> {
        let (hi, lo) = ((raw >> 32) as u32, raw as u32);
        (hi != 0 && lo != 0).then_some(Evpid(raw))
    }

    /// Builds an envelope id from its message id and its own non-zero half.
    pub fn from_parts(msgid: Msgid, low: u32) -> Option<Evpid> {
        Evpid::new(((msgid.0 as u64) << 32) | low as u64)
    }

    /// Draws a fresh random envelope id for `msgid` (not yet checked
    /// against the message's other envelopes).
    pub fn random(msgid: Msgid) -> Result<Evpid> {
        let low = random_nonzero_u32()?;
        Ok(Evpid(((msgid.0 as u64) << 32) | low as u64))
    }

    /// The raw 64-bit value.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The message this envelope belongs to.
    pub fn msgid(self) -> Msgid {
        Msgid((self.0 >> 32) as u32)
    }
}

impl fmt::Display for Msgid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Display for Evpid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Strict: exactly 8 hex digits, as in spool file names and log lines.
impl FromStr for Msgid {
    type Err = BadId;
    fn from_str(s: &str) -> std::result::Result<Msgid, BadId> {
        let v = parse_hex_exact(s, 8, "message id")?;
        Msgid::new(v as u32).ok_or_else(|| BadId("invalid message id: 0".into()))
    }
}

/// Strict: exactly 16 hex digits, as in spool file names and log lines.
impl FromStr for Evpid {
    type Err = BadId;
    fn from_str(s: &str) -> std::result::Result<Evpid, BadId> {
        let v = parse_hex_exact(s, 16, "envelope id")?;
        Evpid::new(v).ok_or_else(|| {
            BadId(format!(
                "invalid envelope id \"{s}\": both halves must be non-zero"
            ))
        })
    }
}

/// What an `smtpctl schedule|remove|pause envelope ID` argument selects:
/// one envelope, or every envelope of a message.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum QueueId {
    /// All envelopes of this message.
    Message(Msgid),
    /// This envelope only.
    Envelope(Evpid),
}

impl QueueId {
    /// True when `evpid` is selected by this id.
    pub fn selects(self, evpid: Evpid) -> bool {
        match self {
            QueueId::Message(m) => evpid.msgid() == m,
            QueueId::Envelope(e) => e == evpid,
        }
    }
}

/// Like OpenSMTPD's `smtpctl`: 1 to 16 hex digits read as a number; a value
/// above `0xffffffff` is an envelope id, anything else a message id.
impl FromStr for QueueId {
    type Err = BadId;
    fn from_str(s: &str) -> std::result::Result<QueueId, BadId> {
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadId(format!(
                "invalid msgid/evpid \"{}\"",
                s.escape_debug()
            )));
        }
        let v = u64::from_str_radix(s, 16).map_err(|e| BadId(e.to_string()))?;
        if v > 0xffff_ffff {
            Evpid::new(v)
                .map(QueueId::Envelope)
                .ok_or_else(|| BadId(format!("invalid evpid \"{s}\"")))
        } else {
            Msgid::new(v as u32)
                .map(QueueId::Message)
                .ok_or_else(|| BadId(format!("invalid msgid \"{s}\"")))
        }
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueId::Message(m) => m.fmt(f),
            QueueId::Envelope(e) => e.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_opensmtpd_logs() {
        let m = Msgid::new(0x23e4b886).unwrap();
        assert_eq!(m.to_string(), "23e4b886");
        let e = Evpid::from_parts(m, 0xcb965599).unwrap();
        assert_eq!(e.to_string(), "23e4b886cb965599");
        assert_eq!(e.msgid(), m);
        // Leading zeros are kept: the width is fixed.
        assert_eq!(Msgid::new(0x1).unwrap().to_string(), "00000001");
        assert_eq!(
            Evpid::new(0x0000_0001_0000_0002).unwrap().to_string(),
            "0000000100000002"
        );
        assert_eq!(Msgid::new(0xc70b0203).unwrap().bucket(), 0xc7);
    }

    #[test]
    fn parses_strictly() {
        assert_eq!("23e4b886".parse::<Msgid>().unwrap().get(), 0x23e4b886);
        assert_eq!("23E4B886".parse::<Msgid>().unwrap().get(), 0x23e4b886);
        for bad in [
            "",
            "23e4b88",
            "23e4b8861",
            "00000000",
            "23e4b88g",
            "+3e4b886",
            " 3e4b886",
        ] {
            assert!(bad.parse::<Msgid>().is_err(), "{bad:?} accepted");
        }
        assert!("23e4b886cb965599".parse::<Evpid>().is_ok());
        for bad in [
            "23e4b886",
            "0000000012345678",
            "1234567800000000",
            "23e4b886cb96559z",
        ] {
            assert!(bad.parse::<Evpid>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn zero_halves_are_refused() {
        assert!(Msgid::new(0).is_none());
        assert!(Evpid::new(0).is_none());
        assert!(Evpid::new(0xffff_ffff).is_none());
        assert!(Evpid::new(0xffff_ffff_0000_0000).is_none());
        assert!(Evpid::from_parts(Msgid::new(5).unwrap(), 0).is_none());
    }

    #[test]
    fn random_ids_are_well_formed() {
        for _ in 0..1000 {
            let m = Msgid::random().unwrap();
            assert_ne!(m.get(), 0);
            let e = Evpid::random(m).unwrap();
            assert_eq!(e.msgid(), m);
            assert_ne!(e.get() as u32, 0);
            assert_eq!(e.to_string().parse::<Evpid>().unwrap(), e);
        }
    }

    #[test]
    fn queue_id_selects_by_value_like_smtpctl() {
        let e: Evpid = "c70b02031d875f5a".parse().unwrap();
        assert_eq!(
            "c70b02031d875f5a".parse::<QueueId>(),
            Ok(QueueId::Envelope(e))
        );
        assert_eq!(
            "c70b0203".parse::<QueueId>(),
            Ok(QueueId::Message(e.msgid()))
        );
        // By value, as strtoull would read it.
        assert_eq!(
            "00000000c70b0203".parse::<QueueId>(),
            Ok(QueueId::Message(e.msgid()))
        );
        assert!("0".parse::<QueueId>().is_err());
        assert!("c70b020300000000".parse::<QueueId>().is_err());
        assert!("xyz".parse::<QueueId>().is_err());
        assert!("c70b02031d875f5a0".parse::<QueueId>().is_err());
        assert!(QueueId::Message(e.msgid()).selects(e));
        assert!(QueueId::Envelope(e).selects(e));
        let other = Evpid::from_parts(e.msgid(), 7).unwrap();
        assert!(!QueueId::Envelope(e).selects(other));
        assert!(QueueId::Message(e.msgid()).selects(other));
    }
}
