//! Tokens with names and roles, and web sessions (issue 10).
