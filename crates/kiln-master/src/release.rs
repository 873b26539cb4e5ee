//! Releases (issue 12): a succeeded (so tested) image build promoted to a
//! channel of a release, served at `/releases/<name>/<channel>/`.
//!
//! A promotion ([`promote`]) hard-links the build's files (each format and
//! `manifest.json` of every arch; copied only where linking fails, e.g. the
//! release tree on another filesystem) into a directory
//! `releases/<name>/<channel>/.tmp-<version>-<nonce>/`, writes `SHA256SUMS`
//! from the sha256 recorded at intake (the sizes on disk are checked, the
//! bytes are not read again) and its detached armored signature
//! `SHA256SUMS.asc` with the target's signing key (none without a
//! `sign_key`: an unsigned release, said so in the answer), fsyncs, renames
//! the directory to `<version>/`, then switches `latest` (a relative
//! symlink made under a temporary name and renamed over it), and only then
//! records the promotion in the database (one commit). An image of one
//! arch is laid out flat (`<version>/<file>`); one of several arches has a
//! subdirectory per arch (`<version>/<arch>/<file>`), the paths in
//! `SHA256SUMS` being relative to the version directory either way.
//!
//! The database is the record: at start ([`recover`]) `latest` is pointed
//! at the version of the channel's current row (so a promotion killed
//! before its commit is undone as a whole, and one killed after it is
//! kept), and a version directory without a row, or a `.tmp-` leftover, is
//! removed. `latest` is only ever replaced by rename: it names the old
//! version or the new one, never anything half-written.
//!
//! A rollback points `latest` at the version promoted before the current
//! one (the promotions form a stack: a promotion pushes, a rollback pops)
//! and is recorded as a history entry. Retention: after a promotion, the
//! current version, the one a rollback would go to, and the
//! `keep_releases` most recently promoted others are kept; older version
//! directories are removed (their history stays).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use kiln_api::release::{
    ChannelView, PromoteAnswer, PromotionView, ReleaseFile, ReleaseVersion, ReleaseView,
};
use kiln_core::error::IoError;
use kiln_core::state::{ArtifactKind, BuildState};
use kiln_store::release::PromotionRow;
use kiln_store::StoreError;

use crate::paths::Paths;
use crate::Core;

/// The name of the symlink to the current version of a channel.
pub const LATEST: &str = "latest";
const SUMS: &str = "SHA256SUMS";
const SUMS_ASC: &str = "SHA256SUMS.asc";

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The caller's fault: a bad name, a build that cannot be promoted.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The version exists in the channel from another build.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("signing SHA256SUMS: {0}")]
    Sign(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

type Result<T, E = ReleaseError> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ReleaseError {
    let what = what.into();
    move |source| ReleaseError::Io(IoError { what, source })
}

/// One file of a version to place: where it is now, its path in the
/// version directory, and its size and sha256 as recorded at intake.
#[derive(Debug, Clone)]
pub struct Source {
    pub src: PathBuf,
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn fsync_dir(d: &Path) -> Result<()> {
    std::fs::File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("syncing {}", d.display())))
}

/// Check a release, channel or version name: an identifier, and not one
/// the release tree uses itself.
pub fn check_name(kind: &'static str, name: &str) -> Result<()> {
    kiln_core::names::check_ident(kind, name).map_err(|e| ReleaseError::Invalid(e.to_string()))?;
    if name == LATEST {
        return Err(ReleaseError::Invalid(format!(
            "{kind} {LATEST:?} is reserved (the link to a channel's current version)"
        )));
    }
    Ok(())
}

/// Make `<channel_dir>/<version>/` from `files`, `SHA256SUMS` and (with a
/// signer) `SHA256SUMS.asc`, built in a `.tmp-` directory, synced, then
/// renamed into place. The version directory must not exist. Returns how
/// many files had to be copied (not linked).
pub fn place(
    channel_dir: &Path,
    version: &str,
    files: &[Source],
    signer: Option<&kiln_repo::Signer>,
) -> Result<usize> {
    std::fs::create_dir_all(channel_dir)
        .map_err(io(format!("creating {}", channel_dir.display())))?;
    let tmp = channel_dir.join(format!(".tmp-{version}-{}", nonce()));
    let made = place_in(&tmp, files, signer);
    let copied = match made {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let dest = channel_dir.join(version);
    if let Err(e) = std::fs::rename(&tmp, &dest) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io(format!(
            "renaming {} to {}",
            tmp.display(),
            dest.display()
        ))(e));
    }
    fsync_dir(channel_dir)?;
    Ok(copied)
}

fn place_in(tmp: &Path, files: &[Source], signer: Option<&kiln_repo::Signer>) -> Result<usize> {
    std::fs::create_dir(tmp).map_err(io(format!("creating {}", tmp.display())))?;
    let mut dirs = BTreeSet::new();
    let mut copied = 0;
    let mut sums = String::new();
    let mut sorted: Vec<&Source> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for f in sorted {
        let meta = std::fs::metadata(&f.src).map_err(io(format!("reading {}", f.src.display())))?;
        if meta.len() != f.size {
            return Err(ReleaseError::Internal(format!(
                "{} is {} bytes but {} were recorded at intake: the build's files changed",
                f.src.display(),
                meta.len(),
                f.size
            )));
        }
        let dst = tmp.join(&f.path);
        if let Some(d) = dst.parent() {
            if d != tmp && dirs.insert(d.to_path_buf()) {
                std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
            }
        }
        if std::fs::hard_link(&f.src, &dst).is_err() {
            // Another filesystem (EXDEV) or one that cannot link: a copy,
            // synced like the files linked were at intake.
            std::fs::copy(&f.src, &dst)
                .and_then(|_| std::fs::File::open(&dst)?.sync_all())
                .map_err(io(format!(
                    "copying {} to {}",
                    f.src.display(),
                    dst.display()
                )))?;
            copied += 1;
        }
        sums.push_str(&format!("{}  {}\n", f.sha256, f.path));
    }
    let sums_path = tmp.join(SUMS);
    let mut out = std::fs::File::create(&sums_path)
        .map_err(io(format!("creating {}", sums_path.display())))?;
    out.write_all(sums.as_bytes())
        .and_then(|_| out.sync_all())
        .map_err(io(format!("writing {}", sums_path.display())))?;
    if let Some(s) = signer {
        let asc = tmp.join(SUMS_ASC);
        s.sign_detached(&sums_path, &asc)
            .map_err(|e| ReleaseError::Sign(e.to_string()))?;
        std::fs::File::open(&asc)
            .and_then(|f| f.sync_all())
            .map_err(io(format!("syncing {}", asc.display())))?;
    }
    for d in &dirs {
        fsync_dir(d)?;
    }
    fsync_dir(tmp)?;
    Ok(copied)
}

/// Point `<channel_dir>/latest` at `version` (a relative symlink), by a
/// rename over it: readers see the old target or the new one.
pub fn switch_latest(channel_dir: &Path, version: &str) -> Result<()> {
    let tmp = channel_dir.join(format!(".latest-{}", nonce()));
    std::os::unix::fs::symlink(version, &tmp).map_err(io(format!("making {}", tmp.display())))?;
    let latest = channel_dir.join(LATEST);
    if let Err(e) = std::fs::rename(&tmp, &latest) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(format!(
            "renaming {} over {}",
            tmp.display(),
            latest.display()
        ))(e));
    }
    fsync_dir(channel_dir)
}

/// Where `latest` points (`None`: no link, or not one).
pub fn latest_of(channel_dir: &Path) -> Option<String> {
    std::fs::read_link(channel_dir.join(LATEST))
        .ok()
        .and_then(|p| p.to_str().map(str::to_string))
}

/// The channel's stack of versions (a promotion pushes, a rollback pops
/// back to the version it names), bottom first, with their builds.
fn stack(rows: &[&PromotionRow]) -> Vec<(String, i64)> {
    let mut st: Vec<(String, i64)> = Vec::new();
    for r in rows {
        if r.action == "rollback" {
            st.pop();
            while st.last().is_some_and(|(v, _)| *v != r.version) {
                st.pop();
            }
            if st.is_empty() {
                st.push((r.version.clone(), r.build));
            }
        } else if st.last().map(|(v, _)| v) != Some(&r.version) {
            st.push((r.version.clone(), r.build));
        }
    }
    st
}

/// The rows of each (release, channel), oldest first.
fn by_channel(rows: &[PromotionRow]) -> BTreeMap<(String, String), Vec<&PromotionRow>> {
    let mut m: BTreeMap<(String, String), Vec<&PromotionRow>> = BTreeMap::new();
    for r in rows {
        m.entry((r.release.clone(), r.channel.clone()))
            .or_default()
            .push(r);
    }
    m
}

/// Bring the release tree in line with the database at start: every
/// `.tmp-` or `.latest-` leftover removed, `latest` pointed at the current
/// row's version (removed where a channel has none), then version
/// directories without a row removed. How many entries were changed.
pub fn recover(paths: &Paths, rows: &[PromotionRow]) -> Result<usize> {
    let root = paths.releases();
    std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
    let chans = by_channel(rows);
    let mut changed = 0;
    for rel in read_dir_names(&root)? {
        let rel_dir = root.join(&rel);
        if !rel_dir.is_dir() {
            continue;
        }
        for ch in read_dir_names(&rel_dir)? {
            let dir = rel_dir.join(&ch);
            if !dir.is_dir() {
                continue;
            }
            let mine: &[&PromotionRow] = chans
                .get(&(rel.clone(), ch.clone()))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let known: BTreeSet<&str> = mine.iter().map(|r| r.version.as_str()).collect();
            let current = mine.iter().find(|r| r.current).map(|r| r.version.clone());
            for e in read_dir_names(&dir)? {
                if e.starts_with(".tmp-") || e.starts_with(".latest-") {
                    remove_any(&dir.join(&e))?;
                    changed += 1;
                }
            }
            match &current {
                Some(v) if dir.join(v).is_dir() => {
                    if latest_of(&dir).as_deref() != Some(v.as_str()) {
                        tracing::warn!(
                            "release {rel} channel {ch}: latest pointed back at {v} (a promotion \
                             or rollback was interrupted before it was recorded)"
                        );
                        switch_latest(&dir, v)?;
                        changed += 1;
                    }
                }
                _ => {
                    if std::fs::symlink_metadata(dir.join(LATEST)).is_ok() {
                        tracing::warn!(
                            "release {rel} channel {ch}: latest removed (nothing recorded for it)"
                        );
                        remove_any(&dir.join(LATEST))?;
                        changed += 1;
                    }
                }
            }
            for e in read_dir_names(&dir)? {
                if e != LATEST && !known.contains(e.as_str()) {
                    tracing::warn!(
                        "release {rel} channel {ch}: removing version {e}, whose promotion was never recorded"
                    );
                    remove_any(&dir.join(&e))?;
                    changed += 1;
                }
            }
            fsync_dir(&dir)?;
        }
    }
    Ok(changed)
}

fn read_dir_names(d: &Path) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(d).map_err(io(format!("reading {}", d.display())))? {
        let e = e.map_err(io(format!("reading {}", d.display())))?;
        if let Some(n) = e.file_name().to_str() {
            v.push(n.to_string());
        }
    }
    v.sort();
    Ok(v)
}

fn remove_any(p: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    if meta.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
    .map_err(io(format!("removing {}", p.display())))
}

/// One promotion or rollback at a time (they read the channel, then
/// change it).
static CHANGING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ReleaseError::Internal(format!("a release task failed: {e}")))?
}

fn url(release: &str, channel: &str, version: &str) -> String {
    format!("/releases/{release}/{channel}/{version}/")
}

/// Promote the image build `build` to `channel` of `release`.
pub async fn promote(
    core: &Core,
    release: &str,
    channel: &str,
    build: i64,
    who: Option<String>,
) -> Result<PromoteAnswer> {
    check_name("release name", release)?;
    check_name("channel", channel)?;
    let _one = CHANGING.lock().await;
    let (row, arts, hist) = {
        let rel = release.to_string();
        core.store
            .read(move |c| {
                Ok((
                    kiln_store::get_build(c, build)?,
                    kiln_store::artifacts_of(c, build)?,
                    kiln_store::release::history(c, &rel)?,
                ))
            })
            .await?
    };
    let b = row.ok_or_else(|| ReleaseError::NotFound(format!("no build {build}")))?;
    let shown = kiln_core::names::shown;
    if b.image.is_none() {
        return Err(ReleaseError::Invalid(format!(
            "build {build} is not an image build (it builds the package {} {}); only a \
             succeeded image build can be promoted",
            shown(&b.package),
            shown(&b.evr)
        )));
    }
    if b.state != BuildState::Succeeded {
        return Err(ReleaseError::Invalid(format!(
            "build {build} (image {} {}) is {}, not succeeded: only a succeeded, tested image \
             build can be promoted{}",
            shown(&b.package),
            shown(&b.evr),
            b.state.as_str(),
            b.reason
                .as_deref()
                .map(|r| format!(" (it failed: {r})"))
                .unwrap_or_default()
        )));
    }
    let version = b.evr.clone();
    check_name("image version", &version)?;
    let chan_rows: Vec<&PromotionRow> = hist.iter().filter(|r| r.channel == channel).collect();
    let current = chan_rows.iter().find(|r| r.current).map(|r| (*r).clone());
    if let Some(other) = chan_rows
        .iter()
        .find(|r| r.version == version && r.build != build)
    {
        return Err(ReleaseError::Conflict(format!(
            "version {version} of channel {channel} of release {release} comes from build {}; \
             build {build} has the same version",
            other.build
        )));
    }
    // The files: every arch's formats and manifest.json.
    let arches: BTreeSet<&str> = arts
        .iter()
        .filter(|a| a.kind == ArtifactKind::Image)
        .map(|a| a.arch.as_str())
        .collect();
    let multi = arches.len() > 1;
    let sources: Vec<Source> = arts
        .iter()
        .filter(|a| a.kind == ArtifactKind::Image || a.name == "manifest.json")
        .map(|a| Source {
            src: core
                .paths
                .image_files(&b.package, build, &a.arch)
                .join(&a.name),
            path: if multi {
                format!("{}/{}", a.arch, a.name)
            } else {
                a.name.clone()
            },
            size: a.size,
            sha256: a.sha256.clone(),
        })
        .collect();
    if arches.is_empty() {
        return Err(ReleaseError::Invalid(format!(
            "build {build} has no image file to release"
        )));
    }
    let files: Vec<ReleaseFile> = {
        let mut f: Vec<ReleaseFile> = sources
            .iter()
            .map(|s| ReleaseFile {
                path: s.path.clone(),
                size: s.size,
                sha256: s.sha256.clone(),
            })
            .collect();
        f.sort_by(|a, b| a.path.cmp(&b.path));
        f
    };
    let dir = core.paths.release_channel(release, channel);
    let previous = current.as_ref().map(|r| r.version.clone());
    if current.as_ref().is_some_and(|r| r.build == build) {
        return Ok(PromoteAnswer {
            release: release.into(),
            channel: channel.into(),
            version: version.clone(),
            build,
            changed: false,
            previous: previous.clone(),
            url: url(release, channel, &version),
            signed_by: None,
            files,
            message: format!(
                "build {build} ({version}) is already the latest of channel {channel} of release \
                 {release}: nothing changed"
            ),
        });
    }
    let target = core.cfg.target(&b.target).cloned().ok_or_else(|| {
        ReleaseError::Invalid(format!(
            "build {build}'s target {} is no longer configured",
            b.target
        ))
    })?;
    let (gnupg, pubkey) = (
        core.paths.gnupg(&target.name),
        core.paths.pubkey(&target.name),
    );
    let (d, v) = (dir.clone(), version.clone());
    let recorded = chan_rows.iter().any(|r| r.version == version);
    let signed_by = blocking(move || {
        let signer = match &target.sign_key {
            Some(key) => Some(
                kiln_repo::Signer::setup(key, &gnupg, &pubkey)
                    .map_err(|e| ReleaseError::Sign(e.to_string()))?,
            ),
            None => None,
        };
        let vdir = d.join(&v);
        // A version promoted before (and still on disk) is reused; one on
        // disk without a row (a promotion killed before its commit, if
        // start-up did not already remove it) is made again.
        if !(recorded && vdir.is_dir()) {
            remove_any(&vdir)?;
            let copied = place(&d, &v, &sources, signer.as_ref())?;
            if copied > 0 {
                tracing::warn!(
                    "release {}: {copied} files copied (linking failed)",
                    vdir.display()
                );
            }
        }
        switch_latest(&d, &v)?;
        Ok(signer.map(|s| s.fingerprint))
    })
    .await?;
    record(
        core,
        "release.promoted",
        "promote",
        crate::notify::ReleaseFacts {
            release: release.to_string(),
            channel: channel.to_string(),
            version: version.clone(),
            build,
            who: who.clone(),
        },
    )
    .await?;
    retain(core, release, channel).await;
    let signed_note = match &signed_by {
        Some(f) => format!("SHA256SUMS signed by {f}"),
        None => format!(
            "UNSIGNED: target {} has no sign_key, so there is no SHA256SUMS.asc",
            b.target
        ),
    };
    Ok(PromoteAnswer {
        release: release.into(),
        channel: channel.into(),
        version: version.clone(),
        build,
        changed: true,
        previous,
        url: url(release, channel, &version),
        signed_by,
        files,
        message: format!(
            "promoted build {build} ({version}) to channel {channel} of release {release}; {signed_note}"
        ),
    })
}

/// Remove the version directories of a channel past retention (see the
/// module's comment). Failures are logged: the promotion stands.
async fn retain(core: &Core, release: &str, channel: &str) {
    let keep = core.cfg.keep_releases as usize;
    let rel = release.to_string();
    let hist = match core
        .store
        .read(move |c| kiln_store::release::history(c, &rel))
        .await
    {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("release {release}: retention skipped: {e}");
            return;
        }
    };
    let rows: Vec<&PromotionRow> = hist.iter().filter(|r| r.channel == channel).collect();
    let drop = past_retention(&rows, keep);
    let dir = core.paths.release_channel(release, channel);
    let r = blocking(move || {
        for v in &drop {
            let p = dir.join(v);
            if p.is_dir() {
                tracing::info!(
                    "release {}: removing {v} (past keep_releases)",
                    dir.display()
                );
                remove_any(&p)?;
            }
        }
        fsync_dir(&dir)
    })
    .await;
    if let Err(e) = r {
        tracing::warn!("release {release} channel {channel}: retention: {e}");
    }
}

/// The versions of a channel past retention: all but the current one, the
/// one a rollback would go to, and the `keep` most recently promoted others.
fn past_retention(rows: &[&PromotionRow], keep: usize) -> Vec<String> {
    let st = stack(rows);
    let mut kept: BTreeSet<String> = BTreeSet::new();
    if let Some((v, _)) = st.last() {
        kept.insert(v.clone());
    }
    if st.len() >= 2 {
        kept.insert(st[st.len() - 2].0.clone());
    }
    let mut others = 0;
    let mut seen = BTreeSet::new();
    let mut drop = Vec::new();
    for r in rows.iter().rev() {
        if !seen.insert(r.version.clone()) || kept.contains(&r.version) {
            continue;
        }
        if others < keep {
            others += 1;
        } else {
            drop.push(r.version.clone());
        }
    }
    drop
}

/// Record a promotion or a rollback (`action`) and queue its notification
/// (`event`) in the same commit; wake the sinks once it is durable.
async fn record(
    core: &Core,
    event: &'static str,
    action: &'static str,
    facts: crate::notify::ReleaseFacts,
) -> Result<(), ReleaseError> {
    let note = core.notify.release(event, facts.clone());
    let queued = note.is_some();
    core.store
        .write(move |t| {
            kiln_store::release::record(
                t,
                &facts.release,
                &facts.channel,
                &facts.version,
                facts.build,
                action,
                facts.who.as_deref(),
                kiln_store::now_ms(),
            )?;
            crate::notify::queue(t, &note)
        })
        .await?;
    if queued {
        core.notify.wake();
    }
    Ok(())
}

/// Point `latest` of `channel` back at the version promoted before the
/// current one (one still on disk), recorded as a history entry.
pub async fn rollback(
    core: &Core,
    release: &str,
    channel: &str,
    who: Option<String>,
) -> Result<PromoteAnswer> {
    check_name("release name", release)?;
    check_name("channel", channel)?;
    let _one = CHANGING.lock().await;
    let rel = release.to_string();
    let hist = core
        .store
        .read(move |c| kiln_store::release::history(c, &rel))
        .await?;
    let rows: Vec<&PromotionRow> = hist.iter().filter(|r| r.channel == channel).collect();
    if rows.is_empty() {
        return Err(ReleaseError::NotFound(format!(
            "release {release} has no channel {channel}"
        )));
    }
    let dir = core.paths.release_channel(release, channel);
    let mut st = stack(&rows);
    let current = st.pop();
    let back = st.into_iter().rev().find(|(v, _)| dir.join(v).is_dir());
    let Some((version, build)) = back else {
        return Err(ReleaseError::Invalid(format!(
            "channel {channel} of release {release} has no earlier version to roll back to"
        )));
    };
    let (d, v) = (dir.clone(), version.clone());
    blocking(move || switch_latest(&d, &v)).await?;
    record(
        core,
        "release.rolled_back",
        "rollback",
        crate::notify::ReleaseFacts {
            release: release.to_string(),
            channel: channel.to_string(),
            version: version.clone(),
            build,
            who: who.clone(),
        },
    )
    .await?;
    let previous = current.map(|(v, _)| v);
    let files = std::fs::read_to_string(dir.join(&version).join(SUMS))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(sha, path)| ReleaseFile {
            path: path.to_string(),
            size: std::fs::metadata(dir.join(&version).join(path)).map_or(0, |m| m.len()),
            sha256: sha.to_string(),
        })
        .collect();
    Ok(PromoteAnswer {
        release: release.into(),
        channel: channel.into(),
        version: version.clone(),
        build,
        changed: true,
        previous: previous.clone(),
        url: url(release, channel, &version),
        signed_by: None,
        files,
        message: format!(
            "channel {channel} of release {release} rolled back from {} to {version} (build {build})",
            previous.as_deref().unwrap_or("-")
        ),
    })
}

/// A release's channels, versions on disk and history.
pub async fn show(core: &Core, release: &str) -> Result<ReleaseView> {
    check_name("release name", release)?;
    let rel = release.to_string();
    let hist = core
        .store
        .read(move |c| kiln_store::release::history(c, &rel))
        .await?;
    if hist.is_empty() {
        return Err(ReleaseError::NotFound(format!(
            "no release {}",
            kiln_core::names::shown(release)
        )));
    }
    let mut channels = Vec::new();
    for ((_, ch), rows) in by_channel(&hist) {
        let dir = core.paths.release_channel(release, &ch);
        let latest = rows.iter().find(|r| r.current).map(|r| r.version.clone());
        let mut seen = BTreeSet::new();
        let versions = rows
            .iter()
            .rev()
            .filter(|r| seen.insert(r.version.clone()))
            .filter(|r| dir.join(&r.version).is_dir())
            .map(|r| ReleaseVersion {
                version: r.version.clone(),
                build: r.build,
                latest: latest.as_deref() == Some(r.version.as_str()),
            })
            .collect();
        channels.push(ChannelView {
            name: ch,
            latest,
            versions,
        });
    }
    Ok(ReleaseView {
        name: release.into(),
        channels,
        history: hist
            .iter()
            .rev()
            .map(|r| PromotionView {
                id: r.id,
                channel: r.channel.clone(),
                version: r.version.clone(),
                build: r.build,
                action: r.action.clone(),
                who: r.who.clone(),
                at: r.created_at,
                current: r.current,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, v: &str, action: &str) -> PromotionRow {
        PromotionRow {
            id,
            release: "r".into(),
            channel: "c".into(),
            version: v.into(),
            build: id,
            action: action.into(),
            who: None,
            created_at: id,
            current: false,
        }
    }

    #[test]
    fn promotions_stack_and_rollbacks_pop() {
        let rows = [
            row(1, "a", "promote"),
            row(2, "b", "promote"),
            row(3, "c", "promote"),
            row(4, "b", "rollback"),
            row(5, "a", "rollback"),
            row(6, "d", "promote"),
        ];
        let refs: Vec<&PromotionRow> = rows.iter().collect();
        let st: Vec<String> = stack(&refs).into_iter().map(|(v, _)| v).collect();
        assert_eq!(st, ["a", "d"]);
    }

    #[test]
    fn retention_keeps_current_rollback_target_and_keep_others() {
        let rows: Vec<PromotionRow> = ["a", "b", "c", "d", "e"]
            .iter()
            .enumerate()
            .map(|(i, v)| row(i as i64 + 1, v, "promote"))
            .collect();
        let refs: Vec<&PromotionRow> = rows.iter().collect();
        // Current e, rollback target d, then c and b kept with keep = 2.
        assert_eq!(past_retention(&refs, 2), ["a"]);
        assert_eq!(past_retention(&refs, 0), ["c", "b", "a"]);
        let mut rows = rows;
        rows.push(row(6, "d", "rollback"));
        let refs: Vec<&PromotionRow> = rows.iter().collect();
        // Current d, rollback target c; e is the newest other.
        assert_eq!(past_retention(&refs, 1), ["b", "a"]);
    }

    #[test]
    fn place_links_sums_and_latest_switches() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("img.ext4");
        std::fs::write(&src, b"hello").unwrap();
        let (sha, size) = kiln_core::fsutil::sha256_file(&src).unwrap();
        let ch = d.path().join("releases/r/stable");
        let files = [Source {
            src: src.clone(),
            path: "img.ext4".into(),
            size,
            sha256: sha.clone(),
        }];
        assert_eq!(place(&ch, "v1", &files, None).unwrap(), 0);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(ch.join("v1/img.ext4")).unwrap().ino(),
            std::fs::metadata(&src).unwrap().ino(),
            "linked, not copied"
        );
        assert_eq!(
            std::fs::read_to_string(ch.join("v1/SHA256SUMS")).unwrap(),
            format!("{sha}  img.ext4\n")
        );
        switch_latest(&ch, "v1").unwrap();
        assert_eq!(latest_of(&ch).as_deref(), Some("v1"));
        // A size that does not match is refused, and leaves nothing.
        let bad = [Source {
            size: 99,
            ..files[0].clone()
        }];
        assert!(place(&ch, "v2", &bad, None).is_err());
        let names = read_dir_names(&ch).unwrap();
        assert_eq!(names, ["latest", "v1"]);
    }

    #[test]
    fn recover_follows_the_database() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path());
        let ch = paths.release_channel("r", "c");
        for v in ["a", "b"] {
            std::fs::create_dir_all(ch.join(v)).unwrap();
        }
        std::fs::create_dir_all(ch.join(".tmp-x-1")).unwrap();
        switch_latest(&ch, "b").unwrap();
        let mut a = row(1, "a", "promote");
        a.release = "r".into();
        a.current = true;
        let n = recover(&paths, &[a]).unwrap();
        assert_eq!(n, 3, "tmp removed, latest back to a, b removed");
        assert_eq!(latest_of(&ch).as_deref(), Some("a"));
        assert_eq!(read_dir_names(&ch).unwrap(), ["a", "latest"]);
    }
}
