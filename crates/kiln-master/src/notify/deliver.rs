//! One delivery task per sink: its queued rows in order, each attempt
//! bounded by the sink's timeout, failures retried with backoff and
//! jitter until the row is older than the sink's maximum age.

use std::sync::Arc;
use std::time::Duration;

use kiln_notify::email::{Email, EmailConfig, SmtpTls};
use kiln_notify::http::{Slack, Webhook};
use kiln_notify::irc::{Irc, IrcConfig};
use kiln_notify::mqtt::{Mqtt, MqttConfig};
use kiln_notify::{Notice, NotifyError};
use kiln_store::notify::OutboxRow;
use rand::Rng;

use super::config::{SinkConfig, SinkKind};
use super::Sink;
use crate::shared::Core;

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Log lines a failure carries.
const TAIL_LINES: usize = 20;

/// How a sink is reached.
pub enum Transport {
    Slack(Slack),
    Webhook(Webhook),
    Irc(Irc),
    Mqtt(Mqtt),
    Email { email: Email, to_submitter: bool },
}

fn missing(key: &str) -> NotifyError {
    NotifyError::Config(format!("{key} is not set"))
}

impl Transport {
    /// Make the transport of a checked sink (`SinkConfig::prepare`).
    pub fn new(s: &SinkConfig) -> kiln_notify::Result<Transport> {
        let timeout = s.timeout();
        Ok(match s.kind {
            SinkKind::Slack => Transport::Slack(Slack::new(
                s.url.as_deref().ok_or_else(|| missing("url"))?,
                timeout,
            )?),
            SinkKind::Webhook => Transport::Webhook(Webhook::new(
                s.url.as_deref().ok_or_else(|| missing("url"))?,
                s.secret.clone(),
                timeout,
            )?),
            SinkKind::Irc => {
                let tls = s.tls.unwrap_or(true);
                Transport::Irc(Irc::start(IrcConfig {
                    server: s.server.clone().ok_or_else(|| missing("server"))?,
                    port: s.port.unwrap_or(if tls { 6697 } else { 6667 }),
                    tls,
                    ca_file: s.ca_file.clone(),
                    nick: s.nick.clone().ok_or_else(|| missing("nick"))?,
                    password: s.password.clone(),
                    sasl: s.sasl.unwrap_or(false),
                    channels: s.channels.clone().unwrap_or_default(),
                    flood: Default::default(),
                })?)
            }
            // Named by the sink: two sinks on one broker get two client
            // ids (one id would have them disconnect each other).
            SinkKind::Mqtt => Transport::Mqtt(Mqtt::start_named(
                MqttConfig {
                    url: s.url.clone().ok_or_else(|| missing("url"))?,
                    prefix: s.prefix.clone().unwrap_or_else(|| "kiln".into()),
                    retain_last: s.retain_last.unwrap_or(false),
                    ca_file: s.ca_file.clone(),
                    username: s.username.clone(),
                    password: s.password.clone(),
                    cert_file: s.cert_file.clone(),
                    key_file: s.key_file.clone(),
                },
                &s.name,
            )?),
            SinkKind::Email => {
                let tls = match s.smtp_tls.as_deref().unwrap_or("starttls") {
                    "none" => SmtpTls::None,
                    "tls" => SmtpTls::Tls,
                    _ => SmtpTls::StartTls,
                };
                let port = s.port.unwrap_or(match tls {
                    SmtpTls::None => 25,
                    SmtpTls::StartTls => 587,
                    SmtpTls::Tls => 465,
                });
                Transport::Email {
                    email: Email::new(EmailConfig {
                        server: s.server.clone().ok_or_else(|| missing("server"))?,
                        port,
                        tls,
                        ca_file: s.ca_file.clone(),
                        username: s.username.clone(),
                        password: s.password.clone(),
                        from: s.from.clone().ok_or_else(|| missing("from"))?,
                        to: s.to.clone().unwrap_or_default(),
                    })?,
                    to_submitter: s.to_submitter.unwrap_or(false),
                }
            }
        })
    }
}

/// One attempt: the notice to `sink`, within its timeout. `Ok(what the
/// receiver said)`.
pub(crate) async fn send(core: &Core, sink: &Sink, n: &Notice) -> kiln_notify::Result<String> {
    let timeout = sink.cfg.timeout();
    let attempt = async {
        match &sink.transport {
            Transport::Slack(t) => t.deliver(n).await,
            Transport::Webhook(t) => t.deliver(n).await,
            Transport::Irc(t) => t.deliver(n).await,
            Transport::Mqtt(t) => t.deliver(n).await,
            Transport::Email {
                email,
                to_submitter,
            } => {
                let mut extra = Vec::new();
                if *to_submitter {
                    if let Some(who) = n.submitter.clone() {
                        let addr = core
                            .store
                            .read(move |c| kiln_store::notify::token_email(c, &who))
                            .await
                            .map_err(|e| NotifyError::Transport(format!("database: {e}")))?;
                        extra.extend(addr);
                    }
                }
                email.deliver(n, &extra).await
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(NotifyError::Timeout(timeout)),
    }
}

/// The wait after `attempts` failures: base × 2^(attempts-1), capped,
/// with jitter (between half and all of it).
pub(crate) fn backoff(base: Duration, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    let full = base
        .saturating_mul(1u32 << exp)
        .min(MAX_BACKOFF)
        .max(Duration::from_millis(1));
    let ms = full.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

/// Add what is read at delivery: the last log lines of a failure.
async fn enrich(core: &Core, n: &mut Notice) {
    if !n.log_tail.is_empty() || !matches!(n.event.as_str(), "job.failed" | "build.failed") {
        return;
    }
    let Some(build) = n.build else { return };
    let job = match n.job {
        Some(j) => Some(j),
        None => core
            .store
            .read(move |c| kiln_store::jobs_of(c, build))
            .await
            .ok()
            .and_then(|jobs| {
                jobs.into_iter()
                    .find(|j| j.state == kiln_core::state::JobState::Failed)
                    .map(|j| j.id)
            }),
    };
    let Some(job) = job else { return };
    match core.logs.read(build, job).await {
        Ok(log) => n.log_tail = super::event::tail(&log, TAIL_LINES),
        Err(e) => tracing::debug!("notifications: no log of job {job}: {e}"),
    }
}

/// A row's notice: as written when it was queued, or, for a build's
/// event (queued with an empty notice), made now from the build's row.
/// `Err(Some(e))`: the row can never be sent (it is made dead);
/// `Err(None)`: the database could not be read (logged; try again).
async fn notice_of(core: &Core, row: &OutboxRow) -> Result<Notice, Option<String>> {
    if !row.notice.is_empty() {
        return serde_json::from_str::<Notice>(&row.notice)
            .map_err(|e| Some(format!("unreadable notice: {e}")));
    }
    let Some(build) = row.build else {
        return Err(Some(format!(
            "{} {} has no notice and no build",
            row.event, row.event_id
        )));
    };
    let b = match core
        .store
        .read(move |c| kiln_store::get_build(c, build))
        .await
    {
        Ok(Some(b)) => b,
        Ok(None) => return Err(Some(format!("build {build} is gone"))),
        Err(e) => {
            tracing::error!("notifications: reading build {build}: {e}");
            return Err(None);
        }
    };
    Ok(super::event::later_build_notice(
        &row.event,
        &row.event_id,
        row.created_at,
        &b,
        &core.notify.base(),
    ))
}

/// The task of one sink. Sleeps until rows are committed for it (its
/// `wake`) or its head row's retry is due; never polls. While the head
/// waits for its retry, rows committed behind it cannot go first
/// (delivery is in order): only an admin's `kick` (dead rows queued
/// again) cuts that wait short, not every commit of the farm.
pub(crate) async fn run(core: Arc<Core>, sink: Arc<Sink>) {
    let name = sink.cfg.name.clone();
    let base = sink.cfg.retry_base();
    let max_age = sink.cfg.max_age().as_millis() as i64;
    // The head row's notice as enriched, kept across its retries.
    let mut current: Option<(i64, Notice)> = None;
    loop {
        // Registered before looking, so a commit after the look wakes it.
        let rung = sink.wake.notified();
        tokio::pin!(rung);
        rung.as_mut().enable();
        let kicked = sink.kick.notified();
        tokio::pin!(kicked);
        kicked.as_mut().enable();
        let n2 = name.clone();
        let head = match core
            .store
            .read(move |c| kiln_store::notify::next_queued(c, &n2))
            .await
        {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("notifications: {name}: reading the outbox: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(row) = head else {
            tokio::select! {
                _ = &mut rung => {}
                _ = &mut kicked => {}
            }
            continue;
        };
        let now = kiln_store::now_ms();
        if row.next_at > now {
            let wait = Duration::from_millis((row.next_at - now) as u64);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut kicked => {}
            }
            continue;
        }
        let notice = match current.take() {
            Some((id, n)) if id == row.id => n,
            _ => match notice_of(&core, &row).await {
                Ok(mut n) => {
                    enrich(&core, &mut n).await;
                    n
                }
                Err(Some(e)) => {
                    record(&core, &row, Err((e, now, true))).await;
                    continue;
                }
                Err(None) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let outcome = send(&core, &sink, &notice).await;
        match outcome {
            Ok(answer) => {
                tracing::debug!("notifications: {name}: {} delivered: {answer}", notice.id);
                record(&core, &row, Ok(())).await;
            }
            Err(e) => {
                let wait = backoff(base, row.attempts + 1);
                let next = kiln_store::now_ms() + wait.as_millis() as i64;
                let dead = next - row.created_at > max_age;
                if dead {
                    tracing::warn!(
                        "notifications: {name}: {} ({}) is dead after {} attempts: {e}",
                        notice.id,
                        notice.event,
                        row.attempts + 1
                    );
                } else {
                    tracing::info!(
                        "notifications: {name}: {} failed ({e}); again in {wait:?}",
                        notice.id
                    );
                    current = Some((row.id, notice));
                }
                record(&core, &row, Err((e.to_string(), next, dead))).await;
            }
        }
    }
}

/// Record an attempt's outcome: delivered, or the error with the next
/// attempt's time (or dead).
async fn record(core: &Core, row: &OutboxRow, r: Result<(), (String, i64, bool)>) {
    let id = row.id;
    let w = match r {
        Ok(()) => {
            core.store
                .write(move |t| kiln_store::notify::mark_delivered(t, id, kiln_store::now_ms()))
                .await
        }
        Err((e, next, dead)) => {
            core.store
                .write(move |t| kiln_store::notify::mark_failed(t, id, &e, next, dead))
                .await
        }
    };
    if let Err(e) = w {
        tracing::error!("notifications: recording delivery of row {id}: {e}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let b = Duration::from_secs(1);
        for _ in 0..50 {
            let d = backoff(b, 1);
            assert!(d >= Duration::from_millis(500) && d <= b, "{d:?}");
            let d = backoff(b, 4);
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(8),
                "{d:?}"
            );
            let d = backoff(b, 40);
            assert!(d >= MAX_BACKOFF / 2 && d <= MAX_BACKOFF, "{d:?}");
        }
    }
}
