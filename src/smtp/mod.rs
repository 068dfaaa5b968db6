//! The SMTP wire side: command parser, DATA receiver, replies and the session state machine.
pub mod listen;
