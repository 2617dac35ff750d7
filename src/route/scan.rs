//! The forwarding fast path: a scan that settles, without parsing, that a query
//! string goes upstream as it is. Parsing costs tens of microseconds per statement,
//! tokenizing several; this scan a few hundred nanoseconds, which matters at
//! pgbench rates. It only ever says "upstream" or "parse it".

use std::collections::HashSet;

/// Leading keywords of the statements a forwarding session handles itself (or keeps
/// books on) even when they name no lake table.
const LOCAL_LEADING_WORDS: &[&str] = &[
    "set",
    "show",
    "reset",
    "fetch",
    "close",
    "declare",
    "call",
    "discard",
    "deallocate",
    "commit",
    "rollback",
    "end",
    "abort",
];

/// Whether a query string certainly goes upstream as it is: no statement starts with
/// one of `LOCAL_LEADING_WORDS` and no lake schema name is followed by `.`. The scan
/// errs towards `false` (then the text is parsed): text with comments, dollar quotes
/// or backslashes is never settled here, because those could hide a reference from a
/// scan that does not fully tokenize; inside string literals a match also says
/// `false`.
pub fn plainly_upstream(sql: &str, lake_schemas: &HashSet<String>) -> bool {
    // Non-ASCII text may hold Unicode whitespace the parser skips (`nyc\u{2003}.t`),
    // and \x0B is whitespace to the parser but not to `is_ascii_whitespace`.
    // One pass over the bytes (this runs for every simple query a writer sends).
    let b = sql.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'$' | b'\\' | 0x0B | 0x80..=0xFF => return false,
            b'-' | b'/' if b.get(i + 1) == Some(if c == b'-' { &b'-' } else { &b'*' }) => {
                return false;
            }
            _ => {}
        }
    }
    // A `;` inside a string starts a fake statement here: only ever more cautious.
    for statement in sql.split(';') {
        let start = statement.trim_start();
        let word_len = start
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let word = &start[..word_len];
        if LOCAL_LEADING_WORDS
            .iter()
            .any(|w| w.eq_ignore_ascii_case(word))
        {
            return false;
        }
    }
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    let followed_by_dot = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        b.get(i) == Some(&b'.')
    };
    let names_lake = |name: &str| {
        !lake_schemas.is_empty()
            && (lake_schemas.contains(name) || lake_schemas.contains(&name.to_lowercase()))
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' || c == b'"' {
            // A literal or a quoted identifier, with doubled quotes inside.
            let start = i + 1;
            let mut j = start;
            loop {
                match b.get(j) {
                    None => return false, // unterminated: let the parser say so
                    Some(&q) if q == c => {
                        if b.get(j + 1) == Some(&c) {
                            j += 2;
                            continue;
                        }
                        break;
                    }
                    Some(_) => j += 1,
                }
            }
            if c == b'"'
                && followed_by_dot(j + 1)
                && names_lake(&sql[start..j].replace("\"\"", "\""))
            {
                return false;
            }
            i = j + 1;
        } else if is_ident(c) {
            let start = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            if followed_by_dot(i) && names_lake(&sql[start..i]) {
                return false;
            }
        } else {
            i += 1;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lake() -> HashSet<String> {
        ["nyc", "blog-db"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plain_upstream_text_is_settled_without_parsing() {
        let l = lake();
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            "UPDATE t SET x = 1 WHERE note = 'nyc trips'",
            "SELECT 1.5, public.f(x), \"Other\".t FROM s.nycx, xnyc.y",
            "BEGIN; INSERT INTO a VALUES ('it''s'); COMMIT_LIKE_TABLE",
            "select * from \"nyc2\".t",
        ] {
            assert!(plainly_upstream(sql, &l), "{sql}");
        }
    }

    #[test]
    fn anything_that_may_be_local_is_parsed() {
        let l = lake();
        for sql in [
            "SELECT * FROM nyc.trips",
            "select * from NYC . trips",
            "SELECT * FROM \"blog-db\".taxi",
            "SELECT * FROM \"blog-db\"\n  .taxi",
            "SET search_path = x",
            "  show sluice.pools",
            "SELECT 1; set x = 1",
            "commit",
            "CALL sluice.refresh_lake()",
            "SELECT 1 -- nyc.trips",
            "SELECT /* */ 1",
            "SELECT $$nyc.trips$$",
            "SELECT E'\\' \"nyc\".x'",
            "SELECT 'unterminated",
            "SELECT 'a;show x'",
            "SELECT * FROM nyc\x0B.trips",
            "SELECT * FROM nyc\u{2003}.trips",
        ] {
            assert!(!plainly_upstream(sql, &l), "{sql}");
        }
        // A double quote inside a literal cannot hide the reference after it.
        assert!(!plainly_upstream("SELECT 'a\"b' || \"nyc\".x", &l));
    }
}
