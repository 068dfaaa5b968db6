//! One delivery job, run in the current process under whatever identity it
//! already has: inside the helper process (already the recipient), or in
//! smtpd itself when smtpd does not run as root.
//!
//! This is where OpenSMTPD's delivery command line is taken apart again:
//! instead of `/bin/sh -c "mail.maildir \"PATH\""`, the maildir path is
//! expanded and written to directly; only `mda` commands and `|command`
//! destinations are run by a shell. Any expansion failure ends the job
//! the way OpenSMTPD's delivery process ends it: exit 1 with
//! `smtpd: mda command line could not be expanded` (a permanent failure).

use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::format::{MailAddr, expand, expand_for_shell};
use super::lmtp::{self, LmtpSession};
use super::maildir::{self, Maildir};
use super::mbox::{self, DotLock, MAIL_LOCAL};
use super::mda::{self, MdaCommand};
use super::message::delivery_headers;
use super::request::{Job, LmtpRecipient, Method};
use super::result::{EX_CONFIG, EX_OSERR, Failure, Outcome, strerror};

/// The last line of a delivery whose command line could not be expanded.
pub const EXPANSION_FAILED: &str = "smtpd: mda command line could not be expanded";

/// Runs `job` with `message` (the queued message, from its start).
pub fn run_job(job: &Job, message: impl Read) -> Outcome {
    run_job_with(job, message, None)
}

/// [`run_job`], except that a maildir delivery stops before the fsync of its `new/`
/// directory and records that directory in `unsynced`: the caller fsyncs each directory
/// once for a whole batch, and only then may it report these outcomes as successes.
pub fn run_job_deferring_sync(
    job: &Job,
    message: impl Read,
    unsynced: &mut Vec<PathBuf>,
) -> Outcome {
    run_job_with(job, message, Some(unsynced))
}

fn run_job_with(job: &Job, message: impl Read, unsynced: Option<&mut Vec<PathBuf>>) -> Outcome {
    let headers = delivery_headers(&job.envelope.sender, &job.envelope.rcpt).into_bytes();
    // Under 64 KiB: freeing a larger buffer makes glibc consolidate its free lists.
    let input = BufReader::with_capacity(32 * 1024, headers.as_slice().chain(message));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);

    if job.wrapper.is_some() && !matches!(job.method, Method::Mda { .. } | Method::Pipe { .. }) {
        return Failure::new(EX_CONFIG, "smtpd: a wrapper can only wrap mda commands").into();
    }

    let vars = job.format_vars();
    let result = match &job.method {
        Method::Maildir { path, junk } => {
            let root = match path {
                Some(template) => match expand(template, &vars) {
                    Ok(p) => p,
                    Err(_) => return expansion_failed(),
                },
                None => format!("{}/Maildir", job.identity.home),
            };
            let target = Maildir {
                root: relative_to(&job.identity.home, &root),
                junk: *junk,
                extension: (!job.envelope.subaddress.is_empty())
                    .then(|| job.envelope.subaddress.clone()),
            };
            match unsynced {
                Some(dirs) => maildir::deliver_unsynced(&target, input, &hostname()).map(|d| {
                    let dir = d.new_dir().to_path_buf();
                    if !dirs.contains(&dir) {
                        dirs.push(dir);
                    }
                }),
                None => maildir::deliver(&target, input, &hostname()).map(|_| ()),
            }
        }
        Method::Mbox => deliver_mbox(job, input, now),
        Method::File { path } => match expand(path, &vars) {
            Ok(path) => mbox::append_mboxfile(
                &relative_to(&job.identity.home, &path),
                &mbox_from(&job.envelope.sender),
                input,
                now,
            ),
            Err(_) => return expansion_failed(),
        },
        Method::Mda { command } => return run_command(job, command, true, input),
        Method::Pipe { command } => return run_command(job, command, false, input),
        Method::Lmtp {
            destination,
            rcpt_to,
        } => {
            let Ok(destination) = expand(destination, &vars) else {
                return expansion_failed();
            };
            let dest = MailAddr::parse(&job.envelope.dest);
            let rcpt = match rcpt_to {
                LmtpRecipient::User => job.identity.name.clone(),
                LmtpRecipient::Recipient => format!("{}@{}", dest.user, dest.domain),
            };
            let sender = MailAddr::parse(&job.envelope.sender);
            let session = LmtpSession {
                destination,
                lhlo: "localhost".into(),
                mail_from: if sender.user.is_empty() {
                    String::new()
                } else {
                    sender.to_text()
                },
                rcpt_to: rcpt,
                timeout: Duration::from_secs(job.timeout_secs),
            };
            lmtp::deliver(&session, input)
        }
        Method::ForwardOnly | Method::ExpandOnly => Err(Failure::new(
            EX_CONFIG,
            "smtpd: this action has no local delivery",
        )),
    };
    match result {
        Ok(()) => Outcome::success(),
        Err(failure) => failure.into(),
    }
}

fn expansion_failed() -> Outcome {
    Outcome::failure(1, EXPANSION_FAILED)
}

/// `mda` commands and pipes: expansion for the shell, the wrapper, then `/bin/sh -c`.
fn run_command(job: &Job, command: &str, through_mail_mda: bool, input: impl Read) -> Outcome {
    let mut vars = job.format_vars();
    let Ok(real) = expand_for_shell(command, &vars) else {
        return expansion_failed();
    };
    let command = match &job.wrapper {
        Some(wrapper) => {
            vars.mda = Some(real);
            match expand_for_shell(wrapper, &vars) {
                Ok(wrapped) => wrapped,
                Err(_) => return expansion_failed(),
            }
        }
        None => real,
    };
    let cmd = MdaCommand {
        command,
        env: mda::environment(&job.identity, &job.envelope),
        home: PathBuf::from(&job.identity.home),
        timeout: Duration::from_secs(job.timeout_secs),
        through_mail_mda,
    };
    mda::run(&cmd, input)
}

/// mail.local: the spool mailbox, dot-locked unless the privileged side
/// already holds the lock or the spool does not let us create one.
fn deliver_mbox(job: &Job, input: impl std::io::BufRead, now: i64) -> Result<(), Failure> {
    let spool = Path::new(&job.mbox_spool);
    let path = mbox::mailbox_path(spool, &job.userinfo.name)?;
    let _lock = if job.mbox_dotlocked {
        None
    } else {
        match DotLock::acquire(spool, &job.userinfo.name) {
            Ok(lock) => Some(lock),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                None
            }
            Err(e) => {
                let lock = spool.join(format!("{}.lock", job.userinfo.name));
                return Err(Failure::new(
                    EX_OSERR,
                    format!("{MAIL_LOCAL}: {}: {}", lock.display(), strerror(&e)),
                ));
            }
        }
    };
    mbox::append_mail_local(&path, &mbox_from(&job.envelope.sender), input, now)
}

/// `%{mbox.from}`: the sender, or `MAILER-DAEMON` for `<>`.
fn mbox_from(sender: &str) -> String {
    let addr = MailAddr::parse(sender);
    if addr.is_null() {
        "MAILER-DAEMON".into()
    } else {
        addr.to_text()
    }
}

/// A relative path is taken from the delivery's working directory, the home.
fn relative_to(home: &str, path: &str) -> PathBuf {
    if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(home).join(path)
    }
}

/// `gethostname()`, `localhost` if that fails (as mail.maildir does).
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::request::{Account, EnvelopeInfo};
    use crate::deliver::result::{DeliveryResult, Exit, Status};

    fn job(method: Method, home: &Path) -> Job {
        let me = Account::current();
        let account = Account {
            home: home.display().to_string(),
            ..me
        };
        Job {
            method,
            wrapper: None,
            userinfo: account.clone(),
            identity: account,
            envelope: EnvelopeInfo {
                evpid: 1,
                sender: "alice@client.example".into(),
                rcpt: "Foo+Tag@Example.ORG".into(),
                dest: "foo@example.org".into(),
                subaddress: "tag".into(),
            },
            mbox_spool: home.display().to_string(),
            mbox_dotlocked: false,
            subaddress_delimiter: '+',
            timeout_secs: 30,
        }
    }

    #[test]
    fn maildir_default_and_expanded_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let j = job(
            Method::Maildir {
                path: None,
                junk: false,
            },
            tmp.path(),
        );
        assert_eq!(
            run_job(&j, "Subject: x\n\nb\n".as_bytes()),
            Outcome::success()
        );
        let new = std::fs::read_dir(tmp.path().join("Maildir/new"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        assert_eq!(
            std::fs::read_to_string(new).unwrap(),
            "Return-Path: <alice@client.example>\nDelivered-To: Foo+Tag@Example.ORG\nSubject: x\n\nb\n"
        );
        let j = job(
            Method::Maildir {
                path: Some("~/vmail/%{rcpt}".into()),
                junk: true,
            },
            tmp.path(),
        );
        assert_eq!(run_job(&j, "S: x\n\nb\n".as_bytes()), Outcome::success());
        assert!(tmp.path().join("vmail/Foo+Tag@Example.ORG/new").is_dir());
        assert!(
            tmp.path()
                .join("vmail/Foo+Tag@Example.ORG/.Junk/new")
                .is_dir()
        );
    }

    #[test]
    fn expansion_failure_is_permanent() {
        let tmp = tempfile::tempdir().unwrap();
        let j = job(
            Method::Maildir {
                path: Some("/x/%{nope}".into()),
                junk: false,
            },
            tmp.path(),
        );
        let r = DeliveryResult::from_outcome(&run_job(&j, "x\n".as_bytes()));
        assert_eq!(r.status, Status::PermFail);
        assert_eq!(
            r.stat,
            "Error (\"smtpd: mda command line could not be expanded\")"
        );
        let j = job(
            Method::Mda {
                command: "cat %{rcpt[0]:lowercase}".into(),
            },
            tmp.path(),
        );
        assert_eq!(run_job(&j, "x\n".as_bytes()).exit, Exit::Code(1));
    }

    #[test]
    fn wrapper_gets_the_real_command() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let mut j = job(
            Method::Mda {
                command: format!("cat > {}", out.display()),
            },
            tmp.path(),
        );
        j.wrapper = Some("echo wrapped >&2; %{mda}".into());
        assert_eq!(run_job(&j, "S: x\n\nbody\n".as_bytes()), Outcome::success());
        assert!(
            std::fs::read_to_string(&out)
                .unwrap()
                .ends_with("S: x\n\nbody\n")
        );
        let mut j = job(
            Method::Maildir {
                path: None,
                junk: false,
            },
            tmp.path(),
        );
        j.wrapper = Some("%{mda}".into());
        assert_eq!(run_job(&j, "x\n".as_bytes()).exit, Exit::Code(EX_CONFIG));
    }

    #[test]
    fn mbox_and_file_use_mailer_daemon_for_null_sender() {
        let tmp = tempfile::tempdir().unwrap();
        let mut j = job(Method::Mbox, tmp.path());
        j.envelope.sender = String::new();
        assert_eq!(run_job(&j, "S: x\n\nb\n".as_bytes()), Outcome::success());
        let mbox = std::fs::read_to_string(tmp.path().join(&j.userinfo.name)).unwrap();
        assert!(mbox.starts_with("From MAILER-DAEMON "), "{mbox}");
        assert!(
            mbox.contains("\nDelivered-To: Foo+Tag@Example.ORG\nS: x\n\nb\n\n"),
            "{mbox}"
        );
        assert!(
            !tmp.path()
                .join(format!("{}.lock", j.userinfo.name))
                .exists()
        );

        let mut j = job(
            Method::File {
                path: "copies/all".into(),
            },
            tmp.path(),
        );
        std::fs::create_dir(tmp.path().join("copies")).unwrap();
        j.envelope.sender = String::new();
        assert_eq!(run_job(&j, "S: x\n\nb\n".as_bytes()), Outcome::success());
        let text = std::fs::read_to_string(tmp.path().join("copies/all")).unwrap();
        assert!(text.starts_with("From MAILER-DAEMON "), "{text}");
    }

    #[test]
    fn configuration_only_methods_fail() {
        let tmp = tempfile::tempdir().unwrap();
        let r = DeliveryResult::from_outcome(&run_job(
            &job(Method::ForwardOnly, tmp.path()),
            "x\n".as_bytes(),
        ));
        assert_eq!(r.status, Status::PermFail);
        assert_eq!(
            r.stat,
            "Error (local configuration error: \"smtpd: this action has no local delivery\")"
        );
    }
}
