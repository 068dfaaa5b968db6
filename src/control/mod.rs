//! The control socket behind `smtpctl`: how an administrator looks into the running
//! daemon and steers it (OpenSMTPD's `control.c` and the daemon side of `smtpctl.c`).
//!
//! * [`protocol`]: the request and reply lines on the socket (shared with `smtpctl`);
//! * [`show`]: the texts of `show queue`, `show stats` and `show status`;
//! * [`server`]: the unix socket served by the daemon, and what each request does;
//! * [`gate`]: `pause smtp`, the switch in front of the listeners' accept loops.

pub mod gate;
pub mod protocol;
pub mod server;
pub mod show;

use std::path::{Path, PathBuf};

/// OpenSMTPD's control socket.
pub const DEFAULT_SOCKET: &str = "/var/run/smtpd.sock";

/// Where the control socket lives: `<spool>/smtpd.sock` for a spool given on the command
/// line (so test daemons and a system daemon never share a socket), else
/// [`DEFAULT_SOCKET`].
pub fn socket_path(spool: Option<&Path>) -> PathBuf {
    match spool {
        Some(dir) => dir.join("smtpd.sock"),
        None => PathBuf::from(DEFAULT_SOCKET),
    }
}
