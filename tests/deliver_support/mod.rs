//! Shared set-up for the delivery tests: a recipient that is uid 2000 when
//! the tests run as root (so the identity change is exercised for real)
//! and the current user otherwise, queue-like message files only root can
//! read, and an agent whose helper is this test binary.
//!
//! Every test binary that uses [`agent`] must contain the hook
//! `deliver_helper_entry` (see `helper_entry!`).

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use smtpd::deliver::{
    Account, DeliveryAgent, DeliveryRequest, EnvelopeInfo, HelperProgram, MessageSource, Method,
};

/// The uid/gid deliveries run as when the tests run as root.
pub const TEST_UID: u32 = 2000;

/// Defines the test that is the delivery helper's entry point when this
/// test binary is re-executed by [`agent`]. Run normally, it only checks
/// that helper mode is not entered without a job.
#[macro_export]
macro_rules! helper_entry {
    () => {
        #[test]
        fn deliver_helper_entry() {
            if let Some(code) = smtpd::deliver::helper_main_if_requested() {
                std::process::exit(code);
            }
            assert!(std::env::var_os(smtpd::deliver::privsep::JOB_ENV).is_none());
        }
    };
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// An agent that re-executes this test binary as its helper.
pub fn agent() -> DeliveryAgent {
    DeliveryAgent::new().with_helper(HelperProgram::test_harness("deliver_helper_entry"))
}

/// The recipient's account: uid/gid 2000 as root, else the current user.
pub fn recipient(name: &str, home: &Path) -> Account {
    if is_root() {
        Account {
            name: name.into(),
            uid: TEST_UID,
            gid: TEST_UID,
            home: home.display().to_string(),
        }
    } else {
        Account {
            name: name.into(),
            home: home.display().to_string(),
            ..Account::current()
        }
    }
}

/// A temporary directory the recipient owns (chowned to 2000 as root).
pub fn recipient_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if is_root() {
        std::os::unix::fs::chown(dir.path(), Some(TEST_UID), Some(TEST_UID)).unwrap();
    }
    dir
}

/// Makes a directory reachable by everyone (for sockets the recipient
/// connects to, and spools the recipient writes into).
pub fn open_up(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A message file like the queue's: mode 0600, owned by whoever runs the
/// tests, in a directory only they can enter.
pub struct QueuedMessage {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn queued(text: &str) -> QueuedMessage {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("message");
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    QueuedMessage { _dir: dir, path }
}

/// A message as OpenSMTPD stores it: its Received header first, LF endings.
pub const MESSAGE: &str = "Received: from client.example (localhost [127.0.0.1])\n\
\tby vm (OpenSMTPD) with ESMTP id f952a52e;\n\
\tSun, 22 Nov 2026 07:30:56 +0000 (UTC)\n\
From: <sender@client.example>\n\
To: <foo@bsdsx.fr>\n\
Subject: baseline dialogue test\n\
\n\
Hello, this is a test body.\n\
.a line starting with a dot\n\
From the body, mid-paragraph\n";

pub fn envelope(sender: &str, rcpt: &str, dest: &str) -> EnvelopeInfo {
    EnvelopeInfo {
        evpid: 0xf952a52e081dd929,
        sender: sender.into(),
        rcpt: rcpt.into(),
        dest: dest.into(),
        subaddress: String::new(),
    }
}

pub fn request(
    method: Method,
    user: Account,
    envelope: EnvelopeInfo,
    message: &QueuedMessage,
) -> DeliveryRequest {
    DeliveryRequest {
        method,
        wrapper: None,
        userinfo: user,
        run_as: None,
        envelope,
        message: MessageSource::Path(message.path.clone()),
    }
}

/// The single file in a maildir's `new/` (panics unless there is exactly one).
pub fn only_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "files in {}: {files:?}", dir.display());
    files.into_iter().next().unwrap()
}

/// uid and gid of a file.
pub fn owner(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).unwrap();
    (m.uid(), m.gid())
}

/// Prints why a root-only check is skipped.
pub fn skip_unless_root(what: &str) -> bool {
    if is_root() {
        return false;
    }
    // Under CI everything runs: a test that would skip fails instead.
    if std::env::var_os("SMTPD_CI_STRICT").is_some() {
        panic!("SKIPPED under SMTPD_CI_STRICT: {what} needs root");
    }
    eprintln!("skipped: {what} needs root (run the tests as root to check the identity change)");
    true
}
