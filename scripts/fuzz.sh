#!/usr/bin/env bash
# Fuzzes the pgoutput decoder: scripts/fuzz.sh [SECONDS] (default 600).
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 unlocks them on stable.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
mkdir -p fuzz/corpus/decode
RUSTC_BOOTSTRAP=1 cargo fuzz run decode fuzz/corpus/decode fuzz/seeds -- \
  -max_total_time="${1:-600}" -print_final_stats=1
