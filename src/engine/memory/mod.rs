//! Bounded memory for lake queries.
//!
//! One DataFusion memory pool (`engine.memory_limit_mb`, fair or greedy, wrapped in
//! `TrackConsumersPool` so an error names the biggest consumers) is what every lake
//! statement reserves from; sorts, aggregates and joins that can spill write to the
//! one disk manager (`engine.spill_dir`, at most `engine.spill_max_mb`).
//!
//! A role with a `memory_share` gets a [`LakePool`] of its own in the runtime of
//! every policy context that counts against it: one budget shared by all those
//! contexts (all sessions acting under the role), checked before the global pool is
//! asked, and divided between operators that can spill the way `FairSpillPool`
//! divides the whole (with `memory_pool = "fair"`). Operators that can spill see
//! the refusal of either as "spill now"; the rest fail the statement with 53200 and
//! a message naming the limit (`error::from_datafusion` keeps its first line as the
//! message and the rest as the detail).

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    FairSpillPool, GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
    TrackConsumersPool, UnboundedMemoryPool,
};

use crate::auth::policy::MemoryShare;
use crate::config::{Config, PoolKind};

const MIB: u64 = 1024 * 1024;

/// How many of the biggest consumers an error lists.
const TOP_CONSUMERS: usize = 5;

/// Used when the machine's memory cannot be read (not Linux): 1 GiB.
const FALLBACK_LIMIT_MB: u64 = 1024;

/// The engine's memory: the global pool and the role budgets.
#[derive(Debug)]
pub struct LakeMemory {
    global: Arc<TrackConsumersPool<Base>>,
    /// Bytes; `None`: unlimited.
    limit: Option<usize>,
    kind: PoolKind,
    /// The pool of contexts without a role share (and of the base runtime).
    unshared: Arc<LakePool>,
    budgets: Mutex<HashMap<String, Arc<RoleBudget>>>,
}

/// What the metrics show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes held by all lake statements.
    pub reserved: usize,
    pub limit: Option<usize>,
    /// Per role with a share: (role, bytes held, the role's limit in bytes).
    pub roles: Vec<(String, usize, usize)>,
}

impl LakeMemory {
    /// `limit_mb`: `None` for no limit.
    pub fn new(limit_mb: Option<u64>, kind: PoolKind) -> LakeMemory {
        let limit = limit_mb.map(|mb| usize::try_from(mb * MIB).unwrap_or(usize::MAX));
        let base: Box<dyn MemoryPool> = match (limit, kind) {
            (None, _) => Box::new(UnboundedMemoryPool::default()),
            (Some(l), PoolKind::Fair) => Box::new(FairSpillPool::new(l)),
            (Some(l), PoolKind::Greedy) => Box::new(GreedyMemoryPool::new(l)),
        };
        let global = Arc::new(TrackConsumersPool::new(
            Base(base),
            NonZeroUsize::new(TOP_CONSUMERS).unwrap_or(NonZeroUsize::MIN),
        ));
        let unshared = Arc::new(LakePool {
            global: global.clone(),
            limit,
            share: None,
        });
        LakeMemory {
            global,
            limit,
            kind,
            unshared,
            budgets: Mutex::new(HashMap::new()),
        }
    }

    /// From `[engine]`: the configured limit, or half of the machine's memory
    /// (logged either way).
    pub fn from_config(config: &Config) -> LakeMemory {
        let e = &config.engine;
        let limit_mb = match &e.memory_limit_mb {
            Some(_) if e.unlimited_memory() => {
                tracing::info!("lake query memory: unlimited (engine.memory_limit_mb)");
                None
            }
            Some(l) => {
                let mb = l.mb().unwrap_or(FALLBACK_LIMIT_MB);
                tracing::info!(memory_limit_mb = mb, pool = ?e.memory_pool, "lake query memory limit (engine.memory_limit_mb)");
                Some(mb)
            }
            None => match machine_memory(Path::new("/")) {
                Some((bytes, source)) => {
                    let mb = (bytes / MIB / 2).max(1);
                    tracing::info!(
                        memory_limit_mb = mb,
                        pool = ?e.memory_pool,
                        source,
                        "lake query memory limit: half of the machine's memory (set engine.memory_limit_mb to change it)"
                    );
                    Some(mb)
                }
                None => {
                    tracing::warn!(
                        memory_limit_mb = FALLBACK_LIMIT_MB,
                        "cannot read the machine's memory size; lake query memory limit set to 1 GiB (set engine.memory_limit_mb)"
                    );
                    Some(FALLBACK_LIMIT_MB)
                }
            },
        };
        LakeMemory::new(limit_mb, e.memory_pool)
    }

    /// The pool of contexts whose policy has no role share.
    pub fn unshared(&self) -> Arc<LakePool> {
        self.unshared.clone()
    }

    /// The pool for a policy's contexts: its role's budget (shared by every context
    /// counting against that role) in front of the global pool.
    pub fn pool_for(&self, share: Option<&MemoryShare>) -> Arc<LakePool> {
        let (Some(share), Some(limit)) = (share, self.limit) else {
            return self.unshared.clone();
        };
        let budget = {
            let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
            budgets
                .entry(share.role.clone())
                .or_insert_with(|| {
                    Arc::new(RoleBudget {
                        role: share.role.clone(),
                        state: Mutex::new(RoleState::default()),
                        limit: AtomicUsize::new(0),
                    })
                })
                .clone()
        };
        let role_limit = share_of(limit, share.percent);
        // The latest share (a reload may change it) is what the metrics show.
        budget.limit.store(role_limit, Ordering::Relaxed);
        Arc::new(LakePool {
            global: self.global.clone(),
            limit: self.limit,
            share: Some(Share {
                budget,
                limit: role_limit,
                percent: share.percent,
                fair: self.kind == PoolKind::Fair,
            }),
        })
    }

    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    pub fn kind(&self) -> PoolKind {
        self.kind
    }

    pub fn stats(&self) -> MemoryStats {
        let mut roles: Vec<_> = self
            .budgets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|b| (b.role.clone(), b.used(), b.limit.load(Ordering::Relaxed)))
            .collect();
        roles.sort();
        MemoryStats {
            reserved: self.global.reserved(),
            limit: self.limit,
            roles,
        }
    }
}

/// Logs a warning when a role's share is too small for DataFusion's sorts to spill
/// reliably: each partition's sort keeps `sort_spill_reservation_bytes` of merge
/// headroom that it gives up and must get back around every spill, so a share
/// below twice that for every partition can fail sorts (53200) that a larger one
/// would spill.
pub fn warn_if_too_small(
    share: &MemoryShare,
    pool: &LakePool,
    target_partitions: usize,
    sort_spill_reservation_bytes: usize,
) {
    let Some(limit) = pool.share.as_ref().map(|s| s.limit) else {
        return;
    };
    let needed = target_partitions
        .max(1)
        .saturating_mul(sort_spill_reservation_bytes)
        .saturating_mul(2);
    if limit < needed {
        tracing::warn!(
            role = %share.role,
            share_mb = %mb(limit),
            recommended_mb = %mb(needed),
            "this role's memory_share is small for the lake engine: sorts may fail with 53200 instead of spilling (each of its {target_partitions} partitions keeps {} MB of merge headroom); raise memory_share or engine.memory_limit_mb",
            mb(sort_spill_reservation_bytes)
        );
    }
}

/// `percent` % of `limit` bytes (at least one byte).
fn share_of(limit: usize, percent: u8) -> usize {
    ((limit as u128 * u128::from(percent.clamp(1, 100)) / 100) as usize).max(1)
}

/// What the statements of every session acting under one role hold.
#[derive(Debug)]
struct RoleBudget {
    role: String,
    state: Mutex<RoleState>,
    /// The role's limit as last configured (for the metrics).
    limit: AtomicUsize,
}

/// Like DataFusion's `FairSpillPool`, per role: bytes held by operators that can
/// spill and by the rest, and how many can spill.
#[derive(Debug, Default)]
struct RoleState {
    spillable: usize,
    unspillable: usize,
    num_spill: usize,
}

impl RoleBudget {
    fn state(&self) -> std::sync::MutexGuard<'_, RoleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn used(&self) -> usize {
        let s = self.state();
        s.spillable + s.unspillable
    }

    fn give_back(&self, spill: bool, bytes: usize) {
        let mut s = self.state();
        let held = if spill {
            &mut s.spillable
        } else {
            &mut s.unspillable
        };
        // Never below zero, whatever a caller does.
        *held = held.saturating_sub(bytes);
    }
}

#[derive(Debug)]
struct Share {
    budget: Arc<RoleBudget>,
    /// Bytes.
    limit: usize,
    percent: u8,
    /// `memory_pool = "fair"`: within the share too, operators that can spill
    /// divide what the others leave equally, so one sort cannot take the room
    /// another operator's unspillable reservation (a sort's merge headroom, a hash
    /// table) needs.
    fair: bool,
}

/// The pool a context's runtime reserves from: an optional role budget in front of
/// the global pool. Errors say which limit was hit, in MB.
#[derive(Debug)]
pub struct LakePool {
    global: Arc<TrackConsumersPool<Base>>,
    /// The global limit in bytes.
    limit: Option<usize>,
    share: Option<Share>,
}

impl LakePool {
    fn role_refusal(
        &self,
        share: &Share,
        r: &MemoryReservation,
        additional: usize,
        state: &RoleState,
    ) -> DataFusionError {
        let global = self.limit.map(mb).unwrap_or_default();
        DataFusionError::ResourcesExhausted(format!(
            "out of memory: role \"{role}\" may hold {limit} MB of lake query memory ({percent}% of engine.memory_limit_mb = {global} MB)\n\
             {consumer} asked for {additional} more, holding {own}; the role's statements held {used} ({spilling} by {n} operators that can spill).",
            role = share.budget.role,
            limit = mb(share.limit),
            percent = share.percent,
            consumer = r.consumer().name(),
            additional = human(additional),
            own = human(r.size()),
            used = human(state.spillable + state.unspillable),
            spilling = human(state.spillable),
            n = state.num_spill,
        ))
    }

    fn global_refusal(&self, inner: DataFusionError) -> DataFusionError {
        match (inner, self.limit) {
            (DataFusionError::ResourcesExhausted(m), Some(limit)) => {
                DataFusionError::ResourcesExhausted(format!(
                    "out of memory: lake queries together may hold {} MB (engine.memory_limit_mb)\n{m}",
                    mb(limit)
                ))
            }
            (other, _) => other,
        }
    }
}

impl fmt::Display for LakePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sluice({}", self.global)?;
        if let Some(s) = &self.share {
            write!(f, ", role {}: {} MB", s.budget.role, mb(s.limit))?;
        }
        write!(f, ")")
    }
}

impl MemoryPool for LakePool {
    fn name(&self) -> &str {
        "sluice"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.global.register(consumer);
        if let Some(s) = &self.share
            && consumer.can_spill()
        {
            s.budget.state().num_spill += 1;
        }
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.global.unregister(consumer);
        if let Some(s) = &self.share
            && consumer.can_spill()
        {
            let mut state = s.budget.state();
            state.num_spill = state.num_spill.saturating_sub(1);
        }
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.global.grow(reservation, additional);
        if let Some(s) = &self.share {
            let mut state = s.budget.state();
            if reservation.consumer().can_spill() {
                state.spillable += additional;
            } else {
                state.unspillable += additional;
            }
        }
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.global.shrink(reservation, shrink);
        if let Some(s) = &self.share {
            s.budget
                .give_back(reservation.consumer().can_spill(), shrink);
        }
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let spill = reservation.consumer().can_spill();
        if let Some(s) = &self.share {
            let mut state = s.budget.state();
            let held = state.spillable + state.unspillable;
            let fits = if spill && s.fair {
                // FairSpillPool's rule, within the share.
                let available = s.limit.saturating_sub(state.unspillable) / state.num_spill.max(1);
                reservation.size().saturating_add(additional) <= available
            } else {
                held.saturating_add(additional) <= s.limit
            };
            if !fits {
                return Err(self.role_refusal(s, reservation, additional, &state));
            }
            if spill {
                state.spillable += additional;
            } else {
                state.unspillable += additional;
            }
        }
        if let Err(e) = self.global.try_grow(reservation, additional) {
            if let Some(s) = &self.share {
                s.budget.give_back(spill, additional);
            }
            return Err(self.global_refusal(e));
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.global.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        match (self.limit, &self.share) {
            (_, Some(s)) => MemoryLimit::Finite(s.limit.min(self.limit.unwrap_or(usize::MAX))),
            (Some(l), None) => MemoryLimit::Finite(l),
            (None, None) => MemoryLimit::Infinite,
        }
    }
}

/// The configured DataFusion pool behind one type, so `TrackConsumersPool` (and its
/// report of the top consumers) can wrap whichever was chosen.
struct Base(Box<dyn MemoryPool>);

impl fmt::Debug for Base {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Base {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl MemoryPool for Base {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn register(&self, consumer: &MemoryConsumer) {
        self.0.register(consumer)
    }
    fn unregister(&self, consumer: &MemoryConsumer) {
        self.0.unregister(consumer)
    }
    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.0.grow(reservation, additional)
    }
    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.0.shrink(reservation, shrink)
    }
    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.0.try_grow(reservation, additional)
    }
    fn reserved(&self) -> usize {
        self.0.reserved()
    }
    fn memory_limit(&self) -> MemoryLimit {
        self.0.memory_limit()
    }
}

/// Bytes as MB for messages: whole when whole, else one decimal.
fn mb(bytes: usize) -> String {
    let v = bytes as f64 / MIB as f64;
    if (v - v.round()).abs() < 0.05 {
        format!("{}", v.round() as u64)
    } else {
        format!("{v:.1}")
    }
}

fn human(bytes: usize) -> String {
    if bytes >= MIB as usize {
        format!("{} MB", mb(bytes))
    } else if bytes >= 1024 {
        format!("{} KB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

/// The machine's memory in bytes, and where the number came from: the lower of
/// `/proc/meminfo`'s MemTotal and the cgroup v2 `memory.max` of this process's
/// cgroup (and its ancestors), under `root` (`/`; tests pass a fake tree).
pub fn machine_memory(root: &Path) -> Option<(u64, &'static str)> {
    let read = |p: &str| std::fs::read_to_string(root.join(p.trim_start_matches('/'))).ok();
    let total = read("proc/meminfo").and_then(|t| meminfo_total(&t));
    let cgroup = read("proc/self/cgroup").and_then(|t| {
        cgroup_max(&t, |dir| {
            read(&format!(
                "sys/fs/cgroup/{}/memory.max",
                dir.trim_matches('/')
            ))
        })
    });
    match (total, cgroup) {
        (Some(t), Some(c)) if c < t => Some((c, "cgroup memory.max")),
        (Some(t), _) => Some((t, "/proc/meminfo")),
        (None, Some(c)) => Some((c, "cgroup memory.max")),
        (None, None) => None,
    }
}

/// `MemTotal:  16318508 kB` → bytes.
fn meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// The lowest `memory.max` on the path from the cgroup v2 entry (`0::/a/b`) of
/// `/proc/self/cgroup` up to the root; `max` means none.
fn cgroup_max(proc_cgroup: &str, memory_max: impl Fn(&str) -> Option<String>) -> Option<u64> {
    let path = proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim();
    let mut lowest: Option<u64> = None;
    let mut dir = path.trim_end_matches('/').to_owned();
    loop {
        if let Some(v) = memory_max(&dir).and_then(|t| t.trim().parse::<u64>().ok()) {
            lowest = Some(lowest.map_or(v, |l| l.min(v)));
        }
        match dir.rfind('/') {
            Some(i) => dir.truncate(i),
            None => break,
        }
        if dir.is_empty() {
            // The root itself (no memory.max there on a host; a container's own
            // namespace root has one).
            if let Some(v) = memory_max("").and_then(|t| t.trim().parse::<u64>().ok()) {
                lowest = Some(lowest.map_or(v, |l| l.min(v)));
            }
            break;
        }
    }
    lowest
}

#[cfg(test)]
mod tests;
