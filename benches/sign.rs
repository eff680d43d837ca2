//! The cost of signing one delivery, per scheme, against ring's HMAC-SHA256 of the same body
//! (ring is in the tree through rustls). Each body size is one group, so the ratios to
//! `ring hmac-sha256` read straight off criterion's report.
//!
//! A hooksign iteration is what the proxy does per delivery: clone the pre-keyed state and feed
//! the signed prefix (`begin`), feed the body (`update`), then finish into the scheme's headers
//! (hex or base64 text in a `HeaderMap`). The ring iteration is `hmac::sign` of the body alone.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hooksign::secret::Secret;
use hooksign::signing::{Delivery, EndpointSigner, MessageId, Scheme};
use http::{HeaderMap, HeaderName};

const STORNO_HEADER: HeaderName = HeaderName::from_static("x-storno-signature");

fn body(len: usize) -> Bytes {
    let head = br#"{"type":"invoice.created","pad":""#;
    let mut bytes = head.to_vec();
    bytes.resize(len - 2, b'x');
    bytes.extend_from_slice(b"\"}");
    Bytes::from(bytes)
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

        for scheme in Scheme::ALL {
            let secret = Secret::generate_for(scheme).expect("the OS has randomness");
            let signer = EndpointSigner::new(scheme, &secret).expect("a generated secret fits");
            let delivery = delivery_for(scheme);
            group.bench_with_input(
                BenchmarkId::new("hooksign", scheme.as_str()),
                &payload,
                |b, payload| {
                    b.iter(|| {
                        let mut body_signer = signer.begin(&delivery);
                        body_signer.update(black_box(payload));
                        let mut headers = HeaderMap::new();
                        body_signer.finish(&STORNO_HEADER, &mut headers);
                        headers
                    })
                },
            );
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
