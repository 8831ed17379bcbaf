#!/usr/bin/env bash
# The install path without a C++ compiler: build fastaevb with FASTAEVB_BUILD_CPP=0 into a fresh
# venv (torch first, as always), check that the extension is absent and build_info() says so, and
# run the loss, error and backend-selection tests on the installed wheel (numba and torch
# backends) with few hypothesis examples: this run proves the install path; the main suite runs
# every op on numba and torch in full (its per-op, drop-in, extreme-value, noise and IWAE tests,
# which here would mostly measure numba compiling its kernels cold in a fresh venv). Called by
# scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
FASTAEVB_BUILD_CPP=0 .venv/bin/python -m pip wheel . --no-deps -q -w "$work/wheel"
python=${PYTHON:-python3}
"$python" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install "torch==${FASTAEVB_TORCH_VERSION:-2.13.0}"
"${pip[@]}" install "$work"/wheel/*.whl numba pytest pytest-xdist hypothesis expecttest
(cd "$work" && "$work/venv/bin/python" -c "
import fastaevb
info = fastaevb.build_info()
assert 'cpp' not in info['available_backends'] and info['cpu_backend'] == 'numba', info
print('no-compiler install:', info['available_backends'], '-', info['note'])")
# without the 'train' extra the trainer names it at start-up (exit 2, nothing written), and trains
# to the end without the progress bar and the pictures
run=(env -C "$work" "$work/venv/bin/fastaevb" train --out "$work/run" --steps 2 --train-limit 200 --test-limit 100)
if "${run[@]}" 2>"$work/err"; then echo "trained without the train extra" >&2; exit 1; fi
grep -q "pip install 'fastaevb\[train\]'" "$work/err"
test ! -e "$work/run"
"${run[@]}" --no-progress --no-figures >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
test -e "$work/run/checkpoint.pt"
echo "no train extra: named at start-up, and a run without it trains"
# the venv's pytest does not put the checkout on sys.path: the tests import the installed wheel
HYPOTHESIS_PROFILE=smoke "$work/venv/bin/pytest" -q -p no:cacheprovider -n "${FASTAEVB_TEST_WORKERS:-auto}" \
  tests/test_fused_loss.py tests/test_errors.py tests/test_backend_selection.py
