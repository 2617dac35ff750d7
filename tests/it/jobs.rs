//! Scheduled SQL jobs against real peers: PostgreSQL standing in for Redshift, moto
//! minting credentials (and serving S3 for the shared run storage), the real
//! `sluice` binary restarted and run twice on one storage.
//!
//! The minted identity is proven as in `redshift.rs`: only moto produces the
//! `IAM:` prefix, and the stand-in trusts those users over TLS, so a row written
//! with `current_user` = `IAM:bob` was written under the minted identity.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::{http_get, metric, rows, scalar, sqlstate};
use crate::postgres;
use crate::redshift::{MOTO_S3, Options, Rig};

/// The job runner role: bob's Redshift identity (`IAM:bob`, who may write); jobs
/// that rs_writer holders may run by hand.
const JOB_ROLES: &str = r#"
[[roles]]
name = "job_runner"
redshift_user = "{user}"
"#;

/// The rows of `sluice.job_runs` for `job`, oldest first, as name → value maps.
async fn runs(c: &Client, job: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let sql = format!(
        "SELECT runid, username, command, status, return_message, start_time, end_time, \
         rows, sqlstate, attempt, trigger, gateway \
         FROM sluice.job_runs WHERE job = '{job}' ORDER BY start_time, runid"
    );
    let msgs = c
        .simple_query(&sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| {
                        (
                            r.columns()[i].name().to_owned(),
                            r.get(i).unwrap_or("NULL").to_owned(),
                        )
                    })
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Waits until `job`'s runs satisfy `done` (checked every 300 ms), returning them.
async fn wait_for_runs(
    c: &Client,
    job: &str,
    within: Duration,
    done: impl Fn(&[std::collections::BTreeMap<String, String>]) -> bool,
) -> Vec<std::collections::BTreeMap<String, String>> {
    let deadline = Instant::now() + within;
    loop {
        let r = runs(c, job).await;
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{job}: runs never got there: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One column of the `SHOW sluice.jobs` row of `job`.
async fn shown(c: &Client, job: &str, column: &str) -> String {
    let msgs = c.simple_query("SHOW sluice.jobs").await.expect("show jobs");
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) if r.get("job") == Some(job) => {
                r.get(column).map(str::to_owned)
            }
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_job_runs_under_its_minted_identity_and_its_runs_survive_a_restart() {
    let extra = format!(
        r#"{JOB_ROLES}
[job_history]
storage = "job-history"

[[jobs]]
name = "stamp"
every_secs = 1
target = "warehouse"
run_as_role = "job_runner"
run_as_user = "bob"
statements = [
  "CREATE TABLE IF NOT EXISTS public.job_log (who text, at timestamptz DEFAULT clock_timestamp())",
  "INSERT INTO public.job_log (who) SELECT current_user",
]
overlap = "queue"
grant_roles = ["rs_writer"]

[materialized_views]
schemas = ["mv"]
refresh_roles = ["mv_refresh"]
[[materialized_views.views]]
name = "mv.sales_by_region"
query = "SELECT region, count(*) AS n FROM public.sales GROUP BY region"

[[roles]]
name = "mv_refresh"
read = ["*"]
redshift_user = "{{user}}"

# On the lake, with rs_reader's grants: a gateway view refreshed, then read.
[[jobs]]
name = "refresh-view"
every_secs = 3600
enabled = false
target = "lake"
run_as_role = "rs_reader"
statements = [
  "REFRESH MATERIALIZED VIEW mv.sales_by_region",
  "SELECT * FROM mv.sales_by_region",
]

[[jobs]]
name = "manual-only"
every_secs = 3600
enabled = false
target = "warehouse"
run_as_role = "job_runner"
run_as_user = "bob"
statements = ["SELECT 1 FROM public.sales WHERE id <= 3"]
"#
    );
    let mut rig = Rig::start(Options {
        extra,
        ..Options::default()
    })
    .await;
    let ops = rig.connect("ops", "ops-pw").await;
    // Scheduled runs: each succeeded, under bob's identity, its rows counted.
    let before = wait_for_runs(&ops, "stamp", Duration::from_secs(30), |r| {
        r.iter().filter(|r| r["status"] == "succeeded").count() >= 2
    })
    .await;
    let ok = before
        .iter()
        .find(|r| r["status"] == "succeeded")
        .expect("a succeeded run");
    assert_eq!(ok["username"], "bob");
    assert_eq!(ok["trigger"], "schedule");
    assert_eq!(ok["attempt"], "1");
    assert_eq!(ok["rows"], "1", "INSERT 0 1: one row");
    assert!(
        ok["command"].contains("INSERT INTO public.job_log"),
        "{ok:?}"
    );
    assert_ne!(ok["end_time"], "NULL");
    // Upstream, the rows were written by the minted user (only moto makes `IAM:`).
    let who = rig
        .pg
        .sql("dev", "SELECT DISTINCT who FROM public.job_log")
        .expect("job_log");
    assert_eq!(who.trim(), "IAM:bob");
    assert_eq!(shown(&ops, "stamp", "enabled").await, "true");
    assert_eq!(shown(&ops, "stamp", "target").await, "warehouse");
    assert!(!shown(&ops, "stamp", "next_run").await.is_empty());
    assert_eq!(shown(&ops, "manual-only", "next_run").await, "");

    // By hand: admins and granted roles; others 42501; unknown jobs 42704.
    let bob = rig.bob().await;
    bob.batch_execute("CALL sluice.run_job('stamp')")
        .await
        .expect("rs_writer holders may run stamp");
    let alice = rig.alice().await;
    let e = alice
        .batch_execute("CALL sluice.run_job('stamp')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let e = ops
        .batch_execute("CALL sluice.run_job('no-such-job')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42704");
    // A disabled job is not scheduled, but runs when called.
    ops.batch_execute("CALL sluice.run_job('manual-only')")
        .await
        .expect("an admin runs a disabled job");
    let manual = runs(&ops, "manual-only").await;
    assert_eq!(manual.len(), 1, "{manual:?}");
    assert_eq!(manual[0]["trigger"], "manual");
    assert_eq!(manual[0]["rows"], "3");
    // A lake job: the gateway view's refresh (2 rows) and a lake read of it (2 rows).
    ops.batch_execute("CALL sluice.run_job('refresh-view')")
        .await
        .expect("refresh a gateway view from a job");
    let refreshed = runs(&ops, "refresh-view").await;
    assert_eq!(refreshed.len(), 1, "{refreshed:?}");
    assert_eq!(refreshed[0]["status"], "succeeded");
    assert_eq!(refreshed[0]["rows"], "4");
    assert_eq!(
        refreshed[0]["username"], "sluice_job",
        "the run-as user on the lake"
    );
    // Non-admins see no run table.
    let e = alice
        .simple_query("SELECT count(*) FROM sluice.job_runs")
        .await
        .unwrap_err();
    assert!(
        ["42501", "42P01", "3F000"].contains(&sqlstate(&e).as_str()),
        "{e:?}"
    );

    // A restart keeps the history (runs are stored under job-history/_jobs/).
    let stored = rig.dir.path().join("job-history/_jobs/runs/stamp");
    assert!(stored.is_dir(), "{}", stored.display());
    let ids: Vec<String> = runs(&ops, "stamp")
        .await
        .iter()
        .filter(|r| r["status"] != "running")
        .map(|r| r["runid"].clone())
        .collect();
    rig.restart().await;
    let ops = rig.connect("ops", "ops-pw").await;
    let after: Vec<String> = runs(&ops, "stamp")
        .await
        .iter()
        .map(|r| r["runid"].clone())
        .collect();
    for id in &ids {
        assert!(
            after.contains(id),
            "run {id} lost in the restart: {after:?}"
        );
    }
    assert_eq!(runs(&ops, "manual-only").await.len(), 1);
    assert_eq!(shown(&ops, "manual-only", "last_status").await, "succeeded");
    // And the schedule goes on after it.
    wait_for_runs(&ops, "stamp", Duration::from_secs(20), |r| {
        r.iter()
            .filter(|r| r["status"] == "succeeded" && !ids.contains(&r["runid"]))
            .count()
            >= 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_retries_and_keeps_its_error_and_overlapping_ticks_are_skipped() {
    let admin = postgres::free_port().expect("port");
    let extra = format!(
        r#"{JOB_ROLES}
[admin]
listen = "127.0.0.1:{admin}"

[[jobs]]
name = "broken"
schedule = "*/20 * * * * *"
target = "warehouse"
run_as_role = "job_runner"
run_as_user = "bob"
statements = ["SELECT 1", "SELECT * FROM public.no_such_table", "SELECT 2"]
retries = 2
retry_backoff_secs = 1

[[jobs]]
name = "slow"
every_secs = 1
target = "warehouse"
run_as_role = "job_runner"
run_as_user = "bob"
statements = ["SELECT pg_sleep(2.5)"]
overlap = "skip"

[[jobs]]
name = "too-slow"
every_secs = 3600
enabled = false
target = "warehouse"
run_as_role = "job_runner"
run_as_user = "bob"
statements = ["SELECT pg_sleep(30)"]
timeout_secs = 1
"#
    );
    let rig = Rig::start(Options {
        extra,
        ..Options::default()
    })
    .await;
    let ops = rig.connect("ops", "ops-pw").await;

    // Overlap: ticks while a 2.5 s run runs are skipped and recorded as such.
    let slow = wait_for_runs(&ops, "slow", Duration::from_secs(30), |r| {
        r.iter().any(|r| r["status"] == "succeeded")
            && r.iter().filter(|r| r["status"] == "skipped").count() >= 2
    })
    .await;
    let skipped = slow
        .iter()
        .find(|r| r["status"] == "skipped")
        .expect("a skipped run");
    assert!(
        skipped["return_message"].contains("still running"),
        "{skipped:?}"
    );
    // Runs that did run never overlapped.
    let ran: Vec<_> = slow.iter().filter(|r| r["status"] == "succeeded").collect();
    for w in ran.windows(2) {
        assert!(w[0]["end_time"] <= w[1]["start_time"], "{ran:#?}");
    }
    // By hand while it runs: refused with 55006 (skip policy).
    let deadline = Instant::now() + Duration::from_secs(10);
    while shown(&ops, "slow", "running").await != "true" {
        assert!(Instant::now() < deadline, "never found slow running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = ops
        .batch_execute("CALL sluice.run_job('slow')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55006", "{e:?}");

    // A failing scheduled run is retried (retries = 2: three attempts, backoff 1 s
    // then 2 s); each attempt keeps its error, the statement it failed at, and its
    // SQLSTATE.
    let broken = wait_for_runs(&ops, "broken", Duration::from_secs(45), |r| {
        r.iter()
            .filter(|r| r["trigger"] == "schedule" && r["status"] == "failed")
            .count()
            >= 3
    })
    .await;
    let failed: Vec<_> = broken
        .iter()
        .filter(|r| r["trigger"] == "schedule")
        .take(3)
        .collect();
    let attempts: Vec<&str> = failed.iter().map(|r| r["attempt"].as_str()).collect();
    assert_eq!(attempts, ["1", "2", "3"], "{failed:#?}");
    for r in &failed {
        assert_eq!(r["status"], "failed");
        assert_eq!(r["sqlstate"], "42P01");
        assert!(
            r["return_message"].contains("statement 2 of 3")
                && r["return_message"].contains("no_such_table"),
            "{r:?}"
        );
    }
    assert_eq!(shown(&ops, "broken", "last_status").await, "failed");
    // The failure alerts through metrics.
    let text = http_get(admin, "/metrics", None).await.1;
    assert_eq!(metric(&text, "sluice_job_failing{job=\"broken\"}"), 1.0);
    assert!(
        metric(
            &text,
            "sluice_job_runs_total{job=\"broken\",status=\"failed\"}"
        ) >= 3.0
    );
    assert!(
        metric(
            &text,
            "sluice_job_runs_total{job=\"slow\",status=\"skipped\"}"
        ) >= 2.0
    );
    // By hand: the run's error, with its SQLSTATE.
    let e = ops
        .batch_execute("CALL sluice.run_job('broken')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42P01", "{e:?}");

    // A timeout cancels the statement upstream: 57014, status "timed out".
    let started = Instant::now();
    let e = ops
        .batch_execute("CALL sluice.run_job('too-slow')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let timed = runs(&ops, "too-slow").await;
    assert_eq!(
        timed.last().map(|r| r["status"].as_str()),
        Some("timed out")
    );
    // Cancelled upstream, not left running there.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sleeping = rig
            .pg
            .sql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'",
            )
            .expect("pg_stat_activity");
        if sleeping.trim() == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the timed-out statement still runs"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two gateways on one S3 storage (moto, conditional puts): each tick runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_sharing_the_storage_run_each_scheduled_tick_once() {
    let extra = format!(
        r#"{JOB_ROLES}{MOTO_S3}
[job_history]
storage = "s3://shared/sluice"

[[jobs]]
name = "tick"
every_secs = 1
target = "warehouse"
run_as_role = "job_runner"
run_as_user = "bob"
statements = ["SELECT 1"]
"#
    );
    let rig = Rig::start(Options {
        extra,
        buckets: vec!["shared"],
        ..Options::default()
    })
    .await;
    // The second gateway: the same config on another port.
    let second = rig.another_gateway(&[]).await;
    let port2 = second.port;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let ops = rig.connect("ops", "ops-pw").await;
    let ops2 = crate::harness::connect_plain(port2, "ops", "ops-pw")
        .await
        .expect("second gateway");
    let elapsed = started.elapsed().as_secs_f64();
    // Both gateways read the same history from the storage.
    let one = runs(&ops, "tick").await;
    let two = runs(&ops2, "tick").await;
    let ids = |r: &[std::collections::BTreeMap<String, String>]| -> Vec<String> {
        r.iter()
            .filter(|r| r["status"] != "running")
            .map(|r| r["runid"].clone())
            .collect()
    };
    let common: Vec<_> = ids(&one)
        .into_iter()
        .filter(|id| ids(&two).contains(id))
        .collect();
    assert!(common.len() >= 4, "{one:#?}\n{two:#?}");
    // One run per tick: ticks are a second apart, so no two runs started within
    // half a second of each other, and there are no more runs than seconds.
    let all = runs(&ops, "tick").await;
    let starts: Vec<f64> = rows(
        &ops,
        "SELECT date_part('epoch', start_time) FROM sluice.job_runs WHERE job = 'tick' ORDER BY start_time",
    )
    .await
    .iter()
    .map(|r| r[0].parse().expect("epoch seconds"))
    .collect();
    for w in starts.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap >= 0.5, "two runs {gap:.3} s apart: {all:#?}");
    }
    let total_elapsed = started.elapsed().as_secs_f64() + 15.0;
    assert!(
        (all.len() as f64) <= total_elapsed,
        "{} runs in about {elapsed:.0} s",
        all.len()
    );
    assert!(all.iter().all(|r| r["status"] != "failed"), "{all:#?}");
    // The gateway that lost a tick's lease skipped it (S3's If-None-Match: *).
    let leases = rig
        .moto
        .requests()
        .iter()
        .filter(|l| l.contains("PUT /shared/sluice/_jobs/leases/tick/"))
        .count();
    assert!(
        leases as f64 >= 1.5 * common.len() as f64,
        "both gateways claim each tick: {leases} lease puts for {} runs",
        common.len()
    );
    assert!(
        rig.moto
            .requests()
            .iter()
            .any(|l| l.contains("/_jobs/leases/tick/") && l.contains(" 412 ")),
        "a lost lease is S3's 412 Precondition Failed"
    );
    assert_eq!(scalar(&ops2, "SHOW sluice.jobs").await, "tick");
    drop(second);
}
