#!/usr/bin/env bash
# Deploy benchmark: time from `orca deploy` of a new 3-replica service to its first proxied
# 200 and to all 3 replicas ready, and from `docker kill` of a replica to 3 ready again.
# Peer in the same run: Docker Swarm on the same engine (`docker service create --replicas 3`
# of the same FROM-scratch image, which waits for convergence).
#
#   bench/deploy.sh [RUNS]        (default 5; prints a Markdown table for BENCHMARKS.md)
#   BENCH_NO_SWARM=1 bench/deploy.sh   (orca only)
#
# ORCA_LOG=info,orca=debug bench/deploy.sh keeps a timeline: the server's log is copied to
# target/bench-deploy/server.log (and every run's per-phase times are printed).
#
# Loopback only. Leaves no container, network or swarm behind.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
root=$PWD
work=$(mktemp -d)
api_port=16880; http_port=18080
export ORCA_HOME=$work/home ORCA_CONFIG_DIR=$work/config ORCA_API=http://127.0.0.1:$api_port
cluster=bench$$

cargo build --release -q -p orca
orca=$root/target/release/orca
tests/build-testapp-image.sh orca-testapp:latest >/dev/null

mkdir -p "$ORCA_CONFIG_DIR"
printf '[cluster]\nname = "%s"\n\n[[token]]\nname = "bench"\nvalue = "bench-token-0123456789"\nrole = "admin"\n' "$cluster" >"$ORCA_CONFIG_DIR/cluster.toml"
export ORCA_TOKEN=bench-token-0123456789
ORCA_API_ADDR=127.0.0.1:$api_port ORCA_HTTP_ADDR=127.0.0.1:$http_port ORCA_HTTPS_ADDR=127.0.0.1:0 ORCA_LOG=${ORCA_LOG:-warn} "$orca" server 2>"$work/server.log" &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  mkdir -p "$root/target/bench-deploy" && cp "$work/server.log" "$root/target/bench-deploy/server.log" 2>/dev/null || true
  ids=$(docker ps -aq --filter "label=orca.cluster=$cluster"); [ -n "$ids" ] && docker rm -f $ids >/dev/null
  for n in $(docker network ls -q --filter "label=orca.cluster=$cluster"); do docker network rm "$n" >/dev/null || true; done
  docker service rm benchswarm >/dev/null 2>&1 || true
  [ "${swarm_started:-0}" = 1 ] && docker swarm leave --force >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
until curl -fsS "$ORCA_API/api/v1/health" >/dev/null 2>&1; do sleep 0.05; done

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
ready_count() { "$orca" status --project "$1" -o json | python3 -c 'import json,sys; s=json.load(sys.stdin)["services"]; print(s[0]["ready_replicas"] if s else 0)'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

first=(); conv=(); heal=()
for i in $(seq 1 "$runs"); do
  p=b$i
  mkdir -p "$ORCA_CONFIG_DIR/services/$p"
  printf '[[service]]\nname = "web"\nimage = "orca-testapp:latest"\nreplicas = 3\nport = 8080\ndomain = "%s.bench"\nhealth = "/healthz"\n' "$p" >"$ORCA_CONFIG_DIR/services/$p/service.toml"
  t0=$(date +%s%N)
  (cd "$ORCA_CONFIG_DIR/services/$p" && "$orca" deploy --no-wait >/dev/null)
  until curl -fs -o /dev/null -H "Host: $p.bench" "http://127.0.0.1:$http_port/"; do sleep 0.005; done
  first+=("$(ms "$t0")")
  until [ "$(ready_count "$p")" = 3 ]; do sleep 0.01; done
  conv+=("$(ms "$t0")")
  victim=$(docker ps -q --filter "label=orca.cluster=$cluster" --filter "label=orca.project=$p" | head -1)
  t1=$(date +%s%N)
  docker kill "$victim" >/dev/null
  until [ "$(ready_count "$p")" = 3 ] && ! docker ps -q --no-trunc | grep -q "^$victim"; do sleep 0.01; done
  heal+=("$(ms "$t1")")
  echo "run $i: first 200 ${first[-1]} ms, 3 ready ${conv[-1]} ms, heal ${heal[-1]} ms" >&2
  "$orca" stop --project "$p" >/dev/null
done

swarm=()
# BENCH_NO_SWARM=1 skips the peer (a swarm on the shared engine would disturb other users of
# it, such as tests/nodes.rs, whose master engine is a swarm manager).
if [ "${BENCH_NO_SWARM:-0}" != 1 ] && docker swarm init --advertise-addr 127.0.0.1 >/dev/null 2>&1; then
  swarm_started=1
  for i in $(seq 1 "$runs"); do
    t0=$(date +%s%N)
    docker service create -q --detach=false --replicas 3 --name benchswarm orca-testapp:latest >/dev/null 2>&1
    swarm+=("$(ms "$t0")")
    docker service rm benchswarm >/dev/null
    sleep 2
  done
fi

echo "| measurement (median of $runs, ms) | orca | Docker Swarm |"
echo "| --- | --- | --- |"
echo "| new 3-replica service: deploy → first proxied 200 | $(printf '%s\n' "${first[@]}" | median) | — |"
echo "| new 3-replica service: deploy → 3 ready | $(printf '%s\n' "${conv[@]}" | median) | $( [ ${#swarm[@]} -gt 0 ] && printf '%s\n' "${swarm[@]}" | median || echo n/a) (service create, converged) |"
echo "| docker kill one replica → 3 ready again | $(printf '%s\n' "${heal[@]}" | median) | — |"
