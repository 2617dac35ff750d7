//! Statement classification: what each statement is to Sluice.

use super::*;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

fn route(sql: &str) -> Result<Step, PgError> {
    let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
    classify(stmts.remove(0))
}

fn command(sql: &str) -> Command {
    match route(sql).unwrap() {
        Step::Session(c) => c,
        other => panic!("{sql}: {other:?}"),
    }
}

#[test]
fn read_only_statements_are_told_from_writes() {
    let ro = |sql: &str| {
        let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        is_read_only(&stmts.remove(0))
    };
    for sql in [
        "SELECT * FROM t",
        "WITH a AS (SELECT 1) SELECT * FROM a",
        "EXPLAIN SELECT 1",
        "SET search_path = x",
        "BEGIN",
        "COMMIT",
        "COPY t TO STDOUT",
        "COPY (SELECT 1) TO STDOUT",
        "SHOW search_path",
        "PREPARE p AS SELECT 1",
    ] {
        assert!(ro(sql), "{sql} should be read-only");
    }
    for sql in [
        "INSERT INTO t VALUES (1)",
        "UPDATE t SET a = 1",
        "DELETE FROM t",
        "CREATE TABLE t (a int)",
        "CREATE TEMP TABLE t (a int)",
        "DROP TABLE t",
        "COPY t FROM STDIN",
        "COPY t TO '/tmp/x'",
        "SELECT * INTO t2 FROM t",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "EXPLAIN ANALYZE DELETE FROM t",
        "EXPLAIN (ANALYZE) DELETE FROM t",
        "EXPLAIN (ANALYZE true, VERBOSE) UPDATE t SET a = 1",
        "PREPARE p AS DELETE FROM t",
        "GRANT SELECT ON t TO u",
        "SET ROLE admin",
        "TRUNCATE t",
        "VACUUM",
    ] {
        let parsed = Parser::parse_sql(&PostgreSqlDialect {}, sql);
        if let Ok(mut stmts) = parsed {
            assert!(!is_read_only(&stmts.remove(0)), "{sql} should be a write");
        }
    }
}

#[test]
fn lake_references_need_a_lake_schema() {
    let lake = |sql: &str| {
        let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        references_lake(&stmts.remove(0), |s| s.eq_ignore_ascii_case("nyc"))
    };
    assert!(lake("SELECT * FROM nyc.trips"));
    assert!(lake("SELECT * FROM sluice.nyc.trips"));
    assert!(lake("SELECT * FROM public.t JOIN NYC.zones z ON true"));
    assert!(lake("SELECT (SELECT count(*) FROM nyc.trips)"));
    assert!(!lake("SELECT * FROM trips"));
    assert!(!lake("SELECT * FROM public.trips"));
    assert!(!lake("SELECT * FROM pg_catalog.pg_class"));
    assert!(!lake("SELECT 1"));
}

#[test]
fn session_commands_are_recognised() {
    assert_eq!(
        command("SET application_name = 'x y'"),
        Command::Set {
            name: "application_name".into(),
            value: Some("x y".into())
        }
    );
    assert_eq!(
        command("SET search_path TO nyc, public"),
        Command::Set {
            name: "search_path".into(),
            value: Some("nyc, public".into())
        }
    );
    assert_eq!(
        command("SET extra_float_digits = 3"),
        Command::Set {
            name: "extra_float_digits".into(),
            value: Some("3".into())
        }
    );
    assert_eq!(
        command("SET TIME ZONE 'UTC'"),
        Command::Set {
            name: "timezone".into(),
            value: Some("UTC".into())
        }
    );
    assert_eq!(
        command("SET DateStyle TO DEFAULT"),
        Command::Set {
            name: "datestyle".into(),
            value: None
        }
    );
    assert_eq!(
        command("SHOW TRANSACTION ISOLATION LEVEL"),
        Command::Show("transaction_isolation".into())
    );
    assert_eq!(command("RESET ALL"), Command::Reset(None));
    assert_eq!(
        command("SHOW sluice.identity"),
        Command::Show("sluice.identity".into())
    );
    assert_eq!(command("DISCARD ALL"), Command::Discard);
    assert_eq!(command("BEGIN"), Command::Begin);
    assert_eq!(command("START TRANSACTION READ ONLY"), Command::Begin);
    assert_eq!(command("COMMIT"), Command::Commit);
    assert_eq!(command("END"), Command::Commit);
    assert_eq!(command("ROLLBACK"), Command::Rollback);
    assert_eq!(command("DEALLOCATE ALL"), Command::Deallocate(None));
    assert_eq!(
        command("DEALLOCATE s1"),
        Command::Deallocate(Some("s1".into()))
    );
}

#[test]
fn queries_go_to_the_lake_and_writes_are_refused() {
    assert!(matches!(route("SELECT 1").unwrap(), Step::Lake(_)));
    let e = route("INSERT INTO t VALUES (1)").unwrap_err();
    assert_eq!(e.code, SqlState::READ_ONLY_SQL_TRANSACTION);
    let e = route("CREATE TABLE t (a int)").unwrap_err();
    assert!(e.message.contains("CREATE TABLE"), "{}", e.message);
}

#[test]
fn run_job_takes_one_job_name() {
    assert_eq!(
        command("CALL sluice.run_job('nightly-unload')"),
        Command::RunJob("nightly-unload".into())
    );
    assert_eq!(
        command("call SLUICE.RUN_JOB('x')").tag(),
        "CALL",
        "case-insensitive, answered with CALL"
    );
    for bad in [
        "CALL sluice.run_job()",
        "CALL sluice.run_job(1)",
        "CALL sluice.run_job('a', 'b')",
    ] {
        let e = route(bad).unwrap_err();
        assert_eq!(e.code, SqlState::SYNTAX_ERROR, "{bad}");
        assert!(e.message.contains("run_job"), "{bad}: {}", e.message);
    }
}

#[test]
fn terminating_a_session_is_a_command_in_its_exact_form() {
    let cmd = |sql: &str| terminate_command(sql).map(|r| r.map_err(|e| e.code));
    assert_eq!(
        cmd("SELECT sluice.terminate(4194400)"),
        Some(Ok(Command::Terminate {
            pid: 4194400,
            function: "terminate"
        }))
    );
    assert_eq!(
        cmd("select PG_TERMINATE_BACKEND(12) AS killed;"),
        Some(Ok(Command::Terminate {
            pid: 12,
            function: "pg_terminate_backend"
        }))
    );
    // sluice.terminate without a literal pid: refused with a hint.
    assert_eq!(
        cmd("SELECT sluice.terminate(pid)"),
        Some(Err(SqlState::FEATURE_NOT_SUPPORTED))
    );
    // Other shapes are ordinary statements.
    for sql in [
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
        "SELECT pg_terminate_backend(pid)",
        "SELECT 1, sluice.terminate(3)",
        "SELECT terminate(3)",
        "SELECT 1",
    ] {
        assert_eq!(cmd(sql), None, "{sql}");
    }
}
