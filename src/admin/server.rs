//! Serving the admin port the way the proxy port is served (the same accept loop,
//! [`crate::accept`]): a cap on open connections, a deadline for each request head and for each
//! request body, so that nobody (no token needed) can hold the descriptors or memory the proxy
//! port needs.
//!
//! The body limit (`[admin] max_body_bytes`) is applied by the router's extractors, which run
//! after authentication and the permission check ([`super::auth::Caller`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::listen::Listener;

/// How the admin port is served.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// The deadlines, read for each new connection (a config reload swaps them).
    pub timeouts: Arc<ArcSwap<Timeouts>>,
    pub shutdown_grace: Duration,
}

/// `[admin] header_read_timeout` and `body_read_timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub header_read: Duration,
    pub body_read: Duration,
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish for up to
/// the grace.
pub async fn serve(
    listener: Listener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let accepting = crate::accept::Accepting {
        port: "admin",
        max_connections: limits.max_connections,
        grace: limits.shutdown_grace,
    };
    crate::accept::serve(listener, accepting, shutdown, |stream| {
        let timeouts = **limits.timeouts.load();
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(timeouts.header_read)
            .max_buf_size(crate::proxy::MAX_HEAD_BYTES)
            .keep_alive(true);
        let router = router.clone();
        let body_timeout = timeouts.body_read;
        let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let mut router = router.clone();
            let request = request.map(|body| Body::new(Deadline::new(body, body_timeout)));
            async move { router.call(request).await }
        });
        builder.serve_connection(TokioIo::new(stream), service)
    })
    .await
}

/// A request body that must end within its deadline (from when the request head arrived).
struct Deadline {
    inner: Incoming,
    timer: Pin<Box<Sleep>>,
}

impl Deadline {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            timer: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

/// The admin request body did not arrive within `[admin] body_read_timeout`.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body did not arrive within [admin] body_read_timeout")]
    TimedOut,
    #[error("reading the request body: {0}")]
    Read(#[source] hyper::Error),
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|result| result.map_err(BodyError::Read)));
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::TimedOut))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
