//! `queue encryption KEY` end to end: the built daemon keeps queued messages and envelopes
//! sealed on disk (no clear text of the body or the addresses in any spool file), shows and
//! delivers them in clear, refuses to start on a queue sealed with another key (moving
//! nothing to `corrupt/`), and delivers after a restart with the right key.

mod common;
use common::{Daemon, files_under, vmail};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const KEY: &str = "0123456789abcdef0123456789abcdef";
const BODY: &str = "The-secret-body-line-1234";

fn config(vmail: &Path, ids: &str, key: &str) -> String {
    format!(
        "queue encryption \"{key}\"\n\
         table users {{ alice = \"{}:/var/empty\" }}\n\
         listen on 127.0.0.1 port PORT hostname mx.test\n\
         action \"local\" maildir \"{}/%{{user.username}}\" userbase <users>\n\
         match from any for domain \"example.org\" action \"local\"\n",
        ids,
        vmail.display()
    )
}

fn smtpctl(spool: &Path, args: &[&str]) -> String {
    String::from_utf8_lossy(&common::smtpctl(spool, args).stdout).into_owned()
}

/// Waits (at most 15 s) for alice's first delivered message; returns its text.
fn delivered_to_alice(vmail: &Path, d: &Daemon) -> String {
    let t = Instant::now();
    loop {
        if let Some(f) = files_under(&vmail.join("alice/new")).first() {
            return std::fs::read_to_string(f).unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "not delivered: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_socket(spool: &Path) {
    let t = Instant::now();
    while !spool.join("smtpd.sock").exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon on [`config`] with [`KEY`], local delivery paused (`-P mda`: messages stay
/// queued), its control socket up. Returns the directory, the maildirs' root, the delivery
/// user's ids, the spool, the configuration and the daemon.
fn paused_daemon() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    String,
    std::path::PathBuf,
    String,
    Daemon,
) {
    let dir = tempfile::tempdir().unwrap();
    let (vmail, ids) = vmail(dir.path());
    let spool = dir.path().join("spool");
    let conf = config(&vmail, &ids, KEY);
    let d = Daemon::start(dir.path(), &conf, &["-P", "mda"]);
    wait_socket(&spool);
    (dir, vmail, ids, spool, conf, d)
}

#[test]
fn queued_mail_is_sealed_on_disk_and_delivered_in_clear() {
    let (dir, vmail, ids, spool, conf, d) = paused_daemon();
    let r = common::send_mail(
        d.port,
        "bob@elsewhere.test",
        "alice@example.org",
        &format!("Subject: sealed\r\n\r\n{BODY}\r\n"),
    );
    assert!(r[5].starts_with("250 2.0.0 "), "{r:?} {}", d.log());
    let msgid = r[5].split_whitespace().nth(2).unwrap().to_string();

    let queued: Vec<_> = files_under(&spool.join("queue"));
    assert!(queued.len() >= 2, "{queued:?}");
    for f in &queued {
        let bytes = std::fs::read(f).unwrap();
        assert_eq!(bytes[0], 1, "{} is not sealed", f.display());
        for clear in [BODY.as_bytes(), b"alice@example.org", b"bob@elsewhere.test"] {
            assert!(
                !bytes.windows(clear.len()).any(|w| w == clear),
                "{} holds clear text",
                f.display()
            );
        }
    }
    // smtpctl sees it in clear through the daemon.
    let shown = smtpctl(&spool, &["show", "message", &msgid]);
    assert!(shown.contains(BODY), "{shown}");
    let queue = smtpctl(&spool, &["show", "queue"]);
    assert!(queue.contains("alice@example.org"), "{queue}");
    d.stop();
    // Without the daemon (and its key), the sealed envelope cannot be listed: as 6.8 says.
    let offline = common::smtpctl(&spool, &["show", "queue"]);
    assert!(offline.status.success(), "{offline:?}");
    assert!(offline.stdout.is_empty(), "{offline:?}");
    assert_eq!(
        String::from_utf8_lossy(&offline.stderr),
        "smtpctl: offline encrypted queue is not supported yet\n"
    );

    // Another key: the daemon refuses to start, and nothing is thrown away.
    let wrong = config(&vmail, &ids, "fedcba9876543210fedcba9876543210");
    std::fs::write(
        dir.path().join("smtpd.conf"),
        wrong.replace("PORT", &common::free_port().to_string()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_smtpd"))
        .args(["-d", "-f"])
        .arg(dir.path().join("smtpd.conf"))
        .arg("--spool")
        .arg(&spool)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("wrong queue key"), "{err}");
    assert!(files_under(&spool.join("corrupt")).is_empty());
    assert_eq!(files_under(&spool.join("queue")).len(), queued.len());

    // The right key again, deliveries running: delivered in clear.
    let d = Daemon::start(dir.path(), &conf, &[]);
    let text = delivered_to_alice(&vmail, &d);
    assert!(text.contains(&format!("\n{BODY}\n")), "{text}");
    assert!(text.contains("Subject: sealed"), "{text}");
    d.stop();
}

/// `queue compression` (alone, and under `queue encryption`): queued files are stored
/// gzip-compressed (then sealed), and delivered in clear.
#[test]
fn queue_compression_stores_gzip_and_delivers_in_clear() {
    for encrypted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (vmail, ids) = vmail(dir.path());
        let spool = dir.path().join("spool");
        let mut conf = format!(
            "queue compression\n\
             table users {{ alice = \"{ids}:/var/empty\" }}\n\
             listen on 127.0.0.1 port PORT hostname mx.test\n\
             action \"local\" maildir \"{}/%{{user.username}}\" userbase <users>\n\
             match from any for domain \"example.org\" action \"local\"\n",
            vmail.display()
        );
        if encrypted {
            conf = format!("queue encryption \"{KEY}\"\n{conf}");
        }
        let d = Daemon::start(dir.path(), &conf, &["-P", "mda"]);
        wait_socket(&spool);
        let body = "compressible line\r\n".repeat(500);
        let r = common::send_mail(
            d.port,
            "bob@elsewhere.test",
            "alice@example.org",
            &format!("Subject: squeezed\r\n\r\n{body}{BODY}\r\n"),
        );
        assert!(r[5].starts_with("250 2.0.0 "), "{r:?} {}", d.log());
        let message = files_under(&spool.join("queue"))
            .into_iter()
            .find(|p| p.file_name().is_some_and(|n| n == "message"))
            .expect("queued message");
        let stored = std::fs::read(&message).unwrap();
        let gz = if encrypted {
            assert_eq!(stored[0], 1, "sealed");
            let key: [u8; 32] = KEY.as_bytes().try_into().unwrap();
            smtpd::queue::crypto::Cipher::new(&key)
                .open(&stored)
                .unwrap()
        } else {
            stored.clone()
        };
        assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip");
        assert!(gz.len() < body.len() / 5, "{} bytes stored", gz.len());
        let clear = smtpd::queue::compress::decompress(&gz).unwrap();
        assert!(
            String::from_utf8_lossy(&clear).contains(BODY),
            "the stored body is the message"
        );
        let out = smtpctl(&spool, &["resume", "mda"]);
        assert_eq!(out, "command succeeded\n");
        let text = delivered_to_alice(&vmail, &d);
        assert!(text.contains(&format!("\n{BODY}\n")), "{text}");
        assert_eq!(text.matches("compressible line\n").count(), 500);
        d.stop();
    }
}

/// One damaged sealed envelope beside good ones: the key opens the others, so the file is
/// damaged, not sealed with another key. It goes to `corrupt/` with the body of its message
/// (nothing deleted), and the rest of the queue is delivered.
#[test]
fn a_damaged_sealed_envelope_is_quarantined_and_the_rest_delivered() {
    let (dir, vmail, _, spool, conf, d) = paused_daemon();
    let mut msgids = Vec::new();
    for subject in ["kept", "damaged"] {
        let r = common::send_mail(
            d.port,
            "bob@elsewhere.test",
            "alice@example.org",
            &format!("Subject: {subject}\r\n\r\n{BODY}\r\n"),
        );
        assert!(r[5].starts_with("250 2.0.0 "), "{r:?}");
        msgids.push(r[5].split_whitespace().nth(2).unwrap().to_string());
    }
    d.stop();
    // Flip one byte inside the sealed text of the second message's envelope.
    let envelope = files_under(&spool.join("queue"))
        .into_iter()
        .find(|p| {
            p.parent().is_some_and(|d| d.ends_with(&msgids[1]))
                && p.file_name().is_some_and(|n| n != "message")
        })
        .expect("the second message's envelope");
    let mut bytes = std::fs::read(&envelope).unwrap();
    bytes[20] ^= 0x01;
    std::fs::write(&envelope, &bytes).unwrap();

    let d = Daemon::start(dir.path(), &conf, &[]);
    let text = delivered_to_alice(&vmail, &d);
    assert!(text.contains("Subject: kept"), "{text}");
    let log = d.stop();
    assert!(
        log.contains("cannot be decrypted although the queue key opens 1 other(s): damaged"),
        "{log}"
    );
    let corrupt: Vec<String> = files_under(&spool.join("corrupt"))
        .iter()
        .map(|p| {
            p.strip_prefix(spool.join("corrupt"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    let evpid = envelope.file_name().unwrap().to_string_lossy().into_owned();
    let mut want = vec![
        format!("{}/{evpid}", msgids[1]),
        format!("{}/message", msgids[1]),
    ];
    want.sort();
    let mut got = corrupt.clone();
    got.sort();
    assert_eq!(got, want);
    // Kept byte for byte for a human to look at.
    assert_eq!(
        std::fs::read(spool.join("corrupt").join(&msgids[1]).join(&evpid)).unwrap(),
        bytes
    );
    assert_eq!(files_under(&vmail.join("alice/new")).len(), 1);
}
