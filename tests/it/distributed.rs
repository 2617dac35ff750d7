//! Distributed lake statements (`[engine.distributed]`) on a real Ballista 55
//! cluster: Ballista's own standalone scheduler and two executors, in this process
//! on loopback gRPC, with a gateway planning and submitting.
//!
//! The gateway is the real `sluice` binary (built with the feature), with AWS
//! credentials in its environment for Glue; the counters asserted are read from
//! its `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_postgres::Client;

use crate::ballista::ExecutorStore;
use crate::harness::{
    GatewayConfig, PASSWORD, USER, connect_app_noticed, connect_plain, http_get, metric,
    spawn_sluice, sqlstate,
};
use crate::lake_answers::{same_cell, text_rows};
use crate::lake_queries::LAKE_QUERIES;
use crate::moto::Moto;
use crate::nyc_lake::{self, BUCKET};

/// 12 months × 20,000 trips (about 7 MB of Parquet), as the DuckDB comparison uses.
const TRIPS_PER_MONTH: usize = 20_000;

/// A sort-merge join with ~10^10 matches: runs far longer than any test waits.
const ENDLESS: &str = "SELECT count(*) FROM nyc.trips a JOIN nyc.trips b \
                       ON a.passenger_count = b.passenger_count";

/// Ballista's standalone scheduler and `executors` executors (2 task slots each),
/// reading `stores` besides local files.
async fn ballista_cluster(executors: usize, stores: Vec<ExecutorStore>) -> SocketAddr {
    crate::ballista::cluster(executors, 2, stores)
        .await
        .expect("Ballista scheduler and executors start")
}

/// A counter of the gateway's `/metrics` (`name{label="value"}`).
struct Counters {
    admin: u16,
}

impl Counters {
    async fn get(&self, series: &str) -> u64 {
        let (status, text) = http_get(self.admin, "/metrics", None).await;
        assert_eq!(status, 200, "{text}");
        metric(&text, series) as u64
    }

    async fn jobs(&self, outcome: &str) -> u64 {
        self.get(&format!(
            "sluice_distributed_jobs_total{{outcome=\"{outcome}\"}}"
        ))
        .await
    }

    async fn local_runs(&self, reason: &str) -> u64 {
        self.get(&format!(
            "sluice_distributed_local_runs_total{{reason=\"{reason}\"}}"
        ))
        .await
    }

    /// Waits until the `outcome` counter passes `above`.
    async fn wait_for_jobs(&self, outcome: &str, above: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.jobs(outcome).await <= above {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {outcome} jobs above {above}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn lake(dir: &std::path::Path) -> String {
    let data = dir.join("lake");
    sluice::lake::demo::ensure_sized(&data, TRIPS_PER_MONTH).expect("data generated");
    format!("[lake.local]\nroot = {:?}\n", data.display().to_string())
}

/// The users: `demo` reads everything, `zones` only `nyc.zones`.
fn auth() -> String {
    format!(
        "[[auth.users]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\nroles = [\"analyst\"]\n\n\
         [[auth.users]]\nname = \"zones\"\npassword = \"zones\"\nroles = [\"zone_reader\"]\n\n\
         [[roles]]\nname = \"analyst\"\nread = [\"*\"]\n\n\
         [[roles]]\nname = \"zone_reader\"\nread = [\"nyc.zones\"]\n\n"
    )
}

async fn expect_canceled(client: &Client, sql: &str, what: &str) -> tokio_postgres::Error {
    let err = client.simple_query(sql).await.expect_err(what);
    assert_eq!(sqlstate(&err), "57014", "{what}: {err:?}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lake_statements_run_distributed_with_the_same_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let local_lake = lake(dir.path());
    // The same trips as Glue tables: in moto's S3, and over the local files.
    let moto = Moto::start().expect("moto starts");
    nyc_lake::load_glue(&moto, &dir.path().join("lake"), "nyc_s3", Some("nyc_disk"))
        .await
        .expect("trips in moto");
    let s3: ExecutorStore = (
        url::Url::parse(&format!("s3://{BUCKET}")).expect("url"),
        moto.bucket(BUCKET).expect("bucket"),
    );
    let scheduler = ballista_cluster(2, vec![s3]).await;
    let glue = format!(
        "[lake.glue]\nregion = \"us-east-1\"\naws_endpoint = \"{e}\"\n\
         databases = [\"nyc_s3\", \"nyc_disk\"]\nallow_local_locations = true\n\
         [lake.glue.s3]\nendpoint = \"{e}\"\npath_style = true\n",
        e = moto.endpoint()
    );
    let port = crate::postgres::free_port().expect("port");
    let admin = crate::postgres::free_port().expect("port");
    let config = GatewayConfig::demo()
        .port(port)
        .auth(&auth())
        .lake(&format!("{local_lake}\n{glue}"))
        .extra(&format!(
            "[engine.distributed]\nscheduler = \"http://127.0.0.1:{}\"\nscan_threshold_mb = 2\n\
             on_unavailable = \"error\"\npartitions = 4\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
            scheduler.port()
        ))
        .write(dir.path());
    let _sluice = spawn_sluice(&config, port, &[]).await;
    let counters = Counters { admin };
    let local = connect_plain(port, USER, PASSWORD).await.expect("connect");
    local
        .simple_query("SET sluice.engine = 'local'")
        .await
        .expect("set local");
    let (spread, notices) = connect_app_noticed(port, USER, PASSWORD, "spread").await;
    spread
        .simple_query("SET sluice.engine = 'distributed'")
        .await
        .expect("set distributed");

    // The lake query set answers the same on both engines, every query that reads
    // files as a Ballista job. Two are answered from Parquet statistics at planning
    // (DataFusion's AggregateStatistics): nothing to distribute.
    let mut not_jobs = Vec::new();
    for &(name, sql) in LAKE_QUERIES {
        let expected = text_rows(&local, sql).await;
        let succeeded = counters.jobs("succeeded").await;
        let got = text_rows(&spread, sql).await;
        if counters.jobs("succeeded").await == succeeded {
            not_jobs.push(name);
        }
        assert!(!expected.is_empty(), "{name}: no rows");
        assert_eq!(got.len(), expected.len(), "{name}: {got:?} vs {expected:?}");
        for (g, e) in got.iter().zip(&expected) {
            assert!(
                g.len() == e.len() && g.iter().zip(e).all(|(a, b)| same_cell(a, b)),
                "{name}: distributed row {g:?}, local {e:?}"
            );
        }
    }
    assert_eq!(
        not_jobs,
        ["count_all", "extremes"],
        "only statistics-answered queries stay local"
    );
    assert!(notices.lock().expect("notices").is_empty(), "{notices:?}");

    // Glue tables too, in S3 (read by the executors with their own store) and on
    // disk.
    for table in ["nyc_s3.trips", "nyc_disk.trips"] {
        for &(name, sql) in LAKE_QUERIES {
            if not_jobs.contains(&name) {
                continue;
            }
            let sql = sql.replace("nyc.trips", table);
            let expected = text_rows(&local, &sql).await;
            let succeeded = counters.jobs("succeeded").await;
            let got = text_rows(&spread, &sql).await;
            assert_eq!(
                counters.jobs("succeeded").await - succeeded,
                1,
                "{name} on {table} ran as a job ({:?})",
                notices.lock().expect("notices")
            );
            assert_eq!(got.len(), expected.len(), "{name} on {table}");
            for (g, e) in got.iter().zip(&expected) {
                assert!(
                    g.iter().zip(e).all(|(a, b)| same_cell(a, b)),
                    "{name} on {table}: distributed row {g:?}, local {e:?}"
                );
            }
        }
    }

    // No file is read twice: with work stealing on, each task would read all input.
    let totals = "SELECT count(*), count(DISTINCT trip_id), sum(trip_id) FROM nyc.trips \
                  WHERE trip_distance >= 0";
    let got = text_rows(&spread, totals).await;
    assert_eq!(got, text_rows(&local, totals).await);
    let total = (12 * TRIPS_PER_MONTH).to_string();
    assert_eq!(got[0][0].as_deref(), Some(total.as_str()), "{got:?}");
    assert_eq!(got[0][0], got[0][1], "duplicated rows: {got:?}");

    // `auto` goes distributed at the threshold: the whole table (about 7 MB) does,
    // one month (about 0.6 MB) does not.
    let auto = connect_plain(port, USER, PASSWORD).await.expect("connect");
    let submitted = counters.jobs("submitted").await;
    text_rows(&auto, "SELECT avg(fare_amount) FROM nyc.trips").await;
    assert_eq!(
        counters.jobs("submitted").await - submitted,
        1,
        "the whole table runs distributed"
    );
    text_rows(
        &auto,
        "SELECT avg(fare_amount) FROM nyc.trips WHERE month = '2024-03'",
    )
    .await;
    assert_eq!(
        counters.jobs("submitted").await - submitted,
        1,
        "one month stays on the gateway"
    );

    // The session's policy holds: an ungranted table is refused before anything
    // is submitted; a granted one runs distributed.
    let zones = connect_plain(port, "zones", "zones")
        .await
        .expect("connect");
    zones
        .simple_query("SET sluice.engine = 'distributed'")
        .await
        .expect("set");
    let submitted = counters.jobs("submitted").await;
    let err = zones
        .simple_query("SELECT count(*) FROM nyc.trips WHERE trip_distance > 1")
        .await
        .expect_err("ungranted");
    assert_eq!(sqlstate(&err), "42501", "{err:?}");
    assert_eq!(
        counters.jobs("submitted").await,
        submitted,
        "nothing was submitted"
    );
    let rows = text_rows(
        &zones,
        "SELECT count(*) FROM nyc.zones WHERE location_id > 0",
    )
    .await;
    assert_eq!(rows[0][0].as_deref(), Some("265"));
    assert_eq!(counters.jobs("submitted").await - submitted, 1);

    // A cancel request reaches the job: the scheduler confirms it cancelled it.
    let canceled = counters.jobs("canceled").await;
    let submitted = counters.jobs("submitted").await;
    let token = spread.cancel_token();
    let admin = counters.admin;
    let canceller = tokio::spawn(async move {
        Counters { admin }
            .wait_for_jobs("submitted", submitted)
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        token
            .cancel_query(tokio_postgres::NoTls)
            .await
            .expect("cancel sent");
    });
    expect_canceled(&spread, ENDLESS, "cancelled join").await;
    canceller.await.expect("canceller");
    counters.wait_for_jobs("canceled", canceled).await;

    // So does a statement timeout.
    spread
        .simple_query("SET statement_timeout = '700ms'")
        .await
        .expect("set timeout");
    let err = expect_canceled(&spread, ENDLESS, "timed-out join").await;
    assert!(
        crate::harness::error_message(&err).contains("statement timeout"),
        "{err:?}"
    );
    counters.wait_for_jobs("canceled", canceled + 1).await;
    spread
        .simple_query("RESET statement_timeout")
        .await
        .expect("reset");

    // The cluster is free again, and a plan that cannot be distributed (a function
    // only the gateway has: executors could not rebuild it) runs on the gateway with
    // a NOTICE.
    let rows = text_rows(
        &spread,
        "SELECT count(*) FROM nyc.trips WHERE vendor_id = 1",
    )
    .await;
    assert_eq!(
        rows,
        text_rows(&local, "SELECT count(*) FROM nyc.trips WHERE vendor_id = 1").await
    );
    let fallbacks = counters.local_runs("not_distributable").await;
    let rows = text_rows(
        &spread,
        "SELECT count(*), set_config('sluice.note', 'x', false) FROM nyc.trips WHERE vendor_id = 1",
    )
    .await;
    assert_eq!(rows[0][1].as_deref(), Some("x"));
    assert_eq!(
        counters.local_runs("not_distributable").await - fallbacks,
        1
    );
    let notices = notices.lock().expect("notices").clone();
    assert!(
        notices
            .iter()
            .any(|n| n.contains("cannot run distributed") && n.contains("gateway")),
        "{notices:?}"
    );

    // A value the setting does not know is refused.
    let err = spread
        .simple_query("SET sluice.engine = 'spark'")
        .await
        .expect_err("unknown engine");
    assert_eq!(sqlstate(&err), "22023", "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_scheduler_fails_clearly_or_runs_locally_as_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = lake(dir.path());
    // A port nothing listens on.
    let closed = crate::postgres::free_port().expect("port");
    let gateway = |on_unavailable: &str| {
        GatewayConfig::demo().lake(&lake).extra(&format!(
            "[engine.distributed]\nscheduler = \"http://127.0.0.1:{closed}\"\n\
             on_unavailable = \"{on_unavailable}\"\nconnect_timeout_ms = 500\n"
        ))
    };
    let strict = gateway("error").start().await;
    let client = connect_plain(strict.port, USER, PASSWORD)
        .await
        .expect("connect");
    client
        .simple_query("SET sluice.engine = 'distributed'")
        .await
        .expect("set");
    let err = client
        .simple_query("SELECT count(*) FROM nyc.trips WHERE fare_amount > 0")
        .await
        .expect_err("scheduler down");
    assert_eq!(sqlstate(&err), "08001", "{err:?}");
    let message = crate::harness::error_message(&err);
    assert!(
        message.contains("Ballista scheduler") && message.contains("unavailable"),
        "{message}"
    );
    // Statements that read no files never need the cluster; the session lives on.
    assert_eq!(
        text_rows(&client, "SELECT 1").await[0][0].as_deref(),
        Some("1")
    );

    let lenient = gateway("local").start().await;
    let (client, notices) = connect_app_noticed(lenient.port, USER, PASSWORD, "lenient").await;
    client
        .simple_query("SET sluice.engine = 'distributed'")
        .await
        .expect("set");
    let rows = text_rows(
        &client,
        "SELECT count(*) FROM nyc.trips WHERE fare_amount > 0",
    )
    .await;
    assert!(
        rows[0][0]
            .as_deref()
            .is_some_and(|n| n.parse::<u64>().unwrap_or(0) > 0),
        "{rows:?}"
    );
    let notices = notices.lock().expect("notices").clone();
    assert!(
        notices
            .iter()
            .any(|n| n.contains("unavailable") && n.contains("running on the gateway")),
        "{notices:?}"
    );
}
