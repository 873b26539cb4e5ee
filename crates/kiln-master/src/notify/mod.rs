//! Notifications (issue 11): the outbox written with each state change,
//! and one delivery task per sink (being written).

use std::sync::Arc;

use axum::Router;

use crate::shared::Core;

/// `/api/v1/notify...` (sinks, test, retry).
pub fn routes() -> Router<Arc<Core>> {
    Router::new()
}
