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
//! the admin API persists through [`Store::update`]: up to [`MAX_PREVIOUS_KEYS`] previous keys
//! keep signing, each until the end of its own window ([`revoke_previous`] ends them all).
//!
//! Secrets at rest: with a keyring, every backend seals records before they are stored and opens
//! them when they are read, once per snapshot build ([`crypt::Sealer`]).

pub mod crypt;
pub mod etcd;
pub mod file;
pub mod idempotency;
mod stats;
mod toml_out;
pub mod watch;
mod writer;

pub use stats::{DeliveryOutcome, DeliveryStats, StatsNow};
pub use writer::{Keyed, Store, Written};

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::Uri;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use url::Url;
use uuid::Uuid;

use crate::client_cert::ClientCertificate;
use crate::secret::{RandomError, Secret};
use crate::signing::{EndpointSigner, Scheme, UnknownScheme};
use idempotency::{IdempotencyKey, IdempotencyLog, Recorded};

/// The longest endpoint URL accepted (characters).
pub const MAX_URL_LEN: usize = 2048;
/// Most event types an endpoint may subscribe to (the API's limit, and the store's).
pub const MAX_EVENTS: usize = 10;
/// Longest event type name, in bytes.
pub const MAX_EVENT_LEN: usize = 255;
/// Longest description, in characters.
pub const MAX_DESCRIPTION: usize = 255;

/// The longest rotation overlap window: 7 days (`previousSecretExpiresIn` 0 to 604800).
pub const MAX_OVERLAP: Duration = Duration::from_secs(7 * 86_400);

pub use crate::signing::MAX_PREVIOUS_KEYS;

/// Runs `work` (reading, parsing, validating and keying a whole store: 0.7 s at 100,000
/// endpoints) on tokio's blocking pool. The runtime keeps serving deliveries meanwhile (with one
/// worker thread it would otherwise stall), and the snapshot's memory comes from that thread's
/// allocator arena rather than the one the delivery path allocates from: with glibc, a 100 MiB
/// store in the runtime thread's arena made each delivery's allocations measurably slower.
/// A panic in `work` is resumed here; a task the runtime cancelled (it is shutting down, and
/// nothing will wait for the answer) never completes instead of panicking.
pub async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => std::future::pending().await,
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

    /// Makes `next` the store, durably, before returning: `edit` says what changed since the
    /// snapshot in service (the file backend writes `next` whole; etcd writes the edited keys
    /// alone, with the idempotency record the edit carries).
    fn persist(
        &self,
        next: Arc<Snapshot>,
        edit: Arc<Edit>,
    ) -> BackendFuture<'_, Result<(), WriteError>>;

    /// Makes `snapshot` (with its delivery records as they are now) the whole store, durably:
    /// the periodic record flush. Only called when [`Backend::stores_delivery_records`].
    fn persist_snapshot(
        &self,
        snapshot: Arc<Snapshot>,
    ) -> BackendFuture<'_, Result<(), WriteError>> {
        let _ = snapshot;
        Box::pin(async { Ok(()) })
    }

    /// An idempotency key recorded in the backend by another writer (another replica) that the
    /// snapshot does not hold yet. The default: the snapshot holds every key.
    fn find_idempotent<'a>(
        &'a self,
        key: &'a IdempotencyKey,
    ) -> BackendFuture<'a, Result<Option<Arc<Recorded>>, WriteError>> {
        let _ = key;
        Box::pin(async { Ok(None) })
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

/// A backend's own error (etcd's client error, a timeout), kept whole with its cause chain.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// Why a write was not made. Nothing was changed, on disk or in memory (except where a variant
/// says otherwise).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No snapshot has been loaded yet (the backend was unreachable at start-up).
    #[error("the store has not been loaded yet; nothing was written, retry")]
    NotLoaded,
    /// The same idempotency key was sent with another request (422 `idempotency_key_reused`).
    #[error(
        "this Idempotency-Key was used with a different request; use a new key for a new request"
    )]
    IdempotencyKeyReused,
    /// The writer task is gone (the process is shutting down).
    #[error("the store writer has stopped; nothing was written")]
    WriterGone,
    /// The disk is full or over quota: nothing was written, the store file is as it was
    /// (507 `store_write_failed`).
    #[error("the store cannot be written (no space left); nothing was written: {0}")]
    NoSpace(#[source] std::io::Error),
    /// The new file was renamed into place but the directory could not be made durable: the
    /// change is on disk and in service, but may not survive a power loss.
    #[error(
        "the change was written and is in service, but syncing the store's directory failed: {0}"
    )]
    NotDurable(#[source] std::io::Error),
    #[error(
        "the store is read-only here ({0}); nothing was written: change it where it is managed"
    )]
    ReadOnly(String),
    /// Renaming the new file over the store failed with `EBUSY`: the store file is itself a
    /// mount point (`docker run -v ./webhooks.toml:/…/webhooks.toml`), which rename cannot
    /// replace. Nothing was written.
    #[error(
        "the store file is a mount of its own (a bind-mounted single file), which cannot be \
         replaced atomically; nothing was written: mount its directory instead"
    )]
    NotReplaceable,
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
    /// The store cannot be reached now, or refused the request; nothing was written (the API
    /// answers 503).
    #[error("the store is unavailable: {0}")]
    Unavailable(BackendError),
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
    /// The backend cannot be reached (etcd down or not answering); not a problem of the data.
    #[error("store {path} is unavailable: {cause}")]
    Unavailable { path: String, cause: BackendError },
    /// The backend answered with an error that is not about reachability (a message over the
    /// size limit, a permission or authentication failure): retrying will not help.
    #[error("store {path} refused the read: {cause}")]
    Refused { path: String, cause: BackendError },
    /// The file holds no endpoint while the snapshot in service has some: an empty or
    /// truncated file is refused unless it says `webhooks = []`.
    #[error("store {path} holds no endpoint (empty or truncated?); write `webhooks = []` to remove every endpoint on purpose")]
    Emptied { path: String },
    /// The writer task is gone (the process is shutting down).
    #[error("the store writer has stopped")]
    WriterGone,
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

/// What a write changes: endpoints put (new or replaced, by uuid) and uuids deleted, and the
/// idempotency record written with them.
#[derive(Debug, Default)]
pub struct Edit {
    puts: Vec<EndpointRecord>,
    deletes: Vec<Uuid>,
    /// Set by the writer for a write made under an idempotency key.
    record: Option<Arc<Recorded>>,
}

impl Edit {
    /// Puts `record` (a new endpoint, or the new version of one with its uuid).
    pub fn put(record: EndpointRecord) -> Self {
        Self {
            puts: vec![record],
            ..Self::default()
        }
    }

    /// Deletes the endpoint `uuid`.
    pub fn delete(uuid: Uuid) -> Self {
        Self {
            deletes: vec![uuid],
            ..Self::default()
        }
    }

    /// Nothing to change.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn puts(&self) -> &[EndpointRecord] {
        &self.puts
    }

    pub fn deletes(&self) -> &[Uuid] {
        &self.deletes
    }

    /// The idempotency record this write carries.
    pub fn recorded(&self) -> Option<&Arc<Recorded>> {
        self.record.as_ref()
    }

    /// Whether the edit changes no endpoint.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }
}

/// An immutable set of endpoints, ready to serve, in store order.
#[derive(Debug, Default)]
pub struct Snapshot {
    endpoints: Vec<Arc<Endpoint>>,
    by_uuid: HashMap<Uuid, usize>,
    /// Idempotency keys recorded with writes (never read on the delivery path).
    idempotency: Arc<IdempotencyLog>,
}

impl Snapshot {
    /// Builds a snapshot from records, checking each and refusing duplicate uuids. Every problem
    /// is collected, each prefixed by `locate(index, field)` (the record's position for messages).
    /// Endpoints that `previous` also holds keep its delivery records; one whose stored record
    /// is unchanged is carried over whole (keyed signer, upstream slot), not rebuilt.
    pub fn build(
        records: Vec<EndpointRecord>,
        previous: Option<&Snapshot>,
        locate: impl Fn(usize, &str) -> String,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut endpoints = Vec::with_capacity(records.len());
        let mut by_uuid = HashMap::with_capacity(records.len());
        for (index, record) in records.into_iter().enumerate() {
            let old = Uuid::parse_str(&record.uuid)
                .ok()
                .and_then(|uuid| previous?.get(&uuid));
            if let Some(old) = old.filter(|old| old.holds(&record)) {
                if by_uuid.insert(old.uuid, endpoints.len()).is_some() {
                    problems.push(format!(
                        "{}: duplicate uuid {}",
                        locate(index, "uuid"),
                        old.uuid
                    ));
                }
                endpoints.push(Arc::clone(old));
                continue;
            }
            let carried = old.map(|endpoint| Arc::clone(&endpoint.stats));
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
            Ok(Self {
                endpoints,
                by_uuid,
                idempotency: previous
                    .map(|p| Arc::clone(&p.idempotency))
                    .unwrap_or_default(),
            })
        } else {
            Err(problems)
        }
    }

    /// This snapshot with `edit` made: only the endpoints it puts are built (carrying their
    /// delivery records); every other endpoint is shared as it is. Problems name the uuid.
    pub fn with_edit(&self, edit: &Edit) -> Result<Self, Vec<String>> {
        let mut endpoints = self.endpoints.clone();
        let mut by_uuid = self.by_uuid.clone();
        if !edit.deletes.is_empty() {
            endpoints.retain(|endpoint| !edit.deletes.contains(&endpoint.uuid));
            by_uuid = endpoints
                .iter()
                .enumerate()
                .map(|(index, endpoint)| (endpoint.uuid, index))
                .collect();
        }
        let mut problems = Vec::new();
        for record in &edit.puts {
            let old = Uuid::parse_str(&record.uuid)
                .ok()
                .and_then(|uuid| self.get(&uuid));
            let carried = old.map(|endpoint| Arc::clone(&endpoint.stats));
            match Endpoint::from_record(record.clone(), carried) {
                Ok(endpoint) => match by_uuid.get(&endpoint.uuid) {
                    Some(&index) => endpoints[index] = Arc::new(endpoint),
                    None => {
                        by_uuid.insert(endpoint.uuid, endpoints.len());
                        endpoints.push(Arc::new(endpoint));
                    }
                },
                Err((field, message)) => {
                    problems.push(format!("webhooks[{}].{field}: {message}", record.uuid))
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            endpoints,
            by_uuid,
            idempotency: Arc::clone(&self.idempotency),
        })
    }

    /// The idempotency keys recorded with writes.
    pub fn idempotency(&self) -> &IdempotencyLog {
        &self.idempotency
    }

    /// Records an idempotency key in this (not yet shared) snapshot.
    pub fn record_idempotent(&mut self, recorded: Arc<Recorded>) {
        Arc::make_mut(&mut self.idempotency).insert(recorded);
    }

    /// This snapshot holding `log` as its idempotency keys (a backend's load).
    pub fn with_idempotency(mut self, log: IdempotencyLog) -> Self {
        self.idempotency = Arc::new(log);
        self
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
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
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
    /// Keys replaced by rotations with an overlap window, newest first, each still signing until
    /// its entry in `previous_secrets_expire_at` (only for schemes that allow a window; at most
    /// [`MAX_PREVIOUS_KEYS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_secrets: Vec<Secret>,
    /// When each of `previous_secrets` stops being used (RFC 3339), in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_secrets_expire_at: Vec<String>,
    /// The one-window form earlier versions wrote: still read (as the last previous secret),
    /// never written.
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
    /// The client certificate chain presented to the customer (mutual TLS; PEM, leaf first),
    /// with `client_private_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// The client certificate's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_private_key: Option<Secret>,
}

impl EndpointRecord {
    /// The record without delivery records (what etcd stores, what two versions of an
    /// endpoint's configuration are compared by).
    pub fn without_delivery_records(&self) -> Self {
        Self {
            deliveries_count: 0,
            last_delivery_at: None,
            last_delivery_status: None,
            consecutive_failures: 0,
            ..self.clone()
        }
    }
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
    /// The previous keys of rotation overlap windows (possibly already expired), newest first,
    /// each with the instant it stops being used.
    pub previous_secrets: Vec<(Secret, OffsetDateTime)>,
    /// The keyed signer (current and previous keys); each previous one is used while a
    /// delivery's timestamp is before its expiry.
    pub signer: EndpointSigner,
    /// The secret fields as stored, when the store is encrypted (see [`crypt::Sealer`]): kept so
    /// rewriting the store does not re-encrypt an endpoint that did not change.
    pub sealed: arc_swap::ArcSwapOption<crypt::Sealed>,
    pub created_at: Option<OffsetDateTime>,
    pub updated_at: Option<OffsetDateTime>,
    /// A slot the delivery path fills on the endpoint's first delivery (the proxy keeps its
    /// upstream origin there, so later deliveries look nothing up). The store does not know
    /// what it holds; it lives as long as this endpoint is carried from snapshot to snapshot.
    pub route: OnceLock<Arc<dyn Any + Send + Sync>>,
    /// The client certificate deliveries present (mutual TLS), checked.
    pub client_certificate: Option<Arc<ClientCertificate>>,
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
        if record.events.len() > MAX_EVENTS {
            return Err(("events", format!("at most {MAX_EVENTS} event types")));
        }
        if record
            .events
            .iter()
            .any(|e| e.is_empty() || e.len() > MAX_EVENT_LEN)
        {
            return Err((
                "events",
                format!("event types are 1 to {MAX_EVENT_LEN} characters"),
            ));
        }
        let all_events = record.events.iter().any(|e| e == "*");
        if all_events && record.events.len() > 1 {
            return Err(("events", "\"*\" stands alone".into()));
        }
        if record.description.chars().count() > MAX_DESCRIPTION {
            return Err((
                "description",
                format!("at most {MAX_DESCRIPTION} characters"),
            ));
        }
        let status = match record.status.as_str() {
            "active" => Status::Active,
            "disabled" => Status::Disabled,
            "auto_disabled" => Status::AutoDisabled,
            _ => {
                return Err((
                    "status",
                    "unknown status (expected active, disabled or auto_disabled)".into(),
                ))
            }
        };
        let scheme: Scheme = record
            .scheme
            .parse()
            .map_err(|err: UnknownScheme| ("scheme", err.to_string()))?;
        let mut signer = EndpointSigner::new(scheme, &record.secret)
            .map_err(|err| ("secret", format!("{err} for the {scheme} scheme")))?;
        let previous_secrets = previous_secrets_of(&record)?;
        for (previous, expires_at) in &previous_secrets {
            let expires_at = u64::try_from(expires_at.unix_timestamp()).unwrap_or(0);
            signer = signer
                .with_previous(previous, expires_at)
                .map_err(|err| ("previous_secrets", format!("{err} for the {scheme} scheme")))?;
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
        let client_certificate = match (&record.client_certificate, &record.client_private_key) {
            (None, None) => None,
            (Some(chain), Some(key)) => Some(Arc::new(
                ClientCertificate::parse(chain, key)
                    .map_err(|err| ("client_certificate", err.to_string()))?,
            )),
            (Some(_), None) => {
                return Err((
                    "client_private_key",
                    "is required with client_certificate".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "client_certificate",
                    "is missing, but client_private_key is set".into(),
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
            previous_secrets,
            signer,
            sealed: arc_swap::ArcSwapOption::empty(),
            created_at,
            updated_at,
            stats,
            route: OnceLock::new(),
            client_certificate,
        })
    }

    /// Whether `record` is this endpoint's stored record (delivery records aside): a reload
    /// then carries the endpoint over as it is.
    pub fn holds(&self, record: &EndpointRecord) -> bool {
        self.record_with(&StatsNow::default()) == record.without_delivery_records()
    }

    /// The record to store, with the delivery records as they are now.
    pub fn record_now(&self) -> EndpointRecord {
        self.record_with(&self.stats.now())
    }

    /// The record to store, with `stats` as its delivery records: the one place an endpoint
    /// becomes its stored form (the store file, etcd). Times are written in the store's form
    /// (UTC, `Z`, whole seconds) and uuids in lowercase.
    pub fn record_with(&self, stats: &StatsNow) -> EndpointRecord {
        EndpointRecord {
            uuid: self.uuid.to_string(),
            company: self.company.to_string(),
            url: self.url.clone(),
            events: self.events.clone(),
            description: self.description.clone(),
            status: self.status.as_str().to_owned(),
            scheme: self.scheme.as_str().to_owned(),
            secret: self.secret.clone(),
            previous_secrets: self
                .previous_secrets
                .iter()
                .map(|(s, _)| s.clone())
                .collect(),
            previous_secrets_expire_at: self
                .previous_secrets
                .iter()
                .map(|(_, at)| format_time(*at))
                .collect(),
            previous_secret: None,
            previous_secret_expires_at: None,
            created_at: self.created_at.map(format_time),
            updated_at: self.updated_at.map(format_time),
            deliveries_count: stats.deliveries,
            last_delivery_at: stats.last_at.map(format_time),
            last_delivery_status: stats.last_outcome.map(|o| o.as_str().to_owned()),
            consecutive_failures: stats.consecutive_failures,
            client_certificate: self
                .client_certificate
                .as_ref()
                .map(|cert| cert.certificate_pem.clone()),
            client_private_key: self
                .client_certificate
                .as_ref()
                .map(|cert| cert.private_key_pem.clone()),
        }
    }

    /// The Ed25519 public key receivers verify with (`whpk_<base64>`), for the
    /// `standard-webhooks-ed25519` scheme; `None` for the HMAC schemes.
    pub fn public_key(&self) -> Option<String> {
        self.signer.public_key()
    }

    /// When the last overlap window closes, while one is open at `now` (the API's
    /// `previousSecretExpiresAt`); `None` when there is no window or every one has closed.
    pub fn overlap_expires_at(&self, now: SystemTime) -> Option<OffsetDateTime> {
        self.open_windows(now).into_iter().max()
    }

    /// When each previous key stops signing, for the windows open at `now`, newest key first.
    pub fn open_windows(&self, now: SystemTime) -> Vec<OffsetDateTime> {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        self.previous_secrets
            .iter()
            .map(|(_, at)| *at)
            .filter(|at| u64::try_from(at.unix_timestamp()).unwrap_or(0) > now)
            .collect()
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
            .field("previous_secrets", &self.previous_secrets.len())
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
    /// Another window would make more than [`MAX_PREVIOUS_KEYS`] previous keys (422).
    #[error("at most {MAX_PREVIOUS_KEYS} previous secrets can sign at once: revoke them (revoke-previous) or wait for a window to end")]
    TooManyPrevious,
    /// A caller-supplied secret that is not in the scheme's format (422; never quotes it).
    #[error("secret: {0} for the {1} scheme")]
    InvalidSecret(crate::signing::KeyError, Scheme),
    /// The stored record's previous keys do not parse.
    #[error("the stored previous secrets are invalid: {0}")]
    Stored(String),
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// Rotates a record's secret at `now`: `supplied` (checked against the scheme's format) or a
/// new secret in the scheme's format from the OS CSPRNG. With `expires_in` zero every old key
/// stops signing at once (the current one and any previous ones: an immediate rotation is what
/// a leaked key calls for); otherwise the current key joins the previous keys until
/// `now + expires_in` (whole seconds), beside those whose windows are still open (expired ones
/// are dropped), at most [`MAX_PREVIOUS_KEYS`] of them. `updated_at` becomes `now`. Pure apart
/// from the randomness: the caller persists the result.
pub fn rotate(
    record: &EndpointRecord,
    expires_in: Duration,
    now: OffsetDateTime,
    supplied: Option<Secret>,
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
    next.secret = match supplied {
        Some(secret) => {
            scheme
                .check_secret(&secret)
                .map_err(|err| RotateError::InvalidSecret(err, scheme))?;
            secret
        }
        None => scheme.generate_secret()?,
    };
    next.previous_secret = None;
    next.previous_secret_expires_at = None;
    if expires_in.is_zero() {
        next.previous_secrets.clear();
        next.previous_secrets_expire_at.clear();
    } else {
        let old = previous_secrets_of(record).map_err(|(_, why)| RotateError::Stored(why))?;
        let expires_at = now + time::Duration::seconds(expires_in.as_secs() as i64);
        let mut kept = vec![(record.secret.clone(), expires_at)];
        kept.extend(old.into_iter().filter(|(_, at)| *at > now));
        if kept.len() > MAX_PREVIOUS_KEYS {
            return Err(RotateError::TooManyPrevious);
        }
        next.previous_secrets = kept.iter().map(|(s, _)| s.clone()).collect();
        next.previous_secrets_expire_at = kept.iter().map(|(_, at)| format_time(*at)).collect();
    }
    next.updated_at = Some(format_time(now));
    Ok(next)
}

/// Ends every overlap window of a record now: only the current key signs from here on.
pub fn revoke_previous(record: &EndpointRecord, now: OffsetDateTime) -> EndpointRecord {
    let mut next = record.clone();
    next.previous_secrets.clear();
    next.previous_secrets_expire_at.clear();
    next.previous_secret = None;
    next.previous_secret_expires_at = None;
    next.updated_at = Some(format_time(now));
    next
}

/// A record's previous keys with their expiry, newest first: `previous_secrets` with
/// `previous_secrets_expire_at`, then the legacy `previous_secret`; the field at fault otherwise.
fn previous_secrets_of(
    record: &EndpointRecord,
) -> Result<Vec<(Secret, OffsetDateTime)>, (&'static str, String)> {
    if record.previous_secrets.len() != record.previous_secrets_expire_at.len() {
        return Err((
            "previous_secrets_expire_at",
            format!(
                "must list one expiry per previous secret ({} secrets, {} expiries)",
                record.previous_secrets.len(),
                record.previous_secrets_expire_at.len()
            ),
        ));
    }
    let mut previous = Vec::with_capacity(record.previous_secrets.len() + 1);
    for (secret, at) in record
        .previous_secrets
        .iter()
        .zip(&record.previous_secrets_expire_at)
    {
        let at = parse_time(Some(at))
            .map_err(|why| ("previous_secrets_expire_at", why))?
            .expect("a time was given");
        previous.push((secret.clone(), at));
    }
    let legacy_expiry = parse_time(record.previous_secret_expires_at.as_deref())
        .map_err(|why| ("previous_secret_expires_at", why))?;
    match (&record.previous_secret, legacy_expiry) {
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
        (Some(secret), Some(at)) => previous.push((secret.clone(), at)),
    }
    if previous.len() > MAX_PREVIOUS_KEYS {
        return Err((
            "previous_secrets",
            format!("at most {MAX_PREVIOUS_KEYS} previous secrets"),
        ));
    }
    Ok(previous)
}

/// Parses an endpoint URL: http or https, a host, no userinfo, at most 2048 characters.
/// Whether plain http and the host's addresses are allowed is the egress policy's call.
pub fn parse_endpoint_url(text: &str) -> Result<Url, String> {
    if text.len() > MAX_URL_LEN {
        return Err(format!("longer than {MAX_URL_LEN} characters"));
    }
    let url = Url::parse(text).map_err(|err| format!("not a valid URL ({err})"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err("the scheme is not https".into());
    }
    if url.port() == Some(0) {
        return Err("port 0 cannot be connected to (ports are 1 to 65535)".into());
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

pub(crate) fn parse_time(text: Option<&str>) -> Result<Option<OffsetDateTime>, String> {
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
            previous_secrets: Vec::new(),
            previous_secrets_expire_at: Vec::new(),
            previous_secret: None,
            previous_secret_expires_at: None,
            created_at: Some("2026-02-18T10:00:00Z".into()),
            updated_at: None,
            deliveries_count: 0,
            last_delivery_at: None,
            last_delivery_status: None,
            consecutive_failures: 0,
            client_certificate: None,
            client_private_key: None,
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
        stored.previous_secrets = vec![Scheme::Stripe.generate_secret().unwrap()];
        stored.previous_secrets_expire_at = vec!["2026-02-19T10:00:00Z".into()];
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
        r.secret = scheme.generate_secret().unwrap();
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
            r.previous_secret = Some(scheme.generate_secret().unwrap());
            r.previous_secret_expires_at = Some(future.clone());
            let (field, message) = problem(r);
            assert_eq!(field, "previous_secrets");
            assert!(message.contains("allows no previous secret"), "{message}");
        }
        let scheme = Scheme::StandardWebhooks;
        let mut r = with_scheme(scheme);
        r.previous_secret = Some(scheme.generate_secret().unwrap());
        assert_eq!(problem(r.clone()).0, "previous_secret_expires_at");
        r.previous_secret_expires_at = Some("tomorrow".into());
        assert_eq!(problem(r.clone()).0, "previous_secret_expires_at");
        r.previous_secret_expires_at = Some(future.clone());
        let open = Endpoint::from_record(r.clone(), None).unwrap();
        assert!(open.overlap_expires_at(SystemTime::now()).is_some());
        r.previous_secret_expires_at = Some(past);
        let closed = Endpoint::from_record(r.clone(), None).unwrap();
        assert_eq!(closed.overlap_expires_at(SystemTime::now()), None);
        r.previous_secret = Some(Scheme::Storno.generate_secret().unwrap());
        assert_eq!(problem(r.clone()).0, "previous_secrets");
        r.previous_secret = None;
        r.previous_secret_expires_at = Some(future);
        assert_eq!(problem(r).0, "previous_secret");
    }

    #[test]
    fn rotate_moves_the_old_secret_to_previous_for_the_window() {
        let now = time::macros::datetime!(2026-02-18 10:00:00.75 UTC);
        let original = with_scheme(Scheme::Stripe);
        let rotated = rotate(&original, Duration::from_secs(3600), now, None).unwrap();
        assert_ne!(rotated.secret, original.secret);
        assert_eq!(rotated.previous_secrets, vec![original.secret.clone()]);
        assert_eq!(
            rotated.previous_secrets_expire_at,
            vec!["2026-02-18T11:00:00Z"]
        );
        assert_eq!(rotated.updated_at.as_deref(), Some("2026-02-18T10:00:00Z"));
        assert!(Endpoint::from_record(rotated.clone(), None).is_ok());

        // A second rotation with a window keeps the first window open beside its own.
        let again = rotate(&rotated, Duration::from_secs(60), now, None).unwrap();
        assert_eq!(
            again.previous_secrets,
            vec![rotated.secret.clone(), original.secret.clone()]
        );
        assert_eq!(
            again.previous_secrets_expire_at,
            vec!["2026-02-18T10:01:00Z", "2026-02-18T11:00:00Z"]
        );
        // Windows that ended are dropped at the next rotation.
        let later = now + time::Duration::seconds(120);
        let third = rotate(&again, Duration::from_secs(60), later, None).unwrap();
        assert_eq!(
            third.previous_secrets,
            vec![again.secret.clone(), original.secret.clone()]
        );
        // Without a window, every old key stops at once.
        let immediate = rotate(&third, Duration::ZERO, now, None).unwrap();
        assert!(immediate.previous_secrets.is_empty());
        assert!(immediate.previous_secrets_expire_at.is_empty());
        assert_ne!(immediate.secret, third.secret);
        // revoke-previous ends every window and keeps the current key.
        let revoked = revoke_previous(&third, now);
        assert!(revoked.previous_secrets.is_empty());
        assert_eq!(revoked.secret, third.secret);
    }

    #[test]
    fn ten_previous_keys_at_most_and_supplied_secrets_are_checked() {
        let now = OffsetDateTime::now_utc();
        let mut r = with_scheme(Scheme::StandardWebhooks);
        for _ in 0..MAX_PREVIOUS_KEYS {
            r = rotate(&r, Duration::from_secs(600), now, None).unwrap();
        }
        assert_eq!(r.previous_secrets.len(), MAX_PREVIOUS_KEYS);
        let endpoint = Endpoint::from_record(r.clone(), None).unwrap();
        assert_eq!(endpoint.open_windows(SystemTime::now()).len(), 10);
        assert!(matches!(
            rotate(&r, Duration::from_secs(600), now, None),
            Err(RotateError::TooManyPrevious)
        ));
        // An immediate rotation is always allowed.
        assert!(rotate(&r, Duration::ZERO, now, None).is_ok());
        let mut eleven = r.clone();
        eleven
            .previous_secrets
            .push(Scheme::StandardWebhooks.generate_secret().unwrap());
        eleven
            .previous_secrets_expire_at
            .push("2999-01-01T00:00:00Z".into());
        assert_eq!(problem(eleven).0, "previous_secrets");

        let supplied = Scheme::StandardWebhooks.generate_secret().unwrap();
        let rotated = rotate(&r, Duration::ZERO, now, Some(supplied.clone())).unwrap();
        assert_eq!(rotated.secret, supplied);
        let bad = Secret::new("whsec_not-base64-at-all!!");
        let err = rotate(&r, Duration::ZERO, now, Some(bad)).unwrap_err();
        assert!(matches!(err, RotateError::InvalidSecret(..)));
        assert!(!err.to_string().contains("not-base64"), "{err}");
    }

    #[test]
    fn rotate_generates_the_schemes_format_and_refuses_bad_windows() {
        let now = OffsetDateTime::now_utc();
        for scheme in Scheme::ALL {
            let rotated = rotate(&with_scheme(scheme), Duration::ZERO, now, None).unwrap();
            assert_eq!(scheme.check_secret(&rotated.secret), Ok(()), "{scheme}");
            let windowed = rotate(&with_scheme(scheme), Duration::from_secs(1), now, None);
            assert_eq!(windowed.is_ok(), scheme.allows_overlap(), "{scheme}");
        }
        let err = rotate(
            &with_scheme(Scheme::Github),
            Duration::from_secs(1),
            now,
            None,
        )
        .unwrap_err();
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
            None,
        );
        assert!(matches!(too_long, Err(RotateError::WindowTooLong)));
        assert!(rotate(&with_scheme(Scheme::Stripe), MAX_OVERLAP, now, None).is_ok());
    }

    #[test]
    fn records_never_show_their_secrets_in_debug() {
        let rotated = rotate(
            &with_scheme(Scheme::StandardWebhooks),
            Duration::from_secs(60),
            OffsetDateTime::now_utc(),
            None,
        )
        .unwrap();
        let previous = rotated.previous_secrets[0].clone();
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
