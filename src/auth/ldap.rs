//! LDAP password logins (`[auth.ldap]`) with the `ldap3` crate over tokio + rustls.
//!
//! Two ways to find the user, as Trino and PgBouncer offer them: a bind pattern
//! (`uid={user},ou=people,…`, or an Active Directory UPN) bound directly, or a
//! service account that searches for the user's entry first. Groups come from a
//! group search (`(member={dn})`) and/or an attribute of the user's entry
//! (`memberOf`); their DNs are the groups `[[role_mapping]]` rules match.
//!
//! Connections are pooled (at most `pool_size` open, idle ones reused; a bind
//! changes a connection's identity, so the service account binds again before each
//! search). Refused (user, password) pairs are remembered briefly under a salted
//! hash so a retry loop or a password spray does not reach the directory.
//! Passwords are never logged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::config::{Config, LdapConfig};

/// Who the directory says the user is.
#[derive(Debug, Clone)]
pub struct LdapUser {
    pub dn: String,
    pub groups: Vec<String>,
}

/// Why a login failed: the user's fault (28P01) or the directory's (try later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LdapFailure {
    Rejected(String),
    Unavailable(String),
}

/// LDAP result code for a wrong password or unknown bind DN.
const INVALID_CREDENTIALS: u32 = 49;

struct Pooled {
    ldap: Ldap,
}

pub struct LdapAuthenticator {
    config: LdapConfig,
    settings: LdapConnSettings,
    bind_password: Option<String>,
    idle: Mutex<Vec<Pooled>>,
    slots: Semaphore,
    refused: moka::sync::Cache<[u8; 32], ()>,
    salt: [u8; 32],
    timeout: Duration,
}

fn tls_config(config: &LdapConfig, cfg: &Config) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let path = cfg.resolve(path);
            let pem = std::fs::read(&path)
                .map_err(|e| format!("auth.ldap.ca_file: cannot read {}: {e}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| {
                    format!(
                        "auth.ldap.ca_file: {} is not valid PEM: {e}",
                        path.display()
                    )
                })?;
                roots
                    .add(cert)
                    .map_err(|e| format!("auth.ldap.ca_file: unusable certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "auth.ldap.ca_file: {} holds no certificate",
                    path.display()
                ));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("auth.ldap: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

impl LdapAuthenticator {
    pub fn new(cfg: &Config) -> Result<Option<LdapAuthenticator>, String> {
        let Some(config) = cfg.auth.ldap.clone() else {
            return Ok(None);
        };
        let bind_password = match (&config.bind_password_env, &config.bind_password_file) {
            (Some(var), _) => Some(std::env::var(var).map_err(|_| {
                format!("auth.ldap.bind_password_env: environment variable {var} is not set")
            })?),
            (None, Some(path)) => {
                let path = cfg.resolve(path);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    format!(
                        "auth.ldap.bind_password_file: cannot read {}: {e}",
                        path.display()
                    )
                })?;
                Some(text.trim_end_matches(['\r', '\n']).to_owned())
            }
            (None, None) => None,
        };
        let settings = LdapConnSettings::new()
            .set_conn_timeout(Duration::from_secs(config.connect_timeout_secs))
            .set_starttls(config.starttls)
            .set_config(tls_config(&config, cfg)?);
        let mut salt = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut salt);
        Ok(Some(LdapAuthenticator {
            slots: Semaphore::new(config.pool_size),
            refused: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(config.negative_cache_secs.max(1)))
                .build(),
            timeout: Duration::from_secs(config.timeout_secs),
            settings,
            bind_password,
            idle: Mutex::new(Vec::new()),
            salt,
            config,
        }))
    }

    /// The negative-cache key: never the password itself.
    fn refusal_key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Checks `password` for `user` and returns the user's DN and groups.
    pub async fn authenticate(&self, user: &str, password: &str) -> Result<LdapUser, LdapFailure> {
        // RFC 4513 §5.1.2: a simple bind with an empty password is an unauthenticated
        // bind, which many servers accept. It proves nothing.
        if password.is_empty() {
            return Err(LdapFailure::Rejected(
                "an empty password is not accepted".into(),
            ));
        }
        if user.is_empty() || user.len() > 256 {
            return Err(LdapFailure::Rejected("invalid user name".into()));
        }
        let key = self.refusal_key(user, password);
        if self.config.negative_cache_secs > 0 && self.refused.contains_key(&key) {
            return Err(LdapFailure::Rejected(
                "wrong user name or password (refused again without asking the directory)".into(),
            ));
        }
        let _slot = tokio::time::timeout(self.timeout, self.slots.acquire())
            .await
            .map_err(|_| {
                LdapFailure::Unavailable(format!(
                    "all {} LDAP connections stayed busy for {}s",
                    self.config.pool_size, self.config.timeout_secs
                ))
            })?
            .map_err(|_| LdapFailure::Unavailable("the LDAP pool is closed".into()))?;
        let mut conn = match self.take_idle() {
            Some(c) => c,
            None => self.connect().await?,
        };
        let result = self.check(&mut conn, user, password).await;
        match &result {
            // The connection is healthy after an answer from the directory.
            Ok(_) | Err(LdapFailure::Rejected(_)) => self.put_idle(conn),
            Err(LdapFailure::Unavailable(_)) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.ldap.unbind()).await;
            }
        }
        if matches!(result, Err(LdapFailure::Rejected(_))) && self.config.negative_cache_secs > 0 {
            self.refused.insert(key, ());
        }
        result
    }

    fn take_idle(&self) -> Option<Pooled> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut c) = idle.pop() {
            if !c.ldap.is_closed() {
                return Some(c);
            }
        }
        None
    }

    fn put_idle(&self, conn: Pooled) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.config.pool_size {
            idle.push(conn);
        }
    }

    async fn connect(&self) -> Result<Pooled, LdapFailure> {
        let (driver, ldap) = LdapConnAsync::with_settings(self.settings.clone(), &self.config.url)
            .await
            .map_err(|e| {
                LdapFailure::Unavailable(format!("cannot connect to {}: {e}", self.config.url))
            })?;
        tokio::spawn(async move {
            if let Err(e) = driver.drive().await {
                tracing::debug!(error = %e, "LDAP connection ended");
            }
        });
        Ok(Pooled { ldap })
    }

    /// Binds; `Ok(false)` when the directory says the credentials are invalid.
    async fn bind(&self, conn: &mut Pooled, dn: &str, password: &str) -> Result<bool, LdapFailure> {
        let result = conn
            .ldap
            .with_timeout(self.timeout)
            .simple_bind(dn, password)
            .await
            .map_err(|e| LdapFailure::Unavailable(format!("LDAP bind failed: {e}")))?;
        match result.rc {
            0 => Ok(true),
            INVALID_CREDENTIALS => Ok(false),
            _ => Err(LdapFailure::Unavailable(format!("LDAP bind: {result}"))),
        }
    }

    async fn search(
        &self,
        conn: &mut Pooled,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: Vec<&str>,
    ) -> Result<Vec<SearchEntry>, LdapFailure> {
        let result = conn
            .ldap
            .with_timeout(self.timeout)
            .search(base, scope, filter, attrs)
            .await
            .map_err(|e| LdapFailure::Unavailable(format!("LDAP search failed: {e}")))?;
        // noSuchObject (32): the base does not exist, which is "nothing found".
        if result.1.rc != 0 && result.1.rc != 32 {
            return Err(LdapFailure::Unavailable(format!(
                "LDAP search under {base}: {}",
                result.1
            )));
        }
        let mut entries = Vec::with_capacity(result.0.len());
        for raw in result.0 {
            // ldap3 panics on a malformed entry; a directory's reply must not take
            // the gateway down, so a panic here becomes a failed login.
            let entry = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                SearchEntry::construct(raw)
            }))
            .map_err(|_| LdapFailure::Unavailable("malformed LDAP search result".into()))?;
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn check(
        &self,
        conn: &mut Pooled,
        user: &str,
        password: &str,
    ) -> Result<LdapUser, LdapFailure> {
        let wrong = || LdapFailure::Rejected("wrong user name or password".into());
        let group_attr: Vec<&str> = self.config.group_attribute.as_deref().into_iter().collect();
        let (dn, mut groups) = match &self.config.user_bind_pattern {
            Some(pattern) => {
                let dn = pattern.replace("{user}", &ldap3::dn_escape(user));
                if !self.bind(conn, &dn, password).await? {
                    return Err(wrong());
                }
                let groups = if group_attr.is_empty() {
                    Vec::new()
                } else {
                    self.search(
                        conn,
                        &dn,
                        Scope::Base,
                        "(objectClass=*)",
                        group_attr.clone(),
                    )
                    .await?
                    .into_iter()
                    .flat_map(|e| e.attrs.into_values().flatten())
                    .collect()
                };
                (dn, groups)
            }
            None => {
                let (Some(service), Some(service_pw), Some(base)) = (
                    self.config.bind_dn.as_deref(),
                    self.bind_password.as_deref(),
                    self.config.user_base_dn.as_deref(),
                ) else {
                    return Err(LdapFailure::Unavailable("auth.ldap is incomplete".into()));
                };
                if !self.bind(conn, service, service_pw).await? {
                    return Err(LdapFailure::Unavailable(
                        "the service account (auth.ldap.bind_dn) was refused by the directory"
                            .into(),
                    ));
                }
                let filter = self
                    .config
                    .user_filter
                    .replace("{user}", &ldap3::ldap_escape(user));
                let mut attrs = group_attr.clone();
                if attrs.is_empty() {
                    attrs.push("1.1"); // RFC 4511: no attributes
                }
                let mut found = self
                    .search(conn, base, Scope::Subtree, &filter, attrs)
                    .await?;
                if found.len() > 1 {
                    return Err(LdapFailure::Rejected(format!(
                        "the user name matches {} directory entries",
                        found.len()
                    )));
                }
                let Some(entry) = found.pop() else {
                    return Err(wrong());
                };
                if !self.bind(conn, &entry.dn, password).await? {
                    return Err(wrong());
                }
                // Back to the service account for the group search and the next login.
                if !self.bind(conn, service, service_pw).await? {
                    return Err(LdapFailure::Unavailable(
                        "the service account was refused by the directory".into(),
                    ));
                }
                let groups: Vec<String> = entry.attrs.into_values().flatten().collect();
                (entry.dn, groups)
            }
        };
        if let Some(base) = &self.config.group_base_dn {
            let filter = self
                .config
                .group_filter
                .replace("{dn}", &ldap3::ldap_escape(dn.as_str()))
                .replace("{user}", &ldap3::ldap_escape(user));
            for entry in self
                .search(conn, base, Scope::Subtree, &filter, vec!["1.1"])
                .await?
            {
                groups.push(entry.dn);
            }
        }
        groups.sort_unstable_by_key(|g| g.to_ascii_lowercase());
        groups.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
        Ok(LdapUser { dn, groups })
    }
}
