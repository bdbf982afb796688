#!/usr/bin/env bash
# Quick start: builds orca and the example image (locally, FROM scratch: no registry needed),
# starts `orca server` in the background, deploys services/demo and calls it through the proxy.
# The demo is a cluster of its own (name `demo-<random>` in .orca-demo/config/cluster.toml), so
# it never touches another orca's containers on the same engine. Clean up everything with:
#   orca stop --all && kill "$(cat .orca-demo/server.pid)" && rm -rf .orca-demo
# (with ORCA_HOME, ORCA_CONFIG_DIR and ORCA_API set as printed at the end).
set -euo pipefail
cd "$(dirname "$0")"
root=$PWD
demo=$root/.orca-demo
api_port=${ORCA_DEMO_API_PORT:-6880}
http_port=${ORCA_DEMO_HTTP_PORT:-8080}
https_port=${ORCA_DEMO_HTTPS_PORT:-8443}

docker info >/dev/null 2>&1 || { echo "error: Docker Engine not reachable (is dockerd running?)" >&2; exit 1; }

if command -v rustup >/dev/null 2>&1; then
  echo "== rustup targets for the plugins (wasm32-unknown-unknown, wasm32-wasip2)"
  rustup target add wasm32-unknown-unknown wasm32-wasip2
fi

echo "== building orca (release)"
cargo build --release -p orca
orca=${CARGO_TARGET_DIR:-$root/target}/release/orca
[ -x "$orca" ] || { echo "error: built binary not found at $orca" >&2; exit 1; }

echo "== building the example image orca-testapp:latest"
tests/build-testapp-image.sh orca-testapp:latest

mkdir -p "$demo/config"
# A cluster name of its own, made once: two servers with one name on one engine are refused.
if [ ! -f "$demo/config/cluster.toml" ]; then
  printf '[cluster]\nname = "demo-%s"\n' "$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')" >"$demo/config/cluster.toml"
fi
ln -sfn "$root/services" "$demo/config/services"
export ORCA_HOME=$demo/home ORCA_CONFIG_DIR=$demo/config
export ORCA_API=http://127.0.0.1:$api_port
if [ -f "$demo/server.pid" ] && kill -0 "$(cat "$demo/server.pid")" 2>/dev/null; then
  echo "== orca server already running (pid $(cat "$demo/server.pid"))"
else
  echo "== starting orca server (API 127.0.0.1:$api_port, proxy 127.0.0.1:$http_port, log $demo/server.log)"
  ORCA_API_ADDR=127.0.0.1:$api_port ORCA_HTTP_ADDR=127.0.0.1:$http_port \
    ORCA_HTTPS_ADDR=127.0.0.1:$https_port nohup "$orca" server >"$demo/server.log" 2>&1 &
  echo $! >"$demo/server.pid"
  for _ in $(seq 1 100); do
    curl -fsS "$ORCA_API/api/v1/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "$ORCA_API/api/v1/health" >/dev/null || { echo "server did not start:"; cat "$demo/server.log"; exit 1; }
fi

echo "== orca deploy hello   (services/demo/service.toml; token from $ORCA_HOME/credentials)"
"$orca" deploy hello
"$orca" status

echo "== through the proxy: curl -H 'Host: hello.localhost' http://127.0.0.1:$http_port/"
for _ in 1 2 3 4; do
  curl -fsS -H 'Host: hello.localhost' "http://127.0.0.1:$http_port/"
done
cat <<MSG

orca is running. Try:
  export ORCA_HOME=$ORCA_HOME ORCA_CONFIG_DIR=$ORCA_CONFIG_DIR ORCA_API=$ORCA_API
  $orca status
  $orca scale hello 4
  $orca logs hello --tail 20

Clean up (containers, networks, the server, its state):
  $orca stop --all && kill \$(cat $demo/server.pid) && rm -rf $demo
MSG
