//! Rows and the queries on them. Functions take a `&Connection`, so the same
//! code serves reads (pooled connection) and writes (inside a group commit;
//! a `Transaction` derefs to a `Connection`).

use kiln_core::git::{BuildSource, Project};
use kiln_core::state::{ArtifactKind, BuildState, JobState, PublishState};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::{Result, StoreError};

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Excluded {
    pub arch: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRow {
    pub id: i64,
    pub target: String,
    pub package: String,
    pub evr: String,
    pub srpm_name: String,
    pub srpm_sha256: String,
    pub srpm_size: u64,
    pub channel: String,
    pub disttag: String,
    pub priority: i64,
    pub scratch: bool,
    pub ci: bool,
    pub state: BuildState,
    pub reason: Option<String>,
    pub excluded_arches: Vec<Excluded>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// Publication to the target's repository.
    pub publish: Option<PublishState>,
    pub publish_error: Option<String>,
    /// The batch it was submitted in.
    pub batch: Option<i64>,
    /// The builds (of its batch) that must be published before its jobs
    /// are queued; it is `waiting` until they are.
    pub waits_for: Vec<i64>,
    /// A build from git: where its SRPM comes from (its srpm job makes it;
    /// until then the `srpm_*` fields are empty and `evr` too).
    pub source: Option<BuildSource>,
    /// The name of the API token that created it (none for a build from a
    /// webhook or MQTT, or from before tokens had names).
    pub submitter: Option<String>,
    /// An image build: the recipe (`kiln_core::image::ImageRecipe` as
    /// JSON) it builds; never published to the repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl BuildRow {
    /// A build from git whose SRPM is not made yet: its only job is the
    /// srpm job.
    pub fn awaits_srpm(&self) -> bool {
        self.source.is_some() && self.srpm_sha256.is_empty()
    }
}

/// A batch: builds submitted together, some waiting for others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRow {
    pub id: i64,
    pub target: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRow {
    pub id: i64,
    pub build: i64,
    pub arch: String,
    pub state: JobState,
    pub worker: Option<String>,
    pub attempt: u32,
    pub message: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactRow {
    pub job: i64,
    pub arch: String,
    pub name: String,
    pub kind: ArtifactKind,
    pub size: u64,
    pub sha256: String,
    pub nevra: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRow {
    pub name: String,
    pub serial: Option<u64>,
    pub revoked: bool,
    pub arches: Vec<String>,
    pub channels: Vec<String>,
    pub capacity: u32,
    pub enrolled_at: Option<i64>,
    pub last_seen: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NewBuild {
    pub target: String,
    pub package: String,
    pub evr: String,
    pub srpm_name: String,
    pub srpm_sha256: String,
    pub srpm_size: u64,
    pub channel: String,
    pub disttag: String,
    pub priority: i64,
    pub scratch: bool,
    pub ci: bool,
    pub excluded: Vec<Excluded>,
    pub arches: Vec<String>,
    /// The batch it belongs to, if any.
    pub batch: Option<i64>,
    /// Builds that must be published first (it starts `waiting` if any).
    pub waits_for: Vec<i64>,
    /// A build from git (its one job the srpm job).
    pub source: Option<BuildSource>,
    /// The name of the API token that creates it.
    pub submitter: Option<String>,
}

fn parse<T: std::str::FromStr<Err = String>>(s: String) -> rusqlite::Result<T> {
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

fn list(s: String) -> Vec<String> {
    kiln_core::names::split_list(&s)
}

/// The columns [`build_row`] reads, in its order.
pub(crate) const BUILD_COLS: &str =
    "id, target, package, evr, srpm_name, srpm_sha256, srpm_size, channel, \
     disttag, priority, scratch, ci, state, reason, excluded, created_at, finished_at, publish, \
     publish_error, batch, waits_for, source, submitter, image";

fn json_col<T: serde::de::DeserializeOwned>(idx: usize, s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

fn ids_json(ids: &[i64]) -> String {
    // A list of integers always encodes.
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".into())
}

fn source_json(s: Option<&BuildSource>) -> Result<Option<String>> {
    s.map(|s| {
        serde_json::to_string(s)
            .map_err(|e| StoreError::Invalid(format!("cannot encode a build's source: {e}")))
    })
    .transpose()
}

pub(crate) fn build_row(r: &Row<'_>) -> rusqlite::Result<BuildRow> {
    let excluded: String = r.get(14)?;
    Ok(BuildRow {
        id: r.get(0)?,
        target: r.get(1)?,
        package: r.get(2)?,
        evr: r.get(3)?,
        srpm_name: r.get(4)?,
        srpm_sha256: r.get(5)?,
        srpm_size: r.get::<_, i64>(6)? as u64,
        channel: r.get(7)?,
        disttag: r.get(8)?,
        priority: r.get(9)?,
        scratch: r.get(10)?,
        ci: r.get(11)?,
        state: parse(r.get(12)?)?,
        reason: r.get(13)?,
        excluded_arches: serde_json::from_str(&excluded).unwrap_or_default(),
        created_at: r.get(15)?,
        finished_at: r.get(16)?,
        publish: r.get::<_, Option<String>>(17)?.map(parse).transpose()?,
        publish_error: r.get(18)?,
        batch: r.get(19)?,
        waits_for: json_col(20, &r.get::<_, String>(20)?)?,
        source: r
            .get::<_, Option<String>>(21)?
            .map(|s| json_col(21, &s))
            .transpose()?,
        submitter: r.get(22)?,
        image: r.get(23)?,
    })
}

const JOB_COLS: &str =
    "id, build_id, arch, state, worker, attempt, message, created_at, started_at, finished_at";

fn job_row(r: &Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        build: r.get(1)?,
        arch: r.get(2)?,
        state: parse(r.get(3)?)?,
        worker: r.get(4)?,
        attempt: r.get::<_, i64>(5)? as u32,
        message: r.get(6)?,
        created_at: r.get(7)?,
        started_at: r.get(8)?,
        finished_at: r.get(9)?,
    })
}

fn artifact_row(r: &Row<'_>) -> rusqlite::Result<ArtifactRow> {
    Ok(ArtifactRow {
        job: r.get(0)?,
        arch: r.get(1)?,
        name: r.get(2)?,
        kind: parse(r.get(3)?)?,
        size: r.get::<_, i64>(4)? as u64,
        sha256: r.get(5)?,
        nevra: r.get(6)?,
    })
}

fn worker_row(r: &Row<'_>) -> rusqlite::Result<WorkerRow> {
    Ok(WorkerRow {
        name: r.get(0)?,
        serial: r.get::<_, Option<i64>>(1)?.map(|s| s as u64),
        revoked: r.get(2)?,
        arches: list(r.get(3)?),
        channels: list(r.get(4)?),
        capacity: r.get::<_, i64>(5)? as u32,
        enrolled_at: r.get(6)?,
        last_seen: r.get(7)?,
    })
}

// ---- builds and jobs ----

/// The ids the next build and job will get, `(build, job)`: past every id
/// ever used (AUTOINCREMENT's own counter included).
pub fn next_ids(c: &Connection) -> Result<(i64, i64)> {
    let next = |table: &str| -> Result<i64> {
        let seq: Option<i64> = c
            .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = ?1")?
            .query_row([table], |r| r.get(0))
            .optional()?;
        let max: Option<i64> = c
            .prepare_cached(&format!("SELECT max(id) FROM {table}"))?
            .query_row([], |r| r.get(0))?;
        Ok(seq.unwrap_or(0).max(max.unwrap_or(0)) + 1)
    };
    Ok((next("builds")?, next("jobs")?))
}

/// The rows of a new build with the given ids, as they are stored: queued
/// (`waiting` if it waits for other builds), one pending job per arch
/// (`job_ids` in the order of `b.arches`).
pub fn new_rows(b: &NewBuild, id: i64, job_ids: &[i64]) -> (BuildRow, Vec<JobRow>) {
    let now = now_ms();
    let build = BuildRow {
        id,
        target: b.target.clone(),
        package: b.package.clone(),
        evr: b.evr.clone(),
        srpm_name: b.srpm_name.clone(),
        srpm_sha256: b.srpm_sha256.clone(),
        srpm_size: b.srpm_size,
        channel: b.channel.clone(),
        disttag: b.disttag.clone(),
        priority: b.priority,
        scratch: b.scratch,
        ci: b.ci,
        state: if b.waits_for.is_empty() {
            BuildState::Queued
        } else {
            BuildState::Waiting
        },
        reason: None,
        excluded_arches: b.excluded.clone(),
        created_at: now,
        finished_at: None,
        publish: None,
        publish_error: None,
        batch: b.batch,
        waits_for: b.waits_for.clone(),
        source: b.source.clone(),
        submitter: b.submitter.clone(),
        image: None,
    };
    let jobs = b
        .arches
        .iter()
        .zip(job_ids)
        .map(|(arch, &jid)| JobRow::pending(jid, id, arch, now))
        .collect();
    (build, jobs)
}

impl JobRow {
    /// A new job, pending at its first attempt.
    pub fn pending(id: i64, build: i64, arch: &str, now: i64) -> JobRow {
        JobRow {
            id,
            build,
            arch: arch.to_string(),
            state: JobState::Pending,
            worker: None,
            attempt: 1,
            message: None,
            created_at: now,
            started_at: None,
            finished_at: None,
        }
    }
}

/// Store a new build's rows (from [`new_rows`]).
pub fn insert_rows(c: &Connection, b: &BuildRow, jobs: &[JobRow]) -> Result<()> {
    let excluded = serde_json::to_string(&b.excluded_arches)
        .map_err(|e| StoreError::Invalid(format!("cannot encode excluded arches: {e}")))?;
    c.prepare_cached(
        "INSERT INTO builds (id, target, package, evr, srpm_name, srpm_sha256, srpm_size, channel, \
         disttag, priority, scratch, ci, state, excluded, created_at, batch, waits_for, source, \
         submitter, image) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
    )?
    .execute(params![
        b.id,
        b.target,
        b.package,
        b.evr,
        b.srpm_name,
        b.srpm_sha256,
        b.srpm_size as i64,
        b.channel,
        b.disttag,
        b.priority,
        b.scratch,
        b.ci,
        b.state.as_str(),
        excluded,
        b.created_at,
        b.batch,
        ids_json(&b.waits_for),
        source_json(b.source.as_ref())?,
        b.submitter,
        b.image
    ])?;
    insert_jobs(c, jobs)
}

fn insert_jobs(c: &Connection, jobs: &[JobRow]) -> Result<()> {
    let mut stmt = c.prepare_cached(
        "INSERT INTO jobs (id, build_id, arch, state, attempt, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for j in jobs {
        stmt.execute(params![
            j.id,
            j.build,
            j.arch,
            j.state.as_str(),
            j.attempt as i64,
            j.created_at
        ])?;
    }
    Ok(())
}

/// Insert a new build with the next free ids (for a store no scheduler
/// allocates ids for: tools and tests).
pub fn insert_build(c: &Connection, b: &NewBuild) -> Result<(BuildRow, Vec<JobRow>)> {
    let (id, first_job) = next_ids(c)?;
    let job_ids: Vec<i64> = (first_job..).take(b.arches.len()).collect();
    let (build, jobs) = new_rows(b, id, &job_ids);
    insert_rows(c, &build, &jobs)?;
    Ok((build, jobs))
}

pub fn get_build(c: &Connection, id: i64) -> Result<Option<BuildRow>> {
    Ok(
        c.prepare_cached(&format!("SELECT {BUILD_COLS} FROM builds WHERE id = ?1"))?
            .query_row([id], build_row)
            .optional()?,
    )
}

/// A build's target (none if there is no such build).
pub fn build_target(c: &Connection, id: i64) -> Result<Option<String>> {
    Ok(c.prepare_cached("SELECT target FROM builds WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

pub fn list_builds(c: &Connection, limit: u32) -> Result<Vec<BuildRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {BUILD_COLS} FROM builds ORDER BY id DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit], build_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Builds not yet in a final state, oldest first, each with its jobs.
pub fn active_builds(c: &Connection) -> Result<Vec<(BuildRow, Vec<JobRow>)>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {BUILD_COLS} FROM builds WHERE state IN ('waiting', 'queued', 'building') \
         ORDER BY id"
    ))?;
    let builds: Vec<BuildRow> = stmt
        .query_map([], build_row)?
        .collect::<rusqlite::Result<_>>()?;
    builds
        .into_iter()
        .map(|b| {
            let jobs = jobs_of(c, b.id)?;
            Ok((b, jobs))
        })
        .collect()
}

/// The state and publication state of each of `ids` that exists, in the
/// order given.
pub fn build_states(
    c: &Connection,
    ids: &[i64],
) -> Result<Vec<(i64, BuildState, Option<PublishState>)>> {
    let mut stmt = c.prepare_cached("SELECT state, publish FROM builds WHERE id = ?1")?;
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        let row = stmt
            .query_row([id], |r| {
                let state: BuildState = parse(r.get(0)?)?;
                let publish = r.get::<_, Option<String>>(1)?.map(parse).transpose()?;
                Ok((state, publish))
            })
            .optional()?;
        if let Some((state, publish)) = row {
            out.push((id, state, publish));
        }
    }
    Ok(out)
}

// ---- batches ----

/// Record a new batch; its id (the next of the table's own sequence).
/// The versions (evr) of every build of the image `name`.
pub fn image_versions(c: &Connection, name: &str) -> Result<Vec<String>> {
    let mut stmt = c.prepare_cached(
        "SELECT evr FROM builds WHERE image IS NOT NULL AND package = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([name], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
}

/// The newest builds of the image `name` (every image with `None`), newest
/// first.
pub fn image_builds(c: &Connection, name: Option<&str>, limit: u32) -> Result<Vec<BuildRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {BUILD_COLS} FROM builds WHERE image IS NOT NULL \
         AND (?1 IS NULL OR package = ?1) ORDER BY id DESC LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![name, limit], build_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub fn insert_batch(c: &Connection, target: &str, created_at: i64) -> Result<i64> {
    c.prepare_cached("INSERT INTO batches (target, created_at) VALUES (?1, ?2)")?
        .execute(params![target, created_at])?;
    Ok(c.last_insert_rowid())
}

pub fn get_batch(c: &Connection, id: i64) -> Result<Option<BatchRow>> {
    Ok(
        c.prepare_cached("SELECT id, target, created_at FROM batches WHERE id = ?1")?
            .query_row([id], |r| {
                Ok(BatchRow {
                    id: r.get(0)?,
                    target: r.get(1)?,
                    created_at: r.get(2)?,
                })
            })
            .optional()?,
    )
}

/// The builds of a batch, by id.
pub fn batch_builds(c: &Connection, batch: i64) -> Result<Vec<BuildRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {BUILD_COLS} FROM builds WHERE batch = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([batch], build_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn jobs_of(c: &Connection, build: i64) -> Result<Vec<JobRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {JOB_COLS} FROM jobs WHERE build_id = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([build], job_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn get_job(c: &Connection, id: i64) -> Result<Option<JobRow>> {
    Ok(
        c.prepare_cached(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"))?
            .query_row([id], job_row)
            .optional()?,
    )
}

pub fn list_jobs(c: &Connection, limit: u32) -> Result<Vec<JobRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {JOB_COLS} FROM jobs ORDER BY id DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit], job_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Write a job's whole mutable state.
pub fn save_job(c: &Connection, j: &JobRow) -> Result<()> {
    let n = c
        .prepare_cached(
            "UPDATE jobs SET state = ?2, worker = ?3, attempt = ?4, message = ?5, \
             started_at = ?6, finished_at = ?7 WHERE id = ?1",
        )?
        .execute(params![
            j.id,
            j.state.as_str(),
            j.worker,
            j.attempt as i64,
            j.message,
            j.started_at,
            j.finished_at
        ])?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("job {}", j.id)));
    }
    Ok(())
}

/// Store a build's new state and, when the domain decided one, its
/// publication state. A build queued for publication is also the newest of
/// its package in its target if its EVR is greater (rpm's ordering): the
/// version gate's reference.
pub fn set_build_state(
    c: &Connection,
    id: i64,
    state: BuildState,
    reason: Option<&str>,
    publish: Option<PublishState>,
) -> Result<()> {
    let finished = state.is_final().then(now_ms);
    c.prepare_cached(
        "UPDATE builds SET state = ?2, reason = COALESCE(?3, reason), finished_at = ?4, \
         publish = COALESCE(?5, publish) WHERE id = ?1",
    )?
    .execute(params![
        id,
        state.as_str(),
        reason,
        finished,
        publish.map(|p| p.as_str())
    ])?;
    if publish == Some(PublishState::Pending) {
        let row: Option<(String, String, String)> = c
            .prepare_cached("SELECT target, package, evr FROM builds WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        if let Some((target, package, evr)) = row {
            let newer = match newest_evr(c, &target, &package)? {
                Some(cur) => kiln_core::srpm::compare_evr(&evr, &cur).is_gt(),
                None => true,
            };
            if newer {
                c.prepare_cached(
                    "INSERT INTO newest (target, package, evr) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (target, package) DO UPDATE SET evr = excluded.evr",
                )?
                .execute(params![target, package, evr])?;
            }
        }
    }
    Ok(())
}

/// A build from git whose srpm job made its SRPM: its row now names the
/// SRPM and the package (and its source the commits), and its new jobs
/// are stored (none when it was skipped).
pub fn expand_build(c: &Connection, b: &BuildRow, jobs: &[JobRow]) -> Result<()> {
    let excluded = serde_json::to_string(&b.excluded_arches)
        .map_err(|e| StoreError::Invalid(format!("cannot encode excluded arches: {e}")))?;
    c.prepare_cached(
        "UPDATE builds SET package = ?2, evr = ?3, srpm_name = ?4, srpm_sha256 = ?5, \
         srpm_size = ?6, excluded = ?7, source = ?8 WHERE id = ?1",
    )?
    .execute(params![
        b.id,
        b.package,
        b.evr,
        b.srpm_name,
        b.srpm_sha256,
        b.srpm_size as i64,
        excluded,
        source_json(b.source.as_ref())?
    ])?;
    insert_jobs(c, jobs)
}

/// Record what a build's srpm job found (commit ids, version).
pub fn set_build_source(c: &Connection, build: i64, source: &BuildSource) -> Result<()> {
    c.prepare_cached("UPDATE builds SET source = ?2 WHERE id = ?1")?
        .execute(params![build, source_json(Some(source))?])?;
    Ok(())
}

// ---- projects and deliveries ----

fn project_json(p: &Project) -> Result<String> {
    serde_json::to_string(p)
        .map_err(|e| StoreError::Invalid(format!("cannot encode project {}: {e}", p.name)))
}

/// Add a project, or replace the one of the same name. Returns whether it
/// was new.
pub fn put_project(c: &Connection, p: &Project) -> Result<bool> {
    let now = now_ms();
    let n = c
        .prepare_cached("UPDATE projects SET spec = ?2, updated_at = ?3 WHERE name = ?1")?
        .execute(params![p.name, project_json(p)?, now])?;
    if n == 0 {
        c.prepare_cached(
            "INSERT INTO projects (name, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
        )?
        .execute(params![p.name, project_json(p)?, now])?;
    }
    Ok(n == 0)
}

fn project_row(r: &Row<'_>) -> rusqlite::Result<Project> {
    json_col(0, &r.get::<_, String>(0)?)
}

pub fn get_project(c: &Connection, name: &str) -> Result<Option<Project>> {
    Ok(
        c.prepare_cached("SELECT spec FROM projects WHERE name = ?1")?
            .query_row([name], project_row)
            .optional()?,
    )
}

pub fn list_projects(c: &Connection) -> Result<Vec<Project>> {
    let mut stmt = c.prepare_cached("SELECT spec FROM projects ORDER BY name")?;
    let rows = stmt.query_map([], project_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Remove a project (its builds stay). Whether it existed.
pub fn delete_project(c: &Connection, name: &str) -> Result<bool> {
    Ok(c.prepare_cached("DELETE FROM projects WHERE name = ?1")?
        .execute([name])?
        > 0)
}

/// The builds a delivery (webhook or MQTT) started, if it was seen before.
pub fn get_delivery(c: &Connection, id: &str) -> Result<Option<Vec<i64>>> {
    c.prepare_cached("SELECT builds FROM deliveries WHERE id = ?1")?
        .query_row([id], |r| r.get::<_, String>(0))
        .optional()?
        .map(|s| json_col(0, &s).map_err(StoreError::from))
        .transpose()
}

/// Record a delivery and the builds it started.
pub fn put_delivery(c: &Connection, id: &str, builds: &[i64]) -> Result<()> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO deliveries (id, received_at, builds) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![id, now_ms(), ids_json(builds)])?;
    Ok(())
}

/// Insert a build that the version gate skipped: no jobs, final at once.
/// Record a build the version gate skipped, with id `id`.
pub fn insert_skipped(c: &Connection, b: &NewBuild, id: i64, reason: &str) -> Result<BuildRow> {
    let mut nb = b.clone();
    nb.arches.clear();
    let (row, _) = new_rows(&nb, id, &[]);
    insert_rows(c, &row, &[])?;
    set_build_state(c, row.id, BuildState::Skipped, Some(reason), None)?;
    get_build(c, row.id)?.ok_or_else(|| StoreError::NotFound(format!("build {}", row.id)))
}

/// The EVR of the newest (by rpm's ordering) succeeded, non-scratch build
/// of a package in a target: the version gate's reference.
pub fn newest_evr(c: &Connection, target: &str, package: &str) -> Result<Option<String>> {
    Ok(
        c.prepare_cached("SELECT evr FROM newest WHERE target = ?1 AND package = ?2")?
            .query_row(params![target, package], |r| r.get(0))
            .optional()?,
    )
}

/// Builds waiting for publication (or whose publication failed and is to
/// be retried), oldest first: (build, target).
pub fn pending_publications(c: &Connection, retry_failed: bool) -> Result<Vec<(i64, String)>> {
    let sql = if retry_failed {
        "SELECT id, target FROM builds WHERE publish IN ('pending', 'failed') ORDER BY id"
    } else {
        "SELECT id, target FROM builds WHERE publish = 'pending' ORDER BY id"
    };
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn set_publish(
    c: &Connection,
    build: i64,
    state: PublishState,
    error: Option<&str>,
) -> Result<()> {
    c.prepare_cached("UPDATE builds SET publish = ?2, publish_error = ?3 WHERE id = ?1")?
        .execute(params![build, state.as_str(), error])?;
    Ok(())
}

/// A package file in a published repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoPackage {
    pub target: String,
    pub repo: String,
    pub file: String,
    pub name: String,
    pub epoch: u32,
    pub version: String,
    pub release: String,
    pub arch: String,
    pub build: i64,
    /// The generation whose metadata dropped it; None while it is live.
    pub retired_gen: Option<i64>,
}

fn repo_pkg_row(r: &Row<'_>) -> rusqlite::Result<RepoPackage> {
    Ok(RepoPackage {
        target: r.get(0)?,
        repo: r.get(1)?,
        file: r.get(2)?,
        name: r.get(3)?,
        epoch: r.get::<_, i64>(4)? as u32,
        version: r.get(5)?,
        release: r.get(6)?,
        arch: r.get(7)?,
        build: r.get(8)?,
        retired_gen: r.get(9)?,
    })
}

/// Every row of a target's repositories (live and retired).
pub fn repo_packages(c: &Connection, target: &str) -> Result<Vec<RepoPackage>> {
    let mut stmt = c.prepare_cached(
        "SELECT target, repo, file, name, epoch, version, release, arch, build_id, retired_gen \
         FROM repo_packages WHERE target = ?1 ORDER BY repo, name, file",
    )?;
    let rows = stmt.query_map([target], repo_pkg_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn put_repo_package(c: &Connection, p: &RepoPackage) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO repo_packages (target, repo, file, name, epoch, version, release, arch, build_id, retired_gen) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
         ON CONFLICT (target, repo, file) DO UPDATE SET name = excluded.name, epoch = excluded.epoch, \
         version = excluded.version, release = excluded.release, arch = excluded.arch, \
         build_id = excluded.build_id, retired_gen = excluded.retired_gen",
    )?
    .execute(params![
        p.target,
        p.repo,
        p.file,
        p.name,
        p.epoch as i64,
        p.version,
        p.release,
        p.arch,
        p.build,
        p.retired_gen
    ])?;
    Ok(())
}

pub fn delete_repo_package(c: &Connection, target: &str, repo: &str, file: &str) -> Result<()> {
    c.prepare_cached("DELETE FROM repo_packages WHERE target = ?1 AND repo = ?2 AND file = ?3")?
        .execute(params![target, repo, file])?;
    Ok(())
}

pub fn repo_gen(c: &Connection, target: &str, repo: &str) -> Result<i64> {
    Ok(
        c.prepare_cached("SELECT gen FROM repo_gens WHERE target = ?1 AND repo = ?2")?
            .query_row(params![target, repo], |r| r.get(0))
            .optional()?
            .unwrap_or(0),
    )
}

pub fn set_repo_gen(c: &Connection, target: &str, repo: &str, gen: i64) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO repo_gens (target, repo, gen) VALUES (?1, ?2, ?3) \
         ON CONFLICT (target, repo) DO UPDATE SET gen = excluded.gen",
    )?
    .execute(params![target, repo, gen])?;
    Ok(())
}

pub fn add_artifact(c: &Connection, build: i64, a: &ArtifactRow) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO artifacts (build_id, job_id, arch, name, kind, size, sha256, nevra) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (build_id, arch, name) DO UPDATE SET job_id = excluded.job_id, \
         kind = excluded.kind, size = excluded.size, sha256 = excluded.sha256, nevra = excluded.nevra",
    )?
    .execute(params![
        build,
        a.job,
        a.arch,
        a.name,
        a.kind.as_str(),
        a.size as i64,
        a.sha256,
        a.nevra
    ])?;
    Ok(())
}

pub fn artifacts_of(c: &Connection, build: i64) -> Result<Vec<ArtifactRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT job_id, arch, name, kind, size, sha256, nevra FROM artifacts WHERE build_id = ?1 ORDER BY arch, name",
    )?;
    let rows = stmt.query_map([build], artifact_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

// ---- build logs ----

/// Store the log of an ended job (zstd frames).
pub fn put_log(c: &Connection, job: i64, zdata: &[u8]) -> Result<()> {
    c.prepare_cached("INSERT OR REPLACE INTO job_logs (job_id, zdata) VALUES (?1, ?2)")?
        .execute(params![job, zdata])?;
    Ok(())
}

/// The stored log of an ended job, if it is kept here.
pub fn get_log(c: &Connection, job: i64) -> Result<Option<Vec<u8>>> {
    Ok(
        c.prepare_cached("SELECT zdata FROM job_logs WHERE job_id = ?1")?
            .query_row([job], |r| r.get(0))
            .optional()?,
    )
}

// ---- files written without their own fsync ----

/// A file under the data directory (relative path) that holds `data`, or
/// is a link to the input `cas` (a sha256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsyncedFile {
    pub id: i64,
    pub path: String,
    pub data: Option<Vec<u8>>,
    pub cas: Option<String>,
}

pub fn add_unsynced(
    c: &Connection,
    path: &str,
    data: Option<&[u8]>,
    cas: Option<&str>,
) -> Result<()> {
    c.prepare_cached("INSERT INTO unsynced_files (path, data, cas) VALUES (?1, ?2, ?3)")?
        .execute(params![path, data, cas])?;
    Ok(())
}

pub fn unsynced_files(c: &Connection) -> Result<Vec<UnsyncedFile>> {
    let mut stmt =
        c.prepare_cached("SELECT id, path, data, cas FROM unsynced_files ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok(UnsyncedFile {
            id: r.get(0)?,
            path: r.get(1)?,
            data: r.get(2)?,
            cas: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The newest entry, if any.
pub fn last_unsynced(c: &Connection) -> Result<Option<i64>> {
    Ok(c.prepare_cached("SELECT max(id) FROM unsynced_files")?
        .query_row([], |r| r.get(0))?)
}

/// The files up to `upto` are durable now.
pub fn clear_unsynced(c: &Connection, upto: i64) -> Result<()> {
    c.prepare_cached("DELETE FROM unsynced_files WHERE id <= ?1")?
        .execute([upto])?;
    Ok(())
}

// ---- content-addressed inputs ----

pub fn has_blob(c: &Connection, sha256: &str) -> Result<Option<u64>> {
    Ok(
        c.prepare_cached("SELECT size FROM blobs WHERE sha256 = ?1")?
            .query_row([sha256], |r| r.get::<_, i64>(0))
            .optional()?
            .map(|s| s as u64),
    )
}

/// The database records no build and no input at all (a new database, or
/// one whose content was lost).
pub fn holds_nothing(c: &Connection) -> Result<bool> {
    Ok(c.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM builds) AND NOT EXISTS (SELECT 1 FROM blobs)",
        [],
        |r| r.get::<_, bool>(0),
    )?)
}

pub fn add_blob(c: &Connection, sha256: &str, size: u64) -> Result<()> {
    c.prepare_cached("INSERT OR IGNORE INTO blobs (sha256, size, created_at) VALUES (?1, ?2, ?3)")?
        .execute(params![sha256, size as i64, now_ms()])?;
    Ok(())
}

// ---- enrollment tokens, workers, revocation ----

pub fn add_token(c: &Connection, hash: &str, worker: &str, expires_at: i64) -> Result<()> {
    c.execute(
        "INSERT INTO tokens (hash, worker, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![hash, worker, now_ms(), expires_at],
    )?;
    Ok(())
}

/// Use a one-time token: returns the worker name it was made for.
pub fn consume_token(c: &Connection, hash: &str) -> Result<String> {
    let row: Option<(String, i64, Option<i64>)> = c
        .query_row(
            "SELECT worker, expires_at, used_at FROM tokens WHERE hash = ?1",
            [hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let (worker, expires, used) =
        row.ok_or_else(|| StoreError::Invalid("invalid enrollment token".into()))?;
    if used.is_some() {
        return Err(StoreError::Invalid("enrollment token already used".into()));
    }
    if expires < now_ms() {
        return Err(StoreError::Invalid("enrollment token expired".into()));
    }
    c.execute(
        "UPDATE tokens SET used_at = ?2 WHERE hash = ?1",
        params![hash, now_ms()],
    )?;
    Ok(worker)
}

/// Take the next certificate serial number.
pub fn next_serial(c: &Connection) -> Result<u64> {
    let cur: Option<String> = c
        .query_row("SELECT value FROM meta WHERE key = 'serial'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let next = cur.and_then(|s| s.parse::<u64>().ok()).unwrap_or(1) + 1;
    c.execute(
        "INSERT INTO meta (key, value) VALUES ('serial', ?1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [next.to_string()],
    )?;
    Ok(next)
}

pub fn enroll_worker(c: &Connection, name: &str, serial: u64) -> Result<()> {
    // A re-enrollment replaces the previous certificate: revoke the old one.
    if let Some(old) = get_worker(c, name)?.and_then(|w| w.serial) {
        c.execute(
            "INSERT OR IGNORE INTO revoked_serials (serial) VALUES (?1)",
            [old as i64],
        )?;
    }
    c.execute(
        "INSERT INTO workers (name, serial, revoked, enrolled_at) VALUES (?1, ?2, 0, ?3) \
         ON CONFLICT (name) DO UPDATE SET serial = excluded.serial, revoked = 0, enrolled_at = excluded.enrolled_at",
        params![name, serial as i64, now_ms()],
    )?;
    Ok(())
}

pub fn get_worker(c: &Connection, name: &str) -> Result<Option<WorkerRow>> {
    Ok(c.prepare_cached(
        "SELECT name, serial, revoked, arches, channels, capacity, enrolled_at, last_seen FROM workers WHERE name = ?1",
    )?
    .query_row([name], worker_row)
    .optional()?)
}

pub fn list_workers(c: &Connection) -> Result<Vec<WorkerRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT name, serial, revoked, arches, channels, capacity, enrolled_at, last_seen FROM workers ORDER BY name",
    )?;
    let rows = stmt.query_map([], worker_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn worker_seen(
    c: &Connection,
    name: &str,
    arches: &[String],
    channels: &[String],
    capacity: u32,
) -> Result<()> {
    c.prepare_cached(
        "UPDATE workers SET arches = ?2, channels = ?3, capacity = ?4, last_seen = ?5 WHERE name = ?1",
    )?
    .execute(params![
        name,
        arches.join(","),
        channels.join(","),
        capacity as i64,
        now_ms()
    ])?;
    Ok(())
}

pub fn touch_worker(c: &Connection, name: &str) -> Result<()> {
    c.prepare_cached("UPDATE workers SET last_seen = ?2 WHERE name = ?1")?
        .execute(params![name, now_ms()])?;
    Ok(())
}

/// Revoke a worker for good: its certificate serial joins the revocation list.
pub fn revoke_worker(c: &Connection, name: &str) -> Result<Option<u64>> {
    let w = get_worker(c, name)?
        .ok_or_else(|| StoreError::NotFound(format!("no worker named {name:?}")))?;
    c.execute("UPDATE workers SET revoked = 1 WHERE name = ?1", [name])?;
    if let Some(s) = w.serial {
        c.execute(
            "INSERT OR IGNORE INTO revoked_serials (serial) VALUES (?1)",
            [s as i64],
        )?;
    }
    Ok(w.serial)
}

pub fn revoked_serials(c: &Connection) -> Result<Vec<u64>> {
    let mut stmt = c.prepare_cached("SELECT serial FROM revoked_serials")?;
    let rows = stmt.query_map([], |r| r.get::<_, i64>(0).map(|s| s as u64))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Durability, Store};

    fn nb(arches: &[&str]) -> NewBuild {
        NewBuild {
            target: "default".into(),
            package: "hello".into(),
            evr: "1.0-1".into(),
            srpm_name: "hello-1.0-1.src.rpm".into(),
            srpm_sha256: "00".repeat(32),
            srpm_size: 10,
            channel: "default".into(),
            disttag: String::new(),
            priority: 0,
            scratch: false,
            ci: false,
            excluded: vec![],
            arches: arches.iter().map(|s| s.to_string()).collect(),
            batch: None,
            waits_for: vec![],
            source: None,
            submitter: None,
        }
    }

    #[tokio::test]
    async fn a_batch_and_its_waiting_builds_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kiln.db"), Durability::Full).unwrap();
        let (b1, b2) = store
            .write(|t| {
                let batch = insert_batch(t, "default", 42)?;
                assert_eq!(insert_batch(t, "other", 43)?, batch + 1);
                let mut first = nb(&["noarch"]);
                first.batch = Some(batch);
                let (b1, j1) = new_rows(&first, 1, &[1]);
                insert_rows(t, &b1, &j1)?;
                let mut second = nb(&["x86_64"]);
                second.package = "user".into();
                second.batch = Some(batch);
                second.waits_for = vec![1, 7];
                let (b2, j2) = new_rows(&second, 2, &[2]);
                insert_rows(t, &b2, &j2)?;
                Ok((b1, b2))
            })
            .await
            .unwrap();
        assert_eq!(b1.state, BuildState::Queued);
        assert_eq!(b2.state, BuildState::Waiting, "it waits for builds 1 and 7");
        let batch = b1.batch.unwrap();
        assert_eq!(
            store.read(move |c| get_batch(c, batch)).await.unwrap(),
            Some(BatchRow {
                id: batch,
                target: "default".into(),
                created_at: 42
            })
        );
        assert_eq!(store.read(|c| get_batch(c, 99)).await.unwrap(), None);
        // The rows made in memory are the rows stored, whichever query
        // reads them.
        let stored = store.read(move |c| batch_builds(c, batch)).await.unwrap();
        assert_eq!(stored, vec![b1.clone(), b2.clone()]);
        assert_eq!(
            store.read(|c| get_build(c, 2)).await.unwrap(),
            Some(b2.clone())
        );
        assert_eq!(
            store.read(|c| list_builds(c, 10)).await.unwrap(),
            vec![b2.clone(), b1.clone()]
        );
        // A waiting build is active (restored at start).
        let active = store.read(active_builds).await.unwrap();
        assert_eq!(
            active.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>(),
            vec![b1, b2]
        );
        // States of builds, the unknown ones left out.
        store
            .write(|t| {
                set_build_state(
                    t,
                    1,
                    BuildState::Succeeded,
                    None,
                    BuildState::Succeeded.publication(false),
                )?;
                set_publish(t, 1, PublishState::Published, None)?;
                set_build_state(t, 2, BuildState::Queued, None, None)
            })
            .await
            .unwrap();
        assert_eq!(
            store.read(|c| build_states(c, &[2, 99, 1])).await.unwrap(),
            vec![
                (2, BuildState::Queued, None),
                (1, BuildState::Succeeded, Some(PublishState::Published))
            ]
        );
        // What it waits for stays recorded once it no longer waits.
        let b2 = store.read(|c| get_build(c, 2)).await.unwrap().unwrap();
        assert_eq!(b2.waits_for, vec![1, 7]);
        // A build in no batch.
        let (b3, _) = store
            .write(|t| insert_build(t, &nb(&["noarch"])))
            .await
            .unwrap();
        assert_eq!((b3.batch, b3.waits_for.clone()), (None, vec![]));
        assert_eq!(store.read(|c| get_build(c, 3)).await.unwrap(), Some(b3));
        assert_eq!(
            store
                .read(move |c| batch_builds(c, batch))
                .await
                .unwrap()
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn rows_made_in_memory_are_the_rows_stored_and_ids_move_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kiln.db"), Durability::Full).unwrap();
        assert_eq!(store.read(next_ids).await.unwrap(), (1, 1));
        let mut b = nb(&["x86_64", "i686"]);
        b.excluded = vec![Excluded {
            arch: "s390x".into(),
            reason: "ExcludeArch".into(),
        }];
        b.submitter = Some("alice".into());
        let (build, jobs) = new_rows(&b, 7, &[20, 21]);
        let (bb, jj) = (build.clone(), jobs.clone());
        store
            .write(move |t| insert_rows(t, &bb, &jj))
            .await
            .unwrap();
        let stored = store.read(|c| get_build(c, 7)).await.unwrap().unwrap();
        assert_eq!(stored.submitter.as_deref(), Some("alice"));
        assert_eq!(
            serde_json::to_value(&stored).unwrap(),
            serde_json::to_value(&build).unwrap()
        );
        let stored_jobs = store.read(|c| jobs_of(c, 7)).await.unwrap();
        assert_eq!(
            serde_json::to_value(&stored_jobs).unwrap(),
            serde_json::to_value(&jobs).unwrap()
        );
        // Past every id used, even after the rows are gone.
        assert_eq!(store.read(next_ids).await.unwrap(), (8, 22));
        store
            .write(|t| {
                t.execute_batch("DELETE FROM jobs; DELETE FROM builds;")?;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(store.read(next_ids).await.unwrap(), (8, 22));
        // A build stored without a scheduler takes the next ids.
        let (b2, j2) = store
            .write(|t| insert_build(t, &nb(&["noarch"])))
            .await
            .unwrap();
        assert_eq!((b2.id, j2[0].id), (8, 22));
        assert_eq!(b2.submitter, None);
        // A skipped build keeps its submitter too.
        let mut sk = nb(&["noarch"]);
        sk.submitter = Some("bob".into());
        let skipped = store
            .write(move |t| insert_skipped(t, &sk, 9, "older"))
            .await
            .unwrap();
        assert_eq!(
            (skipped.state, skipped.submitter.as_deref()),
            (BuildState::Skipped, Some("bob"))
        );
    }

    #[tokio::test]
    async fn builds_jobs_and_group_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kiln.db"), Durability::Full).unwrap();
        let mut handles = Vec::new();
        for _ in 0..50 {
            let s = store.clone();
            handles.push(tokio::spawn(async move {
                s.write(|t| insert_build(t, &nb(&["x86_64", "i686"]))).await
            }));
        }
        for h in handles {
            let (b, jobs) = h.await.unwrap().unwrap();
            assert_eq!(b.state, BuildState::Queued);
            assert_eq!(jobs.len(), 2);
        }
        let active = store.read(active_builds).await.unwrap();
        assert_eq!(active.len(), 50);
        // A failing write does not undo the others in its batch.
        let bad = store.write(|t| consume_token(t, "nope")).await;
        assert!(bad.is_err());
        store.close();
        drop(store);
        let store = Store::open(&dir.path().join("kiln.db"), Durability::Full).unwrap();
        assert_eq!(store.read(|c| list_builds(c, 100)).await.unwrap().len(), 50);
    }

    /// A write that fails after changing rows leaves none of them, alone
    /// in its group (no savepoint: the transaction is rolled back) or
    /// among others (its savepoint is; the others commit).
    #[tokio::test]
    async fn a_failing_write_leaves_nothing_alone_or_in_a_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kiln.db"), Durability::Full).unwrap();
        let half = || {
            move |t: &rusqlite::Transaction<'_>| -> Result<()> {
                insert_build(t, &nb(&["x86_64"]))?;
                Err(StoreError::Invalid("refused after an insert".into()))
            }
        };
        // Alone: nothing else is queued.
        let e = store.write(half()).await.unwrap_err();
        assert!(e.to_string().contains("refused after an insert"), "{e}");
        assert_eq!(store.read(|c| list_builds(c, 10)).await.unwrap().len(), 0);
        // In a group: the writer is held by a first write while three
        // more are queued, so they are committed together.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let first = store.write(move |t| {
            let _ = go_rx.recv();
            insert_build(t, &nb(&["x86_64"]))
        });
        let a = store.write(|t| insert_build(t, &nb(&["x86_64"])));
        let bad = store.write(half());
        let b = store.write(|t| insert_build(t, &nb(&["x86_64"])));
        go_tx.send(()).unwrap();
        first.await.unwrap();
        a.await.unwrap();
        assert!(bad.await.is_err());
        b.await.unwrap();
        assert_eq!(store.read(|c| list_builds(c, 10)).await.unwrap().len(), 3);
        // And a write alone after them still commits.
        store
            .write(|t| insert_build(t, &nb(&["x86_64"])))
            .await
            .unwrap();
        store.close();
        drop(store);
        let store = Store::open(&dir.path().join("kiln.db"), Durability::Full).unwrap();
        assert_eq!(store.read(|c| list_builds(c, 10)).await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn tokens_are_one_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kiln.db"), Durability::Normal).unwrap();
        store
            .write(|t| add_token(t, "h", "w1", now_ms() + 60_000))
            .await
            .unwrap();
        assert_eq!(store.write(|t| consume_token(t, "h")).await.unwrap(), "w1");
        assert!(store.write(|t| consume_token(t, "h")).await.is_err());
    }
}
