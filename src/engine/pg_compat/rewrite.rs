//! SQL rewrites for client catalog queries DataFusion cannot plan as written.
//! They run after datafusion-pg-catalog's own rewrites (see `Engine::parse`).

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    AccessExpr, ArrayElemTypeDef, CastKind, DataType, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentClause, FunctionArgumentList, FunctionArguments, GroupByExpr, Ident,
    ObjectName, ObjectNamePart, OrderByKind, Query, Select, SelectItem, SetExpr, Statement,
    Subscript, TableFactor, TableWithJoins, Value, ValueWithSpan, Visit, VisitMut, Visitor,
    VisitorMut,
};

use super::functions::{EXPAND_ARRAY_UDF, LIKE_ESCAPE_UDF, SUBSCRIPTS_UDF};

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

/// `SELECT … FROM unnest(<…>.reloptions) …`, the shape psql uses.
fn expands_reloptions(select: &Select) -> bool {
    let [from] = select.from.as_slice() else {
        return false;
    };
    let TableFactor::Table {
        name,
        args: Some(args),
        ..
    } = &from.relation
    else {
        return false;
    };
    last_name(name).as_deref() == Some("unnest")
        && matches!(args.args.as_slice(), [FunctionArg::Unnamed(FunctionArgExpr::Expr(
            Expr::CompoundIdentifier(parts))
        )] if parts.last().is_some_and(|p| p.value.eq_ignore_ascii_case("reloptions")))
}

const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "first_value",
    "last_value",
];

fn is_aggregate_call(expr: &Expr) -> bool {
    match expr {
        Expr::Function(f) => {
            f.over.is_none() && last_name(&f.name).is_some_and(|n| AGGREGATES.contains(&n.as_str()))
        }
        Expr::Nested(e) | Expr::Cast { expr: e, .. } => is_aggregate_call(e),
        _ => false,
    }
}

/// Names a FROM clause introduces (aliases, or table names when unaliased).
fn relation_names(from: &[TableWithJoins]) -> HashSet<String> {
    let mut names = HashSet::new();
    let mut add = |factor: &TableFactor| match factor {
        TableFactor::Table { name, alias, .. } => {
            if let Some(a) = alias {
                names.insert(a.name.value.to_ascii_lowercase());
            } else if let Some(n) = last_name(name) {
                names.insert(n);
            }
        }
        TableFactor::Derived { alias: Some(a), .. }
        | TableFactor::TableFunction { alias: Some(a), .. }
        | TableFactor::Function { alias: Some(a), .. }
        | TableFactor::UNNEST { alias: Some(a), .. } => {
            names.insert(a.name.value.to_ascii_lowercase());
        }
        _ => {}
    };
    for twj in from {
        add(&twj.relation);
        for join in &twj.joins {
            add(&join.relation);
        }
    }
    names
}

/// True if `select` references a qualified column of a relation it does not
/// define itself, i.e. is correlated with an outer query.
fn is_correlated(select: &Select) -> bool {
    struct Outer<'a>(&'a HashSet<String>);
    impl Visitor for Outer<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if let Expr::CompoundIdentifier(parts) = expr
                && parts.len() >= 2
                && !self
                    .0
                    .contains(&parts[parts.len() - 2].value.to_ascii_lowercase())
            {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let local = relation_names(&select.from);
    let mut outer = Outer(&local);
    Visit::visit(&select.selection, &mut outer).is_break()
        || Visit::visit(&select.projection, &mut outer).is_break()
}

/// Catalog tables that are always empty in Sluice: a lake has no sequences.
const ALWAYS_EMPTY: &[&str] = &["pg_sequence"];

/// A scalar subquery that reads only an always-empty catalog table is NULL.
/// SQLAlchemy's identity-column lookup selects outer columns inside such a
/// subquery, which DataFusion cannot decorrelate; its answer is NULL anyway.
fn subquery_over_empty_catalog(expr: &mut Expr) {
    let Expr::Subquery(query) = expr else { return };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return;
    };
    let [from] = select.from.as_slice() else {
        return;
    };
    if !from.joins.is_empty() {
        return;
    }
    if let TableFactor::Table { name, .. } = &from.relation
        && last_name(name).is_some_and(|n| ALWAYS_EMPTY.contains(&n.as_str()))
    {
        *expr = Expr::Value(Value::Null.with_empty_span());
    }
}

/// `(SELECT x FROM t WHERE outer.flag AND t.k = outer.k)` →
/// `CASE WHEN outer.flag THEN (SELECT x FROM t WHERE t.k = outer.k) END`: a conjunct
/// that names only outer columns cannot be decorrelated into a join by DataFusion
/// ("Physical plan does not support logical expression ScalarSubquery"), and a
/// false one means no row, which is NULL either way (SQLAlchemy's column defaults).
fn hoist_outer_only_predicates(expr: &mut Expr) {
    let Expr::Subquery(query) = expr else { return };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    let Some(selection) = select.selection.take() else {
        return;
    };
    let local = relation_names(&select.from);
    let mut conjuncts = Vec::new();
    split_and(selection, &mut conjuncts);
    let (outer, inner): (Vec<Expr>, Vec<Expr>) = conjuncts
        .into_iter()
        .partition(|c| names_only_outer(c, &local));
    select.selection = join_and(inner);
    let Some(condition) = join_and(outer) else {
        return;
    };
    let subquery = std::mem::replace(expr, Expr::Value(Value::Null.with_empty_span()));
    *expr = Expr::Case {
        case_token: datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken::empty(
        ),
        end_token: datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken::empty(),
        operand: None,
        conditions: vec![datafusion::sql::sqlparser::ast::CaseWhen {
            condition,
            result: subquery,
        }],
        else_result: None,
    };
}

fn split_and(expr: Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: datafusion::sql::sqlparser::ast::BinaryOperator::And,
            right,
        } => {
            split_and(*left, out);
            split_and(*right, out);
        }
        Expr::Nested(inner)
            if matches!(
                inner.as_ref(),
                Expr::BinaryOp {
                    op: datafusion::sql::sqlparser::ast::BinaryOperator::And,
                    ..
                }
            ) =>
        {
            split_and(*inner, out)
        }
        other => out.push(other),
    }
}

fn join_and(conjuncts: Vec<Expr>) -> Option<Expr> {
    conjuncts.into_iter().reduce(|a, b| Expr::BinaryOp {
        left: Box::new(a),
        op: datafusion::sql::sqlparser::ast::BinaryOperator::And,
        right: Box::new(b),
    })
}

/// Whether `expr` names columns, all of them qualified by a relation that is not
/// in `local` (so they belong to an enclosing query), and holds no subquery.
fn names_only_outer(expr: &Expr, local: &HashSet<String>) -> bool {
    struct Check<'a> {
        local: &'a HashSet<String>,
        outer: usize,
    }
    impl Visitor for Check<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::Identifier(_)
                | Expr::Subquery(_)
                | Expr::Exists { .. }
                | Expr::InSubquery { .. } => ControlFlow::Break(()),
                Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                    if self
                        .local
                        .contains(&parts[parts.len() - 2].value.to_ascii_lowercase())
                    {
                        ControlFlow::Break(())
                    } else {
                        self.outer += 1;
                        ControlFlow::Continue(())
                    }
                }
                _ => ControlFlow::Continue(()),
            }
        }
    }
    let mut check = Check { local, outer: 0 };
    !Visit::visit(expr, &mut check).is_break() && check.outer > 0
}

/// DataFusion only plans correlated scalar subqueries whose output is an
/// aggregate ("Correlated scalar subquery must be aggregated"). PostgreSQL
/// requires such a subquery to return at most one row anyway, so wrapping its
/// single output in `max(...)` keeps the result (`SELECT c.relkind = 'c' FROM
/// pg_class c WHERE c.oid = t.typrelid`, Npgsql's `pg_range` lookup).
fn aggregate_correlated_subquery(query: &mut Query) {
    if query.order_by.is_some() || query.with.is_some() {
        return;
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    let no_grouping = matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    if !no_grouping || select.having.is_some() || select.distinct.is_some() {
        return;
    }
    let [item] = select.projection.as_mut_slice() else {
        return;
    };
    let (SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }) = item else {
        return;
    };
    if is_aggregate_call(e) || !is_correlated(select) {
        return;
    }
    let Some(item) = select.projection.pop() else {
        return;
    };
    let (inner, alias) = match item {
        SelectItem::UnnamedExpr(e) => (e, None),
        SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias)),
        other => {
            select.projection.push(other);
            return;
        }
    };
    let name = alias.unwrap_or_else(|| Ident::with_quote('"', output_name(&inner)));
    select.projection.push(SelectItem::ExprWithAlias {
        expr: function("max", vec![inner], vec![]),
        alias: name,
    });
    // datafusion-pg-catalog adds `LIMIT 1` to projection subqueries; one
    // aggregate row needs no limit, and DataFusion rejects the limit here.
    query.limit_clause = None;
}

/// PostgreSQL's name for an unaliased output column: the column or function
/// name, the type of a bare cast, else `?column?`.
fn output_name(expr: &Expr) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn rw(sql: &str) -> String {
        let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("test SQL parses");
        rewrite(stmts.remove(0)).to_string()
    }

    #[test]
    fn regproc_lookup_ignores_schema() {
        assert_eq!(
            rw("SELECT x AS a FROM pg_proc WHERE proname = 'pg_catalog.array_in'"),
            "SELECT x AS a FROM pg_proc WHERE proname = 'array_in'"
        );
    }

    #[test]
    fn correlated_scalar_subquery_is_aggregated() {
        assert_eq!(
            rw(
                "SELECT t.oid FROM pg_type t WHERE (SELECT c.relkind = 'c' FROM pg_class c WHERE c.oid = t.typrelid LIMIT 1)"
            ),
            "SELECT t.oid FROM pg_type t WHERE (SELECT max(c.relkind = 'c') AS \"?column?\" FROM pg_class c WHERE c.oid = t.typrelid)"
        );
        // Uncorrelated and already aggregated subqueries are left alone.
        let s = "SELECT a.x FROM a WHERE a.y = (SELECT b.y FROM b WHERE b.z = 1)";
        assert_eq!(rw(s), s);
        let s = "SELECT a.x FROM a WHERE a.y = (SELECT count(*) FROM b WHERE b.z = a.z)";
        assert_eq!(rw(s), s);
    }

    #[test]
    fn expandarray_becomes_unnest() {
        assert_eq!(
            rw("SELECT (information_schema._pg_expandarray(i.indkey)).n AS k FROM pg_index i"),
            "SELECT (unnest(pg_compat_expandarray(i.indkey)))['n'] AS k FROM pg_index i"
        );
    }

    #[test]
    fn qualified_array_column_subscript_is_untouched() {
        let s = "SELECT con.confkey[pos.n] AS k FROM pg_constraint AS con";
        assert_eq!(rw(s), s);
        assert_eq!(
            rw("SELECT (r.keys).x AS x FROM r"),
            "SELECT (r.keys)['x'] AS x FROM r"
        );
    }

    #[test]
    fn array_subquery_becomes_array_agg() {
        assert_eq!(
            rw(
                "SELECT c.relname AS r, ARRAY(SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid ORDER BY a.attnum) AS cols FROM pg_class c"
            ),
            "SELECT c.relname AS r, (SELECT array_agg(a.attname ORDER BY a.attnum) AS array FROM pg_attribute a WHERE a.attrelid = c.oid) AS cols FROM pg_class c"
        );
    }

    #[test]
    fn output_columns_are_named_like_postgres() {
        assert_eq!(
            rw("SELECT count(*), x, t.y, 1, NULL::text, pg_catalog.version(), 2 FROM t"),
            "SELECT count(*) AS \"count\", x, t.y, CAST(1 AS INT) AS \"?column?\", NULL::TEXT AS \"text\", pg_catalog.version() AS \"version\", CAST(2 AS INT) AS \"?column?_2\" FROM t"
        );
        // Names never collide with an existing column or alias.
        assert_eq!(
            rw("SELECT count, count(*) FROM t"),
            "SELECT count, count(*) AS \"count_2\" FROM t"
        );
        // Statements other than queries are untouched.
        let s = "SET search_path = nyc";
        assert_eq!(rw(s), s);
    }

    #[test]
    fn order_by_follows_generated_aliases() {
        assert_eq!(
            rw("SELECT DISTINCT upper(z) FROM t ORDER BY upper(z) DESC"),
            "SELECT DISTINCT upper(z) AS \"upper\" FROM t ORDER BY \"upper\" DESC"
        );
    }

    #[test]
    fn inner_duplicate_expressions_get_aliases() {
        assert_eq!(
            rw("SELECT s.a FROM (SELECT NULL, NULL, b FROM t) AS s"),
            "SELECT s.a FROM (SELECT NULL, NULL AS \"?column?_dup\", b FROM t) AS s"
        );
    }
}
