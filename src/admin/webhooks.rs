//! The webhook routes of the admin API (SPEC section 5): create, list, get, update, delete,
//! regenerate-secret, test, and the event catalog. Every write goes through
//! [`crate::store::Store::update`], so it is durable before it is acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use url::Url;
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::Caller;
use super::error::{AdminError, ApiJson};
use super::idempotent::{body_of, replay, KeyedBody};
use crate::audit::Entry;
use crate::config::Permission;
use crate::proxy::{self, ChunkBody};
use crate::secret::Secret;
use crate::signing::{Delivery, Scheme};
use crate::state::AppState;
use crate::store::{
    self, now_text, Edit, Endpoint, EndpointRecord, Keyed, RotateError, Snapshot, Status,
};

pub use crate::store::{MAX_DESCRIPTION, MAX_EVENTS};
/// How a secret's random part reads wherever it is not shown in full.
const MASK: &str = "••••••••••••••••••••••••";
/// The most of a test delivery's response body that is read (and dropped).
const TEST_RESPONSE_LIMIT: usize = 64 * 1024;

// === request and response bodies ===

/// `POST /api/v1/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWebhook {
    /// HTTPS destination URL, at most 2048 characters.
    #[schema(max_length = 2048)]
    pub url: String,
    /// 1 to 10 event types, or `["*"]` for every type, current and future.
    #[schema(min_items = 1, max_items = 10)]
    pub events: Vec<String>,
    /// At most 255 characters.
    #[serde(default)]
    #[schema(max_length = 255)]
    pub description: Option<String>,
    /// Default true.
    #[serde(default)]
    pub is_active: Option<bool>,
    /// Signing scheme; default `storno`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// The secret to sign with, in the scheme's format (to move an endpoint from another
    /// provider); default: a new random one. Never logged nor quoted in an error.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub secret: Option<Secret>,
}

/// `PATCH /api/v1/webhooks/{uuid}`: every field optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateWebhook {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub is_active: Option<bool>,
}

/// `POST /api/v1/webhooks/{uuid}/regenerate-secret` (the body is optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegenerateSecret {
    /// Seconds the current secret keeps signing beside the new one (0 to 604800, 7 days;
    /// default 0: every old secret stops at once). Up to 10 previous secrets sign at once.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 604800)]
    pub previous_secret_expires_in: u64,
    /// The new secret, in the scheme's format; default: a new random one. Never logged nor
    /// quoted in an error.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub secret: Option<Secret>,
}

/// An endpoint as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    pub uuid: Uuid,
    pub url: String,
    pub description: String,
    pub events: Vec<String>,
    pub is_active: bool,
    /// `active`, `disabled` or `auto_disabled`.
    pub status: String,
    pub scheme: String,
    /// In full only in the create and regenerate-secret responses; masked elsewhere.
    pub secret: String,
    /// `...` and the secret's last 4 characters.
    pub secret_hint: String,
    pub deliveries_count: u64,
    pub last_delivery_at: Option<String>,
    /// `success` or `failed`.
    pub last_delivery_status: Option<String>,
    pub consecutive_failures: u64,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    /// The Ed25519 public key (`whpk_…`) receivers verify with; `standard-webhooks-ed25519` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// While an overlap window is open: when the last previous secret stops signing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<String>,
    /// While overlap windows are open: when each previous secret stops signing, newest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secrets_expire_at: Option<Vec<String>>,
    /// The client certificate deliveries present (mutual TLS), when set; its key is never shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateView>,
}

/// What the API shows of a client certificate.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificateView {
    /// The leaf certificate's subject (RFC 4514).
    pub subject: String,
    /// SHA-256 of the leaf certificate (DER), lowercase hex.
    pub fingerprint_sha256: String,
    /// The leaf's `notAfter` (RFC 3339).
    pub not_after: String,
}

/// `{"data": [...]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub data: Vec<WebhookView>,
}

/// `{"data": [...]}` of event type names.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub data: Vec<String>,
}

/// What a test delivery did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestReport {
    /// The endpoint answered 2xx.
    pub delivered: bool,
    /// The endpoint's status code, when it answered.
    pub status_code: Option<u16>,
    pub duration_ms: u64,
    /// hooksign's error code when the endpoint could not be reached.
    pub error: Option<String>,
}

/// The error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorDetail,
    pub meta: ErrorMeta,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorMeta {
    pub request_id: String,
}

impl WebhookView {
    /// The view of `endpoint`; `reveal` shows the secret in full.
    pub fn of(endpoint: &Endpoint, reveal: bool) -> Self {
        let stats = &endpoint.stats;
        Self {
            uuid: endpoint.uuid,
            url: endpoint.url.clone(),
            description: endpoint.description.clone(),
            events: endpoint.events.clone(),
            is_active: endpoint.status == Status::Active,
            status: endpoint.status.as_str().to_owned(),
            scheme: endpoint.scheme.as_str().to_owned(),
            secret: if reveal {
                endpoint.secret.expose().to_owned()
            } else {
                masked(endpoint.secret.expose())
            },
            secret_hint: endpoint.secret.hint(),
            deliveries_count: stats.deliveries(),
            last_delivery_at: stats.last_delivery_at().map(store::format_time),
            last_delivery_status: stats.last_outcome().map(|o| o.as_str().to_owned()),
            consecutive_failures: stats.consecutive_failures(),
            created_at: endpoint.created_at.map(store::format_time),
            updated_at: endpoint.updated_at.map(store::format_time),
            public_key: endpoint.public_key(),
            previous_secret_expires_at: endpoint
                .overlap_expires_at(SystemTime::now())
                .map(store::format_time),
            previous_secrets_expire_at: Some(endpoint.open_windows(SystemTime::now()))
                .filter(|open| !open.is_empty())
                .map(|open| open.into_iter().map(store::format_time).collect()),
            client_certificate: endpoint.client_certificate.as_ref().map(|cert| {
                ClientCertificateView {
                    subject: cert.subject.clone(),
                    fingerprint_sha256: cert.fingerprint_hex(),
                    not_after: store::format_time(cert.not_after),
                }
            }),
        }
    }
}

// === handlers ===

/// Create a webhook endpoint; the response shows its secret in full, this once.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks",
    params(("X-Company" = Uuid, Header, description = "Company the endpoint belongs to"),
           ("Idempotency-Key" = Option<String>, Header, description = "Optional; a retry with the same key and request within 24 h replays the first answer")),
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "Created; `secret` in full", body = WebhookView),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 408, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    request: KeyedBody,
) -> Result<Response, AdminError> {
    caller.require(Permission::Manage)?;
    let body: CreateWebhook = request.json().await?;
    let url = validate_url(&state, &body.url).await?;
    let events = validate_events(&state, body.events)?;
    let description = validate_description(body.description)?;
    let scheme: Scheme = match body.scheme.as_deref() {
        None => Scheme::Storno,
        Some(name) => name.parse().map_err(|err: crate::signing::UnknownScheme| {
            AdminError::Validation(err.to_string())
        })?,
    };
    let secret = match body.secret {
        Some(secret) => {
            scheme.check_secret(&secret).map_err(|err| {
                AdminError::Validation(format!("secret: {err} for the {scheme} scheme"))
            })?;
            secret
        }
        None => scheme
            .generate_secret()
            .map_err(|err| AdminError::Internal(err.to_string()))?,
    };
    let uuid = Uuid::new_v4();
    let now = now_text();
    let record = EndpointRecord {
        uuid: uuid.to_string(),
        company: caller.company.to_string(),
        url: url.to_string(),
        events,
        description,
        status: if body.is_active.unwrap_or(true) {
            Status::Active
        } else {
            Status::Disabled
        }
        .as_str()
        .to_owned(),
        scheme: scheme.as_str().to_owned(),
        secret,
        previous_secrets: Vec::new(),
        previous_secrets_expire_at: Vec::new(),
        previous_secret: None,
        previous_secret_expires_at: None,
        created_at: Some(now.clone()),
        updated_at: Some(now),
        deliveries_count: 0,
        last_delivery_at: None,
        last_delivery_status: None,
        consecutive_failures: 0,
        client_certificate: None,
        client_private_key: None,
    };
    let company = caller.company;
    let store = state.store.clone();
    let scoped = request.scoped(company);
    let written = audited(
        &state,
        &caller,
        uuid,
        "create",
        request.key.as_deref(),
        Keyed::is_fresh,
        async move {
            store
                .update_keyed(
                    scoped,
                    move |_| Ok::<_, AdminError>((Edit::put(record), ())),
                    move |next, ()| (201, body_of(&revealed(next, uuid, company))),
                )
                .await
        },
    )
    .await?;
    let snapshot = match written {
        Keyed::Replayed(recorded) => return Ok(replay(&recorded)),
        Keyed::Fresh(written) => written.snapshot,
    };
    tracing::info!(endpoint = %uuid, company = %caller.company, token = %caller.token_name, "endpoint created");
    let view = view_in(&snapshot, uuid, company, true)?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// List the company's endpoints, secrets masked.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    params(("X-Company" = Uuid, Header, description = "Company whose endpoints to list")),
    responses(
        (status = 200, body = WebhookList),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<WebhookList>, AdminError> {
    caller.require(Permission::View)?;
    let snapshot = state.store.snapshot();
    let data = snapshot
        .endpoints()
        .filter(|endpoint| endpoint.company == caller.company)
        .map(|endpoint| WebhookView::of(endpoint, false))
        .collect();
    Ok(Json(WebhookList { data }))
}

/// Get one endpoint, secret masked.
#[utoipa::path(get, path = "/api/v1/webhooks/{uuid}", tag = "webhooks",
    params(("uuid" = String, Path, description = "Endpoint uuid"),
           ("X-Company" = Uuid, Header, description = "Company the endpoint belongs to")),
    responses(
        (status = 200, body = WebhookView),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn get_one(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(uuid): Path<String>,
) -> Result<Json<WebhookView>, AdminError> {
    caller.require(Permission::View)?;
    let uuid = parse_uuid(&uuid)?;
    Ok(Json(view_in(
        &state.store.snapshot(),
        uuid,
        caller.company,
        false,
    )?))
}

/// Update `url`, `events`, `description` or `isActive`.
#[utoipa::path(patch, path = "/api/v1/webhooks/{uuid}", tag = "webhooks",
    params(("uuid" = String, Path, description = "Endpoint uuid"),
           ("X-Company" = Uuid, Header, description = "Company the endpoint belongs to")),
    request_body = UpdateWebhook,
    responses(
        (status = 200, body = WebhookView),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope), (status = 408, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(uuid): Path<String>,
    ApiJson(body): ApiJson<UpdateWebhook>,
) -> Result<Json<WebhookView>, AdminError> {
    caller.require(Permission::Manage)?;
    let uuid = parse_uuid(&uuid)?;
    let url = match body.url.as_deref() {
        Some(url) => Some(validate_url(&state, url).await?),
        None => None,
    };
    let events = body
        .events
        .map(|events| validate_events(&state, events))
        .transpose()?;
    let description = body
        .description
        .map(|d| validate_description(Some(d)))
        .transpose()?;
    let reactivated = body.is_active == Some(true);
    let company = caller.company;
    let store = state.store.clone();
    let written = audited(
        &state,
        &caller,
        uuid,
        "update",
        None,
        |_| true,
        async move {
            store
                .update(move |snapshot| {
                    let mut record = find_record(snapshot, uuid, company)?;
                    if let Some(url) = url {
                        record.url = url.to_string();
                    }
                    if let Some(events) = events {
                        record.events = events;
                    }
                    if let Some(description) = description {
                        record.description = description;
                    }
                    match body.is_active {
                        Some(true) => {
                            record.status = Status::Active.as_str().to_owned();
                            record.consecutive_failures = 0;
                        }
                        Some(false) => record.status = Status::Disabled.as_str().to_owned(),
                        None => {}
                    }
                    record.updated_at = Some(now_text());
                    Ok::<_, AdminError>((Edit::put(record), ()))
                })
                .await
        },
    )
    .await?;
    if reactivated {
        if let Some(endpoint) = written.snapshot.get(&uuid) {
            endpoint.stats.reset_failures();
        }
    }
    tracing::info!(endpoint = %uuid, token = %caller.token_name, "endpoint updated");
    Ok(Json(view_in(&written.snapshot, uuid, company, false)?))
}

/// Delete an endpoint.
#[utoipa::path(delete, path = "/api/v1/webhooks/{uuid}", tag = "webhooks",
    params(("uuid" = String, Path, description = "Endpoint uuid"),
           ("X-Company" = Uuid, Header, description = "Company the endpoint belongs to")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(uuid): Path<String>,
) -> Result<StatusCode, AdminError> {
    caller.require(Permission::Manage)?;
    let uuid = parse_uuid(&uuid)?;
    let company = caller.company;
    let store = state.store.clone();
    let _written = audited(
        &state,
        &caller,
        uuid,
        "delete",
        None,
        |_| true,
        async move {
            store
                .update(move |snapshot| {
                    find_record(snapshot, uuid, company)?;
                    Ok::<_, AdminError>((Edit::delete(uuid), ()))
                })
                .await
        },
    )
    .await?;
    tracing::info!(endpoint = %uuid, token = %caller.token_name, "endpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Issue a new secret: durable before this response, and every delivery that starts after it is
/// signed with the new secret.
#[utoipa::path(post, path = "/api/v1/webhooks/{uuid}/regenerate-secret", tag = "webhooks",
    params(("uuid" = String, Path, description = "Endpoint uuid"),
           ("X-Company" = Uuid, Header, description = "Company the endpoint belongs to"),
           ("Idempotency-Key" = Option<String>, Header, description = "Optional; a retry with the same key and request within 24 h replays the first answer")),
    request_body(content = Option<RegenerateSecret>, description = "Optional"),
    responses(
        (status = 200, description = "The endpoint with its new secret in full", body = WebhookView),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope), (status = 408, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn regenerate_secret(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(uuid): Path<String>,
    request: KeyedBody,
) -> Result<Response, AdminError> {
    caller.require(Permission::Manage)?;
    let uuid = parse_uuid(&uuid)?;
    let body: RegenerateSecret = request.json_or_default()?;
    let window = Duration::from_secs(body.previous_secret_expires_in);
    let supplied = body.secret;
    let company = caller.company;
    let store = state.store.clone();
    let scoped = request.scoped(company);
    let written = audited(
        &state,
        &caller,
        uuid,
        "regenerate_secret",
        request.key.as_deref(),
        Keyed::is_fresh,
        async move {
            store
                .update_keyed(
                    scoped,
                    move |snapshot| {
                        let record = find_record(snapshot, uuid, company)?;
                        let rotated =
                            store::rotate(&record, window, OffsetDateTime::now_utc(), supplied)
                                .map_err(|err| match err {
                                    RotateError::Random(err) => {
                                        AdminError::Internal(err.to_string())
                                    }
                                    other => AdminError::Validation(other.to_string()),
                                })?;
                        Ok::<_, AdminError>((Edit::put(rotated), ()))
                    },
                    move |next, ()| (200, body_of(&revealed(next, uuid, company))),
                )
                .await
        },
    )
    .await?;
    let snapshot = match written {
        Keyed::Replayed(recorded) => return Ok(replay(&recorded)),
        Keyed::Fresh(written) => written.snapshot,
    };
    state.metrics.secret_rotations.inc();
    tracing::info!(endpoint = %uuid, token = %caller.token_name, "secret regenerated");
    Ok(Json(view_in(&snapshot, uuid, company, true)?).into_response())
}

/// End every overlap window now: only the current secret signs deliveries that start after
/// this response.
#[utoipa::path(post, path = "/api/v1/webhooks/{uuid}/revoke-previous", tag = "webhooks",
    params(("uuid" = String, Path, description = "Endpoint uuid"),
           ("X-Company" = Uuid, Header, description = "Company the endpoint belongs to")),
    responses(
        (status = 200, description = "The endpoint, secret masked, with no open window", body = WebhookView),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn revoke_previous(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(uuid): Path<String>,
) -> Result<Json<WebhookView>, AdminError> {
    caller.require(Permission::Manage)?;
    let uuid = parse_uuid(&uuid)?;
    let company = caller.company;
    let store = state.store.clone();
    let written = audited(
        &state,
        &caller,
        uuid,
        "revoke_previous",
        None,
        |_| true,
        async move {
            store
                .update(move |snapshot| {
                    let record = find_record(snapshot, uuid, company)?;
                    let revoked = store::revoke_previous(&record, OffsetDateTime::now_utc());
                    Ok::<_, AdminError>((Edit::put(revoked), ()))
                })
                .await
        },
    )
    .await?;
    tracing::info!(endpoint = %uuid, token = %caller.token_name, "previous secrets revoked");
    Ok(Json(view_in(&written.snapshot, uuid, company, false)?))
}

/// Send a signed `webhook.test` event to the endpoint now, through the delivery path.
#[utoipa::path(post, path = "/api/v1/webhooks/{uuid}/test", tag = "webhooks",
    params(("uuid" = String, Path, description = "Endpoint uuid"),
           ("X-Company" = Uuid, Header, description = "Company the endpoint belongs to"),
           ("Idempotency-Key" = Option<String>, Header, description = "Optional; a retry with the same key and request within 24 h replays the first answer")),
    responses(
        (status = 200, body = TestReport),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 408, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn test(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(uuid): Path<String>,
    request: KeyedBody,
) -> Result<Response, AdminError> {
    caller.require(Permission::Manage)?;
    let uuid = parse_uuid(&uuid)?;
    let snapshot = state.store.snapshot();
    let key = request.scoped(caller.company);
    if let Some((key, fingerprint)) = &key {
        if let Some(recorded) = snapshot.idempotency().find(key) {
            if recorded.fingerprint != *fingerprint {
                return Err(store::WriteError::IdempotencyKeyReused.into());
            }
            return Ok(replay(&recorded));
        }
    }
    let endpoint = snapshot
        .get(&uuid)
        .filter(|endpoint| endpoint.company == caller.company)
        .ok_or(AdminError::NotFound)?;
    let body = Bytes::from(
        serde_json::json!({
            "type": "webhook.test",
            "id": format!("evt_{}", Uuid::new_v4().simple()),
            "createdAt": now_text(),
            "data": {"webhookUuid": uuid, "message": "This is a test event sent by hooksign."},
        })
        .to_string(),
    );
    let delivery = Delivery::now(endpoint.scheme, None);
    let mut signer = endpoint.signer.begin(&delivery);
    signer.update(&body);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        proxy::X_WEBHOOK_EVENT,
        HeaderValue::from_static("webhook.test"),
    );
    let started = Instant::now();
    let sent = proxy::forward(
        &state,
        endpoint,
        &proxy::request_id::RequestId::new(),
        Method::POST,
        headers,
        ChunkBody::full(body),
        signer,
    )
    .await;
    let report = match sent {
        Ok(response) => {
            let headers_after = started.elapsed();
            let status = response.status();
            // Read (a bounded amount of) the answer so the connection can be reused.
            let read = Limited::new(response.into_body(), TEST_RESPONSE_LIMIT)
                .collect()
                .await;
            let outcome = match read {
                Ok(_) => proxy::completed_outcome(status),
                Err(_) => crate::outcome::Outcome::UpstreamBodyFailed,
            };
            state.metrics.delivery(outcome);
            state
                .metrics
                .upstream_duration(outcome, headers_after.as_secs_f64());
            TestReport {
                delivered: status.is_success(),
                status_code: Some(status.as_u16()),
                duration_ms: started.elapsed().as_millis() as u64,
                error: None,
            }
        }
        Err(refused) => TestReport {
            delivered: false,
            status_code: None,
            duration_ms: started.elapsed().as_millis() as u64,
            error: Some(refused.outcome.as_label().to_owned()),
        },
    };
    tracing::info!(endpoint = %uuid, delivered = report.delivered, "test event sent");
    if key.is_some() {
        // The report is recorded under the key (a store write of its own), so a retry is told
        // what happened instead of sending a second test event.
        let answer = body_of(&report);
        let recorded = state
            .store
            .update_keyed(
                key,
                |_| Ok::<_, AdminError>((Edit::none(), ())),
                move |_, ()| (200, answer),
            )
            .await?;
        if let Keyed::Replayed(recorded) = recorded {
            return Ok(replay(&recorded));
        }
    }
    Ok(Json(report).into_response())
}

/// The event types `[events] catalog` lists (empty: any name is accepted).
#[utoipa::path(get, path = "/api/v1/webhooks/events", tag = "webhooks",
    params(("X-Company" = Uuid, Header, description = "Company making the request")),
    responses(
        (status = 200, body = EventList),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<EventList>, AdminError> {
    caller.require(Permission::View)?;
    Ok(Json(EventList {
        data: state.live.borrow().events.catalog.clone(),
    }))
}

// === helpers ===

/// Runs `write` (a store write) and then the audit line of the change it made (when `[admin]
/// audit_log` is set: durably, before the response goes out), in a task of their own: a client
/// that goes away mid-request drops only its answer, never the audit line of a write that was
/// made. A write that failed with `store_not_durable` was still made (it is in service), so it
/// is audited before the error goes out; `made` tells whether a successful outcome changed the
/// store (a replayed idempotent answer did not).
pub(super) async fn audited<T, W>(
    state: &Arc<AppState>,
    caller: &Caller,
    endpoint: Uuid,
    action: &'static str,
    idempotency_key: Option<&str>,
    made: fn(&T) -> bool,
    write: W,
) -> Result<T, AdminError>
where
    T: Send + 'static,
    W: std::future::Future<Output = Result<T, AdminError>> + Send + 'static,
{
    let state = Arc::clone(state);
    let token = caller.token_name.clone();
    let company = caller.company.to_string();
    let idempotency_key = idempotency_key.map(str::to_owned);
    let task = tokio::spawn(async move {
        let written = write.await;
        let changed = match &written {
            Ok(value) => made(value),
            Err(AdminError::StoreNotDurable(_)) => true,
            Err(_) => false,
        };
        if let (true, Some(log)) = (changed, &state.audit) {
            log.append(Entry {
                token,
                company,
                endpoint: endpoint.to_string(),
                action,
                idempotency_key,
                key_name: state.sealer.primary(),
            })
            .await
            .map_err(|err| AdminError::AuditFailed(crate::error_chain::error_chain(&err)))?;
        }
        written
    });
    task.await
        .map_err(|err| AdminError::Internal(format!("the write's task failed: {err}")))?
}

/// `whsec_••••…` (or `whsk_••••…` for a private key): the prefix, never a character of the key.
fn masked(secret: &str) -> String {
    let prefix = secret.split_once('_').map_or("whsec", |(prefix, _)| prefix);
    format!("{prefix}_{MASK}")
}

/// An id that is not a uuid names no endpoint: 404, like an unknown one.
pub(super) fn parse_uuid(text: &str) -> Result<Uuid, AdminError> {
    Uuid::try_parse(text).map_err(|_| AdminError::NotFound)
}

/// The view of endpoint `uuid` of `company` in `snapshot` (the one a write swapped in, so an
/// answer shows exactly the state the write made).
pub(super) fn view_in(
    snapshot: &Snapshot,
    uuid: Uuid,
    company: Uuid,
    reveal: bool,
) -> Result<WebhookView, AdminError> {
    snapshot
        .get(&uuid)
        .filter(|endpoint| endpoint.company == company)
        .map(|endpoint| WebhookView::of(endpoint, reveal))
        .ok_or(AdminError::NotFound)
}

/// The view with the secret in full, as recorded for an idempotent replay.
fn revealed(snapshot: &Snapshot, uuid: Uuid, company: Uuid) -> Option<WebhookView> {
    view_in(snapshot, uuid, company, true).ok()
}

/// The stored record of endpoint `uuid` of `company`, to edit.
pub(super) fn find_record(
    snapshot: &Snapshot,
    uuid: Uuid,
    company: Uuid,
) -> Result<EndpointRecord, AdminError> {
    snapshot
        .get(&uuid)
        .filter(|endpoint| endpoint.company == company)
        .map(|endpoint| endpoint.record_now())
        .ok_or(AdminError::NotFound)
}

/// Parses the URL, then asks the egress guard (scheme, port, every resolved address): 422 with
/// the guard's reason, which names the host as given and never a resolved address.
async fn validate_url(state: &AppState, text: &str) -> Result<Url, AdminError> {
    let url = store::parse_endpoint_url(text)
        .map_err(|why| AdminError::Validation(format!("url: {why}")))?;
    let egress = state.upstream.egress();
    if url.scheme() == "http" && !egress.allows_http() {
        return Err(AdminError::Validation("url: must use https".into()));
    }
    egress
        .check_url(&url)
        .await
        .map_err(|denied| AdminError::Validation(format!("url: {denied}")))?;
    Ok(url)
}

fn validate_events(state: &AppState, events: Vec<String>) -> Result<Vec<String>, AdminError> {
    if events.is_empty() {
        return Err(AdminError::Validation(
            "events: subscribe to at least one event type, or [\"*\"]".into(),
        ));
    }
    if events.len() > MAX_EVENTS {
        return Err(AdminError::Validation(format!(
            "events: at most {MAX_EVENTS} event types"
        )));
    }
    if events.iter().any(|e| e == "*") {
        if events.len() > 1 {
            return Err(AdminError::Validation("events: \"*\" stands alone".into()));
        }
        return Ok(events);
    }
    for event in &events {
        if event.is_empty() || event.len() > 255 {
            return Err(AdminError::Validation(
                "events: names are 1 to 255 characters".into(),
            ));
        }
        let live = state.live.borrow();
        let catalog = &live.events.catalog;
        if !catalog.is_empty() && !catalog.contains(event) {
            return Err(AdminError::Validation(format!(
                "events: unknown event type {event:?}"
            )));
        }
    }
    let mut unique = events;
    unique.dedup();
    Ok(unique)
}

fn validate_description(description: Option<String>) -> Result<String, AdminError> {
    let description = description.unwrap_or_default();
    if description.chars().count() > MAX_DESCRIPTION {
        return Err(AdminError::Validation(format!(
            "description: at most {MAX_DESCRIPTION} characters"
        )));
    }
    Ok(description)
}
