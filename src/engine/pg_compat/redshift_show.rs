//! Redshift's metadata commands, which Amazon's Redshift drivers send for
//! `get_schemas`/`get_tables`/`get_columns`/`get_primary_keys` when the server
//! reports `show_discovery` ≥ 4:
//!
//! ```text
//! SHOW DATABASES [LIKE p]
//! SHOW SCHEMAS FROM DATABASE db [LIKE p]
//! SHOW TABLES FROM SCHEMA db.schema [LIKE p]
//! SHOW COLUMNS FROM TABLE db.schema.table [LIKE p]
//! SHOW CONSTRAINTS PRIMARY KEYS FROM TABLE db.schema.table
//! ```
//!
//! Names may be bind parameters (`$1.$2`: the drivers bind them), quoted or bare
//! identifiers. Each command becomes a query over the session's own
//! `information_schema`, so it shows exactly what the role may see, with the
//! columns Redshift returns (the drivers look them up by name).

/// One token of a SHOW command.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Param(String),
    Literal(String),
    Dot,
}

fn tokenize(sql: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let mut chars = sql
        .trim()
        .trim_end_matches(';')
        .trim_end()
        .chars()
        .peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '.' => {
                chars.next();
                out.push(Tok::Dot);
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '"' if chars.peek() == Some(&'"') => {
                            chars.next();
                            s.push('"');
                        }
                        '"' => break,
                        c => s.push(c),
                    }
                }
                out.push(Tok::Quoted(s));
            }
            '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '\'' if chars.peek() == Some(&'\'') => {
                            chars.next();
                            s.push('\'');
                        }
                        '\'' => break,
                        c => s.push(c),
                    }
                }
                out.push(Tok::Literal(s));
            }
            '$' => {
                chars.next();
                let mut n = String::new();
                while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    n.push(d);
                    chars.next();
                }
                if n.is_empty() {
                    return None;
                }
                out.push(Tok::Param(n));
            }
            c if c.is_alphanumeric() || c == '_' || c == '-' => {
                let mut w = String::new();
                while let Some(&d) = chars
                    .peek()
                    .filter(|d| d.is_alphanumeric() || **d == '_' || **d == '-' || **d == '$')
                {
                    w.push(d);
                    chars.next();
                }
                out.push(Tok::Word(w));
            }
            _ => return None,
        }
    }
    Some(out)
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A name or pattern as a SQL value: a parameter stays a parameter; a bare
/// identifier folds to lower case, a quoted one keeps its case.
fn value(t: &Tok) -> Option<String> {
    Some(match t {
        Tok::Param(n) => format!("CAST(${n} AS VARCHAR)"),
        Tok::Word(w) => quote(&w.to_lowercase()),
        Tok::Quoted(q) | Tok::Literal(q) => quote(q),
        Tok::Dot => return None,
    })
}

/// `a.b.c` with exactly `parts` names.
fn dotted(toks: &[Tok], parts: usize) -> Option<(Vec<String>, &[Tok])> {
    let mut names = Vec::with_capacity(parts);
    let mut rest = toks;
    for i in 0..parts {
        if i > 0 {
            rest = rest.strip_prefix(&[Tok::Dot])?;
        }
        let (first, tail) = rest.split_first()?;
        names.push(value(first)?);
        rest = tail;
    }
    Some((names, rest))
}

fn keyword(t: Option<&Tok>, k: &str) -> bool {
    matches!(t, Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k))
}

/// `[LIKE pattern]` at the end: the extra condition on `column`.
fn like(rest: &[Tok], column: &str) -> Option<String> {
    match rest {
        [] => Some(String::new()),
        [l, p] if keyword(Some(l), "like") => Some(format!(" AND {column} LIKE {}", value(p)?)),
        _ => None,
    }
}

const TEXT_NULL: &str = "CAST(NULL AS VARCHAR)";

/// The query answering a Redshift SHOW metadata command, or `None` when `sql` is
/// not one.
pub fn rewrite(sql: &str) -> Option<String> {
    let head = sql.trim_start();
    if !head
        .get(..4)
        .is_some_and(|h| h.eq_ignore_ascii_case("show"))
    {
        return None;
    }
    let toks = tokenize(sql)?;
    let words: Vec<String> = toks
        .iter()
        .take(4)
        .map(|t| match t {
            Tok::Word(w) => w.to_ascii_lowercase(),
            _ => String::new(),
        })
        .collect();
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match (w(1), w(2), w(3)) {
        ("databases", _, _) => {
            let cond = like(&toks[2..], "catalog_name")?;
            Some(format!(
                "SELECT DISTINCT catalog_name AS database_name, {TEXT_NULL} AS database_owner, \
                 'local' AS database_type, {TEXT_NULL} AS database_acl, {TEXT_NULL} AS parameters, \
                 'Snapshot Isolation' AS database_isolation_level \
                 FROM information_schema.schemata WHERE true{cond} ORDER BY database_name"
            ))
        }
        ("schemas", "from", "database") => {
            let (db, rest) = dotted(&toks[4..], 1)?;
            let cond = like(rest, "schema_name")?;
            Some(format!(
                "SELECT catalog_name AS database_name, schema_name, {TEXT_NULL} AS schema_owner, \
                 'local' AS schema_type, {TEXT_NULL} AS schema_acl, {TEXT_NULL} AS source_database, \
                 {TEXT_NULL} AS schema_option \
                 FROM information_schema.schemata WHERE catalog_name = {}{cond} ORDER BY schema_name",
                db[0]
            ))
        }
        ("tables", "from", "schema") => {
            let (names, rest) = dotted(&toks[4..], 2)?;
            let cond = like(rest, "table_name")?;
            Some(format!(
                "SELECT table_catalog AS database_name, table_schema AS schema_name, table_name, \
                 CASE table_type WHEN 'BASE TABLE' THEN 'TABLE' ELSE table_type END AS table_type, \
                 {TEXT_NULL} AS table_acl, {TEXT_NULL} AS remarks, {TEXT_NULL} AS owner, \
                 CAST(NULL AS TIMESTAMP) AS last_altered_time, CAST(NULL AS TIMESTAMP) AS last_modified_time, \
                 {TEXT_NULL} AS dist_style, {TEXT_NULL} AS table_subtype \
                 FROM information_schema.tables \
                 WHERE table_catalog = {} AND table_schema = {}{cond} ORDER BY table_name",
                names[0], names[1]
            ))
        }
        ("columns", "from", "table") => {
            let (names, rest) = dotted(&toks[4..], 3)?;
            let cond = like(rest, "column_name")?;
            Some(format!(
                "SELECT table_catalog AS database_name, table_schema AS schema_name, table_name, \
                 column_name, ordinal_position, column_default, is_nullable, data_type, \
                 character_maximum_length, numeric_precision, numeric_scale, {TEXT_NULL} AS remarks, \
                 {TEXT_NULL} AS sort_key_type, 0 AS sort_key, false AS dist_key, \
                 {TEXT_NULL} AS encoding, {TEXT_NULL} AS collation \
                 FROM information_schema.columns \
                 WHERE table_catalog = {} AND table_schema = {} AND table_name = {}{cond} \
                 ORDER BY ordinal_position",
                names[0], names[1], names[2]
            ))
        }
        ("constraints", "primary", "keys") => {
            // Lake tables and views have no primary keys: the right columns, no rows.
            let rest = toks.get(4..)?;
            if !keyword(rest.first(), "from") || !keyword(rest.get(1), "table") {
                return None;
            }
            let (names, rest) = dotted(&rest[2..], 3)?;
            if !rest.is_empty() {
                return None;
            }
            Some(format!(
                "SELECT table_catalog AS database_name, table_schema AS schema_name, table_name, \
                 column_name, CAST(ordinal_position AS INTEGER) AS key_seq, {TEXT_NULL} AS pk_name \
                 FROM information_schema.columns \
                 WHERE false AND table_catalog = {} AND table_schema = {} AND table_name = {}",
                names[0], names[1], names[2]
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_commands_become_information_schema_queries() {
        let q = rewrite("SHOW SCHEMAS FROM DATABASE $1;").unwrap();
        assert!(q.contains("catalog_name = CAST($1 AS VARCHAR)"), "{q}");
        let q = rewrite("SHOW TABLES FROM SCHEMA $1.$2 LIKE $3;").unwrap();
        assert!(
            q.contains(
                "table_schema = CAST($2 AS VARCHAR) AND table_name LIKE CAST($3 AS VARCHAR)"
            ),
            "{q}"
        );
        let q = rewrite("show columns from table sluice.\"blog-db\".Taxi").unwrap();
        assert!(
            q.contains("table_schema = 'blog-db' AND table_name = 'taxi'"),
            "{q}"
        );
        let q = rewrite("SHOW CONSTRAINTS PRIMARY KEYS FROM TABLE $1.$2.$3;").unwrap();
        assert!(q.contains("WHERE false"), "{q}");
        assert!(
            rewrite("SHOW DATABASES;")
                .unwrap()
                .contains("database_name")
        );
        assert!(
            rewrite("SHOW DATABASES LIKE 'x''y'")
                .unwrap()
                .contains("LIKE 'x''y'")
        );
    }

    #[test]
    fn anything_else_is_left_alone() {
        for sql in [
            "SHOW search_path",
            "SHOW TABLES",
            "SELECT 1",
            "SHOW TABLES FROM SCHEMA a.b.c",
            "SHOW COLUMNS FROM TABLE a.b",
            "SHOW SCHEMAS FROM DATABASE 'x' junk",
            "SHOW TABLES FROM SCHEMA \"unterminated",
        ] {
            assert_eq!(rewrite(sql), None, "{sql}");
        }
    }
}
