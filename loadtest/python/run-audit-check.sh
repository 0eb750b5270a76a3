#!/usr/bin/env bash
# Dispatch and audit from Python (grpcio stubs generated from proto/): installs what it needs
# (grpcio, grpcio-tools, shapely from PyPI; Debian's Chromium to draw the SVG, when root),
# builds and starts a private citd (scenario clock, fresh store, loopback), runs
# audit_check.py, stops citd. Outputs (GeoJSON, GPX, SVG, PNG) stay in the printed folder.
#
#   loadtest/python/run-audit-check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q grpcio grpcio-tools shapely
browser=$(command -v chromium || true)
if [ -z "$browser" ] && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && browser=/usr/bin/chromium
fi
cargo build --release -q -p citd --bins
data=$(mktemp -d /tmp/cit-audit-check.XXXXXX)
port=$((40000 + RANDOM % 20000))
# TLS and tokens from a development PKI beside the store.
target/release/cit pki init "$data/pki" > /dev/null
target/release/citd --data-dir "$data/store" --clock scenario --listen "127.0.0.1:$port" \
  --metrics-listen off --log-level error \
  --tls-cert "$data/pki/server.pem" --tls-key "$data/pki/server.key.pem" --tls-client-ca "$data/pki/ca.pem" \
  --token-key "local-1=$data/pki/token-local-1.pub.pem" --run-signing-key "$data/pki/run-signing.key.pem" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
# Ready when it answers.
for _ in $(seq 1 100); do
  if target/release/cit audit --addr "127.0.0.1:$port" --pki "$data/pki" verify none 2>&1 | grep -q NotFound; then break; fi
  sleep 0.1
done
python3 loadtest/python/audit_check.py --addr "127.0.0.1:$port" --cit target/release/cit --pki "$data/pki" \
  --out "$data/out" ${browser:+--browser "$browser"}
echo "outputs: $data/out"
