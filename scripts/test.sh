#!/usr/bin/env bash
# The test command: installs what is missing, then formatting, lints, unit
# and integration tests (real PostgreSQL clusters on loopback), the
# deployment files' checks and the container image test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
scripts/deploy-test.sh
cargo test --locked --lib --bins
cargo test --locked --test main -- --test-threads 2
scripts/container-test.sh
