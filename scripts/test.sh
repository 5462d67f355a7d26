#!/usr/bin/env bash
# The whole test suite: formatting, lints, every crate's tests.
# Installs nothing by hand-needed steps: the Rust toolchain is on the machine;
# protoc is not needed (protox); all other dependencies come from crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== toolchain: $(cargo --version)"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
