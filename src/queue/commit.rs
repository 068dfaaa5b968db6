//! Group commit: how a message becomes durable before `250 Message accepted`,
//! and how concurrent sessions share the cost.
//!
//! # What "committed" means
//!
//! A message is committed when `queue/<XX>/<msgid>/` exists with its
//! `message` file and all its envelope files, and that state survives a
//! power cut. `MessageWriter::commit` returns only after it is, so the SMTP
//! side may send `250 2.0.0 <msgid> Message accepted for delivery` the
//! moment it returns. (OpenSMTPD 6.8 renames the same way but never
//! fsyncs; its 250 can be lost with the page cache.)
//!
//! # The steps, and who does them
//!
//! In the committing session's own blocking thread (many run at once):
//! 1. write the rest of the body and `fsync` `message`;
//! 2. create each envelope file in `incoming/<msgid>/`, write it, `fsync` it;
//! 3. `fsync` the directory `incoming/<msgid>/`, so the names `message`
//!    and `<evpid>` are durable in it.
//!
//! Then the job goes to the single committer thread, which takes every job
//! waiting at that moment as one batch and:
//! 4. renames each `incoming/<msgid>` to `queue/<XX>/<msgid>` (creating the
//!    bucket when missing);
//! 5. `fsync`s each distinct directory the batch touched **once**:
//!    `incoming/` (the names that left), each bucket (the names that
//!    arrived) and `queue/` if a bucket was created;
//! 6. wakes every session of the batch.
//!
//! # Why this is durable
//!
//! * After step 3 the message directory's content is on disk, but the
//!   directory is still under `incoming/`, which recovery rolls back: a
//!   crash here loses a message nobody acknowledged.
//! * Step 4 moves the directory with one atomic `rename`; the rename is
//!   durable once both parent directories are fsynced (step 5). A crash
//!   before that leaves the directory either in `incoming/` (rolled back,
//!   not acknowledged) or in `queue/` (kept; not acknowledged either, so
//!   the client retries and the message may arrive twice — SMTP's
//!   at-least-once, never a loss).
//! * Step 6 happens after every fsync of step 5 returned without error, so
//!   every acknowledged message is in a durable `queue/` entry whose
//!   content was durable before the entry existed.
//! * If an fsync of step 5 fails, the messages of the batch that depend on
//!   that directory are taken out of `queue/` again and their sessions get
//!   an error (a 4xx reply), because their state on disk is unknown.
//!
//! # Why it is cheaper
//!
//! The per-message fsyncs (steps 1–3) run in parallel threads, so the file
//! system can fold them into shared journal commits. The directory fsyncs
//! of step 5 are per batch: with N sessions committing at once there is one
//! `fsync(incoming/)` instead of N, and one per bucket instead of one per
//! message. The committer never waits to fill a batch: while it works on
//! one batch the next one forms in its channel, so a lone session pays no
//! added latency and a busy server gets large batches by itself.
//!
//! # Measured
//!
//! `cargo test --lib queue::spool_tests::commit_rate -- --ignored --nocapture`
//! (2 KB body, one envelope, debug build, on the ext4 root disk of the
//! 2-CPU development VM while other builds ran: load average 2–6; ten runs):
//!
//! | sessions | commits/s | p50 | shared dir fsyncs per commit | mean batch |
//! |---:|---:|---:|---:|---:|
//! | 1  | 210–1110 (most 290–560) | 0.9–4 ms | 2.09 | 1.0 |
//! | 16 | 350–1960 (most 600–1040) | 7–45 ms | 1.31–1.46 | 2.4–4.1 |
//!
//! A bare create + write + fsync of one file took 0.19 ms on the same disk
//! at the same time, so these figures are bound by CPU contention (each
//! commit hops between tokio, the blocking pool and the committer) more
//! than by the disk. With batching switched off (one job per batch) the
//! 16-session runs gave 600–1050 commits/s, interleaved with the runs
//! above: under this much noise the saving shows in the count of directory
//! fsyncs, not yet in throughput. Raw fsync rates of this disk and the
//! peers' figures are in `baseline.md` §2.4.
//!
//! # Cancellation
//!
//! A session whose future is dropped mid-commit sets a cancel flag. Before
//! step 4 the transaction is then rolled back (by whoever owns it at that
//! moment: the session's thread or the committer); after step 4 it stays
//! committed and unacknowledged, as above.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use super::error::{QueueError, Result};
use super::id::Msgid;
use super::layout::{Layout, create_dir};

/// Most jobs taken into one batch; bounds the latency of the last one.
const MAX_BATCH: usize = 1024;

/// fsyncs `file` (data and metadata).
pub(crate) fn sync_file(file: &File, path: &Path) -> Result<()> {
    file.sync_all()
        .map_err(|e| QueueError::io("fsync", path, e))
}

/// fsyncs a directory, making the names created, renamed or removed in it
/// durable.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    let dir = File::open(path).map_err(|e| QueueError::io("open directory", path, e))?;
    dir.sync_all()
        .map_err(|e| QueueError::io("fsync directory", path, e))
}

/// Removes a directory tree, ignoring "already gone".
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(QueueError::io("remove", path, e)),
    }
}

/// Live counters of the commit path, shared by writers and the committer.
#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub(crate) batches: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) file_syncs: AtomicU64,
    pub(crate) message_dir_syncs: AtomicU64,
    pub(crate) shared_dir_syncs: AtomicU64,
    pub(crate) largest_batch: AtomicU64,
    pub(crate) submitted: AtomicU64,
    pub(crate) prepare_micros: AtomicU64,
    pub(crate) batch_micros: AtomicU64,
}

/// A snapshot of the commit counters, for `show stats` and for tests that
/// check the fsyncs are shared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Batches processed by the committer.
    pub batches: u64,
    /// Messages committed.
    pub commits: u64,
    /// Commits that failed after reaching the committer.
    pub failed: u64,
    /// fsyncs of message and envelope files.
    pub file_syncs: u64,
    /// fsyncs of individual `incoming/<msgid>/` directories (one per message).
    pub message_dir_syncs: u64,
    /// fsyncs of shared directories (`incoming/`, buckets, `queue/`), one per
    /// distinct directory per batch.
    pub shared_dir_syncs: u64,
    /// The largest batch seen.
    pub largest_batch: u64,
    /// Time spent writing and fsyncing message directories (steps 1–3),
    /// summed over sessions, in microseconds.
    pub prepare_micros: u64,
    /// Time the committer spent on batches (steps 4–5), in microseconds.
    pub batch_micros: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> CommitStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CommitStats {
            batches: get(&self.batches),
            commits: get(&self.commits),
            failed: get(&self.failed),
            file_syncs: get(&self.file_syncs),
            message_dir_syncs: get(&self.message_dir_syncs),
            shared_dir_syncs: get(&self.shared_dir_syncs),
            largest_batch: get(&self.largest_batch),
            prepare_micros: get(&self.prepare_micros),
            batch_micros: get(&self.batch_micros),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Microseconds elapsed since `start`, for the timing counters.
pub(crate) fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// One prepared transaction waiting for its rename.
struct Job {
    msgid: Msgid,
    cancelled: Arc<AtomicBool>,
    reply: mpsc::SyncSender<Result<()>>,
}

/// The handle to the committer thread. The thread stops when the handle
/// (owned by the spool) is dropped and no job is pending.
pub(crate) struct Committer {
    jobs: mpsc::Sender<Job>,
    counters: Arc<Counters>,
    /// Lets tests hold the committer so that jobs pile up into one batch.
    #[cfg(test)]
    pub(crate) gate: Arc<std::sync::Mutex<()>>,
}

impl Committer {
    /// Starts the committer thread for the spool at `layout`.
    pub(crate) fn start(layout: Layout, counters: Arc<Counters>) -> Result<Committer> {
        let (tx, rx) = mpsc::channel::<Job>();
        #[cfg(test)]
        let gate = Arc::new(std::sync::Mutex::new(()));
        let root = layout.root().to_path_buf();
        let thread_counters = Arc::clone(&counters);
        #[cfg(test)]
        let thread_gate = Arc::clone(&gate);
        std::thread::Builder::new()
            .name("smtpd-queue-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    #[cfg(test)]
                    drop(thread_gate.lock().unwrap_or_else(|p| p.into_inner()));
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    commit_batch(&layout, &thread_counters, batch);
                }
            })
            .map_err(|e| QueueError::io("start the committer thread for", &root, e))?;
        Ok(Committer {
            jobs: tx,
            counters,
            #[cfg(test)]
            gate,
        })
    }

    /// Hands a prepared `incoming/<msgid>` to the committer and waits until
    /// it is durably in `queue/` (or rolled back, on error). Blocking.
    pub(crate) fn submit(&self, msgid: Msgid, cancelled: Arc<AtomicBool>) -> Result<()> {
        let (reply, answer) = mpsc::sync_channel(1);
        Counters::add(&self.counters.submitted, 1);
        self.jobs
            .send(Job {
                msgid,
                cancelled,
                reply,
            })
            .map_err(|_| QueueError::CommitterGone)?;
        answer.recv().map_err(|_| QueueError::CommitterGone)?
    }
}

/// Steps 4–6 of the module documentation for one batch.
fn commit_batch(layout: &Layout, counters: &Counters, batch: Vec<Job>) {
    let started = Instant::now();
    let size = batch.len() as u64;
    counters.largest_batch.fetch_max(size, Ordering::Relaxed);
    Counters::add(&counters.batches, 1);

    // Step 4: renames. Each renamed job remembers the directories its
    // durability depends on.
    let mut dirty: BTreeSet<PathBuf> = BTreeSet::new();
    let mut renamed: Vec<(Job, Vec<PathBuf>)> = Vec::with_capacity(batch.len());
    for job in batch {
        let incoming = layout.incoming_message(job.msgid);
        if job.cancelled.load(Ordering::Acquire) {
            let _ = remove_tree(&incoming);
            Counters::add(&counters.failed, 1);
            let _ = job.reply.send(Err(QueueError::Cancelled));
            continue;
        }
        match move_into_queue(layout, job.msgid) {
            Ok(created_bucket) => {
                let mut needs = vec![layout.incoming(), layout.bucket(job.msgid)];
                if created_bucket {
                    needs.push(layout.queue());
                }
                dirty.extend(needs.iter().cloned());
                renamed.push((job, needs));
            }
            Err(e) => {
                let _ = remove_tree(&incoming);
                Counters::add(&counters.failed, 1);
                let _ = job.reply.send(Err(e));
            }
        }
    }

    // Step 5: one fsync per distinct directory. Sequential: on a journaling
    // file system the first one commits the journal transaction holding
    // every rename of the batch, and the others then find little to write
    // (fsyncing them from parallel threads measured no faster).
    let mut failed: Vec<(PathBuf, String)> = Vec::new();
    for dir in &dirty {
        Counters::add(&counters.shared_dir_syncs, 1);
        if let Err(e) = sync_dir(dir) {
            tracing::error!("{e}");
            failed.push((dir.clone(), e.to_string()));
        }
    }

    Counters::add(&counters.batch_micros, micros_since(started));

    // Step 6: answers.
    for (job, needs) in renamed {
        let broken = failed.iter().find(|(dir, _)| needs.contains(dir));
        match broken {
            None => {
                Counters::add(&counters.commits, 1);
                let _ = job.reply.send(Ok(()));
            }
            Some((dir, why)) => {
                // The state on disk is unknown: take the message out of the
                // queue so it is not delivered behind the client's back.
                let _ = withdraw(layout, job.msgid);
                Counters::add(&counters.failed, 1);
                let _ = job.reply.send(Err(QueueError::io(
                    "commit (directory fsync failed)",
                    dir,
                    std::io::Error::other(why.clone()),
                )));
            }
        }
    }
}

/// Renames `incoming/<msgid>` into its bucket; returns whether the bucket
/// had to be created.
fn move_into_queue(layout: &Layout, msgid: Msgid) -> Result<bool> {
    let bucket = layout.bucket(msgid);
    let created = if bucket.is_dir() {
        false
    } else {
        create_dir(&bucket, 0o700).map_err(|e| QueueError::io("create bucket", &bucket, e))?;
        true
    };
    let from = layout.incoming_message(msgid);
    let to = layout.message_dir(msgid);
    if to.symlink_metadata().is_ok() {
        // Message ids are checked free when the transaction begins, so this
        // means someone else wrote into the spool.
        return Err(QueueError::io(
            "rename into",
            &to,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "message id already queued",
            ),
        ));
    }
    fs::rename(&from, &to).map_err(|e| QueueError::io("rename", &from, e))?;
    Ok(created)
}

/// Takes a just-renamed message out of `queue/` again (best effort).
fn withdraw(layout: &Layout, msgid: Msgid) -> Result<()> {
    let dir = layout.message_dir(msgid);
    let purge = layout.purge_message(msgid);
    let _ = remove_tree(&purge);
    fs::rename(&dir, &purge).map_err(|e| QueueError::io("rename", &dir, e))?;
    remove_tree(&purge)
}
