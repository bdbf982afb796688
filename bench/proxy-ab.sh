#!/usr/bin/env bash
# A/B of orca proxy builds: several `edge` binaries (host/crates/proxy/examples/edge.rs, e.g.
# one built from main and one from a branch, or one binary with different ORCA_EDGE_UPSTREAM
# modes) and nginx, alternated round by round against one orca-testapp container, HTTP/1.1
# keep-alive with wrk. Besides requests/s it reports each proxy's CPU time per request (user
# + system, from /proc), which a shared, loaded machine distorts far less than requests/s,
# and context switches per request.
#
#   bench/proxy-ab.sh SECONDS ROUNDS NAME=BINARY[:UPSTREAM_MODE]...
#
# Needs wrk, nginx, docker and the orca-testapp image (tests/build-testapp-image.sh). Loopback
# and the Docker bridge only; leaves no container or process behind.
set -euo pipefail
secs=$1 rounds=$2
shift 2
work=$(mktemp -d)
conns=${CONNS:-64}
cid=$(docker run -d --rm orca-testapp:latest)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  docker rm -f "$cid" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$cid")
backend=$ip:8080
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=ab.orca.test" -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

declare -A port pidof
n=0
for spec in "$@"; do
  name=${spec%%=*} rest=${spec#*=}
  bin=${rest%%:*} mode=
  [ "$rest" != "$bin" ] && mode=${rest#*:}
  p=$((18300 + n * 2)); n=$((n + 1))
  ORCA_EDGE_UPSTREAM=$mode ORCA_LOG=warn "$bin" "127.0.0.1:$p" "127.0.0.1:$((p + 1))" \
    "$work/cert.pem" "$work/key.pem" ab.orca.test "plain.orca.test=$backend" 2>"$work/$name.log" &
  pids+=($!)
  port[$name]=$p pidof[$name]=$!
done
cat >"$work/nginx.conf" <<EOF
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
daemon on;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nb; proxy_temp_path $work/np; fastcgi_temp_path $work/nf;
  uwsgi_temp_path $work/nu; scgi_temp_path $work/ns;
  upstream plain { server $backend; keepalive 128; }
  server {
    listen 127.0.0.1:18399;
    location / { proxy_pass http://plain; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$host; }
  }
}
EOF
nginx -c "$work/nginx.conf" -e "$work/nginx-error.log"
port[nginx]=18399
names=("${!pidof[@]}" nginx)
for name in "${names[@]}"; do
  for _ in $(seq 100); do curl -fsS -o /dev/null -H "Host: plain.orca.test" "http://127.0.0.1:${port[$name]}/" && break; sleep 0.1; done
done

# CPU ticks (utime + stime) and context switches of a proxy: every nginx process, or the pid.
ticks() {
  local list
  if [ "$1" = nginx ]; then list="$(cat "$work/nginx.pid") $(pgrep -P "$(cat "$work/nginx.pid")" | tr '\n' ' ')"
  else list=$(ls "/proc/${pidof[$1]}/task"); fi
  python3 - "$1" "${pidof[$1]:-0}" $list <<'PY'
import sys, os
name, pid, ids = sys.argv[1], sys.argv[2], sys.argv[3:]
t = cs = 0
for i in ids:
    path = f"/proc/{i}" if name == "nginx" else f"/proc/{pid}/task/{i}"
    try:
        f = open(path + "/stat").read().rsplit(")", 1)[1].split()
        t += int(f[11]) + int(f[12])
        for line in open(path + "/status"):
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                cs += int(line.split()[1])
    except FileNotFoundError:
        pass
print(t, cs)
PY
}
hz=$(getconf CLK_TCK)
for name in "${names[@]}"; do wrk -t2 -c"$conns" -d2s -H "Host: plain.orca.test" "http://127.0.0.1:${port[$name]}/" >/dev/null; done
echo "round proxy requests/s p99 cpu_us/request ctx_switches/request load1"
for round in $(seq "$rounds"); do
  for name in "${names[@]}"; do
    read -r t0 c0 < <(ticks "$name")
    out=$(wrk -t2 -c"$conns" -d"${secs}s" --latency -H "Host: plain.orca.test" "http://127.0.0.1:${port[$name]}/")
    read -r t1 c1 < <(ticks "$name")
    python3 - "$round" "$name" "$t0" "$t1" "$c0" "$c1" "$hz" "$(cut -d' ' -f1 /proc/loadavg)" <<PY
import re, sys
r, name, t0, t1, c0, c1, hz, load = sys.argv[1:]
text = """$out"""
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
n = int(re.search(r"(\d+) requests in", text).group(1))
p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
cpu = (int(t1) - int(t0)) / int(hz) * 1e6 / n
cs = (int(c1) - int(c0)) / n
print(f"{r} {name} {rps:.0f} {p99} {cpu:.1f} {cs:.3f} {load}" + (f" NON2XX={bad.group(1)}" if bad else ""))
PY
  done
done
