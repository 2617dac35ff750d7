//! Forwarding to Redshift: which upstream a session uses, under which database
//! identity, with which minted credential, over which pooled connection.
//!
//! - `credentials.rs`: minting through the Redshift API, cached per identity.
//! - `pool.rs`: upstream sessions reused across clients of one identity, with limits.
//! - `wire.rs`: one upstream connection (TLS, login, raw messages, cancel).
//! - `relay.rs`: upstream messages to the client, COPY data to the upstream.

pub mod credentials;
pub mod pool;
pub mod relay;
pub mod rows;
pub mod table;
pub mod wire;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::{Config, RedshiftConfig, RoleConfig, UpstreamTls};
use crate::error::PgError;
use credentials::{Credentials, DbIdentity};
use pool::{Lease, Pool, PoolKey, Slot};
use wire::{Endpoint, UpstreamConn};

/// The database identity a session's roles give it upstream: the first role (in the
/// order the roles were granted, then through `includes`) with a `redshift_user`
/// template names the user; groups are the union of every role's `redshift_groups`.
/// `None`: the roles grant no Redshift access.
pub fn identity_for(user: &str, roles: &[String], defined: &[RoleConfig]) -> Option<DbIdentity> {
    let mut seen = BTreeSet::new();
    let mut queue: std::collections::VecDeque<&str> = roles.iter().map(String::as_str).collect();
    let mut template = None;
    let mut groups = BTreeSet::new();
    while let Some(name) = queue.pop_front() {
        if !seen.insert(name) {
            continue;
        }
        let Some(role) = defined.iter().find(|r| r.name == name) else {
            continue;
        };
        if template.is_none() {
            template = role.redshift_user.clone();
        }
        groups.extend(role.redshift_groups.iter().cloned());
        queue.extend(role.includes.iter().map(String::as_str));
    }
    // Redshift folds unquoted user names to lower case; so does Sluice.
    let user = template?.replace("{user}", user).to_lowercase();
    Some(DbIdentity {
        user,
        groups: groups.into_iter().collect(),
    })
}

/// One configured upstream.
pub struct Upstream {
    pub config: Arc<RedshiftConfig>,
    pub credentials: Arc<Credentials>,
    pub pool: Arc<Pool>,
    tls: Option<Arc<rustls::ClientConfig>>,
    endpoint: tokio::sync::Mutex<Option<Endpoint>>,
}

/// An upstream session held by one client session.
pub struct Held {
    pub conn: UpstreamConn,
    slot: Slot,
    key: PoolKey,
}

impl Upstream {
    pub fn new(config: &RedshiftConfig, base_dir: &std::path::Path) -> anyhow::Result<Upstream> {
        let config = Arc::new(config.clone());
        let tls = match config.tls {
            UpstreamTls::Disable => None,
            mode => Some(Arc::new(client_tls(
                mode,
                config.ca_file.as_deref(),
                base_dir,
            )?)),
        };
        let endpoint = match (&config.host, config.port) {
            (Some(h), Some(p)) => Some(Endpoint {
                host: h.clone(),
                port: p,
                tls: tls.clone(),
                weak_password_ok: weak_password_ok(&config),
            }),
            _ => None,
        };
        Ok(Upstream {
            credentials: Arc::new(Credentials::new(config.clone(), base_dir)?),
            pool: Pool::new(&config.name, config.pool.clone()),
            config,
            tls,
            endpoint: tokio::sync::Mutex::new(endpoint),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The configured endpoint, else the one the AWS API reports (looked up once).
    async fn endpoint(&self) -> Result<Endpoint, PgError> {
        let mut known = self.endpoint.lock().await;
        if let Some(e) = known.as_ref() {
            return Ok(e.clone());
        }
        let (host, port) = self.credentials.discover_endpoint().await?;
        let e = Endpoint {
            host,
            port,
            tls: self.tls.clone(),
            weak_password_ok: weak_password_ok(&self.config),
        };
        *known = Some(e.clone());
        Ok(e)
    }

    /// The endpoint if already known (for `SHOW sluice.pools`).
    /// Readiness: the endpoint (looked up through the AWS API when not configured)
    /// accepts a TCP connection within `within`.
    pub async fn probe(&self, within: std::time::Duration) -> Result<String, String> {
        let endpoint = tokio::time::timeout(within, self.endpoint())
            .await
            .map_err(|_| "endpoint lookup timed out".to_string())?
            .map_err(|e| format!("endpoint lookup failed: {}", e.message))?;
        let addr = format!("{}:{}", endpoint.host, endpoint.port);
        match tokio::time::timeout(within, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => Ok(format!("{addr} reachable")),
            Ok(Err(e)) => Err(format!("{addr} unreachable: {e}")),
            Err(_) => Err(format!("{addr} did not answer within {within:?}")),
        }
    }

    pub fn known_endpoint(&self) -> Option<String> {
        self.endpoint
            .try_lock()
            .ok()
            .and_then(|e| e.as_ref().map(|e| e.to_string()))
    }

    /// An upstream session for `identity`: a parked one of the same identity and
    /// parameters, or a new one logged in with a (cached) minted credential.
    pub async fn open(
        &self,
        identity: &DbIdentity,
        params: &[(String, String)],
        write: bool,
    ) -> Result<Held, PgError> {
        let key = PoolKey {
            identity: identity.clone(),
            write,
            params: params.to_vec(),
        };
        match self.pool.acquire(&key).await? {
            Lease::Reused(conn, slot) => Ok(Held { conn, slot, key }),
            Lease::New(slot) => {
                let endpoint = self.endpoint().await?;
                let minted = self.credentials.get(identity).await?;
                let mut startup: Vec<(&str, &str)> = vec![("database", &self.config.database)];
                startup.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                let timeout = Duration::from_secs(self.config.pool.connect_timeout_secs);
                let conn = tokio::time::timeout(
                    timeout,
                    UpstreamConn::connect(&endpoint, &startup, &minted.user, &minted.password),
                )
                .await
                .map_err(|_| {
                    wire::connect_error(
                        &endpoint,
                        format!("no answer within {} s", timeout.as_secs()),
                    )
                })??;
                tracing::debug!(upstream = %self.config.name, db_user = %minted.user, "opened upstream session");
                Ok(Held { conn, slot, key })
            }
        }
    }

    /// Gives a session back: parked for reuse when `clean`, else closed.
    pub async fn release(&self, held: Held, clean: bool) {
        self.pool
            .release(held.key, held.conn, held.slot, clean)
            .await;
    }
}

/// All configured upstreams.
#[derive(Default)]
pub struct Upstreams {
    list: Vec<Arc<Upstream>>,
    server_database: String,
}

impl Upstreams {
    pub fn from_config(config: &Config) -> anyhow::Result<Upstreams> {
        let list = config
            .redshift
            .iter()
            .map(|r| Upstream::new(r, &config.base_dir).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Upstreams {
            list,
            server_database: config.server.database.clone(),
        })
    }

    /// The upstream for clients connecting to `database`: the upstream of that name,
    /// or the first one for `server.database`.
    pub fn for_database(&self, database: &str) -> Option<Arc<Upstream>> {
        if database == self.server_database {
            return self.list.first().cloned();
        }
        self.list.iter().find(|u| u.name() == database).cloned()
    }

    pub fn all(&self) -> &[Arc<Upstream>] {
        &self.list
    }
}

/// TLS settings for upstream connections (ring provider, like the listener).
fn client_tls(
    mode: UpstreamTls,
    ca_file: Option<&std::path::Path>,
    base_dir: &std::path::Path,
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(f) => {
            let path = if f.is_absolute() {
                f.to_owned()
            } else {
                base_dir.join(f)
            };
            let pem = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("redshift ca_file {}: {e}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert =
                    cert.map_err(|e| anyhow::anyhow!("redshift ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("redshift ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                anyhow::bail!("redshift ca_file {}: no certificates found", path.display());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    );
    let config = match mode {
        UpstreamTls::VerifyFull => builder
            .with_webpki_verifier(webpki.build()?)
            .with_no_client_auth(),
        UpstreamTls::VerifyCa => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(webpki.build()?)))
            .with_no_client_auth(),
        UpstreamTls::Require | UpstreamTls::Disable => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Cleartext and MD5 passwords go only to upstreams whose certificate is verified,
/// unless the config says the network is trusted.
fn weak_password_ok(config: &RedshiftConfig) -> bool {
    config.allow_unverified_password
        || matches!(config.tls, UpstreamTls::VerifyFull | UpstreamTls::VerifyCa)
}

/// `verify-ca`: the chain must verify; the name need not match (like libpq).
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require`: encrypted, certificate not checked (handshake signatures still are).
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, user: Option<&str>, groups: &[&str], includes: &[&str]) -> RoleConfig {
        RoleConfig {
            name: name.into(),
            read: vec![],
            includes: includes.iter().map(|s| s.to_string()).collect(),
            write: false,
            admin: false,
            row_limit: None,
            result_cache_ttl_secs: None,
            manage_materialized_views: false,
            redshift_user: user.map(str::to_owned),
            redshift_groups: groups.iter().map(|s| s.to_string()).collect(),
            idle_session_timeout_secs: None,
            idle_in_transaction_session_timeout_secs: None,
            max_session_age_secs: None,
            max_connections: None,
            memory_share: None,
        }
    }

    #[test]
    fn first_role_names_the_user_and_groups_add_up() {
        let roles = vec![
            role("sales", None, &["sales"], &["base"]),
            role("base", Some("aad:{user}"), &["everyone"], &[]),
            role("admin", Some("admin_{user}"), &["admins"], &[]),
        ];
        let id = identity_for(
            "Alice@Contoso.com",
            &["sales".into(), "admin".into()],
            &roles,
        )
        .expect("an identity");
        // `sales` names no user; breadth-first, `admin` (granted directly) comes
        // before `base` (included by sales).
        assert_eq!(id.user, "admin_alice@contoso.com");
        assert_eq!(id.groups, vec!["admins", "everyone", "sales"]);
        assert!(
            identity_for(
                "bob",
                &["sales".into()],
                &[role("sales", None, &["x"], &[])]
            )
            .is_none()
        );
    }
}
