//! The statement pipeline every statement passes through, in both protocols:
//!
//! 1. **decide** — [`Session::decide`]: `route` parses the text once (memoised) and
//!    returns one [`Decision`]: its [`Plan`] (session command, lake query,
//!    cross-engine query, view DDL, upstream relay, or refusal), its meaning for the
//!    result cache, and its effects on the session's books.
//! 2. **admit** — `Session::admit` (`admission.rs`): may the statement start now?
//!    (The audit trail's refusal, then the workload queues: a slot, limits, rules.)
//! 3. **run** — locally ([`Session::run_step`]), relayed (`forward.rs`), or answered
//!    from the result cache (`cached.rs`), which wraps the other two.
//! 4. **record** — [`Session::record`]: one call per statement at its end, with its
//!    route and outcome (audit, metrics and query statistics go here).
//!
//! A simple query goes through all four here. In the extended protocol, Parse
//! decides ([`Session::parse_message`]) and the prepared statement (or, for an
//! upstream statement, its name in the relay's books) carries the decision to Bind
//! and Execute; a local Execute is admitted and recorded around its run
//! (`extended.rs`). Upstream Bind/Describe/Execute frames follow their statement's
//! name on the relay's per-message fast path (`forward.rs`), which costs no
//! decision: an upstream Execute is admitted as it is forwarded and recorded when
//! the upstream's ReadyForQuery ends its pipeline (the relay copies answers without
//! reading them, so a relayed statement's SQLSTATE is not known here).

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use super::{Session, Tx};
use crate::error::{PgError, Severity, SqlState};
use crate::observe::StatementEnd;
use crate::redshift::relay::Completion;
use crate::route::decide::ViewNames;
use crate::route::label::Label;
use crate::route::sqlcommenter;
use crate::route::{self, Decision, Effect, Plan, Step};
use crate::wire::Disconnect;
use crate::wire::frame::{self, Frame};
use crate::wire::messages::EmptyQueryResponse;
use crate::wire::rows::Format;

/// How a statement ended, for the record stage.
pub(super) struct Outcome<'a> {
    pub route: &'static str,
    pub started: Instant,
    pub error: Option<&'a PgError>,
    pub text: Text<'a>,
    /// `conn.bytes_sent()` when the statement started.
    pub sent_before: u64,
    /// How a relayed statement ended, read off its answers.
    pub relayed: Option<Completion>,
}

/// Where the record stage finds a statement's text and label.
#[derive(Clone)]
pub(super) enum Text<'a> {
    /// Statement `index` of a decided query string.
    Step(&'a str, &'a Decision, usize),
    /// A query string relayed as one.
    Whole(&'a str, &'a Decision),
    /// A prepared statement's (`None`: nothing records texts).
    Prepared(Option<Arc<StatementText>>),
}

/// A prepared statement's text and label, kept for the record stage of its
/// Executes (only when query groups or the audit trail want them).
pub(super) struct StatementText {
    pub text: Arc<str>,
    pub label: Arc<Label>,
    /// Bound parameters as text, when the audit trail logs them (set at Bind).
    pub parameters: Option<Vec<Option<String>>>,
}

impl StatementText {
    pub(super) fn of(text: &str, decision: &Decision) -> Arc<StatementText> {
        let label = match decision.plan {
            Plan::Relay => decision.label(text),
            _ => decision.step_label(text, 0),
        };
        Arc::new(StatementText {
            text: Arc::from(text),
            label,
            parameters: None,
        })
    }
}

/// A relayed Execute awaiting its pipeline's end, for the record stage.
pub(super) struct Executing {
    pub(super) started: Instant,
    pub(super) sent_before: u64,
    pub(super) text: Option<Arc<StatementText>>,
}

/// The statement's text with the Bind's parameters, when the audit trail logs them.
pub(super) fn with_parameters(
    text: &Arc<StatementText>,
    bind: &Frame,
    log: bool,
) -> Arc<StatementText> {
    if !log {
        return text.clone();
    }
    let parameters = frame::decode_bind(&bind.body)
        .ok()
        .map(|b| frame::parameters_as_text(&b));
    Arc::new(StatementText {
        text: text.text.clone(),
        label: text.label.clone(),
        parameters,
    })
}

impl Session {
    /// Stage 1: where the statements of `sql` go, in this session's situation now.
    pub(super) fn decide(&mut self, sql: &str) -> Decision {
        self.follow_lake_changes();
        let shared = self.shared.clone();
        let portals = &self.portals;
        let local_cursor = |name: &str| portals.contains_key(name);
        let cx = route::Context {
            forwarding: self.forward.as_ref().map(|f| route::Forwarding {
                lake_schemas: &f.lake_schemas,
                lost_in_tx: f.lost_in_tx,
            }),
            may_write: self.policy.write,
            views: shared.matviews.as_deref().map(|m| m as &dyn ViewNames),
            local_cursor: &local_cursor,
            want_analysis: shared.results.is_some(),
        };
        shared.router.decide(sql, &cx)
    }

    /// Applies a decision's book-keeping (what relaying it changes here).
    pub(super) fn apply_effects(&mut self, decision: &Decision) {
        for effect in &decision.effects {
            match effect {
                Effect::MirrorSet { name, value } => {
                    // Upstream settings also apply to lake queries where Sluice knows them.
                    let _ = self.settings.set(name, value.as_deref());
                    self.settings_changed_upstream();
                }
                Effect::MirrorReset(name) => {
                    let _ = self.settings.reset(name.as_deref());
                    self.settings_changed_upstream();
                }
                Effect::UpstreamSetting => self.settings_changed_upstream(),
                Effect::UpstreamCursors(names) => {
                    if let Some(f) = self.forward.as_mut() {
                        f.portals.extend(names.iter().cloned());
                    }
                }
                Effect::DiscardAll => {
                    self.statements.clear();
                    self.portals.clear();
                    if let Some(f) = self.forward.as_mut() {
                        f.portals.clear();
                        f.statements.clear();
                        f.texts.clear();
                        f.portal_texts.clear();
                    }
                }
                Effect::DeallocateUpstream(name) => {
                    if let Some(f) = self.forward.as_mut() {
                        match name {
                            Some(n) => {
                                f.statements.remove(n);
                                f.texts.remove(n);
                            }
                            None => {
                                f.statements.clear();
                                f.texts.clear();
                            }
                        }
                    }
                }
                Effect::EndLostTransaction => {
                    if let Some(f) = self.forward.as_mut() {
                        f.lost_in_tx = false;
                    }
                }
            }
        }
    }

    /// A ROLLBACK may undo a relayed SET upstream without Sluice's copy following:
    /// from then on the session's settings cannot key cached answers.
    fn settings_changed_upstream(&mut self) {
        if self.tx != Tx::Idle {
            self.cache_loses_track_of_settings();
        }
    }

    /// Whether the record stage needs statement texts and labels.
    pub(super) fn records_texts(&self) -> bool {
        let o = &self.shared.observer;
        o.query_groups.is_some()
            || o.audits_statements()
            || self
                .shared
                .workload
                .as_ref()
                .is_some_and(|w| w.needs_fingerprint() || w.needs_tags())
    }

    /// Stage 4: a statement ended: metrics, query groups and the audit trail.
    pub(super) fn record(&mut self, outcome: Outcome<'_>) {
        let duration = outcome.started.elapsed();
        let relayed = outcome.relayed.as_ref();
        let (sqlstate, message) = match (outcome.error, relayed.and_then(|c| c.error.as_ref())) {
            (Some(e), _) => (e.code.0, Some(e.message.as_str())),
            (None, Some((code, message))) => (code.as_str(), Some(message.as_str())),
            (None, None) => ("00000", None),
        };
        let rows = match relayed {
            Some(c) => c.rows,
            None => self.rows.take(),
        };
        // A relayed Execute ended when its answer passed, not at its pipeline's end.
        let (duration, sent_after) = match relayed.and_then(|c| c.ended) {
            Some((at, sent)) => (at.saturating_duration_since(outcome.started), sent),
            None => (duration, self.conn.bytes_sent()),
        };
        let bytes = sent_after.saturating_sub(outcome.sent_before);
        let (queue, waited, fired) = self.admission_record(duration, rows.unwrap_or(0), bytes);
        self.release_slot();
        tracing::trace!(
            route = outcome.route,
            micros = duration.as_micros() as u64,
            sqlstate,
            "statement ended"
        );
        let observer = self.shared.observer.clone();
        // Without query groups or statement auditing, nothing reads the label.
        static EMPTY: LazyLock<Arc<Label>> = LazyLock::new(Arc::default);
        let (text, label, parameters): (&str, Arc<Label>, _) = if !self.records_texts() {
            ("", EMPTY.clone(), None)
        } else {
            match &outcome.text {
                Text::Step(sql, decision, i) => (*sql, decision.step_label(sql, *i), None),
                Text::Whole(sql, decision) => (*sql, decision.label(sql), None),
                Text::Prepared(Some(p)) => (&*p.text, p.label.clone(), p.parameters.clone()),
                Text::Prepared(None) => ("", EMPTY.clone(), None),
            }
        };
        let tags = sqlcommenter::tags(text);
        let application = sqlcommenter::tag(&tags, "application")
            .or_else(|| self.settings.get_canonical("application_name"))
            .unwrap_or("");
        let query_group = self
            .settings
            .get_canonical("query_group")
            .filter(|g| !g.is_empty() && *g != "default")
            .or_else(|| sqlcommenter::tag(&tags, "route"));
        observer.statement(StatementEnd {
            who: &self.who,
            application,
            query_group,
            route: outcome.route,
            text,
            label: &label,
            parameters: parameters.filter(|_| observer.logs_parameters()),
            duration,
            queue: waited,
            queue_name: queue.as_deref(),
            rules: &fired,
            rows,
            bytes,
            sqlstate,
            error: message,
        });
    }

    /// A simple query message, through ReadyForQuery: decided once, then answered
    /// from the result cache, relayed, or run here.
    pub(super) async fn query_message(&mut self, frame: &Frame) -> Result<(), Disconnect> {
        self.settle_upstream_abort().await;
        let sql = match frame::decode_query(&frame.body) {
            Ok(sql) => sql,
            Err(e) => {
                // Text in a non-UTF-8 client_encoding (set upstream): Sluice cannot
                // read it, so, like a statement it cannot parse, it goes upstream
                // only for a role that may write.
                if self.forward.is_some() && self.policy.write && frame.body.last() == Some(&0) {
                    return self.relay_foreign_query(frame).await;
                }
                if e.severity == Severity::Fatal {
                    return Err(Disconnect::Protocol(e));
                }
                // e.g. invalid UTF-8: the statement fails, the session carries on.
                self.fail(&e);
                return self.end_query().await;
            }
        };
        let decision = self.decide(sql);
        if matches!(decision.plan, Plan::Relay | Plan::Local(_)) {
            self.apply_effects(&decision);
        }
        if self.shared.results.is_some() {
            self.cached_query(frame, &decision).await?;
            self.invalidate_at_transaction_end();
            return Ok(());
        }
        self.answer_query(frame, &decision).await
    }

    /// A simple query in a client encoding Sluice cannot read, relayed as it is:
    /// admitted and recorded like any relayed text (its text decoded lossily).
    async fn relay_foreign_query(&mut self, frame: &Frame) -> Result<(), Disconnect> {
        let started = Instant::now();
        let sent_before = self.conn.bytes_sent();
        let text = String::from_utf8_lossy(frame.body.strip_suffix(&[0]).unwrap_or(&frame.body))
            .into_owned();
        let label = Arc::new(Label::of_text(&text));
        let recorded = Some(Arc::new(StatementText {
            text: Arc::from(text.as_str()),
            label,
            parameters: None,
        }));
        self.relay_simple(frame, Text::Prepared(recorded), None, started, sent_before)
            .await
    }

    /// Admits, relays (labelled with `group`, when set) and records a simple query
    /// that goes upstream whole, through ReadyForQuery.
    async fn relay_simple(
        &mut self,
        frame: &Frame,
        text: Text<'_>,
        group: Option<u64>,
        started: Instant,
        sent_before: u64,
    ) -> Result<(), Disconnect> {
        if let Err(e) = self
            .admit_or_record("upstream", started, sent_before, &text)
            .await
        {
            self.fail(&e);
            return self.end_query().await;
        }
        self.take_tally();
        let relayed = self.forward_simple(frame, group).await;
        let completion = self.take_tally();
        let failed = self.relay_failure.take();
        self.record(Outcome {
            route: "upstream",
            started,
            error: failed.as_ref(),
            text,
            sent_before,
            relayed: Some(completion),
        });
        relayed
    }

    /// The run stage of a simple query, through ReadyForQuery.
    pub(super) async fn answer_query(
        &mut self,
        frame: &Frame,
        decision: &Decision,
    ) -> Result<(), Disconnect> {
        let sql = frame::decode_query(&frame.body).unwrap_or_default();
        if let Plan::Relay = decision.plan {
            let started = Instant::now();
            let sent_before = self.conn.bytes_sent();
            let group = self
                .shared
                .config
                .query_groups
                .label_upstream
                .then(|| decision.label(sql).fingerprint);
            let text = Text::Whole(sql, decision);
            return self
                .relay_simple(frame, text, group, started, sent_before)
                .await;
        }
        // Sluice answers after the upstream has answered what was forwarded before.
        if self.forward.as_ref().is_some_and(|f| f.owed > 0) {
            self.drain_upstream().await?;
            if self.skip_until_sync {
                return Ok(());
            }
        }
        match &decision.plan {
            Plan::Relay => {}
            Plan::Empty => self.conn.send(&EmptyQueryResponse::new()),
            Plan::Refuse(e) => {
                let sent_before = self.conn.bytes_sent();
                self.fail(e);
                self.record(Outcome {
                    route: "refused",
                    started: Instant::now(),
                    error: Some(e),
                    text: Text::Whole(sql, decision),
                    sent_before,
                    relayed: None,
                });
            }
            Plan::Local(steps) => {
                for (index, step) in steps.iter().enumerate() {
                    let started = Instant::now();
                    let sent_before = self.conn.bytes_sent();
                    let route = step.route_name();
                    let text = Text::Step(sql, decision, index);
                    let result = match self.admit(route, &text).await {
                        Ok(()) => match Box::pin(self.run_step(step.clone())).await {
                            Ok(r) => r,
                            Err(gone) => {
                                // The client left mid-statement: it ran, so it is recorded.
                                self.record(Outcome {
                                    route,
                                    started,
                                    error: Some(&client_gone()),
                                    text: Text::Step(sql, decision, index),
                                    sent_before,
                                    relayed: None,
                                });
                                return Err(gone);
                            }
                        },
                        Err(e) => Err(e),
                    };
                    self.record(Outcome {
                        route,
                        started,
                        error: result.as_ref().err(),
                        text: Text::Step(sql, decision, index),
                        sent_before,
                        relayed: None,
                    });
                    if let Err(e) = result {
                        self.fail(&e);
                        break;
                    }
                }
            }
        }
        self.end_query().await
    }

    /// An upstream Execute is on its way: the record stage hears how it ended at
    /// its pipeline's ReadyForQuery.
    pub(super) fn note_upstream_execute(&mut self, frame: &Frame) {
        let sent_before = self.conn.bytes_sent();
        if let Some(f) = self.forward.as_mut() {
            let text = match frame::execute_portal(&frame.body) {
                Ok(portal) if !f.portal_texts.is_empty() => f.portal_texts.get(portal).cloned(),
                _ => None,
            };
            f.executing.push(Executing {
                started: Instant::now(),
                sent_before,
                text,
            });
        }
    }

    /// The relayed Executes of a pipeline, at its ReadyForQuery.
    /// `extended`: the ReadyForQuery ends an extended-protocol pipeline, whose
    /// completions are all this pipeline's (a simple query's stay for its own
    /// record, `take_tally`).
    pub(super) fn record_relayed_executes(
        &mut self,
        executed: &mut Vec<Executing>,
        extended: bool,
    ) {
        // Each Execute met one completion, in order; after an error the
        // upstream skipped the rest of the pipeline, which did not run. An error
        // before any Execute (a failed Parse, say) belongs to none of them.
        let done = self
            .forward
            .as_mut()
            .and_then(|f| f.held.as_mut())
            .filter(|_| extended || !executed.is_empty())
            .map(|h| std::mem::take(&mut h.conn.tally.done))
            .unwrap_or_default();
        let mut done = done.into_iter();
        let mut answered_up_to = 0u64;
        for exec in executed.drain(..) {
            let Some(completion) = done.next() else { break };
            let failed = completion.error.is_some();
            // Bytes and time of this answer only, not of the Executes before it.
            let sent_before = exec.sent_before.max(answered_up_to);
            if let Some((_, sent)) = completion.ended {
                answered_up_to = sent;
            }
            self.record(Outcome {
                route: "upstream",
                started: exec.started,
                error: None,
                text: Text::Prepared(exec.text),
                sent_before,
                relayed: Some(completion),
            });
            if failed {
                break;
            }
        }
        executed.clear();
    }

    /// How the relayed statements since the last call ended, as one completion
    /// (rows summed; the first error).
    pub(super) fn take_tally(&mut self) -> Completion {
        let mut out = Completion::default();
        let Some(held) = self.forward.as_mut().and_then(|f| f.held.as_mut()) else {
            return out;
        };
        for c in held.conn.tally.done.drain(..) {
            if let Some(r) = c.rows {
                out.rows = Some(out.rows.unwrap_or(0) + r);
            }
            if out.error.is_none() {
                out.error = c.error;
            }
        }
        out
    }

    /// ReadyForQuery, flushed: the end of every simple query message.
    pub(super) async fn end_query(&mut self) -> Result<(), Disconnect> {
        self.ready();
        self.conn.flush().await?;
        self.conn.shrink_idle();
        Ok(())
    }

    /// Runs one statement of a simple query. The outer error ends the session; the
    /// inner one is reported to the client.
    pub(super) async fn run_step(&mut self, step: Step) -> Result<Result<(), PgError>, Disconnect> {
        // A refusal reports its own error; view DDL reports 25001 inside any block.
        if !matches!(step, Step::ViewDdl(_) | Step::Refuse(_))
            && let Err(e) = self.check_failed_tx(step.command())
        {
            return Ok(Err(e));
        }
        match step {
            Step::Session(route::Command::Fetch {
                cursor,
                count,
                discard,
            }) => self.fetch(&cursor, count, None, !discard, discard).await,
            Step::Session(cmd) => Ok(self.run_command(&cmd, Format::Text, true).await),
            Step::ViewDdl(stmt) => Ok(self.run_matview(&stmt).await),
            Step::DeclareCursor {
                name,
                binary,
                hold,
                query,
            } => Ok(self.declare_cursor(name, binary, hold, &query).await),
            Step::Lake(stmt) => self.run_lake_query(&stmt, false).await,
            Step::CrossEngine(stmt) => self.run_lake_query(&stmt, true).await,
            Step::Refuse(e) => Ok(Err(e)),
        }
    }

    /// Statements other than COMMIT/ROLLBACK fail in a failed transaction block.
    /// `command`: the statement, when it is a session command.
    pub(super) fn check_failed_tx(&self, command: Option<&route::Command>) -> Result<(), PgError> {
        if self.tx == Tx::Failed && !command.is_some_and(route::Command::ends_failed_block) {
            return Err(in_failed_transaction());
        }
        Ok(())
    }
}

/// How a statement whose client went away mid-answer is recorded.
pub(super) fn client_gone() -> PgError {
    PgError::new(
        SqlState::CONNECTION_EXCEPTION,
        "the client disconnected before the statement's answer was sent",
    )
}

/// 25P02, as PostgreSQL words it.
fn in_failed_transaction() -> PgError {
    PgError::new(
        SqlState::IN_FAILED_SQL_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}
