//! The open transaction of one message: the body streamed to
//! `incoming/<msgid>/message` while DATA runs, then committed with its
//! envelopes or rolled back.
//!
//! A `MessageWriter` owns `incoming/<msgid>/` until it commits, aborts or is
//! dropped; dropping it without a commit removes the directory, so a session
//! that dies mid-DATA leaves nothing behind (and a crash leaves only an
//! `incoming/` entry, which the next start removes).
//!
//! Body chunks are collected in memory and written in 64 KiB blocks from
//! tokio's blocking pool, so a session never blocks its runtime thread on
//! the disk; the `_blocking` twins serve callers outside tokio.
//!
//! `incoming/<msgid>/` is created only when something must be written: the
//! commit, [`MessageWriter::flush`], or a body that outgrows memory. Up to
//! [`MEMORY_LIMIT`] (and while all open transactions together hold less than
//! the spool's memory budget) the body stays in memory, its 64 KiB blocks in
//! an anonymous memory file (`memfd`); a message delivered before its commit
//! never touches the spool: its body goes to the delivery from memory
//! ([`MessageWriter::body_file_blocking`]), and no file is created, written,
//! truncated and reused on the disk for it.
//! Until then the message id is reserved in memory, so no other transaction
//! draws it.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::commit::{Counters, micros_since, remove_tree, sync_dir, sync_file};
use super::envelope::Envelope;
use super::error::{QueueError, Result};
use super::id::{Evpid, Msgid};
use super::layout::{MESSAGE_FILE, SPARE_ENVELOPE};
use super::spool::Spool;

/// Body bytes collected before a write to the file.
const WRITE_BLOCK: usize = 64 * 1024;

/// The collecting buffer's first size: most messages are smaller, and a buffer of 64 KiB
/// or more costs glibc a consolidation of its free lists each time one is freed.
const FIRST_BLOCK: usize = 16 * 1024;

/// Largest body a transaction keeps in memory: a larger one goes to the spool.
pub const MEMORY_LIMIT: u64 = 1024 * 1024;

/// An open message transaction (see the module documentation).
pub struct MessageWriter {
    spool: Spool,
    msgid: Msgid,
    dir: PathBuf,
    body: Body,
    buf: Vec<u8>,
    size: u64,
    /// Bytes of the spool's memory budget taken by [`Body::Memory`].
    held: usize,
    /// Low halves of the envelope ids handed out, to keep them distinct.
    issued: HashSet<u32>,
    /// Set once the directory is owned by a commit or has been removed.
    finished: bool,
}

/// Where the body file of a transaction stands.
#[derive(Debug)]
enum Body {
    /// Nothing on disk yet: `incoming/<msgid>/` does not exist.
    Lazy,
    /// The blocks written so far are in an anonymous memory file; `incoming/<msgid>/`
    /// does not exist.
    Memory(File),
    /// `incoming/<msgid>/message`, open for writing.
    Open(File),
    /// A write was interrupted or failed: the transaction can only be aborted.
    Broken,
}

impl std::fmt::Debug for MessageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageWriter")
            .field("msgid", &self.msgid)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl MessageWriter {
    /// A transaction for `msgid` (reserved by the caller), nothing on disk yet.
    pub(crate) fn new(spool: Spool, msgid: Msgid, dir: PathBuf) -> MessageWriter {
        MessageWriter {
            spool,
            msgid,
            dir,
            body: Body::Lazy,
            buf: Vec::with_capacity(FIRST_BLOCK),
            size: 0,
            held: 0,
            issued: HashSet::new(),
            finished: false,
        }
    }

    /// The message id (for `smtp message msgid=...` and the 250 reply).
    pub fn msgid(&self) -> Msgid {
        self.msgid
    }

    /// Body bytes written so far (`size=` of the `smtp message` log line).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// A fresh envelope id in this message, distinct from the ones already
    /// handed out.
    pub fn new_evpid(&mut self) -> Result<Evpid> {
        // A collision needs the same 32 random bits twice; the bound only
        // makes the loop provably finite.
        for _ in 0..64 {
            let evpid = Evpid::random(self.msgid)?;
            if self.issued.insert(evpid.get() as u32) {
                return Ok(evpid);
            }
        }
        Err(QueueError::Random(
            "no free envelope id after 64 draws".into(),
        ))
    }

    /// Appends body bytes. The file is written from tokio's blocking pool
    /// whenever 64 KiB have collected.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(chunk);
        self.size += chunk.len() as u64;
        if self.buf.len() >= WRITE_BLOCK && !self.keep_in_memory()? {
            self.flush_block().await?;
        }
        Ok(())
    }

    /// Like [`MessageWriter::write`], for callers outside tokio.
    pub fn write_blocking(&mut self, chunk: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(chunk);
        self.size += chunk.len() as u64;
        if self.buf.len() >= WRITE_BLOCK && !self.keep_in_memory()? {
            self.write_out()?;
        }
        Ok(())
    }

    /// Moves the collected block to the body's memory file when the body may stay in
    /// memory (at most [`MEMORY_LIMIT`], within the spool's budget); `false` when it must
    /// go to the disk instead. A memory file is written without touching the disk, so
    /// this runs on the caller's thread.
    fn keep_in_memory(&mut self) -> Result<bool> {
        if !matches!(self.body, Body::Lazy | Body::Memory(_))
            || self.size > MEMORY_LIMIT
            || !self.spool.hold_memory(self.buf.len())
        {
            return Ok(false);
        }
        self.held += self.buf.len();
        let path = self.body_path();
        let io = |e: std::io::Error| QueueError::io("write", &path, e);
        if matches!(self.body, Body::Lazy) {
            match memory_file() {
                Ok(file) => self.body = Body::Memory(file),
                // No memory file to be had (descriptors, memory): the disk, as before.
                Err(_) => {
                    self.release_held();
                    return Ok(false);
                }
            }
        }
        let Body::Memory(file) = &mut self.body else {
            return Ok(false);
        };
        if let Err(e) = file.write_all(&self.buf) {
            self.body = Body::Broken;
            self.release_held();
            return Err(io(e));
        }
        self.buf.clear();
        Ok(true)
    }

    /// Gives the memory budget back once the body has left memory.
    fn release_held(&mut self) {
        if !matches!(self.body, Body::Memory(_)) && self.held > 0 {
            self.spool.release_memory(self.held);
            self.held = 0;
        }
    }

    /// Writes the collected bytes to the body file (created if needed), without an fsync.
    fn write_out(&mut self) -> Result<()> {
        let written = write_body(&self.spool, &self.dir, &mut self.body, &self.buf);
        self.buf.clear();
        self.release_held();
        written
    }

    /// [`MessageWriter::write_out`] from tokio's blocking pool: on a runtime thread nothing
    /// touches the disk. The body state and the buffer go there and come back.
    async fn flush_block(&mut self) -> Result<()> {
        let path = self.body_path();
        let (spool, dir) = (self.spool.clone(), self.dir.clone());
        let mut body = std::mem::replace(&mut self.body, Body::Broken);
        let buf = std::mem::take(&mut self.buf);
        let (body, mut buf, result) = tokio::task::spawn_blocking(move || {
            let result = write_body(&spool, &dir, &mut body, &buf);
            (body, buf, result)
        })
        .await
        .map_err(|e| QueueError::io("write", &path, std::io::Error::other(e.to_string())))?;
        self.body = body;
        buf.clear();
        self.buf = buf;
        self.release_held();
        result
    }

    fn body_path(&self) -> PathBuf {
        self.dir.join(MESSAGE_FILE)
    }

    /// Makes the message and `envelopes` durable in `queue/` and returns the
    /// message id; only then may the SMTP side reply `250`. Each envelope's
    /// id must come from [`MessageWriter::new_evpid`] (or at least belong to
    /// this message and be distinct). On error everything is rolled back.
    /// See [`super::commit`] for the steps and the durability argument.
    pub async fn commit(mut self, envelopes: Vec<Envelope>) -> Result<Msgid> {
        let _profile = crate::log::queue_timer("queue_message_commit");
        let cancelled = Arc::new(AtomicBool::new(false));
        let transaction = self.take_transaction(envelopes, Arc::clone(&cancelled))?;
        let dir = self.dir.clone();
        let mut guard = CancelOnDrop(Some(cancelled));
        let result = tokio::task::spawn_blocking(move || transaction.run()).await;
        guard.0 = None;
        match result {
            Ok(outcome) => outcome,
            Err(e) => {
                // The blocking task died; what it left in incoming/ goes.
                let _ = remove_tree(&dir);
                Err(QueueError::io(
                    "commit",
                    &dir,
                    std::io::Error::other(e.to_string()),
                ))
            }
        }
    }

    /// Like [`MessageWriter::commit`], for callers outside tokio.
    pub fn commit_blocking(mut self, envelopes: Vec<Envelope>) -> Result<Msgid> {
        let _profile = crate::log::queue_timer("queue_message_commit");
        let cancelled = Arc::new(AtomicBool::new(false));
        self.take_transaction(envelopes, cancelled)?.run()
    }

    /// Writes the body bytes still collected in memory to the body file, without an
    /// fsync, and returns the file's path: deliveries made before the commit read the
    /// body from there (see `deliver::runner::Runner::deliver_direct`). The transaction
    /// stays open: it can still be committed or discarded.
    pub async fn flush(&mut self) -> Result<PathBuf> {
        if !self.buf.is_empty() || matches!(self.body, Body::Lazy | Body::Memory(_)) {
            self.flush_block().await?;
        }
        Ok(self.body_path())
    }

    /// Like [`MessageWriter::flush`], for callers outside tokio (or on its blocking pool).
    pub fn flush_blocking(&mut self) -> Result<PathBuf> {
        self.write_out()?;
        Ok(self.body_path())
    }

    /// The body as a file open for reading, for a delivery made before the commit. A body
    /// still wholly in memory goes to an anonymous memory file (`memfd`), and the spool is
    /// not touched; otherwise the body file is written out and opened. The transaction
    /// stays open either way.
    pub fn body_file_blocking(&mut self) -> Result<File> {
        let path = self.body_path();
        let io = |e: std::io::Error| QueueError::io("write", &path, e);
        match &mut self.body {
            Body::Lazy => {
                let mut file = memory_file().map_err(io)?;
                file.write_all(&self.buf).map_err(io)?;
                file.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
                return Ok(file);
            }
            Body::Memory(file) => {
                // The rest goes to the memory file too (the budget was checked for
                // every full block; the rest is less than one), and the reader gets its
                // own open file, with its own offset, through /proc.
                if let Err(e) = file.write_all(&self.buf) {
                    self.body = Body::Broken;
                    self.release_held();
                    return Err(io(e));
                }
                self.buf.clear();
                if let Ok(reader) = reopen(file) {
                    return Ok(reader);
                }
            }
            _ => {}
        }
        let path = self.flush_blocking()?;
        File::open(&path).map_err(|e| QueueError::io("open", &path, e))
    }

    /// `n` readers of the body, each with its own file offset, for deliveries made at once
    /// before the commit. A body still in memory goes to one `memfd`, reopened through
    /// `/proc/self/fd` for each further reader; where that cannot be done, the body file is
    /// written out and opened `n` times.
    pub fn body_files_blocking(&mut self, n: usize) -> Result<Vec<File>> {
        if matches!(self.body, Body::Lazy | Body::Memory(_)) {
            let first = self.body_file_blocking()?;
            let mut files = Vec::with_capacity(n);
            for _ in 1..n {
                match reopen(&first) {
                    Ok(f) => files.push(f),
                    Err(_) => break,
                }
            }
            if files.len() + 1 == n {
                files.insert(0, first);
                return Ok(files);
            }
        }
        let path = self.flush_blocking()?;
        (0..n)
            .map(|_| File::open(&path).map_err(|e| QueueError::io("open", &path, e)))
            .collect()
    }

    /// Like [`MessageWriter::discard`], from a blocking context.
    pub fn discard_blocking(mut self) {
        let msgid = self.msgid;
        let trace = || crate::log::queue_trace(|| format!("queue_message_delete({msgid}) -> 1"));
        match std::mem::replace(&mut self.body, Body::Broken) {
            Body::Lazy | Body::Memory(_) => {
                trace();
                self.finished = true;
                self.release_held();
                self.spool.release_msgid(self.msgid);
            }
            Body::Open(file) => {
                trace();
                self.finished = true;
                self.spool.recycle_incoming(&self.dir, file);
                self.spool.release_msgid(self.msgid);
            }
            // Unusable: dropping the writer removes the directory.
            Body::Broken => drop(self),
        }
    }

    /// Ends the transaction without queueing anything, when every recipient was delivered
    /// before the commit. The directory and its body file (emptied) are kept for the next
    /// message, which saves creating and deleting two inodes per message.
    pub async fn discard(self) -> Result<()> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || self.discard_blocking())
            .await
            .map_err(|e| QueueError::io("remove", &dir, std::io::Error::other(e.to_string())))
    }

    /// Rolls the transaction back: removes `incoming/<msgid>/`.
    pub fn abort(mut self) -> Result<()> {
        self.finished = true;
        self.spool.release_msgid(self.msgid);
        let body = std::mem::replace(&mut self.body, Body::Broken);
        self.release_held();
        let removed = match body {
            Body::Lazy | Body::Memory(_) => Ok(()),
            _ => remove_tree(&self.dir),
        };
        trace_rollback(self.msgid, removed.is_ok());
        removed
    }

    /// Stands for a crash in tests: the writer goes away without cleaning up.
    #[cfg(test)]
    pub(crate) fn crash(mut self) {
        self.finished = true;
    }

    /// Checks the envelopes and hands the directory over to a transaction.
    fn take_transaction(
        &mut self,
        envelopes: Vec<Envelope>,
        cancelled: Arc<AtomicBool>,
    ) -> Result<Transaction> {
        if envelopes.is_empty() {
            return Err(QueueError::InvalidEnvelope(format!(
                "message {} has no envelopes",
                self.msgid
            )));
        }
        let mut seen = HashSet::new();
        let mut files = Vec::with_capacity(envelopes.len());
        for envelope in &envelopes {
            if envelope.id.msgid() != self.msgid {
                return Err(QueueError::InvalidEnvelope(format!(
                    "envelope {} does not belong to message {}",
                    envelope.id, self.msgid
                )));
            }
            if !seen.insert(envelope.id) {
                return Err(QueueError::InvalidEnvelope(format!(
                    "envelope {} given twice",
                    envelope.id
                )));
            }
            let text = envelope
                .to_file_text()
                .map_err(|e| QueueError::InvalidEnvelope(format!("{}: {e}", envelope.id)))?;
            files.push((envelope.id, text));
        }
        let (file, memory) = match std::mem::replace(&mut self.body, Body::Broken) {
            Body::Lazy => (None, None),
            Body::Memory(memory) => (None, Some(memory)),
            Body::Open(file) => (Some(file), None),
            Body::Broken => return Err(unusable(&self.body_path())),
        };
        // The memory file moves to the transaction, which writes it out at once.
        self.release_held();
        self.finished = true;
        Ok(Transaction {
            spool: self.spool.clone(),
            msgid: self.msgid,
            dir: self.dir.clone(),
            file,
            memory,
            tail: std::mem::take(&mut self.buf),
            envelopes: files,
            cancelled,
        })
    }
}

impl Drop for MessageWriter {
    fn drop(&mut self) {
        let body = std::mem::replace(&mut self.body, Body::Broken);
        self.release_held();
        if !self.finished {
            self.spool.release_msgid(self.msgid);
            let mut removed = true;
            if !matches!(body, Body::Lazy | Body::Memory(_))
                && let Err(e) = remove_tree(&self.dir)
            {
                tracing::warn!("{e}");
                removed = false;
            }
            trace_rollback(self.msgid, removed);
        }
    }
}

/// A transaction that ends without a commit, in 6.8's words: the queue deletes the
/// message, and the scheduler forgets what it had of it.
fn trace_rollback(msgid: Msgid, removed: bool) {
    crate::log::queue_trace(|| format!("queue_message_delete({msgid}) -> {}", i32::from(removed)));
    crate::log::scheduler_trace(|| format!("aborting msg:{msgid}"));
}

/// Another reader of the memory file `file`, with an offset of its own (through `/proc`).
fn reopen(file: &File) -> std::io::Result<File> {
    File::open(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(file)
    ))
}

/// An anonymous memory file for a body kept in memory (or read back in clear from a
/// sealed or compressed queue file).
pub(crate) fn memory_file() -> std::io::Result<File> {
    let fd = nix::sys::memfd::memfd_create(
        c"smtpd-message",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )?;
    Ok(File::from(fd))
}

/// Copies the whole memory file `memory` to the body file `file` (at its current offset).
fn copy_memory(memory: &mut File, file: &mut File, path: &std::path::Path) -> Result<()> {
    memory
        .seek(std::io::SeekFrom::Start(0))
        .and_then(|_| std::io::copy(memory, file))
        .map(|_| ())
        .map_err(|e| QueueError::io("write", path, e))
}

/// Writes `bytes` to the body file of the transaction in `dir`, creating the directory and
/// the file first while `body` is still [`Body::Lazy`]; a failure leaves `body` broken.
fn write_body(spool: &Spool, dir: &std::path::Path, body: &mut Body, bytes: &[u8]) -> Result<()> {
    let path = dir.join(MESSAGE_FILE);
    match std::mem::replace(body, Body::Broken) {
        Body::Lazy => *body = Body::Open(spool.create_incoming(dir)?),
        // Out of memory's bounds: the blocks kept so far go first.
        Body::Memory(mut memory) => {
            let mut file = spool.create_incoming(dir)?;
            copy_memory(&mut memory, &mut file, &path)?;
            *body = Body::Open(file);
        }
        other => *body = other,
    }
    let written = match body {
        Body::Open(file) => file
            .write_all(bytes)
            .map_err(|e| QueueError::io("write", &path, e)),
        _ => Err(unusable(&path)),
    };
    if written.is_err() {
        *body = Body::Broken;
    }
    written
}

fn unusable(path: &std::path::Path) -> QueueError {
    QueueError::io(
        "write",
        path,
        std::io::Error::other("an earlier write was interrupted; the transaction must be aborted"),
    )
}

/// Sets the cancel flag if the commit future is dropped before it finishes.
struct CancelOnDrop(Option<Arc<AtomicBool>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::Release);
        }
    }
}

/// A message on its way from `incoming/` to `queue/`; owns the directory
/// and removes it on any failure.
struct Transaction {
    spool: Spool,
    msgid: Msgid,
    dir: PathBuf,
    /// `None`: nothing on disk yet, `incoming/<msgid>/` is created here.
    file: Option<File>,
    /// The blocks of a body kept in memory, written to the new file before `tail`.
    memory: Option<File>,
    tail: Vec<u8>,
    envelopes: Vec<(Evpid, String)>,
    cancelled: Arc<AtomicBool>,
}

impl Transaction {
    /// Steps 1–3 here, 4–6 in the committer (see [`super::commit`]).
    fn run(self) -> Result<Msgid> {
        let Transaction {
            spool,
            msgid,
            dir,
            file,
            memory,
            tail,
            envelopes,
            cancelled,
        } = self;
        let counters = spool.counters();
        let started = std::time::Instant::now();
        let file = match file {
            Some(file) => Ok(file),
            None => spool.create_incoming(&dir),
        };
        let file = match (file, memory) {
            (Ok(mut file), Some(mut memory)) => {
                copy_memory(&mut memory, &mut file, &dir.join(MESSAGE_FILE)).map(|()| file)
            }
            (file, _) => file,
        };
        let prepared = file.and_then(|file| prepare(&dir, file, &tail, &envelopes, counters));
        Counters::add(&counters.prepare_micros, micros_since(started));
        // As 6.8 words it, each envelope after the first is asked for with the id the one
        // before it got.
        let mut asked = u64::from(msgid.get()) << 32;
        for (evpid, text) in &envelopes {
            crate::log::queue_trace(|| {
                super::spool::envelope_create_words(asked, *evpid, text.len(), prepared.is_ok())
            });
            asked = evpid.get();
        }
        let outcome = match prepared {
            Err(e) => Err(e),
            Ok(()) if cancelled.load(Ordering::Acquire) => Err(QueueError::Cancelled),
            Ok(()) => spool.committer().submit(msgid, cancelled),
        };
        crate::log::queue_trace(|| {
            let r = i32::from(outcome.is_ok());
            format!("queue_message_commit({msgid}) -> {r}")
        });
        // Committed (the queue holds the id now) or rolled back: the reservation goes.
        spool.release_msgid(msgid);
        match outcome {
            Ok(()) => Ok(msgid),
            Err(e) => {
                // The committer removes what it rolls back; this covers the
                // failures before it, and is harmless after.
                let _ = remove_tree(&dir);
                Err(e)
            }
        }
    }
}

/// Replaces the clear body in `file` (open for writing) by its stored form.
fn store_body_transformed(file: &mut File, path: &std::path::Path) -> Result<()> {
    use std::io::Read;
    let mut plain = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut plain))
        .map_err(|e| QueueError::io("read", path, e))?;
    let sealed =
        super::crypto::queue_bytes(&plain).map_err(|e| QueueError::io("encrypt", path, e))?;
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| file.write_all(&sealed))
        .map_err(|e| QueueError::io("write", path, e))
}

/// Steps 1–3: body and envelopes written and fsynced, then their directory.
fn prepare(
    dir: &std::path::Path,
    mut file: File,
    tail: &[u8],
    envelopes: &[(Evpid, String)],
    counters: &Counters,
) -> Result<()> {
    let body = dir.join(MESSAGE_FILE);
    file.write_all(tail)
        .map_err(|e| QueueError::io("write", &body, e))?;
    if super::crypto::transforms() {
        // `queue compression`, `queue encryption`: the body is stored compressed and/or
        // sealed before it is made durable.
        store_body_transformed(&mut file, &body)?;
    }
    sync_file(&file, &body)?;
    Counters::add(&counters.file_syncs, 1);
    drop(file);

    // A reused message directory brings an emptied envelope file: the first envelope is
    // written into it and renamed (the directory fsync below makes the name durable).
    let spare = dir.join(SPARE_ENVELOPE);
    let mut spare_left = spare.symlink_metadata().is_ok();
    for (evpid, text) in envelopes {
        let path = dir.join(evpid.to_string());
        let reused = if spare_left {
            let f = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&spare)
                .ok();
            spare_left = f.is_some();
            f
        } else {
            None
        };
        let (mut f, written_to) = match reused {
            Some(f) => (f, spare.clone()),
            None => {
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| QueueError::io("create", &path, e))?;
                (f, path.clone())
            }
        };
        let bytes = super::crypto::queue_bytes(text.as_bytes())
            .map_err(|e| QueueError::io("encrypt", &written_to, e))?;
        f.write_all(&bytes)
            .map_err(|e| QueueError::io("write", &written_to, e))?;
        sync_file(&f, &written_to)?;
        Counters::add(&counters.file_syncs, 1);
        if written_to != path {
            std::fs::rename(&written_to, &path).map_err(|e| QueueError::io("rename", &path, e))?;
            spare_left = false;
        }
    }
    if spare_left {
        std::fs::remove_file(&spare).map_err(|e| QueueError::io("remove", &spare, e))?;
    }

    sync_dir(dir)?;
    Counters::add(&counters.message_dir_syncs, 1);
    Ok(())
}
