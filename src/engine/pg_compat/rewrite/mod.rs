//! SQL rewrites for client catalog queries DataFusion cannot plan as written.
//! They run after datafusion-pg-catalog's own rewrites (see `Engine::parse`).

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    AccessExpr, ArrayElemTypeDef, CastKind, DataType, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentClause, FunctionArgumentList, FunctionArguments, Ident, ObjectName,
    ObjectNamePart, OrderByKind, Query, SelectItem, SetExpr, Statement, Subscript, TableFactor,
    Value, ValueWithSpan, VisitMut, VisitorMut,
};

use super::functions::{EXPAND_ARRAY_UDF, LIKE_ESCAPE_UDF, SUBSCRIPTS_UDF};

mod subqueries;
#[cfg(test)]
mod tests;

use subqueries::*;

/// All rewrites, in order.
pub fn rewrite(mut stmt: Statement) -> Statement {
    let _ = VisitMut::visit(&mut stmt, &mut ExprRewriter);
    let _ = VisitMut::visit(&mut stmt, &mut TableFunctionRewriter);
    if let Statement::Query(query) = &mut stmt {
        name_output_columns(query);
        super::literals::type_output_literals(query);
        let _ = VisitMut::visit(query, &mut DedupProjection);
    }
    stmt
}

/// `FROM current_database()` (and the other session-information functions) as a
/// one-row table whose column has the function's name, as PostgreSQL allows any
/// function in FROM; Amazon's Redshift Python driver lists catalogs with
/// `select current_database as TABLE_CAT FROM current_database()`.
struct TableFunctionRewriter;

const ONE_ROW_FUNCTIONS: &[&str] = &[
    "current_database",
    "current_schema",
    "current_user",
    "session_user",
    "version",
];

impl VisitorMut for TableFunctionRewriter {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name,
            args: Some(args),
            alias,
            ..
        } = factor
            && args.args.is_empty()
            && let Some(f) = last_name(name).filter(|n| ONE_ROW_FUNCTIONS.contains(&n.as_str()))
        {
            let sql = format!("SELECT {f}() AS {f}");
            let parsed = datafusion::sql::sqlparser::parser::Parser::parse_sql(
                &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
                &sql,
            );
            if let Ok(mut statements) = parsed
                && let Some(Statement::Query(query)) = statements.pop()
            {
                let alias = alias
                    .clone()
                    .unwrap_or(datafusion::sql::sqlparser::ast::TableAlias {
                        explicit: true,
                        name: Ident::new(f.as_str()),
                        columns: vec![],
                        at: None,
                    });
                *factor = TableFactor::Derived {
                    lateral: false,
                    subquery: query,
                    alias: Some(alias),
                    sample: None,
                };
            }
        }
        ControlFlow::Continue(())
    }
}

/// Expression-level rewrites, applied everywhere in the statement.
struct ExprRewriter;

impl VisitorMut for ExprRewriter {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        unqualify_proname_literal(expr);
        like_escape_to_backslash(expr);
        array_subquery_to_array_agg(expr);
        subquery_over_empty_catalog(expr);
        hoist_outer_only_predicates(expr);
        if let Expr::Subquery(query) = expr {
            aggregate_correlated_subquery(query);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        expand_array(expr);
        generate_subscripts(expr);
        regtype_to_text(expr);
        field_access_to_subscript(expr);
        ControlFlow::Continue(())
    }
}

fn last_name(name: &ObjectName) -> Option<String> {
    name.0
        .last()
        .and_then(ObjectNamePart::as_ident)
        .map(|i| i.value.to_ascii_lowercase())
}

fn function(name: &str, args: Vec<Expr>, clauses: Vec<FunctionArgumentClause>) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            clauses,
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// datafusion-pg-catalog turns `'x'::regproc` into
/// `(SELECT oid FROM pg_proc WHERE proname = 'x')`, but clients write qualified
/// names (`'pg_catalog.array_in'::regproc`, pgjdbc's array check). No function
/// name contains a dot, so compare only the last part.
fn unqualify_proname_literal(expr: &mut Expr) {
    if let Expr::BinaryOp { left, right, .. } = expr
        && matches!(left.as_ref(), Expr::Identifier(i) if i.value.eq_ignore_ascii_case("proname"))
        && let Expr::Value(ValueWithSpan {
            value: Value::SingleQuotedString(s),
            ..
        }) = right.as_mut()
        && let Some((_, name)) = s.rsplit_once('.')
    {
        *s = name.trim_matches('"').to_string();
    }
}

/// `x LIKE p ESCAPE '/'` → `x LIKE pg_compat_like_escape(p, '/')`: DataFusion only
/// knows the backslash as LIKE's escape character, so the pattern is re-escaped
/// with backslashes (SQLAlchemy's schema listing uses `ESCAPE '/'`).
fn like_escape_to_backslash(expr: &mut Expr) {
    let (Expr::Like {
        pattern,
        escape_char,
        ..
    }
    | Expr::ILike {
        pattern,
        escape_char,
        ..
    }) = expr
    else {
        return;
    };
    let Some(ValueWithSpan {
        value: Value::SingleQuotedString(c),
        ..
    }) = escape_char
    else {
        return;
    };
    if c == "\\" {
        return;
    }
    let escape = Expr::Value(Value::SingleQuotedString(c.clone()).with_empty_span());
    **pattern = function(LIKE_ESCAPE_UDF, vec![(**pattern).clone(), escape], vec![]);
    *escape_char = None;
}

/// `information_schema._pg_expandarray(a)` (a set-returning function of `(x, n)`
/// rows) → `unnest(pg_compat_expandarray(a))`; field access on the result,
/// `(…).n`, then works on the unnested struct.
fn expand_array(expr: &mut Expr) {
    if let Expr::Function(f) = expr
        && last_name(&f.name).as_deref() == Some("_pg_expandarray")
        && let FunctionArguments::List(list) = &f.args
        && let [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))] = list.args.as_slice()
    {
        let inner = function(EXPAND_ARRAY_UDF, vec![arg.clone()], vec![]);
        *expr = function("unnest", vec![inner], vec![]);
    }
}

/// `x::regtype::text` → `format_type(x, NULL)`: PostgreSQL prints a regtype as the
/// type's name (`boolean`, `integer[]`, `-` for 0); DataFusion plans `regtype` as a
/// plain integer. psycopg's and asyncpg's type lookups read these names.
fn regtype_to_text(expr: &mut Expr) {
    let Expr::Cast {
        expr: inner,
        data_type: DataType::Text | DataType::Varchar(_) | DataType::String(_),
        ..
    } = expr
    else {
        return;
    };
    let mut inner = inner.as_ref();
    while let Expr::Nested(e) = inner {
        inner = e;
    }
    if let Expr::Cast {
        expr: value,
        data_type: DataType::Custom(name, _),
        ..
    } = inner
        && last_name(name).as_deref() == Some("regtype")
    {
        *expr = function(
            "format_type",
            vec![
                (**value).clone(),
                Expr::Value(Value::Null.with_empty_span()),
            ],
            vec![],
        );
    }
}

/// `generate_subscripts(a, d)` (set-returning) → `unnest(pg_compat_subscripts(a, d))`
/// (SQLAlchemy's constraint and index reflection pairs it with `unnest(indkey)`).
fn generate_subscripts(expr: &mut Expr) {
    if let Expr::Function(f) = expr
        && last_name(&f.name).as_deref() == Some("generate_subscripts")
        && let FunctionArguments::List(list) = &f.args
        && let [
            FunctionArg::Unnamed(FunctionArgExpr::Expr(array)),
            FunctionArg::Unnamed(FunctionArgExpr::Expr(dim)),
        ] = list.args.as_slice()
    {
        let inner = function(SUBSCRIPTS_UDF, vec![array.clone(), dim.clone()], vec![]);
        *expr = function("unnest", vec![inner], vec![]);
    }
}

/// `(expr).field` → `(expr)['field']`: DataFusion only plans dot access on a
/// composite value when the field is a string (pgjdbc: `(result.KEYS).x`).
/// Only a parenthesized root is composite access: `t.col[1]` arrives as the
/// same node with root `t`, where the dot names a column.
fn field_access_to_subscript(expr: &mut Expr) {
    if let Expr::CompoundFieldAccess { root, access_chain } = expr
        && matches!(root.as_ref(), Expr::Nested(_))
    {
        for access in access_chain.iter_mut() {
            if let AccessExpr::Dot(Expr::Identifier(field)) = access {
                let name = if field.quote_style.is_some() {
                    field.value.clone()
                } else {
                    field.value.to_ascii_lowercase()
                };
                *access = AccessExpr::Subscript(Subscript::Index {
                    index: Expr::Value(Value::SingleQuotedString(name).with_empty_span()),
                });
            }
        }
    }
}

/// `ARRAY(SELECT e FROM … ORDER BY o)` → `(SELECT array_agg(e ORDER BY o) FROM …)`,
/// which DataFusion plans as an (optionally correlated) scalar subquery. Unlike
/// PostgreSQL, no rows gives NULL rather than an empty array.
fn array_subquery_to_array_agg(expr: &mut Expr) {
    let Expr::Function(f) = expr else { return };
    if last_name(&f.name).as_deref() != Some("array") {
        return;
    }
    let FunctionArguments::Subquery(query) = &f.args else {
        return;
    };
    let mut query = query.clone();
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    if expands_reloptions(select) {
        // psql's `\d+` lists TOAST options with `ARRAY(SELECT 'toast.' || x FROM
        // unnest(tc.reloptions) x)`. DataFusion cannot unnest an outer column in
        // FROM, and `reloptions` is always NULL in Sluice, so the array is empty.
        *expr = Expr::Cast {
            kind: CastKind::DoubleColon,
            expr: Box::new(Expr::Value(Value::Null.with_empty_span())),
            data_type: DataType::Array(ArrayElemTypeDef::SquareBracket(
                Box::new(DataType::Text),
                None,
            )),
            array: false,
            format: None,
        };
        return;
    }
    let [item] = select.projection.as_slice() else {
        return;
    };
    let element = match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e.clone(),
        _ => return,
    };
    let mut clauses = vec![];
    if let Some(order_by) = query.order_by.take() {
        match order_by.kind {
            OrderByKind::Expressions(exprs) => clauses.push(FunctionArgumentClause::OrderBy(exprs)),
            OrderByKind::All(_) => return,
        }
    }
    select.projection = vec![SelectItem::ExprWithAlias {
        expr: function("array_agg", vec![element], clauses),
        alias: Ident::new("array"),
    }];
    *expr = Expr::Subquery(query);
}

/// PostgreSQL's name for an unaliased output column: the column or function
/// name, the type of a bare cast, else `?column?`.
pub(super) fn output_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(i) => i.value.clone(),
        Expr::CompoundIdentifier(parts) => {
            parts.last().map_or("?column?".into(), |i| i.value.clone())
        }
        Expr::Function(f) => last_name(&f.name).unwrap_or_else(|| "?column?".into()),
        Expr::Nested(e) => output_name(e),
        Expr::Cast {
            expr,
            data_type,
            kind,
            ..
        } => {
            let inner = output_name(expr);
            if inner != "?column?" || matches!(kind, CastKind::TryCast | CastKind::SafeCast) {
                inner
            } else {
                pg_type_name(data_type)
            }
        }
        Expr::Case { .. } => "case".into(),
        Expr::Exists { .. } => "exists".into(),
        Expr::Array(_) => "array".into(),
        Expr::Subquery(q) => match q.body.as_ref() {
            SetExpr::Select(s) => match s.projection.as_slice() {
                [SelectItem::ExprWithAlias { alias, .. }] => alias.value.clone(),
                [SelectItem::UnnamedExpr(e)] => output_name(e),
                _ => "?column?".into(),
            },
            _ => "?column?".into(),
        },
        _ => "?column?".into(),
    }
}

/// PostgreSQL's internal type name, which it uses to name `x::type` columns.
fn pg_type_name(data_type: &DataType) -> String {
    let sql = data_type.to_string().to_ascii_lowercase();
    let base = sql.split('(').next().unwrap_or(&sql).trim();
    let base = base.strip_prefix("pg_catalog.").unwrap_or(base);
    match base {
        "int" | "integer" | "int4" => "int4",
        "bigint" | "int8" => "int8",
        "smallint" | "int2" => "int2",
        "real" | "float4" => "float4",
        "double precision" | "float8" | "double" => "float8",
        "boolean" | "bool" => "bool",
        "character varying" | "varchar" => "varchar",
        "character" | "char" => "bpchar",
        "decimal" | "numeric" => "numeric",
        "timestamp with time zone" | "timestamptz" => "timestamptz",
        "timestamp" | "timestamp without time zone" => "timestamp",
        other => other,
    }
    .to_string()
}

fn is_plain_column(expr: &Expr) -> bool {
    matches!(expr, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
}

/// Names unaliased output columns of the outermost SELECT like PostgreSQL
/// (`count`, `version`, `?column?`) instead of DataFusion's expression text
/// (`count(*)`, `Int64(1)`). Names are made unique because DataFusion
/// rejects duplicate output names (PostgreSQL allows them).
fn name_output_columns(query: &mut Query) {
    let mut body = query.body.as_mut();
    // A set operation takes its column names from the leftmost SELECT.
    while let SetExpr::SetOperation { left, .. } = body {
        body = left.as_mut();
    }
    let SetExpr::Select(select) = body else {
        return;
    };
    let mut named = Vec::new();
    let mut taken: HashSet<String> = select
        .projection
        .iter()
        .filter_map(|item| match item {
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
            SelectItem::UnnamedExpr(e) if is_plain_column(e) => Some(output_name(e)),
            _ => None,
        })
        .collect();
    for item in &mut select.projection {
        let SelectItem::UnnamedExpr(e) = item else {
            continue;
        };
        if is_plain_column(e) {
            continue;
        }
        let name = unique_name(output_name(e), &mut taken);
        named.push((e.to_string(), name.clone()));
        *item = SelectItem::ExprWithAlias {
            expr: e.clone(),
            alias: Ident::with_quote('"', name),
        };
    }
    // `SELECT DISTINCT upper(x) … ORDER BY upper(x)`: DataFusion only matches an
    // ORDER BY expression to the select list by name, so point it at the alias.
    if let Some(order_by) = &mut query.order_by
        && let OrderByKind::Expressions(exprs) = &mut order_by.kind
    {
        for item in exprs {
            let text = item.expr.to_string();
            if let Some((_, name)) = named.iter().find(|(e, _)| *e == text) {
                item.expr = Expr::Identifier(Ident::with_quote('"', name.clone()));
            }
        }
    }
}

fn unique_name(base: String, taken: &mut HashSet<String>) -> String {
    let mut name = base.clone();
    let mut n = 1;
    while taken.contains(&name) {
        n += 1;
        name = format!("{base}_{n}");
    }
    taken.insert(name.clone());
    name
}

/// Inner SELECTs: alias repeated identical unaliased expressions (pgjdbc's
/// `getProcedures` selects `NULL, NULL, NULL`), which DataFusion rejects as
/// duplicate names.
struct DedupProjection;

impl VisitorMut for DedupProjection {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let SetExpr::Select(select) = query.body.as_mut() {
            let mut seen = HashSet::new();
            let mut taken = HashSet::new();
            for item in &mut select.projection {
                let SelectItem::UnnamedExpr(e) = item else {
                    continue;
                };
                if is_plain_column(e) || seen.insert(e.to_string()) {
                    continue;
                }
                let name = unique_name(format!("{}_dup", output_name(e)), &mut taken);
                *item = SelectItem::ExprWithAlias {
                    expr: e.clone(),
                    alias: Ident::with_quote('"', name),
                };
            }
        }
        ControlFlow::Continue(())
    }
}
