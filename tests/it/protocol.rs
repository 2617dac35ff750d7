//! The wire protocol with tokio-postgres: extended protocol with parameters, binary
//! results, portals with max_rows, pipelining, session commands and transactions.

use chrono::{NaiveDate, NaiveDateTime};
use futures::{StreamExt, TryStreamExt};
use tokio_postgres::SimpleQueryMessage;

use crate::harness::{Gateway, column, rows, rows_of, sqlstate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_with_parameters() {
    let gw = Gateway::start().await;
    let client = gw.connect().await;
    let stmt = client
        .prepare("SELECT count(*) FROM nyc.trips WHERE passenger_count > $1 AND month = $2")
        .await
        .unwrap();
    assert_eq!(stmt.params().len(), 2);
    assert_eq!(stmt.params()[0], tokio_postgres::types::Type::INT4);
    let a: i64 = client
        .query_one(&stmt, &[&2i32, &"2024-03"])
        .await
        .unwrap()
        .get(0);
    let b: i64 = client
        .query_one(&stmt, &[&0i32, &"2024-03"])
        .await
        .unwrap()
        .get(0);
    assert!(a > 0 && b > a, "{a} {b}");
    assert_eq!(
        b, 100_000,
        "every trip of a month has at least one passenger"
    );
    // Text-format parameters through the simple "unnamed statement" path.
    let rows = client
        .query(
            "SELECT location_id, zone FROM nyc.zones WHERE location_id = $1",
            &[&7i64],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let zone: String = rows[0].get(1);
    assert!(zone.ends_with("Zone 7"), "{zone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_results_decode_to_the_right_values() {
    let gw = Gateway::start().await;
    let client = gw.connect().await;
    let row = client
        .query_one(
            "SELECT CAST(1 AS SMALLINT), CAST(2 AS INT), CAST(3 AS BIGINT), CAST(1.5 AS REAL), CAST(2.25 AS DOUBLE PRECISION), \
             'héllo', true, DATE '2024-01-02', TIMESTAMP '2024-01-02 03:04:05.5', CAST(NULL AS INT)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i16>(0), 1);
    assert_eq!(row.get::<_, i32>(1), 2);
    assert_eq!(row.get::<_, i64>(2), 3);
    assert_eq!(row.get::<_, f32>(3), 1.5);
    assert_eq!(row.get::<_, f64>(4), 2.25);
    assert_eq!(row.get::<_, String>(5), "héllo");
    assert!(row.get::<_, bool>(6));
    assert_eq!(
        row.get::<_, NaiveDate>(7),
        NaiveDate::from_ymd_opt(2024, 1, 2).unwrap()
    );
    let ts =
        NaiveDateTime::parse_from_str("2024-01-02 03:04:05.5", "%Y-%m-%d %H:%M:%S%.f").unwrap();
    assert_eq!(row.get::<_, NaiveDateTime>(8), ts);
    assert_eq!(row.get::<_, Option<i32>>(9), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portals_return_rows_in_max_rows_chunks() {
    let gw = Gateway::start().await;
    let mut client = gw.connect().await;
    let tx = client.transaction().await.unwrap();
    let portal = tx
        .bind(
            "SELECT trip_id FROM nyc.trips WHERE month = '2024-01' ORDER BY trip_id LIMIT 25",
            &[],
        )
        .await
        .unwrap();
    let mut all = vec![];
    for want in [10, 10, 5, 0] {
        let rows = tx.query_portal(&portal, 10).await.unwrap();
        assert_eq!(rows.len(), want);
        all.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
    }
    assert_eq!(all, (1..=25).collect::<Vec<i64>>());
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_each_get_their_answer() {
    let gw = Gateway::start().await;
    let client = gw.connect().await;
    let queries: Vec<_> = (0..20i64)
        .map(|i| {
            let c = &client;
            async move {
                c.query_one("SELECT CAST($1 AS BIGINT) * 2", &[&i])
                    .await
                    .map(|r| r.get::<_, i64>(0))
            }
        })
        .collect();
    let results = futures::future::join_all(queries).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as i64 * 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_stream() {
    let gw = Gateway::start().await;
    let client = gw.connect().await;
    let stream = client
        .query_raw(
            "SELECT trip_id, fare_amount FROM nyc.trips",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    let mut stream = Box::pin(stream);
    let mut count = 0u64;
    let mut sum = 0i64;
    while let Some(row) = stream.next().await {
        let row = row.unwrap();
        sum += row.get::<_, i64>(0);
        count += 1;
    }
    assert_eq!(count, 1_200_000);
    assert_eq!(sum, 1_200_000 * 1_200_001 / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_show_reset_and_discard() {
    let gw = Gateway::start().await;
    let client = gw.connect().await;
    assert_eq!(
        rows(&client, "SET application_name = 'it-test'; SHOW application_name; SET search_path TO nyc, public; SELECT count(*) FROM zones").await,
        [["it-test"], ["265"]]
    );
    assert_eq!(
        rows(&client, "RESET application_name; SHOW application_name").await,
        [[""]]
    );
    client
        .simple_query("SET TimeZone = 'Europe/Paris'")
        .await
        .unwrap();
    let v = rows(
        &client,
        "SELECT CAST(TIMESTAMP '2024-07-01 00:00:00' AS TIMESTAMPTZ)",
    )
    .await
    .remove(0)
    .remove(0);
    assert!(v.ends_with("+02"), "timestamptz in the session zone: {v}");
    client.simple_query("DISCARD ALL").await.unwrap();
    assert_eq!(
        rows(&client, "SHOW TimeZone; SHOW search_path").await,
        [["UTC"], ["\"$user\", public"]]
    );
    let err = client
        .simple_query("SET TimeZone = 'Mars/Base'")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22023");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_fail_and_recover_like_postgres() {
    let gw = Gateway::start().await;
    let client = gw.connect().await;
    client.simple_query("BEGIN").await.unwrap();
    assert!(client.simple_query("SELECT * FROM nope").await.is_err());
    let err = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "25P02");
    client.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(rows(&client, "SELECT 1").await, [["1"]]);
    // Read-only transactions work end to end.
    client
        .simple_query("BEGIN READ ONLY; SELECT 1; COMMIT")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_and_cancel_stop_long_queries() {
    let gw = Gateway::start().await;
    let client = gw.connect().await;
    let long = "SELECT count(*) FROM nyc.trips a JOIN nyc.trips b ON a.passenger_count = b.passenger_count";

    client
        .simple_query("SET statement_timeout = '300ms'")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = client.simple_query(long).await.unwrap_err();
    assert_eq!(sqlstate(&err), "57014", "{err}");
    assert!(
        err.to_string().contains("statement timeout")
            || format!("{err:?}").contains("statement timeout")
    );
    client
        .simple_query("SET statement_timeout = 0")
        .await
        .unwrap();

    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let err = client.simple_query(long).await.unwrap_err();
    assert_eq!(sqlstate(&err), "57014", "{err}");
    canceller.await.unwrap();
    // The session is still usable.
    let rows = client.query("SELECT 1", &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(started.elapsed().as_secs() < 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_functions_answer_like_postgres() {
    let gw = Gateway::start().await;
    let client = gw.connect().await;
    let row = client
        .query_one("SELECT version(), current_database(), current_schema(), current_user, pg_backend_pid()", &[])
        .await
        .unwrap();
    assert!(row.get::<_, String>(0).starts_with("PostgreSQL 15"));
    assert_eq!(row.get::<_, String>(1), "sluice");
    assert_eq!(row.get::<_, String>(2), "public");
    assert_eq!(row.get::<_, String>(3), "demo");
    assert!(row.get::<_, i32>(4) > 0);
    let tables = column(
        &client,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'nyc' ORDER BY table_name",
    )
    .await;
    assert_eq!(tables, vec!["trips", "vendors", "zones"]);
    let rows: Vec<_> = client
        .query_raw("SELECT * FROM nyc.trips LIMIT 3", std::iter::empty::<i32>())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_cursors_fetch_forward_in_chunks() {
    let gw = Gateway::start().await;
    let client = gw.connect().await;
    let err = client
        .simple_query("DECLARE c CURSOR FOR SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "25P01", "cursors need a transaction block");
    let msgs = client
        .simple_query(
            "BEGIN; DECLARE c CURSOR FOR SELECT trip_id FROM nyc.trips WHERE month = '2024-01' ORDER BY trip_id LIMIT 7; \
             FETCH 3 FROM c; FETCH FORWARD 3 FROM c; FETCH ALL FROM c; FETCH 1 FROM c",
        )
        .await
        .unwrap();
    let tags: Vec<u64> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect();
    // BEGIN, DECLARE, then FETCH 3, 3, 1, 0
    assert_eq!(&tags[2..], &[3, 3, 1, 0]);
    let ids: Vec<i64> = rows_of(&msgs)
        .iter()
        .map(|r| r[0].parse().unwrap())
        .collect();
    assert_eq!(ids, (1..=7).collect::<Vec<i64>>());
    client.simple_query("CLOSE c").await.unwrap();

    // PostgreSQL's other spellings: FROM/IN optional, MOVE (asyncpg's
    // Cursor.forward), and a clear refusal for backward motion.
    client
        .simple_query("DECLARE d CURSOR FOR SELECT trip_id FROM nyc.trips WHERE month = '2024-01' ORDER BY trip_id")
        .await
        .unwrap();
    let first = |msgs: Vec<SimpleQueryMessage>| -> Vec<String> {
        rows_of(&msgs).into_iter().map(|r| r[0].clone()).collect()
    };
    assert_eq!(
        first(client.simple_query("FETCH 2 d").await.unwrap()),
        ["1", "2"]
    );
    let moved = client.simple_query("MOVE FORWARD 10 \"d\"").await.unwrap();
    assert!(matches!(
        moved.last(),
        Some(SimpleQueryMessage::CommandComplete(10))
    ));
    assert!(rows_of(&moved).is_empty(), "MOVE sends no rows");
    assert_eq!(first(client.simple_query("FETCH d").await.unwrap()), ["13"]);
    let err = client.simple_query("MOVE BACKWARD 1 d").await.unwrap_err();
    assert_eq!(sqlstate(&err), "0A000");
    client.simple_query("ROLLBACK; BEGIN").await.unwrap();
    client.simple_query("COMMIT").await.unwrap();
    let err = client
        .simple_query("BEGIN; FETCH 1 FROM c")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "34000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_savepoint_recovers_a_failed_transaction() {
    let gw = Gateway::start().await;
    let client = gw.connect().await;
    client.simple_query("BEGIN; SAVEPOINT a").await.unwrap();
    assert!(client.simple_query("SELECT * FROM nope").await.is_err());
    // Extended protocol is refused too while the transaction is failed.
    let err = client.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "25P02");
    client
        .simple_query("ROLLBACK TO SAVEPOINT a")
        .await
        .unwrap();
    assert_eq!(client.query("SELECT 1", &[]).await.unwrap().len(), 1);
    client
        .simple_query("RELEASE SAVEPOINT a; COMMIT")
        .await
        .unwrap();
    let err = client
        .simple_query("ROLLBACK TO SAVEPOINT a")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "25P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_list_integer_literals_are_typed_as_postgres_types_them() {
    let gw = Gateway::start().await;
    let client = gw.connect().await;
    let row = client
        .query_one("SELECT 1 AS one, -7, 2147483648 AS big, 1 + 1 AS sum", &[])
        .await
        .unwrap();
    let types: Vec<&str> = row.columns().iter().map(|c| c.type_().name()).collect();
    // `1 + 1` stays bigint: DataFusion's 32-bit arithmetic wraps where PostgreSQL
    // raises "integer out of range".
    assert_eq!(types, ["int4", "int4", "int8", "int8"]);
    assert_eq!(row.columns()[1].name(), "?column?");
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(row.get::<_, i32>(1), -7);
}
