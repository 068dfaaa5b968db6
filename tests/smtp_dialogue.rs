//! The SMTP engine over real TCP: the built `smtpd -d` on a loopback port, scripted clients,
//! and the spool on disk.

mod common;
use common::free_port;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `smtpd -d` with its own spool, stopped on drop.
pub struct Daemon {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Start smtpd on a free port; `conf` uses `PORT` where the port goes. A port can be
    /// taken between choosing and binding it, so a few attempts are made.
    pub fn start(conf: &str) -> Daemon {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            std::fs::write(
                dir.path().join("smtpd.conf"),
                conf.replace("PORT", &port.to_string()),
            )
            .unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_smtpd"))
                // Deliveries paused: the tests look at the queue.
                .args(["-d", "-P", "mda", "-f"])
                .arg(dir.path().join("smtpd.conf"))
                .arg("--spool")
                .arg(dir.path().join("spool"))
                .arg("--resolv-conf")
                .arg(dir.path().join("no-resolv.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut d = Daemon { child, port, dir };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return d;
                }
                if let Ok(Some(_)) = d.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("smtpd would not start");
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }
}

/// A line-oriented client.
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    /// One complete reply (all its lines).
    pub fn reply(&mut self) -> String {
        let mut out = String::new();
        for _ in 0..100 {
            let mut line = String::new();
            if self.r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            out.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                break;
            }
        }
        out.replace("\r\n", "\n")
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// Send a command line and return the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }
}

const CONF: &str = "listen on 127.0.0.1 port PORT hostname mx.test
table domains { \"bsdsx.fr\", \"*.bsdsx.fr\" }
table aliases { abuse = postmaster, postmaster = root, root = foo }
table users { foo = \"2000:2000:/var/empty\", bar = \"2000:2000:/var/empty\" }
action \"local_mail\" maildir \"/tmp/vmail/%{rcpt}\" junk userbase <users> alias <aliases>
match from any for domain <domains> action \"local_mail\"
";

fn ehlo_reply() -> &'static str {
    "250-mx.test Hello client.example [127.0.0.1], pleased to meet you\n250-8BITMIME\n250-ENHANCEDSTATUSCODES\n250-SIZE 36700160\n250-DSN\n250-PIPELINING\n250 HELP\n"
}

fn queued_envelopes(spool: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let q = spool.join("queue");
    for b in std::fs::read_dir(&q).into_iter().flatten().flatten() {
        for m in std::fs::read_dir(b.path()).into_iter().flatten().flatten() {
            for e in std::fs::read_dir(m.path()).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.len() == 16 && name.chars().all(|c| c.is_ascii_hexdigit()) {
                    out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
    }
    out
}

#[test]
fn walkthrough_session_with_opensmtpd_replies() {
    let d = Daemon::start(CONF);
    let mut c = Client::connect(d.port);
    assert_eq!(c.reply(), "220 mx.test ESMTP OpenSMTPD\n");
    assert_eq!(c.cmd("EHLO client.example"), ehlo_reply());
    assert_eq!(c.cmd("MAIL FROM:<>"), "250 2.0.0 Ok\n");
    let ok = "250 2.1.5 Destination address valid: Recipient ok\n";
    // Session 1 of the reference walkthrough, then session 2's bare local parts, case, +tag.
    for (rcpt, reply) in [
        ("abuse@bsdsx.fr", ok),
        ("postmaster@bsdsx.fr", ok),
        ("root@bsdsx.fr", ok),
        ("foo@bsdsx.fr", ok),
        ("bar@bsdsx.fr", ok),
        (
            "nobody@bsdsx.fr",
            "550 Invalid recipient: <nobody@bsdsx.fr>\n",
        ),
        ("foo@sub.bsdsx.fr", ok),
        (
            "foo@other.example",
            "550 Invalid recipient: <foo@other.example>\n",
        ),
        ("abuse", "550 Invalid recipient: <abuse@mx.test>\n"),
        ("FOO@BSDSX.FR", ok),
        ("foo+tag@bsdsx.fr", ok),
        ("bsdsx.fr", "550 Invalid recipient: <bsdsx.fr@mx.test>\n"),
        (
            "root@absdsx.fr",
            "550 Invalid recipient: <root@absdsx.fr>\n",
        ),
        (
            "root@bsdsx.fr.fr",
            "550 Invalid recipient: <root@bsdsx.fr.fr>\n",
        ),
    ] {
        assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")), reply, "{rcpt}");
    }
    assert_eq!(
        c.cmd("DATA"),
        "354 Enter mail, end with \".\" on a line by itself\n"
    );
    c.send(
        b"From: <sender@client.example>\r\nSubject: test\r\n\r\nHello.\r\n..a dot line\r\n.\r\n",
    );
    let accepted = c.reply();
    assert!(
        accepted.starts_with("250 2.0.0 ")
            && accepted.ends_with(" Message accepted for delivery\n"),
        "{accepted}"
    );
    let msgid = accepted.split(' ').nth(2).unwrap().to_string();
    assert_eq!(msgid.len(), 8);
    // 250 means on disk: one envelope per accepted RCPT is in the queue now.
    let envs = queued_envelopes(&d.spool());
    assert_eq!(envs.len(), 8, "{envs:?}");
    assert!(
        envs.iter().all(|e| e.contains("dispatcher: local_mail")),
        "{envs:?}"
    );
    // abuse@ went through the alias chain abuse -> postmaster -> root -> foo.
    assert!(
        envs.iter()
            .any(|e| e.contains("rcpt: abuse@bsdsx.fr") && e.contains("mda-user: foo")),
        "{envs:?}"
    );
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\n");
}

#[test]
fn command_errors_and_sequence() {
    let d = Daemon::start(CONF);
    let mut c = Client::connect(d.port);
    c.reply();
    assert_eq!(
        c.cmd("FOO"),
        "500 5.5.1 Invalid command: Command unrecognized\n"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.example>"),
        "503 5.5.1 Invalid command: Command not allowed at this point.\n"
    );
    assert_eq!(
        c.cmd("HELO client.example"),
        "250 mx.test Hello client.example [127.0.0.1], pleased to meet you\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<foo@bsdsx.fr>"),
        "503 5.5.1 Invalid command: Command not allowed at this point.\n"
    );
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 Ok\n");
    assert_eq!(c.cmd("RSET"), "250 2.0.0 Reset state\n");
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\n");
}

#[test]
fn pipelined_transaction_with_dot_and_quit_together() {
    let d = Daemon::start(CONF);
    let mut c = Client::connect(d.port);
    c.reply();
    assert_eq!(c.cmd("EHLO client.example"), ehlo_reply());
    c.send(b"MAIL FROM:<s@client.example>\r\nRCPT TO:<foo@bsdsx.fr>\r\nRCPT TO:<nobody@other.example>\r\nDATA\r\n");
    assert_eq!(c.reply(), "250 2.0.0 Ok\n");
    assert_eq!(
        c.reply(),
        "250 2.1.5 Destination address valid: Recipient ok\n"
    );
    assert_eq!(c.reply(), "550 Invalid recipient: <nobody@other.example>\n");
    assert_eq!(
        c.reply(),
        "354 Enter mail, end with \".\" on a line by itself\n"
    );
    c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    assert!(c.reply().ends_with("Message accepted for delivery\n"));
    assert_eq!(c.reply(), "221 2.0.0 Bye\n");
    assert_eq!(queued_envelopes(&d.spool()).len(), 1);
}

/// SMTP smuggling: only CRLF.CRLF ends the data; a fake end followed by commands is text.
#[test]
fn smuggled_end_of_data_is_not_a_command() {
    let d = Daemon::start(CONF);
    for fake in ["\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\r", "\r\n.\n"] {
        let mut c = Client::connect(d.port);
        c.reply();
        c.cmd("EHLO client.example");
        c.cmd("MAIL FROM:<s@client.example>");
        c.cmd("RCPT TO:<foo@bsdsx.fr>");
        assert!(c.cmd("DATA").starts_with("354"));
        let smuggled = format!(
            "Subject: x\r\n\r\nhello{fake}MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@bsdsx.fr>\r\nDATA\r\nevil\r\n.\r\n"
        );
        c.send(smuggled.as_bytes());
        let r = c.reply();
        // Exactly one reply for the whole DATA: either accepted as one message or refused,
        // never a 250 for the smuggled MAIL FROM.
        assert!(
            r.starts_with("250 2.0.0 ") || r.starts_with("5"),
            "{fake:?}: {r}"
        );
        assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\n", "{fake:?}");
    }
    // No envelope for the victim: the smuggled transaction never happened.
    let envs = queued_envelopes(&d.spool());
    assert!(
        envs.iter().all(|e| !e.contains("victim@bsdsx.fr")),
        "{envs:?}"
    );
}

#[test]
fn python_smtplib_client() {
    if Command::new("python3").arg("-V").output().is_err() {
        common::skip("python3 missing");
        return;
    }
    let d = Daemon::start(CONF);
    let script = format!(
        "import smtplib\n\
         s = smtplib.SMTP('127.0.0.1', {port}, local_hostname='client.example', timeout=10)\n\
         refused = s.sendmail('sender@client.example', ['foo@bsdsx.fr', 'bar@bsdsx.fr'], 'Subject: smtplib\\r\\n\\r\\nhi\\r\\n')\n\
         print('refused', refused)\n\
         s.quit()\n",
        port = d.port
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "refused {}");
    assert_eq!(queued_envelopes(&d.spool()).len(), 2);
}

#[test]
fn swaks_client() {
    if Command::new("swaks").arg("--version").output().is_err() {
        common::skip("swaks missing (apt-get install swaks)");
        return;
    }
    let d = Daemon::start(CONF);
    let out = Command::new("swaks")
        .args([
            "--server",
            &format!("127.0.0.1:{}", d.port),
            "--helo",
            "client.example",
        ])
        .args([
            "--from",
            "sender@client.example",
            "--to",
            "foo@bsdsx.fr,bar@bsdsx.fr",
        ])
        .args([
            "--header",
            "Subject: swaks",
            "--body",
            "hello from swaks",
            "--pipeline",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("<-  250 2.0.0 ") && text.contains("Message accepted for delivery"),
        "{text}"
    );
    assert_eq!(queued_envelopes(&d.spool()).len(), 2);
    // A refused recipient: swaks reports the 550 and fails.
    let out = Command::new("swaks")
        .args([
            "--server",
            &format!("127.0.0.1:{}", d.port),
            "--helo",
            "client.example",
        ])
        .args([
            "--from",
            "sender@client.example",
            "--to",
            "nobody@elsewhere.example",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("<** 550 Invalid recipient: <nobody@elsewhere.example>"),
        "{text}"
    );
}

/// The banner does not wait for the client's reverse lookup on a listener without filters:
/// with a name server that never answers, it still comes at once, and the lookup's bounded
/// failure (`host=<unknown>`) is known before the first command is processed.
#[test]
fn banner_is_not_held_by_a_dead_resolver() {
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("resolv.conf"),
        format!(
            "nameserver 127.0.0.1:{}\n",
            dead.local_addr().unwrap().port()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("smtpd.conf"),
        CONF.replace("PORT", &port.to_string()),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_smtpd"))
        .args(["-d", "-P", "mda", "-f"])
        .arg(dir.path().join("smtpd.conf"))
        .arg("--spool")
        .arg(dir.path().join("spool"))
        .arg("--resolv-conf")
        .arg(dir.path().join("resolv.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    let mut c = Client::connect(port);
    assert_eq!(c.reply(), "220 mx.test ESMTP OpenSMTPD\n");
    let banner_wait = t.elapsed();
    // The resolver's bound is 2 s; the banner must not have waited for it.
    assert!(
        banner_wait < Duration::from_millis(1500),
        "banner took {banner_wait:?}"
    );
    assert_eq!(c.cmd("EHLO client.example"), ehlo_reply());
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\n");
    let _ = child.kill();
    let _ = child.wait();
}
