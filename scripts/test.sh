#!/usr/bin/env bash
# The whole test suite: formatting, lints, every crate's tests, including
# the Kafka tests against a real tansu broker, the load-test smoke round and a
# short run of every fuzz target. scripts/setup.sh installs the
# broker; the Rust toolchain is on the machine; protoc is not needed (protox);
# everything else comes from crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

echo "== toolchain: $(cargo --version)"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
if [ -n "${HEALTHCODE_SCYLLA_NODES:-}" ]; then
    echo "== the store conformance suite runs against ScyllaDB at $HEALTHCODE_SCYLLA_NODES"
else
    echo "== ScyllaDB: HEALTHCODE_SCYLLA_NODES is not set, its conformance cases print SKIPPED (docs/operations.md says how to run them)"
fi
cargo test --workspace --locked
echo "== loadtest smoke round"
./scripts/loadtest-smoke.sh
echo "== fuzz (short run; scripts/fuzz.sh 10000000 for the long one)"
./scripts/fuzz.sh "${FUZZ_RUNS:-300000}"
