"""pytest-benchmark: fastaevb's fused SGVB steps against eager PyTorch and torch.compile of it.

Run ``pytest bench --benchmark-json=bench.json`` then ``python bench/report.py bench.json``
for the ratios. All three implementations of a workload run in this one process.
"""

from __future__ import annotations

import pytest
import torch

from workloads import LATENTS, WORKLOADS, make_inputs, step


@pytest.mark.parametrize("latent", LATENTS)
@pytest.mark.parametrize("implementation", ["eager", "compiled", "fastaevb"])
@pytest.mark.parametrize("workload", WORKLOADS)
def test_step(benchmark, workload, implementation, latent):
    pick, implementations = WORKLOADS[workload]
    loss_fn = implementations[implementation]
    inputs = pick(*make_inputs(latent))
    benchmark.group = f"{workload} B=100 D=784 J={latent} threads={torch.get_num_threads()}"
    benchmark.extra_info.update(workload=workload, implementation=implementation, latent=latent)
    for _ in range(3):  # compile and warm up outside the timing
        step(loss_fn, *inputs)
    benchmark.pedantic(step, args=(loss_fn, *inputs), rounds=200, iterations=5, warmup_rounds=5)
