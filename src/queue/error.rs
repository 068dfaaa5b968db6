//! What can go wrong in the queue, worded for the operator who has to fix it.
//!
//! Every file-system failure carries the operation and the path, because
//! "Permission denied" alone does not tell anyone which of the spool's
//! thousands of files is the problem.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::envelope_file::EnvelopeFormatError;
use super::id::{Evpid, Msgid};

/// The queue's result type.
pub type Result<T> = std::result::Result<T, QueueError>;

/// A failure of a queue operation. The SMTP side maps any of these to a
/// temporary failure (`421`/`451`): the message was not accepted.
#[derive(Debug)]
pub enum QueueError {
    /// A system call on a spool path failed.
    Io {
        /// What we were doing ("fsync", "rename", ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's answer.
        source: io::Error,
    },
    /// Another process holds the spool lock: two daemons must never share
    /// one spool, or each would roll back the other's open transactions.
    Locked(PathBuf),
    /// An envelope file on disk cannot be read back; it has been moved to
    /// `corrupt/` (the path says where it was).
    Corrupt {
        /// Where the file was found.
        path: PathBuf,
        /// Why it was rejected.
        reason: EnvelopeFormatError,
    },
    /// An envelope handed to the queue cannot be stored as given
    /// (e.g. a field contains a newline, or its id belongs to another message).
    InvalidEnvelope(String),
    /// No such message in the queue.
    NoSuchMessage(Msgid),
    /// No such envelope in the queue.
    NoSuchEnvelope(Evpid),
    /// The caller went away (its future was dropped) before the commit was
    /// made durable; the transaction was rolled back.
    Cancelled,
    /// The random number source failed; no id could be drawn.
    Random(String),
    /// The queue's internal committer thread is gone (it can only stop when
    /// the spool is being dropped, or after a panic).
    CommitterGone,
}

impl QueueError {
    /// Wraps an I/O error with the operation and path it belongs to.
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> QueueError {
        QueueError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the underlying I/O error is "not found".
    pub fn is_not_found(&self) -> bool {
        match self {
            QueueError::Io { source, .. } => source.kind() == io::ErrorKind::NotFound,
            QueueError::NoSuchMessage(_) | QueueError::NoSuchEnvelope(_) => true,
            _ => false,
        }
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::Io { op, path, source } => {
                write!(
                    f,
                    "queue: {op} {}: {}",
                    path.display(),
                    crate::log::strerror(source)
                )
            }
            QueueError::Locked(path) => write!(
                f,
                "queue: spool {} is in use by another smtpd (lock held on {}); \
                 stop the other daemon or use another --spool",
                path.parent().unwrap_or(path).display(),
                path.display()
            ),
            QueueError::Corrupt { path, reason } => write!(
                f,
                "queue: corrupt envelope {}: {reason} (moved to corrupt/)",
                path.display()
            ),
            QueueError::InvalidEnvelope(why) => write!(f, "queue: invalid envelope: {why}"),
            QueueError::NoSuchMessage(msgid) => write!(f, "queue: no such message {msgid}"),
            QueueError::NoSuchEnvelope(evpid) => write!(f, "queue: no such envelope {evpid}"),
            QueueError::Cancelled => {
                write!(f, "queue: transaction cancelled before it was committed")
            }
            QueueError::Random(why) => write!(f, "queue: cannot draw a random id: {why}"),
            QueueError::CommitterGone => write!(f, "queue: the committer thread has stopped"),
        }
    }
}

impl std::error::Error for QueueError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QueueError::Io { source, .. } => Some(source),
            QueueError::Corrupt { reason, .. } => Some(reason),
            _ => None,
        }
    }
}
