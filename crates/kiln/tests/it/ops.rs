//! Operations (issue 10): `/metrics` in Prometheus' text format and the
//! statistics (`/api/v1/stats`), from real builds.

use crate::common::*;
use serde_json::Value;

/// The value of a sample line `name{labels} value` (labels as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_and_statistics_count_real_builds() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("a", "x86_64,noarch", "default", 1);
    let ok = Pkg::noarch("ko-fine").build_srpm(&m.scratch);
    m.submit_wait(&ok, &[]);
    let bad = Pkg::noarch("ko-broken")
        .build_script("echo failing on purpose; exit 3")
        .build_srpm(&m.scratch);
    let b = m.submit(&bad, &[]);
    let b = m.wait_build_done(build_id(&b), BUILD_TIMEOUT);
    assert_eq!(jstr(&b, "state"), "failed", "{b}");
    // Queued on a channel nobody serves: a queue to show.
    let idle = Pkg::noarch("ko-idle").build_srpm(&m.scratch);
    m.submit(&idle, &["--channel", "nobody"]);

    let r = curl(&[&format!("{}/metrics", m.api_url)], &m.scratch);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain"),
        "{:?}",
        r.headers
    );
    let text = r.text();
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(
            l.starts_with("kiln_"),
            "every metric is kiln_-prefixed: {l}"
        );
    }
    let got = |s: &str| sample(&text, s).unwrap_or_else(|| panic!("no {s} in:\n{text}"));
    assert_eq!(
        got("kiln_builds_finished_total{outcome=\"succeeded\"}"),
        1.0
    );
    assert_eq!(got("kiln_builds_finished_total{outcome=\"failed\"}"), 1.0);
    assert_eq!(
        got("kiln_jobs_queued{channel=\"nobody\",arch=\"noarch\"}"),
        1.0
    );
    assert_eq!(got("kiln_workers_connected"), 1.0);
    assert_eq!(got("kiln_build_duration_seconds_count"), 2.0);
    assert_eq!(got("kiln_queue_wait_seconds_count"), 2.0);
    assert!(got("kiln_db_commits_total") >= 1.0);
    assert!(
        got("kiln_upload_bytes_total{from=\"worker\"}") > 0.0,
        "the rpm was sent"
    );
    assert!(
        got("kiln_upload_bytes_total{from=\"client\"}") > 0.0,
        "the SRPMs were uploaded"
    );
    assert_eq!(got("kiln_publication_failures_total"), 0.0);
    assert!(
        text.contains("# TYPE kiln_db_commit_seconds histogram"),
        "{text}"
    );

    // The statistics: today has one success and one failure, the target's
    // durations, and the worker's hours.
    let s = curl(&[&format!("{}/api/v1/stats", m.api_url)], &m.scratch);
    assert_eq!(s.status, 200, "{}", s.text());
    let v: Value = serde_json::from_slice(&s.body).unwrap();
    let days = jarr(&v, "days");
    assert_eq!(days.len(), 30, "{v}");
    let today = days.last().unwrap();
    assert_eq!(
        (ju64(today, "succeeded"), ju64(today, "failed")),
        (1, 1),
        "{v}"
    );
    assert!(today["queue_wait_p50"].is_number(), "{v}");
    let targets = jarr(&v, "targets");
    assert_eq!(targets.len(), 1, "{v}");
    assert_eq!(ju64(&targets[0], "count"), 1, "{v}");
    assert_eq!(
        jstr(&jarr(&v, "slowest_packages")[0], "name"),
        "ko-fine",
        "{v}"
    );
    let hours = jarr(&v, "utilisation");
    assert_eq!(ju64(hours.last().unwrap(), "capacity"), 1, "{v}");
    assert!(
        hours.iter().any(|h| h["busy"].as_f64().unwrap() > 0.0),
        "the worker was busy this hour: {v}"
    );
}
