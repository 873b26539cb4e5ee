//! Slack (and Mattermost) incoming webhooks, and signed plain webhooks.
//!
//! Slack and Mattermost take the same incoming-webhook JSON: a `text`
//! fallback and one attachment with the state, package, target, duration
//! and a link (failures add the last log lines). The plain webhook is the
//! [`Notice`] JSON itself, POSTed with `X-Kiln-Event`, `X-Kiln-Delivery`
//! (the notice's id: the receiver's idempotency key) and, with a secret,
//! `X-Kiln-Signature-256: sha256=HEX` (HMAC-SHA256 of the body). Any 2xx
//! answer counts as delivered.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::{Notice, NotifyError, Result};

/// How much of an answer's body is kept in a report.
const ANSWER_CHARS: usize = 200;

fn client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| NotifyError::Config(format!("cannot make an HTTP client: {e}")))
}

fn check_url(url: &str) -> Result<reqwest::Url> {
    let u = reqwest::Url::parse(url).map_err(|e| NotifyError::Config(format!("bad URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(NotifyError::Config(
            "the URL must be http:// or https:// with a host".into(),
        ));
    }
    Ok(u)
}

/// An error and its causes, on one line (reqwest's own message alone
/// says only "error sending request").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// A short, single-line form of an answer's body.
fn short(body: &str) -> String {
    let one: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(ANSWER_CHARS)
        .collect();
    one.trim().to_string()
}

async fn post(rb: reqwest::RequestBuilder, timeout: Duration) -> Result<String> {
    let send = async {
        // The URL is a secret (Slack's): never in an error.
        let resp = rb.send().await.map_err(|e| {
            if e.is_timeout() {
                NotifyError::Timeout(timeout)
            } else {
                NotifyError::Transport(chain(&e.without_url()))
            }
        })?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let answer = format!("HTTP {}: {}", status.as_u16(), short(&body));
        if status.is_success() {
            Ok(answer.trim_end_matches(": ").to_string())
        } else {
            Err(NotifyError::Refused(answer))
        }
    };
    // reqwest's own timeout covers the whole exchange; this one also
    // bounds anything before it (DNS resolution).
    match tokio::time::timeout(timeout + Duration::from_millis(100), send).await {
        Ok(r) => r,
        Err(_) => Err(NotifyError::Timeout(timeout)),
    }
}

/// A Slack or Mattermost incoming webhook.
pub struct Slack {
    client: reqwest::Client,
    url: reqwest::Url,
    timeout: Duration,
}

impl Slack {
    /// `url`: the incoming webhook's URL (a secret).
    pub fn new(url: &str, timeout: Duration) -> Result<Slack> {
        Ok(Slack {
            client: client(timeout)?,
            url: check_url(url)?,
            timeout,
        })
    }

    /// Post one message for `n`.
    pub async fn deliver(&self, n: &Notice) -> Result<String> {
        let rb = self.client.post(self.url.clone()).json(&slack_message(n));
        post(rb, self.timeout).await
    }
}

/// Slack's markup treats `&`, `<` and `>` specially.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn color(n: &Notice) -> &'static str {
    match n.state.as_deref().unwrap_or("") {
        "succeeded" | "published" | "enrolled" => "good",
        "failed" | "lost" | "revoked" => "danger",
        "canceled" | "skipped" => "warning",
        _ => "#439FE0",
    }
}

fn duration(secs: u64) -> String {
    if secs >= 3600 {
        format!("{}h{:02}m{:02}s", secs / 3600, secs / 60 % 60, secs % 60)
    } else {
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

/// The incoming-webhook JSON for one notice.
pub fn slack_message(n: &Notice) -> Value {
    let mut fields = Vec::new();
    let mut field = |title: &str, value: String| {
        fields.push(json!({"title": title, "value": esc(&value), "short": true}));
    };
    if let Some(s) = &n.state {
        field("State", s.clone());
    }
    if let Some(p) = n.nevr.as_ref().or(n.package.as_ref()) {
        field("Package", p.clone());
    }
    if let Some(t) = &n.target {
        field("Target", t.clone());
    }
    if let Some(a) = &n.arch {
        field("Arch", a.clone());
    }
    if let Some(d) = n.duration_secs {
        field("Duration", duration(d));
    }
    if let Some(w) = &n.worker {
        field("Worker", w.clone());
    }
    if let Some(s) = &n.submitter {
        field("Submitter", s.clone());
    }
    if let Some(r) = &n.repository {
        field("Repository", r.clone());
    }
    let title = match (&n.nevr, n.build) {
        (Some(nevr), Some(b)) => format!("{} #{b} {nevr}", n.event),
        (None, Some(b)) => format!("{} #{b}", n.event),
        _ => n.summary(),
    };
    let mut att = json!({
        "fallback": esc(&n.summary()),
        "color": color(n),
        "title": esc(&title),
        "fields": fields,
    });
    if let Some(u) = &n.url {
        att["title_link"] = json!(u);
    }
    let mut text = String::new();
    if let Some(r) = &n.reason {
        text.push_str(&esc(r));
    }
    if !n.log_tail.is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        // Backticks would end the code block early.
        let tail = n.log_tail.join("\n").replace("```", "'''");
        text.push_str(&format!("```\n{}\n```", esc(&tail)));
    }
    if !text.is_empty() {
        att["text"] = json!(text);
    }
    let mut headline = esc(&n.summary());
    if let Some(u) = &n.url {
        // Slack's link markup; the summary already ends with the URL.
        headline = format!(
            "{} <{}|details>",
            esc(n.summary().replace(u.as_str(), "").trim_end()),
            u
        );
    }
    json!({ "text": headline, "attachments": [att] })
}

/// A plain webhook: the notice's JSON, signed.
pub struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Option<String>,
    timeout: Duration,
}

/// `sha256=HEX`: the signature header's value for `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let hexed = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(body);
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    format!("sha256={hexed}")
}

impl Webhook {
    pub fn new(url: &str, secret: Option<String>, timeout: Duration) -> Result<Webhook> {
        if secret.as_deref().is_some_and(str::is_empty) {
            return Err(NotifyError::Config("the webhook's secret is empty".into()));
        }
        Ok(Webhook {
            client: client(timeout)?,
            url: check_url(url)?,
            secret,
            timeout,
        })
    }

    /// POST the notice's JSON.
    pub async fn deliver(&self, n: &Notice) -> Result<String> {
        let body = serde_json::to_vec(n)
            .map_err(|e| NotifyError::Config(format!("cannot encode the notice: {e}")))?;
        let mut rb = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Kiln-Event", header_safe(&n.event))
            .header("X-Kiln-Delivery", header_safe(&n.id));
        if let Some(s) = &self.secret {
            rb = rb.header("X-Kiln-Signature-256", signature(s.as_bytes(), &body));
        }
        post(rb.body(body), self.timeout).await
    }
}

/// Header values are made by Kiln (event names, ids), but never let one
/// carry anything a header cannot.
fn header_safe(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Notice {
        Notice {
            id: "ev1".into(),
            event: "build.failed".into(),
            time: "2026-01-01T00:00:00Z".into(),
            target: Some("c9".into()),
            package: Some("foo".into()),
            nevr: Some("foo-1.0-1".into()),
            build: Some(7),
            job: None,
            arch: None,
            state: Some("failed".into()),
            submitter: Some("alice".into()),
            source: None,
            worker: None,
            duration_secs: Some(75),
            reason: Some("x86_64 <failed>".into()),
            repository: None,
            log_tail: vec!["error: ```oops```".into()],
            url: Some("http://kiln.example/builds/7".into()),
            release: None,
            channel: None,
            version: None,
        }
    }

    #[test]
    fn slack_message_has_the_facts_escaped() {
        let m = slack_message(&failed());
        let att = &m["attachments"][0];
        assert_eq!(att["color"], "danger");
        assert_eq!(att["title_link"], "http://kiln.example/builds/7");
        assert_eq!(att["title"], "build.failed #7 foo-1.0-1");
        let fields: Vec<(String, String)> = att["fields"]
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
        assert!(fields.contains(&("Duration".into(), "1m15s".into())));
        assert!(fields.contains(&("Target".into(), "c9".into())));
        let text = att["text"].as_str().unwrap();
        assert!(text.starts_with("x86_64 &lt;failed&gt;\n```\n"), "{text}");
        assert!(text.contains("error: '''oops'''"), "{text}");
        assert!(
            m["text"]
                .as_str()
                .unwrap()
                .ends_with("<http://kiln.example/builds/7|details>"),
            "{m}"
        );
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn urls_are_checked() {
        assert!(Webhook::new("ftp://x/", None, Duration::from_secs(1)).is_err());
        assert!(Webhook::new(
            "http://127.0.0.1:1/",
            Some(String::new()),
            Duration::from_secs(1)
        )
        .is_err());
        assert!(Slack::new("https://hooks.example/T/B/x", Duration::from_secs(1)).is_ok());
    }
}
