//! The black-box integration tests of the `kiln` binary, in one test
//! binary (one link instead of one per file): each module below was a
//! test file of its own; `common` is their harness. Run one module with
//! `cargo test -p kiln --test it repo_sign::`.
//!
//! The tests need root (a test mounts a tmpfs) and the real tools (rpmbuild,
//! createrepo_c, bwrap, gpg, dnf, curl); they fail, never skip, without
//! them. They run several at a time in this one process, so none may
//! change what the process shares (environment, working directory, signal
//! dispositions, limits): what a child needs is set on its `Command`.

// clippy.toml allows unwrap and expect in `#[test]` functions; the harness
// and the tests' helpers may use them too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod auth;
mod bad_input;
mod batch;
mod browser;
mod build_basic;
mod buildroot;
mod cancel;
mod cli_misc;
mod config;
mod disk_full;
mod failures;
mod git_builds;
mod image_builds;
mod images;
mod master_safety;
mod mqtt_trigger;
mod notify;
mod notify_servers;
mod openapi;
mod ops;
mod protocol;
mod releases;
mod repo_gate;
mod repo_publish;
mod repo_robust;
mod repo_sign;
mod routing;
mod sandbox;
mod soak;
mod web;
mod web_admin;
