//! Live reload of the file store: a `notify` watch on the store file's parent directory (a watch
//! on the file itself dies at the first rename by an editor, an atomic writer or Kubernetes),
//! filtered on the file's name and on Kubernetes' `..data` symlink, debounced, then one re-read.
//!
//! A reload that finds the content hooksign itself last wrote or read is skipped, so admin writes
//! cause no reload storm. A file that does not load is rejected whole: the snapshot in service
//! stays, the error is logged with its position, and the metrics say so. `SIGHUP` forces a
//! re-read.
//!
//! The watch follows the directory, not just its name: every [`DIR_CHECK`] the directory's
//! identity (device and inode) is compared with what is watched, so a directory that was
//! replaced or recreated (`mv store store.old; mkdir store`) is watched anew and re-read.
//! Reloads go through the store's writer like every other change.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::crypt::Sealer;
use super::{LoadError, Store};
use crate::keyring::Keyring;
use crate::metrics::{ReloadMetrics, ReloadOutcome};

/// Quiet time after the last change before the file is re-read.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// A stream of changes still reloads at least this often.
const MAX_DELAY: Duration = Duration::from_millis(500);
/// How often the watched directory's identity is checked (one `stat`).
pub const DIR_CHECK: Duration = Duration::from_secs(1);

/// Why the watch could not start (hooksign keeps serving; reloads then need `SIGHUP`).
#[derive(Debug, thiserror::Error)]
#[error("watching {dir} for store changes: {source}")]
pub struct WatchError {
    dir: String,
    #[source]
    source: notify::Error,
}

/// Watches `path`'s directory until `shutdown` fires, reloading `store` on every change.
pub fn spawn(
    store: Store,
    reloads: ReloadMetrics,
    path: PathBuf,
    shutdown: CancellationToken,
) -> Result<(), WatchError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let (mut watcher, mut changed) = file_changes(&path)?;
    let mut watched = identity(&dir);
    tracing::info!(dir = %dir.display(), "watching the store file for changes");

    tokio::spawn(async move {
        let mut checks = tokio::time::interval(DIR_CHECK);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                received = changed.recv() => {
                    if received.is_none() { return }
                    debounce(&mut changed).await;
                }
                _ = checks.tick() => {
                    let now = identity(&dir);
                    if now == watched || now.is_none() {
                        continue;
                    }
                    // Replaced or recreated: watch the directory now at that path.
                    let _ = watcher.unwatch(&dir);
                    match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                        Ok(()) => {
                            watched = now;
                            tracing::warn!(dir = %dir.display(), "the store's directory was replaced; watching the new one");
                        }
                        Err(err) => {
                            tracing::error!(dir = %dir.display(), error = %err, "cannot watch the store's new directory; will retry");
                            continue;
                        }
                    }
                }
            }
            reload_if_changed(&store, &reloads).await;
        }
    });
    Ok(())
}

/// A watch on `path`'s directory that signals each change to the file (by name, or Kubernetes'
/// `..data` symlink), for a caller that re-reads the file itself (the config). Keep the
/// watcher alive as long as the changes are wanted.
pub fn file_changes(
    path: &Path,
) -> Result<(notify::RecommendedWatcher, mpsc::Receiver<()>), WatchError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(OsStr::to_owned).unwrap_or_default();
    let (changes, changed) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(event) => {
                may_change_content(&event.kind)
                    && event.paths.iter().any(|p| concerns_store(p, &name))
            }
            Err(_) => true,
        };
        if relevant {
            let _ = changes.try_send(());
        }
    })
    .map_err(|source| WatchError {
        dir: dir.display().to_string(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError {
            dir: dir.display().to_string(),
            source,
        })?;
    Ok((watcher, changed))
}

/// Waits out a burst of changes (see [`DEBOUNCE`]).
pub async fn settle(changed: &mut mpsc::Receiver<()>) {
    debounce(changed).await;
}

/// Watches the keyring file's directory until `shutdown` fires, like the store file's. Each
/// change re-reads the keyring: a keyring that does not load is logged and the one in service
/// stays; one that loads is swapped into `sealer` (later writes seal under its primary, reads
/// open with its keys) and the store is re-read with it.
pub fn spawn_keyring(
    store: Store,
    sealer: Sealer,
    reloads: KeyringReloads,
    path: PathBuf,
    shutdown: CancellationToken,
) -> Result<(), WatchError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let (watcher, mut changed) = file_changes(&path)?;
    tracing::info!(dir = %dir.display(), "watching the keyring file for changes");
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                received = changed.recv() => {
                    if received.is_none() { return }
                    debounce(&mut changed).await;
                }
            }
            reload_keyring(&store, &sealer, &reloads, &path).await;
        }
    });
    Ok(())
}

/// The metrics a keyring reload records: its own, then the store's (the store is re-read).
#[derive(Clone, Debug)]
pub struct KeyringReloads {
    pub keyring: ReloadMetrics,
    pub store: ReloadMetrics,
}

/// Re-reads the keyring at `path` into `sealer`, then the store with it.
pub async fn reload_keyring(store: &Store, sealer: &Sealer, reloads: &KeyringReloads, path: &Path) {
    let read = path.to_owned();
    match super::off_runtime(move || Keyring::load(&read)).await {
        Ok(keyring) => {
            let names = keyring.names().collect::<Vec<_>>().join(", ");
            tracing::info!(primary = %keyring.primary(), keys = %names, "keyring reloaded");
            sealer.replace_keyring(keyring);
            reloads.keyring.record(ReloadOutcome::Applied);
            reload_now(store, &reloads.store).await;
        }
        Err(err) => {
            reloads.keyring.record(ReloadOutcome::Rejected);
            tracing::error!(error = %crate::error_chain::error_chain(&err), "keyring rejected; the keyring in service stays");
        }
    }
}

/// Re-reads the store whatever its content (`SIGHUP`).
pub async fn reload_now(store: &Store, reloads: &ReloadMetrics) {
    match store.reload().await {
        Ok(count) => {
            reloads.record(ReloadOutcome::Applied);
            tracing::info!(endpoints = count, "store reloaded");
        }
        Err(err) => reject(reloads, &err),
    }
}

async fn reload_if_changed(store: &Store, reloads: &ReloadMetrics) {
    match store.reload_if_changed().await {
        Ok(Some(count)) => {
            reloads.record(ReloadOutcome::Applied);
            tracing::info!(endpoints = count, "store file changed; reloaded");
        }
        // Back to the content in service after a rejected edit: the store is healthy again.
        Ok(None) if reloads.last_failed() => {
            reloads.record(ReloadOutcome::Applied);
            tracing::info!(
                endpoints = store.snapshot().len(),
                "store file restored to the content in service"
            );
        }
        Ok(None) => tracing::debug!("store file event with unchanged content; nothing to reload"),
        Err(err) => reject(reloads, &err),
    }
}

fn reject(reloads: &ReloadMetrics, err: &LoadError) {
    reloads.record(ReloadOutcome::Rejected);
    tracing::error!(error = %err, "store rejected; the previous snapshot stays in service");
}

/// A directory's device and inode (`None`: it does not exist now).
fn identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

/// Waits until no change arrived for [`DEBOUNCE`], or [`MAX_DELAY`] passed.
async fn debounce(changed: &mut mpsc::Receiver<()>) {
    let deadline = tokio::time::Instant::now() + MAX_DELAY;
    loop {
        let quiet = tokio::time::sleep(DEBOUNCE);
        tokio::select! {
            () = quiet => return,
            () = tokio::time::sleep_until(deadline) => return,
            received = changed.recv() => if received.is_none() { return },
        }
    }
}

/// Whether an event of this kind may have changed a file's content. Opening, reading and closing
/// without writing may not: hooksign's own re-read causes those, and following them would re-read
/// the file forever (at 100,000 endpoints, a quarter of a core spent re-reading 20 MB).
fn may_change_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Whether an event on `path` may have changed the store: the file itself, or Kubernetes'
/// `..data` symlink (and its `..`-named timestamped directories) that the file points through.
fn concerns_store(path: &Path, name: &OsStr) -> bool {
    match path.file_name() {
        Some(file) if file == name => true,
        Some(file) => file.to_string_lossy().starts_with(".."),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_not_changes() {
        use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ] {
            assert!(!may_change_content(&kind), "{kind:?}");
        }
        for kind in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Create(CreateKind::File),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(may_change_content(&kind), "{kind:?}");
        }
    }

    #[test]
    fn only_the_store_and_kubernetes_links_count() {
        let name = OsStr::new("webhooks.toml");
        assert!(concerns_store(Path::new("/s/webhooks.toml"), name));
        assert!(concerns_store(Path::new("/s/..data"), name));
        assert!(concerns_store(
            Path::new("/s/..2026_11_24_10_00_00.123"),
            name
        ));
        assert!(!concerns_store(
            Path::new("/s/.webhooks.toml.hooksign-tmp-abc"),
            name
        ));
        assert!(!concerns_store(Path::new("/s/other.toml"), name));
    }
}
