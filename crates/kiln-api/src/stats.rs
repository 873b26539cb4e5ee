//! `GET /api/v1/stats`: the statistics the web UI charts (issue 10).
