//! The SMTP server session as a state machine without I/O (OpenSMTPD's `smtp_session.c`).
//!
//! A driver owns the socket. It feeds client bytes with [`Session::input`], drains
//! [`Action`]s with [`Session::next_action`], answers questions with [`Session::answer`], and
//! reports TLS and connection events. Everything the client sees is decided here, in the
//! order and with the texts OpenSMTPD 6.8 uses — with three deliberate differences:
//!
//! * **Pipelining (RFC 2920) works and is advertised.** OpenSMTPD drops a client that sends a
//!   second command before the first was answered (even `.` and `QUIT` in one packet, which
//!   loses the message). Here input is buffered while a question is pending and processed in
//!   order afterwards; replies come out in command order.
//! * **Only `<CRLF>.<CRLF>` ends DATA** (see [`super::data`]): no SMTP smuggling.
//! * **Plain-text input pipelined after STARTTLS is discarded** before the handshake, so it
//!   cannot be replayed as if it had come over TLS (the CVE-2011-0411 family).
//!
//! Limits are OpenSMTPD's: 65535-byte lines and 2048-byte commands close the session;
//! `max-mails` messages per session, `max-rcpt` accepted recipients per transaction,
//! `max-message-size` per message. OpenSMTPD has no "too many errors" rule, and neither does
//! this session; the driver's idle timeout (300 s) bounds a silent client.

use std::collections::VecDeque;

use super::action::{
    Action, Answer, AuthResult, AuthVerdict, CommitVerdict, Envelope, Event, FilterPhase,
    FilterVerdict, MessageStamp, OpenVerdict, Question, Recipient, RecipientVerdict, SenderVerdict,
};
use super::address::{Mailaddr, parse_path, valid_domainpart};
use super::auth::{
    AuthRequest, Credentials, Mechanism, decode_login_password, decode_login_user, decode_plain,
    parse_auth_args,
};
use super::command::{
    MailParams, RcptParams, Verb, parse_command, parse_mail_params, parse_rcpt_params,
};
use super::data::{DataOutcome, DataReceiver};
use super::ids::MsgId;
use super::message::{MessageError, MessageOptions, MessageWriter};
use super::params::{AuthMode, ClientInfo, SessionParams, TlsInfo, TlsMode};
use super::received::{ReceivedFields, received_header};
use super::reply::{Extensions, HeloVerb, Reply};

/// While a question is pending the driver should stop reading once this much input waits.
const INPUT_HIGH_WATER: usize = 128 * 1024;

/// Which kind of line the session expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Before the banner: input is kept, not read.
    Greeting,
    /// SMTP commands.
    Command,
    /// The AUTH PLAIN response line.
    AuthPlain,
    /// The AUTH LOGIN user name line.
    AuthUsername,
    /// The AUTH LOGIN password line.
    AuthPassword,
    /// Message lines after 354.
    Data,
}

/// What the session is waiting for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Waiting {
    Filter { phase: FilterPhase, param: String },
    Sender,
    Recipient,
    OpenMessage,
    CommitMessage,
    Credentials,
    Tls,
    FilteredData,
}

/// A MAIL FROM .. final dot transaction.
#[derive(Debug)]
struct Transaction {
    msgid: Option<MsgId>,
    sender: Option<Mailaddr>,
    mail_params: MailParams,
    recipients: Vec<Recipient>,
    pending_rcpt: Option<(Mailaddr, RcptParams)>,
    junk: bool,
    receiver: Option<DataReceiver>,
    writer: Option<MessageWriter>,
    size: usize,
    /// smtpd's own lines at the top of the message, when the listener has filters: 6.8
    /// counts them twice in the size it logs and reports (once as it hands them to its
    /// filter stage, once as they come back), and so does smtpd.
    counted_twice: usize,
}

/// Why [`Session::answer`] refused an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerError {
    /// No question is pending.
    NotWaiting,
    /// The answer does not match the pending question.
    Mismatch,
}

/// One SMTP server session. See the module documentation.
///
/// A driver's loop, reduced to its bones:
///
/// ```
/// use smtpd::smtp::*;
///
/// let client = ClientInfo::unknown(ClientAddress::Ip("192.0.2.1".parse().unwrap()));
/// let mut session = Session::new(SessionParams::new(SessionId(1), "mx.example.org", client));
/// session.input(b"EHLO client.example\r\nMAIL FROM:<a@example.net>\r\nQUIT\r\n");
/// let mut wire = Vec::new();
/// while let Some(action) = session.next_action() {
///     match action {
///         Action::Send(bytes) => wire.extend_from_slice(&bytes),
///         Action::Ask(question) => {
///             // Ask the rules or the queue (asynchronously, in a real driver), then answer.
///             let answer = match *question {
///                 Question::Sender { .. } => Answer::Sender(SenderVerdict::Accept { msgid: MsgId(0x2a) }),
///                 other => unimplemented!("{other:?}"),
///             };
///             session.answer(answer).unwrap();
///         }
///         Action::Rollback(msgid) => assert_eq!(msgid, MsgId(0x2a)),
///         Action::Close => break,
///         _ => {}
///     }
/// }
/// let wire = String::from_utf8(wire).unwrap();
/// assert!(wire.starts_with("220 mx.example.org ESMTP OpenSMTPD\r\n"));
/// assert!(wire.ends_with("250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n"));
/// ```
#[derive(Debug)]
pub struct Session {
    params: SessionParams,
    actions: VecDeque<Action>,
    input: Vec<u8>,
    start: usize,
    mode: Mode,
    waiting: Option<Waiting>,
    closed: bool,
    discard_input: bool,
    banner_sent: bool,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    authenticated: bool,
    auth_user: Option<Vec<u8>>,
    login_user: Option<Vec<u8>>,
    junk: bool,
    mails: usize,
    tx: Option<Transaction>,
    last_command: Vec<u8>,
    chunk: Vec<u8>,
    /// OpenSMTPD's name of the session state, for the `-T smtp` transition lines.
    state: &'static str,
}

impl Session {
    /// Starts a session: asks the connect filters (filtered listeners), or starts TLS
    /// (`smtps`), or sends the banner.
    pub fn new(params: SessionParams) -> Session {
        let mut s = Session {
            authenticated: params.local_enqueue,
            params,
            actions: VecDeque::new(),
            input: Vec::new(),
            start: 0,
            mode: Mode::Greeting,
            waiting: None,
            closed: false,
            discard_input: false,
            banner_sent: false,
            helo: None,
            esmtp: false,
            tls: None,
            auth_user: None,
            login_user: None,
            junk: false,
            mails: 0,
            tx: None,
            last_command: Vec::new(),
            chunk: Vec::new(),
            // `STATE_NEW -> STATE_CONNECTED` is traced by the server as the connection
            // comes, before the reverse lookup, as 6.8 traces it.
            state: "STATE_CONNECTED",
        };
        let address = s.params.client.address.text();
        s.filter_phase(FilterPhase::Connect, address);
        s
    }

    /// The parameters the session runs with.
    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    /// What is known of the client, once a reverse lookup that finished after the banner
    /// completes (unfiltered listeners do not hold the banner for it).
    pub fn set_client(&mut self, client: ClientInfo) {
        self.params.client = client;
    }

    /// Feeds bytes read from the client. Processing happens at once unless a question is
    /// pending; then the bytes wait.
    pub fn input(&mut self, bytes: &[u8]) {
        if self.closed || self.discard_input {
            return;
        }
        self.input.extend_from_slice(bytes);
        self.run();
    }

    /// The next thing to do, in order; `None` when the session needs input or an answer.
    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// True once the session has decided to close (or was aborted).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// True when the session waits for an answer or a TLS handshake.
    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// Back-pressure: false when reading more would only grow the buffer (a question is
    /// pending and a lot of pipelined input already waits), or when the session is closed.
    pub fn wants_input(&self) -> bool {
        !self.closed && self.input.len() - self.start < INPUT_HIGH_WATER
    }

    /// Answers the pending question and resumes processing buffered input.
    ///
    /// After the session closed (client gone) answers are accepted and only cleaned up: a
    /// late [`SenderVerdict::Accept`] yields an [`Action::Rollback`] for the message the
    /// queue just created.
    pub fn answer(&mut self, answer: Answer) -> Result<(), AnswerError> {
        if self.closed {
            if let Answer::Sender(SenderVerdict::Accept { msgid }) = answer {
                self.actions.push_back(Action::Rollback(msgid));
            }
            return Ok(());
        }
        let waiting = self.waiting.clone().ok_or(AnswerError::NotWaiting)?;
        match (waiting, answer) {
            (Waiting::Filter { phase, param }, Answer::Filter(v)) => {
                self.waiting = None;
                self.filter_verdict(phase, param, v);
            }
            (Waiting::Sender, Answer::Sender(v)) => {
                self.waiting = None;
                self.sender_verdict(v);
            }
            (Waiting::Recipient, Answer::Recipient(v)) => {
                self.waiting = None;
                self.recipient_verdict(v);
            }
            (Waiting::OpenMessage, Answer::OpenMessage(v)) => {
                self.waiting = None;
                self.open_verdict(v);
            }
            (Waiting::CommitMessage, Answer::CommitMessage(v)) => {
                self.waiting = None;
                self.commit_verdict(v);
            }
            (Waiting::Credentials, Answer::Credentials(v)) => {
                self.waiting = None;
                self.credentials_verdict(v);
            }
            (Waiting::FilteredData, Answer::FilteredData(v)) => {
                self.waiting = None;
                self.filtered_data(v);
            }
            _ => return Err(AnswerError::Mismatch),
        }
        self.run();
        Ok(())
    }

    /// The TLS handshake requested by [`Action::StartTls`] succeeded. The client must greet
    /// again (the HELO name is forgotten); on `smtps` the banner is sent now.
    pub fn tls_established(&mut self, info: TlsInfo) {
        if self.closed || self.waiting != Some(Waiting::Tls) {
            return;
        }
        self.waiting = None;
        self.discard_input = false;
        self.input.clear();
        self.start = 0;
        self.tls = Some(info);
        self.helo = None;
        if self.params.tls == TlsMode::Smtps && !self.banner_sent {
            self.send_banner();
        } else {
            self.mode = Mode::Command;
            self.enter("STATE_HELO");
        }
        self.run();
    }

    /// The TLS handshake failed: the connection is dropped without a reply.
    pub fn tls_failed(&mut self) {
        if self.waiting == Some(Waiting::Tls) {
            self.waiting = None;
            self.abort();
        }
    }

    /// The connection ended without QUIT (client EOF, idle timeout, I/O error, shutdown).
    /// Rolls back an open transaction; nothing is sent. A commit already asked for is left
    /// to finish: its outcome stands, and the client, not having seen the 250, may send the
    /// message again (the usual at-least-once rule of SMTP).
    pub fn abort(&mut self) {
        if self.closed {
            return;
        }
        self.chunk.clear();
        if self.waiting == Some(Waiting::CommitMessage) {
            self.tx = None;
        } else {
            self.drop_transaction();
        }
        self.closed = true;
        self.waiting = None;
    }

    // ---- plumbing ----------------------------------------------------------------------

    /// `-T smtp`: `smtp: SID: STATE_HELO -> STATE_BODY`, where OpenSMTPD changes state.
    fn enter(&mut self, state: &'static str) {
        tracing::trace!(target: "smtp", "{}", self.state_change(state));
        self.state = state;
    }

    /// [`Session::enter`], its trace line written after the events already pending.
    fn enter_after_events(&mut self, state: &'static str) {
        if crate::log::tracing("smtp") {
            let line = self.state_change(state);
            self.event(Event::Trace(line));
        }
        self.state = state;
    }

    /// The `-T smtp` line of a change to `state`.
    fn state_change(&self, state: &str) -> String {
        format!("smtp: {}: {} -> {}", self.params.id, self.state, state)
    }

    fn send(&mut self, bytes: Vec<u8>) {
        // `-T smtp`: each reply line, where it is decided (so that state changes follow it
        // in the trace as they follow it in OpenSMTPD's).
        if crate::log::tracing("smtp") {
            for line in String::from_utf8_lossy(&bytes).split("\r\n") {
                if !line.is_empty() {
                    tracing::trace!(target: "smtp", "smtp: {}: >>> {}", self.params.id, line);
                }
            }
        }
        if let Some(Action::Send(last)) = self.actions.back_mut() {
            last.extend_from_slice(&bytes);
        } else {
            self.actions.push_back(Action::Send(bytes));
        }
    }

    fn event(&mut self, e: Event) {
        self.actions.push_back(Action::Event(e));
    }

    fn ask(&mut self, waiting: Waiting, q: Question) {
        self.flush_chunk();
        self.waiting = Some(waiting);
        self.actions.push_back(Action::Ask(Box::new(q)));
    }

    /// Sends a reply; 4xx/5xx replies are also logged as failed commands.
    fn reply(&mut self, r: Reply) {
        if r.is_failure() {
            let command = match self.mode {
                Mode::AuthPlain => b"AUTH PLAIN (...)".to_vec(),
                Mode::AuthUsername => b"AUTH LOGIN (username)".to_vec(),
                Mode::AuthPassword => b"AUTH LOGIN (password)".to_vec(),
                _ => self.last_command.clone(),
            };
            self.event(Event::FailedCommand {
                command,
                result: r.to_string(),
            });
        }
        self.send(r.to_wire());
    }

    /// Input that cannot be a command at all: reply, log as bad input, close.
    fn bad_input(&mut self, r: Reply) {
        self.event(Event::BadInput {
            result: r.to_string(),
        });
        self.send(r.to_wire());
        self.close();
    }

    /// Server-initiated close after the pending sends.
    fn close(&mut self) {
        if self.closed {
            return;
        }
        self.flush_chunk();
        self.drop_transaction();
        self.closed = true;
        self.waiting = None;
        if self.state != "STATE_QUIT" {
            self.enter("STATE_QUIT");
        }
        self.actions.push_back(Action::Close);
    }

    fn drop_transaction(&mut self) {
        if let Some(tx) = self.tx.take()
            && let Some(msgid) = tx.msgid
        {
            self.actions.push_back(Action::Rollback(msgid));
        }
    }

    fn flush_chunk(&mut self) {
        if !self.chunk.is_empty() {
            let chunk = std::mem::take(&mut self.chunk);
            if let Some(tx) = self.tx.as_mut() {
                tx.size += chunk.len();
            }
            self.actions.push_back(Action::MessageData(chunk));
        }
    }

    fn secure(&self) -> bool {
        self.tls.is_some()
    }

    fn starttls_offered(&self) -> bool {
        matches!(
            self.params.tls,
            TlsMode::StartTls | TlsMode::StartTlsRequired
        )
    }

    fn auth_advertised(&self) -> bool {
        self.params.auth != AuthMode::None
            && (self.secure() || self.params.auth_plaintext)
            && !self.authenticated
    }

    fn auth_user_text(&self) -> Option<String> {
        self.auth_user
            .as_ref()
            .map(|u| String::from_utf8_lossy(u).into_owned())
    }

    fn envelope(&self) -> Option<Envelope> {
        let tx = self.tx.as_ref()?;
        Some(Envelope {
            msgid: tx.msgid?,
            helo: self.helo.clone().unwrap_or_default(),
            esmtp: self.esmtp,
            sender: tx.sender.clone(),
            mail_params: tx.mail_params.clone(),
            recipients: tx.recipients.clone(),
            junk: self.junk || tx.junk,
            auth_user: if self.authenticated {
                self.auth_user_text()
            } else {
                None
            },
            secure: self.secure(),
        })
    }

    // ---- input loop --------------------------------------------------------------------

    /// Processes buffered input until it runs out, a question is pending, or the session
    /// closes.
    fn run(&mut self) {
        while !self.closed && self.waiting.is_none() {
            let more = match self.mode {
                Mode::Greeting => false,
                Mode::Data => self.run_data(),
                _ => self.run_line(),
            };
            if !more {
                break;
            }
        }
        self.flush_chunk();
        if self.start > 0 {
            self.input.drain(..self.start);
            self.start = 0;
        }
    }

    /// Takes one line in command or AUTH mode. Returns false when no complete line waits.
    fn run_line(&mut self) -> bool {
        let max_line = self.params.limits.max_line;
        let pending = &self.input[self.start..];
        let Some(lf) = pending.iter().position(|&b| b == b'\n') else {
            if pending.len() >= max_line {
                self.bad_input(Reply::line_too_long());
            }
            return false;
        };
        let mut line = pending[..lf].to_vec();
        self.start += lf + 1;
        if line.len() >= max_line {
            self.bad_input(Reply::line_too_long());
            return false;
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if let Some(nul) = line.iter().position(|&b| b == 0) {
            line.truncate(nul);
        }
        if line.len() >= self.params.limits.max_command_line {
            self.bad_input(Reply::command_line_too_long());
            return false;
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        // `-T smtp`: every line read, credentials masked.
        let shown = match self.mode {
            Mode::AuthPlain | Mode::AuthUsername | Mode::AuthPassword => "********",
            _ => match text.get(..11) {
                Some(head) if head.eq_ignore_ascii_case("AUTH PLAIN ") => "AUTH PLAIN ********",
                _ => text.as_str(),
            },
        };
        tracing::trace!(target: "smtp", "smtp: {}: <<< {}", self.params.id, shown);
        if self.params.filtered {
            let shown = shown.to_string();
            self.event(Event::ClientLine(shown));
        }
        match self.mode {
            Mode::AuthPlain => self.auth_plain_response(&text),
            Mode::AuthUsername => self.auth_login_user(&text),
            Mode::AuthPassword => self.auth_login_password(&text),
            _ => {
                self.last_command = line;
                self.command(&text);
            }
        }
        true
    }

    /// Feeds buffered input to the DATA receiver. Returns true when the message ended and
    /// more input may be commands.
    fn run_data(&mut self) -> bool {
        let Some(tx) = self.tx.as_mut() else {
            self.mode = Mode::Command;
            return true;
        };
        let (Some(receiver), Some(writer)) = (tx.receiver.as_mut(), tx.writer.as_mut()) else {
            self.mode = Mode::Command;
            return true;
        };
        let filtered = self.params.data_filtered;
        let chunk = &mut self.chunk;
        let mut lines = Vec::new();
        let feed = receiver.feed(&self.input[self.start..], |line| {
            if filtered {
                lines.extend_from_slice(line);
                lines.push(b'\n');
            } else if writer.error().is_none() {
                writer.line(line, chunk);
            }
        });
        self.start += feed.consumed;
        if filtered {
            if feed.outcome == DataOutcome::End {
                lines.extend_from_slice(b".\n");
            }
            if !lines.is_empty() {
                self.actions.push_back(Action::FilterData(lines));
            }
            if feed.outcome == DataOutcome::End {
                // `<<< [EOM]` is traced once the filters handed the message back.
                self.event(Event::ClientLine(".".into()));
                self.mode = Mode::Command;
                self.ask(Waiting::FilteredData, Question::FilteredData);
                return true;
            }
        }
        match feed.outcome {
            DataOutcome::NeedMore => false,
            DataOutcome::LineTooLong => {
                self.bad_input(Reply::line_too_long());
                false
            }
            DataOutcome::End => {
                tracing::trace!(target: "smtp", "<<< [EOM]");
                if self.params.filtered {
                    self.event(Event::ClientLine(".".into()));
                }
                self.mode = Mode::Command;
                self.filter_phase(FilterPhase::Commit, String::new());
                true
            }
        }
    }

    // ---- commands ----------------------------------------------------------------------

    fn command(&mut self, line: &str) {
        let cmd = parse_command(line);
        let args = cmd.args.as_deref();
        let Some(phase) = (match cmd.verb {
            Verb::Helo => Some(FilterPhase::Helo),
            Verb::Ehlo => Some(FilterPhase::Ehlo),
            Verb::StartTls => Some(FilterPhase::StartTls),
            Verb::Auth => Some(FilterPhase::Auth),
            Verb::MailFrom => Some(FilterPhase::MailFrom),
            Verb::RcptTo => Some(FilterPhase::RcptTo),
            Verb::Data => Some(FilterPhase::Data),
            Verb::Rset => Some(FilterPhase::Rset),
            Verb::Quit => Some(FilterPhase::Quit),
            Verb::Noop => Some(FilterPhase::Noop),
            Verb::Help | Verb::Wiz => {
                // Never filtered.
                if args.is_some() {
                    self.reply(Reply::no_arguments_accepted());
                } else if cmd.verb == Verb::Help {
                    self.reply(Reply::help());
                } else {
                    self.reply(Reply::wiz());
                }
                None
            }
            Verb::Unknown => {
                self.reply(Reply::command_unrecognized());
                None
            }
        }) else {
            return;
        };
        if self.check(phase, args) {
            self.filter_phase(phase, args.unwrap_or("").to_string());
        }
    }

    /// The state and syntax checks of a command, in OpenSMTPD's order; replies on failure.
    fn check(&mut self, phase: FilterPhase, args: Option<&str>) -> bool {
        let refusal = match phase {
            FilterPhase::Helo | FilterPhase::Ehlo => {
                let verb = if phase == FilterPhase::Helo {
                    HeloVerb::Helo
                } else {
                    HeloVerb::Ehlo
                };
                if !self.banner_sent {
                    Some(Reply::command_not_allowed())
                } else if self.helo.is_some() {
                    Some(Reply::already_identified())
                } else {
                    match args {
                        None => Some(Reply::helo_requires_domain(verb)),
                        Some(a) if !valid_domainpart(a) => Some(Reply::invalid_domain_name()),
                        Some(_) => None,
                    }
                }
            }
            FilterPhase::StartTls => {
                if self.helo.is_none() || self.tx.is_some() {
                    Some(Reply::command_not_allowed())
                } else if !self.starttls_offered() {
                    Some(Reply::command_not_supported())
                } else if self.secure() {
                    Some(Reply::channel_already_secured())
                } else if args.is_some() {
                    Some(Reply::no_parameters_allowed())
                } else {
                    None
                }
            }
            FilterPhase::Auth => {
                if self.helo.is_none() || self.tx.is_some() {
                    Some(Reply::command_not_allowed())
                } else if self.authenticated {
                    Some(Reply::already_authenticated())
                } else if !self.auth_advertised() {
                    Some(Reply::command_not_supported())
                } else if args.is_none() {
                    Some(Reply::no_parameters_given())
                } else {
                    None
                }
            }
            FilterPhase::MailFrom => {
                if self.helo.is_none() || self.tx.is_some() {
                    Some(Reply::command_not_allowed())
                } else if self.params.tls == TlsMode::StartTlsRequired && !self.secure() {
                    Some(Reply::starttls_required())
                } else if self.params.auth == AuthMode::Required && !self.authenticated {
                    Some(Reply::auth_required())
                } else if self.mails >= self.params.limits.max_mails {
                    Some(Reply::too_many_messages())
                } else if parse_path(args.unwrap_or(""), true, &self.params.server_name).is_err() {
                    Some(Reply::sender_syntax_error())
                } else {
                    None
                }
            }
            FilterPhase::RcptTo => match &self.tx {
                None => Some(Reply::command_not_allowed()),
                Some(tx) if tx.recipients.len() >= self.params.limits.max_rcpt => {
                    Some(Reply::too_many_recipients())
                }
                Some(_) => parse_path(args.unwrap_or(""), false, &self.params.server_name)
                    .err()
                    .map(|_| Reply::recipient_syntax_error()),
            },
            FilterPhase::Data => {
                if args.is_some() {
                    Some(Reply::no_arguments_accepted())
                } else {
                    match &self.tx {
                        None => Some(Reply::command_not_allowed()),
                        Some(tx) if tx.recipients.is_empty() => Some(Reply::no_recipient()),
                        Some(_) => None,
                    }
                }
            }
            FilterPhase::Rset => {
                if args.is_some() {
                    Some(Reply::no_arguments_accepted())
                } else if self.helo.is_none() {
                    Some(Reply::command_not_allowed())
                } else {
                    None
                }
            }
            FilterPhase::Quit | FilterPhase::Noop | FilterPhase::Commit => {
                args.map(|_| Reply::no_arguments_accepted())
            }
            FilterPhase::Connect => None,
        };
        match refusal {
            Some(r) => {
                self.reply(r);
                false
            }
            None => true,
        }
    }

    /// Asks the filters of `phase` (filtered listeners), or goes straight on.
    fn filter_phase(&mut self, phase: FilterPhase, param: String) {
        if self.params.filtered {
            let query = match phase {
                FilterPhase::MailFrom | FilterPhase::RcptTo => {
                    let inner = param.strip_prefix('<').unwrap_or(&param);
                    inner.split('>').next().unwrap_or("").to_string()
                }
                _ => param.clone(),
            };
            self.ask(
                Waiting::Filter {
                    phase,
                    param: param.clone(),
                },
                Question::Filter {
                    phase,
                    param,
                    query,
                },
            );
        } else {
            self.proceed(phase, param);
        }
    }

    fn filter_verdict(&mut self, phase: FilterPhase, param: String, verdict: FilterVerdict) {
        match verdict {
            FilterVerdict::Proceed => self.proceed(phase, param),
            FilterVerdict::Junk => {
                match self.tx.as_mut() {
                    Some(tx) => tx.junk = true,
                    None => self.junk = true,
                }
                self.proceed(phase, param);
            }
            FilterVerdict::Rewrite(value) => {
                if phase == FilterPhase::Connect || self.check(phase, Some(&value)) {
                    self.proceed(phase, value);
                }
            }
            FilterVerdict::Reject(text) => self.filter_refusal(phase, &text, false),
            FilterVerdict::Disconnect(text) => self.filter_refusal(phase, &text, true),
        }
    }

    /// A filter's reject or disconnect: OpenSMTPD accepts only a valid 4xx/5xx reply line
    /// (anything else becomes `421 Internal server error`) and turns any 421 into a
    /// disconnect.
    fn filter_refusal(&mut self, phase: FilterPhase, text: &str, disconnect: bool) {
        let reply = match Reply::parse(text) {
            Some(r) if (400..600).contains(&r.code()) => r,
            _ => Reply::internal_server_error(),
        };
        let disconnect = disconnect || reply.code() == 421;
        if phase == FilterPhase::Connect && self.mode == Mode::Greeting {
            // No banner: the refusal is the greeting. Later HELO/EHLO get "not allowed",
            // QUIT works (OpenSMTPD behaves the same).
            self.mode = Mode::Command;
        }
        self.reply(reply);
        if disconnect {
            self.close();
        } else if phase == FilterPhase::Commit {
            self.drop_transaction();
        }
    }

    // ---- proceeding after the checks (and filters) ---------------------------------------

    fn proceed(&mut self, phase: FilterPhase, param: String) {
        match phase {
            FilterPhase::Connect => {
                if self.params.tls == TlsMode::Smtps {
                    self.start_tls();
                } else {
                    self.send_banner();
                }
            }
            FilterPhase::Helo => self.proceed_helo(HeloVerb::Helo, param),
            FilterPhase::Ehlo => self.proceed_helo(HeloVerb::Ehlo, param),
            FilterPhase::StartTls => {
                self.reply(Reply::ready_to_start_tls());
                self.enter("STATE_TLS");
                self.start_tls();
            }
            FilterPhase::Auth => self.proceed_auth(&param),
            FilterPhase::MailFrom => self.proceed_mail(&param),
            FilterPhase::RcptTo => self.proceed_rcpt(&param),
            FilterPhase::Data => match self.envelope() {
                Some(env) => self.ask(Waiting::OpenMessage, Question::OpenMessage(env)),
                None => self.reply(Reply::command_not_allowed()),
            },
            FilterPhase::Rset => {
                self.reply(Reply::reset_state());
                self.drop_transaction();
            }
            FilterPhase::Quit => {
                self.reply(Reply::bye());
                self.close();
            }
            FilterPhase::Noop => self.reply(Reply::ok()),
            FilterPhase::Commit => self.message_end(),
        }
    }

    fn send_banner(&mut self) {
        let banner = Reply::banner(&self.params.server_name);
        self.reply(banner);
        self.banner_sent = true;
        self.mode = Mode::Command;
    }

    /// Hands the connection to the TLS layer. Whatever plain text is buffered or still
    /// arrives before the handshake is thrown away.
    fn start_tls(&mut self) {
        self.input.clear();
        self.start = 0;
        self.discard_input = true;
        self.waiting = Some(Waiting::Tls);
        self.actions.push_back(Action::StartTls);
    }

    fn proceed_helo(&mut self, verb: HeloVerb, helo: String) {
        self.esmtp = verb == HeloVerb::Ehlo;
        self.helo = Some(helo.clone());
        self.event(Event::Identified {
            verb,
            helo: helo.clone(),
        });
        self.enter("STATE_HELO");
        let server = &self.params.server_name;
        let addr = self.params.client.address.bracketed();
        let reply = match verb {
            HeloVerb::Helo => Reply::helo(server, &helo, &addr),
            HeloVerb::Ehlo => Reply::ehlo(
                server,
                &helo,
                &addr,
                Extensions {
                    max_message_size: self.params.limits.max_message_size,
                    dsn: self.params.dsn,
                    starttls: self.starttls_offered() && !self.secure(),
                    auth: self.auth_advertised(),
                    pipelining: true,
                },
            ),
        };
        self.reply(reply);
    }

    fn proceed_auth(&mut self, args: &str) {
        match parse_auth_args(args) {
            AuthRequest::Plain(None) => {
                self.mode = Mode::AuthPlain;
                self.enter("STATE_AUTH_INIT");
                self.reply(Reply::auth_plain_challenge());
            }
            AuthRequest::Plain(Some(response)) => {
                self.mode = Mode::AuthPlain;
                self.enter("STATE_AUTH_INIT");
                self.auth_plain_response(&response);
            }
            AuthRequest::Login(Some(user)) if !user.is_empty() => {
                self.mode = Mode::AuthUsername;
                self.enter("STATE_AUTH_USERNAME");
                self.auth_login_user(&user);
            }
            AuthRequest::Login(_) => {
                self.mode = Mode::AuthUsername;
                self.enter("STATE_AUTH_USERNAME");
                self.reply(Reply::auth_username_challenge());
            }
            AuthRequest::Unsupported(method) => {
                self.reply(Reply::auth_method_not_supported(&method));
            }
        }
    }

    fn auth_syntax_error(&mut self) {
        self.reply(Reply::auth_syntax_error());
        self.login_user = None;
        self.mode = Mode::Command;
        self.enter("STATE_HELO");
    }

    fn ask_credentials(&mut self, credentials: Credentials) {
        self.login_user = Some(credentials.user.clone());
        self.ask(Waiting::Credentials, Question::Credentials(credentials));
    }

    fn auth_plain_response(&mut self, line: &str) {
        match decode_plain(line) {
            Some(c) => self.ask_credentials(c),
            None => self.auth_syntax_error(),
        }
    }

    fn auth_login_user(&mut self, line: &str) {
        match decode_login_user(line) {
            Some(user) => {
                self.login_user = Some(user);
                self.mode = Mode::AuthPassword;
                self.enter("STATE_AUTH_PASSWORD");
                self.reply(Reply::auth_password_challenge());
            }
            None => self.auth_syntax_error(),
        }
    }

    fn auth_login_password(&mut self, line: &str) {
        match decode_login_password(line) {
            Some(password) => {
                let user = self.login_user.take().unwrap_or_default();
                self.ask_credentials(Credentials {
                    mechanism: Mechanism::Login,
                    user,
                    password,
                });
            }
            None => self.auth_syntax_error(),
        }
    }

    fn credentials_verdict(&mut self, verdict: AuthVerdict) {
        let user = self.login_user.take().unwrap_or_default();
        let (result, reply) = match verdict {
            AuthVerdict::Accepted => (AuthResult::Ok, Reply::auth_succeeded()),
            AuthVerdict::Rejected => (AuthResult::PermFail, Reply::auth_failed()),
            AuthVerdict::TempFail => (AuthResult::TempFail, Reply::temporary_failure()),
        };
        self.event(Event::Authentication {
            user: user.clone(),
            result,
        });
        if verdict == AuthVerdict::Accepted {
            self.authenticated = true;
            self.auth_user = Some(user);
        }
        self.reply(reply);
        self.mode = Mode::Command;
        self.enter("STATE_HELO");
    }

    fn proceed_mail(&mut self, args: &str) {
        let path = match parse_path(args, true, &self.params.server_name) {
            Ok(p) => p,
            Err(_) => return self.reply(Reply::sender_syntax_error()),
        };
        let params = match parse_mail_params(path.params, self.params.dsn) {
            Ok(p) => p,
            Err(r) => return self.reply(r),
        };
        self.tx = Some(Transaction {
            msgid: None,
            sender: path.addr.clone(),
            mail_params: params.clone(),
            recipients: Vec::new(),
            pending_rcpt: None,
            junk: false,
            receiver: None,
            writer: None,
            size: 0,
            counted_twice: 0,
        });
        self.ask(
            Waiting::Sender,
            Question::Sender {
                sender: path.addr,
                params,
            },
        );
    }

    fn sender_verdict(&mut self, verdict: SenderVerdict) {
        match verdict {
            SenderVerdict::Accept { msgid } => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.msgid = Some(msgid);
                    self.reply(Reply::ok());
                } else {
                    // The transaction vanished meanwhile; do not leak the queue message.
                    self.actions.push_back(Action::Rollback(msgid));
                }
            }
            SenderVerdict::Refuse(r) => {
                self.tx = None;
                self.reply(r);
            }
            SenderVerdict::Disconnect(r) => {
                self.tx = None;
                self.reply(r);
                self.close();
            }
        }
    }

    fn proceed_rcpt(&mut self, args: &str) {
        let max_rcpt = self.params.limits.max_rcpt;
        match &self.tx {
            None => return self.reply(Reply::command_not_allowed()),
            Some(tx) if tx.recipients.len() >= max_rcpt => {
                return self.reply(Reply::too_many_recipients());
            }
            Some(_) => {}
        }
        let rcpt = match parse_path(args, false, &self.params.server_name) {
            Ok(p) => p,
            Err(_) => return self.reply(Reply::recipient_syntax_error()),
        };
        let params = match parse_rcpt_params(rcpt.params, self.params.dsn) {
            Ok(p) => p,
            Err(r) => return self.reply(r),
        };
        let Some(addr) = rcpt.addr else {
            return self.reply(Reply::recipient_syntax_error());
        };
        let Some(envelope) = self.envelope() else {
            return self.reply(Reply::command_not_allowed());
        };
        if let Some(tx) = self.tx.as_mut() {
            tx.pending_rcpt = Some((addr.clone(), params.clone()));
        }
        self.ask(
            Waiting::Recipient,
            Question::Recipient {
                rcpt: addr,
                params,
                envelope,
            },
        );
    }

    fn recipient_verdict(&mut self, verdict: RecipientVerdict) {
        let pending = self.tx.as_mut().and_then(|tx| tx.pending_rcpt.take());
        match verdict {
            RecipientVerdict::Accept { evpid } => {
                if let (Some(tx), Some((addr, params))) = (self.tx.as_mut(), pending) {
                    tx.recipients.push(Recipient {
                        addr,
                        params,
                        evpid,
                    });
                }
                self.reply(Reply::recipient_ok());
            }
            RecipientVerdict::Refuse(r) => self.reply(r),
            RecipientVerdict::Disconnect(r) => {
                self.reply(r);
                self.close();
            }
        }
    }

    fn open_verdict(&mut self, verdict: OpenVerdict) {
        let stamp = match verdict {
            OpenVerdict::Ready(stamp) => stamp,
            OpenVerdict::Disconnect(r) => {
                self.reply(r);
                return self.close();
            }
        };
        let Some(prelude) = self.message_prelude(&stamp) else {
            return self.reply(Reply::command_not_allowed());
        };
        if self.params.filtered
            && let Some(tx) = self.tx.as_mut()
        {
            tx.counted_twice = prelude.len();
        }
        let filtered = self.params.data_filtered;
        let prelude = if filtered {
            // smtpd's own lines are the first the data-line filters see, even before the
            // 354 (as OpenSMTPD sends them).
            self.actions
                .push_back(Action::FilterData(prelude.into_bytes()));
            String::new()
        } else {
            prelude
        };
        self.reply(Reply::start_mail_input());
        let masquerade_from = if self.params.masquerade && self.authenticated {
            self.tx
                .as_ref()
                .and_then(|tx| tx.sender.as_ref())
                .map(Mailaddr::to_string)
        } else {
            None
        };
        let writer = MessageWriter::new(MessageOptions {
            hostname: self.params.listener_hostname.clone(),
            add_date_and_message_id: self.params.local_listener,
            date: stamp.date,
            message_id: stamp.message_id,
            masquerade_from,
        });
        let limits = self.params.limits;
        let trace = crate::log::tracing("smtp");
        if let Some(tx) = self.tx.as_mut() {
            tx.writer = Some(writer);
            tx.receiver = Some(
                if filtered {
                    DataReceiver::raw(limits.max_message_size, limits.max_line)
                } else {
                    DataReceiver::with_line_limit(limits.max_message_size, limits.max_line)
                }
                // With data-line filters, the lines are traced as they come back.
                .traced(trace && !filtered),
            );
        }
        self.chunk.extend_from_slice(prelude.as_bytes());
        self.mode = Mode::Data;
        self.enter("STATE_BODY");
        // On a filtered listener 6.8 traces the message as its filters hand it back,
        // smtpd's own lines first.
        if trace && self.params.filtered {
            for line in prelude.lines() {
                tracing::trace!(target: "smtp", "<<< [MSG] {line}");
            }
        }
    }

    /// The message came back from the data-line filters: it is read as if the client had
    /// sent it (dot-unstuffing, the size limit, header rules), then the commit phase runs.
    fn filtered_data(&mut self, data: Result<Vec<u8>, Reply>) {
        let limits = self.params.limits;
        let Some(tx) = self.tx.as_mut() else {
            return;
        };
        let too_big = tx.receiver.as_ref().is_some_and(DataReceiver::too_big);
        let data = match data {
            Ok(d) => d,
            Err(r) => {
                self.reply(r);
                self.drop_transaction();
                self.enter("STATE_HELO");
                return;
            }
        };
        // A client's message that was already too big keeps its receiver, which refuses it
        // at the commit.
        if !too_big {
            let mut rx = DataReceiver::with_line_limit(limits.max_message_size, limits.max_line)
                .traced(crate::log::tracing("smtp"));
            let Some(writer) = tx.writer.as_mut() else {
                return;
            };
            let chunk = &mut self.chunk;
            let mut input = data;
            input.extend_from_slice(b".\r\n");
            let feed = rx.feed(&input, |line| {
                if writer.error().is_none() {
                    writer.line(line, chunk);
                }
            });
            if feed.outcome == DataOutcome::End {
                tracing::trace!(target: "smtp", "<<< [EOM]");
            }
            if feed.outcome == DataOutcome::LineTooLong {
                self.chunk.clear();
                self.reply(Reply::line_too_long());
                self.drop_transaction();
                self.enter("STATE_HELO");
                return;
            }
            tx.receiver = Some(rx);
        }
        self.filter_phase(FilterPhase::Commit, String::new());
    }

    /// smtpd's own lines at the top of the message: `X-Spam: Yes` for junk, then Received.
    fn message_prelude(&self, stamp: &MessageStamp) -> Option<String> {
        let tx = self.tx.as_ref()?;
        let mut prelude = String::new();
        if self.junk || tx.junk {
            prelude.push_str("X-Spam: Yes\n");
        }
        let auth_user = self.auth_user_text();
        let single_rcpt = match tx.recipients.as_slice() {
            [only] => Some(&only.addr),
            _ => None,
        };
        prelude.push_str(&received_header(&ReceivedFields {
            helo: self.helo.as_deref().unwrap_or(""),
            client: &self.params.client,
            mask_source: self.params.mask_source,
            server_name: &self.params.server_name,
            esmtp: self.esmtp,
            tls: self.tls.as_ref(),
            authenticated: self.authenticated,
            received_auth: self.params.received_auth,
            auth_user: auth_user.as_deref(),
            msgid: tx.msgid?,
            single_rcpt,
            date: &stamp.date,
        }));
        Some(prelude)
    }

    /// The final dot, after the commit filters: refuse a broken message, or ask the queue to
    /// commit it.
    fn message_end(&mut self) {
        let Some(tx) = self.tx.as_mut() else {
            return;
        };
        let too_big = tx.receiver.as_ref().is_some_and(DataReceiver::too_big);
        let verdict = match tx.writer.as_mut() {
            _ if too_big => Err(None),
            Some(w) => w.finish(&mut self.chunk).map_err(Some),
            None => Ok(()),
        };
        tx.receiver = None;
        tx.writer = None;
        let refusal = match verdict {
            Ok(()) => None,
            Err(None) => Some(Reply::message_too_big()),
            Err(Some(MessageError::Loop)) => Some(Reply::loop_detected()),
            Err(Some(MessageError::NotCompliant)) => Some(Reply::not_rfc2822_compliant()),
        };
        if let Some(r) = refusal {
            self.chunk.clear();
            self.reply(r);
            self.drop_transaction();
            self.enter("STATE_HELO");
            return;
        }
        self.flush_chunk();
        let size = self.tx.as_ref().map_or(0, |tx| tx.size + tx.counted_twice);
        match self.envelope() {
            Some(envelope) => {
                self.ask(
                    Waiting::CommitMessage,
                    Question::CommitMessage { envelope, size },
                );
            }
            None => self.drop_transaction(),
        }
    }

    fn commit_verdict(&mut self, verdict: CommitVerdict) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        match verdict {
            CommitVerdict::Committed => {
                let Some(msgid) = tx.msgid else {
                    return;
                };
                self.reply(Reply::message_accepted(msgid));
                self.event(Event::MessageAccepted {
                    msgid,
                    size: tx.size + tx.counted_twice,
                    esmtp: self.esmtp,
                    sender: tx.sender,
                    recipients: tx
                        .recipients
                        .into_iter()
                        .map(|r| (r.evpid, r.addr))
                        .collect(),
                });
                self.mails += 1;
                // 6.8 logs the message and its envelopes before this state change.
                self.enter_after_events("STATE_HELO");
            }
            CommitVerdict::Refuse(r) => {
                self.reply(r);
                self.enter("STATE_HELO");
            }
            CommitVerdict::Disconnect(r) => {
                self.reply(r);
                self.close();
            }
        }
    }
}

/// Entry point for a fuzzer: runs arbitrary client bytes through a session whose driver
/// accepts everything, in two uneven pieces. Must never panic, for any input.
pub fn fuzz_session(data: &[u8]) {
    use super::ids::{EnvelopeId, SessionId};
    use super::params::{ClientAddress, ClientInfo};
    let mut params = SessionParams::new(
        SessionId(1),
        "fuzz.example",
        ClientInfo::unknown(ClientAddress::Ip([127, 0, 0, 1].into())),
    );
    params.filtered = data.first().is_some_and(|b| b & 1 == 1);
    // An identity data-line filter: what goes out comes back.
    params.data_filtered = params.filtered && data.first().is_some_and(|b| b & 2 == 2);
    params.tls = TlsMode::StartTls;
    params.auth = AuthMode::Optional;
    params.limits.max_message_size = 4096;
    let mut s = Session::new(params);
    let mut filtered = Vec::new();
    let cut = data.len() / 2;
    for piece in [&data[..cut], &data[cut..]] {
        s.input(piece);
        for _ in 0..100_000 {
            let Some(action) = s.next_action() else { break };
            let question = match action {
                Action::Ask(q) => *q,
                Action::FilterData(lines) => {
                    for line in lines.split(|&b| b == b'\n') {
                        if line != b"." && filtered.len() < 1 << 16 {
                            filtered.extend_from_slice(line);
                            filtered.extend_from_slice(b"\r\n");
                        }
                    }
                    continue;
                }
                Action::StartTls => {
                    s.tls_established(TlsInfo {
                        version: "TLSv1.3".into(),
                        cipher: "TLS_AES_128_GCM_SHA256".into(),
                        bits: 128,
                        client_cert: super::params::ClientCert::None,
                    });
                    continue;
                }
                _ => continue,
            };
            let answer = match question {
                Question::Filter { .. } => Answer::Filter(FilterVerdict::Proceed),
                Question::Sender { .. } => {
                    Answer::Sender(SenderVerdict::Accept { msgid: MsgId(7) })
                }
                Question::Recipient { .. } => Answer::Recipient(RecipientVerdict::Accept {
                    evpid: EnvelopeId(7 << 32),
                }),
                Question::OpenMessage(_) => Answer::OpenMessage(OpenVerdict::Ready(MessageStamp {
                    date: "Thu, 1 Jan 1970 00:00:00 +0000 (UTC)".into(),
                    message_id: 1,
                })),
                Question::CommitMessage { .. } => Answer::CommitMessage(CommitVerdict::Committed),
                Question::Credentials(_) => Answer::Credentials(AuthVerdict::Rejected),
                Question::FilteredData => Answer::FilteredData(Ok(std::mem::take(&mut filtered))),
            };
            let _ = s.answer(answer);
        }
    }
    s.abort();
}
