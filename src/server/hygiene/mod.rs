//! Session hygiene: idle timeouts, the maximum session age, per-user and per-role
//! connection limits, terminating sessions from an admin session, and which lake
//! engine settings a session may change (`engine.rs`).
//!
//! - Idle timeouts run while the session waits for its client after a
//!   ReadyForQuery (`Session::serve`), as in PostgreSQL: `idle_session_timeout`
//!   outside a transaction (FATAL 57P05), `idle_in_transaction_session_timeout`
//!   inside one (FATAL 25P03). The session's value is its GUC when set, else its
//!   roles' (shortest non-zero), else `[server]`'s; a GUC may lower a configured
//!   timeout, never raise it.
//! - `max_session_age_secs` ends a session (FATAL 57P01) the next time it is idle
//!   outside a transaction: never mid-statement or mid-transaction.
//! - Connection limits are counted here ([`ConnectionCounts`]), per login name and
//!   per directly granted role, at login after authentication (FATAL 53300).
//! - `SELECT sluice.terminate(pid)` / `pg_terminate_backend(pid)`: the registry
//!   marks the target ([`Kill`]), cancels its running statement (the cancel signal,
//!   and its upstream backend's), and wakes its loop, which sends FATAL 57P01.

mod engine;

pub use engine::{EngineGuard, check_engine_setting};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{RoleConfig, ServerConfig};
use crate::error::{PgError, SqlState};
use crate::server::settings::Settings;

/// Why the gateway ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Ending {
    IdleSession = 1,
    IdleInTransaction = 2,
    MaxAge = 3,
    /// An admin's `sluice.terminate` / `pg_terminate_backend`.
    Terminated = 4,
}

impl Ending {
    fn from_u8(v: u8) -> Option<Ending> {
        Some(match v {
            1 => Ending::IdleSession,
            2 => Ending::IdleInTransaction,
            3 => Ending::MaxAge,
            4 => Ending::Terminated,
            _ => return None,
        })
    }

    /// The metric label and the logoff event's `reason`.
    pub fn name(self) -> &'static str {
        match self {
            Ending::IdleSession => "idle_session_timeout",
            Ending::IdleInTransaction => "idle_in_transaction_session_timeout",
            Ending::MaxAge => "max_session_age",
            Ending::Terminated => "terminated",
        }
    }

    /// What the client is told, in PostgreSQL 17's words where it has them.
    pub fn error(self) -> PgError {
        match self {
            Ending::IdleSession => PgError::fatal(
                SqlState("57P05"),
                "terminating connection due to idle-session timeout",
            ),
            Ending::IdleInTransaction => PgError::fatal(
                SqlState("25P03"),
                "terminating connection due to idle-in-transaction timeout",
            ),
            Ending::MaxAge => PgError::fatal(
                SqlState::ADMIN_SHUTDOWN,
                "terminating connection due to maximum session age",
            )
            .with_hint(
                "the gateway's server.max_session_age_secs (or the role's) was reached; reconnect",
            ),
            Ending::Terminated => PgError::fatal(
                SqlState::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command",
            ),
        }
    }
}

/// A session's termination mark, set by another session (an admin's terminate).
/// Waiting on it is an atomic load and a lock-free waker registration: the session
/// loop waits on it around every client message.
#[derive(Default)]
pub struct Kill {
    reason: AtomicU8,
    waker: futures::task::AtomicWaker,
}

impl Kill {
    /// Marks the session and wakes its loop.
    pub fn kill(&self, ending: Ending) {
        self.reason.store(ending as u8, Ordering::Release);
        self.waker.wake();
    }

    pub fn ending(&self) -> Option<Ending> {
        Ending::from_u8(self.reason.load(Ordering::Acquire))
    }

    /// Resolves once the session is marked (at once if it already is). One task
    /// waits at a time (the session's own).
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.ending().is_some() {
                return std::task::Poll::Ready(());
            }
            self.waker.register(cx.waker());
            match self.ending() {
                Some(_) => std::task::Poll::Ready(()),
                None => std::task::Poll::Pending,
            }
        })
        .await
    }
}

/// A session's configured hygiene (from `[server]` and its roles).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionRules {
    pub idle_session: Option<Duration>,
    pub idle_in_transaction: Option<Duration>,
    pub max_age: Option<Duration>,
}

impl SessionRules {
    /// For a session holding `roles` (and what they include). A key any of the
    /// roles sets decides (the shortest non-zero value; all zero: off); a key none
    /// sets comes from `[server]`.
    pub fn resolve(server: &ServerConfig, roles: &[String], defined: &[RoleConfig]) -> Self {
        let mut seen = std::collections::BTreeSet::new();
        let mut stack: Vec<&str> = roles.iter().map(String::as_str).collect();
        let (mut idle, mut idle_tx, mut age) = (None, None, None);
        // `None`: unset by every role; `Some(0)`: set, and off.
        let merge = |acc: &mut Option<u64>, v: Option<u64>| {
            if let Some(v) = v {
                *acc = Some(match *acc {
                    None | Some(0) => v,
                    Some(a) if v == 0 => a,
                    Some(a) => a.min(v),
                });
            }
        };
        while let Some(name) = stack.pop() {
            if !seen.insert(name) {
                continue;
            }
            let Some(role) = defined.iter().find(|r| r.name == name) else {
                continue;
            };
            merge(&mut idle, role.idle_session_timeout_secs);
            merge(&mut idle_tx, role.idle_in_transaction_session_timeout_secs);
            merge(&mut age, role.max_session_age_secs);
            stack.extend(role.includes.iter().map(String::as_str));
        }
        let secs = |v: Option<u64>, default: u64| {
            let s = v.unwrap_or(default);
            (s > 0).then(|| Duration::from_secs(s))
        };
        SessionRules {
            idle_session: secs(idle, server.idle_session_timeout_secs),
            idle_in_transaction: secs(idle_tx, server.idle_in_transaction_session_timeout_secs),
            max_age: secs(age, server.max_session_age_secs),
        }
    }

    /// The idle timeout that applies now: the session's GUC when set, but never
    /// longer than a configured one.
    pub fn idle_timeout(&self, settings: &Settings, in_transaction: bool) -> Option<Duration> {
        let (guc, configured) = if in_transaction {
            (
                settings.idle_in_transaction_session_timeout,
                self.idle_in_transaction,
            )
        } else {
            (settings.idle_session_timeout, self.idle_session)
        };
        match (guc, configured) {
            (Some(g), Some(c)) => Some(g.min(c)),
            (g, c) => g.or(c),
        }
    }
}

/// Sessions per login name and per role, for the connection limits.
#[derive(Default)]
pub struct ConnectionCounts {
    counts: Mutex<HashMap<String, usize>>,
}

/// One session's place in the counts; dropping it (however the session ends)
/// gives the place back.
pub struct ConnectionSlot {
    counts: Arc<ConnectionCounts>,
    keys: Vec<String>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            if let Some(n) = counts.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(key);
                }
            }
        }
    }
}

impl ConnectionCounts {
    /// Counts a session of `user` holding `roles`, or refuses it (FATAL 53300, as
    /// PostgreSQL words a role's connection limit) when the user already has
    /// `per_user` sessions (0: no limit) or one of its roles its `max_connections`.
    pub fn admit(
        self: &Arc<Self>,
        user: &str,
        roles: &[String],
        per_user: usize,
        defined: &[RoleConfig],
    ) -> Result<ConnectionSlot, PgError> {
        let mut limits: Vec<(String, usize, PgError)> = Vec::new();
        let refusal = |name: &str, detail: String| {
            PgError::fatal(
                SqlState::TOO_MANY_CONNECTIONS,
                format!("too many connections for role \"{name}\""),
            )
            .with_detail(detail)
        };
        limits.push((
            format!("user\0{user}"),
            per_user,
            refusal(
                user,
                format!("server.max_connections_per_user allows {per_user} sessions per user"),
            ),
        ));
        let mut seen = std::collections::BTreeSet::new();
        for role in roles {
            if !seen.insert(role.as_str()) {
                continue;
            }
            let limit = defined
                .iter()
                .find(|r| &r.name == role)
                .and_then(|r| r.max_connections)
                .unwrap_or(0);
            limits.push((
                format!("role\0{role}"),
                limit,
                refusal(
                    role,
                    format!("role \"{role}\" allows {limit} concurrent sessions (max_connections)"),
                ),
            ));
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for (key, limit, refusal) in &limits {
            if *limit > 0 && counts.get(key).copied().unwrap_or(0) >= *limit {
                return Err(refusal.clone());
            }
        }
        let keys: Vec<String> = limits.into_iter().map(|(k, _, _)| k).collect();
        for key in &keys {
            *counts.entry(key.clone()).or_default() += 1;
        }
        Ok(ConnectionSlot {
            counts: self.clone(),
            keys,
        })
    }
}

#[cfg(test)]
mod tests;
