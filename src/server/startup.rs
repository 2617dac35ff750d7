//! The start of every connection: TLS negotiation, the startup packet, and
//! authentication. Ends with an authenticated [`Connection`] or a clean refusal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::Identity;
use crate::error::{PgError, SqlState};
use crate::server::Shared;
use crate::server::authenticate::{ClientKind, authenticate};
use crate::wire::connection::{ClientStream, Connection, Disconnect};
use crate::wire::frame;

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
        client: ClientKind,
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
    let body_len = frame::startup_body_len(len).map_err(Disconnect::Protocol)?;
    let mut body = vec![0u8; body_len];
    s.read_exact(&mut body).await?;
    let (code, _) = frame::startup_code(&body).map_err(Disconnect::Protocol)?;
    Ok(Some((code, Bytes::from(body).slice(4..))))
}

async fn refuse(stream: &mut ClientStream, e: PgError) -> Disconnect {
    let mut out = bytes::BytesMut::new();
    crate::wire::messages::error_response(&mut out, &e);
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
        let alpn_ok = tls.get_ref().1.alpn_protocol() == Some(b"postgresql");
        let mut stream = ClientStream::Tls(Box::new(tls));
        if !alpn_ok {
            // As PostgreSQL 17: direct TLS must name the protocol (ALPACA), and the
            // client is told so inside the TLS session.
            let e = PgError::fatal(
                SqlState::PROTOCOL_VIOLATION,
                "received direct SSL connection request without ALPN protocol negotiation extension",
            )
            .with_hint("use sslnegotiation=postgres, or a client that sends ALPN \"postgresql\"");
            return Err(refuse(&mut stream, e).await);
        }
        stream
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
            code @ (frame::CANCEL_REQUEST_CODE | frame::PEER_CANCEL_REQUEST_CODE)
                if code == frame::CANCEL_REQUEST_CODE || shared.cluster.is_some() =>
            {
                if let Some((pid, secret)) = frame::decode_cancel(&body) {
                    // A client's cancel for another gateway's session is passed on,
                    // as its client would; one a peer passed on is for this
                    // gateway's sessions only, never passed on again.
                    let peer = (code == frame::CANCEL_REQUEST_CODE)
                        .then(|| shared.cluster.as_ref()?.peer_for(pid))
                        .flatten();
                    match peer {
                        Some(address) => forward_cancel(address.to_owned(), pid, secret),
                        None => {
                            let hit = shared.cancels.cancel(pid, secret);
                            tracing::debug!(pid, hit, code, "cancel request");
                        }
                    }
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
    let client = ClientKind::of(&params);
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
    negotiate(&mut conn.out, minor, &params, client);

    let limit = Duration::from_secs(shared.config.server.auth_timeout_secs);
    let authenticated = match tokio::time::timeout(
        limit,
        authenticate(&mut conn, peer, &params, client, shared),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(Disconnect::Protocol(PgError::fatal(
            SqlState::QUERY_CANCELED,
            "canceling authentication due to timeout",
        ))),
    };
    match authenticated {
        Ok(identity) => Ok(Handshake::Ready {
            conn: Box::new(conn),
            identity,
            params,
            client,
        }),
        Err(Disconnect::Protocol(e)) => {
            login_failed(shared, peer, &conn, &params, &e.message, e.code.0);
            conn.send_error(&e);
            conn.shutdown().await;
            Err(Disconnect::Protocol(e))
        }
        Err(Disconnect::Io(e)) => {
            let reason = format!("connection lost during authentication: {e}");
            login_failed(shared, peer, &conn, &params, &reason, "08006");
            Err(Disconnect::Io(e))
        }
    }
}

/// A login attempt that failed, for the audit trail and the login metrics. The
/// reason is the message the client was given: never the password or token.
fn login_failed(
    shared: &Shared,
    peer: SocketAddr,
    conn: &Connection,
    params: &BTreeMap<String, String>,
    reason: &str,
    sqlstate: &'static str,
) {
    let param = |k: &str| params.get(k).cloned().unwrap_or_default();
    shared.observer.login_failed(
        crate::audit::Who {
            user: param("user"),
            client: peer.to_string(),
            tls: conn.tls_version(),
            database: param("database"),
            application: param("application_name"),
            ..Default::default()
        },
        reason,
        sqlstate,
    );
}

/// Newer minor versions and `_pq_.` protocol options are negotiated down to 3.0
/// (NegotiateProtocolVersion, appended to `out`). Redshift drivers fail on it (none
/// of them handles 'v'); they never ask for a newer minor version, and their `_pq_.`
/// options are ignored.
pub(crate) fn negotiate(
    out: &mut bytes::BytesMut,
    minor: u16,
    params: &BTreeMap<String, String>,
    client: ClientKind,
) {
    let unsupported: Vec<&String> = params.keys().filter(|k| k.starts_with("_pq_.")).collect();
    if (minor > 0 || !unsupported.is_empty()) && !client.is_redshift() {
        frame::put_message(out, b'v', |b| {
            b.extend_from_slice(&0i32.to_be_bytes());
            b.extend_from_slice(&(unsupported.len() as i32).to_be_bytes());
            for o in &unsupported {
                b.extend_from_slice(o.as_bytes());
                b.extend_from_slice(&[0]);
            }
        });
    }
}

/// Passes a cancel request on to the gateway that handed out `pid`, on its own task
/// (the client that sent it does not wait for an answer).
fn forward_cancel(address: String, pid: i32, secret: i32) {
    // A flood of cancels for another gateway must not become a flood of tasks.
    static IN_FLIGHT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(64);
    let Ok(permit) = IN_FLIGHT.try_acquire() else {
        tracing::warn!(pid, peer = %address, "too many cancel requests being passed on; this one is dropped");
        return;
    };
    crate::metrics::metrics().cancels_forwarded.inc();
    tokio::spawn(async move {
        let _permit = permit;
        match crate::cluster::forward_cancel(&address, pid, secret).await {
            Ok(()) => tracing::debug!(pid, peer = %address, "cancel request passed on"),
            Err(e) => {
                tracing::warn!(pid, peer = %address, error = %e, "cannot pass a cancel request on to the gateway holding the session")
            }
        }
    });
}
