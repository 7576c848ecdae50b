#!/usr/bin/env bash
# Every benchmark's --quick mode (tiny sizes, seconds each), so none can break unnoticed; the
# numbers are not measurements. CI (.ci/run) runs this after the test suite. A benchmark added to
# this folder is picked up by itself and must accept --quick (tests/test_benchmarks_quick.py).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
failed=()
for bench in benchmarks/*.py; do
    start=$(date +%s)
    if out=$(HF_HUB_OFFLINE=1 timeout -k 10 600 "$PY" "$bench" --quick 2>&1); then
        echo "ok   $bench ($(( $(date +%s) - start )) s)"
    else
        echo "FAIL $bench ($(( $(date +%s) - start )) s):"
        echo "$out" | tail -n 30
        failed+=("$bench")
    fi
done
# Default modes whose --quick is not just smaller sizes (tests/test_benchmarks_quick.py): train_step's
# tiny-model mode at its default 256 px, two steps.
start=$(date +%s)
if out=$(HF_HUB_OFFLINE=1 timeout -k 10 600 "$PY" benchmarks/train_step.py --steps 2 2>&1); then
    echo "ok   benchmarks/train_step.py --steps 2 ($(( $(date +%s) - start )) s)"
else
    echo "FAIL benchmarks/train_step.py --steps 2:"; echo "$out" | tail -n 30; failed+=("train_step default mode")
fi
if (( ${#failed[@]} )); then
    echo "quick benchmarks failed: ${failed[*]}"
    exit 1
fi
