//! Helpers of the repository-builder tests (`repo_*.rs`), on top of the
//! shared harness in `common/mod.rs` (which these tests never change).
//!
//! Everything is black-box: the master is configured through its TOML file,
//! driven through the CLI, and its results are read from `DATA/repos/`, from
//! its HTTP server (with the host's `curl`) and with the host's real `rpm`,
//! `createrepo_c` output, `gpg` and `dnf` (in an installroot, offline,
//! against the master's URL). A tool that is missing fails the test with a
//! clear message; nothing is ever skipped.

#![allow(dead_code)]

use crate::common::*;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Deadline for a succeeded build to be published (the contract says
/// "within seconds"; the margin is for a loaded two-core machine).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for a `dnf install` in an installroot.
pub const DNF_TIMEOUT: Duration = Duration::from_secs(240);

// ---------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------

/// What every repository test needs: a farm building real RPMs, plus the
/// host's createrepo_c (the master runs it), curl and gzip (to read what
/// the master serves and wrote).
pub fn require_repo_tools() {
    require_build_tools();
    for t in ["createrepo_c", "curl", "gzip"] {
        require_repo_tool(t);
    }
}

/// Like `require_tool`, with the Debian packages of these tools named.
pub fn require_repo_tool(name: &str) -> PathBuf {
    if let Some(p) = find_tool(name) {
        return p;
    }
    panic!(
        "required tool `{name}` was not found in PATH; the repository tests need it and never \
         skip (on Debian 12: apt-get install rpm createrepo-c dnf gnupg curl gzip)"
    );
}

// ---------------------------------------------------------------------------
// Test packages: noarch, no requirements at all (dnf in an empty
// installroot has nothing that provides a base system)
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct RPkg {
    pub name: String,
    pub version: String,
    pub release: String,
    /// Written into the installed file, so two builds of one EVR differ.
    pub note: String,
}

impl RPkg {
    pub fn new(name: &str, version: &str, release: &str) -> RPkg {
        RPkg {
            name: name.to_string(),
            version: version.to_string(),
            release: release.to_string(),
            note: String::new(),
        }
    }

    pub fn note(mut self, note: &str) -> RPkg {
        self.note = note.to_string();
        self
    }

    /// `VERSION-RELEASE`.
    pub fn evr(&self) -> String {
        format!("{}-{}", self.version, self.release)
    }

    /// The binary package's conventional file name.
    pub fn rpm_file(&self) -> String {
        format!("{}-{}.noarch.rpm", self.name, self.evr())
    }

    /// The source package's conventional file name.
    pub fn srpm_file(&self) -> String {
        format!("{}-{}.src.rpm", self.name, self.evr())
    }

    /// The one file the package installs.
    pub fn data_file(&self) -> String {
        format!("/usr/share/kiln-repo-test/{}.txt", self.name)
    }

    /// What that file holds.
    pub fn data_text(&self) -> String {
        format!("{} {} {}", self.name, self.evr(), self.note)
            .trim_end()
            .to_string()
    }

    pub fn spec_text(&self) -> String {
        let n = &self.name;
        let mut s = String::new();
        s += &format!(
            "Name: {n}\nVersion: {}\nRelease: {}\n",
            self.version, self.release
        );
        s += &format!("Summary: Kiln repository test package {n}\nLicense: MIT\n");
        s += "BuildArch: noarch\nAutoReqProv: no\n";
        s += "\n%description\nA package made by the Kiln repository tests.\n";
        s += "\n%prep\n\n%build\n\n%install\n";
        s += "mkdir -p %{buildroot}/usr/share/kiln-repo-test\n";
        s += &format!(
            "echo '{}' > %{{buildroot}}{}\n",
            self.data_text(),
            self.data_file()
        );
        s += &format!("\n%files\n{}\n", self.data_file());
        s
    }

    /// Makes the source RPM with the host's `rpmbuild -bs` under `dir`.
    pub fn build_srpm(&self, dir: &Path) -> PathBuf {
        require_tool("rpmbuild");
        let work = dir.join(format!("rpkg-{}-{}-{}", self.name, self.evr(), unique()));
        let top = work.join("rpmbuild");
        fs::create_dir_all(top.join("SOURCES")).unwrap();
        let spec = work.join(format!("{}.spec", self.name));
        fs::write(&spec, self.spec_text()).unwrap();
        rpmbuild_bs(&top, &spec)
    }
}

// ---------------------------------------------------------------------------
// Master configuration
// ---------------------------------------------------------------------------

/// A `[[target]]` table on channel `default`; `extra` is more `key = value`
/// lines (TOML) for the table.
pub fn target_toml(name: &str, arches: &[&str], extra: &[String]) -> String {
    let arches: Vec<String> = arches.iter().map(|a| format!("{a:?}")).collect();
    let mut s = format!(
        "[[target]]\nname = {name:?}\narches = [{}]\nchannel = \"default\"\n",
        arches.join(", ")
    );
    for l in extra {
        s += l;
        s += "\n";
    }
    s
}

/// A whole config file: top-level lines first, then the targets.
pub fn config_toml(top: &[String], targets: &[String]) -> String {
    let mut s = String::new();
    for l in top {
        s += l;
        s += "\n";
    }
    for t in targets {
        s += "\n";
        s += t;
    }
    s
}

/// `key = "path"` (a TOML basic string).
pub fn toml_path(key: &str, p: &Path) -> String {
    let s = p.to_str().expect("utf-8 path");
    assert!(
        !s.contains('"') && !s.contains('\\'),
        "path unfit for TOML: {s}"
    );
    format!("{key} = \"{s}\"")
}

/// The test's own scratch directory, outside the master's (it must exist
/// before the master starts: wrapper scripts, keys, staging dirs live here).
pub struct Ctl {
    pub dir: TempDir,
}

impl Ctl {
    pub fn new() -> Ctl {
        Ctl {
            dir: tempfile::Builder::new()
                .prefix("kiln-it-repo-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A master (config given as TOML text) with one worker `w1` that builds
/// x86_64 and noarch on channel `default` with 2 slots. Fields drop in
/// order: the worker, then the master, then the test's own files.
pub struct RepoFarm {
    pub w: Worker,
    pub m: Master,
    pub ctl: Ctl,
}

impl RepoFarm {
    pub fn start(config: &str, ctl: Ctl) -> RepoFarm {
        RepoFarm::start_opts(MasterOpts::default().config(config), ctl)
    }

    pub fn start_opts(opts: MasterOpts, ctl: Ctl) -> RepoFarm {
        require_repo_tools();
        let m = Master::start_with(opts);
        let w = m.start_worker("w1", "x86_64,noarch", "default", 2);
        RepoFarm { w, m, ctl }
    }
}

// ---------------------------------------------------------------------------
// A createrepo_c wrapper the tests control
// ---------------------------------------------------------------------------

/// A shell script given to the master as `createrepo = "…"`. Every call is
/// logged (`pid args`) in `calls`; it then execs the real createrepo_c.
/// Once `armed` exists, the first call after that (only that one) touches
/// `started`, writes its pid to `held/pid` and waits until `gate` exists.
/// Calls that only ask for the version or help are logged in `probes` and
/// never held.
pub struct Wrapper {
    pub script: PathBuf,
    pub dir: PathBuf,
}

impl Wrapper {
    pub fn create(ctl: &Ctl) -> Wrapper {
        let real = require_repo_tool("createrepo_c");
        let dir = ctl.path().join("createrepo-ctl");
        fs::create_dir_all(&dir).unwrap();
        let script = ctl.path().join("createrepo-wrapper.sh");
        let d = dir.to_str().unwrap();
        let r = real.to_str().unwrap();
        assert!(!d.contains('\'') && !r.contains('\''));
        let text = format!(
            r#"#!/bin/sh
D='{d}'
case " $* " in
  *" --version "*|*" -V "*|*" --help "*|*" -h "*)
    echo "$$ $*" >> "$D/probes"
    exec '{r}' "$@" ;;
esac
echo "$$ $*" >> "$D/calls"
if [ -e "$D/armed" ] && mkdir "$D/held" 2>/dev/null; then
  echo "$$" > "$D/held/pid"
  touch "$D/started"
  while [ ! -e "$D/gate" ]; do sleep 0.05; done
fi
exec '{r}' "$@"
"#
        );
        fs::write(&script, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        Wrapper { script, dir }
    }

    /// The config line that makes the master use this wrapper.
    pub fn config_line(&self) -> String {
        toml_path("createrepo", &self.script)
    }

    /// The logged calls (pid, arguments), probes excluded.
    pub fn calls(&self) -> Vec<(i32, String)> {
        let text = fs::read_to_string(self.dir.join("calls")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (pid, args) = l.split_once(' ').unwrap_or((l, ""));
                pid.parse().ok().map(|p| (p, args.to_string()))
            })
            .collect()
    }

    /// From now on, the next call is held until `open_gate`. Returns how
    /// many calls had been made before. First waits (a few seconds at
    /// most) until no call is running and none came for half a second, so
    /// that a regeneration the master does on its own at start is not the
    /// one held.
    pub fn arm(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = (self.calls().len(), Instant::now());
        while Instant::now() < deadline {
            let calls = self.calls();
            let busy = calls.iter().any(|(p, _)| is_createrepo(*p));
            if calls.len() != last.0 || busy {
                last = (calls.len(), Instant::now());
            } else if last.1.elapsed() >= Duration::from_millis(500) {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let n = self.calls().len();
        fs::write(self.dir.join("armed"), b"").unwrap();
        n
    }

    pub fn open_gate(&self) {
        fs::write(self.dir.join("gate"), b"").unwrap();
    }

    pub fn started(&self) -> bool {
        self.dir.join("started").exists()
    }

    /// The pid of the held call, once there is one.
    pub fn held_pid(&self) -> Option<i32> {
        fs::read_to_string(self.dir.join("held").join("pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Waits until a call is held (the master is inside a publication).
    pub fn wait_started(&self, m: &Master, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.started() {
            if Instant::now() >= deadline {
                panic!(
                    "createrepo_c (the wrapper) was not called within {timeout:?} after it was \
                     armed: no publication started; calls so far: {:?}\n{}",
                    self.calls(),
                    tail_lines(&m.stderr_text(), 40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether a process exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("");
    state != "Z" && state != "X"
}

/// Whether `pid` is a live createrepo_c run or wrapper (its command line
/// names createrepo).
pub fn is_createrepo(pid: i32) -> bool {
    pid_alive(pid)
        && fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("createrepo"))
            .unwrap_or(false)
}

/// Waits for the createrepo runs `pids` to be gone (deadline); SIGKILLs the
/// ones left after it and says so. Returns the pids that had to be killed.
pub fn wait_pids_gone(pids: &[i32], timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|&p| is_createrepo(p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<i32> = pids.iter().copied().filter(|&p| is_createrepo(p)).collect();
    for &p in &left {
        eprintln!("note: createrepo_c run {p} (orphaned by the killed master) still ran; killed");
        // SAFETY: kill(2) on a process this test started (through the master).
        unsafe {
            libc::kill(p, libc::SIGKILL);
        }
    }
    left
}

// ---------------------------------------------------------------------------
// Builds and their publication
// ---------------------------------------------------------------------------

/// The `publish` field of a build: None for JSON null.
pub fn publish_state(b: &Value) -> Option<String> {
    match b.get("publish") {
        None => panic!("the build JSON has no `publish` key: {b}"),
        Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => panic!("`publish` is neither null nor a string ({other}) in {b}"),
    }
}

/// The `publish_error` field of a build (None for null or absent).
pub fn publish_error(b: &Value) -> Option<String> {
    b.get("publish_error")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Waits until `publish` is "published" (a "failed" seen on the way is
/// reported, since a failed publication is retried, and the wait goes on).
pub fn wait_published(m: &Master, id: u64, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    let mut failures: Vec<String> = Vec::new();
    loop {
        let b = m.build(id);
        match publish_state(&b).as_deref() {
            Some("published") => {
                if !failures.is_empty() {
                    eprintln!("note: build {id} was published after failing: {failures:?}");
                }
                return b;
            }
            Some("failed") => {
                let e = publish_error(&b).unwrap_or_default();
                if failures.last() != Some(&e) {
                    failures.push(e);
                }
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            panic!(
                "build {id}: not published within {timeout:?} (publication errors seen: \
                 {failures:?}); last seen: {b}\n{}",
                tail_lines(&m.stderr_text(), 40)
            );
        }
        thread::sleep(POLL);
    }
}

/// Submits `pkg` to `target` (`--wait`), asserts it succeeded, waits for its
/// publication and returns the build.
pub fn build_and_publish(m: &Master, pkg: &RPkg, target: &str, extra: &[&str]) -> Value {
    let srpm = pkg.build_srpm(&m.scratch);
    let mut args = vec!["--target", target];
    args.extend_from_slice(extra);
    let b = m.submit_wait(&srpm, &args);
    wait_published(m, build_id(&b), PUBLISH_TIMEOUT)
}

/// The only artifact of kind `kind` of a build.
pub fn only_artifact(b: &Value, kind: &str) -> Value {
    let v = artifacts_of_kind(b, kind);
    assert_eq!(v.len(), 1, "expected exactly one `{kind}` artifact in {b}");
    v[0].clone()
}

// ---------------------------------------------------------------------------
// What is published
// ---------------------------------------------------------------------------

/// One entry of `kiln repo ls T --json`.
#[derive(Clone, Debug)]
pub struct Pub {
    pub name: String,
    pub epoch: String,
    pub version: String,
    pub release: String,
    pub arch: String,
    pub repo: String,
    pub file: String,
    pub raw: Value,
}

impl Pub {
    pub fn evr(&self) -> String {
        format!("{}-{}", self.version, self.release)
    }

    /// The file name alone.
    pub fn basename(&self) -> String {
        Path::new(&self.file)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

fn field(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Null) | None if key == "epoch" => "0".to_string(),
        other => panic!("`kiln repo ls --json`: `{key}` is missing or odd ({other:?}) in {v}"),
    }
}

/// `kiln repo ls T --json`.
pub fn repo_ls(m: &Master, target: &str) -> Vec<Pub> {
    let v = m.cli_json(&["repo", "ls", target, "--json"]);
    let Value::Array(a) = v else {
        panic!("`kiln repo ls {target} --json` is not an array: {v}");
    };
    a.into_iter()
        .map(|e| {
            let mut epoch = field(&e, "epoch");
            if epoch.is_empty() {
                epoch = "0".to_string();
            }
            Pub {
                name: field(&e, "name"),
                epoch,
                version: field(&e, "version"),
                release: field(&e, "release"),
                arch: field(&e, "arch"),
                repo: field(&e, "repo"),
                file: field(&e, "file"),
                raw: e,
            }
        })
        .collect()
}

/// The entries of one package (by name).
pub fn entries_of(ls: &[Pub], name: &str) -> Vec<Pub> {
    ls.iter().filter(|p| p.name == name).cloned().collect()
}

/// `DATA/repos/<target>/<repo>/`.
pub fn repo_dir(m: &Master, target: &str, repo: &str) -> PathBuf {
    m.data.join("repos").join(target).join(repo)
}

/// Where the file of a `repo ls` entry is on disk: `file` is taken as
/// relative to the repository directory (`DATA/repos/T/<repo>/`), or to
/// `DATA/repos/T/`, or as an absolute path.
pub fn published_path(m: &Master, target: &str, p: &Pub) -> PathBuf {
    let f = Path::new(&p.file);
    if f.is_absolute() {
        assert!(
            f.is_file(),
            "`repo ls` names {} which is not a file",
            p.file
        );
        return f.to_path_buf();
    }
    let candidates = [
        repo_dir(m, target, &p.repo).join(f),
        m.data.join("repos").join(target).join(f),
    ];
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "`kiln repo ls {target}` lists {} in repo {} but no such file is on disk (looked at \
         {candidates:?}); files of the target: {:?}",
        p.file,
        p.repo,
        files_under(&m.data.join("repos").join(target))
    );
}

/// The path of a published file relative to its repository directory, as
/// it is served under `http://API/repos/T/<repo>/`.
pub fn served_rel(m: &Master, target: &str, p: &Pub) -> String {
    let path = published_path(m, target, p);
    let dir = repo_dir(m, target, &p.repo);
    path.strip_prefix(&dir)
        .unwrap_or_else(|_| panic!("{} is not under {}", path.display(), dir.display()))
        .to_string_lossy()
        .into_owned()
}

/// Every file under `dir` (recursively, hidden ones included) whose name
/// satisfies `pred`, as full paths.
pub fn files_named(dir: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|rel| {
            rel.file_name()
                .map(|n| pred(&n.to_string_lossy()))
                .unwrap_or(false)
        })
        .map(|rel| dir.join(rel))
        .collect()
}

// ---------------------------------------------------------------------------
// Repository metadata as createrepo_c wrote it
// ---------------------------------------------------------------------------

/// One `<package>` of primary.xml.
#[derive(Clone, Debug)]
pub struct PrimaryPkg {
    pub name: String,
    pub arch: String,
    pub epoch: String,
    pub ver: String,
    pub rel: String,
    pub href: String,
    pub checksum_type: String,
    pub checksum: String,
    pub size: Option<u64>,
}

impl PrimaryPkg {
    pub fn evr(&self) -> String {
        format!("{}-{}", self.ver, self.rel)
    }
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in the text of one tag.
fn attr(tag: &str, name: &str) -> Option<String> {
    for q in ['"', '\''] {
        let pat = format!(" {name}={q}");
        if let Some(i) = tag.find(&pat) {
            let rest = &tag[i + pat.len()..];
            if let Some(j) = rest.find(q) {
                return Some(xml_unescape(&rest[..j]));
            }
        }
    }
    None
}

/// The text of the first `<tag …>` (up to its `>`) in `s`.
fn first_tag<'a>(s: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}");
    let mut from = 0;
    while let Some(i) = s[from..].find(&open) {
        let start = from + i;
        let after = s[start + open.len()..].chars().next();
        if matches!(
            after,
            Some(' ') | Some('>') | Some('/') | Some('\n') | Some('\t')
        ) {
            let end = s[start..].find('>').map(|j| start + j + 1)?;
            return Some(&s[start..end]);
        }
        from = start + open.len();
    }
    None
}

/// The text between `<tag…>` and `</tag>` (first occurrence).
fn element_text(s: &str, tag: &str) -> Option<String> {
    let t = first_tag(s, tag)?;
    let start = s.find(t)? + t.len();
    let end = s[start..].find(&format!("</{tag}>"))? + start;
    Some(xml_unescape(s[start..end].trim()))
}

/// Reads a file, decompressing it by its extension with the host's tool.
pub fn read_maybe_compressed(path: &Path) -> String {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".gz") {
        Some("gzip")
    } else if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".bz2") {
        Some("bzip2")
    } else {
        None
    };
    match tool {
        None => fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())),
        Some(t) => {
            require_repo_tool(t);
            let mut cmd = Command::new(t);
            cmd.arg("-dc").arg(path);
            run_timeout(cmd, CLI_TIMEOUT, &format!("{t} -dc {}", path.display()))
                .assert_ok()
                .stdout
        }
    }
}

/// `(type, href)` of every `<data>` of `repodata/repomd.xml` in `repo`.
pub fn repomd_entries(repo: &Path) -> Vec<(String, String)> {
    let path = repo.join("repodata").join("repomd.xml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "no {} ({e}); the repository has: {:?}",
            path.display(),
            files_under(repo)
        )
    });
    let mut out = Vec::new();
    for block in text.split("<data ").skip(1) {
        let head = block.split('>').next().unwrap_or("");
        let ty = attr(&format!(" {head}"), "type").unwrap_or_default();
        let href = first_tag(block, "location")
            .and_then(|t| attr(t, "href"))
            .unwrap_or_else(|| panic!("a <data> without <location href> in {}", path.display()));
        out.push((ty, href));
    }
    out
}

/// The packages of a repository's primary metadata.
pub fn primary_pkgs(repo: &Path) -> Vec<PrimaryPkg> {
    let entries = repomd_entries(repo);
    let (_, href) = entries
        .iter()
        .find(|(t, _)| t == "primary")
        .unwrap_or_else(|| panic!("no primary in {}/repodata/repomd.xml", repo.display()));
    let xml = read_maybe_compressed(&repo.join(href));
    let mut pkgs = Vec::new();
    for block in xml.split("<package ").skip(1) {
        let block = block.split("</package>").next().unwrap_or(block);
        let version = first_tag(block, "version").unwrap_or("");
        let checksum = first_tag(block, "checksum").unwrap_or("");
        let location = first_tag(block, "location").unwrap_or_else(|| {
            panic!(
                "a package without <location> in primary of {}",
                repo.display()
            )
        });
        if attr(location, "xml:base").is_some() {
            eprintln!(
                "note: primary of {} uses xml:base: {location}",
                repo.display()
            );
        }
        pkgs.push(PrimaryPkg {
            name: element_text(block, "name").unwrap_or_default(),
            arch: element_text(block, "arch").unwrap_or_default(),
            epoch: attr(version, "epoch").unwrap_or_else(|| "0".into()),
            ver: attr(version, "ver").unwrap_or_default(),
            rel: attr(version, "rel").unwrap_or_default(),
            href: attr(location, "href").unwrap_or_default(),
            checksum_type: attr(checksum, "type").unwrap_or_default(),
            checksum: element_text(block, "checksum").unwrap_or_default(),
            size: first_tag(block, "size")
                .and_then(|t| attr(t, "package"))
                .and_then(|s| s.parse().ok()),
        });
    }
    pkgs
}

/// Checks that a repository is whole: repomd.xml is there, every metadata
/// file it names is on disk, every package primary.xml names is on disk
/// once, with the size and sha256 the metadata gives. Returns the packages.
pub fn check_repo_consistent(repo: &Path) -> Vec<PrimaryPkg> {
    for (ty, href) in repomd_entries(repo) {
        assert!(
            repo.join(&href).is_file(),
            "{}/repodata/repomd.xml names {href} ({ty}) which is not on disk",
            repo.display()
        );
    }
    let pkgs = primary_pkgs(repo);
    let mut seen = std::collections::BTreeSet::new();
    for p in &pkgs {
        assert!(
            seen.insert(p.href.clone()),
            "primary of {} names {} twice",
            repo.display(),
            p.href
        );
        let path = repo.join(&p.href);
        let md = fs::metadata(&path).unwrap_or_else(|e| {
            panic!(
                "primary of {} names {} ({}-{}) which is not on disk ({e}); files: {:?}",
                repo.display(),
                p.href,
                p.name,
                p.evr(),
                files_under(repo)
            )
        });
        if let Some(size) = p.size {
            assert_eq!(
                md.len(),
                size,
                "{}: size on disk differs from the metadata",
                path.display()
            );
        }
        if p.checksum_type == "sha256" {
            assert_eq!(
                sha256_file(&path),
                p.checksum.to_lowercase(),
                "{}: sha256 on disk differs from the metadata",
                path.display()
            );
        }
    }
    pkgs
}

/// The primary entries of one package (by name).
pub fn primary_of<'a>(pkgs: &'a [PrimaryPkg], name: &str) -> Vec<&'a PrimaryPkg> {
    pkgs.iter().filter(|p| p.name == name).collect()
}

// ---------------------------------------------------------------------------
// HTTP, with the host's curl
// ---------------------------------------------------------------------------

pub struct Http {
    pub status: u16,
    /// Header names lower-cased, in order, of the final response.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Http {
    pub fn header(&self, name: &str) -> Option<String> {
        let name = name.to_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }
}

/// GET `url` with extra request headers (`"Name: value"`).
pub fn http_get(url: &str, headers: &[&str], scratch: &Path) -> Http {
    let curl = require_repo_tool("curl");
    let u = unique();
    let body = scratch.join(format!("http-body-{u}"));
    let head = scratch.join(format!("http-head-{u}"));
    let mut cmd = Command::new(curl);
    cmd.arg("-sS")
        .arg("--max-time")
        .arg("30")
        .arg("-o")
        .arg(&body)
        .arg("-D")
        .arg(&head)
        .arg("-w")
        .arg("%{http_code}");
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    cmd.arg(url);
    let out = run_timeout(cmd, Duration::from_secs(40), &format!("curl {url}")).assert_ok();
    let status: u16 = out
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl printed no status for {url}: {out:?}"));
    let head_text = fs::read_to_string(&head).unwrap_or_default();
    let block = head_text
        .replace("\r\n", "\n")
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or("")
        .to_string();
    let headers = block
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let body_bytes = fs::read(&body).unwrap_or_default();
    let _ = fs::remove_file(&body);
    let _ = fs::remove_file(&head);
    Http {
        status,
        headers,
        body: body_bytes,
    }
}

/// GET `url`, asserting 200, and returns the body.
pub fn http_get_ok(url: &str, scratch: &Path) -> Vec<u8> {
    let r = http_get(url, &[], scratch);
    assert_eq!(r.status, 200, "GET {url} answered {}", r.status);
    r.body
}

// ---------------------------------------------------------------------------
// dnf in an installroot, offline, against the master's URL
// ---------------------------------------------------------------------------

/// What a `dnf install` run did.
pub struct DnfRun {
    pub root: PathBuf,
    pub cache: PathBuf,
    pub repo_file: String,
    pub out: Out,
}

impl DnfRun {
    /// Panics, with the .repo file and dnf's output, unless dnf exited 0.
    pub fn assert_ok(&self) {
        assert!(
            self.out.success(),
            "dnf install failed (exit {:?}) with the .repo file\n{}\n---- dnf stdout ----\n{}\n\
             ---- dnf stderr ----\n{}",
            self.out.status.code(),
            self.repo_file,
            self.out.stdout,
            self.out.stderr
        );
    }
}

/// The section names (`[id]`) of a .repo file.
pub fn repo_ids(repo_file: &str) -> Vec<String> {
    repo_file
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l[1..l.len() - 1].trim().to_string())
        .collect()
}

/// `kiln repo file T`, checked to hold a `[kiln-T]` section.
pub fn repo_file(m: &Master, target: &str) -> String {
    let text = m.cli(&["repo", "file", target]).assert_ok().stdout;
    let id = format!("kiln-{target}");
    assert!(
        repo_ids(&text).contains(&id),
        "`kiln repo file {target}` has no [{id}] section:\n{text}"
    );
    text
}

/// Installs `pkgs` with dnf into a new, empty installroot under `scratch`,
/// using `repo_file` as is (written into the reposdir) and enabling only
/// its `[kiln-T]` repository. dnf's main config is Fedora's usual one
/// (gpgcheck=1), so a repository that does not sign must say gpgcheck=0.
pub fn dnf_install(scratch: &Path, target: &str, repo_file: &str, pkgs: &[&str]) -> DnfRun {
    let dnf = require_repo_tool("dnf");
    require_repo_tool("rpm");
    let base = scratch.join(format!("dnf-{}", unique()));
    let root = base.join("root");
    let reposdir = base.join("repos.d");
    let cache = base.join("cache");
    let home = base.join("home");
    for d in [&root, &reposdir, &cache, &home] {
        fs::create_dir_all(d).unwrap();
    }
    // Debian's rpm keeps its database under ~/.rpmdb; dnf in an
    // installroot must use the usual place inside it.
    fs::write(home.join(".rpmmacros"), "%_dbpath /var/lib/rpm\n").unwrap();
    fs::write(reposdir.join(format!("kiln-{target}.repo")), repo_file).unwrap();
    let conf = base.join("dnf.conf");
    fs::write(
        &conf,
        "[main]\ngpgcheck=1\ninstallonly_limit=3\nclean_requirements_on_remove=True\n\
         best=False\nskip_if_unavailable=False\n",
    )
    .unwrap();
    let mut cmd = Command::new(dnf);
    cmd.arg("-y")
        .arg("--installroot")
        .arg(&root)
        .arg("--releasever")
        .arg("9")
        .arg("--config")
        .arg(&conf)
        .arg(format!("--setopt=reposdir={}", reposdir.display()))
        .arg(format!("--setopt=cachedir={}", cache.display()))
        .arg("--setopt=install_weak_deps=False")
        .arg("--disablerepo=*")
        .arg(format!("--enablerepo=kiln-{target}"))
        .arg("install")
        .args(pkgs)
        .env("HOME", &home);
    let out = run_timeout(cmd, DNF_TIMEOUT, &format!("dnf install {}", pkgs.join(" ")));
    // dnf starts a gpg-agent for a repository's keyring (repo_gpgcheck).
    kill_gpg_agents_under(&cache);
    DnfRun {
        root,
        cache,
        repo_file: repo_file.to_string(),
        out,
    }
}

/// `rpm --root ROOT -q ARGS` with the installroot's database: stdout
/// (trimmed) when it exits 0, None otherwise.
pub fn rpm_q_root(root: &Path, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new(require_repo_tool("rpm"));
    cmd.arg("--root")
        .arg(root)
        .arg("--define")
        .arg("_dbpath /var/lib/rpm")
        .arg("-q")
        .args(args);
    let out = run_timeout(cmd, CLI_TIMEOUT, "rpm --root -q");
    out.success().then(|| out.stdout.trim().to_string())
}

// ---------------------------------------------------------------------------
// OpenPGP with the host's gpg
// ---------------------------------------------------------------------------

/// SIGTERMs every gpg-agent whose command line names a path under `dir`
/// (the agents gpg and dnf start for the test's own home directories).
pub fn kill_gpg_agents_under(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let Ok(rd) = fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_agent = args
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).starts_with("gpg-agent"))
            .unwrap_or(false);
        if is_agent && args.iter().skip(1).any(|a| a.starts_with(&prefix)) {
            // SAFETY: kill(2) on an agent started for this test's directory.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
}

/// `gpg --homedir HOME --batch ARGS`.
pub fn gpg(home: &Path, args: &[&str]) -> Out {
    let mut cmd = Command::new(require_repo_tool("gpg"));
    cmd.arg("--homedir").arg(home).arg("--batch").args(args);
    run_timeout(cmd, CLI_TIMEOUT, &format!("gpg {}", args.join(" ")))
}

/// A new home directory for gpg (mode 0700).
pub fn gpg_home(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let h = dir.join(format!("gnupg-{}", unique()));
    fs::create_dir_all(&h).unwrap();
    fs::set_permissions(&h, fs::Permissions::from_mode(0o700)).unwrap();
    h
}

/// The fingerprints (`fpr` records) of the primary keys in `--with-colons`
/// output.
pub fn colon_fprs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut want = false;
    for l in text.lines() {
        let f: Vec<&str> = l.split(':').collect();
        match f[0] {
            "pub" | "sec" => want = true,
            "sub" | "ssb" => want = false,
            "fpr" if want => {
                out.push(f.get(9).unwrap_or(&"").to_uppercase());
                want = false;
            }
            _ => {}
        }
    }
    out
}

/// A passphrase-less RSA signing key made with gpg, its secret part
/// exported armored to a 0600 file. Agents are stopped on drop.
pub struct GpgKey {
    pub home: PathBuf,
    pub fpr: String,
    pub secret_file: PathBuf,
    pub public_file: PathBuf,
}

impl GpgKey {
    pub fn generate(dir: &Path) -> GpgKey {
        use std::os::unix::fs::PermissionsExt;
        let home = gpg_home(dir);
        gpg(
            &home,
            &[
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--quick-gen-key",
                "Kiln Repo Test <kiln-repo-test@example.invalid>",
                "rsa3072",
                "sign",
                "never",
            ],
        )
        .assert_ok();
        let listing = gpg(&home, &["--with-colons", "--list-secret-keys"]).assert_ok();
        let fprs = colon_fprs(&listing.stdout);
        assert_eq!(fprs.len(), 1, "one secret key expected: {}", listing.stdout);
        let fpr = fprs[0].clone();
        let secret = gpg(
            &home,
            &[
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--armor",
                "--export-secret-keys",
                &fpr,
            ],
        )
        .assert_ok()
        .stdout;
        assert!(
            secret.contains("BEGIN PGP PRIVATE KEY BLOCK"),
            "no armored secret key exported: {secret}"
        );
        let secret_file = dir.join("kiln-signing-key.asc");
        fs::write(&secret_file, &secret).unwrap();
        fs::set_permissions(&secret_file, fs::Permissions::from_mode(0o600)).unwrap();
        let public = gpg(&home, &["--armor", "--export", &fpr])
            .assert_ok()
            .stdout;
        let public_file = dir.join("kiln-signing-key.pub.asc");
        fs::write(&public_file, &public).unwrap();
        GpgKey {
            home,
            fpr,
            secret_file,
            public_file,
        }
    }

    /// The short key id rpm prints (last 8 hex digits, lower case).
    pub fn short_id(&self) -> String {
        self.fpr[self.fpr.len() - 8..].to_lowercase()
    }
}

impl Drop for GpgKey {
    fn drop(&mut self) {
        kill_gpg_agents_under(&self.home);
    }
}

/// Verifies a detached signature with gpg against only `pubkey` (in a
/// fresh keyring). Returns gpg's status lines on success; panics otherwise.
pub fn gpg_verify(pubkey: &Path, sig: &Path, data: &Path, scratch: &Path) -> String {
    let home = gpg_home(scratch);
    let imp = gpg(&home, &["--import", pubkey.to_str().unwrap()]);
    let ver = gpg(
        &home,
        &[
            "--status-fd",
            "1",
            "--verify",
            sig.to_str().unwrap(),
            data.to_str().unwrap(),
        ],
    );
    kill_gpg_agents_under(&home);
    imp.assert_ok();
    assert!(
        ver.success() && ver.stdout.contains("GOODSIG"),
        "gpg --verify {} {} against {} failed (exit {:?}):\n{}\n{}",
        sig.display(),
        data.display(),
        pubkey.display(),
        ver.status.code(),
        ver.stdout,
        ver.stderr
    );
    ver.stdout
}
