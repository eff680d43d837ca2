//! What the proxy and admin ports share: [`AppState`], built from the configuration (metrics,
//! the store loaded from its backend, the egress guard, the upstream client, admin tokens).
//! It sits below both servers, so neither reaches up into `lib.rs` for it.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::audit::{AuditError, AuditLog};
use crate::config::{Config, ProxyConfig, StoreBackend};
use crate::egress::dns::{DnsError, DnsResolver};
use crate::egress::{EgressPolicy, Resolve};
use crate::keyring::{Keyring, KeyringError};
use crate::metrics::{Metrics, ReloadOutcome};
use crate::proxy_auth::ProxyAuth;
use crate::store::crypt::Sealer;
use crate::store::etcd::EtcdBackend;
use crate::store::file::{FileBackend, Writability};
use crate::store::{Backend, LoadError, Store};
use crate::upstream::client::{self, ClientError};
use crate::upstream::pool::Upstream;

/// Everything the servers share, handed down as one `Arc`.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub metrics: Metrics,
    /// The upstream client. It holds the egress guard in force (`[egress]` rules and the
    /// resolver, [`Upstream::egress`]): it dials through it, and the admin API checks endpoint
    /// URLs with it ([`EgressPolicy::check_url`]).
    pub upstream: Upstream,
    /// How secrets are kept at rest (the keyring in service, reloaded in place).
    pub sealer: Sealer,
    /// `[admin] audit_log`, when set.
    pub audit: Option<AuditLog>,
    /// `[proxy]` as last reloaded: the per-request timeouts and limits are read from here (its
    /// listener, caps and pool sizes stay as at start, as in [`AppState::config`]).
    pub proxy_settings: ArcSwap<ProxyConfig>,
    /// `[signing] header`, the storno scheme's header (swapped by a config reload).
    pub signing_header: ArcSwap<http::HeaderName>,
    /// `[[proxy.tokens]]`: who may use the proxy port (swapped by a config reload).
    pub proxy_auth: ArcSwap<ProxyAuth>,
    /// The config as last read from its file, and every later reload ([`crate::reload`]): what
    /// applies live (admin tokens and rate limit, the event catalog) is read from here; the
    /// rest of [`AppState::config`] stays as it was at start.
    pub live: tokio::sync::watch::Sender<Arc<Config>>,
    /// Set on SIGTERM: `/readyz` answers 503 while the proxy drains.
    pub draining: std::sync::atomic::AtomicBool,
}

/// Why the state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Store(#[from] LoadError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("building the name resolver")]
    Dns(#[from] DnsError),
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("starting the trace pipeline")]
    Telemetry(#[source] crate::telemetry::TelemetryError),
}

impl AppState {
    /// Builds the state for `config`: metrics, the store loaded from its backend, the egress
    /// guard on the system's name servers and hosts file ([`DnsResolver`]), the client.
    pub async fn build(config: Config) -> Result<Arc<Self>, BuildError> {
        let resolver = DnsResolver::system()?;
        Self::build_with_resolver(config, Arc::new(resolver)).await
    }

    /// As [`AppState::build`], with the egress guard resolving names through `resolver`.
    pub async fn build_with_resolver(
        config: Config,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Arc<Self>, BuildError> {
        Self::build_with(config, resolver, Metrics::new()?).await
    }

    /// As [`AppState::build_with_resolver`], recording into `metrics` (built before the state
    /// by `serve`, which hands the trace pipeline its drop counter first).
    pub async fn build_with(
        config: Config,
        resolver: Arc<dyn Resolve>,
        metrics: Metrics,
    ) -> Result<Arc<Self>, BuildError> {
        metrics
            .shutdown_grace
            .set(config.server.shutdown_grace.as_secs_f64());
        let sealer = sealer_for(&config)?;
        let audit = match &config.admin.audit_log {
            Some(path) => Some(AuditLog::open(path)?),
            None => None,
        };
        let backend: Box<dyn Backend> = match config.store.backend {
            StoreBackend::File => {
                let file = FileBackend::new(config.store.path.clone()).with_sealer(sealer.clone());
                file.remove_stale_temp_files();
                match file.writability() {
                    Writability::Writable => {}
                    Writability::ReadOnly => tracing::info!(
                        "the store's directory is read-only: delivery records are kept in memory \
                         only, and admin writes answer 409 store_read_only"
                    ),
                    Writability::OwnMount => tracing::warn!(
                        "the store file is a mount of its own (a bind-mounted single file): it \
                         cannot be replaced atomically, so admin writes answer 409; mount its \
                         directory instead (docker run -v DIR:/var/lib/hooksign)"
                    ),
                }
                Box::new(file)
            }
            StoreBackend::Etcd => Box::new(
                EtcdBackend::connect(&config.store.etcd, Some(metrics.store_backend.clone()))
                    .await?
                    .with_sealer(sealer.clone()),
            ),
        };
        let store = match backend.load(None).await {
            Ok(snapshot) => {
                metrics.store_reload(ReloadOutcome::Applied, Some(snapshot.len()));
                tracing::info!(endpoints = snapshot.len(), "store loaded");
                Store::new(snapshot, backend, metrics.store_backend.endpoints.clone())
            }
            // etcd down at start-up: not ready until its watch loads the store.
            Err(err @ LoadError::Unavailable { .. }) => {
                tracing::warn!(error = %err, "store unavailable; not ready until it loads");
                metrics.store_backend.up.set(0);
                Store::pending(backend, metrics.store_backend.endpoints.clone())
            }
            Err(err) => {
                metrics.store_reload(ReloadOutcome::Rejected, None);
                return Err(err.into());
            }
        };
        let upstream = client::build(
            &config.egress,
            &config.proxy,
            Arc::new(EgressPolicy::new(&config.egress, resolver)),
            metrics.upstream.clone(),
        )?;
        let config_tokens = config.proxy.tokens.clone();
        let proxy_settings = config.proxy.clone();
        let signing_header = config.signing.header.clone();
        let live = Arc::new(config.clone());
        Ok(Arc::new(Self {
            config,
            store,
            metrics,
            upstream,
            sealer,
            audit,
            proxy_auth: ArcSwap::from_pointee(ProxyAuth::new(&config_tokens)),
            proxy_settings: ArcSwap::from_pointee(proxy_settings),
            signing_header: ArcSwap::from_pointee(signing_header),
            live: tokio::sync::watch::Sender::new(live),
            draining: std::sync::atomic::AtomicBool::new(false),
        }))
    }
}

/// The sealer `config` asks for: its keyring file read (plaintext without `[store] keyring`).
pub fn sealer_for(config: &Config) -> Result<Sealer, KeyringError> {
    let keyring = match &config.store.keyring {
        Some(path) => Some(Keyring::load(path)?),
        None => None,
    };
    Ok(Sealer::new(keyring, config.store.require_encryption))
}
