//! OpenSMTPD's reply catalogue over real TCP: scripted dialogues against the built daemon,
//! each client line checked against the exact reply text of the reference (§8.4–8.6).

mod common;
use common::free_port;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The daemon, and the directory it runs in (kept until the daemon stops).
struct Daemon(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(conf: &str, ports: &[u16]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["mx.test".to_string()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    // A private key readable by others is refused, as by OpenSMTPD.
    std::fs::set_permissions(
        dir.path().join("key.pem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let conf = conf.replace("DIR", dir.path().to_str().unwrap());
    std::fs::write(dir.path().join("smtpd.conf"), conf).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_smtpd"))
        .args(["-d", "-P", "mda", "-P", "mta", "-f"])
        .arg(dir.path().join("smtpd.conf"))
        .arg("--spool")
        .arg(dir.path().join("spool"))
        .arg("--resolv-conf")
        .arg("/nonexistent")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon(child, dir);
    let t = Instant::now();
    while !ports
        .iter()
        .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
    {
        assert!(t.elapsed() < Duration::from_secs(10), "smtpd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    fn reply(&mut self) -> String {
        let mut out = String::new();
        for _ in 0..200 {
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

    /// Send `line` (raw bytes, CRLF added) and check the reply.
    fn expect(&mut self, line: &str, reply: &str) {
        self.w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        assert_eq!(self.reply(), reply, "after {line:?}");
    }

    fn data(&mut self, body: &str, reply: &str) {
        self.w.write_all(body.as_bytes()).unwrap();
        let got = self.reply();
        assert!(
            got.starts_with(reply),
            "body {body:.40?}: expected {reply:?}, got {got:?}"
        );
    }
}

const CNA: &str = "503 5.5.1 Invalid command: Command not allowed at this point.\n";
const NOARG: &str = "500 5.5.4 Invalid command arguments: command does not accept arguments.\n";
const OK: &str = "250 2.0.0 Ok\n";
const RCPT_OK: &str = "250 2.1.5 Destination address valid: Recipient ok\n";

fn conf(p1: u16, p2: u16) -> String {
    format!(
        "pki mx.test cert \"DIR/cert.pem\"\npki mx.test key \"DIR/key.pem\"\n\
         smtp limit max-rcpt 2\nsmtp limit max-mails 3\nsmtp max-message-size 2000\n\
         table users {{ foo = \"2000:2000:/var/empty\", bar = \"2000:2000:/var/empty\" }}\n\
         listen on 127.0.0.1 port {p1} hostname mx.test\n\
         listen on 127.0.0.1 port {p2} hostname mx.test tls-require pki mx.test\n\
         action \"local\" maildir userbase <users>\n\
         match from any for domain \"bsdsx.fr\" action \"local\"\n"
    )
}

#[test]
fn reply_catalogue_over_tcp() {
    let (p1, p2) = (free_port(), free_port());
    let _d = start(&conf(p1, p2), &[p1, p2]);
    let mut c = Client::connect(p1);
    assert_eq!(c.reply(), "220 mx.test ESMTP OpenSMTPD\n");
    c.expect(
        "HELP",
        "214-2.0.0 This is OpenSMTPD\n214-2.0.0 To report bugs in the implementation, please contact bugs@openbsd.org\n214-2.0.0 with full details\n214 2.0.0 End of HELP info\n",
    );
    c.expect(
        "WIZ",
        "500 5.5.1 Invalid command: this feature is not supported yet ;-)\n",
    );
    c.expect(
        "VRFY root",
        "500 5.5.1 Invalid command: Command unrecognized\n",
    );
    c.expect(
        "EXPN list",
        "500 5.5.1 Invalid command: Command unrecognized\n",
    );
    c.expect("RSET", CNA);
    c.expect("MAIL FROM:<a@b.example>", CNA);
    c.expect(
        "EHLO",
        "501 5.5.1 Invalid command: EHLO requires domain name\n",
    );
    c.expect(
        "HELO",
        "501 5.5.1 Invalid command: HELO requires domain name\n",
    );
    c.expect(
        "EHLO a b",
        "501 5.5.4 Invalid command arguments: Invalid domain name\n",
    );
    c.expect(
        "EHLO client.example",
        "250-mx.test Hello client.example [127.0.0.1], pleased to meet you\n250-8BITMIME\n250-ENHANCEDSTATUSCODES\n250-SIZE 2000\n250-DSN\n250-PIPELINING\n250 HELP\n",
    );
    c.expect(
        "EHLO again.example",
        "503 5.5.1 Invalid command: Already identified\n",
    );
    c.expect(
        "STARTTLS",
        "503 5.5.1 Invalid command: Command not supported\n",
    );
    c.expect(
        "AUTH PLAIN",
        "503 5.5.1 Invalid command: Command not supported\n",
    );
    c.expect("NOOP x", NOARG);
    c.expect("RSET x", NOARG);
    c.expect("QUIT x", NOARG);
    c.expect("NOOP", OK);
    c.expect("RSET", "250 2.0.0 Reset state\n");
    c.expect("DATA", CNA);
    c.expect("RCPT TO:<foo@bsdsx.fr>", CNA);
    c.expect("MAIL FROM:bad", "553 5.1.0 Sender address syntax error\n");
    c.expect(
        "MAIL FROM:<a@b@c>",
        "553 5.1.0 Sender address syntax error\n",
    );
    c.expect(
        "MAIL FROM:<a@b.example> FOO=BAR",
        "503 5.5.4 Invalid command arguments: Unsupported option FOO=BAR\n",
    );
    c.expect("MAIL FROM:<a@b.example> SIZE=999999999 BODY=8BITMIME", OK);
    c.expect("MAIL FROM:<c@d.example>", CNA);
    c.expect("DATA x", NOARG);
    c.expect(
        "DATA",
        "503 5.5.4 Invalid command arguments: No recipient specified\n",
    );
    c.expect("RCPT TO:<>", "501 5.1.3 Recipient address syntax error\n");
    c.expect(
        "RCPT TO:<foo@bsdsx.fr> XYZ=1",
        "503 Unsupported option XYZ=1\n",
    );
    c.expect(
        "RCPT TO:<foo@bsdsx.fr> NOTIFY=NEVER,SUCCESS",
        "553 NOTIFY option NEVER cannot be combined with other options\n",
    );
    c.expect(
        "RCPT TO:<nobody@elsewhere.example>",
        "550 Invalid recipient: <nobody@elsewhere.example>\n",
    );
    c.expect(
        "RCPT TO:<foo@bsdsx.fr> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;foo@bsdsx.fr",
        RCPT_OK,
    );
    c.expect("RCPT TO:<@route,@r2:bar@bsdsx.fr>", RCPT_OK);
    c.expect(
        "RCPT TO:<foo@bsdsx.fr>",
        "451 4.5.3 Too many recipients: Too many recipients\n",
    );
    c.expect(
        "DATA",
        "354 Enter mail, end with \".\" on a line by itself\n",
    );
    c.data(
        "no header line\r\n\r\nbody\r\n.\r\n",
        "550 5.7.1 Delivery not authorized, message refused: Message is not RFC 2822 compliant\n",
    );
    // The session goes on: a message too big for `smtp max-message-size 2000`.
    c.expect("MAIL FROM:<a@b.example>", OK);
    c.expect("RCPT TO:<foo@bsdsx.fr>", RCPT_OK);
    c.expect(
        "DATA",
        "354 Enter mail, end with \".\" on a line by itself\n",
    );
    c.data(
        &format!(
            "Subject: big\r\n\r\n{}.\r\n",
            "x".repeat(70)
                .repeat(40)
                .replace(&"x".repeat(70), &format!("{}\r\n", "x".repeat(70)))
        ),
        "554 5.3.4 Message too big for system: Transaction failed, message too big\n",
    );
    // A routing loop: 100 Received headers.
    c.expect("MAIL FROM:<a@b.example>", OK);
    c.expect("RCPT TO:<foo@bsdsx.fr>", RCPT_OK);
    c.expect(
        "DATA",
        "354 Enter mail, end with \".\" on a line by itself\n",
    );
    c.data(
        &format!(
            "{}Subject: loop\r\n\r\nx\r\n.\r\n",
            "Received: x\r\n".repeat(100)
        ),
        "500 5.4.6 Routing loop detected: Loop detected\n",
    );
    // Three accepted messages, then max-mails.
    for _ in 0..3 {
        c.expect("MAIL FROM:<a@b.example>", OK);
        c.expect("RCPT TO:<foo@bsdsx.fr>", RCPT_OK);
        c.expect(
            "DATA",
            "354 Enter mail, end with \".\" on a line by itself\n",
        );
        c.data("Subject: ok\r\n\r\nfine\r\n.\r\n", "250 2.0.0 ");
    }
    c.expect(
        "MAIL FROM:<a@b.example>",
        "452 4.5.3 Too many recipients: Too many messages sent\n",
    );
    c.expect("QUIT", "221 2.0.0 Bye\n");

    // tls-require: no mail before STARTTLS.
    let mut c = Client::connect(p2);
    c.reply();
    c.expect("EHLO client.example", "250-mx.test Hello client.example [127.0.0.1], pleased to meet you\n250-8BITMIME\n250-ENHANCEDSTATUSCODES\n250-SIZE 2000\n250-DSN\n250-STARTTLS\n250-PIPELINING\n250 HELP\n");
    c.expect(
        "MAIL FROM:<a@b.example>",
        "530 5.5.1 Invalid command: Must issue a STARTTLS command first\n",
    );
    c.expect(
        "STARTTLS x",
        "501 5.5.4 Invalid command arguments: No parameters allowed\n",
    );
    c.expect("QUIT", "221 2.0.0 Bye\n");
}

#[test]
fn over_long_lines_close_the_session() {
    let (p1, p2) = (free_port(), free_port());
    let _d = start(&conf(p1, p2), &[p1, p2]);
    let mut c = Client::connect(p1);
    c.reply();
    c.expect(
        &format!("NOOP {}", "x".repeat(3000)),
        "500 5.0.0 Command line too long\n",
    );
    // The server closed the connection after the reply.
    let mut rest = String::new();
    assert_eq!(c.r.read_line(&mut rest).unwrap_or(0), 0, "{rest}");
}

/// Beyond the session cap (derived from the open-file limit, here 128 → 64 sessions) a new
/// client gets a 421 reply instead of silence, and the sessions already open keep working.
#[test]
fn clients_beyond_the_session_cap_get_421() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("smtpd.conf"),
        format!("listen on 127.0.0.1 port {port} hostname mx.test\naction \"l\" mbox\nmatch from any for domain \"bsdsx.fr\" action \"l\"\n"),
    )
    .unwrap();
    let cmd = format!(
        "ulimit -n 128 && exec '{}' -d -P mda -f '{}' --spool '{}' --resolv-conf /nonexistent",
        env!("CARGO_BIN_EXE_smtpd"),
        dir.path().join("smtpd.conf").display(),
        dir.path().join("spool").display()
    );
    let child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _d = Daemon(child, dir);
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "smtpd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the probe connection above end before filling the sessions.
    std::thread::sleep(Duration::from_millis(200));
    let mut open = Vec::new();
    for _ in 0..64 {
        let mut c = Client::connect(port);
        assert!(c.reply().starts_with("220 "));
        open.push(c);
    }
    let mut extra = Client::connect(port);
    let r = extra.reply();
    assert!(
        r.starts_with("421 4.3.2 mx.test Too many connections") || r.starts_with("421 "),
        "{r}"
    );
    // The first session still works.
    open[0].expect("NOOP", OK);
    // And when one leaves, a new client is served again.
    open.pop().unwrap().expect("QUIT", "221 2.0.0 Bye\n");
    std::thread::sleep(Duration::from_millis(200));
    let mut again = Client::connect(port);
    assert!(again.reply().starts_with("220 "));
}
