//! Scheduled SQL jobs (`[[jobs]]`): statements run on a schedule (or on `CALL
//! sluice.run_job('name')`) under a role's minted identity upstream or its policy
//! on the lake, every run kept beside the views' storage.
//!
//! - `schedule.rs`: when ticks fall (cron in the job's time zone, or epoch-aligned
//!   intervals: every gateway computes the same ticks).
//! - `store.rs`: runs (one object per attempt) and leases (one object per tick,
//!   created with a conditional put: of several gateways sharing the storage, one
//!   runs a tick).
//! - `run.rs`: executing the statements (upstream, lake, gateway view refreshes).
//! - `calls.rs`: `CALL sluice.run_job` (with its grant check) and `SHOW sluice.jobs`.
//! - `table.rs`: `sluice.job_runs` for the engine's `sluice` schema.
//!
//! This module sits beside `cache` and `observe`: it never imports `server`, which
//! starts it and hands it to sessions (`CALL sluice.run_job`, `SHOW sluice.jobs`).
//! Jobs are fixed at start: a config reload does not change them.

mod calls;
mod run;
pub mod schedule;
pub mod store;
pub mod table;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::auth::policy::Policy;
use crate::cache::matview::MatViews;
use crate::cache::matview::storage::Storage;
use crate::config::{Config, JobConfig, Overlap, RoleConfig};
use crate::engine::Engine;
use crate::error::{PgError, SqlState};
use crate::redshift::{Upstream, Upstreams};
use run::Failure;
use schedule::JobSchedule;
use store::{Run, RunStore, Seen, Status};

pub use calls::{Caller, SHOW_COLUMNS};

/// One configured job and its scheduling state.
pub struct Job {
    pub config: JobConfig,
    schedule: JobSchedule,
    /// `None`: the job runs on the lake.
    upstream: Option<Arc<Upstream>>,
    /// The run-as role's lake grants.
    policy: Arc<Policy>,
    /// The statements as runs record them: redacted, one per line.
    command: String,
    /// Whether redaction masked anything (error messages then lose quoted parts).
    secret: bool,
    next_due: Mutex<Option<DateTime<Utc>>>,
    /// One run (with its retries) at a time on this gateway.
    turn: Arc<tokio::sync::Mutex<()>>,
    running: AtomicBool,
    /// A tick waits behind the running one (overlap = "queue").
    queued: AtomicBool,
    leases_pruned: Mutex<Option<Instant>>,
}

impl Job {
    fn next_due(&self) -> Option<DateTime<Utc>> {
        self.next_due.lock().ok().and_then(|n| *n)
    }
}

/// Every job, the run history, and what runs need.
pub struct Jobs {
    /// By lower-case name.
    jobs: BTreeMap<String, Arc<Job>>,
    store: RunStore,
    keep_runs: usize,
    engine: Arc<Engine>,
    upstreams: Vec<Arc<Upstream>>,
    matviews: Option<Arc<MatViews>>,
    roles: Vec<RoleConfig>,
    /// Runs by job name, by run id (the newest `keep_runs` of each).
    history: Mutex<BTreeMap<String, BTreeMap<i64, Run>>>,
    seen: tokio::sync::Mutex<Seen>,
    /// Who runs here, as runs and leases record it.
    gateway: String,
}

/// The statements as runs and logs carry them: each through `route::redact`, one
/// per line; and whether that masked anything.
fn redacted(statements: &[String]) -> (String, bool) {
    let texts: Vec<_> = statements
        .iter()
        .map(|s| crate::route::redact::redact(s))
        .collect();
    let secret = texts
        .iter()
        .any(|t| matches!(t, std::borrow::Cow::Owned(_)));
    (texts.join(";\n"), secret)
}

impl Jobs {
    /// Loads the run history and starts the scheduler. `None` without `[[jobs]]`.
    pub async fn start(
        config: &Config,
        engine: Arc<Engine>,
        upstreams: &Upstreams,
        matviews: Option<Arc<MatViews>>,
    ) -> Result<Option<Arc<Jobs>>, String> {
        if config.jobs.is_empty() {
            return Ok(None);
        }
        let key = if config.job_history.storage.is_some() {
            "job_history.storage"
        } else if config.materialized_views.is_some() {
            "materialized_views.storage"
        } else {
            "job_history.storage (default \"jobs\")"
        };
        let storage = Storage::open(config, config.job_storage(), key, &engine)?;
        let mut jobs = BTreeMap::new();
        for (i, c) in config.jobs.iter().enumerate() {
            let schedule = JobSchedule::of(c).map_err(|e| format!("jobs[{i}]: {e}"))?;
            let upstream = match c.target.as_str() {
                "lake" => None,
                name => Some(
                    upstreams
                        .all()
                        .iter()
                        .find(|u| u.name() == name)
                        .cloned()
                        .ok_or_else(|| format!("jobs[{i}].target: no upstream `{name}`"))?,
                ),
            };
            let (command, secret) = redacted(&c.statements);
            let job = Job {
                schedule,
                upstream,
                policy: Arc::new(Policy::resolve(
                    std::slice::from_ref(&c.run_as_role),
                    &config.roles,
                )),
                secret,
                command,
                config: c.clone(),
                next_due: Mutex::new(None),
                turn: Arc::new(tokio::sync::Mutex::new(())),
                running: AtomicBool::new(false),
                queued: AtomicBool::new(false),
                leases_pruned: Mutex::new(None),
            };
            jobs.insert(c.name.to_lowercase(), Arc::new(job));
        }
        let all = Arc::new(Jobs {
            jobs,
            store: RunStore::new(storage.store.clone(), storage.root()),
            keep_runs: config.job_history.keep_runs,
            engine,
            upstreams: upstreams.all().to_vec(),
            matviews,
            roles: config.roles.clone(),
            history: Mutex::new(BTreeMap::new()),
            seen: tokio::sync::Mutex::new(Seen::new()),
            gateway: crate::cluster::gateway_name(),
        });
        all.sync()
            .await
            .map_err(|e| format!("{key}: cannot read the job runs: {}", e.message))?;
        let now = Utc::now();
        for job in all.jobs.values() {
            let failing = all
                .last_run(&job.config.name)
                .is_some_and(|r| r.status.is_failure());
            crate::metrics::metrics()
                .job_failing
                .with_label_values(&[job.config.name.as_str()])
                .set(i64::from(failing));
            if job.config.enabled
                && let Ok(mut n) = job.next_due.lock()
            {
                *n = job.schedule.next_after(now);
            }
        }
        tokio::spawn(scheduler(Arc::downgrade(&all)));
        tracing::info!(
            jobs = all.jobs.len(),
            storage = config.job_storage(),
            "scheduled jobs started"
        );
        Ok(Some(all))
    }

    /// Reads runs other gateways (or this one before a restart) stored.
    pub async fn sync(&self) -> Result<(), PgError> {
        let mut seen = self.seen.lock().await;
        let changed = self.store.sync(&mut seen).await?;
        let now = Utc::now();
        for mut run in changed {
            // A run left `running` past its timeout: its gateway stopped during it.
            if run.status == Status::Running
                && let Some(job) = self.jobs.get(&run.job.to_lowercase())
                && run.start_time + chrono::Duration::seconds(job.config.timeout_secs as i64 + 60)
                    < now
            {
                run.status = Status::Failed;
                run.return_message =
                    "abandoned: the gateway running it stopped before it ended".into();
            }
            self.remember(run);
        }
        Ok(())
    }

    fn remember(&self, run: Run) {
        let Ok(mut history) = self.history.lock() else {
            return;
        };
        let runs = history.entry(run.job.clone()).or_default();
        runs.insert(run.runid, run);
        while runs.len() > self.keep_runs {
            runs.pop_first();
        }
    }

    /// Stores a run (a failure to store is logged: the run is still remembered).
    async fn record(&self, run: &Run) {
        if let Err(e) = self.store.save(run).await {
            tracing::error!(job = %run.job, runid = run.runid, error = %e.message, "cannot store a job run");
        }
        self.remember(run.clone());
    }

    /// Every remembered run, oldest first.
    pub fn runs(&self) -> Vec<Run> {
        let Ok(history) = self.history.lock() else {
            return Vec::new();
        };
        let mut all: Vec<Run> = history.values().flat_map(|r| r.values().cloned()).collect();
        all.sort_by_key(|r| (r.start_time, r.runid));
        all
    }

    fn last_run(&self, job: &str) -> Option<Run> {
        let history = self.history.lock().ok()?;
        history
            .get(job)
            .and_then(|r| r.last_key_value())
            .map(|(_, r)| r.clone())
    }

    /// A skipped tick, recorded as a run.
    async fn skip(&self, job: &Job, why: &str) {
        let now = Utc::now();
        let run = Run {
            runid: store::new_runid(now),
            job: job.config.name.clone(),
            username: self.username(job),
            command: job.command.clone(),
            status: Status::Skipped,
            return_message: why.to_owned(),
            sqlstate: None,
            start_time: now,
            end_time: Some(now),
            rows: 0,
            attempt: 1,
            trigger: "schedule".into(),
            gateway: self.gateway.clone(),
        };
        tracing::info!(job = %job.config.name, reason = why, "job tick skipped");
        crate::metrics::metrics()
            .job_runs
            .with_label_values(&[job.config.name.as_str(), Status::Skipped.label()])
            .inc();
        self.record(&run).await;
        self.store.prune(&job.config.name, self.keep_runs).await;
    }

    /// One attempt: recorded `running`, run, recorded with how it ended.
    async fn attempt(&self, job: &Job, trigger: &str, attempt: u32) -> Run {
        let start = Utc::now();
        let name = job.config.name.as_str();
        let mut run = Run {
            runid: store::new_runid(start),
            job: name.to_owned(),
            username: self.username(job),
            command: job.command.clone(),
            status: Status::Running,
            return_message: String::new(),
            sqlstate: None,
            start_time: start,
            end_time: None,
            rows: 0,
            attempt,
            trigger: trigger.to_owned(),
            gateway: self.gateway.clone(),
        };
        self.record(&run).await;
        let clock = Instant::now();
        let count = job.config.statements.len();
        match self.execute(job).await {
            Ok(rows) => {
                run.status = Status::Succeeded;
                run.rows = rows;
                run.return_message = format!("{count} statement(s) ran");
            }
            Err(Failure::Error(i, e)) => {
                let message = if job.secret {
                    crate::route::redact::mask_quoted(&e.message)
                } else {
                    e.message.clone()
                };
                run.status = Status::Failed;
                run.sqlstate = Some(e.code.0.to_owned());
                run.return_message = format!("statement {i} of {count}: {message}");
            }
            Err(Failure::TimedOut(i)) => {
                run.status = Status::TimedOut;
                run.sqlstate = Some(SqlState::QUERY_CANCELED.0.to_owned());
                run.return_message = format!(
                    "canceled after timeout_secs = {} during statement {i} of {count}",
                    job.config.timeout_secs
                );
            }
        }
        run.end_time = Some(Utc::now());
        let m = crate::metrics::metrics();
        m.job_runs
            .with_label_values(&[name, run.status.label()])
            .inc();
        m.job_run_duration
            .with_label_values(&[name])
            .observe(clock.elapsed().as_secs_f64());
        if run.status.is_failure() {
            tracing::warn!(job = name, attempt, status = run.status.as_str(), message = %run.return_message, "job run failed");
        } else {
            tracing::info!(
                job = name,
                attempt,
                rows = run.rows,
                ms = clock.elapsed().as_millis() as u64,
                "job run succeeded"
            );
        }
        self.record(&run).await;
        self.store.prune(name, self.keep_runs).await;
        run
    }

    /// Runs a job (holding its turn): `attempts` tries, with exponential backoff.
    async fn run_attempts(&self, job: &Job, trigger: &str, attempts: u32) -> Run {
        job.running.store(true, Ordering::Release);
        let mut attempt = 1;
        let run = loop {
            let run = self.attempt(job, trigger, attempt).await;
            if !run.status.is_failure() || attempt >= attempts {
                break run;
            }
            let factor = 2u64.saturating_pow(attempt - 1);
            let wait = job
                .config
                .retry_backoff_secs
                .saturating_mul(factor)
                .min(86_400);
            tracing::info!(job = %job.config.name, attempt, retry_in_secs = wait, "job run will be retried");
            tokio::time::sleep(Duration::from_secs(wait)).await;
            attempt += 1;
        };
        job.running.store(false, Ordering::Release);
        crate::metrics::metrics()
            .job_failing
            .with_label_values(&[job.config.name.as_str()])
            .set(i64::from(run.status.is_failure()));
        run
    }

    /// A scheduled tick: claimed through the lease, then run, skipped or queued.
    async fn fire(&self, job: &Job, tick: DateTime<Utc>) {
        let name = job.config.name.as_str();
        match self.store.lease(name, tick, &self.gateway).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(job = name, %tick, "another gateway took this tick");
                crate::metrics::metrics()
                    .job_leases_lost
                    .with_label_values(&[name])
                    .inc();
                return;
            }
            Err(e) => {
                tracing::error!(job = name, %tick, error = %e.message, "cannot claim the job's tick in the storage; tick not run");
                return;
            }
        }
        self.prune_leases(job).await;
        let turn = match job.turn.try_lock() {
            Ok(turn) => turn,
            Err(_) if job.config.overlap == Overlap::Skip => {
                return self.skip(job, "the previous run was still running").await;
            }
            Err(_) => {
                if job.queued.swap(true, Ordering::AcqRel) {
                    return self
                        .skip(job, "a run was already queued behind the running one")
                        .await;
                }
                let turn = job.turn.lock().await;
                job.queued.store(false, Ordering::Release);
                turn
            }
        };
        self.run_attempts(job, "schedule", job.config.retries.saturating_add(1))
            .await;
        drop(turn);
    }

    /// Deletes the job's leases older than a day, at most every ten minutes.
    async fn prune_leases(&self, job: &Job) {
        let due = match job.leases_pruned.lock() {
            Ok(mut last) => {
                let due = last.is_none_or(|t| t.elapsed() > Duration::from_secs(600));
                if due {
                    *last = Some(Instant::now());
                }
                due
            }
            Err(_) => false,
        };
        if due {
            let before = Utc::now() - chrono::Duration::days(1);
            self.store.prune_leases(&job.config.name, before).await;
        }
    }
}

/// Starts due ticks until the jobs are gone. Ticks missed while a gateway was down
/// (or busy) are not made up: the next one is planned from now.
async fn scheduler(jobs: Weak<Jobs>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(all) = jobs.upgrade() else {
            return;
        };
        let now = Utc::now();
        for job in all.jobs.values() {
            if !job.config.enabled {
                continue;
            }
            let due = match job.next_due.lock() {
                Ok(mut next) => match *next {
                    Some(t) if t <= now => {
                        *next = job.schedule.next_after(now);
                        Some(t)
                    }
                    _ => None,
                },
                Err(_) => None,
            };
            if let Some(t) = due {
                let (all, job) = (all.clone(), job.clone());
                tokio::spawn(async move { all.fire(&job, t).await });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_stored_without_their_secrets() {
        let (command, secret) = redacted(&[
            "ALTER USER etl PASSWORD 'hunter2'".into(),
            "COPY t FROM 's3://b/k' CREDENTIALS 'aws_access_key_id=AKIA;aws_secret_access_key=shh'"
                .into(),
        ]);
        assert!(secret);
        assert!(
            !command.contains("hunter2") && !command.contains("shh") && !command.contains("AKIA"),
            "{command}"
        );
        assert!(command.contains("ALTER USER etl PASSWORD") && command.contains(";\nCOPY t"));
        let (plain, secret) = redacted(&["SELECT 'x' FROM t".into()]);
        assert!(!secret);
        assert_eq!(plain, "SELECT 'x' FROM t");
    }
}
