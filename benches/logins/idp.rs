//! The benchmark's identity provider: an RSA key made with the openssl CLI, a
//! discovery document and JWKS served over plain HTTP on loopback, and one token.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::postgres::{Result, run};

pub const ISSUER: &str = "https://idp.bench/";
pub const AUDIENCE: &str = "api://sluice";
/// The group claim the token carries (mapped to a role in the bench config).
pub const GROUP: &str = "g";

/// Serves discovery and JWKS; returns (discovery URL, a token for `user` valid 1 h).
pub async fn issuer(user: &str) -> Result<(String, String)> {
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
    let jwks = json!({"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k1",
                                "n": B64URL.encode(n), "e": "AQAB"}]})
    .to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    // Sluice checks the document with openidconnect's metadata types: it must name
    // the configured issuer and carry the fields OpenID Connect Discovery requires.
    let discovery = json!({
        "issuer": ISSUER,
        "authorization_endpoint": format!("http://127.0.0.1:{port}/authorize"),
        "token_endpoint": format!("http://127.0.0.1:{port}/token"),
        "jwks_uri": format!("http://127.0.0.1:{port}/keys"),
        "response_types_supported": ["code", "id_token", "token id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    })
    .to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (discovery, jwks) = (discovery.clone(), jwks.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(m) => n += m,
                    }
                }
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = match path {
                    "/.well-known/openid-configuration" => ("200 OK", discovery),
                    "/keys" => ("200 OK", jwks),
                    _ => ("404 Not Found", "{}".to_owned()),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "tid": "t", "oid": "o", "upn": user,
                        "groups": [GROUP], "iat": now, "exp": now + 3600, "nbf": now - 10});
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
