//! The HTTP side of identity: one way to build a client and fetch JSON from an
//! identity provider (discovery documents, JWKS, device-code sign-in).

use std::time::Duration;

use serde_json::Value;

/// An HTTP client over rustls with the ring provider (the one the listener uses).
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    // reqwest is built without a crypto provider of its own; make ring the default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot create HTTP client: {e}"))
}

/// The discovery document of `issuer`, unless a URL is configured.
pub fn discovery_url(issuer: &str, configured: Option<&str>) -> String {
    configured.map(str::to_owned).unwrap_or_else(|| {
        format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        )
    })
}

/// GETs `url` and parses the body as JSON; errors name the URL.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", resp.status()));
    }
    let body = resp.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not JSON: {e}"))
}
