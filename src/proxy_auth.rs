//! The proxy port's client authentication: `Proxy-Authorization: Bearer <token>` against the
//! SHA-256 hashes of `[[proxy.tokens]]`, compared in constant time. With no tokens listed every
//! request is let through (the port is then protected by where it listens: loopback or a Unix
//! socket's file mode).
//!
//! The header is hop-by-hop (`Proxy-*`), so it is never forwarded to a customer.

use http::header::{HeaderMap, PROXY_AUTHORIZATION};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ProxyToken;

/// The accepted token hashes.
#[derive(Clone, Default)]
pub struct ProxyAuth {
    hashes: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ProxyAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyAuth")
            .field("tokens", &self.hashes.len())
            .finish()
    }
}

impl ProxyAuth {
    pub fn new(tokens: &[ProxyToken]) -> Self {
        Self {
            hashes: tokens.iter().map(|token| token.sha256).collect(),
        }
    }

    /// Whether any token is required.
    pub fn is_required(&self) -> bool {
        !self.hashes.is_empty()
    }

    /// Whether `headers` may use the proxy: no tokens are listed, or its bearer token's hash
    /// matches one (every hash is compared).
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if self.hashes.is_empty() {
            return true;
        }
        let Some(token) = headers
            .get(PROXY_AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
        else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = subtle::Choice::from(0);
        for hash in &self.hashes {
            found |= hash.ct_eq(&digest);
        }
        found.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(tokens: &[&str]) -> ProxyAuth {
        ProxyAuth::new(
            &tokens
                .iter()
                .map(|t| ProxyToken {
                    name: "app".into(),
                    sha256: Sha256::digest(t.as_bytes()).into(),
                })
                .collect::<Vec<_>>(),
        )
    }

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(PROXY_AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn bearer_tokens_are_checked_only_when_listed() {
        assert!(auth(&[]).allows(&HeaderMap::new()));
        let two = auth(&["one", "two"]);
        assert!(two.allows(&with("Bearer two")));
        assert!(two.allows(&with("bearer  one ")));
        assert!(!two.allows(&with("Bearer three")));
        assert!(!two.allows(&with("Basic b25lOg==")));
        assert!(!two.allows(&with("Bearer ")));
        assert!(!two.allows(&HeaderMap::new()));
    }
}
