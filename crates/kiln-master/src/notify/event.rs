//! Notices made from the store's rows (pure).

use kiln_core::state::BuildState;
use kiln_notify::Notice;
use kiln_store::{BuildRow, JobRow};
use rand::RngCore;

/// The event a build's new state announces (none for a re-queue or a
/// wait; a skip is queued by the database's trigger, whichever write
/// skips the build, and fanned out like a publication).
pub(crate) fn build_event(s: BuildState) -> Option<&'static str> {
    Some(match s {
        BuildState::Building => "build.started",
        BuildState::Succeeded => "build.succeeded",
        BuildState::Failed => "build.failed",
        BuildState::Canceled => "build.canceled",
        _ => return None,
    })
}

/// A new event id: 24 hex digits, random (the idempotency key).
pub(crate) fn new_id() -> String {
    let mut b = [0u8; 12];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Unix ms as RFC 3339, UTC, to the second.
pub(crate) fn rfc3339(ms: i64) -> String {
    let (y, mo, d, h, mi, s) = kiln_core::time::utc(ms.div_euclid(1000));
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

fn blank(event: &str) -> Notice {
    Notice {
        id: new_id(),
        event: event.to_string(),
        time: rfc3339(kiln_store::now_ms()),
        target: None,
        package: None,
        nevr: None,
        build: None,
        job: None,
        arch: None,
        state: None,
        submitter: None,
        source: None,
        worker: None,
        duration_secs: None,
        reason: None,
        repository: None,
        log_tail: Vec::new(),
        url: None,
        release: None,
        channel: None,
        version: None,
    }
}

fn secs(from: i64, to: Option<i64>) -> Option<u64> {
    to.map(|t| (t.saturating_sub(from).max(0) / 1000) as u64)
}

/// A build's event, from its row as it is in the write's transaction.
pub(crate) fn build_notice(event: &str, b: &BuildRow, base: &str) -> Notice {
    let mut n = blank(event);
    n.target = Some(b.target.clone());
    if !b.package.is_empty() {
        n.package = Some(b.package.clone());
        if !b.evr.is_empty() {
            n.nevr = Some(format!("{}-{}", b.package, b.evr));
        }
    }
    n.build = Some(b.id);
    // The event's state, as the MQTT topic says it (`build.started` is
    // `started`, though the build's stored state is `building`).
    n.state = Some(
        event
            .strip_prefix("build.")
            .unwrap_or(b.state.as_str())
            .to_string(),
    );
    n.submitter = b.submitter.clone();
    n.source = b.source.as_ref().and_then(|s| serde_json::to_value(s).ok());
    if b.state.is_final() {
        n.duration_secs = secs(b.created_at, b.finished_at);
    }
    n.reason = b.reason.clone();
    n.url = Some(format!("{base}/builds/{}", b.id));
    n
}

/// Whether a build event ends the build (its row's reason and finish
/// time are then the event's).
fn ends_build(event: &str) -> bool {
    matches!(
        event,
        "build.succeeded" | "build.failed" | "build.canceled" | "build.skipped" | "build.published"
    )
}

/// A build event's notice, made when it is delivered (or fanned out)
/// from the build's row as it is then, with the event's id and time (the
/// outbox row's). The state is the event's; a duration and a reason are
/// given only by an event that ends the build: the row of a build whose
/// `build.started` waited in the outbox may have ended since. A
/// publication names the target's repository.
pub(crate) fn later_build_notice(
    event: &str,
    event_id: &str,
    at_ms: i64,
    b: &BuildRow,
    base: &str,
) -> Notice {
    let mut n = build_notice(event, b, base);
    n.id = event_id.to_string();
    n.time = rfc3339(at_ms);
    if ends_build(event) {
        n.duration_secs = secs(b.created_at, b.finished_at);
    } else {
        n.duration_secs = None;
        n.reason = None;
    }
    if event == "build.published" {
        n.repository = Some(format!("{base}/repos/{}/", b.target));
    }
    n
}

/// `job.failed`: the job's facts over its build's (the log's last lines
/// are added when it is delivered: the log is stored after this commit).
pub(crate) fn job_notice(j: &JobRow, b: &BuildRow, base: &str) -> Notice {
    let mut n = build_notice("job.failed", b, base);
    n.job = Some(j.id);
    n.arch = Some(j.arch.clone());
    n.state = Some(j.state.as_str().to_string());
    n.worker = j.worker.clone();
    n.duration_secs = j.started_at.and_then(|s| secs(s, j.finished_at));
    n.reason = j.message.clone();
    n
}

/// A worker's event.
pub(crate) fn worker_notice(event: &str, worker: &str) -> Notice {
    let mut n = blank(event);
    n.worker = Some(worker.to_string());
    n.state = event.strip_prefix("worker.").map(str::to_string);
    n
}

/// A release's event: the image build's facts (target, image, version as
/// `nevr`, build page), the state (`promoted`, `rolled_back`), who did it
/// as the submitter, the release's URL as the repository, and the
/// release, channel and version in fields of their own.
pub(crate) fn release_notice(
    event: &str,
    r: &super::ReleaseFacts,
    b: Option<&BuildRow>,
    base: &str,
) -> Notice {
    let mut n = match b {
        Some(b) => build_notice(event, b, base),
        None => {
            let mut n = blank(event);
            n.build = Some(r.build);
            n
        }
    };
    n.state = event.strip_prefix("release.").map(str::to_string);
    n.submitter = r.who.clone();
    n.duration_secs = None;
    n.reason = Some(format!(
        "release {} channel {}: version {}",
        r.release, r.channel, r.version
    ));
    n.repository = Some(format!(
        "{base}/releases/{}/{}/{}/",
        r.release, r.channel, r.version
    ));
    n.release = Some(r.release.clone());
    n.channel = Some(r.channel.clone());
    n.version = Some(r.version.clone());
    n
}

/// The `test` event of `kiln notify test`.
pub(crate) fn test_notice(sink: &str, base: &str) -> Notice {
    let mut n = blank("test");
    n.state = Some("test".into());
    n.reason = Some(format!("a test of sink {sink}"));
    n.url = Some(format!("{base}/"));
    n
}

/// The last `n` lines of a log, each cut to a sane length, no control
/// characters but tabs.
pub(crate) fn tail(log: &[u8], n: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(log);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| {
            l.chars()
                .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
                .take(300)
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed_build() -> BuildRow {
        BuildRow {
            id: 7,
            target: "c9".into(),
            package: "hello".into(),
            evr: "1.0-1".into(),
            srpm_name: "hello-1.0-1.src.rpm".into(),
            srpm_sha256: "ab".into(),
            srpm_size: 1,
            channel: "default".into(),
            disttag: String::new(),
            priority: 0,
            scratch: false,
            ci: false,
            state: BuildState::Failed,
            reason: Some("x86_64 failed".into()),
            excluded_arches: Vec::new(),
            created_at: 1_700_000_000_000,
            finished_at: Some(1_700_000_042_000),
            publish: None,
            publish_error: None,
            batch: None,
            waits_for: Vec::new(),
            source: None,
            submitter: Some("alice".into()),
            image: None,
        }
    }

    /// A `build.started` delivered after its build failed says what was
    /// true when it was queued: started, at its own time, with its own
    /// id, no reason and no duration; the `build.failed` of the same row
    /// has both.
    #[test]
    fn a_notice_made_at_delivery_keeps_its_events_facts() {
        let b = failed_build();
        let n = later_build_notice("build.started", "e1", 1_700_000_001_000, &b, "http://k");
        assert_eq!(n.id, "e1");
        assert_eq!(n.time, "2023-11-14T22:13:21Z");
        assert_eq!(n.state.as_deref(), Some("started"));
        assert_eq!((n.reason, n.duration_secs), (None, None));
        assert_eq!(n.nevr.as_deref(), Some("hello-1.0-1"));
        assert_eq!(n.submitter.as_deref(), Some("alice"));
        assert_eq!(n.url.as_deref(), Some("http://k/builds/7"));
        let n = later_build_notice("build.failed", "e2", 1_700_000_042_000, &b, "http://k");
        assert_eq!(n.state.as_deref(), Some("failed"));
        assert_eq!(n.reason.as_deref(), Some("x86_64 failed"));
        assert_eq!(n.duration_secs, Some(42));
        assert_eq!(n.repository, None);
        let mut ok = failed_build();
        ok.state = BuildState::Succeeded;
        ok.reason = None;
        let n = later_build_notice("build.published", "e3", 1_700_000_050_000, &ok, "http://k");
        assert_eq!(n.state.as_deref(), Some("published"));
        assert_eq!(n.repository.as_deref(), Some("http://k/repos/c9/"));
    }

    #[test]
    fn times_and_tails() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(
            tail(b"a\nb\n\nc\x1b[31m\nd\n", 3),
            vec!["b".to_string(), "c [31m".into(), "d".into()]
        );
        assert_eq!(new_id().len(), 24);
    }
}
