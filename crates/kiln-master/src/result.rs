//! The result use case: a worker reports that a job ended. Its artifacts
//! are verified and filed (`intake`), the small ones journaled for
//! durability, the live log completed from the result's own log, and the
//! scheduler decides; staged leftovers are removed. The gRPC session only
//! translates the message and sends the acknowledgement.

use std::sync::Arc;

use crate::intake::{verify_and_file, IntakeError, JobRef, Reported};
use crate::Core;

/// A worker's report that a job ended (translated from the wire by the
/// transport).
#[derive(Debug, Clone)]
pub struct Report {
    pub job: i64,
    pub attempt: u32,
    pub success: bool,
    pub message: String,
    pub artifacts: Vec<Reported>,
    /// An srpm job's: what it made the SRPM from.
    pub made: Option<crate::sched::Made>,
}

/// What the worker is told about its report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Taken (the job succeeded or failed as reported, or failed because
    /// its artifacts were refused).
    Accepted,
    /// Not taken, for good (a late or unknown result), and why.
    Refused(String),
    /// Not taken now because of the master's own fault (its disk): report
    /// it again later. Nothing was decided.
    Retry(String),
}

/// A worker's report that a job ended.
pub async fn accept(core: &Arc<Core>, name: &str, f: Report) -> Answer {
    let name = name.to_string();
    let job = f.job;
    let cur = {
        let s = core.sched();
        s.holds(&name, job, f.attempt)
            .then(|| s.job_current(job))
            .flatten()
    };
    let mut journaled = None;
    let result = |success: bool, message: String, artifacts| crate::sched::JobResult {
        job,
        attempt: f.attempt,
        success,
        message,
        artifacts,
        made: f.made.clone(),
    };
    let (outcome, fx) = match cur {
        None => core.decide(|s, fx| {
            let r = s.finish(fx, &name, result(false, String::new(), vec![]));
            s.fill_worker(fx, &name);
            r
        }),
        Some((build, _, _, arch, _)) => {
            let jr = JobRef {
                build,
                job,
                attempt: f.attempt,
                arch,
            };
            let paths = core.paths.clone();
            let arts = f.artifacts.clone();
            let package = core.sched().package_of(build).unwrap_or_default();
            let image = core.sched().image_of(build);
            let files_dir = crate::intake::job_files(&core.paths, &jr, image.as_deref());
            let known: std::collections::HashMap<String, String> = core
                .verified
                .lock()
                .map(|mut v| {
                    arts.iter()
                        .filter_map(|a| {
                            v.remove(&(job, f.attempt, a.name.clone()))
                                .map(|sha| (a.name.clone(), sha))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let verified = tokio::task::spawn_blocking(move || {
                verify_and_file(&paths, &jr, &package, image.as_deref(), &arts, &known)
            })
            .await
            .unwrap_or_else(|e| {
                Err(IntakeError::Io(kiln_core::error::io_err(
                    "verification crashed",
                )(std::io::Error::other(
                    e.to_string(),
                ))))
            });
            let (success, message, rows) = match verified {
                Ok((rows, unsynced)) => {
                    // Queued ahead of the result's commit below.
                    if let Some(sy) = core.syncer.as_ref().filter(|_| !unsynced.is_empty()) {
                        journaled = Some((sy.clone(), sy.journal(unsynced)));
                    }
                    complete_log(core, build, job, &files_dir, &rows).await;
                    (f.success, f.message.clone(), rows)
                }
                Err(IntakeError::Refused(e)) => {
                    tracing::warn!("job {job} from {name}: {e}");
                    (false, format!("artifacts refused: {e}"), vec![])
                }
                Err(e @ IntakeError::Io(_)) => {
                    // The staged files stay for the next report.
                    tracing::error!("job {job} from {name}: cannot file its result: {e}");
                    return Answer::Retry(format!("the master cannot file the result now: {e}"));
                }
            };
            core.decide(|s, fx| {
                let r = s.finish(fx, &name, result(success, message, rows));
                s.fill_worker(fx, &name);
                r
            })
        }
    };
    core.apply(fx).await;
    if core.unstage(job, f.attempt) {
        // Whatever the result did not file (all of it, if refused).
        let paths = core.paths.clone();
        let attempt = f.attempt;
        let _ = tokio::task::spawn_blocking(move || {
            crate::housekeeping::purge_staged(&paths, job, attempt)
        })
        .await;
    }
    if let Some((sy, j)) = journaled {
        match j.await {
            Ok(()) => sy.kick(),
            Err(e) => tracing::error!("job {job}: cannot journal its incoming files: {e}"),
        }
    }
    match outcome {
        Ok(()) => Answer::Accepted,
        Err(e) => Answer::Refused(e.to_string()),
    }
}

/// If the live log missed chunks (the session dropped during the build),
/// keep the complete `build.log` of the result as the job's log.
async fn complete_log(
    core: &Arc<Core>,
    build: i64,
    job: i64,
    dir: &std::path::Path,
    rows: &[kiln_store::ArtifactRow],
) {
    let Some(log) = rows
        .iter()
        .find(|r| r.kind == kiln_core::state::ArtifactKind::Log && r.name == "build.log")
    else {
        return;
    };
    if core.logs.written(job) == Some(log.size) {
        return;
    }
    let path = dir.join(&log.name);
    let c = core.clone();
    let r = tokio::task::spawn_blocking(move || c.logs.replace(build, job, &path)).await;
    if let Ok(Err(e)) = r {
        tracing::warn!("job {job}: cannot store its complete log: {e}");
    }
}
