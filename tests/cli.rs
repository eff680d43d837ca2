//! The command line, run as the real binary: exit codes and output of every subcommand.

mod support;

use std::time::Duration;

use sha2::{Digest, Sha256};
use support::*;

#[test]
fn check_accepts_a_good_config_and_store() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = EndpointSpec::new("https://example.com/hooks");
    let path = ConfigSpec::new(None).write(dir.path(), &store_toml(&[&endpoint]));
    let (code, stdout, stderr) = run_binary(&["check", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("1 endpoints"), "{stdout}");
}

#[test]
fn check_prints_every_config_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigSpec::new(None)
        .set("proxy", "upstream_timeout = \"soon\"")
        .set("log", "format = \"xml\"");
    let path = config.write(dir.path(), "");
    let (code, _, stderr) = run_binary(&["check", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("proxy.upstream_timeout"), "{stderr}");
    assert!(stderr.contains("log.format"), "{stderr}");
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
}

#[test]
fn check_reports_store_problems_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let good = EndpointSpec::new("https://example.com/a");
    let bad = EndpointSpec::new("ftp://example.com/b");
    let mut duplicate = EndpointSpec::new("https://example.com/c");
    duplicate.uuid = good.uuid.clone();
    let path = ConfigSpec::new(None).write(dir.path(), &store_toml(&[&good, &bad, &duplicate]));
    let (code, _, stderr) = run_binary(&["check", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 1, "{stderr}");
    // Each table is 8 lines and a blank one: the second table's url is on line 13.
    assert!(
        stderr.contains("webhooks[1].url (line 13, column 1)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("webhooks[2].uuid (line 20, column 1): duplicate"),
        "{stderr}"
    );
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
    assert!(
        !stderr.contains(&bad.secret[6..]),
        "a secret leaked: {stderr}"
    );

    std::fs::write(dir.path().join("webhooks.toml"), "[[webhooks]\nuuid = 1\n").unwrap();
    let (code, _, stderr) = run_binary(&["check", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 1);
    assert!(stderr.contains("line 1"), "{stderr}");
}

#[test]
fn unknown_config_keys_fail_check_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let path = ConfigSpec::new(None)
        .set("proxy", "max_body_byte = 10")
        .write(dir.path(), "");
    let (code, _, stderr) = run_binary(&["check", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("max_body_byte") && stderr.contains("line"),
        "{stderr}"
    );
    let (code, _, stderr) = run_binary(&["serve", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 64, "serve must exit 64 on a bad config: {stderr}");
}

#[test]
fn serve_exits_64_on_a_missing_config_or_broken_store() {
    let (code, _, stderr) = run_binary(&["serve", "--config", "/nonexistent/hooksign.toml"], None);
    assert_eq!(code, 64, "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let path = ConfigSpec::new(None).write(dir.path(), "not toml at all = = =");
    let (code, _, stderr) = run_binary(&["serve", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 64, "{stderr}");
}

#[test]
fn sign_matches_an_independent_hmac_and_verify_agrees() {
    let secret = "whsec_9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let body = b"{\"event\":\"invoice.created\"}";
    let expected = reference_hmac_hex(secret.as_bytes(), body);

    let (code, stdout, _) = run_binary(&["sign", "--secret", secret], Some(body));
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), expected);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    std::fs::write(&file, body).unwrap();
    let (code, stdout, _) = run_binary(&["sign", "--secret", secret, file.to_str().unwrap()], None);
    assert_eq!((code, stdout.trim()), (0, expected.as_str()));

    let (code, _, _) = run_binary(
        &["verify", "--secret", secret, "--signature", &expected],
        Some(body),
    );
    assert_eq!(code, 0);
    let (code, _, _) = run_binary(
        &["verify", "--secret", secret, "--signature", &expected],
        Some(b"tampered"),
    );
    assert_eq!(code, 1);
    let (code, _, _) = run_binary(
        &[
            "verify",
            "--secret",
            "whsec_0000000000000000000000000000000000000000000000000000000000000000",
            "--signature",
            &expected,
            file.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 1);
}

#[test]
fn token_prints_a_token_and_its_hash() {
    let (code, stdout, _) = run_binary(&["token"], None);
    assert_eq!(code, 0);
    let token = stdout
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("a token line");
    assert!(token.len() >= 40, "{token}");
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    assert!(
        stdout.contains(&format!("sha256 = \"{digest}\"")),
        "{stdout}"
    );
    assert!(stdout.contains("[[admin.tokens]]"));
    // The printed lines are a valid config.
    let config_lines: String = stdout
        .lines()
        .skip_while(|l| !l.starts_with("[["))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config_lines).unwrap();
    assert!(hooksign::config::Config::load(&path).is_ok());
    let (_, again, _) = run_binary(&["token"], None);
    assert_ne!(again, stdout, "two tokens were the same");
}

#[test]
fn healthcheck_follows_the_admin_port() {
    let binary = TestBinary::start(&ConfigSpec::new(None), "");
    // healthcheck reads admin.listen from the config; point one at the running binary's port.
    let dir = tempfile::tempdir().unwrap();
    let live = ConfigSpec::new(None)
        .set("admin", &format!("listen = \"{}\"", binary.admin))
        .write(dir.path(), "");
    let (code, _, stderr) = run_binary(&["healthcheck", "--config", live.to_str().unwrap()], None);
    assert_eq!(code, 0, "{stderr}");

    drop(binary);
    std::thread::sleep(Duration::from_millis(100));
    let (code, _, stderr) = run_binary(&["healthcheck", "--config", live.to_str().unwrap()], None);
    assert_eq!(
        code, 1,
        "healthcheck passed with nothing listening: {stderr}"
    );
}

#[tokio::test]
async fn the_binary_delivers_and_stops_on_sigterm() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/in"));
    let mut binary = TestBinary::start(&ConfigSpec::new(Some(&pki)), &store_toml(&[&endpoint]));

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let request = http::Request::post(format!("http://{}/", binary.proxy))
        .header("x-webhook-id", &endpoint.uuid)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"{\"n\":1}",
        )))
        .unwrap();
    let response: http::Response<hyper::body::Incoming> = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.requests().pop().unwrap();
    assert_eq!(
        seen.headers["x-storno-signature"],
        reference_hmac_hex(endpoint.secret.as_bytes(), b"{\"n\":1}")
    );

    binary.signal("TERM");
    let code = tokio::task::spawn_blocking(move || binary.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}
