//! The egress guard end to end: URL spellings through the real parsing path, DNS rebinding with
//! a scripted resolver, IP literals, ports, schemes, redirects and the blocked-destination
//! metric. Everything listens on loopback; no test reaches beyond it.

mod support;

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hooksign::config::EgressConfig;
use hooksign::egress::{DenyReason, EgressDenied, EgressPolicy, Resolve, SystemResolver};
use hooksign::store::parse_endpoint_url;
use http::StatusCode;
use support::*;

/// A public address that is never dialled in these tests: it only ever answers a check, or sits
/// beside a denied address that gets the whole answer refused.
const PUBLIC: &str = "93.184.216.34";

// === Scripted resolver ===

/// Answers the n-th lookup with `answers[n]` (the last answer repeats), or an error when the
/// answer is `None`; remembers the names asked.
#[derive(Debug)]
struct Scripted {
    answers: Vec<Option<Vec<IpAddr>>>,
    calls: AtomicUsize,
    names: Mutex<Vec<String>>,
}

impl Scripted {
    fn new(answers: &[&[&str]]) -> Arc<Self> {
        Arc::new(Self {
            answers: answers
                .iter()
                .map(|ips| Some(ips.iter().map(|ip| ip.parse().unwrap()).collect()))
                .collect(),
            calls: AtomicUsize::new(0),
            names: Mutex::new(Vec::new()),
        })
    }

    fn failing() -> Arc<Self> {
        Arc::new(Self {
            answers: vec![None],
            calls: AtomicUsize::new(0),
            names: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Resolve for Scripted {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        _port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        self.names.lock().unwrap().push(host.to_owned());
        let answer = self.answers[n.min(self.answers.len() - 1)].clone();
        Box::pin(async move {
            answer.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"))
        })
    }
}

// === helpers ===

fn egress_config() -> EgressConfig {
    EgressConfig {
        allow_http: false,
        allow_private: false,
        allow_cidrs: Vec::new(),
        allow_ports: Vec::new(),
        ca_file: None,
        proxy: None,
    }
}

/// The harness config (loopback allowed, CA trusted) with the guard's defaults restored.
fn guarded(pki: &Pki) -> ConfigSpec {
    ConfigSpec::new(Some(pki)).set("egress", "allow_private = false")
}

fn assert_forbidden(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(reply.hooksign_error(), Some("destination_forbidden"));
    assert_eq!(reply.json()["error"]["code"], "destination_forbidden");
}

/// `hooksign_egress_blocked_total` by reason, read from the admin port's `/metrics`; every label
/// must be one of the closed set.
async fn blocked(server: &TestServer) -> Vec<(String, u64)> {
    let text = server.admin_get("/metrics").await.text();
    let known: Vec<&str> = DenyReason::ALL.iter().map(|r| r.as_label()).collect();
    let mut counts = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("hooksign_egress_blocked_total{") else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").unwrap();
        let reason = labels
            .strip_prefix("reason=\"")
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("unexpected labels in {line:?}"));
        assert!(known.contains(&reason), "unbounded reason label {reason:?}");
        counts.push((reason.to_owned(), value.parse().unwrap()));
    }
    assert_eq!(counts.len(), known.len(), "{text}");
    counts
}

async fn blocked_count(server: &TestServer, reason: &str) -> u64 {
    blocked(server)
        .await
        .into_iter()
        .find(|(r, _)| r == reason)
        .map(|(_, n)| n)
        .unwrap()
}

async fn deliver(server: &TestServer, endpoint: &EndpointSpec) -> Reply {
    server
        .deliver(&[("x-webhook-id", &endpoint.uuid)], "{\"n\":1}")
        .await
}

// === URL spellings ===

#[tokio::test]
async fn odd_spellings_are_judged_by_the_address_they_reach() {
    let policy = EgressPolicy::new(&egress_config(), Arc::new(SystemResolver));
    let cases = [
        ("https://127.1/", "loopback"),
        ("https://2130706433/", "loopback"),
        ("https://0x7f000001/", "loopback"),
        ("https://0177.0.0.1/", "loopback"),
        ("https://127.0.0.1./", "loopback"),
        ("https://127%2E0%2E0%2E1/", "loopback"),
        ("https://[::ffff:127.0.0.1]/", "loopback"),
        ("https://[::ffff:7f00:1]/", "loopback"),
        ("https://[::1]/", "loopback"),
        ("https://[::127.0.0.1]/", "loopback"),
        ("https://[64:ff9b::a9fe:a9fe]/", "link_local"),
        ("https://169.254.169.254/latest/meta-data/", "link_local"),
        ("https://0251.0376.0251.0376/", "link_local"),
        ("https://0/", "unspecified"),
        ("https://[::]/", "unspecified"),
        ("https://10.1.2.3:8443/", "private"),
        ("https://[fd00::1]/", "unique_local"),
        ("https://100.64.0.1/", "cgnat"),
        ("https://localhost/", "loopback"),
        ("http://93.184.216.34/", "scheme"),
    ];
    for (text, reason) in cases {
        let url = parse_endpoint_url(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let denied = policy
            .check_url(&url)
            .await
            .expect_err(&format!("{text} was allowed"));
        assert_eq!(denied.reason().as_label(), reason, "{text}: {denied}");
    }
    // The message names the host given, never what a name resolved to.
    let denied = policy
        .check_url(&parse_endpoint_url("https://localhost/").unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        denied.to_string(),
        "localhost resolves to a loopback address"
    );

    // Userinfo is refused before any address is looked at.
    assert!(parse_endpoint_url("https://8.8.8.8 &@127.0.0.1/").is_err());

    for text in [
        "https://93.184.216.34/hooks",
        "https://[2606:4700:4700::1111]:8443/",
        "https://[::ffff:8.8.8.8]/",
    ] {
        let url = parse_endpoint_url(text).unwrap();
        assert_eq!(policy.check_url(&url).await, Ok(()), "{text}");
    }
}

#[tokio::test]
async fn allow_ports_and_allow_cidrs_apply_to_url_checks() {
    let mut config = egress_config();
    config.allow_ports = vec![443];
    config.allow_cidrs = vec!["10.9.0.0/16".parse().unwrap()];
    let policy = EgressPolicy::new(&config, Arc::new(SystemResolver));
    let check = |text: &'static str| {
        let policy = &policy;
        async move { policy.check_url(&parse_endpoint_url(text).unwrap()).await }
    };
    assert_eq!(check("https://10.9.1.1/").await, Ok(()));
    assert_eq!(
        check("https://10.9.1.1:8443/").await,
        Err(EgressDenied::Port { port: 8443 })
    );
    assert_eq!(
        check("https://10.10.1.1/").await.map_err(|e| e.reason()),
        Err(DenyReason::Private)
    );
}

/// Never answers.
#[derive(Debug)]
struct Hanging;

impl Resolve for Hanging {
    fn resolve<'a>(
        &'a self,
        _host: &'a str,
        _port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn a_resolver_that_never_answers_times_out_as_resolve_failed() {
    let policy = EgressPolicy::new(&egress_config(), Arc::new(Hanging))
        .with_resolve_timeout(std::time::Duration::from_millis(50));
    let url = parse_endpoint_url("https://slow.test.invalid/").unwrap();
    let denied = tokio::time::timeout(std::time::Duration::from_secs(5), policy.check_url(&url))
        .await
        .expect("the resolve timeout bounds the check")
        .unwrap_err();
    assert_eq!(denied.reason(), DenyReason::ResolveFailed, "{denied}");
}

// === deliveries ===

#[tokio::test]
async fn loopback_upstream_is_refused_and_counted() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/hooks"));
    let server = TestServer::start(&guarded(&pki), &store_toml(&[&endpoint])).await;

    for _ in 0..2 {
        assert_forbidden(&deliver(&server, &endpoint).await);
    }
    assert_eq!(upstream.connections(), 0);
    assert_eq!(blocked_count(&server, "loopback").await, 2);
    assert_eq!(blocked_count(&server, "port").await, 0);
}

#[tokio::test]
async fn allow_cidrs_lets_a_listed_address_through() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let allowed = EndpointSpec::new(format!("https://127.0.0.1:{}/in", upstream.addr.port()));
    let other = EndpointSpec::new(format!("https://127.0.0.2:{}/in", upstream.addr.port()));
    let config = guarded(&pki).set("egress", "allow_cidrs = [\"127.0.0.1/32\"]");
    let server = TestServer::start(&config, &store_toml(&[&allowed, &other])).await;

    let reply = deliver(&server, &allowed).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(upstream.connections(), 1);
    assert_forbidden(&deliver(&server, &other).await);
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn ip_literals_are_checked_in_the_connector_without_resolving() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let port = upstream.addr.port();
    let endpoints = [
        EndpointSpec::new(format!("https://[::ffff:127.0.0.1]:{port}/")),
        EndpointSpec::new(format!("https://0x7f000001:{port}/")),
        EndpointSpec::new(format!("https://127.1:{port}/")),
        EndpointSpec::new("https://169.254.169.254/latest/meta-data/"),
    ];
    let resolver = Scripted::new(&[&[PUBLIC]]);
    let store = store_toml(&endpoints.iter().collect::<Vec<_>>());
    let server = TestServer::start_with_resolver(
        &guarded(&pki),
        &store,
        Some(resolver.clone() as Arc<dyn Resolve>),
    )
    .await;

    for endpoint in &endpoints {
        assert_forbidden(&deliver(&server, endpoint).await);
    }
    assert_eq!(upstream.connections(), 0);
    assert_eq!(
        resolver.calls(),
        0,
        "an IP literal was sent to the resolver"
    );
    assert_eq!(blocked_count(&server, "loopback").await, 3);
    assert_eq!(blocked_count(&server, "link_local").await, 1);
}

#[tokio::test]
async fn rebinding_after_the_check_never_reaches_the_new_address() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/hooks"));
    // Public when the endpoint is created, loopback from then on.
    let resolver = Scripted::new(&[&[PUBLIC], &["127.0.0.1"]]);
    let server = TestServer::start_with_resolver(
        &guarded(&pki),
        &store_toml(&[&endpoint]),
        Some(resolver.clone() as Arc<dyn Resolve>),
    )
    .await;

    let url = parse_endpoint_url(&endpoint.url).unwrap();
    assert_eq!(server.state.upstream.egress().check_url(&url).await, Ok(()));
    assert_forbidden(&deliver(&server, &endpoint).await);
    assert_eq!(upstream.connections(), 0);
    assert_eq!(resolver.calls(), 2, "the delivery did not resolve again");
    assert_eq!(*resolver.names.lock().unwrap(), ["localhost", "localhost"]);
    assert_eq!(blocked_count(&server, "loopback").await, 1);
}

#[tokio::test]
async fn an_answer_mixing_public_and_denied_addresses_is_refused_whole() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/hooks"));
    let url = parse_endpoint_url(&endpoint.url).unwrap();
    for answer in [[PUBLIC, "127.0.0.1"], ["127.0.0.1", PUBLIC]] {
        let resolver = Scripted::new(&[&answer]);
        let server = TestServer::start_with_resolver(
            &guarded(&pki),
            &store_toml(&[&endpoint]),
            Some(resolver.clone() as Arc<dyn Resolve>),
        )
        .await;
        let denied = server
            .state
            .upstream
            .egress()
            .check_url(&url)
            .await
            .unwrap_err();
        assert_eq!(denied.reason(), DenyReason::Loopback, "{answer:?}");
        let message = denied.to_string();
        assert!(
            !message.contains("127.0.0.1") && !message.contains(PUBLIC),
            "{message}"
        );
        assert_forbidden(&deliver(&server, &endpoint).await);
        assert_eq!(resolver.calls(), 2);
    }
    assert_eq!(upstream.connections(), 0);
}

#[tokio::test]
async fn the_checked_address_is_dialled_and_the_name_kept_for_tls_and_host() {
    let pki = Pki::new();
    let tls = Upstream::start(&pki, UpstreamOptions::default()).await;
    let plain = Upstream::start(&pki, UpstreamOptions::plain()).await;
    // Names the system cannot resolve: only the scripted answer can lead anywhere.
    let named = EndpointSpec::new(format!("https://hooks.test.invalid:{}/", tls.addr.port()));
    let plain_named =
        EndpointSpec::new(format!("http://hooks.test.invalid:{}/", plain.addr.port()));
    let resolver = Scripted::new(&[&["127.0.0.1"]]);
    let config = guarded(&pki)
        .set("egress", "allow_cidrs = [\"127.0.0.1/32\"]")
        .set("egress", "allow_http = true");
    let server = TestServer::start_with_resolver(
        &config,
        &store_toml(&[&named, &plain_named]),
        Some(resolver.clone() as Arc<dyn Resolve>),
    )
    .await;

    // TLS reached the scripted address and verified the certificate against the URL's name,
    // which the test certificate (localhost, 127.0.0.1) does not carry.
    let reply = deliver(&server, &named).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(reply.hooksign_error(), Some("upstream_tls"));
    assert_eq!(tls.connections(), 1);
    assert!(tls.requests().is_empty());

    let reply = deliver(&server, &plain_named).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = plain.requests().pop().unwrap();
    assert_eq!(
        seen.headers["host"],
        format!("hooks.test.invalid:{}", plain.addr.port())
    );
}

#[tokio::test]
async fn names_that_do_not_resolve_are_refused() {
    let pki = Pki::new();
    let endpoint = EndpointSpec::new("https://nowhere.test.invalid/");
    let empty = EndpointSpec::new("https://empty.test.invalid/");
    for (resolver, endpoint) in [
        (Scripted::failing(), &endpoint),
        (Scripted::new(&[&[]]), &empty),
    ] {
        let server = TestServer::start_with_resolver(
            &guarded(&pki),
            &store_toml(&[endpoint]),
            Some(resolver as Arc<dyn Resolve>),
        )
        .await;
        assert_forbidden(&deliver(&server, endpoint).await);
        assert_eq!(blocked_count(&server, "resolve_failed").await, 1);
    }
}

#[tokio::test]
async fn ports_outside_allow_ports_are_refused() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/"));
    // Loopback allowed: the port alone decides.
    let config = ConfigSpec::new(Some(&pki)).set("egress", "allow_ports = [443]");
    let server = TestServer::start(&config, &store_toml(&[&endpoint])).await;

    assert_forbidden(&deliver(&server, &endpoint).await);
    assert_eq!(upstream.connections(), 0);
    assert_eq!(blocked_count(&server, "port").await, 1);

    let config = ConfigSpec::new(Some(&pki)).set(
        "egress",
        &format!("allow_ports = [443, {}]", upstream.addr.port()),
    );
    let server = TestServer::start(&config, &store_toml(&[&endpoint])).await;
    assert_eq!(deliver(&server, &endpoint).await.status, StatusCode::OK);
}

#[tokio::test]
async fn plain_http_refusals_count_as_scheme() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::plain()).await;
    let endpoint = EndpointSpec::new(upstream.url("/"));
    let server = TestServer::start(&ConfigSpec::new(Some(&pki)), &store_toml(&[&endpoint])).await;
    assert_forbidden(&deliver(&server, &endpoint).await);
    assert_eq!(upstream.connections(), 0);
    assert_eq!(blocked_count(&server, "scheme").await, 1);
}

#[tokio::test]
async fn redirects_go_back_to_the_application_unfollowed() {
    let pki = Pki::new();
    let target = "http://169.254.169.254/latest/meta-data/";
    let upstream = Upstream::start(
        &pki,
        UpstreamOptions {
            status: StatusCode::FOUND,
            headers: vec![("location", target)],
            ..Default::default()
        },
    )
    .await;
    let endpoint = EndpointSpec::new(upstream.url("/"));
    let server = TestServer::start(&ConfigSpec::new(Some(&pki)), &store_toml(&[&endpoint])).await;

    let reply = deliver(&server, &endpoint).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(reply.headers["location"], target);
    assert_eq!(reply.hooksign_error(), None);
    assert_eq!(upstream.requests().len(), 1);
    assert!(blocked(&server).await.iter().all(|(_, n)| *n == 0));
}

// === Happy Eyeballs and the resolver ===

/// A listener on `[::1]:port` whose accept queue is full and never drained: a connect to it
/// gets no answer (its SYN is dropped), like a dead address on the internet. The returned
/// values must live as long as the address is to stay dead.
async fn dead_ipv6_address(port: u16) -> (tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v6().unwrap();
    socket
        .bind((std::net::Ipv6Addr::LOCALHOST, port).into())
        .expect("[::1] has the upstream's port free");
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    // Fill the queue until a connect stalls (one or two connections on Linux).
    for _ in 0..8 {
        let attempt = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        match attempt {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(err)) => panic!("filling the accept queue: {err}"),
            Err(_) => return (listener, fillers),
        }
    }
    panic!("the accept queue of a backlog-0 listener never filled");
}

#[tokio::test]
async fn a_dead_ipv6_address_costs_a_fraction_of_a_second_not_the_connect_timeout() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let port = upstream.addr.port();
    let _dead = dead_ipv6_address(port).await;
    // The name's first answer is the dead IPv6 address; the upstream listens on IPv4 only.
    let resolver = Scripted::new(&[&["::1", "127.0.0.1"]]);
    let endpoint = EndpointSpec::new(upstream.url("/in"));
    let config = ConfigSpec::new(Some(&pki)).set("proxy", "connect_timeout = \"30s\"");
    let server = TestServer::start_with_resolver(
        &config,
        &store_toml(&[&endpoint]),
        Some(resolver as Arc<dyn Resolve>),
    )
    .await;

    let started = std::time::Instant::now();
    let reply = deliver(&server, &endpoint).await;
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // 250 ms of stagger in principle; anything far below the 30 s connect timeout proves it.
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    assert_eq!(upstream.connections(), 1);

    // The second delivery reuses the pooled connection; the metrics tell them apart.
    let reply = deliver(&server, &endpoint).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(upstream.connections(), 1);
    let new = "hooksign_upstream_requests_total{connection=\"new\"}";
    let reused = "hooksign_upstream_requests_total{connection=\"reused\"}";
    assert_eq!(server.metric(new).await, 1.0);
    assert_eq!(server.metric(reused).await, 1.0);
    assert_eq!(
        server.metric("hooksign_upstream_connections_open").await,
        1.0
    );
    assert_eq!(
        server.metric("hooksign_upstream_connections_idle").await,
        1.0
    );
    for phase in ["dns", "connect", "tls"] {
        let count = format!("hooksign_upstream_connect_phase_seconds_count{{phase=\"{phase}\"}}");
        assert_eq!(server.metric(&count).await, 1.0, "{phase}");
    }
}

#[tokio::test]
async fn names_from_a_hosts_file_resolve_and_every_address_is_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 loop.hooks.test\n169.254.169.254 metadata.hooks.test\n",
    )
    .unwrap();
    let resolver = hooksign::egress::dns::DnsResolver::with_hosts_file(&hosts).unwrap();
    let policy = EgressPolicy::new(&egress_config(), Arc::new(resolver));
    for (text, reason) in [
        ("https://loop.hooks.test/", "loopback"),
        ("https://metadata.hooks.test/", "link_local"),
    ] {
        let url = parse_endpoint_url(text).unwrap();
        let denied = policy.check_url(&url).await.unwrap_err();
        assert_eq!(denied.reason().as_label(), reason, "{text}: {denied}");
    }
}
