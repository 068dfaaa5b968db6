//! The local enqueue socket and `sendmail` against the built daemon: a message piped into
//! sendmail is logged as `address=local host=NAME`, is authenticated (`ESMTPA`), matches
//! `from socket`, gets the `From:`, `Date:` and `Message-ID:` a bare message lacks, and lands
//! in a maildir; `-t` takes recipients from the headers and drops `Bcc:`; a refused recipient
//! is reported as OpenSMTPD's `command failed` with status 70; no daemon gives status 75.

mod local_support;

use std::io::Write;
use std::process::{Command, Stdio};

use local_support::*;

fn sendmail(spool: &std::path::Path, args: &[&str], message: &str) -> (i32, String) {
    // dead.letter goes to $HOME: the test's directory, beside the spool.
    let out = run_with_input(
        Command::new(env!("CARGO_BIN_EXE_sendmail"))
            .env("HOME", spool.parent().unwrap())
            .arg("--spool")
            .arg(spool)
            .args(args),
        message.as_bytes(),
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn login() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name
}

#[test]
fn sendmail_submits_through_the_socket_into_a_maildir() {
    let dir = tempfile::tempdir().unwrap();
    let vmail = vmail(dir.path());
    let port = free_port();
    // Mail for remote.test is accepted only from the socket.
    let conf = format!(
        "table users {{ bob = \"2000:2000:/var/empty\", carol = \"2000:2000:/var/empty\", dave = \"2000:2000:/var/empty\" }}\n\
         listen on 127.0.0.1 port PORT hostname mx.test\n\
         action \"mb\" maildir \"{}/%{{user.username}}\" userbase <users>\n\
         match from socket auth for domain \"remote.test\" action \"mb\"\n\
         match from local for local action \"mb\"\n",
        vmail.display()
    );
    let d = start_with_socket(dir.path(), &conf, port);

    let (rc, err) = sendmail(
        &d.spool(),
        &["-oi", "bob@remote.test"],
        "Subject: via sendmail\n\nfirst line\n.leading dot\n",
    );
    assert_eq!((rc, err.as_str()), (0, ""));
    let text = delivered(&vmail.join("bob"));
    let log = d.wait_log("smtp disconnected");
    let host = log
        .split("smtp connected address=local host=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no local connection in the log: {log}"))
        .to_string();
    println!("log: smtp connected address=local host={host}");
    let me = login();
    assert!(
        text.contains(&format!(
            "Received: from localhost ({host} [local])\n\tby {host} (OpenSMTPD) with ESMTPA id "
        )),
        "{text}"
    );
    assert!(text.contains("\n\tfor <bob@remote.test>;\n"), "{text}");
    assert!(
        text.contains("\nFrom: ") && text.contains(&format!("<{me}@{host}>\n")),
        "{text}"
    );
    assert!(
        text.contains("\nDate: ") && text.contains("\nMessage-ID: <"),
        "{text}"
    );
    assert!(
        text.contains("\nSubject: via sendmail\n")
            && text.ends_with("\n\nfirst line\n.leading dot\n"),
        "{text}"
    );
    assert!(
        log.contains("smtp envelope evpid=")
            && log.contains(&format!("from=<{me}@{host}> to=<bob@remote.test>")),
        "{log}"
    );
    println!("delivered:\n{text}");

    // `from socket` is false over TCP: the same recipient is refused there.
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut r = std::io::BufReader::new(tcp.try_clone().unwrap());
    let mut w = tcp;
    let mut line = String::new();
    let mut replies = Vec::new();
    for cmd in [
        "",
        "EHLO c.test",
        "MAIL FROM:<a@c.test>",
        "RCPT TO:<bob@remote.test>",
        "QUIT",
    ] {
        if !cmd.is_empty() {
            writeln!(w, "{cmd}\r").unwrap();
        }
        loop {
            line.clear();
            std::io::BufRead::read_line(&mut r, &mut line).unwrap();
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        replies.push(line.trim_end().to_string());
    }
    assert_eq!(replies[3], "550 Invalid recipient: <bob@remote.test>");

    // -t: recipients from To/Cc/Bcc, Bcc removed, -f and -F.
    let (rc, err) = sendmail(
        &d.spool(),
        &["-t", "-f", "list@remote.test", "-F", "The List"],
        "To: Carol <carol@remote.test>\nBcc: dave@remote.test\nSubject: t\n\nbody\n",
    );
    assert_eq!((rc, err.as_str()), (0, ""));
    for user in ["carol", "dave"] {
        let text = delivered(&vmail.join(user));
        assert!(
            text.contains("\nFrom: The List <list@remote.test>\n"),
            "{text}"
        );
        assert!(text.contains("\nTo: Carol <carol@remote.test>\n"), "{text}");
        // Only Delivered-To names the Bcc recipient.
        let expected = usize::from(user == "dave");
        assert!(
            !text.contains("Bcc") && text.matches("dave@").count() == expected,
            "{text}"
        );
        assert!(text.contains("Return-Path: <list@remote.test>\n"), "{text}");
    }

    // A refused recipient: OpenSMTPD's message and status, and the message kept in
    // $HOME/dead.letter (appended: an earlier dead letter stays).
    let dead = d.spool().parent().unwrap().join("dead.letter");
    std::fs::write(&dead, "an earlier dead letter\n").unwrap();
    let (rc, err) = sendmail(&d.spool(), &["x@elsewhere.test"], "Subject: no\n\nx\n");
    println!("refused: rc={rc} {}", err.trim_end());
    assert_eq!(rc, 70);
    assert_eq!(
        err,
        format!(
            "sendmail: command failed: 550 Invalid recipient: <x@elsewhere.test>\n\
             sendmail: the message was saved in {}\n",
            dead.display()
        )
    );
    let kept = std::fs::read_to_string(&dead).unwrap();
    let from = format!("From: {}", login());
    assert!(
        kept.starts_with("an earlier dead letter\nFrom: ") && kept.contains(&from),
        "{kept}"
    );
    assert!(kept.ends_with("\nSubject: no\n\nx\n\n"), "{kept}");
}

#[test]
fn sendmail_without_a_daemon_is_a_temporary_failure() {
    // No daemon and no spool at all: the message cannot be kept either (OpenSMTPD's words
    // and status).
    let dir = tempfile::tempdir().unwrap();
    let (rc, err) = sendmail(dir.path(), &["bob"], "Subject: x\n\nx\n");
    assert_eq!(rc, 69, "{err}");
    assert!(
        err.starts_with(&format!(
            "sendmail: cannot create temporary file {}/offline/",
            dir.path().display()
        )) && err.ends_with(": No such file or directory\n"),
        "{err}"
    );
}

#[test]
fn socket_listener_options_tag_and_mask_src() {
    let dir = tempfile::tempdir().unwrap();
    let vmail = vmail(dir.path());
    let port = free_port();
    // Only mail tagged by the socket listener is accepted for remote.test.
    let conf = format!(
        "table users {{ bob = \"2000:2000:/var/empty\" }}\n\
         listen on socket tag viasock mask-src\n\
         listen on 127.0.0.1 port PORT\n\
         action \"mb\" maildir \"{}/%{{user.username}}\" userbase <users>\n\
         match tag viasock from socket for domain \"remote.test\" action \"mb\"\n",
        vmail.display()
    );
    let d = start_with_socket(dir.path(), &conf, port);
    let (rc, err) = sendmail(&d.spool(), &["bob@remote.test"], "Subject: tagged\n\nx\n");
    assert_eq!((rc, err.as_str()), (0, ""));
    let text = delivered(&vmail.join("bob"));
    println!("delivered:\n{text}");
    // mask-src: the `from ...` part of Received is left out.
    assert!(text.contains("\nReceived: \n\tby "), "{text}");
    assert!(!text.contains("[local]"), "{text}");
}

#[test]
fn socket_listener_filters_apply_to_sendmail() {
    let dir = tempfile::tempdir().unwrap();
    let vmail = vmail(dir.path());
    let port = free_port();
    let conf = format!(
        "table users {{ bob = \"2000:2000:/var/empty\" }}\n\
         filter \"nospam\" phase mail-from match mail-from regex \"^spam@\" reject \"550 no spam here\"\n\
         listen on socket filter \"nospam\"\n\
         listen on 127.0.0.1 port PORT\n\
         action \"mb\" maildir \"{}/%{{user.username}}\" userbase <users>\n\
         match from socket for domain \"remote.test\" action \"mb\"\n",
        vmail.display()
    );
    let d = start_with_socket(dir.path(), &conf, port);
    let (rc, err) = sendmail(
        &d.spool(),
        &["-f", "spam@x.test", "bob@remote.test"],
        "Subject: s\n\nx\n",
    );
    println!("filtered: rc={rc} {}", err.trim_end());
    let dead = d.spool().parent().unwrap().join("dead.letter");
    assert_eq!(
        (rc, err),
        (
            70,
            format!(
                "sendmail: command failed: 550 no spam here\n\
                 sendmail: the message was saved in {}\n",
                dead.display()
            )
        )
    );
    let kept = std::fs::read_to_string(&dead).unwrap();
    assert!(kept.starts_with("From: <spam@x.test>\nDate: "), "{kept}");
    let (rc, err) = sendmail(
        &d.spool(),
        &["-f", "ham@x.test", "bob@remote.test"],
        "Subject: s\n\nx\n",
    );
    assert_eq!((rc, err.as_str()), (0, ""));
    assert!(delivered(&vmail.join("bob")).contains("Return-Path: <ham@x.test>"));
}

#[test]
fn sendmail_works_while_smtp_is_paused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("smtpd.conf"),
        "listen on socket\naction \"out\" relay\nmatch from socket for any action \"out\"\n",
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("smtpd.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_smtpd"))
        .args(["-d", "-P", "smtp", "-P", "mta", "-f"])
        .arg(dir.path().join("smtpd.conf"))
        .arg("--spool")
        .arg(dir.path().join("spool"))
        .arg("--resolv-conf")
        .arg("/nonexistent")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let socket = smtpd::smtp::listen::socket_path(&dir.path().join("spool"));
    let t = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err()
        && t.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (rc, err) = sendmail(&dir.path().join("spool"), &["someone@far.test"], "x\n");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((rc, err.as_str()), (0, ""));
}

/// While the daemon is down, sendmail leaves the message in `offline/` and exits 75; the
/// next start submits every such message as the user who wrote it and removes its file.
/// A symbolic link planted there is not followed.
#[test]
fn offline_messages_are_submitted_at_the_next_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let vmail = vmail(dir.path());
    let spool = dir.path().join("spool");
    // The spool a previous run left.
    smtpd::queue::layout::Layout::new(&spool).create().unwrap();
    let offline = spool.join("offline");
    let mode = std::fs::metadata(&offline).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1733);

    let (rc, err) = sendmail(
        &spool,
        &["-f", "alice@elsewhere.test", "bob@remote.test"],
        "Subject: while down\n\nqueued offline\n",
    );
    assert_eq!((rc, err.as_str()), (75, ""));
    let files: Vec<_> = std::fs::read_dir(&offline)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let saved = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(
        saved,
        "-f|alice@elsewhere.test|bob@remote.test\nSubject: while down\n\nqueued offline\n"
    );
    // An argument with `|` cannot be saved.
    let (rc, err) = sendmail(&spool, &["a|b@remote.test"], "x\n");
    assert_eq!(rc, 70);
    assert_eq!(
        err,
        "sendmail: a|b@remote.test contains illegal character\n"
    );

    // As root: a message another user (nobody) left goes in as that user.
    let root = nix::unistd::Uid::effective().is_root();
    if root {
        let p = offline.join("1700000000.nobodyfile");
        std::fs::write(&p, "bob@remote.test\nSubject: from nobody\n\nhello\n").unwrap();
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::os::unix::fs::symlink("/etc/passwd", offline.join("1700000000.link")).unwrap();

    let port = free_port();
    let conf = format!(
        "table users {{ bob = \"2000:2000:/var/empty\" }}\n\
         listen on 127.0.0.1 port PORT hostname mx.test\n\
         action \"mb\" maildir \"{}/%{{user.username}}\" userbase <users>\n\
         match from socket auth for domain \"remote.test\" action \"mb\"\n",
        vmail.display()
    );
    let d = start_with_socket(dir.path(), &conf, port);
    let want = if root { 2 } else { 1 };
    let log = d.wait_log("info: offline: ");
    assert!(
        log.contains(&format!(
            "info: offline: {want} message(s) submitted, 1 kept"
        )),
        "{log}"
    );
    assert!(log.contains("1700000000.link: "), "{log}");
    let new = vmail.join("bob/new");
    let t = std::time::Instant::now();
    let texts = loop {
        let texts: Vec<String> = std::fs::read_dir(&new)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect();
        if texts.len() >= want || t.elapsed() > std::time::Duration::from_secs(15) {
            break texts;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(texts.len(), want, "{texts:?}\n{log}");
    let alice = texts
        .iter()
        .find(|t| t.contains("Subject: while down"))
        .expect("the message left by sendmail");
    assert!(
        alice.starts_with("Return-Path: <alice@elsewhere.test>\n"),
        "{alice}"
    );
    assert!(alice.contains("\nqueued offline\n"), "{alice}");
    if root {
        let nobody = texts
            .iter()
            .find(|t| t.contains("Subject: from nobody"))
            .expect("nobody's message");
        // Submitted as its owner: the default sender is nobody's address.
        assert!(
            nobody.starts_with(&format!("Return-Path: <nobody@{}>\n", hostname())),
            "{nobody}"
        );
        assert!(
            nobody.contains(&format!("From: nobody <nobody@{}>", hostname())),
            "{nobody}"
        );
    }
    // Only the link is left.
    let left: Vec<_> = std::fs::read_dir(&offline)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("1700000000.link")]);
}

/// Called `mailq`, or with `-bp`, sendmail lists the queue as `smtpctl show queue` does.
#[test]
fn mailq_and_bp_list_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let closed = free_port();
    let port = free_port();
    // Mail for remote.test waits in the queue: its relay does not answer.
    let conf = format!(
        "listen on 127.0.0.1 port PORT hostname mx.test\n\
         action \"out\" relay host \"smtp://127.0.0.1:{closed}\"\n\
         match from socket auth for domain \"remote.test\" action \"out\"\n"
    );
    let d = start_with_socket(dir.path(), &conf, port);
    let (rc, err) = sendmail(&d.spool(), &["carol@remote.test"], "Subject: q\n\nx\n");
    assert_eq!((rc, err.as_str()), (0, ""));
    d.wait_log("mta delivery");
    let list = |program: &std::path::Path, args: &[&str]| {
        let out = Command::new(program)
            .arg("--spool")
            .arg(d.spool())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let queue = list(
        std::path::Path::new(env!("CARGO_BIN_EXE_sendmail")),
        &["-bp"],
    );
    let line = queue
        .lines()
        .next()
        .unwrap_or_else(|| panic!("empty: {queue}"));
    let fields: Vec<&str> = line.split('|').collect();
    assert_eq!(fields.len(), 14, "{line}");
    assert_eq!(fields[5], "carol@remote.test", "{line}");
    // The same through a link named mailq.
    let link = dir.path().join("mailq");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sendmail"), &link).unwrap();
    assert_eq!(list(&link, &[]), queue);
}
