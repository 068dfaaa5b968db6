//! `.forward` files and alias include files: the files expansion reads from disk.
//!
//! Both sit behind small traits so that expansion can be tested without real home
//! directories. The real `.forward` opener applies OpenSMTPD's checks (`parent_forward_open`
//! and `secure_file`): no symbolic link, a regular file owned by the user and writable by
//! nobody else, no group- or world-writable directory between it and the home directory, no
//! sticky home directory. How the content becomes nodes (size limits, empty files, parse
//! errors) is decided by the expansion itself, identically for real and fake files.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::userbase::UserInfo;

/// A `.forward` file this large or larger is a temporary failure (`MAX_FORWARD_SIZE`).
pub const MAX_FORWARD_SIZE: usize = 4096;

/// What opening a user's `.forward` gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardOpen {
    /// There is no `.forward` file: deliver to the user (unless the action forbids it).
    Missing,
    /// The file's content. Openers need not read more than [`MAX_FORWARD_SIZE`] bytes: a
    /// content of that length means "too large".
    Found(Vec<u8>),
    /// The file could not be read now (sticky home, too many open files, I/O error).
    TemporaryFailure,
    /// The file may not be used (symbolic link, insecure permissions, unreadable).
    PermanentFailure,
}

/// Where `.forward` files come from.
pub trait ForwardFiles {
    /// Open the `.forward` of `user` (whose home directory the userbase gave).
    fn open(&self, user: &UserInfo) -> ForwardOpen;
}

/// Where include files (`:include:/path` alias values) come from.
pub trait IncludeFiles {
    /// The content of the file, or why it cannot be read.
    fn read(&self, path: &str) -> std::io::Result<Vec<u8>>;
}

pub use crate::log::strerror;

/// Real `.forward` files: `<home>/.forward`, opened without following symbolic links (by the
/// privileged broker when the daemon runs with one).
pub struct HomeForwards;

impl ForwardFiles for HomeForwards {
    fn open(&self, user: &UserInfo) -> ForwardOpen {
        // An unprivileged daemon asks its privileged broker, which opens the file as root
        // with the same checks (this very function, in the broker).
        // Most users have no `.forward`: when this side can see so itself (a home it can
        // search, not sticky, with no such name in it), the answer is the broker's, and
        // the round trip is saved. Anything else is the broker's to judge.
        // A home that does not exist is the same: ENOENT is the answer whoever asks (a
        // component this side may not search gives EACCES instead), with the same warning.
        if let Some(broker) = crate::privsep::broker::client() {
            let home = Path::new(&user.home);
            let visibly_missing = match fs::metadata(home) {
                Ok(m) => {
                    m.is_dir()
                        && m.permissions().mode() & 0o1000 == 0
                        && fs::symlink_metadata(home.join(".forward"))
                            .is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT))
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    tracing::warn!(
                        "warn: smtpd: parent_forward_open: {}: {}",
                        user.home,
                        strerror(&e)
                    );
                    true
                }
                Err(_) => false,
            };
            if visibly_missing {
                return ForwardOpen::Missing;
            }
            return broker.open_forward(user);
        }
        let home = user.home.as_str();
        let path = format!("{home}/.forward");
        let meta = match fs::metadata(home) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(
                    "warn: smtpd: parent_forward_open: {}: {}",
                    home,
                    strerror(&e)
                );
                // OpenSMTPD tests errno afterwards: a missing home is "no .forward".
                return if e.kind() == std::io::ErrorKind::NotFound {
                    ForwardOpen::Missing
                } else {
                    ForwardOpen::PermanentFailure
                };
            }
        };
        if meta.permissions().mode() & 0o1000 != 0 {
            tracing::warn!("warn: smtpd: parent_forward_open: {} is sticky", home);
            return ForwardOpen::TemporaryFailure;
        }
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path);
        let mut file = match file {
            Ok(f) => f,
            Err(e) => {
                return match e.raw_os_error() {
                    Some(libc::ENOENT) => ForwardOpen::Missing,
                    Some(libc::EMFILE | libc::ENFILE | libc::EIO) => ForwardOpen::TemporaryFailure,
                    Some(libc::ELOOP) => {
                        tracing::warn!(
                            "warn: smtpd: parent_forward_open: {}: cannot follow symbolic links",
                            path
                        );
                        ForwardOpen::PermanentFailure
                    }
                    _ => {
                        tracing::warn!(
                            "warn: smtpd: parent_forward_open: {}: {}",
                            path,
                            strerror(&e)
                        );
                        ForwardOpen::PermanentFailure
                    }
                };
            }
        };
        if !secure_file(&file, Path::new(&path), Path::new(home), user.uid) {
            tracing::warn!("warn: smtpd: {}: unsecure file", path);
            return ForwardOpen::PermanentFailure;
        }
        let mut content = Vec::new();
        match (&mut file)
            .take(MAX_FORWARD_SIZE as u64)
            .read_to_end(&mut content)
        {
            Ok(_) => ForwardOpen::Found(content),
            Err(_) => ForwardOpen::TemporaryFailure,
        }
    }
}

/// OpenSMTPD's `secure_file` (from OpenSSH): the open file is a regular file owned by `uid`
/// and not writable by group or others; each directory above it, up to the home directory,
/// is owned by root or `uid` and not writable by group or others.
pub fn secure_file(file: &File, path: &Path, home: &Path, uid: u32) -> bool {
    let Ok(mut dir) = fs::canonicalize(path) else {
        return false;
    };
    let home: PathBuf = fs::canonicalize(home).unwrap_or_default();
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if !meta.file_type().is_file() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return false;
    }
    // Every component of a canonical path, walking up; bounded by the path's depth.
    for _ in 0..=dir.components().count() {
        let Some(parent) = dir.parent().map(Path::to_path_buf) else {
            return true;
        };
        dir = parent;
        let Ok(m) = fs::metadata(&dir) else {
            return false;
        };
        if (m.uid() != 0 && m.uid() != uid) || m.mode() & 0o022 != 0 {
            return false;
        }
        if dir == home || dir == Path::new("/") {
            return true;
        }
    }
    true
}

/// `.forward` files given in memory, by user name, for tests.
#[derive(Debug, Clone, Default)]
pub struct FakeForwards {
    files: BTreeMap<String, ForwardOpen>,
}

impl FakeForwards {
    pub fn new() -> FakeForwards {
        FakeForwards::default()
    }

    /// `user`'s `.forward` contains `content`.
    pub fn with_file(mut self, user: &str, content: &str) -> FakeForwards {
        self.files.insert(
            user.to_string(),
            ForwardOpen::Found(content.as_bytes().to_vec()),
        );
        self
    }

    /// Opening `user`'s `.forward` gives `outcome`.
    pub fn with_outcome(mut self, user: &str, outcome: ForwardOpen) -> FakeForwards {
        self.files.insert(user.to_string(), outcome);
        self
    }
}

impl ForwardFiles for FakeForwards {
    fn open(&self, user: &UserInfo) -> ForwardOpen {
        match self.files.get(&user.name) {
            Some(ForwardOpen::Found(c)) => {
                ForwardOpen::Found(c[..c.len().min(MAX_FORWARD_SIZE)].to_vec())
            }
            Some(other) => other.clone(),
            None => ForwardOpen::Missing,
        }
    }
}

/// Include files read from disk.
pub struct DiskIncludes;

impl IncludeFiles for DiskIncludes {
    fn read(&self, path: &str) -> std::io::Result<Vec<u8>> {
        fs::read(path)
    }
}

/// Include files in memory (path → content) for tests; other paths do not exist.
impl IncludeFiles for BTreeMap<String, String> {
    fn read(&self, path: &str) -> std::io::Result<Vec<u8>> {
        self.get(path)
            .map(|s| s.as_bytes().to_vec())
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn me(home: &Path) -> UserInfo {
        UserInfo {
            name: "me".into(),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            home: home.display().to_string(),
        }
    }

    fn private_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    #[test]
    fn missing_and_present_forward() {
        let d = private_dir();
        let u = me(d.path());
        assert_eq!(HomeForwards.open(&u), ForwardOpen::Missing);
        let f = d.path().join(".forward");
        fs::write(&f, "foo@example.org\n").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            HomeForwards.open(&u),
            ForwardOpen::Found(b"foo@example.org\n".to_vec())
        );
    }

    #[test]
    fn insecure_forward_is_refused() {
        let d = private_dir();
        let u = me(d.path());
        let f = d.path().join(".forward");
        fs::write(&f, "foo@example.org\n").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o664)).unwrap();
        assert_eq!(HomeForwards.open(&u), ForwardOpen::PermanentFailure);
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        let mut other = u.clone();
        other.uid = other.uid.wrapping_add(1);
        assert_eq!(
            HomeForwards.open(&other),
            ForwardOpen::PermanentFailure,
            "not owned by the user"
        );
    }

    #[test]
    fn symlinked_forward_and_sticky_home() {
        let d = private_dir();
        let u = me(d.path());
        let target = d.path().join("elsewhere");
        fs::write(&target, "foo\n").unwrap();
        symlink(&target, d.path().join(".forward")).unwrap();
        assert_eq!(HomeForwards.open(&u), ForwardOpen::PermanentFailure);
        fs::remove_file(d.path().join(".forward")).unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o1700)).unwrap();
        assert_eq!(HomeForwards.open(&u), ForwardOpen::TemporaryFailure);
    }

    #[test]
    fn group_writable_home_is_insecure() {
        let d = private_dir();
        let u = me(d.path());
        let f = d.path().join(".forward");
        fs::write(&f, "foo\n").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o770)).unwrap();
        assert_eq!(HomeForwards.open(&u), ForwardOpen::PermanentFailure);
    }

    #[test]
    fn large_forward_is_cut_at_the_limit() {
        let d = private_dir();
        let u = me(d.path());
        let f = d.path().join(".forward");
        fs::write(&f, "a".repeat(10_000)).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        match HomeForwards.open(&u) {
            ForwardOpen::Found(c) => assert_eq!(c.len(), MAX_FORWARD_SIZE),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn home_that_does_not_exist_means_no_forward() {
        let d = private_dir();
        let u = me(&d.path().join("gone"));
        assert_eq!(HomeForwards.open(&u), ForwardOpen::Missing);
    }

    #[test]
    fn strerror_texts() {
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(strerror(&e), "No such file or directory");
    }
}
