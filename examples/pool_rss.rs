//! Measures the memory an idle pooled upstream connection holds: opens one connection to each of
//! N origins (`h1..hN.hooks.test`, a hosts file of its own pointing at a TLS server in a child
//! process), leaves them idle in hooksign's pool, and prints the growth of this process's RSS
//! per connection. Not a test and not run by CI:
//!
//!   cargo run --release --example pool_rss -- 2000
//!
//! The server runs in a child process so its memory is not counted.

use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use hooksign::egress::dns::DnsResolver;
use hooksign::egress::EgressPolicy;
use hooksign::upstream::ChunkBody;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        return serve(&args[2], &args[3]).await;
    }
    let n: usize = args.get(1).map_or(Ok(2000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;

    // A CA and a leaf for *.hooks.test.
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let leaf_key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec!["*.hooks.test".to_owned()])?
        .signed_by(&leaf_key, &ca_cert, &ca_key)?;
    let ca_pem = dir.path().join("ca.pem");
    let cert_pem = dir.path().join("leaf.pem");
    let key_pem = dir.path().join("leaf.key");
    std::fs::write(&ca_pem, ca_cert.pem())?;
    std::fs::write(&cert_pem, leaf.pem())?;
    std::fs::write(&key_pem, leaf_key.serialize_pem())?;

    let mut child = std::process::Command::new(&args[0])
        .args([
            "--serve",
            cert_pem.to_str().unwrap(),
            key_pem.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    let port: u16 = line.trim().parse()?;

    let hosts = dir.path().join("hosts");
    let names: String = (1..=n + 1)
        .map(|i| format!("127.0.0.1 h{i}.hooks.test\n"))
        .collect();
    std::fs::write(&hosts, names)?;
    let config = hooksign::config::Config::parse(
        &format!(
            "[egress]\nallow_private = true\nca_file = {ca:?}\n[proxy]\npool_max_idle = {max}\n\
             pool_idle_timeout = \"600s\"\ntls_session_cache = {cache}\n",
            ca = ca_pem.display().to_string(),
            max = (n + 1).max(64),
            cache = std::env::var("TLS_SESSION_CACHE").unwrap_or_else(|_| "10000".into()),
        ),
        &dir.path().join("hooksign.toml"),
    )?;
    let policy = Arc::new(EgressPolicy::new(
        &config.egress,
        Arc::new(DnsResolver::with_hosts_file(&hosts)?),
    ));
    let metrics = hooksign::metrics::Metrics::new()?;
    let pool = hooksign::upstream::client::build(
        &config.egress,
        &config.proxy,
        policy,
        metrics.upstream.clone(),
    )?;

    let mut origins = Vec::with_capacity(n + 1);
    let mut deliver = |i: usize| {
        let uri: Uri = format!("https://h{i}.hooks.test:{port}/hook")
            .parse()
            .unwrap();
        let origin = pool.origin(&uri, None);
        origins.push(Arc::clone(&origin));
        let pool = &pool;
        async move {
            let mut request = Request::new(ChunkBody::full(Bytes::from_static(&[b'x'; 1024])));
            *request.method_mut() = http::Method::POST;
            *request.uri_mut() = uri;
            let response = pool.send(&origin, request).await.expect("delivered");
            response.into_body().collect().await.expect("body read");
        }
    };
    // One connection first, so one-time costs (the TLS config, the resolver) are not counted.
    deliver(n + 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib();
    for i in 1..=n {
        deliver(i).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    let idle = metrics.upstream.idle.get();
    println!(
        "idle pooled connections {idle}; RSS {before} -> {after} KiB; {:.1} KiB per connection \
         (TLS session cache {})",
        (after - before) as f64 / n as f64,
        std::env::var("TLS_SESSION_CACHE").unwrap_or_else(|_| "10000".into()),
    );
    drop(origins);
    let _ = child.kill();
    Ok(())
}

/// The upstream: TLS, HTTP/1.1 keep-alive, 200 "ok"; prints its port.
async fn serve(cert: &str, key: &str) -> anyhow::Result<()> {
    use rustls::pki_types::pem::PemObject;
    let certs =
        rustls::pki_types::CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    loop {
        let (tcp, _) = listener.accept().await?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                let _ = req.into_body().collect().await;
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    Bytes::from_static(b"ok\n"),
                )))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}
