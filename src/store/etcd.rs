//! The etcd backend (SPEC section 9): one store shared by a fleet of replicas.
//!
//! Layout: one key per endpoint, `<prefix>webhooks/<uuid>`, whose value is the endpoint's
//! [`EndpointRecord`] as JSON (TOML is read too). Delivery records never leave the replica: they
//! are stripped before a write and [`Backend::stores_delivery_records`] is `false`.
//!
//! Invariants:
//! - Start-up reads the prefix at one revision `R`; the watch starts at `R + 1`, so no change is
//!   missed. Each watch response (all events of one revision arrive together) builds a new
//!   snapshot, carrying delivery records, and swaps it in.
//! - A write is one transaction holding only the keys that changed (put or delete), each guarded
//!   by `mod_revision == ` the revision this replica last saw for it (`create_revision == 0` for
//!   a new key). If another replica changed one first, nothing is written and the write fails
//!   with [`WriteError::Contended`] (409). A write returns after etcd committed it.
//! - This replica's view (`State`) is changed only under the store's write lock (by `persist`,
//!   `load`, or a watch response through [`Store::apply`]), and an event is applied only if its
//!   revision is newer than what is known for its key (deleted keys are remembered), so echoes of
//!   this replica's own writes and stale events change nothing.
//! - With a keyring, every value's secrets are sealed ([`super::crypt`]) before it is written
//!   and opened when it is read (at load and for each watch event); [`EtcdBackend::rekey`]
//!   re-encrypts the values not under the primary key, in guarded transactions.
//! - When etcd cannot be reached, deliveries go on with the last snapshot; writes fail with
//!   [`WriteError::Unavailable`] (503); the watch retries with backoff and, once back, reloads the
//!   whole prefix (also after a compaction) before watching again.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions,
    TlsOptions, Txn, TxnOp, WatchOptions,
};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::crypt::{RekeyError, Sealer, REKEY_ATTEMPTS};
use super::idempotency::{self, IdempotencyKey, Recorded, StoredIdempotency};
use super::{
    Backend, BackendError, BackendFuture, Edit, Endpoint, EndpointRecord, LoadError, Snapshot,
    Store, WriteError,
};
use crate::config::EtcdConfig;
use crate::error_chain::error_chain;
use crate::metrics::StoreBackendMetrics;

/// How long one etcd request may take before the store counts as unavailable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The watch's first retry delay after a loss; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// etcd refuses transactions with more operations than this by default (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// The store in etcd, as one replica sees it.
pub struct EtcdBackend {
    client: Client,
    /// `<prefix>webhooks/`: every endpoint key starts with it.
    keys: String,
    /// What [`LoadError`]s name: `etcd <endpoints> <prefix>`.
    label: String,
    /// `[store.etcd] page_size` and `max_message_bytes`.
    page_size: u32,
    max_message_bytes: usize,
    /// Shared with the writer task, which applies watch events to it.
    state: Arc<Mutex<State>>,
    metrics: Option<StoreBackendMetrics>,
    /// How secrets are kept in the values.
    sealer: Sealer,
}

/// This replica's view of the prefix.
#[derive(Default)]
struct State {
    /// The revision of the last full read (0: never read).
    revision: i64,
    /// By full key. A `None` record remembers a deletion, so an older event cannot revive it.
    entries: HashMap<String, Entry>,
}

struct Entry {
    /// The revision of the last change this replica saw for the key.
    mod_revision: i64,
    /// The record as stored (no delivery records); `None` once deleted.
    record: Option<EndpointRecord>,
}

/// One key as read: its revision and its record, or why it was refused.
struct ReadKey {
    key: String,
    mod_revision: i64,
    record: Result<EndpointRecord, String>,
    /// Whether the value is all under the primary key (or there is no keyring).
    current: bool,
}

impl EtcdBackend {
    /// A client for `config` (no request is made unless credentials must be exchanged).
    /// `metrics` receives `up`, reconnects and endpoint counts; `None` for one-shot commands.
    pub async fn connect(
        config: &EtcdConfig,
        metrics: Option<StoreBackendMetrics>,
    ) -> Result<Self, LoadError> {
        let label = format!("etcd {} {}", config.endpoints.join(","), config.prefix);
        let unavailable = |err: EtcdError| err.into_load_error(label.clone());
        let mut options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some(file) = &config.ca_file {
            let pem = std::fs::read(file).map_err(|source| LoadError::Read {
                path: file.display().to_string(),
                source,
            })?;
            options =
                options.with_tls(TlsOptions::new().ca_certificate(Certificate::from_pem(pem)));
        }
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            // etcd's tokens expire (simple tokens after 5 minutes idle, and at every restart of
            // the member): a refused token is exchanged again and the request retried once.
            // Without this a replica never recovered from an etcd restart with auth on.
            options = options
                .with_user(user.clone(), password.expose())
                .with_auto_token_refresh(true);
        }
        let client = with_timeout(Client::connect(config.endpoints.clone(), Some(options)))
            .await
            .map_err(unavailable)?;
        Ok(Self {
            client,
            keys: format!("{}webhooks/", config.prefix),
            label,
            page_size: config.page_size,
            max_message_bytes: config.max_message_bytes,
            state: Arc::new(Mutex::new(State::default())),
            metrics,
            sealer: Sealer::plaintext(),
        })
    }

    /// This backend sealing and opening secrets with `sealer`.
    pub fn with_sealer(mut self, sealer: Sealer) -> Self {
        self.sealer = sealer;
        self
    }

    /// The key that holds the endpoint `uuid`.
    pub fn key_of(&self, uuid: &str) -> String {
        format!("{}{uuid}", self.keys)
    }

    /// The key that holds an idempotency record: `<prefix>idempotency/<company>/<sha256(key)>`
    /// (a client's key may hold any character).
    fn idempotency_key_of(&self, key: &IdempotencyKey) -> String {
        use sha2::Digest;
        format!(
            "{}idempotency/{}/{}",
            self.prefix(),
            key.company,
            hex::encode(sha2::Sha256::digest(key.key.as_bytes()))
        )
    }

    /// `<prefix>`: the endpoint keys' prefix without `webhooks/`.
    fn prefix(&self) -> &str {
        self.keys.strip_suffix("webhooks/").unwrap_or(&self.keys)
    }

    /// A lease of [`idempotency::TTL`]: etcd forgets the record when it ends.
    async fn idempotency_lease(&self) -> Result<i64, WriteError> {
        let mut lease = self.client.lease_client();
        let ttl = i64::try_from(idempotency::TTL.as_secs()).unwrap_or(i64::MAX);
        with_timeout(lease.grant(ttl, None))
            .await
            .map(|granted| granted.id())
            .map_err(WriteError::from)
    }

    /// The records stored now (strictly: any key that does not hold a valid endpoint is an error).
    pub async fn records(&self) -> Result<Vec<EndpointRecord>, LoadError> {
        let (_, read) = self.read_all().await?;
        let mut problems = Vec::new();
        let mut records = Vec::new();
        for key in read {
            match key.record {
                Ok(record) => records.push(record),
                Err(why) => problems.push(format!("{}: {why}", key.key)),
            }
        }
        if !problems.is_empty() {
            return Err(self.invalid(problems));
        }
        sort_records(&mut records);
        Ok(records)
    }

    /// Writes `records` (created or overwritten, never deleting others), in transactions of at
    /// most [`MAX_TXN_OPS`] keys; returns how many were written. For `hooksign store import`.
    pub async fn import(&self, records: &[EndpointRecord]) -> Result<usize, WriteError> {
        let mut written = 0;
        for chunk in records.chunks(MAX_TXN_OPS) {
            let mut ops = Vec::with_capacity(chunk.len());
            for record in chunk {
                ops.push(TxnOp::put(
                    self.key_of(&record.uuid),
                    encode(record, &self.sealer)?.to_vec(),
                    None,
                ));
            }
            let mut kv = self.client.kv_client();
            with_timeout(kv.txn(Txn::new().and_then(ops)))
                .await
                .map_err(WriteError::from)?;
            written += chunk.len();
        }
        Ok(written)
    }

    /// `hooksign store rekey`: re-encrypts under the primary key every endpoint value that is not
    /// all under it (plaintext ones too), then every recorded idempotency answer, in transactions
    /// of at most [`MAX_TXN_OPS`] keys. Each key is guarded by the revision it was read at, so a
    /// change another writer made meanwhile is never overwritten: that key is read again in the
    /// next pass. A crash loses nothing (each transaction is atomic; a rerun does what is left).
    /// `progress(done, total)` is called after every transaction; returns how many were rewritten.
    pub async fn rekey(&self, mut progress: impl FnMut(usize, usize)) -> Result<usize, RekeyError> {
        let Some(primary) = self.sealer.primary() else {
            return Err(RekeyError::NoKeyring);
        };
        let mut done = 0;
        for _ in 0..REKEY_ATTEMPTS {
            let (_, read) = self.read_all().await?;
            let mut problems = Vec::new();
            let mut stale = Vec::new();
            for key in read {
                match key.record {
                    Ok(record) if !key.current => stale.push((key.key, key.mod_revision, record)),
                    Ok(_) => {}
                    Err(why) => problems.push(format!("{}: {why}", key.key)),
                }
            }
            if !problems.is_empty() {
                return Err(self.invalid(problems).into());
            }
            let answers = self.stale_answers(&primary).await?;
            if stale.is_empty() && answers.is_empty() {
                progress(done, done);
                return Ok(done);
            }
            let total = done + stale.len() + answers.len();
            progress(done, total);
            for chunk in stale.chunks(MAX_TXN_OPS) {
                let mut compares = Vec::with_capacity(chunk.len());
                let mut ops = Vec::with_capacity(chunk.len());
                for (key, revision, record) in chunk {
                    compares.push(Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        *revision,
                    ));
                    ops.push(TxnOp::put(
                        key.clone(),
                        encode(record, &self.sealer)?.to_vec(),
                        None,
                    ));
                }
                if self.guarded(compares, ops).await? {
                    done += chunk.len();
                    progress(done, total);
                }
            }
            for (key, revision, lease, stored) in answers {
                let sealed = self
                    .sealer
                    .seal_idempotency(stored)
                    .map_err(|err| WriteError::Serialize(err.to_string()))?;
                let value = serde_json::to_vec(&sealed)
                    .map(Zeroizing::new)
                    .map_err(|err| WriteError::Serialize(err.to_string()))?;
                let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
                let compare = Compare::mod_revision(key.clone(), CompareOp::Equal, revision);
                if self
                    .guarded(
                        vec![compare],
                        vec![TxnOp::put(key, value.to_vec(), options)],
                    )
                    .await?
                {
                    done += 1;
                    progress(done, total);
                }
            }
        }
        Err(RekeyError::Contended(REKEY_ATTEMPTS))
    }

    /// Runs one guarded transaction; whether its guards held.
    async fn guarded(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<bool, WriteError> {
        let mut kv = self.client.kv_client();
        let response = with_timeout(kv.txn(Txn::new().when(compares).and_then(ops)))
            .await
            .map_err(WriteError::from)?;
        Ok(response.succeeded())
    }

    /// The recorded idempotency answers whose body is not under `primary` (key, revision,
    /// lease, the record opened); records that do not open are left to expire (logged).
    async fn stale_answers(
        &self,
        primary: &str,
    ) -> Result<Vec<(String, i64, i64, StoredIdempotency)>, WriteError> {
        let prefix = format!("{}idempotency/", self.prefix());
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(self.max_message_bytes);
        let response = with_timeout(kv.get(prefix, Some(GetOptions::new().with_prefix())))
            .await
            .map_err(WriteError::from)?;
        let mut stale = Vec::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Ok(stored) = serde_json::from_slice::<StoredIdempotency>(kv.value()) else {
                continue;
            };
            if crate::keyring::key_name_of(&stored.body) == Some(primary) {
                continue;
            }
            match self.sealer.open_idempotency(stored) {
                Ok(opened) => stale.push((key, kv.mod_revision(), kv.lease(), opened)),
                Err(why) => {
                    tracing::warn!(key = %key, problem = %why, "idempotency record not re-encrypted; it expires within 24 h")
                }
            }
        }
        Ok(stale)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn invalid(&self, problems: Vec<String>) -> LoadError {
        LoadError::Invalid {
            path: self.label.clone(),
            problems,
        }
    }

    /// Reads every key under the prefix at one revision: pages of `[store.etcd] page_size`
    /// keys, the first at the current revision `R` and every later one at `R` too, so the whole
    /// read is one consistent view however many pages it takes (and however large the store is:
    /// no reply has to hold it all).
    async fn read_all(&self) -> Result<(i64, Vec<ReadKey>), LoadError> {
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes);
        let end = prefix_end(self.keys.as_bytes());
        let mut start = self.keys.clone().into_bytes();
        let mut revision = 0;
        let mut read = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(i64::from(self.page_size));
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let response = with_timeout(kv.get(start.clone(), Some(options)))
                .await
                .map_err(|err| err.into_load_error(self.label.clone()))?;
            if revision == 0 {
                revision = response.header().map_or(0, |header| header.revision());
            }
            let page = response.kvs();
            for kv in page {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let decoded = match key.strip_prefix(&self.keys) {
                    Some(uuid) => decode(uuid, kv.value(), &self.sealer),
                    None => Err("not an endpoint key".to_owned()),
                };
                let (record, current) = match decoded {
                    Ok((record, current)) => (Ok(record), current),
                    Err(why) => (Err(why), true),
                };
                read.push(ReadKey {
                    key,
                    mod_revision: kv.mod_revision(),
                    record,
                    current,
                });
            }
            match page.last() {
                Some(last) if page.len() as u64 >= u64::from(self.page_size) => {
                    // The next page starts just after the last key read.
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok((revision, read)),
            }
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The view's key prefix and label, for applying watch events on the writer task.
struct Follow {
    keys: String,
    label: String,
    state: Arc<Mutex<State>>,
    sealer: Sealer,
}

impl Follow {
    /// Applies one watch response's events to the view; the snapshot to swap in if anything
    /// changed. Only the endpoints the events touch are rebuilt ([`Snapshot::with_edit`]).
    fn apply_events(&self, events: &[etcd_client::Event], current: &Snapshot) -> Option<Snapshot> {
        let mut state = lock(&self.state);
        let mut edit = Edit::none();
        for event in events {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(uuid) = key.strip_prefix(&self.keys) else {
                continue;
            };
            let revision = kv.mod_revision();
            let entry = state.entries.entry(key.clone()).or_insert(Entry {
                mod_revision: 0,
                record: None,
            });
            if revision <= entry.mod_revision {
                continue; // this replica's own write, or older than what it knows
            }
            entry.mod_revision = revision;
            match event.event_type() {
                EventType::Delete => {
                    entry.record = None;
                    if let Ok(uuid) = uuid.parse() {
                        edit.deletes.push(uuid);
                    }
                }
                EventType::Put => match decode(uuid, kv.value(), &self.sealer) {
                    Ok((record, _)) => {
                        entry.record = Some(record.clone());
                        edit.puts.push(record);
                    }
                    Err(why) => {
                        // The last good record stays in service; a write through the admin API
                        // (which compares against this revision) can repair the key.
                        tracing::error!(key = %key, problem = %why, "etcd value rejected; keeping the endpoint's last good record");
                    }
                },
            }
        }
        drop(state);
        if edit.is_empty() {
            return None;
        }
        // A put and a later delete of one key in the same response: the delete wins.
        let deleted = edit.deletes.clone();
        edit.puts
            .retain(|record| !deleted.iter().any(|uuid| uuid.to_string() == record.uuid));
        match current.with_edit(&edit) {
            Ok(snapshot) => Some(snapshot),
            Err(problems) => {
                tracing::error!(label = %self.label, problems = %problems.join("; "), "etcd change rejected; keeping the previous snapshot");
                None
            }
        }
    }
}

impl EtcdBackend {
    fn set_up(&self, up: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.up.set(i64::from(up));
        }
    }

    fn revision(&self) -> i64 {
        self.state().revision
    }

    /// Follows the prefix from the view's revision until the stream fails or `shutdown`;
    /// `Ok(true)` when shut down. Counts a reconnect once established after a loss.
    async fn follow(
        &self,
        store: &Store,
        shutdown: &CancellationToken,
        after_loss: bool,
        backoff: &mut Duration,
    ) -> Result<bool, BackendError> {
        let start = self.revision() + 1;
        let mut watch = self
            .client
            .watch_client()
            .max_decoding_message_size(self.max_message_bytes);
        let mut stream = with_timeout(watch.watch(
            self.keys.clone(),
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        ))
        .await?;
        self.set_up(true);
        if after_loss {
            if let Some(metrics) = &self.metrics {
                metrics.reconnects.inc();
            }
            tracing::info!(revision = start, "etcd watch re-established");
        }
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return Ok(true),
                message = stream.message() => message,
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => return Err("the watch stream ended".into()),
                Err(err) => return Err(Box::new(EtcdError::from(err))),
            };
            if response.compact_revision() > 0 || response.canceled() {
                return Err(format!(
                    "the watch was cancelled (compacted to revision {}: {})",
                    response.compact_revision(),
                    response.cancel_reason()
                )
                .into());
            }
            *backoff = MIN_BACKOFF;
            if response.events().is_empty() {
                continue;
            }
            let follow = Follow {
                keys: self.keys.clone(),
                label: self.label.clone(),
                state: Arc::clone(&self.state),
                sealer: self.sealer.clone(),
            };
            let applied = store
                .apply(move |current| follow.apply_events(response.events(), current))
                .await;
            if let (Some(count), Some(metrics)) = (applied, &self.metrics) {
                metrics
                    .endpoints
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            if let Some(count) = applied {
                tracing::debug!(endpoints = count, "etcd change applied");
            }
        }
    }
}

impl State {
    /// Every live record, oldest first (then by uuid), for a snapshot.
    fn records(&self) -> Vec<EndpointRecord> {
        let mut records: Vec<EndpointRecord> = self
            .entries
            .values()
            .filter_map(|entry| entry.record.clone())
            .collect();
        sort_records(&mut records);
        records
    }
}

impl Backend for EtcdBackend {
    /// Reads the whole prefix and makes it this replica's view. At start-up (`previous` is
    /// `None`) any bad key fails the load; on a resync a bad key keeps its last good record.
    fn load(
        &self,
        previous: Option<Arc<Snapshot>>,
    ) -> BackendFuture<'_, Result<Snapshot, LoadError>> {
        Box::pin(async move {
            let (revision, read) = self.read_all().await?;
            let mut problems = Vec::new();
            let mut entries = HashMap::with_capacity(read.len());
            for key in read {
                let record = match key.record {
                    Ok(record) => record,
                    Err(why) => {
                        let kept = key
                            .key
                            .strip_prefix(&self.keys)
                            .and_then(|uuid| uuid.parse().ok())
                            .and_then(|uuid| previous.as_ref()?.get(&uuid))
                            .map(|endpoint| stripped(&endpoint.record_now()));
                        match (&previous, kept) {
                            (Some(_), kept) => {
                                tracing::error!(key = %key.key, problem = %why, "etcd value rejected; keeping the endpoint's last good record");
                                match kept {
                                    Some(record) => record,
                                    None => continue,
                                }
                            }
                            (None, _) => {
                                problems.push(format!("{}: {why}", key.key));
                                continue;
                            }
                        }
                    }
                };
                entries.insert(
                    key.key,
                    Entry {
                        mod_revision: key.mod_revision,
                        record: Some(record),
                    },
                );
            }
            if !problems.is_empty() {
                return Err(self.invalid(problems));
            }
            let next = State { revision, entries };
            let records = next.records();
            let snapshot = super::off_runtime(move || {
                Snapshot::build(records, previous.as_deref(), |index, field| {
                    format!("[{index}].{field}")
                })
            })
            .await
            .map_err(|problems| self.invalid(problems))?;
            *self.state() = next;
            Ok(snapshot)
        })
    }

    /// The watch keeps the snapshot current; a write that raced another replica's is caught by
    /// its transaction instead.
    fn load_if_changed(
        &self,
        _previous: Arc<Snapshot>,
    ) -> BackendFuture<'_, Result<Option<Snapshot>, LoadError>> {
        Box::pin(async { Ok(None) })
    }

    /// Writes the keys `edit` changes (and its idempotency record) in one transaction.
    fn persist(
        &self,
        _next: Arc<Snapshot>,
        edit: Arc<Edit>,
    ) -> BackendFuture<'_, Result<(), WriteError>> {
        Box::pin(async move {
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            let mut puts = Vec::new();
            let mut deletes = Vec::new();
            {
                let state = self.state();
                for record in edit.puts() {
                    let key = self.key_of(&record.uuid);
                    let record = stripped(record);
                    match state.entries.get(&key) {
                        Some(Entry {
                            record: Some(old),
                            mod_revision,
                        }) => {
                            if *old == record {
                                continue;
                            }
                            compares.push(Compare::mod_revision(
                                key.clone(),
                                CompareOp::Equal,
                                *mod_revision,
                            ));
                        }
                        _ => compares.push(Compare::create_revision(
                            key.clone(),
                            CompareOp::Equal,
                            0,
                        )),
                    }
                    let value = encode(&record, &self.sealer)?;
                    ops.push(TxnOp::put(key.clone(), value.to_vec(), None));
                    puts.push((key, record));
                }
                for uuid in edit.deletes() {
                    let key = self.key_of(&uuid.to_string());
                    if let Some(entry) = state.entries.get(&key).filter(|e| e.record.is_some()) {
                        compares.push(Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            entry.mod_revision,
                        ));
                        ops.push(TxnOp::delete(key.clone(), None));
                        deletes.push(key);
                    }
                }
            }
            if let Some(recorded) = edit.recorded() {
                let key = self.idempotency_key_of(&recorded.key);
                let stored = self
                    .sealer
                    .seal_idempotency(recorded.stored())
                    .map_err(|err| WriteError::Serialize(err.to_string()))?;
                let value = serde_json::to_vec(&stored)
                    .map(Zeroizing::new)
                    .map_err(|err| WriteError::Serialize(err.to_string()))?;
                let lease = self.idempotency_lease().await?;
                // Two replicas racing on one key: one transaction wins, the other is contended
                // and its retry replays the winner's answer.
                compares.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
                ops.push(TxnOp::put(
                    key,
                    value.to_vec(),
                    Some(PutOptions::new().with_lease(lease)),
                ));
            }
            if ops.is_empty() {
                return Ok(());
            }
            let touched = puts
                .iter()
                .map(|(key, _)| key.as_str())
                .chain(deletes.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(", ");
            let mut kv = self.client.kv_client();
            let response = with_timeout(kv.txn(Txn::new().when(compares).and_then(ops)))
                .await
                .map_err(WriteError::from)?;
            if !response.succeeded() {
                return Err(WriteError::Contended(touched));
            }
            let revision = response.header().map_or(0, |header| header.revision());
            let mut state = self.state();
            for (key, record) in puts {
                state.entries.insert(
                    key,
                    Entry {
                        mod_revision: revision,
                        record: Some(record),
                    },
                );
            }
            for key in deletes {
                state.entries.insert(
                    key,
                    Entry {
                        mod_revision: revision,
                        record: None,
                    },
                );
            }
            Ok(())
        })
    }

    fn stores_delivery_records(&self) -> bool {
        false
    }

    /// Another replica may have recorded the key: etcd is asked (one read).
    fn find_idempotent<'a>(
        &'a self,
        key: &'a IdempotencyKey,
    ) -> BackendFuture<'a, Result<Option<Arc<Recorded>>, WriteError>> {
        Box::pin(async move {
            let mut kv = self.client.kv_client();
            let response = with_timeout(kv.get(self.idempotency_key_of(key), None))
                .await
                .map_err(WriteError::from)?;
            let Some(found) = response.kvs().first() else {
                return Ok(None);
            };
            let recorded = serde_json::from_slice::<StoredIdempotency>(found.value())
                .map_err(|err| err.to_string())
                .and_then(|stored| self.sealer.open_idempotency(stored))
                .and_then(StoredIdempotency::parse);
            match recorded {
                Ok(recorded) if recorded.key == *key => Ok(Some(recorded)),
                Ok(_) => Ok(None),
                Err(why) => {
                    tracing::error!(problem = %why, "etcd idempotency record rejected");
                    Ok(None)
                }
            }
        })
    }

    /// Watches the prefix; on any loss marks the backend down, waits (100 ms doubling to 5 s),
    /// reloads the whole prefix and watches again from the revision it read.
    fn watch<'a>(&'a self, store: &'a Store, shutdown: CancellationToken) -> BackendFuture<'a, ()> {
        Box::pin(async move {
            let mut backoff = MIN_BACKOFF;
            let mut resync = !store.is_loaded() || self.revision() == 0;
            let mut after_loss = false;
            loop {
                if shutdown.is_cancelled() {
                    return;
                }
                let outcome = if resync {
                    match store.reload().await {
                        Ok(count) => {
                            if let Some(metrics) = &self.metrics {
                                metrics
                                    .endpoints
                                    .set(i64::try_from(count).unwrap_or(i64::MAX));
                            }
                            tracing::info!(endpoints = count, "etcd prefix reloaded");
                            resync = false;
                            Ok(false)
                        }
                        Err(err) => Err(Box::new(err) as BackendError),
                    }
                } else {
                    Ok(false)
                };
                let outcome = match outcome {
                    Ok(_) => {
                        self.follow(store, &shutdown, after_loss, &mut backoff)
                            .await
                    }
                    Err(err) => Err(err),
                };
                match outcome {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(err) => {
                        if !after_loss || self.metrics.as_ref().is_some_and(|m| m.up.get() == 1) {
                            tracing::warn!(error = %error_chain(&*err), retry_in = ?backoff, "etcd watch or resync failed; serving the last snapshot, not up until it resyncs");
                        }
                        self.set_up(false);
                        after_loss = true;
                        resync = true;
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })
    }
}

impl fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("store", &self.label)
            .finish_non_exhaustive()
    }
}

/// A record as etcd holds it: without this replica's delivery records.
pub fn stripped(record: &EndpointRecord) -> EndpointRecord {
    record.without_delivery_records()
}

/// The value stored for a record: JSON, delivery records stripped, secrets sealed.
fn encode(record: &EndpointRecord, sealer: &Sealer) -> Result<Zeroizing<Vec<u8>>, WriteError> {
    let sealed = sealer
        .seal_record(&stripped(record))
        .map_err(|err| WriteError::Serialize(err.to_string()))?;
    serde_json::to_vec(&sealed)
        .map(Zeroizing::new)
        .map_err(|err| WriteError::Serialize(err.to_string()))
}

/// Parses a value (JSON, or TOML for a hand-written key), opens its secrets and checks it is a
/// valid endpoint whose uuid is its key's; with whether it is all under the primary key.
/// Messages never quote the value (it holds a secret).
fn decode(uuid: &str, value: &[u8], sealer: &Sealer) -> Result<(EndpointRecord, bool), String> {
    let text = std::str::from_utf8(value).map_err(|_| "the value is not UTF-8".to_owned())?;
    let record: EndpointRecord = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|err| {
            format!(
                "JSON error at line {}, column {} ({:?})",
                err.line(),
                err.column(),
                err.classify()
            )
        })?
    } else {
        toml::from_str(text)
            .map_err(|err| format!("TOML error: {}", crate::toml_error::describe(&err, text)))?
    };
    if record.uuid != uuid {
        return Err("the record's uuid is not its key's".to_owned());
    }
    let current = sealer.is_current(&record);
    let record = sealer
        .open_record(record)
        .map_err(|(field, why)| format!("{field}: {why}"))?
        .record;
    Endpoint::from_record(record.clone(), None)
        .map_err(|(field, why)| format!("{field}: {why}"))?;
    Ok((record, current))
}

fn sort_records(records: &mut [EndpointRecord]) {
    records.sort_by(|a, b| {
        (a.created_at.as_deref(), a.uuid.as_str()).cmp(&(b.created_at.as_deref(), b.uuid.as_str()))
    });
}

/// Why an etcd request failed, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd gave no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Client(#[from] etcd_client::Error),
}

impl EtcdError {
    /// Whether etcd could not be reached (rather than refusing the request: a message over
    /// the size limit, a permission or authentication error), so a retry may succeed.
    pub fn is_unreachable(&self) -> bool {
        use etcd_client::Error as E;
        match self {
            Self::Timeout(_) => true,
            Self::Client(E::TransportError(_) | E::IoError(_)) => true,
            Self::Client(E::GRpcStatus(status)) => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ),
            Self::Client(_) => false,
        }
    }

    fn into_load_error(self, path: String) -> LoadError {
        if self.is_unreachable() {
            LoadError::Unavailable {
                path,
                cause: Box::new(self),
            }
        } else {
            LoadError::Refused {
                path,
                cause: Box::new(self),
            }
        }
    }
}

impl From<EtcdError> for WriteError {
    fn from(err: EtcdError) -> Self {
        WriteError::Unavailable(Box::new(err))
    }
}

/// Runs an etcd request with [`REQUEST_TIMEOUT`].
async fn with_timeout<T>(
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(EtcdError::Timeout(REQUEST_TIMEOUT)),
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn record() -> EndpointRecord {
        EndpointRecord {
            uuid: "a1b2c3d4-e5f6-7890-abcd-ef1234567890".into(),
            company: "550e8400-e29b-41d4-a716-446655440000".into(),
            url: "https://example.com/hooks".into(),
            events: vec!["invoice.created".into()],
            description: String::new(),
            status: "active".into(),
            scheme: "storno".into(),
            secret: Secret::new(format!("whsec_{}", "ab".repeat(32))),
            previous_secrets: Vec::new(),
            previous_secrets_expire_at: Vec::new(),
            previous_secret: None,
            previous_secret_expires_at: None,
            created_at: Some("2026-02-18T10:00:00Z".into()),
            updated_at: None,
            deliveries_count: 7,
            last_delivery_at: Some("2026-02-18T11:00:00Z".into()),
            last_delivery_status: Some("failed".into()),
            consecutive_failures: 3,
            client_certificate: None,
            client_private_key: None,
        }
    }

    #[test]
    fn values_carry_no_delivery_records_and_round_trip() {
        let value = encode(&record(), &Sealer::plaintext()).unwrap();
        let text = std::str::from_utf8(&value).unwrap();
        assert!(!text.contains("deliveries_count"), "{text}");
        assert!(!text.contains("last_delivery"), "{text}");
        let (back, _) = decode(&record().uuid, &value, &Sealer::plaintext()).unwrap();
        assert_eq!(back.secret, record().secret);
        assert_eq!(back.deliveries_count, 0);
    }

    #[test]
    fn toml_values_are_read_and_bad_values_never_quote_the_secret() {
        let toml = toml::to_string(&stripped(&record())).unwrap();
        assert!(decode(&record().uuid, toml.as_bytes(), &Sealer::plaintext()).is_ok());
        assert!(decode(
            "b1b2c3d4-e5f6-7890-abcd-ef1234567890",
            toml.as_bytes(),
            &Sealer::plaintext()
        )
        .unwrap_err()
        .contains("uuid"));
        let broken = toml.replace("secret = \"", "secret = ");
        let why = decode(&record().uuid, broken.as_bytes(), &Sealer::plaintext()).unwrap_err();
        assert!(!why.contains("abab"), "{why}");
        let mut short = record();
        short.secret = Secret::new("whsec_abab");
        let json = serde_json::to_vec(&short).unwrap();
        let why = decode(&record().uuid, &json, &Sealer::plaintext()).unwrap_err();
        assert!(why.starts_with("secret"), "{why}");
        assert!(!why.contains("abab"), "{why}");
    }
}
