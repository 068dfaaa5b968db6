//! The offline queue's start-up submission, by the privileged broker: messages `sendmail`
//! left in `<spool>/offline/` while the daemon was down (OpenSMTPD's `offline/`, spec §10;
//! the parent process scans it there too).
//!
//! * `sendmail` (`smtp::enqueue::save_offline`), unable to reach the daemon, writes
//!   `offline/<unix time>.<10 random characters>` (mode 0600, its own user as owner): a
//!   first line with its command-line arguments joined by `|`, then the message as it read
//!   it. It exits 75 (EX_TEMPFAIL).
//! * The directory is `1733` (`queue::layout::OFFLINE_MODE`): everyone may create files in
//!   it, nobody but root may list or read it, and nobody may remove another user's file.
//! * At start-up, once the enqueue socket accepts, the daemon has every file submitted by
//!   [`submit_all`], run by the privileged broker when started as root: each file is
//!   submitted by running `sendmail` **as the file's owner** (so the sender is who wrote it,
//!   as if the daemon had been up), with the saved arguments and the message on its standard
//!   input. A file that was submitted is removed; one that was not stays for the next start.
//!   Files that are not regular, have other links, or are empty are not submitted (empty ones
//!   are removed).

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a single submission may take before it is stopped (and the file kept).
const SUBMIT_LIMIT: Duration = Duration::from_secs(300);
/// Most files submitted at one start (the rest wait for the next start).
const MAX_FILES: usize = 10_000;

/// How the start-up submission went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Messages submitted (their files removed).
    pub submitted: usize,
    /// Files kept for the next start.
    pub kept: usize,
}

/// What [`submit_all`] needs: where the files are, the `sendmail` to run, and the spool
/// whose enqueue socket it talks to.
#[derive(Debug, Clone)]
pub struct Submitter {
    pub dir: PathBuf,
    pub sendmail: PathBuf,
    pub spool: PathBuf,
}

impl Submitter {
    /// The `sendmail` beside the running daemon's binary.
    pub fn beside_current_exe(spool: &Path) -> Submitter {
        let sendmail = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("sendmail")))
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/sendmail"));
        Submitter {
            dir: crate::queue::layout::Layout::new(spool).offline(),
            sendmail,
            spool: spool.to_path_buf(),
        }
    }
}

/// Submits every file of the directory. As root, each one runs as its owner; otherwise only
/// files of the daemon's own user are submitted (others are kept, with a warning).
pub fn submit_all(s: &Submitter) -> Outcome {
    let mut out = Outcome::default();
    let Ok(entries) = std::fs::read_dir(&s.dir) else {
        return out;
    };
    let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    names.truncate(MAX_FILES);
    for path in names {
        match submit_one(s, &path) {
            Ok(true) => {
                let _ = std::fs::remove_file(&path);
                out.submitted += 1;
            }
            Ok(false) => {
                // Empty: nothing to send.
                let _ = std::fs::remove_file(&path);
            }
            Err(why) => {
                tracing::warn!("warn: offline: {}: {why}; kept", path.display());
                out.kept += 1;
            }
        }
    }
    out
}

/// Submits one file; `Ok(false)` for an empty one.
fn submit_one(s: &Submitter, path: &Path) -> Result<bool, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| crate::config::diag::strerror(&e))?;
    let meta = file
        .metadata()
        .map_err(|e| crate::config::diag::strerror(&e))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.nlink() != 1 {
        return Err("the file has other links".into());
    }
    if meta.len() == 0 {
        return Ok(false);
    }
    let me = nix::unistd::geteuid();
    let owner = nix::unistd::Uid::from_raw(meta.uid());
    if !me.is_root() && owner != me {
        return Err(format!("owned by uid {owner}, not by the daemon's user"));
    }
    let user = nix::unistd::User::from_uid(owner)
        .ok()
        .flatten()
        .ok_or_else(|| format!("no user with uid {owner}"))?;
    // The arguments line, then the message from where the reader stopped.
    let mut reader = BufReader::new(file);
    let mut head = Vec::new();
    reader
        .by_ref()
        .take(64 * 1024)
        .read_until(b'\n', &mut head)
        .map_err(|e| e.to_string())?;
    if head.last() != Some(&b'\n') {
        return Err("no argument line".into());
    }
    head.pop();
    let head = String::from_utf8(head).map_err(|_| "argument line is not text")?;
    let args: Vec<&str> = if head.is_empty() {
        Vec::new()
    } else {
        head.split('|').collect()
    };
    let offset = reader.stream_position().map_err(|e| e.to_string())?;
    let mut file = reader.into_inner();
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&s.sendmail);
    cmd.args(&args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", &user.dir)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("SMTPD_SPOOL", &s.spool)
        .stdin(Stdio::from(file))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if me.is_root() {
        use std::os::unix::process::CommandExt;
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{}: {e}", s.sendmail.display()))?;
    let deadline = Instant::now() + SUBMIT_LIMIT;
    // Bounded by the deadline.
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("sendmail did not finish in time".into());
            }
        }
    };
    if status.success() {
        return Ok(true);
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.by_ref().take(4096).read_to_string(&mut err);
    }
    Err(format!(
        "sendmail as {} exited with {}{}{}",
        user.name,
        status
            .code()
            .map_or("a signal".to_string(), |c| c.to_string()),
        if err.trim().is_empty() { "" } else { ": " },
        err.trim()
    ))
}
