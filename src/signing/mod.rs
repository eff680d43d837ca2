//! Webhook signing: the schemes an endpoint can be signed with, and the per-request signer.
//!
//! Keys are prepared once, when a snapshot is built ([`EndpointSigner::new`] keys the HMAC);
//! each delivery clones that keyed state ([`EndpointSigner::begin`]), feeds the body chunk by
//! chunk as it arrives, and finishes into the header to add. Scheme functions are pure: the same
//! key and body always give the same signature, so their tests check published vectors.

pub mod storno;

use std::fmt;
use std::str::FromStr;

use http::HeaderValue;

use crate::secret::Secret;

/// How an endpoint's deliveries are signed (`scheme` in the store file and the API).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// `X-Storno-Signature`: lowercase hex HMAC-SHA256 of the body, keyed by the whole secret.
    Storno,
}

/// A scheme name that hooksign does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown signing scheme {0:?} (known: storno)")]
pub struct UnknownScheme(pub String);

impl Scheme {
    /// The name used in the store file and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Storno => "storno",
        }
    }
}

impl FromStr for Scheme {
    type Err = UnknownScheme;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "storno" => Ok(Self::Storno),
            other => Err(UnknownScheme(other.to_owned())),
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An endpoint's signing key, keyed once per snapshot.
#[derive(Clone)]
pub struct EndpointSigner {
    key: storno::Key,
}

impl EndpointSigner {
    /// Keys the signer for `scheme` with `secret`.
    pub fn new(scheme: Scheme, secret: &Secret) -> Self {
        match scheme {
            Scheme::Storno => Self {
                key: storno::Key::new(secret),
            },
        }
    }

    /// Starts signing one delivery: a clone of the keyed state, no re-keying.
    pub fn begin(&self) -> BodySigner {
        BodySigner {
            mac: self.key.begin(),
        }
    }
}

impl fmt::Debug for EndpointSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointSigner").finish_non_exhaustive()
    }
}

/// The signature of one delivery in progress.
pub struct BodySigner {
    mac: storno::Mac,
}

impl BodySigner {
    /// Feeds the next chunk of the body, in order.
    pub fn update(&mut self, chunk: &[u8]) {
        self.mac.update(chunk);
    }

    /// Finishes the signature into the header value to send.
    pub fn finish(self) -> HeaderValue {
        self.mac.finish()
    }
}

impl fmt::Debug for BodySigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodySigner").finish_non_exhaustive()
    }
}
