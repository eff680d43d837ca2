//! The audit log (`[admin] audit_log`): one JSON line per admin write that changes an endpoint
//! or its secrets, appended and fsync'd before the write's response goes out.
//!
//! Each line carries `prev`, the SHA-256 of the line before it (64 zeros for the first), and
//! ends with `hash`, the SHA-256 of the line's own text up to that field, so editing, removing
//! or reordering any line breaks the chain ([`verify`], `hooksign audit verify PATH`). The log
//! names the token, the company, the endpoint, the action, the idempotency key and the keyring
//! key a secret was sealed under, never a secret. The chain makes tampering evident, not
//! impossible: someone who can rewrite the whole file can recompute every hash, so ship the lines
//! (or at least the last hash) somewhere the store's host cannot write.
//!
//! A line cut short by a crash was never acknowledged (the response waits for the fsync): it is
//! removed when the log is opened again, with a warning.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// The `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How every line ends: `,"hash":"<64 hex>"}`.
const HASH_FIELD: &str = ",\"hash\":\"";
const HASH_TAIL: usize = HASH_FIELD.len() + 64 + 2;

/// The audit log, open for appending. Cheap to clone; appends are serialized.
#[derive(Clone, Debug)]
pub struct AuditLog {
    path: PathBuf,
    inner: Arc<Mutex<Chain>>,
}

#[derive(Debug)]
struct Chain {
    file: File,
    /// The hash of the last line written (the next line's `prev`).
    last: String,
}

/// One admin write, as the log records it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub token: String,
    pub company: String,
    pub endpoint: String,
    /// `create`, `update`, `delete`, `regenerate_secret`, `revoke_previous`,
    /// `set_client_certificate`, `remove_client_certificate`, `auto_disable`.
    pub action: &'static str,
    pub idempotency_key: Option<String>,
    /// The keyring key the endpoint's secrets are stored under now (none: plaintext store).
    pub key_name: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    time: String,
    token: &'a str,
    company: &'a str,
    endpoint: &'a str,
    action: &'a str,
    idempotency_key: Option<&'a str>,
    key_name: Option<&'a str>,
    prev: &'a str,
}

/// Why the audit log could not be opened or appended to.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "audit log {path}: line {line} is not an audit line; run `hooksign audit verify {path}`"
    )]
    Corrupt { path: String, line: usize },
}

/// What `hooksign audit verify` found wrong.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("line {line}: {why}")]
    Broken { line: usize, why: String },
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log at `path` to append to it, continuing its chain.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let shown = path.display().to_string();
        let io_error = |source| AuditError::Io {
            path: shown.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error)?;
        let text = std::fs::read(path).map_err(io_error)?;
        let complete = text
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |nl| nl + 1);
        if complete < text.len() {
            tracing::warn!(path = %shown, bytes = text.len() - complete, "removing a torn last audit line (a crash mid-append; never acknowledged)");
            file.set_len(complete as u64).map_err(io_error)?;
            file.sync_all().map_err(io_error)?;
        }
        let mut last = GENESIS.to_owned();
        let lines = text[..complete].split(|&b| b == b'\n');
        for (index, line) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
            let line_text = std::str::from_utf8(line).map_err(|_| AuditError::Corrupt {
                path: shown.clone(),
                line: index + 1,
            })?;
            last = split_hash(line_text)
                .map(|(_, hash)| hash.to_owned())
                .ok_or(AuditError::Corrupt {
                    path: shown.clone(),
                    line: index + 1,
                })?;
        }
        Ok(Self {
            path: path.to_owned(),
            inner: Arc::new(Mutex::new(Chain { file, last })),
        })
    }

    /// Appends `entry` as one line and fsyncs it (on a blocking thread); returns once durable.
    pub async fn append(&self, entry: Entry) -> Result<(), AuditError> {
        let this = self.clone();
        let path = self.path.display().to_string();
        tokio::task::spawn_blocking(move || this.append_now(&entry))
            .await
            .map_err(|err| AuditError::Io {
                path,
                source: io::Error::other(err.to_string()),
            })?
    }

    fn append_now(&self, entry: &Entry) -> Result<(), AuditError> {
        let io_error = |source| AuditError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let mut chain = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = OffsetDateTime::now_utc();
        let body = serde_json::to_string(&Line {
            time: now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| now.unix_timestamp().to_string()),
            token: &entry.token,
            company: &entry.company,
            endpoint: &entry.endpoint,
            action: entry.action,
            idempotency_key: entry.idempotency_key.as_deref(),
            key_name: entry.key_name.as_deref(),
            prev: &chain.last,
        })
        .map_err(|err| io_error(io::Error::other(err)))?;
        let hash = hex::encode(Sha256::digest(body.as_bytes()));
        let line = format!("{}{HASH_FIELD}{hash}\"}}\n", &body[..body.len() - 1]);
        chain.file.write_all(line.as_bytes()).map_err(io_error)?;
        chain.file.sync_data().map_err(io_error)?;
        chain.last = hash;
        Ok(())
    }
}

/// Checks the whole chain of the log at `path`; the number of lines on success, else the first
/// line at fault.
pub fn verify(path: &Path) -> Result<usize, VerifyError> {
    let file = File::open(path).map_err(|source| VerifyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mut prev = GENESIS.to_owned();
    let mut count = 0;
    for (index, line) in io::BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let broken = |why: &str| VerifyError::Broken {
            line: number,
            why: why.to_owned(),
        };
        let line = line.map_err(|_| broken("is not UTF-8 text"))?;
        let (body, hash) =
            split_hash(&line).ok_or_else(|| broken("does not end with its \"hash\" field"))?;
        if hex::encode(Sha256::digest(body.as_bytes())) != hash {
            return Err(broken("its hash does not match its content (edited)"));
        }
        let value: serde_json::Value =
            serde_json::from_str(&body).map_err(|_| broken("is not a JSON object"))?;
        if value.get("prev").and_then(|p| p.as_str()) != Some(prev.as_str()) {
            return Err(broken(
                "its prev is not the hash of the line before (a line was removed, inserted or reordered)",
            ));
        }
        prev = hash.to_owned();
        count += 1;
    }
    Ok(count)
}

/// A line's body as hashed (`{…}` without the hash field) and its hash.
fn split_hash(line: &str) -> Option<(String, &str)> {
    if line.len() < HASH_TAIL || !line.ends_with("\"}") {
        return None;
    }
    let cut = line.len() - HASH_TAIL;
    let tail = line.get(cut..)?;
    let hash = tail.strip_prefix(HASH_FIELD)?.strip_suffix("\"}")?;
    if !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((format!("{}}}", &line[..cut]), hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &'static str) -> Entry {
        Entry {
            token: "ops".into(),
            company: "550e8400-e29b-41d4-a716-446655440000".into(),
            endpoint: "a1b2c3d4-e5f6-7890-abcd-ef1234567890".into(),
            action,
            idempotency_key: Some("k-1".into()),
            key_name: Some("2026-12".into()),
        }
    }

    #[tokio::test]
    async fn the_chain_verifies_and_continues_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        log.append(entry("create")).await.unwrap();
        log.append(entry("regenerate_secret")).await.unwrap();
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        log.append(entry("delete")).await.unwrap();
        assert_eq!(verify(&path).unwrap(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["prev"], GENESIS);
        assert_eq!(first["action"], "create");
        assert_eq!(first["keyName"], "2026-12");
        assert_eq!(first["idempotencyKey"], "k-1");
    }

    #[tokio::test]
    async fn edits_removals_and_torn_lines_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        for action in ["create", "update", "delete"] {
            log.append(entry(action)).await.unwrap();
        }
        drop(log);
        let good = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = good.lines().collect();

        std::fs::write(&path, good.replacen("\"update\"", "\"create\"", 1)).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.starts_with("line 2: its hash"), "{err}");

        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.starts_with("line 2: its prev"), "{err}");

        // A torn last line (a crash mid-append) is dropped when the log is opened again.
        std::fs::write(&path, format!("{good}{{\"time\":\"2026")).unwrap();
        let log = AuditLog::open(&path).unwrap();
        log.append(entry("update")).await.unwrap();
        assert_eq!(verify(&path).unwrap(), 4);
    }
}
