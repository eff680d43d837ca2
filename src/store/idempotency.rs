//! Idempotency keys for admin writes (Stripe's semantics): the answer of a write made under a
//! key is recorded with that write, durably, in the same store write, and replayed to a retry
//! with the same key and the same request for [`TTL`].
//!
//! A key is scoped to its company. The request is identified by a fingerprint (SHA-256 of the
//! method, the path and the body), so the same key with another request is refused. The recorded
//! body may hold a secret (create and rotate show it in full): [`Recorded`] zeroizes it and never
//! shows it in `Debug`, and it is kept only as long as the key is.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{format_time, parse_time};

/// How long a key is remembered.
pub const TTL: Duration = Duration::from_secs(24 * 3600);

/// The longest key accepted (Stripe's limit).
pub const MAX_KEY_LEN: usize = 255;

/// A client's `Idempotency-Key`, scoped to its company.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    pub company: Uuid,
    pub key: String,
}

/// The answer recorded for a key.
pub struct Recorded {
    pub key: IdempotencyKey,
    /// SHA-256 of the request (see [`fingerprint`]).
    pub fingerprint: [u8; 32],
    pub status: u16,
    /// The response body as sent (JSON); may hold a secret.
    pub body: Zeroizing<String>,
    pub created_at: OffsetDateTime,
}

impl Recorded {
    /// The answer recorded now.
    pub fn now(key: IdempotencyKey, fingerprint: [u8; 32], status: u16, body: String) -> Arc<Self> {
        let now = OffsetDateTime::now_utc();
        Arc::new(Self {
            key,
            fingerprint,
            status,
            body: Zeroizing::new(body),
            created_at: now.replace_nanosecond(0).unwrap_or(now),
        })
    }

    /// Whether the key is still remembered at `now`.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        now - self.created_at < TTL
    }

    /// The stored form (store file table, etcd value).
    pub fn stored(&self) -> StoredIdempotency {
        StoredIdempotency {
            company: self.key.company.to_string(),
            key: self.key.key.clone(),
            fingerprint: hex::encode(self.fingerprint),
            status: self.status,
            body: self.body.to_string(),
            created_at: format_time(self.created_at),
        }
    }
}

impl fmt::Debug for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorded")
            .field("company", &self.key.company)
            .field("status", &self.status)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// One recorded key as stored: `[[idempotency]]` in the store file, a JSON value in etcd.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoredIdempotency {
    pub company: String,
    pub key: String,
    pub fingerprint: String,
    pub status: u16,
    pub body: String,
    pub created_at: String,
}

impl StoredIdempotency {
    /// Parses the stored form; what is wrong otherwise (never quoting the body).
    pub fn parse(self) -> Result<Arc<Recorded>, String> {
        let company = Uuid::parse_str(&self.company).map_err(|_| "company: not a uuid")?;
        if self.key.is_empty() || self.key.len() > MAX_KEY_LEN {
            return Err(format!("key: must be 1 to {MAX_KEY_LEN} characters"));
        }
        let mut fingerprint = [0u8; 32];
        hex::decode_to_slice(&self.fingerprint, &mut fingerprint)
            .map_err(|_| "fingerprint: not 64 hex digits")?;
        let created_at = parse_time(Some(&self.created_at))
            .map_err(|why| format!("created_at: {why}"))?
            .ok_or("created_at: missing")?;
        Ok(Arc::new(Recorded {
            key: IdempotencyKey {
                company,
                key: self.key,
            },
            fingerprint,
            status: self.status,
            body: Zeroizing::new(self.body),
            created_at,
        }))
    }
}

impl fmt::Debug for StoredIdempotency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredIdempotency")
            .field("company", &self.company)
            .finish_non_exhaustive()
    }
}

/// The keys recorded in a snapshot.
#[derive(Debug, Default, Clone)]
pub struct IdempotencyLog {
    keys: HashMap<IdempotencyKey, Arc<Recorded>>,
}

impl IdempotencyLog {
    /// The live answer recorded for `key`.
    pub fn find(&self, key: &IdempotencyKey) -> Option<Arc<Recorded>> {
        self.keys
            .get(key)
            .filter(|recorded| recorded.is_live(OffsetDateTime::now_utc()))
            .cloned()
    }

    /// Records `recorded` and forgets keys past their [`TTL`].
    pub fn insert(&mut self, recorded: Arc<Recorded>) {
        let now = OffsetDateTime::now_utc();
        self.keys.retain(|_, kept| kept.is_live(now));
        self.keys.insert(recorded.key.clone(), recorded);
    }

    /// A log of `recorded` (live ones only).
    pub fn from_recorded(recorded: impl IntoIterator<Item = Arc<Recorded>>) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            keys: recorded
                .into_iter()
                .filter(|r| r.is_live(now))
                .map(|r| (r.key.clone(), r))
                .collect(),
        }
    }

    /// Every live key, oldest first (for writing the store file).
    pub fn live(&self) -> Vec<&Arc<Recorded>> {
        let now = OffsetDateTime::now_utc();
        let mut live: Vec<_> = self.keys.values().filter(|r| r.is_live(now)).collect();
        live.sort_by(|a, b| {
            (a.created_at, &a.key.key, a.key.company).cmp(&(
                b.created_at,
                &b.key.key,
                b.key.company,
            ))
        });
        live
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The fingerprint of a request: SHA-256 over its method, path and body.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [method.as_bytes(), path.as_bytes()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update(body);
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> IdempotencyKey {
        IdempotencyKey {
            company: Uuid::nil(),
            key: text.into(),
        }
    }

    #[test]
    fn recorded_keys_round_trip_and_expire() {
        let recorded = Recorded::now(key("k1"), [7; 32], 201, "{\"secret\":\"whsec_x\"}".into());
        let back = recorded.stored().parse().unwrap();
        assert_eq!(back.fingerprint, [7; 32]);
        assert_eq!(back.status, 201);
        assert_eq!(&*back.body, "{\"secret\":\"whsec_x\"}");
        assert!(!format!("{back:?}").contains("whsec_x"));

        let mut log = IdempotencyLog::default();
        log.insert(back);
        assert!(log.find(&key("k1")).is_some());
        assert!(log.find(&key("k2")).is_none());

        let mut old = recorded.stored();
        old.created_at = "2020-01-01T00:00:00Z".into();
        let log = IdempotencyLog::from_recorded([old.parse().unwrap()]);
        assert!(
            log.find(&key("k1")).is_none(),
            "a key older than 24 h is forgotten"
        );
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let a = fingerprint("POST", "/api/v1/webhooks", b"{}");
        assert_eq!(a, fingerprint("POST", "/api/v1/webhooks", b"{}"));
        assert_ne!(a, fingerprint("POST", "/api/v1/webhooks", b"{ }"));
        assert_ne!(a, fingerprint("POST", "/api/v1/webhook", b"s{}"));
    }
}
