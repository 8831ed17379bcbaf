"""pytest-benchmark: the loss lines of public VAE code bases (``reach.py``), each as its own eager
code, ``torch.compile`` of that code and the one fastaevb call, in this one process on the same
inputs; forward + backward (a training step of the loss). ``extra_info`` has the elements, the
step's held and peak memory above its inputs (``reach.step_memory``) and compile_s.

The annealed beta-VAE workload changes its 0-d KL weight tensor every round (one graph: the
compiled code and fastaevb take it as an input).
"""

from __future__ import annotations

import os
import time

import pytest
import torch
from reach import REACH, run, step_memory

QUICK = os.environ.get("FASTAEVB_BENCH_QUICK") == "1"
_compiled: dict[str, object] = {}


def _step(workload, implementation):
    if implementation == "compiled":
        if workload.name not in _compiled:
            _compiled[workload.name] = torch.compile(workload.eager, dynamic=False)
        return _compiled[workload.name]
    return workload.eager if implementation == "eager" else workload.fastaevb


@pytest.mark.parametrize("implementation", ["eager", "compiled", "fastaevb"])
@pytest.mark.parametrize("workload", REACH, ids=[w.name for w in REACH])
def test_reach_step(benchmark, workload, implementation):
    step = _step(workload, implementation)
    inputs = workload.inputs()
    benchmark.group = f"{workload.name}, fwd+bwd"
    start = time.perf_counter()
    run(step, inputs)  # compiles / warms up outside the timing
    compile_s = time.perf_counter() - start
    held, peak = step_memory(step, inputs)
    benchmark.extra_info.update(
        workload=workload.name,
        implementation=implementation,
        backward=True,
        elements=workload.elements,
        held_bytes=held,
        peak_bytes=peak,
        compile_s=compile_s,
        threads=torch.get_num_threads(),
    )
    weights = [workload.inputs(step=k)[-1] for k in range(10)] if workload.annealed else [inputs[-1]]
    state = {"k": 0}

    def one_round():
        state["k"] += 1
        return run(step, (*inputs[:-1], weights[state["k"] % len(weights)]))

    benchmark.pedantic(one_round, rounds=3 if QUICK else 30, iterations=1, warmup_rounds=1)
