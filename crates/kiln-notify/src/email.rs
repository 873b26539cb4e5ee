//! E-mail over SMTP (lettre).
//!
//! One message per notice, plain text ([`body`]), to the sink's fixed
//! recipients plus the extra ones of the call (the submitter). Headers:
//!
//! - `Subject: [kiln] NEVR: EVENT on TARGET` ([`subject`]; control
//!   characters of the event data dropped, so no header can be injected);
//! - `Message-ID: <ID@kiln>` with the notice's id (the idempotency key: a
//!   mail store or reader can drop a second copy);
//! - for a build's events `In-Reply-To` and `References:
//!   <build-N@HOST>` (HOST: the host of the notice's `url`, else `kiln`), so
//!   every mail of one build lands in one thread;
//! - `X-Kiln-Event: EVENT`, for filters.
//!
//! Each `deliver` opens one SMTP session (plain, STARTTLS or TLS from the
//! first byte, with the system's roots plus `ca_file`; `AUTH` when a
//! username is set), sends and closes it.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::{Notice, NotifyError, Result};

/// The SMTP session's time limit (connecting, each command).
const TIMEOUT: Duration = Duration::from_secs(30);
/// The longest subject, in characters.
const MAX_SUBJECT: usize = 200;
/// At most this many recipients per message.
const MAX_RECIPIENTS: usize = 100;

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP (loopback relays only).
    None,
    /// STARTTLS after connecting (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
}

#[derive(Debug, Clone)]
pub struct EmailConfig {
    pub server: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `Kiln <kiln@example.org>`.
    pub from: String,
    /// Fixed recipients.
    pub to: Vec<String>,
}

pub struct Email {
    from: Mailbox,
    to: Vec<Mailbox>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

fn config_err(m: impl std::fmt::Display) -> NotifyError {
    NotifyError::Config(format!("email: {m}"))
}

/// An address as given (`a@b.org` or `Name <a@b.org>`), checked.
fn mailbox(what: &str, s: &str) -> Result<Mailbox> {
    if s.chars().any(char::is_control) {
        return Err(config_err(format!("{what} {s:?}: has a control character")));
    }
    s.trim()
        .parse::<Mailbox>()
        .map_err(|e| config_err(format!("{what} {s:?}: not an e-mail address ({e})")))
}

impl Email {
    /// Check the addresses and read `ca_file`; connects to nothing.
    pub fn new(cfg: EmailConfig) -> Result<Email> {
        let host = &cfg.server;
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
        {
            return Err(config_err(format!(
                "server {host:?} is not a host name or address"
            )));
        }
        if cfg.port == 0 {
            return Err(config_err("port 0"));
        }
        let from = mailbox("from", &cfg.from)?;
        let to = cfg
            .to
            .iter()
            .map(|t| mailbox("to", t))
            .collect::<Result<Vec<_>>>()?;
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(cfg.port)
            .timeout(Some(TIMEOUT))
            .hello_name(ClientId::Domain(from.email.domain().to_string()));
        if cfg.tls != SmtpTls::None {
            let mut params = TlsParameters::builder(host.clone());
            if let Some(ca) = &cfg.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| config_err(format!("ca_file {}: {e}", ca.display())))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| config_err(format!("ca_file {}: {e}", ca.display())))?;
                params = params.add_root_certificate(cert);
            }
            let params = params
                .build_rustls()
                .map_err(|e| config_err(format!("tls: {e}")))?;
            b = b.tls(match cfg.tls {
                SmtpTls::Tls => Tls::Wrapper(params),
                _ => Tls::Required(params),
            });
        }
        match (&cfg.username, &cfg.password) {
            (Some(u), Some(p)) => b = b.credentials(Credentials::new(u.clone(), p.clone())),
            (Some(_), None) => return Err(config_err("a username needs a password")),
            (None, Some(_)) => return Err(config_err("a password needs a username")),
            (None, None) => {}
        }
        Ok(Email {
            from,
            to,
            transport: b.build(),
        })
    }

    /// Send one message to `to` plus `extra_to` (the submitter's address;
    /// one that is not a valid address is left out and named in the
    /// answer, a duplicate is sent once). `Ok("250 …")` with the server's
    /// answer to the message; `Err(Refused)` when the server answered with
    /// an error (4xx, 5xx), `Err(Transport)` for connection, TLS and time
    /// outs, `Err(Config)` when no recipient is left.
    pub async fn deliver(&self, n: &Notice, extra_to: &[String]) -> Result<String> {
        let mut to = self.to.clone();
        let mut skipped = Vec::new();
        for t in extra_to {
            match mailbox("extra_to", t) {
                Ok(m) => {
                    if !to.iter().any(|x| x.email == m.email) {
                        to.push(m);
                    }
                }
                Err(_) => skipped.push(clean_line(t)),
            }
        }
        if to.is_empty() {
            return Err(config_err("no recipient"));
        }
        if to.len() > MAX_RECIPIENTS {
            return Err(config_err(format!(
                "{} recipients, over {MAX_RECIPIENTS}",
                to.len()
            )));
        }
        let msg = self.message(n, to)?;
        match self.transport.send(msg).await {
            Ok(r) => {
                let mut s = format!("{} {}", r.code(), r.message().collect::<Vec<_>>().join(" "));
                if !skipped.is_empty() {
                    s.push_str(&format!(
                        " (not an address, left out: {})",
                        skipped.join(", ")
                    ));
                }
                Ok(s.trim().to_string())
            }
            Err(e) if e.is_permanent() || e.is_transient() => {
                Err(NotifyError::Refused(format!("smtp: {e}")))
            }
            Err(e) => Err(NotifyError::Transport(format!("smtp: {e}"))),
        }
    }

    /// The message for `n`, to `to` (public for tests: see
    /// [`Message::formatted`]).
    pub fn message(&self, n: &Notice, to: Vec<Mailbox>) -> Result<Message> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(subject(n))
            .message_id(Some(message_id(n)))
            .header(ContentType::TEXT_PLAIN)
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("X-Kiln-Event"),
                atom(&n.event),
            ));
        for t in to {
            b = b.to(t);
        }
        if let Some(root) = thread_id(n) {
            b = b.in_reply_to(root.clone()).references(root);
        }
        b.body(body(n))
            .map_err(|e| config_err(format!("the message: {e}")))
    }
}

/// `s` on one line: CR, LF and tab become spaces, other control characters
/// (and Unicode line separators) are dropped.
fn clean_line(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            '\r' | '\n' | '\t' | '\u{2028}' | '\u{2029}' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// `s` as characters fit for a message id or header token: letters, digits,
/// `-`, `_` and `.` kept, every other byte as `=XX`.
fn atom(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    let out = out.trim_matches('.').replace("..", ".=2E");
    if out.is_empty() {
        "_".into()
    } else {
        out
    }
}

/// `<ID@kiln>`: the notice's id as the Message-ID.
pub fn message_id(n: &Notice) -> String {
    format!("<{}@kiln>", atom(&n.id))
}

/// `<build-N@HOST>`: the thread of a build's mails (HOST: the host of the
/// notice's `url`, else `kiln`).
pub fn thread_id(n: &Notice) -> Option<String> {
    let build = n.build?;
    let host = n
        .url
        .as_deref()
        .and_then(|u| u.split_once("://"))
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
        .map(|h| h.rsplit('@').next().unwrap_or(h))
        .filter(|h| !h.is_empty())
        .map(|h| {
            // Drop a port; keep a DNS name's characters only.
            let h = if h.starts_with('[') {
                h
            } else {
                h.split(':').next().unwrap_or(h)
            };
            h.chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
                .collect::<String>()
        })
        .filter(|h| !h.is_empty() && !h.starts_with('.') && !h.ends_with('.') && !h.contains(".."))
        .unwrap_or_else(|| "kiln".into());
    Some(format!("<build-{build}@{host}>"))
}

/// `[kiln] NEVR: EVENT on TARGET`, on one line, at most 200 characters.
pub fn subject(n: &Notice) -> String {
    let what = match (&n.nevr, &n.package, &n.worker) {
        (Some(v), _, _) => v.clone(),
        (None, Some(p), _) => p.clone(),
        (None, None, Some(w)) => format!("worker {w}"),
        (None, None, None) => "kiln".into(),
    };
    let mut s = format!("[kiln] {what}: {}", n.event);
    if let Some(a) = &n.arch {
        if n.event.starts_with("job.") {
            s.push_str(&format!(" ({a})"));
        }
    }
    if let Some(t) = &n.target {
        s.push_str(&format!(" on {t}"));
    }
    let s = clean_line(&s);
    match s.char_indices().nth(MAX_SUBJECT) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// The plain-text body: the facts, one per line, the log's last lines and
/// the link.
pub fn body(n: &Notice) -> String {
    let mut out = String::new();
    let mut fact = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            out.push_str(&format!("{k:<11} {}\n", clean_line(&v)));
        }
    };
    fact("Event:", Some(n.event.clone()));
    fact("Package:", n.nevr.clone().or_else(|| n.package.clone()));
    fact("Target:", n.target.clone());
    fact("State:", n.state.clone());
    fact("Arch:", n.arch.clone());
    fact(
        "Duration:",
        n.duration_secs
            .map(|d| format!("{}m{:02}s", d / 60, d % 60)),
    );
    fact("Reason:", n.reason.clone());
    fact("Build:", n.build.map(|b| b.to_string()));
    fact("Job:", n.job.map(|j| j.to_string()));
    fact("Worker:", n.worker.clone());
    fact("Submitter:", n.submitter.clone());
    fact("Source:", n.source.as_ref().map(|s| s.to_string()));
    fact("Repository:", n.repository.clone());
    fact("Time:", Some(n.time.clone()));
    fact("Event id:", Some(n.id.clone()));
    if !n.log_tail.is_empty() {
        out.push_str("\nLast lines of the log:\n\n");
        for l in &n.log_tail {
            let l: String = l
                .chars()
                .filter(|c| *c == '\t' || !c.is_control())
                .collect();
            out.push_str(&format!("    {l}\n"));
        }
    }
    if let Some(u) = &n.url {
        out.push_str(&format!("\n{}\n", clean_line(u)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice() -> Notice {
        Notice {
            id: "ev-1".into(),
            event: "build.failed".into(),
            time: "2026-01-01T00:00:00Z".into(),
            target: Some("c9".into()),
            package: Some("bash".into()),
            nevr: Some("bash-5.2-1\r\nBcc: x@evil.org".into()),
            build: Some(42),
            job: None,
            arch: None,
            state: Some("failed".into()),
            submitter: None,
            source: None,
            worker: None,
            duration_secs: Some(125),
            reason: Some("rpmbuild failed".into()),
            repository: None,
            log_tail: vec!["error: x\x1b[31m".into()],
            url: Some("https://kiln.example.org:8443/builds/42".into()),
            release: None,
            channel: None,
            version: None,
        }
    }

    #[test]
    fn headers_and_body() {
        let n = notice();
        assert_eq!(
            subject(&n),
            "[kiln] bash-5.2-1  Bcc: x@evil.org: build.failed on c9"
        );
        assert_eq!(message_id(&n), "<ev-1@kiln>");
        assert_eq!(
            thread_id(&n).as_deref(),
            Some("<build-42@kiln.example.org>")
        );
        let mut m = n.clone();
        m.id = "a b@c>".into();
        assert_eq!(message_id(&m), "<a=20b=40c=3E@kiln>");
        m.url = None;
        assert_eq!(thread_id(&m).as_deref(), Some("<build-42@kiln>"));
        let b = body(&n);
        assert!(b.contains("Duration:   2m05s\n"), "{b}");
        assert!(b.contains("    error: x[31m\n"), "{b}");
        assert!(b.ends_with("https://kiln.example.org:8443/builds/42\n"));
        let email = Email::new(EmailConfig {
            server: "127.0.0.1".into(),
            port: 25,
            tls: SmtpTls::None,
            ca_file: None,
            username: None,
            password: None,
            from: "Kiln <kiln@example.org>".into(),
            to: vec!["a@example.org".into()],
        })
        .unwrap();
        let raw =
            String::from_utf8(email.message(&n, email.to.clone()).unwrap().formatted()).unwrap();
        let head = raw.split("\r\n\r\n").next().unwrap();
        assert!(!head.to_ascii_lowercase().contains("\r\nbcc:"), "{head}");
        assert!(head.contains("Message-ID: <ev-1@kiln>"), "{head}");
    }

    #[test]
    fn bad_addresses() {
        let cfg = EmailConfig {
            server: "smtp.example.org".into(),
            port: 587,
            tls: SmtpTls::StartTls,
            ca_file: None,
            username: None,
            password: None,
            from: "kiln@example.org".into(),
            to: vec!["not an address".into()],
        };
        assert!(Email::new(cfg.clone()).is_err());
        assert!(Email::new(EmailConfig {
            to: vec!["a@b.org\r\nBcc: c@d.org".into()],
            ..cfg.clone()
        })
        .is_err());
        assert!(Email::new(EmailConfig { to: vec![], ..cfg }).is_ok());
    }
}
