//! `sluice login`: the OAuth 2.0 device authorization grant (RFC 8628). The user opens
//! a URL on any device, enters a code, and Sluice receives an access token to use as
//! the database password (printed, or written to `~/.pgpass`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::auth::http;
use crate::config::LoginConfig;

/// Runs the device-code flow and returns the access token. Progress and the sign-in
/// instructions go to `prompt` (standard error), never the token.
pub async fn device_code_login(
    cfg: &LoginConfig,
    prompt: &mut dyn Write,
) -> Result<String, String> {
    let client = http::client(Duration::from_secs(30))?;
    let discovery = http::discovery_url(&cfg.issuer, cfg.discovery_url.as_deref());
    let doc: Value = http::get_json(&client, &discovery).await?;
    let endpoint = |name: &str| {
        doc.get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                format!("{discovery} has no {name}: this issuer does not offer device-code sign-in")
            })
    };
    let device_endpoint = endpoint("device_authorization_endpoint")?;
    let token_endpoint = endpoint("token_endpoint")?;

    let start: Value = post_form(
        &client,
        &device_endpoint,
        &[
            ("client_id", cfg.client_id.as_str()),
            ("scope", cfg.scope.as_str()),
        ],
    )
    .await?
    .map_err(|e| format!("device authorization refused: {e}"))?;
    let field = |name: &str| {
        start
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let device_code = field("device_code");
    if device_code.is_empty() {
        return Err("the device authorization reply has no device_code".into());
    }
    let message = field("message");
    if message.is_empty() {
        let _ = writeln!(
            prompt,
            "To sign in, open {} and enter the code {}",
            field("verification_uri"),
            field("user_code")
        );
    } else {
        let _ = writeln!(prompt, "{message}");
    }
    let _ = prompt.flush();
    let mut interval =
        Duration::from_secs(start.get("interval").and_then(Value::as_u64).unwrap_or(5));
    let deadline = Instant::now()
        + Duration::from_secs(
            start
                .get("expires_in")
                .and_then(Value::as_u64)
                .unwrap_or(900),
        );
    loop {
        if Instant::now() >= deadline {
            return Err(
                "the sign-in code expired before it was used; run `sluice login` again".into(),
            );
        }
        tokio::time::sleep(interval).await;
        let reply = post_form(
            &client,
            &token_endpoint,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", cfg.client_id.as_str()),
                ("device_code", device_code.as_str()),
            ],
        )
        .await?;
        match reply {
            Ok(body) => {
                return body
                    .get("access_token")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| "the token reply has no access_token".into());
            }
            Err(error) if error == "authorization_pending" => {}
            Err(error) if error == "slow_down" => interval += Duration::from_secs(5),
            Err(error) => return Err(format!("sign-in failed: {error}")),
        }
    }
}

/// POSTs a form; `Ok(Err(code))` carries an OAuth error code (`authorization_pending`, …).
async fn post_form(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> Result<Result<Value, String>, String> {
    let resp = http
        .post(url)
        .form(form)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let ok = resp.status().is_success();
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .map_err(|e| format!("POST {url}: HTTP {status}, not JSON: {e}"))?;
    if ok {
        return Ok(Ok(body));
    }
    Ok(Err(body
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status}"))))
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
