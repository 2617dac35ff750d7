//! A minimal PostgreSQL-wire client for the ways in pgbench cannot take (Redshift's
//! IdP-token exchange), doing what `pgbench -C` does per transaction: TCP connect,
//! SSLRequest, a full TLS handshake (no session resumption: libpq does not resume
//! either), the startup packet, authentication, one `SELECT 1`, Terminate, TLS
//! close_notify. `clients` tasks loop on their own runtime with `clients.min(2)`
//! worker threads (pgbench's `-j`), apart from the in-process Sluice's runtime.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::postgres::{BoxError, Result};

/// AuthenticationRequest codes the client answers.
const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_IDP_TOKEN: i32 = 14;

/// What one login sends: the startup packet, and the answer to the one
/// AuthenticationRequest it expects.
#[derive(Clone)]
pub struct Login {
    startup: Vec<u8>,
    expect: i32,
    answer: Vec<u8>,
}

/// The startup parameters Amazon's Redshift JDBC driver (2.2.x) sends for a JWT
/// plugin, without the IdP keys; its `client_protocol_version` makes Sluice treat
/// the session as a Redshift driver's.
fn redshift_params() -> Vec<(&'static str, &'static str)> {
    vec![
        ("database", "sluice"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "UTC"),
        ("extra_float_digits", "2"),
        ("application_name", "logins-bench"),
        ("driver_version", "Redshift JDBC Driver 2.2.6.0"),
        ("os_version", "Linux 6.1.0 amd64"),
        ("client_protocol_version", "3"),
    ]
}

impl Login {
    /// Redshift native IdP sign-in as the JDBC driver's BasicJwtCredentialsProvider
    /// does it: no `user`, `idp_type=AzureAD`, `provider_name`; the token in an
    /// `'i'` message with a trailing NUL after AuthenticationRequest 14.
    pub fn redshift_idp(token: &str, provider: &str) -> Login {
        let mut params = redshift_params();
        params.extend([
            (
                "plugin_name",
                "com.amazon.redshift.plugin.BasicJwtCredentialsProvider",
            ),
            ("idp_type", "AzureAD"),
            ("provider_name", provider),
        ]);
        Login {
            startup: startup(&params),
            expect: AUTH_IDP_TOKEN,
            answer: message(b'i', &nul_terminated(token)),
        }
    }

    /// The same driver's startup with a `user` and no IdP keys: Sluice asks for a
    /// cleartext password (inside TLS) and gets the access token.
    pub fn token_password(user: &str, token: &str) -> Login {
        let mut params = redshift_params();
        params.push(("user", user));
        Login {
            startup: startup(&params),
            expect: AUTH_CLEARTEXT,
            answer: message(b'p', &nul_terminated(token)),
        }
    }
}

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A TLS client configuration trusting `ca` only, with session resumption off.
pub fn tls_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca)?;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

async fn read_message<S: AsyncRead + Unpin>(s: &mut S) -> Result<(u8, Vec<u8>)> {
    let tag = s.read_u8().await?;
    let len = s.read_i32().await?;
    if !(4..=1 << 20).contains(&len) {
        return Err(format!("message {:?} with length {len}", tag as char).into());
    }
    let mut body = vec![0u8; len as usize - 4];
    s.read_exact(&mut body).await?;
    Ok((tag, body))
}

fn server_error(body: &[u8]) -> BoxError {
    format!(
        "server error: {}",
        String::from_utf8_lossy(body).replace('\0', " ")
    )
    .into()
}

/// Reads up to ReadyForQuery, failing on an ErrorResponse.
async fn until_ready<S: AsyncRead + Unpin>(s: &mut S) -> Result<()> {
    loop {
        match read_message(s).await? {
            (b'Z', _) => return Ok(()),
            (b'E', body) => return Err(server_error(&body)),
            _ => {}
        }
    }
}

/// One login, one `SELECT 1`, one Terminate.
async fn login_once(port: u16, tls: &tokio_rustls::TlsConnector, login: &Login) -> Result<()> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await?;
    if tcp.read_u8().await? != b'S' {
        return Err("the server refused TLS".into());
    }
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut s = tls.connect(name, tcp).await?;
    s.write_all(&login.startup).await?;
    loop {
        let (tag, body) = read_message(&mut s).await?;
        match tag {
            b'R' if body.len() >= 4 => {
                let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                if code == AUTH_OK {
                    break;
                } else if code == login.expect {
                    s.write_all(&login.answer).await?;
                } else {
                    return Err(format!("unexpected AuthenticationRequest {code}").into());
                }
            }
            b'E' => return Err(server_error(&body)),
            _ => return Err(format!("unexpected message {:?} before login", tag as char).into()),
        }
    }
    until_ready(&mut s).await?;
    s.write_all(&message(b'Q', b"SELECT 1\0")).await?;
    until_ready(&mut s).await?;
    s.write_all(&message(b'X', b"")).await?;
    s.shutdown().await?;
    Ok(())
}

/// Logins per second: `clients` tasks logging in back to back for `seconds`.
pub fn measure(
    port: u16,
    tls: &Arc<rustls::ClientConfig>,
    login: &Login,
    clients: u32,
    seconds: u32,
) -> Result<f64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(clients.clamp(1, 2) as usize)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let started = Instant::now();
        let deadline = started + Duration::from_secs(seconds.into());
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (connector, login) = (connector.clone(), login.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        login_once(port, &connector, &login).await?;
                        n += 1;
                    }
                    Ok::<u64, BoxError>(n)
                })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await??;
        }
        Ok(total as f64 / started.elapsed().as_secs_f64())
    })
}
