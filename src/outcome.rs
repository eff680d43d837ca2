//! How a delivery ended: [`Outcome`], the one list of proxy outcomes with their metric label,
//! status, `X-Hooksign-Error` code and message. It sits below both the proxy (which decides an
//! outcome) and the metrics (which count them), so neither imports the other for it.

use http::StatusCode;

/// How a proxy request ended. The label of `hooksign_deliveries_total`, and for refusals the
/// `X-Hooksign-Error` code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered 2xx.
    Success,
    /// The upstream answered, but not 2xx.
    Failed,
    MissingWebhookId,
    InvalidMessageId,
    UnknownWebhook,
    WebhookInactive,
    EventNotSubscribed,
    BodyTooLarge,
    BodyReadTimeout,
    BodyReadFailed,
    DestinationForbidden,
    UpstreamUnreachable,
    UpstreamTls,
    UpstreamTimeout,
    /// No store snapshot is loaded yet (etcd down at start-up): 503 with `Retry-After`.
    StoreNotLoaded,
    /// After its headers, the upstream's body stalled past `[proxy] response_idle_timeout` or
    /// outlasted `response_timeout`: the response to the application was cut.
    UpstreamBodyTimeout,
    /// The upstream's body broke off (reset, malformed chunk) after its headers: cut.
    UpstreamBodyFailed,
    /// The upstream's body went over `[proxy] max_response_bytes`: cut.
    UpstreamResponseTooLarge,
    /// The application closed its connection before the response body ended (nginx's 499).
    ClientClosed,
    /// More than one `X-Webhook-Id`: which endpoint was meant is ambiguous.
    RepeatedWebhookId,
    /// More than one `X-Webhook-Event`: the subscription filter cannot judge it.
    RepeatedWebhookEvent,
    /// A `Transfer-Encoding` other than `chunked` (`gzip, chunked`…): the bytes would be signed
    /// still encoded (RFC 9112: 501).
    UnsupportedTransferCoding,
    /// `CONNECT` or `TRACE`: a signing proxy never tunnels or echoes.
    MethodNotAllowed,
    /// The endpoint has `[proxy] max_in_flight_per_endpoint` deliveries in flight, or its origin
    /// `max_connections_per_origin` connections busy: 503 at once, with `Retry-After`.
    UpstreamSaturated,
    /// The upstream broke HTTP: an unrequested `101` or other final 1xx, a response head over
    /// the bound or one hyper cannot parse, contradictory `Content-Length`s, or a body broken
    /// from its first bytes.
    UpstreamProtocol,
    /// The origin's circuit breaker is open after repeated connect, TLS or timeout failures: 503
    /// at once, with `Retry-After` until the next probe.
    CircuitOpen,
    /// A request head hyper could not parse: its own 400, given hooksign's envelope.
    MalformedRequest,
    /// A request head over [`crate::proxy::MAX_HEAD_BYTES`]: hyper's own 431.
    RequestHeadTooLarge,
    /// A request target hyper refused as too long: its own 414.
    UriTooLong,
    /// `[egress] proxy` could not be reached, or did not answer in time.
    ProxyUnreachable,
    /// `[egress] proxy` answered 407: its credentials are missing or wrong.
    ProxyAuthRequired,
    /// `[egress] proxy` refused the tunnel to the checked address.
    ProxyRefused,
    /// `[[proxy.tokens]]` are listed and the request's `Proxy-Authorization: Bearer` matched
    /// none (or was missing): 407.
    ProxyUnauthorized,
}

impl Outcome {
    /// Every outcome, in declaration order (the metrics index counters by discriminant).
    pub const ALL: [Outcome; 33] = [
        Self::Success,
        Self::Failed,
        Self::MissingWebhookId,
        Self::InvalidMessageId,
        Self::UnknownWebhook,
        Self::WebhookInactive,
        Self::EventNotSubscribed,
        Self::BodyTooLarge,
        Self::BodyReadTimeout,
        Self::BodyReadFailed,
        Self::DestinationForbidden,
        Self::UpstreamUnreachable,
        Self::UpstreamTls,
        Self::UpstreamTimeout,
        Self::StoreNotLoaded,
        Self::UpstreamBodyTimeout,
        Self::UpstreamBodyFailed,
        Self::UpstreamResponseTooLarge,
        Self::ClientClosed,
        Self::RepeatedWebhookId,
        Self::RepeatedWebhookEvent,
        Self::UnsupportedTransferCoding,
        Self::MethodNotAllowed,
        Self::UpstreamSaturated,
        Self::UpstreamProtocol,
        Self::CircuitOpen,
        Self::MalformedRequest,
        Self::RequestHeadTooLarge,
        Self::UriTooLong,
        Self::ProxyUnreachable,
        Self::ProxyAuthRequired,
        Self::ProxyRefused,
        Self::ProxyUnauthorized,
    ];

    /// The metric label, which is also the error code for refusals.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed => "failed",
            Self::MissingWebhookId => "missing_webhook_id",
            Self::InvalidMessageId => "invalid_message_id",
            Self::UnknownWebhook => "unknown_webhook",
            Self::WebhookInactive => "webhook_inactive",
            Self::EventNotSubscribed => "event_not_subscribed",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyReadTimeout => "body_read_timeout",
            Self::BodyReadFailed => "body_read_failed",
            Self::DestinationForbidden => "destination_forbidden",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTls => "upstream_tls",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::StoreNotLoaded => "store_not_loaded",
            Self::UpstreamBodyTimeout => "upstream_body_timeout",
            Self::UpstreamBodyFailed => "upstream_body_failed",
            Self::UpstreamResponseTooLarge => "upstream_response_too_large",
            Self::ClientClosed => "client_closed",
            Self::RepeatedWebhookId => "repeated_webhook_id",
            Self::RepeatedWebhookEvent => "repeated_webhook_event",
            Self::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UpstreamSaturated => "upstream_saturated",
            Self::UpstreamProtocol => "upstream_protocol",
            Self::CircuitOpen => "circuit_open",
            Self::MalformedRequest => "malformed_request",
            Self::RequestHeadTooLarge => "request_head_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::ProxyUnreachable => "proxy_unreachable",
            Self::ProxyAuthRequired => "proxy_auth_required",
            Self::ProxyRefused => "proxy_refused",
            Self::ProxyUnauthorized => "proxy_unauthorized",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::Success | Self::Failed => StatusCode::OK,
            Self::MissingWebhookId | Self::InvalidMessageId | Self::BodyReadFailed => {
                StatusCode::BAD_REQUEST
            }
            Self::UnknownWebhook => StatusCode::NOT_FOUND,
            Self::WebhookInactive => StatusCode::CONFLICT,
            Self::EventNotSubscribed => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyReadTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::DestinationForbidden => StatusCode::FORBIDDEN,
            Self::UpstreamUnreachable | Self::UpstreamTls => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::StoreNotLoaded => StatusCode::SERVICE_UNAVAILABLE,
            // Hooksign's own status when the body failed before its first bytes (they are read
            // before the head goes out); after that the customer's status is already sent.
            Self::UpstreamBodyTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamBodyFailed | Self::UpstreamResponseTooLarge | Self::ClientClosed => {
                StatusCode::BAD_GATEWAY
            }
            Self::RepeatedWebhookId | Self::RepeatedWebhookEvent => StatusCode::BAD_REQUEST,
            Self::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UpstreamSaturated | Self::CircuitOpen => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamProtocol => StatusCode::BAD_GATEWAY,
            Self::MalformedRequest => StatusCode::BAD_REQUEST,
            Self::RequestHeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::ProxyUnreachable | Self::ProxyAuthRequired | Self::ProxyRefused => {
                StatusCode::BAD_GATEWAY
            }
            Self::ProxyUnauthorized => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::Success | Self::Failed => "delivered",
            Self::MissingWebhookId => "X-Webhook-Id must name an endpoint by its uuid",
            Self::InvalidMessageId => {
                "X-Webhook-Message-Id must be 1 to 255 visible ASCII characters without spaces"
            }
            Self::UnknownWebhook => "no endpoint has this X-Webhook-Id",
            Self::WebhookInactive => "the endpoint is not active",
            Self::EventNotSubscribed => "the endpoint is not subscribed to this X-Webhook-Event",
            Self::BodyTooLarge => "the body is larger than [proxy] max_body_bytes",
            Self::BodyReadTimeout => "the body did not arrive within [proxy] body_read_timeout",
            Self::BodyReadFailed => "the body could not be read",
            Self::DestinationForbidden => {
                "the endpoint's destination is forbidden by the egress policy"
            }
            Self::UpstreamUnreachable => "the endpoint's server could not be reached",
            Self::UpstreamTls => "the TLS handshake with the endpoint's server failed",
            Self::UpstreamTimeout => {
                "the endpoint's server did not answer within [proxy] upstream_timeout"
            }
            Self::StoreNotLoaded => {
                "the endpoint store has not been loaded yet (its backend is unreachable); retry"
            }
            Self::UpstreamBodyTimeout => "the endpoint's response body stalled or took too long",
            Self::UpstreamBodyFailed => "the endpoint's response body broke off",
            Self::UpstreamResponseTooLarge => {
                "the endpoint's response body is larger than [proxy] max_response_bytes"
            }
            Self::ClientClosed => "the application closed the connection first",
            Self::RepeatedWebhookId => "send X-Webhook-Id once",
            Self::RepeatedWebhookEvent => "send X-Webhook-Event once",
            Self::UnsupportedTransferCoding => {
                "only the chunked transfer coding is accepted; send the body as it should be signed"
            }
            Self::MethodNotAllowed => "CONNECT and TRACE are not forwarded",
            Self::UpstreamSaturated => {
                "the endpoint (or its server) has as many deliveries in flight as allowed; retry"
            }
            Self::UpstreamProtocol => "the endpoint's server answered with broken HTTP",
            Self::CircuitOpen => {
                "the endpoint's server failed repeatedly; deliveries to it fail fast until a probe succeeds"
            }
            Self::MalformedRequest => "the request head is not valid HTTP/1.1",
            Self::RequestHeadTooLarge => "the request head is larger than 64 KiB",
            Self::UriTooLong => "the request target is too long",
            Self::ProxyUnreachable => "the egress forward proxy could not be reached",
            Self::ProxyAuthRequired => {
                "the egress forward proxy refused hooksign's credentials (407)"
            }
            Self::ProxyRefused => "the egress forward proxy refused the tunnel",
            Self::ProxyUnauthorized => {
                "send Proxy-Authorization: Bearer with a token listed in [[proxy.tokens]]"
            }
        }
    }

    /// The `Retry-After` (seconds) of a refusal that is worth retrying soon (for `circuit_open`
    /// the proxy says when the next probe may go instead).
    pub fn retry_after(self) -> Option<u32> {
        match self {
            Self::CircuitOpen => Some(1),
            Self::StoreNotLoaded => Some(STORE_NOT_LOADED_RETRY_AFTER),
            Self::UpstreamSaturated => Some(1),
            _ => None,
        }
    }
}

/// `Retry-After` of a `store_not_loaded` refusal: the backend's watch retries within seconds.
const STORE_NOT_LOADED_RETRY_AFTER: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_outcomes_in_declaration_order() {
        for (index, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, index, "{outcome:?}");
        }
    }
}
