//! The one writer: a task that owns every change to the store.
//!
//! Admin writes, auto-disable, delivery-record flushes, file reloads and `SIGHUP`, and etcd
//! watch events all reach the store as jobs on one channel, run one at a time by the writer
//! task. A caller sends its job and awaits the reply; a caller that goes away (client
//! disconnect, timeout) only drops the reply: the job still runs to its end, so persisting a
//! change and swapping it into service can never be split. A job that panics is caught (it runs
//! in a task of its own) and the writer goes on.
//!
//! A write rebuilds only the endpoints it touches ([`Snapshot::with_edit`]), off the runtime
//! threads; unchanged endpoints (keyed signers, delivery records, upstream slots) carry over.
//! Its reply carries the snapshot that was swapped in, so an API response is built from
//! exactly that state, never from a later one.
//!
//! Readers never queue: [`Store::snapshot`] is one atomic load.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::IntGauge;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::idempotency::{IdempotencyKey, Recorded};
use super::{off_runtime, Backend, BackendFuture, Edit, LoadError, Snapshot, WriteError};

/// The live store: a handle to the current snapshot and to the writer task. Clones are handles
/// to the same store.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    jobs: mpsc::UnboundedSender<Job>,
}

/// What the writer task and the handle share. Only the writer task swaps `current`.
struct Shared {
    current: ArcSwap<Snapshot>,
    loaded: AtomicBool,
    backend: Box<dyn Backend>,
    /// `hooksign_store_endpoints`: set at every swap, whatever made it.
    endpoints: IntGauge,
}

type Job = Box<dyn FnOnce(Arc<Shared>) -> BackendFuture<'static, ()> + Send>;

/// A write's result: what the change returned and the snapshot that was swapped in with it.
#[derive(Debug)]
pub struct Written<T> {
    pub value: T,
    pub snapshot: Arc<Snapshot>,
}

/// The outcome of a write made under an idempotency key.
#[derive(Debug)]
pub enum Keyed<T> {
    /// The write was made now.
    Fresh(Written<T>),
    /// The key was used before with the same request: that write's recorded answer.
    Replayed(Arc<Recorded>),
}

impl<T> Keyed<T> {
    /// Whether the write was made now (not a replay).
    pub fn is_fresh(&self) -> bool {
        matches!(self, Self::Fresh(_))
    }
}

impl Store {
    /// A store serving `initial`, written through `backend`; starts the writer task (call inside
    /// a tokio runtime).
    pub fn new(initial: Snapshot, backend: Box<dyn Backend>, endpoints: IntGauge) -> Self {
        Self::start(initial, true, backend, endpoints)
    }

    /// A store whose backend could not be read yet: empty and not loaded (the proxy answers 503
    /// `store_not_loaded`, `/readyz` is 503) until the backend's [`Backend::watch`] loads it.
    pub fn pending(backend: Box<dyn Backend>, endpoints: IntGauge) -> Self {
        Self::start(Snapshot::default(), false, backend, endpoints)
    }

    fn start(
        initial: Snapshot,
        loaded: bool,
        backend: Box<dyn Backend>,
        endpoints: IntGauge,
    ) -> Self {
        endpoints.set(gauge_value(initial.len()));
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(initial),
            loaded: AtomicBool::new(loaded),
            backend,
            endpoints,
        });
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(run_writer(Arc::clone(&shared), queue));
        Self { shared, jobs }
    }

    /// Runs `job` on the writer task and awaits its answer. Dropping this future drops only the
    /// answer: the job runs to its end.
    async fn run<T, F>(&self, job: impl FnOnce(Arc<Shared>) -> F + Send + 'static) -> Option<T>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |shared| {
            Box::pin(async move {
                let _ = reply.send(job(shared).await);
            })
        });
        self.jobs.send(job).ok()?;
        answer.await.ok()
    }

    /// Changes the store: `change` looks at the current snapshot and returns the [`Edit`] to
    /// make (or refuses). The edited snapshot is built, made durable by the backend, and only
    /// then swapped in. An edit someone else made to the backend since hooksign last read or
    /// wrote it is loaded first, so it is built upon, never overwritten.
    pub async fn update<T, E>(
        &self,
        change: impl FnOnce(&Snapshot) -> Result<(Edit, T), E> + Send + 'static,
    ) -> Result<Written<T>, E>
    where
        T: Send + 'static,
        E: From<WriteError> + Send + 'static,
    {
        match self
            .update_keyed(None, change, |_: &Snapshot, _: &T| unreachable_outcome())
            .await?
        {
            Keyed::Fresh(written) => Ok(written),
            Keyed::Replayed(_) => Err(WriteError::WriterGone.into()),
        }
    }

    /// [`Store::update`] under an optional idempotency key. A key already recorded with the same
    /// request fingerprint replays its answer and changes nothing; with another fingerprint the
    /// write is refused ([`WriteError::IdempotencyKeyReused`]). Otherwise the change is made and
    /// `answer` (status and body, from the snapshot about to be swapped in) is recorded with it,
    /// durably, in the same write.
    pub async fn update_keyed<T, E>(
        &self,
        key: Option<(IdempotencyKey, [u8; 32])>,
        change: impl FnOnce(&Snapshot) -> Result<(Edit, T), E> + Send + 'static,
        answer: impl FnOnce(&Snapshot, &T) -> (u16, String) + Send + 'static,
    ) -> Result<Keyed<T>, E>
    where
        T: Send + 'static,
        E: From<WriteError> + Send + 'static,
    {
        self.run(move |shared| async move { shared.write(key, change, answer).await })
            .await
            .unwrap_or_else(|| Err(WriteError::WriterGone.into()))
    }

    /// Re-reads the store if its content changed since hooksign last read or wrote it (so
    /// hooksign's own writes are not reloaded); the endpoint count when it swapped a new snapshot.
    pub async fn reload_if_changed(&self) -> Result<Option<usize>, LoadError> {
        self.run(|shared| async move {
            let current = shared.snapshot();
            let next = shared.backend.load_if_changed(current).await?;
            Ok(next.map(|next| shared.replace(next)))
        })
        .await
        .unwrap_or(Err(LoadError::WriterGone))
    }

    /// Re-reads the whole store from the backend and swaps it in; on failure the snapshot in
    /// service stays.
    pub async fn reload(&self) -> Result<usize, LoadError> {
        self.run(|shared| async move {
            let next = shared.backend.load(Some(shared.snapshot())).await?;
            Ok(shared.replace(next))
        })
        .await
        .unwrap_or(Err(LoadError::WriterGone))
    }

    /// Swaps in the snapshot `change` builds from the current one (a backend's watch applying a
    /// change made elsewhere), in turn with writes; `None` keeps the current snapshot. Returns
    /// the new snapshot's endpoint count when one was swapped in.
    pub async fn apply(
        &self,
        change: impl FnOnce(&Arc<Snapshot>) -> Option<Snapshot> + Send + 'static,
    ) -> Option<usize> {
        self.run(|shared| async move {
            let current = shared.snapshot();
            off_runtime(move || change(&current))
                .await
                .map(|next| shared.replace(next))
        })
        .await
        .flatten()
    }

    /// Follows the backend's changes until `shutdown` (see [`Backend::watch`]).
    pub async fn watch(&self, shutdown: CancellationToken) {
        self.shared.backend.watch(self, shutdown).await;
    }

    /// Writes the delivery records out if any delivery happened since the last write (`true`
    /// then); nothing for a backend that keeps them local ([`Backend::stores_delivery_records`]).
    pub async fn flush_delivery_records(&self, last_total: &mut u64) -> Result<bool, WriteError> {
        if !self.shared.backend.stores_delivery_records() {
            return Ok(false);
        }
        let seen = *last_total;
        let flushed = self
            .run(move |shared| async move {
                let total = shared.snapshot().delivery_total();
                if total == seen {
                    return Ok(None);
                }
                // The records change, the endpoints do not: nothing is rebuilt.
                let current = shared.with_outside_edits().await?;
                shared.backend.persist_snapshot(current).await?;
                Ok(Some(total))
            })
            .await
            .unwrap_or(Err(WriteError::WriterGone))?;
        match flushed {
            Some(total) => {
                *last_total = total;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The current snapshot: one atomic load, no lock. Keep the `Arc` for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    /// Whether a snapshot has been loaded (`/readyz`; the proxy answers 503 until then).
    pub fn is_loaded(&self) -> bool {
        self.shared.loaded.load(Ordering::Acquire)
    }

    /// Whether the backend keeps records in a store file that hooksign writes.
    pub fn backend(&self) -> &dyn Backend {
        &*self.shared.backend
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("endpoints", &self.shared.current.load().len())
            .field("loaded", &self.is_loaded())
            .finish_non_exhaustive()
    }
}

/// Runs jobs in order until every handle is gone. Each job runs in a task of its own, so a
/// panic in one is reported and the next still runs.
async fn run_writer(shared: Arc<Shared>, mut queue: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = queue.recv().await {
        if let Err(err) = tokio::spawn(job(Arc::clone(&shared))).await {
            tracing::error!(error = %err, "a store write failed abnormally; nothing was swapped in");
        }
    }
}

// === impl Shared ===

impl Shared {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Swaps `next` in (requests holding the old snapshot finish with it); its endpoint count.
    fn replace(&self, next: impl Into<Arc<Snapshot>>) -> usize {
        let next = next.into();
        let count = next.len();
        self.current.store(next);
        self.loaded.store(true, Ordering::Release);
        self.endpoints.set(gauge_value(count));
        count
    }

    /// The snapshot a write builds on: the current one, or, when someone else changed the
    /// backend since hooksign last read or wrote it, that content, loaded and swapped in first.
    /// A change that does not load refuses the write.
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

    async fn write<T, E>(
        &self,
        key: Option<(IdempotencyKey, [u8; 32])>,
        change: impl FnOnce(&Snapshot) -> Result<(Edit, T), E> + Send + 'static,
        answer: impl FnOnce(&Snapshot, &T) -> (u16, String) + Send + 'static,
    ) -> Result<Keyed<T>, E>
    where
        T: Send + 'static,
        E: From<WriteError> + Send + 'static,
    {
        if !self.loaded.load(Ordering::Acquire) {
            return Err(WriteError::NotLoaded.into());
        }
        let current = self.with_outside_edits().await?;
        if let Some((key, fingerprint)) = &key {
            let recorded = match current.idempotency().find(key) {
                Some(recorded) => Some(recorded),
                None => self.backend.find_idempotent(key).await?,
            };
            if let Some(recorded) = recorded {
                if recorded.fingerprint != *fingerprint {
                    return Err(WriteError::IdempotencyKeyReused.into());
                }
                return Ok(Keyed::Replayed(recorded));
            }
        }
        let (mut edit, value) = change(&current)?;
        if edit.is_empty() && key.is_none() {
            return Ok(Keyed::Fresh(Written {
                value,
                snapshot: current,
            }));
        }
        let built = {
            let current = Arc::clone(&current);
            off_runtime(move || current.with_edit(&edit).map(|next| (next, edit)))
                .await
                .map_err(WriteError::Invalid)?
        };
        let (mut next, edit_back) = built;
        edit = edit_back;
        if let Some((key, fingerprint)) = key {
            let (status, body) = answer(&next, &value);
            let recorded = Recorded::now(key, fingerprint, status, body);
            edit.record = Some(Arc::clone(&recorded));
            next.record_idempotent(recorded);
        }
        let next = Arc::new(next);
        match self
            .backend
            .persist(Arc::clone(&next), Arc::new(edit))
            .await
        {
            Ok(()) => {}
            // The new content is the file: serve it, and say so in the error.
            Err(err @ WriteError::NotDurable(_)) => {
                self.replace(next);
                return Err(err.into());
            }
            Err(err) => return Err(err.into()),
        }
        self.replace(Arc::clone(&next));
        Ok(Keyed::Fresh(Written {
            value,
            snapshot: next,
        }))
    }
}

/// [`Store::update`] records no answer: its closure is never called.
fn unreachable_outcome() -> (u16, String) {
    (0, String::new())
}

fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}
