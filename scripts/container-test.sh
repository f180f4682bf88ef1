#!/usr/bin/env bash
# Builds deploy/Containerfile with podman and runs the image against two
# throwaway PostgreSQL clusters on loopback: a row inserted on the source
# must reach the target, /healthz and the image's HEALTHCHECK must answer,
# /metrics must export every metric src/http.rs defines (a sample of each;
# the per-table backfill ones, sampled only for tables that had a backfill,
# declared), a second container
# of the same config must wait as a standby and take over when the first
# stops, and `podman stop` must end the first with exit status 0.
#
# No image registry is needed: the base images the Containerfile names are
# made here from Debian packages and imported under those names,
#   debian:bookworm-slim   a debootstrap minbase rootfs of bookworm (the
#                          tarball is cached in $CACHE)
#   rust:1-bookworm        that rootfs with the C toolchain and headers the
#                          build links; the Rust toolchain is this machine's
#                          (`rustc --print sysroot`), mounted into the build
# so the Containerfile stays the one a user builds (podman resolves its
# short names to these localhost/ images; --pull=never keeps it local). The build mounts this
# machine's cargo registry and a cached target directory ($CACHE), so a
# second run rebuilds only what changed.
#
# Prints the image's size. Any failure exits non-zero with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

CACHE="${PGBRIDGE_TEST_CACHE:-/var/cache/pgbridge-test}"
IMAGE="localhost/pgbridge:test"
say() { echo "container-test: $*" >&2; }
# runc rather than crun (crun refuses hybrid cgroup hierarchies, as in a
# container without cgroup namespaces), and resource limits below the
# caller's (the defaults raise them, which needs CAP_SYS_RESOURCE).
podman() {
  local sub=$1
  shift
  case "$sub" in
    run | build) command podman --runtime runc "$sub" --ulimit nofile=8192:8192 --ulimit nproc=4096:4096 "$@" ;;
    *) command podman --runtime runc "$sub" "$@" ;;
  esac
}
fail() { say "FAILED: $*"; exit 1; }

for tool in podman runc debootstrap curl psql python3; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing (scripts/deps.sh installs it)"
done
[ "$(id -u)" -eq 0 ] || fail "needs root (debootstrap, podman's rootful storage)"
mkdir -p "$CACHE"

# --- base images ------------------------------------------------------------
# The Debian mirror this machine's apt uses.
mirror() {
  local m=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    m="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
  fi
  if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
    m="$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)"
  fi
  [ -n "$m" ] || fail "no Debian mirror found in /etc/apt/sources.list(.d)"
  echo "$m"
}

# Bump when the rootfs recipe changes: the cached tarball and the imported
# image are remade.
ROOTFS_VERSION=2
rootfs_tar="$CACHE/bookworm-slim-rootfs-v$ROOTFS_VERSION.tar"
label() { # image label
  podman image inspect --format "{{index .Labels \"$2\"}}" "$1" 2>/dev/null || true
}
if [ "$(label localhost/debian:bookworm-slim pgbridge.test.rootfs)" != "$ROOTFS_VERSION" ]; then
  if [ ! -s "$rootfs_tar" ]; then
    say "debootstrap bookworm minbase (cached in $rootfs_tar)"
    tmp_root="$(mktemp -d)"
    debootstrap --variant=minbase bookworm "$tmp_root/rootfs" "$(mirror)" >"$tmp_root/log" 2>&1 ||
      { tail -20 "$tmp_root/log" >&2; fail "debootstrap"; }
    # What Debian's slim images leave out: documentation, manual pages,
    # translations (also for packages installed later), package lists, and
    # apt's caches (their docker-clean and no-languages settings).
    r="$tmp_root/rootfs"
    cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$r/etc/apt/apt.conf.d/docker-no-languages"
    cat >"$r/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
    find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/* \
      "$r"/usr/share/lintian/* "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin \
      "$r"/var/cache/apt/archives/*.deb "$r"/var/log/*.log "$r"/var/log/apt/*
    tar -C "$tmp_root/rootfs" -cf "$rootfs_tar.part" .
    mv "$rootfs_tar.part" "$rootfs_tar"
    rm -rf "$tmp_root"
  fi
  say "importing $rootfs_tar as debian:bookworm-slim"
  podman import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' --change "LABEL pgbridge.test.rootfs=$ROOTFS_VERSION" \
    "$rootfs_tar" localhost/debian:bookworm-slim >/dev/null
fi

sysroot="$(rustc --print sysroot)"
# Remade when the toolchain or the base image changes.
rust_version="$(rustc --version) on $(podman image inspect --format '{{.Id}}' localhost/debian:bookworm-slim)"
if [ "$(label localhost/rust:1-bookworm pgbridge.test.rustc)" != "$rust_version" ]; then
  say "making rust:1-bookworm (Debian's C toolchain; $rust_version mounted from $sysroot)"
  ctx="$(mktemp -d)"
  cat >"$ctx/Containerfile" <<EOF
FROM localhost/debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc g++ libc6-dev make perl pkg-config libssl-dev zlib1g-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV CARGO_HOME=/usr/local/cargo RUSTUP_HOME=/usr/local/rustup \
    PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL pgbridge.test.rustc="$rust_version"
EOF
  podman build --network host -t localhost/rust:1-bookworm "$ctx" >"$CACHE/rust-image.log" 2>&1 ||
    { tail -30 "$CACHE/rust-image.log" >&2; fail "making the rust:1-bookworm stand-in"; }
  rm -rf "$ctx"
fi

# --- the image ----------------------------------------------------------------
registry="${CARGO_HOME:-$HOME/.cargo}/registry"
mkdir -p "$registry" "$CACHE/target"
say "building deploy/Containerfile (log: $CACHE/build.log)"
start=$(date +%s)
podman build --pull=never --format docker --network host \
  -v "$sysroot:/usr/local/rust:ro" \
  -v "$registry:/usr/local/cargo/registry" \
  -v "$CACHE/target:/src/target" \
  -f deploy/Containerfile -t "$IMAGE" . >"$CACHE/build.log" 2>&1 ||
  { tail -40 "$CACHE/build.log" >&2; fail "podman build"; }
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "image built in $(($(date +%s) - start)) s, size $((size / 1024 / 1024)) MiB ($size bytes)"

[ "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" = pgbridge ] ||
  fail "the image does not run as the pgbridge user"
podman image inspect --format '{{json .Config.Entrypoint}}' "$IMAGE" | grep -q '"pgbridge"' ||
  fail "the entrypoint is not pgbridge"
podman run --rm --network none "$IMAGE" --version | grep -q '^pgbridge ' ||
  fail "pgbridge --version does not run in the image"

# --- two clusters on loopback -------------------------------------------------
if [ -n "${PG_BIN:-}" ]; then
  bin="$PG_BIN"
elif command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
  bin="$(pg_config --bindir)"
else
  bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
fi
work="$(mktemp -d)"
chmod 755 "$work"
chown postgres "$work" # the servers write their logs and sockets here
containers=()
cleanup() {
  local c
  for c in "${containers[@]}"; do podman rm -f "$c" >/dev/null 2>&1 || true; done
  for d in src dst; do
    [ -d "$work/$d" ] && runuser -u postgres -- "$bin/pg_ctl" -D "$work/$d" -m immediate stop >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
src_port=$(free_port)
dst_port=$(free_port)
echo superpw >"$work/pwfile"
chown postgres "$work/pwfile"
for d in src dst; do
  install -d -o postgres "$work/$d"
  runuser -u postgres -- "$bin/initdb" -D "$work/$d" -U postgres -A scram-sha-256 \
    --pwfile="$work/pwfile" >"$work/$d.initdb.log" 2>&1 || { cat "$work/$d.initdb.log" >&2; fail "initdb $d"; }
done
pgstart() {
  runuser -u postgres -- "$bin/pg_ctl" -D "$work/$1" -l "$work/$1.log" -w -o \
    "-p $2 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work -c wal_level=logical" start \
    >/dev/null || { cat "$work/$1.log" >&2; fail "starting the $1 cluster"; }
}
pgstart src "$src_port"
pgstart dst "$dst_port"
export PGPASSWORD=superpw
sql() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d "$2" -tA -c "$3"; }
sql "$src_port" postgres "CREATE DATABASE app"
sql "$dst_port" postgres "CREATE DATABASE warehouse"
sql "$src_port" app "CREATE ROLE replicator LOGIN REPLICATION PASSWORD 'src pw';
  CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric, note text);
  INSERT INTO orders SELECT g, g * 1.5, 'copied' FROM generate_series(1, 1000) g;
  CREATE PUBLICATION analytics_pub FOR TABLE orders;
  GRANT SELECT ON orders TO replicator;
  GRANT CREATE ON DATABASE app TO replicator;"
sql "$dst_port" warehouse "CREATE ROLE writer LOGIN PASSWORD 'dst pw';
  GRANT CREATE ON DATABASE warehouse TO writer; GRANT CREATE ON SCHEMA public TO writer;"

http1=$(free_port)
http2=$(free_port)
# Passwords come from the environment, as from a Secret or an env file.
# Both containers share the host's network here, so each gets its own
# http.listen port (in a pod they would share one file).
for port in "$http1" "$http2"; do
cat >"$work/pgbridge-$port.toml" <<EOF
[source]
url = "postgres://replicator:\${PGBRIDGE_SOURCE_PASSWORD}@127.0.0.1:$src_port/app"
slot = "pgbridge_container"
publications = ["analytics_pub"]

[[sink]]
name = "warehouse"
type = "postgres"
url = "postgres://writer:\${PGBRIDGE_TARGET_PASSWORD}@127.0.0.1:$dst_port/warehouse"
create_tables = true

[http]
listen = "0.0.0.0:$port"
EOF
chmod 644 "$work/pgbridge-$port.toml"
done

run_container() { # name http_port
  # --health-interval disable: no systemd timer (there may be no systemd);
  # the test runs the image's check itself with `podman healthcheck run`.
  podman run -d --name "$1" --network host --health-interval disable \
    -v "$work/pgbridge-$2.toml:/etc/pgbridge/pgbridge.toml:ro" \
    -e PGBRIDGE_SOURCE_PASSWORD='src pw' -e PGBRIDGE_TARGET_PASSWORD='dst pw' \
    -e PGBRIDGE_HTTP_PORT="$2" -e PGBRIDGE_LOG=info "$IMAGE" >/dev/null ||
    fail "podman run $1"
  containers+=("$1")
}
wait_for() { # seconds description command...
  local secs=$1 what=$2
  shift 2
  local deadline=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      for c in "${containers[@]}"; do say "logs of $c:"; podman logs --tail 30 "$c" >&2 || true; done
      fail "$what (waited $secs s)"
    fi
    sleep 1
  done
}
target_has() { [ "$(sql "$dst_port" warehouse "SELECT count(*) FROM orders WHERE $1")" = "$2" ]; }
healthz() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/healthz")" = 200 ]; }
phase_is() { curl -sf "http://127.0.0.1:$1/metrics" | grep -q "^pgbridge_phase{.*phase=\"$2\"} 1$"; }

name="pgbridge-test-$$"
run_container "$name-a" "$http1"
wait_for 60 "the container's /healthz answers 200" healthz "$http1"
wait_for 60 "the initial copy reaches the target" target_has "note = 'copied'" 1000
sql "$src_port" app "INSERT INTO orders VALUES (5001, 42, 'streamed')"
wait_for 30 "a row inserted on the source reaches the target" target_has "id = 5001 AND note = 'streamed'" 1
say "replication works: copy and a streamed insert arrived"

# The image's own HEALTHCHECK (docker format keeps it) passes.
podman healthcheck run "$name-a" >/dev/null 2>&1 || fail "podman healthcheck run: the image's HEALTHCHECK fails"

# /metrics names every metric src/http.rs defines.
metrics="$(curl -sf "http://127.0.0.1:$http1/metrics")" || fail "GET /metrics"
defined=$(grep -o '"pgbridge_[a-z_]*"' src/http.rs | tr -d '"' | sort -u)
[ -n "$defined" ] || fail "no metric names found in src/http.rs"
for m in $defined; do
  case "$m" in
    # Per table, with samples only for tables that had a backfill: declared.
    pgbridge_backfill_*)
      grep -q "^# TYPE $m " <<<"$metrics" || fail "/metrics does not declare $m (src/http.rs defines it)" ;;
    *)
      grep -q "^$m{" <<<"$metrics" || fail "/metrics has no $m sample (src/http.rs defines it)" ;;
  esac
done

# A second process of the same config waits as a standby, healthy, and
# takes over when the first stops (SIGTERM: exit 0).
run_container "$name-b" "$http2"
wait_for 60 "the second container reports the standby phase" phase_is "$http2" standby
healthz "$http2" || fail "a standby's /healthz is not 200"
podman stop -t 30 "$name-a" >/dev/null || fail "podman stop"
code=$(podman inspect --format '{{.State.ExitCode}}' "$name-a")
[ "$code" = 0 ] || { podman logs --tail 30 "$name-a" >&2; fail "pgbridge exited $code on SIGTERM"; }
wait_for 60 "the standby takes over" phase_is "$http2" streaming
sql "$src_port" app "INSERT INTO orders VALUES (5002, 43, 'after takeover')"
wait_for 30 "a row inserted after the takeover reaches the target" target_has "id = 5002" 1
healthz "$http2" || fail "/healthz after the takeover"
say "ok: image $IMAGE, $((size / 1024 / 1024)) MiB; replication, health check, metrics, standby takeover"
