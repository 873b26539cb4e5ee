//! Projects (sources tied to targets) and the trigger use case: a build
//! from git, started by the CLI, the web, a webhook or MQTT, queued as an
//! srpm job that makes the SRPM on a worker.

use std::sync::Arc;

use kiln_core::git::{GitMode, TriggerKind};
use kiln_store::{BuildRow, StoreError};

use crate::Core;

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
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Start a build of a project (one per target).
pub async fn trigger(_core: &Arc<Core>, req: TriggerRequest) -> Result<Triggered, ProjectError> {
    Err(ProjectError::Unknown(req.project))
}

/// The secrets of every project that has one, by project name (webhooks
/// and MQTT triggers are checked against them).
pub async fn secrets(_core: &Core) -> Result<Vec<(String, String)>, ProjectError> {
    Ok(Vec::new())
}
