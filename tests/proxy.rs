//! The delivery path end to end: hooksign in-process between a real client and a real TLS
//! upstream (rcgen CA trusted through `[egress] ca_file`).

mod support;

use std::time::Duration;

use http::{Method, StatusCode, Version};
use support::*;

const EVENT: (&str, &str) = ("x-webhook-event", "invoice.created");

async fn setup(
    config: ConfigSpec,
    options: UpstreamOptions,
) -> (Pki, Upstream, EndpointSpec, TestServer) {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, options).await;
    let endpoint = EndpointSpec::new(upstream.url("/hooks/in?token=abc&x=1"));
    let config = config.set(
        "egress",
        &format!("ca_file = {:?}", pki.ca_path.display().to_string()),
    );
    let server = TestServer::start(&config, &store_toml(&[&endpoint])).await;
    (pki, upstream, endpoint, server)
}

fn base() -> ConfigSpec {
    ConfigSpec::new(None)
}

fn assert_refused(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.hooksign_error(), Some(code));
    let json = reply.json();
    assert_eq!(json["error"]["code"], code);
    assert!(json["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    let request_id = json["meta"]["requestId"].as_str().unwrap();
    assert_eq!(reply.headers["x-request-id"], request_id);
}

#[tokio::test]
async fn bodies_arrive_byte_for_byte_and_signed() {
    let max = 100_000usize;
    let (_pki, upstream, endpoint, server) = setup(
        base().set("proxy", &format!("max_body_bytes = {max}")),
        UpstreamOptions::default(),
    )
    .await;
    let id = endpoint.uuid.as_str();
    let sizes = [0usize, 1024, 65536, max];
    for (i, size) in sizes.iter().enumerate() {
        // Every byte value, so nothing is decoded or normalised on the way.
        let body: Vec<u8> = (0..*size).map(|n| (n * 7 + i) as u8).collect();
        let reply = server
            .deliver(&[("x-webhook-id", id), EVENT], body.clone())
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "size {size}: {}",
            reply.text()
        );
        assert_eq!(reply.hooksign_error(), None);
        let seen = upstream.requests().pop().unwrap();
        assert_eq!(seen.body.len(), *size);
        assert!(seen.body == body, "size {size}: body changed in transit");
        assert_eq!(seen.headers["content-length"], size.to_string());
        let signature = seen.headers["x-storno-signature"].to_str().unwrap();
        assert_eq!(
            signature,
            reference_hmac_hex(endpoint.secret.as_bytes(), &body),
            "size {size}"
        );
    }

    let over = vec![b'x'; max + 1];
    let reply = server.deliver(&[("x-webhook-id", id), EVENT], over).await;
    assert_refused(&reply, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    assert_eq!(
        upstream.requests().len(),
        sizes.len(),
        "an oversized body reached the upstream"
    );
}

#[tokio::test]
async fn oversized_chunked_bodies_are_refused_while_streaming() {
    let (_pki, upstream, endpoint, server) = setup(
        base().set("proxy", "max_body_bytes = 1000"),
        UpstreamOptions::default(),
    )
    .await;
    // A streamed body with no Content-Length: the limit must hold as chunks arrive.
    let stream = tokio_stream_body(vec![vec![b'a'; 600], vec![b'b'; 600]]);
    let mut request = http::Request::post(format!("http://{}/", server.proxy))
        .header("x-webhook-id", &endpoint.uuid)
        .body(stream)
        .unwrap();
    request.headers_mut().remove("content-length");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.headers()["x-hooksign-error"], "body_too_large");
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn chunked_bodies_go_upstream_whole_with_their_length() {
    let (_pki, upstream, endpoint, server) = setup(base(), UpstreamOptions::default()).await;
    let chunks = vec![vec![b'a'; 600], vec![b'b'; 7], vec![b'c'; 3000]];
    let whole: Vec<u8> = chunks.concat();
    let request = http::Request::post(format!("http://{}/", server.proxy))
        .header("x-webhook-id", &endpoint.uuid)
        .body(tokio_stream_body(chunks))
        .unwrap();
    assert!(request.headers().get("content-length").is_none());
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = upstream.requests().pop().unwrap();
    assert!(seen.body == whole, "the chunks arrive in order, whole");
    assert_eq!(seen.headers["content-length"], whole.len().to_string());
    assert!(seen.headers.get("transfer-encoding").is_none());
    assert_eq!(
        seen.headers["x-storno-signature"],
        reference_hmac_hex(endpoint.secret.as_bytes(), &whole)
    );
}

/// A streamed body with no declared length (sent chunked).
struct Chunked(std::vec::IntoIter<Vec<u8>>);

fn tokio_stream_body(chunks: Vec<Vec<u8>>) -> Chunked {
    Chunked(chunks.into_iter())
}

impl http_body::Body for Chunked {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.0
                .next()
                .map(|c| Ok(http_body::Frame::data(bytes::Bytes::from(c)))),
        )
    }
}

#[tokio::test]
async fn path_and_query_come_from_the_stored_url() {
    let (_pki, upstream, endpoint, server) = setup(base(), UpstreamOptions::default()).await;
    let reply = server
        .send(
            Method::PUT,
            "/anything/the/app/uses?ignored=1",
            &[("x-webhook-id", &endpoint.uuid)],
            "{}",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = upstream.requests().pop().unwrap();
    assert_eq!(seen.target, "/hooks/in?token=abc&x=1");
    assert_eq!(
        seen.method,
        Method::PUT,
        "the application's method is forwarded"
    );
    assert_eq!(
        seen.headers["host"],
        format!("localhost:{}", upstream.addr.port())
    );
}

#[tokio::test]
async fn refusals_have_their_codes() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let active = EndpointSpec::new(upstream.url("/a"));
    let mut disabled = EndpointSpec::new(upstream.url("/b"));
    disabled.status = "disabled".into();
    let mut auto_disabled = EndpointSpec::new(upstream.url("/c"));
    auto_disabled.status = "auto_disabled".into();
    let mut everything = EndpointSpec::new(upstream.url("/d"));
    everything.events = vec!["*".into()];
    let plain_http = EndpointSpec::new(format!("http://localhost:{}/e", upstream.addr.port()));
    let store = store_toml(&[&active, &disabled, &auto_disabled, &everything, &plain_http]);
    let server = TestServer::start(&ConfigSpec::new(Some(&pki)), &store).await;

    type Case<'a> = (Vec<(&'a str, &'a str)>, StatusCode, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (vec![], StatusCode::BAD_REQUEST, "missing_webhook_id"),
        (
            vec![("x-webhook-id", "not-a-uuid")],
            StatusCode::BAD_REQUEST,
            "missing_webhook_id",
        ),
        (
            vec![("x-webhook-id", "00000000-0000-4000-8000-000000000000")],
            StatusCode::NOT_FOUND,
            "unknown_webhook",
        ),
        (
            vec![("x-webhook-id", &disabled.uuid)],
            StatusCode::CONFLICT,
            "webhook_inactive",
        ),
        (
            vec![("x-webhook-id", &auto_disabled.uuid)],
            StatusCode::CONFLICT,
            "webhook_inactive",
        ),
        (
            vec![
                ("x-webhook-id", &active.uuid),
                ("x-webhook-event", "invoice.deleted"),
            ],
            StatusCode::UNPROCESSABLE_ENTITY,
            "event_not_subscribed",
        ),
        (
            vec![("x-webhook-id", &plain_http.uuid)],
            StatusCode::FORBIDDEN,
            "destination_forbidden",
        ),
    ];
    for (headers, status, code) in cases {
        let reply = server.deliver(&headers, "{}").await;
        assert_refused(&reply, status, code);
    }
    assert!(
        upstream.requests().is_empty(),
        "a refused delivery reached the upstream"
    );

    for (id, event) in [
        (&active.uuid, "invoice.paid"),
        (&everything.uuid, "anything.new"),
    ] {
        let reply = server
            .deliver(&[("x-webhook-id", id), ("x-webhook-event", event)], "{}")
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{event}: {}", reply.text());
    }
    assert_eq!(upstream.requests().len(), 2);
    assert_eq!(
        upstream.requests()[0].headers["x-webhook-event"],
        "invoice.paid"
    );

    let metrics = server.admin_get("/metrics").await.text();
    assert!(
        metrics.contains("hooksign_deliveries_total{outcome=\"webhook_inactive\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hooksign_deliveries_total{outcome=\"success\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn plain_http_destinations_need_allow_http() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::plain()).await;
    let endpoint = EndpointSpec::new(upstream.url("/plain"));
    let config = ConfigSpec::new(Some(&pki)).set("egress", "allow_http = true");
    let server = TestServer::start(&config, &store_toml(&[&endpoint])).await;
    let reply = server
        .deliver(&[("x-webhook-id", &endpoint.uuid)], "hello")
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(upstream.requests()[0].body, "hello");
}

#[tokio::test]
async fn forwarding_rewrites_headers_both_ways() {
    let options = UpstreamOptions {
        headers: vec![
            ("connection", "X-Upstream-Hop"),
            ("x-upstream-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic realm=x"),
            ("x-upstream", "kept"),
        ],
        ..Default::default()
    };
    let (_pki, upstream, endpoint, server) = setup(base(), options).await;
    let reply = server
        .deliver(
            &[
                ("x-webhook-id", &endpoint.uuid),
                ("connection", "keep-alive, X-App-Hop"),
                ("x-app-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("te", "trailers"),
                ("trailer", "X-Checksum"),
                ("x-storno-signature", "forged-by-the-app"),
                ("x-custom", "passes"),
                ("content-type", "application/json"),
                EVENT,
            ],
            "{\"id\":1}",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = upstream.requests().pop().unwrap();
    for gone in [
        "x-webhook-id",
        "x-app-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
    ] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the upstream"
        );
    }
    assert!(seen.headers.get("connection").is_none_or(|v| !v
        .to_str()
        .unwrap()
        .to_ascii_lowercase()
        .contains("x-app-hop")));
    assert_eq!(seen.headers["x-custom"], "passes");
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.headers["x-webhook-event"], "invoice.created");
    assert_eq!(seen.headers["content-length"], "8");
    let signatures: Vec<_> = seen.headers.get_all("x-storno-signature").iter().collect();
    assert_eq!(
        signatures.len(),
        1,
        "the application's signature header was not replaced"
    );
    assert_eq!(
        signatures[0].to_str().unwrap(),
        reference_hmac_hex(endpoint.secret.as_bytes(), b"{\"id\":1}")
    );

    for gone in ["x-upstream-hop", "keep-alive", "proxy-authenticate"] {
        assert!(
            !reply.headers.contains_key(gone),
            "{gone} reached the application"
        );
    }
    assert_eq!(reply.headers["x-upstream"], "kept");
    assert_eq!(reply.body, "{\"received\":true}");
}

#[tokio::test]
async fn upstream_status_and_body_come_back() {
    let options = UpstreamOptions {
        status: StatusCode::SERVICE_UNAVAILABLE,
        ..Default::default()
    };
    let (_pki, _upstream, endpoint, server) = setup(base(), options).await;
    let reply = server
        .deliver(&[("x-webhook-id", &endpoint.uuid)], "{}")
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        reply.hooksign_error(),
        None,
        "a customer's own error is not hooksign's"
    );
    assert_eq!(reply.body, "{\"received\":true}");
    let metrics = server.admin_get("/metrics").await.text();
    assert!(
        metrics.contains("hooksign_deliveries_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn http2_upstreams_are_used_when_offered() {
    let options = UpstreamOptions {
        h2: true,
        ..Default::default()
    };
    let (_pki, upstream, endpoint, server) = setup(base(), options).await;
    for _ in 0..3 {
        let reply = server
            .deliver(&[("x-webhook-id", &endpoint.uuid), EVENT], "{\"h2\":true}")
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|r| r.version == Version::HTTP_2),
        "{:?}",
        seen[0].version
    );
    assert_eq!(seen[0].target, "/hooks/in?token=abc&x=1");
    assert_eq!(
        seen[0].headers["x-storno-signature"],
        reference_hmac_hex(endpoint.secret.as_bytes(), b"{\"h2\":true}")
    );
    assert_eq!(
        upstream.connections(),
        1,
        "HTTP/2 requests share one connection"
    );
}

/// `count` deliveries one after the other, each answered with `status`.
async fn deliver_in_a_row(
    server: &TestServer,
    endpoint: &EndpointSpec,
    count: usize,
    status: StatusCode,
) {
    for i in 0..count {
        let reply = server
            .deliver(
                &[("x-webhook-id", &endpoint.uuid)],
                format!("{{\"n\":{i}}}"),
            )
            .await;
        assert_eq!(reply.status, status, "delivery {i}: {}", reply.text());
    }
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let (_pki, upstream, endpoint, server) = setup(base(), UpstreamOptions::default()).await;
    let requests = 20;
    deliver_in_a_row(&server, &endpoint, requests, StatusCode::OK).await;
    assert_eq!(upstream.requests().len(), requests);
    assert_eq!(
        upstream.connections(),
        1,
        "one keep-alive connection carries {requests} requests in a row"
    );
}

#[tokio::test]
async fn empty_upstream_bodies_do_not_cost_a_connection() {
    let options = UpstreamOptions {
        status: StatusCode::NO_CONTENT,
        ..Default::default()
    };
    let (_pki, upstream, endpoint, server) = setup(base(), options).await;
    deliver_in_a_row(&server, &endpoint, 10, StatusCode::NO_CONTENT).await;
    assert_eq!(upstream.requests().len(), 10);
    assert_eq!(upstream.connections(), 1, "a 204 puts its connection back");
}

#[tokio::test]
async fn connections_the_upstream_closes_are_not_reused() {
    let options = UpstreamOptions {
        headers: vec![("connection", "close")],
        ..Default::default()
    };
    let (_pki, upstream, endpoint, server) = setup(base(), options).await;
    deliver_in_a_row(&server, &endpoint, 5, StatusCode::OK).await;
    assert_eq!(upstream.requests().len(), 5, "each delivery sent once");
    assert_eq!(upstream.connections(), 5);
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    use hooksign::upstream::pool::IDLE_TIMEOUT;
    use std::time::Instant;
    let (_pki, upstream, endpoint, server) = setup(base(), UpstreamOptions::default()).await;
    let headers = [("x-webhook-id", endpoint.uuid.as_str())];
    let deliver = || server.deliver(&headers, "{}");
    assert_eq!(deliver().await.status, StatusCode::OK);
    let pool = &server.state.upstream;
    assert_eq!(
        pool.drop_stale(Instant::now()),
        1,
        "a fresh idle connection is kept"
    );
    assert_eq!(deliver().await.status, StatusCode::OK);
    assert_eq!(upstream.connections(), 1);

    assert_eq!(
        pool.drop_stale(Instant::now() + IDLE_TIMEOUT),
        0,
        "past the timeout it is closed"
    );
    assert_eq!(deliver().await.status, StatusCode::OK);
    assert_eq!(
        upstream.connections(),
        2,
        "the next delivery opens a new connection"
    );
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let pki = Pki::new();
    // A port that was just free: nothing listens there now.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let endpoint = EndpointSpec::new(format!("https://localhost:{port}/"));
    let server = TestServer::start(&ConfigSpec::new(Some(&pki)), &store_toml(&[&endpoint])).await;
    let reply = server
        .deliver(&[("x-webhook-id", &endpoint.uuid)], "{}")
        .await;
    assert_refused(&reply, StatusCode::BAD_GATEWAY, "upstream_unreachable");
}

#[tokio::test]
async fn untrusted_certificate_is_502_upstream_tls() {
    let trusted = Pki::new();
    let other = Pki::new();
    let upstream = Upstream::start(&other, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/"));
    let server =
        TestServer::start(&ConfigSpec::new(Some(&trusted)), &store_toml(&[&endpoint])).await;
    let reply = server
        .deliver(&[("x-webhook-id", &endpoint.uuid)], "{}")
        .await;
    assert_refused(&reply, StatusCode::BAD_GATEWAY, "upstream_tls");
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let options = UpstreamOptions {
        delay: Duration::from_secs(3),
        ..Default::default()
    };
    let (_pki, upstream, endpoint, server) =
        setup(base().set("proxy", "upstream_timeout = \"300ms\""), options).await;
    let started = std::time::Instant::now();
    let reply = server
        .deliver(&[("x-webhook-id", &endpoint.uuid)], "{}")
        .await;
    assert_refused(&reply, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout did not cut the wait"
    );
    assert_eq!(
        upstream.requests().len(),
        1,
        "the upstream did receive the delivery"
    );
}

#[tokio::test]
async fn the_signature_header_name_is_configurable() {
    let (_pki, upstream, endpoint, server) = setup(
        base().set("signing", "header = \"X-Acme-Signature\""),
        UpstreamOptions::default(),
    )
    .await;
    let reply = server
        .deliver(&[("x-webhook-id", &endpoint.uuid)], "abc")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = upstream.requests().pop().unwrap();
    assert_eq!(
        seen.headers["x-acme-signature"],
        reference_hmac_hex(endpoint.secret.as_bytes(), b"abc")
    );
    assert!(!seen.headers.contains_key("x-storno-signature"));
}

#[tokio::test]
async fn probes_answer() {
    let server = TestServer::start(&ConfigSpec::new(None), "").await;
    assert_eq!(server.admin_get("/healthz").await.status, StatusCode::OK);
    assert_eq!(server.admin_get("/readyz").await.status, StatusCode::OK);
    let metrics = server.admin_get("/metrics").await.text();
    assert!(metrics.contains("hooksign_store_endpoints 0"), "{metrics}");
    assert!(
        metrics.contains("hooksign_store_last_reload_success 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_returning_customer_resumes_its_tls_session() {
    // The customer closes every connection, so each delivery opens a new one.
    let (_pki, upstream, endpoint, server) = setup(
        base(),
        UpstreamOptions {
            headers: vec![("connection", "close")],
            ..Default::default()
        },
    )
    .await;
    let headers = [("x-webhook-id", endpoint.uuid.as_str())];
    for _ in 0..3 {
        let reply = server.deliver(&headers, "{}").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(upstream.connections(), 3);
    assert_eq!(
        server
            .metric("hooksign_upstream_tls_handshakes_total{kind=\"full\"}")
            .await,
        1.0
    );
    assert_eq!(
        server
            .metric("hooksign_upstream_tls_handshakes_total{kind=\"resumed\"}")
            .await,
        2.0
    );
}
