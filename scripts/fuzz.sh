#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for RUNS inputs each, default one
# million; exits non-zero on the first crash (the input is kept under
# fuzz/artifacts/<target>/). `scripts/fuzz.sh 10000000` runs ten million each.
# Installs cargo-fuzz into .tools/ when missing. Builds on the stable
# toolchain without a sanitizer (the code under test is safe Rust); with a
# nightly toolchain, `SANITIZER=address TOOLCHAIN=nightly scripts/fuzz.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-1000000}
TOOLCHAIN=${TOOLCHAIN:-stable}
SANITIZER=${SANITIZER:-none}
CARGO_FUZZ_VERSION=0.13.2
export PATH="$PWD/.tools/cargo/bin:$PATH"

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION into .tools/cargo"
    cargo install --quiet --root .tools/cargo cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# Seeds: the SubmitBatch payloads of a small generated round, so the fuzzer
# starts from real requests instead of discovering protobuf from nothing.
seeds=target/fuzz/seeds
cargo build --quiet --locked --workspace --all-targets
rm -rf "$seeds" && mkdir -p "$seeds"
target/debug/healthcode-loadtest generate --out "$seeds/round" --residents 60 >/dev/null
python3 - "$seeds" <<'PY'
import struct, sys
out = sys.argv[1]
data = open(f"{out}/round/schedule.bin", "rb").read()
i = n = 0
while i < len(data):
    _, kind, length = struct.unpack("<QBI", data[i:i + 13])
    if kind == 1:  # SubmitBatch
        open(f"{out}/batch-{n}", "wb").write(data[i + 13:i + 13 + length])
        n += 1
    i += 13 + length
PY

fuzz() {
    local target=$1
    shift
    local log="target/fuzz/$target.log" status=0
    mkdir -p "target/fuzz/corpus/$target"
    echo "== fuzz $target: $RUNS inputs"
    cargo "+$TOOLCHAIN" fuzz run --sanitizer "$SANITIZER" --fuzz-dir fuzz --target-dir target/fuzz \
        "$target" "target/fuzz/corpus/$target" "$@" -- -runs="$RUNS" -rss_limit_mb=4096 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|INFO: seed corpus)' "$log" || true
    if [ "$status" -ne 0 ]; then
        echo "== fuzz $target FAILED (exit $status); the end of $log:" >&2
        tail -n 40 "$log" >&2
        return "$status"
    fi
}

fuzz ingest_request "$seeds"
fuzz log_records
echo "fuzz: 2 targets, $RUNS inputs each, no crash"
