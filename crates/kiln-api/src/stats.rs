//! `GET /api/v1/stats`: the statistics the web UI charts (issue 10). Times
//! are Unix milliseconds; durations seconds.

use serde::{Deserialize, Serialize};

/// Everything `/stats` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatsView {
    /// When these figures were computed.
    pub generated_at: i64,
    /// The last 30 days (UTC), oldest first.
    pub days: Vec<DayStats>,
    /// Build duration (submission to end) of succeeded builds over the
    /// last 30 days, per target.
    pub targets: Vec<DurationStats>,
    /// The 20 packages whose succeeded builds took longest (median) over
    /// the last 30 days.
    pub slowest_packages: Vec<DurationStats>,
    /// Worker utilisation per hour over the last 7 days, oldest first.
    pub utilisation: Vec<HourUse>,
    /// From a build's end to its publication, over the last 30 days.
    pub publication: Option<DurationStats>,
}

/// One day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DayStats {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    /// Builds that succeeded that day.
    pub succeeded: u64,
    /// Builds that failed that day.
    pub failed: u64,
    /// Builds canceled that day.
    pub canceled: u64,
    /// Builds the version gate skipped that day.
    pub skipped: u64,
    /// How long jobs that started that day waited in their queue: median.
    pub queue_wait_p50: Option<f64>,
    /// The same, 95th percentile.
    pub queue_wait_p95: Option<f64>,
}

/// Durations of a group (a target, a package, publications).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DurationStats {
    /// The target or package (empty for publications).
    pub name: String,
    /// How many.
    pub count: u64,
    /// Median, in seconds.
    pub p50: f64,
    /// 95th percentile, in seconds.
    pub p95: f64,
    /// Longest, in seconds.
    pub max: f64,
}

/// One hour of worker time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HourUse {
    /// The hour's start.
    pub hour: i64,
    /// Slots busy on average over the hour.
    pub busy: f64,
    /// Slots the workers known now declare, in all.
    pub capacity: u64,
}
