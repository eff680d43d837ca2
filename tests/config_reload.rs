//! Config reload of what the upstream side uses: the egress policy (pooled connections opened
//! under the old one are retired), the CA file's content (read again at `SIGHUP`, a broken one
//! rejected whole), and `[proxy]` timeouts, applied to the next delivery; keys that apply only
//! at start named as "restart required". Real upstreams, real files, real signals.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

/// Replaces `path` by rename, as editors and Kubernetes do.
fn replace(path: &Path, text: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// Delivers (fresh client connection each time) until `done` accepts a reply, 10 s at most.
async fn deliver_until(
    proxy: std::net::SocketAddr,
    uuid: &str,
    what: &str,
    done: impl Fn(&Reply) -> bool,
) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = send_to(proxy, &[("x-webhook-id", uuid)], "body")
            .await
            .unwrap();
        if done(&reply) {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last reply {} {:?}",
            reply.status,
            reply.hooksign_error()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The metric line of `count` applied config reloads.
fn applied(count: u32) -> String {
    format!("hooksign_config_reloads_total{{result=\"success\"}} {count}")
}

#[tokio::test]
async fn a_tightened_egress_policy_holds_for_the_next_delivery_even_on_a_pooled_connection() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/hook"));
    let config = ConfigSpec::new(Some(&pki)).with_tokens();
    let server = TestServer::start(&config, &store_toml(&[&endpoint])).await;
    let path = server.dir.path().join("config.toml");

    let ok = server
        .deliver(&[("x-webhook-id", &endpoint.uuid)], "body")
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(upstream.connections(), 1);
    assert_eq!(server.state.upstream.idle_connections(), 1, "pooled");

    // Loopback is private: with allow_private off it is refused, pooled connection or not.
    replace(
        &path,
        &config.clone().set("egress", "allow_private = false").text(),
    );
    wait_for_metric(server.admin, &applied(1)).await;
    let refused = server
        .deliver(&[("x-webhook-id", &endpoint.uuid)], "body")
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.hooksign_error(), Some("destination_forbidden"));
    assert_eq!(upstream.requests().len(), 1, "nothing more reached it");
    assert_eq!(
        server.state.upstream.idle_connections(),
        0,
        "the connection opened under the old policy is closed"
    );
    // The admin API checks URLs with the policy in force too.
    let create = server
        .post_webhook(serde_json::json!({
            "url": upstream.url("/other"),
            "events": ["*"],
        }))
        .await;
    assert_eq!(
        create.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        create.text()
    );

    // Allowed again: delivered on a new connection.
    replace(&path, &config.text());
    wait_for_metric(server.admin, &applied(2)).await;
    let ok = server
        .deliver(&[("x-webhook-id", &endpoint.uuid)], "body")
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test]
async fn the_ca_file_is_read_again_at_sighup_and_a_broken_one_keeps_the_roots_in_service() {
    let trusted = Pki::new();
    let other = Pki::new();
    // The customer's certificate is from `other`'s CA, which hooksign does not trust yet.
    let upstream = Upstream::start(&other, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/hook"));
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("roots.pem");
    std::fs::copy(&trusted.ca_path, &ca_path).unwrap();
    let config = ConfigSpec::new(None).set(
        "egress",
        &format!("ca_file = {:?}", ca_path.display().to_string()),
    );
    let binary = TestBinary::start(&config, &store_toml(&[&endpoint]));

    let unknown = send_to(binary.proxy, &[("x-webhook-id", &endpoint.uuid)], "body")
        .await
        .unwrap();
    assert_eq!(unknown.hooksign_error(), Some("upstream_tls"));

    // The file's content changes, its path in the config does not: SIGHUP reads it again.
    replace(&ca_path, &std::fs::read_to_string(&other.ca_path).unwrap());
    binary.signal("HUP");
    wait_for_metric(binary.admin, "hooksign_config_last_reload_success 1").await;
    deliver_until(binary.proxy, &endpoint.uuid, "the new roots", |r| {
        r.status == StatusCode::OK
    })
    .await;
    assert_eq!(upstream.requests().len(), 1);

    // A CA file that does not parse: the reload is rejected whole, the roots in service stay.
    replace(&ca_path, "-----BEGIN CERTIFICATE-----\nnot base64\n");
    binary.signal("HUP");
    wait_for_metric(binary.admin, "hooksign_config_last_reload_success 0").await;
    let log = binary.stderr();
    assert!(log.contains("config reload rejected"), "{log}");
    assert!(log.contains("egress.ca_file"), "{log}");
    let still = send_to(binary.proxy, &[("x-webhook-id", &endpoint.uuid)], "body")
        .await
        .unwrap();
    assert_eq!(still.status, StatusCode::OK);
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test]
async fn proxy_timeouts_apply_to_the_next_delivery_and_caps_are_named_restart_required() {
    let pki = Pki::new();
    let slow = Upstream::start(
        &pki,
        UpstreamOptions {
            delay: Duration::from_millis(700),
            ..Default::default()
        },
    )
    .await;
    let endpoint = EndpointSpec::new(slow.url("/hook"));
    let config = ConfigSpec::new(Some(&pki));
    let server = TestServer::start(&config, &store_toml(&[&endpoint])).await;
    let path = server.dir.path().join("config.toml");
    let ok = server
        .deliver(&[("x-webhook-id", &endpoint.uuid)], "body")
        .await;
    assert_eq!(ok.status, StatusCode::OK);

    let shorter = config.clone().set("proxy", "upstream_timeout = \"200ms\"");
    replace(&path, &shorter.text());
    wait_for_metric(server.admin, &applied(1)).await;
    let cut = server
        .deliver(&[("x-webhook-id", &endpoint.uuid)], "body")
        .await;
    assert_eq!(cut.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(cut.hooksign_error(), Some("upstream_timeout"));
    wait_for_metric(server.admin, "hooksign_config_restart_required 0").await;

    // A cap sizes the pool and the fd budget: named, not applied, until the file matches again.
    replace(
        &path,
        &shorter.clone().set("proxy", "max_connections = 100").text(),
    );
    wait_for_metric(server.admin, "hooksign_config_restart_required 1").await;
    assert_eq!(
        server.state.proxy_settings.load().max_connections,
        server.state.config.proxy.max_connections
    );
    replace(&path, &shorter.text());
    wait_for_metric(server.admin, "hooksign_config_restart_required 0").await;
}

#[tokio::test]
async fn both_ports_header_deadlines_apply_to_new_connections_after_a_reload() {
    use tokio::io::AsyncWriteExt;
    let config = ConfigSpec::new(None);
    let server = TestServer::start(&config, "").await;
    let path = server.dir.path().join("config.toml");
    replace(
        &path,
        &config
            .clone()
            .set("proxy", "header_read_timeout = \"300ms\"")
            .set("admin", "header_read_timeout = \"300ms\"")
            .text(),
    );
    wait_for_metric(server.admin, &applied(1)).await;
    // A head that never ends: cut at the new deadline, not the 10 s default.
    for port in [server.proxy, server.admin] {
        let mut stream = tokio::net::TcpStream::connect(port).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        assert!(
            closed_within(&mut stream, Duration::from_secs(5)).await,
            "{port}: the head was not cut within 5 s"
        );
    }
}
