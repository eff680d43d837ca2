//! Live reload of the store file: every way a file changes on disk, rejected files, SIGHUP,
//! admin writes that must not trigger reloads or overwrite hand edits.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::json;
use support::*;
use uuid::Uuid;

/// Polls until the snapshot holds `uuid` (or lacks it, with `present = false`); the time it took.
async fn wait_for(server: &TestServer, uuid: &str, present: bool) -> Duration {
    let uuid: Uuid = uuid.parse().unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if server.state.store.snapshot().get(&uuid).is_some() == present {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{uuid} present={present} not seen within 5 s");
}

async fn metric(server: &TestServer, line_start: &str) -> String {
    let text = server.admin_get("/metrics").await.text();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("{line_start} missing"))
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned()
}

fn edit_in_place(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

fn rename_over(path: &Path, text: &str) {
    let temp = path.with_file_name("edit.tmp");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

#[tokio::test]
async fn every_kind_of_change_is_picked_up_within_a_second() {
    let first = EndpointSpec::new("https://localhost/1");
    let server = TestServer::start(&ConfigSpec::new(None), &store_toml(&[&first])).await;
    let store = server.dir.path().join("webhooks.toml");
    let mut latencies = Vec::new();

    let second = EndpointSpec::new("https://localhost/2");
    edit_in_place(&store, &store_toml(&[&first, &second]));
    latencies.push(wait_for(&server, &second.uuid, true).await);

    let third = EndpointSpec::new("https://localhost/3");
    rename_over(&store, &store_toml(&[&first, &third]));
    latencies.push(wait_for(&server, &third.uuid, true).await);
    wait_for(&server, &second.uuid, false).await;

    std::fs::remove_file(&store).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        server
            .state
            .store
            .snapshot()
            .get(&first.uuid.parse().unwrap())
            .is_some(),
        "a deleted file emptied the store"
    );
    let fourth = EndpointSpec::new("https://localhost/4");
    std::fs::write(&store, store_toml(&[&fourth])).unwrap();
    latencies.push(wait_for(&server, &fourth.uuid, true).await);
    wait_for(&server, &first.uuid, false).await;

    for latency in &latencies {
        assert!(
            *latency < Duration::from_secs(1),
            "a reload took {latency:?}"
        );
    }
    println!("reload latencies: {latencies:?}");
    assert_eq!(
        metric(&server, "hooksign_store_last_reload_success").await,
        "1"
    );
}

#[tokio::test]
async fn kubernetes_secret_volume_swaps_are_followed() {
    // The layout kubelet makes: webhooks.toml -> ..data/webhooks.toml, ..data -> ..<timestamp>.
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("secret");
    let first = EndpointSpec::new("https://localhost/k1");
    std::fs::create_dir_all(volume.join("..2026_01")).unwrap();
    std::fs::write(
        volume.join("..2026_01/webhooks.toml"),
        store_toml(&[&first]),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_01", volume.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/webhooks.toml", volume.join("webhooks.toml")).unwrap();
    let config = ConfigSpec::new(None).set("store", "path = \"secret/webhooks.toml\"");
    let server = TestServer::start_in(dir, &config, "", None).await;
    wait_for(&server, &first.uuid, true).await;

    let second = EndpointSpec::new("https://localhost/k2");
    std::fs::create_dir_all(volume.join("..2026_02")).unwrap();
    std::fs::write(
        volume.join("..2026_02/webhooks.toml"),
        store_toml(&[&second]),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_02", volume.join("..data_tmp")).unwrap();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    std::fs::remove_dir_all(volume.join("..2026_01")).unwrap();
    let latency = wait_for(&server, &second.uuid, true).await;
    wait_for(&server, &first.uuid, false).await;
    println!("..data swap reload latency: {latency:?}");
    assert!(latency < Duration::from_secs(1));
}

#[tokio::test]
async fn a_broken_file_keeps_the_last_good_snapshot() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let good = EndpointSpec::new(upstream.url("/good"));
    let server = TestServer::start(&ConfigSpec::new(Some(&pki)), &store_toml(&[&good])).await;
    let store = server.dir.path().join("webhooks.toml");

    let mut dup = EndpointSpec::new(upstream.url("/dup"));
    dup.uuid = good.uuid.clone();
    for broken in [
        "[[webhooks]\nnot toml".to_owned(),
        store_toml(&[&good, &dup]),
        store_toml(&[&good]).replace("status = \"active\"", "status = \"paused\""),
        store_toml(&[&good]).replace("https://", "gopher://"),
    ] {
        let errors_before: u64 = metric(&server, "hooksign_store_reloads_total{result=\"error\"}")
            .await
            .parse()
            .unwrap();
        rename_over(&store, &broken);
        let started = Instant::now();
        loop {
            let errors: u64 = metric(&server, "hooksign_store_reloads_total{result=\"error\"}")
                .await
                .parse()
                .unwrap();
            if errors > errors_before {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the broken file was not noticed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            metric(&server, "hooksign_store_last_reload_success").await,
            "0"
        );
        let reply = server.deliver(&[("x-webhook-id", &good.uuid)], "{}").await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "the last good snapshot stopped serving"
        );
    }

    let fresh = EndpointSpec::new(upstream.url("/fresh"));
    rename_over(&store, &store_toml(&[&good, &fresh]));
    wait_for(&server, &fresh.uuid, true).await;
    assert_eq!(
        metric(&server, "hooksign_store_last_reload_success").await,
        "1"
    );
}

#[tokio::test]
async fn a_burst_of_edits_ends_with_the_last_in_service() {
    let server = TestServer::start(&ConfigSpec::new(None), "").await;
    let store = server.dir.path().join("webhooks.toml");
    let mut last = None;
    for i in 0..100 {
        let endpoint = EndpointSpec::new(format!("https://localhost/burst{i}"));
        if i % 2 == 0 {
            rename_over(&store, &store_toml(&[&endpoint]));
        } else {
            std::fs::write(&store, store_toml(&[&endpoint])).unwrap();
        }
        last = Some(endpoint);
    }
    let last = last.unwrap();
    wait_for(&server, &last.uuid, true).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let snapshot = server.state.store.snapshot();
    assert_eq!(snapshot.len(), 1);
    assert!(snapshot.get(&last.uuid.parse().unwrap()).is_some());
}

#[tokio::test]
async fn admin_writes_cause_no_reloads_and_keep_hand_edits() {
    let server = TestServer::start(&ConfigSpec::new(None).with_tokens(), "").await;
    let reloads =
        || async { metric(&server, "hooksign_store_reloads_total{result=\"success\"}").await };
    let before = reloads().await;
    for i in 0..5 {
        server
            .create_webhook(&format!("https://localhost/a{i}"), &["*"])
            .await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(reloads().await, before, "hooksign reloaded its own writes");

    // A hand edit lands, and an admin write follows before the watcher's debounce.
    let store = server.dir.path().join("webhooks.toml");
    let hand = EndpointSpec::new("https://localhost/hand");
    let mut text = std::fs::read_to_string(&store).unwrap();
    text.push_str(&hand.toml());
    std::fs::write(&store, &text).unwrap();
    let created = server
        .create_webhook("https://localhost/after", &["*"])
        .await;
    let on_disk = std::fs::read_to_string(&store).unwrap();
    assert!(
        on_disk.contains(&hand.uuid),
        "the admin write overwrote a hand edit"
    );
    assert!(on_disk.contains(created["uuid"].as_str().unwrap()));
    let snapshot = server.state.store.snapshot();
    assert_eq!(snapshot.len(), 7);

    // A broken hand edit is never overwritten: writes are refused until it is fixed.
    std::fs::write(&store, "[[webhooks]]\nuuid = ").unwrap();
    let reply = server
        .post_webhook(json!({"url": "https://localhost/x", "events": ["*"]}))
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "store_conflict");
    assert_eq!(
        std::fs::read_to_string(&store).unwrap(),
        "[[webhooks]]\nuuid = "
    );
}

#[tokio::test]
async fn delivery_records_survive_reloads() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let kept = EndpointSpec::new(upstream.url("/kept"));
    let server = TestServer::start(&ConfigSpec::new(Some(&pki)), &store_toml(&[&kept])).await;
    for _ in 0..3 {
        assert_eq!(
            server
                .deliver(&[("x-webhook-id", &kept.uuid)], "{}")
                .await
                .status,
            StatusCode::OK
        );
    }
    let added = EndpointSpec::new(upstream.url("/added"));
    rename_over(
        &server.dir.path().join("webhooks.toml"),
        &store_toml(&[&kept, &added]),
    );
    wait_for(&server, &added.uuid, true).await;
    let snapshot = server.state.store.snapshot();
    let stats = &snapshot.get(&kept.uuid.parse().unwrap()).unwrap().stats;
    assert_eq!(stats.deliveries(), 3);
}

#[tokio::test]
async fn a_read_only_store_serves_deliveries_and_refuses_writes_clearly() {
    let server = TestServer::start(&ConfigSpec::new(None).with_tokens(), "").await;
    server.create_webhook("https://localhost/ro", &["*"]).await;
    let dir = server.dir.path().to_owned();
    // As root, permissions do not stop a write; the immutable attribute does.
    let locked = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&dir)
        .status();
    if !locked.is_ok_and(|s| s.success()) {
        println!("skipped: chattr +i is not available here");
        return;
    }
    let reply = server
        .post_webhook(json!({"url": "https://localhost/x", "events": ["*"]}))
        .await;
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&dir)
        .status();
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "store_read_only");
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("read-only"));
    assert_eq!(server.state.store.snapshot().len(), 1);
}

#[tokio::test]
async fn sighup_reloads() {
    let first = EndpointSpec::new("https://localhost/h1");
    let binary = TestBinary::start(&ConfigSpec::new(None), &store_toml(&[&first]));
    let reloads = || async {
        let text = call(
            binary.admin,
            Method::GET,
            "/metrics",
            &[],
            Default::default(),
        )
        .await
        .text();
        text.lines()
            .find(|l| l.starts_with("hooksign_store_reloads_total{result=\"success\"}"))
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(reloads().await, "1");
    // The content is unchanged, so only SIGHUP (not the watcher) reloads it.
    binary.signal("HUP");
    let started = Instant::now();
    while reloads().await != "2" {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = std::fs::read_to_string(binary.log_path()).unwrap();
    assert!(log.contains("SIGHUP received"), "{log}");
}

/// hooksign's own re-read of the file (open, read, close) is not a change: after one admin write
/// the file is read once or twice, not again and again. (Following its own reads, hooksign
/// re-read the file every debounce period forever: a quarter of a core at 100,000 endpoints.)
#[tokio::test]
async fn reading_the_store_does_not_trigger_more_reads() {
    const UNCHANGED: &str = "store file event with unchanged content";
    let binary = TestBinary::start(&ConfigSpec::new(None).with_tokens(), "");
    let created = api_call(
        binary.admin,
        Method::POST,
        "/api/v1/webhooks",
        Some(OPS_TOKEN),
        Some(COMPANY),
        Some(json!({"url": "https://localhost/hook", "events": ["*"]})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    // Twenty debounce periods: a re-read loop would log about twenty checks by now.
    tokio::time::sleep(watch_period() * 20).await;
    let checks = binary.stderr().matches(UNCHANGED).count();
    assert!(
        (1..=3).contains(&checks),
        "{checks} re-reads of an unchanged store after one write"
    );
}

fn watch_period() -> Duration {
    hooksign::store::watch::DEBOUNCE
}
