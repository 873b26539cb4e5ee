//! `kiln bench`: figures for the scheduling spine. A real `kiln master`
//! child process (so its memory and CPU time can be read alone), worker
//! connections over the real mTLS protocol in this process with the no-op
//! backend, and submissions over the HTTP API. See BENCHMARKS.md.
//!
//! The data directory is a fresh one under the temporary directory, deleted
//! by a detached `rm -rf` once the figures are printed (deleting hundreds of
//! thousands of files takes minutes on a slow disk), or one given with
//! `--keep`, which stays.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures_util::StreamExt;
use kiln_api::{
    BuildView, Event, JobState, SubmitRequest, TokenRequest, TokenResponse, WorkerView,
};
use tokio::sync::{watch, Notify, Semaphore};

use crate::client::Client;
use kiln_worker::backend::{Backend, BackendError, BoxFuture, JobSpec, LogSink, Noop, Outcome};

#[derive(Args)]
pub struct BenchArgs {
    /// Worker connections.
    #[arg(long, default_value_t = 20)]
    workers: usize,
    /// Slots per worker.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Latency samples per measurement.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// Jobs for the throughput run.
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Jobs queued on another channel (one no worker serves) for the
    /// isolation latency run.
    #[arg(long, default_value_t = 100_000)]
    queued: usize,
    /// Jobs queued on the workers' own channel and arch for the deep-queue
    /// run (0: skip it): `--now` latency while the workers work through
    /// them, and the drain rate when the queue is deep and when it is
    /// shallow.
    #[arg(long, default_value_t = 100_000)]
    deep: usize,
    /// Seconds over which the master's idle CPU time is measured, after the
    /// latency and throughput runs, with the workers connected and idle:
    /// once with --workers, once with --memory-workers (0: skip it).
    #[arg(long, default_value_t = 30)]
    idle_secs: u64,
    /// Keep the data (master, workers) in DIR, which must be empty or
    /// absent, instead of deleting a temporary directory in the background.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Total worker connections for the memory figure.
    #[arg(long, default_value_t = 1000)]
    memory_workers: usize,
    /// Master durability (`full` fsyncs every group commit).
    #[arg(long, default_value = "full")]
    durability: String,
}

pub(crate) struct Master {
    pub(crate) child: std::process::Child,
    pub(crate) api: String,
    pub(crate) worker_url: String,
    pub(crate) token: String,
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_master(data: &Path, durability: &str) -> anyhow::Result<Master> {
    start_master_with(data, durability, "")
}

/// [`start_master`] with `config` (TOML, if not empty) as its config file.
pub(crate) fn start_master_with(
    data: &Path,
    durability: &str,
    config: &str,
) -> anyhow::Result<Master> {
    let exe = std::env::current_exe().context("finding the kiln binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "master",
        "--api-listen",
        "127.0.0.1:0",
        "--worker-listen",
        "127.0.0.1:0",
    ])
    .arg("--data")
    .arg(data)
    .args(["--durability", durability]);
    if !config.is_empty() {
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
        let cfg = data.join("bench.toml");
        std::fs::write(&cfg, config).with_context(|| format!("writing {}", cfg.display()))?;
        cmd.arg("--config").arg(cfg);
    }
    let mut child = cmd
        .env("KILN_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting kiln master")?;
    let out = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .context("reading the master's listening line")?;
    let mut api = None;
    let mut worker = None;
    for part in line.split_whitespace() {
        if let Some(v) = part.strip_prefix("api=") {
            api = Some(v.to_string());
        }
        if let Some(v) = part.strip_prefix("worker=") {
            worker = Some(v.to_string());
        }
    }
    let token = std::fs::read_to_string(data.join("admin.token"))
        .context("reading admin.token")?
        .trim()
        .to_string();
    Ok(Master {
        child,
        api: api.context("no api= in the listening line")?,
        worker_url: worker.context("no worker= in the listening line")?,
        token,
    })
}

pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// CPU time (user + system, all threads) the process `pid` has used, in
/// clock ticks: fields 14 and 15 of `/proc/PID/stat`.
pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let (_, rest) = stat.rsplit_once(')').context("no ) in /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (the state): utime is field 14, stime 15.
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no field {n} in /proc/{pid}/stat"))
    };
    Ok(field(14)? + field(15)?)
}

pub(crate) fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// The no-op backend behind a gate: while the gate is shut, a job waits
/// in the backend (accepted, holding its slot), so a queue can be filled
/// on the workers' own channel before any of it runs.
struct Gated {
    open: watch::Receiver<bool>,
}

impl Backend for Gated {
    fn name(&self) -> &'static str {
        "noop"
    }
    fn build<'a>(
        &'a self,
        spec: &'a JobSpec,
        dir: &'a Path,
        log: &'a dyn LogSink,
        cancel: watch::Receiver<bool>,
    ) -> BoxFuture<'a, Result<Outcome, BackendError>> {
        Box::pin(async move {
            let mut open = self.open.clone();
            let mut canceled = cancel.clone();
            // A closed channel (the bench is ending) opens the gate too.
            tokio::select! {
                _ = open.wait_for(|o| *o) => {}
                _ = canceled.wait_for(|c| *c) => {}
            }
            Noop.build(spec, dir, log, cancel).await
        })
    }
}

/// Arrival times of job events seen on the master's event stream.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) running: HashMap<i64, Instant>,
    pub(crate) succeeded: HashMap<i64, Instant>,
}

/// What a bench has seen on the event stream so far (`T`), and a wait
/// for what it expects to see.
pub(crate) struct Watched<T> {
    seen: Mutex<T>,
    notify: Notify,
}

impl<T: Default> Watched<T> {
    pub(crate) fn new() -> Arc<Watched<T>> {
        Arc::new(Watched {
            seen: Mutex::new(T::default()),
            notify: Notify::new(),
        })
    }

    pub(crate) fn get(&self) -> std::sync::MutexGuard<'_, T> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Change what was seen, and wake the waits.
    pub(crate) fn update(&self, f: impl FnOnce(&mut T)) {
        f(&mut self.get());
        self.notify.notify_waiters();
    }

    /// Wait until `f` finds what it looks for in what was seen.
    pub(crate) async fn wait<R>(&self, mut f: impl FnMut(&T) -> Option<R>) -> R {
        loop {
            let n = self.notify.notified();
            if let Some(r) = f(&self.get()) {
                return r;
            }
            n.await;
        }
    }
}

pub(crate) type Events = Watched<Seen>;

impl Events {
    pub(crate) async fn wait_succeeded(&self, job: i64) -> Instant {
        self.wait(|s| s.succeeded.get(&job).copied()).await
    }
    pub(crate) async fn wait_count(&self, count: usize) {
        self.wait(|s| (s.succeeded.len() >= count).then_some(()))
            .await
    }
}

/// Reads the master's event stream in a task until it ends, handing every
/// event and the time it arrived to `on`; returns once the master has said
/// `subscribed` (every later event is seen). A line this program does not
/// know (a newer master) is skipped.
pub(crate) async fn follow_stream(
    c: &Client,
    mut on: impl FnMut(Event, Instant) + Send + 'static,
) -> anyhow::Result<()> {
    let resp = c.send(c.http.get(c.url("/api/v1/events"))).await?;
    let (ready_tx, mut ready_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            let now = Instant::now();
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                match serde_json::from_slice::<Event>(&line) {
                    Ok(Event::Subscribed) => {
                        let _ = ready_tx.send(true);
                    }
                    Ok(e) => on(e, now),
                    Err(_) => {}
                }
            }
        }
    });
    while !*ready_rx.borrow_and_update() {
        ready_rx.changed().await.context("event stream ended")?;
    }
    Ok(())
}

pub(crate) async fn follow_events(c: &Client) -> anyhow::Result<Arc<Events>> {
    let ev = Events::new();
    let ev2 = ev.clone();
    follow_stream(c, move |e, now| {
        let (job, state) = match e {
            Event::Lagged { .. } => {
                eprintln!("bench: event stream lagged");
                return;
            }
            Event::Job { job, state, .. } => (job, state),
            _ => return,
        };
        ev2.update(|s| match state {
            JobState::Running => {
                s.running.entry(job).or_insert(now);
            }
            JobState::Succeeded => {
                s.succeeded.entry(job).or_insert(now);
            }
            _ => {}
        });
    })
    .await?;
    Ok(ev)
}

/// Submits a scratch build of the example SRPM; `now` puts it ahead of
/// everything submitted without. Returns its job's id.
pub(crate) async fn submit(c: &Client, sha: &str, channel: &str, now: bool) -> anyhow::Result<i64> {
    let req = SubmitRequest {
        srpm_sha256: sha.to_string(),
        srpm_name: "hello-kiln-1.0-1.src.rpm".into(),
        channel: Some(channel.to_string()),
        scratch: true,
        now,
        ..Default::default()
    };
    let b: BuildView = c.post("/api/v1/builds", &req).await?;
    Ok(b.jobs.first().context("no job in the build")?.id)
}

/// Submit-to-start latencies in ms, sorted: one build at a time, each
/// waited for to the end.
pub(crate) async fn latency(
    c: &Client,
    ev: &Events,
    sha: &str,
    samples: usize,
    now: bool,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t0 = Instant::now();
        let job = submit(c, sha, "default", now).await?;
        let done = ev.wait_succeeded(job).await;
        let started = ev.get().running.get(&job).copied().unwrap_or(done);
        out.push(started.duration_since(t0).as_secs_f64() * 1000.0);
    }
    out.sort_by(|a, b| a.total_cmp(b));
    Ok(out)
}

pub(crate) fn pct(v: &[f64], p: usize) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[(v.len() * p / 100).min(v.len() - 1)]
}

#[allow(clippy::too_many_arguments)]
async fn spawn_workers(
    c: &Client,
    master: &Master,
    base: &Path,
    from: usize,
    to: usize,
    slots: u32,
    stop: &watch::Receiver<bool>,
    gate: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    for i in from..to {
        let backend = Arc::new(Gated { open: gate.clone() });
        spawn_worker(
            c,
            master,
            base,
            &format!("bench{i}"),
            "default",
            slots,
            backend,
            stop,
        )
        .await?;
    }
    // Wait until the master sees them all.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ws: Vec<WorkerView> = c.get("/api/v1/workers").await?;
        let n = ws.iter().filter(|w| w.connected).count();
        if n >= to {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {n} of {to} workers connected");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Enrolls a worker `name` under `base` and runs it in this process with
/// `backend` (x86_64 and noarch, on `channel`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn spawn_worker(
    c: &Client,
    master: &Master,
    base: &Path,
    name: &str,
    channel: &str,
    slots: u32,
    backend: Arc<dyn Backend>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let req = TokenRequest {
        worker: name.to_string(),
    };
    let t: TokenResponse = c.post("/api/v1/tokens", &req).await?;
    let dir = base.join(name);
    kiln_worker::enroll::enroll(&master.worker_url, &t.token, &dir).await?;
    let cfg = kiln_worker::WorkerConfig {
        work: dir.join("work"),
        dir,
        name: Some(name.to_string()),
        master: None,
        arches: vec!["x86_64".into(), "noarch".into()],
        channels: vec![channel.to_string()],
        capacity: slots,
        backend,
        announce: false,
        dnf_cache_mb: 1024,
        no_host_builds: false,
        git_ssh_key: None,
    };
    tokio::spawn(kiln_worker::run(cfg, stop.clone()));
    Ok(())
}

/// Submits `n` builds, `parallel` at a time; returns their jobs' ids.
pub(crate) async fn submit_many(
    c: &Arc<Client>,
    sha: &str,
    channel: &str,
    n: usize,
    parallel: usize,
) -> anyhow::Result<Vec<i64>> {
    let sem = Arc::new(Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (c, sha, channel) = (c.clone(), sha.to_string(), channel.to_string());
        tasks.push(tokio::spawn(async move {
            let r = submit(&c, &sha, &channel, false).await;
            drop(permit);
            r
        }));
    }
    let mut ids = Vec::with_capacity(n);
    for t in tasks {
        ids.push(t.await??);
    }
    Ok(ids)
}

pub async fn bench(a: BenchArgs) -> anyhow::Result<i32> {
    let dir = match &a.keep {
        Some(d) => {
            let empty = match std::fs::read_dir(d) {
                Ok(mut entries) => entries.next().is_none(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => return Err(e).with_context(|| format!("reading {}", d.display())),
            };
            if !empty {
                bail!("{} is not empty: --keep wants a new directory", d.display());
            }
            d.clone()
        }
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            std::env::temp_dir().join(format!("kiln-bench-{}-{stamp}", std::process::id()))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The master is stopped when `run` returns, before anything is deleted.
    let r = run(&a, &dir).await;
    if a.keep.is_some() {
        println!("data kept in {}", dir.display());
    } else {
        remove_in_background(&dir);
    }
    r
}

/// Deletes `dir` with `rm -rf` in a detached process (its own session, at
/// the lowest CPU and I/O priority) so the bench ends at once; if `rm`
/// cannot be started, deletes it here.
pub(crate) fn remove_in_background(dir: &Path) {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("rm");
    cmd.arg("-rf")
        .arg("--")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: between fork and exec the closure makes only system calls
    // (setsid, setpriority, ioprio_set), which are async-signal-safe; their
    // failures leave the child in our session or at our priority, harmless.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            // IOPRIO_WHO_PROCESS, this process, IOPRIO_CLASS_IDLE.
            libc::syscall(libc::SYS_ioprio_set, 1, 0, 3 << 13);
            Ok(())
        });
    }
    match cmd.spawn() {
        // Not waited for: it outlives us and is reaped by init.
        Ok(child) => println!(
            "deleting {} in the background (pid {})",
            dir.display(),
            child.id()
        ),
        Err(e) => {
            eprintln!(
                "bench: cannot start rm ({e}); deleting {} now",
                dir.display()
            );
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Makes the noarch example SRPM under `tmp` and uploads it once (every
/// build of a bench reuses it by sha256); its sha256.
pub(crate) async fn upload_example(c: &Client, tmp: &Path) -> anyhow::Result<String> {
    let srpm: PathBuf = crate::up::make_srpms(&tmp.join("examples"))?
        .into_iter()
        .find(|p| p.to_string_lossy().contains("hello-kiln"))
        .context("no noarch example")?;
    let args = crate::commands::SubmitArgs {
        file: srpm,
        more: Vec::new(),
        batch: false,
        chain: false,
        target: None,
        arch: vec!["noarch".into()],
        channel: Some("warmup".into()),
        now: false,
        priority: None,
        scratch: true,
        ci: false,
        wait: false,
        json: false,
    };
    let (b, _) = crate::commands::submit_build(c, &args).await?;
    Ok(b.srpm_sha256)
}

async fn run(a: &BenchArgs, tmp: &Path) -> anyhow::Result<i32> {
    let master = start_master(&tmp.join("master"), &a.durability)?;
    let pid = master.child.id();
    let c = Arc::new(Client::new(&master.api, Some(master.token.clone()))?);
    let sha = upload_example(&c, tmp).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_kib(pid)?;
    println!("master idle RSS: {:.1} MiB", idle_rss as f64 / 1024.0);

    let (stop_tx, stop_rx) = watch::channel(false);
    let (gate_tx, gate_rx) = watch::channel(true);
    let wbase = tmp.join("workers");
    spawn_workers(
        &c, &master, &wbase, 0, a.workers, a.slots, &stop_rx, &gate_rx,
    )
    .await?;
    println!("{} workers x {} slots connected", a.workers, a.slots);
    let ev = follow_events(&c).await?;

    // Warm up (each worker caches the SRPM once).
    submit_many(&c, &sha, "default", a.workers * a.slots as usize * 2, 32).await?;
    ev.wait_count(a.workers * a.slots as usize * 2).await;

    let idle = latency(&c, &ev, &sha, a.samples, false).await?;
    println!(
        "submit-to-start latency, idle workers ({} samples): p50 {:.2} ms, p99 {:.2} ms",
        idle.len(),
        pct(&idle, 50),
        pct(&idle, 99)
    );

    let before = ev.get().succeeded.len();
    let t0 = Instant::now();
    submit_many(&c, &sha, "default", a.jobs, 64).await?;
    ev.wait_count(before + a.jobs).await;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "throughput: {} jobs submitted, run and recorded in {:.2} s = {:.0} jobs/s",
        a.jobs,
        secs,
        a.jobs as f64 / secs
    );

    let t0 = Instant::now();
    submit_many(&c, &sha, "elsewhere", a.queued, 64).await?;
    println!(
        "queued {} jobs on channel `elsewhere` (no worker serves it) in {:.1} s",
        a.queued,
        t0.elapsed().as_secs_f64()
    );
    let loaded = latency(&c, &ev, &sha, a.samples, false).await?;
    println!(
        "submit-to-start latency, {} jobs queued on another channel (isolation; {} samples): \
         p50 {:.2} ms ({:.2}x idle), p99 {:.2} ms",
        a.queued,
        loaded.len(),
        pct(&loaded, 50),
        pct(&loaded, 50) / pct(&idle, 50),
        pct(&loaded, 99)
    );
    let rss_loaded = rss_kib(pid)?;
    println!(
        "master RSS with {} workers and {} queued: {:.1} MiB",
        a.workers,
        a.queued,
        rss_loaded as f64 / 1024.0
    );
    if a.idle_secs > 0 {
        idle_cpu(pid, a.idle_secs, a.workers, a.queued).await?;
    }
    if a.memory_workers > a.workers {
        // Their own stop signal: they leave before the deep-queue run,
        // which runs on the same 20 workers as the throughput run.
        let (extra_stop_tx, extra_stop_rx) = watch::channel(false);
        spawn_workers(
            &c,
            &master,
            &wbase,
            a.workers,
            a.memory_workers,
            a.slots,
            &extra_stop_rx,
            &gate_rx,
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = rss_kib(pid)?;
        println!(
            "master RSS with {} connected workers and {} queued: {:.1} MiB",
            a.memory_workers,
            a.queued,
            rss as f64 / 1024.0
        );
        if a.idle_secs > 0 {
            idle_cpu(pid, a.idle_secs, a.memory_workers, a.queued).await?;
        }
        let _ = extra_stop_tx.send(true);
        wait_connected(&c, a.workers).await?;
    }
    // Last, as it leaves the master's heap grown by another 100,000 jobs
    // (freed memory is not given back to the system): the RSS figures above
    // would not be comparable after it.
    if a.deep > 0 {
        deep_queue(a, &c, &ev, &sha, &gate_tx).await?;
    }
    // Let the workers drain and close before the master goes away.
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(0)
}

/// Waits until exactly `n` workers are connected (the others have left).
pub(crate) async fn wait_connected(c: &Client, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ws: Vec<WorkerView> = c.get("/api/v1/workers").await?;
        let now = ws.iter().filter(|w| w.connected).count();
        if now == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{now} workers still connected, waiting for {n}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The deep-queue run: `--deep` jobs queued on the workers' own channel
/// and arch (the gate shut, so none runs while the queue fills and the
/// first ones hold every slot), then the gate opens and the workers work
/// through the queue. Meanwhile `--now` builds are submitted one at a
/// time: they must start ahead of the whole queue, at the next free slot.
/// Then the drain rate with the queue deep and with it shallow: the cost of
/// dispatch from a queue of that depth.
async fn deep_queue(
    a: &BenchArgs,
    c: &Arc<Client>,
    ev: &Events,
    sha: &str,
    gate: &watch::Sender<bool>,
) -> anyhow::Result<()> {
    let slots = a.workers * a.slots as usize;
    let before = ev.get().succeeded.len();
    let _ = gate.send(false);
    let t0 = Instant::now();
    let ids = submit_many(c, sha, "default", a.deep, 64).await?;
    println!(
        "queued {} jobs on channel `default`, arch noarch (the workers' own; the first {} \
         hold every slot) in {:.1} s",
        a.deep,
        slots.min(a.deep),
        t0.elapsed().as_secs_f64()
    );
    let _ = gate.send(true);
    let opened = Instant::now();
    let now = latency(c, ev, sha, a.samples, true).await?;
    let sampled = Instant::now();
    let left = {
        let s = ev.get();
        ids.iter().filter(|j| !s.succeeded.contains_key(j)).count()
    };
    println!(
        "submit-to-start latency of --now builds while the workers work through a queue of \
         {} on the same channel and arch ({} samples, {} to {} still queued or running): \
         p50 {:.2} ms, p99 {:.2} ms",
        a.deep,
        now.len(),
        a.deep,
        left,
        pct(&now, 50),
        pct(&now, 99)
    );
    let limit = Duration::from_secs(120 + a.deep as u64 / 100);
    let total = before + a.deep + now.len();
    if tokio::time::timeout(limit, ev.wait_count(total))
        .await
        .is_err()
    {
        let done = ev.get().succeeded.len().saturating_sub(before);
        bail!("the deep queue did not drain within {limit:?}: {done} of {total} jobs done");
    }
    let drained = opened.elapsed().as_secs_f64();
    println!(
        "drained {} jobs in {:.1} s = {:.0} jobs/s (a build without --now would have waited \
         for all of them)",
        a.deep,
        drained,
        a.deep as f64 / drained
    );
    let mut times: Vec<Instant> = {
        let s = ev.get();
        ids.iter()
            .filter_map(|j| s.succeeded.get(j).copied())
            .collect()
    };
    times.sort();
    // Tenths of the queue: the first one after the --now samples (deep)
    // against the last but one (shallow; the very last ones run on fewer
    // and fewer busy workers).
    let n = times.len();
    let k = n / 10;
    let first = times.partition_point(|t| *t <= sampled);
    if k < 10 || first + k > n - 2 * k {
        println!("drain rate: too few jobs to compare depths");
        return Ok(());
    }
    let rate = |from: usize| -> f64 {
        let secs = times[from + k - 1]
            .duration_since(times[from])
            .as_secs_f64();
        if secs > 0.0 {
            (k - 1) as f64 / secs
        } else {
            f64::INFINITY
        }
    };
    let (deep, shallow) = (rate(first), rate(n - 2 * k));
    println!(
        "drain rate, same channel and arch: {:.0} jobs/s with {} to {} left in the queue, \
         {:.0} jobs/s with {} to {} left ({:.2}x)",
        deep,
        n - first,
        n - first - k,
        shallow,
        2 * k,
        k,
        deep / shallow
    );
    Ok(())
}

/// The master's CPU time over `secs`, with every worker connected and
/// idle, as a share of one core.
async fn idle_cpu(pid: u32, secs: u64, workers: usize, queued: usize) -> anyhow::Result<()> {
    // Let the last commits and the syncer's syncfs settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hz = clock_ticks_per_sec();
    let (t0, c0) = (Instant::now(), cpu_ticks(pid)?);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (wall, c1) = (t0.elapsed().as_secs_f64(), cpu_ticks(pid)?);
    let cpu = c1.saturating_sub(c0) as f64 / hz as f64;
    println!(
        "master idle CPU over {:.0} s, {} workers connected and idle, {} jobs queued on a \
         channel no worker serves: {:.2} % of one core ({:.0} ms of CPU, clock tick {:.0} ms)",
        wall,
        workers,
        queued,
        cpu / wall * 100.0,
        cpu * 1000.0,
        1000.0 / hz as f64
    );
    Ok(())
}
