//! Maildir delivery, as OpenSMTPD's `mail.maildir` does it, made durable.
//!
//! Layout and names follow `mail.maildir.c`:
//! * the maildir (and missing parents) is created with mode 0700, then
//!   `chmod 0700` as `mail.maildir` does, plus `cur/`, `tmp/`, `new/`;
//! * with `junk`, `.Junk/{cur,tmp,new}` is always created, and a message
//!   whose header block has a line equal (ignoring case) to `X-Spam: yes`
//!   or `X-Spam-Flag: yes` goes to `.Junk/new/` of the base maildir;
//! * a sub-address (`EXTENSION`) selects the folder `.EXT` only if that
//!   folder already exists (`` !#$%&'*/?^`{|}~ `` in it become `:`);
//! * file name `<unix time>.<8 hex random>.<host name>`, written to `tmp/`
//!   (`O_EXCL`, 0600) line by line with LF endings, then renamed into `new/`.
//!
//! Stronger than OpenSMTPD: the file is fsynced before the rename (as
//! `mail.maildir` does) **and the `new/` directory is fsynced after it**, so
//! the rename itself is on disk before the delivery is reported; a newly
//! created directory is fsynced into its parent. A `..` component in the
//! expanded path is refused (OpenSMTPD relies on address validation alone).
//!
//! Errors are reported as `mail.maildir` reports them: exit 75 with
//! `mail.maildir: <strerror>`, or exit 1 for an invalid or too long path.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufRead, BufWriter, ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::message::{c_string, for_each_line};
use super::result::{Failure, strerror};

/// The program name in error messages.
pub const PROGRAM: &str = "mail.maildir";

/// Characters of a sub-address replaced with `:` to name a folder.
const FOLDER_ESCAPE: &str = "!#$%&'*/?^`{|}~";

/// Tries at a unique file name before giving up.
const NAME_ATTEMPTS: usize = 8;

/// Where and how to deliver one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maildir {
    /// The maildir, absolute.
    pub root: PathBuf,
    /// `maildir ... junk`: keep `.Junk` and file spam there.
    pub junk: bool,
    /// The recipient's sub-address, if any (`EXTENSION`).
    pub extension: Option<String>,
}

/// A delivered message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The file in `new/`.
    pub path: PathBuf,
    /// It was filed as junk.
    pub junk: bool,
}

/// Delivers `input` (delivery headers and message) into the maildir.
pub fn deliver(
    target: &Maildir,
    input: impl BufRead,
    hostname: &str,
) -> Result<Delivered, Failure> {
    let delivered = deliver_unsynced(target, input, hostname)?;
    sync_new_dir(delivered.new_dir())?;
    Ok(delivered)
}

/// fsyncs a `new/` directory after files were renamed into it: the end of a delivery.
/// Several deliveries into one maildir may share it (see [`deliver_unsynced`]).
pub fn sync_new_dir(new_dir: &Path) -> Result<(), Failure> {
    sync_dir(new_dir).map_err(|e| {
        Failure::temp(format!(
            "{PROGRAM}: {}: {}",
            new_dir.display(),
            strerror(&e)
        ))
    })
}

impl Delivered {
    /// The `new/` directory the file is in.
    pub fn new_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }
}

/// [`deliver`] up to the rename into `new/`: the file is written and fsynced, its name is
/// not durable yet. The caller must [`sync_new_dir`] before the delivery counts.
pub fn deliver_unsynced(
    target: &Maildir,
    input: impl BufRead,
    hostname: &str,
) -> Result<Delivered, Failure> {
    let root = &target.root;
    check_path(root)?;
    make_maildir(root)?;

    let junk_dir = root.join(".Junk");
    if target.junk {
        make_maildir(&junk_dir)?;
    }

    let mut dir = root.clone();
    if let Some(ext) = target.extension.as_deref() {
        let folder: String = ext
            .chars()
            .map(|c| if FOLDER_ESCAPE.contains(c) { ':' } else { c })
            .collect();
        if !folder.is_empty() && folder != "." {
            let candidate = root.join(format!(".{folder}"));
            if fs::metadata(&candidate).is_ok() {
                make_maildir(&candidate)?;
                dir = candidate;
            }
        }
    }

    let (name, tmp_path, file) = create_unique(&dir.join("tmp"), hostname)?;
    let written = write_message(file, input, target.junk);
    let is_junk = match written {
        Ok(is_junk) => is_junk,
        Err(e) => {
            let _ = fs::remove_file(&tmp_path);
            return Err(Failure::temp(format!("{PROGRAM}: {}", strerror(&e))));
        }
    };

    let new_dir = if is_junk {
        junk_dir.join("new")
    } else {
        dir.join("new")
    };
    let final_path = new_dir.join(&name);
    if let Err(e) = fs::rename(&tmp_path, &final_path) {
        let _ = fs::remove_file(&tmp_path);
        return Err(Failure::temp(format!("{PROGRAM}: {}", strerror(&e))));
    }
    Ok(Delivered {
        path: final_path,
        junk: is_junk,
    })
}

/// The maildir must be absolute, without `..`, and short enough.
fn check_path(root: &Path) -> Result<(), Failure> {
    let invalid = |what: &str| Failure::new(1, format!("{PROGRAM}: {}: {what}", root.display()));
    if !root.is_absolute() || root.components().any(|c| c == Component::ParentDir) {
        return Err(invalid("Invalid argument"));
    }
    // Room for "/.Junk/tmp/" and a file name, as PATH_MAX allows.
    if root.as_os_str().len() + 64 >= libc::PATH_MAX as usize {
        return Err(invalid("File name too long"));
    }
    Ok(())
}

/// `maildir_mkdirs`: the directory with its parents, then `cur`, `tmp`, `new`.
/// A maildir already in that state (0700, its three directories present) is left alone:
/// the `mkdir`s and `chmod` would change nothing, and each takes the directory's lock.
fn make_maildir(dir: &Path) -> Result<(), Failure> {
    let ready = fs::metadata(dir)
        .is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o7777 == 0o700)
        && ["cur", "tmp", "new"]
            .iter()
            .all(|sub| fs::metadata(dir.join(sub)).is_ok_and(|m| m.is_dir()));
    if ready {
        return Ok(());
    }
    mkdirs(dir).map_err(|e| match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENAMETOOLONG) => {
            Failure::new(1, format!("{PROGRAM}: {}", strerror(&e)))
        }
        _ => Failure::temp(format!("{PROGRAM}: {}", strerror(&e))),
    })?;
    for sub in ["cur", "tmp", "new"] {
        mkdir_synced(&dir.join(sub))
            .map_err(|e| Failure::temp(format!("{PROGRAM}: {}", strerror(&e))))?;
    }
    Ok(())
}

/// `mkdirs`: every missing component with mode 0700, then `chmod 0700`
/// of the last one (as `mail.maildir` does; failures of the chmod are ignored).
fn mkdirs(path: &Path) -> io::Result<()> {
    let mut current = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(part) => current.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
        }
        match fs::metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            Err(e) if e.kind() == ErrorKind::NotFound => mkdir_synced(&current)?,
            Err(e) => return Err(e),
        }
    }
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    Ok(())
}

/// Creates a directory (0700) if missing and makes its entry durable.
fn mkdir_synced(dir: &Path) -> io::Result<()> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => match dir.parent() {
            Some(parent) => sync_dir(parent),
            None => Ok(()),
        },
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// fsync of a directory: makes the entries created or renamed in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens `tmp/<unique name>` with `O_EXCL`, mode 0600.
fn create_unique(tmp: &Path, hostname: &str) -> Result<(String, PathBuf, File), Failure> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut last_error = io::Error::from(ErrorKind::AlreadyExists);
    for _ in 0..NAME_ATTEMPTS {
        let random = getrandom::u32().map_err(|e| Failure::temp(format!("{PROGRAM}: {e}")))?;
        let name = format!("{now}.{random:08x}.{hostname}");
        let path = tmp.join(&name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => return Ok((name, path, file)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => last_error = e,
            Err(e) => return Err(Failure::temp(format!("{PROGRAM}: {}", strerror(&e)))),
        }
    }
    Err(Failure::temp(format!(
        "{PROGRAM}: {}",
        strerror(&last_error)
    )))
}

/// Writes the message line by line, fsyncs it, and says whether it is junk.
fn write_message(file: File, input: impl BufRead, junk: bool) -> io::Result<bool> {
    // Under 64 KiB: freeing a larger buffer makes glibc consolidate its free lists.
    let mut out = BufWriter::with_capacity(32 * 1024, file);
    let mut in_header = true;
    let mut is_junk = false;
    for_each_line(input, |line, _| {
        let text = c_string(line);
        if text.is_empty() {
            in_header = false;
        }
        if junk
            && in_header
            && (text.eq_ignore_ascii_case(b"x-spam: yes")
                || text.eq_ignore_ascii_case(b"x-spam-flag: yes"))
        {
            is_junk = true;
        }
        out.write_all(text)?;
        out.write_all(b"\n")
    })?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(is_junk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(root: &Path, junk: bool) -> Maildir {
        Maildir {
            root: root.to_path_buf(),
            junk,
            extension: None,
        }
    }

    #[test]
    fn creates_the_tree_and_delivers_into_new() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("a/b/Maildir");
        let d = deliver(
            &target(&root, false),
            "Delivered-To: x@y\r\nSubject: s\n\nbody".as_bytes(),
            "host",
        )
        .unwrap();
        assert!(!d.junk);
        assert_eq!(d.path.parent().unwrap(), root.join("new"));
        // LF endings, final newline added, CR kept as data.
        assert_eq!(
            fs::read(&d.path).unwrap(),
            b"Delivered-To: x@y\r\nSubject: s\n\nbody\n"
        );
        for sub in ["cur", "tmp", "new"] {
            let meta = fs::metadata(root.join(sub)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        }
        assert_eq!(
            fs::metadata(&root).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(&d.path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        assert!(!root.join(".Junk").exists());
        // <unix time>.<8 hex>.<host>
        let name = d.path.file_name().unwrap().to_str().unwrap().to_string();
        let parts: Vec<&str> = name.split('.').collect();
        assert_eq!(parts.len(), 3, "{name}");
        assert!(parts[0].parse::<u64>().unwrap() > 1_600_000_000);
        assert!(parts[1].len() == 8 && parts[1].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(parts[2], "host");
    }

    #[test]
    fn junk_goes_to_dot_junk_only_from_the_header() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("Maildir");
        let spam = "Delivered-To: x@y\nX-Spam: Yes\nSubject: s\n\nbody\n";
        let d = deliver(&target(&root, true), spam.as_bytes(), "h").unwrap();
        assert!(d.junk);
        assert_eq!(d.path.parent().unwrap(), root.join(".Junk/new"));
        let flag = "Subject: s\nx-spam-flag: YES\n\nbody\n";
        assert!(
            deliver(&target(&root, true), flag.as_bytes(), "h")
                .unwrap()
                .junk
        );
        let in_body = "Subject: s\n\nX-Spam: Yes\n";
        let d = deliver(&target(&root, true), in_body.as_bytes(), "h").unwrap();
        assert!(!d.junk);
        assert_eq!(d.path.parent().unwrap(), root.join("new"));
        let other_value = "X-Spam: Yes, probably\n\n";
        assert!(
            !deliver(&target(&root, true), other_value.as_bytes(), "h")
                .unwrap()
                .junk
        );
        // Without `junk` the header is ignored, and no .Junk is made.
        let root2 = tmp.path().join("Maildir2");
        assert!(
            !deliver(&target(&root2, false), spam.as_bytes(), "h")
                .unwrap()
                .junk
        );
        assert!(!root2.join(".Junk").exists());
    }

    #[test]
    fn extension_folder_only_when_it_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("Maildir");
        let mut t = target(&root, true);
        t.extension = Some("lists".into());
        let d = deliver(&t, "S: x\n\nb\n".as_bytes(), "h").unwrap();
        assert_eq!(d.path.parent().unwrap(), root.join("new"));
        fs::create_dir(root.join(".lists")).unwrap();
        let d = deliver(&t, "S: x\n\nb\n".as_bytes(), "h").unwrap();
        assert_eq!(d.path.parent().unwrap(), root.join(".lists/new"));
        // Junk still goes to the base maildir's .Junk.
        let d = deliver(&t, "X-Spam: yes\n\nb\n".as_bytes(), "h").unwrap();
        assert_eq!(d.path.parent().unwrap(), root.join(".Junk/new"));
        // Escaped characters: "a/b" names the folder ".a:b".
        fs::create_dir(root.join(".a:b")).unwrap();
        t.extension = Some("a/b".into());
        let d = deliver(&t, "S: x\n\nb\n".as_bytes(), "h").unwrap();
        assert_eq!(d.path.parent().unwrap(), root.join(".a:b/new"));
        // "." would name the parent directory: ignored.
        t.extension = Some(".".into());
        let d = deliver(&t, "S: x\n\nb\n".as_bytes(), "h").unwrap();
        assert_eq!(d.path.parent().unwrap(), root.join("new"));
    }

    #[test]
    fn errors_look_like_mail_maildir() {
        let e = deliver(
            &target(Path::new("relative/Maildir"), false),
            "x\n".as_bytes(),
            "h",
        )
        .unwrap_err();
        assert_eq!(
            e,
            Failure::new(1, "mail.maildir: relative/Maildir: Invalid argument")
        );
        let e = deliver(
            &target(Path::new("/tmp/../etc/Maildir"), false),
            "x\n".as_bytes(),
            "h",
        )
        .unwrap_err();
        assert_eq!(e.code, 1);
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("plain");
        fs::write(&file, "x").unwrap();
        let e = deliver(&target(&file.join("Maildir"), false), "x\n".as_bytes(), "h").unwrap_err();
        assert_eq!(e, Failure::temp("mail.maildir: Not a directory"));
    }

    #[test]
    fn nul_ends_a_line_like_the_c_helper() {
        let tmp = tempfile::tempdir().unwrap();
        let d = deliver(&target(tmp.path(), false), &b"S: a\0b\n\nx\n"[..], "h").unwrap();
        assert_eq!(fs::read(d.path).unwrap(), b"S: a\n\nx\n");
    }
}
