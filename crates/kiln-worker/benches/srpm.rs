//! What a second build of a cached project costs against the first: the
//! srpm job (issue 9) run through the worker's real code (mirror, git
//! fetch, rpmspec and `rpmbuild -bs` in bubblewrap) on a project whose
//! upstream has a real history, first with no mirror (`mirror created`),
//! then again after one new upstream commit (`mirror updated`).
//!
//! `cargo bench -p kiln-worker --bench srpm`. `KILN_BENCH_COMMITS` (300),
//! `KILN_BENCH_FILE_KB` (10: each commit adds a file of that many KiB of
//! incompressible bytes), `KILN_BENCH_ROUNDS` (5: each round starts with
//! an empty worker cache). Upstream is reached by `file://` (git's own
//! upload-pack over a pipe: the packing and transfer work of a fetch, no
//! network latency). Prints per round, then medians: the fetch time (both
//! repositories), the whole SRPM making, and the bytes received (how much
//! the mirrors grew). `KILN_BENCH_LOG=1` also prints each job's log with
//! the time of each line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/gitrepo.rs"]
mod gitrepo;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gitrepo::{spec, TestRepo};
use kiln_proto as pb;
use kiln_worker::backend::LogSink;
use kiln_worker::srpm::{make_srpm, Made, SrpmEnv, SrpmRequest};

/// The job log, each write stamped with the milliseconds since the job
/// started (printed with `KILN_BENCH_LOG=1`: where the time goes).
struct Buf(Mutex<Vec<u8>>, Instant, Mutex<String>);

impl LogSink for Buf {
    fn write(&self, d: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(d);
        let text = String::from_utf8_lossy(d);
        let mut stamped = self.2.lock().unwrap();
        for line in text.lines() {
            stamped.push_str(&format!("{:>6} ms  {line}\n", self.1.elapsed().as_millis()));
        }
    }
}

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Deterministic incompressible bytes (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

struct Figures {
    fetch: Duration,
    whole: Duration,
    bytes: u64,
}

async fn one(env: &SrpmEnv, source: &pb::GitSource, dir: &Path, want: &str) -> Figures {
    let log = Buf(
        Mutex::new(Vec::new()),
        Instant::now(),
        Mutex::new(String::new()),
    );
    let req = SrpmRequest {
        source: source.clone(),
        disttag: ".bench".into(),
        timeout: Duration::from_secs(600),
        buildroot: None,
    };
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let made: Made = make_srpm(env, &req, dir, &log, rx).await;
    let whole = t.elapsed();
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    assert!(made.outcome.success, "{}\n{text}", made.outcome.message);
    assert!(text.contains(want), "no {want:?} in the log:\n{text}");
    std::fs::remove_dir_all(dir).unwrap();
    if std::env::var_os("KILN_BENCH_LOG").is_some() {
        println!("{}", log.2.lock().unwrap());
    }
    Figures {
        fetch: made.fetches.iter().map(|f| f.elapsed).sum(),
        whole,
        bytes: made.fetches.iter().map(|f| f.bytes).sum(),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let commits = env_num("KILN_BENCH_COMMITS", 300).max(2);
    let kib = env_num("KILN_BENCH_FILE_KB", 10) as usize;
    let rounds = env_num("KILN_BENCH_ROUNDS", 5).max(1);
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/kiln-bench");
    std::fs::create_dir_all(&base).unwrap();
    // A plain absolute path: a file:// URL may not hold `..`.
    let base = base.canonicalize().unwrap();
    let tmp = tempfile::tempdir_in(&base).unwrap();

    let t = Instant::now();
    let mut up = TestRepo::new(&tmp.path().join("upstream"));
    for i in 0..commits {
        let name = format!("data/f{:04}.bin", i % 1000);
        let body = noise(i, kib * 1024);
        let code = format!("/* change {i} */\nint f{i}(void) {{ return {i}; }}\n");
        up.commit(
            &[(name.as_str(), &body[..]), ("src/lib.c", code.as_bytes())],
            &format!("change {i}"),
        );
        if i == commits / 3 {
            up.annotated_tag("v1.0");
        }
    }
    up.git(&["gc", "-q"]);
    let packed = gitrepo_size(&up.dir.join(".git/objects"));
    let mut pk = TestRepo::new(&tmp.path().join("packaging"));
    pk.commit(
        &[(
            "bench.spec",
            spec("bench", "1.0", "%{name}-%{version}.tar.gz", "").as_bytes(),
        )],
        "packaging",
    );
    println!(
        "project: upstream {commits} commits (a {kib} KiB file each, tag v1.0 at commit {}), \
         {:.1} MiB of packed objects; packaging 1 commit; made in {:.1} s",
        commits / 3 + 1,
        packed as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    let source = pb::GitSource {
        project: "bench".into(),
        mode: "ci".into(),
        upstream_url: up.url(),
        upstream_ref: "main".into(),
        packaging_url: pk.url(),
        packaging_ref: "main".into(),
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut first, mut second) = (Vec::new(), Vec::new());
    println!(
        "{:>5}  {:>28}  {:>28}",
        "round", "first run (mirror created)", "second run (mirror updated)"
    );
    for round in 0..rounds {
        let work = tmp.path().join(format!("work-{round}"));
        let env = SrpmEnv::new(&work);
        let a = rt.block_on(one(&env, &source, &work.join("jobs/1-1"), "mirror created"));
        let i = commits + round;
        up.commit(
            &[(
                "src/lib.c",
                format!("/* change {i} */\nint f{i}(void) {{ return {i}; }}\n").as_bytes(),
            )],
            &format!("change {i}"),
        );
        let b = rt.block_on(one(&env, &source, &work.join("jobs/2-1"), "mirror updated"));
        let show = |f: &Figures| {
            format!(
                "fetch {:>7}, all {:>7}, {:>9} B",
                ms(f.fetch),
                ms(f.whole),
                f.bytes
            )
        };
        println!("{:>5}  {}  {}", round + 1, show(&a), show(&b));
        first.push(a);
        second.push(b);
        std::fs::remove_dir_all(&work).unwrap();
    }
    let summary = |name: &str, v: &[Figures]| {
        let mut bytes: Vec<u64> = v.iter().map(|f| f.bytes).collect();
        bytes.sort();
        println!(
            "{name}: median fetch {}, median whole SRPM {}, median bytes received {}",
            ms(median(v.iter().map(|f| f.fetch).collect())),
            ms(median(v.iter().map(|f| f.whole).collect())),
            bytes[bytes.len() / 2]
        );
    };
    summary("first run  (mirror created)", &first);
    summary("second run (mirror updated)", &second);
}

fn gitrepo_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            gitrepo_size(&e.path())
        } else {
            m.len()
        };
    }
    total
}
