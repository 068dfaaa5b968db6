//! Messages of a configuration check, worded and ordered as OpenSMTPD prints them.
//!
//! The first line of every message is exactly OpenSMTPD's, so scripts that read `smtpd -n`
//! keep working; smtpd may add an indented second line with the source line and a hint.

use std::fmt::Write as _;

/// Parsing had to stop (OpenSMTPD's `fatal`): nothing after it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fatal;

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `FILE:LINE: text`, optionally followed by a hint line.
    At {
        file: String,
        line: u32,
        text: String,
        hint: Option<String>,
    },
    /// A line printed as is (`smtpd: ...`, `pushfile: ...`, `warn: ...`).
    Plain(String),
}

/// Messages in the order they were produced.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    pub messages: Vec<Message>,
}

impl Diagnostics {
    pub fn at(&mut self, file: &str, line: u32, text: String) {
        self.at_hint(file, line, text, None);
    }

    pub fn at_hint(&mut self, file: &str, line: u32, text: String, hint: Option<String>) {
        self.messages.push(Message::At {
            file: file.to_string(),
            line,
            text,
            hint,
        });
    }

    pub fn plain(&mut self, text: String) {
        self.messages.push(Message::Plain(text));
    }

    /// Are there errors (anything but warnings about macros)?
    pub fn has_errors(&self) -> bool {
        self.messages.iter().any(|m| match m {
            Message::At { .. } => true,
            // Warnings (`warn: ...`) do not fail a check; `warn: no rules` is decided apart.
            Message::Plain(t) => !t.starts_with("warn: "),
        })
    }

    /// Render for stderr; `source` gives a file's text for the caret line.
    pub fn render(&self, hints: bool, source: &dyn Fn(&str) -> Option<String>) -> String {
        let mut out = String::new();
        for m in &self.messages {
            match m {
                Message::Plain(t) => {
                    let _ = writeln!(out, "{t}");
                }
                Message::At {
                    file,
                    line,
                    text,
                    hint,
                } => {
                    let _ = writeln!(out, "{file}:{line}: {text}");
                    if !hints {
                        continue;
                    }
                    if let Some(src) = source(file)
                        && let Some(l) = src.lines().nth((*line as usize).saturating_sub(1))
                    {
                        let l = l.trim_end();
                        if !l.is_empty() {
                            let _ = writeln!(out, "    {line} | {l}");
                        }
                    }
                    if let Some(h) = hint {
                        let _ = writeln!(out, "    hint: {h}");
                    }
                }
            }
        }
        out
    }
}

pub use crate::log::strerror;
