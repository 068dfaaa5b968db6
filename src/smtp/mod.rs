//! The SMTP wire side, sans I/O: command parser, DATA receiver, replies with OpenSMTPD's
//! texts, and the session state machine that ties them together.
//!
//! Bytes come in through [`Session::input`]; replies, questions for the policy and the
//! queue, message bytes and log facts come out as [`Action`]s. The tokio connection driver,
//! TLS, credential checks, filters and the queue live elsewhere and plug in by answering the
//! session's [`Question`]s. Each file owns one concept:
//!
//! | file | owns |
//! |---|---|
//! | `reply.rs` | every server reply and its exact text |
//! | `command.rs` | command lines → verb + arguments; MAIL/RCPT parameters |
//! | `address.rs` | the project's one mail address type and path parser |
//! | `auth.rs` | AUTH PLAIN / LOGIN decoding |
//! | `data.rs` | DATA bytes → message lines; end of data; smuggling safety |
//! | `message.rs` | header processing on the way to the queue (Bcc, To/Cc/From, loops) |
//! | `received.rs` | the Received header and the date format |
//! | `params.rs` | what the session knows before it starts |
//! | `action.rs` | the session ↔ driver contract |
//! | `ids.rs` | session, message and envelope ids |
//! | `session.rs` | the state machine |
//! | `listen.rs` | listening sockets (backlog, fd limit) |
//! | `server.rs` | accept loops, session cap, the connection driver |

pub mod action;
pub mod address;
pub mod auth;
pub mod command;
pub mod data;
pub mod enqueue;
pub mod ids;
pub mod listen;
pub mod message;
pub mod params;
pub mod proxy;
pub mod received;
pub mod reply;
pub mod server;
pub mod session;

#[cfg(test)]
mod session_tests;

pub use action::{
    Action, Answer, AuthResult, AuthVerdict, CommitVerdict, Envelope, Event, FilterPhase,
    FilterVerdict, MessageStamp, OpenVerdict, Question, Recipient, RecipientVerdict, SenderVerdict,
};
pub use address::{AddressError, Mailaddr, parse_path, valid_domainpart, valid_localpart};
pub use auth::{Credentials, Mechanism};
pub use command::{CommandLine, MailParams, RcptParams, Verb, parse_command};
pub use data::{DataOutcome, DataReceiver};
pub use ids::{EnvelopeId, MsgId, SessionId};
pub use message::{MessageError, MessageWriter};
pub use params::{
    AuthMode, ClientAddress, ClientCert, ClientInfo, Fcrdns, Limits, SessionParams, TlsInfo,
    TlsMode,
};
pub use received::time_to_text;
pub use reply::{EnhancedCode, HeloVerb, Reply};
pub use session::{AnswerError, Session};
