//! Portals and cursors: a lake query's stream bound to a name, pumped to the
//! client batch by batch (Execute with `max_rows`, SQL FETCH/MOVE, DECLARE).

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::Statement;
use futures::StreamExt;
use tokio::time::Instant;

use super::{
    CursorSpec, ExecMode, LakeRun, Portal, PortalState, Prepared, PreparedStatement, Session, Tx,
    cancellable, sleep_until,
};
use crate::config::{DistributedRoute, RuleAction};
use crate::engine::Launched;
use crate::error::{PgError, SqlState};
use crate::lake::scan_guard::ScanGuard;
use crate::wire::messages::{CommandComplete, EmptyQueryResponse, PortalSuspended};
use crate::wire::rows::{self, BatchEncoder, EncodeOptions, Format};
use crate::wire::{Disconnect, FLUSH_THRESHOLD};
use crate::workload::{Fired, rules};

impl Session {
    /// Runs a lake (or cross-engine) query of a simple query: RowDescription, rows,
    /// CommandComplete.
    pub(super) async fn run_lake_query(
        &mut self,
        stmt: &Statement,
        cross_engine: bool,
    ) -> Result<Result<(), PgError>, Disconnect> {
        let plan = match self.plan(stmt, cross_engine).await {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let explain = matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_));
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let formats = vec![Format::Text; schema.fields().len()];
        let stream = match self.start(plan).await {
            Ok(s) => self.started(s),
            Err(e) => return Ok(Err(e)),
        };
        rows::row_description(&mut self.conn.out, &schema, &formats);
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

    pub(super) async fn declare_cursor(
        &mut self,
        name: String,
        binary: bool,
        hold: bool,
        query: &Statement,
    ) -> Result<(), PgError> {
        let cross_engine = self.forward.is_some();
        let plan = self.plan(query, cross_engine).await?;
        self.open_cursor(CursorSpec { name, binary, hold }, plan)
    }

    /// Creates a named cursor (a portal) over a planned lake query.
    pub(super) fn open_cursor(
        &mut self,
        spec: CursorSpec,
        plan: LogicalPlan,
    ) -> Result<(), PgError> {
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
            text: None,
        });
        self.portals.insert(
            spec.name,
            Portal {
                statement,
                state: PortalState::Lake(Box::new(run)),
                formats,
                hold: spec.hold,
                text: None,
            },
        );
        self.conn
            .send(&CommandComplete::new("DECLARE CURSOR".to_string()));
        Ok(())
    }

    /// The result schema of an open cursor, for FETCH's RowDescription.
    pub(super) fn cursor_schema(&self, cursor: &str) -> Option<SchemaRef> {
        match &self.portals.get(cursor)?.statement.prepared {
            Prepared::Lake { schema, .. } => Some(schema.clone()),
            _ => None,
        }
    }

    /// FETCH from a cursor. `formats` (from the FETCH's own Bind in the extended
    /// protocol) override the cursor's; `describe` sends the RowDescription first
    /// (simple protocol only: in the extended protocol Describe does that).
    pub(super) async fn fetch(
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
    pub(super) fn plan(
        &self,
        stmt: &Statement,
        cross_engine: bool,
    ) -> impl std::future::Future<Output = Result<LogicalPlan, PgError>> + Send + use<> {
        let engine = self.shared.engine.clone();
        let mut qc = self.query_context();
        if !cross_engine {
            qc.remote = None;
        }
        let stmt = stmt.clone();
        let signal = self.cancel.signal.clone();
        async move { cancellable(signal, async move { engine.plan(&stmt, &qc).await }).await }
    }

    /// Starts a planned query (physical planning may list many files: cancellable),
    /// on the gateway or the distributed engine. Send its NOTICE with
    /// [`started`](Self::started).
    pub(super) fn start(
        &self,
        plan: LogicalPlan,
    ) -> impl std::future::Future<Output = Result<Launched, PgError>> + Send + use<> {
        let engine = self.shared.engine.clone();
        let qc = self.query_context();
        let signal = self.cancel.signal.clone();
        let scan_rules = self.scan_rules();
        async move {
            cancellable(signal, async move {
                // The workload's scan-size rules: while the tables list their
                // files (before any is read), then on the whole plan.
                let guard = scan_rules.as_ref().and_then(|(workload, queue, fired)| {
                    let (limit, rule) = workload.rules.scan_limit(*queue)?;
                    let fired = fired.clone();
                    Some(ScanGuard::new(limit, move |bytes| {
                        fired.lock().unwrap_or_else(|p| p.into_inner()).push(Fired {
                            rule: rule.clone(),
                            action: RuleAction::Refuse,
                        });
                        rules::scan_refusal(&rule, bytes, limit)
                    }))
                });
                let query = engine.prepare(plan, &qc, guard).await?;
                if let Some((workload, queue, fired)) = scan_rules {
                    let mut fired = fired.lock().unwrap_or_else(|p| p.into_inner());
                    workload
                        .rules
                        .before_start(queue, query.scan_bytes(), &mut fired)?;
                }
                engine.launch(query, DistributedRoute::Queries).await
            })
            .await
        }
    }

    /// The stream of a started query, after any NOTICE it has for the client.
    pub(super) fn started(&mut self, launched: Launched) -> SendableRecordBatchStream {
        if let Some(notice) = &launched.notice {
            self.notice_with(SqlState::SUCCESSFUL_COMPLETION, "NOTICE", notice);
        }
        launched.stream
    }

    pub(super) fn complete_query(&mut self, run: &LakeRun) {
        self.apply_setting_changes();
        let tag = if run.explain {
            "EXPLAIN".to_string()
        } else {
            format!("SELECT {}", run.rows)
        };
        self.rows = Some(run.rows);
        self.conn.send(&CommandComplete::new(tag));
    }

    pub(super) async fn pump(
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
        // The workload's limits, counted from the statement's admission.
        let limits = self.admission.limits.clone();
        let time_limit = limits
            .as_ref()
            .and_then(|l| l.elapsed.as_ref())
            .zip(self.admission.started)
            .map(|(b, started)| (Instant::from_std(started + b.at), b));
        let row_limit = limits.as_ref().and_then(|l| l.rows.as_ref());
        let byte_limit = limits
            .as_ref()
            .and_then(|l| l.bytes.as_ref())
            .map(|b| (self.admission.sent_before.saturating_add(b.at), b));
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
                        _ = sleep_until(time_limit.map(|t| t.0)) => {
                            let breach = time_limit.map(|t| t.1);
                            return Ok(Err(self.breached(breach)));
                        }
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
            let prepared = match rows::Prepared::new(&batch) {
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
                    while row < n && self.conn.out.len() < FLUSH_THRESHOLD {
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
                        if let Some(b) = row_limit
                            && run.rows >= b.at
                        {
                            return Ok(Err(self.breached(Some(b))));
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
                if let Some((at, b)) = byte_limit
                    && self.conn.bytes_sent() > at
                {
                    return Ok(Err(self.breached(Some(b))));
                }
            }
        }
    }

    pub(super) async fn execute_portal(
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
            rows::row_description(&mut self.conn.out, schema, &formats);
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
            PortalState::ViewDdl(stmt) => {
                let stmt = stmt.clone();
                portal.state = PortalState::Done;
                Ok(self.run_matview(&stmt).await)
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
                        Ok(s) => run.stream = Some(self.started(s)),
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
}
