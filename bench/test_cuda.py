"""pytest-benchmark on CUDA: the workloads of ``test_sgvb_loss.py`` (``workloads.py``) on a GPU,
as eager PyTorch, ``torch.compile`` of that eager code (default mode and ``reduce-overhead``:
CUDA graphs), and fastaevb on its Triton backend. Skipped where no CUDA device is present.

Conventions as in ``test_sgvb_loss.py``: groups ``CUDA <workload>, fwd`` / ``CUDA <workload>, fwd+bwd``,
``extra_info``: implementation (``eager`` | ``compiled`` | ``compiled-reduce-overhead`` | ``fastaevb``),
elements, bytes (least traffic of a fused float32 step), compile_s, device. Every timed call ends
with ``torch.cuda.synchronize()``, so a round is the step's wall time on the device.

    pytest bench/test_cuda.py --benchmark-json=bench-cuda.json && python bench/report.py bench-cuda.json

``FASTAEVB_BENCH_QUICK=1``: a few rounds (CI smoke run on a GPU machine).
``FASTAEVB_BENCH_SECONDS`` (default 1.5): the timed seconds aimed at per case (at least 20 rounds,
at most 1000), so a short lease can still run every case with enough rounds for a median.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

import fastaevb

if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the CUDA benchmark runs on a GPU machine only", allow_module_level=True)
if "triton" not in fastaevb.available_backends():
    pytest.skip("the triton backend is not installed", allow_module_level=True)

from workloads import WORKLOADS, grads_of, run

QUICK = os.environ.get("FASTAEVB_BENCH_QUICK") == "1"
SECONDS = float(os.environ.get("FASTAEVB_BENCH_SECONDS", "1.5"))
IMPLEMENTATIONS = ["eager", "compiled", "compiled-reduce-overhead", "fastaevb"]
_compiled: dict[tuple[str, str], object] = {}


def _to_cuda(inputs):
    def move(t):
        if isinstance(t, tuple):
            return tuple(move(u) for u in t)
        return t.detach().to("cuda").requires_grad_(t.requires_grad)

    return tuple(move(t) for t in inputs)


def _step(workload, implementation):
    steps = workload.implementations()
    if implementation.startswith("compiled"):
        mode = "reduce-overhead" if implementation.endswith("reduce-overhead") else None
        key = (workload.name, implementation)
        if key not in _compiled:  # one compiled function per workload and mode: no recompiles
            _compiled[key] = torch.compile(steps["eager"], dynamic=False, mode=mode)
        return _compiled[key]
    return steps[implementation]


def _synchronized(step, inputs, backward):
    out = run(step, inputs, backward)
    torch.cuda.synchronize()
    return out


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_cuda_loss_step(benchmark, workload, implementation, backward):
    if QUICK and workload.batch > 8192:
        pytest.skip("quick mode: the largest workload runs in the full suite only")
    step = _step(workload, implementation)
    inputs = _to_cuda(workload.inputs())
    benchmark.group = f"CUDA {workload.name}, {'fwd+bwd' if backward else 'fwd'}"
    benchmark.extra_info.update(
        workload=f"CUDA {workload.name}",
        implementation=implementation,
        backward=backward,
        elements=workload.elements,
        bytes=workload.bytes_moved(backward),
        device=torch.cuda.get_device_name(),
    )
    with fastaevb.use_backend("triton" if implementation == "fastaevb" else "torch"):
        start = time.perf_counter()
        _synchronized(step, inputs, backward)  # compiles / JITs / captures outside the timing
        benchmark.extra_info["compile_s"] = time.perf_counter() - start
        for _ in range(3):  # reduce-overhead records its graphs over the first calls
            _synchronized(step, inputs, backward)
        once = time.perf_counter()
        _synchronized(step, inputs, backward)
        once = time.perf_counter() - once
        rounds = 5 if QUICK else max(20, min(1000, int(SECONDS / max(once, 1e-6))))
        benchmark.pedantic(_synchronized, args=(step, inputs, backward), rounds=rounds, iterations=1, warmup_rounds=2)
    for t in grads_of(inputs):
        t.grad = None


def test_cuda_bandwidth_probe(benchmark):
    """Device memory bandwidth in this run: a 256 MB device-to-device copy."""
    src = torch.rand(64 * 1024 * 1024, device="cuda")
    dst = torch.empty_like(src)
    benchmark.group = "CUDA bandwidth probe"
    benchmark.extra_info.update(implementation="copy", bytes=2 * src.numel() * 4, device=torch.cuda.get_device_name())

    def copy():
        dst.copy_(src)
        torch.cuda.synchronize()

    benchmark.pedantic(copy, rounds=5 if QUICK else 50, iterations=1, warmup_rounds=3)
