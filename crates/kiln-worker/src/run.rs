//! The worker's main loop: connect out, keep the session stream, run jobs,
//! upload results, reconnect with backoff and jitter, drain on request.
//!
//! A result the master has not acknowledged is kept on disk (beside its
//! files, in the job directory) as soon as it cannot be delivered at once,
//! and at a stop: the next start reports it again. Every other job
//! directory found at start is what a stopped or killed worker left, and is
//! removed.

use std::collections::{BTreeMap, HashMap};
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
use prost::Message as _;

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::backend::{make_private_dir, Backend, JobSpec, LogSink, SandboxStatus};

mod image_job;
use crate::{files, io_err, parse_master_url, WorkerError};

/// Tries of a request that fails on a live session (an upload the master
/// cannot take, a download it cannot serve) before the job is given up:
/// 1 s, 2 s, 4 s … at most 30 s apart. A new session starts the count over.
const RETRY_ATTEMPTS: u32 = 7;
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How long a draining worker that has nothing left to build waits for a
/// master it cannot reach before it stops, leaving its undelivered results
/// on disk for the next start.
const UNDELIVERED_GRACE: Duration = Duration::from_secs(10);

/// At a forced stop (a second SIGTERM, a revocation), how long the
/// canceled builds get to be killed before the worker exits.
const ABANDON_GRACE: Duration = Duration::from_secs(2);

/// A job's result kept on disk until the master acknowledges it.
const RESULT_FILE: &str = "result.json";

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
    /// dnf's package cache for buildroots is kept under this many MB.
    pub dnf_cache_mb: u64,
    /// Take only jobs of targets with a buildroot.
    pub no_host_builds: bool,
    /// The private key srpm jobs fetch ssh:// repositories with.
    pub git_ssh_key: Option<PathBuf>,
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
    /// The result, once the build is over, until the master acknowledges
    /// it (`None` while the job builds).
    held: Option<Arc<Held>>,
    /// `held` is in the job directory's [`RESULT_FILE`].
    kept: bool,
}

/// A job's result as it waits for the master.
struct Held {
    arch: String,
    finished: pb::Finished,
    /// The files to upload, by artifact name (all in the job directory).
    files: HashMap<String, PathBuf>,
    /// Worth keeping across a restart (a canceled build's is not).
    keep: bool,
}

struct Shared {
    cfg: WorkerConfig,
    name: String,
    session: watch::Sender<Session>,
    jobs: Mutex<HashMap<u64, LocalJob>>,
    /// One input download at a time (for all inputs: a second job waiting
    /// for the same input then finds it in the cache).
    fetching: tokio::sync::Mutex<()>,
    /// Base roots for the jobs of targets with a buildroot.
    roots: Arc<crate::buildroot::Roots>,
    /// What srpm jobs (builds from git) need: the mirrors' place, the ssh
    /// key.
    srpm: crate::srpm::SrpmEnv,
    /// Queries evaluated at once ([`crate::query::MAX_AT_ONCE`]; they take
    /// no build slot), and how many are waiting or running.
    queries: tokio::sync::Semaphore,
    queries_held: std::sync::atomic::AtomicUsize,
    /// Bumped when a build ends and when a job leaves `jobs`: what a drain
    /// and a stop wait on.
    changed: watch::Sender<u64>,
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

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn connected(&self) -> bool {
        self.session.borrow().client.is_some()
    }

    fn job_dir(&self, job: u64, attempt: u32) -> PathBuf {
        self.cfg.work.join("jobs").join(format!("{job}-{attempt}"))
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

/// How the worker came to stop.
enum Stopped {
    /// Drained: every job ran and was reported.
    Drained,
    /// Draining, nothing left to build, and the master out of reach.
    Unreachable,
    /// A second SIGTERM or SIGINT.
    Forced,
}

/// Run the worker until `stop` turns true (drain: running jobs finish and
/// upload, no new ones are taken) and every job is reported. A drain does
/// not wait for ever on a master it cannot reach: once nothing builds any
/// more and no session has been up for [`UNDELIVERED_GRACE`], it stops and
/// leaves its results on disk for the next start. A SIGTERM or SIGINT
/// during the drain stops at once (builds canceled). A revoked worker stops
/// with [`WorkerError::Revoked`].
pub async fn run(cfg: WorkerConfig, stop: watch::Receiver<bool>) -> Result<(), WorkerError> {
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
    match cfg.backend.sandbox() {
        SandboxStatus::Unsandboxed(why) => tracing::warn!(
            "WARNING: builds on this worker are NOT sandboxed ({why}): each runs as the \
             worker's own user, can read its key and files, reach the network and leave \
             processes behind. Install bubblewrap and use `--sandbox on` (the default)."
        ),
        SandboxStatus::Refused(why) => {
            tracing::error!("every build on this worker will fail: {why}")
        }
        SandboxStatus::Sandboxed | SandboxStatus::NotApplicable => {}
    }
    let (session, _) = watch::channel(Session::default());
    let (changed, _) = watch::channel(0u64);
    let roots = Arc::new(crate::buildroot::Roots::new(
        &cfg.work,
        Some(cfg.dir.join(crate::files::CA)),
        cfg.dnf_cache_mb.saturating_mul(1 << 20),
    ));
    let srpm = crate::srpm::SrpmEnv {
        work: cfg.work.clone(),
        ssh_key: cfg.git_ssh_key.clone(),
    };
    let shared = Arc::new(Shared {
        cfg,
        name,
        session,
        jobs: Mutex::new(HashMap::new()),
        fetching: tokio::sync::Mutex::new(()),
        roots,
        srpm,
        queries: tokio::sync::Semaphore::new(crate::query::MAX_AT_ONCE),
        queries_held: std::sync::atomic::AtomicUsize::new(0),
        changed,
    });
    recover(&shared);
    let end = tokio::select! {
        r = reconnect(&shared, &host, port, tls, stop.clone()) => r.map(|()| Stopped::Drained),
        s = watch_stop(&shared, stop) => Ok(s),
    };
    match end {
        Ok(Stopped::Drained) => Ok(()),
        Ok(Stopped::Unreachable) => {
            leave(
                &shared,
                &format!(
                    "no session with the master for {} s",
                    UNDELIVERED_GRACE.as_secs()
                ),
            );
            Ok(())
        }
        Ok(Stopped::Forced) => {
            tracing::warn!("stopping now (a second stop signal)");
            abandon(&shared).await;
            leave(&shared, "stopped before the master acknowledged them");
            Ok(())
        }
        Err(e @ WorkerError::Revoked(_)) => {
            tracing::error!("this worker was revoked; stopping");
            abandon(&shared).await;
            // What it holds can never be delivered under this identity.
            let dirs: Vec<PathBuf> = shared
                .jobs()
                .iter()
                .map(|(id, j)| shared.job_dir(*id, j.attempt))
                .collect();
            for d in dirs {
                remove_job_dir(&d);
            }
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// The reconnect loop: sessions one after the other, with backoff, until
/// drained (or revoked).
async fn reconnect(
    shared: &Arc<Shared>,
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let mut changed = shared.changed.subscribe();
    let mut failures: u32 = 0;
    let mut draining = *stop.borrow();
    loop {
        changed.borrow_and_update();
        if draining && shared.jobs().is_empty() {
            return Ok(());
        }
        let r = session_once(shared, host, port, tls.clone(), &mut stop, &mut draining).await;
        shared.session.send_modify(|s| {
            s.client = None;
            s.out = None;
        });
        match r {
            Ok(()) if draining && shared.jobs().is_empty() => return Ok(()),
            Ok(()) => failures = 0,
            Err(e @ WorkerError::Revoked(_)) => return Err(e),
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
            // Draining: a job that ends may have been the last one.
            _ = changed.changed(), if draining => {}
        }
    }
}

/// Resolves when the worker must stop without completing its drain: a
/// second stop signal, or nothing left to build and no session with the
/// master for [`UNDELIVERED_GRACE`]. Until the drain starts, it only waits.
async fn watch_stop(shared: &Shared, mut stop: watch::Receiver<bool>) -> Stopped {
    // A closed `stop` (its sender gone) drains as well.
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    {
        let jobs = shared.jobs();
        let building = jobs.values().filter(|j| j.held.is_none()).count();
        let unreachable = if shared.connected() {
            String::new()
        } else {
            format!(
                " (the master is not reachable now: once nothing builds, what it has not \
                 taken within {} s stays on disk for the next start)",
                UNDELIVERED_GRACE.as_secs()
            )
        };
        tracing::info!(
            "draining: finishing {building} running jobs and reporting {} results{unreachable}",
            jobs.len() - building,
        );
    }
    // Listened to only from now on: the first signal is the drain's.
    let force = next_stop_signal();
    tokio::pin!(force);
    let mut session = shared.session.subscribe();
    let mut changed = shared.changed.subscribe();
    let mut stuck_since: Option<Instant> = None;
    loop {
        let unreachable = session.borrow_and_update().client.is_none();
        changed.borrow_and_update();
        let only_results = {
            let jobs = shared.jobs();
            !jobs.is_empty() && jobs.values().all(|j| j.held.is_some())
        };
        stuck_since = if unreachable && only_results {
            stuck_since.or(Some(Instant::now()))
        } else {
            None
        };
        let deadline = stuck_since.map(|t| t + UNDELIVERED_GRACE);
        tokio::select! {
            _ = &mut force => return Stopped::Forced,
            r = session.changed() => if r.is_err() { std::future::pending::<()>().await },
            r = changed.changed() => if r.is_err() { std::future::pending::<()>().await },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                return Stopped::Unreachable;
            }
        }
    }
}

/// The next SIGTERM or SIGINT after this call (never, if they cannot be
/// listened to). The handlers are installed by the call, not at the first
/// poll.
fn next_stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let signals = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => Some((t, i)),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("cannot listen for a second stop signal: {e}");
            None
        }
    };
    async move {
        match signals {
            Some((mut t, mut i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// Cancel every build (its processes are killed) and give the builds a
/// moment to end.
async fn abandon(shared: &Shared) {
    for j in shared.jobs().values() {
        let _ = j.cancel.send(true);
    }
    let deadline = Instant::now() + ABANDON_GRACE;
    let mut changed = shared.changed.subscribe();
    loop {
        changed.borrow_and_update();
        if shared.jobs().values().all(|j| j.held.is_some()) {
            return;
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// At a stop that leaves jobs behind: keep every result not kept yet, and
/// say what is left undelivered and what was abandoned.
fn leave(shared: &Shared, why: &str) {
    let jobs: Vec<(u64, u32, Option<Arc<Held>>, bool)> = shared
        .jobs()
        .iter()
        .map(|(id, j)| (*id, j.attempt, j.held.clone(), j.kept))
        .collect();
    let (mut kept, mut lost, mut abandoned) = (Vec::new(), Vec::new(), Vec::new());
    for (job, attempt, held, was_kept) in jobs {
        let what = format!("job {job} attempt {attempt}");
        match held {
            None => abandoned.push(what),
            Some(h) if !h.keep => abandoned.push(what),
            Some(h) => {
                let state = if h.finished.success {
                    "succeeded"
                } else {
                    "failed"
                };
                let dir = shared.job_dir(job, attempt);
                let on_disk = if was_kept {
                    Ok(())
                } else {
                    keep_result(&dir, &h)
                };
                match on_disk {
                    Ok(()) => kept.push(format!("{what} ({state})")),
                    Err(e) => lost.push(format!("{what} ({state}; cannot keep it: {e})")),
                }
            }
        }
    }
    if !kept.is_empty() {
        tracing::warn!(
            "stopping with {} result(s) the master has not acknowledged ({why}): {}; \
             kept in {} and reported at the next start",
            kept.len(),
            kept.join(", "),
            shared.cfg.work.join("jobs").display()
        );
    }
    if !lost.is_empty() {
        tracing::error!(
            "stopping with {} result(s) lost ({why}): {}",
            lost.len(),
            lost.join(", ")
        );
    }
    if !abandoned.is_empty() {
        tracing::warn!(
            "stopping with {} build(s) abandoned (the master runs them again): {}",
            abandoned.len(),
            abandoned.join(", ")
        );
    }
}

/// The revocation behind an error, if that is what it is: the master's
/// PERMISSION_DENIED "… revoked", or its TLS alert `certificate_revoked`,
/// anywhere in the chain of sources.
pub(crate) fn revocation(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(s) = err.downcast_ref::<tonic::Status>() {
            if s.code() == tonic::Code::PermissionDenied && s.message().contains("revoked") {
                return true;
            }
        }
        if let Some(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked)) =
            err.downcast_ref::<rustls::Error>()
        {
            return true;
        }
        // An `io::Error` does not give its inner error as its source.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if revocation(inner) {
                return true;
            }
        }
        if err.to_string().contains("CertificateRevoked") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// An error and its sources, on one line.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg = format!("{msg}: {t}");
        }
        src = s.source();
    }
    msg
}

/// A failed session call: a revocation (said by the master, or noted by
/// the channel's connection in `revoked`), or a connection problem to retry.
fn session_error(s: tonic::Status, revoked: &crate::conn::RevokedFlag) -> WorkerError {
    if revocation(&s) {
        WorkerError::Revoked(chain(&s))
    } else if revoked.is_set() {
        WorkerError::Revoked(format!(
            "the master refused the TLS handshake: certificate revoked ({})",
            s.message()
        ))
    } else {
        WorkerError::Connect(s.message().to_string())
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
    let (channel, revoked) = crate::conn::watched_channel(host, port, tls).await?;
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
        no_host_builds: shared.cfg.no_host_builds,
    };
    let _ = out_tx
        .send(pb::WorkerMsg {
            msg: Some(Out::Hello(hello)),
        })
        .await;
    let resp = client
        .session(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await
        .map_err(|s| session_error(s, &revoked))?;
    let mut inbound = resp.into_inner();
    let welcome = match inbound.message().await {
        Ok(Some(pb::MasterMsg {
            msg: Some(In::Welcome(w)),
        })) => w,
        Ok(_) => return Err(WorkerError::Connect("the master closed the session".into())),
        Err(s) => return Err(session_error(s, &revoked)),
    };
    for d in &welcome.drop {
        // The master no longer wants these (re-queued or canceled meanwhile).
        if let Some(j) = shared.jobs().remove(&d.job_id) {
            let _ = j.cancel.send(true);
        }
    }
    if !welcome.drop.is_empty() {
        shared.bump();
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
    let mut changed = shared.changed.subscribe();
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
                    Err(s) => return Err(session_error(s, &revoked)),
                };
                match m.msg {
                    Some(In::Assign(a)) => start_job(shared, a),
                    Some(In::Query(q)) => start_query(shared, q),
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
                shared.send(Out::Draining(pb::Draining {}));
            }
            _ = changed.changed(), if *draining => {}
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
                held: None,
                kept: false,
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
        let dir = shared.job_dir(job, attempt);
        job_task(&shared, a, &dir, cancel_rx).await;
        end_job(&shared, job, attempt, &dir);
    });
}

/// Most queries waiting or running at once; past it a query is refused
/// at once (the master asks another worker, or later).
const MAX_QUERIES_HELD: usize = 64;

/// Answer a query in a task of its own: fetch the SRPM (through the input
/// cache) and evaluate its spec in the sandbox ([`crate::query`]). At most
/// [`crate::query::MAX_AT_ONCE`] run at once, beside the builds. The answer
/// goes to the session the query came on: a new session (the master has
/// forgotten the query) ends it.
fn start_query(shared: &Arc<Shared>, q: pb::Query) {
    use std::sync::atomic::Ordering;
    let gen = shared.session.borrow().gen;
    let held = shared.queries_held.fetch_add(1, Ordering::SeqCst);
    let shared = shared.clone();
    tokio::spawn(async move {
        let answer = async {
            if held >= MAX_QUERIES_HELD {
                return crate::query::failed(
                    q.id,
                    format!("worker {} has {held} queries waiting already", shared.name),
                );
            }
            let Ok(_permit) = shared.queries.acquire().await else {
                return crate::query::failed(q.id, "the worker is stopping".into());
            };
            let srpm =
                match fetch_input(&shared, &q.srpm_sha256, q.srpm_size, &crate::query::Discard)
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        return crate::query::failed(
                            q.id,
                            format!(
                                "{}: fetching the SRPM: {e}",
                                kiln_core::names::shown(&q.srpm_name)
                            ),
                        )
                    }
                };
            crate::query::answer_in_root(&q, &srpm, &shared.cfg.work, &shared.roots).await
        };
        let answered = tokio::select! {
            r = answer => Some(r),
            _ = wait_new_session(&shared, gen) => None,
        };
        shared.queries_held.fetch_sub(1, Ordering::SeqCst);
        match answered {
            Some(r) => {
                if !r.ok {
                    tracing::info!("query {}: {}", r.id, r.error);
                }
                shared.send(Out::QueryResult(r));
            }
            None => tracing::info!("query {}: dropped with its session", q.id),
        }
    });
}

/// A job is over (reported, or no longer wanted): forget it and remove its
/// directory.
fn end_job(shared: &Shared, job: u64, attempt: u32, dir: &Path) {
    {
        let mut jobs = shared.jobs();
        if jobs.get(&job).is_some_and(|j| j.attempt == attempt) {
            jobs.remove(&job);
        }
    }
    remove_job_dir_later(dir);
    shared.bump();
}

/// The prefix of a job directory on its way out.
const GONE: &str = ".gone-";

/// Remove a job directory off the caller's path: renamed at once (a new
/// attempt of the job never meets it), deleted on a blocking thread (a
/// buildroot job's upper layer can hold thousands of files: seconds on a
/// slow disk). What a stop leaves is removed at the next start.
fn remove_job_dir_later(dir: &Path) {
    let Some(name) = dir.file_name() else {
        return remove_job_dir(dir);
    };
    let mut gone_name = std::ffi::OsString::from(GONE);
    gone_name.push(name);
    let gone = dir.with_file_name(gone_name);
    match (
        std::fs::rename(dir, &gone),
        tokio::runtime::Handle::try_current(),
    ) {
        (Ok(()), Ok(rt)) => {
            rt.spawn_blocking(move || remove_job_dir(&gone));
        }
        (Ok(()), Err(_)) => remove_job_dir(&gone),
        (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => {}
        (Err(_), _) => remove_job_dir(dir),
    }
}

/// At start: the results a previous run kept are reported again (their
/// jobs are in `running` of the first hello); every other job directory is
/// what a stopped, killed or revoked worker left, and is removed.
fn recover(shared: &Arc<Shared>) {
    let partial = shared.roots.remove_partial();
    if partial > 0 {
        tracing::info!("removed {partial} base roots a stop left half made");
    }
    let mirrors = crate::srpm::mirror::remove_partial(&shared.cfg.work.join("cache"));
    if mirrors > 0 {
        tracing::info!("removed {mirrors} git mirrors a stop left half made");
    }
    // Scratch directories of queries a stop interrupted.
    let queries = shared.cfg.work.join(crate::query::QUERIES_DIR);
    if std::fs::symlink_metadata(&queries).is_ok() {
        remove_job_dir(&queries);
    }
    let jobs_dir = shared.cfg.work.join("jobs");
    let Ok(rd) = std::fs::read_dir(&jobs_dir) else {
        return;
    };
    let mut removed = 0usize;
    let mut found: BTreeMap<u64, (u32, PathBuf, Held)> = BTreeMap::new();
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(GONE) {
            // Left by a stop while it was being removed.
            removed += 1;
            remove_job_dir(&e.path());
            continue;
        }
        let Some((job, attempt)) = e.file_name().to_str().and_then(parse_job_dir) else {
            continue;
        };
        let dir = e.path();
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            removed += 1;
            remove_stale(&dir, false);
            continue;
        }
        match load_result(&dir, job, attempt) {
            Ok(Some(held)) => {
                // Of one job, only the latest attempt can still be wanted.
                match found.remove(&job) {
                    Some((a, d, h)) if a > attempt => {
                        remove_stale(&dir, true);
                        found.insert(job, (a, d, h));
                    }
                    Some((_, d, _)) => {
                        remove_stale(&d, true);
                        found.insert(job, (attempt, dir, held));
                    }
                    None => {
                        found.insert(job, (attempt, dir, held));
                    }
                }
            }
            Ok(None) => {
                removed += 1;
                remove_stale(&dir, true);
            }
            Err(why) => {
                tracing::warn!(
                    "removing {}: its kept result is unusable: {why}",
                    dir.display()
                );
                remove_stale(&dir, true);
            }
        }
    }
    if removed > 0 {
        tracing::info!(
            "removed {removed} job directories left by the previous run (no result to report)"
        );
    }
    for (job, (attempt, dir, held)) in found {
        tracing::info!(
            "job {job} attempt {attempt}: reporting the result kept by the previous run ({})",
            if held.finished.success {
                "succeeded"
            } else {
                "failed"
            }
        );
        let held = Arc::new(held);
        let (cancel, _) = watch::channel(false);
        shared.jobs().insert(
            job,
            LocalJob {
                attempt,
                cancel,
                ack: None,
                held: Some(held.clone()),
                kept: true,
            },
        );
        let shared = shared.clone();
        tokio::spawn(async move {
            report(&shared, job, attempt, held, false).await;
            end_job(&shared, job, attempt, &dir);
        });
    }
}

fn remove_stale(p: &Path, is_dir: bool) {
    if is_dir {
        remove_job_dir(p);
    } else if let Err(e) = std::fs::remove_file(p) {
        tracing::warn!("cannot remove {}: {e}", p.display());
    }
}

/// `<job>-<attempt>`, as job directories are named.
fn parse_job_dir(name: &str) -> Option<(u64, u32)> {
    let (job, attempt) = name.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(job) || !digits(attempt) {
        return None;
    }
    Some((job.parse().ok()?, attempt.parse().ok()?))
}

/// [`RESULT_FILE`]: a result as kept on disk.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeptResult {
    job: u64,
    attempt: u32,
    arch: String,
    /// The `Finished` message (protobuf), in hex.
    finished: String,
    /// The files to upload, by artifact name, relative to the job directory.
    files: BTreeMap<String, PathBuf>,
}

/// Keep `held` in `dir` (atomically, synced, with what it names).
fn keep_result(dir: &Path, held: &Held) -> std::io::Result<()> {
    let mut files = BTreeMap::new();
    let real_dir = dir.canonicalize().ok();
    for (name, p) in &held.files {
        // Packages are named by their real paths.
        let rel = p
            .strip_prefix(dir)
            .ok()
            .or_else(|| real_dir.as_deref().and_then(|d| p.strip_prefix(d).ok()))
            .ok_or_else(|| std::io::Error::other(format!("{name} is not in the job directory")))?;
        files.insert(name.clone(), rel.to_path_buf());
    }
    let kept = KeptResult {
        job: held.finished.job_id,
        attempt: held.finished.attempt,
        arch: held.arch.clone(),
        finished: hex::encode(held.finished.encode_to_vec()),
        files,
    };
    let text = serde_json::to_vec(&kept).map_err(std::io::Error::other)?;
    make_private_dir(dir)?;
    // The packages and the log the result names, durable before it is.
    kiln_core::fsutil::syncfs(dir)?;
    let tmp = dir.join(format!("{RESULT_FILE}.tmp"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = create_new(&tmp)?;
    f.write_all(&text)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(RESULT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The result kept in job directory `dir` (of `job` at `attempt`), if any.
fn load_result(dir: &Path, job: u64, attempt: u32) -> Result<Option<Held>, String> {
    let path = dir.join(RESULT_FILE);
    let mut text = Vec::new();
    match open_regular(&path) {
        Ok(f) => f
            .take(64 << 20)
            .read_to_end(&mut text)
            .map_err(|e| format!("reading it: {e}"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("opening it: {e}")),
    };
    let kept: KeptResult = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    let bytes = hex::decode(&kept.finished).map_err(|e| e.to_string())?;
    let finished = pb::Finished::decode(&bytes[..]).map_err(|e| e.to_string())?;
    if (kept.job, kept.attempt) != (job, attempt)
        || (finished.job_id, finished.attempt) != (job, attempt)
    {
        return Err("it is another job's".into());
    }
    let real_dir = dir.canonicalize().map_err(|e| e.to_string())?;
    let mut files = HashMap::new();
    for (name, rel) in kept.files {
        // Inside the job directory, by a path without a link.
        let plain = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        let p = real_dir.join(&rel);
        if !plain || rel.as_os_str().is_empty() || p.canonicalize().ok().as_ref() != Some(&p) {
            return Err(format!("{} is not a file of the job directory", name));
        }
        files.insert(name, p);
    }
    Ok(Some(Held {
        arch: kept.arch,
        finished,
        files,
        keep: true,
    }))
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
    let (finished, files) = build(shared, &a, dir, cancel).await;
    let held = Arc::new(Held {
        arch: a.arch.clone(),
        keep: !is_canceled(&finished),
        finished,
        files,
    });
    match shared.jobs().get_mut(&job) {
        Some(j) if j.attempt == attempt => j.held = Some(held.clone()),
        _ => return,
    }
    shared.bump();
    report(shared, job, attempt, held, true).await;
}

/// A canceled build's result: nothing to keep or upload.
fn is_canceled(f: &pb::Finished) -> bool {
    f.canceled && f.artifacts.is_empty()
}

/// Report `held` until the master acknowledges it (across reconnects).
/// `fresh`: nothing of it was sent yet (a first upload sends each file
/// whole without asking what the master has). A result that is not
/// delivered at once is kept on disk until it is.
async fn report(shared: &Arc<Shared>, job: u64, attempt: u32, mut held: Arc<Held>, fresh: bool) {
    let dir = shared.job_dir(job, attempt);
    let mut fresh = fresh;
    let mut first = true;
    let mut retry = Retry::default();
    loop {
        if !(first && shared.connected()) {
            keep_once(shared, job, attempt, &dir, &held);
        }
        first = false;
        let (gen, mut client) = wait_client(shared).await;
        let uploaded = if held.finished.artifacts.is_empty() {
            Ok(())
        } else {
            upload_all(
                &mut client,
                &held.files,
                job,
                attempt,
                &held.finished.artifacts,
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
                held = Arc::new(Held {
                    finished: bare_failure(
                        job,
                        attempt,
                        &held.arch,
                        format!("uploading the results failed: {}", s.message()),
                    ),
                    arch: held.arch.clone(),
                    files: HashMap::new(),
                    keep: true,
                });
                match shared.jobs().get_mut(&job) {
                    Some(j) if j.attempt == attempt => {
                        j.held = Some(held.clone());
                        j.kept = false;
                    }
                    _ => return,
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        match shared.jobs().get_mut(&job) {
            Some(j) if j.attempt == attempt => j.ack = Some(tx),
            _ => return,
        }
        shared.send(Out::Finished(held.finished.clone()));
        tokio::select! {
            ack = rx => {
                if let Ok(ack) = ack {
                    if !ack.accepted && ack.retry {
                        // The master's own fault (its disk): the result is
                        // kept and reported again, for as long as it takes.
                        tracing::warn!("job {job}: the master will take the result later: {}", ack.message);
                        if !retry.wait(shared, gen).await {
                            tokio::time::sleep(RETRY_MAX).await;
                        }
                        continue;
                    }
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

/// Keep a job's result on disk unless it is already (or not worth it).
fn keep_once(shared: &Shared, job: u64, attempt: u32, dir: &Path, held: &Arc<Held>) {
    let wanted = match shared.jobs().get(&job) {
        Some(j) if j.attempt == attempt => !j.kept && held.keep,
        _ => false,
    };
    if !wanted {
        return;
    }
    match keep_result(dir, held) {
        Ok(()) => {
            tracing::info!(
                "job {job}: result kept in {} until the master takes it",
                dir.display()
            );
            if let Some(j) = shared.jobs().get_mut(&job).filter(|j| j.attempt == attempt) {
                // Unless the result changed meanwhile.
                j.kept = j.held.as_ref().is_some_and(|h| Arc::ptr_eq(h, held));
            }
        }
        Err(e) => tracing::warn!(
            "job {job}: cannot keep its result on disk ({e}): it is lost if the worker \
             stops before the master takes it"
        ),
    }
}

/// A failed result without files: only its listing (of nothing), which the
/// master needs to take any result.
fn bare_failure(job: u64, attempt: u32, arch: &str, message: String) -> pb::Finished {
    let listing = Listing {
        job,
        attempt,
        arch: arch.to_string(),
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
        job_id: job,
        attempt,
        success: false,
        message,
        artifacts,
        canceled: false,
        source: None,
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

/// Run one job: fetch its input, build, check what the build made, and
/// make the result (a failure that says why when anything went wrong). The
/// log ends with the outcome (`kiln: build succeeded`, `kiln: build
/// failed: …`), and is part of every result but a canceled build's.
async fn build(
    shared: &Arc<Shared>,
    a: &pb::Assign,
    dir: &Path,
    cancel: watch::Receiver<bool>,
) -> (pb::Finished, HashMap<String, PathBuf>) {
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
    if let Some(image) = &a.image {
        return image_job::run(shared, a, image, dir, &log, cancel).await;
    }
    let ran = match &a.source {
        Some(source) => Ok(run_srpm(shared, a, source, dir, &log, cancel).await),
        None => run_backend(shared, a, dir, &log, cancel).await,
    };
    let (mut success, mut message, packages, input, made) = match ran {
        Ok(Ended { outcome: o, .. }) if o.canceled => {
            return (canceled(a, o.message, &log), HashMap::new());
        }
        Ok(e) => (
            e.outcome.success,
            e.outcome.message,
            e.outcome.packages,
            e.input,
            e.source,
        ),
        Err(e) => (false, format!("worker error: {e}"), vec![], None, None),
    };
    // Every artifact by name: packages from the backend, the source rpm
    // (the input itself when the backend did not write one), then the log.
    let mut files: HashMap<String, PathBuf> = HashMap::new();
    let mut entries = Vec::new();
    if success {
        if let Err(why) = take_packages(a, &packages, input.as_deref(), &mut files, &mut entries) {
            success = false;
            message = why;
            files.clear();
            entries.clear();
        }
    }
    if success {
        log.write(b"kiln: build succeeded\n");
    } else {
        log.write(format!("kiln: build failed: {message}\n").as_bytes());
    }
    let log_text = match log.text.lock() {
        Ok(mut t) => {
            t.file.take();
            std::mem::take(&mut t.mem)
        }
        Err(_) => Vec::new(),
    };
    let listed = list_result(a, dir, success, message, files, entries, log_text, input);
    listed
        .map(|(mut finished, files)| {
            // What an srpm job made its SRPM from (as far as it got).
            finished.source = made;
            (finished, files)
        })
        .unwrap_or_else(|e| {
            (
                bare_failure(a.job_id, a.attempt, &a.arch, format!("worker error: {e}")),
                HashMap::new(),
            )
        })
}

/// How a job's work ended: the outcome, the input SRPM (a build's), and
/// what an srpm job made its SRPM from.
struct Ended {
    outcome: crate::backend::Outcome,
    input: Option<PathBuf>,
    source: Option<pb::SourceMade>,
}

/// An srpm job (`Assign.source`): the SRPM made from git
/// ([`crate::srpm`]); on a failure, the commits it found, if any.
async fn run_srpm(
    shared: &Arc<Shared>,
    a: &pb::Assign,
    source: &pb::GitSource,
    dir: &Path,
    log: &JobLog,
    cancel: watch::Receiver<bool>,
) -> Ended {
    let req = crate::srpm::SrpmRequest {
        source: source.clone(),
        disttag: a.disttag.clone(),
        timeout: Duration::from_secs(a.timeout_secs.max(1)),
        // The SRPM is made in a base root of the worker's own arch.
        buildroot: a.buildroot.as_ref().map(|b| {
            (
                crate::buildroot::RootSpec::new(&a.target, "noarch", b),
                shared.roots.clone(),
            )
        }),
    };
    let made = crate::srpm::make_srpm(&shared.srpm, &req, dir, log, cancel).await;
    Ended {
        outcome: made.outcome,
        input: None,
        source: Some(made.source).filter(|s| !s.upstream_commit.is_empty()),
    }
}

/// Fetch the input and run the backend: how the build ended, and the
/// input's path.
async fn run_backend(
    shared: &Arc<Shared>,
    a: &pb::Assign,
    dir: &Path,
    log: &JobLog,
    cancel: watch::Receiver<bool>,
) -> Result<Ended, WorkerError> {
    let srpm = fetch_input(shared, &a.srpm_sha256, a.srpm_size, log).await?;
    let spec = JobSpec {
        job: a.job_id,
        attempt: a.attempt,
        arch: a.arch.clone(),
        disttag: a.disttag.clone(),
        srpm,
        timeout: Duration::from_secs(a.timeout_secs.max(1)),
        buildroot: a.buildroot.as_ref().map(|b| {
            (
                crate::buildroot::RootSpec::new(&a.target, &a.arch, b),
                shared.roots.clone(),
            )
        }),
    };
    let outcome = shared
        .cfg
        .backend
        .build(&spec, dir, log, cancel)
        .await
        .map_err(|e| WorkerError::Other(e.to_string()))?;
    Ok(Ended {
        outcome,
        input: Some(spec.srpm),
        source: None,
    })
}

/// Check the packages a build made (and the source rpm: the input, `srpm`,
/// when the build wrote none; an srpm job, without input, must have made
/// one) and list them into `entries` and `files`:
/// every file is read through one descriptor, opened without following a
/// symbolic link, so what is checked is what is sent. Why not, when a
/// package is refused; messages name files by their names, never by their
/// paths on this host.
fn take_packages(
    a: &pb::Assign,
    packages: &[PathBuf],
    srpm: Option<&Path>,
    files: &mut HashMap<String, PathBuf>,
    entries: &mut Vec<ListingEntry>,
) -> Result<(), String> {
    let mut paths: Vec<PathBuf> = packages.to_vec();
    let has_srpm = paths
        .iter()
        .any(|p| p.to_string_lossy().ends_with(".src.rpm"));
    match srpm {
        Some(srpm) if !has_srpm => {
            kiln_core::names::check_file_name(&a.srpm_name)
                .map_err(|e| format!("worker error: {e}"))?;
            files.insert(a.srpm_name.clone(), srpm.to_path_buf());
            paths.push(srpm.to_path_buf());
        }
        None if !has_srpm => return Err("no source package was made".into()),
        _ => {}
    }
    for p in paths {
        let is_input = Some(p.as_path()) == srpm;
        let name = if is_input {
            a.srpm_name.clone()
        } else {
            let raw = p.file_name().map(|n| n.to_string_lossy().into_owned());
            match raw {
                Some(n) if kiln_core::names::check_file_name(&n).is_ok() => n,
                n => {
                    return Err(format!(
                        "the worker refused a package named {}: not a plain file name",
                        kiln_core::names::shown(n.as_deref().unwrap_or(""))
                    ))
                }
            }
        };
        let refused = |why: String| {
            format!(
                "the worker refused the package {}: {why}",
                kiln_core::names::shown(&name)
            )
        };
        let mut f = open_regular(&p).map_err(|e| refused(format!("cannot open it: {e}")))?;
        let kind = if name.ends_with(".src.rpm") {
            ArtifactKind::Srpm
        } else {
            ArtifactKind::Rpm
        };
        let nevra = inspect_open(&f, &p, &name).map_err(refused)?.nevra();
        let (sha256, size) = kiln_core::fsutil::sha256_open(&mut f)
            .map_err(|e| refused(format!("reading it: {e}")))?;
        if files.insert(name.clone(), p.clone()).is_some() && !is_input {
            return Err(format!(
                "the build made two packages named {}",
                kiln_core::names::shown(&name)
            ));
        }
        entries.push(ListingEntry {
            name,
            kind,
            size,
            sha256,
            nevra: Some(nevra),
        });
    }
    Ok(())
}

/// List the worker's own log file `name` in the job directory (never
/// inside what the build wrote) as an artifact, if it is there.
fn list_log_file(
    dir: &Path,
    name: &str,
    files: &mut HashMap<String, PathBuf>,
    entries: &mut Vec<ListingEntry>,
) -> Result<bool, WorkerError> {
    let path = dir.join(name);
    if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
        return Ok(false);
    }
    let mut f = open_regular(&path).map_err(io_err(format!("opening {name}")))?;
    let (sha256, size) =
        kiln_core::fsutil::sha256_open(&mut f).map_err(io_err(format!("reading {name}")))?;
    files.insert(name.into(), path);
    entries.push(ListingEntry {
        name: name.into(),
        kind: ArtifactKind::Log,
        size,
        sha256,
        nevra: None,
    });
    Ok(true)
}

/// The result of a build that ran: the packages taken (`files`, `entries`),
/// the log, the listing; small files inline.
#[allow(clippy::too_many_arguments)]
fn list_result(
    a: &pb::Assign,
    dir: &Path,
    success: bool,
    message: String,
    mut files: HashMap<String, PathBuf>,
    mut entries: Vec<ListingEntry>,
    log_text: Vec<u8>,
    srpm: Option<PathBuf>,
) -> Result<(pb::Finished, HashMap<String, PathBuf>), WorkerError> {
    let mut inline: HashMap<String, Vec<u8>> = HashMap::new();
    // The worker's own log: the file once it grew, else the text in memory.
    if !list_log_file(dir, "build.log", &mut files, &mut entries)? {
        entries.push(ListingEntry {
            name: "build.log".into(),
            kind: ArtifactKind::Log,
            size: log_text.len() as u64,
            sha256: kiln_core::fsutil::sha256_bytes(&log_text),
            nevra: None,
        });
        inline.insert("build.log".into(), log_text);
    }
    // What dnf did for a buildroot job, written by the worker beside the
    // build's directory.
    list_log_file(dir, crate::buildroot::ROOT_LOG, &mut files, &mut entries)?;
    let listing = Listing {
        job: a.job_id,
        attempt: a.attempt,
        arch: a.arch.clone(),
        artifacts: entries.clone(),
    };
    let text = serde_json::to_vec_pretty(&listing)
        .map_err(|e| WorkerError::Other(format!("encoding the listing: {e}")))?;
    if text.len() as u64 > pb::INLINE_MAX {
        make_private_dir(dir).map_err(io_err("creating the job directory"))?;
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
    if let Some(srpm) = srpm {
        files.retain(|name, p| !(*p == srpm && name == &a.srpm_name));
    }
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
            success,
            message,
            artifacts,
            canceled: false,
            source: None,
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
    Ok(kiln_core::fsutil::sha256_file(p).map_err(io_err(format!("reading {}", p.display())))?)
}

/// Open a file of a job directory for reading: never through a symbolic
/// link, and only a regular file (a FIFO the build planted would block).
pub(crate) fn open_regular(p: &Path) -> std::io::Result<std::fs::File> {
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
pub(crate) fn create_new(p: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
}

/// A package's header, read through the descriptor `f` already holds (its
/// `/proc/self/fd` entry names that very file, whatever the path now is).
/// Why not, with the file called `name` (never by its path on this host).
fn inspect_open(
    f: &std::fs::File,
    p: &Path,
    name: &str,
) -> Result<kiln_core::srpm::PackageInfo, String> {
    let fd_path = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    let path = if fd_path.exists() { &fd_path } else { p };
    inspect_package(path).map_err(|e| {
        e.to_string()
            .replace(&path.display().to_string(), name)
            .replace(&p.display().to_string(), name)
    })
}

/// Remove a job directory. A build may have left directories it made
/// unreadable: open them up (never through a link) and try again.
pub(crate) fn remove_job_dir(dir: &Path) {
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
    log: &dyn LogSink,
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

/// The report of a job its cancel stopped (said at the end of its log).
fn canceled(a: &pb::Assign, message: String, log: &dyn LogSink) -> pb::Finished {
    log.write(b"kiln: build canceled\n");
    pb::Finished {
        job_id: a.job_id,
        attempt: a.attempt,
        success: false,
        message,
        artifacts: vec![],
        canceled: true,
        source: None,
    }
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

    /// A finished job's directory is out of the way at once and gone soon
    /// after, deleted on a blocking thread.
    #[tokio::test]
    async fn a_job_directory_is_renamed_at_once_and_removed_off_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("7-1");
        std::fs::create_dir_all(dir.join("root/upper/usr/bin")).unwrap();
        for i in 0..200 {
            std::fs::write(dir.join(format!("root/upper/usr/bin/f{i}")), b"x").unwrap();
        }
        remove_job_dir_later(&dir);
        assert!(!dir.exists(), "still under its own name");
        let gone = tmp.path().join(".gone-7-1");
        for _ in 0..500 {
            if !gone.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!gone.exists(), "never removed");
        // A directory that is already gone is nothing to do.
        remove_job_dir_later(&dir);
    }

    #[test]
    fn a_chunk_across_the_cap_is_cut_inside() {
        let mut t = log(4);
        t.append(b"abcdefgh");
        let text = String::from_utf8(t.mem.clone()).unwrap();
        assert!(text.starts_with("abcd\n[kiln: log cut here"), "{text}");
    }

    // ----- results kept across a restart, stale job directories -----

    use super::*;

    fn shared_in(work: &Path) -> Arc<Shared> {
        let (session, _) = watch::channel(Session::default());
        let (changed, _) = watch::channel(0u64);
        Arc::new(Shared {
            cfg: WorkerConfig {
                dir: work.join("worker"),
                name: Some("w".into()),
                master: None,
                arches: vec!["noarch".into()],
                channels: vec!["default".into()],
                capacity: 1,
                work: work.to_path_buf(),
                backend: Arc::new(crate::backend::Noop),
                announce: false,
                dnf_cache_mb: 1024,
                no_host_builds: false,
                git_ssh_key: None,
            },
            name: "w".into(),
            session,
            jobs: Mutex::new(HashMap::new()),
            fetching: tokio::sync::Mutex::new(()),
            roots: Arc::new(crate::buildroot::Roots::new(work, None, 1 << 30)),
            srpm: crate::srpm::SrpmEnv::new(work),
            queries: tokio::sync::Semaphore::new(crate::query::MAX_AT_ONCE),
            queries_held: std::sync::atomic::AtomicUsize::new(0),
            changed,
        })
    }

    /// A result of job `job` at attempt 1 with one package in `dir`.
    fn held_in(dir: &Path, job: u64) -> Held {
        held_at(dir, job, 1)
    }

    fn held_at(dir: &Path, job: u64, attempt: u32) -> Held {
        let pkg = dir.join("build/topdir/RPMS/noarch/p-1-1.noarch.rpm");
        std::fs::create_dir_all(pkg.parent().unwrap()).unwrap();
        std::fs::write(&pkg, b"a package").unwrap();
        let mut finished = bare_failure(job, attempt, "noarch", String::new());
        finished.success = true;
        finished.artifacts.push(pb::Artifact {
            name: "p-1-1.noarch.rpm".into(),
            kind: "rpm".into(),
            size: 9,
            sha256: kiln_core::fsutil::sha256_bytes(b"a package"),
            nevra: "p-0:1-1.noarch".into(),
            inline: vec![],
        });
        Held {
            arch: "noarch".into(),
            finished,
            files: HashMap::from([("p-1-1.noarch.rpm".to_string(), pkg)]),
            keep: true,
        }
    }

    #[test]
    fn job_directory_names() {
        assert_eq!(parse_job_dir("12-3"), Some((12, 3)));
        for bad in ["12", "12-", "-3", "a-1", "1-1-1", "1-+1", "1-1.tmp", ""] {
            assert_eq!(parse_job_dir(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_kept_result_reads_back_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("jobs/5-1");
        let held = held_in(&dir, 5);
        keep_result(&dir, &held).unwrap();
        let mode = std::fs::metadata(dir.join(RESULT_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = load_result(&dir, 5, 1).unwrap().unwrap();
        assert_eq!(back.finished, held.finished);
        assert_eq!(back.arch, "noarch");
        let real = held.files["p-1-1.noarch.rpm"].canonicalize().unwrap();
        assert_eq!(back.files["p-1-1.noarch.rpm"], real);
        // Kept again (a result that changed): replaced whole.
        keep_result(&dir, &held).unwrap();
        assert!(!dir.join(format!("{RESULT_FILE}.tmp")).exists());
        // Another job's directory, or none kept at all.
        assert!(load_result(&dir, 5, 2).is_err());
        assert!(load_result(&dir, 6, 1).is_err());
        assert!(load_result(&tmp.path().join("jobs/9-1"), 9, 1)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_kept_result_naming_a_file_outside_its_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("jobs/5-1");
        keep_result(&dir, &held_in(&dir, 5)).unwrap();
        let text = std::fs::read_to_string(dir.join(RESULT_FILE)).unwrap();
        std::fs::write(tmp.path().join("secret"), b"s").unwrap();
        for evil in ["../../secret", "/etc/passwd", "build/link.rpm"] {
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v["files"]["p-1-1.noarch.rpm"] = evil.into();
            std::fs::write(dir.join(RESULT_FILE), v.to_string()).unwrap();
            if evil == "build/link.rpm" {
                let _ = std::fs::remove_file(dir.join(evil));
                std::os::unix::fs::symlink(tmp.path().join("secret"), dir.join(evil)).unwrap();
            }
            let err = load_result(&dir, 5, 1)
                .err()
                .unwrap_or_else(|| panic!("{evil} taken"));
            assert!(err.contains("not a file of the job directory"), "{err}");
        }
    }

    #[tokio::test]
    async fn at_start_only_the_kept_results_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let jobs = tmp.path().join("jobs");
        // A result kept by the previous run.
        let kept = jobs.join("5-1");
        let held = held_in(&kept, 5);
        keep_result(&kept, &held).unwrap();
        // A build killed with the worker, with a directory it locked.
        let killed = jobs.join("6-2");
        std::fs::create_dir_all(killed.join("build/locked/deeper")).unwrap();
        std::fs::set_permissions(
            killed.join("build/locked"),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        // A result that cannot be read back, a stray file, something else.
        let broken = jobs.join("7-1");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join(RESULT_FILE), b"{").unwrap();
        std::fs::write(jobs.join("8-1"), b"").unwrap();
        std::fs::create_dir_all(jobs.join("not-a-job")).unwrap();
        // Two attempts of one job kept: only the latest can be wanted.
        for attempt in [3, 2] {
            let d = jobs.join(format!("9-{attempt}"));
            keep_result(&d, &held_at(&d, 9, attempt)).unwrap();
        }

        let shared = shared_in(tmp.path());
        recover(&shared);
        let mut left: Vec<String> = std::fs::read_dir(&jobs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["5-1", "9-3", "not-a-job"]);
        let jobs = shared.jobs();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[&9].attempt, 3);
        let j = &jobs[&5];
        assert_eq!(j.attempt, 1);
        assert!(j.kept);
        assert_eq!(j.held.as_ref().unwrap().finished, held.finished);
    }

    #[tokio::test]
    async fn a_stop_keeps_what_is_undelivered_and_drops_what_was_canceled() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = shared_in(tmp.path());
        let held = Arc::new(held_in(&shared.job_dir(5, 1), 5));
        let canceled = Arc::new(Held {
            keep: false,
            ..held_in(&shared.job_dir(6, 1), 6)
        });
        for (id, h) in [(5, Some(held.clone())), (6, Some(canceled)), (7, None)] {
            let (cancel, _) = watch::channel(false);
            shared.jobs().insert(
                id,
                LocalJob {
                    attempt: 1,
                    cancel,
                    ack: None,
                    held: h,
                    kept: false,
                },
            );
        }
        leave(&shared, "a test");
        let back = load_result(&shared.job_dir(5, 1), 5, 1).unwrap().unwrap();
        assert_eq!(back.finished, held.finished);
        assert!(load_result(&shared.job_dir(6, 1), 6, 1).unwrap().is_none());
        assert!(!shared.job_dir(7, 1).exists());
    }

    // ----- revocation -----

    #[test]
    fn a_revocation_is_told_from_other_failures() {
        let alert = || {
            std::io::Error::other(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateRevoked,
            ))
        };
        assert!(revocation(&alert()));
        assert!(revocation(&tonic::Status::from_error(Box::new(alert()))));
        assert!(revocation(&tonic::Status::permission_denied(
            "this worker is revoked"
        )));
        assert!(revocation(&tonic::Status::permission_denied(
            "this worker's certificate is revoked"
        )));
        assert!(!revocation(&tonic::Status::permission_denied(
            "this certificate was superseded by a newer enrollment"
        )));
        assert!(!revocation(&tonic::Status::unavailable(
            "connection refused"
        )));
        let other = std::io::Error::other(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate,
        ));
        assert!(!revocation(&other));
    }

    /// A worker whose serial the master revoked, against a real TLS
    /// endpoint: connecting and saying hello ends in `Revoked`.
    #[tokio::test]
    async fn a_revoked_certificate_is_told_at_the_handshake() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = kiln_core::pki::Ca::load_or_create(&tmp.path().join("pki")).unwrap();
        let (cert, key) = ca.issue_server_cert(&["127.0.0.1".to_string()]).unwrap();
        let revoked = kiln_core::pki::RevocationList::new();
        revoked.revoke(7);
        let server =
            Arc::new(kiln_core::pki::worker_endpoint_config(&ca, &cert, &key, revoked).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(server);
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.accept(tcp).await;
                });
            }
        });
        let (wkey, csr) = kiln_core::pki::make_key_and_csr("w").unwrap();
        let wcert = ca.sign_worker_csr(&csr, "w", 7, 30).unwrap();
        let tls =
            Arc::new(kiln_core::pki::worker_client_config(ca.cert_pem(), &wcert, &wkey).unwrap());
        let err = match crate::conn::watched_channel("127.0.0.1", port, tls).await {
            Err(e) => e,
            Ok((ch, revoked)) => {
                let (tx, rx) = mpsc::channel::<pb::WorkerMsg>(1);
                tx.send(pb::WorkerMsg {
                    msg: Some(Out::Hello(pb::Hello::default())),
                })
                .await
                .unwrap();
                match FarmClient::new(ch)
                    .session(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                {
                    Err(s) => session_error(s, &revoked),
                    Ok(_) => panic!("a revoked worker got a session"),
                }
            }
        };
        assert!(matches!(err, WorkerError::Revoked(_)), "{err:?}");
    }

    // ----- srpm jobs (builds from git) -----

    /// An Assign with a source is an srpm job: its result is the SRPM made
    /// from git (one artifact of kind `srpm`, inline when small), the log
    /// and listing as for a build, and what it was made from.
    #[tokio::test]
    async fn an_srpm_job_reports_its_srpm_and_what_it_was_made_from() {
        let p = crate::srpm::tests::Project::new();
        let shared = shared_in(&p.env.work);
        let a = pb::Assign {
            job_id: 41,
            attempt: 1,
            arch: "src".into(),
            target: "t".into(),
            disttag: ".kt1".into(),
            timeout_secs: 120,
            source: Some(p.ci()),
            ..Default::default()
        };
        let (_tx, rx) = watch::channel(false);
        let (finished, _files) = build(&shared, &a, &shared.job_dir(41, 1), rx).await;
        assert!(finished.success, "{}", finished.message);
        let head = p.up.head();
        let version = format!("1.0^20260101.020000.2.g{}", &head[..7]);
        assert_eq!(
            finished.source,
            Some(pb::SourceMade {
                upstream_commit: head,
                packaging_commit: p.pk.head(),
                version: version.clone(),
                release: String::new(),
            })
        );
        let srpms: Vec<&pb::Artifact> = finished
            .artifacts
            .iter()
            .filter(|x| x.kind == "srpm")
            .collect();
        assert_eq!(srpms.len(), 1, "{:?}", finished.artifacts);
        assert_eq!(srpms[0].name, format!("hello-{version}-1.kt1.src.rpm"));
        assert_eq!(srpms[0].nevra, format!("hello-0:{version}-1.kt1.src"));
        assert_eq!(srpms[0].inline.len() as u64, srpms[0].size);
        let inline = |n: &str| {
            let a = finished.artifacts.iter().find(|x| x.name == n).unwrap();
            String::from_utf8(a.inline.clone()).unwrap()
        };
        let log = inline("build.log");
        assert!(log.starts_with("kiln: job 41 attempt 1 (src)"), "{log}");
        assert!(
            log.contains("mirror created") && log.ends_with("kiln: build succeeded\n"),
            "{log}"
        );
        let listing: Listing = serde_json::from_str(&inline(LISTING_NAME)).unwrap();
        assert_eq!(listing.arch, "src");
        assert_eq!(listing.artifacts.len(), 2, "{:?}", listing.artifacts);

        // A failure: its first line, no commit to report.
        let (_tx, rx) = watch::channel(false);
        let bad = pb::Assign {
            job_id: 42,
            source: Some(pb::GitSource {
                upstream_ref: "nope".into(),
                ..p.ci()
            }),
            ..a
        };
        let (finished, _) = build(&shared, &bad, &shared.job_dir(42, 1), rx).await;
        assert!(!finished.success);
        assert_eq!(
            finished.message,
            format!(
                "fetching {}#nope: fatal: couldn't find remote ref nope",
                p.up.url()
            )
        );
        assert_eq!(finished.source, None);
        assert!(finished.artifacts.iter().all(|x| x.kind != "srpm"));
    }

    // ----- packages the worker refuses -----

    #[test]
    fn a_refused_package_is_named_by_its_file_name_only() {
        let tmp = tempfile::tempdir().unwrap();
        let rpms = tmp.path().join("jobs/3-1/build/topdir/RPMS/noarch");
        std::fs::create_dir_all(&rpms).unwrap();
        let bad = rpms.join("bad-1-1.noarch.rpm");
        std::fs::write(&bad, vec![0x5a; 4096]).unwrap();
        let srpm = tmp.path().join("cache-input");
        std::fs::write(&srpm, b"input").unwrap();
        let a = pb::Assign {
            job_id: 3,
            attempt: 1,
            arch: "noarch".into(),
            srpm_name: "bad-1-1.src.rpm".into(),
            ..Default::default()
        };
        let (mut files, mut entries) = (HashMap::new(), Vec::new());
        let err = take_packages(&a, &[bad], Some(&srpm), &mut files, &mut entries).unwrap_err();
        assert!(
            err.starts_with("the worker refused the package \"bad-1-1.noarch.rpm\": "),
            "{err}"
        );
        let host = tmp.path().to_string_lossy().into_owned();
        assert!(!err.contains(&host) && !err.contains("/proc/"), "{err}");
    }
}
