#!/usr/bin/env bash
# The quickstart: installs what is missing, then `pgbridge demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo run --release --locked -- demo
