//! The admin API through real HTTP: every route, every error code, durability and rotation.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::*;

const HOOKS: &str = "/api/v1/webhooks";

async fn server_with(config: ConfigSpec, store: &str) -> TestServer {
    TestServer::start(&config.with_tokens(), store).await
}

async fn server() -> TestServer {
    server_with(ConfigSpec::new(None), "").await
}

fn assert_error(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["error"]["code"], code, "{json}");
    assert!(json["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert_eq!(
        json["meta"]["requestId"],
        reply.headers["x-request-id"].to_str().unwrap()
    );
}

#[tokio::test]
async fn create_returns_the_secret_once_and_reads_mask_it() {
    let server = server().await;
    let created = server
        .create_webhook(
            "https://localhost/hooks/in?x=1",
            &["invoice.created", "invoice.paid"],
        )
        .await;
    let secret = created["secret"].as_str().unwrap();
    assert!(hooksign::secret::is_hex_secret(secret), "{secret}");
    for field in [
        "uuid",
        "url",
        "description",
        "events",
        "isActive",
        "status",
        "scheme",
        "secretHint",
        "deliveriesCount",
        "lastDeliveryAt",
        "lastDeliveryStatus",
        "consecutiveFailures",
        "createdAt",
        "updatedAt",
    ] {
        assert!(
            created.get(field).is_some(),
            "{field} missing from {created}"
        );
    }
    assert_eq!(created["isActive"], true);
    assert_eq!(created["status"], "active");
    assert_eq!(created["scheme"], "storno");
    assert_eq!(created["deliveriesCount"], 0);
    assert!(created["createdAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        created["secretHint"],
        format!("...{}", &secret[secret.len() - 4..])
    );

    let uuid = created["uuid"].as_str().unwrap();
    let fetched = server
        .api(
            Method::GET,
            &format!("{HOOKS}/{uuid}"),
            Some(OPS_TOKEN),
            Some(COMPANY),
            None,
        )
        .await;
    assert_eq!(fetched.status, StatusCode::OK);
    let fetched = fetched.json();
    assert_eq!(fetched["secret"], "whsec_••••••••••••••••••••••••");
    assert_eq!(fetched["secretHint"], created["secretHint"]);
    assert_eq!(fetched["url"], "https://localhost/hooks/in?x=1");

    let list = server
        .api(Method::GET, HOOKS, Some(VIEW_TOKEN), Some(COMPANY), None)
        .await;
    assert_eq!(list.status, StatusCode::OK);
    let data = list.json()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 1);
    assert!(!list.text().contains(secret), "a list leaked the secret");

    // Durable: the store file holds it, private.
    let store = server.dir.path().join("webhooks.toml");
    let text = std::fs::read_to_string(&store).unwrap();
    assert!(text.contains(uuid) && text.contains(secret));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&store).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Another company does not see it.
    let other = server
        .api(
            Method::GET,
            HOOKS,
            Some(OPS_TOKEN),
            Some(OTHER_COMPANY),
            None,
        )
        .await;
    assert_eq!(
        other.json()["data"].as_array().unwrap().len(),
        0,
        "another company sees it"
    );
}

#[tokio::test]
async fn auth_errors() {
    let server = server().await;
    let created = server
        .create_webhook("https://localhost/hooks/", &["*"])
        .await;
    let one = format!("{HOOKS}/{}", created["uuid"].as_str().unwrap());
    let body = json!({"url": "https://localhost/a/", "events": ["*"]});
    let not_a_uuid = format!("{HOOKS}/not-a-uuid");
    let (get, post, delete) = (Method::GET, Method::POST, Method::DELETE);
    let (unauthorized, forbidden) = (StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN);
    let (bad, missing) = (StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND);
    type Case<'a> = (
        &'a Method,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a serde_json::Value>,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            &get,
            HOOKS,
            None,
            Some(COMPANY),
            None,
            unauthorized,
            "unauthorized",
        ),
        (
            &get,
            HOOKS,
            Some("hks_wrong"),
            Some(COMPANY),
            None,
            unauthorized,
            "unauthorized",
        ),
        (
            &post,
            HOOKS,
            Some(VIEW_TOKEN),
            Some(COMPANY),
            Some(&body),
            forbidden,
            "forbidden",
        ),
        (
            &delete,
            &one,
            Some(VIEW_TOKEN),
            Some(COMPANY),
            None,
            forbidden,
            "forbidden",
        ),
        (
            &get,
            HOOKS,
            Some(SCOPED_TOKEN),
            Some(OTHER_COMPANY),
            None,
            forbidden,
            "forbidden",
        ),
        (
            &get,
            HOOKS,
            Some(OPS_TOKEN),
            None,
            None,
            bad,
            "invalid_request",
        ),
        (
            &get,
            HOOKS,
            Some(OPS_TOKEN),
            Some("acme"),
            None,
            bad,
            "invalid_request",
        ),
        // Another company's endpoint is a 404, never a 403 that confirms it exists.
        (
            &get,
            &one,
            Some(OPS_TOKEN),
            Some(OTHER_COMPANY),
            None,
            missing,
            "not_found",
        ),
        (
            &delete,
            &one,
            Some(OPS_TOKEN),
            Some(OTHER_COMPANY),
            None,
            missing,
            "not_found",
        ),
        (
            &get,
            &not_a_uuid,
            Some(OPS_TOKEN),
            Some(COMPANY),
            None,
            missing,
            "not_found",
        ),
    ];
    for (method, path, token, company, body, status, code) in cases {
        let reply = server
            .api(method.clone(), path, token, company, body.cloned())
            .await;
        assert_error(&reply, status, code);
    }
    // A token of another scheme than Bearer is no token.
    let basic = format!("Basic {OPS_TOKEN}");
    let reply = call(
        server.admin,
        Method::GET,
        HOOKS,
        &[("authorization", &basic), ("x-company", COMPANY)],
        Default::default(),
    )
    .await;
    assert_error(&reply, unauthorized, "unauthorized");
    let reply = server
        .api(Method::GET, &one, Some(SCOPED_TOKEN), Some(COMPANY), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn validation_errors() {
    let server = server_with(
        ConfigSpec::new(None).set(
            "events",
            "catalog = [\"invoice.created\", \"invoice.paid\"]",
        ),
        "",
    )
    .await;
    let long_url = format!("https://localhost/{}", "a".repeat(2048));
    let eleven: Vec<String> = (0..11).map(|i| format!("e{i}")).collect();
    let cases = [
        (
            json!({"url": "http://localhost/", "events": ["invoice.paid"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"url": "ftp://example.com/", "events": ["invoice.paid"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"url": "not a url", "events": ["invoice.paid"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"url": long_url, "events": ["invoice.paid"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"url": "https://localhost/", "events": eleven}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"url": "https://localhost/", "events": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"url": "https://localhost/", "events": ["invoice.deleted"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"url": "https://localhost/", "events": ["*"], "description": "d".repeat(256)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"url": "https://localhost/", "events": ["*"], "scheme": "md5"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"events": ["*"]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"url": 42, "events": ["*"]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            // A caller's own secret is taken, in the scheme's format only (issue 20).
            json!({"url": "https://localhost/", "events": ["*"], "secret": "whsec_mine"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (json!([1, 2]), StatusCode::BAD_REQUEST, "invalid_request"),
    ];
    for (body, status, code) in cases {
        let reply = server
            .api(
                Method::POST,
                HOOKS,
                Some(OPS_TOKEN),
                Some(COMPANY),
                Some(body.clone()),
            )
            .await;
        assert_error(&reply, status, code);
    }
    let reply = call(
        server.admin,
        Method::POST,
        HOOKS,
        &[
            ("authorization", &format!("Bearer {OPS_TOKEN}")),
            ("x-company", COMPANY),
            ("content-type", "application/json"),
        ],
        "{\"url\": ".into(),
    )
    .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    let list = server
        .api(Method::GET, HOOKS, Some(OPS_TOKEN), Some(COMPANY), None)
        .await;
    assert_eq!(
        list.json()["data"].as_array().unwrap().len(),
        0,
        "an invalid create was stored"
    );

    let events = server
        .api(
            Method::GET,
            &format!("{HOOKS}/events"),
            Some(VIEW_TOKEN),
            Some(COMPANY),
            None,
        )
        .await;
    assert_eq!(events.status, StatusCode::OK);
    assert_eq!(
        events.json()["data"],
        json!(["invoice.created", "invoice.paid"])
    );
}

#[tokio::test]
async fn patch_delete_and_the_proxy_follow_changes() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let server = server_with(ConfigSpec::new(Some(&pki)), "").await;
    let created = server
        .create_webhook(&upstream.url("/first"), &["invoice.created"])
        .await;
    let uuid = created["uuid"].as_str().unwrap().to_owned();
    let one = format!("{HOOKS}/{uuid}");

    let reply = server
        .api(
            Method::PATCH,
            &one,
            Some(OPS_TOKEN),
            Some(COMPANY),
            Some(json!({"url": upstream.url("/second"), "events": ["invoice.paid"], "description": "renamed"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let patched = reply.json();
    assert_eq!(patched["description"], "renamed");
    assert_eq!(patched["events"], json!(["invoice.paid"]));
    assert_eq!(patched["secret"], "whsec_••••••••••••••••••••••••");

    let delivered = server
        .deliver(
            &[("x-webhook-id", &uuid), ("x-webhook-event", "invoice.paid")],
            "{}",
        )
        .await;
    assert_eq!(delivered.status, StatusCode::OK);
    assert_eq!(upstream.requests()[0].target, "/second");

    let reply = server
        .api(
            Method::PATCH,
            &one,
            Some(OPS_TOKEN),
            Some(COMPANY),
            Some(json!({"isActive": false})),
        )
        .await;
    assert_eq!(reply.json()["status"], "disabled");
    let refused = server.deliver(&[("x-webhook-id", &uuid)], "{}").await;
    assert_eq!(refused.hooksign_error(), Some("webhook_inactive"));
    let reply = server
        .api(
            Method::PATCH,
            &one,
            Some(OPS_TOKEN),
            Some(COMPANY),
            Some(json!({"isActive": true})),
        )
        .await;
    assert_eq!(reply.json()["isActive"], true);

    let reply = server
        .api(
            Method::PATCH,
            &one,
            Some(OPS_TOKEN),
            Some(COMPANY),
            Some(json!({"url": "http://localhost/"})),
        )
        .await;
    assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let reply = server
        .api(
            Method::PATCH,
            &one,
            Some(OPS_TOKEN),
            Some(COMPANY),
            Some(json!({"secret": "x"})),
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");

    let reply = server
        .api(Method::DELETE, &one, Some(OPS_TOKEN), Some(COMPANY), None)
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = server
        .api(Method::GET, &one, Some(OPS_TOKEN), Some(COMPANY), None)
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
    let reply = server
        .api(Method::DELETE, &one, Some(OPS_TOKEN), Some(COMPANY), None)
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
    let refused = server.deliver(&[("x-webhook-id", &uuid)], "{}").await;
    assert_eq!(refused.hooksign_error(), Some("unknown_webhook"));
}

#[tokio::test]
async fn every_rotation_signs_the_next_delivery() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let server = server_with(ConfigSpec::new(Some(&pki)), "").await;
    let created = server.create_webhook(&upstream.url("/r"), &["*"]).await;
    let uuid = created["uuid"].as_str().unwrap().to_owned();
    let mut previous = created["secret"].as_str().unwrap().to_owned();
    for i in 0..50 {
        let reply = server
            .api(
                Method::POST,
                &format!("{HOOKS}/{uuid}/regenerate-secret"),
                Some(OPS_TOKEN),
                Some(COMPANY),
                None,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let secret = reply.json()["secret"].as_str().unwrap().to_owned();
        assert_ne!(secret, previous);
        let body = format!("{{\"rotation\":{i}}}");
        let delivered = server
            .deliver(&[("x-webhook-id", &uuid)], body.clone())
            .await;
        assert_eq!(delivered.status, StatusCode::OK);
        let seen = upstream.requests().pop().unwrap();
        assert_eq!(
            seen.headers["x-storno-signature"],
            reference_hmac_hex(secret.as_bytes(), body.as_bytes()),
            "rotation {i}: the delivery after it was not signed with the new secret"
        );
        previous = secret;
    }
    let metrics = server.admin_get("/metrics").await.text();
    assert!(
        metrics.contains("hooksign_secret_rotations_total 50"),
        "{metrics}"
    );

    let masked = server
        .api(
            Method::GET,
            &format!("{HOOKS}/{uuid}"),
            Some(OPS_TOKEN),
            Some(COMPANY),
            None,
        )
        .await;
    assert!(!masked.text().contains(&previous));
    let path = format!("{HOOKS}/{uuid}/regenerate-secret");
    let regenerate = |body| {
        server.api(
            Method::POST,
            &path,
            Some(OPS_TOKEN),
            Some(COMPANY),
            Some(body),
        )
    };
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    for (body, status, code, says) in [
        // storno receivers compare one signature: no overlap window.
        (
            json!({"previousSecretExpiresIn": 60}),
            unprocessable,
            "validation_failed",
            "storno",
        ),
        (
            json!({"previousSecretExpiresIn": 90000}),
            unprocessable,
            "validation_failed",
            "previousSecretExpiresIn",
        ),
        (
            json!({"expiresIn": 0}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expiresIn",
        ),
    ] {
        let reply = regenerate(body).await;
        assert_error(&reply, status, code);
        assert!(reply.text().contains(says), "{}", reply.text());
    }
    let reply = regenerate(json!({"previousSecretExpiresIn": 0})).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn test_route_sends_a_signed_event() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let server = server_with(ConfigSpec::new(Some(&pki)), "").await;
    let created = server
        .create_webhook(&upstream.url("/t"), &["invoice.paid"])
        .await;
    let uuid = created["uuid"].as_str().unwrap();
    let secret = created["secret"].as_str().unwrap();
    let reply = server
        .api(
            Method::POST,
            &format!("{HOOKS}/{uuid}/test"),
            Some(OPS_TOKEN),
            Some(COMPANY),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let report = reply.json();
    assert_eq!(report["delivered"], true);
    assert_eq!(report["statusCode"], 200);
    assert!(report["durationMs"].is_u64());
    assert_eq!(report["error"], Value::Null);
    let seen = upstream.requests().pop().unwrap();
    assert_eq!(seen.headers["x-webhook-event"], "webhook.test");
    assert_eq!(
        seen.headers["x-storno-signature"],
        reference_hmac_hex(secret.as_bytes(), &seen.body)
    );
    let event: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(event["type"], "webhook.test");
    assert_eq!(event["data"]["webhookUuid"], uuid);

    // An endpoint that cannot be reached: reported, not a 5xx.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = server
        .create_webhook(&format!("https://localhost:{port}/"), &["*"])
        .await;
    let reply = server
        .api(
            Method::POST,
            &format!("{HOOKS}/{}/test", dead["uuid"].as_str().unwrap()),
            Some(OPS_TOKEN),
            Some(COMPANY),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["delivered"], false);
    assert_eq!(reply.json()["error"], "upstream_unreachable");
    assert_eq!(reply.json()["statusCode"], Value::Null);
}

#[tokio::test]
async fn rate_limit_answers_429_with_headers() {
    let server = server_with(
        ConfigSpec::new(None).set("admin", "rate_limit_per_minute = 3"),
        "",
    )
    .await;
    for _ in 0..3 {
        let reply = server
            .api(Method::GET, HOOKS, Some(OPS_TOKEN), Some(COMPANY), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let reply = server
        .api(Method::GET, HOOKS, Some(OPS_TOKEN), Some(COMPANY), None)
        .await;
    assert_error(&reply, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(reply.headers["x-ratelimit-limit"], "3");
    assert_eq!(reply.headers["x-ratelimit-remaining"], "0");
    let retry: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let reset: u64 = reply.headers["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(reset > now && reset <= now + 61, "{reset} vs {now}");
    // The limit is per token: another token is not limited.
    let reply = server
        .api(Method::GET, HOOKS, Some(VIEW_TOKEN), Some(COMPANY), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn every_error_uses_the_envelope() {
    let server = server().await;
    let reply = server
        .api(
            Method::GET,
            "/api/v1/nothing-here",
            Some(OPS_TOKEN),
            Some(COMPANY),
            None,
        )
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
    let reply = server
        .api(Method::PUT, HOOKS, Some(OPS_TOKEN), Some(COMPANY), None)
        .await;
    assert_error(&reply, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let reply = server.admin_get("/healthz").await;
    assert!(reply.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let server = server().await;
    let reply = server.admin_get("/api/v1/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/v1/webhooks",
        "/api/v1/webhooks/{uuid}",
        "/api/v1/webhooks/{uuid}/regenerate-secret",
        "/api/v1/webhooks/{uuid}/revoke-previous",
        "/api/v1/webhooks/{uuid}/test",
        "/api/v1/webhooks/events",
    ] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    // Issue 20: caller-supplied secrets and windows up to 7 days are in the document.
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["CreateWebhook"]["properties"]["secret"].is_object());
    let rotate = &schemas["RegenerateSecret"]["properties"];
    assert!(rotate["secret"].is_object());
    assert_eq!(rotate["previousSecretExpiresIn"]["maximum"], 604800);
    for method in ["get", "patch", "delete"] {
        assert!(
            paths["/api/v1/webhooks/{uuid}"].get(method).is_some(),
            "{method}"
        );
    }
}

#[tokio::test]
async fn delivery_records_and_auto_disable() {
    let pki = Pki::new();
    let failing = Upstream::start(
        &pki,
        UpstreamOptions {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            ..Default::default()
        },
    )
    .await;
    let healthy = Upstream::start(&pki, UpstreamOptions::default()).await;
    let server = server_with(
        ConfigSpec::new(Some(&pki)).set("proxy", "auto_disable_after = 3"),
        "",
    )
    .await;
    let good = server.create_webhook(&healthy.url("/"), &["*"]).await;
    let bad = server.create_webhook(&failing.url("/"), &["*"]).await;
    let (good_id, bad_id) = (
        good["uuid"].as_str().unwrap(),
        bad["uuid"].as_str().unwrap(),
    );

    for _ in 0..2 {
        assert_eq!(
            server
                .deliver(&[("x-webhook-id", good_id)], "{}")
                .await
                .status,
            StatusCode::OK
        );
    }
    let view = server
        .api(
            Method::GET,
            &format!("{HOOKS}/{good_id}"),
            Some(OPS_TOKEN),
            Some(COMPANY),
            None,
        )
        .await
        .json();
    assert_eq!(view["deliveriesCount"], 2);
    assert_eq!(view["lastDeliveryStatus"], "success");
    assert_eq!(view["consecutiveFailures"], 0);
    assert!(view["lastDeliveryAt"].as_str().unwrap().ends_with('Z'));

    for _ in 0..3 {
        let reply = server.deliver(&[("x-webhook-id", bad_id)], "{}").await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    // auto_disabled is persisted off the request path: wait for it (bounded).
    let mut status = Value::Null;
    for _ in 0..100 {
        let view = server
            .api(
                Method::GET,
                &format!("{HOOKS}/{bad_id}"),
                Some(OPS_TOKEN),
                Some(COMPANY),
                None,
            )
            .await
            .json();
        status = view["status"].clone();
        if status == "auto_disabled" {
            assert_eq!(view["consecutiveFailures"], 3);
            assert_eq!(view["lastDeliveryStatus"], "failed");
            assert_eq!(view["isActive"], false);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, "auto_disabled");
    let text = std::fs::read_to_string(server.dir.path().join("webhooks.toml")).unwrap();
    assert!(text.contains("status = \"auto_disabled\""), "{text}");
    let refused = server.deliver(&[("x-webhook-id", bad_id)], "{}").await;
    assert_eq!(refused.hooksign_error(), Some("webhook_inactive"));

    let reply = server
        .api(
            Method::PATCH,
            &format!("{HOOKS}/{bad_id}"),
            Some(OPS_TOKEN),
            Some(COMPANY),
            Some(json!({"isActive": true})),
        )
        .await;
    assert_eq!(reply.json()["status"], "active");
    assert_eq!(reply.json()["consecutiveFailures"], 0);
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let mut binary = TestBinary::start(&ConfigSpec::new(None).with_tokens(), "");
    let mut expected: Vec<(String, String)> = Vec::new();
    for round in 0..4 {
        let created = api_call(
            binary.admin,
            Method::POST,
            HOOKS,
            Some(OPS_TOKEN),
            Some(COMPANY),
            Some(json!({"url": format!("https://localhost/round{round}/"), "events": ["*"]})),
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED);
        let created = created.json();
        let uuid = created["uuid"].as_str().unwrap().to_owned();
        binary.kill9();
        binary.restart();

        let rotated = api_call(
            binary.admin,
            Method::POST,
            &format!("{HOOKS}/{uuid}/regenerate-secret"),
            Some(OPS_TOKEN),
            Some(COMPANY),
            None,
        )
        .await;
        assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text());
        let secret = rotated.json()["secret"].as_str().unwrap().to_owned();
        binary.kill9();
        expected.push((uuid, secret));

        let text = std::fs::read_to_string(binary.store_path()).unwrap();
        hooksign::store::file::parse_store(&text, "webhooks.toml", None)
            .expect("the store still parses");
        for (uuid, secret) in &expected {
            assert!(text.contains(uuid.as_str()), "round {round}: {uuid} lost");
            assert!(
                text.contains(secret.as_str()),
                "round {round}: rotation of {uuid} lost"
            );
        }
        binary.restart();
    }
    let list = api_call(
        binary.admin,
        Method::GET,
        HOOKS,
        Some(OPS_TOKEN),
        Some(COMPANY),
        None,
    )
    .await;
    assert_eq!(
        list.json()["data"].as_array().unwrap().len(),
        expected.len()
    );
    let leftovers: Vec<_> = std::fs::read_dir(binary.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("hooksign-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[tokio::test]
async fn concurrent_creates_all_land_and_survive_a_restart() {
    let mut binary = TestBinary::start(
        &ConfigSpec::new(None)
            .with_tokens()
            .set("admin", "rate_limit_per_minute = 1000"),
        "",
    );
    let admin = binary.admin;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            tokio::spawn(async move {
                api_call(
                    admin,
                    Method::POST,
                    HOOKS,
                    Some(OPS_TOKEN),
                    Some(COMPANY),
                    Some(json!({"url": format!("https://localhost/c{i}/"), "events": ["*"]})),
                )
                .await
            })
        })
        .collect();
    let mut uuids = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        uuids.push(reply.json()["uuid"].as_str().unwrap().to_owned());
    }
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(Duration::from_secs(10)), Some(0));
    binary.restart();
    let list = api_call(
        binary.admin,
        Method::GET,
        HOOKS,
        Some(OPS_TOKEN),
        Some(COMPANY),
        None,
    )
    .await;
    let listed: Vec<String> = list.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["uuid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed.len(), 50);
    for uuid in &uuids {
        assert!(listed.contains(uuid), "{uuid} lost");
    }
}

#[tokio::test]
async fn secrets_and_tokens_never_reach_logs_or_error_bodies() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let mut binary = TestBinary::start(&ConfigSpec::new(Some(&pki)).with_tokens(), "");
    let created = api_call(
        binary.admin,
        Method::POST,
        HOOKS,
        Some(OPS_TOKEN),
        Some(COMPANY),
        Some(json!({"url": upstream.url("/"), "events": ["*"]})),
    )
    .await
    .json();
    let uuid = created["uuid"].as_str().unwrap();
    let mut secrets = vec![created["secret"].as_str().unwrap().to_owned()];
    let mut bodies = Vec::new();
    let rotated = api_call(
        binary.admin,
        Method::POST,
        &format!("{HOOKS}/{uuid}/regenerate-secret"),
        Some(OPS_TOKEN),
        Some(COMPANY),
        None,
    )
    .await;
    secrets.push(rotated.json()["secret"].as_str().unwrap().to_owned());
    bodies.push(
        api_call(
            binary.admin,
            Method::POST,
            HOOKS,
            Some(VIEW_TOKEN),
            Some(COMPANY),
            Some(json!({"url": "https://localhost/x/", "events": ["*"]})),
        )
        .await
        .text(),
    );
    bodies.push(
        api_call(
            binary.admin,
            Method::GET,
            HOOKS,
            Some("hks_not_a_token"),
            Some(COMPANY),
            None,
        )
        .await
        .text(),
    );
    bodies.push(
        api_call(
            binary.admin,
            Method::POST,
            &format!("{HOOKS}/{uuid}/test"),
            Some(OPS_TOKEN),
            Some(COMPANY),
            None,
        )
        .await
        .text(),
    );
    let delivery = call(
        binary.proxy,
        Method::POST,
        "/",
        &[("x-webhook-id", uuid)],
        "{\"a\":1}".into(),
    )
    .await;
    assert_eq!(delivery.status, StatusCode::OK);
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(Duration::from_secs(10)), Some(0));

    let log = std::fs::read_to_string(binary.log_path()).unwrap();
    assert!(
        log.contains("endpoint created"),
        "the log was not captured: {log}"
    );
    for secret in &secrets {
        let hex = &secret["whsec_".len()..];
        assert!(!log.contains(hex), "a secret reached the log");
        for body in &bodies {
            assert!(
                !body.contains(hex),
                "a secret reached an error body: {body}"
            );
        }
    }
    for token in [OPS_TOKEN, VIEW_TOKEN, "hks_not_a_token"] {
        assert!(!log.contains(token), "a token reached the log");
    }
}

#[tokio::test]
async fn delivery_records_are_flushed_on_shutdown() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/"));
    let mut binary = TestBinary::start(&ConfigSpec::new(Some(&pki)), &store_toml(&[&endpoint]));
    for _ in 0..3 {
        let reply = call(
            binary.proxy,
            Method::POST,
            "/",
            &[("x-webhook-id", &endpoint.uuid)],
            "{}".into(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    binary.signal("TERM");
    assert_eq!(binary.wait_exit(Duration::from_secs(10)), Some(0));
    let text = std::fs::read_to_string(binary.store_path()).unwrap();
    assert!(text.contains("deliveries_count = 3"), "{text}");
    assert!(
        text.contains("last_delivery_status = \"success\""),
        "{text}"
    );
}

#[tokio::test]
async fn schemes_through_the_api_overlap_and_public_keys() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let server = server_with(ConfigSpec::new(Some(&pki)), "").await;
    let created = server
        .api(
            Method::POST,
            HOOKS,
            Some(OPS_TOKEN),
            Some(COMPANY),
            Some(json!({"url": upstream.url("/s"), "events": ["*"], "scheme": "stripe"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let created = created.json();
    assert_eq!(created["scheme"], "stripe");
    let uuid = created["uuid"].as_str().unwrap();
    let rotated = server
        .api(
            Method::POST,
            &format!("{HOOKS}/{uuid}/regenerate-secret"),
            Some(OPS_TOKEN),
            Some(COMPANY),
            Some(json!({"previousSecretExpiresIn": 600})),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text());
    let rotated = rotated.json();
    assert!(rotated["previousSecretExpiresAt"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    let fetched = server
        .api(
            Method::GET,
            &format!("{HOOKS}/{uuid}"),
            Some(OPS_TOKEN),
            Some(COMPANY),
            None,
        )
        .await
        .json();
    assert_eq!(
        fetched["previousSecretExpiresAt"],
        rotated["previousSecretExpiresAt"]
    );
    assert!(!fetched
        .to_string()
        .contains(created["secret"].as_str().unwrap()));

    let reply = server.deliver(&[("x-webhook-id", uuid)], "{\"s\":1}").await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = upstream.requests().pop().unwrap();
    let header = seen.headers["stripe-signature"]
        .to_str()
        .unwrap()
        .to_owned();
    let t = header
        .split(',')
        .find_map(|p| p.strip_prefix("t="))
        .unwrap();
    let signed = format!("{t}.{{\"s\":1}}");
    let v1: Vec<&str> = header
        .split(',')
        .filter_map(|p| p.strip_prefix("v1="))
        .collect();
    let new = reference_hmac_hex(
        rotated["secret"].as_str().unwrap().as_bytes(),
        signed.as_bytes(),
    );
    let old = reference_hmac_hex(
        created["secret"].as_str().unwrap().as_bytes(),
        signed.as_bytes(),
    );
    assert_eq!(
        v1,
        vec![new.as_str(), old.as_str()],
        "new signature first, then the previous"
    );

    let ed = server
        .api(
            Method::POST,
            HOOKS,
            Some(OPS_TOKEN),
            Some(COMPANY),
            Some(json!({"url": upstream.url("/e"), "events": ["*"], "scheme": "standard-webhooks-ed25519"})),
        )
        .await;
    assert_eq!(ed.status, StatusCode::CREATED, "{}", ed.text());
    let ed = ed.json();
    assert!(ed["publicKey"].as_str().unwrap().starts_with("whpk_"));
    assert!(ed["secret"].as_str().unwrap().starts_with("whsk_"));
    let listed = server
        .api(Method::GET, HOOKS, Some(OPS_TOKEN), Some(COMPANY), None)
        .await
        .json();
    let entry = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["uuid"] == ed["uuid"])
        .unwrap()
        .clone();
    assert_eq!(entry["publicKey"], ed["publicKey"]);
    assert_eq!(entry["secret"], "whsk_••••••••••••••••••••••••");
}

#[tokio::test]
async fn create_refuses_forbidden_destinations() {
    let server = server_with(
        ConfigSpec::new(None).set("egress", "allow_private = false"),
        "",
    )
    .await;
    for url in [
        "https://169.254.169.254/latest/meta-data",
        "https://127.1/",
        "https://[::ffff:10.0.0.1]/",
        "https://localhost/",
    ] {
        let reply = server
            .api(
                Method::POST,
                HOOKS,
                Some(OPS_TOKEN),
                Some(COMPANY),
                Some(json!({"url": url, "events": ["*"]})),
            )
            .await;
        assert_error(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
    let list = server
        .api(Method::GET, HOOKS, Some(OPS_TOKEN), Some(COMPANY), None)
        .await;
    assert_eq!(list.json()["data"].as_array().unwrap().len(), 0);
}
