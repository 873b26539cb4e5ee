//! Reading what the CLI prints with `--json`: fields, builds, jobs,
//! workers, artifacts and the publication state.

use serde_json::Value;

pub fn jstr(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("`{key}` is not a string in {v}"))
        .to_string()
}

pub fn ju64(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("`{key}` is not an unsigned number in {v}"))
}

pub fn ji64(v: &Value, key: &str) -> i64 {
    v.get(key)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("`{key}` is not a number in {v}"))
}

pub fn jarr<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v.get(key)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("`{key}` is not an array in {v}"))
}

// ---------------------------------------------------------------------------
// Builds and jobs
// ---------------------------------------------------------------------------

/// `build["id"]`.
pub fn build_id(b: &Value) -> u64 {
    ju64(b, "id")
}

/// The jobs of a build.
pub fn jobs_of(b: &Value) -> Vec<Value> {
    jarr(b, "jobs").clone()
}

/// The only job of a build (panics unless there is exactly one).
pub fn only_job(b: &Value) -> Value {
    let jobs = jobs_of(b);
    assert_eq!(jobs.len(), 1, "expected exactly one job in {b}");
    jobs[0].clone()
}

/// The worker name of a job, if any.
pub fn job_worker(j: &Value) -> Option<String> {
    j.get("worker").and_then(Value::as_str).map(str::to_string)
}

pub fn is_terminal_build_state(s: &str) -> bool {
    matches!(s, "succeeded" | "failed" | "canceled" | "skipped")
}

pub fn is_terminal_job_state(s: &str) -> bool {
    matches!(s, "succeeded" | "failed" | "canceled")
}

/// `running` of a `kiln workers --json` entry: a count, or a list of jobs.
pub fn running_count(w: &Value) -> u64 {
    match w.get("running") {
        Some(Value::Number(n)) => n.as_u64().expect("running is a count"),
        Some(Value::Array(a)) => a.len() as u64,
        other => panic!("`running` is neither a count nor a list: {other:?} in {w}"),
    }
}

/// The largest number of intervals `[start, end)` that overlap at any instant.
pub fn max_overlap(intervals: &[(i64, i64)]) -> usize {
    let mut ev: Vec<(i64, i32)> = Vec::new();
    for &(s, e) in intervals {
        assert!(e >= s, "interval ends before it starts: {s}..{e}");
        ev.push((s, 1));
        ev.push((e, -1));
    }
    // At equal instants, an end comes before a start.
    ev.sort();
    let (mut cur, mut max) = (0i32, 0i32);
    for (_, d) in ev {
        cur += d;
        max = max.max(cur);
    }
    max as usize
}

// ---------------------------------------------------------------------------
// Artifacts and publication
// ---------------------------------------------------------------------------

/// The artifacts of a build with the given kind.
pub fn artifacts_of_kind(b: &Value, kind: &str) -> Vec<Value> {
    jarr(b, "artifacts")
        .iter()
        .filter(|a| a.get("kind").and_then(Value::as_str) == Some(kind))
        .cloned()
        .collect()
}

/// The only artifact of kind `kind` of a build.
pub fn only_artifact(b: &Value, kind: &str) -> Value {
    let v = artifacts_of_kind(b, kind);
    assert_eq!(v.len(), 1, "expected exactly one `{kind}` artifact in {b}");
    v[0].clone()
}

/// The `publish` field of a build: None for JSON null.
pub fn publish_state(b: &Value) -> Option<String> {
    match b.get("publish") {
        None => panic!("the build JSON has no `publish` key: {b}"),
        Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => panic!("`publish` is neither null nor a string ({other}) in {b}"),
    }
}

/// The `publish_error` field of a build (None for null or absent).
pub fn publish_error(b: &Value) -> Option<String> {
    b.get("publish_error")
        .and_then(Value::as_str)
        .map(str::to_string)
}
