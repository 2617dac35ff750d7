//! Query-group fingerprints, following libpg_query's fingerprint (v3) rules over
//! sqlparser's syntax tree: statements that differ only in constants, parameter
//! placeholders, aliases, list lengths, partition suffixes of table names,
//! prepared-statement or cursor names, identifier case, whitespace or comments
//! share a fingerprint.
//!
//! [`of_statement`] is the fingerprint of a parsed statement; [`of_text`] the
//! token-level fallback for text Sluice cannot parse (the two need not agree).
//! [`normalized`] is a group's display text, free of the statement's literals.
//!
//! Hashes are FNV-1a 64 over canonical tokens: fixed constants, so fingerprints are
//! stable across processes and releases (std's hashers are seeded or unspecified).

use std::fmt::Write as _;
use std::mem;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Array, CloseCursor, Expr, Ident, ObjectName, ObjectNamePart, Query, Select, SelectItem,
    SetExpr, Statement, TableAlias, TableFactor, UnaryOperator, Value, ValueWithSpan, VisitMut,
    VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Word};

use super::tokens::{self, is_keyword, is_literal};

/// What every constant becomes before hashing.
const CONSTANT: &str = "$0";
/// The longest [`normalized`] text, in bytes (the cut keeps whole chars).
pub const NORMALIZED_MAX: usize = 1024;
/// [`normalized`]'s text for a statement that cannot even be tokenized: nothing of
/// it can be shown without risking a literal.
pub const UNTOKENIZABLE: &str = "<statement could not be tokenized>";

/// The fingerprint of a parsed statement.
pub fn of_statement(stmt: &Statement) -> u64 {
    let mut stmt = stmt.clone();
    let _ = stmt.visit(&mut Normalise);
    let text = stmt.to_string();
    let mut hash = Fnv::new();
    // Display keeps identifiers as written; re-tokenizing lets unquoted ones be
    // folded to lower case the way PostgreSQL folds them.
    match Tokenizer::new(&PostgreSqlDialect {}, &text).tokenize() {
        Ok(tokens) => {
            for token in tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))) {
                match token {
                    Token::Word(w) => hash.part(&word(w, false)),
                    other => hash.part(&other.to_string()),
                }
            }
        }
        Err(_) => hash.part(&text),
    }
    hash.finish()
}

/// 16 lower-case hex digits.
pub fn hex(fp: u64) -> String {
    format!("{fp:016x}")
}

/// Rewrites a statement into its query group's canonical form. The result is only
/// hashed, never run, so it need not stay valid SQL.
struct Normalise;

impl VisitorMut for Normalise {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &mut Statement) -> ControlFlow<()> {
        // Prepared statement and cursor names are per-session handles, not part of
        // the query.
        match stmt {
            Statement::Prepare { name, .. }
            | Statement::Deallocate { name, .. }
            | Statement::Fetch { name, .. }
            | Statement::Close {
                cursor: CloseCursor::Specific { name },
            } => *name = anonymous(),
            Statement::Execute {
                name: Some(name), ..
            } => *name = ObjectName::from(vec![anonymous()]),
            Statement::Declare { stmts } => {
                for declare in stmts {
                    declare.names.iter_mut().for_each(|n| *n = anonymous());
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_value(&mut self, value: &mut ValueWithSpan) -> ControlFlow<()> {
        value.value = Value::Placeholder(CONSTANT.to_string());
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        // Children are already normalised here (post-order).
        let folded = match expr {
            // PostgreSQL's grammar folds a sign into the constant: -1 is one A_Const.
            Expr::UnaryOp {
                op: UnaryOperator::Minus | UnaryOperator::Plus,
                expr: inner,
            } if is_constant(inner) => Some(mem::replace(&mut **inner, constant())),
            Expr::InList { list, .. } => {
                collapse(list);
                None
            }
            Expr::Array(Array { elem, .. }) if elem.iter().all(is_constant) => {
                collapse(elem);
                None
            }
            _ => None,
        };
        if let Some(folded) = folded {
            *expr = folded;
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        collapse_values(&mut query.body);
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &mut Select) -> ControlFlow<()> {
        for item in &mut select.projection {
            let unaliased = match item {
                SelectItem::ExprWithAlias { expr, .. }
                | SelectItem::ExprWithAliases { expr, .. } => Some(mem::replace(expr, constant())),
                _ => None,
            };
            if let Some(expr) = unaliased {
                *item = SelectItem::UnnamedExpr(expr);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let Some(alias) = alias_of(factor) {
            // Column aliases name the output, so they stay; only the name goes.
            match alias {
                Some(a) if a.columns.is_empty() => *alias = None,
                Some(a) => a.name = anonymous(),
                None => {}
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, name: &mut ObjectName) -> ControlFlow<()> {
        // Partitions (events_2024_01, events_2024_02) are one query group; the
        // schema stays as written.
        if let Some(ObjectNamePart::Identifier(table)) = name.0.last_mut() {
            table.value.retain(|c| !c.is_ascii_digit());
        }
        ControlFlow::Continue(())
    }
}

fn anonymous() -> Ident {
    Ident::new("_")
}

fn constant() -> Expr {
    Expr::value(Value::Placeholder(CONSTANT.to_string()))
}

fn is_constant(expr: &Expr) -> bool {
    matches!(expr, Expr::Value(v) if matches!(&v.value, Value::Placeholder(p) if p == CONSTANT))
}

/// Sorts and dedupes a list by its text, so its length and order stop mattering once
/// its constants are alike.
fn collapse(list: &mut Vec<Expr>) {
    let mut keyed: Vec<(String, Expr)> = list.drain(..).map(|e| (e.to_string(), e)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.dedup_by(|a, b| a.0 == b.0);
    list.extend(keyed.into_iter().map(|(_, e)| e));
}

/// `VALUES (1, 2), (3, 4)` ≡ `VALUES (5, 6)`: rows collapse like an IN list.
fn collapse_values(body: &mut SetExpr) {
    match body {
        SetExpr::Values(values) => {
            let mut keyed: Vec<(String, _)> = values
                .rows
                .drain(..)
                .map(|row| (row_text(&row.content), row))
                .collect();
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            keyed.dedup_by(|a, b| a.0 == b.0);
            values.rows.extend(keyed.into_iter().map(|(_, row)| row));
        }
        SetExpr::SetOperation { left, right, .. } => {
            collapse_values(left);
            collapse_values(right);
        }
        _ => {}
    }
}

fn row_text(row: &[Expr]) -> String {
    let mut text = String::new();
    for e in row {
        let _ = write!(text, "{e},");
    }
    text
}

fn alias_of(factor: &mut TableFactor) -> Option<&mut Option<TableAlias>> {
    match factor {
        TableFactor::Table { alias, .. }
        | TableFactor::Derived { alias, .. }
        | TableFactor::TableFunction { alias, .. }
        | TableFactor::Function { alias, .. }
        | TableFactor::UNNEST { alias, .. }
        | TableFactor::JsonTable { alias, .. }
        | TableFactor::OpenJsonTable { alias, .. }
        | TableFactor::NestedJoin { alias, .. }
        | TableFactor::Pivot { alias, .. }
        | TableFactor::Unpivot { alias, .. }
        | TableFactor::MatchRecognize { alias, .. }
        | TableFactor::XmlTable { alias, .. }
        | TableFactor::SemanticView { alias, .. } => Some(alias),
    }
}

/// A word as PostgreSQL compares it: unquoted words fold to lower case, and a quoted
/// one already in lower case means the same. `strip_digits` for table names.
fn word(w: &Word, strip_digits: bool) -> String {
    let mut value = match w.quote_style {
        None => w.value.to_lowercase(),
        Some(_) => w.value.clone(),
    };
    if strip_digits {
        value.retain(|c| !c.is_ascii_digit());
    }
    match w.quote_style {
        Some(q) if value != value.to_lowercase() => format!("{q}{value}"),
        _ => value,
    }
}

/// A token of [`of_text`]'s canonical stream.
enum Canon {
    Constant,
    /// A parenthesised list of constants, or a comma-separated run of them.
    List,
    Comma,
    Open,
    Text(String),
}

/// The fingerprint of several statements sent as one text: the sequence of
/// theirs, in order.
pub fn of_sequence(fingerprints: impl IntoIterator<Item = u64>) -> u64 {
    let mut hash = Fnv::new();
    for fp in fingerprints {
        hash.bytes(&fp.to_le_bytes());
    }
    hash.finish()
}

/// The fingerprint of text that does not parse (or is relayed unparsed), from its
/// tokens; falls back to the whitespace-collapsed, lower-cased text when even
/// tokenizing fails.
///
/// Tokenizing costs microseconds, and the relay's fast path meets texts that
/// differ only in their literals at pgbench rates: plain texts (ASCII, no comments,
/// dollar quotes or backslashes) are first reduced to their *shape* — numbers and
/// string literals blanked, in one pass over the bytes — and the fingerprint of a
/// shape seen before is reused. Texts of one shape differ only in literal values,
/// which the fingerprint ignores, so reuse never changes a result.
pub fn of_text(sql: &str) -> u64 {
    static SHAPES: std::sync::LazyLock<moka::sync::Cache<Box<str>, u64>> =
        std::sync::LazyLock::new(|| moka::sync::Cache::new(10_000));
    let Some(shape) = shape(sql) else {
        return of_text_uncached(sql);
    };
    if let Some(fp) = SHAPES.get(shape.as_str()) {
        return fp;
    }
    let fp = of_text_uncached(sql);
    SHAPES.insert(shape.into_boxed_str(), fp);
    fp
}

/// The text with every number and string literal blanked (`0`, `''`), or `None`
/// when the text is not plain enough for a byte scan to find its literals (non-ASCII,
/// comments, dollar quotes, backslash escapes) or is long.
fn shape(sql: &str) -> Option<String> {
    const LONGEST: usize = 4096;
    let b = sql.as_bytes();
    // Backslashes may escape quotes inside E'' strings: not for a byte scan.
    if b.len() > LONGEST || b.contains(&b'\\') {
        return None;
    }
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            0x80..=0xFF | b'$' => return None,
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            b'\'' => {
                // A string literal, '' doubled inside.
                let mut j = i + 1;
                loop {
                    match b.get(j) {
                        None => return None,
                        Some(b'\'') if b.get(j + 1) == Some(&b'\'') => j += 2,
                        Some(b'\'') => break,
                        Some(_) => j += 1,
                    }
                }
                out.push_str("''");
                i = j + 1;
            }
            b'"' => {
                // A quoted identifier: kept as written.
                let start = i;
                let mut j = i + 1;
                loop {
                    match b.get(j) {
                        None => return None,
                        Some(b'"') if b.get(j + 1) == Some(&b'"') => j += 2,
                        Some(b'"') => break,
                        Some(_) => j += 1,
                    }
                }
                out.push_str(&sql[start..=j]);
                i = j + 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                // A word (digits inside it are part of it: `table1`, `e10` after a
                // number is handled below).
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push_str(&sql[start..i]);
            }
            c if c.is_ascii_digit()
                || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                // A number: digits, a fraction, an exponent.
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    if (b[i] == b'e' || b[i] == b'E') && matches!(b.get(i + 1), Some(b'+' | b'-')) {
                        i += 1;
                    }
                    i += 1;
                }
                out.push('0');
            }
            _ => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    Some(out)
}

fn of_text_uncached(sql: &str) -> u64 {
    let mut hash = Fnv::new();
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        for part in sql.split_whitespace() {
            hash.part(&part.to_lowercase());
        }
        return hash.finish();
    };
    let tokens: Vec<Token> = tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let relations = relation_names(&tokens);
    let mut out: Vec<Canon> = Vec::with_capacity(tokens.len());
    let mut opens: Vec<usize> = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        match token {
            t if is_literal(t) || matches!(t, Token::Placeholder(_)) => {
                // A sign where no operand precedes it belongs to the constant.
                if let [.., before, Canon::Text(sign)] = out.as_slice()
                    && (sign == "-" || sign == "+")
                    && !is_operand(before)
                {
                    out.pop();
                }
                out.push(Canon::Constant);
            }
            Token::Comma => out.push(Canon::Comma),
            Token::LParen => {
                opens.push(out.len());
                out.push(Canon::Open);
            }
            Token::RParen => match opens.pop() {
                Some(start) if only_constants(&out[start + 1..]) => {
                    out.truncate(start);
                    out.push(Canon::List);
                    // VALUES rows: (…), (…) is one list.
                    while let [.., Canon::List, Canon::Comma, Canon::List] = out.as_slice() {
                        out.truncate(out.len() - 2);
                    }
                }
                _ => out.push(Canon::Text(")".to_string())),
            },
            Token::Word(w) => out.push(Canon::Text(word(w, relations[i]))),
            other => out.push(Canon::Text(other.to_string())),
        }
    }
    for c in &out {
        match c {
            Canon::Constant => hash.part("?"),
            Canon::List => hash.part("(?)"),
            Canon::Comma => hash.part(","),
            Canon::Open => hash.part("("),
            Canon::Text(t) => hash.part(t),
        }
    }
    hash.finish()
}

/// Whether a canonical token ends an operand, making a following sign binary.
fn is_operand(c: &Canon) -> bool {
    match c {
        Canon::Constant | Canon::List => true,
        Canon::Comma | Canon::Open => false,
        Canon::Text(t) => !matches!(t.as_str(), "=" | "<" | ">" | "<=" | ">=" | "<>" | "!="),
    }
}

fn only_constants(inside: &[Canon]) -> bool {
    inside
        .iter()
        .all(|c| matches!(c, Canon::Constant | Canon::List | Canon::Comma))
        && inside
            .iter()
            .any(|c| matches!(c, Canon::Constant | Canon::List))
}

/// Which tokens are the table part of a name after FROM, JOIN, INTO, UPDATE or
/// TABLE (the last part of a dotted name, so the schema keeps its digits).
fn relation_names(tokens: &[Token]) -> Vec<bool> {
    let mut marks = vec![false; tokens.len()];
    for (i, token) in tokens.iter().enumerate() {
        if !["from", "join", "into", "update", "table"]
            .iter()
            .any(|k| is_keyword(token, k))
        {
            continue;
        }
        let mut j = i + 1;
        while tokens.get(j).is_some_and(|t| {
            ["only", "if", "not", "exists", "lateral"]
                .iter()
                .any(|k| is_keyword(t, k))
        }) {
            j += 1;
        }
        if !matches!(tokens.get(j), Some(Token::Word(_))) {
            continue;
        }
        while matches!(tokens.get(j + 1), Some(Token::Period))
            && matches!(tokens.get(j + 2), Some(Token::Word(_)))
        {
            j += 2;
        }
        marks[j] = true;
    }
    marks
}

/// A query group's display text (pg_stat_statements style): the statement token by
/// token with each literal replaced by `$n` (numbered after any `$n` the text already
/// uses), an IN list of only literals and parameters shown as `(...)`, comments
/// dropped, whitespace collapsed and the result capped at [`NORMALIZED_MAX`] bytes.
/// It never contains a literal of the input.
pub fn normalized(sql: &str) -> String {
    let Some(tokens) = tokens::spanned(sql) else {
        return UNTOKENIZABLE.to_string();
    };
    let mut next = 1 + tokens
        .iter()
        .filter_map(|s| match &s.token {
            Token::Placeholder(p) => p.strip_prefix('$')?.parse::<u64>().ok(),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    // Significant tokens, each with its text and whether whitespace preceded it.
    let mut items: Vec<(&Token, &str, bool)> = Vec::with_capacity(tokens.len());
    let mut gap = false;
    for s in &tokens {
        if matches!(s.token, Token::Whitespace(_)) {
            gap = true;
        } else {
            items.push((&s.token, &sql[s.range.clone()], gap));
            gap = false;
        }
    }
    let mut out = String::with_capacity(sql.len().min(NORMALIZED_MAX));
    let mut i = 0;
    while i < items.len() {
        let (token, text, gap) = items[i];
        if gap && !out.is_empty() {
            out.push(' ');
        }
        i += 1;
        if is_literal(token) {
            let _ = write!(out, "${next}");
            next += 1;
            continue;
        }
        out.push_str(text);
        if is_keyword(token, "in")
            && let Some(close) = constant_list_end(&items, i)
        {
            out.push_str(if items[i].2 { " (...)" } else { "(...)" });
            i = close + 1;
        }
        if out.len() > NORMALIZED_MAX {
            break;
        }
    }
    cap(out)
}

/// The index of the `)` closing a list at `items[open]` made only of literals,
/// parameters, signs and commas.
fn constant_list_end(items: &[(&Token, &str, bool)], open: usize) -> Option<usize> {
    if !matches!(items.get(open)?.0, Token::LParen) {
        return None;
    }
    for (k, (token, ..)) in items.iter().enumerate().skip(open + 1) {
        match token {
            Token::RParen if k > open + 1 => return Some(k),
            t if is_literal(t) => {}
            Token::Placeholder(_) | Token::Comma | Token::Minus | Token::Plus => {}
            _ => return None,
        }
    }
    None
}

fn cap(mut text: String) -> String {
    if text.len() <= NORMALIZED_MAX {
        return text;
    }
    let mut cut = NORMALIZED_MAX - '…'.len_utf8();
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push('…');
    text
}

/// FNV-1a, 64 bits: fixed offset basis and prime, so the same input hashes the same
/// everywhere, always.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    /// Hashes one canonical token, then a separator, so token boundaries count.
    fn part(&mut self, text: &str) {
        self.bytes(text.as_bytes());
        self.bytes(&[0x1f]);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests;
