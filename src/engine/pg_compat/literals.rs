//! Literal types as PostgreSQL gives them where clients see them directly: a bare
//! integer in the select list that fits in 32 bits is `integer` (DataFusion types
//! every integer literal as `bigint`), so `SELECT 1` is int4 and drivers that map
//! int8 to strings (node-postgres) still see a number. Only the output column is
//! typed: inside expressions DataFusion's 32-bit arithmetic wraps on overflow where
//! PostgreSQL raises an error, so literals there stay 64-bit.

use datafusion::sql::sqlparser::ast::{
    CastKind, DataType, Expr, Query, SelectItem, SetExpr, UnaryOperator, Value,
};

/// Types the output columns of `query` that are bare 32-bit integer literals.
pub fn type_output_literals(query: &mut Query) {
    type_set_expr(query.body.as_mut());
}

fn type_set_expr(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) => {
            for item in &mut select.projection {
                let expr = match item {
                    SelectItem::UnnamedExpr(e) => e,
                    SelectItem::ExprWithAlias { expr, .. } => expr,
                    _ => continue,
                };
                if fits_in_int4(expr) {
                    let literal = std::mem::replace(expr, Expr::value(Value::Null));
                    *expr = Expr::Cast {
                        kind: CastKind::Cast,
                        expr: Box::new(literal),
                        data_type: DataType::Int(None),
                        array: false,
                        format: None,
                    };
                }
            }
        }
        // Every branch of a UNION: PostgreSQL resolves int4 ∪ int8 to int8 as
        // DataFusion does.
        SetExpr::SetOperation { left, right, .. } => {
            type_set_expr(left);
            type_set_expr(right);
        }
        SetExpr::Query(q) => type_output_literals(q),
        _ => {}
    }
}

fn fits_in_int4(expr: &Expr) -> bool {
    let (negative, value) = match expr {
        Expr::Value(v) => (false, &v.value),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match expr.as_ref() {
            Expr::Value(v) => (true, &v.value),
            _ => return false,
        },
        _ => return false,
    };
    let Value::Number(text, false) = value else {
        return false;
    };
    let Ok(n) = text.parse::<i64>() else {
        return false;
    };
    let n = if negative { -n } else { n };
    i32::try_from(n).is_ok()
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::ast::Statement;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    fn typed(sql: &str) -> String {
        let mut stmt = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .expect("parses")
            .remove(0);
        if let Statement::Query(q) = &mut stmt {
            type_output_literals(q);
        }
        stmt.to_string()
    }

    #[test]
    fn bare_small_integers_in_the_select_list_are_int4() {
        assert_eq!(typed("SELECT 1"), "SELECT CAST(1 AS INT)");
        assert_eq!(typed("SELECT -5 AS n"), "SELECT CAST(-5 AS INT) AS n");
        assert_eq!(
            typed("SELECT 1 UNION ALL SELECT 2147483648"),
            "SELECT CAST(1 AS INT) UNION ALL SELECT 2147483648"
        );
        // Expressions, big numbers, decimals and other clauses keep their types.
        for sql in [
            "SELECT 1 + 1",
            "SELECT 2147483648",
            "SELECT 1.5",
            "SELECT x FROM t WHERE y = 1 LIMIT 1",
        ] {
            assert_eq!(typed(sql), sql);
        }
    }
}
