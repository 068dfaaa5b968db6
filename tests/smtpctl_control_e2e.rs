//! smtpctl against a running `smtpd -d` with a temporary spool: the control socket at
//! `<spool>/smtpd.sock`, OpenSMTPD's reply texts, and the queue it shows and steers.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::Daemon;

/// The daemon, once it accepts connections and its control socket exists.
fn start(dir: &Path, conf: &str, extra: &[&str]) -> (Daemon, u16) {
    let d = Daemon::start(dir, conf, extra);
    let t = Instant::now();
    while !dir.join("spool/smtpd.sock").exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let port = d.port;
    (d, port)
}

fn send(port: u16, from: &str, to: &str) {
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
    for (line, want) in [
        ("EHLO client.example".to_string(), "250"),
        (format!("MAIL FROM:<{from}>"), "250"),
        (format!("RCPT TO:<{to}>"), "250"),
        ("DATA".to_string(), "354"),
        ("Subject: ctl\r\n\r\nhello\r\n.".to_string(), "250"),
        ("QUIT".to_string(), "221"),
    ] {
        w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let reply = read();
        assert!(reply.starts_with(want), "{line} -> {reply}");
    }
}

fn smtpctl(spool: &Path, args: &[&str]) -> Output {
    let out = common::smtpctl(spool, args);
    println!(
        "smtpctl {}: status {:?}\n{}{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn setup() -> (tempfile::TempDir, PathBuf, String) {
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
    let conf = format!(
        "listen on 127.0.0.1 port PORT hostname mx.test\n\
         table users {{ alice = \"2000:2000:/var/empty\" }}\n\
         action \"local_mail\" maildir \"{}/%{{rcpt}}\" userbase <users>\n\
         match from any for domain \"mx.test\" action \"local_mail\"\n",
        vmail.display()
    );
    (dir, vmail, conf)
}

fn delivered(vmail: &Path) -> usize {
    std::fs::read_dir(vmail.join("alice@mx.test/new"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn queue_status_schedule_pause_resume() {
    let (dir, vmail, conf) = setup();
    let spool = dir.path().join("spool");
    let (d, port) = start(dir.path(), &conf, &["-P", "mda"]);
    send(port, "bob@remote.test", "alice@mx.test");

    let q = smtpctl(&spool, &["show", "queue"]);
    assert!(q.status.success());
    let lines: Vec<String> = stdout(&q).lines().map(String::from).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let f: Vec<&str> = lines[0].split('|').collect();
    assert_eq!(f.len(), 14, "{f:?}");
    assert_eq!(f[0].len(), 16);
    assert_eq!(
        &f[1..7],
        &[
            "inet4",
            "mda",
            "",
            "bob@remote.test",
            "alice@mx.test",
            "alice@mx.test"
        ]
    );
    assert_eq!((f[10], f[11]), ("0", "pending"), "{f:?}");

    let env = smtpctl(&spool, &["show", "envelope", f[0]]);
    assert!(env.status.success());
    let env = stdout(&env);
    assert!(env.starts_with("version: "), "{env}");
    assert!(
        env.contains("\ntype: mda\n") && env.contains("\nhelo: client.example\n"),
        "{env}"
    );
    let msg = stdout(&smtpctl(&spool, &["show", "message", f[0]]));
    assert!(msg.starts_with("Received: from client.example"), "{msg}");
    assert!(
        msg.contains("Subject: ctl\n") && msg.ends_with("\nhello\n"),
        "{msg}"
    );
    // A message id where an envelope id goes: not a command (OpenSMTPD's parser).
    let bad = smtpctl(&spool, &["show", "envelope", &f[0][..8]]);
    assert_eq!(bad.status.code(), Some(255));
    assert_eq!(
        String::from_utf8_lossy(&bad.stderr),
        "possibilities are:\nshow envelope <evpid>\n"
    );

    // Abbreviations, as smtpctl allows them.
    let s = smtpctl(&spool, &["sh", "statu"]);
    assert_eq!(stdout(&s), "MDA paused\nMTA running\nSMTP running\n");
    let amb = smtpctl(&spool, &["show", "stat"]);
    assert_eq!(amb.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&amb.stderr).starts_with("possibilities are:\n"));

    let r = smtpctl(&spool, &["schedule", "all"]);
    assert_eq!(stdout(&r), "1 envelope scheduled\n");
    let r = smtpctl(&spool, &["pause", "envelope", "all"]);
    assert_eq!(stdout(&r), "1 envelope paused\n");
    let q = stdout(&smtpctl(&spool, &["show", "queue"]));
    assert!(q.contains("|mda|suspend|"), "{q}");
    let r = smtpctl(&spool, &["resume", "envelope", &f[0][..8]]);
    assert_eq!(stdout(&r), "1 envelope resumed\n");
    assert_eq!(delivered(&vmail), 0, "mda is paused");

    let r = smtpctl(&spool, &["resume", "mda"]);
    assert_eq!(stdout(&r), "command succeeded\n");
    assert!(r.status.success());
    wait_for("the delivery after resume", || delivered(&vmail) == 1);
    assert!(d.log().contains("info: mda resumed"), "{}", d.log());
    let r = smtpctl(&spool, &["resume", "mda"]);
    assert_eq!(r.status.code(), Some(1));
    // As 6.8 says it: no reason given.
    assert_eq!(stdout(&r), "command failed\n");

    let r = smtpctl(&spool, &["pause", "mta"]);
    assert_eq!(stdout(&r), "command succeeded\n");
    assert!(d.log().contains("info: mta paused"));
    let s = smtpctl(&spool, &["show", "status"]);
    assert_eq!(stdout(&s), "MDA running\nMTA paused\nSMTP running\n");

    wait_for("the queue to empty", || {
        stdout(&smtpctl(&spool, &["show", "queue"])).is_empty()
    });
    let stats = stdout(&smtpctl(&spool, &["show", "stats"]));
    assert!(stats.contains("scheduler.delivery.ok=1\n"), "{stats}");
    assert!(stats.contains("scheduler.envelope=0\n"), "{stats}");
    assert!(stats.contains("\nuptime="), "{stats}");
}

#[test]
fn remove_log_and_trace() {
    let (dir, vmail, conf) = setup();
    let spool = dir.path().join("spool");
    let (d, port) = start(dir.path(), &conf, &["-P", "mda"]);
    send(port, "bob@remote.test", "alice@mx.test");
    send(port, "carol@remote.test", "alice@mx.test");
    let q = stdout(&smtpctl(&spool, &["show", "queue"]));
    let ids: Vec<&str> = q.lines().map(|l| &l[..16]).collect();
    assert_eq!(ids.len(), 2, "{q}");

    // A message id (the first 8 digits) selects its envelopes.
    let r = smtpctl(&spool, &["remove", &ids[0][..8]]);
    assert_eq!(stdout(&r), "1 envelope removed\n");
    wait_for("the Remove line", || {
        d.log()
            .contains(&format!("delivery: Remove for {}: from=<", ids[0]))
    });
    assert!(d.log().contains("stat=Removed by administrator"));
    let r = smtpctl(&spool, &["remove", "all"]);
    assert_eq!(stdout(&r), "1 envelope removed\n");
    let r = smtpctl(&spool, &["remove", "all"]);
    assert_eq!(stdout(&r), "0 envelope removed\n");
    assert!(stdout(&smtpctl(&spool, &["show", "queue"])).is_empty());
    smtpctl(&spool, &["resume", "mda"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(delivered(&vmail), 0, "removed mail is not delivered");

    let r = smtpctl(&spool, &["log", "verbose"]);
    assert_eq!(stdout(&r), "command succeeded\n");
    let r = smtpctl(&spool, &["trace", "expand"]);
    assert_eq!(stdout(&r), "command succeeded\n");
    send(port, "dave@remote.test", "alice@mx.test");
    wait_for("an expand trace line", || d.log().contains("expand:"));
    let r = smtpctl(&spool, &["untrace", "expand"]);
    assert_eq!(stdout(&r), "command succeeded\n");
    let r = smtpctl(&spool, &["log", "brief"]);
    assert_eq!(stdout(&r), "command succeeded\n");
    let r = smtpctl(&spool, &["trace", "nonsense"]);
    assert_eq!(r.status.code(), Some(1));
    let r = smtpctl(&spool, &["schedule", "nothex"]);
    assert_eq!(r.status.code(), Some(255));
    assert_eq!(
        String::from_utf8_lossy(&r.stderr),
        "possibilities are:\nschedule <msgid>\nschedule <evpid>\nschedule all\n"
    );
}

#[test]
fn without_a_daemon() {
    let (dir, _vmail, conf) = setup();
    let spool = dir.path().join("spool");
    {
        let (_d, port) = start(dir.path(), &conf, &["-P", "mda"]);
        send(port, "bob@remote.test", "alice@mx.test");
    }
    // The daemon is gone: only show queue works, reading the spool.
    let r = smtpctl(&spool, &["show", "status"]);
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&r.stderr),
        "smtpctl: smtpd doesn't seem to be running\n"
    );
    let q = smtpctl(&spool, &["show", "queue"]);
    assert!(q.status.success());
    let text = stdout(&q);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("|bob@remote.test|alice@mx.test|alice@mx.test|"));
    assert!(text.trim_end().ends_with("|0|offline||"), "{text}");
    // Run as mailq (through a link), it is show queue.
    let mailq = dir.path().join("mailq");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_smtpctl"), &mailq).unwrap();
    let m = Command::new(&mailq)
        .arg("--spool")
        .arg(&spool)
        .output()
        .unwrap();
    assert_eq!(stdout(&m), text);
    assert!(m.stderr.is_empty(), "{m:?}");
    // A damaged envelope beside it is named on stderr; the readable one is still listed.
    let envelope = common::files_under(&spool.join("queue"))
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n.len() == 16))
        .expect("the envelope file");
    let name = envelope.file_name().unwrap().to_string_lossy().into_owned();
    let damaged = envelope.with_file_name(format!("{}00000001", &name[..8]));
    std::fs::write(&damaged, "garbage\n").unwrap();
    let q = smtpctl(&spool, &["show", "queue"]);
    assert!(q.status.success());
    assert_eq!(stdout(&q), text);
    let err = String::from_utf8_lossy(&q.stderr);
    assert!(
        err.starts_with(&format!(
            "smtpctl: corrupt envelope {}: ",
            damaged.display()
        )) && err.lines().count() == 1,
        "{err}"
    );
    // -s names the socket directly.
    let out = Command::new(env!("CARGO_BIN_EXE_smtpctl"))
        .args(["-s", "/nonexistent/smtpd.sock", "pause", "mda"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // encrypt still works without a daemon.
    let out = Command::new(env!("CARGO_BIN_EXE_smtpctl"))
        .args(["encrypt", "secret"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with('$'));
}

/// Reads the first line the server sends, or `None` if nothing comes within `wait`.
fn banner_within(s: &mut TcpStream, wait: Duration) -> Option<String> {
    use std::io::Read;
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

#[test]
fn pause_and_resume_smtp() {
    let (dir, _vmail, conf) = setup();
    let spool = dir.path().join("spool");
    let (d, port) = start(dir.path(), &conf, &[]);
    let r = smtpctl(&spool, &["pause", "smtp"]);
    assert_eq!(stdout(&r), "command succeeded\n");
    assert!(d.log().contains("info: smtp paused"));
    assert_eq!(
        stdout(&smtpctl(&spool, &["show", "status"])),
        "MDA running\nMTA running\nSMTP paused\n"
    );
    let r = smtpctl(&spool, &["pause", "smtp"]);
    assert_eq!(stdout(&r), "command failed\n");
    // The socket stays bound: the connection waits in the backlog, unanswered.
    let mut waiting = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(
        banner_within(&mut waiting, Duration::from_millis(500)),
        None
    );
    let r = smtpctl(&spool, &["resume", "smtp"]);
    assert_eq!(stdout(&r), "command succeeded\n");
    assert!(d.log().contains("info: smtp resumed"));
    let banner = banner_within(&mut waiting, Duration::from_secs(10)).expect("a banner");
    assert!(
        banner.starts_with("220 mx.test ESMTP OpenSMTPD"),
        "{banner}"
    );
}

#[test]
fn started_with_smtp_paused() {
    let (dir, _vmail, conf) = setup();
    let spool = dir.path().join("spool");
    // Paused, the listener still completes connections (they wait in its backlog): the
    // helper's start-up probe gets through, and its session is served after the resume.
    let d = Daemon::start(dir.path(), &conf, &["-P", "smtp"]);
    let port = d.port;
    wait_for("the control socket", || spool.join("smtpd.sock").exists());
    assert_eq!(
        stdout(&smtpctl(&spool, &["show", "status"])),
        "MDA running\nMTA running\nSMTP paused\n"
    );
    let mut waiting = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(
        banner_within(&mut waiting, Duration::from_millis(300)),
        None
    );
    assert_eq!(
        stdout(&smtpctl(&spool, &["resume", "smtp"])),
        "command succeeded\n"
    );
    assert!(banner_within(&mut waiting, Duration::from_secs(10)).is_some());
}

/// `update table NAME` re-reads a `file:` table: a domain added to the file is accepted
/// afterwards without a restart. Unknown and inline tables are refused with a reason.
#[test]
fn update_table_rereads_a_file_table() {
    let (dir, vmail, _) = setup();
    let domains = dir.path().join("domains");
    std::fs::write(&domains, "mx.test\n").unwrap();
    let conf = format!(
        "listen on 127.0.0.1 port PORT hostname mx.test\n\
         table domains file:{}\n\
         table users {{ alice = \"2000:2000:/var/empty\" }}\n\
         action \"local_mail\" maildir \"{}/%{{rcpt}}\" userbase <users>\n\
         match from any for domain <domains> action \"local_mail\"\n",
        domains.display(),
        vmail.display()
    );
    let (d, port) = start(dir.path(), &conf, &[]);
    let spool = dir.path().join("spool");
    let rcpt = |to: &str| {
        common::dialogue(
            port,
            &[
                "HELO c.test",
                "MAIL FROM:<a@c.test>",
                &format!("RCPT TO:<alice@{to}>"),
                "QUIT",
            ],
        )[3]
        .clone()
    };
    assert!(rcpt("new.test").starts_with("550 "), "not ours yet");
    std::fs::write(&domains, "mx.test\nnew.test\n").unwrap();
    let out = smtpctl(&spool, &["update", "table", "domains"]);
    assert_eq!(stdout(&out), "command succeeded\n");
    assert!(out.status.success());
    assert!(d.wait_log("info: Table \"domains\" successfully updated", 10));
    assert!(
        rcpt("new.test").starts_with("250 "),
        "accepted after the update"
    );
    assert!(rcpt("mx.test").starts_with("250 "));

    // Abbreviated words, as OpenSMTPD's smtpctl takes them.
    std::fs::write(&domains, "mx.test\n").unwrap();
    let out = smtpctl(&spool, &["up", "t", "domains"]);
    assert_eq!(stdout(&out), "command succeeded\n");
    assert!(rcpt("new.test").starts_with("550 "), "removed again");

    let out = smtpctl(&spool, &["update", "table", "nope"]);
    assert_eq!(stdout(&out), "command failed\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(d.wait_log("warn: Lookup table not found: \"nope\"", 10));
    let out = smtpctl(&spool, &["update", "table", "users"]);
    assert_eq!(stdout(&out), "command failed\n");
    assert!(d.wait_log("info: Failed to update table \"users\"", 10));
    assert!(d.wait_log("is not read from a file", 10));
    // A file that cannot be read leaves the table as it was.
    std::fs::remove_file(&domains).unwrap();
    let out = smtpctl(&spool, &["update", "table", "domains"]);
    assert_eq!(stdout(&out), "command failed\n");
    assert!(d.wait_log("info: Failed to update table \"domains\"", 10));
    assert!(rcpt("mx.test").starts_with("250 "));
    d.stop();
}

/// `show stats` counts SMTP sessions and accepted envelopes; `monitor` prints OpenSMTPD's
/// header and a line a second, and ends when the daemon does.
#[test]
fn stats_and_monitor() {
    let (dir, _vmail, conf) = setup();
    let (d, port) = start(dir.path(), &conf, &["-P", "mda"]);
    let spool = dir.path().join("spool");
    send(port, "a@client.example", "alice@mx.test");
    let stats = stdout(&smtpctl(&spool, &["show", "stats"]));
    let value = |k: &str| {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {k} in {stats}"))
    };
    // The start-up probe and the message's session.
    assert!(value("smtp.session.inet4") >= 2, "{stats}");
    // As in 6.8, a counter nothing changed is not listed.
    assert!(!stats.contains("smtp.session.inet6="), "{stats}");
    assert!(!stats.contains("scheduler.delivery.permfail="), "{stats}");
    assert_eq!(value("scheduler.envelope"), 1);
    // The message was committed (a gauge back at 0, listed as moved) and waits in the
    // scheduler; nothing was delivered (mda paused), so no `mda.` gauge moved.
    assert_eq!(value("scheduler.envelope.incoming"), 0);
    assert_eq!(value("scheduler.ramqueue.envelope"), 1);
    assert_eq!(value("scheduler.ramqueue.message"), 1);
    assert!(!stats.contains("mda."), "{stats}");
    assert!(!stats.contains("scheduler.envelope.inflight="), "{stats}");
    // smtpd's own counter feeds `monitor` only.
    assert!(!stats.contains("queue.envelope.enqueued="), "{stats}");

    let monitor = Command::new(env!("CARGO_BIN_EXE_smtpctl"))
        .arg("--spool")
        .arg(&spool)
        .arg("mon")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2300));
    d.stop();
    let out = monitor.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "--- client ---  -- envelope --   ---- relay/delivery --- ------- misc -------"
    );
    assert_eq!(
        lines[1],
        "curr conn disc  curr  enq  deq   ok tmpfail prmfail loop expire remove bounce"
    );
    assert!(lines.len() >= 4, "{text}");
    // First line: totals since start; the envelope waits (mda paused).
    let first: Vec<u64> = lines[2]
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(first.len(), 13, "{}", lines[2]);
    assert_eq!((first[3], first[4], first[5]), (1, 1, 0), "{}", lines[2]);
    // Nothing happened since: the changes are zero.
    let second: Vec<u64> = lines[3]
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(second[4..], [0; 9], "{}", lines[3]);
}

/// `discover MSGID` schedules a message moved into the queue by hand while smtpd runs.
#[test]
fn discover_picks_up_a_message_moved_into_the_queue() {
    use std::os::unix::fs::MetadataExt;
    let (dir, vmail, conf) = setup();
    let first = dir.path().join("first");
    std::fs::create_dir(&first).unwrap();
    // A message queued by one instance...
    let (d, port) = start(&first, &conf, &["-P", "mda"]);
    send(port, "a@client.example", "alice@mx.test");
    let queued = common::files_under(&first.join("spool/queue"));
    let msg_dir = queued
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == "message"))
        .and_then(|p| p.parent())
        .expect("queued message")
        .to_path_buf();
    d.stop();
    // ... is moved by hand into another one's queue while it runs.
    let (d, _port) = start(dir.path(), &conf, &["-P", "mda"]);
    let spool = dir.path().join("spool");
    let msgid = msg_dir.file_name().unwrap().to_str().unwrap().to_string();
    let bucket = spool.join("queue").join(&msgid[..2]);
    std::fs::create_dir_all(&bucket).unwrap();
    let owner = std::fs::metadata(spool.join("queue")).unwrap();
    let moved = bucket.join(&msgid);
    std::fs::rename(&msg_dir, &moved).unwrap();
    for p in std::iter::once(moved.clone())
        .chain(std::iter::once(bucket.clone()))
        .chain(common::files_under(&moved))
    {
        std::os::unix::fs::chown(&p, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    // On disk but not scheduled: shown as offline.
    let before = stdout(&smtpctl(&spool, &["show", "queue"]));
    assert!(
        before.contains("|alice@mx.test|") && before.contains("|offline|"),
        "{before}"
    );
    let out = smtpctl(&spool, &["discover", &msgid]);
    assert_eq!(stdout(&out), "1 envelope discovered\n");
    let after = stdout(&smtpctl(&spool, &["show", "queue"]));
    assert!(after.contains("|pending|"), "{after}");
    assert_eq!(
        stdout(&smtpctl(&spool, &["discover", &msgid])),
        "0 envelopes discovered\n"
    );
    assert!(smtpctl(&spool, &["resume", "mda"]).status.success());
    wait_for("delivery", || delivered(&vmail) == 1);
    d.stop();
}

/// Garbage on the control socket (CVE-2025-62875 made OpenSMTPD die of a malformed
/// request): binary bytes, a line far past the request limit, an unknown command, a client
/// that hangs up at once. Each client gets at most a refusal; the daemon keeps serving
/// smtpctl and SMTP.
#[test]
fn garbage_on_the_control_socket_only_ends_that_client() {
    use std::os::unix::net::UnixStream;
    let (dir, _vmail, conf) = setup();
    let (d, port) = start(dir.path(), &conf, &[]);
    let spool = dir.path().join("spool");
    let socket = spool.join("smtpd.sock");
    let answer = |bytes: &[u8]| -> String {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    let mut binary: Vec<u8> = (0u8..=255).cycle().take(4096).collect();
    binary.push(b'\n');
    for garbage in [
        binary,
        vec![b'x'; 1 << 20],
        b"\xff\xfe\x00show status\n".to_vec(),
        b"launch missiles\n".to_vec(),
        Vec::new(),
    ] {
        let a = answer(&garbage);
        assert!(!a.contains("succeeded"), "{a:?}");
        assert!(
            d.log().lines().all(|l| !l.contains("panicked")),
            "{}",
            d.log()
        );
    }
    // A client that connects and leaves without a word.
    drop(UnixStream::connect(&socket).unwrap());
    let s = smtpctl(&spool, &["show", "status"]);
    assert!(s.status.success(), "{s:?}");
    assert!(stdout(&s).contains("MDA running"), "{}", stdout(&s));
    send(port, "bob@remote.test", "alice@mx.test");
}

/// A client that is neither root nor smtpd's own user is refused as OpenSMTPD refuses it:
/// `smtpctl: need root privileges` on standard error, status 1.
#[test]
fn other_users_need_root_privileges() {
    if !nix::unistd::Uid::effective().is_root() {
        common::skip("not root: another user's smtpctl cannot be run");
        return;
    }
    let (dir, _vmail, conf) = setup();
    let (d, _port) = start(dir.path(), &conf, &[]);
    let spool = dir.path().join("spool");
    let out = {
        use std::os::unix::process::CommandExt;
        Command::new(env!("CARGO_BIN_EXE_smtpctl"))
            .arg("--spool")
            .arg(&spool)
            .args(["show", "status"])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "smtpctl: need root privileges\n"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(out.status.code(), Some(1));
    // Root is served.
    assert_eq!(
        stdout(&smtpctl(&spool, &["show", "status"])),
        "MDA running\nMTA running\nSMTP running\n"
    );
    d.stop();
}
