//! OIDC access-token validation (Azure AD / Entra ID v1 and v2, and other issuers).
//!
//! The token arrives as a cleartext password. It is accepted when its signature
//! verifies with a key from the issuer's JWKS (asymmetric algorithms only: never
//! `none`, never HMAC), and `iss`, `aud`, `exp`/`nbf` (with leeway), the tenant
//! allow-list and the login name all check out. Keys are cached; an unknown `kid`
//! triggers a rate-limited refetch (key rotation), and when the issuer is unreachable
//! the cached keys keep working.
//!
//! Discovery documents are read with `openidconnect`'s metadata types
//! (`auth::http::discover`); signatures and claims are checked with `jsonwebtoken`.
//! `openidconnect` verifies ID tokens only: its verifier requires `sub` and `iat`,
//! refuses `typ: at+jwt` access tokens, has no `nbf` check or clock leeway, and keeps
//! its general JWT verifier private, so it cannot check Azure access tokens.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};

use crate::config::{IssuerConfig, OidcConfig};

/// Longest token accepted; PostgreSQL's auth message limit is 65,535 bytes.
pub const MAX_TOKEN_LEN: usize = 65_000;

pub use crate::config::values::parse_algorithm;

/// A validated token's identity.
#[derive(Debug, Clone)]
pub struct TokenIdentity {
    /// The login name the token carries (matched the startup `user`).
    pub username: String,
    /// Stable key: the identity claims joined (`tid/oid` for Azure).
    pub subject: String,
    pub issuer: String,
    pub claims: Map<String, Value>,
}

impl TokenIdentity {
    /// String values of a claim that may be a string or a list of strings.
    pub fn claim_values(&self, name: &str) -> Vec<&str> {
        match self.claims.get(name) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

/// Why a token was refused; the text is safe to show the client and to log (it
/// never contains the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRejected(pub String);

impl std::fmt::Display for TokenRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type KeySet = HashMap<String, (DecodingKey, Option<Algorithm>)>;

struct Issuer {
    config: IssuerConfig,
    algorithms: Vec<Algorithm>,
    /// Known keys; logins with a known `kid` only ever take the read lock.
    keys: RwLock<KeySet>,
    /// Serialises fetches (single flight) and remembers when the last one started.
    last_fetch: Mutex<Option<Instant>>,
}

pub struct OidcValidator {
    issuers: Vec<Issuer>,
    graph: Option<crate::auth::graph::GraphClient>,
    http: reqwest::Client,
    leeway: u64,
    min_refresh: Duration,
    allow_insecure_http: bool,
}

impl TokenRejected {
    /// The refusal's kind, a bounded label for `sluice_token_refusals_total`.
    pub fn kind(&self) -> &'static str {
        let m = self.0.to_ascii_lowercase();
        if m.contains("expired") || m.contains("not yet valid") || m.contains("nbf") {
            "expired"
        } else if m.contains("signature") || m.contains("signing key") {
            "signature"
        } else if m.contains("audience") {
            "audience"
        } else if m.contains("issuer") {
            "issuer"
        } else if m.contains("tenant") {
            "tenant"
        } else if m.contains("malformed") || m.contains("not a jwt") || m.contains("base64") {
            "malformed"
        } else if m.contains("user") || m.contains("claim") {
            "claims"
        } else {
            "other"
        }
    }

    /// Counts this refusal in the metrics.
    pub fn count(&self) {
        crate::metrics::metrics()
            .token_refusals
            .with_label_values(&[self.kind()])
            .inc();
    }
}

fn reject(msg: impl Into<String>) -> TokenRejected {
    TokenRejected(msg.into())
}

impl OidcValidator {
    pub fn new(config: &OidcConfig, base_dir: &std::path::Path) -> Result<OidcValidator, String> {
        // reqwest uses rustls without a built-in provider; make ring the process default.
        let http = crate::auth::http::client(Duration::from_secs(10))
            .map_err(|e| format!("auth.oidc: {e}"))?;
        let issuers = config
            .issuers
            .iter()
            .map(|c| {
                Ok(Issuer {
                    algorithms: c
                        .algorithms
                        .iter()
                        .map(|a| parse_algorithm(a))
                        .collect::<Result<_, String>>()?,
                    config: c.clone(),
                    keys: RwLock::new(HashMap::new()),
                    last_fetch: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let graph = config
            .graph
            .as_ref()
            .map(|g| crate::auth::graph::GraphClient::new(g, base_dir, http.clone()))
            .transpose()?;
        Ok(OidcValidator {
            issuers,
            graph,
            http,
            leeway: config.leeway_secs,
            min_refresh: Duration::from_secs(config.jwks_min_refresh_secs),
            allow_insecure_http: config.allow_insecure_http,
        })
    }

    /// Does this password look like a JWT (three base64url parts)? Used to tell token
    /// logins from mistyped local-account passwords in messages.
    pub fn looks_like_jwt(password: &str) -> bool {
        password.len() > 20 && password.split('.').count() == 3
    }

    /// Validates `token` for a client that logged in as `user`.
    pub async fn validate(&self, token: &str, user: &str) -> Result<TokenIdentity, TokenRejected> {
        self.validate_for(token, Some(user), None).await
    }

    /// Validates `token`. `user`: the startup user the token must belong to (`None`:
    /// the user comes from the token, as in a Redshift native-IdP sign-in).
    /// `provider`: the Redshift `provider_name` the driver sent; only issuers that
    /// list it in `redshift_provider_names` are considered.
    pub async fn validate_for(
        &self,
        token: &str,
        user: Option<&str>,
        provider: Option<&str>,
    ) -> Result<TokenIdentity, TokenRejected> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(reject("token is too large"));
        }
        // The shape checks jsonwebtoken does not make (crit, duplicate members, keys
        // named by the token itself); the header's `alg` is judged here too, so the
        // user reads "algorithm none is not accepted", not "not a JWT".
        let header = crate::auth::jws::check(token).map_err(reject)?;
        let alg = parse_algorithm(&header.alg)
            .map_err(|_| reject(format!("algorithm {} is not accepted", header.alg)))?;
        // Read `iss` unverified only to pick the issuer; everything is verified below.
        let unverified: Map<String, Value> = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| reject("the token's payload is not valid JSON claims"))?;
        let iss = unverified
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| reject("the token has no `iss` claim"))?;
        let serves = |i: &&Issuer| {
            provider.is_none_or(|p| {
                i.config
                    .redshift_provider_names
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(p))
            })
        };
        if let Some(p) = provider
            && !self.issuers.iter().any(|i| serves(&i))
        {
            return Err(reject(format!(
                "provider_name `{p}` is not served here (auth.oidc.issuers[].redshift_provider_names)"
            )));
        }
        let issuer = self
            .issuers
            .iter()
            .filter(serves)
            .find(|i| i.config.issuer == iss)
            .ok_or_else(|| match provider {
                Some(p) => reject(format!(
                    "issuer `{iss}` is not trusted for provider_name `{p}`"
                )),
                None => reject(format!("issuer `{iss}` is not trusted")),
            })?;
        if !issuer.algorithms.contains(&alg) {
            return Err(reject(format!("algorithm {alg:?} is not accepted")));
        }
        let kid = header.kid.unwrap_or_default();
        let (key, key_alg) = self.key_for(issuer, &kid).await?;
        // A key published for one algorithm is never used with another (RFC 8725 §3.1:
        // an RSA key declared RS256 must not verify a PS256 signature).
        if key_alg.is_some_and(|k| k != alg) {
            return Err(reject(format!(
                "the token's algorithm {alg:?} is not the one its key `{kid}` is published for"
            )));
        }

        let mut validation = Validation::new(alg);
        validation.algorithms = issuer.algorithms.clone();
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer.config.issuer.as_str()]);
        validation.set_audience(&issuer.config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                reject(match e.kind() {
                    K::ExpiredSignature => "the token has expired".to_string(),
                    K::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
                    K::InvalidAudience => format!(
                        "the token's audience is not accepted (expected one of: {})",
                        issuer.config.audiences.join(", ")
                    ),
                    K::InvalidIssuer => "the token's issuer does not match".to_string(),
                    K::InvalidSignature => "the token's signature does not verify".to_string(),
                    K::InvalidAlgorithm => {
                        "the token's algorithm does not match its key".to_string()
                    }
                    K::MissingRequiredClaim(c) => format!("the token has no `{c}` claim"),
                    _ => "the token is malformed".to_string(),
                })
            })?;
        let claims = data.claims;
        // `iat` is optional, but one in the future means a wrong clock or a forgery.
        if let Some(iat) = claims.get("iat") {
            let now = jsonwebtoken::get_current_timestamp();
            match iat.as_f64() {
                Some(t) if t <= (now + self.leeway) as f64 => {}
                Some(_) => return Err(reject("the token was issued in the future (iat)")),
                None => return Err(reject("the token's `iat` is not a number")),
            }
        }

        if !issuer.config.tenants.is_empty() {
            let tid = claims.get("tid").and_then(Value::as_str).unwrap_or("");
            if !issuer
                .config
                .tenants
                .iter()
                .any(|t| t.eq_ignore_ascii_case(tid))
            {
                return Err(reject(format!("tenant `{tid}` is not allowed")));
            }
        }
        let (claim, username) = issuer
            .config
            .username_claims
            .iter()
            .find_map(|c| {
                claims
                    .get(c)
                    .and_then(Value::as_str)
                    .map(|v| (c.as_str(), v.to_owned()))
            })
            .ok_or_else(|| {
                reject(format!(
                    "the token carries none of the login-name claims {}",
                    issuer.config.username_claims.join(", ")
                ))
            })?;
        if let Some(user) = user
            && !username.eq_ignore_ascii_case(user)
        {
            return Err(reject(format!(
                "the token belongs to `{username}` (claim `{claim}`), not to the login user `{user}`"
            )));
        }
        let mut claims = claims;
        if crate::auth::graph::GraphClient::has_overage(&claims) {
            let graph = self.graph.as_ref().ok_or_else(|| {
                reject("the token lists too many groups to carry them (overage) and [auth.oidc.graph] is not configured")
            })?;
            let tid = claims
                .get("tid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let oid = claims
                .get("oid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let groups = graph.member_groups(&tid, &oid).await.map_err(|e| {
                tracing::warn!(%oid, error = %e, "groups overage: Microsoft Graph lookup failed");
                reject(format!(
                    "cannot resolve group membership (groups overage): {e}"
                ))
            })?;
            claims.insert("groups".into(), Value::from(groups));
        }
        let subject = issuer
            .config
            .identity_claims
            .iter()
            .map(|c| claims.get(c).and_then(Value::as_str).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("/");
        Ok(TokenIdentity {
            username,
            subject,
            issuer: issuer.config.issuer.clone(),
            claims,
        })
    }

    /// Readiness, per issuer: its signing keys are cached, or can be fetched now
    /// (at most once per `min_refresh`, like a login's fetch).
    pub async fn readiness(&self) -> Vec<(String, Result<String, String>)> {
        let mut out = Vec::new();
        for issuer in &self.issuers {
            let name = issuer.config.issuer.clone();
            let cached = issuer.keys.read().await.len();
            if cached > 0 {
                out.push((name, Ok(format!("{cached} signing key(s) cached"))));
                continue;
            }
            let mut last_fetch = issuer.last_fetch.lock().await;
            let state = if last_fetch.is_none_or(|t| t.elapsed() >= self.min_refresh) {
                *last_fetch = Some(Instant::now());
                match self.fetch_keys(&issuer.config).await {
                    Ok(keys) if !keys.is_empty() => {
                        let n = keys.len();
                        *issuer.keys.write().await = keys;
                        Ok(format!("{n} signing key(s) fetched"))
                    }
                    Ok(_) => Err("the issuer publishes no usable signing keys".to_string()),
                    Err(e) => Err(format!("no signing keys: {e}")),
                }
            } else {
                Err("no signing keys yet (the last fetch failed; retrying after jwks_min_refresh_secs)".to_string())
            };
            out.push((name, state));
        }
        out
    }

    /// The key for `kid`, fetching the JWKS when it is unknown (at most once per
    /// `min_refresh`); cached keys keep working when the issuer is unreachable.
    async fn key_for(
        &self,
        issuer: &Issuer,
        kid: &str,
    ) -> Result<(DecodingKey, Option<Algorithm>), TokenRejected> {
        if let Some(key) = issuer.keys.read().await.get(kid) {
            return Ok(key.clone());
        }
        let mut last_fetch = issuer.last_fetch.lock().await;
        // Another login may have fetched while this one waited.
        if let Some(key) = issuer.keys.read().await.get(kid) {
            return Ok(key.clone());
        }
        if last_fetch.is_none_or(|t| t.elapsed() >= self.min_refresh) {
            *last_fetch = Some(Instant::now());
            match self.fetch_keys(&issuer.config).await {
                Ok(keys) => *issuer.keys.write().await = keys,
                Err(e) => {
                    tracing::warn!(issuer = %issuer.config.issuer, error = %e, "cannot refresh signing keys; using cached keys")
                }
            }
        }
        drop(last_fetch);
        issuer.keys.read().await.get(kid).cloned().ok_or_else(|| {
            reject(format!(
                "signing key `{kid}` is unknown to issuer {}",
                issuer.config.issuer
            ))
        })
    }

    async fn fetch_keys(&self, c: &IssuerConfig) -> Result<KeySet, String> {
        let fetched = self.fetch_keys_uncounted(c).await;
        crate::metrics::metrics()
            .jwks_fetches
            .with_label_values(&[crate::metrics::outcome(&fetched)])
            .inc();
        fetched
    }

    async fn fetch_keys_uncounted(&self, c: &IssuerConfig) -> Result<KeySet, String> {
        let jwks_uri = match &c.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let discovery =
                    crate::auth::http::discovery_url(&c.issuer, c.discovery_url.as_deref());
                self.check_scheme(&discovery)?;
                crate::auth::http::discover(&self.http, &c.issuer, c.discovery_url.as_deref())
                    .await?
                    .jwks_uri()
                    .url()
                    .to_string()
            }
        };
        let set: JwkSet = serde_json::from_value(self.get_json(&jwks_uri).await?)
            .map_err(|e| format!("{jwks_uri} is not a JWKS: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            // Encryption keys never verify signatures.
            if jwk.common.public_key_use == Some(jsonwebtoken::jwk::PublicKeyUse::Encryption) {
                continue;
            }
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    let alg = jwk
                        .common
                        .key_algorithm
                        .and_then(|a| a.to_string().parse::<Algorithm>().ok());
                    keys.insert(kid, (key, alg));
                }
                Err(e) => tracing::debug!(%kid, error = %e, "skipping unusable JWK"),
            }
        }
        tracing::info!(issuer = %c.issuer, keys = keys.len(), "fetched signing keys");
        Ok(keys)
    }

    /// Keys and discovery documents only ever come over TLS (a discovery document
    /// may point anywhere), unless `allow_insecure_http` says this is development.
    fn check_scheme(&self, url: &str) -> Result<(), String> {
        let secure =
            url.starts_with("https://") || (self.allow_insecure_http && url.starts_with("http://"));
        if !secure {
            return Err(format!("refusing to fetch {url}: not https"));
        }
        Ok(())
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        self.check_scheme(url)?;
        crate::auth::http::get_json(&self.http, url).await
    }
}

/// `sluice token inspect`: decodes a token without checking its signature and says,
/// for every configured issuer, which checks it would pass or fail, then which
/// `[[role_mapping]]` rule it would match. Never needs the network.
pub fn inspect(token: &str, config: &crate::config::Config, user: Option<&str>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let header: Option<Value> = token
        .split('.')
        .next()
        .and_then(|h| {
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, h).ok()
        })
        .and_then(|h| serde_json::from_slice(&h).ok());
    let claims: Option<Map<String, Value>> =
        jsonwebtoken::dangerous::insecure_decode_claims(token).ok();
    let (Some(header), Some(claims)) = (header, claims) else {
        return "not a JWT: expected three base64url parts, header and payload JSON\n".into();
    };
    let _ = writeln!(out, "header: {header}");
    let _ = writeln!(out, "claims:");
    for (k, v) in &claims {
        let _ = writeln!(out, "  {k}: {v}");
    }
    let now = jsonwebtoken::get_current_timestamp();
    let str_claim = |n: &str| claims.get(n).and_then(Value::as_str).unwrap_or("");
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let Some(oidc) = &config.auth.oidc else {
        let _ = writeln!(out, "\nno [auth.oidc] in this config: token logins are off");
        return out;
    };
    let mark = |ok: bool| if ok { "pass" } else { "FAIL" };
    let mut matched = None;
    for (i, iss) in oidc.issuers.iter().enumerate() {
        let _ = writeln!(out, "\nissuer [{i}] {}:", iss.issuer);
        let iss_ok = str_claim("iss") == iss.issuer;
        let _ = writeln!(
            out,
            "  {} iss = {:?} (expected {:?})",
            mark(iss_ok),
            str_claim("iss"),
            iss.issuer
        );
        let auds: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let aud_ok = auds.iter().any(|a| iss.audiences.iter().any(|x| x == a));
        let _ = writeln!(
            out,
            "  {} aud = {:?} (accepted: {:?})",
            mark(aud_ok),
            auds,
            iss.audiences
        );
        let alg_ok = iss.algorithms.iter().any(|a| a == alg);
        let _ = writeln!(
            out,
            "  {} alg = {alg:?} (accepted: {:?})",
            mark(alg_ok),
            iss.algorithms
        );
        let exp = claims.get("exp").and_then(Value::as_u64);
        let exp_ok = exp.is_some_and(|e| e + oidc.leeway_secs >= now);
        let _ = writeln!(
            out,
            "  {} exp = {exp:?} (now {now}, leeway {}s)",
            mark(exp_ok),
            oidc.leeway_secs
        );
        let nbf_ok = claims
            .get("nbf")
            .and_then(Value::as_u64)
            .is_none_or(|n| n <= now + oidc.leeway_secs);
        let _ = writeln!(out, "  {} nbf", mark(nbf_ok));
        let tid_ok = iss.tenants.is_empty()
            || iss
                .tenants
                .iter()
                .any(|t| t.eq_ignore_ascii_case(str_claim("tid")));
        let _ = writeln!(
            out,
            "  {} tid = {:?} (allowed: {:?})",
            mark(tid_ok),
            str_claim("tid"),
            iss.tenants
        );
        let name = iss
            .username_claims
            .iter()
            .find_map(|c| claims.get(c).and_then(Value::as_str).map(|v| (c, v)));
        let name_ok = match (name, user) {
            (Some((_, v)), Some(u)) => v.eq_ignore_ascii_case(u),
            (Some(_), None) => true,
            (None, _) => false,
        };
        let _ = writeln!(
            out,
            "  {} login name = {:?} from {:?}{}",
            mark(name_ok),
            name.map(|n| n.1),
            name.map(|n| n.0),
            user.map(|u| format!(" (login user {u:?})"))
                .unwrap_or_default()
        );
        let _ = writeln!(out, "  (the signature is not checked here)");
        if iss_ok && aud_ok && alg_ok && exp_ok && nbf_ok && tid_ok && name_ok {
            matched = name.map(|n| n.1.to_owned());
        }
    }
    if let Some(username) = matched {
        let identity = TokenIdentity {
            username,
            subject: String::new(),
            issuer: String::new(),
            claims: claims.clone(),
        };
        let roles = crate::auth::map_roles(&config.role_mapping, &config.auth.base_role, &identity);
        let rule = config.role_mapping.iter().position(|r| r.roles == roles);
        let _ = writeln!(
            out,
            "\nroles: {roles:?} ({})",
            match rule {
                Some(i) => format!("role_mapping[{i}]"),
                None => format!("no rule matched: base role {:?}", config.auth.base_role),
            }
        );
    } else {
        let _ = writeln!(out, "\nthis token would be refused");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asymmetric_algorithms_are_accepted() {
        assert!(parse_algorithm("RS256").is_ok());
        assert!(parse_algorithm("ES256").is_ok());
        for bad in ["HS256", "none", "HS512", ""] {
            assert!(parse_algorithm(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn jwt_shape_detection() {
        assert!(OidcValidator::looks_like_jwt(
            "eyJhbGciOi.eyJpc3MiOi.c2lnbmF0dXJl"
        ));
        assert!(!OidcValidator::looks_like_jwt("demo"));
    }
}

#[cfg(test)]
mod inspect_tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    #[test]
    fn inspect_explains_each_check() {
        let text = "[auth.oidc]\n[[auth.oidc.issuers]]\nissuer = \"https://idp/\"\naudiences = [\"api://sluice\"]\n\
                    [[role_mapping]]\ngroup = \"g1\"\nroles = [\"r1\"]\n[[roles]]\nname = \"r1\"\n";
        let config =
            crate::config::Config::parse(text, std::path::Path::new("t.toml"), ".".into()).unwrap();
        let claims = serde_json::json!({"iss": "https://idp/", "aud": "api://other", "exp": 4_000_000_000u64, "upn": "a@b", "groups": ["g1"]});
        let token = format!(
            "{}.{}.sig",
            B64.encode(r#"{"alg":"RS256"}"#),
            B64.encode(claims.to_string())
        );
        let report = inspect(&token, &config, Some("a@b"));
        assert!(report.contains("FAIL aud"), "{report}");
        assert!(report.contains("pass iss"), "{report}");
        assert!(report.contains("would be refused"), "{report}");
        let claims = serde_json::json!({"iss": "https://idp/", "aud": "api://sluice", "exp": 4_000_000_000u64, "upn": "a@b", "groups": ["g1"]});
        let token = format!(
            "{}.{}.sig",
            B64.encode(r#"{"alg":"RS256"}"#),
            B64.encode(claims.to_string())
        );
        let report = inspect(&token, &config, Some("a@b"));
        assert!(
            report.contains("roles: [\"r1\"] (role_mapping[0])"),
            "{report}"
        );
        assert!(inspect("garbage", &config, None).contains("not a JWT"));
    }
}
