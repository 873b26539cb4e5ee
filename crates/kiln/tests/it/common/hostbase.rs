//! A dnf repository of "base system" RPMs made from the test host's own files.
//!
//! There is no Fedora/EL mirror on the test machines, so the buildroot tests make their own:
//! [`build_host_base_repo`] packs the host's shell, coreutils, rpm/rpmbuild (with `/usr/lib/rpm`),
//! the other tools `rpmbuild --rebuild` uses, and every shared library they need into
//! `kiln-hostbase`, and gcc/binutils/make/libc headers into `kiln-hostbase-gcc`. Both are built
//! with `AutoReqProv: no` and explicit `Provides:` (the names a Fedora/EL buildroot has, plus the
//! sonames rpm's own `elfdeps` finds), then `createrepo_c` makes the repository.
//! [`serve_dir`] serves it over HTTP on 127.0.0.1 (a std thread, an ephemeral port), so dnf
//! reaches it like a mirror; [`HttpServer::requests`] tells a test what dnf fetched.
//!
//! What goes in: the contents (`dpkg -L`) of a list of Debian packages (docs, man pages and
//! locales left out, set-uid files left out), every symlink chain they hold (alternatives
//! included: `/usr/bin/awk` → `/etc/alternatives/awk` → `mawk`), and the shared-library closure
//! of every ELF file found (`ldd`), so the root needs no Debian `Depends:` closure (no perl, no
//! ICU). Paths are canonicalised on the host (`/bin/bash` → `/usr/bin/bash` on a merged-/usr
//! host) and the host's top-level symlinks (`/bin` → `usr/bin`, …) are recreated.
//!
//! Facts this relies on (Debian 12, rpm 4.18, dnf 4.14):
//! - Debian's rpm keeps its database in `~/.rpmdb`. dnf must run with `HOME` =
//!   [`HostBase::dnf_home`], whose `.rpmmacros` says `%_dbpath /var/lib/rpm`, so the root's
//!   database lands in `ROOT/var/lib/rpm`. The root's own rpm (Debian's, packed from the host)
//!   reads `/etc/rpm/macros.kiln` with the same `%_dbpath`, so `rpmbuild` inside the root checks
//!   BuildRequires against the root's database.
//! - Host builds use `rpmbuild --nodeps` (the host's rpm database is empty), an uncompressed
//!   payload (fast to make and to install), no brp scripts, no build-id links, no debuginfo.
//!
//! The result is cached: when `out/repo/repodata/repomd.xml` exists and `out/hostbase.stamp`
//! equals the current stamp (a hash of this file's text, the host arch, and every installed
//! Debian package with its version), nothing is rebuilt. A process-wide mutex and a `flock` on `out/.lock` make
//! concurrent callers (test threads, test processes) share one build.
//!
//! Only std is used.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bump when the recipe below changes: it is part of the cache stamp.
const REVISION: &str = "kiln-hostbase recipe 1";

/// Name of the base package (what a target's `packages` list pulls in through its Provides).
pub const BASE_PACKAGE: &str = "kiln-hostbase";
/// Name of the compiler package (pulled in by `BuildRequires: gcc` / `make`).
pub const GCC_PACKAGE: &str = "kiln-hostbase-gcc";
/// A file only the base root has: a `%build` step can test for it to prove it ran in the root.
pub const MARKER_FILE: &str = "/etc/kiln-buildroot";
/// What a buildroot's base asks for (a distribution's usual list, as this
/// base provides it).
pub const ROOT_PACKAGES: &[&str] = &[
    "bash",
    "coreutils",
    "rpm-build",
    "tar",
    "gzip",
    "findutils",
    "sed",
    "grep",
    "gawk",
    "diffutils",
    "patch",
    "cpio",
];
/// The `%_dbpath` used inside the root (and, through [`HostBase::dnf_home`], by dnf).
pub const ROOT_DBPATH: &str = "/var/lib/rpm";

/// What [`build_host_base_repo`] made.
#[derive(Debug, Clone)]
pub struct HostBase {
    /// The repository directory (`repodata/` and the RPMs): serve it with [`serve_dir`].
    pub repo: PathBuf,
    /// Use as `HOME` for `dnf --installroot`: its `.rpmmacros` puts the root's rpm database in
    /// `ROOT/var/lib/rpm` (Debian's rpm would use `ROOT/root/.rpmdb`).
    pub dnf_home: PathBuf,
    /// RPM names in the repository: `kiln-hostbase`, `kiln-hostbase-gcc`.
    pub packages: Vec<String>,
    /// The RPM files.
    pub rpms: Vec<PathBuf>,
    /// Provides given although the host lacks the real package: unversioned names, with the
    /// stand-in when there is one (`"gawk (from mawk)"`, `"cpio"`).
    pub missing_on_host: Vec<String>,
    /// True when this call found a matching cache and built nothing.
    pub cached: bool,
}

/// Named Provides of the base package. The second field lists the Debian packages behind the
/// name: when the first is installed its upstream version is provided (`rpm-build = 4.18.0`),
/// otherwise the bare name (the others are stand-ins, only reported in `missing_on_host`).
const BASE_PROVIDES: &[(&str, &[&str])] = &[
    ("bash", &["bash"]),
    ("coreutils", &["coreutils"]),
    ("coreutils-common", &["coreutils"]),
    ("rpm", &["rpm"]),
    ("rpm-build", &["rpm"]),
    ("rpm-libs", &["rpm"]),
    ("rpm-build-libs", &["rpm"]),
    ("redhat-rpm-config", &[]),
    ("tar", &["tar"]),
    ("gzip", &["gzip"]),
    ("bzip2", &["bzip2"]),
    ("xz", &["xz-utils"]),
    ("findutils", &["findutils"]),
    ("sed", &["sed"]),
    ("grep", &["grep"]),
    ("gawk", &["gawk", "mawk"]),
    ("diffutils", &["diffutils"]),
    ("patch", &["patch"]),
    ("unzip", &["unzip"]),
    ("cpio", &["cpio"]),
    ("which", &["which", "debianutils"]),
    ("file", &["file"]),
    ("util-linux", &["util-linux"]),
    ("glibc", &["libc6"]),
    ("glibc-common", &["libc6"]),
    ("glibc-minimal-langpack", &["libc6"]),
    ("libgcc", &["libgcc-s1"]),
    ("filesystem", &[]),
    ("setup", &[]),
    ("system-release", &[]),
    ("kiln-base-marker", &[]),
];

/// Unversioned Provides of the base package (file provides and rpm's internal names).
const BASE_EXTRA_PROVIDES: &[&str] = &[
    "/bin/sh",
    "/bin/bash",
    "/usr/bin/sh",
    "/usr/bin/bash",
    "/bin/awk",
    "/usr/bin/awk",
    "/usr/bin/gawk",
    "rtld(GNU_HASH)",
];

const GCC_PROVIDES: &[(&str, &[&str])] = &[
    ("gcc", &["gcc"]),
    ("cpp", &["cpp"]),
    ("make", &["make"]),
    ("binutils", &["binutils"]),
    ("glibc-devel", &["libc6-dev"]),
    ("glibc-headers", &["libc6-dev"]),
    ("kernel-headers", &["linux-libc-dev"]),
    ("libxcrypt-devel", &["libcrypt-dev"]),
    ("libgcc-devel", &["gcc"]),
];

const GCC_EXTRA_PROVIDES: &[&str] = &["/usr/bin/cc", "/usr/bin/gcc", "/usr/bin/make"];

/// Debian packages packed whole (minus docs) into the base. Patterns (`*`, `[0-9]`) match the
/// installed packages; a plain name that is not installed is an error unless it is optional.
const BASE_DEBS: &[&str] = &[
    "libc6",
    "libgcc-s1",
    "bash",
    "coreutils",
    "sed",
    "grep",
    "gawk",
    "mawk",
    "findutils",
    "diffutils",
    "patch",
    "tar",
    "gzip",
    "bzip2",
    "xz-utils",
    "zstd",
    "cpio",
    "unzip",
    "debianutils",
    "which",
    "file",
    "libmagic1",
    "libmagic-mgc",
    "rpm",
    "rpm-common",
    "rpm2cpio",
    "librpm*",
    "debugedit",
    "util-linux",
];
/// Names of BASE_DEBS that may be absent (the host then lacks the tool; its name is still provided).
const BASE_OPTIONAL: &[&str] = &[
    "gawk",
    "mawk",
    "zstd",
    "which",
    "rpm2cpio",
    "debugedit",
    "cpio",
    "unzip",
];

/// Host paths added to the base besides the packages' contents (alternatives links).
const BASE_HOST_PATHS: &[&str] = &["/usr/bin/awk", "/usr/bin/which", "/usr/bin/nawk"];

const GCC_DEBS: &[&str] = &[
    "gcc",
    "gcc-[0-9]*",
    "cpp",
    "cpp-[0-9]*",
    "libgcc-[0-9]*-dev",
    "libcc1-0",
    "binutils",
    "binutils-common",
    "binutils-*-linux-gnu",
    "libbinutils",
    "make",
    "libc6-dev",
    "libc-dev-bin",
    "linux-libc-dev",
    "libcrypt-dev",
];
const GCC_OPTIONAL: &[&str] = &[];
const GCC_HOST_PATHS: &[&str] = &["/usr/bin/cc", "/usr/bin/c89", "/usr/bin/c99"];

/// Path prefixes never packed.
const EXCLUDE_PREFIXES: &[&str] = &[
    "/usr/share/doc/",
    "/usr/share/doc-base/",
    "/usr/share/man/",
    "/usr/share/info/",
    "/usr/share/locale/",
    "/usr/share/i18n/",
    "/usr/share/lintian/",
    "/usr/share/bug/",
    "/usr/share/bash-completion/",
    "/usr/share/zsh/",
    "/usr/share/fish/",
    "/usr/share/menu/",
    "/usr/share/gdb/",
    "/usr/lib/systemd/",
    "/etc/pam.d/",
    "/etc/init.d/",
    "/etc/cron.daily/",
    "/usr/lib/locale/",
    "/etc/os-release",
    "/etc/ld.so.cache",
];
/// File names never packed: big tools no rpmbuild needs (`rpm2archive` alone pulls in
/// libarchive, libxml2 and 35 MB of ICU), sanitizer runtimes, gprofng.
const EXCLUDE_NAMES_CONTAINING: &[&str] = &[
    "lto-dump",
    "rpm2archive",
    "libasan",
    "libtsan",
    "liblsan",
    "libubsan",
    "libhwasan",
    "gprofng",
    "-gp-",
];

/// Build (or find cached) the host base repository under `out` and return what is in it.
///
/// Layout: `out/repo/` (served), `out/dnf-home/.rpmmacros`, `out/hostbase.stamp`,
/// `out/work/` (specs and file lists of the last build, kept for debugging).
/// Panics with a message on any failure (it is test support code).
pub fn build_host_base_repo(out: &Path) -> HostBase {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let _guard = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    fs::create_dir_all(out).expect("create the host base output directory");
    let lock = File::create(out.join(".lock")).expect("create out/.lock");
    lock.lock().expect("flock out/.lock");

    let repo = out.join("repo");
    let dnf_home = out.join("dnf-home");
    write_file(
        &dnf_home.join(".rpmmacros"),
        &format!("%_dbpath {ROOT_DBPATH}\n"),
        0o644,
    );

    let installed = installed_debs();
    let stamp = stamp_text(&installed);
    let stamp_path = out.join("hostbase.stamp");
    if repo.join("repodata/repomd.xml").is_file()
        && fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
    {
        let rpms = list_rpms(&repo);
        return HostBase {
            repo,
            dnf_home,
            packages: vec![BASE_PACKAGE.into(), GCC_PACKAGE.into()],
            rpms,
            missing_on_host: missing(&installed),
            cached: true,
        };
    }

    let started = Instant::now();
    let _ = fs::remove_file(&stamp_path);
    let work = out.join("work");
    remove_dir_all_if_exists(&work);
    fs::create_dir_all(&work).expect("create out/work");
    let arch = rpm_arch();

    // The base: packages' files + symlink chains + the ELF closure.
    let t = Instant::now();
    let base_debs = resolve_debs(BASE_DEBS, &installed);
    let mut base_files = collect_files(&base_debs, BASE_HOST_PATHS);
    let base_extra = work.join("extra-base");
    make_base_extra(&base_extra, &installed);
    // The extra tree wins over host files of the same path (e.g. /usr/bin/sh).
    for p in walk_relative(&base_extra) {
        base_files.remove(&p);
    }
    eprintln!(
        "hostbase: {} base files from {} Debian packages ({:.1?})",
        base_files.len(),
        base_debs.len(),
        t.elapsed()
    );

    let t = Instant::now();
    let gcc_debs = resolve_debs(GCC_DEBS, &installed);
    let mut gcc_files = collect_files(&gcc_debs, GCC_HOST_PATHS);
    gcc_files.retain(|p| !base_files.contains(p));
    let gcc_extra = work.join("extra-gcc");
    fs::create_dir_all(&gcc_extra).expect("create extra-gcc");
    eprintln!(
        "hostbase: {} gcc files from {} Debian packages ({:.1?})",
        gcc_files.len(),
        gcc_debs.len(),
        t.elapsed()
    );

    let mut base_provides = versioned_provides(BASE_PROVIDES, &installed);
    base_provides.extend(BASE_EXTRA_PROVIDES.iter().map(|s| s.to_string()));
    base_provides.extend(soname_provides(&base_files));
    let mut gcc_provides = versioned_provides(GCC_PROVIDES, &installed);
    gcc_provides.extend(GCC_EXTRA_PROVIDES.iter().map(|s| s.to_string()));
    gcc_provides.extend(soname_provides(&gcc_files));

    let rpm_out = work.join("rpms");
    let t = Instant::now();
    build_rpm(
        &work,
        &rpm_out,
        &PkgSpec {
            name: BASE_PACKAGE,
            summary: "Base system of the Kiln test host (bash, coreutils, rpm-build, libraries)",
            arch: &arch,
            provides: &base_provides,
            requires: &[],
            files: &base_files,
            extra: &base_extra,
        },
    );
    eprintln!("hostbase: {BASE_PACKAGE} built ({:.1?})", t.elapsed());
    let t = Instant::now();
    let req = format!("{BASE_PACKAGE} = 1-1");
    build_rpm(
        &work,
        &rpm_out,
        &PkgSpec {
            name: GCC_PACKAGE,
            summary: "gcc, binutils, make and libc headers of the Kiln test host",
            arch: &arch,
            provides: &gcc_provides,
            requires: &[req],
            files: &gcc_files,
            extra: &gcc_extra,
        },
    );
    eprintln!("hostbase: {GCC_PACKAGE} built ({:.1?})", t.elapsed());

    // The repository, made beside the old one and swapped in.
    let t = Instant::now();
    let new_repo = out.join("repo.new");
    remove_dir_all_if_exists(&new_repo);
    fs::create_dir_all(&new_repo).expect("create repo.new");
    for rpm in list_rpms(&rpm_out) {
        let name = rpm.file_name().expect("rpm file name");
        fs::rename(&rpm, new_repo.join(name)).expect("move rpm into repo.new");
    }
    run(
        Command::new("createrepo_c")
            .arg("--no-database")
            .arg("--quiet")
            .arg(&new_repo),
        "createrepo_c",
    );
    remove_dir_all_if_exists(&repo);
    fs::rename(&new_repo, &repo).expect("rename repo.new to repo");
    remove_dir_all_if_exists(&work.join("BUILDROOT"));
    remove_dir_all_if_exists(&work.join("BUILD"));
    write_file(&stamp_path, &stamp, 0o644);
    eprintln!(
        "hostbase: createrepo_c ({:.1?}); total {:.1?}",
        t.elapsed(),
        started.elapsed()
    );

    HostBase {
        rpms: list_rpms(&repo),
        repo,
        dnf_home,
        packages: vec![BASE_PACKAGE.into(), GCC_PACKAGE.into()],
        missing_on_host: missing(&installed),
        cached: false,
    }
}

// ---------------------------------------------------------------------------------------------
// Debian package database

/// Installed Debian packages: name (without `:arch`) → version.
fn installed_debs() -> BTreeMap<String, String> {
    let out = run(
        Command::new("dpkg-query").args([
            "-W",
            "-f",
            "${db:Status-Abbrev}\t${Package}\t${Version}\n",
        ]),
        "dpkg-query -W (is this a Debian/Ubuntu host?)",
    );
    let mut map = BTreeMap::new();
    for line in out.lines() {
        let mut it = line.split('\t');
        let (Some(status), Some(name), Some(version)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if status.starts_with("ii") {
            map.insert(name.to_string(), version.to_string());
        }
    }
    map
}

fn stamp_text(installed: &BTreeMap<String, String>) -> String {
    use std::hash::{Hash, Hasher};
    // This file's own text: any edit of the recipe makes a new build.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    include_str!("hostbase.rs").hash(&mut h);
    let mut s = format!(
        "{REVISION}\nsource={:016x}\narch={}\n",
        h.finish(),
        rpm_arch()
    );
    for (name, version) in installed {
        s.push_str(name);
        s.push('=');
        s.push_str(version);
        s.push('\n');
    }
    s
}

/// Provides of the base whose Debian packages are all absent here: given as names only.
fn missing(installed: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (name, debs) in BASE_PROVIDES.iter().chain(GCC_PROVIDES) {
        if let Some(first) = debs.first() {
            if !installed.contains_key(*first) {
                match debs.iter().find(|d| installed.contains_key(**d)) {
                    Some(d) => out.push(format!("{name} (from {d})")),
                    None => out.push(name.to_string()),
                }
            }
        }
    }
    out
}

/// Expand patterns against the installed packages; panic on a required name that is missing.
fn resolve_debs(wanted: &[&str], installed: &BTreeMap<String, String>) -> Vec<String> {
    let optional: BTreeSet<&str> = BASE_OPTIONAL.iter().chain(GCC_OPTIONAL).copied().collect();
    let mut out = BTreeSet::new();
    for w in wanted {
        if w.contains('*') || w.contains('[') {
            out.extend(installed.keys().filter(|k| glob_match(w, k)).cloned());
        } else if installed.contains_key(*w) {
            out.insert(w.to_string());
        } else if !optional.contains(w) {
            panic!("hostbase: Debian package {w} is not installed on this host");
        }
    }
    out.into_iter().collect()
}

/// `*` and `[0-9]` only: enough for the patterns above.
fn glob_match(pat: &str, s: &str) -> bool {
    fn m(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') => (0..=s.len()).any(|i| m(&p[1..], &s[i..])),
            Some(b'[') => {
                let Some(end) = p.iter().position(|&c| c == b']') else {
                    return false;
                };
                let class = &p[1..end];
                let Some(&c) = s.first() else { return false };
                let ok = if class.len() == 3 && class[1] == b'-' {
                    (class[0]..=class[2]).contains(&c)
                } else {
                    class.contains(&c)
                };
                ok && m(&p[end + 1..], &s[1..])
            }
            Some(&c) => s.first() == Some(&c) && m(&p[1..], &s[1..]),
        }
    }
    m(pat.as_bytes(), s.as_bytes())
}

/// `1:4.18.0+dfsg-1+deb12u1` → `4.18.0`.
fn upstream_version(deb: &str) -> String {
    let v = deb.split_once(':').map_or(deb, |(_, v)| v);
    let v = v.rsplit_once('-').map_or(v, |(v, _)| v);
    let end = v.find(['+', '~']).unwrap_or(v.len());
    v[..end].to_string()
}

/// `name = upstream version of the first candidate package` when that package is installed;
/// otherwise the bare name (an unversioned Provides satisfies any versioned Requires, and the
/// version of a stand-in such as mawk for gawk would only mislead).
fn versioned_provides(
    list: &[(&str, &[&str])],
    installed: &BTreeMap<String, String>,
) -> Vec<String> {
    list.iter()
        .map(
            |(name, debs)| match debs.first().and_then(|d| installed.get(*d)) {
                Some(v) => format!("{name} = {}", upstream_version(v)),
                None => name.to_string(),
            },
        )
        .collect()
}

// ---------------------------------------------------------------------------------------------
// File collection

/// Host paths (canonical parent + name, as absolute strings) to pack: the packages' contents,
/// the symlink chains they hold, and the shared-library closure of their ELF files.
fn collect_files(debs: &[String], host_paths: &[&str]) -> BTreeSet<String> {
    let mut queue: Vec<PathBuf> = Vec::new();
    if !debs.is_empty() {
        let listing = run(Command::new("dpkg").arg("-L").args(debs), "dpkg -L");
        queue.extend(
            listing
                .lines()
                .filter(|l| l.starts_with('/'))
                .map(PathBuf::from),
        );
    }
    queue.extend(host_paths.iter().map(PathBuf::from));

    let mut files = BTreeSet::new();
    let mut elfs = Vec::new();
    let mut ldd_done = false;
    loop {
        while let Some(p) = queue.pop() {
            let Some(p) = canonical_parent(&p) else {
                continue;
            };
            let s = p.to_string_lossy().into_owned();
            if files.contains(&s) || excluded(&s) {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let Ok(target) = fs::read_link(&p) else {
                    continue;
                };
                let parent = p.parent().unwrap_or(Path::new("/"));
                let target = lexical_normalize(&parent.join(target));
                // A link to something left out would dangle: leave it out too.
                if canonical_parent(&target).is_some_and(|t| excluded(&t.to_string_lossy())) {
                    continue;
                }
                files.insert(s);
                queue.push(target);
            } else if meta.is_file() {
                // Set-uid/set-gid files (su, mount helpers) are not wanted in a buildroot.
                if meta.permissions().mode() & 0o6000 != 0 {
                    continue;
                }
                if is_dynamic_elf(&p) {
                    elfs.push(s.clone());
                }
                files.insert(s);
            }
            // Directories: created implicitly by their files.
        }
        if ldd_done {
            break;
        }
        // One ldd pass gives the transitive closure of every ELF file found so far.
        ldd_done = true;
        for chunk in elfs.chunks(200) {
            let out = Command::new("ldd")
                .args(chunk)
                .stderr(Stdio::null())
                .output()
                .expect("run ldd");
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if !line.starts_with('\t') {
                    continue;
                }
                if line.contains("not found") {
                    eprintln!("hostbase: ldd: {}", line.trim());
                }
                for tok in line.split_whitespace() {
                    if tok.starts_with('/') {
                        queue.push(PathBuf::from(tok));
                    }
                }
            }
        }
    }
    files
}

/// `canonicalize(parent)/name`: the real location of a path whose last component may be a
/// symlink (kept as a symlink). `None` when the parent does not exist.
fn canonical_parent(p: &Path) -> Option<PathBuf> {
    let name = p.file_name()?;
    let parent = fs::canonicalize(p.parent()?).ok()?;
    Some(parent.join(name))
}

fn lexical_normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

fn excluded(p: &str) -> bool {
    if EXCLUDE_PREFIXES.iter().any(|x| p.starts_with(x)) || p.contains('\n') {
        return true;
    }
    let name = p.rsplit('/').next().unwrap_or(p);
    name.starts_with("gp-") || EXCLUDE_NAMES_CONTAINING.iter().any(|x| name.contains(x))
}

fn is_dynamic_elf(p: &Path) -> bool {
    let mut head = [0u8; 18];
    let Ok(mut f) = File::open(p) else {
        return false;
    };
    if f.read_exact(&mut head).is_err() || &head[..4] != b"\x7fELF" {
        return false;
    }
    let e_type = if head[5] == 2 {
        u16::from_be_bytes([head[16], head[17]])
    } else {
        u16::from_le_bytes([head[16], head[17]])
    };
    e_type == 2 || e_type == 3 // ET_EXEC, ET_DYN
}

/// The sonames (with symbol versions) the package's shared libraries provide, as rpm's own
/// `elfdeps` computes them, so a package built in the root can depend on e.g.
/// `libc.so.6(GLIBC_2.34)(64bit)`.
fn soname_provides(files: &BTreeSet<String>) -> BTreeSet<String> {
    let libs: Vec<&String> = files
        .iter()
        .filter(|f| {
            f.contains(".so")
                && !fs::symlink_metadata(f).map_or(true, |m| m.file_type().is_symlink())
        })
        .filter(|f| is_dynamic_elf(Path::new(f)))
        .collect();
    let mut child = Command::new("/usr/lib/rpm/elfdeps")
        .arg("--provides")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run /usr/lib/rpm/elfdeps");
    let mut stdin = child.stdin.take().expect("elfdeps stdin");
    let input: String = libs.iter().map(|l| format!("{l}\n")).collect();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("wait for elfdeps");
    let _ = writer.join();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Generated files of the base: passwd/group, os-release, the rpm dbpath macro, the marker,
/// empty directories the sandbox mounts over, the merged-/usr links, `/usr/bin/sh` → bash.
fn make_base_extra(dir: &Path, installed: &BTreeMap<String, String>) {
    remove_dir_all_if_exists(dir);
    fs::create_dir_all(dir).expect("create extra-base");
    write_file(
        &dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\n\
         kiln:x:1000:1000:Kiln builder:/builddir:/bin/bash\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        0o644,
    );
    write_file(
        &dir.join("etc/group"),
        "root:x:0:\nkiln:x:1000:\nnobody:x:65534:\n",
        0o644,
    );
    write_file(
        &dir.join("etc/nsswitch.conf"),
        "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
        0o644,
    );
    write_file(
        &dir.join("etc/hosts"),
        "127.0.0.1 localhost\n::1 localhost\n",
        0o644,
    );
    write_file(
        &dir.join("etc/os-release"),
        "NAME=\"Kiln host base\"\nID=kiln-hostbase\nVERSION_ID=1\n\
         PRETTY_NAME=\"Kiln host base (files of the test host)\"\n",
        0o644,
    );
    write_file(
        &dir.join("etc/rpm/macros.kiln"),
        &format!(
            "# The root's rpm database (Debian's rpm defaults to ~/.rpmdb).\n%_dbpath {ROOT_DBPATH}\n"
        ),
        0o644,
    );
    write_file(
        &dir.join(MARKER_FILE.trim_start_matches('/')),
        "This root was installed from the kiln-hostbase test repository.\n",
        0o644,
    );
    for (d, mode) in [
        ("tmp", 0o1777),
        ("var/tmp", 0o1777),
        ("var/lib/rpm", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("root", 0o700),
        ("home", 0o755),
        ("builddir", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("usr/lib", 0o755),
        ("usr/lib64", 0o755),
    ] {
        let p = dir.join(d);
        fs::create_dir_all(&p).expect("create extra dir");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod extra dir");
    }
    // The host's top-level merged-/usr links (/bin -> usr/bin, ...), as the host has them.
    for top in ["bin", "sbin", "lib", "lib64", "lib32", "libx32"] {
        if let Ok(target) = fs::read_link(Path::new("/").join(top)) {
            symlink(&target, dir.join(top)).expect("create top-level symlink");
        }
    }
    // Fedora/EL have bash as /bin/sh (Debian has dash).
    symlink("bash", dir.join("usr/bin/sh")).expect("symlink usr/bin/sh");
    // gawk is not on every Debian host: give the awk there under that name.
    if !installed.contains_key("gawk") && Path::new("/usr/bin/mawk").exists() {
        symlink("mawk", dir.join("usr/bin/gawk")).expect("symlink usr/bin/gawk");
    }
}

// ---------------------------------------------------------------------------------------------
// rpmbuild

struct PkgSpec<'a> {
    name: &'a str,
    summary: &'a str,
    arch: &'a str,
    provides: &'a [String],
    requires: &'a [String],
    files: &'a BTreeSet<String>,
    extra: &'a Path,
}

fn build_rpm(work: &Path, rpm_out: &Path, p: &PkgSpec) {
    let list = work.join(format!("{}.files", p.name));
    let mut buf = Vec::new();
    for f in p.files {
        buf.extend_from_slice(f.trim_start_matches('/').as_bytes());
        buf.push(0);
    }
    fs::write(&list, buf).expect("write the file list");

    let mut spec = String::new();
    spec.push_str(&format!(
        "%define _topdir {work}\n\
         %define _rpmdir {rpm_out}\n\
         %define _build_name_fmt %%{{NAME}}-%%{{VERSION}}-%%{{RELEASE}}.%%{{ARCH}}.rpm\n\
         %define _binary_payload w0.ufdio\n\
         %define _build_id_links none\n\
         %define debug_package %{{nil}}\n\
         %define __os_install_post %{{nil}}\n\
         %define __arch_install_post %{{nil}}\n\
         %define __spec_install_post %{{nil}}\n\
         %define __check_files %{{nil}}\n\
         %define _missing_build_ids_terminate_build 0\n\
         %global __brp_strip %{{nil}}\n\
         %global __brp_strip_comment_note %{{nil}}\n\
         %global __brp_strip_static_archive %{{nil}}\n\
         %global __brp_compress %{{nil}}\n\
         %global __brp_check_rpaths %{{nil}}\n\
         %global __brp_mangle_shebangs %{{nil}}\n\
         %global __brp_remove_la_files %{{nil}}\n\
         Name: {name}\n\
         Version: 1\n\
         Release: 1\n\
         Summary: {summary}\n\
         License: Various (files of the build host)\n\
         BuildArch: {arch}\n\
         AutoReqProv: no\n",
        work = work.display(),
        rpm_out = rpm_out.display(),
        name = p.name,
        summary = p.summary,
        arch = p.arch,
    ));
    for prov in p.provides {
        spec.push_str(&format!("Provides: {prov}\n"));
    }
    for req in p.requires {
        spec.push_str(&format!("Requires: {req}\n"));
    }
    spec.push_str(&format!(
        "\n%description\n{summary}. Test fixture of Kiln: packed from the host by hostbase.rs.\n\n\
         %install\n\
         mkdir -p %{{buildroot}}\n\
         tar -C / --null --no-recursion --verbatim-files-from -T '{list}' -cf - | tar -C %{{buildroot}} -xpf -\n\
         cp -a '{extra}/.' %{{buildroot}}/\n\n\
         %files\n\
         %defattr(-,root,root,-)\n\
         /*\n",
        summary = p.summary,
        list = list.display(),
        extra = p.extra.display(),
    ));
    let spec_path = work.join(format!("{}.spec", p.name));
    write_file(&spec_path, &spec, 0o644);

    // A private HOME: the user's ~/.rpmmacros must not change the build, and Debian's rpm
    // would otherwise open ~/.rpmdb.
    let home = work.join("home");
    write_file(
        &home.join(".rpmmacros"),
        &format!("%_dbpath {}\n", work.join("rpmdb").display()),
        0o644,
    );
    run(
        Command::new("rpmbuild")
            .arg("-bb")
            .arg("--nodeps")
            .arg("--quiet")
            .arg(&spec_path)
            .env("HOME", &home)
            .env("LC_ALL", "C"),
        &format!("rpmbuild -bb {}", spec_path.display()),
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP server

/// A static file server for tests; stops when dropped.
pub struct HttpServer {
    /// `http://127.0.0.1:PORT/`
    pub url: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Paths requested so far (`GET /repodata/repomd.xml 200`), oldest first.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serve the files under `dir` over HTTP/1.1 (GET and HEAD, `Connection: close`) on
/// 127.0.0.1 with a port chosen by the kernel. Paths are percent-decoded; `..`, NUL and
/// anything resolving outside `dir` are refused; directories are 404.
pub fn serve_dir(dir: &Path) -> HttpServer {
    let root = fs::canonicalize(dir).expect("canonicalize the served directory");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let thread = {
        let stop = stop.clone();
        let log = log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let root = root.clone();
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = handle_http(conn, &root, &log);
                });
            }
        })
    };
    HttpServer {
        url: format!("http://{addr}/"),
        addr,
        stop,
        log,
        thread: Some(thread),
    }
}

fn handle_http(conn: TcpStream, root: &Path, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.by_ref().take(8192).read_line(&mut request_line)?;
    // Read the headers (bounded); only Range is used.
    let mut total = 0usize;
    let mut range: Option<(u64, Option<u64>)> = None;
    loop {
        let mut h = String::new();
        let n = reader.by_ref().take(8192).read_line(&mut h)?;
        total += n;
        if n == 0 || h == "\r\n" || h == "\n" || total > 65536 {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = parse_range(v.trim());
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let mut conn = conn;
    let (status, file) = if method != "GET" && method != "HEAD" {
        ("405 Method Not Allowed", None)
    } else {
        match resolve_request_path(root, target) {
            Some(p) => match File::open(&p) {
                Ok(f) if f.metadata().map(|m| m.is_file()).unwrap_or(false) => ("200 OK", Some(f)),
                _ => ("404 Not Found", None),
            },
            None => ("404 Not Found", None),
        }
    };
    log.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(format!("{method} {target} {}", &status[..3]));
    match file {
        Some(mut f) => {
            let len = f.metadata()?.len();
            // One byte range (librepo resumes interrupted downloads with `bytes=N-`).
            let (start, end) = match range {
                Some((a, b)) if a < len => (a, b.map_or(len - 1, |b| b.min(len - 1))),
                _ => (0, len.saturating_sub(1)),
            };
            let count = if len == 0 { 0 } else { end + 1 - start };
            if range.is_some_and(|(a, _)| a < len) && len > 0 {
                write!(
                    conn,
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{end}/{len}\r\nContent-Length: {count}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
                )?;
            } else {
                write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
                )?;
            }
            if method == "GET" {
                use std::io::Seek;
                f.seek(std::io::SeekFrom::Start(start))?;
                std::io::copy(&mut f.take(count), &mut conn)?;
            }
        }
        None => {
            let body = status.as_bytes();
            write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            if method != "HEAD" {
                conn.write_all(body)?;
            }
        }
    }
    conn.flush()
}

/// `bytes=START-` or `bytes=START-END` (one range); anything else is ignored (full answer).
fn parse_range(v: &str) -> Option<(u64, Option<u64>)> {
    let spec = v.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let a: u64 = a.trim().parse().ok()?;
    let b = b.trim();
    if b.is_empty() {
        return Some((a, None));
    }
    let b: u64 = b.parse().ok()?;
    (b >= a).then_some((a, Some(b)))
}

/// `/repodata/repomd.xml?x` → `root/repodata/repomd.xml`, or `None` when the path is not a
/// plain relative path below `root`.
fn resolve_request_path(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?;
    if !path.starts_with('/') {
        return None;
    }
    let decoded = percent_decode(path)?;
    let mut out = root.to_path_buf();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => return None,
            s if s.contains('\0') || s.contains('\\') => return None,
            s => out.push(s),
        }
    }
    // Refuse symlinks that lead outside the served tree.
    let real = fs::canonicalize(&out).ok()?;
    real.starts_with(root).then_some(real)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// rpm's name of the host architecture (`x86_64`, `aarch64`, …).
pub fn rpm_arch() -> String {
    match std::env::consts::ARCH {
        "x86" => "i686".into(),
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le".into(),
        a => a.into(),
    }
}

/// Run a command, return its stdout; panic with its stderr when it fails.
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("hostbase: cannot run {what}: {e}"));
    if !out.status.success() {
        panic!(
            "hostbase: {what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_file(path: &Path, text: &str, mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent directory");
    }
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn remove_dir_all_if_exists(p: &Path) {
    match fs::remove_dir_all(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", p.display()),
    }
}

fn list_rpms(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "rpm"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Paths (absolute, as in the root) of the non-directory entries of a tree.
fn walk_relative(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(format!("/{}", rel.display()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths_stay_inside() {
        let dir = std::env::temp_dir().join(format!("hostbase-http-{}", std::process::id()));
        fs::create_dir_all(dir.join("repodata")).unwrap();
        fs::write(dir.join("repodata/repomd.xml"), "x").unwrap();
        let root = fs::canonicalize(&dir).unwrap();
        assert!(resolve_request_path(&root, "/repodata/repomd.xml").is_some());
        assert!(resolve_request_path(&root, "/repodata/%72epomd.xml?a=b").is_some());
        assert!(resolve_request_path(&root, "/../etc/passwd").is_none());
        assert!(resolve_request_path(&root, "/%2e%2e/etc/passwd").is_none());
        assert!(resolve_request_path(&root, "/repodata/%00").is_none());
        assert!(resolve_request_path(&root, "http://x/etc").is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn versions_and_globs() {
        assert_eq!(upstream_version("4.18.0+dfsg-1+deb12u1"), "4.18.0");
        assert_eq!(upstream_version("1:3.8-4"), "3.8");
        assert_eq!(upstream_version("4:12.2.0-3"), "12.2.0");
        assert!(glob_match("gcc-[0-9]*", "gcc-12"));
        assert!(!glob_match("gcc-[0-9]*", "gcc"));
        assert!(glob_match(
            "binutils-*-linux-gnu",
            "binutils-x86-64-linux-gnu"
        ));
        assert!(glob_match("librpm*", "librpmbuild9"));
        assert_eq!(parse_range("bytes=10-"), Some((10, None)));
        assert_eq!(parse_range("bytes=10-19"), Some((10, Some(19))));
        assert_eq!(parse_range("bytes=-5"), None);
        assert_eq!(parse_range("bytes=1-2,4-5"), None);
    }

    #[test]
    fn serves_files_and_ranges() {
        let dir = std::env::temp_dir().join(format!("hostbase-serve-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a.txt"), "0123456789").unwrap();
        let server = serve_dir(&dir);
        let get = |path: &str, extra: &str| -> String {
            let mut c = TcpStream::connect(server.addr).unwrap();
            write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).unwrap();
            s
        };
        let full = get("/a.txt", "");
        assert!(full.starts_with("HTTP/1.1 200 OK") && full.ends_with("\r\n\r\n0123456789"));
        let part = get("/a.txt", "Range: bytes=3-5\r\n");
        assert!(
            part.starts_with("HTTP/1.1 206") && part.ends_with("\r\n\r\n345"),
            "{part}"
        );
        assert!(get("/../a.txt", "").starts_with("HTTP/1.1 404"));
        assert!(get("/missing", "").starts_with("HTTP/1.1 404"));
        assert_eq!(server.requests().len(), 4);
        drop(server);
        fs::remove_dir_all(&dir).unwrap();
    }
}
