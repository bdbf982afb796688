#!/usr/bin/env bash
# Backup and restore throughput of one service's named volume holding SIZE_MIB (default
# 1024) of random data: `orca backup all` (read through a never-started helper container,
# sha256 while writing, store copy) and `orca restore` (checksums first, the service stopped,
# the volume replaced through a helper, started again), each timed end to end from the CLI.
# The data is put into the volume through the engine's archive API (`docker cp` into the
# service's container): no image is pulled.
#
#   bench/backup.sh [SIZE_MIB]     (prints a Markdown row for BENCHMARKS.md)
#
# ORCA_BIN=path/to/orca uses that binary instead of building a release one. Loopback only.
# Leaves no container, network or volume behind.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
root=$PWD
work=$(mktemp -d)
api_port=16891; http_port=18091
export ORCA_HOME=$work/home ORCA_CONFIG_DIR=$work/config ORCA_API=http://127.0.0.1:$api_port
cluster=benchbak$$

if [ -z "${ORCA_BIN:-}" ]; then
  cargo build --release -q -p orca
  ORCA_BIN=$root/target/release/orca
fi
orca=$(realpath "$ORCA_BIN")
tests/build-testapp-image.sh orca-testapp:latest >/dev/null

mkdir -p "$ORCA_CONFIG_DIR/services/p"
printf '[cluster]\nname = "%s"\n\n[[token]]\nname = "bench"\nvalue = "bench-token-0123456789"\nrole = "admin"\n' "$cluster" >"$ORCA_CONFIG_DIR/cluster.toml"
export ORCA_TOKEN=bench-token-0123456789
ORCA_API_ADDR=127.0.0.1:$api_port ORCA_HTTP_ADDR=127.0.0.1:$http_port ORCA_HTTPS_ADDR=127.0.0.1:0 ORCA_LOG=warn "$orca" server 2>"$work/server.log" &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  ids=$(docker ps -aq --filter "label=orca.cluster=$cluster"); [ -n "$ids" ] && docker rm -f $ids >/dev/null
  for n in $(docker network ls -q --filter "label=orca.cluster=$cluster"); do docker network rm "$n" >/dev/null || true; done
  vols=$(docker volume ls -q --filter "label=orca.cluster=$cluster"); [ -n "$vols" ] && docker volume rm -f $vols >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
until curl -fsS "$ORCA_API/api/v1/health" >/dev/null 2>&1; do sleep 0.05; done

printf '[[service]]\nname = "db"\nimage = "orca-testapp:latest"\nport = 8080\ndomain = "db.bench"\nhealth = "/healthz"\nvolumes = ["data:/data"]\n' >"$ORCA_CONFIG_DIR/services/p/service.toml"
(cd "$ORCA_CONFIG_DIR" && "$orca" deploy >/dev/null)
until curl -fsS -H 'Host: db.bench' "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1; do sleep 0.1; done
container=$(docker ps -q --filter "label=orca.cluster=$cluster" --filter label=orca.service=db | head -1)

mkdir -p "$work/data/nested"
head -c $((size_mib * 1024 * 1024)) /dev/urandom >"$work/data/nested/blob"
docker cp "$work/data/." "$container:/data/" >/dev/null
want=$(sha256sum "$work/data/nested/blob" | cut -d' ' -f1)
rm -rf "$work/data"

now() { date +%s.%N; }
t0=$(now); out=$("$orca" backup all); t1=$(now)
id=$(echo "$out" | awk '{print $2}')
bytes=$(du -sb "$ORCA_HOME/backups/$id" | cut -f1)
t2=$(now); "$orca" restore "$id" >/dev/null; t3=$(now)
until curl -fsS -H 'Host: db.bench' "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1; do sleep 0.1; done
t4=$(now)
container=$(docker ps -q --filter "label=orca.cluster=$cluster" --filter label=orca.service=db | head -1)
got=$(docker cp "$container:/data/nested/blob" - | tar -xO | sha256sum | cut -d' ' -f1)
[ "$got" = "$want" ] || { echo "restored data differs: $got != $want" >&2; exit 1; }

awk -v mib="$size_mib" -v b="$bytes" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v t3="$t3" -v t4="$t4" 'BEGIN {
  bk = t1 - t0; rs = t3 - t2; rd = t4 - t2
  printf "| volume | backup dir | backup | backup MiB/s | restore | restore MiB/s | restore until ready |\n"
  printf "| --- | --- | --- | --- | --- | --- | --- |\n"
  printf "| %d MiB random, 1 file | %.0f MiB | %.1f s | %.0f | %.1f s | %.0f | %.1f s |\n", mib, b / 1048576, bk, mib / bk, rs, mib / rs, rd
}'
