//! What sessions ask of the jobs: `CALL sluice.run_job('name')` (admins, or
//! holders of a role in the job's `grant_roles`) and `SHOW sluice.jobs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};

use super::store::{Run, Status};
use super::{Jobs, Overlap};
use crate::config::RoleConfig;
use crate::error::{PgError, SqlState};

/// Who asks to run a job now (roles expand through `includes` as the config read
/// at start defines them: jobs do not reload).
pub struct Caller<'a> {
    pub admin: bool,
    pub roles: &'a [String],
}

/// Columns of `SHOW sluice.jobs`.
pub const SHOW_COLUMNS: &[&str] = &[
    "job",
    "schedule",
    "target",
    "run_as",
    "enabled",
    "overlap",
    "next_run",
    "running",
    "last_status",
    "last_start",
    "last_end",
    "last_message",
];

fn timestamp(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f+00").to_string())
        .unwrap_or_default()
}

/// Whether `held` (with what they include) holds one of `wanted`.
fn holds_any(held: &[String], wanted: &[String], defined: &[RoleConfig]) -> bool {
    let mut seen = std::collections::BTreeSet::new();
    let mut stack: Vec<&str> = held.iter().map(String::as_str).collect();
    while let Some(name) = stack.pop() {
        if !seen.insert(name) {
            continue;
        }
        if wanted.iter().any(|w| w == name) {
            return true;
        }
        if let Some(r) = defined.iter().find(|r| r.name == name) {
            stack.extend(r.includes.iter().map(String::as_str));
        }
    }
    false
}

impl Jobs {
    /// `CALL sluice.run_job('name')`: one attempt now, on its own task (a caller
    /// that goes away does not stop it); the run, or its error.
    pub async fn run_now(
        self: &Arc<Self>,
        name: &str,
        caller: &Caller<'_>,
    ) -> Result<Run, PgError> {
        let job = self
            .jobs
            .get(&name.to_lowercase())
            .cloned()
            .ok_or_else(|| {
                PgError::new(
                    SqlState::UNDEFINED_OBJECT,
                    format!("job \"{name}\" does not exist"),
                )
            })?;
        if !caller.admin && !holds_any(caller.roles, &job.config.grant_roles, &self.roles) {
            return Err(PgError::new(
                SqlState::INSUFFICIENT_PRIVILEGE,
                format!("permission denied to run job \"{}\"", job.config.name),
            )
            .with_hint("admin roles, and holders of the job's grant_roles, may run it"));
        }
        let turn = match job.turn.clone().try_lock_owned().ok() {
            Some(turn) => Some(turn),
            None if job.config.overlap == Overlap::Skip => {
                return Err(PgError::new(
                    SqlState("55006"),
                    format!(
                        "job \"{}\" is running, and its overlap policy is skip",
                        job.config.name
                    ),
                ));
            }
            None => None,
        };
        let this = self.clone();
        let task = tokio::spawn(async move {
            let _turn = match turn {
                Some(t) => t,
                None => job.turn.clone().lock_owned().await,
            };
            this.run_attempts(&job, "manual", 1).await
        });
        let run = task.await.map_err(|e| {
            PgError::new(
                SqlState::INTERNAL_ERROR,
                format!("the job run ended abnormally: {e}"),
            )
        })?;
        if run.status == Status::Succeeded {
            return Ok(run);
        }
        let code = run
            .sqlstate
            .as_deref()
            .map(|c| SqlState::intern(c, SqlState::INTERNAL_ERROR))
            .unwrap_or(SqlState::INTERNAL_ERROR);
        Err(PgError::new(
            code,
            format!(
                "job \"{}\" {}: {}",
                run.job,
                run.status.as_str(),
                run.return_message
            ),
        )
        .with_hint(format!("run {} is in sluice.job_runs", run.runid)))
    }

    /// The rows of `SHOW sluice.jobs`: every job for admins, else the jobs the
    /// caller's roles are granted.
    pub fn listing(&self, caller: &Caller<'_>) -> Vec<Vec<String>> {
        self.jobs
            .values()
            .filter(|j| caller.admin || holds_any(caller.roles, &j.config.grant_roles, &self.roles))
            .map(|j| {
                let last = self.last_run(&j.config.name);
                let c = &j.config;
                vec![
                    c.name.clone(),
                    j.schedule.describe(),
                    c.target.clone(),
                    format!("{} ({})", c.run_as_role, self.username(j)),
                    c.enabled.to_string(),
                    match c.overlap {
                        Overlap::Skip => "skip".into(),
                        Overlap::Queue => "queue".into(),
                    },
                    if c.enabled {
                        timestamp(j.next_due())
                    } else {
                        String::new()
                    },
                    j.running.load(Ordering::Acquire).to_string(),
                    last.as_ref()
                        .map(|r| r.status.as_str().to_owned())
                        .unwrap_or_default(),
                    timestamp(last.as_ref().map(|r| r.start_time)),
                    timestamp(last.as_ref().and_then(|r| r.end_time)),
                    last.map(|r| r.return_message).unwrap_or_default(),
                ]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granted_roles_count_through_includes() {
        let roles: Vec<RoleConfig> = toml::from_str::<toml::Table>(
            "[[roles]]\nname = \"oncall\"\n[[roles]]\nname = \"sre\"\nincludes = [\"oncall\"]\n[[roles]]\nname = \"analyst\"\n",
        )
        .ok()
        .and_then(|t| t.get("roles").cloned())
        .and_then(|r| r.try_into().ok())
        .expect("roles");
        let granted = vec!["oncall".to_string()];
        assert!(holds_any(&["oncall".into()], &granted, &roles));
        assert!(holds_any(&["sre".into()], &granted, &roles));
        assert!(!holds_any(&["analyst".into()], &granted, &roles));
        assert!(!holds_any(&[], &granted, &roles));
        assert!(!holds_any(&["sre".into()], &[], &roles));
    }
}
