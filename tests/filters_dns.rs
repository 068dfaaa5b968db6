//! Builtin filters end to end: the built `smtpd -d -T filters` on loopback, a real DNS server
//! (hickory-server, in this process, on a free loopback port) serving PTR and A records for
//! 127.0.0.x, and clients that connect from different source addresses (127.0.0.1 …
//! 127.0.0.8) by binding their socket before connecting.
//!
//! The first configuration is the one of the reference transcripts (baseline §1.7); the
//! replies, the log lines and the `-T filters` lines are compared with them line for line
//! (session ids aside). A second configuration covers a trusted-network bypass, a connect
//! disconnect, mail-from/rcpt-to table rejections and a DNS temporary failure; a third
//! points smtpd at a resolver that never answers.

mod common;
use common::free_port;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::LowerName;
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use socket2::{Domain, Socket, Type};

// ---- the DNS ---------------------------------------------------------------------------

/// Reverse names of the reference transcripts, plus a NODATA and a refused forward zone.
const REVERSE_ZONE: &str = "
$ORIGIN 0.0.127.in-addr.arpa.
$TTL 60
@   IN SOA ns.bsdsx.test. hostmaster.bsdsx.test. 1 3600 600 86400 60
@   IN NS  ns.bsdsx.test.
1   IN PTR localhost.
; 127.0.0.2 and 127.0.0.3: no PTR (NXDOMAIN)
4   IN PTR norev.bsdsx.test.
5   IN PTR fcrdns.bsdsx.test.
6   IN PTR mismatch.bsdsx.test.
7   IN PTR flaky.elsewhere.test.
8   IN TXT \"a name without PTR (NODATA)\"
";

const FORWARD_ZONE: &str = "
$ORIGIN bsdsx.test.
$TTL 60
@         IN SOA ns.bsdsx.test. hostmaster.bsdsx.test. 1 3600 600 86400 60
@         IN NS  ns.bsdsx.test.
ns        IN A   127.0.0.1
fcrdns    IN A   127.0.0.5
mismatch  IN A   127.0.0.66
";

const LOCALHOST_ZONE: &str = "
$ORIGIN localhost.
$TTL 60
@   IN SOA ns.bsdsx.test. hostmaster.bsdsx.test. 1 3600 600 86400 60
@   IN NS  ns.bsdsx.test.
@   IN A   127.0.0.1
";

/// hickory-server on its own thread and runtime (the tests themselves are blocking);
/// stopped when dropped.
struct LoopbackDns {
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoopbackDns {
    fn start() -> LoopbackDns {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut catalog = Catalog::new();
                for zone in [REVERSE_ZONE, FORWARD_ZONE, LOCALHOST_ZONE] {
                    let (origin, records) = Parser::new(zone, None, None)
                        .parse()
                        .expect("test zone parses");
                    let handler = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
                        origin.clone(),
                        records,
                        ZoneType::Primary,
                        AxfrPolicy::Deny,
                    )
                    .expect("test zone loads");
                    catalog.upsert(LowerName::new(&origin), vec![Arc::new(handler)]);
                }
                let (udp, tcp) = bind_udp_and_tcp().await;
                let address = udp.local_addr().expect("udp address");
                let mut server = Server::new(catalog);
                server.register_socket(udp);
                server.register_listener(tcp, Duration::from_secs(5), 4096);
                tx.send(address).expect("report address");
                let _ = stopped.await;
                let _ = server.shutdown_gracefully().await;
            });
        });
        let address = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("DNS server started");
        LoopbackDns {
            address,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for LoopbackDns {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn bind_udp_and_tcp() -> (tokio::net::UdpSocket, tokio::net::TcpListener) {
    for _ in 0..50 {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind udp");
        let port = udp.local_addr().expect("udp address").port();
        if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return (udp, tcp);
        }
    }
    panic!("no free loopback port for both UDP and TCP after 50 tries");
}

// ---- the daemon ------------------------------------------------------------------------

/// A running `smtpd -d -T filters` whose log goes to a file; stopped on drop.
struct Daemon {
    child: Child,
    port: u16,
    port2: u16,
    dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Start smtpd with `conf` (`PORT` and `PORT2` replaced by free ports) and a resolver
    /// pointed at `nameserver`.
    fn start(conf: &str, nameserver: SocketAddr) -> Daemon {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let (port, port2) = (free_port(), free_port());
            let conf = conf
                .replace("PORT2", &port2.to_string())
                .replace("PORT", &port.to_string());
            std::fs::write(dir.path().join("smtpd.conf"), conf).expect("write conf");
            std::fs::write(
                dir.path().join("resolv.conf"),
                format!("nameserver {nameserver}\noptions timeout:1 attempts:2\n"),
            )
            .expect("write resolv.conf");
            let log = File::create(dir.path().join("log")).expect("log file");
            let child = Command::new(env!("CARGO_BIN_EXE_smtpd"))
                // Deliveries paused: the tests read the spooled messages.
                .args(["-d", "-P", "mda", "-T", "filters", "-f"])
                .arg(dir.path().join("smtpd.conf"))
                .arg("--spool")
                .arg(dir.path().join("spool"))
                .arg("--resolv-conf")
                .arg(dir.path().join("resolv.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn smtpd");
            let mut d = Daemon {
                child,
                port,
                port2,
                dir,
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                // Listeners are bound before the start-up line is logged.
                if d.log().contains("starting") && port_open(port) {
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

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The log lines of session `sid`, once its `filters session-end` (or, for an
    /// unfiltered listener, `smtp disconnected`) line is there.
    fn session_log(&self, sid: &str, last: &str) -> Vec<String> {
        let end = format!("{sid} {last}");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let log = self.log();
            if log.lines().any(|l| l.starts_with(&end)) {
                return log
                    .lines()
                    .filter(|l| l.starts_with(sid))
                    .map(|l| l[sid.len() + 1..].to_string())
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no {end:?} in the log:\n{}", self.log());
    }

    /// The session id of the latest connection from `source`.
    fn sid_of(&self, source: &str) -> String {
        let needle = format!(" smtp connected address={source} ");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(line) = self.log().lines().rev().find(|l| l.contains(&needle)) {
                return line[..16].to_string();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{source} never connected:\n{}", self.log());
    }

    fn message_file(&self, msgid: &str) -> PathBuf {
        self.dir
            .path()
            .join("spool/queue")
            .join(&msgid[..2])
            .join(msgid)
            .join("message")
    }
}

/// The daemon listens on `port`: binding it fails (a connect would open a session).
fn port_open(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_err()
}

// ---- the clients -----------------------------------------------------------------------

/// A line-oriented SMTP client whose connection comes from a chosen loopback address.
struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    fn connect_from(source: &str, port: u16) -> Client {
        let src: IpAddr = source.parse().expect("source address");
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        sock.bind(&SocketAddr::new(src, 0).into())
            .expect("bind the source address");
        sock.connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)).into(),
            Duration::from_secs(5),
        )
        .expect("connect");
        let s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        Client {
            r: BufReader::new(s.try_clone().expect("clone")),
            w: s,
        }
    }

    /// One complete reply (all its lines), or "" at end of stream.
    fn reply(&mut self) -> String {
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

    fn send(&mut self, bytes: &[u8]) {
        // The server may have closed already; the next read tells.
        let _ = self.w.write_all(bytes);
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// The server closed the connection: a read gives end of stream (or a reset).
    fn closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(self.r.read_line(&mut line), Ok(0) | Err(_))
    }

    /// DATA, the message, the final dot: returns the msgid from the 250 reply.
    fn message(&mut self, rcpt: &str) -> String {
        assert_eq!(
            self.cmd("DATA"),
            "354 Enter mail, end with \".\" on a line by itself\n"
        );
        self.send(
            format!(
                "From: <sender@client.example>\r\nTo: <{rcpt}>\r\nSubject: baseline dialogue test\r\n\
                 Message-ID: <dialogue-1@client.example>\r\n\r\nHello, this is a test body.\r\n\
                 ..a line starting with a dot (dot-stuffed on the wire)\r\n.\r\n"
            )
            .as_bytes(),
        );
        let accepted = self.reply();
        assert!(
            accepted.starts_with("250 2.0.0 ")
                && accepted.ends_with(" Message accepted for delivery\n"),
            "{accepted}"
        );
        accepted[10..18].to_string()
    }
}

const OK_MAIL: &str = "250 2.0.0 Ok\n";
const OK_RCPT: &str = "250 2.1.5 Destination address valid: Recipient ok\n";

fn ehlo(c: &mut Client) {
    let r = c.cmd("EHLO client.example");
    assert!(r.starts_with("250-vm Hello client.example ["), "{r}");
    assert!(r.ends_with("250 HELP\n"), "{r}");
}

fn stored(d: &Daemon, msgid: &str) -> String {
    std::fs::read_to_string(d.message_file(msgid))
        .unwrap_or_else(|e| panic!("{}: {e}", d.message_file(msgid).display()))
}

// ---- baseline §1.7 ---------------------------------------------------------------------

const BASELINE: &str = "table domains { \"bsdsx.fr\", \"*.bsdsx.fr\" }
table aliases { abuse = postmaster, postmaster = root, root = foo }
table users { foo = \"2000:2000:/var/empty\", bar = \"2000:2000:/var/empty\" }
table trusted { 127.0.0.2/32 }
table myfroms { \"@bsdsx\\.fr$\", \"@.*\\.bsdsx\\.fr$\" }

filter check_rdns phase connect match !rdns junk
filter check_fcrdns phase connect match !fcrdns junk
filter check_trusted phase mail-from match src <trusted> bypass
filter check_myfroms phase mail-from match mail-from regex <myfroms> disconnect \"550 invalid mail from\"
filter check chain { check_rdns, check_fcrdns, check_trusted, check_myfroms }

listen on 127.0.0.1 port PORT hostname vm filter check
action \"local_mail\" maildir \"/tmp/vmail/%{rcpt}\" junk userbase <users> alias <aliases>
match from any for domain <domains> action \"local_mail\"
";

/// The connect-phase lines of baseline §1.7 for each source.
fn connect_trace(source: &str) -> Vec<String> {
    let p = "filters protocol phase=connect";
    match source {
        "127.0.0.2" | "127.0.0.3" => vec![format!(
            "{p}, resume=n, action=junk, filter=check_rdns, query={source}"
        )],
        "127.0.0.4" | "127.0.0.6" => vec![
            format!("{p}, resume=n, action=proceed, filter=check_rdns, query={source}"),
            format!("{p}, resume=y, action=junk, filter=check_fcrdns, query={source}"),
        ],
        _ => vec![
            format!("{p}, resume=n, action=proceed, filter=check_rdns, query={source}"),
            format!("{p}, resume=y, action=proceed, filter=check_fcrdns, query={source}"),
            format!("{p}, resume=y, action=proceed"),
        ],
    }
}

/// The filter lines of one accepted transaction (data-begin's descriptor aside: smtpd
/// has no filter data stream and prints -1).
fn transaction_trace(mail_from: &[String]) -> Vec<String> {
    let mut out = mail_from.to_vec();
    out.extend(
        [
            "filters protocol phase=rcpt-to, resume=n, action=proceed",
            "filters protocol phase=data, resume=n, action=proceed",
            "filters data-begin fd=-1",
            "filters protocol phase=commit, resume=n, action=proceed",
            "filters data-end",
        ]
        .map(String::from),
    );
    out
}

fn mail_from_proceeds(from: &str) -> Vec<String> {
    let p = "filters protocol phase=mail-from";
    vec![
        format!("{p}, resume=n, action=proceed, filter=check_trusted, query={from}"),
        format!("{p}, resume=y, action=proceed, filter=check_myfroms, query={from}"),
        format!("{p}, resume=y, action=proceed"),
    ]
}

/// Sources 127.0.0.1 … 127.0.0.6 of baseline §1.7: the same replies, the same junk
/// verdicts (X-Spam: Yes first in the spooled message), the same log and trace lines.
#[test]
fn reference_sources_127_0_0_1_to_6() {
    let dns = LoopbackDns::start();
    let d = Daemon::start(BASELINE, dns.address);
    for (source, host, junk) in [
        ("127.0.0.1", "localhost", false),
        ("127.0.0.2", "<unknown>", true),
        ("127.0.0.3", "<unknown>", true),
        ("127.0.0.4", "norev.bsdsx.test", true),
        ("127.0.0.5", "fcrdns.bsdsx.test", false),
        ("127.0.0.6", "mismatch.bsdsx.test", true),
    ] {
        let t = Instant::now();
        let mut c = Client::connect_from(source, d.port);
        assert_eq!(c.reply(), "220 vm ESMTP OpenSMTPD\n", "{source}");
        let banner_after = t.elapsed();
        ehlo(&mut c);
        assert_eq!(c.cmd("MAIL FROM:<alice@client.example>"), OK_MAIL);
        assert_eq!(c.cmd("RCPT TO:<foo@bsdsx.fr>"), OK_RCPT);
        let msgid = c.message("foo@bsdsx.fr");
        let msg = stored(&d, &msgid);
        let first = msg.lines().next().unwrap_or("");
        println!("{source}: banner after {banner_after:?}, host={host}, first line {first:?}");
        assert_eq!(first == "X-Spam: Yes", junk, "{source}:\n{msg}");
        assert!(
            msg.contains(&format!(
                "Received: from client.example ({host} [{source}])"
            )),
            "{source}:\n{msg}"
        );
        let sid = d.sid_of(source);
        let mut expected = vec![
            format!("smtp connected address={source} host={host}"),
            "filters session-begin".to_string(),
        ];
        expected.extend(connect_trace(source));
        expected.push("filters protocol phase=ehlo, resume=n, action=proceed".into());
        let trusted = source == "127.0.0.2";
        if trusted {
            let bypass = |from: &str| {
                vec![format!(
                    "filters protocol phase=mail-from, resume=n, action=bypass, filter=check_trusted, query={from}"
                )]
            };
            // The trusted source bypasses check_myfroms, and stays junked.
            expected.extend(transaction_trace(&bypass("alice@client.example")));
            assert_eq!(c.cmd("MAIL FROM:<bob@sub.bsdsx.fr>"), OK_MAIL);
            assert_eq!(c.cmd("RCPT TO:<bar@bsdsx.fr>"), OK_RCPT);
            let second = c.message("bar@bsdsx.fr");
            assert!(stored(&d, &second).starts_with("X-Spam: Yes\n"));
            assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\n");
            expected.extend(transaction_trace(&bypass("bob@sub.bsdsx.fr")));
            expected.push("filters protocol phase=quit, resume=n, action=proceed".into());
        } else {
            expected.extend(transaction_trace(&mail_from_proceeds(
                "alice@client.example",
            )));
            assert_eq!(
                c.cmd("MAIL FROM:<bob@sub.bsdsx.fr>"),
                "550 invalid mail from\n",
                "{source}"
            );
            c.send(b"RCPT TO:<bar@bsdsx.fr>\r\n");
            assert!(c.closed(), "{source}: connection left open");
            expected.extend([
                "filters protocol phase=mail-from, resume=n, action=proceed, filter=check_trusted, query=bob@sub.bsdsx.fr".to_string(),
                "filters protocol phase=mail-from, resume=y, action=disconnect, filter=check_myfroms, query=bob@sub.bsdsx.fr, response=550 invalid mail from".to_string(),
                "smtp failed-command command=\"MAIL FROM:<bob@sub.bsdsx.fr>\" result=\"550 invalid mail from\"".to_string(),
            ]);
        }
        expected.push("smtp disconnected reason=quit".into());
        expected.push("filters session-end".into());
        let got: Vec<String> = d
            .session_log(&sid, "filters session-end")
            .into_iter()
            .filter(|l| !l.starts_with("smtp message ") && !l.starts_with("smtp envelope "))
            .collect();
        assert_eq!(got, expected, "{source}");
    }
    // The start-up lines are not written by the daemon yet (see the report); nothing else
    // of the filter layer may appear without a session id.
    assert!(
        !d.log().lines().any(|l| l.starts_with("filters protocol")),
        "{}",
        d.log()
    );
}

/// Other senders from 127.0.0.5 (baseline §1.7): the regex ignores case, `<>` and
/// look-alike domains pass.
#[test]
fn reference_other_senders() {
    let dns = LoopbackDns::start();
    let d = Daemon::start(BASELINE, dns.address);
    for (from, refused) in [
        ("bob@bsdsx.fr", true),
        ("bob@notbsdsx.fr", false),
        ("", false),
        ("BOB@BSDSX.FR", true),
    ] {
        let mut c = Client::connect_from("127.0.0.5", d.port);
        c.reply();
        ehlo(&mut c);
        let r = c.cmd(&format!("MAIL FROM:<{from}>"));
        let sid = d.sid_of("127.0.0.5");
        if refused {
            assert_eq!(r, "550 invalid mail from\n", "{from}");
            assert!(c.closed());
        } else {
            assert_eq!(r, OK_MAIL, "{from}");
            assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\n");
        }
        let log = d.session_log(&sid, "filters session-end");
        let mail: Vec<&String> = log
            .iter()
            .filter(|l| l.contains("phase=mail-from") || l.contains("failed-command"))
            .collect();
        println!("MAIL FROM:<{from}> -> {}", r.trim_end());
        if refused {
            assert_eq!(
                mail,
                [
                    &format!(
                        "filters protocol phase=mail-from, resume=n, action=proceed, filter=check_trusted, query={from}"
                    ),
                    &format!(
                        "filters protocol phase=mail-from, resume=y, action=disconnect, filter=check_myfroms, query={from}, response=550 invalid mail from"
                    ),
                    &format!(
                        "smtp failed-command command=\"MAIL FROM:<{from}>\" result=\"550 invalid mail from\""
                    ),
                ]
            );
        } else {
            assert_eq!(
                mail,
                mail_from_proceeds(from).iter().collect::<Vec<_>>(),
                "{from}"
            );
        }
    }
}

// ---- more conditions and decisions ---------------------------------------------------

const GUARD: &str = "table domains { \"bsdsx.fr\", \"*.bsdsx.fr\" }
table users { foo = \"2000:2000:/var/empty\", bar = \"2000:2000:/var/empty\" }
table trusted { 127.0.0.2/31 }
table banned { \"@spam.example\" }
table nobodies { \"nobody@bsdsx.fr\" }

filter trusted_src phase connect match src <trusted> bypass
filter no_rdns phase connect match !rdns disconnect \"550 no rDNS please fix\"
filter fcrdns_junk phase connect match !fcrdns junk
filter banned_from phase mail-from match mail-from <banned> reject \"550 5.7.1 sender banned\"
filter no_nobody phase rcpt-to match rcpt-to <nobodies> reject \"550 5.1.1 no such user\"
filter guard chain { trusted_src, no_rdns, fcrdns_junk, banned_from, no_nobody }

listen on 127.0.0.1 port PORT hostname vm filter guard
listen on 127.0.0.1 port PORT2 hostname vm
action \"local_mail\" maildir \"/tmp/vmail/%{rcpt}\" junk userbase <users>
match from any for domain <domains> action \"local_mail\"
";

/// A client without PTR is turned away at connect with the filter's message, unless its
/// network is trusted; table rejections at MAIL FROM and RCPT TO keep the session; a DNS
/// temporary failure of the forward lookup counts as "not forward-confirmed".
#[test]
fn trusted_bypass_disconnect_and_table_rejections() {
    let dns = LoopbackDns::start();
    let d = Daemon::start(GUARD, dns.address);

    // No PTR (NODATA), untrusted: the filter's reply replaces the banner, then EOF.
    let mut c = Client::connect_from("127.0.0.8", d.port);
    assert_eq!(c.reply(), "550 no rDNS please fix\n");
    assert!(c.closed());
    let sid = d.sid_of("127.0.0.8");
    assert_eq!(
        d.session_log(&sid, "filters session-end"),
        [
            "smtp connected address=127.0.0.8 host=<unknown>",
            "filters session-begin",
            "filters protocol phase=connect, resume=n, action=proceed, filter=trusted_src, query=127.0.0.8",
            "filters protocol phase=connect, resume=y, action=disconnect, filter=no_rdns, query=127.0.0.8, response=550 no rDNS please fix",
            "smtp failed-command command=\"\" result=\"550 no rDNS please fix\"",
            "smtp disconnected reason=quit",
            "filters session-end",
        ]
    );

    // The same client on the unfiltered listener: no filter logic, no filter lines.
    let mut c = Client::connect_from("127.0.0.8", d.port2);
    assert_eq!(c.reply(), "220 vm ESMTP OpenSMTPD\n");
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\n");
    let sid = d.sid_of("127.0.0.8");
    assert_eq!(
        d.session_log(&sid, "smtp disconnected"),
        [
            "smtp connected address=127.0.0.8 host=<unknown>",
            "smtp disconnected reason=quit",
        ]
    );

    // No PTR either, but inside 127.0.0.2/31: bypassed at connect, so not even junked.
    for source in ["127.0.0.2", "127.0.0.3"] {
        let mut c = Client::connect_from(source, d.port);
        assert_eq!(c.reply(), "220 vm ESMTP OpenSMTPD\n", "{source}");
        ehlo(&mut c);
        assert_eq!(c.cmd("MAIL FROM:<alice@client.example>"), OK_MAIL);
        assert_eq!(c.cmd("RCPT TO:<foo@bsdsx.fr>"), OK_RCPT);
        let msgid = c.message("foo@bsdsx.fr");
        assert!(
            stored(&d, &msgid).starts_with("Received: from client.example (<unknown> ["),
            "{source}: {}",
            stored(&d, &msgid)
        );
        assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\n");
        let sid = d.sid_of(source);
        let log = d.session_log(&sid, "filters session-end");
        assert!(
            log.contains(&format!("filters protocol phase=connect, resume=n, action=bypass, filter=trusted_src, query={source}")),
            "{log:#?}"
        );
    }

    // Forward-confirmed: table rejections answer and keep the session.
    let mut c = Client::connect_from("127.0.0.5", d.port);
    assert_eq!(c.reply(), "220 vm ESMTP OpenSMTPD\n");
    ehlo(&mut c);
    assert_eq!(
        c.cmd("MAIL FROM:<Eve@SPAM.example>"),
        "550 5.7.1 sender banned\n"
    );
    assert_eq!(c.cmd("MAIL FROM:<alice@client.example>"), OK_MAIL);
    assert_eq!(
        c.cmd("RCPT TO:<nobody@bsdsx.fr>"),
        "550 5.1.1 no such user\n"
    );
    assert_eq!(c.cmd("RCPT TO:<foo@bsdsx.fr>"), OK_RCPT);
    let msgid = c.message("foo@bsdsx.fr");
    let clean = stored(&d, &msgid);
    assert!(
        clean.starts_with("Received: from client.example (fcrdns.bsdsx.test [127.0.0.5])"),
        "{clean}"
    );
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\n");
    let sid = d.sid_of("127.0.0.5");
    let log = d.session_log(&sid, "filters session-end");
    for line in [
        "filters protocol phase=mail-from, resume=n, action=reject, filter=banned_from, query=Eve@SPAM.example, response=550 5.7.1 sender banned",
        "smtp failed-command command=\"MAIL FROM:<Eve@SPAM.example>\" result=\"550 5.7.1 sender banned\"",
        "filters protocol phase=rcpt-to, resume=n, action=reject, filter=no_nobody, query=nobody@bsdsx.fr, response=550 5.1.1 no such user",
        "smtp failed-command command=\"RCPT TO:<nobody@bsdsx.fr>\" result=\"550 5.1.1 no such user\"",
        "filters protocol phase=rcpt-to, resume=n, action=proceed, filter=no_nobody, query=foo@bsdsx.fr",
        "smtp disconnected reason=quit",
    ] {
        assert!(
            log.iter().any(|l| l == line),
            "missing {line:?} in {log:#?}"
        );
    }

    // A reverse name whose forward lookup fails (the server refuses the zone): not
    // confirmed, hence junk, and nothing logged, as with OpenSMTPD's resolver.
    for (source, host) in [
        ("127.0.0.7", "flaky.elsewhere.test"),
        ("127.0.0.4", "norev.bsdsx.test"),
        ("127.0.0.6", "mismatch.bsdsx.test"),
    ] {
        let mut c = Client::connect_from(source, d.port);
        assert_eq!(c.reply(), "220 vm ESMTP OpenSMTPD\n", "{source}");
        ehlo(&mut c);
        assert_eq!(c.cmd("MAIL FROM:<alice@client.example>"), OK_MAIL);
        assert_eq!(c.cmd("RCPT TO:<bar@bsdsx.fr>"), OK_RCPT);
        let msgid = c.message("bar@bsdsx.fr");
        let msg = stored(&d, &msgid);
        assert!(
            msg.starts_with("X-Spam: Yes\nReceived: from client.example ("),
            "{msg}"
        );
        assert!(msg.contains(&format!("({host} [{source}])")), "{msg}");
        assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\n");
        let sid = d.sid_of(source);
        let log = d.session_log(&sid, "filters session-end");
        assert!(
            log.contains(&format!("filters protocol phase=connect, resume=y, action=junk, filter=fcrdns_junk, query={source}")),
            "{log:#?}"
        );
    }
    assert!(!d.log().contains("getaddrinfo"), "{}", d.log());
}

/// A name server that never answers: the banner waits for the bounded rDNS lookup only
/// (OpenSMTPD 6.8 waited 75 s), the client is `<unknown>`, and `!rdns` junks it.
#[test]
fn dead_resolver_costs_a_bounded_wait() {
    // Bound, never read: queries vanish without an ICMP error.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let d = Daemon::start(BASELINE, silent.local_addr().expect("address"));
    let t = Instant::now();
    let mut c = Client::connect_from("127.0.0.5", d.port);
    assert_eq!(c.reply(), "220 vm ESMTP OpenSMTPD\n");
    let waited = t.elapsed();
    println!("dead resolver: banner after {waited:?}");
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    ehlo(&mut c);
    assert_eq!(c.cmd("MAIL FROM:<alice@client.example>"), OK_MAIL);
    assert_eq!(c.cmd("RCPT TO:<foo@bsdsx.fr>"), OK_RCPT);
    let msgid = c.message("foo@bsdsx.fr");
    assert!(stored(&d, &msgid).starts_with("X-Spam: Yes\n"));
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\n");
    let sid = d.sid_of("127.0.0.5");
    let log = d.session_log(&sid, "filters session-end");
    assert_eq!(log[0], "smtp connected address=127.0.0.5 host=<unknown>");
    assert_eq!(
        log[2],
        "filters protocol phase=connect, resume=n, action=junk, filter=check_rdns, query=127.0.0.5"
    );
    drop(silent);
}
