//! mbox delivery: the user's mailbox in the mail spool (what OpenSMTPD
//! runs `mail.local -f SENDER USER` for) and the `/path` destinations of
//! aliases and `.forward` files (`mail.mboxfile -f SENDER PATH`).
//!
//! Both append `From SENDER <ctime>` (SENDER `MAILER-DAEMON` for `<>`),
//! the message with LF line endings, and an empty line, then fsync.
//! They differ in `From ` escaping, as their C originals do:
//! * mail.local writes `>From ` only for a `From ` line at the start of a
//!   paragraph (the first line, or after an empty line);
//! * mail.mboxfile escapes every line that starts with `From `.
//!
//! Locking, as mail.local does on Linux plus what it cannot do there:
//! the `USER.lock` dot-lock in the spool (taken by the privileged side when
//! smtpd runs as root, since the spool is not writable by users), and an
//! `fcntl` lock on the mailbox (an open-file-description lock, so that two
//! deliveries in one process exclude each other too). A failed append is
//! truncated back to where it began. A dot-lock older than five minutes is
//! taken to be stale and removed (mail.local would wait forever).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufWriter, ErrorKind, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::message::{c_string, for_each_line};
use super::result::{EX_CANTCREAT, EX_NOUSER, EX_OSERR, EX_TEMPFAIL, Failure, strerror};

/// Program name of spool deliveries in error messages.
pub const MAIL_LOCAL: &str = "mail.local";
/// Program name of file deliveries in error messages.
pub const MBOXFILE: &str = "mail.mboxfile";

/// Default mail spool (`_PATH_MAILDIR`).
pub const DEFAULT_SPOOL: &str = "/var/mail";

/// Age after which a dot-lock is considered left over by a crash.
const STALE_LOCK: Duration = Duration::from_secs(300);

/// Waits between dot-lock attempts (about 30 s in all).
const DOTLOCK_WAITS: [u64; 8] = [1, 1, 2, 2, 4, 4, 8, 8];

/// Attempts at the mailbox's fcntl lock, 250 ms apart.
const FCNTL_ATTEMPTS: u32 = 120;

/// `SPOOL/USER`; user names that are not a plain file name are refused.
pub fn mailbox_path(spool: &Path, user: &str) -> Result<PathBuf, Failure> {
    if user.is_empty() || user == "." || user == ".." || user.contains('/') || user.contains('\0') {
        return Err(Failure::new(
            EX_NOUSER,
            format!("{MAIL_LOCAL}: unknown name: {user}"),
        ));
    }
    Ok(spool.join(user))
}

/// `mda_mbox_init`: creates the mailbox if missing (`O_EXCL`, owner
/// uid:gid, mode 0600), before the delivery drops privileges.
pub fn prepare_mailbox(path: &Path, uid: u32, gid: u32) -> Result<(), Failure> {
    let file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(Failure::temp(format!("smtpd: open: {}", strerror(&e)))),
    };
    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
        .map_err(|e| Failure::temp(format!("smtpd: fchown: {}", strerror(&e))))?;
    Ok(())
}

/// The `USER.lock` file of the mail spool, removed when dropped.
#[derive(Debug)]
pub struct DotLock {
    path: PathBuf,
}

impl DotLock {
    /// Creates `SPOOL/USER.lock` (`O_EXCL`), waiting while another holder
    /// has it; fails after about 30 seconds.
    pub fn acquire(spool: &Path, user: &str) -> io::Result<DotLock> {
        let path = spool.join(format!("{user}.lock"));
        let mut waits = DOTLOCK_WAITS.iter();
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(_) => return Ok(DotLock { path }),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if is_stale(&path) {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    match waits.next() {
                        Some(secs) => std::thread::sleep(Duration::from_secs(*secs)),
                        None => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn is_stale(path: &Path) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > STALE_LOCK)
}

/// Takes an exclusive lock of the whole file, waiting up to 30 seconds.
fn lock_file(file: &File) -> io::Result<()> {
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    for _ in 0..FCNTL_ATTEMPTS {
        match nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_OFD_SETLK(&lock)) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EACCES) => {
                std::thread::sleep(Duration::from_millis(250))
            }
            // Filesystems without fcntl locks: the dot-lock is all there is.
            Err(nix::errno::Errno::ENOLCK) | Err(nix::errno::Errno::EINVAL) => return Ok(()),
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

/// mail.local's delivery: appends to the spool mailbox `path`.
pub fn append_mail_local(
    path: &Path,
    sender: &str,
    input: impl BufRead,
    now: i64,
) -> Result<(), Failure> {
    let fail = |code: i32, e: &io::Error| {
        Failure::new(
            code,
            format!("{MAIL_LOCAL}: {}: {}", path.display(), strerror(e)),
        )
    };
    let file = loop {
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                match OpenOptions::new()
                    .append(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
                {
                    Ok(file) => break file,
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(fail(EX_CANTCREAT, &e)),
                }
            }
            Err(e) => return Err(fail(EX_OSERR, &e)),
            Ok(meta) => {
                if meta.nlink() != 1 || !meta.file_type().is_file() {
                    return Err(Failure::new(
                        EX_OSERR,
                        format!("{MAIL_LOCAL}: {}: linked or special file", path.display()),
                    ));
                }
                let file = OpenOptions::new()
                    .append(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
                    .map_err(|e| fail(EX_OSERR, &e))?;
                let opened = file.metadata().map_err(|e| fail(EX_OSERR, &e))?;
                if opened.dev() != meta.dev() || opened.ino() != meta.ino() {
                    return Err(Failure::new(
                        EX_OSERR,
                        format!("{MAIL_LOCAL}: {}: changed after open", path.display()),
                    ));
                }
                if opened.nlink() != 1 || !opened.file_type().is_file() {
                    return Err(Failure::new(
                        EX_CANTCREAT,
                        format!("{MAIL_LOCAL}: {}: linked or special file", path.display()),
                    ));
                }
                break file;
            }
        }
    };
    lock_file(&file).map_err(|e| fail(EX_OSERR, &e))?;
    append(file, sender, input, now, Escaping::ParagraphStart).map_err(|e| fail(EX_OSERR, &e))
}

/// mail.mboxfile's delivery: appends to an alias or `.forward` file.
pub fn append_mboxfile(
    path: &Path,
    sender: &str,
    input: impl BufRead,
    now: i64,
) -> Result<(), Failure> {
    let fail = |e: &io::Error| Failure::new(EX_TEMPFAIL, format!("{MBOXFILE}: {}", strerror(e)));
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail(&e))?;
    if file
        .metadata()
        .map(|m| m.file_type().is_file())
        .unwrap_or(false)
    {
        lock_file(&file).map_err(|e| fail(&e))?;
    }
    append(file, sender, input, now, Escaping::EveryLine).map_err(|e| fail(&e))
}

/// Which lines starting with `From ` get a `>`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Escaping {
    /// mail.local: only at the start of a paragraph.
    ParagraphStart,
    /// mail.mboxfile: every one.
    EveryLine,
}

/// Appends one mbox entry; on failure the file is cut back to where it was.
fn append(
    mut file: File,
    sender: &str,
    input: impl BufRead,
    now: i64,
    escaping: Escaping,
) -> io::Result<()> {
    let start = file.seek(SeekFrom::End(0))?;
    let result =
        write_entry(&file, sender, input, now, escaping).and_then(|()| match file.sync_all() {
            // fsync of something that cannot be synced (/dev/null, a pipe).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            other => other,
        });
    if result.is_err()
        && file
            .metadata()
            .map(|m| m.file_type().is_file())
            .unwrap_or(false)
    {
        let _ = file.set_len(start);
    }
    result
}

fn write_entry(
    file: &File,
    sender: &str,
    input: impl BufRead,
    now: i64,
    escaping: Escaping,
) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    writeln!(out, "From {sender} {}", ctime(now))?;
    let mut paragraph_start = true;
    for_each_line(input, |line, had_newline| {
        let text = c_string(line);
        let from = text.starts_with(b"From ");
        let escape = match escaping {
            // mail.local compares the length *with* the newline: a last
            // line "From " without one is not escaped.
            Escaping::ParagraphStart => {
                paragraph_start && from && text.len() + usize::from(had_newline) > 5
            }
            Escaping::EveryLine => from,
        };
        paragraph_start = text.is_empty();
        if escape {
            out.write_all(b">")?;
        }
        out.write_all(text)?;
        out.write_all(b"\n")
    })?;
    out.write_all(b"\n")?;
    out.flush()
}

/// `ctime(3)` without the newline: `Sun Nov 22 07:30:56 2026`, local time.
pub fn ctime(t: i64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // SAFETY: `libc::tm` is plain data (integers and one raw pointer), for
    // which all-zero bytes are a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let time: libc::time_t = t;
    // SAFETY: both pointers come from live locals of the right types and
    // localtime_r writes only into `tm`; it is the thread-safe variant.
    let converted = unsafe { !libc::localtime_r(&time, &mut tm).is_null() };
    if !converted {
        return format!("@{t}");
    }
    let day = DAYS.get(tm.tm_wday as usize).copied().unwrap_or("???");
    let month = MONTHS.get(tm.tm_mon as usize).copied().unwrap_or("???");
    format!(
        "{day} {month}{:3} {:02}:{:02}:{:02} {}",
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        i64::from(tm.tm_year) + 1900
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &str = "Delivered-To: foo@x\nSubject: s\n\nFrom the start\nbody\nFrom here\n\nFrom again\n>From kept";

    #[test]
    fn mail_local_escapes_paragraph_starts() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("foo");
        append_mail_local(&path, "MAILER-DAEMON", MSG.as_bytes(), 0).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let (first, rest) = text.split_once('\n').unwrap();
        assert_eq!(first, format!("From MAILER-DAEMON {}", ctime(0)));
        assert_eq!(
            rest,
            "Delivered-To: foo@x\nSubject: s\n\n>From the start\nbody\nFrom here\n\n>From again\n>From kept\n\n"
        );
        // A second delivery appends.
        append_mail_local(&path, "a@b", "x\n".as_bytes(), 0).unwrap();
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .ends_with(&format!("From a@b {}\nx\n\n", ctime(0)))
        );
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn mboxfile_escapes_every_from_line() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("copy");
        append_mboxfile(&path, "a@b", MSG.as_bytes(), 0).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let rest = text.split_once('\n').unwrap().1;
        assert_eq!(
            rest,
            "Delivered-To: foo@x\nSubject: s\n\n>From the start\nbody\n>From here\n\n>From again\n>From kept\n\n"
        );
    }

    #[test]
    fn first_line_from_is_escaped_by_mail_local() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("foo");
        append_mail_local(&path, "s", "From x\nFrom \n".as_bytes(), 0).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("\n>From x\nFrom \n\n"), "{text:?}");
    }

    #[test]
    fn refuses_links_and_special_files() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        fs::write(&target, "").unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = append_mail_local(&link, "s", "x\n".as_bytes(), 0).unwrap_err();
        assert_eq!(e.code, EX_OSERR);
        assert!(
            e.message.ends_with("link: linked or special file"),
            "{}",
            e.message
        );
        let hard = tmp.path().join("hard");
        fs::hard_link(&target, &hard).unwrap();
        assert!(append_mail_local(&hard, "s", "x\n".as_bytes(), 0).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"");
    }

    #[test]
    fn failed_input_leaves_the_mailbox_as_it_was() {
        struct Broken(usize);
        impl io::Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk on fire"));
                }
                self.0 -= 1;
                buf[..2].copy_from_slice(b"x\n");
                Ok(2)
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("foo");
        fs::write(&path, "old\n").unwrap();
        let e = append_mail_local(&path, "s", io::BufReader::new(Broken(3)), 0).unwrap_err();
        assert_eq!(e.code, EX_OSERR);
        assert_eq!(fs::read(&path).unwrap(), b"old\n");
    }

    #[test]
    fn mailbox_names() {
        let spool = Path::new("/var/mail");
        assert_eq!(
            mailbox_path(spool, "foo").unwrap(),
            Path::new("/var/mail/foo")
        );
        for bad in ["", ".", "..", "../etc/passwd", "a/b"] {
            assert!(mailbox_path(spool, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prepare_creates_once() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("foo");
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        prepare_mailbox(&path, uid, gid).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        fs::write(&path, "kept").unwrap();
        prepare_mailbox(&path, uid, gid).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"kept");
    }

    #[test]
    fn dotlock_waits_for_the_holder_and_removes_stale_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = DotLock::acquire(tmp.path(), "foo").unwrap();
        assert!(tmp.path().join("foo.lock").exists());
        let dir = tmp.path().to_path_buf();
        let start = std::time::Instant::now();
        let waiter = std::thread::spawn(move || {
            DotLock::acquire(&dir, "foo").map(|l| l.path().to_path_buf())
        });
        std::thread::sleep(Duration::from_millis(300));
        drop(lock);
        assert!(waiter.join().unwrap().is_ok());
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(!tmp.path().join("foo.lock").exists());

        // A lock file from a crash long ago does not block delivery.
        let stale = tmp.path().join("bar.lock");
        let f = File::create(&stale).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        let start = std::time::Instant::now();
        let l = DotLock::acquire(tmp.path(), "bar").unwrap();
        assert!(start.elapsed() < Duration::from_secs(1));
        drop(l);
    }

    #[test]
    fn ctime_shape() {
        let s = ctime(1_795_332_656);
        // "Www Mmm dd hh:mm:ss yyyy" with a space-padded day.
        assert_eq!(s.len(), 24, "{s}");
        assert_eq!(&s[3..4], " ");
        assert_eq!(&s[7..8], " ");
        assert!(s.ends_with("2026"), "{s}");
    }
}
