//! A journal in shared storage: gateways append small records (one object each) and
//! read the records the others appended. Views use one to tell each other which
//! views changed; result caches one to pass on the tables clients wrote.
//!
//! ```text
//! <dir>/<millis, 15 digits>-<writer>-<seq>.json
//! ```
//!
//! Names start with the writer's clock, so a reader lists only names after "now
//! minus `LOOKBACK`" (`list_with_offset`: S3's `start-after`) and remembers which of
//! those it has read. A record that lands late, or whose writer's clock is behind,
//! is still read as long as it is less than `LOOKBACK` old by the reader's clock —
//! gateways' clocks must agree to well within that (NTP). Records older than
//! `RETAIN` are deleted by whichever gateway prunes first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

/// How far back (by the reader's clock) a read looks for records it has not seen.
pub const LOOKBACK: Duration = Duration::from_secs(30);
/// How long records are kept.
pub const RETAIN: Duration = Duration::from_secs(600);
/// The longest one storage call may take: a call that hangs counts as failed (and
/// a record is appended again under a new name), well inside `LOOKBACK`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// `call`, failed with a timeout error after `CALL_TIMEOUT`.
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, object_store::Error>>,
) -> Result<T, object_store::Error> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(object_store::Error::Generic {
                store: "journal",
                source: format!("no answer within {} s", CALL_TIMEOUT.as_secs()).into(),
            })
        })
}

pub struct Journal {
    store: Arc<dyn ObjectStore>,
    dir: Path,
    /// This process's part of record names (16 hex digits): its own records are
    /// not read back.
    writer: String,
    seq: AtomicU64,
    /// Records read within the look-back window: name → time in its name.
    seen: tokio::sync::Mutex<BTreeMap<String, i64>>,
}

/// The parts of a record's name: (time in milliseconds, writer).
fn parse_name(name: &str) -> Option<(i64, &str)> {
    let stem = name.strip_suffix(".json")?;
    let mut parts = stem.splitn(3, '-');
    let millis = parts.next()?.parse().ok()?;
    let writer = parts.next()?;
    parts.next()?;
    Some((millis, writer))
}

impl Journal {
    pub fn new(store: Arc<dyn ObjectStore>, dir: Path) -> Journal {
        Journal {
            store,
            dir,
            writer: format!("{:016x}", rand::random::<u64>()),
            seq: AtomicU64::new(0),
            seen: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Appends one record.
    pub async fn append(&self, body: Vec<u8>) -> Result<(), object_store::Error> {
        let name = format!(
            "{:015}-{}-{:010}.json",
            Utc::now().timestamp_millis().max(0),
            self.writer,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        bounded(self.store.put(&self.dir.clone().join(name), body.into()))
            .await
            .map(|_| ())
    }

    /// The other writers' records not read before, oldest first. On an error none
    /// of them counts as read: the next call returns them again.
    pub async fn read_new(&self) -> Result<Vec<Bytes>, object_store::Error> {
        let mut seen = self.seen.lock().await;
        let from = Utc::now().timestamp_millis() - LOOKBACK.as_millis() as i64;
        let offset = self.dir.clone().join(format!("{:015}", from.max(0)));
        let listed: Vec<object_store::ObjectMeta> = match bounded(
            self.store
                .list_with_offset(Some(&self.dir), &offset)
                .try_collect(),
        )
        .await
        {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut fresh: Vec<(String, i64)> = listed
            .iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                let (millis, writer) = parse_name(name)?;
                (writer != self.writer && !seen.contains_key(name))
                    .then(|| (name.to_owned(), millis))
            })
            .collect();
        fresh.sort();
        let mut out = Vec::with_capacity(fresh.len());
        for (name, _) in &fresh {
            let path = self.dir.clone().join(name.as_str());
            match bounded(async { self.store.get(&path).await?.bytes().await }).await {
                Ok(body) => out.push(body),
                // Pruned between the listing and the read: too old to matter.
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        seen.extend(fresh);
        seen.retain(|_, millis| *millis >= from - 1000);
        Ok(out)
    }

    /// Deletes every record older than `RETAIN`. Best effort, and bounded: a
    /// reader's loop never stalls here.
    pub async fn prune(&self) {
        let _ = tokio::time::timeout(CALL_TIMEOUT * 3, self.prune_unbounded()).await;
    }

    async fn prune_unbounded(&self) {
        let cutoff = Utc::now().timestamp_millis() - RETAIN.as_millis() as i64;
        let offset = self.dir.clone().join(format!("{:015}", cutoff.max(0)));
        let Ok(listed) = self
            .store
            .list(Some(&self.dir))
            .try_collect::<Vec<object_store::ObjectMeta>>()
            .await
        else {
            return;
        };
        for meta in listed {
            if meta.location < offset {
                let _ = self.store.delete(&meta.location).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readers_see_each_others_records_once_and_not_their_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs: Arc<dyn ObjectStore> = Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("fs"),
        );
        let a = Journal::new(fs.clone(), Path::from("j"));
        let b = Journal::new(fs.clone(), Path::from("j"));
        assert!(a.read_new().await.expect("empty journal").is_empty());
        a.append(b"one".to_vec()).await.expect("append");
        a.append(b"two".to_vec()).await.expect("append");
        b.append(b"three".to_vec()).await.expect("append");
        let seen_by_b = b.read_new().await.expect("read");
        assert_eq!(seen_by_b, vec![Bytes::from("one"), Bytes::from("two")]);
        assert!(b.read_new().await.expect("read").is_empty(), "read once");
        assert_eq!(
            a.read_new().await.expect("read"),
            vec![Bytes::from("three")]
        );
        // A record that lands late, stamped before records already read, is read.
        let late = format!(
            "{:015}-{:016x}-{:010}.json",
            Utc::now().timestamp_millis() - 5_000,
            7u64,
            0
        );
        fs.put(
            &Path::from("j").join(late.as_str()),
            Bytes::from("late").into(),
        )
        .await
        .expect("put");
        assert_eq!(b.read_new().await.expect("read"), vec![Bytes::from("late")]);
        // Records past the look-back are neither read nor kept by a prune.
        let old = format!(
            "{:015}-{:016x}-{:010}.json",
            Utc::now().timestamp_millis() - RETAIN.as_millis() as i64 - 1_000,
            7u64,
            1
        );
        fs.put(
            &Path::from("j").join(old.as_str()),
            Bytes::from("old").into(),
        )
        .await
        .expect("put");
        assert!(b.read_new().await.expect("read").is_empty());
        a.prune().await;
        let names: Vec<String> = fs
            .list(Some(&Path::from("j")))
            .try_collect::<Vec<_>>()
            .await
            .expect("list")
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_owned))
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(!names.contains(&old));
    }

    #[test]
    fn record_names_parse() {
        assert_eq!(
            parse_name("001700000000000-00000000000000ab-0000000003.json"),
            Some((1_700_000_000_000, "00000000000000ab"))
        );
        assert_eq!(parse_name("000001700000000"), None);
        assert_eq!(parse_name("x-y-z.json"), None);
    }
}
