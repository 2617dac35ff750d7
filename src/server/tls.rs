//! TLS for the listener: the configured certificate, or a self-signed one generated
//! at start. Any problem here stops start-up; Sluice never falls back to plaintext.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;

pub struct Tls {
    pub acceptor: TlsAcceptor,
    /// The same certificate for the admin HTTP listener (ALPN `http/1.1`).
    pub http_acceptor: TlsAcceptor,
    /// SHA-256 of the leaf certificate, hex with colons, for logs and pinning.
    pub fingerprint: String,
    pub self_signed: bool,
    /// `tls-server-end-point` channel-binding data (RFC 5929): the leaf
    /// certificate's hash with its signature's hash function (SHA-256 for MD5 and
    /// SHA-1). `None` when that hash is undefined (Ed25519, RSA-PSS): SCRAM-PLUS is
    /// then not offered.
    pub end_point_hash: Option<Vec<u8>>,
}

/// RFC 5929 §4.1: the hash of the DER certificate with the hash function of its
/// signature algorithm, SHA-256 when that is MD5 or SHA-1.
pub fn end_point_hash(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use sha2::{Sha384, Sha512};
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let oid = parsed.signature_algorithm.algorithm.to_id_string();
    let der = cert.as_ref();
    Some(match oid.as_str() {
        // md5/sha1/sha256 WithRSAEncryption, ecdsa-with-SHA1/SHA256
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2" => Sha256::digest(der).to_vec(),
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Sha384::digest(der).to_vec(),
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Sha512::digest(der).to_vec(),
        _ => return None,
    })
}

pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn load(config: &Config) -> Result<Tls, String> {
    let (certs, key, self_signed) = match (&config.server.tls.cert, &config.server.tls.key) {
        (Some(cert), Some(key)) => {
            let cert_path = config.resolve(cert);
            let key_path = config.resolve(key);
            (read_certs(&cert_path)?, read_key(&key_path)?, false)
        }
        _ => {
            let (c, k) = generate_self_signed()?;
            (vec![c], k, true)
        }
    };
    let fingerprint = certs.first().map(fingerprint).unwrap_or_default();
    let end_point_hash = certs.first().and_then(end_point_hash);
    if end_point_hash.is_none() {
        tracing::warn!(
            "TLS: the certificate's signature algorithm defines no channel-binding hash; SCRAM-SHA-256-PLUS is not offered"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("server.tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("server.tls: certificate and key do not form a usable pair: {e}"))?;
    let mut http = server.clone();
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    // PostgreSQL 17 clients using direct TLS negotiation require this ALPN name.
    server.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Tls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        http_acceptor: TlsAcceptor::from(Arc::new(http)),
        fingerprint,
        self_signed,
        end_point_hash,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(path)
        .map_err(|e| format!("server.tls.cert: cannot read {}: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("server.tls.cert: {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "server.tls.cert: {} holds no certificate",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let data = std::fs::read(path)
        .map_err(|e| format!("server.tls.key: cannot read {}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| format!("server.tls.key: {} is not valid PEM: {e}", path.display()))?
        .ok_or_else(|| format!("server.tls.key: {} holds no private key", path.display()))
}

fn generate_self_signed() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), String> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot generate a self-signed certificate: {e}"))?;
    let key = PrivateKeyDer::try_from(certified.key_pair.serialize_der())
        .map_err(|e| format!("cannot encode generated key: {e}"))?;
    Ok((certified.cert.der().clone(), key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_have_a_sha256_end_point_hash() {
        let (cert, _) = generate_self_signed().unwrap();
        let hash = end_point_hash(&cert).expect("ECDSA P-256 SHA-256");
        assert_eq!(hash, Sha256::digest(cert.as_ref()).to_vec());
    }
}
