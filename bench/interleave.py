"""Training-step implementations of ``bench/test_training.py`` timed in alternating blocks.

pytest-benchmark times one implementation after the other, so on a shared machine a slow minute
lands on whichever ran then. Here every round runs a block of steps of each implementation in
turn and the medians over rounds are compared, so drift hits all of them alike.

Run: ``python bench/interleave.py [--workload train_step] [--rounds 40] [--steps 10]``.
Prints each implementation's median step time and its ratio to the first one listed (compiled
when the workload has it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import test_training  # the implementations, as the benchmark builds them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="train_step", help="benchmark group (default: train_step)")
    parser.add_argument("--rounds", type=int, default=40, help="rounds of blocks (default: 40)")
    parser.add_argument("--steps", type=int, default=10, help="steps per block (default: 10)")
    args = parser.parse_args()
    names = [impl for workload, impl in test_training.CASES if workload == args.workload]
    if not names:
        parser.error(f"no workload {args.workload!r}; known: {sorted({w for w, _ in test_training.CASES})}")
    names.sort(key=lambda n: n != "compiled")
    torch.manual_seed(0)
    x = test_training.batch()
    steps = {name: test_training.CASES[args.workload, name]() for name in names}
    for step in steps.values():  # compile and warm up outside the timing
        for _ in range(5):
            step(x)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step(x)
            times[name].append((time.perf_counter() - start) / args.steps)
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = names[0]
    print(f"{args.workload}: medians of {args.rounds} alternating blocks of {args.steps} steps")
    for name, median in medians.items():
        print(f"  {name:18s} {median * 1e3:7.3f} ms  {base}/this = {medians[base] / median:.3f}x")


if __name__ == "__main__":
    main()
