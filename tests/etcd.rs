//! The etcd store (SPEC section 9) against a real etcd on loopback: replicas on one etcd see
//! every rotation (propagation measured), survive an etcd outage, and resolve concurrent
//! rotations with one winner; `check` and `store import` / `export` talk to it.
//!
//! Each test starts its own `/usr/bin/etcd` (free loopback ports, temp data dir, stopped by PID
//! on drop). Without the binary a test prints a skip line and returns; CI installs it.

#[path = "support/etcd.rs"]
mod etcd_support;
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use etcd_support::Etcd;
use http::{Method, StatusCode};
use support::*;
use uuid::Uuid;

const HOOKS: &str = "/api/v1/webhooks";

/// A replica's config: the etcd store under `prefix`, the test CA trusted, the test tokens.
fn etcd_config(pki: &Pki, etcd: &Etcd, prefix: &str) -> ConfigSpec {
    ConfigSpec::new(Some(pki))
        .with_tokens()
        .set("store", "backend = \"etcd\"")
        .set("store.etcd", &format!("endpoints = [{:?}]", etcd.url()))
        .set("store.etcd", &format!("prefix = {prefix:?}"))
}

async fn replicas(config: &ConfigSpec, n: usize) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for _ in 0..n {
        servers.push(TestServer::start(config, "").await);
    }
    servers
}

/// The secret `server` signs `uuid` with now.
fn secret_of(server: &TestServer, uuid: &Uuid) -> Option<String> {
    server
        .state
        .store
        .snapshot()
        .get(uuid)
        .map(|endpoint| endpoint.secret.expose().to_owned())
}

/// Waits (5 s at most) until every replica signs `uuid` with `secret`; the time it took.
async fn converge(servers: &[TestServer], uuid: &Uuid, secret: &str) -> Duration {
    let started = Instant::now();
    loop {
        if servers
            .iter()
            .all(|s| secret_of(s, uuid).as_deref() == Some(secret))
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "replicas did not converge within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn rotate(server: &TestServer, uuid: &Uuid) -> Reply {
    server
        .api(
            Method::POST,
            &format!("{HOOKS}/{uuid}/regenerate-secret"),
            Some(OPS_TOKEN),
            Some(COMPANY),
            None,
        )
        .await
}

/// Delivers through `server` and checks the upstream saw `secret`'s signature.
async fn assert_signs_with(server: &TestServer, upstream: &Upstream, uuid: &Uuid, secret: &str) {
    let body = format!("{{\"probe\":\"{}\"}}", Uuid::new_v4());
    let reply = server
        .deliver(&[("x-webhook-id", &uuid.to_string())], body.clone())
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = upstream
        .requests()
        .into_iter()
        .find(|r| r.body == body.as_bytes())
        .expect("the upstream received the delivery");
    assert_eq!(
        seen.headers["x-storno-signature"],
        reference_hmac_hex(secret.as_bytes(), body.as_bytes())
    );
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The replica's `/metrics` once `hooksign_store_backend_up` is 1. A replica's own write is
/// swapped in without its watch, so the rotation can be seen while the watch is still in backoff.
async fn metrics_once_up(server: &TestServer) -> String {
    let started = Instant::now();
    loop {
        let metrics = server.admin_get("/metrics").await.text();
        if metric(&metrics, "hooksign_store_backend_up") == Some(1.0) {
            return metrics;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the watch never came back up: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_through_one_replica_reaches_every_replica() {
    let Some(etcd) = Etcd::start("a_rotation_through_one_replica_reaches_every_replica") else {
        return;
    };
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let servers = replicas(&etcd_config(&pki, &etcd, "/propagation/"), 3).await;
    let created = servers[0].create_webhook(&upstream.url("/r"), &["*"]).await;
    let uuid: Uuid = created["uuid"].as_str().unwrap().parse().unwrap();
    converge(&servers, &uuid, created["secret"].as_str().unwrap()).await;

    let (mut times, mut round_trips) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        let sent = Instant::now();
        let reply = rotate(&servers[0], &uuid).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let secret = reply.json()["secret"].as_str().unwrap().to_owned();
        // The replica that answered already signs with it.
        assert_eq!(secret_of(&servers[0], &uuid).as_deref(), Some(&*secret));
        times.push(converge(&servers, &uuid, &secret).await);
        round_trips.push(sent.elapsed());
        for server in &servers {
            assert_signs_with(server, &upstream, &uuid, &secret).await;
        }
    }
    times.sort();
    round_trips.sort();
    let (p50, max) = (times[times.len() / 2], times[times.len() - 1]);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "etcd propagation over {} rotations, 3 replicas: after the response p50 {:.2} ms, max {:.2} ms; \
         from sending the request p50 {:.2} ms, max {:.2} ms",
        times.len(),
        ms(p50),
        ms(max),
        ms(round_trips[round_trips.len() / 2]),
        ms(round_trips[round_trips.len() - 1])
    );
    assert!(max < Duration::from_secs(5), "max propagation {max:?}");

    // The key layout, and no delivery record in etcd after 150 deliveries.
    let mut client = etcd.client().await;
    let stored = client
        .get(format!("/propagation/webhooks/{uuid}"), None)
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(stored.kvs()[0].value()).unwrap();
    assert_eq!(value["uuid"], uuid.to_string());
    assert_eq!(
        value["secret"].as_str(),
        secret_of(&servers[2], &uuid).as_deref()
    );
    assert!(value.get("deliveries_count").is_none(), "{value}");
    assert!(value.get("last_delivery_at").is_none(), "{value}");
    // ... while each replica keeps its own.
    let view = servers[1]
        .api(
            Method::GET,
            &format!("{HOOKS}/{uuid}"),
            Some(OPS_TOKEN),
            Some(COMPANY),
            None,
        )
        .await
        .json();
    assert_eq!(view["deliveriesCount"], 50, "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_keeps_deliveries_signed_and_refuses_writes() {
    let Some(mut etcd) = Etcd::start("an_etcd_outage_keeps_deliveries_signed_and_refuses_writes")
    else {
        return;
    };
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let servers = replicas(&etcd_config(&pki, &etcd, "/outage/"), 2).await;
    let created = servers[0].create_webhook(&upstream.url("/r"), &["*"]).await;
    let uuid: Uuid = created["uuid"].as_str().unwrap().parse().unwrap();
    converge(&servers, &uuid, created["secret"].as_str().unwrap()).await;

    // Deliveries flow through both replicas the whole time.
    let stop = tokio_util::sync::CancellationToken::new();
    let flows: Vec<_> = servers
        .iter()
        .map(|server| {
            let (proxy, stop, id) = (server.proxy, stop.clone(), uuid.to_string());
            tokio::spawn(async move {
                let (mut sent, mut failed) = (0u32, Vec::new());
                while !stop.is_cancelled() && sent < 2000 {
                    let reply = call(
                        proxy,
                        Method::POST,
                        "/",
                        &[("x-webhook-id", &id)],
                        bytes::Bytes::from_static(b"{}"),
                    )
                    .await;
                    sent += 1;
                    if reply.status != StatusCode::OK {
                        failed.push((reply.status, reply.text()));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (sent, failed)
            })
        })
        .collect();

    etcd.stop();
    let refused = rotate(&servers[0], &uuid).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert_eq!(refused.json()["error"]["code"], "store_unavailable");
    for server in &servers {
        assert_eq!(server.admin_get("/readyz").await.status, StatusCode::OK);
    }
    let started = Instant::now();
    while metric(
        &servers[1].admin_get("/metrics").await.text(),
        "hooksign_store_backend_up",
    ) != Some(0.0)
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "backend_up stayed 1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    etcd.restart();
    // Writes succeed again once the replica reconnects; the other replica converges.
    let started = Instant::now();
    let secret = loop {
        let reply = rotate(&servers[1], &uuid).await;
        if reply.status == StatusCode::OK {
            break reply.json()["secret"].as_str().unwrap().to_owned();
        }
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text()
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "etcd writes never resumed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    converge(&servers, &uuid, &secret).await;
    stop.cancel();
    for flow in flows {
        let (sent, failed) = flow.await.unwrap();
        assert!(sent > 10, "only {sent} deliveries were sent");
        assert!(
            failed.is_empty(),
            "{} of {sent} deliveries failed: {:?}",
            failed.len(),
            failed.first()
        );
    }
    for server in &servers {
        assert_signs_with(server, &upstream, &uuid, &secret).await;
        let metrics = metrics_once_up(server).await;
        assert!(
            metric(&metrics, "hooksign_store_reconnects_total").is_some_and(|n| n >= 1.0),
            "{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_through_two_replicas_have_one_winner() {
    let Some(etcd) = Etcd::start("concurrent_rotations_through_two_replicas_have_one_winner")
    else {
        return;
    };
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let servers = replicas(&etcd_config(&pki, &etcd, "/race/"), 2).await;
    let created = servers[0].create_webhook(&upstream.url("/r"), &["*"]).await;
    let uuid: Uuid = created["uuid"].as_str().unwrap().parse().unwrap();
    converge(&servers, &uuid, created["secret"].as_str().unwrap()).await;
    let mut client = etcd.client().await;

    let (mut conflicts, mut serial) = (0, 0);
    for round in 0..30 {
        let (a, b) = tokio::join!(rotate(&servers[0], &uuid), rotate(&servers[1], &uuid));
        let mut winners = Vec::new();
        for reply in [&a, &b] {
            match reply.status {
                StatusCode::OK => winners.push(reply.json()["secret"].as_str().unwrap().to_owned()),
                StatusCode::CONFLICT => {
                    assert_eq!(
                        reply.json()["error"]["code"],
                        "conflict",
                        "{}",
                        reply.text()
                    );
                    conflicts += 1;
                }
                other => panic!("round {round}: {other}: {}", reply.text()),
            }
        }
        assert!(!winners.is_empty(), "round {round}: nobody won");
        if winners.len() == 2 {
            serial += 1; // one committed before the other loaded: both stand, in order
        }
        // Whatever etcd holds is a winner's secret, and every replica converges on it.
        let stored = client
            .get(format!("/race/webhooks/{uuid}"), None)
            .await
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(stored.kvs()[0].value()).unwrap();
        let secret = value["secret"].as_str().unwrap().to_owned();
        assert!(
            winners.contains(&secret),
            "round {round}: etcd holds a loser's secret"
        );
        converge(&servers, &uuid, &secret).await;
    }
    println!("30 concurrent rotation rounds: {conflicts} answered 409 conflict, {serial} ran one after the other");
    assert!(
        conflicts > 0,
        "no round raced; the conflict path was never exercised"
    );
    for server in &servers {
        assert_signs_with(server, &upstream, &uuid, &secret_of(server, &uuid).unwrap()).await;
    }
}

/// etcd with TLS and authentication on, as a production fleet runs it: hooksign verifies the
/// member's certificate against `ca_file`, authenticates, writes and follows; a wrong password or
/// a missing CA is a clear failure that never shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_etcd_is_reached_over_tls_with_credentials() {
    const PASSWORD: &str = "etcd-root-password-7f3a";
    let pki = Pki::new();
    let Some(etcd) = Etcd::start_tls("a_secured_etcd_is_reached_over_tls_with_credentials", &pki)
    else {
        return;
    };
    let tls = || {
        etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(
            std::fs::read(&pki.ca_path).unwrap(),
        ))
    };
    let mut setup = etcd_client::Client::connect(
        [etcd.url()],
        Some(etcd_client::ConnectOptions::new().with_tls(tls())),
    )
    .await
    .unwrap();
    setup.user_add("root", PASSWORD, None).await.unwrap();
    setup.user_grant_role("root", "root").await.unwrap();
    setup.auth_enable().await.unwrap();

    let secured = |password: &str| {
        etcd_config(&pki, &etcd, "/secured/")
            .set("store.etcd", &format!("ca_file = {:?}", pki.ca_path))
            .set("store.etcd", "username = \"root\"")
            .set("store.etcd", &format!("password = {password:?}"))
    };
    let server = TestServer::start(&secured(PASSWORD), "").await;
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let created = server.create_webhook(&upstream.url("/s"), &["*"]).await;
    let uuid: Uuid = created["uuid"].as_str().unwrap().parse().unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_signs_with(&server, &upstream, &uuid, &secret).await;

    // The write is in etcd, readable with the credentials only.
    let key = format!("/secured/webhooks/{uuid}");
    let mut reader = etcd_client::Client::connect(
        [etcd.url()],
        Some(
            etcd_client::ConnectOptions::new()
                .with_tls(tls())
                .with_user("root", PASSWORD),
        ),
    )
    .await
    .unwrap();
    let stored = reader.get(key.as_str(), None).await.unwrap();
    assert_eq!(stored.kvs().len(), 1);
    assert!(stored.kvs()[0].value_str().unwrap().contains(&secret));
    assert!(setup.get(key.as_str(), None).await.is_err(), "auth is on");

    // A rotation made elsewhere reaches the running replica over the authenticated watch.
    let rotated = rotate(&server, &uuid).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text());
    let next = rotated.json()["secret"].as_str().unwrap().to_owned();
    converge(std::slice::from_ref(&server), &uuid, &next).await;

    // `check` with a wrong password, and without the CA: exit 1, the password never shown.
    let dir = tempfile::tempdir().unwrap();
    let wrong = secured("wrong-password-b41c").write(dir.path(), "");
    let (code, stdout, stderr) = run_binary(&["check", "--config", wrong.to_str().unwrap()], None);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(!stdout.contains("wrong-password-b41c") && !stderr.contains("wrong-password-b41c"));
    assert!(stderr.to_lowercase().contains("auth"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let no_ca = etcd_config(&pki, &etcd, "/secured/")
        .set("store.etcd", "username = \"root\"")
        .set("store.etcd", &format!("password = {PASSWORD:?}"))
        .write(dir.path(), "");
    let (code, stdout, stderr) = run_binary(&["check", "--config", no_ca.to_str().unwrap()], None);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));
    // Without `ca_file` the platform's roots are used, and the test CA is not among them.
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_import_and_export_talk_to_etcd() {
    let Some(mut etcd) = Etcd::start("check_import_and_export_talk_to_etcd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigSpec::new(None)
        .set("store", "backend = \"etcd\"")
        .set("store.etcd", &format!("endpoints = [{:?}]", etcd.url()))
        .set("store.etcd", "prefix = \"/cli/\"");
    let endpoints = [
        EndpointSpec::new("https://a.example.com/hooks"),
        EndpointSpec::new("https://b.example.com/hooks"),
    ];
    let store = store_toml(&[&endpoints[0], &endpoints[1]]);
    let config_path = config.write(dir.path(), &store);
    let config_arg = config_path.to_str().unwrap();
    let import_file: PathBuf = dir.path().join("webhooks.toml");

    let (code, _, stderr) = run_binary(
        &[
            "store",
            "import",
            import_file.to_str().unwrap(),
            "--config",
            config_arg,
        ],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("imported 2 endpoint(s)"), "{stderr}");

    let (code, stdout, stderr) = run_binary(&["check", "--config", config_arg], None);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": 2 endpoints"), "{stdout}");

    let exported = dir.path().join("exported.toml");
    let (code, _, stderr) = run_binary(
        &[
            "store",
            "export",
            exported.to_str().unwrap(),
            "--config",
            config_arg,
        ],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&exported).unwrap();
    for endpoint in &endpoints {
        assert!(
            text.contains(&endpoint.uuid) && text.contains(&endpoint.secret),
            "{text}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&exported).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A key that is not a valid endpoint is a problem `check` names.
    let mut client = etcd.client().await;
    let bad = Uuid::new_v4();
    client
        .put(format!("/cli/webhooks/{bad}"), "{\"uuid\": 5}", None)
        .await
        .unwrap();
    let (code, _, stderr) = run_binary(&["check", "--config", config_arg], None);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&bad.to_string()), "{stderr}");

    etcd.stop();
    let (code, _, stderr) = run_binary(&["check", "--config", config_arg], None);
    assert_eq!(code, 1);
    assert!(stderr.contains("unavailable"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_endpoints_load_page_by_page_resync_and_follow_a_rotation() {
    let Some(mut etcd) =
        Etcd::start("twenty_thousand_endpoints_load_page_by_page_resync_and_follow_a_rotation")
    else {
        return;
    };
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    // About 8 MiB of values: twice the 4 MiB a single reply could carry before.
    let endpoints: Vec<EndpointSpec> = (0..20_000)
        .map(|_| EndpointSpec::new(upstream.url("/big")))
        .collect();
    let refs: Vec<&EndpointSpec> = endpoints.iter().collect();
    let config = etcd_config(&pki, &etcd, "/big/");
    let dir = tempfile::tempdir().unwrap();
    let config_path = config.write(dir.path(), &store_toml(&refs));
    let config_arg = config_path.to_str().unwrap();
    let import = dir.path().join("webhooks.toml");
    let (code, _, stderr) = run_binary(
        &[
            "store",
            "import",
            import.to_str().unwrap(),
            "--config",
            config_arg,
        ],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = run_binary(&["check", "--config", config_arg], None);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(": 20000 endpoints"), "{stdout}");

    let servers = replicas(&config, 3).await;
    for server in &servers {
        assert_eq!(server.state.store.snapshot().len(), 20_000);
    }
    let probe: Uuid = endpoints[12_345].uuid.parse().unwrap();

    // The watch is lost; once etcd is back, every replica reads the whole prefix again.
    etcd.stop();
    for server in &servers {
        let started = Instant::now();
        while metric(
            &server.admin_get("/metrics").await.text(),
            "hooksign_store_backend_up",
        ) != Some(0.0)
        {
            assert!(started.elapsed() < Duration::from_secs(60), "up stayed 1");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    etcd.restart();
    let started = Instant::now();
    let secret = loop {
        let reply = rotate(&servers[0], &probe).await;
        if reply.status == StatusCode::OK {
            break reply.json()["secret"].as_str().unwrap().to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "writes never resumed: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let started = Instant::now();
    loop {
        if servers
            .iter()
            .all(|s| secret_of(s, &probe).as_deref() == Some(secret.as_str()))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rotation did not reach every replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for server in &servers {
        let metrics = metrics_once_up(server).await;
        assert_eq!(metric(&metrics, "hooksign_store_endpoints"), Some(20_000.0));
        assert_signs_with(server, &upstream, &probe, &secret).await;
    }
}

#[test]
fn check_names_a_refusal_by_etcd_as_such_not_as_unreachable() {
    let Some(etcd) = Etcd::start("check_names_a_refusal_by_etcd_as_such_not_as_unreachable") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A 1 MiB message limit, and one value larger than that in the prefix.
    let config = ConfigSpec::new(None)
        .set("store", "backend = \"etcd\"")
        .set("store.etcd", &format!("endpoints = [{:?}]", etcd.url()))
        .set("store.etcd", "prefix = \"/huge/\"")
        .set("store.etcd", "max_message_bytes = 1048576");
    let config_path = config.write(dir.path(), "");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = etcd.client().await;
        client
            .put(
                format!("/huge/webhooks/{}", Uuid::new_v4()),
                vec![b'x'; 1_400_000],
                None,
            )
            .await
            .unwrap();
    });
    let (code, stdout, stderr) =
        run_binary(&["check", "--config", config_path.to_str().unwrap()], None);
    assert_ne!(code, 0, "{stdout}");
    let said = format!("{stdout}{stderr}");
    assert!(said.contains("refused the read"), "{said}");
    assert!(!said.contains("unavailable"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_events_about_other_endpoints_keep_the_pooled_connection() {
    let Some(etcd) = Etcd::start("etcd_events_about_other_endpoints_keep_the_pooled_connection")
    else {
        return;
    };
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let other = Upstream::start(&pki, UpstreamOptions::default()).await;
    let servers = replicas(&etcd_config(&pki, &etcd, "/pool/"), 2).await;
    let a = servers[0].create_webhook(&upstream.url("/a"), &["*"]).await;
    let b = servers[0].create_webhook(&other.url("/b"), &["*"]).await;
    let (a, b): (Uuid, Uuid) = (
        a["uuid"].as_str().unwrap().parse().unwrap(),
        b["uuid"].as_str().unwrap().parse().unwrap(),
    );
    converge(&servers, &a, &secret_of(&servers[0], &a).unwrap()).await;
    for _ in 0..20 {
        let reply = servers[1]
            .deliver(&[("x-webhook-id", &a.to_string())], "{}")
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        // A rotation of B through the other replica reaches this one as an etcd event.
        let rotated = rotate(&servers[0], &b).await;
        assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text());
        let secret = rotated.json()["secret"].as_str().unwrap().to_owned();
        converge(&servers, &b, &secret).await;
    }
    assert_eq!(upstream.requests().len(), 20);
    assert_eq!(
        upstream.connections(),
        1,
        "an etcd event about B closed A's pooled connection"
    );
}
