//! Rewrites of subqueries clients send in catalog queries: correlated scalar
//! subqueries (aggregated, or with outer-only predicates hoisted out), subqueries
//! over catalogs that are always empty, psql's `unnest(reloptions)` shape.

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, GroupByExpr, Ident, Query, Select, SelectItem, SetExpr,
    TableFactor, TableWithJoins, Value, Visit, Visitor,
};

use super::{function, last_name, output_name};

/// `SELECT … FROM unnest(<…>.reloptions) …`, the shape psql uses.
pub(super) fn expands_reloptions(select: &Select) -> bool {
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

pub(super) fn is_aggregate_call(expr: &Expr) -> bool {
    match expr {
        Expr::Function(f) => {
            f.over.is_none() && last_name(&f.name).is_some_and(|n| AGGREGATES.contains(&n.as_str()))
        }
        Expr::Nested(e) | Expr::Cast { expr: e, .. } => is_aggregate_call(e),
        _ => false,
    }
}

/// Names a FROM clause introduces (aliases, or table names when unaliased).
pub(super) fn relation_names(from: &[TableWithJoins]) -> HashSet<String> {
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
pub(super) fn is_correlated(select: &Select) -> bool {
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
pub(super) fn subquery_over_empty_catalog(expr: &mut Expr) {
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
pub(super) fn hoist_outer_only_predicates(expr: &mut Expr) {
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

pub(super) fn split_and(expr: Expr, out: &mut Vec<Expr>) {
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

pub(super) fn join_and(conjuncts: Vec<Expr>) -> Option<Expr> {
    conjuncts.into_iter().reduce(|a, b| Expr::BinaryOp {
        left: Box::new(a),
        op: datafusion::sql::sqlparser::ast::BinaryOperator::And,
        right: Box::new(b),
    })
}

/// Whether `expr` names columns, all of them qualified by a relation that is not
/// in `local` (so they belong to an enclosing query), and holds no subquery.
pub(super) fn names_only_outer(expr: &Expr, local: &HashSet<String>) -> bool {
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
pub(super) fn aggregate_correlated_subquery(query: &mut Query) {
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
