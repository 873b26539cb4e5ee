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
