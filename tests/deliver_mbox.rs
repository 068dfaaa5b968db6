//! mbox deliveries through the delivery agent, into a temporary mail spool
//! (standing in for /var/mail), and alias `/path` file destinations.

mod deliver_support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use deliver_support::*;
use smtpd::deliver::mbox::ctime;
use smtpd::deliver::{Account, DeliveryResult, Method, Status};

helper_entry!();

/// A spool like /var/mail: owned by whoever runs the tests, not writable
/// by the recipient, but enterable.
fn spool() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    open_up(dir.path());
    dir
}

#[test]
fn appends_from_line_headers_and_escaped_message() {
    let spool = spool();
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let req = request(
        Method::Mbox,
        recipient("vmail", home.path()),
        envelope("alice@client.example", "foo@bsdsx.fr", "foo@bsdsx.fr"),
        &msg,
    );
    let result = agent().with_mbox_spool(spool.path()).deliver_blocking(req);
    assert_eq!(result, DeliveryResult::delivered());

    let mailbox = spool.path().join("vmail");
    let text = fs::read_to_string(&mailbox).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    let dates: Vec<String> = (before..before + 3).map(ctime).collect();
    assert!(
        dates
            .iter()
            .any(|d| first == format!("From alice@client.example {d}")),
        "{first}"
    );
    // mail.local escapes `From ` only at the start of a paragraph: the
    // body's mid-paragraph "From the body" stays as it is.
    assert_eq!(
        rest,
        format!("Return-Path: <alice@client.example>\nDelivered-To: foo@bsdsx.fr\n{MESSAGE}\n")
    );
    assert_eq!(fs::metadata(&mailbox).unwrap().mode() & 0o777, 0o600);
    assert!(!spool.path().join("vmail.lock").exists());

    // A second message is appended after an empty line; <> is MAILER-DAEMON.
    let msg = queued("Subject: second\n\nFrom me\n");
    let req = request(
        Method::Mbox,
        recipient("vmail", home.path()),
        envelope("", "foo@bsdsx.fr", "foo@bsdsx.fr"),
        &msg,
    );
    assert_eq!(
        agent()
            .with_mbox_spool(spool.path())
            .deliver_blocking(req)
            .status,
        Status::Ok
    );
    let text = fs::read_to_string(&mailbox).unwrap();
    let second = text.find("\n\nFrom MAILER-DAEMON ").expect("second entry");
    let entry = &text[second + 2..];
    let (_, rest) = entry.split_once('\n').unwrap();
    assert_eq!(
        rest,
        "Delivered-To: foo@bsdsx.fr\nSubject: second\n\n>From me\n\n"
    );
}

#[test]
fn mailbox_belongs_to_the_recipient() {
    if skip_unless_root("checking that the mailbox belongs to uid 2000") {
        return;
    }
    let spool = spool();
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let req = request(
        Method::Mbox,
        recipient("vmail", home.path()),
        envelope("a@b.test", "foo@x.test", "foo@x.test"),
        &msg,
    );
    assert_eq!(
        agent()
            .with_mbox_spool(spool.path())
            .deliver_blocking(req)
            .status,
        Status::Ok
    );
    let mailbox = spool.path().join("vmail");
    assert_eq!(owner(&mailbox), (TEST_UID, TEST_UID));
    // The spool stays root's; the recipient could not have made the lock.
    assert_eq!(
        fs::metadata(spool.path()).unwrap().permissions().mode() & 0o777,
        0o755
    );
    println!("mailbox owned by {:?}", owner(&mailbox));
}

#[test]
fn sender_text_is_only_data() {
    // The CVE-2020-7247 exploit sender; mbox delivery uses no shell at all.
    let spool = spool();
    let home = recipient_dir();
    let sender = "<;for i in 0 1 2 3 4 5 6 7 8 9 a b c d;do read r;done;sh;exit 0;>";
    let msg = queued(MESSAGE);
    let req = request(
        Method::Mbox,
        recipient("vmail", home.path()),
        envelope(sender, "root@x.test", "root@x.test"),
        &msg,
    );
    assert_eq!(
        agent()
            .with_mbox_spool(spool.path())
            .deliver_blocking(req)
            .status,
        Status::Ok
    );
    let text = fs::read_to_string(spool.path().join("vmail")).unwrap();
    assert!(text.starts_with(&format!("From {sender}@ ")), "{text}");
}

#[test]
fn linked_mailbox_is_refused() {
    let spool = spool();
    let home = recipient_dir();
    let elsewhere = spool.path().join("elsewhere");
    fs::write(&elsewhere, "").unwrap();
    fs::hard_link(&elsewhere, spool.path().join("vmail")).unwrap();
    let msg = queued(MESSAGE);
    let req = request(
        Method::Mbox,
        recipient("vmail", home.path()),
        envelope("a@b.test", "foo@x.test", "foo@x.test"),
        &msg,
    );
    let result = agent().with_mbox_spool(spool.path()).deliver_blocking(req);
    assert_eq!(result.status, Status::TempFail);
    let expected = format!(
        "Error (system resource problem: \"mail.local: {}/vmail: linked or special file\")",
        spool.path().display()
    );
    assert_eq!(result.stat, expected);
    assert_eq!(fs::read(&elsewhere).unwrap(), b"");
}

#[test]
fn user_names_cannot_leave_the_spool() {
    let spool = spool();
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let req = request(
        Method::Mbox,
        recipient("../escape", home.path()),
        envelope("a@b.test", "foo@x.test", "foo@x.test"),
        &msg,
    );
    let result = agent().with_mbox_spool(spool.path()).deliver_blocking(req);
    assert_eq!(result.status, Status::PermFail);
    assert_eq!(
        result.stat,
        "Error (user unknown: \"mail.local: unknown name: ../escape\")"
    );
}

#[test]
fn root_mailbox_is_allowed() {
    if skip_unless_root("delivering to root's mailbox") {
        return;
    }
    let spool = spool();
    let msg = queued(MESSAGE);
    let root = Account {
        name: "root".into(),
        uid: 0,
        gid: 0,
        home: "/root".into(),
    };
    let req = request(
        Method::Mbox,
        root,
        envelope("a@b.test", "root@x.test", "root@x.test"),
        &msg,
    );
    assert_eq!(
        agent()
            .with_mbox_spool(spool.path())
            .deliver_blocking(req)
            .status,
        Status::Ok
    );
    assert_eq!(owner(&spool.path().join("root")), (0, 0));
}

#[test]
fn alias_file_destination_escapes_every_from_line() {
    let home = recipient_dir();
    let target = home.path().join("archive.mbox");
    let msg = queued("Subject: s\n\nbody\nFrom mid-paragraph\n");
    let method = Method::File {
        path: target.display().to_string(),
    };
    let req = request(
        method,
        recipient("foo", home.path()),
        envelope("a@b.test", "list@x.test", "foo@x.test"),
        &msg,
    );
    assert_eq!(agent().deliver_blocking(req).status, Status::Ok);
    let text = fs::read_to_string(&target).unwrap();
    let rest = text.split_once('\n').unwrap().1;
    assert_eq!(
        rest,
        "Return-Path: <a@b.test>\nDelivered-To: list@x.test\nSubject: s\n\nbody\n>From mid-paragraph\n\n"
    );
    assert!(text.starts_with("From a@b.test "));
    if is_root() {
        assert_eq!(owner(&target), (TEST_UID, TEST_UID));
    }
}
