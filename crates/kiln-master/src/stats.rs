//! The statistics use case (issue 10): `/api/v1/stats` and the figures the
//! `/stats` page charts, computed from the database (builds per day by
//! outcome, queue wait per day, build duration per target and for the
//! slowest packages, worker utilisation per hour, publication latency).
//! Recomputed at most every [`FRESH`]: a page that many people reload does
//! not read 30 days of rows each time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use kiln_api::stats::{DayStats, DurationStats, HourUse, StatsView};
use kiln_store::StoreError;

use crate::api::ApiError;
use crate::Core;

/// How long computed figures are served before they are computed again.
pub const FRESH: Duration = Duration::from_secs(10);
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// `/api/v1/stats`.
pub fn routes() -> Router<Arc<Core>> {
    Router::new().route("/api/v1/stats", get(stats_json))
}

#[utoipa::path(
    get, path = "/api/v1/stats", tag = "stats",
    responses((status = 200, description = "Figures from the database (cached 10 s)", body = StatsView)),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
async fn stats_json(State(core): State<Arc<Core>>) -> Result<Json<StatsView>, ApiError> {
    Ok(Json(stats(&core).await?))
}

/// The figures, from the cache when fresh.
pub async fn stats(core: &Core) -> Result<StatsView, StoreError> {
    let mut cache = core.stats_cache.lock().await;
    if let Some((at, v)) = cache.as_ref() {
        if at.elapsed() < FRESH {
            return Ok(v.clone());
        }
    }
    let now = kiln_store::now_ms();
    let v = core
        .store
        .read(move |c| {
            let builds = kiln_store::stats::finished_builds(c, now - 30 * DAY_MS)?;
            let jobs = kiln_store::stats::job_times(c, now - 30 * DAY_MS)?;
            let capacity = kiln_store::stats::total_capacity(c)?;
            Ok(compute(now, &builds, &jobs, capacity))
        })
        .await?;
    *cache = Some((Instant::now(), v.clone()));
    Ok(v)
}

/// The `p`th percentile (0..=100) of sorted values (nearest rank).
fn pct(sorted: &[f64], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[(rank - 1).min(sorted.len() - 1)]
}

fn durations(name: &str, mut v: Vec<f64>) -> DurationStats {
    v.sort_by(|a, b| a.total_cmp(b));
    DurationStats {
        name: name.to_string(),
        count: v.len() as u64,
        p50: pct(&v, 50),
        p95: pct(&v, 95),
        max: v.last().copied().unwrap_or(0.0),
    }
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01, UTC).
fn date(day: i64) -> String {
    kiln_core::git::utc_iso(day * 86_400)[..10].to_string()
}

/// The figures from the raw rows (pure, for tests).
pub fn compute(
    now: i64,
    builds: &[kiln_store::stats::FinishedBuild],
    jobs: &[(i64, i64, Option<i64>)],
    capacity: u64,
) -> StatsView {
    let today = now.div_euclid(DAY_MS);
    let first = today - 29;
    let mut days: BTreeMap<i64, (DayStats, Vec<f64>)> = (first..=today)
        .map(|d| {
            (
                d,
                (
                    DayStats {
                        date: date(d),
                        succeeded: 0,
                        failed: 0,
                        canceled: 0,
                        skipped: 0,
                        queue_wait_p50: None,
                        queue_wait_p95: None,
                    },
                    Vec::new(),
                ),
            )
        })
        .collect();
    let mut per_target: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut per_package: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut publication = Vec::new();
    for (target, package, state, created, finished, published) in builds {
        if let Some((d, _)) = days.get_mut(&finished.div_euclid(DAY_MS)) {
            match state.as_str() {
                "succeeded" => d.succeeded += 1,
                "failed" => d.failed += 1,
                "canceled" => d.canceled += 1,
                "skipped" => d.skipped += 1,
                _ => {}
            }
        }
        if state == "succeeded" {
            let secs = (finished - created) as f64 / 1000.0;
            per_target.entry(target).or_default().push(secs);
            per_package.entry(package).or_default().push(secs);
        }
        if let Some(p) = published {
            publication.push((p - finished) as f64 / 1000.0);
        }
    }
    let first_hour = (now - 7 * DAY_MS).div_euclid(HOUR_MS);
    let last_hour = now.div_euclid(HOUR_MS);
    let mut busy_ms: BTreeMap<i64, i64> = (first_hour..=last_hour).map(|h| (h, 0)).collect();
    for &(created, started, finished) in jobs {
        if let Some((_, w)) = days.get_mut(&started.div_euclid(DAY_MS)) {
            w.push((started - created).max(0) as f64 / 1000.0);
        }
        let end = finished.unwrap_or(now).min(now);
        let mut t = started.max(first_hour * HOUR_MS);
        while t < end {
            let h = t.div_euclid(HOUR_MS);
            let next = ((h + 1) * HOUR_MS).min(end);
            if let Some(b) = busy_ms.get_mut(&h) {
                *b += next - t;
            }
            t = next;
        }
    }
    let days = days
        .into_values()
        .map(|(mut d, mut waits)| {
            waits.sort_by(|a, b| a.total_cmp(b));
            if !waits.is_empty() {
                d.queue_wait_p50 = Some(pct(&waits, 50));
                d.queue_wait_p95 = Some(pct(&waits, 95));
            }
            d
        })
        .collect();
    let targets = per_target
        .into_iter()
        .map(|(t, v)| durations(t, v))
        .collect();
    let mut slowest: Vec<DurationStats> = per_package
        .into_iter()
        .map(|(p, v)| durations(p, v))
        .collect();
    slowest.sort_by(|a, b| b.p50.total_cmp(&a.p50).then_with(|| a.name.cmp(&b.name)));
    slowest.truncate(20);
    let utilisation = busy_ms
        .into_iter()
        .map(|(h, ms)| {
            // The hour under way counts only what has passed of it.
            let span = (now - h * HOUR_MS).clamp(1, HOUR_MS);
            HourUse {
                hour: h * HOUR_MS,
                busy: ms as f64 / span as f64,
                capacity,
            }
        })
        .collect();
    StatsView {
        generated_at: now,
        days,
        targets,
        slowest_packages: slowest,
        utilisation,
        publication: (!publication.is_empty()).then(|| durations("", publication)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_from_rows() {
        let now = 100 * DAY_MS + 12 * HOUR_MS;
        let b = |state: &str, created: i64, finished: i64, published: Option<i64>| {
            (
                "el9".to_string(),
                "pkg".to_string(),
                state.to_string(),
                created,
                finished,
                published,
            )
        };
        let builds = vec![
            b("succeeded", now - 100_000, now - 40_000, Some(now - 38_000)),
            b("succeeded", now - 200_000, now - 180_000, None),
            b("failed", now - DAY_MS - 5_000, now - DAY_MS, None),
            b("skipped", now - 10, now - 10, None),
        ];
        // Two jobs: waited 2 s and 4 s; one ran an hour ago for 30 min,
        // one is still running since 15 min.
        let jobs = vec![
            (
                now - HOUR_MS - 2_000,
                now - HOUR_MS,
                Some(now - HOUR_MS / 2),
            ),
            (now - 15 * 60_000 - 4_000, now - 15 * 60_000, None),
        ];
        let v = compute(now, &builds, &jobs, 4);
        assert_eq!(v.days.len(), 30);
        let today = v.days.last().unwrap();
        assert_eq!(today.date, "1970-04-11");
        assert_eq!((today.succeeded, today.skipped, today.failed), (2, 1, 0));
        assert_eq!(v.days[28].failed, 1);
        assert_eq!(today.queue_wait_p50, Some(2.0));
        assert_eq!(today.queue_wait_p95, Some(4.0));
        assert_eq!(v.targets.len(), 1);
        assert_eq!(v.targets[0].count, 2);
        assert_eq!((v.targets[0].p50, v.targets[0].max), (20.0, 60.0));
        assert_eq!(v.publication.as_ref().map(|p| p.p50), Some(2.0));
        // The hour before this one: 30 min of the first job and the last
        // 15 of the one still running.
        let hours = &v.utilisation;
        assert_eq!(hours.len(), 7 * 24 + 1);
        let prev = &hours[hours.len() - 2];
        assert!((prev.busy - 0.75).abs() < 1e-9, "{prev:?}");
        assert_eq!(prev.capacity, 4);
        // The hour under way (12:00 to now, exactly on the hour: 1 ms
        // counted) holds the running job.
        assert!(hours[hours.len() - 1].busy >= 0.0);
    }
}
