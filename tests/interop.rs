//! Interop: deliveries signed by a running hooksign (in-process, recording TLS upstream) are
//! verified by the receivers' own libraries: Python `standardwebhooks` 1.1.0, `stripe` 16.1.0,
//! `cryptography` (Ed25519), and GitHub's documented HMAC snippet (also with ten previous keys
//! signing at once, issue 20), through
//! `tests/interop/verify.py`.
//!
//! Enabled by `HOOKSIGN_INTEROP_PYTHON`, the path of a Python with those packages (`.ci/run`
//! creates the venv and sets it). Unset, the test prints that it is skipped and passes.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use hooksign::signing::Scheme;
use http::StatusCode;
use support::*;

/// UTF-8 and non-empty: no receiver library verifies anything else (see the field notes).
const BODY: &str =
    r#"{"type":"invoice.paid","data":{"id":"inv_7","customer":"Zoë","amount":"99.00 €"}}"#;

#[tokio::test]
async fn receivers_libraries_verify_every_scheme() {
    let Some(python) = std::env::var_os("HOOKSIGN_INTEROP_PYTHON") else {
        println!("interop skipped: HOOKSIGN_INTEROP_PYTHON is not set");
        return;
    };
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let mut endpoints = Vec::new();
    for scheme in Scheme::ALL {
        endpoints.push((
            scheme,
            EndpointSpec::with_scheme(upstream.url("/in"), scheme),
        ));
        if scheme.allows_overlap() {
            let mut rotated = EndpointSpec::with_scheme(upstream.url("/in"), scheme);
            let previous = EndpointSpec::with_scheme("", scheme).secret;
            rotated.previous = Some((previous, "2999-01-01T00:00:00Z".to_owned()));
            endpoints.push((scheme, rotated));
        }
    }
    let refs: Vec<&EndpointSpec> = endpoints.iter().map(|(_, e)| e).collect();
    let mut store = store_toml(&refs);
    // Ten previous keys at once (issue 20): every receiver library accepts the delivery under
    // each of the eleven keys.
    let mut many = Vec::new();
    for scheme in Scheme::ALL.into_iter().filter(|s| s.allows_overlap()) {
        let endpoint = EndpointSpec::with_scheme(upstream.url("/in"), scheme);
        let previous: Vec<String> = (0..10)
            .map(|_| EndpointSpec::with_scheme("", scheme).secret)
            .collect();
        let expiries = vec!["\"2999-01-01T00:00:00Z\"".to_owned(); 10];
        let quoted: Vec<String> = previous.iter().map(|p| format!("{p:?}")).collect();
        store.push_str(&endpoint.toml().replacen(
            "\nsecret = ",
            &format!(
                "\nprevious_secrets = [{}]\nprevious_secrets_expire_at = [{}]\nsecret = ",
                quoted.join(", "),
                expiries.join(", ")
            ),
            1,
        ));
        many.push((scheme, endpoint, previous));
    }
    let server = TestServer::start(&ConfigSpec::new(Some(&pki)), &store).await;

    let mut cases = Vec::new();
    for (scheme, endpoint) in &endpoints {
        let reply = server
            .deliver(&[("x-webhook-id", &endpoint.uuid)], BODY)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{scheme}: {}", reply.text());
        let seen = upstream.requests().pop().unwrap();
        let headers: serde_json::Map<String, serde_json::Value> = seen
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().into()))
            .collect();
        let mut keys = vec![endpoint.secret.clone()];
        keys.extend(endpoint.previous.as_ref().map(|(secret, _)| secret.clone()));
        if *scheme == Scheme::StandardWebhooksEd25519 {
            keys = keys.iter().map(|k| public_key(*scheme, k)).collect();
        }
        cases.push(serde_json::json!({
            "scheme": scheme.as_str(),
            "body": std::str::from_utf8(&seen.body).unwrap(),
            "headers": headers,
            "keys": keys,
        }));
    }
    for (scheme, endpoint, previous) in &many {
        let reply = server
            .deliver(&[("x-webhook-id", &endpoint.uuid)], BODY)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{scheme}: {}", reply.text());
        let seen = upstream.requests().pop().unwrap();
        let headers: serde_json::Map<String, serde_json::Value> = seen
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().into()))
            .collect();
        let mut keys = vec![endpoint.secret.clone()];
        keys.extend(previous.iter().cloned());
        if *scheme == Scheme::StandardWebhooksEd25519 {
            keys = keys.iter().map(|k| public_key(*scheme, k)).collect();
        }
        assert_eq!(keys.len(), 11);
        cases.push(serde_json::json!({
            "scheme": scheme.as_str(),
            "body": std::str::from_utf8(&seen.body).unwrap(),
            "headers": headers,
            "keys": keys,
        }));
    }

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/verify.py");
    let mut child = Command::new(&python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("running {python:?}: {err}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::Value::Array(cases).to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "receiver libraries refused hooksign's signatures:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok")).count(),
        endpoints.len() + many.len()
    );
}

/// The `whpk_` public key of a `whsk_` secret, as the endpoint exposes it.
fn public_key(scheme: Scheme, secret: &str) -> String {
    let signer = hooksign::signing::EndpointSigner::new(
        scheme,
        &hooksign::secret::Secret::new(secret.to_owned()),
    )
    .unwrap();
    signer.public_key().unwrap()
}

/// GitHub's and storno's receivers as Node users write them: `crypto.createHmac` over the raw
/// body and `crypto.timingSafeEqual`.
#[tokio::test]
async fn node_crypto_verifies_github_and_storno() {
    if Command::new("node").arg("--version").output().is_err() {
        println!("node interop skipped: node is not on PATH");
        return;
    }
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let github = EndpointSpec::with_scheme(upstream.url("/gh"), Scheme::Github);
    let storno = EndpointSpec::with_scheme(upstream.url("/st"), Scheme::Storno);
    let server = TestServer::start(
        &ConfigSpec::new(Some(&pki)),
        &store_toml(&[&github, &storno]),
    )
    .await;
    const VERIFY: &str = r#"
        const crypto = require('crypto');
        const body = Buffer.from(process.env.BODY, 'base64');
        const digest = crypto.createHmac('sha256', process.env.SECRET).update(body).digest('hex');
        const expected = Buffer.from(process.env.PREFIX + digest);
        const given = Buffer.from(process.env.SIGNATURE);
        process.exit(expected.length === given.length && crypto.timingSafeEqual(expected, given) ? 0 : 1);
    "#;
    for (endpoint, header, prefix) in [
        (&github, "x-hub-signature-256", "sha256="),
        (&storno, "x-storno-signature", ""),
    ] {
        let reply = server
            .deliver(&[("x-webhook-id", &endpoint.uuid)], BODY)
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        let seen = upstream.requests().pop().unwrap();
        let signature = seen.headers[header].to_str().unwrap().to_owned();
        let verify = |secret: &str, body: &[u8]| {
            use base64::Engine as _;
            Command::new("node")
                .arg("-e")
                .arg(VERIFY)
                .env(
                    "BODY",
                    base64::engine::general_purpose::STANDARD.encode(body),
                )
                .env("SECRET", secret)
                .env("PREFIX", prefix)
                .env("SIGNATURE", &signature)
                .status()
                .unwrap()
                .success()
        };
        assert!(
            verify(&endpoint.secret, &seen.body),
            "{header}: node refused hooksign's signature"
        );
        assert!(
            !verify(&endpoint.secret, b"tampered"),
            "{header}: node accepted a changed body"
        );
        assert!(
            !verify("whsec_wrong", &seen.body),
            "{header}: node accepted a wrong secret"
        );
    }
}
