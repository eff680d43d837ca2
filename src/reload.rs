//! Config reload: `SIGHUP` and a change to the config file re-read `config.toml` with the
//! store's rules. The file is validated whole; one that does not load (or whose `[egress]
//! ca_file` does not) is logged (every problem, no value quoted) and the config in service
//! stays. One that loads applies at once what can change live, and names what needs a restart.
//!
//! Live: `[[admin.tokens]]` and `rate_limit_per_minute` (a revoked token is refused from the next
//! request), `[admin]` `header_read_timeout` and `body_read_timeout` (for new connections),
//! `[[proxy.tokens]]`, `[signing] header`, `[events] catalog`, `[log] filter`, the
//! whole of `[egress]` (the policy, the forward proxy, `ca_file`, whose content is read again at
//! every reload), and `[proxy]`'s timeouts and per-request limits (`upstream_timeout`,
//! `header_read_timeout`, `body_read_timeout`, `connect_timeout`, `happy_eyeballs_delay`,
//! `tls_handshake_timeout`, `response_idle_timeout`, `response_timeout`, `pool_idle_timeout`,
//! `max_body_bytes`, `max_response_bytes`, `max_in_flight_per_endpoint`, `auto_disable_after`).
//! A change to `[egress]` or to the CA file's content retires every pooled upstream connection
//! (closed, not reused), so a tightened policy or a removed root holds for the next delivery.
//! Everything else (listeners, the store, caps and pool sizes, the breaker, the TLS session
//! cache, the admin port's listener, cap, body limit and audit log, worker threads, tracing, the
//! log format and access log)
//! applies at the next start: the reload logs which keys and sets
//! `hooksign_config_restart_required` to 1 until the file matches the config the process started
//! with again.

use std::sync::{Arc, Mutex, PoisonError};
#[cfg(test)]
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ProxyConfig};
use crate::metrics::ReloadOutcome;
use crate::proxy_auth::ProxyAuth;
use crate::state::AppState;
use crate::upstream::client::{self, ClientError};
use crate::upstream::pool::PoolLimits;

/// Applies config reloads to the running state. One per process, shared by the `SIGHUP`
/// handler and the file watch: reloads run one at a time, off the runtime's workers.
#[derive(Debug)]
pub struct Reloader {
    state: Arc<AppState>,
    /// The config file as read at start: "restart required" compares with it.
    started: Arc<Config>,
    /// The SHA-256 of `[egress] ca_file`'s content in service (`None`: no CA file). Held for
    /// the whole of a reload, so reloads run one at a time.
    roots: Mutex<Option<[u8; 32]>>,
}

/// Why a config file that parsed was still not applied.
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error(transparent)]
    Tls(#[from] ClientError),
}

impl Reloader {
    /// The reloader of `state`, comparing with the config as read at start (`state.live`'s
    /// value now).
    pub fn new(state: Arc<AppState>) -> Arc<Self> {
        let started = Arc::clone(&state.live.borrow());
        let roots = ca_digest(&started.egress);
        Arc::new(Self {
            state,
            started,
            roots: Mutex::new(roots),
        })
    }

    /// Re-reads the config file and applies it, on the blocking pool (reading the file and
    /// the CA roots is file I/O). The reload runs to its end even if the caller goes away.
    pub async fn reload(self: &Arc<Self>) {
        let this = Arc::clone(self);
        if let Err(err) = tokio::task::spawn_blocking(move || this.reload_now()).await {
            tracing::error!(error = %err, "config reload failed");
        }
    }

    /// Re-reads the config file and applies it (see the module docs).
    pub fn reload_now(&self) {
        let mut roots = self.roots.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &self.state;
        let new = match Config::load(&state.config.path) {
            Ok(config) => config,
            Err(err) => {
                state.metrics.config_reload.record(ReloadOutcome::Rejected);
                for problem in err.problems() {
                    tracing::error!(problem = %problem, "config reload rejected; the config in service stays");
                }
                return;
            }
        };
        let current = Arc::clone(&state.live.borrow());
        if let Err(err) = apply_upstream(state, &current, &new, &mut roots) {
            state.metrics.config_reload.record(ReloadOutcome::Rejected);
            tracing::error!(
                error = %crate::error_chain::error_chain(&err),
                "config reload rejected; the config in service stays"
            );
            return;
        }
        if current.proxy.tokens != new.proxy.tokens {
            state
                .proxy_auth
                .store(Arc::new(ProxyAuth::new(&new.proxy.tokens)));
            tracing::info!(tokens = new.proxy.tokens.len(), "proxy tokens reloaded");
        }
        if current.signing.header != new.signing.header {
            state
                .signing_header
                .store(Arc::new(new.signing.header.clone()));
            tracing::info!(header = %new.signing.header, "signing header reloaded");
        }
        if current.log.filter != new.log.filter {
            crate::logging::set_log_filter(new.log.filter.as_deref());
        }
        let restart = restart_required(&self.started, &new);
        state.live.send_replace(Arc::new(new));
        state.metrics.config_reload.record(ReloadOutcome::Applied);
        state
            .metrics
            .config_restart_required
            .set(i64::from(!restart.is_empty()));
        if restart.is_empty() {
            tracing::info!("config reloaded");
        } else {
            tracing::warn!(
                keys = %restart.join(", "),
                "config reloaded; these changes apply only after a restart"
            );
        }
    }
}

/// Applies `new`'s `[egress]` (the policy, the CA file, read again whether or not its path
/// changed) and `[proxy]` timeouts and per-request limits. The TLS roots are read first: a CA
/// file that does not load rejects the whole reload, before anything changed.
fn apply_upstream(
    state: &AppState,
    current: &Config,
    new: &Config,
    roots: &mut Option<[u8; 32]>,
) -> Result<(), ApplyError> {
    let new_roots = ca_digest(&new.egress);
    let tls = client::tls_config(&new.egress)?;
    let egress_changed = current.egress != new.egress;
    let roots_changed = new_roots != *roots;
    let settings = live_proxy_settings(&state.proxy_settings.load(), &new.proxy);
    let settings_changed =
        format!("{:?}", **state.proxy_settings.load()) != format!("{settings:?}");
    if !egress_changed && !roots_changed && !settings_changed {
        return Ok(());
    }
    let retire = egress_changed || roots_changed;
    let policy = match egress_changed {
        true => Arc::new(state.upstream.egress().reconfigured(&new.egress)),
        false => state.upstream.egress(),
    };
    state.upstream.reconfigure(
        client::connector(&settings, policy),
        retire.then_some(tls),
        &PoolLimits::from_config(&settings),
        retire,
    );
    state.proxy_settings.store(Arc::new(settings));
    *roots = new_roots;
    if retire {
        tracing::info!(
            "egress policy and trusted roots reloaded; connections opened before are closed, not reused"
        );
    }
    if settings_changed {
        tracing::info!("proxy timeouts and limits reloaded");
    }
    Ok(())
}

/// The SHA-256 of `[egress] ca_file`'s content; `None` without one (or when it cannot be read:
/// the TLS configuration then fails with the reason).
fn ca_digest(egress: &crate::config::EgressConfig) -> Option<[u8; 32]> {
    use sha2::Digest;
    let content = std::fs::read(egress.ca_file.as_ref()?).ok()?;
    Some(sha2::Sha256::digest(content).into())
}

/// `new`'s `[proxy]` as it applies live: its timeouts and per-request limits, with the keys
/// that apply only at start (listener, tokens, caps, pool sizes, the breaker, the TLS session
/// cache) kept as `running` has them.
fn live_proxy_settings(running: &ProxyConfig, new: &ProxyConfig) -> ProxyConfig {
    ProxyConfig {
        listen: running.listen.clone(),
        allow_remote: running.allow_remote,
        tokens: running.tokens.clone(),
        max_connections_per_origin: running.max_connections_per_origin,
        pool_max_idle_per_origin: running.pool_max_idle_per_origin,
        pool_max_idle: running.pool_max_idle,
        tls_session_cache: running.tls_session_cache,
        breaker_failures: running.breaker_failures,
        breaker_cooldown: running.breaker_cooldown,
        max_connections: running.max_connections,
        ..new.clone()
    }
}

/// The keys of `new` that differ from the config the process started with in what applies
/// only at start.
fn restart_required(started: &Config, new: &Config) -> Vec<&'static str> {
    let proxy = |proxy: &ProxyConfig| {
        (
            proxy.listen.clone(),
            proxy.allow_remote,
            proxy.max_connections,
            proxy.max_connections_per_origin,
            proxy.pool_max_idle,
            proxy.pool_max_idle_per_origin,
            proxy.tls_session_cache,
            proxy.breaker_failures,
            proxy.breaker_cooldown,
        )
    };
    let admin = |config: &Config| {
        let admin = &config.admin;
        (
            admin.listen.clone(),
            admin.max_connections,
            admin.max_body_bytes,
            admin.audit_log.clone(),
        )
    };
    let log = |config: &Config| (config.log.format, config.log.access);
    [
        (
            "proxy (listen, allow_remote, caps, pool sizes, breaker, tls_session_cache)",
            proxy(&started.proxy) != proxy(&new.proxy),
        ),
        (
            "admin (listen, max_connections, max_body_bytes, audit_log)",
            admin(started) != admin(new),
        ),
        ("store", started.store != new.store),
        ("server", started.server != new.server),
        ("tracing", started.tracing != new.tracing),
        ("log.format, log.access", log(started) != log(new)),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// Watches the config file until `shutdown`, reloading on every settled change.
pub fn watch_config(reloader: Arc<Reloader>, shutdown: CancellationToken) {
    let path = &reloader.state.config.path;
    let (watcher, mut changed) = match crate::store::watch::file_changes(path) {
        Ok(watch) => watch,
        Err(err) => {
            tracing::warn!(error = %err, "config live reload is off; send SIGHUP to reload it");
            return;
        }
    };
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                received = changed.recv() => if received.is_none() { return },
            }
            crate::store::watch::settle(&mut changed).await;
            reloader.reload().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, extra: &str) -> Config {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n{extra}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [store]\npath = \"webhooks.toml\"\n"
        );
        Config::parse(&text, &dir.join("config.toml")).unwrap()
    }

    #[test]
    fn caps_need_a_restart_and_timeouts_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let started = config(dir.path(), "");
        let timeouts = config(
            dir.path(),
            "upstream_timeout = \"5s\"\nconnect_timeout = \"1s\"\nmax_body_bytes = 1024",
        );
        assert!(restart_required(&started, &timeouts).is_empty());
        let live = live_proxy_settings(&started.proxy, &timeouts.proxy);
        assert_eq!(live.upstream_timeout, Duration::from_secs(5));
        assert_eq!(live.max_body_bytes, 1024);

        let caps = config(dir.path(), "max_connections = 100\npool_max_idle = 100");
        assert_eq!(
            restart_required(&started, &caps),
            ["proxy (listen, allow_remote, caps, pool sizes, breaker, tls_session_cache)"]
        );
        let live = live_proxy_settings(&started.proxy, &caps.proxy);
        assert_eq!(live.max_connections, started.proxy.max_connections);
        assert_eq!(live.pool_max_idle, started.proxy.pool_max_idle);
    }

    #[test]
    fn a_rotated_forward_proxy_password_is_an_egress_change() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = dir.path().join("proxy-credentials");
        let egress = "[egress]\nproxy = \"http://127.0.0.1:3128\"\n\
                      proxy_credentials_file = \"proxy-credentials\"";
        std::fs::write(&credentials, "hooksign:old-password\n").unwrap();
        let before = config(dir.path(), egress);
        std::fs::write(&credentials, "hooksign:new-password\n").unwrap();
        let after = config(dir.path(), egress);
        // Their Debug forms are equal (the password is redacted): compared by value.
        assert_eq!(
            format!("{:?}", before.egress),
            format!("{:?}", after.egress)
        );
        assert_ne!(before.egress, after.egress);
    }
}
