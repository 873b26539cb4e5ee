//! What the web UI's pages read that the rest of the store has no query
//! for (issue 10): a filtered build listing paginated by keyset (`id <
//! cursor`, newest first, so a page costs the same at build 10 and at build
//! 1,000,000), the builds running now, builds per hour, the last successful
//! duration of a package on an arch (a job's progress), what a build
//! published, a target's live packages with a search, and the workers'
//! recent outcomes. Migration 8 holds the indexes these need.

use kiln_core::state::{BuildState, JobState};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};

use crate::{get_build, jobs_of, BuildRow, JobRow, RepoPackage, Result};

/// Where a build's SRPM came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Uploaded (`kiln submit`, the web form).
    Upload,
    /// Made from git by an srpm job.
    Git,
}

/// What the build listing shows: every filter is optional (and combined
/// with AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildFilter {
    pub state: Option<BuildState>,
    pub target: Option<String>,
    /// A package name, or a name prefix with `package_prefix`.
    pub package: Option<String>,
    pub package_prefix: bool,
    pub source: Option<SourceKind>,
    /// The name of the API token that submitted it.
    pub submitter: Option<String>,
    /// Created at or after (Unix ms).
    pub from_ms: Option<i64>,
    /// Created before (Unix ms).
    pub to_ms: Option<i64>,
    /// Only builds older than this one (the keyset cursor).
    pub before: Option<i64>,
    /// How many (at least 1; at most 500).
    pub limit: u32,
}

/// One page of the listing: the builds, newest first, and the cursor of
/// the next (older) page when there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildPage {
    pub builds: Vec<BuildRow>,
    pub next: Option<i64>,
}

/// The upper bound of the strings that start with `prefix` (for a range
/// on an index: `prefix <= s < upper`); None when every string past the
/// prefix qualifies.
fn prefix_upper(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        // The next scalar value (past the surrogates).
        let next = if c == '\u{d7ff}' {
            0xe000
        } else {
            c as u32 + 1
        };
        if let Some(n) = char::from_u32(next) {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// How far back (ms) a build's `created_at` may be behind a build with a
/// smaller id (both are taken when a build is submitted, under the
/// scheduler's lock, so only a clock stepped back by more than this could
/// hide a build from a date range).
pub const CLOCK_MARGIN_MS: i64 = 10 * 60 * 1000;

/// The newest builds a package prefix is first tested on one by one,
/// before the package index is used (a common prefix finds its page among
/// them; a rare one is then fast on the index).
const PREFIX_WINDOW: i64 = 20_000;

/// Which part of the table a listing query looks at.
enum Part {
    All,
    /// Ids above this one, the package tested row by row.
    Above(i64),
    /// Ids up to this one.
    UpTo(i64),
}

/// The ids of the builds matching `f` in `part`, newest first, at most
/// `n`.
fn matching_ids(c: &Connection, f: &BuildFilter, part: Part, n: usize) -> Result<Vec<i64>> {
    let mut sql = String::from("SELECT id FROM builds WHERE 1");
    let mut args: Vec<Value> = Vec::new();
    let mut arg = |sql: &mut String, clause: &str, v: Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(b) = f.before {
        arg(&mut sql, " AND id < ?", Value::Integer(b));
    }
    match part {
        Part::All => {}
        Part::Above(id) => arg(&mut sql, " AND id > ?", Value::Integer(id)),
        Part::UpTo(id) => arg(&mut sql, " AND id <= ?", Value::Integer(id)),
    }
    if let Some(s) = f.state {
        arg(&mut sql, " AND state = ?", Value::Text(s.as_str().into()));
    }
    if let Some(t) = &f.target {
        arg(&mut sql, " AND target = ?", Value::Text(t.clone()));
    }
    // `+package`: not on its index (the rows are read newest first).
    let col = if matches!(part, Part::Above(_)) {
        "+package"
    } else {
        "package"
    };
    match (&f.package, f.package_prefix) {
        (Some(p), false) => arg(&mut sql, " AND package = ?", Value::Text(p.clone())),
        (Some(p), true) if !p.is_empty() => {
            arg(
                &mut sql,
                &format!(" AND {col} >= ?"),
                Value::Text(p.clone()),
            );
            if let Some(u) = prefix_upper(p) {
                arg(&mut sql, &format!(" AND {col} < ?"), Value::Text(u));
            }
        }
        _ => {}
    }
    if let Some(who) = &f.submitter {
        arg(&mut sql, " AND submitter = ?", Value::Text(who.clone()));
    }
    match f.source {
        // The git builds have a partial index of their own.
        Some(SourceKind::Git) => sql.push_str(" AND source IS NOT NULL"),
        Some(SourceKind::Upload) => sql.push_str(" AND source IS NULL"),
        None => {}
    }
    // A date range as an id range, found on the index of `created_at` in
    // two lookups: past the newest build created before the range (less a
    // margin), before the oldest created after it (plus the margin); then
    // the exact test on `created_at`, without its index (`+`).
    if let Some(from) = f.from_ms {
        arg(
            &mut sql,
            " AND id > coalesce((SELECT id FROM builds WHERE created_at < ? \
             ORDER BY created_at DESC LIMIT 1), 0)",
            Value::Integer(from.saturating_sub(CLOCK_MARGIN_MS)),
        );
        arg(&mut sql, " AND +created_at >= ?", Value::Integer(from));
    }
    if let Some(to) = f.to_ms {
        arg(
            &mut sql,
            " AND id < coalesce((SELECT id FROM builds WHERE created_at >= ? \
             ORDER BY created_at LIMIT 1), 9223372036854775807)",
            Value::Integer(to.saturating_add(CLOCK_MARGIN_MS)),
        );
        arg(&mut sql, " AND +created_at < ?", Value::Integer(to));
    }
    arg(
        &mut sql,
        " ORDER BY id DESC LIMIT ?",
        Value::Integer(n as i64),
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let ids = stmt
        .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(ids)
}

/// Builds matching `f`, newest first, one page. The ids are found on an
/// index (`id < cursor ORDER BY id DESC LIMIT n`: state, target and package
/// have theirs, git builds a partial one, a date range becomes an id range
/// on the index of `created_at`; a package prefix is first tried on the
/// newest builds, then on its index); the rows are then read by primary
/// key.
pub fn list_builds_page(c: &Connection, f: &BuildFilter) -> Result<BuildPage> {
    page_with_window(c, f, PREFIX_WINDOW)
}

fn page_with_window(c: &Connection, f: &BuildFilter, window: i64) -> Result<BuildPage> {
    let limit = f.limit.clamp(1, 500) as usize;
    let want = limit + 1;
    let prefix = f.package_prefix && f.package.as_deref().is_some_and(|p| !p.is_empty());
    let ids = if prefix {
        let floor: Option<i64> = c
            .prepare_cached(
                "SELECT id FROM builds WHERE id < ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2",
            )?
            .query_row(params![f.before.unwrap_or(i64::MAX), window], |r| r.get(0))
            .optional()?;
        match floor {
            None => matching_ids(c, f, Part::All, want)?,
            Some(floor) => {
                let mut ids = matching_ids(c, f, Part::Above(floor), want)?;
                if ids.len() < want {
                    ids.extend(matching_ids(c, f, Part::UpTo(floor), want - ids.len())?);
                }
                ids
            }
        }
    } else {
        matching_ids(c, f, Part::All, want)?
    };
    let more = ids.len() > limit;
    let mut builds = Vec::with_capacity(ids.len().min(limit));
    for id in ids.into_iter().take(limit) {
        if let Some(b) = get_build(c, id)? {
            builds.push(b);
        }
    }
    let next = if more {
        builds.last().map(|b| b.id)
    } else {
        None
    };
    Ok(BuildPage { builds, next })
}

/// Builds whose jobs are running now (state `building`), newest first, each
/// with its jobs.
pub fn running_builds(c: &Connection, limit: u32) -> Result<Vec<(BuildRow, Vec<JobRow>)>> {
    let ids: Vec<i64> = c
        .prepare_cached("SELECT id FROM builds WHERE state = 'building' ORDER BY id DESC LIMIT ?1")?
        .query_map([limit], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(b) = get_build(c, id)? {
            let jobs = jobs_of(c, id)?;
            out.push((b, jobs));
        }
    }
    Ok(out)
}

/// Builds created since `since_ms`, counted per hour after it and per
/// state: `(hour, state, count)`, hours from 0.
pub fn builds_per_hour(c: &Connection, since_ms: i64) -> Result<Vec<(i64, BuildState, u64)>> {
    let mut stmt = c.prepare_cached(
        "SELECT (created_at - ?1) / 3600000, state, count(*) FROM builds \
         WHERE created_at >= ?1 GROUP BY 1, 2 ORDER BY 1, 2",
    )?;
    let rows = stmt.query_map([since_ms], |r| {
        let s: String = r.get(1)?;
        Ok((r.get::<_, i64>(0)?, s, r.get::<_, i64>(2)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (h, s, n) = row?;
        // A state this master does not know is left out of the chart.
        if let Ok(state) = s.parse::<BuildState>() {
            out.push((h, state, n as u64));
        }
    }
    Ok(out)
}

/// How long (ms, assignment to result) the job on `arch` of the newest
/// succeeded build of `package` older than build `before` took: what a
/// running job's progress is measured against. None the first time.
pub fn last_success_duration(
    c: &Connection,
    package: &str,
    arch: &str,
    before: i64,
) -> Result<Option<i64>> {
    Ok(c.prepare_cached(
        "SELECT j.finished_at - j.started_at FROM builds b JOIN jobs j ON j.build_id = b.id \
             WHERE b.package = ?1 AND b.id < ?3 AND b.state = 'succeeded' AND j.arch = ?2 \
             AND j.state = 'succeeded' AND j.started_at IS NOT NULL AND j.finished_at IS NOT NULL \
             ORDER BY b.id DESC LIMIT 1",
    )?
    .query_row(params![package, arch, before], |r| r.get(0))
    .optional()?)
}

/// The files a build has in its target's live repositories: `(repo, file)`.
pub fn published_files(c: &Connection, build: i64) -> Result<Vec<(String, String)>> {
    let mut stmt = c.prepare_cached(
        "SELECT repo, file FROM repo_packages WHERE build_id = ?1 AND retired_gen IS NULL \
         ORDER BY repo, file",
    )?;
    let rows = stmt.query_map([build], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A target's live packages whose name contains `search` (any case; all
/// when empty), by name, at most `limit`; and how many match in all.
pub fn find_packages(
    c: &Connection,
    target: &str,
    search: &str,
    limit: u32,
) -> Result<(Vec<RepoPackage>, u64)> {
    let total: i64 = c
        .prepare_cached(
            "SELECT count(*) FROM repo_packages WHERE target = ?1 AND retired_gen IS NULL \
             AND (?2 = '' OR instr(lower(name), lower(?2)) > 0)",
        )?
        .query_row(params![target, search], |r| r.get(0))?;
    let mut stmt = c.prepare_cached(
        "SELECT target, repo, file, name, epoch, version, release, arch, build_id, retired_gen \
         FROM repo_packages WHERE target = ?1 AND retired_gen IS NULL \
         AND (?2 = '' OR instr(lower(name), lower(?2)) > 0) \
         ORDER BY name, repo, file LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![target, search, limit], |r| {
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
    })?;
    Ok((rows.collect::<rusqlite::Result<_>>()?, total as u64))
}

/// The newest builds of a target that were published, newest first.
pub fn recent_publications(c: &Connection, target: &str, limit: u32) -> Result<Vec<Publication>> {
    let rows: Vec<(i64, Option<i64>)> = c
        .prepare_cached(
            "SELECT id, published_at FROM builds WHERE target = ?1 AND publish = 'published' \
             ORDER BY id DESC LIMIT ?2",
        )?
        .query_map(params![target, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, published_at) in rows {
        if let Some(build) = get_build(c, id)? {
            out.push(Publication {
                build,
                published_at,
            });
        }
    }
    Ok(out)
}

/// A build that was published, and when (Unix ms; `None` for a build
/// published before migration 9 recorded it).
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub build: BuildRow,
    pub published_at: Option<i64>,
}

impl Publication {
    /// From the build's end to its packages in the repository (ms).
    pub fn latency_ms(&self) -> Option<i64> {
        Some(self.published_at? - self.build.finished_at?)
    }
}

/// What one worker did since a moment: jobs ended, and how many failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerOutcomes {
    pub worker: String,
    pub succeeded: u64,
    pub failed: u64,
}

/// Jobs that ended (succeeded or failed; canceled ones are nobody's fault)
/// since `since_ms`, per worker, by name.
pub fn worker_outcomes(c: &Connection, since_ms: i64) -> Result<Vec<WorkerOutcomes>> {
    let mut stmt = c.prepare_cached(
        "SELECT worker, sum(state = ?2), sum(state = ?3) FROM jobs \
         WHERE finished_at >= ?1 AND worker IS NOT NULL AND +state IN (?2, ?3) \
         GROUP BY worker ORDER BY worker",
    )?;
    let rows = stmt.query_map(
        params![
            since_ms,
            JobState::Succeeded.as_str(),
            JobState::Failed.as_str()
        ],
        |r| {
            Ok(WorkerOutcomes {
                worker: r.get(0)?,
                succeeded: r.get::<_, i64>(1)? as u64,
                failed: r.get::<_, i64>(2)? as u64,
            })
        },
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{new_rows, save_job, set_build_state, NewBuild};

    fn nb(package: &str, target: &str) -> NewBuild {
        NewBuild {
            target: target.into(),
            package: package.into(),
            evr: "1.0-1".into(),
            srpm_name: format!("{package}-1.0-1.src.rpm"),
            srpm_sha256: "00".repeat(32),
            srpm_size: 10,
            channel: "default".into(),
            disttag: String::new(),
            priority: 0,
            scratch: false,
            ci: false,
            excluded: vec![],
            arches: vec!["x86_64".into()],
            batch: None,
            waits_for: vec![],
            source: None,
            submitter: None,
        }
    }

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("kiln.db")).unwrap();
        crate::schema::migrate(&mut c).unwrap();
        (dir, c)
    }

    /// Insert build `id` (job `id`) created at `at`, in `state`.
    fn put(c: &Connection, id: i64, b: &NewBuild, at: i64, state: BuildState) {
        let (mut row, mut jobs) = new_rows(b, id, &[id]);
        row.created_at = at;
        jobs[0].created_at = at;
        crate::insert_rows(c, &row, &jobs).unwrap();
        if state != BuildState::Queued {
            set_build_state(c, id, state, None, None).unwrap();
        }
    }

    fn ids(p: &BuildPage) -> Vec<i64> {
        p.builds.iter().map(|b| b.id).collect()
    }

    #[test]
    fn the_listing_filters_and_pages_by_keyset() {
        let (_d, c) = db();
        for id in 1..=30 {
            let pkg = if id % 3 == 0 { "libfoo" } else { "bar" };
            let target = if id % 2 == 0 { "el9" } else { "f40" };
            let mut b = nb(pkg, target);
            if id % 5 == 0 {
                b.source = Some(kiln_core::git::BuildSource::default());
            }
            let state = if id % 4 == 0 {
                BuildState::Failed
            } else {
                BuildState::Succeeded
            };
            put(&c, id, &b, 1000 * id, state);
        }
        let mut f = BuildFilter {
            limit: 4,
            ..Default::default()
        };
        let p = list_builds_page(&c, &f).unwrap();
        assert_eq!(ids(&p), [30, 29, 28, 27]);
        assert_eq!(p.next, Some(27));
        f.before = p.next;
        assert_eq!(ids(&list_builds_page(&c, &f).unwrap()), [26, 25, 24, 23]);
        // Every filter at once, across pages, until the last one.
        let f = BuildFilter {
            state: Some(BuildState::Succeeded),
            target: Some("f40".into()),
            package: Some("lib".into()),
            package_prefix: true,
            limit: 2,
            ..Default::default()
        };
        let p = list_builds_page(&c, &f).unwrap();
        assert_eq!(ids(&p), [27, 21]);
        let p = list_builds_page(
            &c,
            &BuildFilter {
                before: p.next,
                ..f.clone()
            },
        )
        .unwrap();
        assert_eq!(ids(&p), [15, 9]);
        let p = list_builds_page(
            &c,
            &BuildFilter {
                before: p.next,
                ..f.clone()
            },
        )
        .unwrap();
        assert_eq!((ids(&p), p.next), (vec![3], None));
        // An exact name is not a prefix.
        let f = BuildFilter {
            package: Some("lib".into()),
            limit: 50,
            ..Default::default()
        };
        assert!(list_builds_page(&c, &f).unwrap().builds.is_empty());
        // Source and a date range (created_at is 1000 × id).
        let f = BuildFilter {
            source: Some(SourceKind::Git),
            from_ms: Some(10_000),
            to_ms: Some(25_000),
            limit: 50,
            ..Default::default()
        };
        assert_eq!(ids(&list_builds_page(&c, &f).unwrap()), [20, 15, 10]);
        let f = BuildFilter {
            source: Some(SourceKind::Upload),
            from_ms: Some(28_500),
            limit: 50,
            ..Default::default()
        };
        assert_eq!(ids(&list_builds_page(&c, &f).unwrap()), [29]);
        // A prefix tried on a window of the newest builds first, then on
        // its index: the same pages whatever the window.
        let f = BuildFilter {
            package: Some("lib".into()),
            package_prefix: true,
            limit: 4,
            ..Default::default()
        };
        for window in [1, 3, 10, 100] {
            let p = page_with_window(&c, &f, window).unwrap();
            assert_eq!(
                (ids(&p), p.next),
                (vec![30, 27, 24, 21], Some(21)),
                "{window}"
            );
            let p = page_with_window(
                &c,
                &BuildFilter {
                    before: p.next,
                    ..f.clone()
                },
                window,
            )
            .unwrap();
            assert_eq!(ids(&p), [18, 15, 12, 9], "{window}");
        }
        // A range with nothing in it.
        let f = BuildFilter {
            from_ms: Some(99_000),
            limit: 50,
            ..Default::default()
        };
        assert!(list_builds_page(&c, &f).unwrap().builds.is_empty());
    }

    #[test]
    fn the_listing_uses_indexes_not_a_sort() {
        let (_d, c) = db();
        let plan = |sql: &str| -> String {
            let mut s = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = s
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .map(|r| r.unwrap())
                .collect::<Vec<_>>();
            rows.join("; ")
        };
        for (sql, index) in [
            (
                "SELECT id FROM builds WHERE 1 AND id < 5 AND state = 'failed' ORDER BY id DESC LIMIT 51",
                "builds_state",
            ),
            (
                "SELECT id FROM builds WHERE 1 AND target = 'el9' ORDER BY id DESC LIMIT 51",
                "web_builds_target",
            ),
            (
                "SELECT id FROM builds WHERE 1 AND package = 'p' ORDER BY id DESC LIMIT 51",
                "web_builds_package",
            ),
            (
                "SELECT id FROM builds WHERE 1 AND source IS NOT NULL ORDER BY id DESC LIMIT 51",
                "web_builds_git",
            ),
            (
                "SELECT id FROM builds WHERE 1 AND id > coalesce((SELECT id FROM builds \
                 WHERE created_at < 5 ORDER BY created_at DESC LIMIT 1), 0) AND +created_at >= 5 \
                 ORDER BY id DESC LIMIT 51",
                "COVERING INDEX web_builds_created (created_at<?)",
            ),
        ] {
            let p = plan(sql);
            assert!(p.contains(index), "{sql}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{sql}: {p}");
        }
        let p = plan(
            "SELECT (created_at - 0) / 3600000, state, count(*) FROM builds WHERE created_at >= 0 GROUP BY 1, 2",
        );
        assert!(p.contains("COVERING INDEX web_builds_created"), "{p}");
    }

    #[test]
    fn a_date_range_takes_a_build_whose_clock_was_a_little_behind() {
        let (_d, c) = db();
        let day = 86_400_000;
        put(&c, 1, &nb("a", "t"), 10 * day, BuildState::Succeeded);
        // Build 2 was stamped a minute before build 1.
        put(
            &c,
            2,
            &nb("a", "t"),
            10 * day - 60_000,
            BuildState::Succeeded,
        );
        put(&c, 3, &nb("a", "t"), 11 * day, BuildState::Succeeded);
        let f = |from: i64, to: i64| BuildFilter {
            from_ms: Some(from),
            to_ms: Some(to),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(
            ids(&list_builds_page(&c, &f(10 * day - 60_000, 10 * day)).unwrap()),
            [2]
        );
        assert_eq!(
            ids(&list_builds_page(&c, &f(10 * day, 11 * day)).unwrap()),
            [1]
        );
        assert_eq!(
            ids(&list_builds_page(&c, &f(day, 12 * day)).unwrap()),
            [3, 2, 1]
        );
    }

    #[test]
    fn running_builds_hours_durations_and_outcomes() {
        let (_d, c) = db();
        put(&c, 1, &nb("p", "t"), 0, BuildState::Succeeded);
        put(&c, 2, &nb("p", "t"), 3_600_000 + 5, BuildState::Failed);
        put(&c, 3, &nb("p", "t"), 3_600_000 + 9, BuildState::Building);
        put(&c, 4, &nb("q", "t"), 2 * 3_600_000, BuildState::Succeeded);
        let mut j = crate::get_job(&c, 1).unwrap().unwrap();
        j.state = JobState::Succeeded;
        j.worker = Some("w1".into());
        j.started_at = Some(100);
        j.finished_at = Some(4_100);
        save_job(&c, &j).unwrap();
        let mut j = crate::get_job(&c, 2).unwrap().unwrap();
        j.state = JobState::Failed;
        j.worker = Some("w1".into());
        j.started_at = Some(100);
        j.finished_at = Some(9_000);
        save_job(&c, &j).unwrap();

        let r = running_builds(&c, 10).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].0.id, r[0].1.len()), (3, 1));

        assert_eq!(
            builds_per_hour(&c, 0).unwrap(),
            [
                (0, BuildState::Succeeded, 1),
                (1, BuildState::Building, 1),
                (1, BuildState::Failed, 1),
                (2, BuildState::Succeeded, 1)
            ]
        );
        // The newest succeeded build of p before build 3 is build 1 (build
        // 2 failed); none before build 1; none on another arch.
        assert_eq!(
            last_success_duration(&c, "p", "x86_64", 3).unwrap(),
            Some(4_000)
        );
        assert_eq!(last_success_duration(&c, "p", "x86_64", 1).unwrap(), None);
        assert_eq!(last_success_duration(&c, "p", "aarch64", 3).unwrap(), None);

        assert_eq!(
            worker_outcomes(&c, 0).unwrap(),
            [WorkerOutcomes {
                worker: "w1".into(),
                succeeded: 1,
                failed: 1
            }]
        );
        assert!(worker_outcomes(&c, 5_000).unwrap().len() == 1);
        assert!(worker_outcomes(&c, 10_000).unwrap().is_empty());
    }

    #[test]
    fn packages_of_a_target_and_what_a_build_published() {
        let (_d, c) = db();
        put(&c, 1, &nb("hello", "t"), 0, BuildState::Succeeded);
        crate::set_publish(&c, 1, kiln_core::state::PublishState::Published, None).unwrap();
        let pkg = |file: &str, name: &str, retired: Option<i64>| RepoPackage {
            target: "t".into(),
            repo: "x86_64".into(),
            file: file.into(),
            name: name.into(),
            epoch: 0,
            version: "1.0".into(),
            release: "1".into(),
            arch: "x86_64".into(),
            build: 1,
            retired_gen: retired,
        };
        crate::put_repo_package(&c, &pkg("hello-1.0-1.x86_64.rpm", "hello", None)).unwrap();
        crate::put_repo_package(
            &c,
            &pkg("Hello-devel-1.0-1.x86_64.rpm", "Hello-devel", None),
        )
        .unwrap();
        crate::put_repo_package(&c, &pkg("old-0.9-1.x86_64.rpm", "old", Some(3))).unwrap();
        let (all, n) = find_packages(&c, "t", "", 10).unwrap();
        assert_eq!((all.len(), n), (2, 2));
        let (found, n) = find_packages(&c, "t", "hELLo-D", 10).unwrap();
        assert_eq!((found[0].name.as_str(), n), ("Hello-devel", 1));
        let (first, n) = find_packages(&c, "t", "hello", 1).unwrap();
        assert_eq!((first.len(), n), (1, 2));
        assert!(find_packages(&c, "other", "", 10).unwrap().0.is_empty());
        assert_eq!(
            published_files(&c, 1).unwrap(),
            [
                (
                    "x86_64".to_string(),
                    "Hello-devel-1.0-1.x86_64.rpm".to_string()
                ),
                ("x86_64".to_string(), "hello-1.0-1.x86_64.rpm".to_string())
            ]
        );
        let p = recent_publications(&c, "t", 5).unwrap();
        assert_eq!(p.iter().map(|p| p.build.id).collect::<Vec<_>>(), [1]);
        assert_eq!(p[0].published_at, None, "not recorded in this test");
    }

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_upper("lib").as_deref(), Some("lic"));
        assert_eq!(prefix_upper("").as_deref(), None);
        assert_eq!(
            prefix_upper("a\u{10ffff}").as_deref(),
            Some("b"),
            "the last char cannot grow: its predecessor does"
        );
    }
}
