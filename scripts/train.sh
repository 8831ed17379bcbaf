#!/usr/bin/env bash
# The main job: set up a fresh machine, train the paper's Bernoulli VAE (784-500-20-500-784,
# tanh, J=20, M=100, L=1, Adagrad, N(0, I) weight prior) on Fashion-MNIST for about 4 minutes
# on 2 CPU cores (about 5 with set-up and evaluation), then estimate the test lower bound and
# log p(x) (K=5000 importance samples on the first EVAL_LIMIT test images). Writes
# OUT/checkpoint.pt, OUT/log.csv and OUT/*.png.
#
#   bash scripts/train.sh                 # OUT=runs/main, STEPS=40000 (4M datapoints)
#   STEPS=200000 OUT=runs/long bash scripts/train.sh
#   NPROC=2 bash scripts/train.sh         # the same run with torchrun and DDP (2 processes)
#
# Re-running continues from OUT/checkpoint.pt (--resume) up to STEPS.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/main}
STEPS=${STEPS:-40000}
SAMPLES=${SAMPLES:-5000}
EVAL_LIMIT=${EVAL_LIMIT:-1000}
NPROC=${NPROC:-1}

bash scripts/setup.sh
py=.venv/bin/python
args=(train --out "$OUT" --steps "$STEPS" --seed 0 --resume --eval-every 2000 --checkpoint-every 2000)
if [ "$NPROC" -gt 1 ]; then
  .venv/bin/torchrun --standalone --nproc_per_node="$NPROC" -m fastaevb "${args[@]}" "$@"
else
  "$py" -m fastaevb "${args[@]}" "$@"
fi
"$py" -m fastaevb eval --checkpoint "$OUT/checkpoint.pt" --samples "$SAMPLES" --limit "$EVAL_LIMIT"
