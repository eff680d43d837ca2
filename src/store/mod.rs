//! The endpoint store: every endpoint's URL, events, status and secret, held in memory as one
//! immutable [`Snapshot`] behind an [`ArcSwap`].
//!
//! A delivery takes the snapshot with one atomic load and keeps that `Arc` for its whole life,
//! so a concurrent reload or rotation never changes an endpoint under a request. A new snapshot
//! is built in full (URLs parsed, HMACs keyed) before it is swapped in with one `store`.
//! Where the records come from and go to is a [`Backend`]: the TOML file ([`file::FileBackend`])
//! or etcd for a fleet ([`etcd::EtcdBackend`]), whose [`Backend::watch`] swaps in every change
//! another replica makes. Writes go through [`Store::update`], one at a time: the change is made
//! durable by the backend first, then the snapshot that includes it is swapped in, so a write that
//! was acknowledged is both on disk and in service.
//!
//! Delivery records ([`DeliveryStats`]) are atomics shared by every snapshot that holds the
//! endpoint, so a delivery never takes a lock and a reload keeps the counters.
//!
//! Secret rotation is [`rotate`], a pure function from a record to the rotated record, which
//! the admin API persists through [`Store::update`].

pub mod etcd;
pub mod file;
mod stats;
mod toml_out;
pub mod watch;

pub use stats::{DeliveryOutcome, DeliveryStats};

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::Uri;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use url::Url;
use uuid::Uuid;

use crate::proxy::pool::Origin;
use crate::secret::{RandomError, Secret};
use crate::signing::{EndpointSigner, Scheme, UnknownScheme};

/// The longest endpoint URL accepted (characters).
pub const MAX_URL_LEN: usize = 2048;

/// The longest rotation overlap window (SPEC section 5: `previousSecretExpiresIn` 0 to 86400).
pub const MAX_OVERLAP: Duration = Duration::from_secs(86_400);

/// The live store: the current snapshot, swapped atomically, and the backend behind it.
pub struct Store {
    current: ArcSwap<Snapshot>,
    loaded: AtomicBool,
    backend: Box<dyn Backend>,
    /// Serializes writes; never taken on the delivery path.
    write_lock: tokio::sync::Mutex<()>,
}

/// Runs `work` (reading, parsing, validating and keying a whole store: 0.7 s at 100,000
/// endpoints) on tokio's blocking pool. The runtime keeps serving deliveries meanwhile (with one
/// worker thread it would otherwise stall), and the snapshot's memory comes from that thread's
/// allocator arena rather than the one the delivery path allocates from: with glibc, a 100 MiB
/// store in the runtime thread's arena made each delivery's allocations measurably slower.
pub async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// A future a backend returns.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a snapshot's records come from and go to. The file backend is the first; the etcd
/// backend of SPEC section 9 implements the same trait.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Reads every record and builds a snapshot (carrying `previous`'s delivery records).
    fn load(
        &self,
        previous: Option<Arc<Snapshot>>,
    ) -> BackendFuture<'_, Result<Snapshot, LoadError>>;

    /// The store as it is now if it changed since this process last loaded or wrote it (someone
    /// else edited it), else `None`.
    fn load_if_changed(
        &self,
        previous: Arc<Snapshot>,
    ) -> BackendFuture<'_, Result<Option<Snapshot>, LoadError>>;

    /// Makes `records` the whole store, durably, before returning.
    fn persist(&self, records: Vec<EndpointRecord>) -> BackendFuture<'_, Result<(), WriteError>>;

    /// Makes `snapshot` (with its delivery records as they are now) the whole store, durably:
    /// the periodic record flush. The default builds the records for [`Backend::persist`].
    fn persist_snapshot(
        &self,
        snapshot: Arc<Snapshot>,
    ) -> BackendFuture<'_, Result<(), WriteError>> {
        Box::pin(async move { self.persist(snapshot.records()).await })
    }

    /// Whether this backend stores delivery records (counters, last status). The file backend
    /// does; a shared backend keeps them local to each replica, so
    /// [`Store::flush_delivery_records`] writes nothing.
    fn stores_delivery_records(&self) -> bool {
        true
    }

    /// Follows changes made elsewhere and swaps each into `store` (through [`Store::apply`] or
    /// [`Store::reload`]) until `shutdown` fires. The default has nothing to follow and returns.
    fn watch<'a>(&'a self, store: &'a Store, shutdown: CancellationToken) -> BackendFuture<'a, ()> {
        let _ = (store, shutdown);
        Box::pin(async {})
    }
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
    /// Someone else (another replica) changed an endpoint this write touches since this replica
    /// loaded it; nothing was written (the API answers 409 `conflict`).
    #[error("{0} was changed by another writer since this replica loaded it; nothing was written, retry")]
    Contended(String),
    /// The store cannot be reached now; nothing was written (the API answers 503).
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
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
    /// The backend cannot be reached (etcd down); not a problem of the data.
    #[error("store {path} is unavailable: {message}")]
    Unavailable { path: String, message: String },
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

    /// A store whose backend could not be read yet: empty and not ready (`/readyz` 503) until
    /// the backend's [`Backend::watch`] loads it.
    pub fn pending(backend: Box<dyn Backend>) -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            loaded: AtomicBool::new(false),
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
        if !self.is_loaded() {
            return Err(
                WriteError::Unavailable("the store has not been loaded yet".to_owned()).into(),
            );
        }
        let current = self.with_outside_edits().await?;
        let mut records = current.records();
        let outcome = change(&mut records)?;
        let next = {
            let (records, current) = (records.clone(), Arc::clone(&current));
            off_runtime(move || {
                Snapshot::build(records, Some(&current), |index, field| {
                    format!("webhooks[{index}].{field}")
                })
            })
            .await
            .map_err(WriteError::Invalid)?
        };
        self.backend.persist(records).await?;
        self.replace(next);
        Ok(outcome)
    }

    /// The snapshot a write builds on (call with the write lock held): the current one, or, when
    /// someone else changed the backend since hooksign last read or wrote it, that content,
    /// loaded and swapped in first. A change that does not load refuses the write.
    async fn with_outside_edits(&self) -> Result<Arc<Snapshot>, WriteError> {
        match self.backend.load_if_changed(self.snapshot()).await {
            Ok(Some(fresh)) => {
                tracing::info!("store changed outside hooksign; building on the new content");
                self.replace(fresh);
                Ok(self.snapshot())
            }
            Ok(None) => Ok(self.snapshot()),
            Err(err) => Err(WriteError::Conflict(err)),
        }
    }

    /// Re-reads the store if its content changed since hooksign last read or wrote it (so
    /// hooksign's own writes are not reloaded); the endpoint count when it swapped a new snapshot.
    pub async fn reload_if_changed(&self) -> Result<Option<usize>, LoadError> {
        let _writing = self.write_lock.lock().await;
        match self.backend.load_if_changed(self.snapshot()).await? {
            Some(next) => {
                let count = next.len();
                self.replace(next);
                Ok(Some(count))
            }
            None => Ok(None),
        }
    }

    /// Re-reads the whole store from the backend and swaps it in; on failure the snapshot in
    /// service stays.
    pub async fn reload(&self) -> Result<usize, LoadError> {
        let _writing = self.write_lock.lock().await;
        let next = self.backend.load(Some(self.snapshot())).await?;
        let count = next.len();
        self.replace(next);
        Ok(count)
    }

    /// Swaps in the snapshot `change` builds from the current one (a backend's watch applying
    /// a change made elsewhere), serialized with writes; `None` keeps the current snapshot.
    /// Returns the new snapshot's endpoint count when one was swapped in.
    pub async fn apply(&self, change: impl FnOnce(&Snapshot) -> Option<Snapshot>) -> Option<usize> {
        let _writing = self.write_lock.lock().await;
        let next = change(&self.snapshot())?;
        let count = next.len();
        self.replace(next);
        Some(count)
    }

    /// Follows the backend's changes until `shutdown` (see [`Backend::watch`]).
    pub async fn watch(&self, shutdown: CancellationToken) {
        self.backend.watch(self, shutdown).await;
    }

    /// Writes the delivery records out if any delivery happened since the last write; nothing
    /// for a backend that keeps them local ([`Backend::stores_delivery_records`]).
    pub async fn flush_delivery_records(&self, last_total: &mut u64) -> Result<bool, WriteError> {
        if !self.backend.stores_delivery_records() {
            return Ok(false);
        }
        let total = self.snapshot().delivery_total();
        if total == *last_total {
            return Ok(false);
        }
        // The records change, the endpoints do not: write them without rebuilding the snapshot
        // (no re-parsing or re-keying of every endpoint every flush).
        let _writing = self.write_lock.lock().await;
        let current = self.with_outside_edits().await?;
        self.backend.persist_snapshot(current).await?;
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
    /// The key replaced by the last rotation, still signing until `previous_secret_expires_at`
    /// (only for schemes that allow an overlap window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<Secret>,
    /// When `previous_secret` stops being used (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<String>,
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
///
/// Each field is held once, in its parsed form (the record to store is rebuilt from them by
/// [`Endpoint::record_now`]): a snapshot of 10,000 endpoints stays a few MiB.
pub struct Endpoint {
    /// Delivery records, shared with every snapshot that holds this endpoint.
    pub stats: Arc<DeliveryStats>,
    pub uuid: Uuid,
    pub company: Uuid,
    /// The URL as stored (what the API shows and the store keeps).
    pub url: String,
    /// The same URL, parsed, as the request target the client sends to.
    pub target: Uri,
    pub events: Vec<String>,
    /// Subscribed to `*`: every event type, current and future.
    pub all_events: bool,
    pub description: String,
    pub status: Status,
    pub scheme: Scheme,
    pub secret: Secret,
    /// The previous key of a rotation overlap window (possibly already expired).
    pub previous_secret: Option<Secret>,
    /// When the previous key stops being used.
    pub previous_secret_expires_at: Option<OffsetDateTime>,
    /// The keyed signer (current and previous keys); the previous one is used while a delivery's
    /// timestamp is before its expiry.
    pub signer: EndpointSigner,
    pub created_at: Option<OffsetDateTime>,
    pub updated_at: Option<OffsetDateTime>,
    /// The upstream connection pool of this endpoint's origin, found on its first delivery in
    /// this snapshot (so the delivery path looks nothing up).
    pub origin: OnceLock<Arc<Origin>>,
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
        let parsed_url = parse_endpoint_url(&record.url).map_err(|why| ("url", why))?;
        let target: Uri = parsed_url
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
            .map_err(|err: UnknownScheme| ("scheme", err.to_string()))?;
        let mut signer = EndpointSigner::new(scheme, &record.secret)
            .map_err(|err| ("secret", format!("{err} for the {scheme} scheme")))?;
        let previous_secret_expires_at = parse_time(record.previous_secret_expires_at.as_deref())
            .map_err(|why| ("previous_secret_expires_at", why))?;
        match (&record.previous_secret, previous_secret_expires_at) {
            (None, None) => {}
            (Some(_), None) => {
                return Err((
                    "previous_secret_expires_at",
                    "is required with previous_secret".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "previous_secret",
                    "is missing, but previous_secret_expires_at is set".into(),
                ))
            }
            (Some(previous), Some(expires_at)) => {
                let expires_at = u64::try_from(expires_at.unix_timestamp()).unwrap_or(0);
                signer = signer
                    .with_previous(previous, expires_at)
                    .map_err(|err| ("previous_secret", format!("{err} for the {scheme} scheme")))?;
            }
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
        let EndpointRecord {
            url,
            mut events,
            description,
            secret,
            previous_secret,
            ..
        } = record;
        events.shrink_to_fit();
        Ok(Self {
            uuid,
            company,
            url,
            target,
            events,
            all_events,
            description,
            status,
            scheme,
            secret,
            previous_secret,
            previous_secret_expires_at,
            signer,
            created_at,
            updated_at,
            stats,
            origin: OnceLock::new(),
        })
    }

    /// The record to store, with the delivery records as they are now. Times are written in
    /// the store's form (UTC, `Z`, whole seconds) and uuids in lowercase.
    pub fn record_now(&self) -> EndpointRecord {
        EndpointRecord {
            uuid: self.uuid.to_string(),
            company: self.company.to_string(),
            url: self.url.clone(),
            events: self.events.clone(),
            description: self.description.clone(),
            status: self.status.as_str().to_owned(),
            scheme: self.scheme.as_str().to_owned(),
            secret: self.secret.clone(),
            previous_secret: self.previous_secret.clone(),
            previous_secret_expires_at: self.previous_secret_expires_at.map(format_time),
            created_at: self.created_at.map(format_time),
            updated_at: self.updated_at.map(format_time),
            deliveries_count: self.stats.deliveries(),
            last_delivery_at: self.stats.last_delivery_at().map(format_time),
            last_delivery_status: self.stats.last_outcome().map(|o| o.as_str().to_owned()),
            consecutive_failures: self.stats.consecutive_failures(),
        }
    }

    /// The Ed25519 public key receivers verify with (`whpk_<base64>`), for the
    /// `standard-webhooks-ed25519` scheme; `None` for the HMAC schemes.
    pub fn public_key(&self) -> Option<String> {
        self.signer.public_key()
    }

    /// When the overlap window closes, while it is open at `now` (the API's
    /// `previousSecretExpiresAt`); `None` when there is no window or it has closed.
    pub fn overlap_expires_at(&self, now: SystemTime) -> Option<OffsetDateTime> {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        self.previous_secret_expires_at
            .filter(|_| self.signer.overlap_open_at(now))
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
            .field(
                "previous_secret_expires_at",
                &self.previous_secret_expires_at,
            )
            .finish_non_exhaustive()
    }
}

// === rotation ===

/// Why a secret could not be rotated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotateError {
    #[error(transparent)]
    UnknownScheme(#[from] UnknownScheme),
    /// A non-zero overlap window on `storno` or `github` (the API answers 422).
    #[error("the {0} scheme allows no overlap window (previousSecretExpiresIn must be 0): its receivers compare one signature")]
    OverlapNotAllowed(Scheme),
    /// A window longer than [`MAX_OVERLAP`] (the API answers 422).
    #[error("the overlap window can be at most {} seconds", MAX_OVERLAP.as_secs())]
    WindowTooLong,
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// Rotates a record's secret at `now`: a new secret in the scheme's format from the OS CSPRNG.
/// With `expires_in` zero the old secret stops signing at once (and any earlier previous secret
/// is dropped); otherwise it becomes `previous_secret` until `now + expires_in` (whole seconds),
/// replacing any earlier previous secret, so at most two keys sign. `updated_at` becomes `now`.
/// Pure apart from the randomness: the caller persists the result.
pub fn rotate(
    record: &EndpointRecord,
    expires_in: Duration,
    now: OffsetDateTime,
) -> Result<EndpointRecord, RotateError> {
    let scheme: Scheme = record.scheme.parse()?;
    if !expires_in.is_zero() && !scheme.allows_overlap() {
        return Err(RotateError::OverlapNotAllowed(scheme));
    }
    if expires_in > MAX_OVERLAP {
        return Err(RotateError::WindowTooLong);
    }
    let now = now
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(now);
    let mut next = record.clone();
    next.secret = Secret::generate_for(scheme)?;
    if expires_in.is_zero() {
        next.previous_secret = None;
        next.previous_secret_expires_at = None;
    } else {
        let expires_at = now + time::Duration::seconds(expires_in.as_secs() as i64);
        next.previous_secret = Some(record.secret.clone());
        next.previous_secret_expires_at = Some(format_time(expires_at));
    }
    next.updated_at = Some(format_time(now));
    Ok(next)
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
            previous_secret: None,
            previous_secret_expires_at: None,
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
    fn an_endpoint_gives_back_the_record_it_was_built_from() {
        let mut stored = record(ID);
        stored.scheme = "stripe".into();
        stored.url = "https://Example.COM:8443/hooks/a%20b?x=1&y".into();
        stored.events = vec!["invoice.created".into(), "invoice.paid".into()];
        stored.description = "Production \"invoices\"".into();
        stored.status = "auto_disabled".into();
        stored.previous_secret = Some(Secret::generate_for(Scheme::Stripe).unwrap());
        stored.previous_secret_expires_at = Some("2026-02-19T10:00:00Z".into());
        stored.updated_at = Some("2026-02-18T11:00:00Z".into());
        stored.deliveries_count = 7;
        stored.last_delivery_at = Some("2026-02-18T12:00:00Z".into());
        stored.last_delivery_status = Some("failed".into());
        stored.consecutive_failures = 3;
        let endpoint = Endpoint::from_record(stored.clone(), None).unwrap();
        let again = endpoint.record_now();
        assert_eq!(
            toml::to_string(&again).unwrap(),
            toml::to_string(&stored).unwrap()
        );
    }

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

    fn with_scheme(scheme: Scheme) -> EndpointRecord {
        let mut r = record(ID);
        r.scheme = scheme.as_str().into();
        r.secret = Secret::generate_for(scheme).unwrap();
        r
    }

    fn problem(r: EndpointRecord) -> (&'static str, String) {
        Endpoint::from_record(r, None).map(|_| ()).unwrap_err()
    }

    #[test]
    fn each_scheme_takes_only_its_secret_format() {
        for scheme in Scheme::ALL {
            assert!(
                Endpoint::from_record(with_scheme(scheme), None).is_ok(),
                "{scheme}"
            );
            for other in Scheme::ALL {
                if scheme.check_secret(&with_scheme(other).secret).is_ok() {
                    continue; // storno, stripe and github share the hex format
                }
                let mut r = with_scheme(scheme);
                r.secret = with_scheme(other).secret;
                let leaked = r.secret.expose().to_owned();
                let (field, message) = problem(r);
                assert_eq!(field, "secret", "{scheme} with a {other} secret");
                assert!(message.contains(scheme.as_str()), "{message}");
                assert!(!message.contains(&leaked[6..]), "secret leaked: {message}");
            }
        }
    }

    #[test]
    fn the_ed25519_endpoint_shows_its_public_key_only() {
        let endpoint =
            Endpoint::from_record(with_scheme(Scheme::StandardWebhooksEd25519), None).unwrap();
        let public = endpoint.public_key().unwrap();
        assert!(
            public.starts_with("whpk_") && public.len() == 5 + 44,
            "{public}"
        );
        assert_ne!(public[5..], endpoint.secret.expose()[5..]);
        assert_eq!(
            Endpoint::from_record(record(ID), None)
                .unwrap()
                .public_key(),
            None
        );
    }

    #[test]
    fn previous_secrets_are_validated() {
        let past = "2020-01-01T00:00:00Z".to_owned();
        let future = "2999-01-01T00:00:00Z".to_owned();
        for scheme in [Scheme::Storno, Scheme::Github] {
            let mut r = with_scheme(scheme);
            r.previous_secret = Some(Secret::generate_for(scheme).unwrap());
            r.previous_secret_expires_at = Some(future.clone());
            let (field, message) = problem(r);
            assert_eq!(field, "previous_secret");
            assert!(message.contains("allows no previous secret"), "{message}");
        }
        let scheme = Scheme::StandardWebhooks;
        let mut r = with_scheme(scheme);
        r.previous_secret = Some(Secret::generate_for(scheme).unwrap());
        assert_eq!(problem(r.clone()).0, "previous_secret_expires_at");
        r.previous_secret_expires_at = Some("tomorrow".into());
        assert_eq!(problem(r.clone()).0, "previous_secret_expires_at");
        r.previous_secret_expires_at = Some(future.clone());
        let open = Endpoint::from_record(r.clone(), None).unwrap();
        assert!(open.overlap_expires_at(SystemTime::now()).is_some());
        r.previous_secret_expires_at = Some(past);
        let closed = Endpoint::from_record(r.clone(), None).unwrap();
        assert_eq!(closed.overlap_expires_at(SystemTime::now()), None);
        r.previous_secret = Some(Secret::generate_for(Scheme::Storno).unwrap());
        assert_eq!(problem(r.clone()).0, "previous_secret");
        r.previous_secret = None;
        r.previous_secret_expires_at = Some(future);
        assert_eq!(problem(r).0, "previous_secret");
    }

    #[test]
    fn rotate_moves_the_old_secret_to_previous_for_the_window() {
        let now = time::macros::datetime!(2026-02-18 10:00:00.75 UTC);
        let original = with_scheme(Scheme::Stripe);
        let rotated = rotate(&original, Duration::from_secs(3600), now).unwrap();
        assert_ne!(rotated.secret, original.secret);
        assert_eq!(rotated.previous_secret.as_ref(), Some(&original.secret));
        assert_eq!(
            rotated.previous_secret_expires_at.as_deref(),
            Some("2026-02-18T11:00:00Z")
        );
        assert_eq!(rotated.updated_at.as_deref(), Some("2026-02-18T10:00:00Z"));
        assert!(Endpoint::from_record(rotated.clone(), None).is_ok());

        // A second rotation with a window replaces the previous secret; without one, drops it.
        let again = rotate(&rotated, Duration::from_secs(60), now).unwrap();
        assert_eq!(again.previous_secret.as_ref(), Some(&rotated.secret));
        let immediate = rotate(&again, Duration::ZERO, now).unwrap();
        assert_eq!(immediate.previous_secret, None);
        assert_eq!(immediate.previous_secret_expires_at, None);
        assert_ne!(immediate.secret, again.secret);
    }

    #[test]
    fn rotate_generates_the_schemes_format_and_refuses_bad_windows() {
        let now = OffsetDateTime::now_utc();
        for scheme in Scheme::ALL {
            let rotated = rotate(&with_scheme(scheme), Duration::ZERO, now).unwrap();
            assert_eq!(scheme.check_secret(&rotated.secret), Ok(()), "{scheme}");
            let windowed = rotate(&with_scheme(scheme), Duration::from_secs(1), now);
            assert_eq!(windowed.is_ok(), scheme.allows_overlap(), "{scheme}");
        }
        let err = rotate(&with_scheme(Scheme::Github), Duration::from_secs(1), now).unwrap_err();
        assert!(matches!(
            err,
            RotateError::OverlapNotAllowed(Scheme::Github)
        ));
        assert!(
            err.to_string()
                .contains("github scheme allows no overlap window"),
            "{err}"
        );
        let too_long = rotate(
            &with_scheme(Scheme::Stripe),
            MAX_OVERLAP + Duration::from_secs(1),
            now,
        );
        assert!(matches!(too_long, Err(RotateError::WindowTooLong)));
        assert!(rotate(&with_scheme(Scheme::Stripe), MAX_OVERLAP, now).is_ok());
    }

    #[test]
    fn records_never_show_their_secrets_in_debug() {
        let rotated = rotate(
            &with_scheme(Scheme::StandardWebhooks),
            Duration::from_secs(60),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let previous = rotated.previous_secret.clone().unwrap();
        let endpoint = Endpoint::from_record(rotated.clone(), None).unwrap();
        let text = format!("{rotated:?} {endpoint:?}");
        assert!(!text.contains(&previous.expose()[6..]), "{text}");
        assert!(!text.contains(&rotated.secret.expose()[6..]), "{text}");
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
