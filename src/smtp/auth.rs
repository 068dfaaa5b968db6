//! The AUTH wire format: RFC 4954 mechanisms PLAIN and LOGIN, decoded exactly as OpenSMTPD
//! 6.8 decodes them, so that the same inputs are refused with `501 5.5.2 Syntax error`.
//!
//! Checking the credentials is not done here: the session hands the decoded user name and
//! password to its driver (which asks the credentials table or the system) and waits. What
//! this file guarantees is that nothing malformed gets that far, including user names or
//! passwords carrying CR or LF, which OpenSMTPD 7.8.0p1 started refusing because they could
//! inject lines into line-based table protocols.

/// Decoded AUTH PLAIN output is limited to this many bytes (OpenSMTPD's 1024-byte buffer).
const PLAIN_MAX: usize = 1023;
/// AUTH LOGIN user names fit OpenSMTPD's 256-byte buffer.
const LOGIN_USER_MAX: usize = 255;
/// AUTH LOGIN passwords fit a LINE_MAX buffer.
const LOGIN_PASSWORD_MAX: usize = 2047;

/// The SASL mechanisms offered (`250-AUTH PLAIN LOGIN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616: one base64 blob `[authzid] NUL user NUL password`.
    Plain,
    /// The de-facto LOGIN mechanism: user name and password in two rounds.
    Login,
}

impl Mechanism {
    /// Mechanism name as advertised.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// What the client's AUTH command asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthRequest {
    /// `AUTH PLAIN [initial-response]`; `None` when no response followed the mechanism.
    Plain(Option<String>),
    /// `AUTH LOGIN [base64-user]`; `None` (or empty) asks for the user name.
    Login(Option<String>),
    /// Any other mechanism name, kept for the 504 reply.
    Unsupported(String),
}

/// Splits the argument of AUTH into mechanism and initial response: the mechanism ends at
/// the first space (or, failing that, the first tab), matched case-insensitively.
pub fn parse_auth_args(args: &str) -> AuthRequest {
    let split = args.find(' ').or_else(|| args.find('\t'));
    let (method, rest) = match split {
        Some(i) => (&args[..i], Some(args[i + 1..].to_string())),
        None => (args, None),
    };
    if method.eq_ignore_ascii_case("PLAIN") {
        AuthRequest::Plain(rest)
    } else if method.eq_ignore_ascii_case("LOGIN") {
        AuthRequest::Login(rest)
    } else {
        AuthRequest::Unsupported(method.to_string())
    }
}

/// A decoded user name and password, as bytes: SASL does not promise UTF-8 and a lossy
/// conversion could make two different passwords compare equal.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The mechanism that carried them.
    pub mechanism: Mechanism,
    /// The authentication identity.
    pub user: Vec<u8>,
    /// The password.
    pub password: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("mechanism", &self.mechanism)
            .field("user", &String::from_utf8_lossy(&self.user))
            .field("password", &"(hidden)")
            .finish()
    }
}

/// Decodes an AUTH PLAIN response. Refused (→ 501): bad base64, more than 1023 bytes, no
/// NUL-separated user and password, a password shorter than two bytes (an OpenSMTPD 6.8
/// quirk), a user name of 256 bytes or more, CR or LF in user or password.
pub fn decode_plain(response: &str) -> Option<Credentials> {
    let buf = base64_decode(response, PLAIN_MAX)?;
    let len = buf.len();
    // [authzid] NUL user NUL pass: both separators must leave at least two bytes behind them.
    let first = buf.iter().position(|&b| b == 0)?;
    if first + 2 >= len {
        return None;
    }
    let user_start = first + 1;
    let user = c_string(&buf[user_start..]);
    if user.len() > LOGIN_USER_MAX {
        return None;
    }
    let second = user_start + buf[user_start..].iter().position(|&b| b == 0)?;
    if second + 2 >= len {
        return None;
    }
    let password = c_string(&buf[second + 1..]);
    if has_line_break(user) || has_line_break(password) {
        return None;
    }
    Some(Credentials {
        mechanism: Mechanism::Plain,
        user: user.to_vec(),
        password: password.to_vec(),
    })
}

/// Decodes the AUTH LOGIN user name line.
pub fn decode_login_user(line: &str) -> Option<Vec<u8>> {
    let buf = base64_decode(line, LOGIN_USER_MAX)?;
    let user = c_string(&buf);
    (!has_line_break(user)).then(|| user.to_vec())
}

/// Decodes the AUTH LOGIN password line.
pub fn decode_login_password(line: &str) -> Option<Vec<u8>> {
    let buf = base64_decode(line, LOGIN_PASSWORD_MAX)?;
    let password = c_string(&buf);
    (!has_line_break(password)).then(|| password.to_vec())
}

fn c_string(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(n) => &b[..n],
        None => b,
    }
}

fn has_line_break(b: &[u8]) -> bool {
    b.contains(&b'\r') || b.contains(&b'\n')
}

fn b64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Strict base64 as the BSD resolver's `b64_pton` reads it: white space ignored, padding
/// required, nothing but white space after the padding, no stray bits in the last byte.
/// `None` on error or when the result would exceed `max` bytes.
pub fn base64_decode(text: &str, max: usize) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3 + 3);
    let mut acc: u32 = 0;
    let mut state = 0u8;
    let mut i = 0;
    let mut saw_pad = false;
    while i < bytes.len() {
        let c = bytes[i];
        i += 1;
        if is_c_space(c) {
            continue;
        }
        if c == b'=' {
            saw_pad = true;
            break;
        }
        let v = u32::from(b64_value(c)?);
        acc = (acc << 6) | v;
        state += 1;
        if state == 4 {
            out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
            acc = 0;
            state = 0;
        }
    }
    if saw_pad {
        match state {
            2 => {
                // One byte of output; a second '=' must follow (white space allowed).
                while i < bytes.len() && is_c_space(bytes[i]) {
                    i += 1;
                }
                if bytes.get(i) != Some(&b'=') {
                    return None;
                }
                i += 1;
                if acc & 0x0f != 0 {
                    return None;
                }
                out.push((acc >> 4) as u8);
            }
            3 => {
                if acc & 0x03 != 0 {
                    return None;
                }
                out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]);
            }
            _ => return None,
        }
        if bytes[i..].iter().any(|&c| !is_c_space(c)) {
            return None;
        }
    } else if state != 0 {
        return None;
    }
    (out.len() <= max).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(raw: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for chunk in raw.chunks(3) {
            let n = chunk.len();
            let v = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for k in 0..4 {
                if k <= n {
                    s.push(T[((v >> (18 - 6 * k)) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }

    #[test]
    fn base64_round_trips_and_is_strict() {
        for raw in [&b""[..], b"a", b"ab", b"abc", b"\0user\0pass", &[0xff; 10]] {
            assert_eq!(base64_decode(&b64(raw), 100).as_deref(), Some(raw));
        }
        assert_eq!(
            base64_decode("YWJj ZGVm", 100).as_deref(),
            Some(&b"abcdef"[..])
        );
        assert_eq!(base64_decode("YQ", 100), None, "padding is required");
        assert_eq!(base64_decode("YQ=", 100), None);
        assert_eq!(base64_decode("YQ==x", 100), None);
        assert_eq!(base64_decode("YR==", 100), None, "stray bits");
        assert_eq!(base64_decode("Y===", 100), None);
        assert_eq!(base64_decode("=", 100), None);
        assert_eq!(base64_decode("*", 100), None);
        assert_eq!(base64_decode("YWJj", 2), None, "over the limit");
    }

    #[test]
    fn auth_args_split_mechanism_from_response() {
        assert_eq!(parse_auth_args("PLAIN"), AuthRequest::Plain(None));
        assert_eq!(
            parse_auth_args("plain AGEAYg=="),
            AuthRequest::Plain(Some("AGEAYg==".into()))
        );
        assert_eq!(parse_auth_args("LOGIN"), AuthRequest::Login(None));
        assert_eq!(
            parse_auth_args("Login\tdXNlcg=="),
            AuthRequest::Login(Some("dXNlcg==".into()))
        );
        assert_eq!(
            parse_auth_args("CRAM-MD5"),
            AuthRequest::Unsupported("CRAM-MD5".into())
        );
        assert_eq!(
            parse_auth_args("PLAIN "),
            AuthRequest::Plain(Some(String::new()))
        );
    }

    #[test]
    fn plain_layout_as_opensmtpd_6_8() {
        let ok = decode_plain(&b64(b"\0user\0pw")).unwrap();
        assert_eq!(ok.user, b"user");
        assert_eq!(ok.password, b"pw");
        let ok = decode_plain(&b64(b"admin\0user\0secret")).unwrap();
        assert_eq!(
            (ok.user.as_slice(), ok.password.as_slice()),
            (&b"user"[..], &b"secret"[..])
        );
        // An empty user name passes the layout check.
        assert_eq!(decode_plain(&b64(b"\0\0pw")).unwrap().user, b"");
        // 6.8 refuses one-byte passwords.
        assert!(decode_plain(&b64(b"\0user\0p")).is_none());
        assert!(
            decode_plain(&b64(b"user\0pass")).is_none(),
            "needs two NULs"
        );
        assert!(decode_plain(&b64(b"")).is_none());
        assert!(decode_plain("").is_none());
        assert!(decode_plain("not base64!").is_none());
        let long_user = [b"\0".as_slice(), &[b'u'; 256], b"\0pw"].concat();
        assert!(decode_plain(&b64(&long_user)).is_none());
        assert!(decode_plain(&b64(&[b'a'; 1024])).is_none());
    }

    #[test]
    fn line_breaks_in_credentials_are_refused() {
        // §11.3, OpenSMTPD 7.8.0p1: `\0user\nX\0pass` must be 501.
        assert!(decode_plain(&b64(b"\0user\nX\0pass")).is_none());
        assert!(decode_plain(&b64(b"\0user\0pa\rss")).is_none());
        assert!(decode_login_user(&b64(b"us\ner")).is_none());
        assert!(decode_login_password(&b64(b"pa\r\nss")).is_none());
        assert_eq!(decode_login_user(&b64(b"user")).unwrap(), b"user");
        assert_eq!(decode_login_password(&b64(b"x")).unwrap(), b"x");
    }

    #[test]
    fn debug_hides_the_password() {
        let c = decode_plain(&b64(b"\0user\0secret")).unwrap();
        let dbg = format!("{c:?}");
        assert!(dbg.contains("user") && !dbg.contains("secret"));
    }
}
