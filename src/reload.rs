//! Config reload: `SIGHUP` and a change to the config file re-read `config.toml` with the
//! store's rules. The file is validated whole; one that does not load is logged (every problem,
//! no value quoted) and the config in service stays. One that loads applies at once what can
//! change live, and names what needs a restart.
//!
//! Live: `[[admin.tokens]]` and `rate_limit_per_minute` (a revoked token is refused from the next
//! request), `[[proxy.tokens]]`, `[signing] header`, `[events] catalog`, `[log] filter`.
//! Everything else (listeners, the store, the egress policy and CA file, timeouts and caps,
//! worker threads, the log format) applies at the next start: the reload logs which keys and sets
//! `hooksign_config_restart_required` to 1 until the file matches the running config again.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::ReloadOutcome;
use crate::proxy_auth::ProxyAuth;
use crate::state::AppState;

/// Re-reads the config file and applies it (see the module docs).
pub fn reload_config(state: &AppState) {
    let path = &state.config.path;
    let new = match Config::load(path) {
        Ok(config) => config,
        Err(err) => {
            state.metrics.config_reload.record(ReloadOutcome::Rejected);
            for problem in err.problems() {
                tracing::error!(problem = %problem, "config reload rejected; the config in service stays");
            }
            return;
        }
    };
    let restart = restart_required(&state.config, &new);
    let current = Arc::clone(&state.live.borrow());
    if format!("{:?}", current.proxy.tokens) != format!("{:?}", new.proxy.tokens) {
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

/// The sections of `new` that differ from the running config in keys that apply only at start.
fn restart_required(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut differ = |key: &'static str, a: String, b: String| {
        if a != b {
            keys.push(key);
        }
    };
    let proxy = |config: &Config| {
        let mut proxy = config.proxy.clone();
        proxy.tokens.clear();
        // `serve` may lower these to fit the open-file limit: compare what the file says.
        proxy.max_connections = 0;
        proxy.pool_max_idle = 0;
        proxy.pool_max_idle_per_origin = 0;
        format!("{proxy:?}")
    };
    differ("proxy", proxy(running), proxy(new));
    differ(
        "admin.listen",
        format!("{:?}", running.admin.listen),
        format!("{:?}", new.admin.listen),
    );
    differ(
        "admin (timeouts, body limit, audit_log)",
        format!(
            "{:?}{:?}{}{:?}",
            running.admin.header_read_timeout,
            running.admin.body_read_timeout,
            running.admin.max_body_bytes,
            running.admin.audit_log
        ),
        format!(
            "{:?}{:?}{}{:?}",
            new.admin.header_read_timeout,
            new.admin.body_read_timeout,
            new.admin.max_body_bytes,
            new.admin.audit_log
        ),
    );
    differ(
        "store",
        format!("{:?}", running.store),
        format!("{:?}", new.store),
    );
    differ(
        "egress",
        format!("{:?}", running.egress),
        format!("{:?}", new.egress),
    );
    differ(
        "server",
        format!("{:?}", running.server),
        format!("{:?}", new.server),
    );
    differ(
        "log.format, log.access",
        format!("{:?}{}", running.log.format, running.log.access),
        format!("{:?}{}", new.log.format, new.log.access),
    );
    keys
}

/// Watches the config file until `shutdown`, reloading on every settled change.
pub fn watch_config(state: Arc<AppState>, shutdown: CancellationToken) {
    let (watcher, mut changed) = match crate::store::watch::file_changes(&state.config.path) {
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
            reload_config(&state);
        }
    });
}
