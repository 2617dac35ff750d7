//! What an operator sees of the workload: the pipeline's record stage fans each
//! finished statement out to metrics, query groups and the audit trail, and the
//! live session board says who is connected and what they are doing.
//!
//! - `sessions`: the session board (`SHOW CLIENTS`, the dashboard, gauges).
//! - `query_groups`: statistics per query group (`sluice.query_groups`).
//! - `system_tables`: `sluice.*` tables the lake engine can query.
//!
//! Nothing here imports `server`: sessions call in with plain data.

pub mod query_groups;
pub mod sessions;
pub mod system_tables;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::audit::Auditor;
use crate::audit::{AuditEvent, StatementEvent, Who};
use crate::metrics::metrics;
use crate::route::label::Label;

pub use query_groups::QueryGroups;
pub use sessions::SessionBoard;

/// One finished statement, as the session saw it.
pub struct StatementEnd<'a> {
    pub who: &'a Arc<Who>,
    /// `application_name` now, or a sqlcommenter `application` tag.
    pub application: &'a str,
    /// `SET query_group`, or a sqlcommenter `route` tag.
    pub query_group: Option<&'a str>,
    pub route: &'static str,
    pub text: &'a str,
    pub label: &'a Label,
    /// Bound parameters as text, when the audit trail logs them.
    pub parameters: Option<Vec<Option<String>>>,
    pub duration: Duration,
    /// Time spent waiting to be admitted.
    pub queue: Duration,
    /// The workload queue the statement ran in.
    pub queue_name: Option<&'a str>,
    /// Workload rules that acted on it.
    pub rules: &'a [crate::workload::Fired],
    pub rows: Option<u64>,
    pub bytes: u64,
    pub sqlstate: &'a str,
    pub error: Option<&'a str>,
}

/// PgBouncer's `SHOW STATS` totals (one database: the gateway's).
#[derive(Default)]
pub struct Totals {
    pub queries: AtomicU64,
    pub xacts: AtomicU64,
    pub query_time_us: AtomicU64,
    pub xact_time_us: AtomicU64,
    pub wait_time_us: AtomicU64,
    pub received: AtomicU64,
    pub sent: AtomicU64,
}

pub struct Observer {
    pub board: Arc<SessionBoard>,
    pub query_groups: Option<QueryGroups>,
    pub audit: Option<Arc<Auditor>>,
    pub totals: Totals,
    pub started: Instant,
}

impl Observer {
    pub fn new(query_groups: Option<QueryGroups>, audit: Option<Arc<Auditor>>) -> Observer {
        Observer {
            board: Arc::new(SessionBoard::default()),
            query_groups,
            audit,
            totals: Totals::default(),
            started: Instant::now(),
        }
    }

    /// Whether statements are audited (so the session gathers what events need).
    pub fn audits_statements(&self) -> bool {
        self.audit.as_ref().is_some_and(|a| a.records_statements())
    }

    pub fn logs_parameters(&self) -> bool {
        self.audit.as_ref().is_some_and(|a| a.log_parameters())
    }

    /// Stage 4 of the pipeline: one call per statement at its end.
    pub fn statement(&self, s: StatementEnd<'_>) {
        let ok = s.error.is_none();
        crate::metrics::statement(s.route, ok, s.duration.as_secs_f64(), s.rows, s.bytes);
        if s.route == "refused" {
            metrics()
                .statements_refused
                .with_label_values(&[s.sqlstate])
                .inc();
        }
        let us = s.duration.as_micros() as u64;
        self.totals.queries.fetch_add(1, Ordering::Relaxed);
        self.totals.query_time_us.fetch_add(us, Ordering::Relaxed);
        self.totals
            .wait_time_us
            .fetch_add(s.queue.as_micros() as u64, Ordering::Relaxed);
        if let Some(groups) = &self.query_groups {
            groups.record(&query_groups::Sample {
                fingerprint: s.label.fingerprint,
                user: &s.who.user,
                application: s.application,
                query_group: s.query_group,
                route: s.route,
                text: s.text,
                duration: s.duration,
                queue: s.queue,
                rows: s.rows.unwrap_or(0),
                error: !ok,
                cache_hit: s.route == "cache",
                rule_actions: s.rules.len() as u64,
            });
        }
        if let Some(audit) = &self.audit
            && audit.records_statements()
        {
            let statement = crate::route::redact::redact(s.text);
            // A parser's message may quote the secret it stumbled on: when the text
            // held one, quoted parts of the message go too.
            let error = match (&statement, s.error) {
                (Cow::Owned(_), Some(m)) => Some(crate::route::redact::mask_quoted(m)),
                (_, m) => m.map(str::to_owned),
            };
            audit.emit(AuditEvent::Statement(Box::new(StatementEvent {
                who: s.who.clone(),
                application: s.application.to_owned(),
                query_group: s.query_group.map(str::to_owned),
                route: s.route,
                fingerprint: s.label.fingerprint,
                statement: statement.into_owned(),
                parameters: s.parameters,
                tables_read: s.label.tables_read.clone(),
                tables_written: s.label.tables_written.clone(),
                duration_us: us,
                rows: s.rows,
                bytes: s.bytes,
                sqlstate: match s.sqlstate {
                    "00000" => Cow::Borrowed("00000"),
                    other => Cow::Owned(other.to_owned()),
                },
                error,
                queue: s.queue_name.map(str::to_owned),
                queue_wait_us: s.queue.as_micros() as u64,
                rules: s
                    .rules
                    .iter()
                    .map(|f| format!("{}:{}", f.rule, f.action.name()))
                    .collect(),
            })));
        }
    }

    /// A transaction ended (COMMIT, ROLLBACK, or an autocommitted statement).
    pub fn transaction(&self, duration: Duration) {
        self.totals.xacts.fetch_add(1, Ordering::Relaxed);
        self.totals
            .xact_time_us
            .fetch_add(duration.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn login(&self, who: &Arc<Who>) {
        metrics().logins.with_label_values(&[who.auth, "ok"]).inc();
        if let Some(audit) = &self.audit {
            audit.emit(AuditEvent::Login { who: who.clone() });
        }
    }

    pub fn login_failed(&self, who: Who, reason: &str, sqlstate: &'static str) {
        let method = if who.auth.is_empty() {
            "unknown"
        } else {
            who.auth
        };
        metrics()
            .logins
            .with_label_values(&[method, "failed"])
            .inc();
        if let Some(audit) = &self.audit {
            audit.emit(AuditEvent::LoginFailed {
                who: Arc::new(who),
                reason: reason.to_owned(),
                sqlstate,
            });
        }
    }

    /// A session ended; `reason` when the gateway ended it (idle timeouts,
    /// maximum age, an admin's terminate).
    pub fn logoff(&self, who: &Arc<Who>, duration: Duration, reason: Option<&'static str>) {
        if let Some(audit) = &self.audit {
            audit.emit(AuditEvent::Logoff {
                who: who.clone(),
                duration_us: duration.as_micros() as u64,
                reason,
            });
        }
    }

    /// An admin session (`by`) terminated another session (`target`).
    pub fn terminated(&self, by: &Arc<Who>, target: &Arc<Who>) {
        if let Some(audit) = &self.audit {
            audit.emit(AuditEvent::Terminate {
                who: by.clone(),
                target: target.clone(),
            });
        }
    }

    /// Bytes a session moved, added when it ends (and by live sessions at scrape).
    pub fn traffic(&self, received: u64, sent: u64) {
        self.totals.received.fetch_add(received, Ordering::Relaxed);
        self.totals.sent.fetch_add(sent, Ordering::Relaxed);
        metrics().received_bytes.inc_by(received);
        metrics().sent_bytes.inc_by(sent);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_parts_of_messages_are_masked() {
        assert_eq!(
            crate::route::redact::mask_quoted("syntax error: found: 'hunter2' near 'x'"),
            "syntax error: found: '***' near '***'"
        );
        assert_eq!(crate::route::redact::mask_quoted("no quotes"), "no quotes");
    }
}
