//! The query comparison: every side runs each query of the set, best of N, and the
//! table prints per-query and total ratios against DuckDB and DataFusion.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use datafusion::prelude::SessionContext;
use tokio_postgres::Client;

use super::peers::{self, Gateway};
use super::{Result, ms, time};
use crate::lake_queries::LAKE_QUERIES;
use crate::moto::Moto;
use crate::nyc_lake::{self, DuckResult, DuckSource};

/// One storage's sides.
struct Sides<'a> {
    storage: &'a str,
    /// Sluice over the socket, as (label, client, table name in its catalog).
    sluice: Vec<(&'a str, &'a Client, &'a str)>,
    datafusion: &'a SessionContext,
    duckdb: HashMap<String, DuckResult>,
}

pub async fn compare_local(local: &Gateway, root: &Path, iters: usize) -> Result<()> {
    let duckdb = nyc_lake::duckdb(DuckSource::Local(root), LAKE_QUERIES, iters, false)?;
    let ctx = peers::datafusion_local(root).await?;
    let moto = Moto::start()?;
    nyc_lake::load_glue(&moto, root, "nyc_s3", Some("nyc")).await?;
    let glue_disk = Gateway::start(&peers::lake_glue(&moto, &["nyc"])).await?;
    compare(Sides {
        storage: "local disk",
        sluice: vec![
            ("sluice", &local.client, "nyc.trips"),
            ("glue-disk", &glue_disk.client, "nyc.trips"),
        ],
        datafusion: &ctx,
        duckdb,
    })
    .await
}

pub async fn compare_s3(root: &Path, iters: usize) -> Result<()> {
    let moto = Moto::start()?;
    let started = Instant::now();
    nyc_lake::load_glue(&moto, root, "nyc", None).await?;
    println!(
        "moto: trips uploaded to S3 and described in Glue in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let ctx = peers::datafusion_s3(&moto).await?;
    let glue = Gateway::start(&peers::lake_glue(&moto, &["nyc"])).await?;
    // Every side reads the objects on every run; then DuckDB as it runs by default,
    // serving repeated reads from its in-memory copy of the files.
    let source = |file_cache| DuckSource::S3 {
        moto: &moto,
        file_cache,
    };
    let duckdb = nyc_lake::duckdb(source(false), LAKE_QUERIES, iters, false)?;
    compare(Sides {
        storage: "S3 (moto), DuckDB's external file cache off",
        sluice: vec![("sluice", &glue.client, "nyc.trips")],
        datafusion: &ctx,
        duckdb,
    })
    .await?;
    let cached = nyc_lake::duckdb(source(true), LAKE_QUERIES, iters, false)?;
    println!("DuckDB on S3 with its external file cache (its default): best ms of {iters}");
    for &(name, _) in LAKE_QUERIES {
        let best = cached
            .get(name)
            .map(|d| d.times_ms.iter().copied().fold(f64::INFINITY, f64::min))
            .unwrap_or(f64::NAN);
        println!("{name:<17} {best:>9.1}");
    }
    println!();
    Ok(())
}

async fn compare(sides: Sides<'_>) -> Result<()> {
    let iters = sides
        .duckdb
        .values()
        .next()
        .map(|d| d.times_ms.len())
        .unwrap_or(1);
    println!("queries on {}: best ms of {iters}", sides.storage);
    let mut header = format!("{:<17} {:>5}", "query", "rows");
    for (label, _, _) in &sides.sluice {
        header += &format!(" {label:>9}");
    }
    header += &format!(
        " {:>9} {:>9} {:>9} {:>9}",
        "DF", "duckdb", "sl/duck", "sl/DF"
    );
    println!("{header}");
    let mut totals = vec![0.0f64; sides.sluice.len() + 2];
    let mut worst = (0.0f64, "");
    for &(name, sql) in LAKE_QUERIES {
        let duck = sides
            .duckdb
            .get(name)
            .ok_or_else(|| format!("{name}: no DuckDB result"))?;
        // Warm-ups, and the row counts must agree.
        for (label, client, table) in &sides.sluice {
            let n = sluice_query(client, &sql.replace("nyc.trips", table)).await?;
            if n != duck.rows {
                return Err(
                    format!("{name}: {label} returned {n} rows, DuckDB {}", duck.rows).into(),
                );
            }
        }
        let n = datafusion_query(sides.datafusion, sql).await?;
        if n != duck.rows {
            return Err(
                format!("{name}: DataFusion returned {n} rows, DuckDB {}", duck.rows).into(),
            );
        }
        let mut best = vec![Duration::MAX; sides.sluice.len() + 1];
        for _ in 0..iters {
            for (i, (_, client, table)) in sides.sluice.iter().enumerate() {
                let sql = sql.replace("nyc.trips", table);
                best[i] = best[i].min(time(sluice_query(client, &sql)).await?.1);
            }
            let last = best.len() - 1;
            best[last] = best[last].min(time(datafusion_query(sides.datafusion, sql)).await?.1);
        }
        let mut times: Vec<f64> = best.into_iter().map(ms).collect();
        times.push(duck.times_ms.iter().copied().fold(f64::INFINITY, f64::min));
        let (sl, df, dk) = (times[0], times[times.len() - 2], times[times.len() - 1]);
        if sl / dk > worst.0 {
            worst = (sl / dk, name);
        }
        let mut line = format!("{name:<17} {:>5}", duck.rows);
        for (t, total) in times.iter().zip(totals.iter_mut()) {
            *total += t;
            line += &format!(" {t:>9.1}");
        }
        line += &format!(" {:>8.2}x {:>8.2}x", sl / dk, sl / df);
        println!("{line}");
    }
    let (sl, df, dk) = (
        totals[0],
        totals[totals.len() - 2],
        totals[totals.len() - 1],
    );
    let mut line = format!("{:<17} {:>5}", "total", "");
    for t in &totals {
        line += &format!(" {t:>9.1}");
    }
    line += &format!(" {:>8.2}x {:>8.2}x", sl / dk, sl / df);
    println!("{line}");
    println!(
        "worst query against DuckDB: {} at {:.2}x\n",
        worst.1, worst.0
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

/// `EXPLAIN ANALYZE` of the named queries through Sluice.
pub async fn explain(side: &str, client: &Client, names: &[String]) -> Result<()> {
    for name in names {
        let sql = LAKE_QUERIES
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, sql)| *sql)
            .ok_or_else(|| format!("--explain {name}: no such query"))?;
        sluice_query(client, sql).await?;
        println!("EXPLAIN ANALYZE {name} ({side}):");
        for message in client
            .simple_query(&format!("EXPLAIN ANALYZE {sql}"))
            .await?
        {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                for i in 0..row.len() {
                    println!("{}", row.get(i).unwrap_or(""));
                }
            }
        }
    }
    Ok(())
}
