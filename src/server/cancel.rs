//! CancelRequest support: every session registers a (process id, secret key) pair;
//! a cancel arriving on another connection with the right pair interrupts the
//! statement that session is running, and nothing else.
//!
//! A forwarding session also publishes its upstream backend's cancel key while it
//! holds an upstream session; a cancel is then passed straight on to that backend
//! (as PgBouncer does), so the relay never has to watch for cancels itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

use crate::redshift::wire::{self, CancelTarget};
use crate::server::hygiene::{Ending, Kill};

/// The upstream backend a session's cancel goes to, while it holds one.
pub type UpstreamCancel = Arc<Mutex<Option<CancelTarget>>>;

struct Registered {
    secret: i32,
    signal: Arc<Notify>,
    upstream: UpstreamCancel,
    kill: Arc<Kill>,
}

#[derive(Default)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<i32, Registered>>,
    next_pid: AtomicI32,
    /// `cluster.gateway_id`: session pids then name this gateway
    /// (`cluster::session_pid`), so peers can pass cancels on.
    gateway: Option<u8>,
}

/// A session's registration; dropping it unregisters.
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    pub pid: i32,
    pub secret: i32,
    pub signal: Arc<Notify>,
    /// Set while the session holds an upstream session (see the module docs).
    pub upstream: UpstreamCancel,
    /// Set when an admin terminates the session (`server::hygiene`).
    pub kill: Arc<Kill>,
}

impl CancelHandle {
    /// Publishes (or, with `None`, withdraws) the upstream backend to cancel.
    pub fn set_upstream(&self, target: Option<CancelTarget>) {
        match self.upstream.lock() {
            Ok(mut t) => *t = target,
            Err(p) => *p.into_inner() = target,
        }
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.sessions.lock() {
            map.remove(&self.pid);
        }
    }
}

/// Session numbers start above Linux's largest possible pid (2^22), so a client can
/// never mistake one for a real backend's pid (e.g. the upstream's, seen in
/// `pg_backend_pid()` or a NOTIFY).
const FIRST_PID: i32 = crate::route::FIRST_SESSION_PID;

impl CancelRegistry {
    pub fn new() -> Arc<CancelRegistry> {
        CancelRegistry::for_gateway(None)
    }

    /// A registry whose pids carry `gateway` (one of several behind a balancer).
    pub fn for_gateway(gateway: Option<u8>) -> Arc<CancelRegistry> {
        Arc::new(CancelRegistry {
            sessions: Mutex::new(HashMap::new()),
            next_pid: AtomicI32::new(rand::thread_rng().gen_range(0..1_000_000)),
            gateway,
        })
    }

    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let secret: i32 = rand::thread_rng().r#gen();
        let signal = Arc::new(Notify::new());
        let upstream = UpstreamCancel::default();
        let kill = Arc::new(Kill::default());
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let pid = loop {
            let n = self.next_pid.fetch_add(1, Ordering::Relaxed) & 0x3fff_ffff;
            let pid = match self.gateway {
                Some(g) => crate::cluster::session_pid(g, n as u32),
                None => FIRST_PID + n % (0x3fff_ffff - FIRST_PID),
            };
            if !map.contains_key(&pid) {
                break pid;
            }
        };
        map.insert(
            pid,
            Registered {
                secret,
                signal: signal.clone(),
                upstream: upstream.clone(),
                kill: kill.clone(),
            },
        );
        CancelHandle {
            registry: self.clone(),
            pid,
            secret,
            signal,
            upstream,
            kill,
        }
    }

    /// Interrupts the statement running in session `pid` if `secret` matches: the
    /// session's own work, and its upstream backend's if it holds one.
    pub fn cancel(&self, pid: i32, secret: i32) -> bool {
        let map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let Some(session) = map.get(&pid) else {
            return false;
        };
        if !bool::from(session.secret.to_be_bytes().ct_eq(&secret.to_be_bytes())) {
            return false;
        }
        interrupt(session);
        true
    }

    /// An admin's terminate: marks session `pid` ([`Ending::Terminated`]), cancels
    /// its running statement (and its upstream backend's) and wakes its loop, which
    /// sends FATAL 57P01 and closes. `false` when no session has that pid.
    pub fn terminate(&self, pid: i32) -> bool {
        let map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let Some(session) = map.get(&pid) else {
            return false;
        };
        session.kill.kill(Ending::Terminated);
        interrupt(session);
        true
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Interrupts what a session runs: its own work, and its upstream backend's.
fn interrupt(session: &Registered) {
    session.signal.notify_waiters();
    let target = session
        .upstream
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(target) = target {
        wire::cancel_in_background(target, "forwarding a cancel request failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_right_secret_cancels() {
        let reg = CancelRegistry::new();
        let h = reg.register();
        let waiting = h.signal.notified();
        assert!(!reg.cancel(h.pid, h.secret.wrapping_add(1)));
        assert!(reg.cancel(h.pid, h.secret));
        waiting.await;
        assert!(h.kill.ending().is_none());
        assert!(reg.terminate(h.pid));
        assert_eq!(h.kill.ending(), Some(Ending::Terminated));
        h.kill.wait().await;
        let pid = h.pid;
        drop(h);
        assert!(!reg.terminate(pid));
        assert!(!reg.cancel(pid, 0));
        assert!(reg.is_empty());
    }

    #[test]
    fn a_clustered_gateways_pids_name_it() {
        let reg = CancelRegistry::for_gateway(Some(7));
        let handles: Vec<_> = (0..100).map(|_| reg.register()).collect();
        for h in &handles {
            assert_eq!(crate::cluster::gateway_of(h.pid), Some(7));
        }
        let unclustered = CancelRegistry::new().register();
        assert_eq!(crate::cluster::gateway_of(unclustered.pid), None);
    }
}
