//! A real headless Chromium, driven through chromedriver over WebDriver
//! (W3C): `Browser`. The client is the handful of WebDriver commands the
//! tests use, written here over reqwest (already a dependency of the
//! crate), so the browser tests add no crate to the tree.
//!
//! Each `Browser` has its own chromedriver on a free loopback port, its
//! own Chromium profile and HOME in a temp dir; dropping it ends the
//! session and kills chromedriver with the Chromium it started.

use super::*;
use serde_json::{json, Value};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The key of an element reference in WebDriver's JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A failed WebDriver command: the HTTP status and the W3C error code
/// (`no such alert`, `no such element`…).
#[derive(Debug)]
pub struct WdError {
    pub status: u16,
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.error, self.status, self.message)
    }
}

/// A headless Chromium session.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    // Dropped in this order: chromedriver (and Chromium) first, then the
    // profile it was using.
    driver: Proc,
    _dir: TempDir,
}

impl Browser {
    /// Starts chromedriver and a new headless Chromium session.
    pub fn start() -> Browser {
        let driver_bin = require_tool("chromedriver");
        let chromium = require_tool("chromium");
        let dir = tempfile::Builder::new()
            .prefix("kiln-it-browser-")
            .tempdir()
            .expect("tempdir");
        let home = dir.path().join("home");
        let profile = dir.path().join("profile");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&profile).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap();

        // A port found free may be taken again before chromedriver binds
        // it: a few tries.
        let mut attempt = 0;
        let (driver, port) = loop {
            attempt += 1;
            let port = closed_port();
            let mut cmd = Command::new(&driver_bin);
            cmd.arg(format!("--port={port}"))
                .env("HOME", &home)
                .env_remove("XDG_CONFIG_HOME");
            let err = dir.path().join(format!("chromedriver-{attempt}.stderr"));
            let p = Proc::spawn(cmd, &err, "chromedriver");
            let up = p.wait_line(
                |l| l.contains("started successfully"),
                1,
                Duration::from_secs(30),
            );
            if up.is_some() {
                break (p, port);
            }
            assert!(
                attempt < 3,
                "chromedriver did not start:\n{}",
                p.diagnostics()
            );
        };

        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                // An alert stays open (and visible to `alert_text`) until
                // the test handles it.
                "unhandledPromptBehavior": "ignore",
                "goog:chromeOptions": {
                    "binary": chromium.to_str().unwrap(),
                    "args": [
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-background-networking",
                        "--disable-component-update",
                        "--disable-sync",
                        "--disable-dev-shm-usage",
                        "--window-size=1280,1600",
                        format!("--user-data-dir={}", profile.display()),
                    ],
                },
            } }
        });
        let base = format!("http://127.0.0.1:{port}");
        let v = rt
            .block_on(send(
                &http,
                reqwest::Method::POST,
                &format!("{base}/session"),
                Some(caps),
            ))
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start Chromium: {e}\n{}",
                    driver.diagnostics()
                )
            });
        let id = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {v}"))
            .to_string();
        Browser {
            rt,
            http,
            session: format!("{base}/session/{id}"),
            driver,
            _dir: dir,
        }
    }

    /// A WebDriver command on this session (`path` after `/session/ID`).
    pub fn cmd(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WdError> {
        let url = format!("{}{path}", self.session);
        self.rt.block_on(send(&self.http, method, &url, body))
    }

    fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let what = format!("{method} {path} {body:?}");
        self.cmd(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {what}: {e}\n{}", self.driver.diagnostics()))
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.ok(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    /// The URL the page is at.
    pub fn url(&self) -> String {
        self.ok(reqwest::Method::GET, "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page
    /// and returns what it returns (a promise is awaited).
    pub fn try_exec(&self, script: &str, args: Value) -> Result<Value, WdError> {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Like [`Browser::try_exec`], panicking on an error.
    pub fn exec(&self, script: &str, args: Value) -> Value {
        self.try_exec(script, args)
            .unwrap_or_else(|e| panic!("script `{script}` failed: {e}"))
    }

    /// The text of the first element matching `css`, if there is one.
    pub fn text(&self, css: &str) -> Option<String> {
        self.exec(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            json!([css]),
        )
        .as_str()
        .map(str::to_string)
    }

    /// How many elements match `css`.
    pub fn count(&self, css: &str) -> u64 {
        self.exec(
            "return document.querySelectorAll(arguments[0]).length;",
            json!([css]),
        )
        .as_u64()
        .unwrap()
    }

    /// The text the page shows (`document.body.innerText`).
    pub fn body_text(&self) -> String {
        self.exec(
            "return document.body ? document.body.innerText : '';",
            json!([]),
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// The WebDriver reference of the first element matching `css`.
    pub fn find(&self, css: &str) -> String {
        let v = self.ok(
            reqwest::Method::POST,
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element reference for `{css}` in {v}"))
            .to_string()
    }

    /// Types `text` into the element `css` (for a file input: a path).
    pub fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css);
        self.ok(
            reqwest::Method::POST,
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Clicks the element `css` as a user would.
    pub fn click(&self, css: &str) {
        let el = self.find(css);
        self.ok(
            reqwest::Method::POST,
            &format!("/element/{el}/click"),
            Some(json!({})),
        );
    }

    /// The text of the open alert, confirm or prompt dialog; an error
    /// (`no such alert`) when none is open.
    pub fn alert_text(&self) -> Result<String, WdError> {
        self.cmd(reqwest::Method::GET, "/alert/text", None)
            .map(|v| v.as_str().unwrap_or_default().to_string())
    }

    /// Polls `check` (every 100 ms) until it returns `Some`; a timeout
    /// fails the test with `what` and the text the page shows.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check() {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what} at {}; the page shows:\n{}",
                    self.url(),
                    tail_lines(&self.body_text(), 60)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the text of `css` satisfies `pred`; returns it.
    pub fn wait_text(&self, css: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        self.wait(&format!("the text of `{css}`"), timeout, || {
            self.text(css).filter(|t| pred(t))
        })
    }

    /// Marks the page's window (`window.__kilnMarker`): it is gone after a
    /// reload or a navigation.
    pub fn mark(&self) {
        self.exec("window.__kilnMarker = 1; return 1;", json!([]));
    }

    /// Whether the mark set by [`Browser::mark`] is still there.
    pub fn marked(&self) -> bool {
        self.exec("return window.__kilnMarker === 1;", json!([])) == json!(true)
    }

    /// Opens a new tab and switches to it; returns its handle.
    pub fn new_tab(&self) -> String {
        let v = self.ok(
            reqwest::Method::POST,
            "/window/new",
            Some(json!({ "type": "tab" })),
        );
        let h = v["handle"].as_str().unwrap().to_string();
        self.switch_to(&h);
        h
    }

    /// The handle of the current tab.
    pub fn tab(&self) -> String {
        self.ok(reqwest::Method::GET, "/window", None)
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Switches to the tab `handle`.
    pub fn switch_to(&self, handle: &str) {
        self.ok(
            reqwest::Method::POST,
            "/window",
            Some(json!({ "handle": handle })),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends Chromium cleanly when it answers soon; chromedriver (and
        // whatever is left of Chromium) is killed by `Proc`'s drop anyway.
        let req = self
            .http
            .delete(&self.session)
            .timeout(Duration::from_secs(5));
        let _ = self.rt.block_on(async { req.send().await });
    }
}

/// One WebDriver request: its `value`, or the W3C error it answered.
async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, WdError> {
    let mut req = http.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| WdError {
        status: 0,
        error: "transport".into(),
        message: e.to_string(),
    })?;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let v: Value = serde_json::from_str(&text).map_err(|e| WdError {
        status,
        error: "not json".into(),
        message: format!("{e}: {text}"),
    })?;
    let value = v.get("value").cloned().unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return Ok(value);
    }
    Err(WdError {
        status,
        error: value["error"].as_str().unwrap_or_default().to_string(),
        message: value["message"].as_str().unwrap_or_default().to_string(),
    })
}
