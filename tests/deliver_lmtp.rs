//! LMTP deliveries through the delivery agent against a real LMTP server
//! (tokio, loopback, random port; and a UNIX socket): the dialogue, dot
//! stuffing, and per-recipient temporary and permanent failures, both at
//! RCPT time and in the recipient's reply after the message.

mod deliver_support;

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

use deliver_support::*;
use smtpd::deliver::{DeliveryResult, LmtpRecipient, Method, Status};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};

helper_entry!();

/// What the server saw in one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Transaction {
    lhlo: String,
    mail_from: String,
    rcpts: Vec<String>,
    data: String,
}

type Log = Arc<Mutex<Vec<Transaction>>>;

/// The reply to RCPT TO for an address, by its local part.
fn rcpt_reply(addr: &str) -> String {
    match addr.split('@').next().unwrap_or("") {
        "busy" => format!("451 4.2.0 <{addr}>: mailbox busy"),
        "nobody" => format!("550 5.1.1 <{addr}>: no such user"),
        _ => "250 2.1.5 Ok".to_string(),
    }
}

/// The reply for one accepted recipient after the final dot.
fn data_reply(addr: &str) -> String {
    match addr.split('@').next().unwrap_or("") {
        "full" => format!("452 4.2.2 <{addr}>: mailbox full"),
        "virus" => format!("554 5.6.0 <{addr}>: message rejected"),
        _ => format!("250 2.0.0 <{addr}> delivered"),
    }
}

/// Serves one LMTP connection, recording transactions in `log`.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, log: Log) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 lmtp.test LMTP ready\r\n").await?;
    let mut tx = Transaction::default();
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply = if upper.starts_with("LHLO ") {
            tx.lhlo = line[5..].to_string();
            "250-lmtp.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES".to_string()
        } else if upper.starts_with("MAIL FROM:") {
            tx.mail_from = line[10..].to_string();
            "250 2.1.0 Ok".to_string()
        } else if upper.starts_with("RCPT TO:") {
            let addr = line[8..]
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string();
            let reply = rcpt_reply(&addr);
            if reply.starts_with('2') {
                tx.rcpts.push(addr);
            }
            reply
        } else if upper == "DATA" {
            write
                .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                .await?;
            let mut data = String::new();
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
                data.push_str(&l);
                data.push('\n');
            }
            tx.data = data;
            let replies: Vec<String> = tx.rcpts.iter().map(|r| data_reply(r)).collect();
            log.lock().unwrap().push(std::mem::take(&mut tx));
            replies.join("\r\n")
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else {
            "500 5.5.2 what?".to_string()
        };
        write.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
    Ok(())
}

async fn tcp_server() -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log: Log = Arc::default();
    let server_log = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, server_log.clone()));
        }
    });
    (addr, log)
}

fn lmtp(destination: &str, rcpt_to: LmtpRecipient) -> Method {
    Method::Lmtp {
        destination: destination.into(),
        rcpt_to,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_over_tcp() {
    let (addr, log) = tcp_server().await;
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let req = request(
        lmtp(&addr, LmtpRecipient::User),
        recipient("vmail", home.path()),
        envelope("alice@client.example", "abuse@bsdsx.fr", "foo@bsdsx.fr"),
        &msg,
    );
    assert_eq!(agent().deliver(req).await, DeliveryResult::delivered());
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let tx = &seen[0];
    assert_eq!(tx.lhlo, "localhost");
    assert_eq!(tx.mail_from, "<alice@client.example>");
    // `lmtp "D"`: RCPT TO is the local user the delivery runs as.
    assert_eq!(tx.rcpts, ["vmail"]);
    // The stream as sent: CRLF (stripped by the server's line reader) and
    // every line that starts with a dot doubled.
    let stream =
        format!("Return-Path: <alice@client.example>\nDelivered-To: abuse@bsdsx.fr\n{MESSAGE}");
    let on_wire: String = stream
        .lines()
        .map(|l| {
            if l.starts_with('.') {
                format!(".{l}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_eq!(tx.data, on_wire);
    assert!(tx.data.contains("\n..a line starting with a dot\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rcpt_to_option_sends_the_destination_and_null_sender() {
    let (addr, log) = tcp_server().await;
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let req = request(
        lmtp(&addr, LmtpRecipient::Recipient),
        recipient("vmail", home.path()),
        envelope("", "Abuse@bsdsx.fr", "foo@bsdsx.fr"),
        &msg,
    );
    assert_eq!(agent().deliver(req).await.status, Status::Ok);
    let tx = log.lock().unwrap()[0].clone();
    assert_eq!(tx.mail_from, "<>");
    assert_eq!(tx.rcpts, ["foo@bsdsx.fr"]);
    assert!(tx.data.starts_with("Delivered-To: Abuse@bsdsx.fr\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_recipient_failures() {
    let (addr, log) = tcp_server().await;
    let home = recipient_dir();
    let cases = [
        (
            "busy@x.test",
            Status::TempFail,
            "Error (temporary failure: \"mail.lmtp: LMTP server error: 451 4.2.0 <busy@x.test>: mailbox busy\")",
        ),
        (
            "nobody@x.test",
            Status::PermFail,
            "Error (service unavailable: \"mail.lmtp: LMTP server error: 550 5.1.1 <nobody@x.test>: no such user\")",
        ),
        (
            "full@x.test",
            Status::TempFail,
            "Error (temporary failure: \"mail.lmtp: LMTP server error: 452 4.2.2 <full@x.test>: mailbox full\")",
        ),
        (
            "virus@x.test",
            Status::PermFail,
            "Error (service unavailable: \"mail.lmtp: LMTP server error: 554 5.6.0 <virus@x.test>: message rejected\")",
        ),
        ("fine@x.test", Status::Ok, "Delivered"),
    ];
    for (dest, status, stat) in cases {
        let msg = queued(MESSAGE);
        let req = request(
            lmtp(&addr, LmtpRecipient::Recipient),
            recipient("vmail", home.path()),
            envelope("a@b.test", dest, dest),
            &msg,
        );
        let result = agent().deliver(req).await;
        println!("{dest}: result={} stat={}", result.status, result.stat);
        assert_eq!(
            (result.status, result.stat.as_str()),
            (status, stat),
            "{dest}"
        );
    }
    // Only the messages that got past RCPT reached DATA.
    let rcpts: Vec<Vec<String>> = log
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.rcpts.clone())
        .collect();
    assert_eq!(
        rcpts,
        [
            vec!["full@x.test".to_string()],
            vec!["virus@x.test".to_string()],
            vec!["fine@x.test".to_string()]
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_temporary() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let req = request(
        lmtp(&addr, LmtpRecipient::User),
        recipient("vmail", home.path()),
        envelope("a@b.test", "f@x.test", "f@x.test"),
        &msg,
    );
    let result = agent().deliver(req).await;
    assert_eq!(
        (result.status, result.stat.as_str()),
        (
            Status::TempFail,
            "Error (temporary failure: \"mail.lmtp: connect\")"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    open_up(dir.path());
    let path = dir.path().join("lmtp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let log: Log = Arc::default();
    let server_log = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, server_log.clone()));
        }
    });
    let home = recipient_dir();
    let msg = queued(MESSAGE);
    let destination = path.display().to_string();
    let req = request(
        lmtp(&destination, LmtpRecipient::User),
        recipient("vmail", home.path()),
        envelope("a@b.test", "f@x.test", "f@x.test"),
        &msg,
    );
    assert_eq!(agent().deliver(req).await, DeliveryResult::delivered());
    assert_eq!(log.lock().unwrap().len(), 1);

    // The destination may use format specifiers.
    let msg = queued(MESSAGE);
    std::fs::rename(&path, dir.path().join("x.test")).unwrap();
    let templated = format!("{}/%{{rcpt.domain:lowercase}}", dir.path().display());
    let req = request(
        lmtp(&templated, LmtpRecipient::User),
        recipient("vmail", home.path()),
        envelope("a@b.test", "f@X.TEST", "f@x.test"),
        &msg,
    );
    assert_eq!(agent().deliver(req).await, DeliveryResult::delivered());
    assert_eq!(log.lock().unwrap().len(), 2);
}
