//! hooksign: a signing sidecar for outbound webhooks.
//!
//! The application POSTs each delivery to the proxy port with `X-Webhook-Id`; hooksign signs the
//! raw body with that endpoint's secret and forwards it over TLS, returning the customer's
//! response. The application never holds a signing secret.
//!
//! Crate map:
//! - [`config`]: the TOML configuration, parsed into validated types.
//! - [`secret`]: [`secret::Secret`], the redacted, zeroized home of every key.
//! - [`signing`]: signature schemes, keyed once per snapshot.
//! - [`store`]: endpoints and secrets as one `ArcSwap<Snapshot>`, loaded from a backend.
//! - [`proxy`]: the delivery path (hyper server in, pooled rustls client out).
//! - [`admin`]: the operator port (probes, metrics).
//! - [`metrics`]: the Prometheus registry.
//! - [`cli`]: the command line (`serve`, `check`, `token`, `sign`, `verify`, `healthcheck`).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod admin;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod proxy;
pub mod secret;
pub mod signing;
pub mod store;

use std::future::Future;
use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, LogFormat};
use crate::metrics::{Metrics, ReloadOutcome};
use crate::proxy::client::{self, ClientError, UpstreamClient};
use crate::store::file::FileBackend;
use crate::store::{Backend, LoadError, Store};

/// Everything the servers share, handed down as one `Arc`.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub backend: Box<dyn Backend>,
    pub metrics: Metrics,
    pub upstream: UpstreamClient,
}

/// Why hooksign could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] LoadError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("binding {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
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
        matches!(self, Self::Config(_) | Self::Store(_) | Self::Client(_))
    }
}

impl AppState {
    /// Builds the state for `config`: metrics, the store loaded from its backend, the client.
    pub async fn build(config: Config) -> Result<Arc<Self>, RunError> {
        let metrics = Metrics::new()?;
        let backend: Box<dyn Backend> = Box::new(FileBackend::new(config.store.path.clone()));
        let snapshot = match backend.load().await {
            Ok(snapshot) => snapshot,
            Err(err) => {
                metrics.store_reload(ReloadOutcome::Rejected, None);
                return Err(err.into());
            }
        };
        metrics.store_reload(ReloadOutcome::Applied, Some(snapshot.len()));
        tracing::info!(endpoints = snapshot.len(), "store loaded");
        let upstream = client::build(&config.egress)?;
        Ok(Arc::new(Self {
            config,
            store: Store::new(snapshot),
            backend,
            metrics,
            upstream,
        }))
    }
}

/// The proxy and admin listeners, bound.
#[derive(Debug)]
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both addresses from the configuration.
    pub async fn bind(config: &Config) -> Result<Self, RunError> {
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Bind { what, addr, source })
        };
        Ok(Self {
            proxy: bind("proxy", config.proxy.listen).await?,
            admin: bind("admin", config.admin.listen).await?,
        })
    }

    /// The `ready proxy=ADDR admin=ADDR` line the binary prints once both ports accept.
    pub fn ready_line(&self) -> io::Result<String> {
        Ok(format!(
            "ready proxy={} admin={}",
            self.proxy.local_addr()?,
            self.admin.local_addr()?
        ))
    }
}

/// Serves both ports until `shutdown` fires (or one of them fails), then drains: both stop
/// accepting at once, in-flight requests get `[server] shutdown_grace`, and whatever is still
/// open after it is cut (and counted in a warning).
pub async fn serve(
    state: Arc<AppState>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
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
    // Both ports are closed and every delivery has finished or been cut: this is where buffered
    // delivery records (SPEC 2.6) are flushed to the store, before `serve` returns and the
    // process exits 0.
    first.0.and(second)
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

/// Installs the global `tracing` subscriber: `RUST_LOG` filters (default `info`), text or JSON.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Prints the ready line to stdout and flushes it.
fn announce(line: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()
}
