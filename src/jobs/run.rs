//! Running a job's statements once: in order, stopping at the first error, within
//! the job's timeout.
//!
//! - On an upstream, on one session opened with the role's minted identity
//!   (`redshift::identity_for` → `Upstream::open`, the pool and credential cache
//!   every session uses), each statement a simple query outside any transaction
//!   block (as pg_cron runs them: `VACUUM` and `UNLOAD` cannot run in one), its rows
//!   counted from the CommandComplete tags. A timeout sends the upstream a cancel
//!   request and closes the session.
//! - On the lake, through the engine with the role's policy (read-only, like any
//!   lake statement), rows counted as they stream.
//! - `REFRESH MATERIALIZED VIEW` naming a gateway view refreshes it
//!   (`MatViews::refresh`) whatever the target; a timeout stops waiting for it, the
//!   refresh itself finishes (a view refresh is never left half done).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::{Job, Jobs};
use crate::engine::QueryContext;
use crate::error::{PgError, SqlState};
use crate::redshift::credentials::DbIdentity;
use crate::redshift::{Held, Upstream, identity_for};
use crate::route::view_ddl::{MatViewStatement, ViewName};

/// Why a run did not succeed: which statement (1-based) and what happened.
pub(super) enum Failure {
    Error(usize, PgError),
    TimedOut(usize),
}

/// Session parameters of a job's upstream sessions.
fn upstream_params(job: &Job) -> Vec<(String, String)> {
    [
        (
            "application_name",
            format!("sluice-job:{}", job.config.name),
        ),
        ("TimeZone", job.config.time_zone.clone()),
        ("DateStyle", "ISO, MDY".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

impl Jobs {
    /// The database identity a job runs as upstream (`None`: its role gives none).
    pub(super) fn identity(&self, job: &Job) -> Option<DbIdentity> {
        identity_for(
            &job.config.run_as_user,
            std::slice::from_ref(&job.config.run_as_role),
            &self.roles,
        )
    }

    /// The name `sluice.job_runs` shows as the user: the database user upstream, the
    /// run-as user on the lake.
    pub(super) fn username(&self, job: &Job) -> String {
        match (&job.upstream, self.identity(job)) {
            (Some(_), Some(id)) => id.user,
            _ => job.config.run_as_user.clone(),
        }
    }

    /// Runs every statement once; the rows they reported.
    pub(super) async fn execute(&self, job: &Job) -> Result<u64, Failure> {
        let deadline = Instant::now() + Duration::from_secs(job.config.timeout_secs);
        let mut held: Option<Held> = None;
        let mut at = 0usize;
        let finished =
            tokio::time::timeout_at(deadline, self.statements(job, &mut held, &mut at)).await;
        let result = match finished {
            Ok(r) => r,
            // `at`: the statement under way when the timeout struck.
            Err(_) => Err(Failure::TimedOut(at.max(1))),
        };
        if let (Some(h), Some(upstream)) = (held, &job.upstream) {
            let clean = result.is_ok() && h.conn.status == b'I';
            if matches!(result, Err(Failure::TimedOut(_)))
                && let Some(target) = h.conn.cancel.clone()
            {
                // Stop the statement upstream; the session is closed, not reused.
                if let Err(e) = crate::redshift::wire::send_cancel(&target).await {
                    tracing::warn!(job = %job.config.name, error = %e.message, "cannot cancel a timed-out job statement upstream");
                }
            }
            upstream.release(h, clean).await;
        }
        result
    }

    async fn statements(
        &self,
        job: &Job,
        held: &mut Option<Held>,
        at: &mut usize,
    ) -> Result<u64, Failure> {
        let mut rows = 0u64;
        for (i, sql) in job.config.statements.iter().enumerate() {
            *at = i + 1;
            let counted = match self.gateway_view_refresh(sql) {
                Some(Ok((name, with_data))) => self.refresh_view(name, with_data).await,
                Some(Err(e)) => Err(e),
                None => match &job.upstream {
                    Some(upstream) => self.on_upstream(job, upstream, held, sql).await,
                    None => self.on_lake(job, sql).await,
                },
            };
            rows = rows.saturating_add(counted.map_err(|e| Failure::Error(i + 1, e))?);
        }
        Ok(rows)
    }

    /// `REFRESH MATERIALIZED VIEW <gateway view>`; other view DDL is refused.
    fn gateway_view_refresh(&self, sql: &str) -> Option<Result<(ViewName, bool), PgError>> {
        let views = self.matviews.as_ref()?;
        let recognized = crate::route::view_ddl::recognize(sql, views.schemas(), |n| {
            views.resolve_unqualified(n)
        })?;
        Some(recognized.and_then(|stmt| match stmt {
            MatViewStatement::Refresh {
                name, with_data, ..
            } => Ok((name, with_data)),
            other => Err(PgError::new(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!(
                    "a job may refresh gateway views, not run {} on them",
                    other.tag()
                ),
            )),
        }))
    }

    /// Refreshes a gateway view on its own task: a timeout stops the wait, never the
    /// refresh halfway.
    async fn refresh_view(&self, name: ViewName, with_data: bool) -> Result<u64, PgError> {
        let Some(views) = self.matviews.clone() else {
            return Err(PgError::new(
                SqlState::UNDEFINED_TABLE,
                "materialized views are not configured",
            ));
        };
        let task = tokio::spawn(async move { views.refresh(&name, with_data).await });
        match task.await {
            Ok(r) => r.map(|o| o.rows),
            Err(e) => Err(PgError::new(
                SqlState::INTERNAL_ERROR,
                format!("the view refresh task ended abnormally: {e}"),
            )),
        }
    }

    /// One statement upstream, on the job's session (opened on first use).
    async fn on_upstream(
        &self,
        job: &Job,
        upstream: &Arc<Upstream>,
        held: &mut Option<Held>,
        sql: &str,
    ) -> Result<u64, PgError> {
        if held.is_none() {
            let identity = self.identity(job).ok_or_else(|| {
                PgError::new(
                    SqlState::INSUFFICIENT_PRIVILEGE,
                    format!(
                        "role \"{}\" gives no redshift_user, so the job has no identity upstream",
                        job.config.run_as_role
                    ),
                )
            })?;
            *held = Some(
                upstream
                    .open(&identity, &upstream_params(job), true)
                    .await?,
            );
        }
        let Some(h) = held.as_mut() else {
            return Err(PgError::new(
                SqlState::INTERNAL_ERROR,
                "no upstream session",
            ));
        };
        h.conn.run_counted(sql).await
    }

    /// One statement on the lake, with the run-as role's policy.
    async fn on_lake(&self, job: &Job, sql: &str) -> Result<u64, PgError> {
        let qc = self.lake_context(job);
        let mut rows = 0u64;
        for stmt in self.engine.parse(sql)? {
            let plan = self.engine.plan(&stmt, &qc).await?;
            let mut stream = self.engine.execute(plan, &qc).await?;
            while let Some(batch) = stream.next().await {
                rows = rows.saturating_add(batch.map_err(PgError::from)?.num_rows() as u64);
            }
        }
        Ok(rows)
    }

    /// The lake context of a job: its role's policy, and upstream tables under its
    /// minted identity when the role has one (cross-engine statements).
    fn lake_context(&self, job: &Job) -> QueryContext {
        let remote = self.upstreams.first().and_then(|u| {
            let identity = self.identity(job)?;
            let remote: Arc<dyn crate::engine::RemoteTables> =
                Arc::new(crate::redshift::table::RemoteCatalog::new(
                    u.clone(),
                    identity,
                    &upstream_params(job),
                ));
            Some(remote)
        });
        QueryContext {
            user: job.config.run_as_user.clone(),
            search_path: "public".into(),
            time_zone: job.config.time_zone.clone(),
            backend_pid: 0,
            policy: job.policy.clone(),
            remote,
            vars: Default::default(),
        }
    }
}
