#!/usr/bin/env bash
# The test command: installs what is missing, then formatting, lints, unit
# and integration tests (real PostgreSQL clusters on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --lib --bins
cargo test --locked --test main -- --test-threads 2
