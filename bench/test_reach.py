"""pytest-benchmark: the loss lines of public VAE code bases (``reach.py``), each as its own eager
code, ``torch.compile`` of that code and the one fastaevb call (also under ``fastaevb.low_memory()``,
its gradients computed in backward), in this one process on the same inputs; forward + backward
(a training step of the loss). ``extra_info`` has the elements, the step's held and peak memory
above its inputs (``reach.step_memory``) and compile_s.

The annealed workloads change their 0-d KL weight (or capacity) tensor every round (one graph: the
compiled code and fastaevb take it as an input).
"""

from __future__ import annotations

import os

import pytest
import torch
from reach import REACH, benchmark_step, low_memory

QUICK = os.environ.get("FASTAEVB_BENCH_QUICK") == "1"
_compiled: dict[str, object] = {}


def _step(workload, implementation):
    if implementation == "compiled":
        if workload.name not in _compiled:
            _compiled[workload.name] = torch.compile(workload.eager, dynamic=False)
        return _compiled[workload.name]
    if implementation == "fastaevb-low-memory":
        return low_memory(workload.fastaevb)
    return workload.eager if implementation == "eager" else workload.fastaevb


@pytest.mark.parametrize("implementation", ["eager", "compiled", "fastaevb", "fastaevb-low-memory"])
@pytest.mark.parametrize("workload", REACH, ids=[w.name for w in REACH])
def test_reach_step(benchmark, workload, implementation):
    inputs = workload.inputs()
    weights = [workload.inputs(step=k)[-1] for k in range(10)] if workload.annealed else [inputs[-1]]
    benchmark_step(
        benchmark, workload.name, implementation, workload.elements, _step(workload, implementation), inputs,
        3 if QUICK else 30, lambda k: (*inputs[:-1], weights[k % len(weights)]),
    )  # fmt: skip
