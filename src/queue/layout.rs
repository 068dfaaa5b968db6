//! Where things live in the spool directory.
//!
//! ```text
//! ROOT/                     0711  (default /var/spool/smtpd, `--spool DIR`)
//!   spool.lock              0600  exclusive lock held by the running daemon
//!   incoming/               0700  incoming/<msgid>/           open transaction (created at
//!                                                             its first 64 KiB or commit)
//!                                 incoming/<msgid>/message    body being received
//!                                 incoming/<msgid>/<evpid>    envelopes, written at commit
//!   queue/                  0700  queue/<XX>/<msgid>/message  committed body
//!                                 queue/<XX>/<msgid>/<evpid>  committed envelopes
//!                                 queue/<XX>/<msgid>/<evpid>.tmp  envelope update in progress
//!   corrupt/                0700  corrupt/<msgid>/...         quarantined files
//!   purge/                  0700  purge/<msgid>/              removed messages being deleted
//!   spare/                  0700  spare/<n>/message, spare/<n>/envelope.spare
//!                                 emptied message directories kept for reuse
//!   offline/               1733  messages queued by sendmail while smtpd was down
//! ```
//!
//! `XX` is the high byte of the msgid in two hex digits, as OpenSMTPD does
//! (`queue/c7/c70b0203/`). A message directory moves from `incoming/` to
//! `queue/` with one `rename`, so a message is either wholly committed or
//! wholly absent.
//!
//! Deviations from OpenSMTPD, on purpose:
//! * no `temporary/`: the body is written straight to
//!   `incoming/<msgid>/message`, which is already private to the open
//!   transaction; one rename less per message;
//! * envelopes are written at commit, not at each RCPT: nothing before the
//!   final dot needs them on disk, and writing them together lets the
//!   commit fsync them together;
//! * an envelope update is written to `<evpid>.tmp` next to the envelope
//!   instead of the shared `incoming/envelope.tmp`: updates of different
//!   envelopes can run at once, and the rename stays within one directory;
//! * `spool.lock`: OpenSMTPD relies on its control socket to keep a second
//!   daemon away; the lock protects the spool itself (tests run many spools);
//! * owners are not checked or changed (the daemon may run unprivileged in
//!   tests); modes are set when a directory is created.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::id::{Evpid, Msgid};

/// The spool directory the daemon uses when `--spool` is not given.
pub const DEFAULT_SPOOL: &str = "/var/spool/smtpd";

/// The name of the body file inside a message directory.
pub const MESSAGE_FILE: &str = "message";

/// The emptied envelope file a reused message directory brings along.
pub const SPARE_ENVELOPE: &str = "envelope.spare";

/// Suffix of an envelope being rewritten.
pub const UPDATE_SUFFIX: &str = ".tmp";

/// Path arithmetic for one spool root; no I/O except [`Layout::create`].
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// A layout rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    /// The spool root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The lock file held by the running daemon.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("spool.lock")
    }

    /// Open transactions.
    pub fn incoming(&self) -> PathBuf {
        self.root.join("incoming")
    }

    /// Committed messages.
    pub fn queue(&self) -> PathBuf {
        self.root.join("queue")
    }

    /// Quarantined files.
    pub fn corrupt(&self) -> PathBuf {
        self.root.join("corrupt")
    }

    /// Removed messages awaiting deletion.
    pub fn purge(&self) -> PathBuf {
        self.root.join("purge")
    }

    /// Emptied message directories kept for reuse (see [`super::spool`]).
    pub fn spare(&self) -> PathBuf {
        self.root.join("spare")
    }

    /// Messages left by sendmail while the daemon was down.
    pub fn offline(&self) -> PathBuf {
        self.root.join("offline")
    }

    /// `incoming/<msgid>`: an open transaction.
    pub fn incoming_message(&self, msgid: Msgid) -> PathBuf {
        self.incoming().join(msgid.to_string())
    }

    /// `queue/<XX>`: the bucket of a message.
    pub fn bucket(&self, msgid: Msgid) -> PathBuf {
        self.queue().join(format!("{:02x}", msgid.bucket()))
    }

    /// `queue/<XX>/<msgid>`: a committed message.
    pub fn message_dir(&self, msgid: Msgid) -> PathBuf {
        self.bucket(msgid).join(msgid.to_string())
    }

    /// `queue/<XX>/<msgid>/message`: a committed body.
    pub fn message_file(&self, msgid: Msgid) -> PathBuf {
        self.message_dir(msgid).join(MESSAGE_FILE)
    }

    /// `queue/<XX>/<msgid>/<evpid>`: a committed envelope.
    pub fn envelope_file(&self, evpid: Evpid) -> PathBuf {
        self.message_dir(evpid.msgid()).join(evpid.to_string())
    }

    /// `queue/<XX>/<msgid>/<evpid>.tmp`: an envelope being rewritten.
    pub fn envelope_update_file(&self, evpid: Evpid) -> PathBuf {
        self.message_dir(evpid.msgid())
            .join(format!("{evpid}{UPDATE_SUFFIX}"))
    }

    /// `purge/<msgid>`: where a removed message goes to be deleted.
    pub fn purge_message(&self, msgid: Msgid) -> PathBuf {
        self.purge().join(msgid.to_string())
    }

    /// Creates the root and every spool directory that is missing, with
    /// OpenSMTPD's modes. Existing directories are left as they are.
    pub fn create(&self) -> io::Result<()> {
        create_dir(&self.root, 0o711)?;
        for dir in [
            self.incoming(),
            self.queue(),
            self.corrupt(),
            self.purge(),
            self.spare(),
        ] {
            create_dir(&dir, 0o700)?;
        }
        prepare_offline(&self.offline())
    }
}

/// Creates `path` (and missing parents) with `mode` unless it exists.
pub(crate) fn create_dir(path: &Path, mode: u32) -> io::Result<()> {
    match DirBuilder::new().recursive(true).mode(mode).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// `offline/`'s mode: sticky, writable and searchable by all, listable by its owner only
/// (messages `sendmail` leaves while the daemon is down; see `privsep::offline`).
pub const OFFLINE_MODE: u32 = 0o1733;

/// Creates `offline/` with [`OFFLINE_MODE`], or puts an existing one to that mode.
fn prepare_offline(dir: &Path) -> io::Result<()> {
    create_dir(dir, 0o700)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other("not a directory"));
    }
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o7777 != OFFLINE_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(OFFLINE_MODE))?;
    }
    Ok(())
}

/// True for a two-digit lower-case hex bucket name.
pub(crate) fn is_bucket_name(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn prepare_sets_the_sticky_world_writable_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let off = dir.path().join("offline");
        prepare_offline(&off).unwrap();
        let mode = std::fs::metadata(&off).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o1733);
        std::fs::set_permissions(&off, std::fs::Permissions::from_mode(0o770)).unwrap();
        prepare_offline(&off).unwrap();
        let mode = std::fs::metadata(&off).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o1733);
    }

    #[test]
    fn paths_follow_opensmtpd() {
        let l = Layout::new("/var/spool/smtpd");
        let e: Evpid = "c70b02031d875f5a".parse().unwrap();
        assert_eq!(
            l.envelope_file(e),
            Path::new("/var/spool/smtpd/queue/c7/c70b0203/c70b02031d875f5a")
        );
        assert_eq!(
            l.message_file(e.msgid()),
            Path::new("/var/spool/smtpd/queue/c7/c70b0203/message")
        );
        assert_eq!(
            l.incoming_message(e.msgid()),
            Path::new("/var/spool/smtpd/incoming/c70b0203")
        );
        let low: Msgid = "0000002a".parse().unwrap();
        assert_eq!(l.bucket(low), Path::new("/var/spool/smtpd/queue/00"));
        assert!(is_bucket_name("c7"));
        assert!(!is_bucket_name("C7"));
        assert!(!is_bucket_name("c"));
    }

    #[test]
    fn create_makes_every_directory_with_modes() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path().join("spool"));
        l.create().unwrap();
        l.create().unwrap(); // idempotent
        for (dir, mode) in [
            (l.incoming(), 0o700),
            (l.queue(), 0o700),
            (l.corrupt(), 0o700),
            (l.purge(), 0o700),
        ] {
            let m = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, mode, "{}", dir.display());
        }
        // offline/: anyone may leave a message, nobody but root may list them.
        let m = std::fs::metadata(l.offline()).unwrap().permissions().mode() & 0o7777;
        assert_eq!(m, 0o1733);
    }
}
