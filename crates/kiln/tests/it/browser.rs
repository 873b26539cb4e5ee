//! The web UI in a real browser (issue 10): headless Chromium driven over
//! WebDriver (`common::Browser`). Pages follow builds live over the
//! websocket without a reload, the log viewer shows lines as they are
//! written, what a build prints stays text, signing in and out and the
//! roles decide what the pages offer (uploading an SRPM through `/submit`
//! builds it), and `/stats` draws its charts from real builds. That the
//! pages work without JavaScript is `web.rs`'s (plain HTTP).

use crate::common::*;
use serde_json::json;
use std::time::Duration;

/// Deadline for something the page shows after a build's event.
const UI: Duration = Duration::from_secs(30);

fn is_final(state: &str) -> bool {
    is_terminal_build_state(state)
}

#[test]
fn dashboard_and_build_page_follow_a_build_live_without_a_reload() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("a", "x86_64,noarch", "default", 1);
    let br = Browser::start();
    // Long enough that a slow browser on a loaded machine still opens the
    // build page before the build ends.
    let srpm = Pkg::noarch("br-live")
        .build_script("sleep 15")
        .build_srpm(&m.scratch);

    // The dashboard, open before the build is submitted.
    br.goto(&format!("{}/", m.api_url));
    let dashboard = br.tab();
    br.mark();
    let id = build_id(&m.submit(&srpm, &[]));

    // The build page, opened right away in a second tab.
    br.new_tab();
    br.goto(&format!("{}/builds/{id}", m.api_url));
    let build_tab = br.tab();
    let st = br.text("#build-state").expect("#build-state");
    assert!(
        !is_final(&st),
        "the build page was opened before the build ended: {st}"
    );
    br.mark();

    // The dashboard shows the new build, then its success.
    br.switch_to(&dashboard);
    let row = format!("#latest tr[data-build=\"{id}\"] .bstate");
    let first = br.wait("the new build on the dashboard", UI, || br.text(&row));
    assert!(
        !is_final(&first),
        "the dashboard showed the build before it ended: {first}"
    );
    br.wait_text(&row, UI + BUILD_TIMEOUT, |t| t == "succeeded");
    br.wait("the build to leave `Running now`", UI, || {
        (br.count(&format!("#running tr[data-build=\"{id}\"]")) == 0).then_some(())
    });
    assert!(br.marked(), "the dashboard was not reloaded");

    // So does the build page, and its job row.
    br.switch_to(&build_tab);
    br.wait_text("#build-state", UI, |t| t == "succeeded");
    br.wait("the job row to say succeeded", UI, || {
        let v = br.exec(
            "return Array.from(document.querySelectorAll('tr.job[data-job]'))\
             .map(r => [r.dataset.arch, r.dataset.state, r.querySelector('.jstate').textContent]);",
            json!([]),
        );
        let rows = v.as_array().unwrap().clone();
        (rows.len() == 1 && rows[0] == json!(["noarch", "succeeded", "succeeded"])).then_some(rows)
    });
    assert!(br.marked(), "the build page was not reloaded");
    assert_eq!(jstr(&m.build(id), "state"), "succeeded");
}

#[test]
fn the_log_page_shows_lines_as_they_are_written() {
    const TICKS: u32 = 20;
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("a", "x86_64,noarch", "default", 1);
    let br = Browser::start();
    // 20 ticks, a second apart: the page must open before the last one,
    // which a browser on a loaded machine does with room to spare.
    let pkg = Pkg::noarch("br-log").build_script(&format!(
        "for i in $(seq 1 {TICKS}); do echo br-tick-$i; sleep 1; done"
    ));
    let id = build_id(&m.submit(&pkg.build_srpm(&m.scratch), &[]));
    let job = ju64(&m.wait_job_running(id), "id");

    br.goto(&format!("{}/jobs/{job}/log", m.api_url));
    br.mark();
    let ticks = |text: &str| {
        (1..=TICKS)
            .filter(|i| text.contains(&format!("br-tick-{i}\n")))
            .max()
    };
    let first = ticks(&br.text("#log").unwrap_or_default());
    assert!(
        first.is_none_or(|n| n < TICKS),
        "the page was opened before the build ended: {first:?}"
    );
    // A tick the page did not hold shows up before the build's end does.
    let end = pkg.end_marker();
    let (_, ended) = br.wait("a new line while the job runs", UI + BUILD_TIMEOUT, || {
        let t = br.text("#log")?;
        let n = ticks(&t)?;
        (Some(n) > first).then(|| (n, t.contains(&end)))
    });
    assert!(!ended, "a line came while the job ran, not only at its end");
    // The end: the last line, and the job's state, without a reload.
    br.wait_text("#log", UI + BUILD_TIMEOUT, |t| {
        t.contains(&format!("br-tick-{TICKS}\n")) && t.contains(&end)
    });
    br.wait_text("#job-state", UI, |t| t == "succeeded");
    assert!(br.marked(), "the log page was not reloaded");
    m.wait_build_succeeded(id);
}

#[test]
fn what_a_build_prints_stays_text_and_opens_no_dialog() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("a", "x86_64,noarch", "default", 1);
    let br = Browser::start();
    let pkg = Pkg::noarch("br-xss").build_script(
        "sleep 2; echo '<script>alert(1)</script>'; echo '<img src=x onerror=alert(2)>'; sleep 1",
    );
    let id = build_id(&m.submit(&pkg.build_srpm(&m.scratch), &[]));
    let job = ju64(&m.wait_job_running(id), "id");
    let url = format!("{}/jobs/{job}/log", m.api_url);

    let check = |how: &str| {
        let t = br.text("#log").unwrap();
        assert!(t.contains("<script>alert(1)</script>"), "{how}: {t}");
        assert!(t.contains("<img src=x onerror=alert(2)>"), "{how}: {t}");
        assert_eq!(
            br.count("#log script, #log img"),
            0,
            "{how}: no element made"
        );
        let e = br
            .alert_text()
            .expect_err(&format!("{how}: a dialog opened"));
        assert_eq!(e.error, "no such alert", "{how}: {e}");
    };
    // Live: the lines come over the websocket while the job runs.
    br.goto(&url);
    br.wait_text("#log", UI + BUILD_TIMEOUT, |t| {
        t.contains("onerror=alert(2)")
    });
    // An image that fails to load fires its handler soon: give it time.
    std::thread::sleep(Duration::from_millis(500));
    check("live");
    m.wait_build_succeeded(id);
    // As the page holds it once the job ended.
    br.goto(&url);
    std::thread::sleep(Duration::from_millis(500));
    check("loaded");
    // And the build page (the package's name and the job list).
    br.goto(&format!("{}/builds/{id}", m.api_url));
    let e = br.alert_text().expect_err("no dialog on the build page");
    assert_eq!(e.error, "no such alert");
}

#[test]
fn sign_in_upload_and_build_sign_out_and_what_a_reader_sees() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("a", "x86_64,noarch", "default", 1);
    let br = Browser::start();
    let sam = m
        .cli(&["token", "create", "--name", "sam", "--role", "submitter"])
        .assert_ok()
        .stdout
        .trim()
        .to_string();
    let rita = m
        .cli(&["token", "create", "--name", "rita", "--role", "reader"])
        .assert_ok()
        .stdout
        .trim()
        .to_string();
    let base = &m.api_url;
    let sign_in = |token: &str| {
        br.goto(&format!("{base}/signin"));
        br.type_into("form.signin input[name=token]", token);
        br.click("form.signin button[type=submit]");
        br.wait("the session to open", UI, || {
            (br.count("form[action=\"/logout\"]") == 1).then_some(())
        });
    };

    // Signed out: no form on /submit.
    br.goto(&format!("{base}/submit"));
    assert_eq!(br.count("#submit-form"), 0);

    // The submitter uploads an SRPM through the form; it builds.
    sign_in(&sam);
    assert!(
        br.body_text().contains("sam (submitter)"),
        "{}",
        br.body_text()
    );
    br.goto(&format!("{base}/submit"));
    assert_eq!(br.count("#submit-form"), 1, "{}", br.body_text());
    let srpm = Pkg::noarch("br-upload")
        .build_script("sleep 10")
        .build_srpm(&m.scratch);
    br.type_into("#srpm", srpm.to_str().unwrap());
    br.click("#submit-go");
    let id: u64 = br.wait("the page of the new build", UI, || {
        let u = br.url();
        let rest = u.strip_prefix(&format!("{base}/builds/"))?;
        rest.parse().ok()
    });
    // Its own active build: the submitter may cancel it.
    let st = br.text("#build-state").unwrap();
    assert!(!is_final(&st), "{st}");
    assert_eq!(
        br.count(&format!("form[action=\"/builds/{id}/cancel\"] button")),
        1,
        "{}",
        br.body_text()
    );
    br.wait_text("#build-state", UI + BUILD_TIMEOUT, |t| t == "succeeded");
    let b = m.build(id);
    assert_eq!(jstr(&b, "state"), "succeeded", "{b}");
    assert_eq!(
        jstr(&b, "srpm_name"),
        srpm.file_name().unwrap().to_str().unwrap()
    );

    // A POST without the CSRF token is refused, with the session cookie.
    let builds = m.builds().len();
    let status = br.exec(
        "return fetch(arguments[0], { method: 'POST', credentials: 'same-origin', \
         headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, body: 'ci=1' }) \
         .then(r => r.status);",
        json!([format!("/builds/{id}/rebuild")]),
    );
    assert_eq!(status, json!(403));
    assert_eq!(m.builds().len(), builds, "no build was made");

    // Signing out ends the session.
    br.click("form[action=\"/logout\"] button[type=submit]");
    br.wait("the sign-in link", UI, || {
        (br.count("header a[href=\"/signin\"]") == 1).then_some(())
    });
    br.goto(&format!("{base}/submit"));
    assert_eq!(br.count("#submit-form"), 0, "{}", br.body_text());

    // A reader: no form, no cancel button on an active build.
    let running = Pkg::noarch("br-reader")
        .build_script("sleep 120")
        .build_srpm(&m.scratch);
    let other = build_id(&m.submit(&running, &[]));
    sign_in(&rita);
    br.goto(&format!("{base}/submit"));
    assert_eq!(br.count("#submit-form"), 0, "{}", br.body_text());
    assert!(
        br.body_text().contains("may not submit"),
        "{}",
        br.body_text()
    );
    br.goto(&format!("{base}/builds/{other}"));
    let st = br.text("#build-state").unwrap();
    assert!(!is_final(&st), "the build is still active: {st}");
    assert_eq!(
        br.count("form[action$=\"/cancel\"]"),
        0,
        "{}",
        br.body_text()
    );
    assert_eq!(br.count("form[action$=\"/rebuild\"]"), 0);
    m.cancel(other).assert_ok();
}

#[test]
fn the_stats_page_draws_charts_and_tables_of_real_builds() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("a", "x86_64,noarch", "default", 1);
    let ok = Pkg::noarch("br-stats-ok").build_srpm(&m.scratch);
    let bad = Pkg::noarch("br-stats-bad")
        .build_script("exit 1")
        .build_srpm(&m.scratch);
    let a = build_id(&m.submit(&ok, &[]));
    let b = build_id(&m.submit(&bad, &[]));
    let br = Browser::start();
    assert_eq!(
        jstr(&m.wait_build_done(a, BUILD_TIMEOUT), "state"),
        "succeeded"
    );
    assert_eq!(
        jstr(&m.wait_build_done(b, BUILD_TIMEOUT), "state"),
        "failed"
    );

    br.goto(&format!("{}/stats", m.api_url));
    let charts = br.exec(
        "return Array.from(document.querySelectorAll('svg.chart')).map(s => { \
           const r = s.getBoundingClientRect(); \
           return { w: r.width, h: r.height, marks: s.querySelectorAll('rect, path, polyline, line, circle').length }; });",
        json!([]),
    );
    let charts = charts.as_array().unwrap();
    assert!(!charts.is_empty(), "{}", br.body_text());
    for c in charts {
        assert!(
            c["w"].as_f64().unwrap() > 50.0 && c["h"].as_f64().unwrap() > 20.0,
            "a chart is drawn at a visible size: {c}"
        );
    }
    assert!(
        charts.iter().any(|c| c["marks"].as_u64().unwrap() > 0),
        "the charts draw the builds: {charts:?}"
    );
    assert!(br.count("table.stats") > 0, "{}", br.body_text());
    let tables = br.exec(
        "return Array.from(document.querySelectorAll('table.stats')).map(t => t.innerText).join('\\n');",
        json!([]),
    );
    let tables = tables.as_str().unwrap();
    assert!(
        tables.contains("br-stats-ok"),
        "the tables name the packages built: {tables}"
    );
    assert!(tables.contains("default"), "and the target: {tables}");
}
