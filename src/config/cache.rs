//! `[cache]` (the automatic result cache) and `[materialized_views]` (gateway
//! materialized views).

use serde::Deserialize;

/// The automatic result cache. Off unless `result_ttl_secs` (or a role's
/// `result_cache_ttl_secs`) is above zero: serving a cached answer is a staleness
/// trade-off the operator makes explicitly.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// How long a cached result is served; 0 turns the cache off for roles that do
    /// not set their own `result_cache_ttl_secs`.
    #[serde(default)]
    pub result_ttl_secs: u64,
    /// Memory for cached results (encoded rows and keys), in MiB.
    #[serde(default = "default_max_mb")]
    pub result_max_mb: u64,
    /// Results bigger than this (MiB) are streamed but not cached.
    #[serde(default = "default_max_entry_mb")]
    pub result_max_entry_mb: u64,
    /// How long a statement waits for the same statement already running for another
    /// session (stampede protection) before running on its own.
    #[serde(default = "default_wait")]
    pub result_wait_secs: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            result_ttl_secs: 0,
            result_max_mb: default_max_mb(),
            result_max_entry_mb: default_max_entry_mb(),
            result_wait_secs: default_wait(),
        }
    }
}

impl CacheConfig {
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if self.result_max_mb == 0 {
            return Err(("result_max_mb".into(), "must be at least 1".into()));
        }
        if self.result_max_entry_mb == 0 || self.result_max_entry_mb > self.result_max_mb {
            return Err((
                "result_max_entry_mb".into(),
                format!(
                    "must be between 1 and result_max_mb ({})",
                    self.result_max_mb
                ),
            ));
        }
        if self.result_max_mb > 1024 * 1024 {
            return Err((
                "result_max_mb".into(),
                "must be at most 1048576 (1 TiB)".into(),
            ));
        }
        Ok(())
    }
}

fn default_max_mb() -> u64 {
    256
}

fn default_max_entry_mb() -> u64 {
    16
}

fn default_wait() -> u64 {
    60
}

/// Gateway materialized views: where they live, who refreshes them, and the views
/// declared in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatViewsConfig {
    /// Schemas that hold gateway views. `CREATE/REFRESH/DROP MATERIALIZED VIEW` on a
    /// name in one of them is handled by Sluice; elsewhere it goes to Redshift.
    #[serde(default = "default_schemas")]
    pub schemas: Vec<String>,
    /// Where view data (Parquet) and definitions live: a directory (relative to the
    /// config file) or `s3://bucket/prefix`.
    #[serde(default = "default_storage")]
    pub storage: String,
    /// The login name views refresh as (it fills `{user}` in `redshift_user`).
    #[serde(default = "default_refresh_user")]
    pub refresh_user: String,
    /// The roles views refresh with: their lake grants decide what a view may read
    /// from the lake, their `redshift_user` / `redshift_groups` the Redshift identity.
    #[serde(default)]
    pub refresh_roles: Vec<String>,
    /// How long files of a replaced version are kept for readers still scanning it
    /// (on this gateway and on others sharing the storage).
    #[serde(default = "default_keep")]
    pub keep_replaced_secs: u64,
    /// How often a gateway reads the changes other gateways sharing the storage
    /// made to views (created, refreshed, dropped), in milliseconds; 0 turns
    /// reading them off. Default: 1000 with `[cluster]`, else 0 (one LIST request
    /// a second on S3 is wasted on a gateway nobody shares the storage with).
    pub sync_ms: Option<u64>,
    /// Views declared here are created at start-up when missing (and kept in step
    /// with their definition here).
    #[serde(default)]
    pub views: Vec<MatViewDecl>,
}

/// One `[[materialized_views.views]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatViewDecl {
    /// `schema.name`, the schema one of `materialized_views.schemas`.
    pub name: String,
    pub query: String,
    /// Refresh every this many seconds.
    pub refresh_every_secs: Option<u64>,
    /// Or on a cron schedule (seconds minutes hours day-of-month month day-of-week,
    /// UTC), e.g. `"0 */15 * * * *"`.
    pub refresh_cron: Option<String>,
    /// Refreshes append only rows whose value in this column is above the highest
    /// value already stored.
    pub incremental_column: Option<String>,
}

impl MatViewsConfig {
    pub(super) fn validate(
        &self,
        roles: &[super::RoleConfig],
        clustered: bool,
    ) -> Result<(), (String, String)> {
        if self.schemas.is_empty() {
            return Err(("schemas".into(), "name at least one schema".into()));
        }
        for s in &self.schemas {
            if s.is_empty() || s.contains('.') || s != &s.to_lowercase() {
                return Err((
                    "schemas".into(),
                    format!("`{s}`: schema names must be lower case without dots"),
                ));
            }
            if matches!(
                s.as_str(),
                "public" | "pg_catalog" | "information_schema" | "_jobs" | "_views" | "_cluster"
            ) {
                return Err(("schemas".into(), format!("`{s}` is reserved")));
            }
        }
        check_storage(&self.storage).map_err(|m| ("storage".to_string(), m))?;
        let sync_ms = self.sync_interval_ms(clustered);
        if sync_ms != 0 && !(50..=600_000).contains(&sync_ms) {
            return Err((
                "sync_ms".into(),
                "0 (off) or from 50 to 600000 milliseconds".into(),
            ));
        }
        if self.keep_replaced_secs.saturating_mul(1000) < sync_ms.saturating_mul(2) {
            return Err((
                "keep_replaced_secs".into(),
                format!(
                    "must be at least twice sync_ms ({sync_ms} ms): gateways that have not read a refresh yet still scan the version it replaced (sync_ms = 0 when no other gateway shares the storage)"
                ),
            ));
        }
        if self.refresh_user.trim().is_empty() {
            return Err(("refresh_user".into(), "must not be empty".into()));
        }
        for r in &self.refresh_roles {
            if !roles.iter().any(|d| &d.name == r) {
                return Err((
                    "refresh_roles".into(),
                    format!("role `{r}` is not defined in [[roles]]"),
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, v) in self.views.iter().enumerate() {
            let key = |k: &str| format!("views[{i}].{k}");
            let lowered = v.name.to_lowercase();
            let Some((schema, name)) = lowered.split_once('.') else {
                return Err((key("name"), format!("`{}` is not `schema.name`", v.name)));
            };
            if name.is_empty() || name.contains('.') || !self.schemas.iter().any(|s| s == schema) {
                return Err((
                    key("name"),
                    format!(
                        "`{}`: the schema must be one of materialized_views.schemas ({})",
                        v.name,
                        self.schemas.join(", ")
                    ),
                ));
            }
            if !seen.insert(lowered.clone()) {
                return Err((key("name"), format!("`{}` is declared twice", v.name)));
            }
            if v.query.trim().is_empty() {
                return Err((key("query"), "must not be empty".into()));
            }
            if v.refresh_every_secs == Some(0) {
                return Err((key("refresh_every_secs"), "must be at least 1".into()));
            }
            if v.refresh_every_secs.is_some() && v.refresh_cron.is_some() {
                return Err((
                    key("refresh_cron"),
                    "set refresh_every_secs or refresh_cron, not both".into(),
                ));
            }
            if let Some(c) = &v.refresh_cron {
                super::values::parse_cron(c).map_err(|e| (key("refresh_cron"), e))?;
            }
        }
        Ok(())
    }
}

/// A storage location: a directory or `s3://bucket/prefix` (views, job runs).
pub(super) fn check_storage(storage: &str) -> Result<(), String> {
    if storage.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(rest) = storage.strip_prefix("s3://")
        && rest.trim_matches('/').is_empty()
    {
        return Err("name a bucket: s3://bucket/prefix".into());
    }
    if storage.contains("://") && !storage.starts_with("s3://") {
        return Err("must be a directory or an s3://bucket/prefix URL".into());
    }
    Ok(())
}

fn default_schemas() -> Vec<String> {
    vec!["mv".into()]
}

fn default_storage() -> String {
    "matviews".into()
}

fn default_refresh_user() -> String {
    "sluice_refresh".into()
}

fn default_keep() -> u64 {
    300
}

impl MatViewsConfig {
    /// `sync_ms` as it applies: the default depends on `[cluster]`.
    pub fn sync_interval_ms(&self, clustered: bool) -> u64 {
        self.sync_ms.unwrap_or(if clustered { 1000 } else { 0 })
    }
}
