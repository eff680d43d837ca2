//! The `standard-webhooks` scheme (the Standard Webhooks spec, as Svix sends it): headers
//! `webhook-id`, `webhook-timestamp` (unix seconds) and `webhook-signature` =
//! `v1,<base64 HMAC-SHA256 over "{id}.{timestamp}.{body}">`.
//!
//! The key is the standard-base64 text after `whsec_`, decoded. hooksign generates 32 random
//! bytes, standard alphabet with padding (Python's `standardwebhooks` silently drops `-` and `_`,
//! so a URL-safe secret would derive another key there); secrets of 24 to 64 bytes (Svix issues
//! 24) are accepted. During a rotation overlap window `webhook-signature` carries one
//! space-separated `v1,` entry per key, the new key's first.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::Mac as _;
use http::HeaderName;
use zeroize::Zeroizing;

use super::{keyed, HmacSha256, KeyError};
use crate::secret::{Secret, SECRET_PREFIX};

/// The message id header.
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// The unix-seconds timestamp header.
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// The signature header: space-separated `v1,<base64>` (or `v1a,` for Ed25519) entries.
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// How many random bytes a generated key holds.
pub const GENERATED_KEY_BYTES: usize = 32;
/// The shortest key accepted (Svix's secrets decode to 24 bytes).
pub const MIN_KEY_BYTES: usize = 24;
/// The longest key accepted.
pub const MAX_KEY_BYTES: usize = 64;

/// Decodes the key from a `whsec_<standard base64 with padding>` secret.
pub fn key_bytes(secret: &Secret) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    // 64 hex digits are also valid base64 (of 48 bytes): an endpoint moved to this scheme with
    // its old hex secret would sign with a key its receiver does not expect. Refuse it.
    if crate::secret::is_hex_secret(secret.expose()) {
        return Err(KeyError::StandardWebhooks);
    }
    let encoded = secret
        .expose()
        .strip_prefix(SECRET_PREFIX)
        .ok_or(KeyError::StandardWebhooks)?;
    let bytes = Zeroizing::new(
        STANDARD
            .decode(encoded)
            .map_err(|_| KeyError::StandardWebhooks)?,
    );
    if (MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&bytes.len()) {
        Ok(bytes)
    } else {
        Err(KeyError::StandardWebhooks)
    }
}

/// Keys HMAC-SHA256 with the decoded key.
pub fn key(secret: &Secret) -> Result<HmacSha256, KeyError> {
    Ok(keyed(&key_bytes(secret)?))
}

/// Feeds the signed prefix `"{id}.{timestamp}."` (shared with the Ed25519 variant).
pub fn signed_prefix(id: &str, timestamp: u64) -> String {
    format!("{id}.{timestamp}.")
}

/// A clone of the keyed state with the signed prefix fed; the body follows.
pub fn begin(key: &HmacSha256, id: &str, timestamp: u64) -> HmacSha256 {
    let mut mac = key.clone();
    mac.update(signed_prefix(id, timestamp).as_bytes());
    mac
}

/// One signature entry: `v1,<standard base64 of the tag>`.
pub fn entry(tag: &[u8]) -> String {
    format!("v1,{}", STANDARD.encode(tag))
}

/// Signs a whole message at once with raw key bytes: the `v1,` entry. A pure function of key,
/// id, timestamp and body.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = begin(&keyed(key), id, timestamp);
    mac.update(body);
    entry(&mac.finalize().into_bytes())
}

/// Whether any `v1,` entry of the space-separated `webhook-signature` value is the message's
/// signature under `secret`. The timestamp's age is not checked here. Tags are compared in
/// constant time.
pub fn verify(secret: &Secret, id: &str, timestamp: u64, body: &[u8], header: &str) -> bool {
    let Ok(key) = key(secret) else {
        return false;
    };
    let mut mac = begin(&key, id, timestamp);
    mac.update(body);
    header
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|sig| STANDARD.decode(sig).ok())
        .any(|tag| mac.clone().verify_slice(&tag).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: u64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    /// The Standard Webhooks specification's example.
    #[test]
    fn matches_the_specification_example() {
        let secret = Secret::new(SPEC_SECRET);
        let key = key_bytes(&secret).unwrap();
        assert_eq!(key.len(), 24);
        assert_eq!(sign(&key, SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIGNATURE);
        assert!(verify(&secret, SPEC_ID, SPEC_TS, SPEC_BODY, SPEC_SIGNATURE));
        let two = format!("v1,AAAA {SPEC_SIGNATURE}");
        assert!(verify(&secret, SPEC_ID, SPEC_TS, SPEC_BODY, &two));
        assert!(!verify(
            &secret,
            SPEC_ID,
            SPEC_TS + 1,
            SPEC_BODY,
            SPEC_SIGNATURE
        ));
        assert!(!verify(
            &secret,
            "msg_other",
            SPEC_TS,
            SPEC_BODY,
            SPEC_SIGNATURE
        ));
        assert!(!verify(&secret, SPEC_ID, SPEC_TS, b"{}", SPEC_SIGNATURE));
    }

    #[test]
    fn secrets_must_be_standard_padded_base64_of_a_sane_length() {
        let ok = format!("whsec_{}", STANDARD.encode([7u8; 32]));
        assert!(key_bytes(&Secret::new(ok.clone())).is_ok());
        // Unpadded, URL-safe, wrong prefix, too short, hex.
        for bad in [
            ok.trim_end_matches('=').to_owned(),
            format!(
                "whsec_{}",
                base64::engine::general_purpose::URL_SAFE.encode([0xfb; 32])
            ),
            ok.replace("whsec_", "whsk_"),
            format!("whsec_{}", STANDARD.encode([7u8; 16])),
            format!("whsec_{}", "ab".repeat(32)),
        ] {
            assert!(key_bytes(&Secret::new(bad.clone())).is_err(), "{bad}");
        }
    }
}
