//! Hot results: a dashboard query (an aggregate over a 1-million-row upstream table)
//! run by `pgbench` clients against PostgreSQL directly, through Sluice with the
//! result cache off, through Sluice with the cache on (hits), and through Sluice
//! reading a gateway materialized view of the same query — in one run, with QPS and
//! p50/p99 latency from pgbench's per-transaction logs. The reference point is
//! `pgbench -S` (a primary-key lookup) on PostgreSQL directly: a cache hit should be
//! at least as fast.
//!
//! All hops are plaintext on loopback. Run: `cargo bench --bench dashboard`
//! (options: `--seconds N`, default 5). Needs Debian's `postgresql` and `pgbench`.

#[path = "../tests/support/postgres.rs"]
mod postgres;

use std::path::Path;
use std::process::Command;

use postgres::{Postgres, Result, run};

const QUERY: &str = "SELECT region, date_trunc('month', ordered_at) AS month, \
     sum(amount) AS revenue, count(*) AS orders \
     FROM public.orders GROUP BY 1, 2 ORDER BY 1, 2";
const VIEW_QUERY: &str = "SELECT region, month, revenue, orders FROM mv.dashboard ORDER BY 1, 2";

fn seconds() -> u64 {
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--seconds" {
            return it.next().and_then(|s| s.parse().ok()).unwrap_or(5);
        }
    }
    5
}

/// Sluice in-process, forwarding to PostgreSQL with static credentials; `bench`
/// has the result cache on, `nocache` has it off.
async fn start_sluice(pg_port: u16, dir: &Path) -> Result<u16> {
    std::fs::write(dir.join("bench.pw"), "bench\n")?;
    std::fs::create_dir_all(dir.join("lake"))?;
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
database = "sluice"
max_connections = 200
[server.tls]
allow_plaintext = "loopback"
[log]
level = "warn"

[[auth.users]]
name = "bench"
password = "bench"
roles = ["analyst"]
[[auth.users]]
name = "nocache"
password = "bench"
roles = ["analyst_uncached"]

[[roles]]
name = "analyst"
read = ["*"]
manage_materialized_views = true
redshift_user = "bench"
[[roles]]
name = "analyst_uncached"
read = ["*"]
result_cache_ttl_secs = 0
redshift_user = "bench"

[cache]
result_ttl_secs = 3600

[materialized_views]
schemas = ["mv"]
storage = "matviews"
refresh_user = "bench"
refresh_roles = ["analyst"]

[lake.local]
root = "lake"

[[redshift]]
name = "bench"
database = "bench"
host = "127.0.0.1"
port = {pg_port}
tls = "disable"
credentials = "static"
user = "bench"
password_file = "bench.pw"
[redshift.pool]
max_sessions = 100
max_sessions_per_user = 100
"#
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, toml)?;
    let config = sluice::config::Config::load(&path)?;
    let server = sluice::server::Server::bind(config).await?;
    let port = server.local_addr()?.port();
    tokio::spawn(server.run());
    Ok(port)
}

struct Measured {
    qps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs `script` (or `-S` when `None`) with `clients` clients; per-transaction
/// latencies from pgbench's log give the percentiles.
fn pgbench(
    port: u16,
    user: &str,
    script: Option<&Path>,
    clients: usize,
    mode: &str,
    seconds: u64,
) -> Result<Measured> {
    let logs = tempfile::tempdir()?;
    let prefix = logs.path().join("tx");
    let mut cmd = Command::new("pgbench");
    cmd.env("PGPASSWORD", "bench")
        .env("PGSSLMODE", "disable")
        .args(["-n", "-h", "127.0.0.1", "-U", user])
        .args(["-p", &port.to_string()])
        .args(["-c", &clients.to_string()])
        .args(["-j", &clients.min(2).to_string()])
        .args(["-M", mode, "-T", &seconds.to_string(), "-l"])
        .arg(format!("--log-prefix={}", prefix.display()));
    match script {
        Some(s) => cmd.arg("-f").arg(s),
        None => cmd.arg("-S"),
    };
    let out = run(cmd.arg("bench"))?;
    let tps = out
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("no tps in pgbench output:\n{out}"))?;
    let failed = out
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("0");
    if failed != "0" || out.contains("aborted") {
        return Err(format!("pgbench had failures:\n{out}").into());
    }
    let mut latencies: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(logs.path())? {
        let text = std::fs::read_to_string(entry?.path())?;
        latencies.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2))
                .filter_map(|v| v.parse::<u64>().ok()),
        );
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i] as f64 / 1000.0
    };
    Ok(Measured {
        qps: tps,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

fn main() -> Result<()> {
    let seconds = seconds();
    let pg = Postgres::start("host all all 127.0.0.1/32 scram-sha-256")?;
    pg.sql(
        "postgres",
        "CREATE ROLE bench LOGIN SUPERUSER PASSWORD 'bench'",
    )?;
    pg.sql("postgres", "CREATE DATABASE bench OWNER bench")?;
    pg.sql(
        "bench",
        "CREATE TABLE public.orders (id int PRIMARY KEY, region text NOT NULL, \
         amount numeric(12,2) NOT NULL, ordered_at timestamp NOT NULL);\
         INSERT INTO public.orders SELECT g, (ARRAY['north','south','east','west','central'])[g % 5 + 1], \
         (g % 997) * 1.25, timestamp '2025-01-01' + (g % 365) * interval '1 day' + (g % 86400) * interval '1 second' \
         FROM generate_series(1, 1000000) g; ANALYZE public.orders;",
    )?;
    run(Command::new("pgbench")
        .env("PGPASSWORD", "bench")
        .args(["-i", "-q", "-s", "10", "-h", "127.0.0.1", "-U", "bench"])
        .args(["-p", &pg.port.to_string(), "bench"]))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let sluice = runtime.block_on(start_sluice(pg.port, dir.path()))?;
    runtime.block_on(async {
        let url = format!(
            "host=127.0.0.1 port={sluice} user=bench password=bench dbname=bench sslmode=disable"
        );
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
            .batch_execute(&format!("CREATE MATERIALIZED VIEW mv.dashboard AS {QUERY}"))
            .await?;
        Ok::<_, postgres::BoxError>(())
    })?;
    let query = dir.path().join("dashboard.sql");
    std::fs::write(&query, format!("{QUERY};\n"))?;
    let view = dir.path().join("view.sql");
    std::fs::write(&view, format!("{VIEW_QUERY};\n"))?;

    println!(
        "dashboard query over 1,000,000 upstream rows (PostgreSQL 15); {seconds} s per run; plaintext loopback"
    );
    println!(
        "{:<9} {:>3}  {:<24} {:>10} {:>9} {:>9} {:>10}",
        "mode", "c", "target", "qps", "p50 ms", "p99 ms", "vs pk"
    );
    for mode in ["prepared", "simple"] {
        for clients in [1usize, 8] {
            let pk = pgbench(pg.port, "bench", None, clients, mode, seconds)?;
            let bench_through = |user: &'static str, script: std::path::PathBuf| {
                let rt = &runtime;
                rt.block_on(async move {
                    tokio::task::spawn_blocking(move || {
                        pgbench(sluice, user, Some(&script), clients, mode, seconds)
                    })
                    .await
                })
            };
            let direct = pgbench(pg.port, "bench", Some(&query), clients, mode, seconds)?;
            let uncached = bench_through("nocache", query.clone())??;
            // One warm-up query fills the cache; the run is then all hits.
            let cached = bench_through("bench", query.clone())??;
            let matview = bench_through("nocache", view.clone())??;
            for (name, m) in [
                ("pg: pgbench -S (pk)", &pk),
                ("pg: dashboard", &direct),
                ("sluice: uncached", &uncached),
                ("sluice: cache hit", &cached),
                ("sluice: materialized view", &matview),
            ] {
                println!(
                    "{:<9} {:>3}  {:<24} {:>10.0} {:>9.3} {:>9.3} {:>9.2}x",
                    mode,
                    clients,
                    name,
                    m.qps,
                    m.p50_ms,
                    m.p99_ms,
                    m.qps / pk.qps
                );
            }
            println!(
                "{:<9} {:>3}  cache hit / direct dashboard: {:.1}x QPS; view / direct: {:.1}x",
                mode,
                clients,
                cached.qps / direct.qps,
                matview.qps / direct.qps
            );
        }
    }
    Ok(())
}
