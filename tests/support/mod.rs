//! Shared test harness: real servers on 127.0.0.1:0.
//!
//! - [`Pki`]: an rcgen CA and a leaf for `localhost` / `127.0.0.1`, the CA written to a PEM file
//!   that hooksign trusts through `[egress] ca_file`.
//! - [`Upstream`]: a real TLS (or plain HTTP) server that records every request it receives and
//!   counts its TCP connections.
//! - [`TestServer`]: hooksign in-process, stopped on drop.
//! - [`TestBinary`]: the real `hooksign` binary, both ports on 127.0.0.1:0, read from its
//!   `ready proxy=… admin=…` line.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use hooksign::config::Config;
use hooksign::{AppState, Listeners};

pub const COMPANY: &str = "550e8400-e29b-41d4-a716-446655440000";

// === Pki ===

/// A test CA, a leaf it signed, and the CA as a PEM file.
pub struct Pki {
    pub dir: TempDir,
    pub ca_path: PathBuf,
    /// The leaf (localhost, 127.0.0.1) as PEM files, for servers started as processes (etcd).
    pub leaf_path: PathBuf,
    pub leaf_key_path: PathBuf,
    pub leaf_der: CertificateDer<'static>,
    pub leaf_key_der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Self {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hooksign test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();

        let mut leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        leaf_params.is_ca = rcgen::IsCa::ExplicitNoCa;
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let leaf_path = dir.path().join("leaf.pem");
        std::fs::write(&leaf_path, leaf.pem()).unwrap();
        let leaf_key_path = dir.path().join("leaf.key");
        std::fs::write(&leaf_key_path, leaf_key.serialize_pem()).unwrap();
        Self {
            dir,
            ca_path,
            leaf_path,
            leaf_key_path,
            leaf_der: leaf.der().clone(),
            leaf_key_der: leaf_key.serialize_der(),
        }
    }

    fn server_config(&self, alpn: &[&[u8]]) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![self.leaf_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key_der.clone())),
            )
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

// === Upstream ===

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// Path and query.
    pub target: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How the upstream behaves.
#[derive(Clone, Debug)]
pub struct UpstreamOptions {
    /// Serve TLS (with the [`Pki`] leaf); plain HTTP when false.
    pub tls: bool,
    /// Offer `h2` by ALPN (besides `http/1.1`).
    pub h2: bool,
    /// Wait this long before answering.
    pub delay: Duration,
    pub status: StatusCode,
    /// Extra response headers.
    pub headers: Vec<(&'static str, &'static str)>,
}

impl UpstreamOptions {
    /// A plain-HTTP upstream (no TLS), otherwise the defaults.
    pub fn plain() -> Self {
        Self {
            tls: false,
            ..Default::default()
        }
    }
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            tls: true,
            h2: false,
            delay: Duration::ZERO,
            status: StatusCode::OK,
            headers: Vec::new(),
        }
    }
}

/// A recording upstream server on 127.0.0.1:0.
pub struct Upstream {
    pub addr: SocketAddr,
    tls: bool,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    connections: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Upstream {
    pub async fn start(pki: &Pki, options: UpstreamOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let alpn: Vec<&[u8]> = if options.h2 {
            vec![b"h2", b"http/1.1"]
        } else {
            vec![b"http/1.1"]
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config(&alpn)));
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let tls = options.tls;
        let options = Arc::new(options);
        {
            let (recorded, connections, stop) =
                (recorded.clone(), connections.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let stream = tokio::select! {
                        () = stop.cancelled() => break,
                        accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (acceptor, recorded, options, stop) = (
                        acceptor.clone(),
                        recorded.clone(),
                        options.clone(),
                        stop.clone(),
                    );
                    tokio::spawn(async move {
                        let plain = !options.tls;
                        let service = service_fn(move |request| {
                            respond(request, recorded.clone(), options.clone())
                        });
                        if plain {
                            let conn = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service);
                            tokio::select! { _ = conn => {}, () = stop.cancelled() => {} }
                            return;
                        }
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        if is_h2 {
                            let conn =
                                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(tls), service);
                            tokio::select! { _ = conn => {}, () = stop.cancelled() => {} }
                        } else {
                            let conn = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tls), service);
                            tokio::select! { _ = conn => {}, () = stop.cancelled() => {} }
                        }
                    });
                }
            });
        }
        Self {
            addr,
            tls,
            recorded,
            connections,
            stop,
        }
    }

    /// `https://localhost:PORT{path}` (or `http://` for a plain upstream).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://localhost:{}{path}", self.addr.port())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn respond(
    request: Request<Incoming>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    options: Arc<UpstreamOptions>,
) -> Result<http::Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    recorded.lock().unwrap().push(Recorded {
        method: parts.method,
        target: parts
            .uri
            .path_and_query()
            .map(|pq| pq.to_string())
            .unwrap_or_default(),
        version: parts.version,
        headers: parts.headers,
        body,
    });
    if !options.delay.is_zero() {
        tokio::time::sleep(options.delay).await;
    }
    let mut response = http::Response::new(Full::new(Bytes::from_static(b"{\"received\":true}")));
    *response.status_mut() = options.status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    for (name, value) in &options.headers {
        response.headers_mut().append(*name, value.parse().unwrap());
    }
    Ok(response)
}

// === store and config files ===

/// One `[[webhooks]]` table for the store file.
#[derive(Clone, Debug)]
pub struct EndpointSpec {
    pub uuid: String,
    pub url: String,
    pub events: Vec<String>,
    pub status: String,
    pub secret: String,
    /// `scheme` in the store file (`storno` when written as the default).
    pub scheme: String,
    /// `previous_secret` and `previous_secret_expires_at`, when set.
    pub previous: Option<(String, String)>,
}

impl EndpointSpec {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            uuid: uuid::Uuid::new_v4().to_string(),
            url: url.into(),
            events: vec!["invoice.created".into(), "invoice.paid".into()],
            status: "active".into(),
            secret: hooksign::secret::Secret::generate()
                .unwrap()
                .expose()
                .to_owned(),
            scheme: "storno".into(),
            previous: None,
        }
    }

    /// An endpoint signed with `scheme`, holding a fresh secret in that scheme's format.
    pub fn with_scheme(url: impl Into<String>, scheme: hooksign::signing::Scheme) -> Self {
        Self {
            scheme: scheme.as_str().into(),
            secret: scheme.generate_secret().unwrap().expose().to_owned(),
            ..Self::new(url)
        }
    }

    pub fn toml(&self) -> String {
        let events: Vec<String> = self.events.iter().map(|e| format!("{e:?}")).collect();
        let previous = self
            .previous
            .as_ref()
            .map(|(secret, expires)| {
                format!("previous_secret = {secret:?}\nprevious_secret_expires_at = {expires:?}\n")
            })
            .unwrap_or_default();
        format!(
            "[[webhooks]]\nuuid = {:?}\ncompany = {COMPANY:?}\nurl = {:?}\nevents = [{}]\nstatus = {:?}\nscheme = {:?}\nsecret = {:?}\n{previous}\n",
            self.uuid,
            self.url,
            events.join(", "),
            self.status,
            self.scheme,
            self.secret
        )
    }
}

/// The text of a store file holding `endpoints`.
pub fn store_toml(endpoints: &[&EndpointSpec]) -> String {
    endpoints.iter().map(|e| e.toml()).collect()
}

/// A config file under construction: extra lines per table; listeners always on port 0.
#[derive(Clone, Debug, Default)]
pub struct ConfigSpec {
    tables: BTreeMap<&'static str, Vec<String>>,
    /// Raw text appended after the tables (arrays of tables such as `[[admin.tokens]]`).
    extra: Vec<String>,
}

impl ConfigSpec {
    /// Both listeners on 127.0.0.1:0, the CA trusted when given, loopback destinations allowed
    /// (test upstreams listen there; egress tests set `allow_private = false` again).
    pub fn new(pki: Option<&Pki>) -> Self {
        let mut spec = Self::default();
        spec = spec.set("proxy", "listen = \"127.0.0.1:0\"");
        spec = spec.set("admin", "listen = \"127.0.0.1:0\"");
        spec = spec.set("store", "path = \"webhooks.toml\"");
        spec = spec.set("server", "shutdown_grace = \"5s\"");
        // Tests that stop the binary do not wait out a drain delay (tests/hardening.rs does).
        spec = spec.set("server", "drain_delay = \"0s\"");
        spec = spec.set("egress", "allow_private = true");
        if let Some(pki) = pki {
            spec = spec.set(
                "egress",
                &format!("ca_file = {:?}", pki.ca_path.display().to_string()),
            );
        }
        spec
    }

    /// Appends raw text after the tables (an array of tables such as `[[proxy.tokens]]`).
    pub fn extra(mut self, text: &str) -> Self {
        self.extra.push(text.to_owned());
        self
    }

    /// Sets `key = value` (given as one line) in `[table]`, replacing an earlier value of the key.
    pub fn set(mut self, table: &'static str, line: &str) -> Self {
        let key = line.split('=').next().unwrap_or_default().trim().to_owned();
        let lines = self.tables.entry(table).or_default();
        lines.retain(|l| l.split('=').next().unwrap_or_default().trim() != key);
        lines.push(line.to_owned());
        self
    }

    pub fn text(&self) -> String {
        let mut text: String = self
            .tables
            .iter()
            .map(|(table, lines)| format!("[{table}]\n{}\n\n", lines.join("\n")))
            .collect();
        for extra in &self.extra {
            text.push_str(extra);
            text.push('\n');
        }
        text
    }

    /// Writes `config.toml` and `webhooks.toml` into `dir`; returns the config path.
    pub fn write(&self, dir: &Path, store: &str) -> PathBuf {
        let path = dir.join("config.toml");
        std::fs::write(&path, self.text()).unwrap();
        std::fs::write(dir.join("webhooks.toml"), store).unwrap();
        path
    }
}

// === TestServer ===

/// hooksign running in-process on 127.0.0.1:0; stopped when dropped.
pub struct TestServer {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub state: Arc<AppState>,
    pub dir: TempDir,
    stop: CancellationToken,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl TestServer {
    pub async fn start(config: &ConfigSpec, store: &str) -> Self {
        Self::start_with_resolver(config, store, None).await
    }

    /// As [`TestServer::start`], with the egress guard resolving through `resolver` when given
    /// (the system resolver otherwise).
    pub async fn start_with_resolver(
        config: &ConfigSpec,
        store: &str,
        resolver: Option<Arc<dyn hooksign::egress::Resolve>>,
    ) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), config, store, resolver).await
    }

    /// Starts in `dir`, which the test may have prepared (the store is written only when
    /// `store` is not empty, so a prepared store file or symlink stays).
    pub async fn start_in(
        dir: TempDir,
        config: &ConfigSpec,
        store: &str,
        resolver: Option<Arc<dyn hooksign::egress::Resolve>>,
    ) -> Self {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config.text()).unwrap();
        if !store.is_empty() {
            std::fs::write(dir.path().join("webhooks.toml"), store).unwrap();
        }
        let config = Config::load(&path).unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        let proxy = listeners.proxy.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let state = match resolver {
            Some(resolver) => AppState::build_with_resolver(config, resolver).await,
            None => AppState::build(config).await,
        }
        .unwrap();
        let stop = CancellationToken::new();
        hooksign::start_reloading(&state, &stop);
        tokio::spawn(hooksign::serve(Arc::clone(&state), listeners, stop.clone()));
        Self {
            proxy,
            admin,
            state,
            dir,
            stop,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a delivery to the proxy port.
    pub async fn deliver(&self, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
        self.send(Method::POST, "/", headers, body).await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        call(self.proxy, method, path, headers, body.into()).await
    }

    /// GET a path on the admin port.
    pub async fn admin_get(&self, path: &str) -> Reply {
        let response = self
            .client
            .get(format!("http://{}{path}", self.admin).parse().unwrap())
            .await
            .unwrap();
        Reply::read(response).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    async fn read(response: http::Response<Incoming>) -> Self {
        let (parts, body) = response.into_parts();
        Self {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {:?}", self.body))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `X-Hooksign-Error` code, if hooksign refused.
    pub fn hooksign_error(&self) -> Option<&str> {
        self.headers
            .get("x-hooksign-error")
            .map(|v| v.to_str().unwrap())
    }
}

/// Sends one request to `addr` (a proxy port) on a fresh connection; the error if the
/// connection failed or was cut before a response.
pub async fn send_to(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Reply, hyper_util::client::legacy::Error> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::new(Full::new(body.into()));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = format!("http://{addr}/").parse().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let response = client.request(request).await?;
    Ok(Reply::read(response).await)
}

/// Independent HMAC-SHA256 (ring, not the crate under test), lowercase hex.
pub fn reference_hmac_hex(key: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    hex::encode(ring::hmac::sign(&key, body).as_ref())
}

// === TestBinary ===

/// The real binary, started with `serve --config`; killed on drop if still running.
pub struct TestBinary {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub dir: TempDir,
    rust_log: &'static str,
}

/// How [`TestBinary::start_with`] runs the binary.
#[derive(Clone, Debug)]
pub struct BinaryOptions {
    /// The `RUST_LOG` filter. The log (stderr) always goes to [`TestBinary::log_path`].
    pub rust_log: &'static str,
}

impl Default for BinaryOptions {
    fn default() -> Self {
        Self { rust_log: "debug" }
    }
}

impl TestBinary {
    /// Writes the config and store into a new temp dir and starts the binary on them; its log
    /// (`RUST_LOG=debug`) goes to `log_path()`.
    pub fn start(config: &ConfigSpec, store: &str) -> Self {
        Self::start_with(config, store, BinaryOptions::default())
    }

    pub fn start_with(config: &ConfigSpec, store: &str, options: BinaryOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = config.write(dir.path(), store);
        let (child, proxy, admin) = spawn_binary(
            &config_path,
            &dir.path().join("hooksign.log"),
            options.rust_log,
        );
        Self {
            child,
            proxy,
            admin,
            config_path,
            dir,
            rust_log: options.rust_log,
        }
    }

    /// Starts the binary again on the same files (after it stopped or was killed); the listeners
    /// get new ports.
    pub fn restart(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_some(),
            "restart needs a stopped process"
        );
        let (child, proxy, admin) =
            spawn_binary(&self.config_path, &self.log_path(), self.rust_log);
        self.child = child;
        self.proxy = proxy;
        self.admin = admin;
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        self.signal("KILL");
        self.wait_exit(Duration::from_secs(10));
    }

    /// Where the process's stderr (its log) goes; appended to across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("hooksign.log")
    }

    /// The store file.
    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("webhooks.toml")
    }

    /// What the binary wrote to stderr (its log) so far, across restarts.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Sends a signal to the process by its PID.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for TestBinary {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn_binary(
    config_path: &Path,
    log_path: &Path,
    rust_log: &str,
) -> (Child, SocketAddr, SocketAddr) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hooksign"))
        .arg("serve")
        .arg("--config")
        .arg(config_path)
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let (proxy, admin) =
        parse_ready(&line).unwrap_or_else(|| panic!("no ready line, got {line:?}"));
    (child, proxy, admin)
}

fn parse_ready(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    // JSON mode: {"message":"ready","proxy":"…","admin":"…"}.
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(line.trim()) {
        if fields.get("message")? != "ready" {
            return None;
        }
        let addr = |key: &str| fields.get(key)?.as_str()?.parse().ok();
        return Some((addr("proxy")?, addr("admin")?));
    }
    let rest = line.trim().strip_prefix("ready ")?;
    let mut proxy = None;
    let mut admin = None;
    for field in rest.split_whitespace() {
        if let Some(addr) = field.strip_prefix("proxy=") {
            proxy = addr.parse().ok();
        } else if let Some(addr) = field.strip_prefix("admin=") {
            admin = addr.parse().ok();
        }
    }
    Some((proxy?, admin?))
}

/// Runs the binary to completion with `args`; its exit code, stdout and stderr.
pub fn run_binary(args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_hooksign"))
        .args(args)
        .env_remove("HOOKSIGN_CONFIG")
        .env_remove("HOOKSIGN_SECRET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

// === admin API ===

/// A company no token but `OPS_TOKEN` and `VIEW_TOKEN` is granted.
pub const OTHER_COMPANY: &str = "6ba7b810-9dad-41d1-80b4-00c04fd430c8";
/// Granted every company, both permissions.
pub const OPS_TOKEN: &str = "hks_test_ops_token";
/// `webhook.view` only, every company.
pub const VIEW_TOKEN: &str = "hks_test_view_token";
/// Both permissions, `COMPANY` only.
pub const SCOPED_TOKEN: &str = "hks_test_scoped_token";

fn token_table(name: &str, token: &str, permissions: &str, companies: &str) -> String {
    use sha2::Digest;
    format!(
        "[[admin.tokens]]\nname = {name:?}\nsha256 = \"{}\"\npermissions = {permissions}\ncompanies = {companies}\n",
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    )
}

impl ConfigSpec {
    /// Adds the three test tokens.
    pub fn with_tokens(mut self) -> Self {
        let tables = [
            token_table(
                "ops",
                OPS_TOKEN,
                "[\"webhook.view\", \"webhook.manage\"]",
                "[\"*\"]",
            ),
            token_table("viewer", VIEW_TOKEN, "[\"webhook.view\"]", "[\"*\"]"),
            token_table(
                "scoped",
                SCOPED_TOKEN,
                "[\"webhook.view\", \"webhook.manage\"]",
                &format!("[{COMPANY:?}]"),
            ),
        ];
        self.tables.entry("admin").or_default();
        self.extra.push(tables.join("\n"));
        self
    }
}

impl TestServer {
    /// Calls the admin API with a bearer token and `X-Company`.
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        company: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Reply {
        api_call(self.admin, method, path, token, company, body).await
    }

    /// `POST /api/v1/webhooks` with `body` as ops for `COMPANY`; the reply, whatever it is.
    pub async fn post_webhook(&self, body: serde_json::Value) -> Reply {
        self.api(
            Method::POST,
            "/api/v1/webhooks",
            Some(OPS_TOKEN),
            Some(COMPANY),
            Some(body),
        )
        .await
    }

    /// `POST /api/v1/webhooks` as ops for `COMPANY`; the created endpoint's JSON.
    pub async fn create_webhook(&self, url: &str, events: &[&str]) -> serde_json::Value {
        let reply = self
            .post_webhook(serde_json::json!({"url": url, "events": events}))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()
    }
}

/// Calls an admin API at `admin` with a bearer token and `X-Company`.
pub async fn api_call(
    admin: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    company: Option<&str>,
    body: Option<serde_json::Value>,
) -> Reply {
    let mut headers = Vec::new();
    let authorization = token.map(|t| format!("Bearer {t}"));
    if let Some(value) = &authorization {
        headers.push(("authorization", value.as_str()));
    }
    if let Some(company) = company {
        headers.push(("x-company", company));
    }
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    call(admin, method, path, &headers, body).await
}

/// One plain-HTTP request to `addr`, read whole (20 s at most).
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .expect("answered within 20 s")
        .unwrap();
    Reply::read(response).await
}

// === RawUpstream: misbehaving servers on raw TCP ===

/// What a [`RawUpstream`] received on one connection: each request's head (lowercase header
/// names looked up with [`RawRequest::header`]) and body.
#[derive(Clone, Debug)]
pub struct RawRequest {
    pub head: String,
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The request line (`POST /path HTTP/1.1`).
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// Every value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

/// A plain-HTTP server on 127.0.0.1:0 whose every connection is handed to a script: the test
/// decides byte by byte what the upstream does (stall, drip, reset, lie about framing). Stops
/// when dropped.
pub struct RawUpstream {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<RawRequest>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// A connection handed to a [`RawUpstream`] script, with the log of what it read.
pub struct RawConnection {
    pub stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
    requests: Arc<Mutex<Vec<RawRequest>>>,
}

impl RawConnection {
    /// Reads one request (head, then a `Content-Length` or chunked body); `None` at EOF.
    pub async fn read_request(&mut self) -> Option<RawRequest> {
        use tokio::io::AsyncReadExt;
        let head_end = loop {
            if let Some(at) = find(&self.buffer, b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        self.buffer.drain(..head_end);
        let mut request = RawRequest {
            head,
            body: Vec::new(),
        };
        let chunked = request
            .header("transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("chunked"));
        if chunked {
            // Good enough for tests: read to the terminating zero-length chunk.
            while find(&self.buffer, b"0\r\n\r\n").is_none() {
                let mut chunk = [0u8; 8192];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                }
            }
            let end = find(&self.buffer, b"0\r\n\r\n").unwrap() + 5;
            request.body = self.buffer.drain(..end).collect();
        } else {
            let length: usize = request
                .header("content-length")
                .first()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while self.buffer.len() < length {
                let mut chunk = [0u8; 8192];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                }
            }
            request.body = self.buffer.drain(..length).collect();
        }
        self.requests.lock().unwrap().push(request.clone());
        Some(request)
    }

    /// Writes `bytes` and flushes; false when the peer is gone.
    pub async fn write(&mut self, bytes: impl AsRef<[u8]>) -> bool {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes.as_ref()).await.is_ok() && self.stream.flush().await.is_ok()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl RawUpstream {
    /// Serves every connection with `script`.
    pub async fn start<F, Fut>(script: F) -> Self
    where
        F: Fn(RawConnection) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let requests = Arc::clone(&requests);
            let connections = Arc::clone(&connections);
            let script = Arc::new(script);
            async move {
                let mut open = tokio::task::JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let connection = RawConnection {
                        stream,
                        buffer: Vec::new(),
                        requests: Arc::clone(&requests),
                    };
                    open.spawn((script)(connection));
                    while open.try_join_next().is_some() {}
                }
            }
        });
        Self {
            addr,
            requests,
            connections,
            task,
        }
    }

    /// A server that answers every request on a keep-alive connection with `response` (a whole
    /// HTTP/1.1 response, bytes as written).
    pub async fn answering(response: &'static str) -> Self {
        Self::start(move |mut connection| async move {
            while connection.read_request().await.is_some() {
                if !connection.write(response).await {
                    break;
                }
            }
        })
        .await
    }

    /// `http://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes `request` (raw bytes) to the proxy port on a fresh connection and reads until the
/// proxy closes it or `limit` passes: what the application's socket saw, and whether the read
/// ended in an error (a reset) rather than a clean close.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut seen = Vec::new();
    let mut failed = false;
    let _ = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
    })
    .await;
    (String::from_utf8_lossy(&seen).into_owned(), failed)
}

/// A plain-HTTP delivery whose body may fail: the status, headers, and the body or the error
/// the application's client saw while reading it (20 s at most).
pub async fn deliver_streamed(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    body: &'static str,
) -> (StatusCode, HeaderMap, Result<Bytes, String>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::new(Full::new(Bytes::from_static(body.as_bytes())));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = format!("http://{addr}/").parse().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        let response = client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .map_err(|err| err.to_string());
        (parts.status, parts.headers, body)
    })
    .await
    .expect("the delivery ended within 20 s")
}

impl TestServer {
    /// The value of one sample of the admin port's `/metrics` (`name{labels}` as printed), 0
    /// when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.admin_get("/metrics").await.text();
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .map(|value| value.trim().parse().unwrap())
            .unwrap_or(0.0)
    }
}

/// A loopback port that was free a moment ago (for servers started as processes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `/metrics` until it holds `line` (10 s at most); the text.
pub async fn wait_for_metric(admin: SocketAddr, line: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = api_call(admin, Method::GET, "/metrics", None, None, None)
            .await
            .text();
        if text.lines().any(|l| l == line) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{line} never appeared:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the peer closes `stream` within `limit` (reads until EOF or an error).
pub async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match tokio::io::AsyncReadExt::read(stream, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}
