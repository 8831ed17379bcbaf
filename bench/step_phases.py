"""Where the time of one loss step goes: each phase of a ``bench/test_sgvb_loss.py`` step timed in
place, through fastaevb's API and through its C++ autograd nodes called directly.

The step is the benchmark's: ``z = reparameterize(mu, logvar)``, the loss of the decoder output,
``loss + z.sum()``, ``backward()``, then the gradients cleared. ``api`` calls
``fastaevb.functional.reparameterize`` and ``fastaevb.SGVBLoss`` (argument checks, dispatch, seed
drawn from torch's generator); ``nodes`` calls ``fastaevb._autograd`` with a fixed seed and no
checks: the least any Python API over these nodes could cost. Phases are timed inside the step,
so a phase pays the cache misses the kernels leave behind, as it does in training.

Run: ``python bench/step_phases.py [--workload "paper logits"] [--rounds 4] [--steps 200]``.
Prints the median of each phase per path, in microseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import fastaevb
from fastaevb import functional as FF

sys.path.insert(0, str(Path(__file__).parent))
from workloads import WORKLOADS, grads_of

PHASES = ("reparameterize", "loss", "objective", "backward", "clear", "step")
_KINDS = {"logits": "bernoulli", "probs": "bernoulli_probs"}


def step_of(workload, path: str):
    """One timed step on ``path`` ('api' or 'nodes'): returns the phase durations in seconds."""
    recon, x, mu, logvar = inputs = workload.inputs()
    likelihood = _KINDS[workload.kind]
    loss_fn = fastaevb.SGVBLoss(likelihood)
    nodes = code = None
    if path == "nodes":
        cpp = fastaevb.backends.kernels("cpp")
        nodes, code = cpp._autograd, cpp._C.LIKELIHOODS[likelihood]
    clock = time.perf_counter

    def step() -> list[float]:
        t0 = clock()
        z = FF.reparameterize(mu, logvar) if nodes is None else nodes.reparameterize(mu, logvar, None, 12345, 1)
        t1 = clock()
        if nodes is None:
            loss = loss_fn(recon, x, mu, logvar)
        else:
            loss = nodes.sgvb_loss(recon, x, None, mu, logvar, code, 1.0, 1.0 / workload.samples, True)[0]
        t2 = clock()
        objective = loss + z.sum()
        t3 = clock()
        objective.backward()
        t4 = clock()
        for t in grads_of(inputs):
            t.grad = None
        t5 = clock()
        return [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0]

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    kinds = [w.name for w in WORKLOADS if w.kind in _KINDS]
    parser.add_argument("--workload", default="paper logits", choices=kinds, help="(default: paper logits)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per path (default: 4)")
    parser.add_argument("--steps", type=int, default=200, help="steps per round (default: 200)")
    args = parser.parse_args()
    workload = next(w for w in WORKLOADS if w.name == args.workload)
    has_nodes = fastaevb.build_info().get("autograd_nodes", False)
    paths = ["api", "nodes"] if has_nodes else ["api"]
    steps = {path: step_of(workload, path) for path in paths}
    samples: dict[str, list[list[float]]] = {path: [] for path in paths}
    for path in paths:  # warm up
        for _ in range(20):
            steps[path]()
    for _ in range(args.rounds):
        for path in paths:
            samples[path].extend(steps[path]() for _ in range(args.steps))
    print(f"{workload.name}: medians of {args.rounds} x {args.steps} steps per path, in us")
    print("| path | " + " | ".join(PHASES) + " |")
    print("|---" * (len(PHASES) + 1) + "|")
    for path in paths:
        medians = [statistics.median(s[i] for s in samples[path]) * 1e6 for i in range(len(PHASES))]
        print(f"| {path} | " + " | ".join(f"{m:.1f}" for m in medians) + " |")
    if not has_nodes:
        print("(fastaevb._autograd is not built here: only the API path was timed)")


if __name__ == "__main__":
    main()
