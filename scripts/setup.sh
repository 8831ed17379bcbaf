#!/usr/bin/env bash
# Set up everything on a fresh machine: a venv in .venv with torch (CPU build, installed first and
# explicitly so pip never picks a multi-GB CUDA build), triton, and fastaevb with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
"${pip[@]}" install "torch==${FASTAEVB_TORCH_VERSION:-2.13.0}"
"${pip[@]}" install triton
"${pip[@]}" install -e ".[test]"
.venv/bin/python -c "import fastaevb; print('fastaevb backends:', fastaevb.available_backends())"
