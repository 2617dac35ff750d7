//! An identity provider made by the tests: RSA keys from the openssl CLI, discovery
//! documents and a JWKS served over real HTTP, Azure-shaped v1 and v2 access tokens,
//! a device-code flow and a stand-in for Microsoft Graph. Shared by the token-login
//! and Redshift-driver tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const TID: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT_ID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
pub const USER: &str = "ann@contoso.com";

pub fn v1_issuer() -> String {
    format!("https://sts.windows.net/{TID}/")
}
pub fn v2_issuer() -> String {
    format!("https://login.microsoftonline.com/{TID}/v2.0")
}

/// An RSA signing key and its public JWK.
pub struct Key {
    pub kid: String,
    pub pem: Vec<u8>,
    pub jwk: Value,
    pub public_pem: Vec<u8>,
}

impl Key {
    pub fn generate(kid: &str) -> Key {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .current_dir(dir.path())
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        run(&["genrsa", "-traditional", "-out", "k.pem", "2048"]);
        let modulus =
            String::from_utf8(run(&["rsa", "-in", "k.pem", "-noout", "-modulus"])).unwrap();
        let hex = modulus.trim().trim_start_matches("Modulus=");
        let n: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        run(&["rsa", "-in", "k.pem", "-pubout", "-out", "pub.pem"]);
        Key {
            kid: kid.into(),
            pem: std::fs::read(dir.path().join("k.pem")).unwrap(),
            public_pem: std::fs::read(dir.path().join("pub.pem")).unwrap(),
            jwk: json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": B64URL.encode(n), "e": "AQAB"}),
        }
    }

    /// Signs an arbitrary header and payload text (forged-token tests: duplicate
    /// members, `crit`, key-source headers that the JWT library would not write).
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        let message = format!("{}.{}", B64URL.encode(header), B64URL.encode(payload));
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_rsa_pem(&self.pem).unwrap(),
            Algorithm::RS256,
        )
        .unwrap();
        format!("{message}.{signature}")
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_rsa_pem(&self.pem).unwrap(),
        )
        .unwrap()
    }
}

/// A minimal OIDC provider: discovery and JWKS over HTTP, counting JWKS fetches.
pub struct Idp {
    pub port: u16,
    pub keys: Arc<Mutex<Vec<Value>>>,
    pub jwks_fetches: Arc<AtomicUsize>,
    pub up: Arc<std::sync::atomic::AtomicBool>,
    /// Calls to the stand-in for Microsoft Graph's getMemberObjects.
    pub graph_calls: Arc<AtomicUsize>,
    /// The token the device-code flow hands out, once the "user" has signed in.
    pub device_token: Arc<Mutex<String>>,
}

impl Idp {
    pub async fn start(keys: Vec<Value>) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let keys = Arc::new(Mutex::new(keys));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let graph_calls = Arc::new(AtomicUsize::new(0));
        let device_token = Arc::new(Mutex::new(String::new()));
        let polls = Arc::new(AtomicUsize::new(0));
        let (k, f, u, g, d) = (
            keys.clone(),
            jwks_fetches.clone(),
            up.clone(),
            graph_calls.clone(),
            device_token.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (k, f, u, g, d, p) = (
                    k.clone(),
                    f.clone(),
                    u.clone(),
                    g.clone(),
                    d.clone(),
                    polls.clone(),
                );
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut n = 0;
                    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(m) => n += m,
                        }
                    }
                    let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let (status, body) = if !u.load(Ordering::SeqCst) {
                        ("503 Service Unavailable", "{}".to_string())
                    } else if let Some(kind) =
                        path.strip_suffix("/.well-known/openid-configuration")
                    {
                        // One discovery document per issuer (v1, v2), each naming its
                        // issuer, with the fields OpenID Connect Discovery requires.
                        let issuer = if kind == "/v2" {
                            v2_issuer()
                        } else {
                            v1_issuer()
                        };
                        (
                            "200 OK",
                            json!({
                                "issuer": issuer,
                                "authorization_endpoint": format!("http://127.0.0.1:{port}/authorize"),
                                "jwks_uri": format!("http://127.0.0.1:{port}/keys"),
                                "response_types_supported": ["code", "id_token", "token id_token"],
                                "subject_types_supported": ["pairwise"],
                                "id_token_signing_alg_values_supported": ["RS256"],
                                "device_authorization_endpoint": format!("http://127.0.0.1:{port}/device"),
                                "token_endpoint": format!("http://127.0.0.1:{port}/oauth-token"),
                            })
                            .to_string(),
                        )
                    } else if path == "/device" {
                        (
                            "200 OK",
                            json!({"device_code": "dc-1", "user_code": "ABCD-EFGH", "verification_uri": "https://example.test/device",
                                   "expires_in": 60, "interval": 1})
                            .to_string(),
                        )
                    } else if path == "/oauth-token" {
                        // The first poll finds the user still signing in.
                        if !request.contains("device_code=dc-1") {
                            (
                                "400 Bad Request",
                                json!({"error": "invalid_grant"}).to_string(),
                            )
                        } else if p.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                            (
                                "400 Bad Request",
                                json!({"error": "authorization_pending"}).to_string(),
                            )
                        } else {
                            (
                                "200 OK",
                                json!({"access_token": *d.lock().unwrap(), "token_type": "Bearer"})
                                    .to_string(),
                            )
                        }
                    } else if path == "/keys" {
                        f.fetch_add(1, Ordering::SeqCst);
                        ("200 OK", json!({"keys": *k.lock().unwrap()}).to_string())
                    } else if path == "/graph-token" {
                        // Client credentials: the app's secret must arrive in the form.
                        if request.contains("client_secret=graph-secret")
                            && request.contains("grant_type=client_credentials")
                        {
                            (
                                "200 OK",
                                json!({"access_token": "graph-app-token", "expires_in": 3600})
                                    .to_string(),
                            )
                        } else {
                            ("401 Unauthorized", "{}".to_string())
                        }
                    } else if path == "/graph/v1.0/users/oid-many/getMemberObjects" {
                        g.fetch_add(1, Ordering::SeqCst);
                        if request
                            .to_ascii_lowercase()
                            .contains("authorization: bearer graph-app-token")
                        {
                            (
                                "200 OK",
                                json!({"value": ["g-x", "g-sales", "g-y"]}).to_string(),
                            )
                        } else {
                            ("401 Unauthorized", "{}".to_string())
                        }
                    } else {
                        ("404 Not Found", "{}".to_string())
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        Idp {
            port,
            keys,
            jwks_fetches,
            up,
            graph_calls,
            device_token,
        }
    }

    /// The discovery document of the v1 issuer (`v2 = false`) or the v2 issuer.
    pub fn discovery(&self, v2: bool) -> String {
        format!(
            "http://127.0.0.1:{}/{}/.well-known/openid-configuration",
            self.port,
            if v2 { "v2" } else { "v1" }
        )
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn v1_claims() -> Value {
    json!({
        "iss": v1_issuer(), "aud": "api://sluice", "tid": TID, "oid": "oid-ann",
        "upn": USER, "unique_name": USER, "appid": CLIENT_ID,
        "groups": ["g-sales", "g-other"], "iat": now(), "nbf": now() - 10, "exp": now() + 3600,
    })
}

pub fn v2_claims() -> Value {
    json!({
        "iss": v2_issuer(), "aud": CLIENT_ID, "tid": TID, "oid": "oid-ann", "azp": CLIENT_ID,
        "preferred_username": USER, "roles": ["Lake.Admin"], "iat": now(), "nbf": now() - 10, "exp": now() + 3600,
    })
}
