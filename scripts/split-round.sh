#!/usr/bin/env bash
# The split deployment on one machine beside `healthcode up`, on one round:
#   1. 2 edge, 2 materializer (one consumer group) and 2 lookup processes on
#      the Apache Kafka and Cassandra clusters of scripts/engines.sh (3 + 3
#      nodes, replication 3; started here when the environment names none);
#   2. `healthcode up` on the embedded log and store.
# Each: replay open-loop, wait until the materializers caught up, verify every
# resident. Prints throughput, freshness, lookup p99 and the CPU each process
# (and each engine node) used. Settings via the environment:
#   RESIDENTS (1000000), COMPRESSION (400), LOOKUPS per resident (0.2), DAYS (3)
#   and TESTS_PER_DAY (2) (the round's shape, scripts/lib/round.sh), WORK dir,
#   REPLAY_ARGS (more options for the replay, e.g. --checks 0);
#   BENCH_ROUNDS: after each verify, `bench`'s lookups alone and under a batch
#   flood (issue 14, target 3) that many rounds, lookups to one lookup
#   process and the flood to one edge (the same process in `up`), with the
#   per-caller rate limit lifted;
#   LOOKUP_ARGS: more options for the two lookup processes (e.g.
#   --lookup-cache-fresh-for 2s); SPLIT_ONLY=1 skips `healthcode up`.
set -euo pipefail
cd "$(dirname "$0")/.."

RESIDENTS=${RESIDENTS:-1000000}
COMPRESSION=${COMPRESSION:-400}
LOOKUPS=${LOOKUPS:-0.2}
DAYS=${DAYS:-3}
TESTS_PER_DAY=${TESTS_PER_DAY:-2}
WORK=${WORK:-/tmp/healthcode-split-round}
BENCH_ROUNDS=${BENCH_ROUNDS:-}
# bench's one station sends everything: lift its rate limit when benching.
limits=()
[ -z "$BENCH_ROUNDS" ] || limits=(--rate-limit-per-principal 1000000)
B=target/release

cargo build --release --locked -p healthcode -p healthcode-loadtest
if [ -z "${HEALTHCODE_KAFKA_BROKERS:-}" ] || [ -z "${HEALTHCODE_SCYLLA_NODES:-}" ]; then
    eval "$(scripts/engines.sh up --kafka 3 --cql 3)"
    STARTED_ENGINES=1
fi
. scripts/lib/round.sh
generate_round

pids=()
names=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap 'cleanup; [ -z "${STARTED_ENGINES:-}" ] || scripts/engines.sh down' EXIT
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ready() { until python3 -c "import urllib.request; urllib.request.urlopen('http://$1/ready', timeout=1)" 2>/dev/null; do sleep 0.2; done; }
# CPU seconds (user + system) a process has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }
lag() {
    python3 - "$1" "$2" <<'PY'
import sys, urllib.request
token = open(sys.argv[2]).read().strip()
request = urllib.request.Request(f"http://{sys.argv[1]}/metrics", headers={"Authorization": "Bearer " + token})
lag = 0.0
for line in urllib.request.urlopen(request, timeout=5).read().decode().splitlines():
    if line.startswith("healthcode_materializer_lag_records "):
        lag = float(line.split()[1])
print(int(lag))
PY
}

# start NAME ROLE DATA_DIR ARGS...: a process with its own admin port.
start() {
    local name=$1 role=$2 data=$3
    shift 3
    local admin="127.0.0.1:$(port)"
    "$B/healthcode" "$role" --data-dir "$data" --admin-addr "$admin" "$@" 2>"$WORK/$name.log" &
    pids+=("$!")
    names+=("$name")
    eval "ADMIN_${name//-/_}=$admin"
    ready "$admin"
}

# run LABEL EDGE_URLS LOOKUP_URLS MATERIALIZER_ADMINS CREDENTIALS_DIR: replay, catch up, verify.
run() {
    local label=$1 edges=$2 lookups=$3 admins=$4 creds=$5
    local -A before
    local pid
    for pid in "${pids[@]}" $(for i in 1 2 3; do scripts/engines.sh pid kafka $i 2>/dev/null; scripts/engines.sh pid cql $i 2>/dev/null; done); do
        before[$pid]=$(cpu "$pid")
    done
    local t0 t1 t2 t3
    t0=$(date +%s.%N)
    "$B/healthcode-loadtest" replay --dir "$WORK/round" --target "$edges" --lookup-target "$lookups" \
        --compression "$COMPRESSION" --out "$WORK/report-$label" --attempts 20 ${REPLAY_ARGS:-}
    t1=$(date +%s.%N)
    local admin
    for admin in ${admins//,/ }; do
        while [ "$(lag "$admin" "$creds/ops.token")" != "0" ]; do sleep 1; done
    done
    t2=$(date +%s.%N)
    "$B/healthcode-loadtest" verify --dir "$WORK/round" --target "${lookups%%,*}" --concurrency 2 | tee "$WORK/verify-$label.txt"
    t3=$(date +%s.%N)
    echo "== $label: CPU per process over replay + catch-up ($(python3 -c "print(round($t2 - $t0))") s)"
    local i=0
    for pid in "${pids[@]}"; do
        python3 -c "print(f'   {\"${names[$i]}\":<16} {($(cpu "$pid") - ${before[$pid]:-0}) / ($t2 - $t0):.2f} cores')"
        i=$((i + 1))
    done
    if [ "$label" = split ]; then
        for kind in kafka cql; do for n in 1 2 3; do
            pid=$(scripts/engines.sh pid $kind $n 2>/dev/null) || continue
            python3 -c "print(f'   {\"$kind-$n\":<16} {($(cpu "$pid") - ${before[$pid]:-0}) / ($t2 - $t0):.2f} cores')"
        done; done
    fi
    python3 - "$WORK/report-$label/report.json" "$t0" "$t1" "$t2" "$t3" "$label" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t0, t1, t2, t3 = map(float, sys.argv[2:6])
events = sum(v for k, v in r["events"].items() if k in ("ACCEPTED", "DUPLICATE"))
print(f"== {sys.argv[6]}: {events} events acknowledged in {t1 - t0:.0f} s replay ({events / (t1 - t0):.0f}/s), "
      f"materialised {t2 - t1:.0f} s after the replay ({events / (t2 - t0):.0f} events/s end to end), verify {t3 - t2:.0f} s")
print(f"   ingest p99 {r['ingest']['latency']['p99_ms']:.1f} ms, lookup p50/p99 {r['lookup']['latency']['p50_ms']:.1f}/"
      f"{r['lookup']['latency']['p99_ms']:.1f} ms ({r['lookup']['requests']} lookups, codes {r['lookup']['codes']}), "
      f"freshness p50/p99 {r['freshness']['p50_ms']:.0f}/{r['freshness']['p99_ms']:.0f} ms "
      f"({r['freshness_timeouts']} timeouts)")
PY
}

# bench_against LABEL LOOKUP_URL EDGE_URL CREDENTIALS_DIR: target 3 on a caught-up deployment.
bench_against() {
    [ -n "$BENCH_ROUNDS" ] || return 0
    echo "== $1: bench, lookups to $2, the flood to $3"
    "$B/healthcode-loadtest" bench --target "$2" --ingest-target "$3" --credentials-dir "$4" \
        --residents "$RESIDENTS" --workloads lookup,lookup-under-ingest --rounds "$BENCH_ROUNDS" \
        --out "$WORK/bench-$1.json" | tee "$WORK/bench-$1.txt"
}

# 1. The split deployment on the engines.
run_id="split_$$"
data="$WORK/split"
rm -rf "$data"
"$B/healthcode-loadtest" credentials --dir "$WORK/round" --tokens-file "$data/credentials/tokens.toml"
brokers=$HEALTHCODE_KAFKA_BROKERS nodes=$HEALTHCODE_SCYLLA_NODES
common=(--log kafka --kafka-brokers "$brokers" --kafka-replication-factor 3 --kafka-partitions 12
    --kafka-topic "$run_id.events" --kafka-dead-letter-topic "$run_id.dead-letter" --kafka-group "$run_id"
    --credentials-dir "$data/credentials" "${limits[@]}")
store=(--store scylla --scylla-nodes "$nodes" --scylla-replication datacenter1=3 --scylla-keyspace "$run_id"
    --scylla-read-timeout 400ms --lookup-budget 1s --lookup-batch-budget 3s)
e1=$(port) e2=$(port) l1=$(port) l2=$(port)
# The first edge creates the deployment's development credentials; the rest read them.
start edge-1 edge "$data/edge-1" "${common[@]}" --grpc-addr "127.0.0.1:$e1"
start edge-2 edge "$data/edge-2" "${common[@]}" --grpc-addr "127.0.0.1:$e2"
start materializer-1 materializer "$data/mat-1" "${common[@]}" "${store[@]}"
start materializer-2 materializer "$data/mat-2" "${common[@]}" "${store[@]}"
read -r -a lookup_args <<<"${LOOKUP_ARGS:-}"
start lookup-1 lookup "$data/lookup-1" "${common[@]}" "${store[@]}" --grpc-addr "127.0.0.1:$l1" "${lookup_args[@]}"
start lookup-2 lookup "$data/lookup-2" "${common[@]}" "${store[@]}" --grpc-addr "127.0.0.1:$l2" "${lookup_args[@]}"
run split "http://127.0.0.1:$e1,http://127.0.0.1:$e2" "http://127.0.0.1:$l1,http://127.0.0.1:$l2" \
    "$ADMIN_materializer_1,$ADMIN_materializer_2" "$data/credentials"
bench_against split "http://127.0.0.1:$l1" "http://127.0.0.1:$e1" "$data/credentials"
cleanup
pids=() names=()
[ -z "${SPLIT_ONLY:-}" ] || exit 0

# 2. `healthcode up` on the embedded log and store, same round.
data="$WORK/up"
rm -rf "$data"
"$B/healthcode-loadtest" credentials --dir "$WORK/round" --tokens-file "$data/credentials/tokens.toml"
g=$(port)
start up up "$data" --grpc-addr "127.0.0.1:$g" "${limits[@]}"
run up "http://127.0.0.1:$g" "http://127.0.0.1:$g" "$ADMIN_up" "$data/credentials"
bench_against up "http://127.0.0.1:$g" "http://127.0.0.1:$g" "$data/credentials"
echo "peak memory of healthcode up (VmHWM): $(grep VmHWM "/proc/${pids[0]}/status" | awk '{print $2 / 1024}') MiB"
