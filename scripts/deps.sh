#!/usr/bin/env bash
# Installs what pgbridge's demo and tests need on a fresh Debian machine,
# skipping whatever is already there: PostgreSQL server binaries (initdb,
# pg_ctl, postgres, psql), openssl (test certificates), the C libraries the
# bundled librdkafka links (OpenSSL, zlib headers), rustfmt/clippy, and the
# tansu Kafka broker of the Kafka sink's tests.
set -euo pipefail

have_pg_bin() {
  if [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/initdb" ]; then return 0; fi
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then return 0; fi
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

apt_install() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

missing=()
have_pg_bin || missing+=(postgresql postgresql-client)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
# rdkafka-sys builds librdkafka with its own configure script (make, perl, a
# C compiler) and links the system OpenSSL and zlib.
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
[ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v perl >/dev/null 2>&1 || missing+=(perl)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  apt_install "${missing[@]}"
fi

# The server refuses to run as root: the tests start clusters as "postgres".
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

# The Kafka sink's integration tests start tansu brokers (no JVM needed).
if ! command -v tansu >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
  echo "deps: installing tansu (Kafka-compatible broker for the tests)" >&2
  cargo install tansu --locked --features dynostore
fi
