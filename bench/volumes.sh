#!/usr/bin/env bash
# Stop-first gap: a service with a writable, not shared named volume rolls out stop-first
# (the old instance is drained and stopped before the new one starts on the volume). This
# measures the gap — the longest time the proxy had no ready instance to send a request to
# (no 200) — during a rollout to a new image, polling `GET /` through the proxy every 5 ms.
#
#   bench/volumes.sh [RUNS]     (default 5; prints a Markdown table for BENCHMARKS.md)
#
# ORCA_BIN=path/to/orca uses that binary instead of building a release one. Loopback only.
# Leaves no container, network or volume behind.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
root=$PWD
work=$(mktemp -d)
api_port=16890; http_port=18090
export ORCA_HOME=$work/home ORCA_CONFIG_DIR=$work/config ORCA_API=http://127.0.0.1:$api_port
cluster=benchvol$$

if [ -z "${ORCA_BIN:-}" ]; then
  cargo build --release -q -p orca
  ORCA_BIN=$root/target/release/orca
fi
orca=$ORCA_BIN
tests/build-testapp-image.sh orca-testapp:latest >/dev/null
docker tag orca-testapp:latest orca-testapp:bench-vol-a
docker tag orca-testapp:latest orca-testapp:bench-vol-b

mkdir -p "$ORCA_CONFIG_DIR/services/p"
printf '[cluster]\nname = "%s"\n\n[[token]]\nname = "bench"\nvalue = "bench-token-0123456789"\nrole = "admin"\n' "$cluster" >"$ORCA_CONFIG_DIR/cluster.toml"
export ORCA_TOKEN=bench-token-0123456789
ORCA_API_ADDR=127.0.0.1:$api_port ORCA_HTTP_ADDR=127.0.0.1:$http_port ORCA_HTTPS_ADDR=127.0.0.1:0 ORCA_LOG=warn "$orca" server 2>"$work/server.log" &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  ids=$(docker ps -aq --filter "label=orca.cluster=$cluster"); [ -n "$ids" ] && docker rm -f $ids >/dev/null
  for n in $(docker network ls -q --filter "label=orca.cluster=$cluster"); do docker network rm "$n" >/dev/null || true; done
  vols=$(docker volume ls -q --filter "label=orca.cluster=$cluster"); [ -n "$vols" ] && docker volume rm -f $vols >/dev/null
  docker rmi orca-testapp:bench-vol-a orca-testapp:bench-vol-b >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
until curl -fsS "$ORCA_API/api/v1/health" >/dev/null 2>&1; do sleep 0.05; done

write() {
  printf '[[service]]\nname = "db"\nimage = "orca-testapp:bench-vol-%s"\nport = 8080\ndomain = "db.bench"\nvolumes = ["data:/data"]\n\n[service.readiness]\npath = "/healthz"\ninterval_secs = 1\n\n[service.deploy]\ndrain_timeout_secs = 1\n' "$1" >"$ORCA_CONFIG_DIR/services/p/service.toml"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

write a
(cd "$ORCA_CONFIG_DIR/services/p" && "$orca" deploy >/dev/null)

gaps=(); totals=()
for i in $(seq 1 "$runs"); do
  if [ $((i % 2)) = 1 ]; then write b; else write a; fi
  # Poll the proxy until the rollout is over; print the longest stretch without a 200 (ms)
  # and the deploy's duration (ms).
  out=$(python3 - "$http_port" "$ORCA_CONFIG_DIR/services/p" "$orca" <<'PY'
import http.client, subprocess, sys, time
port, cwd, orca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def ok():
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", "/", headers={"Host": "db.bench"})
        return c.getresponse().status == 200
    except Exception:
        return False
t0 = time.monotonic()
deploy = subprocess.Popen([orca, "deploy"], cwd=cwd, stdout=subprocess.DEVNULL)
last_ok, longest, seen_gap = time.monotonic(), 0.0, False
while True:
    now = time.monotonic()
    if ok():
        longest = max(longest, now - last_ok)
        last_ok = now
        if deploy.poll() is not None and (seen_gap or now - t0 > 30):
            break
    else:
        seen_gap = True
    time.sleep(0.005)
print(round(longest * 1000), round((time.monotonic() - t0) * 1000))
PY
)
  gaps+=("${out% *}"); totals+=("${out#* }")
done

echo "| measurement (median of $runs, ms) | orca |"
echo "| --- | --- |"
echo "| stop-first rollout of a 1-replica service with a volume: longest stretch without a 200 | $(printf '%s\n' "${gaps[@]}" | median) (all: ${gaps[*]}) |"
echo "| the same rollout: \`orca deploy\` start → new instance serving | $(printf '%s\n' "${totals[@]}" | median) |"
