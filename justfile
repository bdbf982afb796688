# Developer recipes. Plain cargo works too; these are conveniences.

# Format, lint, test: what CI runs.
ci:
    .ci/run

# The whole test suite (needs a running Docker Engine).
test:
    ./test.sh

# Only the end-to-end tests in tests/.
test-e2e:
    cargo test -p orca --test foundation --test rbac --test bad_input --test strategies --test rollouts --test plugins --test webhooks --test gitbuild --test tls --test edge --test hardening

lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Build the example/test image (static binary, FROM scratch).
image:
    tests/build-testapp-image.sh orca-testapp:latest

# Server + example service, reachable through the proxy.
quickstart:
    ./quickstart.sh

# Default plugins, built to components (what host/build.rs does).
plugins:
    cd plugins && CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-component-ld cargo build --release --locked --target wasm32-unknown-unknown --target-dir ../target/plugins

# Proxy throughput and latency: orca vs nginx vs caddy with wrk (HTTP/1.1 and HTTPS).
# Needs `apt-get install -y wrk nginx caddy`.
bench-proxy:
    bench/proxy.sh 10 64

# Benchmarks: deploy/self-healing vs Docker Swarm, and plugin call costs.
bench:
    bench/deploy.sh 5
    bench/rollout.sh 3
    cargo bench -p orca --bench plugins
