//! hooksign: a signing sidecar for outbound webhooks.
//!
//! The application POSTs each delivery to the proxy port with `X-Webhook-Id`; hooksign signs the
//! raw body with that endpoint's secret and forwards it over TLS, returning the customer's
//! response. The application never holds a signing secret.
//!
//! Crate map:
//! - [`config`]: the TOML configuration, parsed into validated types.
//! - [`secret`]: [`secret::Secret`], the redacted, zeroized home of every key.
//! - [`client_cert`]: an endpoint's client certificate chain and key (mutual TLS), checked.
//! - [`keyring`]: the named keys that encrypt secrets at rest.
//! - [`signing`]: signature schemes, keyed once per snapshot.
//! - [`store`]: endpoints and secrets as one `ArcSwap<Snapshot>`, loaded from a backend.
//! - [`proxy`]: the delivery path (hyper server in, signed request out through [`upstream`]).
//! - [`upstream`]: the pooled rustls client to customers.
//! - [`egress`]: the SSRF guard: resolve, classify every address, dial the checked one.
//! - [`admin`]: the operator port (probes, metrics).
//! - [`audit`]: the hash-chained audit log of admin writes.
//! - [`state`]: [`AppState`], the handles the proxy and admin ports share, built from config.
//! - [`metrics`]: the Prometheus registry.
//! - [`telemetry`]: OpenTelemetry traces of deliveries and admin requests, exported over OTLP.
//! - [`outcome`]: how a delivery ended (metric label, status and error code).
//! - [`logging`]: the log output and its live filter; [`trace_names`]: the trace targets.
//! - [`reload`]: config reload.
//! - [`accept`]: the accept loop and drain both ports share; [`listen`]: the ports' sockets (TCP or
//!   Unix); [`limits`]: the file descriptors shared out;
//!   [`proxy_auth`]: the proxy port's tokens; [`toml_error`]: TOML problems told without values.
//! - [`cli`]: the command line (`serve`, `check`, `token`, `sign`, `verify`, `healthcheck`).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod accept;
pub mod admin;
pub mod audit;
pub mod cli;
pub mod client_cert;
pub mod config;
pub mod egress;
pub mod error_chain;
pub mod keyring;
pub mod limits;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod outcome;
pub mod proxy;
pub mod proxy_auth;
pub mod reload;
pub mod secret;
pub mod signing;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod toml_error;
pub mod trace_names;
pub mod upstream;

pub use state::{AppState, BuildError};

use std::future::Future;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::listen::Listener;

/// Why hooksign could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("binding {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl RunError {
    /// Whether the configuration (or the store it names) is at fault: `serve` exits 64.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::Config(_)
                | Self::Build(
                    BuildError::Store(_)
                        | BuildError::Client(_)
                        | BuildError::Keyring(_)
                        | BuildError::Audit(_)
                )
        )
    }
}

/// The proxy and admin listeners, bound.
#[derive(Debug)]
pub struct Listeners {
    pub proxy: Listener,
    pub admin: Listener,
}

impl Listeners {
    /// Binds both addresses from the configuration.
    pub async fn bind(config: &Config) -> Result<Self, RunError> {
        let bind = |what, listen: &config::Listen| {
            let listen = listen.clone();
            async move {
                Listener::bind(&listen)
                    .await
                    .map_err(|source| RunError::Bind {
                        what,
                        addr: match &listen {
                            config::Listen::Tcp(addr) => addr.to_string(),
                            config::Listen::Unix { path, .. } => {
                                format!("unix:{}", path.display())
                            }
                        },
                        source,
                    })
            }
        };
        Ok(Self {
            proxy: bind("proxy", &config.proxy.listen).await?,
            admin: bind("admin", &config.admin.listen).await?,
        })
    }

    /// The `ready proxy=ADDR admin=ADDR` line the binary prints once both ports accept.
    pub fn ready_line(&self) -> io::Result<String> {
        Ok(format!(
            "ready proxy={} admin={}",
            self.proxy.local()?,
            self.admin.local()?
        ))
    }
}

/// How often delivery records (counters, last status) are written to the store, at most. A
/// `kill -9` loses at most this much of their history (see [`next_record_flush`] for very large
/// stores); configuration and secrets are written at once.
pub const RECORD_FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// The record flush rewrites the whole store file, so its cost grows with the store (about
/// 0.2 s at 100,000 endpoints). It waits at least this many times its last duration before the
/// next, keeping it under 1 % of a core whatever the store's size.
pub const RECORD_FLUSH_COST_RATIO: u32 = 100;

/// However slow the flush, delivery records are written at least this often.
pub const RECORD_FLUSH_MAX_INTERVAL: Duration = Duration::from_secs(300);

/// The wait before the next delivery-record flush, after one that took `last_flush`:
/// [`RECORD_FLUSH_INTERVAL`], or [`RECORD_FLUSH_COST_RATIO`] times the flush when that is longer,
/// up to [`RECORD_FLUSH_MAX_INTERVAL`].
pub fn next_record_flush(last_flush: Duration) -> Duration {
    last_flush
        .saturating_mul(RECORD_FLUSH_COST_RATIO)
        .clamp(RECORD_FLUSH_INTERVAL, RECORD_FLUSH_MAX_INTERVAL)
}

/// Serves both ports until `shutdown` fires (or one of them fails), then drains: both stop
/// accepting at once, in-flight requests get `[server] shutdown_grace`, and whatever is still
/// open after it is cut (and counted in a warning).
pub async fn serve(
    state: Arc<AppState>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let watcher = {
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        tokio::spawn(async move { state.store.watch(shutdown).await })
    };
    let flusher = tokio::spawn(flush_records_periodically(
        Arc::clone(&state),
        shutdown.clone(),
    ));
    let mut proxy = tokio::spawn(proxy::serve(
        listeners.proxy,
        Arc::clone(&state),
        shutdown.clone(),
    ));
    let mut admin = tokio::spawn(admin::serve(
        listeners.admin,
        Arc::clone(&state),
        shutdown.clone(),
    ));
    let joined = |result: Result<io::Result<()>, tokio::task::JoinError>, what| match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(RunError::Io { what, source }),
        Err(join) => Err(RunError::Io {
            what,
            source: io::Error::other(join.to_string()),
        }),
    };
    // Whichever server stops first (normally both, on shutdown), stop the other too.
    let first = tokio::select! {
        result = &mut proxy => { shutdown.cancel(); (joined(result, "proxy server"), true) }
        result = &mut admin => { shutdown.cancel(); (joined(result, "admin server"), false) }
    };
    let second = if first.1 {
        joined(admin.await, "admin server")
    } else {
        joined(proxy.await, "proxy server")
    };
    let mut flushed_total = flusher.await.unwrap_or(0);
    if let Err(err) = watcher.await {
        tracing::warn!(error = %err, "the store watch ended abnormally");
    }
    if let Err(err) = state.store.flush_delivery_records(&mut flushed_total).await {
        tracing::warn!(error = %err, "could not write delivery records at shutdown");
    }
    first.0.and(second)
}

/// Writes delivery records while any changed, every [`RECORD_FLUSH_INTERVAL`] or, for a store
/// so large that writing it is slow, every [`next_record_flush`]; returns the delivery total last
/// written when `shutdown` fires.
async fn flush_records_periodically(state: Arc<AppState>, shutdown: CancellationToken) -> u64 {
    let mut flushed_total = state.store.snapshot().delivery_total();
    let mut wait = RECORD_FLUSH_INTERVAL;
    // A store that cannot be written (a read-only mount) is said so once, not every interval.
    let mut told_read_only = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return flushed_total,
            () = tokio::time::sleep(wait) => {}
        }
        let started = Instant::now();
        match state.store.flush_delivery_records(&mut flushed_total).await {
            Ok(wrote) => {
                let took = started.elapsed();
                wait = next_record_flush(took);
                if wrote {
                    tracing::debug!(
                        took_ms = took.as_millis() as u64,
                        next_in_s = wait.as_secs(),
                        "delivery records written"
                    );
                }
            }
            Err(err @ (store::WriteError::ReadOnly(_) | store::WriteError::NotReplaceable)) => {
                wait = RECORD_FLUSH_MAX_INTERVAL;
                if !told_read_only {
                    told_read_only = true;
                    tracing::warn!(error = %err, "delivery records are kept in memory only");
                } else {
                    tracing::debug!(error = %err, "delivery records still not written");
                }
            }
            Err(err) => {
                wait = RECORD_FLUSH_INTERVAL;
                tracing::warn!(error = %err, "could not write delivery records; will retry");
            }
        }
    }
}

/// Starts live reload of the config and the store: the file watches and `SIGHUP`. Call it
/// before announcing readiness, so no change made after that is missed.
pub fn start_reloading(state: &Arc<AppState>, shutdown: &CancellationToken) {
    let reloader = reload::Reloader::new(Arc::clone(state));
    reload::watch_config(Arc::clone(&reloader), shutdown.clone());
    // The etcd backend follows its own watch (started by `serve`); only a file needs watching.
    if state.config.store.backend == config::StoreBackend::File {
        if let Err(err) = store::watch::spawn(
            state.store.clone(),
            state.metrics.reload.clone(),
            state.config.store.path.clone(),
            shutdown.clone(),
        ) {
            tracing::warn!(error = %err, "live reload is off; send SIGHUP to reload the store");
        }
    }
    if let Some(keyring) = &state.config.store.keyring {
        if let Err(err) = store::watch::spawn_keyring(
            state.store.clone(),
            state.sealer.clone(),
            keyring_reloads(state),
            keyring.clone(),
            shutdown.clone(),
        ) {
            tracing::warn!(error = %err, "keyring live reload is off; send SIGHUP to reload it");
        }
    }
    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(
        Arc::clone(state),
        reloader,
        shutdown.clone(),
    ));
}

fn keyring_reloads(state: &AppState) -> store::watch::KeyringReloads {
    store::watch::KeyringReloads {
        keyring: state.metrics.keyring_reload.clone(),
        store: state.metrics.reload.clone(),
    }
}

/// Re-reads the store on every `SIGHUP` until `shutdown` fires.
#[cfg(unix)]
async fn reload_on_sighup(
    state: Arc<AppState>,
    reloader: Arc<reload::Reloader>,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGHUP");
            return;
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = hangups.recv() => if received.is_none() { return },
        }
        tracing::info!("SIGHUP received; reloading the config and the store");
        reloader.reload().await;
        match &state.config.store.keyring {
            Some(keyring) => {
                store::watch::reload_keyring(
                    &state.store,
                    &state.sealer,
                    &keyring_reloads(&state),
                    keyring,
                )
                .await
            }
            None => store::watch::reload_now(&state.store, &state.metrics.reload).await,
        }
    }
}

/// After the shutdown signal: `/readyz` turns 503 at once (load balancers and endpoint
/// controllers stop sending), the proxy keeps serving for `[server] drain_delay` so deliveries
/// already on their way are not refused, then `shutdown` fires and the servers drain. A second
/// signal during the delay ends it early.
pub async fn drain_after(
    state: Arc<AppState>,
    signalled: impl Future<Output = ()>,
    shutdown: CancellationToken,
) {
    signalled.await;
    state
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let delay = state.config.server.drain_delay;
    if !delay.is_zero() {
        tracing::info!(delay = ?delay, "not ready; still accepting deliveries for drain_delay");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown_signal() => tracing::info!("second signal; stopping now"),
            () = shutdown.cancelled() => {}
        }
    }
    shutdown.cancel();
}

/// Registers SIGTERM and SIGINT handlers now and returns a future that resolves when either
/// arrives. Call it (inside the runtime) before announcing readiness: a signal sent after the
/// handlers exist drains and exits 0, one sent before would kill the process with the default
/// action.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind: SignalKind, name: &'static str| {
            let registered = signal(kind);
            async move {
                match registered {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        let interrupt = listen(SignalKind::interrupt(), "SIGINT");
        let terminate = listen(SignalKind::terminate(), "SIGTERM");
        async move {
            tokio::select! {
                () = interrupt => tracing::info!("SIGINT received; shutting down"),
                () = terminate => tracing::info!("SIGTERM received; shutting down"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("Ctrl-C received; shutting down");
    }
}

/// Prints the ready line to stdout and flushes it.
fn announce(line: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_record_flushes_space_out_to_one_percent_of_a_core() {
        assert_eq!(next_record_flush(Duration::ZERO), RECORD_FLUSH_INTERVAL);
        assert_eq!(
            next_record_flush(Duration::from_millis(40)),
            RECORD_FLUSH_INTERVAL
        );
        assert_eq!(
            next_record_flush(Duration::from_millis(550)),
            Duration::from_secs(55)
        );
        assert_eq!(next_record_flush(Duration::MAX), RECORD_FLUSH_MAX_INTERVAL);
    }
}
