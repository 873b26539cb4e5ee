//! Aggregates for the statistics page and `/api/v1/stats` (issue 10).
