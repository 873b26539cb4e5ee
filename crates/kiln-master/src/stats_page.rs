//! The body of the `/stats` page: charts drawn as inline SVG on the server
//! (no chart script), each with its numbers in a table beneath (readable
//! without the chart, and testable). The web UI wraps it in its layout.

use kiln_api::stats::{DurationStats, StatsView};
use maud::{html, Markup};

const W: f64 = 720.0;
const H: f64 = 180.0;
const PAD: f64 = 28.0;

/// Seconds for people: `4.2 s`, `3 min 5 s`, `1 h 2 min`.
pub fn secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{} min {} s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{} h {} min",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

/// A stacked bar chart: one bar per column, one class per series.
fn bars(title: &str, cols: &[(String, Vec<f64>)], series: &[&str]) -> Markup {
    let max = cols
        .iter()
        .map(|(_, v)| v.iter().sum::<f64>())
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let n = cols.len().max(1) as f64;
    let bw = (W - 2.0 * PAD) / n;
    // (series index, x, y, height, label, value), stacked from the axis up.
    let mut rects = Vec::new();
    for (i, (label, vals)) in cols.iter().enumerate() {
        let x = PAD + i as f64 * bw;
        let mut y = H - PAD;
        for (k, v) in vals.iter().enumerate() {
            let h = v / max * (H - 2.0 * PAD);
            if h > 0.0 {
                rects.push((k, x, y - h, h, label, *v));
            }
            y -= h;
        }
    }
    html! {
        svg class="chart" viewBox={"0 0 " (W) " " (H)} role="img" aria-label=(title) {
            title { (title) }
            line class="axis" x1=(PAD) y1=(H - PAD) x2=(W - PAD) y2=(H - PAD) {}
            text class="tick" x="2" y=(PAD) { (format!("{max:.0}")) }
            @for (k, x, y, h, label, v) in rects {
                @let name = series.get(k).copied().unwrap_or("");
                rect class={"s" (k) " " (name)}
                    x=(format!("{:.1}", x + 1.0)) y=(format!("{y:.1}"))
                    width=(format!("{:.1}", (bw - 2.0).max(1.0))) height=(format!("{h:.1}")) {
                    title { (label) ": " (format!("{v:.2}")) " " (name) }
                }
            }
        }
    }
}

/// A line chart of several series over the same columns (gaps where a
/// value is missing).
fn lines(title: &str, labels: &[String], series: &[(&str, Vec<Option<f64>>)]) -> Markup {
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(0.0_f64, |a, b| a.max(*b))
        .max(1e-9);
    let n = labels.len().max(2) as f64 - 1.0;
    let x = |i: usize| PAD + i as f64 / n * (W - 2.0 * PAD);
    let y = |v: f64| H - PAD - v / max * (H - 2.0 * PAD);
    html! {
        svg class="chart" viewBox={"0 0 " (W) " " (H)} role="img" aria-label=(title) {
            title { (title) }
            line class="axis" x1=(PAD) y1=(H - PAD) x2=(W - PAD) y2=(H - PAD) {}
            text class="tick" x="2" y=(PAD) { (secs(max)) }
            @for (k, (name, vals)) in series.iter().enumerate() {
                @let pts: Vec<String> = vals.iter().enumerate()
                    .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x(i), y(v)))).collect();
                polyline class={"line s" (k)} points=(pts.join(" ")) { title { (name) } }
            }
        }
    }
}

fn duration_table(caption: &str, first: &str, rows: &[DurationStats]) -> Markup {
    html! {
        table class="stats" {
            caption { (caption) }
            thead { tr { th { (first) } th { "builds" } th { "p50" } th { "p95" } th { "max" } } }
            tbody {
                @for r in rows {
                    tr { td { (r.name) } td { (r.count) } td { (secs(r.p50)) } td { (secs(r.p95)) } td { (secs(r.max)) } }
                }
                @if rows.is_empty() { tr { td colspan="5" { "none in the last 30 days" } } }
            }
        }
    }
}

/// The page's body.
pub fn body(v: &StatsView) -> Markup {
    let outcomes = ["succeeded", "failed", "canceled", "skipped"];
    let cols: Vec<(String, Vec<f64>)> = v
        .days
        .iter()
        .map(|d| {
            (
                d.date.clone(),
                vec![
                    d.succeeded as f64,
                    d.failed as f64,
                    d.canceled as f64,
                    d.skipped as f64,
                ],
            )
        })
        .collect();
    let dates: Vec<String> = v.days.iter().map(|d| d.date.clone()).collect();
    let p50: Vec<Option<f64>> = v.days.iter().map(|d| d.queue_wait_p50).collect();
    let p95: Vec<Option<f64>> = v.days.iter().map(|d| d.queue_wait_p95).collect();
    let hours: Vec<(String, Vec<f64>)> = v
        .utilisation
        .iter()
        .map(|h| (kiln_core::git::utc_iso(h.hour / 1000), vec![h.busy]))
        .collect();
    let capacity = v.utilisation.last().map(|h| h.capacity).unwrap_or(0);
    let busiest = v.utilisation.iter().map(|h| h.busy).fold(0.0_f64, f64::max);
    let avg = if v.utilisation.is_empty() {
        0.0
    } else {
        v.utilisation.iter().map(|h| h.busy).sum::<f64>() / v.utilisation.len() as f64
    };
    html! {
        section id="builds-per-day" {
            h2 { "Builds per day, by outcome (30 days)" }
            (bars("Builds per day by outcome", &cols, &outcomes))
            p class="legend" {
                @for (k, o) in outcomes.iter().enumerate() { span class={"key s" (k)} { (o) } " " }
            }
            table class="stats" {
                caption { "Builds per day" }
                thead { tr { th { "day" } @for o in outcomes { th { (o) } } } }
                tbody {
                    @for d in v.days.iter().rev() {
                        tr { td { (d.date) } td { (d.succeeded) } td { (d.failed) } td { (d.canceled) } td { (d.skipped) } }
                    }
                }
            }
        }
        section id="queue-wait" {
            h2 { "Queue wait per day (p50 and p95)" }
            (lines("Queue wait per day", &dates, &[("p50", p50.clone()), ("p95", p95.clone())]))
            table class="stats" {
                caption { "Queue wait" }
                thead { tr { th { "day" } th { "p50" } th { "p95" } } }
                tbody {
                    @for d in v.days.iter().rev().filter(|d| d.queue_wait_p50.is_some()) {
                        tr {
                            td { (d.date) }
                            td { (d.queue_wait_p50.map(secs).unwrap_or_default()) }
                            td { (d.queue_wait_p95.map(secs).unwrap_or_default()) }
                        }
                    }
                }
            }
        }
        section id="durations" {
            h2 { "Build duration (succeeded builds, 30 days)" }
            (duration_table("Per target", "target", &v.targets))
            (duration_table("The 20 slowest packages (by median)", "package", &v.slowest_packages))
        }
        section id="utilisation" {
            h2 { "Worker utilisation (busy slots per hour, 7 days)" }
            (bars("Busy slots per hour", &hours, &["busy"]))
            table class="stats" {
                caption { "Utilisation" }
                thead { tr { th { "slots now" } th { "average busy" } th { "busiest hour" } } }
                tbody { tr { td { (capacity) } td { (format!("{avg:.2}")) } td { (format!("{busiest:.2}")) } } }
            }
        }
        section id="publication" {
            h2 { "Publication latency (a build's end to its publication)" }
            (duration_table("Publications", "", v.publication.as_slice()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_holds_its_numbers_and_escapes_names() {
        let now = 40 * 86_400_000;
        let builds = vec![(
            "el9".to_string(),
            "<b>pkg</b>".to_string(),
            "succeeded".to_string(),
            now - 90_000,
            now - 30_000,
            Some(now - 20_000),
        )];
        let v = crate::stats::compute(
            now,
            &builds,
            &[(now - 95_000, now - 90_000, Some(now - 30_000))],
            2,
        );
        let html = body(&v).into_string();
        assert!(html.contains("<svg"), "charts are inline SVG");
        assert!(html.contains("&lt;b&gt;pkg&lt;/b&gt;"), "names are escaped");
        assert!(
            html.contains("1 min 0 s"),
            "the duration is in the table: {html}"
        );
        assert!(!html.contains("<script"));
        assert_eq!(secs(4.25), "4.2 s");
        assert_eq!(secs(3725.0), "1 h 2 min");
    }
}
