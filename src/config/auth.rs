//! `[auth]`: local accounts, OIDC issuers (tokens, `sluice login`, Microsoft Graph
//! for group overage); LDAP is in `ldap.rs`.

use std::path::PathBuf;

use serde::Deserialize;

use super::LdapConfig;

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
