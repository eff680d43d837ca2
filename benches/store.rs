//! The store's costs: the per-delivery snapshot lookup (one atomic load and a hash lookup) at 10
//! and 100,000 endpoints, loading a store file (parse, validate, key every HMAC) at 10,000 and
//! 100,000 endpoints, one rotation through the writer task (the rotated endpoint alone rebuilt,
//! the file written durably: temp file, fsync, rename, fsync dir) at 10, 10,000 and 100,000
//! endpoints, and the periodic delivery-record flush (one endpoint's records changed, the file
//! rewritten, the snapshot kept).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hooksign::config::EtcdConfig;
use hooksign::store::etcd::EtcdBackend;
use hooksign::store::file::{parse_store, FileBackend};
use hooksign::store::{rotate, Backend, DeliveryOutcome, Edit, Snapshot, Store, WriteError};
use uuid::Uuid;

/// A store file of `count` active storno endpoints with random uuids and secrets.
fn store_text(count: usize) -> (String, Vec<Uuid>) {
    let mut text = String::with_capacity(count * 330);
    let mut uuids = Vec::with_capacity(count);
    for _ in 0..count {
        let uuid = Uuid::new_v4();
        let secret = hooksign::secret::Secret::generate().expect("the OS has randomness");
        text.push_str(&format!(
            "[[webhooks]]\nuuid = \"{uuid}\"\ncompany = \"550e8400-e29b-41d4-a716-446655440000\"\n\
             url = \"https://hooks.example.com/storno\"\nevents = [\"*\"]\nstatus = \"active\"\n\
             secret = \"{}\"\ncreated_at = \"2026-02-18T10:00:00Z\"\n\
             updated_at = \"2026-02-18T10:00:00Z\"\n\n",
            secret.expose()
        ));
        uuids.push(uuid);
    }
    (text, uuids)
}

fn gauge() -> prometheus::IntGauge {
    prometheus::IntGauge::new("bench_endpoints", "endpoints").expect("a valid gauge")
}

fn snapshot(text: &str) -> Snapshot {
    parse_store(text, "bench.toml", None).expect("the generated store is valid")
}

fn lookup(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let _writer_runs_here = runtime.enter();
    let mut group = c.benchmark_group("snapshot lookup");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for count in [10, 100_000] {
        let (text, uuids) = store_text(count);
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::new(
            snapshot(&text),
            Box::new(FileBackend::new(dir.path().join("webhooks.toml"))),
            gauge(),
        );
        let mut next = 0;
        group.bench_with_input(BenchmarkId::from_parameter(count), &uuids, |b, uuids| {
            b.iter(|| {
                next = (next + 7919) % uuids.len();
                // What a delivery does: one atomic load, one lookup, one Arc clone.
                let endpoint = store
                    .snapshot()
                    .get(black_box(&uuids[next]))
                    .cloned()
                    .expect("a known uuid");
                black_box(endpoint)
            })
        });
    }
    group.finish();
}

fn load_and_write(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let _writer_runs_here = runtime.enter();
    let mut group = c.benchmark_group("store");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(3));
    for count in [10, 10_000, 100_000] {
        let (text, uuids) = store_text(count);
        if count > 10 {
            group.bench_with_input(BenchmarkId::new("load", count), &text, |b, text| {
                b.iter(|| snapshot(black_box(text)))
            });
        }

        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("webhooks.toml");
        std::fs::write(&path, &text).expect("writing the store");
        let backend = FileBackend::new(&path);
        let loaded = backend
            .load_file()
            .expect("the generated store loads")
            .expect("the file exists");
        let store = Store::new(loaded, Box::new(backend), gauge());
        let rotated = uuids[count / 2];
        group.bench_function(BenchmarkId::new("file: one rotation", count), |b| {
            b.iter(|| runtime.block_on(rotate_one(&store, rotated)))
        });
        let busy = store
            .snapshot()
            .endpoints()
            .nth(count / 2)
            .cloned()
            .expect("an endpoint");
        let mut flushed = 0;
        group.bench_function(BenchmarkId::new("record flush", count), |b| {
            b.iter(|| {
                busy.stats.record(DeliveryOutcome::Success);
                let wrote = runtime
                    .block_on(store.flush_delivery_records(&mut flushed))
                    .expect("the flush succeeds");
                assert!(wrote, "a recorded delivery makes the flush write");
            })
        });
    }
    group.finish();
}

/// An etcd on free loopback ports in a temp dir, killed by PID on drop.
struct Etcd {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start() -> Option<Self> {
        const ETCD: &str = "/usr/bin/etcd";
        if !std::path::Path::new(ETCD).exists() {
            println!("skipping the etcd benches: {ETCD} is not installed");
            return None;
        }
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port")
        };
        let (client, peer) = (port(), port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let dir = tempfile::tempdir().expect("a temp dir");
        let child = std::process::Command::new(ETCD)
            .args(["--name", "b", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("b={peer_url}")])
            .args(["--quota-backend-bytes", "4294967296"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("etcd starts");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(15), "etcd listens");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self {
            child,
            url,
            _dir: dir,
        })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd: loading 100,000 endpoints (paged, at one revision), and one rotation at 10, 10,000 and
/// 100,000 endpoints (one key written, one endpoint rebuilt).
fn etcd(c: &mut Criterion) {
    let Some(etcd) = Etcd::start() else { return };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let _writer_runs_here = runtime.enter();
    let mut group = c.benchmark_group("etcd");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(3));
    for count in [10, 10_000, 100_000] {
        let config = EtcdConfig {
            endpoints: vec![etcd.url.clone()],
            prefix: format!("/bench{count}/"),
            ca_file: None,
            username: None,
            password: None,
            page_size: 10_000,
            max_message_bytes: 64 << 20,
        };
        let (text, uuids) = store_text(count);
        let records = snapshot(&text).records();
        let backend = runtime
            .block_on(EtcdBackend::connect(&config, None))
            .expect("a client");
        runtime
            .block_on(backend.import(&records))
            .expect("the import succeeds");
        if count == 100_000 {
            group.bench_function(BenchmarkId::new("load", count), |b| {
                b.iter(|| {
                    runtime
                        .block_on(backend.load(None))
                        .expect("the prefix loads")
                })
            });
        }
        let loaded = runtime
            .block_on(backend.load(None))
            .expect("the prefix loads");
        let store = Store::new(loaded, Box::new(backend), gauge());
        let rotated = uuids[count / 2];
        group.bench_function(BenchmarkId::new("etcd: one rotation", count), |b| {
            b.iter(|| runtime.block_on(rotate_one(&store, rotated)))
        });
    }
    group.finish();
}

async fn rotate_one(store: &Store, uuid: Uuid) {
    store
        .update(move |snapshot| {
            let record = snapshot.get(&uuid).expect("a known uuid").record_now();
            let next = rotate(
                &record,
                Duration::ZERO,
                time::OffsetDateTime::now_utc(),
                None,
            )
            .expect("storno rotates");
            Ok::<_, WriteError>((Edit::put(next), ()))
        })
        .await
        .expect("the write succeeds");
}

criterion_group!(benches, lookup, load_and_write, etcd);
criterion_main!(benches);
