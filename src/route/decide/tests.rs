//! The decision table: which route each kind of text takes, in each situation.

use super::*;
use std::path::{Path, PathBuf};

async fn router() -> Router {
    let config = crate::config::Config::parse("", Path::new("t.toml"), PathBuf::from("/tmp"))
        .expect("an empty config is valid");
    let engine = Engine::new(&config).await.expect("an engine");
    Router::new(Arc::new(engine))
}

fn lake() -> HashSet<String> {
    ["nyc".to_owned()].into_iter().collect()
}

fn decide(r: &Router, sql: &str, forwarding: bool, write: bool, lost: bool) -> Decision {
    let schemas = lake();
    let cursor = |name: &str| name == "mine";
    let cx = Context {
        forwarding: forwarding.then_some(Forwarding {
            lake_schemas: &schemas,
            lost_in_tx: lost,
        }),
        may_write: write,
        views: None,
        local_cursor: &cursor,
        want_analysis: true,
    };
    r.decide(sql, &cx)
}

fn routes(d: &Decision) -> Vec<&'static str> {
    match &d.plan {
        Plan::Local(steps) => steps.iter().map(Step::route_name).collect(),
        Plan::Relay => vec!["upstream"],
        Plan::Empty => vec![],
        Plan::Refuse(_) => vec!["refused"],
    }
}

fn refusal(d: &Decision) -> &'static str {
    match &d.plan {
        Plan::Refuse(e) => e.code.0,
        Plan::Local(steps) => match steps.as_slice() {
            [Step::Refuse(e)] => e.code.0,
            _ => "none",
        },
        _ => "none",
    }
}

#[tokio::test]
async fn without_an_upstream_everything_runs_here() {
    let r = router().await;
    let d = decide(&r, "SELECT 1; SET x.y = 1", false, true, false);
    assert_eq!(routes(&d), ["lake", "session"]);
    assert!(matches!(
        decide(&r, "", false, true, false).plan,
        Plan::Empty
    ));
    assert_eq!(refusal(&decide(&r, "SELEC 1", false, true, false)), "42601");
    let d = decide(&r, "INSERT INTO t VALUES (1)", false, true, false);
    assert_eq!(refusal(&d), "25006");
    let d = decide(&r, "FETCH 5 FROM c", false, true, false);
    assert_eq!(routes(&d), ["session"]);
}

#[tokio::test]
async fn a_forwarding_session_splits_lake_from_upstream() {
    let r = router().await;
    for (sql, route) in [
        ("SELECT * FROM public.t", "upstream"),
        ("SELECT * FROM nyc.trips", "lake"),
        ("SELECT * FROM nyc.trips JOIN t ON true", "cross-engine"),
        ("SHOW sluice.pools", "session"),
        ("SET sluice.cache = off", "session"),
        ("FETCH 5 FROM mine", "session"),
        ("FETCH 5 FROM theirs", "upstream"),
        ("MOVE 5 IN mine", "session"),
        ("MOVE 5 IN theirs", "upstream"),
        ("VACUUM; ANALYZE", "upstream"),
        // The gateway's own settings and sessions stay here.
        ("SET idle_session_timeout = '5s'", "session"),
        ("SET datafusion.execution.batch_size = 1", "session"),
        ("RESET idle_in_transaction_session_timeout", "session"),
        ("SHOW datafusion.explain.format", "session"),
        ("SELECT sluice.terminate(4194400)", "session"),
        ("SELECT pg_terminate_backend(4194400)", "session"),
        // …while the upstream's own backends are the upstream's.
        ("SELECT pg_terminate_backend(1234)", "upstream"),
        ("SET statement_timeout = '5s'", "upstream"),
    ] {
        assert_eq!(
            routes(&decide(&r, sql, true, true, false)),
            [route],
            "{sql}"
        );
    }
    let mixed = decide(&r, "SELECT 1; SELECT * FROM nyc.trips", true, true, false);
    assert_eq!(refusal(&mixed), "0A000");
}

#[tokio::test]
async fn read_only_roles_forward_only_what_was_parsed_and_reads() {
    let r = router().await;
    let d = decide(&r, "SELECT * FROM public.t", true, false, false);
    assert_eq!(routes(&d), ["upstream"]);
    for sql in [
        "DELETE FROM t",
        "REDSHIFT ONLY SYNTAX",
        "SET x = 1; DELETE FROM t",
    ] {
        assert_eq!(
            refusal(&decide(&r, sql, true, false, false)),
            "42501",
            "{sql}"
        );
    }
    // A writer's unparsable text goes upstream as it is.
    let d = decide(&r, "REDSHIFT ONLY SYNTAX", true, true, false);
    assert_eq!(routes(&d), ["upstream"]);
}

#[tokio::test]
async fn relaying_carries_its_book_keeping() {
    let r = router().await;
    let d = decide(&r, "SET search_path = a, b", true, false, false);
    assert_eq!(
        d.effects,
        [Effect::MirrorSet {
            name: "search_path".into(),
            value: Some("a, b".into())
        }]
    );
    let d = decide(&r, "DEALLOCATE ALL", true, false, false);
    assert_eq!(d.effects, [Effect::DeallocateUpstream(None)]);
    let d = decide(
        &r,
        "DECLARE c CURSOR FOR SELECT * FROM t",
        true,
        false,
        false,
    );
    assert_eq!(d.effects, [Effect::UpstreamCursors(vec!["c".into()])]);
    // After the upstream session was lost mid-transaction, COMMIT ends it here.
    let d = decide(&r, "COMMIT", true, true, true);
    assert_eq!(routes(&d), ["session"]);
    assert_eq!(d.effects, [Effect::EndLostTransaction]);
    // A refused string changes nothing.
    let d = decide(&r, "SET a.b = 1; DELETE FROM t", true, false, false);
    assert!(d.effects.is_empty());
}

#[tokio::test]
async fn the_cache_learns_where_a_read_runs() {
    let r = router().await;
    let read = |sql: &str| match decide(&r, sql, true, true, false).cache_use(true) {
        CacheUse::Read { on_lake, .. } => Some(on_lake),
        _ => None,
    };
    assert_eq!(read("SELECT a FROM public.t"), Some(false));
    assert_eq!(read("SELECT a FROM nyc.trips"), Some(true));
    assert_eq!(read("SELECT now()"), None);
    let d = decide(&r, "UPDATE t SET a = 1", true, true, false);
    assert!(matches!(d.cache_use(true), CacheUse::Write(Some(t)) if t == ["t"]));
    // Parsed once: the same text comes from the memo.
    assert!(Arc::ptr_eq(&r.parsed("SELECT 42"), &r.parsed("SELECT 42")));
}

#[test]
fn a_view_query_runs_where_its_tables_are() {
    let parse = |sql: &str| {
        datafusion::sql::sqlparser::parser::Parser::parse_sql(
            &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
            sql,
        )
        .map_err(|e| PgError::new(SqlState::SYNTAX_ERROR, e.to_string()))
    };
    let lake = lake();
    let source = |sql: &str, upstream: bool| {
        view_source(parse(sql), upstream.then_some(&lake)).map(|s| matches!(s, ViewSource::Lake(_)))
    };
    assert_eq!(source("SELECT * FROM t", false).ok(), Some(true));
    assert_eq!(source("SELECT * FROM nyc.trips", true).ok(), Some(true));
    assert_eq!(source("SELECT * FROM public.t", true).ok(), Some(false));
    assert_eq!(source("REDSHIFT ONLY", true).ok(), Some(false));
    let e = source("SELECT 1; SELECT 2", false).err().map(|e| e.code.0);
    assert_eq!(e, Some("0A000"));
}

#[tokio::test]
async fn a_decision_knows_whether_its_text_only_reads() {
    let r = router().await;
    assert_eq!(
        decide(&r, "SELECT 1", false, true, false).read_only(),
        Some(true)
    );
    let d = decide(&r, "UPDATE t SET a = 1", true, true, false);
    assert_eq!(d.read_only(), Some(false));
    let d = decide(&r, "NOT SQL AT ALL", true, true, false);
    assert_eq!(d.read_only(), None);
}
