//! Recovery at start: put the spool back into a state where every message
//! in `queue/` is deliverable and nothing else is left over.
//!
//! What a crash can leave, and what recovery does with it:
//! * entries in `incoming/`: transactions that never committed (no 250 was
//!   sent for them) — removed;
//! * entries in `purge/`: messages being deleted — finished;
//! * entries in `spare/`: emptied directories kept for reuse — removed;
//! * `<evpid>.tmp` next to an envelope: an update cut short; the envelope
//!   itself is intact (the rename is the commit point) — the temp file is
//!   removed;
//! * a message directory without envelopes: the last envelope was removed
//!   but the directory not yet — the message is purged;
//! * an envelope that does not parse, a message directory without its
//!   `message` file, or a name that is not ours: moved to `corrupt/` for a
//!   human to look at, never deleted and never delivered.
//!
//! Everything else is returned to the caller, which hands the envelopes to
//! the scheduler. Recovery is idempotent: a crash during recovery is
//! recovered by the next start.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::commit::remove_tree;
use super::envelope::Envelope;
use super::envelope_file::{EnvelopeFormatError, MAX_ENVELOPE_FILE};
use super::error::{QueueError, Result};
use super::id::{Evpid, Msgid};
use super::layout::{Layout, MESSAGE_FILE, UPDATE_SUFFIX, create_dir, is_bucket_name};

/// What [`super::Spool::open`] found and did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Every committed envelope, in id order, for the scheduler.
    pub envelopes: Vec<Envelope>,
    /// Number of committed messages found.
    pub messages: usize,
    /// Open transactions removed from `incoming/`.
    pub rolled_back: usize,
    /// Messages removed because none of their envelopes was left.
    pub purged: Vec<Msgid>,
    /// Where quarantined files and directories now are (under `corrupt/`).
    pub quarantined: Vec<PathBuf>,
    /// Sealed envelopes the queue key opened.
    sealed_opened: usize,
    /// Envelopes the queue key did not open, by message: decided once the whole queue
    /// was read.
    undecryptable: Vec<Undecryptable>,
}

/// The envelopes of one message that the queue key did not open.
#[derive(Debug)]
struct Undecryptable {
    msgid: Msgid,
    files: Vec<(PathBuf, QueueError)>,
    /// Other envelopes of the message were read.
    kept_others: bool,
}

/// Runs recovery on an existing, locked spool.
pub(crate) fn recover(layout: &Layout) -> Result<Recovery> {
    let mut report = Recovery::default();

    for entry in list(&layout.purge())? {
        remove_any(&entry.path)?;
    }
    // Directories kept for reuse are not part of any message; a new pool starts empty.
    if layout.spare().is_dir() {
        for entry in list(&layout.spare())? {
            remove_any(&entry.path)?;
        }
    }
    for entry in list(&layout.incoming())? {
        remove_any(&entry.path)?;
        report.rolled_back += 1;
        tracing::info!("queue: rolled back {}", entry.path.display());
    }

    for bucket in list(&layout.queue())? {
        if !(bucket.is_dir && bucket.name.as_deref().is_some_and(is_bucket_name)) {
            report
                .quarantined
                .push(quarantine(layout, &bucket.path, None)?);
            continue;
        }
        for message in list(&bucket.path)? {
            let msgid = message
                .name
                .as_deref()
                .and_then(|n| n.parse::<Msgid>().ok().filter(|m| m.to_string() == n));
            match msgid {
                Some(m) if message.is_dir && layout.bucket(m) == bucket.path => {
                    recover_message(layout, m, &mut report)?;
                }
                _ => report
                    .quarantined
                    .push(quarantine(layout, &message.path, None)?),
            }
        }
    }
    settle_undecryptable(layout, &mut report)?;
    report.envelopes.sort_by_key(|e| e.id);
    Ok(report)
}

/// Envelopes the queue key did not open. When the key opened none at all, it is the wrong
/// key (or none was given): the start stops and nothing is moved. When it opened others,
/// these files are damaged: each goes to `corrupt/` with a warning, and so does the body
/// of a message left without envelopes, so that the rest of the queue is delivered.
fn settle_undecryptable(layout: &Layout, report: &mut Recovery) -> Result<()> {
    let pending = std::mem::take(&mut report.undecryptable);
    if pending.is_empty() {
        return Ok(());
    }
    if report.sealed_opened == 0 {
        let first = pending
            .into_iter()
            .flat_map(|u| u.files)
            .map(|(_, e)| e)
            .next();
        return match first {
            Some(e) => Err(e),
            None => Ok(()),
        };
    }
    for Undecryptable {
        msgid,
        files,
        kept_others,
    } in pending
    {
        for (path, e) in files {
            tracing::warn!(
                "queue: envelope {} cannot be decrypted although the queue key opens {} \
                 other(s): damaged ({e}); moved to corrupt/",
                path.display(),
                report.sealed_opened
            );
            report
                .quarantined
                .push(quarantine(layout, &path, Some(msgid))?);
        }
        if !kept_others {
            keep_orphaned_body(layout, msgid, report)?;
        }
    }
    Ok(())
}

/// A message none of whose envelopes could be read: its body goes to `corrupt/<msgid>/`
/// beside them (never deleted), and its directory is removed.
fn keep_orphaned_body(layout: &Layout, msgid: Msgid, report: &mut Recovery) -> Result<()> {
    tracing::warn!(
        "queue: message {msgid} has no readable envelope; its body is moved to corrupt/"
    );
    let body = layout.message_dir(msgid).join(MESSAGE_FILE);
    report
        .quarantined
        .push(quarantine(layout, &body, Some(msgid))?);
    remove_tree(&layout.message_dir(msgid))
}

/// Recovery of one `queue/<XX>/<msgid>/`.
fn recover_message(layout: &Layout, msgid: Msgid, report: &mut Recovery) -> Result<()> {
    let dir = layout.message_dir(msgid);
    let mut has_body = false;
    let mut candidates = Vec::new();
    for entry in list(&dir)? {
        let name = entry.name.as_deref().unwrap_or("");
        if name == MESSAGE_FILE && !entry.is_dir {
            has_body = true;
        } else if name.ends_with(UPDATE_SUFFIX) && !entry.is_dir {
            remove_any(&entry.path)?;
        } else if let Some(evpid) = envelope_name(msgid, name).filter(|_| !entry.is_dir) {
            candidates.push((evpid, entry.path));
        } else {
            report
                .quarantined
                .push(quarantine(layout, &entry.path, Some(msgid))?);
        }
    }
    if !has_body {
        tracing::warn!("queue: message {msgid} has no body; moved to corrupt/");
        report.quarantined.push(quarantine(layout, &dir, None)?);
        return Ok(());
    }
    let mut loaded = 0;
    let mut corrupt = 0;
    let mut undecryptable = Vec::new();
    for (evpid, path) in candidates {
        match read_envelope_sealed(&path, evpid) {
            Ok((envelope, sealed)) => {
                report.envelopes.push(envelope);
                report.sealed_opened += usize::from(sealed);
                loaded += 1;
            }
            Err(QueueError::Corrupt { reason, .. }) => {
                tracing::warn!("queue: corrupt envelope {}: {reason}", path.display());
                report
                    .quarantined
                    .push(quarantine(layout, &path, Some(msgid))?);
                corrupt += 1;
            }
            Err(e @ QueueError::Io { op: "decrypt", .. }) => undecryptable.push((path, e)),
            Err(e) => return Err(e),
        }
    }
    if !undecryptable.is_empty() {
        // Left in place until the whole queue shows whether the key is the right one.
        report.undecryptable.push(Undecryptable {
            msgid,
            files: undecryptable,
            kept_others: loaded > 0,
        });
        if loaded == 0 {
            return Ok(());
        }
    }
    if loaded > 0 {
        report.messages += 1;
    } else if corrupt > 0 {
        keep_orphaned_body(layout, msgid, report)?;
    } else {
        remove_tree(&dir)?;
        report.purged.push(msgid);
    }
    Ok(())
}

/// The envelope id named by a file in `msgid`'s directory, if it is one
/// (canonical lower-case spelling only: that is what we write).
pub(crate) fn envelope_name(msgid: Msgid, name: &str) -> Option<Evpid> {
    name.parse::<Evpid>()
        .ok()
        .filter(|e| e.msgid() == msgid && e.to_string() == name)
}

/// Reads and parses one envelope file; a file that does not parse is
/// reported as [`QueueError::Corrupt`] (not moved: the caller decides).
pub(crate) fn read_envelope(path: &Path, evpid: Evpid) -> Result<Envelope> {
    read_envelope_sealed(path, evpid).map(|(e, _)| e)
}

/// [`read_envelope`], also saying whether the file was sealed (`queue encryption`).
fn read_envelope_sealed(path: &Path, evpid: Evpid) -> Result<(Envelope, bool)> {
    let file = fs::File::open(path).map_err(|e| QueueError::io("open", path, e))?;
    let mut bytes = Vec::with_capacity(1024);
    // A sealed envelope is longer by its version byte, IV and tag (a compressed one is
    // shorter, or longer by the gzip header at most).
    let sealing = 1 + 12 + super::crypto::TAG_LEN + 64;
    file.take((MAX_ENVELOPE_FILE + sealing) as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| QueueError::io("read", path, e))?;
    // Not decryptable is not corrupt: a wrong or missing key must not send the queue to
    // corrupt/.
    let sealed = super::crypto::is_sealed(&bytes);
    let bytes = super::crypto::open_queue_bytes(bytes).map_err(|e| {
        if sealed {
            QueueError::io("decrypt", path, e)
        } else {
            // Not sealed: a compressed file that does not inflate is simply damaged.
            QueueError::Corrupt {
                path: path.to_path_buf(),
                reason: EnvelopeFormatError {
                    line: 0,
                    message: e.to_string(),
                },
            }
        }
    })?;
    Envelope::from_file_text(evpid, &bytes)
        .map(|e| (e, sealed))
        .map_err(|reason: EnvelopeFormatError| QueueError::Corrupt {
            path: path.to_path_buf(),
            reason,
        })
}

/// Moves `path` into `corrupt/` (into `corrupt/<msgid>/` when it belongs to
/// a message), adding `.N` to the name if it is taken. Returns where it went.
pub(crate) fn quarantine(layout: &Layout, path: &Path, msgid: Option<Msgid>) -> Result<PathBuf> {
    let dir = match msgid {
        Some(m) => layout.corrupt().join(m.to_string()),
        None => layout.corrupt(),
    };
    create_dir(&dir, 0o700).map_err(|e| QueueError::io("create", &dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unnamed".into());
    let mut dest = dir.join(&name);
    let mut n = 1;
    while dest.symlink_metadata().is_ok() {
        if n > 1000 {
            return Err(QueueError::io(
                "quarantine",
                path,
                std::io::Error::other("too many files of that name in corrupt/"),
            ));
        }
        dest = dir.join(format!("{name}.{n}"));
        n += 1;
    }
    fs::rename(path, &dest).map_err(|e| QueueError::io("rename", path, e))?;
    tracing::warn!(
        "queue: quarantined {} as {}",
        path.display(),
        dest.display()
    );
    Ok(dest)
}

/// One directory entry.
pub(crate) struct Entry {
    pub(crate) path: PathBuf,
    /// The name if it is UTF-8 (ours always are).
    pub(crate) name: Option<String>,
    /// A real directory (symbolic links are not followed).
    pub(crate) is_dir: bool,
}

/// Lists a directory, sorted by name for a deterministic walk.
pub(crate) fn list(dir: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| QueueError::io("read directory", dir, e))? {
        let entry = entry.map_err(|e| QueueError::io("read directory", dir, e))?;
        let is_dir = entry
            .file_type()
            .map_err(|e| QueueError::io("stat", &entry.path(), e))?
            .is_dir();
        out.push(Entry {
            path: entry.path(),
            name: entry.file_name().to_str().map(str::to_string),
            is_dir,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Removes a file or a directory tree.
fn remove_any(path: &Path) -> Result<()> {
    let is_dir = path.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false);
    if is_dir {
        remove_tree(path)
    } else {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(QueueError::io("remove", path, e)),
        }
    }
}
