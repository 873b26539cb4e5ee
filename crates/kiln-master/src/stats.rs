//! The statistics use case (issue 10): `/api/v1/stats` and the figures
//! the `/stats` page charts.

use std::sync::Arc;

use axum::Router;

use crate::Core;

/// `/api/v1/stats`.
pub fn routes() -> Router<Arc<Core>> {
    Router::new()
}
