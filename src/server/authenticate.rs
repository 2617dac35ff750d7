//! Who the client is: the authentication exchange after the startup packet.
//!
//! - Local accounts (`[[auth.users]]`): SCRAM-SHA-256, and SCRAM-SHA-256-PLUS over
//!   TLS. Amazon's Redshift drivers cannot do SCRAM (redshift_connector 2.2 fails
//!   even against PostgreSQL, the JDBC driver hangs, the ODBC driver reads code 10
//!   as Kerberos), so for them the password travels in cleartext inside TLS and is
//!   checked against the same stored verifier. Redshift's own digest exchange
//!   (code 13) would need `SHA-256(password ‖ salt)` stored, a password equivalent;
//!   a SCRAM verifier is not, so Sluice does not offer the digest.
//! - Other users, when `[auth.oidc]` or `[auth.ldap]` is configured: a cleartext
//!   password inside TLS, which is an access token (it looks like a JWT and OIDC is
//!   on) or an LDAP password.
//! - Redshift native IdP sign-in (the startup packet carries `idp_type` or
//!   `token_type`): AuthenticationRequest 14, answered by an `'i'` message holding
//!   the token (with or without a trailing NUL: the Python driver omits it, JDBC
//!   and ODBC send it). The user comes from the token.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use pgwire::messages::startup::Authentication;

use crate::auth::Identity;
use crate::auth::ldap::LdapFailure;
use crate::auth::oidc::OidcValidator;
use crate::auth::scram::{ScramError, ScramExchange};
use crate::config::Plaintext;
use crate::error::{PgError, SqlState};
use crate::server::Shared;
use crate::wire::connection::{Connection, Disconnect};
use crate::wire::frame;

/// AuthenticationRequest code of Redshift's IdP-token exchange.
const AUTH_REQ_IDP_TOKEN: i32 = 14;

/// Which family of driver the startup packet says the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    Postgres,
    /// Amazon's Redshift JDBC/ODBC/Python drivers; `idp`: a native-IdP sign-in.
    Redshift {
        idp: bool,
    },
}

impl ClientKind {
    /// Every Redshift driver sends `client_protocol_version` (ANCHORS, and their
    /// sources); IdP plugins add `idp_type` (AzureAD, AwsIdc) or `token_type`.
    pub fn of(params: &BTreeMap<String, String>) -> ClientKind {
        let redshift = params.contains_key("client_protocol_version")
            || params
                .get("driver_version")
                .is_some_and(|v| v.starts_with("Redshift"))
            || params.contains_key("idp_type");
        if !redshift {
            return ClientKind::Postgres;
        }
        let idp = params.get("idp_type").is_some_and(|v| !v.is_empty())
            || params.get("token_type").is_some_and(|v| !v.is_empty());
        ClientKind::Redshift { idp }
    }

    pub fn is_redshift(self) -> bool {
        matches!(self, ClientKind::Redshift { .. })
    }
}

fn fatal(code: SqlState, msg: impl Into<String>) -> Disconnect {
    Disconnect::Protocol(PgError::fatal(code, msg.into()))
}

fn left() -> Disconnect {
    Disconnect::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "client left during authentication",
    ))
}

/// Authenticates the client of `params`, or explains (FATAL) why not.
pub async fn authenticate(
    conn: &mut Connection,
    peer: SocketAddr,
    params: &BTreeMap<String, String>,
    client: ClientKind,
    shared: &Shared,
) -> Result<Identity, Disconnect> {
    if params
        .get("replication")
        .is_some_and(|v| v != "false" && v != "0" && v != "off")
    {
        return Err(fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported",
        ));
    }
    let user = params.get("user").filter(|u| !u.is_empty()).cloned();
    if client == (ClientKind::Redshift { idp: true }) {
        check_database(params, user.as_deref(), shared)?;
        return idp_token_login(conn, peer, params, shared).await;
    }
    let user = user.ok_or_else(|| {
        fatal(
            SqlState::INVALID_AUTHORIZATION,
            "no user name specified in startup packet",
        )
    })?;
    if !conn.is_tls() && !plaintext_allowed(shared, peer) {
        return Err(Disconnect::Protocol(
            PgError::fatal(
                SqlState::INVALID_AUTHORIZATION,
                format!("connection without TLS refused for user \"{user}\": this server requires encryption"),
            )
            .with_hint("connect with sslmode=require (or verify-full)"),
        ));
    }
    check_database(params, Some(&user), shared)?;

    if let Some(verifier) = shared.accounts.verifier(&user) {
        if client.is_redshift() {
            return local_cleartext_login(conn, peer, &user, verifier, shared).await;
        }
        return scram_login(conn, peer, &user, Some(verifier), shared).await;
    }
    if shared.oidc.is_some() || shared.ldap.is_some() {
        return password_login(conn, peer, &user, shared).await;
    }
    // No such user and nothing else to ask: a full SCRAM exchange against a mock
    // verifier, so the answer does not reveal which user names exist.
    scram_login(conn, peer, &user, None, shared).await
}

fn plaintext_allowed(shared: &Shared, peer: SocketAddr) -> bool {
    match shared.config.server.tls.allow_plaintext {
        Plaintext::Always => true,
        Plaintext::Loopback => peer.ip().is_loopback(),
        Plaintext::Never => false,
    }
}

/// The database must be Sluice's or an upstream's (3D000 otherwise). With no
/// database and no user (a Redshift IdP sign-in), Sluice's own is meant.
fn check_database(
    params: &BTreeMap<String, String>,
    user: Option<&str>,
    shared: &Shared,
) -> Result<(), Disconnect> {
    let database = params
        .get("database")
        .map(String::as_str)
        .filter(|d| !d.is_empty())
        .or(user)
        .unwrap_or(&shared.config.server.database);
    if database != shared.config.server.database
        && shared.upstreams.for_database(database).is_none()
    {
        return Err(Disconnect::Protocol(
            PgError::fatal(
                SqlState::INVALID_CATALOG_NAME,
                format!("database \"{database}\" does not exist"),
            )
            .with_hint(format!(
                "this Sluice serves database \"{}\"",
                shared.config.server.database
            )),
        ));
    }
    Ok(())
}

/// Secrets travel in cleartext only inside TLS. On loopback without TLS: tokens
/// only with `auth.oidc.allow_plaintext_loopback`, passwords when the listener
/// allows plaintext there (`allow_plaintext = "loopback"`, development).
fn require_tls_for_secret(
    conn: &Connection,
    peer: SocketAddr,
    shared: &Shared,
    what: &str,
    user: &str,
) -> Result<(), Disconnect> {
    let loopback = peer.ip().is_loopback();
    let allowed = conn.is_tls()
        || (loopback
            && if what == "token" {
                shared
                    .config
                    .auth
                    .oidc
                    .as_ref()
                    .is_some_and(|o| o.allow_plaintext_loopback)
            } else {
                plaintext_allowed(shared, peer)
            });
    if allowed {
        return Ok(());
    }
    tracing::warn!(%user, %peer, "{what} login refused: no TLS");
    let noun = if what == "token" {
        "access tokens are"
    } else {
        "passwords are"
    };
    Err(Disconnect::Protocol(
        PgError::fatal(
            SqlState::INVALID_AUTHORIZATION,
            format!(
                "{what} login for user \"{user}\" requires TLS: {noun} never sent in plaintext"
            ),
        )
        .with_hint("connect with sslmode=require (or verify-full)"),
    ))
}

async fn read_password(conn: &mut Connection) -> Result<String, Disconnect> {
    let frame = conn
        .read_frame(|_| frame::MAX_AUTH_MESSAGE)
        .await?
        .ok_or_else(left)?;
    if frame.tag != b'p' {
        return Err(Disconnect::Protocol(PgError::protocol(format!(
            "expected password response, got message type {:?}",
            frame.tag as char
        ))));
    }
    frame::decode_password(&frame.body)
        .map(str::to_owned)
        .map_err(Disconnect::Protocol)
}

fn logged_in(conn: &mut Connection, peer: SocketAddr, identity: Identity, how: &str) -> Identity {
    tracing::info!(
        user = %identity.user,
        roles = ?identity.roles,
        groups = identity.groups.len(),
        %peer,
        tls = conn.is_tls(),
        method = how,
        "login succeeded"
    );
    conn.send(&Authentication::Ok);
    identity
}

fn wrong_password(user: &str) -> Disconnect {
    fatal(
        SqlState::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

async fn scram_login(
    conn: &mut Connection,
    peer: SocketAddr,
    user: &str,
    verifier: Option<&crate::auth::scram::Verifier>,
    shared: &Shared,
) -> Result<Identity, Disconnect> {
    let binding = conn
        .is_tls()
        .then(|| shared.tls.end_point_hash.clone())
        .flatten();
    let mut exchange = ScramExchange::new(verifier, user, binding);
    conn.send(&Authentication::SASL(exchange.mechanisms()));
    conn.flush().await?;
    let sasl_frame = |f: Option<frame::Frame>| -> Result<Bytes, Disconnect> {
        match f {
            Some(f) if f.tag == b'p' => Ok(f.body),
            Some(f) => Err(Disconnect::Protocol(PgError::protocol(format!(
                "expected SASL response, got message type {:?}",
                f.tag as char
            )))),
            None => Err(left()),
        }
    };
    let scram_err = |e: ScramError| {
        let (code, message) = match e {
            ScramError::Protocol(m) => (SqlState::PROTOCOL_VIOLATION, m),
            ScramError::WrongProof => {
                tracing::warn!(%user, %peer, reason = "wrong password or unknown user", "login failed");
                return wrong_password(user);
            }
            ScramError::Refused(m) => (SqlState::INVALID_AUTHORIZATION, m),
            ScramError::Unsupported(m) => (SqlState::FEATURE_NOT_SUPPORTED, m),
        };
        tracing::warn!(%user, %peer, reason = %message, "login failed");
        fatal(code, message)
    };
    let body = sasl_frame(conn.read_frame(|_| frame::MAX_AUTH_MESSAGE).await?)?;
    let (mechanism, client_first) =
        frame::decode_sasl_initial(&body).map_err(Disconnect::Protocol)?;
    exchange.select(mechanism).map_err(scram_err)?;
    let server_first = exchange.client_first(client_first).map_err(scram_err)?;
    conn.send(&Authentication::SASLContinue(Bytes::from(server_first)));
    conn.flush().await?;
    let body = sasl_frame(conn.read_frame(|_| frame::MAX_AUTH_MESSAGE).await?)?;
    let server_final = exchange.client_final(&body).map_err(scram_err)?;
    let identity = shared
        .accounts
        .identity(user)
        .ok_or_else(|| wrong_password(user))?;
    conn.send(&Authentication::SASLFinal(Bytes::from(server_final)));
    Ok(logged_in(conn, peer, identity, "scram"))
}

/// A Redshift driver's local account: cleartext inside TLS, checked against the
/// SCRAM verifier.
async fn local_cleartext_login(
    conn: &mut Connection,
    peer: SocketAddr,
    user: &str,
    verifier: &crate::auth::scram::Verifier,
    shared: &Shared,
) -> Result<Identity, Disconnect> {
    require_tls_for_secret(conn, peer, shared, "password", user)?;
    conn.send(&Authentication::CleartextPassword);
    conn.flush().await?;
    let password = read_password(conn).await?;
    if !verifier.verify_password(&password) {
        tracing::warn!(%user, %peer, reason = "wrong password", "login failed");
        return Err(wrong_password(user));
    }
    let identity = shared
        .accounts
        .identity(user)
        .ok_or_else(|| wrong_password(user))?;
    Ok(logged_in(conn, peer, identity, "password"))
}

/// A user without a local account: an access token or an LDAP password.
async fn password_login(
    conn: &mut Connection,
    peer: SocketAddr,
    user: &str,
    shared: &Shared,
) -> Result<Identity, Disconnect> {
    // With OIDC on, the stricter rule for tokens applies to whatever is sent.
    let what = if shared.oidc.is_some() {
        "token"
    } else {
        "password"
    };
    require_tls_for_secret(conn, peer, shared, what, user)?;
    conn.send(&Authentication::CleartextPassword);
    conn.flush().await?;
    let password = read_password(conn).await?;
    let is_token = OidcValidator::looks_like_jwt(&password);
    let use_ldap = shared
        .ldap
        .as_ref()
        .filter(|_| !is_token || shared.oidc.is_none());
    match (&shared.oidc, use_ldap) {
        (_, Some(ldap)) => match ldap.authenticate(user, &password).await {
            Ok(found) => {
                let identity = Identity::from_ldap(user, &found, &shared.access_rules());
                Ok(logged_in(conn, peer, identity, "ldap"))
            }
            Err(LdapFailure::Rejected(reason)) => {
                tracing::warn!(%user, %peer, %reason, "login failed (ldap)");
                Err(fatal(
                    SqlState::INVALID_PASSWORD,
                    format!("LDAP authentication failed for user \"{user}\": {reason}"),
                ))
            }
            Err(LdapFailure::Unavailable(reason)) => {
                tracing::error!(%user, %peer, %reason, "login failed: LDAP directory unavailable");
                Err(Disconnect::Protocol(
                    PgError::fatal(
                        SqlState::INVALID_AUTHORIZATION,
                        format!("cannot check the password of user \"{user}\": the LDAP directory is unavailable"),
                    )
                    .with_hint("try again shortly; the gateway's log says why"),
                ))
            }
        },
        (Some(oidc), None) => token_login(conn, peer, user, &password, oidc, shared).await,
        (None, None) => Err(wrong_password(user)),
    }
}

async fn token_login(
    conn: &mut Connection,
    peer: SocketAddr,
    user: &str,
    token: &str,
    oidc: &OidcValidator,
    shared: &Shared,
) -> Result<Identity, Disconnect> {
    match oidc.validate(token, user).await {
        Ok(validated) => {
            let identity = Identity::from_token(&validated, &shared.access_rules());
            tracing::debug!(subject = %validated.subject, issuer = %validated.issuer, "token validated");
            Ok(logged_in(conn, peer, identity, "token"))
        }
        Err(reason) => {
            reason.count();
            tracing::warn!(%user, %peer, %reason, "login failed (token)");
            let mut e = PgError::fatal(
                SqlState::INVALID_PASSWORD,
                format!("token authentication failed for user \"{user}\": {reason}"),
            );
            if !OidcValidator::looks_like_jwt(token) {
                e = e.with_hint("this user has no local account: send an access token as the password (see `sluice login`)");
            }
            Err(Disconnect::Protocol(e))
        }
    }
}

/// Redshift native IdP sign-in: AuthenticationRequest 14, then the `'i'` message.
async fn idp_token_login(
    conn: &mut Connection,
    peer: SocketAddr,
    params: &BTreeMap<String, String>,
    shared: &Shared,
) -> Result<Identity, Disconnect> {
    let idp_type = params.get("idp_type").map(String::as_str).unwrap_or("");
    let provider = params.get("provider_name").filter(|p| !p.is_empty());
    let shown_user = params.get("user").map(String::as_str).unwrap_or("");
    let Some(oidc) = &shared.oidc else {
        return Err(Disconnect::Protocol(
            PgError::fatal(
                SqlState::INVALID_AUTHORIZATION,
                format!("identity-provider sign-in (idp_type \"{idp_type}\") is not enabled on this Sluice"),
            )
            .with_hint("configure [auth.oidc] with an issuer for this provider, or sign in with a password"),
        ));
    };
    require_tls_for_secret(conn, peer, shared, "token", shown_user)?;
    frame::put_message(&mut conn.out, b'R', |b| {
        b.extend_from_slice(&AUTH_REQ_IDP_TOKEN.to_be_bytes())
    });
    conn.flush().await?;
    let frame = conn
        .read_frame(|_| frame::MAX_AUTH_MESSAGE)
        .await?
        .ok_or_else(left)?;
    if frame.tag != b'i' {
        return Err(Disconnect::Protocol(PgError::protocol(format!(
            "expected an identity-provider token ('i'), got message type {:?}",
            frame.tag as char
        ))));
    }
    let raw = frame.body.strip_suffix(&[0]).unwrap_or(&frame.body);
    let token = std::str::from_utf8(raw).map_err(|_| {
        fatal(
            SqlState::INVALID_PASSWORD,
            "token authentication failed: the token is not valid UTF-8",
        )
    })?;
    match oidc
        .validate_for(token, None, provider.map(String::as_str))
        .await
    {
        Ok(validated) => {
            // The drivers send no trustworthy user (Python: empty, JDBC: none, ODBC:
            // the OS login); the verified token says who this is.
            if !shown_user.is_empty() && !shown_user.eq_ignore_ascii_case(&validated.username) {
                tracing::debug!(startup_user = %shown_user, token_user = %validated.username, "IdP sign-in: startup user ignored");
            }
            let identity = Identity::from_token(&validated, &shared.access_rules());
            tracing::debug!(subject = %validated.subject, issuer = %validated.issuer, idp_type, "IdP token validated");
            Ok(logged_in(conn, peer, identity, "redshift-idp"))
        }
        Err(reason) => {
            reason.count();
            tracing::warn!(%peer, idp_type, provider = ?provider, %reason, "login failed (Redshift IdP token)");
            Err(fatal(
                SqlState::INVALID_PASSWORD,
                format!("identity-provider token authentication failed: {reason}"),
            ))
        }
    }
}
