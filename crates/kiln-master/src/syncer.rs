//! Durability of the small files intake writes, without an fsync each.
//!
//! A job's small artifacts (its listing, a short build.log, the SRPM linked
//! from the input store) are written into `incoming/` with no fsync of their
//! own. What they hold goes into the database (`unsynced_files`) in the same
//! group commit as the result, so a committed result never depends on the
//! page cache. This task then makes the files durable with one `syncfs(2)`
//! for everything written meanwhile (at most one a second) and drops the
//! journaled copies; after a crash, [`recover`] writes them again before the
//! master serves. Only with `durability = full`: `normal` promises to survive
//! a process crash, which the page cache does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln_store::{Store, StoreError};
use tokio::sync::Notify;

use crate::intake::{rewrite_unsynced, Unsynced};
use crate::paths::Paths;

/// Why the journaled files could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] kiln_core::error::IoError),
    /// A journal entry the master cannot act on.
    #[error("{0}")]
    Journal(String),
    #[error("the sync task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The least time between two `syncfs` calls.
const PERIOD: Duration = Duration::from_secs(1);

pub struct Syncer {
    root: PathBuf,
    store: Store,
    pending: Notify,
}

impl Syncer {
    pub fn new(paths: &Paths, store: Store) -> Arc<Syncer> {
        Arc::new(Syncer {
            root: paths.root.clone(),
            store,
            pending: Notify::new(),
        })
    }

    /// Queue the journal entries now (ahead of the result's commit, so they
    /// commit with it or before it). Await, then [`Syncer::kick`].
    pub fn journal(
        &self,
        files: Vec<Unsynced>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        self.store.write(move |t| {
            for f in &files {
                kiln_store::add_unsynced(t, &f.path, f.data.as_deref(), f.cas.as_deref())?;
            }
            Ok(())
        })
    }

    /// Journaled files are waiting for a sync.
    pub fn kick(&self) {
        self.pending.notify_one();
    }

    pub async fn run(self: Arc<Self>) {
        loop {
            self.pending.notified().await;
            let started = tokio::time::Instant::now();
            if let Err(e) = self.sync_once().await {
                tracing::error!("syncing incoming files: {e}; retrying");
                self.pending.notify_one();
            }
            tokio::time::sleep_until(started + PERIOD).await;
        }
    }

    async fn sync_once(&self) -> Result<(), SyncError> {
        let Some(upto) = self.store.read(kiln_store::last_unsynced).await? else {
            return Ok(());
        };
        // Every journaled file up to `upto` was written before its entry
        // was queued, so this syncfs covers it.
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || kiln_core::fsutil::syncfs(&root))
            .await?
            .map_err(kiln_core::error::io_err("syncfs"))?;
        Ok(self
            .store
            .write(move |t| kiln_store::clear_unsynced(t, upto))
            .await?)
    }
}

/// At start, before anything reads `incoming/`: write again every file a
/// crash may have lost, make them durable, forget the journal.
pub async fn recover(paths: &Paths, store: &Store) -> Result<usize, SyncError> {
    let files = store.read(kiln_store::unsynced_files).await?;
    let Some(upto) = files.last().map(|f| f.id) else {
        return Ok(0);
    };
    let n = files.len();
    let p = paths.clone();
    tokio::task::spawn_blocking(move || {
        rewrite_unsynced(&p, &files)?;
        kiln_core::fsutil::syncfs(&p.root).map_err(kiln_core::error::io_err("syncfs"))?;
        Ok::<(), SyncError>(())
    })
    .await??;
    store
        .write(move |t| kiln_store::clear_unsynced(t, upto))
        .await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Paths, Store) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        paths.create_dirs().unwrap();
        let store = Store::open(&paths.db(), kiln_store::Durability::Full).unwrap();
        (dir, paths, store)
    }

    #[tokio::test]
    async fn journaled_files_are_written_again_after_a_crash() {
        let (_dir, paths, store) = setup();
        let sha = kiln_core::fsutil::sha256_bytes(b"source rpm");
        std::fs::write(paths.cas(&sha), b"source rpm").unwrap();
        let s = Syncer::new(&paths, store.clone());
        s.journal(vec![
            Unsynced {
                path: "incoming/7/noarch/listing.json".into(),
                data: Some(b"{}".to_vec()),
                cas: None,
            },
            Unsynced {
                path: "incoming/7/noarch/p-1-1.src.rpm".into(),
                data: None,
                cas: Some(sha.clone()),
            },
        ])
        .await
        .unwrap();
        // The crash lost the files (and their directory) from the page cache.
        let n = recover(&paths, &store).await.unwrap();
        assert_eq!(n, 2);
        let dir = paths.incoming(7, "noarch");
        assert_eq!(std::fs::read(dir.join("listing.json")).unwrap(), b"{}");
        assert_eq!(
            std::fs::read(dir.join("p-1-1.src.rpm")).unwrap(),
            b"source rpm"
        );
        assert_eq!(store.read(kiln_store::last_unsynced).await.unwrap(), None);
        assert_eq!(recover(&paths, &store).await.unwrap(), 0, "journal cleared");
    }

    #[tokio::test]
    async fn a_journaled_path_outside_the_data_directory_is_refused() {
        let (_dir, paths, store) = setup();
        let s = Syncer::new(&paths, store.clone());
        s.journal(vec![Unsynced {
            path: "../escape".into(),
            data: Some(b"x".to_vec()),
            cas: None,
        }])
        .await
        .unwrap();
        let e = recover(&paths, &store).await.unwrap_err();
        assert!(
            e.to_string().contains("not under the data directory"),
            "{e}"
        );
        assert!(!paths.root.parent().unwrap().join("escape").exists());
    }

    #[tokio::test]
    async fn one_sync_clears_what_was_journaled() {
        let (_dir, paths, store) = setup();
        let s = Syncer::new(&paths, store.clone());
        s.sync_once().await.unwrap();
        s.journal(vec![Unsynced {
            path: "incoming/1/x86_64/build.log".into(),
            data: Some(b"log".to_vec()),
            cas: None,
        }])
        .await
        .unwrap();
        assert!(store
            .read(kiln_store::last_unsynced)
            .await
            .unwrap()
            .is_some());
        s.sync_once().await.unwrap();
        assert_eq!(store.read(kiln_store::last_unsynced).await.unwrap(), None);
    }
}
