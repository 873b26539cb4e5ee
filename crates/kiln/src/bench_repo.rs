//! `kiln bench-repo`: figures for the repository builder, with real
//! rpmbuild, createrepo_c, SQLite and dnf, in this process (no master, no
//! worker: what is measured starts where a build's artifacts are verified).
//! See BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use kiln_core::layout::Layout;
use kiln_core::state::{ArtifactKind, BuildState, JobState, PublishState};
use kiln_repo::{RepoBuilder, TargetRepo};
use kiln_store::{ArtifactRow, Durability, NewBuild, Store};
use tokio::sync::mpsc;

#[derive(Args)]
pub struct BenchRepoArgs {
    /// Packages already in the repository.
    #[arg(long, default_value_t = 2000)]
    base: usize,
    /// Builds landing together.
    #[arg(long, default_value_t = 100)]
    burst: usize,
    /// Single-build latency samples.
    #[arg(long, default_value_t = 5)]
    samples: usize,
}

/// One spec with many tiny noarch subpackages: one rpmbuild run makes them all.
fn make_packages(dir: &Path, n: usize) -> anyhow::Result<Vec<PathBuf>> {
    let mut spec = String::from(
        "Name: benchbase\nVersion: 1.0\nRelease: 1\nSummary: bench\nLicense: MIT\nBuildArch: noarch\n\
         AutoReqProv: no\n%description\nbench\n",
    );
    for i in 0..n {
        spec.push_str(&format!(
            "%package -n bench{i:05}\nSummary: bench {i}\n%description -n bench{i:05}\nbench {i}\n"
        ));
    }
    spec.push_str("%prep\n%build\n%install\nmkdir -p %{buildroot}/usr/share/bench\n");
    for i in 0..n {
        spec.push_str(&format!(
            "echo {i} > %{{buildroot}}/usr/share/bench/f{i:05}\n"
        ));
    }
    for i in 0..n {
        spec.push_str(&format!(
            "%files -n bench{i:05}\n/usr/share/bench/f{i:05}\n"
        ));
    }
    std::fs::create_dir_all(dir)?;
    let spec_path = dir.join("bench.spec");
    std::fs::write(&spec_path, spec)?;
    let out = std::process::Command::new("rpmbuild")
        .arg("-bb")
        .arg("--define")
        .arg(format!("_topdir {}", dir.join("top").display()))
        .arg("--define")
        .arg("_binary_payload w1.gzdio")
        .arg(&spec_path)
        .output()
        .context("running rpmbuild")?;
    if !out.status.success() {
        bail!(
            "rpmbuild failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let mut rpms: Vec<PathBuf> = std::fs::read_dir(dir.join("top/RPMS/noarch"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("bench"))
        })
        .collect();
    rpms.sort();
    Ok(rpms)
}

fn sha256(p: &Path) -> anyhow::Result<String> {
    Ok(kiln_core::fsutil::sha256_file(p)?.0)
}

/// Record a succeeded build whose verified artifacts are `rpms`, filed in
/// incoming/ as intake does. Publication is queued by the same commit.
async fn land(store: &Store, layout: &Layout, rpms: &[PathBuf]) -> anyhow::Result<i64> {
    let nb = NewBuild {
        target: "bench".into(),
        package: "benchbase".into(),
        evr: "1.0-1".into(),
        srpm_name: "benchbase-1.0-1.src.rpm".into(),
        srpm_sha256: "0".repeat(64),
        srpm_size: 0,
        channel: "default".into(),
        disttag: String::new(),
        priority: 0,
        scratch: false,
        ci: true,
        excluded: vec![],
        arches: vec!["noarch".into()],
        batch: None,
        waits_for: vec![],
        source: None,
        submitter: None,
    };
    let (b, jobs) = store
        .write(move |t| kiln_store::insert_build(t, &nb))
        .await?;
    let dir = layout.incoming(b.id, "noarch");
    std::fs::create_dir_all(&dir)?;
    let mut arts = Vec::new();
    for r in rpms {
        let name = r.file_name().context("name")?.to_string_lossy().to_string();
        let dest = dir.join(&name);
        kiln_core::fsutil::link_or_copy(r, &dest)?;
        arts.push(ArtifactRow {
            job: jobs[0].id,
            arch: "noarch".into(),
            name,
            kind: ArtifactKind::Rpm,
            size: std::fs::metadata(r)?.len(),
            sha256: sha256(r)?,
            nevra: None,
        });
    }
    let mut job = jobs[0].clone();
    job.state = JobState::Succeeded;
    let id = b.id;
    store
        .write(move |t| {
            for a in &arts {
                kiln_store::add_artifact(t, id, a)?;
            }
            kiln_store::save_job(t, &job)?;
            kiln_store::set_build_state(
                t,
                id,
                BuildState::Succeeded,
                None,
                BuildState::Succeeded.publication(false),
            )
        })
        .await?;
    Ok(id)
}

async fn wait_published(
    rx: &mut mpsc::UnboundedReceiver<(i64, PublishState)>,
    ids: &[i64],
) -> anyhow::Result<Instant> {
    let mut left: std::collections::HashSet<i64> = ids.iter().copied().collect();
    while !left.is_empty() {
        let (b, state) = tokio::time::timeout(Duration::from_secs(600), rx.recv())
            .await
            .context("publication timed out")?
            .context("builder stopped")?;
        match state {
            PublishState::Failed => bail!("build {b} failed to publish"),
            PublishState::Published => {
                left.remove(&b);
            }
            PublishState::Pending => {}
        }
    }
    Ok(Instant::now())
}

fn time_cmd(cmd: &mut std::process::Command) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed().as_secs_f64())
}

pub async fn bench_repo(a: BenchRepoArgs) -> anyhow::Result<i32> {
    let tmp = std::env::temp_dir().join(format!("kiln-bench-repo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let r = run(&a, &tmp).await;
    let _ = std::fs::remove_dir_all(&tmp);
    r
}

async fn run(a: &BenchRepoArgs, tmp: &Path) -> anyhow::Result<i32> {
    let total = a.base + a.burst + a.samples;
    let t = Instant::now();
    let rpms = make_packages(&tmp.join("src"), total)?;
    println!(
        "made {} packages with one rpmbuild run in {:.1} s",
        rpms.len(),
        t.elapsed().as_secs_f64()
    );
    if rpms.len() < total {
        bail!("rpmbuild made {} packages, not {total}", rpms.len());
    }
    let (base, rest) = rpms.split_at(a.base);
    let (burst, singles) = rest.split_at(a.burst);
    let data = tmp.join("data");
    std::fs::create_dir_all(&data)?;
    let layout = Layout::new(&data);
    let store = Store::open(&layout.db(), Durability::Full)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let builder = RepoBuilder::new(
        store.clone(),
        layout.clone(),
        PathBuf::from("createrepo_c"),
        vec![TargetRepo {
            name: "bench".into(),
            arches: vec!["x86_64".into()],
            keep: 1,
            signer: None,
            tosign_dir: None,
        }],
        Arc::new(move |b, s| {
            let _ = tx.send((b, s));
        }),
    );
    tokio::spawn(builder.clone().run());

    let t = Instant::now();
    let id = land(&store, &layout, base).await?;
    builder.kick();
    wait_published(&mut rx, &[id]).await?;
    println!(
        "seeded the repository with {} packages in {:.2} s",
        base.len(),
        t.elapsed().as_secs_f64()
    );
    let repo_dir = layout.repo("bench", "x86_64");

    let mut lat = Vec::new();
    for rpm in singles {
        let id = land(&store, &layout, std::slice::from_ref(rpm)).await?;
        let t0 = Instant::now();
        builder.kick();
        let t1 = wait_published(&mut rx, &[id]).await?;
        lat.push(t1.duration_since(t0).as_secs_f64());
    }
    lat.sort_by(|x, y| x.total_cmp(y));
    println!(
        "one build into a repository of {}+ packages, verified -> metadata live: median {:.3} s, max {:.3} s ({} samples)",
        base.len(),
        lat[lat.len() / 2],
        lat[lat.len() - 1],
        lat.len()
    );

    // createrepo_c alone on the same repository, for the ratio.
    let list = tmp.join("pkglist");
    let names: Vec<String> = std::fs::read_dir(&repo_dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".rpm"))
        .collect();
    std::fs::write(&list, names.join("\n") + "\n")?;
    std::fs::create_dir_all(tmp.join("alone"))?;
    let createrepo_alone = || -> anyhow::Result<f64> {
        time_cmd(
            std::process::Command::new("createrepo_c")
                .arg("--update")
                .arg("--cachedir")
                .arg(layout.repocache())
                .arg("--outputdir")
                .arg(tmp.join("alone"))
                .arg("--pkglist")
                .arg(&list)
                .args(["--general-compress-type", "gz", "--no-database", "--quiet"])
                .arg(&repo_dir),
        )
    };
    // The first run has no metadata of its own to reuse; the second does.
    let alone = createrepo_alone()?;
    let alone_update = createrepo_alone()?;
    println!(
        "createrepo_c alone on the same {} packages: {:.3} s from scratch, {:.3} s with --update; publication / createrepo_c --update = {:.2}",
        names.len(),
        alone,
        alone_update,
        lat[lat.len() / 2] / alone_update
    );

    // dnf sees the last package (offline, from the served directory).
    let home = tmp.join("home");
    std::fs::create_dir_all(home.join("repos.d"))?;
    std::fs::write(home.join(".rpmmacros"), "%_dbpath /var/lib/rpm\n")?;
    std::fs::write(
        home.join("repos.d/bench.repo"),
        format!(
            "[bench]\nname=bench\nbaseurl=file://{}\ngpgcheck=0\nenabled=1\n",
            repo_dir.display()
        ),
    )?;
    let last = singles
        .last()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let pkg = last.split("-1.0-1").next().unwrap_or("").to_string();
    let dnf_s = time_cmd(
        std::process::Command::new("dnf")
            .env("HOME", &home)
            .arg("--installroot")
            .arg(tmp.join("root"))
            .args(["--releasever", "9", "-q"])
            .arg(format!(
                "--setopt=reposdir={}",
                home.join("repos.d").display()
            ))
            .arg(format!(
                "--setopt=cachedir={}",
                tmp.join("dnfcache").display()
            ))
            .args(["--disablerepo=*", "--enablerepo=bench", "-y", "install"])
            .arg(&pkg),
    )?;
    println!("dnf installed {pkg} from it in {dnf_s:.2} s (dnf's own time)");

    // A burst: builds landing within one second.
    let runs_before = builder.runs.load(std::sync::atomic::Ordering::Relaxed);
    let pubs_before = builder
        .publications
        .load(std::sync::atomic::Ordering::Relaxed);
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for rpm in burst {
        ids.push(land(&store, &layout, std::slice::from_ref(rpm)).await?);
        builder.kick();
    }
    let landed = t0.elapsed().as_secs_f64();
    let t1 = wait_published(&mut rx, &ids).await?;
    let runs = builder.runs.load(std::sync::atomic::Ordering::Relaxed) - runs_before;
    let pubs = builder
        .publications
        .load(std::sync::atomic::Ordering::Relaxed)
        - pubs_before;
    println!(
        "{} builds landed in {:.2} s, all published {:.2} s after the first landed: {} publications, {} createrepo_c runs",
        ids.len(),
        landed,
        t1.duration_since(t0).as_secs_f64(),
        pubs,
        runs
    );
    store.close();
    Ok(0)
}
