//! The `standard-webhooks-ed25519` scheme: the Standard Webhooks headers and signed string
//! (`"{id}.{timestamp}.{body}"`), signed with Ed25519: `webhook-signature` =
//! `v1a,<standard base64 of the 64-byte signature>`.
//!
//! The endpoint holds `whsk_<standard base64 of the 32-byte private seed>`, which never leaves
//! hooksign; receivers verify with `whpk_<standard base64 of the 32-byte public key>`.
//!
//! Ed25519 (RFC 8032, pure) hashes the message twice, so it cannot be fed chunk by chunk like an
//! HMAC, and the pre-hashed variant (Ed25519ph) is a different algorithm that receivers reject.
//! The delivery path therefore keeps references to the body's chunks (the proxy keeps them
//! anyway to forward them) and, for this scheme only, concatenates prefix and chunks into one
//! buffer at the end and signs that ([`sign_parts`]): one extra copy of the body, no re-read.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use zeroize::Zeroizing;

use super::standard_webhooks::signed_prefix;
use super::KeyError;
use crate::secret::Secret;

/// The prefix of a private key (seed) as stored.
pub const PRIVATE_PREFIX: &str = "whsk_";
/// The prefix of a public key as shown to receivers.
pub const PUBLIC_PREFIX: &str = "whpk_";

/// Decodes the signing key from a `whsk_<base64 of 32 bytes>` secret.
pub fn signing_key(secret: &Secret) -> Result<SigningKey, KeyError> {
    let encoded = secret
        .expose()
        .strip_prefix(PRIVATE_PREFIX)
        .ok_or(KeyError::Ed25519)?;
    let bytes = Zeroizing::new(STANDARD.decode(encoded).map_err(|_| KeyError::Ed25519)?);
    let seed: &[u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Ed25519)?;
    Ok(SigningKey::from_bytes(seed))
}

/// A new private key as stored: `whsk_` and the base64 of 32 CSPRNG bytes.
pub fn encode_private(seed: &[u8; 32]) -> Secret {
    Secret::new(format!("{PRIVATE_PREFIX}{}", STANDARD.encode(seed)))
}

/// The public key as receivers configure it: `whpk_<base64>`.
pub fn public_key(key: &SigningKey) -> String {
    format!(
        "{PUBLIC_PREFIX}{}",
        STANDARD.encode(key.verifying_key().as_bytes())
    )
}

/// Parses a `whpk_<base64>` public key.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let encoded = text
        .strip_prefix(PUBLIC_PREFIX)
        .ok_or(KeyError::PublicKey)?;
    let bytes = STANDARD.decode(encoded).map_err(|_| KeyError::PublicKey)?;
    let bytes: &[u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::PublicKey)?;
    VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::PublicKey)
}

/// The signed message of a body given in parts: prefix, then every part, in one buffer.
pub fn message<'a>(id: &str, timestamp: u64, parts: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let prefix = signed_prefix(id, timestamp);
    let mut message = prefix.into_bytes();
    for part in parts {
        message.extend_from_slice(part);
    }
    message
}

/// One signature entry over an already built message: `v1a,<base64>`.
pub fn entry(key: &SigningKey, message: &[u8]) -> String {
    format!("v1a,{}", STANDARD.encode(key.sign(message).to_bytes()))
}

/// Signs a body given in parts (the delivery path's chunks).
pub fn sign_parts<'a>(
    key: &SigningKey,
    id: &str,
    timestamp: u64,
    parts: impl IntoIterator<Item = &'a [u8]>,
) -> String {
    entry(key, &message(id, timestamp, parts))
}

/// Signs a whole body: the `v1a,` entry. A pure function of key, id, timestamp and body.
pub fn sign(key: &SigningKey, id: &str, timestamp: u64, body: &[u8]) -> String {
    sign_parts(key, id, timestamp, [body])
}

/// Whether any `v1a,` entry of the space-separated `webhook-signature` value verifies under
/// `public` for this message. The timestamp's age is not checked here.
pub fn verify(public: &VerifyingKey, id: &str, timestamp: u64, body: &[u8], header: &str) -> bool {
    let message = message(id, timestamp, [body]);
    header
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1a,"))
        .filter_map(|sig| STANDARD.decode(sig).ok())
        .filter_map(|bytes| Signature::from_slice(&bytes).ok())
        .any(|signature| public.verify(&message, &signature).is_ok())
}

#[cfg(test)]
mod tests {
    use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};

    use super::*;

    // RFC 8032 section 7.1, TEST 2.
    const RFC_SEED: &str = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
    const RFC_PUBLIC: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
    const RFC_SIGNATURE: &str = "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
                                 085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00";

    fn rfc_secret() -> Secret {
        let seed: [u8; 32] = hex::decode(RFC_SEED).unwrap().try_into().unwrap();
        encode_private(&seed)
    }

    #[test]
    fn keys_match_rfc_8032() {
        let key = signing_key(&rfc_secret()).unwrap();
        let public = hex::decode(RFC_PUBLIC).unwrap();
        assert_eq!(
            public_key(&key),
            format!("whpk_{}", STANDARD.encode(&public))
        );
        assert_eq!(
            hex::encode(key.sign(&[0x72]).to_bytes()),
            RFC_SIGNATURE,
            "the RFC's one-byte message"
        );
    }

    /// Ed25519 is deterministic: ring, signing the same string with the same seed, must produce
    /// the very same signature, and ring must accept ours under the published public key.
    #[test]
    fn scheme_signature_matches_ring() {
        let secret = rfc_secret();
        let key = signing_key(&secret).unwrap();
        let (id, ts, body) = (
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        let ours = sign(&key, id, ts, body);
        let pair = Ed25519KeyPair::from_seed_unchecked(&hex::decode(RFC_SEED).unwrap()).unwrap();
        let signed = format!("{id}.{ts}.{}", std::str::from_utf8(body).unwrap());
        let theirs = pair.sign(signed.as_bytes());
        assert_eq!(ours, format!("v1a,{}", STANDARD.encode(theirs.as_ref())));
        let raw = STANDARD.decode(ours.strip_prefix("v1a,").unwrap()).unwrap();
        UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref())
            .verify(signed.as_bytes(), &raw)
            .unwrap();
        let chunked = sign_parts(&key, id, ts, body.chunks(3));
        assert_eq!(chunked, ours);
    }

    #[test]
    fn verify_accepts_any_v1a_entry_and_nothing_else() {
        let key = signing_key(&rfc_secret()).unwrap();
        let public = parse_public_key(&public_key(&key)).unwrap();
        let sig = sign(&key, "msg_1", 10, b"{}");
        assert!(verify(&public, "msg_1", 10, b"{}", &sig));
        assert!(verify(
            &public,
            "msg_1",
            10,
            b"{}",
            &format!("v1,AAAA {sig}")
        ));
        assert!(!verify(&public, "msg_1", 11, b"{}", &sig));
        assert!(!verify(&public, "msg_1", 10, b"{ }", &sig));
        assert!(!verify(
            &public,
            "msg_1",
            10,
            b"{}",
            &sig.replace("v1a,", "v1,")
        ));
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(signing_key(&Secret::new(format!("whsk_{}", STANDARD.encode([1u8; 31])))).is_err());
        assert!(signing_key(&Secret::new(format!(
            "whsec_{}",
            STANDARD.encode([1u8; 32])
        )))
        .is_err());
        assert!(signing_key(&Secret::new("whsk_not base64!")).is_err());
        assert!(parse_public_key("whpk_AAAA").is_err());
    }
}
