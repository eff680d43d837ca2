//! The proxy port: takes a delivery from the application, signs it, forwards it upstream and
//! streams the response back (SPEC section 2).
//!
//! Per request: one atomic snapshot load, a lookup by uuid, the body read under the size limit
//! while the pre-keyed HMAC is updated chunk by chunk (the chunks are kept, not copied), then one
//! pooled upstream request. Every refusal is a JSON error with `X-Hooksign-Error: <code>` so the
//! application can tell hooksign's answer from its customer's.
//!
//! Against hostile customers: ambiguous requests are refused before the endpoint is looked at,
//! each endpoint's deliveries in flight are capped (`Busy`), the origin's circuit breaker is
//! asked before sending and told how the header phase went, and the response body streams back
//! under its deadlines ([`response`]). [`conn`] gives the HTTP layer's own refusals the same
//! envelope.

mod conn;
mod headers;
pub mod request_id;
mod response;

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};
use uuid::Uuid;

pub use crate::upstream::body::ChunkBody;
use crate::upstream::breaker::{Admission, CircuitState};
pub use crate::upstream::pool::UpstreamBody;
use crate::upstream::pool::{Origin, UpstreamError};
pub use headers::strip_hop_by_hop;
use request_id::RequestId;
use response::Busy;
pub use response::{Delivered, GuardedBody};

use crate::accept;
use crate::egress::forward::TunnelFailure;
use crate::egress::{self, DenyReason};
use crate::error_chain::error_chain;
use crate::listen::Listener;
use crate::metrics::{Bulkhead, InFlight};
use crate::signing::{BodySigner, Delivery, MessageId};
use crate::state::AppState;
use crate::store::{now_text, DeliveryOutcome, Edit, Endpoint, Status, WriteError};
use crate::telemetry;

/// The header naming the endpoint a delivery is for.
pub const X_WEBHOOK_ID: HeaderName = HeaderName::from_static("x-webhook-id");
/// The optional header naming the delivery's event type.
pub const X_WEBHOOK_EVENT: HeaderName = HeaderName::from_static("x-webhook-event");
/// The application's stable id of a message (kept across its retries): the `webhook-id` of the
/// Standard Webhooks schemes. Forwarded unchanged like any other application header.
pub const X_WEBHOOK_MESSAGE_ID: HeaderName = HeaderName::from_static("x-webhook-message-id");
/// Set on every response hooksign itself produces instead of the customer.
pub const X_HOOKSIGN_ERROR: HeaderName = HeaderName::from_static("x-hooksign-error");
/// The id of a refused request, also in the error body's `meta.requestId`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the proxy answers: the upstream's streamed body, or hooksign's own JSON.
pub type ProxyBody = Either<GuardedBody, Full<Bytes>>;

pub use crate::outcome::Outcome;

/// The largest request head (request line and headers) the proxy reads: a larger one is
/// answered 431 and the connection closed. Envoy's default is 60 KiB, nginx's 4 × 8 KiB.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves the proxy port on `listener` until `shutdown` fires, then drains in-flight requests for
/// up to `[server] shutdown_grace` and cuts whatever is still open.
///
/// Slow clients cannot hold the port: at most `[proxy] max_connections` connections are served
/// at once (accepting pauses at the cap), a request head must arrive within
/// `header_read_timeout` (which also closes idle keep-alive connections) and stay under
/// [`MAX_HEAD_BYTES`], and the body must arrive within `body_read_timeout` (in `deliver`).
pub async fn serve(
    listener: Listener,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let reaper = tokio::spawn({
        let state = Arc::clone(&state);
        async move { state.upstream.close_idle_connections().await }
    });
    let accepting = accept::Accepting {
        port: "proxy",
        max_connections: state.config.proxy.max_connections,
        grace: state.config.server.shutdown_grace,
    };
    let served = accept::serve(listener, accepting, shutdown, |stream| {
        // `header_read_timeout` as last reloaded, for each new connection.
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(state.proxy_settings.load().header_read_timeout)
            .max_header_size(MAX_HEAD_BYTES)
            .max_buf_size(MAX_HEAD_BYTES)
            .keep_alive(true);
        // The service's calls on this connection: a response written while all are answered
        // and flushed is one of hyper's own, which `Marked` gives hooksign's envelope.
        let calls = Arc::new(conn::Calls::default());
        let stream = conn::Marked::new(stream, Arc::clone(&calls), Arc::clone(&state));
        let state = Arc::clone(&state);
        let service = service_fn(move |request| {
            let answering = conn::Answering::new(&calls);
            let state = Arc::clone(&state);
            async move {
                let response = handle(state, request).await?;
                Ok::<_, Infallible>(response.map(|body| answering.guard(body)))
            }
        });
        builder.serve_connection(TokioIo::new(stream), service)
    })
    .await;
    reaper.abort();
    served
}

/// A request hooksign answered itself, already counted: why, and for which endpoint when the
/// request named one (for the log line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub outcome: Outcome,
    pub endpoint: Option<Uuid>,
    /// When to retry, where it is not the outcome's fixed `Retry-After` (an open circuit's
    /// next probe).
    pub retry_after: Option<Duration>,
}

/// Handles one delivery. Never fails: every problem becomes a response.
pub async fn handle(
    state: Arc<AppState>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let in_flight = state.metrics.in_flight();
    let started = Instant::now();
    let request_id = RequestId::of(request.headers());
    let span = telemetry::delivery_span(request.method(), request.headers());
    let log = telemetry::log_span(&span);
    let delivered = if span.is_disabled() {
        deliver(&state, request, in_flight, &request_id, &span).await
    } else {
        deliver(&state, request, in_flight, &request_id, &span)
            .instrument(span.clone())
            .instrument(log.clone())
            .await
    };
    let response = match delivered {
        Ok(mut response) => {
            response
                .headers_mut()
                .insert(X_REQUEST_ID, request_id.header().clone());
            response
        }
        Err(refused) => {
            telemetry::finished(&span, refused.outcome, refused.outcome.status());
            let _log = log.entered();
            log_refusal(
                &request_id,
                refused.outcome,
                refused.endpoint.as_ref(),
                started.elapsed(),
            );
            if state.config.log.access {
                tracing::info!(
                    target: "hooksign::access",
                    request_id = request_id.as_str(),
                    endpoint = refused.endpoint.map(|uuid| uuid.to_string()),
                    status = refused.outcome.status().as_u16(),
                    outcome = refused.outcome.as_label(),
                    bytes = 0u64,
                    "delivery"
                );
            }
            refusal_of(&refused, &request_id)
        }
    };
    Ok(response)
}

/// One warn line per refusal: endpoint uuid (when the header named one), status, duration and
/// the error code. Never the body, a secret, a token or the destination URL.
fn log_refusal(
    request_id: &RequestId,
    outcome: Outcome,
    endpoint: Option<&Uuid>,
    elapsed: Duration,
) {
    let request_id = request_id.as_str();
    let status = outcome.status().as_u16();
    let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let code = outcome.as_label();
    // Fast-fails are counted, and their cause logged once when the circuit opened or the cap
    // was reached: not once per delivery.
    if matches!(outcome, Outcome::CircuitOpen | Outcome::UpstreamSaturated) {
        match endpoint {
            Some(uuid) => {
                tracing::debug!(request_id, endpoint = %uuid, status, duration_ms, code, "delivery refused")
            }
            None => tracing::debug!(request_id, status, duration_ms, code, "delivery refused"),
        }
        return;
    }
    match endpoint {
        Some(uuid) => {
            tracing::warn!(request_id, endpoint = %uuid, status, duration_ms, code, "delivery refused")
        }
        None => tracing::warn!(request_id, status, duration_ms, code, "delivery refused"),
    }
}

async fn deliver(
    state: &Arc<AppState>,
    request: Request<Incoming>,
    in_flight: InFlight,
    request_id: &RequestId,
    span: &Span,
) -> Result<Response<ProxyBody>, Refused> {
    let (parts, body) = request.into_parts();
    if !state.proxy_auth.load().allows(&parts.headers) {
        return Err(state.refuse(Outcome::ProxyUnauthorized, None));
    }
    if let Some(refused) = ambiguous(&parts) {
        return Err(state.refuse(refused, None));
    }
    let uuid = parts
        .headers
        .get(&X_WEBHOOK_ID)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| Uuid::try_parse(text.trim()).ok())
        .ok_or_else(|| state.refuse(Outcome::MissingWebhookId, None))?;

    if !state.store.is_loaded() {
        return Err(state.refuse(Outcome::StoreNotLoaded, Some(&uuid)));
    }
    let endpoint = Arc::clone(
        state
            .store
            .snapshot()
            .get(&uuid)
            .ok_or_else(|| state.refuse(Outcome::UnknownWebhook, Some(&uuid)))?,
    );
    telemetry::endpoint_found(span, &endpoint);
    if endpoint.status != Status::Active {
        return Err(state.refuse(Outcome::WebhookInactive, Some(&uuid)));
    }
    let busy = Busy::begin(
        &endpoint,
        state.proxy_settings.load().max_in_flight_per_endpoint,
    )
    .ok_or_else(|| state.saturated(Bulkhead::EndpointInFlight, &uuid))?;
    if let Some(event) = parts.headers.get(&X_WEBHOOK_EVENT) {
        if !endpoint.subscribes_to(event.as_bytes()) {
            return Err(state.refuse(Outcome::EventNotSubscribed, Some(&uuid)));
        }
    }
    let message_id = match parts.headers.get(&X_WEBHOOK_MESSAGE_ID) {
        Some(value) if endpoint.scheme.uses_message_id() => Some(
            MessageId::parse(value.as_bytes())
                .map_err(|_| state.refuse(Outcome::InvalidMessageId, Some(&uuid)))?,
        ),
        _ => None,
    };
    let access_message_id = state
        .config
        .log
        .access
        .then(|| message_id.clone())
        .flatten();
    let delivery = Delivery::now(endpoint.scheme, message_id);

    let (limit, body_read_timeout) = {
        let settings = state.proxy_settings.load();
        (settings.max_body_bytes, settings.body_read_timeout)
    };
    if declared_length(&parts.headers).is_some_and(|len| len > limit) {
        return Err(state.refuse(Outcome::BodyTooLarge, Some(&uuid)));
    }
    let (body, signer) = tokio::time::timeout(
        body_read_timeout,
        read_body(body, limit, endpoint.signer.begin(&delivery)),
    )
    .await
    .map_err(|_| Outcome::BodyReadTimeout)
    .and_then(|read| read)
    .map_err(|outcome| state.refuse(outcome, Some(&uuid)))?;
    telemetry::body_read(span, body.len());

    let started = tokio::time::Instant::now();
    let version = parts.version;
    let sent = forward(
        state,
        &endpoint,
        request_id,
        parts.method,
        parts.headers,
        body,
        signer,
    )
    .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(refused) => {
            // A fast-fail sent nothing: it is not a delivery, and does not count toward
            // `auto_disable_after` (an open circuit would otherwise disable every endpoint of
            // its origin within seconds).
            if !matches!(
                refused.outcome,
                Outcome::CircuitOpen | Outcome::UpstreamSaturated
            ) {
                record_delivery(state, &endpoint, request_id, DeliveryOutcome::Failed);
            }
            return Err(refused);
        }
    };
    // RFC 9112 section 6.3: Transfer-Encoding overrides Content-Length, which must not be
    // passed on (the application's response would be framed by it and cut short).
    if response.headers().contains_key(header::TRANSFER_ENCODING) {
        response.headers_mut().remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(response.headers_mut());
    // The application is answered in its own HTTP version, whatever the customer spoke.
    *response.version_mut() = version;
    // Counted and recorded when the body ends (a 2xx whose body is cut is not a success).
    let complete = completed_outcome(response.status());
    let (parts, body) = response.into_parts();
    let access = state.config.log.access.then(|| {
        Box::new(response::Access {
            message_id: access_message_id,
        })
    });
    let mut body = GuardedBody::new(
        body,
        Arc::clone(state),
        endpoint,
        complete,
        started,
        response::Held { in_flight, busy },
        Delivered {
            span: span.clone(),
            status: parts.status,
            request_id: request_id.clone(),
            access,
        },
    );
    // The first bytes are read before the status goes out: a body broken from its start is
    // hooksign's 502, not the customer's status over an empty reply.
    body.prime().await.map_err(|outcome| Refused {
        outcome,
        endpoint: Some(uuid),
        retry_after: None,
    })?;
    Ok(Response::from_parts(parts, Either::Left(body)))
}

/// A request hooksign refuses before looking at its endpoint: a method it never forwards, a
/// header that must appear once appearing twice, a transfer coding other than `chunked`.
fn ambiguous(parts: &http::request::Parts) -> Option<Outcome> {
    if parts.method == Method::CONNECT || parts.method == Method::TRACE {
        return Some(Outcome::MethodNotAllowed);
    }
    let repeated = |name: &HeaderName| parts.headers.get_all(name).iter().nth(1).is_some();
    if repeated(&X_WEBHOOK_ID) {
        return Some(Outcome::RepeatedWebhookId);
    }
    if repeated(&X_WEBHOOK_EVENT) {
        return Some(Outcome::RepeatedWebhookEvent);
    }
    (!transfer_coding_is_plain_chunked(&parts.headers))
        .then_some(Outcome::UnsupportedTransferCoding)
}

/// A request's `Transfer-Encoding` is absent or exactly one `chunked` (RFC 9112 section 6.1:
/// chunked is applied once, and a proxy must not guess at framing it does not implement).
fn transfer_coding_is_plain_chunked(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (values.next(), values.next()) {
        (None, _) => true,
        (Some(value), None) => value
            .to_str()
            .is_ok_and(|text| text.trim().eq_ignore_ascii_case("chunked")),
        (Some(_), Some(_)) => false,
    }
}

/// How a delivery whose response body arrived whole ended: `success` for a 2xx, else `failed`.
pub fn completed_outcome(status: http::StatusCode) -> Outcome {
    if status.is_success() {
        Outcome::Success
    } else {
        Outcome::Failed
    }
}

/// Signs-off and sends one delivery whose body was already read and fed to `signer`: the
/// application's headers less the hop-by-hop ones, the signature added, the exact length. The
/// upstream's response (2xx or not; counted by the caller once its body ended), or the refusal
/// outcome, already counted. Shared by the proxy
/// port and the admin API's test route.
pub async fn forward(
    state: &AppState,
    endpoint: &Endpoint,
    request_id: &RequestId,
    method: Method,
    mut headers: HeaderMap,
    body: ChunkBody,
    signer: BodySigner,
) -> Result<Response<UpstreamBody>, Refused> {
    let uuid = endpoint.uuid;
    let rid = request_id.as_str();
    if endpoint.target.scheme_str() == Some("http") && !state.upstream.allows_http() {
        state.metrics.egress_refused(DenyReason::Scheme);
        return Err(state.refuse(Outcome::DestinationForbidden, Some(&uuid)));
    }
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::EXPECT);
    headers.remove(&X_WEBHOOK_ID);
    signer.finish(&state.signing_header.load(), &mut headers);
    // The application's own `Content-Length` is kept when it is exact (no new header value);
    // none is invented for a bodiless request of a method that takes no body (GET, HEAD…).
    let bodiless = body.is_empty()
        && matches!(
            method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
        )
        && declared_length(&headers).is_none();
    if !bodiless && declared_length(&headers) != Some(body.len()) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }

    let client = telemetry::upstream_span(&method, &endpoint.target, body.len());
    telemetry::propagate(
        &mut headers,
        state.config.tracing.propagate_to_customers,
        &client,
    );

    let mut upstream_request = Request::new(body);
    *upstream_request.method_mut() = method;
    *upstream_request.uri_mut() = endpoint.target.clone();
    *upstream_request.headers_mut() = headers;

    let origin = state.upstream.origin_of(endpoint);
    match origin.admit() {
        Admission::Closed => {}
        Admission::Probe => circuit_changed(state, &uuid, rid, CircuitState::HalfOpen),
        Admission::Reject { retry_after } => {
            telemetry::upstream_failed(&client, Outcome::CircuitOpen);
            let mut refused = state.refuse(Outcome::CircuitOpen, Some(&uuid));
            refused.retry_after = Some(retry_after);
            return Err(refused);
        }
    }
    let upstream_timeout = state.proxy_settings.load().upstream_timeout;
    let started = Instant::now();
    let sent = tokio::time::timeout(
        upstream_timeout,
        state
            .upstream
            .send(&origin, upstream_request)
            .instrument(client.clone()),
    )
    .await;
    let elapsed = started.elapsed();
    let response = match sent {
        Err(_) => {
            telemetry::upstream_failed(&client, Outcome::UpstreamTimeout);
            exchanged(
                state,
                &origin,
                &uuid,
                rid,
                Outcome::UpstreamTimeout,
                elapsed,
            );
            return Err(state.refuse(Outcome::UpstreamTimeout, Some(&uuid)));
        }
        Ok(Err(err)) => {
            if let Some(denied) = egress::denial_in(&err) {
                let reason = denied.reason();
                telemetry::upstream_failed(&client, Outcome::DestinationForbidden);
                state.metrics.egress_refused(reason);
                tracing::warn!(request_id = rid, endpoint = %uuid, reason = reason.as_label(), error = %denied, "destination forbidden by the egress policy");
                return Err(state.refuse(Outcome::DestinationForbidden, Some(&uuid)));
            }
            if matches!(err, UpstreamError::Saturated) {
                telemetry::upstream_failed(&client, Outcome::UpstreamSaturated);
                return Err(state.saturated(Bulkhead::OriginConnections, &uuid));
            }
            let outcome = classify_upstream_error(&err);
            telemetry::upstream_failed(&client, outcome);
            tracing::warn!(request_id = rid, endpoint = %uuid, error = %error_chain(&err), code = outcome.as_label(), "upstream request failed");
            if err.trips_breaker() {
                exchanged(state, &origin, &uuid, rid, outcome, elapsed);
            } else {
                state
                    .metrics
                    .upstream_duration(outcome, elapsed.as_secs_f64());
            }
            return Err(state.refuse(outcome, Some(&uuid)));
        }
        Ok(Ok(response)) => response,
    };
    telemetry::upstream_answered(&client, response.status());
    if response.status().is_informational() {
        // hyper passes interim 1xx by; a final one is an unrequested `101` (an upgrade is never
        // asked for: `Upgrade` is hop-by-hop and not forwarded).
        exchanged(
            state,
            &origin,
            &uuid,
            rid,
            Outcome::UpstreamProtocol,
            elapsed,
        );
        tracing::warn!(request_id = rid, endpoint = %uuid, status = response.status().as_u16(), code = Outcome::UpstreamProtocol.as_label(), "upstream answered with an unrequested 1xx");
        return Err(state.refuse(Outcome::UpstreamProtocol, Some(&uuid)));
    }
    // Answered: healthy for the breaker. The histogram is fed when the body ends (by the
    // caller), with how the delivery ended.
    if let Some(to) = origin.record(true) {
        circuit_changed(state, &uuid, rid, to);
    }
    tracing::debug!(request_id = rid, endpoint = %uuid, status = response.status().as_u16(), duration_ms = elapsed.as_millis() as u64, "delivered");
    Ok(response)
}

/// Accounts for an exchange that failed with `outcome` after `elapsed`, before a usable
/// response: the upstream histogram, and the origin's breaker (an unrequested 1xx is an answer,
/// so healthy; a connect, TLS or header timeout failure is not).
fn exchanged(
    state: &AppState,
    origin: &Origin,
    uuid: &Uuid,
    request_id: &str,
    outcome: Outcome,
    elapsed: Duration,
) {
    state
        .metrics
        .upstream_duration(outcome, elapsed.as_secs_f64());
    let healthy = outcome == Outcome::UpstreamProtocol;
    if let Some(to) = origin.record(healthy) {
        circuit_changed(state, uuid, request_id, to);
    }
}

/// Logs and counts an origin's circuit breaker entering `to`: once per change (the breaker's
/// atomics let exactly one delivery make each change), never once per delivery.
fn circuit_changed(state: &AppState, uuid: &Uuid, request_id: &str, to: CircuitState) {
    state.metrics.circuit_transition(to);
    let label = to.as_label();
    match to {
        CircuitState::Open => {
            tracing::warn!(request_id, endpoint = %uuid, state = label, "upstream circuit opened: deliveries to this origin fail fast")
        }
        CircuitState::HalfOpen => {
            tracing::info!(request_id, endpoint = %uuid, state = label, "upstream circuit half-open: one probe delivery let through")
        }
        CircuitState::Closed => {
            tracing::info!(request_id, endpoint = %uuid, state = label, "upstream circuit closed")
        }
    }
}

/// The `token` of the audit line of an auto-disable: hooksign itself made the write.
const AUTO_DISABLE_ACTOR: &str = "hooksign:auto_disable_after";

/// Updates the endpoint's delivery records (atomics only) and, at `[proxy] auto_disable_after`
/// consecutive failures, persists `auto_disabled` off the request path.
pub(crate) fn record_delivery(
    state: &Arc<AppState>,
    endpoint: &Endpoint,
    request_id: &RequestId,
    outcome: DeliveryOutcome,
) {
    let failures = endpoint.stats.record(outcome);
    let threshold = u64::from(state.proxy_settings.load().auto_disable_after);
    if threshold == 0 || failures != threshold {
        return;
    }
    let state = Arc::clone(state);
    let uuid = endpoint.uuid;
    let company = endpoint.company;
    let request_id = request_id.clone();
    tokio::spawn(async move {
        let request_id = request_id.as_str();
        let written = state
            .store
            .update(move |snapshot| {
                let edit = match snapshot.get(&uuid) {
                    Some(endpoint) if endpoint.status == Status::Active => {
                        let mut record = endpoint.record_now();
                        record.status = Status::AutoDisabled.as_str().to_owned();
                        record.updated_at = Some(now_text());
                        Edit::put(record)
                    }
                    _ => Edit::none(),
                };
                Ok::<_, WriteError>((edit, ()))
            })
            .await;
        match written {
            Ok(_) => {
                tracing::warn!(request_id, endpoint = %uuid, failures, "endpoint auto-disabled after consecutive failures");
                // The write is made by hooksign itself, not through a token: audited as such.
                if let Some(log) = &state.audit {
                    let entry = crate::audit::Entry {
                        token: AUTO_DISABLE_ACTOR.to_owned(),
                        company: company.to_string(),
                        endpoint: uuid.to_string(),
                        action: "auto_disable",
                        idempotency_key: None,
                        key_name: state.sealer.primary(),
                    };
                    if let Err(err) = log.append(entry).await {
                        tracing::error!(request_id, endpoint = %uuid, error = %error_chain(&err), "auto-disable made but not audited");
                    }
                }
            }
            Err(err) => {
                tracing::error!(request_id, endpoint = %uuid, error = %err, "could not persist auto_disabled")
            }
        }
    });
}

impl AppState {
    /// Counts a refusal by a bulkhead (503 `upstream_saturated`).
    fn saturated(&self, limit: Bulkhead, endpoint: &Uuid) -> Refused {
        self.metrics.bulkhead_refused(limit);
        self.refuse(Outcome::UpstreamSaturated, Some(endpoint))
    }

    /// Counts a refusal; returns it for the response (`handle` logs it, with the endpoint and its
    /// duration).
    fn refuse(&self, outcome: Outcome, endpoint: Option<&Uuid>) -> Refused {
        self.metrics.delivery(outcome);
        Refused {
            outcome,
            endpoint: endpoint.copied(),
            retry_after: None,
        }
    }
}

/// Reads the body under `limit`, signing each chunk as it arrives and keeping it.
async fn read_body(
    mut body: Incoming,
    limit: u64,
    mut signer: BodySigner,
) -> Result<(ChunkBody, BodySigner), Outcome> {
    let mut chunks = ChunkBody::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Outcome::BodyReadFailed)?;
        if let Ok(data) = frame.into_data() {
            if chunks.len() + data.len() as u64 > limit {
                return Err(Outcome::BodyTooLarge);
            }
            if !data.is_empty() {
                signer.update(&data);
                chunks.push(data);
            }
        }
    }
    Ok((chunks, signer))
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse().ok())
}

/// A forward proxy's failure is `proxy_unreachable`, `proxy_auth_required` or `proxy_refused`;
/// a TLS failure anywhere in the cause chain (or a stalled handshake) is `upstream_tls`; a
/// response hyper could not parse (an oversized or malformed head, contradictory lengths) is
/// `upstream_protocol`; anything else reaching the upstream is `upstream_unreachable`.
fn classify_upstream_error(err: &(dyn std::error::Error + 'static)) -> Outcome {
    if let Some(failure) = egress::tunnel_failure_in(err) {
        return match failure {
            TunnelFailure::Unreachable => Outcome::ProxyUnreachable,
            TunnelFailure::AuthRequired => Outcome::ProxyAuthRequired,
            TunnelFailure::Refused => Outcome::ProxyRefused,
        };
    }
    let stalled_tls = err
        .downcast_ref::<UpstreamError>()
        .is_some_and(|err| matches!(err, UpstreamError::TlsTimeout(_)));
    if stalled_tls || caused_by_tls(err) {
        Outcome::UpstreamTls
    } else if broke_http(err) {
        Outcome::UpstreamProtocol
    } else {
        Outcome::UpstreamUnreachable
    }
}

/// A hyper parse error anywhere in the cause chain.
fn broke_http(err: &(dyn std::error::Error + 'static)) -> bool {
    let parse = err
        .downcast_ref::<hyper::Error>()
        .is_some_and(|err| err.is_parse() || err.is_parse_too_large() || err.is_parse_status());
    parse || err.source().is_some_and(broke_http)
}

/// `io::Error::source` skips the error it wraps, so wrapped errors are opened explicitly.
fn caused_by_tls(err: &(dyn std::error::Error + 'static)) -> bool {
    if err.is::<rustls::Error>() {
        return true;
    }
    if let Some(inner) = err.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
        if caused_by_tls(inner) {
            return true;
        }
    }
    err.source().is_some_and(caused_by_tls)
}

/// hooksign's answer to a refused request: [`refusal`], with the refusal's own `Retry-After`
/// when it has one (rounded up to whole seconds).
pub fn refusal_of(refused: &Refused, request_id: &RequestId) -> Response<ProxyBody> {
    let mut response = refusal_with_id(refused.outcome, request_id);
    if let Some(after) = refused.retry_after {
        let seconds = after.as_millis().div_ceil(1000).max(1);
        let seconds = u64::try_from(seconds).unwrap_or(u64::MAX);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// hooksign's own answer: the status, the JSON error envelope, `X-Hooksign-Error` and
/// `X-Request-Id`.
pub fn refusal(outcome: Outcome) -> Response<ProxyBody> {
    refusal_with_id(outcome, &RequestId::new())
}

/// [`refusal`] for the request `request_id` names.
pub fn refusal_with_id(outcome: Outcome, request_id: &RequestId) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "error": {"code": outcome.as_label(), "message": outcome.message()},
        "meta": {"requestId": request_id.as_str()},
    });
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = outcome.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        X_HOOKSIGN_ERROR,
        HeaderValue::from_static(outcome.as_label()),
    );
    headers.insert(X_REQUEST_ID, request_id.header().clone());
    if let Some(seconds) = outcome.retry_after() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if outcome == Outcome::ProxyUnauthorized {
        headers.insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"hooksign\""),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    #[test]
    fn refusals_carry_code_status_and_json() {
        let response = refusal(Outcome::UnknownWebhook);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[&X_HOOKSIGN_ERROR], "unknown_webhook");
        assert!(response.headers().contains_key(&X_REQUEST_ID));
    }

    #[test]
    fn store_not_loaded_asks_for_a_retry() {
        let response = refusal(Outcome::StoreNotLoaded);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[&X_HOOKSIGN_ERROR], "store_not_loaded");
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert!(refusal(Outcome::UnknownWebhook)
            .headers()
            .get(header::RETRY_AFTER)
            .is_none());
    }

    #[test]
    fn tls_errors_are_found_in_the_cause_chain() {
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(classify_upstream_error(&tls), Outcome::UpstreamTls);
        let nested = io::Error::other(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature),
        ));
        assert_eq!(classify_upstream_error(&nested), Outcome::UpstreamTls);
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            classify_upstream_error(&refused),
            Outcome::UpstreamUnreachable
        );
    }
}
