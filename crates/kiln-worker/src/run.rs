//! The worker's main loop: connect out, keep the session stream, run jobs,
//! upload results, reconnect with backoff and jitter, drain on request.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_core::listing::{Listing, ListingEntry, LISTING_NAME};
use kiln_core::pki;
use kiln_core::srpm::inspect_package;
use kiln_core::state::ArtifactKind;
use kiln_proto as pb;
use pb::farm_client::FarmClient;
use pb::master_msg::Msg as In;
use pb::worker_msg::Msg as Out;

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::Channel;

use crate::backend::{make_private_dir, Backend, JobSpec, LogSink};
use crate::{files, io_err, parse_master_url, WorkerError};

/// Tries of a request that fails on a live session (an upload the master
/// cannot take, a download it cannot serve) before the job is given up:
/// 1 s, 2 s, 4 s … at most 30 s apart. A new session starts the count over.
const RETRY_ATTEMPTS: u32 = 7;
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub struct WorkerConfig {
    /// Where `enroll` left the key, certificate, CA and master URL.
    pub dir: PathBuf,
    pub name: Option<String>,
    pub master: Option<String>,
    pub arches: Vec<String>,
    pub channels: Vec<String>,
    pub capacity: u32,
    /// Job directories and the input cache.
    pub work: PathBuf,
    pub backend: Arc<dyn Backend>,
    /// Print `connected …` on stdout each time a session is established.
    pub announce: bool,
}

/// The current session, as job tasks see it.
#[derive(Clone, Default)]
struct Session {
    gen: u64,
    client: Option<FarmClient<Channel>>,
    out: Option<mpsc::Sender<pb::WorkerMsg>>,
}

struct LocalJob {
    attempt: u32,
    cancel: watch::Sender<bool>,
    ack: Option<oneshot::Sender<pb::FinishAck>>,
}

struct Shared {
    cfg: WorkerConfig,
    name: String,
    session: watch::Sender<Session>,
    jobs: Mutex<HashMap<u64, LocalJob>>,
    /// One download at a time per input.
    fetching: tokio::sync::Mutex<()>,
    idle: tokio::sync::Notify,
}

impl Shared {
    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LocalJob>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, m: Out) {
        if let Some(out) = self.session.borrow().out.clone() {
            let _ = out.try_send(pb::WorkerMsg { msg: Some(m) });
        }
    }
}

fn read_trim(path: &Path) -> Result<String, WorkerError> {
    Ok(std::fs::read_to_string(path)
        .map_err(io_err(format!(
            "reading {} (run `kiln worker enroll` first)",
            path.display()
        )))?
        .trim()
        .to_string())
}

/// Run the worker until `stop` turns true (drain: running jobs finish and
/// upload, no new ones are taken) and every job is reported.
pub async fn run(cfg: WorkerConfig, mut stop: watch::Receiver<bool>) -> Result<(), WorkerError> {
    let enrolled_name = read_trim(&cfg.dir.join(files::NAME))?;
    let name = cfg.name.clone().unwrap_or(enrolled_name.clone());
    if name != enrolled_name {
        return Err(WorkerError::Other(format!(
            "this directory holds the certificate of worker {enrolled_name:?}, not {name:?}"
        )));
    }
    let master = match &cfg.master {
        Some(m) => m.clone(),
        None => read_trim(&cfg.dir.join(files::MASTER))?,
    };
    let (host, port) = parse_master_url(&master)?;
    let tls = Arc::new(pki::worker_client_config(
        &read_trim(&cfg.dir.join(files::CA))?,
        &read_trim(&cfg.dir.join(files::CERT))?,
        &read_trim(&cfg.dir.join(files::KEY))?,
    )?);
    crate::make_private(&cfg.dir, &cfg.work)?;
    let (session, _) = watch::channel(Session::default());
    let shared = Arc::new(Shared {
        cfg,
        name,
        session,
        jobs: Mutex::new(HashMap::new()),
        fetching: tokio::sync::Mutex::new(()),
        idle: tokio::sync::Notify::new(),
    });
    let mut failures: u32 = 0;
    let mut draining = *stop.borrow();
    loop {
        if draining && shared.jobs().is_empty() {
            return Ok(());
        }
        let r = session_once(&shared, &host, port, tls.clone(), &mut stop, &mut draining).await;
        shared.session.send_modify(|s| {
            s.client = None;
            s.out = None;
        });
        match r {
            Ok(()) if draining && shared.jobs().is_empty() => return Ok(()),
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!("worker {}: {e}", shared.name);
            }
        }
        // Exponential backoff with jitter: 0.5 s, 1 s, 2 s … up to 30 s.
        let base = 500u64.saturating_mul(1 << failures.min(6)).min(30_000);
        let jitter = rand::random::<u64>() % (base / 2 + 1);
        let wait = Duration::from_millis(base / 2 + jitter);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed(), if !draining => { draining = true; }
        }
    }
}

async fn session_once(
    shared: &Arc<Shared>,
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    stop: &mut watch::Receiver<bool>,
    draining: &mut bool,
) -> Result<(), WorkerError> {
    let channel = crate::conn::channel(host, port, tls).await?;
    let mut client = FarmClient::new(channel)
        .max_decoding_message_size(4 << 20)
        .max_encoding_message_size(4 << 20);
    let (out_tx, out_rx) = mpsc::channel::<pb::WorkerMsg>(1024);
    let running: Vec<pb::RunningJob> = shared
        .jobs()
        .iter()
        .map(|(id, j)| pb::RunningJob {
            job_id: *id,
            attempt: j.attempt,
        })
        .collect();
    let hello = pb::Hello {
        name: shared.name.clone(),
        arches: shared.cfg.arches.clone(),
        channels: shared.cfg.channels.clone(),
        capacity: shared.cfg.capacity,
        version: env!("CARGO_PKG_VERSION").to_string(),
        running,
        backend: shared.cfg.backend.name().to_string(),
        draining: *draining,
    };
    let _ = out_tx
        .send(pb::WorkerMsg {
            msg: Some(Out::Hello(hello)),
        })
        .await;
    let resp = client
        .session(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await
        .map_err(|s| WorkerError::Connect(s.message().to_string()))?;
    let mut inbound = resp.into_inner();
    let welcome = match inbound.message().await {
        Ok(Some(pb::MasterMsg {
            msg: Some(In::Welcome(w)),
        })) => w,
        Ok(_) => return Err(WorkerError::Connect("the master closed the session".into())),
        Err(s) => return Err(WorkerError::Connect(s.message().to_string())),
    };
    for d in &welcome.drop {
        // The master no longer wants these (re-queued or canceled meanwhile).
        if let Some(j) = shared.jobs().remove(&d.job_id) {
            let _ = j.cancel.send(true);
        }
    }
    if shared.cfg.announce {
        let mut o = std::io::stdout();
        let _ = writeln!(o, "connected {} to {host}:{port}", shared.name);
        let _ = o.flush();
    }
    tracing::info!("session with {host}:{port} established");
    shared.session.send_modify(|s| {
        s.gen += 1;
        s.client = Some(client.clone());
        s.out = Some(out_tx.clone());
    });
    if *draining {
        shared.send(Out::Draining(pb::Draining {}));
    }
    let mut beat = tokio::time::interval(Duration::from_secs(welcome.heartbeat_secs.max(1)));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = beat.tick() => {
                let running = shared.jobs().iter().map(|(id, j)| pb::RunningJob { job_id: *id, attempt: j.attempt }).collect();
                shared.send(Out::Heartbeat(pb::Heartbeat { running }));
            }
            m = inbound.message() => {
                let m = match m {
                    Ok(Some(m)) => m,
                    Ok(None) => return Err(WorkerError::Connect("the master ended the session".into())),
                    Err(s) => return Err(WorkerError::Connect(s.message().to_string())),
                };
                match m.msg {
                    Some(In::Assign(a)) => start_job(shared, a),
                    Some(In::Cancel(c)) => {
                        let jobs = shared.jobs();
                        if let Some(j) = jobs.get(&c.job_id).filter(|j| j.attempt == c.attempt) {
                            tracing::info!("job {} canceled: {}", c.job_id, c.reason);
                            let _ = j.cancel.send(true);
                        }
                    }
                    Some(In::FinishAck(a)) => {
                        let ack = shared.jobs().get_mut(&a.job_id).and_then(|j| j.ack.take());
                        if let Some(tx) = ack {
                            let _ = tx.send(a);
                        }
                    }
                    Some(In::Welcome(_)) | None => {}
                }
            }
            _ = stop.changed(), if !*draining => {
                *draining = true;
                tracing::info!("draining: finishing {} running jobs", shared.jobs().len());
                shared.send(Out::Draining(pb::Draining {}));
            }
            _ = shared.idle.notified(), if *draining => {}
        }
        if *draining && shared.jobs().is_empty() {
            return Ok(());
        }
    }
}

fn start_job(shared: &Arc<Shared>, a: pb::Assign) {
    let (cancel, cancel_rx) = watch::channel(false);
    {
        let mut jobs = shared.jobs();
        if jobs.contains_key(&a.job_id) {
            return;
        }
        jobs.insert(
            a.job_id,
            LocalJob {
                attempt: a.attempt,
                cancel,
                ack: None,
            },
        );
    }
    shared.send(Out::Accepted(pb::Accepted {
        job_id: a.job_id,
        attempt: a.attempt,
    }));
    let shared = shared.clone();
    tokio::spawn(async move {
        let (job, attempt) = (a.job_id, a.attempt);
        let dir = shared
            .cfg
            .work
            .join("jobs")
            .join(format!("{job}-{attempt}"));
        job_task(&shared, a, &dir, cancel_rx).await;
        let still_ours = shared
            .jobs()
            .get(&job)
            .is_some_and(|j| j.attempt == attempt);
        if still_ours {
            shared.jobs().remove(&job);
        }
        remove_job_dir(&dir);
        shared.idle.notify_one();
    });
}

thread_local! {
    /// One compression context per thread, reused for every log chunk.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Compressor::new(3).ok());
}

/// Streams a job's log to its build.log file and, compressed, to the master.
struct JobLog {
    shared: Arc<Shared>,
    job: u64,
    attempt: u32,
    text: Mutex<LogText>,
}

/// The build log as this worker keeps it: in memory while it is small,
/// in `build.log` in the job directory once it grows.
struct LogText {
    path: PathBuf,
    mem: Vec<u8>,
    file: Option<std::fs::File>,
    failed: bool,
    /// Bytes kept so far, and the cap from the master (0: none).
    written: u64,
    cap: u64,
    /// The log was cut (the marker is written); nothing more is kept.
    cut: bool,
}

impl LogText {
    fn append(&mut self, data: &[u8]) {
        if self.failed || self.cut || data.is_empty() {
            return;
        }
        // A runaway log is cut here, with a marker; the build goes on.
        if let Some(cut) = kiln_core::logcap::cut(self.cap, self.written, data) {
            self.written = self.cap;
            self.cut = true;
            self.write_raw(&cut);
            return;
        }
        self.written += data.len() as u64;
        self.write_raw(data);
    }

    fn write_raw(&mut self, data: &[u8]) {
        if self.file.is_none() && (self.mem.len() + data.len()) as u64 <= pb::INLINE_MAX {
            self.mem.extend_from_slice(data);
            return;
        }
        if self.file.is_none() {
            let opened = self
                .path
                .parent()
                .map_or(Ok(()), make_private_dir)
                .and_then(|_| create_new(&self.path))
                .and_then(|mut f| f.write_all(&self.mem).map(|_| f));
            match opened {
                Ok(f) => {
                    self.file = Some(f);
                    self.mem = Vec::new();
                }
                Err(e) => {
                    tracing::warn!("cannot write {}: {e}", self.path.display());
                    self.failed = true;
                    return;
                }
            }
        }
        if let Some(f) = self.file.as_mut() {
            let _ = f.write_all(data);
        }
    }
}

impl LogSink for JobLog {
    fn write(&self, data: &[u8]) {
        let capped = match self.text.lock() {
            Ok(mut t) => {
                let was_cut = t.cut;
                t.append(data);
                was_cut
            }
            Err(_) => false,
        };
        // Past the cap nothing more goes to the master either.
        if capped {
            return;
        }
        let z = COMPRESSOR.with(|c| match c.borrow_mut().as_mut() {
            Some(c) => c.compress(data),
            None => zstd::bulk::compress(data, 3),
        });
        if let Ok(z) = z {
            self.shared.send(Out::Log(pb::LogChunk {
                job_id: self.job,
                attempt: self.attempt,
                zdata: z,
            }));
        }
    }
}

async fn wait_client(shared: &Shared) -> (u64, FarmClient<Channel>) {
    let mut rx = shared.session.subscribe();
    loop {
        {
            let s = rx.borrow_and_update();
            if let Some(c) = s.client.clone() {
                return (s.gen, c);
            }
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn job_task(shared: &Arc<Shared>, a: pb::Assign, dir: &Path, cancel: watch::Receiver<bool>) {
    let (job, attempt) = (a.job_id, a.attempt);
    remove_job_dir(dir);
    let (mut finished, mut files) = match build(shared, &a, dir, cancel.clone()).await {
        Ok(f) => f,
        Err(e) => (
            bare_failure(&a, format!("worker error: {e}")),
            HashMap::new(),
        ),
    };
    // Report until the master acknowledges (across reconnects).
    let mut fresh = true;
    let mut retry = Retry::default();
    loop {
        let (gen, mut client) = wait_client(shared).await;
        let uploaded = if finished.artifacts.is_empty() {
            Ok(())
        } else {
            upload_all(
                &mut client,
                &files,
                job,
                attempt,
                &finished.artifacts,
                fresh,
            )
            .await
        };
        fresh = false;
        match uploaded {
            Ok(()) => {}
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                tracing::info!(
                    "job {job}: the master no longer wants this result: {}",
                    s.message()
                );
                return;
            }
            Err(s) => {
                tracing::warn!("job {job}: upload failed: {}", s.message());
                if !refused_for_good(&s) && retry.wait(shared, gen).await {
                    continue;
                }
                // The master refuses the artifacts, or keeps failing to take
                // them (a full disk…): the job fails, with why, rather than
                // wait for ever.
                tracing::warn!("job {job}: giving up the upload, reporting the job failed");
                finished =
                    bare_failure(&a, format!("uploading the results failed: {}", s.message()));
                files.clear();
            }
        }
        let (tx, rx) = oneshot::channel();
        match shared.jobs().get_mut(&job) {
            Some(j) if j.attempt == attempt => j.ack = Some(tx),
            _ => return,
        }
        shared.send(Out::Finished(finished.clone()));
        tokio::select! {
            ack = rx => {
                if let Ok(ack) = ack {
                    if !ack.accepted {
                        tracing::info!("job {job}: result not taken: {}", ack.message);
                    }
                }
                return;
            }
            _ = wait_new_session(shared, gen) => continue,
        }
    }
}

/// A failed result without files: only its listing (of nothing), which the
/// master needs to take any result.
fn bare_failure(a: &pb::Assign, message: String) -> pb::Finished {
    let listing = Listing {
        job: a.job_id,
        attempt: a.attempt,
        arch: a.arch.clone(),
        artifacts: vec![],
    };
    let artifacts = match serde_json::to_vec_pretty(&listing) {
        Ok(text) => vec![pb::Artifact {
            name: LISTING_NAME.to_string(),
            kind: ArtifactKind::Listing.as_str().to_string(),
            size: text.len() as u64,
            sha256: kiln_core::fsutil::sha256_bytes(&text),
            nevra: String::new(),
            inline: text,
        }],
        Err(_) => vec![],
    };
    pb::Finished {
        job_id: a.job_id,
        attempt: a.attempt,
        success: false,
        message,
        artifacts,
    }
}

/// Whether the master refused a request in a way no retry can change (an
/// artifact past its size limit, a bad name): the job fails at once.
fn refused_for_good(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange | tonic::Code::PermissionDenied
    )
}

/// Retries of a request that failed on session `gen`.
#[derive(Default)]
struct Retry {
    gen: u64,
    failures: u32,
}

impl Retry {
    /// After a failure on session `gen`: wait before the next try (less if
    /// a new session comes). False once the tries are spent.
    async fn wait(&mut self, shared: &Shared, gen: u64) -> bool {
        if gen != self.gen {
            self.gen = gen;
            self.failures = 0;
        }
        self.failures += 1;
        if self.failures >= RETRY_ATTEMPTS {
            return false;
        }
        let wait = RETRY_FIRST
            .saturating_mul(1 << (self.failures - 1).min(5))
            .min(RETRY_MAX);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wait_new_session(shared, gen) => {}
        }
        true
    }
}

async fn wait_new_session(shared: &Shared, gen: u64) {
    let mut rx = shared.session.subscribe();
    loop {
        if rx.borrow_and_update().gen != gen {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn build(
    shared: &Arc<Shared>,
    a: &pb::Assign,
    dir: &Path,
    cancel: watch::Receiver<bool>,
) -> Result<(pb::Finished, HashMap<String, PathBuf>), WorkerError> {
    // The job directory is made by whatever needs it (the backend, a log
    // that outgrows memory): a job that writes nothing creates nothing.
    let log = JobLog {
        shared: shared.clone(),
        job: a.job_id,
        attempt: a.attempt,
        text: Mutex::new(LogText {
            path: dir.join("build.log"),
            mem: Vec::new(),
            file: None,
            failed: false,
            written: 0,
            cap: a.log_cap,
            cut: false,
        }),
    };
    log.write(
        format!(
            "kiln: job {} attempt {} ({}) on worker {} with backend {}\n",
            a.job_id,
            a.attempt,
            a.arch,
            shared.name,
            shared.cfg.backend.name()
        )
        .as_bytes(),
    );
    let srpm = fetch_input(shared, &a.srpm_sha256, a.srpm_size, &log).await?;
    let spec = JobSpec {
        job: a.job_id,
        attempt: a.attempt,
        arch: a.arch.clone(),
        disttag: a.disttag.clone(),
        srpm,
        timeout: Duration::from_secs(a.timeout_secs.max(1)),
    };
    let outcome = shared
        .cfg
        .backend
        .build(&spec, dir, &log, cancel)
        .await
        .map_err(|e| WorkerError::Other(e.to_string()))?;
    let log_text = match log.text.lock() {
        Ok(mut t) => {
            t.file.take();
            std::mem::take(&mut t.mem)
        }
        Err(_) => Vec::new(),
    };
    if outcome.message == "canceled" {
        return Ok((
            pb::Finished {
                job_id: a.job_id,
                attempt: a.attempt,
                success: false,
                message: outcome.message,
                artifacts: vec![],
            },
            HashMap::new(),
        ));
    }
    // Every artifact by name: packages from the backend, the source rpm
    // (the input itself when the backend did not write one), the log.
    let mut files: HashMap<String, PathBuf> = HashMap::new();
    let mut entries = Vec::new();
    let mut paths: Vec<PathBuf> = outcome.packages.clone();
    if outcome.success
        && !paths
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".src.rpm"))
    {
        kiln_core::names::check_file_name(&a.srpm_name)
            .map_err(|e| WorkerError::Other(e.to_string()))?;
        files.insert(a.srpm_name.clone(), spec.srpm.clone());
        paths.push(spec.srpm.clone());
    }
    // The worker's own log file, beside (never inside) what the build wrote.
    let log_path = dir.join("build.log");
    let log_on_disk = std::fs::symlink_metadata(&log_path).is_ok_and(|m| m.is_file());
    if log_on_disk {
        paths.push(log_path.clone());
    }
    for p in paths {
        let name = if p == spec.srpm {
            a.srpm_name.clone()
        } else {
            p.file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| WorkerError::Other(format!("odd file name {}", p.display())))?
                .to_string()
        };
        // Every file is read through one descriptor, opened without
        // following a symbolic link: what is checked is what is sent.
        let mut f = open_regular(&p).map_err(io_err(format!("opening {}", p.display())))?;
        let (kind, nevra) = if name.ends_with(".src.rpm") {
            (ArtifactKind::Srpm, Some(inspect_open(&f, &p)?.nevra()))
        } else if name.ends_with(".rpm") {
            (ArtifactKind::Rpm, Some(inspect_open(&f, &p)?.nevra()))
        } else {
            (ArtifactKind::Log, None)
        };
        let (sha256, size) = kiln_core::fsutil::sha256_open(&mut f)
            .map_err(io_err(format!("reading {}", p.display())))?;
        if files.insert(name.clone(), p.clone()).is_some() && p != spec.srpm {
            return Err(WorkerError::Other(format!(
                "two artifacts are named {name}"
            )));
        }
        entries.push(ListingEntry {
            name,
            kind,
            size,
            sha256,
            nevra,
        });
    }
    let mut inline: HashMap<String, Vec<u8>> = HashMap::new();
    if !log_on_disk {
        entries.push(ListingEntry {
            name: "build.log".into(),
            kind: ArtifactKind::Log,
            size: log_text.len() as u64,
            sha256: kiln_core::fsutil::sha256_bytes(&log_text),
            nevra: None,
        });
        inline.insert("build.log".into(), log_text);
    }
    let listing = Listing {
        job: a.job_id,
        attempt: a.attempt,
        arch: a.arch.clone(),
        artifacts: entries.clone(),
    };
    let text = serde_json::to_vec_pretty(&listing)
        .map_err(|e| WorkerError::Other(format!("encoding the listing: {e}")))?;
    if text.len() as u64 > pb::INLINE_MAX {
        make_private_dir(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let lpath = dir.join(LISTING_NAME);
        create_new(&lpath)
            .and_then(|mut f| f.write_all(&text))
            .map_err(io_err("writing the listing"))?;
        files.insert(LISTING_NAME.into(), lpath);
    }
    entries.push(ListingEntry {
        name: LISTING_NAME.to_string(),
        kind: ArtifactKind::Listing,
        size: text.len() as u64,
        sha256: kiln_core::fsutil::sha256_bytes(&text),
        nevra: None,
    });
    if text.len() as u64 <= pb::INLINE_MAX {
        inline.insert(LISTING_NAME.into(), text);
    }
    // The input SRPM, returned as is, is already in the master's store: it
    // is neither inlined nor uploaded (the master links it from there).
    files.retain(|name, p| !(*p == spec.srpm && name == &a.srpm_name));
    let artifacts = inline_small(
        &files,
        &mut inline,
        entries
            .into_iter()
            .map(|e| pb::Artifact {
                name: e.name,
                kind: e.kind.as_str().to_string(),
                size: e.size,
                sha256: e.sha256,
                nevra: e.nevra.unwrap_or_default(),
                inline: vec![],
            })
            .collect(),
    )?;
    Ok((
        pb::Finished {
            job_id: a.job_id,
            attempt: a.attempt,
            success: outcome.success,
            message: outcome.message,
            artifacts,
        },
        files,
    ))
}

/// Carry small files (the listing, a short log) inside `Finished`: one
/// upload stream less each. The rest goes by `Upload`.
fn inline_small(
    files: &HashMap<String, PathBuf>,
    held: &mut HashMap<String, Vec<u8>>,
    mut arts: Vec<pb::Artifact>,
) -> Result<Vec<pb::Artifact>, WorkerError> {
    let mut budget = pb::INLINE_MAX * 4;
    for a in arts.iter_mut() {
        if a.size > pb::INLINE_MAX || a.size > budget {
            continue;
        }
        a.inline = match held.remove(&a.name) {
            Some(bytes) => bytes,
            None => match files.get(&a.name) {
                Some(p) => {
                    let mut bytes = Vec::new();
                    open_regular(p)
                        .and_then(|f| f.take(a.size + 1).read_to_end(&mut bytes))
                        .map_err(io_err(format!("reading {}", p.display())))?;
                    bytes
                }
                None => continue,
            },
        };
        if a.inline.len() as u64 != a.size {
            return Err(WorkerError::Other(format!(
                "{} changed while being sent",
                a.name
            )));
        }
        budget -= a.size;
    }
    Ok(arts)
}

fn hash_file(p: &Path) -> Result<(String, u64), WorkerError> {
    kiln_core::fsutil::sha256_file(p).map_err(io_err(format!("reading {}", p.display())))
}

/// Open a file of a job directory for reading: never through a symbolic
/// link, and only a regular file (a FIFO the build planted would block).
fn open_regular(p: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// Create a file of the worker's own in a job directory: a new file only
/// the worker may read, never through a symbolic link.
fn create_new(p: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
}

/// A package's header, read through the descriptor `f` already holds (its
/// `/proc/self/fd` entry names that very file, whatever the path now is).
fn inspect_open(f: &std::fs::File, p: &Path) -> Result<kiln_core::srpm::PackageInfo, WorkerError> {
    let fd_path = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    let path = if fd_path.exists() { &fd_path } else { p };
    inspect_package(path).map_err(|e| WorkerError::Other(format!("{}: {e}", p.display())))
}

/// Remove a job directory. A build may have left directories it made
/// unreadable: open them up (never through a link) and try again.
fn remove_job_dir(dir: &Path) {
    fn open_up(d: &Path, depth: usize) {
        if let Ok(m) = std::fs::symlink_metadata(d) {
            if m.is_dir() && depth < 256 {
                let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700));
                if let Ok(rd) = std::fs::read_dir(d) {
                    for e in rd.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            open_up(&e.path(), depth + 1);
                        }
                    }
                }
            }
        }
    }
    if std::fs::remove_dir_all(dir).is_err() && dir.exists() {
        open_up(dir, 0);
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::warn!("cannot remove {}: {e}", dir.display());
        }
    }
}

/// Fetch an input into the cache by sha256 (resuming a partial download);
/// a cached input is not downloaded again.
async fn fetch_input(
    shared: &Arc<Shared>,
    sha: &str,
    size: u64,
    log: &JobLog,
) -> Result<PathBuf, WorkerError> {
    if !kiln_core::names::is_sha256(sha) {
        return Err(WorkerError::Other("malformed input sha256".into()));
    }
    let path = shared.cfg.work.join("cache").join(sha);
    let _guard = shared.fetching.lock().await;
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == size) {
        log.write(format!("kiln: input {sha} is cached, nothing to download\n").as_bytes());
        return Ok(path);
    }
    let part = path.with_extension("part");
    let mut retry = Retry::default();
    loop {
        let (gen, mut client) = wait_client(shared).await;
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        let r = async {
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&part)
                .await
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
            let mut s = client
                .fetch(pb::FetchRequest {
                    sha256: sha.to_string(),
                    offset: have,
                })
                .await?
                .into_inner();
            while let Some(c) = s.message().await? {
                f.write_all(&c.data)
                    .await
                    .map_err(|e| tonic::Status::internal(e.to_string()))?;
            }
            f.sync_all()
                .await
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
            Ok::<(), tonic::Status>(())
        }
        .await;
        match r {
            Ok(()) => break,
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Err(WorkerError::Other(s.message().to_string()))
            }
            Err(s) => {
                log.write(
                    format!("kiln: download interrupted ({}), resuming\n", s.message()).as_bytes(),
                );
                if !retry.wait(shared, gen).await {
                    return Err(WorkerError::Other(format!(
                        "downloading the input failed {RETRY_ATTEMPTS} times: {}",
                        s.message()
                    )));
                }
            }
        }
    }
    let (got, n) = hash_file(&part)?;
    if got != sha || n != size {
        let _ = std::fs::remove_file(&part);
        return Err(WorkerError::Other(format!(
            "downloaded input does not match its sha256 {sha}"
        )));
    }
    std::fs::rename(&part, &path).map_err(io_err("filing the input in the cache"))?;
    log.write(format!("kiln: fetched input {sha} ({size} bytes)\n").as_bytes());
    Ok(path)
}

/// Upload every artifact, resuming from what the master already holds.
async fn upload_all(
    client: &mut FarmClient<Channel>,
    files: &HashMap<String, PathBuf>,
    job: u64,
    attempt: u32,
    artifacts: &[pb::Artifact],
    fresh: bool,
) -> Result<(), tonic::Status> {
    for a in artifacts
        .iter()
        .filter(|a| a.inline.is_empty() && a.size > 0)
    {
        let key = pb::UploadKey {
            job_id: job,
            attempt,
            name: a.name.clone(),
            size: a.size,
            sha256: a.sha256.clone(),
        };
        // First try: send it whole, no status round trip. After a failure
        // (or on a resend after a reconnect), ask what the master has.
        let st = if fresh {
            pb::UploadState {
                have: 0,
                complete: false,
            }
        } else {
            client.upload_status(key.clone()).await?.into_inner()
        };
        if st.complete {
            continue;
        }
        // Not in `files`: content the master holds already (the input).
        let Some(path) = files.get(&a.name) else {
            continue;
        };
        // Never through a symbolic link; only the regular file listed.
        let mut f = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .await
            .map_err(|e| tonic::Status::internal(format!("opening {}: {e}", a.name)))?;
        let md = f
            .metadata()
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        if !md.is_file() || md.len() != a.size {
            return Err(tonic::Status::internal(format!(
                "{} changed after it was listed",
                a.name
            )));
        }
        f.seek(std::io::SeekFrom::Start(st.have))
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let (tx, rx) = mpsc::channel::<pb::UploadChunk>(4);
        let offset = st.have;
        let left = a.size.saturating_sub(offset) as usize;
        let reader = tokio::spawn(async move {
            let mut first = true;
            let mut buf = vec![0u8; left.clamp(1, pb::CHUNK_SIZE)];
            loop {
                let n = match f.read(&mut buf).await {
                    Ok(n) => n,
                    Err(_) => return,
                };
                if n == 0 && !first {
                    return;
                }
                let chunk = pb::UploadChunk {
                    key: first.then(|| key.clone()),
                    offset: if first { offset } else { 0 },
                    data: buf[..n].to_vec(),
                };
                first = false;
                if tx.send(chunk).await.is_err() || n == 0 {
                    return;
                }
            }
        });
        let st = client
            .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let _ = reader.await;
        if !st.complete {
            return Err(tonic::Status::unavailable(format!(
                "upload of {} stopped at {} bytes",
                a.name, st.have
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::LogText;

    fn log(cap: u64) -> LogText {
        LogText {
            path: std::path::PathBuf::from("/nonexistent/build.log"),
            mem: Vec::new(),
            file: None,
            failed: false,
            written: 0,
            cap,
            cut: false,
        }
    }

    #[test]
    fn a_log_that_fills_the_cap_exactly_gets_its_marker_with_the_next_byte() {
        let mut t = log(10);
        t.append(b"0123456789");
        assert_eq!(t.mem, b"0123456789", "exactly the cap is kept whole");
        assert!(!t.cut);
        t.append(b"more");
        let text = String::from_utf8(t.mem.clone()).unwrap();
        assert!(
            text.starts_with("0123456789\n[kiln: log cut here"),
            "{text}"
        );
        assert!(t.cut);
        let len = t.mem.len();
        t.append(b"and more");
        assert_eq!(t.mem.len(), len, "nothing is kept past the marker");
    }

    #[test]
    fn a_chunk_across_the_cap_is_cut_inside() {
        let mut t = log(4);
        t.append(b"abcdefgh");
        let text = String::from_utf8(t.mem.clone()).unwrap();
        assert!(text.starts_with("abcd\n[kiln: log cut here"), "{text}");
    }
}
