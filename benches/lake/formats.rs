//! The query set over the same trips as a plain Parquet Glue table, as a Delta Lake
//! table and as an Apache Iceberg table, all described in moto's Glue, with their
//! files on local disk (`file://` locations) or in moto's S3, through one gateway.
//! The Delta table is written by PyPI `deltalake` (delta-rs) and the Iceberg table
//! by `pyiceberg`, both partitioned by month, from
//! the benchmark's own Parquet files (`tests/support/open_formats.py`), so the
//! writers choose their files' layout as they would in production; the row counts
//! of every query must agree.

use std::path::Path;
use std::time::Instant;

use crate::lake_queries::LAKE_QUERIES;
use crate::moto::Moto;
use crate::peers::{self, Gateway};
use crate::{Result, ms, nyc_lake, time};

pub async fn bench_formats(root: &Path, iters: usize, local: bool, s3: bool) -> Result<()> {
    if local {
        let out = root.join("formats");
        bench_storage(root, iters, Some(&out)).await?;
    }
    if s3 {
        bench_storage(root, iters, None).await?;
    }
    Ok(())
}

/// One storage: files under `out` on local disk (`file://` locations in moto's
/// Glue), or in moto's S3.
async fn bench_storage(root: &Path, iters: usize, out: Option<&Path>) -> Result<()> {
    let moto = Moto::start()?;
    let started = Instant::now();
    // `nyc.trips`: the Parquet files on disk (`file://`), or uploaded to S3.
    match out {
        Some(out) => {
            nyc_lake::load_glue(&moto, root, "nyc_s3", Some("nyc")).await?;
            // Each run writes its own tables (the writers append).
            let _ = std::fs::remove_dir_all(out);
        }
        None => nyc_lake::load_glue(&moto, root, "nyc", None).await?,
    }
    nyc_lake::open_formats(&serde_json::json!({
        "do": "nyc", "endpoint": moto.endpoint(), "root": root.display().to_string(),
        "database": "nyc_formats", "out": out.map(|o| o.display().to_string()),
    }))?;
    let storage = if out.is_some() {
        "local disk"
    } else {
        "S3 (moto)"
    };
    println!(
        "trips as Parquet, Delta (delta-rs) and Iceberg (pyiceberg) on {storage} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let gateway = Gateway::start(&peers::lake_glue(&moto, &["nyc", "nyc_formats"])).await?;
    let tables = [
        "nyc.trips",
        "nyc_formats.trips_delta",
        "nyc_formats.trips_iceberg",
    ];
    println!("open table formats on {storage}: best ms of {iters}");
    println!(
        "{:<17} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "query", "rows", "parquet", "delta", "iceberg", "dl/pq", "ice/pq"
    );
    let mut totals = [0.0f64; 3];
    for &(name, sql) in LAKE_QUERIES {
        let mut best = [f64::INFINITY; 3];
        let mut counts = [0usize; 3];
        for (i, table) in tables.iter().enumerate() {
            let sql = sql.replace("nyc.trips", table);
            counts[i] = gateway.client.query(&sql, &[]).await?.len(); // warm-up
            for _ in 0..iters {
                let (got, took) =
                    time(async { Ok(gateway.client.query(&sql, &[]).await?) }).await?;
                if got.len() != counts[i] {
                    return Err(format!("{name} on {table}: row count moved").into());
                }
                best[i] = best[i].min(ms(took));
            }
        }
        if counts[1] != counts[0] || counts[2] != counts[0] {
            return Err(format!("{name}: rows {counts:?} differ between formats").into());
        }
        for (t, b) in totals.iter_mut().zip(best) {
            *t += b;
        }
        println!(
            "{name:<17} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>8.2}x {:>8.2}x",
            counts[0],
            best[0],
            best[1],
            best[2],
            best[1] / best[0],
            best[2] / best[0]
        );
    }
    println!(
        "{:<17} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>8.2}x {:>8.2}x\n",
        "total",
        "",
        totals[0],
        totals[1],
        totals[2],
        totals[1] / totals[0],
        totals[2] / totals[0]
    );
    Ok(())
}
