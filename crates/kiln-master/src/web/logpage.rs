//! `/jobs/ID/log`: a job's build log. Without JavaScript the page holds the
//! log's last [`TAIL`] bytes as escaped text, each line with its anchor
//! (`#L123`, numbered from the log's start), and links to the whole log.
//! The script takes over from there: it follows the log live over the
//! websocket from the byte the page ends at, keeps the lines in an array
//! and puts only those in view in the DOM (a 50 MB log stays smooth),
//! follows the end unless the reader scrolled up, searches, and loads the
//! earlier lines when asked (or when an anchor points at one).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use maud::{html, Markup};

use super::layout::{self, Frame};
use super::{html_response, signed_in, WebError, WebResult};
use crate::Core;

/// Bytes of the log's end the page itself holds, and lines at most (a
/// page stays under 150 KB even uncompressed).
pub const TAIL: usize = 48 << 10;
pub const TAIL_LINES: usize = 800;

/// The part of `log` the page shows: from a line start within the last
/// `tail` bytes to the end; with its byte offset and the number of its
/// first line.
pub(super) fn tail_of(log: &[u8], tail: usize, max_lines: usize) -> (usize, u64) {
    // The start of the `max_lines`th line from the end (a last line
    // without its newline counts too).
    let body = log.strip_suffix(b"\n").unwrap_or(log);
    let by_lines = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, &b)| b == b'\n')
        .nth(max_lines.saturating_sub(1))
        .map(|(i, _)| i + 1)
        .unwrap_or(0);
    if log.len() <= tail && by_lines == 0 {
        return (0, 1);
    }
    let mut start = log.len().saturating_sub(tail);
    // Start at a line's start (unless the line is longer than the tail).
    if start > 0 {
        if let Some(nl) = log[start..].iter().position(|&b| b == b'\n') {
            if start + nl + 1 < log.len() {
                start += nl + 1;
            }
        }
    }
    let start = start.max(by_lines);
    let lines = log[..start].iter().filter(|&&b| b == b'\n').count() as u64;
    (start, lines + 1)
}

/// The lines of `text`, numbered from `first`, with their anchors.
pub(super) fn lines(text: &str, first: u64) -> Markup {
    if text.is_empty() {
        return html! {};
    }
    let text = text.strip_suffix('\n').unwrap_or(text);
    html! {
        @for (i, line) in text.split('\n').enumerate() {
            @let n = first + i as u64;
            span.l id={ "L" (n) } { a href={ "#L" (n) } { (n) } (line) "\n" }
        }
    }
}

/// `GET /jobs/ID/log`.
pub(super) async fn log(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> WebResult {
    let viewer = signed_in(&core, &headers).await;
    let last = core.web.last_id();
    let (job, build) = core
        .store
        .read(move |c| {
            let Some(j) = kiln_store::get_job(c, id)? else {
                return Ok(None);
            };
            let b = kiln_store::get_build(c, j.build)?;
            Ok(b.map(|b| (j, b)))
        })
        .await?
        .ok_or_else(|| WebError::NotFound(format!("no job {id}")))?;
    let live = core.sched().job_current(id);
    let (state, worker, attempt) = match &live {
        Some((_, attempt, worker, _, st)) => (*st, worker.clone(), *attempt),
        None => (job.state, job.worker.clone(), job.attempt),
    };
    let active = !state.is_final();
    let text = core
        .logs
        .read(job.build, id)
        .await
        .map_err(|e| WebError::Internal(format!("reading the log of job {id}: {e}")))?;
    let (start, first) = tail_of(&text, TAIL, TAIL_LINES);
    let shown = String::from_utf8_lossy(&text[start..]);
    let title = format!(
        "Log of job {id} ({} {})",
        layout::nevr(&build.package, &build.evr),
        job.arch
    );
    let body = html! {
        h1 { "Log of job " (id) }
        p.logmeta {
            a href={ "/builds/" (build.id) } { "Build " (build.id) ": " (layout::nevr(&build.package, &build.evr)) }
            " · " span.arch { (job.arch) } " · "
            span #job-state class={ "st jstate st-" (state) } data-job=(id) { (state) }
            @if let Some(w) = &worker { " on " (w) }
            " · attempt " (attempt)
            " · " span #log-size { (layout::size(text.len() as u64)) }
            " · " a href={ "/api/v1/jobs/" (id) "/log" } download={ "job-" (id) ".log" } { "download the whole log" }
        }
        div.logtools #logtools hidden {
            input #log-search type="search" placeholder="Search the log" aria-label="Search the log";
            button #log-prev type="button" { "↑" }
            button #log-next type="button" { "↓" }
            span #log-found {}
            button #log-all type="button" hidden[start == 0] { "Load the earlier lines" }
            label { input #log-follow type="checkbox" checked; " follow" }
        }
        @if start > 0 {
            p.muted #log-cut { "The first " (first - 1) " lines (" (layout::size(start as u64)) ") are not shown: "
                a href={ "/api/v1/jobs/" (id) "/log" } { "the whole log" } "." }
        }
        @if text.is_empty() {
            p.empty #log-empty { @if active { "Nothing yet: the log appears here as the build writes it." } @else { "This job has no log." } }
        }
        pre.log #log data-job=(id) data-start=(start) data-next=(text.len()) data-first-line=(first)
            data-active=(if active { "1" } else { "0" })
            data-open-line=(if shown.ends_with('\n') || shown.is_empty() { "0" } else { "1" }) {
            (lines(&shown, first))
        }
    };
    Ok(html_response(
        &headers,
        layout::page(
            Frame {
                title: &title,
                page: "log",
                nav: "builds",
                viewer: viewer.as_ref(),
                last_event: last,
                build: Some(build.id),
                job: Some(id),
            },
            body,
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_starts_at_a_line_and_knows_its_number() {
        let log = b"one\ntwo\nthree\nfour\n";
        assert_eq!(tail_of(log, 100, 100), (0, 1));
        let (start, first) = tail_of(log, 8, 100);
        assert_eq!((&log[start..], first), (&b"four\n"[..], 4));
        // At most so many lines.
        let (start, first) = tail_of(log, 100, 2);
        assert_eq!((&log[start..], first), (&b"three\nfour\n"[..], 3));
        let (start, first) = tail_of(b"one\ntwo\nthr", 100, 2);
        assert_eq!(first, 2, "{start}");
        assert_eq!(tail_of(log, 100, 4), (0, 1));
        // One line longer than the tail: cut inside it.
        let long = b"aaaaaaaaaaaaaaaa";
        assert_eq!(tail_of(long, 4, 100), (12, 1));
    }

    #[test]
    fn lines_are_escaped_and_anchored() {
        let m = lines("<script>alert(1)</script>\nok\n", 7).into_string();
        assert!(m.contains(r##"<span class="l" id="L7"><a href="#L7">7</a>&lt;script&gt;alert(1)&lt;/script&gt;"##), "{m}");
        assert!(m.contains(r#"id="L8""#) && !m.contains(r#"id="L9""#), "{m}");
    }
}
