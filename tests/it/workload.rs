//! Workload management against real peers: queues and monitoring rules on
//! statements relayed to the PostgreSQL stand-in (`redshift::Rig`), and a
//! scan-size rule on a Glue lake in moto, whose object reads the gateway counts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_postgres::NoTls;

use crate::glue::{
    PARQUET_INPUT, PARQUET_SERDE, TableSpec, create_database, create_table, parquet, put,
};
use crate::harness::{
    GatewayConfig, connect_app_noticed, error_message, http_get, metric, spawn_sluice, sqlstate,
};
use crate::moto::Moto;
use crate::postgres;
use crate::redshift::{Options, Rig};

fn workload_extra(admin: u16) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"

[audit]
[audit.file]
path = "audit/audit.jsonl"

[workload]
[[workload.queues]]
name = "reports"
users = ["alice"]
slots = 2

[[workload.queues]]
name = "tight"
applications = ["tight*"]
slots = 1
queue_timeout_secs = 1

[[workload.queues]]
name = "patient"
applications = ["patient*"]
slots = 1

[[workload.queues]]
name = "watched"
applications = ["watched*"]
slots = 4

[[workload.queues]]
name = "lakecap"
applications = ["lakecap*"]
routes = ["lake"]
slots = 2
row_limit = 5

[[workload.rules]]
name = "slow"
queues = ["watched"]
elapsed_secs_over = 1
action = "cancel"

[[workload.rules]]
name = "chatty"
queues = ["watched"]
rows_over = 3
action = "log"
"#
    )
}

async fn workload_rig() -> (Rig, u16) {
    let admin = postgres::free_port().expect("port");
    let rig = Rig::start(Options {
        extra: workload_extra(admin),
        ..Options::default()
    })
    .await;
    (rig, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_runs_its_slots_at_once_and_the_rest_wait_with_a_notice() {
    let (rig, _) = workload_rig().await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients
            .push(connect_app_noticed(rig.port, "alice", "alice-pw", &format!("report-{i}")).await);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (client, notices) in clients {
        tasks.push(tokio::spawn(async move {
            client
                .simple_query("SELECT pg_sleep(1)")
                .await
                .expect("the statement runs once admitted");
            let ended = start.elapsed();
            let waited = notices.lock().expect("notices").clone();
            (ended, waited, client)
        }));
    }
    let mut ends = Vec::new();
    let mut noticed = Vec::new();
    for t in tasks {
        let (ended, notices, _client) = t.await.expect("task");
        ends.push(ended);
        noticed.extend(notices);
    }
    ends.sort();
    // Two slots: at most two statements of one second run at once, so the k-th to
    // finish (from 0) cannot be done before (k / 2 + 1) seconds.
    for (k, end) in ends.iter().enumerate() {
        let earliest = Duration::from_millis(1000 * (k as u64 / 2 + 1) - 50);
        assert!(
            *end >= earliest,
            "statement {k} ended after {end:?}: {ends:?}"
        );
    }
    // The three that waited were told why.
    assert_eq!(noticed.len(), 3, "{noticed:?}");
    for n in &noticed {
        assert!(
            n.contains("workload queue \"reports\"") && n.contains("slots are busy"),
            "{n}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_timeouts_cancels_and_lost_upstreams_all_give_the_slot_back() {
    let (rig, _) = workload_rig().await;

    // The queue timeout: 53300, naming the queue.
    let (holder, _) = connect_app_noticed(rig.port, "bob", "bob-pw", "tight-holder").await;
    let held = tokio::spawn(async move { holder.simple_query("SELECT pg_sleep(3)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (waiter, notices) = connect_app_noticed(rig.port, "bob", "bob-pw", "tight-waiter").await;
    let e = waiter
        .simple_query("SELECT 1")
        .await
        .expect_err("no slot within the queue timeout");
    assert_eq!(sqlstate(&e), "53300", "{e:?}");
    assert!(error_message(&e).contains("\"tight\""), "{e:?}");
    assert_eq!(notices.lock().expect("notices").len(), 1);
    held.await.expect("task").expect("the holder finishes");
    // …and the slot is free again.
    waiter.simple_query("SELECT 1").await.expect("slot free");

    // A cancel while waiting in line.
    let (holder, _) = connect_app_noticed(rig.port, "bob", "bob-pw", "patient-holder").await;
    let held = tokio::spawn(async move {
        let r = holder.simple_query("SELECT pg_sleep(3)").await;
        (r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (waiter, notices) = connect_app_noticed(rig.port, "bob", "bob-pw", "patient-waiter").await;
    let cancel = waiter.cancel_token();
    let waiting = tokio::spawn(async move {
        let r = waiter.simple_query("SELECT 1").await;
        (r, Instant::now(), waiter)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while notices.lock().expect("notices").is_empty() {
        assert!(Instant::now() < deadline, "the waiter got no NOTICE");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel_query(NoTls).await.expect("cancel sent");
    let (r, canceled_at, waiter) = waiting.await.expect("task");
    let e = r.expect_err("canceled in line");
    assert_eq!(sqlstate(&e), "57014", "{e:?}");
    let (held_result, held_until) = held.await.expect("task");
    held_result.expect("the holder finishes");
    assert!(
        canceled_at < held_until,
        "the cancel did not wait for the slot"
    );

    // The upstream dies mid-statement: the slot comes back.
    let (victim, _) = connect_app_noticed(rig.port, "bob", "bob-pw", "patient-victim").await;
    let running = tokio::spawn(async move { victim.simple_query("SELECT pg_sleep(30)").await });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let killed = rig
            .pg
            .sql(
                "postgres",
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE query = 'SELECT pg_sleep(30)' AND pid <> pg_backend_pid()",
            )
            .expect("terminate");
        if killed.trim() == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the statement never reached the upstream: {killed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running
        .await
        .expect("task")
        .expect_err("the upstream session was terminated");
    let before = Instant::now();
    let notices_before = notices.lock().expect("notices").len();
    waiter.simple_query("SELECT 1").await.expect("slot free");
    assert!(before.elapsed() < Duration::from_secs(10));
    assert_eq!(
        notices.lock().expect("notices").len(),
        notices_before,
        "the statement did not have to wait"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_cancel_slow_upstream_statements_and_show_in_audit_metrics_and_query_groups() {
    let (rig, admin) = workload_rig().await;
    let (bob, _) = connect_app_noticed(rig.port, "bob", "bob-pw", "watched-app").await;
    let started = Instant::now();
    let e = bob
        .simple_query("SELECT pg_sleep(20)")
        .await
        .expect_err("cancelled by the rule");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "cancelled at its limit"
    );
    assert_eq!(sqlstate(&e), "57014", "{e:?}");
    assert!(
        error_message(&e).contains("workload rule \"slow\""),
        "{e:?}"
    );
    // The session carries on; a log rule fires on a statement returning 5 rows.
    let rows = bob
        .simple_query("SELECT id FROM public.sales ORDER BY id LIMIT 5")
        .await
        .expect("runs");
    assert_eq!(
        rows.len(),
        5 + 2,
        "5 rows, RowDescription and CommandComplete"
    );

    // A queue's row cap on the lake is exact, in both protocols.
    let (capped, _) = connect_app_noticed(rig.port, "bob", "bob-pw", "lakecap-app").await;
    for e in [
        capped
            .simple_query("SELECT zone FROM nyc.zones")
            .await
            .expect_err("capped"),
        capped
            .query("SELECT zone FROM nyc.zones", &[])
            .await
            .expect_err("capped"),
    ] {
        assert_eq!(sqlstate(&e), "54000", "{e:?}");
        assert!(
            error_message(&e).contains("row limit of workload queue \"lakecap\""),
            "{e:?}"
        );
    }
    let few = capped
        .query("SELECT zone FROM nyc.zones LIMIT 5", &[])
        .await
        .expect("at the cap is fine");
    assert_eq!(few.len(), 5);

    // Metrics, scraped from the gateway process.
    let (status, text) = http_get(admin, "/metrics", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &text,
            "sluice_workload_rule_actions_total{action=\"cancel\",rule=\"slow\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "sluice_workload_rule_actions_total{action=\"log\",rule=\"chatty\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "sluice_workload_queue_slots{queue=\"reports\"}"),
        2.0
    );

    // The audit trail names the queue and the rules.
    let path = rig.dir.path().join("audit/audit.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    let events: Vec<Value> = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|e: &Value| e["event"] == "statement" && e["user"] == "bob")
            .collect();
        if events.len() >= 2 {
            break events;
        }
        assert!(Instant::now() < deadline, "no statement events: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let slow = events
        .iter()
        .find(|e| e["statement"] == "SELECT pg_sleep(20)")
        .expect("the cancelled statement");
    assert_eq!(slow["queue"], "watched");
    assert_eq!(slow["rules"], serde_json::json!(["slow:cancel"]));
    assert_eq!(slow["sqlstate"], "57014");
    let chatty = events
        .iter()
        .find(|e| e["rows"] == 5)
        .expect("the five-row statement");
    assert_eq!(chatty["rules"], serde_json::json!(["chatty:log"]));

    // Query groups count the rule actions.
    let ops = rig.connect("ops", "ops-pw").await;
    let hits = ops
        .simple_query("SELECT sum(rule_actions) FROM sluice.query_groups WHERE user_name = 'bob'")
        .await
        .expect("query groups");
    let total = hits
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row");
    assert_eq!(total, "2");

    // The queues as an admin sees them.
    let queues = crate::harness::rows(&ops, "SHOW sluice.queues").await;
    let reports = queues
        .iter()
        .find(|r| r[0] == "reports")
        .unwrap_or_else(|| panic!("{queues:?}"));
    assert_eq!(&reports[1..5], ["normal", "2", "0", "0"]);
    assert!(
        queues
            .iter()
            .any(|r| r[0] == "default" && r[2] == "unlimited")
    );
    let alice = rig.alice().await;
    let e = alice
        .simple_query("SHOW sluice.queues")
        .await
        .expect_err("admins only");
    assert_eq!(sqlstate(&e), "42501");
}

/// moto's Glue + S3 with one table of two Parquet files, and a gateway process
/// whose `capped` role's queue refuses scans over 100 bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_rule_refuses_a_lake_query_before_any_object_is_read() {
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    let moto = Moto::start().expect("moto starts");
    let glue = moto.glue();
    let lake = moto.bucket("scanlake").expect("bucket");
    create_database(&glue, "wl").await;
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
    for part in 0..2 {
        let values: Vec<i64> = (0..1000).map(|i| i + part * 1000).collect();
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values))])
            .expect("batch");
        put(
            &lake,
            &format!("numbers/part-{part}.parquet"),
            parquet(&batch),
        )
        .await;
    }
    create_table(
        &glue,
        "wl",
        TableSpec {
            name: "numbers",
            columns: &[("n", "bigint")],
            partition_keys: &[],
            location: "s3://scanlake/numbers/".into(),
            serde: PARQUET_SERDE,
            input: PARQUET_INPUT,
            serde_params: &[],
            params: &[("classification", "parquet")],
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = postgres::free_port().expect("port");
    let admin = postgres::free_port().expect("port");
    let config = GatewayConfig::bare()
        .port(port)
        .auth(
            r#"
[[auth.users]]
name = "capped"
password = "capped-pw"
roles = ["reader", "capped"]
[[auth.users]]
name = "free"
password = "free-pw"
roles = ["reader"]
[[roles]]
name = "reader"
read = ["*"]
[[roles]]
name = "capped"
"#,
        )
        .lake(&format!(
            r#"
[lake.glue]
region = "us-east-1"
aws_endpoint = "{aws}"
[lake.glue.s3]
endpoint = "{aws}"
path_style = true
"#,
            aws = moto.endpoint()
        ))
        .extra(&format!(
            r#"
[admin]
listen = "127.0.0.1:{admin}"

[[workload.queues]]
name = "capped"
roles = ["capped"]
slots = 2

[[workload.rules]]
name = "big_scans"
queues = ["capped"]
scan_bytes_over = 100
action = "refuse"
"#
        ));
    let path = config.write(dir.path());
    let _sluice = spawn_sluice(&path, port, &[]).await;
    let gets = || async {
        let (_, text) = http_get(admin, "/metrics", None).await;
        metric(
            &text,
            "sluice_s3_requests_total{operation=\"get\",outcome=\"ok\"}",
        ) + metric(
            &text,
            "sluice_s3_requests_total{operation=\"get_range\",outcome=\"ok\"}",
        ) + metric(
            &text,
            "sluice_s3_requests_total{operation=\"get_ranges\",outcome=\"ok\"}",
        ) + metric(
            &text,
            "sluice_s3_requests_total{operation=\"head\",outcome=\"ok\"}",
        )
    };

    let capped = crate::harness::connect_plain(port, "capped", "capped-pw")
        .await
        .expect("connect");
    let before = gets().await;
    let e = capped
        .simple_query("SELECT count(*) FROM wl.numbers")
        .await
        .expect_err("refused by the scan rule");
    assert_eq!(sqlstate(&e), "54000", "{e:?}");
    assert!(
        error_message(&e).contains("workload rule \"big_scans\""),
        "{e:?}"
    );
    assert_eq!(
        gets().await,
        before,
        "no object was read before the refusal"
    );

    // The same query in a queue the rule does not watch reads the files (so the
    // counter above would have seen a read).
    let free = crate::harness::connect_plain(port, "free", "free-pw")
        .await
        .expect("connect");
    let rows = free
        .simple_query("SELECT count(*) FROM wl.numbers")
        .await
        .expect("runs");
    assert!(
        matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("2000"))
    );
    assert!(gets().await > before, "the free query read objects");
}
