//! Recognising the materialized-view statements Sluice handles itself:
//!
//! ```sql
//! CREATE [OR REPLACE] MATERIALIZED VIEW [IF NOT EXISTS] schema.name
//!     [WITH (refresh_every_secs = 600, refresh_cron = '0 */15 * * * *',
//!            incremental_column = 'id')]
//!     AS query [WITH [NO] DATA]
//! REFRESH MATERIALIZED VIEW [CONCURRENTLY] schema.name [WITH [NO] DATA]
//! DROP MATERIALIZED VIEW [IF EXISTS] schema.name [, …] [CASCADE | RESTRICT]
//! ```
//!
//! Only names in a gateway view schema are Sluice's; the same statements on other
//! schemas go to Redshift, which has materialized views of its own. The view query
//! is kept as written (Redshift dialect included): it may run upstream verbatim.
//! sqlparser cannot parse `REFRESH MATERIALIZED VIEW`, so these statements are
//! recognised here, from their leading words, before any parsing.

use crate::error::{PgError, SqlState};

/// A gateway view name, lower case (quoted names keep their case).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ViewName {
    pub schema: String,
    pub name: String,
}

impl std::fmt::Display for ViewName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

impl ViewName {
    /// `schema.name` from the config.
    pub fn parse(text: &str) -> Option<ViewName> {
        let (schema, name) = text.split_once('.')?;
        Some(ViewName {
            schema: schema.trim().to_lowercase(),
            name: name.trim().to_lowercase(),
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewOptions {
    pub refresh_every_secs: Option<u64>,
    pub refresh_cron: Option<String>,
    pub incremental_column: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatViewStatement {
    Create {
        name: ViewName,
        query: String,
        options: ViewOptions,
        with_data: bool,
        if_not_exists: bool,
        or_replace: bool,
    },
    Refresh {
        name: ViewName,
        concurrently: bool,
        with_data: bool,
    },
    Drop {
        names: Vec<ViewName>,
        if_exists: bool,
    },
}

impl MatViewStatement {
    pub fn tag(&self) -> &'static str {
        match self {
            MatViewStatement::Create { .. } => "CREATE MATERIALIZED VIEW",
            MatViewStatement::Refresh { .. } => "REFRESH MATERIALIZED VIEW",
            MatViewStatement::Drop { .. } => "DROP MATERIALIZED VIEW",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// An unquoted word, lower-cased.
    Word(String),
    /// A double-quoted identifier.
    Quoted(String),
    /// A single-quoted literal.
    Literal(String),
    Number(String),
    Punct(char),
}

/// Tokens of the statement head, each with the byte offset just after it.
struct Lexer<'a> {
    sql: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn skip_space(&mut self) {
        let b = self.sql.as_bytes();
        loop {
            while self.pos < b.len() && b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            if self.sql[self.pos..].starts_with("--") {
                match self.sql[self.pos..].find('\n') {
                    Some(n) => self.pos += n + 1,
                    None => self.pos = b.len(),
                }
            } else if self.sql[self.pos..].starts_with("/*") {
                match self.sql[self.pos + 2..].find("*/") {
                    Some(n) => self.pos += n + 4,
                    None => self.pos = b.len(),
                }
            } else {
                return;
            }
        }
    }

    fn next(&mut self) -> Option<Token> {
        self.skip_space();
        let rest = &self.sql[self.pos..];
        let c = rest.chars().next()?;
        if c.is_alphabetic() || c == '_' {
            let len = rest
                .find(|ch: char| !(ch.is_alphanumeric() || ch == '_' || ch == '$'))
                .unwrap_or(rest.len());
            self.pos += len;
            return Some(Token::Word(rest[..len].to_lowercase()));
        }
        if c.is_ascii_digit() {
            let len = rest
                .find(|ch: char| !ch.is_ascii_digit())
                .unwrap_or(rest.len());
            self.pos += len;
            return Some(Token::Number(rest[..len].to_owned()));
        }
        if c == '"' || c == '\'' {
            let mut out = String::new();
            let mut chars = rest.char_indices().skip(1).peekable();
            while let Some((i, ch)) = chars.next() {
                if ch == c {
                    if chars.peek().map(|(_, n)| *n) == Some(c) {
                        out.push(c);
                        chars.next();
                        continue;
                    }
                    self.pos += i + 1;
                    return Some(if c == '"' {
                        Token::Quoted(out)
                    } else {
                        Token::Literal(out)
                    });
                }
                out.push(ch);
            }
            self.pos = self.sql.len();
            return None;
        }
        self.pos += c.len_utf8();
        Some(Token::Punct(c))
    }

    fn peek(&mut self) -> Option<Token> {
        let saved = self.pos;
        let t = self.next();
        self.pos = saved;
        t
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if self.peek() == Some(Token::Word(word.into())) {
            self.next();
            true
        } else {
            false
        }
    }
}

fn syntax(message: impl Into<String>) -> PgError {
    PgError::new(SqlState::SYNTAX_ERROR, message)
}

/// The statement, if `sql` is a materialized-view statement on a gateway schema.
/// `resolve` gives the schema of an unqualified name that is a gateway view.
pub fn recognize(
    sql: &str,
    schemas: &[String],
    resolve: impl Fn(&str) -> Option<String>,
) -> Option<Result<MatViewStatement, PgError>> {
    let mut lx = Lexer { sql, pos: 0 };
    let first = lx.next()?;
    let verb = match first {
        Token::Word(w) if matches!(w.as_str(), "create" | "refresh" | "drop") => w,
        _ => return None,
    };
    let or_replace = verb == "create" && lx.eat_word("or") && lx.eat_word("replace");
    if !(lx.eat_word("materialized") && lx.eat_word("view")) {
        return None;
    }
    let head = Head {
        schemas,
        resolve: &resolve,
    };
    match verb.as_str() {
        "create" => {
            let if_not_exists = lx.eat_word("if") && lx.eat_word("not") && lx.eat_word("exists");
            let name = head.name(&mut lx)?;
            Some(create(&mut lx, name, if_not_exists, or_replace))
        }
        "refresh" => {
            let concurrently = lx.eat_word("concurrently");
            let name = head.name(&mut lx)?;
            let with_data = match data_clause(&mut lx) {
                Ok(d) => d,
                Err(e) => return Some(Err(e)),
            };
            if let Err(e) = end(&mut lx) {
                return Some(Err(e));
            }
            Some(Ok(MatViewStatement::Refresh {
                name,
                concurrently,
                with_data,
            }))
        }
        _ => {
            let if_exists = lx.eat_word("if") && lx.eat_word("exists");
            let mut names = vec![head.name(&mut lx)?];
            while lx.peek() == Some(Token::Punct(',')) {
                lx.next();
                match head.name(&mut lx) {
                    Some(n) => names.push(n),
                    None => {
                        return Some(Err(syntax(
                            "DROP MATERIALIZED VIEW cannot mix gateway views with Redshift views",
                        )));
                    }
                }
            }
            if lx.eat_word("restrict") || lx.eat_word("cascade") {
                // Nothing depends on a gateway view.
            }
            if let Err(e) = end(&mut lx) {
                return Some(Err(e));
            }
            Some(Ok(MatViewStatement::Drop { names, if_exists }))
        }
    }
}

struct Head<'a> {
    schemas: &'a [String],
    resolve: &'a dyn Fn(&str) -> Option<String>,
}

impl Head<'_> {
    /// A view name in a gateway schema; `None` for any other name (not ours).
    fn name(&self, lx: &mut Lexer) -> Option<ViewName> {
        let part = |t: Token| match t {
            Token::Word(w) => Some(w),
            Token::Quoted(q) => Some(q),
            _ => None,
        };
        let first = part(lx.next()?)?;
        if lx.peek() == Some(Token::Punct('.')) {
            lx.next();
            let second = part(lx.next()?)?;
            return self.schemas.contains(&first).then_some(ViewName {
                schema: first,
                name: second,
            });
        }
        let schema = (self.resolve)(&first)?;
        Some(ViewName {
            schema,
            name: first,
        })
    }
}

fn create(
    lx: &mut Lexer,
    name: ViewName,
    if_not_exists: bool,
    or_replace: bool,
) -> Result<MatViewStatement, PgError> {
    let mut options = ViewOptions::default();
    if lx.eat_word("with") {
        if lx.next() != Some(Token::Punct('(')) {
            return Err(syntax("expected ( after WITH"));
        }
        loop {
            let key = match lx.next() {
                Some(Token::Word(w)) => w,
                _ => return Err(syntax("expected an option name in WITH (…)")),
            };
            if lx.next() != Some(Token::Punct('=')) {
                return Err(syntax(format!("expected = after {key}")));
            }
            let value = match lx.next() {
                Some(Token::Number(n)) => n,
                Some(Token::Literal(s)) | Some(Token::Word(s)) | Some(Token::Quoted(s)) => s,
                _ => return Err(syntax(format!("expected a value for {key}"))),
            };
            match key.as_str() {
                "refresh_every_secs" => {
                    let secs = value.parse::<u64>().ok().filter(|s| *s > 0).ok_or_else(|| {
                        PgError::new(
                            SqlState::INVALID_PARAMETER_VALUE,
                            format!("refresh_every_secs must be a positive number of seconds, not {value}"),
                        )
                    })?;
                    options.refresh_every_secs = Some(secs);
                }
                "refresh_cron" => {
                    crate::config::values::parse_cron(&value)
                        .map_err(|e| PgError::new(SqlState::INVALID_PARAMETER_VALUE, e))?;
                    options.refresh_cron = Some(value);
                }
                "incremental_column" => options.incremental_column = Some(value),
                other => {
                    return Err(PgError::new(
                        SqlState::INVALID_PARAMETER_VALUE,
                        format!(
                            "unknown materialized view option \"{other}\" (known: refresh_every_secs, refresh_cron, incremental_column)"
                        ),
                    ));
                }
            }
            match lx.next() {
                Some(Token::Punct(',')) => continue,
                Some(Token::Punct(')')) => break,
                _ => return Err(syntax("expected , or ) in WITH (…)")),
            }
        }
        if options.refresh_every_secs.is_some() && options.refresh_cron.is_some() {
            return Err(PgError::new(
                SqlState::INVALID_PARAMETER_VALUE,
                "set refresh_every_secs or refresh_cron, not both",
            ));
        }
    }
    if lx.peek() == Some(Token::Punct('(')) {
        return Err(PgError::new(
            SqlState::FEATURE_NOT_SUPPORTED,
            "column lists are not supported on gateway materialized views: name the columns in the query",
        ));
    }
    if !lx.eat_word("as") {
        return Err(syntax("expected AS <query>"));
    }
    let mut query = lx.sql[lx.pos..].trim().trim_end_matches(';').trim_end();
    let mut with_data = true;
    // A trailing `WITH [NO] DATA` belongs to the CREATE, not to the query.
    let words: Vec<&str> = query.rsplitn(4, char::is_whitespace).collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_uppercase()).collect();
    if upper.len() >= 3 && upper[0] == "DATA" && upper[1] == "NO" && upper[2] == "WITH" {
        with_data = false;
        query = trim_words(query, 3);
    } else if upper.len() >= 2 && upper[0] == "DATA" && upper[1] == "WITH" {
        query = trim_words(query, 2);
    }
    if query.is_empty() {
        return Err(syntax("expected a query after AS"));
    }
    Ok(MatViewStatement::Create {
        name,
        query: query.to_owned(),
        options,
        with_data,
        if_not_exists,
        or_replace,
    })
}

/// `text` without its last `n` whitespace-separated words.
fn trim_words(text: &str, n: usize) -> &str {
    let mut t = text.trim_end();
    for _ in 0..n {
        t = match t.rfind(char::is_whitespace) {
            Some(i) => t[..i].trim_end(),
            None => "",
        };
    }
    t
}

/// `[WITH [NO] DATA]`: whether data is loaded.
fn data_clause(lx: &mut Lexer) -> Result<bool, PgError> {
    if !lx.eat_word("with") {
        return Ok(true);
    }
    let no = lx.eat_word("no");
    if !lx.eat_word("data") {
        return Err(syntax("expected WITH [NO] DATA"));
    }
    Ok(!no)
}

fn end(lx: &mut Lexer) -> Result<(), PgError> {
    if lx.peek() == Some(Token::Punct(';')) {
        lx.next();
    }
    match lx.next() {
        None => Ok(()),
        Some(t) => Err(syntax(format!(
            "unexpected {t:?} at the end of the statement"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sql: &str) -> Option<Result<MatViewStatement, PgError>> {
        let schemas = vec!["mv".to_string()];
        recognize(sql, &schemas, |n| (n == "daily").then(|| "mv".to_string()))
    }

    fn name(s: &str) -> ViewName {
        ViewName::parse(s).unwrap()
    }

    #[test]
    fn create_keeps_the_query_text_and_options() {
        let s = rec("create materialized view MV.Daily with (refresh_every_secs = 60, incremental_column = 'id') as\n select id, sum(x) from public.t group by 1 WITH NO DATA;")
            .unwrap()
            .unwrap();
        assert_eq!(
            s,
            MatViewStatement::Create {
                name: name("mv.daily"),
                query: "select id, sum(x) from public.t group by 1".into(),
                options: ViewOptions {
                    refresh_every_secs: Some(60),
                    refresh_cron: None,
                    incremental_column: Some("id".into()),
                },
                with_data: false,
                if_not_exists: false,
                or_replace: false,
            }
        );
        let s = rec("/* c */ CREATE MATERIALIZED VIEW IF NOT EXISTS mv.x AS SELECT 1")
            .unwrap()
            .unwrap();
        assert!(matches!(
            s,
            MatViewStatement::Create {
                if_not_exists: true,
                with_data: true,
                ..
            }
        ));
    }

    #[test]
    fn refresh_and_drop() {
        assert_eq!(
            rec("REFRESH MATERIALIZED VIEW CONCURRENTLY mv.daily")
                .unwrap()
                .unwrap(),
            MatViewStatement::Refresh {
                name: name("mv.daily"),
                concurrently: true,
                with_data: true
            }
        );
        assert_eq!(
            rec("refresh materialized view daily;").unwrap().unwrap(),
            MatViewStatement::Refresh {
                name: name("mv.daily"),
                concurrently: false,
                with_data: true
            }
        );
        assert_eq!(
            rec("DROP MATERIALIZED VIEW IF EXISTS mv.a, mv.b CASCADE")
                .unwrap()
                .unwrap(),
            MatViewStatement::Drop {
                names: vec![name("mv.a"), name("mv.b")],
                if_exists: true
            }
        );
    }

    #[test]
    fn other_schemas_and_statements_are_not_ours() {
        assert!(rec("CREATE MATERIALIZED VIEW sales.daily AS SELECT 1").is_none());
        assert!(rec("REFRESH MATERIALIZED VIEW other").is_none());
        assert!(rec("CREATE VIEW mv.x AS SELECT 1").is_none());
        assert!(rec("SELECT * FROM mv.daily").is_none());
        assert!(rec("DROP TABLE mv.x").is_none());
    }

    #[test]
    fn mistakes_get_clear_errors() {
        let e = rec("CREATE MATERIALIZED VIEW mv.x WITH (color = 'red') AS SELECT 1")
            .unwrap()
            .unwrap_err();
        assert!(
            e.message.contains("unknown materialized view option"),
            "{}",
            e.message
        );
        let e = rec("CREATE MATERIALIZED VIEW mv.x WITH (refresh_cron = 'soon') AS SELECT 1")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, SqlState::INVALID_PARAMETER_VALUE);
        let e = rec("REFRESH MATERIALIZED VIEW mv.x now")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, SqlState::SYNTAX_ERROR);
        let e = rec("CREATE MATERIALIZED VIEW mv.x").unwrap().unwrap_err();
        assert_eq!(e.code, SqlState::SYNTAX_ERROR);
    }
}
