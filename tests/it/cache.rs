//! Hot results against real peers: the result cache and gateway materialized views
//! in front of PostgreSQL standing in for Redshift (the forwarding rig), with the
//! real `sluice` binary restarted to prove views persist.
//!
//! "The cache answered without the upstream" is proven by changing the upstream
//! table directly (not through Sluice): a hit still returns the old rows.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::{rows, scalar, sqlstate};
use crate::redshift::{MOTO_S3, Options, Rig};

const EXTRA: &str = r#"
[cache]
result_ttl_secs = 300

[materialized_views]
schemas = ["mv"]
refresh_roles = ["mv_refresh"]
keep_replaced_secs = 60

[[materialized_views.views]]
name = "mv.sales_count"
query = "SELECT count(*) AS n, max(id) AS last_id FROM public.sales"
refresh_every_secs = 1

[[roles]]
name = "nyc_only"
read = ["nyc.*"]

[[auth.users]]
name = "nycfan"
password = "nycfan-pw"
roles = ["nyc_only"]
"#;

/// The refresh role, and a view manager (`curator`) without a Redshift identity.
const VIEW_ROLES: &str = r#"
[[roles]]
name = "mv_refresh"
read = ["*"]
redshift_user = "{user}"

[[roles]]
name = "mv_manager"
read = ["*"]
manage_materialized_views = true

[[auth.users]]
name = "curator"
password = "curator-pw"
roles = ["mv_manager"]
"#;

async fn rig() -> Rig {
    Rig::start(Options {
        extra: format!("{EXTRA}{VIEW_ROLES}"),
        ..Options::default()
    })
    .await
}

/// One named value of a single-row SHOW.
async fn shown(c: &Client, view: &str, column: &str) -> String {
    let msgs = c.simple_query(&format!("SHOW {view}")).await.expect("show");
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(column).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default()
}

/// A column of the `SHOW sluice.materialized_views` row of `view`.
async fn view_state(c: &Client, view: &str, column: &str) -> String {
    let msgs = c
        .simple_query("SHOW sluice.materialized_views")
        .await
        .expect("show views");
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) if r.get("view") == Some(view) => {
                r.get(column).map(str::to_owned)
            }
            _ => None,
        })
        .unwrap_or_default()
}

const DASHBOARD: &str = "SELECT region, sum(amount) AS total, count(*) AS n FROM public.sales GROUP BY region ORDER BY region";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_cache_serves_repeats_per_identity_and_forgets_what_writes_touch() {
    let rig = rig().await;
    let alice = rig.alice().await;
    let bob = rig.bob().await;
    let first = rows(&alice, DASHBOARD).await;
    assert_eq!(first.len(), 2);
    // Changed behind Sluice's back: only a cache hit still shows the old totals.
    rig.pg
        .sql(
            "dev",
            "UPDATE public.sales SET amount = amount + 1000 WHERE id = 1",
        )
        .expect("direct update");
    assert_eq!(
        rows(&alice, DASHBOARD).await,
        first,
        "the repeat is a cache hit"
    );
    assert!(
        shown(&alice, "sluice.result_cache", "hits")
            .await
            .parse::<u64>()
            .unwrap()
            >= 1
    );

    // Another identity has its own entry: bob's first run reaches the upstream.
    let bobs = rows(&bob, DASHBOARD).await;
    assert_ne!(bobs, first, "bob is not served alice's entry");

    // A table only bob may read: his cached rows never reach alice.
    rig.pg
        .sql(
            "dev",
            "CREATE TABLE public.payroll (who text, pay int); INSERT INTO payroll VALUES ('x', 1);\
             GRANT SELECT ON payroll TO \"IAM:bob\";",
        )
        .expect("payroll");
    assert_eq!(
        scalar(&bob, "SELECT count(*) FROM public.payroll").await,
        "1"
    );
    assert_eq!(
        scalar(&bob, "SELECT count(*) FROM public.payroll").await,
        "1"
    );
    let denied = alice
        .simple_query("SELECT count(*) FROM public.payroll")
        .await
        .expect_err("alice has no grant upstream");
    assert_eq!(sqlstate(&denied), "42501");

    // A write through Sluice invalidates the tables it touches, for everyone.
    bob.simple_query("UPDATE public.sales SET amount = amount + 1 WHERE id = 2")
        .await
        .expect("write through Sluice");
    let fresh = rows(&alice, DASHBOARD).await;
    assert_ne!(fresh, first, "the write invalidated alice's entry");
    // …and a write in a transaction invalidates again at COMMIT.
    bob.batch_execute("BEGIN; UPDATE public.sales SET amount = amount + 1 WHERE id = 4")
        .await
        .expect("begin");
    let during = rows(&alice, DASHBOARD).await;
    assert_eq!(
        during, fresh,
        "uncommitted: other sessions see the old totals"
    );
    bob.batch_execute("COMMIT").await.expect("commit");
    assert_ne!(
        rows(&alice, DASHBOARD).await,
        fresh,
        "COMMIT invalidated the entry"
    );

    // Per-session opt-out.
    rig.pg
        .sql(
            "dev",
            "UPDATE public.sales SET amount = amount + 1000 WHERE id = 3",
        )
        .expect("direct update");
    let cached = rows(&alice, DASHBOARD).await;
    alice
        .batch_execute("SET sluice.cache = off")
        .await
        .expect("opt out");
    let uncached = rows(&alice, DASHBOARD).await;
    assert_ne!(
        uncached, cached,
        "SET sluice.cache = off reads the upstream"
    );
    alice
        .batch_execute("RESET sluice.cache")
        .await
        .expect("reset");

    // The extended protocol (prepared statements with parameters), as pgjdbc and
    // Npgsql send it: cached per parameter value, invalidated by prepared writes.
    let by_region = "SELECT sum(amount)::float8 FROM public.sales WHERE region = $1";
    let east: f64 = alice
        .query_one(by_region, &[&"east"])
        .await
        .expect("east")
        .get(0);
    let west: f64 = alice
        .query_one(by_region, &[&"west"])
        .await
        .expect("west")
        .get(0);
    assert_ne!(east, west, "parameters are part of the key");
    rig.pg
        .sql(
            "dev",
            "UPDATE public.sales SET amount = amount + 1000 WHERE id = 10",
        )
        .expect("direct update");
    let statement = alice.prepare(by_region).await.expect("prepare");
    for _ in 0..3 {
        let again: f64 = alice
            .query_one(&statement, &[&"east"])
            .await
            .expect("east")
            .get(0);
        assert_eq!(again, east, "served from the cache");
    }
    let update = bob
        .prepare("UPDATE public.sales SET amount = amount + 1 WHERE id = $1")
        .await
        .expect("prepare write");
    bob.execute(&update, &[&20i32])
        .await
        .expect("prepared write");
    let after: f64 = alice
        .query_one(&statement, &[&"east"])
        .await
        .expect("east")
        .get(0);
    assert_eq!(
        after,
        east + 1001.0,
        "the prepared write invalidated the entry"
    );

    // Custom settings are part of the key (row-level security reads them).
    let tenant = "SELECT current_setting('app.tenant') FROM public.sales LIMIT 1";
    alice
        .batch_execute("SET app.tenant = 'one'")
        .await
        .expect("set");
    assert_eq!(scalar(&alice, tenant).await, "one");
    alice
        .batch_execute("SET app.tenant = 'two'")
        .await
        .expect("set");
    assert_eq!(
        scalar(&alice, tenant).await,
        "two",
        "not the entry keyed by 'one'"
    );
    // A SET that a ROLLBACK undoes upstream: Sluice stops trusting its copy of the
    // settings for that session, so no answer is stored under the wrong setting.
    alice.batch_execute("BEGIN").await.expect("begin");
    alice
        .batch_execute("SET app.tenant = 'three'")
        .await
        .expect("set");
    alice.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(scalar(&alice, tenant).await, "two", "the upstream's value");
    let other = rig.alice().await;
    other
        .batch_execute("SET app.tenant = 'three'")
        .await
        .expect("set");
    assert_eq!(
        scalar(&other, tenant).await,
        "three",
        "nothing stored under 'three'"
    );

    // Volatile functions are never cached.
    let a = scalar(
        &alice,
        "SELECT clock_timestamp()::text FROM public.sales LIMIT 1",
    )
    .await;
    let b = scalar(
        &alice,
        "SELECT clock_timestamp()::text FROM public.sales LIMIT 1",
    )
    .await;
    assert_ne!(a, b);
}

/// libpq's prepared-statement flow (Bind, Describe, Execute, Sync per query), as
/// pgbench -M prepared sends it: after the first run, hits are answered entirely by
/// Sluice — the upstream logs a single execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_hits_never_reach_the_upstream() {
    let rig = rig().await;
    rig.pg
        .sql(
            "postgres",
            "ALTER ROLE \"IAM:alice\" SET log_min_duration_statement = 0",
        )
        .expect("log alice's parse/bind/execute steps");
    let script = rig.dir.path().join("dashboard.sql");
    std::fs::write(
        &script,
        "SELECT region, sum(amount)::float8 AS total FROM public.sales WHERE id > 10 GROUP BY region;\n",
    )
    .expect("script");
    let out = tokio::process::Command::new(crate::postgres::pg_bin("pgbench").expect("pgbench"))
        .env("PGPASSWORD", "alice-pw")
        .env("PGSSLMODE", "disable")
        .args([
            "-n",
            "-M",
            "prepared",
            "-t",
            "200",
            "-c",
            "2",
            "-h",
            "127.0.0.1",
        ])
        .args(["-p", &rig.port.to_string(), "-U", "alice", "-f"])
        .arg(&script)
        .arg("sluice")
        .output()
        .await
        .expect("pgbench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("number of failed transactions: 0"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = rig.pg.log();
    let steps = |step: &str| {
        log.lines()
            .filter(|l| l.contains(step) && l.contains("WHERE id > 10 GROUP BY region"))
            .count()
    };
    let (binds, executions) = (steps(" bind "), steps(" execute "));
    assert!(
        (1..=2).contains(&executions) && (1..=2).contains(&binds),
        "400 prepared runs reached the upstream: {binds} binds, {executions} executions"
    );
    let ops = rig.connect("ops", "ops-pw").await;
    assert!(hits(&ops).await >= 398);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lake_results_are_cached_per_role_policy() {
    let rig = rig().await;
    let curator = rig.connect("curator", "curator-pw").await;
    let nyc = rig.connect("nycfan", "nycfan-pw").await;
    let sql = "SELECT vendor_id, count(*) FROM nyc.trips WHERE passenger_count > $1 GROUP BY 1 ORDER BY 1";
    let first = curator.query(sql, &[&2i32]).await.expect("lake query");
    let before = hits(&curator).await;
    let second = curator.query(sql, &[&2i32]).await.expect("lake query");
    assert_eq!(hits(&curator).await, before + 1, "the repeat is a hit");
    let as_rows = |rows: &[tokio_postgres::Row]| {
        rows.iter()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, i64>(1)))
            .collect::<Vec<_>>()
    };
    assert_eq!(as_rows(&first), as_rows(&second));
    // Another policy has its own entry (and its own answer).
    let before = hits(&curator).await;
    let theirs = nyc.query(sql, &[&2i32]).await.expect("lake query");
    assert_eq!(
        hits(&curator).await,
        before,
        "a different role policy misses"
    );
    assert_eq!(as_rows(&theirs), as_rows(&first));
    // Simple protocol, text results: a separate entry, same rows.
    let text = rows(&curator, "SELECT count(*) FROM nyc.trips").await;
    let before = hits(&curator).await;
    assert_eq!(rows(&curator, "SELECT count(*) FROM nyc.trips").await, text);
    assert_eq!(hits(&curator).await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_engine_joins_push_work_upstream_under_the_users_identity() {
    let rig = rig().await;
    rig.pg
        .sql(
            "postgres",
            "ALTER ROLE \"IAM:alice\" SET log_statement = 'all'",
        )
        .expect("log alice's statements");
    let alice = rig.alice().await;
    let joined = rows(
        &alice,
        "SELECT s.region, t.vendor_id, count(*) AS trips \
         FROM nyc.trips t JOIN public.sales s ON s.id = t.vendor_id \
         WHERE s.id <= 2 GROUP BY 1, 2 ORDER BY 2",
    )
    .await;
    // By hand: the lake's trips per vendor, the upstream's region per id.
    let trips = rows(
        &alice,
        "SELECT vendor_id, count(*) FROM nyc.trips GROUP BY 1 ORDER BY 1",
    )
    .await;
    let regions = rig
        .pg
        .sql(
            "dev",
            "SELECT string_agg(id || '=' || region, ',' ORDER BY id) FROM sales WHERE id <= 2",
        )
        .expect("regions");
    let regions: std::collections::HashMap<String, String> = regions
        .trim()
        .split(',')
        .filter_map(|p| p.split_once('=').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .collect();
    let expected: Vec<Vec<String>> = trips
        .iter()
        .filter_map(|t| {
            regions
                .get(&t[0])
                .map(|r| vec![r.clone(), t[0].clone(), t[1].clone()])
        })
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(joined, expected);
    // The upstream ran a query with the projection and the filter, as alice.
    let log = rig.pg.log();
    assert!(
        log.contains("SELECT \"id\", \"region\" FROM \"public\".\"sales\" WHERE (\"id\" <= 2)"),
        "pushed-down scan not in the upstream log:\n{}",
        log.lines()
            .filter(|l| l.contains("sales"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A table alice may not read upstream fails with the upstream's own error.
    rig.pg
        .sql("dev", "CREATE TABLE public.vault (id int)")
        .expect("vault");
    let e = alice
        .simple_query("SELECT count(*) FROM nyc.trips t JOIN public.vault v ON v.id = t.vendor_id")
        .await
        .expect_err("no grant on vault");
    assert_eq!(sqlstate(&e), "42501");
    // Unknown upstream tables are unknown.
    let e = alice
        .simple_query("SELECT * FROM nyc.trips t JOIN public.nothing n ON n.id = t.vendor_id")
        .await
        .expect_err("no such table");
    assert_eq!(sqlstate(&e), "42P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_run_the_statement_once() {
    let rig = rig().await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(rig.alice().await);
    }
    let ops = rig.connect("ops", "ops-pw").await;
    let before: u64 = shown(&ops, "sluice.result_cache", "misses")
        .await
        .parse()
        .unwrap();
    let slow = "SELECT count(*) FROM generate_series(1, 3000000) AS g JOIN public.sales s ON s.id = g % 1000 + 1";
    let runs = clients.iter().map(|c| async move { scalar(c, slow).await });
    let answers = futures::future::join_all(runs).await;
    assert!(answers.iter().all(|a| a == "3000000"), "{answers:?}");
    let misses: u64 = shown(&ops, "sluice.result_cache", "misses")
        .await
        .parse()
        .unwrap();
    let hits: u64 = shown(&ops, "sluice.result_cache", "hits")
        .await
        .parse()
        .unwrap();
    assert_eq!(
        misses - before,
        1,
        "one execution upstream for six sessions"
    );
    assert!(hits >= 5, "the others were served its answer ({hits})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_views_refresh_atomically_incrementally_and_survive_restarts() {
    let mut rig = rig().await;
    let curator = rig.connect("curator", "curator-pw").await;
    let alice = rig.alice().await;

    // Created by the curator, filled under the refresh identity (the curator has
    // no Redshift identity at all).
    curator
        .batch_execute(
            "CREATE MATERIALIZED VIEW mv.region_totals AS \
             SELECT region, sum(amount) AS total, count(*) AS n FROM public.sales GROUP BY region",
        )
        .await
        .expect("create view");
    let direct = rig
        .pg
        .sql(
            "dev",
            "SELECT string_agg(region || ':' || n, ',' ORDER BY region) FROM \
             (SELECT region, count(*) AS n FROM sales GROUP BY region) t",
        )
        .expect("direct");
    let via_view = scalar(
        &alice,
        "SELECT string_agg(region || ':' || CAST(n AS VARCHAR), ',' ORDER BY region) FROM mv.region_totals",
    )
    .await;
    assert_eq!(via_view, direct.trim());
    assert_eq!(
        scalar(&curator, "SELECT matviewname || ':' || CAST(ispopulated AS VARCHAR) FROM pg_matviews WHERE schemaname = 'mv' AND matviewname = 'region_totals'").await,
        "region_totals:true"
    );
    assert_eq!(
        scalar(
            &curator,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'mv'"
        )
        .await,
        "2",
        "region_totals and the declared sales_count"
    );

    // Refreshes under continuous readers: every read sees one whole version.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let c = rig.alice().await;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n = scalar(&c, "SELECT sum(n) FROM mv.region_totals").await;
                assert!(n == "1000" || n == "1500", "a whole version, not {n}");
                reads += 1;
            }
            reads
        }));
    }
    rig.pg
        .sql(
            "dev",
            "INSERT INTO public.sales SELECT g, 'north', 2 FROM generate_series(1001, 1500) g",
        )
        .expect("insert");
    for i in 0..4 {
        let sql = if i % 2 == 0 {
            "REFRESH MATERIALIZED VIEW mv.region_totals"
        } else {
            "REFRESH MATERIALIZED VIEW CONCURRENTLY mv.region_totals"
        };
        // The extended protocol, as pgjdbc sends it.
        curator.execute(sql, &[]).await.expect("refresh");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.expect("reader never failed") > 0);
    }
    assert_eq!(
        scalar(&alice, "SELECT sum(n) FROM mv.region_totals").await,
        "1500"
    );

    // Incremental: only rows past the high-water mark are fetched and appended.
    curator
        .batch_execute(
            "CREATE MATERIALIZED VIEW mv.sales_log WITH (incremental_column = 'id') AS \
             SELECT id, region, amount FROM public.sales",
        )
        .await
        .expect("incremental view");
    assert_eq!(
        scalar(&alice, "SELECT count(*) FROM mv.sales_log").await,
        "1500"
    );
    rig.pg
        .sql(
            "dev",
            "INSERT INTO public.sales SELECT g, 'south', 3 FROM generate_series(1501, 1600) g;\
             UPDATE public.sales SET region = 'changed' WHERE id = 5",
        )
        .expect("more rows");
    curator
        .batch_execute("REFRESH MATERIALIZED VIEW mv.sales_log")
        .await
        .expect("incremental refresh");
    assert_eq!(
        scalar(&alice, "SELECT count(*) FROM mv.sales_log").await,
        "1600"
    );
    assert_eq!(
        scalar(&alice, "SELECT region FROM mv.sales_log WHERE id = 5").await,
        "west",
        "rows below the mark are not fetched again"
    );
    assert_eq!(
        view_state(&curator, "mv.sales_log", "high_water").await,
        "1600"
    );
    assert_eq!(view_state(&curator, "mv.sales_log", "files").await, "2");

    // A failing refresh keeps the previous version and says why.
    rig.pg
        .sql(
            "dev",
            "CREATE TABLE public.fragile (id int); INSERT INTO fragile VALUES (1), (2);\
             GRANT SELECT ON fragile TO iam_users;",
        )
        .expect("fragile");
    curator
        .batch_execute("CREATE MATERIALIZED VIEW mv.fragile AS SELECT id FROM public.fragile")
        .await
        .expect("fragile view");
    rig.pg
        .sql("dev", "DROP TABLE public.fragile")
        .expect("drop source");
    let failed = curator
        .batch_execute("REFRESH MATERIALIZED VIEW mv.fragile")
        .await
        .expect_err("the source is gone");
    assert_eq!(sqlstate(&failed), "42P01");
    assert_eq!(scalar(&alice, "SELECT count(*) FROM mv.fragile").await, "2");
    let ops = rig.connect("ops", "ops-pw").await;
    assert!(
        view_state(&ops, "mv.fragile", "last_error")
            .await
            .contains("42P01")
    );
    assert_eq!(view_state(&ops, "mv.fragile", "failures").await, "1");
    assert!(
        view_state(&alice, "mv.fragile", "last_error")
            .await
            .starts_with("failed (details"),
        "only admins see the error text"
    );

    // The declared view refreshes on its schedule (every second).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if scalar(&alice, "SELECT n FROM mv.sales_count").await == "1600" {
            break;
        }
        assert!(Instant::now() < deadline, "scheduled refresh did not run");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A lake view, computed by the lake engine.
    curator
        .batch_execute(
            "CREATE MATERIALIZED VIEW mv.trips_by_vendor AS \
             SELECT vendor_id, count(*) AS trips FROM nyc.trips GROUP BY vendor_id",
        )
        .await
        .expect("lake view");
    let lake_direct = scalar(&alice, "SELECT count(*) FROM nyc.trips").await;
    assert_eq!(
        scalar(&alice, "SELECT sum(trips) FROM mv.trips_by_vendor").await,
        lake_direct
    );
    assert_eq!(
        view_state(&curator, "mv.trips_by_vendor", "source").await,
        "lake"
    );

    // Permissions: creating needs the role flag; reading needs a grant on the view.
    let e = alice
        .batch_execute("CREATE MATERIALIZED VIEW mv.mine AS SELECT 1 AS x")
        .await
        .expect_err("alice may not create views");
    assert_eq!(sqlstate(&e), "42501");
    let nyc = rig.connect("nycfan", "nycfan-pw").await;
    let e = nyc
        .simple_query("SELECT * FROM mv.region_totals")
        .await
        .expect_err("no grant on mv.*");
    assert!(["42501", "42P01"].contains(&sqlstate(&e).as_str()), "{e:?}");
    assert_eq!(scalar(&nyc, "SELECT count(*) FROM pg_matviews").await, "0");
    // A cross-engine view: Redshift rows joined with lake rows on the lake engine.
    curator
        .batch_execute(
            "CREATE MATERIALIZED VIEW mv.vendor_regions AS \
             SELECT s.region, count(*) AS trips FROM public.sales s \
             JOIN nyc.trips t ON t.vendor_id = s.id GROUP BY s.region",
        )
        .await
        .expect("cross-engine view");
    let by_vendor = rows(
        &alice,
        "SELECT vendor_id, count(*) FROM nyc.trips GROUP BY 1",
    )
    .await;
    let expected: i64 = by_vendor.iter().map(|r| r[1].parse::<i64>().unwrap()).sum();
    assert_eq!(
        scalar(&alice, "SELECT sum(trips) FROM mv.vendor_regions").await,
        expected.to_string(),
        "every trip's vendor id is a sales id"
    );
    let e = curator
        .batch_execute("CREATE MATERIALIZED VIEW mv.region_totals AS SELECT 1")
        .await
        .expect_err("exists");
    assert_eq!(sqlstate(&e), "42P07");
    // Text Sluice cannot check (here: two statements) is refused to a role that may
    // not write, before anything runs upstream.
    let e = curator
        .batch_execute(
            "CREATE MATERIALIZED VIEW mv.sneaky AS SELECT 1 AS x; DELETE FROM public.sales",
        )
        .await
        .expect_err("not one read-only SELECT");
    assert!(["42501", "42601"].contains(&sqlstate(&e).as_str()), "{e:?}");
    assert_eq!(
        rig.pg
            .sql("dev", "SELECT count(*) > 0 FROM sales")
            .expect("count")
            .trim(),
        "t"
    );

    // A restart loses nothing: versions, the failed view's old data, the mark.
    rig.restart().await;
    let alice = rig.alice().await;
    assert_eq!(
        scalar(&alice, "SELECT sum(n) FROM mv.region_totals").await,
        "1500"
    );
    assert_eq!(
        scalar(&alice, "SELECT count(*) FROM mv.sales_log").await,
        "1600"
    );
    assert_eq!(scalar(&alice, "SELECT count(*) FROM mv.fragile").await, "2");
    let curator = rig.connect("curator", "curator-pw").await;
    assert_eq!(
        view_state(&curator, "mv.sales_log", "high_water").await,
        "1600"
    );

    // DROP: gone from the catalog and storage; config-declared views stay.
    curator
        .batch_execute("DROP MATERIALIZED VIEW mv.fragile")
        .await
        .expect("drop");
    let e = alice
        .simple_query("SELECT * FROM mv.fragile")
        .await
        .expect_err("dropped");
    assert_eq!(sqlstate(&e), "42P01");
    assert!(
        !rig.dir
            .path()
            .join("matviews/mv/fragile")
            .join("view.json")
            .exists()
    );
    let e = curator
        .batch_execute("DROP MATERIALIZED VIEW mv.sales_count")
        .await
        .expect_err("declared in the config");
    assert_eq!(sqlstate(&e), "0A000");
    curator
        .batch_execute("DROP MATERIALIZED VIEW IF EXISTS mv.nothing")
        .await
        .expect("IF EXISTS");
}

async fn hits(c: &Client) -> u64 {
    shown(c, "sluice.result_cache", "hits")
        .await
        .parse()
        .expect("hits is a number")
}

/// Views stored in S3 (moto) through `object_store`: written, read, and found again
/// after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_views_in_s3_survive_restarts() {
    let extra = r#"
[materialized_views]
schemas = ["mv"]
storage = "s3://views/sluice"
refresh_roles = ["mv_refresh"]
"#;
    let mut rig = Rig::start(Options {
        extra: format!("{MOTO_S3}{extra}{VIEW_ROLES}"),
        buckets: vec!["views"],
        ..Options::default()
    })
    .await;
    let bucket = rig.moto.bucket("views").expect("bucket");
    let curator = rig.connect("curator", "curator-pw").await;
    curator
        .batch_execute(
            "CREATE MATERIALIZED VIEW mv.by_region AS \
             SELECT region, count(*) AS n FROM public.sales GROUP BY region",
        )
        .await
        .expect("create a view stored in S3");
    use futures::TryStreamExt;
    let stored: Vec<String> = object_store::ObjectStore::list(bucket.as_ref(), None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list the bucket");
    assert!(
        stored.contains(&"sluice/mv/by_region/view.json".to_string()),
        "{stored:?}"
    );
    assert!(
        stored
            .iter()
            .any(|p| p.starts_with("sluice/mv/by_region/data/") && p.ends_with(".parquet")),
        "{stored:?}"
    );
    assert_eq!(
        scalar(&curator, "SELECT sum(n) FROM mv.by_region").await,
        "1000"
    );
    rig.restart().await;
    let curator = rig.connect("curator", "curator-pw").await;
    assert_eq!(
        scalar(&curator, "SELECT sum(n) FROM mv.by_region").await,
        "1000"
    );
    curator
        .batch_execute("REFRESH MATERIALIZED VIEW mv.by_region")
        .await
        .expect("refresh in S3");
    assert_eq!(
        scalar(
            &curator,
            "SELECT count(*) FROM pg_matviews WHERE schemaname = 'mv'"
        )
        .await,
        "1"
    );
}
