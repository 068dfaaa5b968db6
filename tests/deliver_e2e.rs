//! Mail accepted over SMTP is delivered: files land in real maildirs (owned by the userbase
//! uid when smtpd runs as root), before the reply or from the queue (delivery paused, a
//! temporary failure retried), and the queue is empty afterwards.

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::{Daemon, dialogue, files_under};

#[test]
fn accepted_mail_is_delivered_into_maildirs_and_leaves_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let vmail = dir.path().join("vmail");
    std::fs::create_dir(&vmail).unwrap();
    let root = nix::unistd::Uid::effective().is_root();
    if root {
        // The recipient's uid must be able to create its maildir.
        nix::unistd::chown(&vmail, Some(2000.into()), Some(2000.into())).unwrap();
        let mut p = dir.path().to_path_buf();
        loop {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
            if !p.pop() || p.as_os_str().len() <= 4 {
                break;
            }
        }
    }
    let conf = format!(
        "listen on 127.0.0.1 port PORT hostname mx.test\n\
         table domains {{ \"bsdsx.fr\", \"*.bsdsx.fr\" }}\n\
         table aliases {{ abuse = postmaster, postmaster = root, root = foo }}\n\
         table users {{ foo = \"2000:2000:/var/empty\", bar = \"2000:2000:/var/empty\" }}\n\
         action \"local_mail\" maildir \"{}/%{{rcpt}}\" junk userbase <users> alias <aliases>\n\
         match from any for domain <domains> action \"local_mail\"\n",
        vmail.display()
    );
    let d = Daemon::start(dir.path(), &conf, &[]);
    let port = d.port;
    let replies = dialogue(
        port,
        &[
            "EHLO client.example",
            "MAIL FROM:<>",
            "RCPT TO:<abuse@bsdsx.fr>",
            "RCPT TO:<bar@bsdsx.fr>",
            "DATA",
            "Subject: e2e\r\n\r\nHello.\r\n.",
            "QUIT",
        ],
    );
    assert!(
        replies
            .iter()
            .any(|r| r.contains("Message accepted for delivery")),
        "{replies:?}"
    );
    // Wait (bounded) for both deliveries.
    let t = Instant::now();
    let mut delivered = Vec::new();
    while t.elapsed() < Duration::from_secs(15) {
        delivered = files_under(&vmail)
            .into_iter()
            .filter(|p| p.parent().is_some_and(|d| d.ends_with("new")))
            .collect();
        if delivered.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    let abuse = delivered
        .iter()
        .find(|p| p.to_string_lossy().contains("/abuse@bsdsx.fr/new/"))
        .expect("abuse@ maildir");
    let text = std::fs::read_to_string(abuse).unwrap();
    assert!(text.starts_with("Delivered-To: abuse@bsdsx.fr\n"), "{text}");
    assert!(
        text.contains("\tby mx.test (OpenSMTPD) with ESMTP id "),
        "{text}"
    );
    assert!(
        text.contains("Subject: e2e\n") && text.ends_with("Hello.\n"),
        "{text}"
    );
    assert!(
        vmail.join("abuse@bsdsx.fr/.Junk/new").is_dir(),
        "junk folder created"
    );
    if root {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(abuse).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (2000, 2000),
            "delivered as the userbase uid"
        );
    }
    // Delivered envelopes leave the queue (bounded wait for the removal).
    let t = Instant::now();
    let mut left = usize::MAX;
    while t.elapsed() < Duration::from_secs(5) {
        left = files_under(&dir.path().join("spool/queue")).len();
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(left, 0, "queue not empty after delivery");
}

/// A message junked by a filter is delivered into the maildir's `.Junk` folder.
#[test]
fn junked_mail_lands_in_the_junk_folder() {
    let dir = tempfile::tempdir().unwrap();
    let vmail = dir.path().join("vmail");
    std::fs::create_dir(&vmail).unwrap();
    if nix::unistd::Uid::effective().is_root() {
        nix::unistd::chown(&vmail, Some(2000.into()), Some(2000.into())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let conf = format!(
        "filter \"junk_spam\" phase mail-from match mail-from regex \"^spam\" junk\n\
         listen on 127.0.0.1 port PORT hostname mx.test filter \"junk_spam\"\n\
         table users {{ foo = \"2000:2000:/var/empty\" }}\n\
         action \"local_mail\" maildir \"{}/%{{rcpt}}\" junk userbase <users>\n\
         match from any for domain \"bsdsx.fr\" action \"local_mail\"\n",
        vmail.display()
    );
    let d = Daemon::start(dir.path(), &conf, &[]);
    let port = d.port;
    for from in ["spammer@x.example", "friend@x.example"] {
        let replies = dialogue(
            port,
            &[
                "EHLO client.example",
                &format!("MAIL FROM:<{from}>"),
                "RCPT TO:<foo@bsdsx.fr>",
                "DATA",
                "Subject: j\r\n\r\nbody\r\n.",
                "QUIT",
            ],
        );
        assert!(
            replies
                .iter()
                .any(|r| r.contains("Message accepted for delivery")),
            "{replies:?}"
        );
    }
    let t = Instant::now();
    let (mut junk, mut inbox) = (Vec::new(), Vec::new());
    while t.elapsed() < Duration::from_secs(15) {
        junk = files_under(&vmail.join("foo@bsdsx.fr/.Junk/new"));
        inbox = files_under(&vmail.join("foo@bsdsx.fr/new"));
        if junk.len() == 1 && inbox.len() == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        (junk.len(), inbox.len()),
        (1, 1),
        "junk={junk:?} inbox={inbox:?}"
    );
    let text = std::fs::read_to_string(&junk[0]).unwrap();
    assert!(text.contains("X-Spam: Yes\n"), "{text}");
    assert!(
        !std::fs::read_to_string(&inbox[0])
            .unwrap()
            .contains("X-Spam"),
        "the clean message is not marked"
    );
}

fn wait_for_files(dir: &Path, n: usize, secs: u64) -> Vec<std::path::PathBuf> {
    let t = Instant::now();
    loop {
        let files: Vec<_> = files_under(dir)
            .into_iter()
            .filter(|p| p.parent().is_some_and(|d| d.ends_with("new")))
            .collect();
        if files.len() >= n || t.elapsed() > Duration::from_secs(secs) {
            return files;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Mail queued while delivery is paused is delivered after a restart; a temporary failure
/// (the maildir cannot be created) is retried and then succeeds.
#[test]
fn queued_mail_survives_a_restart_and_temporary_failures_are_retried() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let vmail = dir.path().join("vmail");
    std::fs::create_dir(&vmail).unwrap();
    let root = nix::unistd::Uid::effective().is_root();
    // Deliveries run as 2000 when smtpd is root (root itself is refused), else as ourselves.
    let (uid, gid) = if root {
        (2000, 2000)
    } else {
        (
            nix::unistd::Uid::effective().as_raw(),
            nix::unistd::Gid::effective().as_raw(),
        )
    };
    let conf = format!(
        "listen on 127.0.0.1 port PORT hostname mx.test\n\
         table users {{ foo = \"{uid}:{gid}:/var/empty\" }}\n\
         action \"local\" maildir \"{}/%{{user.username}}\" userbase <users>\n\
         match from any for domain \"bsdsx.fr\" action \"local\"\n",
        vmail.display(),
    );
    // 1. Accept with delivery paused, then stop.
    let d = Daemon::start(dir.path(), &conf, &["-P", "mda"]);
    let port = d.port;
    let r = dialogue(
        port,
        &[
            "EHLO client.example",
            "MAIL FROM:<a@client.example>",
            "RCPT TO:<foo@bsdsx.fr>",
            "DATA",
            "Subject: restart\r\n\r\nx\r\n.",
            "QUIT",
        ],
    );
    assert!(r.iter().any(|x| x.contains("Message accepted")), "{r:?}");
    drop(d);
    // 2. The delivery user cannot create its maildir: a temporary failure.
    if root {
        nix::unistd::chown(&vmail, Some(0.into()), Some(0.into())).unwrap();
    } else {
        std::fs::set_permissions(&vmail, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let _d = Daemon::start(dir.path(), &conf, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(wait_for_files(&vmail, 1, 0).is_empty(), "not delivered yet");
    let envs = files_under(&dir.path().join("spool/queue"));
    assert!(
        envs.len() >= 2,
        "message and envelope stay queued after a temporary failure: {envs:?}"
    );
    // 3. Repair: the retry (10 s later for local deliveries) delivers it.
    if root {
        nix::unistd::chown(&vmail, Some(2000.into()), Some(2000.into())).unwrap();
    } else {
        std::fs::set_permissions(&vmail, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let files = wait_for_files(&vmail, 1, 40);
    assert_eq!(files.len(), 1, "delivered after the retry");
    assert!(
        std::fs::read_to_string(&files[0])
            .unwrap()
            .contains("Subject: restart")
    );
}
