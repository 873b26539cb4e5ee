//! The submit use case: a build request checked against its target, its
//! SRPM inspected, the version gate applied, and the build committed and
//! dispatched (or recorded as skipped). Transports (the HTTP API today; the
//! web UI, webhooks and MQTT later) translate their requests into a call and
//! its [`Submitted`] rows into their answers.

use kiln_api::{SubmitRequest, NOW_PRIORITY};
use kiln_core::names::{check_arch, check_file_name, check_ident};
use kiln_core::srpm::{inspect_srpm, plan_arches};
use kiln_store::{BuildRow, Excluded, JobRow, NewBuild, StoreError};

use crate::paths::is_sha256;
use crate::Core;

/// Why a submit was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The request or its SRPM: the caller's to fix.
    #[error("{0}")]
    Bad(String),
    /// The SRPM must be uploaded first.
    #[error("the master does not have this SRPM yet: upload it first")]
    BlobMissing,
    /// Something the request needs is not there now (no worker to read a
    /// batch's specs): retry later.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A build as submit committed it: its row (state `queued`, or `skipped`
/// with the version gate's reason) and its jobs' rows (none when skipped).
/// A dispatch already under way shows in the next look, not here.
#[derive(Debug)]
pub struct Submitted {
    pub build: BuildRow,
    pub jobs: Vec<JobRow>,
}

/// A build request checked and its SRPM inspected, not yet committed.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub nb: NewBuild,
    pub info: kiln_core::srpm::PackageInfo,
    /// The version gate's reason to skip it, if it does.
    pub skip: Option<String>,
}

/// Submit a build without a submitter (tools and tests; a build from the
/// API records its token's name: [`submit_as`]).
pub async fn submit(core: &Core, req: &SubmitRequest) -> Result<Submitted, SubmitError> {
    submit_as(core, req, None).await
}

/// Submit a build that records `submitter` (the name of the caller's token).
pub async fn submit_as(
    core: &Core,
    req: &SubmitRequest,
    submitter: Option<String>,
) -> Result<Submitted, SubmitError> {
    let mut p = prepare(core, req).await?;
    p.nb.submitter = submitter;
    if let Some(reason) = p.skip.clone() {
        return record_skipped(core, p, reason).await;
    }
    commit(core, p).await
}

/// Check a request against its target, inspect its SRPM and apply the
/// version gate; nothing is stored.
pub async fn prepare(core: &Core, req: &SubmitRequest) -> Result<Prepared, SubmitError> {
    let known = || core.cfg.target_names();
    let target = match &req.target {
        Some(name) => core.cfg.target(name).ok_or_else(|| {
            SubmitError::Bad(format!("unknown target {name:?} (known: {})", known()))
        })?,
        None => core.cfg.default_target().ok_or_else(|| {
            SubmitError::Bad(format!(
                "no target given and no default_target configured (known: {})",
                known()
            ))
        })?,
    }
    .clone();
    let arches = req.arches.clone().unwrap_or_else(|| target.arches.clone());
    if arches.is_empty() {
        return Err(SubmitError::Bad("no arch given".into()));
    }
    for a in &arches {
        check_arch(a).map_err(|e| SubmitError::Bad(e.to_string()))?;
        // noarch is welcome everywhere (any worker builds it).
        if a != "noarch" && !target.implicit && !target.arches.contains(a) {
            return Err(SubmitError::Bad(format!(
                "target {} does not build {a} (its arches: {})",
                target.name,
                target.arches.join(", ")
            )));
        }
    }
    let channel = req
        .channel
        .clone()
        .unwrap_or_else(|| target.channel.clone());
    check_ident("channel", &channel).map_err(|e| SubmitError::Bad(e.to_string()))?;
    check_file_name(&req.srpm_name).map_err(|e| SubmitError::Bad(e.to_string()))?;
    if !req.srpm_name.ends_with(".src.rpm") {
        return Err(SubmitError::Bad(format!(
            "{:?} is not a source rpm name (it must end in .src.rpm)",
            req.srpm_name
        )));
    }
    if !is_sha256(&req.srpm_sha256) {
        return Err(SubmitError::Bad("malformed sha256".into()));
    }
    let cached = core
        .srpm_cache
        .lock()
        .ok()
        .and_then(|c| c.get(&req.srpm_sha256).cloned());
    let (size, info) = match cached {
        Some(hit) => hit,
        None => {
            let sha = req.srpm_sha256.clone();
            let size = core
                .store
                .read(move |c| kiln_store::has_blob(c, &sha))
                .await?;
            let path = core.paths.cas(&req.srpm_sha256);
            let Some(size) = size.filter(|_| path.is_file()) else {
                return Err(SubmitError::BlobMissing);
            };
            let info = tokio::task::spawn_blocking(move || inspect_srpm(&path))
                .await
                .unwrap_or(Err(kiln_core::srpm::PackageError::Unreadable))
                .map_err(|e| SubmitError::Bad(e.to_string()))?;
            if let Ok(mut c) = core.srpm_cache.lock() {
                if c.len() >= 4096 {
                    c.clear();
                }
                c.insert(req.srpm_sha256.clone(), (size, info.clone()));
            }
            (size, info)
        }
    };
    let plan = plan_arches(&info, &arches).map_err(|e| SubmitError::Bad(e.to_string()))?;
    let skip = if req.scratch {
        None
    } else {
        version_gate(core, &target.name, &info, req.ci).await?
    };
    let nb = NewBuild {
        target: target.name.clone(),
        package: info.name.clone(),
        evr: info.evr(),
        srpm_name: req.srpm_name.clone(),
        srpm_sha256: req.srpm_sha256.clone(),
        srpm_size: size,
        channel: channel.clone(),
        disttag: target.disttag.clone(),
        priority: req
            .priority
            .unwrap_or(if req.now { NOW_PRIORITY } else { 0 }),
        scratch: req.scratch,
        ci: req.ci,
        excluded: plan
            .excluded
            .iter()
            .map(|(arch, reason)| Excluded {
                arch: arch.clone(),
                reason: reason.clone(),
            })
            .collect(),
        arches: plan.build.clone(),
        batch: None,
        waits_for: Vec::new(),
        source: None,
        submitter: None,
    };
    Ok(Prepared { nb, info, skip })
}

/// Store a build the version gate skipped (final at once).
pub async fn record_skipped(
    core: &Core,
    p: Prepared,
    reason: String,
) -> Result<Submitted, SubmitError> {
    let Prepared { nb, info, .. } = p;
    let (id, _) = core.decide(|s, _| s.allocate_ids(0).0);
    let b = core
        .store
        .write(move |t| kiln_store::insert_skipped(t, &nb, id, &reason))
        .await?;
    tracing::info!("build {} of {} skipped", b.id, info.nevra());
    let e = crate::sched::Event::Build {
        build: b.id,
        state: kiln_core::state::BuildState::Skipped,
    };
    core.metrics.on_event(&e);
    let _ = core.events.send(e);
    let _ = core.build_done.send(b.id);
    Ok(Submitted {
        build: b,
        jobs: vec![],
    })
}

/// Commit a prepared build and dispatch its jobs.
pub async fn commit(core: &Core, p: Prepared) -> Result<Submitted, SubmitError> {
    let Prepared { nb, info, .. } = p;
    // The build's rows get their ids here, so its jobs can be dispatched at
    // once: the insert is queued first and the assignments right behind it,
    // so they usually share one group commit (one fsync fewer on the way to
    // a worker). Nothing is sent before both are durable, and the build is
    // committed before we answer.
    let (submitted, fx) = core.decide(|s, fx| {
        let (id, job_ids) = s.allocate_ids(nb.arches.len());
        let (build, jobs) = kiln_store::new_rows(&nb, id, &job_ids);
        s.submit(fx, build.clone(), jobs.clone());
        Submitted { build, jobs }
    });
    let id = submitted.build.id;
    if let Err(e) = core.try_apply(fx).await {
        // Nothing was sent; the build never existed.
        let ((), undo) = core.decide(|s, fx| s.forget_build(fx, id));
        core.apply(undo).await;
        return Err(e.into());
    }
    tracing::debug!("build {id} of {} accepted", info.nevra());
    Ok(submitted)
}

/// The seed's rule: a release build must be newer than the newest
/// succeeded build of the package in the target; a CI build may be equal.
/// Returns why the build is skipped, if it is.
pub(crate) async fn version_gate(
    core: &Core,
    target: &str,
    info: &kiln_core::srpm::PackageInfo,
    ci: bool,
) -> Result<Option<String>, StoreError> {
    use kiln_core::srpm::compare_evr;
    use std::cmp::Ordering;
    let (t, p) = (target.to_string(), info.name.clone());
    let Some(newest) = core
        .store
        .read(move |c| kiln_store::newest_evr(c, &t, &p))
        .await?
    else {
        return Ok(None);
    };
    let evr = info.evr();
    Ok(match compare_evr(&evr, &newest) {
        Ordering::Less => Some(format!(
            "{} {evr} is older than {newest}, the newest build in target {target}",
            info.name
        )),
        Ordering::Equal if !ci => Some(format!(
            "{} {evr} equals the newest build in target {target} ({newest}); only a CI build (--ci) rebuilds an equal version",
            info.name
        )),
        _ => None,
    })
}
