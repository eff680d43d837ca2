//! Webhook signing: the schemes an endpoint can be signed with, and the per-request signer.
//!
//! Keys are prepared once, when a snapshot is built ([`EndpointSigner::new`] keys the HMAC or
//! decodes the Ed25519 seed); each delivery clones that keyed state ([`EndpointSigner::begin`]),
//! feeds the signed prefix (`{id}.{timestamp}.` or `{t}.`) and then the body chunk by chunk as it
//! arrives, and finishes into the set of headers the scheme sends ([`BodySigner::finish`]).
//! Each scheme's file holds pure functions of key, id, timestamp and body, so their tests check
//! published vectors.
//!
//! During a rotation overlap window an endpoint signs with its new key and its previous one (new
//! first); the previous key stops being used at its expiry instant, checked per delivery against
//! the delivery's own timestamp. `storno` and `github` receivers compare one value, so those
//! schemes refuse a previous key.

pub mod ed25519;
pub mod github;
pub mod standard_webhooks;
pub mod storno;
pub mod stripe;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use hmac::{Hmac, Mac as _};
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

use crate::secret::{RandomError, Secret, SECRET_PREFIX};

/// HMAC-SHA256, the MAC of every HMAC scheme.
pub type HmacSha256 = Hmac<Sha256>;

/// The longest message id accepted from `X-Webhook-Message-Id`.
pub const MAX_MESSAGE_ID_LEN: usize = 255;

/// How an endpoint's deliveries are signed (`scheme` in the store file and the API).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// `X-Storno-Signature`: lowercase hex HMAC-SHA256 of the body, keyed by the whole secret.
    Storno,
    /// Standard Webhooks (Svix): `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,…`.
    StandardWebhooks,
    /// `Stripe-Signature: t=…,v1=…`.
    Stripe,
    /// `X-Hub-Signature-256: sha256=…`.
    Github,
    /// Standard Webhooks headers signed with Ed25519: `webhook-signature: v1a,…`.
    StandardWebhooksEd25519,
}

/// A scheme name that hooksign does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown signing scheme (known: storno, standard-webhooks, stripe, github, standard-webhooks-ed25519)")]
pub struct UnknownScheme(pub String);

/// Why a secret cannot key its scheme. The message describes the expected format and never
/// includes the secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    #[error("must be whsec_ followed by 64 lowercase hex characters")]
    Hex,
    #[error(
        "must be whsec_ followed by standard base64 (with padding, not hex) of 24 to 64 bytes"
    )]
    StandardWebhooks,
    #[error(
        "must be whsk_ followed by the standard base64 (with padding) of a 32-byte Ed25519 seed"
    )]
    Ed25519,
    #[error("must be whpk_ followed by the standard base64 (with padding) of a 32-byte Ed25519 public key")]
    PublicKey,
    #[error("the {0} scheme allows no previous secret: its receivers compare one signature")]
    NoOverlap(Scheme),
    #[error("at most {MAX_PREVIOUS_KEYS} previous secrets sign at once")]
    TooManyPrevious,
}

/// Whether `name` may not be the `storno` scheme's signature header (`[signing] header`): a
/// hop-by-hop header (never forwarded), `Host`, `Content-Length`, `Content-Type`, hooksign's own
/// headers (`X-Webhook-*`, `X-Hooksign-*`, `X-Request-Id`), or another scheme's signature headers.
/// Any of these would drop the signature or clobber a header the delivery needs.
pub fn is_reserved_header(name: &HeaderName) -> bool {
    const RESERVED: [&str; 17] = [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "x-request-id",
        "traceparent",
        "tracestate",
        "authorization",
        "stripe-signature",
        "x-hub-signature",
        "x-hub-signature-256",
    ];
    let name = name.as_str();
    RESERVED.contains(&name)
        || ["proxy-", "x-webhook-", "x-hooksign-", "webhook-"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
}

impl Scheme {
    /// A new secret in the format `scheme` stores: `whsec_` and 64 hex characters for `storno`,
    /// `stripe` and `github`; `whsec_` and the standard base64 (with padding) of 32 random bytes
    /// for `standard-webhooks`; `whsk_` and the base64 of a 32-byte Ed25519 seed for
    /// `standard-webhooks-ed25519`. Every byte comes from the OS CSPRNG.
    pub fn generate_secret(self) -> Result<Secret, RandomError> {
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine as _;

        match self {
            Scheme::StandardWebhooks => {
                let bytes =
                    crate::secret::random_bytes::<{ standard_webhooks::GENERATED_KEY_BYTES }>()?;
                Ok(Secret::new(format!(
                    "{}{}",
                    SECRET_PREFIX,
                    STANDARD.encode(bytes.as_slice())
                )))
            }
            Scheme::StandardWebhooksEd25519 => {
                let seed = crate::secret::random_bytes::<32>()?;
                Ok(ed25519::encode_private(&seed))
            }
            _ => Secret::generate(),
        }
    }

    /// Every scheme.
    pub const ALL: [Scheme; 5] = [
        Self::Storno,
        Self::StandardWebhooks,
        Self::Stripe,
        Self::Github,
        Self::StandardWebhooksEd25519,
    ];

    /// The name used in the store file and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Storno => "storno",
            Self::StandardWebhooks => "standard-webhooks",
            Self::Stripe => "stripe",
            Self::Github => "github",
            Self::StandardWebhooksEd25519 => "standard-webhooks-ed25519",
        }
    }

    /// Whether deliveries may carry a previous key's signature too (a rotation overlap window).
    pub fn allows_overlap(self) -> bool {
        !matches!(self, Self::Storno | Self::Github)
    }

    /// Whether the signed string includes a message id (`webhook-id`).
    pub fn uses_message_id(self) -> bool {
        matches!(self, Self::StandardWebhooks | Self::StandardWebhooksEd25519)
    }

    /// Checks that `secret` has this scheme's format (as hooksign stores it).
    pub fn check_secret(self, secret: &Secret) -> Result<(), KeyError> {
        match self {
            Self::Storno | Self::Stripe | Self::Github => {
                if crate::secret::is_hex_secret(secret.expose()) {
                    Ok(())
                } else {
                    Err(KeyError::Hex)
                }
            }
            Self::StandardWebhooks => standard_webhooks::key_bytes(secret).map(drop),
            Self::StandardWebhooksEd25519 => ed25519::signing_key(secret).map(drop),
        }
    }
}

impl FromStr for Scheme {
    type Err = UnknownScheme;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|scheme| scheme.as_str() == name)
            .ok_or_else(|| UnknownScheme(name.to_owned()))
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === MessageId, Delivery ===

/// A delivery's `webhook-id`: 1 to 255 visible ASCII characters, no spaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageId(HeaderValue);

/// The `X-Webhook-Message-Id` the application sent cannot be a `webhook-id`.
#[derive(Debug, thiserror::Error)]
#[error("a message id must be 1 to {MAX_MESSAGE_ID_LEN} visible ASCII characters without spaces")]
pub struct InvalidMessageId;

impl MessageId {
    /// Takes the application's id (`X-Webhook-Message-Id`), stable across its retries.
    pub fn parse(value: &[u8]) -> Result<Self, InvalidMessageId> {
        let valid = !value.is_empty()
            && value.len() <= MAX_MESSAGE_ID_LEN
            && value.iter().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(InvalidMessageId);
        }
        HeaderValue::from_bytes(value)
            .map(Self)
            .map_err(|_| InvalidMessageId)
    }

    /// A new unique id: `msg_` and 32 lowercase hex digits of a random (v4) uuid.
    pub fn generate() -> Self {
        let text = format!("msg_{}", uuid::Uuid::new_v4().simple());
        Self(HeaderValue::try_from(text).expect("msg_ and hex digits are valid header bytes"))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        self.0
            .to_str()
            .expect("a message id holds visible ASCII only (checked when made)")
    }
}

/// What a delivery's signature covers besides the body.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// `webhook-id` (used by the Standard Webhooks schemes only).
    pub id: MessageId,
    /// Unix seconds: the delivery's own time (`webhook-timestamp`, Stripe's `t=`). Also the
    /// instant a previous key's expiry is checked against.
    pub timestamp: u64,
}

impl Delivery {
    /// A delivery for `scheme` at `timestamp`: `id` when given, else a new id when the scheme
    /// signs one (the other schemes carry a placeholder that is never sent).
    pub fn new(scheme: Scheme, id: Option<MessageId>, timestamp: u64) -> Self {
        let id = match id {
            Some(id) => id,
            None if scheme.uses_message_id() => MessageId::generate(),
            None => MessageId(HeaderValue::from_static("unused")),
        };
        Self { id, timestamp }
    }

    /// A delivery for `scheme` at the current time.
    pub fn now(scheme: Scheme, id: Option<MessageId>) -> Self {
        Self::new(scheme, id, unix_now())
    }
}

/// The current time in unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

// === EndpointSigner ===

/// An endpoint's signing keys (current, and previous during an overlap window), keyed once per
/// snapshot.
#[derive(Clone)]
pub struct EndpointSigner {
    scheme: Scheme,
    current: Key,
    /// The previous keys of overlap windows, newest first (empty for most endpoints: an empty
    /// `Vec` allocates nothing).
    previous: Vec<Previous>,
}

/// The most previous keys an endpoint holds at once (each with its own window).
pub const MAX_PREVIOUS_KEYS: usize = 10;

#[derive(Clone)]
struct Previous {
    key: Key,
    /// Unix seconds; used while a delivery's timestamp is before it.
    expires_at: u64,
}

#[derive(Clone)]
enum Key {
    Mac(HmacSha256),
    Ed25519(Arc<SigningKey>),
}

impl Key {
    fn new(scheme: Scheme, secret: &Secret) -> Result<Self, KeyError> {
        scheme.check_secret(secret)?;
        Ok(match scheme {
            Scheme::Storno => Self::Mac(storno::key(secret)),
            Scheme::Stripe => Self::Mac(stripe::key(secret)),
            Scheme::Github => Self::Mac(github::key(secret)),
            Scheme::StandardWebhooks => Self::Mac(standard_webhooks::key(secret)?),
            Scheme::StandardWebhooksEd25519 => {
                Self::Ed25519(Arc::new(ed25519::signing_key(secret)?))
            }
        })
    }

    fn begin(&self, scheme: Scheme, delivery: &Delivery) -> State {
        match self {
            Self::Mac(key) => State::Mac(match scheme {
                Scheme::StandardWebhooks => {
                    standard_webhooks::begin(key, delivery.id.as_str(), delivery.timestamp)
                }
                Scheme::Stripe => stripe::begin(key, delivery.timestamp),
                _ => key.clone(),
            }),
            Self::Ed25519(key) => State::Ed25519(Arc::clone(key)),
        }
    }
}

impl EndpointSigner {
    /// Keys the signer for `scheme` with `secret`, checking the secret's format.
    pub fn new(scheme: Scheme, secret: &Secret) -> Result<Self, KeyError> {
        Ok(Self {
            scheme,
            current: Key::new(scheme, secret)?,
            previous: Vec::new(),
        })
    }

    /// Adds a previous key of an overlap window (after those added before), used for
    /// deliveries before `expires_at` (unix seconds). Refused for schemes that allow no overlap,
    /// and past [`MAX_PREVIOUS_KEYS`].
    pub fn with_previous(mut self, secret: &Secret, expires_at: u64) -> Result<Self, KeyError> {
        if !self.scheme.allows_overlap() {
            return Err(KeyError::NoOverlap(self.scheme));
        }
        if self.previous.len() >= MAX_PREVIOUS_KEYS {
            return Err(KeyError::TooManyPrevious);
        }
        self.previous.push(Previous {
            key: Key::new(self.scheme, secret)?,
            expires_at,
        });
        Ok(self)
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The Ed25519 public key (`whpk_…`), for the Ed25519 scheme.
    pub fn public_key(&self) -> Option<String> {
        match &self.current {
            Key::Ed25519(key) => Some(ed25519::public_key(key)),
            Key::Mac(_) => None,
        }
    }

    /// Whether a delivery at `timestamp` (unix seconds) is also signed with the previous key.
    pub fn overlap_open_at(&self, timestamp: u64) -> bool {
        self.previous
            .iter()
            .any(|previous| timestamp < previous.expires_at)
    }

    /// Starts signing one delivery: clones of the keyed state with the signed prefix fed.
    pub fn begin(&self, delivery: &Delivery) -> BodySigner {
        let previous = self
            .previous
            .iter()
            .filter(|previous| delivery.timestamp < previous.expires_at)
            .map(|previous| previous.key.begin(self.scheme, delivery))
            .collect();
        BodySigner {
            scheme: self.scheme,
            delivery: delivery.clone(),
            current: self.current.begin(self.scheme, delivery),
            previous,
            chunks: Vec::new(),
        }
    }

    /// Signs a whole body at once: the headers a delivery carries (for the CLI and tests).
    pub fn sign(&self, delivery: &Delivery, storno_header: &HeaderName, body: Bytes) -> HeaderMap {
        let mut signer = self.begin(delivery);
        signer.update(&body);
        let mut headers = HeaderMap::new();
        signer.finish(storno_header, &mut headers);
        headers
    }
}

impl fmt::Debug for EndpointSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointSigner")
            .field("scheme", &self.scheme)
            .field("previous_keys", &self.previous.len())
            .finish_non_exhaustive()
    }
}

// === BodySigner ===

/// The signature of one delivery in progress.
pub struct BodySigner {
    scheme: Scheme,
    delivery: Delivery,
    current: State,
    /// The previous keys whose windows are open at the delivery's timestamp, newest first.
    previous: Vec<State>,
    /// The body's chunks, kept (by reference count, not copied) for Ed25519 only.
    chunks: Vec<Bytes>,
}

enum State {
    Mac(HmacSha256),
    Ed25519(Arc<SigningKey>),
}

impl BodySigner {
    /// Feeds the next chunk of the body, in order.
    pub fn update(&mut self, chunk: &Bytes) {
        if self.scheme == Scheme::StandardWebhooksEd25519 {
            self.chunks.push(chunk.clone());
            return;
        }
        for state in std::iter::once(&mut self.current).chain(self.previous.iter_mut()) {
            if let State::Mac(mac) = state {
                mac.update(chunk);
            }
        }
    }

    /// Whether this delivery carries a previous key's signature too.
    pub fn overlapping(&self) -> bool {
        !self.previous.is_empty()
    }

    /// Finishes into the scheme's headers, replacing any of the same name in `headers`.
    /// `storno_header` is the `storno` scheme's configured header name (`[signing] header`).
    pub fn finish(self, storno_header: &HeaderName, headers: &mut HeaderMap) {
        let Self {
            scheme,
            delivery,
            current,
            previous,
            chunks,
        } = self;
        let states = std::iter::once(current).chain(previous);
        let value = match scheme {
            // The one-key schemes: the hex is written on the stack and copied once, into the
            // header value (no String, no Vec).
            Scheme::Storno => {
                let tag = states.map(mac_tag).next().unwrap_or_default();
                let mut text = [0u8; 64];
                hex_into(&tag, &mut text);
                headers.insert(storno_header, header_bytes(&text));
                return;
            }
            Scheme::Github => {
                let tag = states.map(mac_tag).next().unwrap_or_default();
                let mut text =
                    *b"sha256=0000000000000000000000000000000000000000000000000000000000000000";
                hex_into(&tag, &mut text[7..]);
                headers.insert(github::X_HUB_SIGNATURE_256, header_bytes(&text));
                return;
            }
            Scheme::Stripe => {
                let tags: Vec<Tag> = states.map(mac_tag).collect();
                let tags: Vec<&[u8]> = tags.iter().map(|tag| &tag[..]).collect();
                headers.insert(
                    stripe::STRIPE_SIGNATURE,
                    header_value(stripe::header(delivery.timestamp, &tags)),
                );
                return;
            }
            Scheme::StandardWebhooks => states
                .map(|state| standard_webhooks::entry(&mac_tag(state)))
                .collect::<Vec<_>>()
                .join(" "),
            Scheme::StandardWebhooksEd25519 => {
                let message = ed25519::message(
                    delivery.id.as_str(),
                    delivery.timestamp,
                    chunks.iter().map(|c| c.as_ref()),
                );
                states
                    .filter_map(|state| match state {
                        State::Ed25519(key) => Some(ed25519::entry(&key, &message)),
                        State::Mac(_) => None,
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        headers.insert(standard_webhooks::WEBHOOK_ID, delivery.id.0);
        headers.insert(
            standard_webhooks::WEBHOOK_TIMESTAMP,
            HeaderValue::from(delivery.timestamp),
        );
        headers.insert(standard_webhooks::WEBHOOK_SIGNATURE, header_value(value));
    }
}

impl fmt::Debug for BodySigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodySigner")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// An HMAC keyed with `key`.
pub(crate) fn keyed(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// A finished HMAC-SHA256 tag.
type Tag = [u8; 32];

/// The tag of a MAC state, on the stack. Only the HMAC schemes call it, and their states are
/// always `Mac`; an Ed25519 state has no tag.
fn mac_tag(state: State) -> Tag {
    match state {
        State::Mac(mac) => mac.finalize().into_bytes().into(),
        State::Ed25519(_) => [0; 32],
    }
}

/// Writes `tag` as lowercase hex into `out` (64 bytes).
fn hex_into(tag: &Tag, out: &mut [u8]) {
    hex::encode_to_slice(tag, out).expect("64 bytes hold the hex of a 32-byte tag");
}

fn header_bytes(text: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(text).expect("hex and separators are valid header bytes")
}

fn header_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).expect("hex, base64, digits and separators are valid header bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORNO_HEADER: HeaderName = HeaderName::from_static("x-storno-signature");

    fn delivery(timestamp: u64) -> Delivery {
        Delivery {
            id: MessageId::parse(b"msg_p5jXN8AQM9LWM0D4loKWxJek").unwrap(),
            timestamp,
        }
    }

    fn streamed(signer: &EndpointSigner, delivery: &Delivery, body: &[u8]) -> HeaderMap {
        let mut body_signer = signer.begin(delivery);
        for chunk in body.chunks(5) {
            body_signer.update(&Bytes::copy_from_slice(chunk));
        }
        let mut headers = HeaderMap::new();
        body_signer.finish(&STORNO_HEADER, &mut headers);
        headers
    }

    fn text<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
        headers[name].to_str().unwrap()
    }

    #[test]
    fn every_scheme_streams_to_its_pure_function() {
        let body = br#"{"type":"invoice.created","data":{"id":42,"note":"chunked"}}"#;
        let d = delivery(1_700_000_000);
        for scheme in Scheme::ALL {
            let secret = scheme.generate_secret().unwrap();
            let signer = EndpointSigner::new(scheme, &secret).unwrap();
            let headers = streamed(&signer, &d, body);
            let id = d.id.as_str();
            match scheme {
                Scheme::Storno => {
                    assert_eq!(
                        text(&headers, "x-storno-signature"),
                        storno::sign(&secret, body)
                    );
                    assert_eq!(headers.len(), 1);
                }
                Scheme::Github => {
                    assert_eq!(
                        text(&headers, "x-hub-signature-256"),
                        github::sign(&secret, body)
                    );
                    assert_eq!(headers.len(), 1);
                }
                Scheme::Stripe => assert_eq!(
                    text(&headers, "stripe-signature"),
                    format!(
                        "t=1700000000,v1={}",
                        stripe::sign(&secret, 1_700_000_000, body)
                    )
                ),
                Scheme::StandardWebhooks => {
                    let key = standard_webhooks::key_bytes(&secret).unwrap();
                    assert_eq!(
                        text(&headers, "webhook-signature"),
                        standard_webhooks::sign(&key, id, 1_700_000_000, body)
                    );
                }
                Scheme::StandardWebhooksEd25519 => {
                    let key = ed25519::signing_key(&secret).unwrap();
                    assert_eq!(
                        text(&headers, "webhook-signature"),
                        ed25519::sign(&key, id, 1_700_000_000, body)
                    );
                    assert!(signer.public_key().unwrap().starts_with("whpk_"));
                }
            }
            if scheme.uses_message_id() {
                assert_eq!(text(&headers, "webhook-id"), id);
                assert_eq!(text(&headers, "webhook-timestamp"), "1700000000");
            }
        }
    }

    #[test]
    fn the_previous_key_signs_second_until_its_expiry_instant() {
        let body = b"{\"rotated\":true}";
        for scheme in [
            Scheme::StandardWebhooks,
            Scheme::Stripe,
            Scheme::StandardWebhooksEd25519,
        ] {
            let new = scheme.generate_secret().unwrap();
            let old = scheme.generate_secret().unwrap();
            let alone = EndpointSigner::new(scheme, &new).unwrap();
            let old_alone = EndpointSigner::new(scheme, &old).unwrap();
            let both = alone.clone().with_previous(&old, 1_000).unwrap();
            let name = if scheme == Scheme::Stripe {
                "stripe-signature"
            } else {
                "webhook-signature"
            };
            let single = |signer: &EndpointSigner, ts| {
                let headers = streamed(signer, &delivery(ts), body);
                let value = text(&headers, name).to_owned();
                match scheme {
                    Scheme::Stripe => value.split_once(",v1=").unwrap().1.to_owned(),
                    _ => value,
                }
            };
            let during = streamed(&both, &delivery(999), body);
            let expected = match scheme {
                Scheme::Stripe => format!(
                    "t=999,v1={},v1={}",
                    single(&alone, 999),
                    single(&old_alone, 999)
                ),
                _ => format!("{} {}", single(&alone, 999), single(&old_alone, 999)),
            };
            assert_eq!(text(&during, name), expected, "{scheme}");
            assert!(both.overlap_open_at(999));
            // At the expiry second and after, only the new key signs.
            for ts in [1_000, 1_001] {
                let after = streamed(&both, &delivery(ts), body);
                let alone_headers = streamed(&alone, &delivery(ts), body);
                assert_eq!(after, alone_headers, "{scheme} at {ts}");
                assert!(!both.overlap_open_at(ts));
            }
        }
    }

    #[test]
    fn storno_and_github_refuse_a_previous_key() {
        for scheme in [Scheme::Storno, Scheme::Github] {
            let secret = scheme.generate_secret().unwrap();
            let signer = EndpointSigner::new(scheme, &secret).unwrap();
            assert_eq!(
                signer.with_previous(&secret, u64::MAX).err(),
                Some(KeyError::NoOverlap(scheme))
            );
        }
    }

    #[test]
    fn secrets_must_fit_the_scheme() {
        let hex = Scheme::Storno.generate_secret().unwrap();
        let b64 = Scheme::StandardWebhooks.generate_secret().unwrap();
        let ed = Scheme::StandardWebhooksEd25519.generate_secret().unwrap();
        assert_eq!(Scheme::Stripe.check_secret(&b64), Err(KeyError::Hex));
        assert_eq!(Scheme::Github.check_secret(&ed), Err(KeyError::Hex));
        assert_eq!(
            Scheme::StandardWebhooks.check_secret(&hex),
            Err(KeyError::StandardWebhooks)
        );
        assert_eq!(
            Scheme::StandardWebhooksEd25519.check_secret(&b64),
            Err(KeyError::Ed25519)
        );
        for err in [KeyError::Hex, KeyError::StandardWebhooks, KeyError::Ed25519] {
            assert!(!err.to_string().contains(hex.expose()));
        }
    }

    #[test]
    fn message_ids_are_checked_and_generated_unique() {
        assert!(MessageId::parse(b"msg_abc-123.x").is_ok());
        for bad in [
            &b""[..],
            b"with space",
            b"tab\there",
            "é".as_bytes(),
            &[b'a'; 256],
        ] {
            assert!(MessageId::parse(bad).is_err(), "{bad:?}");
        }
        let a = MessageId::generate();
        assert!(a.as_str().starts_with("msg_") && a.as_str().len() == 36);
        assert_ne!(a, MessageId::generate());
    }

    #[test]
    fn scheme_names_round_trip() {
        for scheme in Scheme::ALL {
            assert_eq!(scheme.as_str().parse::<Scheme>().unwrap(), scheme);
        }
        assert!("svix".parse::<Scheme>().is_err());
    }

    #[test]
    fn debug_shows_no_key() {
        let secret = Scheme::Stripe.generate_secret().unwrap();
        let signer = EndpointSigner::new(Scheme::Stripe, &secret)
            .unwrap()
            .with_previous(&secret, 5)
            .unwrap();
        let text = format!("{signer:?} {:?}", signer.begin(&delivery(1)));
        assert!(!text.contains(&secret.expose()[6..]), "{text}");
    }

    #[test]
    fn generated_secrets_fit_their_scheme() {
        for scheme in Scheme::ALL {
            let a = scheme.generate_secret().unwrap();
            let b = scheme.generate_secret().unwrap();
            assert_eq!(scheme.check_secret(&a), Ok(()), "{scheme}");
            assert_ne!(a.expose(), b.expose(), "{scheme}");
        }
        let sw = Scheme::StandardWebhooks.generate_secret().unwrap();
        assert_eq!(sw.expose().len(), "whsec_".len() + 44);
        assert!(sw.expose().ends_with('='));
        let ed = Scheme::StandardWebhooksEd25519.generate_secret().unwrap();
        assert!(ed.expose().starts_with("whsk_"), "prefix");
        assert!(crate::secret::is_hex_secret(
            Scheme::Github.generate_secret().unwrap().expose()
        ));
    }
}
