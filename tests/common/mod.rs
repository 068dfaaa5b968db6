//! Helpers shared by the tests that talk SMTP to the built daemon over real sockets.

#![allow(dead_code)]

use std::io::BufRead;
use std::net::TcpListener;

/// A port on 127.0.0.1 that was free a moment ago (the daemon binds it next; a test that
/// must not race another process binds it itself).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
        .port()
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
