//! HTTP transparency, in the manner of linkerd2-proxy's `tests/transparency.rs`: for each HTTP
//! shape the proxy may meet (versions, methods, bodiless requests, HEAD/204/304, conflicting
//! framing, trailers, upgrades, ambiguous requests), what the peer on the other side must see.
//! The application side is a raw TCP socket where the bytes matter; upstreams are raw TCP
//! servers ([`RawUpstream`]).

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;

const LIMIT: Duration = Duration::from_secs(10);

async fn hooksign(upstream: &RawUpstream) -> (EndpointSpec, TestServer) {
    let endpoint = EndpointSpec::new(upstream.url("/in"));
    let config = ConfigSpec::new(None).set("egress", "allow_http = true");
    let server = TestServer::start(&config, &store_toml(&[&endpoint])).await;
    (endpoint, server)
}

/// A request from the application, written by hand (`{id}` is replaced by the endpoint's uuid).
fn request(text: &str, endpoint: &EndpointSpec) -> Vec<u8> {
    text.replace("{id}", &endpoint.uuid).into_bytes()
}

fn status_line(seen: &str) -> &str {
    seen.lines().next().unwrap_or_default()
}

fn has_header(seen: &str, name: &str) -> bool {
    let head = seen.split("\r\n\r\n").next().unwrap_or_default();
    head.lines().skip(1).any(|line| {
        line.split_once(':')
            .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
    })
}

fn header_value(seen: &str, name: &str) -> Option<String> {
    let head = seen.split("\r\n\r\n").next().unwrap_or_default();
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

fn body(seen: &str) -> &str {
    seen.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[tokio::test]
async fn the_application_hears_its_own_http_version() {
    let upstream = RawUpstream::start(|mut c| async move {
        c.read_request().await;
        c.write("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await;
    })
    .await;
    let (endpoint, server) = hooksign(&upstream).await;
    let (seen, _) = raw_exchange(
        server.proxy,
        &request(
            "POST / HTTP/1.1\r\nHost: h\r\nX-Webhook-Id: {id}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            &endpoint,
        ),
        LIMIT,
    )
    .await;
    assert_eq!(status_line(&seen), "HTTP/1.1 200 OK", "{seen}");
    assert_eq!(body(&seen), "ok");

    let (seen, _) = raw_exchange(
        server.proxy,
        &request(
            "POST / HTTP/1.0\r\nHost: h\r\nX-Webhook-Id: {id}\r\nContent-Length: 2\r\n\r\n{}",
            &endpoint,
        ),
        LIMIT,
    )
    .await;
    assert_eq!(status_line(&seen), "HTTP/1.0 200 OK", "{seen}");
}

#[tokio::test]
async fn a_bodiless_request_gets_no_invented_content_length() {
    let upstream = RawUpstream::answering("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let (endpoint, server) = hooksign(&upstream).await;
    for method in ["GET", "DELETE", "OPTIONS"] {
        let (seen, _) = raw_exchange(
            server.proxy,
            &request(
                &format!("{method} / HTTP/1.1\r\nHost: h\r\nX-Webhook-Id: {{id}}\r\nConnection: close\r\n\r\n"),
                &endpoint,
            ),
            LIMIT,
        )
        .await;
        assert!(seen.starts_with("HTTP/1.1 200"), "{method}: {seen}");
        let sent = upstream.requests().pop().unwrap();
        assert!(sent.request_line().starts_with(method), "{}", sent.head);
        assert!(
            sent.header("content-length").is_empty(),
            "{method} went up with {:?}",
            sent.header("content-length")
        );
    }
    let (seen, _) = raw_exchange(
        server.proxy,
        &request(
            "POST / HTTP/1.1\r\nHost: h\r\nX-Webhook-Id: {id}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            &endpoint,
        ),
        LIMIT,
    )
    .await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert_eq!(
        upstream.requests().pop().unwrap().header("content-length"),
        ["0"]
    );
}

#[tokio::test]
async fn head_keeps_its_content_length_and_carries_no_body() {
    let upstream = RawUpstream::start(|mut c| async move {
        while let Some(request) = c.read_request().await {
            let response = if request.request_line().starts_with("HEAD") {
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
            } else {
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
            };
            if !c.write(response).await {
                return;
            }
        }
    })
    .await;
    let (endpoint, server) = hooksign(&upstream).await;
    let (seen, _) = raw_exchange(
        server.proxy,
        &request(
            "HEAD / HTTP/1.1\r\nHost: h\r\nX-Webhook-Id: {id}\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\nX-Webhook-Id: {id}\r\nConnection: close\r\n\r\n",
            &endpoint,
        ),
        LIMIT,
    )
    .await;
    // Two responses on one connection: the HEAD's has the length but no body, so the GET's
    // follows straight after its head.
    let responses: Vec<&str> = seen.split("HTTP/1.1 200 OK").skip(1).collect();
    assert_eq!(responses.len(), 2, "{seen}");
    assert!(
        responses[0]
            .to_ascii_lowercase()
            .contains("content-length: 5"),
        "{seen}"
    );
    assert!(
        responses[0].ends_with("\r\n\r\n"),
        "a HEAD response has no body: {seen:?}"
    );
    assert!(responses[1].ends_with("hello"), "{seen:?}");
}

#[tokio::test]
async fn no_content_and_not_modified_carry_no_body_and_keep_the_connection() {
    for response in [
        "HTTP/1.1 204 No Content\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    ] {
        let upstream = RawUpstream::answering(response).await;
        let (endpoint, server) = hooksign(&upstream).await;
        let headers = [("x-webhook-id", endpoint.uuid.as_str())];
        for _ in 0..3 {
            let reply = server.deliver(&headers, "{}").await;
            assert!(reply.body.is_empty(), "{response}: {:?}", reply.body);
            assert_eq!(&response[9..12], reply.status.as_str());
        }
        assert_eq!(
            upstream.connections(),
            1,
            "{response}: the connection is reused"
        );
    }
}

#[tokio::test]
async fn connect_and_trace_are_refused_with_405() {
    let upstream = RawUpstream::answering("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let (endpoint, server) = hooksign(&upstream).await;
    for line in ["CONNECT example.com:443 HTTP/1.1", "TRACE / HTTP/1.1"] {
        let (seen, _) = raw_exchange(
            server.proxy,
            &request(
                &format!("{line}\r\nHost: example.com\r\nX-Webhook-Id: {{id}}\r\nConnection: close\r\n\r\n"),
                &endpoint,
            ),
            LIMIT,
        )
        .await;
        assert!(seen.starts_with("HTTP/1.1 405"), "{line}: {seen}");
        assert_eq!(
            header_value(&seen, "x-hooksign-error").as_deref(),
            Some("method_not_allowed")
        );
    }
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn trailers_and_upgrades_do_not_cross() {
    let upstream = RawUpstream::answering(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n",
    )
    .await;
    let (endpoint, server) = hooksign(&upstream).await;
    let (seen, _) = raw_exchange(
        server.proxy,
        &request(
            "POST / HTTP/1.1\r\nHost: h\r\nX-Webhook-Id: {id}\r\nTE: trailers\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\nContent-Length: 2\r\n\r\n{}",
            &endpoint,
        ),
        LIMIT,
    )
    .await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("hello"), "{seen}");
    assert!(!seen.to_ascii_lowercase().contains("x-checksum"), "{seen}");
    let sent = upstream.requests().pop().unwrap();
    for name in ["upgrade", "te", "connection"] {
        assert!(
            sent.header(name).is_empty(),
            "{name} went up: {}",
            sent.head
        );
    }
}

#[tokio::test]
async fn conflicting_upstream_framing_is_resolved_by_transfer_encoding() {
    // RFC 9112 section 6.3: Transfer-Encoding overrides Content-Length.
    let upstream = RawUpstream::answering(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let (endpoint, server) = hooksign(&upstream).await;
    let reply = server
        .deliver(&[("x-webhook-id", endpoint.uuid.as_str())], "{}")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "hello");
    assert!(
        reply.headers.get("content-length").is_none_or(|v| v == "5"),
        "{:?}",
        reply.headers
    );
}

#[tokio::test]
async fn contradictory_upstream_lengths_are_an_upstream_failure() {
    let upstream = RawUpstream::answering(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    let (endpoint, server) = hooksign(&upstream).await;
    let reply = server
        .deliver(&[("x-webhook-id", endpoint.uuid.as_str())], "{}")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(reply.hooksign_error(), Some("upstream_protocol"));
}

#[tokio::test]
async fn a_request_with_both_length_and_chunked_goes_up_with_its_exact_length() {
    let upstream = RawUpstream::answering("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let (endpoint, server) = hooksign(&upstream).await;
    let (seen, _) = raw_exchange(
        server.proxy,
        &request(
            "POST / HTTP/1.1\r\nHost: h\r\nX-Webhook-Id: {id}\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            &endpoint,
        ),
        LIMIT,
    )
    .await;
    // RFC 9112 section 6.3: Transfer-Encoding wins; hyper also closes the connection after.
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    let sent = upstream.requests().pop().unwrap();
    assert_eq!(sent.body, b"hello");
    assert_eq!(sent.header("content-length"), ["5"]);
    assert!(sent.header("transfer-encoding").is_empty());
}

#[tokio::test]
async fn ambiguous_requests_are_refused_with_their_own_codes() {
    let upstream = RawUpstream::answering("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let (endpoint, server) = hooksign(&upstream).await;
    let other = uuid::Uuid::new_v4().to_string();
    let id = endpoint.uuid.as_str();
    let reply = server
        .deliver(
            &[("x-webhook-id", id), ("x-webhook-id", other.as_str())],
            "{}",
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.hooksign_error(), Some("repeated_webhook_id"));

    let reply = server
        .deliver(
            &[
                ("x-webhook-id", id),
                ("x-webhook-event", "invoice.created"),
                ("x-webhook-event", "not.subscribed"),
            ],
            "{}",
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.hooksign_error(), Some("repeated_webhook_event"));

    for coding in ["gzip, chunked", "chunked, chunked"] {
        let (seen, _) = raw_exchange(
            server.proxy,
            &request(
                &format!("POST / HTTP/1.1\r\nHost: h\r\nX-Webhook-Id: {{id}}\r\nTransfer-Encoding: {coding}\r\nConnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"),
                &endpoint,
            ),
            LIMIT,
        )
        .await;
        assert!(seen.starts_with("HTTP/1.1 501"), "{coding}: {seen}");
        assert_eq!(
            header_value(&seen, "x-hooksign-error").as_deref(),
            Some("unsupported_transfer_coding")
        );
    }
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
}

#[tokio::test]
async fn the_http_layers_own_refusals_carry_x_hooksign_error() {
    let upstream = RawUpstream::answering("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let (_endpoint, server) = hooksign(&upstream).await;
    let (seen, _) = raw_exchange(server.proxy, b"NOT HTTP AT ALL\r\n\r\n", LIMIT).await;
    assert!(seen.starts_with("HTTP/1.1 400"), "{seen}");
    assert_eq!(
        header_value(&seen, "x-hooksign-error").as_deref(),
        Some("malformed_request"),
        "{seen}"
    );

    let huge = format!(
        "POST / HTTP/1.1\r\nHost: h\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let (seen, _) = raw_exchange(server.proxy, huge.as_bytes(), LIMIT).await;
    assert!(seen.starts_with("HTTP/1.1 431"), "{seen}");
    assert_eq!(
        header_value(&seen, "x-hooksign-error").as_deref(),
        Some("request_head_too_large"),
        "{seen}"
    );
    assert!(has_header(&seen, "x-request-id"), "{seen}");
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn a_customers_bare_400_or_431_passes_through_untouched() {
    for response in [
        "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n",
    ] {
        let upstream = RawUpstream::answering(response).await;
        let (endpoint, server) = hooksign(&upstream).await;
        // Twice on one connection: after a response, and between requests.
        let (seen, _) = raw_exchange(
            server.proxy,
            &request(
                "POST / HTTP/1.1\r\nHost: h\r\nX-Webhook-Id: {id}\r\nContent-Length: 2\r\n\r\n{}POST / HTTP/1.1\r\nHost: h\r\nX-Webhook-Id: {id}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                &endpoint,
            ),
            LIMIT,
        )
        .await;
        assert_eq!(seen.matches(&response[..12]).count(), 2, "{seen}");
        assert!(
            !seen.to_ascii_lowercase().contains("x-hooksign-error"),
            "the customer's answer was taken for hyper's: {seen}"
        );
    }
}

#[tokio::test]
async fn a_malformed_request_after_a_good_one_gets_hooksigns_envelope() {
    let upstream = RawUpstream::answering("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let (endpoint, server) = hooksign(&upstream).await;
    let (seen, _) = raw_exchange(
        server.proxy,
        &request(
            "POST / HTTP/1.1\r\nHost: h\r\nX-Webhook-Id: {id}\r\nContent-Length: 2\r\n\r\n{}BROKEN\r\n\r\n",
            &endpoint,
        ),
        LIMIT,
    )
    .await;
    assert!(seen.starts_with("HTTP/1.1 200 OK"), "{seen}");
    let second = seen.split("HTTP/1.1 ").nth(2).unwrap_or_default();
    assert!(second.starts_with("400"), "{seen}");
    assert!(
        second.contains("x-hooksign-error: malformed_request"),
        "{seen}"
    );
}

// === the reference cannot drift ===

/// A page of the book (`docs/src`), where the reference tables live since issue 22.
fn book(page: &str) -> String {
    std::fs::read_to_string(format!("{}/docs/src/{page}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn every_error_code_is_in_the_books_error_table() {
    let troubleshooting = book("troubleshooting.md");
    let table = troubleshooting
        .split("## Errors of the proxy port")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .unwrap();
    let operations = book("operations.md");
    for outcome in hooksign::proxy::Outcome::ALL {
        let code = outcome.as_label();
        if matches!(code, "success" | "failed" | "client_closed") {
            continue;
        }
        assert!(
            table.contains(&format!("| `{code}` |")),
            "{code} is missing from the error table of docs/src/troubleshooting.md"
        );
        assert!(
            operations.contains(&format!("`{code}`,"))
                || operations.contains(&format!("`{code}`.")),
            "{code} is missing from the hooksign_deliveries_total outcomes"
        );
    }
}

#[test]
fn every_proxy_key_is_documented_and_every_example_key_parses() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml.example"))
            .unwrap();
    let proxy = example
        .split("[proxy]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .unwrap();
    let keys: Vec<&str> = proxy
        .lines()
        .map(|line| line.trim_start_matches("# "))
        .filter_map(|line| line.split_once(" = ").map(|(key, _)| key.trim()))
        .filter(|key| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    for key in [
        "connect_timeout",
        "tls_handshake_timeout",
        "upstream_timeout",
        "response_idle_timeout",
        "response_timeout",
        "max_response_bytes",
        "pool_idle_timeout",
        "pool_max_idle_per_origin",
        "pool_max_idle",
        "max_connections_per_origin",
        "max_in_flight_per_endpoint",
        "breaker_failures",
        "breaker_cooldown",
    ] {
        assert!(
            keys.contains(&key),
            "{key} is missing from config.toml.example"
        );
    }
    let reference = book("configuration.md");
    for key in &keys {
        assert!(
            reference.contains(&format!("| `{key}` |")),
            "[proxy] {key} is missing from docs/src/configuration.md"
        );
    }
    // The commented-out keys parse too (with their example values).
    let uncommented = example.replace("# max_response_bytes", "max_response_bytes");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, uncommented).unwrap();
    hooksign::config::Config::load(&path).unwrap();
}

#[test]
fn every_metric_is_in_the_books_metrics_table() {
    let operations = book("operations.md");
    let text = hooksign::metrics::Metrics::new().unwrap().render().unwrap();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(
                operations.contains(&format!("| `{name}` |")),
                "{name} is missing from the metrics table of docs/src/operations.md"
            );
        }
    }
}
