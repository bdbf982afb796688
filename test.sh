#!/usr/bin/env bash
# The whole test suite. Needs a running Docker Engine and the wasm targets
# (rustup target add wasm32-unknown-unknown wasm32-wasip2); builds its own images, FROM scratch.
#  1. the host workspace: unit, golden, runtime and end-to-end tests against the real engine;
#  2. the default plugins' logic, natively, against the SDK's test harness;
#  3. the SDK's examples (a blue-green strategy, a custom forge webhook plugin), natively.
set -euo pipefail
cd "$(dirname "$0")"
cargo test --workspace --locked
(cd plugins && cargo test --locked --target-dir ../target/plugins-native)
(cd sdk/examples/blue-green && cargo test --locked --target-dir ../../../target/sdk-examples-native)
(cd sdk/examples/custom-forge && cargo test --locked --target-dir ../../../target/sdk-examples-native)
