//! Operations (SPEC sections 7 and 8): metrics after real traffic, JSON logs from the real
//! binary, graceful shutdown on SIGTERM/SIGINT, and the limits that keep slow or hostile clients
//! from holding the proxy port.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const EVENT: (&str, &str) = ("x-webhook-event", "invoice.created");

/// Every metric SPEC section 7 names.
const SPEC_METRICS: &[&str] = &[
    "hooksign_deliveries_total",
    "hooksign_upstream_duration_seconds",
    "hooksign_proxy_requests_in_flight",
    "hooksign_store_reloads_total",
    "hooksign_store_last_reload_success",
    "hooksign_store_endpoints",
    "hooksign_secret_rotations_total",
    "hooksign_egress_blocked_total",
    "hooksign_admin_requests_total",
    "hooksign_build_info",
];

/// A TLS upstream, one endpoint on it, and hooksign in-process with `configure` applied to a
/// config that trusts the upstream's CA.
async fn setup(
    configure: impl FnOnce(ConfigSpec) -> ConfigSpec,
    options: UpstreamOptions,
) -> (Pki, Upstream, EndpointSpec, TestServer) {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, options).await;
    let endpoint = EndpointSpec::new(upstream.url("/hooks/in?token=abc"));
    let config = configure(ConfigSpec::new(Some(&pki)));
    let server = TestServer::start(&config, &store_toml(&[&endpoint])).await;
    (pki, upstream, endpoint, server)
}

/// Reads from `stream` until EOF, an error, or `limit`; what arrived and whether the peer
/// closed (EOF or reset) within the limit.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (seen, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (seen, true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// The text of `/metrics` on `admin`.
async fn scrape(server: &TestServer) -> String {
    let reply = server.admin_get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.text()
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|out| out.status.success())
}

// === metrics ===

#[tokio::test]
async fn metrics_after_real_traffic_are_complete_lint_clean_and_leak_nothing() {
    let (_pki, upstream, endpoint, server) = setup(|c| c, UpstreamOptions::default()).await;
    let id = endpoint.uuid.as_str();

    let ok = server
        .deliver(&[("x-webhook-id", id), EVENT], "{\"n\":1}")
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(upstream.requests().len(), 1);
    let unknown = uuid::Uuid::new_v4().to_string();
    let refused = server
        .deliver(&[("x-webhook-id", unknown.as_str())], "{}")
        .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    assert_eq!(server.admin_get("/healthz").await.status, StatusCode::OK);
    let raw_path = format!("/no/such/{unknown}");
    assert_eq!(
        server.admin_get(&raw_path).await.status,
        StatusCode::NOT_FOUND
    );
    scrape(&server).await;
    let text = scrape(&server).await;

    for name in SPEC_METRICS {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing from /metrics:\n{text}"
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    for line in [
        "hooksign_deliveries_total{outcome=\"success\"} 1",
        "hooksign_deliveries_total{outcome=\"unknown_webhook\"} 1",
        "hooksign_upstream_duration_seconds_count{outcome=\"success\"} 1",
        "hooksign_proxy_requests_in_flight 0",
        "hooksign_store_endpoints 1",
        "hooksign_store_last_reload_success 1",
        "hooksign_admin_requests_total{route=\"/healthz\",status=\"200\"} 1",
        "hooksign_admin_requests_total{route=\"/metrics\",status=\"200\"} 1",
        "hooksign_admin_requests_total{route=\"unmatched\",status=\"404\"} 1",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    let buckets = text
        .lines()
        .filter(|l| l.starts_with("hooksign_upstream_duration_seconds_bucket"))
        .collect::<Vec<_>>();
    assert!(buckets.first().is_some_and(|l| l.contains("le=\"0.001\"")));
    assert!(buckets.iter().any(|l| l.contains("le=\"30\"")));

    // Bounded labels: no uuid, secret, URL or raw path anywhere in the exposition.
    let port = upstream.addr.port().to_string();
    for leak in [
        id,
        unknown.as_str(),
        endpoint.secret.as_str(),
        "whsec_",
        "localhost",
        port.as_str(),
        "/hooks/in",
        "token=abc",
        raw_path.as_str(),
    ] {
        assert!(!text.contains(leak), "{leak:?} appears in /metrics");
    }

    if on_path("promtool") {
        let path = server.dir.path().join("metrics.txt");
        std::fs::write(&path, &text).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("promtool check metrics < {}", path.display()))
            .output()
            .unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "promtool check metrics: {report}"
        );
    } else {
        println!("skipped: promtool not on PATH (Debian package `prometheus`)");
    }
}

// === slow and hostile clients ===

#[tokio::test]
async fn slowloris_headers_are_cut_after_header_read_timeout() {
    let server = TestServer::start(
        &ConfigSpec::new(None).set("proxy", "header_read_timeout = \"500ms\""),
        "",
    )
    .await;
    let mut stream = TcpStream::connect(server.proxy).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Webhook-")
        .await
        .unwrap();
    let (seen, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&seen);
    assert!(
        closed || text.starts_with("HTTP/1.1 408"),
        "a half-sent head held the connection for {elapsed:?}: {text:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}, expected about 500 ms"
    );
    assert!(
        seen.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text:?}"
    );
}

#[tokio::test]
async fn a_stalled_body_gets_408_body_read_timeout() {
    let (_pki, upstream, endpoint, server) = setup(
        |c| c.set("proxy", "body_read_timeout = \"500ms\""),
        UpstreamOptions::default(),
    )
    .await;
    let mut stream = TcpStream::connect(server.proxy).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Webhook-Id: {}\r\nContent-Length: 100\r\n\r\n0123456789",
        endpoint.uuid
    );
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.unwrap();
    let (seen, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 408"), "{text:?}");
    assert!(
        text.contains("x-hooksign-error: body_read_timeout"),
        "{text:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
        "answered after {elapsed:?}"
    );
    assert!(
        upstream.requests().is_empty(),
        "a partial body was forwarded"
    );
    assert!(scrape(&server)
        .await
        .contains("hooksign_deliveries_total{outcome=\"body_read_timeout\"} 1"));
}

#[tokio::test]
async fn max_connections_caps_concurrent_clients() {
    let server = TestServer::start(
        &ConfigSpec::new(None)
            .set("proxy", "max_connections = 2")
            .set("proxy", "header_read_timeout = \"10s\""),
        "",
    )
    .await;
    let request = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n";
    let idle_a = TcpStream::connect(server.proxy).await.unwrap();
    let mut idle_b = TcpStream::connect(server.proxy).await.unwrap();
    // Let the accept loop take both permits.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut third = TcpStream::connect(server.proxy).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(700), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a third connection was served past max_connections = 2: {early:?}"
    );

    drop(idle_a);
    let n = tokio::time::timeout(Duration::from_secs(3), third.read(&mut buf))
        .await
        .expect("the third connection is served once one closes")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 400"), "{text:?}");
    assert!(text.contains("missing_webhook_id"), "{text:?}");

    // The connection still held is alive and served too.
    idle_b.write_all(request).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(3), idle_b.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 400"));
    assert_eq!(server.admin_get("/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_100_kib_header_is_refused_and_the_port_keeps_serving() {
    let server = TestServer::start(&ConfigSpec::new(None), "").await;
    let mut stream = TcpStream::connect(server.proxy).await.unwrap();
    let huge = "a".repeat(100 * 1024);
    let head =
        format!("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {huge}\r\nContent-Length: 0\r\n\r\n");
    // The server may close while the head is still being written.
    let _ = stream.write_all(head.as_bytes()).await;
    let (seen, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.starts_with("HTTP/1.1 431") || (seen.is_empty() && closed),
        "a 100 KiB header was not refused: {text:?} (closed: {closed})"
    );
    assert!(closed, "the connection stayed open after an oversized head");

    let reply = server.deliver(&[], "").await;
    assert_eq!(reply.hooksign_error(), Some("missing_webhook_id"));
}

// === the real binary: logs and signals ===

fn binary_config(pki: &Pki) -> ConfigSpec {
    ConfigSpec::new(Some(pki))
}

/// Waits up to 5 s for the upstream to have received `n` requests.
async fn wait_for_requests(upstream: &Upstream, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.requests().len() < n {
        assert!(
            Instant::now() < deadline,
            "the upstream never got request {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether a TCP connect to `addr` is refused within 3 s (the listener is gone).
async fn refused_soon(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_hold_no_secret_or_body() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/hooks/in?token=querytoken"));
    let mut binary = TestBinary::start_with(
        &binary_config(&pki).set("log", "format = \"json\""),
        &store_toml(&[&endpoint]),
        BinaryOptions { rust_log: "debug" },
    );
    let id = endpoint.uuid.as_str();
    let body = "{\"marker\":\"body-marker-6f1d\"}";
    let ok = send_to(binary.proxy, &[("x-webhook-id", id), EVENT], body)
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let refused = send_to(
        binary.proxy,
        &[("x-webhook-id", id), ("x-webhook-event", "other.event")],
        body,
    )
    .await
    .unwrap();
    assert_eq!(refused.hooksign_error(), Some("event_not_subscribed"));
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(Duration::from_secs(10)), Some(0));

    let stderr = binary.stderr();
    let mut lines = Vec::new();
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("stderr line is not JSON ({err}): {line:?}"));
        assert!(value.is_object(), "{line}");
        lines.push(value);
    }
    for leak in [endpoint.secret.as_str(), "body-marker-6f1d", "querytoken"] {
        assert!(!stderr.contains(leak), "{leak:?} appears in the logs");
    }
    let delivered = lines
        .iter()
        .find(|l| l["message"] == "delivered")
        .unwrap_or_else(|| panic!("no delivered line in:\n{stderr}"));
    assert_eq!(delivered["level"], "DEBUG");
    assert_eq!(delivered["endpoint"], id);
    assert_eq!(delivered["status"], 200);
    assert!(delivered["duration_ms"].is_u64());
    let refusal = lines
        .iter()
        .find(|l| l["message"] == "delivery refused")
        .unwrap_or_else(|| panic!("no refusal line in:\n{stderr}"));
    assert_eq!(refusal["level"], "WARN");
    assert_eq!(refusal["endpoint"], id);
    assert_eq!(refusal["status"], 422);
    assert_eq!(refusal["code"], "event_not_subscribed");
    assert!(refusal["duration_ms"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_delivery_finish_then_exits_0() {
    let pki = Pki::new();
    let upstream = Upstream::start(
        &pki,
        UpstreamOptions {
            delay: Duration::from_millis(1500),
            ..UpstreamOptions::default()
        },
    )
    .await;
    let endpoint = EndpointSpec::new(upstream.url("/in"));
    let mut binary = TestBinary::start(&binary_config(&pki), &store_toml(&[&endpoint]));
    let (proxy, admin) = (binary.proxy, binary.admin);
    let uuid = endpoint.uuid.clone();
    let delivery = tokio::spawn(async move {
        send_to(proxy, &[("x-webhook-id", uuid.as_str()), EVENT], "{}").await
    });
    wait_for_requests(&upstream, 1).await;
    let signalled = Instant::now();
    binary.signal("TERM");

    assert!(refused_soon(proxy).await, "the proxy port still accepts");
    assert!(refused_soon(admin).await, "the admin port still accepts");
    let reply = delivery
        .await
        .unwrap()
        .expect("the in-flight delivery completes");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.hooksign_error(), None);
    assert_eq!(binary.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_grace_remaining_deliveries_are_cut_and_counted() {
    let pki = Pki::new();
    let upstream = Upstream::start(
        &pki,
        UpstreamOptions {
            delay: Duration::from_secs(3),
            ..UpstreamOptions::default()
        },
    )
    .await;
    let endpoint = EndpointSpec::new(upstream.url("/in"));
    let mut binary = TestBinary::start_with(
        &binary_config(&pki).set("server", "shutdown_grace = \"300ms\""),
        &store_toml(&[&endpoint]),
        BinaryOptions { rust_log: "info" },
    );
    let proxy = binary.proxy;
    let uuid = endpoint.uuid.clone();
    let delivery = tokio::spawn(async move {
        send_to(proxy, &[("x-webhook-id", uuid.as_str()), EVENT], "{}").await
    });
    wait_for_requests(&upstream, 1).await;
    let signalled = Instant::now();
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(Duration::from_secs(5)), Some(0));
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "exit took {took:?} with a 300 ms grace"
    );
    assert!(
        delivery.await.unwrap().is_err(),
        "the cut delivery got a response"
    );
    let stderr = binary.stderr();
    let warning = stderr
        .lines()
        .find(|l| l.contains("shutdown grace elapsed") && l.contains("proxy"))
        .unwrap_or_else(|| panic!("no grace warning in:\n{stderr}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("cut=1"), "{warning}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_0_without_waiting_on_idle_connections() {
    let mut binary = TestBinary::start_with(
        &ConfigSpec::new(None).set("server", "shutdown_grace = \"20s\""),
        "",
        BinaryOptions { rust_log: "info" },
    );
    // One keep-alive connection that has served a request, one that never sent a byte.
    let mut used = TcpStream::connect(binary.proxy).await.unwrap();
    used.write_all(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), used.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("missing_webhook_id"));
    let _silent = TcpStream::connect(binary.proxy).await.unwrap();
    let _admin_silent = TcpStream::connect(binary.admin).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    binary.signal("INT");
    let signalled = Instant::now();
    let status = binary.wait_exit(Duration::from_secs(10));
    assert_eq!(status, Some(0), "stderr:\n{}", binary.stderr());
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "idle connections held the drain for {:?}:\n{}",
        signalled.elapsed(),
        binary.stderr()
    );
}

#[test]
fn a_signal_right_after_the_ready_line_is_handled() {
    // The ready line promises that signals are handled: a SIGTERM or SIGINT sent the moment it
    // appears must drain and exit 0, not kill the process with the default action.
    for (round, signal) in ["TERM", "INT"].iter().cycle().take(10).enumerate() {
        let mut binary = TestBinary::start(&ConfigSpec::new(None), "");
        binary.signal(signal);
        assert_eq!(
            binary.wait_exit(Duration::from_secs(10)),
            Some(0),
            "round {round}: SIG{signal} right after ready"
        );
    }
}
