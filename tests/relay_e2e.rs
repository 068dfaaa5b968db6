//! End to end: `smtpd -d` accepts mail for a foreign domain from a local client
//! (`match from local for any action "relay"`) and relays it to an SMTP sink on loopback,
//! with STARTTLS and AUTH PLAIN from an `auth` table; a 5xx from the sink is a permanent
//! failure that leaves the queue; MX routing through a DNS server on loopback
//! (hickory-server in-process) to a sink on port 25 of 127.0.0.23.

mod relay_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::LowerName;
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};

use relay_support::{Sink, tls_config};

struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) until the log holds a line containing `needle`.
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
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.join("smtpd.conf"),
        conf.replace("PORT", &port.to_string()),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_smtpd"))
        .args(["-d", "-f"])
        .arg(dir.join("smtpd.conf"))
        .arg("--spool")
        .arg(dir.join("spool"))
        .arg("--resolv-conf")
        .arg(resolv_conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let mut err = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let d = Daemon { child, log };
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "smtpd did not start:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (d, port)
}

/// Sends one message over SMTP, returning the last reply.
fn submit(port: u16, from: &str, to: &str, body: &str) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let read = |r: &mut BufReader<TcpStream>| {
        let mut last = String::new();
        for _ in 0..50 {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap_or(0) == 0 {
                break;
            }
            let done = l.len() < 4 || l.as_bytes()[3] != b'-';
            last = l;
            if done {
                break;
            }
        }
        last
    };
    read(&mut r);
    let mut last = String::new();
    for l in [
        "EHLO client.test".to_string(),
        format!("MAIL FROM:<{from}>"),
        format!("RCPT TO:<{to}>"),
        "DATA".to_string(),
    ] {
        w.write_all(format!("{l}\r\n").as_bytes()).unwrap();
        last = read(&mut r);
    }
    assert!(last.starts_with("354"), "{last}");
    w.write_all(body.as_bytes()).unwrap();
    w.write_all(b".\r\n").unwrap();
    let done = read(&mut r);
    w.write_all(b"QUIT\r\n").unwrap();
    read(&mut r);
    done
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    for _ in 0..10_000 {
        let Some(d) = stack.pop() else { break };
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
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
         listen on 127.0.0.1 port PORT\n\
         action \"relay\" relay host \"smtp+tls://lbl@127.0.0.1:{}\" auth <secrets> tls no-verify\n\
         match from local for any action \"relay\"\n",
        dir.path().join("secrets").display(),
        addr.port()
    );
    let (daemon, port) = start(dir.path(), &conf);
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
    assert!(delivery.contains("source=\"-\" relay=\"127.0.0.1\""));
    assert!(delivery.ends_with("result=\"Ok\" stat=\"250 2.0.0 queued as 42\""));
    let connecting = format!(
        " mta connecting address=smtp://127.0.0.1:{} host=127.0.0.1",
        addr.port()
    );
    assert!(log.contains(&connecting), "{log}");
    assert!(log.contains(" mta connected"));
    assert!(log.contains(" mta tls ciphers=TLSv1."));
    daemon.wait_for("mta disconnected reason=quit messages=1");

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
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "listen on 127.0.0.1 port PORT\n\
         action \"relay\" relay host \"smtp://127.0.0.1:{}\"\n\
         match from local for any action \"relay\"\n",
        addr.port()
    );
    let (daemon, port) = start(dir.path(), &conf);
    let reply = tokio::task::spawn_blocking(move || {
        submit(
            port,
            "alice@client.test",
            "ghost@far.test",
            "Subject: x\r\n\r\nhi\r\n",
        )
    })
    .await
    .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
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

/// hickory-server on a free loopback port (UDP and TCP), authoritative for `far.test.`.
async fn loopback_dns() -> (Server<Catalog>, std::net::SocketAddr) {
    let mut catalog = Catalog::new();
    let (origin, records) = Parser::new(MX_ZONE, None, None).parse().unwrap();
    let handler = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
        origin.clone(),
        records,
        ZoneType::Primary,
        AxfrPolicy::Deny,
    )
    .unwrap();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(handler)]);
    for _ in 0..50 {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
            let mut server = Server::new(catalog);
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(5), 4096);
            return (server, addr);
        }
    }
    panic!("no free loopback port for DNS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_follows_the_mx_records_to_port_25() {
    let sink = match Sink::default().start("127.0.0.23:25").await {
        Ok((s, _)) => s,
        Err(e) => {
            println!("skipped: cannot bind 127.0.0.23:25: {e}");
            return;
        }
    };
    let (_dns, dns_addr) = loopback_dns().await;
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
    assert!(delivery.contains("relay=\"mx2.far.test\""), "{delivery}");
    assert!(delivery.ends_with("result=\"Ok\" stat=\"250 2.0.0 queued as 42\""));
    let log = daemon.log();
    // mx1 (preference 10) refuses; mx2 (20) is the sink.
    assert!(
        log.contains(" mta connecting address=smtp://127.0.0.24:25 host=mx1.far.test"),
        "{log}"
    );
    assert!(
        log.contains(" mta connecting address=smtp://127.0.0.23:25 host=mx2.far.test"),
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
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "listen on 127.0.0.1 port PORT\n\
         action \"relay\" relay host \"smtp://127.0.0.1:{}\" src \"127.0.0.5\" helo-src {{ \"127.0.0.5\" = \"five.example\" }}\n\
         match from local for any action \"relay\"\n",
        addr.port()
    );
    let (daemon, port) = start(dir.path(), &conf);
    let reply = tokio::task::spawn_blocking(move || {
        submit(
            port,
            "alice@client.test",
            "bob@far.test",
            "Subject: s\r\n\r\nx\r\n",
        )
    })
    .await
    .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
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
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "listen on 127.0.0.1 port PORT\n\
         action \"relay\" relay host \"smtp://127.0.0.1:{}\"\n\
         match from local for any action \"relay\"\n",
        addr.port()
    );
    let (daemon, port) = start(dir.path(), &conf);
    let reply = tokio::task::spawn_blocking(move || {
        submit(
            port,
            "alice@client.test",
            "bob@far.test",
            "Subject: t\r\n\r\nx\r\n",
        )
    })
    .await
    .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
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
