#!/usr/bin/env bash
# Many machines by simulation (issue #12): a real `orca server` on loopback and N real agents
# in one process (`host/examples/sim_agents.rs`: the agent's own join with a real token, mTLS
# session, heartbeats and events, each over an in-memory engine whose containers are real
# HTTP listeners on the agent's advertise address 127.0.1.N, ready through the master's real
# probes). Two configurations, each against a fresh master:
#   A. AGENTS simulated agents (default 100): join time (first join, then reconnect); idle
#      master CPU (over IDLE s) and RSS with no agent and with the agents; the heartbeat
#      handling cost (the same agents heartbeating every 100 ms, then every 5 s: CPU difference
#      over heartbeat difference); a deploy of SERVICES × REPLICAS (default 100 × 100) placed only on the
#      simulated nodes: time to all ready (from /metrics), master CPU-seconds and peak RSS
#      during it, controller passes (`orca_controller_pass_seconds`); the steady state after
#      it (probing 10,000 instances), and `orca stop` until every instance is gone.
#   B. 3 simulated agents and 100 services × 3 replicas, `watchdog_interval_secs = 1`: the
#      cost of a controller pass with nothing to do.
#
#   bench/agents.sh               (prints Markdown tables for BENCHMARKS.md)
#   AGENTS=10 SERVICES=10 REPLICAS=10 bench/agents.sh    (a quick run)
#
# Loopback only; the master's own Docker Engine is untouched (placement selects `sim=1`).
# Leaves no process, container or file behind.
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${AGENTS:-100}
services=${SERVICES:-100}
replicas=${REPLICAS:-100}
idle=${IDLE:-30}
root=$PWD
work=$(mktemp -d)
api_port=16882; http_port=18082
export ORCA_TOKEN=bench-token-0123456789
clk=$(getconf CLK_TCK)

cargo build --release -q -p orca --bin orca --example sim_agents
orca=$root/target/release/orca
sim=$root/target/release/examples/sim_agents

server=""; fleet=""
stop_pid() { [ -n "$1" ] && kill "$1" 2>/dev/null && { for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -9 "$1" 2>/dev/null || true; }; return 0; }
cleanup() {
  stop_pid "$fleet"; stop_pid "$server"
  for c in "${clusters[@]:-}"; do
    [ -n "$c" ] || continue
    ids=$(docker ps -aq --filter "label=orca.cluster=$c"); [ -n "$ids" ] && docker rm -f $ids >/dev/null
    for n in $(docker network ls -q --filter "label=orca.cluster=$c"); do docker network rm "$n" >/dev/null || true; done
  done
  rm -rf "$work"
}
clusters=()
trap cleanup EXIT

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss_kb() { awk "/^$2:/ {print \$2}" "/proc/$1/status"; }
secs() { awk -v t="$1" -v c="$clk" 'BEGIN {printf "%.2f", t / c}'; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
metric() { curl -fsS "$ORCA_API/metrics"; }
ready_instances() { metric | awk '/^orca_instances_total\{.*status="ready"/ {s+=$2} END {print s+0}'; }
pass_stats() { metric | awk '/^orca_controller_pass_seconds_sum/ {s=$2} /^orca_controller_pass_seconds_count/ {c=$2} END {print s+0, c+0}'; }
ready_nodes() { "$orca" nodes -o json | python3 -c 'import json,sys; print(sum(1 for n in json.load(sys.stdin)["nodes"] if n["status"]=="ready" and n.get("labels",{}).get("sim")=="1"))'; }
# Master CPU as % of one core over $1 seconds.
cpu_over() { local t0 t1; t0=$(ticks "$server"); sleep "$1"; t1=$(ticks "$server"); awk -v d=$((t1 - t0)) -v c="$clk" -v s="$1" 'BEGIN {printf "%.2f", d / c / s * 100}'; }

# start_master NAME EXTRA_CLUSTER_TOML
start_master() {
  local name=$1 extra=$2
  export ORCA_HOME=$work/$name/home ORCA_CONFIG_DIR=$work/$name/config ORCA_API=http://127.0.0.1:$api_port
  mkdir -p "$ORCA_CONFIG_DIR"
  local cluster=bench$name$$
  clusters+=("$cluster")
  printf '[cluster]\nname = "%s"\n%s\n\n[[token]]\nname = "bench"\nvalue = "%s"\nrole = "admin"\n' "$cluster" "$extra" "$ORCA_TOKEN" >"$ORCA_CONFIG_DIR/cluster.toml"
  ORCA_API_ADDR=127.0.0.1:$api_port ORCA_HTTP_ADDR=127.0.0.1:$http_port ORCA_HTTPS_ADDR=127.0.0.1:0 ORCA_LOG=warn "$orca" server 2>"$work/$name.server.log" &
  server=$!
  for _ in $(seq 1 300); do curl -fsS "$ORCA_API/api/v1/health" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "master did not come up:"; tail -20 "$work/$name.server.log"; exit 1
}

# start_fleet N [HEARTBEAT_MS]: returns once N simulated nodes are ready; sets join_ms.
# Started again with the same N, the agents reconnect with the identities they got.
start_fleet() {
  local n=$1 hb=${2:-5000} token t0
  token=$("$orca" node token create --reusable --ttl 2h 2>/dev/null)
  t0=$(now_ms)
  "$sim" --join "https://127.0.0.1:$api_port" --token "$token" --agents "$n" --labels sim=1 --heartbeat-ms "$hb" --home "$work/agents-$n" 2>>"$work/sim-$n.log" &
  fleet=$!
  for _ in $(seq 1 1200); do
    [ "$(ready_nodes)" = "$n" ] && { join_ms=$(( $(now_ms) - t0 )); return 0; }
    sleep 0.1
  done
  echo "only $(ready_nodes) of $n simulated nodes ready:"; tail -20 "$work/sim-$n.log"; exit 1
}

# write_services PROJECT COUNT REPLICAS
write_services() {
  local dir=$ORCA_CONFIG_DIR/services/$1
  mkdir -p "$dir"
  for i in $(seq 0 $(($2 - 1))); do
    printf '[[service]]\nname = "s%d"\nimage = "sim/app:1"\nreplicas = %d\nport = 8080\ndomain = "s%d.%s.bench"\nhealth = "/healthz"\n\n[service.placement]\nlabels = { sim = "1" }\n\n' "$i" "$3" "$i" "$1"
  done >"$dir/service.toml"
  echo "$dir"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- A: many agents, a big deploy ----
start_master a ""
sleep 5
idle0=$(cpu_over "$idle")
rss0=$(rss_kb "$server" VmRSS)
start_fleet "$agents" 5000
first_join_ms=$join_ms
stop_pid "$fleet"
# Heartbeat handling: the same agents heartbeating every 100 ms, then every 5 s (the
# default); the CPU difference over the difference in heartbeats is the cost of one.
start_fleet "$agents" 100
sleep 10
idle_hb1=$(cpu_over "$idle")
stop_pid "$fleet"
start_fleet "$agents" 5000
join_ms_again=$join_ms
sleep 10
read -r ps0 pc0 <<<"$(pass_stats)"
idle1=$(cpu_over "$idle")
read -r ps1 pc1 <<<"$(pass_stats)"
rss1=$(rss_kb "$server" VmRSS)
per_beat_us=$(awk -v a="$idle_hb1" -v b="$idle1" -v n="$agents" 'BEGIN {printf "%.1f", (a - b) / 100 / (n * 10 - n / 5) * 1e6}')

dir=$(write_services sim "$services" "$replicas")
total=$((services * replicas))
read -r ps2 pc2 <<<"$(pass_stats)"
cpu_t0=$(ticks "$server"); sim_t0=$(ticks "$fleet"); t0=$(now_ms)
(cd "$dir" && "$orca" deploy --no-wait >/dev/null)
deploy_ms=$(( $(now_ms) - t0 ))
first_ms=""; ready=0
for _ in $(seq 1 2400); do
  ready=$(ready_instances)
  [ -z "$first_ms" ] && [ "$ready" -gt 0 ] && first_ms=$(( $(now_ms) - t0 ))
  [ "$ready" -ge "$total" ] && break
  sleep 0.25
done
conv_ms=$(( $(now_ms) - t0 ))
deploy_cpu=$(secs $(( $(ticks "$server") - cpu_t0 )))
sim_cpu=$(secs $(( $(ticks "$fleet") - sim_t0 )))
peak_rss=$(rss_kb "$server" VmHWM)
read -r ps3 pc3 <<<"$(pass_stats)"
[ "$ready" -ge "$total" ] || echo "WARNING: only $ready of $total instances ready after $((conv_ms / 1000)) s" >&2
routed=0
for i in $(seq 0 $((services - 1))); do
  curl -fsS -o /dev/null -H "Host: s$i.sim.bench" "http://127.0.0.1:$http_port/" && routed=$((routed + 1))
done
sleep 5
read -r ps4 pc4 <<<"$(pass_stats)"
steady=$(cpu_over 60)
read -r ps5 pc5 <<<"$(pass_stats)"
steady_rss=$(rss_kb "$server" VmRSS)
t1=$(now_ms)
"$orca" stop --project sim --no-wait >/dev/null
for _ in $(seq 1 2400); do
  [ "$(metric | awk '/^orca_instances_total\{/ {s+=$2} END {print s+0}')" = 0 ] && break
  sleep 0.25
done
stop_ms=$(( $(now_ms) - t1 ))
stop_pid "$fleet"; fleet=""; stop_pid "$server"; server=""

avg() { awk -v s0="$1" -v c0="$2" -v s1="$3" -v c1="$4" 'BEGIN {n = c1 - c0; if (n > 0) printf "%.1f ms (%d passes)", (s1 - s0) / n * 1000, n; else print "no pass"}'; }

# ---- B: 3 nodes, 100 services, a pass every second ----
start_master b "watchdog_interval_secs = 1"
start_fleet 3
dir=$(write_services three 100 3)
(cd "$dir" && "$orca" deploy --no-wait >/dev/null)
for _ in $(seq 1 1200); do [ "$(ready_instances)" -ge 300 ] && break; sleep 0.25; done
b_ready=$(ready_instances)
sleep 5
read -r bs0 bc0 <<<"$(pass_stats)"
b_cpu=$(cpu_over 30)
read -r bs1 bc1 <<<"$(pass_stats)"
stop_pid "$fleet"; fleet=""; stop_pid "$server"; server=""
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo "Run $(date -u +%Y-%m-%d), $(nproc) cores, load average before $load_before, after $load_after"
echo
echo "| A: $agents simulated agents, $services services × $replicas replicas | value |"
echo "| --- | --- |"
echo "| $agents agents started → all ready nodes: first join / reconnect | $first_join_ms / $join_ms_again ms |"
echo "| idle master CPU, no agent ($idle s) | $idle0 % of one core |"
echo "| idle master CPU, $agents agents, heartbeat 5 s ($idle s) | $idle1 % of one core |"
echo "| idle master CPU, $agents agents, heartbeat 100 ms ($idle s) | $idle_hb1 % of one core |"
echo "| idle master RSS, no agent → $agents agents | $((rss0 / 1024)) → $((rss1 / 1024)) MiB |"
echo "| heartbeat handling (master CPU per heartbeat, from the 100 ms vs 5 s difference) | $per_beat_us µs |"
echo "| idle controller pass (watchdog), $agents nodes, no service | $(avg "$ps0" "$pc0" "$ps1" "$pc1") |"
echo "| \`orca deploy\` of $services services (API answer) | $deploy_ms ms |"
echo "| deploy → first instance ready | ${first_ms:-none} ms |"
echo "| deploy → $ready of $total instances ready | $conv_ms ms |"
echo "| master CPU during the deploy | $deploy_cpu s |"
echo "| master peak RSS (VmHWM) | $((peak_rss / 1024)) MiB |"
echo "| simulated agents' CPU during the deploy (same machine) | $sim_cpu s |"
echo "| controller passes during the deploy | $(avg "$ps2" "$pc2" "$ps3" "$pc3") |"
echo "| services answering through the proxy | $routed of $services |"
echo "| steady master CPU with $total ready instances (60 s) | $steady % of one core |"
echo "| steady controller pass with $total instances | $(avg "$ps4" "$pc4" "$ps5" "$pc5") |"
echo "| steady master RSS | $((steady_rss / 1024)) MiB |"
echo "| \`orca stop\` → every instance gone | $stop_ms ms |"
echo
echo "| B: 3 simulated agents, 100 services × 3 replicas ($b_ready ready) | value |"
echo "| --- | --- |"
echo "| controller pass, nothing to do (watchdog 1 s) | $(avg "$bs0" "$bc0" "$bs1" "$bc1") |"
echo "| master CPU at one pass per second | $b_cpu % of one core |"
echo "| master CPU per second (one pass and 30 probes) | $(awk -v c="$b_cpu" 'BEGIN {printf "%.1f", c * 10}') ms |"
