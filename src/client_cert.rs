//! An endpoint's client certificate (mutual TLS to the customer): a PEM certificate chain and its
//! private key, parsed and checked once when the endpoint is built, never per delivery.
//!
//! The private key is held like a secret: its PEM in a [`Secret`] (zeroized, redacted in
//! `Debug`), its parsed form inside rustls' [`CertifiedKey`]. What may be shown of it is the
//! leaf's subject, SHA-256 fingerprint and expiry.

use std::fmt;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::secret::Secret;

/// The largest PEM accepted for a chain or a key (a chain of a few certificates is ~5 KiB).
pub const MAX_PEM_BYTES: usize = 64 * 1024;

/// Why a client certificate was refused. Never quotes the key.
#[derive(Debug, thiserror::Error)]
pub enum ClientCertError {
    #[error("the certificate chain is over {MAX_PEM_BYTES} bytes")]
    ChainTooLarge,
    #[error("the private key is over {MAX_PEM_BYTES} bytes")]
    KeyTooLarge,
    #[error("the certificate chain is not PEM certificates")]
    Chain(#[source] rustls::pki_types::pem::Error),
    #[error("the certificate chain holds no certificate")]
    NoCertificate,
    #[error("the private key is not a PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    Key,
    #[error("the first certificate is not a valid X.509 certificate")]
    Leaf,
    #[error(
        "the private key does not belong to the first certificate, or is of an unsupported type"
    )]
    Mismatch(#[source] rustls::Error),
}

/// A client certificate chain and its key, checked.
pub struct ClientCertificate {
    /// The chain as stored (PEM).
    pub certificate_pem: String,
    /// The key as stored (PEM).
    pub private_key_pem: Secret,
    /// The chain and key as rustls presents them.
    pub certified: Arc<CertifiedKey>,
    /// The leaf's subject (RFC 4514 form).
    pub subject: String,
    /// SHA-256 of the leaf's DER: what names this identity (it keys the pool's connections).
    pub fingerprint: [u8; 32],
    /// The leaf's `notAfter`.
    pub not_after: OffsetDateTime,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("subject", &self.subject)
            .field("fingerprint", &self.fingerprint_hex())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ClientCertificate {
    /// Parses and checks `certificate` (a PEM chain, leaf first) and `private_key` (PEM).
    pub fn parse(certificate: &str, private_key: &Secret) -> Result<Self, ClientCertError> {
        if certificate.len() > MAX_PEM_BYTES {
            return Err(ClientCertError::ChainTooLarge);
        }
        if private_key.expose().len() > MAX_PEM_BYTES {
            return Err(ClientCertError::KeyTooLarge);
        }
        let chain = CertificateDer::pem_slice_iter(certificate.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(ClientCertError::Chain)?;
        let leaf = chain.first().ok_or(ClientCertError::NoCertificate)?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(leaf).map_err(|_| ClientCertError::Leaf)?;
        let subject = parsed.subject().to_string();
        let not_after = parsed.validity().not_after.to_datetime();
        let fingerprint: [u8; 32] = Sha256::digest(leaf.as_ref()).into();
        let key = PrivateKeyDer::from_pem_slice(private_key.expose().as_bytes())
            .map_err(|_| ClientCertError::Key)?;
        let provider = CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let certified =
            CertifiedKey::from_der(chain, key, &provider).map_err(ClientCertError::Mismatch)?;
        Ok(Self {
            certificate_pem: certificate.to_owned(),
            private_key_pem: private_key.clone(),
            certified: Arc::new(certified),
            subject,
            fingerprint,
            not_after,
        })
    }

    /// The fingerprint as lowercase hex (the API's `fingerprintSha256`).
    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, Secret) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), Secret::new(key.serialize_pem()))
    }

    #[test]
    fn a_matching_chain_and_key_parse_with_subject_fingerprint_and_expiry() {
        let (cert, key) = pair("hooksign-client");
        let parsed = ClientCertificate::parse(&cert, &key).unwrap();
        assert!(
            parsed.subject.contains("CN=hooksign-client"),
            "{}",
            parsed.subject
        );
        assert_eq!(parsed.fingerprint_hex().len(), 64);
        assert!(parsed.not_after > OffsetDateTime::now_utc());
        let debug = format!("{parsed:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    }

    #[test]
    fn a_key_of_another_certificate_or_garbage_is_refused_without_quoting_it() {
        let (cert, _) = pair("a");
        let (_, other_key) = pair("b");
        assert!(matches!(
            ClientCertificate::parse(&cert, &other_key),
            Err(ClientCertError::Mismatch(_))
        ));
        let garbage =
            Secret::new("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n");
        let err = ClientCertificate::parse(&cert, &garbage).unwrap_err();
        assert!(!err.to_string().contains("c2VjcmV0"));
        assert!(matches!(
            ClientCertificate::parse("not pem", &other_key),
            Err(ClientCertError::NoCertificate | ClientCertError::Chain(_))
        ));
    }
}
