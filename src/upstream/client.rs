//! The upstream client: the [`Upstream`] pool over rustls (HTTP/1.1 keep-alive, HTTP/2 by ALPN),
//! trusting the platform's roots plus `[egress] ca_file`. TCP connections come from the egress
//! guard's [`GuardedConnector`], which resolves, classifies and dials the checked address (each
//! attempt under `[proxy] connect_timeout`); rustls on top verifies the certificate against the
//! URL's hostname.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use super::pool::{PoolLimits, Upstream};
use crate::config::{EgressConfig, ProxyConfig};
use crate::egress::{EgressPolicy, GuardedConnector};
use crate::metrics::UpstreamMetrics;

/// Why the TLS client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading egress.ca_file {}: {source}", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("egress.ca_file {} holds no certificate", path.display())]
    CaFileEmpty { path: PathBuf },
    #[error("egress.ca_file {}: {source}", path.display())]
    CaCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("building the TLS client: {0}")]
    Tls(#[from] rustls::Error),
    #[error("no trusted root certificates: the platform has none and egress.ca_file is not set")]
    NoRoots,
}

/// Builds the pooled upstream client; every connection it opens passes `policy`.
pub fn build(
    egress: &EgressConfig,
    proxy: &ProxyConfig,
    policy: Arc<EgressPolicy>,
    metrics: UpstreamMetrics,
) -> Result<Upstream, ClientError> {
    let mut tls = tls_config(egress)?;
    // Sized for the fan-out: rustls' default store remembers 32 servers (256 tickets, 8 each),
    // so beyond a few dozen customers every new connection paid a full handshake.
    tls.resumption = Resumption::in_memory_sessions(
        proxy
            .tls_session_cache
            .saturating_mul(TLS13_TICKETS_PER_SERVER),
    );
    Ok(Upstream::new(
        connector(proxy, policy),
        tls,
        PoolLimits::from_config(proxy),
        metrics,
    ))
}

/// The egress guard's connector under `proxy`'s connect timeout and Happy Eyeballs stagger.
pub fn connector(proxy: &ProxyConfig, policy: Arc<EgressPolicy>) -> GuardedConnector {
    GuardedConnector::new(policy, proxy.connect_timeout)
        .with_attempt_delay(proxy.happy_eyeballs_delay)
}

/// How many TLS 1.3 tickets rustls' memory cache keeps per server: its `size` is in tickets.
const TLS13_TICKETS_PER_SERVER: usize = 8;

/// The rustls client configuration: platform roots plus the configured CA file.
pub fn tls_config(egress: &EgressConfig) -> Result<ClientConfig, ClientError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::debug!(error = %err, "skipping an unreadable platform certificate");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "loaded platform root certificates");
    if let Some(path) = &egress.ca_file {
        add_ca_file(&mut roots, path)?;
    }
    if roots.is_empty() {
        return Err(ClientError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), ClientError> {
    let mut count = 0;
    let certs = CertificateDer::pem_file_iter(path).map_err(|source| ClientError::CaFile {
        path: path.to_owned(),
        source,
    })?;
    for cert in certs {
        let cert = cert.map_err(|source| ClientError::CaFile {
            path: path.to_owned(),
            source,
        })?;
        roots
            .add(cert)
            .map_err(|source| ClientError::CaCertificate {
                path: path.to_owned(),
                source,
            })?;
        count += 1;
    }
    if count == 0 {
        return Err(ClientError::CaFileEmpty {
            path: path.to_owned(),
        });
    }
    Ok(())
}
