//! Forwarding overhead: `pgbench -S` (simple and prepared protocol, several client
//! counts) against PostgreSQL directly, through PgBouncer (session pooling) and through
//! Sluice forwarding to the same PostgreSQL, in one run; then rows/s streaming a
//! 10-million-row result directly and through Sluice; then pg8000's own test suite
//! (a real driver's tests) directly and through Sluice.
//!
//! Sluice runs twice: with its default session threads (one per core) and with one
//! session thread, PgBouncer's own model. Each measurement is repeated in rounds that
//! rotate the order of the four targets, and the medians are compared, because on a
//! small shared machine one run of a few seconds varies by ±10%.
//!
//! All hops are plaintext on loopback, so the numbers compare the proxies, not TLS.
//! Sluice uses `credentials = "static"` (no AWS API in the measured path: minted
//! credentials are cached and only matter at connect time).
//!
//! The cost of observing (`--observability-only` runs just that) compares two Sluices,
//! one with query groups, the audit file and the admin listener off and one with them
//! on. Each round runs the same pgbench off and on back to back (the order alternates
//! round by round) and takes the round's on/off ratio, so a slow moment of the machine
//! weighs on both sides of one ratio; the table shows the median tps of each side, the
//! median of the per-round ratios and their min–max.
//!
//! `--aa-only` compares two identical gateways the same way: the comparison's own
//! bias and noise, against which the other two are read.
//!
//! The cost of admission (`--workload-only`) compares a Sluice without workload
//! queues and one whose statements all take a slot of one default queue, the same way.
//!
//! Run: `cargo bench --bench passthrough` (options: `--seconds N`, `--rounds N`,
//! `--skip-suite`, `--observability-only`, `--workload-only`, `--aa-only`, and to run one case of the pgbench tables
//! `--mode simple|prepared`, `--clients N`).
//! Needs Debian's `postgresql`, `pgbouncer` and `pgbench`, and for the suite part
//! `pip install pytest pg8000==1.31.6` plus pg8000's source (fetched with pip).

#[path = "../tests/support/postgres.rs"]
mod postgres;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use postgres::{Postgres, Result, free_port, run};

const CLIENT_COUNTS: [usize; 3] = [1, 8, 32];

struct Args {
    seconds: u64,
    rounds: usize,
    skip_suite: bool,
    /// Only the observability off/on comparison.
    observability_only: bool,
    /// Only the admission (workload queue) off/on comparison.
    workload_only: bool,
    /// Only an A/A comparison: two identical gateways (the bench's own bias).
    aa_only: bool,
    /// Only this pgbench protocol (`simple` or `prepared`), when given.
    mode: Option<String>,
    /// Only this client count, when given.
    clients: Option<usize>,
}

impl Args {
    fn modes(&self) -> Vec<&'static str> {
        ["simple", "prepared"]
            .into_iter()
            .filter(|m| self.mode.as_deref().is_none_or(|x| x == *m))
            .collect()
    }

    fn client_counts(&self) -> Vec<usize> {
        match self.clients {
            Some(n) => vec![n],
            None => CLIENT_COUNTS.to_vec(),
        }
    }
}

fn args() -> Args {
    let mut a = Args {
        seconds: 5,
        rounds: 3,
        skip_suite: false,
        observability_only: false,
        workload_only: false,
        aa_only: false,
        mode: None,
        clients: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => a.seconds = it.next().and_then(|s| s.parse().ok()).unwrap_or(5),
            "--rounds" => a.rounds = it.next().and_then(|s| s.parse().ok()).unwrap_or(3).max(1),
            "--skip-suite" => a.skip_suite = true,
            "--observability-only" => a.observability_only = true,
            "--workload-only" => a.workload_only = true,
            "--aa-only" => a.aa_only = true,
            "--mode" => a.mode = it.next(),
            "--clients" => a.clients = it.next().and_then(|s| s.parse().ok()),
            _ => {}
        }
    }
    a
}

/// PgBouncer in session mode in front of `pg`, run as the `postgres` user.
struct Bouncer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Bouncer {
    fn start(pg_port: u16) -> Result<Bouncer> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("pgbouncer.ini"),
            format!(
                "[databases]\nbench = host=127.0.0.1 port={pg_port} dbname=bench\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 auth_type = scram-sha-256\nauth_file = {d}/userlist.txt\npool_mode = session\n\
                 max_client_conn = 500\ndefault_pool_size = 100\nunix_socket_dir =\n\
                 server_tls_sslmode = disable\n\
                 logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n"
            ),
        )?;
        std::fs::write(dir.path().join("userlist.txt"), "\"bench\" \"bench\"\n")?;
        run(Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir.path()))?;
        let child = Command::new("runuser")
            .args(["-u", "postgres", "--", "pgbouncer"])
            .arg(dir.path().join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("pgbouncer does not start ({e}): apt-get install pgbouncer"))?;
        wait_listening(port)?;
        Ok(Bouncer {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // The child is `runuser`; PgBouncer itself is stopped through its pidfile.
        if let Ok(pid) = std::fs::read_to_string(self._dir.path().join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("nothing listens on {port}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Sluice in-process, forwarding database `bench` (and `postgres`, for the driver
/// suite) to PostgreSQL with static credentials; `threads`: `server.worker_threads`.
async fn start_sluice(pg_port: u16, dir: &Path, threads: Option<usize>) -> Result<u16> {
    start_sluice_with(pg_port, dir, threads, "").await
}

/// What the observability comparison turns off, and on: query groups; the audit
/// trail (hash-chained file) and the admin listener. Metrics are always kept.
const OBSERVE_OFF: &str = "[query_groups]\nenabled = false\n";
const OBSERVE_ON: &str = "[query_groups]\nenabled = true\n[admin]\nlisten = \"127.0.0.1:0\"\n[audit]\n[audit.file]\npath = \"audit/audit.jsonl\"\n";

/// `start_sluice` with more TOML appended.
async fn start_sluice_with(
    pg_port: u16,
    dir: &Path,
    threads: Option<usize>,
    extra: &str,
) -> Result<u16> {
    let threads = threads
        .map(|n| format!("worker_threads = {n}\n"))
        .unwrap_or_default();
    std::fs::write(dir.join("bench.pw"), "bench\n")?;
    std::fs::write(dir.join("postgres.pw"), "pw\n")?;
    std::fs::create_dir_all(dir.join("lake"))?;
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
database = "sluice"
max_connections = 1000
{threads}[server.tls]
allow_plaintext = "loopback"
[log]
level = "warn"

[[auth.users]]
name = "bench"
password = "bench"
roles = ["writer"]
[[auth.users]]
name = "postgres"
password = "pw"
roles = ["writer"]

[[roles]]
name = "writer"
write = true
redshift_user = "{{user}}"

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
max_sessions = 200
max_sessions_per_user = 200

[[redshift]]
name = "postgres"
database = "postgres"
host = "127.0.0.1"
port = {pg_port}
tls = "disable"
credentials = "static"
user = "postgres"
password_file = "postgres.pw"

{extra}
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

/// pgbench -S through Sluice with query groups, the audit trail and the admin
/// listener off and on (metrics stay on: they cannot be turned off). Each round
/// runs off and on back to back, the order alternating, and yields one on/off
/// ratio; the median of those ratios is the cost of observing.
fn observability_overhead(
    runtime: &tokio::runtime::Runtime,
    pg_port: u16,
    args: &Args,
) -> Result<()> {
    let on_dir = compare_gateways(
        runtime,
        pg_port,
        args,
        "observability: query groups + audit file + admin listener off vs on",
        OBSERVE_OFF,
        OBSERVE_ON,
    )?;
    let audit = on_dir.path().join("audit/audit.jsonl");
    let lines = std::fs::read_to_string(&audit)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    println!("audit lines written by the 'on' gateway: {lines}");
    Ok(())
}

/// What the admission comparison turns on: one workload queue every statement
/// takes a slot of (never full at these client counts).
const ADMISSION_ON: &str =
    "[query_groups]\nenabled = false\n[[workload.queues]]\nname = \"default\"\nslots = 64\n";

/// pgbench -S through Sluice without workload queues and with one default queue:
/// the cost of the admit stage (`--workload-only`).
fn admission_overhead(runtime: &tokio::runtime::Runtime, pg_port: u16, args: &Args) -> Result<()> {
    compare_gateways(
        runtime,
        pg_port,
        args,
        "admission: no workload queues vs one default queue (64 slots)",
        OBSERVE_OFF,
        ADMISSION_ON,
    )?;
    Ok(())
}

/// Two gateways differing by `off_extra` / `on_extra` TOML, compared with pgbench
/// -S; returns the 'on' gateway's directory (for its files).
fn compare_gateways(
    runtime: &tokio::runtime::Runtime,
    pg_port: u16,
    args: &Args,
    title: &str,
    off_extra: &str,
    on_extra: &str,
) -> Result<tempfile::TempDir> {
    let (off_dir, on_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let off = runtime.block_on(start_sluice_with(pg_port, off_dir.path(), None, off_extra))?;
    let on = runtime.block_on(start_sluice_with(pg_port, on_dir.path(), None, on_extra))?;
    println!(
        "\n{title} (pgbench -S, {} rounds of {} s, each round off and on back to back, order alternating)",
        args.rounds, args.seconds
    );
    println!(
        "{:<9} {:>7} {:>9} {:>9} {:>8} {:>15}",
        "mode", "clients", "off tps", "on tps", "on/off", "ratio min-max"
    );
    println!(
        "{:<9} {:>7} {:>9} {:>9} {:>8}",
        "", "", "(median)", "(median)", "(median)"
    );
    for mode in args.modes() {
        for clients in args.client_counts() {
            let (mut offs, mut ons, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..args.rounds {
                let (off_tps, on_tps) = if round % 2 == 0 {
                    let a = pgbench(off, clients, mode, args.seconds)?.tps;
                    (a, pgbench(on, clients, mode, args.seconds)?.tps)
                } else {
                    let b = pgbench(on, clients, mode, args.seconds)?.tps;
                    (pgbench(off, clients, mode, args.seconds)?.tps, b)
                };
                offs.push(off_tps);
                ons.push(on_tps);
                ratios.push(on_tps / off_tps);
            }
            let (lo, hi) = ratios
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &r| {
                    (lo.min(r), hi.max(r))
                });
            println!(
                "{mode:<9} {clients:>7} {:>9.0} {:>9.0} {:>8.3} {:>15}",
                median(offs.into_iter()),
                median(ons.into_iter()),
                median(ratios.into_iter()),
                format!("{lo:.3}-{hi:.3}"),
            );
        }
    }
    Ok(on_dir)
}

#[derive(Default)]
struct PgbenchResult {
    tps: f64,
    latency_ms: f64,
}

fn pgbench(port: u16, clients: usize, mode: &str, seconds: u64) -> Result<PgbenchResult> {
    let out = run(Command::new("pgbench")
        .env("PGPASSWORD", "bench")
        .env("PGSSLMODE", "disable")
        .args(["-n", "-S", "-h", "127.0.0.1", "-U", "bench"])
        .args(["-p", &port.to_string()])
        .args(["-c", &clients.to_string()])
        .args(["-j", &clients.min(2).to_string()])
        .args(["-M", mode, "-T", &seconds.to_string(), "bench"]))?;
    let number = |prefix: &str| -> Option<f64> {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l[prefix.len()..].split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Ok(PgbenchResult {
        tps: number("tps = ").ok_or_else(|| format!("no tps in pgbench output:\n{out}"))?,
        latency_ms: number("latency average = ").unwrap_or(f64::NAN),
    })
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Rows/s reading `rows` generated rows through a tokio-postgres client.
async fn stream_rows(port: u16, rows: u64) -> Result<f64> {
    let url = format!(
        "host=127.0.0.1 port={port} user=bench password=bench dbname=bench sslmode=disable"
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let sql = format!("SELECT g, g::text AS t FROM generate_series(1, {rows}) g");
    let started = Instant::now();
    let stream = client
        .query_raw(sql.as_str(), std::iter::empty::<i32>())
        .await?;
    futures::pin_mut!(stream);
    let mut n = 0u64;
    while let Some(row) = stream.next().await {
        row?;
        n += 1;
    }
    assert_eq!(n, rows);
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// Runs pg8000's own tests (native + dbapi) against `port`; returns (passed, failed
/// test ids).
fn pg8000_suite(tests: &Path, port: u16) -> Result<(usize, Vec<String>)> {
    let out = Command::new("python3")
        .current_dir(tests)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGPASSWORD", "pw")
        .args([
            "-m",
            "pytest",
            "-q",
            "-rf",
            "-p",
            "no:cacheprovider",
            "--timeout=60",
        ])
        .args([
            "test/native",
            "test/dbapi",
            "-k",
            "not benchmark and not gss and not ssl",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let failed: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("FAILED "))
        .map(|l| l.split(" - ").next().unwrap_or(l).to_owned())
        .collect();
    let passed = text
        .lines()
        .rev()
        .find_map(|l| {
            let idx = l.find(" passed")?;
            l[..idx]
                .rsplit(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Ok((passed, failed))
}

/// pg8000's source tree (its tests are not in the wheel), fetched once with pip.
fn pg8000_tests() -> Result<PathBuf> {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pg8000-src");
    let tree = base.join("pg8000-1.31.6");
    if !tree.exists() {
        std::fs::create_dir_all(&base)?;
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
            ])
            .args(["pg8000==1.31.6", "-d"])
            .arg(&base))?;
        run(Command::new("tar")
            .current_dir(&base)
            .args(["xzf", "pg8000-1.31.6.tar.gz"]))?;
    }
    Ok(tree)
}

fn main() -> Result<()> {
    let args = args();
    let pg = Postgres::start("host all all 127.0.0.1/32 scram-sha-256")?;
    pg.sql(
        "postgres",
        "CREATE ROLE bench LOGIN SUPERUSER PASSWORD 'bench'; \
         CREATE ROLE postgres LOGIN SUPERUSER PASSWORD 'pw';",
    )?;
    pg.sql("postgres", "CREATE DATABASE bench OWNER bench")?;
    run(Command::new("pgbench")
        .env("PGPASSWORD", "bench")
        .args(["-i", "-q", "-s", "10", "-h", "127.0.0.1", "-U", "bench"])
        .args(["-p", &pg.port.to_string(), "bench"]))?;
    // The benchmark's runtime only hosts the accept loops: sessions run on each
    // server's own session threads, as in `sluice serve`.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    if args.observability_only {
        return observability_overhead(&runtime, pg.port, &args);
    }
    if args.workload_only {
        return admission_overhead(&runtime, pg.port, &args);
    }
    if args.aa_only {
        compare_gateways(
            &runtime,
            pg.port,
            &args,
            "A/A: two identical gateways (observing off), the comparison's own bias",
            OBSERVE_OFF,
            OBSERVE_OFF,
        )?;
        return Ok(());
    }
    let bouncer = Bouncer::start(pg.port)?;
    let dir = tempfile::tempdir()?;
    let one_dir = tempfile::tempdir()?;
    let sluice = runtime.block_on(start_sluice(pg.port, dir.path(), None))?;
    let sluice_one = runtime.block_on(start_sluice(pg.port, one_dir.path(), Some(1)))?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "pgbench -S, median of {} rounds of {} s (PostgreSQL 15, scale 10; all hops plaintext on loopback; {cores} cores)",
        args.rounds, args.seconds
    );
    println!(
        "sluice: default session threads ({cores}); sluice-1: one session thread (PgBouncer's model)"
    );
    println!(
        "{:<9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "mode",
        "clients",
        "direct",
        "bouncer",
        "sluice",
        "sluice-1",
        "b/direct",
        "s/direct",
        "s/bounc",
        "s1/bounc",
        "lat d",
        "lat b",
        "lat s",
        "lat s1"
    );
    let targets = [pg.port, bouncer.port, sluice, sluice_one];
    for mode in args.modes() {
        for clients in args.client_counts() {
            let mut runs: [Vec<PgbenchResult>; 4] = Default::default();
            for round in 0..args.rounds {
                // Rotate the order so no target always runs first (or right after
                // another target's load).
                for i in 0..targets.len() {
                    let t = (i + round) % targets.len();
                    runs[t].push(pgbench(targets[t], clients, mode, args.seconds)?);
                }
            }
            let tps = runs.each_ref().map(|r| median(r.iter().map(|x| x.tps)));
            let lat = runs
                .each_ref()
                .map(|r| median(r.iter().map(|x| x.latency_ms)));
            println!(
                "{:<9} {:>7} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>6.3}ms {:>6.3}ms {:>6.3}ms {:>6.3}ms",
                mode,
                clients,
                tps[0],
                tps[1],
                tps[2],
                tps[3],
                tps[1] / tps[0],
                tps[2] / tps[0],
                tps[2] / tps[1],
                tps[3] / tps[1],
                lat[0],
                lat[1],
                lat[2],
                lat[3]
            );
        }
    }

    observability_overhead(&runtime, pg.port, &args)?;
    admission_overhead(&runtime, pg.port, &args)?;

    let rows = 10_000_000;
    println!("\nstreaming {rows} rows (int4, text) to tokio-postgres, binary format");
    runtime.block_on(async {
        let mut direct = Vec::new();
        let mut through = Vec::new();
        for _ in 0..2 {
            direct.push(stream_rows(pg.port, rows).await?);
            through.push(stream_rows(sluice, rows).await?);
        }
        let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
        println!(
            "direct {:.2} M rows/s, through Sluice {:.2} M rows/s, ratio {:.2}",
            best(&direct) / 1e6,
            best(&through) / 1e6,
            best(&through) / best(&direct)
        );
        Ok::<_, postgres::BoxError>(())
    })?;

    if !args.skip_suite {
        let ready = Command::new("python3")
            .args(["-c", "import pg8000, pytest, pytest_timeout, pytz"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ready {
            println!(
                "\npg8000 suite skipped: pip install pytest pytest-timeout pytz pg8000==1.31.6"
            );
        } else {
            let tests = pg8000_tests()?;
            let (direct_pass, direct_fail) = pg8000_suite(&tests, pg.port)?;
            let (sluice_pass, sluice_fail) = pg8000_suite(&tests, sluice)?;
            println!("\npg8000 1.31.6 own tests (native + dbapi, without benchmarks/GSS/SSL):");
            println!(
                "direct:  {direct_pass} passed, {} failed",
                direct_fail.len()
            );
            println!(
                "sluice:  {sluice_pass} passed, {} failed",
                sluice_fail.len()
            );
            for f in sluice_fail.iter().filter(|f| !direct_fail.contains(f)) {
                println!("  fails only through Sluice: {f}");
            }
        }
    }
    drop(bouncer);
    Ok(())
}
