//! The endpoint store: every endpoint's URL, events, status and secret, held in memory as one
//! immutable [`Snapshot`] behind an [`ArcSwap`].
//!
//! A delivery takes the snapshot with one atomic load and keeps that `Arc` for its whole life,
//! so a concurrent reload or rotation never changes an endpoint under a request. A new snapshot
//! is built in full (URLs parsed, HMACs keyed) before it is swapped in with one `store`.
//! Where the records come from is a [`Backend`]: the TOML file today ([`file::FileBackend`]).

pub mod file;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::Uri;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use url::Url;
use uuid::Uuid;

use crate::secret::{self, Secret};
use crate::signing::{EndpointSigner, Scheme};

/// The longest endpoint URL accepted (characters).
pub const MAX_URL_LEN: usize = 2048;

/// The live store: the current snapshot, swapped atomically.
pub struct Store {
    current: ArcSwap<Snapshot>,
    loaded: AtomicBool,
}

/// Where a snapshot's records come from. The file backend is the first; the etcd backend of
/// SPEC section 9 implements the same trait.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Reads every record and builds a snapshot, or says why not.
    fn load(&self) -> Pin<Box<dyn Future<Output = Result<Snapshot, LoadError>> + Send + '_>>;
}

/// Why the store could not be loaded; the previous snapshot stays in service.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading store {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store {path}: {message}")]
    Parse { path: String, message: String },
    #[error("store {path}: {}", problems.join("; "))]
    Invalid { path: String, problems: Vec<String> },
}

impl LoadError {
    /// Every problem as its own line, for `hooksign check`.
    pub fn problems(&self) -> Vec<String> {
        match self {
            Self::Invalid { path, problems } => {
                problems.iter().map(|p| format!("{path}: {p}")).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

impl Store {
    /// A store serving `initial`.
    pub fn new(initial: Snapshot) -> Self {
        Self {
            current: ArcSwap::from_pointee(initial),
            loaded: AtomicBool::new(true),
        }
    }

    /// The current snapshot: one atomic load, no lock. Keep the `Arc` for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Swaps `next` in; requests that already hold the old snapshot finish with it.
    pub fn replace(&self, next: Snapshot) {
        self.current.store(Arc::new(next));
        self.loaded.store(true, Ordering::Release);
    }

    /// Whether a snapshot has been loaded (`/readyz`).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("endpoints", &self.current.load().len())
            .finish_non_exhaustive()
    }
}

/// An immutable set of endpoints, ready to serve.
#[derive(Debug, Default)]
pub struct Snapshot {
    endpoints: HashMap<Uuid, Arc<Endpoint>>,
}

impl Snapshot {
    /// Builds a snapshot from records, checking each and refusing duplicate uuids. Every problem
    /// is collected, each prefixed by `locate(index)` (the record's position for messages).
    pub fn build(
        records: Vec<EndpointRecord>,
        locate: impl Fn(usize, &str) -> String,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut endpoints = HashMap::with_capacity(records.len());
        for (index, record) in records.into_iter().enumerate() {
            match Endpoint::from_record(record) {
                Ok(endpoint) => {
                    let uuid = endpoint.uuid;
                    if endpoints.insert(uuid, Arc::new(endpoint)).is_some() {
                        problems.push(format!("{}: duplicate uuid {uuid}", locate(index, "uuid")));
                    }
                }
                Err((field, message)) => {
                    problems.push(format!("{}: {message}", locate(index, field)))
                }
            }
        }
        if problems.is_empty() {
            Ok(Self { endpoints })
        } else {
            Err(problems)
        }
    }

    /// The endpoint with this uuid.
    pub fn get(&self, uuid: &Uuid) -> Option<&Arc<Endpoint>> {
        self.endpoints.get(uuid)
    }

    /// How many endpoints the snapshot holds.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether the snapshot holds no endpoint.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Every endpoint, in no particular order.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.endpoints.values()
    }
}

/// An endpoint's lifecycle state (`status` in the store file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Disabled,
    AutoDisabled,
}

impl Status {
    /// The name used in the store file and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::AutoDisabled => "auto_disabled",
        }
    }
}

/// One `[[webhooks]]` table as stored.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRecord {
    pub uuid: String,
    pub company: String,
    pub url: String,
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default = "default_status")]
    pub status: String,
    #[serde(default = "default_scheme")]
    pub scheme: String,
    pub secret: Secret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

fn default_status() -> String {
    Status::Active.as_str().to_owned()
}

fn default_scheme() -> String {
    Scheme::Storno.as_str().to_owned()
}

/// A validated endpoint, ready for the delivery path: URL parsed, HMAC keyed.
pub struct Endpoint {
    pub uuid: Uuid,
    pub company: Uuid,
    /// The URL as stored (what the API shows).
    pub url: Url,
    /// The same URL as the request target the client sends to.
    pub target: Uri,
    pub events: Vec<String>,
    /// Subscribed to `*`: every event type, current and future.
    pub all_events: bool,
    pub description: String,
    pub status: Status,
    pub scheme: Scheme,
    pub secret: Secret,
    pub signer: EndpointSigner,
    pub created_at: Option<OffsetDateTime>,
    pub updated_at: Option<OffsetDateTime>,
}

impl Endpoint {
    /// Validates a record; on failure, the field at fault and what is wrong (never a secret).
    pub fn from_record(record: EndpointRecord) -> Result<Self, (&'static str, String)> {
        let uuid = Uuid::parse_str(&record.uuid).map_err(|_| ("uuid", "not a uuid".to_owned()))?;
        let company =
            Uuid::parse_str(&record.company).map_err(|_| ("company", "not a uuid".to_owned()))?;
        let url = parse_endpoint_url(&record.url).map_err(|why| ("url", why))?;
        let target: Uri = url
            .as_str()
            .parse()
            .map_err(|_| ("url", "not usable as an HTTP request target".to_owned()))?;
        if record.events.is_empty() {
            return Err((
                "events",
                "must list at least one event type, or \"*\"".into(),
            ));
        }
        if record.events.iter().any(|e| e.is_empty()) {
            return Err(("events", "event types cannot be empty".into()));
        }
        let all_events = record.events.iter().any(|e| e == "*");
        let status = match record.status.as_str() {
            "active" => Status::Active,
            "disabled" => Status::Disabled,
            "auto_disabled" => Status::AutoDisabled,
            other => {
                return Err((
                    "status",
                    format!(
                        "unknown status {other:?} (expected active, disabled or auto_disabled)"
                    ),
                ))
            }
        };
        let scheme: Scheme = record
            .scheme
            .parse()
            .map_err(|err: crate::signing::UnknownScheme| ("scheme", err.to_string()))?;
        if !secret::is_hex_secret(record.secret.expose()) {
            return Err((
                "secret",
                "must be whsec_ followed by 64 lowercase hex characters".into(),
            ));
        }
        let created_at =
            parse_time(record.created_at.as_deref()).map_err(|why| ("created_at", why))?;
        let updated_at =
            parse_time(record.updated_at.as_deref()).map_err(|why| ("updated_at", why))?;
        let signer = EndpointSigner::new(scheme, &record.secret);
        Ok(Self {
            uuid,
            company,
            url,
            target,
            events: record.events,
            all_events,
            description: record.description,
            status,
            scheme,
            secret: record.secret,
            signer,
            created_at,
            updated_at,
        })
    }

    /// Whether the endpoint takes events of this type.
    pub fn subscribes_to(&self, event: &[u8]) -> bool {
        self.all_events || self.events.iter().any(|e| e.as_bytes() == event)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("uuid", &self.uuid)
            .field("company", &self.company)
            .field("status", &self.status)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// Parses an endpoint URL: http or https, a host, no userinfo, at most 2048 characters.
/// Whether plain http and the host's addresses are allowed is the egress policy's call.
pub fn parse_endpoint_url(text: &str) -> Result<Url, String> {
    if text.len() > MAX_URL_LEN {
        return Err(format!("longer than {MAX_URL_LEN} characters"));
    }
    let url = Url::parse(text).map_err(|err| format!("not a valid URL ({err})"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(format!("scheme {:?} is not https", url.scheme()));
    }
    if url.host().is_none() {
        return Err("has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials (user:password@)".into());
    }
    Ok(url)
}

fn parse_time(text: Option<&str>) -> Result<Option<OffsetDateTime>, String> {
    text.map(|t| {
        OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map_err(|_| format!("{t:?} is not an RFC 3339 time such as 2026-02-18T10:00:00Z"))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uuid: &str) -> EndpointRecord {
        EndpointRecord {
            uuid: uuid.into(),
            company: "550e8400-e29b-41d4-a716-446655440000".into(),
            url: "https://example.com/hooks?x=1".into(),
            events: vec!["invoice.created".into()],
            description: String::new(),
            status: "active".into(),
            scheme: "storno".into(),
            secret: Secret::new(format!("whsec_{}", "0".repeat(64))),
            created_at: Some("2026-02-18T10:00:00Z".into()),
            updated_at: None,
        }
    }

    const ID: &str = "a1b2c3d4-e5f6-7890-abcd-ef1234567890";

    #[test]
    fn a_valid_record_builds() {
        let snapshot =
            Snapshot::build(vec![record(ID)], |i, f| format!("webhooks[{i}].{f}")).unwrap();
        let endpoint = snapshot.get(&ID.parse().unwrap()).unwrap();
        assert_eq!(endpoint.target, "https://example.com/hooks?x=1");
        assert!(endpoint.subscribes_to(b"invoice.created"));
        assert!(!endpoint.subscribes_to(b"invoice.paid"));
    }

    #[test]
    fn duplicates_and_bad_fields_are_all_reported() {
        let mut bad_url = record("b1b2c3d4-e5f6-7890-abcd-ef1234567890");
        bad_url.url = "ftp://example.com".into();
        let mut bad_secret = record("c1b2c3d4-e5f6-7890-abcd-ef1234567890");
        bad_secret.secret = Secret::new("whsec_short");
        let problems =
            Snapshot::build(vec![record(ID), record(ID), bad_url, bad_secret], |i, f| {
                format!("webhooks[{i}].{f}")
            })
            .unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].starts_with("webhooks[1].uuid: duplicate"));
        assert!(problems[1].starts_with("webhooks[2].url"));
        assert!(problems[2].starts_with("webhooks[3].secret"));
        assert!(
            !problems[2].contains("short"),
            "a secret leaked into {}",
            problems[2]
        );
    }

    #[test]
    fn star_subscribes_to_everything() {
        let mut r = record(ID);
        r.events = vec!["*".into()];
        let endpoint = Endpoint::from_record(r).unwrap();
        assert!(endpoint.subscribes_to(b"anything.at.all"));
    }

    #[test]
    fn endpoint_urls_are_checked() {
        assert!(parse_endpoint_url("https://example.com/a").is_ok());
        assert!(parse_endpoint_url("http://example.com/a").is_ok());
        assert!(parse_endpoint_url("https://user:pw@example.com/").is_err());
        assert!(parse_endpoint_url("https://1.1.1.1 &@2.2.2.2/").is_err());
        assert!(parse_endpoint_url("file:///etc/passwd").is_err());
        assert!(parse_endpoint_url(&format!("https://example.com/{}", "a".repeat(2048))).is_err());
        assert!(parse_endpoint_url("not a url").is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let endpoint = Endpoint::from_record(record(ID)).unwrap();
        let text = format!("{endpoint:?}");
        assert!(!text.contains("whsec_"), "{text}");
    }
}
