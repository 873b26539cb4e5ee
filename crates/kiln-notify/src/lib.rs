//! Notification transports. This crate knows what each service is sent
//! (Slack's JSON, IRC lines, MQTT topics and payloads, e-mail messages,
//! signed webhook bodies) and how to reach it; it knows nothing of the
//! outbox, the database or the scheduler (those are `kiln-master`'s
//! `notify` module and `kiln-store`'s `notify` module).
//!
//! Every transport takes a [`Notice`] and answers, for one delivery
//! attempt, `Ok(what the receiver said)` or a [`NotifyError`]. Retrying,
//! backoff and ordering belong to the caller. Each delivery carries
//! `Notice::id` as its idempotency key.

pub mod email;
pub mod http;
pub mod irc;
pub mod mqtt;
pub mod notice;

pub use notice::Notice;

use std::time::Duration;

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The sink's settings cannot work (bad URL, missing secret...).
    #[error("bad sink configuration: {0}")]
    Config(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The receiver answered, with an error (HTTP status, SMTP code...).
    #[error("refused: {0}")]
    Refused(String),
    /// Could not reach or talk to the receiver (connection, TLS, I/O).
    #[error("{0}")]
    Transport(String),
}

pub type Result<T, E = NotifyError> = std::result::Result<T, E>;
