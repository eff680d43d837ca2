//! The client certificate routes of the admin API: an endpoint's mutual-TLS identity, set with
//! `PUT /api/v1/webhooks/{uuid}/client-certificate` and removed with `DELETE`. The private key
//! goes into the store and never comes back out: responses show the endpoint, whose
//! `clientCertificate` names the leaf's subject, SHA-256 fingerprint and expiry.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{AdminError, ApiJson};
use super::webhooks::{audited, find_record, parse_uuid, view_in, WebhookView};
use crate::client_cert::ClientCertificate;
use crate::config::Permission;
use crate::secret::Secret;
use crate::state::AppState;
use crate::store::{now_text, Edit};

/// `PUT /api/v1/webhooks/{uuid}/client-certificate`. The key is never echoed or logged.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetClientCertificate {
    /// The PEM certificate chain, leaf first.
    #[schema(max_length = 65536)]
    pub certificate: String,
    /// The leaf's PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[schema(value_type = String, max_length = 65536)]
    pub private_key: Secret,
}

/// Set the client certificate deliveries to this endpoint present (replacing any).
#[utoipa::path(put, path = "/api/v1/webhooks/{uuid}/client-certificate", tag = "webhooks",
    params(("uuid" = String, Path, description = "Endpoint uuid"),
           ("X-Company" = Uuid, Header, description = "Company the endpoint belongs to")),
    request_body = SetClientCertificate,
    responses(
        (status = 200, description = "The endpoint, with `clientCertificate`", body = WebhookView),
        (status = 400, body = super::webhooks::ErrorEnvelope), (status = 401, body = super::webhooks::ErrorEnvelope),
        (status = 403, body = super::webhooks::ErrorEnvelope), (status = 404, body = super::webhooks::ErrorEnvelope),
        (status = 409, body = super::webhooks::ErrorEnvelope), (status = 408, body = super::webhooks::ErrorEnvelope), (status = 413, body = super::webhooks::ErrorEnvelope), (status = 422, body = super::webhooks::ErrorEnvelope),
        (status = 429, body = super::webhooks::ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn set(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(uuid): Path<String>,
    ApiJson(body): ApiJson<SetClientCertificate>,
) -> Result<Json<WebhookView>, AdminError> {
    caller.require(Permission::Manage)?;
    let uuid = parse_uuid(&uuid)?;
    // Checked here, off the writer: the writer checks again when it builds the endpoint.
    let parsed = ClientCertificate::parse(&body.certificate, &body.private_key)
        .map_err(|err| AdminError::Validation(format!("client certificate: {err}")))?;
    let company = caller.company;
    const ACTION: &str = "set_client_certificate";
    let store = state.store.clone();
    let written = audited(&state, &caller, uuid, ACTION, None, |_| true, async move {
        store
            .update(move |snapshot| {
                let mut record = find_record(snapshot, uuid, company)?;
                if !record.url.starts_with("https://") {
                    return Err(AdminError::Validation(
                        "client certificate: the endpoint's URL must use https".into(),
                    ));
                }
                record.client_certificate = Some(body.certificate);
                record.client_private_key = Some(body.private_key);
                record.updated_at = Some(now_text());
                Ok::<_, AdminError>((Edit::put(record), ()))
            })
            .await
    })
    .await?;
    tracing::info!(endpoint = %uuid, token = %caller.token_name, fingerprint = %parsed.fingerprint_hex(), "client certificate set");
    Ok(Json(view_in(&written.snapshot, uuid, company, false)?))
}

/// Remove the endpoint's client certificate: deliveries present none.
#[utoipa::path(delete, path = "/api/v1/webhooks/{uuid}/client-certificate", tag = "webhooks",
    params(("uuid" = String, Path, description = "Endpoint uuid"),
           ("X-Company" = Uuid, Header, description = "Company the endpoint belongs to")),
    responses(
        (status = 200, description = "The endpoint, without `clientCertificate`", body = WebhookView),
        (status = 400, body = super::webhooks::ErrorEnvelope), (status = 401, body = super::webhooks::ErrorEnvelope),
        (status = 403, body = super::webhooks::ErrorEnvelope), (status = 404, body = super::webhooks::ErrorEnvelope),
        (status = 429, body = super::webhooks::ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(uuid): Path<String>,
) -> Result<Json<WebhookView>, AdminError> {
    caller.require(Permission::Manage)?;
    let uuid = parse_uuid(&uuid)?;
    let company = caller.company;
    const ACTION: &str = "remove_client_certificate";
    let store = state.store.clone();
    let written = audited(&state, &caller, uuid, ACTION, None, |_| true, async move {
        store
            .update(move |snapshot| {
                let mut record = find_record(snapshot, uuid, company)?;
                if record.client_certificate.is_none() {
                    return Ok::<_, AdminError>((Edit::none(), ()));
                }
                record.client_certificate = None;
                record.client_private_key = None;
                record.updated_at = Some(now_text());
                Ok((Edit::put(record), ()))
            })
            .await
    })
    .await?;
    tracing::info!(endpoint = %uuid, token = %caller.token_name, "client certificate removed");
    Ok(Json(view_in(&written.snapshot, uuid, company, false)?))
}
