//! The `Idempotency-Key` header of admin writes (create, regenerate-secret, test) and the replay
//! of a recorded answer.
//!
//! The rule for clients: a 5xx or a dropped connection on a write means "outcome unknown":
//! retry with the same key. The same key with the same request within 24 hours returns the
//! recorded status and body (`Idempotent-Replayed: true`); with a different request it is
//! refused 422 `idempotency_key_reused`. The record is written with the change it belongs to
//! (see [`crate::store::idempotency`]).

use axum::body::{Body, Bytes};
use axum::extract::FromRequest;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::{AdminError, ApiJson};
use crate::store::idempotency::{self, IdempotencyKey, Recorded};

/// `Idempotency-Key`.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// `Idempotent-Replayed: true` on a replayed answer (as Stripe sends).
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// A write request's body with its idempotency key (if the client sent one) and fingerprint.
#[derive(Debug)]
pub struct KeyedBody {
    pub key: Option<String>,
    pub fingerprint: [u8; 32],
    pub bytes: Bytes,
    content_type: Option<HeaderValue>,
}

impl KeyedBody {
    /// The key scoped to `company`, with the request's fingerprint, for the store.
    pub fn scoped(&self, company: Uuid) -> Option<(IdempotencyKey, [u8; 32])> {
        self.key.as_ref().map(|key| {
            (
                IdempotencyKey {
                    company,
                    key: key.clone(),
                },
                self.fingerprint,
            )
        })
    }

    /// The body as JSON, read exactly as [`ApiJson`] reads it (`Content-Type` checked).
    pub async fn json<T: DeserializeOwned>(&self) -> Result<T, AdminError> {
        let mut request = axum::extract::Request::new(Body::from(self.bytes.clone()));
        if let Some(content_type) = &self.content_type {
            request
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type.clone());
        }
        ApiJson::<T>::from_request(request, &())
            .await
            .map(|ApiJson(value)| value)
    }

    /// The body as JSON, or `T::default()` when it is empty or blank.
    pub fn json_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, AdminError> {
        if self.bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        serde_json::from_slice(&self.bytes)
            .map_err(|err| AdminError::InvalidRequest(format!("invalid JSON body: {err}")))
    }
}

impl<S: Send + Sync> FromRequest<S> for KeyedBody {
    type Rejection = AdminError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let key = match req.headers().get(&IDEMPOTENCY_KEY) {
            None => None,
            Some(value) => Some(parse_key(value)?),
        };
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            super::error::body_failure(rejection.status(), &rejection)
                .unwrap_or_else(|| AdminError::InvalidRequest(rejection.body_text()))
        })?;
        Ok(Self {
            key,
            fingerprint: idempotency::fingerprint(&method, &path, &bytes),
            bytes,
            content_type,
        })
    }
}

/// A key: 1 to 255 visible ASCII characters.
fn parse_key(value: &HeaderValue) -> Result<String, AdminError> {
    let text = value
        .to_str()
        .ok()
        .filter(|text| {
            !text.is_empty()
                && text.len() <= idempotency::MAX_KEY_LEN
                && text.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            AdminError::InvalidRequest(format!(
                "Idempotency-Key must be 1 to {} visible ASCII characters",
                idempotency::MAX_KEY_LEN
            ))
        })?;
    Ok(text.to_owned())
}

/// The recorded answer, sent again.
pub fn replay(recorded: &Recorded) -> Response {
    let status = StatusCode::from_u16(recorded.status).unwrap_or(StatusCode::OK);
    let mut response = (status, recorded.body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    response
}

/// The JSON text of an answer to record (what the client is sent).
pub fn body_of(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
