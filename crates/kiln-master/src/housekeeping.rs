//! What the master does to its data directory at start and as results
//! end: permissions, the lost-database guard, and removing files nobody
//! will read again (partial uploads, staged artifacts of refused results).

use std::collections::HashSet;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::paths::Paths;
use crate::{io_err, MasterError};

/// Create the data directory (0700) and the database file (0600) before
/// SQLite opens it, so its `-wal` and `-shm` files get the same mode; an
/// existing directory and database are brought to those modes.
pub fn secure_data_dir(paths: &Paths) -> Result<(), MasterError> {
    private_dir(&paths.root)?;
    let db = paths.db();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&db)
        .map_err(io_err(format!("creating {}", db.display())))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err(format!("setting the mode of {}", db.display()))(e).into())
            }
            _ => {}
        }
    }
    Ok(())
}

/// Create `dir` (and its parents) if needed and make it 0700.
pub(crate) fn private_dir(dir: &Path) -> Result<(), MasterError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!("creating {}", dir.display())))?;
    set_mode(dir, 0o700)
}

pub(crate) fn set_mode(p: &Path, mode: u32) -> Result<(), MasterError> {
    Ok(
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("setting the mode of {}", p.display())))?,
    )
}

/// Hold the data directory for this process: an exclusive lock on
/// `kiln.lock`, released when the process ends (however it ends). A second
/// master on the same directory is refused.
pub fn lock_data_dir(paths: &Paths) -> Result<std::fs::File, MasterError> {
    let p = paths.root.join("kiln.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&p)
        .map_err(io_err(format!("opening {}", p.display())))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(MasterError::Locked(format!(
            "another kiln master is running on {} (it holds {}): stop it first",
            paths.root.display(),
            p.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(io_err(format!("locking {}", p.display()))(e).into())
        }
    }
}

/// How many entries the content directories hold (`cas/`, `incoming/`,
/// `logs/`, and published metadata under `repos/`).
fn content_entries(paths: &Paths) -> usize {
    let count = |d: &Path| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    let mut n = count(&paths.cas_dir())
        + count(&paths.incoming_dir())
        + count(&paths.logs())
        + count(&paths.images_dir());
    if let Ok(targets) = std::fs::read_dir(paths.repos()) {
        for t in targets.flatten() {
            if let Ok(repos) = std::fs::read_dir(t.path()) {
                n += repos
                    .flatten()
                    .filter(|r| r.path().join("repodata/repomd.xml").is_file())
                    .count();
            }
        }
    }
    n
}

/// Refuse to run on a database that records nothing while the data
/// directory holds builds' files: the database (or its `-wal` file) was
/// lost or replaced, and starting would silently forget every build.
pub fn check_not_lost(paths: &Paths, db_holds_nothing: bool) -> Result<(), MasterError> {
    if !db_holds_nothing {
        return Ok(());
    }
    let n = content_entries(paths);
    if n == 0 {
        return Ok(());
    }
    Err(MasterError::LostDatabase(format!(
        "the database {} records no build and no upload, but {} holds {n} entries in cas/, \
         incoming/, images/, logs/ or repos/: the database (or its -wal file) was lost or replaced. \
         Stop here and restore kiln.db from a backup (`kiln backup`, see README), removing any \
         kiln.db-wal and kiln.db-shm beside it; to start an empty farm instead, move cas/, \
         incoming/, images/, logs/ and repos/ out of the data directory",
        paths.db().display(),
        paths.root.display()
    )))
}

/// The same guard before anything is created: a data directory with
/// content but no database file (or an empty one) is refused without
/// making a database (so restoring `kiln.db` afterwards just works).
pub fn check_db_present(paths: &Paths) -> Result<(), MasterError> {
    let empty = std::fs::metadata(paths.db()).map_or(true, |m| m.len() == 0);
    check_not_lost(paths, empty)
}

/// Remove the delivered and dead notifications older than the retention
/// period (`notify_retention_days`): at start, then once a day (a timer
/// started by `notify::start`). How many.
pub async fn prune_notifications(
    store: &kiln_store::Store,
    retention: std::time::Duration,
) -> Result<u64, kiln_store::StoreError> {
    let before = kiln_store::now_ms() - retention.as_millis() as i64;
    store
        .write(move |t| kiln_store::notify::prune(t, before))
        .await
}

/// Marks `dead` the queued notifications of sinks no longer configured
/// (they could never go out). How many.
pub async fn retire_unconfigured_sinks(
    store: &kiln_store::Store,
    configured: Vec<String>,
) -> Result<u64, kiln_store::StoreError> {
    store
        .write(move |t| {
            kiln_store::notify::retire_unconfigured(t, &configured, kiln_store::now_ms())
        })
        .await
}

/// Remove everything in `tmp/`: partial files of a killed master and of
/// refused uploads. Nothing reads them; at start nothing writes there yet.
pub fn clean_tmp(paths: &Paths) -> usize {
    remove_entries(&paths.tmp(), |_| true)
}

/// Remove staged uploads of job attempts that are no longer active (their
/// result was refused or filed, or the attempt was re-queued). Files of
/// active attempts stay: their workers resume where they were.
pub fn clean_uploads(paths: &Paths, active: &HashSet<(i64, u32)>) -> usize {
    remove_entries(&paths.uploads(), |name| {
        Paths::staged_key(name).is_none_or(|k| !active.contains(&k))
    })
}

/// Remove what is left staged for one job attempt (`uploads/<job>-<attempt>-*`).
pub fn purge_staged(paths: &Paths, job: i64, attempt: u32) -> usize {
    remove_entries(&paths.uploads(), |name| {
        Paths::staged_key(name) == Some((job, attempt))
    })
}

fn remove_entries(dir: &Path, pick: impl Fn(&str) -> bool) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        if !pick(&name.to_string_lossy()) {
            continue;
        }
        let p = e.path();
        let r = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
            _ => std::fs::remove_file(&p),
        };
        match r {
            Ok(()) => n += 1,
            Err(err) => tracing::warn!("cannot remove {}: {err}", p.display()),
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_of_inactive_attempts_go() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path());
        paths.create_dirs().unwrap();
        let up = d.path().join("uploads");
        for n in ["1-1-a.rpm", "1-2-a.rpm.part", "2-1-b.rpm", "stray"] {
            std::fs::write(up.join(n), b"x").unwrap();
        }
        std::fs::write(paths.tmp().join("upload-x"), b"x").unwrap();
        let active: HashSet<(i64, u32)> = [(1, 2)].into_iter().collect();
        assert_eq!(clean_uploads(&paths, &active), 3);
        assert_eq!(clean_tmp(&paths), 1);
        let left: Vec<_> = std::fs::read_dir(&up)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec!["1-2-a.rpm.part".to_string()]);
        assert_eq!(purge_staged(&paths, 1, 2), 1);
        assert_eq!(std::fs::read_dir(&up).unwrap().count(), 0);
    }

    #[test]
    fn an_empty_database_beside_content_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path());
        paths.create_dirs().unwrap();
        assert!(check_not_lost(&paths, true).is_ok());
        std::fs::write(d.path().join("cas").join("ab"), b"x").unwrap();
        let e = check_not_lost(&paths, true).unwrap_err().to_string();
        assert!(e.contains("was lost or replaced"), "{e}");
        assert!(check_not_lost(&paths, false).is_ok());
    }
}
