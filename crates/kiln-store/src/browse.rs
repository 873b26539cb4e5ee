//! Keyset-paginated, filtered listings of builds for the web UI (issue 10).
