//! What one local delivery needs, and the job handed to the delivery helper.
//!
//! A [`DeliveryRequest`] is what the scheduler side knows about one
//! envelope: the method of the action, the recipient's userbase record, the
//! envelope addresses and the queued message. The privileged side turns it
//! into a [`Job`] (identity resolved, message opened) that the helper
//! process runs as the recipient. The job crosses the process boundary as
//! text in one environment variable; the message crosses it as an open
//! file descriptor.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;

use super::format::FormatVars;

/// A system or userbase account: who a delivery is for or runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// User name.
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Numeric group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

impl Account {
    /// Looks a user up in the system password database (`user NAME` of an
    /// action, `getpwnam`). `None` when there is no such user.
    pub fn from_system_user(name: &str) -> Option<Account> {
        let user = nix::unistd::User::from_name(name).ok()??;
        Some(Account {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir.to_string_lossy().into_owned(),
        })
    }

    /// The account the current process runs as (used when smtpd is not root).
    pub fn current() -> Account {
        let uid = nix::unistd::geteuid();
        let gid = nix::unistd::getegid();
        match nix::unistd::User::from_uid(uid) {
            Ok(Some(user)) => Account {
                name: user.name,
                uid: uid.as_raw(),
                gid: gid.as_raw(),
                home: user.dir.to_string_lossy().into_owned(),
            },
            _ => Account {
                name: uid.to_string(),
                uid: uid.as_raw(),
                gid: gid.as_raw(),
                home: "/".into(),
            },
        }
    }
}

/// Whom `lmtp` names in `RCPT TO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LmtpRecipient {
    /// The local user name (`lmtp "D"`, `mail.lmtp -u`).
    User,
    /// The expanded destination address (`lmtp "D" rcpt-to`, `mail.lmtp -r`).
    Recipient,
}

/// The local delivery method (§5.1), or the destination an alias or
/// `.forward` file substituted for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// `maildir ["PATH"] [junk]`; `path` may hold format specifiers and
    /// `~/`; `None` means `~/Maildir` of the delivery user.
    Maildir {
        /// The maildir, unexpanded.
        path: Option<String>,
        /// File mail flagged `X-Spam: yes` into `.Junk`.
        junk: bool,
    },
    /// `mbox`: append to the user's mailbox in the mail spool (mail.local).
    Mbox,
    /// `mda "COMMAND"`: run through `/bin/sh -c`, message on stdin.
    Mda {
        /// The command, unexpanded.
        command: String,
    },
    /// `lmtp "DEST" [rcpt-to]`: hand the message to an LMTP server.
    Lmtp {
        /// `host:port`, `[addr]:port` or an absolute UNIX socket path, unexpanded.
        destination: String,
        /// What goes in `RCPT TO`.
        rcpt_to: LmtpRecipient,
    },
    /// A `/path` destination from an alias or `.forward` (mail.mboxfile).
    File {
        /// The file, unexpanded.
        path: String,
    },
    /// A `|command` destination from an alias or `.forward`.
    Pipe {
        /// The command, unexpanded.
        command: String,
    },
    /// `forward-only`: there is no local delivery; an envelope here is a
    /// configuration problem (OpenSMTPD 6.8 crashes the delivery process).
    ForwardOnly,
    /// `expand-only`: as `ForwardOnly`.
    ExpandOnly,
}

impl Method {
    /// Does this method come from an alias or `.forward` file (`mda-exec`)?
    pub fn is_alias_destination(&self) -> bool {
        matches!(self, Method::File { .. } | Method::Pipe { .. })
    }

    /// The word used in the job encoding.
    fn kind(&self) -> &'static str {
        match self {
            Method::Maildir { .. } => "maildir",
            Method::Mbox => "mbox",
            Method::Mda { .. } => "mda",
            Method::Lmtp { .. } => "lmtp",
            Method::File { .. } => "file",
            Method::Pipe { .. } => "pipe",
            Method::ForwardOnly => "forward-only",
            Method::ExpandOnly => "expand-only",
        }
    }
}

/// The envelope fields a delivery uses (format specifiers, headers,
/// environment, the log line).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvelopeInfo {
    /// Envelope id, for the log line.
    pub evpid: u64,
    /// Envelope sender, `user@domain`, empty for `<>`.
    pub sender: String,
    /// Original recipient as given in RCPT TO (qualified).
    pub rcpt: String,
    /// The address this delivery descends from (after aliases/.forward).
    pub dest: String,
    /// The `+detail` of the recipient, lower-cased (`EXTENSION`, maildir folder).
    pub subaddress: String,
}

/// Where the message comes from. The queue owns messages; delivery only reads.
#[derive(Debug)]
pub enum MessageSource {
    /// A file the privileged side can open for reading.
    Path(PathBuf),
    /// An already open message file.
    File(File),
}

/// One local delivery, as the scheduler side asks for it.
#[derive(Debug)]
pub struct DeliveryRequest {
    /// The method of the action (or the alias/.forward destination).
    pub method: Method,
    /// The wrapper command of `wrapper NAME` (`%{mda}` is the real
    /// command); only `mda` commands and pipes can be wrapped here.
    pub wrapper: Option<String>,
    /// The recipient's userbase record (`%{user.username}`, `%{user.directory}`).
    pub userinfo: Account,
    /// `user NAME` of the action, already looked up; `None` = `userinfo`.
    pub run_as: Option<Account>,
    /// Envelope fields.
    pub envelope: EnvelopeInfo,
    /// The queued message.
    pub message: MessageSource,
}

impl DeliveryRequest {
    /// The identity the delivery runs as (`forkmda`): `user NAME` when
    /// given, else the userbase record; a root `user NAME` does not apply
    /// to alias/.forward destinations, which run as the recipient.
    pub fn identity(&self) -> &Account {
        match &self.run_as {
            Some(run_as) if run_as.uid == 0 && self.method.is_alias_destination() => &self.userinfo,
            Some(run_as) => run_as,
            None => &self.userinfo,
        }
    }
}

/// What the helper process runs: a request with the identity resolved and
/// the agent's settings attached; the message travels separately (stdin).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// The method.
    pub method: Method,
    /// The wrapper command, if any.
    pub wrapper: Option<String>,
    /// The userbase record.
    pub userinfo: Account,
    /// The identity the job runs as.
    pub identity: Account,
    /// Envelope fields.
    pub envelope: EnvelopeInfo,
    /// The mail spool for `mbox` (`/var/mail`).
    pub mbox_spool: String,
    /// The privileged side already holds `USER.lock` in the spool.
    pub mbox_dotlocked: bool,
    /// Sub-addressing delimiter for `%{...:strip}`.
    pub subaddress_delimiter: char,
    /// Time limit of a delivery program, in seconds (OpenSMTPD: 300).
    pub timeout_secs: u64,
}

impl Job {
    /// The format specifier values of this job.
    pub fn format_vars(&self) -> FormatVars {
        let mut vars = FormatVars::new(
            &self.envelope.sender,
            &self.envelope.rcpt,
            &self.envelope.dest,
            &self.userinfo.name,
            &self.userinfo.home,
        );
        vars.subaddress_delimiter = self.subaddress_delimiter;
        vars
    }

    /// The job as `key=value` lines (the helper's environment variable).
    pub fn encode(&self) -> String {
        let mut fields: Vec<(String, String)> = Vec::new();
        let mut push = |k: &str, v: String| fields.push((k.to_string(), v));
        push("method", self.method.kind().to_string());
        match &self.method {
            Method::Maildir { path, junk } => {
                if let Some(p) = path {
                    push("path", p.clone());
                }
                push("junk", if *junk { "1" } else { "0" }.to_string());
            }
            Method::Mda { command } | Method::Pipe { command } => push("command", command.clone()),
            Method::Lmtp {
                destination,
                rcpt_to,
            } => {
                push("destination", destination.clone());
                let r = if *rcpt_to == LmtpRecipient::User {
                    "user"
                } else {
                    "recipient"
                };
                push("rcpt-to", r.to_string());
            }
            Method::File { path } => push("path", path.clone()),
            Method::Mbox | Method::ForwardOnly | Method::ExpandOnly => {}
        }
        if let Some(w) = &self.wrapper {
            push("wrapper", w.clone());
        }
        for (prefix, a) in [("userinfo", &self.userinfo), ("identity", &self.identity)] {
            push(&format!("{prefix}.name"), a.name.clone());
            push(&format!("{prefix}.uid"), a.uid.to_string());
            push(&format!("{prefix}.gid"), a.gid.to_string());
            push(&format!("{prefix}.home"), a.home.clone());
        }
        push("evpid", self.envelope.evpid.to_string());
        push("sender", self.envelope.sender.clone());
        push("rcpt", self.envelope.rcpt.clone());
        push("dest", self.envelope.dest.clone());
        push("subaddress", self.envelope.subaddress.clone());
        push("mbox-spool", self.mbox_spool.clone());
        push(
            "mbox-dotlocked",
            if self.mbox_dotlocked { "1" } else { "0" }.to_string(),
        );
        push("delimiter", self.subaddress_delimiter.to_string());
        push("timeout", self.timeout_secs.to_string());

        let mut out = String::new();
        for (k, v) in fields {
            out.push_str(&k);
            out.push('=');
            escape_into(&v, &mut out);
            out.push('\n');
        }
        out
    }

    /// Parses [`Job::encode`]'s output.
    pub fn decode(text: &str) -> Result<Job, String> {
        let mut map = HashMap::new();
        for line in text.lines() {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("bad job line {line:?}"))?;
            map.insert(k.to_string(), unescape(v)?);
        }
        let get = |k: &str| {
            map.get(k)
                .cloned()
                .ok_or_else(|| format!("job field {k} missing"))
        };
        let num = |k: &str| -> Result<u64, String> {
            get(k)?
                .parse()
                .map_err(|_| format!("job field {k} not a number"))
        };
        let id = |k: &str| -> Result<u32, String> {
            get(k)?
                .parse()
                .map_err(|_| format!("job field {k} not an id"))
        };
        let flag = |k: &str| -> Result<bool, String> { Ok(get(k)? == "1") };

        let method = match get("method")?.as_str() {
            "maildir" => Method::Maildir {
                path: map.get("path").cloned(),
                junk: flag("junk")?,
            },
            "mbox" => Method::Mbox,
            "mda" => Method::Mda {
                command: get("command")?,
            },
            "pipe" => Method::Pipe {
                command: get("command")?,
            },
            "lmtp" => Method::Lmtp {
                destination: get("destination")?,
                rcpt_to: if get("rcpt-to")? == "user" {
                    LmtpRecipient::User
                } else {
                    LmtpRecipient::Recipient
                },
            },
            "file" => Method::File { path: get("path")? },
            "forward-only" => Method::ForwardOnly,
            "expand-only" => Method::ExpandOnly,
            other => return Err(format!("unknown method {other:?}")),
        };
        let account = |p: &str| -> Result<Account, String> {
            Ok(Account {
                name: get(&format!("{p}.name"))?,
                uid: id(&format!("{p}.uid"))?,
                gid: id(&format!("{p}.gid"))?,
                home: get(&format!("{p}.home"))?,
            })
        };
        let delimiter = get("delimiter")?.chars().next().ok_or("empty delimiter")?;
        Ok(Job {
            method,
            wrapper: map.get("wrapper").cloned(),
            userinfo: account("userinfo")?,
            identity: account("identity")?,
            envelope: EnvelopeInfo {
                evpid: num("evpid")?,
                sender: get("sender")?,
                rcpt: get("rcpt")?,
                dest: get("dest")?,
                subaddress: get("subaddress")?,
            },
            mbox_spool: get("mbox-spool")?,
            mbox_dotlocked: flag("mbox-dotlocked")?,
            subaddress_delimiter: delimiter,
            timeout_secs: num("timeout")?,
        })
    }
}

/// Backslash escapes for the bytes a value cannot carry in one line of an
/// environment variable (a line end, a NUL, a CR that `lines()` would eat).
pub(crate) fn escape_into(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
}

/// Bytes as lower-case hex digits: how the helper and broker protocols carry bytes that
/// need not be text (a password, an output line).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of [`hex`] text; `None` for anything else.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

pub(crate) fn unescape(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            other => return Err(format!("bad escape \\{other:?} in job")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str, uid: u32) -> Account {
        Account {
            name: name.into(),
            uid,
            gid: uid,
            home: format!("/home/{name}"),
        }
    }

    fn job(method: Method) -> Job {
        Job {
            method,
            wrapper: Some("wrap \\ %{mda}\nsecond line\r".into()),
            userinfo: account("foo", 1000),
            identity: account("vmail", 2000),
            envelope: EnvelopeInfo {
                evpid: 0x23e4b886cb965599,
                sender: "a=b\\c@x".into(),
                rcpt: "Foo+Ext@MDA.test".into(),
                dest: "foo@mda.test".into(),
                subaddress: "ext".into(),
            },
            mbox_spool: "/var/mail".into(),
            mbox_dotlocked: true,
            subaddress_delimiter: '+',
            timeout_secs: 300,
        }
    }

    #[test]
    fn job_round_trips() {
        let methods = [
            Method::Maildir {
                path: Some("/vmail/%{rcpt}".into()),
                junk: true,
            },
            Method::Maildir {
                path: None,
                junk: false,
            },
            Method::Mbox,
            Method::Mda {
                command: "procmail -f \"%{sender}\"".into(),
            },
            Method::Pipe {
                command: "cat >> /tmp/x".into(),
            },
            Method::Lmtp {
                destination: "127.0.0.1:24".into(),
                rcpt_to: LmtpRecipient::User,
            },
            Method::Lmtp {
                destination: "/run/lmtp".into(),
                rcpt_to: LmtpRecipient::Recipient,
            },
            Method::File {
                path: "/var/log/mail.copy".into(),
            },
            Method::ForwardOnly,
            Method::ExpandOnly,
        ];
        for m in methods {
            let j = job(m);
            assert_eq!(Job::decode(&j.encode()).unwrap(), j);
        }
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(Job::decode("method=maildir\n").is_err());
        assert!(Job::decode("nonsense").is_err());
        let text = job(Method::Mbox)
            .encode()
            .replace("method=mbox", "method=rm");
        assert!(Job::decode(&text).is_err());
        let text = job(Method::Mbox)
            .encode()
            .replace("timeout=300", "timeout=x");
        assert!(Job::decode(&text).is_err());
    }

    #[test]
    fn identity_follows_forkmda() {
        let req = |method: Method, run_as: Option<Account>| DeliveryRequest {
            method,
            wrapper: None,
            userinfo: account("foo", 1000),
            run_as,
            envelope: EnvelopeInfo::default(),
            message: MessageSource::Path("/dev/null".into()),
        };
        assert_eq!(req(Method::Mbox, None).identity().name, "foo");
        assert_eq!(
            req(Method::Mbox, Some(account("vmail", 2000)))
                .identity()
                .name,
            "vmail"
        );
        assert_eq!(
            req(Method::Mbox, Some(account("root", 0))).identity().name,
            "root"
        );
        let pipe = Method::Pipe {
            command: "x".into(),
        };
        assert_eq!(req(pipe, Some(account("root", 0))).identity().name, "foo");
    }
}
