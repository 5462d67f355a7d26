# Sourced by the round scripts. generate_round: the round in $WORK/round,
# generated again only when its shape (RESIDENTS, DAYS, TESTS_PER_DAY,
# LOOKUPS) differs from the one there; $B holds the release binaries.
generate_round() {
    local shape="residents=$RESIDENTS days=$DAYS tests_per_day=$TESTS_PER_DAY lookups=$LOOKUPS"
    mkdir -p "$WORK"
    if [ -f "$WORK/round/round.json" ] && [ "$(cat "$WORK/round/shape" 2>/dev/null)" = "$shape" ]; then
        return
    fi
    echo "== generate $RESIDENTS residents"
    /usr/bin/time -f "generate: %e s wall, %M KiB peak memory" \
        "$B/healthcode-loadtest" generate --out "$WORK/round" --residents "$RESIDENTS" --lookups-per-resident "$LOOKUPS" \
        --days "$DAYS" --tests-per-day "$TESTS_PER_DAY"
    echo "$shape" >"$WORK/round/shape"
}
