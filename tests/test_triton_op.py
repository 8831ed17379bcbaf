"""The fastaevb ops as ``torch.library.triton_op``s (``fastaevb/ops/registrar.py``): on CUDA,
``torch.compile``'s functionalization traces into the Triton launchers and the graph holds the
kernels themselves, for Inductor; on CPU each op stays one opaque node over the C++ / numba
backends (``register_kernel("cpu")``).

Shown without a GPU: the registrations; the CPU graphs; and, in a subprocess without the
interpreter (``tests/fake_cuda_trace.py``), the functionalized graphs of every step on *fake* CUDA
tensors, with torch's own analysis of which kernel arguments are written (TTIR lowered for
sm_90). Not shown: Inductor compiling and running those kernels on a GPU (its codegen for user
kernels needs a CUDA device), and dynamic shapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._library.custom_ops import OPDEFS, CustomOpDef
from torch._subclasses.functional_tensor import dispatch_functionalize
from torch.fx.experimental.proxy_tensor import make_fx

import fastaevb
from fastaevb import functional as F

OPS = (
    "sgvb_loss",
    "reparameterize_kl",
    "gaussian_kl",
    "bernoulli_log_likelihood",
    "bernoulli_probs_log_likelihood",
    "gaussian_log_likelihood",
    "iwae_loss",
)
SCRIPT = Path(__file__).with_name("fake_cuda_trace.py")

# Each traced step and the Triton kernels its graph holds, in launch order.
EXPECTED_KERNELS = {
    "sgvb_loss": ["bernoulli_log_likelihood_fwd_kernel", "finish_kernel"],  # KL rows inside the decoder kernel
    "sgvb_loss_gaussian": ["gaussian_log_likelihood_fwd_kernel", "finish_kernel"],
    "binary_cross_entropy_with_logits": ["bernoulli_log_likelihood_fwd_kernel", "finish_kernel"],
    "binary_cross_entropy": ["bernoulli_log_likelihood_fwd_kernel", "finish_kernel"],
    "reparameterize_kl": ["reparameterize_kl_fwd_kernel"],
    "gaussian_kl": ["gaussian_kl_fwd_kernel"],
    "gaussian_log_likelihood": ["gaussian_log_likelihood_fwd_kernel", "finish_kernel"],
    "sgvb_loss_backward": ["gaussian_kl_bwd_kernel", "bernoulli_log_likelihood_bwd_kernel"],
    "sgvb_loss_backward_gaussian": ["gaussian_kl_bwd_kernel", "gaussian_log_likelihood_bwd_kernel", "finish_kernel"],
    "reparameterize_kl_backward": ["reparameterize_kl_bwd_kernel"],
    "gaussian_kl_backward": ["gaussian_kl_bwd_kernel"],
    "gaussian_kl_bf16": ["gaussian_kl_fwd_kernel"],
    "reparameterize_kl_bf16": ["reparameterize_kl_fwd_kernel"],
    "sgvb_loss_gaussian_bf16": ["gaussian_log_likelihood_fwd_kernel", "finish_kernel"],
    # the IWAE loss on CUDA: one program per datapoint (then the 'sum' and the range checks)
    "iwae_loss": ["iwae_loss_kernel", "finish_kernel"],
    "iwae_loss_backward": ["iwae_loss_kernel"],
}


@pytest.mark.parametrize("name", [*OPS, *(f"{n}_backward" for n in OPS)])
def test_every_op_has_a_cpu_kernel_and_is_a_triton_op_where_inductor_can_use_it(name):
    qualname = f"fastaevb::{name}"
    assert isinstance(OPDEFS[qualname], CustomOpDef)
    # what triton_op records; here (no CUDA device) only when asked with FASTAEVB_TRITON_OPS=1
    assert (qualname in torch._library.triton.triton_ops_to_kernels) == fastaevb.ops.registrar.TRITON_OPS
    assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CPU")


def test_registrations_in_a_triton_op_process():
    """With ``FASTAEVB_TRITON_OPS=1`` (as on a CUDA machine) every op is a triton_op with a CPU kernel."""
    env = {**os.environ, "FASTAEVB_TRITON_OPS": "1"}
    code = (
        "import torch, fastaevb\n"
        f"names = [f'fastaevb::{{n}}{{s}}' for n in {OPS!r} for s in ('', '_backward')]\n"
        "assert all(n in torch._library.triton.triton_ops_to_kernels for n in names)\n"
        "assert all(torch._C._dispatch_has_kernel_for_dispatch_key(n, 'CPU') for n in names)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def test_cpu_ops_stay_one_node_when_functionalized(kernel_backend):
    """On CPU tensors the functionalized graph (as AOTAutograd builds it) keeps the op: torch would
    otherwise decompose a triton_op into its body on any device. The interpreted Triton backend
    (CPU tensors) stays opaque too."""
    recon, x = torch.randn(4, 6), (torch.rand(4, 6) > 0.5).float()
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)

    def step(recon, x, mu, logvar):
        with fastaevb.ops.use_custom_ops():
            return F.sgvb_loss(recon, x, mu, logvar, likelihood="bernoulli")

    graph = make_fx(dispatch_functionalize(step))(recon, x, mu, logvar).graph
    targets = [str(n.target) for n in graph.nodes if n.op == "call_function"]
    assert "fastaevb.sgvb_loss.default" in targets
    assert not any("triton_kernel" in t for t in targets)


def _trace(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    if mode != "entries":  # the entries are traced without the op layer
        env["FASTAEVB_TRITON_OPS"] = "1"  # triton_ops without a CUDA device, as on a CUDA machine
    result = subprocess.run([sys.executable, str(SCRIPT), mode], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_fake_cuda_graphs_hold_the_triton_kernels():
    """Every step on fake CUDA tensors: no fastaevb node left, the expected kernels as
    ``triton_kernel_wrapper_functional`` nodes, no kernel writes a graph input (so Inductor need
    not copy inputs before a launch), and the outputs have the shapes, dtypes and device the op's
    fake kernel declares (what dynamo traced with)."""
    report = _trace("cuda")
    assert set(report) == set(EXPECTED_KERNELS)
    for name, found in report.items():
        assert found["fastaevb_nodes"] == [], name
        assert [kernel for kernel, _ in found["kernels"]] == EXPECTED_KERNELS[name], name
        assert found["writes_inputs"] == [], name
        assert all(written for _, written in found["kernels"]), name
        assert found["outputs_as_declared"], name  # the launchers' outputs match the fake kernel's


# Each entry point traced directly (outputs given, ``tests/fake_cuda_trace.py entries``): its
# kernels in launch order and the arguments each writes. Unwanted outputs and absent extras are
# passed as never-written stand-ins (the inputs, a cached zero): no kernel writes one of them.
EXPECTED_ENTRY_LAUNCHES = {
    "gaussian_kl_forward": [
        ["gaussian_kl_fwd_kernel", ["gmu_ptr", "gv_ptr", "out_ptr"]],
        ["finish_kernel", ["out_ptr"]],
    ],
    "gaussian_kl_backward": [["gaussian_kl_bwd_kernel", ["gmu_ptr", "gv_ptr"]]],
    "bernoulli_log_likelihood_forward": [  # 'rows': the finish kernel only checks the range
        ["bernoulli_log_likelihood_fwd_kernel", ["bad_x_ptr", "out_ptr"]],
        ["finish_kernel", ["count_ptr"]],
    ],
    "bernoulli_probs_log_likelihood_forward": [
        ["bernoulli_log_likelihood_fwd_kernel", ["bad_in_ptr", "bad_x_ptr", "grad_ptr", "gx_ptr", "out_ptr"]],
        ["finish_kernel", ["count_ptr", "out_ptr"]],
    ],
    "bernoulli_log_likelihood_backward": [["bernoulli_log_likelihood_bwd_kernel", ["grad_ptr"]]],
    "gaussian_log_likelihood_backward": [  # a shared log-variance: its gradient summed by a finish
        ["gaussian_log_likelihood_bwd_kernel", ["gm_ptr", "gv_ptr"]],
        ["finish_kernel", ["out_ptr"]],
    ],
    "reparameterize_kl_forward": [["reparameterize_kl_fwd_kernel", ["z_ptr"]]],
    "reparameterize_kl_forward_bf16": [["reparameterize_kl_fwd_kernel", ["z_ptr"]]],
    "reparameterize_kl_backward": [["reparameterize_kl_bwd_kernel", ["gmu_ptr", "gv_ptr"]]],
    "sgvb_loss_forward": [
        [
            "bernoulli_log_likelihood_fwd_kernel",
            ["bad_x_ptr", "grad_ptr", "kgmu_ptr", "kgv_ptr", "kout_ptr", "out_ptr"],
        ],
        ["finish_kernel", ["count_ptr", "out_ptr"]],
    ],
    "sgvb_loss_forward_gaussian": [
        ["gaussian_log_likelihood_fwd_kernel", ["gm_ptr", "gv_ptr", "kgmu_ptr", "kgv_ptr", "kout_ptr", "out_ptr"]],
        ["finish_kernel", ["out_ptr"]],  # the shared decoder log-variance's gradient
        ["finish_kernel", ["out_ptr"]],  # the loss
    ],
}


@pytest.mark.slow
def test_fake_cuda_graphs_of_the_entries():
    """The Triton entry points traced on fake CUDA tensors, no op layer: each launch is a
    ``triton_kernel_wrapper_functional`` node writing exactly the wanted outputs and scratch, never
    a graph input (an input standing in for an unwanted output is not written)."""
    report = _trace("entries")
    assert set(report) == set(EXPECTED_ENTRY_LAUNCHES)
    for name, found in report.items():
        assert found["kernels"] == EXPECTED_ENTRY_LAUNCHES[name], name
        assert found["writes_inputs"] == [], name


@pytest.mark.slow
def test_fake_cpu_graphs_keep_the_ops():
    """The same script on fake CPU tensors: opaque fastaevb nodes, no Triton kernel."""
    for name, found in _trace("cpu").items():
        assert found["kernels"] == [], name
        assert found["fastaevb_nodes"], name
