#!/usr/bin/env bash
# The test command: set up (idempotent) with the test extras (triton for the interpreter and the
# sm_80/sm_90 AOT check, numba, hypothesis, pytest-benchmark), then run the whole suite and the
# benchmark suite in quick mode. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
FASTAEVB_EXTRAS="train,test" bash scripts/setup.sh
.venv/bin/pytest "$@"
