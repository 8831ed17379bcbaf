#!/usr/bin/env bash
# The install path without a C++ compiler: build fastaevb with FASTAEVB_BUILD_CPP=0 into a fresh
# venv (torch first, as always), check that the extension is absent and build_info() says so, and
# run the tests that do not need C++ (numba and torch backends) with few hypothesis examples: this
# run proves the install path, the main suite runs the same properties on numba and torch in
# full (and the BCE drop-ins' torch OpInfo samples and weight layouts, which here would mostly
# measure numba compiling one specialization per layout). Called by scripts/test.sh.
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
# the venv's pytest does not put the checkout on sys.path: the tests import the installed wheel
HYPOTHESIS_PROFILE=smoke "$work/venv/bin/pytest" -q -p no:cacheprovider -n "${FASTAEVB_TEST_WORKERS:-auto}" \
  -k "not opinfo_samples and not weight_layouts and not broadcast_weights" tests/test_backends.py tests/test_drop_in.py \
  tests/test_fused_loss.py tests/test_errors.py tests/test_extremes.py tests/test_backend_selection.py \
  tests/test_noise.py
