//! Golden transcripts for the session: client lines in, exact server bytes out, with a small
//! scripted driver standing in for filters, routing, the queue and TLS. Where a transcript
//! exists in the baseline (OpenSMTPD 6.8 observed), the expected text is copied from it.

use std::collections::VecDeque;

use proptest::prelude::*;

use super::action::*;
use super::address::Mailaddr;
use super::ids::{EnvelopeId, MsgId, SessionId};
use super::params::*;
use super::reply::Reply;
use super::session::{AnswerError, Session, fuzz_session};

const DATE: &str = "Sun, 22 Nov 2026 07:30:56 +0000 (UTC)";

type FilterFn = Box<dyn FnMut(FilterPhase, &str, &str) -> FilterVerdict>;

/// A scripted driver: records everything, answers questions from its policy.
struct Driver {
    session: Session,
    out: Vec<u8>,
    events: Vec<Event>,
    questions: Vec<Question>,
    message: Vec<u8>,
    committed: Vec<Vec<u8>>,
    rollbacks: Vec<MsgId>,
    closed: bool,
    tls_requests: usize,
    /// Domains whose recipients are accepted (case-insensitive).
    local_domains: Vec<&'static str>,
    filter: Option<FilterFn>,
    sender: VecDeque<SenderVerdict>,
    open: VecDeque<OpenVerdict>,
    commit: VecDeque<CommitVerdict>,
    rcpt: VecDeque<RecipientVerdict>,
    password: &'static [u8],
    auth_tempfail: bool,
    /// Leave questions unanswered (the test answers by hand).
    hold: bool,
    next_msgid: u32,
    next_evp: u32,
    /// What went to the data-line filters (`Action::FilterData`), as sent.
    filter_lines: Vec<u8>,
    /// The data-line filters' answer, made of what they were sent (final `.` left out).
    data_filter: Option<DataFilterFn>,
}

type DataFilterFn = Box<dyn FnMut(&[u8]) -> Result<Vec<u8>, Reply>>;

/// LF line ends to CRLF (what a data-line filter's answer is made of).
fn crlf(lines: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.len() + lines.len() / 16);
    for &b in lines {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn client() -> ClientInfo {
    ClientInfo {
        address: ClientAddress::Ip("127.0.0.1".parse().unwrap()),
        rdns: "localhost".into(),
        fcrdns: Fcrdns::Pass,
    }
}

fn params() -> SessionParams {
    SessionParams::new(SessionId(0xfc386ee2408eb7c3), "vm", client())
}

fn tls_info() -> TlsInfo {
    TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS_AES_256_GCM_SHA384".into(),
        bits: 256,
        client_cert: ClientCert::None,
    }
}

impl Driver {
    fn new(params: SessionParams) -> Driver {
        Driver::build(params, None)
    }

    fn with_filter(params: SessionParams, filter: FilterFn) -> Driver {
        let mut p = params;
        p.filtered = true;
        Driver::build(p, Some(filter))
    }

    fn build(params: SessionParams, filter: Option<FilterFn>) -> Driver {
        let mut d = Driver {
            session: Session::new(params),
            out: Vec::new(),
            events: Vec::new(),
            questions: Vec::new(),
            message: Vec::new(),
            committed: Vec::new(),
            rollbacks: Vec::new(),
            closed: false,
            tls_requests: 0,
            local_domains: vec!["bsdsx.fr", "sub.bsdsx.fr"],
            filter,
            sender: VecDeque::new(),
            open: VecDeque::new(),
            commit: VecDeque::new(),
            rcpt: VecDeque::new(),
            password: b"secret",
            auth_tempfail: false,
            hold: false,
            next_msgid: 0xf952a52e,
            next_evp: 0x5711b017,
            filter_lines: Vec::new(),
            data_filter: None,
        };
        d.pump();
        d
    }

    fn answer_for(&mut self, q: &Question) -> Answer {
        match q {
            Question::Filter {
                phase,
                param,
                query,
            } => Answer::Filter(match self.filter.as_mut() {
                Some(f) => f(*phase, param, query),
                None => FilterVerdict::Proceed,
            }),
            Question::Sender { .. } => {
                Answer::Sender(self.sender.pop_front().unwrap_or_else(|| {
                    let msgid = MsgId(self.next_msgid);
                    self.next_msgid = self.next_msgid.wrapping_add(1);
                    SenderVerdict::Accept { msgid }
                }))
            }
            Question::Recipient { rcpt, envelope, .. } => {
                Answer::Recipient(self.rcpt.pop_front().unwrap_or_else(|| {
                    if self.local_domains.iter().any(|d| rcpt.domain_is(d))
                        && !rcpt.user.eq_ignore_ascii_case("nobody")
                    {
                        let evpid = EnvelopeId(
                            (u64::from(envelope.msgid.0) << 32) | u64::from(self.next_evp),
                        );
                        self.next_evp = self.next_evp.wrapping_add(1);
                        RecipientVerdict::Accept { evpid }
                    } else {
                        RecipientVerdict::Refuse(Reply::invalid_recipient(rcpt))
                    }
                }))
            }
            Question::OpenMessage(_) => {
                Answer::OpenMessage(self.open.pop_front().unwrap_or_else(|| {
                    OpenVerdict::Ready(MessageStamp {
                        date: DATE.into(),
                        message_id: 0xfc386eed5ef97003,
                    })
                }))
            }
            Question::CommitMessage { .. } => {
                Answer::CommitMessage(self.commit.pop_front().unwrap_or(CommitVerdict::Committed))
            }
            Question::FilteredData => {
                let sent = self
                    .filter_lines
                    .strip_suffix(b".\n")
                    .unwrap_or(&[])
                    .to_vec();
                Answer::FilteredData(match self.data_filter.as_mut() {
                    Some(f) => f(&sent),
                    None => Ok(crlf(&sent)),
                })
            }
            Question::Credentials(c) => Answer::Credentials(if self.auth_tempfail {
                AuthVerdict::TempFail
            } else if c.user == b"joe" && c.password == self.password {
                AuthVerdict::Accepted
            } else {
                AuthVerdict::Rejected
            }),
        }
    }

    fn pump(&mut self) {
        for _ in 0..10_000 {
            let Some(action) = self.session.next_action() else {
                return;
            };
            match action {
                Action::Send(b) => self.out.extend_from_slice(&b),
                Action::Ask(q) => {
                    let q = *q;
                    if let Question::CommitMessage { .. } = &q {
                        self.committed.push(std::mem::take(&mut self.message));
                    }
                    self.questions.push(q.clone());
                    if self.hold {
                        continue;
                    }
                    let a = self.answer_for(&q);
                    self.session.answer(a).expect("answer matches");
                }
                Action::StartTls => {
                    self.tls_requests += 1;
                    if !self.hold {
                        self.session.tls_established(tls_info());
                    }
                }
                Action::MessageData(b) => self.message.extend_from_slice(&b),
                Action::FilterData(b) => self.filter_lines.extend_from_slice(&b),
                Action::Rollback(id) => {
                    self.rollbacks.push(id);
                    self.message.clear();
                }
                Action::Event(e) => self.events.push(e),
                Action::Close => self.closed = true,
            }
        }
        panic!("driver loop did not settle");
    }

    /// Sends raw bytes; returns what the server wrote in response.
    fn raw(&mut self, bytes: &[u8]) -> String {
        let before = self.out.len();
        self.session.input(bytes);
        self.pump();
        String::from_utf8_lossy(&self.out[before..]).into_owned()
    }

    /// Sends one line (CRLF added); returns the server's response.
    fn say(&mut self, line: &str) -> String {
        self.raw(format!("{line}\r\n").as_bytes())
    }

    fn answer(&mut self, a: Answer) -> String {
        let before = self.out.len();
        self.session.answer(a).expect("answer matches");
        self.pump();
        String::from_utf8_lossy(&self.out[before..]).into_owned()
    }

    fn all_output(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }

    fn failed_commands(&self) -> Vec<(String, String)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::FailedCommand { command, result } => Some((
                    String::from_utf8_lossy(command).into_owned(),
                    result.clone(),
                )),
                _ => None,
            })
            .collect()
    }

    fn count_questions(&self, pred: impl Fn(&Question) -> bool) -> usize {
        self.questions.iter().filter(|q| pred(q)).count()
    }
}

fn ehlo_reply(helo: &str, extra: &[&str]) -> String {
    let mut s = format!(
        "250-vm Hello {helo} [127.0.0.1], pleased to meet you\r\n250-8BITMIME\r\n\
         250-ENHANCEDSTATUSCODES\r\n250-SIZE 36700160\r\n250-DSN\r\n"
    );
    for e in extra {
        s.push_str(&format!("250-{e}\r\n"));
    }
    s.push_str("250-PIPELINING\r\n250 HELP\r\n");
    s
}

fn committed_text(d: &Driver, i: usize) -> String {
    String::from_utf8_lossy(&d.committed[i]).into_owned()
}

// ---- baseline transcripts ------------------------------------------------------------------

/// Baseline §1.2: `MAIL FROM:<>`, every recipient, DATA; replies verbatim, plus the one line
/// this server adds (PIPELINING); and §1.3's log facts.
#[test]
fn baseline_session_1() {
    let mut d = Driver::new(params());
    assert_eq!(d.all_output(), "220 vm ESMTP OpenSMTPD\r\n");
    assert_eq!(
        d.say("EHLO client.example"),
        ehlo_reply("client.example", &[])
    );
    assert_eq!(d.say("MAIL FROM:<>"), "250 2.0.0 Ok\r\n");
    let ok = "250 2.1.5 Destination address valid: Recipient ok\r\n";
    for r in ["abuse", "postmaster", "root", "foo", "bar"] {
        assert_eq!(d.say(&format!("RCPT TO:<{r}@bsdsx.fr>")), ok);
    }
    assert_eq!(
        d.say("RCPT TO:<nobody@bsdsx.fr>"),
        "550 Invalid recipient: <nobody@bsdsx.fr>\r\n"
    );
    assert_eq!(d.say("RCPT TO:<foo@sub.bsdsx.fr>"), ok);
    assert_eq!(
        d.say("RCPT TO:<foo@other.example>"),
        "550 Invalid recipient: <foo@other.example>\r\n"
    );
    assert_eq!(
        d.say("DATA"),
        "354 Enter mail, end with \".\" on a line by itself\r\n"
    );
    let body = "From: <sender@client.example>\r\nTo: <foo@bsdsx.fr>\r\n\
                Subject: baseline dialogue test\r\n\
                Message-ID: <dialogue-1795332656@client.example>\r\n\r\n\
                Hello, this is a test body.\r\n\
                ...a line starting with a dot (dot-stuffed on the wire)\r\n";
    assert_eq!(d.raw(body.as_bytes()), "");
    assert_eq!(
        d.say("."),
        "250 2.0.0 f952a52e Message accepted for delivery\r\n"
    );
    assert_eq!(d.say("QUIT"), "221 2.0.0 Bye\r\n");
    assert!(d.closed);

    // The stored message: smtpd's Received first, LF endings, un-stuffed body. (The Date:
    // header of the baseline comes from the loopback listener; see the local test.)
    assert_eq!(
        committed_text(&d, 0),
        "Received: from client.example (localhost [127.0.0.1])\n\
         \tby vm (OpenSMTPD) with ESMTP id f952a52e;\n\
         \tSun, 22 Nov 2026 07:30:56 +0000 (UTC)\n\
         From: <sender@client.example>\nTo: <foo@bsdsx.fr>\n\
         Subject: baseline dialogue test\n\
         Message-ID: <dialogue-1795332656@client.example>\n\n\
         Hello, this is a test body.\n\
         ..a line starting with a dot (dot-stuffed on the wire)\n"
    );

    // Log facts (§1.3).
    assert_eq!(
        d.failed_commands(),
        vec![
            (
                "RCPT TO:<nobody@bsdsx.fr>".to_string(),
                "550 Invalid recipient: <nobody@bsdsx.fr>".to_string()
            ),
            (
                "RCPT TO:<foo@other.example>".to_string(),
                "550 Invalid recipient: <foo@other.example>".to_string()
            ),
        ]
    );
    let accepted = d
        .events
        .iter()
        .find_map(|e| match e {
            Event::MessageAccepted {
                msgid,
                size,
                esmtp,
                sender,
                recipients,
            } => Some((*msgid, *size, *esmtp, sender.clone(), recipients.clone())),
            _ => None,
        })
        .expect("message event");
    assert_eq!(accepted.0, MsgId(0xf952a52e));
    assert_eq!(
        accepted.1,
        d.committed[0].len(),
        "size = bytes written to the queue"
    );
    assert!(accepted.2);
    assert_eq!(accepted.3, None);
    let rcpts: Vec<String> = accepted.4.iter().map(|(_, a)| a.to_string()).collect();
    assert_eq!(
        rcpts,
        [
            "abuse@bsdsx.fr",
            "postmaster@bsdsx.fr",
            "root@bsdsx.fr",
            "foo@bsdsx.fr",
            "bar@bsdsx.fr",
            "foo@sub.bsdsx.fr"
        ]
    );
    assert_eq!(accepted.4[0].0.to_string(), "f952a52e5711b017");
    assert!(d.rollbacks.is_empty());
}

/// Baseline §1.5: bare local parts are qualified with the server name before routing; case
/// is kept; a space after `RCPT TO:` is fine.
#[test]
fn baseline_session_2_qualification() {
    let mut d = Driver::new(params());
    d.say("EHLO client.example");
    assert_eq!(d.say("MAIL FROM:<>"), "250 2.0.0 Ok\r\n");
    for (cmd, reply) in [
        ("RCPT TO:<abuse>", "550 Invalid recipient: <abuse@vm>"),
        (
            "RCPT TO:<postmaster>",
            "550 Invalid recipient: <postmaster@vm>",
        ),
        (
            "RCPT TO:<Postmaster>",
            "550 Invalid recipient: <Postmaster@vm>",
        ),
        ("RCPT TO:<foo>", "550 Invalid recipient: <foo@vm>"),
        (
            "RCPT TO:<FOO@BSDSX.FR>",
            "250 2.1.5 Destination address valid: Recipient ok",
        ),
        (
            "RCPT TO:<foo+tag@bsdsx.fr>",
            "250 2.1.5 Destination address valid: Recipient ok",
        ),
        ("RCPT TO:<bsdsx.fr>", "550 Invalid recipient: <bsdsx.fr@vm>"),
        (
            "RCPT TO: <bar@bsdsx.fr>",
            "250 2.1.5 Destination address valid: Recipient ok",
        ),
    ] {
        assert_eq!(d.say(cmd), format!("{reply}\r\n"), "{cmd}");
    }
    let routed: Vec<String> = d
        .questions
        .iter()
        .filter_map(|q| match q {
            Question::Recipient { rcpt, .. } => Some(rcpt.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(routed[0], "abuse@vm");
    assert_eq!(routed[4], "FOO@BSDSX.FR");
    assert_eq!(d.say("QUIT"), "221 2.0.0 Bye\r\n");
    assert_eq!(
        d.rollbacks,
        vec![MsgId(0xf952a52e)],
        "the open transaction is discarded"
    );
}

/// Baseline §1.6: HELO, two messages in one session without RSET, `with SMTP`,
/// `for <rcpt>` with one recipient, Date and Message-ID added on a loopback listener.
#[test]
fn baseline_session_3_helo_two_messages_local_listener() {
    let mut p = params();
    p.local_listener = true;
    let mut d = Driver::new(p);
    assert_eq!(
        d.say("HELO client.example"),
        "250 vm Hello client.example [127.0.0.1], pleased to meet you\r\n"
    );
    let msg = "From: a@client.example\r\nTo: foo@bsdsx.fr\r\nSubject: spam test\r\nX-Spam: yes\r\n\r\nbody\r\n.\r\n";
    for (rcpt, msgid) in [("foo", "f952a52e"), ("bar", "f952a52f")] {
        assert_eq!(
            d.say("MAIL FROM:<alice@client.example>"),
            "250 2.0.0 Ok\r\n"
        );
        assert_eq!(
            d.say(&format!("RCPT TO:<{rcpt}@bsdsx.fr>")),
            "250 2.1.5 Destination address valid: Recipient ok\r\n"
        );
        assert_eq!(
            d.say("DATA"),
            "354 Enter mail, end with \".\" on a line by itself\r\n"
        );
        assert_eq!(
            d.raw(msg.as_bytes()),
            format!("250 2.0.0 {msgid} Message accepted for delivery\r\n")
        );
    }
    assert_eq!(d.say("QUIT"), "221 2.0.0 Bye\r\n");
    assert_eq!(
        committed_text(&d, 0),
        "Received: from client.example (localhost [127.0.0.1])\n\
         \tby vm (OpenSMTPD) with SMTP id f952a52e\n\
         \tfor <foo@bsdsx.fr>;\n\
         \tSun, 22 Nov 2026 07:30:56 +0000 (UTC)\n\
         From: a@client.example\nTo: foo@bsdsx.fr\nSubject: spam test\nX-Spam: yes\n\
         Date: Sun, 22 Nov 2026 07:30:56 +0000 (UTC)\n\
         Message-ID: <fc386eed5ef97003@vm>\n\nbody\n"
    );
    assert!(committed_text(&d, 1).contains("\tfor <bar@bsdsx.fr>;\n"));
}

/// Baseline §1.7: a filter `disconnect "550 invalid mail from"` answers exactly that and
/// closes; a junked connection gets `X-Spam: Yes` before Received; filter queries carry the
/// address without brackets.
#[test]
fn baseline_filters_junk_and_disconnect() {
    let filter: FilterFn = Box::new(|phase, _param, query| match phase {
        FilterPhase::Connect => FilterVerdict::Junk,
        FilterPhase::MailFrom if query.to_ascii_lowercase().ends_with("@bsdsx.fr") => {
            FilterVerdict::Disconnect("550 invalid mail from".into())
        }
        _ => FilterVerdict::Proceed,
    });
    let mut d = Driver::with_filter(params(), filter);
    assert_eq!(d.all_output(), "220 vm ESMTP OpenSMTPD\r\n");
    d.say("EHLO client.example");
    assert_eq!(
        d.say("MAIL FROM:<alice@client.example>"),
        "250 2.0.0 Ok\r\n"
    );
    d.say("RCPT TO:<foo@bsdsx.fr>");
    d.say("DATA");
    assert_eq!(
        d.raw(b"Subject: s\r\n\r\nb\r\n.\r\n"),
        "250 2.0.0 f952a52e Message accepted for delivery\r\n"
    );
    assert!(committed_text(&d, 0).starts_with("X-Spam: Yes\nReceived: from client.example"));
    assert_eq!(
        d.say("MAIL FROM:<BOB@BSDSX.FR>"),
        "550 invalid mail from\r\n"
    );
    assert!(d.closed);
    assert_eq!(
        d.say("RCPT TO:<bar@bsdsx.fr>"),
        "",
        "nothing after the close"
    );
    assert_eq!(
        d.failed_commands(),
        vec![(
            "MAIL FROM:<BOB@BSDSX.FR>".to_string(),
            "550 invalid mail from".to_string()
        )]
    );
    let queries: Vec<(FilterPhase, String)> = d
        .questions
        .iter()
        .filter_map(|q| match q {
            Question::Filter { phase, query, .. } => Some((*phase, query.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        queries,
        vec![
            (FilterPhase::Connect, "127.0.0.1".to_string()),
            (FilterPhase::Ehlo, "client.example".into()),
            (FilterPhase::MailFrom, "alice@client.example".into()),
            (FilterPhase::RcptTo, "foo@bsdsx.fr".into()),
            (FilterPhase::Data, String::new()),
            (FilterPhase::Commit, String::new()),
            (FilterPhase::MailFrom, "BOB@BSDSX.FR".into()),
        ]
    );
}

// ---- command order and arguments (§8.4) ----------------------------------------------------

#[test]
fn out_of_sequence_commands() {
    let cna = "503 5.5.1 Invalid command: Command not allowed at this point.\r\n";
    let mut d = Driver::new(params());
    assert_eq!(d.say("MAIL FROM:<a@b.test>"), cna);
    assert_eq!(d.say("RCPT TO:<a@bsdsx.fr>"), cna);
    assert_eq!(d.say("DATA"), cna);
    assert_eq!(d.say("RSET"), cna);
    assert_eq!(d.say("STARTTLS"), cna);
    assert_eq!(d.say("AUTH PLAIN"), cna);
    assert_eq!(d.say("NOOP"), "250 2.0.0 Ok\r\n");
    assert_eq!(
        d.say("EHLO "),
        "501 5.5.4 Invalid command arguments: Invalid domain name\r\n"
    );
    assert_eq!(
        d.say("EHLO"),
        "501 5.5.1 Invalid command: EHLO requires domain name\r\n"
    );
    assert_eq!(
        d.say("HELO"),
        "501 5.5.1 Invalid command: HELO requires domain name\r\n"
    );
    assert_eq!(
        d.say("HELO a b"),
        "501 5.5.4 Invalid command arguments: Invalid domain name\r\n"
    );
    assert_eq!(
        d.say("HELO [127.0.0.1]"),
        "250 vm Hello [127.0.0.1] [127.0.0.1], pleased to meet you\r\n"
    );
    assert_eq!(
        d.say("EHLO again.test"),
        "503 5.5.1 Invalid command: Already identified\r\n"
    );
    assert_eq!(d.say("RSET"), "250 2.0.0 Reset state\r\n");
    assert_eq!(
        d.say("HELO again.test"),
        "503 5.5.1 Invalid command: Already identified\r\n",
        "RSET does not forget the greeting"
    );
    assert_eq!(d.say("RCPT TO:<a@bsdsx.fr>"), cna);
    assert_eq!(d.say("DATA"), cna);
    assert_eq!(d.say("MAIL FROM:<a@b.test>"), "250 2.0.0 Ok\r\n");
    assert_eq!(d.say("MAIL FROM:<a@b.test>"), cna);
    assert_eq!(
        d.say("DATA"),
        "503 5.5.4 Invalid command arguments: No recipient specified\r\n"
    );
    assert_eq!(d.say("STARTTLS"), cna);
    assert_eq!(d.say("AUTH LOGIN"), cna);
    assert_eq!(d.say("RSET"), "250 2.0.0 Reset state\r\n");
    assert_eq!(d.rollbacks, vec![MsgId(0xf952a52e)]);
    assert_eq!(
        d.say("RCPT TO:<a@bsdsx.fr>"),
        cna,
        "RSET ended the transaction"
    );
}

#[test]
fn argument_rules() {
    let noarg = "500 5.5.4 Invalid command arguments: command does not accept arguments.\r\n";
    let mut d = Driver::new(params());
    for cmd in [
        "NOOP x", "NOOP ", "HELP me", "WIZ x", "DATA x", "RSET x", "QUIT now",
    ] {
        assert_eq!(d.say(cmd), noarg, "{cmd}");
    }
    assert!(!d.closed);
    assert_eq!(
        d.say("help"),
        "214-2.0.0 This is OpenSMTPD\r\n\
         214-2.0.0 To report bugs in the implementation, please contact bugs@openbsd.org\r\n\
         214-2.0.0 with full details\r\n214 2.0.0 End of HELP info\r\n"
    );
    assert_eq!(
        d.say("wiz"),
        "500 5.5.1 Invalid command: this feature is not supported yet ;-)\r\n"
    );
    let unknown = "500 5.5.1 Invalid command: Command unrecognized\r\n";
    for cmd in [
        "VRFY root",
        "EXPN staff",
        "ETRN x",
        "TURN",
        "BDAT 10 LAST",
        "MAIL  FROM:<a@b>",
        "MAIL FROM <a@b>",
        "MAIL",
        "",
    ] {
        assert_eq!(d.say(cmd), unknown, "{cmd:?}");
    }
    d.say("EHLO c.test");
    assert_eq!(
        d.say("mail from: <a@b.test>"),
        "250 2.0.0 Ok\r\n",
        "space after the colon"
    );
}

#[test]
fn mail_from_checks_and_parameters() {
    let mut d = Driver::new(params());
    d.say("EHLO c.test");
    let syntax = "553 5.1.0 Sender address syntax error\r\n";
    for bad in [
        "<a@b@c>",
        "<\"quoted local\"@b.test>",
        "bad",
        "<a@b.test",
        "<a@b.test.>",
        "",
    ] {
        assert_eq!(d.say(&format!("MAIL FROM:{bad}")), syntax, "{bad}");
    }
    assert_eq!(
        d.say("MAIL FROM:<a@b.test> FOO=BAR"),
        "503 5.5.4 Invalid command arguments: Unsupported option FOO=BAR\r\n"
    );
    assert_eq!(
        d.say("MAIL FROM:<a@b.test> SMTPUTF8"),
        "503 5.5.4 Invalid command arguments: Unsupported option SMTPUTF8\r\n"
    );
    let envid = "x".repeat(101);
    assert_eq!(
        d.say(&format!("MAIL FROM:<a@b.test> ENVID={envid}")),
        format!("503 5.5.4 Invalid command arguments: option too large, truncated: {envid}\r\n")
    );
    assert_eq!(
        d.count_questions(|q| matches!(q, Question::Sender { .. })),
        0
    );
    assert_eq!(
        d.say("MAIL FROM:<@route,@r2:a@b.test> SIZE=999999999 BODY=8BITMIME RET=HDRS ENVID=e1"),
        "250 2.0.0 Ok\r\n"
    );
    match d.questions.last() {
        Some(Question::Sender { sender, params }) => {
            assert_eq!(
                sender.as_ref().map(Mailaddr::to_string).as_deref(),
                Some("a@b.test")
            );
            assert_eq!(params.envid.as_deref(), Some("e1"));
        }
        other => panic!("{other:?}"),
    }
}

/// §11.3, CVE-2020-7247: the sender's local part is validated even without a domain.
#[test]
fn cve_2020_7247_mail_from_is_refused() {
    let mut d = Driver::new(params());
    d.say("HELO c.test");
    assert_eq!(
        d.say("MAIL FROM:<;sleep 66;>"),
        "553 5.1.0 Sender address syntax error\r\n"
    );
    assert_eq!(
        d.say("MAIL FROM:<;for i in 0 1 2 3 4 5 6 7 8 9 a b c d;do read r;done;sh;exit 0;>"),
        "553 5.1.0 Sender address syntax error\r\n"
    );
    assert_eq!(
        d.count_questions(|q| matches!(q, Question::Sender { .. })),
        0
    );
    assert_eq!(
        d.say("MAIL FROM:<bad>"),
        "250 2.0.0 Ok\r\n",
        "a valid bare local part is qualified (§4.4)"
    );
    assert!(
        matches!(d.questions.last(), Some(Question::Sender { sender: Some(s), .. }) if s.to_string() == "bad@vm")
    );
}

#[test]
fn rcpt_to_checks_and_parameters() {
    let mut d = Driver::new(params());
    d.say("EHLO c.test");
    d.say("MAIL FROM:<a@b.test>");
    let syntax = "501 5.1.3 Recipient address syntax error\r\n";
    assert_eq!(d.say("RCPT TO:<>"), syntax);
    assert_eq!(d.say("RCPT TO:<a@b@c>"), syntax);
    assert_eq!(d.say("RCPT TO:x@bsdsx.fr"), syntax);
    assert_eq!(
        d.say("RCPT TO:<x@bsdsx.fr> NOTIFY=NEVER,SUCCESS"),
        "553 NOTIFY option NEVER cannot be combined with other options\r\n"
    );
    assert_eq!(
        d.say("RCPT TO:<x@bsdsx.fr> ORCPT=rfc822;\"q\"@x"),
        "553 ORCPT address syntax error\r\n"
    );
    assert_eq!(
        d.say("RCPT TO:<x@bsdsx.fr> XYZ=1"),
        "503 Unsupported option XYZ=1\r\n"
    );
    assert_eq!(
        d.say("RCPT TO:<x@bsdsx.fr> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@bsdsx.fr"),
        "250 2.1.5 Destination address valid: Recipient ok\r\n"
    );
    // The transaction stayed open through every error.
    assert_eq!(
        d.say("DATA"),
        "354 Enter mail, end with \".\" on a line by itself\r\n"
    );

    // Without DSN, any RCPT parameter is unsupported.
    let mut p = params();
    p.dsn = false;
    let mut d = Driver::new(p);
    let ehlo = d.say("EHLO c.test");
    assert!(!ehlo.contains("DSN"));
    d.say("MAIL FROM:<a@b.test>");
    assert_eq!(
        d.say("RCPT TO:<x@bsdsx.fr> NOTIFY=NEVER"),
        "503 Unsupported option NOTIFY=NEVER\r\n"
    );
    assert_eq!(d.say("RSET"), "250 2.0.0 Reset state\r\n");
    assert_eq!(
        d.say("MAIL FROM:<a@b.test> RET=FULL"),
        "503 5.5.4 Invalid command arguments: Unsupported option RET=FULL\r\n"
    );
}

/// Expansion outcomes of §6.2 come from the driver and are sent verbatim.
#[test]
fn recipient_refusals_from_routing() {
    let mut d = Driver::new(params());
    d.say("EHLO c.test");
    d.say("MAIL FROM:<a@b.test>");
    let r = Mailaddr::new("x", "bsdsx.fr");
    for (verdict, text) in [
        (
            Reply::recipient_tempfail(&r),
            "451 Temporary failure: <x@bsdsx.fr>",
        ),
        (
            Reply::expansion_tempfail(&r),
            "424 4.2.4 Mailing list expansion problem: <x@bsdsx.fr>",
        ),
        (
            Reply::expansion_permfail(&r),
            "524 5.2.4 Mailing list expansion problem: <x@bsdsx.fr>",
        ),
        (
            Reply::recipient_failure("550 go away", &r),
            "550 go away: <x@bsdsx.fr>",
        ),
    ] {
        d.rcpt.push_back(RecipientVerdict::Refuse(verdict));
        assert_eq!(d.say("RCPT TO:<x@bsdsx.fr>"), format!("{text}\r\n"));
    }
    d.rcpt
        .push_back(RecipientVerdict::Disconnect(Reply::temporary_failure()));
    assert_eq!(
        d.say("RCPT TO:<x@bsdsx.fr>"),
        "421 4.3.0 Temporary failure\r\n"
    );
    assert!(d.closed);
    assert_eq!(d.rollbacks, vec![MsgId(0xf952a52e)]);
}

#[test]
fn sender_refusals_from_policy_and_queue() {
    let mut d = Driver::new(params());
    d.say("EHLO c.test");
    d.sender
        .push_back(SenderVerdict::Refuse(Reply::sender_rejected()));
    assert_eq!(d.say("MAIL FROM:<a@b.test>"), "530 Sender rejected\r\n");
    d.sender
        .push_back(SenderVerdict::Refuse(Reply::temporary_error()));
    assert_eq!(
        d.say("MAIL FROM:<a@b.test>"),
        "421 4.3.0 Temporary Error\r\n"
    );
    assert!(!d.closed, "a senders lookup failure does not close (6.8)");
    assert_eq!(
        d.say("MAIL FROM:<a@b.test>"),
        "250 2.0.0 Ok\r\n",
        "no transaction was left open"
    );
    d.say("RSET");
    d.sender
        .push_back(SenderVerdict::Disconnect(Reply::temporary_error()));
    assert_eq!(
        d.say("MAIL FROM:<a@b.test>"),
        "421 4.3.0 Temporary Error\r\n"
    );
    assert!(d.closed);
}

// ---- DATA (§8.5) ---------------------------------------------------------------------------

fn in_data(p: SessionParams) -> Driver {
    let mut d = Driver::new(p);
    d.say("EHLO c.test");
    d.say("MAIL FROM:<a@b.test>");
    d.say("RCPT TO:<foo@bsdsx.fr>");
    assert_eq!(
        d.say("DATA"),
        "354 Enter mail, end with \".\" on a line by itself\r\n"
    );
    d
}

#[test]
fn message_too_big_keeps_the_session() {
    let mut p = params();
    p.limits.max_message_size = 2000;
    let mut d = Driver::new(p);
    assert!(d.say("EHLO c.test").contains("250-SIZE 2000\r\n"));
    d.say("MAIL FROM:<a@b.test> SIZE=999999999");
    d.say("RCPT TO:<foo@bsdsx.fr>");
    d.say("DATA");
    let line = format!("{}\r\n", "x".repeat(99));
    let mut body = String::from("Subject: big\r\n\r\n");
    for _ in 0..30 {
        body.push_str(&line);
    }
    assert_eq!(
        d.raw(format!("{body}.\r\n").as_bytes()),
        "554 5.3.4 Message too big for system: Transaction failed, message too big\r\n"
    );
    assert_eq!(d.rollbacks, vec![MsgId(0xf952a52e)]);
    assert_eq!(
        d.count_questions(|q| matches!(q, Question::CommitMessage { .. })),
        0
    );
    assert_eq!(
        d.failed_commands().last().cloned(),
        Some((
            "DATA".to_string(),
            "554 5.3.4 Message too big for system: Transaction failed, message too big".to_string()
        ))
    );
    assert_eq!(
        d.say("MAIL FROM:<a@b.test>"),
        "250 2.0.0 Ok\r\n",
        "session still usable"
    );
}

#[test]
fn loop_and_non_compliant_messages() {
    let mut d = in_data(params());
    let mut msg = String::new();
    for i in 0..100 {
        msg.push_str(&format!("Received: hop {i}\r\n"));
    }
    msg.push_str("\r\nbody\r\n.\r\n");
    assert_eq!(
        d.raw(msg.as_bytes()),
        "500 5.4.6 Routing loop detected: Loop detected\r\n"
    );
    d.say("MAIL FROM:<a@b.test>");
    d.say("RCPT TO:<foo@bsdsx.fr>");
    d.say("DATA");
    assert_eq!(
        d.raw(b"no header line\r\n\r\nbody\r\n.\r\n"),
        "550 5.7.1 Delivery not authorized, message refused: Message is not RFC 2822 compliant\r\n"
    );
    assert_eq!(d.rollbacks.len(), 2);
    assert!(!d.closed);
}

#[test]
fn header_processing_reaches_the_queue() {
    let mut d = in_data(params());
    d.raw(b"To: bob, carol\r\nCc: dave <dave>\r\nBcc: secret@x.test\r\n  more@x.test\r\nFrom: me\r\nSubject: \xe9t\xe9\r\n\r\n8-bit \xff body\r\nnul\0cut\r\n.\r\n");
    let m = &d.committed[0];
    let text = String::from_utf8_lossy(m);
    assert!(
        text.contains("To: bob@vm, carol@vm\nCc: dave <dave@vm>\nFrom: me@vm\n"),
        "{text}"
    );
    assert!(
        !text.contains("secret") && !text.contains("more@"),
        "Bcc removed"
    );
    assert!(
        m.windows(13).any(|w| w == b"8-bit \xff body\n"),
        "8-bit passes through"
    );
    assert!(text.ends_with("\nnul\n"), "NUL truncates its line");
}

#[test]
fn empty_message_and_dot_stuffing() {
    let mut d = in_data(params());
    assert_eq!(
        d.raw(b".\r\n"),
        "250 2.0.0 f952a52e Message accepted for delivery\r\n"
    );
    assert!(committed_text(&d, 0).ends_with("Sun, 22 Nov 2026 07:30:56 +0000 (UTC)\n"));
}

/// The smuggling battery at session level: whatever follows a fake end-of-data is message
/// text; exactly one message is committed per DATA and no forged command is answered.
#[test]
fn smuggling_never_yields_a_second_transaction() {
    let fakes: &[&[u8]] = &[
        b"\n.\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r.\r",
        b"\r\n.\n",
        b"\r\r\n.\r\r\n",
        b"\r\n.\0\r\n",
    ];
    for fake in fakes {
        let mut d = in_data(params());
        let mut input = b"Subject: s\r\n\r\nfirst".to_vec();
        input.extend_from_slice(fake);
        input.extend_from_slice(
            b"MAIL FROM:<admin@victim.test>\r\nRCPT TO:<foo@bsdsx.fr>\r\nDATA\r\nSubject: forged\r\n\r\nforged\r\n",
        );
        input.extend_from_slice(b"\r\n.\r\n");
        let out = d.raw(&input);
        assert_eq!(
            out, "250 2.0.0 f952a52e Message accepted for delivery\r\n",
            "{fake:?}: one reply, for the real end only"
        );
        assert_eq!(
            d.count_questions(|q| matches!(q, Question::Sender { .. })),
            1,
            "{fake:?}"
        );
        assert_eq!(
            d.count_questions(|q| matches!(q, Question::CommitMessage { .. })),
            1,
            "{fake:?}"
        );
        let stored = committed_text(&d, 0);
        assert!(
            stored.contains("MAIL FROM:<admin@victim.test>\n"),
            "{fake:?}: {stored}"
        );
        assert!(stored.contains("\nforged\n"));
        assert_eq!(d.say("QUIT"), "221 2.0.0 Bye\r\n");
    }
}

/// Bare LF is still a line end inside DATA (as OpenSMTPD), in headers and body alike.
#[test]
fn bare_lf_in_headers_and_body() {
    let mut d = in_data(params());
    assert_eq!(
        d.raw(b"Subject: lf\nTo: x@bsdsx.fr\n\nbody\nline\r\n.\r\n"),
        "250 2.0.0 f952a52e Message accepted for delivery\r\n"
    );
    assert!(committed_text(&d, 0).ends_with("Subject: lf\nTo: x@bsdsx.fr\n\nbody\nline\n"));
}

#[test]
fn line_too_long_closes() {
    let mut d = in_data(params());
    let mut line = vec![b'a'; 65535];
    line.extend_from_slice(b"\r\n");
    assert_eq!(d.raw(&line), "500 5.0.0 Line too long\r\n");
    assert!(d.closed);
    assert_eq!(d.rollbacks, vec![MsgId(0xf952a52e)]);
    assert!(d.events.contains(&Event::BadInput {
        result: "500 5.0.0 Line too long".into()
    }));

    // The same in command mode, also without any newline.
    let mut d = Driver::new(params());
    assert_eq!(d.raw(&vec![b'a'; 65535]), "500 5.0.0 Line too long\r\n");
    assert!(d.closed);
}

#[test]
fn command_line_limit() {
    let mut d = Driver::new(params());
    assert_eq!(
        d.say(&format!("NOOP{}", "x".repeat(2043))),
        "500 5.5.1 Invalid command: Command unrecognized\r\n"
    );
    assert_eq!(
        d.say(&format!("NOOP {}", "x".repeat(3000))),
        "500 5.0.0 Command line too long\r\n"
    );
    assert!(d.closed);
    assert!(
        d.failed_commands()
            .iter()
            .all(|(_, r)| !r.contains("too long")),
        "logged as bad input"
    );
}

#[test]
fn commit_failures() {
    let mut d = in_data(params());
    d.commit.push_back(CommitVerdict::Refuse(
        Reply::parse("451 4.3.0 try later").unwrap(),
    ));
    assert_eq!(
        d.raw(b"Subject: x\r\n\r\nb\r\n.\r\n"),
        "451 4.3.0 try later\r\n"
    );
    assert!(d.rollbacks.is_empty(), "the queue discards its own copy");
    assert_eq!(d.say("MAIL FROM:<a@b.test>"), "250 2.0.0 Ok\r\n");
    d.say("RCPT TO:<foo@bsdsx.fr>");
    d.say("DATA");
    d.commit
        .push_back(CommitVerdict::Disconnect(Reply::temporary_failure()));
    assert_eq!(d.raw(b"\r\nb\r\n.\r\n"), "421 4.3.0 Temporary failure\r\n");
    assert!(d.closed);

    let mut d = Driver::new(params());
    d.say("EHLO c.test");
    d.say("MAIL FROM:<a@b.test>");
    d.say("RCPT TO:<foo@bsdsx.fr>");
    d.open
        .push_back(OpenVerdict::Disconnect(Reply::temporary_error()));
    assert_eq!(d.say("DATA"), "421 4.3.0 Temporary Error\r\n");
    assert!(d.closed);
    assert_eq!(d.rollbacks, vec![MsgId(0xf952a52e)]);
}

// ---- limits ----------------------------------------------------------------------------------

#[test]
fn max_mails_per_session() {
    let mut p = params();
    p.limits.max_mails = 2;
    let mut d = Driver::new(p);
    d.say("EHLO c.test");
    for _ in 0..2 {
        d.say("MAIL FROM:<a@b.test>");
        d.say("RCPT TO:<foo@bsdsx.fr>");
        d.say("DATA");
        d.raw(b"\r\nx\r\n.\r\n");
    }
    assert_eq!(
        d.say("MAIL FROM:<a@b.test>"),
        "452 4.5.3 Too many recipients: Too many messages sent\r\n"
    );
    assert_eq!(d.committed.len(), 2);
}

#[test]
fn refused_messages_do_not_count_against_max_mails() {
    let mut p = params();
    p.limits.max_mails = 1;
    let mut d = Driver::new(p);
    d.say("EHLO c.test");
    d.say("MAIL FROM:<a@b.test>");
    d.say("RSET");
    assert_eq!(d.say("MAIL FROM:<a@b.test>"), "250 2.0.0 Ok\r\n");
}

#[test]
fn max_rcpt_per_transaction() {
    let mut p = params();
    p.limits.max_rcpt = 2;
    let mut d = Driver::new(p);
    d.say("EHLO c.test");
    d.say("MAIL FROM:<a@b.test>");
    assert!(
        d.say("RCPT TO:<nobody@elsewhere.test>").starts_with("550"),
        "refusals do not count"
    );
    d.say("RCPT TO:<a@bsdsx.fr>");
    d.say("RCPT TO:<b@bsdsx.fr>");
    assert_eq!(
        d.say("RCPT TO:<c@bsdsx.fr>"),
        "451 4.5.3 Too many recipients: Too many recipients\r\n"
    );
    assert_eq!(d.say("RSET"), "250 2.0.0 Reset state\r\n");
    d.say("MAIL FROM:<a@b.test>");
    assert!(
        d.say("RCPT TO:<c@bsdsx.fr>").starts_with("250"),
        "the count is per transaction"
    );
}

// ---- pipelining ------------------------------------------------------------------------------

/// RFC 2920: a whole transaction in one packet gets all replies in order; `.` and `QUIT` in
/// the same packet as the end of data work (OpenSMTPD 6.8 drops the message there).
#[test]
fn whole_transaction_in_one_chunk() {
    let mut d = Driver::new(params());
    let out = d.raw(
        b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<foo@bsdsx.fr>\r\nRCPT TO:<x@nowhere.test>\r\n\
          DATA\r\nSubject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n",
    );
    assert_eq!(
        out,
        format!(
            "{}250 2.0.0 Ok\r\n250 2.1.5 Destination address valid: Recipient ok\r\n\
             550 Invalid recipient: <x@nowhere.test>\r\n\
             354 Enter mail, end with \".\" on a line by itself\r\n\
             250 2.0.0 f952a52e Message accepted for delivery\r\n221 2.0.0 Bye\r\n",
            ehlo_reply("c.test", &[])
        )
    );
    assert!(d.closed);
    assert_eq!(d.committed.len(), 1);
    assert!(d.rollbacks.is_empty());
    assert!(!out.contains("Pipelining not supported"));
}

/// A slow queue: `.\r\nQUIT\r\n` arrives while the commit is pending; QUIT waits its turn,
/// and the reply order follows the command order.
#[test]
fn quit_waits_for_a_slow_commit() {
    let mut d = in_data(params());
    d.hold = true;
    assert_eq!(d.raw(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n"), "");
    assert!(d.session.is_waiting());
    assert!(!d.closed);
    assert!(matches!(
        d.questions.last(),
        Some(Question::CommitMessage { .. })
    ));
    d.hold = false;
    assert_eq!(
        d.answer(Answer::CommitMessage(CommitVerdict::Committed)),
        "250 2.0.0 f952a52e Message accepted for delivery\r\n221 2.0.0 Bye\r\n"
    );
    assert!(d.closed);
    assert!(d.rollbacks.is_empty());
}

/// Input that arrives while a question is pending is kept, in order, byte for byte, and the
/// driver is told to stop reading once a lot is buffered.
#[test]
fn input_is_buffered_while_waiting() {
    let mut d = Driver::new(params());
    d.say("EHLO c.test");
    d.hold = true;
    assert_eq!(d.say("MAIL FROM:<a@b.test>"), "");
    assert_eq!(d.raw(b"RCPT TO:<foo@bsd"), "");
    assert_eq!(d.raw(b"sx.fr>\r\nNOOP\r\n"), "");
    assert!(d.session.wants_input());
    assert_eq!(
        d.session
            .answer(Answer::Recipient(RecipientVerdict::Accept {
                evpid: EnvelopeId(1)
            })),
        Err(AnswerError::Mismatch)
    );
    d.hold = false;
    assert_eq!(
        d.answer(Answer::Sender(SenderVerdict::Accept { msgid: MsgId(9) })),
        "250 2.0.0 Ok\r\n250 2.1.5 Destination address valid: Recipient ok\r\n250 2.0.0 Ok\r\n"
    );
    assert_eq!(
        d.session.answer(Answer::Filter(FilterVerdict::Proceed)),
        Err(AnswerError::NotWaiting)
    );

    d.hold = true;
    d.say("RSET");
    d.say("MAIL FROM:<a@b.test>");
    d.raw(&vec![b'x'; 200 * 1024]);
    assert!(!d.session.wants_input(), "back-pressure while waiting");
}

// ---- STARTTLS and AUTH ---------------------------------------------------------------------

fn tls_params() -> SessionParams {
    let mut p = params();
    p.tls = TlsMode::StartTls;
    p.auth = AuthMode::Required;
    p
}

#[test]
fn starttls_resets_the_greeting_and_unlocks_auth() {
    let mut d = Driver::new(tls_params());
    assert_eq!(d.say("EHLO c.test"), ehlo_reply("c.test", &["STARTTLS"]));
    assert_eq!(
        d.say("AUTH PLAIN"),
        "503 5.5.1 Invalid command: Command not supported\r\n"
    );
    assert_eq!(
        d.say("MAIL FROM:<a@b.test>"),
        "530 5.5.1 Invalid command: Must issue an AUTH command first\r\n"
    );
    assert_eq!(
        d.say("STARTTLS x"),
        "501 5.5.4 Invalid command arguments: No parameters allowed\r\n"
    );
    d.hold = true;
    // Pipelined plain text after STARTTLS must not survive the handshake (RFC 3207).
    assert_eq!(
        d.raw(b"STARTTLS\r\nEHLO evil.test\r\nMAIL FROM:<injected@evil.test>\r\n"),
        "220 2.0.0 Ready to start TLS\r\n"
    );
    assert_eq!(d.tls_requests, 1);
    assert_eq!(d.raw(b"RCPT TO:<also-injected@evil.test>\r\n"), "");
    d.hold = false;
    let before = d.out.len();
    d.session.tls_established(tls_info());
    d.pump();
    assert_eq!(
        d.out.len(),
        before,
        "nothing sent before plaintext was injected was answered"
    );
    assert_eq!(
        d.count_questions(|q| matches!(q, Question::Sender { .. })),
        0
    );
    assert_eq!(
        d.say("MAIL FROM:<a@b.test>"),
        "503 5.5.1 Invalid command: Command not allowed at this point.\r\n",
        "the HELO name is forgotten after TLS"
    );
    assert_eq!(
        d.say("EHLO c.test"),
        ehlo_reply("c.test", &["AUTH PLAIN LOGIN"])
    );
    assert_eq!(
        d.say("STARTTLS"),
        "503 5.5.1 Invalid command: Channel already secured\r\n"
    );
}

#[test]
fn starttls_not_offered_and_tls_required() {
    let mut d = Driver::new(params());
    d.say("EHLO c.test");
    assert_eq!(
        d.say("STARTTLS"),
        "503 5.5.1 Invalid command: Command not supported\r\n"
    );

    let mut p = params();
    p.tls = TlsMode::StartTlsRequired;
    let mut d = Driver::new(p);
    d.say("EHLO c.test");
    assert_eq!(
        d.say("MAIL FROM:<a@b.test>"),
        "530 5.5.1 Invalid command: Must issue a STARTTLS command first\r\n"
    );
    d.say("STARTTLS");
    d.say("EHLO c.test");
    assert_eq!(d.say("MAIL FROM:<a@b.test>"), "250 2.0.0 Ok\r\n");
}

#[test]
fn smtps_banner_after_handshake_and_tls_failure() {
    let mut p = params();
    p.tls = TlsMode::Smtps;
    let d = Driver::new(p.clone());
    assert_eq!(d.tls_requests, 1);
    assert_eq!(d.all_output(), "220 vm ESMTP OpenSMTPD\r\n");

    let mut p2 = p;
    p2.filtered = false;
    let mut s = Session::new(p2);
    assert_eq!(s.next_action(), Some(Action::StartTls));
    assert_eq!(s.next_action(), None);
    s.tls_failed();
    assert!(s.is_closed());
    assert_eq!(s.next_action(), None, "no reply on a failed handshake");
}

fn b64(raw: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in raw.chunks(3) {
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for k in 0..4 {
            s.push(if k <= chunk.len() {
                T[((v >> (18 - 6 * k)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    s
}

fn secured(p: SessionParams) -> Driver {
    let mut d = Driver::new(p);
    d.say("EHLO c.test");
    d.say("STARTTLS");
    d.say("EHLO c.test");
    d
}

#[test]
fn auth_plain_and_login_dialogues() {
    let mut d = secured(tls_params());
    assert_eq!(
        d.say("AUTH"),
        "501 5.5.4 Invalid command arguments: No parameters given\r\n"
    );
    assert_eq!(
        d.say("AUTH CRAM-MD5"),
        "504 5.7.4 Security features not supported: AUTH method \"CRAM-MD5\" not supported\r\n"
    );
    assert_eq!(d.say("AUTH PLAIN"), "334 \r\n");
    assert_eq!(
        d.say("not base64"),
        "501 5.5.2 Syntax error: Syntax error\r\n"
    );
    assert_eq!(
        d.say(&format!("AUTH PLAIN {}", b64(b"\0joe\0wrong"))),
        "535 Authentication failed\r\n"
    );
    assert_eq!(d.say("AUTH LOGIN"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(d.say(&b64(b"joe")), "334 UGFzc3dvcmQ6\r\n");
    assert_eq!(d.say(&b64(b"nope")), "535 Authentication failed\r\n");
    assert_eq!(
        d.say(&format!("AUTH LOGIN {}", b64(b"joe"))),
        "334 UGFzc3dvcmQ6\r\n"
    );
    assert_eq!(
        d.say(&b64(b"secret")),
        "235 2.0.0 Authentication succeeded\r\n"
    );
    assert_eq!(
        d.say("AUTH PLAIN"),
        "503 5.5.1 Invalid command: Already authenticated\r\n"
    );
    let ehlo = d.say("NOOP");
    assert_eq!(ehlo, "250 2.0.0 Ok\r\n");
    assert_eq!(d.say("MAIL FROM:<joe@b.test>"), "250 2.0.0 Ok\r\n");
    d.say("RCPT TO:<foo@bsdsx.fr>");
    d.say("DATA");
    d.raw(b"\r\nx\r\n.\r\n");
    assert!(
        committed_text(&d, 0).contains("with ESMTPSA id f952a52e (TLSv1.3:TLS_AES_256_GCM_SHA384:256:NO)\n\tfor <foo@bsdsx.fr>;"),
        "{}",
        committed_text(&d, 0)
    );
    // Secrets never appear in the log facts.
    assert_eq!(
        d.failed_commands(),
        vec![
            (
                "AUTH".into(),
                "501 5.5.4 Invalid command arguments: No parameters given".into()
            ),
            (
                "AUTH CRAM-MD5".into(),
                "504 5.7.4 Security features not supported: AUTH method \"CRAM-MD5\" not supported"
                    .into()
            ),
            (
                "AUTH PLAIN (...)".into(),
                "501 5.5.2 Syntax error: Syntax error".into()
            ),
            (
                "AUTH PLAIN (...)".into(),
                "535 Authentication failed".into()
            ),
            (
                "AUTH LOGIN (password)".into(),
                "535 Authentication failed".into()
            ),
            (
                "AUTH PLAIN".into(),
                "503 5.5.1 Invalid command: Already authenticated".into()
            ),
        ]
    );
    let auths: Vec<(Vec<u8>, AuthResult)> = d
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Authentication { user, result } => Some((user.clone(), *result)),
            _ => None,
        })
        .collect();
    assert_eq!(
        auths,
        vec![
            (b"joe".to_vec(), AuthResult::PermFail),
            (b"joe".to_vec(), AuthResult::PermFail),
            (b"joe".to_vec(), AuthResult::Ok)
        ]
    );
}

#[test]
fn auth_edge_cases() {
    let mut d = secured(tls_params());
    // §11.3 / 7.8.0p1: CR or LF inside credentials.
    assert_eq!(
        d.say(&format!("AUTH PLAIN {}", b64(b"\0user\nX\0pass"))),
        "501 5.5.2 Syntax error: Syntax error\r\n"
    );
    // 6.8 refuses one-byte passwords.
    assert_eq!(
        d.say(&format!("AUTH PLAIN {}", b64(b"\0joe\0s"))),
        "501 5.5.2 Syntax error: Syntax error\r\n"
    );
    assert_eq!(
        d.say("AUTH LOGIN !!!"),
        "501 5.5.2 Syntax error: Syntax error\r\n"
    );
    assert_eq!(
        d.failed_commands().last().map(|f| f.0.clone()).as_deref(),
        Some("AUTH LOGIN (username)")
    );
    d.auth_tempfail = true;
    assert_eq!(
        d.say(&format!("AUTH PLAIN {}", b64(b"\0joe\0secret"))),
        "421 4.3.0 Temporary failure\r\n"
    );
    assert!(
        !d.closed,
        "6.8 keeps the session after an auth lookup failure"
    );
    d.auth_tempfail = false;
    assert_eq!(
        d.say(&format!("AUTH PLAIN {}", b64(b"\0joe\0secret"))),
        "235 2.0.0 Authentication succeeded\r\n"
    );
}

#[test]
fn local_enqueue_is_authenticated() {
    let mut p = SessionParams::new(
        SessionId(1),
        "vm",
        ClientInfo {
            address: ClientAddress::Local,
            rdns: "vm".into(),
            fcrdns: Fcrdns::Pass,
        },
    );
    p.local_enqueue = true;
    p.auth = AuthMode::Required;
    let mut d = Driver::new(p);
    assert!(
        d.say("EHLO vm")
            .starts_with("250-vm Hello vm [local], pleased to meet you\r\n")
    );
    assert_eq!(d.say("MAIL FROM:<root@vm>"), "250 2.0.0 Ok\r\n");
    d.local_domains.push("vm");
    d.say("RCPT TO:<root>");
    d.say("DATA");
    d.raw(b"\r\nx\r\n.\r\n");
    assert!(
        committed_text(&d, 0)
            .starts_with("Received: from vm (vm [local])\n\tby vm (OpenSMTPD) with ESMTPA id")
    );
}

// ---- filters -----------------------------------------------------------------------------

#[test]
fn connect_filter_reject_means_no_banner() {
    let filter: FilterFn = Box::new(|phase, _, _| match phase {
        FilterPhase::Connect => FilterVerdict::Reject("550 no rDNS please fix".into()),
        _ => FilterVerdict::Proceed,
    });
    let mut d = Driver::with_filter(params(), filter);
    assert_eq!(d.all_output(), "550 no rDNS please fix\r\n");
    assert_eq!(
        d.say("EHLO c.test"),
        "503 5.5.1 Invalid command: Command not allowed at this point.\r\n"
    );
    assert_eq!(d.say("QUIT"), "221 2.0.0 Bye\r\n");
}

#[test]
fn filter_reply_validation() {
    for (text, expect, closes) in [
        ("550 go away", "550 go away\r\n", false),
        ("421 busy", "421 busy\r\n", true),
        ("250 fine", "421 Internal server error\r\n", true),
        ("nonsense", "421 Internal server error\r\n", true),
        ("550", "421 Internal server error\r\n", true),
    ] {
        let t = text.to_string();
        let filter: FilterFn = Box::new(move |phase, _, _| match phase {
            FilterPhase::Helo => FilterVerdict::Reject(t.clone()),
            _ => FilterVerdict::Proceed,
        });
        let mut d = Driver::with_filter(params(), filter);
        assert_eq!(d.say("HELO c.test"), expect, "{text}");
        assert_eq!(d.closed, closes, "{text}");
    }
}

#[test]
fn filter_rewrite_is_checked_again() {
    let filter: FilterFn = Box::new(|phase, param, _| match phase {
        FilterPhase::RcptTo if param.contains("old") => {
            FilterVerdict::Rewrite("<new@bsdsx.fr>".into())
        }
        FilterPhase::RcptTo if param.contains("broken") => FilterVerdict::Rewrite("garbage".into()),
        FilterPhase::Noop => FilterVerdict::Rewrite("x".into()),
        _ => FilterVerdict::Proceed,
    });
    let mut d = Driver::with_filter(params(), filter);
    d.say("EHLO c.test");
    d.say("MAIL FROM:<a@b.test>");
    assert_eq!(
        d.say("RCPT TO:<old@elsewhere.test>"),
        "250 2.1.5 Destination address valid: Recipient ok\r\n"
    );
    assert!(matches!(
        d.questions.iter().rev().find(|q| matches!(q, Question::Recipient { .. })),
        Some(Question::Recipient { rcpt, .. }) if rcpt.to_string() == "new@bsdsx.fr"
    ));
    assert_eq!(
        d.say("RCPT TO:<broken@bsdsx.fr>"),
        "501 5.1.3 Recipient address syntax error\r\n"
    );
    assert_eq!(
        d.say("NOOP"),
        "500 5.5.4 Invalid command arguments: command does not accept arguments.\r\n",
        "a rewritten NOOP fails its own check, as in OpenSMTPD"
    );
}

#[test]
fn commit_filter_reject_rolls_back() {
    let filter: FilterFn = Box::new(|phase, _, _| match phase {
        FilterPhase::Commit => FilterVerdict::Reject("554 5.7.1 content refused".into()),
        _ => FilterVerdict::Proceed,
    });
    let mut d = Driver::with_filter(params(), filter);
    d.say("EHLO c.test");
    d.say("MAIL FROM:<a@b.test>");
    d.say("RCPT TO:<foo@bsdsx.fr>");
    d.say("DATA");
    assert_eq!(d.raw(b"\r\nx\r\n.\r\n"), "554 5.7.1 content refused\r\n");
    assert_eq!(d.rollbacks, vec![MsgId(0xf952a52e)]);
    assert_eq!(
        d.count_questions(|q| matches!(q, Question::CommitMessage { .. })),
        0
    );
    assert_eq!(d.say("MAIL FROM:<a@b.test>"), "250 2.0.0 Ok\r\n");
}

#[test]
fn help_and_wiz_are_never_filtered() {
    let mut d = Driver::with_filter(params(), Box::new(|_, _, _| FilterVerdict::Proceed));
    let before = d.questions.len();
    d.say("HELP");
    d.say("WIZ");
    d.say("VRFY x");
    assert_eq!(d.questions.len(), before);
    d.say("NOOP");
    assert_eq!(d.questions.len(), before + 1);
}

// ---- connection end -------------------------------------------------------------------------

#[test]
fn abort_rolls_back_and_late_answers_are_cleaned_up() {
    let mut d = in_data(params());
    d.raw(b"Subject: half\r\n");
    d.session.abort();
    d.pump();
    assert_eq!(d.rollbacks, vec![MsgId(0xf952a52e)]);
    assert!(d.session.is_closed());
    assert_eq!(d.raw(b"QUIT\r\n"), "");

    let mut d = Driver::new(params());
    d.say("EHLO c.test");
    d.hold = true;
    d.say("MAIL FROM:<a@b.test>");
    d.session.abort();
    d.session
        .answer(Answer::Sender(SenderVerdict::Accept { msgid: MsgId(5) }))
        .unwrap();
    d.pump();
    assert_eq!(
        d.rollbacks,
        vec![MsgId(5)],
        "a message created after the client left is discarded"
    );
}

#[test]
fn abort_during_commit_leaves_the_commit_alone() {
    let mut d = in_data(params());
    d.hold = true;
    d.raw(b"\r\nx\r\n.\r\n");
    assert!(matches!(
        d.questions.last(),
        Some(Question::CommitMessage { .. })
    ));
    d.session.abort();
    d.session
        .answer(Answer::CommitMessage(CommitVerdict::Committed))
        .unwrap();
    d.pump();
    assert!(d.rollbacks.is_empty());
    assert_eq!(d.raw(b"QUIT\r\n"), "");
}

#[test]
fn ipv6_client_greeting() {
    let p = SessionParams::new(
        SessionId(2),
        "mx.override.test",
        ClientInfo::unknown(ClientAddress::Ip("::1".parse().unwrap())),
    );
    let mut d = Driver::new(p);
    assert_eq!(d.all_output(), "220 mx.override.test ESMTP OpenSMTPD\r\n");
    assert_eq!(
        d.say("HELO [::1]"),
        "250 mx.override.test Hello [::1] [::1], pleased to meet you\r\n"
    );
}

// ---- properties ------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic the session (with an accept-everything driver).
    #[test]
    fn session_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        fuzz_session(&data);
    }

    /// Command-shaped input with random damage never panics the session, filtered or not,
    /// through STARTTLS, AUTH and DATA.
    #[test]
    fn session_survives_damaged_dialogues(
        filtered in any::<bool>(),
        pieces in proptest::collection::vec(prop_oneof![
            Just(b"EHLO c.test\r\n".to_vec()),
            Just(b"STARTTLS\r\n".to_vec()),
            Just(b"AUTH PLAIN AGpvZQBzZWNyZXQ=\r\n".to_vec()),
            Just(b"AUTH LOGIN\r\n".to_vec()),
            Just(b"MAIL FROM:<a@b.test> BODY=8BITMIME\r\n".to_vec()),
            Just(b"RCPT TO:<foo@bsdsx.fr> NOTIFY=SUCCESS\r\n".to_vec()),
            Just(b"DATA\r\n".to_vec()),
            Just(b"To: x, y\r\nBcc: z\r\n\r\n".to_vec()),
            Just(b"\r\n.\r\n".to_vec()),
            Just(b"\n.\n".to_vec()),
            Just(b"RSET\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..40),
        ], 0..40),
    ) {
        let mut data: Vec<u8> = vec![u8::from(filtered)];
        for p in pieces {
            data.extend_from_slice(&p);
        }
        fuzz_session(&data);
    }

    /// Arbitrary lines never panic the command parsers.
    #[test]
    fn command_parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        super::command::fuzz_command_line(&data);
    }

    /// Arbitrary bytes never panic the DATA receiver, and chunking does not change it.
    #[test]
    fn data_receiver_never_panics(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        super::data::fuzz_data(&data);
    }

    /// Pipelining is invisible: the server's output does not depend on how the client's
    /// bytes were split into packets.
    #[test]
    fn output_does_not_depend_on_chunking(
        cmds in proptest::collection::vec(prop_oneof![
            Just("EHLO c.test\r\n".to_string()),
            Just("HELO c.test\r\n".to_string()),
            Just("MAIL FROM:<a@b.test>\r\n".to_string()),
            Just("MAIL FROM:<;x>\r\n".to_string()),
            Just("RCPT TO:<foo@bsdsx.fr>\r\n".to_string()),
            Just("RCPT TO:<x@nowhere.test>\r\n".to_string()),
            Just("DATA\r\n".to_string()),
            Just("Subject: s\r\n\r\nbody\n.\r\n..\r\n.\r\n".to_string()),
            Just("RSET\r\n".to_string()),
            Just("NOOP\r\n".to_string()),
            Just("VRFY x\r\n".to_string()),
            Just("HELP\r\n".to_string()),
            "[ -~]{0,20}\r\n",
        ], 0..25),
        cut in any::<prop::sample::Index>(),
    ) {
        let all: Vec<u8> = cmds.concat().into_bytes();
        let mut whole = Driver::new(params());
        whole.raw(&all);
        let mut bytewise = Driver::new(params());
        for b in &all {
            bytewise.raw(std::slice::from_ref(b));
        }
        let mut split = Driver::new(params());
        let at = if all.is_empty() { 0 } else { cut.index(all.len()) };
        split.raw(&all[..at]);
        split.raw(&all[at..]);
        prop_assert_eq!(whole.all_output(), bytewise.all_output());
        prop_assert_eq!(whole.all_output(), split.all_output());
        prop_assert_eq!(&whole.committed, &bytewise.committed);
        prop_assert_eq!(&whole.events, &bytewise.events);
    }
}

fn data_filtered() -> Driver {
    let mut p = params();
    p.data_filtered = true;
    Driver::with_filter(p, Box::new(|_, _, _| FilterVerdict::Proceed))
}

/// Data-line filters get smtpd's own lines, then the client's lines as received (still
/// dot-stuffed) and the final `.`; what they give back is read as the message (unstuffed,
/// header rules applied) and the commit phase follows.
#[test]
fn data_line_filters_see_raw_lines_and_their_answer_is_the_message() {
    let mut d = data_filtered();
    d.data_filter = Some(Box::new(|sent| {
        let text = String::from_utf8_lossy(sent).replace("secret", "censored");
        Ok(crlf(format!("X-Filtered: yes\n{text}").as_bytes()))
    }));
    d.say("EHLO client.example");
    d.say("MAIL FROM:<alice@client.example>");
    d.say("RCPT TO:<foo@bsdsx.fr>");
    d.say("DATA");
    assert!(d.message.is_empty());
    assert_eq!(
        d.raw(b"Subject: s\r\n\r\n..dot\r\nsecret\r\n.\r\n"),
        "250 2.0.0 f952a52e Message accepted for delivery\r\n"
    );
    let sent = String::from_utf8(d.filter_lines.clone()).unwrap();
    assert!(sent.starts_with("Received: from client.example"), "{sent}");
    assert!(
        sent.ends_with("\nSubject: s\n\n..dot\nsecret\n.\n"),
        "{sent}"
    );
    let msg = committed_text(&d, 0);
    assert!(
        msg.starts_with("X-Filtered: yes\nReceived: from client.example"),
        "{msg}"
    );
    assert!(msg.ends_with("\nSubject: s\n\n.dot\ncensored\n"), "{msg}");
    // The commit phase ran after the filters gave the message back.
    assert!(matches!(
        d.questions.iter().rev().nth(1),
        Some(Question::Filter {
            phase: FilterPhase::Commit,
            ..
        })
    ));
    assert!(d.events.iter().any(|e| *e == Event::ClientLine(".".into())));
}

#[test]
fn data_line_filter_failure_is_a_temporary_error_and_the_session_goes_on() {
    let mut d = data_filtered();
    d.data_filter = Some(Box::new(|_| Err(Reply::filter_tempfail())));
    d.say("HELO client.example");
    d.say("MAIL FROM:<alice@client.example>");
    d.say("RCPT TO:<foo@bsdsx.fr>");
    d.say("DATA");
    assert_eq!(
        d.raw(b"Subject: s\r\n\r\nb\r\n.\r\n"),
        "451 4.3.0 Temporary failure\r\n"
    );
    assert_eq!(d.rollbacks.len(), 1);
    assert!(d.committed.is_empty());
    assert_eq!(d.say("NOOP"), "250 2.0.0 Ok\r\n");
}

/// The size limit holds for what the client sent, whatever the filters give back, and for
/// what they give back.
#[test]
fn data_line_filters_do_not_lift_the_size_limit() {
    let mut p = params();
    p.data_filtered = true;
    p.limits.max_message_size = 1000;
    let mut d = Driver::with_filter(p, Box::new(|_, _, _| FilterVerdict::Proceed));
    d.data_filter = Some(Box::new(|_| Ok(b"Subject: small\r\n\r\nx\r\n".to_vec())));
    d.say("HELO client.example");
    d.say("MAIL FROM:<alice@client.example>");
    d.say("RCPT TO:<foo@bsdsx.fr>");
    d.say("DATA");
    let big = format!("Subject: s\r\n\r\n{}\r\n.\r\n", "a".repeat(2000));
    let r = d.raw(big.as_bytes());
    assert!(r.starts_with("554 5.3.4 Message too big"), "{r}");
    assert!(d.committed.is_empty());

    d.data_filter = Some(Box::new(|_| Ok(crlf("x\n".repeat(2000).as_bytes()))));
    d.say("MAIL FROM:<alice@client.example>");
    d.say("RCPT TO:<foo@bsdsx.fr>");
    d.say("DATA");
    assert!(
        d.raw(b"Subject: s\r\n\r\nsmall\r\n.\r\n")
            .starts_with("554 5.3.4")
    );
    assert!(d.committed.is_empty());
}
