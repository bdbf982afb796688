#!/usr/bin/env bash
# Proxy benchmark: wrk through orca, nginx and caddy, one after the other in one run, against
# the same backend (one orca-testapp container, reached by every proxy at its bridge address),
# on the same machine. Two scenarios: HTTP/1.1 keep-alive on plain HTTP, and HTTPS (TLS 1.3,
# HTTP/1.1 keep-alive; wrk speaks no HTTP/2). Access logs are off for all three.
#
#   bench/proxy.sh [SECONDS] [CONNECTIONS]     (default 10 s per run, 64 connections)
#
# Needs wrk, nginx and caddy (Debian packages: apt-get install -y wrk nginx caddy), openssl
# and a running Docker Engine. Prints a Markdown table for BENCHMARKS.md and writes the raw
# wrk outputs under $BENCH_OUT (default target/bench-proxy). Loopback only; the HTTPS runs
# need bench.orca.test to resolve to 127.0.0.1 (added to /etc/hosts when run as root).
# Leaves no container, network or process behind.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-64}
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

for tool in wrk nginx caddy openssl docker curl; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed (apt-get install -y wrk nginx caddy)" >&2; exit 1; }
done
if ! getent hosts "$tls_host" | grep -q '^127\.0\.0\.1'; then
  if [ "$(id -u)" = 0 ]; then
    printf '127.0.0.1 %s %s\n' "$tls_host" "$plain_host" >>/etc/hosts
  else
    echo "error: $tls_host must resolve to 127.0.0.1 (add it to /etc/hosts)" >&2; exit 1
  fi
fi

cargo build --release -q -p orca
orca=$root/target/release/orca
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
  rm -rf "$work"
}
trap cleanup EXIT

ORCA_API_ADDR=127.0.0.1:$api_port ORCA_HTTP_ADDR=127.0.0.1:${http_port[orca]} \
  ORCA_HTTPS_ADDR=127.0.0.1:${https_port[orca]} ORCA_LOG=warn "$orca" server 2>"$work/orca.log" &
pids+=($!)
until curl -fsS "$ORCA_API/api/v1/health" >/dev/null 2>&1; do sleep 0.05; done
(cd "$ORCA_CONFIG_DIR/services/bench" && "$orca" deploy --timeout-secs 120 >/dev/null)
address() { "$orca" status -o json | python3 -c "import json,sys; print([s for s in json.load(sys.stdin)['services'] if s['name']=='$1'][0]['instances'][0]['address'])"; }
plain_backend=$(address plain)
tls_backend=$(address tls)

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

# wrk output → "req/s p50 p99" (latencies in ms).
parse() {
  python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]
rps = re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: (.*)", text)
print(f"{float(rps):.0f} {p50:.2f} {p99:.2f} {errors.group(1) if errors else 0} {'yes' if sock else 'no'}")
PY
}

run() { # scenario proxy url host
  local file="$out/$1-$2.txt"
  # BENCH_PERF=1: profile orca's server process during its runs (perf report in $out).
  if [ "${BENCH_PERF:-0}" = 1 ] && [ "$2" = orca ]; then
    perf record -F 499 -g -o "$out/$1-orca.perf.data" -p "${pids[0]}" -- sleep "$secs" >/dev/null 2>&1 &
    local perf_pid=$!
  fi
  wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -H "Host: $4" "$3" >"$file"
  if [ -n "${perf_pid:-}" ]; then
    wait "$perf_pid" || true
    perf report -i "$out/$1-orca.perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -v '^#' | grep '%' | head -60 >"$out/$1-orca.perf.txt" || true
  fi
  parse "$file"
}

echo "| scenario | proxy | requests/s | p50 ms | p99 ms | non-2xx | socket errors |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
# Warm every proxy's upstream pool and the backend once, untimed.
for p in orca nginx caddy; do
  wrk -t1 -c"$conns" -d2s -H "Host: $plain_host" "http://127.0.0.1:${http_port[$p]}/" >/dev/null
done
for p in orca nginx caddy; do
  read -r rps p50 p99 bad sock < <(run http1 "$p" "http://127.0.0.1:${http_port[$p]}/" "$plain_host")
  echo "| HTTP/1.1 keep-alive | $p | $rps | $p50 | $p99 | $bad | $sock |"
done
for p in orca nginx caddy; do
  read -r rps p50 p99 bad sock < <(run https "$p" "https://$tls_host:${https_port[$p]}/" "$tls_host")
  echo "| HTTPS (TLS 1.3, HTTP/1.1 keep-alive) | $p | $rps | $p50 | $p99 | $bad | $sock |"
done
echo
echo "wrk -t$threads -c$conns -d${secs}s --latency; backend: orca-testapp in a container at its bridge address; nginx $(nginx -v 2>&1 | sed 's|.*/||'), caddy $(caddy version | cut -d' ' -f1); raw outputs in $out"
