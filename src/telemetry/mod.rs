//! OpenTelemetry traces (`[tracing]`): spans of deliveries and admin requests, exported over
//! OTLP/HTTP (protobuf) to a collector.
//!
//! Spans are ordinary `tracing` spans with target [`TARGET`]; `tracing-opentelemetry` turns them
//! into OpenTelemetry spans, and only spans and events of that target reach it (the log
//! output never shows them). When `[tracing] otlp_endpoint` is unset no layer wants that
//! target, so every span and event of it is a disabled callsite: the delivery path checks one
//! cached interest and builds nothing.
//!
//! What a span may hold: uuids, the signing scheme, outcome codes, statuses, sizes, the
//! customer's host and port, phase events. Never a secret, a token, a body, or a URL's path or
//! query.
//!
//! A delivery's log lines carry its trace id through a second span of target [`LOG_TARGET`]
//! holding only `trace_id`, which the log output shows and the exporter ignores.
//!
//! [`export`] owns the queue between the spans and the collector.

pub mod export;

use std::time::Duration;

use http::{HeaderMap, HeaderName, Method, StatusCode, Uri};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::config::TracingConfig;
use crate::outcome::Outcome;
use crate::store::Endpoint;

pub use crate::trace_names::{LOG_TARGET, TARGET};

/// The W3C trace-context headers.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Why the trace pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("building the OTLP exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    #[error("starting the span export thread")]
    Thread(#[source] std::io::Error),
}

/// The running trace pipeline: the tracer provider and its export queue.
#[derive(Debug)]
pub struct Pipeline {
    provider: SdkTracerProvider,
}

impl Pipeline {
    /// Starts the pipeline `config` asks for (`None` when tracing is off). Spans the queue or
    /// the collector lose are counted in `dropped`.
    pub fn start(
        config: &TracingConfig,
        dropped: IntCounter,
    ) -> Result<Option<Self>, TelemetryError> {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(None);
        };
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attributes(
                config
                    .resource_attributes
                    .iter()
                    .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
            )
            .build();
        let processor = export::QueueProcessor::start(
            export::traces_url(endpoint),
            config,
            &resource,
            dropped,
        )?;
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_span_processor(processor)
            .build();
        Ok(Some(Self { provider }))
    }

    /// The `tracing` layer feeding this pipeline: spans and events of [`TARGET`] only.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("hooksign"))
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            // hooksign reads span contexts through the spans themselves: no OpenTelemetry
            // context attached to the thread at every poll of an instrumented future.
            .with_context_activation(false)
            .with_filter(Targets::new().with_target(TARGET, LevelFilter::INFO))
    }

    /// Exports what is queued, waiting `bound` at most.
    pub fn shutdown(self, bound: Duration) {
        if let Err(err) = self.provider.shutdown_with_timeout(bound) {
            tracing::warn!(error = %err, "trace export did not finish at shutdown");
        }
    }
}

// === spans of the delivery path ===

/// The server span of one delivery, continuing the application's `traceparent` (a new trace
/// without one). Disabled (and free) when tracing is off.
pub fn delivery_span(method: &Method, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "delivery",
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.response.status_code = Empty,
        http.request.body.size = Empty,
        hooksign.endpoint.id = Empty,
        hooksign.company.id = Empty,
        hooksign.signing.scheme = Empty,
        hooksign.outcome = Empty,
    );
    if !span.is_disabled() {
        continue_trace(&span, headers);
    }
    span
}

/// The span that gives log lines inside `server` its `trace_id` (disabled when `server` is).
pub fn log_span(server: &Span) -> Span {
    if server.is_disabled() {
        return Span::none();
    }
    let trace_id = server.context().span().span_context().trace_id();
    tracing::info_span!(target: LOG_TARGET, "delivery", trace_id = %trace_id)
}

/// Records which endpoint the delivery is for.
pub fn endpoint_found(span: &Span, endpoint: &Endpoint) {
    if span.is_disabled() {
        return;
    }
    span.record(
        "hooksign.endpoint.id",
        tracing::field::display(&endpoint.uuid),
    );
    span.record(
        "hooksign.company.id",
        tracing::field::display(&endpoint.company),
    );
    span.record("hooksign.signing.scheme", endpoint.scheme.as_str());
}

/// Records the size of the request body read.
pub fn body_read(span: &Span, bytes: u64) {
    span.record("http.request.body.size", attribute_int(bytes));
}

/// Records how the delivery ended: its outcome code, the status the application got (the
/// customer's, or hooksign's own refusal's), and an error status for anything but a success.
pub fn finished(span: &Span, outcome: Outcome, status: StatusCode) {
    if span.is_disabled() {
        return;
    }
    span.record("hooksign.outcome", outcome.as_label());
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if outcome != Outcome::Success {
        span.record("otel.status_code", "error");
    }
}

/// The client span of the upstream exchange (a child of the current span): the customer's
/// scheme, host and port only, never the path or query.
pub fn upstream_span(method: &Method, target: &Uri, body_bytes: u64) -> Span {
    let default_port = if target.scheme_str() == Some("http") {
        80
    } else {
        443
    };
    tracing::info_span!(
        target: TARGET,
        "upstream",
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = %method,
        url.scheme = target.scheme_str().unwrap_or_default(),
        server.address = target.host().unwrap_or_default(),
        server.port = i64::from(target.port_u16().unwrap_or(default_port)),
        http.request.body.size = attribute_int(body_bytes),
        http.response.status_code = Empty,
        hooksign.connection.reused = true,
        tls.resumed = Empty,
        error.type = Empty,
    )
}

/// Records the upstream's response head on the client span, which ends with it: the span's
/// end is the first byte of the response.
pub fn upstream_answered(span: &Span, status: StatusCode) {
    span.record("http.response.status_code", i64::from(status.as_u16()));
}

/// Records an exchange that got no usable response.
pub fn upstream_failed(span: &Span, outcome: Outcome) {
    if span.is_disabled() {
        return;
    }
    span.record("error.type", outcome.as_label());
    span.record("otel.status_code", "error");
}

/// Makes the forwarded headers follow the `[tracing] propagate_to_customers` policy: removed,
/// or (propagating with tracing on) replaced by the client span's context so the customer's
/// spans become its children. Propagating with tracing off passes the application's through.
pub fn propagate(headers: &mut HeaderMap, propagate: bool, client: &Span) {
    if !propagate {
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        return;
    }
    if client.is_disabled() {
        return;
    }
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    TraceContextPropagator::new().inject_context(&client.context(), &mut HeaderInjector(headers));
}

// === spans of the admin port ===

/// The server span of one admin request, named by its route template (never the path itself).
pub fn admin_span(method: &Method, route: &str, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "admin",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = route,
        http.response.status_code = Empty,
    );
    if !span.is_disabled() {
        continue_trace(&span, headers);
    }
    span
}

/// Records the admin response's status (5xx is an error).
pub fn admin_answered(span: &Span, status: StatusCode) {
    if span.is_disabled() {
        return;
    }
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
}

/// A count as an OpenTelemetry integer attribute (`tracing-opentelemetry` exports `u64` fields
/// as strings; `i64` ones as integers).
fn attribute_int(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Makes `span` a child of the caller's `traceparent`, when it sent a valid one.
fn continue_trace(span: &Span, headers: &HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        // Fails only for a span already started or not known to the layer: it stays a root.
        let _ = span.set_parent(parent);
    }
}
