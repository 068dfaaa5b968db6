//! Local maildir mail is delivered before the reply to the final dot: when the 250 comes,
//! the file is already in `new/` (fsynced, with its directory) and nothing is queued. Mail
//! that cannot go that way (delivery paused, a failed delivery) is committed to the queue
//! as before, and the queue delivers it.

mod common;

use common::{Daemon, dialogue, files_under, vmail};
use std::path::{Path, PathBuf};

/// One message with `subject` from alice to foo@bsdsx.fr, in a session of its own.
fn send_to_foo(port: u16, subject: &str) -> Vec<String> {
    let body = format!("Subject: {subject}\r\n\r\nx\r\n.");
    dialogue(
        port,
        &[
            "EHLO client.example",
            "MAIL FROM:<alice@client.example>",
            "RCPT TO:<foo@bsdsx.fr>",
            "DATA",
            &body,
            "QUIT",
        ],
    )
}

fn config(vmail: &Path, ids: &str) -> String {
    format!(
        "listen on 127.0.0.1 port PORT hostname mx.test\n\
         table users {{ foo = \"{ids}:/var/empty\", bar = \"{ids}:/var/empty\" }}\n\
         action \"local\" maildir \"{}/%{{user.username}}\" userbase <users>\n\
         match from any for domain \"bsdsx.fr\" action \"local\"\n",
        vmail.display()
    )
}

fn new_files(maildir: &Path) -> Vec<PathBuf> {
    files_under(&maildir.join("new"))
}

#[test]
fn maildir_mail_is_delivered_before_the_reply_and_never_queued() {
    let dir = tempfile::tempdir().unwrap();
    let (vmail, ids) = vmail(dir.path());
    let d = Daemon::start(dir.path(), &config(&vmail, &ids), &[]);
    let long = format!(
        "Subject: long\r\n\r\n{}\r\n.",
        "LONGLINE LONGLINE LONGLINE LONGLINE\r\n".repeat(3_000)
    );
    let s = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    assert!(common::read_reply(&mut r).starts_with("220 "));
    let mut send = |line: &str| -> String {
        use std::io::Write;
        w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        common::read_reply(&mut r)
    };
    send("EHLO client.example");
    // 1. Two recipients, one long message: both delivered when the 250 arrives.
    assert!(send("MAIL FROM:<alice@client.example>").starts_with("250 "));
    assert!(send("RCPT TO:<foo@bsdsx.fr>").starts_with("250 "));
    assert!(send("RCPT TO:<bar@bsdsx.fr>").starts_with("250 "));
    assert!(send("DATA").starts_with("354 "));
    let reply = send(&long);
    assert!(
        reply.starts_with("250 2.0.0 ") && reply.contains("Message accepted for delivery"),
        "{reply}"
    );
    // No waiting: the files are there as the reply is.
    let foo = new_files(&vmail.join("foo"));
    let bar = new_files(&vmail.join("bar"));
    assert_eq!((foo.len(), bar.len()), (1, 1), "{foo:?} {bar:?}");
    let text = std::fs::read_to_string(&foo[0]).unwrap();
    assert!(
        text.starts_with("Return-Path: <alice@client.example>\nDelivered-To: foo@bsdsx.fr\n"),
        "{text}"
    );
    assert!(text.contains("Subject: long\n") && text.contains("LONGLINE"));
    assert!(
        files_under(&dir.path().join("spool/queue")).is_empty(),
        "nothing was queued"
    );
    // 2. A short message after it reuses the transaction's emptied directory and body
    // file: the delivered copy holds the new body only.
    assert!(send("MAIL FROM:<alice@client.example>").starts_with("250 "));
    assert!(send("RCPT TO:<foo@bsdsx.fr>").starts_with("250 "));
    assert!(send("DATA").starts_with("354 "));
    assert!(send("Subject: short\r\n\r\nshort body\r\n.").starts_with("250 2.0.0 "));
    let foo = new_files(&vmail.join("foo"));
    assert_eq!(foo.len(), 2);
    let short: Vec<String> = foo
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .filter(|t| t.contains("Subject: short"))
        .collect();
    assert_eq!(short.len(), 1);
    assert!(short[0].ends_with("\nshort body\n"), "{}", short[0]);
    assert!(
        !short[0].contains("LONGLINE"),
        "no byte of the earlier body"
    );
    // 3. A small message for two: both copies made from memory, the spool left alone.
    let spool_before = files_under(&dir.path().join("spool"));
    assert!(send("MAIL FROM:<alice@client.example>").starts_with("250 "));
    assert!(send("RCPT TO:<foo@bsdsx.fr>").starts_with("250 "));
    assert!(send("RCPT TO:<bar@bsdsx.fr>").starts_with("250 "));
    assert!(send("DATA").starts_with("354 "));
    assert!(send("Subject: both\r\n\r\nfor two\r\n.").starts_with("250 2.0.0 "));
    for user in ["foo", "bar"] {
        let both = new_files(&vmail.join(user))
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .filter(|t| t.contains("Subject: both") && t.ends_with("\nfor two\n"))
            .count();
        assert_eq!(both, 1, "{user}");
    }
    assert_eq!(files_under(&dir.path().join("spool")), spool_before);
    assert!(send("QUIT").starts_with("221 "));
    // The spare directories hold nothing but emptied body files.
    for f in files_under(&dir.path().join("spool/spare")) {
        assert_eq!(f.file_name().unwrap(), "message", "{f:?}");
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 0, "{f:?}");
    }
    assert!(files_under(&dir.path().join("spool/incoming")).is_empty());
    // The log: the message's lines first, then one delivery line per recipient.
    // The log is read from the daemon's standard error as it comes: wait (bounded) for the
    // session's last line.
    assert!(
        d.wait_log("smtp disconnected reason=quit", 10),
        "{}",
        d.log()
    );
    let log = d.log();
    let lines: Vec<&str> = log.lines().collect();
    let first_message = lines
        .iter()
        .position(|l| l.contains(" smtp message msgid="))
        .expect("smtp message line");
    let deliveries: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(" mda delivery evpid="))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(deliveries.len(), 5, "{log}");
    assert!(deliveries[0] > first_message, "{log}");
    for i in &deliveries {
        assert!(
            lines[*i].contains("from=<alice@client.example>")
                && lines[*i].contains("delay=0s result=Ok stat=Delivered"),
            "{}",
            lines[*i]
        );
    }
    for user in ["foo", "bar"] {
        assert!(
            lines[deliveries[0]..deliveries[1] + 1]
                .iter()
                .any(|l| l.contains(&format!("to=<{user}@bsdsx.fr>"))),
            "{log}"
        );
    }
}

#[test]
fn paused_local_delivery_commits_to_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (vmail, ids) = vmail(dir.path());
    let d = Daemon::start(dir.path(), &config(&vmail, &ids), &["-P", "mda"]);
    let replies = send_to_foo(d.port, "paused");
    assert!(replies[5].starts_with("250 2.0.0 "), "{replies:?}");
    let queued = files_under(&dir.path().join("spool/queue"));
    assert_eq!(queued.len(), 2, "message and envelope queued: {queued:?}");
    assert!(new_files(&vmail.join("foo")).is_empty(), "not delivered");
    assert!(!d.log().contains("mda delivery"), "{}", d.log());
}

#[test]
fn a_failed_delivery_is_committed_and_retried_from_the_queue() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (vmail, ids) = vmail(dir.path());
    // The delivery user cannot create its maildir: a temporary failure.
    if nix::unistd::Uid::effective().is_root() {
        nix::unistd::chown(&vmail, Some(0.into()), Some(0.into())).unwrap();
    }
    std::fs::set_permissions(&vmail, std::fs::Permissions::from_mode(0o555)).unwrap();
    let d = Daemon::start(dir.path(), &config(&vmail, &ids), &[]);
    let replies = send_to_foo(d.port, "retried");
    assert!(replies[5].starts_with("250 2.0.0 "), "{replies:?}");
    let queued = files_under(&dir.path().join("spool/queue"));
    assert!(queued.len() >= 2, "message and envelope queued: {queued:?}");
    // The queue's own attempt is the one logged.
    assert!(d.wait_log("result=TempFail", 10), "{}", d.log());
    assert!(!d.log().contains("result=Ok"), "{}", d.log());
    // Repaired, the queue's retry (10 s later for local deliveries) delivers it once.
    if nix::unistd::Uid::effective().is_root() {
        nix::unistd::chown(&vmail, Some(2000.into()), Some(2000.into())).unwrap();
    }
    std::fs::set_permissions(&vmail, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(d.wait_log("result=Ok stat=Delivered", 40), "{}", d.log());
    let files = new_files(&vmail.join("foo"));
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        std::fs::read_to_string(&files[0])
            .unwrap()
            .contains("Subject: retried")
    );
}

#[test]
fn recipients_delivered_before_the_reply_are_not_queued_again() {
    let dir = tempfile::tempdir().unwrap();
    let (vmail, ids) = vmail(dir.path());
    // bar's maildir cannot be made (a file is in the way): a temporary failure for bar only.
    std::fs::write(vmail.join("bar"), "in the way").unwrap();
    let d = Daemon::start(dir.path(), &config(&vmail, &ids), &[]);
    let replies = dialogue(
        d.port,
        &[
            "EHLO client.example",
            "MAIL FROM:<alice@client.example>",
            "RCPT TO:<foo@bsdsx.fr>",
            "RCPT TO:<bar@bsdsx.fr>",
            "DATA",
            "Subject: half\r\n\r\nx\r\n.",
        ],
    );
    assert!(replies[6].starts_with("250 2.0.0 "), "{replies:?}");
    // foo's copy is there with the reply; only bar's envelope is queued, with the body
    // written from memory at the commit.
    assert_eq!(new_files(&vmail.join("foo")).len(), 1);
    let queued = files_under(&dir.path().join("spool/queue"));
    assert_eq!(queued.len(), 2, "{queued:?}");
    let body = queued
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == "message"))
        .expect("the queued body");
    let stored = std::fs::read_to_string(body).unwrap();
    assert!(
        stored.contains("\nSubject: half\n") && stored.ends_with("\n\nx\n"),
        "{stored:?}"
    );
    let envelope = queued
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n != "message"))
        .expect("the queued envelope");
    let text = std::fs::read_to_string(envelope).unwrap();
    assert!(
        text.contains("bar@bsdsx.fr") && !text.contains("foo@bsdsx.fr"),
        "{text}"
    );
    // The queue's attempt for bar is logged; foo is delivered once.
    assert!(d.wait_log("result=TempFail", 10), "{}", d.log());
    let log = d.log();
    assert!(
        log.lines().any(|l| l.contains("mda delivery")
            && l.contains("to=<bar@bsdsx.fr>")
            && l.contains("result=TempFail")),
        "{log}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("mda delivery") && l.contains("to=<foo@bsdsx.fr>"))
            .count(),
        1,
        "{log}"
    );
}
