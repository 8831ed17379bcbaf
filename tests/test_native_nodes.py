"""The C++ autograd nodes (``csrc/autograd_nodes.cpp``) agree with the ops' one description
(``fastaevb/ops/table.py``): the same arguments in the same order, and the same outputs and
gradients as the Python path generated from the table, to the bit (the same kernels run)."""

from __future__ import annotations

import contextlib
import re

import pytest
import torch

import fastaevb
from fastaevb import functional as F
from fastaevb.ops import use_python_autograd
from fastaevb.ops.table import OPS, SCALE

pytestmark = pytest.mark.skipif(
    not fastaevb.build_info().get("autograd_nodes", False), reason="the C++ autograd nodes are not built"
)


def native_params(name: str) -> list[str]:
    """The parameter names of a pybind11 function, from its signature line."""
    from fastaevb import _autograd  # type: ignore[attr-defined]

    signature = getattr(_autograd, name).__doc__.splitlines()[0]
    return re.findall(r"(\w+):", signature[signature.index("(") :])


def test_native_entries_take_the_tables_arguments():
    # less the SCALE tensors (the 0-d kl_weight): ops.sgvb_loss multiplies them into their scalar first;
    # less the composite scalars (the thresholded KL forms, which ops.calls applies around the entries:
    # ops.sgvb_loss takes the node for the plain form only)
    op = OPS["sgvb_loss"]
    folded = {t.name for t in op.tensors if t.role == SCALE} | set(op.composite_scalars)
    assert native_params("sgvb_loss") == [name for name in op.arg_names if name not in folded]
    # the sample op without KL or log-weights: its tensors and the sample count
    sample = OPS["reparameterize_kl"]
    assert native_params("reparameterize") == [*(t.name for t in sample.tensors), "samples"]


def _inputs(likelihood: str, samples: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(3)
    lead = (samples,) if samples > 1 else ()
    recon = torch.randn(*lead, 6, 1, 4, 5, generator=gen, dtype=dtype)
    if likelihood == "bernoulli_probs":
        recon = torch.sigmoid(recon)
    x = torch.rand(6, 1, 4, 5, generator=gen, dtype=dtype)
    mu, logvar = torch.randn(6, 3, generator=gen, dtype=dtype), torch.randn(6, 3, generator=gen, dtype=dtype)
    return [t.requires_grad_() for t in (recon, mu, logvar)], x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("likelihood", ["bernoulli", "bernoulli_probs", "gaussian"])
@pytest.mark.parametrize("scale", [1.0, 0.5], ids=["upstream-1", "upstream-0.5"])
def test_sgvb_loss_node_equals_the_python_path(likelihood, samples, dtype, scale):
    results = []
    for path in ("native", "python"):
        (recon, mu, logvar), x = _inputs(likelihood, samples, dtype)
        with fastaevb.use_backend("cpp"), use_python_autograd() if path == "python" else contextlib.nullcontext():
            loss = fastaevb.SGVBLoss(likelihood, reduction="mean")(recon, x, mu, logvar)
            assert ("CppNode" in loss.grad_fn.name()) == (path == "native")
            (scale * loss).backward()
        results.append((loss.detach(), recon.grad, mu.grad, logvar.grad))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("samples", [1, 4])
def test_reparameterize_node_equals_the_python_path(samples):
    results = []
    for path in ("native", "python"):
        gen = torch.Generator().manual_seed(5)
        mu, logvar = (torch.randn(7, 3, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
        upstream = torch.randn(*((samples,) if samples > 1 else ()), 7, 3, generator=gen, dtype=torch.float64)
        torch.manual_seed(17)
        with fastaevb.use_backend("cpp"), use_python_autograd() if path == "python" else contextlib.nullcontext():
            z = F.reparameterize(mu, logvar, samples=samples)
            assert ("CppNode" in z.grad_fn.name()) == (path == "native")
            z.backward(upstream)
        results.append((z.detach(), mu.grad, logvar.grad))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
