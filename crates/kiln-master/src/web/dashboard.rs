//! `/`: the farm at a glance: queues, workers, what runs now (with its
//! progress), the latest builds, and builds per hour today.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use kiln_core::state::BuildState;
use kiln_store::{BuildRow, JobRow, WorkerRow};
use maud::{html, Markup};

use super::layout::{self, Frame};
use super::{builds, html_response, signed_in, WebResult};
use crate::Core;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// Builds per hour of one day, by outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Hour {
    pub ok: u64,
    pub failed: u64,
    /// Canceled or skipped.
    pub other: u64,
    /// Not ended yet.
    pub active: u64,
}

impl Hour {
    fn total(&self) -> u64 {
        self.ok + self.failed + self.other + self.active
    }
}

/// Hours 0..24 of a day from `(hour, state, count)`.
pub(super) fn hours(rows: &[(i64, BuildState, u64)]) -> [Hour; 24] {
    let mut h = [Hour::default(); 24];
    for &(i, state, n) in rows {
        let Some(slot) = usize::try_from(i).ok().and_then(|i| h.get_mut(i)) else {
            continue;
        };
        match state {
            BuildState::Succeeded => slot.ok += n,
            BuildState::Failed => slot.failed += n,
            BuildState::Canceled | BuildState::Skipped => slot.other += n,
            BuildState::Waiting | BuildState::Queued | BuildState::Building => slot.active += n,
        }
    }
    h
}

/// Builds per hour as a stacked bar chart (inline SVG, drawn here), with
/// the numbers in its titles and a table for those who do not see it.
pub(super) fn chart(h: &[Hour; 24], upto: usize) -> Markup {
    const W: i64 = 20;
    const H: i64 = 100;
    let max = h.iter().map(Hour::total).max().unwrap_or(0).max(1);
    let total: u64 = h.iter().map(Hour::total).sum();
    // Per hour: its x, its title, and its stacked bars (class, y, height).
    type Bars = Vec<(&'static str, i64, i64)>;
    let bars: Vec<(i64, String, Bars)> = h
        .iter()
        .enumerate()
        .map(|(i, hr)| {
            let x = 30 + i as i64 * W;
            let title = format!(
                "{i:02}:00 UTC: {} builds ({} succeeded, {} failed, {} canceled or skipped, {} active)",
                hr.total(),
                hr.ok,
                hr.failed,
                hr.other,
                hr.active
            );
            let mut base = H;
            let mut rects = Vec::new();
            for (n, class) in [
                (hr.ok, "ok"),
                (hr.failed, "bad"),
                (hr.other, "other"),
                (hr.active, "run"),
            ] {
                if n > 0 {
                    let bh = (n as i64 * H / max as i64).max(1);
                    base -= bh;
                    rects.push((class, base, bh));
                }
            }
            (x, title, rects)
        })
        .collect();
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (24 * W + 30) " " (H + 20) } role="img"
                aria-label={ (total) " builds today, per hour" } {
                @for (i, (x, title, rects)) in bars.iter().enumerate() {
                    g {
                        title { (title) }
                        @for (class, y, bh) in rects {
                            rect class=(class) x=(x + 2) y=(y) width=(W - 4) height=(bh) {}
                        }
                        @if i > upto { rect.future x=(x + 2) y=(H - 1) width=(W - 4) height="1" {} }
                    }
                    @if i % 6 == 0 { text x=(x) y=(H + 15) { (format!("{i:02}h")) } }
                }
                text x="0" y="10" { (max) }
                line x1="28" y1=(H) x2=(24 * W + 30) y2=(H) {}
            }
            figcaption {
                (total) " builds created today (UTC): "
                span.key.ok { "succeeded" } " " span.key.bad { "failed" } " "
                span.key.other { "canceled/skipped" } " " span.key.run { "active" }
            }
        }
    }
}

struct Data {
    workers: Vec<WorkerRow>,
    running: Vec<(BuildRow, Vec<JobRow>)>,
    /// Per running build, per job: the last successful duration.
    expected: HashMap<i64, Option<i64>>,
    latest: Vec<BuildRow>,
    hours: Vec<(i64, BuildState, u64)>,
    /// The jobs workers hold: (build, arch, package).
    held: HashMap<i64, (i64, String, String)>,
}

/// `GET /`.
pub(super) async fn dashboard(State(core): State<Arc<Core>>, headers: HeaderMap) -> WebResult {
    let viewer = signed_in(&core, &headers).await;
    let last = core.web.last_id();
    let now = kiln_store::now_ms();
    let today = now - now.rem_euclid(DAY_MS);
    let (queues, live) = {
        let s = core.sched();
        (s.queue_summary(), s.worker_views())
    };
    let held_ids: Vec<i64> = live
        .values()
        .flat_map(|w| w.running.iter().copied())
        .collect();
    let d = core
        .store
        .read(move |c| {
            let running = kiln_store::browse::running_builds(c, 30)?;
            let mut expected = HashMap::new();
            for (b, jobs) in &running {
                for j in jobs.iter().filter(|j| !j.state.is_final()) {
                    let e = if b.package.is_empty() {
                        None
                    } else {
                        kiln_store::browse::last_success_duration(c, &b.package, &j.arch, b.id)?
                    };
                    expected.insert(j.id, e);
                }
            }
            let mut held = HashMap::new();
            for id in held_ids {
                if let Some(j) = kiln_store::get_job(c, id)? {
                    let pkg = kiln_store::get_build(c, j.build)?
                        .map(|b| b.package)
                        .unwrap_or_default();
                    held.insert(id, (j.build, j.arch, pkg));
                }
            }
            Ok(Data {
                workers: kiln_store::list_workers(c)?,
                running,
                expected,
                latest: kiln_store::list_builds(c, 15)?,
                hours: Vec::new(),
                held,
            })
        })
        .await?;
    let store = core.store.clone();
    let per_hour = core
        .web
        .hours
        .get(today, || async move {
            store
                .read(move |c| kiln_store::browse::builds_per_hour(c, today))
                .await
        })
        .await?;
    let d = Data {
        hours: per_hour,
        ..d
    };
    let upto = ((now - today) / HOUR_MS) as usize;
    let body = html! {
        h1 { "Dashboard" }
        div.grid {
            section #queues {
                h2 { "Queues" }
                @if queues.is_empty() { p.empty { "No job waits." } } @else {
                    table {
                        thead { tr { th { "Channel" } th { "Arch" } th.num { "Waiting" } th { "Oldest" } } }
                        tbody { @for q in &queues {
                            tr data-channel=(q.channel) data-arch=(q.arch) {
                                td { (q.channel) } td { (q.arch) } td.num { (q.pending) }
                                td { @if let Some(o) = q.oldest_ms { (layout::ago(o, now)) } @else { "–" } }
                            }
                        } }
                    }
                }
            }
            section #workers {
                h2 { a href="/workers" { "Workers" } }
                @if d.workers.is_empty() { p.empty { "No worker enrolled." } } @else {
                    table {
                        thead { tr { th { "Worker" } th { "Slots" } th { "Jobs" } th { "Seen" } } }
                        tbody { @for w in &d.workers {
                            @let l = live.get(&w.name);
                            tr.worker data-worker=(w.name) {
                                td { (w.name)
                                    @if w.revoked { " " span.st.st-failed { "revoked" } }
                                    @else if l.is_some_and(|l| l.draining) { " " span.st.st-queued { "draining" } }
                                    @else if l.is_none() { " " span.st.st-canceled { "offline" } } }
                                td.num { @if let Some(l) = l {
                                    meter value=(l.running.len()) max=(l.capacity.max(1)) { (l.running.len()) "/" (l.capacity) } " " (l.running.len()) "/" (l.capacity)
                                } @else { "0/" (w.capacity) } }
                                td { @if let Some(l) = l { @for j in &l.running {
                                    @if let Some((b, arch, pkg)) = d.held.get(j) {
                                        a href={ "/jobs/" (j) "/log" } { (layout::nevr(pkg, "")) " " (arch) } " (" a href={ "/builds/" (b) } { (b) } ") "
                                    } @else { a href={ "/jobs/" (j) "/log" } { "job " (j) } " " }
                                } } }
                                td { @if l.is_some() { "now" } @else if let Some(s) = w.last_seen { (layout::ago(s, now)) } @else { "never" } }
                            }
                        } }
                    }
                }
            }
        }
        section #running {
            h2 { "Running now" }
            @if d.running.is_empty() { p.empty { "Nothing builds." } } @else {
                div.scroll { table {
                    thead { tr { th { "Build" } th { "Package" } th { "Target" } th { "Jobs" } } }
                    tbody { @for (b, jobs) in &d.running {
                        tr data-build=(b.id) {
                            td { a href={ "/builds/" (b.id) } { (b.id) } }
                            td.pkg { (layout::nevr(&b.package, &b.evr)) }
                            td { (b.target) }
                            td { ul.joblist { @for j in jobs {
                                li.job data-job=(j.id) data-arch=(j.arch) data-state=(j.state) {
                                    a href={ "/jobs/" (j.id) "/log" } { (j.arch) } " "
                                    span class={ "st jstate st-" (j.state) } { (j.state) } " "
                                    @if !j.state.is_final() && j.started_at.is_some() {
                                        (layout::progress(j.started_at, d.expected.get(&j.id).copied().flatten(), now))
                                    }
                                }
                            } } }
                        }
                    } }
                } }
            }
        }
        section #today {
            h2 { "Builds per hour today" }
            (chart(&hours(&d.hours), upto))
        }
        section #latest {
            h2 { a href="/builds" { "Latest builds" } }
            @if d.latest.is_empty() { p.empty { "No build yet." } } @else { (builds::table(&d.latest, now)) }
        }
    };
    Ok(html_response(
        &headers,
        layout::page(
            Frame {
                title: "Dashboard",
                page: "dashboard",
                nav: "dashboard",
                viewer: viewer.as_ref(),
                last_event: last,
                build: None,
                job: None,
            },
            body,
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_stack_by_outcome() {
        let h = hours(&[
            (0, BuildState::Succeeded, 3),
            (0, BuildState::Failed, 1),
            (5, BuildState::Building, 2),
            (5, BuildState::Skipped, 1),
            (30, BuildState::Succeeded, 9),
        ]);
        assert_eq!(h[0].total(), 4);
        assert_eq!((h[5].active, h[5].other), (2, 1));
        let svg = chart(&h, 5).into_string();
        assert!(svg.contains("4 builds (3 succeeded, 1 failed"), "{svg}");
        assert!(svg.contains("7 builds created today"), "{svg}");
    }
}
