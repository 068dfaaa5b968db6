//! End to end: `smtpd -d` accepts mail for a foreign domain from a local client
//! (`match from local for any action "relay"`) and relays it to an SMTP sink on loopback,
//! with STARTTLS and AUTH PLAIN from an `auth` table; a 5xx from the sink is a permanent
//! failure that leaves the queue; MX routing through a DNS server on loopback
//! (hickory-server in-process) to a sink on port 25 of 127.0.0.23.

mod common;
mod relay_support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, files_under};
use relay_support::{Sink, tls_config};

/// Log lines of the daemon, waited for.
trait LogLine {
    /// Waits (bounded) until the log holds a line containing `needle`.
    fn wait_for(&self, needle: &str) -> String;
}

impl LogLine for Daemon {
    fn wait_for(&self, needle: &str) -> String {
        let t = Instant::now();
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "no log line with {needle:?} in:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn start(dir: &Path, conf: &str) -> (Daemon, u16) {
    start_with_dns(dir, conf, Path::new("/nonexistent"))
}

fn start_with_dns(dir: &Path, conf: &str, resolv_conf: &Path) -> (Daemon, u16) {
    start_with_args(dir, conf, resolv_conf, &[])
}

fn start_with_args(dir: &Path, conf: &str, resolv_conf: &Path, extra: &[&str]) -> (Daemon, u16) {
    let d = Daemon::start_with_resolver(dir, conf, extra, &dir.join("spool"), resolv_conf);
    let port = d.port;
    (d, port)
}

/// Waits (at most 10 s) until the daemon's control socket is in `spool`.
fn wait_for_control(spool: &Path) {
    let t = Instant::now();
    while !spool.join("smtpd.sock").exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one message over SMTP, returning the last reply.
fn submit(port: u16, from: &str, to: &str, body: &str) -> String {
    submit_rcpts(port, from, &[to], body)
}

/// Sends `n` messages from alice, message `i` to `bob{i}@far.test` with the subject
/// `{subject}{i}` and the body `body {i}`; each must be accepted.
fn submit_numbered(port: u16, n: usize, subject: &str) {
    for i in 0..n {
        let reply = submit(
            port,
            "alice@client.test",
            &format!("bob{i}@far.test"),
            &format!("Subject: {subject}{i}\r\n\r\nbody {i}\r\n"),
        );
        assert!(reply.starts_with("250"), "{reply}");
    }
}

/// Starts `sink` and smtpd relaying to it (`head` lines first, `extra` action options);
/// returns the sink, the daemon, its port and its directory.
async fn relay_to(sink: Sink, head: &str, extra: &str) -> (Sink, Daemon, u16, tempfile::TempDir) {
    let (sink, addr) = sink.start("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (daemon, port) = start(dir.path(), &relay_conf(head, addr.port(), extra));
    (sink, daemon, port, dir)
}

/// Starts `sink` and smtpd relaying to it (`head` lines first, `extra` action options),
/// sends `n` numbered messages and waits (at most `secs`) until all are delivered.
async fn relay_numbered(
    sink: Sink,
    head: &str,
    extra: &str,
    n: usize,
    secs: u64,
) -> (Sink, Daemon, tempfile::TempDir) {
    let (sink, daemon, port, dir) = relay_to(sink, head, extra).await;
    tokio::task::spawn_blocking(move || submit_numbered(port, n, "message "))
        .await
        .unwrap();
    let lines = wait_for_n(&daemon, "mta delivery", n, secs);
    assert!(
        lines.iter().all(|l| l.contains("result=\"Ok\"")),
        "{lines:#?}"
    );
    (sink, daemon, dir)
}

/// Sends one message from alice to `rcpts`, which must be accepted.
async fn send_from_alice(port: u16, rcpts: &'static [&'static str], body: &'static str) {
    let reply =
        tokio::task::spawn_blocking(move || submit_rcpts(port, "alice@client.test", rcpts, body))
            .await
            .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
}

/// Sends one message to several recipients (with optional RCPT parameters after a space).
fn submit_rcpts(port: u16, from: &str, rcpts: &[&str], body: &str) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    read_last(&mut r);
    let mut last = String::new();
    let mail = match from.split_once(' ') {
        Some((addr, params)) => format!("MAIL FROM:<{addr}> {params}"),
        None => format!("MAIL FROM:<{from}>"),
    };
    let mut lines = vec!["EHLO client.test".to_string(), mail];
    for to in rcpts {
        match to.split_once(' ') {
            Some((addr, params)) => lines.push(format!("RCPT TO:<{addr}> {params}")),
            None => lines.push(format!("RCPT TO:<{to}>")),
        }
    }
    lines.push("DATA".to_string());
    for l in lines {
        w.write_all(format!("{l}\r\n").as_bytes()).unwrap();
        last = read_last(&mut r);
    }
    assert!(last.starts_with("354"), "{last}");
    w.write_all(body.as_bytes()).unwrap();
    w.write_all(b".\r\n").unwrap();
    let done = read_last(&mut r);
    w.write_all(b"QUIT\r\n").unwrap();
    read_last(&mut r);
    done
}

/// The last line of one SMTP reply (`250 …` after any `250-…` lines), with its line end.
fn read_last(r: &mut impl BufRead) -> String {
    let reply = common::read_reply(r);
    let body = reply.strip_suffix('\n').unwrap_or(&reply);
    match body.rfind('\n') {
        Some(i) => reply[i + 1..].to_string(),
        None => reply,
    }
}

fn evpid_of(line: &str) -> String {
    line.split("evpid=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_mail_is_relayed_with_starttls_and_auth_plain() {
    let sink = Sink {
        tls: Some(tls_config()),
        auth: true,
        ..Sink::default()
    };
    let (sink, addr) = sink.start("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secrets"), "lbl joe:s3cret\n").unwrap();
    let conf = format!(
        "table secrets file:{}\n\
         mta limit conn-delay-route 0 reconn-delay-route 0\n\
         listen on 127.0.0.1 port PORT\n\
         action \"relay\" relay host \"smtp+tls://lbl@127.0.0.1:{}\" auth <secrets> tls no-verify\n\
         match from local for any action \"relay\"\n",
        dir.path().join("secrets").display(),
        addr.port()
    );
    let (daemon, port) = start_with_args(
        dir.path(),
        &conf,
        Path::new("/nonexistent"),
        &["-T", "mta", "-T", "smtp"],
    );
    let reply = tokio::task::spawn_blocking(move || {
        submit(
            port,
            "alice@client.test",
            "bob@far.test",
            // The client dot-stuffs: the message holds ".dot line".
            "Subject: relayed\r\n\r\n..dot line\r\nbye\r\n",
        )
    })
    .await
    .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    let delivery = daemon.wait_for("mta delivery");
    println!("{delivery}");
    let log = daemon.log();
    let sid = delivery.split(' ').next().unwrap_or("");
    assert!(
        log.lines()
            .any(|l| l.starts_with(sid) && l.contains(" mta connected")),
        "the delivery line carries the session id {sid}"
    );
    assert!(delivery.contains("from=<alice@client.test> to=<bob@far.test> rcpt=<->"));
    assert!(
        delivery.contains(" source=\"127.0.0.1\" relay=\"127.0.0.1 (127.0.0.1)\" "),
        "{delivery}"
    );
    assert!(delivery.ends_with("result=\"Ok\" stat=\"250 2.0.0 queued as 42\""));
    let connecting = format!(
        " mta connecting address=smtp://127.0.0.1:{} host=127.0.0.1",
        addr.port()
    );
    assert!(log.contains(&connecting), "{log}");
    assert!(log.contains(" mta connected"));
    assert!(log.contains(" mta tls ciphers=TLSv1."));
    daemon.wait_for("mta disconnected reason=quit messages=1");

    // `-T mta`: the outbound dialogue, credentials masked; `-T smtp`: the inbound one.
    let log = daemon.log();
    for line in [
        format!("mta: 0x{sid}: >>> EHLO "),
        format!("mta: 0x{sid}: <<< 220 "),
        format!("mta: 0x{sid}: >>> STARTTLS"),
        format!("mta: 0x{sid}: >>> AUTH PLAIN ********"),
        format!("mta: 0x{sid}: <<< 235 "),
        format!("mta: 0x{sid}: >>> MAIL FROM:<alice@client.test>"),
        format!("mta: 0x{sid}: >>> RCPT TO:<bob@far.test>"),
        format!("mta: 0x{sid}: >>> QUIT"),
        ": <<< MAIL FROM:<alice@client.test>".to_string(),
        ": >>> 250 2.1.5 Destination address valid: Recipient ok".to_string(),
    ] {
        assert!(log.contains(&line), "no {line:?} in:\n{log}");
    }
    assert!(
        !log.contains("AGpvZQBzM2NyZXQ="),
        "credentials in the trace:\n{log}"
    );
    // The state changes, in OpenSMTPD's order for STARTTLS and AUTH PLAIN.
    let states = [
        "MTA_INIT -> MTA_INIT",
        "MTA_INIT -> MTA_BANNER",
        "MTA_BANNER -> MTA_EHLO",
        "MTA_EHLO -> MTA_STARTTLS",
        "MTA_STARTTLS -> MTA_EHLO",
        "MTA_EHLO -> MTA_STARTTLS",
        "MTA_STARTTLS -> MTA_AUTH",
        "MTA_AUTH -> MTA_AUTH_PLAIN",
        "MTA_AUTH_PLAIN -> MTA_READY",
        "MTA_READY -> MTA_MAIL",
        "MTA_MAIL -> MTA_RCPT",
        "MTA_RCPT -> MTA_DATA",
        "MTA_DATA -> MTA_BODY",
        // The body queued, taken by the connection, then the end of the file.
        "MTA_BODY -> MTA_BODY",
        "MTA_BODY -> MTA_EOM",
        "MTA_EOM -> MTA_READY",
        "MTA_READY -> MTA_QUIT",
    ];
    let prefix = format!("mta: 0x{sid}: ");
    let traced: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter(|l| l.starts_with("MTA_"))
        .collect();
    assert_eq!(traced, states, "{log}");

    let cmds = sink.commands();
    assert!(cmds.contains(&"TLS".to_string()), "{cmds:?}");
    assert!(
        cmds.contains(&"AUTH PLAIN AGpvZQBzM2NyZXQ=".to_string()),
        "{cmds:?}"
    );
    assert!(cmds.contains(&"MAIL FROM:<alice@client.test>".to_string()));
    assert!(cmds.contains(&"RCPT TO:<bob@far.test>".to_string()));
    let data = String::from_utf8(sink.data.lock().unwrap()[0].clone()).unwrap();
    assert!(data.contains("Subject: relayed\r\n"), "{data}");
    assert!(
        data.ends_with("\r\n\r\n..dot line\r\nbye\r\n.\r\n"),
        "{data:?}"
    );
    assert!(
        !data.replace("\r\n", "").contains('\n'),
        "bare LF in {data:?}"
    );

    // The envelope left the queue.
    let evpid = evpid_of(&delivery);
    let t = Instant::now();
    while files_under(&dir.path().join("spool"))
        .iter()
        .any(|p| p.to_string_lossy().contains(&evpid))
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "envelope {evpid} still queued"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_refusal_is_logged_and_the_envelope_removed() {
    let sink = Sink {
        rcpt_replies: vec!["550 5.1.1 unknown user".into()],
        ..Sink::default()
    };
    let (sink, addr) = sink.start("127.0.0.1:0").await.unwrap();
    let (daemon, dir) = relay_with(
        &relay_conf("", addr.port(), ""),
        "ghost@far.test",
        "Subject: x\r\n\r\nhi\r\n",
    )
    .await;
    let delivery = daemon.wait_for("mta delivery");
    println!("{delivery}");
    assert!(delivery.ends_with("result=\"PermFail\" stat=\"550 5.1.1 unknown user\""));
    assert!(sink.data.lock().unwrap().is_empty());
    let evpid = evpid_of(&delivery);
    let t = Instant::now();
    while files_under(&dir.path().join("spool"))
        .iter()
        .any(|p| p.to_string_lossy().contains(&evpid))
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "envelope {evpid} still queued"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const MX_ZONE: &str = "
$ORIGIN far.test.
$TTL 60
@    IN SOA ns.far.test. hostmaster.far.test. 1 3600 600 86400 60
@    IN NS  ns.far.test.
ns   IN A   127.0.0.1
@    IN MX  20 mx2.far.test.
@    IN MX  10 mx1.far.test.
mx1  IN A   127.0.0.24
mx2  IN A   127.0.0.23
";

/// The reverse zone of the MX test: a PTR name for mx2's address only.
const PTR_ZONE: &str = "$ORIGIN 127.in-addr.arpa.
$TTL 300
@        IN SOA ns.far.test. admin.far.test. 1 3600 600 86400 300
@        IN NS  ns.far.test.
23.0.0   IN PTR mx2.far.test.
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_follows_the_mx_records_to_port_25() {
    let sink = match Sink::default().start("127.0.0.23:25").await {
        Ok((s, _)) => s,
        Err(e) => {
            common::skip(&format!("cannot bind 127.0.0.23:25: {e}"));
            return;
        }
    };
    // mx2's address has a PTR name, mx1's none.
    let (_dns, dns_addr) = common::loopback_dns_zones(&[MX_ZONE, PTR_ZONE]).await;
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("nameserver {dns_addr}\noptions timeout:2 attempts:2\n"),
    )
    .unwrap();
    let conf = "listen on 127.0.0.1 port PORT\n\
                action \"out\" relay helo out.example\n\
                match from local for any action \"out\"\n";
    let (daemon, port) = start_with_dns(dir.path(), conf, &resolv);
    let reply = tokio::task::spawn_blocking(move || {
        submit(
            port,
            "alice@client.test",
            "carol@far.test",
            "Subject: mx\r\n\r\nvia mx\r\n",
        )
    })
    .await
    .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    let delivery = daemon.wait_for("mta delivery");
    println!("{delivery}");
    // As 6.8 names the host: its address and its PTR name; the source is the local
    // address of the connection.
    assert!(
        delivery.contains(" source=\"127.0.0.1\" relay=\"127.0.0.23 (mx2.far.test)\" "),
        "{delivery}"
    );
    assert!(delivery.ends_with("result=\"Ok\" stat=\"250 2.0.0 queued as 42\""));
    let log = daemon.log();
    // mx1 (preference 10) refuses; mx2 (20) is the sink.
    // `host=` is the address's PTR name, or the address when it has none.
    assert!(
        log.contains(" mta connecting address=smtp://127.0.0.24:25 host=127.0.0.24\n"),
        "{log}"
    );
    assert!(
        log.contains(" mta connecting address=smtp://127.0.0.23:25 host=mx2.far.test\n"),
        "{log}"
    );
    let cmds = sink.commands();
    assert_eq!(cmds.first().map(String::as_str), Some("EHLO out.example"));
    assert!(cmds.contains(&"RCPT TO:<carol@far.test>".to_string()));
    let data = String::from_utf8(sink.data.lock().unwrap()[0].clone()).unwrap();
    assert!(data.ends_with("\r\n\r\nvia mx\r\n.\r\n"), "{data:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_address_and_its_helo_name() {
    let (sink, addr) = Sink::default().start("127.0.0.1:0").await.unwrap();
    let (daemon, _dir) = relay_with(
        &relay_conf(
            "",
            addr.port(),
            " src \"127.0.0.5\" helo-src { \"127.0.0.5\" = \"five.example\" }",
        ),
        "bob@far.test",
        "Subject: s\r\n\r\nx\r\n",
    )
    .await;
    let delivery = daemon.wait_for("mta delivery");
    println!("{delivery}");
    assert!(delivery.contains("source=\"127.0.0.5\""), "{delivery}");
    assert!(delivery.contains("result=\"Ok\""), "{delivery}");
    let peers = sink.peers.lock().unwrap().clone();
    assert_eq!(peers[0].ip().to_string(), "127.0.0.5");
    assert_eq!(sink.commands()[0], "EHLO five.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_refusal_keeps_the_envelope_with_its_error() {
    let sink = Sink {
        rcpt_replies: vec!["451 4.3.0 try later".into()],
        ..Sink::default()
    };
    let (_sink, addr) = sink.start("127.0.0.1:0").await.unwrap();
    let (daemon, dir) = relay_with(
        &relay_conf("", addr.port(), ""),
        "bob@far.test",
        "Subject: t\r\n\r\nx\r\n",
    )
    .await;
    let delivery = daemon.wait_for("mta delivery");
    println!("{delivery}");
    assert!(delivery.ends_with("result=\"TempFail\" stat=\"451 4.3.0 try later\""));
    // The envelope stays queued, its error line recorded for the retry.
    let evpid = evpid_of(&delivery);
    let t = Instant::now();
    loop {
        let files = files_under(&dir.path().join("spool"));
        let envelope = files
            .iter()
            .find(|p| p.to_string_lossy().ends_with(&evpid))
            .unwrap_or_else(|| panic!("envelope {evpid} left the queue: {files:?}"));
        let text = std::fs::read_to_string(envelope).unwrap_or_default();
        if text.contains("451 4.3.0 try later") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no error line in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts smtpd relaying all local mail to `smtp://127.0.0.1:NEXT_HOP` (`head` lines first
/// in its configuration), submits one message from alice to `to`, and checks that it was
/// accepted. Returns the daemon and its work directory.
async fn relay_one(head: &str, next_hop: u16, to: &str, body: &str) -> (Daemon, tempfile::TempDir) {
    relay_with(&relay_conf(head, next_hop, ""), to, body).await
}

/// The usual configuration of these tests: `head` lines (limits), a listener on loopback,
/// and one `relay` action to the sink at `next_hop` (with `extra` options), for mail from
/// local senders to any domain.
fn relay_conf(head: &str, next_hop: u16, extra: &str) -> String {
    format!(
        "{head}listen on 127.0.0.1 port PORT\n\
         action \"relay\" relay host \"smtp://127.0.0.1:{next_hop}\"{extra}\n\
         match from local for any action \"relay\"\n"
    )
}

/// Starts the daemon on `conf`, waits for its control socket, and submits one message from
/// alice to `to`, which must be accepted.
async fn relay_with(conf: &str, to: &str, body: &str) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, port) = start(dir.path(), conf);
    let spool = dir.path().join("spool");
    wait_for_control(&spool);
    let (to, body) = (to.to_string(), body.to_string());
    let reply = tokio::task::spawn_blocking(move || submit(port, "alice@client.test", &to, &body))
        .await
        .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    (daemon, dir)
}

/// Waits (bounded) until the log holds `n` lines containing `needle`; returns them.
fn wait_for_n(daemon: &Daemon, needle: &str, n: usize, secs: u64) -> Vec<String> {
    let t = Instant::now();
    loop {
        let log = daemon.log();
        let found: Vec<String> = log
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect();
        if found.len() >= n {
            return found;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{} of {n} lines with {needle:?} in:\n{log}",
            found.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_share_one_session_and_one_transaction_per_message() {
    let sink = Sink {
        refuse_rcpt: Some("ghost".into()),
        ..Sink::default()
    };
    let (sink, daemon, port, _dir) = relay_to(sink, "mta limit session-keepalive 3\n", "").await;
    tokio::task::spawn_blocking(move || {
        submit_numbered(port, 5, "message ");
        // One message, three recipients of the same domain, one of them refused.
        let reply = submit_rcpts(
            port,
            "alice@client.test",
            &["carol@far.test", "ghost@far.test", "dave@far.test"],
            "Subject: message 5\r\n\r\nbody 5\r\n",
        );
        assert!(reply.starts_with("250"), "{reply}");
    })
    .await
    .unwrap();
    let lines = wait_for_n(&daemon, "mta delivery", 8, 20);
    for l in &lines {
        println!("{l}");
    }
    let ok = lines.iter().filter(|l| l.contains("result=\"Ok\"")).count();
    assert_eq!(ok, 7, "{lines:#?}");
    let refused: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("result=\"PermFail\""))
        .collect();
    assert_eq!(refused.len(), 1);
    assert!(refused[0].contains("to=<ghost@far.test>"), "{}", refused[0]);
    assert!(refused[0].ends_with("stat=\"550 5.1.1 no such user\""));
    // Every delivery line names the one session.
    let sid = lines[0].split(' ').next().unwrap().to_string();
    assert!(lines.iter().all(|l| l.starts_with(&sid)), "{lines:#?}");
    // The refusal's report to alice is relayed too, on the same session.
    let report = wait_for_n(&daemon, "mta delivery", 9, 20).remove(8);
    assert!(report.starts_with(&sid), "{report}");
    assert!(
        report.contains("from=<> to=<alice@client.test>"),
        "{report}"
    );
    daemon.wait_for(&format!("{sid} mta disconnected reason=quit messages=7"));

    assert_eq!(sink.connections(), 1, "{:?}", sink.commands());
    let data = sink.data.lock().unwrap().clone();
    assert_eq!(data.len(), 7);
    let (reports, messages): (Vec<String>, Vec<String>) = data
        .iter()
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .partition(|d| d.contains("message/delivery-status"));
    assert_eq!(reports.len(), 1);
    assert!(reports[0].contains("ghost@far.test"), "{}", reports[0]);
    for i in 0..6 {
        let n = messages
            .iter()
            .filter(|d| d.contains(&format!("body {i}\r\n")))
            .count();
        assert_eq!(n, 1, "message {i} arrived {n} times");
    }
    let cmds = sink.commands();
    println!("{cmds:#?}");
    assert_eq!(cmds.iter().filter(|c| c.starts_with("EHLO")).count(), 1);
    assert_eq!(
        cmds.iter().filter(|c| c.starts_with("MAIL FROM")).count(),
        7
    );
    assert_eq!(cmds.iter().filter(|c| c.starts_with("RCPT TO")).count(), 9);
    assert!(!cmds.iter().any(|c| c == "RSET"), "{cmds:?}");
    // The three recipients of message 5 went in one transaction.
    let first = cmds
        .iter()
        .position(|c| ["carol", "ghost", "dave"].iter().any(|u| c.contains(u)))
        .unwrap();
    let mut three: Vec<&str> = cmds[first..first + 3].iter().map(String::as_str).collect();
    three.sort();
    assert_eq!(
        three,
        [
            "RCPT TO:<carol@far.test>",
            "RCPT TO:<dave@far.test>",
            "RCPT TO:<ghost@far.test>"
        ]
    );
    assert_eq!(cmds[first - 1], "MAIL FROM:<alice@client.test>");
    assert_eq!(cmds[first + 3], "DATA");
    assert_eq!(cmds.last().map(String::as_str), Some("QUIT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mail_max_and_max_conn_per_route_bound_the_sessions() {
    let sink = Sink {
        data_delay: Some(Duration::from_millis(300)),
        ..Sink::default()
    };
    let (sink, daemon, _dir) = relay_numbered(
        sink,
        "mta limit max-conn-per-route 2 session-mail-max 2 conn-delay-relay 0 session-keepalive 1\n\
         mta limit conn-delay-route 0 reconn-delay-route 0\n",
        "",
        8,
        30,
    )
    .await;
    wait_for_n(&daemon, "mta disconnected", 4, 20);
    std::thread::sleep(Duration::from_millis(300));
    let sessions: Vec<String> = daemon
        .log()
        .lines()
        .filter(|l| l.contains("mta disconnected"))
        .map(str::to_string)
        .collect();
    println!("{sessions:#?}");
    // At most two messages per session: eight messages need at least four sessions.
    assert!(
        sessions
            .iter()
            .all(|l| l.ends_with("messages=1") || l.ends_with("messages=2")),
        "{sessions:#?}"
    );
    assert!(sink.connections() >= 4, "{}", sink.connections());
    assert_eq!(sink.data.lock().unwrap().len(), 8);
    let most = sink.open_max.load(std::sync::atomic::Ordering::SeqCst);
    assert!(most <= 2, "{most} sessions at once");
    assert_eq!(most, 2, "the route used its two sessions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_mail_gets_an_srs_sender_and_its_bounce_goes_home() {
    let (sink, addr) = Sink::default().start("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "srs key \"s3cr3t\"\n\
         table aliases {{ \"bob\" = \"carol@far.test\" }}\n\
         mta limit session-keepalive 1\n\
         listen on 127.0.0.1 port PORT\n\
         action \"local\" mbox alias <aliases>\n\
         action \"relay\" relay host \"smtp://127.0.0.1:{}\" srs\n\
         match from local for domain \"local.test\" action \"local\"\n\
         match from local for any action \"relay\"\n",
        addr.port()
    );
    let (daemon, port) = start(dir.path(), &conf);
    let reply = tokio::task::spawn_blocking(move || {
        submit(
            port,
            "alice@origin.test",
            "bob@local.test",
            "Subject: forwarded\r\n\r\nhi\r\n",
        )
    })
    .await
    .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    let delivery = daemon.wait_for("mta delivery");
    println!("{delivery}");
    assert!(
        delivery.contains("to=<carol@far.test> rcpt=<bob@local.test>"),
        "{delivery}"
    );
    assert!(delivery.contains("result=\"Ok\""), "{delivery}");
    // The sender as the next hop saw it: SRS0=HHHH=TT=origin.test=alice@local.test, with
    // the hash and stamp computed independently here (SHA-1 of key and address).
    let cmds = sink.commands();
    let mail = cmds
        .iter()
        .find(|c| c.starts_with("MAIL FROM:"))
        .unwrap()
        .clone();
    println!("{mail}");
    let day = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86400;
    let stamp = (day % 1024) as usize;
    let b32 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let tail = format!(
        "{}{}=origin.test=alice@local.test",
        b32[(stamp >> 5) & 31] as char,
        b32[stamp & 31] as char
    );
    let hash = python_srs_hash("s3cr3t", &tail);
    let srs = format!("SRS0={hash}={tail}");
    assert_eq!(mail, format!("MAIL FROM:<{srs}>"));
    // The delivery line names the sender as announced, as OpenSMTPD's does.
    assert!(delivery.contains(&format!("from=<{srs}> ")), "{delivery}");

    // A bounce to that address is decoded back to alice and relayed to her.
    let reply = tokio::task::spawn_blocking(move || {
        submit(port, "", &srs, "Subject: bounce\r\n\r\nundeliverable\r\n")
    })
    .await
    .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    let lines = wait_for_n(&daemon, "mta delivery", 2, 20);
    println!("{}", lines[1]);
    assert!(
        lines[1].contains("from=<> to=<alice@origin.test> rcpt=<SRS0="),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("result=\"Ok\""), "{}", lines[1]);
    let cmds = sink.commands();
    assert!(cmds.contains(&"MAIL FROM:<>".to_string()), "{cmds:?}");
    assert!(
        cmds.contains(&"RCPT TO:<alice@origin.test>".to_string()),
        "{cmds:?}"
    );

    // A forged address is not decoded: logged, and refused like any unknown recipient.
    let reply = tokio::task::spawn_blocking(move || {
        submit_reply_to_rcpt(port, "", "SRS0=AAAA=AA=origin.test=mallory@local.test")
    })
    .await
    .unwrap();
    assert!(reply.starts_with("550"), "{reply}");
    daemon.wait_for("SRS failed to decode: SRS0=AAAA=AA=origin.test=mallory@local.test");
}

/// The 4-character SRS hash as computed by Python's hashlib (SHA-1 of key and text,
/// base64).
fn python_srs_hash(key: &str, text: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys,hashlib,base64;print(base64.b64encode(hashlib.sha1(\
             (sys.argv[1]+sys.argv[2]).encode()).digest()).decode()[:4])",
        )
        .arg(key)
        .arg(text)
        .output()
        .expect("python3 runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Opens a transaction up to RCPT and returns the RCPT reply.
fn submit_reply_to_rcpt(port: u16, from: &str, to: &str) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    read_last(&mut r);
    let mut last = String::new();
    for l in [
        "EHLO client.test".to_string(),
        format!("MAIL FROM:<{from}>"),
        format!("RCPT TO:<{to}>"),
    ] {
        w.write_all(format!("{l}\r\n").as_bytes()).unwrap();
        last = read_last(&mut r);
    }
    w.write_all(b"QUIT\r\n").unwrap();
    read_last(&mut r);
    last
}

/// A sink that offers DSN or not, smtpd relaying to it, and one message from alice (with
/// MAIL parameters after a space) to `rcpts`, accepted.
async fn relay_to_dsn_sink(
    offers: bool,
    from: &'static str,
    rcpts: &'static [&'static str],
) -> (Sink, Daemon, tempfile::TempDir) {
    let sink = Sink {
        dsn: offers,
        ..Sink::default()
    };
    let (sink, daemon, port, dir) = relay_to(
        sink,
        "mta limit session-keepalive 1 conn-delay-route 0 reconn-delay-route 0\n",
        "",
    )
    .await;
    let reply = tokio::task::spawn_blocking(move || {
        submit_rcpts(port, from, rcpts, "Subject: dsn\r\n\r\nhi\r\n")
    })
    .await
    .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    (sink, daemon, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_parameters_go_to_a_next_hop_that_offers_dsn() {
    for offers in [true, false] {
        let (sink, daemon, _dir) = relay_to_dsn_sink(
            offers,
            "alice@client.test RET=HDRS ENVID=env42",
            &[
                "bob@far.test NOTIFY=FAILURE,DELAY ORCPT=rfc822;orig@far.test",
                "carol@far.test",
            ],
        )
        .await;
        let lines = wait_for_n(&daemon, "mta delivery", 2, 20);
        assert!(
            lines.iter().all(|l| l.contains("result=\"Ok\"")),
            "{lines:#?}"
        );
        let cmds = sink.commands();
        println!("{cmds:#?}");
        if offers {
            assert!(cmds.contains(&"MAIL FROM:<alice@client.test> RET=HDRS ENVID=env42".into()));
            assert!(cmds.contains(
                &"RCPT TO:<bob@far.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;orig@far.test".into()
            ));
            assert!(cmds.contains(&"RCPT TO:<carol@far.test>".into()));
        } else {
            assert!(cmds.contains(&"MAIL FROM:<alice@client.test>".into()));
            assert!(cmds.contains(&"RCPT TO:<bob@far.test>".into()));
            assert!(cmds.contains(&"RCPT TO:<carol@far.test>".into()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_route_is_disabled_and_shown_by_smtpctl() {
    let closed = common::free_port();
    // A route is remembered while a pause may apply to it: here, a minute after it failed.
    let (daemon, dir) = relay_one(
        "mta limit reconn-delay-route 60\n",
        closed,
        "bob@far.test",
        "Subject: x\r\n\r\nhi\r\n",
    )
    .await;
    let delivery = daemon.wait_for("mta delivery");
    assert!(
        delivery.ends_with("result=\"TempFail\" stat=\"Network error on destination MXs\""),
        "{delivery}"
    );
    // As 6.8 flushes a relay it gave up on: no session, no source, the relay's name.
    assert!(
        delivery.starts_with("0000000000000000 mta delivery ")
            && delivery.contains(" source=\"-\" relay=\"127.0.0.1\" "),
        "{delivery}"
    );
    assert_eq!(
        daemon.wait_for("smtp-out: No valid route"),
        format!(
            "smtp-out: No valid route for [connector:[]->[relay:127.0.0.1,port={closed},smtp,mx],0x0]"
        )
    );
    assert!(
        daemon
            .log()
            .contains("mta error reason=IO Error: Connection refused\n")
    );
    let line = daemon.wait_for("smtp-out: Disabling route");
    // No PTR name: the address stands for it, as getnameinfo(3) gives it to 6.8.
    assert_eq!(
        line,
        "smtp-out: Disabling route [] <-> 127.0.0.1 (127.0.0.1) for 15s"
    );
    let spool = dir.path().join("spool");
    wait_for_control(&spool);
    let out = common::smtpctl(&spool, &["show", "routes"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert!(
        text.starts_with(
            "1. [] <-> 127.0.0.1 (127.0.0.1) ND-- nconn=0 nerror=1 penalty=1 timeout="
        ),
        "{text}"
    );
    // `show hosts`: the address, its name (the address again: it has no PTR name), the
    // routes to it, open sessions, and the time since the last attempt.
    let out = common::smtpctl(&spool, &["show", "hosts"]);
    let hosts = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success());
    let line = hosts.trim_end();
    assert!(
        line.starts_with("127.0.0.1 127.0.0.1 refcount=2 nconn=0 lastconn=") && line.ends_with('s'),
        "{hosts}"
    );
    assert_eq!(hosts.lines().count(), 1, "{hosts}");
    // `resume route 1` enables it at once, errors and penalty forgotten; an unknown
    // route is an error.
    let out = common::smtpctl(&spool, &["resume", "route", "1"]);
    assert!(out.status.success(), "{out:?}");
    daemon.wait_for("smtp-out: Enabling route [] <-> 127.0.0.1 (127.0.0.1) per admin request");
    let out = common::smtpctl(&spool, &["show", "routes"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with(
            "1. [] <-> 127.0.0.1 (127.0.0.1) N--- nconn=0 nerror=0 penalty=0 timeout=-"
        ),
        "{text}"
    );
    let out = common::smtpctl(&spool, &["resume", "route", "9"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no route 9")
            || String::from_utf8_lossy(&out.stdout).contains("no route 9"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_session_closed_by_the_next_hop_is_replaced() {
    let sink = Sink {
        hang_up_after: Some(1),
        ..Sink::default()
    };
    let (sink, daemon, port, _dir) = relay_to(
        sink,
        "mta limit session-keepalive 1 conn-delay-route 0 reconn-delay-route 0\n",
        "",
    )
    .await;
    tokio::task::spawn_blocking(move || submit_numbered(port, 2, ""))
        .await
        .unwrap();
    let lines = wait_for_n(&daemon, "mta delivery", 2, 20);
    assert!(
        lines.iter().all(|l| l.contains("result=\"Ok\"")),
        "{lines:#?}"
    );
    let first = lines[0].split(' ').next().unwrap();
    let error = daemon.wait_for("smtp-out: Error on session");
    assert_eq!(
        error,
        format!(
            "smtp-out: Error on session {first} after 1 message sent: Connection closed unexpectedly"
        )
    );
    daemon.wait_for(&format!("{first} mta disconnected reason=error messages=1"));
    assert_eq!(sink.connections(), 2);
    assert_eq!(sink.data.lock().unwrap().len(), 2);
}

/// The last result per destination domain is kept (`smtpctl show hoststats`). An envelope
/// deferred because the domain could not be reached is kept back, and once the domain
/// takes mail again it is tried at once instead of at its next retry (`mta
/// max-deferred`). A recipient the next hop itself deferred waits for its own retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_that_takes_mail_again_gets_its_deferred_envelopes_at_once() {
    let sink = Sink {
        // The second connection is closed before the greeting; dave is deferred.
        drop_connections: vec![1],
        defer_rcpt: Some("dave".into()),
        ..Sink::default()
    };
    let (sink, daemon, port, dir) = relay_to(
        sink,
        "mta limit session-keepalive 0 conn-delay-route 0 reconn-delay-route 0\n",
        "",
    )
    .await;
    let spool = dir.path().join("spool");
    let hoststats = move || {
        let out = common::smtpctl(&spool, &["show", "hoststats"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let send = move |to: &'static str| {
        tokio::task::spawn_blocking(move || {
            submit(port, "alice@client.test", to, "Subject: m\r\n\r\nx\r\n")
        })
    };
    // A first message makes the domain known.
    assert!(send("alice@far.test").await.unwrap().starts_with("250"));
    let first = daemon.wait_for("mta delivery");
    assert!(first.contains("result=\"Ok\""), "{first}");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let shown = tokio::task::spawn_blocking(hoststats.clone())
        .await
        .unwrap();
    let (domain, rest) = shown.trim_end().split_once('|').expect(&shown);
    assert_eq!(domain, "far.test", "{shown}");
    let (time, status) = rest.split_once('|').unwrap();
    assert!(
        time.parse::<u64>().unwrap().abs_diff(before) <= 5,
        "{shown}"
    );
    assert_eq!(status, "250 2.0.0 queued as 42");

    // Bob's message finds the next hop unreachable: kept back (no session: the last
    // result stays).
    assert!(send("bob@Far.Test").await.unwrap().starts_with("250"));
    let lines = wait_for_n(&daemon, "mta delivery", 2, 15);
    assert!(
        lines[1].contains("to=<bob@Far.Test>")
            && lines[1].ends_with("result=\"TempFail\" stat=\"Network error on destination MXs\""),
        "{lines:#?}"
    );
    let shown = tokio::task::spawn_blocking(hoststats.clone())
        .await
        .unwrap();
    assert!(shown.ends_with("|250 2.0.0 queued as 42\n"), "{shown}");

    // Dave's message: the next hop defers him. That is no reason to keep him back.
    assert!(send("dave@far.test").await.unwrap().starts_with("250"));
    let lines = wait_for_n(&daemon, "mta delivery", 3, 15);
    assert!(
        lines[2].contains("to=<dave@far.test>")
            && lines[2].ends_with("stat=\"451 4.3.0 try later\""),
        "{lines:#?}"
    );
    // Carol's message is taken, and bob follows at once; dave waits for his retry.
    assert!(send("carol@far.test").await.unwrap().starts_with("250"));
    let ok = wait_for_n(&daemon, "result=\"Ok\"", 3, 15);
    assert!(ok.iter().any(|l| l.contains("to=<bob@Far.Test>")), "{ok:?}");
    assert!(
        ok.iter().any(|l| l.contains("to=<carol@far.test>")),
        "{ok:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    // Dave is not scheduled before his own retry (minutes away).
    let queue = String::from_utf8_lossy(
        &common::smtpctl(&dir.path().join("spool"), &["show", "queue"]).stdout,
    )
    .into_owned();
    let fields: Vec<&str> = queue
        .lines()
        .find(|l| l.contains("|dave@far.test|"))
        .expect(&queue)
        .split('|')
        .collect();
    assert_eq!(fields[11], "pending", "{queue}");
    assert!(fields[12].parse::<u64>().unwrap() >= 60, "{queue}");
    let log = daemon.log();
    let dave: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("mta delivery") && l.contains("to=<dave@far.test>"))
        .collect();
    assert_eq!(dave.len(), 1, "{log}");
    assert!(dave[0].ends_with("stat=\"451 4.3.0 try later\""), "{log}");
    assert_eq!(sink.data.lock().unwrap().len(), 3);
    let shown = tokio::task::spawn_blocking(hoststats).await.unwrap();
    assert!(shown.starts_with("far.test|"), "{shown}");
    assert!(
        shown.trim_end().ends_with("|250 2.0.0 queued as 42"),
        "{shown}"
    );
    assert_eq!(shown.lines().count(), 1, "{shown}");
}

/// With `queue encryption` and `queue compression`, the message is sealed in the queue and
/// the next hop gets it in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_queue_relays_the_message_in_clear() {
    let (sink, addr) = Sink::default().start("127.0.0.1:0").await.unwrap();
    let (daemon, _dir) = relay_one(
        "queue compression\nqueue encryption \"0123456789abcdef0123456789abcdef\"\n",
        addr.port(),
        "bob@far.test",
        "Subject: sealed relay\r\n\r\nthe clear body line\r\n",
    )
    .await;
    let delivery = daemon.wait_for("mta delivery");
    assert!(
        delivery.ends_with("result=\"Ok\" stat=\"250 2.0.0 queued as 42\""),
        "{delivery}"
    );
    let data = sink.data.lock().unwrap().clone();
    assert_eq!(data.len(), 1);
    let text = String::from_utf8_lossy(&data[0]);
    assert!(text.contains("Subject: sealed relay\r\n"), "{text}");
    assert!(text.contains("\r\nthe clear body line\r\n.\r\n"), "{text}");
}

/// With `queue encryption`, a refused message's bounce quotes it in clear (the bounce reads
/// the sealed message, and is sealed in turn before it is relayed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_queue_bounces_in_clear() {
    let sink = Sink {
        refuse_rcpt: Some("bob".into()),
        ..Sink::default()
    };
    let (sink, addr) = sink.start("127.0.0.1:0").await.unwrap();
    let (daemon, _dir) = relay_one(
        "queue encryption \"0123456789abcdef0123456789abcdef\"\n",
        addr.port(),
        "bob@far.test",
        "Subject: will bounce\r\n\r\nquoted body line\r\n",
    )
    .await;
    let ok = wait_for_n(&daemon, "result=\"Ok\"", 1, 15);
    assert!(ok[0].contains("to=<alice@client.test>"), "{ok:?}");
    let data = sink.data.lock().unwrap().clone();
    assert_eq!(data.len(), 1, "the bounce only");
    let text = String::from_utf8_lossy(&data[0]);
    assert!(text.contains("Subject: will bounce"), "{text}");
    assert!(text.contains("550 5.1.1 no such user"), "{text}");
}

/// A relay action with `filter`: the chain's program, registered for `smtp-out` reports,
/// is told about the outbound session in 6.8's order — link, identify, transaction events
/// (a refused recipient after a rollback and reset), commit, disconnect — with the client
/// lines it sent (AUTH hidden) and the server lines it read. It gets no `smtp-in` report,
/// since it asked for none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_filter_programs_get_smtp_out_reports() {
    let (sink, addr) = Sink {
        refuse_rcpt: Some("nobody".into()),
        ..Sink::default()
    }
    .start("127.0.0.1:0")
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = dir.path().join("reports.log");
    std::fs::write(&log, "").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
    let prog = dir.path().join("out.sh");
    std::fs::write(
        &prog,
        "#!/bin/sh\n\
         while IFS= read -r line; do [ \"$line\" = \"config|ready\" ] && break; done\n\
         echo 'register|report|smtp-out|*'\n\
         echo 'register|ready'\n\
         while IFS= read -r line; do printf '%s\\n' \"$line\" >> \"$1\"; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = relay_conf(
        &format!(
            "filter \"out\" proc-exec \"{} {}\"\nmta limit session-keepalive 1\n",
            prog.display(),
            log.display()
        ),
        addr.port(),
        " helo out.example filter \"out\"",
    );
    let (daemon, port) = start(dir.path(), &conf);
    send_from_alice(
        port,
        &["bob@far.test", "nobody@far.test"],
        "Subject: s\r\n\r\nx\r\n",
    )
    .await;
    daemon.wait_for("mta disconnected");
    let t = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("|link-disconnect") || t.elapsed() > Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The session of the message (the bounce for nobody@ goes out on one of its own).
    let sid = text.lines().next().unwrap().split('|').nth(5).unwrap();
    // `report|0.6|TIME|smtp-out|EVENT|SID|PARAMS`: the event and its parameters.
    let events: Vec<String> = text
        .lines()
        .filter(|l| l.split('|').nth(5) == Some(sid))
        .map(|l| {
            let f: Vec<&str> = l.splitn(7, '|').collect();
            assert_eq!(&f[..2], &["report", "0.6"], "{l}");
            assert_eq!(f[3], "smtp-out", "{l}");
            match f.get(6) {
                Some(p) => format!("{}|{p}", f[4]),
                None => f[4].to_string(),
            }
        })
        .collect();
    let delivery = daemon.wait_for("mta delivery");
    let msgid = delivery
        .split_whitespace()
        .find_map(|w| w.strip_prefix("evpid="))
        .map(|e| e[..8].to_string())
        .unwrap_or_else(|| delivery[..8].to_string());
    let port = addr.port();
    let head: Vec<&str> = events.iter().take(6).map(String::as_str).collect();
    assert!(
        head[0].starts_with("link-connect|127.0.0.1|pass|127.0.0.1:")
            && head[0].ends_with(&format!("|127.0.0.1:{port}")),
        "{events:#?}"
    );
    assert!(head[1].starts_with("protocol-server|220 "), "{events:#?}");
    assert!(head[2].starts_with("link-greeting|"), "{events:#?}");
    assert_eq!(head[3], "protocol-client|EHLO out.example");
    assert_eq!(head[4], "link-identify|EHLO|out.example");
    let pos = |e: &str| {
        events
            .iter()
            .position(|x| x == e)
            .unwrap_or_else(|| panic!("no {e} in {events:#?}"))
    };
    let begin = pos(&format!("tx-begin|{msgid}"));
    let mail = pos(&format!("tx-mail|{msgid}|ok|alice@client.test"));
    let envelopes: Vec<usize> = (0..events.len())
        .filter(|&i| events[i].starts_with(&format!("tx-envelope|{msgid}|{msgid}")))
        .collect();
    assert_eq!(envelopes.len(), 2, "{events:#?}");
    let bob = pos(&format!("tx-rcpt|{msgid}|ok|bob@far.test"));
    let nobody = pos(&format!("tx-rcpt|{msgid}|permfail|nobody@far.test"));
    let data = pos(&format!("tx-data|{msgid}|ok"));
    let commit = events
        .iter()
        .position(|x| x.starts_with(&format!("tx-commit|{msgid}|")))
        .expect("tx-commit");
    let quit = pos("protocol-client|QUIT");
    let bye = pos("link-disconnect");
    // The recipients go in envelope order; each RCPT is reported as sent, with its
    // envelope, then with its result.
    assert!(
        begin < mail && mail < envelopes[0] && bob.max(nobody) < data,
        "{events:#?}"
    );
    for rcpt in [bob, nobody] {
        assert!(
            envelopes.iter().any(|&e| e < rcpt && rcpt - e <= 4),
            "{events:#?}"
        );
    }
    // The final dot is reported as the client's line, as 6.8 sends it.
    let dot = pos("protocol-client|.");
    assert!(
        data < dot && dot < commit && commit < quit && quit < bye,
        "{events:#?}"
    );
    assert_eq!(
        &events[nobody - 2..nobody],
        &[format!("tx-rollback|{msgid}"), format!("tx-reset|{msgid}")]
    );
    assert_eq!(events[commit + 1], format!("tx-reset|{msgid}"));
    assert!(events.contains(&"protocol-client|DATA".to_string()));
    assert!(
        sink.commands()
            .contains(&"RCPT TO:<bob@far.test>".to_string())
    );
}

/// CVE-2020-8794's trigger: a next hop whose replies have a last line of three characters,
/// or a bare CR inside a line followed by envelope-looking lines. Nothing of it reaches
/// the envelope file but one sanitized error line: no `type: mda`, no `mda-exec:`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_replies_of_the_next_hop_never_reach_the_envelope() {
    let (_sink, addr) = Sink {
        rcpt_replies: vec![
            "451-4.7.1 first\r\n451".into(),
            "451-x\r\n451\rtype: mda\r\nmda-exec: /bin/sh -c 'touch /tmp/pwned'\r\n451 end".into(),
        ],
        ..Sink::default()
    }
    .start("127.0.0.1:0")
    .await
    .unwrap();
    let (daemon, dir) = relay_one(
        "mta limit session-keepalive 1 conn-delay-route 0 reconn-delay-route 0\n",
        addr.port(),
        "bob@far.test",
        "Subject: x\r\n\r\nhi\r\n",
    )
    .await;
    // The first attempt ends on the bare `451`: a well-formed (if short) last line.
    let first = daemon.wait_for("mta delivery");
    assert!(first.contains("result=\"TempFail\""), "{first}");
    assert!(first.contains("stat=\"451-4.7.1 first 451\""), "{first}");
    let spool = dir.path().join("spool");
    wait_for_control(&spool);
    // The second attempt, on a new session once the first one closed, meets the CR and
    // the injected lines.
    daemon.wait_for("mta disconnected");
    let out = common::smtpctl(&spool, &["schedule", "all"]);
    assert!(out.status.success(), "{out:?}");
    let lines = wait_for_n(&daemon, "mta delivery", 2, 20);
    assert!(lines[1].contains("result=\"TempFail\""), "{lines:?}");
    assert!(
        lines[1].ends_with("stat=\"Bad response: 451\\rtype: mda\""),
        "{lines:?}"
    );
    // The envelope as rewritten after the attempt (the log line comes first).
    let mut text = String::new();
    for _ in 0..200 {
        let envelopes: Vec<_> = files_under(&spool.join("queue"))
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n != "message"))
            .collect();
        if let [only] = envelopes.as_slice()
            && only.extension().is_none()
        {
            text = std::fs::read_to_string(only).unwrap_or_default();
            if text.contains("errorline: Bad response") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!text.contains('\r'), "{text:?}");
    let types: Vec<&str> = text.lines().filter(|l| l.starts_with("type:")).collect();
    assert_eq!(types, ["type: mta"], "{text}");
    assert!(!text.lines().any(|l| l.starts_with("mda-exec")), "{text}");
    let errorline = text
        .lines()
        .find(|l| l.starts_with("errorline:"))
        .unwrap_or_default();
    assert!(
        errorline.starts_with("errorline: Bad response: 451\\rtype: mda"),
        "{text}"
    );
    assert!(!std::path::Path::new("/tmp/pwned").exists());
}

/// `mta limit session-transaction-delay N`: a session rests N seconds after each
/// transaction before it carries the next one (still one connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_rest_between_transactions() {
    let (sink, addr) = Sink::default().start("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = relay_conf(
        "mta limit session-transaction-delay 2 session-keepalive 5 max-conn-per-route 1\n",
        addr.port(),
        "",
    );
    let (daemon, port) = start_with_args(dir.path(), &conf, Path::new("/nonexistent"), &["-v"]);
    let t = Instant::now();
    submit_numbered(port, 1, "first");
    daemon.wait_for("mta delivery");
    submit_numbered(port, 1, "second");
    let lines = wait_for_n(&daemon, "mta delivery", 2, 20);
    assert!(
        lines.iter().all(|l| l.contains("result=\"Ok\"")),
        "{lines:?}"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "the second transaction did not wait: {:?}",
        t.elapsed()
    );
    assert!(
        daemon
            .log()
            .contains("debug: mta: waiting for 2s before next transaction"),
        "{}",
        daemon.log()
    );
    assert_eq!(sink.connections(), 1);
}

/// `mta limit max-failures-per-session N`: after N recipients in a row are refused, the
/// session gives up; the recipients not tried yet are deferred with 6.8's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_refused_recipients_end_the_session() {
    let (sink, addr) = Sink {
        refuse_rcpt: Some("nobody".into()),
        ..Sink::default()
    }
    .start("127.0.0.1:0")
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = relay_conf(
        "mta limit max-failures-per-session 2 session-keepalive 1\n",
        addr.port(),
        "",
    );
    let (daemon, port) = start(dir.path(), &conf);
    send_from_alice(
        port,
        &["nobody1@far.test", "nobody2@far.test", "nobody3@far.test"],
        "Subject: s\r\n\r\nx\r\n",
    )
    .await;
    let lines = wait_for_n(&daemon, "mta delivery", 3, 20);
    let refused = lines
        .iter()
        .filter(|l| l.contains("result=\"PermFail\" stat=\"550 5.1.1 no such user\""))
        .count();
    let deferred = lines
        .iter()
        .filter(|l| {
            l.ends_with(
                "result=\"TempFail\" stat=\"Too many consecutive errors, closing connection\"",
            )
        })
        .count();
    assert_eq!((refused, deferred), (2, 1), "{lines:#?}");
    // The first session (the bounces for nobody1 and nobody2 may follow on another one):
    // two RCPTs, no DATA, QUIT.
    let cmds = sink.commands();
    let first: Vec<&String> = cmds.iter().take_while(|c| c.as_str() != "QUIT").collect();
    let rcpts = first.iter().filter(|c| c.starts_with("RCPT TO:")).count();
    assert_eq!(rcpts, 2, "{cmds:?}");
    assert!(first.len() < cmds.len(), "no QUIT: {cmds:?}");
    assert!(!first.iter().any(|c| c.as_str() == "DATA"), "{cmds:?}");
}

/// `smtpctl show relays` while a message is on its way: the destination as 6.8 names its
/// relays, with its session and waiting envelopes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_relays_lists_the_destination_being_relayed_to() {
    let (_sink, addr) = Sink {
        data_delay: Some(Duration::from_secs(3)),
        ..Sink::default()
    }
    .start("127.0.0.1:0")
    .await
    .unwrap();
    let (daemon, dir) = relay_with(
        &relay_conf("", addr.port(), " helo out.example"),
        "bob@far.test",
        "Subject: s\r\n\r\nx\r\n",
    )
    .await;
    let spool = dir.path().join("spool");
    let t = Instant::now();
    let text = loop {
        let out = common::smtpctl(&spool, &["show", "relays"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // The session counts from its start, before it takes the envelope off the queue:
        // wait until it has (the next hop then holds the message for 3 s).
        if text.contains("ntask=0 nconn=1") || t.elapsed() > Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // `lastconn` is `-` until the session's connection is made, then its age; under the
    // relay, its one connector (no source address: `[]`).
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let head = format!(
        "[relay:127.0.0.1,port={},smtp,mx,heloname=out.example] refcount=1 ntask=0 nconn=1 lastconn=",
        addr.port()
    );
    assert!(
        lines[0].starts_with(&head) && lines[0].ends_with(" timeout=- wait="),
        "{text}\n{}",
        daemon.log()
    );
    assert!(
        lines[1].starts_with("  connector [] refcount=0 nconn=1 lastconn=")
            && lines[1].ends_with(" timeout=- flags="),
        "{text}"
    );
    daemon.wait_for("mta delivery");
}

/// `smtpctl pause mta from ADDR for DOMAIN`: no session from that source address to the
/// destination (here the smarthost's name); another source of the `src` table is taken,
/// and with every one paused the mail waits with 6.8's `All routes to destination
/// blocked`. `show mta paused` lists the pauses; `resume mta from … for …` lifts one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_sources_are_passed_over_and_all_paused_holds_the_mail() {
    let (sink, addr) = Sink::default().start("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = relay_conf(
        "table sources { 127.0.0.5, 127.0.0.6 }\n",
        addr.port(),
        " src <sources>",
    );
    let (daemon, port) = start(dir.path(), &conf);
    let spool = dir.path().join("spool");
    wait_for_control(&spool);
    let ctl = |args: &[&str]| {
        let out = common::smtpctl(&spool, args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{args:?}: {out:?}");
        text
    };
    assert_eq!(
        ctl(&["pause", "mta", "from", "127.0.0.6", "for", "127.0.0.1"]),
        "command succeeded\n"
    );
    ctl(&["pause", "mta", "from", "127.0.0.5", "for", "127.0.0.1"]);
    // Pausing twice changes nothing; abbreviations work as for every command.
    ctl(&["pa", "mt", "fr", "127.0.0.5", "fo", "127.0.0.1"]);
    ctl(&["pause", "mta", "from", "::1", "for", "Other.Example"]);
    assert_eq!(
        ctl(&["show", "mta", "paused"]),
        "127.0.0.5 -> 127.0.0.1\n127.0.0.6 -> 127.0.0.1\n[::1] -> Other.Example\n"
    );
    // Not an address: refused by smtpctl's daemon-side parse, nothing paused.
    let out = common::smtpctl(&spool, &["pause", "mta", "from", "mx.test", "for", "x"]);
    assert!(!out.status.success(), "{out:?}");

    let reply = tokio::task::spawn_blocking(move || {
        submit(
            port,
            "alice@client.test",
            "bob@far.test",
            "Subject: p\r\n\r\nx\r\n",
        )
    })
    .await
    .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    let held = daemon.wait_for("mta delivery");
    assert!(
        held.contains(" source=\"-\" relay=\"127.0.0.1\" ")
            && held.ends_with("result=\"TempFail\" stat=\"All routes to destination blocked\""),
        "{held}"
    );
    assert!(sink.commands().is_empty(), "{:?}", sink.commands());

    // One source resumed (the domain in any case): the mail goes out from it.
    ctl(&["resume", "mta", "from", "127.0.0.6", "for", "127.0.0.1"]);
    ctl(&["resume", "mta", "from", "::1", "for", "other.example"]);
    assert_eq!(ctl(&["show", "mta", "paused"]), "127.0.0.5 -> 127.0.0.1\n");
    ctl(&["schedule", "all"]);
    let done = wait_for_n(&daemon, "mta delivery", 2, 20).pop().unwrap();
    assert!(
        done.contains(" source=\"127.0.0.6\" ") && done.contains("result=\"Ok\""),
        "{done}"
    );
    let peers = sink.peers.lock().unwrap().clone();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].ip().to_string(), "127.0.0.6");
}

/// `smtpctl profile queue` and `profile imsg` (with `log verbose`): 6.8's `profile-queue:`
/// lines for the queue operations of a relayed message and `profile-imsg:` lines for the
/// round trips to the privileged side of a local delivery; `unprofile` ends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_lines_time_queue_operations_and_process_round_trips() {
    let (_sink, addr) = Sink::default().start("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "listen on 127.0.0.1 port PORT\n\
         action \"mine\" maildir \"{}/Maildir\"\n\
         action \"relay\" relay host \"smtp://127.0.0.1:{}\"\n\
         match from local for domain \"local.test\" action \"mine\"\n\
         match from local for any action \"relay\"\n",
        dir.path().display(),
        addr.port()
    );
    let (daemon, port) = start(dir.path(), &conf);
    let spool = dir.path().join("spool");
    wait_for_control(&spool);
    let ctl = |args: &[&str]| {
        let out = common::smtpctl(&spool, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = common::smtpctl(&spool, &["profile", "stat"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "smtpctl: invalid profile keyword: stat\n"
    );
    assert_eq!(ctl(&["log", "verbose"]), "command succeeded\n");
    assert_eq!(ctl(&["profile", "queue"]), "command succeeded\n");
    ctl(&["prof", "imsg"]);
    let send = |to: &'static str| async move {
        let reply = tokio::task::spawn_blocking(move || {
            submit(port, "alice@client.test", to, "Subject: p\r\n\r\nx\r\n")
        })
        .await
        .unwrap();
        assert!(reply.starts_with("250"), "{reply}");
    };
    send("bob@far.test").await;
    daemon.wait_for("mta delivery");
    for name in [
        "queue_message_create",
        "queue_message_commit",
        "queue_envelope_load",
    ] {
        let line = daemon.wait_for(&format!("profile-queue: {name} "));
        let took = line.rsplit(' ').next().unwrap();
        let (secs, nanos) = took.split_once('.').unwrap();
        assert!(
            secs.parse::<u64>().is_ok() && nanos.len() == 9 && nanos.parse::<u32>().is_ok(),
            "{line}"
        );
    }
    if nix::unistd::geteuid().is_root() {
        // The recipient's `.forward` is looked for by the privileged side (root's mail
        // is then refused, as in 6.8; the round trip is what counts here).
        send("root@local.test").await;
        daemon.wait_for("mda delivery");
        let line = daemon.wait_for("profile-imsg: smtpd ");
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(
            words[..4],
            ["profile-imsg:", "smtpd", "parent", "forward"],
            "{line}"
        );
        assert!(words[4].parse::<usize>().unwrap() > 0, "{line}");
    } else {
        eprintln!("not root: no privileged side, profile-imsg not checked");
    }
    // Off again: the next message leaves no profile line.
    ctl(&["unprofile", "queue"]);
    ctl(&["unprofile", "imsg"]);
    let before = daemon.log().matches("profile-").count();
    send("carol@far.test").await;
    wait_for_n(&daemon, "mta delivery", 2, 20);
    assert_eq!(daemon.log().matches("profile-").count(), before);
}

/// `max-conn-per-domain` bounds the sessions to a destination whatever their source
/// address: two sources of a `src` table would open two sessions each
/// (`max-conn-per-route 2`), the domain allows three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_conn_per_domain_bounds_the_sessions_of_all_sources() {
    let sink = Sink {
        data_delay: Some(Duration::from_millis(400)),
        ..Sink::default()
    };
    let (sink, _daemon, _dir) = relay_numbered(
        sink,
        "table sources { 127.0.0.5, 127.0.0.6 }\n\
         mta limit max-conn-per-route 2 max-conn-per-domain 3 session-mail-max 1 conn-delay-relay 0\n\
         mta limit conn-delay-route 0 reconn-delay-route 0\n",
        " src <sources>",
        12,
        60,
    )
    .await;
    let sources = sink.source_addresses();
    assert_eq!(sources.len(), 2, "{sources:?}");
    let most = sink.open_max.load(std::sync::atomic::Ordering::SeqCst);
    assert!(most <= 3, "{most} sessions at once");
}

/// `conn-delay-domain`: sessions to one destination open at least that far apart, even
/// from different source addresses and after the previous session ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conn_delay_domain_spaces_the_sessions() {
    let (sink, _daemon, _dir) = relay_numbered(
        Sink::default(),
        "table sources { 127.0.0.5, 127.0.0.6 }\n\
         mta limit conn-delay-domain 2 session-mail-max 1 conn-delay-route 0 reconn-delay-route 0\n",
        " src <sources>",
        3,
        30,
    )
    .await;
    let times = sink.accepted_at.lock().unwrap().clone();
    assert_eq!(times.len(), 3, "{times:?}");
    for pair in times.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= Duration::from_millis(1900),
            "{gap:?} between sessions"
        );
    }
}

/// `NOTIFY=SUCCESS` on relayed mail: a next hop that offers DSN takes the request over
/// (it gets the NOTIFY parameter) and smtpd sends no report, as 6.8's queue decides; a
/// next hop without DSN cannot, so smtpd reports the delivery to the sender itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_reports_of_relayed_mail_are_left_to_a_next_hop_with_dsn() {
    for offers in [true, false] {
        let (sink, daemon, _dir) = relay_to_dsn_sink(
            offers,
            "alice@client.test",
            &["bob@far.test NOTIFY=SUCCESS"],
        )
        .await;
        let first = daemon.wait_for("mta delivery");
        assert!(first.contains("result=\"Ok\""), "{first}");
        if offers {
            // Time for a report to be queued and relayed, were one made.
            std::thread::sleep(Duration::from_secs(2));
            let reports = sink
                .commands()
                .iter()
                .filter(|c| c.as_str() == "MAIL FROM:<>")
                .count();
            assert_eq!(reports, 0, "{:#?}", sink.commands());
            assert!(
                sink.commands()
                    .contains(&"RCPT TO:<bob@far.test> NOTIFY=SUCCESS".to_string())
            );
        } else {
            let lines = wait_for_n(&daemon, "mta delivery", 2, 20);
            assert!(
                lines[1].contains(" from=<> to=<alice@client.test> "),
                "{lines:#?}"
            );
            let data = sink.data.lock().unwrap().clone();
            let report = String::from_utf8_lossy(&data[1]).into_owned();
            assert!(
                report.contains("Subject: Delivery status notification: delivered"),
                "{report}"
            );
            // 6.8's notice for mail handed to a next hop that will not report itself.
            assert!(
                report.contains(
                    "    Your message was relayed to these recipients.\r\n\r\nbob@far.test: \r\n"
                ),
                "{report}"
            );
            // The report comes in over a local session of its own, logged as 6.8 logs it.
            let sid = daemon.wait_for(" smtp connected address=local host=")[..16].to_string();
            let log = daemon.log();
            for line in [
                " smtp message msgid=",
                " smtp envelope evpid=",
                " smtp disconnected reason=quit",
            ] {
                assert!(log.contains(&format!("{sid}{line}")), "{log}");
            }
            assert!(log.contains(" from=<> to=<alice@client.test>\n"), "{log}");
        }
    }
}

/// A route no session has been greeted on takes one session at a time, as 6.8's "not
/// validated yet": with no pause between sessions (no `conn-delay-route`, nor 6.8's 2 s of
/// `conn-delay-relay`), the second one opens only once the first got the (slow) greeting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_not_validated_yet_takes_one_session_at_a_time() {
    let sink = Sink {
        greeting_delay: Some(Duration::from_millis(1500)),
        ..Sink::default()
    };
    let (sink, _daemon, _dir) = relay_numbered(
        sink,
        "mta limit conn-delay-route 0 reconn-delay-route 0 conn-delay-relay 0 session-mail-max 1\n",
        "",
        3,
        40,
    )
    .await;
    let opened = sink.accepted_at.lock().unwrap().clone();
    assert_eq!(opened.len(), 3, "{opened:?}");
    let first = gaps(&opened)[0];
    assert!(
        first >= Duration::from_millis(1400),
        "{first:?} between the first two sessions"
    );
}

/// The gaps between consecutive times, in order.
fn gaps(times: &[std::time::Instant]) -> Vec<Duration> {
    times.windows(2).map(|p| p[1] - p[0]).collect()
}

/// `conn-delay-route` (5 s by default, as in 6.8): a second session on a route, from the
/// same source to the same address, opens that long after the first, even when the first
/// ended meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_route_open_conn_delay_route_apart_by_default() {
    let (sink, daemon, _dir) =
        relay_numbered(Sink::default(), "mta limit session-mail-max 1\n", "", 2, 30).await;
    let opened = sink.accepted_at.lock().unwrap().clone();
    assert_eq!(opened.len(), 2, "{opened:?}");
    let gap = gaps(&opened)[0];
    assert!(
        gap >= Duration::from_millis(4900),
        "{gap:?} between sessions"
    );
    assert_eq!(
        daemon
            .log()
            .lines()
            .filter(|l| l.contains("mta disconnected reason=quit messages=1"))
            .count(),
        2
    );
}

/// `n` messages relayed one session each, one session at a time, by a next hop that takes
/// 1.5 s to accept each, with `delays` (more `mta limit` keys): when the sessions opened
/// and ended.
async fn one_session_at_a_time(
    delays: &str,
    n: usize,
) -> (Vec<std::time::Instant>, Vec<std::time::Instant>) {
    let sink = Sink {
        data_delay: Some(Duration::from_millis(1500)),
        ..Sink::default()
    };
    let head = format!(
        "mta limit session-mail-max 1 max-conn-per-route 1 conn-delay-relay 0\nmta limit {delays}\n"
    );
    let (sink, _daemon, _dir) = relay_numbered(sink, &head, "", n, 30).await;
    let opened = sink.accepted_at.lock().unwrap().clone();
    let closed = sink.closed_at.lock().unwrap().clone();
    (opened, closed)
}

/// `reconn-delay-route`: after a session of a route ends, the next one waits that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_rests_reconn_delay_route_after_a_session_ends() {
    let (opened, closed) =
        one_session_at_a_time("conn-delay-route 0 reconn-delay-route 2", 3).await;
    assert_eq!(opened.len(), 3, "{opened:?}");
    for i in 0..2 {
        let rest = opened[i + 1].saturating_duration_since(closed[i]);
        assert!(
            rest >= Duration::from_millis(1900),
            "session {} opened {rest:?} after session {} ended",
            i + 2,
            i + 1
        );
    }
    // `conn-delay-route` alone (no rest after an end) counts from the opening instead:
    // the sessions of a one-session route follow each other at once once it has passed.
    let (opened, closed) =
        one_session_at_a_time("conn-delay-route 1 reconn-delay-route 0", 2).await;
    assert!(closed[0] - opened[0] >= Duration::from_millis(1500));
    assert!(gaps(&opened)[0] >= Duration::from_millis(1500));
}

/// `conn-delay-host`: sessions to one remote address open that far apart, even on
/// different routes (here, from two source addresses for two domains).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_to_one_host_open_conn_delay_host_apart() {
    let (sink, addr) = Sink::default().start("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "table s1 {{ 127.0.0.5 }}\n\
         table s2 {{ 127.0.0.6 }}\n\
         mta limit conn-delay-host 3 conn-delay-route 0 reconn-delay-route 0 conn-delay-relay 0\n\
         listen on 127.0.0.1 port PORT\n\
         action \"r1\" relay host \"smtp://127.0.0.1:{p}\" src <s1>\n\
         action \"r2\" relay host \"smtp://127.0.0.1:{p}\" src <s2>\n\
         match from local for domain \"one.test\" action \"r1\"\n\
         match from local for domain \"two.test\" action \"r2\"\n",
        p = addr.port()
    );
    let (daemon, port) = start(dir.path(), &conf);
    send_from_alice(
        port,
        &["a@one.test", "b@two.test"],
        "Subject: x\r\n\r\nhi\r\n",
    )
    .await;
    let lines = wait_for_n(&daemon, "mta delivery", 2, 30);
    assert!(
        lines.iter().all(|l| l.contains("result=\"Ok\"")),
        "{lines:#?}"
    );
    let peers = sink.source_addresses();
    assert_eq!(peers.len(), 2, "{peers:?}");
    let opened = sink.accepted_at.lock().unwrap().clone();
    assert_eq!(opened.len(), 2, "{opened:?}");
    let gap = gaps(&opened)[0];
    assert!(
        gap >= Duration::from_millis(2900),
        "{gap:?} between sessions"
    );
}

/// As in 6.8, a recipient the next hop refuses is reported when its RCPT is refused; the
/// others once the message is accepted (here, 3 s after its end was sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_recipient_is_logged_before_the_message_is_sent() {
    let sink = Sink {
        refuse_rcpt: Some("ghost".into()),
        data_delay: Some(Duration::from_secs(3)),
        ..Sink::default()
    };
    let (_sink, daemon, port, _dir) = relay_to(sink, "mta limit session-keepalive 1\n", "").await;
    send_from_alice(
        port,
        &["bob@far.test", "ghost@far.test", "carol@far.test"],
        "Subject: x\r\n\r\nhi\r\n",
    )
    .await;
    // When the refusal and the acceptance show in the log.
    let (mut refused_at, mut accepted_at) = (None, None);
    let t0 = Instant::now();
    while accepted_at.is_none() && t0.elapsed() < Duration::from_secs(30) {
        let log = daemon.log();
        if refused_at.is_none() && log.contains("result=\"PermFail\"") {
            refused_at = Some(Instant::now());
        }
        if log.contains("result=\"Ok\"") {
            accepted_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (refused_at, accepted_at) = (refused_at.unwrap(), accepted_at.unwrap());
    assert!(
        accepted_at.duration_since(refused_at) >= Duration::from_secs(1),
        "refusal logged {:?} before the acceptance",
        accepted_at.duration_since(refused_at)
    );
    let lines = wait_for_n(&daemon, "mta delivery", 3, 30);
    assert!(
        lines[0].contains("to=<ghost@far.test>")
            && lines[0].ends_with("result=\"PermFail\" stat=\"550 5.1.1 no such user\""),
        "{lines:#?}"
    );
    assert!(
        lines[1..].iter().all(|l| l.contains("result=\"Ok\"")),
        "{lines:#?}"
    );
}

/// `show stats` counts the outbound side's objects as 6.8's `mta.*` gauges: while a next
/// hop holds its reply to the final dot, one session, envelope, task (running), relay,
/// connector, domain, source, route and host; once the message is taken, no envelope and
/// no task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_the_outbound_side() {
    let hold = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let (sink, addr) = Sink {
        data_hold: Some(hold.clone()),
        ..Sink::default()
    }
    .start("127.0.0.1:0")
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (daemon, port) = start(dir.path(), &relay_conf("", addr.port(), ""));
    let spool = dir.path().join("spool");
    wait_for_control(&spool);
    let stats = || {
        let out = common::smtpctl(&spool, &["show", "stats"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Nothing was relayed yet: no `mta.` counter.
    assert!(!stats().contains("mta."), "{}", stats());
    let reply = tokio::task::spawn_blocking(move || {
        submit(
            port,
            "a@client.example",
            "bob@far.test",
            "Subject: s\r\n\r\nx\r\n",
        )
    })
    .await
    .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    // The next hop has the message and holds its reply.
    let t = Instant::now();
    while sink.data.lock().unwrap().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = stats();
    for key in [
        "mta.connector=1",
        "mta.domain=1",
        "mta.envelope=1",
        "mta.host=1",
        "mta.relay=1",
        "mta.route=1",
        "mta.session=1",
        "mta.source=1",
        "mta.task=1",
        "mta.task.running=1",
    ] {
        assert!(during.lines().any(|l| l == key), "{key} in {during}");
    }
    hold.add_permits(1);
    let delivered = daemon.wait_for(" mta delivery ");
    assert!(delivered.contains("result=\"Ok\""), "{delivered}");
    let after = stats();
    for key in ["mta.envelope=0", "mta.task=0", "mta.task.running=0"] {
        assert!(after.lines().any(|l| l == key), "{key} in {after}");
    }
}
