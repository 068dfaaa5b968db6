//! Open-relay battery, in the style of nmap's smtp-open-relay: from a client that is neither
//! local nor authenticated, no address trick may get mail relayed to a foreign domain. Every
//! attempt must be refused or land on a local recipient; no relay envelope may ever be queued.

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn reply(r: &mut BufReader<TcpStream>) -> String {
    common::read_reply(r)
}

/// Connect from `source` (a loopback address that is not one of the server's own).
fn connect_from(source: &str, port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{source}:0").parse().unwrap();
    sock.bind(&src.into()).unwrap();
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock.connect(&dst.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn no_address_trick_gets_relayed() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::Daemon::start(
        dir.path(),
        "listen on 127.0.0.1 port PORT hostname mx.example.org\n\
         table users { postmaster = \"2000:2000:/var/empty\" }\n\
         action \"local\" maildir userbase <users>\n\
         action \"relay\" relay\n\
         match from any for domain \"example.org\" action \"local\"\n\
         match from local for any action \"relay\"\n",
        &["-P", "mda", "-P", "mta"],
    );
    let port = daemon.port;
    let senders = [
        "<>",
        "<attacker@evil.example>",
        "<postmaster@example.org>",
        "<postmaster>",
    ];
    let recipients = [
        "<victim@foreign.example>",
        "<victim%foreign.example@example.org>",
        "<victim%foreign.example@[127.0.0.1]>",
        "<\"victim@foreign.example\">",
        "<\"victim@foreign.example\"@example.org>",
        "<victim@foreign.example@example.org>",
        "<@example.org:victim@foreign.example>",
        "<@example.org,@mx.example.org:victim@foreign.example>",
        "<foreign.example!victim>",
        "<foreign.example!victim@example.org>",
        "<victim@[192.0.2.1]>",
        "<victim@[IPv6:2001:db8::1]>",
        "<victim@foreign.example.>",
        "<victim@FOREIGN.EXAMPLE>",
        "<victim@foreign.example\\@example.org>",
        "<victim@foreign.example >",
        "victim@foreign.example",
        // Control: a real local recipient is accepted, so refusals above mean something.
        "<postmaster@example.org>",
    ];
    let mut attempts = 0;
    for sender in senders {
        let s = connect_from("127.0.0.2", port);
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        assert!(reply(&mut r).starts_with("220 "));
        w.write_all(b"EHLO relay-test.example\r\n").unwrap();
        reply(&mut r);
        for rcpt in recipients {
            w.write_all(format!("MAIL FROM:{sender}\r\n").as_bytes())
                .unwrap();
            let m = reply(&mut r);
            w.write_all(format!("RCPT TO:{rcpt}\r\n").as_bytes())
                .unwrap();
            let rr = reply(&mut r);
            attempts += 1;
            // Accepted only if it is a local recipient of example.org.
            if rr.starts_with("250") {
                w.write_all(b"DATA\r\n").unwrap();
                reply(&mut r);
                w.write_all(b"Subject: relay test\r\n\r\nx\r\n.\r\n")
                    .unwrap();
                reply(&mut r);
            } else {
                assert!(
                    rr.starts_with('5') || rr.starts_with('4'),
                    "{sender} {rcpt}: {m} {rr}"
                );
                w.write_all(b"RSET\r\n").unwrap();
                reply(&mut r);
            }
        }
        w.write_all(b"QUIT\r\n").unwrap();
    }
    // Nothing queued may go to a relay action.
    let mut relayed = Vec::new();
    let mut queued = 0;
    for b in std::fs::read_dir(dir.path().join("spool/queue"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for m in std::fs::read_dir(b.path()).into_iter().flatten().flatten() {
            for e in std::fs::read_dir(m.path()).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.len() == 16 {
                    queued += 1;
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    if text.contains("dispatcher: relay") || text.contains("type: mta") {
                        relayed.push(text);
                    }
                }
            }
        }
    }
    println!(
        "{attempts} relay attempts, {queued} local envelopes queued, {} relayed",
        relayed.len()
    );
    assert!(relayed.is_empty(), "relayed: {relayed:?}");
    assert_eq!(
        queued,
        senders.len(),
        "the local control recipient is accepted once per sender"
    );
    drop(daemon);
}
