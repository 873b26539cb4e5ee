//! `/metrics` in Prometheus text format (issue 10).

use std::sync::Arc;

use axum::Router;

use crate::Core;

/// The master's counters and histograms.
#[derive(Default)]
pub struct Metrics {}

/// `/metrics`.
pub fn routes() -> Router<Arc<Core>> {
    Router::new()
}
