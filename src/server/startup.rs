//! The start of every connection: TLS negotiation, the startup packet, and
//! authentication. Ends with an authenticated [`Connection`] or a clean refusal.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use pgwire::messages::startup::Authentication;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::Identity;
use crate::auth::oidc::OidcValidator;
use crate::auth::scram::{MECHANISM, ScramError, ScramExchange};
use crate::config::Plaintext;
use crate::server::Shared;
use crate::server::connection::{ClientStream, Connection, Disconnect};
use crate::server::error::{PgError, SqlState};
use crate::server::frame::{self, MAX_STARTUP_PACKET};

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What the handshake produced.
pub enum Handshake {
    /// An authenticated client, ready for queries.
    Ready {
        conn: Box<Connection>,
        identity: Identity,
        params: BTreeMap<String, String>,
    },
    /// A cancel request (already handled) or a client that left: nothing more to do.
    Done,
}

/// Reads one startup-phase packet (length-prefixed, no tag) directly from the socket,
/// without read-ahead: bytes after an SSLRequest must not be consumed before TLS starts.
async fn read_packet<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
) -> Result<Option<(i32, Bytes)>, Disconnect> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = i32::from_be_bytes(len);
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(Disconnect::Protocol(PgError::protocol(format!(
            "invalid length of startup packet: {len}"
        ))));
    }
    let mut body = vec![0u8; len as usize - 4];
    s.read_exact(&mut body).await?;
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    Ok(Some((code, Bytes::from(body).slice(4..))))
}

async fn refuse(stream: &mut ClientStream, e: PgError) -> Disconnect {
    let mut out = bytes::BytesMut::new();
    e.encode(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
    Disconnect::Protocol(e)
}

/// Whether the server has room for this client. A full server still negotiates TLS and
/// reads the startup packet before refusing, as PostgreSQL does: a client that asked
/// for TLS must read "too many clients" inside TLS, not as an answer to its
/// SSLRequest. Cancel requests are honoured either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Open,
    Full,
}

pub async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    admission: Admission,
) -> Result<Handshake, Disconnect> {
    let _ = tcp.set_nodelay(true);
    // Direct TLS (PostgreSQL 17 `sslnegotiation=direct`): the first byte is a TLS record.
    let mut first = [0u8; 1];
    let direct_tls = tcp.peek(&mut first).await? == 1 && first[0] == TLS_HANDSHAKE_RECORD;
    let mut stream = if direct_tls {
        let tls = shared.tls.acceptor.accept(tcp).await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"postgresql") {
            return Err(Disconnect::Protocol(PgError::protocol(
                "direct TLS connection without ALPN \"postgresql\"",
            )));
        }
        ClientStream::Tls(Box::new(tls))
    } else {
        ClientStream::Plain(tcp)
    };
    let mut gss_refused = false;
    let (major, minor, body) = loop {
        let Some((code, body)) = read_packet(&mut stream).await? else {
            return Ok(Handshake::Done);
        };
        match code {
            SSL_REQUEST if !stream.is_tls() => {
                let ClientStream::Plain(mut tcp) = stream else {
                    unreachable!()
                };
                tcp.write_all(b"S").await?;
                let tls = shared.tls.acceptor.accept(tcp).await?;
                stream = ClientStream::Tls(Box::new(tls));
            }
            GSSENC_REQUEST if !stream.is_tls() && !gss_refused => {
                gss_refused = true;
                stream.write_all(b"N").await?;
            }
            frame::CANCEL_REQUEST_CODE => {
                if let Some((pid, secret)) = frame::decode_cancel(&body) {
                    let hit = shared.cancels.cancel(pid, secret);
                    tracing::debug!(pid, hit, "cancel request");
                }
                return Ok(Handshake::Done);
            }
            SSL_REQUEST | GSSENC_REQUEST => {
                return Err(refuse(
                    &mut stream,
                    PgError::protocol("unexpected encryption request"),
                )
                .await);
            }
            version => break ((version >> 16) as u16, (version & 0xffff) as u16, body),
        }
    };
    if major != 3 {
        return Err(refuse(
            &mut stream,
            PgError::fatal(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!("unsupported frontend protocol {major}.{minor}: server supports 3.0"),
            ),
        )
        .await);
    }
    let params: BTreeMap<String, String> = match frame::decode_startup_params(&body) {
        Ok(p) => p.into_iter().collect(),
        Err(e) => return Err(refuse(&mut stream, e).await),
    };
    let mut conn = Connection::new(stream);
    if admission == Admission::Full {
        let e = PgError::fatal(
            SqlState::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already",
        )
        .with_hint(format!(
            "this Sluice serves at most {} connections (server.max_connections)",
            shared.config.server.max_connections
        ));
        conn.send_error(&e);
        conn.shutdown().await;
        return Err(Disconnect::Protocol(e));
    }
    // Newer minor versions and `_pq_.` protocol options are negotiated down to 3.0.
    let unsupported: Vec<String> = params
        .keys()
        .filter(|k| k.starts_with("_pq_."))
        .cloned()
        .collect();
    if minor > 0 || !unsupported.is_empty() {
        frame::put_message(&mut conn.out, b'v', |b| {
            b.extend_from_slice(&0i32.to_be_bytes());
            b.extend_from_slice(&(unsupported.len() as i32).to_be_bytes());
            for o in &unsupported {
                b.extend_from_slice(o.as_bytes());
                b.extend_from_slice(&[0]);
            }
        });
    }

    match authenticate(&mut conn, peer, &params, shared).await {
        Ok(identity) => Ok(Handshake::Ready {
            conn: Box::new(conn),
            identity,
            params,
        }),
        Err(Disconnect::Protocol(e)) => {
            conn.send_error(&e);
            conn.shutdown().await;
            Err(Disconnect::Protocol(e))
        }
        Err(e) => Err(e),
    }
}

async fn authenticate(
    conn: &mut Connection,
    peer: SocketAddr,
    params: &BTreeMap<String, String>,
    shared: &Shared,
) -> Result<Identity, Disconnect> {
    let fatal = |code, msg: String| Disconnect::Protocol(PgError::fatal(code, msg));
    if params
        .get("replication")
        .is_some_and(|v| v != "false" && v != "0" && v != "off")
    {
        return Err(fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported".into(),
        ));
    }
    let user = params
        .get("user")
        .filter(|u| !u.is_empty())
        .cloned()
        .ok_or_else(|| {
            fatal(
                SqlState::INVALID_AUTHORIZATION,
                "no user name specified in startup packet".into(),
            )
        })?;
    if !conn.is_tls() {
        let allowed = match shared.config.server.tls.allow_plaintext {
            Plaintext::Always => true,
            Plaintext::Loopback => peer.ip().is_loopback(),
            Plaintext::Never => false,
        };
        if !allowed {
            return Err(Disconnect::Protocol(
                PgError::fatal(
                    SqlState::INVALID_AUTHORIZATION,
                    format!("connection without TLS refused for user \"{user}\": this server requires encryption"),
                )
                .with_hint("connect with sslmode=require (or verify-full)"),
            ));
        }
    }
    let database = params
        .get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user);
    if database != &shared.config.server.database
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

    let verifier = shared.accounts.verifier(&user);
    if verifier.is_none()
        && let Some(oidc) = &shared.oidc
    {
        return token_login(conn, peer, &user, oidc, shared).await;
    }
    let mut exchange = ScramExchange::new(verifier, &user);
    conn.send(&Authentication::SASL(vec![MECHANISM.to_string()]));
    conn.flush().await?;
    let auth_frame = |f: Option<frame::Frame>| -> Result<Bytes, Disconnect> {
        match f {
            Some(f) if f.tag == b'p' => Ok(f.body),
            Some(f) => Err(Disconnect::Protocol(PgError::protocol(format!(
                "expected SASL response, got message type {:?}",
                f.tag as char
            )))),
            None => Err(Disconnect::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "client left during authentication",
            ))),
        }
    };
    let body = auth_frame(conn.read_frame(|_| frame::MAX_AUTH_MESSAGE).await?)?;
    let (mechanism, client_first) =
        frame::decode_sasl_initial(&body).map_err(Disconnect::Protocol)?;
    if mechanism != MECHANISM {
        return Err(fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!("client selected an invalid SASL authentication mechanism \"{mechanism}\""),
        ));
    }
    let scram_err = |e: ScramError, user: &str| match e {
        ScramError::Protocol(m) => {
            Disconnect::Protocol(PgError::fatal(SqlState::PROTOCOL_VIOLATION, m))
        }
        ScramError::WrongProof => Disconnect::Protocol(PgError::fatal(
            SqlState::INVALID_PASSWORD,
            format!("password authentication failed for user \"{user}\""),
        )),
    };
    let server_first = exchange
        .client_first(client_first)
        .map_err(|e| scram_err(e, &user))?;
    conn.send(&Authentication::SASLContinue(Bytes::from(server_first)));
    conn.flush().await?;
    let body = auth_frame(conn.read_frame(|_| frame::MAX_AUTH_MESSAGE).await?)?;
    match exchange.client_final(&body) {
        Ok(server_final) => {
            if let Some(identity) = shared.accounts.identity(&user) {
                conn.send(&Authentication::SASLFinal(Bytes::from(server_final)));
                conn.send(&Authentication::Ok);
                tracing::info!(user = %identity.user, roles = ?identity.roles, %peer, tls = conn.is_tls(), "login succeeded");
                return Ok(identity);
            }
            Err(scram_err(ScramError::WrongProof, &user))
        }
        Err(e) => {
            let reason = match &e {
                ScramError::WrongProof => "wrong password or unknown user".to_string(),
                ScramError::Protocol(m) => m.clone(),
            };
            tracing::warn!(user = %user, %peer, %reason, "login failed");
            Err(scram_err(e, &user))
        }
    }
}

/// A user without a local account logs in with an OIDC access token as password.
async fn token_login(
    conn: &mut Connection,
    peer: SocketAddr,
    user: &str,
    oidc: &OidcValidator,
    shared: &Shared,
) -> Result<Identity, Disconnect> {
    let plaintext_ok = shared
        .config
        .auth
        .oidc
        .as_ref()
        .is_some_and(|o| o.allow_plaintext_loopback)
        && peer.ip().is_loopback();
    if !conn.is_tls() && !plaintext_ok {
        tracing::warn!(%user, %peer, "token login refused: no TLS");
        return Err(Disconnect::Protocol(
            PgError::fatal(
                SqlState::INVALID_AUTHORIZATION,
                format!("token login for user \"{user}\" requires TLS: access tokens are never sent in plaintext"),
            )
            .with_hint("connect with sslmode=require (or verify-full)"),
        ));
    }
    conn.send(&Authentication::CleartextPassword);
    conn.flush().await?;
    let frame = conn
        .read_frame(|_| frame::MAX_AUTH_MESSAGE)
        .await?
        .ok_or_else(|| {
            Disconnect::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "client left during authentication",
            ))
        })?;
    if frame.tag != b'p' {
        return Err(Disconnect::Protocol(PgError::protocol(format!(
            "expected password response, got message type {:?}",
            frame.tag as char
        ))));
    }
    let token = frame::decode_password(&frame.body).map_err(Disconnect::Protocol)?;
    match oidc.validate(token, user).await {
        Ok(validated) => {
            let identity = Identity::from_token(&validated, &shared.access_rules());
            tracing::info!(
                user = %identity.user,
                subject = %validated.subject,
                issuer = %validated.issuer,
                groups = identity.groups.len(),
                roles = ?identity.roles,
                %peer,
                tls = conn.is_tls(),
                "login succeeded (token)"
            );
            conn.send(&Authentication::Ok);
            Ok(identity)
        }
        Err(reason) => {
            tracing::warn!(%user, %peer, %reason, "login failed (token)");
            let looks_like_token = OidcValidator::looks_like_jwt(token);
            let mut e = PgError::fatal(
                SqlState::INVALID_PASSWORD,
                format!("token authentication failed for user \"{user}\": {reason}"),
            );
            if !looks_like_token {
                e = e.with_hint("this user has no local account: send an access token as the password (see `sluice login`)");
            }
            Err(Disconnect::Protocol(e))
        }
    }
}
