//! The process's file descriptors, shared out so that no port can take what another needs.
//!
//! At start `serve` raises the soft open-file limit to the hard one and derives the caps from
//! it: a reserve for the store, logs and listeners; the admin port's connections; the proxy
//! port's connections, each of which may hold a second descriptor upstream (with a quarter of
//! the rest kept for the pool); and idle upstream connections, which get what is left. A
//! configured cap larger than its share is lowered, with a warning.

use crate::config::Config;

/// Descriptors kept for everything but connections (store, audit log, keyring, listeners,
/// watches, DNS, etcd).
pub const RESERVED: u64 = 64;

/// What the open-file limit allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The soft `RLIMIT_NOFILE` in force.
    pub limit: u64,
    pub admin_connections: usize,
    pub idle_upstream: usize,
    pub proxy_connections: usize,
}

/// Raises the soft open-file limit to the hard limit; the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    #[cfg(unix)]
    {
        let hard = rlimit::Resource::NOFILE
            .get()
            .map_or(rlimit::INFINITY, |(_, hard)| hard);
        match rlimit::increase_nofile_limit(hard) {
            Ok(limit) => limit,
            Err(err) => {
                tracing::warn!(error = %err, "could not raise the open-file limit");
                rlimit::Resource::NOFILE
                    .get()
                    .map_or(1024, |(soft, _)| soft)
            }
        }
    }
    #[cfg(not(unix))]
    {
        u64::MAX
    }
}

impl Budget {
    /// Shares `limit` descriptors out under `config`'s caps.
    pub fn derive(limit: u64, config: &Config) -> Self {
        let usable = limit.saturating_sub(RESERVED).max(4);
        let admin = config
            .admin
            .max_connections
            .map_or((usable / 16).clamp(4, 256), |n| n as u64)
            .min(usable / 4);
        let rest = usable - admin;
        // The proxy port's share is taken with a quarter of the rest set aside for idle
        // upstream connections; those then get whatever the proxy port's cap leaves (a sender
        // with many origins and few application connections keeps its pool warm: issue 18).
        let quarter = (config.proxy.pool_max_idle as u64).min(rest / 4);
        let proxy = (config.proxy.max_connections as u64)
            .min((rest - quarter) / 2)
            .max(1);
        let idle = (config.proxy.pool_max_idle as u64).min(rest.saturating_sub(2 * proxy));
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Self {
            limit,
            admin_connections: size(admin.max(1)),
            idle_upstream: size(idle),
            proxy_connections: size(proxy),
        }
    }

    /// Applies the budget to `config`, warning about each cap it lowers.
    pub fn apply(&self, config: &mut Config) {
        let lower = |key: &str, value: &mut usize, to: usize| {
            if *value > to {
                tracing::warn!(
                    key,
                    configured = *value,
                    lowered_to = to,
                    open_file_limit = self.limit,
                    "cap lowered to fit the open-file limit"
                );
                *value = to;
            }
        };
        lower(
            "proxy.max_connections",
            &mut config.proxy.max_connections,
            self.proxy_connections,
        );
        lower(
            "proxy.pool_max_idle",
            &mut config.proxy.pool_max_idle,
            self.idle_upstream,
        );
        let idle = config.proxy.pool_max_idle;
        lower(
            "proxy.pool_max_idle_per_origin",
            &mut config.proxy.pool_max_idle_per_origin,
            idle,
        );
        match &mut config.admin.max_connections {
            Some(admin) => lower("admin.max_connections", admin, self.admin_connections),
            None => config.admin.max_connections = Some(self.admin_connections),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_small_limit_is_shared_so_the_admin_port_cannot_starve_the_proxy() {
        let config = Config::defaults(Path::new("/etc/hooksign/config.toml")).unwrap();
        let budget = Budget::derive(1024, &config);
        assert_eq!(budget.admin_connections, 60);
        let used = RESERVED as usize
            + budget.admin_connections
            + budget.idle_upstream
            + 2 * budget.proxy_connections;
        assert!(used <= 1024, "{budget:?}");
        assert!(budget.proxy_connections >= 300, "{budget:?}");

        // This machine's limit, with the fan-out harness's pool: the proxy port keeps its
        // cap and the idle pool gets the rest, not a quarter (10,000 origins fit).
        let mut fanout = config.clone();
        fanout.proxy.pool_max_idle = 80_000;
        let budget = Budget::derive(20_000, &fanout);
        assert_eq!(budget.proxy_connections, config.proxy.max_connections);
        assert_eq!(budget.idle_upstream, 20_000 - 64 - 256 - 2 * 4096);
        assert!(budget.idle_upstream >= 10_000, "{budget:?}");

        let roomy = Budget::derive(1 << 20, &config);
        assert_eq!(roomy.proxy_connections, config.proxy.max_connections);
        assert_eq!(roomy.idle_upstream, config.proxy.pool_max_idle);
        assert_eq!(roomy.admin_connections, 256);
    }
}
