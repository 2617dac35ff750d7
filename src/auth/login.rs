//! `sluice login`: the OAuth 2.0 device authorization grant (RFC 8628). The user opens
//! a URL on any device, enters a code, and Sluice receives an access token to use as
//! the database password (printed, or written to `~/.pgpass`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use openidconnect::core::CoreClient;
use openidconnect::{
    ClientId, DeviceAuthorizationResponse, DeviceCodeErrorResponseType,
    ExtraDeviceAuthorizationFields, IssuerUrl, JsonWebKeySet, OAuth2TokenResponse,
    RequestTokenError, Scope, TokenUrl,
};

use crate::auth::http::{self, OidcHttp};
use crate::config::LoginConfig;

/// Azure adds a ready-made instruction (`message`) to the device authorization reply.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
struct DeviceMessage {
    message: Option<String>,
}

impl ExtraDeviceAuthorizationFields for DeviceMessage {}

/// The longest the flow waits for the user when the issuer sets no expiry.
const DEFAULT_WAIT: Duration = Duration::from_secs(900);

/// Runs the device-code flow (with `openidconnect`) and returns the access token.
/// Progress and the sign-in instructions go to `prompt` (standard error), never the
/// token.
pub async fn device_code_login(
    cfg: &LoginConfig,
    prompt: &mut dyn Write,
) -> Result<String, String> {
    let client = http::client(Duration::from_secs(30))?;
    let metadata = http::discover(&client, &cfg.issuer, cfg.discovery_url.as_deref()).await?;
    let device_url = metadata
        .additional_metadata()
        .device_authorization_endpoint
        .clone()
        .ok_or_else(|| {
            format!(
                "{} does not offer device-code sign-in (no device_authorization_endpoint)",
                cfg.issuer
            )
        })?;
    let token_url: TokenUrl = metadata
        .token_endpoint()
        .cloned()
        .ok_or_else(|| format!("{} publishes no token_endpoint", cfg.issuer))?;
    let issuer =
        IssuerUrl::new(cfg.issuer.clone()).map_err(|e| format!("auth.oidc.login.issuer: {e}"))?;
    // The access token is only handed on as a password, never verified here, so the
    // client needs no keys.
    let oidc = CoreClient::new(
        ClientId::new(cfg.client_id.clone()),
        issuer,
        JsonWebKeySet::default(),
    )
    .set_token_uri(token_url)
    .set_device_authorization_url(device_url);
    let http = OidcHttp(client);
    let mut request = oidc.exchange_device_code();
    for scope in cfg.scope.split_whitespace() {
        request = request.add_scope(Scope::new(scope.to_owned()));
    }
    let details: DeviceAuthorizationResponse<DeviceMessage> = request
        .request_async(&http)
        .await
        .map_err(|e| format!("device authorization refused: {}", describe(&e)))?;
    match &details.extra_fields().message {
        Some(message) if !message.is_empty() => {
            let _ = writeln!(prompt, "{message}");
        }
        _ => {
            let _ = writeln!(
                prompt,
                "To sign in, open {} and enter the code {}",
                details.verification_uri().as_str(),
                details.user_code().secret()
            );
        }
    }
    let _ = prompt.flush();
    let wait = details.expires_in().min(DEFAULT_WAIT);
    let token = oidc
        .exchange_device_access_token(&details)
        .request_async(&http, tokio::time::sleep, Some(wait))
        .await
        .map_err(|e| match &e {
            RequestTokenError::ServerResponse(r)
                if *r.error() == DeviceCodeErrorResponseType::ExpiredToken =>
            {
                "the sign-in code expired before it was used; run `sluice login` again".to_string()
            }
            _ => format!("sign-in failed: {}", describe(&e)),
        })?;
    Ok(token.access_token().secret().clone())
}

/// A token-endpoint failure in words: the OAuth error code and description, never
/// a response body that might echo secrets.
fn describe<RE: std::error::Error + 'static, T: openidconnect::ErrorResponse + 'static>(
    e: &RequestTokenError<RE, T>,
) -> String {
    match e {
        RequestTokenError::ServerResponse(r) => r.to_string(),
        RequestTokenError::Request(inner) => format!("request failed: {inner}"),
        RequestTokenError::Parse(inner, _) => format!("unexpected reply: {inner}"),
        RequestTokenError::Other(m) => m.clone(),
    }
}

/// The `~/.pgpass` path libpq reads (`PGPASSFILE` wins).
pub fn pgpass_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PGPASSFILE") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass"))
}

/// Writes or replaces the `host:port:*:user:token` line, keeping other lines, with
/// mode 0600 (libpq ignores a group- or world-readable file).
pub fn write_pgpass(
    path: &Path,
    host: &str,
    port: u16,
    user: &str,
    token: &str,
) -> Result<(), String> {
    let escape = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    let prefix = format!("{}:{}:*:{}:", escape(host), port, escape(user));
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<String> = existing
        .lines()
        .filter(|l| !l.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    lines.push(format!("{prefix}{}", escape(token)));
    let tmp = path.with_extension("sluice-tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options
            .open(&tmp)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        f.write_all((lines.join("\n") + "\n").as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_lines_are_replaced_not_duplicated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "other:5432:*:bob:pw\n").unwrap();
        write_pgpass(&path, "sluice", 5439, "ann@x.com", "t1").unwrap();
        write_pgpass(&path, "sluice", 5439, "ann@x.com", "t2").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "other:5432:*:bob:pw\nsluice:5439:*:ann@x.com:t2\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
