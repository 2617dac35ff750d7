//! One authenticated client session: reads frontend messages one at a time and
//! dispatches each on its own.
//!
//! The loop owns the raw [`Frame`]s, not a handler that can only answer with rows:
//! every statement (and every prepared statement, at Parse) gets a [`Route`], and
//! Bind/Describe/Execute follow the route their statement chose. A later route can
//! therefore relay frames verbatim to an upstream while others are answered here.

mod admin;
mod cached;
mod forward;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::Statement;
use futures::StreamExt;
use pgwire::messages::data::{NoData, ParameterDescription};
use pgwire::messages::extendedquery::{
    BindComplete, CloseComplete, ParseComplete, PortalSuspended,
};
use pgwire::messages::response::{
    CommandComplete, EmptyQueryResponse, ReadyForQuery, TransactionStatus,
};
use pgwire::messages::startup::{BackendKeyData, ParameterStatus, SecretKey};
use tokio::time::Instant;

use crate::auth::policy::Policy;
use crate::auth::{AuthMethod, Identity};
use crate::server::authenticate::ClientKind;
use crate::server::settings;

/// `SHOW sluice.identity`: who the session is, as Sluice resolved it.
const IDENTITY: &str = "sluice.identity";
/// `SHOW sluice.lake`: mounted Glue databases and the last catalog refresh.
const LAKE: &str = "sluice.lake";
/// `SHOW sluice.result_cache`: the result cache's size and hit counts.
const CACHE: &str = "sluice.result_cache";
/// `SHOW sluice.materialized_views`: gateway views, their size and refreshes.
const MATVIEWS: &str = "sluice.materialized_views";
use crate::engine::QueryContext;
use crate::engine::encode::{self, BatchEncoder, EncodeOptions, Format};
use crate::engine::params::{self, ParamType};
use crate::route::{self, Command, Route};
use crate::server::Shared;
use crate::server::cancel::CancelHandle;
use crate::server::connection::{Connection, Disconnect};
use crate::server::error::{PgError, Severity, SqlState};
use crate::server::frame::{self, Frame, Target};
use crate::server::settings::Settings;

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
}

/// A bound portal: the statement's route with parameters applied.
struct Portal {
    statement: Arc<PreparedStatement>,
    state: PortalState,
    formats: Vec<Format>,
    /// Survives the end of its transaction (`DECLARE … WITH HOLD`).
    hold: bool,
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
    Lake(Box<LakeRun>),
    /// Executing this portal creates the cursor.
    Declare(CursorSpec, Box<LogicalPlan>),
    Done,
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
}

impl Session {
    pub fn new(
        conn: Connection,
        shared: Arc<Shared>,
        identity: Identity,
        cancel: CancelHandle,
        client: ClientKind,
    ) -> Session {
        let settings = Settings::new(&identity.user);
        let policy = Arc::new(Policy::resolve(
            &identity.roles,
            &shared.access_rules().roles,
        ));
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

    /// Reads and dispatches frames until the client leaves.
    async fn serve(&mut self) -> Result<(), Disconnect> {
        loop {
            let frame = match self.conn.read_frame(|tag| frame::max_len(tag, false)).await {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(Disconnect::Protocol(e)) => {
                    self.conn.send_error(&e);
                    self.conn.shutdown().await;
                    return Err(Disconnect::Protocol(e));
                }
                Err(e) => return Err(e),
            };
            match self.dispatch(frame).await {
                Ok(true) => {}
                Ok(false) => {
                    self.conn.shutdown().await;
                    return Ok(());
                }
                Err(Disconnect::Protocol(e)) => {
                    self.conn.send_error(&e);
                    self.conn.shutdown().await;
                    return Err(Disconnect::Protocol(e));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `options=-c name=value …` from the startup packet.
    fn apply_options(&mut self, options: &str) -> Result<(), PgError> {
        let mut words = options.split_whitespace();
        while let Some(w) = words.next() {
            let assignment = if w == "-c" {
                words.next().unwrap_or("")
            } else if let Some(rest) = w.strip_prefix("-c") {
                rest
            } else if let Some(rest) = w.strip_prefix("--") {
                rest
            } else {
                return Err(PgError::new(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("unsupported startup option \"{w}\""),
                ));
            };
            let (name, value) = assignment.split_once('=').ok_or_else(|| {
                PgError::new(
                    SqlState::SYNTAX_ERROR,
                    format!("invalid startup option \"{assignment}\""),
                )
            })?;
            self.settings.set(&name.replace('-', "_"), Some(value))?;
        }
        Ok(())
    }

    fn ready(&mut self) {
        let status = match self.tx {
            Tx::Idle => TransactionStatus::Idle,
            Tx::Block => TransactionStatus::Transaction,
            Tx::Failed => TransactionStatus::Error,
        };
        self.conn.send(&ReadyForQuery::new(status));
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
            }),
        }
    }

    /// Applies what `set_config` did during a lake statement, as `SET` would (with
    /// ParameterStatus for reported settings). A value the setting refuses is
    /// reported as a WARNING: the statement itself already succeeded.
    fn apply_setting_changes(&mut self) {
        let changes: Vec<_> = match self.setting_changes.lock() {
            Ok(mut c) if !c.is_empty() => c.drain(..).collect(),
            _ => return,
        };
        for (name, value, _local) in changes {
            match self.settings.set(&name, value.as_deref()) {
                Ok(Some((n, v))) => self.conn.send(&ParameterStatus::new(n.to_string(), v)),
                Ok(None) => {}
                Err(e) => self.notice_with(
                    SqlState::WARNING,
                    "WARNING",
                    &format!("set_config({name}) was not applied: {}", e.message),
                ),
            }
        }
    }

    /// Handles one message; `Ok(false)` ends the session (Terminate).
    async fn dispatch(&mut self, frame: Frame) -> Result<bool, Disconnect> {
        // After an extended-protocol error everything up to Sync is discarded, as
        // PostgreSQL does (Terminate still ends the session).
        if self.skip_until_sync && !matches!(frame.tag, b'S' | b'X') {
            return Ok(true);
        }
        if self.shared.results.is_none() {
            return self.dispatch_frame(frame).await;
        }
        match frame.tag {
            b'Q' => {
                self.cached_query_message(&frame).await?;
                return Ok(true);
            }
            b'P' => self.note_parse(&frame),
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

    /// Handles one message without the result cache.
    async fn dispatch_frame(&mut self, frame: Frame) -> Result<bool, Disconnect> {
        if frame.tag == b'Q' {
            self.query_message(&frame).await?;
            return Ok(true);
        }
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
            b'P' | b'B' | b'D' | b'E' | b'C' => {
                let result = match frame.tag {
                    // Local work is boxed so the forwarding path's futures stay
                    // small (they are built for every message a client sends).
                    b'P' => Box::pin(self.parse(&frame)).await,
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

    /// A simple query message: forwarded, or answered here, through ReadyForQuery.
    async fn query_message(&mut self, frame: &Frame) -> Result<(), Disconnect> {
        if self.forward.is_some() && self.forward_dispatch(frame).await? {
            return Ok(());
        }
        match frame::decode_query(&frame.body) {
            Ok(sql) => Box::pin(self.simple_query(sql)).await?,
            Err(e) if e.severity == Severity::Fatal => return Err(Disconnect::Protocol(e)),
            // e.g. invalid UTF-8: the statement fails, the session carries on.
            Err(e) => self.fail(&e),
        }
        self.ready();
        self.conn.flush().await?;
        self.conn.shrink_idle();
        Ok(())
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

    async fn simple_query(&mut self, sql: &str) -> Result<(), Disconnect> {
        if let Some(mv) = self.matview_statement(sql) {
            let result = match mv {
                Ok(stmt) => {
                    self.run_command(&Command::MatView(stmt), Format::Text, true)
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                self.fail(&e);
            }
            return Ok(());
        }
        if let Some(motion) = route::cursor_motion::parse(sql) {
            let result = match motion {
                Ok(cmd) => self.simple_route(Route::Session(cmd)).await?,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                self.fail(&e);
            }
            return Ok(());
        }
        let statements = match self.shared.engine.parse(sql) {
            Ok(s) => s,
            Err(e) => {
                self.fail(&e);
                return Ok(());
            }
        };
        if statements.is_empty() {
            self.conn.send(&EmptyQueryResponse::new());
            return Ok(());
        }
        for stmt in statements {
            if let Err(e) = self.simple_statement(stmt).await? {
                self.fail(&e);
                break;
            }
        }
        Ok(())
    }

    /// Runs one statement of a simple query. The outer error ends the session; the
    /// inner one is reported to the client.
    async fn simple_statement(
        &mut self,
        stmt: Statement,
    ) -> Result<Result<(), PgError>, Disconnect> {
        match route::classify(stmt) {
            Ok(route) => self.simple_route(route).await,
            Err(e) => Ok(Err(e)),
        }
    }

    /// Runs one routed statement of a simple query.
    async fn simple_route(&mut self, route: Route) -> Result<Result<(), PgError>, Disconnect> {
        if let Err(e) = self.check_failed_tx(&route) {
            return Ok(Err(e));
        }
        match route {
            Route::Session(Command::Fetch {
                cursor,
                count,
                discard,
            }) => self.fetch(&cursor, count, None, !discard, discard).await,
            Route::Session(cmd) => Ok(self.run_command(&cmd, Format::Text, true).await),
            Route::DeclareCursor {
                name,
                binary,
                hold,
                query,
            } => Ok(self.declare_cursor(name, binary, hold, &query).await),
            Route::Lake(stmt) => {
                let plan = match self.plan(&stmt).await {
                    Ok(p) => p,
                    Err(e) => return Ok(Err(e)),
                };
                let explain = matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_));
                let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
                let formats = vec![Format::Text; schema.fields().len()];
                let stream = match self.start(plan).await {
                    Ok(s) => s,
                    Err(e) => return Ok(Err(e)),
                };
                encode::row_description(&mut self.conn.out, &schema, &formats);
                let mut run = LakeRun {
                    plan: None,
                    stream: Some(stream),
                    pending: None,
                    rows: 0,
                    explain,
                };
                match self.pump(&mut run, &formats, 0, false).await? {
                    Ok(_) => {
                        self.complete_query(&run);
                        Ok(Ok(()))
                    }
                    Err(e) => Ok(Err(e)),
                }
            }
        }
    }

    async fn declare_cursor(
        &mut self,
        name: String,
        binary: bool,
        hold: bool,
        query: &Statement,
    ) -> Result<(), PgError> {
        let plan = self.plan(query).await?;
        self.open_cursor(CursorSpec { name, binary, hold }, plan)
    }

    /// Creates a named cursor (a portal) over a planned lake query.
    fn open_cursor(&mut self, spec: CursorSpec, plan: LogicalPlan) -> Result<(), PgError> {
        if self.tx == Tx::Idle && !spec.hold {
            return Err(PgError::new(
                SqlState::NO_ACTIVE_SQL_TRANSACTION,
                "DECLARE CURSOR can only be used in transaction blocks",
            ));
        }
        if self.portals.contains_key(&spec.name) {
            return Err(PgError::new(
                SqlState::DUPLICATE_CURSOR,
                format!("cursor \"{}\" already exists", spec.name),
            ));
        }
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let format = if spec.binary {
            Format::Binary
        } else {
            Format::Text
        };
        let formats = vec![format; schema.fields().len()];
        let run = LakeRun {
            plan: Some(plan.clone()),
            stream: None,
            pending: None,
            rows: 0,
            explain: false,
        };
        let statement = Arc::new(PreparedStatement {
            prepared: Prepared::Lake {
                plan,
                params: vec![],
                schema,
                explain: false,
            },
        });
        self.portals.insert(
            spec.name,
            Portal {
                statement,
                state: PortalState::Lake(Box::new(run)),
                formats,
                hold: spec.hold,
            },
        );
        self.conn
            .send(&CommandComplete::new("DECLARE CURSOR".to_string()));
        Ok(())
    }

    /// The result schema of an open cursor, for FETCH's RowDescription.
    fn cursor_schema(&self, cursor: &str) -> Option<SchemaRef> {
        match &self.portals.get(cursor)?.statement.prepared {
            Prepared::Lake { schema, .. } => Some(schema.clone()),
            _ => None,
        }
    }

    /// FETCH from a cursor. `formats` (from the FETCH's own Bind in the extended
    /// protocol) override the cursor's; `describe` sends the RowDescription first
    /// (simple protocol only: in the extended protocol Describe does that).
    async fn fetch(
        &mut self,
        cursor: &str,
        count: Option<u64>,
        formats: Option<Vec<Format>>,
        describe: bool,
        discard: bool,
    ) -> Result<Result<(), PgError>, Disconnect> {
        let Some(mut portal) = self.portals.remove(cursor) else {
            return Ok(Err(PgError::new(
                SqlState::INVALID_CURSOR_NAME,
                format!("cursor \"{cursor}\" does not exist"),
            )));
        };
        let saved = formats.map(|f| std::mem::replace(&mut portal.formats, f));
        let max_rows = count.map(|c| c.min(i32::MAX as u64) as i32).unwrap_or(0);
        let result = self
            .execute_portal(&mut portal, max_rows, ExecMode::Fetch { describe, discard })
            .await;
        if let Some(f) = saved {
            portal.formats = f;
        }
        self.portals.insert(cursor.to_owned(), portal);
        result
    }

    /// Plans a lake statement; a cancel request interrupts planning too. The future
    /// owns what it needs (`use<>`): the session is not `Sync`, so it must not be
    /// borrowed across the await.
    fn plan(
        &self,
        stmt: &Statement,
    ) -> impl std::future::Future<Output = Result<LogicalPlan, PgError>> + Send + use<> {
        let engine = self.shared.engine.clone();
        let qc = self.query_context();
        let stmt = stmt.clone();
        let signal = self.cancel.signal.clone();
        async move { cancellable(signal, async move { engine.plan(&stmt, &qc).await }).await }
    }

    /// Starts a planned query (physical planning may list many files: cancellable).
    fn start(
        &self,
        plan: LogicalPlan,
    ) -> impl std::future::Future<Output = Result<SendableRecordBatchStream, PgError>> + Send + use<>
    {
        let engine = self.shared.engine.clone();
        let qc = self.query_context();
        let signal = self.cancel.signal.clone();
        async move { cancellable(signal, async move { engine.execute(plan, &qc).await }).await }
    }

    fn complete_query(&mut self, run: &LakeRun) {
        self.apply_setting_changes();
        let tag = if run.explain {
            "EXPLAIN".to_string()
        } else {
            format!("SELECT {}", run.rows)
        };
        self.conn.send(&CommandComplete::new(tag));
    }

    fn check_failed_tx(&self, route: &Route) -> Result<(), PgError> {
        if self.tx == Tx::Failed
            && !matches!(
                route,
                Route::Session(Command::Commit | Command::Rollback | Command::RollbackTo(_))
            )
        {
            return Err(PgError::new(
                SqlState::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        Ok(())
    }

    /// Streams rows from a running query to the client. Stops after `max_rows` rows
    /// when that is non-zero; returns whether the query finished.
    async fn pump(
        &mut self,
        run: &mut LakeRun,
        formats: &[Format],
        max_rows: u64,
        discard: bool,
    ) -> Result<Result<bool, PgError>, Disconnect> {
        let signal = self.cancel.signal.clone();
        let canceled = signal.notified();
        tokio::pin!(canceled);
        let deadline = self.settings.statement_timeout.map(|d| Instant::now() + d);
        let opts = EncodeOptions {
            time_zone: self.settings.time_zone,
        };
        let mut sent_now: u64 = 0;
        loop {
            let (batch, offset) = match run.pending.take() {
                Some(p) => p,
                None => {
                    let Some(stream) = run.stream.as_mut() else {
                        return Ok(Ok(true));
                    };
                    let next = tokio::select! {
                        biased;
                        _ = &mut canceled => return Ok(Err(PgError::canceled())),
                        _ = sleep_until(deadline) => return Ok(Err(PgError::new(
                            SqlState::QUERY_CANCELED,
                            "canceling statement due to statement timeout",
                        ))),
                        next = stream.next() => next,
                    };
                    match next {
                        None => {
                            run.stream = None;
                            return Ok(Ok(true));
                        }
                        Some(Err(e)) => {
                            run.stream = None;
                            return Ok(Err(PgError::from(e)));
                        }
                        Some(Ok(b)) => (b, 0),
                    }
                }
            };
            let prepared = match encode::Prepared::new(&batch) {
                Ok(p) => p,
                Err(e) => {
                    return Ok(Err(PgError::new(
                        SqlState::INTERNAL_ERROR,
                        format!("cannot encode result: {e}"),
                    )));
                }
            };
            let n = batch.num_rows();
            let mut row = offset;
            while row < n {
                {
                    let encoder = match BatchEncoder::new(&prepared, n, formats) {
                        Ok(e) => e,
                        Err(e) => {
                            return Ok(Err(PgError::new(
                                SqlState::INTERNAL_ERROR,
                                format!("cannot encode result: {e}"),
                            )));
                        }
                    };
                    while row < n
                        && self.conn.out.len() < crate::server::connection::FLUSH_THRESHOLD
                    {
                        if max_rows > 0 && sent_now == max_rows {
                            break;
                        }
                        if let Some(limit) = self.policy.row_limit
                            && run.rows >= limit
                        {
                            return Ok(Err(PgError::new(
                                SqlState("54000"),
                                format!("the result has more than {limit} rows, the row limit of your Sluice roles"),
                            )
                            .with_hint("add a filter or LIMIT, or ask for a role with a higher row_limit")));
                        }
                        if !discard {
                            encoder.write_row(row, &mut self.conn.out, &opts);
                        }
                        row += 1;
                        sent_now += 1;
                        run.rows += 1;
                    }
                }
                if max_rows > 0 && sent_now == max_rows {
                    if row < n {
                        run.pending = Some((batch, row));
                    }
                    // Suspended unless the stream happens to be exhausted; we only know
                    // after asking, and PostgreSQL also reports PortalSuspended here.
                    return Ok(Ok(false));
                }
                self.conn.flush_if_full().await?;
            }
        }
    }

    async fn run_command(
        &mut self,
        cmd: &Command,
        format: Format,
        describe: bool,
    ) -> Result<(), PgError> {
        match cmd {
            Command::Set { name, value } => {
                if let Some((n, v)) = self.settings.set(name, value.as_deref())? {
                    self.conn.send(&ParameterStatus::new(n.to_string(), v));
                }
            }
            Command::SetTransaction => {}
            Command::Reset(name) => {
                for (n, v) in self.settings.reset(name.as_deref())? {
                    self.conn.send(&ParameterStatus::new(n.to_string(), v));
                }
            }
            Command::Show(name) => {
                self.show(name, format, describe)?;
                return Ok(());
            }
            Command::RefreshLake(database) => {
                let Some(glue) = self.shared.engine.glue() else {
                    return Err(PgError::new(
                        SqlState("55000"),
                        "there is no Glue catalog to refresh ([lake.glue] is not configured)",
                    ));
                };
                // Naming a database needs a grant in it (the reply and its errors
                // would otherwise tell who may not see it what it contains); the
                // whole catalog, which clears every cache, needs an admin role.
                match database {
                    Some(db) if !self.policy.may_read_in(&db.to_lowercase()) => {
                        return Err(PgError::new(
                            SqlState::INSUFFICIENT_PRIVILEGE,
                            format!("permission denied for lake database \"{db}\""),
                        ));
                    }
                    None if !self.policy.admin => {
                        return Err(PgError::new(
                            SqlState::INSUFFICIENT_PRIVILEGE,
                            "permission denied: refreshing the whole lake catalog needs a Sluice role with admin = true",
                        )
                        .with_hint("refresh one database you may read: CALL sluice.refresh_lake('database')"));
                    }
                    _ => {}
                }
                glue.refresh(database.as_deref()).await?;
                let visible = self.lake_rows();
                let tables: usize = visible
                    .iter()
                    .filter_map(|r| r[2].parse::<usize>().ok())
                    .sum();
                self.notice_with(
                    SqlState("00000"),
                    "NOTICE",
                    &format!(
                        "lake catalog refreshed: {} database(s), {tables} table(s) visible to you",
                        visible.len()
                    ),
                );
            }
            Command::MatView(stmt) => return self.run_matview(stmt).await,
            Command::Discard => {
                if self.tx != Tx::Idle {
                    return Err(PgError::new(
                        SqlState::ACTIVE_SQL_TRANSACTION,
                        "DISCARD ALL cannot run inside a transaction block",
                    ));
                }
                self.statements.clear();
                self.portals.clear();
                for (n, v) in self.settings.reset(None)? {
                    self.conn.send(&ParameterStatus::new(n.to_string(), v));
                }
            }
            Command::Begin => {
                if self.tx != Tx::Idle {
                    self.notice(
                        SqlState::ACTIVE_SQL_TRANSACTION,
                        "there is already a transaction in progress",
                    );
                } else {
                    self.tx = Tx::Block;
                }
            }
            Command::Commit => {
                let tag = match self.tx {
                    Tx::Idle => {
                        self.notice(
                            SqlState::NO_ACTIVE_SQL_TRANSACTION,
                            "there is no transaction in progress",
                        );
                        "COMMIT"
                    }
                    Tx::Block => "COMMIT",
                    Tx::Failed => "ROLLBACK",
                };
                self.tx = Tx::Idle;
                self.savepoints.clear();
                self.portals.retain(|_, p| p.hold);
                self.conn.send(&CommandComplete::new(tag.to_string()));
                return Ok(());
            }
            Command::Rollback => {
                if self.tx == Tx::Idle {
                    self.notice(
                        SqlState::NO_ACTIVE_SQL_TRANSACTION,
                        "there is no transaction in progress",
                    );
                }
                self.tx = Tx::Idle;
                self.savepoints.clear();
                self.portals.retain(|_, p| p.hold);
            }
            Command::CloseCursor(name) => match name {
                None => self.portals.clear(),
                Some(n) => {
                    if self.portals.remove(n).is_none() {
                        return Err(PgError::new(
                            SqlState::INVALID_CURSOR_NAME,
                            format!("cursor \"{n}\" does not exist"),
                        ));
                    }
                }
            },
            Command::Fetch { .. } => {
                // FETCH runs through the portal machinery (see simple_statement); as a
                // prepared statement it is not supported.
                return Err(PgError::new(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "FETCH cannot be prepared; send it as a simple query",
                ));
            }
            Command::Savepoint(name) => {
                if self.tx == Tx::Idle {
                    return Err(PgError::new(
                        SqlState::NO_ACTIVE_SQL_TRANSACTION,
                        "SAVEPOINT can only be used in transaction blocks",
                    ));
                }
                self.savepoints.push(name.clone());
            }
            Command::Release(name) | Command::RollbackTo(name) => {
                if self.tx == Tx::Idle {
                    return Err(PgError::new(
                        SqlState::NO_ACTIVE_SQL_TRANSACTION,
                        format!("{} can only be used in transaction blocks", cmd.tag()),
                    ));
                }
                let Some(pos) = self.savepoints.iter().rposition(|s| s == name) else {
                    return Err(PgError::new(
                        SqlState("3B001"),
                        format!("savepoint \"{name}\" does not exist"),
                    ));
                };
                if matches!(cmd, Command::Release(_)) {
                    self.savepoints.truncate(pos);
                } else {
                    // The savepoint survives ROLLBACK TO; the transaction is usable again.
                    self.savepoints.truncate(pos + 1);
                    self.tx = Tx::Block;
                }
            }
            Command::Deallocate(name) => match name {
                None => self.statements.clear(),
                Some(n) => {
                    if self.statements.remove(n).is_none() {
                        return Err(PgError::new(
                            SqlState::INVALID_SQL_STATEMENT_NAME,
                            format!("prepared statement \"{n}\" does not exist"),
                        ));
                    }
                }
            },
        }
        self.conn.send(&CommandComplete::new(cmd.tag().to_string()));
        Ok(())
    }

    /// `SHOW sluice.lake`: the Glue databases this session's roles may see.
    fn lake_rows(&self) -> Vec<Vec<String>> {
        let Some(glue) = self.shared.engine.glue() else {
            return Vec::new();
        };
        let (age, error) = match glue.last_refresh() {
            Some((age, result)) => (age.as_secs().to_string(), result.err().unwrap_or_default()),
            None => (String::new(), String::new()),
        };
        // Refresh errors may name other databases or the gateway's AWS identity.
        let error = if self.policy.admin || error.is_empty() {
            error
        } else {
            "failed (details for admins and in the log)".to_owned()
        };
        glue.mounted()
            .into_iter()
            .filter(|(db, _)| self.policy.may_read_in(db))
            .map(|(db, _)| {
                let tables = self
                    .shared
                    .engine
                    .lake_table_names(&db)
                    .iter()
                    .filter(|t| self.policy.can_read(&db, t))
                    .count();
                let stats = glue.shared().stats(&db);
                vec![
                    db,
                    "glue".into(),
                    tables.to_string(),
                    age.clone(),
                    error.clone(),
                    stats.glue_requests.to_string(),
                    stats.partitions_fetched.to_string(),
                    stats.listings.to_string(),
                ]
            })
            .collect()
    }

    fn notice(&mut self, code: SqlState, message: &str) {
        self.notice_with(code, "WARNING", message);
    }

    fn notice_with(&mut self, code: SqlState, severity: &str, message: &str) {
        frame::put_message(&mut self.conn.out, b'N', |b| {
            for (tag, value) in [
                (b'S', severity),
                (b'V', severity),
                (b'C', code.0),
                (b'M', message),
            ] {
                b.extend_from_slice(&[tag]);
                b.extend_from_slice(value.as_bytes());
                b.extend_from_slice(&[0]);
            }
            b.extend_from_slice(&[0]);
        });
    }

    fn show_schema(name: &str) -> SchemaRef {
        if let Some(columns) = forward::admin_columns(name).or_else(|| admin::columns(name)) {
            let text = |n: &&str| Field::new(*n, DataType::Utf8, true);
            Arc::new(Schema::new(columns.iter().map(text).collect::<Vec<_>>()))
        } else if name == IDENTITY {
            let text = |n: &str| Field::new(n, DataType::Utf8, false);
            Arc::new(Schema::new(vec![
                text("user"),
                text("method"),
                text("issuer"),
                text("subject"),
                text("group_count"),
                text("groups"),
                text("roles"),
            ]))
        } else if name == LAKE {
            let text = |n: &str| Field::new(n, DataType::Utf8, true);
            Arc::new(Schema::new(vec![
                text("database"),
                text("source"),
                text("tables"),
                text("refreshed_secs_ago"),
                text("refresh_error"),
                text("glue_requests"),
                text("partitions_fetched"),
                text("listings"),
            ]))
        } else if name == "all" {
            Arc::new(Schema::new(vec![
                Field::new("name", DataType::Utf8, false),
                Field::new("setting", DataType::Utf8, false),
                Field::new("description", DataType::Utf8, false),
            ]))
        } else {
            Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, true)]))
        }
    }

    fn show(&mut self, name: &str, format: Format, describe: bool) -> Result<(), PgError> {
        let rows: Vec<Vec<String>> = if forward::admin_columns(name).is_some() {
            if !self.policy.admin {
                return Err(PgError::new(
                    SqlState::INSUFFICIENT_PRIVILEGE,
                    format!("permission denied: SHOW {name} needs a Sluice role with admin = true"),
                ));
            }
            forward::admin_rows(&self.shared, name)
        } else if name == IDENTITY {
            let id = &self.identity;
            let (method, issuer, subject) = match &id.method {
                AuthMethod::Local => ("local", String::new(), String::new()),
                AuthMethod::Token { issuer, subject } => ("token", issuer.clone(), subject.clone()),
                AuthMethod::Ldap { dn } => ("ldap", String::new(), dn.clone()),
            };
            vec![vec![
                id.user.clone(),
                method.to_string(),
                issuer,
                subject,
                id.groups.len().to_string(),
                id.groups.join(", "),
                id.roles.join(", "),
            ]]
        } else if name == LAKE {
            self.lake_rows()
        } else if name == CACHE {
            self.cache_rows()
        } else if name == MATVIEWS {
            self.matview_rows()
        } else if name == "all" {
            let mut names = vec![
                "application_name",
                "client_encoding",
                "DateStyle",
                "extra_float_digits",
                "IntervalStyle",
                "search_path",
                "server_version",
                "standard_conforming_strings",
                "statement_timeout",
                "TimeZone",
            ];
            names.sort_by_key(|n| n.to_lowercase());
            names
                .into_iter()
                .map(|n| {
                    vec![
                        n.to_string(),
                        self.settings.get(n).unwrap_or("").to_string(),
                        String::new(),
                    ]
                })
                .collect()
        } else {
            let value = self.settings.get(name).ok_or_else(|| {
                PgError::new(
                    SqlState::UNDEFINED_OBJECT,
                    format!("unrecognized configuration parameter \"{name}\""),
                )
            })?;
            vec![vec![value.to_string()]]
        };
        let schema = Self::show_schema(name);
        let formats = vec![format; schema.fields().len()];
        // SHOW's values are text; text's binary form is the same bytes.
        if describe {
            encode::row_description(&mut self.conn.out, &schema, &formats);
        }
        for row in &rows {
            frame::put_message(&mut self.conn.out, b'D', |b| {
                b.extend_from_slice(&(row.len() as i16).to_be_bytes());
                for v in row {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
            });
        }
        self.conn.send(&CommandComplete::new("SHOW".to_string()));
        Ok(())
    }

    // ---- extended protocol ----

    async fn parse(&mut self, frame: &Frame) -> Result<(), PgError> {
        let msg = frame::decode_parse(&frame.body)?;
        if !msg.name.is_empty() && self.statements.contains_key(&msg.name) {
            return Err(PgError::new(
                SqlState::DUPLICATE_PREPARED_STATEMENT,
                format!("prepared statement \"{}\" already exists", msg.name),
            ));
        }
        // Statements the parser does not know: gateway view DDL, FETCH/MOVE forms.
        let command = match self.matview_statement(&msg.query) {
            Some(mv) => Some(Command::MatView(mv?)),
            None => match route::cursor_motion::parse(&msg.query) {
                Some(motion) => {
                    let route = Route::Session(motion?);
                    self.check_failed_tx(&route)?;
                    let Route::Session(cmd) = route else {
                        unreachable!("built above")
                    };
                    Some(cmd)
                }
                None => None,
            },
        };
        if let Some(cmd) = command {
            self.statements.insert(
                msg.name,
                Arc::new(PreparedStatement {
                    prepared: Prepared::Command(cmd),
                }),
            );
            self.conn.send(&ParseComplete::new());
            return Ok(());
        }
        let mut statements = self.shared.engine.parse(&msg.query)?;
        let prepared = match statements.len() {
            0 => Prepared::Empty,
            1 => {
                let route = route::classify(statements.remove(0))?;
                self.check_failed_tx(&route)?;
                match route {
                    Route::Session(cmd) => Prepared::Command(cmd),
                    Route::DeclareCursor {
                        name,
                        binary,
                        hold,
                        query,
                    } => {
                        let plan = self.plan(&query).await?;
                        let params = params::param_types(&plan, &msg.param_types)?;
                        Prepared::Declare {
                            cursor: CursorSpec { name, binary, hold },
                            plan,
                            params,
                        }
                    }
                    Route::Lake(stmt) => {
                        let plan = self.plan(&stmt).await?;
                        let known = crate::engine::pg_compat::known_query(&msg.query);
                        let declared = match known {
                            Some(k) if msg.param_types.is_empty() => k.param_oids,
                            _ => &msg.param_types[..],
                        };
                        let params = params::param_types(&plan, declared)?;
                        let mut schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
                        if let Some(k) = known {
                            schema = crate::engine::types::with_column_oids(&schema, k.column_oids);
                        }
                        let explain =
                            matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_));
                        Prepared::Lake {
                            plan,
                            params,
                            schema,
                            explain,
                        }
                    }
                }
            }
            _ => {
                return Err(PgError::new(
                    SqlState::SYNTAX_ERROR,
                    "cannot insert multiple commands into a prepared statement",
                ));
            }
        };
        self.statements
            .insert(msg.name, Arc::new(PreparedStatement { prepared }));
        self.conn.send(&ParseComplete::new());
        Ok(())
    }

    fn bind(&mut self, frame: &Frame) -> Result<(), PgError> {
        let msg = frame::decode_bind(&frame.body)?;
        let statement = self
            .statements
            .get(&msg.statement)
            .cloned()
            .ok_or_else(|| {
                PgError::new(
                    SqlState::INVALID_SQL_STATEMENT_NAME,
                    format!("prepared statement \"{}\" does not exist", msg.statement),
                )
            })?;
        if !msg.portal.is_empty() && self.portals.contains_key(&msg.portal) {
            return Err(PgError::new(
                SqlState::DUPLICATE_CURSOR,
                format!("portal \"{}\" already exists", msg.portal),
            ));
        }
        if self.tx == Tx::Failed
            && !matches!(
                statement.prepared,
                Prepared::Command(Command::Commit | Command::Rollback | Command::RollbackTo(_))
            )
        {
            return Err(PgError::new(
                SqlState::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        let (state, columns) = match &statement.prepared {
            Prepared::Empty => {
                if !msg.params.is_empty() {
                    return Err(PgError::new(
                        SqlState::PROTOCOL_VIOLATION,
                        format!(
                            "bind message supplies {} parameters, but prepared statement requires 0",
                            msg.params.len()
                        ),
                    ));
                }
                (PortalState::Empty, 0)
            }
            Prepared::Command(cmd) => {
                if !msg.params.is_empty() {
                    return Err(PgError::new(
                        SqlState::PROTOCOL_VIOLATION,
                        format!(
                            "bind message supplies {} parameters, but prepared statement requires 0",
                            msg.params.len()
                        ),
                    ));
                }
                let columns = match cmd {
                    Command::Show(name) => Self::show_schema(name).fields().len(),
                    Command::Fetch {
                        cursor,
                        discard: false,
                        ..
                    } => self
                        .cursor_schema(cursor)
                        .map(|s| s.fields().len())
                        .unwrap_or(0),
                    _ => 0,
                };
                (PortalState::Command(cmd.clone()), columns)
            }
            Prepared::Declare {
                cursor,
                plan,
                params: types,
            } => {
                let values = params::decode_all(types, &msg.param_formats, &msg.params)?;
                let plan = if values.is_empty() {
                    plan.clone()
                } else {
                    plan.clone().with_param_values(values)?
                };
                (PortalState::Declare(cursor.clone(), Box::new(plan)), 0)
            }
            Prepared::Lake {
                plan,
                params: types,
                schema,
                explain,
            } => {
                let values = params::decode_all(types, &msg.param_formats, &msg.params)?;
                let plan = if values.is_empty() {
                    plan.clone()
                } else {
                    plan.clone().with_param_values(values)?
                };
                (
                    PortalState::Lake(Box::new(LakeRun {
                        plan: Some(plan),
                        stream: None,
                        pending: None,
                        rows: 0,
                        explain: *explain,
                    })),
                    schema.fields().len(),
                )
            }
        };
        let formats = Format::for_columns(&msg.result_formats, columns)
            .map_err(|m| PgError::new(SqlState::PROTOCOL_VIOLATION, m))?;
        self.portals.insert(
            msg.portal,
            Portal {
                statement,
                state,
                formats,
                hold: false,
            },
        );
        self.conn.send(&BindComplete::new());
        Ok(())
    }

    fn describe(&mut self, frame: &Frame) -> Result<(), PgError> {
        let msg = frame::decode_describe(&frame.body)?;
        match msg.target {
            Target::Statement => {
                let statement = self.statements.get(&msg.name).cloned().ok_or_else(|| {
                    PgError::new(
                        SqlState::INVALID_SQL_STATEMENT_NAME,
                        format!("prepared statement \"{}\" does not exist", msg.name),
                    )
                })?;
                match &statement.prepared {
                    Prepared::Empty => {
                        self.conn.send(&ParameterDescription::new(vec![]));
                        self.conn.send(&NoData::new());
                    }
                    Prepared::Command(cmd) => {
                        self.conn.send(&ParameterDescription::new(vec![]));
                        self.describe_command(cmd, &[]);
                    }
                    Prepared::Declare { params, .. } => {
                        self.conn.send(&ParameterDescription::new(
                            params.iter().map(|p| p.oid).collect(),
                        ));
                        self.conn.send(&NoData::new());
                    }
                    Prepared::Lake { params, schema, .. } => {
                        self.conn.send(&ParameterDescription::new(
                            params.iter().map(|p| p.oid).collect(),
                        ));
                        self.describe_schema(schema, &[]);
                    }
                }
            }
            Target::Portal => {
                let portal = self.portals.get(&msg.name).ok_or_else(|| {
                    PgError::new(
                        SqlState::INVALID_CURSOR_NAME,
                        format!("portal \"{}\" does not exist", msg.name),
                    )
                })?;
                let formats = portal.formats.clone();
                let statement = portal.statement.clone();
                match &statement.prepared {
                    Prepared::Empty | Prepared::Declare { .. } => self.conn.send(&NoData::new()),
                    Prepared::Command(cmd) => self.describe_command(cmd, &formats),
                    Prepared::Lake { schema, .. } => self.describe_schema(schema, &formats),
                }
            }
        }
        Ok(())
    }

    fn describe_command(&mut self, cmd: &Command, formats: &[Format]) {
        match cmd {
            Command::Show(name) => {
                let schema = Self::show_schema(name);
                encode::row_description(&mut self.conn.out, &schema, formats);
            }
            Command::Fetch {
                cursor,
                discard: false,
                ..
            } => match self.cursor_schema(cursor) {
                Some(schema) => self.describe_schema(&schema, formats),
                None => self.conn.send(&NoData::new()),
            },
            _ => self.conn.send(&NoData::new()),
        }
    }

    fn describe_schema(&mut self, schema: &Schema, formats: &[Format]) {
        if schema.fields().is_empty() {
            self.conn.send(&NoData::new());
        } else {
            encode::row_description(&mut self.conn.out, schema, formats);
        }
    }

    async fn execute(&mut self, frame: &Frame) -> Result<(), PgError> {
        let msg = frame::decode_execute(&frame.body)?;
        let mut portal = self.portals.remove(&msg.portal).ok_or_else(|| {
            PgError::new(
                SqlState::INVALID_CURSOR_NAME,
                format!("portal \"{}\" does not exist", msg.portal),
            )
        })?;
        if self.tx == Tx::Failed
            && !matches!(
                portal.state,
                PortalState::Command(Command::Commit | Command::Rollback | Command::RollbackTo(_))
            )
        {
            self.portals.insert(msg.portal, portal);
            return Err(PgError::new(
                SqlState::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        let result = match &portal.state {
            PortalState::Command(Command::Fetch {
                cursor,
                count,
                discard,
            }) => {
                let (cursor, count, discard) = (cursor.clone(), *count, *discard);
                portal.state = PortalState::Done;
                let formats = portal.formats.clone();
                self.fetch(&cursor, count, Some(formats), false, discard)
                    .await
            }
            _ => {
                self.execute_portal(&mut portal, msg.max_rows, ExecMode::Execute)
                    .await
            }
        };
        // Keep the portal (it may be suspended) unless the session is ending.
        self.portals.insert(msg.portal, portal);
        match result {
            Ok(r) => r,
            Err(Disconnect::Protocol(e)) => Err(PgError {
                severity: Severity::Fatal,
                ..e
            }),
            Err(Disconnect::Io(e)) => Err(PgError::fatal(
                SqlState::CONNECTION_EXCEPTION,
                e.to_string(),
            )),
        }
    }

    async fn execute_portal(
        &mut self,
        portal: &mut Portal,
        max_rows: i32,
        mode: ExecMode,
    ) -> Result<Result<(), PgError>, Disconnect> {
        let max_rows = if max_rows <= 0 { 0 } else { max_rows as u64 };
        let formats = portal.formats.clone();
        if mode
            == (ExecMode::Fetch {
                describe: true,
                discard: false,
            })
            && let Prepared::Lake { schema, .. } = &portal.statement.prepared
        {
            encode::row_description(&mut self.conn.out, schema, &formats);
        }
        let discard = matches!(mode, ExecMode::Fetch { discard: true, .. });
        let verb = if discard { "MOVE" } else { "FETCH" };
        let fetch_tag = |rows: u64| CommandComplete::new(format!("{verb} {rows}"));
        match &mut portal.state {
            PortalState::Empty => {
                self.conn.send(&EmptyQueryResponse::new());
                Ok(Ok(()))
            }
            PortalState::Declare(spec, plan) => {
                let (spec, plan) = (spec.clone(), plan.as_ref().clone());
                portal.state = PortalState::Done;
                Ok(self.open_cursor(spec, plan))
            }
            PortalState::Done => {
                // Re-executing an exhausted portal returns no more rows.
                match mode {
                    ExecMode::Execute => self
                        .conn
                        .send(&CommandComplete::new("SELECT 0".to_string())),
                    ExecMode::Fetch { .. } => self.conn.send(&fetch_tag(0)),
                }
                Ok(Ok(()))
            }
            PortalState::Command(cmd) => {
                let cmd = cmd.clone();
                portal.state = PortalState::Done;
                let format = formats.first().copied().unwrap_or(Format::Text);
                // In the extended protocol, Describe sends any RowDescription.
                Ok(self.run_command(&cmd, format, false).await)
            }
            PortalState::Lake(run) => {
                if let Some(plan) = run.plan.take() {
                    match self.start(plan).await {
                        Ok(s) => run.stream = Some(s),
                        Err(e) => {
                            portal.state = PortalState::Done;
                            return Ok(Err(e));
                        }
                    }
                }
                let mut taken = std::mem::replace(
                    run.as_mut(),
                    LakeRun {
                        plan: None,
                        stream: None,
                        pending: None,
                        rows: 0,
                        explain: false,
                    },
                );
                let before = taken.rows;
                let outcome = self.pump(&mut taken, &formats, max_rows, discard).await?;
                let sent = taken.rows - before;
                match outcome {
                    Ok(true) => {
                        match mode {
                            ExecMode::Execute => self.complete_query(&taken),
                            ExecMode::Fetch { .. } => self.conn.send(&fetch_tag(sent)),
                        }
                        portal.state = PortalState::Done;
                        Ok(Ok(()))
                    }
                    Ok(false) => {
                        match mode {
                            ExecMode::Execute => self.conn.send(&PortalSuspended::new()),
                            ExecMode::Fetch { .. } => self.conn.send(&fetch_tag(sent)),
                        }
                        portal.state = PortalState::Lake(Box::new(taken));
                        Ok(Ok(()))
                    }
                    Err(e) => {
                        portal.state = PortalState::Done;
                        Ok(Err(e))
                    }
                }
            }
        }
    }

    fn close(&mut self, frame: &Frame) -> Result<(), PgError> {
        let msg = frame::decode_close(&frame.body)?;
        match msg.target {
            Target::Statement => {
                self.statements.remove(&msg.name);
            }
            Target::Portal => {
                self.portals.remove(&msg.name);
            }
        }
        self.conn.send(&CloseComplete::new());
        Ok(())
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
