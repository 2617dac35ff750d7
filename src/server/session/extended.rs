//! The extended protocol: Parse (which decides, see `pipeline.rs`), Bind, Describe,
//! Execute and Close for statements Sluice answers itself.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::logical_expr::LogicalPlan;
use std::time::Instant;

use super::pipeline::{Outcome, StatementText, Text};
use super::{
    CursorSpec, ExecMode, LakeRun, Portal, PortalState, Prepared, PreparedStatement, Session,
};
use crate::engine::params;
use crate::error::{PgError, Severity, SqlState};
use datafusion::sql::sqlparser::ast::Statement;

use crate::route::{Command, Decision, Plan, Step};
use crate::wire::Disconnect;
use crate::wire::frame::{self, Frame, Target};
use crate::wire::messages::{
    BindComplete, CloseComplete, NoData, ParameterDescription, ParseComplete,
};
use crate::wire::rows::{self, Format};

impl Session {
    // ---- extended protocol ----

    /// Parse: the decide stage of the extended protocol. An upstream statement is
    /// relayed (its name goes into the relay's books); a local one is prepared here
    /// (lake queries are planned now, so errors such as 42P01 come at Parse, as in
    /// PostgreSQL).
    pub(super) async fn parse_message(&mut self, frame: &Frame) -> Result<(), Disconnect> {
        self.settle_upstream_abort().await;
        let msg = match frame::decode_parse(&frame.body) {
            Ok(msg) => msg,
            Err(e) => {
                // Non-UTF-8 text (a client_encoding set upstream): like text Sluice
                // cannot parse, it goes upstream only for a role that may write.
                if self.forward.is_some()
                    && self.policy.write
                    && let Some(name) = frame::parse_name_of_foreign_text(&frame.body)
                {
                    let name = name.to_owned();
                    self.statements.remove(&name);
                    if let Some(f) = self.forward.as_mut() {
                        f.texts.remove(&name);
                        f.statements.insert(name);
                    }
                    self.forward_message(frame).await?;
                    return Ok(());
                }
                return self.local_message_failed(e).await;
            }
        };
        let decision = self.decide(&msg.query);
        if self.shared.results.is_some() {
            self.note_parse(&msg, &decision);
        }
        match &decision.plan {
            Plan::Relay => {
                self.apply_effects(&decision);
                self.statements.remove(&msg.name);
                let text = self
                    .records_texts()
                    .then(|| StatementText::of(&msg.query, &decision));
                // A prepared statement is labelled at Parse, when its session's
                // upstream is open and no pipeline is under way (`label_upstream`).
                if self.shared.config.query_groups.label_upstream {
                    let group = text
                        .as_ref()
                        .map(|t| t.label.fingerprint)
                        .unwrap_or_else(|| decision.label(&msg.query).fingerprint);
                    self.label_upstream(group).await;
                }
                if let Some(f) = self.forward.as_mut() {
                    f.statements.insert(msg.name.clone());
                    match text {
                        Some(t) => f.texts.insert(msg.name.clone(), t),
                        None => f.texts.remove(&msg.name),
                    };
                }
                self.forward_message(frame).await?;
                return Ok(());
            }
            Plan::Refuse(e) if self.forward.is_some() => {
                self.drain_upstream().await?;
                // An upstream error already voids the pipeline up to Sync.
                if !self.skip_until_sync {
                    self.fail_pipeline(e).await?;
                }
                return Ok(());
            }
            _ => {}
        }
        if let Some(f) = self.forward.as_mut() {
            f.statements.remove(&msg.name);
            if f.owed > 0 {
                // Sluice answers after everything forwarded before this Parse.
                self.drain_upstream().await?;
                if self.skip_until_sync {
                    return Ok(());
                }
            }
        }
        self.apply_effects(&decision);
        match self.prepare(msg, decision).await {
            Ok(()) => Ok(self.conn.flush_if_full().await?),
            Err(e) => self.local_message_failed(e).await,
        }
    }

    /// A local extended-protocol message failed: FATAL ends the session, anything
    /// else voids the pipeline up to Sync.
    pub(super) async fn local_message_failed(&mut self, e: PgError) -> Result<(), Disconnect> {
        if e.severity == Severity::Fatal {
            return Err(Disconnect::Protocol(e));
        }
        self.fail_pipeline(&e).await
    }

    /// Prepares a statement Sluice answers itself, as decided.
    async fn prepare(&mut self, msg: frame::Parse, decision: Decision) -> Result<(), PgError> {
        if !msg.name.is_empty() && self.statements.contains_key(&msg.name) {
            return Err(PgError::new(
                SqlState::DUPLICATE_PREPARED_STATEMENT,
                format!("prepared statement \"{}\" already exists", msg.name),
            ));
        }
        let text = self
            .records_texts()
            .then(|| StatementText::of(&msg.query, &decision));
        let step = match decision.plan {
            Plan::Empty => None,
            Plan::Refuse(e) => return Err(e),
            Plan::Relay => {
                return Err(PgError::new(
                    SqlState::INTERNAL_ERROR,
                    "an upstream statement reached local preparation",
                ));
            }
            Plan::Local(mut steps) if steps.len() == 1 => Some(steps.remove(0)),
            Plan::Local(_) => {
                return Err(PgError::new(
                    SqlState::SYNTAX_ERROR,
                    "cannot insert multiple commands into a prepared statement",
                ));
            }
        };
        let prepared = match step {
            None => Prepared::Empty,
            Some(Step::Refuse(e)) => return Err(e),
            Some(Step::ViewDdl(v)) => Prepared::ViewDdl(v),
            Some(step) => {
                self.check_failed_tx(step.command())?;
                self.prepare_step(step, &msg).await?
            }
        };
        self.statements
            .insert(msg.name, Arc::new(PreparedStatement { prepared, text }));
        self.conn.send(&ParseComplete::new());
        Ok(())
    }

    async fn prepare_step(&mut self, step: Step, msg: &frame::Parse) -> Result<Prepared, PgError> {
        Ok(match step {
            Step::Session(cmd) => Prepared::Command(cmd),
            Step::DeclareCursor {
                name,
                binary,
                hold,
                query,
            } => {
                let plan = self.plan(&query, self.forward.is_some()).await?;
                let params = params::param_types(&plan, &msg.param_types)?;
                Prepared::Declare {
                    cursor: CursorSpec { name, binary, hold },
                    plan,
                    params,
                }
            }
            Step::Lake(stmt) => self.prepare_lake(&stmt, false, msg).await?,
            Step::CrossEngine(stmt) => self.prepare_lake(&stmt, true, msg).await?,
            Step::ViewDdl(v) => Prepared::ViewDdl(v),
            Step::Refuse(e) => return Err(e),
        })
    }

    /// Plans a lake query at Parse, with the parameter and column types the client
    /// declared (or, for a known client catalog query, expects).
    async fn prepare_lake(
        &mut self,
        stmt: &Statement,
        cross_engine: bool,
        msg: &frame::Parse,
    ) -> Result<Prepared, PgError> {
        let plan = self.plan(stmt, cross_engine).await?;
        let known = crate::engine::pg_compat::known_query(&msg.query);
        let declared = match known {
            Some(k) if msg.param_types.is_empty() => k.param_oids,
            _ => &msg.param_types[..],
        };
        let params = params::param_types(&plan, declared)?;
        let mut schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        if let Some(k) = known {
            schema = crate::wire::types::with_column_oids(&schema, k.column_oids);
        }
        let explain = matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_));
        Ok(Prepared::Lake {
            plan,
            params,
            schema,
            explain,
        })
    }

    pub(super) fn bind(&mut self, frame: &Frame) -> Result<(), PgError> {
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
        self.check_failed_tx(match &statement.prepared {
            Prepared::Command(c) => Some(c),
            _ => None,
        })?;
        let takes_no_parameters = matches!(
            statement.prepared,
            Prepared::Empty | Prepared::ViewDdl(_) | Prepared::Command(_)
        );
        if takes_no_parameters && !msg.params.is_empty() {
            return Err(PgError::new(
                SqlState::PROTOCOL_VIOLATION,
                format!(
                    "bind message supplies {} parameters, but prepared statement requires 0",
                    msg.params.len()
                ),
            ));
        }
        let (state, columns) = match &statement.prepared {
            Prepared::Empty => (PortalState::Empty, 0),
            Prepared::ViewDdl(v) => (PortalState::ViewDdl(v.clone()), 0),
            Prepared::Command(cmd) => {
                let columns = match cmd {
                    Command::Show(name) => Self::show_schema(name).fields().len(),
                    Command::Terminate { .. } => 1,
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
                let plan = bound_plan(plan, types, &msg)?;
                (PortalState::Declare(cursor.clone(), Box::new(plan)), 0)
            }
            Prepared::Lake {
                plan,
                params: types,
                schema,
                explain,
            } => {
                let plan = bound_plan(plan, types, &msg)?;
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
        let text = match &statement.text {
            Some(t) if self.shared.observer.logs_parameters() => Some(Arc::new(StatementText {
                text: t.text.clone(),
                label: t.label.clone(),
                parameters: Some(logged_parameters(&statement.prepared, &msg)),
            })),
            other => other.clone(),
        };
        self.portals.insert(
            msg.portal,
            Portal {
                statement,
                state,
                formats,
                hold: false,
                text,
            },
        );
        self.conn.send(&BindComplete::new());
        Ok(())
    }

    pub(super) fn describe(&mut self, frame: &Frame) -> Result<(), PgError> {
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
                    Prepared::Empty | Prepared::ViewDdl(_) => {
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
                    Prepared::Empty | Prepared::ViewDdl(_) | Prepared::Declare { .. } => {
                        self.conn.send(&NoData::new())
                    }
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
                rows::row_description(&mut self.conn.out, &schema, formats);
            }
            Command::Terminate { function, .. } => {
                let schema = Self::terminate_schema(function);
                rows::row_description(&mut self.conn.out, &schema, formats);
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
            rows::row_description(&mut self.conn.out, schema, formats);
        }
    }

    pub(super) async fn execute(&mut self, frame: &Frame) -> Result<(), PgError> {
        let msg = frame::decode_execute(&frame.body)?;
        let mut portal = self.portals.remove(&msg.portal).ok_or_else(|| {
            PgError::new(
                SqlState::INVALID_CURSOR_NAME,
                format!("portal \"{}\" does not exist", msg.portal),
            )
        })?;
        let command = match &portal.state {
            PortalState::Command(c) => Some(c),
            _ => None,
        };
        if let Err(e) = self.check_failed_tx(command) {
            self.portals.insert(msg.portal, portal);
            return Err(e);
        }
        // The admit and record stages of a local statement run around its Execute.
        let started = Instant::now();
        let sent_before = self.conn.bytes_sent();
        let route = portal.state.route_name();
        let text = portal.text.clone();
        let recorded = Text::Prepared(text);
        if let Err(e) = self
            .admit_or_record(route, started, sent_before, &recorded)
            .await
        {
            self.portals.insert(msg.portal, portal);
            return Err(e);
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
        let gone = super::pipeline::client_gone();
        self.record(Outcome {
            route,
            started,
            error: match &result {
                Ok(outcome) => outcome.as_ref().err(),
                // The client left mid-answer: the statement ran, so it is recorded.
                Err(_) => Some(&gone),
            },
            text: recorded,
            sent_before,
            relayed: None,
        });
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

    pub(super) fn close(&mut self, frame: &Frame) -> Result<(), PgError> {
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

/// A prepared lake plan with the Bind's parameter values applied.
/// Bound parameters as the audit trail logs them: typed values as text when the
/// statement's parameter types are known (lake statements), else as sent.
fn logged_parameters(prepared: &Prepared, msg: &frame::Bind) -> Vec<Option<String>> {
    let typed = match prepared {
        Prepared::Lake { params: types, .. } | Prepared::Declare { params: types, .. } => {
            params::decode_all(types, &msg.param_formats, &msg.params).ok()
        }
        _ => None,
    };
    match typed {
        Some(values) => values
            .iter()
            .map(|v| (!v.is_null()).then(|| v.to_string()))
            .collect(),
        None => frame::parameters_as_text(msg),
    }
}

fn bound_plan(
    plan: &LogicalPlan,
    types: &[params::ParamType],
    msg: &frame::Bind,
) -> Result<LogicalPlan, PgError> {
    let values = params::decode_all(types, &msg.param_formats, &msg.params)?;
    if values.is_empty() {
        return Ok(plan.clone());
    }
    Ok(plan.clone().with_param_values(values)?)
}
