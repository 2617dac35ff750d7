//! Delta Lake and Apache Iceberg tables in the Glue lake, written by their own
//! writers (PyPI `deltalake` and `pyiceberg`, `tests/support/open_formats.py`) into
//! moto's S3 and Glue, read through the real `sluice` binary and compared with
//! DuckDB's delta and iceberg readers and with the writers' own readers.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::glue::{PARQUET_INPUT, PARQUET_SERDE, TableSpec, create_table};
use crate::harness::{GatewayConfig, connect_plain, error_message, rows, spawn_sluice, sqlstate};
use crate::lake_answers::{assert_same_rows, text_rows};
use crate::moto::Moto;

/// Runs one job of `open_formats.py`.
fn writers(job: serde_json::Value) -> serde_json::Value {
    crate::nyc_lake::open_formats(&job).unwrap_or_else(|e| panic!("{job}: {e}"))
}

/// One version of a table as its writer reads it.
#[derive(Debug, Clone, serde::Deserialize)]
struct Version {
    version: i64,
    timestamp_ms: i64,
    rows: i64,
    id_sum: i64,
}

struct Rig {
    moto: Moto,
    _sluice: tokio::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
    versions: HashMap<String, Vec<Version>>,
    metadata: HashMap<String, String>,
}

const AUTH: &str = r#"
[[auth.users]]
name = "admin"
password = "admin-pw"
roles = ["everything"]
[[auth.users]]
name = "analyst"
password = "analyst-pw"
roles = ["sales_only"]

[[roles]]
name = "everything"
read = ["*"]
admin = true
[[roles]]
name = "sales_only"
read = ["open.d_sales", "open.i_sales"]
[[roles]]
name = "view_refresh"
read = ["*"]

[cache]
result_ttl_secs = 300

[materialized_views]
schemas = ["mv"]
storage = "views"
refresh_roles = ["view_refresh"]

[[materialized_views.views]]
name = "mv.iceberg_regions"
query = "SELECT region, count(*) AS n, sum(amount) AS total FROM open.i_sales GROUP BY region"
refresh_every_secs = 3600
"#;

impl Rig {
    async fn start() -> Rig {
        let moto = Moto::start().expect("moto starts");
        moto.bucket("lake").expect("bucket");
        let written = writers(serde_json::json!({
            "do": "write", "endpoint": moto.endpoint(), "database": "open",
        }));
        let versions: HashMap<String, Vec<Version>> =
            serde_json::from_value(written["versions"].clone()).expect("versions");
        let metadata: HashMap<String, String> =
            serde_json::from_value(written["metadata"].clone()).expect("metadata");
        // A plain Parquet table over one Delta partition's files: no versions.
        create_table(
            &moto.glue(),
            "open",
            TableSpec {
                name: "plain_eu",
                columns: &[("id", "bigint"), ("amount", "double")],
                partition_keys: &[],
                location: "s3://lake/delta/sales/region=eu/".into(),
                serde: PARQUET_SERDE,
                input: PARQUET_INPUT,
                serde_params: &[],
                params: &[],
            },
        )
        .await;
        // A Delta table on the gateway's own disk, which this catalog does not allow.
        create_table(
            &moto.glue(),
            "open",
            TableSpec {
                name: "d_local",
                columns: &[],
                partition_keys: &[],
                location: "file:///etc/".into(),
                serde: PARQUET_SERDE,
                input: PARQUET_INPUT,
                serde_params: &[],
                params: &[("table_type", "DELTA")],
            },
        )
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let port = crate::postgres::free_port().expect("port");
        // A one-second listing age: a commit is seen a second later.
        let lake = format!(
            "[lake.glue]\nregion = \"us-east-1\"\naws_endpoint = \"{aws}\"\nlisting_ttl_secs = 1\n\
             [lake.glue.s3]\nendpoint = \"{aws}\"\npath_style = true\n",
            aws = moto.endpoint(),
        );
        let path = GatewayConfig::bare()
            .port(port)
            .auth(AUTH)
            .lake(&lake)
            .write(dir.path());
        let sluice = spawn_sluice(&path, port, &[]).await;
        Rig {
            moto,
            _sluice: sluice,
            port,
            _dir: dir,
            versions,
            metadata,
        }
    }

    async fn connect(&self, user: &str, password: &str) -> Client {
        connect_plain(self.port, user, password)
            .await
            .expect("connect")
    }

    fn versions(&self, table: &str) -> &[Version] {
        self.versions
            .get(table)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// S3 object keys moto served since request `from`.
    fn touched(&self, from: usize, part: &str) -> Vec<String> {
        self.moto.requests()[from..]
            .iter()
            .filter(|l| l.contains("GET /lake/") && l.contains(part))
            .cloned()
            .collect()
    }
}

/// The queries both sides answer: `{t}` is the table (Sluice's name, DuckDB's scan).
const QUERIES: &[(&str, &str, &str)] = &[
    (
        "events_totals",
        "events",
        "SELECT count(*), sum(id), min(id), max(id), round(sum(amount), 4), count(note) FROM {t}",
    ),
    (
        "events_rows",
        "events",
        "SELECT id, name, amount, note FROM {t} WHERE id BETWEEN 2995 AND 3004 ORDER BY id",
    ),
    (
        "events_groups",
        "events",
        "SELECT name, count(*), round(avg(amount), 6) FROM {t} WHERE amount > 50 \
         GROUP BY name ORDER BY name",
    ),
    (
        "sales_regions",
        "sales",
        "SELECT region, count(*), sum(id), round(sum(amount), 4) FROM {t} GROUP BY region ORDER BY region",
    ),
    (
        "sales_eu",
        "sales",
        "SELECT count(*), round(sum(amount), 4) FROM {t} WHERE region = 'eu'",
    ),
    (
        "days_one",
        "days",
        "SELECT count(*), sum(id), min(id), max(id) FROM {t} \
         WHERE ts >= TIMESTAMP '2024-03-05 00:00:00' AND ts < TIMESTAMP '2024-03-06 00:00:00'",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_and_iceberg_tables_answer_as_duckdb_and_prune_files() {
    let rig = Rig::start().await;
    let c = rig.connect("admin", "admin-pw").await;

    // Every query on every table of its kind, against DuckDB's delta_scan and
    // iceberg_scan over the same objects.
    let mut sides: Vec<(String, String, String, &str)> = Vec::new();
    for (name, kind, sql) in QUERIES {
        let mut tables = vec![(
            format!("open.i_{kind}"),
            format!("iceberg_scan('{}')", rig.metadata[&format!("i_{kind}")]),
        )];
        if *kind != "days" {
            tables.push((
                format!("open.d_{kind}"),
                format!("delta_scan('s3://lake/delta/{kind}')"),
            ));
        }
        for (ours, theirs) in tables {
            sides.push((
                format!("{name} {ours}"),
                sql.replace("{t}", &ours),
                sql.replace("{t}", &theirs),
                name,
            ));
        }
    }
    let duck = writers(serde_json::json!({
        "do": "duckdb",
        "endpoint": rig.moto.endpoint(),
        "queries": sides.iter().map(|(n, _, d, _)| [n.clone(), d.clone()]).collect::<Vec<_>>(),
    }));
    for (name, ours, _, _) in &sides {
        let expected: Vec<Vec<Option<String>>> =
            serde_json::from_value(duck[name].clone()).expect("DuckDB rows");
        assert!(!expected.is_empty(), "{name}: DuckDB returned no rows");
        let got = text_rows(&c, ours).await;
        assert_same_rows(name, &got, &expected, "DuckDB");
    }
    // The deletes, the overwrite and the added column are all there.
    let totals = text_rows(
        &c,
        "SELECT count(*), min(id), count(note) FROM open.d_events",
    )
    .await;
    assert_eq!(
        totals[0],
        [Some("3000".into()), Some("100".into()), Some("100".into())]
    );

    // Listings show each table's own schema, the added column included, with
    // PostgreSQL types.
    for table in ["d_events", "i_events"] {
        let columns = rows(
            &c,
            &format!(
                "SELECT column_name, data_type FROM information_schema.columns \
                 WHERE table_schema = 'open' AND table_name = '{table}' ORDER BY ordinal_position"
            ),
        )
        .await;
        let names: Vec<&str> = columns.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(names, ["id", "name", "amount", "ts", "note"], "{table}");
        assert_eq!(columns[0][1], "bigint", "{table}");
        assert!(
            columns[3][1].starts_with("timestamp"),
            "{table}: {columns:?}"
        );
    }
    let listed = rows(
        &c,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'open' ORDER BY 1",
    )
    .await
    .concat();
    for t in ["d_events", "d_sales", "i_days", "i_events", "i_sales"] {
        assert!(listed.iter().any(|l| l == t), "{t} listed: {listed:?}");
    }

    // Partition pruning: one region's files of the partitioned tables, one day's
    // file of the day-partitioned Iceberg table.
    for (table, part) in [
        ("d_sales", "delta/sales/"),
        ("i_sales", "iceberg/sales/data"),
    ] {
        let before = rig.moto.requests().len();
        rows(
            &c,
            &format!("SELECT sum(amount) FROM open.{table} WHERE region = 'us'"),
        )
        .await;
        let read: Vec<String> = rig
            .touched(before, part)
            .into_iter()
            .filter(|l| l.contains(".parquet"))
            .collect();
        assert!(!read.is_empty(), "{table}: no data file read");
        assert!(
            read.iter().all(|l| l.contains("region=us")),
            "{table}: files of other regions read: {read:#?}"
        );
    }
    let before = rig.moto.requests().len();
    rows(
        &c,
        "SELECT count(*) FROM open.i_days \
         WHERE ts >= TIMESTAMP '2024-03-05 00:00:00' AND ts < TIMESTAMP '2024-03-06 00:00:00'",
    )
    .await;
    let read: Vec<String> = rig
        .touched(before, "iceberg/days/data")
        .into_iter()
        .filter(|l| l.contains(".parquet"))
        .collect();
    assert!(
        !read.is_empty() && read.iter().all(|l| l.contains("ts_day=2024-03-05")),
        "{read:#?}"
    );

    // Tables Sluice cannot read correctly are refused, naming why.
    let e = c
        .simple_query("SELECT count(*) FROM open.d_future")
        .await
        .expect_err("unknown reader feature");
    assert_eq!(sqlstate(&e), "0A000", "{}", error_message(&e));
    assert!(
        error_message(&e).contains("d_future"),
        "{}",
        error_message(&e)
    );
    let e = c
        .simple_query("SELECT count(*) FROM open.i_renamed")
        .await
        .expect_err("renamed column");
    assert_eq!(sqlstate(&e), "0A000");
    assert!(
        error_message(&e).contains("renamed"),
        "{}",
        error_message(&e)
    );
    let e = c
        .simple_query("SELECT * FROM open.d_local")
        .await
        .expect_err("local disk refused");
    assert!(
        error_message(&e).contains("local disk"),
        "{}",
        error_message(&e)
    );
    // The gateway is fine afterwards.
    assert_eq!(
        rows(&c, "SELECT count(*) FROM open.i_sales").await[0][0],
        "1100"
    );

    // A materialized view over an Iceberg table, and the result cache.
    let direct = text_rows(
        &c,
        "SELECT region, count(*), sum(amount) FROM open.i_sales GROUP BY region ORDER BY region",
    )
    .await;
    let mut view = Vec::new();
    for _ in 0..100 {
        match c
            .simple_query("SELECT region, n, total FROM mv.iceberg_regions ORDER BY region")
            .await
        {
            Ok(_) => {
                view = text_rows(
                    &c,
                    "SELECT region, n, total FROM mv.iceberg_regions ORDER BY region",
                )
                .await;
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    assert_eq!(view, direct, "the view holds the Iceberg table's answer");
    let before = cache_hits(&c).await;
    let sql = "SELECT region, max(amount) FROM open.d_sales GROUP BY region ORDER BY region";
    let first = text_rows(&c, sql).await;
    assert_eq!(text_rows(&c, sql).await, first);
    let after = cache_hits(&c).await;
    assert!(
        after > before,
        "the repeated statement was served from the cache"
    );
}

async fn cache_hits(c: &Client) -> u64 {
    let msgs = c
        .simple_query("SHOW sluice.result_cache")
        .await
        .expect("show");
    msgs.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("hits").map(str::to_owned),
            _ => None,
        })
        .and_then(|h| h.parse().ok())
        .expect("hits")
}

/// `yyyyMMddHHmmssSSS` of a time in milliseconds (UTC).
fn stamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("time")
        .format("%Y%m%d%H%M%S%3f")
        .to_string()
}

async fn count_and_sum(c: &Client, table: &str) -> (i64, i64) {
    count_and_sum_where(c, table, "true").await
}

async fn count_and_sum_where(c: &Client, table: &str, filter: &str) -> (i64, i64) {
    let r = rows(
        c,
        &format!("SELECT count(*), coalesce(sum(id), 0) FROM open.\"{table}\" WHERE {filter}"),
    )
    .await;
    (
        r[0][0].parse().expect("count"),
        r[0][1].parse().expect("sum"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_travel_reads_older_versions_and_new_commits_are_seen() {
    let rig = Rig::start().await;
    let c = rig.connect("admin", "admin-pw").await;

    // Every version by number (Delta) and snapshot id (Iceberg).
    for table in ["d_events", "d_sales", "i_events", "i_sales"] {
        let versions = rig.versions(table);
        assert!(versions.len() >= 3, "{table}: {versions:?}");
        for v in versions {
            assert_eq!(
                count_and_sum(&c, &format!("{table}@v{}", v.version)).await,
                (v.rows, v.id_sum),
                "{table} at version {}",
                v.version
            );
        }
    }
    // An older version has the older schema: no `note` before it was added.
    let e = c
        .simple_query("SELECT note FROM open.\"d_events@v0\"")
        .await
        .expect_err("no note at v0");
    assert_eq!(sqlstate(&e), "42703", "{}", error_message(&e));

    // By time: each Iceberg snapshot's own commit time, and the Delta commits a
    // second apart.
    for table in ["i_events", "d_sales"] {
        for v in rig.versions(table) {
            assert_eq!(
                count_and_sum(&c, &format!("{table}@{}", stamp(v.timestamp_ms))).await,
                (v.rows, v.id_sum),
                "{table} as of {}",
                v.timestamp_ms
            );
        }
    }

    // Versions that do not exist, and names that are not versions.
    let first = rig.versions("i_events")[0].timestamp_ms;
    for name in [
        "d_events@v99".to_owned(),
        "i_events@v12345".to_owned(),
        format!("i_events@{}", stamp(first - 60_000)),
        "d_events@yesterday".to_owned(),
    ] {
        let e = c
            .simple_query(&format!("SELECT count(*) FROM open.\"{name}\""))
            .await
            .expect_err(&name);
        assert_eq!(sqlstate(&e), "22023", "{name}: {}", error_message(&e));
    }
    let e = c
        .simple_query("SELECT count(*) FROM open.\"plain_eu@v1\"")
        .await
        .expect_err("no versions");
    assert_eq!(sqlstate(&e), "0A000", "{}", error_message(&e));
    // (Read as plain Parquet, the folder holds the overwritten files too.)
    assert_eq!(
        rows(&c, "SELECT count(*) FROM open.plain_eu").await[0][0],
        "800"
    );

    // The policy grants the base table: the analyst reads sales at any version
    // and no version of the events.
    let analyst = rig.connect("analyst", "analyst-pw").await;
    let v0 = &rig.versions("i_sales")[0];
    assert_eq!(
        count_and_sum(&analyst, &format!("i_sales@v{}", v0.version)).await,
        (v0.rows, v0.id_sum)
    );
    let e = analyst
        .simple_query("SELECT count(*) FROM open.\"d_events@v1\"")
        .await
        .expect_err("not granted");
    assert_eq!(sqlstate(&e), "42501", "{}", error_message(&e));

    // New commits are read without a catalog refresh (within the listing age). The
    // statements differ from the ones before, which the result cache holds.
    let before_delta = count_and_sum(&c, "d_events").await;
    let before_iceberg = count_and_sum(&c, "i_events").await;
    writers(serde_json::json!({
        "do": "append", "endpoint": rig.moto.endpoint(), "database": "open",
    }));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let added = (10, (5000..5010).sum::<i64>());
    assert_eq!(
        count_and_sum_where(&c, "d_events", "id >= 0").await,
        (before_delta.0 + added.0, before_delta.1 + added.1)
    );
    assert_eq!(
        count_and_sum_where(&c, "i_events", "id >= 0").await,
        (before_iceberg.0 + added.0, before_iceberg.1 + added.1)
    );
}

/// The lake query set (what `benches/lake` times) gives the same answers over the
/// same trips as Parquet, as Delta and as Iceberg (the benchmark's tables, at a
/// debug-friendly size); `lake_answers.rs` holds the Parquet answers to DuckDB's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lake_query_set_answers_alike_on_parquet_delta_and_iceberg() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("lake");
    sluice::lake::demo::ensure_sized(&data, 5_000).expect("data generated");
    let moto = Moto::start().expect("moto starts");
    crate::nyc_lake::load_glue(&moto, &data, "nyc", None)
        .await
        .expect("trips in moto");
    writers(serde_json::json!({
        "do": "nyc", "endpoint": moto.endpoint(), "root": data.display().to_string(),
        "database": "nyc_formats",
    }));
    let port = crate::postgres::free_port().expect("port");
    let lake = format!(
        "[lake.glue]\nregion = \"us-east-1\"\naws_endpoint = \"{aws}\"\n\
         [lake.glue.s3]\nendpoint = \"{aws}\"\npath_style = true\n",
        aws = moto.endpoint(),
    );
    let config = GatewayConfig::demo()
        .port(port)
        .lake(&lake)
        .write(dir.path());
    let _sluice = spawn_sluice(&config, port, &[]).await;
    let c = connect_plain(port, "demo", "demo").await.expect("connect");
    for &(name, sql) in crate::lake_queries::LAKE_QUERIES {
        let parquet = text_rows(&c, sql).await;
        assert!(!parquet.is_empty(), "{name}");
        for table in ["nyc_formats.trips_delta", "nyc_formats.trips_iceberg"] {
            let got = text_rows(&c, &sql.replace("nyc.trips", table)).await;
            assert_same_rows(&format!("{name} on {table}"), &got, &parquet, "Parquet");
        }
    }
}
