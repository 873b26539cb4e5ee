//! The worker endpoint's gRPC service: the session stream, input fetch and
//! artifact upload (resumable, checked by sha256).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use kiln_core::names::{check_arch, check_file_name, check_ident};
use kiln_core::pki::PeerIdentity;
use kiln_proto as pb;
use pb::farm_server::{Farm, FarmServer};
use pb::worker_msg::Msg as In;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::intake::JobRef;
use crate::paths::is_sha256;
use crate::Core;
use sha2::Digest;

/// An I/O error of the master's own disk, as the worker sees it: a full
/// disk says so (and is worth retrying later); anything else is internal.
fn disk_status(e: std::io::Error) -> Status {
    if e.kind() == std::io::ErrorKind::StorageFull {
        Status::resource_exhausted("no space left on device on the master; retry later")
    } else {
        Status::internal(format!("the master's disk: {e}"))
    }
}

pub fn service(core: Arc<Core>) -> FarmServer<FarmService> {
    FarmServer::new(FarmService { core })
        .max_decoding_message_size(4 << 20)
        .max_encoding_message_size(4 << 20)
}

pub struct FarmService {
    core: Arc<Core>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl FarmService {
    fn peer<T>(&self, req: &Request<T>) -> Result<PeerIdentity, Status> {
        let p = req
            .extensions()
            .get::<PeerIdentity>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        if self.core.revoked.is_revoked(p.serial) {
            return Err(Status::permission_denied(
                "this worker's certificate is revoked",
            ));
        }
        Ok(p)
    }

    /// The (build, arch) of a job the peer holds at this attempt.
    fn held(&self, peer: &PeerIdentity, job: u64, attempt: u32) -> Result<JobRef, Status> {
        let s = self.core.sched();
        let job = job as i64;
        match s.job_current(job) {
            Some((build, _, _, arch, _)) if s.holds(&peer.name, job, attempt) => Ok(JobRef {
                build,
                job,
                attempt,
                arch,
            }),
            Some((_, cur, _, _, _)) if cur != attempt => Err(Status::failed_precondition(format!(
                "stale attempt: job {job} is at attempt {cur}"
            ))),
            _ => Err(Status::failed_precondition(format!(
                "job {job} is not held by worker {}",
                peer.name
            ))),
        }
    }
}

fn msg(m: pb::master_msg::Msg) -> pb::MasterMsg {
    pb::MasterMsg { msg: Some(m) }
}

#[tonic::async_trait]
impl Farm for FarmService {
    type SessionStream = BoxStream<pb::MasterMsg>;
    type FetchStream = BoxStream<pb::Chunk>;

    async fn session(
        &self,
        req: Request<Streaming<pb::WorkerMsg>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = self.peer(&req)?;
        let mut inbound = req.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::WorkerMsg {
                msg: Some(In::Hello(h)),
            }) => h,
            _ => return Err(Status::invalid_argument("the first message must be hello")),
        };
        if hello.name != peer.name {
            return Err(Status::permission_denied(format!(
                "certificate is for worker {:?}, hello says {:?}",
                peer.name, hello.name
            )));
        }
        for a in &hello.arches {
            check_arch(a).map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        for c in &hello.channels {
            check_ident("channel", c).map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        if hello.arches.is_empty() || hello.channels.is_empty() {
            return Err(Status::invalid_argument(
                "a worker needs arches and channels",
            ));
        }
        if !(1..=1024).contains(&hello.capacity) {
            return Err(Status::invalid_argument(
                "capacity must be between 1 and 1024",
            ));
        }
        let name = peer.name.clone();
        let row = self
            .core
            .store
            .read({
                let n = name.clone();
                move |c| kiln_store::get_worker(c, &n)
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        match row {
            Some(w) if !w.revoked && w.serial == Some(peer.serial) => {}
            Some(w) if w.revoked => {
                return Err(Status::permission_denied("this worker is revoked"))
            }
            _ => {
                return Err(Status::permission_denied(
                    "this certificate was superseded by a newer enrollment",
                ))
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let who = crate::sched::Hello {
            name: name.clone(),
            serial: peer.serial,
            arches: hello.arches.clone(),
            channels: hello.channels.clone(),
            capacity: hello.capacity,
            draining: hello.draining,
            host_builds: !hello.no_host_builds,
        };
        let ((conn, drop), fx) = self.core.decide(|s, fx| {
            let r = s.connect(fx, who, &hello.running, tx.clone());
            s.fill_worker(fx, &name);
            r
        });
        let heartbeat_secs = (self.core.cfg.lease_secs / 3).max(1);
        let _ = tx.send(msg(pb::master_msg::Msg::Welcome(pb::Welcome {
            master_version: env!("CARGO_PKG_VERSION").to_string(),
            heartbeat_secs,
            drop,
        })));
        let (arches, channels, cap) = (hello.arches, hello.channels, hello.capacity);
        {
            let n = name.clone();
            // Queued now; nothing waits on it.
            std::mem::drop(
                self.core
                    .store
                    .write(move |t| kiln_store::worker_seen(t, &n, &arches, &channels, cap)),
            );
        }
        tracing::info!("worker {name} connected");
        let core = self.core.clone();
        tokio::spawn(async move {
            core.apply(fx).await;
            let silent = session_loop(core.clone(), &name, conn, inbound, tx).await;
            // The session's unanswered queries end with it, under the
            // scheduler lock (a query is registered under it too, with the
            // session it found current).
            let ((gone, dropped), _) = core.decide(|s, _| {
                (
                    s.disconnect(&name, conn),
                    core.queries.session_ended(&name, conn),
                )
            });
            if dropped > 0 {
                tracing::info!(
                    "worker {name}: {dropped} queries unanswered at the end of its session"
                );
            }
            if gone {
                tracing::info!("worker {name} disconnected");
                let n = name.clone();
                std::mem::drop(core.store.write(move |t| kiln_store::touch_worker(t, &n)));
                // A silent worker's leases lapsed already: it is lost now.
                // One that hung up may come back within a lease period.
                let grace = if silent {
                    Duration::ZERO
                } else {
                    Duration::from_secs(core.cfg.lease_secs)
                };
                crate::notify::worker_left(&core, &name, grace);
            }
        });
        let out = UnboundedReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }

    async fn fetch(
        &self,
        req: Request<pb::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        self.peer(&req)?;
        let r = req.into_inner();
        if !is_sha256(&r.sha256) {
            return Err(Status::invalid_argument("malformed sha256"));
        }
        let path = self.core.paths.cas(&r.sha256);
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|_| Status::not_found(format!("no input with sha256 {}", r.sha256)))?;
        f.seek(std::io::SeekFrom::Start(r.offset))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut buf = vec![0u8; pb::CHUNK_SIZE];
            loop {
                match f.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        let chunk = pb::Chunk {
                            data: buf[..n].to_vec(),
                        };
                        if tx.send(Ok(chunk)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn upload_status(
        &self,
        req: Request<pb::UploadKey>,
    ) -> Result<Response<pb::UploadState>, Status> {
        let peer = self.peer(&req)?;
        let key = req.into_inner();
        let j = self.held(&peer, key.job_id, key.attempt)?;
        check_file_name(&key.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(self.state_of(&j, &key).await))
    }

    async fn upload(
        &self,
        req: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<pb::UploadState>, Status> {
        let peer = self.peer(&req)?;
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty upload"))?;
        let key = first
            .key
            .clone()
            .ok_or_else(|| Status::invalid_argument("the first upload message needs a key"))?;
        let j = self.held(&peer, key.job_id, key.attempt)?;
        check_file_name(&key.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !is_sha256(&key.sha256) {
            return Err(Status::invalid_argument("malformed sha256"));
        }
        if key.size > self.core.cfg.max_artifact {
            return Err(Status::invalid_argument(format!(
                "artifact {} of {} bytes exceeds the limit of {} bytes",
                key.name, key.size, self.core.cfg.max_artifact
            )));
        }
        self.core.stage(j.job, j.attempt, &key.name, key.size)?;
        let part = self.core.paths.staged_part(j.job, j.attempt, &key.name);
        let done = self.core.paths.staged(j.job, j.attempt, &key.name);
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&part)
            .await
            .map_err(disk_status)?;
        let have = f.metadata().await.map_err(disk_status)?.len();
        if first.offset > have {
            return Err(Status::failed_precondition(format!(
                "upload of {} must resume at {have}, not {}",
                key.name, first.offset
            )));
        }
        f.set_len(first.offset).await.map_err(disk_status)?;
        // Hash as it arrives; on a resume, the part already here first.
        let mut hasher = sha2::Sha256::new();
        if first.offset > 0 {
            let p = part.clone();
            let off = first.offset;
            hasher = tokio::task::spawn_blocking(move || -> std::io::Result<sha2::Sha256> {
                use std::io::Read;
                let mut h = sha2::Sha256::new();
                let mut f = std::fs::File::open(&p)?.take(off);
                std::io::copy(&mut f, &mut h)?;
                Ok(h)
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(disk_status)?;
        }
        f.seek(std::io::SeekFrom::Start(first.offset))
            .await
            .map_err(disk_status)?;
        let mut written = first.offset;
        let mut chunk = Some(first);
        while let Some(c) = chunk {
            written += c.data.len() as u64;
            if written > key.size {
                drop(f);
                let _ = tokio::fs::remove_file(&part).await;
                return Err(Status::invalid_argument(format!(
                    "artifact {} is larger than its declared {} bytes",
                    key.name, key.size
                )));
            }
            hasher.update(&c.data);
            f.write_all(&c.data).await.map_err(disk_status)?;
            self.core
                .metrics
                .upload_bytes
                .fetch_add(c.data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            chunk = stream.message().await?;
        }
        f.flush().await.map_err(disk_status)?;
        drop(f);
        if written < key.size {
            return Ok(Response::new(pb::UploadState {
                have: written,
                complete: false,
            }));
        }
        let sha = hex::encode(hasher.finalize());
        if sha != key.sha256 {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(Status::data_loss(format!(
                "artifact {}: sha256 {sha} does not match the declared {}",
                key.name, key.sha256
            )));
        }
        tokio::fs::rename(&part, &done).await.map_err(disk_status)?;
        if let Ok(mut v) = self.core.verified.lock() {
            // Entries of jobs that never report are dropped in bulk; intake
            // then hashes again, which is only slower.
            if v.len() >= 100_000 {
                v.clear();
            }
            v.insert((j.job, j.attempt, key.name.clone()), sha);
        }
        Ok(Response::new(pb::UploadState {
            have: written,
            complete: true,
        }))
    }
}

impl FarmService {
    async fn state_of(&self, j: &JobRef, key: &pb::UploadKey) -> pb::UploadState {
        let done = self.core.paths.staged(j.job, j.attempt, &key.name);
        // Where the result filed it (an image build's files go to
        // `images/`): a worker that sends its result again after a master
        // restart does not upload a filed file again.
        let image = self.core.sched().image_of(j.build);
        let filed = crate::intake::job_files(&self.core.paths, j, image.as_deref()).join(&key.name);
        for p in [&done, &filed] {
            if let Ok(m) = tokio::fs::metadata(p).await {
                if m.len() == key.size {
                    return pb::UploadState {
                        have: key.size,
                        complete: true,
                    };
                }
            }
        }
        let have = tokio::fs::metadata(self.core.paths.staged_part(j.job, j.attempt, &key.name))
            .await
            .map(|m| m.len().min(key.size))
            .unwrap_or(0);
        pb::UploadState {
            have,
            complete: false,
        }
    }
}

/// How long a session may stay silent (no heartbeat, no message) before
/// the master ends it: twice the lease, so a few heartbeats (one every
/// third of a lease) may be late, and at least 3 s. It is checked every
/// half of it, so a silent session ends within 1.5 times this.
pub(crate) fn silence_limit(lease_secs: u64) -> Duration {
    Duration::from_secs(lease_secs.saturating_mul(2).max(3))
}

/// Serves one worker's session until it ends. True when the master ended
/// it because the worker fell silent (a hung process or a dead link that
/// keeps its TCP connection open).
async fn session_loop(
    core: Arc<Core>,
    name: &str,
    conn: u64,
    mut inbound: Streaming<pb::WorkerMsg>,
    tx: mpsc::UnboundedSender<pb::MasterMsg>,
) -> bool {
    let limit = silence_limit(core.cfg.lease_secs);
    // Silence is checked on a coarse tick, not with a timer per message
    // (log frames come by the hundred per second). `message` keeps its
    // state in the stream: dropping it at a tick loses nothing.
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + limit / 2, limit / 2);
    let mut heard = tokio::time::Instant::now();
    loop {
        let m = tokio::select! {
            m = inbound.message() => m,
            _ = check.tick() => {
                if heard.elapsed() >= limit {
                    tracing::warn!(
                        "worker {name}: nothing heard for {} s (no heartbeat); session ended",
                        limit.as_secs()
                    );
                    return true;
                }
                continue;
            }
        };
        heard = tokio::time::Instant::now();
        let m = match m {
            Ok(Some(m)) => m,
            Ok(None) => return false,
            Err(e) => {
                tracing::debug!("worker {name} stream: {e}");
                return false;
            }
        };
        if !core.sched().is_current(name, conn) {
            return false;
        }
        let Some(m) = m.msg else { continue };
        match m {
            In::Hello(_) => {}
            In::Heartbeat(_) => {
                let ((), _) = core.decide(|s, _| s.heartbeat(name, conn));
            }
            In::Draining(_) => {
                tracing::info!("worker {name} is draining");
                let ((), _) = core.decide(|s, _| s.drain(name, conn));
            }
            In::Accepted(a) => {
                let ((), fx) =
                    core.decide(|s, fx| s.accepted(fx, name, a.job_id as i64, a.attempt));
                core.apply(fx).await;
            }
            In::Log(l) => {
                let job = l.job_id as i64;
                let build = {
                    let s = core.sched();
                    s.holds(name, job, l.attempt)
                        .then(|| s.job_current(job).map(|c| c.0))
                        .flatten()
                };
                if let Some(build) = build {
                    if let Err(e) = core.logs.append_frame(build, job, &l.zdata) {
                        tracing::warn!("log of job {job} from {name}: {e}");
                    }
                }
            }
            In::QueryResult(r) => {
                let id = r.id;
                if !core.queries.answer(name, conn, r) {
                    tracing::debug!("worker {name}: answer to query {id}, which nobody waits for");
                }
            }
            In::Finished(f) => {
                let (core, name, tx) = (core.clone(), name.to_string(), tx.clone());
                tokio::spawn(async move {
                    use crate::result::Answer;
                    let (job_id, attempt) = (f.job_id, f.attempt);
                    let inline: usize = f.artifacts.iter().map(|a| a.inline.len()).sum();
                    core.metrics
                        .upload_bytes
                        .fetch_add(inline as u64, std::sync::atomic::Ordering::Relaxed);
                    let answer = crate::result::accept(&core, &name, report(f)).await;
                    let (accepted, message, retry) = match answer {
                        Answer::Accepted => (true, String::new(), false),
                        Answer::Refused(m) => (false, m, false),
                        Answer::Retry(m) => (false, m, true),
                    };
                    let _ = tx.send(msg(pb::master_msg::Msg::FinishAck(pb::FinishAck {
                        job_id,
                        attempt,
                        accepted,
                        message,
                        retry,
                    })));
                });
            }
        }
    }
}

/// The wire's result, as the result use case takes it.
fn report(f: pb::Finished) -> crate::result::Report {
    crate::result::Report {
        job: f.job_id as i64,
        attempt: f.attempt,
        success: f.success,
        message: f.message,
        artifacts: f
            .artifacts
            .into_iter()
            .map(|a| crate::intake::Reported {
                name: a.name,
                kind: a.kind,
                size: a.size,
                sha256: a.sha256,
                nevra: a.nevra,
                inline: a.inline,
            })
            .collect(),
        made: f.source.and_then(|s| {
            (!s.upstream_commit.is_empty()).then(|| crate::sched::Made {
                upstream_commit: s.upstream_commit,
                packaging_commit: (!s.packaging_commit.is_empty()).then_some(s.packaging_commit),
                version: s.version,
                release: (!s.release.is_empty()).then_some(s.release),
            })
        }),
    }
}
