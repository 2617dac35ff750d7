//! The admin HTTP listener (`[admin] listen`): `/metrics` for Prometheus, `/livez`
//! and `/readyz` for orchestrators, and the dashboard for people.
//!
//! - `health.rs`: liveness and readiness checks.
//! - `metrics.rs`: gauges refreshed from the live parts, then the text format.
//! - `dashboard.rs` (+ `dashboard.html`): the live page and its JSON.
//!
//! HTTPS with the server's certificate unless the address is loopback (config
//! validation refuses plaintext elsewhere). `/metrics`, `/livez` and `/readyz` are
//! open, as exporters' are (they carry no user names or statement text); the
//! dashboard asks for the credentials of a Sluice login whose roles have
//! `admin = true` (HTTP Basic: a local account's password, an LDAP password, or
//! an access token as the password, as with `psql`).

mod dashboard;
mod health;
mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::Shared;
use crate::auth::Identity;
use crate::auth::oidc::OidcValidator;
use crate::auth::policy::Policy;

type Body = Full<Bytes>;

/// Admin connections served at once.
const MAX_CONNECTIONS: usize = 64;

/// Binds the admin listener when configured (before the first client is served,
/// so a wrong address stops start-up).
pub async fn bind(shared: &Shared) -> Result<Option<TcpListener>, String> {
    let Some(addr) = shared.config.admin.listen_addr()? else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|e| format!("admin.listen: cannot listen on {addr}: {e}"))
}

/// Serves the admin listener until the process ends.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let tls = shared
        .config
        .admin
        .serves_tls()
        .then(|| shared.tls.http_acceptor.clone());
    if let Ok(addr) = listener.local_addr() {
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, "admin listener: {scheme}://{addr}/metrics, /livez, /readyz, /dashboard");
    }
    // Scrapers, probes and a few dashboards: a small bound keeps a flood of
    // connections (or of password checks) from eating the gateway's CPU.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off, do not spin.
                tracing::warn!(error = %e, "admin listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "admin listener: too many connections; closing one");
            continue;
        };
        let (shared, tls) = (shared.clone(), tls.clone());
        tokio::spawn(async move {
            connection(tcp, peer, shared, tls).await;
            drop(slot);
        });
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
) {
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(route(req, &shared, peer).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let served = match tls {
        Some(acceptor) => {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "admin listener: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            }
        }
        None => builder.serve_connection(TokioIo::new(tcp), service).await,
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "admin listener: connection ended");
    }
}

async fn route(req: Request<Incoming>, shared: &Shared, peer: SocketAddr) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
    }
    match req.uri().path() {
        "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" => health::readyz(shared).await,
        "/metrics" => metrics::scrape(shared),
        "/" | "/dashboard" | "/dashboard/data" => match admin_login(&req, shared, peer).await {
            Ok((identity, policy)) => {
                if req.uri().path() == "/dashboard/data" {
                    dashboard::data(shared, &identity, &policy)
                } else {
                    dashboard::page(shared, &identity, &policy)
                }
            }
            Err(refused) => refused,
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /dashboard, /metrics, /livez or /readyz\n",
        ),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn ask_for_credentials(message: &'static str) -> Response<Body> {
    let mut r = text(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Sluice admin\", charset=\"UTF-8\""),
    );
    r
}

/// The dashboard's login: HTTP Basic, checked like a PostgreSQL login of the same
/// user, then the roles must include an admin one.
async fn admin_login(
    req: &Request<Incoming>,
    shared: &Shared,
    peer: SocketAddr,
) -> Result<(Identity, Policy), Response<Body>> {
    let Some((user, secret)) = basic_credentials(req) else {
        return Err(ask_for_credentials(
            "sign in with a Sluice login whose roles have admin = true\n",
        ));
    };
    let identity = match check_password(shared, &user, &secret).await {
        Some(identity) => identity,
        None => {
            tracing::warn!(%user, %peer, "dashboard login failed");
            crate::metrics::metrics()
                .logins
                .with_label_values(&["dashboard", "failed"])
                .inc();
            return Err(ask_for_credentials("wrong user name or password\n"));
        }
    };
    let policy = Policy::resolve(&identity.roles, &shared.access_rules().roles);
    if !policy.admin {
        tracing::warn!(%user, %peer, "dashboard refused: not an admin role");
        return Err(text(
            StatusCode::FORBIDDEN,
            "the dashboard needs a Sluice role with admin = true\n",
        ));
    }
    Ok((identity, policy))
}

fn basic_credentials(req: &Request<Incoming>) -> Option<(String, String)> {
    use base64::Engine as _;
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, secret) = decoded.split_once(':')?;
    Some((user.to_owned(), secret.to_owned()))
}

async fn check_password(shared: &Shared, user: &str, secret: &str) -> Option<Identity> {
    if let Some(verifier) = shared.accounts.verifier(user) {
        return verifier
            .verify_password(secret)
            .then(|| shared.accounts.identity(user))
            .flatten();
    }
    let is_token = OidcValidator::looks_like_jwt(secret);
    if let Some(oidc) = &shared.oidc
        && (is_token || shared.ldap.is_none())
    {
        let validated = oidc.validate(secret, user).await.ok()?;
        return Some(Identity::from_token(&validated, &shared.access_rules()));
    }
    let ldap = shared.ldap.as_ref()?;
    let found = ldap.authenticate(user, secret).await.ok()?;
    Some(Identity::from_ldap(user, &found, &shared.access_rules()))
}
