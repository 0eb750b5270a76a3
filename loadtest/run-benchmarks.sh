#!/usr/bin/env bash
# Runs every benchmark with its peers in the same run and prints the figures recorded in
# BENCHMARKS.md. Installs and starts what the peers need (PostgreSQL and PostGIS from Debian's
# packages) on loopback only, and stops it at the end. Not part of CI: it takes minutes.
#
#   loadtest/run-benchmarks.sh            # everything
#   SECONDS_PER_RUN=10 loadtest/run-benchmarks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_PER_RUN:-20}
pgport=${PGPORT_BENCH:-54329}
pgdata=$(mktemp -d /tmp/cit-bench-pg.XXXXXX)

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr), $(date -u +%FT%TZ)"

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  echo "installing PostgreSQL (Debian package) for the peer benchmark"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
pgbin=$(dirname "$(ls /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -n1)")
pgver=$(basename "$(dirname "$pgbin")")
if ! ls /usr/share/postgresql/"$pgver"/extension/postgis.control >/dev/null 2>&1; then
  echo "installing PostGIS (Debian package) for the engine's peer benchmark"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-$pgver-postgis-3" >/dev/null
fi
chown postgres "$pgdata"
runas() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
runas "$pgbin/initdb -D $pgdata -U postgres -A trust >/dev/null"
# Durable like us: fsync and synchronous commit on (the defaults), on the same disk.
runas "$pgbin/pg_ctl -D $pgdata -o '-p $pgport -k /tmp -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on' -l $pgdata/log -w start >/dev/null"
trap 'runas "$pgbin/pg_ctl -D $pgdata -m fast stop >/dev/null" || true; rm -rf "$pgdata"' EXIT

cargo build --release -q -p citd -p cit-loadtest --features cit-loadtest/peers

echo; echo "== embedded store: batched durable appends (peers: raw redb, SQLite WAL)"
target/release/store-bench --events 1000000
echo; echo "== embedded store in citd's shape: 10,000 streams, one event per append (same peers)"
target/release/store-bench --events 1000000 --batch 1 --writers 2000 --streams 10000

echo; echo "== durable streamed ingest over loopback gRPC (peer: PostgreSQL COPY)"
target/release/ingest --seconds "$secs" --peer-postgres "host=127.0.0.1 port=$pgport user=postgres dbname=postgres"

echo; echo "== detection engine per fix (one core; peer: PostGIS answering the corridor and zone questions)"
target/release/engine-bench --peer-postgis "host=127.0.0.1 port=$pgport user=postgres dbname=postgres"

echo; echo "== detection engine per fix, criterion (peer: the same questions by scanning every segment and zone)"
cargo bench -q -p cit-loadtest --features peers --bench engine

echo; echo "== detection under GPS error: false alarms on clean runs, then U-turns and long stops raised"
target/release/noise-sweep --sigma 4,8,12,16 --seeds 10
target/release/noise-sweep --sigma 4,8,12 --seeds 10 --incident uturn
target/release/noise-sweep --sigma 4,8,12 --seeds 10 --incident stop
echo "-- the same on 100 new multi-stop runs over the network (as GBG-CIT03 is planned)"
target/release/noise-sweep --tours 100 --seeds 2 --sigma 4,8,12
target/release/noise-sweep --tours 100 --seeds 1 --sigma 4,8,12 --incident uturn
target/release/noise-sweep --tours 100 --seeds 1 --sigma 4,8,12 --incident stop

echo; echo "== dispatch and audit under load (10,000 active runs; peers: no watcher, PostgreSQL as GetRun's read model; goals)"
target/release/dispatch-bench --runs 10000 --seconds "$secs" --watchers 100 --rate 50000 --long-run-hours 8 \
  --peer-postgres "host=127.0.0.1 port=$pgport user=postgres dbname=postgres"
