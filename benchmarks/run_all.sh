#!/usr/bin/env bash
# Run every speed benchmark; each appends its table to docs/PERFORMANCE.md.
#   benchmarks/run_all.sh            # CPU (about 6 minutes on 2 cores)
#   benchmarks/run_all.sh cuda       # GPU (about 8-12 minutes on one H100)
# Extra arguments after the device go to every script (e.g. --repeats 7, --threads 1 --clock cpu, --no-append).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEV=${1:-cpu}
shift || true
$PY benchmarks/bench_attacks.py --device "$DEV" "$@"
$PY benchmarks/bench_gradcam.py --device "$DEV" "$@"
$PY benchmarks/bench_defenses.py --device "$DEV" "$@"
$PY benchmarks/bench_training.py --device "$DEV" "$@"
