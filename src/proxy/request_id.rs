//! Request ids: the application's `X-Request-Id` when it sends a usable one, else one made here,
//! on every proxy log line of the request and on every response.
//!
//! A made id is 24 hex characters: a random 64-bit prefix drawn once per process and a counter,
//! so making one costs no system call and no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};

use super::X_REQUEST_ID;

/// The longest application request id taken as it is.
const MAX_LEN: usize = 200;

/// One request's id.
#[derive(Clone, Debug)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The application's id from `headers`, or a new one.
    pub fn of(headers: &HeaderMap) -> Self {
        match headers.get(&X_REQUEST_ID) {
            Some(value)
                if !value.is_empty()
                    && value.len() <= MAX_LEN
                    && value.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
            {
                Self(value.clone())
            }
            _ => Self::new(),
        }
    }

    /// A new id.
    pub fn new() -> Self {
        static PREFIX: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = *PREFIX.get_or_init(|| {
            crate::secret::random_bytes::<8>()
                .map(|bytes| u64::from_le_bytes(*bytes))
                .unwrap_or(0x6b73_6f6f_6b68)
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // One allocation: the formatted text becomes the header value's buffer as it is.
        let text = bytes::Bytes::from(format!("{prefix:016x}{:08x}", n as u32));
        Self(HeaderValue::from_maybe_shared(text).unwrap_or(HeaderValue::from_static("unknown")))
    }

    pub fn header(&self) -> &HeaderValue {
        &self.0
    }

    /// The id as text (ids are visible ASCII).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("unknown")
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_applications_id_is_kept_and_a_bad_one_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("app-42"));
        assert_eq!(RequestId::of(&headers).as_str(), "app-42");
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        let made = RequestId::of(&headers);
        assert_eq!(made.as_str().len(), 24);
        assert_ne!(made.as_str(), RequestId::new().as_str());
    }
}
