//! Streaming a large result to the client, and the cost of observing (query groups,
//! the audit file, the admin listener) on the query set.

use std::path::Path;
use std::time::Duration;

use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::{Result, ms, peers, time};
use crate::lake_queries::LAKE_QUERIES as QUERIES;

/// The large result for the streaming measurement.
const STREAM_SQL: &str =
    "SELECT trip_id, pickup_datetime, fare_amount, total_amount FROM nyc.trips";

/// A DataRow message's framing: tag byte, length, field count.
const DATA_ROW_HEADER: usize = 1 + 4 + 2;

/// Rows and wire bytes received.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Streamed {
    rows: usize,
    bytes: usize,
}

pub async fn bench_streaming(client: &Client, root: &Path, iters: usize) -> Result<()> {
    let ctx = &peers::datafusion_local(root).await?;
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

/// The local lake with query groups, the audit trail and the admin listener off
/// and on (metrics stay on), alternating runs; the ratio is the cost of observing.
pub async fn bench_observability(off: &Client, on: &Client, iters: usize) -> Result<()> {
    println!("observability: query groups + audit file + admin listener off vs on (local lake)");
    println!(
        "{:<16} {:>9} {:>9} {:>8}",
        "query", "off ms", "on ms", "on/off"
    );
    let mut log_sum = 0.0f64;
    for &(name, sql) in QUERIES {
        count_rows(off, sql).await?;
        count_rows(on, sql).await?;
        let (mut a, mut b) = (vec![], vec![]);
        for i in 0..iters {
            // Alternate which side runs first.
            if i % 2 == 0 {
                a.push(time(count_rows(off, sql)).await?.1);
                b.push(time(count_rows(on, sql)).await?.1);
            } else {
                b.push(time(count_rows(on, sql)).await?.1);
                a.push(time(count_rows(off, sql)).await?.1);
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

async fn count_rows(client: &Client, sql: &str) -> Result<usize> {
    Ok(client.query(sql, &[]).await?.len())
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
