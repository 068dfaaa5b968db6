//! Local delivery: putting a queued message into a mailbox, the way
//! OpenSMTPD 6.8's delivery agents do (maildir, mbox, mda, lmtp, and the
//! file and pipe destinations that aliases and `.forward` files produce).
//!
//! How one delivery runs:
//!
//! ```text
//! DeliveryAgent::deliver(request)            privileged side (root, or the smtpd user)
//!   ├─ identity, root refusal, loop check    (message::has_delivery_loop)
//!   ├─ mbox: create /var/mail/USER, dot-lock  (mbox::prepare_mailbox, mbox::DotLock)
//!   └─ helper process as the recipient ───▶  run::run_job     (privsep: re-exec, uid/gid dropped)
//!                                              ├─ format specifiers   (format, shell)
//!                                              ├─ maildir / mbox / mda / lmtp
//!                                              └─ Outcome on fd 3 ──▶ result::DeliveryResult
//! ```
//!
//! Everything that touches the recipient's files or runs the recipient's
//! commands happens in a process that already runs as the recipient
//! ([`privsep`] explains why it is a re-executed helper and not a fork).
//! When smtpd does not run as root there is nothing to drop and the job
//! runs in the calling process, as the current user.
//!
//! Client-controlled text never reaches a shell as syntax: values expanded
//! into a command are escaped as OpenSMTPD escapes them *and* quoted for
//! the shell context they land in ([`shell`]); mbox, maildir, lmtp and file
//! deliveries use no shell at all.
//!
//! One file per concept:
//! * [`request`]: what a delivery needs, and the job handed to the helper;
//! * [`format`]: `%{...}` format specifiers; [`shell`]: quoting for `/bin/sh -c`;
//! * [`message`]: the loop check, `Return-Path:`/`Delivered-To:`, line reading;
//! * [`maildir`], [`mbox`], [`mda`], [`lmtp`]: the methods;
//! * [`run`]: one job in the current process; [`privsep`]: the identity change;
//! * [`worker`]: long-lived maildir helpers, one per recipient identity;
//! * [`result`]: exit statuses to `Ok`/`TempFail`/`PermFail` and their texts;
//! * [`log`]: the `mda delivery` log line and `duration_to_text`.

pub mod format;
pub mod lmtp;
pub mod log;
pub mod maildir;
pub mod mbox;
pub mod mda;
pub mod message;
pub mod mta;
pub mod privsep;
pub mod relay;
pub mod request;
pub mod result;
pub mod run;
pub mod runner;
pub mod shell;
pub mod worker;

pub use format::{FormatError, FormatVars, MailAddr};
pub use log::{duration_to_text, mda_delivery_line};
pub use privsep::{DeliveryAgent, HelperProgram, deliver, helper_main_if_requested};
pub use request::{Account, DeliveryRequest, EnvelopeInfo, LmtpRecipient, MessageSource, Method};
pub use result::{DeliveryResult, Exit, Outcome, Status};
