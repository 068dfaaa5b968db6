//! Privilege separation of the built daemon, started as root: the process that accepts SMTP
//! connections runs as the unprivileged user and owns the spool, the privileged broker stays
//! root and reads `.forward` files, runs deliveries as their users and checks system
//! passwords; either process ends when the other one does.
//!
//! Every test needs root and is skipped (with a notice) otherwise.

mod common;
use common::free_port;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    common::skip("not root: privilege separation tests not run");
    false
}

/// The user the daemon should run its network side as.
fn expected_user() -> nix::unistd::User {
    for name in ["_smtpd", "opensmtpd", "nobody"] {
        if let Ok(Some(u)) = nix::unistd::User::from_name(name) {
            return u;
        }
    }
    panic!("no unprivileged user on this machine");
}

fn start(dir: &Path, conf: &str, extra: &[&str]) -> (Daemon, u16) {
    let port = free_port();
    std::fs::write(
        dir.join("smtpd.conf"),
        conf.replace("PORT", &port.to_string())
            .replace("DIR", dir.to_str().unwrap()),
    )
    .unwrap();
    let mut d = Daemon(
        Command::new(env!("CARGO_BIN_EXE_smtpd"))
            .arg("-d")
            .args(extra)
            .arg("-f")
            .arg(dir.join("smtpd.conf"))
            .arg("--spool")
            .arg(dir.join("spool"))
            .arg("--resolv-conf")
            .arg("/nonexistent")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = d.0.try_wait() {
            panic!("smtpd exited: {status}");
        }
        assert!(t.elapsed() < Duration::from_secs(10), "smtpd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (d, port)
}

fn dialogue(port: u16, lines: &[&str]) -> Vec<String> {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let read = |r: &mut BufReader<TcpStream>| common::read_reply(r);
    let mut replies = vec![read(&mut r)];
    let mut in_data = false;
    for l in lines {
        w.write_all(format!("{l}\r\n").as_bytes()).unwrap();
        if *l == "DATA" {
            in_data = true;
            replies.push(read(&mut r));
        } else if in_data {
            if *l == "." {
                in_data = false;
                replies.push(read(&mut r));
            }
        } else {
            replies.push(read(&mut r));
        }
    }
    replies
}

/// `Uid:` and `Gid:` of a process: (real, effective, saved, fs) each.
fn ids(pid: u32) -> (Vec<u32>, Vec<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    (field("Uid:"), field("Gid:"))
}

/// The children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) else {
            continue;
        };
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse::<u32>().ok());
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'));
        if ppid == Some(pid) && !zombie {
            out.push(p);
        }
    }
    out
}

/// The processes holding the listening TCP socket of `port` (from /proc/net/tcp).
fn listeners_of(port: u16) -> Vec<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    let inode = table
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A"))
                .then(|| f.get(9).unwrap().to_string())
        })
        .expect("listening socket in /proc/net/tcp");
    let target = format!("socket:[{inode}]");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{p}/fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()))
        {
            out.push(p);
        }
    }
    out
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    for _ in 0..100_000 {
        let Some(d) = stack.pop() else { break };
        out.push(d.clone());
        if std::fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
        }
    }
    out
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(15), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const MESSAGE: [&str; 4] = ["Subject: privsep", "", "hello", "."];

/// One message to `rcpts` in a session of its own: the replies.
fn send_message(port: u16, rcpts: &[&str]) -> Vec<String> {
    let to: Vec<String> = rcpts.iter().map(|r| format!("RCPT TO:<{r}>")).collect();
    let mut lines = vec!["EHLO client.test", "MAIL FROM:<a@example.org>"];
    lines.extend(to.iter().map(String::as_str));
    lines.push("DATA");
    lines.extend(MESSAGE);
    lines.push("QUIT");
    dialogue(port, &lines)
}

/// The first file to appear in the directory `dir` (waited for).
fn first_file(dir: &Path) -> PathBuf {
    wait_for("a delivered file", || {
        std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
    });
    std::fs::read_dir(dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

/// A temporary directory anyone may search (the network side's user included).
fn searchable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A temporary directory anyone may search, and in it a directory `name` of uid and gid
/// 2000.
fn dir_with_a_dir_of_2000(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = searchable_tempdir();
    let sub = dir.path().join(name);
    std::fs::create_dir(&sub).unwrap();
    nix::unistd::chown(sub.as_path(), Some(2000.into()), Some(2000.into())).unwrap();
    (dir, sub)
}

#[test]
fn network_side_is_unprivileged_and_owns_the_spool() {
    if !is_root() {
        return;
    }
    let user = expected_user();
    let dir = searchable_tempdir();
    // A spool left by a daemon that ran everything as root is taken over at start-up.
    let stale = dir.path().join("spool/corrupt");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("leftover"), "x").unwrap();
    let conf = "listen on 127.0.0.1 port PORT hostname mx.test\n\
                action \"local\" maildir\n\
                match from any for any action \"local\"\n";
    let (d, port) = start(dir.path(), conf, &["-P", "mda"]);
    let daemon = d.0.id();
    // The listeners are bound before the broker is forked and privileges dropped.
    wait_for("the broker and the drop", || {
        !children(daemon).is_empty() && ids(daemon).0.iter().all(|u| *u != 0)
    });

    // The process accepting connections is the daemon, and it runs as the user.
    assert_eq!(listeners_of(port), vec![daemon]);
    let (uids, gids) = ids(daemon);
    assert!(uids.iter().all(|u| *u == user.uid.as_raw()), "{uids:?}");
    assert!(gids.iter().all(|g| *g == user.gid.as_raw()), "{gids:?}");
    // Its one child is the broker, which stays root.
    let kids = children(daemon);
    assert_eq!(kids.len(), 1, "{kids:?}");
    let (uids, _) = ids(kids[0]);
    assert!(uids.iter().all(|u| *u == 0), "{uids:?}");

    // A message waits in the queue (-P mda): every spool file is the user's.
    let replies = send_message(port, &["root@mx.test"]);
    assert!(replies[5].starts_with("250 "), "{replies:?}");
    let spool = dir.path().join("spool");
    let all = files_under(&spool);
    assert!(
        all.iter()
            .any(|p| p.starts_with(spool.join("queue")) && p.is_file()),
        "{all:?}"
    );
    let offline = spool.join("offline");
    for p in all.iter().filter(|p| **p != offline) {
        let m = std::fs::symlink_metadata(p).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (user.uid.as_raw(), user.gid.as_raw()),
            "{}",
            p.display()
        );
    }
    // Except offline/: root's, where anyone may leave a message and only root may look.
    let m = std::fs::symlink_metadata(&offline).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, 0o1733));
}

#[test]
fn forward_read_by_the_broker_and_maildir_written_as_the_userbase_uid() {
    if !is_root() {
        return;
    }
    let dir = searchable_tempdir();
    // fuser's home is private (0700): only root can read its .forward, which sends
    // fuser's mail to vuser, whose maildir is written as uid 2000.
    let fhome = dir.path().join("fhome");
    let vhome = dir.path().join("vhome");
    std::fs::create_dir(&fhome).unwrap();
    std::fs::create_dir(&vhome).unwrap();
    std::fs::write(fhome.join(".forward"), "vuser\n").unwrap();
    std::fs::set_permissions(&fhome, std::fs::Permissions::from_mode(0o700)).unwrap();
    for (p, id) in [
        (&fhome, 2001),
        (&fhome.join(".forward"), 2001),
        (&vhome, 2000),
    ] {
        nix::unistd::chown(p.as_path(), Some(id.into()), Some(id.into())).unwrap();
    }
    let conf = "listen on 127.0.0.1 port PORT hostname mx.test\n\
                table users { fuser = \"2001:2001:DIR/fhome\", vuser = \"2000:2000:DIR/vhome\" }\n\
                action \"local\" maildir userbase <users>\n\
                match from any for domain \"mx.test\" action \"local\"\n";
    let (_d, port) = start(dir.path(), conf, &[]);
    let replies = send_message(port, &["fuser@mx.test"]);
    assert!(replies[3].starts_with("250 "), "{replies:?}");
    assert!(replies[5].starts_with("250 "), "{replies:?}");
    let file = first_file(&vhome.join("Maildir/new"));
    let m = std::fs::metadata(&file).unwrap();
    assert_eq!((m.uid(), m.gid()), (2000, 2000));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("Delivered-To: fuser@mx.test"), "{text}");
    assert!(text.contains("hello"), "{text}");
    assert!(!fhome.join("Maildir").exists());
}

/// Maildir deliveries run in workers the broker starts as the recipient and lends to the
/// network side: they are the broker's children, never the network side's, and a worker
/// killed while idle is replaced for the next message.
#[test]
fn maildir_workers_are_the_brokers_children_and_run_as_the_recipient() {
    if !is_root() {
        return;
    }
    let (dir, vhome) = dir_with_a_dir_of_2000("vhome");
    let conf = "listen on 127.0.0.1 port PORT hostname mx.test\n\
                table users { vuser = \"2000:2000:DIR/vhome\" }\n\
                action \"local\" maildir userbase <users>\n\
                match from any for domain \"mx.test\" action \"local\"\n";
    let (d, port) = start(dir.path(), conf, &[]);
    let daemon = d.0.id();
    let send = || {
        let replies = send_message(port, &["vuser@mx.test"]);
        assert!(replies[5].starts_with("250 "), "{replies:?}");
    };
    let new = vhome.join("Maildir/new");
    let delivered = || std::fs::read_dir(&new).map_or(0, |d| d.count());
    send();
    wait_for("the first delivery", || delivered() == 1);

    let kids = children(daemon);
    assert_eq!(kids.len(), 1, "the broker only: {kids:?}");
    let broker = kids[0];
    let workers = children(broker);
    assert!(!workers.is_empty(), "no worker under the broker");
    for w in &workers {
        let (uids, gids) = ids(*w);
        assert!(uids.iter().all(|u| *u == 2000), "{uids:?}");
        assert!(gids.iter().all(|g| *g == 2000), "{gids:?}");
    }
    // Killed while idle: the next message gets a new worker, and is delivered once.
    for w in &workers {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*w as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    send();
    wait_for("the second delivery", || delivered() == 2);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(delivered(), 2);
    // The broker collects its dead workers (within its reaper's half-second round).
    wait_for("the killed workers collected", || {
        workers
            .iter()
            .all(|w| !std::path::Path::new(&format!("/proc/{w}")).exists())
    });
    let now = children(broker);
    assert!(
        !now.is_empty() && now.iter().all(|w| !workers.contains(w)),
        "{now:?}"
    );
}

/// A home that does not exist means no `.forward`, with OpenSMTPD's warning, logged once
/// per message whichever side sees it.
#[test]
fn a_missing_home_is_warned_about_once_and_the_mail_delivered() {
    if !is_root() {
        return;
    }
    let (dir, md) = dir_with_a_dir_of_2000("md");
    let d = dir.path().display().to_string();
    let conf = format!(
        "listen on 127.0.0.1 port PORT hostname mx.test\n\
         table users {{ vuser = \"2000:2000:{d}/nohome\" }}\n\
         action \"local\" maildir \"{d}/md\" userbase <users>\n\
         match from any for domain \"mx.test\" action \"local\"\n"
    );
    let daemon = common::Daemon::start(dir.path(), &conf, &[]);
    let replies = send_message(daemon.port, &["vuser@mx.test"]);
    assert!(replies[5].starts_with("250 "), "{replies:?}");
    wait_for("the delivery", || {
        std::fs::read_dir(md.join("new")).is_ok_and(|mut e| e.next().is_some())
    });
    let log = daemon.stop();
    let warning =
        format!("warn: smtpd: parent_forward_open: {d}/nohome: No such file or directory");
    assert_eq!(log.matches(&warning).count(), 1, "{warning}\n{log}");
    assert_eq!(log.matches(" result=Ok ").count(), 1, "{log}");
}

/// The unprivileged side answers "no .forward" itself only when it can see there is none;
/// a `.forward` in a home it can search is still read (by the broker) and obeyed.
#[test]
fn forward_in_a_searchable_home_is_obeyed_and_a_missing_one_delivers_locally() {
    if !is_root() {
        return;
    }
    let dir = searchable_tempdir();
    let (ghome, hhome, vhome) = (
        dir.path().join("ghome"),
        dir.path().join("hhome"),
        dir.path().join("vhome"),
    );
    for (home, id) in [(&ghome, 2002), (&hhome, 2003), (&vhome, 2000)] {
        std::fs::create_dir(home).unwrap();
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o755)).unwrap();
        nix::unistd::chown(home.as_path(), Some(id.into()), Some(id.into())).unwrap();
    }
    std::fs::write(ghome.join(".forward"), "vuser\n").unwrap();
    nix::unistd::chown(
        &ghome.join(".forward"),
        Some(2002.into()),
        Some(2002.into()),
    )
    .unwrap();
    let conf = "listen on 127.0.0.1 port PORT hostname mx.test\n\
                table users { guser = \"2002:2002:DIR/ghome\", huser = \"2003:2003:DIR/hhome\", vuser = \"2000:2000:DIR/vhome\" }\n\
                action \"local\" maildir userbase <users>\n\
                match from any for domain \"mx.test\" action \"local\"\n";
    let (_d, port) = start(dir.path(), conf, &[]);
    let replies = send_message(port, &["guser@mx.test", "huser@mx.test"]);
    assert!(replies[3].starts_with("250 "), "{replies:?}");
    assert!(replies[4].starts_with("250 "), "{replies:?}");
    for new in [vhome.join("Maildir/new"), hhome.join("Maildir/new")] {
        wait_for("deliveries", || {
            std::fs::read_dir(&new).is_ok_and(|mut d| d.next().is_some())
        });
    }
    assert!(
        !ghome.join("Maildir").exists(),
        "guser's mail was forwarded"
    );
    let file = first_file(&hhome.join("Maildir/new"));
    let m = std::fs::metadata(&file).unwrap();
    assert_eq!((m.uid(), m.gid()), (2003, 2003));
}

#[test]
fn system_accounts_are_checked_by_the_broker() {
    if !is_root() {
        return;
    }
    let dir = searchable_tempdir();
    let conf = "listen on 127.0.0.1 port PORT auth hostname mx.test auth-plaintext\n\
                action \"local\" maildir\n\
                match from any for domain \"mx.test\" action \"local\"\n";
    let (_d, port) = start(dir.path(), conf, &["-P", "mda"]);
    // The unprivileged side cannot read the shadow file (it would answer 421 4.3.0): the
    // broker can, and an account that does not exist is a plain 535.
    let plain = |user: &str, password: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
    };
    let a = format!(
        "AUTH PLAIN {}",
        plain("no-such-account-here", "some password")
    );
    let replies = dialogue(port, &["EHLO client.test", &a, "QUIT"]);
    assert!(replies[2].starts_with("535 "), "{replies:?}");
}

#[test]
fn the_daemon_exits_when_the_broker_dies_and_the_other_way_round() {
    if !is_root() {
        return;
    }
    let dir = searchable_tempdir();
    let conf = "listen on 127.0.0.1 port PORT hostname mx.test\n\
                action \"local\" maildir\n\
                match from any for any action \"local\"\n";
    // The broker killed: the daemon logs it and exits with a failure.
    let (mut d, _) = start(dir.path(), conf, &[]);
    // The listeners are bound before the broker is forked: wait for it.
    wait_for("the broker", || !children(d.0.id()).is_empty());
    let kids = children(d.0.id());
    assert_eq!(kids.len(), 1, "{kids:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(kids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut status = None;
    wait_for("the daemon to exit", || {
        status = d.0.try_wait().unwrap();
        status.is_some()
    });
    assert!(!status.unwrap().success());

    // The daemon killed: the broker, now alone, exits too.
    let dir = searchable_tempdir();
    let (mut d, _) = start(dir.path(), conf, &[]);
    // The listeners are bound before the broker is forked: wait for it.
    wait_for("the broker", || !children(d.0.id()).is_empty());
    let kids = children(d.0.id());
    assert_eq!(kids.len(), 1, "{kids:?}");
    let broker = kids[0];
    d.0.kill().unwrap();
    d.0.wait().unwrap();
    wait_for("the broker to exit", || {
        std::fs::read_to_string(format!("/proc/{broker}/status")).map_or(true, |s| {
            s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
    });
}
