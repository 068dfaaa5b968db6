//! Credentials tables: the passwords a listener's `auth <table>` checks, and the user
//! names and passwords a relay's `auth <table>` sends.
//!
//! Both read the same value format (OpenSMTPD `table_parse_lookup`, credentials service):
//! `username:password`, or just `password` with the key as the user name. For a listener
//! the password part is a crypt(3) hash, checked as `crypt_checkpass` does. smtpd
//! verifies the hash formats `smtpctl encrypt` and `mkpasswd` produce: bcrypt (`$2a$`,
//! `$2b$`, `$2y$`), SHA-crypt (`$5$`, `$6$`, optional `rounds=`) and yescrypt (`$y$`, the
//! default of current Linux distributions). Anything else, above all a password written
//! in clear, is never accepted: a table that stores one fails every attempt, and the
//! reason is reported so the administrator can fix the entry.
//!
//! Checking a hash costs real CPU time and memory by design (bcrypt, yescrypt); callers on
//! an async runtime should run [`authenticate`] on a blocking thread.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha_crypt::{PasswordVerifier, ShaCrypt};

/// OpenSMTPD's LINE_MAX: a credentials value must be shorter.
pub const LINE_MAX: usize = 2048;
/// Lookup keys of this length or more are refused by OpenSMTPD's table layer
/// (`warn: lookup key too long`), which makes the attempt a temporary failure.
pub const KEY_MAX: usize = 1024;
/// The most memory a yescrypt hash may ask for (its `N` and `r` parameters); more is
/// refused rather than attempted.
pub const YESCRYPT_MAX_MEMORY: u64 = 1 << 30;

/// A credentials value split into its parts.
#[derive(Clone, PartialEq, Eq)]
pub struct TableCredentials {
    /// The user name: the text before the first `:`, or the key when there is none.
    pub username: String,
    /// The rest: a crypt(3) hash for a listener, a clear-text password for a relay.
    pub password: String,
}

impl fmt::Debug for TableCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableCredentials")
            .field("username", &self.username)
            .field("password", &"(hidden)")
            .finish()
    }
}

/// Why a credentials value is unusable (OpenSMTPD treats each as a lookup error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueError {
    /// Fewer than 3 characters.
    TooShort,
    /// `LINE_MAX` characters or more.
    TooLong,
    /// The value starts with `:` (no user name) or ends with it (no password).
    EmptyPart,
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueError::TooShort => "credentials value shorter than 3 characters",
            ValueError::TooLong => "credentials value too long",
            ValueError::EmptyPart => "credentials value with an empty user name or password",
        })
    }
}

impl std::error::Error for ValueError {}

/// Splits a credentials value as OpenSMTPD does: `user:password` at the first `:`, or the
/// whole value as password for user `key`.
pub fn parse_value(key: &str, value: &str) -> Result<TableCredentials, ValueError> {
    if value.len() < 3 {
        return Err(ValueError::TooShort);
    }
    if value.len() >= LINE_MAX {
        return Err(ValueError::TooLong);
    }
    match value.split_once(':') {
        None => Ok(TableCredentials {
            username: key.to_string(),
            password: value.to_string(),
        }),
        Some((user, password)) if !user.is_empty() && !password.is_empty() => {
            Ok(TableCredentials {
                username: user.to_string(),
                password: password.to_string(),
            })
        }
        Some(_) => Err(ValueError::EmptyPart),
    }
}

/// The hash formats smtpd verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `$2a$`, `$2b$`, `$2y$`.
    Bcrypt,
    /// `$5$`.
    Sha256Crypt,
    /// `$6$`.
    Sha512Crypt,
    /// `$y$`.
    Yescrypt,
}

/// Why a stored password cannot be checked. The password offered is then refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashError {
    /// Not a `$id$…` hash: a password stored in clear (or a traditional DES hash, which
    /// is no safer). Never compared with what the client sent.
    Plaintext,
    /// A `$id$` smtpd does not verify (`$1$` MD5-crypt, `$7$` scrypt, `$gy$`, `$2x$`, …).
    Unsupported(String),
    /// The right prefix but not a well-formed hash of that kind.
    Malformed(Scheme),
    /// A yescrypt hash asking for more than [`YESCRYPT_MAX_MEMORY`].
    TooCostly,
}

impl fmt::Display for HashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashError::Plaintext => f.write_str("password is not a crypt(3) hash"),
            HashError::Unsupported(id) => write!(f, "unsupported password hash ${id}$"),
            HashError::Malformed(scheme) => write!(f, "malformed {scheme:?} password hash"),
            HashError::TooCostly => f.write_str("yescrypt parameters need too much memory"),
        }
    }
}

impl std::error::Error for HashError {}

/// The scheme of a stored hash, judged by its prefix only.
pub fn scheme_of(stored: &str) -> Result<Scheme, HashError> {
    let Some(rest) = stored.strip_prefix('$') else {
        return Err(HashError::Plaintext);
    };
    let Some((id, _)) = rest.split_once('$') else {
        return Err(HashError::Plaintext);
    };
    match id {
        "2a" | "2b" | "2y" => Ok(Scheme::Bcrypt),
        "5" => Ok(Scheme::Sha256Crypt),
        "6" => Ok(Scheme::Sha512Crypt),
        "y" => Ok(Scheme::Yescrypt),
        other => Err(HashError::Unsupported(other.to_string())),
    }
}

/// Whether `password` matches the crypt(3) hash `stored`. The comparison of the computed
/// and the stored digest is constant-time (done by the hash crates).
pub fn verify_password(password: &[u8], stored: &str) -> Result<bool, HashError> {
    let scheme = scheme_of(stored)?;
    match scheme {
        Scheme::Bcrypt => {
            bcrypt::verify(password, stored).map_err(|_| HashError::Malformed(scheme))
        }
        Scheme::Sha256Crypt | Scheme::Sha512Crypt => verify_sha_crypt(password, stored, scheme),
        Scheme::Yescrypt => verify_yescrypt(password, stored),
    }
}

/// SHA-crypt, held to what libxcrypt itself would produce (so that no entry is accepted
/// here that `crypt_checkpass` would refuse): at most 16 salt characters, a `rounds=`
/// written canonically within 1000..=999999999, a digest of exactly 43 or 86 characters.
fn verify_sha_crypt(password: &[u8], stored: &str, scheme: Scheme) -> Result<bool, HashError> {
    let malformed = HashError::Malformed(scheme);
    let digest_len = if scheme == Scheme::Sha256Crypt {
        43
    } else {
        86
    };
    let fields: Vec<&str> = stored.split('$').skip(2).collect();
    let (salt, digest) = match fields.as_slice() {
        [rounds, salt, digest] => {
            let n = rounds.strip_prefix("rounds=").ok_or(malformed.clone())?;
            let canonical = !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && !n.starts_with('0')
                && n.len() <= 9;
            let value: u32 = n.parse().map_err(|_| malformed.clone())?;
            if !canonical || value < 1000 {
                return Err(malformed);
            }
            (*salt, *digest)
        }
        [salt, digest] => (*salt, *digest),
        _ => return Err(malformed),
    };
    if salt.len() > 16
        || salt.bytes().any(|b| b == b':' || b.is_ascii_whitespace())
        || salt.starts_with("rounds=")
        || digest.len() != digest_len
    {
        return Err(malformed);
    }
    match ShaCrypt::default().verify_password(password, stored) {
        Ok(()) => Ok(true),
        Err(sha_crypt::password_hash::Error::PasswordInvalid) => Ok(false),
        Err(_) => Err(malformed),
    }
}

/// yescrypt, with the cost parameters bounded before anything is allocated, and a digest
/// of exactly 43 characters (the crate would compare a shorter stored digest on its
/// length only).
fn verify_yescrypt(password: &[u8], stored: &str) -> Result<bool, HashError> {
    use yescrypt::PasswordVerifier as _;
    let malformed = HashError::Malformed(Scheme::Yescrypt);
    let fields: Vec<&str> = stored.split('$').skip(2).collect();
    let [params, _salt, digest] = fields.as_slice() else {
        return Err(malformed);
    };
    let params = yescrypt::Params::from_str(params).map_err(|_| malformed.clone())?;
    let memory = 128u64
        .checked_mul(u64::from(params.r()))
        .and_then(|m| m.checked_mul(params.n().checked_add(u64::from(params.p()))?));
    match memory {
        Some(m) if m <= YESCRYPT_MAX_MEMORY => {}
        _ => return Err(HashError::TooCostly),
    }
    if digest.len() != 43 {
        return Err(malformed);
    }
    match yescrypt::Yescrypt::default().verify_password(password, stored) {
        Ok(()) => Ok(true),
        Err(yescrypt::password_hash::Error::PasswordInvalid) => Ok(false),
        Err(_) => Err(malformed),
    }
}

pub use super::LookupError;

/// The outcome of a listener's credentials check, in OpenSMTPD's three results
/// (`smtp authentication user=… result=ok|permfail|tempfail`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthCheck {
    /// The password matches: `235 2.0.0 Authentication succeeded`.
    Ok,
    /// Unknown user or wrong password: `535 Authentication failed`.
    PermFail,
    /// The user's entry holds no usable hash; the attempt fails like a wrong password,
    /// and the reason deserves a warning in the log.
    Unusable(HashError),
    /// The table could not answer, the key is too long, or the stored value is
    /// malformed: `421 4.3.0 Temporary failure`.
    TempFail(String),
}

impl AuthCheck {
    /// The `result=` word of the log line.
    pub fn result(&self) -> &'static str {
        match self {
            AuthCheck::Ok => "ok",
            AuthCheck::PermFail | AuthCheck::Unusable(_) => "permfail",
            AuthCheck::TempFail(_) => "tempfail",
        }
    }
}

/// Checks a listener login (OpenSMTPD `lka_authenticate`): looks `user` up with `lookup`
/// (which receives the lower-cased user name, as table keys are stored lower-cased), takes
/// the hash from the value and verifies `password` against it.
pub fn authenticate<F>(user: &[u8], password: &[u8], lookup: F) -> AuthCheck
where
    F: FnOnce(&str) -> Result<Option<String>, LookupError>,
{
    // Table keys are text; a user name that is not UTF-8 cannot be in the table.
    let Ok(user) = std::str::from_utf8(user) else {
        return AuthCheck::PermFail;
    };
    if user.len() >= KEY_MAX {
        return AuthCheck::TempFail(format!("lookup key too long: {user}"));
    }
    let key = user.to_ascii_lowercase();
    let value = match lookup(&key) {
        Err(LookupError(e)) => return AuthCheck::TempFail(e),
        Ok(None) => return AuthCheck::PermFail,
        Ok(Some(v)) => v,
    };
    let creds = match parse_value(&key, &value) {
        Ok(c) => c,
        Err(e) => return AuthCheck::TempFail(e.to_string()),
    };
    match verify_password(password, &creds.password) {
        Ok(true) => AuthCheck::Ok,
        Ok(false) => AuthCheck::PermFail,
        Err(e) => AuthCheck::Unusable(e),
    }
}

/// The login a relay presents to its next hop, from its `auth <table>` entry
/// (`label → username:password`, the password in clear).
#[derive(Clone, PartialEq, Eq)]
pub struct RelayCredentials {
    /// The user name to log in as.
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for RelayCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayCredentials")
            .field("username", &self.username)
            .field("password", &"(hidden)")
            .finish()
    }
}

impl RelayCredentials {
    /// Reads the entry found for `label` (OpenSMTPD `lka_credentials`). A user name or
    /// password with CR or LF is refused: it would end the SMTP command line.
    pub fn parse(label: &str, value: &str) -> Result<RelayCredentials, ValueError> {
        let c = parse_value(label, value)?;
        let bad = |s: &str| s.contains(['\r', '\n', '\0']);
        if bad(&c.username) || bad(&c.password) {
            return Err(ValueError::EmptyPart);
        }
        Ok(RelayCredentials {
            username: c.username,
            password: c.password,
        })
    }

    /// The AUTH PLAIN initial response: base64 of `NUL username NUL password`.
    pub fn plain_response(&self) -> String {
        let mut raw = Vec::with_capacity(self.username.len() + self.password.len() + 2);
        raw.push(0);
        raw.extend_from_slice(self.username.as_bytes());
        raw.push(0);
        raw.extend_from_slice(self.password.as_bytes());
        BASE64.encode(raw)
    }

    /// The AUTH LOGIN answer to `334 VXNlcm5hbWU6`.
    pub fn login_username(&self) -> String {
        BASE64.encode(self.username.as_bytes())
    }

    /// The AUTH LOGIN answer to `334 UGFzc3dvcmQ6`.
    pub fn login_password(&self) -> String {
        BASE64.encode(self.password.as_bytes())
    }
}

/// Characters of a crypt(3) salt (`./0-9A-Za-z`).
const SALT_ALPHABET: &[u8; 64] =
    b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why `smtpctl encrypt` could not make a hash.
#[derive(Debug)]
pub struct EncryptError(pub String);

impl fmt::Display for EncryptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EncryptError {}

/// A fresh 16-character salt from `./0-9A-Za-z`, drawn uniformly.
pub fn random_salt() -> Result<String, EncryptError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| EncryptError(format!("getrandom: {e}")))?;
    Ok(bytes
        .iter()
        .map(|b| char::from(SALT_ALPHABET[usize::from(b & 0x3f)]))
        .collect())
}

/// SHA-512-crypt of `password` with `salt` and the default 5000 rounds, written as glibc
/// writes it: `$6$SALT$DIGEST` (no `rounds=`). The salt must be 1 to 16 characters from
/// `./0-9A-Za-z`.
pub fn sha512_crypt(password: &[u8], salt: &str) -> Result<String, EncryptError> {
    if salt.is_empty() || salt.len() > 16 || !salt.bytes().all(|b| SALT_ALPHABET.contains(&b)) {
        return Err(EncryptError(format!("invalid salt: {salt}")));
    }
    let raw = sha_crypt::sha512_crypt(password, salt.as_bytes(), sha_crypt::Params::RECOMMENDED);
    Ok(format!("$6${salt}${}", encode_sha512_digest(&raw)))
}

/// The hash `smtpctl encrypt` prints: SHA-512-crypt with a random 16-character salt, as
/// OpenSMTPD's helper produces on glibc systems.
pub fn encrypt(password: &[u8]) -> Result<String, EncryptError> {
    sha512_crypt(password, &random_salt()?)
}

/// `smtpctl encrypt` without an argument: one hash per input line, each on its own output
/// line. As OpenSMTPD's helper, only the newline is removed (a CR stays part of the
/// password), an empty line is hashed too, and a last line without newline counts.
pub fn encrypt_lines<R, W>(mut input: R, mut output: W) -> Result<(), EncryptError>
where
    R: std::io::BufRead,
    W: std::io::Write,
{
    let io = |e: std::io::Error| EncryptError(e.to_string());
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(io)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        writeln!(output, "{}", encrypt(&line)?).map_err(io)?;
    }
    output.flush().map_err(io)
}

/// The crypt(3) text form of a SHA-512-crypt digest: 22 groups of three bytes taken in
/// the algorithm's fixed order, each written as four characters of the salt alphabet,
/// least significant first (the last group has one byte and two characters).
fn encode_sha512_digest(raw: &[u8; 64]) -> String {
    const ORDER: [(usize, usize, usize); 21] = [
        (0, 21, 42),
        (22, 43, 1),
        (44, 2, 23),
        (3, 24, 45),
        (25, 46, 4),
        (47, 5, 26),
        (6, 27, 48),
        (28, 49, 7),
        (50, 8, 29),
        (9, 30, 51),
        (31, 52, 10),
        (53, 11, 32),
        (12, 33, 54),
        (34, 55, 13),
        (56, 14, 35),
        (15, 36, 57),
        (37, 58, 16),
        (59, 17, 38),
        (18, 39, 60),
        (40, 61, 19),
        (62, 20, 41),
    ];
    let mut out = String::with_capacity(86);
    let mut push = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(char::from(SALT_ALPHABET[(v & 0x3f) as usize]));
            v >>= 6;
        }
    };
    for (a, b, c) in ORDER {
        let v = (u32::from(raw[a]) << 16) | (u32::from(raw[b]) << 8) | u32::from(raw[c]);
        push(v, 4);
    }
    push(u32::from(raw[63]), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors made with Debian's mkpasswd (libxcrypt) and `openssl passwd`.
    const PASSWORD: &[u8] = b"correct horse";
    const SHA512: &str = "$6$saltsaltsaltsalt$GkzgkzVbauGAKXpOTbypQEKy/9yJWVjcvXvDw7CxoJjnJ1.w.g1rV8bhCVTpHrRrO/h6b3DAwPN3y5qmHXZ1R1";
    const SHA512_ROUNDS: &str = "$6$rounds=10000$rndsalt12$uS9YPTs1uCsYMWuHazEG/sJcYKNJ54uerD2OmAqwdOUrU9a1w/YG7hCYUOCfyMXswXIdi7Cc1DnuljBL/N0AP1";
    const SHA512_OPENSSL: &str = "$6$Qp0rGv2mTx8eLw1N$qul0PDSkRDE.UizLCjxfo2fOnLtJPgyVHCBbHlP2fRQrdQy/jXjrBPTnRQY6G/RNfY0mwmb2mr4N08qzo9GYv0";
    const SHA256: &str = "$5$saltsaltsaltsalt$vzxOvVGSAthqKsVBFh1uWPorUBPL5g6mz42rSF1xpk5";
    const SHA256_ROUNDS_HUNTER2: &str =
        "$5$rounds=2000$shortsal$gqqsnegOHX7hZED8qFYC5nwymLb/VwVStAoAQe98sr2";
    const BCRYPT_2B: &str = "$2b$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2";
    const BCRYPT_2A: &str = "$2a$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2";
    const BCRYPT_2Y: &str = "$2y$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2";
    const YESCRYPT: &str =
        "$y$j9T$nuALHpcCscZxQzQPgTcYO.$Iqk23aWanaPcbVWC0jHv/i5ZFJGOYGc7J8vbKUwP0p9";
    const YESCRYPT_HUNTER2: &str =
        "$y$j9T$kslaJlr6uwNW8RVTZ0TvX.$YhO/g39CtQCaFKmdqrfphYC982NacoqQ8fK93M9A9F.";

    #[test]
    fn sha_crypt_vectors() {
        for hash in [SHA512, SHA512_ROUNDS, SHA512_OPENSSL, SHA256] {
            assert_eq!(verify_password(PASSWORD, hash), Ok(true), "{hash}");
            assert_eq!(verify_password(b"correct horsf", hash), Ok(false), "{hash}");
            assert_eq!(verify_password(b"", hash), Ok(false), "{hash}");
        }
        assert_eq!(verify_password(b"hunter2", SHA256_ROUNDS_HUNTER2), Ok(true));
        assert_eq!(verify_password(PASSWORD, SHA256_ROUNDS_HUNTER2), Ok(false));
    }

    #[test]
    fn bcrypt_vectors() {
        for hash in [BCRYPT_2A, BCRYPT_2B, BCRYPT_2Y] {
            assert_eq!(verify_password(PASSWORD, hash), Ok(true), "{hash}");
            assert_eq!(
                verify_password(b"correct horse ", hash),
                Ok(false),
                "{hash}"
            );
        }
    }

    #[test]
    fn yescrypt_vectors() {
        assert_eq!(verify_password(PASSWORD, YESCRYPT), Ok(true));
        assert_eq!(verify_password(b"hunter2", YESCRYPT), Ok(false));
        assert_eq!(verify_password(b"hunter2", YESCRYPT_HUNTER2), Ok(true));
    }

    #[test]
    fn plaintext_is_never_a_password() {
        assert_eq!(
            verify_password(b"secret", "secret"),
            Err(HashError::Plaintext)
        );
        assert_eq!(
            verify_password(b"$secret", "$secret"),
            Err(HashError::Plaintext)
        );
        // Traditional DES (`mkpasswd -m descrypt -S ab`): refused, not compared.
        assert_eq!(
            verify_password(PASSWORD, "abhfCpXqd4GrI"),
            Err(HashError::Plaintext)
        );
        assert_eq!(verify_password(b"", ""), Err(HashError::Plaintext));
    }

    #[test]
    fn other_schemes_are_refused_by_name() {
        assert_eq!(
            verify_password(PASSWORD, "$1$abcdefgh$y6iHhJNbuC0xpbk0w9pm80"),
            Err(HashError::Unsupported("1".into()))
        );
        assert_eq!(
            verify_password(
                PASSWORD,
                "$2x$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2"
            ),
            Err(HashError::Unsupported("2x".into()))
        );
        assert_eq!(
            verify_password(
                PASSWORD,
                "$7$CU..../....SqTKtYH0gsTnWXv7.V/F.1$m239tzdQNgPpImlnB6IzFFYYt/0cCjHhWId2TO0zEH."
            ),
            Err(HashError::Unsupported("7".into()))
        );
    }

    #[test]
    fn malformed_hashes_are_not_matches() {
        let cases = [
            // Truncated digests.
            &SHA512[..SHA512.len() - 1],
            &BCRYPT_2B[..BCRYPT_2B.len() - 1],
            &YESCRYPT[..YESCRYPT.len() - 40],
            // rounds below the minimum (libxcrypt refuses), or not written canonically.
            "$6$rounds=500$saltsaltsaltsalt$GkzgkzVbauGAKXpOTbypQEKy/9yJWVjcvXvDw7CxoJjnJ1.w.g1rV8bhCVTpHrRrO/h6b3DAwPN3y5qmHXZ1R1",
            "$6$rounds=05000$saltsaltsaltsalt$GkzgkzVbauGAKXpOTbypQEKy/9yJWVjcvXvDw7CxoJjnJ1.w.g1rV8bhCVTpHrRrO/h6b3DAwPN3y5qmHXZ1R1",
            // A salt longer than 16 characters: libxcrypt would write the digest with
            // the truncated salt, so this can never be its output.
            "$6$saltsaltsaltsaltXXXX$GkzgkzVbauGAKXpOTbypQEKy/9yJWVjcvXvDw7CxoJjnJ1.w.g1rV8bhCVTpHrRrO/h6b3DAwPN3y5qmHXZ1R1",
            "$6$",
            "$6$$",
            "$y$$$",
            "$2b$",
        ];
        for hash in cases {
            assert!(
                matches!(
                    verify_password(PASSWORD, hash),
                    Err(HashError::Malformed(_))
                ),
                "{hash}"
            );
        }
        // The explicit default rounds are legitimate (glibc writes them when asked).
        let explicit = "$6$rounds=5000$saltsaltsaltsalt$GkzgkzVbauGAKXpOTbypQEKy/9yJWVjcvXvDw7CxoJjnJ1.w.g1rV8bhCVTpHrRrO/h6b3DAwPN3y5qmHXZ1R1";
        assert_eq!(verify_password(PASSWORD, explicit), Ok(true));
    }

    #[test]
    fn yescrypt_cost_is_bounded() {
        // N = 2^40 (`b`), r = 32 (`T`): refused before any allocation.
        assert_eq!(
            verify_password(
                PASSWORD,
                "$y$jbT$nuALHpcCscZxQzQPgTcYO.$Iqk23aWanaPcbVWC0jHv/i5ZFJGOYGc7J8vbKUwP0p9"
            ),
            Err(HashError::TooCostly)
        );
    }

    #[test]
    fn value_parsing() {
        let c = parse_value("alice", "$6$abc$def").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "$6$abc$def")
        );
        let c = parse_value("label", "bob:s3cret:x").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("bob", "s3cret:x")
        );
        assert_eq!(parse_value("k", "ab"), Err(ValueError::TooShort));
        assert_eq!(parse_value("k", ":abc"), Err(ValueError::EmptyPart));
        assert_eq!(parse_value("k", "abc:"), Err(ValueError::EmptyPart));
        assert_eq!(
            parse_value("k", &"x".repeat(LINE_MAX)),
            Err(ValueError::TooLong)
        );
        assert!(parse_value("k", &"x".repeat(LINE_MAX - 1)).is_ok());
    }

    #[test]
    fn listener_authentication() {
        let table = |key: &str| -> Result<Option<String>, LookupError> {
            Ok(match key {
                "alice" => Some(SHA512.to_string()),
                "bob" => Some(format!("bob:{BCRYPT_2B}")),
                "carol" => Some("plaintext-password".to_string()),
                "dave" => Some("x".to_string()),
                _ => None,
            })
        };
        assert_eq!(authenticate(b"alice", PASSWORD, table), AuthCheck::Ok);
        assert_eq!(authenticate(b"ALICE", PASSWORD, table), AuthCheck::Ok);
        assert_eq!(authenticate(b"alice", b"wrong", table), AuthCheck::PermFail);
        assert_eq!(authenticate(b"bob", PASSWORD, table), AuthCheck::Ok);
        assert_eq!(
            authenticate(b"nobody", PASSWORD, table),
            AuthCheck::PermFail
        );
        assert_eq!(
            authenticate(b"carol", b"plaintext-password", table),
            AuthCheck::Unusable(HashError::Plaintext)
        );
        assert_eq!(
            authenticate(b"carol", b"plaintext-password", table).result(),
            "permfail"
        );
        assert!(matches!(
            authenticate(b"dave", b"x", table),
            AuthCheck::TempFail(_)
        ));
        assert_eq!(authenticate(b"\xff", PASSWORD, table), AuthCheck::PermFail);
        let long = vec![b'a'; KEY_MAX];
        assert_eq!(authenticate(&long, PASSWORD, table).result(), "tempfail");
        let failing = |_: &str| -> Result<Option<String>, LookupError> {
            Err(LookupError("backend down".into()))
        };
        assert_eq!(
            authenticate(b"alice", PASSWORD, failing),
            AuthCheck::TempFail("backend down".into())
        );
    }

    #[test]
    fn relay_credentials() {
        let c = RelayCredentials::parse("mylabel", "joe:s3cret").unwrap();
        assert_eq!(c.username, "joe");
        assert_eq!(c.plain_response(), "AGpvZQBzM2NyZXQ=");
        assert_eq!(c.login_username(), "am9l");
        assert_eq!(c.login_password(), "czNjcmV0");
        let c = RelayCredentials::parse("mylabel", "s3cret").unwrap();
        assert_eq!(c.username, "mylabel");
        assert!(RelayCredentials::parse("l", "joe:s3\r\ncret").is_err());
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn encrypt_matches_glibc_and_verifies() {
        // `openssl passwd -6 -salt Qp0rGv2mTx8eLw1N 'correct horse'` (same as glibc).
        assert_eq!(
            sha512_crypt(PASSWORD, "Qp0rGv2mTx8eLw1N").unwrap(),
            SHA512_OPENSSL
        );
        assert_eq!(sha512_crypt(PASSWORD, "saltsaltsaltsalt").unwrap(), SHA512);
        let h = encrypt(b"hunter2").unwrap();
        assert_eq!(h.len(), 3 + 16 + 1 + 86, "{h}");
        assert!(h.starts_with("$6$"));
        assert_eq!(verify_password(b"hunter2", &h), Ok(true));
        assert_eq!(verify_password(b"hunter3", &h), Ok(false));
        assert!(sha512_crypt(b"x", "bad$salt").is_err());
        assert!(sha512_crypt(b"x", "").is_err());
    }

    #[test]
    fn encrypt_each_line() {
        let mut out = Vec::new();
        encrypt_lines(&b"one\n\ntwo\r\nthree"[..], &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        let hashes: Vec<&str> = out.lines().collect();
        assert_eq!(hashes.len(), 4, "{out}");
        let inputs: [&[u8]; 4] = [b"one", b"", b"two\r", b"three"];
        for (hash, input) in hashes.iter().zip(inputs) {
            assert_eq!(verify_password(input, hash), Ok(true), "{hash}");
        }
        let mut out = Vec::new();
        encrypt_lines(&b""[..], &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn salts_use_the_whole_alphabet_only() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            let s = random_salt().unwrap();
            assert_eq!(s.len(), 16);
            assert!(s.bytes().all(|b| SALT_ALPHABET.contains(&b)));
            seen.extend(s.bytes());
        }
        // 1024 draws from 64 characters: missing more than a few would mean a biased draw.
        assert!(seen.len() > 56, "{}", seen.len());
    }
}
