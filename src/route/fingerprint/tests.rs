use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::*;

fn fp(sql: &str) -> u64 {
    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("test SQL parses");
    assert_eq!(stmts.len(), 1, "one statement: {sql}");
    of_statement(&stmts[0])
}

fn same(a: &str, b: &str) {
    assert_eq!(fp(a), fp(b), "should share a fingerprint:\n  {a}\n  {b}");
}

fn differ(a: &str, b: &str) {
    assert_ne!(fp(a), fp(b), "should differ:\n  {a}\n  {b}");
}

#[test]
fn constants_are_ignored() {
    same(
        "SELECT a FROM t WHERE b = 1 AND c = 'x' AND d = 2.5",
        "SELECT a FROM t WHERE b = 42 AND c = 'other' AND d = 7",
    );
    same(
        "SELECT a FROM t WHERE d > DATE '2020-01-01' AND e = TRUE",
        "SELECT a FROM t WHERE d > DATE '1999-12-31' AND e = FALSE",
    );
    same(
        "SELECT a FROM t WHERE b = -1",
        "SELECT a FROM t WHERE b = 5",
    );
    same(
        "SELECT a FROM t LIMIT 10 OFFSET 20",
        "SELECT a FROM t LIMIT 1 OFFSET 0",
    );
    same(
        "SELECT a FROM t WHERE b = $1",
        "SELECT a FROM t WHERE b = 3",
    );
    same(
        "SELECT a FROM t WHERE b = $1 AND c = $2",
        "SELECT a FROM t WHERE b = $2 AND c = $1",
    );
}

#[test]
fn lists_collapse() {
    same(
        "SELECT a FROM t WHERE b IN (1, 2, 3)",
        "SELECT a FROM t WHERE b IN (7)",
    );
    same(
        "SELECT a FROM t WHERE b NOT IN ('x', 'y')",
        "SELECT a FROM t WHERE b NOT IN ('z')",
    );
    differ(
        "SELECT a FROM t WHERE b IN (1, 2)",
        "SELECT a FROM t WHERE b NOT IN (1, 2)",
    );
    differ(
        "SELECT a FROM t WHERE b IN (1, c)",
        "SELECT a FROM t WHERE b IN (1)",
    );
    same(
        "SELECT a FROM t WHERE b = ANY(ARRAY[1, 2, 3])",
        "SELECT a FROM t WHERE b = ANY(ARRAY[4])",
    );
    same(
        "INSERT INTO t (a, b) VALUES (1, 2), (3, 4), (5, 6)",
        "INSERT INTO t (a, b) VALUES (7, 8)",
    );
    differ(
        "INSERT INTO t (a, b) VALUES (1, 2)",
        "INSERT INTO t (a, c) VALUES (1, 2)",
    );
}

#[test]
fn aliases_are_ignored() {
    same("SELECT a AS x FROM t AS u", "SELECT a AS y FROM t v");
    same("SELECT a AS x FROM t AS u", "SELECT a FROM t");
    same(
        "SELECT s.n FROM (SELECT 1 AS n) AS s",
        "SELECT s.n FROM (SELECT 2 AS m) s",
    );
}

#[test]
fn structure_matters() {
    differ("SELECT a FROM t", "SELECT b FROM t");
    differ("SELECT a FROM t", "SELECT a FROM u");
    differ("SELECT a FROM t WHERE b = 1", "SELECT a FROM t WHERE b > 1");
    differ("SELECT a FROM s1.t", "SELECT a FROM s2.t");
    differ("SELECT a FROM t", "SELECT a FROM \"T\"");
}

#[test]
fn partition_digits_are_ignored() {
    same(
        "SELECT * FROM events_2024_01 WHERE id = 1",
        "SELECT * FROM events_2023_12 WHERE id = 2",
    );
    same(
        "SELECT * FROM s.events_2024_01",
        "SELECT * FROM s.events_1999_01",
    );
    differ("SELECT * FROM s.events_1", "SELECT * FROM s.logs_1");
}

#[test]
fn prepared_and_cursor_names_are_ignored() {
    same(
        "PREPARE p1 AS SELECT a FROM t WHERE b = $1",
        "PREPARE other AS SELECT a FROM t WHERE b = $1",
    );
    same("EXECUTE p1(1, 'a')", "EXECUTE p2(2, 'b')");
    same("DEALLOCATE p1", "DEALLOCATE q9");
    same(
        "DECLARE c1 CURSOR FOR SELECT a FROM t",
        "DECLARE c2 CURSOR FOR SELECT a FROM t",
    );
    same("FETCH NEXT FROM c1", "FETCH NEXT FROM cur");
    same("CLOSE c1", "CLOSE cur");
    differ("CLOSE c1", "CLOSE ALL");
}

#[test]
fn case_whitespace_and_comments_are_ignored() {
    same("SELECT A FROM T", "select a from t");
    same(
        "SELECT a\n  FROM t -- why\n WHERE /* note */ b = 1",
        "SELECT a FROM t WHERE b = 2",
    );
    // A quoted lower-case name is the unquoted one.
    same("SELECT \"a\" FROM t", "SELECT a FROM t");
}

#[test]
fn fingerprints_are_pinned() {
    // Stored query groups key on these: a change here regroups every stored query,
    // so it must be deliberate (a new hash rule or a sqlparser Display change).
    assert_eq!(hex(fp("SELECT a FROM t WHERE b = 1")), "7456e9b98478fda2");
    assert_eq!(
        hex(of_text("SELECT a FROM t WHERE b = 1")),
        "b2d442f08958da93"
    );
    assert_eq!(hex(0xab), "00000000000000ab");
}

/// Text the parser rejects, with literals in it.
const UNPARSEABLE: [&str; 2] = [
    "ALTER TABLE events_2024 APPEND FROM staging_2024_01 IGNOREEXTRA FILLTARGET 'x' 5",
    "ALTER TABLE events_2023 APPEND FROM staging_2023_12 IGNOREEXTRA FILLTARGET 'yy' 70",
];

#[test]
fn of_text_ignores_literals_in_unparseable_text() {
    for sql in UNPARSEABLE {
        assert!(
            Parser::parse_sql(&PostgreSqlDialect {}, sql).is_err(),
            "the parser rejects {sql}"
        );
    }
    assert_eq!(of_text(UNPARSEABLE[0]), of_text(UNPARSEABLE[1]));
    assert_ne!(
        of_text(UNPARSEABLE[0]),
        of_text("ALTER TABLE events APPEND FROM other IGNOREEXTRA FILLTARGET 'x' 5")
    );
}

#[test]
fn of_text_rules() {
    let eq = |a: &str, b: &str| assert_eq!(of_text(a), of_text(b), "\n  {a}\n  {b}");
    let ne = |a: &str, b: &str| assert_ne!(of_text(a), of_text(b), "\n  {a}\n  {b}");
    eq(
        "UNLOAD ('select 1') TO 's3://b/x' IAM_ROLE 'arn:aws:iam::1:role/r'",
        "unload ('select 2')  to 's3://c/y' iam_role 'arn:aws:iam::2:role/q' -- c",
    );
    eq(
        "SELECT a FROM t WHERE b IN (1, 2, 3)",
        "SELECT a FROM t WHERE b IN ($1)",
    );
    eq(
        "SELECT a FROM t WHERE b IN (-1, 2)",
        "SELECT a FROM t WHERE b IN (3)",
    );
    eq(
        "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
        "INSERT INTO t VALUES (3, 'c')",
    );
    eq(
        "SELECT * FROM s.ev_2024_01 JOIN x1 ON true",
        "SELECT * FROM s.ev_1999_12 JOIN x2 ON true",
    );
    eq(
        "SELECT a FROM t WHERE b = -1",
        "SELECT a FROM t WHERE b = 2",
    );
    ne("SELECT a - 1 FROM t", "SELECT a 1 FROM t");
    ne("SELECT * FROM s1.ev", "SELECT * FROM s2.ev");
    ne("SELECT a FROM t", "SELECT b FROM t");
    ne("SELECT a, b FROM t", "SELECT a FROM t");
    ne("SELECT now() FROM t", "SELECT now FROM t");
    // Even untokenizable text groups by its shape, case and spacing aside.
    eq("SELECT 'abc", "select   'abc");
}

#[test]
fn normalized_replaces_literals() {
    assert_eq!(
        normalized("SELECT a, 'secret' FROM t WHERE b = 42 AND c = E'x\\'y' -- hi\n;"),
        "SELECT a, $1 FROM t WHERE b = $2 AND c = $3 ;"
    );
    assert_eq!(
        normalized("select *\n\tfrom t where id in (1, 2, -3) and x = $2"),
        "select * from t where id in (...) and x = $2"
    );
    assert_eq!(
        normalized("SELECT a FROM t WHERE d = DATE '2020-01-01' /* c */ AND e IN (a, 1)"),
        "SELECT a FROM t WHERE d = DATE $1 AND e IN (a, $2)"
    );
    assert_eq!(
        normalized("INSERT INTO t VALUES ($$body$$, 1.5e3, X'ff')"),
        "INSERT INTO t VALUES ($1, $2, $3)"
    );
    assert_eq!(normalized("UPDATE t SET a = 'unterminated"), UNTOKENIZABLE);
}

#[test]
fn normalized_never_shows_a_literal() {
    let secrets = ["alice@example.com", "4111111111111111", "s3cr3t", "hunter2"];
    let sql = "SELECT * FROM users WHERE email = 'alice@example.com' AND card = 4111111111111111 \
               AND pw IN ('s3cr3t', E'hunter2') AND note = $tag$s3cr3t$tag$ AND n = U&'hunter2' \
               AND b = N'hunter2'";
    let text = normalized(sql);
    for s in secrets {
        assert!(!text.contains(s), "{s} leaked into {text}");
    }
}

#[test]
fn normalized_is_capped_on_a_char_boundary() {
    let sql = format!("SELECT {} FROM t", "é_column, ".repeat(300));
    let text = normalized(&sql);
    assert!(text.len() <= NORMALIZED_MAX);
    assert!(text.ends_with('…'));
    let short = normalized("SELECT 1");
    assert_eq!(short, "SELECT $1");
}

#[test]
fn shapes_blank_literals_only() {
    use super::shape;
    assert_eq!(
        shape("SELECT a1 FROM t2 WHERE x = 12.5e-3 AND y = 'it''s' AND \"Q 1\" = .5").as_deref(),
        Some("SELECT a1 FROM t2 WHERE x = 0 AND y = '' AND \"Q 1\" = 0")
    );
    for not_plain in [
        "SELECT 1 -- c",
        "SELECT /* c */ 1",
        "SELECT $1",
        "SELECT E'\\n'",
        "SELECT é",
        "SELECT 'open",
    ] {
        assert_eq!(shape(not_plain), None, "{not_plain}");
    }
}

#[test]
fn texts_of_one_shape_share_a_fingerprint_and_cached_answers_match() {
    let a = of_text("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;");
    let b = of_text("SELECT abalance FROM pgbench_accounts WHERE aid = 7;");
    assert_eq!(a, b);
    // Reuse never changes a result.
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
        "UPDATE t SET x = 'a' WHERE id IN (1, 2)",
        "select * from events_2024 where v = -1",
    ] {
        assert_eq!(of_text(sql), super::of_text_uncached(sql), "{sql}");
        assert_eq!(of_text(sql), super::of_text_uncached(sql), "{sql}");
    }
}
