//! The export side of the trace pipeline: a bounded queue between the spans and the
//! collector, drained by one thread of its own.
//!
//! A finished span is handed over with a `try_send` on a bounded channel (no lock, no wait, and
//! no wake-up: the export thread polls the queue every 50 ms instead of blocking on it): when
//! the queue is full the span is dropped and counted, so a slow or absent collector can never
//! hold a delivery up. The export thread runs a small runtime of its own (the proxy's
//! runtime never waits on the collector), sends batches over OTLP/HTTP protobuf with each export
//! bounded by `[tracing] export_timeout`, and counts the spans of a failed export as dropped
//! too: `hooksign_trace_spans_dropped_total` is every sampled span the collector did not get.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::Context;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;

use super::TelemetryError;
use crate::config::TracingConfig;

/// Spans sent in one export request, at most.
pub const MAX_BATCH: usize = 512;

/// How long a span waits in the queue for a batch to fill, at most.
pub const EXPORT_INTERVAL: Duration = Duration::from_secs(1);

/// How often the export thread takes the spans queued (and looks for a shutdown).
const TICK: Duration = Duration::from_millis(50);

/// The largest collector response body read (OTLP answers are a few bytes).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The OTLP/HTTP traces URL under the collector's base URL: `<base>/v1/traces`.
pub fn traces_url(base: &Uri) -> String {
    format!("{}/v1/traces", base.to_string().trim_end_matches('/'))
}

/// The span processor: sampled spans into the bounded queue, drops counted.
#[derive(Debug)]
pub struct QueueProcessor {
    queue: SyncSender<SpanData>,
    dropped: IntCounter,
    stop: Arc<AtomicBool>,
    /// Signalled by the export thread when it has exported what was queued at shutdown.
    done: Mutex<Receiver<()>>,
}

impl QueueProcessor {
    /// Builds the OTLP exporter for `url` (with `resource`) and starts the export thread.
    pub fn start(
        url: String,
        config: &TracingConfig,
        resource: &Resource,
        dropped: IntCounter,
    ) -> Result<Self, TelemetryError> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(CollectorClient::default())
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(config.export_timeout)
            .build()
            .map_err(TelemetryError::Exporter)?;
        exporter.set_resource(resource);
        let (queue, receiver) = mpsc::sync_channel(config.max_queue_size);
        let (done_tx, done) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            queue: receiver,
            exporter,
            export_timeout: config.export_timeout,
            dropped: dropped.clone(),
            stop: Arc::clone(&stop),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(TelemetryError::Thread)?;
        std::thread::Builder::new()
            .name("hooksign-otlp".into())
            .spawn(move || {
                worker.run(&runtime);
                let _ = done_tx.send(());
            })
            .map_err(TelemetryError::Thread)?;
        Ok(Self {
            queue,
            dropped,
            stop,
            done: Mutex::new(done),
        })
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.queue.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Batches leave within `EXPORT_INTERVAL` by themselves; shutdown exports the rest.
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.stop.store(true, Ordering::Release);
        let done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        match done.recv_timeout(timeout) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => Ok(()),
            Err(RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
        }
    }
}

/// The export thread's side of the queue.
struct Worker {
    queue: Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
    export_timeout: Duration,
    dropped: IntCounter,
    stop: Arc<AtomicBool>,
}

impl Worker {
    /// Every [`TICK`], takes what is queued without waiting on the queue (a blocked receiver
    /// would make every span's hand-over wake this thread: two context switches per span), and
    /// exports full batches at once and the rest every [`EXPORT_INTERVAL`], until a shutdown
    /// finds the queue empty.
    fn run(self, runtime: &tokio::runtime::Runtime) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut deadline = Instant::now() + EXPORT_INTERVAL;
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            while let Ok(span) = self.queue.try_recv() {
                batch.push(span);
                if batch.len() == MAX_BATCH {
                    self.export(
                        runtime,
                        std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH)),
                    );
                }
            }
            if !batch.is_empty() && (stopping || Instant::now() >= deadline) {
                self.export(
                    runtime,
                    std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH)),
                );
            }
            if Instant::now() >= deadline {
                deadline = Instant::now() + EXPORT_INTERVAL;
            }
            if stopping {
                break;
            }
            std::thread::sleep(TICK);
        }
        let mut exporter = self.exporter;
        let _ = exporter.shutdown();
    }

    /// One export request; its spans are counted as dropped when it fails or times out.
    fn export(&self, runtime: &tokio::runtime::Runtime, batch: Vec<SpanData>) {
        let spans = batch.len() as u64;
        let timeout = self.export_timeout;
        let exporter = &self.exporter;
        let sent = runtime
            .block_on(async move { tokio::time::timeout(timeout, exporter.export(batch)).await });
        if !matches!(sent, Ok(Ok(()))) {
            self.dropped.inc_by(spans);
        }
    }
}

/// The exporter's HTTP client: plain HTTP/1.1 over hyper, on the export thread's runtime.
#[derive(Debug)]
struct CollectorClient(Client<HttpConnector, Full<Bytes>>);

impl Default for CollectorClient {
    fn default() -> Self {
        Self(Client::builder(TokioExecutor::new()).build_http())
    }
}

#[async_trait::async_trait]
impl HttpClient for CollectorClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let response = self
            .0
            .request(Request::from_parts(parts, Full::new(body)))
            .await?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await?
            .to_bytes();
        Ok(Response::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_follows_the_base_url() {
        let base: Uri = "http://127.0.0.1:4318".parse().unwrap();
        assert_eq!(traces_url(&base), "http://127.0.0.1:4318/v1/traces");
        let base: Uri = "http://collector:4318/otlp/".parse().unwrap();
        assert_eq!(traces_url(&base), "http://collector:4318/otlp/v1/traces");
    }
}
