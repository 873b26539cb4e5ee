//! Notification sinks (issue 11).
//!
//! - `GET /api/v1/notify` (→ `Vec<`[`SinkView`]`>`): every configured sink
//!   with its outbox's counts and last error. Reader.
//! - `POST /api/v1/notify/NAME/test` (→ [`TestAnswer`]): sends a `test`
//!   event now, outside the outbox, and says what the sink answered.
//!   Admin.
//! - `POST /api/v1/notify/NAME/retry` (→ [`RetryAnswer`]): queues the
//!   sink's dead notifications again. Admin.

use serde::{Deserialize, Serialize};

/// A sink as `kiln notify ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SinkView {
    /// The `[[notify]]` table's name.
    pub name: String,
    /// `slack`, `webhook`, `irc`, `mqtt` or `email`.
    pub kind: String,
    /// The events it takes (empty: all).
    pub events: Vec<String>,
    /// The target globs it takes (empty: all).
    pub targets: Vec<String>,
    /// `ok` (nothing waiting on a failure), `retrying` (the oldest queued
    /// notification failed and waits for its next attempt).
    pub state: String,
    /// Notifications waiting to be delivered.
    pub queued: u64,
    /// Delivered (within the retention period).
    pub delivered: u64,
    /// Given up on after the sink's maximum age.
    pub dead: u64,
    /// The last error of a queued or dead notification.
    pub last_error: Option<String>,
    /// When the last delivery was (Unix ms).
    pub last_delivered_at: Option<i64>,
}

/// What a test delivery got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TestAnswer {
    /// The sink.
    pub name: String,
    /// The sink took it.
    pub ok: bool,
    /// What the sink answered (`HTTP 200: ...`), or the error.
    pub answer: String,
    /// The test event's id.
    pub id: String,
}

/// What a retry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RetryAnswer {
    /// The sink.
    pub name: String,
    /// Dead notifications queued again.
    pub requeued: u64,
}
