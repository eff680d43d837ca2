//! A real etcd on loopback for tests (free ports, temp data dir, killed by PID on drop); `None`
//! with a skip line when `/usr/bin/etcd` is not installed. Included with `#[path]` by the tests
//! that need it (`tests/etcd.rs`, `tests/secrets.rs`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::support::{free_port, Pki};

const ETCD: &str = "/usr/bin/etcd";

/// An etcd server on loopback; killed (by PID) on drop.
pub struct Etcd {
    pub client: u16,
    peer: u16,
    dir: TempDir,
    child: Option<Child>,
    /// Serving TLS with this certificate and key (PEM files), on `https://` URLs.
    tls: Option<(PathBuf, PathBuf)>,
}

impl Etcd {
    /// Starts etcd, or `None` (after printing a skip line) when it is not installed.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, None)
    }

    /// Starts etcd serving its clients over TLS with `pki`'s leaf certificate.
    pub fn start_tls(test: &str, pki: &Pki) -> Option<Self> {
        Self::start_with(
            test,
            Some((pki.leaf_path.clone(), pki.leaf_key_path.clone())),
        )
    }

    pub fn start_with(test: &str, tls: Option<(PathBuf, PathBuf)>) -> Option<Self> {
        if !Path::new(ETCD).exists() {
            println!("skipping {test}: {ETCD} is not installed (apt-get install etcd-server)");
            return None;
        }
        let mut etcd = Self {
            client: free_port(),
            peer: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            tls,
        };
        etcd.run();
        Some(etcd)
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client)
    }

    fn run(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let mut command = Command::new(ETCD);
        if let Some((cert, key)) = &self.tls {
            command
                .arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key);
        }
        let child = command
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.client)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "etcd did not listen within 15 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills etcd (SIGKILL to its PID) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.url()], None)
            .await
            .unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
