//! smtpd: a mail transfer agent that speaks OpenSMTPD's smtpd.conf language.
//!
//! Mail flows one way through the crate: the configuration ([`config`]) is
//! compiled once into an immutable rule graph; the SMTP side ([`smtp`]) asks
//! that graph what to do at each phase; accepted messages are handed to the
//! durable [`queue`], which owns every fsync; delivery reads from the queue.

pub mod config;
pub mod control;
pub mod deliver;
pub mod dns;
pub mod expand;
pub mod fdpass;
pub mod log;
pub mod privsep;
pub mod processor;
pub mod queue;
pub mod rules;
pub mod smtp;
pub mod srs;
pub mod table;
pub mod tls;
