//! Credentials removed from statement text before it is logged. Like pgaudit, which
//! redacts the password of role DDL, and also Redshift's COPY/UNLOAD credentials.
//!
//! The secret literal after `PASSWORD`, `CREDENTIALS [AS]`, `ACCESS_KEY_ID`,
//! `SECRET_ACCESS_KEY`, `SESSION_TOKEN` or `MASTER_SYMMETRIC_KEY` becomes `'***'`;
//! every other byte of the text stays as it was. `IAM_ROLE` ARNs are not secrets and
//! stay; so do `PASSWORD NULL` and `PASSWORD DISABLE`, which carry none.

use std::borrow::Cow;
use std::ops::Range;

use datafusion::sql::sqlparser::tokenizer::Token;

use super::tokens::{self, is_keyword, is_literal};

/// What a redacted literal becomes (still a valid string literal).
pub const MASK: &str = "'***'";

/// The whole text when it mentions a credential but cannot be tokenized: the
/// secret's extent is unknown, so nothing of it is kept.
pub const UNTOKENIZABLE: &str =
    "<statement redacted: contains a credential and could not be tokenized>";

/// Keywords whose following literal is a secret, lower case. Also the fast path's
/// test and the untokenizable case's: text naming none of them holds no credential
/// this module knows of.
const KEYWORDS: [&str; 6] = [
    "password",
    "credentials",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "master_symmetric_key",
];

/// `sql` with its credentials masked; borrowed, untouched, when it has none.
pub fn redact(sql: &str) -> Cow<'_, str> {
    // Runs for every audited statement: most mention no credential and cost one
    // byte scan.
    if !mentions_keyword(sql) {
        return Cow::Borrowed(sql);
    }
    let Some(tokens) = tokens::spanned(sql) else {
        return Cow::Owned(UNTOKENIZABLE.to_string());
    };
    let significant: Vec<(&Token, &Range<usize>)> = tokens
        .iter()
        .filter(|s| !matches!(s.token, Token::Whitespace(_)))
        .map(|s| (&s.token, &s.range))
        .collect();
    let mut secrets: Vec<Range<usize>> = Vec::new();
    let mut i = 0;
    while i < significant.len() {
        let (token, _) = significant[i];
        i += 1;
        if !KEYWORDS.iter().any(|k| is_keyword(token, k)) {
            continue;
        }
        // `CREDENTIALS AS '…'` (Redshift) and `PASSWORD = '…'` (option lists).
        if significant
            .get(i)
            .is_some_and(|(t, _)| is_keyword(t, "as") || matches!(t, Token::Eq))
        {
            i += 1;
        }
        // Adjacent literals are one string to PostgreSQL ('a'\n'b'), so all go.
        while let Some((t, range)) = significant.get(i) {
            if !is_secret_literal(t) {
                break;
            }
            secrets.push((*range).clone());
            i += 1;
        }
    }
    if secrets.is_empty() {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut last = 0;
    for range in secrets {
        out.push_str(&sql[last..range.start]);
        out.push_str(MASK);
        last = range.end;
    }
    out.push_str(&sql[last..]);
    Cow::Owned(out)
}

/// A literal, or a quoted identifier (not valid there, but its text would be the
/// secret all the same). Unquoted words (NULL, DISABLE, …) are not secrets.
fn is_secret_literal(token: &Token) -> bool {
    is_literal(token) || matches!(token, Token::Word(w) if w.quote_style.is_some())
}

/// Whether `sql` contains one of `KEYWORDS`, ASCII case-insensitively: one pass
/// over the text, comparing a keyword only where a byte matches its first letter.
fn mentions_keyword(sql: &str) -> bool {
    let bytes = sql.as_bytes();
    bytes.iter().enumerate().any(|(i, b)| {
        let first = b.to_ascii_lowercase();
        KEYWORDS.iter().any(|k| {
            k.as_bytes()[0] == first
                && bytes
                    .get(i..i + k.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(k.as_bytes()))
        })
    })
}

/// ASCII case-insensitive substring test; `needle` is lower case.
#[cfg(test)]
fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let (haystack, needle) = (haystack.as_bytes(), needle.as_bytes());
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    haystack.len() >= needle.len()
        && (0..=haystack.len() - needle.len()).any(|i| {
            haystack[i].to_ascii_lowercase() == first
                && haystack[i + 1..i + needle.len()].eq_ignore_ascii_case(rest)
        })
}

/// `'…'` runs in a message replaced by `'***'`: a parser's message may quote the
/// secret it stumbled on, so messages about a text that held one lose their quotes.
pub fn mask_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        match (c, quoted) {
            ('\'', false) => {
                out.push_str("'***'");
                quoted = true;
            }
            ('\'', true) => quoted = false,
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
