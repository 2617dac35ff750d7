//! One authenticated client session, in the style of tokio's mini-redis: a short
//! loop that reads one frontend message at a time and hands it to the file for its
//! kind of work.
//!
//! - `pipeline.rs`: the stages every statement passes through (decide → admit →
//!   run → record) and the simple query protocol.
//! - `admission.rs`: the admit stage (workload queues, limits, rules).
//! - `extended.rs`: Parse, Bind, Describe, Execute, Close for local statements.
//! - `portals.rs`: lake query streams, portals and cursors (FETCH/MOVE/DECLARE).
//! - `commands.rs`: session commands (SET, SHOW, BEGIN, …) and admin views.
//! - `view_ddl.rs`: gateway materialized view statements.
//! - `forward.rs`: relaying to the upstream session, and its per-message fast path.
//! - `upstream.rs`: the upstream session's labels, loss and release.
//! - `rest.rs`: the session at rest: idle timeouts, maximum age, being terminated.
//! - `cached.rs`: the result cache around the run stage.
//!
//! The loop owns the raw [`Frame`]s, not a handler that can only answer with rows:
//! that lets the relay copy frames verbatim while other statements are answered here.

mod admission;
mod cached;
mod commands;
mod extended;
mod forward;
mod pipeline;
mod portals;
mod rest;
mod upstream;
mod view_ddl;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use tokio::time::Instant;

use crate::audit::Who;
use crate::auth::Identity;
use crate::auth::policy::Policy;
use crate::engine::QueryContext;
use crate::engine::params::ParamType;
use crate::error::{PgError, Severity};
use crate::observe::sessions::BoardEntry;
use crate::route::Command;
use crate::route::view_ddl::MatViewStatement;
use crate::server::Shared;
use crate::server::authenticate::ClientKind;
use crate::server::cancel::CancelHandle;
use crate::server::hygiene::{Ending, EngineGuard, SessionRules};
use crate::server::settings::{self, Settings};
use crate::wire::frame::{self, Frame, Target};
use crate::wire::messages::{
    BackendKeyData, ParameterStatus, ReadyForQuery, SecretKey, TransactionStatus,
};
use crate::wire::rows::Format;
use crate::wire::{Connection, Disconnect};
use rest::{TERMINATE_GRACE, Waited, killed_for};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tx {
    Idle,
    Block,
    Failed,
}

/// What a prepared statement will do when executed.
enum Prepared {
    Empty,
    Command(Command),
    /// Gateway view DDL (runs at Execute).
    ViewDdl(MatViewStatement),
    Lake {
        plan: LogicalPlan,
        params: Vec<ParamType>,
        schema: SchemaRef,
        explain: bool,
    },
    /// `DECLARE … CURSOR FOR <lake query>` sent through the extended protocol.
    Declare {
        cursor: CursorSpec,
        plan: LogicalPlan,
        params: Vec<ParamType>,
    },
}

#[derive(Clone)]
struct CursorSpec {
    name: String,
    binary: bool,
    hold: bool,
}

struct PreparedStatement {
    prepared: Prepared,
    /// Its text and label, when the record stage wants them.
    text: Option<Arc<pipeline::StatementText>>,
}

/// A bound portal: the statement's route with parameters applied.
struct Portal {
    statement: Arc<PreparedStatement>,
    state: PortalState,
    formats: Vec<Format>,
    /// Survives the end of its transaction (`DECLARE … WITH HOLD`).
    hold: bool,
    /// The statement's text (with bound parameters, when audited) for the record stage.
    text: Option<Arc<pipeline::StatementText>>,
}

/// How an executed portal reports progress: the extended protocol's Execute, or SQL FETCH.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ExecMode {
    Execute,
    /// FETCH (or MOVE, `discard`: the rows are skipped, not sent).
    Fetch {
        describe: bool,
        discard: bool,
    },
}

enum PortalState {
    Empty,
    Command(Command),
    ViewDdl(MatViewStatement),
    Lake(Box<LakeRun>),
    /// Executing this portal creates the cursor.
    Declare(CursorSpec, Box<LogicalPlan>),
    Done,
}

impl PortalState {
    /// The route an Execute of this portal takes, for the pipeline's record stage.
    fn route_name(&self) -> &'static str {
        match self {
            PortalState::Lake(_) | PortalState::Declare(..) => "lake",
            PortalState::ViewDdl(_) => "view",
            PortalState::Empty | PortalState::Command(_) | PortalState::Done => "session",
        }
    }
}

/// A lake query bound to a portal: its plan until first Execute, then its stream.
struct LakeRun {
    plan: Option<LogicalPlan>,
    stream: Option<SendableRecordBatchStream>,
    /// Rows of the current batch not yet sent (after a PortalSuspended).
    pending: Option<(datafusion::arrow::record_batch::RecordBatch, usize)>,
    rows: u64,
    explain: bool,
}

pub struct Session {
    conn: Connection,
    shared: Arc<Shared>,
    identity: Identity,
    settings: Settings,
    statements: HashMap<String, Arc<PreparedStatement>>,
    portals: HashMap<String, Portal>,
    tx: Tx,
    /// Open savepoints, innermost last.
    savepoints: Vec<String>,
    /// After an error in the extended protocol, messages are skipped until Sync.
    skip_until_sync: bool,
    cancel: CancelHandle,
    /// What this session's roles may read; fixed at login.
    policy: Arc<Policy>,
    /// The Redshift upstream statements go to, when this session forwards.
    forward: Option<forward::Forwarding>,
    /// What the result cache needs to know about this session's statements.
    cache: cached::CacheBooks,
    /// Which driver family connected: Redshift drivers get a Redshift-shaped session.
    client: ClientKind,
    /// `set_config` calls of the running lake statement (see `apply_setting_changes`).
    setting_changes: Arc<std::sync::Mutex<Vec<crate::engine::session_vars::SettingChange>>>,
    /// Who this session is, for the audit trail and query groups.
    who: Arc<Who>,
    /// This session's place on the session board (`SHOW CLIENTS`, the dashboard).
    board: BoardEntry,
    login_at: std::time::Instant,
    /// Rows of the statement being recorded, when a local run counted them.
    rows: Option<u64>,
    /// When the current transaction (or autocommitted statement) began.
    xact_started: Option<std::time::Instant>,
    /// Bytes received and sent already added to the gateway's totals.
    counted_traffic: (u64, u64),
    /// Why the last relay failed before or instead of an upstream answer (no
    /// upstream session, or it was lost), for the record stage.
    relay_failure: Option<PgError>,
    /// The running statement's workload slot, limits and rules.
    admission: admission::Admission,
    /// Idle timeouts and maximum age from `[server]` and the session's roles.
    rules: SessionRules,
    /// When the session last told its client it is ready (ReadyForQuery) with
    /// nothing read since: the idle timeouts run from here.
    at_rest_since: Option<Instant>,
    /// Why the gateway ended the session, when it did (for the logoff event).
    ending: Option<Ending>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.count_traffic();
        self.shared.observer.logoff(
            &self.who,
            self.login_at.elapsed(),
            self.ending.map(Ending::name),
        );
    }
}

impl Session {
    pub fn new(
        conn: Connection,
        shared: Arc<Shared>,
        identity: Identity,
        cancel: CancelHandle,
        client: ClientKind,
        who: Arc<Who>,
    ) -> Session {
        let mut settings = Settings::new(&identity.user);
        let local_addr = conn.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let board = shared.observer.board.join(who.clone(), local_addr);
        let access = shared.access_rules();
        let policy = Arc::new(Policy::resolve(&identity.roles, &access.roles));
        let rules = SessionRules::resolve(&shared.config.server, &identity.roles, &access.roles);
        settings.guard_engine(EngineGuard {
            admin: policy.admin,
            config: Arc::new(shared.config.engine.clone()),
        });
        Session {
            policy,
            conn,
            shared,
            identity,
            settings,
            statements: HashMap::new(),
            portals: HashMap::new(),
            tx: Tx::Idle,
            savepoints: Vec::new(),
            skip_until_sync: false,
            cancel,
            forward: None,
            cache: cached::CacheBooks::default(),
            setting_changes: Default::default(),
            client,
            board,
            who,
            login_at: std::time::Instant::now(),
            rows: None,
            xact_started: None,
            counted_traffic: (0, 0),
            relay_failure: None,
            admission: admission::Admission::default(),
            rules,
            at_rest_since: None,
            ending: None,
        }
    }

    /// Applies startup parameters, reports server parameters, and runs until the client leaves.
    pub async fn run(
        mut self,
        startup: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), Disconnect> {
        self.forward = forward::Forwarding::for_session(
            &self.shared,
            &self.identity.user,
            &self.identity.roles,
            startup,
        );
        // In a forwarding session the upstream receives the startup parameters too
        // and is the judge of the ones Sluice does not know (Redshift's own).
        let forwarding = self.forward.is_some();
        for (key, value) in startup {
            let applied = match key.as_str() {
                "user" | "database" | "replication" => Ok(()),
                k if k.starts_with("_pq_.") => Ok(()),
                k if settings::REDSHIFT_DRIVER_PARAMS.contains(&k) => Ok(()),
                "options" => self.apply_options(value),
                _ => self.settings.set(key, Some(value)).map(|_| ()),
            };
            if let Err(e) = applied
                && !forwarding
            {
                self.conn.send_error(&PgError {
                    severity: Severity::Fatal,
                    ..e
                });
                self.conn.shutdown().await;
                return Ok(());
            }
        }
        if forwarding {
            let encoding = startup.get("client_encoding").map(String::as_str);
            self.settings.forwarding(self.policy.write, encoding);
        }
        let mut reported: Vec<(String, String)> = self
            .settings
            .reported()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if self.client.is_redshift() {
            settings::redshift_shape(&mut reported, forwarding);
        }
        for (k, v) in reported {
            self.conn.send(&ParameterStatus::new(k, v));
        }
        self.conn.send(&BackendKeyData::new(
            self.cancel.pid,
            SecretKey::I32(self.cancel.secret),
        ));
        self.ready();
        self.conn.flush().await?;
        let result = self.serve().await;
        self.end_forwarding();
        result
    }

    /// Reads and dispatches frames until the client leaves, or until the gateway
    /// ends the session (idle timeouts, maximum age, an admin's terminate).
    async fn serve(&mut self) -> Result<(), Disconnect> {
        let kill = self.cancel.kill.clone();
        let cancel_signal = self.cancel.signal.clone();
        loop {
            if let Some(ending) = kill.ending() {
                return self.end_session(ending).await;
            }
            let deadline = self.rest_deadline();
            let read = tokio::select! {
                biased;
                _ = kill.wait() => Waited::Killed,
                _ = sleep_until(deadline.map(|(at, _)| at)) => Waited::Expired,
                r = self.conn.read_frame(|tag| frame::max_len(tag, false)) => Waited::Read(r),
            };
            let frame = match read {
                Waited::Killed => continue,
                Waited::Expired => match deadline {
                    Some((_, ending)) => return self.end_session(ending).await,
                    None => continue,
                },
                Waited::Read(Ok(Some(f))) => f,
                Waited::Read(Ok(None)) => return Ok(()),
                Waited::Read(Err(Disconnect::Protocol(e))) => {
                    self.conn.send_error(&e);
                    self.conn.shutdown().await;
                    return Err(Disconnect::Protocol(e));
                }
                Waited::Read(Err(e)) => return Err(e),
            };
            self.at_rest_since = None;
            // Terminated mid-statement: the cancel signal ends cooperative work (the
            // statement is recorded with 57014, then FATAL 57P01 at the loop's top);
            // work that does not end within the grace period is dropped.
            let dispatched = tokio::select! {
                r = self.dispatch(frame) => Some(r),
                _ = killed_for(&kill, &cancel_signal, TERMINATE_GRACE) => None,
            };
            match dispatched {
                None => return self.end_session_telling(Ending::Terminated, false).await,
                Some(Ok(true)) => {}
                Some(Ok(false)) => {
                    self.conn.shutdown().await;
                    return Ok(());
                }
                Some(Err(Disconnect::Protocol(e))) => {
                    self.conn.send_error(&e);
                    self.conn.shutdown().await;
                    return Err(Disconnect::Protocol(e));
                }
                Some(Err(e)) => return Err(e),
            }
        }
    }

    fn ready(&mut self) {
        let status = match self.tx {
            Tx::Idle => TransactionStatus::Idle,
            Tx::Block => TransactionStatus::Transaction,
            Tx::Failed => TransactionStatus::Error,
        };
        self.conn.send(&ReadyForQuery::new(status));
        self.at_rest_since = Some(Instant::now());
        self.board.status.idle(self.tx != Tx::Idle);
        self.count_traffic();
        if self.tx == Tx::Idle
            && let Some(started) = self.xact_started.take()
        {
            self.shared.observer.transaction(started.elapsed());
        }
    }

    /// Adds the bytes moved since the last call to the gateway's totals.
    fn count_traffic(&mut self) {
        let now = (self.conn.bytes_received(), self.conn.bytes_sent());
        let (r, s) = self.counted_traffic;
        self.shared
            .observer
            .traffic(now.0.saturating_sub(r), now.1.saturating_sub(s));
        self.counted_traffic = now;
    }

    fn query_context(&self) -> QueryContext {
        QueryContext {
            user: self.identity.user.clone(),
            search_path: self
                .settings
                .get("search_path")
                .unwrap_or("public")
                .to_owned(),
            time_zone: self.settings.get("TimeZone").unwrap_or("UTC").to_owned(),
            backend_pid: self.cancel.pid,
            policy: self.policy.clone(),
            remote: self.forward.as_ref().map(|f| f.remote.clone()),
            vars: Arc::new(crate::engine::session_vars::SessionVars {
                values: self.settings.all_lowercase(),
                changes: self.setting_changes.clone(),
                engine_settable: self
                    .settings
                    .engine_guard()
                    .filter(|g| !g.admin)
                    .map(|g| g.config.clone()),
            }),
        }
    }

    /// Handles one message; `Ok(false)` ends the session (Terminate).
    async fn dispatch(&mut self, frame: Frame) -> Result<bool, Disconnect> {
        // After an extended-protocol error everything up to Sync is discarded, as
        // PostgreSQL does (Terminate still ends the session).
        if self.skip_until_sync && !matches!(frame.tag, b'S' | b'X') {
            return Ok(true);
        }
        // The two messages that carry statement text go through the pipeline.
        match frame.tag {
            b'Q' => {
                self.query_message(&frame).await?;
                return Ok(true);
            }
            b'P' => {
                // Boxed so the forwarding path's futures stay small (they are
                // built for every message a client sends).
                Box::pin(self.parse_message(&frame)).await?;
                return Ok(true);
            }
            _ => {}
        }
        if self.shared.results.is_none() {
            return self.dispatch_frame(frame).await;
        }
        match frame.tag {
            b'B' if self.cached_bind(&frame) => return Ok(true),
            b'D' | b'C' if self.cached_portal_message(&frame).await? => return Ok(true),
            b'E' if self.cached_execute(&frame).await? => return Ok(true),
            _ => {}
        }
        match frame.tag {
            b'E' => self.cache.executed_since_sync = true,
            b'D' => {
                self.cache.last_described_portal = frame::decode_describe(&frame.body)
                    .ok()
                    .filter(|d| d.target == Target::Portal)
                    .map(|d| d.name);
            }
            _ => {}
        }
        let sync = frame.tag == b'S';
        let result = self.dispatch_frame(frame).await;
        if sync {
            self.cache.executed_since_sync = false;
            self.invalidate_at_transaction_end();
            self.end_local_portals();
        }
        result
    }

    /// Handles one message other than Query and Parse, without the result cache:
    /// relayed when it names an upstream statement or portal, else answered here.
    async fn dispatch_frame(&mut self, frame: Frame) -> Result<bool, Disconnect> {
        if self.forward.is_some() && self.forward_dispatch(&frame).await? {
            return Ok(true);
        }
        match frame.tag {
            b'S' => {
                self.skip_until_sync = false;
                if self.tx == Tx::Idle {
                    // The implicit transaction ends: its portals go with it.
                    self.portals.retain(|_, p| p.hold);
                }
                self.ready();
                self.conn.flush().await?;
                self.conn.shrink_idle();
            }
            b'H' => self.conn.flush().await?,
            b'X' => return Ok(false),
            // Leftover COPY traffic after a failed COPY is ignored, as PostgreSQL does.
            b'd' | b'c' | b'f' => {}
            b'B' | b'D' | b'E' | b'C' => {
                let result = match frame.tag {
                    // Local work is boxed so the forwarding path's futures stay
                    // small (they are built for every message a client sends).
                    b'B' => self.bind(&frame),
                    b'D' => self.describe(&frame),
                    b'E' => Box::pin(self.execute(&frame)).await,
                    _ => self.close(&frame),
                };
                if let Err(e) = result {
                    if e.severity == Severity::Fatal {
                        return Err(Disconnect::Protocol(e));
                    }
                    self.fail_pipeline(&e).await?;
                } else {
                    self.conn.flush_if_full().await?;
                }
            }
            other => {
                return Err(Disconnect::Protocol(PgError::protocol(format!(
                    "invalid frontend message type {other}"
                ))));
            }
        }
        Ok(true)
    }

    /// Reports a statement error and marks an open transaction block as failed.
    fn fail(&mut self, e: &PgError) {
        tracing::debug!(code = e.code.0, message = %e.message, "statement failed");
        self.conn.send_error(e);
        if self.tx == Tx::Block {
            self.tx = Tx::Failed;
            // A failed lake statement fails the upstream's transaction block too.
            self.abort_upstream_transaction();
        } else if self.tx == Tx::Idle {
            // …and the upstream's implicit transaction of the same pipeline.
            self.void_upstream_pipeline();
        }
    }

    /// An extended-protocol message failed: the error goes out at once, as
    /// PostgreSQL sends it, because a client that sent Flush (or nothing) after the
    /// message is waiting for it and any Flush it sends next is skipped with the rest
    /// of the pipeline, up to Sync.
    async fn fail_pipeline(&mut self, e: &PgError) -> Result<(), Disconnect> {
        self.fail(e);
        self.skip_until_sync = true;
        Ok(self.conn.flush().await?)
    }
}

/// Runs `work` unless a CancelRequest for this session arrives first.
async fn cancellable<T>(
    signal: Arc<tokio::sync::Notify>,
    work: impl std::future::Future<Output = Result<T, PgError>>,
) -> Result<T, PgError> {
    let canceled = signal.notified();
    tokio::select! {
        biased;
        _ = canceled => Err(PgError::canceled()),
        r = work => r,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
