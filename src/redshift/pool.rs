//! Upstream sessions kept for reuse, with limits and a waiting queue.
//!
//! A client session holds its upstream session for its whole life (session-pinned:
//! temp tables, `SET` and transactions stay with it). When the client leaves, the
//! upstream session is reset (`reset_query`) and parked for the next client of the
//! *same* identity and startup parameters; a session that cannot be reset cleanly, or
//! was left mid-transaction, is closed instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::PoolConfig;
use crate::error::{PgError, SqlState};
use crate::redshift::credentials::DbIdentity;
use crate::redshift::wire::UpstreamConn;

/// Who an upstream session belongs to: reusable only by an equal key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub identity: DbIdentity,
    /// Whether the client's roles may write: a read-only client never inherits a
    /// session a writer used (a prepared write could survive a weak reset_query).
    pub write: bool,
    /// Startup parameters the session was opened with (sorted).
    pub params: Vec<(String, String)>,
}

struct Idle {
    identity: DbIdentity,
    conn: UpstreamConn,
    since: Instant,
}

#[derive(Default)]
struct State {
    /// Open upstream sessions, busy and idle.
    total: usize,
    per_identity: HashMap<DbIdentity, usize>,
    idle: HashMap<PoolKey, Vec<Idle>>,
    waiting: usize,
}

pub struct Pool {
    config: PoolConfig,
    upstream: String,
    state: Mutex<State>,
    freed: Notify,
}

/// A parked upstream session, as `SHOW SERVERS` lists it.
#[derive(Debug, Clone)]
pub struct IdleSession {
    pub db_user: String,
    pub addr: String,
    pub remote_pid: i32,
    pub tls: bool,
    pub idle: Duration,
}

/// A counted place in the pool; dropping it without [`Pool::release`] frees it.
pub struct Slot {
    pool: Weak<Pool>,
    identity: DbIdentity,
    live: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.live
            && let Some(pool) = self.pool.upgrade()
        {
            pool.forget(&self.identity);
        }
    }
}

/// What [`Pool::acquire`] hands out.
// Short-lived (returned by `acquire`, matched at once): boxing the connection
// would cost an allocation per reuse for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Lease {
    /// A parked session of the same key, already reset.
    Reused(UpstreamConn, Slot),
    /// A reserved place: the caller connects and keeps the slot with the connection.
    New(Slot),
}

/// Counts for `SHOW sluice.pools`.
pub struct PoolStats {
    pub open: usize,
    pub idle: usize,
    pub waiting: usize,
}

/// How long an idle session may sit before it is checked with a round trip on reuse.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(30);

/// A parked session opened on this thread if there is one (its socket's wake-ups stay
/// on this thread), else the most recently parked.
fn take_local_first(parked: &mut Vec<Idle>) -> Option<Idle> {
    let here = std::thread::current().id();
    match parked.iter().rposition(|i| i.conn.home == here) {
        Some(i) => Some(parked.remove(i)),
        None => parked.pop(),
    }
}

impl Pool {
    pub fn new(upstream: &str, config: PoolConfig) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            config,
            upstream: upstream.to_owned(),
            state: Mutex::new(State::default()),
            freed: Notify::new(),
        });
        let weak = Arc::downgrade(&pool);
        let period = Duration::from_secs((pool.config.idle_timeout_secs / 2).clamp(1, 30));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                loop {
                    tokio::time::sleep(period).await;
                    let Some(pool) = weak.upgrade() else { return };
                    pool.close_idle_older_than(Duration::from_secs(pool.config.idle_timeout_secs))
                        .await;
                }
            });
        }
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> PoolStats {
        let s = self.lock();
        PoolStats {
            open: s.total,
            idle: s.idle.values().map(Vec::len).sum(),
            waiting: s.waiting,
        }
    }

    /// The parked sessions: database user, upstream address, backend pid, and how
    /// long each has been idle (`SHOW SERVERS`).
    pub fn idle_sessions(&self) -> Vec<IdleSession> {
        let s = self.lock();
        s.idle
            .values()
            .flatten()
            .map(|i| IdleSession {
                db_user: i.identity.user.clone(),
                addr: i
                    .conn
                    .cancel
                    .as_ref()
                    .map(|c| format!("{}:{}", c.endpoint.host, c.endpoint.port))
                    .unwrap_or_default(),
                remote_pid: i.conn.cancel.as_ref().map(|c| c.pid).unwrap_or(0),
                tls: i
                    .conn
                    .cancel
                    .as_ref()
                    .is_some_and(|c| c.endpoint.tls.is_some()),
                idle: i.since.elapsed(),
            })
            .collect()
    }

    pub fn max_sessions(&self) -> usize {
        self.config.max_sessions
    }

    fn forget(&self, identity: &DbIdentity) {
        uncount(&mut self.lock(), identity);
        self.freed.notify_waiters();
    }

    /// A session for `key`: a parked one, or a reserved place for a new one. Waits up
    /// to `acquire_timeout_secs` when the upstream or the identity is at its limit.
    pub async fn acquire(self: &Arc<Self>, key: &PoolKey) -> Result<Lease, PgError> {
        let deadline = Instant::now() + Duration::from_secs(self.config.acquire_timeout_secs);
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let per_user = self
                .config
                .max_sessions_per_user
                .min(self.config.max_sessions);
            // Decided under the lock; counts change only here and in `uncount`, and a
            // `Slot` owns every count from the moment it is taken (so a cancelled
            // acquire gives it back).
            let (reused, reserved, evicted) = {
                let mut s = self.lock();
                if let Some(idle) = s.idle.get_mut(key).and_then(take_local_first) {
                    s.idle.retain(|_, v| !v.is_empty());
                    (Some((idle, self.slot(key))), None, None)
                } else {
                    // At a limit, make room by closing a parked session: of the same
                    // identity (other parameters) at the per-user limit, of anyone at
                    // the upstream's limit.
                    let mine = s.per_identity.get(&key.identity).copied().unwrap_or(0);
                    let evicted = if mine >= per_user {
                        take_idle(&mut s, |k| k.identity == key.identity)
                    } else if s.total >= self.config.max_sessions {
                        take_idle(&mut s, |_| true)
                    } else {
                        None
                    };
                    let mine = s.per_identity.get(&key.identity).copied().unwrap_or(0);
                    let reserved =
                        (s.total < self.config.max_sessions && mine < per_user).then(|| {
                            s.total += 1;
                            *s.per_identity.entry(key.identity.clone()).or_default() += 1;
                            self.slot(key)
                        });
                    (None, reserved, evicted)
                }
            };
            if let Some(e) = evicted {
                e.conn.terminate().await;
            }
            if let Some((idle, slot)) = reused {
                let mut conn = idle.conn;
                let check = Duration::from_secs(self.config.connect_timeout_secs);
                if idle.since.elapsed() > CHECK_AFTER_IDLE
                    && !matches!(
                        tokio::time::timeout(check, conn.run_quietly("SELECT 1")).await,
                        Ok(Ok(()))
                    )
                {
                    // Died while parked (e.g. an upstream restart): drop it, go again.
                    drop(slot);
                    continue;
                }
                return Ok(Lease::Reused(conn, slot));
            }
            if let Some(slot) = reserved {
                return Ok(Lease::New(slot));
            }
            if waiting.is_none() {
                waiting = Some(Waiting::new(self));
            }
            if tokio::time::timeout_at(deadline.into(), freed)
                .await
                .is_err()
            {
                return Err(PgError::new(
                    SqlState::TOO_MANY_CONNECTIONS,
                    format!(
                        "no Redshift session available on upstream \"{}\" after waiting {} s \
                         (limits: {} sessions, {} per user)",
                        self.upstream,
                        self.config.acquire_timeout_secs,
                        self.config.max_sessions,
                        self.config.max_sessions_per_user
                    ),
                )
                .with_hint("retry later, or ask an administrator to raise the pool limits"));
            }
        }
    }

    fn slot(self: &Arc<Self>, key: &PoolKey) -> Slot {
        Slot {
            pool: Arc::downgrade(self),
            identity: key.identity.clone(),
            live: true,
        }
    }

    /// Returns a session after its client left. `clean` says the relay ended at a
    /// ReadyForQuery outside a transaction; the reset query runs before parking.
    pub async fn release(
        self: &Arc<Self>,
        key: PoolKey,
        mut conn: UpstreamConn,
        mut slot: Slot,
        clean: bool,
    ) {
        // How this client's statements ended is no business of the next client's.
        conn.tally.done.clear();
        if clean && conn.status == b'I' && conn.run_quietly(&self.config.reset_query).await.is_ok()
        {
            slot.live = false;
            let mut s = self.lock();
            s.idle.entry(key.clone()).or_default().push(Idle {
                identity: key.identity,
                conn,
                since: Instant::now(),
            });
            drop(s);
            self.freed.notify_waiters();
            return;
        }
        drop(slot);
        conn.terminate().await;
    }

    async fn close_idle_older_than(&self, max_idle: Duration) {
        let mut closing = Vec::new();
        {
            let mut s = self.lock();
            let mut old = Vec::new();
            for list in s.idle.values_mut() {
                let (expired, keep): (Vec<Idle>, Vec<Idle>) =
                    list.drain(..).partition(|i| i.since.elapsed() >= max_idle);
                *list = keep;
                old.extend(expired);
            }
            s.idle.retain(|_, v| !v.is_empty());
            for i in old {
                uncount(&mut s, &i.identity);
                closing.push(i.conn);
            }
        }
        if !closing.is_empty() {
            self.freed.notify_waiters();
        }
        for c in closing {
            c.terminate().await;
        }
    }
}

fn uncount(s: &mut State, identity: &DbIdentity) {
    s.total = s.total.saturating_sub(1);
    if let Some(n) = s.per_identity.get_mut(identity) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            s.per_identity.remove(identity);
        }
    }
}

/// Counts a client waiting in `acquire` for as long as it waits (also when the
/// waiting future is dropped by a cancel).
struct Waiting<'a>(&'a Pool);

impl<'a> Waiting<'a> {
    fn new(pool: &'a Pool) -> Self {
        pool.lock().waiting += 1;
        Waiting(pool)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.waiting = s.waiting.saturating_sub(1);
    }
}

/// Takes a parked session whose key `matches` out of the pool's counts.
fn take_idle(s: &mut State, matches: impl Fn(&PoolKey) -> bool) -> Option<Idle> {
    let key = s
        .idle
        .iter()
        .find(|(k, v)| !v.is_empty() && matches(k))?
        .0
        .clone();
    let list = s.idle.get_mut(&key)?;
    let idle = list.pop()?;
    if list.is_empty() {
        s.idle.remove(&key);
    }
    uncount(s, &idle.identity);
    Some(idle)
}
