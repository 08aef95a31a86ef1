#!/usr/bin/env bash
# Prints the markdown table of every saved result file (default: the
# files in benches/results/, which the tables of README and docs/ come from), drawn again
# from the JSON by `loadgen table`: anyone can check a table against its
# numbers, or redo the run (benches/tuning-settings.sh) and the table.
#
#   benches/tables.sh [FILE.json ...]
set -euo pipefail
cd "$(dirname "$0")/.."
LOADGEN_BIN=${LOADGEN_BIN:-target/release/loadgen}
[ -x "$LOADGEN_BIN" ] || cargo build --release -q -p loadgen
if [ $# -eq 0 ]; then
  set -- benches/results/*.json benches/results/*/*.json
fi
"$LOADGEN_BIN" table "$@"
