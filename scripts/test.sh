#!/usr/bin/env bash
# The whole test suite: formatting, lints, every crate's tests, the load-test
# smoke rounds and a short run of every fuzz target. The Kafka and CQL tests
# run on real engines: scripts/engines.sh starts an Apache Kafka cluster and
# an Apache Cassandra cluster (three nodes each, ENGINES_KAFKA / ENGINES_CQL
# to change) once for the whole run, after the build, and stops them at the
# end. scripts/setup.sh installs what else the tests need. The last line
# counts what ran, failed and skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

echo "== toolchain: $(cargo --version)"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build the tests (before the engines take memory and CPU)"
cargo test --workspace --locked --no-run

out=$(mktemp -d)
engines_skipped=0
stop_engines() { ./scripts/engines.sh down >/dev/null 2>&1 || true; }
trap 'stop_engines; rm -rf "$out"' EXIT
echo "== engines: ${ENGINES_KAFKA:-3} Apache Kafka and ${ENGINES_CQL:-3} Apache Cassandra nodes"
if ./scripts/engines.sh up --kafka "${ENGINES_KAFKA:-3}" --cql "${ENGINES_CQL:-3}" >"$out/engines.env"; then
    # shellcheck disable=SC1091
    source "$out/engines.env"
    cql_nodes=$(tr ',' '\n' <<<"$HEALTHCODE_SCYLLA_NODES" | wc -l)
    export HEALTHCODE_SCYLLA_REPLICATION="datacenter1=$((cql_nodes < 3 ? cql_nodes : 3))"
    echo "== Kafka tests run on Apache Kafka at $HEALTHCODE_KAFKA_BROKERS"
    echo "== CQL tests run on Apache Cassandra at $HEALTHCODE_SCYLLA_NODES ($HEALTHCODE_SCYLLA_REPLICATION)"
else
    stop_engines
    engines_skipped=1
    unset HEALTHCODE_KAFKA_BROKERS HEALTHCODE_SCYLLA_NODES
    echo "SKIPPED the engines: scripts/engines.sh could not start them (see .tools/engines/*/out.log);" \
        "Kafka tests fall back to tansu and the CQL cases skip"
fi

echo "== cargo test"
status=0
# --no-fail-fast: every binary runs, so the summary counts them all.
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$out/test.log" || status=$?
echo "== loadtest smoke rounds"
if ! ./scripts/loadtest-smoke.sh 2>&1 | tee "$out/smoke.log"; then status=1; fi
echo "== fuzz (short run; scripts/fuzz.sh 10000000 for the long one)"
fuzz_failed=0
if ! ./scripts/fuzz.sh "${FUZZ_RUNS:-300000}"; then status=1; fuzz_failed=1; fi

# The summary: cargo's per-binary counts, the smoke rounds' counts, and
# every SKIPPED line (a case that could not run says so on stderr).
read -r passed failed < <(awk '/^test result:/ { p += $4; f += $6 } END { print p + 0, f + 0 }' "$out/test.log")
read -r smoke_passed smoke_failed < <(awk '/^loadtest smoke:/ { p += $3; f += $5 } END { print p + 0, f + 0 }' "$out/smoke.log")
skipped=$(cat "$out/test.log" "$out/smoke.log" | grep -c '^SKIPPED' || true)
# The conformance suites' binaries, by the file cargo says it is running.
read -r kafka_cases cql_cases < <(awk '/^ *Running /{ bin = $2 }
    /^test result:/ { if (bin ~ /kafka_conformance/) k += $4; if (bin ~ /cql_conformance/) c += $4 }
    END { print k + 0, c + 0 }' "$out/test.log")
kafka_on=$([ -n "${HEALTHCODE_KAFKA_BROKERS:-}" ] && echo "Apache Kafka" || echo "tansu")
cql_on=$([ -n "${HEALTHCODE_SCYLLA_NODES:-}" ] && echo "Apache Cassandra" || echo "no server (skipped)")
echo "== EventLog conformance: $kafka_cases cases on $kafka_on; StatusStore conformance: $cql_cases cases on $cql_on"
[ "$status" = 0 ] || echo "== FAILED: see above"
echo "suite: $((passed + smoke_passed)) passed, $((failed + smoke_failed + fuzz_failed)) failed, $skipped skipped"
exit "$status"
