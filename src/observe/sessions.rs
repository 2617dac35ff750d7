//! The live session board: who is connected, from where, doing what. Sessions
//! publish their state with atomic stores at statement boundaries (no lock on the
//! statement path); `SHOW CLIENTS`, `SHOW SERVERS`, `SHOW POOLS`, `/metrics` and
//! the dashboard read snapshots.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::audit::Who;

/// What a session is doing, in PgBouncer's words where it has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Waiting for the client's next message.
    Idle = 0,
    /// Running a statement.
    Active = 1,
    /// Idle inside a transaction block.
    IdleInTransaction = 2,
    /// Waiting for an upstream session (or, later, a workload queue).
    Waiting = 3,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Active => "active",
            State::IdleInTransaction => "idle_in_transaction",
            State::Waiting => "waiting",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Active,
            2 => State::IdleInTransaction,
            3 => State::Waiting,
            _ => State::Idle,
        }
    }

    pub const ALL: [State; 4] = [
        State::Idle,
        State::Active,
        State::IdleInTransaction,
        State::Waiting,
    ];
}

/// The upstream session a client session holds.
#[derive(Debug, Clone)]
pub struct ServerLink {
    pub upstream: String,
    /// The database user the upstream session runs as.
    pub db_user: String,
    pub addr: String,
    pub connect_time: SystemTime,
    /// The upstream backend's process id.
    pub remote_pid: i32,
    pub tls: bool,
}

/// One session's published state.
pub struct SessionStatus {
    pub who: Arc<Who>,
    pub connect_time: SystemTime,
    pub local_addr: String,
    state: AtomicU8,
    /// Microseconds since the epoch when the current (or last) statement started.
    request_time_us: AtomicU64,
    /// Microseconds since the epoch when the session started waiting (0: not waiting).
    wait_since_us: AtomicU64,
    /// Microseconds since the epoch when the session entered its current state.
    state_since_us: AtomicU64,
    statements: AtomicU64,
    application: Mutex<Arc<str>>,
    route: Mutex<&'static str>,
    server: Mutex<Option<ServerLink>>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SessionStatus {
    /// A statement starts (`route`: where it goes).
    pub fn start(&self, route: &'static str) {
        let now = now_us();
        self.request_time_us.store(now, Ordering::Relaxed);
        self.state_since_us.store(now, Ordering::Relaxed);
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.state.store(State::Active as u8, Ordering::Relaxed);
        *lock(&self.route) = route;
    }

    /// The session waits for the client again.
    pub fn idle(&self, in_transaction: bool) {
        let s = if in_transaction {
            State::IdleInTransaction
        } else {
            State::Idle
        };
        if self.state.swap(s as u8, Ordering::Relaxed) != s as u8 {
            self.state_since_us.store(now_us(), Ordering::Relaxed);
        }
    }

    /// The session waits for a resource (an upstream session) before it can go on.
    pub fn waiting(&self, waiting: bool) {
        if waiting {
            self.wait_since_us.store(now_us(), Ordering::Relaxed);
            self.state_since_us.store(now_us(), Ordering::Relaxed);
            self.state.store(State::Waiting as u8, Ordering::Relaxed);
        } else {
            self.wait_since_us.store(0, Ordering::Relaxed);
            self.state.store(State::Active as u8, Ordering::Relaxed);
        }
    }

    pub fn set_application(&self, name: &str) {
        let mut a = lock(&self.application);
        if **a != *name {
            *a = Arc::from(name);
        }
    }

    pub fn set_server(&self, link: Option<ServerLink>) {
        *lock(&self.server) = link;
    }

    pub fn snapshot(&self) -> SessionSnapshot {
        let request = self.request_time_us.load(Ordering::Relaxed);
        let wait_since = self.wait_since_us.load(Ordering::Relaxed);
        SessionSnapshot {
            who: self.who.clone(),
            connect_time: self.connect_time,
            local_addr: self.local_addr.clone(),
            state: State::from_u8(self.state.load(Ordering::Relaxed)),
            state_since: match self.state_since_us.load(Ordering::Relaxed) {
                0 => self.connect_time,
                us => UNIX_EPOCH + std::time::Duration::from_micros(us),
            },
            request_time: (request > 0)
                .then(|| UNIX_EPOCH + std::time::Duration::from_micros(request)),
            wait_us: if wait_since > 0 {
                now_us().saturating_sub(wait_since)
            } else {
                0
            },
            statements: self.statements.load(Ordering::Relaxed),
            application: lock(&self.application).to_string(),
            route: *lock(&self.route),
            server: lock(&self.server).clone(),
        }
    }
}

/// A copy of one session's state.
#[derive(Debug, Clone)]
pub struct SessionSnapshot {
    pub who: Arc<Who>,
    pub connect_time: SystemTime,
    pub local_addr: String,
    pub state: State,
    /// When the session entered `state`.
    pub state_since: SystemTime,
    pub request_time: Option<SystemTime>,
    pub wait_us: u64,
    pub statements: u64,
    pub application: String,
    /// The route of the current (or last) statement.
    pub route: &'static str,
    pub server: Option<ServerLink>,
}

#[derive(Default)]
pub struct SessionBoard {
    sessions: Mutex<BTreeMap<i32, Arc<SessionStatus>>>,
}

/// A session's place on the board; dropping it takes the session off.
pub struct BoardEntry {
    board: Arc<SessionBoard>,
    pub status: Arc<SessionStatus>,
}

impl Drop for BoardEntry {
    fn drop(&mut self) {
        lock(&self.board.sessions).remove(&self.status.who.session);
    }
}

impl SessionBoard {
    pub fn join(self: &Arc<Self>, who: Arc<Who>, local_addr: String) -> BoardEntry {
        let status = Arc::new(SessionStatus {
            application: Mutex::new(Arc::from(who.application.as_str())),
            who,
            connect_time: SystemTime::now(),
            local_addr,
            state: AtomicU8::new(State::Idle as u8),
            request_time_us: AtomicU64::new(0),
            wait_since_us: AtomicU64::new(0),
            state_since_us: AtomicU64::new(0),
            statements: AtomicU64::new(0),
            route: Mutex::new(""),
            server: Mutex::new(None),
        });
        lock(&self.sessions).insert(status.who.session, status.clone());
        BoardEntry {
            board: self.clone(),
            status,
        }
    }

    /// The session with this number, if it is on the board.
    pub fn get(&self, session: i32) -> Option<Arc<SessionStatus>> {
        lock(&self.sessions).get(&session).cloned()
    }

    /// Every session, in session-number order.
    pub fn snapshot(&self) -> Vec<SessionSnapshot> {
        let sessions: Vec<Arc<SessionStatus>> = lock(&self.sessions).values().cloned().collect();
        sessions.iter().map(|s| s.snapshot()).collect()
    }

    /// Sessions per state.
    pub fn counts(&self) -> [(State, usize); 4] {
        let mut counts = State::ALL.map(|s| (s, 0));
        for s in lock(&self.sessions).values() {
            let state = State::from_u8(s.state.load(Ordering::Relaxed));
            counts[state as usize].1 += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_join_publish_and_leave() {
        let board = Arc::new(SessionBoard::default());
        let who = Arc::new(Who {
            session: 7,
            user: "ann".into(),
            application: "psql".into(),
            ..Who::default()
        });
        let entry = board.join(who, "127.0.0.1:5439".into());
        entry.status.start("lake");
        entry.status.set_application("report");
        let snap = board.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].state, State::Active);
        assert_eq!(
            (snap[0].route, snap[0].application.as_str()),
            ("lake", "report")
        );
        entry.status.waiting(true);
        assert_eq!(board.counts()[State::Waiting as usize].1, 1);
        entry.status.idle(true);
        assert_eq!(board.counts()[State::IdleInTransaction as usize].1, 1);
        drop(entry);
        assert!(board.snapshot().is_empty());
    }
}
