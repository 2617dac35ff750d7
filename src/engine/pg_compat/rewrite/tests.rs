//! Each rewrite against the SQL clients send.

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
