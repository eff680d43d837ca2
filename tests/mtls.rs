//! Client certificates to customers (mutual TLS), against a real rustls server on loopback that
//! requires a certificate from its own client CA: set and removed through the admin API, the key
//! never shown, deliveries presenting it, and no connection shared with an endpoint without it.

mod support;

use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::json;
use sha2::{Digest, Sha256};
use support::*;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A client CA and one client certificate it issued, as PEM.
struct ClientPki {
    ca: CertificateDer<'static>,
    certificate: String,
    private_key: String,
    fingerprint: String,
}

impl ClientPki {
    fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "customer client CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hooksign sender");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
        Self {
            ca: ca.der().clone(),
            fingerprint: hex::encode(Sha256::digest(leaf.der())),
            certificate: format!("{}{}", leaf.pem(), ca.pem()),
            private_key: key.serialize_pem(),
        }
    }
}

/// An HTTPS server (the [`Pki`] leaf) that requires a client certificate from `client_ca` and
/// records, for each handshake it accepted, the client certificate's fingerprint and whether
/// the session was resumed.
struct MutualUpstream {
    port: u16,
    seen: Arc<Mutex<Vec<(String, bool)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MutualUpstream {
    async fn start(pki: &Pki, client_ca: &CertificateDer<'static>) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(client_ca.clone()).unwrap();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![pki.leaf_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.leaf_key_der.clone())),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let seen = Arc::clone(&seen);
                    tokio::spawn(async move {
                        // A handshake without an acceptable certificate fails here.
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let session = tls.get_ref().1;
                        let resumed =
                            session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                        if let Some(cert) = session.peer_certificates().and_then(|c| c.first()) {
                            seen.lock()
                                .unwrap()
                                .push((hex::encode(Sha256::digest(cert)), resumed));
                        }
                        let service = service_fn(|_request| async {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                bytes::Bytes::from_static(b"ok"),
                            )))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            }
        });
        Self { port, seen, task }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    fn accepted(&self) -> Vec<(String, bool)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for MutualUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn id(uuid: &str) -> [(&str, &str); 1] {
    [("x-webhook-id", uuid)]
}

async fn set_certificate(
    server: &TestServer,
    uuid: &str,
    certificate: &str,
    private_key: &str,
) -> Reply {
    server
        .api(
            Method::PUT,
            &format!("/api/v1/webhooks/{uuid}/client-certificate"),
            Some(OPS_TOKEN),
            Some(COMPANY),
            Some(json!({"certificate": certificate, "privateKey": private_key})),
        )
        .await
}

#[tokio::test]
async fn deliveries_present_the_endpoints_client_certificate_and_only_its_own() {
    let pki = Pki::new();
    let client = ClientPki::new();
    let upstream = MutualUpstream::start(&pki, &client.ca).await;
    let with = EndpointSpec::new(upstream.url("/with"));
    let without = EndpointSpec::new(upstream.url("/without"));
    // A short idle timeout, so a later delivery opens a new connection (and resumes).
    let server = TestServer::start(
        &ConfigSpec::new(Some(&pki))
            .with_tokens()
            .set("proxy", "pool_idle_timeout = \"300ms\""),
        &store_toml(&[&with, &without]),
    )
    .await;

    // No certificate yet: the server refuses the handshake.
    let reply = server.deliver(&id(&with.uuid), "{}").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(reply.hooksign_error(), Some("upstream_tls"));

    let reply = set_certificate(
        &server,
        &with.uuid,
        &client.certificate,
        &client.private_key,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let shown = reply.json()["clientCertificate"].clone();
    assert_eq!(shown["fingerprintSha256"], client.fingerprint.as_str());
    assert!(shown["subject"]
        .as_str()
        .unwrap()
        .contains("CN=hooksign sender"));
    assert!(shown["notAfter"].as_str().is_some());
    assert!(!reply.text().contains("PRIVATE KEY"), "{}", reply.text());
    let got = server
        .api(
            Method::GET,
            &format!("/api/v1/webhooks/{}", with.uuid),
            Some(OPS_TOKEN),
            Some(COMPANY),
            None,
        )
        .await;
    assert_eq!(got.json()["clientCertificate"], shown);
    assert!(!got.text().contains("PRIVATE KEY"));

    for _ in 0..3 {
        let reply = server.deliver(&id(&with.uuid), "{}").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(
        upstream.accepted(),
        vec![(client.fingerprint.clone(), false)],
        "one pooled connection"
    );
    // Past the idle timeout: a new connection, which resumes the identity's own session.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let reply = server.deliver(&id(&with.uuid), "{}").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(upstream.accepted().len(), 2);
    assert!(
        upstream.accepted()[1].1,
        "the identity's own session cache resumes its sessions"
    );
    // The other endpoint of the same server never borrows that connection, nor resumes that
    // session (which would carry the client certificate's authentication over).
    let reply = server.deliver(&id(&without.uuid), "{}").await;
    assert_eq!(
        reply.hooksign_error(),
        Some("upstream_tls"),
        "{}",
        reply.text()
    );
    assert_eq!(
        upstream.accepted().len(),
        2,
        "nothing accepted without a certificate"
    );

    // The store keeps the key (encrypted at rest once a keyring is set); the metric names the
    // soonest expiry.
    let stored = std::fs::read_to_string(server.dir.path().join("webhooks.toml")).unwrap();
    assert!(stored.contains("client_private_key"));
    let expiry = server
        .metric("hooksign_client_certificate_expiry_timestamp_seconds")
        .await;
    let not_after = time::OffsetDateTime::parse(
        shown["notAfter"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expiry, not_after.unix_timestamp() as f64);

    // Removed: deliveries present nothing again.
    let removed = server
        .api(
            Method::DELETE,
            &format!("/api/v1/webhooks/{}/client-certificate", with.uuid),
            Some(OPS_TOKEN),
            Some(COMPANY),
            None,
        )
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.text());
    assert!(removed.json().get("clientCertificate").is_none());
    let reply = server.deliver(&id(&with.uuid), "{}").await;
    assert_eq!(
        reply.hooksign_error(),
        Some("upstream_tls"),
        "{}",
        reply.text()
    );
    assert_eq!(
        server
            .metric("hooksign_client_certificate_expiry_timestamp_seconds")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_bad_certificate_or_key_is_refused_422_without_quoting_the_key() {
    let pki = Pki::new();
    let client = ClientPki::new();
    let other = ClientPki::new();
    let endpoint = EndpointSpec::new("https://localhost:9/in");
    let plain = EndpointSpec::new("http://localhost:9/in");
    let server = TestServer::start(
        &ConfigSpec::new(Some(&pki))
            .set("egress", "allow_http = true")
            .with_tokens(),
        &store_toml(&[&endpoint, &plain]),
    )
    .await;
    let secret_part = other.private_key.lines().nth(1).unwrap().to_owned();
    for (certificate, key, why) in [
        (
            client.certificate.as_str(),
            other.private_key.as_str(),
            "does not belong",
        ),
        (
            client.certificate.as_str(),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "private key",
        ),
        (
            "not a certificate",
            client.private_key.as_str(),
            "no certificate",
        ),
    ] {
        let reply = set_certificate(&server, &endpoint.uuid, certificate, key).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reply.text()
        );
        assert_eq!(reply.json()["error"]["code"], "validation_failed");
        assert!(reply.text().contains(why), "{}", reply.text());
        assert!(!reply.text().contains(&secret_part));
    }
    let reply = set_certificate(
        &server,
        &plain.uuid,
        &client.certificate,
        &client.private_key,
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text()
    );
    assert!(reply.text().contains("https"));
    // A view-only token cannot set one.
    let reply = server
        .api(
            Method::PUT,
            &format!("/api/v1/webhooks/{}/client-certificate", endpoint.uuid),
            Some(VIEW_TOKEN),
            Some(COMPANY),
            Some(json!({"certificate": client.certificate, "privateKey": client.private_key})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    let stored = std::fs::read_to_string(server.dir.path().join("webhooks.toml")).unwrap();
    assert!(!stored.contains("client_certificate"));
}
