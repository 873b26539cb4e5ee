//! `kiln bench-notify`: the figures of notifications (issue 11). Real
//! `kiln master` children with `[[notify]]` webhook sinks, workers in this
//! process with the no-op backend, and the receivers in this process:
//!
//! (a) a build's state change → the webhook receiver has it: for each of
//!     `--builds` builds (one at a time), from the moment the build's
//!     `succeeded` arrives on `/api/v1/events` (published after the commit
//!     that wrote the outbox row) to the moment the receiver has read the
//!     request of `build.succeeded`;
//! (b) `--queued` events (`build.queued` of scratch builds on a channel no
//!     worker serves) for a sink whose port is closed: the master's RSS
//!     growth, beside the same submissions to a master without sinks (what
//!     the builds themselves cost); then the receiver starts on that port
//!     and the drain is timed (the first arrival waits for the sink's
//!     backoff; the rate is over first to last arrival);
//! (c) dispatch latency (submit → job running, `bench::latency`) on two
//!     masters at once, one with a sink that accepts TCP and never answers
//!     (every event, a 120 s attempt timeout), one without sinks, sampled
//!     alternately so both see the same machine; and a third master whose
//!     sink answers at once (what writing the outbox rows in the state
//!     change's commit costs, apart from the hanging).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use kiln_api::{BuildState, BuildView, Event, SubmitRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::bench::{
    clock_ticks_per_sec, cpu_ticks, follow_events, follow_stream, latency, pct,
    remove_in_background, rss_kib, spawn_worker, submit_many, upload_example, wait_connected,
    Watched,
};
use crate::client::Client;
use kiln_worker::backend::Noop;

#[derive(Args)]
pub struct BenchNotifyArgs {
    /// Builds for the state change → receiver latency (a).
    #[arg(long, default_value_t = 300)]
    builds: usize,
    /// Events queued for a down sink (b).
    #[arg(long, default_value_t = 10_000)]
    queued: usize,
    /// Dispatch latency samples per master (c).
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Master durability (`full` fsyncs every group commit).
    #[arg(long, default_value = "full")]
    durability: String,
    /// The events the hanging sink of (c) takes, comma-separated (default
    /// all). `worker.lost` alone: a sink that queues nothing while jobs
    /// are dispatched, to tell the hanging from the outbox rows.
    #[arg(long)]
    hang_events: Option<String>,
}

/// What the webhook receiver has read: per (event, build) the arrival
/// time, the delivery ids, the first and last arrival.
#[derive(Default)]
struct Received {
    at: HashMap<(String, i64), Instant>,
    ids: HashSet<String>,
    dup: usize,
    first: Option<Instant>,
    last: Option<Instant>,
}

type Inbox = Watched<Received>;

/// One HTTP/1.1 connection: requests read (head, then Content-Length
/// bytes), each answered 200 (kept alive).
async fn serve_conn(mut s: TcpStream, inbox: Arc<Inbox>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let now = Instant::now();
        let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
        if let Ok(j) = serde_json::from_slice::<serde_json::Value>(&body) {
            let event = j
                .get("event")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string();
            let build = j.get("build").and_then(|v| v.as_i64()).unwrap_or(0);
            let id = j
                .get("id")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string();
            inbox.update(|r| {
                r.at.entry((event, build)).or_insert(now);
                if !r.ids.insert(id) {
                    r.dup += 1;
                }
                r.first.get_or_insert(now);
                r.last = Some(now);
            });
        }
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        if s.write_all(ok).await.is_err() {
            return;
        }
    }
}

/// The receiver on `l`, in tasks; what it read goes to the returned inbox.
fn receiver(l: TcpListener) -> Arc<Inbox> {
    let inbox = Inbox::new();
    let i2 = inbox.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(serve_conn(s, i2.clone()));
        }
    });
    inbox
}

/// A sink that accepts TCP connections and never answers (holds them).
fn hanging(l: TcpListener) -> Arc<std::sync::atomic::AtomicUsize> {
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            n2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(s);
        }
    });
    n
}

fn webhook(name: &str, port: u16, extra: &str) -> String {
    format!(
        "[[notify]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\n{extra}\n"
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(label: &str, v: &mut [f64]) {
    v.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{label}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        v.len(),
        pct(v, 50),
        pct(v, 90),
        pct(v, 99),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

pub async fn bench_notify(a: BenchNotifyArgs) -> anyhow::Result<i32> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let dir =
        std::env::temp_dir().join(format!("kiln-bench-notify-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let r = run(&a, &dir, &stop_rx).await;
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    remove_in_background(&dir);
    r
}

async fn run(a: &BenchNotifyArgs, tmp: &Path, stop: &watch::Receiver<bool>) -> anyhow::Result<i32> {
    if a.builds > 0 {
        commit_to_receiver(a, tmp, stop).await?;
    }
    if a.queued > 0 {
        down_sink(a, tmp).await?;
    }
    if a.samples > 0 {
        hanging_vs_none(a, tmp, stop).await?;
    }
    Ok(0)
}

/// A scratch build of the example on `channel`: (build, job).
async fn submit(c: &Client, sha: &str, channel: &str) -> anyhow::Result<(i64, i64)> {
    let req = SubmitRequest {
        srpm_sha256: sha.to_string(),
        srpm_name: "hello-kiln-1.0-1.src.rpm".into(),
        channel: Some(channel.to_string()),
        scratch: true,
        ..Default::default()
    };
    let b: BuildView = c.post("/api/v1/builds", &req).await?;
    Ok((b.id, b.jobs.first().context("no job in the build")?.id))
}

/// (a): build succeeded on the event stream → the receiver has
/// `build.succeeded`.
async fn commit_to_receiver(
    a: &BenchNotifyArgs,
    tmp: &Path,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    let inbox = receiver(l);
    let config = webhook("bench", port, "events = [\"build.succeeded\"]");
    let master = crate::bench::start_master_with(&tmp.join("a-master"), &a.durability, &config)?;
    let c = Client::new(&master.api, Some(master.token.clone()))?;
    let sha = upload_example(&c, &tmp.join("a")).await?;
    spawn_worker(
        &c,
        &master,
        &tmp.join("a-workers"),
        "notify-a",
        "default",
        1,
        Arc::new(Noop),
        stop,
    )
    .await?;
    wait_connected(&c, 1).await?;
    let done: Arc<Watched<HashMap<i64, Instant>>> = Watched::new();
    let d2 = done.clone();
    follow_stream(&c, move |e, now| {
        if let Event::Build {
            build,
            state: BuildState::Succeeded,
        } = e
        {
            d2.update(|m| {
                m.entry(build).or_insert(now);
            });
        }
    })
    .await?;
    // Warm up (connections, caches).
    for _ in 0..10 {
        let (b, _) = submit(&c, &sha, "default").await?;
        wait_key(&inbox, b).await?;
    }
    let mut lat = Vec::with_capacity(a.builds);
    let mut submit_to = Vec::with_capacity(a.builds);
    for _ in 0..a.builds {
        let t0 = Instant::now();
        let (b, _) = submit(&c, &sha, "default").await?;
        let got = wait_key(&inbox, b).await?;
        let seen = tokio::time::timeout(Duration::from_secs(30), done.wait(|m| m.get(&b).copied()))
            .await
            .context("no build succeeded on the event stream")?;
        // Signed: the receiver may have it before the event stream.
        lat.push(
            got.duration_since(seen).as_secs_f64() * 1000.0
                - seen.duration_since(got).as_secs_f64() * 1000.0,
        );
        submit_to.push(ms(got.duration_since(t0)));
    }
    println!(
        "(a) state change -> webhook receiver, {} builds one at a time (durability {}):",
        a.builds, a.durability
    );
    summary(
        "    build succeeded on /api/v1/events -> receiver has build.succeeded",
        &mut lat,
    );
    summary(
        "    (submit -> receiver has build.succeeded)",
        &mut submit_to,
    );
    let dup = inbox.get().dup;
    println!("    deliveries seen twice: {dup}");
    Ok(())
}

async fn wait_key(inbox: &Inbox, build: i64) -> anyhow::Result<Instant> {
    let key = ("build.succeeded".to_string(), build);
    tokio::time::timeout(
        Duration::from_secs(60),
        inbox.wait(|r| r.at.get(&key).copied()),
    )
    .await
    .with_context(|| format!("build {build}: build.succeeded did not arrive in 60 s"))
}

/// `n` scratch builds on a channel no worker serves (a `build.queued`
/// each), 16 at a time; the master's RSS before and after (settled).
async fn queue_builds(
    c: &Arc<Client>,
    sha: &str,
    pid: u32,
    n: usize,
) -> anyhow::Result<(u64, u64)> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    submit_many(c, sha, "nobody", n, 16).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid)?;
    Ok((before, after))
}

/// (b): `--queued` events for a down sink.
async fn down_sink(a: &BenchNotifyArgs, tmp: &Path) -> anyhow::Result<()> {
    let n = a.queued;
    // Without sinks: what the builds themselves cost.
    let (b0, a0) = {
        let master = crate::bench::start_master_with(&tmp.join("b0-master"), &a.durability, "")?;
        let c = Arc::new(Client::new(&master.api, Some(master.token.clone()))?);
        let sha = upload_example(&c, &tmp.join("b0")).await?;
        queue_builds(&c, &sha, master.child.id(), n).await?
    };
    // The sink's port: closed now, the receiver's later.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let config = webhook("down", port, "retry_base_ms = 100");
    let master = crate::bench::start_master_with(&tmp.join("b-master"), &a.durability, &config)?;
    let pid = master.child.id();
    let c = Arc::new(Client::new(&master.api, Some(master.token.clone()))?);
    let sha = upload_example(&c, &tmp.join("b")).await?;
    let t0 = Instant::now();
    let (b1, a1) = queue_builds(&c, &sha, pid, n).await?;
    let queued_in = t0.elapsed();
    let ls = sink_counts(&c, "down").await?;
    println!(
        "(b) {n} build.queued events (scratch builds nobody serves), submitted in {:.1} s:",
        queued_in.as_secs_f64()
    );
    println!(
        "    master RSS with a down webhook sink: {:.1} -> {:.1} MiB (+{:.1} MiB); without sinks: \
         {:.1} -> {:.1} MiB (+{:.1} MiB); the outbox's share: {:+.1} MiB; sink: {ls}",
        b1 as f64 / 1024.0,
        a1 as f64 / 1024.0,
        (a1 as f64 - b1 as f64) / 1024.0,
        b0 as f64 / 1024.0,
        a0 as f64 / 1024.0,
        (a0 as f64 - b0 as f64) / 1024.0,
        ((a1 as f64 - b1 as f64) - (a0 as f64 - b0 as f64)) / 1024.0,
    );
    let l = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding the sink's port {port} again"))?;
    let up = Instant::now();
    let inbox = receiver(l);
    // Every row queued (the example's upload made one more build).
    let want = queued_count(&c, "down").await?;
    tokio::time::timeout(
        Duration::from_secs(1800),
        inbox.wait(|r| (r.ids.len() >= want).then_some(())),
    )
    .await
    .context("the queue did not drain in 30 min")?;
    let (first, last, dup, got) = {
        let r = inbox.get();
        (r.first, r.last, r.dup, r.ids.len())
    };
    let (Some(first), Some(last)) = (first, last) else {
        bail!("nothing arrived");
    };
    let span = last.duration_since(first).as_secs_f64();
    println!(
        "    receiver up: first arrival after {:.1} s (the sink's backoff), {got} events \
         drained in {span:.2} s = {:.0} events/s, seen twice: {dup}; master RSS now {:.1} MiB",
        first.duration_since(up).as_secs_f64(),
        got as f64 / span.max(1e-9),
        rss_kib(pid)? as f64 / 1024.0
    );
    Ok(())
}

async fn queued_count(c: &Client, name: &str) -> anyhow::Result<usize> {
    let v: serde_json::Value = c.get("/api/v1/notify").await?;
    v.as_array()
        .and_then(|a| {
            a.iter()
                .find(|s| s.get("name").and_then(|n| n.as_str()) == Some(name))
        })
        .and_then(|s| s.get("queued"))
        .and_then(|q| q.as_u64())
        .map(|q| q as usize)
        .context("no queued count")
}

async fn sink_counts(c: &Client, name: &str) -> anyhow::Result<String> {
    let v: serde_json::Value = c.get("/api/v1/notify").await?;
    let s = v
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|s| s.get("name").and_then(|n| n.as_str()) == Some(name))
        })
        .cloned()
        .unwrap_or_default();
    Ok(format!(
        "queued {} state {}",
        s.get("queued").cloned().unwrap_or_default(),
        s.get("state").cloned().unwrap_or_default()
    ))
}

/// (c): dispatch latency, a hanging sink vs none, alternately.
async fn hanging_vs_none(
    a: &BenchNotifyArgs,
    tmp: &Path,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    let accepted = hanging(l);
    let hang = crate::bench::start_master_with(
        &tmp.join("c-hang"),
        &a.durability,
        &webhook(
            "hang",
            port,
            &match &a.hang_events {
                Some(ev) => format!(
                    "timeout_secs = 120\nevents = [{}]",
                    ev.split(',')
                        .map(|e| format!("{:?}", e.trim()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => "timeout_secs = 120".to_string(),
            },
        ),
    )?;
    let none = crate::bench::start_master_with(&tmp.join("c-none"), &a.durability, "")?;
    // A third master with a sink that answers at once: what writing the
    // outbox rows costs, apart from the hanging.
    let fl = TcpListener::bind("127.0.0.1:0").await?;
    let fport = fl.local_addr()?.port();
    let _inbox = receiver(fl);
    let fast = crate::bench::start_master_with(
        &tmp.join("c-fast"),
        &a.durability,
        &webhook("fast", fport, ""),
    )?;
    let mut sides = Vec::new();
    for (i, m) in [&hang, &none, &fast].into_iter().enumerate() {
        let c = Client::new(&m.api, Some(m.token.clone()))?;
        let sha = upload_example(&c, &tmp.join(format!("c{i}"))).await?;
        spawn_worker(
            &c,
            m,
            &tmp.join(format!("c{i}-workers")),
            &format!("notify-c{i}"),
            "default",
            1,
            Arc::new(Noop),
            stop,
        )
        .await?;
        wait_connected(&c, 1).await?;
        let ev = follow_events(&c).await?;
        sides.push((c, sha, ev));
    }
    // Warm up both.
    for (c, sha, ev) in &sides {
        latency(c, ev, sha, 10, false).await?;
    }
    let mut with = Vec::with_capacity(a.samples);
    let mut without = Vec::with_capacity(a.samples);
    let mut answering = Vec::with_capacity(a.samples);
    let masters = [&hang, &none, &fast];
    let cpu0 = masters
        .iter()
        .map(|m| cpu_ticks(m.child.id()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The order turns each round: a sample runs while the master sampled
    // just before finishes its build (the answering sink's master then
    // delivers two notifications), so each master follows each other
    // equally often. (A fixed order put the hanging sink's master always
    // after the answering one, and charged it ~0.2 ms of that work.)
    for i in 0..a.samples {
        for k in 0..3 {
            let side = (i + k) % 3;
            let (c, sha, ev) = &sides[side];
            let v = latency(c, ev, sha, 1, false).await?;
            match side {
                0 => with.extend(v),
                1 => without.extend(v),
                _ => answering.extend(v),
            }
        }
    }
    // CPU (all of a master's threads) per sampled build, in ms.
    let hz = clock_ticks_per_sec() as f64;
    let mut cpu = Vec::new();
    for (m, c0) in masters.iter().zip(&cpu0) {
        let c1 = cpu_ticks(m.child.id())?;
        cpu.push(c1.saturating_sub(*c0) as f64 * 1000.0 / hz / a.samples.max(1) as f64);
    }
    let held = accepted.load(std::sync::atomic::Ordering::SeqCst);
    let ls = sink_counts(&sides[0].0, "hang").await?;
    println!(
        "(c) dispatch latency (submit -> job running), {} samples each, alternating between two \
         masters, and a third with a sink that answers (hanging sink: {held} connections accepted and held, {ls}):",
        a.samples
    );
    let (p50w, p50n) = {
        summary("    with a hanging sink", &mut with);
        summary("    without sinks      ", &mut without);
        summary("    with a sink that answers", &mut answering);
        (pct(&with, 50), pct(&without, 50))
    };
    println!(
        "    ratio hanging/none p50 {:.2}x, p99 {:.2}x; hanging/answering p50 {:.2}x, p99 {:.2}x",
        p50w / p50n,
        pct(&with, 99) / pct(&without, 99),
        p50w / pct(&answering, 50),
        pct(&with, 99) / pct(&answering, 99)
    );
    println!(
        "    master CPU per build (submit to succeeded, all threads): hanging {:.2} ms, none {:.2} ms, answering {:.2} ms",
        cpu[0], cpu[1], cpu[2]
    );
    Ok(())
}
