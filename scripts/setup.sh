#!/usr/bin/env bash
# Set up everything on a fresh machine, idempotently:
#   1. system packages: a C++17 compiler, CMake, Google Highway (SIMD math, runtime ISA dispatch)
#      and the Fashion-MNIST IDX files (Debian's dataset-fashion-mnist);
#   2. a venv in .venv with torch (CPU build, installed first and explicitly so pip never picks a
#      multi-GB CUDA build), then fastaevb itself with the extras in FASTAEVB_EXTRAS (default
#      "train": tqdm + matplotlib for the training application). It builds without build
#      isolation, so CMake sees this torch and builds the C++ autograd nodes (fastaevb._autograd)
#      against it next to the kernels (fastaevb._C); hence the build tools are installed first.
# Other platforms: install g++/clang, cmake and Highway (conda-forge `highway`, Homebrew `highway`)
# yourself, then run this script; it skips the apt step when the packages are already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v c++ >/dev/null || need+=(g++)
command -v cmake >/dev/null || need+=(cmake)
[ -f /usr/include/hwy/highway.h ] || [ -f /usr/local/include/hwy/highway.h ] || need+=(libhwy-dev)
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
# the test command also checks the C++ style
[[ ${FASTAEVB_EXTRAS:-train} == *test* ]] && ! command -v clang-format >/dev/null && need+=(clang-format)
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing system packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "setup: missing system packages: ${need[*]} (install them as root, see README)" >&2
    exit 1
  fi
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
"${pip[@]}" install "torch==${FASTAEVB_TORCH_VERSION:-2.13.0}"
"${pip[@]}" install "scikit-build-core>=0.10" "pybind11>=2.12"
"${pip[@]}" install --no-build-isolation -e ".[${FASTAEVB_EXTRAS:-train}]"
.venv/bin/python -c "import fastaevb; i = fastaevb.build_info(); print('fastaevb backends:', i['available_backends'], '- C++ autograd nodes:', i.get('autograd_nodes'))"
