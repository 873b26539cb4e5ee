//! Time as the scheduler sees it: injected, so its rules about leases and
//! timeouts can be tested without waiting.

use std::time::Instant;

pub trait Clock: Send + Sync {
    /// Monotonic time, for leases and deadlines.
    fn now(&self) -> Instant;
    /// Wall-clock milliseconds since the epoch, for the recorded times.
    fn wall_ms(&self) -> i64;
}

/// The real clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall_ms(&self) -> i64 {
        kiln_store::now_ms()
    }
}
