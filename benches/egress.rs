//! The cost of the egress guard's classification: the table walk every resolved address goes
//! through, and the policy verdict (allow_cidrs first) the connector applies.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use hooksign::config::EgressConfig;
use hooksign::egress::{classify, EgressPolicy, SystemResolver};

fn addresses() -> Vec<IpAddr> {
    [
        "93.184.216.34",
        "223.255.255.255",
        "169.254.169.254",
        "10.1.2.3",
        "2606:4700:4700::1111",
        "::ffff:127.0.0.1",
        "64:ff9b::8.8.8.8",
        "fd00::1",
    ]
    .iter()
    .map(|text| text.parse().expect("a valid address"))
    .collect()
}

fn bench(c: &mut Criterion) {
    let ips = addresses();
    c.bench_function("classify 8 addresses", |b| {
        b.iter(|| {
            for ip in &ips {
                black_box(classify(black_box(*ip)));
            }
        })
    });
    let config = EgressConfig {
        allow_http: false,
        allow_private: false,
        allow_cidrs: vec![
            "10.20.0.0/16".parse().expect("a valid net"),
            "fd00:1::/32".parse().expect("a valid net"),
        ],
        allow_ports: vec![443],
        ca_file: None,
        proxy: None,
    };
    let policy = EgressPolicy::new(&config, Arc::new(SystemResolver));
    c.bench_function("policy verdict 8 addresses, 2 cidrs", |b| {
        b.iter(|| {
            for ip in &ips {
                black_box(policy.verdict(black_box(*ip)));
            }
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
