//! From smtpd.conf text to a checked [`Config`].
//!
//! The driver reads tokens from the [`Lexer`] (a stack of them, for `include`), cuts them into
//! statements (a newline ends a statement unless it is inside braces), writes each statement in
//! the canonical token form the pest grammar expects and parses it. A statement that does not
//! parse is reported as `syntax error` at the line of the token where parsing failed, and, as
//! OpenSMTPD's parser does, everything up to the next newline is skipped. Statements that parse
//! are checked and applied in order: a name must be declared before it is used.

use std::collections::VecDeque;
use std::sync::Arc;

use pest::Parser as _;
use pest::iterators::Pair;

use super::diag::{Diagnostics, Fatal};
use super::lexer::{Lexer, Macros, Token, TokenKind};
use super::model::*;
use super::system::System;
use crate::table::{self, LoadError};

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/smtpd.pest"]
struct Grammar;

type P<'a> = Pair<'a, Rule>;

/// Punctuation pairs exist only for error positions; the tree walk skips them.
fn not_punct(p: &P) -> bool {
    !matches!(
        p.as_rule(),
        Rule::NL
            | Rule::ARROW
            | Rule::EQ
            | Rule::COMMA
            | Rule::LBRACE
            | Rule::RBRACE
            | Rule::LT
            | Rule::GT
    )
}

/// How to read a configuration.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `-D name=value` arguments, as given.
    pub defines: Vec<String>,
    /// The server name; read from the system when `None`.
    pub hostname: Option<String>,
}

/// A statement written as the grammar reads it, with where each token starts.
struct Rendered {
    text: String,
    starts: Vec<usize>,
}

fn render(tokens: &[Token]) -> Rendered {
    let mut text = String::new();
    let mut starts = Vec::with_capacity(tokens.len());
    for t in tokens {
        if !text.is_empty() {
            text.push(' ');
        }
        starts.push(text.len());
        match &t.kind {
            TokenKind::Keyword(k) => text.push_str(k),
            TokenKind::Str(s) => {
                text.push('"');
                for c in s.chars() {
                    if c == '"' || c == '\\' {
                        text.push('\\');
                    }
                    text.push(c);
                }
                text.push('"');
            }
            TokenKind::Number(n) => text.push_str(&n.to_string()),
            TokenKind::Arrow => text.push_str("=>"),
            TokenKind::Punct(c) if "{}<>!,=".contains(*c) => text.push(*c),
            TokenKind::Newline => text.push('\n'),
            _ => text.push('?'),
        }
    }
    Rendered { text, starts }
}

/// Unquote a STR terminal of the canonical form.
fn unquote(s: &str) -> String {
    let inner = &s[1..s.len() - 1];
    let mut out = String::with_capacity(inner.len());
    let mut esc = false;
    for c in inner.chars() {
        if esc {
            out.push(c);
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else {
            out.push(c);
        }
    }
    out
}

/// Builds a [`Config`] statement by statement.
pub struct Parser<'s> {
    lexers: Vec<Lexer>,
    macros: Macros,
    pending: VecDeque<Token>,
    pub diags: Diagnostics,
    cfg: Config,
    system: &'s dyn System,
    dynamic_tables: usize,
    dynamic_chains: u32,
    /// Tokens read so far, and the lexer's messages waiting to be printed, each with the
    /// sequence number of the token read right after it.
    seq: u64,
    lex_msgs: VecDeque<(u64, super::lexer::LexError)>,
    /// File tables still being read on other threads, by table index.
    pending_tables: std::collections::HashMap<usize, PendingTable>,
    socket_listener: bool,
    /// Tokens and line of the statement being applied.
    tokens: Vec<Token>,
    starts: Vec<usize>,
    end_line: u32,
    end_file: Arc<str>,
    /// yacc's `yyerrflag`: after an error, a syntax error is reported only once three
    /// tokens have been read and taken since (the error's own newline counts as one), so a
    /// run of bad lines gets one message, as from OpenSMTPD's parser.
    errflag: usize,
}

/// Outcome of a statement that failed a check; the message was already recorded.
struct Failed;
type Check<T> = Result<T, Failed>;

impl<'s> Parser<'s> {
    pub fn new(system: &'s dyn System, hostname: String) -> Parser<'s> {
        let mut cfg = Config {
            hostname,
            admd: None,
            bounce_warn_interval: Vec::new(),
            cas: Vec::new(),
            pkis: Vec::new(),
            mda_limits: Vec::new(),
            mda_wrappers: Vec::new(),
            mta_max_deferred: None,
            mta_limits: Vec::new(),
            procs: Vec::new(),
            queue: QueueOptions::default(),
            scheduler_limits: Vec::new(),
            smtp: SmtpOptions::default(),
            smtp_limits: Vec::new(),
            srs: SrsOptions::default(),
            tables: Vec::new(),
            listeners: Vec::new(),
            filters: Vec::new(),
            actions: Vec::new(),
            rules: Vec::new(),
            items: Vec::new(),
        };
        super::builtin::add_builtin_tables(&mut cfg, system);
        Parser {
            lexers: Vec::new(),
            macros: Macros::default(),
            pending: VecDeque::new(),
            errflag: 0,
            diags: Diagnostics::default(),
            cfg,
            system,
            dynamic_tables: 0,
            dynamic_chains: 0,
            seq: 0,
            lex_msgs: VecDeque::new(),
            pending_tables: std::collections::HashMap::new(),
            socket_listener: false,
            tokens: Vec::new(),
            starts: Vec::new(),
            end_line: 0,
            end_file: Arc::from(""),
        }
    }

    /// Apply `-D` definitions.
    pub fn define_macros(&mut self, defines: &[String]) {
        for d in defines {
            match d.rfind('=') {
                Some(i) => self.macros.define_persistent(&d[..i], &d[i + 1..]),
                None => self
                    .diags
                    .plain(format!("warn: could not parse macro definition {d}")),
            }
        }
    }

    /// Parse `path` and everything it includes. Returns `Err(Fatal)` when parsing had to stop.
    pub fn parse_file(&mut self, path: &str) -> Result<(), Fatal> {
        let src = match std::fs::read(path) {
            Ok(s) => s,
            Err(e) => {
                self.diags.plain(format!(
                    "pushfile: {path}: {}",
                    crate::config::diag::strerror(&e)
                ));
                return Err(Fatal);
            }
        };
        self.lexers.push(Lexer::new(path, src));
        self.run()
    }

    /// Parse configuration text given in memory (tests, fuzzing).
    pub fn parse_text(&mut self, name: &str, text: &[u8]) -> Result<(), Fatal> {
        self.lexers.push(Lexer::new(name, text.to_vec()));
        self.run()
    }

    pub fn finish(self) -> (Config, Diagnostics) {
        (self.cfg, self.diags)
    }

    /// Print the lexer's messages for every token up to `seq`.
    fn flush_lex(&mut self, seq: u64) {
        while let Some((s, _)) = self.lex_msgs.front() {
            if *s > seq {
                break;
            }
            if let Some((_, e)) = self.lex_msgs.pop_front() {
                self.diags.at(&e.file, e.line, e.message);
            }
        }
    }

    fn next_token(&mut self) -> Token {
        if let Some(t) = self.pending.pop_front() {
            return t;
        }
        loop {
            let Some(lexer) = self.lexers.last_mut() else {
                return Token {
                    seq: u64::MAX,
                    kind: TokenKind::Eof,
                    line: 0,
                    file: Arc::from(""),
                };
            };
            let mut t = lexer.next_token(&self.macros);
            self.seq += 1;
            t.seq = self.seq;
            for e in lexer.errors.drain(..) {
                self.lex_msgs.push_back((t.seq, e));
            }
            if t.kind == TokenKind::Eof && self.lexers.len() > 1 {
                self.lexers.pop();
                continue;
            }
            return t;
        }
    }

    fn run(&mut self) -> Result<(), Fatal> {
        // Bounded: every iteration consumes at least one token or ends at EOF.
        loop {
            let mut toks = Vec::new();
            let mut depth: i32 = 0;
            let terminator = loop {
                let t = self.next_token();
                match t.kind {
                    TokenKind::Eof => break t,
                    TokenKind::Newline if depth <= 0 => break t,
                    TokenKind::Punct('{') => depth += 1,
                    TokenKind::Punct('}') => depth -= 1,
                    _ => {}
                }
                toks.push(t);
            };
            if toks.is_empty() {
                // A blank line: its newline is taken.
                self.took(usize::from(terminator.kind == TokenKind::Newline));
            } else {
                self.statement(toks, &terminator)?;
            }
            // Error recovery may have put tokens back to be read again, even at the end.
            if terminator.kind == TokenKind::Eof && self.pending.is_empty() {
                self.flush_lex(u64::MAX);
                return Ok(());
            }
        }
    }

    fn statement(&mut self, toks: Vec<Token>, terminator: &Token) -> Result<(), Fatal> {
        if let Some((kind, entries)) = plain_inline_table(&toks) {
            return self.inline_table_statement(toks, terminator, kind, entries);
        }
        let rendered = render(&toks);
        match Grammar::parse(Rule::statement, &rendered.text) {
            Err(e) => {
                let pos = match e.location {
                    pest::error::InputLocation::Pos(p) => p,
                    pest::error::InputLocation::Span((s, _)) => s,
                };
                let idx = if pos >= rendered.text.len() {
                    toks.len()
                } else {
                    rendered.starts.iter().rposition(|&s| s <= pos).unwrap_or(0)
                };
                let (file, line) = match toks.get(idx) {
                    Some(t) => (t.file.clone(), t.line),
                    None => (terminator.file.clone(), terminator.line),
                };
                // OpenSMTPD's yacc parser takes its default reductions before it notices a bad
                // token: when the tokens before the error already form a whole statement, that
                // statement takes effect (a `match ... action "x" junk` line still adds its
                // rule), and if it fails its own check, that message replaces the syntax error.
                let mut report = true;
                // The tokens before the bad one were taken; a statement that starts with a
                // bare string has had it taken as the name of a macro definition.
                let starts_with_string = idx == 0 && matches!(toks[0].kind, TokenKind::Str(_));
                self.took(if starts_with_string { 1 } else { idx });
                // The name-level checks happen once the token after the name is read.
                if let Some(t) = toks.get(2) {
                    self.flush_lex(t.seq.min(toks.get(idx).map_or(terminator.seq, |x| x.seq)));
                }
                match self.mid_statement_checks(&toks, idx) {
                    Some(Ok(())) => {}
                    Some(Err(Stop::Failed)) => report = false,
                    Some(Err(Stop::Fatal)) => return Err(Fatal),
                    None => {}
                }
                let mut prefix_applied = false;
                if report && idx > 0 && idx < toks.len() {
                    match self.apply_closed_prefix(&toks[..idx], terminator) {
                        Some(Ok(())) => prefix_applied = true,
                        Some(Err(Stop::Failed)) => report = false,
                        Some(Err(Stop::Fatal)) => return Err(Fatal),
                        None => {}
                    }
                }
                if report && !prefix_applied {
                    self.mid_rule_effects(&toks, idx);
                }
                self.flush_lex(toks.get(idx).map_or(terminator.seq, |t| t.seq));
                if report && self.errflag == 0 {
                    let hint = super::hints::syntax_hint(&toks, idx);
                    self.diags.at_hint(&file, line, "syntax error".into(), hint);
                }
                // Recovery takes the newline that ends the skip.
                self.errflag = 2;
                // Skip to the next newline, as yacc's error recovery does; what follows it is
                // read again as new statements.
                let from = idx.min(toks.len());
                let nl = toks[from..]
                    .iter()
                    .position(|t| t.kind == TokenKind::Newline);
                // Error recovery reads (and drops) every token up to that newline.
                self.flush_lex(nl.map_or(terminator.seq, |n| toks[from + n].seq));
                if let Some(nl) = nl {
                    let mut again: VecDeque<Token> =
                        toks[from + nl + 1..].iter().cloned().collect();
                    again.push_back(terminator.clone());
                    again.append(&mut self.pending);
                    self.pending = again;
                }
                Ok(())
            }
            Ok(mut pairs) => {
                let Some(stmt) = pairs.next().and_then(|p| {
                    p.into_inner()
                        .filter(not_punct)
                        .find(|p| p.as_rule() != Rule::EOI)
                }) else {
                    return Ok(());
                };
                self.flush_lex(terminator.seq);
                // A whole statement: its tokens and its newline are taken.
                let taken = toks.len() + usize::from(terminator.kind == TokenKind::Newline);
                self.tokens = toks;
                self.starts = rendered.starts;
                self.end_line = terminator.line;
                self.end_file = terminator.file.clone();
                let r = self.apply(stmt);
                self.tokens.clear();
                match r {
                    Ok(_) => {
                        self.took(taken);
                        Ok(())
                    }
                    // A failed check (YYERROR) recovers like a syntax error, silently.
                    Err(Stop::Failed) => {
                        self.errflag = 2;
                        Ok(())
                    }
                    Err(Stop::Fatal) => Err(Fatal),
                }
            }
        }
    }
}

/// The entries at the head of an inline table's braces, as the grammar's `table_values`
/// reads them: values, or `key = value` / `key => value` pairs if the first entry is one
/// (keys lower-cased), separated by one comma, newlines or nothing. Reading stops at the
/// first token that does not go on with the list; the last number is how many tokens the
/// entries took, with the separators between them. With no entry the kind is `Unusable`
/// (6.8's untyped table).
fn read_entries(body: &[Token]) -> (TableKind, Vec<(String, String)>, usize) {
    let string = |t: Option<&Token>| match t.map(|t| &t.kind) {
        Some(TokenKind::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let pair_sign = |t: Option<&Token>| {
        matches!(
            t.map(|t| &t.kind),
            Some(TokenKind::Arrow | TokenKind::Punct('='))
        )
    };
    let mapping = pair_sign(body.get(1));
    let mut entries = Vec::new();
    let (mut i, mut read) = (0, 0);
    while let Some(key) = string(body.get(i)) {
        let mut next = i + 1;
        let value = if mapping {
            let Some(value) = pair_sign(body.get(next))
                .then(|| string(body.get(next + 1)))
                .flatten()
            else {
                break;
            };
            next += 2;
            value
        } else {
            String::new()
        };
        entries.push((key.to_ascii_lowercase(), value));
        read = next;
        i = next;
        // A separator: one comma, one or more newlines, or nothing.
        match body.get(i).map(|t| &t.kind) {
            Some(TokenKind::Punct(',')) => i += 1,
            Some(TokenKind::Newline) => {
                while body.get(i).is_some_and(|t| t.kind == TokenKind::Newline) {
                    i += 1;
                }
            }
            _ => {}
        }
    }
    let kind = match (entries.is_empty(), mapping) {
        (true, _) => TableKind::Unusable,
        (false, true) => TableKind::Mapping,
        (false, false) => TableKind::List,
    };
    (kind, entries, read)
}

/// Whether 6.8 has named the filter of a `filter` statement whose syntax error is at
/// token `idx`: after `filter NAME phase`, or `filter NAME proc-exec CMD`.
fn filter_named_early(toks: &[Token], idx: usize) -> bool {
    (idx >= 3
        && toks
            .get(2)
            .is_some_and(|t| t.kind == TokenKind::Keyword("phase")))
        || (idx >= 4
            && toks
                .get(2)
                .is_some_and(|t| t.kind == TokenKind::Keyword("proc-exec"))
            && matches!(toks.get(3).map(|t| &t.kind), Some(TokenKind::Str(_))))
}

/// The tokens of `table NAME { ... }` when the braces hold nothing but a well-formed list of
/// strings or of `key = value` / `key => value` pairs, as the grammar's `table_values` reads
/// them: its kind and its entries (keys lower-cased). Anything else — numbers, keywords, a
/// stray separator, a mixed list — gets `None` and goes through the grammar, which gives the
/// same result for the statements accepted here and the syntax errors for the others. A
/// table of 100,000 entries is one statement; reading it here costs a pass over its tokens.
fn plain_inline_table(toks: &[Token]) -> Option<(TableKind, Vec<(String, String)>)> {
    let [first, name, open, body @ .., close] = toks else {
        return None;
    };
    if first.kind != TokenKind::Keyword("table")
        || !matches!(name.kind, TokenKind::Str(_))
        || open.kind != TokenKind::Punct('{')
        || close.kind != TokenKind::Punct('}')
    {
        return None;
    }
    // The whole body must be entries (a separator before `}` is a syntax error: the
    // grammar reports it).
    let (kind, entries, read) = read_entries(body);
    (!entries.is_empty() && read == body.len()).then_some((kind, entries))
}

impl Parser<'_> {
    /// A `table NAME { ... }` statement that [`plain_inline_table`] read: the same effect
    /// as the grammar's `table` with `table_values`.
    fn inline_table_statement(
        &mut self,
        toks: Vec<Token>,
        terminator: &Token,
        kind: TableKind,
        entries: Vec<(String, String)>,
    ) -> Result<(), Fatal> {
        self.flush_lex(terminator.seq);
        let TokenKind::Str(name) = toks[1].kind.clone() else {
            return Ok(());
        };
        self.tokens = toks;
        self.end_line = terminator.line;
        self.end_file = terminator.file.clone();
        let span = self.span();
        self.tokens.clear();
        if self.cfg.table_named(&name).is_some() {
            return match self.fatal::<()>(format!("table_create: table \"{name}\" already defined"))
            {
                Err(Stop::Fatal) => Err(Fatal),
                _ => Ok(()),
            };
        }
        self.add_inline_table(name, kind, crate::table::build_entries(entries), span);
        self.took(usize::MAX);
        Ok(())
    }

    /// `n` tokens were taken since the last error (yacc decrements `yyerrflag` per shift).
    fn took(&mut self, n: usize) {
        self.errflag = self.errflag.saturating_sub(n);
    }

    /// Checks OpenSMTPD makes as soon as a statement's name is read, before the rest of the
    /// statement: they win over a syntax error later on the line.
    fn mid_statement_checks(&mut self, toks: &[Token], idx: usize) -> Option<Apply> {
        let name = match toks.get(1).map(|t| &t.kind) {
            Some(TokenKind::Str(n)) => n.clone(),
            _ => return None,
        };
        let line = toks[1].line;
        let file = toks[1].file.clone();
        match toks[0].kind {
            TokenKind::Keyword("action") if idx >= 2 && self.cfg.action_named(&name).is_some() => {
                self.diags.at(
                    &file,
                    line,
                    format!("dispatcher already declared with that name: {name}"),
                );
                Some(Err(Stop::Failed))
            }
            TokenKind::Keyword("proc")
                if idx >= 3 && self.cfg.procs.iter().any(|p| p.name == name) =>
            {
                self.diags.at(
                    &file,
                    line,
                    format!("processor already exists with that name: {name}"),
                );
                Some(Err(Stop::Failed))
            }
            TokenKind::Keyword("pki") | TokenKind::Keyword("ca")
                if idx >= 2 && !valid_domain_name(&name) =>
            {
                self.diags
                    .at(&file, line, format!("not a valid domain name: {name}"));
                Some(Err(Stop::Failed))
            }
            // `filter NAME phase` and `filter NAME proc-exec CMD` name the filter before the
            // rest is read (mid-rule actions in 6.8's grammar): a duplicate is reported then.
            TokenKind::Keyword("filter")
                if filter_named_early(toks, idx) && self.cfg.filter_named(&name).is_some() =>
            {
                self.diags.at(
                    &file,
                    line,
                    format!("filter already exists with that name: {name}"),
                );
                Some(Err(Stop::Failed))
            }
            TokenKind::Keyword("table") if idx >= 2 && self.cfg.table_named(&name).is_some() => {
                self.diags.plain(format!(
                    "smtpd: table_create: table \"{name}\" already defined"
                ));
                Some(Err(Stop::Fatal))
            }
            _ => None,
        }
    }

    /// What 6.8's mid-rule actions did before the syntax error at `idx`, when the tokens
    /// before it are not a whole statement: `table NAME` followed by anything but a
    /// backend string creates the (inline) table, `filter NAME phase` and `filter NAME
    /// proc-exec CMD` name the filter; later references then find them.
    fn mid_rule_effects(&mut self, toks: &[Token], idx: usize) {
        let name = match toks.get(1).map(|t| &t.kind) {
            Some(TokenKind::Str(n)) => n.clone(),
            _ => return,
        };
        let span = Span {
            file: toks[1].file.clone(),
            line: toks[1].line,
        };
        match toks[0].kind {
            TokenKind::Keyword("filter") if filter_named_early(toks, idx) => {
                self.register_failed_filter(&name, span);
            }
            TokenKind::Keyword("table")
                if idx >= 2
                    && !matches!(toks.get(2).map(|t| &t.kind), Some(TokenKind::Str(_)))
                    && self.cfg.table_named(&name).is_none() =>
            {
                // The entries read before the error are in it, and make it a list or a
                // mapping; with none it has no type, and no lookup may use it.
                let (kind, entries, _) =
                    if toks.get(2).map(|t| &t.kind) == Some(&TokenKind::Punct('{')) {
                        read_entries(toks.get(3..idx).unwrap_or_default())
                    } else {
                        (TableKind::Unusable, Vec::new(), 0)
                    };
                self.add_inline_table(name, kind, crate::table::build_entries(entries), span);
            }
            _ => {}
        }
    }

    /// Apply `prefix` if it is a complete statement.
    fn apply_closed_prefix(&mut self, prefix: &[Token], terminator: &Token) -> Option<Apply> {
        let rendered = render(prefix);
        let mut pairs = Grammar::parse(Rule::statement, &rendered.text).ok()?;
        let stmt = pairs
            .next()?
            .into_inner()
            .filter(not_punct)
            .find(|p| p.as_rule() != Rule::EOI)?;
        self.tokens = prefix.to_vec();
        self.starts = rendered.starts;
        self.end_line = prefix.last().map(|t| t.line).unwrap_or(terminator.line);
        self.end_file = terminator.file.clone();
        let r = self.apply(stmt);
        self.tokens.clear();
        Some(r)
    }
}

/// Reads a table source.
type TableLoader = fn(&str) -> Result<table::Loaded, LoadError>;

/// A table file being read on another thread.
struct PendingTable {
    handle: std::thread::JoinHandle<Result<table::Loaded, LoadError>>,
    /// Where its error messages go in the output, if it fails.
    diag_pos: usize,
    file: Arc<str>,
    line: u32,
    /// File tables take their kind (list or mapping) from their content.
    set_kind: bool,
}

/// Why a statement stopped early.
enum Stop {
    /// A check failed; the message is recorded; parsing goes on with the next statement.
    Failed,
    /// A fatal error; parsing ends.
    Fatal,
}

impl From<Failed> for Stop {
    fn from(_: Failed) -> Stop {
        Stop::Failed
    }
}

type Apply<T = ()> = Result<T, Stop>;

fn s(p: &P) -> String {
    unquote(p.as_str())
}

/// Parse a delay (`30s`, `5m`, `4h`, `2d`) into seconds.
pub fn parse_delay(text: &str) -> Option<u64> {
    if text.len() < 2 {
        return None;
    }
    let (num, unit) = text.split_at(text.len() - 1);
    let factor: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    if !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    if n < 1 || n > (i32::MAX as u64) / factor {
        return None;
    }
    Some(n * factor)
}

/// Parse a size the way scan_scaled(3) does: a number with an optional B/K/M/G/T/P/E suffix.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    let (num, mult) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'B' => 1,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'P' => 1 << 50,
                'E' => 1 << 60,
                _ => return None,
            };
            (&t[..t.len() - 1], m)
        }
        _ => (t, 1),
    };
    if num.starts_with('-') {
        return None;
    }
    if let Some((whole, frac)) = num.split_once('.') {
        if mult == 1 || whole.is_empty() && frac.is_empty() {
            return None;
        }
        let w: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let f: f64 = format!("0.{frac}").parse().ok()?;
        return w.checked_mul(mult)?.checked_add((f * mult as f64) as u64);
    }
    if !num.bytes().all(|b| b.is_ascii_digit()) || num.is_empty() {
        return None;
    }
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// `res_hnok`-style host name check used for pki/ca names (`*` is allowed too).
fn valid_domain_name(name: &str) -> bool {
    if name == "*" {
        return true;
    }
    if name.is_empty() {
        return false;
    }
    let b = name.as_bytes();
    let mut prev = b'.';
    for (i, &c) in b.iter().enumerate() {
        let next = b.get(i + 1).copied();
        let ok = if c == b'.' {
            prev != b'.'
        } else if c == b'-' {
            prev != b'.' && next.is_some_and(|n| n != b'.')
        } else {
            c.is_ascii_alphanumeric() || c == b'_'
        };
        if !ok {
            return false;
        }
        prev = c;
    }
    true
}

impl<'s> Parser<'s> {
    // ------------------------------------------------------------ positions and messages

    /// Line of the last token inside `p`.
    fn line_end(&self, p: &P) -> (Arc<str>, u32) {
        let end = p.as_span().end();
        let idx = self.starts.iter().rposition(|&st| st < end).unwrap_or(0);
        match self.tokens.get(idx) {
            Some(t) => (t.file.clone(), t.line),
            None => (self.end_file.clone(), self.end_line),
        }
    }

    fn fail_at<T>(&mut self, p: &P, msg: String) -> Check<T> {
        let (f, l) = self.line_end(p);
        self.diags.at(&f, l, msg);
        Err(Failed)
    }

    /// A check made when the whole statement has been read (the newline was the lookahead).
    fn fail_end<T>(&mut self, msg: String) -> Check<T> {
        let f = self.end_file.clone();
        self.diags.at(&f, self.end_line, msg);
        Err(Failed)
    }

    fn span(&self) -> Span {
        let t = self.tokens.first();
        Span {
            file: t
                .map(|t| t.file.clone())
                .unwrap_or_else(|| self.end_file.clone()),
            line: t.map(|t| t.line).unwrap_or(self.end_line),
        }
    }

    fn fatal<T>(&mut self, msg: String) -> Apply<T> {
        self.diags.plain(format!("smtpd: {msg}"));
        Err(Stop::Fatal)
    }

    // ------------------------------------------------------------ statements

    fn apply(&mut self, stmt: P) -> Apply {
        match stmt.as_rule() {
            Rule::include => self.include(stmt),
            Rule::macro_def => self.macro_def(stmt),
            Rule::admd => {
                let v = s(&stmt
                    .into_inner()
                    .filter(not_punct)
                    .nth(1)
                    .expect("grammar: admd value"));
                if !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                    let f = self.end_file.clone();
                    self.diags.at(&f, self.end_line, "not a valid admd".into());
                    return Err(Stop::Failed);
                }
                self.cfg.admd = Some(v);
                self.cfg.items.push(Item::Admd);
                Ok(())
            }
            Rule::bounce => {
                let mut delays = Vec::new();
                for p in stmt
                    .into_inner()
                    .filter(not_punct)
                    .filter(|p| p.as_rule() == Rule::STR)
                {
                    let v = s(&p);
                    match parse_delay(&v) {
                        Some(sec) => delays.push(Delay {
                            spelled: v,
                            seconds: sec,
                        }),
                        None => return Ok(self.fail_at(&p, format!("invalid bounce delay: {v}"))?),
                    }
                }
                delays.truncate(4);
                self.cfg.bounce_warn_interval = delays;
                self.cfg.items.retain(|i| *i != Item::Bounce);
                self.cfg.items.push(Item::Bounce);
                Ok(())
            }
            Rule::ca => self.ca(stmt),
            Rule::pki => self.pki(stmt),
            Rule::mda => self.mda(stmt),
            Rule::mta => self.mta(stmt),
            Rule::proc => self.proc_stmt(stmt),
            Rule::queue => self.queue(stmt),
            Rule::scheduler => {
                let limits = self.limits(
                    stmt.into_inner()
                        .filter(not_punct)
                        .filter(|p| p.as_rule() == Rule::limit_kv),
                    LimitKind::Scheduler,
                )?;
                self.cfg.scheduler_limits.push(limits);
                self.cfg
                    .items
                    .push(Item::SchedulerLimit(self.cfg.scheduler_limits.len() - 1));
                Ok(())
            }
            Rule::smtp => self.smtp(stmt),
            Rule::srs => self.srs(stmt),
            Rule::table => self.table(stmt),
            Rule::listen => self.listen(stmt),
            Rule::action => self.action(stmt),
            Rule::match_rule => self.match_rule(stmt),
            Rule::filter => self.filter(stmt),
            _ => Ok(()),
        }
    }

    fn include(&mut self, stmt: P) -> Apply {
        let p = stmt
            .into_inner()
            .filter(not_punct)
            .nth(1)
            .expect("grammar: include path");
        let path = s(&p);
        match std::fs::read(&path) {
            Ok(src) => {
                if self.lexers.len() >= 64 {
                    self.fail_at::<()>(&p, format!("failed to include file {path}"))?;
                }
                self.lexers.push(Lexer::new(path.as_str(), src));
                Ok(())
            }
            Err(e) => {
                self.diags.plain(format!(
                    "pushfile: {path}: {}",
                    crate::config::diag::strerror(&e)
                ));
                Ok(self.fail_at(&p, format!("failed to include file {path}"))?)
            }
        }
    }

    fn macro_def(&mut self, stmt: P) -> Apply {
        let mut it = stmt.into_inner().filter(not_punct);
        let name_p = it.next().expect("grammar: macro name");
        let name = s(&name_p);
        let value = s(&it.next().expect("grammar: macro value"));
        if name.chars().any(|c| c == ' ' || c == '\t') {
            return Ok(self.fail_at(&name_p, "macro name cannot contain whitespace".into())?);
        }
        self.macros.define(&name, &value);
        Ok(())
    }

    fn ca(&mut self, stmt: P) -> Apply {
        let mut strs = stmt
            .into_inner()
            .filter(not_punct)
            .filter(|p| p.as_rule() == Rule::STR);
        let name_p = strs.next().expect("grammar: ca name");
        let name = s(&name_p);
        if !valid_domain_name(&name) {
            return Ok(self.fail_at(&name_p, format!("not a valid domain name: {name}"))?);
        }
        let name = name.to_ascii_lowercase();
        let cert = s(&strs.next().expect("grammar: ca cert"));
        let span = self.span();
        if let Some(c) = self.cfg.cas.iter_mut().find(|c| c.name == name) {
            c.cert = cert;
        } else {
            self.cfg.cas.push(Ca { name, cert, span });
            self.cfg.items.push(Item::Ca(self.cfg.cas.len() - 1));
        }
        Ok(())
    }

    fn pki(&mut self, stmt: P) -> Apply {
        let mut it = stmt.into_inner().filter(not_punct).skip(1);
        let name_p = it.next().expect("grammar: pki name");
        let name = s(&name_p);
        if !valid_domain_name(&name) {
            return Ok(self.fail_at(&name_p, format!("not a valid domain name: {name}"))?);
        }
        let name = name.to_ascii_lowercase();
        let idx = match self.cfg.pkis.iter().position(|p| p.name == name) {
            Some(i) => i,
            None => {
                let span = self.span();
                self.cfg.pkis.push(Pki {
                    name,
                    cert: None,
                    key: None,
                    dhe: None,
                    span,
                });
                self.cfg.items.push(Item::Pki(self.cfg.pkis.len() - 1));
                self.cfg.pkis.len() - 1
            }
        };
        for opt in it {
            let mut o = opt.clone().into_inner().filter(not_punct);
            let kw = o.next().expect("grammar: pki option").as_rule();
            let v = s(&o.next().expect("grammar: pki value"));
            match kw {
                Rule::k_cert => self.cfg.pkis[idx].cert = Some(v),
                Rule::k_key => self.cfg.pkis[idx].key = Some(v),
                _ => {
                    let l = v.to_ascii_lowercase();
                    if !matches!(l.as_str(), "none" | "auto" | "legacy") {
                        return Ok(self.fail_at(&opt, format!("invalid DHE keyword: {v}"))?);
                    }
                    self.cfg.pkis[idx].dhe = Some(l);
                }
            }
        }
        Ok(())
    }

    fn limits<'a>(&mut self, kvs: impl Iterator<Item = P<'a>>, kind: LimitKind) -> Check<Limits> {
        let mut out = Vec::new();
        for kv in kvs {
            let mut it = kv.clone().into_inner().filter(not_punct);
            let key = s(&it.next().expect("grammar: limit key"));
            let value: i64 = it
                .next()
                .expect("grammar: limit value")
                .as_str()
                .parse()
                .unwrap_or(0);
            if !kind.keys().contains(&key.as_str()) {
                return self.fail_at(&kv, format!("{}: {key}", kind.message()));
            }
            out.push((key, value));
        }
        Ok(out)
    }

    fn mda(&mut self, stmt: P) -> Apply {
        let inner = stmt
            .into_inner()
            .filter(not_punct)
            .nth(1)
            .expect("grammar: mda body");
        match inner.as_rule() {
            Rule::mda_limit => {
                let limits = self.limits(
                    inner
                        .into_inner()
                        .filter(not_punct)
                        .filter(|p| p.as_rule() == Rule::limit_kv),
                    LimitKind::Mda,
                )?;
                self.cfg.mda_limits.push(limits);
                self.cfg
                    .items
                    .push(Item::MdaLimit(self.cfg.mda_limits.len() - 1));
            }
            _ => {
                let mut strs = inner
                    .clone()
                    .into_inner()
                    .filter(not_punct)
                    .filter(|p| p.as_rule() == Rule::STR);
                let name = s(&strs.next().expect("grammar: wrapper name"));
                let cmd = s(&strs.next().expect("grammar: wrapper command"));
                if self.cfg.mda_wrappers.iter().any(|(n, _)| *n == name) {
                    return Ok(self.fail_at(
                        &inner,
                        format!("mda wrapper already declared with that name: {name}"),
                    )?);
                }
                self.cfg.mda_wrappers.push((name, cmd));
                self.cfg
                    .items
                    .push(Item::MdaWrapper(self.cfg.mda_wrappers.len() - 1));
            }
        }
        Ok(())
    }

    fn mta(&mut self, stmt: P) -> Apply {
        let inner = stmt
            .into_inner()
            .filter(not_punct)
            .nth(1)
            .expect("grammar: mta body");
        match inner.as_rule() {
            Rule::mta_max_deferred => {
                let n = inner
                    .into_inner()
                    .filter(not_punct)
                    .nth(1)
                    .map(|p| p.as_str().parse().unwrap_or(0))
                    .unwrap_or(0);
                self.cfg.mta_max_deferred = Some(n);
                self.cfg.items.retain(|i| *i != Item::MtaMaxDeferred);
                self.cfg.items.push(Item::MtaMaxDeferred);
            }
            _ => {
                let mut lim = MtaLimit {
                    domain: None,
                    inet4: false,
                    inet6: false,
                    limits: Vec::new(),
                };
                for p in inner.into_inner().filter(not_punct) {
                    match p.as_rule() {
                        Rule::STR => lim.domain = Some(s(&p)),
                        Rule::mta_limit_opt => {
                            let o = p
                                .into_inner()
                                .find(not_punct)
                                .expect("grammar: mta limit option");
                            match o.as_rule() {
                                Rule::k_inet4 => lim.inet4 = true,
                                Rule::k_inet6 => lim.inet6 = true,
                                _ => {
                                    let mut l = self.limits(std::iter::once(o), LimitKind::Mta)?;
                                    lim.limits.append(&mut l);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                self.cfg.mta_limits.push(lim);
                self.cfg
                    .items
                    .push(Item::MtaLimit(self.cfg.mta_limits.len() - 1));
            }
        }
        Ok(())
    }

    fn proc_options<'a>(
        &mut self,
        opts: impl Iterator<Item = P<'a>>,
        proc: &mut Proc,
    ) -> Check<()> {
        for o in opts {
            let mut it = o.clone().into_inner().filter(not_punct);
            let kw = it.next().expect("grammar: proc option").as_rule();
            let v = s(&it.next().expect("grammar: proc option value"));
            let (slot, what) = match kw {
                Rule::k_user => (&mut proc.user, "user"),
                Rule::k_group => (&mut proc.group, "group"),
                _ => (&mut proc.chroot, "chroot"),
            };
            if slot.is_some() {
                return self.fail_at(&o, format!("{what} already specified for this processor"));
            }
            *slot = Some(v);
        }
        Ok(())
    }

    fn proc_stmt(&mut self, stmt: P) -> Apply {
        let mut it = stmt.into_inner().filter(not_punct).skip(1);
        let name_p = it.next().expect("grammar: proc name");
        let name = s(&name_p);
        let command = s(&it.next().expect("grammar: proc command"));
        if self.cfg.procs.iter().any(|p| p.name == name) {
            return Ok(self.fail_at(
                &name_p,
                format!("processor already exists with that name: {name}"),
            )?);
        }
        let mut proc = Proc {
            name,
            command,
            user: None,
            group: None,
            chroot: None,
            span: self.span(),
        };
        self.proc_options(it, &mut proc)?;
        self.cfg.procs.push(proc);
        self.cfg.items.push(Item::Proc(self.cfg.procs.len() - 1));
        Ok(())
    }

    fn queue(&mut self, stmt: P) -> Apply {
        let inner = stmt
            .into_inner()
            .filter(not_punct)
            .nth(1)
            .expect("grammar: queue body");
        match inner.as_rule() {
            Rule::k_compression => {
                self.cfg.queue.compression = true;
                self.push_once(Item::Queue(QueueItem::Compression));
            }
            Rule::queue_encryption => {
                let key = inner.into_inner().filter(not_punct).nth(1).map(|p| s(&p));
                self.cfg.queue.encryption = Some(key);
                self.push_once(Item::Queue(QueueItem::Encryption));
            }
            _ => {
                let p = inner
                    .into_inner()
                    .filter(not_punct)
                    .nth(1)
                    .expect("grammar: queue ttl");
                let v = s(&p);
                match parse_delay(&v) {
                    Some(sec) => {
                        self.cfg.queue.ttl = Delay {
                            spelled: v,
                            seconds: sec,
                        }
                    }
                    None => return Ok(self.fail_at(&p, format!("invalid ttl delay: {v}"))?),
                }
                self.push_once(Item::Queue(QueueItem::Ttl));
            }
        }
        Ok(())
    }

    fn push_once(&mut self, item: Item) {
        self.cfg.items.retain(|i| *i != item);
        self.cfg.items.push(item);
    }

    fn smtp(&mut self, stmt: P) -> Apply {
        let inner = stmt
            .into_inner()
            .filter(not_punct)
            .nth(1)
            .expect("grammar: smtp body");
        match inner.as_rule() {
            Rule::smtp_limit => {
                let limits = self.limits(
                    inner
                        .into_inner()
                        .filter(not_punct)
                        .filter(|p| p.as_rule() == Rule::limit_kv),
                    LimitKind::Session,
                )?;
                for (k, v) in &limits {
                    match k.as_str() {
                        "max-rcpt" => self.cfg.smtp.max_rcpt = *v,
                        _ => self.cfg.smtp.max_mails = *v,
                    }
                }
                self.cfg.smtp_limits.push(limits);
                self.cfg
                    .items
                    .push(Item::Smtp(SmtpItem::Limit(self.cfg.smtp_limits.len() - 1)));
            }
            Rule::smtp_ciphers => {
                self.cfg.smtp.ciphers = inner.into_inner().filter(not_punct).nth(1).map(|p| s(&p));
                self.push_once(Item::Smtp(SmtpItem::Ciphers));
            }
            Rule::smtp_max_message_size => {
                let p = inner
                    .into_inner()
                    .filter(not_punct)
                    .nth(1)
                    .expect("grammar: size");
                let v = if p.as_rule() == Rule::STR {
                    s(&p)
                } else {
                    p.as_str().to_string()
                };
                match parse_size(&v) {
                    Some(n) => self.cfg.smtp.max_message_size = n,
                    None => return Ok(self.fail_at(&p, format!("invalid size: {v}"))?),
                }
                self.push_once(Item::Smtp(SmtpItem::MaxMessageSize));
            }
            _ => {
                let p = inner
                    .into_inner()
                    .filter(not_punct)
                    .nth(1)
                    .expect("grammar: delimiter");
                let v = s(&p);
                let mut chars = v.chars();
                let (Some(c), None) = (chars.next(), chars.next()) else {
                    return Ok(
                        self.fail_at(&p, "subaddressing-delimiter must be one character".into())?
                    );
                };
                if c.is_whitespace() || !(c.is_ascii_graphic()) || c == '@' {
                    return Ok(self.fail_at(&p, "sub-addr-delim uses invalid character".into())?);
                }
                self.cfg.smtp.sub_addr_delim = c;
                self.push_once(Item::Smtp(SmtpItem::SubAddrDelim));
            }
        }
        Ok(())
    }

    fn srs(&mut self, stmt: P) -> Apply {
        let inner = stmt
            .into_inner()
            .filter(not_punct)
            .nth(1)
            .expect("grammar: srs body");
        let rule = inner.as_rule();
        let p = inner
            .into_inner()
            .filter(not_punct)
            .filter(|p| p.as_rule() == Rule::STR)
            .last()
            .expect("grammar: srs value");
        let v = s(&p);
        match rule {
            Rule::srs_key => {
                self.cfg.srs.key = Some(v);
                self.push_once(Item::Srs(SrsItem::Key));
            }
            Rule::srs_key_backup => {
                self.cfg.srs.key_backup = Some(v);
                self.push_once(Item::Srs(SrsItem::KeyBackup));
            }
            _ => {
                match parse_delay(&v) {
                    None => return Ok(self.fail_at(&p, format!("ttl delay \"{v}\" is invalid"))?),
                    Some(sec) if sec < 86400 => {
                        return Ok(self.fail_at(&p, format!("ttl delay \"{v}\" is too short"))?);
                    }
                    Some(sec) => {
                        self.cfg.srs.ttl = Some(Delay {
                            spelled: v,
                            seconds: sec,
                        })
                    }
                }
                self.push_once(Item::Srs(SrsItem::Ttl));
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ tables

    fn add_table(&mut self, table: Table) -> TableId {
        self.cfg.tables.push(table);
        TableId(self.cfg.tables.len() - 1)
    }

    /// `table NAME { ... }`: a named inline table, in the order of the file's items.
    fn add_inline_table(
        &mut self,
        name: String,
        kind: TableKind,
        entries: std::collections::BTreeMap<String, String>,
        span: Span,
    ) {
        let id = self.add_table(Table {
            name,
            backend: TableBackend::Inline,
            kind,
            entries: Arc::new(entries),
            anonymous: false,
            span,
        });
        self.cfg.items.push(Item::Table(id.0));
    }

    fn table(&mut self, stmt: P) -> Apply {
        let mut it = stmt.into_inner().filter(not_punct).skip(1);
        let name_p = it.next().expect("grammar: table name");
        let name = s(&name_p);
        let span = self.span();
        let Some(body) = it.next() else { return Ok(()) };
        if body.as_rule() == Rule::table_values {
            if self.cfg.table_named(&name).is_some() {
                return self.fatal(format!("table_create: table \"{name}\" already defined"));
            }
            let (kind, entries) = inline_entries(body);
            self.add_inline_table(name, kind, entries, span);
            return Ok(());
        }
        let config = s(&body);
        let (backend, path) = if config.starts_with('/') {
            ("static".to_string(), Some(config.clone()))
        } else {
            match config.split_once(':') {
                Some((b, p)) => (b.to_string(), Some(p.to_string())),
                None => (config.clone(), None),
            }
        };
        if let Some(p) = &path
            && !p.starts_with('/')
        {
            return Ok(self.fail_at(
                &body,
                format!("invalid backend parameter for table: {name}"),
            )?);
        }
        let backend = if backend == "file" {
            "static".to_string()
        } else {
            backend
        };
        let known_external = table::EXTERNAL_BACKENDS.contains(&backend.as_str())
            || self.system.table_helper_exists(&backend);
        if backend != "static" && backend != "db" && !known_external {
            return self.fatal(format!(
                "table_create: backend \"{backend}\" does not exist"
            ));
        }
        if self.cfg.table_named(&name).is_some() {
            return self.fatal(format!("table_create: table \"{name}\" already defined"));
        }
        let path_s = path.clone().unwrap_or_default();
        let backend_v = match backend.as_str() {
            "static" => TableBackend::File {
                path: path_s.clone(),
                spelled: config.clone(),
            },
            "db" => TableBackend::Db {
                path: path_s.clone(),
            },
            _ => TableBackend::External {
                backend: backend.clone(),
                config: path_s.clone(),
            },
        };
        let mut t = Table {
            name: name.clone(),
            backend: backend_v,
            kind: if backend == "static" {
                TableKind::Mapping
            } else {
                TableKind::Dynamic
            },
            entries: Default::default(),
            anonymous: false,
            span,
        };
        let loader: Option<TableLoader> = match backend.as_str() {
            "static" if path.is_some() => Some(table::file::load),
            "db" => Some(table::db::load),
            _ => None,
        };
        let mut failed = false;
        let mut pending = None;
        if let Some(load) = loader {
            // Opening is checked now, so that a missing file is reported in order; reading
            // and indexing run on another thread until a statement needs the table.
            match std::fs::File::open(&path_s) {
                Err(e) => {
                    let why = crate::config::diag::strerror(&e);
                    self.diags.plain(if backend == "db" {
                        format!("{path_s}: {why}")
                    } else {
                        format!("{path_s}: fopen: {why}")
                    });
                    t.kind = TableKind::Unusable;
                    failed = true;
                }
                Ok(_) => {
                    let p = path_s.clone();
                    let (file, line) = self.line_end(&body);
                    pending = Some(PendingTable {
                        handle: std::thread::spawn(move || load(&p)),
                        diag_pos: self.diags.messages.len(),
                        file,
                        line,
                        set_kind: backend == "static",
                    });
                }
            }
        }
        let id = self.add_table(t);
        self.cfg.items.push(Item::Table(id.0));
        if let Some(p) = pending {
            self.pending_tables.insert(id.0, p);
        }
        if failed {
            return Ok(self.fail_at(
                &body,
                format!("invalid configuration file {path_s} for table {name}"),
            )?);
        }
        Ok(())
    }

    /// Resolve a `tables` pair: a reference, an inline table, or a single string.
    fn tables(&mut self, p: P) -> Check<TableId> {
        let inner = p.into_inner().find(not_punct).expect("grammar: tables");
        match inner.as_rule() {
            Rule::table_ref => {
                let name_p = inner
                    .clone()
                    .into_inner()
                    .find(not_punct)
                    .expect("grammar: table name");
                let name = s(&name_p);
                match self.cfg.table_named(&name) {
                    Some(id) => {
                        self.join_table(id.0);
                        Ok(id)
                    }
                    None => self.fail_at(&inner, format!("no such table: {name}")),
                }
            }
            Rule::inline_table => {
                let values = inner
                    .into_inner()
                    .find(not_punct)
                    .expect("grammar: table values");
                let (kind, entries) = inline_entries(values);
                Ok(self.anonymous_table(kind, entries))
            }
            _ => {
                let mut entries = std::collections::BTreeMap::new();
                entries.insert(s(&inner).to_ascii_lowercase(), String::new());
                Ok(self.anonymous_table(TableKind::List, entries))
            }
        }
    }

    fn anonymous_table(
        &mut self,
        kind: TableKind,
        entries: std::collections::BTreeMap<String, String>,
    ) -> TableId {
        let name = format!("<dynamic:{}>", self.dynamic_tables);
        self.dynamic_tables += 1;
        let span = self.span();
        self.add_table(Table {
            name,
            backend: TableBackend::Inline,
            kind,
            entries: Arc::new(entries),
            anonymous: true,
            span,
        })
    }

    fn regex_tables(&mut self, p: P) -> Check<TableMatch> {
        let mut regex = false;
        let mut table = None;
        for q in p.into_inner().filter(not_punct) {
            match q.as_rule() {
                Rule::k_regex => regex = true,
                _ => table = Some(self.tables(q)?),
            }
        }
        Ok(TableMatch {
            regex,
            table: table.expect("grammar: regex tables"),
        })
    }

    fn is_list(&self, id: TableId) -> bool {
        matches!(
            self.cfg.table(id).kind,
            TableKind::List | TableKind::Dynamic
        )
    }

    fn is_mapping(&self, id: TableId) -> bool {
        matches!(
            self.cfg.table(id).kind,
            TableKind::Mapping | TableKind::Dynamic
        )
    }

    fn need(&mut self, p: &P, id: TableId, list: bool, what: &str) -> Check<()> {
        let ok = if list {
            self.is_list(id)
        } else {
            self.is_mapping(id)
        };
        if ok {
            return Ok(());
        }
        let name = self.cfg.table(id).name.clone();
        self.fail_at(
            p,
            format!("table \"{name}\" may not be used for {what} lookups"),
        )
    }

    // ------------------------------------------------------------ listen

    fn listen(&mut self, stmt: P) -> Apply {
        let target = stmt
            .into_inner()
            .filter(not_punct)
            .nth(2)
            .expect("grammar: listen target");
        let span = self.span();
        if target.as_rule() == Rule::listen_socket {
            if self.socket_listener {
                let (f, l) = self.line_end(&target);
                let _ = (f, l);
                return Ok(self.fail_end("socket listener already configured".into())?);
            }
            let mut l = Listener::new(ListenOn::Socket, span);
            for o in target.into_inner().filter(not_punct).skip(1) {
                let o = o
                    .into_inner()
                    .find(not_punct)
                    .expect("grammar: socket option");
                self.listen_option(&mut l, o)?;
            }
            self.socket_listener = true;
            self.cfg.listeners.push(l);
            self.cfg
                .items
                .push(Item::Listener(self.cfg.listeners.len() - 1));
            return Ok(());
        }
        let mut it = target.into_inner().filter(not_punct);
        let iface = s(&it.next().expect("grammar: interface"));
        let mut l = Listener::new(ListenOn::Interface(iface.clone()), span);
        for o in it {
            let o = o
                .into_inner()
                .find(not_punct)
                .expect("grammar: listen option");
            self.listen_option(&mut l, o)?;
        }
        if l.auth_plaintext && l.auth.is_none() {
            return Ok(self.fail_end("auth-plaintext requires auth".into())?);
        }
        if l.auth_plaintext {
            let (f, line) = (self.end_file.clone(), self.end_line);
            self.diags.plain(format!(
                "warn: {f}:{line}: auth-plaintext: this listener accepts passwords without TLS"
            ));
        }
        if l.auth.is_some() && !l.auth_plaintext && l.tls.is_none() {
            return self.fatal("invalid listen option: auth requires tls/smtps".into());
        }
        if l.pki.is_some() && l.tls.is_none() {
            return self.fatal("invalid listen option: pki requires tls/smtps".into());
        }
        match self.system.resolve_listen(&iface, l.family) {
            Some(addrs) => l.addresses = addrs,
            None => return self.fatal(format!("invalid virtual ip or interface: {iface}")),
        }
        if let Some(pki) = &l.pki
            && !self.cfg.pkis.iter().any(|p| p.name == *pki)
        {
            self.diags.plain(format!("pki name not found: {pki}"));
            self.diags.plain("smtpd".into());
            return Err(Stop::Fatal);
        }
        if let Some(ca) = &l.ca
            && !self.cfg.cas.iter().any(|c| c.name == *ca)
        {
            self.diags.plain(format!("ca name not found: {ca}"));
            self.diags.plain("smtpd".into());
            return Err(Stop::Fatal);
        }
        self.cfg.listeners.push(l);
        self.cfg
            .items
            .push(Item::Listener(self.cfg.listeners.len() - 1));
        Ok(())
    }

    fn filter_ref(&mut self, p: P) -> Check<String> {
        let inner = p
            .clone()
            .into_inner()
            .filter(not_punct)
            .nth(1)
            .expect("grammar: filter ref");
        if inner.as_rule() == Rule::STR {
            let name = s(&inner);
            if self.cfg.filter_named(&name).is_none() {
                return self.fail_at(&inner, format!("no filter exist with that name: {name}"));
            }
            return Ok(name);
        }
        self.dynamic_chains += 1;
        let name = format!("<dynchain:{:08x}>", self.dynamic_chains);
        let members = self.chain_members(inner)?;
        let span = self.span();
        self.cfg.filters.push(Filter {
            name: name.clone(),
            kind: FilterKind::Chain(members),
            anonymous: true,
            span,
        });
        Ok(name)
    }

    fn chain_members(&mut self, list: P) -> Check<Vec<String>> {
        let mut members: Vec<String> = Vec::new();
        let mut procs: Vec<String> = Vec::new();
        for m in list.into_inner().filter(not_punct) {
            let name = s(&m);
            let Some(f) = self.cfg.filter_named(&name) else {
                return self.fail_at(&m, format!("no filter exist with that name: {name}"));
            };
            let proc = match &f.kind {
                FilterKind::Chain(_) => {
                    return self.fail_at(
                        &m,
                        format!("no filter chain allowed within a filter chain: {name}"),
                    );
                }
                FilterKind::Proc(p) => Some(p.clone()),
                FilterKind::ProcExec { .. } => Some(name.clone()),
                FilterKind::Builtin(_) => None,
            };
            if members.contains(&name) {
                return self.fail_at(
                    &m,
                    format!("no filter allowed twice within a filter chain: {name}"),
                );
            }
            if let Some(p) = proc {
                if procs.contains(&p) {
                    return self.fail_at(
                        &m,
                        format!("no proc allowed twice within a filter chain: {p}"),
                    );
                }
                procs.push(p);
            }
            members.push(name);
        }
        Ok(members)
    }

    fn listen_option(&mut self, l: &mut Listener, o: P) -> Check<()> {
        macro_rules! once {
            ($cond:expr, $msg:expr) => {
                if $cond {
                    return self.fail_at(&o, $msg.into());
                }
            };
        }
        match o.as_rule() {
            Rule::k_inet4 | Rule::k_inet6 => {
                once!(l.family.is_some(), "address family already specified");
                l.family = Some(if o.as_rule() == Rule::k_inet4 {
                    Family::Inet4
                } else {
                    Family::Inet6
                });
            }
            Rule::opt_port => {
                once!(l.port.is_some(), "port already specified");
                let v = o
                    .clone()
                    .into_inner()
                    .filter(not_punct)
                    .nth(1)
                    .expect("grammar: port");
                let (spelled, number) = match v.as_rule() {
                    Rule::NUM => {
                        let n: i64 = v.as_str().parse().unwrap_or(-1);
                        (
                            v.as_str().to_string(),
                            if (1..=65535).contains(&n) {
                                Some(n as u16)
                            } else {
                                None
                            },
                        )
                    }
                    Rule::STR => {
                        let name = s(&v);
                        let n = self.system.service_port(&name);
                        (name, n)
                    }
                    Rule::k_smtps => (
                        "smtps".to_string(),
                        self.system.service_port("smtps").or(Some(465)),
                    ),
                    _ => (
                        "smtp".to_string(),
                        self.system.service_port("smtp").or(Some(25)),
                    ),
                };
                let Some(number) = number else {
                    return self.fail_at(&o, format!("invalid port: {spelled}"));
                };
                l.port = Some(Port { number, spelled });
            }
            Rule::filter_ref => {
                once!(l.filter.is_some(), "filter already specified");
                l.filter = Some(self.filter_ref(o)?);
            }
            Rule::opt_smtps | Rule::opt_tls_require | Rule::k_tls => {
                once!(l.tls.is_some(), "TLS mode already specified");
                let verify = o
                    .clone()
                    .into_inner()
                    .filter(not_punct)
                    .any(|p| p.as_rule() == Rule::k_verify);
                l.tls = Some(match o.as_rule() {
                    Rule::opt_smtps => TlsMode::Smtps { verify },
                    Rule::opt_tls_require => TlsMode::TlsRequire { verify },
                    _ => TlsMode::Tls,
                });
            }
            Rule::opt_pki => {
                once!(l.pki.is_some(), "pki already specified");
                l.pki = o
                    .clone()
                    .into_inner()
                    .filter(not_punct)
                    .nth(1)
                    .map(|p| s(&p).to_ascii_lowercase());
            }
            Rule::opt_ca => {
                once!(l.ca.is_some(), "ca already specified");
                l.ca = o
                    .clone()
                    .into_inner()
                    .filter(not_punct)
                    .nth(1)
                    .map(|p| s(&p).to_ascii_lowercase());
            }
            Rule::opt_auth | Rule::opt_auth_optional => {
                once!(l.auth.is_some(), "auth already specified");
                // OpenSMTPD does not check the kind of a credentials table here.
                let t = match o.clone().into_inner().filter(not_punct).nth(1) {
                    Some(tp) => Some(self.tables(tp)?),
                    None => None,
                };
                l.auth = Some(if o.as_rule() == Rule::opt_auth {
                    AuthMode::Required(t)
                } else {
                    AuthMode::Optional(t)
                });
            }
            Rule::opt_tag => {
                once!(l.tag.is_some(), "tag already specified");
                let v = s(&o
                    .clone()
                    .into_inner()
                    .filter(not_punct)
                    .nth(1)
                    .expect("grammar: tag"));
                once!(v.len() > 32, "tag name too long");
                l.tag = Some(v);
            }
            Rule::opt_hostname => {
                once!(l.hostname.is_some(), "hostname already specified");
                l.hostname = o
                    .clone()
                    .into_inner()
                    .filter(not_punct)
                    .nth(1)
                    .map(|p| s(&p));
            }
            Rule::opt_hostnames => {
                once!(l.hostnames.is_some(), "hostnames already specified");
                let id = self.tables(
                    o.clone()
                        .into_inner()
                        .filter(not_punct)
                        .nth(1)
                        .expect("grammar: hostnames"),
                )?;
                if !self.is_mapping(id) {
                    let name = self.cfg.table(id).name.clone();
                    return self.fail_at(
                        &o,
                        format!("invalid use of table \"{name}\" as HOSTNAMES parameter"),
                    );
                }
                l.hostnames = Some(id);
            }
            Rule::k_mask_src => {
                once!(l.mask_src, "mask-source already specified");
                l.mask_src = true;
            }
            Rule::k_received_auth => {
                once!(l.received_auth, "received-auth already specified");
                l.received_auth = true;
            }
            Rule::k_no_dsn => {
                once!(l.no_dsn, "no-dsn already specified");
                l.no_dsn = true;
            }
            Rule::k_proxy_v2 => {
                once!(l.proxy_v2, "proxy-v2 already specified");
                l.proxy_v2 = true;
            }
            Rule::opt_auth_plaintext => {
                once!(l.auth_plaintext, "auth-plaintext already specified");
                l.auth_plaintext = true;
            }
            Rule::opt_senders => {
                once!(l.senders.is_some(), "senders already specified");
                let mut it = o.clone().into_inner().filter(not_punct).skip(1);
                let id = self.tables(it.next().expect("grammar: senders"))?;
                if !self.is_mapping(id) {
                    let name = self.cfg.table(id).name.clone();
                    return self.fail_at(
                        &o,
                        format!("invalid use of table \"{name}\" as SENDERS parameter"),
                    );
                }
                l.senders = Some((id, it.next().is_some()));
            }
            _ => {}
        }
        Ok(())
    }

    // ------------------------------------------------------------ action

    fn action(&mut self, stmt: P) -> Apply {
        let mut it = stmt.into_inner().filter(not_punct).skip(1);
        let name_p = it.next().expect("grammar: action name");
        let name = s(&name_p);
        if self.cfg.action_named(&name).is_some() {
            return Ok(self.fail_at(
                &name_p,
                format!("dispatcher already declared with that name: {name}"),
            )?);
        }
        let method_p = it.next().expect("grammar: action method");
        let method = if method_p.as_rule() == Rule::relay_method {
            ActionMethod::Relay(self.relay(method_p)?)
        } else {
            ActionMethod::Local(self.local(method_p)?)
        };
        let mut ttl = None;
        for t in it {
            let v = s(&t
                .clone()
                .into_inner()
                .filter(not_punct)
                .nth(1)
                .expect("grammar: ttl"));
            if ttl.is_some() {
                return Ok(self.fail_at(&t, "ttl already specified for this dispatcher".into())?);
            }
            match parse_delay(&v) {
                Some(sec) => {
                    ttl = Some(Delay {
                        spelled: v,
                        seconds: sec,
                    })
                }
                None => return Ok(self.fail_at(&t, format!("ttl delay \"{v}\" is invalid"))?),
            }
        }
        if let ActionMethod::Relay(r) = &method
            && r.auth.is_some()
            && r.host.is_none()
            && r.domain.is_none()
        {
            return Ok(
                self.fail_end("auth may not be specified without host on a dispatcher".into())?
            );
        }
        let span = self.span();
        self.cfg.actions.push(Action {
            name,
            method,
            ttl,
            span,
        });
        self.cfg
            .items
            .push(Item::Action(self.cfg.actions.len() - 1));
        Ok(())
    }

    fn local(&mut self, p: P) -> Check<LocalAction> {
        let mut it = p.into_inner().filter(not_punct);
        let m = it.next().expect("grammar: local method");
        let method = match m.as_rule() {
            Rule::m_mbox => LocalMethod::Mbox,
            Rule::m_maildir => {
                let mut path = None;
                let mut junk = false;
                for q in m.into_inner().filter(not_punct) {
                    match q.as_rule() {
                        Rule::STR => path = Some(s(&q)),
                        Rule::k_junk => junk = true,
                        _ => {}
                    }
                }
                LocalMethod::Maildir { path, junk }
            }
            Rule::m_lmtp => {
                let mut inner = m.into_inner().filter(not_punct).skip(1);
                let destination = s(&inner.next().expect("grammar: lmtp destination"));
                LocalMethod::Lmtp {
                    destination,
                    rcpt_to: inner.next().is_some(),
                }
            }
            Rule::m_mda => LocalMethod::Mda(s(&m
                .into_inner()
                .filter(not_punct)
                .nth(1)
                .expect("grammar: mda command"))),
            Rule::k_forward_only => LocalMethod::ForwardOnly,
            _ => LocalMethod::ExpandOnly,
        };
        let mut a = LocalAction {
            method,
            alias: None,
            virtual_: None,
            userbase: None,
            user: None,
            wrapper: None,
        };
        for opt in it {
            let o = opt
                .into_inner()
                .find(not_punct)
                .expect("grammar: local option");
            let arg = o
                .clone()
                .into_inner()
                .filter(not_punct)
                .nth(1)
                .expect("grammar: local option value");
            match o.as_rule() {
                Rule::lo_alias | Rule::lo_virtual => {
                    if a.alias.is_some() {
                        return self.fail_at(
                            &o,
                            "alias mapping already specified for this dispatcher".into(),
                        );
                    }
                    if a.virtual_.is_some() {
                        return self.fail_at(
                            &o,
                            "virtual mapping already specified for this dispatcher".into(),
                        );
                    }
                    let id = self.tables(arg)?;
                    let what = if o.as_rule() == Rule::lo_alias {
                        "alias"
                    } else {
                        "virtual"
                    };
                    self.need(&o, id, false, what)?;
                    if o.as_rule() == Rule::lo_alias {
                        a.alias = Some(id);
                    } else {
                        a.virtual_ = Some(id);
                    }
                }
                Rule::lo_userbase => {
                    if a.userbase.is_some() {
                        return self.fail_at(
                            &o,
                            "userbase mapping already specified for this dispatcher".into(),
                        );
                    }
                    let id = self.tables(arg)?;
                    self.need(&o, id, false, "userbase")?;
                    a.userbase = Some(id);
                }
                Rule::lo_user => {
                    match a.method {
                        LocalMethod::Mbox => {
                            return self.fail_at(
                                &o,
                                "user may not be specified for this dispatcher".into(),
                            );
                        }
                        LocalMethod::ForwardOnly => {
                            return self
                                .fail_at(&o, "user may not be specified for forward-only".into());
                        }
                        LocalMethod::ExpandOnly => {
                            return self
                                .fail_at(&o, "user may not be specified for expand-only".into());
                        }
                        _ => {}
                    }
                    if a.user.is_some() {
                        return self
                            .fail_at(&o, "user already specified for this dispatcher".into());
                    }
                    a.user = Some(s(&arg));
                }
                _ => {
                    let w = s(&arg);
                    if !self.cfg.mda_wrappers.iter().any(|(n, _)| *n == w) {
                        return self.fail_at(&o, format!("no mda wrapper with that name: {w}"));
                    }
                    a.wrapper = Some(w);
                }
            }
        }
        Ok(a)
    }

    fn relay(&mut self, p: P) -> Check<RelayAction> {
        let mut r = RelayAction::default();
        for opt in p.into_inner().filter(not_punct).skip(1) {
            let o = opt
                .into_inner()
                .find(not_punct)
                .expect("grammar: relay option");
            macro_rules! once {
                ($cond:expr, $what:expr) => {
                    if $cond {
                        return self.fail_at(
                            &o,
                            format!("{} already specified for this dispatcher", $what),
                        );
                    }
                };
            }
            let arg = o.clone().into_inner().filter(not_punct).nth(1);
            match o.as_rule() {
                Rule::ro_helo => {
                    once!(r.helo.is_some(), "helo");
                    r.helo = arg.map(|a| s(&a));
                }
                Rule::ro_helo_src => {
                    once!(r.helo_src.is_some(), "helo-source mapping");
                    let id = self.tables(arg.expect("grammar: helo-src"))?;
                    self.need(&o, id, false, "helo-source")?;
                    r.helo_src = Some(id);
                }
                Rule::ro_pki => {
                    once!(r.pki.is_some(), "pki");
                    r.pki = arg.map(|a| s(&a).to_ascii_lowercase());
                }
                Rule::ro_ca => {
                    once!(r.ca.is_some(), "ca");
                    r.ca = arg.map(|a| s(&a).to_ascii_lowercase());
                }
                Rule::ro_src => {
                    once!(r.src.is_some(), "source mapping");
                    let id = self.tables(arg.expect("grammar: src"))?;
                    self.need(&o, id, true, "source")?;
                    r.src = Some(id);
                }
                Rule::ro_mail_from => {
                    once!(r.mail_from.is_some(), "mail-from");
                    r.mail_from = arg.map(|a| s(&a));
                }
                Rule::ro_backup => {
                    once!(r.backup.is_some(), "backup");
                    if r.host.is_some() {
                        return self.fail_at(&o, "backup and host are mutually exclusive".into());
                    }
                    if r.domain.is_some() {
                        return self.fail_at(&o, "backup and domain are mutually exclusive".into());
                    }
                    r.backup = Some(
                        o.clone()
                            .into_inner()
                            .filter(not_punct)
                            .find(|q| q.as_rule() == Rule::STR)
                            .map(|q| s(&q)),
                    );
                }
                Rule::ro_host => {
                    once!(r.host.is_some(), "host mapping");
                    if r.backup.is_some() {
                        return self.fail_at(&o, "backup and host are mutually exclusive".into());
                    }
                    let id = self.tables(arg.expect("grammar: host"))?;
                    self.need(&o, id, true, "host")?;
                    r.host = Some(id);
                }
                Rule::ro_domain => {
                    once!(r.domain.is_some(), "domain mapping");
                    if r.backup.is_some() {
                        return self.fail_at(&o, "backup and domain are mutually exclusive".into());
                    }
                    let id = self.tables(arg.expect("grammar: domain"))?;
                    self.need(&o, id, false, "host")?;
                    r.domain = Some(id);
                }
                Rule::ro_tls => {
                    once!(r.tls.is_some(), "tls");
                    r.tls = Some(arg.is_some());
                }
                Rule::ro_auth => {
                    once!(r.auth.is_some(), "auth mapping");
                    let id = self.tables(arg.expect("grammar: auth"))?;
                    self.need(&o, id, false, "auth")?;
                    r.auth = Some(id);
                }
                Rule::filter_ref => {
                    once!(r.filter.is_some(), "filter");
                    r.filter = Some(self.filter_ref(o)?);
                }
                _ => {
                    once!(r.srs, "srs");
                    if self.cfg.srs.key.is_none() {
                        return self.fail_at(
                            &o,
                            "an srs key is required for srs to be specified in an action".into(),
                        );
                    }
                    r.srs = true;
                }
            }
        }
        Ok(r)
    }

    // ------------------------------------------------------------ match

    fn match_rule(&mut self, stmt: P) -> Apply {
        let span = self.span();
        let mut rule = Rule_ {
            from: None,
            for_: None,
            tag: None,
            helo: None,
            tls: None,
            auth: None,
            mail_from: None,
            rcpt_to: None,
            decision: RuleDecision::Reject,
            span,
        };
        for p in stmt.into_inner().filter(not_punct).skip(1) {
            match p.as_rule() {
                Rule::match_opt => self.match_opt(&mut rule, p)?,
                Rule::match_action => {
                    let name_p = p
                        .into_inner()
                        .filter(not_punct)
                        .nth(1)
                        .expect("grammar: action name");
                    let name = s(&name_p);
                    if self.cfg.action_named(&name).is_none() {
                        return Ok(self.fail_at(&name_p, format!("no such dispatcher: {name}"))?);
                    }
                    rule.decision = RuleDecision::Action(name);
                }
                _ => rule.decision = RuleDecision::Reject,
            }
        }
        self.cfg.rules.push(rule);
        self.cfg.items.push(Item::Rule(self.cfg.rules.len() - 1));
        Ok(())
    }

    fn match_opt(&mut self, rule: &mut Rule_, p: P) -> Check<()> {
        let mut it = p.into_inner().filter(not_punct);
        let mut first = it.next().expect("grammar: match option");
        let negate = first.as_rule() == Rule::NOT;
        if negate {
            first = it.next().expect("grammar: match option after !");
        }
        let o = first;
        macro_rules! once {
            ($slot:expr, $what:expr) => {
                if $slot.is_some() {
                    return self.fail_at(&o, format!("{} already specified for this rule", $what));
                }
            };
        }
        let arg = o.clone().into_inner().filter(not_punct).nth(1);
        match o.as_rule() {
            Rule::mo_tag => {
                once!(rule.tag, "tag");
                let tm = self.regex_tables(arg.expect("grammar: tag"))?;
                self.need(&o, tm.table, true, "tag")?;
                rule.tag = Some(Negatable { negate, value: tm });
            }
            Rule::mo_helo => {
                once!(rule.helo, "helo");
                let tm = self.regex_tables(arg.expect("grammar: helo"))?;
                self.need(&o, tm.table, true, "helo")?;
                rule.helo = Some(Negatable { negate, value: tm });
            }
            Rule::mo_tls => {
                once!(rule.tls, "tls");
                rule.tls = Some(Negatable { negate, value: () });
            }
            Rule::mo_auth => {
                once!(rule.auth, "auth");
                let tm = match arg {
                    Some(a) => {
                        let tm = self.regex_tables(a)?;
                        self.need(&o, tm.table, true, "auth")?;
                        Some(tm)
                    }
                    None => None,
                };
                rule.auth = Some(Negatable { negate, value: tm });
            }
            Rule::mo_mail_from => {
                once!(rule.mail_from, "mail-from");
                let tm = self.regex_tables(arg.expect("grammar: mail-from"))?;
                self.need(&o, tm.table, true, "mail-from")?;
                rule.mail_from = Some(Negatable { negate, value: tm });
            }
            Rule::mo_rcpt_to => {
                once!(rule.rcpt_to, "rcpt-to");
                let tm = self.regex_tables(arg.expect("grammar: rcpt-to"))?;
                self.need(&o, tm.table, true, "rcpt-to")?;
                rule.rcpt_to = Some(Negatable { negate, value: tm });
            }
            Rule::mo_from => {
                once!(rule.from, "from");
                let f = arg.expect("grammar: from");
                let farg = f.clone().into_inner().filter(not_punct).nth(1);
                let value = match f.as_rule() {
                    Rule::from_socket => FromCriterion::Socket,
                    Rule::from_local => FromCriterion::Local,
                    Rule::from_any => FromCriterion::Any,
                    Rule::from_src => {
                        let tm = self.regex_tables(farg.expect("grammar: from src"))?;
                        self.need(&o, tm.table, true, "from")?;
                        FromCriterion::Src(tm)
                    }
                    Rule::from_rdns => match farg {
                        Some(a) => {
                            let tm = self.regex_tables(a)?;
                            self.need(&o, tm.table, true, "rdns")?;
                            FromCriterion::Rdns(Some(tm))
                        }
                        None => FromCriterion::Rdns(None),
                    },
                    Rule::from_auth => {
                        let tm = match farg {
                            Some(a) => {
                                let tm = self.regex_tables(a)?;
                                self.need(&o, tm.table, true, "auth")?;
                                Some(tm)
                            }
                            None => None,
                        };
                        rule.auth = Some(Negatable { negate, value: tm });
                        FromCriterion::Auth(tm)
                    }
                    _ => {
                        let tm = self.regex_tables(farg.expect("grammar: from mail-from"))?;
                        self.need(&o, tm.table, true, "mail-from")?;
                        rule.mail_from = Some(Negatable { negate, value: tm });
                        FromCriterion::MailFrom(tm)
                    }
                };
                rule.from = Some(Negatable { negate, value });
            }
            _ => {
                once!(rule.for_, "for");
                let f = arg.expect("grammar: for");
                let farg = f.clone().into_inner().filter(not_punct).nth(1);
                let value = match f.as_rule() {
                    Rule::for_local => ForCriterion::Local,
                    Rule::for_any => ForCriterion::Any,
                    Rule::for_domain => {
                        let tm = self.regex_tables(farg.expect("grammar: for domain"))?;
                        self.need(&o, tm.table, true, "'for'")?;
                        ForCriterion::Domain(tm)
                    }
                    _ => {
                        let tm = self.regex_tables(farg.expect("grammar: for rcpt-to"))?;
                        self.need(&o, tm.table, true, "for")?;
                        rule.rcpt_to = Some(Negatable { negate, value: tm });
                        ForCriterion::RcptTo(tm)
                    }
                };
                rule.for_ = Some(Negatable { negate, value });
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ filter

    fn filter(&mut self, stmt: P) -> Apply {
        let mut it = stmt.into_inner().filter(not_punct).skip(1);
        let name_p = it.next().expect("grammar: filter name");
        let name = s(&name_p);
        if self.cfg.filter_named(&name).is_some() {
            return Ok(self.fail_at(
                &name_p,
                format!("filter already exists with that name: {name}"),
            )?);
        }
        let body = it.next().expect("grammar: filter body");
        let kind = match body.as_rule() {
            Rule::filter_proc => {
                let p = body
                    .into_inner()
                    .filter(not_punct)
                    .nth(1)
                    .expect("grammar: proc name");
                let proc = s(&p);
                if !self.cfg.procs.iter().any(|x| x.name == proc) {
                    return Ok(
                        self.fail_at(&p, format!("no processor exist with that name: {proc}"))?
                    );
                }
                FilterKind::Proc(proc)
            }
            Rule::filter_proc_exec => {
                let mut b = body.into_inner().filter(not_punct).skip(1);
                let command = s(&b.next().expect("grammar: proc-exec command"));
                if self.cfg.procs.iter().any(|x| x.name == name) {
                    return Ok(self.fail_at(
                        &name_p,
                        format!("processor already exists with that name: {name}"),
                    )?);
                }
                let mut proc = Proc {
                    name: name.clone(),
                    command: command.clone(),
                    user: None,
                    group: None,
                    chroot: None,
                    span: self.span(),
                };
                if let Err(stop) = self.proc_options(b, &mut proc) {
                    // 6.8 names the filter before it reads the options: later references
                    // to it find it.
                    let span = self.span();
                    self.register_failed_filter(&name, span);
                    return Err(stop.into());
                }
                FilterKind::ProcExec {
                    command,
                    user: proc.user,
                    group: proc.group,
                    chroot: proc.chroot,
                }
            }
            Rule::filter_chain => {
                let list = body
                    .into_inner()
                    .filter(not_punct)
                    .find(|p| p.as_rule() == Rule::filter_list)
                    .expect("grammar: chain list");
                FilterKind::Chain(self.chain_members(list)?)
            }
            _ => {
                let built = self.builtin_filter(
                    body.into_inner()
                        .filter(not_punct)
                        .nth(1)
                        .expect("grammar: phase rule"),
                );
                match built {
                    Ok(b) => FilterKind::Builtin(b),
                    Err(stop) => {
                        // As for proc-exec: 6.8 names the filter at `phase`.
                        let span = self.span();
                        self.register_failed_filter(&name, span);
                        return Err(stop.into());
                    }
                }
            }
        };
        let span = self.span();
        self.cfg.filters.push(Filter {
            name,
            kind,
            anonymous: false,
            span,
        });
        self.cfg
            .items
            .push(Item::Filter(self.cfg.filters.len() - 1));
        Ok(())
    }

    /// A `filter NAME phase …` or `filter NAME proc-exec …` statement failed after 6.8
    /// had registered its name (a mid-rule action of its grammar): the name exists, so a
    /// chain or listener naming it gets no second error. The configuration is refused
    /// anyway; the entry is never run.
    fn register_failed_filter(&mut self, name: &str, span: Span) {
        if self.cfg.filter_named(name).is_some() {
            return;
        }
        self.cfg.filters.push(Filter {
            name: name.to_string(),
            kind: FilterKind::Builtin(BuiltinFilter {
                phase: Phase::Connect,
                negate: false,
                condition: Condition::Fcrdns,
                decision: Decision::Bypass,
            }),
            anonymous: false,
            span,
        });
    }

    fn builtin_filter(&mut self, rule: P) -> Check<BuiltinFilter> {
        let mut it = rule.into_inner().filter(not_punct);
        let phase = match it.next().expect("grammar: phase").as_rule() {
            Rule::k_connect => Phase::Connect,
            Rule::k_helo => Phase::Helo,
            Rule::k_ehlo => Phase::Ehlo,
            Rule::k_auth => Phase::Auth,
            Rule::k_mail_from => Phase::MailFrom,
            Rule::k_rcpt_to => Phase::RcptTo,
            Rule::k_data => Phase::Data,
            _ => Phase::Commit,
        };
        let cond_p = it.nth(1).expect("grammar: condition");
        let mut negate = false;
        let mut condition = Condition::Fcrdns;
        for c in cond_p.into_inner().filter(not_punct) {
            if c.as_rule() == Rule::NOT {
                negate = true;
                continue;
            }
            let arg = c.clone().into_inner().filter(not_punct).nth(1);
            condition = match c.as_rule() {
                Rule::c_fcrdns => Condition::Fcrdns,
                Rule::c_rdns => match arg {
                    Some(a) => {
                        let tm = self.regex_tables(a)?;
                        Condition::Rdns(Some(tm))
                    }
                    None => Condition::Rdns(None),
                },
                Rule::c_src => {
                    let tm = self.regex_tables(arg.expect("grammar: src"))?;
                    Condition::Src(tm)
                }
                Rule::c_helo => {
                    let tm = self.regex_tables(arg.expect("grammar: helo"))?;
                    Condition::Helo(tm)
                }
                Rule::c_auth => match arg {
                    Some(a) => {
                        let tm = self.regex_tables(a)?;
                        Condition::Auth(Some(tm))
                    }
                    None => Condition::Auth(None),
                },
                Rule::c_mail_from => {
                    let tm = self.regex_tables(arg.expect("grammar: mail-from"))?;
                    Condition::MailFrom(tm)
                }
                _ => {
                    let tm = self.regex_tables(arg.expect("grammar: rcpt-to"))?;
                    Condition::RcptTo(tm)
                }
            };
        }
        let mut d = it.next().expect("grammar: decision");
        if d.as_rule() == Rule::decision {
            d = d
                .into_inner()
                .find(not_punct)
                .expect("grammar: decision body");
        }
        if d.as_rule() == Rule::decision_nojunk {
            d = d
                .into_inner()
                .find(not_punct)
                .expect("grammar: decision body");
        }
        let msg = d
            .clone()
            .into_inner()
            .filter(not_punct)
            .nth(1)
            .map(|m| s(&m))
            .unwrap_or_default();
        let decision = match d.as_rule() {
            Rule::d_junk => Decision::Junk,
            Rule::d_bypass => Decision::Bypass,
            Rule::d_reject => Decision::Reject(msg),
            Rule::d_disconnect => Decision::Disconnect(msg),
            Rule::d_rewrite => Decision::Rewrite(msg),
            _ => Decision::Report(msg),
        };
        Ok(BuiltinFilter {
            phase,
            negate,
            condition,
            decision,
        })
    }

    /// Wait for a table being read on another thread and take its entries (or its error,
    /// printed where OpenSMTPD prints it: right after the table statement's messages).
    fn join_table(&mut self, idx: usize) {
        let Some(p) = self.pending_tables.remove(&idx) else {
            return;
        };
        let result = p
            .handle
            .join()
            .unwrap_or_else(|_| Err(LoadError::Format("table loader failed".into())));
        let t = &mut self.cfg.tables[idx];
        match result {
            Ok(l) => {
                if p.set_kind {
                    t.kind = l.kind;
                }
                t.entries = Arc::new(l.entries);
            }
            Err(LoadError::Open(msg) | LoadError::Format(msg)) => {
                t.kind = TableKind::Unusable;
                let text = match &t.backend {
                    TableBackend::File { path, .. } | TableBackend::Db { path } => {
                        format!("invalid configuration file {path} for table {}", t.name)
                    }
                    _ => format!("invalid configuration file for table {}", t.name),
                };
                let at = super::diag::Message::At {
                    file: p.file.to_string(),
                    line: p.line,
                    text,
                    hint: None,
                };
                let pos = p.diag_pos.min(self.diags.messages.len());
                self.diags
                    .messages
                    .insert(pos, super::diag::Message::Plain(msg));
                self.diags.messages.insert(pos + 1, at);
                for other in self.pending_tables.values_mut() {
                    if other.diag_pos >= pos {
                        other.diag_pos += 2;
                    }
                }
            }
        }
    }

    /// Checks that need the whole file: the implicit socket listener and the rule count.
    pub fn finish_checks(&mut self) {
        let mut pending: Vec<usize> = self.pending_tables.keys().copied().collect();
        pending.sort_unstable();
        for idx in pending {
            self.join_table(idx);
        }
        if !self.socket_listener {
            let mut l = Listener::new(ListenOn::Socket, Span::default());
            l.implicit = true;
            l.no_dsn = true;
            self.cfg.listeners.push(l);
        }
    }
}

type Rule_ = super::model::Rule;

/// Entries of an inline `{ ... }` table; the first element decides list or mapping.
fn inline_entries(values: P) -> (TableKind, std::collections::BTreeMap<String, String>) {
    let mut entries: Vec<(String, String)> = Vec::new();
    let inner = values
        .into_inner()
        .find(not_punct)
        .expect("grammar: table values");
    let kind = if inner.as_rule() == Rule::keyval_list {
        TableKind::Mapping
    } else {
        TableKind::List
    };
    for e in inner.into_inner().filter(not_punct) {
        match e.as_rule() {
            Rule::keyval => {
                let mut kv = e.into_inner().filter(not_punct);
                let k = s(&kv.next().expect("grammar: key"));
                let v = s(&kv.next().expect("grammar: value"));
                entries.push((k.to_ascii_lowercase(), v));
            }
            Rule::STR => {
                entries.push((s(&e).to_ascii_lowercase(), String::new()));
            }
            _ => {}
        }
    }
    (kind, crate::table::build_entries(entries))
}

#[derive(Clone, Copy)]
enum LimitKind {
    Mda,
    Mta,
    Scheduler,
    Session,
}

impl LimitKind {
    fn keys(self) -> &'static [&'static str] {
        match self {
            LimitKind::Mda => &[
                "max-session",
                "max-session-per-user",
                "task-lowat",
                "task-hiwat",
                "task-release",
            ],
            LimitKind::Mta => &[
                "max-conn-per-host",
                "max-conn-per-route",
                "max-conn-per-source",
                "max-conn-per-connector",
                "max-conn-per-relay",
                "max-conn-per-domain",
                "conn-delay-host",
                "conn-delay-route",
                "conn-delay-source",
                "conn-delay-connector",
                "conn-delay-relay",
                "conn-delay-domain",
                "reconn-delay-route",
                "session-mail-max",
                "session-transaction-delay",
                "session-keepalive",
                "max-failures-per-session",
                "task-hiwat",
                "task-lowat",
                "task-release",
            ],
            LimitKind::Scheduler => &[
                "max-inflight",
                "max-evp-batch-size",
                "max-msg-batch-size",
                "max-schedule",
            ],
            LimitKind::Session => &["max-rcpt", "max-mails"],
        }
    }

    fn message(self) -> &'static str {
        match self {
            LimitKind::Mda | LimitKind::Scheduler => "invalid scheduler limit keyword",
            LimitKind::Mta => "invalid mta limit keyword",
            LimitKind::Session => "invalid session limit keyword",
        }
    }
}

#[cfg(test)]
mod tests {

    /// The grammar's reading of a `table NAME { ... }` statement, as the slow path does it.
    fn grammar_inline_table(
        toks: &[Token],
    ) -> Option<(TableKind, std::collections::BTreeMap<String, String>)> {
        let rendered = render(toks);
        let mut pairs = Grammar::parse(Rule::statement, &rendered.text).ok()?;
        let stmt = pairs
            .next()?
            .into_inner()
            .filter(not_punct)
            .find(|p| p.as_rule() != Rule::EOI)?;
        let body = stmt.into_inner().filter(not_punct).nth(2)?;
        (body.as_rule() == Rule::table_values).then(|| inline_entries(body))
    }

    #[test]
    fn plain_inline_tables_read_as_the_grammar_reads_them() {
        let tok = |kind: TokenKind| Token {
            kind,
            line: 1,
            file: Arc::from("t.conf"),
            seq: 0,
        };
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut fast, mut agreed) = (0, 0);
        for _ in 0..20_000 {
            let mut toks = vec![
                tok(TokenKind::Keyword("table")),
                tok(TokenKind::Str("t".into())),
                tok(TokenKind::Punct('{')),
            ];
            for _ in 0..next() % 9 {
                toks.push(tok(match next() % 10 {
                    0..=3 => TokenKind::Str(
                        ["a", "B", "c d", "\\\"", "x,y"][(next() % 5) as usize].into(),
                    ),
                    4 => TokenKind::Punct(','),
                    5 => TokenKind::Newline,
                    6 => TokenKind::Arrow,
                    7 => TokenKind::Punct('='),
                    8 => TokenKind::Number(7),
                    _ => TokenKind::Keyword("table"),
                }));
            }
            toks.push(tok(TokenKind::Punct('}')));
            let grammar = grammar_inline_table(&toks);
            match plain_inline_table(&toks) {
                Some((kind, entries)) => {
                    fast += 1;
                    let built = crate::table::build_entries(entries);
                    assert_eq!(grammar, Some((kind, built)), "{:?}", render(&toks).text);
                }
                None => {
                    if grammar.is_none() {
                        agreed += 1;
                    }
                }
            }
        }
        // Both kinds of input were seen: statements read fast and statements left to the
        // grammar (which refused them).
        assert!(fast > 1000 && agreed > 1000, "{fast} {agreed}");
    }

    use super::*;

    #[test]
    fn delays() {
        assert_eq!(parse_delay("4d"), Some(4 * 86400));
        assert_eq!(parse_delay("30s"), Some(30));
        assert_eq!(parse_delay("4x"), None);
        assert_eq!(parse_delay("d"), None);
        assert_eq!(parse_delay("0m"), None);
        assert_eq!(parse_delay("-1m"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("35M"), Some(35 << 20));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("10Q"), None);
        assert_eq!(parse_size("foo"), None);
        assert_eq!(parse_size("1.5K"), Some(1536));
    }

    #[test]
    fn domain_names() {
        assert!(valid_domain_name("mail.example.org"));
        assert!(valid_domain_name("*"));
        assert!(!valid_domain_name("bad name!"));
        assert!(!valid_domain_name("mail.$"));
    }
}
