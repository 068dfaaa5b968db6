//! Signals an administrator sends the running daemon. SIGHUP (a `reload`, or the terminal of
//! `smtpd -d` hanging up) stops neither smtpd nor its privileged broker, as OpenSMTPD
//! ignores it too: the log says the configuration is not reloaded, and mail is still
//! received and delivered. SIGTERM ends both, in order, also when it reaches every process
//! at once (a service manager's stop).

mod common;

use common::{Daemon, files_under, send_mail, vmail};
use std::time::{Duration, Instant};

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces, so read after the last `)`.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

fn hangup(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("send SIGHUP");
}

/// SIGTERM to every process of `targets` (as a service manager's stop sends it); the
/// daemon's exit status, waited for (at most 10 s).
fn terminate_all(d: &mut Daemon, targets: &[u32]) -> std::process::ExitStatus {
    for pid in targets {
        // A process may be gone already (a program that ended first).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let t = Instant::now();
    loop {
        if let Some(s) = d.try_status() {
            return s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn delivered(dir: &std::path::Path, n: usize) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        if files_under(dir).len() >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn sighup_stops_neither_the_daemon_nor_its_broker() {
    let dir = tempfile::tempdir().unwrap();
    let (vmail, ids) = vmail(dir.path());
    let conf = format!(
        "table users {{ alice = \"{ids}:/var/empty\" }}\n\
         listen on 127.0.0.1 port PORT\n\
         action \"local\" maildir \"{}/%{{user.username}}\" userbase <users>\n\
         match from any for domain \"example.org\" action \"local\"\n",
        vmail.display()
    );
    let mut d = Daemon::start(dir.path(), &conf, &[]);
    let r = send_mail(
        d.port,
        "bob@remote.test",
        "alice@example.org",
        "Subject: one\r\n\r\n",
    );
    assert!(r[5].starts_with("250 2.0.0"), "{r:?}");
    assert!(delivered(&vmail.join("alice/new"), 1), "{}", d.log());
    // The daemon and every process it started (the broker when run as root), as a
    // terminal's hangup would reach them.
    let mut targets = vec![d.pid()];
    targets.extend(children(d.pid()));
    for pid in &targets {
        hangup(*pid);
    }
    assert!(
        d.wait_log("SIGHUP received: the configuration is not reloaded", 10),
        "{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.is_running(), "smtpd ended on SIGHUP: {}", d.log());
    // Still receiving and delivering (through the broker, when there is one).
    let r = send_mail(
        d.port,
        "bob@remote.test",
        "alice@example.org",
        "Subject: two\r\n\r\n",
    );
    assert!(r[5].starts_with("250 2.0.0"), "{r:?}");
    assert!(delivered(&vmail.join("alice/new"), 2), "{}", d.log());
    let log = d.stop();
    assert!(!log.contains("broker exited"), "{log}");
    assert!(log.contains("Exiting"), "{log}");
}

/// SIGTERM to the daemon and its broker at once, as `systemctl stop` sends it: the daemon
/// exits in order, with status 0, and does not take the broker's end for a crash.
#[test]
fn sigterm_to_every_process_is_an_orderly_stop() {
    let dir = tempfile::tempdir().unwrap();
    let conf = "listen on 127.0.0.1 port PORT\n\
                action \"l\" mbox\n\
                match from local for local action \"l\"\n";
    let mut d = Daemon::start(dir.path(), conf, &[]);
    // Serving: a banner comes only once the daemon has taken its signals over.
    assert!(common::dialogue(d.port, &["QUIT"])[0].starts_with("220 "));
    let mut targets = children(d.pid());
    targets.insert(0, d.pid());
    let status = terminate_all(&mut d, &targets);
    let log = d.stop();
    assert!(status.success(), "{status:?}: {log}");
    assert!(log.contains("Exiting"), "{log}");
    assert!(!log.contains("broker exited"), "{log}");
    // The broker is gone too.
    std::thread::sleep(Duration::from_millis(200));
    for pid in &targets[1..] {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "process {pid} is still running"
        );
    }
}

/// The same stop with a filter program running: the program ends with the others, which is
/// not the `lost processor` failure it would be while smtpd runs.
#[test]
fn sigterm_to_every_process_with_a_filter_program() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let prog = dir.path().join("f.sh");
    std::fs::write(
        &prog,
        "#!/bin/sh\n\
         while IFS= read -r l; do [ \"$l\" = \"config|ready\" ] && break; done\n\
         echo 'register|report|smtp-in|link-connect'\n\
         echo 'register|ready'\n\
         while IFS= read -r l; do :; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = format!(
        "filter \"f\" proc-exec \"{}\"\n\
         listen on 127.0.0.1 port PORT filter \"f\"\n\
         action \"l\" mbox\n\
         match from local for local action \"l\"\n",
        prog.display()
    );
    let mut d = Daemon::start(dir.path(), &conf, &[]);
    assert!(common::dialogue(d.port, &["QUIT"])[0].starts_with("220 "));
    // The daemon, the broker, the program (and the broker's children, if any).
    let mut targets = vec![d.pid()];
    for _ in 0..3 {
        let more: Vec<u32> = targets.iter().flat_map(|p| children(*p)).collect();
        for p in more {
            if !targets.contains(&p) {
                targets.push(p);
            }
        }
    }
    assert!(targets.len() >= 2, "no filter program among {targets:?}");
    let status = terminate_all(&mut d, &targets);
    let log = d.stop();
    assert!(status.success(), "{status:?}: {log}");
    assert!(!log.contains("lost processor"), "{log}");
}

/// Started as a daemon (no `-d`), smtpd writes its pid file, as init scripts expect
/// (`start-stop-daemon --stop --pidfile`); SIGTERM to that pid stops it, and the pid file
/// goes with it.
#[test]
fn the_pid_file_names_the_daemon_until_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let conf = dir.path().join("smtpd.conf");
    std::fs::write(
        &conf,
        format!(
            "listen on 127.0.0.1 port {port}\n\
             action \"l\" mbox\n\
             match from local for local action \"l\"\n"
        ),
    )
    .unwrap();
    let pidfile = dir.path().join("smtpd.pid");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smtpd"))
        .arg("-f")
        .arg(&conf)
        .arg("--spool")
        .arg(dir.path().join("spool"))
        .arg("--resolv-conf")
        .arg("/nonexistent")
        .arg("--pidfile")
        .arg(&pidfile)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The parent returned; the daemon writes its pid (whole: the file appears complete)
    // and answers.
    let t = Instant::now();
    while !pidfile.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no pid file");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&pidfile).unwrap();
    assert!(text.ends_with('\n'), "{text:?}");
    let pid: i32 = text.trim().parse().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("smtpd"),
        "{cmdline:?}"
    );
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "smtpd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = common::dialogue(port, &["QUIT"]);
    assert!(r[0].starts_with("220 "), "{r:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let t = Instant::now();
    // Ended: gone, or a zombie waiting for whatever reaps orphans here.
    let running = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    };
    while running(pid) || pidfile.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "smtpd did not end, or left its pid file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
