//! `-T smtp` against the built daemon: OpenSMTPD's trace lines for one session, in order —
//! the listener line, the state changes, every line read (`<<<`), every reply line sent
//! (`>>>`), the message lines (`<<< [MSG]`) and their end (`<<< [EOM]`).

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn a_session_traced_as_opensmtpd_traces_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::Daemon::start(
        dir.path(),
        "table users { foo = \"2000:2000:/var/empty\" }\n\
         listen on 127.0.0.1 port PORT hostname mx.test\n\
         action \"local\" maildir userbase <users>\n\
         match from any for domain \"trace.test\" action \"local\"\n",
        &["-P", "mda", "-T", "smtp"],
    );
    let port = d.port;
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut reply = || common::read_reply(&mut r);
    reply();
    for line in [
        "EHLO client.test",
        "MAIL FROM:<a@client.test>",
        "RCPT TO:<foo@trace.test>",
        "DATA",
        "Subject: traced\r\n\r\nhello\r\n.",
        "QUIT",
    ] {
        w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        reply();
    }
    // Wait (bounded) for the last line, then stop the daemon.
    assert!(d.wait_log("STATE_HELO -> STATE_QUIT", 10), "{}", d.log());
    let log = d.log();
    drop(d);
    // The session that said EHLO (the daemon's start-up probe made one before it).
    let sid = log
        .lines()
        .filter(|l| l.ends_with(": <<< EHLO client.test"))
        .find_map(|l| l.strip_prefix("smtp: ")?.split(':').next())
        .expect("a trace line")
        .to_string();
    // The message id in the 250 varies: it is replaced by MSGID.
    let traced: Vec<String> = log
        .lines()
        .filter(|l| l.starts_with("smtp: ") || l.starts_with("<<< "))
        .map(|l| match l.split_once(">>> 250 2.0.0 ") {
            Some((head, rest)) if rest.ends_with(" Message accepted for delivery") => {
                format!("{head}>>> 250 2.0.0 MSGID Message accepted for delivery")
            }
            _ => l.to_string(),
        })
        .collect();
    let want = [
        format!("smtp: {sid}: connected to listener 0x1 [hostname=mx.test, port={port}, tag=]"),
        format!("smtp: {sid}: STATE_NEW -> STATE_CONNECTED"),
        format!("smtp: {sid}: >>> 220 mx.test ESMTP OpenSMTPD"),
        format!("smtp: {sid}: <<< EHLO client.test"),
        format!("smtp: {sid}: STATE_CONNECTED -> STATE_HELO"),
        format!("smtp: {sid}: >>> 250-mx.test Hello client.test [127.0.0.1], pleased to meet you"),
        format!("smtp: {sid}: <<< MAIL FROM:<a@client.test>"),
        format!("smtp: {sid}: >>> 250 2.0.0 Ok"),
        format!("smtp: {sid}: <<< RCPT TO:<foo@trace.test>"),
        format!("smtp: {sid}: >>> 250 2.1.5 Destination address valid: Recipient ok"),
        format!("smtp: {sid}: <<< DATA"),
        format!("smtp: {sid}: >>> 354 Enter mail, end with \".\" on a line by itself"),
        format!("smtp: {sid}: STATE_HELO -> STATE_BODY"),
        "<<< [MSG] Subject: traced".to_string(),
        "<<< [MSG] ".to_string(),
        "<<< [MSG] hello".to_string(),
        // As received: the final dot too (and leading dots still doubled).
        "<<< [MSG] .".to_string(),
        "<<< [EOM]".to_string(),
        format!("smtp: {sid}: >>> 250 2.0.0 MSGID Message accepted for delivery"),
        format!("smtp: {sid}: STATE_BODY -> STATE_HELO"),
        format!("smtp: {sid}: <<< QUIT"),
        format!("smtp: {sid}: >>> 221 2.0.0 Bye"),
        format!("smtp: {sid}: STATE_HELO -> STATE_QUIT"),
    ];
    // Every expected line, in this order (the EHLO reply has more lines in between, and
    // the 250 after the message carries its id).
    let mut at = 0;
    for line in &want {
        match traced[at..].iter().position(|l| l == line) {
            Some(i) => at += i + 1,
            None => panic!("missing or out of order: {line:?}\n{}", traced.join("\n")),
        }
    }
}
