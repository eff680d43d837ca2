//! OpenTelemetry traces (issue 21), against a real OTLP/HTTP receiver: `tests/otel/receiver.py`
//! decodes every protobuf export request with PyPI `opentelemetry-proto` and writes the spans
//! (and the raw bytes) to a file the tests read.
//!
//! The receiver needs `HOOKSIGN_OTEL_PYTHON`, the path of a Python with `opentelemetry-proto`
//! (`.ci/run` installs it into `.ci/venv` and sets it). Unset, these tests are skipped with a
//! message, except under CI (`CI` set), where that is a failure. The tests that need no
//! receiver always run.
//!
//! Each tracing test runs the real binary (its own process, so its own global subscriber and
//! exporter).

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::Value;
use support::*;

const APP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_PARENT: &str = "00f067aa0ba902b7";
/// The delivery URL's path and query: they must never reach a span.
const SECRET_PATH: &str = "/hooks/p4th-n0t-f0r-traces";
const SECRET_QUERY: &str = "t0ken=q9ery-n0t-f0r-traces";
const BODY: &str = r#"{"type":"invoice.paid","card":"b0dy-n0t-f0r-traces"}"#;

/// Python with `opentelemetry-proto`, or `None` (test skipped) outside CI.
fn python() -> Option<PathBuf> {
    match std::env::var_os("HOOKSIGN_OTEL_PYTHON") {
        Some(python) => Some(PathBuf::from(python)),
        None if std::env::var_os("CI").is_some() => {
            panic!("HOOKSIGN_OTEL_PYTHON is not set under CI: .ci/run sets it")
        }
        None => {
            println!("otel receiver tests skipped: HOOKSIGN_OTEL_PYTHON is not set (not under CI)");
            None
        }
    }
}

/// The receiver process, killed on drop.
struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start(python: &PathBuf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("exports.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otel/receiver.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(&out)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("receiver did not start: {line:?}"));
        Self {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every export request received so far.
    fn exports(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn spans(&self) -> Vec<Value> {
        self.exports()
            .iter()
            .flat_map(|export| export["spans"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits (20 s at most) until `done` holds for the spans received.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within 20 s; got {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|span| span["name"] == name).collect()
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn event_names(span: &Value) -> Vec<String> {
    span["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["name"].as_str().unwrap().to_owned())
        .collect()
}

fn traced_config(pki: &Pki, endpoint: &str) -> ConfigSpec {
    ConfigSpec::new(Some(pki))
        .set("tracing", &format!("otlp_endpoint = {endpoint:?}"))
        .set("tracing", "export_timeout = \"2s\"")
        .set(
            "tracing",
            "resource_attributes = { \"deployment.environment\" = \"test\" }",
        )
}

async fn metric(admin: SocketAddr, sample: &str) -> f64 {
    let text = call(admin, Method::GET, "/metrics", &[], Default::default())
        .await
        .text();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .map(|value| value.trim().parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_delivery_continues_the_applications_trace_with_its_attributes_and_no_secrets() {
    let Some(python) = python() else { return };
    let receiver = Receiver::start(&python);
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url(&format!("{SECRET_PATH}?{SECRET_QUERY}")));
    let binary = TestBinary::start(
        &traced_config(&pki, &receiver.endpoint()),
        &store_toml(&[&endpoint]),
    );
    let traceparent = format!("00-{APP_TRACE}-{APP_PARENT}-01");
    for _ in 0..2 {
        let reply = call(
            binary.proxy,
            Method::POST,
            "/",
            &[
                ("x-webhook-id", &endpoint.uuid),
                ("traceparent", &traceparent),
                ("tracestate", "vendor=app-internal"),
            ],
            BODY.into(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let admin = call(
        binary.admin,
        Method::GET,
        "/healthz",
        &[("traceparent", &traceparent)],
        Default::default(),
    )
    .await;
    assert_eq!(admin.status, StatusCode::OK);

    let spans = receiver
        .wait_for("two deliveries and an admin span", |spans| {
            named(spans, "delivery").len() == 2
                && named(spans, "upstream").len() == 2
                && !named(spans, "GET /healthz").is_empty()
        })
        .await;

    // The server spans continue the application's trace, as children of its span.
    let deliveries = named(&spans, "delivery");
    for delivery in &deliveries {
        assert_eq!(delivery["trace_id"], APP_TRACE);
        assert_eq!(delivery["parent_span_id"], APP_PARENT);
        assert_eq!(delivery["kind"], 2, "SPAN_KIND_SERVER");
        assert_eq!(attr(delivery, "hooksign.endpoint.id"), &endpoint.uuid[..]);
        assert_eq!(attr(delivery, "hooksign.company.id"), COMPANY);
        assert_eq!(attr(delivery, "hooksign.signing.scheme"), "storno");
        assert_eq!(attr(delivery, "hooksign.outcome"), "success");
        assert_eq!(attr(delivery, "http.response.status_code"), 200);
        assert_eq!(attr(delivery, "http.request.method"), "POST");
        assert_eq!(attr(delivery, "http.request.body.size"), BODY.len());
        assert_eq!(delivery["resource"]["service.name"], "hooksign");
        assert_eq!(delivery["resource"]["deployment.environment"], "test");
    }
    // Each upstream exchange is a client span under its delivery.
    let upstreams = named(&spans, "upstream");
    for upstream_span in &upstreams {
        assert_eq!(upstream_span["trace_id"], APP_TRACE);
        assert_eq!(upstream_span["kind"], 3, "SPAN_KIND_CLIENT");
        assert!(
            deliveries
                .iter()
                .any(|d| d["span_id"] == upstream_span["parent_span_id"]),
            "{upstream_span:#?} is not a child of a delivery span"
        );
        assert_eq!(attr(upstream_span, "url.scheme"), "https");
        assert_eq!(attr(upstream_span, "server.address"), "localhost");
        assert_eq!(attr(upstream_span, "http.response.status_code"), 200);
    }
    // The first opened a connection (DNS, connect, full TLS handshake: an event at the end of
    // each phase; the span ends at the response head); the second reused it.
    let fresh: Vec<_> = upstreams
        .iter()
        .filter(|s| attr(s, "hooksign.connection.reused") == false)
        .collect();
    assert_eq!(fresh.len(), 1, "{upstreams:#?}");
    assert_eq!(attr(fresh[0], "tls.resumed"), false);
    let phases = event_names(fresh[0]);
    for phase in ["dns", "connect", "tls"] {
        assert!(phases.contains(&phase.to_owned()), "{phase} in {phases:?}");
    }
    let reused: Vec<_> = upstreams
        .iter()
        .filter(|s| attr(s, "hooksign.connection.reused") == true)
        .collect();
    assert_eq!(reused.len(), 1);
    assert!(event_names(reused[0]).is_empty());

    // The admin request got a server span in the same trace, named by its route.
    let admin_span = named(&spans, "GET /healthz")[0];
    assert_eq!(admin_span["trace_id"], APP_TRACE);
    assert_eq!(attr(admin_span, "http.route"), "/healthz");
    assert_eq!(attr(admin_span, "http.response.status_code"), 200);

    // No secret, signature, body, path or query anywhere in what was exported, raw bytes
    // included. (The application's `tracestate` is part of its span context, exported with the
    // spans as OpenTelemetry does; it is not forwarded to the customer, below.)
    let received = upstream.requests();
    let signature = received[0].headers["x-storno-signature"]
        .to_str()
        .unwrap()
        .to_owned();
    for export in receiver.exports() {
        let raw = hex::decode(export["raw_hex"].as_str().unwrap()).unwrap();
        let raw = String::from_utf8_lossy(&raw);
        let decoded = export["spans"].to_string();
        for secret in [
            &endpoint.secret[..],
            &signature,
            "p4th-n0t-f0r-traces",
            "q9ery-n0t-f0r-traces",
            "b0dy-n0t-f0r-traces",
            "/hooks",
        ] {
            assert!(!raw.contains(secret), "{secret:?} in an export's bytes");
            assert!(!decoded.contains(secret), "{secret:?} in an exported span");
        }
        assert_eq!(export["path"], "/v1/traces");
    }

    // The customer saw neither the application's trace context nor hooksign's.
    assert_eq!(received.len(), 2);
    for request in &received {
        assert!(request.headers.get("traceparent").is_none());
        assert!(request.headers.get("tracestate").is_none());
    }

    // The delivery's log lines carry its trace id (text format).
    let log = binary.stderr();
    let delivered = log
        .lines()
        .find(|line| line.contains("delivered"))
        .unwrap_or_else(|| panic!("no delivered line in {log}"));
    assert!(
        delivered.contains(&format!("trace_id={APP_TRACE}")),
        "{delivered}"
    );
    assert_eq!(
        metric(binary.admin, "hooksign_trace_spans_dropped_total").await,
        0.0
    );
}

#[tokio::test]
async fn with_propagation_the_customer_gets_hooksigns_span_and_json_logs_carry_the_trace_id() {
    let Some(python) = python() else { return };
    let receiver = Receiver::start(&python);
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/in"));
    let config = traced_config(&pki, &receiver.endpoint())
        .set("tracing", "propagate_to_customers = true")
        .set("log", "format = \"json\"");
    let binary = TestBinary::start(&config, &store_toml(&[&endpoint]));
    let reply = call(
        binary.proxy,
        Method::POST,
        "/",
        &[
            ("x-webhook-id", &endpoint.uuid),
            ("traceparent", &format!("00-{APP_TRACE}-{APP_PARENT}-01")),
        ],
        BODY.into(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let spans = receiver
        .wait_for("the upstream span", |spans| {
            !named(spans, "upstream").is_empty()
        })
        .await;
    let client = named(&spans, "upstream")[0];
    let received = upstream.requests();
    let forwarded = received[0].headers["traceparent"].to_str().unwrap();
    assert_eq!(
        forwarded,
        format!("00-{APP_TRACE}-{}-01", client["span_id"].as_str().unwrap()),
        "the customer's parent is hooksign's client span"
    );

    let log = binary.stderr();
    let delivered: Value = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["message"] == "delivered")
        .unwrap_or_else(|| panic!("no delivered line in {log}"));
    assert_eq!(delivered["span"]["trace_id"], APP_TRACE, "{delivered}");
}

#[tokio::test]
async fn spans_still_queued_at_shutdown_are_exported_before_exit() {
    let Some(python) = python() else { return };
    let receiver = Receiver::start(&python);
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/in"));
    let mut binary = TestBinary::start(
        &traced_config(&pki, &receiver.endpoint()),
        &store_toml(&[&endpoint]),
    );
    let reply = call(
        binary.proxy,
        Method::POST,
        "/",
        &[("x-webhook-id", &endpoint.uuid)],
        BODY.into(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(Duration::from_secs(20)), Some(0));
    // No waiting: whatever was queued went out before the process ended.
    let spans = receiver.spans();
    assert_eq!(named(&spans, "delivery").len(), 1, "{spans:#?}");
    assert_eq!(named(&spans, "upstream").len(), 1, "{spans:#?}");
}

/// A collector that accepts connections and never answers.
async fn stalled_collector() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_down_or_stalled_collector_costs_deliveries_nothing_and_drops_are_counted() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/in"));
    let (stalled, _holder) = stalled_collector().await;
    let down = format!("http://127.0.0.1:{}", free_port());
    for collector in [format!("http://{stalled}"), down] {
        let config = traced_config(&pki, &collector)
            .set("tracing", "max_queue_size = 8")
            .set("tracing", "export_timeout = \"30s\"");
        let binary = TestBinary::start(&config, &store_toml(&[&endpoint]));
        let started = Instant::now();
        for _ in 0..100 {
            let reply = call(
                binary.proxy,
                Method::POST,
                "/",
                &[("x-webhook-id", &endpoint.uuid)],
                BODY.into(),
            )
            .await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{collector}: {}",
                reply.text()
            );
        }
        // Generous: a delivery waiting on the collector would take 30 s.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{collector}: 100 deliveries took {:?}",
            started.elapsed()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric(binary.admin, "hooksign_trace_spans_dropped_total").await == 0.0 {
            assert!(Instant::now() < deadline, "{collector}: no drop counted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn trace_context_is_not_forwarded_by_default_even_with_tracing_off() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/in"));
    let store = store_toml(&[&endpoint]);
    let headers = [
        ("x-webhook-id", &endpoint.uuid[..]),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "vendor=app-internal"),
    ];
    let server = TestServer::start(&ConfigSpec::new(Some(&pki)), &store).await;
    assert_eq!(server.deliver(&headers, BODY).await.status, StatusCode::OK);
    let seen = upstream.requests();
    assert!(seen[0].headers.get("traceparent").is_none());
    assert!(seen[0].headers.get("tracestate").is_none());

    // Propagation chosen, tracing off: the application's own context passes through.
    let config = ConfigSpec::new(Some(&pki)).set("tracing", "propagate_to_customers = true");
    let server = TestServer::start(&config, &store).await;
    assert_eq!(server.deliver(&headers, BODY).await.status, StatusCode::OK);
    let seen = upstream.requests();
    assert_eq!(
        seen[1].headers["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(seen[1].headers["tracestate"], "vendor=app-internal");
}
