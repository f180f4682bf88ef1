#!/usr/bin/env bash
# Source commit latency with pgbridge as the synchronous standby, against a
# native subscription as the synchronous standby, in one run.
#
#   scripts/bench-sync.sh [--rate TPS] [--secs S] [--rounds N] [--bin PATH] [--fsync off]
#
# Two throwaway clusters on local binaries: the source, and a target with
# two databases, one for pgbridge's Postgres sink and one for a native
# subscription (CREATE SUBSCRIPTION ... WITH (synchronous_commit = on), so
# that both confirm what they durably applied). Both replicate the same
# publication the whole time; the phases only change
# synchronous_standby_names on the source:
#   async     ''            (nobody is waited for: the source's own cost)
#   pgbridge  '<slot>'      (pgbridge's application_name is the slot name)
#   native    'native_sub'  (the subscription's walsender)
# Each phase runs pgbench at a steady --rate of single-row INSERT commits
# for --secs seconds; the phases alternate --rounds times, and per-commit
# latencies (pgbench --log, schedule lag excluded) are pooled per phase.
# Prints p50/p90/p99/max per phase and pgbridge's against native's; the
# goal is pgbridge p99 <= native p99 + 2 ms (exit 1 when missed).
# --fsync off runs both clusters without fsync: on a shared machine the
# disk's flush times dominate otherwise, and they are the same for both
# contenders (the replication path is what differs).
# PGBRIDGE_BENCH_KEEP=1 keeps the temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."

rate=200 secs=15 rounds=3 bin=target/release/pgbridge fsync=on
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) rate="$2"; shift 2 ;;
    --secs) secs="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --fsync) fsync="$2"; shift 2 ;;
    *) echo "bench-sync: unknown argument $1 (use --rate, --secs, --rounds, --bin, --fsync)" >&2; exit 2 ;;
  esac
done
if [ ! -x "$bin" ]; then
  echo "bench-sync: building $bin" >&2
  cargo build --release --locked --bin pgbridge
fi
bin="$(realpath "$bin")"

pgbin="${PG_BIN:-}"
if [ -z "$pgbin" ]; then
  pgbin="$(pg_config --bindir 2>/dev/null || true)"
  [ -x "$pgbin/initdb" ] || pgbin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
fi
as=()
if [ "$(id -u)" -eq 0 ]; then as=(runuser -u postgres --); fi

work="$(mktemp -d "${TMPDIR:-/tmp}/pgbridge-bench-sync.XXXXXX")"
chmod 755 "$work"
[ "$(id -u)" -eq 0 ] && chown postgres "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for c in src dst; do
    [ -d "$work/$c" ] && "${as[@]}" "$pgbin/pg_ctl" -D "$work/$c" -m immediate stop >/dev/null 2>&1 || true
  done
  if [ "${PGBRIDGE_BENCH_KEEP:-}" = 1 ]; then echo "bench-sync: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_cluster() { # name port
  "${as[@]}" "$pgbin/initdb" -D "$work/$1" -U postgres --auth=trust >/dev/null
  cat >>"$work/$1/postgresql.conf" <<EOF
port = $2
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
shared_buffers = 128MB
fsync = $fsync
client_min_messages = warning
EOF
  "${as[@]}" "$pgbin/pg_ctl" -D "$work/$1" -l "$work/$1.log" -w start >/dev/null
}
sport="$(free_port)"; start_cluster src "$sport"
dport="$(free_port)"; start_cluster dst "$dport"
sql() { "$pgbin/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -p "$1" -d "$2" -c "$3"; }

slot=bench_sync
sql "$sport" postgres "CREATE TABLE t (id bigserial PRIMARY KEY, v int, at timestamptz DEFAULT now()); CREATE PUBLICATION p FOR TABLE t;"
sql "$dport" postgres "CREATE DATABASE bridge"
sql "$dport" postgres "CREATE DATABASE native"
sql "$dport" native "CREATE TABLE t (id bigserial PRIMARY KEY, v int, at timestamptz)"
sql "$dport" native "CREATE SUBSCRIPTION native_sub CONNECTION 'host=127.0.0.1 port=$sport dbname=postgres user=postgres' PUBLICATION p WITH (copy_data = false, synchronous_commit = 'on')"
cat >"$work/pgbridge.toml" <<EOF
[source]
url = "postgres://postgres@127.0.0.1:$sport/postgres?sslmode=disable"
slot = "$slot"
publications = ["p"]
snapshot = "never"

[[sink]]
name = "bridge"
type = "postgres"
url = "postgres://postgres@127.0.0.1:$dport/bridge?sslmode=disable"
create_tables = true

[http]
listen = "127.0.0.1:$(free_port)"
EOF
PGBRIDGE_LOG=warn "$bin" run --config "$work/pgbridge.toml" 2>"$work/pgbridge.log" &
pids+=($!)

wait_streaming() { # application_name
  for _ in $(seq 1 300); do
    [ "$(sql "$sport" postgres "SELECT count(*) FROM pg_stat_replication WHERE application_name = '$1' AND state = 'streaming'")" = 1 ] && return 0
    sleep 0.1
  done
  echo "bench-sync: $1 never streamed; pgbridge log:" >&2; cat "$work/pgbridge.log" >&2; exit 1
}
wait_streaming "$slot"
wait_streaming native_sub

echo 'INSERT INTO t (v) VALUES (1);' >"$work/insert.sql"
standby() { # names ('' for none)
  sql "$sport" postgres "ALTER SYSTEM SET synchronous_standby_names = '$1'" >/dev/null
  sql "$sport" postgres "SELECT pg_reload_conf()" >/dev/null
  if [ -n "$1" ]; then
    for _ in $(seq 1 100); do
      [ "$(sql "$sport" postgres "SELECT sync_state FROM pg_stat_replication WHERE application_name = '$1'")" = sync ] && return 0
      sleep 0.1
    done
    echo "bench-sync: $1 never became the synchronous standby" >&2; exit 1
  fi
}
phase() { # label standby-name round
  standby "$2"
  sleep 1
  (cd "$work" && "$pgbin/pgbench" -n -h 127.0.0.1 -p "$sport" -U postgres -f insert.sql \
      -R "$rate" -T "$secs" -c 2 -j 1 --log --log-prefix="lat_$1_$3" postgres >"$work/pgbench_$1_$3.out" 2>&1) || {
    echo "bench-sync: pgbench failed in phase $1:" >&2; cat "$work/pgbench_$1_$3.out" >&2; exit 1; }
  # Column 3 of pgbench's log: the transaction's latency in microseconds.
  cat "$work"/lat_"$1"_"$3".* | awk '{print $3}' >>"$work/all_$1"
}
echo "bench-sync: $rounds rounds x (async, pgbridge, native) x ${secs}s at $rate commits/s, fsync $fsync, $("$pgbin/postgres" --version)" >&2
for r in $(seq 1 "$rounds"); do
  phase async "" "$r"
  phase pgbridge "$slot" "$r"
  phase native native_sub "$r"
done
standby ""

# Both ended with every row.
n="$(sql "$sport" postgres "SELECT count(*) FROM t")"
for _ in $(seq 1 100); do
  b="$(sql "$dport" bridge "SELECT count(*) FROM t")"; m="$(sql "$dport" native "SELECT count(*) FROM t")"
  [ "$b" = "$n" ] && [ "$m" = "$n" ] && break
  sleep 0.1
done

pct() { # file p
  sort -n "$1" | awk -v p="$2" '{a[NR]=$1} END { i = int((NR - 1) * p + 0.5) + 1; printf "%.2f", a[i] / 1000 }'
}
printf '\n%-10s %8s %8s %8s %8s %8s\n' phase commits "p50 ms" "p90 ms" "p99 ms" "max ms"
for ph in async pgbridge native; do
  f="$work/all_$ph"
  printf '%-10s %8s %8s %8s %8s %8s\n' "$ph" "$(wc -l <"$f")" "$(pct "$f" 0.5)" "$(pct "$f" 0.9)" "$(pct "$f" 0.99)" "$(pct "$f" 1)"
done
bp50="$(pct "$work/all_pgbridge" 0.5)"; bp99="$(pct "$work/all_pgbridge" 0.99)"
np50="$(pct "$work/all_native" 0.5)"; np99="$(pct "$work/all_native" 0.99)"
echo
awk -v b50="$bp50" -v n50="$np50" -v b99="$bp99" -v n99="$np99" 'BEGIN {
  printf "pgbridge/native: p50 %.2fx, p99 %.2fx (p99 difference %+.2f ms; goal <= +2 ms)\n", b50 / n50, b99 / n99, b99 - n99 }'
echo "rows: source $n, pgbridge target $b, native target $m"
[ "$b" = "$n" ] && [ "$m" = "$n" ] || { echo "bench-sync: a target is missing rows" >&2; exit 1; }
awk -v b="$bp99" -v n="$np99" 'BEGIN { exit !(b <= n + 2) }' || { echo "bench-sync: goal missed: pgbridge p99 $bp99 ms > native p99 $np99 ms + 2 ms" >&2; exit 1; }
