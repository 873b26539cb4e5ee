//! HTTP with the host's curl: what the master answers and serves.

use super::*;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The final response of a curl call.
pub struct Http {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Http {
    pub fn header(&self, name: &str) -> Option<String> {
        let name = name.to_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `curl ARGS` (the URL among them; `-X`, `-H`, `--data`, `--cacert` as
/// needed), 30 s at most; the body and headers go through files under
/// `scratch`. Panics if curl itself fails (nothing answered).
pub fn curl(args: &[&str], scratch: &Path) -> Http {
    let u = unique();
    let body = scratch.join(format!("http-body-{u}"));
    let head = scratch.join(format!("http-head-{u}"));
    let mut cmd = Command::new(require_tool("curl"));
    cmd.arg("-sS")
        .arg("--max-time")
        .arg("30")
        .arg("-o")
        .arg(&body)
        .arg("-D")
        .arg(&head)
        .arg("-w")
        .arg("%{http_code}")
        .args(args);
    let what = format!("curl {}", args.join(" "));
    let out = run_timeout(cmd, Duration::from_secs(40), &what).assert_ok();
    let status: u16 = out
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{what} printed no status: {out:?}"));
    let head_text = fs::read_to_string(&head).unwrap_or_default();
    let block = head_text
        .replace("\r\n", "\n")
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or("")
        .to_string();
    let headers = block
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let body_bytes = fs::read(&body).unwrap_or_default();
    let _ = fs::remove_file(&body);
    let _ = fs::remove_file(&head);
    Http {
        status,
        headers,
        body: body_bytes,
    }
}

/// GET `url` with extra request headers (`"Name: value"`).
pub fn http_get(url: &str, headers: &[&str], scratch: &Path) -> Http {
    let mut args = Vec::new();
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(url);
    curl(&args, scratch)
}

/// GET `url`, asserting 200, and returns the body.
pub fn http_get_ok(url: &str, scratch: &Path) -> Vec<u8> {
    let r = http_get(url, &[], scratch);
    assert_eq!(r.status, 200, "GET {url} answered {}", r.status);
    r.body
}
