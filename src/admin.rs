//! The admin port: health and readiness probes and Prometheus metrics (SPEC section 5).
//!
//! `router(state) -> Router` is its own function so tests can drive it without a socket. Every
//! request is counted in `hooksign_admin_requests_total{route,status}`, where `route` is the
//! matched route *template* (`/api/v1/webhooks/{uuid}`), never the raw path, and `unmatched` for
//! paths no route knows; so the label set stays bounded whatever clients send.

use std::io;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::AppState;

/// The `route` label of requests no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The admin routes. `route_layer` must stay last so it wraps every route added before it.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            count_requests,
        ))
        .fallback(unmatched)
        .with_state(state)
}

/// Serves the admin port on `listener` until `shutdown` fires, then lets open requests finish
/// for up to `[server] shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let grace = state.config.server.shutdown_grace;
    let server = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::select! {
        result = server => result,
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace = ?grace, "shutdown grace elapsed; cutting open admin connections");
            Ok(())
        }
    }
}

/// Counts one routed admin request by its route template and status.
async fn count_requests(
    State(state): State<Arc<AppState>>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    let route = matched
        .as_ref()
        .map_or(UNMATCHED_ROUTE, |path| path.as_str());
    state.metrics.admin_request(route, response.status());
    response
}

async fn unmatched(State(state): State<Arc<AppState>>) -> Response {
    state
        .metrics
        .admin_request(UNMATCHED_ROUTE, StatusCode::NOT_FOUND);
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.store.is_loaded() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store not loaded\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match state.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "rendering metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n").into_response()
        }
    }
}
