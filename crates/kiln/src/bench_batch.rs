//! `kiln bench-batch`: figures for batches (issue 8). A master and one real
//! worker in this process (the `rpmbuild` backend in bubblewrap, as a
//! default worker on a Debian host: `--nodeps`, sandbox on), a chain of
//! noarch SRPMs made with `rpmbuild -bs` (`--levels` × `--width`; a package
//! of level k BuildRequires the subpackages of one or two packages of level
//! k-1, which only the evaluation of their specs on the worker can tell),
//! uploaded and submitted as one batch over the HTTP API. The master's event
//! stream (`GET /api/v1/events`, read before the submit) gives, on this
//! process's clock, when each build's job was assigned, when it ran, when it
//! ended and when the build was published. See BENCHMARKS.md.
//!
//! Everything lives in a fresh directory under the temporary directory,
//! deleted at the end (`--keep` keeps it).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use kiln_api::{
    BatchRequest, BatchSubmitted, BlobInfo, BuildState, Event, JobState, PublishState,
    SubmitRequest, TokenRequest, TokenResponse, WorkerView,
};
use kiln_master::{MasterConfig, Target};
use kiln_worker::backend::{Rpmbuild, Sandbox};
use tokio::sync::watch;

use crate::client::Client;

/// The target the batch goes to (host builds: no buildroot).
pub(crate) const TARGET: &str = "bench";

#[derive(Args)]
pub struct BenchBatchArgs {
    /// Levels of the dependency chain (level 0 needs nothing of the batch).
    #[arg(long, default_value_t = 5)]
    levels: usize,
    /// SRPMs per level.
    #[arg(long, default_value_t = 4)]
    width: usize,
    /// Slots of the one worker.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// How long each package's %build sleeps, in milliseconds (0: no sleep).
    #[arg(long, default_value_t = 500)]
    build_ms: u64,
    /// Give up when the batch is not all published after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Print one line per build (level, waits, times).
    #[arg(long)]
    per_build: bool,
    /// Keep the temporary directory (master data, worker, SRPMs) and say
    /// where it is.
    #[arg(long)]
    keep: bool,
}

/// One SRPM of the chain: package `j` of level `k`.
struct Pkg {
    level: usize,
    index: usize,
    path: PathBuf,
    /// Indexes (within level k-1) of the packages whose subpackages it
    /// BuildRequires.
    needs: Vec<usize>,
}

/// Indexes of level k-1 that package `j` of level k ≥ 1 needs: its own
/// column, and for an odd `j` the column before as well (one or two).
fn needs_of(j: usize) -> Vec<usize> {
    if j % 2 == 1 {
        vec![j - 1, j]
    } else {
        vec![j]
    }
}

fn lib_name(k: usize, j: usize) -> String {
    format!("kbb-lib-{k}-{j}")
}

fn spec_text(k: usize, j: usize, needs: &[usize], build_ms: u64) -> String {
    let lib = lib_name(k, j);
    let mut s = format!(
        "Name: kbb-{k}-{j}\nVersion: 1.0\nRelease: 1\nSummary: kiln bench-batch level {k} package {j}\n\
         License: MIT\nBuildArch: noarch\n"
    );
    if k > 0 {
        for n in needs {
            s.push_str(&format!("BuildRequires: {}\n", lib_name(k - 1, *n)));
        }
    }
    s.push_str(&format!(
        "\n%description\nLevel {k}, package {j} of kiln bench-batch's chain.\n\n\
         %package -n {lib}\nSummary: what kbb-{k}-{j} makes\n\n\
         %description -n {lib}\nThe one file of kbb-{k}-{j}.\n\n%prep\n\n%build\n"
    ));
    if build_ms > 0 {
        s.push_str(&format!(
            "sleep {}.{:03}\n",
            build_ms / 1000,
            build_ms % 1000
        ));
    }
    s.push_str(&format!(
        "echo {lib} > {lib}.txt\n\n%install\nmkdir -p %{{buildroot}}/usr/share/kbb\n\
         install -m 0644 {lib}.txt %{{buildroot}}/usr/share/kbb/{lib}.txt\n\n\
         %files -n {lib}\n/usr/share/kbb/{lib}.txt\n"
    ));
    s
}

/// Makes the chain's SRPMs with `rpmbuild -bs` (argument vectors only).
fn make_srpms(dir: &Path, levels: usize, width: usize, build_ms: u64) -> anyhow::Result<Vec<Pkg>> {
    let specs = dir.join("specs");
    let top = dir.join("rpmbuild");
    std::fs::create_dir_all(&specs).with_context(|| format!("creating {}", specs.display()))?;
    let mut out = Vec::new();
    for k in 0..levels {
        for j in 0..width {
            let needs = if k == 0 { Vec::new() } else { needs_of(j) };
            let spec = specs.join(format!("kbb-{k}-{j}.spec"));
            std::fs::write(&spec, spec_text(k, j, &needs, build_ms))
                .with_context(|| format!("writing {}", spec.display()))?;
            let path = crate::up::rpmbuild_bs(
                &spec,
                &[
                    "--nodeps".into(),
                    "--define".into(),
                    format!("_topdir {}", top.display()).into(),
                ],
            )?;
            out.push(Pkg {
                level: k,
                index: j,
                path,
                needs,
            });
        }
    }
    Ok(out)
}

/// What the event stream said of one build, on this process's clock.
#[derive(Default, Clone)]
struct Times {
    /// Its job was first assigned to the worker.
    assigned: Option<Instant>,
    /// Its job was first running (the worker's Accepted committed).
    running: Option<Instant>,
    /// Its job ended (succeeded, failed or canceled).
    ended: Option<Instant>,
    published: Option<Instant>,
    /// Why it will not be published.
    failed: Option<String>,
}

#[derive(Default)]
struct Seen {
    builds: HashMap<i64, Times>,
    lagged: u64,
}

type Events = crate::bench::Watched<Seen>;

impl Events {
    /// Waits until every build of `ids` is published; fails at once when
    /// one of them cannot be.
    async fn wait_published(&self, ids: &[i64]) -> anyhow::Result<()> {
        self.wait(|s| {
            if s.lagged > 0 {
                return Some(Err(anyhow::anyhow!(
                    "the event stream lagged ({} events missed): the figures would be wrong",
                    s.lagged
                )));
            }
            let mut all = true;
            for id in ids {
                let t = s.builds.get(id);
                if let Some(why) = t.and_then(|t| t.failed.as_ref()) {
                    return Some(Err(anyhow::anyhow!(
                        "build {id} will not be published: {why}"
                    )));
                }
                all &= t.is_some_and(|t| t.published.is_some());
            }
            all.then_some(Ok(()))
        })
        .await
    }
}

/// Reads the master's event stream in a task until the stream ends; returns
/// once the master has said `subscribed` (every later event is seen).
async fn follow_events(c: &Client) -> anyhow::Result<Arc<Events>> {
    let ev = Events::new();
    let ev2 = ev.clone();
    crate::bench::follow_stream(c, move |e, now| {
        ev2.update(|s| match e {
            Event::Subscribed => {}
            Event::Lagged { missed } => s.lagged += missed,
            Event::Job { build, state, .. } => {
                let t = s.builds.entry(build).or_default();
                match state {
                    JobState::Assigned => {
                        t.assigned.get_or_insert(now);
                    }
                    JobState::Running => {
                        t.running.get_or_insert(now);
                    }
                    JobState::Succeeded => {
                        t.ended.get_or_insert(now);
                    }
                    JobState::Failed | JobState::Canceled => {
                        t.ended.get_or_insert(now);
                        t.failed.get_or_insert(format!("its job {state}"));
                    }
                    JobState::Pending => {}
                }
            }
            Event::Build { build, state } => {
                if matches!(
                    state,
                    BuildState::Failed | BuildState::Canceled | BuildState::Skipped
                ) {
                    s.builds
                        .entry(build)
                        .or_default()
                        .failed
                        .get_or_insert(format!("build {state}"));
                }
            }
            Event::Publish { build, state } => {
                let t = s.builds.entry(build).or_default();
                match state {
                    PublishState::Published => {
                        t.published.get_or_insert(now);
                    }
                    PublishState::Failed => {
                        t.failed.get_or_insert("publication failed".into());
                    }
                    PublishState::Pending => {}
                }
            }
        })
    })
    .await?;
    Ok(ev)
}

/// `PUT /api/v1/blobs/<sha256>` of one SRPM; returns its sha256.
async fn upload(c: &Client, path: &Path) -> anyhow::Result<String> {
    let (sha, size) = kiln_core::fsutil::sha256_file(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let bytes = tokio::fs::read(path)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    let rb = c
        .http
        .put(c.url(&format!("/api/v1/blobs/{sha}")))
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(bytes);
    let info: BlobInfo = c
        .send(rb)
        .await?
        .json()
        .await
        .context("reading the master's answer to an upload")?;
    if info.sha256 != sha {
        bail!("the master kept {} for {}", info.sha256, path.display());
    }
    Ok(sha)
}

/// Waits until the master sees `n` connected workers.
async fn wait_connected(c: &Client, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ws: Vec<WorkerView> = c.get("/api/v1/workers").await?;
        let now = ws.iter().filter(|w| w.connected).count();
        if now >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{now} of {n} workers connected after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value at percentile `p` (nearest rank) of sorted `v`.
fn pct(v: &[f64], p: usize) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = (v.len() * p).div_ceil(100).max(1);
    v[rank.min(v.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// `median X s, p90 Y s, max Z s` of `v` (seconds).
fn spread(v: &[f64]) -> String {
    let v = sorted(v.to_vec());
    format!(
        "median {:.3} s, p90 {:.3} s, max {:.3} s",
        pct(&v, 50),
        pct(&v, 90),
        pct(&v, 100)
    )
}

pub async fn bench_batch(a: BenchBatchArgs) -> anyhow::Result<i32> {
    if a.levels == 0 || a.width == 0 || a.slots == 0 {
        bail!("--levels, --width and --slots must be at least 1");
    }
    if a.levels * a.width > kiln_master::batch::MAX_BATCH {
        bail!(
            "a batch takes at most {} SRPMs",
            kiln_master::batch::MAX_BATCH
        );
    }
    in_temp_dir("kiln-bench-batch", a.keep, |tmp| async move {
        run(&a, &tmp).await
    })
    .await
}

/// Run a bench in a fresh directory under the temporary directory
/// (`PREFIX-PID-MS`), deleted at the end unless `keep`.
pub(crate) async fn in_temp_dir<F, Fut>(prefix: &str, keep: bool, f: F) -> anyhow::Result<i32>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<i32>>,
{
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let tmp = std::env::temp_dir().join(format!("{prefix}-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let r = f(tmp.clone()).await;
    if keep {
        println!("data kept in {}", tmp.display());
    } else {
        remove(&tmp).await;
    }
    r
}

/// Deletes the bench's directory. The master's tasks still run in this
/// process (the store is closed, but a publication or the syncer may be
/// finishing), so a file can appear while it is deleted: tried again a few
/// times.
async fn remove(dir: &Path) {
    let mut last = None;
    for _ in 0..10 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(e) = last {
        eprintln!("bench-batch: cannot remove {}: {e}", dir.display());
    }
}

async fn run(a: &BenchBatchArgs, tmp: &Path) -> anyhow::Result<i32> {
    let t = Instant::now();
    let (levels, width, build_ms) = (a.levels, a.width, a.build_ms);
    let srpm_dir = tmp.join("srpms");
    let pkgs = tokio::task::spawn_blocking(move || make_srpms(&srpm_dir, levels, width, build_ms))
        .await
        .context("making the SRPMs")??;
    let expected_waits: usize = pkgs.iter().map(|p| p.needs.len()).sum();
    println!(
        "made {} SRPMs with rpmbuild -bs ({} levels x {}, {} BuildRequires on the level below) in {:.1} s",
        pkgs.len(),
        a.levels,
        a.width,
        expected_waits,
        t.elapsed().as_secs_f64()
    );

    let farm = Farm::start(tmp, a.slots, "bench-batch").await?;
    let r = measure(a, &farm.c, &pkgs).await;
    farm.stop().await;
    r
}

/// A master (one target, host builds) and one real worker (the rpmbuild
/// backend in bubblewrap) in this process.
pub(crate) struct Farm {
    pub m: kiln_master::Master,
    pub c: Client,
    stop_tx: watch::Sender<bool>,
    worker: tokio::task::JoinHandle<Result<(), kiln_worker::WorkerError>>,
}

impl Farm {
    pub(crate) async fn start(tmp: &Path, slots: u32, name: &str) -> anyhow::Result<Farm> {
        let host_arch = kiln_core::names::host_arch().to_string();
        let mut cfg = MasterConfig {
            data: tmp.join("master"),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            worker_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            targets: vec![Target {
                name: TARGET.into(),
                disttag: String::new(),
                arches: vec![host_arch.clone()],
                channel: "default".into(),
                keep: 1,
                sign_key: None,
                tosign_dir: None,
                buildroot: None,
                implicit: false,
            }],
            ..Default::default()
        };
        cfg.validate().context("the bench's master settings")?;
        let m = crate::settings::start_master(cfg).await?;
        let c = Client::new(
            &format!("http://{}", m.api_addr),
            Some(m.core.admin_token.clone()),
        )?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let worker = start_worker(
            slots,
            name,
            &c,
            &format!("https://{}", m.worker_addr),
            tmp,
            &host_arch,
            stop_rx,
        )
        .await;
        match worker {
            Ok(worker) => Ok(Farm {
                m,
                c,
                stop_tx,
                worker,
            }),
            Err(e) => {
                crate::settings::stop_store(&m.core.store).await;
                Err(e)
            }
        }
    }

    /// Let the worker close its session, then close the master's store.
    pub(crate) async fn stop(self) {
        let _ = self.stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.worker).await;
        crate::settings::stop_store(&self.m.core.store).await;
    }
}

/// Enrolls and starts the one worker (real rpmbuild backend in bubblewrap)
/// and waits until the master sees it.
async fn start_worker(
    slots: u32,
    name: &str,
    c: &Client,
    worker_url: &str,
    tmp: &Path,
    host_arch: &str,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), kiln_worker::WorkerError>>> {
    let name = name.to_string();
    let t: TokenResponse = c
        .post(
            "/api/v1/tokens",
            &TokenRequest {
                worker: name.clone(),
            },
        )
        .await?;
    let dir = tmp.join("worker");
    kiln_worker::enroll::enroll(worker_url, &t.token, &dir)
        .await
        .context("enrolling the bench's worker")?;
    let cfg = kiln_worker::WorkerConfig {
        work: dir.join("work"),
        dir,
        name: Some(name),
        master: None,
        arches: vec![host_arch.to_string()],
        channels: vec!["default".into()],
        capacity: slots,
        // What a default worker runs on this host: its rpm database cannot
        // resolve /bin/sh (Debian), so --nodeps; the sandbox is on.
        backend: Arc::new(Rpmbuild {
            nodeps: true,
            sandbox: Sandbox::On,
        }),
        announce: false,
        dnf_cache_mb: 1024,
        no_host_builds: false,
        git_ssh_key: None,
    };
    let h = tokio::spawn(kiln_worker::run(cfg, stop));
    wait_connected(c, 1).await?;
    println!(
        "master and 1 worker in this process: rpmbuild backend (--nodeps, bubblewrap), {slots} slots"
    );
    Ok(h)
}

/// Uploads, submits the batch, follows it to its last publication and
/// prints the figures.
async fn measure(a: &BenchBatchArgs, c: &Client, pkgs: &[Pkg]) -> anyhow::Result<i32> {
    let t = Instant::now();
    // Submitted deepest level first: the order must come from the graph.
    let order: Vec<&Pkg> = pkgs.iter().rev().collect();
    let mut builds = Vec::with_capacity(order.len());
    for p in &order {
        let sha = upload(c, &p.path).await?;
        let name = p
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no usable file name", p.path.display()))?
            .to_string();
        builds.push(SubmitRequest {
            srpm_sha256: sha,
            srpm_name: name,
            ..Default::default()
        });
    }
    println!(
        "uploaded {} SRPMs in {:.2} s",
        order.len(),
        t.elapsed().as_secs_f64()
    );
    let ev = follow_events(c).await?;
    let req = BatchRequest {
        target: Some(TARGET.into()),
        builds,
        chain: None,
    };
    let t0 = Instant::now();
    let done: BatchSubmitted = c.post("/api/v1/batches", &req).await?;
    let answered = Instant::now();
    if done.builds.len() != order.len() {
        bail!(
            "the batch answered {} builds for {} SRPMs",
            done.builds.len(),
            order.len()
        );
    }
    // Which build is which package, and whether the master found the
    // waits the specs imply.
    let mut id_of: HashMap<(usize, usize), i64> = HashMap::new();
    for (p, b) in order.iter().zip(&done.builds) {
        id_of.insert((p.level, p.index), b.id);
    }
    let mut waits: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut level_of: HashMap<i64, usize> = HashMap::new();
    for (p, b) in order.iter().zip(&done.builds) {
        let mut want = BTreeSet::new();
        for n in &p.needs {
            if let Some(id) = p.level.checked_sub(1).and_then(|k| id_of.get(&(k, *n))) {
                want.insert(*id);
            }
        }
        let got: BTreeSet<i64> = b.waits_for.iter().copied().collect();
        if got != want {
            bail!(
                "build {} ({}) waits for {:?}, its spec needs {:?}",
                b.id,
                b.package,
                got,
                want
            );
        }
        let expect_state = if want.is_empty() {
            BuildState::Queued
        } else {
            BuildState::Waiting
        };
        if b.state != expect_state && !(want.is_empty() && b.state == BuildState::Building) {
            bail!("build {} ({}) is {} at submit", b.id, b.package, b.state);
        }
        waits.insert(b.id, b.waits_for.clone());
        level_of.insert(b.id, p.level);
    }
    let waiting = waits.values().filter(|w| !w.is_empty()).count();
    println!(
        "batch {} of {} builds submitted in {:.3} s (it includes what the worker said of each \
         spec: rpm -i and rpmspec -q in the sandbox); the master found all {} waits: {} builds \
         waiting",
        done.batch,
        done.builds.len(),
        answered.duration_since(t0).as_secs_f64(),
        waits.values().map(Vec::len).sum::<usize>(),
        waiting
    );
    let ids: Vec<i64> = done.builds.iter().map(|b| b.id).collect();
    tokio::time::timeout(Duration::from_secs(a.timeout_secs), ev.wait_published(&ids))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the batch was not all published within {} s",
                a.timeout_secs
            )
        })??;
    let times: HashMap<i64, Times> = {
        let s = ev.get();
        ids.iter()
            .map(|id| (*id, s.builds.get(id).cloned().unwrap_or_default()))
            .collect()
    };
    report(a, t0, answered, &ids, &waits, &level_of, &times)?;
    Ok(0)
}

/// Seconds from `t0` to `t`.
fn since(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64()
}

fn report(
    a: &BenchBatchArgs,
    t0: Instant,
    answered: Instant,
    ids: &[i64],
    waits: &HashMap<i64, Vec<i64>>,
    level_of: &HashMap<i64, usize>,
    times: &HashMap<i64, Times>,
) -> anyhow::Result<()> {
    let get = |id: i64| -> anyhow::Result<(Instant, Instant, Instant, Instant)> {
        let t = times.get(&id).context("a build without events")?;
        let running = t
            .running
            .with_context(|| format!("build {id}: no `running` event"))?;
        Ok((
            t.assigned.unwrap_or(running),
            running,
            t.ended
                .with_context(|| format!("build {id}: no end of its job"))?,
            t.published
                .with_context(|| format!("build {id}: not published"))?,
        ))
    };
    let mut dur: HashMap<i64, f64> = HashMap::new();
    let mut last_pub = t0;
    let mut to_publish = Vec::new();
    for id in ids {
        let (_, run, end, publ) = get(*id)?;
        dur.insert(*id, end.saturating_duration_since(run).as_secs_f64());
        to_publish.push(since(end, publ));
        last_pub = last_pub.max(publ);
    }
    // The longest chain of build durations (waits_for is acyclic; levels
    // ascend along it).
    let mut by_level: Vec<i64> = ids.to_vec();
    by_level.sort_by_key(|id| level_of.get(id).copied().unwrap_or(0));
    let mut path: HashMap<i64, (f64, usize)> = HashMap::new();
    for id in &by_level {
        let before = waits
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|d| path.get(d).copied())
            .fold((0.0, 0), |m: (f64, usize), p| if p.0 > m.0 { p } else { m });
        let own = dur.get(id).copied().unwrap_or(0.0);
        path.insert(*id, (before.0 + own, before.1 + 1));
    }
    let (critical, critical_n) =
        path.values()
            .copied()
            .fold((0.0, 0), |m: (f64, usize), p| if p.0 > m.0 { p } else { m });
    // Publication of the last dependency -> the dependent's job.
    let mut to_running = Vec::new();
    let mut to_assigned = Vec::new();
    for id in ids {
        let Some(deps) = waits.get(id).filter(|d| !d.is_empty()) else {
            continue;
        };
        let mut released = t0;
        for d in deps {
            released = released.max(get(*d)?.3);
        }
        let (assigned, running, _, _) = get(*id)?;
        to_running.push(since(released, running));
        to_assigned.push(since(released, assigned));
    }
    let wall = since(t0, last_pub);
    let sum: f64 = dur.values().sum();
    let levels = level_of.values().copied().max().map_or(0, |l| l + 1);
    println!();
    println!(
        "builds: {} in {} levels of {} (worker: {} slots; each %build sleeps {} ms)",
        ids.len(),
        levels,
        a.width,
        a.slots,
        a.build_ms
    );
    println!(
        "submit (POST /api/v1/batches until answered): {:.3} s",
        since(t0, answered)
    );
    println!("wall time, submit -> last publication: {wall:.2} s");
    println!(
        "sum of build durations (job running -> job ended, on the event stream): {:.2} s \
         ({:.2}x the wall time; per build {})",
        sum,
        sum / wall,
        spread(&dur.values().copied().collect::<Vec<_>>())
    );
    let submit = since(t0, answered);
    let rest = wall - submit - critical;
    println!(
        "critical path (longest chain of build durations): {critical:.2} s over {critical_n} \
         builds; wall time = submit {submit:.2} s + critical path {critical:.2} s + the rest \
         {rest:.2} s ({:.2} s per level: publication, release, start)",
        rest / levels.max(1) as f64
    );
    println!(
        "job ended -> build published ({} builds): {}",
        to_publish.len(),
        spread(&to_publish)
    );
    let max = sorted(to_running.clone()).last().copied().unwrap_or(0.0);
    println!(
        "publication of the last build waited for -> the dependent's job running ({} builds): \
         {} (goal <= 1 s: {})",
        to_running.len(),
        spread(&to_running),
        if max <= 1.0 { "met" } else { "NOT met" }
    );
    println!(
        "  the same to the job's assignment (sent to the worker): {}",
        spread(&to_assigned)
    );
    // Per level, seconds after submit.
    println!("per level (s after submit): first running, last ended, last published");
    for l in 0..levels {
        let mut first_run = f64::INFINITY;
        let (mut last_end, mut last_p) = (0.0f64, 0.0f64);
        for id in ids.iter().filter(|id| level_of.get(id) == Some(&l)) {
            let (_, run, end, publ) = get(*id)?;
            first_run = first_run.min(since(t0, run));
            last_end = last_end.max(since(t0, end));
            last_p = last_p.max(since(t0, publ));
        }
        println!("  level {l}: {first_run:>7.3} {last_end:>7.3} {last_p:>7.3}");
    }
    if a.per_build {
        println!(
            "per build (s after submit): level, assigned, running, ended, published, waits for"
        );
        for id in &by_level {
            let (asg, run, end, publ) = get(*id)?;
            println!(
                "  build {id:>4}  level {}  {:>7.3} {:>7.3} {:>7.3} {:>7.3}  {:?}",
                level_of.get(id).copied().unwrap_or(0),
                since(t0, asg),
                since(t0, run),
                since(t0, end),
                since(t0, publ),
                waits.get(id).cloned().unwrap_or_default()
            );
        }
    }
    Ok(())
}
