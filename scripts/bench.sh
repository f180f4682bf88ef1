#!/usr/bin/env bash
# The end-to-end benchmark (benches/pipeline/): pgbridge against
# pg_recvlogical, native logical replication and pgcopydb on two throwaway
# local clusters, printed as times and ratios of one run.
#
#   scripts/bench.sh [backlog|copy|latency|kafka|memory|all]... [--scale F] [--runs N]
#                    [--snapshot-workers N] [--timeout SECS] [--native-streaming] [--rate TPS]
#                    [--apply-workers N] [--pgbridge-proto N] [--spread-keys]
#
# (`cargo bench --bench pipeline -- --help` describes every option.)
#
# A full run (--scale 1, 3 runs per contender) takes about 11 minutes on 2
# cores and needs about 10 GB of free disk in $TMPDIR (3 GB of WAL segments
# made up front in each cluster); --scale 0.05 --runs 1
# is a quick check of the harness. Exit status 1 when a target is missed.
# PGBRIDGE_BENCH_KEEP=1 keeps the temporary directory (configs, tool logs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
if ! command -v pgcopydb >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "bench: installing pgcopydb" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends pgcopydb
fi
# The kafka part's naive peer: wal2json and a Python venv with
# confluent-kafka (bench only; the tests never need them).
if [[ " $* " == *" kafka "* ]]; then
  if ! ls /usr/lib/postgresql/*/lib/wal2json.so >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    major="$(ls /usr/lib/postgresql | sort -n | tail -1)"
    echo "bench: installing postgresql-$major-wal2json" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "postgresql-$major-wal2json"
  fi
  venv=target/bench-venv
  if ! "$venv/bin/python" -c 'import confluent_kafka' >/dev/null 2>&1; then
    echo "bench: making $venv with confluent-kafka" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q confluent-kafka
  fi
  export PGBRIDGE_BENCH_PYTHON="$PWD/$venv/bin/python"
fi
cargo build --release --locked
exec cargo bench --locked --bench pipeline -- "$@"
