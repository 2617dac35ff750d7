//! The audit trail: one record per login, failed login, logoff and statement,
//! written to the configured sinks (`[audit]`).
//!
//! Design:
//! - Sessions call [`Auditor::emit`], which never blocks and never fails: it stamps
//!   the time and sends the event over an unbounded channel. An audit record must
//!   not wait behind disk or S3 latency on the statement path.
//! - One writer task (`writer.rs`) renders each event once (`json` or `ocsf`) into a
//!   shared queue and writes batches to every sink: the hash-chained file
//!   (`file.rs`), standard output (`stdout.rs`), S3 objects (`s3.rs`). Each sink
//!   keeps its own position in the queue, so one failing sink neither stops nor
//!   duplicates the others; a record leaves the queue once every sink has it.
//! - A sink that fails is retried every 250 ms with the same records, in order.
//!   With `on_failure = "continue"` records beyond `max_pending` are dropped (oldest
//!   first, counted); with `"refuse"` nothing is dropped and [`Auditor::refusal`]
//!   makes sessions refuse statements (58030) until every sink writes again.
//!   `refusal` is one atomic load on the happy path: it runs before every statement.
//! - Durability is best effort, as with pgaudit: batches are written and flushed
//!   but not fsynced; a crash may lose the last records or tear the last line
//!   (`verify` reports a torn line; the chain continues past it).

mod event;
mod file;
mod json;
mod ocsf;
mod s3;
mod stdout;
mod verify;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::config::{AuditConfig, AuditFormat, AuditOnFailure};
use crate::error::{PgError, SqlState};

pub use event::{AuditEvent, StatementEvent, Who};
pub use ocsf::OCSF_VERSION;
pub use verify::{VerifyError, VerifyReport, verify};

const MIB: u64 = 1024 * 1024;

/// The audit trail of one server: cheap to share (`Arc`), called from every session.
pub struct Auditor {
    commands: mpsc::UnboundedSender<Command>,
    state: Arc<State>,
    log_parameters: bool,
    statements: bool,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("stats", &self.stats())
            .field("log_parameters", &self.log_parameters)
            .field("statements", &self.statements)
            .finish()
    }
}

/// Counters for metrics and admin views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditStats {
    /// Records every sink has written.
    pub written: u64,
    /// Failed write attempts (each retry of a failing sink counts).
    pub write_failures: u64,
    /// Records dropped because `max_pending` was exceeded (`on_failure = "continue"`).
    pub dropped: u64,
    /// Records emitted and not yet written by every sink.
    pub pending: usize,
    /// No sink is failing.
    pub healthy: bool,
}

/// What the sessions and the writer share.
struct State {
    refuse: bool,
    max_pending: usize,
    pending: AtomicUsize,
    failing: AtomicBool,
    /// Why sinks are failing (`"<sink>: <error>"`), read only when `failing` is set.
    reason: Mutex<String>,
    written: AtomicU64,
    write_failures: AtomicU64,
    dropped: AtomicU64,
}

impl State {
    fn set_failing(&self, reason: Option<String>) {
        let mut current = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        self.failing.store(reason.is_some(), Ordering::Release);
        *current = reason.unwrap_or_default();
    }
}

enum Command {
    Record(Stamped),
    /// Answered once everything sent before it is written (or a sink is failing).
    Flush(oneshot::Sender<()>),
}

/// An event with the time it was emitted.
struct Stamped {
    time: DateTime<Utc>,
    event: AuditEvent,
}

/// One rendered record: its JSON object without the file chain's fields, shared
/// by the sinks.
#[derive(Debug, Clone)]
struct Line {
    time: DateTime<Utc>,
    body: Arc<str>,
}

impl Auditor {
    /// Opens the sinks (a file that cannot be opened is an error naming it) and
    /// starts the writer on the current tokio runtime. `resolve` turns config paths
    /// into real ones (`Config::resolve`).
    pub fn start(
        config: &AuditConfig,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<Arc<Auditor>, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the audit trail needs a tokio runtime".to_string())?;
        let mut sinks = Vec::new();
        if let Some(f) = &config.file {
            let path = resolve(&f.path);
            sinks.push(writer::Sink::file(file::FileSink::open(
                &path,
                f.max_size_mb.saturating_mul(MIB),
                f.keep,
            )?));
        }
        if config.stdout.is_some() {
            sinks.push(writer::Sink::Stdout);
        }
        if let Some(s) = &config.s3 {
            sinks.push(writer::Sink::s3(s3::S3Sink::new(s)?));
        }
        Ok(Auditor::with_sinks(config, sinks, &runtime))
    }

    fn with_sinks(
        config: &AuditConfig,
        sinks: Vec<writer::Sink>,
        runtime: &tokio::runtime::Handle,
    ) -> Arc<Auditor> {
        let state = Arc::new(State {
            refuse: config.on_failure == AuditOnFailure::Refuse,
            max_pending: config.max_pending,
            pending: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
            written: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let (commands, received) = mpsc::unbounded_channel();
        let writer = writer::Writer::new(received, state.clone(), config.format, sinks);
        runtime.spawn(writer.run());
        Arc::new(Auditor {
            commands,
            state,
            log_parameters: config.log_parameters,
            statements: config.statements,
        })
    }

    /// Records an event. Never blocks and never fails; statements are dropped when
    /// `statements = false`, and parameters unless `log_parameters = true`.
    pub fn emit(&self, mut event: AuditEvent) {
        if let AuditEvent::Statement(statement) = &mut event {
            if !self.statements {
                return;
            }
            if !self.log_parameters {
                statement.parameters = None;
            }
        }
        self.state.pending.fetch_add(1, Ordering::Relaxed);
        let record = Command::Record(Stamped {
            time: Utc::now(),
            event,
        });
        if self.commands.send(record).is_err() {
            // The writer is gone (its runtime shut down): nothing can record it.
            self.state.pending.fetch_sub(1, Ordering::Relaxed);
            self.state.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// With `on_failure = "refuse"`: the error to refuse a statement with while the
    /// audit trail cannot keep up. Cheap on the happy path.
    pub fn refusal(&self) -> Option<PgError> {
        if !self.state.refuse {
            return None;
        }
        let failing = self.state.failing.load(Ordering::Acquire);
        let pending = self.state.pending.load(Ordering::Relaxed);
        let stopped = self.commands.is_closed();
        if !failing && !stopped && pending <= self.state.max_pending {
            return None;
        }
        let reason = if failing {
            self.state
                .reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        } else if stopped {
            "the audit writer has stopped".to_string()
        } else {
            format!(
                "{pending} records wait to be written, more than audit.max_pending ({})",
                self.state.max_pending
            )
        };
        Some(PgError::new(
            SqlState::IO_ERROR,
            format!(
                "audit log cannot be written ({reason}); statements are refused until it can (audit.on_failure = \"refuse\")"
            ),
        ))
    }

    /// Whether statements may carry their bound parameters.
    pub fn log_parameters(&self) -> bool {
        self.log_parameters
    }

    /// Whether statements are recorded at all (`statements = true`), so sessions
    /// can skip building their events.
    pub fn records_statements(&self) -> bool {
        self.statements
    }

    pub fn stats(&self) -> AuditStats {
        AuditStats {
            written: self.state.written.load(Ordering::Relaxed),
            write_failures: self.state.write_failures.load(Ordering::Relaxed),
            dropped: self.state.dropped.load(Ordering::Relaxed),
            pending: self.state.pending.load(Ordering::Relaxed),
            healthy: !self.state.failing.load(Ordering::Acquire),
        }
    }

    /// Waits until every event emitted before this call is written by every sink
    /// (S3 batches are sent early), or until a sink that still lacks some of them
    /// fails an attempt. For shutdown, and for tests.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// The record's JSON object without chain fields: `time` first, then the event.
/// `buffer` is scratch space the writer keeps from one record to the next.
fn render(format: AuditFormat, stamped: &Stamped, buffer: &mut String) -> Line {
    let body: Arc<str> = match format {
        AuditFormat::Json => {
            buffer.clear();
            json::render(buffer, &stamped.time, &stamped.event);
            Arc::from(buffer.as_str())
        }
        AuditFormat::Ocsf => ocsf::to_ocsf(stamped.time, &stamped.event)
            .to_string()
            .into(),
    };
    Line {
        time: stamped.time,
        body,
    }
}

#[cfg(test)]
mod tests;
