//! psql against the demo catalog: meta-commands and a NYC-taxi aggregate checked
//! against DataFusion run in-process on the same files.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;

use crate::harness::{Gateway, demo_dir, stderr, stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_commands_list_the_demo_catalog() {
    let gw = Gateway::start().await;
    let out = gw.psql(&["-c", "\\dn"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("nyc"), "{}", stdout(&out));

    let out = gw.psql(&["-c", "\\dt nyc.*"]).await;
    let text = stdout(&out);
    for table in ["trips", "zones", "vendors"] {
        assert!(text.contains(table), "\\dt lacks {table}: {text}");
    }

    let out = gw.psql(&["-c", "\\d nyc.trips"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("fare_amount"), "{text}");
    assert!(text.contains("double precision"), "{text}");
    assert!(text.contains("timestamp without time zone"), "{text}");
    assert!(text.contains("month"), "partition column missing: {text}");

    let out = gw.psql(&["-c", "\\l"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("sluice"), "{}", stdout(&out));
}

/// Average fare per pickup hour, computed by DataFusion directly on the Parquet files.
async fn expected_hourly_fares() -> Vec<(i64, f64)> {
    let ctx = SessionContext::new();
    let path = format!("{}/", demo_dir().join("nyc").join("trips").display());
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("month".into(), DataType::Utf8)]);
    let url = ListingTableUrl::parse(&path).unwrap();
    let schema = options.infer_schema(&ctx.state(), &url).await.unwrap();
    let table = ListingTable::try_new(
        ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(schema),
    )
    .unwrap();
    ctx.register_table("trips", Arc::new(table)).unwrap();
    let batches = ctx
        .sql("SELECT CAST(EXTRACT(HOUR FROM pickup_datetime) AS BIGINT) AS h, avg(fare_amount) AS a FROM trips GROUP BY 1 ORDER BY 1")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = vec![];
    for b in batches {
        let h = b
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let a = b.column(1).as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            assert!(!a.is_null(i));
            out.push((h.value(i), a.value(i)));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nyc_taxi_aggregate_matches_datafusion_in_process() {
    let gw = Gateway::start().await;
    let out = gw
        .psql(&[
            "-A",
            "-t",
            "-F",
            ",",
            "-c",
            "SELECT EXTRACT(HOUR FROM pickup_datetime) AS hour, avg(fare_amount) FROM nyc.trips GROUP BY 1 ORDER BY 1",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let got: Vec<(i64, f64)> = stdout(&out)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (h, a) = l.split_once(',').expect("two columns");
            (
                h.trim().parse::<f64>().unwrap() as i64,
                a.trim().parse::<f64>().unwrap(),
            )
        })
        .collect();
    let want = expected_hourly_fares().await;
    assert_eq!(got.len(), 24);
    assert_eq!(got.len(), want.len());
    for ((gh, ga), (wh, wa)) in got.iter().zip(&want) {
        assert_eq!(gh, wh);
        // Parallel aggregation may add in a different order: allow a few ULPs.
        assert!(
            (ga - wa).abs() <= wa.abs() * 1e-12,
            "hour {gh}: {ga} vs {wa}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_json_tables_and_multi_statement_strings() {
    let gw = Gateway::start().await;
    let out = gw
        .psql(&["-A", "-t", "-c", "SELECT count(*), count(DISTINCT borough) FROM nyc.zones; SELECT name FROM nyc.vendors ORDER BY vendor_id"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        vec!["265|6", "Creative Mobile Technologies", "VeriFone Inc."],
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_postgres_sqlstates() {
    let gw = Gateway::start().await;
    for (sql, code) in [
        ("SELECT * FROM nope", "42P01"),
        ("SELEC 1", "42601"),
        ("SELECT nope FROM nyc.trips", "42703"),
        ("INSERT INTO nyc.zones VALUES (1, 'a', 'b', 'c')", "25006"),
        ("SET no_such_parameter = 1", "42704"),
    ] {
        let out = gw.psql(&["-v", "VERBOSITY=verbose", "-c", sql]).await;
        assert!(!out.status.success(), "{sql} should fail");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("ERROR:  {code}")),
            "{sql}: expected {code}, got {err}"
        );
    }
    let out = gw.psql(&["-c", "SELECT * FROM nope"]).await;
    assert!(
        stderr(&out).contains("relation \"nope\" does not exist"),
        "{}",
        stderr(&out)
    );
}

/// Catalog queries captured from real clients (Npgsql's type loading as Power BI sends
/// it at connect, Power BI's information_schema navigator, pgjdbc's metadata queries),
/// replayed through psql: every statement must run without error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_client_catalog_queries_run() {
    let gw = Gateway::start().await;
    let dir = crate::harness::clients_dir().join("sql");
    for file in [
        "npgsql40_types.sql",
        "npgsql5_types.sql",
        "npgsql8_types.sql",
        "powerbi_information_schema.sql",
        "pgjdbc_metadata.sql",
        "psql_describe.sql",
    ] {
        let path = dir.join(file);
        let out = gw.psql(&["-q", "-f", path.to_str().unwrap()]).await;
        assert!(out.status.success(), "{file} failed: {}", stderr(&out));
    }
    // Power BI reads column types from information_schema.columns: PostgreSQL names.
    let out = gw
        .psql(&[
            "-A",
            "-t",
            "-c",
            "SELECT column_name, ordinal_position, data_type FROM information_schema.columns \
             WHERE table_schema = 'nyc' AND table_name = 'trips' AND column_name IN ('vendor_id', 'pickup_datetime', 'fare_amount') \
             ORDER BY ordinal_position",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        vec![
            "vendor_id|1|integer",
            "pickup_datetime|2|timestamp without time zone",
            "fare_amount|8|double precision"
        ]
    );
}
