//! What an image build costs and where the time goes: one image of about
//! 50 packages (the test base repository's `kiln-hostbase`, made from this
//! machine's files, and `KILN_BENCH_FILLERS` small noarch packages, 48 by
//! default, from a second repository), with a file, a post and a test
//! command, in every format this machine can make, through the worker's
//! real image builder (`build_image`: dnf --installroot, bubblewrap, the
//! format tools). Both repositories are served over HTTP on 127.0.0.1.
//!
//! `cargo bench -p kiln-worker --bench image` (as root). `KILN_BENCH_ROUNDS`
//! (default 3) builds; the first one fills dnf's package cache (its
//! download time is part of `install`). Prints each round's phases (all
//! the time / the time inside dnf, the commands and the format tools) and
//! Kiln's own overhead: everything outside those tools, as a share of the
//! total.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../kiln/tests/it/common/hostbase.rs"]
#[allow(dead_code, unused_imports)]
mod hostbase;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use kiln_core::image::{ImageFormat, ImageRecipe};
use kiln_worker::backend::LogSink;
use kiln_worker::buildroot::Roots;
use kiln_worker::image::{build_image, ImageRequest};

struct Buf(Mutex<Vec<u8>>);

impl LogSink for Buf {
    fn write(&self, d: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(d);
    }
}

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A repository of `n` noarch packages `kiln-filler-<i>` (one spec, one
/// subpackage each, each a few files of text), cached by `n`.
fn filler_repo(dir: &Path, n: u64) -> PathBuf {
    let repo = dir.join(format!("fillers-{n}"));
    if repo.join("repodata/repomd.xml").is_file() {
        return repo;
    }
    let _ = std::fs::remove_dir_all(&repo);
    let top = dir.join(format!("fillers-{n}-top"));
    let _ = std::fs::remove_dir_all(&top);
    std::fs::create_dir_all(&top).unwrap();
    let mut spec = String::from(
        "Name: kiln-fillers\nVersion: 1\nRelease: 1\nSummary: bench\nLicense: MIT\nBuildArch: noarch\n\
         %description\nbench\n",
    );
    let mut install = String::from("%install\n");
    let mut files = String::new();
    for i in 1..=n {
        spec += &format!(
            "%package -n kiln-filler-{i}\nSummary: filler {i}\n%description -n kiln-filler-{i}\nfiller\n"
        );
        install += &format!(
            "mkdir -p %{{buildroot}}/usr/share/kiln-filler-{i}\n\
             for f in 1 2 3 4 5 6 7 8; do seq 1 $((2000 * f + {i})) > %{{buildroot}}/usr/share/kiln-filler-{i}/data-$f.txt; done\n"
        );
        files += &format!("%files -n kiln-filler-{i}\n/usr/share/kiln-filler-{i}\n");
    }
    spec += "%prep\n%build\n";
    spec += &install;
    spec += &files;
    let spec_path = top.join("fillers.spec");
    std::fs::write(&spec_path, spec).unwrap();
    let out = Command::new("rpmbuild")
        .arg("-bb")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .args([
            "--define",
            "_binary_payload w.ufdio",
            "--define",
            "__os_install_post %{nil}",
            "--define",
            "_build_id_links none",
            "--define",
            "debug_package %{nil}",
            "--nodeps",
        ])
        .arg(&spec_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rpmbuild: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(&repo).unwrap();
    for e in std::fs::read_dir(top.join("RPMS/noarch")).unwrap() {
        let e = e.unwrap();
        std::fs::rename(e.path(), repo.join(e.file_name())).unwrap();
    }
    let st = Command::new("createrepo_c")
        .arg("--quiet")
        .arg(&repo)
        .status()
        .unwrap();
    assert!(st.success());
    repo
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds = env_num("KILN_BENCH_ROUNDS", 3);
    let fillers = env_num("KILN_BENCH_FILLERS", 48);
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/kiln-bench");
    std::fs::create_dir_all(&target).unwrap();
    let hb = hostbase::build_host_base_repo(&target.join("hostbase"));
    let fill = filler_repo(&target, fillers);
    let base = hostbase::serve_dir(&hb.repo);
    let extra = hostbase::serve_dir(&fill);
    let mut packages = vec![hostbase::BASE_PACKAGE.to_string()];
    packages.extend((1..=fillers).map(|i| format!("kiln-filler-{i}")));
    let have = |t: &str| {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(t).is_file())
    };
    let formats: Vec<ImageFormat> = ImageFormat::ALL
        .into_iter()
        .filter(|f| f.tools().iter().all(|t| have(t)))
        .collect();
    let recipe = ImageRecipe {
        name: "bench".into(),
        target: "el9".into(),
        repos: vec![extra.url.clone()],
        arches: vec![],
        packages,
        formats: formats.clone(),
        size: None,
        files: [("/etc/motd".to_string(), "Built by Kiln\n".to_string())].into(),
        post: vec!["echo post-ran > /etc/kiln-post".into()],
        test: vec!["test -s /etc/kiln-post && grep -q Kiln /etc/motd".into()],
        boot: None,
        rebuild_on_publish: false,
        version: None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let scratch = tempfile::Builder::new()
        .prefix("kiln-bench-image-")
        .tempdir_in(&target)
        .unwrap();
    let roots = Roots::new(&scratch.path().join("cache"), None, 4 << 30);
    println!(
        "image bench: {} packages requested, formats {:?}, {rounds} rounds",
        recipe.packages.len(),
        formats.iter().map(|f| f.as_str()).collect::<Vec<_>>()
    );
    let mut shares = Vec::new();
    let mut shares_wo = Vec::new();
    for round in 1..=rounds {
        let out = scratch.path().join(format!("out-{round}"));
        let req = ImageRequest {
            recipe: recipe.clone(),
            arch: kiln_core::names::host_arch().into(),
            repos: vec![base.url.clone()],
            releasever: "9".into(),
            gpgcheck: false,
            gpgkeys: vec![],
            build_id: 1,
            work: scratch.path().join(format!("work-{round}")),
            out: out.clone(),
            timeout: Duration::from_secs(1800),
        };
        let log = Buf(Mutex::new(Vec::new()));
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let o = rt
            .block_on(build_image(&req, &roots, &log, rx))
            .expect("build_image");
        // The scratch root is removed after the outcome (as a worker would
        // after reporting): timed apart.
        let t = std::time::Instant::now();
        kiln_worker::image::wait_for_removals();
        let removal = t.elapsed();
        if !o.success {
            eprintln!("{}", String::from_utf8_lossy(&log.0.lock().unwrap()));
            panic!("the image failed: {}", o.message);
        }
        println!(
            "round {round}: {} packages installed, total {} ms",
            o.packages, o.total_ms
        );
        println!("  {:<18} {:>8} {:>10}", "phase", "ms", "tools ms");
        for p in &o.phases {
            println!("  {:<18} {:>8} {:>10}", p.phase, p.ms, p.tool_ms);
        }
        for f in &o.files {
            println!("  {:<24} {:>12} bytes", f.name, f.size);
        }
        let share = o.overhead_ms() as f64 * 100.0 / o.total_ms.max(1) as f64;
        println!(
            "  Kiln's own overhead: {} ms of {} ms = {share:.1} %",
            o.overhead_ms(),
            o.total_ms
        );
        // With the scratch root's removal, done after the outcome.
        let removal_ms = removal.as_millis() as u64;
        let with = o.total_ms + removal_ms;
        let share2 = (o.overhead_ms() + removal_ms) as f64 * 100.0 / with.max(1) as f64;
        println!(
            "  then the scratch root removed in {removal_ms} ms: counting it, {} ms of {with} ms = {share2:.1} %",
            o.overhead_ms() + removal_ms
        );
        shares.push(share);
        shares_wo.push(share2);
        let _ = std::fs::remove_dir_all(&out);
    }
    shares.sort_by(|a, b| a.partial_cmp(b).unwrap());
    shares_wo.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "median overhead over {rounds} rounds: {:.1} % ({:.1} % counting the scratch root's removal)",
        shares[shares.len() / 2],
        shares_wo[shares_wo.len() / 2]
    );
}
