//! Secret material: the [`Secret`] wrapper every signing key lives in.
//!
//! A `Secret` never prints itself: `Debug` and `Display` both write `[redacted]`, its bytes are
//! zeroized when it is dropped, and reading it is an explicit call to [`Secret::expose`].

use std::fmt;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The prefix every HMAC signing secret carries.
pub const SECRET_PREFIX: &str = "whsec_";

/// How many random bytes a generated secret holds (64 hex characters after the prefix).
pub const SECRET_RANDOM_BYTES: usize = 32;

/// A signing secret or bearer token held in memory.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(Zeroizing<String>);

/// Why random bytes could not be had from the operating system.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomError(String);

impl Secret {
    /// Wraps a string that is already a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// A new `whsec_` secret: 32 bytes from the OS CSPRNG as 64 lowercase hex characters.
    pub fn generate() -> Result<Self, RandomError> {
        Ok(Self::new(format!(
            "{SECRET_PREFIX}{}",
            hex::encode(random_bytes::<SECRET_RANDOM_BYTES>()?.as_slice())
        )))
    }

    /// The secret's text. Every call site that reads a secret goes through here.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares with `given` in constant time (for the length of the shorter input).
    pub fn matches(&self, given: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(given).into()
    }

    /// The last four characters, shown by the admin API as `...abcd`.
    pub fn hint(&self) -> String {
        let tail: String = self
            .0
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("...{tail}")
    }
}

/// Whether `value` is a well-formed storno secret: `whsec_` and 64 lowercase hex characters.
pub fn is_hex_secret(value: &str) -> bool {
    value.strip_prefix(SECRET_PREFIX).is_some_and(|rest| {
        rest.len() == 2 * SECRET_RANDOM_BYTES
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Fills an array from the operating system's CSPRNG; the array is zeroized on drop.
pub fn random_bytes<const N: usize>() -> Result<Zeroizing<[u8; N]>, RandomError> {
    let mut bytes = Zeroizing::new([0u8; N]);
    getrandom::fill(bytes.as_mut_slice()).map_err(|err| RandomError(err.to_string()))?;
    Ok(bytes)
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_well_formed_and_distinct() {
        let a = Secret::generate().unwrap();
        let b = Secret::generate().unwrap();
        assert!(is_hex_secret(a.expose()), "{}", a.expose().len());
        assert!(is_hex_secret(b.expose()));
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("whsec_0123456789abcdef");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&secret)), "Some([redacted])");
    }

    #[test]
    fn hint_is_the_last_four_characters() {
        assert_eq!(Secret::new("whsec_abcdef1234").hint(), "...1234");
    }

    #[test]
    fn matches_compares_whole_values() {
        let secret = Secret::new("token-value");
        assert!(secret.matches(b"token-value"));
        assert!(!secret.matches(b"token-valuf"));
        assert!(!secret.matches(b"token-valu"));
    }

    #[test]
    fn hex_secret_format_is_strict() {
        let ok = format!("whsec_{}", "a".repeat(64));
        assert!(is_hex_secret(&ok));
        assert!(!is_hex_secret(&format!("whsec_{}", "A".repeat(64))));
        assert!(!is_hex_secret(&format!("whsec_{}", "a".repeat(63))));
        assert!(!is_hex_secret(&format!("whsk_{}", "a".repeat(64))));
        assert!(!is_hex_secret(&format!("whsec_{}", "g".repeat(64))));
    }
}
