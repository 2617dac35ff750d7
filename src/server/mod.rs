//! The PostgreSQL front end: listener, TLS, startup and authentication, sessions.
//!
//! `frame` decodes client messages, `connection` buffers a socket, `startup` takes a
//! connection from first byte to authenticated, and `session` runs its statements.

pub mod authenticate;
pub mod cancel;
#[cfg(test)]
mod fuzz;
pub mod http;
pub mod hygiene;
pub mod session;
pub mod settings;
pub mod startup;
pub mod threads;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::auth::LocalAccounts;
use crate::auth::oidc::OidcValidator;
use crate::config::{AccessRules, Config};
use crate::engine::Engine;
use crate::error::{PgError, SqlState};
use crate::wire::Disconnect;
use cancel::CancelRegistry;

/// What every session shares. Fixed at start-up except the role mapping and roles
/// (`access`, swapped whole on reload); the parts it holds (engine, caches, pools,
/// views) change inside, under their own locks.
pub struct Shared {
    /// The config as loaded at start; see `access` for the parts that reload.
    pub config: Arc<Config>,
    access: std::sync::RwLock<Arc<AccessRules>>,
    pub engine: Arc<Engine>,
    pub accounts: LocalAccounts,
    /// Token validation, when `[auth.oidc]` is configured.
    pub oidc: Option<OidcValidator>,
    /// LDAP password checks, when `[auth.ldap]` is configured.
    pub ldap: Option<crate::auth::ldap::LdapAuthenticator>,
    pub cancels: Arc<CancelRegistry>,
    /// This gateway among its peers, when `[cluster]` is configured.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    pub tls: tls::Tls,
    /// Redshift upstreams (`[[redshift]]`), possibly none.
    pub upstreams: crate::redshift::Upstreams,
    /// The result cache, when a TTL is configured (globally or for a role).
    pub results: Option<Arc<crate::cache::results::ResultCache>>,
    /// Gateway materialized views, when `[materialized_views]` is configured.
    pub matviews: Option<Arc<crate::cache::matview::MatViews>>,
    /// Scheduled SQL jobs, when `[[jobs]]` are configured.
    pub jobs: Option<Arc<crate::jobs::Jobs>>,
    /// Decides where statements go (and memoises their parses).
    pub router: crate::route::Router,
    /// The record stage's consumers (metrics, query groups, audit) and the session board.
    pub observer: Arc<crate::observe::Observer>,
    /// Workload queues and monitoring rules, when `[workload]` configures any.
    pub workload: Option<Arc<crate::workload::Workload>>,
    /// Sessions per user and role, for their connection limits.
    pub connections: Arc<hygiene::ConnectionCounts>,
    /// The last `/readyz` answer and when it was made (reused briefly).
    pub(crate) readiness: std::sync::Mutex<Option<(std::time::Instant, bool, String)>>,
}

impl Shared {
    /// The current role mapping and role policy.
    pub fn access_rules(&self) -> Arc<AccessRules> {
        match self.access.read() {
            Ok(a) => a.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Re-reads the config file and applies its role mapping and roles. An invalid
    /// file is rejected whole and the running rules stay.
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.config.source else {
            return Err("the config was not loaded from a file".into());
        };
        let fresh = Config::load(path).map_err(|e| e.to_string())?;
        let rules = Arc::new(fresh.access_rules());
        match self.access.write() {
            Ok(mut a) => *a = rules,
            Err(p) => *p.into_inner() = rules,
        }
        Ok(())
    }
}

/// A bound, ready-to-serve gateway.
pub struct Server {
    listener: TcpListener,
    /// The admin HTTP listener, when `[admin] listen` is set.
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    threads: threads::SessionThreads,
}

impl Server {
    /// Validates everything that can fail before accepting the first client.
    pub async fn bind(config: Config) -> Result<Server, String> {
        let config = Arc::new(config);
        raise_file_limit(config.server.max_connections);
        let tls = tls::load(&config)?;
        if tls.self_signed {
            tracing::info!(sha256 = %tls.fingerprint, "TLS: generated a self-signed certificate (configure server.tls.cert/key for a trusted one)");
        } else {
            tracing::info!(sha256 = %tls.fingerprint, "TLS: loaded certificate");
        }
        let accounts = LocalAccounts::from_config(&config)?;
        let oidc = config
            .auth
            .oidc
            .as_ref()
            .map(|o| OidcValidator::new(o, &config.base_dir))
            .transpose()?;
        let ldap = crate::auth::ldap::LdapAuthenticator::new(&config)?;
        let upstreams =
            crate::redshift::Upstreams::from_config(&config).map_err(|e| e.to_string())?;
        let engine = Arc::new(Engine::new(&config).await?);
        let caching = config.cache.result_ttl_secs > 0
            || config
                .roles
                .iter()
                .any(|r| r.result_cache_ttl_secs.is_some_and(|t| t > 0));
        let cluster = config
            .cluster
            .as_ref()
            .map(crate::cluster::Cluster::from_config)
            .transpose()?
            .map(Arc::new);
        // Gateways of a cluster share one config: when none caches, none needs the
        // others' writes, and sessions skip the analysis the cache needs.
        let results = caching.then(|| crate::cache::results::ResultCache::new(&config.cache));
        if let (Some(results), Some(c), Some(location)) =
            (&results, &config.cluster, config.cluster_storage())
        {
            let storage = crate::cache::matview::storage::Storage::open(
                &config,
                location,
                "cluster.storage",
                &engine,
            )?;
            let dir = storage
                .root()
                .clone()
                .join("_cluster")
                .join("invalidations");
            results.share(
                crate::cluster::journal::Journal::new(storage.store.clone(), dir),
                Duration::from_millis(c.poll_ms),
            );
            tracing::info!(
                gateway = c.gateway_id,
                storage = location,
                "cluster: sharing result-cache invalidations"
            );
        }
        let matviews = crate::cache::matview::MatViews::start(
            &config,
            engine.clone(),
            &upstreams,
            results.clone(),
        )
        .await?;
        let jobs =
            crate::jobs::Jobs::start(&config, engine.clone(), &upstreams, matviews.clone()).await?;
        let audit = match &config.audit {
            Some(a) => Some(crate::audit::Auditor::start(a, |p| config.resolve(p))?),
            None => None,
        };
        let query_groups = config
            .query_groups
            .enabled
            .then(|| crate::observe::QueryGroups::new(config.query_groups.max_groups));
        let observer = Arc::new(crate::observe::Observer::new(query_groups, audit));
        let job_tables =
            crate::jobs::table::JobTables(jobs.as_ref().map(Arc::downgrade).unwrap_or_default());
        engine.set_system_tables(Arc::new(crate::engine::system::Several(vec![
            Arc::new(crate::observe::system_tables::ObserverTables(
                observer.clone(),
            )),
            Arc::new(job_tables),
        ])));
        let addr = config.listen_addr()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("server.listen: cannot listen on {addr}: {e}"))?;
        let count = config.server.worker_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        });
        let threads = threads::SessionThreads::start(count)
            .map_err(|e| format!("cannot start {count} session threads: {e}"))?;
        tracing::debug!(threads = count, "session threads started");
        let shared = Arc::new(Shared {
            workload: crate::workload::Workload::new(&config.workload),
            access: std::sync::RwLock::new(Arc::new(config.access_rules())),
            config,
            router: crate::route::Router::new(engine.clone()),
            observer,
            readiness: std::sync::Mutex::new(None),
            connections: Arc::default(),
            engine,
            accounts,
            oidc,
            ldap,
            cancels: CancelRegistry::for_gateway(cluster.as_ref().map(|c| c.gateway_id)),
            cluster,
            tls,
            upstreams,
            results,
            matviews,
            jobs,
        });
        let admin = http::bind(&shared).await?;
        Ok(Server {
            listener,
            admin,
            threads,
            shared,
        })
    }

    /// The admin listener's address, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// What a SIGHUP handler calls; shared with the server's own file watcher.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Accepts clients until the task is dropped. Each connection runs in its own task
    /// on one of the session threads, so a failing or misbehaving client never
    /// affects another.
    pub async fn run(mut self) {
        let limit = Arc::new(Semaphore::new(self.shared.config.server.max_connections));
        if let Some(admin) = self.admin.take() {
            tokio::spawn(http::serve(admin, self.shared.clone()));
        }
        tokio::spawn(watch_config(Arc::downgrade(&self.shared)));
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let shared = self.shared.clone();
            let permit = limit.clone().try_acquire_owned();
            // The socket moves to the session's thread and registers there.
            let tcp = match tcp.into_std() {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot hand over a connection");
                    continue;
                }
            };
            self.threads.spawn(async move {
                let tcp = match TcpStream::from_std(tcp) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "cannot register a connection");
                        return;
                    }
                };
                match permit {
                    Ok(_permit) => serve_connection(tcp, peer, shared).await,
                    Err(_) => refuse_busy(tcp, peer, shared).await,
                }
            });
        }
    }
}

/// Every client is a socket: a process limited to fewer open files than
/// `max_connections` cannot even accept the clients beyond it (accept fails with
/// EMFILE and they wait, unanswered, in the listen backlog). The soft limit is
/// raised to the hard one, as Go's runtime does for every server, and a limit that is
/// still too low is reported at start.
fn raise_file_limit(max_connections: usize) {
    // Files besides client sockets: listener, runtimes, logs, upstream and HTTP
    // connections, lake files being read.
    const HEADROOM: u64 = 256;
    let wanted = max_connections as u64 + HEADROOM;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < wanted => tracing::warn!(
            open_files = limit,
            max_connections,
            "this process may open only {limit} files, too few for server.max_connections = \
             {max_connections}: clients past about {} connections will wait unanswered; raise \
             the hard limit (ulimit -n, systemd LimitNOFILE, docker --ulimit nofile)",
            limit.saturating_sub(HEADROOM)
        ),
        Ok(limit) => tracing::debug!(open_files = limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
}

/// Reloads role mapping and roles when the config file changes (checked every 2 s).
async fn watch_config(shared: std::sync::Weak<Shared>) {
    let modified = |s: &Shared| {
        s.config
            .source
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .and_then(|m| m.modified().ok())
    };
    let Some(mut last) = shared.upgrade().and_then(|s| modified(&s)) else {
        return;
    };
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Some(s) = shared.upgrade() else { return };
        let Some(now) = modified(&s) else { continue };
        if now != last {
            last = now;
            reload_and_log(&s, "config file changed");
        }
    }
}

/// Applies a reload and reports the outcome in the log.
pub fn reload_and_log(shared: &Shared, why: &str) {
    match shared.reload() {
        Ok(()) => tracing::info!(reason = why, "reloaded role mapping and roles"),
        Err(e) => {
            tracing::error!(reason = why, error = %e, "config reload rejected; keeping the running rules")
        }
    }
}

async fn serve_connection(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    // The handshake times authentication out itself (and tells the client); this is
    // the backstop for a client that never finishes TLS or its startup packet.
    let timeout = Duration::from_secs(shared.config.server.auth_timeout_secs + 5);
    let handshake = tokio::time::timeout(
        timeout,
        startup::handshake(tcp, peer, &shared, startup::Admission::Open),
    )
    .await;
    let (conn, identity, params, client) = match handshake {
        Ok(Ok(startup::Handshake::Ready {
            conn,
            identity,
            params,
            client,
        })) => (conn, identity, params, client),
        Ok(Ok(startup::Handshake::Done)) => return,
        Ok(Err(Disconnect::Protocol(e))) => {
            tracing::debug!(%peer, error = %e, "connection refused during startup");
            return;
        }
        Ok(Err(Disconnect::Io(e))) => {
            tracing::debug!(%peer, error = %e, "connection lost during startup");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "authentication timed out");
            return;
        }
    };
    // Connection limits count authenticated sessions; the place is given back when
    // `_slot` drops, however the session ends.
    let _slot = match shared.connections.admit(
        &identity.user,
        &identity.roles,
        shared.config.server.max_connections_per_user,
        &shared.access_rules().roles,
    ) {
        Ok(slot) => slot,
        Err(e) => {
            let mut conn = conn;
            tracing::info!(%peer, user = %identity.user, error = %e.message, "login refused: connection limit");
            shared.observer.login_failed(
                who(&identity, 0, peer, &conn, &params),
                &e.message,
                e.code.0,
            );
            conn.send_error(&e);
            conn.shutdown().await;
            return;
        }
    };
    let cancel = shared.cancels.register();
    let user = identity.user.clone();
    let who = Arc::new(who(&identity, cancel.pid, peer, &conn, &params));
    shared.observer.login(&who);
    let session = session::Session::new(*conn, shared.clone(), identity, cancel, client, who);
    match session.run(&params).await {
        Ok(()) => tracing::debug!(%peer, %user, "session ended"),
        Err(Disconnect::Protocol(e)) => {
            tracing::info!(%peer, %user, error = %e, "session closed: protocol error")
        }
        Err(Disconnect::Io(e)) => {
            tracing::debug!(%peer, %user, error = %e, "session closed: connection lost")
        }
    }
}

/// The audit trail's view of a session that logged in.
fn who(
    identity: &crate::auth::Identity,
    session: i32,
    peer: SocketAddr,
    conn: &crate::wire::Connection,
    params: &std::collections::BTreeMap<String, String>,
) -> crate::audit::Who {
    use crate::auth::AuthMethod;
    let (auth, tenant, object_id) = match &identity.method {
        AuthMethod::Local => ("password", None, None),
        AuthMethod::Ldap { .. } => ("ldap", None, None),
        AuthMethod::Token { subject, .. } => match subject.split_once('/') {
            Some((tid, oid)) => ("token", Some(tid.to_owned()), Some(oid.to_owned())),
            None => ("token", None, Some(subject.clone())),
        },
    };
    crate::audit::Who {
        session,
        user: identity.user.clone(),
        tenant,
        object_id,
        auth,
        roles: identity.roles.clone(),
        groups: identity.groups.len(),
        client: peer.to_string(),
        tls: conn.tls_version(),
        database: params.get("database").cloned().unwrap_or_default(),
        application: params.get("application_name").cloned().unwrap_or_default(),
    }
}

/// Past `server.max_connections`: the client is refused with 53300 after TLS and the
/// startup packet (`startup::Admission::Full`), within a short deadline. Refusals in
/// progress are bounded too (`MAX_REFUSALS`); past that bound a connection flood is
/// answered with the error in plaintext at once, which is what PostgreSQL's
/// postmaster does when even its refusal slots are exhausted.
async fn refuse_busy(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    use tokio::io::AsyncWriteExt;
    static REFUSALS: Semaphore = Semaphore::const_new(MAX_REFUSALS);
    let Ok(_slot) = REFUSALS.try_acquire() else {
        let mut tcp = tcp;
        let mut out = bytes::BytesMut::new();
        let e = PgError::fatal(
            SqlState::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already",
        );
        crate::wire::messages::error_response(&mut out, &e);
        let _ = tcp.write_all(&out).await;
        let _ = tcp.shutdown().await;
        return;
    };
    let refused = tokio::time::timeout(
        REFUSAL_DEADLINE,
        startup::handshake(tcp, peer, &shared, startup::Admission::Full),
    )
    .await;
    tracing::debug!(%peer, done = refused.is_ok(), "refused: too many connections");
}

/// Refusals past `max_connections` that may be negotiating TLS at once.
const MAX_REFUSALS: usize = 256;
/// How long a refused client may take to reach its startup packet.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);
