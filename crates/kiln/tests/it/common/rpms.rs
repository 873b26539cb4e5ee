//! Source RPMs made in the test with the host's real `rpmbuild -bs`, from
//! one spec generator (`Pkg`), and packages read with the host's `rpm`.

use super::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Debug)]
enum PkgKind {
    /// `BuildArch: noarch`, installs a text file, requires nothing (dnf in
    /// an empty installroot has nothing that provides a base system).
    Noarch,
    /// Compiles a tiny hello.c with gcc in `%build`.
    C,
}

/// A package to make a source RPM of. Its `%build` echoes
/// [`Pkg::begin_marker`], runs what the test asked for, and echoes
/// [`Pkg::end_marker`]; a noarch package installs [`Pkg::data_file`]
/// holding [`Pkg::data_text`], a C package `/usr/bin/<name>`.
#[derive(Clone, Debug)]
pub struct Pkg {
    pub name: String,
    pub version: String,
    pub release: String,
    kind: PkgKind,
    sleep_secs: u32,
    exclusive_arch: Option<String>,
    /// Written into the installed file, so two builds of one EVR differ.
    note: String,
    /// More `%build` lines (run under `sh -e`, as rpmbuild runs them).
    build: String,
    /// Random bytes shipped as a source and installed as is.
    big_source: usize,
    /// Random bytes `%install` writes, in an uncompressed payload.
    big_payload: u64,
    /// `BuildRequires:` lines.
    requires: Vec<String>,
    /// A noarch subpackage (name, version) installing `/usr/include/<name>.h`.
    devel: Option<(String, String)>,
    /// `Provides:` lines of the main package.
    provides: Vec<String>,
}

/// Where `big_source` and `big_payload` install their bytes.
const BLOB: &str = "/usr/share/kiln-test/blob.bin";

impl Pkg {
    /// A noarch package `name` 1.0-1.
    pub fn noarch(name: &str) -> Pkg {
        Pkg {
            name: name.to_string(),
            version: "1.0".to_string(),
            release: "1".to_string(),
            kind: PkgKind::Noarch,
            sleep_secs: 0,
            exclusive_arch: None,
            note: String::new(),
            build: String::new(),
            big_source: 0,
            big_payload: 0,
            requires: Vec::new(),
            devel: None,
            provides: Vec::new(),
        }
    }

    /// A C package `name` 1.0-1.
    pub fn c(name: &str) -> Pkg {
        Pkg {
            kind: PkgKind::C,
            ..Pkg::noarch(name)
        }
    }

    pub fn version(mut self, v: &str) -> Pkg {
        self.version = v.to_string();
        self
    }

    /// The `Release:` value as written in the spec (may use `%{?dist}`).
    pub fn release(mut self, r: &str) -> Pkg {
        self.release = r.to_string();
        self
    }

    pub fn exclusive_arch(mut self, a: &str) -> Pkg {
        self.exclusive_arch = Some(a.to_string());
        self
    }

    /// `%build` sleeps this long (to hold a worker slot).
    pub fn sleep(mut self, secs: u32) -> Pkg {
        self.sleep_secs = secs;
        self
    }

    /// A note in the installed file: a rebuild of the same EVR differs.
    pub fn note(mut self, note: &str) -> Pkg {
        self.note = note.to_string();
        self
    }

    /// `%build` runs `script` (a build's own attack, probe or trick).
    /// Adds a `Provides:` line to the main package (spec text: macros are
    /// expanded where the spec is read).
    pub fn provides(mut self, what: &str) -> Pkg {
        self.provides.push(what.to_string());
        self
    }

    /// Adds a `BuildRequires:` line.
    pub fn build_requires(mut self, req: &str) -> Pkg {
        self.requires.push(req.to_string());
        self
    }

    /// Adds a subpackage `name` that installs `/usr/include/<name>.h`
    /// (a C header: `#define GREET_VERSION "<version>"`) and provides
    /// `name = version`.
    pub fn devel(mut self, name: &str) -> Pkg {
        self.devel = Some((name.to_string(), self.version.clone()));
        self
    }

    pub fn build_script(mut self, script: &str) -> Pkg {
        self.build = script.to_string();
        self
    }

    /// Ships `bytes` random bytes as a source, installed as is: the SRPM
    /// (and the rpm) is about that big.
    pub fn big_source(mut self, bytes: usize) -> Pkg {
        self.big_source = bytes;
        self
    }

    /// `%install` writes `bytes` random bytes, stored uncompressed: the rpm
    /// is about that big, the SRPM small.
    pub fn big_payload(mut self, bytes: u64) -> Pkg {
        self.big_payload = bytes;
        self
    }

    /// `VERSION-RELEASE`.
    pub fn evr(&self) -> String {
        format!("{}-{}", self.version, self.release)
    }

    /// The line `%build` echoes before it does anything else.
    pub fn begin_marker(&self) -> String {
        format!("KILN-BUILD-BEGIN-{}", self.name)
    }

    /// The line `%build` echoes when it is done.
    pub fn end_marker(&self) -> String {
        format!("KILN-BUILD-END-{}", self.name)
    }

    /// What the C package's program prints.
    pub fn greeting(&self) -> String {
        format!("hello from {}", self.name)
    }

    /// The file the noarch package installs.
    pub fn data_file(&self) -> String {
        format!("/usr/share/kiln-test/{}.txt", self.name)
    }

    /// What that file holds.
    pub fn data_text(&self) -> String {
        format!("{} {} {}", self.name, self.evr(), self.note)
            .trim_end()
            .to_string()
    }

    pub fn spec_text(&self) -> String {
        let n = &self.name;
        let c = matches!(self.kind, PkgKind::C);
        let mut s = format!(
            "Name: {n}\nVersion: {}\nRelease: {}\n",
            self.version, self.release
        );
        s += &format!("Summary: Kiln integration test package {n}\nLicense: MIT\n");
        if c {
            s += &format!("Source0: {n}-{}.tar.gz\n", self.version);
            s += "%global debug_package %{nil}\n";
        } else {
            s += "BuildArch: noarch\nAutoReqProv: no\n";
        }
        if self.big_source > 0 {
            s += "Source1: blob.bin\n";
        }
        if self.big_payload > 0 {
            s += "%global _binary_payload w0.ufdio\n";
        }
        if let Some(a) = &self.exclusive_arch {
            s += &format!("ExclusiveArch: {a}\n");
        }
        for r in &self.requires {
            s += &format!("BuildRequires: {r}\n");
        }
        for p in &self.provides {
            s += &format!("Provides: {p}\n");
        }
        s += "\n%description\nA package made by the Kiln integration tests.\n";
        if let Some((d, _)) = &self.devel {
            s += &format!(
                "\n%package -n {d}\nSummary: header of {n}\nBuildArch: noarch\n\
                 %description -n {d}\nThe header.\n"
            );
        }
        s += "\n%prep\n";
        if c {
            s += "%setup -q\n";
        }
        s += &format!("\n%build\necho {}\n", self.begin_marker());
        if self.sleep_secs > 0 {
            s += &format!("sleep {}\n", self.sleep_secs);
        }
        if !self.build.is_empty() {
            s += &self.build;
            s += "\n";
        }
        if c {
            s += &format!("gcc -O2 -o {n} hello.c\n");
        }
        s += &format!("echo {}\n", self.end_marker());
        s += "\n%install\n";
        let mut files = Vec::new();
        if c {
            s += "mkdir -p %{buildroot}/usr/bin\n";
            s += &format!("install -m 0755 {n} %{{buildroot}}/usr/bin/{n}\n");
            files.push(format!("/usr/bin/{n}"));
        } else {
            s += "mkdir -p %{buildroot}/usr/share/kiln-test\n";
            s += &format!(
                "echo '{}' > %{{buildroot}}{}\n",
                self.data_text(),
                self.data_file()
            );
            files.push(self.data_file());
        }
        if self.big_source > 0 {
            s += &format!("install -D -m 0644 %{{SOURCE1}} %{{buildroot}}{BLOB}\n");
            files.push(BLOB.to_string());
        } else if self.big_payload > 0 {
            s += &format!(
                "mkdir -p %{{buildroot}}/usr/share/kiln-test\n\
                 head -c {} /dev/urandom > %{{buildroot}}{BLOB}\n",
                self.big_payload
            );
            files.push(BLOB.to_string());
        }
        if let Some((d, v)) = &self.devel {
            s += &format!(
                "mkdir -p %{{buildroot}}/usr/include\necho '#define GREET_VERSION \"{v}\"' > %{{buildroot}}/usr/include/{d}.h\n"
            );
        }
        s += &format!("\n%files\n{}\n", files.join("\n"));
        if let Some((d, _)) = &self.devel {
            s += &format!("\n%files -n {d}\n/usr/include/{d}.h\n");
        }
        s
    }

    /// Makes the source RPM with `rpmbuild -bs` under `dir` and returns its path.
    pub fn build_srpm(&self, dir: &Path) -> PathBuf {
        require_tool("rpmbuild");
        // Not the release: it may hold a macro (`%{?dist}`).
        let work = dir.join(format!("pkg-{}-{}-{}", self.name, self.version, unique()));
        let top = work.join("rpmbuild");
        let sources = top.join("SOURCES");
        fs::create_dir_all(&sources).unwrap();
        if let PkgKind::C = self.kind {
            let tar = require_tool("tar");
            let base = format!("{}-{}", self.name, self.version);
            let src = work.join("src").join(&base);
            fs::create_dir_all(&src).unwrap();
            fs::write(
                src.join("hello.c"),
                format!(
                    "#include <stdio.h>\nint main(void) {{ puts(\"{}\"); return 0; }}\n",
                    self.greeting()
                ),
            )
            .unwrap();
            let mut tar = Command::new(tar);
            tar.arg("-C")
                .arg(work.join("src"))
                .arg("-czf")
                .arg(sources.join(format!("{base}.tar.gz")))
                .arg(&base);
            run_timeout(tar, CLI_TIMEOUT, "tar -czf").assert_ok();
        }
        if self.big_source > 0 {
            fs::write(sources.join("blob.bin"), random_bytes(self.big_source)).unwrap();
        }
        let spec = work.join(format!("{}.spec", self.name));
        fs::write(&spec, self.spec_text()).unwrap();
        let mut cmd = Command::new("rpmbuild");
        cmd.arg("-bs")
            .arg("--define")
            .arg(format!("_topdir {}", top.display()))
            .arg("--define")
            .arg("_dbpath /var/lib/rpm")
            .arg(&spec);
        let out = run_timeout(cmd, CLI_TIMEOUT, "rpmbuild -bs").assert_ok();
        let wrote = out
            .stdout
            .lines()
            .chain(out.stderr.lines())
            .find_map(|l| l.strip_prefix("Wrote:"))
            .map(|p| PathBuf::from(p.trim()))
            .unwrap_or_else(|| panic!("rpmbuild -bs printed no `Wrote:` line: {out:?}"));
        assert!(wrote.is_file(), "{} was not written", wrote.display());
        wrote
    }
}

// ---------------------------------------------------------------------------
// RPM inspection with the host's rpm
// ---------------------------------------------------------------------------

/// `rpm ARGS`, whatever it did.
pub fn rpm(args: &[&str]) -> Out {
    let mut cmd = Command::new(require_tool("rpm"));
    cmd.args(args);
    run_timeout(cmd, CLI_TIMEOUT, &format!("rpm {}", args.join(" ")))
}

fn path_str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", p.display()))
}

/// `rpm -qp --qf FMT FILE` (stdout, trimmed).
pub fn rpm_query(file: &Path, fmt: &str) -> String {
    rpm(&["-qp", "--qf", fmt, path_str(file)])
        .assert_ok()
        .stdout
        .trim()
        .to_string()
}

/// `rpm -qlp FILE`: the files a package installs.
pub fn rpm_files(file: &Path) -> Vec<String> {
    rpm(&["-qlp", path_str(file)])
        .assert_ok()
        .stdout
        .lines()
        .map(str::to_string)
        .collect()
}

/// Unpacks a binary RPM's files under `dest` with the host's rpm
/// (`rpm -i --root DEST`, its own database inside DEST, no scripts).
pub fn rpm_extract(file: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    rpm(&[
        "--root",
        path_str(dest),
        "--dbpath",
        "/kiln-test-rpmdb",
        "-i",
        "--nodeps",
        "--noscripts",
        "--nosignature",
        "--ignorearch",
        "--ignoreos",
        path_str(file),
    ])
    .assert_ok();
}

/// `rpm --define '_dbpath DB' ARGS`: rpm with its database in `db`
/// (Debian's rpm keeps its own under ~/.rpmdb, so the place is always
/// named).
pub fn rpm_db(db: &Path, args: &[&str]) -> Out {
    let define = format!("_dbpath {}", path_str(db));
    let mut all = vec!["--define", &define];
    all.extend_from_slice(args);
    rpm(&all)
}

/// `rpm --root ROOT -q ARGS` with the installroot's database: stdout
/// (trimmed) when it exits 0, None otherwise.
pub fn rpm_q_root(root: &Path, args: &[&str]) -> Option<String> {
    let mut all = vec!["--root", path_str(root), "-q"];
    all.extend_from_slice(args);
    let out = rpm_db(Path::new("/var/lib/rpm"), &all);
    out.success().then(|| out.stdout.trim().to_string())
}
