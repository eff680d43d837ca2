//! Egress through a real forward proxy: Debian's Squid, started here on a free loopback port
//! with a generated configuration (and basic auth for the credential cases). Skipped when
//! `/usr/sbin/squid` is absent; `.ci/run` installs it.
//!
//! What is checked: deliveries through the tunnel reach the customer over TLS verified for its
//! hostname; the CONNECT line Squid logs names the checked address, never the hostname; a
//! destination the guard refuses causes no CONNECT at all; 407, a refused tunnel and a proxy that
//! is down each have their own code; `no_proxy` goes direct; tunnelled connections are pooled.

mod support;

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;
use tempfile::TempDir;

const SQUID: &str = "/usr/sbin/squid";

/// A Squid on 127.0.0.1, killed (by its PID) and its files removed on drop.
struct Squid {
    port: u16,
    dir: TempDir,
    child: Child,
}

impl Squid {
    /// Starts Squid; with `auth`, every request must carry those basic-auth credentials. A
    /// Squid that exits before it listens (its port taken meanwhile by another test's server)
    /// is started again on another port.
    fn start(auth: Option<(&str, &str)>) -> Option<Self> {
        if !Path::new(SQUID).exists() {
            eprintln!("skipped: {SQUID} is not installed (apt-get install squid)");
            return None;
        }
        for _ in 0..3 {
            if let Some(squid) = Self::try_start(auth) {
                return Some(squid);
            }
        }
        panic!("squid did not start in three attempts");
    }

    fn try_start(auth: Option<(&str, &str)>) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        // Squid started as root runs as the `proxy` user: it must be able to write here.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let port = free_port();
        let d = dir.path().display();
        let mut conf = format!(
            "http_port 127.0.0.1:{port}\n\
             pid_filename {d}/squid.pid\n\
             access_log stdio:{d}/access.log\n\
             cache_log {d}/cache.log\n\
             cache_store_log none\n\
             cache deny all\n\
             coredump_dir {d}\n\
             shutdown_lifetime 0 seconds\n\
             visible_hostname hooksign-test\n\
             acl closed port 1\n\
             http_access deny closed\n"
        );
        match auth {
            Some((user, password)) => {
                let hash = Command::new("openssl")
                    .args(["passwd", "-apr1", password])
                    .output()
                    .expect("openssl is installed");
                assert!(hash.status.success());
                let line = format!("{user}:{}", String::from_utf8(hash.stdout).unwrap().trim());
                std::fs::write(dir.path().join("passwd"), format!("{line}\n")).unwrap();
                conf.push_str(&format!(
                    "auth_param basic program /usr/lib/squid/basic_ncsa_auth {d}/passwd\n\
                     auth_param basic realm hooksign-test\n\
                     acl authed proxy_auth REQUIRED\n\
                     http_access allow authed\n\
                     http_access deny all\n"
                ));
            }
            None => conf.push_str("http_access allow all\n"),
        }
        let conf_path = dir.path().join("squid.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(SQUID)
            .arg("-N")
            .arg("-f")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("squid starts");
        let mut squid = Self { port, dir, child };
        // `squid` is killed on drop whichever way this returns.
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log =
                || std::fs::read_to_string(squid.dir.path().join("cache.log")).unwrap_or_default();
            if let Ok(Some(status)) = squid.child.try_wait() {
                eprintln!(
                    "squid exited ({status}) before listening on {port}: {}",
                    log()
                );
                return None;
            }
            if started.elapsed() > Duration::from_secs(15) {
                eprintln!("squid did not listen on {port} within 15 s: {}", log());
                return None; // dropped: killed by its PID
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(squid)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// The CONNECT targets in the access log (Squid logs a tunnel when it closes).
    fn connects(&self) -> Vec<String> {
        std::fs::read_to_string(self.access_log_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                fields.find(|field| *field == "CONNECT")?;
                fields.next().map(str::to_owned)
            })
            .collect()
    }

    /// Waits (bounded) for `count` CONNECT lines.
    async fn wait_for_connects(&self, count: usize) -> Vec<String> {
        let started = Instant::now();
        loop {
            let connects = self.connects();
            if connects.len() >= count || started.elapsed() > Duration::from_secs(10) {
                return connects;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resolves every name to 127.0.0.1 (the test upstreams' address), so the customer's URL can
/// name `localhost` (the test certificate's name) and only IPv4 is dialled.
#[derive(Debug)]
struct Loopback;

impl hooksign::egress::Resolve for Loopback {
    fn resolve<'a>(
        &'a self,
        _host: &'a str,
        _port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>> {
        Box::pin(async { Ok(vec![IpAddr::from([127, 0, 0, 1])]) })
    }
}

fn proxied(pki: &Pki, squid_url: &str) -> ConfigSpec {
    ConfigSpec::new(Some(pki))
        .set("egress", "allow_private = false")
        .set("egress", "allow_cidrs = [\"127.0.0.1/32\"]")
        .set("egress", &format!("proxy = {squid_url:?}"))
}

async fn hooksign(config: &ConfigSpec, endpoints: &[&EndpointSpec]) -> TestServer {
    TestServer::start_with_resolver(config, &store_toml(endpoints), Some(Arc::new(Loopback))).await
}

fn id(endpoint: &EndpointSpec) -> [(&str, &str); 1] {
    [("x-webhook-id", endpoint.uuid.as_str())]
}

#[tokio::test]
async fn deliveries_go_through_the_tunnel_to_the_checked_address_and_are_pooled() {
    let Some(squid) = Squid::start(None) else {
        return;
    };
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/hooks?token=abc"));
    // A short idle timeout, so the tunnel closes soon after (Squid logs it when it closes).
    let config = proxied(&pki, &squid.url()).set("proxy", "pool_idle_timeout = \"300ms\"");
    let server = hooksign(&config, &[&endpoint]).await;
    for _ in 0..5 {
        let reply = server.deliver(&id(&endpoint), "{\"n\":1}").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.hooksign_error(), None);
    }
    // Signed, over TLS verified for `localhost`, through one pooled tunnel.
    let requests = upstream.requests();
    assert_eq!(requests.len(), 5);
    assert!(requests[0].headers.contains_key("x-storno-signature"));
    assert!(requests[0].headers.get("proxy-authorization").is_none());
    assert_eq!(
        upstream.connections(),
        1,
        "the tunnelled connection is reused"
    );
    let connects = squid.wait_for_connects(1).await;
    assert_eq!(
        connects,
        vec![format!("127.0.0.1:{}", upstream.addr.port())],
        "CONNECT names the checked address, never the hostname"
    );
}

#[tokio::test]
async fn a_destination_the_guard_refuses_never_reaches_the_proxy() {
    let Some(squid) = Squid::start(None) else {
        return;
    };
    let pki = Pki::new();
    let allowed = Upstream::start(&pki, UpstreamOptions::default()).await;
    let ok = EndpointSpec::new(allowed.url("/in"));
    // The cloud metadata address, and a private one: refused before any connection.
    let metadata = EndpointSpec::new("https://169.254.169.254/latest/meta-data/");
    let private = EndpointSpec::new("https://10.0.0.7/in");
    let config = proxied(&pki, &squid.url()).set("proxy", "pool_idle_timeout = \"300ms\"");
    let server = hooksign(&config, &[&ok, &metadata, &private]).await;
    for endpoint in [&metadata, &private] {
        let reply = server.deliver(&id(endpoint), "{}").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
        assert_eq!(reply.hooksign_error(), Some("destination_forbidden"));
    }
    // One allowed delivery, so the log is known to be written once it is.
    assert_eq!(server.deliver(&id(&ok), "{}").await.status, StatusCode::OK);
    let connects = squid.wait_for_connects(1).await;
    assert_eq!(
        connects,
        vec![format!("127.0.0.1:{}", allowed.addr.port())],
        "only the allowed destination was tunnelled"
    );
}

#[tokio::test]
async fn proxy_credentials_are_sent_and_a_407_has_its_own_code() {
    let Some(squid) = Squid::start(Some(("hooksign", "tunnel-pw-1"))) else {
        return;
    };
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/in"));
    let dir = tempfile::tempdir().unwrap();

    // No credentials, then wrong ones: 407 from the proxy, 502 proxy_auth_required.
    for credentials in [None, Some("hooksign:wrong-pw")] {
        let mut config = proxied(&pki, &squid.url());
        if let Some(credentials) = credentials {
            let file = dir.path().join("wrong");
            std::fs::write(&file, format!("{credentials}\n")).unwrap();
            config = config.set(
                "egress",
                &format!("proxy_credentials_file = {:?}", file.display().to_string()),
            );
        }
        let server = hooksign(&config, &[&endpoint]).await;
        let reply = server.deliver(&id(&endpoint), "{}").await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
        assert_eq!(reply.hooksign_error(), Some("proxy_auth_required"));
        assert!(!reply.text().contains("wrong-pw"));
        assert_eq!(
            server
                .metric("hooksign_deliveries_total{outcome=\"proxy_auth_required\"}")
                .await,
            1.0
        );
        // Not the customer's fault: its circuit stays closed.
        assert_eq!(
            server
                .metric("hooksign_circuit_transitions_total{state=\"open\"}")
                .await,
            0.0
        );
    }

    let file = dir.path().join("right");
    std::fs::write(&file, "hooksign:tunnel-pw-1\n").unwrap();
    let config = proxied(&pki, &squid.url()).set(
        "egress",
        &format!("proxy_credentials_file = {:?}", file.display().to_string()),
    );
    let server = hooksign(&config, &[&endpoint]).await;
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(upstream.requests()[0]
        .headers
        .get("proxy-authorization")
        .is_none());
}

#[tokio::test]
async fn a_refused_tunnel_and_a_proxy_that_is_down_have_their_own_codes() {
    let Some(squid) = Squid::start(None) else {
        return;
    };
    let pki = Pki::new();
    // Squid's configuration refuses CONNECT to port 1 (403).
    let refused = EndpointSpec::new("https://localhost:1/in");
    let server = hooksign(&proxied(&pki, &squid.url()), &[&refused]).await;
    let reply = server.deliver(&id(&refused), "{}").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(reply.hooksign_error(), Some("proxy_refused"));

    // Nothing listens where the proxy should be.
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/in"));
    let down = format!("http://127.0.0.1:{}", free_port());
    let server = hooksign(&proxied(&pki, &down), &[&endpoint]).await;
    let reply = server.deliver(&id(&endpoint), "{}").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(reply.hooksign_error(), Some("proxy_unreachable"));
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn no_proxy_destinations_go_direct() {
    let Some(squid) = Squid::start(None) else {
        return;
    };
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/in"));
    for rule in ["localhost", "127.0.0.0/8"] {
        let config = proxied(&pki, &squid.url()).set("egress", &format!("no_proxy = [{rule:?}]"));
        let server = hooksign(&config, &[&endpoint]).await;
        let reply = server.deliver(&id(&endpoint), "{}").await;
        assert_eq!(reply.status, StatusCode::OK, "{rule}: {}", reply.text());
    }
    assert_eq!(upstream.requests().len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(squid.connects().is_empty(), "{:?}", squid.connects());
}

#[test]
fn check_names_a_bad_proxy_setting_without_quoting_the_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::write(&credentials, "no-colon-s3cret\n").unwrap();
    let config = ConfigSpec::new(None)
        .set(
            "egress",
            "proxy = \"https://user:pw@proxy.internal:3128/x\"",
        )
        .set(
            "egress",
            &format!(
                "proxy_credentials_file = {:?}",
                credentials.display().to_string()
            ),
        )
        .set("egress", "no_proxy = [\"not a host\"]");
    let path = config.write(dir.path(), "");
    let (code, stdout, stderr) = run_binary(&["check", "--config", path.to_str().unwrap()], None);
    assert_ne!(code, 0);
    let said = format!("{stdout}{stderr}");
    for needle in [
        "egress.proxy",
        "only an http:// proxy",
        "proxy_credentials_file",
        "egress.no_proxy[0]",
    ] {
        assert!(said.contains(needle), "{needle}: {said}");
    }
    assert!(!said.contains("s3cret"), "{said}");
}
