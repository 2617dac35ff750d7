//! The one TOML file an admin writes: parsed strictly (unknown keys are errors) and
//! validated before anything listens, so a typo never silently changes behaviour.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod cache;
mod lake;
mod ldap;
pub use cache::{CacheConfig, MatViewDecl, MatViewsConfig};
pub use lake::{GlueLakeConfig, S3Config};
pub use ldap::LdapConfig;
mod redshift;
pub mod values;
pub use redshift::{CredentialMode, PoolConfig, RedshiftConfig, UpstreamTls};

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub users: Vec<LocalUser>,
    /// Token (OIDC / Azure AD) logins; absent = local accounts only.
    pub oidc: Option<OidcConfig>,
    /// Password logins checked against an LDAP directory.
    pub ldap: Option<LdapConfig>,
    /// The role of a token user whom no `[[role_mapping]]` rule matches.
    #[serde(default = "default_base_role")]
    pub base_role: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            users: Vec::new(),
            oidc: None,
            ldap: None,
            base_role: default_base_role(),
        }
    }
}

fn default_base_role() -> String {
    "base".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub issuers: Vec<IssuerConfig>,
    /// Clock skew tolerated on `exp` / `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Least time between two JWKS fetches triggered by an unknown key id.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_min_refresh_secs: u64,
    /// Tokens are passwords: accepted over TLS only, unless this allows loopback
    /// plaintext for development.
    #[serde(default)]
    pub allow_plaintext_loopback: bool,
    /// Allow `http://` issuer, discovery and JWKS URLs. Keys fetched without TLS can
    /// be swapped by anyone on the path: for local development and tests only.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Microsoft Graph, for tokens whose groups did not fit ("groups overage").
    pub graph: Option<GraphConfig>,
    /// What `sluice login` (device-code flow) asks the issuer for.
    pub login: Option<LoginConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// The issuer to sign in with (its discovery document must list a
    /// `device_authorization_endpoint`).
    pub issuer: String,
    /// Discovery document; default `<issuer>/.well-known/openid-configuration`.
    pub discovery_url: Option<String>,
    /// The public client app users sign in through.
    pub client_id: String,
    /// e.g. `api://sluice/.default` (Azure v2) so the token's audience is Sluice.
    pub scope: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    /// Graph's base URL.
    #[serde(default = "default_graph_endpoint")]
    pub endpoint: String,
    /// OAuth token endpoint for Sluice's own app (client credentials), e.g.
    /// `https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token`.
    pub token_url: String,
    pub client_id: String,
    /// Where the client secret is (never in this file): an environment variable…
    pub client_secret_env: Option<String>,
    /// …or a file (e.g. a mounted Kubernetes secret), relative to this config's directory.
    pub client_secret_file: Option<PathBuf>,
    #[serde(default = "default_graph_scope")]
    pub scope: String,
    /// How long a user's resolved groups are cached, in seconds.
    #[serde(default = "default_graph_ttl")]
    pub cache_ttl_secs: u64,
}

fn default_graph_endpoint() -> String {
    "https://graph.microsoft.com".into()
}
fn default_graph_scope() -> String {
    "https://graph.microsoft.com/.default".into()
}
fn default_graph_ttl() -> u64 {
    600
}

fn default_leeway() -> u64 {
    60
}
fn default_jwks_refresh() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` value, e.g. `https://login.microsoftonline.com/{tid}/v2.0`
    /// (Azure v2) or `https://sts.windows.net/{tid}/` (Azure v1).
    pub issuer: String,
    /// Discovery document; default `<issuer>/.well-known/openid-configuration`.
    pub discovery_url: Option<String>,
    /// JWKS location, skipping discovery.
    pub jwks_uri: Option<String>,
    /// Accepted `aud` values (Application ID URI for v1, client id for v2).
    pub audiences: Vec<String>,
    /// Allowed tenants (`tid`); empty means the claim is not checked.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Accepted signature algorithms; asymmetric only.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Claims that may carry the login name, first present wins; the startup `user`
    /// must equal it (case-insensitive).
    #[serde(default = "default_username_claims")]
    pub username_claims: Vec<String>,
    /// Claims that together identify the user stably (Azure: tenant + object id).
    #[serde(default = "default_identity_claims")]
    pub identity_claims: Vec<String>,
    /// The `provider_name` values Amazon's Redshift drivers send (their "Provider
    /// Name" / `provider_name` setting) that this issuer serves in a Redshift
    /// native-IdP sign-in. A sign-in naming a provider no issuer lists is refused.
    #[serde(default)]
    pub redshift_provider_names: Vec<String>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_username_claims() -> Vec<String> {
    ["upn", "preferred_username", "email", "unique_name"]
        .map(String::from)
        .to_vec()
}
fn default_identity_claims() -> Vec<String> {
    vec!["tid".into(), "oid".into()]
}

/// Role mapping and role policy: reloaded on SIGHUP or when the config file changes;
/// sessions keep the rules they logged in with.
#[derive(Debug, Clone)]
pub struct AccessRules {
    pub role_mapping: Vec<RoleMappingRule>,
    pub roles: Vec<RoleConfig>,
    pub base_role: String,
}

/// A `[[roles]]` entry: what holders of the role may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    pub name: String,
    /// Lake tables the role may read and see: `database.table` patterns with `*`
    /// wildcards (`nyc.*`, `*.trips`, `*`). Names compare case-insensitively.
    #[serde(default)]
    pub read: Vec<String>,
    /// Roles whose grants this role includes (no cycles).
    #[serde(default)]
    pub includes: Vec<String>,
    /// Whether the role may run statements that write (forwarded upstreams).
    #[serde(default)]
    pub write: bool,
    /// Whether holders may see gateway internals (`SHOW sluice.pools`,
    /// `SHOW sluice.credentials`: upstream sessions and other users' database names).
    #[serde(default)]
    pub admin: bool,
    /// Most rows one statement may return to a holder of this role.
    pub row_limit: Option<u64>,
    /// How long this role's read-only results are served from the result cache
    /// (overrides `cache.result_ttl_secs`; 0 = never cached). With several roles the
    /// shortest applies.
    pub result_cache_ttl_secs: Option<u64>,
    /// Whether holders may create, refresh and drop gateway materialized views.
    #[serde(default)]
    pub manage_materialized_views: bool,
    /// The database user this role becomes on Redshift, with `{user}` replaced by the
    /// login name, e.g. `"aad:{user}"` (used when statements are forwarded).
    pub redshift_user: Option<String>,
    /// Redshift groups (`DbGroups`) holders of this role get; lower case, as the
    /// GetClusterCredentials API requires.
    #[serde(default)]
    pub redshift_groups: Vec<String>,
}

/// One ordered `[[role_mapping]]` rule: every condition given must hold; the first
/// matching rule decides the user's roles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleMappingRule {
    /// A group object id in the `groups` claim.
    pub group: Option<String>,
    /// An app-role value in the `roles` claim.
    pub app_role: Option<String>,
    /// The login name (case-insensitive).
    pub username: Option<String>,
    /// The tenant (`tid`).
    pub tenant: Option<String>,
    /// Any claim, with `value`: equal to it, or containing it when the claim is a list.
    pub claim: Option<String>,
    pub value: Option<String>,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalUser {
    pub name: String,
    /// Plaintext password (development only); hashed into a SCRAM verifier at load.
    pub password: Option<String>,
    /// A stored SCRAM-SHA-256 verifier, as in PostgreSQL's `pg_authid.rolpassword`.
    pub scram: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
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

    /// Role names must be unique, every referenced role defined (the base role may be
    /// left implicit: it then grants nothing), and `includes` free of cycles.
    fn validate_roles(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let mut names = BTreeSet::new();
        for (i, r) in self.roles.iter().enumerate() {
            if r.name.is_empty() || !names.insert(r.name.as_str()) {
                return Err(invalid(
                    format!("roles[{i}].name"),
                    format!("role `{}` is empty or defined twice", r.name),
                ));
            }
            if r.row_limit == Some(0) {
                return Err(invalid(
                    format!("roles[{i}].row_limit"),
                    "must be at least 1 (omit it for no limit)".into(),
                ));
            }
            if let Some(t) = &r.redshift_user
                && t.trim().is_empty()
            {
                return Err(invalid(
                    format!("roles[{i}].redshift_user"),
                    "must not be empty".into(),
                ));
            }
            for g in &r.redshift_groups {
                if g.is_empty()
                    || g.chars()
                        .any(|c| c.is_ascii_uppercase() || c.is_whitespace())
                {
                    return Err(invalid(
                        format!("roles[{i}].redshift_groups"),
                        format!("`{g}`: Redshift group names must be lower case without spaces"),
                    ));
                }
            }
            for p in &r.read {
                if p.is_empty() || p.split('.').count() > 2 {
                    return Err(invalid(
                        format!("roles[{i}].read"),
                        format!("`{p}` is not a `database.table` pattern"),
                    ));
                }
            }
        }
        let defined = |n: &str| names.contains(n) || n == self.auth.base_role;
        for (i, r) in self.roles.iter().enumerate() {
            for inc in &r.includes {
                if !defined(inc) {
                    return Err(invalid(
                        format!("roles[{i}].includes"),
                        format!("role `{inc}` is not defined in [[roles]]"),
                    ));
                }
            }
        }
        for (i, u) in self.auth.users.iter().enumerate() {
            for r in &u.roles {
                if !defined(r) {
                    return Err(invalid(
                        format!("auth.users[{i}].roles"),
                        format!("role `{r}` is not defined in [[roles]]"),
                    ));
                }
            }
        }
        for (i, m) in self.role_mapping.iter().enumerate() {
            for r in &m.roles {
                if !defined(r) {
                    return Err(invalid(
                        format!("role_mapping[{i}].roles"),
                        format!("role `{r}` is not defined in [[roles]]"),
                    ));
                }
            }
        }
        // Cycle check: depth-first over `includes`.
        fn visit<'a>(
            name: &'a str,
            roles: &'a [RoleConfig],
            stack: &mut Vec<&'a str>,
        ) -> Result<(), String> {
            if stack.contains(&name) {
                stack.push(name);
                return Err(stack.join(" → "));
            }
            stack.push(name);
            if let Some(r) = roles.iter().find(|r| r.name == name) {
                for inc in &r.includes {
                    visit(inc, roles, stack)?;
                }
            }
            stack.pop();
            Ok(())
        }
        for (i, r) in self.roles.iter().enumerate() {
            visit(&r.name, &self.roles, &mut Vec::new()).map_err(|cycle| {
                invalid(
                    format!("roles[{i}].includes"),
                    format!("roles include each other in a cycle: {cycle}"),
                )
            })?;
        }
        Ok(())
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        self.listen_addr()
            .map_err(|m| invalid("server.listen".into(), m))?;
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
        if let Some(mv) = &self.materialized_views {
            mv.validate(&self.roles)
                .map_err(|(k, m)| invalid(format!("materialized_views.{k}"), m))?;
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
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level".into(), e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"), PathBuf::from("/etc/sluice"))
    }

    #[test]
    fn empty_file_gives_secure_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:5439");
        assert_eq!(c.server.tls.allow_plaintext, Plaintext::Never);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn bad_listen_is_named() {
        let e = parse("[server]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.listen"), "{e}");
    }

    #[test]
    fn user_needs_a_secret() {
        let e = parse("[[auth.users]]\nname = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.users[0].password"), "{e}");
    }

    #[test]
    fn bad_verifier_is_named() {
        let e = parse("[[auth.users]]\nname = \"a\"\nscram = \"md5abc\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.users[0].scram"), "{e}");
    }

    #[test]
    fn cert_without_key_is_refused() {
        let e = parse("[server.tls]\ncert = \"a.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.tls.key"), "{e}");
    }

    #[test]
    fn oidc_settings_are_checked() {
        let base = "[auth.oidc]\n[[auth.oidc.issuers]]\nissuer = \"https://idp.example/\"\n";
        let e = parse(&format!("{base}audiences = []\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.oidc.issuers[0].audiences"), "{e}");
        let e = parse(&format!(
            "{base}audiences = [\"a\"]\nalgorithms = [\"HS256\"]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("algorithms"), "{e}");
        parse(&format!("{base}audiences = [\"a\"]\n")).unwrap();
        let e = parse(&format!(
            "{base}audiences = [\"a\"]\njwks_uri = \"http://idp.example/keys\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("jwks_uri") && e.contains("https"), "{e}");
        let e = parse("[[role_mapping]]\nroles = [\"x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("role_mapping[0]"), "{e}");
    }

    #[test]
    fn roles_are_checked() {
        let e = parse("[[auth.users]]\nname = \"a\"\npassword = \"p\"\nroles = [\"ghost\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("auth.users[0].roles") && e.contains("ghost"),
            "{e}"
        );
        let e = parse("[[roles]]\nname = \"a\"\nincludes = [\"b\"]\n[[roles]]\nname = \"b\"\nincludes = [\"a\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cycle"), "{e}");
        parse("[[roles]]\nname = \"a\"\nread = [\"nyc.*\"]\nincludes = [\"base\"]\n").unwrap();
        let e = parse("[[roles]]\nname = \"a\"\nredshift_groups = [\"Sales\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("roles[0].redshift_groups"), "{e}");
    }

    #[test]
    fn relative_paths_resolve_against_config_dir() {
        let c = parse("").unwrap();
        assert_eq!(
            c.resolve(Path::new("data")),
            PathBuf::from("/etc/sluice/data")
        );
    }

    #[test]
    fn redshift_upstreams_are_validated_with_their_key() {
        let base = "[[redshift]]\nname = \"wh\"\ndatabase = \"dev\"\nregion = \"us-east-1\"\n";
        let err = |extra: &str| {
            parse(&format!("{base}{extra}"))
                .map(|_| String::new())
                .unwrap_or_else(|e| e.to_string())
        };
        assert!(
            err("credentials = \"get_cluster_credentials\"\n")
                .contains("redshift[0].cluster_identifier"),
        );
        assert!(err("credentials = \"serverless\"\n").contains("redshift[0].workgroup"));
        assert!(
            err("credentials = \"static\"\nuser = \"u\"\nhost = \"h\"\nport = 1\n")
                .contains("password_env")
        );
        assert!(
            err("cluster_identifier = \"c\"\ncredentials = \"get_cluster_credentials\"\nduration_seconds = 60\n")
                .contains("redshift[0].duration_seconds")
        );
        assert!(
            err("cluster_identifier = \"c\"\ncredentials = \"get_cluster_credentials\"\nhost = \"h\"\n")
                .contains("redshift[0].port")
        );
        assert!(
            err("cluster_identifier = \"c\"\ncredentials = \"get_cluster_credentials\"\ntls = \"sometimes\"\n")
                .contains("tls")
        );
        assert!(
            err("cluster_identifier = \"c\"\ncredentials = \"get_cluster_credentials\"\n[redshift.pool]\nmax_sessions = 0\n")
                .contains("redshift[0].pool.max_sessions")
        );
        assert_eq!(
            err("cluster_identifier = \"c\"\ncredentials = \"get_cluster_credentials\"\n"),
            ""
        );
        let twice = format!(
            "{base}cluster_identifier = \"c\"\ncredentials = \"get_cluster_credentials\"\n{base}cluster_identifier = \"c\"\ncredentials = \"get_cluster_credentials\"\n"
        );
        assert!(
            parse(&twice)
                .unwrap_err()
                .to_string()
                .contains("redshift[1].name")
        );
    }
}
