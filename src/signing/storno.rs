//! The `storno` scheme: `X-Storno-Signature: <lowercase hex HMAC-SHA256(secret, body)>`.
//!
//! The HMAC key is the secret string's UTF-8 bytes *including* its `whsec_` prefix, so a receiver
//! verifies with `crypto.createHmac('sha256', secret).update(rawBody).digest('hex')`. The receiver
//! compares one value, so this scheme allows no rotation overlap window.

use hmac::Mac as _;

use super::{keyed, HmacSha256};
use crate::secret::Secret;

/// Keys HMAC-SHA256 with the secret's bytes (prefix included).
pub fn key(secret: &Secret) -> HmacSha256 {
    keyed(secret.expose().as_bytes())
}

/// The signature text of a finished tag: 64 lowercase hex characters.
pub fn encode(tag: &[u8]) -> String {
    hex::encode(tag)
}

/// Signs a whole body at once: the lowercase hex signature.
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    let mut mac = key(secret);
    mac.update(body);
    encode(&mac.finalize().into_bytes())
}

/// Whether any of the signatures in `header` (hex, either case; several may be separated by
/// spaces or commas) is the body's signature under `secret`. Tags are compared in constant time.
pub fn verify(secret: &Secret, body: &[u8], header: &str) -> bool {
    let mac = {
        let mut mac = key(secret);
        mac.update(body);
        mac
    };
    header
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .filter_map(|s| hex::decode(s).ok())
        .any(|tag| mac.clone().verify_slice(&tag).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    const RFC4231_CASE2: &str = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";

    #[test]
    fn matches_the_rfc_4231_vector() {
        assert_eq!(
            sign(&Secret::new("Jefe"), b"what do ya want for nothing?"),
            RFC4231_CASE2
        );
    }

    #[test]
    fn the_whsec_prefix_is_part_of_the_key() {
        let with_prefix = Secret::new(format!("whsec_{}", "ab".repeat(32)));
        let without = Secret::new("ab".repeat(32));
        assert_ne!(sign(&with_prefix, b"{}"), sign(&without, b"{}"));
    }

    #[test]
    fn verify_accepts_only_the_right_signature() {
        let secret = Secret::new("whsec_verify");
        let sig = sign(&secret, b"body");
        assert!(verify(&secret, b"body", &sig));
        assert!(verify(&secret, b"body", &sig.to_uppercase()));
        assert!(verify(
            &secret,
            b"body",
            &format!("{} {sig}", "0".repeat(64))
        ));
        assert!(!verify(&secret, b"body!", &sig));
        assert!(!verify(&Secret::new("whsec_other"), b"body", &sig));
        assert!(!verify(&secret, b"body", "not hex"));
        assert!(!verify(&secret, b"body", &sig[..62]));
        assert!(!verify(&secret, b"body", ""));
    }
}
