//! The `github` scheme: `X-Hub-Signature-256: sha256=<lowercase hex HMAC-SHA256(secret, body)>`,
//! as GitHub sends it.
//!
//! The key is the secret string's UTF-8 bytes (the whole `whsec_…` text, which is what the
//! receiver configures). GitHub receivers compare one value, so this scheme allows no rotation
//! overlap window.

use hmac::Mac as _;
use http::HeaderName;

use super::{keyed, HmacSha256};
use crate::secret::Secret;

/// The signature header.
pub const X_HUB_SIGNATURE_256: HeaderName = HeaderName::from_static("x-hub-signature-256");

/// Keys HMAC-SHA256 with the secret's bytes.
pub fn key(secret: &Secret) -> HmacSha256 {
    keyed(secret.expose().as_bytes())
}

/// The header value of a finished tag: `sha256=<hex>`.
pub fn encode(tag: &[u8]) -> String {
    format!("sha256={}", hex::encode(tag))
}

/// Signs a whole body at once: the header value.
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    let mut mac = key(secret);
    mac.update(body);
    encode(&mac.finalize().into_bytes())
}

/// Whether `header` (`sha256=<hex>`; several may be separated by spaces or commas) holds the
/// body's signature under `secret`. Tags are compared in constant time.
pub fn verify(secret: &Secret, body: &[u8], header: &str) -> bool {
    let mut mac = key(secret);
    mac.update(body);
    header
        .split([' ', ','])
        .filter_map(|s| s.strip_prefix("sha256="))
        .filter_map(|s| hex::decode(s).ok())
        .any(|tag| mac.clone().verify_slice(&tag).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's documented example ("Validating webhook deliveries").
    #[test]
    fn matches_the_github_documented_example() {
        let secret = Secret::new("It's a Secret to Everybody");
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign(&secret, b"Hello, World!"), expected);
        assert!(verify(&secret, b"Hello, World!", expected));
        assert!(!verify(&secret, b"Hello, World?", expected));
        assert!(!verify(&secret, b"Hello, World!", &expected[7..]));
    }
}
