//! Asynchronous name resolution for the egress guard: [`DnsResolver`], hickory-resolver on the
//! tokio runtime, configured from `/etc/resolv.conf` (name servers, search list, `ndots`,
//! `timeout`, `attempts`) and answering from `/etc/hosts` first.
//!
//! It replaces `getaddrinfo` on tokio's blocking pool (which re-read `/etc/hosts` at every call
//! and cached nothing): a lookup is a future on the runtime, never a thread, and an answer is
//! kept for its TTL in a cache bounded to [`CACHE_ENTRIES`] answers, a name that does not
//! exist for at most [`NEGATIVE_TTL`]. It only resolves: every address it returns still goes
//! through [`super::EgressPolicy::resolve`]'s classification before anything is dialled, and
//! the policy's own deadline (`RESOLVE_TIMEOUT`) bounds each lookup.
//!
//! `/etc/hosts` is read once, when the resolver is built, and answers as glibc's `files` source
//! does: a name it lists resolves to its addresses there and nowhere else (hickory alone would
//! ask the name servers for the family the file does not list, and wait for them).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Hosts, TokioResolver};

use super::Resolve;

/// Answers kept in the cache, at most (an A and an AAAA answer per name: about 16,000 names).
pub const CACHE_ENTRIES: u64 = 32_768;

/// The longest a name that does not exist (NXDOMAIN, no address) is remembered as such: a
/// customer who fixes their DNS is reachable again within seconds.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// Where the name servers come from.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Why a [`DnsResolver`] could not be built or a name not resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    #[error("reading {}", path.display())]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: NetError,
    },
    #[error("reading the hosts file {}", path.display())]
    Hosts {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("building the resolver")]
    Build(#[source] NetError),
    #[error("looking the name up")]
    Lookup(#[source] NetError),
}

/// hickory-resolver with the system's configuration, caching answers (see the module docs).
#[derive(Clone)]
pub struct DnsResolver {
    inner: Arc<TokioResolver>,
    /// The hosts file, consulted first.
    hosts: Arc<Hosts>,
}

impl fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsResolver").finish_non_exhaustive()
    }
}

// === impl DnsResolver ===

impl DnsResolver {
    /// The system's resolver: `/etc/resolv.conf` and `/etc/hosts`. A missing or unreadable
    /// `resolv.conf` leaves the hosts file only (and every other name unresolved), with a
    /// warning: a sidecar whose deliveries go to IP literals needs no name server.
    pub fn system() -> Result<Self, DnsError> {
        let (config, options) = system_conf();
        let hosts = Hosts::from_system().unwrap_or_else(|err| {
            tracing::warn!(error = %err, "/etc/hosts unreadable: names go to the name servers");
            Hosts::default()
        });
        Self::build(config, options, hosts)
    }

    /// As [`DnsResolver::system`], with the static names read from `hosts` instead of
    /// `/etc/hosts` (tests give names addresses this way without editing the machine's file).
    pub fn with_hosts_file(hosts: &Path) -> Result<Self, DnsError> {
        let (config, options) = system_conf();
        let file = std::fs::File::open(hosts).map_err(|source| DnsError::Hosts {
            path: hosts.to_owned(),
            source,
        })?;
        let mut table = Hosts::default();
        table
            .read_hosts_conf(file)
            .map_err(|source| DnsError::Hosts {
                path: hosts.to_owned(),
                source,
            })?;
        Self::build(config, options, table)
    }

    fn build(
        config: ResolverConfig,
        mut options: ResolverOpts,
        hosts: Hosts,
    ) -> Result<Self, DnsError> {
        options.cache_size = CACHE_ENTRIES;
        options.negative_max_ttl = Some(NEGATIVE_TTL);
        // Both families, IPv6 first: Happy Eyeballs interleaves them (RFC 8305 section 4).
        options.ip_strategy = LookupIpStrategy::Ipv6AndIpv4;
        // The hosts file is ours to consult (see `lookup`).
        options.use_hosts_file = ResolveHosts::Never;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(DnsError::Build)?;
        Ok(Self {
            inner: Arc::new(resolver),
            hosts: Arc::new(hosts),
        })
    }

    /// Every address `host` resolves to: the hosts file's, else the name servers' (cached; see
    /// the module docs).
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Some(listed) = self.listed(host) {
            return Ok(listed);
        }
        let answer = self.inner.lookup_ip(host).await.map_err(DnsError::Lookup)?;
        Ok(answer.iter().collect())
    }

    /// The hosts file's addresses for `host`, IPv6 first; `None` when it does not list it.
    fn listed(&self, host: &str) -> Option<Vec<IpAddr>> {
        let name = Name::from_utf8(host).ok()?;
        let mut addrs = Vec::new();
        for kind in [RecordType::AAAA, RecordType::A] {
            let query = Query::query(name.clone(), kind);
            if let Some(lookup) = self.hosts.lookup_static_host(&query) {
                addrs.extend(lookup.answers().iter().filter_map(|r| r.data.ip_addr()));
            }
        }
        (!addrs.is_empty()).then_some(addrs)
    }
}

/// `/etc/resolv.conf`'s name servers and options; without one, none (the hosts file only).
fn system_conf() -> (ResolverConfig, ResolverOpts) {
    match hickory_resolver::system_conf::read_system_conf() {
        Ok(read) => read,
        Err(source) => {
            let err = DnsError::ResolvConf {
                path: RESOLV_CONF.into(),
                source,
            };
            tracing::warn!(
                error = %crate::error_chain::error_chain(&err),
                "no name servers: only the hosts file resolves names"
            );
            (
                ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
                ResolverOpts::default(),
            )
        }
    }
}

impl Resolve for DnsResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        _port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>> {
        Box::pin(async move { self.lookup(host).await.map_err(io::Error::other) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(text: &str) -> (tempfile::NamedTempFile, DnsResolver) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        let resolver = DnsResolver::with_hosts_file(file.path()).unwrap();
        (file, resolver)
    }

    #[tokio::test]
    async fn names_in_the_hosts_file_resolve_to_both_families() {
        let (_file, resolver) = hosts("127.0.0.9 dual.hooks.test\n::1 dual.hooks.test\n");
        let mut addrs = resolver.lookup("dual.hooks.test").await.unwrap();
        addrs.sort();
        assert_eq!(
            addrs,
            [
                "127.0.0.9".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn a_listed_name_never_waits_for_the_name_servers_for_its_other_family() {
        // Only an IPv4 address listed: the AAAA question must not go to the (unanswering, in a
        // sandbox) name servers, whose timeout would stall every new connection.
        let (_file, resolver) = hosts("127.0.0.9 v4only.hooks.test\n");
        let addrs =
            tokio::time::timeout(Duration::from_secs(1), resolver.lookup("v4only.hooks.test"))
                .await
                .expect("answered from the hosts file alone")
                .unwrap();
        assert_eq!(addrs, ["127.0.0.9".parse::<IpAddr>().unwrap()]);
    }

    #[tokio::test]
    async fn the_system_resolver_knows_localhost() {
        let resolver = DnsResolver::system().unwrap();
        let addrs = resolver.lookup("localhost").await.unwrap();
        assert!(addrs.iter().all(IpAddr::is_loopback), "{addrs:?}");
        assert!(!addrs.is_empty());
    }
}
