//! Hostile and broken customers (issue 16): real misbehaving upstreams on raw TCP sockets on
//! 127.0.0.1, each bounded in time. No assertion is about speed: each states what the
//! application sees and what hooksign records.

mod support;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use support::*;

/// hooksign in front of `upstream_url`, with `[proxy]` lines added.
async fn hooksign(upstream_url: &str, proxy: &[&str]) -> (EndpointSpec, TestServer) {
    let endpoint = EndpointSpec::new(upstream_url);
    let server = TestServer::start(&config(proxy), &store_toml(&[&endpoint])).await;
    (endpoint, server)
}

fn config(proxy: &[&str]) -> ConfigSpec {
    let mut config = ConfigSpec::new(None).set("egress", "allow_http = true");
    for line in proxy {
        config = config.set("proxy", line);
    }
    config
}

fn id(endpoint: &EndpointSpec) -> [(&str, &str); 1] {
    [("x-webhook-id", endpoint.uuid.as_str())]
}

fn assert_refused(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.hooksign_error(), Some(code), "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], code);
}

fn last_outcome(server: &TestServer, endpoint: &EndpointSpec) -> Option<&'static str> {
    let uuid = endpoint.uuid.parse().unwrap();
    let snapshot = server.state.store.snapshot();
    snapshot
        .get(&uuid)
        .and_then(|e| e.stats.last_outcome())
        .map(|o| o.as_str())
}

/// Waits (bounded) until `sample` reads `value`: the outcome of a cut body is counted when
/// hyper drops the body, a moment after the application saw the cut.
async fn eventually(server: &TestServer, sample: &str, value: f64) {
    for _ in 0..100 {
        if server.metric(sample).await == value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.metric(sample).await, value, "{sample}");
}

#[tokio::test]
async fn a_body_that_stalls_after_the_headers_is_cut_and_recorded_failed() {
    let upstream = RawUpstream::start(|mut c| async move {
        c.read_request().await;
        c.write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
            .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let (endpoint, server) =
        hooksign(&upstream.url("/in"), &["response_idle_timeout = \"300ms\""]).await;
    let (status, _, body) = deliver_streamed(server.proxy, &id(&endpoint), "{}").await;
    assert_eq!(status, StatusCode::OK, "the headers were passed on");
    assert!(
        body.is_err(),
        "a cut body must not read as complete: {body:?}"
    );
    eventually(
        &server,
        "hooksign_deliveries_total{outcome=\"upstream_body_timeout\"}",
        1.0,
    )
    .await;
    assert_eq!(
        server
            .metric("hooksign_deliveries_total{outcome=\"success\"}")
            .await,
        0.0
    );
    assert_eq!(
        server.metric("hooksign_proxy_requests_in_flight").await,
        0.0
    );
    assert_eq!(last_outcome(&server, &endpoint), Some("failed"));
    assert_eq!(
        server
            .metric("hooksign_upstream_duration_seconds_count{outcome=\"upstream_body_timeout\"}")
            .await,
        1.0,
        "the histogram records failures too"
    );
}

#[tokio::test]
async fn headers_then_nothing_is_answered_504_upstream_body_timeout() {
    let upstream = RawUpstream::start(|mut c| async move {
        c.read_request().await;
        c.write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
            .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let (endpoint, server) =
        hooksign(&upstream.url("/in"), &["response_idle_timeout = \"300ms\""]).await;
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_refused(&reply, StatusCode::GATEWAY_TIMEOUT, "upstream_body_timeout");
    assert_eq!(last_outcome(&server, &endpoint), Some("failed"));
    assert_eq!(
        server.metric("hooksign_proxy_requests_in_flight").await,
        0.0
    );
}

#[tokio::test]
async fn a_chunked_body_that_stalls_ends_in_error_not_in_a_last_chunk() {
    let upstream = RawUpstream::start(|mut c| async move {
        c.read_request().await;
        c.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let (endpoint, server) =
        hooksign(&upstream.url("/in"), &["response_idle_timeout = \"300ms\""]).await;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nX-Webhook-Id: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        endpoint.uuid
    );
    let (seen, _) = raw_exchange(server.proxy, request.as_bytes(), Duration::from_secs(10)).await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("hello"), "{seen}");
    assert!(
        !seen.ends_with("0\r\n\r\n"),
        "the chunked body must not end cleanly: {seen:?}"
    );
}

#[tokio::test]
async fn a_dripping_body_is_cut_at_the_total_deadline() {
    let upstream = RawUpstream::start(|mut c| async move {
        c.read_request().await;
        c.write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            .await;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if !c.write("x").await {
                return;
            }
        }
    })
    .await;
    let (endpoint, server) = hooksign(
        &upstream.url("/in"),
        &[
            "upstream_timeout = \"500ms\"",
            "response_timeout = \"1s\"",
            "response_idle_timeout = \"5s\"",
        ],
    )
    .await;
    let (status, _, body) = deliver_streamed(server.proxy, &id(&endpoint), "{}").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_err(), "{body:?}");
    eventually(
        &server,
        "hooksign_deliveries_total{outcome=\"upstream_body_timeout\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn an_upstream_that_closes_mid_body_is_a_failed_delivery() {
    let upstream = RawUpstream::start(|mut c| async move {
        c.read_request().await;
        c.write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            .await;
        // Dropped: the connection closes 93 bytes short.
    })
    .await;
    let (endpoint, server) = hooksign(&upstream.url("/in"), &[]).await;
    let (status, _, body) = deliver_streamed(server.proxy, &id(&endpoint), "{}").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_err(), "{body:?}");
    eventually(
        &server,
        "hooksign_deliveries_total{outcome=\"upstream_body_failed\"}",
        1.0,
    )
    .await;
    assert_eq!(last_outcome(&server, &endpoint), Some("failed"));
}

#[tokio::test]
async fn interim_1xx_responses_are_skipped_and_an_unrequested_101_is_an_upstream_failure() {
    let interim = RawUpstream::answering(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let (endpoint, server) = hooksign(&interim.url("/in"), &[]).await;
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "ok");

    let switching = RawUpstream::answering(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    )
    .await;
    let (endpoint, server) = hooksign(&switching.url("/in"), &[]).await;
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_refused(&reply, StatusCode::BAD_GATEWAY, "upstream_protocol");
}

#[tokio::test]
async fn an_oversized_or_malformed_upstream_head_is_an_upstream_failure() {
    let huge = RawUpstream::start(|mut c| async move {
        c.read_request().await;
        let filler = "a".repeat(200 * 1024);
        c.write(format!(
            "HTTP/1.1 200 OK\r\nX-Filler: {filler}\r\nContent-Length: 2\r\n\r\nok"
        ))
        .await;
    })
    .await;
    let (endpoint, server) = hooksign(&huge.url("/in"), &[]).await;
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_refused(&reply, StatusCode::BAD_GATEWAY, "upstream_protocol");

    let garbage = RawUpstream::answering("HTTP/1.1 2OO OK\r\n\r\n").await;
    let (endpoint, server) = hooksign(&garbage.url("/in"), &[]).await;
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_refused(&reply, StatusCode::BAD_GATEWAY, "upstream_protocol");
}

#[tokio::test]
async fn a_malformed_first_chunk_is_an_upstream_failure_and_a_later_one_cuts_the_response() {
    let first = RawUpstream::answering(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let (endpoint, server) = hooksign(&first.url("/in"), &[]).await;
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_refused(&reply, StatusCode::BAD_GATEWAY, "upstream_body_failed");

    let later = RawUpstream::answering(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await;
    let (endpoint, server) = hooksign(&later.url("/in"), &[]).await;
    let (status, _, body) = deliver_streamed(server.proxy, &id(&endpoint), "{}").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_err(), "{body:?}");
    eventually(
        &server,
        "hooksign_deliveries_total{outcome=\"upstream_body_failed\"}",
        1.0,
    )
    .await;
    assert_eq!(last_outcome(&server, &endpoint), Some("failed"));
}

#[tokio::test]
async fn response_bodies_over_max_response_bytes_are_refused_or_cut() {
    let declared =
        RawUpstream::answering("HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n01234567890123456789")
            .await;
    let (endpoint, server) = hooksign(&declared.url("/in"), &["max_response_bytes = 10"]).await;
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_refused(
        &reply,
        StatusCode::BAD_GATEWAY,
        "upstream_response_too_large",
    );

    let streamed = RawUpstream::answering(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n01234567\r\n8\r\n01234567\r\n0\r\n\r\n",
    )
    .await;
    let (endpoint, server) = hooksign(&streamed.url("/in"), &["max_response_bytes = 10"]).await;
    let (status, _, body) = deliver_streamed(server.proxy, &id(&endpoint), "{}").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_err(), "{body:?}");
    eventually(
        &server,
        "hooksign_deliveries_total{outcome=\"upstream_response_too_large\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn an_upstream_that_accepts_and_never_answers_times_out() {
    let upstream = RawUpstream::start(|c| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(c);
    })
    .await;
    let (endpoint, server) =
        hooksign(&upstream.url("/in"), &["upstream_timeout = \"300ms\""]).await;
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_refused(&reply, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    assert_eq!(
        server
            .metric("hooksign_upstream_duration_seconds_count{outcome=\"upstream_timeout\"}")
            .await,
        1.0
    );
    assert_eq!(last_outcome(&server, &endpoint), Some("failed"));
}

#[tokio::test]
async fn an_upstream_that_refuses_connections_is_unreachable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (endpoint, server) = hooksign(&format!("http://127.0.0.1:{port}/in"), &[]).await;
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_refused(&reply, StatusCode::BAD_GATEWAY, "upstream_unreachable");
}

/// The keep-alive race: a server that closes connections idle for 1 s, deliveries spaced
/// around that second. With `pool_idle_timeout` below the server's, the pool never hands out a
/// connection the server may be closing; the checkout checks the age, not only the reaper.
#[tokio::test]
async fn no_502_from_a_server_closing_idle_connections_after_one_second() {
    let upstream = RawUpstream::start(|mut c| async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(1), c.read_request()).await {
                Ok(Some(_)) => {
                    if !c
                        .write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                    {
                        return;
                    }
                }
                _ => return, // idle for 1 s (or closed): close
            }
        }
    })
    .await;
    let (endpoint, server) =
        hooksign(&upstream.url("/in"), &["pool_idle_timeout = \"700ms\""]).await;
    let gaps = [0, 300, 950, 1000, 1050, 650, 990, 1010, 100, 980];
    for (i, gap) in gaps.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(*gap)).await;
        let reply = server.deliver(&id(&endpoint), "{}").await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "delivery {i}: {}",
            reply.text()
        );
    }
    assert_eq!(upstream.requests().len(), gaps.len(), "each sent once");
    assert!(
        upstream.connections() < gaps.len(),
        "connections idle for less than the timeout are still reused"
    );
}

/// The same server advertising its timeout (`Keep-Alive: timeout=1`, as Node.js does): with
/// the default `pool_idle_timeout` (4 s), the advertised one decides.
#[tokio::test]
async fn no_502_from_a_server_advertising_a_one_second_keep_alive() {
    let upstream = RawUpstream::start(|mut c| async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(1), c.read_request()).await {
                Ok(Some(_)) => {
                    let response =
                        "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nContent-Length: 2\r\n\r\nok";
                    if !c.write(response).await {
                        return;
                    }
                }
                _ => return,
            }
        }
    })
    .await;
    let (endpoint, server) = hooksign(&upstream.url("/in"), &[]).await;
    let gaps = [0, 200, 980, 1000, 1020, 300, 990];
    for (i, gap) in gaps.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(*gap)).await;
        let reply = server.deliver(&id(&endpoint), "{}").await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "delivery {i}: {}",
            reply.text()
        );
    }
    assert_eq!(upstream.requests().len(), gaps.len());
    assert!(upstream.connections() < gaps.len());
    // The advertised second (less a margin) is the connection's idle limit, not the 4 s.
    let now = std::time::Instant::now();
    let pool = &server.state.upstream;
    assert_eq!(pool.drop_stale(now), 1, "a fresh idle connection is kept");
    assert_eq!(pool.drop_stale(now + Duration::from_millis(600)), 0);
}

#[tokio::test]
async fn the_most_recently_used_idle_connection_is_reused_first() {
    let upstream = RawUpstream::start(|mut c| async move {
        let port = c.stream.peer_addr().unwrap().port();
        while c.read_request().await.is_some() {
            let body = port.to_string();
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if !c.write(response).await {
                return;
            }
        }
    })
    .await;
    let (endpoint, server) = hooksign(&upstream.url("/in"), &[]).await;
    // Two connections at once, so two are idle afterwards.
    let headers = id(&endpoint);
    let (a, b) = tokio::join!(
        server.deliver(&headers, "{}"),
        server.deliver(&headers, "{}")
    );
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    let first = server.deliver(&id(&endpoint), "{}").await.text();
    for _ in 0..5 {
        assert_eq!(
            server.deliver(&id(&endpoint), "{}").await.text(),
            first,
            "the connection just released is the one taken again"
        );
    }
}

#[tokio::test]
async fn a_stalled_customer_is_capped_and_does_not_hold_a_healthy_one() {
    let stalled = RawUpstream::start(|c| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(c);
    })
    .await;
    let healthy = RawUpstream::answering("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let slow = EndpointSpec::new(stalled.url("/in"));
    let good = EndpointSpec::new(healthy.url("/in"));
    let server = TestServer::start(
        &config(&[
            "max_in_flight_per_endpoint = 2",
            "upstream_timeout = \"5s\"",
        ]),
        &store_toml(&[&slow, &good]),
    )
    .await;
    let server = Arc::new(server);
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let server = Arc::clone(&server);
        let uuid = slow.uuid.clone();
        stuck.push(tokio::spawn(async move {
            server
                .deliver(&[("x-webhook-id", uuid.as_str())], "{}")
                .await
        }));
    }
    // Wait until both are in flight upstream.
    for _ in 0..100 {
        if stalled.connections() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stalled.connections(), 2);
    let reply = server.deliver(&id(&slow), "{}").await;
    assert_refused(
        &reply,
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream_saturated",
    );
    assert_eq!(reply.headers["retry-after"], "1");
    assert_eq!(
        server
            .metric("hooksign_bulkhead_refusals_total{limit=\"endpoint_in_flight\"}")
            .await,
        1.0
    );
    for _ in 0..20 {
        let reply = server.deliver(&id(&good), "{}").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    for task in stuck {
        assert_refused(
            &task.await.unwrap(),
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
        );
    }
}

#[tokio::test]
async fn the_origin_connection_cap_answers_503_at_once() {
    let upstream = RawUpstream::start(|mut c| async move {
        c.read_request().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await;
    })
    .await;
    let (endpoint, server) =
        hooksign(&upstream.url("/in"), &["max_connections_per_origin = 1"]).await;
    let headers = id(&endpoint);
    let (a, b) = tokio::join!(server.deliver(&headers, "{}"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.deliver(&headers, "{}").await
    });
    assert_eq!(a.status, StatusCode::OK);
    assert_refused(&b, StatusCode::SERVICE_UNAVAILABLE, "upstream_saturated");
    assert_eq!(b.headers["retry-after"], "1");
    assert_eq!(
        server
            .metric("hooksign_bulkhead_refusals_total{limit=\"origin_connections\"}")
            .await,
        1.0
    );
    let uuid = endpoint.uuid.parse().unwrap();
    assert_eq!(
        server
            .state
            .store
            .snapshot()
            .get(&uuid)
            .unwrap()
            .stats
            .deliveries(),
        1,
        "a 503 of hooksign's own is no delivery record"
    );
}

const DOWN: u8 = 0;
const UP: u8 = 1;

#[tokio::test]
async fn the_breaker_opens_fails_fast_probes_and_closes() {
    let mode = Arc::new(AtomicU8::new(DOWN));
    let upstream = RawUpstream::start({
        let mode = Arc::clone(&mode);
        move |mut c| {
            let mode = Arc::clone(&mode);
            async move {
                if mode.load(Ordering::SeqCst) == DOWN {
                    tokio::time::sleep(Duration::from_secs(30)).await; // accepts, never answers
                    return;
                }
                while c.read_request().await.is_some() {
                    if !c
                        .write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                    {
                        return;
                    }
                }
            }
        }
    })
    .await;
    let (endpoint, server) = hooksign(
        &upstream.url("/in"),
        &[
            "upstream_timeout = \"200ms\"",
            "breaker_failures = 3",
            "breaker_cooldown = \"1s\"",
        ],
    )
    .await;
    for _ in 0..3 {
        let reply = server.deliver(&id(&endpoint), "{}").await;
        assert_refused(&reply, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    }
    let connections = upstream.connections();
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_refused(&reply, StatusCode::SERVICE_UNAVAILABLE, "circuit_open");
    assert_eq!(reply.headers["retry-after"], "1");
    assert_eq!(
        upstream.connections(),
        connections,
        "a fast-fail never dials"
    );
    assert_eq!(
        server
            .metric("hooksign_circuit_transitions_total{state=\"open\"}")
            .await,
        1.0
    );

    // After the cool-down one probe goes; still down, so it opens again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_refused(&reply, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_refused(&reply, StatusCode::SERVICE_UNAVAILABLE, "circuit_open");
    assert_eq!(
        server
            .metric("hooksign_circuit_transitions_total{state=\"open\"}")
            .await,
        2.0
    );

    // Back up: the next probe closes the circuit.
    mode.store(UP, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        let reply = server.deliver(&id(&endpoint), "{}").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(
        server
            .metric("hooksign_circuit_transitions_total{state=\"half_open\"}")
            .await,
        2.0
    );
    assert_eq!(
        server
            .metric("hooksign_circuit_transitions_total{state=\"closed\"}")
            .await,
        1.0
    );
    assert_eq!(
        server
            .metric("hooksign_deliveries_total{outcome=\"circuit_open\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_an_upstream_tls_failure() {
    let upstream = RawUpstream::start(|c| async move {
        tokio::time::sleep(Duration::from_secs(30)).await; // TCP accepted, no ServerHello
        drop(c);
    })
    .await;
    let url = format!("https://127.0.0.1:{}/in", upstream.addr.port());
    let (endpoint, server) = hooksign(&url, &["tls_handshake_timeout = \"300ms\""]).await;
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_refused(&reply, StatusCode::BAD_GATEWAY, "upstream_tls");
}

#[tokio::test]
async fn the_in_flight_gauge_covers_a_delivery_until_its_body_ends() {
    let upstream = RawUpstream::start(|mut c| async move {
        c.read_request().await;
        c.write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
            .await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        c.write("lo worl").await;
    })
    .await;
    let (endpoint, server) = hooksign(&upstream.url("/in"), &[]).await;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nX-Webhook-Id: {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
        endpoint.uuid
    );
    let proxy = server.proxy;
    let exchange = tokio::spawn(async move {
        raw_exchange(proxy, request.as_bytes(), Duration::from_secs(10)).await
    });
    eventually(&server, "hooksign_proxy_requests_in_flight", 1.0).await;
    // Headers and the first bytes are out; the delivery is not over.
    let (seen, _) = exchange.await.unwrap();
    assert!(seen.ends_with("hello worl"), "{seen:?}");
    eventually(&server, "hooksign_proxy_requests_in_flight", 0.0).await;
    assert_eq!(
        server
            .metric("hooksign_deliveries_total{outcome=\"success\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_idle_connection_too_old_to_use_does_not_hold_the_origin_cap() {
    let upstream = RawUpstream::answering("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let (endpoint, server) = hooksign(
        &upstream.url("/in"),
        &[
            "max_connections_per_origin = 1",
            "pool_idle_timeout = \"200ms\"",
        ],
    )
    .await;
    for _ in 0..3 {
        let reply = server.deliver(&id(&endpoint), "{}").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        upstream.connections(),
        3,
        "each idle connection was too old to reuse"
    );
}

#[tokio::test]
async fn idle_connections_are_capped_per_origin_and_in_total() {
    // Each answer takes a moment, so deliveries sent at once overlap.
    let slow = || {
        RawUpstream::start(|mut c| async move {
            while c.read_request().await.is_some() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if !c
                    .write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await
                {
                    return;
                }
            }
        })
    };
    let (a, b) = (slow().await, slow().await);
    let one = EndpointSpec::new(a.url("/in"));
    let two = EndpointSpec::new(b.url("/in"));
    let server = TestServer::start(
        &config(&["pool_max_idle_per_origin = 2", "pool_max_idle = 3"]),
        &store_toml(&[&one, &two]),
    )
    .await;
    // Four deliveries at once need four connections; then at most two stay idle per origin.
    for endpoint in [&one, &two] {
        let headers = id(endpoint);
        let replies = tokio::join!(
            server.deliver(&headers, "{}"),
            server.deliver(&headers, "{}"),
            server.deliver(&headers, "{}"),
            server.deliver(&headers, "{}"),
        );
        for reply in [replies.0, replies.1, replies.2, replies.3] {
            assert_eq!(reply.status, StatusCode::OK);
        }
    }
    assert_eq!(a.connections(), 4);
    assert_eq!(b.connections(), 4);
    assert_eq!(
        server.state.upstream.idle_connections(),
        3,
        "two kept for the first origin, one more in total"
    );
}

#[tokio::test]
async fn a_connect_that_never_completes_is_cut_by_connect_timeout() {
    // A listener that never accepts, its backlog full: the kernel drops further SYNs, so a
    // connect hangs (the loopback stand-in for a blackholed address).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(stream);
        }
    }
    let (endpoint, server) = hooksign(
        &format!("http://{addr}/in"),
        &["connect_timeout = \"300ms\"", "upstream_timeout = \"10s\""],
    )
    .await;
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_refused(&reply, StatusCode::BAD_GATEWAY, "upstream_unreachable");
    drop((listener, fillers));
}

#[tokio::test]
async fn a_request_that_left_is_never_sent_twice() {
    // The first request on a connection is answered; the second is read, then the connection
    // is closed without an answer (the keep-alive race, from the server's side).
    let upstream = RawUpstream::start(|mut c| async move {
        if c.read_request().await.is_none() {
            return;
        }
        c.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await;
        c.read_request().await;
    })
    .await;
    let (endpoint, server) = hooksign(&upstream.url("/in"), &[]).await;
    assert_eq!(
        server.deliver(&id(&endpoint), "{}").await.status,
        StatusCode::OK
    );
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_refused(&reply, StatusCode::BAD_GATEWAY, "upstream_unreachable");
    assert_eq!(
        upstream.requests().len(),
        2,
        "the second delivery went up once"
    );
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn fast_fails_do_not_count_toward_auto_disable() {
    let upstream = RawUpstream::start(|c| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(c);
    })
    .await;
    let (endpoint, server) = hooksign(
        &upstream.url("/in"),
        &[
            "upstream_timeout = \"200ms\"",
            "breaker_failures = 2",
            "breaker_cooldown = \"30s\"",
            "auto_disable_after = 3",
        ],
    )
    .await;
    for _ in 0..2 {
        let reply = server.deliver(&id(&endpoint), "{}").await;
        assert_refused(&reply, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    }
    for _ in 0..4 {
        let reply = server.deliver(&id(&endpoint), "{}").await;
        assert_refused(&reply, StatusCode::SERVICE_UNAVAILABLE, "circuit_open");
    }
    let uuid = endpoint.uuid.parse().unwrap();
    let snapshot = server.state.store.snapshot();
    let stored = snapshot.get(&uuid).unwrap();
    assert_eq!(stored.stats.consecutive_failures(), 2);
    assert_eq!(stored.stats.deliveries(), 2);
    assert_eq!(stored.status, hooksign::store::Status::Active);
}

#[tokio::test]
async fn a_whole_body_is_a_success_counted_once_it_ends() {
    let upstream = RawUpstream::start(|mut c| async move {
        c.read_request().await;
        c.write("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.write("6\r\n world\r\n0\r\n\r\n").await;
    })
    .await;
    let (endpoint, server) = hooksign(&upstream.url("/in"), &[]).await;
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "hello world");
    assert_eq!(reply.hooksign_error(), None);
    eventually(
        &server,
        "hooksign_deliveries_total{outcome=\"success\"}",
        1.0,
    )
    .await;
    assert_eq!(last_outcome(&server, &endpoint), Some("success"));
    assert_eq!(
        server
            .metric("hooksign_upstream_duration_seconds_count{outcome=\"success\"}")
            .await,
        1.0
    );
    assert_eq!(
        server.metric("hooksign_proxy_requests_in_flight").await,
        0.0
    );
}
