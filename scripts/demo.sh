#!/usr/bin/env bash
# The quickstart: installs what the demo needs and is missing (PostgreSQL
# server binaries, the build's C libraries; not the test-only tools), then
# builds pgbridge and runs `pgbridge demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --demo
cargo run --release --locked -- demo
