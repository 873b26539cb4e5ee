//! Images (issue 12), the worker's image builder through `kiln image
//! build-local`: dnf --installroot from repositories served over HTTP (the
//! test base repository made from this machine's files, and a repository
//! of fixture packages made here), the recipe's files, post and test
//! commands in bubblewrap, every format made without mounting anything and
//! read back with the tools that read them without mounting (`debugfs`,
//! `unsquashfs -l`, `qemu-img`, `tar`, `cpio`), the manifest against the
//! image's own rpm database, reproducibility, and the boot test under qemu
//! (TCG) with a Debian kernel and a static busybox `/init`.

use crate::common::hostbase::{self, HttpServer};
use crate::common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The longest an image build may take here.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
pub(crate) const BOOT_MARKER: &str = "KILN-BOOT-OK";

/// The repositories the images come from, served for the whole run.
pub(crate) struct Repos {
    pub(crate) base: HttpServer,
    pub(crate) fixtures: HttpServer,
    /// The fixture repository's directory (its rpm files).
    fixtures_dir: PathBuf,
    base_dir: PathBuf,
}

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("images")
}

pub(crate) fn repos() -> &'static Repos {
    static R: OnceLock<Repos> = OnceLock::new();
    R.get_or_init(|| {
        for t in [
            "rpmbuild",
            "createrepo_c",
            "dnf",
            "bwrap",
            "zstd",
            "tar",
            "cpio",
        ] {
            require_tool(t);
        }
        let hb = hostbase::build_host_base_repo(
            &Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostbase"),
        );
        let fixtures_dir = fixture_repo();
        Repos {
            base: hostbase::serve_dir(&hb.repo),
            fixtures: hostbase::serve_dir(&fixtures_dir),
            fixtures_dir,
            base_dir: hb.repo.clone(),
        }
    })
}

/// One fixture package: files (path in the package, host source, mode).
struct Fixture {
    name: &'static str,
    files: Vec<(String, PathBuf, u32)>,
    /// Directories the package owns.
    dirs: Vec<&'static str>,
    /// `ln -s TARGET PATH` in the package.
    links: Vec<(&'static str, &'static str)>,
}

/// rpmbuild -bb of a package holding `f`'s files, no dependencies.
fn build_fixture(top: &Path, f: &Fixture, out: &Path) {
    let mut install = String::from("%install\n");
    let mut files = String::from("%files\n");
    for d in &f.dirs {
        install += &format!("mkdir -p %{{buildroot}}{d}\n");
        files += &format!("%dir {d}\n");
    }
    for (dest, src, mode) in &f.files {
        let parent = Path::new(dest).parent().unwrap().display().to_string();
        install += &format!(
            "mkdir -p %{{buildroot}}{parent}\ninstall -m {mode:o} {} %{{buildroot}}{dest}\n",
            src.display()
        );
        files += &format!("{dest}\n");
    }
    for (target, path) in &f.links {
        let parent = Path::new(path).parent().unwrap().display().to_string();
        install +=
            &format!("mkdir -p %{{buildroot}}{parent}\nln -s {target} %{{buildroot}}{path}\n");
        files += &format!("{path}\n");
    }
    let spec = format!(
        "Name: {name}\nVersion: 1\nRelease: 1\nSummary: image test fixture\nLicense: MIT\n\
         BuildArch: noarch\nAutoReqProv: no\n%description\nfixture\n%prep\n%build\n{install}{files}",
        name = f.name
    );
    let spec_path = top.join(format!("{}.spec", f.name));
    std::fs::write(&spec_path, spec).unwrap();
    let mut cmd = Command::new("rpmbuild");
    cmd.arg("-bb")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .args([
            "--define",
            "_binary_payload w.ufdio",
            "--define",
            "__os_install_post %{nil}",
            "--define",
            "__arch_install_post %{nil}",
            "--define",
            "_build_id_links none",
            "--define",
            "debug_package %{nil}",
            "--define",
            "_binaries_in_noarch_packages_terminate_build 0",
            "--define",
            "source_date_epoch_from_changelog 0",
            "--define",
            "use_source_date_epoch_as_buildtime 1",
            "--nodeps",
        ])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .arg(&spec_path);
    run_timeout(cmd, Duration::from_secs(120), "rpmbuild -bb").assert_ok();
    for e in std::fs::read_dir(top.join("RPMS/noarch")).unwrap() {
        let e = e.unwrap();
        std::fs::rename(e.path(), out.join(e.file_name())).unwrap();
    }
}

/// The test's own packages: `kiln-img-hello` (a script), and for the boot
/// test `kiln-img-kernel` (a Debian kernel at /boot/vmlinuz),
/// `kiln-img-init` (static busybox and an /init that prints the marker and
/// powers off) and `kiln-img-hang` (an /init that never does).
fn fixture_repo() -> PathBuf {
    let dir = cache_dir();
    let repo = dir.join("fixtures-repo");
    let stamp = dir.join("fixtures.stamp");
    let recipe_stamp = "fixtures 1";
    if repo.join("repodata/repomd.xml").is_file()
        && std::fs::read_to_string(&stamp).ok().as_deref() == Some(recipe_stamp)
    {
        return repo;
    }
    let _ = std::fs::remove_dir_all(&repo);
    std::fs::create_dir_all(&repo).unwrap();
    let top = dir.join("fixtures-top");
    let _ = std::fs::remove_dir_all(&top);
    let src = top.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let write = |name: &str, text: &str| {
        let p = src.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let hello = write("kiln-hello", "#!/bin/sh\necho hello from the image\n");
    let busybox = busybox();
    let kernel = kernel();
    let init = write(
        "init",
        &format!("#!/bin/busybox sh\n/bin/busybox echo {BOOT_MARKER}\n/bin/busybox poweroff -f\n"),
    );
    let hang = write(
        "init-hang",
        "#!/bin/busybox sh\n/bin/busybox echo still-booting\n/bin/busybox sleep 100000\n",
    );
    let fixtures = [
        Fixture {
            name: "kiln-img-hello",
            files: vec![("/usr/bin/kiln-hello".into(), hello, 0o755)],
            dirs: vec![],
            links: vec![],
        },
        Fixture {
            name: "kiln-img-kernel",
            files: vec![("/boot/vmlinuz".into(), kernel, 0o644)],
            dirs: vec![],
            links: vec![],
        },
        Fixture {
            name: "kiln-img-init",
            files: vec![
                ("/init".into(), init, 0o755),
                ("/bin/busybox".into(), busybox.clone(), 0o755),
            ],
            dirs: vec!["/proc", "/sys", "/dev"],
            links: vec![],
        },
        Fixture {
            name: "kiln-img-hang",
            files: vec![
                ("/init".into(), hang, 0o755),
                ("/bin/busybox".into(), busybox, 0o755),
            ],
            dirs: vec!["/proc", "/sys", "/dev"],
            links: vec![],
        },
    ];
    for f in &fixtures {
        build_fixture(&top, f, &repo);
    }
    let mut cmd = Command::new("createrepo_c");
    cmd.arg("--quiet").arg(&repo);
    run_timeout(cmd, Duration::from_secs(60), "createrepo_c").assert_ok();
    std::fs::write(&stamp, recipe_stamp).unwrap();
    repo
}

/// Debian's static busybox (`busybox-static`).
fn busybox() -> PathBuf {
    let p = PathBuf::from("/bin/busybox");
    let listed = Command::new("dpkg")
        .args(["-L", "busybox-static"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("/bin/busybox"))
        .unwrap_or(false);
    assert!(
        listed && p.is_file(),
        "the boot test needs Debian's busybox-static (/bin/busybox, statically linked): \
         apt-get install busybox-static (scripts/deps.sh)"
    );
    p
}

/// A Debian kernel: /boot/vmlinuz-* of this machine, or the one
/// `linux-image-amd64` depends on, downloaded with `apt-get download` and
/// unpacked with `dpkg-deb -x` (cached under the test's cache directory).
fn kernel() -> PathBuf {
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = cache_dir().join("kernel");
    std::fs::create_dir_all(&dir).unwrap();
    let cached = dir.join("vmlinuz");
    if cached.is_file() {
        return cached;
    }
    let local: Option<PathBuf> = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .find(|p| std::fs::File::open(p).is_ok());
    if let Some(p) = local {
        std::fs::copy(&p, &cached).unwrap();
        return cached;
    }
    for t in ["apt-cache", "apt-get", "dpkg-deb"] {
        require_tool(t);
    }
    let deps = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .unwrap();
    let deps = String::from_utf8_lossy(&deps.stdout).into_owned();
    let pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .unwrap_or_else(|| {
            panic!(
                "the boot test needs a kernel: no /boot/vmlinuz-* here, and apt-cache names no \
                 linux-image-*-amd64 for linux-image-amd64 (apt-get update?): {deps}"
            )
        })
        .to_string();
    let dl = dir.join("download");
    let _ = std::fs::remove_dir_all(&dl);
    std::fs::create_dir_all(&dl).unwrap();
    let mut cmd = Command::new("apt-get");
    cmd.args(["download", "-q", &pkg]).current_dir(&dl);
    let out = run_timeout(cmd, Duration::from_secs(300), "apt-get download");
    assert!(
        out.success(),
        "the boot test needs a kernel: `apt-get download {pkg}` failed (offline? then this test \
         cannot run here): {}",
        out.stderr
    );
    let deb = files_named(&dl, |n| n.ends_with(".deb"))
        .pop()
        .expect("apt-get download left no .deb");
    let x = dl.join("x");
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(&deb).arg(&x);
    run_timeout(cmd, Duration::from_secs(300), "dpkg-deb -x").assert_ok();
    let vmlinuz = files_named(&x.join("boot"), |n| n.starts_with("vmlinuz-"))
        .pop()
        .expect("the kernel package holds no /boot/vmlinuz-*");
    std::fs::copy(&vmlinuz, &cached).unwrap();
    let _ = std::fs::remove_dir_all(&dl);
    cached
}

/// One `kiln image build-local` run.
struct Built {
    out: PathBuf,
    run: Out,
    took: Duration,
}

impl Built {
    /// Panics with the output and the log unless the build succeeded.
    fn ok(&self) {
        if !self.run.success() {
            let log = std::fs::read_to_string(self.out.join("image.log")).unwrap_or_default();
            panic!(
                "the image build failed: {:?}\n---- image.log ----\n{log}",
                self.run
            );
        }
    }
    fn json(&self) -> Value {
        self.run.json()
    }
    fn file(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.out.join("image.log")).unwrap()
    }
    fn manifest(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.out.join("manifest.json")).unwrap()).unwrap()
    }
}

/// Build `recipe` (TOML) from the base and fixture repositories into a new
/// directory under `dir`.
fn build(dir: &Path, label: &str, recipe: &str, build_id: u64) -> Built {
    let r = repos();
    let recipe_path = dir.join(format!("{label}.toml"));
    std::fs::write(&recipe_path, recipe).unwrap();
    let out = dir.join(format!("out-{label}"));
    let mut cmd = Command::new(kiln());
    cmd.args(["image", "build-local"])
        .arg(&recipe_path)
        .args(["--repo", &r.base.url, "--repo", &r.fixtures.url])
        .arg("--out")
        .arg(&out)
        .arg("--cache")
        .arg(dir.join(format!("cache-{label}")))
        .args([
            "--build-id",
            &build_id.to_string(),
            "--releasever",
            "9",
            "--json",
        ]);
    let t = Instant::now();
    let run = run_timeout(cmd, BUILD_TIMEOUT, "kiln image build-local");
    Built {
        out,
        run,
        took: t.elapsed(),
    }
}

fn tool(args: &[&str]) -> Out {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    run_timeout(cmd, Duration::from_secs(120), &args.join(" "))
}

fn tool_ok(args: &[&str]) -> String {
    tool(args).assert_ok().stdout
}

fn recipe(name: &str, packages: &[&str], formats: &[&str], extra: &str) -> String {
    let q = |v: &[&str]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[[image]]\nname = {name:?}\ntarget = \"el9\"\narches = [\"x86_64\"]\npackages = [{}]\n\
         formats = [{}]\n{extra}",
        q(packages),
        q(formats)
    )
}

const FULL_EXTRA: &str = "size = \"256M\"\n\
    files = { \"/etc/motd\" = \"Built by Kiln\\n\" }\n\
    post = [\"echo post-ran > /etc/kiln-post\"]\n\
    test = [\"rpm -q kiln-img-hello\", \"/usr/bin/kiln-hello\", \"echo scratch > /etc/test-scratch\"]\n";

/// `debugfs -R REQUEST IMAGE` (read-only, nothing mounted).
fn debugfs(image: &Path, request: &str) -> String {
    require_tool("debugfs");
    let out = tool(&["debugfs", "-R", request, image.to_str().unwrap()]);
    assert!(out.success(), "debugfs {request}: {}", out.stderr);
    out.stdout
}

fn tar_list(tarball: &Path) -> Vec<String> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("zstd -dc -- \"$1\" | tar -tf -")
        .arg("sh")
        .arg(tarball);
    let out = run_timeout(cmd, Duration::from_secs(60), "zstd -dc | tar -tf").assert_ok();
    out.stdout.lines().map(str::to_string).collect()
}

#[test]
fn an_image_in_every_format_holds_the_packages_the_files_and_the_post_output() {
    for t in [
        "debugfs",
        "unsquashfs",
        "qemu-img",
        "mkfs.ext4",
        "mksquashfs",
        "sha256sum",
    ] {
        require_tool(t);
    }
    let r = repos();
    let tmp = tempfile::Builder::new()
        .prefix("kiln-img-")
        .tempdir()
        .unwrap();
    let b = build(
        tmp.path(),
        "full",
        &recipe(
            "edge-rootfs",
            &["kiln-hostbase", "kiln-img-hello"],
            &["tar.zst", "ext4", "squashfs", "qcow2", "cpio"],
            FULL_EXTRA,
        ),
        7,
    );
    b.ok();
    let j = b.json();
    assert_eq!(j["success"], true, "{j}");
    assert_eq!(j["tested"], true, "{j}");
    let names: BTreeSet<String> = j["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    for n in [
        "edge-rootfs.tar.zst",
        "edge-rootfs.ext4",
        "edge-rootfs.squashfs",
        "edge-rootfs.qcow2",
        "edge-rootfs.cpio",
        "manifest.json",
        "SHA256SUMS",
        "image.log",
    ] {
        assert!(names.contains(n), "{n} missing from {names:?}");
        assert!(b.file(n).is_file(), "{n} is not in {}", b.out.display());
    }
    let phases: Vec<&str> = j["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    for p in ["install", "post", "test", "format:ext4", "format:tar.zst"] {
        assert!(phases.contains(&p), "no phase {p} in {phases:?}");
    }

    // ext4, read with debugfs (nothing mounted).
    let ext4 = b.file("edge-rootfs.ext4");
    assert_eq!(std::fs::metadata(&ext4).unwrap().len(), 256 << 20);
    let ls = debugfs(&ext4, "ls -l /");
    for d in ["etc", "usr", "var"] {
        assert!(ls.contains(d), "no /{d} in the ext4 image: {ls}");
    }
    assert_eq!(debugfs(&ext4, "cat /etc/motd"), "Built by Kiln\n");
    assert_eq!(debugfs(&ext4, "cat /etc/kiln-post"), "post-ran\n");
    assert!(debugfs(&ext4, "cat /usr/bin/kiln-hello").contains("hello from the image"));
    // What a test wrote stays out of the image.
    let scratch = tool(&[
        "debugfs",
        "-R",
        "stat /etc/test-scratch",
        ext4.to_str().unwrap(),
    ]);
    assert!(
        (scratch.stdout.clone() + &scratch.stderr).contains("File not found"),
        "a test command's file reached the image: {scratch:?}"
    );
    // The UUID derives from the build id.
    let stats = debugfs(&ext4, "stats");
    let uuid = stats
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem UUID:"))
        .unwrap()
        .trim()
        .to_string();

    // squashfs, listed.
    let sq = tool_ok(&[
        "unsquashfs",
        "-l",
        b.file("edge-rootfs.squashfs").to_str().unwrap(),
    ]);
    for p in [
        "squashfs-root/etc/motd",
        "squashfs-root/etc/kiln-post",
        "squashfs-root/usr/bin/kiln-hello",
    ] {
        assert!(sq.lines().any(|l| l == p), "{p} not in the squashfs: {sq}");
    }
    assert!(!sq.contains("test-scratch"));

    // qcow2: its header, then back to raw and read with debugfs.
    let info = tool_ok(&[
        "qemu-img",
        "info",
        "--output=json",
        b.file("edge-rootfs.qcow2").to_str().unwrap(),
    ]);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["virtual-size"], 256u64 << 20, "{info}");
    let raw = tmp.path().join("back.raw");
    tool_ok(&[
        "qemu-img",
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        b.file("edge-rootfs.qcow2").to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    assert_eq!(debugfs(&raw, "cat /etc/motd"), "Built by Kiln\n");
    assert!(debugfs(&raw, "stats").contains(&uuid));

    // The tarball, listed: sorted entries.
    let list = tar_list(&b.file("edge-rootfs.tar.zst"));
    for p in [
        "./etc/motd",
        "./etc/kiln-post",
        "./usr/bin/kiln-hello",
        "./var/lib/rpm/",
    ] {
        assert!(list.iter().any(|l| l == p), "{p} not in the tarball");
    }
    assert!(!list.iter().any(|l| l.contains("PaxHeaders")));
    // cpio, listed.
    let mut cmd = Command::new("cpio");
    cmd.args(["-it", "--quiet", "-F"])
        .arg(b.file("edge-rootfs.cpio"));
    let cp = run_timeout(cmd, Duration::from_secs(60), "cpio -it")
        .assert_ok()
        .stdout;
    assert!(
        cp.lines().any(|l| l == "etc/motd" || l == "./etc/motd"),
        "{cp}"
    );
    // Nothing of the worker's leaks into the image (dnf's cache path).
    assert!(
        !cp.contains("dnf-cache") && !cp.contains("cache-full"),
        "{cp}"
    );
    assert!(
        !cp.contains("rpmdb.sqlite-shm") && !cp.contains("var/lib/dnf"),
        "{cp}"
    );

    // SHA256SUMS checks.
    let mut cmd = Command::new("sha256sum");
    cmd.args(["-c", "SHA256SUMS"]).current_dir(&b.out);
    let sums = run_timeout(cmd, Duration::from_secs(60), "sha256sum -c")
        .assert_ok()
        .stdout;
    assert_eq!(
        sums.lines().filter(|l| l.ends_with(": OK")).count(),
        6,
        "{sums}"
    );

    // The manifest lists exactly what the image's rpm database holds, with
    // the sha256 of each rpm file.
    let m = b.manifest();
    let unpacked = tmp.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("zstd -dc -- \"$1\" | tar -xf - -C \"$2\"")
        .arg("sh")
        .arg(b.file("edge-rootfs.tar.zst"))
        .arg(&unpacked);
    run_timeout(cmd, Duration::from_secs(60), "untar").assert_ok();
    let qa = tool_ok(&[
        "rpm",
        "--root",
        unpacked.to_str().unwrap(),
        "--define",
        "_dbpath /var/lib/rpm",
        "-qa",
        "--qf",
        "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\\n",
    ]);
    let in_image: BTreeSet<String> = qa.lines().map(str::to_string).collect();
    let in_manifest: BTreeSet<String> = m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["nevra"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(in_image, in_manifest);
    assert!(
        in_manifest.contains("kiln-img-hello-1-1.noarch"),
        "{in_manifest:?}"
    );
    for p in m["packages"].as_array().unwrap() {
        let file = format!(
            "{}-{}-{}.{}.rpm",
            p["name"].as_str().unwrap(),
            p["version"].as_str().unwrap(),
            p["release"].as_str().unwrap(),
            p["arch"].as_str().unwrap()
        );
        let src = [&r.base_dir, &r.fixtures_dir]
            .iter()
            .map(|d| d.join(&file))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{file} is in no test repository"));
        assert_eq!(p["sha256"].as_str().unwrap(), sha256_file(&src), "{file}");
    }
    let repos_m = m["repos"].as_array().unwrap();
    assert_eq!(repos_m.len(), 2, "{m}");
    for rp in repos_m {
        assert!(!rp["revision"].as_str().unwrap().is_empty(), "{rp}");
        assert_eq!(rp["repomd_sha256"].as_str().unwrap().len(), 64, "{rp}");
    }
    assert_eq!(m["recipe"]["name"], "edge-rootfs");
    for t in [
        "dnf",
        "rpm",
        "mkfs.ext4",
        "mksquashfs",
        "qemu-img",
        "tar",
        "zstd",
        "cpio",
    ] {
        assert!(
            !m["tools"][t].as_str().unwrap_or("").is_empty(),
            "no version of {t}: {}",
            m["tools"]
        );
    }
    let sde = m["source_date_epoch"].as_i64().unwrap();
    assert_eq!(
        sde,
        m["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["buildtime"].as_i64().unwrap())
            .max()
            .unwrap()
    );
    eprintln!(
        "image built in {:.1} s; phases: {}",
        b.took.as_secs_f64(),
        j["phases"]
    );
}

#[test]
fn a_failing_test_fails_the_image_with_its_output_at_the_end_of_the_log() {
    let tmp = tempfile::Builder::new()
        .prefix("kiln-img-")
        .tempdir()
        .unwrap();
    let b = build(
        tmp.path(),
        "failing",
        &recipe(
            "failing",
            &["kiln-hostbase", "kiln-img-hello"],
            &["tar.zst"],
            "test = [\"true\", \"echo checking-KILN-1234; echo it broke >&2; exit 3\", \"echo never-run\"]\n",
        ),
        1,
    );
    assert!(!b.run.success(), "the image should fail: {:?}", b.run);
    let j = b.json();
    assert_eq!(j["success"], false);
    assert_eq!(j["tested"], false);
    let msg = j["message"].as_str().unwrap();
    assert!(msg.contains("test[1]") && msg.contains("status 3"), "{msg}");
    let err = b.run.assert_error_line(&["test[1]"]);
    assert!(err.contains("image.log"), "{err}");
    let log = b.log();
    let tail: Vec<&str> = log.lines().rev().take(3).collect();
    assert_eq!(
        tail,
        [
            "it broke",
            "checking-KILN-1234",
            "kiln: the failed test's output:"
        ],
        "{log}"
    );
    assert!(!log.contains("never-run\n") || log.matches("never-run").count() == 1);
    // The image is kept for inspection, and says it was not tested.
    assert!(b.file("failing.tar.zst").is_file());
    assert_eq!(b.manifest()["tested"], false);
}

#[test]
fn the_same_recipe_twice_gives_the_same_tarball_cpio_and_squashfs() {
    let tmp = tempfile::Builder::new()
        .prefix("kiln-img-")
        .tempdir()
        .unwrap();
    let text = recipe(
        "repro",
        &["kiln-hostbase", "kiln-img-hello"],
        &["tar.zst", "cpio", "squashfs", "ext4"],
        FULL_EXTRA,
    );
    let a = build(tmp.path(), "a", &text, 3);
    let b = build(tmp.path(), "b", &text, 3);
    a.ok();
    b.ok();
    let h = |b: &Built, f: &str| sha256_file(&b.file(f));
    assert_eq!(
        h(&a, "repro.tar.zst"),
        h(&b, "repro.tar.zst"),
        "tar.zst differs"
    );
    assert_eq!(h(&a, "repro.cpio"), h(&b, "repro.cpio"), "cpio differs");
    assert_eq!(
        h(&a, "repro.squashfs"),
        h(&b, "repro.squashfs"),
        "squashfs differs"
    );
    eprintln!(
        "ext4 reproducible: {}",
        h(&a, "repro.ext4") == h(&b, "repro.ext4")
    );
}

fn qemu_left(dir: &Path) -> Vec<i32> {
    let d = dir.to_string_lossy().into_owned();
    pids_where(|argv| {
        argv.first().is_some_and(|a| a.contains("qemu-system"))
            && argv.iter().any(|a| a.contains(&d))
    })
}

#[test]
fn an_initramfs_boots_under_qemu_and_prints_its_marker() {
    require_tool("qemu-system-x86_64");
    let tmp = tempfile::Builder::new()
        .prefix("kiln-img-")
        .tempdir()
        .unwrap();
    let b = build(
        tmp.path(),
        "boot",
        &recipe(
            "bootable",
            &["kiln-img-kernel", "kiln-img-init"],
            &["cpio"],
            &format!("boot = {{ kernel = \"/boot/vmlinuz\", expect = \"{BOOT_MARKER}\", timeout = \"180s\" }}\n"),
        ),
        1,
    );
    let log = b.log();
    assert!(b.run.success(), "the boot test failed: {:?}\n{log}", b.run);
    assert!(log.contains("boot test passed"), "{log}");
    assert!(
        log.contains("Linux version"),
        "the kernel's console is not in the log: {log}"
    );
    let j = b.json();
    assert_eq!(j["tested"], true);
    let boot = j["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "boot")
        .unwrap()["ms"]
        .as_u64()
        .unwrap();
    eprintln!("boot test: {:.1} s under TCG", boot as f64 / 1000.0);
    assert!(b.manifest()["boot"]["result"]
        .as_str()
        .unwrap()
        .starts_with("Passed"));
    assert!(qemu_left(tmp.path()).is_empty(), "qemu left behind");
}

#[test]
fn a_marker_that_never_comes_fails_after_the_timeout_and_leaves_no_qemu() {
    require_tool("qemu-system-x86_64");
    let tmp = tempfile::Builder::new()
        .prefix("kiln-img-")
        .tempdir()
        .unwrap();
    let b = build(
        tmp.path(),
        "hang",
        &recipe(
            "hanging",
            &["kiln-img-kernel", "kiln-img-hang"],
            &["cpio"],
            &format!("boot = {{ kernel = \"/boot/vmlinuz\", expect = \"{BOOT_MARKER}\", timeout = \"6s\" }}\n"),
        ),
        1,
    );
    assert!(!b.run.success(), "the boot test should fail: {:?}", b.run);
    let msg = b.json()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("did not appear within 6 s"), "{msg}");
    assert!(b.took < Duration::from_secs(120), "took {:?}", b.took);
    assert!(qemu_left(tmp.path()).is_empty(), "qemu left behind");
    // The image is kept.
    assert!(b.file("hanging.cpio").is_file());
}

#[test]
fn a_bad_recipe_or_a_missing_tool_is_refused_before_anything_runs() {
    let tmp = tempfile::Builder::new()
        .prefix("kiln-img-")
        .tempdir()
        .unwrap();
    let b = build(
        tmp.path(),
        "opt",
        &recipe("opt", &["--installroot=/"], &["tar.zst"], ""),
        1,
    );
    b.run.assert_error_line(&["looks like an option"]);
    let b = build(
        tmp.path(),
        "path",
        &recipe(
            "path",
            &["bash"],
            &["tar.zst"],
            "files = { \"/etc/../../x\" = \"\" }\n",
        ),
        1,
    );
    b.run.assert_error_line(&["\"..\" component"]);
    let b = build(
        tmp.path(),
        "fmt",
        &recipe("fmt", &["bash"], &["zip"], ""),
        1,
    );
    b.run.assert_error_line(&["unknown variant"]);
    if find_tool("mkfs.erofs").is_none() {
        let b = build(
            tmp.path(),
            "erofs",
            &recipe("erofs", &["bash"], &["erofs"], ""),
            1,
        );
        b.run.assert_error_line(&["mkfs.erofs"]);
    }
    assert!(!tmp.path().join("out-opt").exists());
}
