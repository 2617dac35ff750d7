//! Lake benchmark: Sluice end to end versus DataFusion in-process and DuckDB, on the
//! NYC-taxi demo data (1.2M trips, Parquet, partitioned by `month=…`).
//!
//! What is measured:
//! - **Queries.** A small NYC-taxi query set runs through in-process Sluice gateways
//!   (tokio-postgres over plaintext loopback, extended protocol with binary results,
//!   so each run pays parse, plan, execute, encode, the socket and client decoding):
//!   the local directory catalog, a Glue catalog (moto) whose table lives in S3
//!   (moto), and the same Glue table with `file://` locations (the Glue provider
//!   without S3). Baselines on the same files: a bare DataFusion `SessionContext` with
//!   a `ListingTable` (`ctx.sql(..).collect()`), and DuckDB (`read_parquet` with Hive
//!   partitioning, 2 threads, `benches/duckdb_queries.py`). Each query gets one warm-up
//!   run per side, then timed runs; medians are reported with ratios and geometric
//!   means.
//! - **Streaming.** A 1.2M-row, four-column result streamed to the client without
//!   collecting it: binary (extended protocol, as drivers fetch) and text (simple query
//!   protocol, as psql fetches), in rows/s and wire MB/s (DataRow messages, 1 MB = 10^6
//!   bytes). DataFusion's `execute_stream` on the same query is the in-process reference.
//!
//! Needs `moto_server` (`tests/setup.sh` installs it) and PyPI `duckdb`
//! (`pip install duckdb`). Timings are printed, never asserted. Run with
//!
//! ```text
//! cargo bench --bench lake [-- --iters N] [-- --data DIR]
//! ```
//!
//! `--iters` (or `SLUICE_BENCH_ITERS`) sets the timed runs per measurement (default 5).
//! The demo data is generated once into `--data` (or `SLUICE_BENCH_DATA`), by default
//! `<target>/tmp/sluice-bench-lake`, and reused by later runs.

#[path = "../tests/support/moto.rs"]
mod moto;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::{StreamExt, TryStreamExt};
use sluice::config::Config;
use sluice::server::Server;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

const DEFAULT_ITERS: usize = 5;

/// The query set: (name, SQL), run unchanged on both sides.
const QUERIES: &[(&str, &str)] = &[
    (
        "fare_by_hour",
        "SELECT EXTRACT(HOUR FROM pickup_datetime) AS hour, avg(fare_amount) AS avg_fare \
         FROM nyc.trips GROUP BY 1 ORDER BY 1",
    ),
    (
        "revenue_by_month",
        "SELECT month, count(*) AS trips, sum(total_amount) AS revenue \
         FROM nyc.trips GROUP BY month ORDER BY month",
    ),
    (
        "tip_buckets",
        "SELECT bucket, count(*) AS trips FROM (\
           SELECT CASE WHEN tip_amount / fare_amount < 0.05 THEN 'low' \
                       WHEN tip_amount / fare_amount < 0.15 THEN 'mid' \
                       ELSE 'high' END AS bucket \
           FROM (SELECT tip_amount, fare_amount FROM nyc.trips WHERE fare_amount > 0) t\
         ) b GROUP BY bucket ORDER BY bucket",
    ),
    (
        "march_groups",
        "SELECT count(*) AS trips, avg(trip_distance) AS avg_distance FROM nyc.trips \
         WHERE month = '2024-03' AND passenger_count > 2",
    ),
    (
        "longest_trips",
        "SELECT trip_id, trip_distance, fare_amount FROM nyc.trips \
         ORDER BY trip_distance DESC LIMIT 10",
    ),
];

/// The large result for the streaming measurement.
const STREAM_SQL: &str =
    "SELECT trip_id, pickup_datetime, fare_amount, total_amount FROM nyc.trips";

/// A DataRow message's framing: tag byte, length, field count.
const DATA_ROW_HEADER: usize = 1 + 4 + 2;

struct Args {
    iters: usize,
    data: PathBuf,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut iters = match std::env::var("SLUICE_BENCH_ITERS") {
            Ok(v) => Some(parse_iters(&v)?),
            Err(_) => None,
        };
        let mut data = std::env::var_os("SLUICE_BENCH_DATA").map(PathBuf::from);
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag.as_str() {
                // `cargo bench` passes `--bench` to every bench binary.
                "--bench" => {}
                "--iters" => iters = Some(parse_iters(&value()?)?),
                "--data" => data = Some(PathBuf::from(value()?)),
                _ => {
                    return Err(format!(
                        "unknown argument `{arg}` (expected --iters N, --data DIR)"
                    )
                    .into());
                }
            }
        }
        Ok(Args {
            iters: iters.unwrap_or(DEFAULT_ITERS),
            data: data.unwrap_or_else(|| {
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("sluice-bench-lake")
            }),
        })
    }
}

fn parse_iters(v: &str) -> Result<usize> {
    match v.trim().parse() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("iterations must be a positive integer, got `{v}`").into()),
    }
}

fn main() -> Result<()> {
    // The Glue gateways take AWS credentials from the standard chain, as in
    // production; moto accepts any. Set while this is the only thread.
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        // SAFETY: no other thread exists yet (the runtime is built below).
        unsafe { std::env::set_var(k, v) };
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> Result<()> {
    let args = Args::parse()?;

    let started = Instant::now();
    let generated = sluice::lake::demo::ensure(&args.data)?;
    println!(
        "demo data: {} ({}, {:.1} s)",
        args.data.display(),
        if generated { "generated" } else { "reused" },
        started.elapsed().as_secs_f64()
    );

    let (client, server) = start_sluice(&format!(
        "{}\n[query_groups]\nenabled = false\n",
        lake_local(&args.data)
    ))
    .await?;
    let audit_dir = tempfile::tempdir()?;
    let (observed, observed_server) = start_sluice(&format!(
        "{}\n[query_groups]\nenabled = true\n[admin]\nlisten = \"127.0.0.1:0\"\n[audit]\n[audit.file]\npath = \"{}\"\n",
        lake_local(&args.data),
        audit_dir.path().join("audit.jsonl").display()
    ))
    .await?;
    let ctx = datafusion_context(&args.data).await?;
    let moto = moto::Moto::start()?;
    let started = Instant::now();
    load_glue(&moto, &args.data).await?;
    println!(
        "moto: Glue + S3 loaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (glue_s3, glue_s3_server) = start_sluice(&lake_glue(&moto, "nyc")).await?;
    let (glue_disk, glue_disk_server) = start_sluice(&lake_glue(&moto, "nyc_disk")).await?;
    let duckdb = duckdb_times(&args.data, args.iters)?;
    println!(
        "{} timed runs per measurement after one warm-up; medians shown\n",
        args.iters
    );

    let sides = Sides {
        local: &client,
        glue_s3: &glue_s3,
        glue_disk: &glue_disk,
        ctx: &ctx,
        duckdb: &duckdb,
    };
    bench_queries(&sides, args.iters).await?;
    println!();
    bench_streaming(&client, &ctx, args.iters).await?;
    println!();
    bench_observability(&client, &observed, args.iters).await?;

    server.abort();
    observed_server.abort();
    glue_s3_server.abort();
    glue_disk_server.abort();
    Ok(())
}

fn lake_local(root: &Path) -> String {
    format!(
        "[lake.local]\nroot = {}\ndemo_data = true\n",
        toml::Value::String(root.display().to_string())
    )
}

/// A Glue lake (moto) exposing one database, mounted as `nyc`'s stand-in.
fn lake_glue(moto: &moto::Moto, database: &str) -> String {
    format!(
        "[lake.glue]\nregion = \"us-east-1\"\naws_endpoint = \"{e}\"\ndatabases = [\"{database}\"]\nallow_local_locations = true\n\
         [lake.glue.s3]\nendpoint = \"{e}\"\npath_style = true\n",
        e = moto.endpoint()
    )
}

/// Uploads the demo trips to moto's S3 and describes them in moto's Glue twice:
/// `nyc.trips` (S3 locations) and `nyc_disk.trips` (the same files on local disk).
async fn load_glue(moto: &moto::Moto, root: &Path) -> Result<()> {
    use aws_sdk_glue::types::{
        Column, DatabaseInput, PartitionInput, SerDeInfo, StorageDescriptor, TableInput,
    };
    use object_store::ObjectStoreExt;
    let glue = moto.glue();
    let bucket = moto.bucket("lake")?;
    let columns: Vec<Column> = sluice::lake::demo::trips_schema()
        .fields()
        .iter()
        .map(|f| {
            let hive = match f.data_type() {
                DataType::Int32 => "int",
                DataType::Int64 => "bigint",
                DataType::Float64 => "double",
                DataType::Timestamp(_, _) => "timestamp",
                _ => "string",
            };
            Column::builder().name(f.name()).r#type(hive).build()
        })
        .collect::<std::result::Result<_, _>>()?;
    let trips = root.join("nyc").join("trips");
    let mut months: Vec<String> = std::fs::read_dir(&trips)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("month=")
                .map(str::to_owned)
        })
        .collect();
    months.sort();
    for month in &months {
        let key = format!("nyc/trips/month={month}/part-0.parquet");
        let data = std::fs::read(trips.join(format!("month={month}")).join("part-0.parquet"))?;
        bucket
            .put(&object_store::path::Path::from(key.as_str()), data.into())
            .await?;
    }
    for (database, base) in [
        ("nyc", "s3://lake/nyc/trips".to_owned()),
        ("nyc_disk", format!("file://{}", trips.display())),
    ] {
        glue.create_database()
            .database_input(DatabaseInput::builder().name(database).build()?)
            .send()
            .await?;
        let sd = |location: String| {
            StorageDescriptor::builder()
                .location(location)
                .input_format("org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat")
                .serde_info(
                    SerDeInfo::builder()
                        .serialization_library(
                            "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
                        )
                        .build(),
                )
        };
        glue.create_table()
            .database_name(database)
            .table_input(
                TableInput::builder()
                    .name("trips")
                    .table_type("EXTERNAL_TABLE")
                    .storage_descriptor(
                        sd(format!("{base}/"))
                            .set_columns(Some(columns.clone()))
                            .build(),
                    )
                    .partition_keys(Column::builder().name("month").r#type("string").build()?)
                    .build()?,
            )
            .send()
            .await?;
        let partitions = months
            .iter()
            .map(|m| {
                PartitionInput::builder()
                    .values(m.clone())
                    .storage_descriptor(sd(format!("{base}/month={m}/")).build())
                    .build()
            })
            .collect();
        glue.batch_create_partition()
            .database_name(database)
            .table_name("trips")
            .set_partition_input_list(Some(partitions))
            .send()
            .await?;
    }
    Ok(())
}

/// Medians (ms) and row counts of the query set on DuckDB, by query name.
fn duckdb_times(
    root: &Path,
    iters: usize,
) -> Result<std::collections::HashMap<String, (f64, usize)>> {
    use std::io::Write;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/duckdb_queries.py");
    let job = serde_json::json!({
        "root": root.display().to_string(),
        "iters": iters,
        "queries": QUERIES,
    });
    let mut child = std::process::Command::new("python3")
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(job.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err("DuckDB side failed (is PyPI `duckdb` installed? pip install duckdb)".into());
    }
    let parsed: std::collections::HashMap<String, (f64, usize)> =
        serde_json::from_slice(&out.stdout)?;
    Ok(parsed)
}

/// Starts a gateway on an ephemeral loopback port and returns a connected client.
async fn start_sluice(lake: &str) -> Result<(Client, tokio::task::JoinHandle<()>)> {
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[server.tls]
allow_plaintext = "loopback"

[[auth.users]]
name = "bench"
password = "bench"
roles = ["reader"]

[[roles]]
name = "reader"
read = ["*"]

{lake}
"#
    );
    let config = Config::parse(&toml, Path::new("bench.toml"), PathBuf::from("."))?;
    let database = config.server.database.clone();
    let server = Server::bind(config).await?;
    let addr = server.local_addr()?;
    let handle = tokio::spawn(server.run());

    let (client, connection) = tokio_postgres::Config::new()
        .host(addr.ip().to_string())
        .port(addr.port())
        .user("bench")
        .password("bench")
        .dbname(&database)
        .ssl_mode(SslMode::Disable)
        .connect(NoTls)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("sluice connection error: {e}");
        }
    });
    println!("sluice: listening on {addr}");
    Ok((client, handle))
}

/// Stock DataFusion over the same files: `nyc.trips` as a Parquet `ListingTable` with
/// the `month` partition column, in the default catalog.
async fn datafusion_context(root: &Path) -> Result<SessionContext> {
    let ctx = SessionContext::new_with_config(SessionConfig::new());
    ctx.catalog("datafusion")
        .ok_or("DataFusion has no default catalog")?
        .register_schema("nyc", Arc::new(MemorySchemaProvider::new()))?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("month".to_owned(), DataType::Utf8)]);
    let path = format!("{}/", root.join("nyc").join("trips").display());
    ctx.register_listing_table("nyc.trips", path, options, None, None)
        .await?;
    Ok(ctx)
}

/// The local lake with query groups, the audit trail and the admin listener off
/// and on (metrics stay on), alternating runs; the ratio is the cost of observing.
async fn bench_observability(off: &Client, on: &Client, iters: usize) -> Result<()> {
    println!("observability: query groups + audit file + admin listener off vs on (local lake)");
    println!(
        "{:<16} {:>9} {:>9} {:>8}",
        "query", "off ms", "on ms", "on/off"
    );
    let mut log_sum = 0.0f64;
    for &(name, sql) in QUERIES {
        sluice_query(off, sql).await?;
        sluice_query(on, sql).await?;
        let (mut a, mut b) = (vec![], vec![]);
        for i in 0..iters {
            // Alternate which side runs first.
            if i % 2 == 0 {
                a.push(time(sluice_query(off, sql)).await?.1);
                b.push(time(sluice_query(on, sql)).await?.1);
            } else {
                b.push(time(sluice_query(on, sql)).await?.1);
                a.push(time(sluice_query(off, sql)).await?.1);
            }
        }
        let (x, y) = (ms(median(&mut a)), ms(median(&mut b)));
        log_sum += (y / x).ln();
        println!("{name:<16} {x:>9.1} {y:>9.1} {:>7.3}x", y / x);
    }
    println!(
        "{:<16} {:>9} {:>9} {:>7.3}x",
        "geomean",
        "",
        "",
        (log_sum / QUERIES.len() as f64).exp()
    );
    Ok(())
}

/// Every side of the query comparison.
struct Sides<'a> {
    local: &'a Client,
    glue_s3: &'a Client,
    glue_disk: &'a Client,
    ctx: &'a SessionContext,
    duckdb: &'a std::collections::HashMap<String, (f64, usize)>,
}

async fn bench_queries(sides: &Sides<'_>, iters: usize) -> Result<()> {
    println!(
        "{:<16} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "query",
        "rows",
        "local ms",
        "glue-s3",
        "glue-disk",
        "DF ms",
        "duckdb",
        "local/DF",
        "local/dk",
        "s3/DF"
    );
    let mut logs = [0.0f64; 3];
    for &(name, sql) in QUERIES {
        let disk_sql = sql.replace("nyc.trips", "nyc_disk.trips");
        let rows = sluice_query(sides.local, sql).await?;
        for (side, n) in [
            ("glue-s3", sluice_query(sides.glue_s3, sql).await?),
            ("glue-disk", sluice_query(sides.glue_disk, &disk_sql).await?),
            ("datafusion", datafusion_query(sides.ctx, sql).await?),
        ] {
            if n != rows {
                return Err(format!("{name}: {side} returned {n} rows, local {rows}").into());
            }
        }
        let (mut local, mut s3, mut disk, mut df) = (vec![], vec![], vec![], vec![]);
        for _ in 0..iters {
            local.push(time(sluice_query(sides.local, sql)).await?.1);
            s3.push(time(sluice_query(sides.glue_s3, sql)).await?.1);
            disk.push(time(sluice_query(sides.glue_disk, &disk_sql)).await?.1);
            df.push(time(datafusion_query(sides.ctx, sql)).await?.1);
        }
        let (l, s, k, d) = (
            ms(median(&mut local)),
            ms(median(&mut s3)),
            ms(median(&mut disk)),
            ms(median(&mut df)),
        );
        let duck = sides.duckdb.get(name).map(|(t, _)| *t).unwrap_or(f64::NAN);
        let ratios = [l / d, l / duck, s / d];
        for (sum, r) in logs.iter_mut().zip(ratios) {
            *sum += r.ln();
        }
        println!(
            "{name:<16} {rows:>5} {l:>9.1} {s:>9.1} {k:>9.1} {d:>9.1} {duck:>9.1} {:>8.2}x {:>8.2}x {:>8.2}x",
            ratios[0], ratios[1], ratios[2]
        );
    }
    let n = QUERIES.len() as f64;
    println!(
        "{:<16} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8.2}x {:>8.2}x {:>8.2}x",
        "geomean",
        "",
        "",
        "",
        "",
        "",
        "",
        (logs[0] / n).exp(),
        (logs[1] / n).exp(),
        (logs[2] / n).exp()
    );
    Ok(())
}

/// Runs `sql` through Sluice as tokio-postgres does (prepare, then bind/execute with
/// binary results) and returns the row count.
async fn sluice_query(client: &Client, sql: &str) -> Result<usize> {
    Ok(client.query(sql, &[]).await?.len())
}

async fn datafusion_query(ctx: &SessionContext, sql: &str) -> Result<usize> {
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok(batches.iter().map(|b| b.num_rows()).sum())
}

/// Rows and wire bytes received.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Streamed {
    rows: usize,
    bytes: usize,
}

async fn bench_streaming(client: &Client, ctx: &SessionContext, iters: usize) -> Result<()> {
    println!("streaming: {STREAM_SQL}");
    println!(
        "{:<28} {:>10} {:>9} {:>13} {:>9}",
        "path", "rows", "ms", "rows/s", "MB/s"
    );
    let binary = measure(iters, || stream_binary(client)).await?;
    report("sluice binary (extended)", binary);
    let text = measure(iters, || stream_text(client)).await?;
    report("sluice text (simple query)", text);
    let df = measure(iters, || stream_datafusion(ctx)).await?;
    report("datafusion execute_stream", df);
    Ok(())
}

/// A warm-up, then `iters` timed runs; returns the last result and the median time.
async fn measure<F, Fut>(iters: usize, mut run: F) -> Result<(Streamed, Duration)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Streamed>>,
{
    let mut result = run().await?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let (r, t) = time(run()).await?;
        result = r;
        times.push(t);
    }
    Ok((result, median(&mut times)))
}

fn report(path: &str, (s, t): (Streamed, Duration)) {
    let secs = t.as_secs_f64();
    let mb_s = if s.bytes > 0 {
        format!("{:.1}", s.bytes as f64 / secs / 1e6)
    } else {
        "-".to_owned()
    };
    println!(
        "{path:<28} {:>10} {:>9.1} {:>13.0} {mb_s:>9}",
        s.rows,
        ms(t),
        s.rows as f64 / secs
    );
}

/// Streams the result in binary format, touching each row as it arrives.
async fn stream_binary(client: &Client) -> Result<Streamed> {
    let no_params: [&(dyn ToSql + Sync); 0] = [];
    let rows = client.query_raw(STREAM_SQL, no_params).await?;
    let mut rows = std::pin::pin!(rows);
    let mut out = Streamed { rows: 0, bytes: 0 };
    while let Some(row) = rows.try_next().await? {
        out.rows += 1;
        out.bytes += DATA_ROW_HEADER + row.raw_size_bytes();
    }
    Ok(out)
}

/// Streams the result in text format over the simple query protocol.
async fn stream_text(client: &Client) -> Result<Streamed> {
    let messages = client.simple_query_raw(STREAM_SQL).await?;
    let mut messages = std::pin::pin!(messages);
    let mut out = Streamed { rows: 0, bytes: 0 };
    while let Some(message) = messages.try_next().await? {
        if let SimpleQueryMessage::Row(row) = message {
            out.rows += 1;
            out.bytes += DATA_ROW_HEADER;
            for i in 0..row.len() {
                out.bytes += 4 + row.try_get(i)?.map_or(0, str::len);
            }
        }
    }
    Ok(out)
}

async fn stream_datafusion(ctx: &SessionContext) -> Result<Streamed> {
    let mut stream = ctx.sql(STREAM_SQL).await?.execute_stream().await?;
    let mut rows = 0;
    while let Some(batch) = stream.next().await {
        rows += batch?.num_rows();
    }
    Ok(Streamed { rows, bytes: 0 })
}

async fn time<T>(fut: impl Future<Output = Result<T>>) -> Result<(T, Duration)> {
    let start = Instant::now();
    let out = fut.await?;
    Ok((out, start.elapsed()))
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    let mid = times.len() / 2;
    if times.len().is_multiple_of(2) {
        (times[mid - 1] + times[mid]) / 2
    } else {
        times[mid]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
