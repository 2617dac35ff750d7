//! Parsers for config values whose types belong to libraries (cron schedules, time
//! zones, JOSE algorithms, SCRAM verifiers, name globs). They live here so that validating a
//! config needs nothing above it: `config` is a leaf every other part may import.

use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use jsonwebtoken::Algorithm;

/// Parses a cron expression with seconds (`sec min hour day-of-month month
/// day-of-week [year]`); a classic five-field expression gets `0` seconds.
pub fn parse_cron(text: &str) -> Result<cron::Schedule, String> {
    let fields = text.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {text}")
    } else {
        text.to_owned()
    };
    cron::Schedule::from_str(&full).map_err(|e| format!("`{text}` is not a cron expression: {e}"))
}

/// An IANA time zone name (`UTC`, `Europe/Paris`), as chrono-tz knows them.
pub fn parse_time_zone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        format!("`{name}` is not an IANA time zone name (such as UTC or Europe/Paris)")
    })
}

/// Only asymmetric algorithms: a symmetric one would let anyone holding the public key
/// forge tokens.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg = match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => {
            return Err(format!(
                "`{other}` is not an accepted algorithm (asymmetric only: RS256/384/512, PS256/384/512, ES256/384, EdDSA)"
            ));
        }
    };
    Ok(alg)
}

/// `*` matches any run of characters; everything else literally.
pub fn glob(pattern: &str, s: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = s.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    if parts.is_empty() {
        return rest.is_empty();
    }
    let (last, middle) = parts.split_last().unwrap_or((&"", &[]));
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The parts of a stored SCRAM-SHA-256 verifier
/// (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, PostgreSQL's format).
pub struct ScramVerifierParts {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

pub fn parse_scram_verifier(text: &str) -> Result<ScramVerifierParts, String> {
    let err = || {
        "expected a SCRAM-SHA-256 verifier `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`"
            .to_string()
    };
    let rest = text.strip_prefix("SCRAM-SHA-256$").ok_or_else(err)?;
    let (params, keys) = rest.split_once('$').ok_or_else(err)?;
    let (iter, salt) = params.split_once(':').ok_or_else(err)?;
    let (stored, server) = keys.split_once(':').ok_or_else(err)?;
    let iterations: u32 = iter.parse().map_err(|_| err())?;
    if iterations == 0 {
        return Err(err());
    }
    let salt = B64.decode(salt).map_err(|_| err())?;
    let key = |s: &str| -> Result<[u8; 32], String> {
        B64.decode(s)
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
            .ok_or_else(err)
    };
    Ok(ScramVerifierParts {
        iterations,
        salt,
        stored_key: key(stored)?,
        server_key: key(server)?,
    })
}
