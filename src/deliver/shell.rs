//! Quoting expanded values for `/bin/sh -c`, so that no client-controlled
//! text can ever become shell syntax (CVE-2020-7247 was an unvalidated
//! sender reaching exactly such a command line).
//!
//! OpenSMTPD's own defence is twofold: addresses are validated at SMTP time,
//! and expansion replaces `` !#$%&'*?`{|}~ `` with `:`. Neither covers `;`,
//! spaces, `<`, `>`, `(`, `)`, `"`, `\` or newlines, and the `raw`
//! modifier turns the escaping off. So one bypass of validation (the CVE) or
//! one `%{sender:raw}` in a command was enough to run code.
//!
//! Here a small scanner follows the quoting state of the *template's own
//! text* (outside quotes, inside `'...'`, inside `"..."`) and each value is
//! quoted for the state it lands in:
//! * values made only of shell-inert bytes go in unchanged, so ordinary
//!   addresses give OpenSMTPD's command byte for byte;
//! * outside quotes, a value becomes `'value'` (with `'` as `'\''`);
//! * inside `"..."`, `\`, `"`, `$` and `` ` `` get a backslash;
//! * inside `'...'`, `'` becomes `'\''`.
//!
//! Positions where no quoting is reliable - right after `\` or `$`, or once
//! the template has used `` ` ``, `$(`, `${`, `$'`, `<(`, `>(`, `<<` or a
//! `#` comment, whose nesting this scanner does not follow - accept inert
//! values only; anything else fails the expansion (a permanent failure,
//! never a command run with unquoted data).
//!
//! `%{mda}` (a wrapper's real command) is shell text by design: outside
//! quotes it is inserted as is and scanned like template text; inside
//! quotes it is escaped so the wrapper's shell passes it on unchanged.

/// What an expanded value is, as far as the shell is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// Data (addresses, names, directories): must never be shell syntax.
    Data,
    /// A command line already made safe (`%{mda}` in a wrapper).
    ShellText,
}

/// The quoting state at a point of the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// Outside any quotes.
    Bare,
    /// Inside `'...'`.
    SingleQuoted,
    /// Inside `"..."`.
    DoubleQuoted,
    /// Somewhere quoting cannot be relied on.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum State {
    #[default]
    Bare,
    Single,
    Double,
    /// Inside a construct whose nesting is not followed; sticky.
    Complex,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Pending {
    #[default]
    Nothing,
    /// The previous byte was an unconsumed `\`.
    Backslash,
    /// The previous byte was `$`.
    Dollar,
    /// The previous byte was `<` or `>` (outside quotes).
    Redirect(u8),
}

/// Follows the quoting state of a command line as it is built.
#[derive(Clone, Debug)]
pub struct Scanner {
    state: State,
    pending: Pending,
    word_start: bool,
}

impl Default for Scanner {
    fn default() -> Scanner {
        Scanner {
            state: State::Bare,
            pending: Pending::Nothing,
            word_start: true,
        }
    }
}

impl Scanner {
    /// A scanner at the start of a command line.
    pub fn new() -> Scanner {
        Scanner::default()
    }

    /// Advances over literal command text.
    pub fn feed(&mut self, text: &[u8]) {
        for &b in text {
            self.feed_byte(b);
        }
    }

    fn feed_byte(&mut self, b: u8) {
        match self.state {
            State::Complex => {}
            State::Single => {
                if b == b'\'' {
                    self.state = State::Bare;
                    self.word_start = false;
                }
            }
            State::Double => {
                match std::mem::take(&mut self.pending) {
                    Pending::Backslash => return,
                    Pending::Dollar if b == b'(' || b == b'{' => {
                        self.state = State::Complex;
                        return;
                    }
                    _ => {}
                }
                match b {
                    b'\\' => self.pending = Pending::Backslash,
                    b'$' => self.pending = Pending::Dollar,
                    b'`' => self.state = State::Complex,
                    b'"' => self.state = State::Bare,
                    _ => {}
                }
            }
            State::Bare => {
                match std::mem::take(&mut self.pending) {
                    Pending::Backslash => {
                        self.word_start = false;
                        return;
                    }
                    Pending::Dollar if matches!(b, b'(' | b'{' | b'\'' | b'"') => {
                        self.state = State::Complex;
                        return;
                    }
                    Pending::Redirect(r) if b == b'(' || (r == b'<' && b == b'<') => {
                        self.state = State::Complex;
                        return;
                    }
                    _ => {}
                }
                match b {
                    b'\\' => self.pending = Pending::Backslash,
                    b'\'' => self.state = State::Single,
                    b'"' => self.state = State::Double,
                    b'`' => self.state = State::Complex,
                    b'$' => self.pending = Pending::Dollar,
                    b'<' | b'>' => self.pending = Pending::Redirect(b),
                    b'#' if self.word_start => self.state = State::Complex,
                    _ => {}
                }
                self.word_start = matches!(
                    b,
                    b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'(' | b')' | b'<' | b'>'
                );
            }
        }
    }

    /// The quoting context a value inserted now would land in.
    pub fn context(&self) -> Context {
        if matches!(self.pending, Pending::Backslash | Pending::Dollar) {
            return Context::Unknown;
        }
        match self.state {
            State::Bare => Context::Bare,
            State::Single => Context::SingleQuoted,
            State::Double => Context::DoubleQuoted,
            State::Complex => Context::Unknown,
        }
    }

    /// Quotes `value` for the current context and advances past it; `None`
    /// when it cannot be inserted safely here.
    pub fn insert(&mut self, value: &str, kind: ValueKind) -> Option<String> {
        let context = self.context();
        let quoted = quote(value, kind, context)?;
        if value.is_empty() {
            // Nothing was inserted: a pending `$` or `\` still applies to
            // whatever comes next.
            return Some(quoted);
        }
        if kind == ValueKind::ShellText && context == Context::Bare && !is_inert(value) {
            self.feed(value.as_bytes());
        } else {
            // Inert or self-contained quoted text: the state is unchanged,
            // but the word has started and any pending `\`/`$` was used.
            self.pending = Pending::Nothing;
            if self.state == State::Bare {
                self.word_start = false;
            }
        }
        Some(quoted)
    }
}

/// Bytes that mean nothing to the shell anywhere in a word.
pub fn is_inert(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b >= 0x80 || b"@%+,-./:^_".contains(&b))
}

/// `value` written so that, in `context`, the shell reads exactly `value`.
pub fn quote(value: &str, kind: ValueKind, context: Context) -> Option<String> {
    if is_inert(value) {
        return Some(value.to_string());
    }
    match (kind, context) {
        (_, Context::Unknown) => None,
        (ValueKind::Data, Context::Bare) => Some(format!("'{}'", value.replace('\'', r"'\''"))),
        (ValueKind::ShellText, Context::Bare) => Some(value.to_string()),
        (_, Context::DoubleQuoted) => {
            let mut out = String::with_capacity(value.len() + 8);
            for c in value.chars() {
                if matches!(c, '\\' | '"' | '$' | '`') {
                    out.push('\\');
                }
                out.push(c);
            }
            Some(out)
        }
        (_, Context::SingleQuoted) => Some(value.replace('\'', r"'\''")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context_after(text: &str) -> Context {
        let mut s = Scanner::new();
        s.feed(text.as_bytes());
        s.context()
    }

    #[test]
    fn contexts() {
        let cases: &[(&str, Context)] = &[
            ("", Context::Bare),
            ("cmd -f ", Context::Bare),
            ("cmd '", Context::SingleQuoted),
            ("cmd 'a\"b", Context::SingleQuoted),
            ("cmd 'a' ", Context::Bare),
            ("cmd \"", Context::DoubleQuoted),
            ("cmd \"a'b", Context::DoubleQuoted),
            ("cmd \"a\\\"", Context::DoubleQuoted),
            ("cmd \"a\" ", Context::Bare),
            ("cmd \\\"", Context::Bare),
            ("cmd \\", Context::Unknown),
            ("cmd $", Context::Unknown),
            ("cmd \"$", Context::Unknown),
            ("cmd $HOME/", Context::Bare),
            ("cmd $(echo ", Context::Unknown),
            ("cmd ${X:-", Context::Unknown),
            ("cmd `echo ", Context::Unknown),
            ("cmd \"`echo ", Context::Unknown),
            ("cmd \"$(echo ", Context::Unknown),
            ("cmd <<EOF\n", Context::Unknown),
            ("cmd <(cat ", Context::Unknown),
            ("cmd < ", Context::Bare),
            ("cmd # note ", Context::Unknown),
            ("cmd a#b ", Context::Bare),
            ("cmd $'", Context::Unknown),
        ];
        for (text, want) in cases {
            assert_eq!(context_after(text), *want, "{text:?}");
        }
    }

    #[test]
    fn inert_values_are_unchanged_everywhere() {
        for ctx in [
            Context::Bare,
            Context::SingleQuoted,
            Context::DoubleQuoted,
            Context::Unknown,
        ] {
            assert_eq!(
                quote("user+t:g@example.org", ValueKind::Data, ctx).as_deref(),
                Some("user+t:g@example.org")
            );
            assert_eq!(quote("", ValueKind::Data, ctx).as_deref(), Some(""));
            assert_eq!(
                quote("jérôme@exämple.org", ValueKind::Data, ctx).as_deref(),
                Some("jérôme@exämple.org")
            );
        }
    }

    #[test]
    fn quoting_per_context() {
        let v = "a;b c'd\"e$f`g\\h\ni";
        assert_eq!(
            quote(v, ValueKind::Data, Context::Bare).unwrap(),
            "'a;b c'\\''d\"e$f`g\\h\ni'"
        );
        assert_eq!(
            quote(v, ValueKind::Data, Context::SingleQuoted).unwrap(),
            "a;b c'\\''d\"e$f`g\\h\ni"
        );
        assert_eq!(
            quote(v, ValueKind::Data, Context::DoubleQuoted).unwrap(),
            "a;b c'd\\\"e\\$f\\`g\\\\h\ni"
        );
        assert_eq!(quote(v, ValueKind::Data, Context::Unknown), None);
        // `=` is quoted so a value can never become an assignment.
        assert_eq!(
            quote("PATH=/x", ValueKind::Data, Context::Bare).unwrap(),
            "'PATH=/x'"
        );
    }

    #[test]
    fn shell_text_outside_quotes_is_scanned() {
        let mut s = Scanner::new();
        s.feed(b"wrap ");
        assert_eq!(
            s.insert("procmail -a 'x", ValueKind::ShellText).unwrap(),
            "procmail -a 'x"
        );
        assert_eq!(s.context(), Context::SingleQuoted);
    }

    #[test]
    fn empty_value_keeps_a_pending_dollar() {
        let mut s = Scanner::new();
        s.feed(b"echo $");
        assert_eq!(s.insert("", ValueKind::Data).unwrap(), "");
        s.feed(b"(");
        assert_eq!(s.context(), Context::Unknown);
        // An inert value after `$` is what OpenSMTPD would produce.
        let mut s = Scanner::new();
        s.feed(b"echo $");
        assert_eq!(s.insert("HOME", ValueKind::Data).unwrap(), "HOME");
        assert_eq!(s.context(), Context::Bare);
        assert_eq!(s.insert("a b", ValueKind::Data).unwrap(), "'a b'");
    }

    /// Runs the quoted text through a real shell and checks it prints the value.
    #[test]
    fn real_shell_reads_back_the_value() {
        let values = [
            ";sleep 66;",
            "`touch /nonexistent/x`",
            "$(id)",
            "a'b\"c\\d$e`f",
            "line1\nline2",
            "*",
            "~root",
            "-n",
            "PATH=/x",
            "{a,b}",
            "!#$%&'*?`{|}~",
        ];
        for v in values {
            for (before, after) in [
                ("printf '%s|' ", ""),
                ("printf '%s|' \"", "\""),
                ("printf '%s|' '", "'"),
            ] {
                let mut s = Scanner::new();
                s.feed(before.as_bytes());
                let q = s.insert(v, ValueKind::Data).unwrap();
                let cmd = format!("{before}{q}{after}");
                let out = std::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(&cmd)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{cmd:?}");
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout),
                    format!("{v}|"),
                    "{cmd:?}"
                );
            }
        }
    }
}
