//! The spool: the one handle through which the daemon touches the queue on
//! disk — opening (and recovering) it, starting message transactions, and
//! the operations the scheduler, delivery and `smtpctl` need on committed
//! messages.
//!
//! A `Spool` is a cheap clone (an `Arc`); every session holds one. Opening
//! takes an exclusive lock on `spool.lock`, so two daemons can never roll
//! back each other's transactions.
//!
//! Operations on committed messages are plain blocking file-system calls
//! (a few µs to a few ms, including fsyncs); async callers run them with
//! `tokio::task::spawn_blocking`. Changes to one message's directory
//! (update, add, remove) are serialized by a lock stripe chosen by message
//! id, so "remove the last envelope, then the message" cannot race with
//! "add a bounce envelope to the message".

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::commit::{CommitStats, Committer, Counters, remove_tree, sync_dir, sync_file};
use super::envelope::Envelope;
use super::error::{QueueError, Result};
use super::id::{Evpid, Msgid};
use super::layout::{Layout, MESSAGE_FILE, SPARE_ENVELOPE};
use super::recovery::{self, Recovery, envelope_name, quarantine, read_envelope};
use super::writer::MessageWriter;

/// Number of lock stripes for per-message changes.
const STRIPES: usize = 64;

/// Attempts at drawing a free message id before giving up.
const MSGID_ATTEMPTS: usize = 100;

/// A handle on an open spool (see the module documentation).
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    layout: Layout,
    committer: Committer,
    counters: Arc<Counters>,
    stripes: Vec<Mutex<()>>,
    /// Emptied message directories in `spare/`, ready for reuse, and the next name.
    spares: Mutex<Vec<PathBuf>>,
    spare_seq: AtomicU64,
    /// Ids of the open transactions, which may have nothing on disk yet.
    open_ids: Mutex<std::collections::HashSet<Msgid>>,
    /// Body bytes the open transactions hold in memory files, and the most they may.
    memory_held: std::sync::atomic::AtomicUsize,
    memory_budget: std::sync::atomic::AtomicUsize,
    /// Held for the life of the spool; the lock goes with the descriptor.
    _lock: File,
}

/// Most emptied directories kept for reuse.
const MAX_SPARES: usize = 1024;

/// Most body bytes all open transactions together keep in memory files (see
/// [`super::writer`]); beyond it, bodies go to the spool as soon as they pass 64 KiB.
pub const MEMORY_BUDGET: usize = 64 * 1024 * 1024;

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("root", &self.inner.layout.root())
            .finish_non_exhaustive()
    }
}

/// What [`Spool::remove_envelope`] removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removed {
    /// The envelope; the message still has others.
    Envelope,
    /// The envelope and, as it was the last one, the message.
    Message,
}

impl Spool {
    /// Opens the spool at `root` (created if missing), locks it, starts the
    /// committer and recovers what a previous run left (see
    /// [`super::recovery`]). The [`Recovery`] lists the committed envelopes
    /// for the scheduler.
    pub fn open(root: impl Into<PathBuf>) -> Result<(Spool, Recovery)> {
        let layout = Layout::new(root);
        layout
            .create()
            .map_err(|e| QueueError::io("create spool", layout.root(), e))?;
        let lock_path = layout.lock_file();
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| QueueError::io("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(QueueError::Locked(lock_path)),
            Err(fs::TryLockError::Error(e)) => return Err(QueueError::io("lock", &lock_path, e)),
        }
        let recovered = recovery::recover(&layout)?;
        let counters = Arc::new(Counters::default());
        let committer = Committer::start(layout.clone(), Arc::clone(&counters))?;
        let spool = Spool {
            inner: Arc::new(Inner {
                layout,
                committer,
                counters,
                stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
                spares: Mutex::new(Vec::new()),
                spare_seq: AtomicU64::new(0),
                open_ids: Mutex::new(std::collections::HashSet::new()),
                memory_held: std::sync::atomic::AtomicUsize::new(0),
                memory_budget: std::sync::atomic::AtomicUsize::new(MEMORY_BUDGET),
                _lock: lock,
            }),
        };
        crate::log::queue_trace(|| "queue_init(1) -> 1".into());
        Ok((spool, recovered))
    }

    /// Reads every committed envelope of the spool at `root` without
    /// locking, repairing or changing anything: for `smtpctl show queue`
    /// when the daemon is not running. Unreadable envelopes (damaged, or sealed
    /// by `queue encryption` with no key at hand) are skipped and returned as
    /// errors beside the others; files that vanish during the walk are ignored.
    pub fn offline_envelopes(root: impl AsRef<Path>) -> Result<(Vec<Envelope>, Vec<QueueError>)> {
        let layout = Layout::new(root.as_ref());
        let mut out = Vec::new();
        let mut unreadable = Vec::new();
        for bucket in recovery::list(&layout.queue())? {
            if !bucket.is_dir {
                continue;
            }
            let messages = match recovery::list(&bucket.path) {
                Ok(m) => m,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            for message in messages {
                let Some(msgid) = message
                    .name
                    .as_deref()
                    .and_then(|n| n.parse::<Msgid>().ok().filter(|m| m.to_string() == n))
                else {
                    continue;
                };
                let entries = match recovery::list(&message.path) {
                    Ok(e) => e,
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                };
                for entry in entries {
                    let Some(evpid) = entry.name.as_deref().and_then(|n| envelope_name(msgid, n))
                    else {
                        continue;
                    };
                    match read_envelope(&entry.path, evpid) {
                        Ok(envelope) => out.push(envelope),
                        Err(e) if e.is_not_found() => {}
                        Err(e) => unreadable.push(e),
                    }
                }
            }
        }
        out.sort_by_key(|e| e.id);
        Ok((out, unreadable))
    }

    /// Where the spool lives.
    pub fn root(&self) -> &Path {
        self.inner.layout.root()
    }

    /// The spool's path arithmetic.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// Counters of the commit path.
    pub fn commit_stats(&self) -> CommitStats {
        self.inner.counters.snapshot()
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    pub(crate) fn committer(&self) -> &Committer {
        &self.inner.committer
    }

    /// Starts a message transaction: draws a message id that is free in the spool and
    /// reserves it. Nothing is written yet (see [`MessageWriter`]): this only looks at
    /// `queue/`, which the system keeps in its caches.
    pub async fn begin_message(&self) -> Result<MessageWriter> {
        self.begin_message_blocking()
    }

    /// Like [`Spool::begin_message`], for callers outside tokio.
    pub fn begin_message_blocking(&self) -> Result<MessageWriter> {
        self.begin_message_with(Msgid::random)
    }

    /// [`Spool::begin_message_blocking`] with the id source given (tests use
    /// it to put messages into chosen buckets).
    pub(crate) fn begin_message_with(
        &self,
        mut draw: impl FnMut() -> Result<Msgid>,
    ) -> Result<MessageWriter> {
        let _profile = crate::log::queue_timer("queue_message_create");
        let layout = &self.inner.layout;
        for _ in 0..MSGID_ATTEMPTS {
            let msgid = draw()?;
            if !self.reserve_msgid(msgid) {
                continue;
            }
            // Reserved first, then checked: a commit of this id that was under way has
            // finished (the reservation outlives it), so `queue/` tells the truth.
            if layout.message_dir(msgid).symlink_metadata().is_ok() {
                self.release_msgid(msgid);
                continue;
            }
            crate::log::queue_trace(|| format!("queue_message_create() -> 1 ({msgid})"));
            return Ok(MessageWriter::new(
                self.clone(),
                msgid,
                layout.incoming_message(msgid),
            ));
        }
        crate::log::queue_trace(|| "queue_message_create() -> 0 (00000000)".into());
        Err(QueueError::io(
            "find a free message id in",
            &layout.queue(),
            std::io::Error::other(format!("{MSGID_ATTEMPTS} random ids were all taken")),
        ))
    }

    fn open_ids(&self) -> MutexGuard<'_, std::collections::HashSet<Msgid>> {
        self.inner
            .open_ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reserves `msgid` for a transaction; `false` if an open one has it.
    fn reserve_msgid(&self, msgid: Msgid) -> bool {
        self.open_ids().insert(msgid)
    }

    /// Ends the reservation of a transaction that committed, aborted or was discarded.
    pub(crate) fn release_msgid(&self, msgid: Msgid) {
        self.open_ids().remove(&msgid);
    }

    /// Takes `n` bytes of the memory budget for a body kept in memory; `false` (nothing
    /// taken) when the open transactions together would hold more than the budget.
    pub(crate) fn hold_memory(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        let budget = self.inner.memory_budget.load(Ordering::Relaxed);
        self.inner
            .memory_held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|&total| total <= budget)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken with [`Spool::hold_memory`].
    pub(crate) fn release_memory(&self, n: usize) {
        use std::sync::atomic::Ordering;
        let _ = self
            .inner
            .memory_held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(n))
            });
    }

    /// Body bytes held in memory by the open transactions.
    pub fn memory_held(&self) -> usize {
        self.inner
            .memory_held
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sets the memory budget (tests).
    #[cfg(test)]
    pub(crate) fn set_memory_budget(&self, bytes: usize) {
        self.inner
            .memory_budget
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Creates `incoming/<msgid>/` (`dir`), from a spare directory when one is kept, and
    /// its body file; on failure nothing is left.
    pub(crate) fn create_incoming(&self, dir: &Path) -> Result<File> {
        let reused = self.reuse_spare(dir);
        if !reused {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| QueueError::io("create", dir, e))?;
        }
        let body = dir.join(MESSAGE_FILE);
        // A reused directory may bring an emptied body file along (see `recycle_incoming`):
        // it is reused too.
        match OpenOptions::new()
            .write(true)
            .create_new(!reused)
            .create(reused)
            .truncate(reused)
            .mode(0o600)
            .open(&body)
        {
            Ok(f) => Ok(f),
            Err(e) => {
                let _ = remove_tree(dir);
                Err(QueueError::io("create", &body, e))
            }
        }
    }

    /// Every committed message, in id order.
    pub fn messages(&self) -> Result<Vec<Msgid>> {
        let _profile = crate::log::queue_timer("queue_message_walk");
        let layout = &self.inner.layout;
        let mut out = Vec::new();
        for bucket in recovery::list(&layout.queue())? {
            if !bucket.is_dir {
                continue;
            }
            for entry in recovery::list(&bucket.path)? {
                if let Some(m) = entry
                    .name
                    .as_deref()
                    .and_then(|n| n.parse::<Msgid>().ok().filter(|m| m.to_string() == n))
                    .filter(|m| entry.is_dir && layout.bucket(*m) == bucket.path)
                {
                    out.push(m);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The envelope ids of a committed message, in id order.
    pub fn envelope_ids(&self, msgid: Msgid) -> Result<Vec<Evpid>> {
        let dir = self.inner.layout.message_dir(msgid);
        if !dir.is_dir() {
            return Err(QueueError::NoSuchMessage(msgid));
        }
        let mut ids: Vec<Evpid> = recovery::list(&dir)?
            .into_iter()
            .filter(|e| !e.is_dir)
            .filter_map(|e| e.name.as_deref().and_then(|n| envelope_name(msgid, n)))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Every committed envelope that can be read, in id order (for
    /// `smtpctl show queue`). Corrupt ones are quarantined and skipped;
    /// envelopes removed while the walk runs are skipped.
    pub fn envelopes(&self) -> Result<Vec<Envelope>> {
        let _profile = crate::log::queue_timer("queue_envelope_walk");
        let mut out = Vec::new();
        for msgid in self.messages()? {
            let ids = match self.envelope_ids(msgid) {
                Ok(ids) => ids,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            for evpid in ids {
                match self.load_envelope(evpid) {
                    Ok(envelope) => out.push(envelope),
                    Err(e) if e.is_not_found() => {}
                    Err(e @ QueueError::Corrupt { .. }) => tracing::warn!("{e}"),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    /// Reads one committed envelope. A corrupt one is moved to `corrupt/`
    /// and reported as [`QueueError::Corrupt`].
    pub fn load_envelope(&self, evpid: Evpid) -> Result<Envelope> {
        let _profile = crate::log::queue_timer("queue_envelope_load");
        let loaded = self.load_envelope_file(evpid);
        crate::log::queue_trace(|| {
            // 6.8 gives the length of the envelope it read, 0 when it could not.
            let len = match &loaded {
                Ok(e) => e.to_file_text().map(|t| t.len()).unwrap_or(0),
                Err(_) => 0,
            };
            format!("queue_envelope_load({evpid}) -> {len}")
        });
        loaded
    }

    fn load_envelope_file(&self, evpid: Evpid) -> Result<Envelope> {
        let path = self.inner.layout.envelope_file(evpid);
        match read_envelope(&path, evpid) {
            Err(QueueError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(QueueError::NoSuchEnvelope(evpid))
            }
            Err(QueueError::Corrupt { .. }) => {
                // Read again under the message's lock: an update may have
                // replaced the file meanwhile, and a good envelope must
                // never be quarantined.
                let _guard = self.stripe(evpid.msgid());
                match read_envelope(&path, evpid) {
                    Err(QueueError::Corrupt { path, reason }) => {
                        quarantine(&self.inner.layout, &path, Some(evpid.msgid()))?;
                        Err(QueueError::Corrupt { path, reason })
                    }
                    Err(QueueError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        Err(QueueError::NoSuchEnvelope(evpid))
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    /// Rewrites a committed envelope (retry count, last try, error line...)
    /// atomically: the new text goes to `<evpid>.tmp`, is fsynced, renamed
    /// over the envelope, and the directory is fsynced. A crash leaves the
    /// old or the new envelope, never a mix.
    pub fn update_envelope(&self, envelope: &Envelope) -> Result<()> {
        let _profile = crate::log::queue_timer("queue_envelope_update");
        let stored = self.store_envelope(envelope, true);
        crate::log::queue_trace(|| {
            let r = i32::from(stored.is_ok());
            format!("queue_envelope_update({}) -> {r}", envelope.id)
        });
        stored
    }

    /// Draws an envelope id that is free in a committed message (for a
    /// bounce envelope, which lives in the message it reports on).
    pub fn new_evpid(&self, msgid: Msgid) -> Result<Evpid> {
        for _ in 0..64 {
            let evpid = Evpid::random(msgid)?;
            if self
                .inner
                .layout
                .envelope_file(evpid)
                .symlink_metadata()
                .is_err()
            {
                return Ok(evpid);
            }
        }
        Err(QueueError::Random(
            "no free envelope id after 64 draws".into(),
        ))
    }

    /// Adds a new envelope (a bounce, usually) to a committed message,
    /// durably, the same way [`Spool::update_envelope`] writes.
    pub fn add_envelope(&self, envelope: &Envelope) -> Result<()> {
        let _profile = crate::log::queue_timer("queue_envelope_create");
        let stored = self.store_envelope(envelope, false);
        crate::log::queue_trace(|| {
            let len = envelope.to_file_text().map(|t| t.len()).unwrap_or(0);
            let asked = u64::from(envelope.id.msgid().get()) << 32;
            envelope_create_words(asked, envelope.id, len, stored.is_ok())
        });
        stored
    }

    fn store_envelope(&self, envelope: &Envelope, replace: bool) -> Result<()> {
        let layout = &self.inner.layout;
        let evpid = envelope.id;
        let text = envelope
            .to_file_text()
            .map_err(|e| QueueError::InvalidEnvelope(format!("{evpid}: {e}")))?;
        let _guard = self.stripe(evpid.msgid());
        let dir = layout.message_dir(evpid.msgid());
        if !layout.message_file(evpid.msgid()).is_file() {
            return Err(QueueError::NoSuchMessage(evpid.msgid()));
        }
        let path = layout.envelope_file(evpid);
        let exists = path.symlink_metadata().is_ok();
        if replace && !exists {
            return Err(QueueError::NoSuchEnvelope(evpid));
        }
        if !replace && exists {
            return Err(QueueError::InvalidEnvelope(format!(
                "envelope {evpid} already exists"
            )));
        }
        let tmp = layout.envelope_update_file(evpid);
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| QueueError::io("create", &tmp, e))?;
            let bytes = super::crypto::queue_bytes(text.as_bytes())
                .map_err(|e| QueueError::io("encrypt", &tmp, e))?;
            f.write_all(&bytes)
                .map_err(|e| QueueError::io("write", &tmp, e))?;
            sync_file(&f, &tmp)?;
            fs::rename(&tmp, &path).map_err(|e| QueueError::io("rename", &tmp, e))
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        sync_dir(&dir)
    }

    /// Removes a committed envelope (delivered, failed for good, expired, or
    /// removed by the administrator). When it was the message's last one,
    /// the message goes too. Durable on return, so a crash cannot deliver
    /// it again.
    pub fn remove_envelope(&self, evpid: Evpid) -> Result<Removed> {
        let _profile = crate::log::queue_timer("queue_envelope_delete");
        let removed = self.remove_envelope_file(evpid);
        crate::log::queue_trace(|| {
            let r = i32::from(removed.is_ok());
            format!("queue_envelope_delete({evpid}) -> {r}")
        });
        removed
    }

    fn remove_envelope_file(&self, evpid: Evpid) -> Result<Removed> {
        let layout = &self.inner.layout;
        let msgid = evpid.msgid();
        let _guard = self.stripe(msgid);
        let path = layout.envelope_file(evpid);
        match path.symlink_metadata() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(QueueError::NoSuchEnvelope(evpid));
            }
            Err(e) => return Err(QueueError::io("remove", &path, e)),
        }
        let dir = layout.message_dir(msgid);
        let others = recovery::list(&dir)?.iter().any(|e| {
            !e.is_dir
                && e.name
                    .as_deref()
                    .and_then(|n| envelope_name(msgid, n))
                    .is_some_and(|id| id != evpid)
        });
        if others {
            fs::remove_file(&path).map_err(|e| QueueError::io("remove", &path, e))?;
            sync_dir(&dir)?;
            Ok(Removed::Envelope)
        } else {
            // The last envelope leaves with its message: one rename takes both out of
            // `queue/`, and the envelope's file can be reused (see `recycle`).
            self.purge_locked(msgid)?;
            Ok(Removed::Message)
        }
    }

    /// Removes a committed message with all its envelopes; returns how many
    /// envelopes it had.
    pub fn remove_message(&self, msgid: Msgid) -> Result<usize> {
        let _profile = crate::log::queue_timer("queue_message_delete");
        let removed = self.envelope_ids(msgid).and_then(|ids| {
            let _guard = self.stripe(msgid);
            self.purge_locked(msgid).map(|()| ids.len())
        });
        crate::log::queue_trace(|| {
            let r = i32::from(removed.is_ok());
            format!("queue_message_delete({msgid}) -> {r}")
        });
        removed
    }

    /// Moves a message directory to `purge/` (durably gone from `queue/`
    /// once the bucket is fsynced), then deletes it. A crash during the
    /// deletion is finished by the next start.
    fn purge_locked(&self, msgid: Msgid) -> Result<()> {
        let layout = &self.inner.layout;
        let dir = layout.message_dir(msgid);
        let purge = layout.purge_message(msgid);
        remove_tree(&purge)?;
        match fs::rename(&dir, &purge) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(QueueError::NoSuchMessage(msgid));
            }
            Err(e) => return Err(QueueError::io("rename", &dir, e)),
        }
        sync_dir(&layout.bucket(msgid))?;
        self.recycle(&purge);
        Ok(())
    }

    /// Keeps a purged message directory for a later message instead of deleting it, with
    /// its last envelope file emptied (`envelope.spare`); the body is deleted. Creating a
    /// directory and a file costs a file system more than renaming existing ones: on ext4
    /// without a journal, every new inode is searched for among the recently deleted ones.
    /// Nothing here needs to be durable: recovery empties `spare/`. The body is never
    /// reused — a reader still holding it open must not see another message.
    fn recycle(&self, dir: &std::path::Path) {
        self.keep_spare(dir, || {
            let mut envelope = None;
            for entry in fs::read_dir(dir)? {
                let entry = entry?;
                let name = entry.file_name();
                if name.to_str() == Some(MESSAGE_FILE) {
                    continue;
                }
                if envelope.is_none() && entry.file_type()?.is_file() {
                    envelope = Some(entry.path());
                    continue;
                }
                return Ok(false);
            }
            fs::remove_file(dir.join(MESSAGE_FILE))?;
            if let Some(envelope) = envelope {
                let spare = dir.join(SPARE_ENVELOPE);
                fs::rename(&envelope, &spare)?;
                OpenOptions::new().write(true).open(&spare)?.set_len(0)?;
            }
            Ok(true)
        });
    }

    /// Keeps an open transaction's directory `incoming/<msgid>/` for reuse once its message
    /// was delivered without being queued: its body file `body` is emptied and stays. The
    /// transaction owned the directory, so it holds the body and at most a reused
    /// envelope file (`envelope.spare`), both fit for the next message.
    pub(crate) fn recycle_incoming(&self, dir: &std::path::Path, body: File) {
        self.keep_spare(dir, || body.set_len(0).map(|()| true));
    }

    /// Moves `dir` into `spare/` once `empty` has made it fit for reuse (`Ok(false)`: it
    /// cannot be). With enough spares kept already, or on any error, the directory is
    /// removed instead.
    fn keep_spare(&self, dir: &std::path::Path, empty: impl FnOnce() -> std::io::Result<bool>) {
        let kept = (|| -> std::io::Result<bool> {
            let mut spares = self
                .inner
                .spares
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if spares.len() >= MAX_SPARES || !empty()? {
                return Ok(false);
            }
            let n = self.inner.spare_seq.fetch_add(1, Ordering::Relaxed);
            let to = self.inner.layout.spare().join(n.to_string());
            fs::rename(dir, &to)?;
            spares.push(to);
            Ok(true)
        })();
        if !matches!(kept, Ok(true))
            && let Err(e) = remove_tree(dir)
        {
            tracing::warn!("{e}");
        }
    }

    /// Moves a kept directory to `dir` (an `incoming/<msgid>` that does not exist yet);
    /// false when none is kept or the move failed (the caller creates `dir`).
    fn reuse_spare(&self, dir: &std::path::Path) -> bool {
        let spare = self
            .inner
            .spares
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        match spare {
            Some(spare) => match fs::rename(&spare, dir) {
                Ok(()) => true,
                Err(_) => {
                    let _ = remove_tree(&spare);
                    false
                }
            },
            None => false,
        }
    }

    /// Opens a committed message's body for reading (delivery, bounces,
    /// `smtpctl show message`).
    pub fn open_message(&self, msgid: Msgid) -> Result<File> {
        let _profile = crate::log::queue_timer("queue_message_fd_r");
        let path = self.inner.layout.message_file(msgid);
        let opened = super::crypto::open_message_file(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                QueueError::NoSuchMessage(msgid)
            } else {
                QueueError::io("open", &path, e)
            }
        });
        crate::log::queue_trace(|| {
            let fd = match &opened {
                Ok(f) => std::os::fd::AsRawFd::as_raw_fd(f),
                Err(_) => -1,
            };
            format!("queue_message_fd_r({msgid}) -> {fd}")
        });
        opened
    }

    fn stripe(&self, msgid: Msgid) -> MutexGuard<'_, ()> {
        let i = msgid.get() as usize % STRIPES;
        // The guarded data is `()`: a panic elsewhere cannot leave it
        // inconsistent, so a poisoned lock is simply taken.
        self.inner.stripes[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// 6.8's words for an envelope written into the queue: the id it was asked for (`asked`:
/// the message's id in the high half, or the id of the transaction's envelope before),
/// the envelope's length, the result and the id it got.
pub(crate) fn envelope_create_words(asked: u64, evpid: Evpid, len: usize, created: bool) -> String {
    let (r, got) = if created { (1, evpid.get()) } else { (0, 0) };
    format!("queue_envelope_create({asked:016x}, {len}) -> {r} ({got:016x})")
}
