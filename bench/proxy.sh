#!/usr/bin/env bash
# Proxy benchmark: orca, nginx and caddy side by side in one run, against the same backend (one
# orca-testapp container per scenario, reached by every proxy at its bridge address), on the
# same machine. Four scenarios, access logs off for all three:
#   http1  HTTP/1.1 keep-alive on plain HTTP (wrk)
#   https  HTTPS, TLS 1.3, HTTP/1.1 keep-alive (wrk)
#   h2     HTTPS, TLS 1.3, HTTP/2, 10 streams per connection (h2load)
#   close  a new connection per request on plain HTTP (wrk with `Connection: close`)
# Runs alternate (orca, nginx, caddy, orca, ...) ROUNDS times per scenario; the table gives the
# median requests/s, p50 and p99 of the rounds, the errors of all rounds, and orca/nginx.
#
#   bench/proxy.sh [SECONDS] [CONNECTIONS] [ROUNDS]   (default 10 s per run, 64 connections, 3)
#
# Needs wrk, h2load, nginx and caddy (Debian: apt-get install -y wrk nghttp2-client nginx
# caddy), openssl and a running Docker Engine. Prints Markdown tables for BENCHMARKS.md and
# writes the raw outputs and the proxies' logs under $BENCH_OUT (default target/bench-proxy). Loopback only; the
# HTTPS runs need bench.orca.test to resolve to 127.0.0.1 (added to /etc/hosts when run as
# root). Also reports orca's RSS idle and under load. Leaves no container, network or process
# behind. BENCH_PERF=1 records a perf profile of orca's first run of each scenario.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-64}
rounds=${3:-3}
threads=2
root=$PWD
out=${BENCH_OUT:-$root/target/bench-proxy}
mkdir -p "$out"
work=$(mktemp -d)
api_port=16881
plain_host=plain.orca.test
tls_host=bench.orca.test
declare -A http_port=([orca]=18180 [nginx]=18181 [caddy]=18182)
declare -A https_port=([orca]=18543 [nginx]=18544 [caddy]=18545)
cluster=benchproxy$$

for tool in wrk h2load nginx caddy openssl docker curl python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed (apt-get install -y wrk nghttp2-client nginx caddy)" >&2; exit 1; }
done
if ! getent hosts "$tls_host" | grep -q '^127\.0\.0\.1'; then
  if [ "$(id -u)" = 0 ]; then
    printf '127.0.0.1 %s %s\n' "$tls_host" "$plain_host" >>/etc/hosts
  else
    echo "error: $tls_host must resolve to 127.0.0.1 (add it to /etc/hosts)" >&2; exit 1
  fi
fi

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# ORCA_BENCH_PROXY=edge: measure orca's proxy as the crate's `edge` example (the same `Proxy`
# with its defaults, a fixed routing table), release-built alone, while a debug `orca server`
# only deploys the backends; for when a release build of the whole server is out of reach.
# ORCA_BENCH_EDGE_BIN=PATH (with ORCA_BENCH_PROXY=edge): use that prebuilt `edge` binary, e.g.
# one built from another commit, for a before/after comparison in the same conditions.
mode=${ORCA_BENCH_PROXY:-server}
edge_bin=${ORCA_BENCH_EDGE_BIN:-$root/target/release/examples/edge}
if [ "$mode" = edge ]; then
  cargo build -q -p orca
  [ -n "${ORCA_BENCH_EDGE_BIN:-}" ] || cargo build --release -q -p orca-proxy --example edge
  orca=$root/target/debug/orca
else
  cargo build --release -q -p orca
  orca=$root/target/release/orca
fi
tests/build-testapp-image.sh orca-testapp:latest >/dev/null

export ORCA_HOME=$work/home ORCA_CONFIG_DIR=$work/config ORCA_API=http://127.0.0.1:$api_port
export ORCA_TOKEN=bench-token-0123456789
mkdir -p "$ORCA_CONFIG_DIR/services/bench"
printf '[cluster]\nname = "%s"\n\n[[token]]\nname = "bench"\nvalue = "%s"\nrole = "admin"\n' "$cluster" "$ORCA_TOKEN" >"$ORCA_CONFIG_DIR/cluster.toml"

# One self-signed P-256 certificate for every proxy.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=$tls_host" -addext "subjectAltName=DNS:$tls_host" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cp "$work/cert.pem" "$work/key.pem" "$ORCA_CONFIG_DIR/services/bench/"
# Two services of one image: a domain with a certificate is redirected on plain HTTP, so the
# plain-HTTP scenario uses a second domain (and its own container) for every proxy.
cat >"$ORCA_CONFIG_DIR/services/bench/service.toml" <<EOF
[[service]]
name = "plain"
image = "orca-testapp:latest"
port = 8080
domain = "$plain_host"
health = "/healthz"

[[service]]
name = "tls"
image = "orca-testapp:latest"
port = 8080
domain = "$tls_host"
health = "/healthz"
tls_cert = "cert.pem"
tls_key = "key.pem"
EOF

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  ids=$(docker ps -aq --filter "label=orca.cluster=$cluster"); [ -n "$ids" ] && docker rm -f $ids >/dev/null
  for n in $(docker network ls -q --filter "label=orca.cluster=$cluster"); do docker network rm "$n" >/dev/null || true; done
  # The proxies' own logs are kept beside the raw outputs (errors are diagnosed from them).
  for log in orca.log edge.log caddy.log; do [ -f "$work/$log" ] && cp "$work/$log" "$out/$log"; done
  rm -rf "$work"
}
trap cleanup EXIT

server_http=${http_port[orca]} server_https=${https_port[orca]}
[ "$mode" = edge ] && server_http=18190 server_https=18553
ORCA_API_ADDR=127.0.0.1:$api_port ORCA_HTTP_ADDR=127.0.0.1:$server_http \
  ORCA_HTTPS_ADDR=127.0.0.1:$server_https ORCA_LOG=warn "$orca" server 2>"$work/orca.log" &
pids+=($!)
orca_pid=$!
until curl -fsS "$ORCA_API/api/v1/health" >/dev/null 2>&1; do sleep 0.05; done
(cd "$ORCA_CONFIG_DIR/services/bench" && "$orca" deploy --timeout-secs 120 >/dev/null)
address() { "$orca" status -o json | python3 -c "import json,sys; print([s for s in json.load(sys.stdin)['services'] if s['name']=='$1'][0]['instances'][0]['address'])"; }
plain_backend=$(address plain)
tls_backend=$(address tls)
if [ "$mode" = edge ]; then
  "$edge_bin" "127.0.0.1:${http_port[orca]}" "127.0.0.1:${https_port[orca]}" \
    "$work/cert.pem" "$work/key.pem" "$tls_host" "$plain_host=$plain_backend" "$tls_host=$tls_backend" \
    2>"$work/edge.log" &
  pids+=($!)
  orca_pid=$!
fi

cat >"$work/nginx.conf" <<EOF
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
daemon on;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx-body;
  proxy_temp_path $work/nginx-proxy;
  fastcgi_temp_path $work/nginx-fastcgi;
  uwsgi_temp_path $work/nginx-uwsgi;
  scgi_temp_path $work/nginx-scgi;
  upstream plain { server $plain_backend; keepalive 128; }
  upstream tls { server $tls_backend; keepalive 128; }
  server {
    listen 127.0.0.1:${http_port[nginx]};
    server_name $plain_host;
    location / { proxy_pass http://plain; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$host; }
  }
  server {
    listen 127.0.0.1:${https_port[nginx]} ssl http2;
    server_name $tls_host;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    location / { proxy_pass http://tls; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$host; }
  }
}
EOF
nginx -c "$work/nginx.conf" -e "$work/nginx-error.log"

cat >"$work/Caddyfile" <<EOF
{
  admin off
  auto_https off
}
http://$plain_host:${http_port[caddy]} {
  bind 127.0.0.1
  reverse_proxy $plain_backend
}
https://$tls_host:${https_port[caddy]} {
  bind 127.0.0.1
  tls $work/cert.pem $work/key.pem
  reverse_proxy $tls_backend
}
EOF
XDG_DATA_HOME=$work XDG_CONFIG_HOME=$work caddy run --config "$work/Caddyfile" --adapter caddyfile >"$work/caddy.log" 2>&1 &
pids+=($!)
# Every proxy answers both scenarios before anything is measured (at most 30 s each).
wait_ok() { # proxy curl-args...
  local p=$1; shift
  for _ in $(seq 1 300); do curl -fsS -o /dev/null "$@" 2>/dev/null && return 0; sleep 0.1; done
  echo "error: $p does not answer curl $*" >&2
  tail -5 "$work"/*.log >&2 || true
  exit 1
}
for p in orca nginx caddy; do
  wait_ok "$p" -H "Host: $plain_host" "http://127.0.0.1:${http_port[$p]}/"
  wait_ok "$p" --cacert "$work/cert.pem" "https://$tls_host:${https_port[$p]}/"
done

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$orca_pid/status"; }
idle_rss=$(rss_kb)
rm -f "$out"/rss-*

# One run's output → "req/s p50 p99 errors" (latencies in ms; errors = non-2xx/3xx answers
# plus socket errors for wrk, failed + errored requests for h2load).
parse() { # file kind
  python3 - "$1" "$2" <<'PY'
import re, sys
path, kind = sys.argv[1], sys.argv[2]
text = open(path).read()
if kind == "wrk":
    def ms(v):
        n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
        return float(n) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = int(bad.group(1)) if bad else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        errors += sum(int(x) for x in sock.groups())
else:  # h2load, with per-request times in the .log beside the output
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1))
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
    errors = int(m.group(2)) + int(m.group(3))
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    errors += int(codes.group(3)) + int(codes.group(4))
    times = sorted(int(line.split("\t")[2]) for line in open(path[:-4] + ".log") if line.strip())
    p50 = times[len(times) // 2] / 1000
    p99 = times[min(len(times) - 1, len(times) * 99 // 100)] / 1000
print(f"{rps:.0f} {p50:.2f} {p99:.2f} {errors}")
PY
}

run() { # scenario proxy round
  local scenario=$1 p=$2 round=$3 file="$out/$1-$2-$3.txt" kind=wrk
  # BENCH_PERF=1: profile orca's server process during its first run (perf report in $out).
  local perf_pid=
  if [ "${BENCH_PERF:-0}" = 1 ] && [ "$p" = orca ] && [ "$round" = 1 ]; then
    perf record -F 499 -g -o "$out/$scenario-orca.perf.data" -p "$orca_pid" -- sleep "$secs" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  # orca's RSS is sampled in the middle of each of its runs.
  local sampler=
  if [ "$p" = orca ]; then
    (sleep "$((secs / 2))"; rss_kb >"$out/rss-$scenario-$round") &
    sampler=$!
  fi
  case $scenario in
    http1) wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -H "Host: $plain_host" "http://127.0.0.1:${http_port[$p]}/" >"$file" ;;
    https) wrk -t"$threads" -c"$conns" -d"${secs}s" --latency "https://$tls_host:${https_port[$p]}/" >"$file" ;;
    close) wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -H "Host: $plain_host" -H "Connection: close" "http://127.0.0.1:${http_port[$p]}/" >"$file" ;;
    h2) kind=h2load
        rm -f "${file%.txt}.log"
        h2load -t"$threads" -c"$conns" -m10 -D"$secs" --log-file="${file%.txt}.log" "https://$tls_host:${https_port[$p]}/" >"$file" ;;
  esac
  if [ -n "$sampler" ]; then
    wait "$sampler" || true
  fi
  if [ -n "$perf_pid" ]; then
    wait "$perf_pid" || true
    perf report -i "$out/$scenario-orca.perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -v '^#' | grep '%' | head -60 >"$out/$scenario-orca.perf.txt" || true
  fi
  parse "$file" "$kind"
}

# Warm every proxy's upstream pool and the backends once, untimed.
for p in orca nginx caddy; do
  wrk -t1 -c"$conns" -d2s -H "Host: $plain_host" "http://127.0.0.1:${http_port[$p]}/" >/dev/null
  wrk -t1 -c"$conns" -d2s "https://$tls_host:${https_port[$p]}/" >/dev/null
done
results=$out/results.txt
: >"$results"
for scenario in http1 https h2 close; do
  for round in $(seq 1 "$rounds"); do
    for p in orca nginx caddy; do
      echo "$scenario $p $round $(run "$scenario" "$p" "$round")" | tee -a "$results" >&2
    done
  done
done

python3 - "$results" "$rounds" <<'PY'
import statistics, sys
names = {"http1": "HTTP/1.1 keep-alive", "https": "HTTPS (TLS 1.3, HTTP/1.1 keep-alive)",
         "h2": "HTTPS HTTP/2 (h2load, 10 streams/conn)", "close": "new connection per request (Connection: close)"}
rows = {}
for line in open(sys.argv[1]):
    scenario, proxy, _round, rps, p50, p99, errors = line.split()
    rows.setdefault((scenario, proxy), []).append((float(rps), float(p50), float(p99), int(errors)))
print(f"Median of {sys.argv[2]} alternating runs per proxy and scenario.\n")
print("| scenario | proxy | requests/s | p50 ms | p99 ms | errors | orca/nginx req/s |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for scenario in ["http1", "https", "h2", "close"]:
    med = {}
    for proxy in ["orca", "nginx", "caddy"]:
        runs = rows[(scenario, proxy)]
        med[proxy] = [statistics.median(r[i] for r in runs) for i in range(3)] + [sum(r[3] for r in runs)]
    for proxy in ["orca", "nginx", "caddy"]:
        rps, p50, p99, errors = med[proxy]
        ratio = f"{med['orca'][0] / med['nginx'][0]:.2f}" if proxy == "orca" else ""
        print(f"| {names[scenario]} | {proxy} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {errors} | {ratio} |")
PY
echo
# (run is called in a subshell: the samples are collected from their files.)
peak_rss=$(cat "$out"/rss-* | sort -n | tail -1)
echo "orca ($mode) RSS: idle $((idle_rss / 1024)) MiB before the runs, peak $((peak_rss / 1024)) MiB sampled mid-run under load"
echo "wrk -t$threads -c$conns -d${secs}s --latency; h2load -t$threads -c$conns -m10 -D$secs; backend: orca-testapp in a container at its bridge address; nginx $(nginx -v 2>&1 | sed 's|.*/||'), caddy $(caddy version | cut -d' ' -f1), $(h2load --version | head -1); load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg); raw outputs in $out"
