#!/usr/bin/env bash
# The full city round on this machine: generate, replay against a release
# `healthcode up` on the embedded log and store, wait until the materializer
# has caught up, verify every resident. Prints the wall times and the peak
# memory (VmHWM) of the server. Settings via the environment:
#   RESIDENTS (13000000), COMPRESSION (100), LOOKUPS per resident (0.1), WORK dir,
#   VERIFY_CONCURRENCY (4: BatchGetStatus calls of 500 residents in flight);
#   DAYS (3) and TESTS_PER_DAY (2) shape the round (DAYS=1 TESTS_PER_DAY=1
#   is the one-day round of the benchmarks in docs/benchmarks.md);
#   DIFF=1 then times a policy diff over every resident (ops, on the live
#   server); REBUILD=1 then deletes the store, times `healthcode rebuild`
#   and verifies every resident again; UP_ARGS are added to `healthcode up`
#   (UP_ARGS="--ingest-yields false" for the 40x benchmark: see
#   docs/benchmarks.md on what lookups-first pacing does to it); REPLAY_ARGS
#   are added to the replay (REPLAY_ARGS="--checks 0" where the materializer
#   cannot keep up with the schedule: a check then sees it late, not wrong,
#   and fails the replay).
set -euo pipefail
cd "$(dirname "$0")/.."

RESIDENTS=${RESIDENTS:-13000000}
COMPRESSION=${COMPRESSION:-100}
LOOKUPS=${LOOKUPS:-0.1}
DAYS=${DAYS:-3}
TESTS_PER_DAY=${TESTS_PER_DAY:-2}
WORK=${WORK:-/tmp/healthcode-city-round}
VERIFY_CONCURRENCY=${VERIFY_CONCURRENCY:-4}
B=target/release
GRPC=127.0.0.1:50951
ADMIN=127.0.0.1:9951

cargo build --release --locked -p healthcode -p healthcode-loadtest
. scripts/lib/round.sh
generate_round

rm -rf "$WORK/data"
"$B/healthcode-loadtest" credentials --dir "$WORK/round" --tokens-file "$WORK/data/credentials/tokens.toml"
"$B/healthcode" up --data-dir "$WORK/data" --grpc-addr "$GRPC" --admin-addr "$ADMIN" ${UP_ARGS:-} 2>"$WORK/up.log" &
UP=$!
trap 'kill $UP 2>/dev/null || true' EXIT
metric() { python3 -c "
import sys, urllib.request
token = open('$WORK/data/credentials/ops.token').read().strip()
request = urllib.request.Request('http://$ADMIN/metrics', headers={'Authorization': 'Bearer ' + token})
for line in urllib.request.urlopen(request, timeout=5).read().decode().splitlines():
    if line.startswith(sys.argv[1] + ' '): print(line.split()[1]); break
else: print(0)" "$1"; }
until python3 -c "import urllib.request; urllib.request.urlopen('http://$ADMIN/ready', timeout=1)" 2>/dev/null; do sleep 0.2; done

start=$(date +%s.%N)
echo "== replay at ${COMPRESSION}x"
"$B/healthcode-loadtest" replay --dir "$WORK/round" --target "http://$GRPC" --compression "$COMPRESSION" --out "$WORK/report" ${REPLAY_ARGS:-}
replayed=$(date +%s.%N)
echo "== wait for the materializer"
while [ "$(metric healthcode_materializer_lag_records)" != "0" ]; do sleep 1; done
materialized=$(date +%s.%N)
peak=$(grep VmHWM "/proc/$UP/status" | awk '{print $2}')
cpu=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.0f", ($14 + $15) / hz}' "/proc/$UP/stat")
echo "== verify"
"$B/healthcode-loadtest" verify --dir "$WORK/round" --target "http://$GRPC" --concurrency "$VERIFY_CONCURRENCY"
verified=$(date +%s.%N)
peak_verified=$(grep VmHWM "/proc/$UP/status" | awk '{print $2}')
python3 - "$start" "$replayed" "$materialized" "$verified" "$peak" "$cpu" "$peak_verified" <<'PY'
import sys
s, r, m, v, peak, cpu, peak_verified = map(float, sys.argv[1:])
print(f"replay {r - s:.0f} s; materializer caught up {m - r:.0f} s later (ingest + materialise {m - s:.0f} s); verify {v - m:.0f} s")
print(f"healthcode up peak memory (VmHWM): {peak / 1024:.0f} MiB until caught up, {peak_verified / 1024:.0f} MiB through verify; CPU until caught up: {cpu:.0f} s")
PY
du -sh "$WORK/data/log" "$WORK/data/store"
if [ "${DIFF:-0}" = 1 ]; then
    printf 'version = "v2-24h"\nnegative_valid_for = "24h"\nnegatives_to_clear_positive = 1\n' >"$WORK/candidate.toml"
    echo "== policy diff over every resident (paced at 50,000 residents/s)"
    /usr/bin/time -f "policy diff: %e s wall" "$B/healthcode" policy diff --candidate "$WORK/candidate.toml" \
        --admin-addr "$ADMIN" --credentials-dir "$WORK/data/credentials" | tee "$WORK/diff.txt" | head -12
fi
kill -TERM $UP && wait $UP
if [ "${REBUILD:-0}" = 1 ]; then
    echo "== rebuild: the store deleted, every status from the log"
    rm -rf "$WORK/data/store"
    /usr/bin/time -f "rebuild: %e s wall, %M KiB peak memory" "$B/healthcode" rebuild --data-dir "$WORK/data"
    "$B/healthcode" up --data-dir "$WORK/data" --grpc-addr "$GRPC" --admin-addr "$ADMIN" ${UP_ARGS:-} 2>>"$WORK/up.log" &
    UP=$!
    until python3 -c "import urllib.request; urllib.request.urlopen('http://$ADMIN/ready', timeout=1)" 2>/dev/null; do sleep 0.2; done
    echo "== verify after the rebuild"
    "$B/healthcode-loadtest" verify --dir "$WORK/round" --target "http://$GRPC" --concurrency "$VERIFY_CONCURRENCY"
    kill -TERM $UP && wait $UP
fi
