//! `FETCH` and `MOVE` as PostgreSQL writes them, for the forms DataFusion's SQL
//! parser does not know: `MOVE` at all (asyncpg's `Cursor.forward()` sends
//! `MOVE FORWARD n "portal"`), and `FETCH` without `FROM`/`IN` (`FETCH 2 c`,
//! `FETCH c`). Cursors are NO SCROLL, so only forward motion is accepted.

use crate::error::{PgError, SqlState};

use super::Command;

/// `Some` when `sql` is one FETCH or MOVE statement; `None` leaves it to the parser.
pub fn parse(sql: &str) -> Option<Result<Command, PgError>> {
    let text = sql.trim().trim_end_matches(';').trim_end();
    if text.contains(';') {
        // Several statements: the parser's (FETCH … FROM works there, MOVE does not).
        return None;
    }
    let (verb, rest) = split_word(text)?;
    let discard = if verb.eq_ignore_ascii_case("move") {
        true
    } else if verb.eq_ignore_ascii_case("fetch") {
        false
    } else {
        return None;
    };
    Some(parse_motion(rest, discard, &verb.to_ascii_uppercase()))
}

fn parse_motion(rest: &str, discard: bool, verb: &str) -> Result<Command, PgError> {
    let syntax = || {
        PgError::new(
            SqlState::SYNTAX_ERROR,
            format!(
                "syntax error in {verb}: expected [FORWARD] [count | ALL | NEXT] [FROM | IN] cursor"
            ),
        )
    };
    // Words before the cursor name; the name is the last item (maybe quoted).
    let (words, cursor) = split_cursor(rest).ok_or_else(syntax)?;
    let mut words: Vec<&str> = words.split_whitespace().collect();
    if words
        .last()
        .is_some_and(|w| w.eq_ignore_ascii_case("from") || w.eq_ignore_ascii_case("in"))
    {
        words.pop();
    }
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    let count = match lower.as_slice() {
        [] | ["next"] | ["forward"] => Some(1),
        ["all"] | ["forward", "all"] => None,
        [n] | ["forward", n] | ["relative", n] if n.parse::<i64>().is_ok() => {
            let n: i64 = n.parse().map_err(|_| syntax())?;
            if n <= 0 {
                // 0 re-reads the current row, a negative count moves back: both
                // need a scrollable cursor.
                return Err(backward(verb));
            }
            Some(n as u64)
        }
        ["prior"] | ["first"] | ["last"] | ["backward", ..] | ["absolute", _] | ["relative", _] => {
            return Err(backward(verb));
        }
        _ => return Err(syntax()),
    };
    Ok(Command::Fetch {
        cursor,
        count,
        discard,
    })
}

fn backward(verb: &str) -> PgError {
    PgError::new(
        SqlState::FEATURE_NOT_SUPPORTED,
        format!("{verb} can only move forward: cursors are NO SCROLL"),
    )
}

fn split_word(text: &str) -> Option<(&str, &str)> {
    let end = text.find(char::is_whitespace).unwrap_or(text.len());
    Some((&text[..end], &text[end..])).filter(|(w, _)| !w.is_empty())
}

/// Splits off the trailing cursor name: a quoted identifier (with `""` escapes) or
/// a bare word, folded to lower case as PostgreSQL folds identifiers.
fn split_cursor(rest: &str) -> Option<(&str, String)> {
    let rest = rest.trim_end();
    if let Some(body) = rest.strip_suffix('"') {
        // Walk back to the opening quote, skipping doubled quotes.
        let bytes = body.as_bytes();
        let mut i = bytes.len();
        while i > 0 {
            i -= 1;
            if bytes[i] == b'"' {
                if i > 0 && bytes[i - 1] == b'"' {
                    i -= 1;
                    continue;
                }
                let name = body[i + 1..].replace("\"\"", "\"");
                return Some((&rest[..i], name)).filter(|(_, n)| !n.is_empty());
            }
        }
        return None;
    }
    let start = rest.rfind(char::is_whitespace).map(|i| i + 1).unwrap_or(0);
    let name = &rest[start..];
    let keyword = [
        "all", "next", "forward", "from", "in", "prior", "first", "last",
    ]
    .iter()
    .any(|k| name.eq_ignore_ascii_case(k));
    let bare = name
        .chars()
        .all(|c| c.is_alphanumeric() || c == '_' || c == '$');
    if name.is_empty() || !bare || keyword || name.parse::<i64>().is_ok() {
        return None;
    }
    Some((&rest[..start], name.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn motion(sql: &str) -> (String, Option<u64>, bool) {
        match parse(sql) {
            Some(Ok(Command::Fetch {
                cursor,
                count,
                discard,
            })) => (cursor, count, discard),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn forms_postgres_accepts() {
        assert_eq!(motion("FETCH 2 c"), ("c".into(), Some(2), false));
        assert_eq!(motion("fetch c;"), ("c".into(), Some(1), false));
        assert_eq!(motion("FETCH NEXT IN c"), ("c".into(), Some(1), false));
        assert_eq!(motion("FETCH ALL C"), ("c".into(), None, false));
        assert_eq!(
            motion("FETCH FORWARD ALL FROM c"),
            ("c".into(), None, false)
        );
        assert_eq!(
            motion(r#"MOVE FORWARD 10 "__asyncpg_portal_1__""#),
            ("__asyncpg_portal_1__".into(), Some(10), true)
        );
        assert_eq!(
            motion(r#"MOVE 3 FROM "a ""b""#),
            (r#"a "b"#.into(), Some(3), true)
        );
        assert_eq!(motion("move c"), ("c".into(), Some(1), true));
        assert_eq!(motion("MOVE RELATIVE 2 c"), ("c".into(), Some(2), true));
    }

    #[test]
    fn backward_and_malformed_motion_is_refused() {
        for sql in [
            "MOVE BACKWARD 2 c",
            "FETCH PRIOR c",
            "FETCH -1 c",
            "FETCH 0 c",
            "FETCH ABSOLUTE 3 c",
        ] {
            let e = parse(sql).expect("recognised").expect_err(sql);
            assert_eq!(e.code, SqlState::FEATURE_NOT_SUPPORTED, "{sql}");
        }
        for sql in [
            "MOVE",
            "FETCH 2",
            "FETCH FORWARD FORWARD c",
            "MOVE \"unclosed",
        ] {
            let e = parse(sql).expect("recognised").expect_err(sql);
            assert_eq!(e.code, SqlState::SYNTAX_ERROR, "{sql}");
        }
        assert!(parse("SELECT 1").is_none());
        assert!(parse("fetchall").is_none());
        assert!(parse("FETCH 2 FROM c; FETCH 1 FROM c").is_none());
    }
}
