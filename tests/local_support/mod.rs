//! Shared by the `local_*` tests: a daemon started from the built binary with its log in a
//! file, a maildir tree a userbase uid can write, and bounded waits.

#![allow(dead_code)]

#[path = "../common/mod.rs"]
pub mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running smtpd, killed when dropped.
pub struct Daemon {
    child: Child,
    pub dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// The daemon's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("smtpd.log")).unwrap_or_default()
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.join("spool")
    }

    /// Wait (bounded) until the log has a line containing `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        let t = Instant::now();
        loop {
            let log = self.log();
            if log.contains(needle) || t.elapsed() > Duration::from_secs(10) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[allow(unused_imports)] // Not every test binary that includes this module sends input.
pub use common::{free_port, run_with_input};

/// Start smtpd on `conf` (`PORT` replaced by `port`); waits for the TCP port.
pub fn start(dir: &Path, conf: &str, port: u16) -> Daemon {
    launch(dir, conf, port, false)
}

/// Start smtpd as [`start`] does, and also wait for the enqueue socket.
pub fn start_with_socket(dir: &Path, conf: &str, port: u16) -> Daemon {
    launch(dir, conf, port, true)
}

fn launch(dir: &Path, conf: &str, port: u16, socket_too: bool) -> Daemon {
    std::fs::write(
        dir.join("smtpd.conf"),
        conf.replace("PORT", &port.to_string()),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("smtpd.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_smtpd"))
        .args(["-d", "-f"])
        .arg(dir.join("smtpd.conf"))
        .arg("--spool")
        .arg(dir.join("spool"))
        .arg("--resolv-conf")
        .arg("/nonexistent")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let mut d = Daemon {
        child,
        dir: dir.to_path_buf(),
    };
    let socket = smtpd::smtp::listen::socket_path(&dir.join("spool"));
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err()
        || (socket_too && std::os::unix::net::UnixStream::connect(&socket).is_err())
    {
        if let Ok(Some(status)) = d.child.try_wait() {
            panic!("smtpd exited: {status}: {}", d.log());
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "smtpd did not start: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

/// A directory for maildirs that the userbase uid 2000 can write when the tests run as root.
pub fn vmail(dir: &Path) -> PathBuf {
    common::vmail(dir).0
}

/// Wait (bounded) for a file in `<maildir>/new` and return its text.
pub fn delivered(maildir: &Path) -> String {
    let new = maildir.join("new");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        if let Some(f) = std::fs::read_dir(&new)
            .into_iter()
            .flatten()
            .flatten()
            .next()
        {
            return std::fs::read_to_string(f.path()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing delivered into {}", new.display());
}

/// The server name smtpd uses when the configuration names none.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}
