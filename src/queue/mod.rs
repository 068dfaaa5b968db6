//! The durable queue: where an accepted message waits until every one of its
//! deliveries has succeeded, failed for good, or expired.
//!
//! The queue is the hand-off between the SMTP side and delivery, and the
//! only place that owns durability: `250 Message accepted` is sent only
//! after [`MessageWriter::commit`] has made the message and its envelopes
//! durable (OpenSMTPD 6.8 sends it without any fsync; see [`commit`] for how
//! we fsync without paying one disk flush per message).
//!
//! How a message moves through it:
//!
//! ```text
//! smtp session ── Spool::begin_message ──▶ msgid reserved, body collected in memory
//!              ── first 64 KiB block ───▶ incoming/<msgid>/message   (body streamed)
//!              ── delivered before commit (deliver::runner) ──▶ discarded, nothing queued
//!              ── MessageWriter::commit ─▶ queue/<XX>/<msgid>/{message,<evpid>...}  fsynced
//!                                                │
//! Scheduler::insert ◀── envelopes ───────────────┘   (also Spool::open's Recovery at start)
//! Scheduler::poll ──▶ Action::Deliver ──▶ delivery ──▶ Spool::remove_envelope / update_envelope
//!                 ──▶ Action::Expire  ──▶ Envelope::bounce + Spool::add_envelope, remove
//! ```
//!
//! One file per concept:
//! * [`id`]: message and envelope ids as OpenSMTPD prints them;
//! * [`layout`]: the spool's directories and file names;
//! * [`envelope`]: what one delivery needs; [`envelope_file`]: its text format;
//! * [`writer`]: the open transaction of one message;
//! * [`commit`]: group commit and the durability argument;
//! * [`recovery`]: what `Spool::open` repairs after a crash;
//! * [`spool`]: the handle and the operations on committed messages;
//! * [`scheduler`]: retry timing, expiry, and the `smtpctl` queue commands.
//! * [`bounce`]: the text of the reports (DSN) sent to senders on failure, expiry or delay.

pub mod bounce;
pub mod commit;
pub mod compress;
pub mod crypto;
pub mod envelope;
pub mod envelope_file;
pub mod error;
pub mod id;
pub mod layout;
pub mod recovery;
pub mod scheduler;
pub mod spool;
pub mod writer;

#[cfg(test)]
mod spool_tests;

pub use commit::CommitStats;
pub use envelope::{
    BOUNCE_TTL, BounceKind, BounceRefusal, BounceTarget, ClientAddr, DEFAULT_TTL, DeliveryKind,
    Dsn, DsnNotify, DsnRet, Envelope, EnvelopeFlags, MdaTarget, MtaTarget, StatusCode, Target,
};
pub use envelope_file::EnvelopeFormatError;
pub use error::{QueueError, Result};
pub use id::{BadId, Evpid, Msgid, QueueId};
pub use layout::{DEFAULT_SPOOL, Layout};
pub use recovery::Recovery;
pub use scheduler::{
    Action, DelayWarning, EnvelopeState, EnvelopeStatus, Removal, Retry, ScheduleEntry, Scheduler,
    SchedulerConfig, TempFailure,
};
pub use spool::{Removed, Spool};
pub use writer::MessageWriter;
