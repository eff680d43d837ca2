//! Customers that misbehave after their response headers, as real sockets on loopback: a body
//! that stalls, one that drips past the total deadline, one that breaks off, one that is too
//! large. The application's response is cut (never a short "success"), the delivery is recorded
//! failed with its own outcome, and the in-flight gauge covers the body until it ends.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A plain-HTTP upstream that reads one request head and then plays `script`: what it writes,
/// with pauses, before it closes (every upstream stops by itself within 10 s).
async fn misbehaving(script: Vec<(Duration, &'static [u8])>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(Ok((mut socket, _))) =
            tokio::time::timeout_at(deadline, listener.accept()).await
        {
            let script = script.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                for (pause, bytes) in script {
                    if tokio::time::timeout_at(deadline, tokio::time::sleep(pause))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if socket.write_all(bytes).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends one delivery as raw HTTP/1.1 and reads until the proxy closes the connection or stops
/// sending for 5 s: everything received.
async fn raw_delivery(proxy: SocketAddr, uuid: String) -> Vec<u8> {
    let mut socket = TcpStream::connect(proxy).await.unwrap();
    let request = format!(
        "POST / HTTP/1.1\r\nhost: x\r\nx-webhook-id: {uuid}\r\ncontent-length: 2\r\n\
         connection: close\r\n\r\n{{}}"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return received,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

fn metric(server: &TestServer, line_start: &str) -> Option<String> {
    server
        .state
        .metrics
        .render()
        .unwrap()
        .lines()
        .find(|l| l.starts_with(line_start))
        .map(|l| l.rsplit(' ').next().unwrap().to_owned())
}

fn deliveries(server: &TestServer, outcome: &str) -> u64 {
    metric(
        server,
        &format!("hooksign_deliveries_total{{outcome=\"{outcome}\"}}"),
    )
    .map_or(0, |v| v.parse().unwrap())
}

async fn server_for(upstream: SocketAddr, extra: &[&str]) -> (TestServer, EndpointSpec) {
    let endpoint = EndpointSpec::new(format!("http://{upstream}/hook"));
    let mut config = ConfigSpec::new(None)
        .set("egress", "allow_http = true")
        .set("proxy", "response_idle_timeout = \"300ms\"")
        .set("proxy", "response_timeout = \"2s\"")
        .set("proxy", "upstream_timeout = \"1s\"");
    for line in extra {
        config = config.set("proxy", line);
    }
    let server = TestServer::start(&config, &store_toml(&[&endpoint])).await;
    (server, endpoint)
}

fn last_status(server: &TestServer, uuid: &str) -> (u64, Option<String>) {
    let snapshot = server.state.store.snapshot();
    let endpoint = snapshot.get(&uuid.parse().unwrap()).unwrap();
    let record = endpoint.record_now();
    (record.consecutive_failures, record.last_delivery_status)
}

/// A chunked body is complete only with its last chunk.
fn chunked_complete(received: &[u8]) -> bool {
    received.ends_with(b"0\r\n\r\n")
}

#[tokio::test]
async fn a_body_that_stalls_after_the_headers_is_cut_and_recorded_failed() {
    let upstream = misbehaving(vec![
        (
            Duration::ZERO,
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        ),
        (Duration::from_secs(8), b"0\r\n\r\n"),
    ])
    .await;
    let (server, endpoint) = server_for(upstream, &[]).await;
    let started = Instant::now();
    let delivery = tokio::spawn(raw_delivery(server.proxy, endpoint.uuid.clone()));
    // While the body stalls, the delivery is in flight.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        metric(&server, "hooksign_proxy_requests_in_flight").as_deref(),
        Some("1")
    );
    let received = delivery.await.unwrap();
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("hello"), "{text}");
    assert!(
        !chunked_complete(&received),
        "a cut body looked complete: {text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the stall was not cut by response_idle_timeout"
    );
    assert_eq!(deliveries(&server, "upstream_body_timeout"), 1);
    assert_eq!(deliveries(&server, "success"), 0);
    assert_eq!(
        metric(&server, "hooksign_proxy_requests_in_flight").as_deref(),
        Some("0")
    );
    assert_eq!(
        last_status(&server, &endpoint.uuid),
        (1, Some("failed".into()))
    );
}

#[tokio::test]
async fn a_body_that_drips_past_the_total_deadline_is_cut() {
    let drip: Vec<(Duration, &'static [u8])> = std::iter::once((
        Duration::ZERO,
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"[..],
    ))
    .chain((0..60).map(|_| (Duration::from_millis(100), &b"1\r\nx\r\n"[..])))
    .collect();
    let upstream = misbehaving(drip).await;
    let (server, endpoint) = server_for(upstream, &[]).await;
    let started = Instant::now();
    let received = raw_delivery(server.proxy, endpoint.uuid.clone()).await;
    let elapsed = started.elapsed();
    assert!(!chunked_complete(&received));
    // Each chunk came within the idle timeout; the 2 s total cut it.
    assert!(
        elapsed >= Duration::from_millis(1800) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    assert_eq!(deliveries(&server, "upstream_body_timeout"), 1);
}

#[tokio::test]
async fn a_body_that_breaks_off_is_an_upstream_failure() {
    let upstream = misbehaving(vec![(
        Duration::ZERO,
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten..",
    )])
    .await;
    let (server, endpoint) = server_for(upstream, &[]).await;
    let received = raw_delivery(server.proxy, endpoint.uuid.clone()).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(body.len() < 100, "{text}");
    assert_eq!(deliveries(&server, "upstream_body_failed"), 1);
    assert_eq!(
        last_status(&server, &endpoint.uuid).1.as_deref(),
        Some("failed")
    );
}

#[tokio::test]
async fn a_body_over_max_response_bytes_is_cut() {
    let upstream = misbehaving(vec![(
        Duration::ZERO,
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n14\r\n01234567890123456789\r\n0\r\n\r\n",
    )])
    .await;
    let (server, endpoint) = server_for(upstream, &["max_response_bytes = 10"]).await;
    let received = raw_delivery(server.proxy, endpoint.uuid.clone()).await;
    assert!(!chunked_complete(&received));
    assert_eq!(deliveries(&server, "upstream_response_too_large"), 1);
}

#[tokio::test]
async fn a_whole_body_is_a_success_counted_once_it_ends() {
    let upstream = misbehaving(vec![(
        Duration::ZERO,
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )])
    .await;
    let (server, endpoint) = server_for(upstream, &[]).await;
    let received = raw_delivery(server.proxy, endpoint.uuid.clone()).await;
    assert!(
        chunked_complete(&received),
        "{}",
        String::from_utf8_lossy(&received)
    );
    assert_eq!(deliveries(&server, "success"), 1);
    assert_eq!(
        last_status(&server, &endpoint.uuid),
        (0, Some("success".into()))
    );
}

/// A plain-HTTP upstream that answers 204 and closes every keep-alive connection idle for
/// `idle` (as Node.js does after 5 s); stops by itself after 30 s. Counts connections.
async fn closes_idle_after(
    idle: Duration,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&connections);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Ok(Ok((stream, _))) = tokio::time::timeout_at(deadline, listener.accept()).await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .status(204)
                            .body(http_body_util::Empty::<bytes::Bytes>::new())
                            .unwrap(),
                    )
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(idle)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn deliveries_spaced_around_the_servers_idle_timeout_never_race_it() {
    let (upstream, connections) = closes_idle_after(Duration::from_secs(1)).await;
    let (server, endpoint) = server_for(upstream, &["pool_idle_timeout = \"800ms\""]).await;
    let headers = [("x-webhook-id", endpoint.uuid.as_str())];
    let spacings = [750, 1000, 780, 1050, 820, 990, 760, 1010];
    for (i, ms) in spacings.iter().enumerate() {
        let reply = server.deliver(&headers, "{}").await;
        assert_eq!(
            reply.status,
            http::StatusCode::NO_CONTENT,
            "delivery {i}: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(*ms)).await;
    }
    let reply = server.deliver(&headers, "{}").await;
    assert_eq!(
        reply.status,
        http::StatusCode::NO_CONTENT,
        "{}",
        reply.text()
    );
    // Reused when younger than 800 ms, opened anew otherwise: never sent into a closing one.
    assert!(connections.load(std::sync::atomic::Ordering::SeqCst) >= 5);
    assert_eq!(deliveries(&server, "upstream_unreachable"), 0);
}

/// Sends raw request bytes to the proxy; the response head.
async fn raw(proxy: SocketAddr, request: &str) -> String {
    let mut socket = TcpStream::connect(proxy).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&received).to_lowercase()
}

#[tokio::test]
async fn ambiguous_requests_are_refused_with_their_own_codes() {
    let upstream = misbehaving(vec![(
        Duration::ZERO,
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    )])
    .await;
    let (server, endpoint) = server_for(upstream, &[]).await;
    let id = &endpoint.uuid;
    let cases = [
        (
            format!("POST / HTTP/1.1\r\nhost: x\r\nx-webhook-id: {id}\r\nx-webhook-id: {id}\r\ncontent-length: 0\r\n\r\n"),
            "400",
            "repeated_webhook_id",
        ),
        (
            format!("POST / HTTP/1.1\r\nhost: x\r\nx-webhook-id: {id}\r\nx-webhook-event: invoice.created\r\nx-webhook-event: invoice.paid\r\ncontent-length: 0\r\n\r\n"),
            "400",
            "repeated_webhook_event",
        ),
        (
            format!("POST / HTTP/1.1\r\nhost: x\r\nx-webhook-id: {id}\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            "501",
            "unsupported_transfer_coding",
        ),
        (
            format!("TRACE / HTTP/1.1\r\nhost: x\r\nx-webhook-id: {id}\r\n\r\n"),
            "405",
            "method_not_allowed",
        ),
        (
            format!("CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\nx-webhook-id: {id}\r\n\r\n"),
            "405",
            "method_not_allowed",
        ),
    ];
    let mut expected = std::collections::HashMap::new();
    for (request, status, code) in cases {
        let head = raw(server.proxy, &request).await;
        assert!(
            head.starts_with(&format!("http/1.1 {status}")),
            "{code}: {head}"
        );
        assert!(
            head.contains(&format!("x-hooksign-error: {code}")),
            "{head}"
        );
        *expected.entry(code).or_insert(0) += 1;
        assert_eq!(deliveries(&server, code), expected[code], "{code}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caps_answer_503_at_once_and_a_stalled_customer_leaves_others_alone() {
    // Accepts, reads the request, never answers (until it gives up after 10 s).
    let stalled = misbehaving(vec![(Duration::from_secs(9), b"")]).await;
    let healthy = misbehaving(vec![(
        Duration::ZERO,
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )])
    .await;
    let slow = EndpointSpec::new(format!("http://{stalled}/slow"));
    let same_origin = EndpointSpec::new(format!("http://{stalled}/other"));
    let fine = EndpointSpec::new(format!("http://{healthy}/fine"));
    let config = ConfigSpec::new(None)
        .set("egress", "allow_http = true")
        .set("proxy", "upstream_timeout = \"3s\"")
        .set("proxy", "max_in_flight_per_endpoint = 2")
        .set("proxy", "max_connections_per_origin = 2");
    let server = TestServer::start(&config, &store_toml(&[&slow, &same_origin, &fine])).await;

    let hung: Vec<_> = (0..2)
        .map(|_| tokio::spawn(raw_delivery(server.proxy, slow.uuid.clone())))
        .collect();
    // Wait until both are in flight.
    let started = Instant::now();
    while metric(&server, "hooksign_proxy_requests_in_flight").as_deref() != Some("2") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The endpoint's cap: refused at once, with Retry-After.
    let refused = server.deliver(&[("x-webhook-id", &slow.uuid)], "{}").await;
    assert_eq!(
        refused.status,
        http::StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert_eq!(refused.hooksign_error(), Some("upstream_saturated"));
    assert_eq!(refused.headers["retry-after"], "1");
    // The origin's cap: another endpoint on the same server finds both connections busy.
    let refused = server
        .deliver(&[("x-webhook-id", &same_origin.uuid)], "{}")
        .await;
    assert_eq!(refused.hooksign_error(), Some("upstream_saturated"));
    // A healthy customer is served while the stalled ones still hang.
    let ok = server.deliver(&[("x-webhook-id", &fine.uuid)], "{}").await;
    assert_eq!(ok.status, http::StatusCode::OK, "{}", ok.text());
    assert!(
        hung.iter().all(|h| !h.is_finished()),
        "the stalled deliveries ended early"
    );
    assert_eq!(deliveries(&server, "upstream_saturated"), 2);
    for h in hung {
        let received = h.await.unwrap();
        let text = String::from_utf8_lossy(&received);
        assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    }
}

#[tokio::test]
async fn an_http_1_0_customer_does_not_change_the_applications_version() {
    let upstream = misbehaving(vec![(
        Duration::ZERO,
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )])
    .await;
    let (server, endpoint) = server_for(upstream, &[]).await;
    let received = raw_delivery(server.proxy, endpoint.uuid.clone()).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("ok"), "{text}");
}

#[tokio::test]
async fn a_bodiless_get_goes_upstream_without_an_invented_length() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::plain()).await;
    let endpoint = EndpointSpec::new(upstream.url("/get"));
    let config = ConfigSpec::new(Some(&pki)).set("egress", "allow_http = true");
    let server = TestServer::start(&config, &store_toml(&[&endpoint])).await;
    let reply = server
        .send(
            http::Method::GET,
            "/",
            &[("x-webhook-id", &endpoint.uuid)],
            "",
        )
        .await;
    assert_eq!(reply.status, http::StatusCode::OK, "{}", reply.text());
    let seen = upstream.requests().pop().unwrap();
    assert_eq!(seen.method, http::Method::GET);
    assert!(
        seen.headers.get("content-length").is_none(),
        "{:?}",
        seen.headers
    );
    // A bodiless POST still says its length is 0.
    let reply = server
        .deliver(&[("x-webhook-id", &endpoint.uuid)], "")
        .await;
    assert_eq!(reply.status, http::StatusCode::OK);
    assert_eq!(
        upstream.requests().pop().unwrap().headers["content-length"],
        "0"
    );
}
