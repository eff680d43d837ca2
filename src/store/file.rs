//! The file backend: the TOML store file of SPEC section 3.
//!
//! Loading: a file that fails to parse or validate is rejected whole, with line and column for
//! every problem; a file that does not exist is an empty store.
//!
//! Writing: the whole file is written to a temp file in the same directory (named
//! `.<name>.hooksign-tmp-*`), fsync'd, given mode 0600, renamed over the store, and the directory
//! is fsync'd, before the write is acknowledged. Temp files a crash left behind are removed at
//! start. The SHA-256 of what hooksign last read or wrote is kept, so an edit made by someone
//! else is noticed before the next write builds on it, and hooksign's own writes are told apart
//! from outside edits.
//!
//! With a keyring, secrets are sealed in the file ([`super::crypt`]): each endpoint's sealed text
//! is reused on later writes, so a write encrypts only what changed (or what is not under the
//! primary key yet: after a new primary, the next write re-encrypts the rest).

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::crypt::{RekeyError, Sealer, REKEY_ATTEMPTS};
use super::idempotency::{IdempotencyLog, StoredIdempotency};
use super::{
    toml_out, Backend, BackendFuture, Edit, EndpointRecord, LoadError, Snapshot, WriteError,
};

/// What the store file starts with when hooksign writes it.
const HEADER: &str = "# hooksign store: endpoints and their signing secrets. Keep this file private (0600).\n\
                      # hooksign rewrites it on admin API changes; hand edits are picked up live.\n\n";

/// The store as a TOML file on disk.
#[derive(Debug)]
pub struct FileBackend {
    path: PathBuf,
    /// SHA-256 of the content hooksign last read or wrote (`None`: no file).
    known: Mutex<Option<[u8; 32]>>,
    /// How secrets are kept in the file.
    sealer: Sealer,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    /// `None`: the file has no `webhooks` at all (empty, or truncated before the first table).
    #[serde(default)]
    webhooks: Option<Vec<toml::Spanned<EndpointRecord>>>,
    #[serde(default)]
    idempotency: Vec<StoredIdempotency>,
}

/// A parsed store file: the records with the byte range of each table, the idempotency keys,
/// and whether the file said `webhooks = …` or had a `[[webhooks]]` table at all.
struct Parsed {
    records: Vec<EndpointRecord>,
    spans: Vec<std::ops::Range<usize>>,
    keys: Vec<StoredIdempotency>,
    says_webhooks: bool,
}

impl FileBackend {
    /// A backend reading and writing `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            known: Mutex::new(None),
            sealer: Sealer::plaintext(),
        }
    }

    /// This backend sealing and opening secrets with `sealer`.
    pub fn with_sealer(mut self, sealer: Sealer) -> Self {
        self.sealer = sealer;
        self
    }

    /// How secrets are kept in the file.
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// The store file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates the file. A missing file is `Ok(None)`.
    pub fn load_file(&self) -> Result<Option<Snapshot>, LoadError> {
        let loaded = read_and_parse(&self.path, None, &self.sealer)?;
        Ok(self.remember_loaded(loaded))
    }

    /// [`FileBackend::load_file`] on the blocking pool (see [`super::off_runtime`]), carrying
    /// `previous`'s delivery records.
    async fn load_off_runtime(
        &self,
        previous: Option<Arc<Snapshot>>,
    ) -> Result<Option<Snapshot>, LoadError> {
        let path = self.path.clone();
        let sealer = self.sealer.clone();
        let loaded =
            super::off_runtime(move || read_and_parse(&path, previous.as_deref(), &sealer)).await?;
        Ok(self.remember_loaded(loaded))
    }

    /// Remembers the digest of what was read (or that there was no file); the snapshot built
    /// from it.
    fn remember_loaded(&self, loaded: Option<([u8; 32], Snapshot)>) -> Option<Snapshot> {
        self.set_known(loaded.as_ref().map(|(digest, _)| *digest));
        loaded.map(|(_, snapshot)| snapshot)
    }

    /// Records the digest of what hooksign last read or wrote.
    fn set_known(&self, digest: Option<[u8; 32]>) {
        *self
            .known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = digest;
    }

    /// The SHA-256 of the file on disk (`None`: no file), read in blocks: the common case, a
    /// file hooksign itself wrote, costs no copy of the whole store in memory.
    fn digest_on_disk(&self) -> io::Result<Option<[u8; 32]>> {
        digest_of(&self.path)
    }

    fn is_known(&self, digest: Option<[u8; 32]>) -> bool {
        *self
            .known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            == digest
    }

    /// Whether the file on disk is what hooksign last read or wrote (the watcher skips those).
    pub fn unchanged(&self) -> bool {
        match self.digest_on_disk() {
            Ok(digest) => self.is_known(digest),
            Err(_) => false,
        }
    }

    /// Removes temp files a crashed writer left beside the store.
    /// Whether the store can be written where it is, checked once at start: a file that is its
    /// own mount point (a bind-mounted single file: rename over it fails with `EBUSY`), or a
    /// directory hooksign cannot create files in (a read-only Secret or ConfigMap mount).
    pub fn writability(&self) -> Writability {
        use std::os::unix::fs::MetadataExt;
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if let (Ok(file), Ok(parent)) = (std::fs::metadata(&self.path), std::fs::metadata(dir)) {
            if file.dev() != parent.dev() || is_mount_point(&self.path) {
                return Writability::OwnMount;
            }
        }
        let probe = tempfile::Builder::new()
            .prefix(".hooksign-probe-")
            .tempfile_in(dir);
        match probe {
            Ok(_) => Writability::Writable,
            Err(_) => Writability::ReadOnly,
        }
    }

    pub fn remove_stale_temp_files(&self) {
        let (Some(dir), Some(prefix)) = (self.path.parent(), temp_prefix(&self.path)) else {
            return;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {
                        tracing::warn!(file = %entry.path().display(), "removed a temp file left by an interrupted write")
                    }
                    Err(err) => {
                        tracing::warn!(file = %entry.path().display(), error = %err, "cannot remove a stale temp file")
                    }
                }
            }
        }
    }

    /// Makes `records` the whole store file, durably (`hooksign store export`).
    pub async fn write_records(&self, records: Vec<EndpointRecord>) -> Result<(), WriteError> {
        let sealer = self.sealer.clone();
        self.write_off_runtime(move || {
            let sealed = records
                .iter()
                .map(|record| sealer.seal_record(record))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| WriteError::Serialize(err.to_string()))?;
            Ok(render(&sealed))
        })
        .await
    }

    /// Writes `snapshot` as the whole file, re-encrypting every endpoint not under the primary
    /// key, only if the file is still the `expected` content (`hooksign store rekey`; it refuses
    /// rather than overwrite a change made meanwhile). Returns how many endpoints were sealed.
    pub fn rewrite_if_unchanged(
        &self,
        snapshot: &Snapshot,
        expected: Option<[u8; 32]>,
    ) -> Result<usize, WriteError> {
        let sealed = self
            .sealer
            .prepare(&snapshot.endpoints)
            .map_err(|err| WriteError::Serialize(err.to_string()))?;
        let text = toml_out::render_endpoints(
            HEADER,
            &snapshot.endpoints,
            &snapshot.idempotency.live(),
            &self.sealer,
        )
        .map_err(|err| WriteError::Serialize(err.to_string()))?;
        // Under the store's lock, so a write the server makes cannot land between this check and
        // the rename (and then be overwritten).
        let _lock = lock_store(&self.path).map_err(classify_write_error)?;
        // No other hooksign is writing now (it would hold the lock): a temp file here was left
        // by an interrupted write, such as an earlier rekey killed mid-way.
        self.remove_stale_temp_files();
        if digest_of(&self.path)? != expected {
            return Err(WriteError::Contended(format!(
                "{} (changed while it was being re-encrypted)",
                self.path.display()
            )));
        }
        write_locked(&self.path, &text)?;
        Ok(sealed)
    }

    /// The SHA-256 of the file as it is now (`None`: no file).
    pub fn digest(&self) -> io::Result<Option<[u8; 32]>> {
        digest_of(&self.path)
    }

    /// `hooksign store rekey`: re-encrypts every endpoint (and recorded answer) under the primary
    /// key in one durable write (the rename makes it all or nothing: a crash at any instant
    /// leaves the old file or the new one). If the file changes meanwhile it reads it again.
    /// `progress(done, total)` is called before and after; returns how many were re-encrypted.
    pub fn rekey(&self, mut progress: impl FnMut(usize, usize)) -> Result<usize, RekeyError> {
        if self.sealer.keyring().is_none() {
            return Err(RekeyError::NoKeyring);
        }
        let primary = self.sealer.primary();
        for _ in 0..REKEY_ATTEMPTS {
            let expected = self.digest().map_err(WriteError::Io)?;
            let Some(snapshot) = self.load_file()? else {
                progress(0, 0);
                return Ok(0);
            };
            let stale = snapshot
                .endpoints()
                .filter(|endpoint| Sealer::key_of(endpoint) != primary)
                .count();
            progress(0, stale);
            match self.rewrite_if_unchanged(&snapshot, expected) {
                Ok(sealed) => {
                    progress(sealed, stale);
                    return Ok(sealed);
                }
                Err(WriteError::Contended(_)) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(RekeyError::Contended(REKEY_ATTEMPTS))
    }

    /// Renders and writes the store on a blocking thread (rendering a large store and fsync both
    /// block), then remembers what was written.
    fn write_off_runtime(
        &self,
        render: impl FnOnce() -> Result<Zeroizing<String>, WriteError> + Send + 'static,
    ) -> BackendFuture<'_, Result<(), WriteError>> {
        Box::pin(async move {
            let path = self.path.clone();
            let digest = tokio::task::spawn_blocking(move || write_durably(&path, &render()?))
                .await
                .map_err(|err| WriteError::Io(io::Error::other(err.to_string())))??;
            self.set_known(Some(digest));
            Ok(())
        })
    }
}

impl Backend for FileBackend {
    fn load(
        &self,
        previous: Option<Arc<Snapshot>>,
    ) -> BackendFuture<'_, Result<Snapshot, LoadError>> {
        Box::pin(async move {
            match self.load_off_runtime(previous).await? {
                Some(snapshot) => Ok(snapshot),
                None => {
                    tracing::warn!(path = %self.path.display(), "store file does not exist; serving an empty store");
                    Ok(Snapshot::default())
                }
            }
        })
    }

    fn load_if_changed(
        &self,
        previous: Arc<Snapshot>,
    ) -> BackendFuture<'_, Result<Option<Snapshot>, LoadError>> {
        Box::pin(async move {
            let path = self.path.clone();
            let digest = super::off_runtime(move || digest_of(&path))
                .await
                .map_err(|source| LoadError::Read {
                    path: self.path.display().to_string(),
                    source,
                })?;
            if self.is_known(digest) {
                return Ok(None);
            }
            // `None`: deleted underneath; the write about to happen recreates it.
            self.load_off_runtime(Some(previous)).await
        })
    }

    /// The file is the whole store: `next` is written whole, whatever `edit` changed.
    fn persist(
        &self,
        next: Arc<Snapshot>,
        _edit: Arc<Edit>,
    ) -> BackendFuture<'_, Result<(), WriteError>> {
        self.persist_snapshot(next)
    }

    fn persist_snapshot(
        &self,
        snapshot: Arc<Snapshot>,
    ) -> BackendFuture<'_, Result<(), WriteError>> {
        let sealer = self.sealer.clone();
        self.write_off_runtime(move || {
            sealer
                .prepare(&snapshot.endpoints)
                .map_err(|err| WriteError::Serialize(err.to_string()))?;
            toml_out::render_endpoints(
                HEADER,
                &snapshot.endpoints,
                &snapshot.idempotency.live(),
                &sealer,
            )
            .map_err(|err| WriteError::Serialize(err.to_string()))
        })
    }
}

/// Whether `path` is itself a mount point (`/proc/self/mountinfo`'s fifth field). A bind mount
/// from the same filesystem keeps the device number, so the device alone cannot tell.
fn is_mount_point(path: &Path) -> bool {
    let (Ok(path), Ok(info)) = (
        std::fs::canonicalize(path),
        std::fs::read_to_string("/proc/self/mountinfo"),
    ) else {
        return false;
    };
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount| Path::new(&mount.replace("\\040", " ")) == path)
}

/// What [`FileBackend::writability`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writability {
    Writable,
    /// The directory takes no new file: admin writes answer 409 and delivery records stay in
    /// memory.
    ReadOnly,
    /// The file is a mount of its own: it cannot be replaced by rename.
    OwnMount,
}

/// The text of a store file holding `records` (what [`FileBackend`] writes).
pub fn render(records: &[EndpointRecord]) -> Zeroizing<String> {
    super::toml_out::render(HEADER, records)
}

/// Writes the whole store durably, under the store's lock; the SHA-256 of what was written.
fn write_durably(path: &Path, text: &str) -> Result<[u8; 32], WriteError> {
    let _lock = lock_store(path).map_err(classify_write_error)?;
    write_locked(path, text)
}

/// An exclusive lock (`flock`) on the store's directory, held while the returned handle is
/// open: every hooksign process that writes the file (the server, `hooksign store rekey`) takes
/// it around its rename, so one never renames over a write it has not seen. No file is created.
fn lock_store(path: &Path) -> io::Result<std::fs::File> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let handle = std::fs::File::open(dir)?;
    handle.lock()?;
    Ok(handle)
}

/// [`write_durably`] with the lock already held.
fn write_locked(path: &Path, text: &str) -> Result<[u8; 32], WriteError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let prefix = temp_prefix(path).unwrap_or_else(|| ".hooksign-tmp-".to_owned());
    let mut temp = tempfile::Builder::new()
        .prefix(&prefix)
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(classify_write_error)?;
    temp.write_all(text.as_bytes())
        .map_err(classify_write_error)?;
    temp.as_file().sync_all().map_err(classify_write_error)?;
    temp.persist(path)
        .map_err(|err| classify_write_error(err.error))?;
    // From here the new content is the file: a failure is reported as such, not as "nothing
    // was written".
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(WriteError::NotDurable)?;
    Ok(Sha256::digest(text.as_bytes()).into())
}

fn temp_prefix(path: &Path) -> Option<String> {
    path.file_name()
        .map(|name| format!(".{}.hooksign-tmp-", name.to_string_lossy()))
}

/// Linux's "no space left on device" and "disk quota exceeded".
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

/// A failure before the rename: the store file is untouched (the temp file is removed when
/// dropped).
fn classify_write_error(err: io::Error) -> WriteError {
    match err.kind() {
        io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied => {
            WriteError::ReadOnly(err.to_string())
        }
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => WriteError::NoSpace(err),
        io::ErrorKind::ResourceBusy => WriteError::NotReplaceable,
        _ if matches!(err.raw_os_error(), Some(ENOSPC | EDQUOT)) => WriteError::NoSpace(err),
        _ => WriteError::Io(err),
    }
}

/// The SHA-256 of the file at `path` (`None`: no file), read in blocks: the common case, a file
/// hooksign itself wrote, costs no copy of the whole store in memory.
fn digest_of(path: &Path) -> io::Result<Option<[u8; 32]>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut hasher = Sha256::new();
    let mut block = Zeroizing::new([0u8; 64 * 1024]);
    loop {
        match file.read(&mut block[..]) {
            Ok(0) => return Ok(Some(hasher.finalize().into())),
            Ok(read) => hasher.update(&block[..read]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// Reads the file at `path` and builds its snapshot (`None`: no file), with the SHA-256 of the
/// text it was built from.
fn read_and_parse(
    path: &Path,
    previous: Option<&Snapshot>,
    sealer: &Sealer,
) -> Result<Option<([u8; 32], Snapshot)>, LoadError> {
    let shown = path.display().to_string();
    let holds_endpoints = previous.is_some_and(|p| !p.is_empty());
    let Some(text) = read_text(path)? else {
        if holds_endpoints {
            // Removed, or its directory replaced: not an instruction to drop every endpoint.
            return Err(LoadError::Emptied { path: shown });
        }
        return Ok(None);
    };
    let snapshot = parse_store_with(&text, &shown, previous, sealer)?;
    Ok(Some((Sha256::digest(text.as_bytes()).into(), snapshot)))
}

/// The store file's text (`None`: no file).
fn read_text(path: &Path) -> Result<Option<Zeroizing<String>>, LoadError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(Zeroizing::new(text))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LoadError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Parses store-file text (read from `path`, for messages) into a snapshot; endpoints that
/// `previous` holds keep their delivery records (or are carried over whole when unchanged). A
/// text with no endpoint at all, while `previous` holds some, is refused unless it says
/// `webhooks = []`.
pub fn parse_store(
    text: &str,
    path: &str,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, LoadError> {
    parse_store_with(text, path, previous, &Sealer::plaintext())
}

/// [`parse_store`] with secrets opened by `sealer` (each endpoint keeps the sealed text it was
/// read with, so an unchanged endpoint is not re-encrypted when the file is written again).
pub fn parse_store_with(
    text: &str,
    path: &str,
    previous: Option<&Snapshot>,
    sealer: &Sealer,
) -> Result<Snapshot, LoadError> {
    let parsed = match parse_tables_one_by_one(text) {
        Some(parsed) => parsed,
        None => parse_whole(text, path)?,
    };
    if parsed.records.is_empty() && !parsed.says_webhooks && previous.is_some_and(|p| !p.is_empty())
    {
        return Err(LoadError::Emptied {
            path: path.to_owned(),
        });
    }
    let mut problems = Vec::new();
    let mut keys = Vec::with_capacity(parsed.keys.len());
    for (index, stored) in parsed.keys.into_iter().enumerate() {
        match sealer.open_idempotency(stored).and_then(|s| s.parse()) {
            Ok(recorded) => keys.push(recorded),
            Err(why) => problems.push(format!("idempotency[{index}].{why}")),
        }
    }
    let spans = parsed.spans;
    let locate = |index: usize, field: &str| {
        let span = spans[index].clone();
        let offset = find_key(text, span.clone(), field).unwrap_or(span.start);
        let (line, column) = crate::toml_error::line_column(text, offset);
        format!("webhooks[{index}].{field} (line {line}, column {column})")
    };
    let mut records = Vec::with_capacity(parsed.records.len());
    let mut sealed = Vec::with_capacity(parsed.records.len());
    for (index, record) in parsed.records.into_iter().enumerate() {
        match sealer.open_record(record) {
            Ok(opened) => {
                records.push(opened.record);
                sealed.push(opened.sealed);
            }
            Err((field, why)) => problems.push(format!("{}: {why}", locate(index, field))),
        }
    }
    if !problems.is_empty() {
        return Err(LoadError::Invalid {
            path: path.to_owned(),
            problems,
        });
    }
    let built = Snapshot::build(records, previous, locate);
    match built {
        Ok(snapshot) if problems.is_empty() => {
            for (endpoint, sealed) in snapshot.endpoints.iter().zip(sealed) {
                endpoint.sealed.store(sealed);
            }
            Ok(snapshot.with_idempotency(IdempotencyLog::from_recorded(keys)))
        }
        Ok(_) => Err(LoadError::Invalid {
            path: path.to_owned(),
            problems,
        }),
        Err(mut more) => {
            more.append(&mut problems);
            Err(LoadError::Invalid {
                path: path.to_owned(),
                problems: more,
            })
        }
    }
}

/// The whole file as one TOML document (any layout TOML allows).
fn parse_whole(text: &str, path: &str) -> Result<Parsed, LoadError> {
    let file: StoreFile = toml::from_str(text).map_err(|err| LoadError::Parse {
        path: path.to_owned(),
        message: crate::toml_error::describe(&err, text),
    })?;
    let says_webhooks = file.webhooks.is_some();
    let (records, spans) = file
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|spanned| (spanned.span(), spanned.into_inner()))
        .map(|(span, record)| (record, span))
        .unzip();
    Ok(Parsed {
        records,
        spans,
        keys: file.idempotency,
        says_webhooks,
    })
}

/// The usual layout, nothing but `[[webhooks]]` tables (and comments before the first), then
/// any `[[idempotency]]` tables, parsed one table at a time: the parser's document model for a
/// large store peaks at many times the file's size, and memory freed after the parse stays with
/// the process. `None` when the file has another shape or any table does not parse alone;
/// [`parse_whole`] then gives the answer (and the error, with its position in the whole file).
fn parse_tables_one_by_one(text: &str) -> Option<Parsed> {
    const WEBHOOKS: &str = "[[webhooks]]";
    const KEYS: &str = "[[idempotency]]";
    // (start of the header, whether it is an idempotency table)
    let mut starts: Vec<(usize, bool)> = Vec::new();
    let mut in_keys = false;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed == WEBHOOKS && !in_keys {
            starts.push((offset + line.find(WEBHOOKS)?, false));
        } else if trimmed == KEYS {
            in_keys = true;
            starts.push((offset + line.find(KEYS)?, true));
        } else if trimmed.starts_with('[')
            || (starts.is_empty() && !trimmed.is_empty() && !trimmed.starts_with('#'))
        {
            return None;
        }
        offset += line.len();
    }
    let mut parsed = Parsed {
        records: Vec::with_capacity(starts.len()),
        spans: Vec::with_capacity(starts.len()),
        keys: Vec::new(),
        says_webhooks: starts.first().is_some_and(|(_, key)| !key),
    };
    for (index, &(start, key)) in starts.iter().enumerate() {
        let end = starts.get(index + 1).map_or(text.len(), |next| next.0);
        if key {
            let table = &text[start + KEYS.len()..end];
            parsed.keys.push(toml::from_str(table).ok()?);
        } else {
            let table = &text[start + WEBHOOKS.len()..end];
            parsed.records.push(toml::from_str(table).ok()?);
            parsed.spans.push(start..end);
        }
    }
    Some(parsed)
}

/// Finds where `key = ` starts inside the byte range of a table.
fn find_key(text: &str, span: std::ops::Range<usize>, key: &str) -> Option<usize> {
    let region = text.get(span.clone())?;
    let mut offset = 0;
    for line in region.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                return Some(span.start + offset + (line.len() - trimmed.len()));
            }
        }
        offset += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[webhooks]]
uuid = "a1b2c3d4-e5f6-7890-abcd-ef1234567890"
company = "550e8400-e29b-41d4-a716-446655440000"
url = "https://your-app.example.com/webhooks/storno"
events = ["invoice.created", "invoice.paid"]
description = "Production invoice notifications"
status = "active"
scheme = "storno"
secret = "whsec_9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
created_at = "2026-02-18T10:00:00Z"
updated_at = "2026-02-18T10:00:00Z"
"#;

    #[test]
    fn the_spec_example_loads() {
        let snapshot = parse_store(GOOD, "webhooks.toml", None).unwrap();
        assert_eq!(snapshot.len(), 1);
    }

    #[test]
    fn validation_problems_carry_line_and_column() {
        let text = GOOD.replace("https://your-app", "ftp://your-app");
        let err = parse_store(&text, "webhooks.toml", None).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("webhooks[0].url (line 5, column 1)"),
            "{message}"
        );
    }

    #[test]
    fn syntax_errors_carry_a_position_and_no_secret() {
        let text = GOOD.replace("secret = \"whsec_9f86", "secret = whsec_9f86");
        let err = parse_store(&text, "webhooks.toml", None).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("line 10"), "{message}");
        assert!(!message.contains("9f86d0"), "secret leaked: {message}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let text = GOOD.replace("status = \"active\"", "statsu = \"active\"");
        let err = parse_store(&text, "webhooks.toml", None).unwrap_err();
        assert!(err.to_string().contains("statsu"), "{err}");
    }

    #[test]
    fn table_by_table_parsing_agrees_with_the_whole_file() {
        let two = format!(
            "# comment\n{GOOD}\n{}",
            GOOD.replace("a1b2c3d4", "b1b2c3d4")
        );
        let one_by_one = parse_tables_one_by_one(&two).expect("the usual layout");
        let whole = parse_whole(&two, "webhooks.toml").unwrap();
        assert_eq!(one_by_one.records.len(), 2);
        assert_eq!(one_by_one.spans.len(), 2);
        for (a, b) in one_by_one.records.iter().zip(&whole.records) {
            assert_eq!((&a.uuid, &a.url, &a.events), (&b.uuid, &b.url, &b.events));
            assert_eq!(a.secret.expose(), b.secret.expose());
        }
        // Other layouts are left to the whole-file parser, which accepts them.
        let inline = "webhooks = [{ uuid = \"a1b2c3d4-e5f6-7890-abcd-ef1234567890\", \
                      company = \"550e8400-e29b-41d4-a716-446655440000\", url = \"https://x.example/\", \
                      events = [\"*\"], secret = \"whsec_9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\" }]\n";
        assert!(parse_tables_one_by_one(inline).is_none());
        assert_eq!(parse_store(inline, "webhooks.toml", None).unwrap().len(), 1);
        // A table that does not parse alone falls back too, so the error has its real position.
        let broken = GOOD.replace("status = \"active\"", "status = ");
        assert!(parse_tables_one_by_one(&broken).is_none());
        assert!(parse_store(&broken, "webhooks.toml", None)
            .unwrap_err()
            .to_string()
            .contains("line 8"));
    }

    #[test]
    fn line_column_counts_from_one() {
        use crate::toml_error::line_column;
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
