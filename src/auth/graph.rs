//! Groups overage: when a user is in more groups than fit in a token (Azure puts
//! `_claim_names`/`_claim_sources` there instead of `groups`), Sluice asks Microsoft
//! Graph (`POST /v1.0/users/{oid}/getMemberObjects`) with its own app token (client
//! credentials flow). App tokens and each user's groups are cached.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::config::GraphConfig;

pub struct GraphClient {
    config: GraphConfig,
    secret: String,
    http: reqwest::Client,
    app_token: Mutex<Option<(String, Instant)>>,
    groups: moka::future::Cache<String, Vec<String>>,
}

impl GraphClient {
    pub fn new(
        config: &GraphConfig,
        base_dir: &std::path::Path,
        http: reqwest::Client,
    ) -> Result<GraphClient, String> {
        let secret = match (&config.client_secret_env, &config.client_secret_file) {
            (Some(var), _) => std::env::var(var).map_err(|_| {
                format!("auth.oidc.graph.client_secret_env: environment variable {var} is not set")
            })?,
            (None, Some(file)) => {
                let path = if file.is_absolute() {
                    file.clone()
                } else {
                    base_dir.join(file)
                };
                std::fs::read_to_string(&path)
                    .map_err(|e| {
                        format!(
                            "auth.oidc.graph.client_secret_file: cannot read {}: {e}",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
            (None, None) => return Err("auth.oidc.graph: no client secret configured".into()),
        };
        Ok(GraphClient {
            config: config.clone(),
            secret,
            http,
            app_token: Mutex::new(None),
            groups: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(config.cache_ttl_secs))
                .build(),
        })
    }

    /// True when the token says its groups are elsewhere.
    pub fn has_overage(claims: &serde_json::Map<String, Value>) -> bool {
        !claims.contains_key("groups")
            && claims
                .get("_claim_names")
                .and_then(|n| n.get("groups"))
                .is_some()
    }

    /// The user's group ids, from the cache or Graph. Concurrent logins of one user
    /// share one Graph call.
    pub async fn member_groups(&self, tenant: &str, oid: &str) -> Result<Vec<String>, String> {
        if oid.is_empty() || !oid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err("the token's `oid` is missing or malformed".into());
        }
        let key = format!("{tenant}/{oid}");
        self.groups
            .try_get_with(key, self.fetch_groups(oid))
            .await
            .map_err(|e| e.to_string())
    }

    async fn fetch_groups(&self, oid: &str) -> Result<Vec<String>, String> {
        let token = self.app_token().await?;
        let url = format!(
            "{}/v1.0/users/{oid}/getMemberObjects",
            self.config.endpoint.trim_end_matches('/')
        );
        let resp = self
            .http
            .post(&url)
            .bearer_auth(token)
            .json(&json!({"securityEnabledOnly": false}))
            .send()
            .await
            .map_err(|e| format!("Graph getMemberObjects: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("Graph getMemberObjects: HTTP {}", resp.status()));
        }
        let body: Value = resp
            .json()
            .await
            .map_err(|e| format!("Graph getMemberObjects: {e}"))?;
        let groups = body
            .get("value")
            .and_then(Value::as_array)
            .ok_or("Graph getMemberObjects: no `value` list")?
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        Ok(groups)
    }

    /// Sluice's own Graph token, renewed a minute before it expires.
    async fn app_token(&self) -> Result<String, String> {
        let mut cached = self.app_token.lock().await;
        if let Some((token, expires)) = cached.as_ref()
            && Instant::now() + Duration::from_secs(60) < *expires
        {
            return Ok(token.clone());
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.config.client_id.as_str()),
            ("client_secret", self.secret.as_str()),
            ("scope", self.config.scope.as_str()),
        ];
        let resp = self
            .http
            .post(&self.config.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("Graph app token: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("Graph app token: HTTP {}", resp.status()));
        }
        let body: Value = resp
            .json()
            .await
            .map_err(|e| format!("Graph app token: {e}"))?;
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or("Graph app token: no access_token in the reply")?
            .to_owned();
        let lifetime = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(300);
        *cached = Some((
            token.clone(),
            Instant::now() + Duration::from_secs(lifetime),
        ));
        Ok(token)
    }
}
