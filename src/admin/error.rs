//! Admin API errors: one enum, turned into the JSON envelope
//! `{"error": {"code", "message"}, "meta": {"requestId"}}` in one place.
//!
//! A handler's error becomes a response carrying an [`ErrorBody`] extension; the request-id
//! middleware ([`super::request_context`]) renders it with the request's id, so every error,
//! including axum's own rejections, carries `meta.requestId` and the `X-Request-Id` header.

use axum::extract::rejection::JsonRejection;
use axum::extract::FromRequest;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::store::WriteError;

/// Every way an admin request can fail.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    InvalidRequest(String),
    /// The body is over `[admin] max_body_bytes`: 413 `body_too_large`.
    #[error("the request body is larger than [admin] max_body_bytes")]
    BodyTooLarge,
    /// The body did not arrive within `[admin] body_read_timeout`: 408 `body_read_timeout`.
    #[error("the request body did not arrive within [admin] body_read_timeout")]
    BodyReadTimeout,
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("no such webhook endpoint")]
    NotFound,
    #[error("{0}")]
    Validation(String),
    #[error("rate limit exceeded; retry in {retry_after} s")]
    RateLimited {
        limit: u32,
        retry_after: u64,
        reset: u64,
    },
    #[error("{0}")]
    StoreReadOnly(String),
    #[error("{0}")]
    StoreConflict(String),
    /// Another replica changed the endpoint first (etcd transaction lost): 409 `conflict`.
    #[error("{0}")]
    Conflict(String),
    /// The store cannot be written now (etcd unreachable): 503 `store_unavailable`.
    #[error("{0}")]
    StoreUnavailable(String),
    /// The same `Idempotency-Key` with another request: 422 `idempotency_key_reused`.
    #[error("{0}")]
    IdempotencyKeyReused(String),
    /// No snapshot loaded yet (etcd down at start-up): 503 `store_not_loaded`.
    #[error("{0}")]
    StoreNotLoaded(String),
    /// No space left: 507 `store_write_failed`; nothing changed, on disk or in service.
    #[error("{0}")]
    StoreWriteFailed(String),
    /// Written and in service, but the directory sync failed: 500 `store_not_durable`.
    #[error("{0}")]
    StoreNotDurable(String),
    /// The write was made, but its audit line could not be appended: 500 `audit_log_failed`.
    #[error("{0}")]
    AuditFailed(String),
    #[error("internal error")]
    Internal(String),
}

/// The error a response carries until the middleware renders it.
#[derive(Clone, Debug)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyReadTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::StoreReadOnly(_) | Self::StoreConflict(_) | Self::Conflict(_) => {
                StatusCode::CONFLICT
            }
            Self::StoreUnavailable(_) | Self::StoreNotLoaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::IdempotencyKeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::StoreWriteFailed(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::StoreNotDurable(_) | Self::AuditFailed(_) | Self::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyReadTimeout => "body_read_timeout",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound => "not_found",
            Self::Validation(_) => "validation_failed",
            Self::RateLimited { .. } => "rate_limited",
            Self::StoreReadOnly(_) => "store_read_only",
            Self::StoreConflict(_) => "store_conflict",
            Self::Conflict(_) => "conflict",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::IdempotencyKeyReused(_) => "idempotency_key_reused",
            Self::StoreNotLoaded(_) => "store_not_loaded",
            Self::StoreWriteFailed(_) => "store_write_failed",
            Self::StoreNotDurable(_) => "store_not_durable",
            Self::AuditFailed(_) => "audit_log_failed",
            Self::Internal(_) => "internal_error",
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            Self::StoreUnavailable(detail)
            | Self::StoreNotLoaded(detail)
            | Self::StoreWriteFailed(detail) => {
                tracing::warn!(error = %detail, "admin write refused");
                detail.clone()
            }
            Self::StoreNotDurable(detail) => {
                tracing::error!(error = %detail, "admin write not made durable");
                detail.clone()
            }
            Self::AuditFailed(detail) => {
                tracing::error!(error = %detail, "admin write made but not audited");
                "the change was made and is in service, but appending it to the audit log failed; see the hooksign log".to_owned()
            }
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "admin request failed");
                "internal error; see the hooksign log".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = status.into_response();
        if let Self::RateLimited {
            limit,
            retry_after,
            reset,
        } = &self
        {
            let headers = response.headers_mut();
            headers.insert("retry-after", HeaderValue::from(*retry_after));
            headers.insert("x-ratelimit-limit", HeaderValue::from(*limit));
            headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
            headers.insert("x-ratelimit-reset", HeaderValue::from(*reset));
        }
        response.extensions_mut().insert(ErrorBody {
            code: self.code(),
            message,
        });
        response
    }
}

impl From<WriteError> for AdminError {
    fn from(err: WriteError) -> Self {
        match err {
            WriteError::ReadOnly(_) | WriteError::NotReplaceable => {
                Self::StoreReadOnly(err.to_string())
            }
            WriteError::Conflict(_) => Self::StoreConflict(err.to_string()),
            WriteError::Invalid(_) => Self::Validation(err.to_string()),
            WriteError::Contended(_) => Self::Conflict(err.to_string()),
            WriteError::Unavailable(_) | WriteError::WriterGone => {
                Self::StoreUnavailable(err.to_string())
            }
            WriteError::NotLoaded => Self::StoreNotLoaded(err.to_string()),
            WriteError::IdempotencyKeyReused => Self::IdempotencyKeyReused(err.to_string()),
            WriteError::NoSpace(_) => Self::StoreWriteFailed(err.to_string()),
            WriteError::NotDurable(_) => Self::StoreNotDurable(err.to_string()),
            WriteError::Io(_) | WriteError::Serialize(_) => Self::Internal(err.to_string()),
        }
    }
}

/// `Json<T>` whose rejections are `400 invalid_request` in the envelope.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AdminError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(body_failure(rejection.status(), &rejection)
                .unwrap_or_else(|| AdminError::InvalidRequest(json_message(&rejection)))),
        }
    }
}

/// A body that could not be read because it was too large or too slow: the error that says so
/// (413 or 408), from the rejection's `status` and causes.
pub(super) fn body_failure(
    status: StatusCode,
    rejection: &(dyn std::error::Error + 'static),
) -> Option<AdminError> {
    if status == StatusCode::PAYLOAD_TOO_LARGE
        || caused_by::<http_body_util::LengthLimitError>(rejection, |_| true)
    {
        return Some(AdminError::BodyTooLarge);
    }
    caused_by::<super::server::BodyError>(rejection, |err| {
        matches!(err, super::server::BodyError::TimedOut)
    })
    .then_some(AdminError::BodyReadTimeout)
}

/// Whether an error of type `E` that `matches` is among `rejection`'s causes.
fn caused_by<E: std::error::Error + 'static>(
    rejection: &(dyn std::error::Error + 'static),
    matches: impl Fn(&E) -> bool,
) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(err) = cause {
        if err.downcast_ref::<E>().is_some_and(&matches) {
            return true;
        }
        cause = err.source();
    }
    false
}

fn json_message(rejection: &JsonRejection) -> String {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "Content-Type must be application/json".to_owned()
        }
        other => other.body_text(),
    }
}
