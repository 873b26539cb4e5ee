//! Notifications (issue 11) against HTTP receivers written here, on
//! loopback: the webhook's payload and signature, Slack's JSON with the
//! log's last lines, the events and targets filters, a 500 then a 200
//! (delivered once, after a retry), a sink that accepts the connection and
//! never answers (it delays neither the build nor another sink), the
//! master SIGKILLed with notifications pending (delivered after the
//! restart, each once), and `kiln notify ls/test/retry`.

use crate::common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "s3cret-for-tests";
/// How long a delivery may take to arrive in these tests.
const ARRIVE: Duration = Duration::from_secs(60);

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Got {
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    status: u16,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, h: &str) -> &str {
        self.headers.get(h).map(String::as_str).unwrap_or("")
    }
}

/// An HTTP/1.1 receiver on loopback: answers each request with the next
/// status of `script` (200 once it is used up) and reports it.
struct Receiver {
    port: u16,
    rx: mpsc::Receiver<Got>,
}

fn read_request(s: &mut TcpStream) -> Option<(BTreeMap<String, String>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut headers = BTreeMap::new();
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((headers, body))
}

impl Receiver {
    fn start(script: Vec<u16>) -> Receiver {
        Receiver::on(TcpListener::bind("127.0.0.1:0").unwrap(), script)
    }

    fn on(l: TcpListener, script: Vec<u16>) -> Receiver {
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        let script = Arc::new(Mutex::new(script.into_iter()));
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let tx = tx.clone();
                let script = script.clone();
                std::thread::spawn(move || {
                    let Some((headers, body)) = read_request(&mut s) else {
                        return;
                    };
                    let status = script.lock().unwrap().next().unwrap_or(200);
                    let _ = write!(
                        s,
                        "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    );
                    let _ = s.flush();
                    let _ = tx.send(Got {
                        headers,
                        body,
                        status,
                    });
                });
            }
        });
        Receiver { port, rx }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// The next request (panics after `ARRIVE`).
    fn next(&self) -> Got {
        self.rx
            .recv_timeout(ARRIVE)
            .unwrap_or_else(|_| panic!("nothing arrived on port {} in {ARRIVE:?}", self.port))
    }

    /// Requests until one of `event` about build `build` was answered 2xx.
    fn until(&self, event: &str, build: u64) -> Vec<Got> {
        let mut v = Vec::new();
        loop {
            let g = self.next();
            let done = g.status < 300
                && g.json().get("event").and_then(Value::as_str) == Some(event)
                && g.json().get("build").and_then(Value::as_u64) == Some(build);
            v.push(g);
            if done {
                return v;
            }
        }
    }

    /// What arrived so far, without waiting.
    fn drain(&self) -> Vec<Got> {
        self.rx.try_iter().collect()
    }
}

/// A receiver that accepts connections and never answers (holds them).
fn hanging() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            a.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (port, accepted)
}

fn sinks(m: &Master) -> BTreeMap<String, Value> {
    let v = m.cli_json(&["notify", "ls", "--json"]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| (jstr(s, "name").to_string(), s.clone()))
        .collect()
}

fn count(s: &Value, k: &str) -> u64 {
    ju64(s, k)
}

fn verify_signed(g: &Got) {
    let sig = g.header("x-kiln-signature-256");
    let hexed = sig
        .strip_prefix("sha256=")
        .unwrap_or_else(|| panic!("no sha256= signature: {:?}", g.headers));
    assert!(
        kiln_core::sig::verify_hmac_sha256_hex(SECRET.as_bytes(), &g.body, hexed),
        "bad signature {sig} of {}",
        String::from_utf8_lossy(&g.body)
    );
    let j = g.json();
    assert_eq!(g.header("x-kiln-event"), jstr(&j, "event"));
    assert_eq!(g.header("x-kiln-delivery"), jstr(&j, "id"));
    assert_eq!(g.header("content-type"), "application/json");
}

/// The webhook's payload and signature, every event of a build in order,
/// the events and targets filters, and Slack's message for a failure with
/// the log's last lines.
#[test]
fn webhook_and_slack_payloads_and_filters() {
    require_build_tools();
    let hook = Receiver::start(vec![]);
    let slack = Receiver::start(vec![]);
    let other = Receiver::start(vec![]);
    let config = format!(
        r#"
[[notify]]
name = "hook"
kind = "webhook"
url = "{hook}"
secret = "{SECRET}"
targets = ["def*"]

[[notify]]
name = "chat"
kind = "slack"
url = "{slack}"
events = ["build.failed"]

[[notify]]
name = "elsewhere"
kind = "webhook"
url = "{other}"
events = ["build.queued", "build.succeeded", "build.failed"]
targets = ["c9-*"]
"#,
        hook = hook.url(),
        slack = slack.url(),
        other = other.url()
    );
    let m = Master::start_with(MasterOpts::default().config(&config));
    let _w = m.start_worker("nw1", "noarch", "default", 1);
    let enrolled = hook.next();
    verify_signed(&enrolled);
    let j = enrolled.json();
    assert_eq!(
        (jstr(&j, "event").as_str(), jstr(&j, "worker").as_str()),
        ("worker.enrolled", "nw1"),
        "{j}"
    );

    let srpm = Pkg::noarch("nt-ok").build_srpm(&m.scratch);
    let b = m.submit_wait(&srpm, &[]);
    let id = build_id(&b);
    let got = hook.until("build.published", id);
    let events: Vec<String> = got
        .iter()
        .map(|g| jstr(&g.json(), "event").to_string())
        .collect();
    assert_eq!(
        events,
        [
            "build.queued",
            "build.started",
            "build.succeeded",
            "build.published"
        ],
        "{got:?}"
    );
    let mut ids = BTreeSet::new();
    for g in &got {
        verify_signed(g);
        let j = g.json();
        assert!(ids.insert(jstr(&j, "id").to_string()), "an id twice: {j}");
        assert_eq!(ju64(&j, "build"), id, "{j}");
        assert_eq!(jstr(&j, "target"), "default", "{j}");
        assert_eq!(jstr(&j, "package"), "nt-ok", "{j}");
        assert_eq!(
            jstr(&j, "nevr"),
            format!("nt-ok-{}", Pkg::noarch("nt-ok").evr()),
            "{j}"
        );
        assert_eq!(jstr(&j, "url"), format!("{}/builds/{id}", m.api_url), "{j}");
        assert_eq!(jstr(&j, "submitter"), "admin", "{j}");
        assert!(jstr(&j, "time").ends_with('Z'), "{j}");
    }
    let done = got[2].json();
    assert_eq!(jstr(&done, "state"), "succeeded", "{done}");
    assert!(
        done.get("duration_secs").and_then(Value::as_u64).is_some(),
        "{done}"
    );
    let publ = got[3].json();
    assert_eq!(
        jstr(&publ, "repository"),
        format!("{}/repos/default/", m.api_url),
        "{publ}"
    );

    // The same version again: skipped at submit (the version gate), with
    // its reason.
    let again = m.submit(&srpm, &[]);
    let id3 = build_id(&again);
    assert_eq!(jstr(&again, "state"), "skipped", "{again}");
    let got = hook.until("build.skipped", id3);
    assert_eq!(got.len(), 1, "{got:?}");
    verify_signed(&got[0]);
    let sk = got[0].json();
    assert!(!jstr(&sk, "reason").is_empty(), "{sk}");
    assert_eq!(jstr(&sk, "state"), "skipped", "{sk}");

    // A failure: the job's and the build's events, Slack's message with
    // the last lines of the log.
    let bad = Pkg::noarch("nt-bad")
        .build_script("echo 'nt-bad says boom-marker'\nexit 3")
        .build_srpm(&m.scratch);
    let id2 = build_id(&m.submit(&bad, &[]));
    let b2 = m.wait_build_done(id2, BUILD_TIMEOUT);
    assert_eq!(jstr(&b2, "state"), "failed", "{b2}");
    let got = hook.until("build.failed", id2);
    let events: Vec<String> = got
        .iter()
        .map(|g| jstr(&g.json(), "event").to_string())
        .collect();
    assert_eq!(
        events,
        [
            "build.queued",
            "build.started",
            "job.failed",
            "build.failed"
        ],
        "{got:?}"
    );
    let jf = got[2].json();
    assert_eq!(jstr(&jf, "arch"), "noarch", "{jf}");
    assert_eq!(jstr(&jf, "worker"), "nw1", "{jf}");
    let tail = jf["log_tail"].as_array().unwrap();
    assert!(
        tail.iter()
            .any(|l| l.as_str().unwrap().contains("boom-marker")),
        "job.failed carries the log's last lines: {jf}"
    );
    let s = slack.next();
    let msg = s.json();
    assert!(
        s.header("x-kiln-signature-256").is_empty(),
        "Slack is not signed"
    );
    let att = &msg["attachments"][0];
    assert_eq!(att["color"], "danger", "{msg}");
    assert_eq!(
        att["title_link"],
        format!("{}/builds/{id2}", m.api_url),
        "{msg}"
    );
    assert!(
        att["text"].as_str().unwrap().contains("boom-marker"),
        "Slack's message shows the log's last lines: {msg}"
    );
    let fields: BTreeMap<String, String> = att["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["title"].as_str().unwrap().to_string(),
                f["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        fields.get("State").map(String::as_str),
        Some("failed"),
        "{msg}"
    );
    assert_eq!(
        fields.get("Target").map(String::as_str),
        Some("default"),
        "{msg}"
    );
    assert!(
        fields.get("Package").unwrap().starts_with("nt-bad-"),
        "{msg}"
    );
    assert!(fields.contains_key("Duration"), "{msg}");

    // The filters: the rows were written with the state changes, so the
    // counts are final once the builds ended.
    let s = sinks(&m);
    assert_eq!(count(&s["chat"], "delivered"), 1, "{s:?}");
    assert_eq!(count(&s["chat"], "queued"), 0, "{s:?}");
    assert_eq!(
        (
            count(&s["elsewhere"], "queued"),
            count(&s["elsewhere"], "delivered")
        ),
        (0, 0),
        "a target outside the sink's globs: {s:?}"
    );
    assert!(other.drain().is_empty());
    assert!(slack.drain().is_empty(), "one message for one failed build");
    assert_eq!(jstr(&s["hook"], "kind"), "webhook");
    assert_eq!(s["chat"]["events"], serde_json::json!(["build.failed"]));
}

/// A 500 then a 200: the event is delivered once, after a retry, with the
/// same delivery id both times.
#[test]
fn a_refused_delivery_is_retried_and_delivered_once() {
    require_build_tools();
    let r = Receiver::start(vec![500]);
    let config = format!(
        r#"
[[notify]]
name = "flaky"
kind = "webhook"
url = "{}"
secret = "{SECRET}"
events = ["build.succeeded"]
retry_base_ms = 100
"#,
        r.url()
    );
    let m = Master::start_with(MasterOpts::default().config(&config));
    let _w = m.start_worker("nw2", "noarch", "default", 1);
    let srpm = Pkg::noarch("nt-retry").build_srpm(&m.scratch);
    let id = build_id(&m.submit_wait(&srpm, &[]));
    let got = r.until("build.succeeded", id);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].status, 500);
    assert_eq!(got[1].status, 200);
    assert_eq!(
        got[0].header("x-kiln-delivery"),
        got[1].header("x-kiln-delivery"),
        "a retry carries the same idempotency key"
    );
    verify_signed(&got[1]);
    let s = wait_until("the delivery to be recorded", ARRIVE, || {
        let s = sinks(&m);
        (count(&s["flaky"], "delivered") == 1).then_some(s)
    });
    assert_eq!(count(&s["flaky"], "queued"), 0, "{s:?}");
    assert_eq!(jstr(&s["flaky"], "state"), "ok", "{s:?}");
    // Delivered: nothing more is sent.
    assert!(r.drain().is_empty());
}

/// A sink that accepts the connection and never answers delays neither
/// the build (dispatch and end) nor another sink's deliveries, nor the
/// API.
#[test]
fn a_hanging_sink_delays_nothing() {
    require_build_tools();
    let (hang_port, accepted) = hanging();
    let fast = Receiver::start(vec![]);
    let config = format!(
        r#"
[[notify]]
name = "hang"
kind = "webhook"
url = "http://127.0.0.1:{hang_port}/"
timeout_secs = 120

[[notify]]
name = "fast"
kind = "webhook"
url = "{}"
"#,
        fast.url()
    );
    let m = Master::start_with(MasterOpts::default().config(&config));
    let _w = m.start_worker("nw3", "noarch", "default", 1);
    assert_eq!(jstr(&fast.next().json(), "event"), "worker.enrolled");
    // The hanging sink holds its first event (worker.enrolled).
    wait_until("the hanging sink to be connected", ARRIVE, || {
        (accepted.load(Ordering::SeqCst) > 0).then_some(())
    });
    let t0 = Instant::now();
    let srpm = Pkg::noarch("nt-hang").build_srpm(&m.scratch);
    let id = build_id(&m.submit_wait(&srpm, &[]));
    let built = t0.elapsed();
    let got = fast.until("build.succeeded", id);
    let arrived = t0.elapsed();
    assert_eq!(got.len(), 3, "{got:?}");
    // The other sink got everything long before the hanging one's
    // attempt times out (120 s).
    assert!(arrived < Duration::from_secs(100), "{arrived:?}");
    let t = Instant::now();
    let s = sinks(&m);
    let ls = t.elapsed();
    assert!(ls < Duration::from_secs(5), "the API answered in {ls:?}");
    assert_eq!(count(&s["hang"], "delivered"), 0, "{s:?}");
    assert!(count(&s["hang"], "queued") >= 4, "{s:?}");
    // The same build on a master without sinks, for comparison.
    let plain = Master::start();
    let _w2 = plain.start_worker("nw3b", "noarch", "default", 1);
    let t1 = Instant::now();
    let srpm = Pkg::noarch("nt-nohang").build_srpm(&plain.scratch);
    plain.submit_wait(&srpm, &[]);
    let built_plain = t1.elapsed();
    eprintln!(
        "with a hanging sink: build submitted to succeeded in {built:?} (without sinks: \
         {built_plain:?}), the other sink had build.succeeded after {arrived:?}, notify ls \
         answered in {ls:?}"
    );
    // Loose (a shared 2-core machine): the point is that nothing waits
    // for the hanging sink's 120 s timeout.
    assert!(
        built < built_plain * 3 + Duration::from_secs(5),
        "{built:?} with a hanging sink, {built_plain:?} without"
    );
}

/// The master SIGKILLed with 101 notifications pending (a build's, and 96
/// builds skipped at submit), its sink down: after the restart every event
/// is delivered, each once by event id, a build's in order.
#[test]
fn pending_notifications_survive_a_sigkill() {
    require_build_tools();
    let port = closed_port();
    let config = format!(
        r#"
[[notify]]
name = "later"
kind = "webhook"
url = "http://127.0.0.1:{port}/hook"
secret = "{SECRET}"
retry_base_ms = 200
"#
    );
    let mut m = Master::start_with(MasterOpts::default().config(&config));
    let w = m.start_worker("nw4", "noarch", "default", 1);
    let srpm = Pkg::noarch("nt-kill").build_srpm(&m.scratch);
    let id = build_id(&m.submit_wait(&srpm, &[]));
    // enrolled, queued, started, succeeded, published: all waiting.
    let s = wait_until("5 queued notifications", ARRIVE, || {
        let s = sinks(&m);
        (count(&s["later"], "queued") == 5).then_some(s)
    });
    assert_eq!(jstr(&s["later"], "state"), "retrying", "{s:?}");
    assert!(
        s["later"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("connect"),
        "{s:?}"
    );
    // 96 more: the same version submitted again is skipped at submit.
    let mut skipped = BTreeSet::new();
    for _ in 0..96 {
        let b = m.submit(&srpm, &[]);
        assert_eq!(jstr(&b, "state"), "skipped", "{b}");
        skipped.insert(build_id(&b));
    }
    const TOTAL: u64 = 101;
    wait_until("101 queued notifications", ARRIVE, || {
        (count(&sinks(&m)["later"], "queued") == TOTAL).then_some(())
    });
    m.kill();
    let r = Receiver::on(TcpListener::bind(("127.0.0.1", port)).unwrap(), vec![]);
    let t0 = Instant::now();
    m.restart();
    w.wait_connected(2);
    let got: Vec<Got> = (0..TOTAL).map(|_| r.next()).collect();
    let drained = t0.elapsed();
    let ids: BTreeSet<String> = got
        .iter()
        .map(|g| g.header("x-kiln-delivery").to_string())
        .collect();
    assert_eq!(ids.len(), got.len(), "an event twice");
    for g in &got {
        verify_signed(g);
    }
    let of_build: Vec<String> = got
        .iter()
        .map(Got::json)
        .filter(|j| j.get("build").and_then(Value::as_u64) == Some(id) || j.get("build").is_none())
        .map(|j| jstr(&j, "event").to_string())
        .collect();
    assert_eq!(
        of_build,
        [
            "worker.enrolled",
            "build.queued",
            "build.started",
            "build.succeeded",
            "build.published"
        ],
        "in order, after the restart"
    );
    let skips: BTreeSet<u64> = got
        .iter()
        .map(Got::json)
        .filter(|j| jstr(j, "event") == "build.skipped")
        .map(|j| ju64(&j, "build"))
        .collect();
    assert_eq!(skips, skipped, "each skipped build's event, once");
    let s = wait_until("every delivery recorded", ARRIVE, || {
        let s = sinks(&m);
        (count(&s["later"], "delivered") == TOTAL).then_some(s)
    });
    assert_eq!(count(&s["later"], "queued"), 0, "{s:?}");
    assert!(r.drain().is_empty(), "nothing delivered twice");
    eprintln!(
        "{TOTAL} notifications pending at SIGKILL: delivered {drained:?} after the restart began"
    );
}

/// `kiln notify ls`, `test` (what the sink answered, or the error) and
/// `retry` (dead notifications queued again and delivered).
#[test]
fn notify_cli_ls_test_retry() {
    let port = closed_port();
    let good = Receiver::start(vec![]);
    let config = format!(
        r#"
[[notify]]
name = "down"
kind = "webhook"
url = "http://127.0.0.1:{port}/hook"
retry_base_ms = 50
max_age_secs = 1

[[notify]]
name = "up"
kind = "slack"
url = "{}"
"#,
        good.url()
    );
    let m = Master::start_with(MasterOpts::default().config(&config));
    // An event for both: a worker enrolled (no build needed).
    let _e = m.enroll("nw5");
    assert!(!jstr(&good.next().json(), "text").is_empty());
    let s = wait_until("the dead notification", ARRIVE, || {
        let s = sinks(&m);
        (count(&s["down"], "dead") == 1).then_some(s)
    });
    assert_eq!(count(&s["down"], "queued"), 0, "{s:?}");
    assert!(s["down"]["last_error"].as_str().is_some(), "{s:?}");

    let ls = m.cli(&["notify", "ls"]).assert_ok().stdout;
    let lines: Vec<&str> = ls.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{ls}");
    assert!(
        lines[0].contains("QUEUED") && lines[0].contains("DEAD"),
        "{ls}"
    );
    let down = lines.iter().find(|l| l.starts_with("down ")).unwrap();
    assert!(down.contains("webhook"), "{ls}");
    let up = lines.iter().find(|l| l.starts_with("up ")).unwrap();
    assert!(up.contains("slack"), "{ls}");

    let t = m.cli(&["notify", "test", "up"]).assert_ok().stdout;
    assert!(
        t.contains("delivered test event") && t.contains("HTTP 200"),
        "{t}"
    );
    let g = good.next();
    assert!(
        g.json()["text"].as_str().unwrap().contains("test"),
        "{:?}",
        g.json()
    );

    let t = m.cli(&["notify", "test", "down"]);
    assert_eq!(t.status.code(), Some(1), "{t:?}");
    assert!(t.stdout.contains("failed"), "{t:?}");
    let t = m.cli(&["notify", "test", "nosuch"]);
    t.assert_error_line(&["no notification sink"]);
    // A reader may list, not test.
    let reader = m
        .cli(&["token", "create", "--name", "rd", "--role", "reader"])
        .assert_ok()
        .stdout
        .trim()
        .to_string();
    m.cli_token(&reader, &["notify", "ls"]).assert_ok();
    // The address `to_submitter` mails is recorded with a token.
    m.cli(&[
        "token",
        "create",
        "--name",
        "sub",
        "--role",
        "submitter",
        "--email",
        "sub@example.org",
    ])
    .assert_ok();
    m.cli(&[
        "token",
        "create",
        "--name",
        "sub2",
        "--role",
        "submitter",
        "--email",
        "not an address",
    ])
    .assert_error_line(&["e-mail"]);
    assert!(!m.cli_token(&reader, &["notify", "test", "up"]).success());

    // The receiver comes up; the dead notification is queued again.
    let back = Receiver::on(TcpListener::bind(("127.0.0.1", port)).unwrap(), vec![]);
    let r = m.cli_json(&["notify", "retry", "down", "--json"]);
    assert_eq!(ju64(&r, "requeued"), 1, "{r}");
    let g = back.next();
    assert_eq!(jstr(&g.json(), "event"), "worker.enrolled");
    let s = wait_until("the retried delivery", ARRIVE, || {
        let s = sinks(&m);
        (count(&s["down"], "delivered") == 1).then_some(s)
    });
    assert_eq!(
        (count(&s["down"], "dead"), count(&s["down"], "queued")),
        (0, 0),
        "{s:?}"
    );
    let out = m.cli(&["notify", "retry", "down"]).assert_ok().stdout;
    assert!(out.contains("0 dead notifications"), "{out}");
}

/// A sink removed from the config: its queued rows could never go out.
/// At the next start they are marked dead with the reason (so they are
/// counted and pruned like any ended row); once the sink is configured
/// again, `kiln notify retry` queues them and they are delivered, once.
#[test]
fn a_sink_removed_from_the_config_has_its_rows_marked_dead() {
    require_build_tools();
    let port = closed_port();
    let sink = |url: &str| {
        format!(
            "\n[[notify]]\nname = \"gone\"\nkind = \"webhook\"\nurl = \"{url}\"\n\
             events = [\"build.queued\"]\nretry_base_ms = 200\n"
        )
    };
    let mut m = Master::start_with(
        MasterOpts::default().config(&sink(&format!("http://127.0.0.1:{port}/hook"))),
    );
    // Nobody serves channel `none`: the builds stay queued.
    let srpm = Pkg::noarch("nt-gone").build_srpm(&m.scratch);
    for _ in 0..3 {
        m.submit(&srpm, &["--scratch", "--channel", "none"]);
    }
    wait_until("3 queued notifications", ARRIVE, || {
        (count(&sinks(&m)["gone"], "queued") == 3).then_some(())
    });
    // Started without the sink: nothing to list, nothing lost.
    m.rewrite_config("");
    m.restart();
    assert!(sinks(&m).is_empty());
    assert!(
        m.stderr_text().contains("no longer configured"),
        "{}",
        m.stderr_text()
    );
    // The sink is back, now reachable.
    let r = Receiver::start(vec![]);
    m.rewrite_config(&sink(&r.url()));
    m.restart();
    let s = sinks(&m);
    assert_eq!(
        (count(&s["gone"], "queued"), count(&s["gone"], "dead")),
        (0, 3),
        "{s:?}"
    );
    assert!(
        s["gone"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("no longer in the configuration"),
        "{s:?}"
    );
    let out = m.cli(&["notify", "retry", "gone"]).assert_ok().stdout;
    assert!(out.contains("3 dead notifications"), "{out}");
    let mut ids = BTreeSet::new();
    for _ in 0..3 {
        let j = r.next().json();
        assert_eq!(jstr(&j, "event"), "build.queued", "{j}");
        assert!(ids.insert(jstr(&j, "id")), "twice: {j}");
    }
    wait_until("3 delivered", ARRIVE, || {
        (count(&sinks(&m)["gone"], "delivered") == 3).then_some(())
    });
}

/// A worker gone for longer than a lease period is `worker.lost`; so is
/// one that keeps its connection open but falls silent (stopped with
/// SIGSTOP: no heartbeat), and it connects again once it runs; one that
/// stays connected is not lost; a revoked one is `worker.revoked`.
#[test]
fn a_worker_gone_past_its_lease_is_lost() {
    require_build_tools();
    let r = Receiver::start(vec![]);
    let config = format!(
        r#"
[[notify]]
name = "ops"
kind = "webhook"
url = "{}"
events = ["worker.lost", "worker.revoked"]
"#,
        r.url()
    );
    let m = Master::start_with(
        MasterOpts::default()
            .config(&config)
            .arg("--lease-secs", "1"),
    );
    let stays = m.start_worker("nw6", "noarch", "default", 1);
    let mut goes = m.start_worker("nw7", "noarch", "default", 1);
    goes.kill();
    let j = r.next().json();
    assert_eq!(
        (jstr(&j, "event").as_str(), jstr(&j, "worker").as_str()),
        ("worker.lost", "nw7"),
        "{j}"
    );
    assert_eq!(jstr(&j, "state"), "lost", "{j}");
    // Silent with its connection open: the master ends the session after
    // twice the lease (at least 3 s) and the worker is lost then.
    let mut silent = m.start_worker("nw8", "noarch", "default", 1);
    silent.signal(libc::SIGSTOP);
    let j = r.next().json();
    assert_eq!(
        (jstr(&j, "event").as_str(), jstr(&j, "worker").as_str()),
        ("worker.lost", "nw8"),
        "{j}"
    );
    silent.signal(libc::SIGCONT);
    silent.wait_connected(2);
    assert_eq!(stays.connected_count(), 1);
    m.cli(&["worker", "revoke", "nw6"]).assert_ok();
    let j = r.next().json();
    assert_eq!(
        (jstr(&j, "event").as_str(), jstr(&j, "worker").as_str()),
        ("worker.revoked", "nw6"),
        "{j}"
    );
    let s = wait_until("both delivered", ARRIVE, || {
        let s = sinks(&m);
        (count(&s["ops"], "delivered") == 3).then_some(s)
    });
    assert_eq!(count(&s["ops"], "queued"), 0, "nothing else queued: {s:?}");
}

/// `release.promoted` and `release.rolled_back` (issue 12's promotions):
/// a webhook taking only those gets each promotion once, signed, with the
/// release, channel, version, build and who; the rollback too; no build
/// event.
#[test]
fn release_promotions_are_notified_once() {
    for t in ["dnf", "bwrap", "zstd", "tar", "mkfs.ext4", "createrepo_c"] {
        require_tool(t);
    }
    let hb = crate::common::hostbase::build_host_base_repo(
        &std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostbase"),
    );
    let base = crate::common::hostbase::serve_dir(&hb.repo);
    let hook = Receiver::start(vec![]);
    let mut config = config_toml(&[], &[target_toml("t", &["x86_64"], &[])]);
    config += &format!(
        "\n[[notify]]\nname = \"rel\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\
         events = [\"release.promoted\", \"release.rolled_back\"]\n\
         \n[[image]]\nname = \"nt-img\"\ntarget = \"t\"\nrepos = [{:?}]\narches = [\"x86_64\"]\n\
         packages = [\"kiln-hostbase\"]\nformats = [\"tar.zst\"]\n",
        hook.url(),
        base.url
    );
    let f = RepoFarm::start(&config, Ctl::new());
    let m = &f.m;
    let build = || {
        let out = run_timeout(
            m.cli_cmd(&["image", "build", "nt-img", "--wait", "--json"]),
            Duration::from_secs(600),
            "kiln image build --wait --json",
        );
        let b: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(jstr(&b, "state"), "succeeded", "{b}");
        (build_id(&b), jstr(&b, "evr"))
    };
    let (id1, v1) = build();
    let (id2, v2) = build();
    for id in [id1, id2] {
        m.cli(&["release", "promote", &id.to_string(), "--release", "edge"])
            .assert_ok();
    }
    m.cli(&["release", "rollback", "edge", "--channel", "stable"])
        .assert_ok();

    let got = hook.until("release.rolled_back", id1);
    let events: Vec<(String, u64)> = got
        .iter()
        .map(|g| (jstr(&g.json(), "event"), ju64(&g.json(), "build")))
        .collect();
    assert_eq!(
        events,
        vec![
            ("release.promoted".to_string(), id1),
            ("release.promoted".to_string(), id2),
            ("release.rolled_back".to_string(), id1),
        ],
        "each promotion once, in order, nothing else"
    );
    for (g, (state, v)) in
        got.iter()
            .zip([("promoted", &v1), ("promoted", &v2), ("rolled_back", &v1)])
    {
        verify_signed(g);
        let j = g.json();
        assert_eq!(jstr(&j, "state"), state, "{j}");
        assert_eq!(jstr(&j, "target"), "t", "{j}");
        assert_eq!(jstr(&j, "package"), "nt-img", "{j}");
        assert_eq!(
            (
                jstr(&j, "release"),
                jstr(&j, "channel"),
                jstr(&j, "version")
            ),
            ("edge".to_string(), "stable".to_string(), v.to_string()),
            "{j}"
        );
        assert!(
            j.get("source").is_none(),
            "an image build has no source: {j}"
        );
        assert!(!jstr(&j, "submitter").is_empty(), "who: {j}");
        assert!(
            jstr(&j, "repository").ends_with(&format!("/releases/edge/stable/{v}/")),
            "{j}"
        );
    }
    let ids: BTreeSet<String> = got.iter().map(|g| jstr(&g.json(), "id")).collect();
    assert_eq!(ids.len(), 3, "three events, three ids");
    wait_until("the three rows delivered", ARRIVE, || {
        (count(&sinks(m)["rel"], "delivered") == 3).then_some(())
    });
}
