//! `[[redshift]]`: the upstreams statements are forwarded to.

use std::path::PathBuf;

use serde::Deserialize;

/// One Redshift (or any PostgreSQL-protocol) upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedshiftConfig {
    /// How clients pick this upstream: connecting to database `<name>` selects it; the
    /// first `[[redshift]]` also serves clients of `server.database`.
    pub name: String,
    /// Provisioned cluster (for DescribeClusters and GetClusterCredentials*).
    pub cluster_identifier: Option<String>,
    /// Serverless workgroup (for GetWorkgroup and GetCredentials).
    pub workgroup: Option<String>,
    /// AWS region of the cluster or workgroup.
    pub region: Option<String>,
    /// The database on the upstream.
    pub database: String,
    /// Endpoint address; when absent it comes from DescribeClusters / GetWorkgroup.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// AWS API endpoint override (e.g. a local `moto_server`), for testing.
    pub aws_endpoint: Option<String>,
    #[serde(default)]
    pub tls: UpstreamTls,
    /// PEM bundle of CAs trusted for the upstream's certificate; default: the
    /// system's trust store (Redshift certificates chain to public Amazon roots).
    pub ca_file: Option<PathBuf>,
    /// Answer an upstream that asks for a cleartext or MD5 password although its
    /// certificate is not verified (`tls = "require"` or `"disable"`). Off by
    /// default: whoever sits between Sluice and such an upstream could read the
    /// password (cleartext) or attack it offline (MD5). SCRAM is always allowed.
    #[serde(default)]
    pub allow_unverified_password: bool,
    pub credentials: CredentialMode,
    /// GetClusterCredentials `AutoCreate`: create the database user on first login.
    #[serde(default)]
    pub auto_create: bool,
    /// Lifetime of minted credentials (900–3600 seconds).
    #[serde(default = "default_duration")]
    pub duration_seconds: u32,
    /// Mint again this many seconds before the credential expires.
    #[serde(default = "default_refresh_ahead")]
    pub refresh_ahead_secs: u64,
    /// `static` mode: the database user…
    pub user: Option<String>,
    /// …and where its password is (never in this file): an environment variable…
    pub password_env: Option<String>,
    /// …or a file, relative to this config's directory.
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub pool: PoolConfig,
}

/// How the upstream's certificate is checked. Redshift requires TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    /// TLS, certificate chain and host name verified.
    #[default]
    VerifyFull,
    /// TLS, certificate chain verified, any host name.
    VerifyCa,
    /// TLS without verification (encryption against passive eavesdroppers only).
    Require,
    /// No TLS: only for PostgreSQL-protocol upstreams on a trusted network.
    Disable,
}

/// Where the database password for an upstream session comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialMode {
    /// `redshift:GetClusterCredentials`: DbUser from the role's `redshift_user`,
    /// DbGroups from the roles' `redshift_groups`.
    GetClusterCredentials,
    /// `redshift:GetClusterCredentialsWithIAM`: the database user is Sluice's own IAM
    /// identity (every session of the upstream shares it).
    GetClusterCredentialsWithIam,
    /// `redshift-serverless:GetCredentials` for a workgroup (Sluice's IAM identity).
    Serverless,
    /// A fixed user and password, for any PostgreSQL-protocol upstream.
    Static,
}

impl CredentialMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialMode::GetClusterCredentials => "get_cluster_credentials",
            CredentialMode::GetClusterCredentialsWithIam => "get_cluster_credentials_with_iam",
            CredentialMode::Serverless => "serverless",
            CredentialMode::Static => "static",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Most upstream sessions open at once (busy and idle).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Most upstream sessions one database identity holds at once.
    #[serde(default = "default_max_per_user")]
    pub max_sessions_per_user: usize,
    /// A client beyond the limits waits this long for a session, then gets 53300.
    #[serde(default = "default_acquire_timeout")]
    pub acquire_timeout_secs: u64,
    /// Idle upstream sessions are closed after this long.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Connecting (TCP, TLS and login) must finish within this long.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Run before an upstream session is handed to another client of the same
    /// identity; if it fails the session is closed instead of reused.
    #[serde(default = "default_reset_query")]
    pub reset_query: String,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_sessions: default_max_sessions(),
            max_sessions_per_user: default_max_per_user(),
            acquire_timeout_secs: default_acquire_timeout(),
            idle_timeout_secs: default_idle_timeout(),
            connect_timeout_secs: default_connect_timeout(),
            reset_query: default_reset_query(),
        }
    }
}

fn default_duration() -> u32 {
    900
}
fn default_refresh_ahead() -> u64 {
    60
}
fn default_max_sessions() -> usize {
    100
}
fn default_max_per_user() -> usize {
    20
}
fn default_acquire_timeout() -> u64 {
    30
}
fn default_idle_timeout() -> u64 {
    300
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_reset_query() -> String {
    "DISCARD ALL".into()
}

impl RedshiftConfig {
    /// Checks one entry; errors name the key (relative to `redshift[i]`).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.name.is_empty() || self.name.contains(char::is_whitespace) {
            return Err(("name", "must be a non-empty name without spaces".into()));
        }
        if self.database.is_empty() {
            return Err(("database", "must not be empty".into()));
        }
        if self.host.is_some() != self.port.is_some() {
            return Err(("port", "set `host` and `port` together".into()));
        }
        if let Some(e) = &self.aws_endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(("aws_endpoint", "must be an http:// or https:// URL".into()));
        }
        let needs_cluster = matches!(
            self.credentials,
            CredentialMode::GetClusterCredentials | CredentialMode::GetClusterCredentialsWithIam
        );
        match self.credentials {
            _ if needs_cluster && self.cluster_identifier.is_none() => {
                return Err((
                    "cluster_identifier",
                    "is required for the get_cluster_credentials modes".into(),
                ));
            }
            CredentialMode::Serverless if self.workgroup.is_none() => {
                return Err(("workgroup", "is required for serverless credentials".into()));
            }
            CredentialMode::Static => {
                if self.user.as_deref().is_none_or(str::is_empty) {
                    return Err(("user", "is required for static credentials".into()));
                }
                if self.password_env.is_some() == self.password_file.is_some() {
                    return Err((
                        "password_env",
                        "static credentials need exactly one of password_env and password_file"
                            .into(),
                    ));
                }
                if self.host.is_none() {
                    return Err(("host", "is required for static credentials".into()));
                }
            }
            _ => {}
        }
        if self.credentials != CredentialMode::Static
            && (self.user.is_some() || self.password_env.is_some() || self.password_file.is_some())
        {
            return Err((
                "user",
                "user/password_env/password_file are only for credentials = \"static\"".into(),
            ));
        }
        if !(900..=3600).contains(&self.duration_seconds) {
            return Err((
                "duration_seconds",
                "must be from 900 to 3600 (the Redshift API's range)".into(),
            ));
        }
        if self.refresh_ahead_secs >= u64::from(self.duration_seconds) {
            return Err((
                "refresh_ahead_secs",
                "must be shorter than duration_seconds".into(),
            ));
        }
        if self.ca_file.is_some() && self.tls == UpstreamTls::Disable {
            return Err(("ca_file", "has no effect with tls = \"disable\"".into()));
        }
        let p = &self.pool;
        if p.max_sessions == 0 {
            return Err(("pool.max_sessions", "must be at least 1".into()));
        }
        if p.max_sessions_per_user == 0 {
            return Err(("pool.max_sessions_per_user", "must be at least 1".into()));
        }
        if p.connect_timeout_secs == 0 || p.acquire_timeout_secs == 0 {
            return Err((
                "pool.connect_timeout_secs",
                "timeouts must be at least 1 second".into(),
            ));
        }
        if p.reset_query.trim().is_empty() {
            return Err(("pool.reset_query", "must not be empty".into()));
        }
        Ok(())
    }
}
