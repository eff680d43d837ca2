//! Each signing scheme end to end: hooksign in-process signs deliveries to a recording TLS
//! upstream, and the recorded headers are verified independently (ring's HMAC and Ed25519, not
//! the crate under test), including rotation overlap windows before and after their expiry.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hooksign::signing::Scheme;
use http::StatusCode;
use ring::hmac;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use support::*;

const BODY: &str = r#"{"type":"invoice.created","data":{"id":"inv_1","total":"12.50 €"}}"#;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hmac_raw(key: &[u8], message: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message)
        .as_ref()
        .to_vec()
}

fn header<'a>(seen: &'a Recorded, name: &str) -> &'a str {
    let values: Vec<_> = seen.headers.get_all(name).iter().collect();
    assert_eq!(values.len(), 1, "{name} must be sent exactly once");
    values[0].to_str().unwrap()
}

/// The signatures the receiver would expect from `secret`, computed independently.
fn expected(scheme: Scheme, secret: &str, seen: &Recorded) -> String {
    let body = &seen.body[..];
    match scheme {
        Scheme::Storno => reference_hmac_hex(secret.as_bytes(), body),
        Scheme::Github => format!("sha256={}", reference_hmac_hex(secret.as_bytes(), body)),
        Scheme::Stripe => {
            let t = header(seen, "stripe-signature")
                .split(',')
                .next()
                .unwrap()
                .strip_prefix("t=")
                .unwrap();
            let mut message = format!("{t}.").into_bytes();
            message.extend_from_slice(body);
            format!("v1={}", hex::encode(hmac_raw(secret.as_bytes(), &message)))
        }
        Scheme::StandardWebhooks | Scheme::StandardWebhooksEd25519 => {
            let message = signed_string(seen);
            if scheme == Scheme::StandardWebhooks {
                let key = STANDARD
                    .decode(secret.strip_prefix("whsec_").unwrap())
                    .unwrap();
                format!("v1,{}", STANDARD.encode(hmac_raw(&key, &message)))
            } else {
                // Ed25519 is deterministic: ring, given the seed, makes the same signature.
                let pair = ed25519_pair(secret);
                format!("v1a,{}", STANDARD.encode(pair.sign(&message).as_ref()))
            }
        }
        other => panic!("no reference for {other}"),
    }
}

fn ed25519_pair(secret: &str) -> Ed25519KeyPair {
    let seed = STANDARD
        .decode(secret.strip_prefix("whsk_").unwrap())
        .unwrap();
    Ed25519KeyPair::from_seed_unchecked(&seed).unwrap()
}

fn signed_string(seen: &Recorded) -> Vec<u8> {
    let mut message = format!(
        "{}.{}.",
        header(seen, "webhook-id"),
        header(seen, "webhook-timestamp")
    )
    .into_bytes();
    message.extend_from_slice(&seen.body);
    message
}

/// The scheme's signature entries as sent, in order.
fn entries(scheme: Scheme, seen: &Recorded) -> Vec<String> {
    match scheme {
        Scheme::Storno => vec![header(seen, "x-storno-signature").to_owned()],
        Scheme::Github => vec![header(seen, "x-hub-signature-256").to_owned()],
        Scheme::Stripe => header(seen, "stripe-signature")
            .split(',')
            .skip(1)
            .map(str::to_owned)
            .collect(),
        _ => header(seen, "webhook-signature")
            .split(' ')
            .map(str::to_owned)
            .collect(),
    }
}

fn assert_fresh(seen: &Recorded, scheme: Scheme) {
    let t: u64 = match scheme {
        Scheme::Stripe => header(seen, "stripe-signature")[2..]
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap(),
        Scheme::StandardWebhooks | Scheme::StandardWebhooksEd25519 => {
            header(seen, "webhook-timestamp").parse().unwrap()
        }
        _ => return,
    };
    assert!(
        now().abs_diff(t) <= 5,
        "timestamp {t} is not the delivery's own"
    );
}

#[tokio::test]
async fn every_scheme_arrives_signed_and_replaces_what_the_app_sent() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoints: Vec<(Scheme, EndpointSpec)> = Scheme::ALL
        .into_iter()
        .map(|scheme| {
            (
                scheme,
                EndpointSpec::with_scheme(upstream.url("/in"), scheme),
            )
        })
        .collect();
    let refs: Vec<&EndpointSpec> = endpoints.iter().map(|(_, e)| e).collect();
    let server = TestServer::start(&ConfigSpec::new(Some(&pki)), &store_toml(&refs)).await;

    for (scheme, endpoint) in &endpoints {
        // The application tries to sign by itself: every signature header must be replaced.
        let forged = [
            ("x-webhook-id", endpoint.uuid.as_str()),
            ("webhook-id", "msg_forged"),
            ("webhook-timestamp", "1"),
            ("webhook-signature", "v1,Zm9yZ2Vk"),
            ("stripe-signature", "t=1,v1=00"),
            ("x-hub-signature-256", "sha256=00"),
            ("x-storno-signature", "00"),
        ];
        let reply = server.deliver(&forged, BODY).await;
        assert_eq!(reply.status, StatusCode::OK, "{scheme}: {}", reply.text());
        let seen = upstream.requests().pop().unwrap();
        assert_eq!(&seen.body[..], BODY.as_bytes());
        assert_fresh(&seen, *scheme);
        let sent = entries(*scheme, &seen);
        assert_eq!(
            sent,
            vec![expected(*scheme, &endpoint.secret, &seen)],
            "{scheme}"
        );
        if scheme.uses_message_id() {
            let id = header(&seen, "webhook-id");
            assert!(id.starts_with("msg_") && id != "msg_forged", "{id}");
        }
        if *scheme == Scheme::StandardWebhooksEd25519 {
            // The API's publicKey verifies the signature (ring, independently).
            let public = server
                .state
                .store
                .snapshot()
                .get(&endpoint.uuid.parse().unwrap())
                .unwrap()
                .public_key()
                .unwrap();
            let pair = ed25519_pair(&endpoint.secret);
            assert_eq!(
                public,
                format!("whpk_{}", STANDARD.encode(pair.public_key().as_ref()))
            );
            let raw = STANDARD.decode(&sent[0]["v1a,".len()..]).unwrap();
            let key = STANDARD.decode(&public["whpk_".len()..]).unwrap();
            UnparsedPublicKey::new(&ED25519, key)
                .verify(&signed_string(&seen), &raw)
                .expect("the publicKey verifies the delivery");
        }
    }
}

#[tokio::test]
async fn the_applications_message_id_is_the_webhook_id() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::with_scheme(upstream.url("/in"), Scheme::StandardWebhooks);
    let server = TestServer::start(&ConfigSpec::new(Some(&pki)), &store_toml(&[&endpoint])).await;
    let id = endpoint.uuid.as_str();

    for _ in 0..2 {
        let reply = server
            .deliver(
                &[
                    ("x-webhook-id", id),
                    ("x-webhook-message-id", "evt_42.retry-safe"),
                ],
                BODY,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let seen = upstream.requests().pop().unwrap();
        assert_eq!(header(&seen, "webhook-id"), "evt_42.retry-safe");
        assert_eq!(
            entries(Scheme::StandardWebhooks, &seen),
            vec![expected(Scheme::StandardWebhooks, &endpoint.secret, &seen)]
        );
        // Kept: a plain application header, harmless to Standard Webhooks receivers.
        assert_eq!(header(&seen, "x-webhook-message-id"), "evt_42.retry-safe");
    }

    // Without one, each delivery gets its own new id.
    let mut ids = Vec::new();
    for _ in 0..2 {
        server.deliver(&[("x-webhook-id", id)], BODY).await;
        ids.push(header(&upstream.requests().pop().unwrap(), "webhook-id").to_owned());
    }
    assert_ne!(ids[0], ids[1]);

    let sent_before = upstream.requests().len();
    let reply = server
        .deliver(
            &[("x-webhook-id", id), ("x-webhook-message-id", "has space")],
            BODY,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.hooksign_error(), Some("invalid_message_id"));
    assert_eq!(upstream.requests().len(), sent_before);
}

#[tokio::test]
async fn an_overlap_window_signs_with_both_keys_until_it_expires() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let schemes = [
        Scheme::StandardWebhooks,
        Scheme::Stripe,
        Scheme::StandardWebhooksEd25519,
    ];
    let mut endpoints = Vec::new();
    for scheme in schemes {
        for expires in ["2999-01-01T00:00:00Z", "2020-01-01T00:00:00Z"] {
            let mut endpoint = EndpointSpec::with_scheme(upstream.url("/in"), scheme);
            let previous = EndpointSpec::with_scheme("", scheme).secret;
            endpoint.previous = Some((previous, expires.to_owned()));
            endpoints.push((scheme, expires.starts_with("2999"), endpoint));
        }
    }
    let refs: Vec<&EndpointSpec> = endpoints.iter().map(|(_, _, e)| e).collect();
    let server = TestServer::start(&ConfigSpec::new(Some(&pki)), &store_toml(&refs)).await;

    for (scheme, open, endpoint) in &endpoints {
        let reply = server
            .deliver(&[("x-webhook-id", &endpoint.uuid)], BODY)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let seen = upstream.requests().pop().unwrap();
        let new = expected(*scheme, &endpoint.secret, &seen);
        let old = expected(*scheme, &endpoint.previous.as_ref().unwrap().0, &seen);
        let sent = entries(*scheme, &seen);
        if *open {
            assert_eq!(
                sent,
                vec![new, old],
                "{scheme}: both signatures, the new one first"
            );
        } else {
            assert_eq!(
                sent,
                vec![new],
                "{scheme}: the expired previous key must not sign"
            );
        }
    }
}
