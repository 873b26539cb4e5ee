#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests and the
# integration tests that spawn the real binary with real rpmbuild.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace -- --test-threads 4
