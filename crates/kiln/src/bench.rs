//! `kiln bench`: figures for the scheduling spine. A real `kiln master`
//! child process (so its memory can be read alone), worker connections over
//! the real mTLS protocol in this process with the no-op backend, and
//! submissions over the HTTP API. See BENCHMARKS.md.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::{watch, Notify, Semaphore};

use crate::client::Client;

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
    /// Jobs queued behind another channel for the loaded latency run.
    #[arg(long, default_value_t = 100_000)]
    queued: usize,
    /// Total worker connections for the memory figure.
    #[arg(long, default_value_t = 1000)]
    memory_workers: usize,
    /// Master durability (`full` fsyncs every group commit).
    #[arg(long, default_value = "full")]
    durability: String,
}

struct Master {
    child: std::process::Child,
    api: String,
    worker_url: String,
    token: String,
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_master(data: &Path, durability: &str) -> anyhow::Result<Master> {
    let exe = std::env::current_exe().context("finding the kiln binary")?;
    let mut child = std::process::Command::new(exe)
        .args([
            "master",
            "--api-listen",
            "127.0.0.1:0",
            "--worker-listen",
            "127.0.0.1:0",
        ])
        .arg("--data")
        .arg(data)
        .args(["--durability", durability])
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

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// Arrival times of job events seen on the master's event stream.
#[derive(Default)]
struct Seen {
    running: HashMap<i64, Instant>,
    succeeded: HashMap<i64, Instant>,
}

struct Events {
    seen: Mutex<Seen>,
    notify: Notify,
}

impl Events {
    fn get(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
    async fn wait_succeeded(&self, job: i64) -> Instant {
        loop {
            let n = self.notify.notified();
            if let Some(t) = self.get().succeeded.get(&job) {
                return *t;
            }
            n.await;
        }
    }
    async fn wait_count(&self, count: usize) {
        loop {
            let n = self.notify.notified();
            if self.get().succeeded.len() >= count {
                return;
            }
            n.await;
        }
    }
}

async fn follow_events(c: &Client) -> anyhow::Result<Arc<Events>> {
    let resp = c.send(c.http.get(c.url("/api/v1/events"))).await?;
    let ev = Arc::new(Events {
        seen: Mutex::new(Seen::default()),
        notify: Notify::new(),
    });
    let ev2 = ev.clone();
    let (ready_tx, mut ready_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            let now = Instant::now();
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                if v["kind"] == "subscribed" {
                    let _ = ready_tx.send(true);
                }
                if v["kind"] == "lagged" {
                    eprintln!("bench: event stream lagged");
                }
                if v["kind"] != "job" {
                    continue;
                }
                let job = v["job"].as_i64().unwrap_or(0);
                let mut s = ev2.get();
                match v["state"].as_str() {
                    Some("running") => {
                        s.running.entry(job).or_insert(now);
                    }
                    Some("succeeded") => {
                        s.succeeded.entry(job).or_insert(now);
                    }
                    _ => {}
                }
                drop(s);
                ev2.notify.notify_waiters();
            }
        }
    });
    while !*ready_rx.borrow_and_update() {
        ready_rx.changed().await.context("event stream ended")?;
    }
    Ok(ev)
}

async fn submit(c: &Client, sha: &str, channel: &str) -> anyhow::Result<i64> {
    let body = serde_json::json!({
        "srpm_sha256": sha, "srpm_name": "hello-kiln-1.0-1.src.rpm", "channel": channel,
        "scratch": true,
    });
    let v: Value = c.post("/api/v1/builds", &body).await?;
    v["jobs"][0]["id"].as_i64().context("no job id")
}

async fn latency(c: &Client, ev: &Events, sha: &str, samples: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t0 = Instant::now();
        let job = submit(c, sha, "default").await?;
        let done = ev.wait_succeeded(job).await;
        let started = ev.get().running.get(&job).copied().unwrap_or(done);
        out.push(started.duration_since(t0).as_secs_f64() * 1000.0);
    }
    out.sort_by(|a, b| a.total_cmp(b));
    Ok(out)
}

fn pct(v: &[f64], p: usize) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[(v.len() * p / 100).min(v.len() - 1)]
}

async fn spawn_workers(
    c: &Client,
    master: &Master,
    base: &Path,
    from: usize,
    to: usize,
    slots: u32,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    for i in from..to {
        let name = format!("bench{i}");
        let v: Value = c
            .post("/api/v1/tokens", &serde_json::json!({ "worker": name }))
            .await?;
        let token = v["token"].as_str().context("no token")?;
        let dir = base.join(&name);
        kiln_worker::enroll::enroll(&master.worker_url, token, &dir).await?;
        let cfg = kiln_worker::WorkerConfig {
            work: dir.join("work"),
            dir,
            name: Some(name),
            master: None,
            arches: vec!["x86_64".into(), "noarch".into()],
            channels: vec!["default".into()],
            capacity: slots,
            backend: Arc::new(kiln_worker::backend::Noop),
            announce: false,
        };
        tokio::spawn(kiln_worker::run(cfg, stop.clone()));
    }
    // Wait until the master sees them all.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ws: Vec<Value> = c.get("/api/v1/workers").await?;
        let n = ws.iter().filter(|w| w["connected"] == true).count();
        if n >= to {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {n} of {to} workers connected");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn submit_many(
    c: &Arc<Client>,
    sha: &str,
    channel: &str,
    n: usize,
    parallel: usize,
) -> anyhow::Result<()> {
    let sem = Arc::new(Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (c, sha, channel) = (c.clone(), sha.to_string(), channel.to_string());
        tasks.push(tokio::spawn(async move {
            let r = submit(&c, &sha, &channel).await;
            drop(permit);
            r
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

pub async fn bench(a: BenchArgs) -> anyhow::Result<i32> {
    let tmp = std::env::temp_dir().join(format!("kiln-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let r = run(&a, &tmp).await;
    let _ = std::fs::remove_dir_all(&tmp);
    r
}

async fn run(a: &BenchArgs, tmp: &Path) -> anyhow::Result<i32> {
    let srpm: PathBuf = crate::up::make_srpms(&tmp.join("examples"))?
        .into_iter()
        .find(|p| p.to_string_lossy().contains("hello-kiln"))
        .context("no noarch example")?;
    let master = start_master(&tmp.join("master"), &a.durability)?;
    let pid = master.child.id();
    let c = Arc::new(Client::new(&master.api, Some(master.token.clone()))?);
    // Upload the SRPM once; every build below reuses it by sha256.
    let args = crate::commands::SubmitArgs {
        file: srpm,
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
    let (b, _) = crate::commands::submit_with(&c, &args).await?;
    let sha = b["srpm_sha256"].as_str().context("no sha")?.to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_kib(pid)?;
    println!("master idle RSS: {:.1} MiB", idle_rss as f64 / 1024.0);

    let (stop_tx, stop_rx) = watch::channel(false);
    let wbase = tmp.join("workers");
    spawn_workers(&c, &master, &wbase, 0, a.workers, a.slots, &stop_rx).await?;
    println!("{} workers x {} slots connected", a.workers, a.slots);
    let ev = follow_events(&c).await?;

    // Warm up (each worker caches the SRPM once).
    submit_many(&c, &sha, "default", a.workers * a.slots as usize * 2, 32).await?;
    ev.wait_count(a.workers * a.slots as usize * 2).await;

    let idle = latency(&c, &ev, &sha, a.samples).await?;
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
        "queued {} jobs on channel `elsewhere` in {:.1} s",
        a.queued,
        t0.elapsed().as_secs_f64()
    );
    let loaded = latency(&c, &ev, &sha, a.samples).await?;
    println!(
        "submit-to-start latency with {} queued elsewhere: p50 {:.2} ms ({:.2}x idle), p99 {:.2} ms",
        a.queued,
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
    if a.memory_workers > a.workers {
        spawn_workers(
            &c,
            &master,
            &wbase,
            a.workers,
            a.memory_workers,
            a.slots,
            &stop_rx,
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
    }
    // Let the workers drain and close before the master goes away.
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(0)
}
