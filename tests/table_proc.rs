//! External tables run by their real programs: OpenSMTPD's `table-sqlite` and
//! `table-passwd` (Debian's opensmtpd-extras), over their imsg protocol. Domains, virtual
//! aliases, users and credentials come from a sqlite3 database or a passwd file; mail is
//! checked in real maildirs, AUTH with a real client dialogue. A table program that dies is
//! started again; one that cannot open its table stops the start; `smtpctl update table`
//! has a program re-read its file.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use common::{Daemon, dialogue, files_under, send_mail, smtpctl, vmail};

const SQLITE_PROGRAM: &str = "/usr/libexec/opensmtpd/table-sqlite";
const PASSWD_PROGRAM: &str = "/usr/libexec/opensmtpd/table-passwd";

/// Whether the programs and the sqlite3 command are here; says why not otherwise.
fn have(programs: &[&str]) -> bool {
    for p in programs {
        if !Path::new(p).exists() {
            common::skip(&format!("{p} is not installed (package opensmtpd-extras)"));
            return false;
        }
    }
    if Command::new("sqlite3").arg("-version").output().is_err() {
        common::skip("sqlite3 is not installed (package sqlite3)");
        return false;
    }
    true
}

/// A directory the daemon's unprivileged user (who runs the table programs) can read.
fn readable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn write_readable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn sqlite(db: &Path, sql: &str) {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
    assert!(out.status.success(), "sqlite3: {out:?}");
    std::fs::set_permissions(db, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// `AUTH PLAIN` with the initial response for `user` and `pass`.
fn auth_plain(user: &str, pass: &str) -> String {
    format!(
        "AUTH PLAIN {}",
        base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))
    )
}

/// The hash `smtpctl encrypt` prints for a password.
fn hash(password: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_smtpctl"))
        .args(["encrypt", password])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The table-sqlite.5 example, with a userinfo query: domains, virtual aliases, users and
/// credentials in one database, `sqlite.conf` beside it.
fn sqlite_setup(dir: &Path, ids: &str) -> (PathBuf, PathBuf) {
    let db = dir.join("smtp.sqlite");
    let (uid, gid) = ids.split_once(':').unwrap();
    let home = dir.join("vmail");
    sqlite(
        &db,
        &format!(
            "CREATE TABLE domains (domain TEXT NOT NULL);
             INSERT INTO domains VALUES ('example.com'), ('example.net');
             CREATE TABLE virtuals (email TEXT NOT NULL, destination TEXT NOT NULL);
             INSERT INTO virtuals VALUES ('abuse@example.com', 'bob@example.com'),
                 ('bob@example.com', 'bob'), ('alice@example.net', 'alice'),
                 ('team@example.net', 'alice@example.net'), ('team@example.net', 'bob@example.com');
             CREATE TABLE users (name TEXT, uid INT, gid INT, home TEXT);
             INSERT INTO users VALUES ('bob', {uid}, {gid}, '{home}'), ('alice', {uid}, {gid}, '{home}');
             CREATE TABLE credentials (email TEXT NOT NULL, password TEXT NOT NULL);
             INSERT INTO credentials VALUES ('bob@example.com', '{hash}');
             CREATE TABLE senders (email TEXT NOT NULL, sender TEXT NOT NULL);
             INSERT INTO senders VALUES ('bob@example.com', 'bob@example.com'),
                 ('bob@example.com', '@example.org');",
            home = home.display(),
            hash = hash("bob's secret"),
        ),
    );
    let conf = dir.join("sqlite.conf");
    write_readable(
        &conf,
        &format!(
            "dbpath {}\n\
             query_alias SELECT destination FROM virtuals WHERE email=?;\n\
             query_domain SELECT domain FROM domains WHERE domain=?;\n\
             query_userinfo SELECT uid, gid, home FROM users WHERE name=?;\n\
             query_credentials SELECT email, password FROM credentials WHERE email=?;\n\
             query_mailaddrmap SELECT sender FROM senders WHERE email=?;\n",
            db.display()
        ),
    );
    (db, conf)
}

fn sqlite_config(conf: &Path, vmail: &Path) -> String {
    format!(
        "table domains sqlite:{c}\n\
         table virtuals sqlite:{c}\n\
         table users sqlite:{c}\n\
         table credentials sqlite:{c}\n\
         table owners sqlite:{c}\n\
         listen on 127.0.0.1 port PORT auth-optional <credentials> auth-plaintext \
         senders <owners>\n\
         action \"vm\" maildir \"{v}/%{{user.username}}\" virtual <virtuals> userbase <users>\n\
         match from any for domain <domains> action \"vm\"\n",
        c = conf.display(),
        v = vmail.display()
    )
}

/// The daemon on [`sqlite_config`], with `extra` arguments; `None` (and a SKIPPED line)
/// without table-sqlite or sqlite3. Returns the directory (kept while the daemon runs) and
/// the maildirs' root.
fn sqlite_daemon(extra: &[&str]) -> Option<(tempfile::TempDir, PathBuf, Daemon)> {
    if !have(&[SQLITE_PROGRAM]) {
        return None;
    }
    let dir = readable_dir();
    let (vmail, ids) = vmail(dir.path());
    let (_, conf) = sqlite_setup(dir.path(), &ids);
    let d = Daemon::start(dir.path(), &sqlite_config(&conf, &vmail), extra);
    Some((dir, vmail, d))
}

fn wait_for_files(dir: &Path, n: usize) -> Vec<PathBuf> {
    for _ in 0..500 {
        let files: Vec<PathBuf> = files_under(dir)
            .into_iter()
            .filter(|p| p.parent().is_some_and(|d| d.ends_with("new")))
            .collect();
        if files.len() >= n {
            return files;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    files_under(dir)
}

/// Domains, virtual aliases (one to two users) and users from sqlite: the message reaches
/// the maildirs the database names, unknown users and foreign domains are refused, and the
/// `-T lookup` trace shows each question the program answered.
#[test]
fn sqlite_tables_route_and_deliver() {
    let Some((_dir, vmail, d)) = sqlite_daemon(&["-T", "lookup"]) else {
        return;
    };
    let r = dialogue(
        d.port,
        &[
            "EHLO c.test",
            "MAIL FROM:<sender@remote.test>",
            "RCPT TO:<abuse@example.com>",
            "RCPT TO:<team@example.net>",
            "RCPT TO:<nobody@example.com>",
            "RCPT TO:<bob@other.test>",
            "DATA",
            "Subject: sqlite\r\n\r\nrouted by sqlite\r\n.",
            "QUIT",
        ],
    );
    assert!(r[3].starts_with("250 2.1.5"), "{r:?}");
    assert!(r[4].starts_with("250 2.1.5"), "{r:?}");
    assert_eq!(
        r[5],
        "524 5.2.4 Mailing list expansion problem: <nobody@example.com>\r\n"
    );
    assert_eq!(r[6], "550 Invalid recipient: <bob@other.test>\r\n");
    assert!(r[8].starts_with("250 2.0.0"), "{r:?}");
    let files = wait_for_files(&vmail, 3);
    let mut owners: Vec<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(&vmail)
                .unwrap()
                .iter()
                .next()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    owners.sort();
    // abuse@ → bob@ → bob; team@ → alice@ → alice and bob@ → bob (bob once per recipient).
    assert_eq!(owners, ["alice", "bob", "bob"], "{files:?}");
    for f in &files {
        assert!(
            std::fs::read_to_string(f)
                .unwrap()
                .contains("routed by sqlite")
        );
    }
    let log = d.stop();
    for line in [
        "lookup: match \"example.com\" as DOMAIN in table proc:domains -> true",
        "lookup: lookup \"abuse@example.com\" as ALIAS in table proc:virtuals -> \"bob@example.com\"",
        "lookup: lookup \"team@example.net\" as ALIAS in table proc:virtuals -> \"alice@example.net, bob@example.com\"",
        "lookup: lookup \"bob\" as USERINFO in table proc:users -> ",
        "lookup: match \"other.test\" as DOMAIN in table proc:domains -> false",
    ] {
        assert!(log.contains(line), "missing {line:?} in:\n{log}");
    }
}

/// AUTH against sqlite credentials: the right password is accepted, a wrong one and an
/// unknown user are refused; the authenticated user may send as the addresses the
/// `senders` table lists for them, and as no other.
#[test]
fn sqlite_credentials_authenticate() {
    let Some((_dir, _vmail, d)) = sqlite_daemon(&["-T", "lookup"]) else {
        return;
    };
    let plain = auth_plain;
    let good = plain("bob@example.com", "bob's secret");
    let wrong = plain("bob@example.com", "bob's secreT");
    let unknown = plain("carol@example.com", "bob's secret");
    let r = dialogue(
        d.port,
        &[
            "EHLO c.test",
            &wrong,
            &unknown,
            &good,
            "MAIL FROM:<alice@example.net>",
            "MAIL FROM:<bob@example.com>",
            "RSET",
            "MAIL FROM:<anyone@example.org>",
            "QUIT",
        ],
    );
    assert!(r[1].contains("AUTH PLAIN LOGIN"), "{r:?}");
    assert_eq!(r[2], "535 Authentication failed\r\n");
    assert_eq!(r[3], "535 Authentication failed\r\n");
    assert_eq!(r[4], "235 2.0.0 Authentication succeeded\r\n");
    assert_eq!(r[5], "530 Sender rejected\r\n");
    assert_eq!(r[6], "250 2.0.0 Ok\r\n");
    assert_eq!(r[8], "250 2.0.0 Ok\r\n");
    let log = d.stop();
    assert!(
        log.contains("smtp authentication user=bob@example.com result=ok"),
        "{log}"
    );
    assert!(
        log.contains("smtp authentication user=carol@example.com result=permfail"),
        "{log}"
    );
    // Traced as 6.8 traces lookups, but the stored hash is never written to the log.
    for line in [
        "lookup: lookup \"bob@example.com\" as CREDENTIALS in table proc:credentials -> \"********\"",
        "lookup: lookup \"carol@example.com\" as CREDENTIALS in table proc:credentials -> none",
        "lookup: lookup \"bob@example.com\" as MAILADDRMAP in table proc:owners -> \"bob@example.com, @example.org\"",
    ] {
        assert!(log.contains(line), "missing {line:?} in:\n{log}");
    }
    assert!(!log.contains("$6$"), "{log}");
}

/// A table program that dies answers that one lookup as a temporary failure; the next
/// lookup starts it again and mail flows on.
#[test]
fn a_dead_table_program_is_started_again() {
    let Some((_dir, _vmail, d)) = sqlite_daemon(&[]) else {
        return;
    };
    let first = send_mail(
        d.port,
        "s@remote.test",
        "bob@example.com",
        "Subject: one\r\n\r\n",
    );
    assert!(first[5].starts_with("250 2.0.0"), "{first:?}");
    // A program is started at most once a second: this one started with the daemon.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // The `domains` table's program: argv[0] is the table's name.
    let pid = program_pid("domains").expect("the domains table program runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let r = dialogue(
        d.port,
        &[
            "HELO c.test",
            "MAIL FROM:<s@remote.test>",
            "RCPT TO:<bob@example.com>",
            "RCPT TO:<bob@example.com>",
            "QUIT",
        ],
    );
    assert!(r[3].starts_with("451 "), "{r:?}");
    assert!(r[4].starts_with("250 2.1.5"), "{r:?}");
    let again = program_pid("domains").expect("started again");
    assert_ne!(again, pid);
    let log = d.stop();
    assert!(
        log.contains("table \"domains\": pipe closed; table-sqlite terminated; signal 9"),
        "{log}"
    );
    assert!(
        log.contains("info: table-proc: table \"domains\": table-sqlite started again"),
        "{log}"
    );
}

/// The pid of the process whose command line starts with `argv0` (a table's name).
fn program_pid(argv0: &str) -> Option<i32> {
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0);
        if args.next() == Some(argv0.as_bytes())
            && args.next().is_some_and(|a| a.ends_with(b"sqlite.conf"))
            && name != me
        {
            return Some(pid);
        }
    }
    None
}

/// A table program that cannot open its table stops the start, with its own words and
/// smtpd's in the log.
#[test]
fn a_table_that_cannot_open_stops_the_start() {
    if !have(&[SQLITE_PROGRAM]) {
        return;
    }
    let dir = readable_dir();
    let conf = dir.path().join("smtpd.conf");
    std::fs::write(
        &conf,
        "table domains sqlite:/nonexistent/sqlite.conf\n\
         listen on 127.0.0.1 port 2599\n\
         action \"l\" mbox\n\
         match from any for domain <domains> action \"l\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_smtpd"))
        .arg("-d")
        .arg("-f")
        .arg(&conf)
        .arg("--spool")
        .arg(dir.path().join("spool"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("smtpd: table \"domains\": table-sqlite: pipe closed (exited with status 1)"),
        "{err}"
    );
    assert!(err.contains("fatal: error parsing config file"), "{err}");
    // `-n` does not run the program: the configuration itself is fine.
    let check = Command::new(env!("CARGO_BIN_EXE_smtpd"))
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
}

/// table-passwd serves users and credentials from one passwd-format file; `smtpctl update
/// table` has it re-read the file, and a user added there is known from then on.
#[test]
fn passwd_table_serves_users_and_credentials_and_updates() {
    if !have(&[PASSWD_PROGRAM]) {
        return;
    }
    let dir = readable_dir();
    let (vmail, ids) = vmail(dir.path());
    let (uid, gid) = ids.split_once(':').unwrap();
    let passwd = dir.path().join("passwd");
    let entry = |user: &str, pw: &str| {
        format!(
            "{user}:{}:{uid}:{gid}:{user}:{}:/sbin/nologin\n",
            hash(pw),
            vmail.display()
        )
    };
    write_readable(&passwd, &entry("bob", "bob pass"));
    let config = format!(
        "table users passwd:{p}\n\
         listen on 127.0.0.1 port PORT auth-optional <users> auth-plaintext\n\
         action \"vm\" maildir \"{v}/%{{user.username}}\" userbase <users>\n\
         match from any for domain \"example.org\" action \"vm\"\n",
        p = passwd.display(),
        v = vmail.display()
    );
    let d = Daemon::start(dir.path(), &config, &[]);
    let auth = auth_plain;
    let r = dialogue(
        d.port,
        &[
            "EHLO c.test",
            &auth("bob", "bob pass"),
            "MAIL FROM:<s@remote.test>",
            "RCPT TO:<bob@example.org>",
            "RCPT TO:<carol@example.org>",
            "QUIT",
        ],
    );
    assert_eq!(r[2], "235 2.0.0 Authentication succeeded\r\n", "{r:?}");
    assert!(r[4].starts_with("250 2.1.5"), "{r:?}");
    assert_eq!(
        r[5], "550 Invalid recipient: <carol@example.org>\r\n",
        "{r:?}"
    );
    // carol is added to the file: unknown until the table is updated.
    let mut text = std::fs::read_to_string(&passwd).unwrap();
    text.push_str(&entry("carol", "carol pass"));
    write_readable(&passwd, &text);
    let before = send_mail(
        d.port,
        "s@remote.test",
        "carol@example.org",
        "Subject: x\r\n\r\n",
    );
    assert!(before[3].starts_with("550"), "{before:?}");
    let out = smtpctl(&dir.path().join("spool"), &["update", "table", "users"]);
    assert!(out.status.success(), "{out:?}");
    let after = send_mail(
        d.port,
        "s@remote.test",
        "carol@example.org",
        "Subject: for carol\r\n\r\nnow known\r\n",
    );
    assert!(after[5].starts_with("250 2.0.0"), "{after:?}");
    let files = wait_for_files(&vmail.join("carol"), 1);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        std::fs::read_to_string(&files[0])
            .unwrap()
            .contains("now known")
    );
    let r = dialogue(
        d.port,
        &["EHLO c.test", &auth("carol", "carol pass"), "QUIT"],
    );
    assert_eq!(r[2], "235 2.0.0 Authentication succeeded\r\n", "{r:?}");
    let log = d.stop();
    assert!(
        log.contains("info: Table \"users\" successfully updated"),
        "{log}"
    );
}
