//! Bounded memory for lake queries, on a real gateway process (its RSS is read from
//! /proc): `engine.memory_limit_mb`, a role's `memory_share`, spilling, and the
//! errors past the limits (53200, 53400).
//!
//! The data is the demo lake's `nyc.trips` (1.2 million rows, 17 columns).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, pin_mut};
use tokio_postgres::Client;

use crate::harness::*;

const LIMIT_MB: u64 = 128;
/// `analyst`'s memory_share: 50 % of 128 MB = 64 MB. (Much smaller shares make
/// DataFusion's sorts fragile: each partition's sort keeps 10 MB of merge headroom
/// it must get back after every spill; the engine warns about such shares.)
const SHARE: u64 = 50;
/// What the gateway process may hold beyond its lake memory pool: its idle RSS
/// (the debug binary's touched pages, the catalogs, thread stacks: 113–119 MB
/// here), buffers DataFusion does not account (Parquet decoding, spill-file
/// readers, the session's output buffer), and what glibc's allocator keeps of
/// freed memory (it grows with the bytes a workload churns through, not with the
/// limit). Measured with this test (default glibc settings, 18 runs): the
/// reporter's full sort, run after the join that filled the pool, peaks at
/// 258–325 MB, 130–197 MB over the limit; with `MALLOC_MMAP_THRESHOLD_=65536` in the
/// gateway's environment 209–252 MB (5 runs). README "Memory for lake queries".
const OVERHEAD_MB: u64 = 256;
const TRIPS: i64 = 1_200_000;

/// The sort every test uses: all 1.2 million trips, six columns (~58 MB as Arrow;
/// analyst's sorters may hold a fair part of 64 MB less their merge headroom, so it
/// spills), most expensive first.
const BIG_SORT: &str = "SELECT trip_id, fare_amount, total_amount, trip_distance, pickup_datetime, dropoff_datetime \
     FROM nyc.trips ORDER BY fare_amount DESC, trip_id";

/// Every column of every trip (~150 MB as Arrow), sorted.
const FULL_SORT: &str = "SELECT * FROM nyc.trips ORDER BY fare_amount DESC, trip_id";

/// A hash join whose build side, whichever side DataFusion builds (both are as
/// wide: 1.2 million rows × 11 columns ≈ 100 MB, plus its hash table), is larger
/// than analyst's share; hash joins cannot spill.
const BIG_JOIN: &str = "SELECT count(*), sum(\
     a.fare_amount + a.extra + a.mta_tax + a.tip_amount + a.tolls_amount + a.improvement_surcharge \
     + a.total_amount + a.trip_distance + a.pickup_longitude + a.pickup_latitude \
     + b.fare_amount + b.extra + b.mta_tax + b.tip_amount + b.tolls_amount + b.improvement_surcharge \
     + b.total_amount + b.trip_distance + b.pickup_longitude + b.pickup_latitude) \
     FROM nyc.trips a JOIN nyc.trips b ON a.trip_id = b.trip_id";

fn auth() -> String {
    "[[auth.users]]\nname = \"big\"\npassword = \"big\"\nroles = [\"analyst\"]\n\n\
     [[auth.users]]\nname = \"small\"\npassword = \"small\"\nroles = [\"reporter\"]\n\n\
     [[roles]]\nname = \"analyst\"\nread = [\"*\"]\nmemory_share = 50\n\n\
     [[roles]]\nname = \"reporter\"\nread = [\"*\"]\n\n"
        .to_owned()
}

fn lake() -> String {
    format!("[lake.local]\nroot = \"{}\"\n", demo_dir().display())
}

/// The process's resident set size in MiB.
fn rss_mb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// Bytes in the files under `dir` (spill files live in a `datafusion-*` directory).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Samples RSS and spill bytes every 20 ms until stopped; keeps the peaks.
struct Sampler {
    stop: Arc<AtomicBool>,
    rss: Arc<AtomicU64>,
    spill: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32, spill_dir: std::path::PathBuf) -> Sampler {
        let (stop, rss, spill) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, r, p) = (stop.clone(), rss.clone(), spill.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Some(mb) = rss_mb(pid) {
                    r.fetch_max(mb, Ordering::Relaxed);
                }
                p.fetch_max(dir_bytes(&spill_dir), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Sampler {
            stop,
            rss,
            spill,
            task,
        }
    }

    /// (peak RSS MiB, peak spill bytes)
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.rss.load(Ordering::Relaxed),
            self.spill.load(Ordering::Relaxed),
        )
    }
}

/// Small lake queries in a loop on `client` until `stop`: (answered, slowest).
fn keep_asking(client: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u32, Duration)> {
    tokio::spawn(async move {
        let (mut answered, mut slowest) = (0u32, Duration::ZERO);
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let n: i64 = client
                .query_one("SELECT count(*) FROM nyc.zones WHERE location_id > 0", &[])
                .await
                .expect("the other role's small query answers")
                .get(0);
            assert_eq!(n, 265);
            slowest = slowest.max(t.elapsed());
            answered += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (answered, slowest)
    })
}

/// Streams BIG_SORT and checks its order; returns the rows and the sum of trip ids.
async fn run_big_sort(c: &Client) -> Result<(i64, i64), tokio_postgres::Error> {
    let rows = c.query_raw(BIG_SORT, std::iter::empty::<&str>()).await?;
    pin_mut!(rows);
    let (mut n, mut sum) = (0i64, 0i64);
    let mut last: Option<(f64, i64)> = None;
    while let Some(row) = rows.next().await {
        let row = row?;
        let (id, fare): (i64, f64) = (row.get(0), row.get(1));
        if let Some((lf, lid)) = last {
            assert!(
                lf > fare || (lf == fare && lid < id),
                "row {n} out of order: ({lf}, {lid}) then ({fare}, {id})"
            );
        }
        last = Some((fare, id));
        n += 1;
        sum += id;
    }
    Ok((n, sum))
}

/// Streams a query to its end; returns its row count.
async fn count_rows(c: &Client, sql: &str) -> Result<i64, tokio_postgres::Error> {
    let rows = c.query_raw(sql, std::iter::empty::<&str>()).await?;
    pin_mut!(rows);
    let mut n = 0i64;
    while let Some(row) = rows.next().await {
        row?;
        n += 1;
    }
    Ok(n)
}

/// A small lake query (the 265 zones) answers.
async fn zones_ok(c: &Client) {
    let n: i64 = c
        .query_one("SELECT count(*) FROM nyc.zones WHERE location_id > 0", &[])
        .await
        .expect("zones")
        .get(0);
    assert_eq!(n, 265);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_role_over_its_share_spills_or_gets_53200_and_the_gateway_stays_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = crate::postgres::free_port().expect("port");
    let admin = crate::postgres::free_port().expect("port");
    let path = GatewayConfig::bare()
        .port(port)
        .auth(&auth())
        .lake(&lake())
        .extra(&format!(
            "[engine]\nmemory_limit_mb = {LIMIT_MB}\nspill_dir = \"spill\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"
        ))
        .write(dir.path());
    let sluice = spawn_sluice(&path, port, &[]).await;
    let pid = sluice.id().expect("pid");
    let spill_dir = dir.path().join("spill");
    assert!(
        spill_dir.is_dir(),
        "spill_dir is created, relative to the config"
    );

    let big = connect_plain(port, "big", "big")
        .await
        .expect("big connects");
    let small = connect_plain(port, "small", "small")
        .await
        .expect("small connects");
    zones_ok(&small).await;
    let expected_sum: i64 = small
        .query_one("SELECT sum(trip_id) FROM nyc.trips", &[])
        .await
        .expect("sum")
        .get(0);
    let idle_rss = rss_mb(pid).expect("rss");

    // (a) The sort is bigger than analyst's share: it spills and succeeds, while
    // (b) the reporter keeps getting answers (through every phase below).
    let stop = Arc::new(AtomicBool::new(false));
    let asker = keep_asking(
        connect_plain(port, "small", "small")
            .await
            .expect("connects"),
        stop.clone(),
    );
    let sampler = Sampler::start(pid, spill_dir.clone());
    let started = Instant::now();
    let (n, sum) = run_big_sort(&big)
        .await
        .expect("the sort spills and succeeds");
    let sort_time = started.elapsed();
    let (sort_rss, spilled) = sampler.finish().await;
    assert_eq!(n, TRIPS);
    assert_eq!(sum, expected_sum, "every trip once");
    assert!(spilled > 0, "the sort spilled to engine.spill_dir");
    assert_eq!(
        dir_bytes(&spill_dir),
        0,
        "spill files are removed after the query"
    );

    // (a) A hash join cannot spill: 53200, naming the role's share and the limit.
    let sampler = Sampler::start(pid, spill_dir.clone());
    let e = big
        .query_one(BIG_JOIN, &[])
        .await
        .expect_err("the join's build side does not fit the share");
    let (join_rss, _) = sampler.finish().await;
    assert_eq!(sqlstate(&e), "53200", "{e:?}");
    let db = e.as_db_error().expect("a server error");
    eprintln!(
        "53200: {}\n  detail: {:?}\n  hint: {:?}",
        db.message(),
        db.detail(),
        db.hint()
    );
    assert!(
        db.message().contains("role \"analyst\" may hold 64 MB")
            && db
                .message()
                .contains("50% of engine.memory_limit_mb = 128 MB"),
        "{}",
        db.message()
    );
    assert!(
        db.hint().unwrap_or("").contains("memory_share"),
        "{:?}",
        db.hint()
    );
    assert!(
        db.detail().unwrap_or("").contains("HashJoinInput"),
        "{:?}",
        db.detail()
    );

    // (a) The reporter has no share: the same join fails at the engine's limit.
    let e = small
        .query_one(BIG_JOIN, &[])
        .await
        .expect_err("the join's build side does not fit memory_limit_mb");
    assert_eq!(sqlstate(&e), "53200", "{e:?}");
    let db = e.as_db_error().expect("a server error");
    eprintln!("53200: {}\n  detail: {:?}", db.message(), db.detail());
    assert_eq!(
        db.message(),
        "out of memory: lake queries together may hold 128 MB (engine.memory_limit_mb)"
    );
    assert!(
        db.detail().unwrap_or("").contains("top memory consumers"),
        "{:?}",
        db.detail()
    );

    // The whole pool in use: the reporter (no share: up to memory_limit_mb) sorts
    // every column of every trip (~150 MB as Arrow: it spills).
    let sampler = Sampler::start(pid, spill_dir.clone());
    let full = count_rows(&small, FULL_SORT).await;
    let (full_rss, full_spilled) = sampler.finish().await;
    assert_eq!(
        full.expect("the reporter's sort spills and succeeds"),
        TRIPS
    );
    assert!(full_spilled > 0, "the full sort spilled too");
    stop.store(true, Ordering::Relaxed);
    let (answered, slowest) = asker.await.expect("asker");
    assert!(answered >= 3, "the other role kept answering ({answered})");
    assert!(
        slowest < Duration::from_secs(10),
        "small queries stayed quick: slowest {slowest:?}"
    );

    // (c) The process stayed within the pool plus the measured overhead.
    let peak = sort_rss.max(join_rss).max(full_rss);
    eprintln!(
        "memory: idle RSS {idle_rss} MB; peak RSS {sort_rss} MB under the sort ({sort_time:?}, \
         {spilled} bytes spilled), {join_rss} MB under the join; limit {LIMIT_MB} MB, share {SHARE}%; \
         {answered} small queries answered, slowest {slowest:?}; {full_rss} MB under the reporter's \
         full sort ({full_spilled} bytes spilled)"
    );
    assert!(
        peak < LIMIT_MB + OVERHEAD_MB,
        "peak RSS {peak} MB ≥ memory_limit_mb {LIMIT_MB} + overhead {OVERHEAD_MB}"
    );

    // (d) After the failure the gateway still answers, both roles, and nothing is
    // left reserved.
    let n: i64 = big
        .query_one("SELECT count(*) FROM nyc.trips", &[])
        .await
        .expect("big still answers")
        .get(0);
    assert_eq!(n, TRIPS);
    zones_ok(&small).await;
    let (status, metrics) = http_get(admin, "/metrics", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(&metrics, "sluice_lake_memory_limit_bytes"),
        (LIMIT_MB << 20) as f64
    );
    assert_eq!(
        metric(
            &metrics,
            "sluice_lake_memory_role_limit_bytes{role=\"analyst\"}"
        ),
        ((LIMIT_MB << 20) * SHARE / 100) as f64
    );
    assert_eq!(
        metric(
            &metrics,
            "sluice_lake_memory_role_reserved_bytes{role=\"analyst\"}"
        ),
        0.0
    );
    assert_eq!(metric(&metrics, "sluice_lake_spill_bytes"), 0.0);
    drop(sluice);
}

#[tokio::test]
async fn a_full_spill_directory_gets_53400() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spill = dir.path().join("spill");
    let gw = GatewayConfig::bare()
        .auth(&auth())
        .lake(&lake())
        .extra(&format!(
            "[engine]\nmemory_limit_mb = {LIMIT_MB}\nspill_dir = \"{}\"\nspill_max_mb = 1\n",
            spill.display()
        ))
        .start()
        .await;
    let big = connect_plain(gw.port, "big", "big")
        .await
        .expect("connects");
    let e = run_big_sort(&big)
        .await
        .expect_err("the sort needs more than 1 MB of spill files");
    assert_eq!(sqlstate(&e), "53400", "{e:?}");
    assert!(
        error_message(&e).contains("temporary file size exceeds engine.spill_max_mb (1 MB)"),
        "{}",
        error_message(&e)
    );
    // The session and the gateway go on.
    zones_ok(&big).await;
}
