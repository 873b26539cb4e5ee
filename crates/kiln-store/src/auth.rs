//! Named API tokens with roles, and web sessions (issue 10).
