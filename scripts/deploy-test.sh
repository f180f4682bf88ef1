#!/usr/bin/env bash
# Checks deploy/ without a cluster: the alert rules (promtool check rules,
# promtool test rules), the compose setup's Prometheus config, the Grafana
# dashboard's and the rules' metric names against src/http.rs, the
# Kubernetes manifests' and compose file's consistency
# (scripts/check-deploy.py), and the systemd unit (systemd-analyze verify
# and its hardening score). Any problem exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "deploy-test: FAILED: $*" >&2; exit 1; }

command -v promtool >/dev/null 2>&1 || fail "promtool is missing (scripts/deps.sh installs it)"
promtool check rules deploy/monitoring/pgbridge-alerts.yml
(cd deploy/monitoring && promtool test rules pgbridge-alerts.test.yml)

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The compose setup's prometheus.yml, with the rules where compose mounts them.
sed "s#/etc/prometheus/pgbridge-alerts.yml#$PWD/deploy/monitoring/pgbridge-alerts.yml#" \
  deploy/compose/prometheus.yml >"$tmp/prometheus.yml"
promtool check config "$tmp/prometheus.yml"

py=""
for p in python3 /usr/bin/python3; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import yaml, tomllib' >/dev/null 2>&1; then py="$p"; break; fi
done
[ -n "$py" ] || fail "no python3 (3.11+) with the yaml module (scripts/deps.sh installs python3-yaml)"
"$py" scripts/check-deploy.py

# systemd: the unit as installed, with ExecStart pointing at a built binary
# (verify checks that the command exists). Any message is a failure:
# verify only warns about unknown or malformed settings.
if command -v systemd-analyze >/dev/null 2>&1; then
  bin="$PWD/target/debug/pgbridge"
  [ -x "$bin" ] || cargo build --locked --bin pgbridge
  sed "s#/usr/local/bin/pgbridge#$bin#g" deploy/systemd/pgbridge.service >"$tmp/pgbridge.service"
  out="$(systemd-analyze verify "$tmp/pgbridge.service" 2>&1)" || fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify pgbridge.service: $out"
  # Exposure 0 (locked down) to 10 (unprotected); the unit scores 1.4.
  out="$(systemd-analyze security --offline=yes --threshold=25 "$tmp/pgbridge.service" 2>&1)" ||
    fail "pgbridge.service is less hardened than expected: $(tail -1 <<<"$out")"
  echo "deploy-test: pgbridge.service verified, $(tail -1 <<<"$out" | sed 's/^→ //')"
else
  fail "systemd-analyze is missing (Debian's systemd package)"
fi
echo "deploy-test: ok"
