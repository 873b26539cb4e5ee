//! Kiln's durable state behind a narrow interface.
//!
//! Every write goes through [`Store::write`], which hands the closure to one
//! writer thread. That thread gathers whatever writes are waiting and commits
//! them in one transaction (group commit: one fsync for many state changes),
//! each in its own savepoint so one failing write does not undo the others
//! (a write alone in its group runs without one: if it fails, the
//! transaction is rolled back).
//! Reads run on a small pool of read connections (WAL lets them run beside the
//! writer). Only this crate speaks SQL; a PostgreSQL backend would implement
//! the same methods.

pub mod auth;
pub mod browse;
pub mod image_recipes;
mod model;
pub mod notify;
pub mod release;
mod schema;
pub mod stats;

pub use model::*;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use rusqlite::{Connection, OpenFlags, Transaction};
use thiserror::Error;
use tokio::sync::oneshot;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database writer has stopped")]
    Closed,
    /// The write was valid but its commit failed (disk full, I/O error):
    /// nothing of it was kept; trying again later may work.
    #[error("the database could not commit: {0}")]
    CommitFailed(String),
    /// A fault of the master itself (a thread that could not start or died).
    #[error("internal: {0}")]
    Internal(String),
    #[error("{0}")]
    Invalid(String),
    #[error("not found: {0}")]
    NotFound(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync on every commit (survives power loss).
    #[default]
    Full,
    /// fsync at WAL checkpoints (survives a process crash, not a power cut).
    Normal,
}

/// A write closure runs inside the group transaction and returns its reply,
/// which is delivered only once the commit outcome is known.
type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
/// Runs a write in the group's transaction: alone in it (`true`: no
/// savepoint needed) or among others. Returns the reply and whether the
/// write failed (a write alone that failed has its transaction rolled
/// back instead of committed).
type WriteFn = Box<dyn FnOnce(&Transaction<'_>, bool) -> (Reply, bool) + Send>;

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Option<mpsc::Sender<WriteFn>>>,
    /// The writer thread, joined by [`Store::close`].
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
    metrics: Arc<WriterMetrics>,
}

/// Prepared statements kept per connection (more than the store has).
const STATEMENT_CACHE: usize = 256;

fn open(path: &Path, durability: Durability, write: bool) -> Result<Connection> {
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Every query goes through `prepare_cached`; the writer alone uses
    // more than rusqlite's default 16 statements, and a statement pushed
    // out of the cache is parsed again (tens of µs) the next time.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    if write {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if write {
        // The group commit's savepoints journal the pages each write
        // touches; past 64 KiB that sub-journal spilled to a temporary
        // file (opened, written and unlinked in the commit's path).
        conn.pragma_update(None, "temp_store", "MEMORY")?;
    }
    Ok(conn)
}

impl Store {
    /// Open (creating and migrating if needed) the database at `path`.
    pub fn open(path: &Path, durability: Durability) -> Result<Store> {
        let mut conn = open(path, durability, true)?;
        schema::migrate(&mut conn)?;
        let (tx, rx) = mpsc::channel::<WriteFn>();
        let metrics = Arc::new(WriterMetrics::default());
        let m = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("kiln-store-writer".into())
            .spawn(move || writer_loop(conn, rx, &m))
            .map_err(|e| StoreError::Internal(format!("cannot start writer thread: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                writer: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                readers: Mutex::new(Vec::new()),
                path: path.to_path_buf(),
                metrics,
            }),
        })
    }

    /// What the group commits have done so far.
    pub fn metrics(&self) -> &WriterMetrics {
        &self.inner.metrics
    }

    /// A consistent copy of the database at `dest` (a new file), taken
    /// while the master runs (`VACUUM INTO` reads one snapshot). The copy
    /// is self-contained: no WAL file goes with it.
    pub fn backup_file(db: &Path, dest: &Path) -> Result<()> {
        if dest.exists() {
            return Err(StoreError::Invalid(format!(
                "{} exists already; a backup is never written over a file",
                dest.display()
            )));
        }
        let conn = open(db, Durability::Normal, false)?;
        let dest_s = dest.to_str().ok_or_else(|| {
            StoreError::Invalid(format!("{} is not a UTF-8 path", dest.display()))
        })?;
        conn.execute("VACUUM INTO ?1", [dest_s])?;
        Ok(())
    }

    /// Queue `f` for the next group commit. The write is queued when this
    /// function returns (so writes queued in order commit in order); the
    /// future resolves once it is durable.
    pub fn write<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: WriteFn = Box::new(move |t, alone| {
            // A write alone in its group needs no savepoint: if it fails,
            // the whole transaction is rolled back. (A savepoint copies
            // every page the write touches into the sub-journal first.)
            let r = if alone { f(t) } else { run_in_savepoint(t, f) };
            let failed = r.is_err();
            let reply: Reply = Box::new(move |committed: Result<(), String>| {
                let r = match committed {
                    Ok(()) => r,
                    Err(e) => Err(StoreError::CommitFailed(e)),
                };
                let _ = tx.send(r);
            });
            (reply, failed)
        });
        let queued = self
            .inner
            .writer
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|s| s.send(job).is_ok()))
            .unwrap_or(false);
        async move {
            if !queued {
                return Err(StoreError::Closed);
            }
            rx.await.unwrap_or(Err(StoreError::Closed))
        }
    }

    /// Run a read on a pooled read connection, off the async threads.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.readers.lock().ok().and_then(|mut v| v.pop());
            let conn = match conn {
                Some(c) => c,
                None => open(&inner.path, Durability::Normal, false)?,
            };
            let r = f(&conn);
            if let Ok(mut v) = inner.readers.lock() {
                if v.len() < 4 {
                    v.push(conn);
                }
            }
            r
        })
        .await
        .map_err(|e| StoreError::Internal(format!("read task failed: {e}")))?
    }

    /// Stop accepting writes; queued writes still commit, then the WAL is
    /// checkpointed into the database file and truncated, so the file alone
    /// holds everything (a copy without the `-wal` file loses nothing).
    /// Blocks until the writer thread has finished.
    pub fn close(&self) {
        if let Ok(mut w) = self.inner.writer.lock() {
            w.take();
        }
        if let Ok(mut r) = self.inner.readers.lock() {
            r.clear();
        }
        let thread = self.inner.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("the database writer thread panicked");
            }
        }
    }
}

fn run_in_savepoint<T>(
    t: &Transaction<'_>,
    f: impl FnOnce(&Transaction<'_>) -> Result<T>,
) -> Result<T> {
    t.execute_batch("SAVEPOINT op")?;
    match f(t) {
        Ok(v) => {
            t.execute_batch("RELEASE op")?;
            Ok(v)
        }
        Err(e) => {
            t.execute_batch("ROLLBACK TO op; RELEASE op")?;
            Err(e)
        }
    }
}

/// Gathers every waiting write into one transaction: one commit (one fsync)
/// for many state changes.
/// The group commits' figures, for `/metrics`.
pub struct WriterMetrics {
    /// Commits (successful or not) and the writes they held.
    pub commits: std::sync::atomic::AtomicU64,
    pub writes: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    /// Time from the start of a group's transaction to its durable commit.
    pub latency: kiln_core::metrics::Histogram,
}

impl Default for WriterMetrics {
    fn default() -> Self {
        WriterMetrics {
            commits: Default::default(),
            writes: Default::default(),
            failed: Default::default(),
            latency: kiln_core::metrics::Histogram::new(kiln_core::metrics::FAST),
        }
    }
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<WriteFn>, m: &WriterMetrics) {
    use std::sync::atomic::Ordering::Relaxed;
    const MAX_BATCH: usize = 1024;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let tx = match conn.transaction() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("cannot begin transaction: {e}");
                continue; // dropping the closures drops their senders: callers see Closed
            }
        };
        let started = std::time::Instant::now();
        let n = batch.len() as u64;
        let alone = n == 1;
        let mut failed_alone = false;
        let replies: Vec<Reply> = batch
            .into_iter()
            .map(|f| {
                let (reply, failed) = f(&tx, alone);
                failed_alone = alone && failed;
                reply
            })
            .collect();
        let outcome = if failed_alone {
            // The one write failed without a savepoint: undo it all. Its
            // reply carries its own error.
            if let Err(e) = tx.rollback() {
                tracing::error!("rollback failed: {e}");
            }
            Ok(())
        } else {
            tx.commit().map_err(|e| {
                tracing::error!("commit failed: {e}");
                m.failed.fetch_add(1, Relaxed);
                e.to_string()
            })
        };
        m.latency.observe(started.elapsed().as_secs_f64());
        m.commits.fetch_add(1, Relaxed);
        m.writes.fetch_add(n, Relaxed);
        for r in replies {
            r(outcome.clone());
        }
    }
    // Every sender is gone: a clean stop. Fold the WAL into the database
    // (a reader still in a transaction holds it up for a short while at most).
    let _ = conn.busy_timeout(std::time::Duration::from_secs(2));
    match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    }) {
        Ok((0, _, _)) => {}
        Ok((_, log, done)) => tracing::warn!(
            "checkpoint at shutdown was held up by a reader: {done} of {log} WAL pages folded in \
             (the rest is folded in at the next start)"
        ),
        Err(e) => tracing::error!("checkpointing the database at shutdown: {e}"),
    }
}
