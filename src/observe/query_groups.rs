//! Query groups: statistics per (fingerprint, user, application, query group,
//! route), like pg_stat_statements but across every route Sluice takes.
//!
//! Memory is bounded: at most `max_groups` groups are kept; when a new group would
//! pass the limit, the tenth of the groups with the least total time is dropped
//! (pg_stat_statements drops the least-called; total time is what an operator ranks
//! by here, so the groups worth seeing stay). `deallocations` counts such rounds.
//!
//! Recording is a hash, a sharded lock and a few additions; the normalised text
//! (literals replaced) is built only when a group is first seen.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::route::fingerprint;

const SHARDS: usize = 16;
/// Duration buckets for p95: powers of 2^(1/4) microseconds (about 19% apart),
/// from 1 µs to over an hour.
const BUCKETS: usize = 128;

/// What one finished statement adds to its group.
pub struct Sample<'a> {
    pub fingerprint: u64,
    pub user: &'a str,
    pub application: &'a str,
    pub query_group: Option<&'a str>,
    pub route: &'static str,
    /// The statement text (only read when the group is new).
    pub text: &'a str,
    pub duration: Duration,
    pub queue: Duration,
    pub rows: u64,
    pub error: bool,
    pub cache_hit: bool,
    /// Workload rules that acted on the statement.
    pub rule_actions: u64,
}

struct Group {
    fingerprint: u64,
    user: String,
    application: String,
    query_group: String,
    route: &'static str,
    query: String,
    calls: u64,
    total_us: u64,
    min_us: u64,
    max_us: u64,
    queue_us: u64,
    rows: u64,
    errors: u64,
    cache_hits: u64,
    rule_actions: u64,
    first_seen: SystemTime,
    last_seen: SystemTime,
    histogram: Box<[u32; BUCKETS]>,
}

/// One group as the `sluice.query_groups` table shows it.
#[derive(Debug, Clone)]
pub struct GroupRow {
    pub fingerprint: String,
    pub user: String,
    pub application: String,
    pub query_group: String,
    pub route: &'static str,
    pub query: String,
    pub calls: u64,
    /// Milliseconds, as pg_stat_statements reports times.
    pub total_time: f64,
    pub mean_time: f64,
    pub min_time: f64,
    pub max_time: f64,
    pub p95_time: f64,
    pub queue_time: f64,
    pub rows: u64,
    pub errors: u64,
    pub cache_hits: u64,
    pub rule_actions: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
}

pub struct QueryGroups {
    /// Groups by `key` (already a hash: the maps rehash it with foldhash, not
    /// SipHash).
    shards: Vec<Mutex<HashMap<u64, Group, foldhash::fast::FixedState>>>,
    hasher: foldhash::fast::FixedState,
    max_groups: usize,
    groups: AtomicU64,
    deallocations: AtomicU64,
    deallocating: AtomicBool,
    reset_at: Mutex<SystemTime>,
}

/// Longest application or query-group name kept, in bytes.
const MAX_LABEL: usize = 64;

fn clip(s: &str) -> &str {
    if s.len() <= MAX_LABEL {
        return s;
    }
    let mut end = MAX_LABEL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn bucket(us: u64) -> usize {
    if us <= 1 {
        return 0;
    }
    // log2 with two fractional bits, from the float's exponent and mantissa.
    let b = ((us as f64).log2() * 4.0) as usize;
    b.min(BUCKETS - 1)
}

fn bucket_upper_us(b: usize) -> f64 {
    2f64.powf((b + 1) as f64 / 4.0)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl QueryGroups {
    pub fn new(max_groups: usize) -> QueryGroups {
        QueryGroups {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(foldhash::fast::FixedState::default())))
                .collect(),
            hasher: foldhash::fast::FixedState::with_seed(0x5155_4943_4500),
            max_groups: max_groups.max(SHARDS),
            groups: AtomicU64::new(0),
            deallocations: AtomicU64::new(0),
            deallocating: AtomicBool::new(false),
            reset_at: Mutex::new(SystemTime::now()),
        }
    }

    fn key(&self, s: &Sample<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        s.fingerprint.hash(&mut h);
        s.user.hash(&mut h);
        s.application.hash(&mut h);
        s.query_group.unwrap_or("").hash(&mut h);
        s.route.hash(&mut h);
        h.finish()
    }

    pub fn record(&self, s: &Sample<'_>) {
        // Attribution comes from clients (application_name, tags, SET): bounded,
        // so a client cannot make every group carry megabytes.
        let application = clip(s.application);
        let query_group = s.query_group.map(clip);
        let s = &Sample {
            application,
            query_group,
            ..*s
        };
        let key = self.key(s);
        let us = s.duration.as_micros() as u64;
        let now = SystemTime::now();
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        let group = match map.get_mut(&key) {
            Some(g) => g,
            None => {
                if self.groups.load(Ordering::Relaxed) as usize >= self.max_groups {
                    drop(map);
                    self.deallocate();
                    map = shard.lock().unwrap_or_else(|p| p.into_inner());
                }
                // Another session may have added the group meanwhile.
                if !map.contains_key(&key) {
                    self.groups.fetch_add(1, Ordering::Relaxed);
                }
                map.entry(key).or_insert_with(|| Group {
                    fingerprint: s.fingerprint,
                    user: s.user.to_owned(),
                    application: s.application.to_owned(),
                    query_group: s.query_group.unwrap_or("").to_owned(),
                    route: s.route,
                    query: fingerprint::normalized(s.text),
                    calls: 0,
                    total_us: 0,
                    min_us: u64::MAX,
                    max_us: 0,
                    queue_us: 0,
                    rows: 0,
                    errors: 0,
                    cache_hits: 0,
                    rule_actions: 0,
                    first_seen: now,
                    last_seen: now,
                    histogram: Box::new([0; BUCKETS]),
                })
            }
        };
        group.calls += 1;
        group.total_us += us;
        group.min_us = group.min_us.min(us);
        group.max_us = group.max_us.max(us);
        group.queue_us += s.queue.as_micros() as u64;
        group.rows += s.rows;
        group.errors += u64::from(s.error);
        group.cache_hits += u64::from(s.cache_hit);
        group.rule_actions += s.rule_actions;
        group.last_seen = now;
        let b = &mut group.histogram[bucket(us)];
        *b = b.saturating_add(1);
    }

    /// Drops the tenth of the groups with the least total time (one session at a
    /// time; the others go on meanwhile, briefly past the limit).
    fn deallocate(&self) {
        if self.deallocating.swap(true, Ordering::Acquire) {
            return;
        }
        self.deallocate_now();
        self.deallocating.store(false, Ordering::Release);
    }

    fn deallocate_now(&self) {
        let mut totals: Vec<u64> = Vec::new();
        for shard in &self.shards {
            let map = shard.lock().unwrap_or_else(|p| p.into_inner());
            totals.extend(map.values().map(|g| g.total_us));
        }
        if totals.is_empty() {
            return;
        }
        let cut = (totals.len() / 10).max(1);
        let (_, threshold, _) = totals.select_nth_unstable(cut - 1);
        let threshold = *threshold;
        let mut removed = 0u64;
        let mut budget = cut;
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, g| {
                if budget > 0 && g.total_us <= threshold {
                    budget -= 1;
                    removed += 1;
                    false
                } else {
                    true
                }
            });
        }
        self.groups.fetch_sub(removed, Ordering::Relaxed);
        self.deallocations.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets every group (`CALL sluice.reset_query_groups()`).
    pub fn reset(&self) {
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.len() as u64;
            map.clear();
            self.groups.fetch_sub(n, Ordering::Relaxed);
        }
        *self.reset_at.lock().unwrap_or_else(|p| p.into_inner()) = SystemTime::now();
    }

    pub fn deallocations(&self) -> u64 {
        self.deallocations.load(Ordering::Relaxed)
    }

    pub fn reset_at(&self) -> SystemTime {
        *self.reset_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.groups.load(Ordering::Relaxed) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every group, by total time, longest first.
    pub fn rows(&self) -> Vec<GroupRow> {
        let mut rows = Vec::new();
        for shard in &self.shards {
            let map = shard.lock().unwrap_or_else(|p| p.into_inner());
            rows.extend(map.values().map(|g| {
                let mut seen = 0u64;
                let want = (g.calls * 95).div_ceil(100);
                let mut p95 = 0.0;
                for (b, n) in g.histogram.iter().enumerate() {
                    seen += u64::from(*n);
                    if seen >= want {
                        p95 = bucket_upper_us(b).min(g.max_us as f64) / 1000.0;
                        break;
                    }
                }
                GroupRow {
                    fingerprint: fingerprint::hex(g.fingerprint),
                    user: g.user.clone(),
                    application: g.application.clone(),
                    query_group: g.query_group.clone(),
                    route: g.route,
                    query: g.query.clone(),
                    calls: g.calls,
                    total_time: ms(g.total_us),
                    mean_time: ms(g.total_us) / g.calls.max(1) as f64,
                    min_time: if g.calls == 0 { 0.0 } else { ms(g.min_us) },
                    max_time: ms(g.max_us),
                    p95_time: p95,
                    queue_time: ms(g.queue_us),
                    rows: g.rows,
                    errors: g.errors,
                    cache_hits: g.cache_hits,
                    rule_actions: g.rule_actions,
                    first_seen: g.first_seen,
                    last_seen: g.last_seen,
                }
            }));
        }
        rows.sort_by(|a, b| b.total_time.total_cmp(&a.total_time));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(fp: u64, user: &'a str, us: u64) -> Sample<'a> {
        Sample {
            fingerprint: fp,
            user,
            application: "app",
            query_group: None,
            route: "lake",
            text: "SELECT 1",
            duration: Duration::from_micros(us),
            queue: Duration::ZERO,
            rows: 1,
            error: false,
            cache_hit: false,
            rule_actions: 0,
        }
    }

    #[test]
    fn groups_accumulate_by_key() {
        let q = QueryGroups::new(100);
        for us in [100, 200, 300] {
            q.record(&sample(1, "ann", us));
        }
        q.record(&sample(1, "bob", 50));
        let rows = q.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].user.as_str(), rows[0].calls), ("ann", 3));
        assert!((rows[0].total_time - 0.6).abs() < 1e-9);
        assert!((rows[0].mean_time - 0.2).abs() < 1e-9);
        assert!(
            rows[0].p95_time >= 0.25 && rows[0].p95_time <= 0.3,
            "{}",
            rows[0].p95_time
        );
        q.reset();
        assert!(q.rows().is_empty() && q.is_empty());
    }

    #[test]
    fn memory_stays_bounded_and_keeps_the_heaviest() {
        let q = QueryGroups::new(32);
        q.record(&sample(999, "ann", 10_000_000));
        for fp in 0..500 {
            q.record(&sample(fp, "ann", 10));
        }
        assert!(q.len() <= 33, "{}", q.len());
        assert!(q.deallocations() > 0);
        assert!(
            q.rows()
                .iter()
                .any(|r| r.fingerprint == fingerprint::hex(999))
        );
    }
}
