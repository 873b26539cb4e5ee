#!/usr/bin/env bash
# Sets up and runs Kiln locally: a master and one worker in one process,
# SQLite and a self-made CA in the data directory (default /var/lib/kiln),
# the shipped example packages built and their RPMs shown.
# Extra arguments go to `kiln up` (for example --once, --data DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
cargo build --release --locked -p kiln
install -m 0755 target/release/kiln /usr/local/bin/kiln
exec kiln up "$@"
