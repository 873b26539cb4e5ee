//! `/metrics` in Prometheus' text format (issue 10): queues and running
//! jobs from the scheduler's memory, builds finished by outcome, build,
//! job and queue-wait durations, publications, group commits and upload
//! bytes. Counters live where they happen and are read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use kiln_core::metrics::{header as help, label};
use kiln_core::state::BuildState;

use crate::sched::Event;
use crate::Core;

/// The master's own counters (the scheduler's, the store's and the
/// repository builder's are read from them).
#[derive(Default)]
pub struct Metrics {
    /// Bytes of artifacts received from workers (streamed or inline).
    pub upload_bytes: AtomicU64,
    /// Bytes of SRPMs received from clients.
    pub client_upload_bytes: AtomicU64,
    /// Builds that reached each final state since the master started.
    succeeded: AtomicU64,
    failed: AtomicU64,
    canceled: AtomicU64,
    skipped: AtomicU64,
}

impl Metrics {
    /// Count what announced events say (builds that ended).
    pub fn on_event(&self, e: &Event) {
        if let Event::Build { state, .. } = e {
            let c = match state {
                BuildState::Succeeded => &self.succeeded,
                BuildState::Failed => &self.failed,
                BuildState::Canceled => &self.canceled,
                BuildState::Skipped => &self.skipped,
                _ => return,
            };
            c.fetch_add(1, Relaxed);
        }
    }
}

/// `/metrics`.
pub fn routes() -> Router<Arc<Core>> {
    Router::new().route("/metrics", get(scrape))
}

#[utoipa::path(
    get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text exposition (version 0.0.4)", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8")),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
async fn scrape(State(core): State<Arc<Core>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&core),
    )
}

/// The whole exposition.
pub fn render(core: &Core) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(8192);
    let (queues, running, workers) = {
        let s = core.sched();
        let (running, workers) = s.running_and_workers();
        (s.queue_summary(), running, workers)
    };
    help(
        &mut out,
        "kiln_jobs_queued",
        "gauge",
        "Pending jobs per channel and arch (builds waiting for others not counted).",
    );
    for q in &queues {
        let _ = writeln!(
            out,
            "kiln_jobs_queued{{channel=\"{}\",arch=\"{}\"}} {}",
            label(&q.channel),
            label(&q.arch),
            q.pending
        );
    }
    help(
        &mut out,
        "kiln_jobs_running",
        "gauge",
        "Jobs assigned to or running on a worker.",
    );
    let _ = writeln!(out, "kiln_jobs_running {running}");
    help(
        &mut out,
        "kiln_workers_connected",
        "gauge",
        "Workers with a session.",
    );
    let _ = writeln!(out, "kiln_workers_connected {workers}");
    let m = &core.metrics;
    help(
        &mut out,
        "kiln_builds_finished_total",
        "counter",
        "Builds that reached a final state since the master started, by outcome.",
    );
    for (o, c) in [
        ("succeeded", &m.succeeded),
        ("failed", &m.failed),
        ("canceled", &m.canceled),
        ("skipped", &m.skipped),
    ] {
        let _ = writeln!(
            out,
            "kiln_builds_finished_total{{outcome=\"{o}\"}} {}",
            c.load(Relaxed)
        );
    }
    {
        let s = core.sched();
        let sm = &s.metrics;
        for (name, h, what) in [
            (
                "kiln_build_duration_seconds",
                &sm.build_duration,
                "From a build's submission to its end.",
            ),
            (
                "kiln_job_duration_seconds",
                &sm.job_duration,
                "From a job's assignment to its result.",
            ),
            (
                "kiln_queue_wait_seconds",
                &sm.queue_wait,
                "From a job's creation to its assignment.",
            ),
        ] {
            help(&mut out, name, "histogram", what);
            h.write(&mut out, name, "");
        }
    }
    let r = &core.repo;
    help(
        &mut out,
        "kiln_publication_duration_seconds",
        "histogram",
        "One publication of a target: snapshot, createrepo_c, record.",
    );
    r.publication_seconds
        .write(&mut out, "kiln_publication_duration_seconds", "");
    help(
        &mut out,
        "kiln_publication_failures_total",
        "counter",
        "Publications of a target that failed.",
    );
    let _ = writeln!(
        out,
        "kiln_publication_failures_total {}",
        r.publication_failures.load(Relaxed)
    );
    let w = core.store.metrics();
    help(
        &mut out,
        "kiln_db_commits_total",
        "counter",
        "Group commits of the database writer.",
    );
    let _ = writeln!(out, "kiln_db_commits_total {}", w.commits.load(Relaxed));
    help(
        &mut out,
        "kiln_db_writes_total",
        "counter",
        "Writes committed by those group commits (their sizes add up to this).",
    );
    let _ = writeln!(out, "kiln_db_writes_total {}", w.writes.load(Relaxed));
    help(
        &mut out,
        "kiln_db_commit_failures_total",
        "counter",
        "Group commits that failed.",
    );
    let _ = writeln!(
        out,
        "kiln_db_commit_failures_total {}",
        w.failed.load(Relaxed)
    );
    help(
        &mut out,
        "kiln_db_commit_seconds",
        "histogram",
        "Latency of a group commit, fsync included.",
    );
    w.latency.write(&mut out, "kiln_db_commit_seconds", "");
    help(
        &mut out,
        "kiln_upload_bytes_total",
        "counter",
        "Bytes received: artifacts from workers, SRPMs from clients.",
    );
    for (from, c) in [
        ("worker", &m.upload_bytes),
        ("client", &m.client_upload_bytes),
    ] {
        let _ = writeln!(
            out,
            "kiln_upload_bytes_total{{from=\"{from}\"}} {}",
            c.load(Relaxed)
        );
    }
    out
}
