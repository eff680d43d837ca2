//! The upstream connection pool: per origin (scheme, host, port), a bounded set of idle
//! HTTP/1.1 connections reused most recently used first, one shared HTTP/2 connection when the
//! upstream's ALPN picks `h2`, a cap on open connections and a circuit breaker
//! ([`super::breaker`]).
//!
//! The delivery path takes no lock and looks nothing up: an endpoint finds its [`Origin`] in a
//! slot filled on its first delivery in a snapshot (the only time the origin registry's mutex is
//! taken). Idle connections sit in a fixed array of slots, each claimed by a compare-and-swap on
//! its stamp (a sequence number: the highest is the most recently released). Checkout takes the
//! newest and checks its idle age against `[proxy] pool_idle_timeout`, or against the server's
//! own `Keep-Alive: timeout` less a margin when that is shorter: a connection the server may be
//! closing right now is dropped, never used. The response body puts the connection back once it
//! has been read to the end (a body dropped half-read closes its connection). A full origin
//! evicts its oldest idle connection (`pool_max_idle_per_origin`); past `pool_max_idle` over
//! every origin a released connection is closed. A request a pooled connection could not start
//! (the upstream closed it while it was idle) goes to the next idle connection, then to a new
//! one; a request that was started is never sent twice.
//!
//! Each phase of opening a connection has its own deadline: every TCP connect attempt
//! (`connect_timeout`, in the egress guard) and the TLS handshake (`tls_handshake_timeout`),
//! and each is timed (`hooksign_upstream_connect_phase_seconds{phase}`). The open and idle
//! connections are gauges that follow the counts the pool keeps anyway, and every request
//! counts as sent on a new or a reused connection.
//! Upstream response heads are bounded ([`MAX_UPSTREAM_HEAD_BYTES`]). The proxy bounds the wait
//! for the response headers and the body.
//!
//! A config reload swaps how new connections are opened (the egress policy, the TLS roots, the
//! connect and handshake timeouts: [`Upstream::reconfigure`]). When the policy or the roots
//! change, every connection opened before belongs to a retired generation: closed when found
//! idle, when it comes back, or by the reaper, never used for another request.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use crossbeam_utils::atomic::AtomicCell;
use http::uri::{Authority, Parts, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntGauge;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use super::body::ChunkBody;
use super::breaker::{Admission, Breaker, BreakerPolicy, CircuitState};
use crate::client_cert::ClientCertificate;
use crate::config::ProxyConfig;
use crate::egress::{EgressPolicy, GuardedConnector};
use crate::metrics::UpstreamMetrics;
use crate::store::Endpoint;

/// How long an idle upstream connection is kept by default (`[proxy] pool_idle_timeout`): below
/// the idle timeouts common servers close connections after (Node.js 5 s, nginx 75 s, Apache
/// 5 s), so hooksign closes first and a POST is not sent into a connection the server is
/// closing (a race that cannot be retried), at the cost of reopening connections to customers
/// quiet for longer.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// TLS sessions remembered per client-certificate identity (its origins are few: one per
/// server the endpoint's URL names).
const IDENTITY_SESSIONS: usize = 32;

/// The largest upstream response head (status line and headers) read: a larger one fails the
/// exchange (`upstream_protocol`). The same bound as the proxy port's own request heads.
pub const MAX_UPSTREAM_HEAD_BYTES: usize = 64 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Io = TokioIo<Either<TcpStream, TlsStream<TcpStream>>>;

/// Why a request did not get a response from its upstream. The cause chain keeps the egress
/// guard's denial and rustls' error, so the proxy can tell the refusal codes apart.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to the upstream")]
    Connect(#[source] BoxError),
    #[error("TLS handshake with the upstream")]
    Tls(#[source] io::Error),
    #[error("TLS handshake with the upstream: no answer within {0:?}")]
    TlsTimeout(Duration),
    #[error("HTTP handshake with the upstream")]
    Handshake(#[source] hyper::Error),
    #[error("sending the request upstream")]
    Request(#[source] hyper::Error),
    /// The origin has `[proxy] max_connections_per_origin` connections open and none idle.
    #[error("the upstream's connection limit is reached")]
    Saturated,
}

impl UpstreamError {
    /// Whether the failure says the origin is unwell (it counts toward its circuit breaker):
    /// it could not be reached, or its TLS handshake failed or stalled. An egress denial, a
    /// forward proxy's failure or a full pool says nothing about the origin.
    pub fn trips_breaker(&self) -> bool {
        match self {
            Self::Connect(err) => {
                crate::egress::denial_in(err.as_ref()).is_none()
                    && crate::egress::tunnel_failure_in(err.as_ref()).is_none()
            }
            Self::Tls(_) | Self::TlsTimeout(_) | Self::Handshake(_) => true,
            Self::Request(_) | Self::Saturated => false,
        }
    }
}

/// The pool's limits, from `[proxy]`.
#[derive(Clone, Debug)]
pub struct PoolLimits {
    pub tls_handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_origin: usize,
    pub max_idle: usize,
    pub max_connections_per_origin: usize,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

impl PoolLimits {
    pub fn from_config(config: &ProxyConfig) -> Self {
        Self {
            tls_handshake_timeout: config.tls_handshake_timeout,
            idle_timeout: config.pool_idle_timeout,
            max_idle_per_origin: config.pool_max_idle_per_origin,
            max_idle: config.pool_max_idle,
            max_connections_per_origin: config.max_connections_per_origin,
            breaker_failures: config.breaker_failures,
            breaker_cooldown: config.breaker_cooldown,
        }
    }
}

/// The pooled upstream client every delivery goes through.
pub struct Upstream {
    /// How new connections are opened, swapped whole by a config reload
    /// ([`Upstream::reconfigure`]).
    dialer: ArcSwap<Dialer>,
    metrics: UpstreamMetrics,
    shared: Arc<Shared>,
    /// Every origin, by scheme, lowercase host, port (the default port spelled out or not is
    /// one origin) and the fingerprint of the client certificate its connections present, for
    /// [`Upstream::origin`] and the idle-connection reaper. The pool owns its origins: an
    /// origin lives while an endpoint's slot holds it or it has a connection open, so no store
    /// change (which replaces endpoints) closes a pooled connection.
    origins: Mutex<HashMap<OriginKey, Arc<Origin>>>,
}

/// Connections are shared by endpoints with the same scheme, host, port and client certificate
/// (a connection that presented one identity never carries another's deliveries).
type OriginKey = (Scheme, String, u16, Option<[u8; 32]>);

/// How new connections are opened: the egress guard's connector (its policy, each attempt's
/// connect timeout, the Happy Eyeballs stagger) and the TLS client (roots, ALPN, the session
/// cache), with the handshake's deadline.
struct Dialer {
    /// The generation of the connections it opens (see [`Shared::generation`]).
    generation: u64,
    connector: GuardedConnector,
    /// The TLS client configuration every connector is made from.
    tls_config: Arc<rustls::ClientConfig>,
    /// The connector of origins without a client certificate.
    tls: TlsConnector,
    tls_handshake_timeout: Duration,
}

/// What every origin of one pool shares.
struct Shared {
    /// The caps as configured at start (they size the idle slots); `idle_timeout` and
    /// `tls_handshake_timeout` as at start too: the live ones are [`Shared::idle_timeout`] and
    /// the [`Dialer`]'s.
    limits: PoolLimits,
    /// `pool_idle_timeout` in force, in nanoseconds (a config reload changes it).
    idle_timeout: AtomicU64,
    /// The connections' generation in service. A reload that changes who may be dialled or
    /// which roots are trusted starts a new one: a connection of an older generation is closed
    /// when found idle or released, never reused.
    generation: AtomicU64,
    breaker: BreakerPolicy,
    /// Idle connections over every origin (bounded by `max_idle`).
    idle_total: AtomicUsize,
    /// The last idle stamp handed out (stamps order idle connections by release).
    clock: AtomicU64,
    /// `hooksign_upstream_connections_open`, following every origin's `open`.
    open_gauge: IntGauge,
    /// `hooksign_upstream_connections_idle`, following `idle_total`.
    idle_gauge: IntGauge,
}

/// One origin's connections.
pub struct Origin {
    scheme: Scheme,
    authority: Authority,
    /// `scheme://authority/`: what the connector dials.
    connect_to: Uri,
    /// The `Host` header of HTTP/1.1 requests: the host, and the port when not the default.
    host: HeaderValue,
    /// The TLS server name (the host without IPv6 brackets); `None` when it is not valid.
    server_name: Option<ServerName<'static>>,
    /// The client certificate this origin's connections present; `None`: the pool's connector.
    client_tls: Option<Presenting>,
    idle: Box<[Slot]>,
    /// One past the highest idle slot ever filled: every slot from here on is empty, so
    /// checkout scans only the slots this origin has used (a connection is put in the first
    /// empty slot), one or two cache lines at fan-out instead of all of them.
    used: AtomicUsize,
    /// Open connections (busy or idle, HTTP/2 counted once), for `max_connections_per_origin`.
    open: AtomicUsize,
    /// The HTTP/2 connection every request shares, once the upstream negotiated `h2`.
    shared_h2: ArcSwapOption<SharedH2>,
    breaker: Breaker,
    shared: Arc<Shared>,
}

/// One idle connection's place. `stamp` owns the slot: [`EMPTY`], [`BUSY`] (being filled or
/// emptied by whoever swapped it in) or the connection's release stamp.
struct Slot {
    stamp: AtomicU64,
    cell: AtomicCell<Option<Box<Idle>>>,
}

const EMPTY: u64 = 0;
const BUSY: u64 = u64::MAX;

struct Idle {
    sender: http1::SendRequest<ChunkBody>,
    open: OpenConnection,
    since: Instant,
    /// How long it may stay idle: `pool_idle_timeout`, or less when the server said it closes
    /// sooner (`Keep-Alive: timeout=N`).
    max_idle: Duration,
}

/// Counts one open connection of an origin until dropped, and names the generation of the
/// [`Dialer`] that opened it. An HTTP/1.1 connection's mark travels with its `SendRequest`
/// (dropping one closes the connection, so the count is never behind when an old idle
/// connection is dropped for a new one); the shared HTTP/2 connection's lives in its task.
struct OpenConnection(Arc<Origin>, u64);

/// The shared HTTP/2 connection of an origin, and its generation.
struct SharedH2 {
    sender: http2::SendRequest<ChunkBody>,
    generation: u64,
}

/// A client certificate an origin's connections present: a connector like the pool's own
/// (same roots and ALPN) that presents it when the server asks, with a session cache of its
/// own. A session a server authenticated with one client certificate is never resumed by a
/// connection of another identity (or of none), which would carry that authentication over.
struct Presenting {
    certified: Arc<CertifiedKey>,
    resumption: Resumption,
    /// The connector, and the pool's TLS configuration it was made from: made again when a
    /// reload replaced that (new roots).
    made: ArcSwap<(Arc<rustls::ClientConfig>, TlsConnector)>,
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origin")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

// === impl Upstream ===

impl Upstream {
    /// A pool dialling TCP through `connector` (which bounds each connect attempt), TLS with
    /// `tls` (ALPN `h2` and `http/1.1` are set here), under `limits`.
    pub fn new(
        connector: GuardedConnector,
        tls: rustls::ClientConfig,
        limits: PoolLimits,
        metrics: UpstreamMetrics,
    ) -> Self {
        let tls = Arc::new(with_alpn(tls));
        let dialer = Dialer::new(0, connector, tls, limits.tls_handshake_timeout);
        let breaker = BreakerPolicy {
            failures: limits.breaker_failures,
            cooldown: limits.breaker_cooldown,
            epoch: Instant::now(),
        };
        let (open_gauge, idle_gauge) = (metrics.open.clone(), metrics.idle.clone());
        Self {
            dialer: ArcSwap::from_pointee(dialer),
            metrics,
            shared: Arc::new(Shared {
                idle_timeout: AtomicU64::new(nanos(limits.idle_timeout)),
                generation: AtomicU64::new(0),
                limits,
                breaker,
                idle_total: AtomicUsize::new(0),
                clock: AtomicU64::new(EMPTY),
                open_gauge,
                idle_gauge,
            }),
            origins: Mutex::new(HashMap::new()),
        }
    }

    /// The origin of `target` (an absolute `http`/`https` URL) whose connections present
    /// `identity`, shared by every endpoint with the same scheme, host, port and client
    /// certificate. Takes the registry's lock: called once per endpoint and snapshot (see
    /// [`Upstream::origin_of`]), never per request.
    pub fn origin(&self, target: &Uri, identity: Option<&ClientCertificate>) -> Arc<Origin> {
        let scheme = target.scheme().cloned().unwrap_or(Scheme::HTTPS);
        let authority = target
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("localhost"));
        let port = authority.port_u16().unwrap_or(default_port(&scheme));
        let key = (
            scheme.clone(),
            authority.host().to_ascii_lowercase(),
            port,
            identity.map(|identity| identity.fingerprint),
        );
        let mut origins = self.origins.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(origins.entry(key).or_insert_with(|| {
            let mut origin = Origin::new(scheme, authority, Arc::clone(&self.shared));
            origin.client_tls =
                identity.map(|identity| Presenting::new(identity, &self.dialer.load().tls_config));
            Arc::new(origin)
        }))
    }

    /// Applies a reloaded configuration to the connections opened from now on: they dial
    /// through `connector` (its egress policy and connect timeouts) and, when `tls` is given,
    /// trust its roots (the TLS session caches carry over), under `limits`' idle and handshake
    /// timeouts (its caps stay as at start: they size the pool). With `retire`, every connection
    /// opened before is closed instead of reused, the idle ones at once and the busy ones when
    /// they come back: a tightened egress policy or a removed root holds for every delivery
    /// that follows.
    pub fn reconfigure(
        &self,
        connector: GuardedConnector,
        tls: Option<rustls::ClientConfig>,
        limits: &PoolLimits,
        retire: bool,
    ) {
        let old = self.dialer.load_full();
        let tls = match tls {
            Some(mut tls) => {
                tls.resumption = old.tls_config.resumption.clone();
                Arc::new(with_alpn(tls))
            }
            None => Arc::clone(&old.tls_config),
        };
        let generation = match retire {
            true => self.shared.generation.load(Ordering::Acquire) + 1,
            false => old.generation,
        };
        let dialer = Dialer::new(generation, connector, tls, limits.tls_handshake_timeout);
        self.dialer.store(Arc::new(dialer));
        self.shared
            .idle_timeout
            .store(nanos(limits.idle_timeout), Ordering::Release);
        if retire {
            self.shared.generation.store(generation, Ordering::Release);
            self.drop_stale(Instant::now());
        }
    }

    /// The egress policy new connections are checked against.
    pub fn egress(&self) -> Arc<EgressPolicy> {
        Arc::clone(self.dialer.load().connector.policy())
    }

    /// Whether the egress policy in force allows plain `http` destinations.
    pub fn allows_http(&self) -> bool {
        self.dialer.load().connector.policy().allows_http()
    }

    /// The origin of `endpoint`'s URL, kept in the endpoint's slot on its first delivery: the
    /// endpoint lives on in every snapshot its record is unchanged in, and so does this origin
    /// with its idle connections, whatever other endpoints a store change touches.
    pub fn origin_of(&self, endpoint: &Endpoint) -> Arc<Origin> {
        let slot = endpoint
            .route
            .get_or_init(|| self.origin_of_record(endpoint) as Arc<dyn Any + Send + Sync>);
        match Arc::clone(slot).downcast::<Origin>() {
            Ok(origin) => origin,
            // Only this function fills the slot, always with an `Origin`.
            Err(_) => self.origin_of_record(endpoint),
        }
    }

    fn origin_of_record(&self, endpoint: &Endpoint) -> Arc<Origin> {
        self.origin(&endpoint.target, endpoint.client_certificate.as_deref())
    }

    /// Sends `request` (whose URI is the absolute target) to `origin`: on the shared HTTP/2
    /// connection, else the most recently used idle HTTP/1.1 one younger than its idle
    /// timeout, else a new connection (when the origin is under its connection cap).
    pub async fn send(
        &self,
        origin: &Arc<Origin>,
        mut request: Request<ChunkBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let current = self.shared.generation.load(Ordering::Acquire);
        // The shared HTTP/2 connection, unless a reload retired it (then forgotten).
        let shared = origin.shared_h2.load_full().filter(|shared| {
            let retired = shared.generation != current;
            if retired {
                origin.forget_h2(shared);
            }
            !retired
        });
        if let Some(shared) = shared {
            let mut sender = shared.sender.clone();
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.metrics.on_reused.inc();
                    return Ok(response.map(UpstreamBody::unpooled));
                }
                Err(mut err) => match err.take_message() {
                    Some(unsent) => {
                        origin.forget_h2(&shared);
                        request = unsent;
                    }
                    None => {
                        self.metrics.on_reused.inc();
                        return Err(UpstreamError::Request(err.into_error()));
                    }
                },
            }
        }

        to_http1_form(&mut request, origin);
        while let Some(Idle {
            mut sender,
            open,
            since,
            max_idle,
        }) = origin.take_idle()
        {
            // Past its idle timeout the upstream may be closing it right now: a POST sent into
            // that race cannot be retried. Dropped (closed), as is one closed while idle or
            // opened under a configuration a reload retired.
            if since.elapsed() >= max_idle || sender.is_closed() || open.1 != current {
                continue;
            }
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.metrics.on_reused.inc();
                    return Ok(UpstreamBody::pooled(response, sender, open));
                }
                // Provably never left: hyper hands the request back only when it wrote nothing.
                Err(mut err) => match err.take_message() {
                    Some(unsent) => request = unsent,
                    None => {
                        self.metrics.on_reused.inc();
                        return Err(UpstreamError::Request(err.into_error()));
                    }
                },
            }
        }

        // Opening a connection (DNS, TCP, TLS) is a large future: boxed, so the pooled path's
        // future stays small and cheap to move.
        Box::pin(self.connect_and_send(origin, request)).await
    }

    /// Opens a connection to `origin` and sends `request` (in HTTP/1.1 form) on it.
    async fn connect_and_send(
        &self,
        origin: &Arc<Origin>,
        mut request: Request<ChunkBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        tracing::Span::current().record("hooksign.connection.reused", false);
        let dialer = self.dialer.load_full();
        let open = origin.open_connection(dialer.generation)?;
        let generation = open.1;
        let (io, h2) = self.connect(&dialer, origin).await?;
        self.metrics.on_new.inc();
        if h2 {
            let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_UPSTREAM_HEAD_BYTES as u32)
                .handshake(io)
                .await
                .map_err(UpstreamError::Handshake)?;
            drive(connection, "HTTP/2", Some(open));
            origin.shared_h2.store(Some(Arc::new(SharedH2 {
                sender: sender.clone(),
                generation,
            })));
            to_http2_form(&mut request, origin);
            let response = sender
                .send_request(request)
                .await
                .map_err(UpstreamError::Request)?;
            return Ok(response.map(UpstreamBody::unpooled));
        }
        let (mut sender, connection) = http1::Builder::new()
            .max_buf_size(MAX_UPSTREAM_HEAD_BYTES)
            .handshake(io)
            .await
            .map_err(UpstreamError::Handshake)?;
        drive(connection, "HTTP/1.1", None);
        let response = sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Request)?;
        Ok(UpstreamBody::pooled(response, sender, open))
    }

    /// TCP through the egress guard, then TLS (for `https`) under its own deadline. Whether
    /// ALPN chose `h2`.
    async fn connect(&self, dialer: &Dialer, origin: &Origin) -> Result<(Io, bool), UpstreamError> {
        let connected = dialer
            .connector
            .connect(&origin.connect_to)
            .await
            .map_err(|err| UpstreamError::Connect(Box::new(err)))?;
        self.metrics
            .phase_dns
            .observe(connected.resolved.as_secs_f64());
        self.metrics
            .phase_connect
            .observe(connected.connected.as_secs_f64());
        let tcp = connected.stream;
        if origin.scheme == Scheme::HTTP {
            return Ok((TokioIo::new(Either::Left(tcp)), false));
        }
        let name = origin.server_name.clone().ok_or_else(|| {
            UpstreamError::Tls(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the host is not a valid TLS server name",
            ))
        })?;
        let timeout = dialer.tls_handshake_timeout;
        let connector = match &origin.client_tls {
            Some(presenting) => presenting.connector(&dialer.tls_config),
            None => dialer.tls.clone(),
        };
        let started = Instant::now();
        let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| UpstreamError::TlsTimeout(timeout))?
            .map_err(UpstreamError::Tls)?;
        self.metrics
            .phase_tls
            .observe(started.elapsed().as_secs_f64());
        let session = tls.get_ref().1;
        let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        match resumed {
            true => self.metrics.tls_resumed.inc(),
            false => self.metrics.tls_full.inc(),
        }
        tracing::info!(target: crate::trace_names::TARGET, resumed, "tls");
        tracing::Span::current().record("tls.resumed", resumed);
        let h2 = session.alpn_protocol() == Some(b"h2");
        Ok((TokioIo::new(Either::Right(tls)), h2))
    }

    /// Closes, every third of the idle timeout, the connections idle for longer than theirs (and
    /// those the upstream closed), and forgets origins that no endpoint holds and that have no
    /// connection left. Runs forever.
    pub async fn close_idle_connections(&self) {
        loop {
            let period = (self.shared.idle_timeout() / 3).max(Duration::from_millis(10));
            tokio::time::sleep(period).await;
            self.drop_stale(Instant::now());
        }
    }

    /// One pass of the reaper; returns how many idle connections are kept.
    pub fn drop_stale(&self, now: Instant) -> usize {
        let mut kept = 0;
        let mut origins = self.origins.lock().unwrap_or_else(PoisonError::into_inner);
        origins.retain(|_, origin| {
            kept += origin.drop_stale(now);
            // Held by an endpoint, or by one of its own open connections.
            Arc::strong_count(origin) > 1
        });
        kept
    }

    /// Idle connections over every origin.
    pub fn idle_connections(&self) -> usize {
        self.shared.idle_total.load(Ordering::Relaxed)
    }
}

// === impl Origin ===

impl Origin {
    fn new(scheme: Scheme, authority: Authority, shared: Arc<Shared>) -> Self {
        let host = match authority.port_u16() {
            Some(port) if port != default_port(&scheme) => {
                HeaderValue::from_str(authority.as_str())
            }
            _ => HeaderValue::from_str(authority.host()),
        }
        .expect("a URI authority is a valid header value");
        let connect_to = Uri::from_parts({
            let mut parts = Parts::default();
            parts.scheme = Some(scheme.clone());
            parts.authority = Some(authority.clone());
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
            parts
        })
        .expect("scheme, authority and / make a URI");
        let bare = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let server_name = ServerName::try_from(bare.to_owned()).ok();
        let idle = (0..shared.limits.max_idle_per_origin)
            .map(|_| Slot {
                stamp: AtomicU64::new(EMPTY),
                cell: AtomicCell::new(None),
            })
            .collect();
        Self {
            scheme,
            authority,
            connect_to,
            host,
            server_name,
            client_tls: None,
            idle,
            used: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            shared_h2: ArcSwapOption::empty(),
            breaker: Breaker::default(),
            shared,
        }
    }

    /// Whether a delivery may go to this origin now (see [`Breaker`]).
    pub fn admit(&self) -> Admission {
        self.breaker.admit(&self.shared.breaker)
    }

    /// Records, for its breaker, whether the origin answered; the state change this caused.
    pub fn record(&self, healthy: bool) -> Option<CircuitState> {
        self.breaker.record(&self.shared.breaker, healthy)
    }

    /// Counts a connection about to be opened, or refuses at the cap.
    fn open_connection(self: &Arc<Self>, generation: u64) -> Result<OpenConnection, UpstreamError> {
        let cap = self.shared.limits.max_connections_per_origin;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now < cap).then_some(now + 1)
            })
            .map_err(|_| UpstreamError::Saturated)?;
        self.shared.open_gauge.inc();
        Ok(OpenConnection(Arc::clone(self), generation))
    }

    /// Takes the most recently released idle connection.
    fn take_idle(&self) -> Option<Idle> {
        loop {
            let used = self.used.load(Ordering::Acquire);
            let (index, stamp) = self.idle[..used]
                .iter()
                .enumerate()
                .map(|(index, slot)| (index, slot.stamp.load(Ordering::Acquire)))
                .filter(|&(_, stamp)| stamp != EMPTY && stamp != BUSY)
                .max_by_key(|&(_, stamp)| stamp)?;
            let slot = &self.idle[index];
            if slot
                .stamp
                .compare_exchange(stamp, BUSY, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue; // another delivery took it
            }
            let idle = slot.cell.take();
            slot.stamp.store(EMPTY, Ordering::Release);
            self.shared.idle_removed();
            if let Some(idle) = idle {
                return Some(*idle);
            }
        }
    }

    /// Puts a connection whose response was read to the end back, evicting the oldest idle
    /// one when the origin is full; closes it instead past the pool's total.
    fn put_idle(
        &self,
        sender: http1::SendRequest<ChunkBody>,
        open: OpenConnection,
        advertised: Option<Duration>,
    ) {
        let idle_timeout = self.shared.idle_timeout();
        let max_idle = advertised.map_or(idle_timeout, |server| {
            // The server counts from its last write, we from our last read: keep a margin.
            let margin = (server / 2).min(Duration::from_millis(500));
            idle_timeout.min(server - margin)
        });
        let retired = open.1 != self.shared.generation.load(Ordering::Acquire);
        if self.idle.is_empty() || max_idle.is_zero() || retired {
            return; // dropped: the connection closes
        }
        if self.shared.idle_added() >= self.shared.limits.max_idle {
            self.shared.idle_removed();
            return;
        }
        let stamp = self.shared.clock.fetch_add(1, Ordering::AcqRel) + 1;
        let idle = Box::new(Idle {
            sender,
            open,
            since: Instant::now(),
            max_idle,
        });
        for (index, slot) in self.idle.iter().enumerate() {
            if slot
                .stamp
                .compare_exchange(EMPTY, BUSY, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.used.fetch_max(index + 1, Ordering::AcqRel);
                slot.cell.store(Some(idle));
                slot.stamp.store(stamp, Ordering::Release);
                return;
            }
        }
        // Full: the oldest makes room (it is the likeliest to be closed by the server).
        let oldest = self.idle[..self.used.load(Ordering::Acquire)]
            .iter()
            .map(|slot| (slot, slot.stamp.load(Ordering::Acquire)))
            .filter(|&(_, stamp)| stamp != EMPTY && stamp != BUSY)
            .min_by_key(|&(_, stamp)| stamp);
        if let Some((slot, old)) = oldest {
            if slot
                .stamp
                .compare_exchange(old, BUSY, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                drop(slot.cell.swap(Some(idle)));
                slot.stamp.store(stamp, Ordering::Release);
                // One idle connection replaced another: the total is unchanged.
                self.shared.idle_removed();
                return;
            }
        }
        // Every slot was being used by another caller at once: this one closes.
        self.shared.idle_removed();
    }

    fn forget_h2(&self, closed: &Arc<SharedH2>) {
        self.shared_h2
            .compare_and_swap(closed, None::<Arc<SharedH2>>);
    }

    fn drop_stale(&self, now: Instant) -> usize {
        let current = self.shared.generation.load(Ordering::Acquire);
        if let Some(shared) = self.shared_h2.load_full() {
            if shared.sender.is_closed() || shared.generation != current {
                self.forget_h2(&shared);
            }
        }
        let mut kept = 0;
        for slot in self.idle[..self.used.load(Ordering::Acquire)].iter() {
            let stamp = slot.stamp.load(Ordering::Acquire);
            if stamp == EMPTY
                || stamp == BUSY
                || slot
                    .stamp
                    .compare_exchange(stamp, BUSY, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            match slot.cell.take() {
                Some(idle)
                    if !idle.sender.is_closed()
                        && idle.open.1 == current
                        && now.saturating_duration_since(idle.since) < idle.max_idle =>
                {
                    slot.cell.store(Some(idle));
                    slot.stamp.store(stamp, Ordering::Release);
                    kept += 1;
                }
                _ => {
                    slot.stamp.store(EMPTY, Ordering::Release);
                    self.shared.idle_removed();
                }
            }
        }
        kept
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.shared.open_gauge.dec();
    }
}

// === impl Dialer ===

impl Dialer {
    fn new(
        generation: u64,
        connector: GuardedConnector,
        tls_config: Arc<rustls::ClientConfig>,
        tls_handshake_timeout: Duration,
    ) -> Self {
        Self {
            generation,
            connector,
            tls: TlsConnector::from(Arc::clone(&tls_config)),
            tls_config,
            tls_handshake_timeout,
        }
    }
}

/// The pool's TLS configuration offers HTTP/2 and HTTP/1.1.
fn with_alpn(mut tls: rustls::ClientConfig) -> rustls::ClientConfig {
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tls
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

// === impl Presenting ===

impl Presenting {
    fn new(identity: &ClientCertificate, base: &Arc<rustls::ClientConfig>) -> Self {
        let certified = Arc::clone(&identity.certified);
        let resumption = Resumption::in_memory_sessions(IDENTITY_SESSIONS);
        let connector = Self::make(&certified, &resumption, base);
        Self {
            certified,
            resumption,
            made: ArcSwap::from_pointee((Arc::clone(base), connector)),
        }
    }

    /// The connector presenting the certificate, made from `base` (the pool's TLS config).
    fn connector(&self, base: &Arc<rustls::ClientConfig>) -> TlsConnector {
        let made = self.made.load();
        if Arc::ptr_eq(&made.0, base) {
            return made.1.clone();
        }
        let connector = Self::make(&self.certified, &self.resumption, base);
        self.made
            .store(Arc::new((Arc::clone(base), connector.clone())));
        connector
    }

    fn make(
        certified: &Arc<CertifiedKey>,
        resumption: &Resumption,
        base: &rustls::ClientConfig,
    ) -> TlsConnector {
        let mut config = base.clone();
        config.client_auth_cert_resolver =
            Arc::new(rustls::sign::SingleCertAndKey::from(Arc::clone(certified)));
        config.resumption = resumption.clone();
        TlsConnector::from(Arc::new(config))
    }
}

// === impl Shared ===

impl Shared {
    /// `pool_idle_timeout` in force.
    fn idle_timeout(&self) -> Duration {
        Duration::from_nanos(self.idle_timeout.load(Ordering::Acquire))
    }

    /// Counts one more idle connection; the count before.
    fn idle_added(&self) -> usize {
        self.idle_gauge.inc();
        self.idle_total.fetch_add(1, Ordering::AcqRel)
    }

    /// Counts one idle connection less.
    fn idle_removed(&self) {
        self.idle_gauge.dec();
        self.idle_total.fetch_sub(1, Ordering::AcqRel);
    }
}

fn default_port(scheme: &Scheme) -> u16 {
    if *scheme == Scheme::HTTP {
        80
    } else {
        443
    }
}

/// Runs a connection's I/O in its own task until the connection ends; `open`, when given,
/// counts it against its origin's cap meanwhile.
fn drive<C>(connection: C, version: &'static str, open: Option<OpenConnection>)
where
    C: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, version, "upstream connection ended with an error");
        }
        drop(open);
    });
}

/// The `timeout=N` (seconds) of a `Keep-Alive` response header: when the server will close
/// the connection once idle (Node.js sends `timeout=5`, Apache its `KeepAliveTimeout`).
fn keep_alive_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("keep-alive")?.to_str().ok()?;
    value
        .split(',')
        .filter_map(|param| param.trim().split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("timeout"))
        .and_then(|(_, seconds)| seconds.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// HTTP/1.1 requests carry the path alone and a `Host` header.
fn to_http1_form(request: &mut Request<ChunkBody>, origin: &Origin) {
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(path);
    request
        .headers_mut()
        .insert(header::HOST, origin.host.clone());
}

/// HTTP/2 requests carry the absolute URI (`:scheme`, `:authority`, `:path`), no `Host`.
fn to_http2_form(request: &mut Request<ChunkBody>, origin: &Origin) {
    let mut parts = Parts::default();
    parts.scheme = Some(origin.scheme.clone());
    parts.authority = Some(origin.authority.clone());
    parts.path_and_query = Some(
        request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    *request.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path make a URI");
    request.headers_mut().remove(header::HOST);
}

/// An upstream response body. On an HTTP/1.1 connection, the connection goes back to its
/// origin's idle slots once the body has been read to the end.
pub struct UpstreamBody {
    inner: Incoming,
    /// The connection, its place under the origin's cap, and the idle timeout its server
    /// advertised.
    reusable: Option<(
        http1::SendRequest<ChunkBody>,
        OpenConnection,
        Option<Duration>,
    )>,
}

impl UpstreamBody {
    fn unpooled(inner: Incoming) -> Self {
        Self {
            inner,
            reusable: None,
        }
    }

    fn pooled(
        response: Response<Incoming>,
        sender: http1::SendRequest<ChunkBody>,
        open: OpenConnection,
    ) -> Response<Self> {
        let status = response.status();
        let advertised = keep_alive_timeout(response.headers());
        response.map(|inner| {
            let mut body = Self {
                inner,
                // A 101 switched the connection to another protocol: never reused.
                reusable: (status != StatusCode::SWITCHING_PROTOCOLS)
                    .then_some((sender, open, advertised)),
            };
            // An empty body (204, 304, `Content-Length: 0`) may never be polled.
            if body.inner.is_end_stream() {
                body.release();
            }
            body
        })
    }

    fn release(&mut self) {
        if let Some((sender, open, advertised)) = self.reusable.take() {
            let origin = Arc::clone(&open.0);
            origin.put_idle(sender, open, advertised);
        }
    }
}

impl fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("pooled", &self.reusable.is_some())
            .finish_non_exhaustive()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.reusable = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PoolLimits {
        PoolLimits {
            tls_handshake_timeout: Duration::from_secs(1),
            idle_timeout: IDLE_TIMEOUT,
            max_idle_per_origin: 4,
            max_idle: 16,
            max_connections_per_origin: 2,
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(30),
        }
    }

    fn shared() -> Arc<Shared> {
        let limits = limits();
        Arc::new(Shared {
            breaker: BreakerPolicy {
                failures: limits.breaker_failures,
                cooldown: limits.breaker_cooldown,
                epoch: Instant::now(),
            },
            idle_timeout: AtomicU64::new(nanos(limits.idle_timeout)),
            generation: AtomicU64::new(0),
            limits,
            idle_total: AtomicUsize::new(0),
            clock: AtomicU64::new(EMPTY),
            open_gauge: IntGauge::new("open", "open").unwrap(),
            idle_gauge: IntGauge::new("idle", "idle").unwrap(),
        })
    }

    fn origin(url: &str) -> Origin {
        let uri: Uri = url.parse().unwrap();
        Origin::new(
            uri.scheme().unwrap().clone(),
            uri.authority().unwrap().clone(),
            shared(),
        )
    }

    #[test]
    fn the_host_header_names_the_port_only_when_not_the_default() {
        for (url, host) in [
            ("https://example.com/hooks", "example.com"),
            ("https://example.com:443/", "example.com"),
            ("https://example.com:8443/", "example.com:8443"),
            ("http://example.com:80/", "example.com"),
            ("http://example.com:443/", "example.com:443"),
            ("https://[2001:db8::1]/", "[2001:db8::1]"),
            ("https://[2001:db8::1]:8443/x?y", "[2001:db8::1]:8443"),
        ] {
            assert_eq!(origin(url).host, host, "{url}");
        }
    }

    #[test]
    fn tls_server_names_drop_the_ipv6_brackets() {
        assert_eq!(
            origin("https://[2001:db8::1]:8443/").server_name,
            Some(ServerName::try_from("2001:db8::1").unwrap())
        );
        assert_eq!(
            origin("https://example.com/").server_name,
            Some(ServerName::try_from("example.com").unwrap())
        );
    }

    #[test]
    fn requests_take_each_versions_form() {
        let origin = origin("https://example.com:8443/");
        assert_eq!(origin.connect_to, "https://example.com:8443/");
        let mut request = Request::new(ChunkBody::default());
        *request.uri_mut() = "https://example.com:8443/in?token=a".parse().unwrap();

        to_http1_form(&mut request, &origin);
        assert_eq!(request.uri(), "/in?token=a");
        assert_eq!(request.headers()[header::HOST], "example.com:8443");

        to_http2_form(&mut request, &origin);
        assert_eq!(request.uri(), "https://example.com:8443/in?token=a");
        assert!(request.headers().get(header::HOST).is_none());
    }

    #[test]
    fn endpoints_of_one_origin_share_its_pool() {
        let pool = Upstream::new(
            GuardedConnector::new(
                Arc::new(crate::egress::EgressPolicy::new(
                    &crate::config::EgressConfig {
                        allow_http: true,
                        allow_private: false,
                        allow_cidrs: Vec::new(),
                        allow_ports: Vec::new(),
                        ca_file: None,
                        proxy: None,
                    },
                    Arc::new(crate::egress::SystemResolver),
                )),
                Duration::from_secs(1),
            ),
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
            limits(),
            crate::metrics::Metrics::new().unwrap().upstream.clone(),
        );
        let a = pool.origin(&"https://example.com/a".parse().unwrap(), None);
        let b = pool.origin(&"https://example.com:443/b?x".parse().unwrap(), None);
        let c = pool.origin(&"https://example.com:8443/a".parse().unwrap(), None);
        let d = pool.origin(&"http://example.com/a".parse().unwrap(), None);
        let e = pool.origin(&"https://EXAMPLE.com/e".parse().unwrap(), None);
        assert!(Arc::ptr_eq(&a, &b), "the default port is the same origin");
        assert!(Arc::ptr_eq(&a, &e), "host names are not case-sensitive");
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(!Arc::ptr_eq(&a, &d));
        let open = a.open_connection(0).unwrap();
        drop((a, b, c, d, e));
        pool.drop_stale(Instant::now());
        assert_eq!(
            pool.origins.lock().unwrap().len(),
            1,
            "an origin with a connection open is kept"
        );
        drop(open);
        assert_eq!(pool.drop_stale(Instant::now()), 0);
        assert!(
            pool.origins.lock().unwrap().is_empty(),
            "origins no endpoint holds are forgotten"
        );
    }

    #[test]
    fn keep_alive_timeouts_are_read_from_the_header() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(keep_alive_timeout(&headers), None);
        headers.insert(
            "keep-alive",
            HeaderValue::from_static("timeout=5, max=1000"),
        );
        assert_eq!(keep_alive_timeout(&headers), Some(Duration::from_secs(5)));
        headers.insert("keep-alive", HeaderValue::from_static("max=3,Timeout = 1"));
        assert_eq!(keep_alive_timeout(&headers), Some(Duration::from_secs(1)));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=soon"));
        assert_eq!(keep_alive_timeout(&headers), None);
    }

    #[test]
    fn idle_slots_are_lock_free() {
        assert!(AtomicCell::<Option<Box<Idle>>>::is_lock_free());
    }

    #[test]
    fn open_connections_are_capped_per_origin() {
        let origin = Arc::new(origin("https://example.com/"));
        let a = origin.open_connection(0).unwrap();
        let _b = origin.open_connection(0).unwrap();
        assert!(matches!(
            origin.open_connection(0),
            Err(UpstreamError::Saturated)
        ));
        drop(a);
        assert!(origin.open_connection(0).is_ok());
    }
}
