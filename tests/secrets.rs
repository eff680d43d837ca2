//! Secrets at rest (issue 20), against real files, a real etcd and the real binary: no issued
//! secret is in the store's bytes; a ciphertext moved between endpoints is refused naming the
//! record; `store rekey` survives `kill -9` at random moments; the keyring reloads live;
//! `require_encryption` refuses plaintext; ten previous keys sign at once and an eleventh is
//! refused; the audit log's chain verifies and a hand edit is caught.

#[path = "support/etcd.rs"]
mod etcd_support;
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use etcd_support::Etcd;
use hmac::{Hmac, Mac};
use hooksign::secret::Secret;
use hooksign::signing::{standard_webhooks, Delivery, Scheme};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;
use support::*;
use uuid::Uuid;

const HOOKS: &str = "/api/v1/webhooks";

/// A keyring file's text: `primary` and the named keys (each a `keyring new` line).
fn keyring_text(primary: &str, lines: &[&str]) -> String {
    format!("primary = {primary:?}\n[keys]\n{}\n", lines.join("\n"))
}

fn key_line(name: &str) -> String {
    hooksign::keyring::new_key_line(name).unwrap()
}

/// The random part of a secret (after `whsec_` / `whsk_`): what must not be in the store.
fn random_part(secret: &str) -> &str {
    secret.split_once('_').map_or(secret, |(_, rest)| rest)
}

/// Fails if any of `secrets` (or its random part, or that part's hex/base64 decoding's other
/// spelling) appears in `bytes`.
fn assert_no_secret_in(bytes: &[u8], secrets: &[String], what: &str) {
    let text = String::from_utf8_lossy(bytes);
    for secret in secrets {
        let part = random_part(secret);
        assert!(
            !text.contains(part),
            "a secret ({}…) is in plaintext in {what}",
            &part[..6]
        );
        // A base64 key's bytes in another alphabet (url-safe) would be a leak too.
        if let Ok(raw) = STANDARD.decode(part) {
            let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
            assert!(!text.contains(&url), "a secret's bytes are in {what}");
            assert!(
                !text.contains(&hex::encode(&raw)),
                "a secret's bytes are in {what}"
            );
        }
    }
}

async fn rotate(server: &TestServer, uuid: &str, body: Option<Value>) -> Reply {
    server
        .api(
            Method::POST,
            &format!("{HOOKS}/{uuid}/regenerate-secret"),
            Some(OPS_TOKEN),
            Some(COMPANY),
            body,
        )
        .await
}

/// A config with the test tokens, a keyring file `keyring.toml` beside it and the test CA.
fn encrypted_config(pki: &Pki) -> ConfigSpec {
    ConfigSpec::new(Some(pki))
        .with_tokens()
        .set("store", "keyring = \"keyring.toml\"")
        .set("admin", "rate_limit_per_minute = 100000")
}

/// Starts a server in a temp dir holding `keyring` as `keyring.toml`.
async fn start_with_keyring(config: &ConfigSpec, keyring: &str, store: &str) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keyring.toml"), keyring).unwrap();
    TestServer::start_in(dir, config, store, None).await
}

/// Creates endpoints of every scheme (one with a caller-supplied secret and an idempotency key,
/// so its answer, which shows the secret, is recorded in the store too), rotates them with and
/// without windows; every secret issued, and the endpoints with their current secret.
async fn issue_secrets(
    server: &TestServer,
    upstream: &Upstream,
) -> (Vec<String>, Vec<(String, String)>) {
    let mut secrets = Vec::new();
    let mut uuids = Vec::new();
    for scheme in Scheme::ALL {
        let reply = server
            .post_webhook(
                json!({"url": upstream.url("/in"), "events": ["*"], "scheme": scheme.as_str()}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        let created = reply.json();
        secrets.push(created["secret"].as_str().unwrap().to_owned());
        uuids.push(created["uuid"].as_str().unwrap().to_owned());
    }
    let supplied = Scheme::StandardWebhooks.generate_secret().unwrap();
    let reply = call(
        server.admin,
        Method::POST,
        HOOKS,
        &[
            ("authorization", &format!("Bearer {OPS_TOKEN}")),
            ("x-company", COMPANY),
            ("content-type", "application/json"),
            ("idempotency-key", "create-supplied"),
        ],
        json!({"url": upstream.url("/in"), "events": ["*"], "scheme": "standard-webhooks",
               "secret": supplied.expose()})
        .to_string()
        .into(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.json()["secret"], supplied.expose());
    secrets.push(supplied.expose().to_owned());
    uuids.push(reply.json()["uuid"].as_str().unwrap().to_owned());
    // A client certificate (mutual TLS) on the first endpoint: its key is sealed too. Each
    // base64 line of the key counts as a secret that must appear nowhere.
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client_cert = rcgen::CertificateParams::new(vec!["hooksign-client".to_owned()])
        .unwrap()
        .self_signed(&client_key)
        .unwrap();
    let key_pem = client_key.serialize_pem();
    let reply = server
        .api(
            Method::PUT,
            &format!("{HOOKS}/{}/client-certificate", uuids[0]),
            Some(OPS_TOKEN),
            Some(COMPANY),
            Some(json!({"certificate": client_cert.pem(), "privateKey": key_pem})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    secrets.extend(
        key_pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .map(str::to_owned),
    );
    for (index, uuid) in uuids.iter().enumerate() {
        let windowed = !matches!(index, 0 | 3); // storno and github allow no window
        for round in 0..3 {
            let body = (windowed && round > 0).then(|| json!({"previousSecretExpiresIn": 3600}));
            let reply = rotate(server, uuid, body).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            secrets.push(reply.json()["secret"].as_str().unwrap().to_owned());
        }
    }
    let mut current: Vec<(String, String)> = Vec::new();
    let supplied = Scheme::Stripe.generate_secret().unwrap();
    let reply = rotate(
        server,
        &uuids[2],
        Some(json!({"secret": supplied.expose(), "previousSecretExpiresIn": 60})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["secret"], supplied.expose());
    secrets.push(supplied.expose().to_owned());
    let snapshot = server.state.store.snapshot();
    for uuid in uuids {
        let endpoint = snapshot.get(&uuid.parse().unwrap()).unwrap();
        current.push((uuid, endpoint.secret.expose().to_owned()));
    }
    (secrets, current)
}

/// Delivers to a storno endpoint through `server` and checks the signature is `secret`'s.
async fn assert_signs_with(server: &TestServer, upstream: &Upstream, uuid: &str, secret: &str) {
    let body = format!("{{\"probe\":\"{}\"}}", Uuid::new_v4());
    let reply = server
        .deliver(&[("x-webhook-id", uuid)], body.clone())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_store_holds_no_issued_secret_in_plaintext() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let keyring = keyring_text("k1", &[&key_line("k1")]);
    let server = start_with_keyring(&encrypted_config(&pki), &keyring, "").await;
    let (secrets, uuids) = issue_secrets(&server, &upstream).await;
    assert!(secrets.len() >= 24);

    let raw = std::fs::read(server.dir.path().join("webhooks.toml")).unwrap();
    assert_no_secret_in(&raw, &secrets, "the store file");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("secret = \"enc1:k1:"), "{text}");
    assert!(text.contains("previous_secrets = [\"enc1:k1:"), "{text}");
    assert!(text.contains("[[idempotency]]"), "{text}");
    // Deliveries are signed with the storno endpoint's last issued secret.
    let (storno, secret) = &uuids[0];
    assert!(secrets.contains(secret));
    assert_signs_with(&server, &upstream, storno, secret).await;

    // A fresh process reads it back: every endpoint, same secrets.
    let config = Config::load(&server.dir.path().join("config.toml")).unwrap();
    let sealer = hooksign::state::sealer_for(&config).unwrap();
    let reread = hooksign::store::file::FileBackend::new(server.dir.path().join("webhooks.toml"))
        .with_sealer(sealer)
        .load_file()
        .unwrap()
        .unwrap();
    assert_eq!(reread.len(), uuids.len());
    for (uuid, secret) in &uuids {
        let endpoint = reread.get(&uuid.parse().unwrap()).unwrap();
        assert_eq!(endpoint.secret.expose(), secret);
    }
    let windows = reread
        .endpoints()
        .map(|endpoint| endpoint.previous_secrets.len())
        .sum::<usize>();
    assert!(
        windows >= 6,
        "the previous secrets of the windows were read back"
    );
}

use hooksign::config::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_values_hold_no_issued_secret_in_plaintext() {
    let Some(etcd) = Etcd::start("etcd_values_hold_no_issued_secret_in_plaintext") else {
        return;
    };
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let config = encrypted_config(&pki)
        .set("store", "backend = \"etcd\"")
        .set("store.etcd", &format!("endpoints = [{:?}]", etcd.url()))
        .set("store.etcd", "prefix = \"/sealed/\"");
    let keyring = keyring_text("k1", &[&key_line("k1")]);
    let server = start_with_keyring(&config, &keyring, "").await;
    let (secrets, uuids) = issue_secrets(&server, &upstream).await;

    let mut client = etcd.client().await;
    let all = client
        .get(
            "/sealed/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert!(
        all.kvs().len() > uuids.len(),
        "endpoints and an idempotency record"
    );
    for kv in all.kvs() {
        assert_no_secret_in(kv.value(), &secrets, &String::from_utf8_lossy(kv.key()));
    }
    let value = client
        .get(format!("/sealed/webhooks/{}", uuids[0].0), None)
        .await
        .unwrap();
    let record: Value = serde_json::from_slice(value.kvs()[0].value()).unwrap();
    assert!(record["secret"].as_str().unwrap().starts_with("enc1:k1:"));

    // A second replica opens every value and signs with the secret in service.
    let replica = start_with_keyring(&config, &keyring, "").await;
    let (storno, secret) = &uuids[0];
    assert_signs_with(&replica, &upstream, storno, secret).await;
    let snapshot = replica.state.store.snapshot();
    assert_eq!(snapshot.len(), uuids.len());
    for (uuid, secret) in &uuids {
        assert_eq!(
            snapshot
                .get(&uuid.parse().unwrap())
                .unwrap()
                .secret
                .expose(),
            secret
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ciphertext_swapped_between_endpoints_is_refused_naming_the_record() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let keyring = keyring_text("k1", &[&key_line("k1")]);
    let server = start_with_keyring(&encrypted_config(&pki), &keyring, "").await;
    let a = server.create_webhook(&upstream.url("/a"), &["*"]).await;
    let b = server.create_webhook(&upstream.url("/b"), &["*"]).await;
    let dir = server.dir.path().to_owned();
    let config = dir.join("config.toml");
    let store = dir.join("webhooks.toml");
    let text = std::fs::read_to_string(&store).unwrap();
    let sealed: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("secret = "))
        .collect();
    assert_eq!(sealed.len(), 2);
    let swapped = text
        .replace(sealed[0], "@A@")
        .replace(sealed[1], sealed[0])
        .replace("@A@", sealed[1]);
    // The live server refuses the edited file and keeps serving the last good snapshot.
    std::fs::write(&store, &swapped).unwrap();
    let (code, _, stderr) = run_binary(&["check", "--config", config.to_str().unwrap()], None);
    assert_eq!(code, 1, "{stderr}");
    for created in [&a, &b] {
        let uuid = created["uuid"].as_str().unwrap();
        assert!(
            stderr.contains(&format!(
                "(endpoint {uuid}) does not decrypt under key \"k1\""
            )),
            "{stderr}"
        );
        assert!(
            !stderr.contains(random_part(created["secret"].as_str().unwrap())),
            "{stderr}"
        );
    }
    assert!(stderr.contains("webhooks[0].secret (line"), "{stderr}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let a_uuid = a["uuid"].as_str().unwrap();
    assert_signs_with(&server, &upstream, a_uuid, a["secret"].as_str().unwrap()).await;

    // etcd: the same swap between two keys' values is refused by `check`, naming the keys.
    let Some(etcd) =
        Etcd::start("a_ciphertext_swapped_between_endpoints_is_refused_naming_the_record")
    else {
        return;
    };
    let etcd_config = encrypted_config(&pki)
        .set("store", "backend = \"etcd\"")
        .set("store.etcd", &format!("endpoints = [{:?}]", etcd.url()))
        .set("store.etcd", "prefix = \"/swap/\"");
    let replica = start_with_keyring(&etcd_config, &keyring, "").await;
    let x = replica.create_webhook(&upstream.url("/x"), &["*"]).await;
    let y = replica.create_webhook(&upstream.url("/y"), &["*"]).await;
    let mut client = etcd.client().await;
    let key = |v: &Value| format!("/swap/webhooks/{}", v["uuid"].as_str().unwrap());
    let mut values = Vec::new();
    for v in [&x, &y] {
        let got = client.get(key(v), None).await.unwrap();
        values.push(serde_json::from_slice::<Value>(got.kvs()[0].value()).unwrap());
    }
    let (sx, sy) = (values[0]["secret"].clone(), values[1]["secret"].clone());
    values[0]["secret"] = sy;
    values[1]["secret"] = sx;
    client
        .put(key(&x), values[0].to_string(), None)
        .await
        .unwrap();
    client
        .put(key(&y), values[1].to_string(), None)
        .await
        .unwrap();
    let etcd_config_path = replica.dir.path().join("config.toml");
    let (code, _, stderr) = run_binary(
        &["check", "--config", etcd_config_path.to_str().unwrap()],
        None,
    );
    assert_eq!(code, 1, "{stderr}");
    for v in [&x, &y] {
        assert!(stderr.contains(&key(v)), "{stderr}");
        assert!(
            stderr.contains("does not decrypt under key \"k1\""),
            "{stderr}"
        );
        assert!(
            !stderr.contains(random_part(v["secret"].as_str().unwrap())),
            "{stderr}"
        );
    }
    // The replica kept each endpoint's last good record.
    let snapshot = replica.state.store.snapshot();
    let kept = snapshot
        .get(&x["uuid"].as_str().unwrap().parse().unwrap())
        .unwrap();
    assert_eq!(kept.secret.expose(), x["secret"].as_str().unwrap());
}

/// Runs `hooksign store rekey` and kills it with SIGKILL after `after` (if still running);
/// whether it had finished on its own.
fn rekey_killed_after(config: &Path, after: Duration) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hooksign"))
        .args(["store", "rekey", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + after;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    false
}

/// How long one whole `store rekey` takes here (the store re-encrypted under the keyring
/// `text` names primary), so the kills below land anywhere in a run, from process start to its
/// last write.
fn time_a_whole_rekey(config: &Path, keyring: &Path, text: &str) -> Duration {
    std::fs::write(keyring, text).unwrap();
    let started = Instant::now();
    assert!(rekey_killed_after(config, Duration::from_secs(60)));
    started.elapsed()
}

fn random_below(limit: u64) -> u64 {
    let bytes = hooksign::secret::random_bytes::<8>().unwrap();
    u64::from_le_bytes(*bytes) % limit
}

/// Creates `n` storno endpoints through `server`; (uuid, acknowledged secret) of each.
async fn create_many(server: &TestServer, upstream: &Upstream, n: usize) -> Vec<(String, String)> {
    let mut made = Vec::with_capacity(n);
    for _ in 0..n {
        let created = server.create_webhook(&upstream.url("/many"), &["*"]).await;
        made.push((
            created["uuid"].as_str().unwrap().to_owned(),
            created["secret"].as_str().unwrap().to_owned(),
        ));
    }
    made
}

/// Every endpoint of `server`'s snapshot decrypted to its acknowledged secret and signs with it
/// (its keyed signer, checked against a reference HMAC), and a few deliveries through the proxy.
async fn assert_every_endpoint_signs(
    server: &TestServer,
    upstream: &Upstream,
    made: &[(String, String)],
) {
    let snapshot = server.state.store.snapshot();
    assert_eq!(snapshot.len(), made.len());
    let header = http::HeaderName::from_static("x-storno-signature");
    for (uuid, secret) in made {
        let endpoint = snapshot
            .get(&uuid.parse().unwrap())
            .expect("every endpoint loaded");
        let body = bytes::Bytes::from(format!("body of {uuid}"));
        let headers =
            endpoint
                .signer
                .sign(&Delivery::now(Scheme::Storno, None), &header, body.clone());
        assert_eq!(
            headers[&header],
            reference_hmac_hex(secret.as_bytes(), &body)
        );
    }
    for (uuid, secret) in made.iter().take(3) {
        assert_signs_with(server, upstream, uuid, secret).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_of_a_file_store_survives_kill_9_at_random_moments() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let (a, b) = (key_line("a"), key_line("b"));
    let config = encrypted_config(&pki);
    let server = start_with_keyring(&config, &keyring_text("a", &[&a]), "").await;
    let made = create_many(&server, &upstream, 150).await;
    // The rest works on a copy of its files, with the server stopped.
    let dir = tempfile::tempdir().unwrap();
    for name in ["config.toml", "keyring.toml", "webhooks.toml"] {
        std::fs::copy(server.dir.path().join(name), dir.path().join(name)).unwrap();
    }
    drop(server);
    let config_path = dir.path().join("config.toml");
    let keyring_path = dir.path().join("keyring.toml");
    let store = dir.path().join("webhooks.toml");
    let check = || run_binary(&["check", "--config", config_path.to_str().unwrap()], None);

    let whole = time_a_whole_rekey(&config_path, &keyring_path, &keyring_text("b", &[&a, &b]));
    let window = (whole.as_micros() as u64) * 5 / 4;
    let (mut finished, mut killed) = (0, 0);
    for round in 0..24 {
        // Each round makes the other key primary, so every round has the whole store to redo.
        let primary = if round % 2 == 0 { "a" } else { "b" };
        std::fs::write(&keyring_path, keyring_text(primary, &[&a, &b])).unwrap();
        if rekey_killed_after(&config_path, Duration::from_micros(random_below(window))) {
            finished += 1;
        } else {
            killed += 1;
        }
        // Whatever the moment, the store is whole and every secret opens.
        let (code, out, err) = check();
        assert_eq!(code, 0, "round {round}: {out}{err}");
        assert!(out.contains("150 endpoints"), "{out}");
    }
    println!(
        "file rekey ({whole:?} a whole run): {killed} rounds killed, {finished} finished first"
    );
    assert!(
        killed > 0,
        "no round was killed: the kill timing is too late"
    );
    // Finish under b, then b alone is enough.
    std::fs::write(&keyring_path, keyring_text("b", &[&a, &b])).unwrap();
    let (code, out, err) = run_binary(
        &["store", "rekey", "--config", config_path.to_str().unwrap()],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rekey: done"), "{out}{err}");
    let text = std::fs::read_to_string(&store).unwrap();
    assert_eq!(text.matches("enc1:b:").count(), 150, "every secret under b");
    assert!(!text.contains("enc1:a:"));
    // The temp files of the killed runs are gone too.
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("hooksign-tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    std::fs::write(&keyring_path, keyring_text("b", &[&b])).unwrap();
    let server = TestServer::start_in(dir, &config, "", None).await;
    assert_every_endpoint_signs(&server, &upstream, &made).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_of_etcd_survives_kill_9_at_random_moments() {
    let Some(etcd) = Etcd::start("rekey_of_etcd_survives_kill_9_at_random_moments") else {
        return;
    };
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let (a, b) = (key_line("a"), key_line("b"));
    let config = encrypted_config(&pki)
        .set("store", "backend = \"etcd\"")
        .set("store.etcd", &format!("endpoints = [{:?}]", etcd.url()))
        .set("store.etcd", "prefix = \"/rekey/\"");
    let server = start_with_keyring(&config, &keyring_text("a", &[&a]), "").await;
    // 300 endpoints: three transactions of at most 128 keys per pass.
    let made = create_many(&server, &upstream, 300).await;
    let dir = server.dir.path().to_owned();
    let config_path = dir.join("config.toml");
    let keyring_path = dir.join("keyring.toml");
    let whole = time_a_whole_rekey(&config_path, &keyring_path, &keyring_text("b", &[&a, &b]));
    let window = (whole.as_micros() as u64) * 5 / 4;
    let (mut finished, mut killed) = (0, 0);
    for round in 0..24 {
        // Each round makes the other key primary, so every round has the whole store to redo.
        let primary = if round % 2 == 0 { "a" } else { "b" };
        std::fs::write(&keyring_path, keyring_text(primary, &[&a, &b])).unwrap();
        if rekey_killed_after(&config_path, Duration::from_micros(random_below(window))) {
            finished += 1;
        } else {
            killed += 1;
        }
        let (code, out, err) =
            run_binary(&["check", "--config", config_path.to_str().unwrap()], None);
        assert_eq!(code, 0, "round {round}: {out}{err}");
        assert!(out.contains("300 endpoints"), "{out}");
    }
    println!(
        "etcd rekey ({whole:?} a whole run): {killed} rounds killed, {finished} finished first"
    );
    assert!(killed > 0, "no round was killed");
    std::fs::write(&keyring_path, keyring_text("b", &[&a, &b])).unwrap();
    let (code, out, err) = run_binary(
        &["store", "rekey", "--config", config_path.to_str().unwrap()],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    let mut client = etcd.client().await;
    let all = client
        .get(
            "/rekey/webhooks/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(all.kvs().len(), 300);
    for kv in all.kvs() {
        let value = String::from_utf8_lossy(kv.value());
        assert!(
            value.contains("\"enc1:b:") && !value.contains("\"enc1:a:"),
            "{value}"
        );
    }
    // Only b is needed now: a replica with b alone loads all 300 and signs with each secret.
    std::fs::write(&keyring_path, keyring_text("b", &[&b])).unwrap();
    let fresh = start_with_keyring(&config, &keyring_text("b", &[&b]), "").await;
    assert_every_endpoint_signs(&fresh, &upstream, &made).await;
    drop(server);
}

/// Waits (5 s at most) for `done`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what} within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keyring_reloads_live_and_a_broken_one_keeps_the_last_good() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let (a, b) = (key_line("a"), key_line("b"));
    let server = start_with_keyring(&encrypted_config(&pki), &keyring_text("a", &[&a]), "").await;
    let created = server.create_webhook(&upstream.url("/k"), &["*"]).await;
    let uuid = created["uuid"].as_str().unwrap().to_owned();
    let keyring_path = server.dir.path().join("keyring.toml");
    let store = server.dir.path().join("webhooks.toml");
    assert!(std::fs::read_to_string(&store).unwrap().contains("enc1:a:"));

    // Step 1 and 2 of the procedure: add b, make it primary (an atomic rename, as Kubernetes does).
    let next = server.dir.path().join(".keyring.new");
    std::fs::write(&next, keyring_text("b", &[&a, &b])).unwrap();
    std::fs::rename(&next, &keyring_path).unwrap();
    eventually("the keyring reloaded", || {
        server.state.sealer.primary().as_deref() == Some("b")
    })
    .await;
    // The next write seals under b, the untouched endpoint too (it is not under the primary).
    let other = server.create_webhook(&upstream.url("/k2"), &["*"]).await;
    let text = std::fs::read_to_string(&store).unwrap();
    assert_eq!(text.matches("secret = \"enc1:b:").count(), 2, "{text}");
    assert!(!text.contains("enc1:a:"));

    // A broken keyring is refused: b stays in service, deliveries and writes go on.
    std::fs::write(
        &keyring_path,
        "primary = \"b\"\n[keys]\n\"b\" = \"not base64\"\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.state.sealer.primary().as_deref(), Some("b"));
    let metrics = server.admin_get("/metrics").await.text();
    assert!(
        metrics.contains("hooksign_keyring_last_reload_success 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hooksign_keyring_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    let reply = rotate(&server, &uuid, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let secret = reply.json()["secret"].as_str().unwrap().to_owned();
    assert_signs_with(&server, &upstream, &uuid, &secret).await;

    // Step 4: remove a. The store reloads with b alone.
    std::fs::write(&keyring_path, keyring_text("b", &[&b])).unwrap();
    eventually("the keyring without a", || {
        server
            .state
            .sealer
            .keyring()
            .is_some_and(|k| k.names().collect::<Vec<_>>() == ["b"])
    })
    .await;
    let metrics = server.admin_get("/metrics").await.text();
    assert!(
        metrics.contains("hooksign_keyring_last_reload_success 1"),
        "{metrics}"
    );
    let (code, out, err) = run_binary(
        &[
            "check",
            "--config",
            server.dir.path().join("config.toml").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_signs_with(
        &server,
        &upstream,
        other["uuid"].as_str().unwrap(),
        other["secret"].as_str().unwrap(),
    )
    .await;
}

#[test]
fn require_encryption_refuses_a_plaintext_store_until_it_is_rekeyed() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = EndpointSpec::new("https://hooks.example.com/in");
    let config = ConfigSpec::new(None)
        .set("store", "keyring = \"keyring.toml\"")
        .set("store", "require_encryption = true");
    let config_path = config.write(dir.path(), &store_toml(&[&endpoint]));
    std::fs::write(
        dir.path().join("keyring.toml"),
        keyring_text("k", &[&key_line("k")]),
    )
    .unwrap();
    let path = config_path.to_str().unwrap();

    let (code, _, err) = run_binary(&["check", "--config", path], None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("require_encryption is on"), "{err}");
    assert!(err.contains(&endpoint.uuid), "{err}");
    assert!(!err.contains(random_part(&endpoint.secret)), "{err}");
    let (code, _, err) = run_binary(&["serve", "--config", path], None);
    assert_eq!(code, 64, "{err}");

    // rekey reads the plaintext and encrypts it; then the policy is met.
    let (code, _, err) = run_binary(&["store", "rekey", "--config", path], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("rekey: 1/1 re-encrypted under key \"k\""),
        "{err}"
    );
    let text = std::fs::read_to_string(dir.path().join("webhooks.toml")).unwrap();
    assert!(!text.contains(random_part(&endpoint.secret)));
    let (code, out, err) = run_binary(&["check", "--config", path], None);
    assert_eq!(code, 0, "{out}{err}");

    // The policy without a keyring is a configuration error.
    let bare = ConfigSpec::new(None).set("store", "require_encryption = true");
    let bare_path = bare.write(dir.path(), "webhooks = []\n");
    let (code, _, err) = run_binary(&["check", "--config", bare_path.to_str().unwrap()], None);
    assert_eq!(code, 1);
    assert!(err.contains("store.require_encryption"), "{err}");
}

#[test]
fn without_a_keyring_nothing_changes_and_plaintext_stores_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = EndpointSpec::new("https://hooks.example.com/in");
    let plain = ConfigSpec::new(None);
    let path = plain.write(dir.path(), &store_toml(&[&endpoint]));
    let (code, out, err) = run_binary(&["check", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    // With a keyring, the same plaintext store still loads (migration), until rekey encrypts it.
    let keyed = ConfigSpec::new(None).set("store", "keyring = \"keyring.toml\"");
    std::fs::write(
        dir.path().join("keyring.toml"),
        keyring_text("k", &[&key_line("k")]),
    )
    .unwrap();
    let path = keyed.write(dir.path(), &store_toml(&[&endpoint]));
    let (code, out, err) = run_binary(&["check", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("keyring.toml: primary \"k\", keys k"), "{out}");
    // And an encrypted store without the keyring is refused, naming why.
    run_binary(
        &["store", "rekey", "--config", path.to_str().unwrap()],
        None,
    );
    let path = plain.write(
        dir.path(),
        &std::fs::read_to_string(dir.path().join("webhooks.toml")).unwrap(),
    );
    let (code, _, err) = run_binary(&["check", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 1);
    assert!(err.contains("no [store] keyring is configured"), "{err}");
}

/// The base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under a Standard Webhooks secret.
fn standard_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = standard_webhooks::key_bytes(&Secret::new(secret)).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_previous_keys_sign_at_once_and_an_eleventh_is_refused() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let server = TestServer::start(&ConfigSpec::new(Some(&pki)).with_tokens(), "").await;
    let created = server
        .post_webhook(
            json!({"url": upstream.url("/ten"), "events": ["*"], "scheme": "standard-webhooks"}),
        )
        .await
        .json();
    let uuid = created["uuid"].as_str().unwrap().to_owned();
    let mut keys = vec![created["secret"].as_str().unwrap().to_owned()];
    for n in 0..10 {
        // Each window its own length: all ten stay open.
        let reply = rotate(
            &server,
            &uuid,
            Some(json!({"previousSecretExpiresIn": 3600 + n})),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(
            reply.json()["previousSecretsExpireAt"]
                .as_array()
                .unwrap()
                .len(),
            n as usize + 1
        );
        keys.push(reply.json()["secret"].as_str().unwrap().to_owned());
    }
    let reply = rotate(&server, &uuid, Some(json!({"previousSecretExpiresIn": 60}))).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text()
    );
    assert_eq!(reply.json()["error"]["code"], "validation_failed");
    assert!(
        reply.text().contains("at most 10 previous secrets"),
        "{}",
        reply.text()
    );

    let body = b"{\"ten\":true}";
    let reply = server.deliver(&[("x-webhook-id", &uuid)], &body[..]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = upstream.requests().pop().unwrap();
    let id = seen.headers["webhook-id"].to_str().unwrap().to_owned();
    let ts = seen.headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .to_owned();
    let entries: Vec<String> = seen.headers["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .map(str::to_owned)
        .collect();
    assert_eq!(entries.len(), 11, "the current key and ten previous ones");
    // Newest first: the current key, then each previous one from the latest rotation back.
    for (entry, key) in entries.iter().zip(keys.iter().rev()) {
        assert_eq!(
            entry,
            &format!("v1,{}", standard_signature(key, &id, &ts, body))
        );
    }

    // revoke-previous ends every window at once.
    let reply = server
        .api(
            Method::POST,
            &format!("{HOOKS}/{uuid}/revoke-previous"),
            Some(OPS_TOKEN),
            Some(COMPANY),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.json().get("previousSecretExpiresAt").is_none());
    assert!(
        reply.json()["secret"].as_str().unwrap().contains('•'),
        "masked"
    );
    server.deliver(&[("x-webhook-id", &uuid)], &body[..]).await;
    let seen = upstream.requests().pop().unwrap();
    assert_eq!(
        seen.headers["webhook-signature"]
            .to_str()
            .unwrap()
            .split(' ')
            .count(),
        1
    );

    // Windows up to 7 days; a caller's secret is checked against the scheme and never echoed.
    let reply = rotate(
        &server,
        &uuid,
        Some(json!({"previousSecretExpiresIn": 604_800})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let reply = rotate(
        &server,
        &uuid,
        Some(json!({"previousSecretExpiresIn": 604_801})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let bad = "whsec_0123456789abcdef-not-base64";
    let reply = rotate(&server, &uuid, Some(json!({"secret": bad}))).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        reply
            .text()
            .contains("secret: must be whsec_ followed by standard base64"),
        "{}",
        reply.text()
    );
    assert!(!reply.text().contains("not-base64"), "{}", reply.text());
    let reply = server
        .post_webhook(json!({"url": upstream.url("/s"), "events": ["*"], "secret": bad}))
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!reply.text().contains("not-base64"), "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_chains_every_write_and_a_hand_edit_is_detected() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let config = encrypted_config(&pki).set("admin", "audit_log = \"audit.log\"");
    let server = start_with_keyring(&config, &keyring_text("k1", &[&key_line("k1")]), "").await;
    let created = server
        .post_webhook(json!({"url": upstream.url("/au"), "events": ["*"], "scheme": "stripe"}))
        .await
        .json();
    let uuid = created["uuid"].as_str().unwrap().to_owned();
    let mut secrets = vec![created["secret"].as_str().unwrap().to_owned()];
    let reply = call(
        server.admin,
        Method::POST,
        &format!("{HOOKS}/{uuid}/regenerate-secret"),
        &[
            ("authorization", &format!("Bearer {OPS_TOKEN}")),
            ("x-company", COMPANY),
            ("idempotency-key", "rotate-1"),
            ("content-type", "application/json"),
        ],
        json!({"previousSecretExpiresIn": 600}).to_string().into(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    secrets.push(reply.json()["secret"].as_str().unwrap().to_owned());
    let path = format!("{HOOKS}/{uuid}");
    server
        .api(
            Method::PATCH,
            &path,
            Some(OPS_TOKEN),
            Some(COMPANY),
            Some(json!({"description": "x"})),
        )
        .await;
    server
        .api(
            Method::POST,
            &format!("{path}/revoke-previous"),
            Some(OPS_TOKEN),
            Some(COMPANY),
            None,
        )
        .await;
    let reply = server
        .api(Method::DELETE, &path, Some(OPS_TOKEN), Some(COMPANY), None)
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);

    let log = server.dir.path().join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = lines
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "create",
            "regenerate_secret",
            "update",
            "revoke_previous",
            "delete"
        ]
    );
    for line in &lines {
        assert_eq!(line["token"], "ops");
        assert_eq!(line["company"], COMPANY);
        assert_eq!(line["endpoint"], uuid.as_str());
        assert_eq!(line["keyName"], "k1");
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(lines[1]["idempotencyKey"], "rotate-1");
    assert_no_secret_in(text.as_bytes(), &secrets, "the audit log");

    let verify = |p: &Path| run_binary(&["audit", "verify", p.to_str().unwrap()], None);
    let (code, out, err) = verify(&log);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("5 line(s), chain intact"), "{out}");

    // A line edited by hand (the token name of the rotation) is detected, and so is a removal.
    let edited = text.replacen(
        "\"token\":\"ops\",\"company\"",
        "\"token\":\"someone\",\"company\"",
        2,
    );
    let edited = text.lines().next().unwrap().to_owned()
        + "\n"
        + edited.lines().nth(1).unwrap()
        + "\n"
        + &text.lines().skip(2).collect::<Vec<_>>().join("\n")
        + "\n";
    std::fs::write(&log, &edited).unwrap();
    let (code, _, err) = verify(&log);
    assert_eq!(code, 1);
    assert!(
        err.contains("line 2: its hash does not match its content"),
        "{err}"
    );
    let removed: String = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(&log, removed).unwrap();
    let (code, _, err) = verify(&log);
    assert_eq!(code, 1);
    assert!(err.contains("line 3: its prev"), "{err}");
}

#[test]
fn keyring_new_prints_a_key_line_a_keyring_accepts() {
    let (code, out, err) = run_binary(&["keyring", "new", "2026-12"], None);
    assert_eq!(code, 0, "{err}");
    let line = out.trim();
    assert!(line.starts_with("\"2026-12\" = \""), "{line}");
    let ring = hooksign::keyring::Keyring::parse(&keyring_text("2026-12", &[line]), "k").unwrap();
    assert_eq!(ring.primary(), "2026-12");
    let (again, _, _) = run_binary(&["keyring", "new", "2026-12"], None);
    assert_eq!(again, 0);
    let (code, _, err) = run_binary(&["keyring", "new", "bad name"], None);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_beside_a_live_server_loses_no_acknowledged_rotation() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let (a, b) = (key_line("a"), key_line("b"));
    let server = start_with_keyring(&encrypted_config(&pki), &keyring_text("a", &[&a]), "").await;
    let mut made = create_many(&server, &upstream, 60).await;
    let dir = server.dir.path().to_owned();
    std::fs::write(dir.join("keyring.toml"), keyring_text("b", &[&a, &b])).unwrap();
    eventually("the new primary", || {
        server.state.sealer.primary().as_deref() == Some("b")
    })
    .await;

    // The documented procedure, live: rekey runs while the admin API keeps rotating.
    let config_path = dir.join("config.toml");
    let rekeys = tokio::task::spawn_blocking(move || {
        (0..5)
            .map(|_| {
                let (code, out, err) = run_binary(
                    &["store", "rekey", "--config", config_path.to_str().unwrap()],
                    None,
                );
                std::thread::sleep(Duration::from_millis(10));
                (code, format!("{out}{err}"))
            })
            .collect::<Vec<_>>()
    });
    for (uuid, secret) in made.iter_mut().take(40) {
        let reply = rotate(&server, uuid, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        *secret = reply.json()["secret"].as_str().unwrap().to_owned();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let outcomes = rekeys.await.unwrap();
    assert!(
        outcomes.iter().any(|(code, _)| *code == 0),
        "no rekey finished: {outcomes:?}"
    );
    // One more write after the last rekey, then the file is all under b.
    let reply = rotate(&server, &made[0].0, None).await;
    made[0].1 = reply.json()["secret"].as_str().unwrap().to_owned();
    let text = std::fs::read_to_string(dir.join("webhooks.toml")).unwrap();
    assert!(!text.contains("enc1:a:"), "everything is under b");
    // Every acknowledged secret is what the file holds (read with b alone) and what is in service.
    let sealer = hooksign::store::crypt::Sealer::new(
        Some(hooksign::keyring::Keyring::parse(&keyring_text("b", &[&b]), "k").unwrap()),
        true,
    );
    let reread = hooksign::store::file::parse_store_with(&text, "webhooks.toml", None, &sealer)
        .expect("the file opens with b alone");
    assert_eq!(reread.len(), made.len());
    for (uuid, secret) in &made {
        let uuid = uuid.parse().unwrap();
        assert_eq!(reread.get(&uuid).unwrap().secret.expose(), secret);
    }
    eventually("the server serves the file's content", || {
        let snapshot = server.state.store.snapshot();
        made.iter().all(|(uuid, secret)| {
            snapshot
                .get(&uuid.parse().unwrap())
                .unwrap()
                .secret
                .expose()
                == secret
        })
    })
    .await;
    assert_every_endpoint_signs(&server, &upstream, &made).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_replicas_follow_a_keyring_rotation_one_reload_at_a_time() {
    let Some(etcd) = Etcd::start("etcd_replicas_follow_a_keyring_rotation_one_reload_at_a_time")
    else {
        return;
    };
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let (a, b) = (key_line("a"), key_line("b"));
    let config = encrypted_config(&pki)
        .set("store", "backend = \"etcd\"")
        .set("store.etcd", &format!("endpoints = [{:?}]", etcd.url()))
        .set("store.etcd", "prefix = \"/fleet/\"");
    let one = start_with_keyring(&config, &keyring_text("a", &[&a]), "").await;
    let two = start_with_keyring(&config, &keyring_text("a", &[&a]), "").await;
    let created = one.create_webhook(&upstream.url("/f"), &["*"]).await;
    let uuid = created["uuid"].as_str().unwrap().to_owned();
    let secret_in = |server: &TestServer| {
        server
            .state
            .store
            .snapshot()
            .get(&uuid.parse().unwrap())
            .map(|e| e.secret.expose().to_owned())
    };
    let first = created["secret"].as_str().unwrap().to_owned();
    eventually("replica two has the endpoint", || {
        secret_in(&two).as_deref() == Some(first.as_str())
    })
    .await;

    // Replica one gets b as primary before replica two knows b (the step the procedure warns
    // about): two cannot open the rotated value and keeps the endpoint's last good record.
    std::fs::write(
        one.dir.path().join("keyring.toml"),
        keyring_text("b", &[&a, &b]),
    )
    .unwrap();
    eventually("replica one reloaded", || {
        one.state.sealer.primary().as_deref() == Some("b")
    })
    .await;
    let reply = rotate(&one, &uuid, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let second = reply.json()["secret"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(secret_in(&two).as_deref(), Some(first.as_str()));
    assert_signs_with(&two, &upstream, &uuid, &first).await;

    // Once two's keyring holds b, its reload re-reads the prefix and it signs with the new secret.
    std::fs::write(
        two.dir.path().join("keyring.toml"),
        keyring_text("b", &[&a, &b]),
    )
    .unwrap();
    eventually("replica two follows", || {
        secret_in(&two).as_deref() == Some(second.as_str())
    })
    .await;
    assert_signs_with(&two, &upstream, &uuid, &second).await;
    assert_signs_with(&one, &upstream, &uuid, &second).await;
}

#[tokio::test]
async fn client_certificates_and_auto_disables_are_audited() {
    let pki = Pki::new();
    let failing = Upstream::start(
        &pki,
        UpstreamOptions {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            ..Default::default()
        },
    )
    .await;
    let config = encrypted_config(&pki)
        .set("admin", "audit_log = \"audit.log\"")
        .set("proxy", "auto_disable_after = 1");
    let server = start_with_keyring(&config, &keyring_text("k1", &[&key_line("k1")]), "").await;
    let uuid = server
        .post_webhook(json!({"url": failing.url("/au"), "events": ["*"]}))
        .await
        .json()["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["audited".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let path = format!("{HOOKS}/{uuid}/client-certificate");
    let body = json!({"certificate": cert.pem(), "privateKey": key.serialize_pem()});
    for (method, body) in [(Method::PUT, Some(body)), (Method::DELETE, None)] {
        let reply = server
            .api(method, &path, Some(OPS_TOKEN), Some(COMPANY), body)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    // One failed delivery disables the endpoint; hooksign audits that write itself.
    let reply = server
        .deliver(&[("x-webhook-id", uuid.as_str())], "{}")
        .await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    let log = server.dir.path().join("audit.log");
    let started = std::time::Instant::now();
    let lines: Vec<Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 4 || started.elapsed() > Duration::from_secs(10) {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let actions: Vec<&str> = lines
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "create",
            "set_client_certificate",
            "remove_client_certificate",
            "auto_disable"
        ]
    );
    assert_eq!(lines[1]["token"], "ops");
    assert_eq!(lines[3]["token"], "hooksign:auto_disable_after");
    assert_eq!(lines[3]["endpoint"], uuid.as_str());
    assert_eq!(lines[3]["company"], COMPANY);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("PRIVATE KEY"));
    let (code, stdout, stderr) = run_binary(&["audit", "verify", log.to_str().unwrap()], None);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_write_never_leaves_a_change_without_its_audit_line() {
    use tokio::io::AsyncWriteExt;
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let config = ConfigSpec::new(Some(&pki))
        .with_tokens()
        .set("admin", "audit_log = \"audit.log\"");
    let server = TestServer::start(&config, "").await;
    let body = json!({"url": upstream.url("/hangup"), "events": ["*"]}).to_string();
    let request = format!(
        "POST {HOOKS} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {OPS_TOKEN}\r\n\
         X-Company: {COMPANY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Each client sends a whole create, then closes its side at once or a little later: hyper
    // drops the handler's future wherever it is, before, during or after the store write.
    for attempt in 0..20u64 {
        let mut stream = tokio::net::TcpStream::connect(server.admin).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_micros(attempt * 300)).await;
        stream.shutdown().await.unwrap();
        drop(stream);
    }
    // Whatever was made is in the store and in the audit log alike, once the writes settle.
    let log = server.dir.path().join("audit.log");
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let listed = server
            .api(
                Method::GET,
                &format!("{HOOKS}?limit=100"),
                Some(OPS_TOKEN),
                Some(COMPANY),
                None,
            )
            .await;
        let endpoints = listed.json()["data"].as_array().unwrap().len();
        let audited = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains("\"action\":\"create\""))
            .count();
        if endpoints == audited {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{endpoints} endpoints were created but {audited} audit lines written"
        );
    }
}
