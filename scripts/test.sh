#!/usr/bin/env bash
# The test command: set up (idempotent) with the test extras (triton for the interpreter and the
# sm_80/sm_90 AOT check, numba, hypothesis, pytest-benchmark, ruff, mypy), check style and types,
# run the whole test suite (extra arguments go to it; it compiles the quick AOT table of the
# Triton kernels), the full AOT table when kernels/*.py changed since it last passed
# (scripts/aot.sh, kernels/aot_table.sha256), the no-compiler install path, then the
# benchmark suite in quick mode (a few rounds, so it never rots), its report and short runs of
# bench/interleave.py and bench/step_phases.py.
set -euo pipefail
cd "$(dirname "$0")/.."
FASTAEVB_EXTRAS="train,test" bash scripts/setup.sh
# style and types first: cheap, and CI fails on a violation
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
clang-format --dry-run --Werror csrc/*.cpp csrc/*.h
# two workers: much of the suite is single-threaded (numba and Triton compiles, the Triton
# interpreter, torch.compile), so a 2-core machine runs it in about half the time
.venv/bin/pytest -n "${FASTAEVB_TEST_WORKERS:-auto}" "$@"
bash scripts/aot.sh --jobs 2
bash scripts/test_no_compiler.sh
out=$(mktemp -d)
FASTAEVB_BENCH_QUICK=1 .venv/bin/pytest bench -q -p no:cacheprovider --benchmark-json="$out/bench.json"
.venv/bin/python bench/report.py "$out/bench.json" --png "$out/bench.png" >/dev/null
.venv/bin/python bench/interleave.py --rounds 2 --steps 2 >/dev/null
.venv/bin/python bench/step_phases.py --rounds 1 --steps 5 >/dev/null
echo "benchmark report, interleaved training steps and step phases (quick mode): OK"
