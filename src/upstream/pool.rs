//! The upstream connection pool: per origin (scheme, host, port), idle HTTP/1.1 connections in
//! a lock-free queue, and one shared HTTP/2 connection when the upstream's ALPN picks `h2`.
//!
//! The delivery path takes no lock and looks nothing up: an endpoint finds its [`Origin`] in a
//! slot filled on its first delivery in a snapshot (the only time the origin registry's mutex is
//! taken), pops an idle connection, sends, and the response body puts the connection back once
//! it has been read to the end (a body dropped half-read closes its connection). The `Host`
//! header is built once per origin. A request a pooled connection could not start (the upstream
//! closed it while it was idle) goes to the next idle connection, then to a new one; a request
//! that was started is never sent twice. An idle connection older than the idle timeout
//! ([`IDLE_TIMEOUT`] by default) is never checked out, and is closed by
//! [`Upstream::close_idle_connections`].

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use crossbeam_queue::SegQueue;
use http::uri::{Authority, Parts, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use super::body::ChunkBody;
use crate::egress::GuardedConnector;
use crate::store::Endpoint;

/// How long an idle upstream connection is kept by default (`[proxy] pool_idle_timeout`): below
/// the idle timeouts common servers close connections after (Node.js 5 s, nginx 75 s, Apache
/// 5 s), so hooksign closes first and a POST is not sent into a connection the server is
/// closing (a race that cannot be retried), at the cost of reopening connections to customers
/// quiet for longer.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request did not get a response from its upstream. The cause chain keeps the egress
/// guard's denial and rustls' error, so the proxy can tell the refusal codes apart.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to the upstream")]
    Connect(#[source] BoxError),
    #[error("HTTP handshake with the upstream")]
    Handshake(#[source] hyper::Error),
    #[error("sending the request upstream")]
    Request(#[source] hyper::Error),
    /// The origin has `[proxy] max_connections_per_origin` connections open and none idle.
    #[error("the upstream's connection limit is reached")]
    Saturated,
}

/// The pooled upstream client every delivery goes through.
pub struct Upstream {
    connector: HttpsConnector<GuardedConnector>,
    idle_timeout: Duration,
    /// Open connections per origin, at most.
    max_per_origin: usize,
    /// Every origin, by scheme, lowercase host and port (the default port spelled out or not is
    /// one origin), for [`Upstream::origin`] and the idle-connection reaper. The pool owns its
    /// origins: an origin lives while an endpoint's slot holds it or it has idle connections,
    /// so no store change (which replaces endpoints) closes a pooled connection.
    origins: Mutex<HashMap<(Scheme, String, u16), Arc<Origin>>>,
}

/// One origin's connections.
pub struct Origin {
    scheme: Scheme,
    authority: Authority,
    /// `scheme://authority/`: what the connector dials.
    connect_to: Uri,
    /// The `Host` header of HTTP/1.1 requests: the host, and the port when not the default.
    host: HeaderValue,
    idle: SegQueue<Idle>,
    /// Connections open (or opening) now.
    open: AtomicUsize,
    /// The HTTP/2 connection every request shares, once the upstream negotiated `h2`.
    shared_h2: ArcSwapOption<http2::SendRequest<ChunkBody>>,
}

struct Idle {
    sender: http1::SendRequest<ChunkBody>,
    since: Instant,
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origin")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("idle", &self.idle.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// A pool dialling through `connector`, closing connections idle for `idle_timeout`.
    pub fn new(
        connector: HttpsConnector<GuardedConnector>,
        idle_timeout: Duration,
        max_per_origin: usize,
    ) -> Self {
        Self {
            connector,
            idle_timeout,
            max_per_origin,
            origins: Mutex::new(HashMap::new()),
        }
    }

    /// The origin of `target` (an absolute `http`/`https` URL), shared by every endpoint with
    /// the same scheme, host and port. Takes the registry's lock: called once per endpoint and
    /// endpoint (see [`Upstream::origin_of`]), never per request.
    pub fn origin(&self, target: &Uri) -> Arc<Origin> {
        let scheme = target.scheme().cloned().unwrap_or(Scheme::HTTPS);
        let authority = target
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("localhost"));
        let port = authority.port_u16().unwrap_or(default_port(&scheme));
        let key = (scheme.clone(), authority.host().to_ascii_lowercase(), port);
        let mut origins = self.origins.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            origins
                .entry(key)
                .or_insert_with(|| Arc::new(Origin::new(scheme, authority))),
        )
    }

    /// The origin of `endpoint`'s URL, kept in the endpoint's slot on its first delivery: the
    /// endpoint lives on in every snapshot its record is unchanged in, and so does this origin
    /// with its idle connections, whatever other endpoints a store change touches.
    pub fn origin_of(&self, endpoint: &Endpoint) -> Arc<Origin> {
        let slot = endpoint
            .route
            .get_or_init(|| self.origin(&endpoint.target) as Arc<dyn Any + Send + Sync>);
        match Arc::clone(slot).downcast::<Origin>() {
            Ok(origin) => origin,
            // Only this function fills the slot, always with an `Origin`.
            Err(_) => self.origin(&endpoint.target),
        }
    }

    /// Sends `request` (whose URI is the absolute target) to `origin`: on the shared HTTP/2
    /// connection, else an idle HTTP/1.1 one, else a new connection.
    pub async fn send(
        &self,
        origin: &Arc<Origin>,
        mut request: Request<ChunkBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if let Some(shared) = origin.shared_h2.load_full() {
            let mut sender = (*shared).clone();
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response.map(UpstreamBody::unpooled)),
                Err(mut err) => match err.take_message() {
                    Some(unsent) => {
                        origin.forget_h2(&shared);
                        request = unsent;
                    }
                    None => return Err(UpstreamError::Request(err.into_error())),
                },
            }
        }

        to_http1_form(&mut request, origin);
        while let Some(Idle { mut sender, since }) = origin.idle.pop() {
            // Past the idle timeout the upstream may be closing it right now: a POST sent into
            // that race cannot be retried. Checked here, not only by the reaper.
            if since.elapsed() >= self.idle_timeout {
                continue;
            }
            if sender.ready().await.is_err() {
                continue; // closed while idle
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(UpstreamBody::pooled(response, sender, origin)),
                Err(mut err) => match err.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::Request(err.into_error())),
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
        let open = Open::reserve(origin, self.max_per_origin).ok_or(UpstreamError::Saturated)?;
        let io = self
            .connector
            .clone()
            .call(origin.connect_to.clone())
            .await
            .map_err(UpstreamError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(UpstreamError::Handshake)?;
            drive(connection, "HTTP/2", open);
            origin.shared_h2.store(Some(Arc::new(sender.clone())));
            to_http2_form(&mut request, origin);
            let response = sender
                .send_request(request)
                .await
                .map_err(UpstreamError::Request)?;
            return Ok(response.map(UpstreamBody::unpooled));
        }
        let (mut sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(UpstreamError::Handshake)?;
        drive(connection, "HTTP/1.1", open);
        let response = sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Request)?;
        Ok(UpstreamBody::pooled(response, sender, origin))
    }

    /// Closes, every third of the idle timeout, the connections idle for longer than it (and
    /// those the upstream closed), and forgets origins that no endpoint holds and that have no
    /// connection left. Runs forever.
    pub async fn close_idle_connections(&self) {
        let mut tick = tokio::time::interval(self.idle_timeout / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.drop_stale(Instant::now());
        }
    }

    /// One pass of the reaper; returns how many idle connections are kept.
    pub fn drop_stale(&self, now: Instant) -> usize {
        let mut kept = 0;
        let mut origins = self.origins.lock().unwrap_or_else(PoisonError::into_inner);
        origins.retain(|_, origin| {
            let idle = origin.drop_stale(now, self.idle_timeout);
            kept += idle;
            Arc::strong_count(origin) > 1 || idle > 0 || origin.shared_h2.load().is_some()
        });
        kept
    }
}

impl Origin {
    fn new(scheme: Scheme, authority: Authority) -> Self {
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
        Self {
            scheme,
            authority,
            connect_to,
            host,
            idle: SegQueue::new(),
            open: AtomicUsize::new(0),
            shared_h2: ArcSwapOption::empty(),
        }
    }

    fn forget_h2(&self, closed: &Arc<http2::SendRequest<ChunkBody>>) {
        self.shared_h2
            .compare_and_swap(closed, None::<Arc<http2::SendRequest<ChunkBody>>>);
    }

    fn drop_stale(&self, now: Instant, idle_timeout: Duration) -> usize {
        if let Some(shared) = self.shared_h2.load_full() {
            if shared.is_closed() {
                self.forget_h2(&shared);
            }
        }
        let mut kept = 0;
        // Each entry is looked at once; connections released meanwhile go to the back.
        for _ in 0..self.idle.len() {
            let Some(idle) = self.idle.pop() else { break };
            if !idle.sender.is_closed() && now.saturating_duration_since(idle.since) < idle_timeout
            {
                self.idle.push(idle);
                kept += 1;
            }
        }
        kept
    }
}

fn default_port(scheme: &Scheme) -> u16 {
    if *scheme == Scheme::HTTP {
        80
    } else {
        443
    }
}

/// Runs a connection's I/O in its own task until the connection ends.
/// One connection counted open on its origin until dropped (with the connection's task).
struct Open(Arc<Origin>);

impl Open {
    fn reserve(origin: &Arc<Origin>, max: usize) -> Option<Self> {
        origin
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now < max).then_some(now + 1)
            })
            .ok()
            .map(|_| Self(Arc::clone(origin)))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

fn drive<C>(connection: C, version: &'static str, open: Open)
where
    C: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let _open = open;
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, version, "upstream connection ended with an error");
        }
    });
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
/// origin's idle queue once the body has been read to the end.
pub struct UpstreamBody {
    inner: Incoming,
    reusable: Option<(http1::SendRequest<ChunkBody>, Arc<Origin>)>,
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
        origin: &Arc<Origin>,
    ) -> Response<Self> {
        response.map(|inner| {
            let mut body = Self {
                inner,
                reusable: Some((sender, Arc::clone(origin))),
            };
            // An empty body (204, 304, `Content-Length: 0`) may never be polled.
            if body.inner.is_end_stream() {
                body.release();
            }
            body
        })
    }

    fn release(&mut self) {
        if let Some((sender, origin)) = self.reusable.take() {
            origin.idle.push(Idle {
                sender,
                since: Instant::now(),
            });
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

    fn origin(url: &str) -> Origin {
        let uri: Uri = url.parse().unwrap();
        Origin::new(
            uri.scheme().unwrap().clone(),
            uri.authority().unwrap().clone(),
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
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                )
                .https_or_http()
                .enable_http1()
                .wrap_connector(GuardedConnector::new(
                    Arc::new(crate::egress::EgressPolicy::new(
                        &crate::config::EgressConfig {
                            allow_http: true,
                            allow_private: false,
                            allow_cidrs: Vec::new(),
                            allow_ports: Vec::new(),
                            ca_file: None,
                        },
                        Arc::new(crate::egress::SystemResolver),
                    )),
                    Duration::from_secs(1),
                )),
            IDLE_TIMEOUT,
            16,
        );
        let a = pool.origin(&"https://example.com/a".parse().unwrap());
        let b = pool.origin(&"https://example.com:443/b?x".parse().unwrap());
        let c = pool.origin(&"https://example.com:8443/a".parse().unwrap());
        let d = pool.origin(&"http://example.com/a".parse().unwrap());
        let e = pool.origin(&"https://EXAMPLE.com/e".parse().unwrap());
        assert!(Arc::ptr_eq(&a, &b), "the default port is the same origin");
        assert!(Arc::ptr_eq(&a, &e), "host names are not case-sensitive");
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(!Arc::ptr_eq(&a, &d));
        drop((a, b, c, d, e));
        assert_eq!(pool.drop_stale(Instant::now()), 0);
        assert!(
            pool.origins.lock().unwrap().is_empty(),
            "origins no endpoint holds are forgotten"
        );
    }
}
