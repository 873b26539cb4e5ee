//! `kiln bench-ws`: the websocket fan-out (issue 10). A real `kiln master`
//! child process; in this process, one worker whose job writes its log
//! steadily (the log followed) and a few workers that run no-op jobs (the
//! dispatch measured); in a second child process (this binary again, with
//! the hidden `--clients-for`), N websocket clients on `/api/v1/ws`, each
//! following the running job's log and its build, as a browser on the log
//! page does. The clients are a process of their own, as browsers are
//! elsewhere: with `--pin`, the master and this process run on CPU 0 and
//! the clients on CPU 1, so the clients' own work does not count as the
//! master's. Figures: the master's extra RSS with the clients, the log
//! bytes they received, the master's CPU, and the submit-to-start latency
//! of other jobs without the clients, with them, and without them again,
//! all in one run. See BENCHMARKS.md.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use kiln_api::live::{ClientMsg, Topic};
use kiln_api::{BuildView, SubmitRequest};
use kiln_worker::backend::{Backend, BackendError, BoxFuture, JobSpec, LogSink, Noop, Outcome};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::bench::{
    clock_ticks_per_sec, cpu_ticks, follow_events, latency, pct, remove_in_background, rss_kib,
    spawn_worker, start_master, submit_many, upload_example,
};
use crate::client::Client;

#[derive(Args)]
pub struct BenchWsArgs {
    /// Websocket clients following the log.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Dispatch latency samples per phase.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Lines per second the followed job writes to its log.
    #[arg(long, default_value_t = 200)]
    log_rate: u32,
    /// Seconds the clients follow the log while only the master's CPU and
    /// the bytes delivered are measured.
    #[arg(long, default_value_t = 10)]
    follow_secs: u64,
    /// Pin the master and this process to CPU 0, the clients' process to
    /// CPU 1 (needs two CPUs).
    #[arg(long)]
    pin: bool,
    /// Internal: be the clients' process, on this websocket URL.
    #[arg(long, hide = true)]
    clients_for: Option<String>,
    /// Internal (with `--clients-for`): the build followed.
    #[arg(long, hide = true, default_value_t = 0)]
    build: i64,
    /// Internal (with `--clients-for`): the job whose log is followed.
    #[arg(long, hide = true, default_value_t = 0)]
    job: i64,
    /// Internal (with `--clients-for`): the log offset to follow from.
    #[arg(long, hide = true, default_value_t = 0)]
    offset: u64,
}

/// A backend whose job writes a line of about 100 bytes `rate` times a
/// second until it is canceled: a long build with a chatty log.
struct Chatty {
    rate: u32,
}

impl Backend for Chatty {
    fn name(&self) -> &'static str {
        "noop"
    }
    fn build<'a>(
        &'a self,
        _spec: &'a JobSpec,
        _dir: &'a Path,
        log: &'a dyn LogSink,
        cancel: watch::Receiver<bool>,
    ) -> BoxFuture<'a, Result<Outcome, BackendError>> {
        Box::pin(async move {
            let mut canceled = cancel;
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(self.rate.max(1))));
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        n += 1;
                        log.write(
                            format!(
                                "+ gcc -O2 -g -c src/file{n:08}.c -o build/file{n:08}.o \
                                 -Wall -Wextra -fstack-protector-strong\n"
                            )
                            .as_bytes(),
                        );
                    }
                    _ = canceled.wait_for(|c| *c) => break,
                }
            }
            Ok(Outcome {
                success: false,
                canceled: true,
                message: format!("canceled after {n} lines"),
                packages: Vec::new(),
            })
        })
    }
}

/// A server message as a client here reads it: a log chunk's range.
#[derive(serde::Deserialize)]
struct Lite {
    log: Option<Range>,
}

#[derive(serde::Deserialize)]
struct Range {
    offset: u64,
    next: u64,
}

/// What the clients have received, all together.
#[derive(Default)]
struct Received {
    bytes: AtomicU64,
    log_bytes: AtomicU64,
    messages: AtomicU64,
    errors: AtomicU64,
}

/// One websocket client: subscribes to the job's log (from `offset`, as
/// the log page does with the tail it was rendered with) and its build,
/// then counts what arrives until `stop`. Says `ready` once the first log
/// chunk came.
#[allow(clippy::too_many_arguments)]
async fn client(
    url: String,
    build: i64,
    job: i64,
    offset: u64,
    got: Arc<Received>,
    ready: tokio::sync::mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
    connecting: tokio::sync::OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .context("websocket connect")?;
    for m in [
        ClientMsg::Subscribe(Topic::Build { build }),
        ClientMsg::Subscribe(Topic::Log { log: job, offset }),
    ] {
        ws.send(Message::Text(serde_json::to_string(&m)?.into()))
            .await?;
    }
    // Connected and subscribed: the next client may connect.
    drop(connecting);
    let mut first = Some(ready);
    loop {
        tokio::select! {
            m = ws.next() => {
                let Some(m) = m else { bail!("the master closed the websocket") };
                let m = m?;
                if let Message::Text(t) = &m {
                    got.bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
                    got.messages.fetch_add(1, Ordering::Relaxed);
                    // Only the range is read (the clients share the
                    // master's two cores: they should cost little).
                    if let Ok(Lite { log: Some(chunk) }) = serde_json::from_str::<Lite>(t) {
                        got.log_bytes.fetch_add(chunk.next - chunk.offset, Ordering::Relaxed);
                        if let Some(r) = first.take() {
                            let _ = r.try_send(());
                        }
                    }
                }
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Pins every thread of process `pid` (0: this one) to `cpu`; threads
/// made later inherit it from the thread that makes them.
fn pin_process(pid: u32, cpu: usize) -> anyhow::Result<()> {
    let pid = if pid == 0 { std::process::id() } else { pid };
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of {pid}"))?;
    for t in tasks {
        let tid: libc::pid_t = t?
            .file_name()
            .to_str()
            .and_then(|n| n.parse().ok())
            .context("a thread id that is not a number")?;
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
        // sched_setaffinity only read and write that set.
        let r = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if r != 0 {
            bail!(
                "pinning thread {tid} to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// What the clients' process says on its stdout.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    log_bytes: u64,
    messages: u64,
    errors: u64,
}

impl Counts {
    fn parse(line: &str) -> anyhow::Result<Counts> {
        let v: Vec<u64> = line
            .strip_prefix("counts ")
            .with_context(|| format!("the clients' process said {line:?}"))?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("the clients' process said {line:?}"))?;
        match v[..] {
            [log_bytes, messages, errors] => Ok(Counts {
                log_bytes,
                messages,
                errors,
            }),
            _ => bail!("the clients' process said {line:?}"),
        }
    }
}

/// The clients' process: connects `--clients` clients, says `ready SECS`
/// once each received log, then answers `report` on stdin with `counts
/// LOG_BYTES MESSAGES ERRORS`, and `stop` (or the end of stdin) with the
/// same line after closing them all.
async fn clients_process(a: &BenchWsArgs, ws_url: &str) -> anyhow::Result<i32> {
    use std::io::Write;
    let got = Arc::new(Received::default());
    let (cstop_tx, cstop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(a.clients.max(1));
    let connecting = Arc::new(Semaphore::new(64));
    let t_connect = Instant::now();
    let mut tasks = Vec::with_capacity(a.clients);
    for _ in 0..a.clients {
        let permit = connecting.clone().acquire_owned().await?;
        let (url, got, ready, stop) = (
            ws_url.to_string(),
            got.clone(),
            ready_tx.clone(),
            cstop_rx.clone(),
        );
        let (b, job, offset) = (a.build, a.job, a.offset);
        tasks.push(tokio::spawn(async move {
            // Held until connected and subscribed (64 handshakes at once).
            let r = client(url, b, job, offset, got.clone(), ready, stop, permit).await;
            if let Err(e) = &r {
                got.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("bench-ws: client: {e:#}");
            }
        }));
    }
    drop(ready_tx);
    let mut ready = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while ready < a.clients {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(())) => ready += 1,
            Ok(None) | Err(_) => break,
        }
    }
    let counts = |g: &Received| {
        format!(
            "counts {} {} {}",
            g.log_bytes.load(Ordering::Relaxed),
            g.messages.load(Ordering::Relaxed),
            g.errors.load(Ordering::Relaxed)
        )
    };
    let mut out = std::io::stdout();
    if ready < a.clients {
        writeln!(
            out,
            "error: only {ready} of {} clients received the log ({} errors)",
            a.clients,
            got.errors.load(Ordering::Relaxed)
        )?;
        return Ok(1);
    }
    writeln!(out, "ready {:.2}", t_connect.elapsed().as_secs_f64())?;
    out.flush()?;
    // Commands on stdin, read by a thread of its own.
    let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if cmd_tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(cmd) = cmd_rx.recv().await {
        if cmd.trim() != "report" {
            break;
        }
        writeln!(out, "{}", counts(&got))?;
        out.flush()?;
    }
    let _ = cstop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    writeln!(out, "{}", counts(&got))?;
    out.flush()?;
    Ok(0)
}

/// The clients' process as the bench drives it.
struct ClientsProc {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl ClientsProc {
    async fn line(&mut self) -> anyhow::Result<String> {
        self.lines
            .next_line()
            .await?
            .context("the clients' process ended")
    }

    async fn report(&mut self) -> anyhow::Result<Counts> {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(b"report\n").await?;
        Counts::parse(&self.line().await?)
    }

    async fn stop(mut self) -> anyhow::Result<Counts> {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(b"stop\n").await?;
        let c = Counts::parse(&self.line().await?)?;
        self.child.wait().await?;
        Ok(c)
    }
}

pub async fn bench_ws(a: BenchWsArgs) -> anyhow::Result<i32> {
    raise_fd_limit();
    if let Some(url) = &a.clients_for {
        return clients_process(&a, url).await;
    }
    if a.pin {
        // The master, started after this, inherits CPU 0.
        pin_process(0, 0)?;
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("kiln-bench-ws-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let r = run(&a, &dir).await;
    remove_in_background(&dir);
    r
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn run(a: &BenchWsArgs, tmp: &Path) -> anyhow::Result<i32> {
    // The master inherits the raised limit: 1,000 clients need 1,000 fds.
    let master = start_master(&tmp.join("master"), "full")?;
    let pid = master.child.id();
    let c = Arc::new(Client::new(&master.api, Some(master.token.clone()))?);
    let sha = upload_example(&c, tmp).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let wbase = tmp.join("workers");
    // Dispatch: 4 workers x 4 slots of no-op jobs. The log: one worker on
    // its own channel.
    for i in 0..4 {
        spawn_worker(
            &c,
            &master,
            &wbase,
            &format!("d{i}"),
            "default",
            4,
            Arc::new(Noop),
            &stop_rx,
        )
        .await?;
    }
    let chatty = Arc::new(Chatty { rate: a.log_rate });
    spawn_worker(&c, &master, &wbase, "log", "log", 1, chatty, &stop_rx).await?;
    crate::bench::wait_connected(&c, 5).await?;
    let ev = follow_events(&c).await?;
    submit_many(&c, &sha, "default", 64, 16).await?;
    ev.wait_count(64).await;

    // The followed build: runs until canceled.
    let req = SubmitRequest {
        srpm_sha256: sha.clone(),
        srpm_name: "hello-kiln-1.0-1.src.rpm".into(),
        channel: Some("log".into()),
        scratch: true,
        ..Default::default()
    };
    let b: BuildView = c.post("/api/v1/builds", &req).await?;
    let job = b.jobs.first().context("no job in the build")?.id;
    ev.wait(|s| s.running.get(&job).copied()).await;
    println!(
        "following build {} (job {job}) writing {} log lines/s (~{} KB/s)",
        b.id,
        a.log_rate,
        a.log_rate as u64 * 100 / 1000
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let before = latency(&c, &ev, &sha, a.samples, false).await?;
    let rss_before = rss_kib(pid)?;
    let cpu0 = cpu_ticks(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.follow_secs)).await;
    let idle_cpu =
        (cpu_ticks(pid)? - cpu0) as f64 / clock_ticks_per_sec() as f64 / t0.elapsed().as_secs_f64()
            * 100.0;
    println!(
        "without clients: master RSS {:.1} MiB, CPU {:.1}% of a core (the log being written), \
         dispatch latency p50 {:.2} ms, p99 {:.2} ms ({} samples)",
        mib(rss_before),
        idle_cpu,
        pct(&before, 50),
        pct(&before, 99),
        before.len()
    );

    // The clients.
    let ws_url = format!("{}/api/v1/ws", master.api.replacen("http://", "ws://", 1));
    // Where the clients start following: the log's length now (a log
    // page is rendered with the log's tail and follows from its end).
    let offset = c
        .send(c.http.get(c.url(&format!("/api/v1/jobs/{job}/log"))))
        .await?
        .bytes()
        .await?
        .len() as u64;
    let exe = std::env::current_exe().context("finding the kiln binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("bench-ws")
        .arg("--clients-for")
        .arg(&ws_url)
        .args(["--clients", &a.clients.to_string()])
        .args(["--build", &b.id.to_string()])
        .args(["--job", &job.to_string()])
        .args(["--offset", &offset.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("starting the clients' process")?;
    if a.pin {
        // Before it connects anything: its threads exist, later ones
        // inherit from them.
        pin_process(child.id().context("the clients' process ended")?, 1)?;
    }
    let stdin = child.stdin.take().context("no stdin")?;
    let stdout = child.stdout.take().context("no stdout")?;
    use tokio::io::AsyncBufReadExt;
    let mut clients = ClientsProc {
        child,
        stdin,
        lines: tokio::io::BufReader::new(stdout).lines(),
    };
    let said = clients.line().await?;
    let Some(secs) = said.strip_prefix("ready ") else {
        bail!("the clients' process: {said}");
    };
    println!(
        "{} clients (a process of their own{}) connected, subscribed and receiving the log in {secs} s",
        a.clients,
        if a.pin { ", on CPU 1; the master on CPU 0" } else { "" }
    );
    let rss_with = rss_kib(pid)?;
    let bytes0 = clients.report().await?.log_bytes;
    let cpu0 = cpu_ticks(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.follow_secs)).await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid)? - cpu0) as f64 / clock_ticks_per_sec() as f64 / secs * 100.0;
    let rate = clients.report().await?.log_bytes.saturating_sub(bytes0) as f64 / secs;
    let with = latency(&c, &ev, &sha, a.samples, false).await?;
    let rss_peak = rss_kib(pid)?.max(rss_with);
    println!(
        "with {} clients: master RSS {:.1} MiB (+{:.1} MiB), CPU {:.1}% of a core, \
         log delivered {:.1} MB/s in all ({:.0} B/s per client), \
         dispatch latency p50 {:.2} ms ({:.2}x), p99 {:.2} ms ({:.2}x)",
        a.clients,
        mib(rss_peak),
        mib(rss_peak.saturating_sub(rss_before)),
        cpu,
        rate / 1e6,
        rate / a.clients.max(1) as f64,
        pct(&with, 50),
        pct(&with, 50) / pct(&before, 50),
        pct(&with, 99),
        pct(&with, 99) / pct(&before, 99),
    );

    // The clients leave; the same measure again.
    let got = clients.stop().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = latency(&c, &ev, &sha, a.samples, false).await?;
    println!(
        "after the clients left: master RSS {:.1} MiB, dispatch latency p50 {:.2} ms, p99 {:.2} ms; \
         {} messages received by the clients, {} errors",
        mib(rss_kib(pid)?),
        pct(&after, 50),
        pct(&after, 99),
        got.messages,
        got.errors,
    );
    let _: serde_json::Value = c
        .post(
            &format!("/api/v1/builds/{}/cancel", b.id),
            &serde_json::json!({}),
        )
        .await?;
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(0)
}
