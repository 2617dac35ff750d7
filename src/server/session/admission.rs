//! The pipeline's admit stage: may a statement start now?
//!
//! Refused (58030) while the audit trail cannot write under `on_failure =
//! "refuse"`. With `[workload]` configured, a statement that does work (lake,
//! upstream, cross-engine, view) takes a slot of its queue first — waiting in
//! line, with a NOTICE saying why, when the queue is full — and runs under the
//! queue's limits and the monitoring rules (`workload`). The slot is released at
//! the statement's record stage (or, for relayed Executes, at their pipeline's
//! end), and by the session's end however it ends. A session holds at most one
//! slot and never waits while holding one, so queues cannot deadlock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Session;
use super::pipeline::{Outcome, Text, client_gone};
use crate::error::{PgError, SqlState};
use crate::metrics::metrics;
use crate::redshift::relay::{Limit, Watch};
use crate::route::sqlcommenter;
use crate::wire::frame::{self, Frame};
use crate::workload::{self, Acquired, Breach, Fired, InLine, Limits, Slot, Workload};

/// The admitted statement's place in the workload.
#[derive(Default)]
pub(super) struct Admission {
    slot: Option<Slot>,
    pub(super) queue: Option<usize>,
    /// Time spent in line (reported with the first statement that used the slot).
    pub(super) waited: Duration,
    /// Rules that acted on the statement (shared with its lake planning).
    pub(super) fired: Arc<std::sync::Mutex<Vec<Fired>>>,
    pub(super) limits: Option<Arc<Limits>>,
    /// When the admitted statement started, for its time limit.
    pub(super) started: Option<Instant>,
    /// `conn.bytes_sent()` at admission, for its byte limit.
    pub(super) sent_before: u64,
    /// Cancels a relayed statement upstream when its time limit passes.
    timer: Option<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Session {
    /// Stage 2: whether the statement may start now (see the module docs).
    pub(super) async fn admit(
        &mut self,
        route: &'static str,
        text: &Text<'_>,
    ) -> Result<(), PgError> {
        if let Some(audit) = &self.shared.observer.audit
            && let Some(refusal) = audit.refusal()
        {
            return Err(refusal);
        }
        if let Some(w) = &self.shared.workload
            && Workload::queues_route(route)
            && self.admission.slot.is_none()
        {
            let w = w.clone();
            self.take_slot(&w, route, text).await?;
        }
        self.rows = None;
        self.board.status.start(route);
        if self.xact_started.is_none() {
            self.xact_started = Some(Instant::now());
        }
        Ok(())
    }

    /// Stage 2 for an upstream Execute on the relay's fast path: its text (for the
    /// queues that match on it) is its portal's.
    pub(super) async fn admit_upstream_execute(&mut self, frame: &Frame) -> Result<(), PgError> {
        let text = match (&self.shared.workload, self.forward.as_ref()) {
            (Some(_), Some(f)) if !f.portal_texts.is_empty() => frame::execute_portal(&frame.body)
                .ok()
                .and_then(|portal| f.portal_texts.get(portal).cloned()),
            _ => None,
        };
        self.admit("upstream", &Text::Prepared(text)).await
    }

    /// Stage 2 for a statement that is refused whole if not admitted: the refusal
    /// is recorded (route `refused`) and returned for the caller to report.
    pub(super) async fn admit_or_record(
        &mut self,
        route: &'static str,
        started: Instant,
        sent_before: u64,
        text: &Text<'_>,
    ) -> Result<(), PgError> {
        let admitted = self.admit(route, text).await;
        if let Err(e) = &admitted {
            self.record(Outcome {
                route: "refused",
                started,
                error: Some(e),
                text: text.clone(),
                sent_before,
                relayed: None,
            });
        }
        admitted
    }

    /// Classifies the statement and takes a slot of its queue, waiting if needed.
    async fn take_slot(
        &mut self,
        w: &Arc<Workload>,
        route: &'static str,
        text: &Text<'_>,
    ) -> Result<(), PgError> {
        let queue = self.classify(w, route, text);
        let slot = match w.acquire(queue) {
            Acquired::Now(slot) => slot,
            Acquired::Wait(line) => Box::pin(self.wait_in_line(w, queue, line)).await?,
        };
        self.admission.slot = Some(slot);
        self.admission.queue = Some(queue);
        self.admission.started = Some(Instant::now());
        self.admission.sent_before = self.conn.bytes_sent();
        let limits = w.limits(queue);
        self.admission.limits = (!limits.is_empty()).then(|| limits.clone());
        if route == "upstream" {
            self.watch_upstream();
        }
        Ok(())
    }

    /// Which queue the statement belongs to.
    fn classify(&self, w: &Workload, route: &'static str, text: &Text<'_>) -> usize {
        let (sql, fingerprint) = if w.needs_fingerprint() || w.needs_tags() {
            match text {
                Text::Step(sql, decision, i) => (*sql, decision.step_label(sql, *i).fingerprint),
                Text::Whole(sql, decision) => (*sql, decision.label(sql).fingerprint),
                Text::Prepared(Some(p)) => (&*p.text, p.label.fingerprint),
                Text::Prepared(None) => ("", 0),
            }
        } else {
            ("", 0)
        };
        let tags = if w.needs_tags() {
            sqlcommenter::tags(sql)
        } else {
            Vec::new()
        };
        let application = sqlcommenter::tag(&tags, "application")
            .or_else(|| self.settings.get("application_name"))
            .unwrap_or("");
        w.classify(&workload::Statement {
            user: &self.identity.user,
            roles: &self.identity.roles,
            groups: &self.identity.groups,
            application,
            query_group: self.settings.get("query_group").filter(|g| !g.is_empty()),
            tags: &tags,
            route,
            fingerprint,
        })
    }

    /// Waits in line for a slot: NOTICE first, then until a slot, a cancel, or
    /// the queue timeout (53300).
    async fn wait_in_line(
        &mut self,
        w: &Workload,
        queue: usize,
        mut line: InLine,
    ) -> Result<Slot, PgError> {
        let q = w.queue(queue);
        let notice = w.waiting_notice(queue, line.ahead);
        self.notice_with(SqlState::SUCCESSFUL_COMPLETION, "NOTICE", &notice);
        if self.conn.flush().await.is_err() {
            return Err(client_gone());
        }
        self.board.status.waiting(true);
        let started = Instant::now();
        let signal = self.cancel.signal.clone();
        let canceled = signal.notified();
        let timeout = q.queue_timeout;
        let outcome = tokio::select! {
            biased;
            _ = canceled => Err(PgError::canceled()),
            slot = line.granted() => Ok(slot),
            _ = sleep_for(timeout) => Err(w.queue_timeout_error(queue)),
        };
        drop(line);
        self.board.status.waiting(false);
        let waited = started.elapsed();
        let m = metrics();
        m.workload_wait
            .with_label_values(&[&q.name])
            .observe(waited.as_secs_f64());
        let result = match &outcome {
            Ok(_) => "admitted",
            Err(e) if e.code == SqlState::QUERY_CANCELED => "canceled",
            Err(_) => "timed_out",
        };
        m.workload_waits.with_label_values(&[&q.name, result]).inc();
        self.admission.waited = waited;
        self.admission.queue = Some(queue);
        outcome
    }

    /// Arms the relay's limits (rows, bytes) and the time limit's timer for an
    /// admitted upstream statement.
    fn watch_upstream(&mut self) {
        let Some(limits) = self.admission.limits.clone() else {
            return;
        };
        let sent = self.conn.bytes_sent();
        let watch = Watch {
            rows: limits.rows.as_ref().map(|b| Limit {
                at: b.at,
                error: b.error.clone(),
                rule: b.rule.clone(),
            }),
            sent: limits.bytes.as_ref().map(|b| Limit {
                at: sent.saturating_add(b.at),
                error: b.error.clone(),
                rule: b.rule.clone(),
            }),
            ..Watch::default()
        };
        if let Some(b) = &limits.elapsed {
            let timed_out = watch.timed_out.clone();
            let limit = Limit {
                at: b.at.as_secs(),
                error: b.error.clone(),
                rule: b.rule.clone(),
            };
            let upstream = self.cancel.upstream.clone();
            let after = b.at;
            self.admission.timer = Some(AbortOnDrop(tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = timed_out.set(limit);
                let target = upstream.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(target) = target
                    && let Err(e) = crate::redshift::wire::send_cancel(&target).await
                {
                    tracing::warn!(error = %e.message, "could not cancel an upstream statement past its time limit");
                }
            })));
        }
        if let Some(f) = self.forward.as_mut() {
            f.watch = Some(Box::new(watch));
        }
    }

    /// The record stage's view of the admission: queue name, time in line and the
    /// rules that acted (`log` rules are judged here, at the end).
    pub(super) fn admission_record(
        &mut self,
        duration: Duration,
        rows: u64,
        bytes: u64,
    ) -> (Option<Arc<str>>, Duration, Vec<Fired>) {
        let Some(w) = self.shared.workload.clone() else {
            return (None, Duration::ZERO, Vec::new());
        };
        let Some(queue) = self.admission.queue else {
            return (None, Duration::ZERO, Vec::new());
        };
        let mut fired = std::mem::take(
            &mut *self
                .admission
                .fired
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let breached = self
            .forward
            .as_ref()
            .and_then(|f| f.watch.as_ref())
            .and_then(|w| w.breached())
            .and_then(|l| l.rule.clone());
        if let Some(rule) = breached {
            fired.push(Fired {
                rule,
                action: crate::config::RuleAction::Cancel,
            });
        }
        w.rules.at_end(queue, duration, rows, bytes, &mut fired);
        for f in &fired {
            metrics()
                .workload_rule_actions
                .with_label_values(&[&f.rule, f.action.name()])
                .inc();
        }
        let waited = std::mem::take(&mut self.admission.waited);
        (Some(w.queue(queue).name.clone()), waited, fired)
    }

    /// The statement (or relayed pipeline) ended: its slot goes back, unless
    /// relayed Executes of the pipeline are still under way.
    pub(super) fn release_slot(&mut self) {
        if self.admission.slot.is_none() && self.admission.queue.is_none() {
            return;
        }
        if self
            .forward
            .as_ref()
            .is_some_and(|f| !f.executing.is_empty())
        {
            return;
        }
        let a = &mut self.admission;
        a.slot = None;
        a.queue = None;
        a.limits = None;
        a.started = None;
        a.sent_before = 0;
        a.timer = None;
        a.waited = Duration::ZERO;
        a.fired.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if let Some(f) = self.forward.as_mut() {
            f.watch = None;
        }
    }

    /// What a lake statement's planning needs for the scan-size rules of its queue.
    pub(super) fn scan_rules(&self) -> Option<ScanRules> {
        let w = self.shared.workload.as_ref()?;
        let queue = self.admission.queue?;
        w.rules
            .checks_scans(queue)
            .then(|| (w.clone(), queue, self.admission.fired.clone()))
    }

    /// A lake statement went past a limit: its error, with the rule behind it
    /// (if any) on record.
    pub(super) fn breached<T>(&self, breach: Option<&Breach<T>>) -> PgError {
        let Some(breach) = breach else {
            return PgError::canceled();
        };
        if let Some(rule) = &breach.rule {
            self.admission
                .fired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Fired {
                    rule: rule.clone(),
                    action: crate::config::RuleAction::Cancel,
                });
        }
        breach.error.clone()
    }
}

/// The workload, the statement's queue, and where fired rules go.
pub(super) type ScanRules = (Arc<Workload>, usize, Arc<std::sync::Mutex<Vec<Fired>>>);

async fn sleep_for(limit: Option<Duration>) {
    match limit {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
