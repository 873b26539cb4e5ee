//! How builds and jobs look to clients: the store's rows made into
//! `kiln_api`'s views (the store knows nothing of the API).

use kiln_api::{ArtifactView, BuildView, ExcludedArch, JobView};
use kiln_store::{ArtifactRow, BuildRow, Excluded, JobRow};

use crate::sched::Sched;
use crate::Core;

/// The view of a build from its rows, made under the scheduler lock (which
/// knows why a job waits).
pub(super) fn build_of(
    s: &Sched,
    b: BuildRow,
    jobs: Vec<JobRow>,
    artifacts: Vec<ArtifactRow>,
) -> BuildView {
    let buildroot = !s.host_build(&b.target);
    BuildView {
        buildroot,
        batch: b.batch,
        waits_for: b.waits_for,
        source: b.source,
        submitter: b.submitter,
        image: b.image.as_ref().map(|_| b.package.clone()),
        id: b.id,
        target: b.target,
        package: b.package,
        evr: b.evr,
        srpm_name: b.srpm_name,
        srpm_sha256: b.srpm_sha256,
        srpm_size: b.srpm_size,
        channel: b.channel,
        disttag: b.disttag,
        priority: b.priority,
        scratch: b.scratch,
        ci: b.ci,
        state: b.state,
        reason: b.reason,
        excluded_arches: b.excluded_arches.into_iter().map(excluded).collect(),
        created_at: b.created_at,
        finished_at: b.finished_at,
        publish: b.publish,
        publish_error: b.publish_error,
        jobs: jobs.into_iter().map(|j| job(s, j)).collect(),
        artifacts: artifacts.into_iter().map(artifact).collect(),
    }
}

fn excluded(e: Excluded) -> ExcludedArch {
    ExcludedArch {
        arch: e.arch,
        reason: e.reason,
    }
}

/// The view of a job: its row, and why it waits if it does.
pub(super) fn job(s: &Sched, j: JobRow) -> JobView {
    JobView {
        waiting: s.waiting_reason(j.id),
        id: j.id,
        build: j.build,
        arch: j.arch,
        state: j.state,
        worker: j.worker,
        attempt: j.attempt,
        message: j.message,
        created_at: j.created_at,
        started_at: j.started_at,
        finished_at: j.finished_at,
    }
}

fn artifact(a: ArtifactRow) -> ArtifactView {
    ArtifactView {
        job: a.job,
        arch: a.arch,
        name: a.name,
        kind: a.kind,
        size: a.size,
        sha256: a.sha256,
        nevra: a.nevra,
    }
}

/// A build as it is now, read from the store.
pub(super) async fn build_view(core: &Core, id: i64) -> Result<BuildView, kiln_store::StoreError> {
    let (build, jobs, artifacts) = core
        .store
        .read(move |c| {
            let b = kiln_store::get_build(c, id)?;
            Ok(match b {
                Some(b) => Some((
                    b,
                    kiln_store::jobs_of(c, id)?,
                    kiln_store::artifacts_of(c, id)?,
                )),
                None => None,
            })
        })
        .await?
        .ok_or_else(|| kiln_store::StoreError::NotFound(format!("no build {id}")))?;
    Ok(build_of(&core.sched(), build, jobs, artifacts))
}
