//! Secrets at rest: the [`Sealer`] every backend seals records with before they are stored and
//! opens them with when they are read.
//!
//! With a keyring (`[store] keyring`), every secret-bearing field of a record (`secret`, each of
//! `previous_secrets`, the legacy `previous_secret`, the client certificate's
//! `client_private_key`; an Ed25519 endpoint's seed is its `secret`)
//! and the response body an idempotency key recorded (it shows a secret) is stored as an
//! `enc1:<key>:…` value ([`crate::keyring`]), encrypted under the primary key. The associated
//! data binds the endpoint's uuid and the field's name (and a previous secret's expiry), so a
//! ciphertext moved to another endpoint or field, or a window extended by hand, does not open;
//! the error names the endpoint and the key, never a value.
//!
//! Records are opened once, when a snapshot is built; the delivery path only ever sees the
//! keyed signers. Each endpoint keeps the sealed text it was read or written with
//! ([`Sealed`]), so rewriting the store file re-encrypts only the endpoints that changed or whose
//! text is not under the primary key.
//!
//! Without a keyring nothing is encrypted (and an `enc1:` value cannot be read). With
//! `[store] require_encryption`, a plaintext secret is refused when read.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::idempotency::StoredIdempotency;
use super::{Endpoint, EndpointRecord, StatsNow};
use crate::keyring::{self, Keyring, OpenError, SealError};
use crate::secret::Secret;

/// How secrets are kept at rest: the keyring in service (reloaded in place) and the policy.
#[derive(Clone, Debug, Default)]
pub struct Sealer {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    keyring: ArcSwapOption<Keyring>,
    require_encryption: bool,
}

/// An endpoint's secret fields as stored, all under one key (what rewriting it reuses).
#[derive(Debug)]
pub struct Sealed {
    key: String,
    secret: String,
    previous: Vec<String>,
    client_key: Option<String>,
}

/// A record as read: the plaintext record and the sealed text it came from.
pub struct Opened {
    pub record: EndpointRecord,
    pub sealed: Option<Arc<Sealed>>,
}

impl Sealer {
    /// No keyring: records are stored and read in plaintext.
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// Seals under `keyring` when there is one; `require_encryption` refuses plaintext reads.
    pub fn new(keyring: Option<Keyring>, require_encryption: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                keyring: ArcSwapOption::from(keyring.map(Arc::new)),
                require_encryption,
            }),
        }
    }

    /// The same keyring without the plaintext refusal (`hooksign store rekey` reads plaintext
    /// records to encrypt them).
    pub fn permissive(&self) -> Self {
        Self {
            inner: Arc::new(Inner {
                keyring: ArcSwapOption::from(self.keyring()),
                require_encryption: false,
            }),
        }
    }

    /// The keyring in service.
    pub fn keyring(&self) -> Option<Arc<Keyring>> {
        self.inner.keyring.load_full()
    }

    /// Swaps in a reloaded keyring: later writes seal under its primary, reads open with its keys.
    pub fn replace_keyring(&self, keyring: Keyring) {
        self.inner.keyring.store(Some(Arc::new(keyring)));
    }

    /// The primary key's name (what writes are sealed under); `None` without a keyring.
    pub fn primary(&self) -> Option<String> {
        self.keyring().map(|k| k.primary().to_owned())
    }

    /// Whether plaintext secrets are refused.
    pub fn requires_encryption(&self) -> bool {
        self.inner.require_encryption
    }

    /// Opens a record as read: every sealed field decrypted (its associated data checked).
    /// On failure the field at fault and why, naming the endpoint (never a value).
    pub fn open_record(
        &self,
        mut record: EndpointRecord,
    ) -> Result<Opened, (&'static str, String)> {
        let keyring = self.keyring();
        let uuid = record.uuid.clone();
        let client_key_sealed = record
            .client_private_key
            .as_ref()
            .is_some_and(|key| keyring::is_sealed(key.expose()));
        let mut keys = Vec::new();
        let mut texts = Vec::new();
        let mut open = |field: &'static str, extra: &str, value: &mut Secret| {
            let text = value.expose();
            if !keyring::is_sealed(text) {
                if self.inner.require_encryption {
                    return Err((
                        field,
                        format!("(endpoint {uuid}) is stored in plaintext, and [store] require_encryption is on: run `hooksign store rekey`"),
                    ));
                }
                keys.push(None);
                return Ok(());
            }
            let ring = keyring
                .as_ref()
                .ok_or_else(|| (field, format!("(endpoint {uuid}) {}", OpenError::NoKeyring)))?;
            let plain = ring
                .open(text, &aad(&uuid, field, extra))
                .map_err(|err| (field, format!("(endpoint {uuid}) {err}")))?;
            let plain = std::str::from_utf8(&plain)
                .map_err(|_| (field, format!("(endpoint {uuid}) does not decrypt to text")))?;
            keys.push(keyring::key_name_of(text).map(str::to_owned));
            texts.push(text.to_owned());
            *value = Secret::new(plain);
            Ok(())
        };
        open("secret", "", &mut record.secret)?;
        let expiries = record.previous_secrets_expire_at.clone();
        for (index, previous) in record.previous_secrets.iter_mut().enumerate() {
            let expiry = expiries.get(index).map_or("", String::as_str);
            open("previous_secrets", expiry, previous)?;
        }
        let legacy = record.previous_secret.is_some();
        if let Some(previous) = record.previous_secret.as_mut() {
            open("previous_secret", "", previous)?;
        }
        // Opened last, so its text is the last one kept.
        if let Some(client_key) = record.client_private_key.as_mut() {
            open("client_private_key", "", client_key)?;
        }
        let client_key = if client_key_sealed { texts.pop() } else { None };
        let first = keys.first().cloned().flatten();
        let uniform = !legacy && first.is_some() && keys.iter().all(|k| *k == first);
        let sealed = match (uniform, first) {
            (true, Some(key)) => {
                let secret = texts.remove(0);
                Some(Arc::new(Sealed {
                    key,
                    secret,
                    previous: texts,
                    client_key,
                }))
            }
            _ => None,
        };
        Ok(Opened { record, sealed })
    }

    /// The record as it is stored: every secret field sealed under the primary key (as it is,
    /// without a keyring).
    pub fn seal_record(&self, record: &EndpointRecord) -> Result<EndpointRecord, SealError> {
        let Some(ring) = self.keyring() else {
            return Ok(record.clone());
        };
        let mut sealed = record.clone();
        let sealed_fields = seal_fields(&ring, record)?;
        sealed.secret = Secret::new(sealed_fields.secret);
        sealed.previous_secrets = sealed_fields
            .previous
            .into_iter()
            .map(Secret::new)
            .collect();
        sealed.client_private_key = sealed_fields.client_key.map(Secret::new);
        if let Some(previous) = &record.previous_secret {
            sealed.previous_secret = Some(Secret::new(ring.seal(
                previous.expose().as_bytes(),
                &aad(&record.uuid, "previous_secret", ""),
            )?));
        }
        Ok(sealed)
    }

    /// Makes sure every endpoint has its sealed text under the primary key (sealing those that
    /// have none, or text under another key); returns how many were sealed now. Call before
    /// [`Sealer::stored_record`].
    pub fn prepare<'a>(
        &self,
        endpoints: impl IntoIterator<Item = &'a Arc<Endpoint>>,
    ) -> Result<usize, SealError> {
        let Some(ring) = self.keyring() else {
            return Ok(0);
        };
        let mut sealed = 0;
        for endpoint in endpoints {
            let current = endpoint.sealed.load();
            if current.as_ref().is_some_and(|s| s.key == ring.primary()) {
                continue;
            }
            let record = endpoint.record_with(&StatsNow::default());
            endpoint
                .sealed
                .store(Some(Arc::new(seal_fields(&ring, &record)?)));
            sealed += 1;
        }
        Ok(sealed)
    }

    /// The endpoint's record as stored, with `stats` as its delivery records: its sealed text
    /// (see [`Sealer::prepare`]) in place of its secrets when the store is encrypted.
    pub fn stored_record(&self, endpoint: &Endpoint, stats: &StatsNow) -> EndpointRecord {
        let mut record = endpoint.record_with(stats);
        if self.keyring().is_none() {
            return record;
        }
        if let Some(sealed) = endpoint.sealed.load_full() {
            record.secret = Secret::new(sealed.secret.clone());
            record.previous_secrets = sealed.previous.iter().cloned().map(Secret::new).collect();
            record.client_private_key = sealed.client_key.clone().map(Secret::new);
        }
        record
    }

    /// The name of the key the endpoint's stored text is under (`None`: plaintext).
    pub fn key_of(endpoint: &Endpoint) -> Option<String> {
        endpoint.sealed.load().as_ref().map(|s| s.key.clone())
    }

    /// An idempotency record as stored: its body (which may show a secret) sealed.
    pub fn seal_idempotency(
        &self,
        mut stored: StoredIdempotency,
    ) -> Result<StoredIdempotency, SealError> {
        if let Some(ring) = self.keyring() {
            let ad = idempotency_aad(&stored);
            stored.body = ring.seal(stored.body.as_bytes(), &ad)?;
        }
        Ok(stored)
    }

    /// An idempotency record as read, its body opened. The message never quotes the body.
    pub fn open_idempotency(
        &self,
        mut stored: StoredIdempotency,
    ) -> Result<StoredIdempotency, String> {
        if !keyring::is_sealed(&stored.body) {
            if self.inner.require_encryption {
                return Err("body: is stored in plaintext, and [store] require_encryption is on: run `hooksign store rekey`".into());
            }
            return Ok(stored);
        }
        let ring = self
            .keyring()
            .ok_or_else(|| format!("body: {}", OpenError::NoKeyring))?;
        let plain = ring
            .open(&stored.body, &idempotency_aad(&stored))
            .map_err(|err| format!("body: {err}"))?;
        stored.body = String::from_utf8(plain.to_vec()).map_err(|_| "body: not text".to_owned())?;
        Ok(stored)
    }

    /// Whether a record as stored (before opening) is all under the primary key: what
    /// `hooksign store rekey` leaves alone.
    pub fn is_current(&self, stored: &EndpointRecord) -> bool {
        let Some(primary) = self.primary() else {
            return true;
        };
        std::iter::once(&stored.secret)
            .chain(&stored.previous_secrets)
            .chain(&stored.previous_secret)
            .chain(&stored.client_private_key)
            .all(|value| keyring::key_name_of(value.expose()) == Some(primary.as_str()))
    }
}

impl Sealed {
    /// The key the text is under.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Seals the secret fields of `record` (current and the list of previous ones).
fn seal_fields(ring: &Keyring, record: &EndpointRecord) -> Result<Sealed, SealError> {
    let secret = ring.seal(
        record.secret.expose().as_bytes(),
        &aad(&record.uuid, "secret", ""),
    )?;
    let mut previous = Vec::with_capacity(record.previous_secrets.len());
    for (index, value) in record.previous_secrets.iter().enumerate() {
        let expiry = record
            .previous_secrets_expire_at
            .get(index)
            .map_or("", String::as_str);
        previous.push(ring.seal(
            value.expose().as_bytes(),
            &aad(&record.uuid, "previous_secrets", expiry),
        )?);
    }
    let client_key = record
        .client_private_key
        .as_ref()
        .map(|key| {
            ring.seal(
                key.expose().as_bytes(),
                &aad(&record.uuid, "client_private_key", ""),
            )
        })
        .transpose()?;
    Ok(Sealed {
        key: ring.primary().to_owned(),
        secret,
        previous,
        client_key,
    })
}

/// The associated data of a field: the format, the endpoint, the field and (for a previous
/// secret) its expiry.
fn aad(uuid: &str, field: &str, extra: &str) -> Vec<u8> {
    format!(
        "hooksign/secret/v1\0{}\0{field}\0{extra}",
        uuid.to_ascii_lowercase()
    )
    .into_bytes()
}

fn idempotency_aad(stored: &StoredIdempotency) -> Vec<u8> {
    format!(
        "hooksign/idempotency/v1\0{}\0{}\0{}",
        stored.company, stored.fingerprint, stored.key
    )
    .into_bytes()
}

/// Why `hooksign store rekey` stopped. What it re-encrypted before is kept (each batch is one
/// atomic write); a rerun finishes the job.
#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error("no [store] keyring is configured: there is no key to encrypt under")]
    NoKeyring,
    #[error(transparent)]
    Load(#[from] super::LoadError),
    #[error(transparent)]
    Write(#[from] super::WriteError),
    #[error("gave up after {0} attempts: other writers kept changing the store meanwhile; rerun")]
    Contended(usize),
}

/// How many times rekey reads again after a concurrent change before giving up.
pub const REKEY_ATTEMPTS: usize = 10;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::Scheme;
    use crate::store::Snapshot;

    fn record(uuid: &str) -> EndpointRecord {
        EndpointRecord {
            uuid: uuid.into(),
            company: "550e8400-e29b-41d4-a716-446655440000".into(),
            url: "https://example.com/hooks".into(),
            events: vec!["*".into()],
            description: String::new(),
            status: "active".into(),
            scheme: "stripe".into(),
            secret: Scheme::Stripe.generate_secret().unwrap(),
            previous_secrets: vec![Scheme::Stripe.generate_secret().unwrap()],
            previous_secrets_expire_at: vec!["2999-01-01T00:00:00Z".into()],
            previous_secret: None,
            previous_secret_expires_at: None,
            created_at: None,
            updated_at: None,
            deliveries_count: 0,
            last_delivery_at: None,
            last_delivery_status: None,
            consecutive_failures: 0,
            client_certificate: Some(CLIENT.0.clone()),
            client_private_key: Some(Secret::new(CLIENT.1.clone())),
        }
    }

    /// A real client certificate and key (PEM), made once.
    static CLIENT: std::sync::LazyLock<(String, String)> = std::sync::LazyLock::new(|| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    });

    const A: &str = "a1b2c3d4-e5f6-7890-abcd-ef1234567890";
    const B: &str = "b1b2c3d4-e5f6-7890-abcd-ef1234567890";

    fn sealer(name: &str, key: u8, require: bool) -> Sealer {
        Sealer::new(Some(Keyring::single(name, [key; 32])), require)
    }

    #[test]
    fn records_round_trip_and_show_no_secret() {
        let sealer = sealer("k", 1, false);
        let plain = record(A);
        let sealed = sealer.seal_record(&plain).unwrap();
        let text = serde_json::to_string(&sealed).unwrap();
        assert!(!text.contains(&plain.secret.expose()[6..]), "{text}");
        assert!(
            !text.contains(&plain.previous_secrets[0].expose()[6..]),
            "{text}"
        );
        let key_line = CLIENT.1.lines().nth(1).unwrap();
        assert!(!text.contains(key_line), "{text}");
        assert!(sealed
            .client_private_key
            .as_ref()
            .is_some_and(|key| keyring::is_sealed(key.expose())));
        assert!(sealer.is_current(&sealed));
        assert!(!sealer.is_current(&plain));
        let opened = sealer.open_record(sealed).unwrap();
        assert_eq!(opened.record, plain);
        assert_eq!(opened.sealed.unwrap().key(), "k");
    }

    #[test]
    fn a_value_moved_to_another_record_or_window_does_not_open() {
        let sealer = sealer("k", 1, false);
        let a = sealer.seal_record(&record(A)).unwrap();
        let mut b = sealer.seal_record(&record(B)).unwrap();
        b.secret = a.secret.clone();
        let (field, why) = sealer.open_record(b).map(|_| ()).unwrap_err();
        assert_eq!(field, "secret");
        assert!(
            why.contains(B) && why.contains("does not decrypt under key \"k\""),
            "{why}"
        );
        // A window extended by hand: the expiry is bound too.
        let mut longer = a.clone();
        longer.previous_secrets_expire_at = vec!["3999-01-01T00:00:00Z".into()];
        assert_eq!(
            sealer.open_record(longer).map(|_| ()).unwrap_err().0,
            "previous_secrets"
        );
        // The client key moved to another endpoint.
        let mut moved = sealer.seal_record(&record(B)).unwrap();
        moved.client_private_key = a.client_private_key.clone();
        assert_eq!(
            sealer.open_record(moved).map(|_| ()).unwrap_err().0,
            "client_private_key"
        );
        // The previous secret moved into the current one's place.
        let mut swapped = a;
        swapped.secret = swapped.previous_secrets[0].clone();
        assert!(sealer.open_record(swapped).is_err());
    }

    #[test]
    fn policy_and_missing_keys_are_explained() {
        let plain = record(A);
        let strict = sealer("k", 1, true);
        let (_, why) = strict.open_record(plain.clone()).map(|_| ()).unwrap_err();
        assert!(why.contains("require_encryption"), "{why}");
        assert!(strict.permissive().open_record(plain.clone()).is_ok());
        let sealed = strict.seal_record(&plain).unwrap();
        let (_, why) = Sealer::plaintext()
            .open_record(sealed.clone())
            .map(|_| ())
            .unwrap_err();
        assert!(why.contains("no [store] keyring"), "{why}");
        let (_, why) = sealer("other", 1, false)
            .open_record(sealed)
            .map(|_| ())
            .unwrap_err();
        assert!(
            why.contains("key \"k\", which the keyring does not hold"),
            "{why}"
        );
    }

    #[test]
    fn a_rewrite_seals_only_what_is_not_under_the_primary() {
        let old = sealer("old", 1, false);
        let records: Vec<_> = [A, B]
            .iter()
            .map(|uuid| old.seal_record(&record(uuid)).unwrap())
            .collect();
        let text = crate::store::file::render(&records);
        let snapshot: Snapshot =
            crate::store::file::parse_store_with(&text, "t.toml", None, &old).unwrap();
        assert_eq!(
            old.prepare(&snapshot.endpoints).unwrap(),
            0,
            "reused as read"
        );
        // The same keys with a new primary: both are re-sealed, once.
        let both = Keyring::parse(
            &format!(
                "primary = \"new\"\n[keys]\n\"old\" = {:?}\n\"new\" = {:?}\n",
                base64_of([1; 32]),
                base64_of([2; 32])
            ),
            "k",
        )
        .unwrap();
        old.replace_keyring(both);
        assert_eq!(old.prepare(&snapshot.endpoints).unwrap(), 2);
        assert_eq!(old.prepare(&snapshot.endpoints).unwrap(), 0);
        let endpoint = snapshot.endpoints().next().unwrap();
        let stored = old.stored_record(endpoint, &StatsNow::default());
        assert_eq!(keyring::key_name_of(stored.secret.expose()), Some("new"));
    }

    fn base64_of(bytes: [u8; 32]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}
