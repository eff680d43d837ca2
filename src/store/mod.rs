//! The endpoint store: every endpoint's URL, events, status and secret, held in memory as one
//! immutable [`Snapshot`] behind an [`ArcSwap`].
//!
//! A delivery takes the snapshot with one atomic load and keeps that `Arc` for its whole life,
//! so a concurrent reload or rotation never changes an endpoint under a request. A new snapshot
//! is built in full (URLs parsed, HMACs keyed) before it is swapped in with one `store`.
//! Where the records come from and go to is a [`Backend`]: the TOML file today
//! ([`file::FileBackend`]). Writes go through [`Store::update`], one at a time: the change is made
//! durable by the backend first, then the snapshot that includes it is swapped in, so a write that
//! was acknowledged is both on disk and in service.
//!
//! Delivery records ([`DeliveryStats`]) are atomics shared by every snapshot that holds the
//! endpoint, so a delivery never takes a lock and a reload keeps the counters.

pub mod file;
mod stats;

pub use stats::{DeliveryOutcome, DeliveryStats};

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

/// The live store: the current snapshot, swapped atomically, and the backend behind it.
pub struct Store {
    current: ArcSwap<Snapshot>,
    loaded: AtomicBool,
    backend: Box<dyn Backend>,
    /// Serializes writes; never taken on the delivery path.
    write_lock: tokio::sync::Mutex<()>,
}

/// A future a backend returns.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a snapshot's records come from and go to. The file backend is the first; the etcd
/// backend of SPEC section 9 implements the same trait.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Reads every record and builds a snapshot (carrying `previous`'s delivery records).
    fn load<'a>(
        &'a self,
        previous: Option<&'a Snapshot>,
    ) -> BackendFuture<'a, Result<Snapshot, LoadError>>;

    /// The store as it is now if it changed since this process last loaded or wrote it (someone
    /// else edited it), else `None`.
    fn load_if_changed<'a>(
        &'a self,
        previous: &'a Snapshot,
    ) -> BackendFuture<'a, Result<Option<Snapshot>, LoadError>>;

    /// Makes `records` the whole store, durably, before returning.
    fn persist(&self, records: Vec<EndpointRecord>) -> BackendFuture<'_, Result<(), WriteError>>;
}

/// Why a write was not made. Nothing was changed, on disk or in memory.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the store is read-only here ({0}); change it where it is managed")]
    ReadOnly(String),
    #[error("the store changed on disk and no longer loads; fix it before writing: {0}")]
    Conflict(#[source] LoadError),
    #[error("writing the store: {0}")]
    Io(#[from] std::io::Error),
    #[error("serializing the store: {0}")]
    Serialize(String),
    #[error("the change would make the store invalid: {}", .0.join("; "))]
    Invalid(Vec<String>),
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
    /// A store serving `initial`, written through `backend`.
    pub fn new(initial: Snapshot, backend: Box<dyn Backend>) -> Self {
        Self {
            current: ArcSwap::from_pointee(initial),
            loaded: AtomicBool::new(true),
            backend,
            write_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Changes the store: `change` edits the current records (delivery records included) or
    /// refuses; the result is validated, made durable by the backend, and only then swapped in.
    /// Writes are serialized. An edit someone else made to the backend since hooksign last read
    /// or wrote it is loaded first, so it is built upon, never overwritten.
    pub async fn update<T, E: From<WriteError>>(
        &self,
        change: impl FnOnce(&mut Vec<EndpointRecord>) -> Result<T, E>,
    ) -> Result<T, E> {
        let _writing = self.write_lock.lock().await;
        let current = self.snapshot();
        let current = match self.backend.load_if_changed(&current).await {
            Ok(Some(fresh)) => {
                tracing::info!("store changed outside hooksign; building on the new content");
                self.replace(fresh);
                self.snapshot()
            }
            Ok(None) => current,
            Err(err) => return Err(WriteError::Conflict(err).into()),
        };
        let mut records = current.records();
        let outcome = change(&mut records)?;
        let next = Snapshot::build(records.clone(), Some(&current), |index, field| {
            format!("webhooks[{index}].{field}")
        })
        .map_err(WriteError::Invalid)?;
        self.backend.persist(records).await?;
        self.replace(next);
        Ok(outcome)
    }

    /// Re-reads the whole store from the backend and swaps it in; on failure the snapshot in
    /// service stays.
    pub async fn reload(&self) -> Result<usize, LoadError> {
        let _writing = self.write_lock.lock().await;
        let next = self.backend.load(Some(&self.snapshot())).await?;
        let count = next.len();
        self.replace(next);
        Ok(count)
    }

    /// Writes the delivery records out if any delivery happened since the last write.
    pub async fn flush_delivery_records(&self, last_total: &mut u64) -> Result<bool, WriteError> {
        let total = self.snapshot().delivery_total();
        if total == *last_total {
            return Ok(false);
        }
        self.update(|_| Ok::<(), WriteError>(())).await?;
        *last_total = total;
        Ok(true)
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

/// An immutable set of endpoints, ready to serve, in store order.
#[derive(Debug, Default)]
pub struct Snapshot {
    endpoints: Vec<Arc<Endpoint>>,
    by_uuid: HashMap<Uuid, usize>,
}

impl Snapshot {
    /// Builds a snapshot from records, checking each and refusing duplicate uuids. Every problem
    /// is collected, each prefixed by `locate(index, field)` (the record's position for messages).
    /// Endpoints that `previous` also holds keep its delivery records.
    pub fn build(
        records: Vec<EndpointRecord>,
        previous: Option<&Snapshot>,
        locate: impl Fn(usize, &str) -> String,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut endpoints = Vec::with_capacity(records.len());
        let mut by_uuid = HashMap::with_capacity(records.len());
        for (index, record) in records.into_iter().enumerate() {
            let carried = Uuid::parse_str(&record.uuid)
                .ok()
                .and_then(|uuid| previous?.get(&uuid))
                .map(|endpoint| Arc::clone(&endpoint.stats));
            match Endpoint::from_record(record, carried) {
                Ok(endpoint) => {
                    let uuid = endpoint.uuid;
                    if by_uuid.insert(uuid, endpoints.len()).is_some() {
                        problems.push(format!("{}: duplicate uuid {uuid}", locate(index, "uuid")));
                    }
                    endpoints.push(Arc::new(endpoint));
                }
                Err((field, message)) => {
                    problems.push(format!("{}: {message}", locate(index, field)))
                }
            }
        }
        if problems.is_empty() {
            Ok(Self { endpoints, by_uuid })
        } else {
            Err(problems)
        }
    }

    /// The endpoint with this uuid.
    pub fn get(&self, uuid: &Uuid) -> Option<&Arc<Endpoint>> {
        self.by_uuid.get(uuid).map(|&index| &self.endpoints[index])
    }

    /// Every record as it should be stored now: delivery records folded in.
    pub fn records(&self) -> Vec<EndpointRecord> {
        self.endpoints
            .iter()
            .map(|endpoint| endpoint.record_now())
            .collect()
    }

    /// The sum of every endpoint's delivery count (changes whenever a delivery is recorded).
    pub fn delivery_total(&self) -> u64 {
        self.endpoints.iter().map(|e| e.stats.deliveries()).sum()
    }

    /// How many endpoints the snapshot holds.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether the snapshot holds no endpoint.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Every endpoint, in store order.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.endpoints.iter()
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
    /// Delivery records, written by hooksign (periodically and on shutdown).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deliveries_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery_at: Option<String>,
    /// `success` or `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery_status: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_failures: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn default_status() -> String {
    Status::Active.as_str().to_owned()
}

fn default_scheme() -> String {
    Scheme::Storno.as_str().to_owned()
}

/// A validated endpoint, ready for the delivery path: URL parsed, HMAC keyed.
pub struct Endpoint {
    /// The record as stored (delivery records as of the last load; see [`Endpoint::record_now`]).
    pub record: EndpointRecord,
    /// Delivery records, shared with every snapshot that holds this endpoint.
    pub stats: Arc<DeliveryStats>,
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
    /// `stats` carries delivery records over from a previous snapshot; without it they start
    /// from the record.
    pub fn from_record(
        record: EndpointRecord,
        stats: Option<Arc<DeliveryStats>>,
    ) -> Result<Self, (&'static str, String)> {
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
        let last_delivery_at = parse_time(record.last_delivery_at.as_deref())
            .map_err(|why| ("last_delivery_at", why))?;
        let last_outcome = match record.last_delivery_status.as_deref() {
            None => None,
            Some("success") => Some(DeliveryOutcome::Success),
            Some("failed") => Some(DeliveryOutcome::Failed),
            Some(other) => {
                return Err((
                    "last_delivery_status",
                    format!("unknown status {other:?} (expected success or failed)"),
                ))
            }
        };
        let stats = stats.unwrap_or_else(|| {
            Arc::new(DeliveryStats::restore(
                record.deliveries_count,
                last_delivery_at,
                last_outcome,
                record.consecutive_failures,
            ))
        });
        let signer = EndpointSigner::new(scheme, &record.secret);
        Ok(Self {
            uuid,
            company,
            url,
            target,
            events: record.events.clone(),
            all_events,
            description: record.description.clone(),
            status,
            scheme,
            secret: record.secret.clone(),
            signer,
            created_at,
            updated_at,
            stats,
            record,
        })
    }

    /// The record with the delivery records as they are now.
    pub fn record_now(&self) -> EndpointRecord {
        let mut record = self.record.clone();
        record.deliveries_count = self.stats.deliveries();
        record.last_delivery_at = self.stats.last_delivery_at().map(format_time);
        record.last_delivery_status = self.stats.last_outcome().map(|o| o.as_str().to_owned());
        record.consecutive_failures = self.stats.consecutive_failures();
        record
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

/// RFC 3339 in UTC with `Z`, to the second: `2026-02-18T10:00:00Z`.
pub fn format_time(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    let at = at.replace_nanosecond(0).unwrap_or(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// Now, to the second, as stored.
pub fn now_text() -> String {
    format_time(OffsetDateTime::now_utc())
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
            deliveries_count: 0,
            last_delivery_at: None,
            last_delivery_status: None,
            consecutive_failures: 0,
        }
    }

    const ID: &str = "a1b2c3d4-e5f6-7890-abcd-ef1234567890";

    #[test]
    fn a_valid_record_builds() {
        let snapshot =
            Snapshot::build(vec![record(ID)], None, |i, f| format!("webhooks[{i}].{f}")).unwrap();
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
        let problems = Snapshot::build(
            vec![record(ID), record(ID), bad_url, bad_secret],
            None,
            |i, f| format!("webhooks[{i}].{f}"),
        )
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
        let endpoint = Endpoint::from_record(r, None).unwrap();
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
    fn delivery_records_survive_a_rebuild() {
        let first = Snapshot::build(vec![record(ID)], None, |i, f| format!("{i}.{f}")).unwrap();
        first
            .get(&ID.parse().unwrap())
            .unwrap()
            .stats
            .record(DeliveryOutcome::Failed);
        let second =
            Snapshot::build(first.records(), Some(&first), |i, f| format!("{i}.{f}")).unwrap();
        let stats = &second.get(&ID.parse().unwrap()).unwrap().stats;
        assert_eq!((stats.deliveries(), stats.consecutive_failures()), (1, 1));
        // Rebuilt from the stored record alone, the counters come back too.
        let third = Snapshot::build(second.records(), None, |i, f| format!("{i}.{f}")).unwrap();
        let record = &third.records()[0];
        assert_eq!(record.deliveries_count, 1);
        assert_eq!(record.last_delivery_status.as_deref(), Some("failed"));
        assert!(record.last_delivery_at.is_some());
    }

    #[test]
    fn debug_hides_the_secret() {
        let endpoint = Endpoint::from_record(record(ID), None).unwrap();
        let text = format!("{endpoint:?}");
        assert!(!text.contains("whsec_"), "{text}");
    }
}
