//! Login throughput: TLS + access-token logins through Sluice vs TLS + SCRAM logins on
//! PostgreSQL directly, in one run, as a ratio.
//!
//! `pgbench -C` (a new connection per transaction, `SELECT 1`) is the client for both.
//! PostgreSQL 15 is started from the Debian packages in a temporary directory; Sluice
//! runs in-process with an OIDC issuer whose keys and JWKS are made here.
//!
//! Run: `cargo bench --bench logins` (options: `--seconds N`, `--clients N`).

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "../tests/support/postgres.rs"]
mod postgres;

use postgres::{Postgres, Result, run};

const USER: &str = "bench@contoso.com";

/// An RSA key, its JWKS served over HTTP, and a token for `USER`.
async fn issuer() -> Result<(String, String)> {
    let dir = tempfile::tempdir()?;
    run(Command::new("openssl").current_dir(dir.path()).args([
        "genrsa",
        "-traditional",
        "-out",
        "k.pem",
        "2048",
    ]))?;
    let modulus = run(Command::new("openssl")
        .current_dir(dir.path())
        .args(["rsa", "-in", "k.pem", "-noout", "-modulus"]))?;
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<std::result::Result<_, _>>()?;
    let jwks = json!({"keys": [{"kty": "RSA", "alg": "RS256", "kid": "k1", "n": B64URL.encode(n), "e": "AQAB"}]}).to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let jwks = jwks.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let body = if String::from_utf8_lossy(&buf[..n]).contains("openid-configuration") {
                    json!({"jwks_uri": format!("http://127.0.0.1:{port}/keys")}).to_string()
                } else {
                    jwks
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = json!({"iss": "https://idp.bench/", "aud": "api://sluice", "tid": "t", "oid": "o",
                        "upn": USER, "groups": ["g"], "exp": now + 3600, "nbf": now - 10});
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(&std::fs::read(dir.path().join("k.pem"))?)?,
    )?;
    Ok((
        format!("http://127.0.0.1:{port}/.well-known/openid-configuration"),
        token,
    ))
}

/// Runs pgbench with a new connection per transaction; returns connections per second.
fn pgbench(conninfo: &str, password: &str, clients: u32, seconds: u32) -> Result<f64> {
    let script = tempfile::NamedTempFile::new()?;
    std::fs::write(script.path(), "SELECT 1;\n")?;
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-C",
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(script.path())
        .arg(conninfo)
        .env("PGPASSWORD", password)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "pgbench failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no tps in pgbench output: {text}").into())
}

fn main() -> Result<()> {
    let mut seconds = 5;
    let mut clients = 4;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {}
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--seconds N")?
            }
            "--clients" => {
                clients = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--clients N")?
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pg = Postgres::start("hostssl all all 127.0.0.1/32 scram-sha-256")?;
        pg.sql("postgres", "CREATE ROLE bench LOGIN PASSWORD 'bench'")?;
        let (discovery, token) = issuer().await?;
        let dir = tempfile::tempdir()?;
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\nallow_plaintext = \"never\"\n\
             [[auth.users]]\nname = \"bench\"\npassword = \"bench\"\n\
             [auth.oidc]\nallow_insecure_http = true\n[[auth.oidc.issuers]]\nissuer = \"https://idp.bench/\"\ndiscovery_url = \"{discovery}\"\naudiences = [\"api://sluice\"]\n\
             [[role_mapping]]\ngroup = \"g\"\nroles = [\"reader\"]\n[[roles]]\nname = \"reader\"\nread = [\"*\"]\n"
        );
        let config = sluice::config::Config::parse(&toml, Path::new("bench.toml"), dir.path().to_owned())?;
        let server = sluice::server::Server::bind(config).await?;
        let sluice_port = server.local_addr()?.port();
        tokio::spawn(server.run());

        let pg_info = format!("host=127.0.0.1 port={} dbname=postgres user=bench sslmode=require", pg.port);
        let sl_token = format!("host=127.0.0.1 port={sluice_port} dbname=sluice user={USER} sslmode=require");
        let sl_scram = format!("host=127.0.0.1 port={sluice_port} dbname=sluice user=bench sslmode=require");
        // Warm-up: first JWKS fetch, TLS session set-up.
        tokio::task::block_in_place(|| pgbench(&sl_token, &token, 1, 1))?;
        let (direct, via_token, via_scram) = tokio::task::block_in_place(|| -> Result<(f64, f64, f64)> {
            Ok((
                pgbench(&pg_info, "bench", clients, seconds)?,
                pgbench(&sl_token, &token, clients, seconds)?,
                pgbench(&sl_scram, "bench", clients, seconds)?,
            ))
        })?;
        println!("logins/s with TLS, {clients} clients, {seconds}s each (pgbench -C, SELECT 1):");
        println!("  PostgreSQL 15 direct, SCRAM      {direct:>10.1}");
        println!("  Sluice, access token (RS256)     {via_token:>10.1}   ratio {:.2}x", via_token / direct);
        println!("  Sluice, local account, SCRAM     {via_scram:>10.1}   ratio {:.2}x", via_scram / direct);
        Ok(())
    })
}
