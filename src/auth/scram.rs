//! Server side of SCRAM-SHA-256 (RFC 5802 / 7677) as PostgreSQL speaks it.
//!
//! Verifiers use PostgreSQL's stored format, `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`,
//! so an admin can copy one from `pg_authid` or generate it with any PostgreSQL tool.
//! Over TLS, `SCRAM-SHA-256-PLUS` with `tls-server-end-point` channel binding
//! (RFC 5929) is offered too: the client proves it sees the certificate Sluice sent,
//! so a man in the middle holding another certificate cannot relay the login.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

pub const MECHANISM: &str = "SCRAM-SHA-256";
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";
const CHANNEL_BINDING_TYPE: &str = "tls-server-end-point";
const DEFAULT_ITERATIONS: u32 = 4096;

#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(<redacted>)")
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

impl Verifier {
    pub fn from_password(password: &str) -> Verifier {
        let mut salt = vec![0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        Verifier::derive(password, salt, DEFAULT_ITERATIONS)
    }

    pub fn derive(password: &str, salt: Vec<u8>, iterations: u32) -> Verifier {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, b"Server Key");
        Verifier {
            iterations,
            salt,
            stored_key,
            server_key,
        }
    }

    /// Checks a cleartext password against this verifier, as PostgreSQL does for
    /// `password` authentication of a SCRAM-stored role (constant-time compare).
    pub fn verify_password(&self, password: &str) -> bool {
        let candidate = Verifier::derive(password, self.salt.clone(), self.iterations);
        candidate.stored_key.ct_eq(&self.stored_key).into()
    }

    /// Parses PostgreSQL's stored verifier format.
    pub fn parse(text: &str) -> Result<Verifier, String> {
        let p = crate::config::values::parse_scram_verifier(text)?;
        Ok(Verifier {
            iterations: p.iterations,
            salt: p.salt,
            stored_key: p.stored_key,
            server_key: p.server_key,
        })
    }

    pub fn to_stored(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// A per-process secret for mock salts.
fn mock_secret() -> &'static [u8; 32] {
    static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| {
        let mut s = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut s);
        s
    })
}

/// Why an exchange failed. Protocol errors are the client's fault (08P01); a wrong
/// proof is a failed login (28P01).
#[derive(Debug, PartialEq, Eq)]
pub enum ScramError {
    Protocol(String),
    WrongProof,
    /// A channel-binding downgrade or mismatch (28000).
    Refused(String),
    /// A SCRAM feature PostgreSQL does not support either (0A000).
    Unsupported(String),
}

/// One server-side exchange, driven by the session's startup code.
pub struct ScramExchange {
    verifier: Verifier,
    /// Unknown users run a full exchange against a fake verifier, so the reply time
    /// and messages do not reveal which user names exist.
    known_user: bool,
    /// The server certificate's `tls-server-end-point` hash, when PLUS is offered.
    channel_binding: Option<Vec<u8>>,
    /// The client chose SCRAM-SHA-256-PLUS.
    plus: bool,
    /// gs2-header of client-first-message, echoed (base64) in client-final's `c=`.
    gs2_header: String,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

impl ScramExchange {
    /// `channel_binding`: the certificate hash when the connection is TLS and PLUS is
    /// offered (see `mechanisms`).
    pub fn new(
        verifier: Option<&Verifier>,
        user: &str,
        channel_binding: Option<Vec<u8>>,
    ) -> ScramExchange {
        let (verifier, known_user) = match verifier {
            Some(v) => (v.clone(), true),
            None => {
                // Like PostgreSQL's mock authentication: the same user name always gets
                // the same salt, so repeated attempts cannot tell unknown from known.
                let salt = hmac(mock_secret(), user.as_bytes())[..16].to_vec();
                (Verifier::derive("", salt, DEFAULT_ITERATIONS), false)
            }
        };
        ScramExchange {
            verifier,
            known_user,
            channel_binding,
            plus: false,
            gs2_header: String::new(),
            nonce: String::new(),
            client_first_bare: String::new(),
            server_first: String::new(),
        }
    }

    /// The mechanisms to advertise, PLUS first when channel binding is possible.
    pub fn mechanisms(&self) -> Vec<String> {
        let mut m = Vec::with_capacity(2);
        if self.channel_binding.is_some() {
            m.push(MECHANISM_PLUS.to_owned());
        }
        m.push(MECHANISM.to_owned());
        m
    }

    /// Records the mechanism the client selected (SASLInitialResponse).
    pub fn select(&mut self, mechanism: &str) -> Result<(), ScramError> {
        match mechanism {
            MECHANISM => self.plus = false,
            MECHANISM_PLUS if self.channel_binding.is_some() => self.plus = true,
            other => {
                return Err(ScramError::Protocol(format!(
                    "client selected an invalid SASL authentication mechanism \"{other}\""
                )));
            }
        }
        Ok(())
    }

    /// Consumes client-first-message and returns server-first-message. The gs2
    /// header's channel-binding flag is checked as PostgreSQL checks it.
    pub fn client_first(&mut self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let message = std::str::from_utf8(message)
            .map_err(|_| ScramError::Protocol("SCRAM message is not UTF-8".into()))?;
        let malformed =
            |detail: &str| ScramError::Protocol(format!("malformed SCRAM message: {detail}"));
        let mut parts = message.splitn(3, ',');
        let (Some(flag), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("no gs2 header"));
        };
        if !authzid.is_empty() {
            return Err(ScramError::Unsupported(
                "client uses authorization identity, but it is not supported".into(),
            ));
        }
        match flag {
            "n" | "y" if self.plus => {
                return Err(malformed(
                    "the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data",
                ));
            }
            "n" => {}
            // The client could bind but believes the server cannot: over TLS with
            // PLUS offered that is a downgrade by someone in the middle.
            "y" if self.channel_binding.is_some() => {
                return Err(ScramError::Refused(
                    "SCRAM channel binding negotiation error: the client supports SCRAM channel binding but thinks the server does not, yet this server does support channel binding".into(),
                ));
            }
            "y" => {}
            p if p.starts_with("p=") => {
                if !self.plus {
                    return Err(malformed(
                        "the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data",
                    ));
                }
                if &p[2..] != CHANNEL_BINDING_TYPE {
                    return Err(ScramError::Protocol(format!(
                        "unsupported SCRAM channel-binding type \"{}\"",
                        &p[2..]
                    )));
                }
            }
            other => {
                return Err(malformed(&format!(
                    "unexpected channel-binding flag \"{other}\""
                )));
            }
        }
        self.gs2_header = format!("{flag},{authzid},");
        if bare.starts_with("m=") {
            return Err(ScramError::Unsupported(
                "client requires an unsupported SCRAM extension".into(),
            ));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|attr| attr.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or_else(|| ScramError::Protocol("SCRAM client nonce missing".into()))?;
        // The nonce is echoed back; keep replies small whatever the client sends.
        if client_nonce.len() > 1024 {
            return Err(ScramError::Protocol(
                "SCRAM client nonce is too long".into(),
            ));
        }
        let mut server_nonce = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut server_nonce);
        self.nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        self.client_first_bare = bare.to_owned();
        self.server_first = format!(
            "r={},s={},i={}",
            self.nonce,
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        Ok(self.server_first.clone().into_bytes())
    }

    /// Consumes client-final-message; on success returns server-final-message.
    pub fn client_final(&self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let message = std::str::from_utf8(message)
            .map_err(|_| ScramError::Protocol("SCRAM message is not UTF-8".into()))?;
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .ok_or_else(|| ScramError::Protocol("SCRAM proof missing".into()))?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                binding = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        let mut expected = self.gs2_header.clone().into_bytes();
        if self.plus
            && let Some(hash) = &self.channel_binding
        {
            expected.extend_from_slice(hash);
        }
        let expected = B64.encode(expected);
        match binding {
            Some(b) if b == expected => {}
            Some(_) if self.plus => {
                return Err(ScramError::Refused(
                    "SCRAM channel binding check failed".into(),
                ));
            }
            _ => {
                return Err(ScramError::Protocol(
                    "unexpected SCRAM channel-binding attribute in client-final-message".into(),
                ));
            }
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Protocol("SCRAM nonce mismatch".into()));
        }
        let proof = B64
            .decode(proof)
            .ok()
            .filter(|p| p.len() == 32)
            .ok_or_else(|| ScramError::Protocol("malformed SCRAM proof".into()))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        let matches: bool = computed.ct_eq(&self.verifier.stored_key).into();
        if !matches || !self.known_user {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays the client side of RFC 7677 to check the server end to end.
    fn client_final_for(password: &str, client_first_bare: &str, server_first: &str) -> String {
        let parts: Vec<&str> = server_first.split(',').collect();
        let nonce = &parts[0][2..];
        let salt = B64.decode(&parts[1][2..]).unwrap();
        let iters: u32 = parts[2][2..].parse().unwrap();
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iters, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let sig = hmac(&stored, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        format!("{without_proof},p={}", B64.encode(proof))
    }

    #[test]
    fn right_password_passes_and_wrong_fails() {
        let v = Verifier::from_password("s3cret");
        for (password, ok) in [("s3cret", true), ("wrong", false)] {
            let mut ex = ScramExchange::new(Some(&v), "u", None);
            let sf = ex.client_first(b"n,,n=,r=abcdef").unwrap();
            let cf = client_final_for(password, "n=,r=abcdef", std::str::from_utf8(&sf).unwrap());
            assert_eq!(ex.client_final(cf.as_bytes()).is_ok(), ok);
        }
    }

    /// The client side with channel binding: `c=` carries gs2 header + hash.
    fn client_final_plus(password: &str, bare: &str, server_first: &str, hash: &[u8]) -> String {
        let with_n = client_final_for(password, bare, server_first);
        let mut cbind = b"p=tls-server-end-point,,".to_vec();
        cbind.extend_from_slice(hash);
        let c = B64.encode(cbind);
        // Recompute the proof over the PLUS `c=` attribute.
        let parts: Vec<&str> = server_first.split(',').collect();
        let nonce = &parts[0][2..];
        let salt = B64.decode(&parts[1][2..]).unwrap();
        let iters: u32 = parts[2][2..].parse().unwrap();
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iters, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c={c},r={nonce}");
        let auth = format!("{bare},{server_first},{without_proof}");
        let sig = hmac(&stored, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        let _ = with_n;
        format!("{without_proof},p={}", B64.encode(proof))
    }

    #[test]
    fn channel_binding_is_checked_and_downgrades_refused() {
        let v = Verifier::from_password("pw");
        let hash = vec![7u8; 32];
        // PLUS with the right certificate hash passes; a different one is refused.
        for (seen, ok) in [(hash.clone(), true), (vec![8u8; 32], false)] {
            let mut ex = ScramExchange::new(Some(&v), "u", Some(hash.clone()));
            assert_eq!(ex.mechanisms(), vec![MECHANISM_PLUS, MECHANISM]);
            ex.select(MECHANISM_PLUS).unwrap();
            let sf = ex
                .client_first(b"p=tls-server-end-point,,n=,r=abc")
                .unwrap();
            let cf = client_final_plus("pw", "n=,r=abc", std::str::from_utf8(&sf).unwrap(), &seen);
            let r = ex.client_final(cf.as_bytes());
            assert_eq!(r.is_ok(), ok, "{r:?}");
            if !ok {
                assert!(matches!(r, Err(ScramError::Refused(_))));
            }
        }
        // "y" (client could bind, thinks the server cannot) while PLUS is offered.
        let mut ex = ScramExchange::new(Some(&v), "u", Some(hash.clone()));
        ex.select(MECHANISM).unwrap();
        assert!(matches!(
            ex.client_first(b"y,,n=,r=abc"),
            Err(ScramError::Refused(_))
        ));
        // "n" with plain SCRAM is fine over TLS (asyncpg never binds).
        let mut ex = ScramExchange::new(Some(&v), "u", Some(hash.clone()));
        ex.select(MECHANISM).unwrap();
        let sf = ex.client_first(b"n,,n=,r=abc").unwrap();
        let cf = client_final_for("pw", "n=,r=abc", std::str::from_utf8(&sf).unwrap());
        assert!(ex.client_final(cf.as_bytes()).is_ok());
        // PLUS selected without binding data, binding data without PLUS, PLUS without TLS.
        let mut ex = ScramExchange::new(Some(&v), "u", Some(hash.clone()));
        ex.select(MECHANISM_PLUS).unwrap();
        assert!(matches!(
            ex.client_first(b"n,,n=,r=abc"),
            Err(ScramError::Protocol(_))
        ));
        let mut ex = ScramExchange::new(Some(&v), "u", Some(hash));
        ex.select(MECHANISM).unwrap();
        assert!(matches!(
            ex.client_first(b"p=tls-server-end-point,,n=,r=abc"),
            Err(ScramError::Protocol(_))
        ));
        let mut ex = ScramExchange::new(Some(&v), "u", None);
        assert!(ex.select(MECHANISM_PLUS).is_err());
        assert!(matches!(
            ex.client_first(b"n,a=bob,n=,r=abc"),
            Err(ScramError::Unsupported(_))
        ));
    }

    #[test]
    fn cleartext_passwords_check_against_the_verifier() {
        let v = Verifier::from_password("s3cret");
        assert!(v.verify_password("s3cret"));
        assert!(!v.verify_password("s3cret "));
        assert!(!v.verify_password(""));
    }

    #[test]
    fn unknown_users_get_a_stable_salt() {
        let salt = |u: &str| {
            let mut ex = ScramExchange::new(None, u, None);
            String::from_utf8(ex.client_first(b"n,,n=,r=abc").unwrap())
                .unwrap()
                .split(',')
                .nth(1)
                .unwrap()
                .to_owned()
        };
        assert_eq!(salt("ghost"), salt("ghost"));
        assert_ne!(salt("ghost"), salt("other"));
    }

    #[test]
    fn unknown_user_always_fails() {
        let mut ex = ScramExchange::new(None, "ghost", None);
        let sf = ex.client_first(b"n,,n=,r=abc").unwrap();
        let cf = client_final_for("", "n=,r=abc", std::str::from_utf8(&sf).unwrap());
        assert_eq!(ex.client_final(cf.as_bytes()), Err(ScramError::WrongProof));
    }

    #[test]
    fn stored_format_round_trips_and_rejects_garbage() {
        let v = Verifier::from_password("x");
        assert_eq!(Verifier::parse(&v.to_stored()).unwrap(), v);
        for bad in [
            "",
            "md5abc",
            "SCRAM-SHA-256$x:y$z:w",
            "SCRAM-SHA-256$4096:AAAA$AAAA:AAAA",
        ] {
            assert!(Verifier::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn garbage_messages_are_protocol_errors() {
        let v = Verifier::from_password("x");
        let mut ex = ScramExchange::new(Some(&v), "u", None);
        assert!(matches!(
            ex.client_first(b"\xff\xfe"),
            Err(ScramError::Protocol(_))
        ));
        assert!(matches!(
            ex.client_first(b"p=tls-server-end-point,,n=,r=a"),
            Err(ScramError::Protocol(_))
        ));
        ex.client_first(b"n,,n=,r=abc").unwrap();
        assert!(matches!(
            ex.client_final(b"c=biws,r=zzz,p=AAAA"),
            Err(ScramError::Protocol(_))
        ));
        assert!(matches!(
            ex.client_final(b"nonsense"),
            Err(ScramError::Protocol(_))
        ));
    }
}
