//! How a delivery ended, in OpenSMTPD's words (`mda.c`, `smtpd.c`).
//!
//! Every method, whether it runs a program or writes a file itself, ends as
//! an [`Outcome`]: the exit status a delivery process would have had plus
//! the last line of its output. [`DeliveryResult::from_outcome`] then
//! applies OpenSMTPD's mapping, so a maildir that cannot be created logs
//! the same `Error (temporary failure: "mail.maildir: Permission denied")`
//! whether it came from `mail.maildir` or from our own writer:
//!
//! * exit 0 -> `Ok` / `Delivered` (unless input was left unread:
//!   `TempFail` `mda exited prematurely`);
//! * exit 71 (`EX_OSERR`) or 75 (`EX_TEMPFAIL`) -> `TempFail`, any other
//!   non-zero exit -> `PermFail`;
//! * killed by a signal -> `TempFail` (`terminated; signal N`,
//!   `terminated; timeout` for the 5-minute alarm);
//! * status text `Error (SYSEXIT_NAME: "LAST LINE")`, `Error ("LAST LINE")`
//!   for codes without a name, or the cause (`exited abnormally`) when the
//!   program printed nothing; the line is C-escaped (`vis`) and quoted.

use std::fmt;

/// `EX_DATAERR`: data format error.
pub const EX_DATAERR: i32 = 65;
/// `EX_NOUSER`: user unknown.
pub const EX_NOUSER: i32 = 67;
/// `EX_UNAVAILABLE`: service unavailable.
pub const EX_UNAVAILABLE: i32 = 69;
/// `EX_OSERR`: system resource problem (temporary).
pub const EX_OSERR: i32 = 71;
/// `EX_CANTCREAT`: can't create user output file.
pub const EX_CANTCREAT: i32 = 73;
/// `EX_TEMPFAIL`: temporary failure.
pub const EX_TEMPFAIL: i32 = 75;
/// `EX_NOPERM`: permission denied.
pub const EX_NOPERM: i32 = 77;
/// `EX_CONFIG`: local configuration error.
pub const EX_CONFIG: i32 = 78;

/// Room OpenSMTPD has for the quoted output line (`char out[256]`).
const OUTPUT_LINE_SIZE: usize = 256;

/// The delivery result class, as logged (`result=`) and reported to the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Delivered.
    Ok,
    /// Try again later.
    TempFail,
    /// Give up and bounce.
    PermFail,
}

impl Status {
    /// `Ok`, `TempFail` or `PermFail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "Ok",
            Status::TempFail => "TempFail",
            Status::PermFail => "PermFail",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a delivery process (real or emulated) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this status.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Killed by the delivery time limit (SIGALRM).
    Timeout,
    /// Killed on purpose by the delivering side, for this reason
    /// (OpenSMTPD: `IMSG_MDA_KILL`, e.g. `Error reading body`).
    Killed(String),
}

/// The end of one delivery attempt: exit status and last output line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// How it ended.
    pub exit: Exit,
    /// The last line the program printed (stdout and stderr together),
    /// unescaped, without its newline; `None` if it printed nothing.
    pub last_line: Option<Vec<u8>>,
    /// It exited before reading the whole message.
    pub premature: bool,
}

impl Outcome {
    /// A successful end.
    pub fn success() -> Outcome {
        Outcome {
            exit: Exit::Code(0),
            last_line: None,
            premature: false,
        }
    }

    /// A failed end with the message a helper program would have printed.
    pub fn failure(code: i32, line: impl Into<String>) -> Outcome {
        Outcome {
            exit: Exit::Code(code),
            last_line: Some(line.into().into_bytes()),
            premature: false,
        }
    }
}

/// A method that runs inside our process failing the way OpenSMTPD's
/// helper program would have: its exit code and its last output line
/// (`mail.maildir: Permission denied`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The sysexits(3) code the helper would exit with.
    pub code: i32,
    /// The line it would print, program name included.
    pub message: String,
}

impl Failure {
    /// A failure with an explicit code.
    pub fn new(code: i32, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// `err(EX_TEMPFAIL, ...)`: a temporary failure.
    pub fn temp(message: impl Into<String>) -> Failure {
        Failure::new(EX_TEMPFAIL, message)
    }
}

impl From<Failure> for Outcome {
    fn from(f: Failure) -> Outcome {
        Outcome::failure(f.code, f.message)
    }
}

pub use crate::log::strerror;

/// The result of one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryResult {
    /// `Ok`, `TempFail` or `PermFail`.
    pub status: Status,
    /// The text logged after `stat=` (e.g. `Delivered`,
    /// `Error (temporary failure: "temp failure")`).
    pub stat: String,
    /// The text recorded in the queue for bounces and `smtpctl show queue`
    /// (OpenSMTPD gives the queue the error without the `Error (...)` frame).
    pub error: String,
}

impl DeliveryResult {
    /// `Ok` / `Delivered`.
    pub fn delivered() -> DeliveryResult {
        DeliveryResult {
            status: Status::Ok,
            stat: "Delivered".into(),
            error: String::new(),
        }
    }

    /// A failure decided before any delivery process ran, with a bare text
    /// (`Loop detected`, `Permanent failure in user lookup`).
    pub fn plain(status: Status, text: &str) -> DeliveryResult {
        DeliveryResult {
            status,
            stat: text.into(),
            error: text.into(),
        }
    }

    /// A failure the privileged side decided with a sysexit code and a
    /// cause (`forkmda`: `delivery user 'x' does not exist`,
    /// `not allowed to deliver to: root`, `fork: ...`).
    pub fn refused(status: Status, sysexit: i32, cause: &str) -> DeliveryResult {
        DeliveryResult {
            status,
            stat: error_text(Some(sysexit), cause),
            error: cause.into(),
        }
    }

    /// The userbase lookup of the delivery user failed (`mda.c`): every
    /// envelope of the user fails with `Permanent failure in user lookup`
    /// (no such user) or `Temporary failure in user lookup`.
    pub fn user_lookup_failed(permanent: bool) -> DeliveryResult {
        if permanent {
            DeliveryResult::plain(Status::PermFail, "Permanent failure in user lookup")
        } else {
            DeliveryResult::plain(Status::TempFail, "Temporary failure in user lookup")
        }
    }

    /// `user NAME` of the action names no system user.
    pub fn unknown_delivery_user(name: &str) -> DeliveryResult {
        DeliveryResult::refused(
            Status::PermFail,
            EX_NOUSER,
            &format!("delivery user '{name}' does not exist"),
        )
    }

    /// OpenSMTPD's mapping of a delivery process's end (`mda.c`, `IMSG_MDA_DONE`).
    pub fn from_outcome(outcome: &Outcome) -> DeliveryResult {
        let (status, sysexit, cause) = match &outcome.exit {
            Exit::Code(0) if outcome.premature => {
                return DeliveryResult {
                    status: Status::TempFail,
                    stat: "Error (mda exited prematurely)".into(),
                    error: "mda exited prematurely".into(),
                };
            }
            Exit::Code(0) => return DeliveryResult::delivered(),
            Exit::Code(code) => {
                let status = if *code == EX_OSERR || *code == EX_TEMPFAIL {
                    Status::TempFail
                } else {
                    Status::PermFail
                };
                (status, Some(*code), "exited abnormally".to_string())
            }
            Exit::Signal(sig) => (Status::TempFail, None, format!("terminated; signal {sig}")),
            Exit::Timeout => (Status::TempFail, None, "terminated; timeout".to_string()),
            Exit::Killed(reason) => (Status::TempFail, None, reason.clone()),
        };
        let error = match &outcome.last_line {
            Some(line) => quote_output_line(line),
            None => cause,
        };
        DeliveryResult {
            status,
            stat: error_text(sysexit, &error),
            error,
        }
    }
}

/// `Error (NAME: TEXT)` or `Error (TEXT)`.
fn error_text(sysexit: Option<i32>, text: &str) -> String {
    match sysexit.and_then(sysexit_name) {
        Some(name) => format!("Error ({name}: {text})"),
        None => format!("Error ({text})"),
    }
}

/// The names `mda_sysexit_to_str` gives the sysexits(3) codes.
pub fn sysexit_name(code: i32) -> Option<&'static str> {
    Some(match code {
        64 => "command line usage error",
        65 => "data format error",
        66 => "cannot open input",
        67 => "user unknown",
        68 => "host name unknown",
        69 => "service unavailable",
        70 => "internal software error",
        71 => "system resource problem",
        72 => "critical OS file missing",
        73 => "can't create user output file",
        74 => "input/output error",
        75 => "temporary failure",
        76 => "remote error in protocol",
        77 => "permission denied",
        78 => "local configuration error",
        _ => return None,
    })
}

/// `"` + `strnvis(line, VIS_SAFE|VIS_CSTYLE|VIS_NL)` + `"`, cut where
/// OpenSMTPD's 256-byte buffer ends (never inside an escape sequence).
pub fn quote_output_line(line: &[u8]) -> String {
    // The C string ends at the first NUL.
    let line = line.split(|&b| b == 0).next().unwrap_or_default();
    let budget = OUTPUT_LINE_SIZE - 3; // opening quote, closing quote, NUL
    let mut out = String::from("\"");
    let mut used = 0;
    for (i, &c) in line.iter().enumerate() {
        let next = line.get(i + 1).copied().unwrap_or(0);
        let piece = vis_char(c, next);
        if used + piece.len() > budget {
            break;
        }
        used += piece.len();
        out.push_str(&piece);
    }
    out.push('"');
    out
}

/// `vis(3)` of one byte with `VIS_SAFE | VIS_CSTYLE | VIS_NL`.
fn vis_char(c: u8, next: u8) -> String {
    let graph = c.is_ascii_graphic();
    let visible = graph || c == b' ' || c == b'\t' || c == 0x08 || c == 0x07 || c == b'\r';
    if visible {
        return if c == b'\\' {
            "\\\\".into()
        } else {
            (c as char).to_string()
        };
    }
    match c {
        b'\n' => return "\\n".into(),
        0x0b => return "\\v".into(),
        0x0c => return "\\f".into(),
        0 => {
            return if (b'0'..=b'7').contains(&next) {
                "\\000".into()
            } else {
                "\\0".into()
            };
        }
        _ => {}
    }
    if c & 0x7f == b' ' {
        return format!("\\{:03o}", c);
    }
    let mut out = String::from("\\");
    let mut low = c;
    if c & 0x80 != 0 {
        low &= 0x7f;
        out.push('M');
    }
    if low.is_ascii_control() {
        out.push('^');
        out.push(if low == 0x7f {
            '?'
        } else {
            (low + b'@') as char
        });
    } else {
        out.push('-');
        out.push(low as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(c: i32, line: Option<&str>) -> DeliveryResult {
        DeliveryResult::from_outcome(&Outcome {
            exit: Exit::Code(c),
            last_line: line.map(|l| l.as_bytes().to_vec()),
            premature: false,
        })
    }

    #[test]
    fn observed_texts() {
        let r = code(67, Some("custom failure message"));
        assert_eq!(
            (r.status, r.stat.as_str()),
            (
                Status::PermFail,
                "Error (user unknown: \"custom failure message\")"
            )
        );
        assert_eq!(r.error, "\"custom failure message\"");
        let r = code(75, Some("temp failure"));
        assert_eq!(
            (r.status, r.stat.as_str()),
            (
                Status::TempFail,
                "Error (temporary failure: \"temp failure\")"
            )
        );
        let r = code(
            2,
            Some("/bin/sh: 1: cannot create /x/mda.out: Permission denied"),
        );
        assert_eq!(
            (r.status, r.stat.as_str()),
            (
                Status::PermFail,
                "Error (\"/bin/sh: 1: cannot create /x/mda.out: Permission denied\")"
            )
        );
        let r = DeliveryResult::from_outcome(&Outcome {
            exit: Exit::Signal(11),
            last_line: None,
            premature: false,
        });
        assert_eq!(
            (r.status, r.stat.as_str()),
            (Status::TempFail, "Error (terminated; signal 11)")
        );
    }

    #[test]
    fn mapping() {
        assert_eq!(code(0, Some("chatter")), DeliveryResult::delivered());
        assert_eq!(code(71, None).status, Status::TempFail);
        assert_eq!(
            code(71, None).stat,
            "Error (system resource problem: exited abnormally)"
        );
        assert_eq!(code(1, None).stat, "Error (exited abnormally)");
        assert_eq!(code(1, None).status, Status::PermFail);
        assert_eq!(code(69, Some("")).stat, "Error (service unavailable: \"\")");
        let t = DeliveryResult::from_outcome(&Outcome {
            exit: Exit::Timeout,
            last_line: Some(b"x".to_vec()),
            premature: false,
        });
        assert_eq!(
            (t.status, t.stat.as_str()),
            (Status::TempFail, "Error (\"x\")")
        );
        let t = DeliveryResult::from_outcome(&Outcome {
            exit: Exit::Timeout,
            last_line: None,
            premature: false,
        });
        assert_eq!(t.stat, "Error (terminated; timeout)");
        let p = DeliveryResult::from_outcome(&Outcome {
            exit: Exit::Code(0),
            last_line: None,
            premature: true,
        });
        assert_eq!(
            (p.status, p.stat.as_str()),
            (Status::TempFail, "Error (mda exited prematurely)")
        );
        let k = DeliveryResult::from_outcome(&Outcome {
            exit: Exit::Killed("Error reading body".into()),
            last_line: None,
            premature: false,
        });
        assert_eq!(
            (k.status, k.stat.as_str()),
            (Status::TempFail, "Error (Error reading body)")
        );
    }

    #[test]
    fn refusals() {
        let r = DeliveryResult::unknown_delivery_user("vmail");
        assert_eq!(
            r.stat,
            "Error (user unknown: delivery user 'vmail' does not exist)"
        );
        assert_eq!(r.status, Status::PermFail);
        let r = DeliveryResult::refused(
            Status::PermFail,
            EX_NOPERM,
            "not allowed to deliver to: root",
        );
        assert_eq!(
            r.stat,
            "Error (permission denied: not allowed to deliver to: root)"
        );
        assert_eq!(r.error, "not allowed to deliver to: root");
        assert_eq!(
            DeliveryResult::plain(Status::PermFail, "Loop detected").stat,
            "Loop detected"
        );
        let r = DeliveryResult::user_lookup_failed(true);
        assert_eq!(
            (r.status, r.stat.as_str()),
            (Status::PermFail, "Permanent failure in user lookup")
        );
        let r = DeliveryResult::user_lookup_failed(false);
        assert_eq!(
            (r.status, r.stat.as_str()),
            (Status::TempFail, "Temporary failure in user lookup")
        );
    }

    #[test]
    fn strerror_text() {
        let e = std::io::Error::from_raw_os_error(13);
        assert_eq!(strerror(&e), "Permission denied");
        assert_eq!(strerror(&std::io::Error::other("plain")), "plain");
    }

    #[test]
    fn vis_escaping() {
        assert_eq!(quote_output_line(b"a\tb\\c\"d"), "\"a\tb\\\\c\"d\"");
        assert_eq!(
            quote_output_line(b"x\ny\x0b\x0c\x01\x7f"),
            "\"x\\ny\\v\\f\\^A\\^?\""
        );
        assert_eq!(
            quote_output_line(b"\xe9\xa0\xff\x81"),
            "\"\\M-i\\240\\M^?\\M^A\""
        );
        assert_eq!(
            quote_output_line(b"bell\x07cr\rbs\x08"),
            "\"bell\x07cr\rbs\x08\""
        );
        assert_eq!(quote_output_line(b"cut\0here"), "\"cut\"");
    }

    #[test]
    fn long_lines_are_cut_like_openbsd() {
        let q = quote_output_line(&[b'a'; 1000]);
        assert_eq!(q.len(), 255);
        // An escape that does not fit whole is left out.
        let mut line = vec![b'a'; 252];
        line.push(b'\n');
        assert_eq!(quote_output_line(&line), format!("\"{}\"", "a".repeat(252)));
    }
}
