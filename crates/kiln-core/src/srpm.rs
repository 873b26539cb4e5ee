//! Reading rpm headers and planning which arches a source package is
//! built for.
//!
//! Every package is first checked on its raw bytes (`crate::header`: the
//! lead, both headers' structure within rpm's limits, the size recorded in
//! the signature header, the header SHA-256 and the payload digest); only
//! the checked headers, never the payload, then go to the `rpm` crate, and
//! any panic in it becomes an error. What the header says (name, version,
//! release, arch, arch lists) is validated as rpm accepts it
//! (`crate::names`) before anyone uses it.

use std::io::{Cursor, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use rpm::{IndexTag, PackageMetadata};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use thiserror::Error;

use crate::header::{self, HeaderError, Headers, Which};
use crate::names::{
    check_arch_list, check_arch_token, check_ident, check_version_field, printable, NameError,
};

#[derive(Debug, Error)]
pub enum PackageError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The raw layout is wrong: not an rpm, truncated, or a header outside
    /// rpm's limits.
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error(
        "header digest mismatch: the package is corrupt (its signature header records \
         SHA-256 {expected}, the header hashes to {actual})"
    )]
    HeaderDigest { expected: String, actual: String },
    #[error(
        "payload digest mismatch: the package is corrupt (its header records {algo} \
         {expected}, the payload hashes to {actual})"
    )]
    PayloadDigest {
        algo: &'static str,
        expected: String,
        actual: String,
    },
    #[error("malformed rpm header: {0}")]
    BadDigest(String),
    #[error(
        "size mismatch: the package is truncated or corrupt (its signature header records \
         {declared} bytes of header and payload, the file holds {actual})"
    )]
    Size { declared: u64, actual: u64 },
    /// The `rpm` crate panicked on a header that passed our checks.
    #[error("unreadable rpm header: the rpm reader failed on it")]
    Unreadable,
    #[error("not a valid rpm package: {0}")]
    Parse(String),
    #[error("not a source rpm (its header names source rpm \"{0}\"): submit the .src.rpm")]
    NotSource(String),
    #[error("a source rpm was given where a binary package was expected")]
    IsSource,
    #[error("bad package name in header: {0}")]
    BadName(#[from] NameError),
    #[error("bad value in the package header: {0}")]
    BadField(NameError),
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
    /// Binary packages only: the source rpm it says it was built from
    /// (`name-version-release.src.rpm`); empty for a source package.
    #[serde(default)]
    pub source_rpm: String,
    /// Source packages only: the `BuildRequires`, each as dnf takes it
    /// (`name`, `name >= 1.2`, or a rich dependency in parentheses);
    /// rpm's own `rpmlib(…)` features left out.
    #[serde(default)]
    pub build_requires: Vec<String>,
}

impl PackageInfo {
    /// The package name part of `source_rpm` (`None` for a source package
    /// or a malformed value).
    pub fn source_name(&self) -> Option<&str> {
        let base = self.source_rpm.strip_suffix(".src.rpm")?;
        let (rest, _release) = base.rsplit_once('-')?;
        let (name, _version) = rest.rsplit_once('-')?;
        (!name.is_empty()).then_some(name)
    }

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

/// A package as read: what its header says, and whether it is a source
/// package (and if not, the source rpm it names).
struct Inspected {
    info: PackageInfo,
    is_source: bool,
    source_rpm: String,
}

/// Where the payload is, to hash it.
enum Payload<'a> {
    /// The file, positioned at the payload, which is `u64` bytes long.
    File(&'a mut std::fs::File, &'a Path, u64),
    Bytes(&'a [u8]),
}

fn open(path: &Path) -> Result<(std::fs::File, u64), PackageError> {
    let file = std::fs::File::open(path).map_err(|source| PackageError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let len = file
        .metadata()
        .map_err(|source| PackageError::Read {
            path: path.display().to_string(),
            source,
        })?
        .len();
    Ok((file, len))
}

fn read(path: &Path) -> Result<Inspected, PackageError> {
    let (mut file, len) = open(path)?;
    let headers = header::read_headers(&mut file, len)?;
    let payload_len = len - headers.payload_offset();
    verify(&headers, len, Payload::File(&mut file, path, payload_len))?;
    inspect_headers(&headers)
}

/// The same for a package held in memory (a small one sent inline).
pub fn inspect_package_bytes(data: &[u8]) -> Result<PackageInfo, PackageError> {
    let headers = header::parse_headers(data)?;
    let payload = &data[headers.main.range.end..];
    verify(&headers, data.len() as u64, Payload::Bytes(payload))?;
    inspect_headers(&headers).map(|i| i.info)
}

/// The recorded size, the header SHA-256 and the payload digest, each when
/// the package records it (rpm 4.14 and later record all three).
fn verify(h: &Headers, len: u64, payload: Payload<'_>) -> Result<(), PackageError> {
    let sig = h.view(Which::Signature);
    let main = h.view(Which::Main);
    let declared = sig
        .number(header::RPMSIGTAG_LONGSIZE)
        .or_else(|| sig.number(header::RPMSIGTAG_SIZE));
    let actual = len - h.main.range.start as u64;
    if let Some(declared) = declared {
        if declared != actual {
            return Err(PackageError::Size { declared, actual });
        }
    }
    if let Some(expected) = sig.string(header::RPMSIGTAG_SHA256) {
        let expected = hex_digest(expected, 32, "header SHA-256")?;
        let actual = main.sha256();
        if expected != actual {
            return Err(PackageError::HeaderDigest { expected, actual });
        }
    }
    let algo = main.number(header::RPMTAG_PAYLOADDIGESTALGO);
    if let (Some(expected), Some(algo)) = (main.string(header::RPMTAG_PAYLOADDIGEST), algo) {
        // rpm's PGPHASHALGO numbers; others (SHA3) are not checked here.
        let (name, actual) = match algo {
            8 => ("SHA-256", hash::<sha2::Sha256>(payload)?),
            9 => ("SHA-384", hash::<sha2::Sha384>(payload)?),
            10 => ("SHA-512", hash::<sha2::Sha512>(payload)?),
            11 => ("SHA-224", hash::<sha2::Sha224>(payload)?),
            _ => return Ok(()),
        };
        let expected = hex_digest(expected, actual.len() / 2, "payload digest")?;
        if expected != actual {
            return Err(PackageError::PayloadDigest {
                algo: name,
                expected,
                actual,
            });
        }
    }
    Ok(())
}

/// A digest as the header holds it: `bytes`×2 hex digits.
fn hex_digest(raw: &[u8], bytes: usize, what: &str) -> Result<String, PackageError> {
    if raw.len() != bytes * 2 || !raw.iter().all(u8::is_ascii_hexdigit) {
        return Err(PackageError::BadDigest(format!(
            "the {what} it records is not {} hex digits",
            bytes * 2
        )));
    }
    Ok(String::from_utf8_lossy(raw).to_ascii_lowercase())
}

/// Hash the payload: the rest of the file (streamed) or of the bytes.
fn hash<D: Digest + Write>(payload: Payload<'_>) -> Result<String, PackageError> {
    let mut d = D::new();
    match payload {
        Payload::Bytes(rest) => Digest::update(&mut d, rest),
        Payload::File(file, path, len) => {
            let read_err = |source| PackageError::Read {
                path: path.display().to_string(),
                source,
            };
            let got = std::io::copy(&mut file.take(len), &mut d).map_err(read_err)?;
            if got != len {
                return Err(read_err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the payload ended after {got} of {len} bytes"),
                )));
            }
        }
    }
    Ok(hex::encode(d.finalize()))
}

fn strings(meta: &PackageMetadata, tag: IndexTag) -> Vec<String> {
    meta.header
        .get_entry_data_as_string_array(tag)
        .map(|v| v.into_iter().map(str::to_string).collect())
        .unwrap_or_default()
}

/// A value from the header for an error message: escaped and cut short.
fn clip(s: &str) -> String {
    let p = printable(s);
    match p.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &p[..i]),
        None => p,
    }
}

/// Give the checked headers to the `rpm` crate (never the payload); a panic
/// in it becomes [`PackageError::Unreadable`].
fn inspect_headers(h: &Headers) -> Result<Inspected, PackageError> {
    let bytes: &[u8] = &h.bytes;
    let read = catch_unwind(AssertUnwindSafe(|| -> Result<Inspected, PackageError> {
        let meta = PackageMetadata::parse(&mut Cursor::new(bytes))
            .map_err(|e| PackageError::Parse(clip(&e.to_string())))?;
        info_of(&meta)
    }));
    let inspected = read.unwrap_or(Err(PackageError::Unreadable))?;
    check_info(&inspected.info)?;
    Ok(inspected)
}

fn info_of(meta: &PackageMetadata) -> Result<Inspected, PackageError> {
    let text = |r: Result<&str, rpm::Error>, what: &str| {
        r.map(str::to_string).map_err(|e| {
            PackageError::Parse(format!("header has no {what}: {}", clip(&e.to_string())))
        })
    };
    let is_source = meta.is_source_package();
    let arch = if is_source {
        "src".to_string()
    } else {
        text(meta.get_arch(), "arch")?
    };
    let info = PackageInfo {
        name: text(meta.get_name(), "name")?,
        epoch: meta.get_epoch().unwrap_or(0),
        version: text(meta.get_version(), "version")?,
        release: text(meta.get_release(), "release")?,
        arch,
        build_archs: strings(meta, IndexTag::RPMTAG_BUILDARCHS),
        exclusive_arch: strings(meta, IndexTag::RPMTAG_EXCLUSIVEARCH),
        exclude_arch: strings(meta, IndexTag::RPMTAG_EXCLUDEARCH),
        source_rpm: String::new(),
        build_requires: if is_source {
            build_requires(meta)
        } else {
            Vec::new()
        },
    };
    let source_rpm = if is_source {
        String::new()
    } else {
        clip(meta.get_source_rpm().unwrap_or(""))
    };
    let info = PackageInfo {
        source_rpm: source_rpm.clone(),
        ..info
    };
    Ok(Inspected {
        info,
        is_source,
        source_rpm,
    })
}

/// A source package's requirements as dnf arguments. A dependency with
/// control characters is kept escaped (it can then match nothing, and the
/// build fails saying so).
fn build_requires(meta: &PackageMetadata) -> Vec<String> {
    use rpm::DependencyFlags as F;
    let Ok(deps) = meta.get_requires() else {
        return Vec::new();
    };
    deps.into_iter()
        .filter(|d| !d.flags.contains(F::RPMLIB) && !d.name.starts_with("rpmlib("))
        .map(|d| {
            let op = match (
                d.flags.contains(F::LESS),
                d.flags.contains(F::GREATER),
                d.flags.contains(F::EQUAL),
            ) {
                (true, false, true) => "<=",
                (true, false, false) => "<",
                (false, true, true) => ">=",
                (false, true, false) => ">",
                (false, false, true) => "=",
                _ => "",
            };
            let dep = if op.is_empty() || d.version.is_empty() {
                d.name
            } else {
                format!("{} {op} {}", d.name, d.version)
            };
            printable(&dep)
        })
        .collect()
}

/// Name, version, release, arch and arch lists as rpm accepts them.
fn check_info(info: &PackageInfo) -> Result<(), PackageError> {
    check_ident("package", &info.name)?;
    let field = PackageError::BadField;
    check_version_field("version", &info.version).map_err(field)?;
    check_version_field("release", &info.release).map_err(field)?;
    check_arch_token("arch", &info.arch).map_err(field)?;
    check_arch_list("BuildArch", &info.build_archs).map_err(field)?;
    check_arch_list("ExclusiveArch", &info.exclusive_arch).map_err(field)?;
    check_arch_list("ExcludeArch", &info.exclude_arch).map_err(field)?;
    Ok(())
}

/// Read a source rpm's header; refuse binary packages and garbage.
pub fn inspect_srpm(path: &Path) -> Result<PackageInfo, PackageError> {
    let read = read(path)?;
    if !read.is_source {
        return Err(PackageError::NotSource(read.source_rpm));
    }
    Ok(read.info)
}

/// Read a binary or source package's header.
pub fn inspect_package(path: &Path) -> Result<PackageInfo, PackageError> {
    read(path).map(|r| r.info)
}

/// Do two package files hold the same package (the same main header, so
/// the same payload digest), whatever their signatures? Compares the main
/// headers as written, after checking both files' layout (their payloads
/// are not read).
pub fn same_package(a: &Path, b: &Path) -> Result<bool, PackageError> {
    let header = |p: &Path| -> Result<Vec<u8>, PackageError> {
        let (mut file, len) = open(p)?;
        let h = header::read_headers(&mut file, len)?;
        Ok(h.main_bytes().to_vec())
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

/// `noarch` in `requested` says noarch packages are welcome: a
/// `BuildArch: noarch` package gets the one noarch job (whatever else is
/// requested), an arch-specific package one job per real arch requested
/// (never a noarch one, which rpmbuild refuses for arch-dependent binaries),
/// and an error when noarch is all that was requested.
pub fn plan_arches(info: &PackageInfo, requested: &[String]) -> Result<ArchPlan, PackageError> {
    let only_noarch =
        !info.build_archs.is_empty() && info.build_archs.iter().all(|a| a == "noarch");
    if only_noarch {
        return Ok(ArchPlan {
            build: vec!["noarch".to_string()],
            excluded: Vec::new(),
        });
    }
    let real: Vec<&String> = requested.iter().filter(|a| *a != "noarch").collect();
    if real.is_empty() && !requested.is_empty() {
        return Err(PackageError::NoArch(format!(
            "{} is arch-specific (its spec has no `BuildArch: noarch`) and only noarch was \
             requested: request a real arch (such as {})",
            info.name,
            crate::names::host_arch()
        )));
    }
    let mut plan = ArchPlan {
        build: Vec::new(),
        excluded: Vec::new(),
    };
    for arch in real {
        if plan.build.contains(arch) || plan.excluded.iter().any(|(a, _)| a == arch) {
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
            source_rpm: String::new(),
            build_requires: Vec::new(),
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
    fn noarch_in_the_requested_arches() {
        let noarch = info(&["noarch"], &[], &[]);
        let native = info(&[], &[], &[]);
        // A noarch package: the noarch job, whatever the list.
        for req in [
            &["x86_64", "noarch"][..],
            &["noarch"],
            &["noarch", "aarch64"],
        ] {
            assert_eq!(plan_arches(&noarch, &v(req)).unwrap().build, v(&["noarch"]));
        }
        // An arch-specific one: the real arches only.
        let p = plan_arches(&native, &v(&["x86_64", "noarch", "aarch64"])).unwrap();
        assert_eq!(p.build, v(&["x86_64", "aarch64"]));
        assert!(p.excluded.is_empty());
        let p = plan_arches(&native, &v(&["noarch", "x86_64", "x86_64"])).unwrap();
        assert_eq!(p.build, v(&["x86_64"]));
        // Only noarch for an arch-specific package: a clear refusal.
        let e = plan_arches(&native, &v(&["noarch"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("arch-specific") && e.contains("BuildArch: noarch"),
            "{e}"
        );
        // noarch does not count against ExclusiveArch.
        let p = plan_arches(&info(&[], &["x86_64"], &[]), &v(&["x86_64", "noarch"])).unwrap();
        assert_eq!(p.build, v(&["x86_64"]));
        assert!(p.excluded.is_empty());
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
        assert!(matches!(inspect_srpm(&p), Err(PackageError::Header(_))));
    }
}
