//! The upstream's response body on its way to the application, under the response's deadlines:
//! at most `[proxy] response_idle_timeout` between two chunks, the whole exchange within
//! `response_timeout`, at most `max_response_bytes`.
//!
//! A body that breaks one of them ends in an error, which makes hyper cut the application's
//! response (a chunked body gets no last chunk, a sized one closes short): never a silently
//! short "success". The delivery is recorded when the body ends, not when its headers arrive:
//! a 2xx whose body was cut is a failure, the in-flight gauge covers the whole body, and the
//! outcome has its own label and log code. One timer serves both deadlines.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::{record_delivery, UpstreamBody};
use crate::metrics::InFlight;
use crate::outcome::Outcome;
use crate::state::AppState;
use crate::store::{DeliveryOutcome, Endpoint};
use crate::telemetry;

/// Why hooksign cut a response body.
#[derive(Debug)]
pub struct Cut(Outcome);

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.message())
    }
}

impl Error for Cut {}

/// The response body the application reads.
pub struct GuardedBody {
    inner: UpstreamBody,
    /// Fires at the sooner of the idle and total deadlines.
    timer: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    deadline: Instant,
    remaining: Option<u64>,
    /// The first frame, read by [`GuardedBody::prime`] before the response head goes out.
    first: Option<Frame<Bytes>>,
    /// Until the body ends: what to record then.
    pending: Option<Pending>,
    /// Body bytes passed on so far (for the access log).
    bytes: u64,
}

/// What the access log line of a delivery says beside the outcome and status (`[log] access`).
#[derive(Debug)]
pub struct Access {
    pub message_id: Option<crate::signing::MessageId>,
}

/// One delivery in flight to an endpoint (its `[proxy] max_in_flight_per_endpoint` count),
/// until dropped.
pub struct Busy(Arc<Endpoint>);

impl Busy {
    /// Counts a delivery to `endpoint`, unless it has `cap` in flight already.
    pub fn begin(endpoint: &Arc<Endpoint>, cap: u32) -> Option<Self> {
        endpoint
            .stats
            .begin(cap)
            .then(|| Self(Arc::clone(endpoint)))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.stats.end();
    }
}

/// What the delivery's trace records when the body ends: its server span (disabled when
/// tracing is off) and the status the application got.
pub struct Delivered {
    pub span: tracing::Span,
    pub status: http::StatusCode,
    /// The request's id, for its log lines.
    pub request_id: super::request_id::RequestId,
    /// Set when `[log] access` is on.
    pub access: Option<Box<Access>>,
}

/// The delivery to record when the body ends.
struct Pending {
    state: Arc<AppState>,
    endpoint: Arc<Endpoint>,
    /// The outcome if the body ends normally (`success` for 2xx, else `failed`).
    complete: Outcome,
    /// From sending the request to its response headers (for the upstream histogram).
    headers_after: Duration,
    delivered: Delivered,
    _held: Held,
}

/// What a delivery holds until its response body ends: its place in the in-flight gauge and in
/// its endpoint's in-flight count.
pub struct Held {
    pub in_flight: InFlight,
    pub busy: Busy,
}

impl GuardedBody {
    /// Guards `inner`, whose exchange started at `started`; `complete` is the outcome if it
    /// ends normally.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        inner: UpstreamBody,
        state: Arc<AppState>,
        endpoint: Arc<Endpoint>,
        complete: Outcome,
        started: Instant,
        held: Held,
        delivered: Delivered,
    ) -> Self {
        let (deadline, idle_timeout, remaining) = {
            let config = state.proxy_settings.load();
            (
                started + config.response_timeout,
                config.response_idle_timeout,
                config.max_response_bytes,
            )
        };
        let first = (Instant::now() + idle_timeout).min(deadline);
        let mut body = Self {
            inner,
            timer: Box::pin(tokio::time::sleep_until(first)),
            idle_timeout,
            deadline,
            remaining,
            first: None,
            bytes: 0,
            pending: Some(Pending {
                state,
                endpoint,
                complete,
                headers_after: started.elapsed(),
                delivered,
                _held: held,
            }),
        };
        if body.inner.is_end_stream() {
            body.finish(complete);
        }
        body
    }

    /// Reads the first frame now (kept for the application), under the body's deadlines: the
    /// outcome, already counted and recorded, of a body that broke before its first bytes.
    pub async fn prime(&mut self) -> Result<(), Outcome> {
        if self.pending.is_none() || self.inner.is_end_stream() {
            return Ok(());
        }
        match std::future::poll_fn(|cx| Pin::new(&mut *self).poll_frame(cx)).await {
            Some(Ok(frame)) => {
                self.first = Some(frame);
                Ok(())
            }
            Some(Err(Cut(outcome))) => Err(outcome),
            None => Ok(()),
        }
    }

    /// Records the delivery once, with `outcome`.
    fn finish(&mut self, outcome: Outcome) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let metrics = &pending.state.metrics;
        metrics.delivery(outcome);
        telemetry::finished(&pending.delivered.span, outcome, pending.delivered.status);
        metrics.upstream_duration(outcome, pending.headers_after.as_secs_f64());
        let recorded = if outcome == Outcome::Success {
            DeliveryOutcome::Success
        } else {
            DeliveryOutcome::Failed
        };
        let request_id = pending.delivered.request_id.as_str();
        if !matches!(outcome, Outcome::Success | Outcome::Failed) {
            tracing::warn!(request_id, endpoint = %pending.endpoint.uuid, code = outcome.as_label(), "response cut");
        }
        if let Some(access) = &pending.delivered.access {
            tracing::info!(
                target: "hooksign::access",
                request_id,
                message_id = access.message_id.as_ref().map(|id| id.as_str()),
                endpoint = %pending.endpoint.uuid,
                scheme = pending.endpoint.scheme.as_str(),
                status = pending.delivered.status.as_u16(),
                outcome = outcome.as_label(),
                bytes = self.bytes,
                upstream_ms = u64::try_from(pending.headers_after.as_millis()).unwrap_or(u64::MAX),
                "delivery"
            );
        }
        record_delivery(
            &pending.state,
            &pending.endpoint,
            &pending.delivered.request_id,
            recorded,
        );
    }

    fn cut(&mut self, outcome: Outcome) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        self.finish(outcome);
        Poll::Ready(Some(Err(Cut(outcome))))
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        let Some(complete) = this.pending.as_ref().map(|p| p.complete) else {
            return Poll::Ready(None);
        };
        // A body that keeps arriving never lets the timer be polled: check the total here.
        if Instant::now() >= this.deadline {
            return this.cut(Outcome::UpstreamBodyTimeout);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if let (Some(data), Some(remaining)) = (frame.data_ref(), this.remaining.as_mut()) {
                    match remaining.checked_sub(data.len() as u64) {
                        Some(left) => *remaining = left,
                        None => return this.cut(Outcome::UpstreamResponseTooLarge),
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish(complete);
                } else {
                    let next = (Instant::now() + this.idle_timeout).min(this.deadline);
                    this.timer.as_mut().reset(next);
                }
                // Trailers are not passed on.
                match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    Err(_) => {
                        this.finish(complete);
                        Poll::Ready(None)
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => this.cut(Outcome::UpstreamBodyFailed),
            Poll::Ready(None) => {
                this.finish(complete);
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => this.cut(Outcome::UpstreamBodyTimeout),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && (self.pending.is_none() || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let Some(data) = self.first.as_ref().and_then(Frame::data_ref) else {
            return inner;
        };
        let held = data.len() as u64;
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint.set_lower(inner.lower() + held);
        hint
    }
}

impl Drop for GuardedBody {
    /// The application went away before the body ended.
    fn drop(&mut self) {
        self.finish(Outcome::ClientClosed);
    }
}

impl fmt::Debug for GuardedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedBody")
            .field("ended", &self.pending.is_none())
            .finish_non_exhaustive()
    }
}
