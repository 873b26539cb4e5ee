//! Artifact intake: check every file a worker says it made (size, sha256,
//! package header against the listing), then file them under
//! `incoming/<build>/<arch>/` by rename.

use std::collections::HashSet;
use std::path::PathBuf;

use kiln_core::listing::{Listing, LISTING_NAME};
use kiln_core::names::{check_file_name, compatible_arches};
use kiln_core::srpm::inspect_package;
use kiln_core::state::ArtifactKind;
use kiln_proto as pb;
use kiln_store::ArtifactRow;

use crate::paths::{is_sha256, sha256_file, Paths};

/// Why a result's artifacts were not filed.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// What the worker sent is wrong: the job fails with this reason.
    #[error("{0}")]
    Refused(String),
    /// The master could not read or write its own disk: nothing is decided,
    /// the worker reports the result again later.
    #[error(transparent)]
    Io(#[from] kiln_core::error::IoError),
}

fn refused(m: impl Into<String>) -> IntakeError {
    IntakeError::Refused(m.into())
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> IntakeError {
    let f = kiln_core::error::io_err(what);
    move |e| IntakeError::Io(f(e))
}

/// An artifact as the worker reports it (translated from the wire by the
/// transport); nothing of it is trusted until checked here.
#[derive(Debug, Clone)]
pub struct Reported {
    pub name: String,
    /// rpm | srpm | log | listing | other | image
    pub kind: String,
    pub size: u64,
    pub sha256: String,
    /// For packages: name-epoch:version-release.arch.
    pub nevra: String,
    /// The content itself, for a small file sent with the result.
    pub inline: Vec<u8>,
}

pub struct JobRef {
    pub build: i64,
    pub job: i64,
    pub attempt: u32,
    pub arch: String,
}

/// Where an artifact of this attempt is now: still staged, or already filed
/// (a resent result after a master restart).
fn locate(paths: &Paths, j: &JobRef, dest: &std::path::Path, name: &str) -> Option<PathBuf> {
    let staged = paths.staged(j.job, j.attempt, name);
    if staged.is_file() {
        return Some(staged);
    }
    let filed = dest.join(name);
    filed.is_file().then_some(filed)
}

fn arch_ok(job_arch: &str, pkg_arch: &str) -> bool {
    pkg_arch == job_arch || pkg_arch == "noarch" || compatible_arches(job_arch).contains(&pkg_arch)
}

/// Where a job's verified artifacts go: `incoming/<build>/<arch>/`, or
/// for a job of an image build (`image`: the recipe's name)
/// `images/<name>/<build>/<arch>/`.
pub fn job_files(paths: &Paths, j: &JobRef, image: Option<&str>) -> PathBuf {
    match image {
        Some(name) => paths.image_files(name, j.build, &j.arch),
        None => paths.incoming(j.build, &j.arch),
    }
}

/// Verify and file a job's artifacts (`image`: the recipe name of an image
/// build's job, whose artifacts are image files, never packages). Blocking
/// (hashes files): run it on a blocking thread.
pub fn verify_and_file(
    paths: &Paths,
    j: &JobRef,
    package: &str,
    image: Option<&str>,
    artifacts: &[Reported],
    verified: &std::collections::HashMap<String, String>,
) -> Result<(Vec<ArtifactRow>, Vec<Unsynced>), IntakeError> {
    let dest = job_files(paths, j, image);
    // Small artifacts come inline in the result: checked in memory and
    // written once, straight into their place.
    let mut inline: std::collections::HashMap<&str, &[u8]> = std::collections::HashMap::new();
    let mut inline_total = 0u64;
    for a in artifacts
        .iter()
        .filter(|a| !a.inline.is_empty() || a.size == 0)
    {
        check_file_name(&a.name).map_err(|e| refused(format!("artifact name refused: {e}")))?;
        inline_total += a.inline.len() as u64;
        if a.inline.len() as u64 != a.size
            || a.size > pb::INLINE_MAX
            || inline_total > pb::INLINE_MAX * 4
        {
            return Err(refused(format!(
                "artifact {:?}: {} bytes sent inline for a listed size of {}",
                a.name,
                a.inline.len(),
                a.size
            )));
        }
        inline.insert(a.name.as_str(), a.inline.as_slice());
    }
    let mut verified = verified.clone();
    let mut rows = Vec::new();
    let mut names = HashSet::new();
    let mut listing: Option<Vec<u8>> = None;
    let mut located = Vec::new();
    for a in artifacts {
        check_file_name(&a.name).map_err(|e| refused(format!("artifact name refused: {e}")))?;
        if !names.insert(a.name.clone()) {
            return Err(refused(format!("artifact {:?} is listed twice", a.name)));
        }
        let kind: ArtifactKind = a
            .kind
            .parse()
            .map_err(|e| refused(format!("artifact {:?}: {e}", a.name)))?;
        if !is_sha256(&a.sha256) {
            return Err(refused(format!("artifact {:?}: malformed sha256", a.name)));
        }
        match kind {
            ArtifactKind::Rpm | ArtifactKind::Srpm if image.is_some() => {
                return Err(refused(format!(
                    "artifact {:?}: an image job returns image files, not packages",
                    a.name
                )))
            }
            ArtifactKind::Image if image.is_none() => {
                return Err(refused(format!(
                    "artifact {:?}: only an image job returns image files",
                    a.name
                )))
            }
            _ => {}
        }
        let (place, size, sha) = match inline.get(a.name.as_str()) {
            Some(data) => {
                if kiln_core::fsutil::sha256_bytes(data) != a.sha256 {
                    return Err(refused(format!(
                        "artifact {:?}: sha256 does not match the listing",
                        a.name
                    )));
                }
                (Place::Inline(data), a.size, a.sha256.clone())
            }
            None => on_disk(paths, j, &dest, a, &mut verified)?,
        };
        let nevra = match kind {
            ArtifactKind::Rpm | ArtifactKind::Srpm => {
                use kiln_core::srpm::PackageError as P;
                let info = place.inspect().map_err(|e| match e {
                    // The master's own disk failing it, not the content.
                    P::Open { source, .. } | P::Read { source, .. }
                        if source.kind() != std::io::ErrorKind::UnexpectedEof =>
                    {
                        io(format!("reading artifact {:?}", a.name))(source)
                    }
                    e => refused(format!("artifact {:?}: {e}", a.name)),
                })?;
                Some(check_package(j, package, a, kind, &info)?)
            }
            _ => None,
        };
        if kind == ArtifactKind::Listing {
            listing = Some(
                place
                    .bytes()
                    .map_err(io("reading the listing"))?
                    .into_owned(),
            );
        }
        located.push((place, a.name.clone()));
        rows.push(ArtifactRow {
            job: j.job,
            arch: j.arch.clone(),
            name: a.name.clone(),
            kind,
            size,
            sha256: sha,
            nevra,
        });
    }
    let listing =
        listing.ok_or_else(|| refused(format!("no {LISTING_NAME} among the artifacts")))?;
    check_listing(&listing, j, &rows)?;
    let unsynced = file(paths, j, &dest, &located)?;
    Ok((rows, unsynced))
}

/// An artifact that did not come inline: uploaded (staged, or already filed
/// by an earlier report of this result), or content the master already
/// holds in its input store (the SRPM a rebuild returns), which is not sent
/// again but linked from there. Checks size and sha256; an uploaded file is
/// synced before the result is committed (a linked one is journaled).
fn on_disk<'a>(
    paths: &Paths,
    j: &JobRef,
    dest: &std::path::Path,
    a: &Reported,
    verified: &mut std::collections::HashMap<String, String>,
) -> Result<(Place<'a>, u64, String), IntakeError> {
    let (path, from_cas) = match locate(paths, j, dest, &a.name) {
        Some(p) => (p, false),
        None => {
            let staged = paths.staged(j.job, j.attempt, &a.name);
            match kiln_core::fsutil::link_or_copy(&paths.cas(&a.sha256), &staged) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(refused(format!(
                        "artifact {:?} is listed but was never uploaded",
                        a.name
                    )))
                }
                Err(e) => return Err(io(format!("linking artifact {:?}", a.name))(e)),
            }
            verified.insert(a.name.clone(), a.sha256.clone());
            (staged, true)
        }
    };
    // Hashed as it arrived, or (after a restart, or filed already) now.
    let (sha, size) = match verified.get(&a.name) {
        Some(sha) if path == paths.staged(j.job, j.attempt, &a.name) => {
            let size = std::fs::metadata(&path)
                .map_err(io(format!("reading artifact {:?}", a.name)))?
                .len();
            (sha.clone(), size)
        }
        _ => sha256_file(&path).map_err(io(format!("reading artifact {:?}", a.name)))?,
    };
    if !from_cas {
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io(format!("syncing artifact {:?}", a.name)))?;
    }
    if size != a.size {
        return Err(refused(format!(
            "artifact {:?}: listed size {} but {size} bytes arrived",
            a.name, a.size
        )));
    }
    if sha != a.sha256 {
        return Err(refused(format!(
            "artifact {:?}: sha256 does not match the listing",
            a.name
        )));
    }
    let place = if from_cas {
        Place::Linked(path, a.sha256.clone())
    } else {
        Place::File(path)
    };
    Ok((place, size, sha))
}

/// A package's header must agree with the job, the build and the listing;
/// returns its NEVRA. A build publishes only what its own SRPM makes: every
/// binary package must name a source rpm of the build's package, and a
/// source rpm must be of that package (a build that copies another
/// package's files into its output is refused).
fn check_package(
    j: &JobRef,
    package: &str,
    a: &Reported,
    kind: ArtifactKind,
    info: &kiln_core::srpm::PackageInfo,
) -> Result<String, IntakeError> {
    if kind == ArtifactKind::Srpm && info.arch != "src" {
        return Err(refused(format!(
            "artifact {:?} is listed as a source rpm but is not one",
            a.name
        )));
    }
    // An srpm job (a build from git) makes the SRPM that names the package,
    // and nothing else.
    let srpm_job = j.arch == crate::sched::SRC_ARCH;
    if srpm_job && kind == ArtifactKind::Rpm {
        return Err(refused(format!(
            "artifact {:?}: an srpm job returns its SRPM, not binary packages",
            a.name
        )));
    }
    if kind == ArtifactKind::Srpm && info.name != package && !srpm_job {
        return Err(refused(format!(
            "artifact {:?} is a source rpm of {}, not of this build's package {package}",
            a.name, info.name
        )));
    }
    if kind == ArtifactKind::Rpm && info.source_name() != Some(package) {
        return Err(refused(format!(
            "artifact {:?} was built from source rpm {:?}, not from this build's package {package}: \
             a build may only return its own packages",
            a.name,
            kiln_core::names::printable(&info.source_rpm)
        )));
    }
    if kind == ArtifactKind::Rpm && !arch_ok(&j.arch, &info.arch) {
        return Err(refused(format!(
            "artifact {:?}: package arch {} does not belong to a {} job",
            a.name, info.arch, j.arch
        )));
    }
    if info.nevra() != a.nevra {
        return Err(refused(format!(
            "artifact {:?}: header says {} but the listing says {}",
            a.name,
            info.nevra(),
            a.nevra
        )));
    }
    Ok(info.nevra())
}

/// The listing file must name exactly the other artifacts, as reported.
fn check_listing(text: &[u8], j: &JobRef, rows: &[ArtifactRow]) -> Result<(), IntakeError> {
    let l = Listing::parse(text).map_err(|e| refused(e.to_string()))?;
    if l.job != j.job as u64 || l.attempt != j.attempt || l.arch != j.arch {
        return Err(refused("the listing belongs to another job"));
    }
    let mut want: Vec<(String, u64, String)> = rows
        .iter()
        .filter(|r| r.kind != ArtifactKind::Listing)
        .map(|r| (r.name.clone(), r.size, r.sha256.clone()))
        .collect();
    let mut got: Vec<(String, u64, String)> = l
        .artifacts
        .iter()
        .map(|e| (e.name.clone(), e.size, e.sha256.clone()))
        .collect();
    want.sort();
    got.sort();
    if want != got {
        return Err(refused(
            "the listing file does not match the reported artifacts",
        ));
    }
    Ok(())
}

/// Where a verified artifact is: an uploaded (or already filed) file, a
/// link to an input the master holds, or the bytes that came inline.
enum Place<'a> {
    File(PathBuf),
    Linked(PathBuf, String),
    Inline(&'a [u8]),
}

impl Place<'_> {
    fn bytes(&self) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        match self {
            Place::Inline(d) => Ok(std::borrow::Cow::Borrowed(d)),
            Place::File(p) | Place::Linked(p, _) => std::fs::read(p).map(std::borrow::Cow::Owned),
        }
    }

    fn inspect(&self) -> Result<kiln_core::srpm::PackageInfo, kiln_core::srpm::PackageError> {
        match self {
            Place::Inline(d) => kiln_core::srpm::inspect_package_bytes(d),
            Place::File(p) | Place::Linked(p, _) => inspect_package(p),
        }
    }
}

/// A small file filed without an fsync of its own: what it holds (or the
/// input it links to) goes into the database with the result, and one
/// `syncfs` for many results makes it durable (see `crate::syncer`).
#[derive(Debug, Clone)]
pub struct Unsynced {
    /// Relative to the data directory.
    pub path: String,
    pub data: Option<Vec<u8>>,
    pub cas: Option<String>,
}

/// Put the files into `incoming/<build>/<arch>/` (a temporary name, then a
/// rename). Uploaded files are synced (they were, before this) with their
/// directory; the small ones are returned to be journaled.
fn file(
    paths: &Paths,
    j: &JobRef,
    dest: &std::path::Path,
    files: &[(Place<'_>, String)],
) -> Result<Vec<Unsynced>, IntakeError> {
    std::fs::create_dir_all(dest).map_err(io(format!("creating {}", dest.display())))?;
    let rel = |to: &std::path::Path| {
        to.strip_prefix(&paths.root)
            .unwrap_or(to)
            .to_string_lossy()
            .into_owned()
    };
    let mut unsynced = Vec::new();
    let mut uploaded = false;
    for (place, name) in files {
        let to = dest.join(name);
        match place {
            Place::Linked(f, sha) => {
                if *f != to {
                    std::fs::rename(f, &to).map_err(io(format!("filing {}", to.display())))?;
                }
                unsynced.push(Unsynced {
                    path: rel(&to),
                    data: None,
                    cas: Some(sha.clone()),
                });
            }
            Place::File(f) => {
                uploaded = true;
                if *f != to {
                    std::fs::rename(f, &to).map_err(io(format!("filing {}", to.display())))?;
                }
                // What is left of an earlier, interrupted upload of it.
                let _ = std::fs::remove_file(paths.staged_part(j.job, j.attempt, name));
            }
            Place::Inline(data) => {
                let part = dest.join(format!(".{name}.part"));
                std::fs::write(&part, data)
                    .and_then(|_| std::fs::rename(&part, &to))
                    .map_err(io(format!("filing {}", to.display())))?;
                unsynced.push(Unsynced {
                    path: rel(&to),
                    data: Some(data.to_vec()),
                    cas: None,
                });
            }
        }
    }
    if uploaded {
        if let Ok(d) = std::fs::File::open(dest) {
            let _ = d.sync_all();
        }
    }
    Ok(unsynced)
}

/// Write the journaled files again (after a crash that may have lost what
/// the page cache held). Blocking.
pub fn rewrite_unsynced(
    paths: &Paths,
    files: &[kiln_store::UnsyncedFile],
) -> Result<(), crate::syncer::SyncError> {
    use crate::syncer::SyncError;
    for f in files {
        let rel = std::path::Path::new(&f.path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(SyncError::Journal(format!(
                "journaled path {:?} is not under the data directory",
                f.path
            )));
        }
        let to = paths.root.join(rel);
        let dir = to.parent().unwrap_or(&paths.root);
        std::fs::create_dir_all(dir).map_err(kiln_core::error::io_err(format!(
            "creating {}",
            dir.display()
        )))?;
        let part = to.with_file_name(format!(
            ".{}.part",
            to.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let written = match (&f.data, &f.cas) {
            (Some(data), _) => std::fs::write(&part, data),
            (None, Some(sha)) if is_sha256(sha) => {
                let _ = std::fs::remove_file(&part);
                kiln_core::fsutil::link_or_copy(&paths.cas(sha), &part)
            }
            _ => {
                return Err(SyncError::Journal(format!(
                    "journaled file {:?} has no content",
                    f.path
                )))
            }
        };
        written
            .and_then(|_| std::fs::rename(&part, &to))
            .map_err(kiln_core::error::io_err(format!(
                "rewriting {}",
                to.display()
            )))?;
    }
    Ok(())
}
