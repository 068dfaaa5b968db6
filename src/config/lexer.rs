//! The smtpd.conf lexer.
//!
//! smtpd.conf's lexical rules are not context free: a `$macro` is replaced by its value and the
//! value is lexed again, a backslash joins lines, a word that starts with a digit is a NUMBER
//! only when the digits end at a separator, and a quoted word is never a keyword. Those rules
//! live here, in one hand-written scanner that mirrors OpenSMTPD's `yylex`, so that the pest
//! grammar (`grammar/smtpd.pest`) only ever sees clean tokens.
//!
//! Every token carries the line it starts on; that is the line OpenSMTPD names in its messages.

use std::collections::HashMap;
use std::sync::Arc;

/// Longest token OpenSMTPD accepts (its lexer buffer is 8 KiB).
const MAX_TOKEN: usize = 8096;

/// Reserved words of the 6.8 grammar. A bare word equal to one of these is a keyword; quote it
/// to use it as a name.
pub const KEYWORDS: &[&str] = &[
    "action",
    "admd",
    "alias",
    "any",
    "auth",
    "auth-optional",
    "backup",
    "bounce",
    "bypass",
    "ca",
    "cert",
    "chain",
    "chroot",
    "ciphers",
    "commit",
    "compression",
    "connect",
    "data",
    "data-line",
    "dhe",
    "disconnect",
    "domain",
    "ehlo",
    "encryption",
    "expand-only",
    "fcrdns",
    "filter",
    "for",
    "forward-only",
    "from",
    "group",
    "helo",
    "helo-src",
    "host",
    "hostname",
    "hostnames",
    "include",
    "inet4",
    "inet6",
    "junk",
    "key",
    "limit",
    "listen",
    "lmtp",
    "local",
    "mail-from",
    "maildir",
    "mask-src",
    "masquerade",
    "match",
    "max-deferred",
    "max-message-size",
    "mbox",
    "mda",
    "mta",
    "mx",
    "no-dsn",
    "no-verify",
    "noop",
    "on",
    "phase",
    "pki",
    "port",
    "proc",
    "proc-exec",
    "proxy-v2",
    "queue",
    "quit",
    "rcpt-to",
    "rdns",
    "received-auth",
    "recipient",
    "regex",
    "reject",
    "relay",
    "report",
    "rewrite",
    "rset",
    "scheduler",
    "senders",
    "smtp",
    "smtp-in",
    "smtp-out",
    "smtps",
    "socket",
    "src",
    "srs",
    "sub-addr-delim",
    "table",
    "tag",
    "tagged",
    "tls",
    "tls-require",
    "ttl",
    "user",
    "userbase",
    "verify",
    "virtual",
    "warn-interval",
    "wrapper",
];

/// Is `word` a reserved word of the language?
pub fn is_keyword(word: &str) -> bool {
    KEYWORDS.binary_search(&word).is_ok()
}

/// What a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKind {
    /// A reserved word written bare.
    Keyword(&'static str),
    /// A STRING: a bare non-keyword word or anything quoted.
    Str(String),
    /// A NUMBER: digits ending at a separator.
    Number(i64),
    /// `=>`, used only in key/value tables.
    Arrow,
    /// Any other single character (`{ } < > ! , =` are the meaningful ones).
    Punct(char),
    /// End of a line: the end of a statement, or a separator inside braces.
    Newline,
    /// The lexer already reported an error and skipped to the end of the line.
    Error,
    /// End of input.
    Eof,
}

/// One token, with the file and line where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub line: u32,
    pub file: Arc<str>,
    /// Order in which the parser read the token (set by the parser), so that the lexer's own
    /// messages are printed where OpenSMTPD prints them.
    pub seq: u64,
}

/// A diagnostic the lexer printed, in OpenSMTPD's `FILE:LINE: message` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LexError {
    pub file: Arc<str>,
    pub line: u32,
    pub message: String,
}

/// Markers pushed around a macro's value so that it is not expanded again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Byte(u8),
    StartExpand,
    DoneExpand,
    Eof,
}

/// The macro table, shared by the lexer and the statements that define macros.
#[derive(Debug, Default, Clone)]
pub struct Macros {
    values: HashMap<String, String>,
    persistent: HashMap<String, bool>,
}

impl Macros {
    /// Define a macro from the file; a persistent (`-D`) definition wins.
    pub fn define(&mut self, name: &str, value: &str) {
        if self.persistent.get(name).copied().unwrap_or(false) {
            return;
        }
        self.values.insert(name.to_string(), value.to_string());
    }

    /// Define a macro given with `-D name=value`.
    pub fn define_persistent(&mut self, name: &str, value: &str) {
        self.values.insert(name.to_string(), value.to_string());
        self.persistent.insert(name.to_string(), true);
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}

/// Lexer over one file's bytes.
pub struct Lexer {
    file: Arc<str>,
    src: Vec<u8>,
    pos: usize,
    /// Pushed-back units, popped from the end.
    pushback: Vec<Unit>,
    expanding: bool,
    eof_faked: bool,
    line: u32,
    /// Line of the most recent token (OpenSMTPD's `yylval.lineno`).
    token_line: u32,
    pub errors: Vec<LexError>,
}

fn allowed_in_string(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || (c.is_ascii_punctuation()
            && !matches!(
                c,
                b'(' | b')' | b'{' | b'}' | b'<' | b'>' | b'!' | b'=' | b'#' | b','
            ))
}

fn allowed_to_end_number(c: u8) -> bool {
    matches!(
        c,
        b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | b')' | b',' | b'/' | b'}' | b'='
    )
}

impl Lexer {
    pub fn new(file: impl Into<Arc<str>>, src: Vec<u8>) -> Lexer {
        Lexer {
            file: file.into(),
            src,
            pos: 0,
            pushback: Vec::new(),
            expanding: false,
            eof_faked: false,
            line: 1,
            token_line: 1,
            errors: Vec::new(),
        }
    }

    pub fn file(&self) -> &Arc<str> {
        &self.file
    }

    /// Line of the last token read.
    pub fn token_line(&self) -> u32 {
        self.token_line
    }

    fn error(&mut self, message: String) {
        self.errors.push(LexError {
            file: self.file.clone(),
            line: self.token_line,
            message,
        });
    }

    /// Next raw unit: pushed-back first, then the file; the end of the file is preceded by one
    /// faked newline so that a last line without `\n` still ends its statement.
    fn igetc(&mut self) -> Unit {
        loop {
            match self.pushback.pop() {
                Some(Unit::StartExpand) => {
                    self.expanding = true;
                    continue;
                }
                Some(Unit::DoneExpand) => {
                    self.expanding = false;
                    continue;
                }
                Some(u) => return u,
                None => {}
            }
            if self.pos < self.src.len() {
                let c = self.src[self.pos];
                self.pos += 1;
                return Unit::Byte(c);
            }
            if !self.eof_faked {
                self.eof_faked = true;
                return Unit::Byte(b'\n');
            }
            return Unit::Eof;
        }
    }

    /// A character outside quotes: backslash-newline joins lines, `\x` gives `x`.
    fn lgetc(&mut self) -> Unit {
        loop {
            let c = self.igetc();
            if c != Unit::Byte(b'\\') {
                return c;
            }
            let next = self.igetc();
            if next != Unit::Byte(b'\n') {
                return next;
            }
            self.token_line = self.line;
            self.line += 1;
        }
    }

    fn lungetc(&mut self, u: Unit) {
        if u != Unit::Eof {
            self.pushback.push(u);
        }
    }

    /// Skip to the end of the line after an error (the newline is consumed too).
    fn findeol(&mut self) -> TokenKind {
        loop {
            match self.lgetc() {
                Unit::Byte(b'\n') => {
                    self.line += 1;
                    break;
                }
                Unit::Eof => break,
                _ => {}
            }
        }
        TokenKind::Error
    }

    fn token(&self, kind: TokenKind) -> Token {
        Token {
            kind,
            seq: 0,
            line: self.token_line,
            file: self.file.clone(),
        }
    }

    /// The next token; `macros` supplies `$name` values.
    pub fn next_token(&mut self, macros: &Macros) -> Token {
        let kind = self.next_kind(macros);
        self.token(kind)
    }

    fn next_kind(&mut self, macros: &Macros) -> TokenKind {
        'top: loop {
            let mut c = self.lgetc();
            while c == Unit::Byte(b' ') || c == Unit::Byte(b'\t') {
                c = self.lgetc();
            }
            self.token_line = self.line;
            if c == Unit::Byte(b'#') {
                loop {
                    c = self.lgetc();
                    if c == Unit::Byte(b'\n') || c == Unit::Eof {
                        break;
                    }
                }
            }
            if c == Unit::Byte(b'$') && !self.expanding {
                let mut name = Vec::new();
                loop {
                    let u = self.lgetc();
                    match u {
                        Unit::Byte(b) if b.is_ascii_alphanumeric() || b == b'_' => {
                            name.push(b);
                            if name.len() >= MAX_TOKEN {
                                self.error("string too long".into());
                                return self.findeol();
                            }
                        }
                        Unit::Eof => return TokenKind::Eof,
                        other => {
                            self.lungetc(other);
                            break;
                        }
                    }
                }
                let name = String::from_utf8_lossy(&name).into_owned();
                let Some(value) = macros.get(&name) else {
                    self.error(format!("macro '{name}' not defined"));
                    return self.findeol();
                };
                self.pushback.push(Unit::DoneExpand);
                for &b in value.as_bytes().iter().rev() {
                    self.pushback.push(Unit::Byte(b));
                }
                self.pushback.push(Unit::StartExpand);
                continue 'top;
            }
            let c = match c {
                Unit::Eof => return TokenKind::Eof,
                Unit::Byte(b) => b,
                _ => continue 'top,
            };
            if c == b'"' || c == b'\'' {
                return self.quoted(c);
            }
            if c == b'=' {
                let n = self.lgetc();
                if n == Unit::Byte(b'>') {
                    return TokenKind::Arrow;
                }
                self.lungetc(n);
                return TokenKind::Punct('=');
            }
            let mut buf: Vec<u8> = Vec::new();
            if c == b'-' || c.is_ascii_digit() {
                buf.push(c);
                let mut n;
                loop {
                    n = self.lgetc();
                    match n {
                        Unit::Byte(d) if d.is_ascii_digit() => {
                            buf.push(d);
                            if buf.len() >= MAX_TOKEN {
                                self.error("string too long".into());
                                return self.findeol();
                            }
                        }
                        _ => break,
                    }
                }
                self.lungetc(n);
                let ends = match n {
                    Unit::Eof => true,
                    Unit::Byte(b) => allowed_to_end_number(b),
                    _ => false,
                };
                if !(buf.len() == 1 && buf[0] == b'-') && ends {
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    return match text.parse::<i64>() {
                        Ok(v) => TokenKind::Number(v),
                        Err(_) => {
                            let why = if text.starts_with('-') {
                                "too small"
                            } else {
                                "too large"
                            };
                            self.error(format!("\"{text}\" invalid number: {why}"));
                            self.findeol()
                        }
                    };
                }
                // Not a number: push the digits back and read a word instead.
                while buf.len() > 1 {
                    let b = buf.pop().unwrap_or(b'0');
                    self.lungetc(Unit::Byte(b));
                }
                buf.clear();
                if c == b'-' {
                    return TokenKind::Punct('-');
                }
            }
            if c.is_ascii_alphanumeric() || c == b':' || c == b'_' {
                buf.push(c);
                loop {
                    let n = self.lgetc();
                    match n {
                        Unit::Byte(b) if allowed_in_string(b) => {
                            buf.push(b);
                            if buf.len() >= MAX_TOKEN {
                                self.error("string too long".into());
                                return self.findeol();
                            }
                        }
                        other => {
                            self.lungetc(other);
                            break;
                        }
                    }
                }
                let word = String::from_utf8_lossy(&buf).into_owned();
                if let Ok(i) = KEYWORDS.binary_search(&word.as_str()) {
                    return TokenKind::Keyword(KEYWORDS[i]);
                }
                return TokenKind::Str(word);
            }
            if c == b'\n' {
                self.token_line = self.line;
                self.line += 1;
                return TokenKind::Newline;
            }
            return TokenKind::Punct(c as char);
        }
    }

    /// A quoted string: the same quote closes it, `\` escapes the quote, blanks and newlines.
    fn quoted(&mut self, quote: u8) -> TokenKind {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let c = match self.igetc() {
                Unit::Byte(b) => b,
                Unit::Eof => {
                    self.error("reached end of file while parsing quoted string".into());
                    return TokenKind::Eof;
                }
                _ => continue,
            };
            let c = if c == b'\n' {
                self.line += 1;
                continue;
            } else if c == b'\\' {
                let next = match self.igetc() {
                    Unit::Byte(b) => b,
                    Unit::Eof => {
                        self.error("reached end of file while parsing quoted string".into());
                        return TokenKind::Eof;
                    }
                    _ => continue,
                };
                if next == quote || next == b' ' || next == b'\t' {
                    next
                } else if next == b'\n' {
                    self.line += 1;
                    continue;
                } else {
                    self.lungetc(Unit::Byte(next));
                    c
                }
            } else if c == quote {
                break;
            } else if c == 0 {
                self.error("syntax error".into());
                return self.findeol();
            } else {
                c
            };
            if buf.len() + 2 >= MAX_TOKEN {
                self.error("string too long".into());
                return self.findeol();
            }
            buf.push(c);
        }
        TokenKind::Str(String::from_utf8_lossy(&buf).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(src: &str) -> Vec<(TokenKind, u32)> {
        lex_with(src, &Macros::default()).0
    }

    fn lex_with(src: &str, m: &Macros) -> (Vec<(TokenKind, u32)>, Vec<LexError>) {
        let mut l = Lexer::new("t.conf", src.as_bytes().to_vec());
        let mut out = Vec::new();
        for _ in 0..10_000 {
            let t = l.next_token(m);
            let end = t.kind == TokenKind::Eof;
            out.push((t.kind, t.line));
            if end {
                break;
            }
        }
        (out, l.errors)
    }

    fn s(x: &str) -> TokenKind {
        TokenKind::Str(x.into())
    }

    #[test]
    fn keywords_table_is_sorted() {
        let mut k = KEYWORDS.to_vec();
        k.sort();
        assert_eq!(k, KEYWORDS);
    }

    #[test]
    fn words_numbers_and_keywords() {
        use TokenKind::*;
        assert_eq!(
            lex("listen on 127.0.0.1 port 25\n"),
            vec![
                (Keyword("listen"), 1),
                (Keyword("on"), 1),
                (s("127.0.0.1"), 1),
                (Keyword("port"), 1),
                (Number(25), 1),
                (Newline, 1),
                (Newline, 2),
                (Eof, 3)
            ]
        );
        assert_eq!(lex("10M")[0].0, s("10M"));
        assert_eq!(lex("4d")[0].0, s("4d"));
        assert_eq!(lex("127/8")[0].0, Number(127));
        assert_eq!(lex("127/8")[1].0, Punct('/'));
        assert_eq!(lex("-5x")[0].0, Punct('-'));
        assert_eq!(lex("MATCH")[0].0, s("MATCH"));
        assert_eq!(lex("\"match\"")[0].0, s("match"));
        assert_eq!(lex("a=>b")[1].0, Arrow);
        assert_eq!(lex("a = b")[1].0, Punct('='));
    }

    #[test]
    fn backslash_rules() {
        assert_eq!(lex("ma\\ildir")[0].0, TokenKind::Keyword("maildir"));
        let t = lex("listen \\\n on");
        assert_eq!(t[1], (TokenKind::Keyword("on"), 2));
        assert_eq!(lex("\"a\\\"b\"")[0].0, s("a\"b"));
        assert_eq!(lex("\"a\\nb\"")[0].0, s("a\\nb"));
        assert_eq!(lex("'a\\ b'")[0].0, s("a b"));
        assert_eq!(lex("\"a\nb\"")[0].0, s("ab"));
    }

    #[test]
    fn comments() {
        let t = lex("# a comment \\\n still comment\nx");
        // The newline that ends the comment is the one on line 2.
        assert_eq!(t[0], (TokenKind::Newline, 2));
        assert_eq!(t[1], (s("x"), 3));
        assert_eq!(lex("a#b")[1].0, TokenKind::Newline);
        assert_eq!(lex("\"a#b\"")[0].0, s("a#b"));
    }

    #[test]
    fn macros_relex() {
        let mut m = Macros::default();
        m.define("opts", "tag FOO mask-src");
        let (t, e) = lex_with("listen on lo $opts\n", &m);
        assert!(e.is_empty());
        let kinds: Vec<_> = t.into_iter().map(|x| x.0).collect();
        assert_eq!(kinds[3], TokenKind::Keyword("tag"));
        assert_eq!(kinds[4], s("FOO"));
        assert_eq!(kinds[5], TokenKind::Keyword("mask-src"));
        assert_eq!(lex_with("\"$x\"", &m).0[0].0, s("$x"));
        let (t, e) = lex_with("listen on $addr\naction x\nmatch", &m);
        assert_eq!(e[0].message, "macro 'addr' not defined");
        assert_eq!(e[0].line, 1);
        assert_eq!(t[2], (TokenKind::Error, 1));
        assert_eq!(t[3], (TokenKind::Keyword("action"), 2));
    }

    #[test]
    fn persistent_macros_win() {
        let mut m = Macros::default();
        m.define_persistent("a", "1");
        m.define("a", "2");
        assert_eq!(m.get("a"), Some("1"));
    }

    #[test]
    fn number_too_large() {
        let (t, e) = lex_with(
            "smtp limit max-rcpt 99999999999999999999\nx",
            &Macros::default(),
        );
        assert_eq!(
            e[0].message,
            "\"99999999999999999999\" invalid number: too large"
        );
        assert_eq!(t[3].0, TokenKind::Error);
        assert_eq!(t[4], (s("x"), 2));
    }

    #[test]
    fn eof_in_quotes() {
        let (t, e) = lex_with("action \"x\n", &Macros::default());
        assert_eq!(
            e[0].message,
            "reached end of file while parsing quoted string"
        );
        assert_eq!(t.last().map(|x| x.0.clone()), Some(TokenKind::Eof));
    }
}
