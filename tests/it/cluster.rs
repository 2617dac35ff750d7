//! Several gateway processes as one service (`[cluster]`, shared view storage):
//! real `sluice` processes on one machine sharing moto's S3 and one PostgreSQL
//! stand-in for Redshift.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use crate::harness::{rows, scalar, sqlstate};
use crate::postgres;
use crate::redshift::{MOTO_S3, Options, Rig};

/// Views in moto's S3; the refresh role reads the lake. Other gateways' changes are
/// read every 3 s — slower than the 1 s scheduler, so every gateway reaches each
/// tick before it hears of its refresh, and the leases alone keep refreshes single.
const SHARED_VIEWS: &str = r#"
[materialized_views]
schemas = ["mv"]
storage = "s3://shared/views"
refresh_roles = ["mv_refresh"]
keep_replaced_secs = 30
sync_ms = 3000

[[roles]]
name = "mv_refresh"
read = ["*"]
"#;

/// Polls `sql` on `c` until `done` holds for its rows (or its error's SQLSTATE),
/// at most `within`; returns the last answer and how long it took.
async fn wait_for(
    c: &Client,
    sql: &str,
    within: Duration,
    done: impl Fn(&Result<Vec<Vec<String>>, String>) -> bool,
) -> (Result<Vec<Vec<String>>, String>, Duration) {
    let started = Instant::now();
    loop {
        let answer = match c.simple_query(sql).await {
            Ok(msgs) => Ok(crate::harness::rows_of(&msgs)),
            Err(e) => Err(sqlstate(&e)),
        };
        if done(&answer) || started.elapsed() > within {
            return (answer, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_sharing_a_view_storage_serve_the_same_views() {
    let rig = Rig::start(Options {
        extra: format!("{MOTO_S3}{SHARED_VIEWS}"),
        buckets: vec!["shared"],
        ..Options::default()
    })
    .await;
    let two = rig.another_gateway(&[]).await;
    let three = rig.another_gateway(&[]).await;
    // ops (admin) manages views; alice (who may read everything) reads them.
    let ops1 = rig.connect("ops", "ops-pw").await;
    let ops2 = two.connect("ops", "ops-pw").await;
    let ops3 = three.connect("ops", "ops-pw").await;
    let alice1 = rig.alice().await;
    let alice2 = two.connect("alice", "alice-pw").await;
    let alice3 = three.connect("alice", "alice-pw").await;

    // Created on one gateway: readable on the others within seconds.
    ops1.batch_execute(
        "CREATE MATERIALIZED VIEW mv.vendors AS \
         SELECT vendor_id, count(*) AS trips FROM nyc.trips GROUP BY vendor_id",
    )
    .await
    .expect("create on gateway 1");
    let select = "SELECT vendor_id, trips FROM mv.vendors ORDER BY 1";
    let expected = rows(&alice1, select).await;
    assert!(expected.len() >= 2, "{expected:?}");
    for (n, c) in [(2, &alice2), (3, &alice3)] {
        let (answer, took) = wait_for(c, select, Duration::from_secs(10), |a| {
            a.as_ref() == Ok(&expected)
        })
        .await;
        assert_eq!(answer, Ok(expected.clone()), "gateway {n}");
        eprintln!("view created on gateway 1 readable on gateway {n} after {took:?}");
    }

    // A scheduled refresh runs once per tick across the three gateways, and readers
    // everywhere keep answering while versions are replaced and deleted.
    ops2.batch_execute(
        "CREATE MATERIALIZED VIEW mv.ticking WITH (refresh_every_secs = 1) AS \
         SELECT count(*) AS n FROM nyc.trips",
    )
    .await
    .expect("create a scheduled view on gateway 2");
    let count = "SELECT n FROM mv.ticking";
    let total = scalar(&alice2, count).await;
    for c in [&alice1, &alice3] {
        let (answer, _) = wait_for(c, count, Duration::from_secs(10), |a| a.is_ok()).await;
        assert_eq!(answer, Ok(vec![vec![total.clone()]]));
    }
    let requests_before = rig.moto.requests().len();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        for c in [&alice1, &alice2, &alice3] {
            assert_eq!(scalar(c, count).await, total, "read during refreshes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests: Vec<String> = rig.moto.requests()[requests_before..].to_vec();
    let data_puts = requests
        .iter()
        .filter(|l| l.contains("PUT /shared/views/mv/ticking/data/"))
        .count();
    let lease_puts = requests
        .iter()
        .filter(|l| l.contains("PUT /shared/views/_views/leases/mv/ticking/"))
        .count();
    let lost = requests
        .iter()
        .filter(|l| l.contains("/_views/leases/mv/ticking/") && l.contains(" 412 "))
        .count();
    eprintln!("{elapsed:.1} s: {data_puts} refreshes, {lease_puts} lease attempts, {lost} lost");
    assert!(
        data_puts >= 4,
        "the view refreshes every second: {data_puts}"
    );
    assert!(
        data_puts as f64 <= elapsed + 2.0,
        "one refresh per tick, not one per gateway: {data_puts} in {elapsed:.1} s"
    );
    assert!(
        lease_puts >= 2 * data_puts && lost >= data_puts,
        "every gateway claims each tick, all but one lose: {lease_puts} claims, {lost} lost, {data_puts} refreshes"
    );

    // Dropped on one gateway: gone on the others.
    ops3.batch_execute("DROP MATERIALIZED VIEW mv.vendors")
        .await
        .expect("drop on gateway 3");
    for (n, c) in [(1, &alice1), (2, &alice2)] {
        let (answer, _) = wait_for(c, select, Duration::from_secs(10), |a| {
            a.as_ref().err().is_some_and(|code| code == "42P01")
        })
        .await;
        assert_eq!(answer, Err("42P01".to_string()), "gateway {n}");
    }
    // Re-created under the same name elsewhere: everyone serves the new one.
    ops2.batch_execute(
        "CREATE MATERIALIZED VIEW mv.vendors AS \
         SELECT vendor_id, count(*) * 2 AS trips FROM nyc.trips GROUP BY vendor_id",
    )
    .await
    .expect("re-create on gateway 2");
    let again = rows(&alice2, select).await;
    assert_ne!(again, expected);
    for (n, c) in [(1, &alice1), (3, &alice3)] {
        let (answer, _) = wait_for(c, select, Duration::from_secs(10), |a| {
            a.as_ref() == Ok(&again)
        })
        .await;
        assert_eq!(answer, Ok(again.clone()), "gateway {n}");
    }
}

/// Sends `client`'s cancel request to the gateway on `port` after `delay`.
fn cancel_at(
    client: &Client,
    port: u16,
    delay: Duration,
) -> tokio::task::JoinHandle<Result<(), tokio_postgres::Error>> {
    let token = client.cancel_token();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the other gateway");
        token.cancel_query_raw(tcp, NoTls).await
    })
}

/// Two gateways with `[cluster]`: the rig's (gateway 1) and another (gateway 2).
fn cluster_section(port2: u16) -> String {
    format!(
        r#"{MOTO_S3}
[cache]
result_ttl_secs = 300

[cluster]
gateway_id = 1
storage = "s3://shared/cluster"
poll_ms = 200
[cluster.peers]
1 = "127.0.0.1:{{port}}"
2 = "127.0.0.1:{port2}"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_cancels_reach_the_other_gateway() {
    let port2 = postgres::free_port().expect("port");
    let rig = Rig::start(Options {
        extra: cluster_section(port2),
        buckets: vec!["shared"],
        ..Options::default()
    })
    .await;
    let two = rig
        .another_gateway_on(port2, &[("gateway_id = 1", "gateway_id = 2")])
        .await;

    // Gateway 2 caches a read.
    let alice2 = two.connect("alice", "alice-pw").await;
    let count = "SELECT count(*) FROM public.sales";
    assert_eq!(scalar(&alice2, count).await, "1000");
    // A row added behind Sluice's back: gateway 2 still answers from its cache.
    rig.pg
        .sql("dev", "INSERT INTO public.sales VALUES (2001, 'east', 1)")
        .expect("insert upstream");
    assert_eq!(scalar(&alice2, count).await, "1000", "cached");
    // A write through gateway 1 reaches gateway 2's cache within the bound
    // (2 × poll_ms plus S3's latency; the test allows 10 s).
    let bob1 = rig.bob().await;
    bob1.batch_execute("INSERT INTO public.sales VALUES (2002, 'west', 2)")
        .await
        .expect("write through gateway 1");
    let (answer, took) = wait_for(&alice2, count, Duration::from_secs(10), |a| {
        a.as_ref() == Ok(&vec![vec!["1002".to_string()]])
    })
    .await;
    assert_eq!(answer, Ok(vec![vec!["1002".to_string()]]));
    eprintln!("a write through gateway 1 left gateway 2's cache after {took:?}");

    // A cancel for a session on gateway 1, sent to gateway 2, stops the statement.
    let alice1 = rig.alice().await;
    let canceller = cancel_at(&alice1, port2, Duration::from_millis(700));
    let started = Instant::now();
    let err = alice1
        .simple_query("SELECT pg_sleep(30)")
        .await
        .expect_err("cancelled");
    assert_eq!(sqlstate(&err), "57014", "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    canceller
        .await
        .expect("canceller")
        .expect("cancel request sent");
    // The session goes on; so does a lake statement cancelled the same way.
    assert_eq!(scalar(&alice1, "SELECT 1").await, "1");
    let canceller = cancel_at(&alice1, port2, Duration::from_millis(500));
    let long = "SELECT count(*) FROM nyc.trips a JOIN nyc.trips b ON a.passenger_count = b.passenger_count";
    let err = alice1.simple_query(long).await.expect_err("cancelled");
    assert_eq!(sqlstate(&err), "57014", "{err:?}");
    let _ = canceller.await;
}
