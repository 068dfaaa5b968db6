//! Hints printed under a `syntax error` (after OpenSMTPD's own line, never instead of it).

use super::lexer::{KEYWORDS, Token, TokenKind};

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest reserved word to `word`, if one is close enough to be a likely typo.
pub fn did_you_mean(word: &str) -> Option<&'static str> {
    let best = KEYWORDS
        .iter()
        .map(|k| (distance(word, k), *k))
        .min_by_key(|(d, _)| *d)?;
    let limit = if word.len() <= 4 { 1 } else { 2 };
    (best.0 <= limit && best.0 > 0).then_some(best.1)
}

/// A hint for a syntax error found at token `idx` of a statement.
pub fn syntax_hint(toks: &[Token], idx: usize) -> Option<String> {
    let first = toks.first()?;
    if let TokenKind::Str(w) = &first.kind
        && (w == "accept" || (w == "deliver"))
    {
        return Some(
                "`accept ... deliver to` is the pre-6.4 syntax: declare `action \"NAME\" <method>` and route with `match from ... for ... action \"NAME\"`"
                    .into(),
            );
    }
    if first.kind == TokenKind::Keyword("reject") {
        return Some(
            "pre-6.4 `reject` rules are written `match from ... for ... reject` since 6.4".into(),
        );
    }
    // A statement starting with an unknown word: a misspelt keyword, unless it is a macro.
    if let TokenKind::Str(w) = &first.kind
        && idx <= 1
        && toks.get(1).map(|t| &t.kind) != Some(&TokenKind::Punct('='))
        && let Some(k) = did_you_mean(w)
    {
        return Some(format!("unknown statement `{w}`; did you mean `{k}`?"));
    }
    let at = toks.get(idx)?;
    match &at.kind {
        TokenKind::Str(w) if w == "certificate" => Some("since 6.4 the keyword is `cert`".into()),
        TokenKind::Str(w) if w == "deliver" => {
            Some("`deliver to` is pre-6.4 syntax: use `action \"NAME\" <method>` and `match ... action \"NAME\"`".into())
        }
        TokenKind::Str(w) => did_you_mean(w).map(|k| format!("unexpected `{w}`; did you mean `{k}`?")),
        TokenKind::Keyword(k) => {
            let prev_is_name_slot = idx > 0
                && matches!(
                    toks[idx - 1].kind,
                    TokenKind::Keyword("table" | "action" | "filter" | "proc" | "pki" | "ca")
                        | TokenKind::Punct('<' | '{' | ',' | '=')
                        | TokenKind::Arrow
                );
            if prev_is_name_slot {
                Some(format!("`{k}` is a reserved word; quote it to use it as a name: \"{k}\""))
            } else {
                None
            }
        }
        TokenKind::Punct('\r') => Some("the file has CRLF (DOS) line endings; smtpd.conf needs LF".into()),
        TokenKind::Number(n) => Some(format!("a bare number is not a string here; quote it: \"{n}\"")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos() {
        assert_eq!(did_you_mean("maildri"), Some("maildir"));
        assert_eq!(did_you_mean("lsiten"), Some("listen"));
        assert_eq!(did_you_mean("frobnicate"), None);
    }
}
