//! The one TOML file an admin writes: parsed strictly (unknown keys are errors) and
//! validated before anything listens, so a typo never silently changes behaviour.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod admin;
mod audit;
mod auth;
mod cache;
mod cluster;
mod distributed;
mod engine;
mod jobs;
mod lake;
mod ldap;
pub use admin::{AdminConfig, QueryGroupsConfig};
pub use audit::{
    AuditConfig, AuditFileConfig, AuditFormat, AuditOnFailure, AuditS3Config, AuditStdoutConfig,
};
pub use auth::{AuthConfig, GraphConfig, IssuerConfig, LocalUser, LoginConfig, OidcConfig};
pub use cache::{CacheConfig, MatViewDecl, MatViewsConfig};
pub use cluster::ClusterConfig;
pub use distributed::{
    DEFAULT_SCAN_THRESHOLD_MB, DistributedConfig, DistributedRoute, OnUnavailable, ScanThreshold,
};
pub use engine::{EngineConfig, MemoryLimit, PoolKind};
pub use jobs::{JobConfig, JobHistoryConfig, Overlap};
pub use lake::{GlueLakeConfig, S3Config};
pub use ldap::LdapConfig;
mod redshift;
mod roles;
pub mod values;
mod workload;
pub use redshift::{CredentialMode, PoolConfig, RedshiftConfig, UpstreamTls};
pub use roles::{AccessRules, RoleConfig, RoleMappingRule};
pub use workload::{Priority, QUEUE_ROUTES, QueueConfig, RuleAction, RuleConfig, WorkloadConfig};

/// A configuration problem, always naming the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub lake: LakeConfig,
    /// The lake engine's settings sessions may change (`[engine]`).
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub role_mapping: Vec<RoleMappingRule>,
    #[serde(default)]
    pub roles: Vec<RoleConfig>,
    #[serde(default)]
    pub log: LogConfig,
    /// Upstreams that statements not answered by the lake are forwarded to.
    #[serde(default)]
    pub redshift: Vec<RedshiftConfig>,
    /// The automatic result cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Gateway materialized views; off when absent.
    pub materialized_views: Option<MatViewsConfig>,
    /// The audit trail (logins, logoffs, statements); off when absent.
    pub audit: Option<AuditConfig>,
    /// The admin HTTP listener; off when absent.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Statistics per query group.
    #[serde(default)]
    pub query_groups: QueryGroupsConfig,
    /// Workload queues and query monitoring rules; none when absent.
    #[serde(default)]
    pub workload: WorkloadConfig,
    /// Scheduled SQL jobs.
    #[serde(default)]
    pub jobs: Vec<JobConfig>,
    /// Where job runs are kept.
    #[serde(default)]
    pub job_history: JobHistoryConfig,
    /// Several gateways as one service (cancel peering, shared cache
    /// invalidation); off when absent.
    pub cluster: Option<ClusterConfig>,
    /// Directory of the config file; relative paths in the config resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file this config was loaded from, for reloads.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The database name clients connect to; others are refused with 3D000.
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default)]
    pub tls: TlsConfig,
    /// Most concurrent client connections; further ones are refused with 53300.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a client may take from connect to finished authentication.
    #[serde(default = "default_auth_timeout")]
    pub auth_timeout_secs: u64,
    /// Threads serving connections (wire, TLS, relay), each session pinned to one;
    /// default: one per core. Lake queries run on their own threads whatever this says.
    pub worker_threads: Option<usize>,
    /// Session hygiene defaults (0 = off; roles may set their own): seconds a
    /// session may sit idle outside a transaction (FATAL 57P05), idle inside one
    /// (FATAL 25P03), and the most a session may live (FATAL 57P01 when next idle
    /// outside a transaction).
    #[serde(default)]
    pub idle_session_timeout_secs: u64,
    #[serde(default)]
    pub idle_in_transaction_session_timeout_secs: u64,
    #[serde(default)]
    pub max_session_age_secs: u64,
    /// Most concurrent sessions of one login name (53300 past it); 0 = no limit.
    #[serde(default)]
    pub max_connections_per_user: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            database: default_database(),
            tls: TlsConfig::default(),
            max_connections: default_max_connections(),
            auth_timeout_secs: default_auth_timeout(),
            worker_threads: None,
            idle_session_timeout_secs: 0,
            idle_in_transaction_session_timeout_secs: 0,
            max_session_age_secs: 0,
            max_connections_per_user: 0,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:5439".into()
}
fn default_database() -> String {
    "sluice".into()
}
fn default_max_connections() -> usize {
    1000
}
fn default_auth_timeout() -> u64 {
    30
}

/// Which clients may skip TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Plaintext {
    /// Every connection must negotiate TLS (the default).
    #[default]
    Never,
    /// Plaintext only from loopback addresses (development).
    Loopback,
    /// Plaintext from anywhere (behind a TLS-terminating proxy only).
    Always,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. Without `cert` and `key`, a self-signed certificate is generated.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub allow_plaintext: Plaintext,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LakeConfig {
    pub local: Option<LocalLakeConfig>,
    pub glue: Option<GlueLakeConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalLakeConfig {
    /// `<root>/<database>/<table>/[key=value/…]*.parquet|csv|json`
    pub root: PathBuf,
    /// Generate the NYC-taxi demo data set under `root` when it is missing.
    #[serde(default)]
    pub demo_data: bool,
    /// How long a table's file listing is reused before the directory is listed
    /// again (0: list on every query). Footers and file statistics are cached until
    /// the file changes, whatever this is.
    #[serde(default = "default_local_listing_ttl")]
    pub listing_ttl_secs: u64,
}

fn default_local_listing_ttl() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `sluice=debug,info`; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut config = Config::parse(&text, path, base_dir)?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// The parts of the config that reload without a restart.
    pub fn access_rules(&self) -> AccessRules {
        AccessRules {
            role_mapping: self.role_mapping.clone(),
            roles: self.roles.clone(),
            base_role: self.auth.base_role.clone(),
        }
    }

    pub fn parse(text: &str, path: &Path, base_dir: PathBuf) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.base_dir = base_dir;
        config.validate(path)?;
        Ok(config)
    }

    /// A path from the config, resolved against the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base_dir.join(p)
        }
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.server.listen.parse().map_err(|e| {
            format!(
                "`{}` is not a socket address such as 127.0.0.1:5439 ({e})",
                self.server.listen
            )
        })
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        self.listen_addr()
            .map_err(|m| invalid("server.listen".into(), m))?;
        self.admin.validate().map_err(|(k, m)| invalid(k, m))?;
        self.query_groups
            .validate()
            .map_err(|(k, m)| invalid(k, m))?;
        self.workload.validate().map_err(|(k, m)| invalid(k, m))?;
        if self.server.database.is_empty() {
            return Err(invalid(
                "server.database".into(),
                "must not be empty".into(),
            ));
        }
        if self.server.max_connections == 0 {
            return Err(invalid(
                "server.max_connections".into(),
                "must be at least 1".into(),
            ));
        }
        match (&self.server.tls.cert, &self.server.tls.key) {
            (Some(_), None) => {
                return Err(invalid(
                    "server.tls.key".into(),
                    "is required when server.tls.cert is set".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "server.tls.cert".into(),
                    "is required when server.tls.key is set".into(),
                ));
            }
            _ => {}
        }
        let mut names = BTreeSet::new();
        for (i, user) in self.auth.users.iter().enumerate() {
            let key = |field: &str| format!("auth.users[{i}].{field}");
            if user.name.is_empty() {
                return Err(invalid(key("name"), "must not be empty".into()));
            }
            if !names.insert(user.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("user `{}` is defined twice", user.name),
                ));
            }
            match (&user.password, &user.scram) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        key("scram"),
                        "set either `password` or `scram`, not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(invalid(
                        key("password"),
                        "a local user needs `password` or `scram`".into(),
                    ));
                }
                (None, Some(verifier)) => {
                    values::parse_scram_verifier(verifier).map_err(|m| invalid(key("scram"), m))?;
                }
                (Some(p), None) if p.is_empty() => {
                    return Err(invalid(key("password"), "must not be empty".into()));
                }
                _ => {}
            }
        }
        if let Some(oidc) = &self.auth.oidc {
            if oidc.issuers.is_empty() {
                return Err(invalid(
                    "auth.oidc.issuers".into(),
                    "list at least one issuer".into(),
                ));
            }
            if oidc.leeway_secs > 600 {
                return Err(invalid(
                    "auth.oidc.leeway_secs".into(),
                    "at most 600 seconds".into(),
                ));
            }
            if let Some(g) = &oidc.graph
                && !(1..=86_400).contains(&g.cache_ttl_secs)
            {
                return Err(invalid(
                    "auth.oidc.graph.cache_ttl_secs".into(),
                    "from 1 to 86400 seconds".into(),
                ));
            }
            let url_ok = |u: &str| {
                u.starts_with("https://") || (oidc.allow_insecure_http && u.starts_with("http://"))
            };
            let url_msg = || {
                "must be an https:// URL (http:// only with auth.oidc.allow_insecure_http, for development)".to_string()
            };
            for (i, iss) in oidc.issuers.iter().enumerate() {
                let key = |f: &str| format!("auth.oidc.issuers[{i}].{f}");
                if !url_ok(&iss.issuer) {
                    return Err(invalid(key("issuer"), url_msg()));
                }
                for (field, url) in [
                    ("discovery_url", &iss.discovery_url),
                    ("jwks_uri", &iss.jwks_uri),
                ] {
                    if let Some(u) = url
                        && !url_ok(u)
                    {
                        return Err(invalid(key(field), url_msg()));
                    }
                }
                if iss.audiences.is_empty() {
                    return Err(invalid(
                        key("audiences"),
                        "list at least one accepted audience".into(),
                    ));
                }
                for alg in &iss.algorithms {
                    values::parse_algorithm(alg).map_err(|m| invalid(key("algorithms"), m))?;
                }
                if iss.username_claims.is_empty() {
                    return Err(invalid(
                        key("username_claims"),
                        "list at least one claim".into(),
                    ));
                }
            }
        }
        if let Some(ldap) = &self.auth.ldap {
            ldap.validate()
                .map_err(|(k, m)| invalid(format!("auth.ldap.{k}"), m))?;
        }
        self.validate_roles(path)?;
        if let Some(graph) = self.auth.oidc.as_ref().and_then(|o| o.graph.as_ref())
            && graph.client_secret_env.is_some() == graph.client_secret_file.is_some()
        {
            return Err(invalid(
                "auth.oidc.graph.client_secret_env".into(),
                "set exactly one of client_secret_env and client_secret_file".into(),
            ));
        }
        for (i, rule) in self.role_mapping.iter().enumerate() {
            let key = |f: &str| format!("role_mapping[{i}].{f}");
            let conditions = [
                &rule.group,
                &rule.app_role,
                &rule.username,
                &rule.tenant,
                &rule.claim,
            ]
            .iter()
            .filter(|c| c.is_some())
            .count();
            if conditions == 0 {
                return Err(invalid(
                    key("group"),
                    "a rule needs at least one of group, app_role, username, tenant, claim".into(),
                ));
            }
            if rule.claim.is_some() != rule.value.is_some() {
                return Err(invalid(
                    key("value"),
                    "`claim` and `value` go together".into(),
                ));
            }
            if rule.roles.is_empty() {
                return Err(invalid(
                    key("roles"),
                    "list the roles this rule grants".into(),
                ));
            }
        }
        if let Some(local) = &self.lake.local
            && local.root.as_os_str().is_empty()
        {
            return Err(invalid(
                "lake.local.root".into(),
                "must not be empty".into(),
            ));
        }
        if self.server.worker_threads == Some(0) {
            return Err(invalid(
                "server.worker_threads".into(),
                "must be at least 1".into(),
            ));
        }
        self.cache
            .validate()
            .map_err(|(k, m)| invalid(format!("cache.{k}"), m))?;
        self.engine
            .validate()
            .map_err(|(k, m)| invalid(format!("engine.{k}"), m))?;
        if let Some(mv) = &self.materialized_views {
            mv.validate(&self.roles, self.cluster.is_some())
                .map_err(|(k, m)| invalid(format!("materialized_views.{k}"), m))?;
        }
        if let Some(audit) = &self.audit {
            audit.validate().map_err(|(k, m)| invalid(k, m))?;
        }
        if let Some(glue) = &self.lake.glue {
            glue.validate()
                .map_err(|(k, m)| invalid(format!("lake.glue.{k}"), m))?;
        }
        let mut upstreams = BTreeSet::new();
        for (i, r) in self.redshift.iter().enumerate() {
            r.validate()
                .map_err(|(k, m)| invalid(format!("redshift[{i}].{k}"), m))?;
            if !upstreams.insert(r.name.as_str()) {
                return Err(invalid(
                    format!("redshift[{i}].name"),
                    format!("upstream `{}` is defined twice", r.name),
                ));
            }
            if r.name == self.server.database {
                return Err(invalid(
                    format!("redshift[{i}].name"),
                    "must differ from server.database (clients of server.database use the first upstream)".into(),
                ));
            }
        }
        self.validate_jobs().map_err(|(k, m)| invalid(k, m))?;
        if let Some(cluster) = &self.cluster {
            let views = self.materialized_views.as_ref().map(|m| m.storage.as_str());
            cluster
                .validate(views)
                .map_err(|(k, m)| invalid(format!("cluster.{k}"), m))?;
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level".into(), e.to_string()))?;
        Ok(())
    }
}

impl Config {
    /// `[[jobs]]` and `[job_history]`: names unique, roles and targets defined.
    fn validate_jobs(&self) -> Result<(), (String, String)> {
        self.job_history
            .validate()
            .map_err(|(k, m)| (format!("job_history.{k}"), m))?;
        let mut names = BTreeSet::new();
        for (i, job) in self.jobs.iter().enumerate() {
            let key = |k: &str| format!("jobs[{i}].{k}");
            job.validate(&self.roles, &self.redshift)
                .map_err(|(k, m)| (key(&k), m))?;
            if !names.insert(job.name.to_lowercase()) {
                return Err((key("name"), format!("job `{}` is defined twice", job.name)));
            }
        }
        Ok(())
    }

    /// Where job runs live: `job_history.storage`, else beside the views, else the
    /// directory `jobs` next to the config file.
    pub fn job_storage(&self) -> &str {
        self.job_history
            .storage
            .as_deref()
            .or(self.materialized_views.as_ref().map(|m| m.storage.as_str()))
            .unwrap_or("jobs")
    }

    /// Where gateways share cache invalidations: `cluster.storage`, else beside the
    /// views (validation makes sure one is set when `[cluster]` is).
    pub fn cluster_storage(&self) -> Option<&str> {
        let cluster = self.cluster.as_ref()?;
        cluster
            .storage
            .as_deref()
            .or(self.materialized_views.as_ref().map(|m| m.storage.as_str()))
    }
}

#[cfg(test)]
mod tests;
