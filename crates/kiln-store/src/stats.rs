//! Aggregates for the statistics page and `/api/v1/stats` (issue 10): the
//! raw figures of a time window, grouped by the caller.

use rusqlite::{params, Connection};

use crate::Result;

/// A finished build: (target, package, state, created_at, finished_at,
/// published_at).
pub type FinishedBuild = (String, String, String, i64, i64, Option<i64>);

/// Builds that ended at or after `since` (Unix ms).
pub fn finished_builds(c: &Connection, since: i64) -> Result<Vec<FinishedBuild>> {
    let mut stmt = c.prepare_cached(
        "SELECT target, package, state, created_at, finished_at, published_at FROM builds \
         WHERE finished_at >= ?1 ORDER BY finished_at",
    )?;
    let rows = stmt.query_map([since], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Jobs that started at or after `since`, or were still running then:
/// (created_at, started_at, finished_at or None while running).
pub fn job_times(c: &Connection, since: i64) -> Result<Vec<(i64, i64, Option<i64>)>> {
    let mut stmt = c.prepare_cached(
        "SELECT created_at, started_at, finished_at FROM jobs \
         WHERE started_at IS NOT NULL AND (started_at >= ?1 OR finished_at IS NULL OR finished_at >= ?1)",
    )?;
    let rows = stmt.query_map([since], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The slots every known, unrevoked worker declares.
pub fn total_capacity(c: &Connection) -> Result<u64> {
    let n: i64 = c
        .prepare_cached("SELECT COALESCE(SUM(capacity), 0) FROM workers WHERE revoked = 0")?
        .query_row([], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

/// Record when a build was published (its publication's end).
pub fn set_published_at(c: &Connection, build: i64, at: i64) -> Result<()> {
    c.prepare_cached("UPDATE builds SET published_at = ?2 WHERE id = ?1")?
        .execute(params![build, at])?;
    Ok(())
}

/// A build that ended in the past, as a benchmark fills a database:
/// inserted with its one job per arch, then given its times and states.
/// Returns its id.
pub fn seed_finished(
    c: &Connection,
    nb: &crate::NewBuild,
    created_at: i64,
    finished_at: i64,
    state: kiln_core::state::BuildState,
    job_state: kiln_core::state::JobState,
    worker: &str,
) -> Result<i64> {
    let (b, _) = crate::insert_build(c, nb)?;
    c.prepare_cached(
        "UPDATE builds SET created_at = ?2, finished_at = ?3, state = ?4 WHERE id = ?1",
    )?
    .execute(params![b.id, created_at, finished_at, state.as_str()])?;
    c.prepare_cached(
        "UPDATE jobs SET created_at = ?2, started_at = ?2, finished_at = ?3, state = ?4, \
         worker = ?5 WHERE build_id = ?1",
    )?
    .execute(params![
        b.id,
        created_at,
        finished_at,
        job_state.as_str(),
        worker
    ])?;
    Ok(b.id)
}
