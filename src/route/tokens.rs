//! Token-level helpers shared by `fingerprint` and `redact`: both must rewrite
//! statement text that may not parse, so they work on sqlparser's tokens and splice
//! the original text by byte range.

use std::ops::Range;

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// A token and the bytes of the original text it came from. Consecutive tokens'
/// ranges tile the text exactly (whitespace and comments are tokens too).
pub(crate) struct Spanned {
    pub token: Token,
    pub range: Range<usize>,
}

/// Tokenizes `sql` in the dialect Sluice parses with. `None` when the tokenizer
/// rejects the text (an unterminated quote, say) or its locations cannot be
/// mapped back onto the text.
pub(crate) fn spanned(sql: &str) -> Option<Vec<Spanned>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    // Locations are (line, column) counted in chars, a new line at each '\n';
    // replay that count once over the text to turn each start into a byte offset.
    let mut starts = Vec::with_capacity(tokens.len());
    let mut chars = sql.char_indices().peekable();
    let (mut line, mut column) = (1u64, 1u64);
    for t in &tokens {
        if matches!(t.token, Token::EOF) {
            break;
        }
        let target = (t.span.start.line, t.span.start.column);
        while (line, column) != target {
            let (_, c) = chars.next()?;
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        starts.push(chars.peek().map_or(sql.len(), |&(i, _)| i));
    }
    let ends = starts.iter().skip(1).copied().chain([sql.len()]);
    Some(
        tokens
            .into_iter()
            .zip(starts.iter().copied().zip(ends))
            .map(|(t, (start, end))| Spanned {
                token: t.token,
                range: start..end,
            })
            .collect(),
    )
}

/// A literal value: numbers and every kind of quoted string. These carry the data
/// (and so the PII) in a statement's text.
pub(crate) fn is_literal(token: &Token) -> bool {
    matches!(
        token,
        Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

/// An unquoted word equal to `keyword`, ignoring ASCII case.
pub(crate) fn is_keyword(token: &Token, keyword: &str) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(keyword))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<&str> {
        spanned(sql)
            .expect("tokenizes")
            .into_iter()
            .map(|s| &sql[s.range])
            .collect()
    }

    #[test]
    fn ranges_tile_the_text() {
        let sql = "SELECT 'é''x', \"Ü\"\r\n  FROM t -- note\n WHERE a = $1;";
        let parts = texts(sql);
        assert_eq!(parts.concat(), sql);
        assert!(parts.contains(&"'é''x'"));
        assert!(parts.contains(&"\"Ü\""));
        assert!(parts.contains(&"-- note\n"));
        assert!(parts.contains(&"$1"));
    }

    #[test]
    fn unterminated_quote_is_none() {
        assert!(spanned("SELECT 'abc").is_none());
    }
}
