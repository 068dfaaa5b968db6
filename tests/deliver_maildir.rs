//! Maildir deliveries through the delivery agent, checked byte for byte on
//! disk: the headers OpenSMTPD prepends, format-specifier paths, `.Junk`,
//! the loop check, refusals, and (as root) the identity of the files.

mod deliver_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use deliver_support::*;
use smtpd::deliver::log::MdaLogEntry;
use smtpd::deliver::{Account, DeliveryRequest, DeliveryResult, Method, Status, mda_delivery_line};

helper_entry!();

#[test]
fn delivers_with_return_path_and_delivered_to() {
    let home = recipient_dir();
    let user = recipient("foo", home.path());
    let msg = queued(MESSAGE);
    let env = envelope("alice@client.example", "abuse@bsdsx.fr", "foo@bsdsx.fr");
    let result = agent().deliver_blocking(request(
        Method::Maildir {
            path: None,
            junk: false,
        },
        user,
        env,
        &msg,
    ));
    assert_eq!(result, DeliveryResult::delivered());

    let file = only_file(&home.path().join("Maildir/new"));
    let expected =
        format!("Return-Path: <alice@client.example>\nDelivered-To: abuse@bsdsx.fr\n{MESSAGE}");
    assert_eq!(fs::read_to_string(&file).unwrap(), expected);
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::read_dir(home.path().join("Maildir/tmp"))
            .unwrap()
            .count(),
        0
    );
    assert!(home.path().join("Maildir/cur").is_dir());

    let line = mda_delivery_line(
        &MdaLogEntry {
            group_id: 0xfc386ee3662a9183,
            evpid: 0xf952a52e081dd929,
            sender: "alice@client.example",
            dest: "foo@bsdsx.fr",
            rcpt: "abuse@bsdsx.fr",
            user: "foo",
            delay_secs: 0,
        },
        &result,
    );
    println!("{line}");
    assert_eq!(
        line,
        "fc386ee3662a9183 mda delivery evpid=f952a52e081dd929 from=<alice@client.example> to=<foo@bsdsx.fr> \
         rcpt=<abuse@bsdsx.fr> user=foo delay=0s result=Ok stat=Delivered"
    );
}

#[test]
fn null_sender_has_no_return_path() {
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let env = envelope("", "foo@bsdsx.fr", "foo@bsdsx.fr");
    let req = request(
        Method::Maildir {
            path: None,
            junk: false,
        },
        recipient("foo", home.path()),
        env,
        &msg,
    );
    assert_eq!(agent().deliver_blocking(req).status, Status::Ok);
    let text = fs::read_to_string(only_file(&home.path().join("Maildir/new"))).unwrap();
    assert_eq!(text, format!("Delivered-To: foo@bsdsx.fr\n{MESSAGE}"));
}

#[test]
fn format_specifiers_name_the_maildir_as_opensmtpd_does() {
    let root = recipient_dir();
    let template = format!("{}/%{{rcpt}}", root.path().display());
    let cases = [
        // Case preserved (observed), `?` escaped to `:`, `/` kept.
        ("Foo+Tag@EXAMPLE.ORG", "Foo+Tag@EXAMPLE.ORG"),
        ("user+t?g@example.org", "user+t:g@example.org"),
        ("a/b@example.org", "a/b@example.org"),
    ];
    for (rcpt, dir) in cases {
        let msg = queued(MESSAGE);
        let method = Method::Maildir {
            path: Some(template.clone()),
            junk: true,
        };
        let req = request(
            method,
            recipient("foo", root.path()),
            envelope("s@x.test", rcpt, "foo@example.org"),
            &msg,
        );
        assert_eq!(agent().deliver_blocking(req).status, Status::Ok, "{rcpt}");
        let maildir = root.path().join(dir);
        let text = fs::read_to_string(only_file(&maildir.join("new"))).unwrap();
        assert!(
            text.starts_with(&format!("Return-Path: <s@x.test>\nDelivered-To: {rcpt}\n")),
            "{text}"
        );
        // `junk` creates .Junk even for mail that is not spam (observed).
        for sub in [".Junk/new", ".Junk/cur", ".Junk/tmp"] {
            assert!(maildir.join(sub).is_dir(), "{rcpt}: {sub}");
        }
    }
    // `~/` is the userbase home; a range takes bytes of the value.
    let msg = queued(MESSAGE);
    let method = Method::Maildir {
        path: Some("~/by-domain/%{rcpt.domain[0:2]}/%{dest.user:lowercase}".into()),
        junk: false,
    };
    let req = request(
        method,
        recipient("foo", root.path()),
        envelope("s@x.test", "x@EXAMPLE.ORG", "Alice@example.org"),
        &msg,
    );
    assert_eq!(agent().deliver_blocking(req).status, Status::Ok);
    only_file(&root.path().join("by-domain/EXA/alice/new"));
}

#[test]
fn spam_goes_to_junk_new() {
    let home = recipient_dir();
    let spam = format!("X-Spam: Yes\n{MESSAGE}");
    let msg = queued(&spam);
    let method = Method::Maildir {
        path: None,
        junk: true,
    };
    let req = request(
        method,
        recipient("foo", home.path()),
        envelope("a@b.test", "foo@bsdsx.fr", "foo@bsdsx.fr"),
        &msg,
    );
    assert_eq!(agent().deliver_blocking(req).status, Status::Ok);
    let file = only_file(&home.path().join("Maildir/.Junk/new"));
    assert_eq!(
        fs::read_to_string(file).unwrap(),
        format!("Return-Path: <a@b.test>\nDelivered-To: foo@bsdsx.fr\n{spam}")
    );
    assert_eq!(
        fs::read_dir(home.path().join("Maildir/new"))
            .unwrap()
            .count(),
        0
    );

    // Without `junk`, the same message stays in new/.
    let msg = queued(&spam);
    let method = Method::Maildir {
        path: None,
        junk: false,
    };
    let req = request(
        method,
        recipient("foo", home.path()),
        envelope("a@b.test", "foo@bsdsx.fr", "foo@bsdsx.fr"),
        &msg,
    );
    assert_eq!(agent().deliver_blocking(req).status, Status::Ok);
    only_file(&home.path().join("Maildir/new"));
}

#[test]
fn loop_detected_is_permanent_and_delivers_nothing() {
    let home = recipient_dir();
    let looped = format!("Delivered-To: FOO@bsdsx.fr\n{MESSAGE}");
    let msg = queued(&looped);
    let method = Method::Maildir {
        path: None,
        junk: false,
    };
    let req = request(
        method,
        recipient("foo", home.path()),
        envelope("a@b.test", "abuse@bsdsx.fr", "foo@bsdsx.fr"),
        &msg,
    );
    let result = agent().deliver_blocking(req);
    assert_eq!(
        (result.status, result.stat.as_str()),
        (Status::PermFail, "Loop detected")
    );
    assert!(!home.path().join("Maildir").exists());
}

#[test]
fn unusable_maildir_is_a_temporary_failure_with_mail_maildir_text() {
    let home = recipient_dir();
    let blocker = home.path().join("Maildir");
    fs::write(&blocker, "not a directory").unwrap();
    if is_root() {
        std::os::unix::fs::chown(&blocker, Some(TEST_UID), Some(TEST_UID)).unwrap();
    }
    let msg = queued(MESSAGE);
    let method = Method::Maildir {
        path: None,
        junk: false,
    };
    let req = request(
        method,
        recipient("foo", home.path()),
        envelope("a@b.test", "foo@x.test", "foo@x.test"),
        &msg,
    );
    let result = agent().deliver_blocking(req);
    assert_eq!(result.status, Status::TempFail);
    assert_eq!(
        result.stat,
        "Error (temporary failure: \"mail.maildir: Not a directory\")"
    );
    assert_eq!(result.error, "\"mail.maildir: Not a directory\"");
}

#[test]
fn bad_format_is_a_permanent_failure() {
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let method = Method::Maildir {
        path: Some("/tmp/%{rcpt.user[0]:lowercase}".into()),
        junk: false,
    };
    let req = request(
        method,
        recipient("foo", home.path()),
        envelope("a@b.test", "foo@x.test", "foo@x.test"),
        &msg,
    );
    let result = agent().deliver_blocking(req);
    assert_eq!(result.status, Status::PermFail);
    assert_eq!(
        result.stat,
        "Error (\"smtpd: mda command line could not be expanded\")"
    );
}

#[test]
fn root_is_refused_except_for_mbox() {
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let root = Account {
        name: "root".into(),
        uid: 0,
        gid: 0,
        home: home.path().display().to_string(),
    };
    let req = request(
        Method::Maildir {
            path: None,
            junk: false,
        },
        root,
        envelope("a@b", "root@x", "root@x"),
        &msg,
    );
    let result = agent().deliver_blocking(req);
    assert_eq!(result.status, Status::PermFail);
    assert_eq!(
        result.stat,
        "Error (permission denied: not allowed to deliver to: root)"
    );
    assert!(!home.path().join("Maildir").exists());
}

#[test]
fn files_belong_to_the_recipient() {
    if skip_unless_root("checking that maildir files belong to uid 2000") {
        return;
    }
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let req = request(
        Method::Maildir {
            path: None,
            junk: true,
        },
        recipient("vmail", home.path()),
        envelope("a@b.test", "foo@x.test", "foo@x.test"),
        &msg,
    );
    assert_eq!(agent().deliver_blocking(req).status, Status::Ok);
    let file = only_file(&home.path().join("Maildir/new"));
    assert_eq!(owner(&file), (TEST_UID, TEST_UID));
    for dir in [
        "Maildir",
        "Maildir/new",
        "Maildir/.Junk",
        "Maildir/.Junk/new",
    ] {
        assert_eq!(owner(&home.path().join(dir)), (TEST_UID, TEST_UID), "{dir}");
    }
    println!(
        "delivered as uid/gid {:?}: {}",
        owner(&file),
        file.display()
    );
}

#[test]
fn user_option_runs_as_that_user_but_formats_with_the_recipient() {
    if skip_unless_root("`user NAME` identity change") {
        return;
    }
    let root = recipient_dir();
    let msg = queued(MESSAGE);
    let mut req = request(
        Method::Maildir {
            path: Some(format!("{}/%{{user.username}}", root.path().display())),
            junk: false,
        },
        Account {
            name: "foo".into(),
            uid: 3000,
            gid: 3000,
            home: "/nonexistent".into(),
        },
        envelope("a@b.test", "foo@x.test", "foo@x.test"),
        &msg,
    );
    req.run_as = Some(recipient("vmail", root.path()));
    assert_eq!(agent().deliver_blocking(req).status, Status::Ok);
    let file = only_file(&root.path().join("foo/new"));
    assert_eq!(owner(&file), (TEST_UID, TEST_UID));
}

#[tokio::test]
async fn async_delivery_from_tokio() {
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let req = request(
        Method::Maildir {
            path: None,
            junk: false,
        },
        recipient("foo", home.path()),
        envelope("a@b.test", "foo@x.test", "foo@x.test"),
        &msg,
    );
    assert_eq!(agent().deliver(req).await, DeliveryResult::delivered());
    only_file(&home.path().join("Maildir/new"));
}

/// The production helper is `/proc/self/exe`, executed after the uid/gid
/// change: the recipient must still be able to start it.
#[test]
fn helper_starts_from_proc_self_exe_after_the_identity_change() {
    if skip_unless_root("re-executing /proc/self/exe as uid 2000") {
        return;
    }
    let args = smtpd::deliver::HelperProgram::test_harness("deliver_helper_entry").args;
    let helper = smtpd::deliver::HelperProgram {
        program: "/proc/self/exe".into(),
        args,
    };
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let req = request(
        Method::Maildir {
            path: None,
            junk: false,
        },
        recipient("vmail", home.path()),
        envelope("a@b.test", "foo@x.test", "foo@x.test"),
        &msg,
    );
    let result = smtpd::deliver::DeliveryAgent::new()
        .with_helper(helper)
        .deliver_blocking(req);
    assert_eq!(result, DeliveryResult::delivered());
    assert_eq!(
        owner(&only_file(&home.path().join("Maildir/new"))),
        (TEST_UID, TEST_UID)
    );
}

/// A helper that cannot be started is a temporary failure, not a panic.
#[test]
fn missing_helper_is_a_temporary_failure() {
    if skip_unless_root("starting a helper (only root uses one)") {
        return;
    }
    let helper = smtpd::deliver::HelperProgram {
        program: "/nonexistent/smtpd".into(),
        args: Vec::new(),
    };
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let req = request(
        Method::Maildir {
            path: None,
            junk: false,
        },
        recipient("vmail", home.path()),
        envelope("a@b.test", "foo@x.test", "foo@x.test"),
        &msg,
    );
    let result = smtpd::deliver::DeliveryAgent::new()
        .with_helper(helper)
        .deliver_blocking(req);
    assert_eq!(result.status, Status::TempFail);
    assert_eq!(
        result.stat,
        "Error (system resource problem: fork: No such file or directory)"
    );

    // A program that is not a helper reports nothing: also temporary.
    let not_helper = smtpd::deliver::HelperProgram {
        program: "/bin/true".into(),
        args: Vec::new(),
    };
    let msg = queued(MESSAGE);
    let req = request(
        Method::Maildir {
            path: None,
            junk: false,
        },
        recipient("vmail", home.path()),
        envelope("a@b.test", "foo@x.test", "foo@x.test"),
        &msg,
    );
    let result = smtpd::deliver::DeliveryAgent::new()
        .with_helper(not_helper)
        .deliver_blocking(req);
    assert_eq!(result.status, Status::TempFail);
    assert_eq!(
        result.stat,
        "Error (temporary failure: \"smtpd: delivery helper failed: exit status 0\")"
    );
}

/// A maildir delivery to `rcpt` for the test recipient whose home is `home`.
fn maildir_request(home: &std::path::Path, rcpt: &str, msg: &QueuedMessage) -> DeliveryRequest {
    request(
        Method::Maildir {
            path: None,
            junk: false,
        },
        recipient("vmail", home),
        envelope("a@b.test", rcpt, "foo@x.test"),
        msg,
    )
}

/// Kills `pid` and waits (bounded) until it has died.
fn kill_and_wait(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for _ in 0..200 {
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.is_empty() || state.contains(") Z") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn one_worker_serves_a_mailbox_and_a_lost_worker_is_replaced() {
    if skip_unless_root("delivery workers (only root uses them)") {
        return;
    }
    let agent = agent();
    let home = recipient_dir();
    let deliver = |agent: &smtpd::deliver::DeliveryAgent| {
        let msg = queued(MESSAGE);
        let result = agent.deliver_blocking(maildir_request(home.path(), "foo@x.test", &msg));
        assert_eq!(result.status, Status::Ok, "{result:?}");
    };
    let mut seen = Vec::new();
    for _ in 0..3 {
        deliver(&agent);
        seen.push(agent.worker_pids());
    }
    // One process delivered all three, and it is the recipient's.
    assert_eq!(seen[0].len(), 1, "{seen:?}");
    assert!(seen.iter().all(|p| p == &seen[0]), "{seen:?}");
    let pid = seen[0][0];
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some(TEST_UID.to_string().as_str())
    );
    let new = home.path().join("Maildir/new");
    assert_eq!(fs::read_dir(&new).unwrap().count(), 3);
    for entry in fs::read_dir(&new).unwrap() {
        assert_eq!(owner(&entry.unwrap().path()), (TEST_UID, TEST_UID));
    }

    // A worker killed while idle is replaced, and the job is not lost.
    kill_and_wait(pid);
    deliver(&agent);
    let now = agent.worker_pids();
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], pid);
    assert_eq!(fs::read_dir(&new).unwrap().count(), 4);
}

#[test]
fn concurrent_deliveries_to_one_mailbox_share_workers_and_directory_fsyncs() {
    if skip_unless_root("delivery workers (only root uses them)") {
        return;
    }
    let agent = agent();
    let home = recipient_dir();
    let results: Vec<Status> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let agent = agent.clone();
                let home = home.path().to_path_buf();
                scope.spawn(move || {
                    let msg = queued(MESSAGE);
                    let req = request(
                        Method::Maildir {
                            path: None,
                            junk: false,
                        },
                        recipient("vmail", &home),
                        envelope("a@b.test", &format!("foo+{i}@x.test"), "foo@x.test"),
                        &msg,
                    );
                    agent.deliver_blocking(req).status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().all(|s| *s == Status::Ok), "{results:?}");
    let new = home.path().join("Maildir/new");
    assert_eq!(fs::read_dir(&new).unwrap().count(), 40);
    let (jobs, batches) = agent.worker_counts();
    assert_eq!(jobs, 40);
    // At most WORKERS_PER_IDENTITY workers at a time for one identity: the rest waited
    // and went in batches, each batch with one fsync of `new/`.
    assert!(batches < jobs, "{batches} batches for {jobs} jobs");
    let most = smtpd::deliver::worker::WORKERS_PER_IDENTITY;
    assert!(
        agent.worker_pids().len() <= most,
        "{:?}",
        agent.worker_pids()
    );
    println!("40 concurrent deliveries: {batches} batches");
}

/// The broker's side of a lent worker: started as the asked identity (never root), a child
/// of the lender, ended by the borrower closing its socket, and how it ended told once.
#[test]
fn lent_workers_run_as_their_identity_and_their_end_is_told_once() {
    if skip_unless_root("delivery workers (only root starts them)") {
        return;
    }
    let agent = agent();
    assert!(agent.lease_worker(0, 0).is_err());
    assert!(agent.lease_worker(0, TEST_UID).is_err());
    assert!(agent.end_worker_lease(std::process::id()).is_none());

    let (socket, pid) = agent.lease_worker(TEST_UID, TEST_UID).unwrap();
    let field = |name: &str| {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .unwrap()
            .to_string()
    };
    // The worker changes identity as it starts, before it reads its socket.
    for _ in 0..500 {
        if field("Uid:") != "0" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(field("Uid:"), TEST_UID.to_string());
    assert_eq!(field("Gid:"), TEST_UID.to_string());
    assert_eq!(field("PPid:"), std::process::id().to_string());
    // Its socket closed, the worker exits by itself, normally.
    drop(socket);
    let ended = agent.end_worker_lease(pid).unwrap();
    assert_eq!(
        ended.last_line.as_deref(),
        Some(&b"smtpd: delivery helper failed: exit status 0"[..]),
        "{ended:?}"
    );
    assert!(agent.end_worker_lease(pid).is_none());

    // One killed during its lease: the signal is what the borrower learns.
    let (socket, pid) = agent.lease_worker(TEST_UID, TEST_UID).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(socket);
    let ended = agent.end_worker_lease(pid).unwrap();
    assert_eq!(ended.exit, smtpd::deliver::Exit::Signal(9), "{ended:?}");
}

/// Every idle worker of a mailbox killed: the next delivery is not failed for it, whichever
/// dead worker it meets first.
#[test]
fn a_delivery_outlives_all_idle_workers_dying() {
    if skip_unless_root("delivery workers (only root uses them)") {
        return;
    }
    let agent = agent();
    let home = recipient_dir();
    let deliver = |agent: &smtpd::deliver::DeliveryAgent, i: usize| {
        let msg = queued(MESSAGE);
        let rcpt = format!("foo+{i}@x.test");
        agent
            .deliver_blocking(maildir_request(home.path(), &rcpt, &msg))
            .status
    };
    // Concurrent deliveries until the mailbox has two workers (bounded).
    let most = smtpd::deliver::worker::WORKERS_PER_IDENTITY;
    for round in 0..50 {
        if agent.worker_pids().len() >= most.min(2) {
            break;
        }
        std::thread::scope(|scope| {
            for i in 0..8 {
                let agent = agent.clone();
                let deliver = &deliver;
                scope.spawn(move || assert_eq!(deliver(&agent, round * 8 + i), Status::Ok));
            }
        });
    }
    let pids = agent.worker_pids();
    assert!(pids.len() >= most.min(2), "{pids:?}");
    for &pid in &pids {
        kill_and_wait(pid);
    }
    let before = fs::read_dir(home.path().join("Maildir/new"))
        .unwrap()
        .count();
    assert_eq!(deliver(&agent, 10_000), Status::Ok);
    let after = fs::read_dir(home.path().join("Maildir/new"))
        .unwrap()
        .count();
    assert_eq!(after, before + 1);
}

/// A pool keeps at most its number of workers over all identities: a mailbox that needs
/// one more gets it by closing the one idle longest, and every delivery succeeds.
#[test]
fn the_worker_pool_closes_the_longest_idle_worker_when_full() {
    if skip_unless_root("delivery workers (only root uses them)") {
        return;
    }
    let agent = agent().with_max_workers(2);
    let mut homes = Vec::new();
    for uid in [TEST_UID, TEST_UID + 1, TEST_UID + 2] {
        let home = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(home.path(), Some(uid), Some(uid)).unwrap();
        homes.push((uid, home));
    }
    let mut first_pid = None;
    for (round, (uid, home)) in homes.iter().enumerate() {
        let msg = queued(MESSAGE);
        let mut req = maildir_request(home.path(), "foo@x.test", &msg);
        req.userinfo.uid = *uid;
        req.userinfo.gid = *uid;
        assert_eq!(agent.deliver_blocking(req).status, Status::Ok);
        let pids = agent.worker_pids();
        assert_eq!(pids.len(), (round + 1).min(2), "{pids:?}");
        if round == 0 {
            first_pid = Some(pids[0]);
        }
        let new = home.path().join("Maildir/new");
        assert_eq!(fs::read_dir(&new).unwrap().count(), 1);
    }
    // The third identity's worker took the place of the first one's.
    let first_pid = first_pid.unwrap();
    assert!(!agent.worker_pids().contains(&first_pid));
    let state = fs::read_to_string(format!("/proc/{first_pid}/stat")).unwrap_or_default();
    assert!(state.is_empty() || state.contains(") Z"), "{state}");
}
