//! Flood: hundreds of hostile clients at once — garbage bytes, endless lines, abandoned DATA,
//! connect-and-close — while an ordinary client sends mail. The ordinary client must be
//! served, and the server must still answer afterwards. Bounded in count and time.

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn reply(r: &mut BufReader<TcpStream>) -> String {
    common::read_reply(r)
}

fn good_client(port: u16) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut last = reply(&mut r);
    for line in [
        "EHLO good.example",
        "MAIL FROM:<a@good.example>",
        "RCPT TO:<foo@bsdsx.fr>",
        "DATA",
        "Subject: ok\r\n\r\nfine\r\n.",
        "QUIT",
    ] {
        w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        last = reply(&mut r);
        if line.starts_with("Subject") {
            return last;
        }
    }
    last
}

#[test]
fn hostile_clients_do_not_starve_an_ordinary_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = common::Daemon::start(
        dir.path(),
        "listen on 127.0.0.1 port PORT\ntable users { foo = \"2000:2000:/var/empty\" }\n\
         action \"l\" maildir userbase <users>\nmatch from any for domain \"bsdsx.fr\" action \"l\"\n",
        &["-P", "mda"],
    );
    let port = daemon.port;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut hostile = Vec::new();
    for k in 0..200usize {
        hostile.push(std::thread::spawn(move || {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return };
            let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
            let mut seed = (k as u64 + 1) * 0x9e37_79b9_7f4a_7c15;
            let mut junk = vec![0u8; 4096];
            for _ in 0..20 {
                if Instant::now() > deadline {
                    break;
                }
                let sent = match k % 4 {
                    // Random bytes, including CR, LF and NUL.
                    0 => {
                        for b in junk.iter_mut() {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            *b = seed as u8;
                        }
                        s.write_all(&junk)
                    }
                    // A line that never ends.
                    1 => s.write_all(&[b'A'; 4096]),
                    // A transaction that starts DATA and then only sends body lines.
                    2 => s.write_all(b"EHLO x\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<foo@bsdsx.fr>\r\nDATA\r\nline line line line\r\n"),
                    // Connect and leave at once.
                    _ => break,
                };
                if sent.is_err() {
                    break;
                }
            }
        }));
    }
    // The ordinary client is served while the flood goes on.
    let r = good_client(port);
    assert!(
        r.starts_with("250 2.0.0 ") && r.contains("Message accepted"),
        "{r}"
    );
    for h in hostile {
        let _ = h.join();
    }
    // And the server still answers afterwards.
    let r = good_client(port);
    assert!(r.starts_with("250 2.0.0 "), "{r}");
    assert!(daemon.is_running(), "the server died");
}
