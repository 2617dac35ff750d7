//! Workload queues under load, in one run against an in-process gateway forwarding
//! to PostgreSQL (started here) and reading the demo lake:
//!
//! 1. **Load**: `--clients` connections (default 1000) each run `--statements`
//!    statements (default 100) through a queue of 16 slots — a small lake
//!    aggregate, and for one client in ten an upstream query every other statement
//!    (each forwarding client holds an upstream session) — and count errors
//!    (expected: none) and the statements that had to wait.
//! 2. **Queue wait accounting**: 8 clients each run `SELECT pg_sleep(0.2)` at once
//!    through a queue of one slot, so the k-th admitted waits k × 200 ms; the wait
//!    the gateway recorded (`sluice.query_groups.queue_time`) is compared with what
//!    the clients measured (their latency minus the statement's own 200 ms).
//! 3. **Soak** (`--soak-secs N`, default 0 = skipped): the load's clients keep
//!    going for N seconds; the process's RSS is sampled every 10 s.
//!
//! Run: `cargo bench --bench workload -- [--clients N] [--statements N] [--soak-secs N]`.
//! Needs Debian's `postgresql`. The process's open-file limit must allow two
//! sockets per client (it is raised to the hard limit here).

#[path = "../tests/support/postgres.rs"]
mod postgres;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use postgres::{Postgres, Result};
use tokio_postgres::{AsyncMessage, NoTls};

struct Args {
    clients: usize,
    statements: usize,
    soak_secs: u64,
}

fn args() -> Args {
    let mut a = Args {
        clients: 1000,
        statements: 100,
        soak_secs: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().and_then(|s| s.parse().ok());
        match arg.as_str() {
            "--clients" => a.clients = value().unwrap_or(a.clients),
            "--statements" => a.statements = value().unwrap_or(a.statements),
            "--soak-secs" => a.soak_secs = value().unwrap_or(0) as u64,
            _ => {}
        }
    }
    a
}

fn config(pg_port: u16, lake: &std::path::Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_connections = 5000
[server.tls]
allow_plaintext = "loopback"
[log]
level = "warn"

[[auth.users]]
name = "bench"
password = "bench"
roles = ["reader"]
[[roles]]
name = "reader"
read = ["*"]
admin = true
redshift_user = "{{user}}"

[lake.local]
root = "{lake}"
demo_data = true

[[redshift]]
name = "bench"
database = "sluice"
host = "127.0.0.1"
port = {pg_port}
tls = "disable"
credentials = "static"
user = "bench"
password_file = "bench.pw"
[redshift.pool]
max_sessions = 300
max_sessions_per_user = 300

[query_groups]
enabled = true

[[workload.queues]]
name = "sleepers"
applications = ["sleeper"]
slots = 1
queue_timeout_secs = 0

[[workload.queues]]
name = "default"
slots = 16
queue_timeout_secs = 0
"#,
        lake = lake.display()
    )
}

/// A client with an `application_name`, counting the NOTICEs it gets.
async fn connect(
    port: u16,
    app: &str,
    notices: Arc<AtomicU64>,
) -> Result<Arc<tokio_postgres::Client>> {
    let (client, mut conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .dbname("sluice")
        .user("bench")
        .password("bench")
        .application_name(app)
        .connect(NoTls)
        .await?;
    tokio::spawn(async move {
        use futures::StreamExt;
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notice(_) = m {
                notices.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok(Arc::new(client))
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Every client runs statements until `until` (or `count` of them), lake and
/// upstream alternating; returns (statements, errors).
async fn drive(
    clients: &[Arc<tokio_postgres::Client>],
    count: usize,
    until: Option<Instant>,
) -> (u64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let c = c.clone();
        let (ok, failed) = (ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            loop {
                if until.is_some_and(|u| Instant::now() >= u) || (until.is_none() && n >= count) {
                    break;
                }
                // Lake (demo vendors table) and upstream (a PostgreSQL table) alternate.
                let sql = if i % 10 != 0 || n % 2 == 0 {
                    "SELECT count(*) FROM nyc.vendors"
                } else {
                    "SELECT count(*) FROM pg_class"
                };
                match c.simple_query(sql).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("statement failed: {e:?}");
                        }
                        0
                    }
                };
                n += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

fn main() -> Result<()> {
    let args = args();
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
    let pg = Postgres::start("host all all 127.0.0.1/32 scram-sha-256")?;
    pg.sql("postgres", "ALTER SYSTEM SET max_connections = 400")?;
    pg.sql(
        "postgres",
        "CREATE ROLE bench LOGIN SUPERUSER PASSWORD 'bench'",
    )?;
    pg.restart()?;
    pg.sql("postgres", "CREATE DATABASE sluice OWNER bench")?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("bench.pw"), "bench\n")?;
    let lake = dir.path().join("lake");
    std::fs::write(dir.path().join("sluice.toml"), config(pg.port, &lake))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let config = sluice::config::Config::load(&dir.path().join("sluice.toml"))?;
        let server = sluice::server::Server::bind(config).await?;
        let port = server.local_addr()?.port();
        tokio::spawn(server.run());

        // 1. Load.
        let notices = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut clients = Vec::with_capacity(args.clients);
        for _ in 0..args.clients {
            clients.push(connect(port, "load", notices.clone()).await?);
        }
        let connected = started.elapsed();
        let rss_before = rss_mb();
        let started = Instant::now();
        let (ok, failed) = drive(&clients, args.statements, None).await;
        let took = started.elapsed();
        println!(
            "load: {} clients connected in {:.1} s; {ok} statements ok, {failed} failed, in {:.1} s ({:.0}/s); {} waited in line (NOTICEs); RSS {:.0} → {:.0} MB",
            args.clients,
            connected.as_secs_f64(),
            took.as_secs_f64(),
            ok as f64 / took.as_secs_f64(),
            notices.load(Ordering::Relaxed),
            rss_before,
            rss_mb()
        );

        // 2. Queue wait accounting.
        let mut sleepers = Vec::new();
        for _ in 0..8 {
            sleepers.push(connect(port, "sleeper", Arc::new(AtomicU64::new(0))).await?);
        }
        let mut tasks = Vec::new();
        for c in &sleepers {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = c.simple_query("SELECT pg_sleep(0.2)").await;
                (t.elapsed(), r.is_ok())
            }));
        }
        let mut measured = Duration::ZERO;
        for t in tasks {
            let (latency, ok) = t.await?;
            if !ok {
                return Err("a sleeper failed".into());
            }
            measured += latency.saturating_sub(Duration::from_millis(200));
        }
        let admin = connect(port, "report", Arc::new(AtomicU64::new(0))).await?;
        let recorded_ms = queue_time_ms(&admin).await?;
        println!(
            "queue wait accounting: clients measured {:.0} ms of waiting in all, the gateway recorded {recorded_ms:.0} ms (ratio {:.3}; theory 8·7/2 × 200 ms = 5600 ms)",
            measured.as_secs_f64() * 1000.0,
            recorded_ms / (measured.as_secs_f64() * 1000.0)
        );

        // 3. Soak.
        if args.soak_secs > 0 {
            let until = Instant::now() + Duration::from_secs(args.soak_secs);
            let sampler = tokio::spawn(async move {
                let mut samples = Vec::new();
                while Instant::now() < until {
                    samples.push(rss_mb());
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                samples
            });
            let (ok, failed) = drive(&clients, usize::MAX, Some(until)).await;
            let samples = sampler.await?;
            let max = samples.iter().copied().fold(0.0, f64::max);
            println!(
                "soak: {} s, {ok} statements ok, {failed} failed; RSS first {:.0} MB, last {:.0} MB, max {max:.0} MB ({} samples)",
                args.soak_secs,
                samples.first().copied().unwrap_or(0.0),
                samples.last().copied().unwrap_or(0.0),
                samples.len()
            );
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })?;
    Ok(())
}

/// The queue time the gateway recorded for the sleepers' statements, in ms.
async fn queue_time_ms(admin: &tokio_postgres::Client) -> Result<f64> {
    let rows = admin
        .simple_query(
            "SELECT CAST(sum(queue_time) AS VARCHAR) FROM sluice.query_groups WHERE application = 'sleeper'",
        )
        .await?;
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .ok_or_else(|| "no query group for the sleepers".into())
}
