//! Safe by default: the proxy port off the network (Unix socket, loopback, or remote with
//! tokens), the admin port served under the same limits as the proxy port, reserved signing
//! headers, `check` reporting every problem without quoting a value, the drain, and the CLI's
//! refusals. Real listeners, real sockets, the real binary.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;

use hooksign::config::{Config, Listen};
use hooksign::{AppState, Listeners};
use support::*;

/// Sends one request over a Unix socket; the status and body.
async fn over_unix(
    path: &Path,
    headers: &[(&str, &str)],
    body: &'static str,
) -> (StatusCode, Bytes) {
    let stream = UnixStream::connect(path).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::post("/").header("host", "localhost");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn the_proxy_port_serves_on_a_unix_socket_with_the_configured_mode() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::plain()).await;
    let endpoint = EndpointSpec::new(upstream.url("/hook"));
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run").join("proxy.sock");
    std::fs::create_dir(socket.parent().unwrap()).unwrap();
    // A stale socket file from a crashed run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let config = ConfigSpec::new(Some(&pki))
        .set("egress", "allow_http = true")
        .set("proxy", "listen = \"unix:run/proxy.sock\"")
        .set("proxy", "listen_mode = \"0640\"");
    let path = config.write(dir.path(), &store_toml(&[&endpoint]));
    let config = Config::load(&path).unwrap();
    assert_eq!(
        config.proxy.listen,
        Listen::Unix {
            path: socket.clone(),
            mode: 0o640
        }
    );
    let listeners = Listeners::bind(&config).await.unwrap();
    assert!(listeners
        .ready_line()
        .unwrap()
        .contains(&format!("proxy=unix:{}", socket.display())));
    let state = AppState::build(config).await.unwrap();
    let stop = CancellationToken::new();
    let served = tokio::spawn(hooksign::serve(Arc::clone(&state), listeners, stop.clone()));

    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    let (status, _) = over_unix(
        &socket,
        &[("x-webhook-id", &endpoint.uuid)],
        "over a socket",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(upstream.requests()[0].body, "over a socket");
    let (status, body) = over_unix(&socket, &[], "no id").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!socket.exists(), "the socket file is removed at shutdown");
}

#[test]
fn a_proxy_port_other_hosts_can_reach_needs_an_explicit_opt_in() {
    let parse = |text: &str| Config::parse(text, Path::new("/etc/hooksign/config.toml"));
    let err = parse("[proxy]\nlisten = \"0.0.0.0:8080\"\n").unwrap_err();
    assert!(err.to_string().contains("proxy.allow_remote"), "{err}");
    assert!(parse("[proxy]\nlisten = \"0.0.0.0:8080\"\nallow_remote = true\n").is_ok());
    let local = parse("[proxy]\nlisten = \"localhost:8081\"\n").unwrap();
    assert_eq!(
        local.proxy.listen,
        Listen::Tcp("127.0.0.1:8081".parse().unwrap())
    );
    assert!(
        parse("[admin]\nlisten = \"0.0.0.0:9090\"\n").is_ok(),
        "the admin port has tokens"
    );
}

#[tokio::test]
async fn proxy_tokens_are_required_compared_and_never_forwarded() {
    use sha2::Digest;
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/hook"));
    let mut config = ConfigSpec::new(Some(&pki)).set("proxy", "allow_remote = true");
    for (name, token) in [("billing", "hkp_billing"), ("crm", "hkp_crm")] {
        config = config.extra(&format!(
            "[[proxy.tokens]]\nname = {name:?}\nsha256 = \"{}\"\n",
            hex::encode(sha2::Sha256::digest(token.as_bytes()))
        ));
    }
    let server = TestServer::start(&config, &store_toml(&[&endpoint])).await;
    let id = ("x-webhook-id", endpoint.uuid.as_str());

    for presented in [None, Some("Bearer hkp_wrong"), Some("Basic aGtwX2NybTo=")] {
        let mut headers = vec![id];
        if let Some(value) = presented {
            headers.push(("proxy-authorization", value));
        }
        let reply = server.deliver(&headers, "x").await;
        assert_eq!(reply.status, StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        assert_eq!(reply.hooksign_error(), Some("proxy_unauthorized"));
        assert!(reply.headers.contains_key("proxy-authenticate"));
    }
    assert!(
        upstream.requests().is_empty(),
        "nothing was sent unauthenticated"
    );

    let reply = server
        .deliver(&[id, ("proxy-authorization", "Bearer hkp_crm")], "signed")
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = &upstream.requests()[0];
    assert_eq!(seen.body, "signed");
    assert!(!seen.headers.contains_key("proxy-authorization"));
    let metrics = server.admin_get("/metrics").await.text();
    assert!(
        metrics.contains("outcome=\"proxy_unauthorized\"} 3"),
        "{metrics}"
    );
}

/// Opens `count` connections to `addr` that send nothing.
async fn idle_connections(addr: std::net::SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut open = Vec::new();
    for _ in 0..count {
        open.push(TcpStream::connect(addr).await.unwrap());
    }
    open
}

#[tokio::test]
async fn an_admin_connection_flood_cannot_take_the_proxy_port() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/hook"));
    let config = ConfigSpec::new(Some(&pki))
        .set("admin", "max_connections = 8")
        .set("admin", "header_read_timeout = \"1s\"");
    let server = TestServer::start(&config, &store_toml(&[&endpoint])).await;

    // 40 idle connections (no token needed to open one): only 8 are served at a time.
    let mut flood = idle_connections(server.admin, 40).await;
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        server.deliver(&[("x-webhook-id", &endpoint.uuid)], "still delivering"),
    )
    .await
    .expect("the proxy port answers during the flood");
    assert_eq!(reply.status, StatusCode::OK);

    // Each idle connection is closed by the header deadline, so the port recovers by itself.
    let started = Instant::now();
    assert!(closed_within(&mut flood[0], Duration::from_secs(10)).await);
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(flood);
    let health = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Ok(reply) =
                tokio::time::timeout(Duration::from_secs(2), server.admin_get("/healthz")).await
            {
                return reply.status;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(health, StatusCode::OK);
}

#[tokio::test]
async fn a_slowloris_head_is_cut_at_the_admin_header_deadline() {
    let config = ConfigSpec::new(None).set("admin", "header_read_timeout = \"1s\"");
    let server = TestServer::start(&config, "").await;
    let mut stream = TcpStream::connect(server.admin).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    for _ in 0..20 {
        if stream.write_all(b"a").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(closed_within(&mut stream, Duration::from_secs(5)).await);
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn admin_bodies_are_read_only_after_the_permission_check_and_within_a_deadline() {
    let config = ConfigSpec::new(None)
        .with_tokens()
        .set("admin", "body_read_timeout = \"1s\"")
        .set("admin", "max_body_bytes = 4096");
    let server = TestServer::start(&config, "").await;
    let head = |token: &str, length: usize| {
        format!(
            "POST /api/v1/webhooks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             X-Company: {COMPANY}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
    };
    // A view-only token is refused on its head alone: the body is never waited for.
    let mut stream = TcpStream::connect(server.admin).await.unwrap();
    stream
        .write_all(head(VIEW_TOKEN, 100_000).as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered without the body")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");

    // A manage token whose body drips is cut at the body deadline.
    let mut stream = TcpStream::connect(server.admin).await.unwrap();
    stream
        .write_all(head(OPS_TOKEN, 1000).as_bytes())
        .await
        .unwrap();
    stream.write_all(b"{\"url\":").await.unwrap();
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered at the body deadline")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 4"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A body over max_body_bytes is refused (413) once the caller is allowed.
    let big = serde_json::json!({"url": "https://example.com/", "description": "x".repeat(5000)});
    let reply = server.post_webhook(big).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text()
    );
}

#[test]
fn signing_headers_that_http_hooksign_or_other_schemes_own_are_refused() {
    for name in [
        "Content-Length",
        "Host",
        "Transfer-Encoding",
        "Connection",
        "Proxy-Authorization",
        "X-Webhook-Id",
        "X-Hooksign-Error",
        "webhook-signature",
        "Stripe-Signature",
        "X-Hub-Signature-256",
    ] {
        let text = format!("[signing]\nheader = {name:?}\n");
        let err = Config::parse(&text, Path::new("/c.toml")).unwrap_err();
        assert!(err.to_string().contains("signing.header"), "{name}: {err}");
    }
    assert!(Config::parse(
        "[signing]\nheader = \"X-Acme-Signature\"\n",
        Path::new("/c.toml")
    )
    .is_ok());
}

#[test]
fn check_lists_every_problem_of_config_and_store_and_quotes_no_value() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "whsec_5f1e0c8a9b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f";
    let config = format!(
        "[proxy]\nmax_body_byte = 10\nlisten = \"0.0.0.0:8080\"\nmax_connections = 99999999999\n\
         upstream_timeout = 30\n\
         [admin]\nrate_limit = 5\n\
         [signing]\nheader = \"Content-Length\"\n\
         [log]\nformat = {secret:?}\n\
         [servr]\n"
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let (code, _, stderr) = run_binary(
        &[
            "check",
            "--config",
            dir.path().join("config.toml").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 1, "{stderr}");
    for key in [
        "proxy.max_body_byte",
        "proxy.listen",
        "proxy.max_connections",
        "proxy.upstream_timeout",
        "admin.rate_limit",
        "signing.header",
        "log.format",
        "servr",
    ] {
        assert!(stderr.contains(key), "{key} missing:\n{stderr}");
    }
    assert!(
        !stderr.contains("whsec_5f1e"),
        "a value was quoted:\n{stderr}"
    );

    // The store: a secret pasted into status, another into scheme, a URL with port 0.
    let mut pasted_status = EndpointSpec::new("https://hooks.example.com/x");
    pasted_status.status = secret.into();
    let mut pasted_scheme = EndpointSpec::new("https://hooks.example.com/y");
    pasted_scheme.scheme = secret.into();
    let port_zero = EndpointSpec::new("https://hooks.example.com:0/z");
    std::fs::write(dir.path().join("config.toml"), "").unwrap();
    std::fs::write(
        dir.path().join("webhooks.toml"),
        store_toml(&[&pasted_status, &pasted_scheme, &port_zero]),
    )
    .unwrap();
    let (code, _, stderr) = run_binary(
        &[
            "check",
            "--config",
            dir.path().join("config.toml").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        !stderr.contains("whsec_5f1e"),
        "a value was quoted:\n{stderr}"
    );
    for field in [
        "webhooks[0].status",
        "webhooks[1].scheme",
        "webhooks[2].url",
    ] {
        assert!(stderr.contains(field), "{field} missing:\n{stderr}");
    }
}

#[test]
fn store_records_obey_the_api_limits() {
    let dir = tempfile::tempdir().unwrap();
    let mut endpoint = EndpointSpec::new("https://hooks.example.com/x");
    endpoint.events = (0..11).map(|i| format!("event.{i}")).collect();
    std::fs::write(dir.path().join("config.toml"), "").unwrap();
    std::fs::write(dir.path().join("webhooks.toml"), endpoint.toml()).unwrap();
    let (code, _, stderr) = run_binary(
        &[
            "check",
            "--config",
            dir.path().join("config.toml").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("at most 10 event types"), "{stderr}");
}

#[test]
fn sign_and_verify_refuse_a_masked_or_malformed_secret() {
    for secret in ["whsec_••••••••••••••••••••••••", "whsec_tooshort"]
    {
        let (code, stdout, stderr) = run_binary(&["sign", "--secret", secret], Some(b"body"));
        assert_eq!(code, 2, "{secret}: {stdout} {stderr}");
        assert!(stdout.is_empty());
        let (code, _, stderr) = run_binary(
            &["verify", "--secret", secret, "--signature", "00"],
            Some(b"body"),
        );
        assert_eq!(code, 2, "{secret}: {stderr}");
    }
}

#[test]
fn a_closed_stdout_ends_a_command_quietly_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), "").unwrap();
    let script = format!(
        "set -o pipefail; {:?} check --config {:?} | head -c0",
        env!("CARGO_BIN_EXE_hooksign"),
        dir.path().join("config.toml")
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn serve_raises_the_open_file_limit_and_reports_the_caps() {
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigSpec::new(None);
    let path = config.write(dir.path(), "");
    let hard: u64 = String::from_utf8(
        std::process::Command::new("bash")
            .args(["-c", "ulimit -Hn"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap_or(u64::MAX);
    let script = format!(
        "ulimit -Sn 256 && exec {:?} serve --config {:?}",
        env!("CARGO_BIN_EXE_hooksign"),
        path
    );
    let mut child = std::process::Command::new("bash")
        .args(["-c", &script])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("ready "), "{line}");
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    let caps = log
        .lines()
        .find(|l| l.contains("connection caps"))
        .unwrap_or_else(|| panic!("no caps line:\n{log}"));
    assert!(caps.contains(&format!("open_file_limit={hard}")), "{caps}");
}

#[tokio::test]
async fn on_sigterm_readyz_fails_at_once_and_deliveries_go_on_for_the_drain_delay() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/hook"));
    let config = ConfigSpec::new(Some(&pki)).set("server", "drain_delay = \"3s\"");
    let mut binary = TestBinary::start(&config, &store_toml(&[&endpoint]));
    let ready = api_call(binary.admin, Method::GET, "/readyz", None, None, None).await;
    assert_eq!(ready.status, StatusCode::OK);

    binary.signal("TERM");
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = api_call(binary.admin, Method::GET, "/readyz", None, None, None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let reply = send_to(binary.proxy, &[("x-webhook-id", &endpoint.uuid)], "late")
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "a delivery during the drain delay"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the check ran inside the delay"
    );
    assert_eq!(binary.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(started.elapsed() >= Duration::from_millis(2900));
}

/// A mount made for one test, undone when dropped.
struct Mount(std::path::PathBuf);

impl Mount {
    /// Runs `mount ARGS… TARGET`; `None` (and says why) where this machine lets no test mount.
    fn new(args: &[&str], target: &Path) -> Option<Self> {
        let out = std::process::Command::new("mount")
            .args(args)
            .arg(target)
            .output()
            .ok()?;
        if out.status.success() {
            Some(Self(target.to_owned()))
        } else {
            eprintln!(
                "skipped: mount is not permitted here: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            None
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// The config text of `deploy/kubernetes.yaml`'s ConfigMap, with its listeners moved to free
/// loopback ports and its store path into `store`; everything else as shipped.
fn kubernetes_config(store: &Path) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes.yaml"
    ))
    .unwrap();
    let config = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "ConfigMap")
        .unwrap()["data"]["config.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut out = String::new();
    for line in config.lines() {
        if line.trim_start().starts_with("listen =") {
            out.push_str("listen = \"127.0.0.1:0\"\n");
        } else if line.trim_start().starts_with("path =") {
            out.push_str(&format!("path = {:?}\n", store.display().to_string()));
        } else if line.trim_start().starts_with("drain_delay") {
            out.push_str("drain_delay = \"0s\"\n");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `POST /api/v1/webhooks` as ops: an endpoint on a loopback address the test's egress allows.
async fn create_as_ops(admin: std::net::SocketAddr) -> Reply {
    api_call(
        admin,
        Method::POST,
        "/api/v1/webhooks",
        Some(OPS_TOKEN),
        Some(COMPANY),
        Some(serde_json::json!({"url": "https://127.0.0.1:9/x", "events": ["*"]})),
    )
    .await
}

fn ops_token_table() -> String {
    use sha2::Digest;
    format!(
        "\n[[admin.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\npermissions = [\"webhook.view\", \"webhook.manage\"]\n",
        hex::encode(sha2::Sha256::digest(OPS_TOKEN.as_bytes()))
    )
}

/// Starts the binary on `config` (text) written into `dir`; its ready addresses.
fn start_binary(
    dir: &Path,
    config: &str,
) -> (
    std::process::Child,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hooksign"))
        .args(["serve", "--config"])
        .arg(dir.join("config.toml"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line}"));
    let addr = |key: &str| ready[key].as_str().unwrap().parse().unwrap();
    (child, addr("proxy"), addr("admin"))
}

#[tokio::test]
async fn the_kubernetes_recipe_with_its_read_only_store_keeps_records_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    std::fs::create_dir(&store_dir).unwrap();
    let store = store_dir.join("webhooks.toml");
    std::fs::write(&store, "").unwrap();
    // As the Secret volume is: read-only (root writes through a mode, not through a ro mount).
    let Some(_bind) = Mount::new(&["--bind", store_dir.to_str().unwrap()], &store_dir) else {
        return;
    };
    let Some(_ro) = Mount::new(&["-o", "remount,bind,ro"], &store_dir) else {
        return;
    };
    let config = kubernetes_config(&store)
        + "\n[egress]\nallow_cidrs = [\"127.0.0.1/32\"]\n"
        + &ops_token_table();
    let (mut child, _proxy, admin) = start_binary(dir.path(), &config);
    let reply = create_as_ops(admin).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "store_read_only");
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(log.contains("kept in memory"), "{log}");
    for line in log.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|err| panic!("a log line is not JSON ({err}): {line}"));
    }
}

#[tokio::test]
async fn a_bind_mounted_store_file_is_detected_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("host-webhooks.toml");
    std::fs::write(&outside, "").unwrap();
    let store_dir = dir.path().join("var");
    std::fs::create_dir(&store_dir).unwrap();
    let store = store_dir.join("webhooks.toml");
    std::fs::write(&store, "").unwrap();
    // docker run -v "$PWD/webhooks.toml:/var/lib/hooksign/webhooks.toml": the file alone.
    let Some(_bind) = Mount::new(&["--bind", outside.to_str().unwrap()], &store) else {
        return;
    };
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[store]\npath = {:?}\n\
         [server]\ndrain_delay = \"0s\"\n[egress]\nallow_cidrs = [\"127.0.0.1/32\"]\n\
         [log]\nformat = \"json\"\n{}",
        store.display().to_string(),
        ops_token_table()
    );
    let (mut child, _proxy, admin) = start_binary(dir.path(), &config);
    let reply = create_as_ops(admin).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("mount its directory"), "{message}");
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(log.contains("mount of its own"), "{log}");
}

#[tokio::test]
async fn a_token_revoked_in_the_config_is_refused_after_sighup_and_a_broken_edit_keeps_the_old() {
    let config = ConfigSpec::new(None).with_tokens();
    let binary = TestBinary::start(&config, "");
    let list = |token: &'static str| {
        api_call(
            binary.admin,
            Method::GET,
            "/api/v1/webhooks",
            Some(token),
            Some(COMPANY),
            None,
        )
    };
    assert_eq!(list(VIEW_TOKEN).await.status, StatusCode::OK);
    let original = std::fs::read_to_string(&binary.config_path).unwrap();

    // A broken edit: rejected whole, the tokens in service stay.
    std::fs::write(
        &binary.config_path,
        format!("{original}\n[proxy]\nlisten = 5\n"),
    )
    .unwrap();
    binary.signal("HUP");
    let metrics = wait_for_metric(binary.admin, "hooksign_config_last_reload_success 0").await;
    assert!(
        metrics.contains("hooksign_config_reloads_total{result=\"error\"}"),
        "{metrics}"
    );
    assert_eq!(list(VIEW_TOKEN).await.status, StatusCode::OK);

    // The viewer's grant removed (the config written by rename, as editors and Kubernetes do).
    let without_viewer: String = {
        let start = original.find("name = \"viewer\"").unwrap();
        let table = original[..start].rfind("[[admin.tokens]]").unwrap();
        let end = original[start..]
            .find("[[admin.tokens]]")
            .map_or(original.len(), |e| start + e);
        format!("{}{}", &original[..table], &original[end..])
    };
    let staged = binary.config_path.with_extension("new");
    std::fs::write(&staged, &without_viewer).unwrap();
    std::fs::rename(&staged, &binary.config_path).unwrap();
    binary.signal("HUP");
    wait_for_metric(binary.admin, "hooksign_config_last_reload_success 1").await;
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let reply = list(VIEW_TOKEN).await;
            if reply.status == StatusCode::UNAUTHORIZED {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the revoked token is refused");
    assert_eq!(refused.json()["error"]["code"], "unauthorized");
    assert_eq!(
        list(OPS_TOKEN).await.status,
        StatusCode::OK,
        "the others stay"
    );

    // A key that applies only at start is named, not applied.
    std::fs::write(
        &binary.config_path,
        without_viewer.replace("shutdown_grace = \"5s\"", "shutdown_grace = \"6s\""),
    )
    .unwrap();
    binary.signal("HUP");
    wait_for_metric(binary.admin, "hooksign_config_restart_required 1").await;
    let log = binary.stderr();
    assert!(log.contains("apply only after a restart"), "{log}");
}

#[test]
fn the_license_file_is_the_one_cargo_toml_names() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    assert!(manifest.contains("license = \"Apache-2.0\""));
    let license = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/LICENSE")).unwrap();
    assert!(license.contains("Apache License"));
    assert!(license.contains("Version 2.0, January 2004"));
}

#[test]
fn in_json_mode_every_line_serve_prints_is_json_even_its_last_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigSpec::new(None)
        .set(
            "admin",
            &format!("listen = \"{}\"", taken.local_addr().unwrap()),
        )
        .set("log", "format = \"json\"");
    let path = config.write(dir.path(), "");
    let (code, stdout, stderr) = run_binary(&["serve", "--config", path.to_str().unwrap()], None);
    assert_ne!(code, 0);
    assert!(stdout.is_empty(), "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
    }
    let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("binding admin listener"),
        "{last}"
    );
    drop(taken);
}

#[tokio::test]
async fn a_config_edit_changes_the_signing_header_and_the_catalog_live() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/hook"));
    let config = ConfigSpec::new(Some(&pki)).with_tokens();
    let server = TestServer::start(&config, &store_toml(&[&endpoint])).await;
    let path = server.dir.path().join("config.toml");
    let edited = config
        .set("signing", "header = \"X-Acme-Signature\"")
        .set("events", "catalog = [\"invoice.created\"]");
    // Written by rename, as editors and Kubernetes do; the file watch picks it up.
    std::fs::write(server.dir.path().join("config.new"), edited.text()).unwrap();
    std::fs::rename(server.dir.path().join("config.new"), &path).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = server
            .deliver(&[("x-webhook-id", &endpoint.uuid)], "body")
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        let seen = upstream.requests().pop().unwrap();
        if seen.headers.contains_key("x-acme-signature") {
            assert!(!seen.headers.contains_key("x-storno-signature"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new signing header never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = server
        .api(
            Method::GET,
            "/api/v1/webhooks/events",
            Some(OPS_TOKEN),
            Some(COMPANY),
            None,
        )
        .await;
    assert_eq!(
        events.json()["data"],
        serde_json::json!(["invoice.created"])
    );
}

#[tokio::test]
async fn the_request_id_is_echoed_and_on_the_delivery_s_log_lines() {
    // A port nothing listens on: the delivery fails upstream and logs why.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let endpoint = EndpointSpec::new(format!("https://127.0.0.1:{port}/hook"));
    let config = ConfigSpec::new(None).set("log", "access = true");
    let binary = TestBinary::start(&config, &store_toml(&[&endpoint]));
    let reply = send_to(
        binary.proxy,
        &[
            ("x-webhook-id", &endpoint.uuid),
            ("x-request-id", "app-req-77"),
        ],
        "x",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.headers["x-request-id"], "app-req-77");
    assert_eq!(reply.json()["meta"]["requestId"], "app-req-77");
    let made = send_to(binary.proxy, &[], "no id").await.unwrap();
    let id = made.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 24);

    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = binary.stderr();
        if log.contains("hooksign::access") && log.contains(&id) || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for needle in [
        "upstream request failed",
        "delivery refused",
        "hooksign::access",
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(needle) && l.contains("app-req-77"))
            .unwrap_or_else(|| panic!("no {needle} line with the request id:\n{log}"));
        assert!(!line.contains("/hook"), "a path in the log: {line}");
    }
    assert!(
        log.lines()
            .any(|l| l.contains("hooksign::access") && l.contains(&id)),
        "{log}"
    );
}
