//! The web UI (issue 10): every page answers HTML that works without
//! JavaScript (the build page shows the build's state and each job's arch
//! and state), what comes from a build is escaped, pages stay under 150 KB
//! transferred with their script and stylesheet, artifacts download, and
//! the websocket pushes committed events and resumes without a gap or a
//! duplicate. The websocket client is written here over a TcpStream (the
//! handshake and frames of RFC 6455), so the test needs no new crate.

use crate::common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// Bytes `curl --compressed` receives for `url` (what a browser transfers).
fn transferred(url: &str) -> u64 {
    let mut cmd = Command::new(require_tool("curl"));
    cmd.args([
        "-sS",
        "--compressed",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        url,
    ]);
    let out = run_timeout(cmd, Duration::from_secs(40), &format!("curl {url}")).assert_ok();
    let (code, size) = out.stdout.trim().split_once(' ').unwrap();
    assert_eq!(code, "200", "GET {url}");
    size.parse().unwrap()
}

/// GET a page: 200, HTML.
fn page(m: &Master, path: &str) -> String {
    let r = http_get(&format!("{}{path}", m.api_url), &[], &m.scratch);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/html"), "GET {path}: content-type {ct}");
    let t = r.text();
    assert!(t.starts_with("<!DOCTYPE html>"), "GET {path}: {t}");
    t
}

/// The `<tr class="job" …>` opening tag of job `id` in a page.
fn job_row(html: &str, id: u64) -> String {
    let at = html
        .find(&format!("id=\"job-{id}\""))
        .unwrap_or_else(|| panic!("no row of job {id} in {html}"));
    let start = html[..at].rfind("<tr").unwrap();
    let end = at + html[at..].find('>').unwrap();
    html[start..=end].to_string()
}

#[test]
fn pages_work_without_javascript_escape_what_builds_print_and_stay_small() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 1);
    let pkg = Pkg::noarch("web-xss").build_script("echo '<script>alert(1)</script>' \"<b>&amp;\"");
    let b = m.submit_wait(&pkg.build_srpm(&m.scratch), &[]);
    let id = build_id(&b);
    let job = only_job(&b);
    let job_id = ju64(&job, "id");

    for path in [
        "/",
        "/builds",
        "/workers",
        "/targets",
        "/targets/default",
        "/stats",
        "/submit",
    ] {
        page(&m, path);
    }

    // The build page, as curl (no script) sees it.
    let html = page(&m, &format!("/builds/{id}"));
    assert!(
        html.contains(&format!(
            r#"<span id="build-state" class="st bstate st-succeeded" data-build="{id}">succeeded</span>"#
        )),
        "{html}"
    );
    let row = job_row(&html, job_id);
    assert!(
        row.contains(r#"class="job""#)
            && row.contains(r#"data-arch="noarch""#)
            && row.contains(r#"data-state="succeeded""#),
        "{row}"
    );
    assert!(html.contains("web-xss-1.0-1"), "NEVR: {html}");
    // Every artifact with its size, sha256 and a download link that gives
    // its bytes.
    for a in jarr(&b, "artifacts") {
        let (name, sha) = (jstr(a, "name"), jstr(a, "sha256"));
        let link = format!("/builds/{id}/files/noarch/{name}");
        assert!(html.contains(&link), "no link {link} in {html}");
        assert!(html.contains(&sha), "no sha256 of {name}");
        let got = http_get(&format!("{}{link}", m.api_url), &[], &m.scratch);
        assert_eq!(got.status, 200, "GET {link}");
        assert_eq!(sha256_hex(&got.body), sha, "GET {link}");
        assert_eq!(
            got.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        let ct = got.header("content-type").unwrap_or_default();
        assert!(!ct.contains("html"), "{name} served as {ct}");
    }
    // What the build does not list is not served, whatever the path says.
    for bad in [
        format!("/builds/{id}/files/noarch/nothing.rpm"),
        format!("/builds/{id}/files/noarch/..%2F..%2Fkiln.db"),
        format!("/builds/{id}/files/..%2F..%2F/kiln.db"),
        format!("/builds/{}/files/noarch/web-xss-1.0-1.noarch.rpm", id + 1),
    ] {
        let r = http_get(&format!("{}{bad}", m.api_url), &[], &m.scratch);
        assert!(
            r.status == 404 || r.status == 400,
            "GET {bad}: {}",
            r.status
        );
    }

    // The log page: the line the build printed is text, not markup.
    let log = page(&m, &format!("/jobs/{job_id}/log"));
    assert!(
        log.contains("&lt;script&gt;alert(1)&lt;/script&gt; &lt;b&gt;&amp;amp;"),
        "{log}"
    );
    assert!(!log.contains("<script>alert(1)"), "{log}");
    assert!(log.contains(&pkg.end_marker()), "{log}");
    assert!(log.contains(r#"id="L1""#), "line anchors: {log}");
    assert!(
        log.contains(&format!("/api/v1/jobs/{job_id}/log")),
        "the whole log: {log}"
    );
    // No inline script or style anywhere (the CSP allows neither).
    for p in [html.as_str(), log.as_str()] {
        assert!(!p.contains("<script>") && !p.contains(" style=") && !p.contains(" onclick="));
    }

    // The dashboard and the list show the build; filters and keyset pages.
    let dash = page(&m, "/");
    assert!(dash.contains(&format!(r#"data-build="{id}""#)), "{dash}");
    assert!(page(&m, "/builds?state=succeeded").contains(&format!("/builds/{id}\"")));
    assert!(!page(&m, "/builds?state=failed").contains(&format!("/builds/{id}\"")));
    assert!(page(&m, "/builds?package=web-x*&source=upload").contains(&format!("/builds/{id}\"")));
    assert!(!page(&m, &format!("/builds?before={id}")).contains(&format!("/builds/{id}\"")));
    let r = http_get(
        &format!("{}/builds?package=%3Cb%3E", m.api_url),
        &[],
        &m.scratch,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("&lt;b&gt;") && !r.text().contains("<b>"),
        "{}",
        r.text()
    );
    assert!(page(&m, "/workers").contains("w1"));
    assert!(page(&m, "/targets/default").contains("[kiln-default]"));
    // The target's last publications, with when and how long after the
    // build's end.
    wait_published(&m, id, Duration::from_secs(60));
    let t = page(&m, "/targets/default");
    let table = &t[t
        .find("table class=\"publications\"")
        .expect("a publications table")..];
    let row = &table[table
        .find(&format!("href=\"/builds/{id}\""))
        .expect("the build's row")..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert_eq!(
        row.matches("<time").count(),
        2,
        "built and published times: {row}"
    );
    assert!(
        row.contains("s</td>") && !row.contains("not recorded"),
        "a latency: {row}"
    );
    for missing in [
        "/builds/999999",
        "/jobs/999999/log",
        "/targets/nope",
        "/static/nope.js",
    ] {
        let r = http_get(&format!("{}{missing}", m.api_url), &[], &m.scratch);
        assert_eq!(r.status, 404, "GET {missing}");
    }

    // Static files: an ETag, and a revalidation that sends nothing.
    let js = http_get(&format!("{}/static/kiln.js", m.api_url), &[], &m.scratch);
    assert_eq!(js.status, 200);
    assert!(js
        .header("content-type")
        .unwrap_or_default()
        .contains("javascript"));
    let etag = js.header("etag").expect("an ETag");
    let again = http_get(
        &format!("{}/static/kiln.js", m.api_url),
        &[&format!("If-None-Match: {etag}")],
        &m.scratch,
    );
    assert_eq!(again.status, 304);

    // Page weight: each page with its script and stylesheet, as a browser
    // transfers them.
    let assets = transferred(&format!("{}/static/kiln.js", m.api_url))
        + transferred(&format!("{}/static/kiln.css", m.api_url));
    let mut weights = Vec::new();
    for path in [
        "/".to_string(),
        "/builds".to_string(),
        format!("/builds/{id}"),
        format!("/jobs/{job_id}/log"),
        "/workers".to_string(),
        "/targets/default".to_string(),
        "/stats".to_string(),
        "/submit".to_string(),
    ] {
        let w = transferred(&format!("{}{path}", m.api_url)) + assets;
        weights.push(format!("{path}: {w} B"));
        assert!(w <= 150 * 1024, "{path} weighs {w} bytes with its assets");
    }
    eprintln!("page weights (with script and stylesheet {assets} B): {weights:?}");
}

// ---------------------------------------------------------------- websocket

/// A websocket client: the RFC 6455 handshake and frames, by hand.
struct Ws {
    s: TcpStream,
}

impl Ws {
    fn connect(m: &Master) -> Ws {
        let mut s = TcpStream::connect(("127.0.0.1", m.api_port)).unwrap();
        // The example key of RFC 6455 §1.3, and its answer.
        write!(
            s,
            "GET /api/v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            m.api_port
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        Ws { s }
    }

    fn send(&mut self, text: &str) {
        let p = text.as_bytes();
        let mut f = vec![0x81u8];
        if p.len() < 126 {
            f.push(0x80 | p.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&(p.len() as u16).to_be_bytes());
        }
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        f.extend_from_slice(&mask);
        f.extend(p.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.s.write_all(&f).unwrap();
    }

    /// The next text message (pings answered), or None when the server
    /// closes or nothing comes within `within`.
    fn recv(&mut self, within: Duration) -> Option<Value> {
        self.s.set_read_timeout(Some(within)).unwrap();
        let mut msg = Vec::new();
        loop {
            let mut h = [0u8; 2];
            if self.s.read_exact(&mut h).is_err() {
                return None;
            }
            let mut len = u64::from(h[1] & 0x7f);
            if len == 126 {
                let mut b = [0u8; 2];
                self.s.read_exact(&mut b).unwrap();
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                self.s.read_exact(&mut b).unwrap();
                len = u64::from_be_bytes(b);
            }
            assert_eq!(h[1] & 0x80, 0, "a server frame is not masked");
            let mut p = vec![0u8; len as usize];
            self.s.read_exact(&mut p).unwrap();
            match h[0] & 0x0f {
                0x8 => return None,
                0x9 => {
                    // Pong with the same payload.
                    let mut f = vec![0x8a, 0x80 | p.len() as u8, 0, 0, 0, 0];
                    f.extend_from_slice(&p);
                    self.s.write_all(&f).unwrap();
                }
                0xa => {}
                _ => {
                    msg.extend_from_slice(&p);
                    if h[0] & 0x80 != 0 {
                        return Some(serde_json::from_slice(&msg).unwrap());
                    }
                }
            }
        }
    }

    /// Messages until `stop` holds for one (included), within `within`.
    fn until(&mut self, within: Duration, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out; got {got:?}");
            let v = self
                .recv(left)
                .unwrap_or_else(|| panic!("the websocket closed; got {got:?}"));
            let done = stop(&v);
            got.push(v);
            if done {
                return got;
            }
        }
    }
}

fn event_id(v: &Value) -> Option<u64> {
    v.get("event").map(|e| ju64(e, "id"))
}

fn ends(v: &Value, build: u64) -> bool {
    v.get("event").is_some_and(|e| {
        jstr(e, "kind") == "build"
            && ju64(e, "build") == build
            && is_terminal_build_state(&jstr(e, "state"))
    })
}

/// A page that follows one build (a build page) gets that build's events,
/// all of them and no other; when it also subscribes to the dashboard it
/// gets every event from there on, none missed between the two.
#[test]
fn a_page_of_one_build_gets_its_events_and_no_other() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 2);
    let t = Duration::from_secs(120);
    let mut reference = Ws::connect(&m);
    reference.send(r#"{"subscribe": "dashboard"}"#);
    let _ = reference.recv(t).unwrap();
    let slow = Pkg::noarch("web-one-a").build_script("sleep 2");
    let b1 = build_id(&m.submit(&slow.build_srpm(&m.scratch), &[]));
    let mut one = Ws::connect(&m);
    one.send(&format!(r#"{{"subscribe": {{"build": {b1}}}}}"#));
    let from = ju64(&one.recv(t).unwrap()["ready"], "last");
    let b2 = build_id(&m.submit(&Pkg::noarch("web-one-b").build_srpm(&m.scratch), &[]));
    let got = one.until(t, |v| ends(v, b1));
    let seen = reference.until(t, |v| ends(v, b1));
    let mut seen_all = seen.clone();
    if !seen.iter().any(|v| ends(v, b2)) {
        seen_all.extend(reference.until(t, |v| ends(v, b2)));
    }
    let end = got.iter().filter_map(event_id).max().unwrap();
    let want: Vec<&Value> = seen_all
        .iter()
        .filter(|v| {
            v.get("event").is_some_and(|e| ju64(e, "build") == b1)
                && event_id(v).is_some_and(|i| i > from && i <= end)
        })
        .collect();
    let events: Vec<&Value> = got.iter().filter(|v| v.get("event").is_some()).collect();
    assert!(want.len() >= 2, "{want:?}");
    assert_eq!(events, want, "build {b1}'s events, all and only them");
    assert!(
        seen_all
            .iter()
            .any(|v| v.get("event").is_some_and(|e| ju64(e, "build") == b2)),
        "the other build had events: {seen_all:?}"
    );
    // Now the dashboard too: every event from its `ready` on.
    one.send(r#"{"subscribe": "dashboard"}"#);
    let ready = one.until(t, |v| v.get("ready").is_some());
    let switched = ju64(&ready.last().unwrap()["ready"], "last");
    let b3 = build_id(&m.submit(&Pkg::noarch("web-one-c").build_srpm(&m.scratch), &[]));
    let after = one.until(t, |v| ends(v, b3));
    let ids: Vec<u64> = after.iter().filter_map(event_id).collect();
    let mut reference_ids: Vec<u64> = reference
        .until(t, |v| ends(v, b3))
        .iter()
        .chain(seen_all.iter())
        .filter_map(event_id)
        .filter(|i| *i > switched && *i <= *ids.last().unwrap())
        .collect();
    reference_ids.sort();
    reference_ids.dedup();
    assert_eq!(ids, reference_ids, "every event after the switch, in order");
    assert!(
        after
            .iter()
            .any(|v| v.get("event").is_some_and(|e| ju64(e, "build") == b3)),
        "{after:?}"
    );
}

#[test]
fn the_websocket_pushes_events_resumes_without_gap_and_streams_logs() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 1);
    let t = Duration::from_secs(120);

    // A page made now resumes from the id it shows.
    let dash = page(&m, "/");
    let at = dash.find("data-last-event=\"").unwrap() + "data-last-event=\"".len();
    let page_id: u64 = dash[at..at + dash[at..].find('"').unwrap()]
        .parse()
        .unwrap();

    // `reference` stays connected throughout; `a` leaves after the first
    // build.
    let mut reference = Ws::connect(&m);
    reference.send(r#"{"subscribe": "dashboard"}"#);
    let ready = reference.recv(t).unwrap();
    let start = ju64(&ready["ready"], "last");
    let mut a = Ws::connect(&m);
    a.send(r#"{"subscribe": "dashboard"}"#);
    a.send(&format!(r#"{{"resume": {page_id}}}"#));
    let mut got_a = a.until(t, |v| v.get("ready").is_some());
    assert!(got_a
        .iter()
        .all(|v| v.get("event").is_none() || event_id(v) > Some(page_id)));

    let first = m.submit(&Pkg::noarch("web-ws-1").build_srpm(&m.scratch), &[]);
    let b1 = build_id(&first);
    got_a.extend(a.until(t, |v| ends(v, b1)));
    let last_a = got_a.iter().filter_map(event_id).max().unwrap();
    drop(a);

    // While `a` is away: a second build, start to end.
    let second = m.submit_wait(&Pkg::noarch("web-ws-2").build_srpm(&m.scratch), &[]);
    let b2 = build_id(&second);
    let seen = reference.until(t, |v| ends(v, b2));
    let ids: Vec<u64> = seen.iter().filter_map(event_id).collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "ids in order, none missing: {ids:?}"
    );
    assert_eq!(ids[0], start + 1, "{seen:?}");
    // The events were the builds' and their jobs' (running, succeeded).
    let kinds: Vec<(String, String)> = seen
        .iter()
        .filter_map(|v| v.get("event"))
        .filter(|e| ju64(e, "build") == b2)
        .map(|e| (jstr(e, "kind"), jstr(e, "state")))
        .collect();
    assert!(
        kinds.contains(&("job".into(), "running".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("build".into(), "succeeded".into())),
        "{kinds:?}"
    );

    // `a` comes back with its last id: exactly what it missed, in order.
    let mut back = Ws::connect(&m);
    back.send(r#"{"subscribe": "dashboard"}"#);
    let _ = back.recv(t).unwrap();
    back.send(&format!(r#"{{"resume": {last_a}}}"#));
    let replay = back.until(t, |v| v.get("ready").is_some());
    let upto = ju64(&replay.last().unwrap()["ready"], "last");
    // What the reference saw up to the same id (the publication of the
    // second build may have come after what it read so far).
    let mut all = seen.clone();
    if *ids.last().unwrap() < upto {
        all.extend(reference.until(t, |v| event_id(v) == Some(upto)));
    }
    let missed: Vec<&Value> = all
        .iter()
        .filter(|v| event_id(v).is_some_and(|i| i > last_a && i <= upto))
        .collect();
    let replayed: Vec<&Value> = replay.iter().filter(|v| v.get("event").is_some()).collect();
    assert!(missed.len() >= 3, "{missed:?}");
    assert_eq!(
        replayed, missed,
        "the resume gives exactly the missed events"
    );

    // A build's page follows only that build.
    let mut one = Ws::connect(&m);
    one.send(&format!(r#"{{"subscribe": {{"build": {b1}}}}}"#));
    let _ = one.recv(t).unwrap();
    one.send(&format!(r#"{{"resume": {start}}}"#));
    let only = one.until(t, |v| v.get("ready").is_some());
    assert!(only.len() > 2, "{only:?}");
    assert!(
        only.iter()
            .filter_map(|v| v.get("event"))
            .all(|e| ju64(e, "build") == b1),
        "{only:?}"
    );

    // Too old, or nonsense: reload, or an error.
    let mut old = Ws::connect(&m);
    old.send(r#"{"resume": 5}"#);
    assert_eq!(old.recv(t).unwrap(), serde_json::json!({"reload": true}));
    let mut bad = Ws::connect(&m);
    bad.send(r#"{"subscribe": "everything"}"#);
    assert!(bad.recv(t).unwrap().get("error").is_some());

    // A job's log, from the start and from an offset, ends with its length.
    let job = ju64(&only_job(&second), "id");
    let whole = http_get(
        &format!("{}/api/v1/jobs/{job}/log", m.api_url),
        &[],
        &m.scratch,
    )
    .text();
    assert!(
        whole.contains(&Pkg::noarch("web-ws-2").end_marker()),
        "{whole}"
    );
    let mut l = Ws::connect(&m);
    l.send(&format!(
        r#"{{"subscribe": {{"log": {job}, "offset": 0}}}}"#
    ));
    let msgs = l.until(t, |v| v.get("log_end").is_some());
    let text: String = msgs
        .iter()
        .filter_map(|v| v.get("log"))
        .map(|c| jstr(c, "text"))
        .collect();
    assert_eq!(text, whole);
    assert_eq!(
        ju64(&msgs.last().unwrap()["log_end"], "length"),
        whole.len() as u64
    );
    l.send(&format!(
        r#"{{"subscribe": {{"log": {job}, "offset": 10}}}}"#
    ));
    let msgs = l.until(t, |v| v.get("log_end").is_some());
    let first_chunk = msgs.iter().find_map(|v| v.get("log")).unwrap();
    assert_eq!(ju64(first_chunk, "offset"), 10);
    assert!(whole[10..].starts_with(&jstr(first_chunk, "text")));
}

#[test]
fn a_running_log_streams_live_over_the_websocket() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 1);
    let pkg = Pkg::noarch("web-live")
        .build_script("for i in 1 2 3 4 5 6; do echo web-live-line-$i; sleep 1; done");
    let b = m.submit(&pkg.build_srpm(&m.scratch), &[]);
    let id = build_id(&b);
    let job = ju64(&m.wait_job_running(id), "id");
    // The page of a running job says so, and its script follows from its end.
    let html = page(&m, &format!("/jobs/{job}/log"));
    assert!(html.contains(r#"data-active="1""#), "{html}");
    let at = html.find("data-next=\"").unwrap() + "data-next=\"".len();
    let next: u64 = html[at..at + html[at..].find('"').unwrap()]
        .parse()
        .unwrap();
    // What the page's script asks: the log from where the page ends.
    let mut from_page = Ws::connect(&m);
    from_page.send(&format!(
        r#"{{"subscribe": {{"log": {job}, "offset": {next}}}}}"#
    ));
    let mut l = Ws::connect(&m);
    l.send(&format!(
        r#"{{"subscribe": {{"log": {job}, "offset": 0}}}}"#
    ));
    let msgs = l.until(Duration::from_secs(120), |v| v.get("log_end").is_some());
    let chunks: Vec<&Value> = msgs.iter().filter_map(|v| v.get("log")).collect();
    assert!(
        chunks.len() > 1,
        "the log came in pieces as it was written: {msgs:?}"
    );
    let mut at = 0;
    for c in &chunks {
        assert_eq!(ju64(c, "offset"), at, "{msgs:?}");
        at = ju64(c, "next");
    }
    let text: String = chunks.iter().map(|c| jstr(c, "text")).collect();
    for i in 1..=6 {
        assert!(text.contains(&format!("web-live-line-{i}")), "{text}");
    }
    assert!(text.contains(&pkg.end_marker()));
    let rest = from_page.until(Duration::from_secs(60), |v| v.get("log_end").is_some());
    let tail: String = rest
        .iter()
        .filter_map(|v| v.get("log"))
        .map(|c| jstr(c, "text"))
        .collect();
    assert_eq!(
        rest.iter()
            .find_map(|v| v.get("log"))
            .map(|c| ju64(c, "offset")),
        Some(next),
        "{rest:?}"
    );
    assert_eq!(
        tail,
        text[next as usize..],
        "the page and its stream make the whole log"
    );
    m.wait_build_succeeded(id);
}
