//! `kiln bench-hook`: figures for builds from git (issue 9). A master and
//! one real worker in this process (as `bench-batch`); a project whose
//! upstream is a git repository made here (with a spec in it, Packit
//! style, reached by `file://`), with a secret. Each sample commits to the
//! repository, POSTs a signed GitHub push event to `/hooks/github`, and
//! reads on the master's event stream (subscribed before) when the build's
//! srpm job was assigned to the idle worker, then waits for the build to
//! end before the next sample. Reported: the webhook's answer time, and
//! webhook received → srpm job assigned (p50, p95, max). See BENCHMARKS.md.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use kiln_api::{BuildState, Event, HookAnswer, JobState, Project};

use crate::bench_batch::{in_temp_dir, Farm, TARGET};

#[derive(Args)]
pub struct BenchHookArgs {
    /// Pushes to measure (one at a time, each built to the end).
    #[arg(long, default_value_t = 30)]
    samples: usize,
    /// Keep the temporary directory and say where it is.
    #[arg(long)]
    keep: bool,
}

const SECRET: &str = "bench-hook-secret";

/// When each build's srpm job was assigned, and which builds ended.
#[derive(Default)]
struct Seen {
    assigned: HashMap<i64, Instant>,
    ended: HashMap<i64, BuildState>,
}

type Events = crate::bench::Watched<Seen>;

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Kiln Bench",
            "-c",
            "user.email=bench@kiln.invalid",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

const SPEC: &str = "Name: kb-hook\nVersion: 1.0\nRelease: 1\nSummary: bench\nLicense: MIT\n\
BuildArch: noarch\nSource0: %{name}-%{version}.tar.gz\n\n%description\nbench\n\n%prep\n%setup -q\n\n\
%build\n\n%install\nmkdir -p %{buildroot}/usr/share/kb-hook\ncp n.txt %{buildroot}/usr/share/kb-hook/\n\n\
%files\n/usr/share/kb-hook\n";

pub async fn bench_hook(a: BenchHookArgs) -> anyhow::Result<i32> {
    if a.samples == 0 {
        bail!("--samples must be at least 1");
    }
    in_temp_dir("kiln-bench-hook", a.keep, |tmp| async move {
        run(&a, &tmp).await
    })
    .await
}

async fn run(a: &BenchHookArgs, tmp: &Path) -> anyhow::Result<i32> {
    let repo = tmp.join("kb-hook");
    std::fs::create_dir_all(&repo)?;
    git(&repo, &["init", "-q"])?;
    std::fs::write(repo.join("kb-hook.spec"), SPEC)?;
    std::fs::write(repo.join("n.txt"), "0\n")?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "0"])?;
    let url = format!("file://{}", repo.display());
    let farm = Farm::start(tmp, 1, "bench-hook").await?;
    let r = measure(a, &farm, &repo, &url).await;
    farm.stop().await;
    r
}

async fn measure(a: &BenchHookArgs, farm: &Farm, repo: &Path, url: &str) -> anyhow::Result<i32> {
    let c = &farm.c;
    let p = Project {
        name: "kb-hook".into(),
        targets: vec![TARGET.into()],
        upstream: url.to_string(),
        upstream_ref: Some("main".into()),
        secret: Some(SECRET.into()),
        ..Default::default()
    };
    let _: kiln_api::ProjectView = c.post("/api/v1/projects", &p).await?;
    let ev = Events::new();
    let ev2 = ev.clone();
    crate::bench::follow_stream(c, move |e, now| {
        ev2.update(|s| match e {
            Event::Job {
                build, arch, state, ..
            } if arch == "src" && state == JobState::Assigned => {
                s.assigned.entry(build).or_insert(now);
            }
            Event::Build { build, state, .. } if state.is_final() => {
                s.ended.insert(build, state);
            }
            _ => {}
        })
    })
    .await?;
    let hook = c.url("/hooks/github");
    let (mut answer, mut assign) = (Vec::new(), Vec::new());
    let mut first_build_s = None;
    // One warm-up push (its srpm job clones the repository) and the samples.
    for i in 0..=a.samples {
        std::fs::write(repo.join("n.txt"), format!("{}\n", i + 1))?;
        git(repo, &["commit", "-q", "-am", &i.to_string()])?;
        let after = git(repo, &["rev-parse", "HEAD"])?;
        let body = serde_json::json!({
            "ref": "refs/heads/main", "before": "0".repeat(40), "after": after,
            "deleted": false, "commits": [],
            "repository": {"clone_url": url, "html_url": url},
            "pusher": {"name": "bench"}
        })
        .to_string();
        let sig = kiln_core::sig::hmac_sha256_hex(SECRET.as_bytes(), body.as_bytes());
        let t0 = Instant::now();
        let resp = c
            .send(
                c.http
                    .post(&hook)
                    .header("Content-Type", "application/json")
                    .header("X-GitHub-Event", "push")
                    .header("X-GitHub-Delivery", format!("bench-{i}"))
                    .header("X-Hub-Signature-256", format!("sha256={sig}"))
                    .body(body),
            )
            .await?;
        let answered = t0.elapsed();
        let h: HookAnswer = resp.json().await.context("reading the webhook's answer")?;
        let Some(&build) = h.builds.first() else {
            bail!("the webhook started no build: {}", h.message);
        };
        let assigned = ev.wait(|s| s.assigned.get(&build).copied()).await;
        let state = tokio::time::timeout(
            Duration::from_secs(300),
            ev.wait(|s| s.ended.get(&build).copied()),
        )
        .await
        .context("a build did not end in 300 s")?;
        if state != BuildState::Succeeded {
            bail!("build {build} ended {state}");
        }
        if i == 0 {
            first_build_s = Some(t0.elapsed().as_secs_f64());
            continue;
        }
        answer.push(answered.as_secs_f64() * 1000.0);
        assign.push(assigned.duration_since(t0).as_secs_f64() * 1000.0);
    }
    let show = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
        format!(
            "p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
            pct(50),
            pct(95),
            v[v.len() - 1]
        )
    };
    println!(
        "first build (clones the repository, makes the SRPM, builds): {:.2} s",
        first_build_s.unwrap_or(f64::NAN)
    );
    println!(
        "webhook answered ({} samples): {}",
        answer.len(),
        show(&mut answer)
    );
    println!(
        "webhook received -> srpm job assigned to the idle worker ({} samples): {}",
        assign.len(),
        show(&mut assign)
    );
    Ok(0)
}
