//! Structural checks of a compact JWS before its signature is verified, per RFC 7515
//! (JWS), RFC 7519 (JWT) and RFC 8725 (JWT best practices). `jsonwebtoken` verifies
//! signatures and registered claims; it accepts a `crit` header it does not
//! understand, takes the last of duplicate JSON members, and parses header fields
//! that name a key source (`jku`, `x5u`, `jwk`, `x5c`). Sluice refuses all of these
//! here, so the library only ever sees tokens with one meaning.

use std::collections::HashSet;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Longest `kid` accepted: Entra's are 27–40 characters.
const MAX_KID_LEN: usize = 256;

/// The header members that would make a token name its own verification key. Keys
/// come only from the configured issuer's JWKS (RFC 8725 §3.10).
const KEY_SOURCE_MEMBERS: &[&str] = &["jku", "x5u", "jwk", "x5c"];

/// A token's decoded, checked header: what the validator needs from it.
#[derive(Debug)]
pub struct CheckedHeader {
    pub alg: String,
    pub kid: Option<String>,
}

/// Checks the compact serialization, the header and the payload's JSON shape. The
/// error text is safe to show and log: it never contains the token.
pub fn check(token: &str) -> Result<CheckedHeader, String> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the password is not a JWT access token (expected three dot-separated parts; encrypted tokens are not accepted)".into());
    };
    let header = decode_object(header, "header")?;
    decode_object(payload, "payload")?;

    if let Some(crit) = header.get("crit") {
        // Sluice implements no JWS extension, so every `crit` list names one it does
        // not understand, and RFC 7515 §4.1.11 requires rejecting the token.
        return Err(format!(
            "the token's header marks extensions as critical ({crit}) that Sluice does not implement"
        ));
    }
    if let Some(member) = KEY_SOURCE_MEMBERS.iter().find(|m| header.contains_key(**m)) {
        return Err(format!(
            "the token's header names its own key (`{member}`): only the issuer's published keys are trusted"
        ));
    }
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err("the token's header has no `alg`".into()),
    };
    if signature.is_empty() {
        return Err(format!(
            "the token is unsigned (algorithm {alg} is not accepted)"
        ));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if k.len() <= MAX_KID_LEN && k.chars().all(|c| !c.is_control()) => {
            Some(k.clone())
        }
        Some(_) => return Err("the token's key id (`kid`) is malformed".into()),
    };
    Ok(CheckedHeader { alg, kid })
}

/// One base64url part holding a JSON object without duplicate members at any depth
/// (RFC 7519 §4: parsers must reject duplicates or take the last; two parsers that
/// disagree on which one counts is how claims get smuggled, so Sluice rejects).
fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| format!("the token's {what} is not base64url"))?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    Unique::deserialize(&mut de)
        .and_then(|_| de.end())
        .map_err(|e| format!("the token's {what} is not valid JSON: {e}"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(format!("the token's {what} is not a JSON object")),
    }
}

/// Walks any JSON value, failing on a duplicate member name in any object.
struct Unique;

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
        d.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        while seq.next_element::<Unique>()?.is_some() {}
        Ok(Unique)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<Unique>()?;
            if !seen.insert(key) {
                return Err(de::Error::custom("duplicate member name"));
            }
        }
        Ok(Unique)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: &str, payload: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn accepts_an_ordinary_azure_header() {
        let h = check(&token(
            r#"{"typ":"JWT","alg":"RS256","x5t":"abc","kid":"abc"}"#,
            r#"{"iss":"x","aud":"y"}"#,
        ))
        .unwrap();
        assert_eq!(h.alg, "RS256");
        assert_eq!(h.kid.as_deref(), Some("abc"));
    }

    #[test]
    fn refuses_what_rfc_7515_and_8725_forbid() {
        let cases = [
            (
                r#"{"alg":"RS256","crit":["exp"],"exp":1}"#,
                "{}",
                "critical",
            ),
            (r#"{"alg":"RS256","crit":[]}"#, "{}", "critical"),
            (r#"{"alg":"RS256","jku":"https://evil/keys"}"#, "{}", "jku"),
            (r#"{"alg":"RS256","x5u":"https://evil/cert"}"#, "{}", "x5u"),
            (r#"{"alg":"RS256","jwk":{"kty":"RSA"}}"#, "{}", "jwk"),
            (r#"{"alg":"RS256","x5c":["MII"]}"#, "{}", "x5c"),
            (r#"{"alg":"RS256","alg":"none"}"#, "{}", "valid JSON"),
            (
                r#"{"alg":"RS256"}"#,
                r#"{"aud":"a","aud":"b"}"#,
                "valid JSON",
            ),
            (r#"{"alg":"RS256"}"#, r#"{"x":{"a":1,"a":2}}"#, "valid JSON"),
            (r#"{"alg":"RS256"}"#, r#"["not","an","object"]"#, "object"),
            (r#"{"kid":"k"}"#, "{}", "no `alg`"),
            (r#"{"alg":"RS256","kid":"a\u0000b"}"#, "{}", "kid"),
        ];
        for (h, p, want) in cases {
            let err = check(&token(h, p)).unwrap_err();
            assert!(err.contains(want), "{h} {p}: {err}");
        }
        let long_kid = format!(r#"{{"alg":"RS256","kid":"{}"}}"#, "a".repeat(300));
        assert!(check(&token(&long_kid, "{}")).is_err());
        assert!(check("a.b").is_err());
        assert!(check("a.b.c.d.e").is_err());
        assert!(check(&format!("{}.", &token("{\"alg\":\"RS256\"}", "{}")[..20])).is_err());
    }
}
