//! One connection to an upstream (Redshift or any PostgreSQL-protocol server): TLS,
//! the startup handshake with the client side of cleartext/MD5/SCRAM-SHA-256
//! authentication (postgres-protocol), raw message I/O for the relay, and cancel.
//!
//! Messages are never decoded beyond their tag and length on the hot path: the relay
//! copies them into the client's output buffer as they are.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::{PgError, SqlState};

/// Largest upstream message accepted (PostgreSQL's own limit for a field is 1 GB).
const MAX_MESSAGE: usize = 1 << 30;

/// Where and how to connect; shared by every connection of one upstream.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// `None`: plaintext (tls = "disable").
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Whether a cleartext or MD5 password may be sent here: the certificate is
    /// verified, or the config allows it (`allow_unverified_password`).
    pub weak_password_ok: bool,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The key a CancelRequest for this connection's backend needs.
#[derive(Clone)]
pub struct CancelTarget {
    pub endpoint: Endpoint,
    pub pid: i32,
    pub secret: i32,
}

/// An authenticated upstream connection, ready for queries.
pub struct UpstreamConn {
    stream: Stream,
    /// The thread whose runtime the socket is registered with (the session thread
    /// that opened it): the pool hands parked sessions back to that thread first.
    pub home: std::thread::ThreadId,
    input: BytesMut,
    /// Messages to send; written by [`UpstreamConn::flush`].
    pub out: BytesMut,
    pub cancel: Option<CancelTarget>,
    /// ParameterStatus values the upstream reported at startup.
    pub parameters: Vec<(String, String)>,
    /// The transaction status of the last ReadyForQuery (`I`, `T` or `E`).
    pub status: u8,
    /// Errors Sluice provoked itself before the next ReadyForQuery (to fail an
    /// implicit transaction, see `session::forward`): consumed, never relayed.
    pub provoked_errors: usize,
    /// How relayed statements ended since the session last took the tally.
    pub tally: crate::redshift::relay::Tally,
}

/// The upstream asked for a password form that exposes it to whoever is in between,
/// and nothing proves the upstream is who it claims to be.
fn weak_password_refused(endpoint: &Endpoint, code: i32) -> PgError {
    let (how, risk) = if code == 3 {
        (
            "in cleartext",
            "would hand the password to anyone in between",
        )
    } else {
        ("as an MD5 hash", "would expose it to offline guessing")
    };
    let tls = if endpoint.tls.is_some() {
        "its certificate is not verified (tls = \"require\")"
    } else {
        "the connection is not encrypted (tls = \"disable\")"
    };
    connect_error(
        endpoint,
        format!("the upstream asked for the password {how} but {tls}; sending it {risk}"),
    )
    .with_hint(
        "use tls = \"verify-full\" (or \"verify-ca\") with the upstream's CA, SCRAM authentication \
         on the upstream, or set allow_unverified_password = true for a trusted network",
    )
}

/// A failure to open an upstream session, already phrased for the client.
pub fn connect_error(endpoint: &Endpoint, what: impl std::fmt::Display) -> PgError {
    PgError::new(
        SqlState("08001"),
        format!("could not connect to the Redshift upstream at {endpoint}: {what}"),
    )
}

impl UpstreamConn {
    /// Connects, negotiates TLS and logs in as `user`. Errors carry SQLSTATE 08001 (or
    /// the upstream's own code for authentication failures) and never the password.
    pub async fn connect(
        endpoint: &Endpoint,
        params: &[(&str, &str)],
        user: &str,
        password: &str,
    ) -> Result<UpstreamConn, PgError> {
        let stream = open_stream(endpoint).await?;
        let mut conn = UpstreamConn {
            stream,
            home: std::thread::current().id(),
            input: BytesMut::with_capacity(16 * 1024),
            out: BytesMut::with_capacity(4096),
            cancel: None,
            parameters: Vec::new(),
            status: b'I',
            provoked_errors: 0,
            tally: Default::default(),
        };
        let mut startup: Vec<(&str, &str)> = vec![("user", user)];
        startup.extend(params.iter().copied().filter(|(k, _)| *k != "user"));
        frontend::startup_message(startup.iter().copied(), &mut conn.out)
            .map_err(|e| connect_error(endpoint, e))?;
        conn.flush().await.map_err(|e| connect_error(endpoint, e))?;
        conn.authenticate(endpoint, user, password).await?;
        loop {
            let (tag, len) = conn
                .read_message()
                .await
                .map_err(|e| connect_error(endpoint, e))?;
            let body = conn.input[5..len].to_vec();
            conn.input.advance(len);
            match tag {
                b'S' => {
                    let mut parts = body.split(|b| *b == 0);
                    let k = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    let v = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    conn.parameters.push((k, v));
                }
                b'K' if body.len() >= 8 => {
                    conn.cancel = Some(CancelTarget {
                        endpoint: endpoint.clone(),
                        pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                        secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                    });
                }
                b'Z' => {
                    conn.status = body.first().copied().unwrap_or(b'I');
                    return Ok(conn);
                }
                b'E' => return Err(upstream_error(&body, "the upstream refused the session")),
                _ => {}
            }
        }
    }

    async fn authenticate(
        &mut self,
        endpoint: &Endpoint,
        user: &str,
        password: &str,
    ) -> Result<(), PgError> {
        let io_err = |e: io::Error| connect_error(endpoint, e);
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, len) = self.read_message().await.map_err(io_err)?;
            let body = self.input[5..len].to_vec();
            self.input.advance(len);
            match tag {
                b'E' => return Err(upstream_error(&body, "the upstream refused the login")),
                b'R' if body.len() >= 4 => {
                    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let data = &body[4..];
                    match code {
                        0 => return Ok(()),
                        3 | 5 if !endpoint.weak_password_ok => {
                            return Err(weak_password_refused(endpoint, code));
                        }
                        3 => frontend::password_message(password.as_bytes(), &mut self.out)
                            .map_err(io_err)?,
                        5 if data.len() >= 4 => {
                            let salt = [data[0], data[1], data[2], data[3]];
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                password.as_bytes(),
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut self.out)
                                .map_err(io_err)?;
                        }
                        10 => {
                            let offers_scram = data
                                .split(|b| *b == 0)
                                .any(|m| m == SCRAM_SHA_256.as_bytes());
                            if !offers_scram {
                                return Err(connect_error(
                                    endpoint,
                                    "the upstream offers no SASL mechanism Sluice supports (SCRAM-SHA-256)",
                                ));
                            }
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(
                                SCRAM_SHA_256,
                                s.message(),
                                &mut self.out,
                            )
                            .map_err(io_err)?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                connect_error(endpoint, "unexpected SASL continue message")
                            })?;
                            s.update(data).map_err(io_err)?;
                            frontend::sasl_response(s.message(), &mut self.out).map_err(io_err)?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                connect_error(endpoint, "unexpected SASL final message")
                            })?;
                            // Verifies the server's signature: a server that does not
                            // know the password cannot impersonate the upstream.
                            s.finish(data).map_err(io_err)?;
                            continue;
                        }
                        other => {
                            return Err(connect_error(
                                endpoint,
                                format!(
                                    "unsupported authentication request {other} from the upstream"
                                ),
                            ));
                        }
                    }
                    self.flush().await.map_err(io_err)?;
                }
                b'N' => {}
                other => {
                    return Err(connect_error(
                        endpoint,
                        format!("unexpected message {:?} during login", other as char),
                    ));
                }
            }
        }
    }

    /// Makes sure one whole message is buffered and returns its tag and total length
    /// (tag and length word included). The message stays in the buffer.
    pub async fn read_message(&mut self) -> io::Result<(u8, usize)> {
        loop {
            if self.input.len() >= 5 {
                let len = i32::from_be_bytes([
                    self.input[1],
                    self.input[2],
                    self.input[3],
                    self.input[4],
                ]);
                if len < 4 || len as usize > MAX_MESSAGE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("invalid message length {len} from the upstream"),
                    ));
                }
                let total = 1 + len as usize;
                if self.input.len() >= total {
                    return Ok((self.input[0], total));
                }
                self.input.reserve(total - self.input.len());
            } else {
                self.input.reserve(16 * 1024);
            }
            if self.stream.read_buf(&mut self.input).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed the connection",
                ));
            }
        }
    }

    /// The buffered message of `len` bytes (from [`read_message`](Self::read_message)).
    pub fn message(&self, len: usize) -> &[u8] {
        &self.input[..len]
    }

    /// Notes how a statement ended from its buffered CommandComplete,
    /// EmptyQueryResponse, PortalSuspended or ErrorResponse of `len` bytes.
    pub fn tally_message(&mut self, len: usize) {
        let Some(&tag) = self.input.first() else {
            return;
        };
        let body = self.input.get(5..len).unwrap_or_default();
        match tag {
            b'C' => self.tally.completed(body),
            b'E' => self.tally.failed(body),
            b'I' | b's' => self.tally.other(),
            _ => {}
        }
    }

    /// Drops the buffered message of `len` bytes.
    pub fn consume(&mut self, len: usize) {
        self.input.advance(len);
    }

    /// Moves the buffered message of `len` bytes into `out`.
    pub fn move_to(&mut self, len: usize, out: &mut BytesMut) {
        out.extend_from_slice(&self.input[..len]);
        self.input.advance(len);
    }

    /// Whether a complete message is already buffered (reading would not block).
    pub fn has_buffered_message(&self) -> bool {
        if self.input.len() < 5 {
            return false;
        }
        let len = i32::from_be_bytes([self.input[1], self.input[2], self.input[3], self.input[4]]);
        len >= 4 && self.input.len() > len as usize
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        self.stream.flush().await
    }

    /// Sends a simple query and discards its results; an error ends with the
    /// upstream's message. Used for the pool's reset and for replaying state.
    pub async fn run_quietly(&mut self, sql: &str) -> Result<(), PgError> {
        self.run_counted(sql).await.map(|_| ())
    }

    /// Sends a simple query and discards its rows; returns the rows its commands
    /// reported (summed over their CommandComplete tags), or the upstream's first
    /// error. The connection is left ready for the next query.
    pub async fn run_counted(&mut self, sql: &str) -> Result<u64, PgError> {
        frontend::query(sql, &mut self.out).map_err(lost)?;
        self.flush().await.map_err(lost)?;
        let mut failure = None;
        let mut rows = 0u64;
        loop {
            let (tag, len) = self.read_message().await.map_err(lost)?;
            match tag {
                b'E' if failure.is_none() => {
                    failure = Some(upstream_error(&self.input[5..len], "the upstream refused"));
                }
                b'C' => {
                    let counted = crate::redshift::relay::command_rows(&self.input[5..len]);
                    rows = rows.saturating_add(counted.unwrap_or(0));
                }
                b'Z' => {
                    self.status = self.input.get(5).copied().unwrap_or(b'I');
                    self.consume(len);
                    return failure.map_or(Ok(rows), Err);
                }
                _ => {}
            }
            self.consume(len);
        }
    }

    /// Says goodbye (best effort) so the upstream ends the backend promptly.
    pub async fn terminate(mut self) {
        frontend::terminate(&mut self.out);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// The client-facing error for a broken upstream connection.
pub fn lost(e: io::Error) -> PgError {
    PgError::new(
        SqlState("08006"),
        format!("lost the connection to the Redshift upstream: {e}"),
    )
    .with_hint(
        "the upstream session is gone (its temporary tables, settings and open transaction \
         with it); the next statement opens a new one",
    )
}

async fn open_stream(endpoint: &Endpoint) -> Result<Stream, PgError> {
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| connect_error(endpoint, e))?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &endpoint.tls else {
        return Ok(Stream::Plain(tcp));
    };
    let mut tcp = tcp;
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf)
        .await
        .map_err(|e| connect_error(endpoint, e))?;
    let answer = tcp
        .read_u8()
        .await
        .map_err(|e| connect_error(endpoint, e))?;
    if answer != b'S' {
        return Err(connect_error(
            endpoint,
            "the upstream does not accept TLS (tls = \"disable\" turns TLS off for PostgreSQL upstreams on a trusted network)",
        ));
    }
    let name = ServerName::try_from(endpoint.host.clone())
        .map_err(|e| connect_error(endpoint, format!("invalid host name: {e}")))?;
    let stream = TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| connect_error(endpoint, format!("TLS handshake failed: {e}")))?;
    Ok(Stream::Tls(Box::new(stream)))
}

/// Sends a CancelRequest for an upstream backend (over TLS when the upstream uses it).
pub async fn send_cancel(target: &CancelTarget) -> Result<(), PgError> {
    let mut stream = open_stream(&target.endpoint).await?;
    let mut buf = BytesMut::new();
    frontend::cancel_request(target.pid, target.secret, &mut buf);
    stream
        .write_all(&buf)
        .await
        .map_err(|e| connect_error(&target.endpoint, e))?;
    let _ = stream.flush().await;
    // The upstream closes the connection once it has read the request.
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut sink)).await;
    Ok(())
}

/// Sends a CancelRequest on its own task (when a runtime is running), logging
/// `failure` with the error if it cannot be delivered: for callers that must not
/// wait on the upstream.
pub fn cancel_in_background(target: CancelTarget, failure: &'static str) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            if let Err(e) = send_cancel(&target).await {
                tracing::warn!(error = %e.message, "{failure}");
            }
        });
    }
}

/// An ErrorResponse body from the upstream as a `PgError`, keeping its SQLSTATE.
pub fn upstream_error(body: &[u8], context: &str) -> PgError {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|b| *b == 0) {
        let Some((&kind, value)) = field.split_first() else {
            continue;
        };
        let value = String::from_utf8_lossy(value);
        match kind {
            b'C' => code = value.into_owned(),
            b'M' => message = value.into_owned(),
            _ => {}
        }
    }
    PgError::new(
        SqlState::intern(&code, SqlState("08001")),
        format!("{context}: {message}"),
    )
}
