//! Temporary database credentials, minted through the Redshift API and cached.
//!
//! One mint per (upstream, database, db user, groups): concurrent logins of one
//! identity share a single in-flight mint (moka's `try_get_with`), a credential is
//! minted again in the background `refresh_ahead_secs` before it expires while the
//! cached one keeps serving, and an entry leaves the cache just before its expiry so
//! an expired password is never handed out. Throttling and transient failures are
//! retried with backoff by the AWS SDK's standard retry policy.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use moka::Expiry;

use crate::aws::describe_error;
use crate::config::{CredentialMode, RedshiftConfig};
use crate::error::{PgError, SqlState};

/// The database identity a session uses upstream, before minting.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DbIdentity {
    /// The DbUser requested (for `static` and the IAM modes: informational).
    pub user: String,
    /// DbGroups, lower case, sorted, unique.
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CredentialKey {
    database: String,
    identity: DbIdentity,
}

/// A usable database login.
pub struct Minted {
    /// The user to log in as (`IAM:alice`, `IAMA:alice`, …).
    pub user: String,
    pub password: String,
    /// `None`: never expires (static credentials).
    pub expires: Option<Instant>,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("expires", &self.expires)
            .finish()
    }
}

/// (user, password, expiration) from any of the three credential APIs' outputs,
/// which share accessor names but not a type.
macro_rules! login_of {
    ($o:expr) => {
        (
            $o.db_user().map(str::to_owned),
            $o.db_password().map(str::to_owned),
            $o.expiration().cloned(),
        )
    };
}

/// Entries leave the cache this long before the credential itself expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

struct UntilExpiry;

impl Expiry<CredentialKey, Arc<Minted>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &CredentialKey,
        value: &Arc<Minted>,
        created_at: Instant,
    ) -> Option<Duration> {
        value.expires.map(|e| {
            e.saturating_duration_since(created_at)
                .saturating_sub(EXPIRY_MARGIN)
        })
    }
}

/// AWS API clients for one upstream, built lazily from the standard credential chain.
#[derive(Clone)]
struct Aws {
    redshift: aws_sdk_redshift::Client,
    serverless: aws_sdk_redshiftserverless::Client,
}

/// One upstream's credential source and cache.
pub struct Credentials {
    config: Arc<RedshiftConfig>,
    aws: tokio::sync::OnceCell<Aws>,
    static_password: Option<String>,
    cache: moka::future::Cache<CredentialKey, Arc<Minted>>,
    refreshing: Mutex<HashSet<CredentialKey>>,
    mints: AtomicU64,
    failures: AtomicU64,
}

/// A snapshot of a cache entry for `SHOW sluice.pools` (never the password).
pub struct CachedCredential {
    pub database: String,
    pub requested_user: String,
    pub groups: Vec<String>,
    pub db_user: String,
    pub expires_in: Option<Duration>,
}

impl Credentials {
    /// Reads a static password (from its environment variable or file) up front, so
    /// a missing secret is a start-up error, not a failure at a user's first query.
    pub fn new(config: Arc<RedshiftConfig>, base_dir: &std::path::Path) -> anyhow::Result<Self> {
        let static_password = match config.credentials {
            CredentialMode::Static => Some(read_secret(&config, base_dir)?),
            _ => None,
        };
        Ok(Credentials {
            config,
            aws: tokio::sync::OnceCell::new(),
            static_password,
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .expire_after(UntilExpiry)
                .build(),
            refreshing: Mutex::new(HashSet::new()),
            mints: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// How many credentials were minted (successful API calls) so far.
    pub fn mint_count(&self) -> u64 {
        self.mints.load(Ordering::Relaxed)
    }

    pub fn failure_count(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn cached(&self) -> Vec<CachedCredential> {
        let now = Instant::now();
        let mut out: Vec<CachedCredential> = self
            .cache
            .iter()
            .map(|(k, v)| CachedCredential {
                database: k.database.clone(),
                requested_user: k.identity.user.clone(),
                groups: k.identity.groups.clone(),
                db_user: v.user.clone(),
                expires_in: v.expires.map(|e| e.saturating_duration_since(now)),
            })
            .collect();
        out.sort_by(|a, b| a.requested_user.cmp(&b.requested_user));
        out
    }

    /// A credential for `identity`, from the cache or freshly minted.
    pub async fn get(self: &Arc<Self>, identity: &DbIdentity) -> Result<Arc<Minted>, PgError> {
        let key = CredentialKey {
            database: self.config.database.clone(),
            identity: identity.clone(),
        };
        if let Some(m) = self.cache.get(&key).await {
            let refresh_at = Duration::from_secs(self.config.refresh_ahead_secs);
            if m.expires
                .is_some_and(|e| e.saturating_duration_since(Instant::now()) < refresh_at)
            {
                self.refresh_in_background(key);
            }
            return Ok(m);
        }
        let this = self.clone();
        let id = identity.clone();
        self.cache
            .try_get_with(key, async move { this.mint(&id).await.map(Arc::new) })
            .await
            .map_err(|e: Arc<PgError>| (*e).clone())
    }

    fn refresh_in_background(self: &Arc<Self>, key: CredentialKey) {
        {
            let mut busy = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
            if !busy.insert(key.clone()) {
                return;
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            match this.mint(&key.identity).await {
                Ok(m) => this.cache.insert(key.clone(), Arc::new(m)).await,
                Err(e) => tracing::warn!(
                    upstream = %this.config.name,
                    user = %key.identity.user,
                    error = %e.message,
                    "refreshing Redshift credentials failed; the cached ones serve until they expire"
                ),
            }
            this.refreshing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        });
    }

    async fn aws(&self) -> &Aws {
        self.aws
            .get_or_init(|| async { build_clients(&self.config).await })
            .await
    }

    async fn mint(&self, identity: &DbIdentity) -> Result<Minted, PgError> {
        let c = &self.config;
        let result = match c.credentials {
            CredentialMode::Static => {
                return Ok(Minted {
                    user: c.user.clone().unwrap_or_default(),
                    password: self.static_password.clone().unwrap_or_default(),
                    expires: None,
                });
            }
            CredentialMode::GetClusterCredentials => {
                let out = self
                    .aws()
                    .await
                    .redshift
                    .get_cluster_credentials()
                    .set_cluster_identifier(c.cluster_identifier.clone())
                    .db_user(&identity.user)
                    .db_name(&c.database)
                    .set_db_groups((!identity.groups.is_empty()).then(|| identity.groups.clone()))
                    .auto_create(c.auto_create)
                    .duration_seconds(c.duration_seconds as i32)
                    .send()
                    .await;
                out.map(|o| login_of!(o))
                    .map_err(|e| describe_error("GetClusterCredentials", &e))
            }
            CredentialMode::GetClusterCredentialsWithIam => {
                let out = self
                    .aws()
                    .await
                    .redshift
                    .get_cluster_credentials_with_iam()
                    .set_cluster_identifier(c.cluster_identifier.clone())
                    .db_name(&c.database)
                    .duration_seconds(c.duration_seconds as i32)
                    .send()
                    .await;
                out.map(|o| login_of!(o))
                    .map_err(|e| describe_error("GetClusterCredentialsWithIAM", &e))
            }
            CredentialMode::Serverless => {
                let out = self
                    .aws()
                    .await
                    .serverless
                    .get_credentials()
                    .set_workgroup_name(c.workgroup.clone())
                    .db_name(&c.database)
                    .duration_seconds(c.duration_seconds as i32)
                    .send()
                    .await;
                out.map(|o| login_of!(o))
                    .map_err(|e| describe_error("GetCredentials", &e))
            }
        };
        let (user, password, expiration) = match result {
            Ok(r) => r,
            Err(message) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let m = crate::metrics::metrics();
                m.credential_failures.with_label_values(&[&c.name]).inc();
                if message.contains("Throttl") || message.contains("TooManyRequests") {
                    m.credential_throttles.with_label_values(&[&c.name]).inc();
                }
                tracing::warn!(upstream = %c.name, user = %identity.user, error = %message, "minting Redshift credentials failed");
                return Err(PgError::new(
                    SqlState("08001"),
                    format!(
                        "could not obtain Redshift credentials for upstream \"{}\": {message}",
                        c.name
                    ),
                )
                .with_hint(
                    "ask an administrator to check Sluice's IAM permissions and the cluster name",
                ));
            }
        };
        let (Some(user), Some(password)) = (user, password) else {
            return Err(PgError::new(
                SqlState("08001"),
                format!(
                    "the Redshift API returned no credentials for upstream \"{}\"",
                    c.name
                ),
            ));
        };
        let expires = expiration
            .and_then(|d| SystemTime::try_from(d).ok())
            .map(|at| {
                let left = at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                Instant::now() + left
            })
            .or_else(|| Some(Instant::now() + Duration::from_secs(c.duration_seconds.into())));
        self.mints.fetch_add(1, Ordering::Relaxed);
        crate::metrics::metrics()
            .credential_mints
            .with_label_values(&[&c.name])
            .inc();
        tracing::info!(upstream = %c.name, db_user = %user, "minted Redshift credentials");
        Ok(Minted {
            user,
            password,
            expires,
        })
    }

    /// The endpoint from `DescribeClusters` (provisioned) or `GetWorkgroup` (serverless).
    pub async fn discover_endpoint(&self) -> Result<(String, u16), PgError> {
        let c = &self.config;
        let fail = |m: String| {
            PgError::new(
                SqlState("08001"),
                format!(
                    "could not find the endpoint of Redshift upstream \"{}\": {m}",
                    c.name
                ),
            )
            .with_hint("set host and port in its [[redshift]] section, or check the cluster name")
        };
        let (address, port) = if let Some(wg) = &c.workgroup {
            let out = self
                .aws()
                .await
                .serverless
                .get_workgroup()
                .workgroup_name(wg)
                .send()
                .await
                .map_err(|e| fail(describe_error("GetWorkgroup", &e)))?;
            let ep = out.workgroup().and_then(|w| w.endpoint());
            (
                ep.and_then(|e| e.address()).map(str::to_owned),
                ep.and_then(|e| e.port()),
            )
        } else {
            let out = self
                .aws()
                .await
                .redshift
                .describe_clusters()
                .set_cluster_identifier(c.cluster_identifier.clone())
                .send()
                .await
                .map_err(|e| fail(describe_error("DescribeClusters", &e)))?;
            let ep = out.clusters().first().and_then(|c| c.endpoint());
            (
                ep.and_then(|e| e.address()).map(str::to_owned),
                ep.and_then(|e| e.port()),
            )
        };
        match (address, port.and_then(|p| u16::try_from(p).ok())) {
            (Some(a), Some(p)) => Ok((a, p)),
            _ => Err(fail(
                "the API returned no endpoint (is the cluster available?)".into(),
            )),
        }
    }
}

async fn build_clients(c: &RedshiftConfig) -> Aws {
    let sdk = crate::aws::sdk_config(c.region.as_deref(), c.aws_endpoint.as_deref()).await;
    Aws {
        redshift: aws_sdk_redshift::Client::new(&sdk),
        serverless: aws_sdk_redshiftserverless::Client::new(&sdk),
    }
}

fn read_secret(c: &RedshiftConfig, base_dir: &std::path::Path) -> anyhow::Result<String> {
    if let Some(var) = &c.password_env {
        return std::env::var(var).map_err(|_| {
            anyhow::anyhow!(
                "redshift `{}`: environment variable {var} (password_env) is not set",
                c.name
            )
        });
    }
    let Some(file) = &c.password_file else {
        anyhow::bail!("redshift `{}`: no password_env or password_file", c.name);
    };
    let path = if file.is_absolute() {
        file.clone()
    } else {
        base_dir.join(file)
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        anyhow::anyhow!(
            "redshift `{}`: cannot read password_file {}: {e}",
            c.name,
            path.display()
        )
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}
