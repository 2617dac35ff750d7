//! The SCRAM exchange target: SASLInitialResponse and SASLResponse frames through
//! `ScramExchange` as `authenticate::scram_login` drives it, with and without
//! channel binding. Seeds reach the success path: `@@` in the client-final message
//! stands for the server's (random) nonce and a final `,p=!!` for the right proof.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::BytesMut;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::targets::Outcome;
use crate::auth::scram::{ScramError, ScramExchange, Verifier};
use crate::error::{PgError, SqlState};
use crate::wire::frame::{self, Frame, Split};

pub const PASSWORD: &str = "pencil";
/// The certificate hash a TLS connection would bind to.
pub const BINDING: [u8; 32] = [0x5a; 32];
const SALT: &[u8] = b"fuzz-salt";

/// One PBKDF2 round: the exchange is what is fuzzed, not the key stretching.
fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| Verifier::derive(PASSWORD, SALT.to_vec(), 1))
}

pub fn exchange(input: &[u8]) -> Vec<u64> {
    let mut out = Outcome::default();
    let mut buf = BytesMut::from(input);
    let mut frames = Vec::new();
    while frames.len() < 2 {
        match frame::split_frame(&mut buf, |_| frame::MAX_AUTH_MESSAGE) {
            Ok(Split::Whole(f)) => frames.push(f),
            Ok(_) => break,
            Err(e) => {
                out.err(&e);
                break;
            }
        }
    }
    for binding in [None, Some(BINDING.to_vec())] {
        run(&frames, binding, &mut out);
    }
    out.finish()
}

fn scram_error(e: ScramError, out: &mut Outcome) {
    let (code, message) = match e {
        ScramError::Protocol(m) => (SqlState::PROTOCOL_VIOLATION, m),
        ScramError::WrongProof => return out.note("wrong proof"),
        ScramError::Refused(m) => (SqlState::INVALID_AUTHORIZATION, m),
        ScramError::Unsupported(m) => (SqlState::FEATURE_NOT_SUPPORTED, m),
    };
    out.err(&PgError::fatal(code, message));
}

fn run(frames: &[Frame], binding: Option<Vec<u8>>, out: &mut Outcome) {
    let plus_offered = binding.is_some();
    let mut x = ScramExchange::new(Some(verifier()), "fuzz", binding);
    assert_eq!(x.mechanisms().len(), 1 + plus_offered as usize);
    let Some(first) = frames.first().filter(|f| f.tag == b'p') else {
        return out.note("no SASLInitialResponse");
    };
    let (mechanism, client_first) = match frame::decode_sasl_initial(&first.body) {
        Ok(v) => v,
        Err(e) => return out.err(&e),
    };
    if let Err(e) = x.select(mechanism) {
        return scram_error(e, out);
    }
    let server_first = match x.client_first(client_first) {
        Ok(m) => String::from_utf8(m).expect("server-first-message is UTF-8"),
        Err(e) => return scram_error(e, out),
    };
    let nonce = server_first
        .strip_prefix("r=")
        .and_then(|s| s.split(',').next())
        .expect("server-first-message starts with the nonce");
    assert!(nonce.len() <= 1024 + 24, "the echoed nonce stays small");
    out.note("server-first");
    let Some(second) = frames.get(1) else { return };
    let mut message = replace(&second.body, b"@@", nonce.as_bytes());
    if let Some(without_proof) = message.strip_suffix(b",p=!!").map(<[u8]>::to_vec) {
        let bare = std::str::from_utf8(client_first)
            .ok()
            .and_then(|m| m.splitn(3, ',').nth(2))
            .unwrap_or_default();
        message = without_proof.clone();
        message.extend_from_slice(b",p=");
        message.extend_from_slice(proof(bare, &server_first, &without_proof).as_bytes());
    }
    match x.client_final(&message) {
        Ok(m) => {
            assert!(m.starts_with(b"v="), "server-final-message is v=...");
            out.note("server-final");
        }
        Err(e) => scram_error(e, out),
    }
}

fn replace(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    match haystack.windows(needle.len()).position(|w| w == needle) {
        Some(at) => [&haystack[..at], with, &haystack[at + needle.len()..]].concat(),
        None => haystack.to_vec(),
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// The client proof a real client holding `PASSWORD` would send (RFC 5802 §3).
fn proof(client_first_bare: &str, server_first: &str, without_proof: &[u8]) -> String {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(PASSWORD.as_bytes(), SALT, 1, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    let stored = Sha256::digest(&client_key);
    let auth = [
        client_first_bare.as_bytes(),
        b",",
        server_first.as_bytes(),
        b",",
        without_proof,
    ]
    .concat();
    let signature = hmac(&stored, &auth);
    let p: Vec<u8> = client_key
        .iter()
        .zip(signature)
        .map(|(a, b)| a ^ b)
        .collect();
    B64.encode(p)
}
