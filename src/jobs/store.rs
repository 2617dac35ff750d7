//! Where job runs and leases live, beside the views (a directory or an S3 prefix,
//! through `object_store`):
//!
//! ```text
//! <storage>/_jobs/runs/<job>/<runid>.json      one run (attempt), rewritten at its end
//! <storage>/_jobs/leases/<job>/<tick millis>   who runs a scheduled tick
//! ```
//!
//! A run id starts with its start time in microseconds, so a job's runs list in
//! order. The newest `keep_runs` runs of a job are kept; older ones are deleted after
//! each run. A lease is created with `PutMode::Create` (a hard link on a directory,
//! `If-None-Match: *` on S3): of the gateways sharing the storage, the one whose
//! create succeeds runs the tick. Leases older than a day are deleted now and then.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use crate::error::{PgError, SqlState};

/// How a run ended (or that it still runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Skipped,
}

impl Status {
    /// As `sluice.job_runs` shows it (pg_cron's words where it has them).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::TimedOut => "timed out",
            Status::Skipped => "skipped",
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Status::TimedOut => "timed_out",
            other => other.as_str(),
        }
    }

    pub fn is_failure(self) -> bool {
        matches!(self, Status::Failed | Status::TimedOut)
    }
}

/// One run (one attempt) of a job, as stored and as `sluice.job_runs` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub runid: i64,
    pub job: String,
    /// The database user it ran as (upstream), or the run-as user (lake).
    pub username: String,
    /// The statements, redacted (`route::redact`), one per line.
    pub command: String,
    pub status: Status,
    /// The error (redacted), the skip reason, or a summary of what ran.
    pub return_message: String,
    /// The SQLSTATE of the error, when there was one.
    #[serde(default)]
    pub sqlstate: Option<String>,
    #[serde(with = "rfc3339")]
    pub start_time: DateTime<Utc>,
    #[serde(with = "rfc3339_opt")]
    pub end_time: Option<DateTime<Utc>>,
    pub rows: u64,
    /// 1 for the first attempt of a tick, 2 for its first retry, …
    pub attempt: u32,
    /// `schedule` or `manual` (`CALL sluice.run_job`).
    pub trigger: String,
    /// The gateway that ran it (host name and process id).
    pub gateway: String,
}

/// Times as RFC 3339 text (chrono's own serde support is not built).
mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

mod rfc3339_opt {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| {
                DateTime::parse_from_rfc3339(&text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
    }
}

/// A new run id: the start time in microseconds, times 1000, plus a random part
/// (gateways starting runs in the same microsecond still differ).
pub fn new_runid(start: DateTime<Utc>) -> i64 {
    start
        .timestamp_micros()
        .saturating_mul(1000)
        .saturating_add(rand::random::<u16>() as i64 % 1000)
}

fn io_error(what: impl std::fmt::Display) -> PgError {
    PgError::new(SqlState::IO_ERROR, format!("job run storage: {what}"))
}

/// The run history and leases in one object store.
pub struct RunStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
}

/// The version of each run object a sync has read (modification time, entity tag
/// and size: S3's times have one-second resolution, and a run is rewritten at its
/// end, often within the second it started).
pub type Seen = BTreeMap<Path, (DateTime<Utc>, Option<String>, u64)>;

impl RunStore {
    /// `root` is the configured storage's prefix; everything goes under `_jobs/`.
    pub fn new(store: Arc<dyn ObjectStore>, root: &Path) -> RunStore {
        RunStore {
            store,
            root: root.clone().join("_jobs"),
        }
    }

    fn runs_dir(&self, job: &str) -> Path {
        self.root.clone().join("runs").join(job)
    }

    fn run_path(&self, run: &Run) -> Path {
        self.runs_dir(&run.job)
            .join(format!("{:020}.json", run.runid.max(0)))
    }

    fn leases_dir(&self, job: &str) -> Path {
        self.root.clone().join("leases").join(job)
    }

    /// Writes (or rewrites) a run.
    pub async fn save(&self, run: &Run) -> Result<(), PgError> {
        let json = serde_json::to_vec_pretty(run).map_err(io_error)?;
        self.store
            .put(&self.run_path(run), json.into())
            .await
            .map_err(io_error)?;
        Ok(())
    }

    /// Every stored run whose object is new or changed since `seen` (which is
    /// updated). Unreadable objects are logged and skipped.
    pub async fn sync(&self, seen: &mut Seen) -> Result<Vec<Run>, PgError> {
        let dir = self.root.clone().join("runs");
        let listed: Vec<object_store::ObjectMeta> =
            match self.store.list(Some(&dir)).try_collect().await {
                Ok(l) => l,
                Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
                Err(e) => return Err(io_error(e)),
            };
        let mut changed = Vec::new();
        let mut present = std::collections::BTreeSet::new();
        for meta in listed {
            present.insert(meta.location.clone());
            let version = (meta.last_modified, meta.e_tag.clone(), meta.size);
            if seen.get(&meta.location) == Some(&version) {
                continue;
            }
            let bytes = match self.store.get(&meta.location).await {
                Ok(r) => r.bytes().await.map_err(io_error)?,
                // Deleted (pruned) between the listing and the read.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(io_error(e)),
            };
            match serde_json::from_slice::<Run>(&bytes) {
                Ok(run) => {
                    seen.insert(meta.location.clone(), version);
                    changed.push(run);
                }
                Err(e) => {
                    tracing::warn!(object = %meta.location, error = %e, "unreadable job run; skipped")
                }
            }
        }
        seen.retain(|p, _| present.contains(p));
        Ok(changed)
    }

    /// Deletes a job's runs beyond the newest `keep`. Best effort.
    pub async fn prune(&self, job: &str, keep: usize) {
        let listed: Vec<object_store::ObjectMeta> = match self
            .store
            .list(Some(&self.runs_dir(job)))
            .try_collect()
            .await
        {
            Ok(l) => l,
            Err(_) => return,
        };
        let mut paths: Vec<Path> = listed.into_iter().map(|m| m.location).collect();
        if paths.len() <= keep {
            return;
        }
        // Zero-padded run ids: the name order is the start order.
        paths.sort();
        let excess = paths.len() - keep;
        for p in paths.into_iter().take(excess) {
            if let Err(e) = self.store.delete(&p).await {
                tracing::debug!(object = %p, error = %e, "cannot delete an old job run");
            }
        }
    }

    /// Claims the scheduled tick `tick` of `job` for `gateway`: `Ok(true)` when this
    /// gateway created the lease (it runs the tick), `Ok(false)` when another did.
    pub async fn lease(
        &self,
        job: &str,
        tick: DateTime<Utc>,
        gateway: &str,
    ) -> Result<bool, PgError> {
        let path = crate::cluster::lease::tick_path(&self.leases_dir(job), tick);
        crate::cluster::lease::claim(self.store.as_ref(), &path, gateway, tick)
            .await
            .map_err(io_error)
    }

    /// Deletes a job's leases for ticks before `before`. Best effort.
    pub async fn prune_leases(&self, job: &str, before: DateTime<Utc>) {
        crate::cluster::lease::prune(self.store.as_ref(), &self.leases_dir(job), before).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> (tempfile::TempDir, RunStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("fs");
        (dir, RunStore::new(Arc::new(fs), &Path::from("views")))
    }

    fn run(job: &str, runid: i64, status: Status) -> Run {
        Run {
            runid,
            job: job.into(),
            username: "sluice_job".into(),
            command: "SELECT 1".into(),
            status,
            return_message: String::new(),
            sqlstate: None,
            start_time: Utc::now(),
            end_time: None,
            rows: 0,
            attempt: 1,
            trigger: "schedule".into(),
            gateway: "test".into(),
        }
    }

    #[tokio::test]
    async fn one_gateway_wins_each_tick_and_old_leases_go() {
        let (_dir, store) = local();
        let tick = Utc::now();
        let later = tick + chrono::Duration::seconds(60);
        assert!(store.lease("nightly", tick, "a").await.unwrap());
        assert!(!store.lease("nightly", tick, "b").await.unwrap());
        assert!(!store.lease("nightly", tick, "a").await.unwrap());
        // Another tick, or the same tick of another job, is a new lease.
        assert!(store.lease("nightly", later, "b").await.unwrap());
        assert!(store.lease("other", tick, "b").await.unwrap());
        // Ten gateways racing for one tick: exactly one wins.
        let next = later + chrono::Duration::seconds(60);
        let store = Arc::new(store);
        let racers: Vec<_> = (0..10)
            .map(|i| {
                let s = store.clone();
                tokio::spawn(async move { s.lease("nightly", next, &format!("g{i}")).await })
            })
            .collect();
        let mut wins = 0;
        for r in racers {
            if r.await.unwrap().unwrap() {
                wins += 1;
            }
        }
        assert_eq!(wins, 1);
        store
            .prune_leases("nightly", later - chrono::Duration::seconds(1))
            .await;
        // The pruned tick could be claimed again; the kept one cannot.
        assert!(store.lease("nightly", tick, "c").await.unwrap());
        assert!(!store.lease("nightly", later, "c").await.unwrap());
    }

    #[tokio::test]
    async fn runs_sync_when_changed_and_prune_oldest_first() {
        let (_dir, store) = local();
        let mut seen = Seen::new();
        assert!(store.sync(&mut seen).await.unwrap().is_empty());
        let mut first = run("j", 1_000, Status::Running);
        store.save(&first).await.unwrap();
        for id in [2_000, 3_000] {
            store.save(&run("j", id, Status::Succeeded)).await.unwrap();
        }
        let got = store.sync(&mut seen).await.unwrap();
        assert_eq!(got.len(), 3);
        // Nothing changed: nothing re-read.
        assert!(store.sync(&mut seen).await.unwrap().is_empty());
        // A rewritten run is read again (its modification time moved).
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        first.status = Status::Failed;
        first.return_message = "boom".into();
        store.save(&first).await.unwrap();
        let got = store.sync(&mut seen).await.unwrap();
        assert_eq!(got, vec![first]);
        store.prune("j", 2).await;
        let _ = store.sync(&mut seen).await.unwrap();
        let mut ids: Vec<i64> = Vec::new();
        for p in seen.keys() {
            let name = p.filename().unwrap_or_default().to_owned();
            ids.push(name.trim_end_matches(".json").parse().unwrap());
        }
        assert_eq!(ids, vec![2_000, 3_000]);
    }

    #[test]
    fn run_ids_order_by_start_time() {
        let a = Utc::now();
        let b = a + chrono::Duration::milliseconds(1);
        assert!(new_runid(a) < new_runid(b));
        assert!(new_runid(a) > 0);
    }
}
