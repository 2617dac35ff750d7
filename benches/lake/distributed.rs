//! `--sections distributed` (needs `--features distributed`): the lake query set
//! through a gateway on its own engine and through a gateway that submits every
//! statement to Ballista with two executors in this process. Both run on the same
//! machine, so no speed-up is expected: this measures what distribution costs, per
//! query and per stage, to choose `scan_threshold_mb` from.

use std::path::Path;
use std::time::Duration;

use tokio_postgres::Client;

use super::{Result, ms, time};
use crate::lake_queries::LAKE_QUERIES;
use crate::peers::{self, Gateway};

/// Statements that read one month and return nothing: the fixed cost of a job of
/// one, two and three stages (scan; scan + final aggregate; scan + hash
/// repartition + final aggregate + sort).
const PROBES: &[(&str, &str)] = &[
    (
        "1 stage",
        "SELECT trip_id FROM nyc.trips WHERE month = '2024-01' AND trip_id < 0",
    ),
    (
        "2 stages",
        "SELECT count(*) FROM nyc.trips WHERE month = '2024-01' AND trip_id < 0",
    ),
    (
        "3 stages",
        "SELECT vendor_id, count(*) FROM nyc.trips WHERE month = '2024-01' AND trip_id < 0 \
         GROUP BY 1 ORDER BY 1",
    ),
];

pub async fn bench_distributed(data: &Path, iters: usize, executors: usize) -> Result<()> {
    let scheduler = crate::ballista::cluster(executors, 1, Vec::new()).await?;
    let lake = format!(
        "{}\n[engine.distributed]\nscheduler = \"http://127.0.0.1:{}\"\npartitions = {}\n",
        peers::lake_local(data, false),
        scheduler.port(),
        executors.max(2),
    );
    let local = Gateway::start(&lake).await?;
    local
        .client
        .simple_query("SET sluice.engine = 'local'")
        .await?;
    let spread = Gateway::start(&lake).await?;
    spread
        .client
        .simple_query("SET sluice.engine = 'distributed'")
        .await?;
    let bytes = parquet_bytes(data)?;
    println!(
        "distributed: one gateway vs Ballista with {executors} executors of 1 task slot \
         (same machine), {:.0} MB of Parquet; best ms of {iters}",
        bytes as f64 / 1e6
    );
    println!(
        "{:<17} {:>7} {:>9} {:>9} {:>9}",
        "query", "rows", "gateway", "ballista", "bal/gw"
    );
    let (mut total_local, mut total_spread) = (0.0, 0.0);
    for &(name, sql) in LAKE_QUERIES {
        let (l, s, rows) = best_pair(&local.client, &spread.client, sql, iters).await?;
        total_local += l;
        total_spread += s;
        println!("{name:<17} {rows:>7} {l:>9.1} {s:>9.1} {:>8.2}x", s / l);
    }
    println!(
        "{:<17} {:>7} {total_local:>9.1} {total_spread:>9.1} {:>8.2}x",
        "total",
        "",
        total_spread / total_local
    );
    println!("fixed cost of a job (one month, no rows):");
    let mut overhead = Vec::new();
    for &(shape, sql) in PROBES {
        let (l, s, _) = best_pair(&local.client, &spread.client, sql, iters.max(5)).await?;
        println!("{shape:<17} {:>7} {l:>9.1} {s:>9.1}   +{:.1} ms", "", s - l);
        overhead.push(s - l);
    }
    // The whole-table scan rate on the gateway, from the query that reads every
    // row of the most columns.
    let (full, _, _) = best_pair(
        &local.client,
        &local.client,
        "SELECT count(*) FROM (SELECT trip_distance, fare_amount FROM nyc.trips GROUP BY 1, 2) p",
        iters,
    )
    .await?;
    let rate = bytes as f64 / (full / 1e3); // bytes per second
    let worst = overhead.iter().copied().fold(0.0f64, f64::max);
    // Distribution pays only when the job's fixed cost is small next to the scan:
    // at 5%, the threshold is the bytes one gateway scans in 20 × that cost.
    let threshold = rate * (20.0 * worst / 1e3);
    println!(
        "gateway scan rate {:.0} MB/s; the worst fixed cost {worst:.0} ms is 5% of a local \
         scan of {:.0} MB\n",
        rate / 1e6,
        threshold / 1e6
    );
    Ok(())
}

/// Best times of `sql` on each client (after a warm-up that checks both return
/// the same number of rows), and that number.
async fn best_pair(a: &Client, b: &Client, sql: &str, iters: usize) -> Result<(f64, f64, usize)> {
    let rows_a = a.query(sql, &[]).await?.len();
    let rows_b = b.query(sql, &[]).await?.len();
    if rows_a != rows_b {
        return Err(format!("{sql}: {rows_a} rows on the gateway, {rows_b} distributed").into());
    }
    let (mut best_a, mut best_b) = (Duration::MAX, Duration::MAX);
    for _ in 0..iters {
        best_a = best_a.min(time(async { Ok(a.query(sql, &[]).await?.len()) }).await?.1);
        best_b = best_b.min(time(async { Ok(b.query(sql, &[]).await?.len()) }).await?.1);
    }
    Ok((ms(best_a), ms(best_b), rows_a))
}

fn parquet_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            total += parquet_bytes(&path)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            total += std::fs::metadata(&path)?.len();
        }
    }
    Ok(total)
}
