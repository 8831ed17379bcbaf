"""pytest-benchmark: the IWAE loss step (``iwae.py``) at K = 5 and 50, B = 100, D = 784: the eager
``logsumexp`` code, ``torch.compile`` of it and fastaevb's one call, in this one process on the
same inputs; forward + backward. ``extra_info`` has the elements, the step's held and peak memory
above its inputs (``reach.step_memory``) and compile_s."""

from __future__ import annotations

import os

import pytest
import torch
from iwae import WORKLOADS, eager_iwae, fastaevb_iwae
from reach import benchmark_step

QUICK = os.environ.get("FASTAEVB_BENCH_QUICK") == "1"
_compiled: dict[int, object] = {}


def _step(samples: int, implementation: str):
    if implementation == "compiled":
        if samples not in _compiled:
            _compiled[samples] = torch.compile(eager_iwae, dynamic=False)
        return _compiled[samples]
    return eager_iwae if implementation == "eager" else fastaevb_iwae


@pytest.mark.parametrize("implementation", ["eager", "compiled", "fastaevb"])
@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_iwae_step(benchmark, workload, implementation):
    step = _step(workload.samples, implementation)
    benchmark_step(
        benchmark, workload.name, implementation, workload.elements, step, workload.inputs(), 3 if QUICK else 30
    )
