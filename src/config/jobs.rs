//! `[[jobs]]` (scheduled SQL jobs) and `[job_history]` (where their runs are kept).

use serde::Deserialize;

use super::RoleConfig;

/// One scheduled SQL job: statements run in order, on a schedule, under a role's
/// minted identity (upstream) or policy (lake).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Letters, digits, `_`, `-` and `.`; unique. Names the job in `CALL
    /// sluice.run_job('name')`, in metrics and in the run history's paths.
    pub name: String,
    /// A cron expression with seconds (`sec min hour day-of-month month day-of-week
    /// [year]`; a five-field one gets second 0), read in `time_zone`.
    pub schedule: Option<String>,
    /// Or an interval: runs at every multiple of this many seconds since the Unix
    /// epoch (so every gateway sharing the storage agrees on the ticks).
    pub every_secs: Option<u64>,
    /// The IANA time zone the cron expression is read in (`Europe/Paris`).
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// The statements of one run, in order; a run stops at the first error.
    pub statements: Vec<String>,
    /// The role the statements run as: on an upstream its `redshift_user` /
    /// `redshift_groups` (through `includes` too) give the minted identity; on the
    /// lake its read grants.
    pub run_as_role: String,
    /// The name that fills `{user}` in the role's `redshift_user`.
    #[serde(default = "default_run_as_user")]
    pub run_as_user: String,
    /// `"lake"` or the name of a `[[redshift]]` upstream.
    pub target: String,
    /// Longest a run may take; then it is cancelled (status `timed out`).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Further attempts after a failed or timed-out scheduled run.
    #[serde(default)]
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    #[serde(default = "default_backoff")]
    pub retry_backoff_secs: u64,
    /// What a tick does while the previous run still runs.
    #[serde(default)]
    pub overlap: Overlap,
    /// A disabled job is not scheduled (`CALL sluice.run_job` still runs it).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Roles whose holders may `CALL sluice.run_job('name')` (admins always may).
    #[serde(default)]
    pub grant_roles: Vec<String>,
}

/// A tick that finds the previous run still running is skipped (recorded as
/// `skipped`), or queued to run when it ends (at most one waits; later ticks are
/// skipped while one does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    #[default]
    Skip,
    Queue,
}

/// Where job runs are kept. Without `storage`: beside the views
/// (`materialized_views.storage`), else the directory `jobs` next to the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobHistoryConfig {
    /// A directory (relative to the config file) or `s3://bucket/prefix`; runs and
    /// leases go under `<storage>/_jobs/`.
    pub storage: Option<String>,
    /// Runs kept per job (older ones are deleted).
    #[serde(default = "default_keep_runs")]
    pub keep_runs: usize,
}

impl Default for JobHistoryConfig {
    fn default() -> Self {
        JobHistoryConfig {
            storage: None,
            keep_runs: default_keep_runs(),
        }
    }
}

fn default_time_zone() -> String {
    "UTC".into()
}
fn default_run_as_user() -> String {
    "sluice_job".into()
}
fn default_timeout() -> u64 {
    3600
}
fn default_backoff() -> u64 {
    30
}
fn default_enabled() -> bool {
    true
}
fn default_keep_runs() -> usize {
    100
}

/// Whether `role` (or a role it includes) names a `redshift_user`.
fn gives_redshift_user(role: &str, roles: &[RoleConfig]) -> bool {
    let mut seen = std::collections::BTreeSet::new();
    let mut stack = vec![role];
    while let Some(name) = stack.pop() {
        if !seen.insert(name) {
            continue;
        }
        if let Some(r) = roles.iter().find(|r| r.name == name) {
            if r.redshift_user.is_some() {
                return true;
            }
            stack.extend(r.includes.iter().map(String::as_str));
        }
    }
    false
}

impl JobHistoryConfig {
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if let Some(s) = &self.storage {
            super::cache::check_storage(s).map_err(|m| ("storage".to_string(), m))?;
        }
        if !(1..=100_000).contains(&self.keep_runs) {
            return Err(("keep_runs".into(), "from 1 to 100000".into()));
        }
        Ok(())
    }
}

impl JobConfig {
    /// Checks one job; keys are relative to the job (`schedule`, `target`, …).
    pub(super) fn validate(
        &self,
        roles: &[RoleConfig],
        upstreams: &[super::RedshiftConfig],
    ) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        if self.name.is_empty()
            || self.name.len() > 63
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            || self.name.starts_with('.')
        {
            return err(
                "name",
                format!(
                    "`{}`: 1 to 63 letters, digits, `_`, `-` or `.` (not leading)",
                    self.name
                ),
            );
        }
        match (&self.schedule, self.every_secs) {
            (Some(_), Some(_)) => {
                return err("every_secs", "set schedule or every_secs, not both".into());
            }
            (None, None) => {
                return err(
                    "schedule",
                    "set a cron schedule (with seconds) or every_secs".into(),
                );
            }
            (Some(c), None) => {
                super::values::parse_cron(c).map_err(|m| ("schedule".to_string(), m))?;
            }
            (None, Some(0)) => return err("every_secs", "must be at least 1".into()),
            (None, Some(_)) => {}
        }
        super::values::parse_time_zone(&self.time_zone)
            .map_err(|m| ("time_zone".to_string(), m))?;
        if self.statements.is_empty() {
            return err("statements", "list at least one statement".into());
        }
        if let Some(i) = self.statements.iter().position(|s| s.trim().is_empty()) {
            return err("statements", format!("statement {} is empty", i + 1));
        }
        if !roles.iter().any(|r| r.name == self.run_as_role) {
            return err(
                "run_as_role",
                format!("role `{}` is not defined in [[roles]]", self.run_as_role),
            );
        }
        if self.run_as_user.trim().is_empty() {
            return err("run_as_user", "must not be empty".into());
        }
        if self.target != "lake" {
            let Some(upstream) = upstreams.iter().find(|u| u.name == self.target) else {
                let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                return err(
                    "target",
                    format!(
                        "`{}` is neither \"lake\" nor a [[redshift]] upstream name{}",
                        self.target,
                        if names.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", names.join(", "))
                        }
                    ),
                );
            };
            if upstream.credentials == super::CredentialMode::Static {
                return err(
                    "target",
                    format!(
                        "upstream `{}` logs in with a stored password (credentials = \"static\"); jobs run only under minted identities",
                        self.target
                    ),
                );
            }
            if !gives_redshift_user(&self.run_as_role, roles) {
                return err(
                    "run_as_role",
                    format!(
                        "role `{}` has no redshift_user, so it gives no identity on upstream `{}` (jobs never use stored passwords)",
                        self.run_as_role, self.target
                    ),
                );
            }
        }
        if !(1..=7 * 86_400).contains(&self.timeout_secs) {
            return err("timeout_secs", "from 1 to 604800 (7 days)".into());
        }
        if self.retries > 100 {
            return err("retries", "at most 100".into());
        }
        if self.retry_backoff_secs > 86_400 {
            return err("retry_backoff_secs", "at most 86400".into());
        }
        for g in &self.grant_roles {
            if !roles.iter().any(|r| &r.name == g) {
                return err(
                    "grant_roles",
                    format!("role `{g}` is not defined in [[roles]]"),
                );
            }
        }
        Ok(())
    }
}
