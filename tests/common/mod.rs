//! Helpers shared by the tests that talk SMTP to the built daemon over real sockets.

#![allow(dead_code)]

use std::io::BufRead;
use std::net::TcpListener;

/// A port on 127.0.0.1 that was free a moment ago, for a daemon to bind next or for a
/// relay target that must stay closed.
///
/// The ports come from 20000–31999, below the kernel's ephemeral range (32768–60999 on
/// Linux), and each is handed out once per test process: a listener bound to port 0 or an
/// outgoing connection never takes one, and no other test of this binary gets it again,
/// even after the test that had it closed it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Processes that run one after the other start at different places.
    let start = std::process::id() % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN);
}

/// Reads one SMTP reply, every line of it (`250-…` lines up to the `250 …` one), with the
/// line ends as sent. Bounded: at most 200 lines; an empty string at the end of the stream.
pub fn read_reply(r: &mut impl BufRead) -> String {
    let mut out = String::new();
    for _ in 0..200 {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        out.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            break;
        }
    }
    out
}

/// The built daemon, started in the foreground (`-d`) on a configuration whose `PORT` is
/// replaced by a free port, with no resolver, and its log collected. Killed when dropped.
pub struct Daemon {
    child: std::process::Child,
    pub port: u16,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// Starts smtpd on `conf` (written to `DIR/smtpd.conf`) with `extra` arguments and its
    /// spool in `DIR/spool`, and waits (at most 10 s) until it accepts connections.
    pub fn start(dir: &std::path::Path, conf: &str, extra: &[&str]) -> Daemon {
        Daemon::start_with_spool(dir, conf, extra, &dir.join("spool"))
    }

    /// [`Daemon::start`] with the spool elsewhere.
    pub fn start_with_spool(
        dir: &std::path::Path,
        conf: &str,
        extra: &[&str],
        spool: &std::path::Path,
    ) -> Daemon {
        Daemon::start_with_resolver(
            dir,
            conf,
            extra,
            spool,
            std::path::Path::new("/nonexistent"),
        )
    }

    /// [`Daemon::start_with_spool`] with a resolver configuration (`--resolv-conf`).
    pub fn start_with_resolver(
        dir: &std::path::Path,
        conf: &str,
        extra: &[&str],
        spool: &std::path::Path,
        resolv_conf: &std::path::Path,
    ) -> Daemon {
        use std::io::Read;
        let port = free_port();
        let path = dir.join("smtpd.conf");
        std::fs::write(&path, conf.replace("PORT", &port.to_string())).expect("write config");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_smtpd"))
            .arg("-d")
            .args(extra)
            .arg("-f")
            .arg(&path)
            .arg("--spool")
            .arg(spool)
            .arg("--resolv-conf")
            .arg(resolv_conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start smtpd");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr");
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let mut d = Daemon {
            child,
            port,
            log,
            reader: Some(reader),
        };
        let t = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("smtpd exited: {status}: {}", d.log());
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(10),
                "smtpd did not start: {}",
                d.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        d
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits (at most `secs`) until the log contains `text`; says whether it did.
    pub fn wait_log(&self, text: &str, secs: u64) -> bool {
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_secs(secs) {
            if self.log().contains(text) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's exit status, once it has ended.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether the daemon is still running.
    #[allow(dead_code)]
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the daemon with SIGTERM (SIGKILL after 10 s) and returns all it logged.
    pub fn stop(mut self) -> String {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let t = std::time::Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if t.elapsed() > std::time::Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.log()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One SMTP dialogue on a fresh connection: the banner, then each line sent with its reply
/// read (a DATA body is sent as one line ending in `\r\n.`). Returns every reply.
pub fn dialogue(port: u16, lines: &[&str]) -> Vec<String> {
    use std::io::Write;
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    let mut r = std::io::BufReader::new(s.try_clone().expect("clone"));
    let mut w = s;
    let mut replies = vec![read_reply(&mut r)];
    for l in lines {
        w.write_all(format!("{l}\r\n").as_bytes()).expect("send");
        replies.push(read_reply(&mut r));
    }
    replies
}

/// One message on a fresh connection (`HELO c.test`, MAIL, RCPT, DATA with `message` — its
/// lines CRLF-ended, without the final dot — QUIT). Returns every reply; `[5]` answers the
/// message.
pub fn send_mail(port: u16, from: &str, to: &str, message: &str) -> Vec<String> {
    dialogue(
        port,
        &[
            "HELO c.test",
            &format!("MAIL FROM:<{from}>"),
            &format!("RCPT TO:<{to}>"),
            "DATA",
            &format!("{message}."),
            "QUIT",
        ],
    )
}

/// The built smtpctl, run on the daemon of `spool` (`--spool`).
pub fn smtpctl(spool: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_smtpctl"))
        .arg("--spool")
        .arg(spool)
        .args(args)
        .output()
        .expect("run smtpctl")
}

/// Regular files under `dir`, recursively (at most 10,000 directories read).
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
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

/// A directory `vmail` in `dir` for maildirs the delivery user can write, and that user's
/// `uid:gid` for a userbase: uid 2000 when the tests run as root (`dir` and its parents
/// made searchable), else the current user.
pub fn vmail(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    use std::os::unix::fs::PermissionsExt;
    let vmail = dir.join("vmail");
    std::fs::create_dir(&vmail).expect("create vmail");
    if nix::unistd::Uid::effective().is_root() {
        nix::unistd::chown(&vmail, Some(2000.into()), Some(2000.into())).expect("chown vmail");
        let mut p = dir.to_path_buf();
        loop {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
            if !p.pop() || p.as_os_str().len() <= 4 {
                break;
            }
        }
        (vmail, "2000:2000".into())
    } else {
        let ids = format!(
            "{}:{}",
            nix::unistd::Uid::effective(),
            nix::unistd::Gid::effective()
        );
        (vmail, ids)
    }
}

/// hickory-server on a free loopback port (UDP and TCP), authoritative for the one zone in
/// `zone` (master-file text with its `$ORIGIN`). The server answers while it is alive.
pub async fn loopback_dns(
    zone: &str,
) -> (
    hickory_server::Server<hickory_server::zone_handler::Catalog>,
    std::net::SocketAddr,
) {
    loopback_dns_zones(&[zone]).await
}

/// [`loopback_dns`] serving several zones (a forward zone and a reverse one, say).
pub async fn loopback_dns_zones(
    zones: &[&str],
) -> (
    hickory_server::Server<hickory_server::zone_handler::Catalog>,
    std::net::SocketAddr,
) {
    use hickory_server::net::runtime::TokioRuntimeProvider;
    use hickory_server::proto::rr::LowerName;
    use hickory_server::proto::serialize::txt::Parser;
    use hickory_server::store::in_memory::InMemoryZoneHandler;
    use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
    let mut catalog = Catalog::new();
    for zone in zones {
        let (origin, records) = Parser::new(*zone, None, None).parse().expect("zone");
        let handler = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
            origin.clone(),
            records,
            ZoneType::Primary,
            AxfrPolicy::Deny,
        )
        .expect("zone handler");
        catalog.upsert(LowerName::new(&origin), vec![std::sync::Arc::new(handler)]);
    }
    for _ in 0..50 {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("udp");
        let addr = udp.local_addr().expect("address");
        if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
            let mut server = hickory_server::Server::new(catalog);
            server.register_socket(udp);
            server.register_listener(tcp, std::time::Duration::from_secs(5), 4096);
            return (server, addr);
        }
    }
    panic!("no free loopback port for DNS");
}

/// Runs `cmd` with `input` on its standard input; its status and output.
pub fn run_with_input(cmd: &mut std::process::Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    if let Some(mut stdin) = child.stdin.take() {
        // A command that exits without reading all of it is not an error here.
        let _ = stdin.write_all(input);
    }
    child.wait_with_output().expect("wait for the command")
}

/// A copy of the corpus's stub files (`tests/corpus/stubs`) in `dir/stubs`, its private
/// key readable by its owner only (OpenSMTPD, and smtpd at start-up, refuse others);
/// the path to put for `@STUBS@`.
pub fn corpus_stubs(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let stubs = dir.join("stubs");
    std::fs::create_dir(&stubs).expect("stubs directory");
    for e in std::fs::read_dir(corpus.join("stubs")).expect("corpus stubs") {
        let e = e.expect("stub entry");
        std::fs::copy(e.path(), stubs.join(e.file_name())).expect("copy a stub");
    }
    std::fs::set_permissions(
        stubs.join("key.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("key mode");
    stubs
}

/// A test that cannot run here says why and checks nothing; under `.ci/run`
/// (`SMTPD_CI_STRICT` set), which installs everything the tests need, that is a failure.
pub fn skip(why: &str) {
    if std::env::var_os("SMTPD_CI_STRICT").is_some() {
        panic!("SKIPPED under SMTPD_CI_STRICT: {why}");
    }
    eprintln!("SKIPPED: {why}");
}
