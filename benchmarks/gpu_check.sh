#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) in one command, as the device tool runs it:
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options]      # e.g. --dry-run, --steps env tests
#
# Python: $PYTHON, else .venv/bin/python when there is one (this machine), else python3 (the
# GPU machine's image, where .venv does not travel).  Wheels: --wheels .whl is added when the
# folder .whl exists (benchmarks/gpu_wheels.sh makes it; the device call must name it in carry).
# Writes $OUT/gpu_check.json, $OUT/gpu_check.steps.log and $OUT/gpu_check.log (this output);
# without $OUT, in the current folder.  Exit status: 0 when every step is ok.
set -o pipefail
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUTDIR=${OUT:-.}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
args=()
if [ -d .whl ] && [[ " $* " != *" --wheels "* ]]; then args+=(--wheels .whl); fi
"$PY" benchmarks/gpu_check.py --out "$OUTDIR/gpu_check.json" "${args[@]}" "$@" 2>&1 | tee "$OUTDIR/gpu_check.log"
