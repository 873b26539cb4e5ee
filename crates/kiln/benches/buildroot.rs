//! What a buildroot costs per job, against a build on the worker's host:
//! the same noarch SRPM built N times each way through the worker's real
//! backend (overlay over the cached base root, dnf for the BuildRequires,
//! rpmbuild in bubblewrap inside the root, teardown), with the test base
//! repository made from this machine's files and served over HTTP.
//!
//! `cargo bench -p kiln --bench buildroot` (as root; `KILN_BENCH_JOBS`
//! sets N, default 10). Prints the base root's init time, the medians, the
//! per-job overhead, and the disk a job's upper layer takes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/it/common/hostbase.rs"]
#[allow(dead_code, unused_imports)]
mod hostbase;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_worker::backend::{Backend, JobSpec, LogSink, Rpmbuild, Sandbox};
use kiln_worker::buildroot::{RootSpec, Roots};

struct Buf(Mutex<Vec<u8>>);

impl LogSink for Buf {
    fn write(&self, d: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(d);
    }
}

fn srpm(dir: &Path, name: &str, requires: &str, c: bool) -> PathBuf {
    let top = dir.join(format!("top-{name}"));
    std::fs::create_dir_all(&top).unwrap();
    let spec = dir.join(format!("{name}.spec"));
    let (arch, build, files) = if c {
        (
            "",
            "printf 'int main(void){return 0;}\\n' > m.c\ngcc -O2 -o m m.c\n",
            format!("/usr/bin/{name}"),
        )
    } else {
        (
            "BuildArch: noarch\n",
            "echo hi > m\n",
            format!("/usr/bin/{name}"),
        )
    };
    std::fs::write(
        &spec,
        format!(
            "Name: {name}\nVersion: 1\nRelease: 1\nSummary: bench\nLicense: MIT\n{arch}{requires}\
             %description\nbench\n%prep\n%build\n{build}%install\nmkdir -p %{{buildroot}}/usr/bin\n\
             install -m 755 m %{{buildroot}}/usr/bin/{name}\n%files\n{files}\n"
        ),
    )
    .unwrap();
    let out = Command::new("rpmbuild")
        .arg("-bs")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .arg(&spec)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_dir(top.join("SRPMS"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
}

fn du(dir: &Path) -> u64 {
    let out = Command::new("du").arg("-sk").arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Run {
    times: Vec<Duration>,
    upper: Vec<u64>,
}

async fn jobs(
    backend: &Rpmbuild,
    work: &Path,
    srpm: &Path,
    root: Option<(RootSpec, Arc<Roots>)>,
    n: usize,
    first_id: u64,
) -> Run {
    let mut run = Run {
        times: Vec::new(),
        upper: Vec::new(),
    };
    for i in 0..n {
        let id = first_id + i as u64;
        let dir = work.join("jobs").join(format!("{id}-1"));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = JobSpec {
            job: id,
            attempt: 1,
            arch: "x86_64".into(),
            disttag: ".bench".into(),
            srpm: srpm.to_path_buf(),
            timeout: Duration::from_secs(600),
            buildroot: root.clone(),
        };
        let log = Buf(Mutex::new(Vec::new()));
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let t = Instant::now();
        let out = backend.build(&spec, &dir, &log, rx).await.unwrap();
        let upper = du(&dir.join("root").join("upper"));
        std::fs::remove_dir_all(&dir).unwrap();
        let took = t.elapsed();
        assert!(
            out.success,
            "{}: {}",
            out.message,
            String::from_utf8_lossy(&log.0.lock().unwrap())
        );
        if i == 0 && root.is_some() {
            let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
            if text.contains("making the base root") {
                // The base's init is reported on its own.
                continue;
            }
        }
        run.times.push(took);
        run.upper.push(upper);
    }
    run
}

fn main() {
    let n: usize = std::env::var("KILN_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/kiln-bench");
    std::fs::create_dir_all(&target).unwrap();
    let t = Instant::now();
    let hb = hostbase::build_host_base_repo(&target.join("hostbase"));
    println!(
        "test base repository: {} ({:.1} s{})",
        hb.repo.display(),
        t.elapsed().as_secs_f64(),
        if hb.cached { ", cached" } else { "" }
    );
    let server = hostbase::serve_dir(&hb.repo);
    let work = target.join(format!("buildroot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let scratch = work.join("srpms");
    std::fs::create_dir_all(&scratch).unwrap();
    let noarch = srpm(&scratch, "kbench-noarch", "BuildRequires: bash\n", false);
    let cpkg = srpm(&scratch, "kbench-c", "BuildRequires: gcc make\n", true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let roots = Arc::new(Roots::new(&work, None, 4 << 30));
    let spec = RootSpec::new(
        "bench",
        "x86_64",
        &kiln_proto::Buildroot {
            repos: vec![server.url.clone()],
            packages: hostbase::ROOT_PACKAGES
                .iter()
                .map(|p| p.to_string())
                .collect(),
            releasever: "9".into(),
            gpgcheck: false,
            gpgkeys: vec![],
            kiln_repos: vec![],
        },
    );
    let in_root = Rpmbuild {
        nodeps: false,
        sandbox: Sandbox::On,
    };
    let host = Rpmbuild {
        nodeps: true,
        sandbox: Sandbox::On,
    };
    rt.block_on(async {
        // The base, made once (its init timed apart from the jobs).
        let t = Instant::now();
        let mut first = jobs(&in_root, &work, &noarch, Some((spec.clone(), roots.clone())), 1, 1).await;
        let init = t.elapsed();
        let base = roots.list();
        let base = base.first().expect("a base root");
        println!(
            "base root: made once in {:.2} s (dnf {:.2} s), {} MB, {} packages",
            init.as_secs_f64(),
            base.init_ms as f64 / 1000.0,
            base.size >> 20,
            base.installed.len()
        );
        first.times.clear();
        let mut root = jobs(&in_root, &work, &noarch, Some((spec.clone(), roots.clone())), n, 100).await;
        let mut hosted = jobs(&host, &work, &noarch, None, n, 200).await;
        let mut c = jobs(&in_root, &work, &cpkg, Some((spec.clone(), roots.clone())), n.min(5), 300).await;
        let (mr, mh, mc) = (
            median(&mut root.times),
            median(&mut hosted.times),
            median(&mut c.times),
        );
        let uppers = |r: &Run| {
            let mut u = r.upper.clone();
            u.sort();
            u[u.len() / 2]
        };
        println!("noarch SRPM, {n} jobs each way (medians, teardown included):");
        println!("  in the buildroot: {:.3} s", mr.as_secs_f64());
        println!("  on the host:      {:.3} s", mh.as_secs_f64());
        println!(
            "  buildroot overhead per job: {:.3} s (goal <= 1.5 s)",
            mr.as_secs_f64() - mh.as_secs_f64()
        );
        println!(
            "  disk per job over the base (upper layer, BuildRequires: bash): {} KB (goal <= 10 MB)",
            uppers(&root) >> 10
        );
        println!(
            "C SRPM (BuildRequires: gcc make, installed per job), {} jobs: median {:.3} s, upper layer {} MB",
            c.times.len(),
            mc.as_secs_f64(),
            uppers(&c) >> 20
        );
        println!("base roots after the run: {}", roots.list().len());
    });
    let _ = std::fs::remove_dir_all(&work);
}
