//! The contract between the session state machine and whoever drives it.
//!
//! The session does no I/O and makes no policy decisions. It turns client bytes into
//! [`Action`]s: bytes to send, questions to answer, message bytes for the queue, facts for
//! the log. At each point where OpenSMTPD would consult another process (filters in the
//! lookup process, the queue, the credentials table, the TLS engine) the session emits an
//! [`Action::Ask`] and stops reading input until the driver calls `Session::answer` with the
//! matching [`Answer`]. Input that arrives meanwhile is kept and processed in order
//! afterwards, which is what makes pipelining work.
//!
//! Questions are split the way OpenSMTPD splits its work:
//! * [`Question::Filter`] — only on filtered listeners, once per command phase, *after* the
//!   command passed its own syntax and state checks (a bad command never reaches filters);
//! * [`Question::Sender`] — the `senders` check and the creation of the queue message, which
//!   yields the message id used in Received and in the final 250;
//! * [`Question::Recipient`] — routing and expansion of one RCPT (the match rules), plus the
//!   envelope write;
//! * [`Question::OpenMessage`] / [`Question::CommitMessage`] — the queue's message file;
//! * [`Question::Credentials`] — the AUTH check.

use super::address::Mailaddr;
use super::auth::Credentials;
use super::command::{MailParams, RcptParams};
use super::ids::{EnvelopeId, MsgId};
use super::reply::{HeloVerb, Reply};

/// Something the driver must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the client (one or more complete replies).
    Send(Vec<u8>),
    /// Answer this question with [`Session::answer`](super::session::Session::answer); the
    /// session processes no input until then. Boxed: questions carry whole envelopes, and
    /// every other action is small.
    Ask(Box<Question>),
    /// Flush pending sends, then run the TLS handshake on the connection and report it with
    /// `Session::tls_established` or `Session::tls_failed`. Plain-text bytes received after
    /// the STARTTLS command are discarded by the session (RFC 3207).
    StartTls,
    /// Append these bytes to the open queue message (LF line endings, smtpd's own headers
    /// first).
    MessageData(Vec<u8>),
    /// Send these message lines (each ended by LF, as received: still dot-stuffed, the
    /// final `.` included) to the data-line filters; only with `data_filtered`.
    FilterData(Vec<u8>),
    /// Discard the queue message created for this transaction (RSET, refused message, a
    /// close before the final dot). Never sent once [`Question::CommitMessage`] was asked.
    Rollback(MsgId),
    /// A fact to log or report; needs no answer.
    Event(Event),
    /// Flush pending sends, then close the connection (logged as `smtp disconnected
    /// reason=quit`, which OpenSMTPD also uses for 421s, filter disconnects and bad input).
    Close,
}

/// The filter phases of OpenSMTPD, in its numbering order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FilterPhase {
    /// After rDNS, before the banner; the parameter is the client address text.
    Connect,
    /// HELO.
    Helo,
    /// EHLO.
    Ehlo,
    /// STARTTLS.
    StartTls,
    /// AUTH (parameter: the AUTH arguments).
    Auth,
    /// MAIL FROM.
    MailFrom,
    /// RCPT TO.
    RcptTo,
    /// DATA.
    Data,
    /// RSET.
    Rset,
    /// QUIT.
    Quit,
    /// NOOP.
    Noop,
    /// The final dot.
    Commit,
}

impl FilterPhase {
    /// The phase name used in smtpd.conf and in filter traces.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterPhase::Connect => "connect",
            FilterPhase::Helo => "helo",
            FilterPhase::Ehlo => "ehlo",
            FilterPhase::StartTls => "starttls",
            FilterPhase::Auth => "auth",
            FilterPhase::MailFrom => "mail-from",
            FilterPhase::RcptTo => "rcpt-to",
            FilterPhase::Data => "data",
            FilterPhase::Rset => "rset",
            FilterPhase::Quit => "quit",
            FilterPhase::Noop => "noop",
            FilterPhase::Commit => "commit",
        }
    }
}

/// The transaction as known so far: what the queue needs to open and commit the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The queue message created at MAIL FROM.
    pub msgid: MsgId,
    /// HELO/EHLO argument.
    pub helo: String,
    /// EHLO rather than HELO.
    pub esmtp: bool,
    /// The reverse path; `None` for `<>`.
    pub sender: Option<Mailaddr>,
    /// MAIL FROM parameters.
    pub mail_params: MailParams,
    /// Accepted recipients, in order.
    pub recipients: Vec<Recipient>,
    /// Marked as junk by a filter (the message starts with `X-Spam: Yes`).
    pub junk: bool,
    /// Authenticated user name, if the session authenticated.
    pub auth_user: Option<String>,
    /// The session is under TLS.
    pub secure: bool,
}

/// One accepted RCPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// The address as accepted (qualified, case preserved).
    pub addr: Mailaddr,
    /// Its DSN parameters.
    pub params: RcptParams,
    /// The (last) envelope the queue created for it.
    pub evpid: EnvelopeId,
}

/// A question the session waits on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Question {
    /// Run the filter chain of this phase.
    Filter {
        /// Which phase.
        phase: FilterPhase,
        /// The parameter as OpenSMTPD hands it to filter processes (the command arguments;
        /// the address text for connect; empty for argument-less phases).
        param: String,
        /// What builtin filters match on: for mail-from and rcpt-to the text between `<` and
        /// `>` (not qualified, empty for `<>`); otherwise the same as `param`.
        query: String,
    },
    /// MAIL FROM passed every check: apply the `senders` table if any and create the queue
    /// message. Answer with [`Answer::Sender`].
    Sender {
        /// The reverse path; `None` for `<>`.
        sender: Option<Mailaddr>,
        /// Its parameters.
        params: MailParams,
    },
    /// RCPT TO passed every check: route it through the match rules and expansion and write
    /// its envelope(s). Answer with [`Answer::Recipient`].
    Recipient {
        /// The qualified address.
        rcpt: Mailaddr,
        /// Its parameters.
        params: RcptParams,
        /// The transaction so far (sender, earlier recipients).
        envelope: Envelope,
    },
    /// DATA passed every check: open the message file. Answer with [`Answer::OpenMessage`].
    OpenMessage(Envelope),
    /// The final dot, with no error: make the message durable. Answer with
    /// [`Answer::CommitMessage`]; the session replies only after that.
    CommitMessage {
        /// The complete transaction.
        envelope: Envelope,
        /// Bytes written to the message (smtpd's headers included; counted twice when the
        /// listener has filters, as 6.8 does).
        size: usize,
    },
    /// Check these AUTH credentials. Answer with [`Answer::Credentials`]; on failure, delay
    /// the answer (OpenSMTPD waits a random 0–1 s against timing attacks).
    Credentials(Credentials),
    /// The final `.` went to the data-line filters: collect what they give back. Answer
    /// with [`Answer::FilteredData`].
    FilteredData,
}

/// The driver's answer to the pending [`Question`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// For [`Question::Filter`].
    Filter(FilterVerdict),
    /// For [`Question::Sender`].
    Sender(SenderVerdict),
    /// For [`Question::Recipient`].
    Recipient(RecipientVerdict),
    /// For [`Question::OpenMessage`].
    OpenMessage(OpenVerdict),
    /// For [`Question::CommitMessage`].
    CommitMessage(CommitVerdict),
    /// For [`Question::Credentials`].
    Credentials(AuthVerdict),
    /// For [`Question::FilteredData`]: the message as the data-line filters gave it back
    /// (lines ended by CRLF, dot-stuffed, without the final `.`), or the reply refusing it.
    FilteredData(Result<Vec<u8>, super::reply::Reply>),
}

/// Outcome of a filter chain for one phase (OpenSMTPD's filter decisions, after `bypass` and
/// `report` were handled inside the chain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterVerdict {
    /// Run the command.
    Proceed,
    /// Mark the transaction (or, outside one, the session) as junk, then run the command.
    Junk,
    /// Send this reply instead of running the command. It must be a valid `4xx`/`5xx` reply
    /// line; anything else becomes `421 Internal server error`, and a `421` disconnects. At
    /// commit the transaction is rolled back.
    Reject(String),
    /// Send this reply, then close (same validity rule as `Reject`).
    Disconnect(String),
    /// Run the command with this parameter instead; its syntax is checked again.
    Rewrite(String),
}

/// Outcome of [`Question::Sender`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderVerdict {
    /// The queue message exists; `250 2.0.0 Ok`.
    Accept {
        /// Its id.
        msgid: MsgId,
    },
    /// Refuse the sender and stay (e.g. `530 Sender rejected`, `421 4.3.0 Temporary Error`
    /// after a senders lookup failure).
    Refuse(Reply),
    /// Refuse and close (queue failure: `421 4.3.0 Temporary Error`).
    Disconnect(Reply),
}

/// Outcome of [`Question::Recipient`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecipientVerdict {
    /// Routed and written; `250 2.1.5 Destination address valid: Recipient ok`.
    Accept {
        /// The last envelope created for it (logged as `evpid=`).
        evpid: EnvelopeId,
    },
    /// Refused (`550 Invalid recipient: <x>`, `451 Temporary failure: <x>`, ...; see the
    /// constructors in [`Reply`]); the transaction stays open.
    Refuse(Reply),
    /// Envelope write failure: reply (`421 4.3.0 Temporary failure`) and close.
    Disconnect(Reply),
}

/// Outcome of [`Question::OpenMessage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenVerdict {
    /// The message file is open; `354` follows.
    Ready(MessageStamp),
    /// The queue could not open it (`421 4.3.0 Temporary Error`): reply and close.
    Disconnect(Reply),
}

/// The facts from outside the session that go into smtpd's own headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageStamp {
    /// Reception time as [`time_to_text`](super::received::time_to_text) prints it.
    pub date: String,
    /// A fresh 64-bit number for an added `Message-ID:` (local listeners only).
    pub message_id: u64,
}

/// Outcome of [`Question::CommitMessage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitVerdict {
    /// Durable: `250 2.0.0 MSGID Message accepted for delivery`.
    Committed,
    /// Not accepted (temporary or permanent); reply and stay. The queue discards its own
    /// copy, so no [`Action::Rollback`] follows.
    Refuse(Reply),
    /// Not accepted: reply and close (`421 4.3.0 Temporary failure`).
    Disconnect(Reply),
}

/// Outcome of [`Question::Credentials`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthVerdict {
    /// `235 2.0.0 Authentication succeeded`.
    Accepted,
    /// `535 Authentication failed`.
    Rejected,
    /// Lookup error: `421 4.3.0 Temporary failure` (the session stays open, as in 6.8).
    TempFail,
}

/// Result of an authentication attempt, as logged (`result=ok|permfail|tempfail`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthResult {
    /// Accepted.
    Ok,
    /// Wrong credentials.
    PermFail,
    /// Lookup failure.
    TempFail,
}

impl AuthResult {
    /// The log word.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Ok => "ok",
            AuthResult::PermFail => "permfail",
            AuthResult::TempFail => "tempfail",
        }
    }
}

/// Facts for the `smtp` log lines (spec §9.2) and filter reports. The session never
/// formats log lines; the one logging module does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A command line read from the client, credentials masked as in `-T smtp` (report
    /// `protocol-client`); filtered sessions only.
    ClientLine(String),
    /// HELO/EHLO accepted (report `link-identify`).
    Identified {
        /// Which verb.
        verb: HeloVerb,
        /// The name given.
        helo: String,
    },
    /// A 4xx/5xx reply: `smtp failed-command command="..." result="..."`. `command` is the
    /// raw command line (to be C-escaped by the logger), or the pseudo commands
    /// `AUTH PLAIN (...)`, `AUTH LOGIN (username)`, `AUTH LOGIN (password)`.
    FailedCommand {
        /// The command line as received.
        command: Vec<u8>,
        /// The full reply text.
        result: String,
    },
    /// Input refused before any command: `smtp bad-input result="..."`.
    BadInput {
        /// The full reply text.
        result: String,
    },
    /// `smtp authentication user=USER result=...`.
    Authentication {
        /// The user name as sent (to be escaped by the logger).
        user: Vec<u8>,
        /// Outcome.
        result: AuthResult,
    },
    /// A committed message: `smtp message msgid=... size=... nrcpt=... proto=...` followed
    /// by one `smtp envelope evpid=... from=<...> to=<...>` per recipient.
    MessageAccepted {
        /// The message.
        msgid: MsgId,
        /// Bytes written to the queue, smtpd's headers included (twice when the listener
        /// has filters, as 6.8 counts them).
        size: usize,
        /// `ESMTP` (true) or `SMTP`.
        esmtp: bool,
        /// The reverse path; `None` for `<>`.
        sender: Option<Mailaddr>,
        /// Envelope id and address of each accepted recipient (`nrcpt` is their number).
        recipients: Vec<(EnvelopeId, Mailaddr)>,
    },
    /// A `-T smtp` trace line to write after the events before it (the state change that
    /// follows an accepted message's log lines in 6.8's trace).
    Trace(String),
}
