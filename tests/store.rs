//! The store's write path under failure (the in-process server and the real binary, real files):
//! a client that goes away mid-rotation, `kill -9` in a loop of rotations with idempotency keys,
//! idempotent replays and refusals, upstream connections that survive store changes, an emptied
//! or replaced store directory, a full disk, and the store not loaded at start-up.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::*;
use tokio::io::AsyncWriteExt;

const HOOKS: &str = "/api/v1/webhooks";

/// The admin API called as ops for `COMPANY`, with an `Idempotency-Key` when given.
async fn keyed(
    admin: std::net::SocketAddr,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let authorization = format!("Bearer {OPS_TOKEN}");
    let mut headers = vec![
        ("authorization", authorization.as_str()),
        ("x-company", COMPANY),
    ];
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    call(admin, method, path, &headers, body).await
}

/// `secret` of every endpoint in the store file at `path`, by uuid.
fn secrets_on_disk(path: &std::path::Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap();
    let value: toml::Value = toml::from_str(&text).unwrap();
    value["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["uuid"].as_str().unwrap().to_owned(),
                w["secret"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn secret_in_service(server: &TestServer, uuid: &str) -> String {
    server
        .state
        .store
        .snapshot()
        .get(&uuid.parse().unwrap())
        .unwrap()
        .secret
        .expose()
        .to_owned()
}

/// A store of `count` storno endpoints (to make a rotation's file write slow).
fn large_store(count: usize, url: &str) -> (String, Vec<EndpointSpec>) {
    let specs: Vec<EndpointSpec> = (0..count).map(|_| EndpointSpec::new(url)).collect();
    let refs: Vec<&EndpointSpec> = specs.iter().collect();
    (store_toml(&refs), specs)
}

#[tokio::test]
async fn a_client_that_leaves_mid_rotation_leaves_one_secret_and_its_key_replays_it() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let (store, specs) = large_store(5_000, &upstream.url("/hook"));
    let server = TestServer::start(&ConfigSpec::new(Some(&pki)).with_tokens(), &store).await;
    let uuid = specs[2_500].uuid.clone();
    let before = specs[2_500].secret.clone();
    let path = format!("{HOOKS}/{uuid}/regenerate-secret");

    // The whole request, then the client is gone before any answer.
    let mut socket = tokio::net::TcpStream::connect(server.admin).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {OPS_TOKEN}\r\n\
         x-company: {COMPANY}\r\nidempotency-key: cut-1\r\ncontent-length: 0\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    socket.flush().await.unwrap();
    drop(socket);

    // The rotation the client never saw is still made whole: on disk and in service together.
    let store_path = server.dir.path().join("webhooks.toml");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let on_disk = secrets_on_disk(&store_path)[&uuid].clone();
        if on_disk != before {
            assert_eq!(
                on_disk,
                secret_in_service(&server, &uuid),
                "disk and memory disagree"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the cut rotation was never made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let in_service = secret_in_service(&server, &uuid);

    // The retry with the same key is told the secret that is in service, and rotates nothing.
    let retry = keyed(server.admin, Method::POST, &path, Some("cut-1"), None).await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.text());
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(retry.json()["secret"], in_service.as_str());
    assert_eq!(secret_in_service(&server, &uuid), in_service);
    assert_eq!(secrets_on_disk(&store_path)[&uuid], in_service);
    let got = keyed(
        server.admin,
        Method::GET,
        &format!("{HOOKS}/{uuid}"),
        None,
        None,
    )
    .await;
    assert_eq!(got.json()["uuid"], uuid.as_str());

    // Deliveries are signed with it.
    let delivered = server.deliver(&[("x-webhook-id", &uuid)], "{}").await;
    assert_eq!(delivered.status, StatusCode::OK, "{}", delivered.text());
    let seen = upstream.requests().pop().unwrap();
    assert_eq!(
        seen.headers["x-storno-signature"],
        reference_hmac_hex(in_service.as_bytes(), b"{}")
    );
}

#[tokio::test]
async fn idempotency_keys_replay_creates_and_refuse_another_request() {
    let server = TestServer::start(&ConfigSpec::new(None).with_tokens(), "").await;
    let body = json!({"url": "https://127.0.0.1:9/a", "events": ["invoice.created"]});
    let first = keyed(
        server.admin,
        Method::POST,
        HOOKS,
        Some("create-1"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = keyed(
        server.admin,
        Method::POST,
        HOOKS,
        Some("create-1"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.json(), first.json(), "the same endpoint and secret");
    assert_eq!(server.state.store.snapshot().len(), 1, "created once");

    let other = keyed(
        server.admin,
        Method::POST,
        HOOKS,
        Some("create-1"),
        Some(json!({"url": "https://127.0.0.1:9/b", "events": ["invoice.created"]})),
    )
    .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.json()["error"]["code"], "idempotency_key_reused");
    assert_eq!(server.state.store.snapshot().len(), 1);

    // Without a key, or with another, the same body creates another endpoint.
    let fresh = keyed(
        server.admin,
        Method::POST,
        HOOKS,
        Some("create-2"),
        Some(body),
    )
    .await;
    assert_eq!(fresh.status, StatusCode::CREATED);
    assert_ne!(fresh.json()["uuid"], first.json()["uuid"]);

    // A key that is no visible ASCII is refused.
    let bad = keyed(server.admin, Method::POST, HOOKS, Some("a b"), None).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // The key is in the store file with the write, and survives a restart of the store.
    let text = std::fs::read_to_string(server.dir.path().join("webhooks.toml")).unwrap();
    assert!(text.contains("[[idempotency]]"), "{text}");
    assert!(text.contains("key = \"create-1\""), "{text}");
}

#[test]
fn a_crash_loop_of_keyed_rotations_leaves_no_secret_that_no_client_holds() {
    let specs: Vec<EndpointSpec> = (0..3)
        .map(|_| EndpointSpec::new("https://hooks.example.com/x"))
        .collect();
    let refs: Vec<&EndpointSpec> = specs.iter().collect();
    let config = ConfigSpec::new(None).with_tokens();
    let mut binary = TestBinary::start(&config, &store_toml(&refs));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The secret each client last received, by endpoint.
    let mut held: HashMap<String, String> = specs
        .iter()
        .map(|s| (s.uuid.clone(), s.secret.clone()))
        .collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..30 {
        let uuid = specs[round % specs.len()].uuid.clone();
        let key = format!("round-{round}");
        let path = format!("{HOOKS}/{uuid}/regenerate-secret");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = Duration::from_micros(seed % 40_000);
        let admin = binary.admin;
        let answered = runtime.block_on(async {
            let call = keyed(admin, Method::POST, &path, Some(&key), None);
            tokio::time::timeout(kill_after, call).await.ok()
        });
        binary.kill9();
        binary.restart();
        let reply = match answered {
            Some(reply) => reply,
            // Outcome unknown: retry with the same key.
            None => runtime.block_on(keyed(binary.admin, Method::POST, &path, Some(&key), None)),
        };
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "round {round}: {}",
            reply.text()
        );
        held.insert(uuid, reply.json()["secret"].as_str().unwrap().to_owned());
    }
    binary.kill9();
    binary.restart();
    let on_disk = secrets_on_disk(&binary.store_path());
    for (uuid, secret) in &held {
        assert_eq!(
            on_disk.get(uuid),
            Some(secret),
            "endpoint {uuid} signs with a secret no client was given"
        );
    }
}

#[tokio::test]
async fn one_upstream_connection_serves_deliveries_across_store_changes() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let a = EndpointSpec::new(upstream.url("/a"));
    let b = EndpointSpec::new(upstream.url("/b"));
    let other = Upstream::start(&pki, UpstreamOptions::default()).await;
    let c = EndpointSpec::new(other.url("/c"));
    let server = TestServer::start(
        &ConfigSpec::new(Some(&pki)).with_tokens(),
        &store_toml(&[&a, &b]),
    )
    .await;
    for i in 0..20 {
        let delivered = server.deliver(&[("x-webhook-id", &a.uuid)], "{}").await;
        assert_eq!(delivered.status, StatusCode::OK, "{}", delivered.text());
        let write = keyed(
            server.admin,
            Method::PATCH,
            &format!("{HOOKS}/{}", b.uuid),
            None,
            Some(json!({"description": format!("write {i}")})),
        )
        .await;
        assert_eq!(write.status, StatusCode::OK, "{}", write.text());
        if i == 10 {
            // A hand edit, reloaded: endpoint C added, A and B as they are.
            let path = server.dir.path().join("webhooks.toml");
            let mut text = std::fs::read_to_string(&path).unwrap();
            text.push('\n');
            text.push_str(&c.toml());
            std::fs::write(&path, text).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while server
                .state
                .store
                .snapshot()
                .get(&c.uuid.parse().unwrap())
                .is_none()
            {
                assert!(Instant::now() < deadline, "the edit was not reloaded");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert_eq!(upstream.requests().len(), 20);
    assert_eq!(
        upstream.connections(),
        1,
        "a store change closed endpoint A's pooled connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_follows_a_replaced_directory_and_refuses_an_emptied_file() {
    let root = tempfile::tempdir().unwrap();
    let store_dir = root.path().join("store");
    std::fs::create_dir(&store_dir).unwrap();
    let first = EndpointSpec::new("https://hooks.example.com/1");
    let store_path = store_dir.join("webhooks.toml");
    std::fs::write(&store_path, store_toml(&[&first])).unwrap();
    let config = ConfigSpec::new(None).with_tokens().set(
        "store",
        &format!("path = {:?}", store_path.display().to_string()),
    );
    let server = TestServer::start_in(root, &config, "", None).await;
    let has = |uuid: &str| {
        server
            .state
            .store
            .snapshot()
            .get(&uuid.parse().unwrap())
            .is_some()
    };
    let wait_for = |what: &'static str, check: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let ok = loop {
            if check() {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(ok, "{what}");
    };
    let metric = |name: &str| {
        let text = server.state.metrics.render().unwrap();
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .map(str::to_owned)
    };

    // An empty file would drop every endpoint: refused, the endpoint stays in service.
    std::fs::write(&store_path, "").unwrap();
    wait_for("the empty file was not rejected", &|| {
        metric("hooksign_store_last_reload_success").as_deref() == Some("0")
    });
    assert!(has(&first.uuid));

    // The directory replaced: `mv store store.old; mkdir store`, then a good file.
    let old = store_dir.with_extension("old");
    std::fs::rename(&store_dir, &old).unwrap();
    std::fs::create_dir(&store_dir).unwrap();
    let second = EndpointSpec::new("https://hooks.example.com/2");
    std::fs::write(&store_path, store_toml(&[&second])).unwrap();
    wait_for("the replaced directory's file was not loaded", &|| {
        has(&second.uuid)
    });
    assert!(!has(&first.uuid));
    assert_eq!(
        metric("hooksign_store_last_reload_success").as_deref(),
        Some("1")
    );
    // And it is still followed afterwards.
    let third = EndpointSpec::new("https://hooks.example.com/3");
    std::fs::write(&store_path, store_toml(&[&second, &third])).unwrap();
    wait_for("a later edit was not loaded", &|| has(&third.uuid));
    assert_eq!(metric("hooksign_store_endpoints").as_deref(), Some("2"));

    // Saying so explicitly removes every endpoint.
    std::fs::write(&store_path, "webhooks = []\n").unwrap();
    wait_for("an explicit empty store was not loaded", &|| {
        server.state.store.snapshot().is_empty()
    });
    assert_eq!(metric("hooksign_store_endpoints").as_deref(), Some("0"));
}

#[tokio::test]
async fn the_endpoint_gauge_follows_admin_writes_and_deleting_everything_works() {
    let server = TestServer::start(&ConfigSpec::new(None).with_tokens(), "").await;
    let gauge = || {
        server
            .state
            .metrics
            .render()
            .unwrap()
            .lines()
            .find(|l| l.starts_with("hooksign_store_endpoints "))
            .map(str::to_owned)
    };
    let mut uuids = Vec::new();
    for _ in 0..3 {
        let created = server.create_webhook("https://127.0.0.1:9/x", &["*"]).await;
        uuids.push(created["uuid"].as_str().unwrap().to_owned());
    }
    assert_eq!(gauge().as_deref(), Some("hooksign_store_endpoints 3"));
    for uuid in &uuids {
        let deleted = keyed(
            server.admin,
            Method::DELETE,
            &format!("{HOOKS}/{uuid}"),
            None,
            None,
        )
        .await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    }
    assert_eq!(gauge().as_deref(), Some("hooksign_store_endpoints 0"));
    let text = std::fs::read_to_string(server.dir.path().join("webhooks.toml")).unwrap();
    assert!(text.contains("webhooks = []"), "{text}");
    // What hooksign wrote loads again, as empty.
    let reloaded = server.state.store.reload().await.unwrap();
    assert_eq!(reloaded, 0);
}

/// A tmpfs of `size` mounted at `dir` (root only); unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Self> {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Self(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_answers_507_and_leaves_the_store_byte_identical() {
    let root = tempfile::tempdir().unwrap();
    let store_dir = root.path().join("small");
    std::fs::create_dir(&store_dir).unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&store_dir, "64k") else {
        println!("skipping: cannot mount a tmpfs here (needs root)");
        return;
    };
    // A store of about 40 KiB in 64 KiB: the new copy cannot be written beside it.
    let (text, specs) = large_store(120, "https://hooks.example.com/x");
    let store_path = store_dir.join("webhooks.toml");
    std::fs::write(&store_path, &text).unwrap();
    let before = std::fs::read(&store_path).unwrap();
    let config = ConfigSpec::new(None).with_tokens().set(
        "store",
        &format!("path = {:?}", store_path.display().to_string()),
    );
    let server = TestServer::start_in(root, &config, "", None).await;
    let uuid = &specs[0].uuid;
    let reply = keyed(
        server.admin,
        Method::POST,
        &format!("{HOOKS}/{uuid}/regenerate-secret"),
        Some("full-1"),
        None,
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::INSUFFICIENT_STORAGE,
        "{}",
        reply.text()
    );
    assert_eq!(reply.json()["error"]["code"], "store_write_failed");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing was written"),
        "{}",
        reply.text()
    );
    assert_eq!(
        std::fs::read(&store_path).unwrap(),
        before,
        "the store changed"
    );
    assert_eq!(secret_in_service(&server, uuid), specs[0].secret);
    let leftovers: Vec<_> = std::fs::read_dir(&store_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temp files left behind: {leftovers:?}");
}

#[tokio::test]
async fn deliveries_get_503_store_not_loaded_while_etcd_is_down_at_start() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = ConfigSpec::new(None)
        .set("store", "backend = \"etcd\"")
        .set(
            "store.etcd",
            &format!("endpoints = [\"http://127.0.0.1:{closed}\"]"),
        );
    let server = TestServer::start(&config, "").await;
    let uuid = uuid::Uuid::new_v4().to_string();
    let reply = server.deliver(&[("x-webhook-id", &uuid)], "{}").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_eq!(reply.hooksign_error(), Some("store_not_loaded"));
    assert_eq!(reply.headers["retry-after"], "2");
    let ready = server.admin_get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
}
