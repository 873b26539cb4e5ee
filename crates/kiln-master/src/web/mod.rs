//! The web UI (issue 10): server-rendered pages, embedded assets, and the
//! live updates over `/api/v1/ws`.

use std::sync::Arc;

use axum::Router;

use crate::Core;

/// The live event hub (event ids, replay for resuming websockets).
#[derive(Default)]
pub struct Hub {}

/// The web UI's routes (merged into the master's router).
pub fn routes() -> Router<Arc<Core>> {
    Router::new()
}

/// Start what the web UI runs in the background (called once at start).
pub fn start(_core: &Arc<Core>) {}
