//! Filter programs (`proc-exec`, `proc` + `filter … proc`) end to end: the built daemon
//! starts real programs (POSIX shell scripts) and speaks protocol 0.6 with them; clients
//! talk SMTP over loopback; mail is checked in real maildirs and the programs' input in the
//! files they record it to.

mod common;
use common::{Daemon, dialogue, files_under, vmail};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A filter program in `dir`: registers for every report, the rcpt-to, mail-from and
/// data-line phases, records every line it reads to `LOG`, and decides:
/// * rcpt-to `rej…` → reject `550 5.7.1 rejected by filter`; `rw…` → rewrite to
///   `<foo@example.org>`; `bye…` → disconnect `421 4.7.0 go away`;
/// * mail-from `junk…` → junk;
/// * data-line: adds `X-Filtered: yes` before the first line, replaces a line `secret` by
///   `censored`, passes everything else (the final `.` included) back unchanged.
const FILTER: &str = r#"#!/bin/sh
log="$1"
set -f
while IFS= read -r line; do
    printf '%s\n' "$line" >> "$log"
    [ "$line" = "config|ready" ] && break
done
echo "register|report|smtp-in|*"
echo "register|filter|smtp-in|mail-from"
echo "register|filter|smtp-in|rcpt-to"
echo "register|filter|smtp-in|data-line"
echo "register|ready"
first=yes
while IFS= read -r line; do
    printf '%s\n' "$line" >> "$log"
    case "$line" in
    filter\|*)
        IFS='|'
        set -- $line
        IFS=' '
        phase=$5 sid=$6 token=$7 arg=$8
        case "$phase" in
        data-line)
            data=${line#*|*|*|*|*|*|*|}
            if [ "$first" = yes ]; then
                echo "filter-dataline|$sid|$token|X-Filtered: yes"
                first=no
            fi
            [ "$data" = "." ] && first=yes
            [ "$data" = "secret" ] && data=censored
            printf 'filter-dataline|%s|%s|%s\n' "$sid" "$token" "$data"
            ;;
        rcpt-to)
            case "$arg" in
            rej*) echo "filter-result|$sid|$token|reject|550 5.7.1 rejected by filter" ;;
            rw*) echo "filter-result|$sid|$token|rewrite|<foo@example.org>" ;;
            bye*) echo "filter-result|$sid|$token|disconnect|421 4.7.0 go away" ;;
            *) echo "filter-result|$sid|$token|proceed" ;;
            esac
            ;;
        mail-from)
            case "$arg" in
            junk*) echo "filter-result|$sid|$token|junk" ;;
            *) echo "filter-result|$sid|$token|proceed" ;;
            esac
            ;;
        *) echo "filter-result|$sid|$token|proceed" ;;
        esac
        ;;
    esac
done
"#;

/// A directory the programs (running as the daemon's unprivileged user when the tests run
/// as root) can read, with `name` written in it as an executable script.
fn setup(script: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let prog = dir.path().join("filter.sh");
    std::fs::write(&prog, script).unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = dir.path().join("filter.log");
    std::fs::write(&log, "").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
    (dir, prog, log)
}

fn config(prog: &Path, log: &Path, vmail: &Path, ids: &str) -> String {
    format!(
        "admd \"auth.example.org\"\n\
         table users {{ foo = \"{ids}:/var/empty\", bar = \"{ids}:/var/empty\" }}\n\
         filter \"check\" proc-exec \"{} {}\"\n\
         listen on 127.0.0.1 port PORT hostname mx.test filter \"check\"\n\
         action \"local\" maildir \"{}/%{{user.username}}\" junk userbase <users>\n\
         match from any for domain \"example.org\" action \"local\"\n",
        prog.display(),
        log.display(),
        vmail.display()
    )
}

/// The daemon on [`config`] with the [`FILTER`] program. Returns the directory (kept while
/// the daemon runs), the program's log, the maildirs' root and the daemon.
fn filter_daemon() -> (tempfile::TempDir, PathBuf, PathBuf, Daemon) {
    let (dir, prog, log) = setup(FILTER);
    let (vmail, ids) = vmail(dir.path());
    let d = Daemon::start(dir.path(), &config(&prog, &log, &vmail, &ids), &[]);
    (dir, log, vmail, d)
}

/// Waits (at most 10 s) until `file` contains `text`.
fn wait_file(file: &Path, text: &str) -> String {
    wait_until(file, |s| s.contains(text))
}

/// Waits (at most 10 s) until what `file` holds satisfies `done`; returns it.
fn wait_until(file: &Path, done: impl Fn(&str) -> bool) -> String {
    let t = Instant::now();
    loop {
        let s = std::fs::read_to_string(file).unwrap_or_default();
        if done(&s) || t.elapsed() > Duration::from_secs(10) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_filter_program_rejects_rewrites_and_edits_the_message() {
    let (_dir, log, vmail, d) = filter_daemon();
    let r = dialogue(
        d.port,
        &[
            "EHLO c.test",
            "MAIL FROM:<sender@elsewhere.test>",
            "RCPT TO:<rej1@example.org>",
            "RCPT TO:<rw@example.org>",
            "DATA",
            "Subject: filter test\r\nX-Pipe: a|b\r\n\r\n..leading dot line\r\nsecret\r\nend\r\n.",
            "QUIT",
        ],
    );
    assert!(r[0].starts_with("220 mx.test ESMTP"), "{r:?}");
    assert_eq!(r[3], "550 5.7.1 rejected by filter\r\n", "{r:?}");
    assert!(r[4].starts_with("250 2.1.5"), "{r:?}");
    assert!(r[5].starts_with("354 "), "{r:?}");
    assert!(r[6].starts_with("250 2.0.0 "), "{r:?}");
    // The rewritten recipient got the message, as the filter changed it.
    let files = files_under(&vmail.join("foo"));
    assert_eq!(files.len(), 1, "{files:?} {}", d.log());
    let msg = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        msg.contains("\nX-Filtered: yes\nReceived: from c.test"),
        "{msg}"
    );
    assert!(msg.contains("\nX-Pipe: a|b\n"), "{msg}");
    assert!(
        msg.contains("\n.leading dot line\ncensored\nend\n"),
        "{msg}"
    );
    assert!(!msg.contains("secret"), "{msg}");
    assert!(files_under(&vmail.join("rw")).is_empty());

    // What the program read: the handshake, then reports and requests of this session
    // (the daemon's start-up probe made a session of its own before).
    wait_file(&log, "|221 2.0.0 Bye");
    let seen = wait_until(&log, |s| s.matches("|link-disconnect|").count() >= 2);
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(
        &lines[..5],
        &[
            "config|smtpd-version|6.8.0p2",
            "config|smtp-session-timeout|300",
            "config|subsystem|smtp-in",
            "config|admd|auth.example.org",
            "config|ready"
        ]
    );
    let sid = lines
        .iter()
        .find(|l| l.ends_with("|protocol-client|EHLO c.test") || l.contains("|EHLO c.test"))
        .map(|l| l.split('|').nth(5).unwrap().to_string())
        .expect("link-connect");
    let field = |l: &&str, n: usize| l.split('|').nth(n).map(str::to_string);
    let events: Vec<String> = lines[5..]
        .iter()
        .filter(|l| field(l, 5).as_deref() == Some(sid.as_str()))
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f[1], "0.6", "{l}");
            assert!(f[2].contains('.') && f[2].len() > 7, "{l}");
            // kind, event/phase, and the parameters after the session (tokens left out).
            let rest = if f[0] == "filter" { &f[7..] } else { &f[6..] };
            format!("{}|{}|{}", f[0], f[4], rest.join("|"))
        })
        .collect();
    let has = |e: &str| events.iter().any(|x| x == e);
    assert!(
        events[0].starts_with("report|link-connect|<unknown>|fail|127.0.0.1:"),
        "{events:#?}"
    );
    for e in [
        "report|protocol-server|220 mx.test ESMTP OpenSMTPD",
        "report|link-greeting|mx.test",
        "report|protocol-client|EHLO c.test",
        "report|link-identify|EHLO|c.test",
        "report|protocol-client|MAIL FROM:<sender@elsewhere.test>",
        "filter|mail-from|sender@elsewhere.test",
        "report|filter-response|mail-from|proceed",
        "filter|rcpt-to|rej1@example.org",
        "report|filter-response|rcpt-to|reject|550 5.7.1 rejected by filter",
        "report|protocol-server|550 5.7.1 rejected by filter",
        "filter|rcpt-to|rw@example.org",
        "report|filter-response|rcpt-to|rewrite|<foo@example.org>",
        "filter|data-line|Subject: filter test",
        "filter|data-line|X-Pipe: a|b",
        "filter|data-line|..leading dot line",
        "filter|data-line|.",
        "report|protocol-client|QUIT",
        "report|protocol-server|221 2.0.0 Bye",
        "report|link-disconnect|",
    ] {
        assert!(has(e), "missing {e}: {events:#?}");
    }
    let msgid = events
        .iter()
        .find_map(|e| e.strip_prefix("report|tx-begin|"))
        .expect("tx-begin")
        .to_string();
    for e in [
        format!("report|tx-mail|{msgid}|ok|sender@elsewhere.test"),
        format!("report|tx-rcpt|{msgid}|permfail|rej1@example.org"),
        format!("report|tx-rcpt|{msgid}|ok|foo@example.org"),
        format!("report|tx-data|{msgid}|ok"),
        format!("report|tx-reset|{msgid}"),
    ] {
        assert!(has(&e), "missing {e}: {events:#?}");
    }
    assert!(
        events
            .iter()
            .any(|e| e.starts_with(&format!("report|tx-commit|{msgid}|"))),
        "{events:#?}"
    );
    // Order: the reply is reported before the transaction events it concludes, smtpd's own
    // Received line is the first data line after the filter's header.
    let pos = |e: &str| events.iter().position(|x| x.starts_with(e)).unwrap();
    assert!(pos("report|protocol-server|550 5.7.1") < pos("report|tx-rcpt"));
    assert!(pos("filter|data-line|Received: from c.test") < pos("filter|data-line|Subject"));
    assert!(pos("filter|data-line|.") < pos("report|tx-commit"));
    // As in OpenSMTPD, smtpd's own lines go out before the 354 is reported.
    assert!(pos("filter|data-line|Received: ") < pos("report|protocol-server|354 "));
    assert!(pos("report|protocol-server|354 ") < pos("report|tx-data|"));
    d.stop();
}

#[test]
fn filter_junk_goes_to_the_junk_folder_and_disconnect_closes() {
    let (_dir, _log, vmail, d) = filter_daemon();
    let r = dialogue(
        d.port,
        &[
            "HELO c.test",
            "MAIL FROM:<junk@elsewhere.test>",
            "RCPT TO:<bar@example.org>",
            "DATA",
            "Subject: junk\r\n\r\nbody\r\n.",
            "RCPT TO:<nobody@example.org>",
        ],
    );
    assert!(r[5].starts_with("250 2.0.0 "), "{r:?}");
    let junk = files_under(&vmail.join("bar/.Junk/new"));
    assert_eq!(junk.len(), 1, "{r:?} {}", d.log());
    let msg = std::fs::read_to_string(&junk[0]).unwrap();
    assert!(
        msg.contains("\nX-Filtered: yes\nX-Spam: Yes\nReceived: "),
        "{msg}"
    );

    let r = dialogue(
        d.port,
        &[
            "HELO c.test",
            "MAIL FROM:<a@elsewhere.test>",
            "RCPT TO:<bye@example.org>",
            "NOOP",
        ],
    );
    assert_eq!(r[3], "421 4.7.0 go away\r\n", "{r:?}");
    assert_eq!(r[4], "", "the connection is closed: {r:?}");
    d.stop();
}

/// `proc NAME CMD` and `filter F proc NAME` reach the same program; a chain runs a builtin
/// member before it.
#[test]
fn a_named_proc_in_a_chain_after_a_builtin() {
    let (dir, prog, log) = setup(FILTER);
    let (vmail, ids) = vmail(dir.path());
    let conf = format!(
        "table users {{ foo = \"{ids}:/var/empty\" }}\n\
         proc \"p\" \"{} {}\"\n\
         filter \"prog\" proc \"p\"\n\
         filter \"nobody\" phase rcpt-to match rcpt-to regex \"^nobody@\" reject \"550 no such luser\"\n\
         filter \"both\" chain {{ \"nobody\", \"prog\" }}\n\
         listen on 127.0.0.1 port PORT hostname mx.test filter \"both\"\n\
         action \"local\" maildir \"{}/%{{user.username}}\" userbase <users>\n\
         match from any for domain \"example.org\" action \"local\"\n",
        prog.display(),
        log.display(),
        vmail.display()
    );
    let d = Daemon::start(dir.path(), &conf, &["-T", "filters"]);
    let r = dialogue(
        d.port,
        &[
            "HELO c.test",
            "MAIL FROM:<a@elsewhere.test>",
            "RCPT TO:<nobody@example.org>",
            "RCPT TO:<rej@example.org>",
            "RCPT TO:<foo@example.org>",
            "QUIT",
        ],
    );
    assert_eq!(r[3], "550 no such luser\r\n", "{r:?}");
    assert_eq!(r[4], "550 5.7.1 rejected by filter\r\n", "{r:?}");
    assert!(r[5].starts_with("250 "), "{r:?}");
    wait_file(&log, "|221 2.0.0 Bye");
    let seen = wait_until(&log, |s| s.matches("|link-disconnect|").count() >= 2);
    // The builtin decided on nobody@: the program was not asked.
    assert!(
        !seen
            .lines()
            .any(|l| l.starts_with("filter|") && l.ends_with("|nobody@example.org")),
        "{seen}"
    );
    assert!(seen.contains("|rej@example.org\n"), "{seen}");
    let log = d.stop();
    assert!(
        log.contains("filters init type=proc, name=prog, proc=p"),
        "{log}"
    );
    assert!(
        log.contains("filters protocol phase=rcpt-to, resume=y, action=deferred, filter=prog"),
        "{log}"
    );
    assert!(
        log.contains(
            "filters protocol phase=connect, resume=y, action=reject, filter=prog, \
             query=rej@example.org, response=550 5.7.1 rejected by filter"
        ),
        "{log}"
    );
}

/// A rule, so that the configuration has something to do.
const RULE: &str = "action \"l\" mbox\nmatch from any for local action \"l\"\n";

/// Runs the daemon on `conf` and waits (at most 10 s) for it to exit; returns its log.
fn run_until_exit(dir: &Path, conf: &str) -> (Option<std::process::ExitStatus>, String) {
    let path = dir.join("smtpd.conf");
    std::fs::write(
        &path,
        conf.replace("PORT", &common::free_port().to_string()),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_smtpd"))
        .args(["-d", "-f"])
        .arg(&path)
        .arg("--spool")
        .arg(dir.join("spool"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if t.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (status, err)
}

#[test]
fn a_program_that_breaks_the_handshake_stops_the_daemon() {
    let (dir, prog, _) = setup("#!/bin/sh\nread x\necho hello\nsleep 5\n");
    let conf = format!(
        "filter \"bad\" proc-exec \"{}\"\nlisten on 127.0.0.1 port PORT filter \"bad\"\n{RULE}",
        prog.display()
    );
    let (status, err) = run_until_exit(dir.path(), &conf);
    assert!(status.is_some_and(|s| !s.success()), "{status:?} {err}");
    assert!(
        err.contains("processor bad: Non-register message before register|ready: hello"),
        "{err}"
    );
}

#[test]
fn a_program_that_exits_stops_the_daemon() {
    // Registers, then exits at its first input after the handshake.
    let (dir, prog, _) = setup(
        "#!/bin/sh\nwhile read -r l; do [ \"$l\" = 'config|ready' ] && break; done\n\
         echo 'register|report|smtp-in|link-connect'\necho 'register|ready'\nread x\nexit 3\n",
    );
    let conf = format!(
        "filter \"quitter\" proc-exec \"{}\"\nlisten on 127.0.0.1 port PORT filter \"quitter\"\n{RULE}",
        prog.display()
    );
    let d = Daemon::start(dir.path(), &conf, &[]);
    let _ = std::net::TcpStream::connect(("127.0.0.1", d.port));
    assert!(
        d.wait_log("warn: lost processor: quitter exited abnormally", 10),
        "{}",
        d.log()
    );
    let mut d = d;
    let t = Instant::now();
    while d.is_running() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!d.is_running(), "the daemon went on without its filter");
}

/// A program's error output is logged under its name; a relative command is looked for
/// under /usr/libexec/opensmtpd.
#[test]
fn stderr_is_logged_and_relative_commands_live_in_libexec() {
    let (dir, prog, _) = setup(
        "#!/bin/sh\nwhile read -r l; do [ \"$l\" = 'config|ready' ] && break; done\n\
         echo 'starting up' >&2\necho 'register|ready'\nwhile read -r l; do :; done\n",
    );
    let conf = format!(
        "filter \"talk\" proc-exec \"{}\"\nlisten on 127.0.0.1 port PORT filter \"talk\"\n{RULE}",
        prog.display()
    );
    let d = Daemon::start(dir.path(), &conf, &[]);
    assert!(d.wait_log("talk: starting up", 10), "{}", d.log());
    let r = dialogue(d.port, &["QUIT"]);
    assert!(r[0].starts_with("220 "), "{r:?}");
    d.stop();

    let conf = format!(
        "filter \"missing\" proc-exec \"no-such-filter-program\"\n\
         listen on 127.0.0.1 port PORT filter \"missing\"\n{RULE}"
    );
    let (status, err) = run_until_exit(dir.path(), &conf);
    assert!(status.is_some_and(|s| !s.success()), "{status:?} {err}");
    assert!(
        err.contains("/usr/libexec/opensmtpd/no-such-filter-program"),
        "{err}"
    );
}

/// A program that registers for `PHASES` (space-separated), records what it reads to its
/// first argument, answers `proceed` to every request except at PHASE `$2` where it answers
/// `$3` (a decision with its parameter), and on data lines adds the header `$4` before the
/// first line and passes the rest back.
const PROGRAM: &str = r#"#!/bin/sh
log="$1" at="$2" answer="$3" header="$4"
set -f
while IFS= read -r line; do
    [ "$line" = "config|ready" ] && break
done
echo "register|report|smtp-in|*"
for p in $PHASES; do echo "register|filter|smtp-in|$p"; done
echo "register|ready"
first=yes
while IFS= read -r line; do
    printf '%s\n' "$line" >> "$log"
    case "$line" in
    filter\|*)
        IFS='|'
        set -- $line
        IFS=' '
        phase=$5 sid=$6 token=$7
        if [ "$phase" = data-line ]; then
            data=${line#*|*|*|*|*|*|*|}
            if [ "$first" = yes ]; then
                echo "filter-dataline|$sid|$token|$header"
                first=no
            fi
            [ "$data" = "." ] && first=yes
            printf 'filter-dataline|%s|%s|%s\n' "$sid" "$token" "$data"
        elif [ "$phase" = "$at" ]; then
            echo "filter-result|$sid|$token|$answer"
        else
            echo "filter-result|$sid|$token|proceed"
        fi
        ;;
    esac
done
"#;

/// `proc-exec` line for [`PROGRAM`].
fn program(prog: &Path, log: &Path, phases: &str, at: &str, answer: &str, header: &str) -> String {
    format!(
        "\"/usr/bin/env PHASES={phases} {} {} {at} '{answer}' '{header}'\"",
        prog.display(),
        log.display()
    )
}

/// Two data-line programs in a chain: the first one's output is the second one's input,
/// and the second one's output is the message.
#[test]
fn data_line_programs_feed_each_other() {
    let (dir, prog, log) = setup(PROGRAM);
    std::fs::write(dir.path().join("second.log"), "").unwrap();
    let log2 = dir.path().join("second.log");
    std::fs::set_permissions(&log2, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (vmail, ids) = vmail(dir.path());
    let conf = format!(
        "table users {{ foo = \"{ids}:/var/empty\" }}\n\
         filter \"one\" proc-exec {}\n\
         filter \"two\" proc-exec {}\n\
         listen on 127.0.0.1 port PORT hostname mx.test filter {{ \"one\", \"two\" }}\n\
         action \"local\" maildir \"{}/%{{user.username}}\" userbase <users>\n\
         match from any for domain \"example.org\" action \"local\"\n",
        program(&prog, &log, "data-line", "-", "-", "X-One: 1"),
        program(&prog, &log2, "data-line", "-", "-", "X-Two: 2"),
        vmail.display()
    );
    let d = Daemon::start(dir.path(), &conf, &[]);
    let mut body: String = (0..300).map(|i| format!("line {i}\r\n")).collect();
    // A line near the longest smtpd accepts goes through both programs whole.
    let long = "x".repeat(65_500);
    body.push_str(&long);
    body.push_str("\r\n");
    let r = dialogue(
        d.port,
        &[
            "HELO c.test",
            "MAIL FROM:<a@elsewhere.test>",
            "RCPT TO:<foo@example.org>",
            "DATA",
            &format!("Subject: two\r\n\r\n{body}."),
            "QUIT",
        ],
    );
    assert!(r[5].starts_with("250 2.0.0 "), "{r:?} {}", d.log());
    let files = files_under(&vmail.join("foo"));
    assert_eq!(files.len(), 1, "{files:?}");
    let msg = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        msg.contains("\nX-Two: 2\nX-One: 1\nReceived: from c.test"),
        "{msg}"
    );
    assert!(
        msg.contains("\nline 0\n") && msg.contains("\nline 299\n"),
        "{msg}"
    );
    assert!(
        msg.ends_with(&format!("\n{long}\n")),
        "the long line arrived whole"
    );
    // The second program read the first one's output.
    let seen = wait_until(&log2, |s| {
        s.lines()
            .any(|l| l.contains("|data-line|") && l.ends_with("|."))
    });
    assert!(
        seen.contains("|data-line|") && seen.contains("|X-One: 1\n"),
        "{seen}"
    );
    d.stop();
}

/// A connect-phase program decides before the banner; AUTH is reported (user, result),
/// with the credentials masked in `protocol-client`.
#[test]
fn connect_decisions_and_auth_reports() {
    let (dir, prog, log) = setup(PROGRAM);
    let conf = format!(
        "table creds {{ joe = \"$6$Gc2S7mRxZ0tDLl7e$QNeYIgy7ps2W0ZuqpGWU0OAMfWH6z8ZvZ3b5lW9Cpsx3VJdz3pQ8cSutxsMvmTZ8sVT1R2T0r4oDDFTzYQkMN1\" }}\n\
         filter \"gate\" proc-exec {}\n\
         listen on 127.0.0.1 port PORT hostname mx.test auth <creds> auth-plaintext filter \"gate\"\n{RULE}",
        program(&prog, &log, "connect", "connect", "junk", "-")
    );
    let d = Daemon::start(dir.path(), &conf, &[]);
    let r = dialogue(
        d.port,
        &["EHLO c.test", "AUTH PLAIN AGpvZQB3cm9uZw==", "QUIT"],
    );
    assert!(r[0].starts_with("220 mx.test "), "{r:?}");
    assert!(r[2].starts_with("535 "), "{r:?}");
    let seen = wait_file(&log, "|221 2.0.0 Bye");
    assert!(seen.contains("|filter-response|"), "{seen}");
    // The connect request carries `RDNS|ADDRESS`.
    assert!(
        seen.lines().any(|l| l.starts_with("filter|0.6|")
            && l.contains("|smtp-in|connect|")
            && l.ends_with("|<unknown>|127.0.0.1")),
        "{seen}"
    );
    assert!(seen.contains("|connected|junk\n"), "{seen}");
    assert!(seen.contains("|protocol-client|"), "{seen}");
    assert!(seen.contains("|AUTH PLAIN ********\n"), "{seen}");
    assert!(!seen.contains("AGpvZQB3cm9uZw"), "{seen}");
    assert!(seen.contains("|link-auth|"), "{seen}");
    assert!(
        seen.lines()
            .any(|l| l.contains("|link-auth|") && l.ends_with("|joe|fail")),
        "{seen}"
    );
    d.stop();

    // A disconnect at connect is the greeting, and the end.
    let conf = format!(
        "filter \"gate\" proc-exec {}\n\
         listen on 127.0.0.1 port PORT hostname mx.test filter \"gate\"\n{RULE}",
        program(
            &prog,
            &log,
            "connect",
            "connect",
            "disconnect|421 4.7.0 not today",
            "-"
        )
    );
    let d = Daemon::start(dir.path(), &conf, &[]);
    let r = dialogue(d.port, &["EHLO c.test"]);
    assert_eq!(r[0], "421 4.7.0 not today\r\n", "{r:?}");
    assert_eq!(r[1], "", "{r:?}");
    d.stop();
}

/// An answer the protocol does not allow stops the daemon, with 6.8's reason.
#[test]
fn a_malformed_answer_stops_the_daemon() {
    let (dir, prog, log) = setup(PROGRAM);
    let conf = format!(
        "filter \"bad\" proc-exec {}\n\
         listen on 127.0.0.1 port PORT hostname mx.test filter \"bad\"\n{RULE}",
        program(&prog, &log, "helo", "helo", "proceed|extra", "-")
    );
    let mut d = Daemon::start(dir.path(), &conf, &[]);
    let _ = dialogue(d.port, &["HELO c.test"]);
    let t = Instant::now();
    while d.is_running() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!d.is_running());
    assert!(
        d.log()
            .contains("fatal: processor bad: Unexpected parameter after proceed"),
        "{}",
        d.log()
    );
}

/// Debian's `opensmtpd-filter-dkimsign` (libopensmtpd, a real OpenSMTPD filter), where
/// `.ci/run` installs it.
const DKIMSIGN: &str = "/usr/libexec/opensmtpd/filter-dkimsign";

/// OpenSMTPD's DKIM signer runs unchanged under smtpd: it gets the message over data-line
/// and its signature (Ed25519, RFC 8463) verifies against what was delivered, headers and
/// body, so no line was lost, added or changed on the way through the filter.
#[test]
fn opensmtpds_dkimsign_filter_signs_the_delivered_message() {
    if !Path::new(DKIMSIGN).exists() {
        common::skip(&format!(
            "{DKIMSIGN} is not installed (package opensmtpd-filter-dkimsign)"
        ));
        return;
    }
    let (dir, _, _) = setup("");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let key_file = dir.path().join("dkim.pem");
    std::fs::write(&key_file, pkcs8_v1_pem(&key)).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (vmail, ids) = vmail(dir.path());
    let user = if nix::unistd::User::from_name("_dkimsign")
        .ok()
        .flatten()
        .is_some()
    {
        " user _dkimsign group _dkimsign"
    } else {
        ""
    };
    let conf = format!(
        "table users {{ foo = \"{ids}:/var/empty\" }}\n\
         filter \"dkimsign\" proc-exec \"filter-dkimsign -a ed25519-sha256 -d example.org -s s1 -k {}\"{user}\n\
         listen on 127.0.0.1 port PORT hostname mx.test filter \"dkimsign\"\n\
         action \"local\" maildir \"{}/%{{user.username}}\" userbase <users>\n\
         match from any for domain \"example.org\" action \"local\"\n",
        key_file.display(),
        vmail.display()
    );
    let d = Daemon::start(dir.path(), &conf, &[]);
    let r = dialogue(
        d.port,
        &[
            "EHLO c.test",
            "MAIL FROM:<a@example.org>",
            "RCPT TO:<foo@example.org>",
            "DATA",
            "From: a@example.org\r\nTo: foo@example.org\r\nSubject: signed\r\n\r\n\
             Hello.\r\n..leading dot\r\nX-Pipe: a|b\r\n\r\n.",
            "QUIT",
        ],
    );
    assert!(r[5].starts_with("250 2.0.0 "), "{r:?} {}", d.log());
    let files = files_under(&vmail.join("foo"));
    assert_eq!(files.len(), 1, "{files:?} {}", d.log());
    let msg = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        msg.contains("\n\nHello.\n.leading dot\nX-Pipe: a|b\n"),
        "{msg}"
    );
    verify_dkim(&msg, key.public_key_raw());
    // The check has teeth: one changed letter in the body or a signed header fails it.
    for (from, to) in [("Hello.", "Hallo."), ("Subject: signed", "Subject: signeD")] {
        let changed = msg.replace(from, to);
        let pk = key.public_key_raw().to_vec();
        let outcome = std::panic::catch_unwind(move || verify_dkim(&changed, &pk));
        assert!(outcome.is_err(), "a changed message ({to}) still verifies");
    }
    d.stop();
}

/// The Ed25519 key as a version 1 PKCS#8 PEM (rcgen writes version 2, with the public key
/// inside, which OpenSSL 3.0's PEM reader refuses).
fn pkcs8_v1_pem(key: &rcgen::KeyPair) -> String {
    use base64::Engine;
    let der = key.serialize_der();
    // Version 2 for Ed25519: 30 51 02 01 01 30 05 06 03 2b 65 70 04 22 04 20 SEED(32) 81 21 …
    assert_eq!(
        &der[..16],
        b"\x30\x51\x02\x01\x01\x30\x05\x06\x03\x2b\x65\x70\x04\x22\x04\x20"
    );
    let mut v1 = b"\x30\x2e\x02\x01\x00\x30\x05\x06\x03\x2b\x65\x70\x04\x22\x04\x20".to_vec();
    v1.extend_from_slice(&der[16..48]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(v1);
    format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")
}

/// Checks a `c=simple/simple` Ed25519 DKIM signature of a message stored with LF line ends.
fn verify_dkim(msg: &str, public: &[u8]) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let sha256 = |data: &[u8]| ring::digest::digest(&ring::digest::SHA256, data);
    let (head, body) = msg.split_once("\n\n").expect("header and body");
    // Header fields with their folding, CRLF-terminated lines as on the wire.
    let mut fields: Vec<String> = Vec::new();
    for line in head.split('\n') {
        match fields.last_mut() {
            Some(f) if line.starts_with([' ', '\t']) => {
                f.push_str("\r\n");
                f.push_str(line);
            }
            _ => fields.push(line.to_string()),
        }
    }
    let name_of = |f: &str| {
        f.split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    let sig = fields
        .iter()
        .find(|f| name_of(f) == "dkim-signature")
        .unwrap_or_else(|| panic!("no DKIM-Signature: {msg}"))
        .clone();
    let value = sig.split_once(':').unwrap().1;
    let tag = |name: &str| -> String {
        value
            .split(';')
            .filter_map(|t| t.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.chars().filter(|c| !c.is_whitespace()).collect())
            .unwrap_or_else(|| panic!("no {name}= in {sig}"))
    };
    assert_eq!(tag("a"), "ed25519-sha256");
    assert_eq!(tag("c"), "simple/simple");
    // Body: CRLF lines, trailing empty lines removed.
    let mut canon = body.replace('\n', "\r\n");
    while canon.ends_with("\r\n\r\n") {
        canon.truncate(canon.len() - 2);
    }
    assert_eq!(
        b64.encode(sha256(canon.as_bytes())),
        tag("bh"),
        "body hash of {canon:?}"
    );
    // Header data: the signed fields (last instance first), then the signature field with
    // its b= value emptied and no line end.
    let mut data = String::new();
    for name in tag("h").split(':') {
        let field = fields
            .iter()
            .rev()
            .find(|f| name_of(f) == name.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("signed field {name} missing"));
        data.push_str(field);
        data.push_str("\r\n");
    }
    let b_at = sig
        .match_indices("b=")
        .map(|(i, _)| i)
        .find(|&i| {
            sig[..i]
                .trim_end_matches([' ', '\t', '\r', '\n'])
                .ends_with(';')
        })
        .expect("b= tag");
    let b_end = sig[b_at..].find(';').map_or(sig.len(), |e| b_at + e);
    data.push_str(&sig[..b_at + 2]);
    data.push_str(&sig[b_end..]);
    let signature = b64.decode(tag("b")).expect("b= is base64");
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
        .verify(sha256(data.as_bytes()).as_ref(), &signature)
        .unwrap_or_else(|_| panic!("DKIM signature does not verify over {data:?}"));
}

/// Message bytes that are not UTF-8 (Latin-1 here) go through a data-line program and into
/// the mailbox unchanged.
#[test]
fn eight_bit_message_lines_pass_through_a_program_unchanged() {
    use std::io::{BufReader, Write};
    let (_dir, _log, vmail, d) = filter_daemon();
    let s = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut reply = || common::read_reply(&mut r);
    reply();
    for (line, want) in [
        (&b"HELO c.test\r\n"[..], "250"),
        (b"MAIL FROM:<a@elsewhere.test>\r\n", "250"),
        (b"RCPT TO:<foo@example.org>\r\n", "250"),
        (b"DATA\r\n", "354"),
        (
            b"Subject: latin\r\n\r\ncaf\xe9 cr\xe8me br\xfbl\xe9e\r\n.\r\n",
            "250",
        ),
    ] {
        w.write_all(line).unwrap();
        let got = reply();
        assert!(got.starts_with(want), "{got} {}", d.log());
    }
    let files = files_under(&vmail.join("foo"));
    assert_eq!(files.len(), 1);
    let bytes = std::fs::read(&files[0]).unwrap();
    let want = b"\ncaf\xe9 cr\xe8me br\xfbl\xe9e\n";
    assert!(
        bytes.windows(want.len()).any(|x| x == want),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    d.stop();
}

/// Started as root, a program runs as its `user` and `group`, inside its `chroot`, in a
/// session of its own.
#[test]
fn a_program_runs_as_its_user_and_group_in_its_chroot() {
    if !nix::unistd::Uid::effective().is_root() {
        common::skip("needs root");
        return;
    }
    let (dir, prog, log) = setup(
        "#!/bin/sh\n\
         printf 'uid=%s gid=%s groups=%s pwd=%s sid=%s pid=%s\\n' \"$(id -u)\" \"$(id -g)\" \
         \"$(id -G)\" \"$(pwd)\" \"$(cut -d' ' -f6 /proc/$$/stat)\" \"$$\" > \"$1\"\n\
         while read -r l; do [ \"$l\" = 'config|ready' ] && break; done\n\
         echo 'register|ready'\nwhile read -r l; do :; done\n",
    );
    let conf = format!(
        "filter \"who\" proc-exec \"{} {}\" user nobody group nogroup chroot \"/\"\n\
         listen on 127.0.0.1 port PORT filter \"who\"\n{RULE}",
        prog.display(),
        log.display()
    );
    let d = Daemon::start(dir.path(), &conf, &[]);
    let seen = wait_file(&log, "pid=");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    let field = |k: &str| {
        seen.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {seen}"))
            .to_string()
    };
    assert_eq!(field("uid"), nobody.uid.to_string(), "{seen}");
    assert_eq!(field("gid"), nogroup.gid.to_string(), "{seen}");
    assert_eq!(field("groups"), nogroup.gid.to_string(), "{seen}");
    assert_eq!(field("pwd"), "/", "{seen}");
    assert_eq!(field("sid"), field("pid"), "a session leader: {seen}");
    d.stop();
}

/// A filter program that cannot start (here: not installed) ends the start, as in 6.8:
/// the shell's words first, then `warn: lost processor: NAME exited abnormally`.
#[test]
fn a_filter_program_that_cannot_start_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("smtpd.conf");
    std::fs::write(
        &conf,
        format!(
            "filter \"rspamd\" proc-exec \"{}/filter-rspamd\"\n\
             listen on 127.0.0.1 port {} filter \"rspamd\"\n{RULE}",
            dir.path().display(),
            common::free_port()
        ),
    )
    .unwrap();
    let out = common::run_with_input(
        std::process::Command::new(env!("CARGO_BIN_EXE_smtpd"))
            .arg("-d")
            .arg("-f")
            .arg(&conf)
            .arg("--spool")
            .arg(dir.path().join("spool"))
            .arg("--resolv-conf")
            .arg("/nonexistent"),
        b"",
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    let said = log
        .lines()
        .position(|l| l.starts_with("rspamd: ") && l.contains("filter-rspamd"))
        .unwrap_or_else(|| panic!("{log}"));
    let lost = log
        .lines()
        .position(|l| l == "warn: lost processor: rspamd exited abnormally")
        .unwrap_or_else(|| panic!("{log}"));
    assert!(said < lost, "{log}");
    assert!(!log.contains("Broken pipe"), "{log}");
    // The shell speaks as `sh`, as under 6.8's system(3); then the parent shuts down.
    assert!(log.contains("rspamd: sh: "), "{log}");
    assert_eq!(log.lines().nth(lost + 1), Some("Exiting"), "{log}");
}
