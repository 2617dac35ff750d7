//! Result-cache invalidations shared by the gateways of a cluster (`[cluster]`).
//!
//! A gateway that sees a client write tables (the same moments it invalidates its
//! own cache) notes them; every `cluster.poll_ms` it appends what it noted as one
//! record to a journal in `cluster.storage` (`<storage>/_cluster/invalidations/`),
//! and reads the records the other gateways appended, dropping its cached results
//! for their tables. A write through one gateway therefore leaves every other
//! gateway's cache within two poll intervals plus the storage's latency.
//!
//! Every storage call is bounded (`journal::CALL_TIMEOUT`). When more than two
//! intervals (plus `READ_SLACK` for the storage's latency) have passed since the
//! start of the last complete read, nothing vouches
//! for the cached results any more: the gateway clears its cache, at every
//! interval, until reading works again, so staleness stays bounded either way.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::results::ResultCache;
use crate::cluster::journal::Journal;

/// Latency allowed a read before the cache stops being trusted.
const READ_SLACK: Duration = Duration::from_secs(2);

/// One gateway's writes of one interval: `None` when a write's tables were unknown
/// (everything goes).
#[derive(Serialize, Deserialize)]
struct Record {
    tables: Option<Vec<String>>,
}

#[derive(Default)]
struct Pending {
    everything: bool,
    tables: BTreeSet<String>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.everything && self.tables.is_empty()
    }

    fn merge(&mut self, other: Pending) {
        self.everything |= other.everything;
        if self.everything {
            self.tables.clear();
        } else {
            self.tables.extend(other.tables);
        }
    }
}

pub struct SharedInvalidations {
    journal: Journal,
    pending: Mutex<Pending>,
    poll: Duration,
}

impl SharedInvalidations {
    /// Starts sharing `cache`'s invalidations through `journal`, every `poll`.
    pub fn start(journal: Journal, poll: Duration, cache: &Arc<ResultCache>) -> Arc<Self> {
        let shared = Arc::new(SharedInvalidations {
            journal,
            pending: Mutex::new(Pending::default()),
            poll,
        });
        tokio::spawn(run(shared.clone(), Arc::downgrade(cache)));
        shared
    }

    /// Tables a client wrote here (`None`: unknown ones), for the other gateways.
    pub fn note(&self, tables: Option<&[String]>) {
        let noted = Pending {
            everything: tables.is_none(),
            tables: tables.unwrap_or_default().iter().cloned().collect(),
        };
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .merge(noted);
    }

    /// Appends what was noted since the last flush; kept for the next one on failure.
    async fn flush(&self) -> Result<(), object_store::Error> {
        let taken = {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if p.is_empty() {
                return Ok(());
            }
            std::mem::take(&mut *p)
        };
        let record = Record {
            tables: (!taken.everything).then(|| taken.tables.iter().cloned().collect()),
        };
        // Serialising a list of strings cannot fail; were it to, "everything" is safe.
        let body = serde_json::to_vec(&record).unwrap_or_else(|_| br#"{"tables":null}"#.to_vec());
        match self.journal.append(body).await {
            Ok(()) => {
                crate::metrics::metrics()
                    .cache_shared_invalidations
                    .with_label_values(&["published"])
                    .inc();
                Ok(())
            }
            Err(e) => {
                // Put the tables back (merged with anything noted meanwhile).
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .merge(taken);
                Err(e)
            }
        }
    }
}

/// Publishes, reads and prunes until the cache is gone.
async fn run(shared: Arc<SharedInvalidations>, cache: Weak<ResultCache>) {
    let m = crate::metrics::metrics();
    let mut tick = tokio::time::interval(shared.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_read = Instant::now();
    let mut last_prune = Instant::now();
    let mut last_warning: Option<Instant> = None;
    let mut warn = |what: &str, e: &object_store::Error| {
        m.cluster_sync_errors
            .with_label_values(&["invalidations"])
            .inc();
        if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            last_warning = Some(Instant::now());
            tracing::warn!(error = %e, "cluster.storage: cannot {what} result-cache invalidations");
        }
    };
    loop {
        tick.tick().await;
        let Some(cache) = cache.upgrade() else {
            return;
        };
        if let Err(e) = shared.flush().await {
            warn("publish", &e);
        }
        let read_started = Instant::now();
        match shared.journal.read_new().await {
            Ok(records) => {
                last_read = read_started;
                for body in records {
                    let Ok(record) = serde_json::from_slice::<Record>(&body) else {
                        tracing::warn!(
                            "cluster.storage: an unreadable invalidation record; clearing the result cache to be safe"
                        );
                        cache.invalidate(None);
                        continue;
                    };
                    m.cache_shared_invalidations
                        .with_label_values(&["received"])
                        .inc();
                    cache.invalidate(record.tables.as_deref());
                }
            }
            Err(e) => warn("read", &e),
        }
        if last_read.elapsed() > 2 * shared.poll + READ_SLACK {
            cache.invalidate(None);
        }
        if last_prune.elapsed() > Duration::from_secs(60) {
            last_prune = Instant::now();
            shared.journal.prune().await;
        }
    }
}
