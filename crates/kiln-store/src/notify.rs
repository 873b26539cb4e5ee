//! The notification outbox (issue 11, being written).
