//! Reading rpm headers (with the `rpm` crate, never from file names) and
//! planning which arches a source package is built for.

use std::io::BufReader;
use std::path::Path;

use rpm::{IndexTag, PackageMetadata};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::names::{check_ident, NameError};

#[derive(Debug, Error)]
pub enum PackageError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("not a valid rpm package: {0}")]
    Parse(String),
    #[error("not a source rpm (its header names source rpm {0:?}): submit the .src.rpm")]
    NotSource(String),
    #[error("a source rpm was given where a binary package was expected")]
    IsSource,
    #[error("bad package name in header: {0}")]
    BadName(#[from] NameError),
    #[error("no arch left to build: {0}")]
    NoArch(String),
}

/// What a package header says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageInfo {
    pub name: String,
    pub epoch: u32,
    pub version: String,
    pub release: String,
    /// `src` for source packages.
    pub arch: String,
    /// Source packages only: `BuildArch`, `ExclusiveArch`, `ExcludeArch`.
    pub build_archs: Vec<String>,
    pub exclusive_arch: Vec<String>,
    pub exclude_arch: Vec<String>,
}

impl PackageInfo {
    /// `epoch:version-release`, with the epoch only when it is not zero.
    pub fn evr(&self) -> String {
        if self.epoch == 0 {
            format!("{}-{}", self.version, self.release)
        } else {
            format!("{}:{}-{}", self.epoch, self.version, self.release)
        }
    }

    /// `name-epoch:version-release.arch` (epoch always written).
    pub fn nevra(&self) -> String {
        format!(
            "{}-{}:{}-{}.{}",
            self.name, self.epoch, self.version, self.release, self.arch
        )
    }
}

fn strings(meta: &PackageMetadata, tag: IndexTag) -> Vec<String> {
    meta.header
        .get_entry_data_as_string_array(tag)
        .map(|v| v.into_iter().map(str::to_string).collect())
        .unwrap_or_default()
}

fn read(path: &Path) -> Result<(PackageMetadata, PackageInfo), PackageError> {
    let file = std::fs::File::open(path).map_err(|source| PackageError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let meta = PackageMetadata::parse(&mut BufReader::new(file))
        .map_err(|e| PackageError::Parse(e.to_string()))?;
    info_of(meta)
}

/// The same for a package held in memory (a small one sent inline).
pub fn inspect_package_bytes(data: &[u8]) -> Result<PackageInfo, PackageError> {
    let meta = PackageMetadata::parse(&mut std::io::Cursor::new(data))
        .map_err(|e| PackageError::Parse(e.to_string()))?;
    info_of(meta).map(|(_, info)| info)
}

fn info_of(meta: PackageMetadata) -> Result<(PackageMetadata, PackageInfo), PackageError> {
    let text = |r: Result<&str, rpm::Error>, what: &str| {
        r.map(str::to_string)
            .map_err(|e| PackageError::Parse(format!("header has no {what}: {e}")))
    };
    let name = text(meta.get_name(), "name")?;
    check_ident("package", &name)?;
    let version = text(meta.get_version(), "version")?;
    let release = text(meta.get_release(), "release")?;
    let arch = if meta.is_source_package() {
        "src".to_string()
    } else {
        text(meta.get_arch(), "arch")?
    };
    let info = PackageInfo {
        epoch: meta.get_epoch().unwrap_or(0),
        build_archs: strings(&meta, IndexTag::RPMTAG_BUILDARCHS),
        exclusive_arch: strings(&meta, IndexTag::RPMTAG_EXCLUSIVEARCH),
        exclude_arch: strings(&meta, IndexTag::RPMTAG_EXCLUDEARCH),
        name,
        version,
        release,
        arch,
    };
    Ok((meta, info))
}

/// Read a source rpm's header; refuse binary packages and garbage.
pub fn inspect_srpm(path: &Path) -> Result<PackageInfo, PackageError> {
    let (meta, info) = read(path)?;
    if !meta.is_source_package() {
        let src = meta.get_source_rpm().unwrap_or("").to_string();
        return Err(PackageError::NotSource(src));
    }
    Ok(info)
}

/// Read a binary or source package's header.
pub fn inspect_package(path: &Path) -> Result<PackageInfo, PackageError> {
    read(path).map(|(_, info)| info)
}

/// Do two package files hold the same package (the same main header, so
/// the same payload digest), whatever their signatures?
pub fn same_package(a: &Path, b: &Path) -> Result<bool, PackageError> {
    let header = |p: &Path| -> Result<Vec<u8>, PackageError> {
        let (meta, _) = read(p)?;
        meta.header_bytes()
            .map_err(|e| PackageError::Parse(e.to_string()))
    };
    Ok(header(a)? == header(b)?)
}

/// Which arches a build of this source package gets, and which requested
/// arches its header rules out (with why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchPlan {
    pub build: Vec<String>,
    pub excluded: Vec<(String, String)>,
}

pub fn plan_arches(info: &PackageInfo, requested: &[String]) -> Result<ArchPlan, PackageError> {
    let only_noarch =
        !info.build_archs.is_empty() && info.build_archs.iter().all(|a| a == "noarch");
    if only_noarch {
        return Ok(ArchPlan {
            build: vec!["noarch".to_string()],
            excluded: Vec::new(),
        });
    }
    let mut plan = ArchPlan {
        build: Vec::new(),
        excluded: Vec::new(),
    };
    for arch in requested {
        if plan.build.contains(arch) {
            continue;
        }
        if !info.exclusive_arch.is_empty() && !info.exclusive_arch.iter().any(|a| a == arch) {
            plan.excluded.push((
                arch.clone(),
                format!("ExclusiveArch: {}", info.exclusive_arch.join(" ")),
            ));
        } else if info.exclude_arch.iter().any(|a| a == arch) {
            plan.excluded.push((
                arch.clone(),
                format!("ExcludeArch: {}", info.exclude_arch.join(" ")),
            ));
        } else {
            plan.build.push(arch.clone());
        }
    }
    if plan.build.is_empty() {
        let why: Vec<String> = plan
            .excluded
            .iter()
            .map(|(a, r)| format!("{a} ruled out by {r}"))
            .collect();
        return Err(PackageError::NoArch(if why.is_empty() {
            "no arch requested".into()
        } else {
            why.join("; ")
        }));
    }
    Ok(plan)
}

/// Compare two `[epoch:]version-release` strings the way rpm does.
pub fn compare_evr(a: &str, b: &str) -> std::cmp::Ordering {
    rpm_version::Evr::parse(a).cmp(&rpm_version::Evr::parse(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(build: &[&str], excl: &[&str], exclude: &[&str]) -> PackageInfo {
        PackageInfo {
            name: "p".into(),
            epoch: 0,
            version: "1".into(),
            release: "1".into(),
            arch: "src".into(),
            build_archs: build.iter().map(|s| s.to_string()).collect(),
            exclusive_arch: excl.iter().map(|s| s.to_string()).collect(),
            exclude_arch: exclude.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn noarch_collapses() {
        let p = plan_arches(&info(&["noarch"], &[], &[]), &v(&["x86_64", "aarch64"])).unwrap();
        assert_eq!(p.build, v(&["noarch"]));
    }

    #[test]
    fn exclusive_and_exclude() {
        let p = plan_arches(
            &info(&[], &["x86_64", "aarch64"], &["aarch64"]),
            &v(&["x86_64", "aarch64", "i686"]),
        )
        .unwrap();
        assert_eq!(p.build, v(&["x86_64"]));
        assert_eq!(p.excluded.len(), 2);
        assert!(p.excluded[0].1.contains("ExcludeArch"));
        assert!(p.excluded[1].1.contains("ExclusiveArch"));
        assert!(plan_arches(&info(&[], &["s390x"], &[]), &v(&["x86_64"])).is_err());
    }

    #[test]
    fn evr_order() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_evr("1.10-1", "1.9-1"), Greater);
        assert_eq!(compare_evr("1:1.0-1", "2.0-1"), Greater);
        assert_eq!(compare_evr("1.0-1", "1.0-1"), Equal);
        assert_eq!(compare_evr("1.0~rc1-1", "1.0-1"), Less);
    }

    #[test]
    fn garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.src.rpm");
        std::fs::write(&p, b"definitely not an rpm, just some bytes to parse").unwrap();
        assert!(matches!(inspect_srpm(&p), Err(PackageError::Parse(_))));
    }
}
