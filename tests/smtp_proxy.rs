//! `listen on … proxy-v2`: the client named by the PROXY v2 header is the one rules and logs
//! see; a connection without a valid header is closed.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn header(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = smtpd::smtp::proxy::SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&25u16.to_be_bytes());
    h
}

fn reply(r: &mut BufReader<TcpStream>) -> String {
    common::read_reply(r)
}

#[test]
fn proxied_client_address_drives_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::Daemon::start(
        dir.path(),
        "listen on 127.0.0.1 port PORT hostname mx.test proxy-v2\n\
         action \"relay\" relay\n\
         match from src { 192.0.2.0/24 } for any action \"relay\"\n",
        &["-P", "mta"],
    );
    let port = daemon.port;
    // Through the proxy, as 192.0.2.7: relaying is allowed for that network.
    for (src, expect) in [
        ([192, 0, 2, 7], "250 2.1.5"),
        ([198, 51, 100, 1], "550 Invalid recipient"),
    ] {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        w.write_all(&header(src, 40000)).unwrap();
        assert!(reply(&mut r).starts_with("220 mx.test ESMTP"));
        w.write_all(b"HELO client.example\r\n").unwrap();
        let helo = reply(&mut r);
        assert!(
            helo.contains(&format!("[{}.{}.{}.{}]", src[0], src[1], src[2], src[3])),
            "{helo}"
        );
        w.write_all(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<b@elsewhere.example>\r\n")
            .unwrap();
        reply(&mut r);
        let rcpt = reply(&mut r);
        assert!(rcpt.starts_with(expect), "{src:?}: {rcpt}");
        w.write_all(b"QUIT\r\n").unwrap();
    }
    // No header: closed without a banner.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"EHLO client.example\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    drop(daemon);
}
