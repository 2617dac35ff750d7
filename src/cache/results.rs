//! The automatic result cache: the exact bytes a read-only statement's answer was
//! sent as (RowDescription, DataRows, CommandComplete), kept for a TTL and replayed
//! to the next session that sends the same statement in the same context.
//!
//! What makes two statements "the same" is the [`Key`]: who asks (the upstream
//! database identity, or the lake role policy), the normalised statement text,
//! parameter values and formats, and every setting that changes the answer or its
//! text form. One role's rows are never served to another because the key holds the
//! role context, not because a lookup filters.
//!
//! Stampede protection: the first session to miss a key *leads* — runs the statement
//! and records its answer — while sessions that miss the same key meanwhile wait
//! for it ([`ResultCache::lookup`]) and are then served the recorded answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::Expiry;

use crate::config::CacheConfig;

/// Everything that decides a cached answer, serialised: scope (identity or role
/// policy), settings, statement text, parameters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key(Arc<[u8]>);

impl Key {
    /// Builds a key from its parts; each part is length-prefixed so no two different
    /// part lists serialise alike.
    pub fn new<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Key {
        let mut buf = Vec::with_capacity(256);
        for p in parts {
            buf.extend_from_slice(&(p.len() as u32).to_be_bytes());
            buf.extend_from_slice(p);
        }
        Key(buf.into())
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// One cached answer. `body: None` marks a statement whose answer was too big to
/// keep: it runs uncached (and unserialised) until the marker expires.
pub struct Entry {
    pub body: Option<Bytes>,
    /// Tables the statement read (lower-case names): writes to them invalidate it.
    tables: Vec<String>,
    created: Instant,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<Key, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &Key,
        value: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    /// Lookups that waited for another session running the same statement.
    coalesced: AtomicU64,
    stored: AtomicU64,
    too_big: AtomicU64,
    invalidations: AtomicU64,
}

/// A snapshot for `SHOW sluice.cache`.
pub struct CacheStats {
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub coalesced: u64,
    pub stored: u64,
    pub too_big: u64,
    pub invalidations: u64,
    pub oldest_secs: Option<u64>,
}

pub struct ResultCache {
    entries: moka::sync::Cache<Key, Arc<Entry>>,
    /// Moves with every invalidation (see [`Lead`]).
    epoch: std::sync::atomic::AtomicU64,
    /// The latest invalidations: (epoch, tables; `None` = everything).
    recent: Mutex<std::collections::VecDeque<(u64, Option<Vec<String>>)>>,
    /// Keys being computed right now; waiters watch the leader's channel, which
    /// closes when the leader finishes (stored or not).
    running: Mutex<HashMap<Key, tokio::sync::watch::Receiver<()>>>,
    counters: Counters,
    max_bytes: u64,
    pub max_entry_bytes: usize,
    pub default_ttl: Duration,
    wait: Duration,
    /// With `[cluster]`: where writes seen here are passed on to other gateways.
    shared: std::sync::OnceLock<Arc<super::shared::SharedInvalidations>>,
}

/// What a lookup found.
pub enum Lookup {
    /// The cached answer bytes.
    Hit(Bytes),
    /// Nobody has the answer: run the statement, record it, and [`Lead::store`] it.
    Lead(Lead),
    /// Run uncached (the answer is known to be too big, or waiting timed out).
    Bypass,
}

/// The right (and duty) to compute one key. Dropping it without storing wakes the
/// waiters, one of which then leads.
pub struct Lead {
    cache: Arc<ResultCache>,
    key: Key,
    /// The invalidation epoch when the statement started: an answer computed while
    /// a write invalidated may be stale, and is not stored.
    epoch: u64,
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for Lead {
    fn drop(&mut self) {
        if let Ok(mut running) = self.cache.running.lock() {
            running.remove(&self.key);
        }
    }
}

impl Lead {
    /// Stores the recorded answer (`None`: it was too big to record).
    pub fn store(self, body: Option<Bytes>, tables: Vec<String>, ttl: Duration) {
        if self.cache.invalidated_since(self.epoch, &tables) {
            return;
        }
        let c = &self.cache.counters;
        match &body {
            Some(_) => c.stored.fetch_add(1, Ordering::Relaxed),
            None => c.too_big.fetch_add(1, Ordering::Relaxed),
        };
        self.cache.entries.insert(
            self.key.clone(),
            Arc::new(Entry {
                body,
                tables,
                created: Instant::now(),
                ttl,
            }),
        );
    }
}

impl ResultCache {
    pub fn new(config: &CacheConfig) -> Arc<ResultCache> {
        let max_bytes = config.result_max_mb.saturating_mul(1024 * 1024);
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &Key, v: &Arc<Entry>| {
                let size = k.len() + v.body.as_ref().map_or(0, Bytes::len) + 64;
                u32::try_from(size).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .support_invalidation_closures()
            .eviction_listener(|_, _, cause| {
                // Replaced entries are not gone; everything else left the cache.
                if cause != moka::notification::RemovalCause::Replaced {
                    crate::metrics::metrics().cache_evictions.inc();
                }
            })
            .build();
        Arc::new(ResultCache {
            entries,
            epoch: std::sync::atomic::AtomicU64::new(0),
            recent: Mutex::new(std::collections::VecDeque::new()),
            running: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            max_bytes,
            max_entry_bytes: usize::try_from(
                config.result_max_entry_mb.saturating_mul(1024 * 1024),
            )
            .unwrap_or(usize::MAX),
            default_ttl: Duration::from_secs(config.result_ttl_secs),
            wait: Duration::from_secs(config.result_wait_secs),
            shared: std::sync::OnceLock::new(),
        })
    }

    /// Shares invalidations with the other gateways of a cluster through `journal`
    /// (`cache::shared`), every `poll`.
    pub fn share(self: &Arc<Self>, journal: crate::cluster::journal::Journal, poll: Duration) {
        let _ = self.shared.set(super::shared::SharedInvalidations::start(
            journal, poll, self,
        ));
    }

    /// A client wrote `tables` (`None`: unknown ones) through this gateway: cached
    /// results that read them go here, and on the other gateways of a cluster.
    pub fn invalidate_written(&self, tables: Option<&[String]>) {
        self.invalidate(tables);
        if let Some(shared) = self.shared.get() {
            shared.note(tables);
        }
    }

    /// The cached answer for `key`, or the lead to compute it. Waits (at most the
    /// configured time) while another session computes the same key.
    pub async fn lookup(self: &Arc<Self>, key: Key) -> Lookup {
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut waited = false;
        loop {
            if let Some(e) = self.entries.get(&key) {
                return match &e.body {
                    Some(b) => {
                        self.counters.hits.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::metrics().cache_hits.inc();
                        Lookup::Hit(b.clone())
                    }
                    None => Lookup::Bypass,
                };
            }
            let mut running = {
                let Ok(mut running) = self.running.lock() else {
                    return Lookup::Bypass;
                };
                match running.get(&key) {
                    Some(rx) => rx.clone(),
                    None => {
                        let (tx, rx) = tokio::sync::watch::channel(());
                        running.insert(key.clone(), rx);
                        self.counters.misses.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::metrics().cache_misses.inc();
                        return Lookup::Lead(Lead {
                            cache: self.clone(),
                            key,
                            epoch: self.epoch.load(Ordering::Acquire),
                            _done: tx,
                        });
                    }
                }
            };
            if !waited {
                waited = true;
                self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
            }
            // `changed` fails once the leader's sender is gone: it finished.
            if tokio::time::timeout_at(deadline, running.changed())
                .await
                .is_err()
            {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                crate::metrics::metrics().cache_misses.inc();
                return Lookup::Bypass;
            }
        }
    }

    /// The cached answer for `key`, if there is one (counted as a hit); never waits.
    pub fn peek(&self, key: &Key) -> Option<Bytes> {
        let body = self.entries.get(key)?.body.clone()?;
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        crate::metrics::metrics().cache_hits.inc();
        Some(body)
    }

    /// Whether a write that touches `tables` invalidated since `epoch` (or whether
    /// that can no longer be told): an answer computed meanwhile may be stale.
    fn invalidated_since(&self, epoch: u64, tables: &[String]) -> bool {
        if self.epoch.load(Ordering::Acquire) == epoch {
            return false;
        }
        let Ok(recent) = self.recent.lock() else {
            return true;
        };
        if recent.front().is_none_or(|(e, _)| *e > epoch + 1) {
            return true;
        }
        recent
            .iter()
            .filter(|(e, _)| *e > epoch)
            .any(|(_, written)| match written {
                None => true,
                Some(w) => w.iter().any(|t| tables.contains(t)),
            })
    }

    /// Drops every entry that read one of `tables` (lower-case names); `None` drops
    /// everything (a write Sluice could not analyse).
    pub fn invalidate(&self, tables: Option<&[String]>) {
        self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut recent) = self.recent.lock() {
            let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
            recent.push_back((epoch, tables.map(<[String]>::to_vec)));
            if recent.len() > RECENT_INVALIDATIONS {
                recent.pop_front();
            }
        }
        match tables {
            None => self.entries.invalidate_all(),
            Some(tables) => {
                let tables: Vec<String> = tables.to_vec();
                let _ = self.entries.invalidate_entries_if(move |_, e| {
                    e.tables.iter().any(|t| tables.iter().any(|w| w == t))
                });
            }
        }
    }

    pub fn stats(&self) -> CacheStats {
        self.entries.run_pending_tasks();
        let c = &self.counters;
        let oldest = self
            .entries
            .iter()
            .map(|(_, e)| e.created.elapsed().as_secs())
            .max();
        CacheStats {
            entries: self.entries.entry_count(),
            bytes: self.entries.weighted_size(),
            max_bytes: self.max_bytes,
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            stored: c.stored.load(Ordering::Relaxed),
            too_big: c.too_big.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            oldest_secs: oldest,
        }
    }
}

/// How many invalidations are remembered for [`ResultCache::invalidated_since`].
const RECENT_INVALIDATIONS: usize = 4096;

/// Whether an answer recorded from the wire may be stored: one complete result, no
/// error, no setting changed on the way (ParameterStatus), no COPY.
pub fn storable(body: &[u8]) -> bool {
    let mut messages = crate::wire::frame::messages(body);
    let mut completed = false;
    for m in messages.by_ref() {
        match m[0] {
            b'T' | b'D' | b'N' | b'n' => {}
            b'C' => completed = true,
            _ => return false,
        }
    }
    messages.rest().is_empty() && completed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_clean_answers_are_storable() {
        let msg = |tag: u8, body: &[u8]| {
            let mut m = vec![tag];
            m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            m.extend_from_slice(body);
            m
        };
        let ok = [msg(b'T', b"x"), msg(b'D', b"y"), msg(b'C', b"SELECT 1\0")].concat();
        assert!(storable(&ok));
        let error = [msg(b'T', b"x"), msg(b'E', b"z")].concat();
        assert!(!storable(&error));
        let status = [msg(b'S', b"a\0b\0"), msg(b'C', b"SET\0")].concat();
        assert!(!storable(&status));
        assert!(!storable(&ok[..ok.len() - 2]));
        assert!(!storable(&msg(b'T', b"x")));
    }

    #[tokio::test]
    async fn one_leader_per_key_and_waiters_get_its_answer() {
        let cache = ResultCache::new(&CacheConfig {
            result_ttl_secs: 60,
            ..CacheConfig::default()
        });
        let key = Key::new([b"scope".as_slice(), b"SELECT 1"]);
        let Lookup::Lead(lead) = cache.lookup(key.clone()).await else {
            panic!("first lookup leads");
        };
        let waiter = {
            let cache = cache.clone();
            let key = key.clone();
            tokio::spawn(async move { cache.lookup(key).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "the second lookup waits for the leader"
        );
        lead.store(
            Some(Bytes::from_static(b"answer")),
            vec!["t".into()],
            Duration::from_secs(60),
        );
        match waiter.await.unwrap() {
            Lookup::Hit(b) => assert_eq!(&b[..], b"answer"),
            _ => panic!("the waiter is served the leader's answer"),
        }
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.coalesced), (1, 1, 1));
        cache.invalidate(Some(&["t".to_string()]));
        assert!(matches!(cache.lookup(key).await, Lookup::Lead(_)));
    }

    #[tokio::test]
    async fn answers_computed_across_a_write_to_their_tables_are_not_stored() {
        let cache = ResultCache::new(&CacheConfig::default());
        let ttl = Duration::from_secs(60);
        let key = |k: &[u8]| Key::new([k]);
        let Lookup::Lead(a) = cache.lookup(key(b"a")).await else {
            panic!("leads");
        };
        let Lookup::Lead(b) = cache.lookup(key(b"b")).await else {
            panic!("leads");
        };
        cache.invalidate(Some(&["orders".to_string()]));
        a.store(Some(Bytes::from_static(b"x")), vec!["orders".into()], ttl);
        b.store(Some(Bytes::from_static(b"y")), vec!["regions".into()], ttl);
        assert!(
            matches!(cache.lookup(key(b"a")).await, Lookup::Lead(_)),
            "stale: not stored"
        );
        assert!(
            matches!(cache.lookup(key(b"b")).await, Lookup::Hit(_)),
            "other tables: stored"
        );
    }

    #[tokio::test]
    async fn a_leader_that_gives_up_hands_over() {
        let cache = ResultCache::new(&CacheConfig::default());
        let key = Key::new([b"k".as_slice()]);
        let Lookup::Lead(lead) = cache.lookup(key.clone()).await else {
            panic!("first lookup leads");
        };
        let waiter = {
            let cache = cache.clone();
            let key = key.clone();
            tokio::spawn(async move { matches!(cache.lookup(key).await, Lookup::Lead(_)) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(lead);
        assert!(waiter.await.unwrap(), "the waiter leads next");
    }
}
