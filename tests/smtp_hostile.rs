//! Hostile clients against the built daemon over real TCP, each meeting OpenSMTPD's limit and
//! reply: 10,000 recipients in one transaction, an endless DATA, an endless line inside
//! DATA, a thousand clients that send one byte a second, and a spool whose disk is full.
//! Afterwards the queue holds exactly what was acknowledged. Bounded in count and time.

mod common;
use common::Daemon;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Starts smtpd with `extra` configuration lines and its spool in `spool`, deliveries paused
/// (the queue is what these tests look at).
fn start(dir: &Path, spool: &Path, extra: &str) -> Daemon {
    let conf = format!(
        "{extra}\ntable users {{ foo = \"2000:2000:/var/empty\" }}\n\
         listen on 127.0.0.1 port PORT hostname mx.test\n\
         action \"local\" maildir \"{}/Maildir\" userbase <users>\n\
         match from any for domain \"hostile.test\" action \"local\"\n",
        dir.display()
    );
    Daemon::start_with_spool(dir, &conf, &["-P", "mda", "-P", "mta"], spool)
}

struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        let banner = c.reply();
        assert!(banner.starts_with("220 mx.test ESMTP"), "{banner}");
        c
    }

    fn reply(&mut self) -> String {
        common::read_reply(&mut self.r).replace("\r\n", "\n")
    }

    fn send(&mut self, line: &str) -> String {
        self.w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.reply()
    }

    /// The server closed the connection (EOF, or a reset after unread input).
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(self.r.read_to_end(&mut rest), Ok(_) | Err(_)) && rest.is_empty()
    }
}

/// Message directories in the queue (`queue/<bucket>/<msgid>`), and whatever is left in
/// `incoming/`.
fn spool_state(spool: &Path) -> (usize, usize) {
    let count = |p: PathBuf| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    let queued = std::fs::read_dir(spool.join("queue"))
        .map(|d| d.flatten().map(|b| count(b.path())).sum())
        .unwrap_or(0);
    (queued, count(spool.join("incoming")))
}

fn transaction(c: &mut Client, body: &str) -> String {
    assert!(c.send("MAIL FROM:<a@client.test>").starts_with("250 "));
    assert!(c.send("RCPT TO:<foo@hostile.test>").starts_with("250 "));
    assert!(c.send("DATA").starts_with("354 "));
    c.w.write_all(body.as_bytes()).unwrap();
    c.send(".")
}

#[test]
fn ten_thousand_recipients_meet_max_rcpt() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let d = start(dir.path(), &spool, "");
    let port = d.port;
    let mut c = Client::connect(port);
    assert!(c.send("EHLO client.test").starts_with("250-mx.test Hello"));
    assert!(c.send("MAIL FROM:<a@client.test>").starts_with("250 "));
    let (mut ok, mut refused) = (0, 0);
    // Sent in batches, read back in order: OpenSMTPD's default limit of 1,000 accepted
    // recipients per transaction, then 451 for each one beyond it.
    for batch in 0..100 {
        let mut lines = String::new();
        for i in 0..100 {
            lines.push_str(&format!(
                "RCPT TO:<foo+{}@hostile.test>\r\n",
                batch * 100 + i
            ));
        }
        c.w.write_all(lines.as_bytes()).unwrap();
        for _ in 0..100 {
            match c.reply().as_str() {
                "250 2.1.5 Destination address valid: Recipient ok\n" => ok += 1,
                "451 4.5.3 Too many recipients: Too many recipients\n" => refused += 1,
                other => panic!("unexpected reply {other:?} after {ok} + {refused}"),
            }
        }
    }
    assert_eq!((ok, refused), (1000, 9000));
    // The transaction still works with the 1,000 it accepted.
    assert!(c.send("DATA").starts_with("354 "));
    c.w.write_all(b"Subject: many\r\n\r\nhello\r\n").unwrap();
    let done = c.send(".");
    assert!(done.ends_with("Message accepted for delivery\n"), "{done}");
    assert_eq!(c.send("QUIT"), "221 2.0.0 Bye\n");
    assert_eq!(spool_state(&spool), (1, 0));
    let msg = std::fs::read_dir(spool.join("queue"))
        .unwrap()
        .flatten()
        .flat_map(|b| std::fs::read_dir(b.path()).unwrap().flatten())
        .next()
        .unwrap()
        .path();
    let envelopes = std::fs::read_dir(&msg).unwrap().count() - 1;
    assert_eq!(envelopes, 1000, "one envelope per accepted recipient");
}

#[test]
fn endless_data_is_refused_and_nothing_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let d = start(dir.path(), &spool, "smtp max-message-size 1M");
    let port = d.port;
    let mut c = Client::connect(port);
    c.send("EHLO client.test");
    // 8 MB of body for a 1 MB limit: the server reads it all (as OpenSMTPD does) and
    // refuses at the final dot.
    let line = format!("{}\r\n", "x".repeat(998));
    let mut chunk = String::new();
    for _ in 0..1000 {
        chunk.push_str(&line);
    }
    assert!(c.send("MAIL FROM:<a@client.test>").starts_with("250 "));
    assert!(c.send("RCPT TO:<foo@hostile.test>").starts_with("250 "));
    assert!(c.send("DATA").starts_with("354 "));
    for _ in 0..8 {
        c.w.write_all(chunk.as_bytes()).unwrap();
    }
    assert_eq!(
        c.send("."),
        "554 5.3.4 Message too big for system: Transaction failed, message too big\n"
    );
    assert_eq!(spool_state(&spool), (0, 0));
    // The session goes on: a message within the limit is accepted.
    let done = transaction(&mut c, "Subject: small\r\n\r\nfits\r\n");
    assert!(done.ends_with("Message accepted for delivery\n"), "{done}");
    assert_eq!(spool_state(&spool), (1, 0));
}

#[test]
fn endless_line_in_data_closes_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let d = start(dir.path(), &spool, "");
    let port = d.port;
    let mut c = Client::connect(port);
    c.send("EHLO client.test");
    assert!(c.send("MAIL FROM:<a@client.test>").starts_with("250 "));
    assert!(c.send("RCPT TO:<foo@hostile.test>").starts_with("250 "));
    assert!(c.send("DATA").starts_with("354 "));
    // One line far beyond the 65,535-byte line limit, never ended. The server may close
    // while we are still writing; what it said before closing is what counts.
    let junk = vec![b'y'; 256 * 1024];
    let _ = c.w.write_all(&junk);
    let reply = c.reply();
    assert_eq!(reply, "500 5.0.0 Line too long\n");
    assert!(c.closed());
    assert_eq!(spool_state(&spool), (0, 0));
}

#[test]
fn a_thousand_slow_clients_do_not_hold_up_an_ordinary_one() {
    // Room for 1,000 client sockets here and their server ends in the daemon.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let want = 8192.min(hard);
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, want, hard).unwrap();
    if want < 2200 {
        common::skip(&format!(
            "the open-file limit ({hard}) is too low for 1,000 clients"
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let d = start(dir.path(), &spool, "");
    let port = d.port;
    let mut slow = Vec::new();
    for _ in 0..1000 {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nonblocking(true).unwrap();
        slow.push(s);
    }
    let command = b"EHLO slow.client.test\r\n";
    let mut good = Vec::new();
    // Five seconds of one byte per second from each slow client, and meanwhile an ordinary
    // client sends a message every second.
    for second in 0..5 {
        for s in &mut slow {
            let _ = s.write_all(&command[second..second + 1]);
        }
        let mut c = Client::connect(port);
        assert!(
            c.send("EHLO good.client.test")
                .starts_with("250-mx.test Hello")
        );
        good.push(transaction(&mut c, "Subject: ok\r\n\r\nfine\r\n"));
        assert_eq!(c.send("QUIT"), "221 2.0.0 Bye\n");
        std::thread::sleep(Duration::from_millis(1000));
    }
    for reply in &good {
        assert!(
            reply.ends_with("Message accepted for delivery\n"),
            "{reply}"
        );
    }
    // The slow clients are all still connected: each got its banner and nothing else.
    let mut alive = 0;
    for s in &mut slow {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 512];
        if let Ok(n) = s.read(&mut buf)
            && n > 0
            && buf[..n].starts_with(b"220 mx.test ESMTP")
        {
            alive += 1;
        }
    }
    assert_eq!(alive, 1000);
    assert_eq!(spool_state(&spool), (5, 0));
}

/// The spool on a 2 MB tmpfs: a message that does not fit gets a temporary failure, the
/// queue keeps only complete messages, and mail flows again once there is room.
#[test]
fn full_disk_gives_a_temporary_failure_and_no_corrupt_queue() {
    if !nix::unistd::geteuid().is_root() {
        common::skip("mounting a small tmpfs for the spool needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m,mode=0711", "tmpfs"])
        .arg(&spool)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        common::skip("could not mount a tmpfs (no mount permission here)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(spool.clone());
    let d = start(dir.path(), &spool, "smtp max-message-size 20M");
    let port = d.port;
    let mut c = Client::connect(port);
    c.send("EHLO client.test");
    let ok = transaction(&mut c, "Subject: first\r\n\r\nfits\r\n");
    assert!(ok.ends_with("Message accepted for delivery\n"), "{ok}");

    // 4 MB into 2 MB of disk.
    let mut c = Client::connect(port);
    c.send("EHLO client.test");
    assert!(c.send("MAIL FROM:<a@client.test>").starts_with("250 "));
    assert!(c.send("RCPT TO:<foo@hostile.test>").starts_with("250 "));
    assert!(c.send("DATA").starts_with("354 "));
    let line = format!("{}\r\n", "z".repeat(998));
    let block: String = std::iter::repeat_n(line.as_str(), 1000).collect();
    let mut write_failed = c.w.write_all(b"Subject: big\r\n\r\n").is_err();
    for _ in 0..4 {
        if c.w.write_all(block.as_bytes()).is_err() {
            write_failed = true;
            break;
        }
    }
    if !write_failed {
        let _ = c.w.write_all(b".\r\n");
    }
    let reply = c.reply();
    assert!(reply.starts_with("421 4.3.0 Temporary"), "{reply:?}");
    // Only the first message is queued; nothing half-written is left behind.
    assert_eq!(spool_state(&spool), (1, 0));

    // Still serving, and with room again (the large message's space was given back), a
    // normal message is accepted.
    let mut c = Client::connect(port);
    c.send("EHLO client.test");
    let ok = transaction(&mut c, "Subject: after\r\n\r\nfits again\r\n");
    assert!(ok.ends_with("Message accepted for delivery\n"), "{ok}");
    assert_eq!(spool_state(&spool), (2, 0));

    // A restart finds a consistent queue: both messages, nothing moved to corrupt/.
    drop(d);
    let _d = start(dir.path(), &spool, "smtp max-message-size 20M");
    assert_eq!(spool_state(&spool), (2, 0));
    let corrupt = std::fs::read_dir(spool.join("corrupt"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(corrupt, 0);
}
