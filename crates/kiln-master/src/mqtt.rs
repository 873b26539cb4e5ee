//! The MQTT remote trigger (Reimzul's): signed build requests on
//! `PREFIX/trigger`.
//!
//! With an `[mqtt]` table in the master's configuration the master keeps one
//! MQTT 3.1.1 connection to the broker ([`spawn`]): a persistent session
//! (`clean_session = false`, so QoS 1 triggers sent while the master is away
//! wait at the broker), a QoS 1 subscription to `PREFIX/trigger` made again
//! on every connection (a broker that lost its state, or a new session, has
//! no subscription: rumqttc does not resubscribe by itself), and reconnection
//! forever with a backoff of 1 s doubling to 60 s, back to 1 s once
//! connected. A broker that is down when the master starts delays nothing:
//! the connection is a task of its own.
//!
//! A trigger is a JSON object (at most [`MAX_PAYLOAD`] bytes):
//!
//! ```json
//! {"project": "bash", "ref": "main", "mode": "ci", "id": "7f3c…", "hmac": "<hex>"}
//! ```
//!
//! `ref` and `mode` (`ci` or `release`) may be left out (the project's own
//! ref; release for a tag, else the project's mode); `id` is the delivery id
//! (a redelivered id starts nothing new). `hmac` is the lower- or upper-case
//! hex HMAC-SHA256, under the project's secret, of the canonical string
//! ([`canonical_trigger`])
//!
//! ```text
//! PROJECT "\n" REF "\n" MODE "\n" ID
//! ```
//!
//! where an absent (or empty) `ref` or `mode` is the empty string; no field
//! may hold a control character, so the string has exactly three `\n`.
//! [`sign_trigger`] makes it, [`trigger_payload`] a whole message. Anything
//! else (not JSON, a field too many, an unknown project or one without a
//! secret, a missing or bad `hmac`, a retained message, another topic) is
//! logged and ignored.
//!
//! Messages are acknowledged (PUBACK) only once their trigger was handled,
//! so a master that stops while handling one gets it again from its session;
//! the delivery id makes that harmless.

use std::future::Future;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_core::git::{GitMode, TriggerKind};
use kiln_core::sig::{hmac_sha256_hex, verify_hmac_sha256_hex};
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, StateError, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::project::{self, TriggerRequest};
use crate::Core;

/// The largest trigger message taken, in bytes; a larger one is ignored.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The largest MQTT packet read. A bigger one breaks the connection (rumqttc
/// cannot skip it), so the next connection drops the session that holds it
/// (see [`run`]); anything between [`MAX_PAYLOAD`] and this is read and
/// ignored.
const MAX_PACKET: usize = 256 << 10;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Messages handled at once; more wait for their turn.
const MAX_RUNNING: usize = 16;
/// Messages handled or waiting; past that a message is dropped. QoS 1
/// messages never get there: they are acknowledged only once handled, so
/// the broker's in-flight window (20 by default in mosquitto) holds them
/// back; this bounds a flood of QoS 0 ones.
const MAX_QUEUED: usize = 256;
/// Longest `project` and `id` taken.
const MAX_NAME: usize = 256;
/// Longest `ref` taken.
const MAX_REF: usize = 1024;

/// The master's `[mqtt]` table.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// The broker: `mqtt://HOST[:PORT]` (plain TCP, port 1883 by default)
    /// or `mqtts://HOST[:PORT]` (TLS, 8883). An IPv6 address in brackets.
    pub url: String,
    /// The MQTT client id, and so the name of the persistent session at the
    /// broker: two masters must not share one.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The password (needs `username`); or `password_file`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A file holding the password (surrounding white space trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// PEM certificates the broker's certificate must chain to (`mqtts://`
    /// only, and required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The master's certificate (PEM) for brokers that ask for one
    /// (`mqtts://` only, with `client_key_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// Topics are `PREFIX/…`: the master reads `PREFIX/trigger`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Seconds between pings when nothing else is sent (1 to 65535).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
}

fn default_client_id() -> String {
    "kiln-master".to_string()
}

fn default_prefix() -> String {
    "kiln".to_string()
}

fn default_keep_alive() -> u64 {
    30
}

impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .field("prefix", &self.prefix)
            .field("keep_alive_secs", &self.keep_alive_secs)
            .finish()
    }
}

/// Where the broker is, from [`MqttConfig::url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub tls: bool,
    /// A DNS name, an IPv4 address or an IPv6 address (without brackets).
    pub host: String,
    pub port: u16,
}

/// Parse a broker URL: `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`.
pub fn parse_broker_url(url: &str) -> Result<Broker, String> {
    let bad = |why: &str| format!("url {url:?}: {why}");
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("has white space or a control character"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad(
            "not a URL: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]",
        ));
    };
    let tls = match scheme {
        "mqtt" => false,
        "mqtts" => true,
        _ => {
            return Err(bad(&format!(
                "unsupported scheme {scheme:?}: use mqtt:// (TCP) or mqtts:// (TLS)"
            )))
        }
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(bad(
            "credentials are not taken in the URL: set username and password or password_file",
        ));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(bad("a broker URL has no path, query or fragment"));
    }
    if !rest.starts_with('[') && rest.matches(':').count() > 1 {
        return Err(bad("an IPv6 address goes in brackets: mqtt://[ADDR]:PORT"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Err(bad("an IPv6 address lacks its closing ']'"));
        };
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(bad(&format!("{addr:?} is not an IPv6 address")));
        }
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(bad("expected ':PORT' after the IPv6 address")),
            },
        };
        (addr, port)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if !rest.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(bad(&format!(
            "{host:?} is not a host name or address (an IPv6 address goes in brackets)"
        )));
    }
    let port = match port {
        None => {
            if tls {
                8883
            } else {
                1883
            }
        }
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(bad(&format!("bad port {p:?} (1 to 65535)"))),
        },
    };
    Ok(Broker {
        tls,
        host: host.to_string(),
        port,
    })
}

impl MqttConfig {
    /// A configuration with every default, for the broker at `url`.
    pub fn new(url: &str) -> MqttConfig {
        MqttConfig {
            url: url.to_string(),
            client_id: default_client_id(),
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            prefix: default_prefix(),
            keep_alive_secs: default_keep_alive(),
        }
    }

    /// The topic triggers are read from: `PREFIX/trigger`.
    pub fn trigger_topic(&self) -> String {
        format!("{}/trigger", self.prefix)
    }

    /// Check every value, then read the files it names (password, CA,
    /// client certificate and key), so a mistake stops the master at start
    /// rather than showing as a connection that never comes up.
    pub fn validate(&self) -> Result<(), String> {
        self.options().map(drop)
    }

    /// The checks of [`Self::validate`] that read no file.
    fn check(&self) -> Result<Broker, String> {
        let broker = parse_broker_url(&self.url)?;
        let id = &self.client_id;
        if id.is_empty() {
            return Err("client_id is empty (a persistent session needs one)".into());
        }
        if id.len() > 256 || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "client_id {id:?}: at most 256 bytes, no white space or control character"
            ));
        }
        let p = &self.prefix;
        if p.is_empty() {
            return Err("prefix is empty (topics are PREFIX/trigger)".into());
        }
        if p.contains(['+', '#']) || p.chars().any(char::is_control) {
            return Err(format!(
                "prefix {p:?}: no wildcard ('+', '#') or control character"
            ));
        }
        if p.starts_with('$') {
            return Err(format!(
                "prefix {p:?}: topics starting with '$' are the broker's"
            ));
        }
        if p.ends_with('/') {
            return Err(format!(
                "prefix {p:?} ends with '/' (the topic would be {:?})",
                self.trigger_topic()
            ));
        }
        if p.len() > 1024 {
            return Err("prefix is longer than 1024 bytes".into());
        }
        if !(1..=65535).contains(&self.keep_alive_secs) {
            return Err(format!(
                "keep_alive_secs = {}: between 1 and 65535",
                self.keep_alive_secs
            ));
        }
        if let Some(u) = &self.username {
            if u.is_empty() || u.chars().any(char::is_control) {
                return Err(format!("username {u:?}: not empty, no control character"));
            }
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err("password and password_file are both set: keep one".into());
        }
        if (self.password.is_some() || self.password_file.is_some()) && self.username.is_none() {
            return Err("a password needs a username (MQTT sends no password alone)".into());
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(
                "client_cert_file and client_key_file go together: set both or neither".into(),
            );
        }
        if broker.tls {
            if self.ca_file.is_none() {
                return Err(format!(
                    "url {:?} is mqtts:// but ca_file is not set: name the PEM file of \
                     the CA that signed the broker's certificate",
                    self.url
                ));
            }
        } else {
            for (key, set) in [
                ("ca_file", self.ca_file.is_some()),
                ("client_cert_file", self.client_cert_file.is_some()),
                ("client_key_file", self.client_key_file.is_some()),
            ] {
                if set {
                    return Err(format!(
                        "{key} is set but url {:?} is plain mqtt://: use mqtts:// for TLS",
                        self.url
                    ));
                }
            }
        }
        Ok(broker)
    }

    /// The client's options, files read.
    fn options(&self) -> Result<MqttOptions, String> {
        let broker = self.check()?;
        let mut o = MqttOptions::new(self.client_id.clone(), broker.host.clone(), broker.port);
        o.set_keep_alive(Duration::from_secs(self.keep_alive_secs))
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if let Some(user) = &self.username {
            let password = match (&self.password, &self.password_file) {
                (Some(p), _) => p.clone(),
                (None, Some(f)) => read_password(f)?,
                (None, None) => String::new(),
            };
            o.set_credentials(user.clone(), password);
        }
        if broker.tls {
            let tls = self.tls_config()?;
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )));
        }
        Ok(o)
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &self.ca_file {
            for cert in read_certs("ca_file", ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_root_certificates(roots);
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs("client_cert_file", cert)?;
                let pem = read_file("client_key_file", key)?;
                let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    format!(
                        "client_key_file {}: no PEM private key in it ({e})",
                        key.display()
                    )
                })?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| format!("client_cert_file and client_key_file: {e}"))
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key} {}: {e}", path.display()))
}

fn read_password(path: &Path) -> Result<String, String> {
    let bytes = read_file("password_file", path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("password_file {}: not UTF-8", path.display()))?;
    let password = text.trim();
    if password.is_empty() {
        return Err(format!("password_file {} is empty", path.display()));
    }
    Ok(password.to_string())
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

// ---------------------------------------------------------------------------
// The signed trigger.

/// The string a trigger's `hmac` signs: `project`, `git_ref`, `mode` and
/// `id` joined by `"\n"` (an absent ref or mode is the empty string).
pub fn canonical_trigger(project: &str, git_ref: &str, mode: &str, id: &str) -> String {
    format!("{project}\n{git_ref}\n{mode}\n{id}")
}

/// The `hmac` of a trigger: the lower-case hex HMAC-SHA256 of
/// [`canonical_trigger`] under the project's secret.
pub fn sign_trigger(secret: &str, project: &str, git_ref: &str, mode: &str, id: &str) -> String {
    hmac_sha256_hex(
        secret.as_bytes(),
        canonical_trigger(project, git_ref, mode, id).as_bytes(),
    )
}

/// A whole signed trigger message (the JSON to publish on
/// `PREFIX/trigger`).
pub fn trigger_payload(
    secret: &str,
    project: &str,
    git_ref: Option<&str>,
    mode: Option<&str>,
    id: &str,
) -> String {
    let hmac = sign_trigger(
        secret,
        project,
        git_ref.unwrap_or(""),
        mode.unwrap_or(""),
        id,
    );
    let payload = Payload {
        project: project.to_string(),
        git_ref: git_ref.map(str::to_string),
        mode: mode.map(str::to_string),
        id: id.to_string(),
        hmac: Some(hmac),
    };
    // A struct of strings always serializes.
    serde_json::to_string(&payload).unwrap_or_default()
}

/// The message on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    project: String,
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    git_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hmac: Option<String>,
}

/// A trigger whose shape is checked (not its signature yet: see
/// [`SignedTrigger::verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTrigger {
    pub project: String,
    pub git_ref: Option<String>,
    pub mode: Option<GitMode>,
    /// The delivery id.
    pub id: String,
    /// The hex signature as sent.
    pub hmac: String,
}

/// Why a message starts nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The message's delivery id, when it had one.
    pub id: Option<String>,
    pub reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Over [`MAX_PAYLOAD`] bytes (the size).
    TooLarge(usize),
    /// Not JSON, or not a trigger's fields and values (why).
    Malformed(String),
    /// No `hmac` field (or an empty one).
    Unsigned,
    /// No project of that name has a secret (unknown, or without one).
    NoSecret(String),
    /// The `hmac` is not the project's signature of the message.
    BadSignature(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(id) = &self.id {
            write!(f, "delivery {}: ", shown(id))?;
        }
        match &self.reason {
            Reason::TooLarge(n) => write!(f, "{n} bytes, over the {MAX_PAYLOAD}-byte limit"),
            Reason::Malformed(why) => write!(f, "not a trigger: {why}"),
            Reason::Unsigned => write!(f, "not signed (no hmac field)"),
            Reason::NoSecret(p) => write!(
                f,
                "no project {} with a secret (unknown, or it has no secret)",
                shown(p)
            ),
            Reason::BadSignature(p) => write!(f, "bad signature for project {}", shown(p)),
        }
    }
}

impl std::error::Error for Rejection {}

/// Something from outside, fit for a log line: quoted, escaped and cut.
fn shown(s: &str) -> String {
    const MAX: usize = 100;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

/// Parse a trigger message and check its shape (sizes, characters, mode).
pub fn parse_trigger(payload: &[u8]) -> Result<SignedTrigger, Rejection> {
    if payload.len() > MAX_PAYLOAD {
        return Err(Rejection {
            id: None,
            reason: Reason::TooLarge(payload.len()),
        });
    }
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| Rejection {
        id: None,
        reason: Reason::Malformed(format!("not JSON: {e}")),
    })?;
    // The id, if there is one, names the message in the log whatever else
    // is wrong with it.
    let id = value.get("id").and_then(|v| v.as_str()).map(str::to_string);
    let malformed = |why: String| Rejection {
        id: id.clone(),
        reason: Reason::Malformed(why),
    };
    let p: Payload = serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
    let field = |name: &str, v: &str, max: usize| -> Result<(), Rejection> {
        if v.len() > max {
            return Err(malformed(format!("{name} is longer than {max} bytes")));
        }
        if v.chars().any(char::is_control) {
            return Err(malformed(format!("{name} has a control character")));
        }
        Ok(())
    };
    if p.id.is_empty() {
        return Err(malformed("id is empty".into()));
    }
    field("id", &p.id, MAX_NAME)?;
    if p.project.is_empty() {
        return Err(malformed("project is empty".into()));
    }
    field("project", &p.project, MAX_NAME)?;
    let git_ref = p.git_ref.filter(|r| !r.is_empty());
    if let Some(r) = &git_ref {
        field("ref", r, MAX_REF)?;
    }
    let mode = match p.mode.as_deref() {
        None | Some("") => None,
        Some(m) => Some(m.parse::<GitMode>().map_err(malformed)?),
    };
    let hmac = match p.hmac {
        Some(h) if !h.trim().is_empty() => h,
        _ => {
            return Err(Rejection {
                id,
                reason: Reason::Unsigned,
            })
        }
    };
    Ok(SignedTrigger {
        project: p.project,
        git_ref,
        mode,
        id: p.id,
        hmac,
    })
}

impl SignedTrigger {
    /// The string its `hmac` must sign ([`canonical_trigger`]).
    pub fn canonical(&self) -> String {
        canonical_trigger(
            &self.project,
            self.git_ref.as_deref().unwrap_or(""),
            self.mode.map(GitMode::as_str).unwrap_or(""),
            &self.id,
        )
    }

    /// Check the signature against the project's secret, from `secrets`
    /// (project, secret), in constant time.
    pub fn verify(&self, secrets: &[(String, String)]) -> Result<(), Rejection> {
        let reject = |reason| Rejection {
            id: Some(self.id.clone()),
            reason,
        };
        let Some((_, secret)) = secrets
            .iter()
            .find(|(p, s)| *p == self.project && !s.is_empty())
        else {
            return Err(reject(Reason::NoSecret(self.project.clone())));
        };
        if verify_hmac_sha256_hex(secret.as_bytes(), self.canonical().as_bytes(), &self.hmac) {
            Ok(())
        } else {
            Err(reject(Reason::BadSignature(self.project.clone())))
        }
    }

    /// The trigger use case's request for it.
    pub fn request(&self, sender: &str) -> TriggerRequest {
        TriggerRequest {
            project: self.project.clone(),
            git_ref: self.git_ref.clone(),
            commit: None,
            mode: self.mode,
            kind: TriggerKind::Mqtt,
            delivery: Some(self.id.clone()),
            sender: Some(sender.to_string()),
        }
    }
}

/// Parse a message and check its signature: the trigger it carries, or why
/// it starts nothing.
pub fn check_trigger(
    payload: &[u8],
    secrets: &[(String, String)],
) -> Result<SignedTrigger, Rejection> {
    let t = parse_trigger(payload)?;
    t.verify(secrets)?;
    Ok(t)
}

// ---------------------------------------------------------------------------
// The connection.

/// A message received on a subscribed topic, as [`run`] hands it over.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: bytes::Bytes,
    /// Sent from the broker's retained store (at subscription), not live.
    pub retain: bool,
    /// A redelivery of a message not acknowledged before.
    pub dup: bool,
}

/// Start the MQTT trigger: a task that connects to the broker and keeps
/// connecting, and starts a build for every signed trigger (see the module
/// documentation). Returns at once; the task runs until aborted.
pub fn spawn(core: Arc<Core>, cfg: MqttConfig) -> tokio::task::JoinHandle<()> {
    let topic = cfg.trigger_topic();
    let sender = format!("mqtt:{topic}");
    let handler = move |msg: Message| {
        let core = core.clone();
        let topic = topic.clone();
        let sender = sender.clone();
        async move { on_trigger(&core, &topic, &sender, msg).await }
    };
    tokio::spawn(run(cfg, handler))
}

/// One message on the trigger topic: checked, then handed to the trigger
/// use case.
async fn on_trigger(core: &Arc<Core>, topic: &str, sender: &str, msg: Message) {
    if msg.topic != topic {
        // A subscription of an earlier configuration that the persistent
        // session still holds.
        tracing::warn!(
            "mqtt: message on {} ignored (triggers are read from {topic})",
            shown(&msg.topic)
        );
        return;
    }
    if msg.retain {
        tracing::warn!(
            "mqtt: retained message on {topic} ignored (a retained trigger would start a \
             build at every subscription; publish triggers without the retain flag)"
        );
        return;
    }
    let t = match parse_trigger(&msg.payload) {
        Ok(t) => t,
        Err(r) => {
            tracing::warn!("mqtt: trigger ignored: {r}");
            return;
        }
    };
    let secrets = match project::secrets(core).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                "mqtt: trigger ignored: delivery {}: cannot read the projects' secrets: {e}",
                shown(&t.id)
            );
            return;
        }
    };
    if let Err(r) = t.verify(&secrets) {
        tracing::warn!("mqtt: trigger ignored: {r}");
        return;
    }
    let what = format!("delivery {} of project {}", shown(&t.id), shown(&t.project));
    match project::trigger(core, t.request(sender)).await {
        Ok(done) if done.duplicate => {
            tracing::info!("mqtt: {what} was seen before: nothing new started");
        }
        Ok(done) => {
            let ids: Vec<String> = done.builds.iter().map(|b| b.id.to_string()).collect();
            tracing::info!("mqtt: {what}: build {} queued", ids.join(", "));
            for s in &done.superseded {
                tracing::info!("mqtt: {what}: replaced queued build {s}");
            }
        }
        Err(e) => tracing::warn!("mqtt: {what} started nothing: {e}"),
    }
}

/// Whether a connection error means the broker sent a packet over
/// [`MAX_PACKET`] (which, at QoS 1 in a persistent session, it would send
/// again at every reconnection).
fn too_large(e: &ConnectionError) -> bool {
    matches!(
        e,
        ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(_)
        ))
    )
}

/// The connection loop: connect (a persistent session), subscribe to
/// `PREFIX/trigger` at QoS 1 after every connection, hand every message to
/// `handler` in a task of its own (at most 16 at once, 256 waiting; more
/// are dropped) and acknowledge it once the handler is done, and reconnect with backoff (1 s doubling to
/// 60 s; 1 s again once connected) forever. A message too large to read
/// breaks the connection; the next one is then made with a clean session
/// (dropping what the broker queued, that message with it) and left at
/// once for a persistent one again, so one such message cannot wedge the
/// trigger.
pub async fn run<F, Fut>(cfg: MqttConfig, handler: F)
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let url = cfg.url.clone();
    let topic = cfg.trigger_topic();
    let mut backoff = BACKOFF_MIN;
    // Checked at start by `validate`; a file that went away since is
    // retried like a broker that is down.
    let options = loop {
        match cfg.options() {
            Ok(o) => break o,
            Err(e) => {
                tracing::error!("mqtt: {e}; retrying in {} s", backoff.as_secs());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    };
    backoff = BACKOFF_MIN;
    let (client, mut events) = AsyncClient::new(options, 16);
    let handler = Arc::new(handler);
    let queued = Arc::new(Semaphore::new(MAX_QUEUED));
    let running = Arc::new(Semaphore::new(MAX_RUNNING));
    let mut connected = false;
    let mut failures: u32 = 0;
    let mut drop_session = false;
    let mut subscribe = false;
    tracing::info!("mqtt: connecting to {url} for triggers on {topic}");
    loop {
        let event = events.poll().await;
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = BACKOFF_MIN;
                if drop_session {
                    // Connected with a clean session: the broker forgot the
                    // message too large to read. Leave it for a persistent
                    // session again.
                    drop_session = false;
                    events.mqtt_options.set_clean_session(false);
                    events.clean();
                    tracing::info!(
                        "mqtt: the session holding the oversized message is dropped; \
                         reconnecting with a persistent session"
                    );
                    continue;
                }
                if failures > 0 {
                    tracing::info!(
                        "mqtt: connected to {url} after {failures} failed attempt{} \
                         (session present: {})",
                        if failures == 1 { "" } else { "s" },
                        ack.session_present
                    );
                } else {
                    tracing::info!(
                        "mqtt: connected to {url} (session present: {})",
                        ack.session_present
                    );
                }
                connected = true;
                failures = 0;
                // Every time, whatever session_present says: a broker that
                // restarted without persistence says false, but one that
                // lost a subscription some other way may not.
                subscribe = true;
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    tracing::warn!(
                        "mqtt: the broker refused the subscription to {topic} (its ACL?); \
                         no trigger will arrive"
                    );
                } else {
                    tracing::info!("mqtt: subscribed to {topic}");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let msg = Message {
                    topic: p.topic.clone(),
                    payload: p.payload.clone(),
                    retain: p.retain,
                    dup: p.dup,
                };
                match queued.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let handler = handler.clone();
                        let client = client.clone();
                        let running = running.clone();
                        tokio::spawn(async move {
                            let turn = running.acquire_owned().await;
                            handler(msg).await;
                            drop(turn);
                            // After a reconnection this acknowledges a
                            // packet id of the old connection: the broker
                            // ignores it and sends the message again (the
                            // delivery id makes that harmless).
                            if let Err(e) = client.ack(&p).await {
                                tracing::debug!("mqtt: cannot acknowledge a message: {e}");
                            }
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tracing::warn!(
                            "mqtt: {MAX_QUEUED} messages are being handled or waiting: \
                             a message on {} dropped",
                            shown(&msg.topic)
                        );
                        if let Err(e) = client.try_ack(&p) {
                            tracing::debug!("mqtt: cannot acknowledge a message: {e}");
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                if too_large(&e) {
                    tracing::warn!(
                        "mqtt: the broker sent a message over {MAX_PACKET} bytes, which cannot \
                         be read: dropping the session that holds it (messages queued for the \
                         master meanwhile are lost)"
                    );
                    events.mqtt_options.set_clean_session(true);
                    drop_session = true;
                }
                if connected {
                    tracing::warn!("mqtt: lost the connection to {url}: {e}; reconnecting");
                    connected = false;
                } else {
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        tracing::warn!(
                            "mqtt: cannot connect to {url}: {e}; retrying (every {} s at most)",
                            BACKOFF_MAX.as_secs()
                        );
                    } else {
                        tracing::debug!(
                            "mqtt: cannot connect to {url} (attempt {}): {e}",
                            failures.saturating_add(1)
                        );
                    }
                }
                subscribe = false;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        }
        // Not awaited: the request channel is emptied only by `poll`, so a
        // full one is tried again after the next event.
        if subscribe {
            match client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                Ok(()) => subscribe = false,
                Err(e) => tracing::debug!("mqtt: subscription deferred: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn secrets() -> Vec<(String, String)> {
        vec![
            ("bash".to_string(), "s3cret".to_string()),
            ("zsh".to_string(), "other".to_string()),
        ]
    }

    fn from_json(json: &str) -> Result<MqttConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    fn err_of(cfg: &MqttConfig) -> String {
        match cfg.validate() {
            Ok(()) => panic!("{cfg:?} passed validation"),
            Err(e) => e,
        }
    }

    // ---- configuration

    #[test]
    fn defaults_and_unknown_keys() {
        let cfg = from_json(r#"{"url": "mqtt://broker.example.org"}"#).unwrap();
        assert_eq!(cfg, MqttConfig::new("mqtt://broker.example.org"));
        assert_eq!(cfg.client_id, "kiln-master");
        assert_eq!(cfg.prefix, "kiln");
        assert_eq!(cfg.keep_alive_secs, 30);
        assert_eq!(cfg.trigger_topic(), "kiln/trigger");
        cfg.validate().unwrap();
        let e = from_json(r#"{"url": "mqtt://b", "topic": "x"}"#).unwrap_err();
        assert!(e.contains("unknown field `topic`"), "{e}");
        let e = from_json(r#"{"client_id": "x"}"#).unwrap_err();
        assert!(e.contains("missing field `url`"), "{e}");
        // The password stays out of logs.
        let mut cfg = MqttConfig::new("mqtt://b");
        cfg.username = Some("kiln".into());
        cfg.password = Some("hunter2".into());
        assert!(!format!("{cfg:?}").contains("hunter2"));
        cfg.validate().unwrap();
    }

    #[test]
    fn broker_urls() {
        for (url, tls, host, port) in [
            ("mqtt://h", false, "h", 1883),
            ("mqtts://h", true, "h", 8883),
            ("mqtt://127.0.0.1:1884/", false, "127.0.0.1", 1884),
            ("mqtts://[::1]:9000", true, "::1", 9000),
            (
                "mqtt://mq-1.example.org:1883",
                false,
                "mq-1.example.org",
                1883,
            ),
        ] {
            let want = Broker {
                tls,
                host: host.to_string(),
                port,
            };
            assert_eq!(parse_broker_url(url).unwrap(), want, "{url}");
        }
        for (url, want) in [
            (
                "tcp://h:1883",
                "unsupported scheme \"tcp\": use mqtt:// (TCP) or mqtts:// (TLS)",
            ),
            ("http://h", "unsupported scheme \"http\""),
            ("ws://h", "unsupported scheme \"ws\""),
            ("MQTT://h", "unsupported scheme \"MQTT\""),
            ("h:1883", "not a URL"),
            ("mqtt://", "no host"),
            ("mqtt://:1883", "no host"),
            ("mqtt://h:0", "bad port \"0\""),
            ("mqtt://h:65536", "bad port \"65536\""),
            ("mqtt://h:", "bad port \"\""),
            ("mqtt://u:p@h", "credentials are not taken in the URL"),
            ("mqtt://h/kiln", "no path, query or fragment"),
            ("mqtt://h?x=1", "no path, query or fragment"),
            ("mqtt://::1", "an IPv6 address goes in brackets"),
            ("mqtt://fe80::1:1883", "an IPv6 address goes in brackets"),
            ("mqtt://h!x", "not a host name or address"),
            ("mqtt://[::1", "closing ']'"),
            ("mqtt://[nope]:1", "not an IPv6 address"),
            ("mqtt://h .org", "white space"),
        ] {
            let e = parse_broker_url(url).unwrap_err();
            assert!(e.contains(want), "{url}: {e}");
            assert!(e.starts_with("url "), "{e}");
            // The same through validate.
            assert_eq!(MqttConfig::new(url).validate().unwrap_err(), e);
        }
    }

    /// The error `c` fails validation with, holding each of `parts`.
    fn assert_err(c: &MqttConfig, parts: &[&str]) {
        let e = err_of(c);
        for part in parts {
            assert!(e.contains(part), "{part:?} not in {e:?}");
        }
    }

    #[test]
    fn config_checks() {
        let base = MqttConfig::new("mqtt://127.0.0.1:1883");
        type Edit = fn(&mut MqttConfig);
        let cases: &[(Edit, &str)] = &[
            (
                |c| c.url = "mqtts://broker:8883".into(),
                "is mqtts:// but ca_file is not set",
            ),
            (
                |c| {
                    c.url = "mqtts://broker:8883".into();
                    c.ca_file = Some("/nonexistent/ca.pem".into());
                },
                "ca_file /nonexistent/ca.pem: No such file",
            ),
            (
                |c| c.password = Some("p".into()),
                "a password needs a username",
            ),
            (
                |c| c.ca_file = Some("/ca.pem".into()),
                "ca_file is set but url \"mqtt://127.0.0.1:1883\" is plain",
            ),
            (
                |c| {
                    c.url = "mqtts://b".into();
                    c.ca_file = Some("/ca.pem".into());
                    c.client_cert_file = Some("/c.pem".into());
                },
                "client_cert_file and client_key_file go together",
            ),
            (
                |c| c.keep_alive_secs = 0,
                "keep_alive_secs = 0: between 1 and 65535",
            ),
            (|c| c.keep_alive_secs = 65536, "between 1 and 65535"),
            (|c| c.client_id = String::new(), "client_id is empty"),
            (|c| c.client_id = "kiln master".into(), "no white space"),
            (|c| c.username = Some(String::new()), "username \"\""),
        ];
        for (edit, want) in cases {
            let mut c = base.clone();
            edit(&mut c);
            assert_err(&c, &[want]);
        }

        let mut c = base.clone();
        c.username = Some("kiln".into());
        c.password = Some("p".into());
        c.password_file = Some("/etc/kiln/mqtt.password".into());
        assert_eq!(
            err_of(&c),
            "password and password_file are both set: keep one"
        );

        for (prefix, want) in [
            ("", "prefix is empty"),
            ("kiln/#", "no wildcard"),
            ("a+b", "no wildcard"),
            ("kiln/", "ends with '/'"),
            ("$SYS", "are the broker's"),
        ] {
            let mut c = base.clone();
            c.prefix = prefix.into();
            assert_err(&c, &[want]);
        }
        let mut c = base.clone();
        c.prefix = "site/a/kiln".into();
        c.validate().unwrap();
        assert_eq!(c.trigger_topic(), "site/a/kiln/trigger");
    }

    /// A CA made in `dir` (its certificate also in `dir/ca.pem`), and a
    /// client certificate and key from it, valid for an hour.
    fn test_pki(dir: &Path) -> (kiln_core::pki::Ca, PathBuf, (String, String)) {
        let ca = kiln_core::pki::Ca::load_or_create(&dir.join("ca")).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        let now = std::time::SystemTime::now();
        let client = ca
            .issue_client_cert_with_validity("kiln-master", 7, now, now + Duration::from_secs(3600))
            .unwrap();
        (ca, ca_file, client)
    }

    #[test]
    fn files_are_read_at_validation() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("password");
        std::fs::write(&pw, "  hunter2 \n").unwrap();
        let mut c = MqttConfig::new("mqtt://b");
        c.username = Some("kiln".into());
        c.password_file = Some(pw.clone());
        c.validate().unwrap();
        let login = c.options().unwrap().credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("kiln", "hunter2")
        );
        std::fs::write(&pw, " \n").unwrap();
        assert_err(&c, &["is empty"]);
        c.password_file = Some(dir.path().join("missing"));
        let e = err_of(&c);
        assert!(
            e.starts_with("password_file ") && e.contains("missing"),
            "{e}"
        );

        // TLS: a CA, and a client certificate from it.
        let (_ca, ca_file, (cert, key)) = test_pki(dir.path());
        let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_file, &cert).unwrap();
        std::fs::write(&key_file, &key).unwrap();
        let mut c = MqttConfig::new("mqtts://127.0.0.1:8883");
        c.ca_file = Some(ca_file.clone());
        c.validate().unwrap();
        c.client_cert_file = Some(cert_file.clone());
        c.client_key_file = Some(key_file.clone());
        c.validate().unwrap();
        // The key file holds no key.
        c.client_key_file = Some(cert_file.clone());
        assert_err(&c, &["client_key_file", "no PEM private key"]);
        // A CA file with no certificate.
        c.client_key_file = Some(key_file);
        c.ca_file = Some(pw);
        assert_err(&c, &["ca_file", "no PEM certificate"]);
    }

    // ---- signed triggers

    /// HMAC-SHA256 by RFC 2104's definition, with sha2 alone.
    fn rfc2104(key: &[u8], msg: &[u8]) -> String {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = Sha256::new()
            .chain_update(&ipad)
            .chain_update(msg)
            .finalize();
        let outer = Sha256::new()
            .chain_update(&opad)
            .chain_update(inner)
            .finalize();
        hex::encode(outer)
    }

    #[test]
    fn sign_trigger_is_hmac_sha256_of_the_canonical_string() {
        assert_eq!(
            canonical_trigger("bash", "main", "ci", "d-1"),
            "bash\nmain\nci\nd-1"
        );
        let sig = sign_trigger("s3cret", "bash", "main", "ci", "d-1");
        // printf 'bash\nmain\nci\nd-1' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            sig,
            "14f5b2d5abad41473e37f07f4e825292e1f7d328f372e303bf9c3960f46c82ee"
        );
        assert_eq!(sig, rfc2104(b"s3cret", b"bash\nmain\nci\nd-1"));
        // printf 'bash\n\n\nd-1' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            sign_trigger("s3cret", "bash", "", "", "d-1"),
            "e96de97c7320ac66279d9ca92e4466c83772ca98984ca29573bcb6bea9cc2d26"
        );
    }

    #[test]
    fn a_signed_trigger_is_taken() {
        let payload = trigger_payload("s3cret", "bash", Some("main"), Some("release"), "d-1");
        let t = check_trigger(payload.as_bytes(), &secrets()).unwrap();
        assert_eq!(
            t,
            SignedTrigger {
                project: "bash".into(),
                git_ref: Some("main".into()),
                mode: Some(GitMode::Release),
                id: "d-1".into(),
                hmac: sign_trigger("s3cret", "bash", "main", "release", "d-1"),
            }
        );
        let req = t.request("mqtt:kiln/trigger");
        assert_eq!(req.project, "bash");
        assert_eq!(req.git_ref.as_deref(), Some("main"));
        assert_eq!(req.commit, None);
        assert_eq!(req.mode, Some(GitMode::Release));
        assert_eq!(req.kind, TriggerKind::Mqtt);
        assert_eq!(req.delivery.as_deref(), Some("d-1"));
        assert_eq!(req.sender.as_deref(), Some("mqtt:kiln/trigger"));

        // ref and mode left out: empty in the signed string, None in the request.
        let payload = trigger_payload("s3cret", "bash", None, None, "d-2");
        assert_eq!(
            payload,
            format!(
                r#"{{"project":"bash","id":"d-2","hmac":"{}"}}"#,
                sign_trigger("s3cret", "bash", "", "", "d-2")
            )
        );
        let t = check_trigger(payload.as_bytes(), &secrets()).unwrap();
        assert_eq!((t.git_ref, t.mode), (None, None));

        // Written by hand, upper-case hex, explicit empty ref.
        let sig = sign_trigger("other", "zsh", "", "ci", "x").to_uppercase();
        let payload =
            format!(r#"{{"project": "zsh", "ref": "", "mode": "ci", "id": "x", "hmac": "{sig}"}}"#);
        let t = check_trigger(payload.as_bytes(), &secrets()).unwrap();
        assert_eq!((t.git_ref, t.mode), (None, Some(GitMode::Ci)));
    }

    fn rejected(payload: &str) -> Rejection {
        match check_trigger(payload.as_bytes(), &secrets()) {
            Ok(t) => panic!("{payload} was taken: {t:?}"),
            Err(r) => r,
        }
    }

    #[test]
    fn tampered_unsigned_and_foreign_triggers_are_refused() {
        let sig = sign_trigger("s3cret", "bash", "main", "ci", "d-1");
        let id = Some("d-1".to_string());
        // Each signed field changed after signing.
        for payload in [
            format!(r#"{{"project":"bash","ref":"evil","mode":"ci","id":"d-1","hmac":"{sig}"}}"#),
            format!(
                r#"{{"project":"bash","ref":"main","mode":"release","id":"d-1","hmac":"{sig}"}}"#
            ),
            format!(r#"{{"project":"bash","ref":"main","id":"d-1","hmac":"{sig}"}}"#),
            format!(r#"{{"project":"bash","ref":"main","mode":"ci","id":"d-2","hmac":"{sig}"}}"#),
        ] {
            let r = rejected(&payload);
            assert_eq!(r.reason, Reason::BadSignature("bash".into()), "{payload}");
        }
        // Another project's secret.
        let forged = trigger_payload("other", "bash", Some("main"), Some("ci"), "d-1");
        assert_eq!(
            rejected(&forged),
            Rejection {
                id: id.clone(),
                reason: Reason::BadSignature("bash".into())
            }
        );
        // Missing, null or empty hmac.
        for payload in [
            r#"{"project":"bash","ref":"main","id":"d-1"}"#,
            r#"{"project":"bash","ref":"main","id":"d-1","hmac":null}"#,
            r#"{"project":"bash","ref":"main","id":"d-1","hmac":""}"#,
        ] {
            assert_eq!(
                rejected(payload),
                Rejection {
                    id: id.clone(),
                    reason: Reason::Unsigned
                }
            );
        }
        assert_eq!(
            rejected(r#"{"project":"bash","id":"d-1","hmac":"zz"}"#).reason,
            Reason::BadSignature("bash".into())
        );
        // No such project, or one without a secret.
        let unknown = trigger_payload("s3cret", "fish", None, None, "d-3");
        let r = rejected(&unknown);
        assert_eq!(r.reason, Reason::NoSecret("fish".into()));
        assert_eq!(
            r.to_string(),
            "delivery \"d-3\": no project \"fish\" with a secret (unknown, or it has no secret)"
        );
        let no_secret = [("fish".to_string(), String::new())];
        assert_eq!(
            check_trigger(unknown.as_bytes(), &no_secret)
                .unwrap_err()
                .reason,
            Reason::NoSecret("fish".into())
        );
    }

    #[test]
    fn malformed_and_oversized_messages_are_refused() {
        let big = format!(
            r#"{{"project":"bash","id":"d","hmac":"00","ref":"{}"}}"#,
            "a".repeat(MAX_PAYLOAD)
        );
        let r = rejected(&big);
        assert_eq!(
            r,
            Rejection {
                id: None,
                reason: Reason::TooLarge(big.len())
            }
        );
        assert!(r.to_string().contains("over the 65536-byte limit"), "{r}");

        let malformed = |payload: &str, id: Option<&str>, want: &str| {
            let r = rejected(payload);
            assert_eq!(r.id.as_deref(), id, "{payload}");
            match &r.reason {
                Reason::Malformed(why) => assert!(why.contains(want), "{payload}: {why}"),
                other => panic!("{payload}: {other:?}"),
            }
        };
        for (payload, id, want) in [
            ("build bash please", None, "not JSON"),
            ("", None, "not JSON"),
            (r#"["bash"]"#, None, ""),
            (
                r#"{"project":"bash","hmac":"00"}"#,
                None,
                "missing field `id`",
            ),
            (
                r#"{"id":"d-9","hmac":"00"}"#,
                Some("d-9"),
                "missing field `project`",
            ),
            (
                r#"{"project":"bash","id":"d-9","hmac":"00","sender":"me"}"#,
                Some("d-9"),
                "unknown field `sender`",
            ),
            (
                r#"{"project":"bash","id":"d-9","mode":"nightly","hmac":"00"}"#,
                Some("d-9"),
                "unknown mode \"nightly\"",
            ),
            (
                r#"{"project":"bash","id":"d-9","ref":7,"hmac":"00"}"#,
                Some("d-9"),
                "invalid type",
            ),
            (
                r#"{"project":"bash","id":"","hmac":"00"}"#,
                Some(""),
                "id is empty",
            ),
            (
                r#"{"project":"","id":"d","hmac":"00"}"#,
                Some("d"),
                "project is empty",
            ),
            // A newline would make the signed string ambiguous.
            (
                r#"{"project":"bash\nmain","id":"d","hmac":"00"}"#,
                Some("d"),
                "project has a control character",
            ),
            (
                r#"{"project":"bash","ref":"a\u0000","id":"d","hmac":"00"}"#,
                Some("d"),
                "ref has a control character",
            ),
        ] {
            malformed(payload, id, want);
        }
        malformed(
            &format!(
                r#"{{"project":"bash","id":"{}","hmac":"00"}}"#,
                "i".repeat(300)
            ),
            Some(&"i".repeat(300)),
            "id is longer than 256 bytes",
        );
        // A long id is cut in the log line.
        let r = rejected(&format!(
            r#"{{"project":"bash","id":"{}"}}"#,
            "i".repeat(300)
        ));
        assert!(r.to_string().len() < 200, "{r}");
    }

    // ---- against a real broker

    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::sync::mpsc;
    use tokio::time::{sleep, timeout, Instant};

    /// A `mosquitto` of the test's own on a loopback port, stopped by PID
    /// when dropped.
    struct Mosquitto {
        child: Option<Child>,
        port: u16,
        dir: tempfile::TempDir,
        starts: u32,
    }

    fn mosquitto_bin() -> PathBuf {
        for p in [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ] {
            if Path::new(p).exists() {
                return PathBuf::from(p);
            }
        }
        panic!("mosquitto is not installed (Debian: apt-get install mosquitto); the MQTT tests need it");
    }

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    impl Mosquitto {
        /// A broker on a free port with `extra` configuration lines.
        fn new(extra: &str) -> Mosquitto {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let conf = format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra}"
            );
            std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
            Mosquitto {
                child: None,
                port,
                dir,
                starts: 0,
            }
        }

        fn log(&self) -> String {
            (1..=self.starts)
                .map(|n| {
                    std::fs::read_to_string(self.dir.path().join(format!("mosquitto-{n}.log")))
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join("\n")
        }

        /// Start it (again, on the same port) and wait until it listens.
        async fn start(&mut self) {
            assert!(self.child.is_none());
            let bin = mosquitto_bin();
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                self.starts += 1;
                let log = std::fs::File::create(
                    self.dir
                        .path()
                        .join(format!("mosquitto-{}.log", self.starts)),
                )
                .unwrap();
                let mut child = Command::new(&bin)
                    .arg("-c")
                    .arg(self.dir.path().join("mosquitto.conf"))
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .unwrap();
                loop {
                    if let Some(status) = child.try_wait().unwrap() {
                        // The port may not be free again yet: try again.
                        assert!(
                            Instant::now() < deadline,
                            "mosquitto exited ({status}):\n{}",
                            self.log()
                        );
                        sleep(Duration::from_millis(200)).await;
                        break;
                    }
                    if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                        .await
                        .is_ok()
                    {
                        self.child = Some(child);
                        return;
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "mosquitto does not listen on {}:\n{}",
                            self.port,
                            self.log()
                        );
                    }
                    sleep(Duration::from_millis(20)).await;
                }
            }
        }

        fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for Mosquitto {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn unique(what: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "kiln-test-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Publish one message (QoS 1, acknowledged by the broker) on the
    /// broker's port `port`.
    async fn publish(port: u16, topic: &str, payload: Vec<u8>, retain: bool) {
        let mut o = MqttOptions::new(unique("pub"), "127.0.0.1", port);
        o.set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut events) = AsyncClient::new(o, 10);
        client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
        timeout(Duration::from_secs(10), async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => break,
                    Ok(_) => {}
                    Err(e) => panic!("publisher: {e}"),
                }
            }
        })
        .await
        .expect("no PUBACK from the broker");
        client.disconnect().await.unwrap();
        let _ = timeout(Duration::from_secs(1), events.poll()).await;
    }

    type Rx = mpsc::UnboundedReceiver<Message>;

    /// Start the connection loop with a handler that forwards what it gets.
    fn listen(cfg: MqttConfig) -> (tokio::task::JoinHandle<()>, Rx) {
        listen_holding(cfg, |_| false)
    }

    /// The same, with a handler that sits for an hour on the messages
    /// `hold` picks before forwarding them.
    fn listen_holding(
        cfg: MqttConfig,
        hold: fn(&Message) -> bool,
    ) -> (tokio::task::JoinHandle<()>, Rx) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(run(cfg, move |msg| {
            let tx = tx.clone();
            async move {
                if hold(&msg) {
                    sleep(Duration::from_secs(3600)).await;
                }
                let _ = tx.send(msg);
            }
        }));
        (handle, rx)
    }

    /// Stop a loop and wait until it is gone.
    async fn stop(task: tokio::task::JoinHandle<()>) {
        task.abort();
        let _ = task.await;
    }

    fn test_config(port: u16) -> MqttConfig {
        let mut cfg = MqttConfig::new(&format!("mqtt://127.0.0.1:{port}"));
        cfg.client_id = unique("master");
        cfg.prefix = unique("prefix");
        cfg.keep_alive_secs = 5;
        cfg.validate().unwrap();
        cfg
    }

    fn text(m: &Message) -> String {
        String::from_utf8_lossy(&m.payload).into_owned()
    }

    /// The next message the loop hands over on `rx`, within `secs` seconds.
    async fn next(rx: &mut Rx, secs: u64, what: &str) -> Message {
        timeout(Duration::from_secs(secs), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: nothing within {secs} s"))
            .expect("the loop's channel closed")
    }

    /// The test's publisher on a broker's trigger topic, and what the loop
    /// handed over while it waited for something else.
    struct Probe {
        port: u16,
        topic: String,
        seen: Vec<Message>,
    }

    impl Probe {
        fn new(port: u16, cfg: &MqttConfig) -> Probe {
            Probe {
                port,
                topic: cfg.trigger_topic(),
                seen: Vec::new(),
            }
        }

        /// Publish `payload` on the topic (live, not retained).
        async fn send(&self, payload: impl Into<Vec<u8>>) {
            publish(self.port, &self.topic, payload.into(), false).await;
        }

        fn seen_texts(&self) -> Vec<String> {
            self.seen.iter().map(text).collect()
        }

        /// Publish `TAG-1`, `TAG-2`… until the loop hands one over on `rx`
        /// (the subscription may not be there yet): that message, on the
        /// topic. Messages received meanwhile go to `seen`.
        async fn until(&mut self, rx: &mut Rx, tag: &str, secs: u64) -> Message {
            let within = Duration::from_secs(secs);
            let deadline = Instant::now() + within;
            for n in 1.. {
                assert!(
                    Instant::now() < deadline,
                    "nothing tagged {tag} received in {within:?}; got {:?}",
                    self.seen_texts()
                );
                self.send(format!("{tag}-{n}")).await;
                let wait = Instant::now() + Duration::from_millis(300);
                while let Ok(Some(m)) = timeout(wait - Instant::now(), rx.recv()).await {
                    if text(&m).starts_with(&format!("{tag}-")) {
                        assert_eq!(m.topic, self.topic);
                        return m;
                    }
                    self.seen.push(m);
                }
            }
            unreachable!()
        }
    }

    /// A broker started, a loop configuration for it, a probe on it.
    async fn start_broker() -> (Mosquitto, MqttConfig, Probe) {
        let mut broker = Mosquitto::new("");
        broker.start().await;
        let cfg = test_config(broker.port);
        let probe = Probe::new(broker.port, &cfg);
        (broker, cfg, probe)
    }

    /// The broker is down when the loop starts, comes up later, is killed
    /// and started again on the same port (knowing nothing: no
    /// persistence): the loop connects, subscribes, and subscribes again.
    #[tokio::test]
    async fn subscribes_again_after_every_reconnection() {
        let mut broker = Mosquitto::new("");
        let cfg = test_config(broker.port);
        let mut probe = Probe::new(broker.port, &cfg);
        let (task, mut rx) = listen(cfg);
        // Down at start: the loop keeps trying (and `spawn` returned at once).
        sleep(Duration::from_millis(1500)).await;
        assert!(!task.is_finished());
        broker.start().await;
        let m = probe.until(&mut rx, "first", 20).await;
        assert!(!m.retain);

        for round in 1..=2 {
            broker.stop();
            // Gone for a while: a few reconnection attempts fail.
            sleep(Duration::from_millis(1500)).await;
            broker.start().await;
            let started = Instant::now();
            probe.until(&mut rx, &format!("round{round}"), 30).await;
            // Backoff capped by the failures of ~1.5 s down: well under 60 s.
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{:?}",
                started.elapsed()
            );
        }
        assert!(!task.is_finished());
        task.abort();
        let log = broker.log();
        assert!(log.contains(" as kiln-test-master-"), "{log}");
    }

    /// A persistent session: QoS 1 messages sent while the master is away
    /// are delivered when it comes back, and one acknowledged is not
    /// delivered again.
    #[tokio::test]
    async fn the_session_keeps_messages_while_away_and_acknowledged_ones_go() {
        let (_broker, cfg, mut probe) = start_broker().await;

        let (task, mut rx) = listen(cfg.clone());
        probe.until(&mut rx, "ready", 20).await;
        sleep(Duration::from_millis(300)).await; // the PUBACK goes out
        stop(task).await;
        sleep(Duration::from_millis(300)).await;
        probe.send("while-away").await;

        let (task, mut rx) = listen(cfg.clone());
        let m = next(&mut rx, 10, "the queued message did not come").await;
        assert_eq!(text(&m), "while-away");
        sleep(Duration::from_millis(300)).await;
        stop(task).await;

        let (task, mut rx) = listen(cfg);
        probe.until(&mut rx, "again", 20).await;
        assert!(
            probe
                .seen
                .iter()
                .all(|m| text(m) != "while-away" && text(m) != "ready-1"),
            "acknowledged messages delivered again: {:?}",
            probe.seen_texts()
        );
        task.abort();
    }

    /// A message over the 64 KiB limit reaches the handler (which refuses
    /// it); one too large to read at all does not wedge the trigger.
    #[tokio::test]
    async fn oversized_messages_do_not_wedge_the_loop() {
        let (_broker, cfg, mut probe) = start_broker().await;
        let (task, mut rx) = listen(cfg);
        probe.until(&mut rx, "ready", 20).await;

        probe.send(vec![b'x'; 100 << 10]).await;
        let m = next(&mut rx, 10, "the 100 KiB message").await;
        assert_eq!(m.payload.len(), 100 << 10);
        assert_eq!(
            parse_trigger(&m.payload).unwrap_err().reason,
            Reason::TooLarge(100 << 10)
        );

        probe.send(vec![b'y'; 2 << 20]).await;
        probe.until(&mut rx, "after", 30).await;
        assert!(probe.seen.iter().all(|m| m.payload.len() < MAX_PACKET));
        task.abort();
    }

    /// A handler that takes its time holds up neither the loop nor the
    /// messages after it.
    #[tokio::test]
    async fn a_slow_handler_does_not_hold_up_the_loop() {
        let (_broker, cfg, mut probe) = start_broker().await;
        let (task, mut rx) = listen_holding(cfg, |m| text(m).starts_with("slow"));
        probe.until(&mut rx, "ready", 20).await;
        for n in 0..4 {
            probe.send(format!("slow-{n}")).await;
        }
        probe.send("quick").await;
        let m = next(&mut rx, 5, "held up").await;
        assert_eq!(text(&m), "quick", "{:?}", probe.seen);
        task.abort();
    }

    /// A retained message comes flagged, so the trigger can refuse it.
    #[tokio::test]
    async fn retained_messages_are_flagged() {
        let (_broker, cfg, probe) = start_broker().await;
        publish(probe.port, &probe.topic, b"stale".to_vec(), true).await;
        let (task, mut rx) = listen(cfg);
        let m = next(&mut rx, 10, "the retained message").await;
        assert_eq!(text(&m), "stale");
        assert!(m.retain);
        task.abort();
    }

    /// `mqtts://` with the broker's CA and a client certificate it requires.
    #[tokio::test]
    async fn tls_with_a_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_file, (client_cert, client_key)) = test_pki(dir.path());
        let (server_cert, server_key) = ca
            .issue_server_cert(&["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
        let put = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let server_cert = put("server.pem", &server_cert);
        let server_key = put("server.key", &server_key);
        let tls_port = free_port();
        // A plain listener for the test's publisher, a TLS one for the loop.
        let mut broker = Mosquitto::new(&format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\n",
            ca_file.display(),
            server_cert.display(),
            server_key.display()
        ));
        broker.start().await;

        let mut cfg = test_config(broker.port);
        cfg.url = format!("mqtts://127.0.0.1:{tls_port}");
        cfg.ca_file = Some(ca_file);
        cfg.client_cert_file = Some(put("client.pem", &client_cert));
        cfg.client_key_file = Some(put("client.key", &client_key));
        cfg.validate().unwrap();
        let mut probe = Probe::new(broker.port, &cfg);
        let (task, mut rx) = listen(cfg);
        probe.until(&mut rx, "tls", 20).await;
        task.abort();
    }
}
