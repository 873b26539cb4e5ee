//! The frame of every page (header, navigation, footer) and the small
//! formatters the pages share: times, durations, sizes, states. Everything
//! is written with maud, which escapes every value it is given.

use maud::{html, Markup, DOCTYPE};

use super::{assets, Viewer};

/// What the frame of a page needs besides its body.
pub(super) struct Frame<'a> {
    pub title: &'a str,
    /// `data-page` on `<body>`: what the script does there.
    pub page: &'static str,
    /// Which navigation entry is current.
    pub nav: &'static str,
    pub viewer: Option<&'a Viewer>,
    /// The newest event id when the page was made (`data-last-event`): the
    /// script resumes from it, so nothing committed since is missed.
    pub last_event: u64,
    /// `data-build` / `data-job` for the script.
    pub build: Option<i64>,
    pub job: Option<i64>,
}

const NAV: &[(&str, &str, &str)] = &[
    ("dashboard", "/", "Dashboard"),
    ("builds", "/builds", "Builds"),
    ("projects", "/projects", "Projects"),
    ("workers", "/workers", "Workers"),
    ("targets", "/targets", "Targets"),
    ("stats", "/stats", "Stats"),
];

/// A whole page.
pub(super) fn page(f: Frame<'_>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                @if let Some(c) = f.viewer.and_then(|v| v.csrf.as_deref()) {
                    meta name="csrf-token" content=(c);
                }
                title { (f.title) " · Kiln" }
                link rel="stylesheet" href=(assets::url("kiln.css"));
                link rel="icon" href=(assets::url("favicon.svg")) type="image/svg+xml";
                script src=(assets::url("kiln.js")) defer {}
            }
            body data-page=(f.page) data-last-event=(f.last_event)
                data-build=[f.build] data-job=[f.job] {
                header {
                    nav {
                        a.brand href="/" { "Kiln" }
                        @for (key, href, label) in NAV {
                            @if *key == f.nav {
                                a.current href=(href) aria-current="page" { (label) }
                            } @else {
                                a href=(href) { (label) }
                            }
                        }
                        @if f.viewer.is_some_and(|v| v.may_submit()) {
                            @if f.nav == "submit" {
                                a.current href="/submit" aria-current="page" { "Submit" }
                            } @else {
                                a href="/submit" { "Submit" }
                            }
                        }
                        span.who {
                            @match f.viewer {
                                Some(v) => {
                                    span { (v.name) " (" (v.role) ")" }
                                    form.inline method="post" action="/logout" {
                                        input type="hidden" name="csrf" value=(v.csrf());
                                        button type="submit" { "Sign out" }
                                    }
                                }
                                None => { a href="/signin" { "Sign in" } }
                            }
                            span #live.live title="live updates" hidden { "●" }
                        }
                    }
                }
                main { (body) }
                footer {
                    "Kiln " (env!("CARGO_PKG_VERSION"))
                    " · " a href="/api/v1/builds" { "JSON API" }
                    " · times in UTC"
                }
            }
        }
    }
}

/// A page that says what went wrong (its status is set by the caller).
pub(super) fn error_page(title: &str, message: &str) -> Markup {
    page(
        Frame {
            title,
            page: "error",
            nav: "",
            viewer: None,
            last_event: 0,
            build: None,
            job: None,
        },
        html! {
            h1 { (title) }
            p { (message) }
            p { a href="/" { "Back to the dashboard" } }
        },
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let (y, m, d, ..) = kiln_core::time::utc(days * 86_400);
    (y, m as u32, d as u32)
}

/// (year, month, day) → days since 1970-01-01 (`days_from_civil`).
pub(super) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix ms as `2026-11-29 07:43:22` (UTC).
pub(super) fn datetime(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Unix ms as a `<time>` element, in UTC (every page says so in its
/// footer: one clock for everyone reading a link pasted in chat).
pub(super) fn time(ms: i64) -> Markup {
    let text = datetime(ms);
    let iso = format!("{}Z", text.replace(' ', "T"));
    html! { time datetime=(iso) { (text) } }
}

/// An optional time, or a dash.
pub(super) fn time_opt(ms: Option<i64>) -> Markup {
    match ms {
        Some(ms) => time(ms),
        None => html! { "–" },
    }
}

/// A duration in ms as `1h 2m`, `3m 4s`, `5s`.
pub(super) fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s / 60 % 60),
        _ => format!("{}d {}h", s / 86_400, s / 3600 % 24),
    }
}

/// How long ago, from `now`.
pub(super) fn ago(ms: i64, now: i64) -> String {
    format!("{} ago", duration(now - ms))
}

/// Bytes as `1.2 MiB`.
pub(super) fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A build's `[epoch:]version-release` after its package name (a build
/// from git has no version until its SRPM is made).
pub(super) fn nevr(package: &str, evr: &str) -> String {
    match (package.is_empty(), evr.is_empty()) {
        (true, _) => "(SRPM not made yet)".to_string(),
        (false, true) => package.to_string(),
        (false, false) => format!("{package}-{evr}"),
    }
}

/// A job's progress against the last successful build of its package on
/// its arch: `<progress>` with the percentage and the time left, or
/// "unknown" the first time. `data-started`/`data-expected` let the
/// script move it on between events.
pub(super) fn progress(started: Option<i64>, expected: Option<i64>, now: i64) -> Markup {
    let Some(started) = started else {
        return html! { span.muted { "not started" } };
    };
    let elapsed = (now - started).max(0);
    match expected.filter(|e| *e > 0) {
        None => html! {
            span.progress data-started=(started) {
                span.elapsed { (duration(elapsed)) } " · ETA unknown"
            }
        },
        Some(exp) => {
            let pct = (elapsed * 100 / exp).min(99);
            let left = exp - elapsed;
            html! {
                span.progress data-started=(started) data-expected=(exp) {
                    progress value=(elapsed.min(exp)) max=(exp) { (pct) "%" }
                    " " span.pct { (pct) "%" } " · "
                    span.eta {
                        @if left > 0 { "ETA " (duration(left)) } @else { "longer than last time (" (duration(exp)) ")" }
                    }
                }
            }
        }
    }
}

/// What is encoded in a URL's path segment or query value.
const URL_PART: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'/')
    .add(b';')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// A URL's path segment or query value, percent-encoded.
pub(super) fn q(v: &str) -> String {
    percent_encoding::utf8_percent_encode(v, URL_PART).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_durations() {
        assert_eq!(datetime(0), "1970-01-01 00:00:00");
        assert_eq!(datetime(1_798_531_402_000), "2026-12-29 08:03:22");
        assert_eq!(datetime(951_782_400_000), "2000-02-29 00:00:00");
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2026, 11, 29), (1969, 12, 31)] {
            assert_eq!(civil(days_from_civil(y, m, d)), (y, m, d));
        }
        assert_eq!(duration(59_999), "59s");
        assert_eq!(duration(61_000), "1m 1s");
        assert_eq!(duration(3_720_000), "1h 2m");
        assert_eq!(duration(-5), "0s");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
    }

    #[test]
    fn progress_is_unknown_the_first_time() {
        let p = progress(Some(0), None, 5_000).into_string();
        assert!(p.contains("ETA unknown"), "{p}");
        let p = progress(Some(0), Some(10_000), 5_000).into_string();
        assert!(p.contains("50%") && p.contains("ETA 5s"), "{p}");
        let p = progress(Some(0), Some(10_000), 50_000).into_string();
        assert!(
            p.contains("99%") && p.contains("longer than last time"),
            "{p}"
        );
    }
}
