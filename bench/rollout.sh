#!/usr/bin/env bash
# Rollout benchmark, under a bounded constant-rate load through the proxy:
#   (a) a rolling update of 3 replicas: from `orca deploy` of v2 to the CLI reporting done,
#       with the load on the service being updated;
#   (b) a new 3-replica service: from `orca deploy` to its first proxied 200, with the same
#       load on another (steady) service;
# and the requests of the load that failed (non-2xx or connection error) in each.
#
#   bench/rollout.sh [RUNS]       (default 5; prints a Markdown table for BENCHMARKS.md)
#
# The load is a small python3 script (http.client, one new connection per request, like
# the e2e tests' client) at RATE requests/s (default 100), capped at 120 s per run.
# Loopback only. Leaves no container or network behind.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
rate=${RATE:-100}
root=$PWD
work=$(mktemp -d)
api_port=16881; http_port=18081
export ORCA_HOME=$work/home ORCA_CONFIG_DIR=$work/config ORCA_API=http://127.0.0.1:$api_port
cluster=benchr$$

cargo build --release -q -p orca
orca=$root/target/release/orca
tests/build-testapp-image.sh orca-testapp:latest >/dev/null

cat >"$work/load.py" <<'PY'
# Constant-rate GETs with a Host header until SIGTERM or the cap; prints "ok failed" at exit.
import http.client, signal, sys, time
port, host, rate, cap = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
ok = failed = 0
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
start = time.monotonic(); nxt = start; period = 1.0 / rate
while not stop and time.monotonic() - start < cap:
    now = time.monotonic()
    if nxt > now:
        time.sleep(nxt - now)
    nxt = max(nxt + period, time.monotonic())
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/", headers={"Host": host, "Connection": "close"})
        r = c.getresponse(); r.read(); c.close()
        if 200 <= r.status < 300: ok += 1
        else:
            failed += 1; print(f"{time.monotonic()-start:.3f}s {r.status}", file=sys.stderr)
    except Exception as e:
        failed += 1; print(f"{time.monotonic()-start:.3f}s {e!r}", file=sys.stderr)
print(ok, failed)
PY

mkdir -p "$ORCA_CONFIG_DIR"
printf '[cluster]\nname = "%s"\n\n[[token]]\nname = "bench"\nvalue = "bench-token-0123456789"\nrole = "admin"\n' "$cluster" >"$ORCA_CONFIG_DIR/cluster.toml"
export ORCA_TOKEN=bench-token-0123456789
ORCA_API_ADDR=127.0.0.1:$api_port ORCA_HTTP_ADDR=127.0.0.1:$http_port ORCA_HTTPS_ADDR=127.0.0.1:0 ORCA_LOG=warn "$orca" server 2>"$work/server.log" &
server=$!
load=""
cleanup() {
  [ -n "$load" ] && kill "$load" 2>/dev/null || true
  kill "$server" 2>/dev/null || true
  ids=$(docker ps -aq --filter "label=orca.cluster=$cluster"); [ -n "$ids" ] && docker rm -f $ids >/dev/null
  for n in $(docker network ls -q --filter "label=orca.cluster=$cluster"); do docker network rm "$n" >/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
until curl -fsS "$ORCA_API/api/v1/health" >/dev/null 2>&1; do sleep 0.05; done

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
service() { # project version
  mkdir -p "$ORCA_CONFIG_DIR/services/$1"
  printf '[[service]]\nname = "web"\nimage = "orca-testapp:latest"\nreplicas = 3\nport = 8080\ndomain = "%s.bench"\nhealth = "/healthz"\n\n[service.env]\nVERSION = "%s"\n' "$1" "$2" >"$ORCA_CONFIG_DIR/services/$1/service.toml"
}
deploy() { (cd "$ORCA_CONFIG_DIR/services/$1" && shift && "$orca" deploy "$@" >/dev/null); }
load_start() { python3 "$work/load.py" "$http_port" "$1.bench" "$rate" 120 >"$work/load.out" 2>>"$work/load.err" & load=$!; sleep 0.5; }
load_stop() { kill -TERM "$load"; wait "$load" || true; load=""; read -r ok failed <"$work/load.out"; }  # sets ok, failed

# The steady service that carries the load during (b).
service steady v1; deploy steady

roll=(); first=(); failed_a=0; failed_b=0; total_a=0; total_b=0
for i in $(seq 1 "$runs"); do
  p=r$i
  # (b) new service → first proxied 200, load on the steady service.
  service "$p" v1
  load_start steady
  t0=$(date +%s%N)
  deploy "$p" --no-wait
  until curl -fs -o /dev/null -H "Host: $p.bench" "http://127.0.0.1:$http_port/"; do sleep 0.005; done
  first+=("$(ms "$t0")")
  load_stop; failed_b=$((failed_b + failed)); total_b=$((total_b + ok + failed))
  deploy "$p"   # wait until all 3 are ready (no change: revision 1 unchanged)

  # (a) rolling update v1 → v2 of the same service, load on it.
  load_start "$p"
  service "$p" v2
  t1=$(date +%s%N)
  if ! deploy "$p" --timeout-secs 120; then
    echo "run $i: rolling update failed; server log tail:" >&2; tail -20 "$work/server.log" >&2
  fi
  roll+=("$(ms "$t1")")
  sleep 1   # old instances are drained and stopped around now
  load_stop; failed_a=$((failed_a + failed)); total_a=$((total_a + ok + failed))
  "$orca" stop --project "$p" >/dev/null
done
if [ -s "$work/load.err" ]; then echo "failed requests (first 20):" >&2; head -20 "$work/load.err" >&2; fi

echo "| measurement (median of $runs, ms; load $rate req/s) | orca | failed requests / total |"
echo "| --- | --- | --- |"
echo "| rolling update of 3 replicas: deploy v2 → CLI done | $(printf '%s\n' "${roll[@]}" | median) | $failed_a / $total_a |"
echo "| new 3-replica service: deploy → first proxied 200 | $(printf '%s\n' "${first[@]}" | median) | $failed_b / $total_b (steady service) |"
