#!/usr/bin/env bash
# The checks only a GPU can run, in one go: the CUDA tests (the Triton kernels on a real device
# against the float64 reference, Inductor compiling them, CUDA graphs, syncs) and the CUDA
# benchmark (bench/test_cuda.py: eager, torch.compile and fastaevb on Triton), with its report.
#
#   bash scripts/gpu.sh [OUT_DIR]        # default OUT_DIR: gpu-out
#
# PYTHON: an interpreter with a CUDA build of torch and triton (default .venv/bin/python, else
# python3). Where fastaevb is not installed in it, the source tree is staged as the package
# (kernels/ as fastaevb.kernels, no C++ extension) and run with `python -P` so that the tree's own
# fastaevb/ folder cannot shadow it. Time limits: FASTAEVB_GPU_TESTS_S, FASTAEVB_GPU_BENCH_S;
# FASTAEVB_BENCH_SECONDS: timed seconds per benchmark case.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-out}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
run=("$py")
if ! "$py" -c "import fastaevb.kernels" 2>/dev/null; then
  stage=$(mktemp -d)
  cp -r fastaevb "$stage/fastaevb" && cp -r kernels "$stage/fastaevb/kernels"
  export PYTHONPATH="$stage${PYTHONPATH:+:$PYTHONPATH}"
  run=("$py" -P)
fi
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/env.txt"
"${run[@]}" -c "import torch, triton, fastaevb; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name()); print(fastaevb.build_info())" 2>&1 | tee -a "$out/env.txt"

# every test whose name says triton / cuda / gpu; the AOT table (pinned to the project's Triton)
# and the fake-CUDA traces (meant for machines without a GPU) stay with the CPU suite
timeout "${FASTAEVB_GPU_TESTS_S:-1200}" "${run[@]}" -m pytest -q -p no:cacheprovider -n "${FASTAEVB_GPU_JOBS:-8}" \
  tests -k "triton or cuda or gpu" --ignore=tests/test_triton_aot.py --ignore=tests/test_triton_op.py \
  -rfE 2>&1 | tee "$out/tests.log"
tests_rc=${PIPESTATUS[0]}

timeout "${FASTAEVB_GPU_BENCH_S:-1800}" "${run[@]}" -m pytest -q -p no:cacheprovider bench/test_cuda.py \
  --benchmark-json="$out/bench-cuda.json" --benchmark-columns=median,iqr,rounds 2>&1 | tee "$out/bench.log"
bench_rc=${PIPESTATUS[0]}
[ -f "$out/bench-cuda.json" ] && "${run[@]}" bench/report.py "$out/bench-cuda.json" 2>&1 | tee "$out/report.txt"
echo "gpu.sh: tests rc=$tests_rc, bench rc=$bench_rc"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
