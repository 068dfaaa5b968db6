//! `mda` commands and `|command` destinations through the delivery agent:
//! what the program gets (environment, stdin, identity, directory), how its
//! end is reported, and that no envelope text can run as shell code
//! (CVE-2020-7247 and the `raw` modifier).

mod deliver_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use deliver_support::*;
use smtpd::deliver::{DeliveryResult, EnvelopeInfo, Method, Status};

helper_entry!();

/// A script that records its environment, arguments, identity, directory
/// and stdin into files under `out`, then exits with `$1` (default 0).
fn recorder(dir: &Path) -> String {
    let script = dir.join("record.sh");
    fs::write(
        &script,
        "#!/bin/sh\n\
         out=\"$(dirname \"$0\")\"\n\
         env | sort > \"$out/env\"\n\
         printf '%s\\n' \"$@\" > \"$out/args\"\n\
         id -u > \"$out/uid\"; id -g >> \"$out/uid\"\n\
         pwd > \"$out/pwd\"\n\
         cat > \"$out/stdin\"\n",
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script.display().to_string()
}

fn mda(command: String) -> Method {
    Method::Mda { command }
}

#[test]
fn program_gets_opensmtpd_environment_and_message() {
    let home = recipient_dir();
    let script = recorder(home.path());
    let msg = queued(MESSAGE);
    let user = recipient("foo", home.path());
    let env = EnvelopeInfo {
        subaddress: "ext".into(),
        ..envelope("Sender@Example.NET", "Foo+Ext@MDA.test", "Foo+Ext@MDA.test")
    };
    let result = agent().deliver_blocking(request(
        mda(format!("{script} %{{rcpt.user:strip}} %{{mbox.from}}")),
        user.clone(),
        env,
        &msg,
    ));
    assert_eq!(result, DeliveryResult::delivered());

    let out = home.path();
    let mut env: Vec<String> = fs::read_to_string(out.join("env"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    env.retain(|v| {
        !v.starts_with("PWD=")
            && !v.starts_with("SHLVL=")
            && !v.starts_with("_=")
            && !v.starts_with("OLDPWD=")
    });
    let expected = [
        "DOMAIN=MDA.test".to_string(),
        "EXTENSION=ext".to_string(),
        format!("HOME={}", out.display()),
        "LOCAL=Foo+Ext".to_string(),
        "LOGNAME=foo".to_string(),
        "PATH=/bin:/usr/bin".to_string(),
        "RECIPIENT=Foo+Ext@MDA.test".to_string(),
        "SENDER=Sender@Example.NET".to_string(),
        "SHELL=/bin/sh".to_string(),
        "USER=foo".to_string(),
    ];
    assert_eq!(env, expected);
    assert_eq!(
        fs::read_to_string(out.join("args")).unwrap(),
        "Foo\nSender@Example.NET\n"
    );
    assert_eq!(
        fs::read_to_string(out.join("pwd")).unwrap().trim(),
        out.display().to_string()
    );
    assert_eq!(
        fs::read_to_string(out.join("stdin")).unwrap(),
        format!("Return-Path: <Sender@Example.NET>\nDelivered-To: Foo+Ext@MDA.test\n{MESSAGE}")
    );
    let ids = fs::read_to_string(out.join("uid")).unwrap();
    assert_eq!(ids, format!("{}\n{}\n", user.uid, user.gid));
    println!("mda ran as uid/gid {}", ids.replace('\n', " "));
}

#[test]
fn exit_statuses_map_like_opensmtpd() {
    let home = recipient_dir();
    let cases: &[(&str, Status, &str)] = &[
        ("cat >/dev/null; exit 0", Status::Ok, "Delivered"),
        (
            "cat >/dev/null; echo 'custom failure message' >&2; exit 67",
            Status::PermFail,
            "Error (user unknown: \"custom failure message\")",
        ),
        (
            "cat >/dev/null; echo 'temp failure'; exit 75",
            Status::TempFail,
            "Error (temporary failure: \"temp failure\")",
        ),
        (
            "cat >/dev/null; exit 71",
            Status::TempFail,
            "Error (system resource problem: exited abnormally)",
        ),
        (
            "cat >/dev/null; echo 'odd code'; exit 2",
            Status::PermFail,
            "Error (\"odd code\")",
        ),
        (
            "cat >/dev/null; printf 'tab\\there\\001'; exit 1",
            Status::PermFail,
            "Error (\"tab\there\\^A\")",
        ),
        // mail.mda turns a signal into exit 75.
        (
            "cat >/dev/null; kill -SEGV $$",
            Status::TempFail,
            "Error (temporary failure: exited abnormally)",
        ),
    ];
    for (command, status, stat) in cases {
        let msg = queued(MESSAGE);
        let req = request(
            mda(command.to_string()),
            recipient("foo", home.path()),
            envelope("a@b.test", "foo@x.test", "foo@x.test"),
            &msg,
        );
        let result = agent().deliver_blocking(req);
        assert_eq!(
            (result.status, result.stat.as_str()),
            (*status, *stat),
            "{command}"
        );
    }
    // A pipe from an alias is not run by mail.mda: the signal shows.
    let msg = queued(MESSAGE);
    let pipe = Method::Pipe {
        command: "cat >/dev/null; kill -SEGV $$".into(),
    };
    let result = agent().deliver_blocking(request(
        pipe,
        recipient("foo", home.path()),
        envelope("a@b.test", "foo@x.test", "foo@x.test"),
        &msg,
    ));
    assert_eq!(
        (result.status, result.stat.as_str()),
        (Status::TempFail, "Error (terminated; signal 11)")
    );
}

#[test]
fn program_that_ignores_a_large_message_exited_prematurely() {
    let home = recipient_dir();
    let big = format!("{MESSAGE}{}", "x".repeat(1024 * 1024));
    let msg = queued(&big);
    let req = request(
        mda("exit 0".into()),
        recipient("foo", home.path()),
        envelope("a@b.test", "foo@x.test", "foo@x.test"),
        &msg,
    );
    let result = agent().deliver_blocking(req);
    assert_eq!(
        (result.status, result.stat.as_str()),
        (Status::TempFail, "Error (mda exited prematurely)")
    );
}

#[test]
fn program_that_runs_too_long_is_terminated() {
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let req = request(
        mda("cat >/dev/null; sleep 30".into()),
        recipient("foo", home.path()),
        envelope("a@b.test", "foo@x.test", "foo@x.test"),
        &msg,
    );
    let start = std::time::Instant::now();
    let result = agent()
        .with_timeout(Duration::from_secs(1))
        .deliver_blocking(req);
    assert_eq!(
        (result.status, result.stat.as_str()),
        (Status::TempFail, "Error (terminated; timeout)")
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn wrapper_runs_the_real_command() {
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let out = home.path().join("wrapped");
    let mut req = request(
        mda(format!("cat > {}", out.display())),
        recipient("foo", home.path()),
        envelope("a@b.test", "foo@x.test", "foo@x.test"),
        &msg,
    );
    req.wrapper = Some(format!(
        "echo %{{rcpt.user}} > {}.who; %{{mda}}",
        out.display()
    ));
    assert_eq!(agent().deliver_blocking(req).status, Status::Ok);
    assert!(fs::read_to_string(&out).unwrap().ends_with(MESSAGE));
    assert_eq!(
        fs::read_to_string(home.path().join("wrapped.who")).unwrap(),
        "foo\n"
    );

    // Only commands can be wrapped.
    let msg = queued(MESSAGE);
    let mut req = request(
        Method::Maildir {
            path: None,
            junk: false,
        },
        recipient("foo", home.path()),
        envelope("a@b", "f@x", "f@x"),
        &msg,
    );
    req.wrapper = Some("%{mda}".into());
    let result = agent().deliver_blocking(req);
    assert_eq!(
        result.stat,
        "Error (local configuration error: a wrapper can only wrap mda commands)"
    );
}

/// CVE-2020-7247: a sender that slipped past address validation reached
/// `/bin/sh -c` unquoted. Here every such sender must arrive as data.
#[test]
fn envelope_text_never_runs_as_shell_code() {
    let home = recipient_dir();
    let marker = home.path().join("pwned");
    let m = marker.display().to_string();
    let senders = [
        format!(";touch {m};"),
        format!("`touch {m}`@example.org"),
        format!("$(touch {m})@example.org"),
        format!("x';touch {m};'@example.org"),
        format!("x\";touch {m};\"@example.org"),
        format!("|touch {m}@example.org"),
        format!("&touch {m}&@example.org"),
        format!("a>{m}@example.org"),
        "<;for i in 0 1 2 3 4 5 6 7 8 9 a b c d;do read r;done;sh;exit 0;>".to_string(),
    ];
    // The sender lands in every quoting context, escaped and raw.
    let args = home.path().join("args");
    let a = args.display();
    let commands = [
        format!("printf '%s\\n' %{{mbox.from}} > {a}; cat >/dev/null"),
        format!("printf '%s\\n' %{{sender:raw}} > {a}; cat >/dev/null"),
        format!("printf '%s\\n' \"%{{sender:raw}}\" > {a}; cat >/dev/null"),
        format!("printf '%s\\n' '%{{sender:raw}}' > {a}; cat >/dev/null"),
        format!("printf '%s\\n' x%{{sender.user:raw}}y > {a}; cat >/dev/null"),
    ];
    for sender in &senders {
        for command in &commands {
            let _ = fs::remove_file(&args);
            let msg = queued(MESSAGE);
            let req = request(
                mda(command.clone()),
                recipient("foo", home.path()),
                envelope(sender, "foo@x.test", "foo@x.test"),
                &msg,
            );
            let result = agent().deliver_blocking(req);
            assert!(
                !marker.exists(),
                "sender {sender:?} ran code through {command:?}"
            );
            assert_eq!(
                result.status,
                Status::Ok,
                "{sender:?} / {command:?}: {}",
                result.stat
            );
            // The program received the text as one argument.
            let got = fs::read_to_string(&args).unwrap();
            assert_eq!(got.lines().count(), 1, "{sender:?} / {command:?}: {got:?}");
        }
    }
    // The raw value is passed through unchanged, the escaped one with `:`.
    let msg = queued(MESSAGE);
    let sender = format!(";touch {m};");
    let command = format!("printf '%s|%s\\n' %{{sender:raw}} %{{sender}} > {a}; cat >/dev/null");
    let req = request(
        mda(command),
        recipient("foo", home.path()),
        envelope(&sender, "foo@x.test", "foo@x.test"),
        &msg,
    );
    assert_eq!(agent().deliver_blocking(req).status, Status::Ok);
    assert_eq!(
        fs::read_to_string(&args).unwrap(),
        format!("{sender}@|{sender}@\n")
    );
}

#[test]
fn unquotable_positions_fail_instead_of_running() {
    let home = recipient_dir();
    let marker = home.path().join("pwned");
    for command in [
        "echo $(echo %{sender:raw})",
        "echo `echo %{sender:raw}`",
        "echo $%{sender:raw}",
    ] {
        let msg = queued(MESSAGE);
        let sender = format!("(touch {})@x", marker.display());
        let req = request(
            mda(command.into()),
            recipient("foo", home.path()),
            envelope(&sender, "foo@x.test", "foo@x.test"),
            &msg,
        );
        let result = agent().deliver_blocking(req);
        assert_eq!(result.status, Status::PermFail, "{command}");
        assert_eq!(
            result.stat,
            "Error (\"smtpd: mda command line could not be expanded\")"
        );
        assert!(!marker.exists());
    }
}

#[test]
fn envelope_with_line_breaks_is_refused() {
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let req = request(
        mda("cat".into()),
        recipient("foo", home.path()),
        envelope("a@b\nX-Injected: yes", "foo@x", "foo@x"),
        &msg,
    );
    let result = agent().deliver_blocking(req);
    assert_eq!(result.status, Status::PermFail);
    assert_eq!(
        result.stat,
        "Error (data format error: envelope contains a control character)"
    );
}

#[test]
fn program_cannot_read_the_queue() {
    if skip_unless_root("checking that the mda runs without access to the queue") {
        return;
    }
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let command = format!(
        "cat >/dev/null; cat {} > {}/stolen",
        msg.path.display(),
        home.path().display()
    );
    let req = request(
        mda(command),
        recipient("foo", home.path()),
        envelope("a@b.test", "foo@x.test", "foo@x.test"),
        &msg,
    );
    let result = agent().deliver_blocking(req);
    // The message file and its directory are root's: uid 2000 cannot open them.
    assert_eq!(result.status, Status::PermFail, "{}", result.stat);
    assert!(result.stat.contains("Permission denied"), "{}", result.stat);
    assert_eq!(fs::read_to_string(home.path().join("stolen")).unwrap(), "");
}

#[test]
fn program_inherits_no_other_descriptors() {
    let home = recipient_dir();
    // A descriptor of ours that is *not* close-on-exec, as a careless
    // library might leave one.
    let secret = fs::File::open("/etc/hostname")
        .or_else(|_| fs::File::open("/dev/null"))
        .unwrap();
    let leaked = nix::unistd::dup(std::os::fd::AsRawFd::as_raw_fd(&secret)).unwrap();
    let msg = queued(MESSAGE);
    let listing = home.path().join("fds");
    let command = format!(
        "cat >/dev/null; ls /proc/$$/fd > {}; true",
        listing.display()
    );
    let req = request(
        mda(command),
        recipient("foo", home.path()),
        envelope("a@b.test", "foo@x.test", "foo@x.test"),
        &msg,
    );
    let result = agent().deliver_blocking(req);
    nix::unistd::close(leaked).unwrap();
    assert_eq!(result.status, Status::Ok, "{}", result.stat);
    let mut fds: Vec<i32> = fs::read_to_string(&listing)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    fds.sort();
    println!("leaked fd {leaked}; descriptors of the program's shell: {fds:?}");
    assert!(
        !fds.contains(&leaked),
        "fd {leaked} leaked into the program: {fds:?}"
    );
    // 0-2, plus at most the one the shell keeps for itself (dash: 10).
    assert!(fds.iter().filter(|&&fd| fd > 2).count() <= 1, "{fds:?}");
}
