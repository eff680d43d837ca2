//! The `stripe` scheme: `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 over "{t}.{body}">`, as
//! Stripe sends it.
//!
//! The key is the secret string's UTF-8 bytes (the whole `whsec_…` text), which is how Stripe's
//! libraries use an endpoint secret. During a rotation overlap window the header carries one
//! `v1=` entry per key, the new key's first; Stripe's libraries accept any of them.

use hmac::Mac as _;
use http::HeaderName;

use super::{keyed, HmacSha256};
use crate::secret::Secret;

/// The signature header.
pub const STRIPE_SIGNATURE: HeaderName = HeaderName::from_static("stripe-signature");

/// Keys HMAC-SHA256 with the secret's bytes.
pub fn key(secret: &Secret) -> HmacSha256 {
    keyed(secret.expose().as_bytes())
}

/// A clone of the keyed state with the signed prefix `"{t}."` fed; the body follows.
pub fn begin(key: &HmacSha256, timestamp: u64) -> HmacSha256 {
    let mut mac = key.clone();
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac
}

/// The header value: `t=<unix>` and one `v1=<hex>` per tag, in order.
pub fn header(timestamp: u64, tags: &[&[u8]]) -> String {
    let mut value = format!("t={timestamp}");
    for tag in tags {
        value.push_str(",v1=");
        value.push_str(&hex::encode(tag));
    }
    value
}

/// Signs a whole body at once: the hex of one `v1` signature.
pub fn sign(secret: &Secret, timestamp: u64, body: &[u8]) -> String {
    let mut mac = begin(&key(secret), timestamp);
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether the `Stripe-Signature` header value carries a `v1` signature of the body under
/// `secret` for its own `t=`. Like stripe-python without a tolerance, the age of `t` is not
/// checked. Tags are compared in constant time.
pub fn verify(secret: &Secret, body: &[u8], header: &str) -> bool {
    let mut timestamp = None;
    let mut tags = Vec::new();
    for item in header.split(',') {
        match item.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", sig)) => tags.extend(hex::decode(sig).ok()),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    let mut mac = begin(&key(secret), timestamp);
    mac.update(body);
    tags.iter().any(|tag| mac.clone().verify_slice(tag).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stripe's algorithm recomputed with ring: HMAC-SHA256(secret, "{t}.{body}").
    fn reference(secret: &str, t: u64, body: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let mut message = format!("{t}.").into_bytes();
        message.extend_from_slice(body);
        hex::encode(ring::hmac::sign(&key, &message).as_ref())
    }

    #[test]
    fn matches_an_independent_hmac() {
        let text = format!("whsec_{}", "3f".repeat(32));
        let body = br#"{"id":"evt_1","object":"event"}"#;
        let ours = sign(&Secret::new(text.clone()), 1_700_000_000, body);
        assert_eq!(ours, reference(&text, 1_700_000_000, body));
        assert_ne!(ours, reference(&text, 1_700_000_001, body));
    }

    #[test]
    fn verify_reads_t_and_any_v1() {
        let secret = Secret::new("whsec_stripe");
        let old = Secret::new("whsec_old");
        let body = b"{\"a\":1}";
        let t = 1_614_265_330;
        let new_sig = sign(&secret, t, body);
        let old_sig = sign(&old, t, body);
        let both = format!("t={t},v1={new_sig},v1={old_sig}");
        assert!(verify(&secret, body, &both));
        assert!(verify(&old, body, &both));
        assert!(!verify(&Secret::new("whsec_x"), body, &both));
        assert!(!verify(&secret, body, &format!("t={},v1={new_sig}", t + 1)));
        assert!(!verify(&secret, body, &format!("v1={new_sig}")));
        assert!(!verify(&secret, b"{\"a\":2}", &both));
        assert_eq!(
            header(t, &[&[0xab], &[0xcd]]),
            "t=1614265330,v1=ab,v1=cd".to_owned()
        );
    }
}
