//! How builds and jobs look to clients.

use serde::{Deserialize, Serialize};

use crate::Core;
use kiln_store::{ArtifactRow, BuildRow, JobRow};

#[derive(Serialize, Deserialize)]
pub struct JobView {
    #[serde(flatten)]
    pub job: JobRow,
    pub waiting: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub struct BuildView {
    #[serde(flatten)]
    pub build: BuildRow,
    pub jobs: Vec<JobView>,
    pub artifacts: Vec<ArtifactRow>,
}

impl BuildView {
    /// A build with its jobs (each saying why it waits, if it does).
    pub(crate) fn new(
        s: &crate::sched::Sched,
        build: BuildRow,
        jobs: Vec<JobRow>,
        artifacts: Vec<ArtifactRow>,
    ) -> BuildView {
        BuildView {
            build,
            jobs: jobs.into_iter().map(|j| JobView::new(s, j)).collect(),
            artifacts,
        }
    }
}

impl JobView {
    pub(crate) fn new(s: &crate::sched::Sched, job: JobRow) -> JobView {
        JobView {
            waiting: s.waiting_reason(job.id),
            job,
        }
    }
}

pub(crate) async fn build_view(core: &Core, id: i64) -> Result<BuildView, kiln_store::StoreError> {
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
    Ok(BuildView::new(&core.sched(), build, jobs, artifacts))
}
