//! One publication of one target: stage the packages of finished builds
//! into the target's repositories, retire old versions, regenerate metadata
//! with createrepo_c, and switch to it atomically. Blocking: run it on a
//! blocking thread. It returns a [`Plan`] of database changes that the
//! caller commits once the new metadata is live.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_core::layout::Layout;
use kiln_core::names::check_file_name;
use kiln_core::srpm::{compare_evr, inspect_package, same_package};
use kiln_core::state::ArtifactKind;
use kiln_store::{ArtifactRow, RepoPackage};

use crate::sign::Signer;
use crate::RepoError;

/// A target as the repository builder sees it.
#[derive(Debug, Clone)]
pub struct TargetRepo {
    pub name: String,
    /// Binary repositories (noarch packages go to each).
    pub arches: Vec<String>,
    /// Versions kept per package.
    pub keep: u32,
    pub signer: Option<Signer>,
    pub tosign_dir: Option<PathBuf>,
}

impl TargetRepo {
    pub fn repos(&self) -> Vec<String> {
        let mut r: Vec<String> = self
            .arches
            .iter()
            .filter(|a| *a != "noarch")
            .cloned()
            .collect();
        r.push("source".into());
        r
    }
}

/// A finished build waiting for publication, with its verified artifacts.
#[derive(Debug, Clone)]
pub struct BuildInput {
    pub id: i64,
    pub artifacts: Vec<ArtifactRow>,
}

/// Database changes of a publication.
#[derive(Debug, Default)]
pub struct Plan {
    pub put: Vec<RepoPackage>,
    pub delete: Vec<(String, String)>,
    pub gens: Vec<(String, i64)>,
    pub published: Vec<i64>,
    pub failed: Vec<(i64, String)>,
    /// How many times createrepo_c ran.
    pub createrepo_runs: u32,
}

pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), RepoError> {
    kiln_core::fsutil::write_atomic(path, data, 0o644).map_err(RepoError::io(path))
}

fn tmp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

fn sha256_file(p: &Path) -> Result<String, RepoError> {
    kiln_core::fsutil::sha256_file(p)
        .map(|(sha, _)| sha)
        .map_err(RepoError::io(p))
}

/// fsync one file's content (a metadata file, before the rename that makes
/// it live: after a power loss repomd.xml never names unwritten content).
fn sync_file(p: &Path) -> Result<(), RepoError> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(RepoError::io(p))
}

fn sync_dir(d: &Path) {
    if let Ok(f) = std::fs::File::open(d) {
        let _ = f.sync_all();
    }
}

struct Staged {
    src: PathBuf,
    pkg: RepoPackage,
}

/// Check every package of a build (sha256 as recorded at intake, header
/// readable) and work out where each goes. Nothing is written.
fn check_build(
    layout: &Layout,
    target: &TargetRepo,
    b: &BuildInput,
) -> Result<Vec<Staged>, String> {
    let mut out = Vec::new();
    for a in &b.artifacts {
        if !matches!(a.kind, ArtifactKind::Rpm | ArtifactKind::Srpm) {
            continue;
        }
        check_file_name(&a.name).map_err(|e| e.to_string())?;
        let path = layout.incoming(b.id, &a.arch).join(&a.name);
        let sha = sha256_file(&path).map_err(|e| e.to_string())?;
        if sha != a.sha256 {
            return Err(format!(
                "{} is corrupt: its sha256 is {sha}, intake recorded {}",
                path.display(),
                a.sha256
            ));
        }
        let info = inspect_package(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let repos: Vec<String> = match info.arch.as_str() {
            "src" => vec!["source".into()],
            "noarch" => target
                .repos()
                .into_iter()
                .filter(|r| r != "source")
                .collect(),
            arch if target.arches.iter().any(|t| t == arch) => vec![arch.to_string()],
            other => {
                tracing::info!(
                    "{}: arch {other} is not published by target {}",
                    a.name,
                    target.name
                );
                vec![]
            }
        };
        for repo in repos {
            out.push(Staged {
                src: path.clone(),
                pkg: RepoPackage {
                    target: target.name.clone(),
                    repo,
                    file: a.name.clone(),
                    name: info.name.clone(),
                    epoch: info.epoch,
                    version: info.version.clone(),
                    release: info.release.clone(),
                    arch: info.arch.clone(),
                    build: b.id,
                    retired_gen: None,
                },
            });
        }
    }
    if out.is_empty() {
        return Err("the build has no package to publish".into());
    }
    Ok(out)
}

/// Put one package file in place (signed when the target signs); a file
/// already there with the same header is left alone. Returns where it went,
/// relative to the repository: its own name, or `b<build>/<name>` when a
/// different package of that name is there (an equal-version CI rebuild).
/// The file the live metadata names is never overwritten: it stays until
/// the metadata that drops it has been live for a generation.
fn place(layout: &Layout, target: &TargetRepo, s: &Staged) -> Result<String, RepoError> {
    let dir = layout.repo(&target.name, &s.pkg.repo);
    let there = |p: &Path| p.exists().then(|| same_package(&s.src, p).unwrap_or(false));
    let flat = dir.join(&s.pkg.file);
    let rel = match there(&flat) {
        Some(true) => return Ok(s.pkg.file.clone()),
        None => s.pkg.file.clone(),
        Some(false) => {
            let rel = format!("b{}/{}", s.pkg.build, s.pkg.file);
            if there(&dir.join(&rel)) == Some(true) {
                return Ok(rel);
            }
            rel
        }
    };
    let dest = dir.join(&rel);
    if let Some(d) = dest.parent() {
        std::fs::create_dir_all(d).map_err(RepoError::io(d))?;
    }
    let tmp = tmp_name(&dest);
    std::fs::copy(&s.src, &tmp).map_err(RepoError::io(&tmp))?;
    if let Some(signer) = &target.signer {
        signer.sign_rpm(&tmp)?;
    }
    sync_file(&tmp)?;
    std::fs::rename(&tmp, &dest).map_err(RepoError::io(&dest))?;
    if let Some(td) = &target.tosign_dir {
        let d = td.join(&target.name);
        std::fs::create_dir_all(&d).map_err(RepoError::io(&d))?;
        let t = d.join(&s.pkg.file);
        let tt = tmp_name(&t);
        std::fs::copy(&s.src, &tt).map_err(RepoError::io(&tt))?;
        sync_file(&tt)?;
        std::fs::rename(&tt, &t).map_err(RepoError::io(&t))?;
    }
    Ok(rel)
}

fn evr(p: &RepoPackage) -> String {
    format!("{}:{}-{}", p.epoch, p.version, p.release)
}

/// Publish `builds` (and regenerate every repository of the target when
/// `all`). `rows` and `gens` are the database's view of the target.
pub fn publish(
    layout: &Layout,
    target: &TargetRepo,
    createrepo: &Path,
    rows: Vec<RepoPackage>,
    gens: HashMap<String, i64>,
    builds: &[BuildInput],
    all: bool,
) -> Result<Plan, RepoError> {
    let mut plan = Plan::default();
    let mut live: HashMap<(String, String), RepoPackage> = HashMap::new();
    let mut retired: Vec<RepoPackage> = Vec::new();
    for r in rows {
        if r.retired_gen.is_some() {
            retired.push(r);
        } else {
            live.insert((r.repo.clone(), r.file.clone()), r);
        }
    }
    let mut touched: BTreeSet<String> = BTreeSet::new();
    if all {
        touched.extend(target.repos());
    }
    for b in builds {
        let staged = match check_build(layout, target, b) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("build {} not published: {e}", b.id);
                plan.failed.push((b.id, e));
                continue;
            }
        };
        let mut staged = staged;
        for s in &mut staged {
            s.pkg.file = place(layout, target, s)?;
        }
        for s in staged {
            touched.insert(s.pkg.repo.clone());
            live.insert((s.pkg.repo.clone(), s.pkg.file.clone()), s.pkg.clone());
            plan.put.push(s.pkg);
        }
        plan.published.push(b.id);
    }
    // Retention: per repository, package name and arch, the newest `keep`.
    let mut groups: HashMap<(String, String, String), Vec<(String, String)>> = HashMap::new();
    for (k, p) in &live {
        if touched.contains(&p.repo) {
            groups
                .entry((p.repo.clone(), p.name.clone(), p.arch.clone()))
                .or_default()
                .push(k.clone());
        }
    }
    let new_gen = |repo: &str| gens.get(repo).copied().unwrap_or(0) + 1;
    for (_, mut keys) in groups {
        // Newest first; of equal versions (a CI rebuild) the later build.
        keys.sort_by(|a, b| {
            compare_evr(&evr(&live[b]), &evr(&live[a])).then(live[b].build.cmp(&live[a].build))
        });
        for k in keys.into_iter().skip(target.keep.max(1) as usize) {
            if let Some(mut p) = live.remove(&k) {
                p.retired_gen = Some(new_gen(&p.repo));
                plan.put.retain(|x| !(x.repo == p.repo && x.file == p.file));
                plan.put.push(p);
            }
        }
    }
    for repo in &touched {
        let gen = new_gen(repo);
        let dir = layout.repo(&target.name, repo);
        std::fs::create_dir_all(&dir).map_err(RepoError::io(&dir))?;
        let mut files: Vec<&str> = live
            .values()
            .filter(|p| &p.repo == repo)
            .map(|p| p.file.as_str())
            .collect();
        files.sort_unstable();
        files.dedup();
        let work = layout.repowork(&target.name, repo);
        createrepo_run(createrepo, &layout.repocache(), &work, &dir, &files)?;
        plan.createrepo_runs += 1;
        swap(&work, &dir, target.signer.as_ref())?;
        plan.gens.push((repo.clone(), gen));
        // Files dropped by an earlier generation are named by no live
        // metadata now: remove them.
        for r in retired
            .iter()
            .filter(|r| &r.repo == repo && r.retired_gen.is_some_and(|g| g < gen))
        {
            if !live.contains_key(&(r.repo.clone(), r.file.clone())) {
                let f = dir.join(&r.file);
                let _ = std::fs::remove_file(&f);
                if let Some(sub) = f.parent().filter(|p| *p != dir) {
                    // `b<build>/` of a CI rebuild, once empty.
                    let _ = std::fs::remove_dir(sub);
                }
                plan.delete.push((r.repo.clone(), r.file.clone()));
            }
        }
        sync_dir(&dir);
    }
    Ok(plan)
}

fn createrepo_run(
    createrepo: &Path,
    cache: &Path,
    work: &Path,
    dir: &Path,
    files: &[&str],
) -> Result<(), RepoError> {
    std::fs::create_dir_all(work).map_err(RepoError::io(work))?;
    std::fs::create_dir_all(cache).map_err(RepoError::io(cache))?;
    let list = work.join("pkglist");
    let mut text = files.join("\n");
    text.push('\n');
    std::fs::write(&list, text).map_err(RepoError::io(&list))?;
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let out = kiln_core::child::die_with_parent(&mut Command::new(createrepo))
        .arg("--update")
        .arg("--cachedir")
        .arg(abs(cache))
        .arg("--outputdir")
        .arg(abs(work))
        .arg("--pkglist")
        .arg(abs(&list))
        .args(["--general-compress-type", "gz", "--no-database", "--quiet"])
        .arg(abs(dir))
        .output()
        .map_err(|e| RepoError::Tool(format!("cannot run {}: {e}", createrepo.display())))?;
    if !out.status.success() {
        return Err(RepoError::Tool(format!(
            "createrepo_c failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The `repodata/…` files a repomd.xml names.
fn refs(repomd: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = repomd;
    while let Some(i) = rest.find("href=\"") {
        rest = &rest[i + 6..];
        if let Some(j) = rest.find('"') {
            out.insert(rest[..j].to_string());
            rest = &rest[j..];
        }
    }
    out
}

/// Make the metadata in `work/repodata` live in `dir/repodata`: every file
/// the new repomd.xml names is put in place first, then repomd.xml (and its
/// signature) is renamed over the old one. Files of the previous generation
/// stay for clients that fetched the old repomd.xml.
fn swap(work: &Path, dir: &Path, signer: Option<&Signer>) -> Result<(), RepoError> {
    let served = dir.join("repodata");
    std::fs::create_dir_all(&served).map_err(RepoError::io(&served))?;
    let new_xml_path = work.join("repodata/repomd.xml");
    let new_xml = std::fs::read_to_string(&new_xml_path).map_err(RepoError::io(&new_xml_path))?;
    let new_refs = refs(&new_xml);
    let old_refs = std::fs::read_to_string(served.join("repomd.xml"))
        .map(|x| refs(&x))
        .unwrap_or_default();
    for r in &new_refs {
        let name = Path::new(r)
            .file_name()
            .ok_or_else(|| RepoError::Tool(format!("odd href {r} in repomd.xml")))?;
        let (src, dst) = (work.join("repodata").join(name), served.join(name));
        if !dst.exists() {
            kiln_core::fsutil::link_or_copy(&src, &dst).map_err(RepoError::io(&dst))?;
            // createrepo_c wrote it without an fsync.
            sync_file(&dst)?;
        }
    }
    sync_dir(&served);
    let tmp = served.join(".repomd.xml.tmp");
    std::fs::write(&tmp, &new_xml).map_err(RepoError::io(&tmp))?;
    sync_file(&tmp)?;
    if let Some(s) = signer {
        let asc_tmp = served.join(".repomd.xml.asc.tmp");
        s.sign_detached(&tmp, &asc_tmp)?;
        sync_file(&asc_tmp)?;
        std::fs::rename(&asc_tmp, served.join("repomd.xml.asc")).map_err(RepoError::io(&served))?;
    }
    std::fs::rename(&tmp, served.join("repomd.xml")).map_err(RepoError::io(&served))?;
    sync_dir(&served);
    let keep: BTreeSet<String> = new_refs
        .iter()
        .chain(old_refs.iter())
        .filter_map(|r| {
            Path::new(r)
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
        })
        .collect();
    if let Ok(rd) = std::fs::read_dir(&served) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n != "repomd.xml"
                && n != "repomd.xml.asc"
                && !n.starts_with('.')
                && !keep.contains(&n)
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn refs_are_found() {
        let x = r#"<data type="primary"><location href="repodata/abc-primary.xml.gz"/></data>
        <data type="other"><location href="repodata/def-other.xml.gz"/></data>"#;
        let r = super::refs(x);
        assert!(r.contains("repodata/abc-primary.xml.gz"));
        assert!(r.contains("repodata/def-other.xml.gz"));
        assert_eq!(r.len(), 2);
    }
}
