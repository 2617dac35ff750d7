//! Lake benchmark: Sluice end to end versus DataFusion in-process, on the NYC-taxi demo
//! data (1.2M trips, Parquet, partitioned by `month=…`).
//!
//! What is measured:
//! - **Queries.** A small NYC-taxi query set runs through an in-process Sluice gateway
//!   (tokio-postgres over plaintext loopback, extended protocol with binary results,
//!   so each run pays parse, plan, execute, encode, the socket and client decoding) and,
//!   as the baseline, the same SQL on a bare DataFusion `SessionContext` with a
//!   `ListingTable` over the same files (`ctx.sql(..).collect()`). Each query gets one
//!   warm-up run per side, then the timed runs alternate between the two sides; the
//!   median is reported with the ratio Sluice/DataFusion and their geometric mean.
//! - **Streaming.** A 1.2M-row, four-column result streamed to the client without
//!   collecting it: binary (extended protocol, as drivers fetch) and text (simple query
//!   protocol, as psql fetches), in rows/s and wire MB/s (DataRow messages, 1 MB = 10^6
//!   bytes). DataFusion's `execute_stream` on the same query is the in-process reference.
//!
//! Timings are printed, never asserted. Run with
//!
//! ```text
//! cargo bench --bench lake [-- --iters N] [-- --data DIR]
//! ```
//!
//! `--iters` (or `SLUICE_BENCH_ITERS`) sets the timed runs per measurement (default 5).
//! The demo data is generated once into `--data` (or `SLUICE_BENCH_DATA`), by default
//! `<target>/tmp/sluice-bench-lake`, and reused by later runs.

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

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse()?;

    let started = Instant::now();
    let generated = sluice::lake::demo::ensure(&args.data)?;
    println!(
        "demo data: {} ({}, {:.1} s)",
        args.data.display(),
        if generated { "generated" } else { "reused" },
        started.elapsed().as_secs_f64()
    );

    let (client, server) = start_sluice(&args.data).await?;
    let ctx = datafusion_context(&args.data).await?;
    println!(
        "{} timed runs per measurement after one warm-up; medians shown\n",
        args.iters
    );

    bench_queries(&client, &ctx, args.iters).await?;
    println!();
    bench_streaming(&client, &ctx, args.iters).await?;

    server.abort();
    Ok(())
}

/// Starts a gateway on an ephemeral loopback port and returns a connected client.
async fn start_sluice(root: &Path) -> Result<(Client, tokio::task::JoinHandle<()>)> {
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

[lake.local]
root = {root}
demo_data = true
"#,
        root = toml::Value::String(root.display().to_string())
    );
    let config = Config::parse(&toml, Path::new("bench.toml"), root.to_owned())?;
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

async fn bench_queries(client: &Client, ctx: &SessionContext, iters: usize) -> Result<()> {
    println!(
        "{:<18} {:>6} {:>11} {:>15} {:>8}",
        "query", "rows", "sluice ms", "datafusion ms", "ratio"
    );
    let mut log_ratio_sum = 0.0;
    for &(name, sql) in QUERIES {
        let sluice_rows = sluice_query(client, sql).await?;
        let df_rows = datafusion_query(ctx, sql).await?;
        let (mut sluice, mut df) = (Vec::new(), Vec::new());
        for _ in 0..iters {
            sluice.push(time(sluice_query(client, sql)).await?.1);
            df.push(time(datafusion_query(ctx, sql)).await?.1);
        }
        let (s, d) = (median(&mut sluice), median(&mut df));
        let ratio = s.as_secs_f64() / d.as_secs_f64();
        log_ratio_sum += ratio.ln();
        let rows = if sluice_rows == df_rows {
            sluice_rows.to_string()
        } else {
            format!("{sluice_rows}!={df_rows}")
        };
        println!(
            "{name:<18} {rows:>6} {:>11.1} {:>15.1} {ratio:>7.2}x",
            ms(s),
            ms(d)
        );
    }
    let geomean = (log_ratio_sum / QUERIES.len() as f64).exp();
    println!(
        "{:<18} {:>6} {:>11} {:>15} {geomean:>7.2}x",
        "geomean", "", "", ""
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
