//! Hostile customers, measured (issue 16): two long runs that would be flaky as timed tests.
//!
//! 1. **The keep-alive race.** Deliveries spaced 900 to 1100 ms apart (a fixed pseudo-random
//!    sequence) to a server that closes connections idle for 1 s, as Node.js does at 5 s. Run
//!    with the default `pool_idle_timeout` (4 s, above this server's) and with one below it:
//!    the count of 502s under each.
//! 2. **A stalled neighbour.** p50 and p99 of deliveries to a healthy customer, alone and then
//!    while another customer's server accepts every request and never answers (its deliveries
//!    pile up to the bulkheads). The ratio of the two p99s.
//!
//! `cargo bench --bench hostile`; `HOSTILE_RACE_DELIVERIES` (default 120) and
//! `HOSTILE_P99_DELIVERIES` (default 2000) set the run lengths. Loopback only; it stops by itself.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(proxy: &[&str]) -> ConfigSpec {
    let mut config = ConfigSpec::new(None).set("egress", "allow_http = true");
    for line in proxy {
        config = config.set("proxy", line);
    }
    config
}

/// A server answering `200 ok` on keep-alive connections, closing each once idle for 1 s.
async fn closes_idle_after_one_second() -> RawUpstream {
    RawUpstream::start(|mut c| async move {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(1), c.read_request()).await
        {
            if !c
                .write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
            {
                return;
            }
        }
    })
    .await
}

/// Gaps of 900 to 1100 ms, the same sequence every run (a linear congruential generator).
fn gaps(count: usize) -> Vec<Duration> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            Duration::from_millis(900 + (state >> 33) % 201)
        })
        .collect()
}

async fn race(label: &str, proxy: &[&str], count: usize) {
    let upstream = closes_idle_after_one_second().await;
    let endpoint = EndpointSpec::new(upstream.url("/in"));
    let server = TestServer::start(&config(proxy), &store_toml(&[&endpoint])).await;
    let headers = [("x-webhook-id", endpoint.uuid.as_str())];
    let mut bad = 0;
    for gap in gaps(count) {
        tokio::time::sleep(gap).await;
        if server.deliver(&headers, "{}").await.status != StatusCode::OK {
            bad += 1;
        }
    }
    println!(
        "keep-alive race, {label}: {bad} of {count} deliveries failed (502), {} connections",
        upstream.connections()
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn healthy_latencies(server: &TestServer, uuid: &str, count: usize) -> Vec<Duration> {
    let headers = [("x-webhook-id", uuid)];
    let mut took = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let reply = server.deliver(&headers, "{}").await;
        took.push(started.elapsed());
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    took.sort();
    took
}

async fn stalled_neighbour(count: usize) {
    let healthy = RawUpstream::answering("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let stalled = RawUpstream::start(|mut c| async move {
        c.read_request().await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let good = EndpointSpec::new(healthy.url("/in"));
    let slow = EndpointSpec::new(stalled.url("/in"));
    let server = TestServer::start(
        &config(&["upstream_timeout = \"20s\"", "response_timeout = \"20s\""]),
        &store_toml(&[&good, &slow]),
    )
    .await;
    healthy_latencies(&server, &good.uuid, 200).await; // warm-up
    let alone = healthy_latencies(&server, &good.uuid, count).await;

    // 192 application workers keep delivering to the stalled customer meanwhile: more than its
    // bulkheads let through (128), so some are refused at once.
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let server = Arc::new(server);
    let mut workers = Vec::new();
    for _ in 0..192 {
        let (server, stop, refused, uuid) = (
            Arc::clone(&server),
            Arc::clone(&stop),
            Arc::clone(&refused),
            slow.uuid.clone(),
        );
        workers.push(tokio::spawn(async move {
            let headers = [("x-webhook-id", uuid.as_str())];
            while !stop.load(Ordering::Relaxed) {
                let reply = server.deliver(&headers, "{}").await;
                if reply.status == StatusCode::SERVICE_UNAVAILABLE {
                    // As an application should: wait the `Retry-After` (1 s) it was given.
                    refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let beside = healthy_latencies(&server, &good.uuid, count).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.abort();
    }
    let (a50, a99) = (percentile(&alone, 0.5), percentile(&alone, 0.99));
    let (b50, b99) = (percentile(&beside, 0.5), percentile(&beside, 0.99));
    println!(
        "healthy customer, {count} deliveries alone: p50 {a50:?} p99 {a99:?}; beside a stalled one \
         ({} connections held, {} refusals 503): p50 {b50:?} p99 {b99:?}; p99 ratio {:.2}",
        stalled.connections(),
        refused.load(Ordering::Relaxed),
        b99.as_secs_f64() / a99.as_secs_f64()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let races = env_count("HOSTILE_RACE_DELIVERIES", 120);
        let deliveries = env_count("HOSTILE_P99_DELIVERIES", 2000);
        stalled_neighbour(deliveries).await;
        race("pool_idle_timeout 4 s (the default)", &[], races).await;
        race(
            "pool_idle_timeout 700 ms (below the server's 1 s)",
            &["pool_idle_timeout = \"700ms\""],
            races,
        )
        .await;
    });
}
