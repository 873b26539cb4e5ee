//! Counters and histograms for `/metrics` (Prometheus' text format): lock
//! free, so the code that observes never waits for a scrape.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram of durations in seconds, with fixed upper bounds.
pub struct Histogram {
    bounds: &'static [f64],
    /// One counter per bound, and one for +Inf.
    buckets: Vec<AtomicU64>,
    /// Sum in microseconds.
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// Bounds for fast operations (a commit, a dispatch): 1 ms to 10 s.
pub const FAST: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Bounds for slow ones (a build, a wait in a queue): 1 s to 1 day.
pub const SLOW: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Record one value, in seconds (negative values count as 0).
    pub fn observe(&self, secs: f64) {
        let secs = secs.max(0.0);
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Append the histogram as Prometheus text: `name_bucket{labels,le=…}`
    /// (cumulative), `name_sum`, `name_count`. `labels` is `k="v",…` or
    /// empty.
    pub fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            cum += b.load(Ordering::Relaxed);
            let le = self
                .bounds
                .get(i)
                .map(|v| v.to_string())
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cum}");
        }
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(
            out,
            "{name}_sum{} {}",
            braces(labels),
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "{name}_count{} {}",
            braces(labels),
            self.count.load(Ordering::Relaxed)
        );
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value escaped for Prometheus' text format.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_sum_and_count_add_up() {
        let h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 2.0, 3.0, 100.0] {
            h.observe(v);
        }
        let mut s = String::new();
        h.write(&mut s, "kiln_x_seconds", "t=\"a\"");
        assert_eq!(
            s,
            "kiln_x_seconds_bucket{t=\"a\",le=\"1\"} 1\n\
             kiln_x_seconds_bucket{t=\"a\",le=\"10\"} 3\n\
             kiln_x_seconds_bucket{t=\"a\",le=\"+Inf\"} 4\n\
             kiln_x_seconds_sum{t=\"a\"} 105.5\n\
             kiln_x_seconds_count{t=\"a\"} 4\n"
        );
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
