//! Projects (sources tied to targets) and the trigger use case: a build
//! from git, started by the CLI, the web, a webhook or MQTT, queued as an
//! srpm job that makes the SRPM on a worker. Once that job has made it,
//! `expand` reads the SRPM, applies the version gate (CI: `>=` the newest
//! in the target, release: `>`), and adds the build's arch jobs, or ends
//! it skipped or failed.

use std::sync::Arc;

use kiln_core::git::{check_ref, is_commit_id, BuildSource, GitMode, Project, TriggerKind};
use kiln_core::state::ArtifactKind;
use kiln_store::{BuildRow, NewBuild, StoreError};

use crate::sched::{Expansion, SrpmFacts, Write, SRC_ARCH};
use crate::{Core, MasterError};

/// A request to build a project.
#[derive(Debug, Clone, Default)]
pub struct TriggerRequest {
    pub project: String,
    /// A branch or tag (`main`, `refs/heads/main`, `refs/tags/v1.2`) or a
    /// commit id; None: the project's own ref.
    pub git_ref: Option<String>,
    /// The exact upstream commit to build (a webhook's `after`).
    pub commit: Option<String>,
    /// None: release for a tag, else the project's mode.
    pub mode: Option<GitMode>,
    pub kind: TriggerKind,
    /// The webhook's or MQTT message's delivery id: a delivery seen before
    /// starts nothing new.
    pub delivery: Option<String>,
    pub sender: Option<String>,
}

/// What a trigger did.
#[derive(Debug, Clone)]
pub struct Triggered {
    /// One build per target of the project (or, for a duplicate delivery,
    /// the builds it started the first time).
    pub builds: Vec<BuildRow>,
    /// Queued builds of the same branch this one replaced.
    pub superseded: Vec<i64>,
    /// The delivery id was seen before: nothing new was started.
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// No such project.
    #[error("no project named {0:?}")]
    Unknown(String),
    /// The request (or the project's definition): the caller's to fix.
    #[error("{0}")]
    Bad(String),
    /// A project of that name exists (add, not edit).
    #[error("project {0:?} exists (use `kiln project edit`)")]
    Exists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every project, by name.
pub async fn list(core: &Core) -> Result<Vec<Project>, ProjectError> {
    Ok(core.store.read(kiln_store::list_projects).await?)
}

pub async fn get(core: &Core, name: &str) -> Result<Project, ProjectError> {
    let n = name.to_string();
    core.store
        .read(move |c| kiln_store::get_project(c, &n))
        .await?
        .ok_or_else(|| ProjectError::Unknown(name.to_string()))
}

/// Check a project against the configuration (its names, URLs and
/// targets).
pub fn check(core: &Core, p: &Project) -> Result<(), ProjectError> {
    p.validate().map_err(|e| ProjectError::Bad(e.to_string()))?;
    for t in &p.targets {
        if core.cfg.target(t).is_none() {
            return Err(ProjectError::Bad(format!(
                "project {}: target {t:?} is not configured (known: {})",
                p.name,
                core.cfg.target_names()
            )));
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(t) = p.targets.iter().find(|t| !seen.insert(t.as_str())) {
        return Err(ProjectError::Bad(format!(
            "project {}: target {t:?} is named twice",
            p.name
        )));
    }
    Ok(())
}

/// Add a project (`replace`: or replace the one of that name). Returns
/// whether it is new.
pub async fn put(core: &Core, p: Project, replace: bool) -> Result<bool, ProjectError> {
    check(core, &p)?;
    let name = p.name.clone();
    let r = core
        .store
        .write(move |t| {
            if !replace && kiln_store::get_project(t, &p.name)?.is_some() {
                return Ok(None);
            }
            kiln_store::put_project(t, &p).map(Some)
        })
        .await?;
    r.ok_or(ProjectError::Exists(name))
}

/// Remove a project (its builds stay).
pub async fn remove(core: &Core, name: &str) -> Result<(), ProjectError> {
    let n = name.to_string();
    if core
        .store
        .write(move |t| kiln_store::delete_project(t, &n))
        .await?
    {
        Ok(())
    } else {
        Err(ProjectError::Unknown(name.to_string()))
    }
}

/// The `[[project]]` tables of the configuration, stored (replacing the
/// stored ones of the same names) at start.
pub async fn load_config_projects(core: &Core) -> Result<(), MasterError> {
    for p in core.cfg.projects.clone() {
        let name = p.name.clone();
        put(core, p, true).await.map_err(|e| {
            MasterError::Config(crate::config::ConfigError::Bad(format!(
                "[[project]] {name}: {e}"
            )))
        })?;
    }
    Ok(())
}

/// The secrets of every project that has one, by project name (webhooks
/// and MQTT triggers are checked against them).
pub async fn secrets(core: &Core) -> Result<Vec<(String, String)>, ProjectError> {
    Ok(list(core)
        .await?
        .into_iter()
        .filter_map(|p| p.secret.map(|s| (p.name, s)))
        .collect())
}

/// A delivery id as Kiln keeps it: printable, at most 200 bytes.
fn check_delivery(d: &str) -> Result<(), ProjectError> {
    if d.is_empty() || d.len() > 200 || d.chars().any(|c| c.is_control()) {
        return Err(ProjectError::Bad(format!(
            "delivery id {} is empty, longer than 200 bytes or has control characters",
            kiln_core::names::shown(d)
        )));
    }
    Ok(())
}

/// Start a build of a project: one per target, each an srpm job first. A
/// delivery seen before starts nothing; queued builds of the same ref are
/// replaced (and running ones canceled when the project says so).
pub async fn trigger(core: &Arc<Core>, req: TriggerRequest) -> Result<Triggered, ProjectError> {
    trigger_as(core, req, None).await
}

/// [`trigger`], the builds recording `submitter` (the name of the API
/// token that asked; none for a webhook or MQTT, whose sender is in the
/// build's source).
pub async fn trigger_as(
    core: &Arc<Core>,
    req: TriggerRequest,
    submitter: Option<String>,
) -> Result<Triggered, ProjectError> {
    let _one_at_a_time = core.triggers.lock().await;
    if let Some(d) = &req.delivery {
        check_delivery(d)?;
        let id = d.clone();
        let seen = core
            .store
            .read(move |c| {
                let Some(ids) = kiln_store::get_delivery(c, &id)? else {
                    return Ok(None);
                };
                let mut rows = Vec::new();
                for b in ids {
                    rows.extend(kiln_store::get_build(c, b)?);
                }
                Ok(Some(rows))
            })
            .await?;
        if let Some(builds) = seen {
            return Ok(Triggered {
                builds,
                superseded: Vec::new(),
                duplicate: true,
            });
        }
    }
    let p = get(core, &req.project).await?;
    check(core, &p)?;
    let git_ref = req
        .git_ref
        .clone()
        .or_else(|| p.upstream_ref.clone())
        .unwrap_or_else(|| "HEAD".to_string());
    check_ref(&git_ref).map_err(|e| ProjectError::Bad(e.to_string()))?;
    if let Some(c) = &req.commit {
        if !is_commit_id(c) {
            return Err(ProjectError::Bad(format!(
                "commit {} is not a full commit id",
                kiln_core::names::shown(c)
            )));
        }
    }
    if let Some(s) = &req.sender {
        if s.len() > 200 || s.chars().any(|c| c.is_control()) {
            return Err(ProjectError::Bad("sender name refused".into()));
        }
    }
    let mode = req.mode.unwrap_or(if git_ref.starts_with("refs/tags/") {
        GitMode::Release
    } else {
        p.mode
    });
    let source = BuildSource {
        project: p.name.clone(),
        mode,
        upstream: p.upstream.clone(),
        git_ref: git_ref.clone(),
        upstream_commit: req.commit.clone(),
        packaging: p.packaging.clone(),
        packaging_ref: p.packaging.as_ref().map(|_| {
            p.packaging_ref
                .clone()
                .unwrap_or_else(|| "HEAD".to_string())
        }),
        packaging_commit: None,
        spec: p.spec.clone(),
        submodules: p.submodules,
        tag_wins: p.tag_wins,
        version: None,
        release: None,
        trigger: req.kind,
        delivery: req.delivery.clone(),
        sender: req.sender.clone(),
    };
    let news: Vec<NewBuild> = p
        .targets
        .iter()
        .filter_map(|t| core.cfg.target(t))
        .map(|t| NewBuild {
            target: t.name.clone(),
            package: p.name.clone(),
            evr: String::new(),
            srpm_name: String::new(),
            srpm_sha256: String::new(),
            srpm_size: 0,
            channel: t.channel.clone(),
            disttag: t.disttag.clone(),
            priority: 0,
            scratch: false,
            ci: mode == GitMode::Ci,
            excluded: Vec::new(),
            arches: vec![SRC_ARCH.to_string()],
            batch: None,
            waits_for: Vec::new(),
            source: Some(source.clone()),
            submitter: submitter.clone(),
        })
        .collect();
    let at = req
        .commit
        .as_deref()
        .map(|c| format!("{git_ref} at {}", &c[..c.len().min(12)]))
        .unwrap_or_else(|| git_ref.clone());
    let ((builds, superseded), fx) = core.decide(|s, fx| {
        let mut builds = Vec::new();
        let mut superseded = Vec::new();
        for nb in &news {
            let (id, job_ids) = s.allocate_ids(1);
            for old in s.superseded(&p.name, &nb.target, &git_ref, p.cancel_superseded) {
                if s.cancel_with(fx, old, &format!("superseded by build {id} ({at})"))
                    .is_ok()
                {
                    superseded.push(old);
                }
            }
            let (build, jobs) = kiln_store::new_rows(nb, id, &job_ids);
            s.submit(fx, build.clone(), jobs);
            builds.push(build);
        }
        if let Some(d) = &req.delivery {
            fx.writes.push(Write::Delivery {
                id: d.clone(),
                builds: builds.iter().map(|b| b.id).collect(),
            });
        }
        (builds, superseded)
    });
    if let Err(e) = core.try_apply(fx).await {
        let ids: Vec<i64> = builds.iter().map(|b| b.id).collect();
        let ((), undo) = core.decide(|s, fx| {
            for id in ids {
                s.forget_build(fx, id);
            }
        });
        core.apply(undo).await;
        return Err(e.into());
    }
    for b in &builds {
        tracing::info!(
            "build {} of project {} ({}, {} {}) queued for target {} by {}{}",
            b.id,
            p.name,
            mode.as_str(),
            git_ref,
            req.commit.as_deref().unwrap_or("tip"),
            b.target,
            req.kind.as_str(),
            req.delivery
                .as_deref()
                .map(|d| format!(" (delivery {d})"))
                .unwrap_or_default()
        );
    }
    Ok(Triggered {
        builds,
        superseded,
        duplicate: false,
    })
}

/// Adds the jobs of builds from git whose srpm job made their SRPM (the
/// ids come from `Core::apply`, once the result is durable; at start, the
/// ones a restart interrupted).
pub async fn expand_task(core: Arc<Core>, mut rx: tokio::sync::mpsc::UnboundedReceiver<i64>) {
    let pending = core.sched().unexpanded();
    for id in pending {
        expand_until_done(&core, id).await;
    }
    while let Some(id) = rx.recv().await {
        expand_until_done(&core, id).await;
    }
}

/// Expand a build, retrying while the master's own disk or database fails
/// (the build stays `building` meanwhile).
async fn expand_until_done(core: &Arc<Core>, build: i64) {
    let mut pause = std::time::Duration::from_secs(1);
    while let Err(e) = expand(core, build).await {
        tracing::error!(
            "build {build}: cannot add the jobs of its SRPM now: {e}; again in {pause:?}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(60));
    }
}

/// Why the master could not expand a build now (its own fault: retried).
#[derive(Debug, thiserror::Error)]
enum ExpandError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] kiln_core::error::IoError),
}

/// Read the SRPM a build's srpm job made, gate its version and decide what
/// follows (`Sched::expand`).
async fn expand(core: &Arc<Core>, build: i64) -> Result<(), ExpandError> {
    let (row, arts) = core
        .store
        .read(move |c| {
            Ok((
                kiln_store::get_build(c, build)?,
                kiln_store::artifacts_of(c, build)?,
            ))
        })
        .await?;
    let Some(row) = row.filter(|r| r.awaits_srpm()) else {
        return Ok(());
    };
    let srpms: Vec<_> = arts
        .iter()
        .filter(|a| a.kind == ArtifactKind::Srpm && a.arch == SRC_ARCH)
        .collect();
    let e = match srpms.as_slice() {
        [a] => gate(core, &row, a).await?,
        [] => Expansion::Fail {
            reason: "the srpm job returned no SRPM".into(),
        },
        many => Expansion::Fail {
            reason: format!(
                "the srpm job returned {} SRPMs ({})",
                many.len(),
                many.iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    match &e {
        Expansion::Build { srpm, arches, .. } => tracing::info!(
            "build {build}: srpm job made {} ({} {}); jobs for {}",
            srpm.name,
            srpm.package,
            srpm.evr,
            arches.join(", ")
        ),
        Expansion::Skip { reason, .. } => tracing::info!("build {build} skipped: {reason}"),
        Expansion::Fail { reason } => tracing::warn!("build {build} failed: {reason}"),
    }
    let ((), fx) = core.decide(|s, fx| s.expand(fx, build, e));
    core.try_apply(fx).await?;
    Ok(())
}

/// The SRPM into the content-addressed store (where jobs fetch their
/// input), read, planned per arch and gated.
async fn gate(
    core: &Arc<Core>,
    row: &BuildRow,
    a: &kiln_store::ArtifactRow,
) -> Result<Expansion, ExpandError> {
    use kiln_core::error::io_at;
    let filed = core.paths.incoming(row.id, SRC_ARCH).join(&a.name);
    let cas = core.paths.cas(&a.sha256);
    let cas_dir = core.paths.cas_dir();
    let info = tokio::task::spawn_blocking(move || {
        if !cas.is_file() {
            // The filed SRPM is durable already (intake); the new name
            // is, once its directory is synced.
            kiln_core::fsutil::link_or_copy(&filed, &cas).map_err(io_at(&cas))?;
            std::fs::File::open(&cas_dir)
                .and_then(|d| d.sync_all())
                .map_err(io_at(&cas_dir))?;
        }
        Ok::<_, ExpandError>(kiln_core::srpm::inspect_srpm(&cas))
    })
    .await
    .unwrap_or(Ok(Err(kiln_core::srpm::PackageError::Unreadable)))?;
    let info = match info {
        Ok(i) => i,
        Err(e) => {
            return Ok(Expansion::Fail {
                reason: format!("the SRPM the srpm job made is not usable: {e}"),
            })
        }
    };
    let (sha, size) = (a.sha256.clone(), a.size);
    core.store
        .write(move |t| kiln_store::add_blob(t, &sha, size))
        .await?;
    let srpm = SrpmFacts {
        package: info.name.clone(),
        evr: info.evr(),
        name: a.name.clone(),
        sha256: a.sha256.clone(),
        size: a.size,
    };
    let Some(target) = core.cfg.target(&row.target) else {
        return Ok(Expansion::Fail {
            reason: format!("target {} is no longer configured", row.target),
        });
    };
    let plan = match kiln_core::srpm::plan_arches(&info, &target.arches) {
        Ok(p) => p,
        Err(e) => {
            return Ok(Expansion::Fail {
                reason: e.to_string(),
            })
        }
    };
    if let Some(reason) = crate::submit::version_gate(core, &row.target, &info, row.ci).await? {
        return Ok(Expansion::Skip { srpm, reason });
    }
    Ok(Expansion::Build {
        srpm,
        excluded: plan
            .excluded
            .iter()
            .map(|(arch, reason)| kiln_store::Excluded {
                arch: arch.clone(),
                reason: reason.clone(),
            })
            .collect(),
        arches: plan.build.clone(),
    })
}
