//! Attribution tags from a sqlcommenter comment (<https://google.github.io/sqlcommenter/spec/>):
//! `/*key='value',key2='value2'*/` at the very end of the statement, keys and values
//! URL-encoded, values single-quoted with `\'` escapes.
//!
//! Tags are advisory (they label a statement, they never decide anything), so a
//! missing or malformed comment yields no tags rather than an error.

/// The tags of `sql`'s trailing sqlcommenter comment, in the order written; empty
/// when there is none or it is malformed.
pub fn tags(sql: &str) -> Vec<(String, String)> {
    let text = sql.trim_end();
    let text = text.strip_suffix(';').map_or(text, str::trim_end);
    // Fast path without allocating: most statements carry no trailing comment.
    let Some(body) = text.strip_suffix("*/") else {
        return Vec::new();
    };
    // Searching back from the end finds the comment's own opening: an earlier `*/`
    // (in a string literal, say) lies before it, and encoded values hold no `/`.
    let Some(start) = body.rfind("/*") else {
        return Vec::new();
    };
    parse(&body[start + 2..]).unwrap_or_default()
}

/// The value of the first tag named `key`.
pub fn tag<'a>(tags: &'a [(String, String)], key: &str) -> Option<&'a str> {
    tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// `key='value',…` inside the comment; `None` when anything is off.
fn parse(content: &str) -> Option<Vec<(String, String)>> {
    let mut rest = content.trim();
    // `/* a */ b */` ends a comment before the last `*/`: not a tag comment.
    if rest.is_empty() || rest.contains("*/") {
        return None;
    }
    let mut tags = Vec::new();
    loop {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim();
        if key.is_empty() || key.contains(|c: char| c == '\'' || c == ',' || c.is_whitespace()) {
            return None;
        }
        rest = rest[eq + 1..].trim_start().strip_prefix('\'')?;
        let mut value = String::new();
        let mut end = None;
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => value.push(chars.next()?.1),
                '\'' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        tags.push((decode(key)?, decode(&value)?));
        rest = rest[end? + 1..].trim_start();
        if rest.is_empty() {
            return Some(tags);
        }
        rest = rest.strip_prefix(',')?.trim_start();
    }
}

/// Percent-decoding; `None` for a bad escape or bytes that are not UTF-8. `+` stays
/// a plus: the spec encodes spaces as `%20`.
fn decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_string());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            // from_str_radix alone would take a sign ("%+1").
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn spec_example() {
        let sql = "SELECT * FROM FOO /*action='%2Fparam*d',controller='index',framework='spring',\
                   traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01',\
                   tracestate='congo%3Dt61rcWkgMzE%2Crojo%3D00f067aa0ba902b7'*/";
        assert_eq!(
            tags(sql),
            pairs(&[
                ("action", "/param*d"),
                ("controller", "index"),
                ("framework", "spring"),
                (
                    "traceparent",
                    "00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01"
                ),
                ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
            ])
        );
    }

    #[test]
    fn application_and_route() {
        let found =
            tags("SELECT 1 /*application='billing%20api',route='%2Finvoices%2F%3Aid'*/ ;\n");
        assert_eq!(tag(&found, "application"), Some("billing api"));
        assert_eq!(tag(&found, "route"), Some("/invoices/:id"));
        assert_eq!(tag(&found, "missing"), None);
    }

    #[test]
    fn escaped_quotes_and_spacing() {
        assert_eq!(
            tags("SELECT 1 /* a='it\\'s' , b = 'x+y' */"),
            pairs(&[("a", "it's"), ("b", "x+y")])
        );
        assert_eq!(tags("SELECT 1 /*k=''*/"), pairs(&[("k", "")]));
    }

    #[test]
    fn absent_or_elsewhere() {
        assert!(tags("SELECT 1").is_empty());
        assert!(tags("").is_empty());
        assert!(tags("SELECT 1 /*a='b'*/ FROM t").is_empty());
        assert!(tags("/*a='b'*/ SELECT 1").is_empty());
    }

    #[test]
    fn only_the_last_comment_counts() {
        assert_eq!(
            tags("SELECT '*/' /*a='x'*/, 2 /*b='y'*/"),
            pairs(&[("b", "y")])
        );
        assert_eq!(tags("SELECT 1 /*a='x'*/ /*b='y'*/"), pairs(&[("b", "y")]));
    }

    #[test]
    fn malformed_yields_nothing() {
        for sql in [
            "SELECT 1 /* just a note */",
            "SELECT 1 /**/",
            "SELECT 1 /*a='x',*/",
            "SELECT 1 /*a='x' b='y'*/",
            "SELECT 1 /*a=x*/",
            "SELECT 1 /*a='x*/",
            "SELECT 1 /*='x'*/",
            "SELECT 1 /*a='%zz'*/",
            "SELECT 1 /*a='%ff'*/",
            "SELECT 1 /*a='%+1'*/",
            "SELECT 1 /*a='x\\*/",
            "SELECT 1 /* a */ b='c' */",
        ] {
            assert!(tags(sql).is_empty(), "{sql}");
        }
    }
}
