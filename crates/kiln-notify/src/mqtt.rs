//! MQTT: Reimzul's topics.
//!
//! [`Mqtt::start`] keeps one MQTT 3.1.1 connection to the broker (a
//! persistent session, `clean_session = false`, under a client id derived
//! from the settings: [`MqttConfig::client_id`]), reconnecting forever with
//! a backoff of 1 s doubling to 60 s (1 s again once connected).
//!
//! [`Mqtt::deliver`] publishes the notice's JSON ([`payload`]) with QoS 1 on
//! [`topic`]:
//!
//! | event | topic |
//! |---|---|
//! | `build.STATE` | `PREFIX/builds/TARGET/STATE` |
//! | `job.STATE` | `PREFIX/jobs/ARCH/STATE` |
//! | `worker.WHAT` | `PREFIX/workers/WORKER/WHAT` |
//! | `test` | `PREFIX/test` |
//! | anything else | `PREFIX/events/EVENT` |
//!
//! and, with `retain_last`, for a `build.*` event with a target and a
//! package, a retained copy on `PREFIX/packages/TARGET/PACKAGE` (the last
//! state of each package). Every segment taken from the event is cleaned by
//! [`segment`] (no `/`, `+`, `#`, NUL or control character).
//!
//! `deliver` returns once the broker acknowledged (PUBACK) every message
//! of the notice, matched by packet id. While the broker is away it waits:
//! messages not yet acknowledged when a connection breaks are published
//! again on the next one, so the waiting `deliver` completes after the
//! broker comes back; the caller's timeout bounds the wait. A message is
//! sent twice only if the connection broke after the broker took it and
//! before its PUBACK arrived (QoS 1: at least once; readers drop
//! duplicates by `id`). A `deliver` whose caller gave up (its future
//! dropped, e.g. by the caller's timeout) is not published (again) after
//! that, so the caller's retry does not double it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, Request,
    TlsConfiguration, Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::{Notice, NotifyError, Result};

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// The largest payload published; a notice's log tail is shortened to fit.
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// The longest topic segment taken from an event (bytes).
const MAX_SEGMENT: usize = 200;

#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Topic prefix (`kiln`): `PREFIX/builds/<target>/<state>`, `PREFIX/jobs/<arch>/<state>`.
    pub prefix: String,
    /// Also publish a retained "last state per package" message.
    pub retain_last: bool,
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Client certificate and key (PEM), for brokers that want one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Where the broker is, from [`MqttConfig::url`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Broker {
    tls: bool,
    host: String,
    port: u16,
}

fn config_err(m: impl std::fmt::Display) -> NotifyError {
    NotifyError::Config(format!("mqtt: {m}"))
}

/// `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]` (an IPv6 address in
/// brackets).
fn parse_url(url: &str) -> Result<Broker> {
    let bad = |why: &str| config_err(format!("url {url:?}: {why}"));
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        return Err(bad("expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(|| bad("no ']'"))?;
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address in the brackets"));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("expected :PORT"))?),
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
        return Err(bad("not a host name or address (no path, user or query)"));
    }
    let port = match port {
        None if tls => 8883,
        None => 1883,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(bad("bad port")),
        },
    };
    Ok(Broker {
        tls,
        host: host.to_string(),
        port,
    })
}

impl MqttConfig {
    /// Check every value and read the files it names, without connecting.
    pub fn validate(&self) -> Result<()> {
        self.options("check").map(drop)
    }

    /// The MQTT client id (and so the broker's session name) for the sink
    /// `name`: `kiln-notify-` and a hash of the name, broker, prefix and
    /// user, stable across restarts.
    pub fn client_id(&self, name: &str) -> String {
        let mut h = Sha256::new();
        for part in [
            name,
            &self.url,
            &self.prefix,
            self.username.as_deref().unwrap_or(""),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        format!("kiln-notify-{}", &hex::encode(h.finalize())[..16])
    }

    fn check(&self) -> Result<Broker> {
        let broker = parse_url(&self.url)?;
        let p = &self.prefix;
        if p.is_empty()
            || p.len() > 1024
            || p.starts_with('$')
            || p.ends_with('/')
            || p.contains(['+', '#'])
            || p.chars().any(char::is_control)
        {
            return Err(config_err(format!(
                "prefix {p:?}: not empty, at most 1024 bytes, no '+', '#' or control \
                 character, not starting with '$' or ending with '/'"
            )));
        }
        if let Some(u) = &self.username {
            if u.is_empty() || u.chars().any(char::is_control) {
                return Err(config_err("username: not empty, no control character"));
            }
        } else if self.password.is_some() {
            return Err(config_err("a password needs a username"));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(config_err("cert_file and key_file go together"));
        }
        if !broker.tls
            && (self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some())
        {
            return Err(config_err(format!(
                "ca_file, cert_file and key_file need an mqtts:// url, not {:?}",
                self.url
            )));
        }
        Ok(broker)
    }

    fn options(&self, name: &str) -> Result<MqttOptions> {
        let broker = self.check()?;
        let mut o = MqttOptions::new(self.client_id(name), broker.host.clone(), broker.port);
        o.set_keep_alive(KEEP_ALIVE)
            .set_clean_session(false)
            .set_max_packet_size(64 * 1024, MAX_PAYLOAD + 64 * 1024);
        if let Some(u) = &self.username {
            o.set_credentials(u.clone(), self.password.clone().unwrap_or_default());
        }
        if broker.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(self.tls_config()?),
            )));
        }
        Ok(o)
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(ca) = &self.ca_file {
            for cert in read_certs("ca_file", ca)? {
                roots
                    .add(cert)
                    .map_err(|e| config_err(format!("ca_file {}: {e}", ca.display())))?;
            }
        }
        if roots.is_empty() {
            return Err(config_err(
                "tls: no trusted root (none in the system, no ca_file)",
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| config_err(format!("tls: {e}")))?
            .with_root_certificates(roots);
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs("cert_file", cert)?;
                let pem = std::fs::read(key)
                    .map_err(|e| config_err(format!("key_file {}: {e}", key.display())))?;
                let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    config_err(format!(
                        "key_file {}: no PEM private key ({e})",
                        key.display()
                    ))
                })?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| config_err(format!("cert_file and key_file: {e}")))
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem =
        std::fs::read(path).map_err(|e| config_err(format!("{key} {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_err(format!("{key} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(config_err(format!(
            "{key} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// A topic segment from event data: `/`, `+`, `#`, NUL and every other
/// control character become `_`, it is cut to 200 bytes (on a character
/// boundary), and an empty or absent one is `_`.
pub fn segment(s: Option<&str>) -> String {
    let s: String = s
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '/' | '+' | '#' | '\u{2028}' | '\u{2029}') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let mut cut = s.len().min(MAX_SEGMENT);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    if cut == 0 {
        "_".into()
    } else {
        s[..cut].to_string()
    }
}

/// The topic of a notice (see the module documentation).
pub fn topic(prefix: &str, n: &Notice) -> String {
    let e = n.event.as_str();
    if let Some(state) = e.strip_prefix("build.") {
        format!(
            "{prefix}/builds/{}/{}",
            segment(n.target.as_deref()),
            segment(Some(state))
        )
    } else if let Some(state) = e.strip_prefix("job.") {
        format!(
            "{prefix}/jobs/{}/{}",
            segment(n.arch.as_deref()),
            segment(Some(state))
        )
    } else if let Some(what) = e.strip_prefix("worker.") {
        format!(
            "{prefix}/workers/{}/{}",
            segment(n.worker.as_deref()),
            segment(Some(what))
        )
    } else if e == "test" {
        format!("{prefix}/test")
    } else {
        format!("{prefix}/events/{}", segment(Some(e)))
    }
}

/// The retained topic of a build event: `PREFIX/packages/TARGET/PACKAGE`.
pub fn package_topic(prefix: &str, n: &Notice) -> Option<String> {
    if !n.event.starts_with("build.") {
        return None;
    }
    Some(format!(
        "{prefix}/packages/{}/{}",
        segment(Some(n.target.as_deref()?)),
        segment(Some(n.package.as_deref()?))
    ))
}

/// The message: the notice's JSON, with `state` filled from the event
/// (`build.failed` → `failed`) when the notice has none, and the log tail
/// shortened (oldest lines first) to stay within [`MAX_PAYLOAD`].
pub fn payload(n: &Notice) -> Result<Vec<u8>> {
    let mut n = n.clone();
    if n.state.is_none() {
        n.state = n
            .event
            .strip_prefix("build.")
            .or_else(|| n.event.strip_prefix("job."))
            .map(str::to_string);
    }
    loop {
        let body = serde_json::to_vec(&n)
            .map_err(|e| NotifyError::Config(format!("mqtt: the notice as JSON: {e}")))?;
        if body.len() <= MAX_PAYLOAD {
            return Ok(body);
        }
        if n.log_tail.is_empty() {
            return Err(NotifyError::Config(format!(
                "mqtt: the notice is {} bytes of JSON, over {MAX_PAYLOAD}",
                body.len()
            )));
        }
        let drop = n.log_tail.len().div_ceil(4);
        n.log_tail.drain(..drop);
    }
}

/// One message to publish.
#[derive(Clone)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

/// One `deliver`.
struct Job {
    msgs: Vec<Msg>,
    done: oneshot::Sender<Result<String>>,
}

/// A running client (reconnects by itself; stops when dropped).
pub struct Mqtt {
    cfg: MqttConfig,
    jobs: mpsc::UnboundedSender<Job>,
    tasks: [tokio::task::JoinHandle<()>; 2],
    last_error: Arc<Mutex<Option<String>>>,
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Mqtt {
    /// [`Mqtt::start_named`] with the name `""`.
    pub fn start(cfg: MqttConfig) -> Result<Mqtt> {
        Mqtt::start_named(cfg, "")
    }

    /// Check the settings, read the files, and start the connection (needs
    /// a Tokio runtime); `name` (the sink's) goes into the client id, so two
    /// sinks on one broker have sessions of their own. Returns at once: the
    /// broker may be down.
    pub fn start_named(cfg: MqttConfig, name: &str) -> Result<Mqtt> {
        let options = cfg.options(name)?;
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| config_err("needs a Tokio runtime"))?;
        let (client, events) = AsyncClient::new(options, 64);
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (tx, rx) = mpsc::unbounded_channel();
        let last_error = Arc::new(Mutex::new(None));
        let poller = rt.spawn(poll(events, ev_tx, cfg.url.clone(), last_error.clone()));
        let publisher = rt.spawn(publish(client, rx, ev_rx));
        Ok(Mqtt {
            cfg,
            jobs: tx,
            tasks: [poller, publisher],
            last_error,
        })
    }

    /// Publish with QoS 1; `Ok("PUBACK from the broker: TOPIC")` once the
    /// broker acknowledged every message of the notice (the retained one
    /// too). Waits while the broker is away (see the module
    /// documentation); `Err(Config)` if the notice cannot be made into a
    /// payload, `Err(Transport)` if the connection task is gone.
    pub async fn deliver(&self, n: &Notice) -> Result<String> {
        let body = payload(n)?;
        let main = topic(&self.cfg.prefix, n);
        let mut msgs = vec![Msg {
            topic: main.clone(),
            payload: body.clone(),
            retain: false,
        }];
        if self.cfg.retain_last {
            if let Some(t) = package_topic(&self.cfg.prefix, n) {
                msgs.push(Msg {
                    topic: t,
                    payload: body,
                    retain: true,
                });
            }
        }
        let (done, answer) = oneshot::channel();
        let gone = || NotifyError::Transport("mqtt: the connection task stopped".into());
        self.jobs.send(Job { msgs, done }).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())??;
        Ok(format!("PUBACK from the broker: {main}"))
    }

    /// Why the last connection failed or broke (`None` once connected).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }
}

/// What the publisher needs to know of the event loop.
enum Ev {
    Connected,
    /// The connection failed or broke; rumqttc had taken `fresh` publishes
    /// from its request channel that it had not sent yet (they, and every
    /// publish sent and not acknowledged, are the publisher's to send again).
    Down {
        fresh: usize,
    },
    Sent(u16),
    Acked(u16),
}

/// The event loop, polled without pause (never cancelled mid-poll), with
/// the backoff between failed connections. rumqttc's own retransmission
/// queue is emptied after every failure: [`publish`] sends again itself,
/// whatever the broker kept of the session, so it always knows which of
/// its messages went out.
async fn poll(
    mut events: EventLoop,
    tx: mpsc::UnboundedSender<Ev>,
    url: String,
    last_error: Arc<Mutex<Option<String>>>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut connected = false;
    let mut failures = 0u32;
    loop {
        let ev = match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(
                    "mqtt {url}: connected (session present: {})",
                    ack.session_present
                );
                backoff = BACKOFF_MIN;
                connected = true;
                failures = 0;
                if let Ok(mut g) = last_error.lock() {
                    *g = None;
                }
                Ev::Connected
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => Ev::Acked(ack.pkid),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ev::Sent(pkid),
            Ok(_) => continue,
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                if connected {
                    tracing::warn!("mqtt {url}: lost the connection: {e}; reconnecting");
                } else if failures == 0 {
                    tracing::warn!("mqtt {url}: cannot connect: {e}; retrying");
                }
                failures = failures.saturating_add(1);
                if let Ok(mut g) = last_error.lock() {
                    *g = Some(e.to_string());
                }
                // Events rumqttc made before the failure and had not handed
                // out yet: a publish that got its packet id, an
                // acknowledgement that came. Told first, so the publisher
                // knows every packet id given.
                for ev in events.state.events.drain(..) {
                    let ev = match ev {
                        Event::Outgoing(Outgoing::Publish(pkid)) => Ev::Sent(pkid),
                        Event::Incoming(Packet::PubAck(ack)) => Ev::Acked(ack.pkid),
                        _ => continue,
                    };
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
                let fresh = events
                    .pending
                    .drain(..)
                    .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0))
                    .count();
                if tx.send(Ev::Down { fresh }).is_err() {
                    return;
                }
                connected = false;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if tx.send(ev).is_err() {
            return;
        }
    }
}

/// A job being published: its messages, and which are acknowledged.
struct Active {
    job: Job,
    acked: Vec<bool>,
}

/// A message of a job: (job number, message index).
type Slot = (u64, usize);

/// Hands jobs to the client while connected, matches acknowledgements to
/// them by packet id, and publishes again after a reconnection what was
/// lost with the connection.
async fn publish(
    client: AsyncClient,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mut events: mpsc::UnboundedReceiver<Ev>,
) {
    let mut connected = false;
    // Taken, not yet handed to the client.
    let mut queue: VecDeque<Job> = VecDeque::new();
    let mut next_id: u64 = 0;
    // Handed to the client, by job number (in order).
    let mut active: BTreeMap<u64, Active> = BTreeMap::new();
    // Handed to the client, packet id not yet known, in the order the
    // client sends them.
    let mut unassigned: VecDeque<Slot> = VecDeque::new();
    let mut by_pkid: HashMap<u16, Slot> = HashMap::new();
    // Lost with a connection: to publish again on the next one.
    let mut lost: Vec<Slot> = Vec::new();
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some(j) => queue.push_back(j),
                None => return,
            },
            ev = events.recv() => match ev {
                None => return,
                Some(Ev::Down { fresh }) => {
                    connected = false;
                    lost.extend(by_pkid.drain().map(|(_, slot)| slot));
                    let fresh = fresh.min(unassigned.len());
                    lost.extend(unassigned.drain(..fresh));
                }
                Some(Ev::Connected) => {
                    connected = true;
                    lost.sort_unstable();
                    lost.dedup();
                    for (id, i) in std::mem::take(&mut lost) {
                        let Some(a) = active.get(&id) else { continue };
                        if a.job.done.is_closed() {
                            // Nobody waits for it any more: the caller's
                            // retry will publish it.
                            active.remove(&id);
                            continue;
                        }
                        let Some(m) = a.job.msgs.get(i) else { continue };
                        if let Err(e) = client
                            .publish(m.topic.clone(), QoS::AtLeastOnce, m.retain, m.payload.clone())
                            .await
                        {
                            tracing::debug!("mqtt: the event loop is gone: {e}");
                            return;
                        }
                        unassigned.push_back((id, i));
                    }
                }
                Some(Ev::Sent(pkid)) => {
                    if let Some(slot) = unassigned.pop_front() {
                        by_pkid.insert(pkid, slot);
                    }
                }
                Some(Ev::Acked(pkid)) => {
                    if let Some((id, i)) = by_pkid.remove(&pkid) {
                        let finished = match active.get_mut(&id) {
                            Some(a) => {
                                if let Some(x) = a.acked.get_mut(i) {
                                    *x = true;
                                }
                                a.acked.iter().all(|x| *x)
                            }
                            None => false,
                        };
                        if finished {
                            if let Some(a) = active.remove(&id) {
                                let _ = a.job.done.send(Ok(String::new()));
                            }
                        }
                    }
                }
            },
        }
        if connected {
            while let Some(job) = queue.pop_front() {
                if job.done.is_closed() {
                    continue;
                }
                let id = next_id;
                next_id += 1;
                for (i, m) in job.msgs.iter().enumerate() {
                    // Waits if rumqttc's request channel is full.
                    if let Err(e) = client
                        .publish(
                            m.topic.clone(),
                            QoS::AtLeastOnce,
                            m.retain,
                            m.payload.clone(),
                        )
                        .await
                    {
                        tracing::debug!("mqtt: the event loop is gone: {e}");
                        return;
                    }
                    unassigned.push_back((id, i));
                }
                let acked = vec![false; job.msgs.len()];
                active.insert(id, Active { job, acked });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(event: &str) -> Notice {
        Notice {
            id: "e1".into(),
            event: event.into(),
            time: "2026-01-01T00:00:00Z".into(),
            target: Some("c9/x+#".into()),
            package: Some("bash".into()),
            nevr: Some("bash-5.2-1".into()),
            build: Some(7),
            job: Some(3),
            arch: Some("x86_64".into()),
            state: None,
            submitter: None,
            source: None,
            worker: Some("w\0one".into()),
            duration_secs: None,
            reason: None,
            repository: None,
            log_tail: vec![],
            url: None,
            release: None,
            channel: None,
            version: None,
        }
    }

    #[test]
    fn topics() {
        assert_eq!(
            topic("kiln", &notice("build.failed")),
            "kiln/builds/c9_x__/failed"
        );
        assert_eq!(
            topic("kiln", &notice("job.failed")),
            "kiln/jobs/x86_64/failed"
        );
        assert_eq!(
            topic("kiln", &notice("worker.lost")),
            "kiln/workers/w_one/lost"
        );
        assert_eq!(topic("kiln", &notice("test")), "kiln/test");
        assert_eq!(
            topic("k", &notice("image.promoted")),
            "k/events/image.promoted"
        );
        assert_eq!(
            package_topic("kiln", &notice("build.published")).as_deref(),
            Some("kiln/packages/c9_x__/bash")
        );
        assert_eq!(package_topic("kiln", &notice("job.failed")), None);
        assert_eq!(segment(None), "_");
        assert_eq!(segment(Some("")), "_");
        assert!(segment(Some(&"é".repeat(300))).len() <= MAX_SEGMENT);
    }

    #[test]
    fn payload_has_state_and_fits() {
        let v: serde_json::Value =
            serde_json::from_slice(&payload(&notice("build.failed")).unwrap()).unwrap();
        assert_eq!(v["state"], "failed");
        assert_eq!(v["id"], "e1");
        let mut n = notice("job.failed");
        n.log_tail = vec!["x".repeat(1000); 1000];
        let p = payload(&n).unwrap();
        assert!(p.len() <= MAX_PAYLOAD);
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert!(!v["log_tail"].as_array().unwrap().is_empty());
    }

    #[test]
    fn config_checks() {
        let ok = MqttConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            prefix: "kiln".into(),
            retain_last: false,
            ca_file: None,
            username: None,
            password: None,
            cert_file: None,
            key_file: None,
        };
        ok.validate().unwrap();
        assert_ne!(ok.client_id("a"), ok.client_id("b"));
        for bad in [
            MqttConfig {
                url: "http://x".into(),
                ..ok.clone()
            },
            MqttConfig {
                url: "mqtt://u@x".into(),
                ..ok.clone()
            },
            MqttConfig {
                prefix: "a/#".into(),
                ..ok.clone()
            },
            MqttConfig {
                prefix: "a/".into(),
                ..ok.clone()
            },
            MqttConfig {
                password: Some("p".into()),
                ..ok.clone()
            },
            MqttConfig {
                ca_file: Some("/x".into()),
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_url("mqtts://[::1]").unwrap(),
            Broker {
                tls: true,
                host: "::1".into(),
                port: 8883
            }
        );
    }
}
