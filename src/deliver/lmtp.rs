//! LMTP delivery (`lmtp "DEST" [rcpt-to]`), the dialogue of OpenSMTPD's
//! `mail.lmtp`:
//!
//! ```text
//! S: 220 ...                     C: LHLO localhost
//! S: 250 ...                     C: MAIL FROM:<SENDER>
//! S: 250 ...                     C: RCPT TO:<USER or RECIPIENT>
//! S: 250 ...                     C: DATA
//! S: 354 ...                     C: <message, dot-stuffed, CRLF>  .
//! S: 250 ... (this recipient)    C: QUIT
//! ```
//!
//! DEST is `host:port`, `[address]:port` (port 25 when omitted) or an
//! absolute UNIX socket path. Every reply is checked: three digits and a
//! space or hyphen, else `LMTP server sent an invalid line`; any reply
//! other than the expected 2xx (3xx after DATA) ends the delivery with
//! `LMTP server error: LINE`. One envelope is one recipient, so the reply
//! after the final dot is that recipient's result.
//!
//! Result mapping: a 4xx reply is a temporary failure (exit 75); any other
//! unexpected reply is permanent (exit 69, `service unavailable`), as in
//! OpenSMTPD HEAD - 6.8 made every LMTP error temporary, which retries a
//! "no such user" for days. Once the server has accepted the message,
//! trouble with QUIT no longer matters (6.8 would retry and deliver twice).

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::message::{c_string, for_each_line};
use super::result::{EX_TEMPFAIL, EX_UNAVAILABLE, Failure, strerror};

/// Program name in error messages.
pub const PROGRAM: &str = "mail.lmtp";

/// Longest reply line accepted.
const MAX_REPLY_LINE: usize = 64 * 1024;

/// Longest UNIX socket path (`sizeof sun_path` - 1).
const MAX_SOCKET_PATH: usize = 107;

/// One LMTP transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LmtpSession {
    /// Where to connect.
    pub destination: String,
    /// The LHLO name (`localhost`).
    pub lhlo: String,
    /// MAIL FROM address (empty for `<>`).
    pub mail_from: String,
    /// RCPT TO address.
    pub rcpt_to: String,
    /// Limit for every read and write.
    pub timeout: Duration,
}

/// Where the dialogue is in `mail.lmtp`'s terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Banner,
    Lhlo,
    MailFrom,
    RcptTo,
    Data,
    Eom,
    Quit,
}

/// Connects, runs the dialogue and streams `input` (headers and message).
pub fn deliver(session: &LmtpSession, input: impl BufRead) -> Result<(), Failure> {
    let conn = connect(&session.destination, session.timeout)?;
    dialogue(conn, session, input)
}

/// A connected stream of either kind.
enum Connection {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Connection {
    fn split(self) -> io::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        Ok(match self {
            Connection::Tcp(s) => (Box::new(s.try_clone()?), Box::new(s)),
            Connection::Unix(s) => (Box::new(s.try_clone()?), Box::new(s)),
        })
    }
}

fn temp(text: impl std::fmt::Display) -> Failure {
    Failure::temp(format!("{PROGRAM}: {text}"))
}

fn connect(destination: &str, timeout: Duration) -> Result<Connection, Failure> {
    if destination.starts_with('/') {
        if destination.len() > MAX_SOCKET_PATH {
            return Err(temp("unix: socket path is too long"));
        }
        let stream = UnixStream::connect(destination)
            .map_err(|e| temp(format!("connect: {}", strerror(&e))))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| temp(strerror(&e)))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| temp(strerror(&e)))?;
        return Ok(Connection::Unix(stream));
    }
    let (host, port) = split_inet(destination)?;
    let port: u16 = port
        .parse()
        .map_err(|_| temp("inet: Servname not supported for ai_socktype"))?;
    let addrs: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => (host, port)
            .to_socket_addrs()
            .map_err(|e| temp(format!("inet: {}", gai_text(&e))))?
            .collect(),
    };
    for addr in &addrs {
        if let Ok(stream) = TcpStream::connect_timeout(addr, timeout) {
            stream
                .set_read_timeout(Some(timeout))
                .map_err(|e| temp(strerror(&e)))?;
            stream
                .set_write_timeout(Some(timeout))
                .map_err(|e| temp(strerror(&e)))?;
            return Ok(Connection::Tcp(stream));
        }
    }
    Err(temp("connect"))
}

/// gai_strerror's text of a failed lookup, without std's preamble.
fn gai_text(e: &io::Error) -> String {
    let text = e.to_string();
    text.strip_prefix("failed to lookup address information: ")
        .map_or(text.clone(), str::to_string)
}

/// `host:port`, `[addr]:port`, `[IPv6:addr]:port`, or a host alone (port 25).
fn split_inet(destination: &str) -> Result<(&str, &str), Failure> {
    if let Some(rest) = destination.strip_prefix('[') {
        let close = rest
            .find(']')
            .ok_or_else(|| temp("inet: invalid address syntax"))?;
        let mut host = &rest[..close];
        if host.len() >= 5 && host[..5].eq_ignore_ascii_case("IPv6:") {
            host = &host[5..];
        }
        return match &rest[close + 1..] {
            "" => Ok((host, "25")),
            after => after
                .strip_prefix(':')
                .map(|port| (host, port))
                .ok_or_else(|| temp("inet: invalid address syntax")),
        };
    }
    Ok(match destination.split_once(':') {
        Some((host, port)) => (host, port),
        None => (destination, "25"),
    })
}

fn dialogue(conn: Connection, session: &LmtpSession, input: impl BufRead) -> Result<(), Failure> {
    let io_error = |e: io::Error| temp(format!("getline: {}", strerror(&e)));
    let (reader, writer) = conn.split().map_err(|e| temp(strerror(&e)))?;
    let mut reader = BufReader::new(reader);
    let mut writer = BufWriter::new(writer);
    let mut phase = Phase::Banner;
    let mut input = Some(input);
    loop {
        writer.flush().map_err(io_error)?;
        let line = match read_reply_line(&mut reader) {
            Ok(line) => line,
            // After the message was accepted, a lost QUIT reply changes nothing.
            Err(_) if phase == Phase::Quit => return Ok(()),
            Err(f) => return Err(f),
        };
        let expected = if phase == Phase::Data { b'3' } else { b'2' };
        if line.as_bytes()[0] != expected {
            if phase == Phase::Quit {
                return Ok(());
            }
            let code = if line.starts_with('4') {
                EX_TEMPFAIL
            } else {
                EX_UNAVAILABLE
            };
            return Err(Failure::new(
                code,
                format!("{PROGRAM}: LMTP server error: {line}"),
            ));
        }
        if line.as_bytes()[3] == b'-' {
            continue;
        }
        match phase {
            Phase::Banner => write!(writer, "LHLO {}\r\n", session.lhlo).map_err(io_error)?,
            Phase::Lhlo => {
                write!(writer, "MAIL FROM:<{}>\r\n", session.mail_from).map_err(io_error)?
            }
            Phase::MailFrom => {
                write!(writer, "RCPT TO:<{}>\r\n", session.rcpt_to).map_err(io_error)?
            }
            Phase::RcptTo => writer.write_all(b"DATA\r\n").map_err(io_error)?,
            Phase::Data => {
                if let Some(input) = input.take() {
                    stream_message(&mut writer, input)
                        .map_err(|e| temp(format!("getline: {}", strerror(&e))))?;
                }
                writer.write_all(b".\r\n").map_err(io_error)?;
            }
            Phase::Eom => {
                // The recipient's reply was 2xx: delivered.
                let _ = writer.write_all(b"QUIT\r\n");
                let _ = writer.flush();
            }
            Phase::Quit => return Ok(()),
        }
        phase = match phase {
            Phase::Banner => Phase::Lhlo,
            Phase::Lhlo => Phase::MailFrom,
            Phase::MailFrom => Phase::RcptTo,
            Phase::RcptTo => Phase::Data,
            Phase::Data => Phase::Eom,
            Phase::Eom | Phase::Quit => Phase::Quit,
        };
    }
}

/// One reply line, checked for `DDD ` / `DDD-` and stripped of CR LF.
fn read_reply_line(reader: &mut impl BufRead) -> Result<String, Failure> {
    let mut raw = Vec::new();
    let n = reader
        .by_ref()
        .take(MAX_REPLY_LINE as u64)
        .read_until(b'\n', &mut raw)
        .map_err(|e| temp(format!("getline: {}", strerror(&e))))?;
    if n == 0 {
        return Err(temp("unexpected EOF from LMTP server"));
    }
    if raw.last() != Some(&b'\n') && n >= MAX_REPLY_LINE {
        return Err(temp("LMTP server sent an invalid line"));
    }
    let mut line = c_string(&raw).to_vec();
    if let Some(nl) = line.iter().position(|&b| b == b'\n') {
        line.truncate(nl);
    }
    if let Some(cr) = line.iter().position(|&b| b == b'\r') {
        line.truncate(cr);
    }
    let valid = line.len() >= 4
        && line[..3].iter().all(u8::is_ascii_digit)
        && (line[3] == b' ' || line[3] == b'-');
    if !valid {
        return Err(temp("LMTP server sent an invalid line"));
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// The message with CRLF line ends and leading dots doubled.
fn stream_message(writer: &mut impl Write, input: impl BufRead) -> io::Result<()> {
    for_each_line(input, |line, _| {
        let text = c_string(line);
        if text.first() == Some(&b'.') {
            writer.write_all(b".")?;
        }
        writer.write_all(text)?;
        writer.write_all(b"\r\n")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A scripted LMTP server for one connection: replies in order, and
    /// returns everything the client sent.
    fn server(replies: &'static [&'static str]) -> (String, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut seen = String::new();
            let mut in_data = false;
            for reply in replies {
                writer.write_all(reply.as_bytes()).unwrap();
                if reply.starts_with("221") {
                    break;
                }
                // Read one command, or the whole message after 354.
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 {
                        return seen;
                    }
                    seen.push_str(&line);
                    if reply.starts_with("354") {
                        in_data = true;
                    }
                    if !in_data || line == ".\r\n" {
                        in_data = false;
                        break;
                    }
                }
            }
            seen
        });
        (addr, handle)
    }

    fn session(destination: &str) -> LmtpSession {
        LmtpSession {
            destination: destination.into(),
            lhlo: "localhost".into(),
            mail_from: "a@b.test".into(),
            rcpt_to: "foo".into(),
            timeout: Duration::from_secs(10),
        }
    }

    const OK: &[&str] = &[
        "220 lmtp ready\r\n",
        "250-lmtp\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n",
        "250 2.1.0 ok\r\n",
        "250 2.1.5 ok\r\n",
        "354 go ahead\r\n",
        "250 2.0.0 <foo> delivered\r\n",
        "221 bye\r\n",
    ];

    #[test]
    fn delivers_with_dot_stuffing() {
        let (addr, handle) = server(OK);
        deliver(
            &session(&addr),
            "Delivered-To: foo@x\n\n.hidden\n..two\nend".as_bytes(),
        )
        .unwrap();
        assert_eq!(
            handle.join().unwrap(),
            "LHLO localhost\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<foo>\r\nDATA\r\n\
             Delivered-To: foo@x\r\n\r\n..hidden\r\n...two\r\nend\r\n.\r\nQUIT\r\n"
        );
    }

    #[test]
    fn reply_classes() {
        const TEMP: &[&str] = &[
            "220 x\r\n",
            "250 x\r\n",
            "250 x\r\n",
            "451 4.3.0 try later\r\n",
        ];
        let (addr, _h) = server(TEMP);
        let e = deliver(&session(&addr), "x\n".as_bytes()).unwrap_err();
        assert_eq!(
            e,
            Failure::new(75, "mail.lmtp: LMTP server error: 451 4.3.0 try later")
        );

        const PERM: &[&str] = &[
            "220 x\r\n",
            "250 x\r\n",
            "250 x\r\n",
            "550 5.1.1 <foo>: no such user\r\n",
        ];
        let (addr, _h) = server(PERM);
        let e = deliver(&session(&addr), "x\n".as_bytes()).unwrap_err();
        assert_eq!(
            e,
            Failure::new(
                69,
                "mail.lmtp: LMTP server error: 550 5.1.1 <foo>: no such user"
            )
        );

        const BAD: &[&str] = &["220 x\r\n", "250\r\n"];
        let (addr, _h) = server(BAD);
        let e = deliver(&session(&addr), "x\n".as_bytes()).unwrap_err();
        assert_eq!(
            e,
            Failure::new(75, "mail.lmtp: LMTP server sent an invalid line")
        );

        const EOF: &[&str] = &["220 x\r\n"];
        let (addr, _h) = server(EOF);
        let e = deliver(&session(&addr), "x\n".as_bytes()).unwrap_err();
        assert_eq!(
            e,
            Failure::new(75, "mail.lmtp: unexpected EOF from LMTP server")
        );
    }

    #[test]
    fn connection_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        assert_eq!(
            deliver(&session(&addr), "x\n".as_bytes()).unwrap_err(),
            Failure::new(75, "mail.lmtp: connect")
        );
        let e = deliver(&session("/nonexistent/lmtp.sock"), "x\n".as_bytes()).unwrap_err();
        assert_eq!(
            e,
            Failure::new(75, "mail.lmtp: connect: No such file or directory")
        );
        let lookup =
            io::Error::other("failed to lookup address information: Name or service not known");
        assert_eq!(gai_text(&lookup), "Name or service not known");
        let e = deliver(&session("[127.0.0.1"), "x\n".as_bytes()).unwrap_err();
        assert_eq!(e.message, "mail.lmtp: inet: invalid address syntax");
    }

    #[test]
    fn destinations() {
        assert_eq!(split_inet("127.0.0.1:24").unwrap(), ("127.0.0.1", "24"));
        assert_eq!(split_inet("localhost").unwrap(), ("localhost", "25"));
        assert_eq!(split_inet("[::1]:24").unwrap(), ("::1", "24"));
        assert_eq!(split_inet("[IPv6:::1]:24").unwrap(), ("::1", "24"));
        assert_eq!(split_inet("[127.0.0.1]").unwrap(), ("127.0.0.1", "25"));
        assert!(split_inet("[::1]x").is_err());
    }
}
