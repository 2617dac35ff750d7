//! Lake benchmark: Sluice end to end versus DuckDB and DataFusion in-process, on the
//! same NYC-shaped Parquet files (`sluice::lake::demo`, 12 monthly Hive partitions,
//! 12 M trips by default), on local disk and on S3 (moto).
//!
//! What is measured:
//! - **Queries** (`tests/support/lake_queries.rs`): each side runs each query once to
//!   warm up, then `--iters` times; the best time counts. Sides:
//!   - Sluice over the socket (tokio-postgres, extended protocol, binary results: each
//!     run pays parse, plan, execute, encode, the socket and client decoding), from
//!     the local directory catalog (`local`) and from a Glue catalog in moto whose
//!     table is in moto's S3 (`s3`); on local disk also the same Glue table with
//!     `file://` locations (`glue-disk`: the Glue provider without S3).
//!   - DataFusion in-process with its defaults: a `ListingTable` over the same files
//!     (`ctx.sql(..).collect()`), on disk or through an S3 store at moto.
//!   - DuckDB (PyPI `duckdb`, 2 threads, `read_parquet` with Hive partitioning; on S3
//!     through the `httpfs` extension from PyPI), `tests/support/duckdb_lake.py`.
//!
//!   Per query and in total (sums of best times): Sluice / DuckDB and Sluice /
//!   DataFusion. Row counts must agree on every side (answers are compared with
//!   DuckDB's in `tests/it/lake_answers.rs`).
//! - **Streaming**: a 12 M-row, four-column result streamed to the client without
//!   collecting it, binary and text, in rows/s and wire MB/s, with DataFusion's
//!   `execute_stream` as the in-process reference.
//! - **Observability**: the local lake with query groups, the audit file and the admin
//!   listener off and on.
//! - **Formats** (only when asked: `--sections formats`): the query set over the
//!   same trips as Parquet, as Delta Lake and as Iceberg (Glue tables on local disk
//!   and in S3, per `--storage`), with the ratios to Parquet (`formats.rs`; needs
//!   PyPI `deltalake` and `pyiceberg`).
//! - **Distributed** (only when asked: `--sections distributed`, built with
//!   `--features distributed`): the query set on the gateway against Ballista with
//!   two in-process executors, and the fixed cost of a job per stage
//!   (`distributed.rs`).
//!
//! Needs `moto_server`, PyPI `duckdb` and `duckdb-extension-httpfs` (`tests/setup.sh`
//! installs them). Timings are printed, never asserted. Run with
//!
//! ```text
//! cargo bench --bench lake -- [--rows N] [--iters N] [--storage local|s3|both]
//!                             [--sections queries,streaming,observability,formats,distributed]
//!                             [--data DIR]
//! ```
//!
//! `--set name=value` (repeatable) sets a `datafusion.*` option in Sluice's sessions
//! (DataFusion in-process keeps its defaults), to try a change before making it the
//! gateway's default; `--explain NAME` prints `EXPLAIN ANALYZE` of a query through
//! Sluice on local disk and stops; `--gateway-bin PATH` runs the gateways as that
//! `sluice` binary instead of in the bench's process (to compare build profiles:
//! `cargo build --profile dist`, then `--gateway-bin target/dist/sluice`).
//!
//! `--rows` (default 12,000,000; `--rows 120000000` is the 10× variant) is split over
//! the 12 months. The data is generated once into `--data` (default
//! `<target>/tmp/sluice-bench-lake-<rows>`) and reused.

#[cfg(feature = "distributed")]
#[path = "../../tests/support/ballista.rs"]
mod ballista;
#[cfg(feature = "distributed")]
mod distributed;
mod formats;
#[path = "../../tests/support/lake_queries.rs"]
mod lake_queries;
#[path = "../../tests/support/moto.rs"]
mod moto;
#[path = "../../tests/support/nyc_lake.rs"]
mod nyc_lake;
mod peers;
mod queries;
mod streaming;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

struct Args {
    rows: usize,
    iters: usize,
    local: bool,
    s3: bool,
    sections: Vec<String>,
    data: Option<PathBuf>,
    /// `SET name = value` for Sluice's sessions (`--set`), to try engine options.
    settings: Vec<(String, String)>,
    /// Print `EXPLAIN ANALYZE` of these queries through Sluice, then stop.
    explain: Vec<String>,
    /// Run gateways as this `sluice` binary (`--gateway-bin`), e.g. to compare
    /// build profiles.
    gateway_bin: Option<PathBuf>,
}

const SECTIONS: [&str; 5] = [
    "queries",
    "streaming",
    "observability",
    "formats",
    "distributed",
];

impl Args {
    fn parse() -> Result<Args> {
        let mut out = Args {
            rows: 12_000_000,
            iters: 3,
            local: true,
            s3: true,
            // `formats` and `distributed` only when asked: they write their own
            // copies of the data, and the latter needs the feature.
            sections: SECTIONS[..3].iter().map(|s| s.to_string()).collect(),
            data: None,
            settings: Vec::new(),
            explain: Vec::new(),
            gateway_bin: None,
        };
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
                "--rows" => out.rows = positive(&value()?)?,
                "--iters" => out.iters = positive(&value()?)?,
                "--data" => out.data = Some(PathBuf::from(value()?)),
                "--set" => {
                    let v = value()?;
                    let (name, setting) = v
                        .split_once('=')
                        .ok_or_else(|| format!("--set {v}: expected name=value"))?;
                    out.settings
                        .push((name.trim().to_owned(), setting.trim().to_owned()));
                }
                "--explain" => out.explain.push(value()?),
                "--gateway-bin" => out.gateway_bin = Some(PathBuf::from(value()?)),
                "--storage" => match value()?.as_str() {
                    "local" => (out.local, out.s3) = (true, false),
                    "s3" => (out.local, out.s3) = (false, true),
                    "both" => (out.local, out.s3) = (true, true),
                    other => return Err(format!("--storage {other}: local, s3 or both").into()),
                },
                "--sections" => {
                    out.sections = value()?.split(',').map(|s| s.trim().to_owned()).collect();
                    if let Some(bad) = out.sections.iter().find(|s| !SECTIONS.contains(&&***s)) {
                        return Err(format!("--sections: unknown `{bad}` ({SECTIONS:?})").into());
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown argument `{arg}` (expected --rows, --iters, --storage, --sections, --data, --set, --explain, --gateway-bin)"
                    )
                    .into());
                }
            }
        }
        if out.rows < 12 {
            return Err("--rows must be at least 12 (one trip a month)".into());
        }
        Ok(out)
    }

    fn wants(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
}

fn positive(v: &str) -> Result<usize> {
    match v.trim().replace('_', "").parse() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a positive integer, got `{v}`").into()),
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
    let data = args.data.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sluice-bench-lake-{}", args.rows))
    });
    let started = Instant::now();
    let per_month = args.rows / 12;
    let generated = sluice::lake::demo::ensure_sized(&data, per_month)?;
    println!(
        "data: {} trips in 12 monthly partitions at {} ({}, {:.1} s)",
        per_month * 12,
        data.display(),
        if generated { "generated" } else { "reused" },
        started.elapsed().as_secs_f64()
    );
    println!(
        "{} timed runs per measurement after one warm-up; best times shown\n",
        args.iters
    );

    peers::set_session_options(args.settings.clone());
    if let Some(bin) = &args.gateway_bin {
        peers::use_gateway_binary(bin.clone());
    }
    let local = peers::Gateway::start(&peers::lake_local(&data, false)).await?;
    if !args.explain.is_empty() {
        queries::explain("local catalog", &local.client, &args.explain).await?;
        let moto = moto::Moto::start()?;
        nyc_lake::load_glue(&moto, &data, "nyc_s3", Some("nyc")).await?;
        let glue = peers::Gateway::start(&peers::lake_glue(&moto, &["nyc"])).await?;
        return queries::explain("Glue table on local disk", &glue.client, &args.explain).await;
    }
    if args.wants("queries") {
        if args.local {
            queries::compare_local(&local, &data, args.iters).await?;
        }
        if args.s3 {
            queries::compare_s3(&data, args.iters).await?;
        }
    }
    if args.wants("streaming") {
        streaming::bench_streaming(&local.client, &data, args.iters).await?;
        println!();
    }
    if args.wants("observability") {
        let audit_dir = tempfile::tempdir()?;
        let observed = peers::Gateway::start(&peers::observed(&data, audit_dir.path())).await?;
        streaming::bench_observability(&local.client, &observed.client, args.iters).await?;
    }
    if args.wants("formats") {
        formats::bench_formats(&data, args.iters, args.local, args.s3).await?;
    }
    if args.wants("distributed") {
        #[cfg(feature = "distributed")]
        distributed::bench_distributed(&data, args.iters, 2).await?;
        #[cfg(not(feature = "distributed"))]
        return Err("--sections distributed needs `cargo bench --features distributed`".into());
    }
    Ok(())
}

async fn time<T>(fut: impl Future<Output = Result<T>>) -> Result<(T, Duration)> {
    let start = Instant::now();
    let out = fut.await?;
    Ok((out, start.elapsed()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
