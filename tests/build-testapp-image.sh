#!/usr/bin/env bash
# Builds the orca test app as a static binary and packs it into a `FROM scratch` image.
#
#   tests/build-testapp-image.sh [TAG]     (default tag: orca-testapp:latest)
#
# No registry is reachable on the test machines, so every image orca's tests run is built
# locally from a static binary. The binary is built in its own target dir
# (target/testapp) so this never waits on, or invalidates, the workspace's main target dir.
# Idempotent: cargo and the docker build cache make a second run take about a second.
set -euo pipefail

tag="${1:-orca-testapp:latest}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target_triple="x86_64-unknown-linux-gnu"
target_dir="${ORCA_TESTAPP_TARGET_DIR:-$root/target/testapp}"

# The nested build must not inherit flags meant for an outer cargo (e.g. when this script is
# run from a test harness) — only the static-linking flag below applies.
unset CARGO_ENCODED_RUSTFLAGS RUSTC_WRAPPER CARGO_BUILD_TARGET
export CARGO_TARGET_DIR="$target_dir"
export RUSTFLAGS="-C target-feature=+crt-static"

cargo build --quiet --manifest-path "$root/Cargo.toml" -p orca-testapp --release \
    --target "$target_triple" >&2

binary="$target_dir/$target_triple/release/orca-testapp"
if ! file_out="$(file -b "$binary" 2>/dev/null)"; then
    file_out="(file(1) unavailable)"
fi
case "$file_out" in
    *dynamically*) echo "error: $binary is dynamically linked: $file_out" >&2; exit 1 ;;
esac

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
# Copy preserving the mtime so docker's build cache hits when the binary did not change.
cp -p "$binary" "$context/testapp"
cat > "$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY testapp /testapp
EXPOSE 8080
ENTRYPOINT ["/testapp"]
DOCKERFILE

# The legacy builder prints a deprecation notice on every run; show docker's output only
# when the build fails.
if ! out="$(docker build --quiet --label org.opencontainers.image.title=orca-testapp \
    -t "$tag" "$context" 2>&1)"; then
    echo "$out" >&2
    exit 1
fi
echo "$tag"
