//! Identifiers the SMTP side prints and passes around: session ids, queue message ids and
//! envelope ids.
//!
//! OpenSMTPD prints sessions and envelopes as 16 lower-case hex digits and messages as 8, and
//! an envelope id starts with the id of its message. The session never invents message or
//! envelope ids — the queue does, when it creates the message (at MAIL FROM) and each
//! envelope (at RCPT TO); the session only carries them into replies, headers and log events.

use std::fmt;

/// One SMTP session, as printed at the start of every `smtp` log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// One queued message: named in `250 2.0.0 <msgid> Message accepted for delivery` and in the
/// `Received:` header's `id` clause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId(pub u32);

/// One envelope (one recipient of one message); its upper 32 bits are the message id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvelopeId(pub u64);

impl EnvelopeId {
    /// The message this envelope belongs to.
    pub fn msgid(self) -> MsgId {
        MsgId((self.0 >> 32) as u32)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Display for EnvelopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_as_fixed_width_lower_hex() {
        assert_eq!(
            SessionId(0xfc386ee2408eb7c3).to_string(),
            "fc386ee2408eb7c3"
        );
        assert_eq!(SessionId(1).to_string(), "0000000000000001");
        assert_eq!(MsgId(0xf952a52e).to_string(), "f952a52e");
        assert_eq!(MsgId(0xab).to_string(), "000000ab");
        let evp = EnvelopeId(0xf952a52e5711b017);
        assert_eq!(evp.to_string(), "f952a52e5711b017");
        assert_eq!(evp.msgid(), MsgId(0xf952a52e));
    }
}
