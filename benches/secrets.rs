//! The cost of secrets at rest: loading a store file of 100,000 endpoints (parse, open every
//! sealed secret, validate, key every HMAC) encrypted against the same store in plaintext, and
//! one rotation through the writer task at 100,000 endpoints (the file rewritten durably; with a
//! keyring only the rotated endpoint is encrypted again, the others reuse their sealed text).
//!
//! `cargo bench --bench secrets -- --noplot`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hooksign::keyring::Keyring;
use hooksign::secret::Secret;
use hooksign::store::crypt::Sealer;
use hooksign::store::file::{self, parse_store_with, FileBackend};
use hooksign::store::{rotate, Edit, EndpointRecord, Store, WriteError};
use uuid::Uuid;

const COUNT: usize = 100_000;

/// `count` active storno endpoints with random uuids and secrets.
fn records(count: usize) -> Vec<EndpointRecord> {
    (0..count)
        .map(|_| EndpointRecord {
            uuid: Uuid::new_v4().to_string(),
            company: "550e8400-e29b-41d4-a716-446655440000".into(),
            url: "https://hooks.example.com/storno".into(),
            events: vec!["*".into()],
            description: String::new(),
            status: "active".into(),
            scheme: "storno".into(),
            secret: Secret::generate().expect("the OS has randomness"),
            previous_secrets: Vec::new(),
            previous_secrets_expire_at: Vec::new(),
            previous_secret: None,
            previous_secret_expires_at: None,
            created_at: Some("2026-02-18T10:00:00Z".into()),
            updated_at: Some("2026-02-18T10:00:00Z".into()),
            deliveries_count: 0,
            last_delivery_at: None,
            last_delivery_status: None,
            consecutive_failures: 0,
            client_certificate: None,
            client_private_key: None,
        })
        .collect()
}

fn sealer() -> Sealer {
    let key = hooksign::secret::random_bytes::<32>().expect("the OS has randomness");
    Sealer::new(Some(Keyring::single("bench", *key)), false)
}

/// The store file's text, each secret sealed by `sealer`.
fn text(records: &[EndpointRecord], sealer: &Sealer) -> String {
    let sealed: Vec<EndpointRecord> = records
        .iter()
        .map(|record| sealer.seal_record(record).expect("sealing succeeds"))
        .collect();
    file::render(&sealed).to_string()
}

fn load(c: &mut Criterion) {
    let records = records(COUNT);
    let mut group = c.benchmark_group("store load");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(15));
    for (name, sealer) in [("plaintext", Sealer::plaintext()), ("encrypted", sealer())] {
        let text = text(&records, &sealer);
        group.bench_with_input(BenchmarkId::new(name, COUNT), &text, |b, text| {
            b.iter(|| {
                parse_store_with(black_box(text), "bench.toml", None, &sealer)
                    .expect("the generated store is valid")
            })
        });
    }
    group.finish();
}

fn rotation(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let _writer_runs_here = runtime.enter();
    let records = records(COUNT);
    let mut group = c.benchmark_group("file: one rotation");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(15));
    for (name, sealer) in [("plaintext", Sealer::plaintext()), ("encrypted", sealer())] {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("webhooks.toml");
        std::fs::write(&path, text(&records, &sealer)).expect("writing the store");
        let backend = FileBackend::new(&path).with_sealer(sealer);
        let loaded = backend
            .load_file()
            .expect("the generated store loads")
            .expect("the file exists");
        let gauge = prometheus::IntGauge::new("bench_endpoints", "endpoints").expect("a gauge");
        let store = Store::new(loaded, Box::new(backend), gauge);
        let uuid: Uuid = records[COUNT / 2].uuid.parse().expect("a uuid");
        group.bench_function(BenchmarkId::new(name, COUNT), |b| {
            b.iter(|| runtime.block_on(rotate_one(&store, uuid)))
        });
    }
    group.finish();
}

async fn rotate_one(store: &Store, uuid: Uuid) {
    store
        .update(move |snapshot| {
            let record = snapshot
                .get(&uuid)
                .expect("the endpoint exists")
                .record_now();
            let next = rotate(
                &record,
                Duration::ZERO,
                time::OffsetDateTime::now_utc(),
                None,
            )
            .map_err(|err| WriteError::Serialize(err.to_string()))?;
            Ok::<_, WriteError>((Edit::put(next), ()))
        })
        .await
        .expect("the rotation is written");
}

criterion_group!(benches, load, rotation);
criterion_main!(benches);
