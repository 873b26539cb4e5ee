//! `kiln backup`: a copy of a data directory that a master can start from,
//! taken while the master runs.
//!
//! The database is copied first, as one consistent snapshot (SQLite's
//! `VACUUM INTO`, which needs no `-wal` file beside the copy); then every
//! other file is hard-linked (or copied across filesystems). Files are
//! written once and replaced by rename, so a link is a snapshot too. What
//! changes after the database snapshot only adds files the copy's database
//! does not name yet, which a master ignores. Restore: stop the master, move
//! the damaged data directory aside, put the copy in its place.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::housekeeping::{private_dir, set_mode};
use crate::paths::Paths;
use crate::{io_err, MasterError};

/// What a backup holds.
#[derive(Debug, Default)]
pub struct BackupReport {
    pub files: u64,
    pub bytes: u64,
}

/// Entries of the data directory that are not copied: the live database
/// (copied by snapshot instead), and scratch space.
const SKIP: &[&str] = &[
    "kiln.db",
    "kiln.db-wal",
    "kiln.db-shm",
    "uploads",
    "tmp",
    "repowork",
    "repocache",
];

/// Copy the data directory `data` into `dest` (which must not exist, or be
/// an empty directory).
pub fn backup(data: &Path, dest: &Path) -> Result<BackupReport, MasterError> {
    let paths = Paths::new(data);
    let db = paths.db();
    if !db.is_file() {
        return Err(MasterError::Recovery(format!(
            "{} has no kiln.db: is it a master's data directory?",
            data.display()
        )));
    }
    match std::fs::read_dir(dest) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(MasterError::Recovery(format!(
                    "{} is not empty; a backup goes into a new directory",
                    dest.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("reading {}", dest.display()))(e).into()),
    }
    private_dir(dest)?;
    let copy_db = dest.join("kiln.db");
    kiln_store::Store::backup_file(&db, &copy_db)?;
    set_mode(&copy_db, 0o600)?;
    let mut report = BackupReport {
        files: 1,
        bytes: std::fs::metadata(&copy_db).map(|m| m.len()).unwrap_or(0),
    };
    copy_tree(data, dest, true, &mut report)?;
    kiln_core::fsutil::syncfs(dest).map_err(io_err(format!("syncing {}", dest.display())))?;
    Ok(report)
}

fn copy_tree(
    from: &Path,
    to: &Path,
    top: bool,
    report: &mut BackupReport,
) -> Result<(), MasterError> {
    let rd = std::fs::read_dir(from).map_err(io_err(format!("reading {}", from.display())))?;
    for e in rd {
        let e = e.map_err(io_err(format!("reading {}", from.display())))?;
        let name = e.file_name();
        if top && SKIP.iter().any(|s| name == *s) {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        let meta = std::fs::symlink_metadata(&src)
            .map_err(io_err(format!("reading {}", src.display())))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::DirBuilder::new()
                .mode(meta.permissions().mode() & 0o7777)
                .create(&dst)
                .map_err(io_err(format!("creating {}", dst.display())))?;
            copy_tree(&src, &dst, false, report)?;
        } else if ft.is_file() {
            match kiln_core::fsutil::link_or_copy(&src, &dst) {
                Ok(()) => {}
                // Gone since the listing (a retired package): nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("copying {}", src.display()))(e).into()),
            }
            report.files += 1;
            report.bytes += meta.len();
        }
        // Symlinks and special files are never part of a data directory.
    }
    Ok(())
}
