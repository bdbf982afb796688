# Developer recipes. Plain cargo works too; these are conveniences.

# Format, lint, test: what CI runs.
ci:
    .ci/run

# The whole test suite (needs a running Docker Engine).
test:
    cargo test --workspace

# Only the end-to-end tests in tests/.
test-e2e:
    cargo test -p orca --test foundation --test rbac --test bad_input

lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Build the example/test image (static binary, FROM scratch).
image:
    tests/build-testapp-image.sh orca-testapp:latest

# Server + example service, reachable through the proxy.
quickstart:
    ./quickstart.sh
