//! A local delivery that fails for good is reported to its sender: the daemon queues a
//! delivery status notification with the null sender, routes it like locally submitted
//! mail, and delivers it into the sender's own maildir. Null senders get no report.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::Daemon;

fn start(dir: &Path, conf: &str) -> (Daemon, u16) {
    let d = Daemon::start(dir, conf, &[]);
    let port = d.port;
    (d, port)
}

/// Send one message; panics unless it is accepted.
fn send(port: u16, from: &str, to: &str, body: &str) {
    send_to(port, from, &[to], body)
}

/// Send one message to several recipients; panics unless it is accepted.
fn send_to(port: u16, from: &str, to: &[&str], body: &str) {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut read = || {
        let mut all = String::new();
        for _ in 0..50 {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap_or(0) == 0 {
                break;
            }
            all.push_str(&l);
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                break;
            }
        }
        all
    };
    read();
    let mut dialogue = vec![
        ("EHLO client.example".to_string(), "250"),
        (format!("MAIL FROM:<{from}>"), "250"),
    ];
    for t in to {
        // A recipient may carry ESMTP parameters after a space: `rcpt NOTIFY=NEVER`.
        let (addr, params) = t.split_once(' ').unwrap_or((t, ""));
        let params = if params.is_empty() {
            String::new()
        } else {
            format!(" {params}")
        };
        dialogue.push((format!("RCPT TO:<{addr}>{params}"), "250"));
    }
    dialogue.extend([
        ("DATA".to_string(), "354"),
        (format!("{body}\r\n."), "250"),
        ("QUIT".to_string(), "221"),
    ]);
    for (line, want) in dialogue {
        w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let reply = read();
        assert!(reply.starts_with(want), "{line} -> {reply}");
    }
}

fn maildir_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("new"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let vmail = dir.path().join("vmail");
    std::fs::create_dir(&vmail).unwrap();
    if nix::unistd::Uid::effective().is_root() {
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
    (dir, vmail)
}

fn conf(vmail: &Path) -> String {
    format!(
        "listen on 127.0.0.1 port PORT hostname mx.test\n\
         table users {{ alice = \"2000:2000:/var/empty\", broken = \"2000:2000:/var/empty\", cracked = \"2000:2000:/var/empty\" }}\n\
         action \"fail\" mda \"exit 67\" userbase <users>\n\
         action \"local_mail\" maildir \"{}/%{{rcpt}}\" userbase <users>\n\
         match from any for rcpt-to \"broken@mx.test\" action \"fail\"\n\
         match from any for rcpt-to \"cracked@mx.test\" action \"fail\"\n\
         match from any for domain \"mx.test\" action \"local_mail\"\n",
        vmail.display()
    )
}

#[test]
fn permanent_failure_is_reported_into_the_senders_maildir() {
    let (dir, vmail) = setup();
    let (d, port) = start(dir.path(), &conf(&vmail));
    send(
        port,
        "alice@mx.test",
        "broken@mx.test",
        "Subject: doomed\r\nFrom: alice@mx.test\r\n\r\nThis will not arrive.",
    );
    let inbox = vmail.join("alice@mx.test");
    wait_for("the report in alice's maildir", || {
        maildir_files(&inbox).len() == 1
    });
    let mut text = String::new();
    std::fs::File::open(&maildir_files(&inbox)[0])
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    println!("{text}");
    // Null sender: no Return-Path; delivered to the original sender. The report speaks
    // with the server's own name (not the listener's), as OpenSMTPD's bounces do.
    let head = "Delivered-To: alice@mx.test\nReceived: from ";
    assert!(text.starts_with(head), "{text}");
    let name = text[head.len()..].split(' ').next().unwrap().to_string();
    assert!(
        text.contains(&format!(
            "Received: from {name} ({name} [local])\n\tby {name} (OpenSMTPD) with ESMTPA id "
        )),
        "{text}"
    );
    let from = format!("From: Mailer Daemon <MAILER-DAEMON@{name}>\n");
    let reporting = format!(
        "Content-Type: message/delivery-status\n\nReporting-MTA: dns; {name}\n\nFinal-Recipient: rfc822; broken@mx.test\nAction: failed\nStatus: 5.3.0\n"
    );
    for part in [
        "Subject: Delivery status notification: failed\n",
        from.as_str(),
        reporting.as_str(),
        "To: alice@mx.test\n",
        "MIME-Version: 1.0\n",
        "Content-Type: multipart/mixed;boundary=\"",
        "This is the MAILER-DAEMON, please DO NOT REPLY to this email.\n",
        "    An error has occurred while attempting to deliver a message for\n    the following list of recipients:\n\nbroken@mx.test: ",
        "Content-Type: text/rfc822-headers\n\n",
        "Subject: doomed\n",
        "This will not arrive.\n",
    ] {
        assert!(text.contains(part), "missing {part:?} in\n{text}");
    }
    let log = d.log();
    assert!(
        log.contains("to=<broken@mx.test> rcpt=<broken@mx.test> user=broken")
            && log.contains("result=PermFail"),
        "{log}"
    );
    assert!(
        log.contains("from=<> to=<alice@mx.test> rcpt=<alice@mx.test> user=alice")
            && log.contains("result=Ok stat=Delivered"),
        "{log}"
    );
    // Both messages leave the queue.
    wait_for("an empty queue", || {
        std::fs::read_dir(dir.path().join("spool/queue"))
            .map(|d| {
                d.flatten().all(|b| {
                    std::fs::read_dir(b.path())
                        .map(|mut m| m.next().is_none())
                        .unwrap_or(true)
                })
            })
            .unwrap_or(true)
    });
}

#[test]
fn null_sender_failure_is_not_reported() {
    let (dir, vmail) = setup();
    let (d, port) = start(dir.path(), &conf(&vmail));
    send(port, "", "broken@mx.test", "Subject: x\r\n\r\nbody");
    wait_for("the permanent failure", || {
        d.log().contains("result=PermFail")
    });
    wait_for("the refusal line", || {
        d.log().contains("warn: queue: no return path!")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(maildir_files(&vmail.join("alice@mx.test")).is_empty());
    assert!(!d.log().contains("MAILER-DAEMON"));
}

#[test]
fn delay_warning_then_expiry_are_reported() {
    let (dir, vmail) = setup();
    let conf = format!(
        "queue ttl 2s\n\
         bounce warn-interval 1s\n\
         listen on 127.0.0.1 port PORT hostname mx.test\n\
         table users {{ alice = \"2000:2000:/var/empty\", slow = \"2000:2000:/var/empty\" }}\n\
         action \"later\" mda \"exit 75\" userbase <users>\n\
         action \"local_mail\" maildir \"{}/%{{rcpt}}\" userbase <users>\n\
         match from any for rcpt-to \"slow@mx.test\" action \"later\"\n\
         match from any for domain \"mx.test\" action \"local_mail\"\n",
        vmail.display()
    );
    let (d, port) = start(dir.path(), &conf);
    send(
        port,
        "alice@mx.test",
        "slow@mx.test",
        "Subject: patience\r\n\r\nwaiting.",
    );
    let inbox = vmail.join("alice@mx.test");
    wait_for("two reports", || maildir_files(&inbox).len() == 2);
    let texts: Vec<String> = maildir_files(&inbox)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let delayed = texts
        .iter()
        .find(|t| t.contains("Subject: Delivery status notification: delayed\n"))
        .expect("a delayed notice");
    assert!(
        delayed.contains(
            "    A message is delayed for more than 1 second for the following\n    list of recipients:\n\nslow@mx.test: "
        ),
        "{delayed}"
    );
    assert!(delayed.contains("    The message is kept in the queue for up to 7 days.\n"));
    assert!(delayed.contains("Action: delayed\n"));
    let failed = texts
        .iter()
        .find(|t| t.contains("Subject: Delivery status notification: failed\n"))
        .expect("a failure report at expiry");
    assert!(
        failed.contains("slow@mx.test: Envelope expired\n"),
        "{failed}"
    );
    assert!(
        failed.contains("Action: failed\nStatus: 5.4.7\n"),
        "{failed}"
    );
    let log = d.log();
    assert!(
        log.contains("delivery: Expire for ")
            && log.contains("from=<alice@mx.test>, to=<slow@mx.test>, rcpt=<->, delay=")
            && log.contains("stat=Envelope expired"),
        "{log}"
    );
}

#[test]
fn failures_of_one_message_share_one_report() {
    let (dir, vmail) = setup();
    let (_d, port) = start(dir.path(), &conf(&vmail));
    send_to(
        port,
        "alice@mx.test",
        &["broken@mx.test", "cracked@mx.test"],
        "Subject: twice\r\n\r\nbody",
    );
    let inbox = vmail.join("alice@mx.test");
    wait_for("the report", || maildir_files(&inbox).len() == 1);
    // No second report follows.
    std::thread::sleep(Duration::from_millis(1500));
    let files = maildir_files(&inbox);
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("broken@mx.test: ") || l.starts_with("cracked@mx.test: "))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(text.contains("Final-Recipient: rfc822; broken@mx.test\nAction: failed\n"));
    assert!(text.contains("Final-Recipient: rfc822; cracked@mx.test\nAction: failed\n"));
}

#[test]
fn a_report_no_rule_accepts_is_logged_and_dropped() {
    let (dir, vmail) = setup();
    // No rule matches the remote sender's domain for local mail: the report is refused
    // as an RCPT from the local socket would be, and the failure is logged.
    let (d, port) = start(dir.path(), &conf(&vmail));
    send(
        port,
        "bob@remote.test",
        "broken@mx.test",
        "Subject: x\r\n\r\nbody",
    );
    // As 6.8 logs it: its bounce session's refused RCPT, then the report given up.
    wait_for("the refusal of the report", || {
        d.log()
            .contains(" envelope: 550 Invalid recipient: <bob@remote.test>")
    });
    let log = d.log();
    let warn = log
        .lines()
        .find(|l| l.starts_with("warn: PermFail injecting failure report on message "))
        .expect(&log);
    assert!(
        warn.ends_with(
            " to <bob@remote.test> for 1 envelope: 550 Invalid recipient: <bob@remote.test>"
        ),
        "{log}"
    );
    let failed = log
        .lines()
        .find(|l| l.contains(" smtp failed-command command=\"RCPT TO: <bob@remote.test>\""))
        .expect(&log);
    let sid = failed.split(' ').next().unwrap();
    assert!(
        log.contains(&format!("{sid} smtp connected address=local host="))
            && log.contains(&format!("{sid} smtp disconnected reason=quit")),
        "{log}"
    );
    // The failed envelope still leaves the queue.
    wait_for("an empty queue", || {
        std::fs::read_dir(dir.path().join("spool/queue"))
            .map(|d| {
                d.flatten().all(|b| {
                    std::fs::read_dir(b.path())
                        .map(|mut m| m.next().is_none())
                        .unwrap_or(true)
                })
            })
            .unwrap_or(true)
    });
}

/// NOTIFY=NEVER on the RCPT: the permanent failure is not reported; NOTIFY=FAILURE is.
#[test]
fn notify_parameters_decide_the_report() {
    let (dir, vmail) = setup();
    let (d, port) = start(dir.path(), &conf(&vmail));
    send(
        port,
        "alice@mx.test",
        "broken@mx.test NOTIFY=NEVER",
        "Subject: never\r\n\r\nbody",
    );
    wait_for("the permanent failure", || {
        d.log().contains("result=PermFail")
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        maildir_files(&vmail.join("alice@mx.test")).is_empty(),
        "no report for NOTIFY=NEVER"
    );
    send(
        port,
        "alice@mx.test",
        "cracked@mx.test NOTIFY=FAILURE,DELAY",
        "Subject: failure\r\n\r\nbody",
    );
    wait_for("the report", || {
        !maildir_files(&vmail.join("alice@mx.test")).is_empty()
    });
    let report = std::fs::read_to_string(&maildir_files(&vmail.join("alice@mx.test"))[0]).unwrap();
    assert!(
        report.contains("cracked@mx.test") && !report.contains("broken@mx.test"),
        "{report}"
    );
}

/// NOTIFY=SUCCESS: a delivery report reaches the sender once the message is delivered
/// (here the sender writes to herself: the message and the report land side by side).
#[test]
fn notify_success_sends_a_delivery_report() {
    let (dir, vmail) = setup();
    let (_d, port) = start(dir.path(), &conf(&vmail));
    send(
        port,
        "alice@mx.test",
        "alice@mx.test NOTIFY=SUCCESS",
        "Subject: hello\r\n\r\nbody",
    );
    wait_for("the message and the report", || {
        maildir_files(&vmail.join("alice@mx.test")).len() >= 2
    });
    let texts: Vec<String> = maildir_files(&vmail.join("alice@mx.test"))
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("successfully delivered") && t.contains("alice@mx.test")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("Subject: hello")),
        "{texts:?}"
    );
}
