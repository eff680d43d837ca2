//! The admin port (SPEC section 5): the webhook API, health and readiness probes, Prometheus
//! metrics and the OpenAPI document.
//!
//! `router(state, tokens)` is its own function so tests can drive it without a socket. Every response
//! gets an `X-Request-Id`; every error, including axum's own rejections and unknown routes, is the
//! JSON envelope with that id in `meta.requestId`. Every request is counted in
//! `hooksign_admin_requests_total{route,status}`, where `route` is the matched route *template*
//! (`/api/v1/webhooks/{uuid}`), never the raw path, and `unmatched` for paths no route knows.

mod auth;
mod client_certificate;
mod error;
mod idempotent;
pub mod server;
pub mod webhooks;

use std::io;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{FromRef, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use uuid::Uuid;

pub use auth::Tokens;
pub use error::{AdminError, ErrorBody};

use crate::listen::Listener;
use crate::state::AppState;
use crate::telemetry;

/// The OpenAPI document of the admin API, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "hooksign admin API", description = "Webhook endpoints and their signing secrets."),
    paths(
        webhooks::create,
        webhooks::list,
        webhooks::get_one,
        webhooks::update,
        webhooks::delete,
        webhooks::regenerate_secret,
        webhooks::revoke_previous,
        webhooks::test,
        webhooks::events,
        client_certificate::set,
        client_certificate::remove,
    ),
    modifiers(&BearerAuth),
    tags((name = "webhooks", description = "Webhook endpoints"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The `route` label of requests no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// What the admin routes share: the application's state and the admin tokens, which only this
/// port uses. Handlers take either part (`State<Arc<AppState>>`, the [`auth::Caller`]).
#[derive(Clone, Debug)]
pub struct AdminState {
    app: Arc<AppState>,
    /// Replaced whole when a config reload changes the tokens or the rate limit, so a revoked
    /// token is refused from the next request on.
    tokens: Arc<ArcSwap<Tokens>>,
}

impl FromRef<AdminState> for Arc<AppState> {
    fn from_ref(state: &AdminState) -> Self {
        Arc::clone(&state.app)
    }
}

impl FromRef<AdminState> for Arc<Tokens> {
    fn from_ref(state: &AdminState) -> Self {
        state.tokens.load_full()
    }
}

/// The admin routes, authenticating with `tokens`. `route_layer` must stay after the last route
/// so it wraps every one.
pub fn router(state: Arc<AppState>, tokens: Arc<ArcSwap<Tokens>>) -> Router {
    Router::new()
        .route(
            "/api/v1/webhooks",
            post(webhooks::create).get(webhooks::list),
        )
        .route("/api/v1/webhooks/events", get(webhooks::events))
        .route(
            "/api/v1/webhooks/{uuid}",
            get(webhooks::get_one)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route(
            "/api/v1/webhooks/{uuid}/regenerate-secret",
            post(webhooks::regenerate_secret),
        )
        .route(
            "/api/v1/webhooks/{uuid}/revoke-previous",
            post(webhooks::revoke_previous),
        )
        .route("/api/v1/webhooks/{uuid}/test", post(webhooks::test))
        .route(
            "/api/v1/webhooks/{uuid}/client-certificate",
            put(client_certificate::set).delete(client_certificate::remove),
        )
        .route("/api/v1/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            count_requests,
        ))
        .fallback(not_found)
        .layer(middleware::from_fn(request_context))
        .with_state(AdminState { app: state, tokens })
}

/// Open admin connections at most when `[admin] max_connections` is unset and `serve` has not
/// derived it from the file-descriptor limit ([`crate::limits`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Serves the admin port on `listener` until `shutdown` fires, then lets open requests finish
/// for up to `[server] shutdown_grace`.
pub async fn serve(
    listener: Listener,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let config = &state.config.admin;
    let timeouts = Arc::new(ArcSwap::from_pointee(admin_timeouts(config)));
    let limits = server::Limits {
        max_connections: config.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        timeouts: Arc::clone(&timeouts),
        shutdown_grace: state.config.server.shutdown_grace,
    };
    let tokens = Arc::new(ArcSwap::from_pointee(Tokens::new(
        &state.live.borrow().admin,
    )));
    tokio::spawn(follow_config_changes(
        Arc::clone(&state),
        Arc::clone(&tokens),
        timeouts,
        shutdown.clone(),
    ));
    let router = router(Arc::clone(&state), tokens)
        .layer(axum::extract::DefaultBodyLimit::max(config.max_body_bytes));
    server::serve(listener, router, limits, shutdown).await
}

fn admin_timeouts(config: &crate::config::AdminConfig) -> server::Timeouts {
    server::Timeouts {
        header_read: config.header_read_timeout,
        body_read: config.body_read_timeout,
    }
}

/// Follows config reloads: rebuilds the token table whenever `[[admin.tokens]]` or
/// `rate_limit_per_minute` changes (the rate limiters start afresh then), and swaps the header
/// and body deadlines new connections get.
async fn follow_config_changes(
    state: Arc<AppState>,
    tokens: Arc<ArcSwap<Tokens>>,
    timeouts: Arc<ArcSwap<server::Timeouts>>,
    shutdown: CancellationToken,
) {
    let mut changes = state.live.subscribe();
    let grants = |config: &crate::config::Config| {
        (
            config.admin.tokens.clone(),
            config.admin.rate_limit_per_minute,
        )
    };
    let mut current = grants(&changes.borrow_and_update());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        let config = Arc::clone(&changes.borrow_and_update());
        let deadlines = admin_timeouts(&config.admin);
        if **timeouts.load() != deadlines {
            timeouts.store(Arc::new(deadlines));
            tracing::info!("admin timeouts reloaded");
        }
        let now = grants(&config);
        if now != current {
            tokens.store(Arc::new(Tokens::new(&config.admin)));
            tracing::info!(tokens = config.admin.tokens.len(), "admin tokens reloaded");
            current = now;
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
    let route = matched
        .as_ref()
        .map_or(UNMATCHED_ROUTE, |path| path.as_str());
    let span = telemetry::admin_span(request.method(), route, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    telemetry::admin_answered(&span, response.status());
    state.metrics.admin_request(route, response.status());
    response
}

/// Gives every response an `X-Request-Id` and renders every error as the JSON envelope.
async fn request_context(request: Request, next: Next) -> Response {
    let request_id = Uuid::new_v4().to_string();
    let mut response = next.run(request).await;
    let detail = response.extensions_mut().remove::<ErrorBody>();
    let status = response.status();
    let detail = detail.or_else(|| {
        // axum's own rejections (405, a body too large, …) arrive as plain text.
        (status.is_client_error() || status.is_server_error()).then(|| ErrorBody {
            code: generic_code(status),
            message: status.canonical_reason().unwrap_or("error").to_owned(),
        })
    });
    if let Some(detail) = detail {
        let body = serde_json::json!({
            "error": {"code": detail.code, "message": detail.message},
            "meta": {"requestId": request_id},
        });
        let (mut parts, _) = response.into_parts();
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        parts.headers.remove(header::CONTENT_LENGTH);
        response = Response::from_parts(parts, Body::from(body.to_string()));
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

fn generic_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE
        | StatusCode::BAD_REQUEST
        | StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
        s if s.is_server_error() => "internal_error",
        _ => "invalid_request",
    }
}

async fn not_found(State(state): State<Arc<AppState>>) -> AdminError {
    state
        .metrics
        .admin_request(UNMATCHED_ROUTE, StatusCode::NOT_FOUND);
    AdminError::NotFound
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if state.store.is_loaded() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store not loaded\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    // The soonest client certificate expiry, read from the snapshot at scrape time (one pass
    // over the endpoints every scrape, nothing on the delivery path).
    let soonest = state
        .store
        .snapshot()
        .endpoints()
        .filter_map(|endpoint| endpoint.client_certificate.as_ref())
        .map(|cert| cert.not_after.unix_timestamp())
        .min();
    state
        .metrics
        .client_certificate_expiry
        .set(soonest.unwrap_or(0));
    match state.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "rendering metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n").into_response()
        }
    }
}
