//! `kiln bench-web`: the web UI's figures (issue 10). A master in this
//! process over a database filled with `--builds` finished builds (one job
//! each, spread over 30 days, several targets, states and packages), then
//! `--samples` sequential requests per page from this process (HTTP/1.1
//! keep-alive, zstd accepted, as a browser would): server round-trip time
//! p50/p95 and bytes transferred. See BENCHMARKS.md.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use kiln_core::state::{BuildState, JobState};
use kiln_master::{MasterConfig, Target};
use kiln_store::NewBuild;

use crate::bench_batch::in_temp_dir;

#[derive(Args)]
pub struct BenchWebArgs {
    /// Finished builds in the database.
    #[arg(long, default_value_t = 1_000_000)]
    builds: usize,
    /// Requests per page.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Keep the temporary directory and say where it is.
    #[arg(long)]
    keep: bool,
}

const TARGETS: [&str; 3] = ["el9", "el10", "f42"];
const STATES: [BuildState; 4] = [
    BuildState::Succeeded,
    BuildState::Succeeded,
    BuildState::Failed,
    BuildState::Skipped,
];

pub async fn bench_web(a: BenchWebArgs) -> anyhow::Result<i32> {
    in_temp_dir("kiln-bench-web", a.keep, |tmp| async move {
        run(&a, &tmp).await
    })
    .await
}

/// Fill the database directly (the master is not running yet): batches of
/// 20,000 builds per transaction.
async fn fill(db: &Path, n: usize) -> anyhow::Result<()> {
    let store = kiln_store::Store::open(db, kiln_store::Durability::Normal)?;
    let now = kiln_store::now_ms();
    let span = 30 * 86_400_000i64;
    let mut done = 0;
    while done < n {
        let k = (n - done).min(20_000);
        let first = done;
        store
            .write(move |t| {
                for i in first..first + k {
                    let nb = NewBuild {
                        target: TARGETS[i % 3].into(),
                        package: format!("pkg{}", i % 5000),
                        evr: format!("1.{}-1", i / 5000),
                        srpm_name: format!("pkg{}-1.{}-1.src.rpm", i % 5000, i / 5000),
                        srpm_sha256: format!("{:064x}", i),
                        srpm_size: 1000,
                        channel: "default".into(),
                        disttag: String::new(),
                        priority: 0,
                        scratch: false,
                        ci: false,
                        excluded: vec![],
                        arches: vec!["x86_64".into()],
                        batch: None,
                        waits_for: vec![],
                        source: None,
                        submitter: Some("bench".into()),
                    };
                    let at = now - span + (i as i64 * span / n as i64);
                    let state = STATES[i % 4];
                    let job_state = if state == BuildState::Failed {
                        JobState::Failed
                    } else {
                        JobState::Succeeded
                    };
                    kiln_store::stats::seed_finished(
                        t,
                        &nb,
                        at - 90_000,
                        at,
                        state,
                        job_state,
                        "w1",
                    )?;
                }
                Ok(())
            })
            .await?;
        done += k;
    }
    crate::settings::stop_store(&store).await;
    Ok(())
}

async fn run(a: &BenchWebArgs, tmp: &Path) -> anyhow::Result<i32> {
    let t = Instant::now();
    let data = tmp.join("master");
    std::fs::create_dir_all(&data)?;
    fill(&data.join("kiln.db"), a.builds).await?;
    println!(
        "filled the database with {} finished builds in {:.1} s",
        a.builds,
        t.elapsed().as_secs_f64()
    );
    let host = kiln_core::names::host_arch().to_string();
    let mut cfg = MasterConfig {
        data,
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        worker_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        targets: TARGETS
            .iter()
            .map(|n| Target {
                name: n.to_string(),
                disttag: String::new(),
                arches: vec![host.clone()],
                channel: "default".into(),
                keep: 1,
                sign_key: None,
                tosign_dir: None,
                buildroot: None,
                implicit: false,
            })
            .collect(),
        ..Default::default()
    };
    cfg.validate().context("the bench's master settings")?;
    let m = crate::settings::start_master(cfg).await?;
    let base = format!("http://{}", m.api_addr);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mid = a.builds / 2;
    let pages = [
        ("/".to_string(), "dashboard"),
        ("/builds".to_string(), "builds, first page"),
        ("/builds?state=failed".to_string(), "builds, state=failed"),
        (
            "/builds?target=el10&package=pkg42".to_string(),
            "builds, target and package",
        ),
        (
            format!("/builds?before={mid}"),
            "builds, a page in the middle",
        ),
        (format!("/builds/{mid}"), "one build"),
        ("/workers".to_string(), "workers"),
        ("/stats".to_string(), "stats (cached 10 s)"),
    ];
    println!(
        "{:<32} {:>9} {:>9} {:>9} {:>10}",
        "page", "p50 ms", "p95 ms", "max ms", "bytes (zstd)"
    );
    for (path, what) in &pages {
        let url = format!("{base}{path}");
        let mut times = Vec::with_capacity(a.samples);
        let mut bytes = 0usize;
        for _ in 0..a.samples.max(1) {
            let t0 = Instant::now();
            let r = http
                .get(&url)
                .header("accept-encoding", "zstd")
                .header("accept", "text/html")
                .send()
                .await?;
            let status = r.status();
            let body = r.bytes().await?;
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
            if !status.is_success() {
                anyhow::bail!("{path} answered {status}");
            }
            bytes = body.len();
        }
        times.sort_by(|x, y| x.total_cmp(y));
        let p = |q: usize| times[(times.len() * q / 100).min(times.len() - 1)];
        println!(
            "{:<32} {:>9.2} {:>9.2} {:>9.2} {:>10}",
            what,
            p(50),
            p(95),
            times[times.len() - 1],
            bytes
        );
    }
    crate::settings::stop_store(&m.core.store).await;
    Ok(0)
}
