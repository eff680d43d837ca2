//! The `storno` scheme: `X-Storno-Signature: <lowercase hex HMAC-SHA256(secret, body)>`.
//!
//! The HMAC key is the secret string's UTF-8 bytes *including* its `whsec_` prefix, so a receiver
//! verifies with `crypto.createHmac('sha256', secret).update(rawBody).digest('hex')`.

use hmac::{Hmac, Mac as _};
use http::HeaderValue;
use sha2::Sha256;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// The keyed HMAC state of one secret, built once and cloned per delivery.
#[derive(Clone)]
pub struct Key(HmacSha256);

/// One signature in progress.
pub struct Mac(HmacSha256);

impl Key {
    /// Keys HMAC-SHA256 with the secret's bytes.
    pub fn new(secret: &Secret) -> Self {
        Self(keyed(secret.expose().as_bytes()))
    }

    /// A fresh signature state for one body.
    pub fn begin(&self) -> Mac {
        Mac(self.0.clone())
    }
}

impl Mac {
    /// Feeds body bytes.
    pub fn update(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }

    /// The header value: 64 lowercase hex characters.
    pub fn finish(self) -> HeaderValue {
        let tag = self.0.finalize().into_bytes();
        let mut hex = [0u8; 64];
        hex::encode_to_slice(tag, &mut hex).expect("a 32-byte tag is 64 hex characters");
        HeaderValue::from_bytes(&hex).expect("hex digits are valid header bytes")
    }
}

/// Signs a whole body at once: the lowercase hex signature (for the CLI and tests).
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    let mut mac = keyed(secret.expose().as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature` (hex, either case) is the body's signature under `secret`. The tag is
/// compared in constant time.
pub fn verify(secret: &Secret, body: &[u8], signature: &str) -> bool {
    let Ok(tag) = hex::decode(signature.trim()) else {
        return false;
    };
    let mut mac = keyed(secret.expose().as_bytes());
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

fn keyed(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
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
    fn chunked_signing_equals_one_shot() {
        let secret = Secret::new("whsec_chunks");
        let body = b"{\"event\":\"invoice.created\",\"data\":{\"id\":42}}";
        let key = Key::new(&secret);
        let mut mac = key.begin();
        for chunk in body.chunks(7) {
            mac.update(chunk);
        }
        assert_eq!(mac.finish().to_str().unwrap(), sign(&secret, body));
    }

    #[test]
    fn verify_accepts_only_the_right_signature() {
        let secret = Secret::new("whsec_verify");
        let sig = sign(&secret, b"body");
        assert!(verify(&secret, b"body", &sig));
        assert!(verify(&secret, b"body", &sig.to_uppercase()));
        assert!(!verify(&secret, b"body!", &sig));
        assert!(!verify(&Secret::new("whsec_other"), b"body", &sig));
        assert!(!verify(&secret, b"body", "not hex"));
        assert!(!verify(&secret, b"body", &sig[..62]));
    }
}
