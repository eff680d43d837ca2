//! The cost of signing one delivery, per scheme, against ring's HMAC-SHA256 of the same body
//! (ring is in the tree through rustls, and is the fastest HMAC-SHA256 there). Each body size is
//! one group, so the ratios read straight off criterion's report.
//!
//! The rows, per body size (1 KiB and 64 KiB):
//!
//! - `ring hmac-sha256`: `ring::hmac::sign` of the body with a pre-built key. The raw MAC: the
//!   floor, no text and no header.
//! - `ring hmac-sha256 + hex header`: the same `hmac::sign`, the tag as lowercase hex into a
//!   64-byte stack buffer (`hex::encode_to_slice`), inserted as `x-storno-signature` into a
//!   reused request `HeaderMap`. What a proxy built on ring would do per delivery for the
//!   `storno` scheme: the like-for-like anchor for the `storno` and `github` rows.
//! - `hooksign/<scheme>`: what the proxy does per delivery: clone the pre-keyed state and feed
//!   the signed prefix (`EndpointSigner::begin`), feed the body (`update`), then `finish` into
//!   the scheme's headers (hex or base64 text) in a reused request `HeaderMap`.
//!
//! Both header-writing rows use a map created once, outside the timed loop, and pre-filled with
//! the headers a delivery request typically carries (content-type, content-length, user-agent),
//! as the proxy's request map is. The signature header is replaced each iteration (the old value
//! is dropped, the new one allocated), so the map does not grow.
//!
//! The target comparison (issue 9: signing within 10 % of the fastest HMAC-SHA256 in the
//! dependency tree, at 1 KiB and 64 KiB) is `hooksign/storno` against
//! `ring hmac-sha256 + hex header`. `hooksign/storno` against the raw `ring hmac-sha256` shows
//! the MAC plus the hex and the header together.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hooksign::signing::{Delivery, EndpointSigner, MessageId, Scheme};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue};

const STORNO_HEADER: HeaderName = HeaderName::from_static("x-storno-signature");

fn body(len: usize) -> Bytes {
    let head = br#"{"type":"invoice.created","pad":""#;
    let mut bytes = head.to_vec();
    bytes.resize(len - 2, b'x');
    bytes.extend_from_slice(b"\"}");
    Bytes::from(bytes)
}

/// A delivery request's headers before signing, created once per row and reused.
fn request_headers(len: usize) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(USER_AGENT, HeaderValue::from_static("hooksign-bench/1"));
    headers
}

fn bench(c: &mut Criterion) {
    let delivery_for = |scheme| {
        Delivery::new(
            scheme,
            Some(MessageId::parse(b"msg_p5jXN8AQM9LWM0D4loKWxJek").expect("a valid id")),
            1_700_000_000,
        )
    };
    for (len, label) in [(1024, "1 KiB"), (65536, "64 KiB")] {
        let payload = body(len);
        let mut group = c.benchmark_group(format!("sign {label}"));
        group
            .throughput(Throughput::Bytes(len as u64))
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .sample_size(50);

        let ring_key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            format!("whsec_{}", "ab".repeat(32)).as_bytes(),
        );
        group.bench_function("ring hmac-sha256", |b| {
            b.iter(|| ring::hmac::sign(&ring_key, black_box(&payload)))
        });

        let mut headers = request_headers(len);
        group.bench_function("ring hmac-sha256 + hex header", |b| {
            b.iter(|| {
                let tag = ring::hmac::sign(&ring_key, black_box(&payload));
                let mut text = [0u8; 64];
                hex::encode_to_slice(tag.as_ref(), &mut text)
                    .expect("64 bytes hold the hex of a 32-byte tag");
                headers.insert(
                    &STORNO_HEADER,
                    HeaderValue::from_bytes(&text).expect("hex is a valid header value"),
                );
                black_box(&mut headers);
            })
        });

        for scheme in Scheme::ALL {
            let secret = scheme.generate_secret().expect("the OS has randomness");
            let signer = EndpointSigner::new(scheme, &secret).expect("a generated secret fits");
            let delivery = delivery_for(scheme);
            let mut headers = request_headers(len);
            group.bench_with_input(
                BenchmarkId::new("hooksign", scheme.as_str()),
                &payload,
                |b, payload| {
                    b.iter(|| {
                        let mut body_signer = signer.begin(&delivery);
                        body_signer.update(black_box(payload));
                        body_signer.finish(&STORNO_HEADER, &mut headers);
                        black_box(&mut headers);
                    })
                },
            );
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
