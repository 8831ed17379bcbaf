"""pytest-benchmark: fastaevb's fused SGVB loss steps against eager PyTorch and torch.compile of
the same eager code, all in this one process on the same inputs (``workloads.py``).

Groups are ``<workload>, fwd`` (forward under no_grad, as in evaluation) and ``<workload>, fwd+bwd``
(a training step of the loss). ``extra_info``: implementation, elements, bytes (least traffic of a
fused step), compile_s (first call of ``compiled``, outside the timing).
``FASTAEVB_BENCH_QUICK=1`` (CI): a few rounds, so the suite never rots; the full run is
``pytest bench --benchmark-json=bench.json && python bench/report.py bench.json``.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

import fastaevb
from workloads import WORKLOADS, run

QUICK = os.environ.get("FASTAEVB_BENCH_QUICK") == "1"
CPU_BACKENDS = [b for b in ("cpp", "numba") if b in fastaevb.available_backends()]
IMPLEMENTATIONS = ["eager", "compiled"] + [
    "fastaevb" if b == CPU_BACKENDS[0] else f"fastaevb-{b}" for b in CPU_BACKENDS
]
_compiled: dict[str, object] = {}


def _step(workload, implementation):
    steps = workload.implementations()
    if implementation == "compiled":
        if workload.name not in _compiled:  # one compiled function per workload: no recompiles
            _compiled[workload.name] = torch.compile(steps["eager"], dynamic=False)
        return _compiled[workload.name]
    return steps["fastaevb" if implementation.startswith("fastaevb") else implementation]


def _backend_of(implementation: str) -> str:
    return implementation.split("-", 1)[1] if "-" in implementation else CPU_BACKENDS[0]


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_loss_step(benchmark, workload, implementation, backward):
    if QUICK and workload.batch > 8192:
        pytest.skip("quick mode: the largest workload runs in the full suite only")
    step = _step(workload, implementation)
    inputs = workload.inputs()
    benchmark.group = f"{workload.name}, {'fwd+bwd' if backward else 'fwd'}"
    benchmark.extra_info.update(
        workload=workload.name,
        implementation=implementation,
        backward=backward,
        elements=workload.elements,
        bytes=workload.bytes_moved(backward),
        threads=torch.get_num_threads(),
    )
    with fastaevb.use_backend(_backend_of(implementation)):
        start = time.perf_counter()
        run(step, inputs, backward)  # compiles / JITs / warms up outside the timing
        benchmark.extra_info["compile_s"] = time.perf_counter() - start
        for _ in range(2):
            run(step, inputs, backward)
        once = time.perf_counter()
        run(step, inputs, backward)
        once = time.perf_counter() - once
        rounds = 3 if QUICK else max(5, min(200, int(1.5 / max(once, 1e-6))))
        benchmark.pedantic(run, args=(step, inputs, backward), rounds=rounds, iterations=1, warmup_rounds=1)


def test_bandwidth_probe(benchmark):
    """Memory bandwidth of this machine in this run: a 64 MB copy, as torch's threads do it."""
    src = torch.rand(16 * 1024 * 1024)
    dst = torch.empty_like(src)
    benchmark.group = "bandwidth probe"
    benchmark.extra_info.update(implementation="copy", bytes=2 * src.numel() * 4)
    benchmark.pedantic(dst.copy_, args=(src,), rounds=5 if QUICK else 30, iterations=1, warmup_rounds=2)
