"""The C++ extension is built and usable: it imports, exposes what fastaevb/backends/cpp.py calls, names
the SIMD target it runs, and did not switch the process to flush-to-zero (a -ffast-math build
would)."""

from __future__ import annotations

import pytest
import torch

_C = pytest.importorskip("fastaevb._C", reason="C++ extension fastaevb._C is not built")

import fastaevb  # noqa: E402
from fastaevb.backends import ENTRY_POINTS  # noqa: E402
from fastaevb.ops.table import LIKELIHOODS  # noqa: E402


def test_extension_exposes_the_kernels():
    for name in ENTRY_POINTS:
        assert callable(getattr(_C, name)), name
    assert _C.REDUCTIONS == {"none": 0, "rows": 1, "sum": 2}
    assert set(_C.LIKELIHOODS) == set(LIKELIHOODS)
    assert _C.openmp > 0, "built without OpenMP"


def test_build_info_names_the_running_simd_target():
    info = fastaevb.build_info()
    assert info["cpu_backend"] == fastaevb.backend_for("cpu")
    if "cpp" in info["available_backends"]:
        assert info["simd_target"] in info["simd_targets_supported"]
        assert set(info["simd_targets_supported"]) <= set(info["simd_targets_compiled"])


def test_no_flush_to_zero_after_import():
    # Runs kernels too, on every thread, so an FTZ/DAZ setting in any of them would show.
    from fastaevb.backends import cpp as _cpp

    grad, no_grad_x = torch.empty(256, 256), torch.empty(0)
    _cpp.bernoulli_log_likelihood_forward(
        torch.empty(()), grad, no_grad_x, torch.zeros(256, 256), torch.zeros(256, 256), None, None, "sum", 1.0
    )
    assert (torch.tensor(1e-40) * 1 != 0).item()
    assert torch.tensor(1e-40).item() != 0.0
    tiny = torch.full((4,), 1e-40, dtype=torch.float32)
    assert (tiny * 1.0).ne(0).all()


def test_denormal_results_survive_the_kernels():
    from fastaevb.backends import cpp as _cpp

    # exp(-v) for v = 90 is a float32 denormal (~8e-40): a flushed kernel would give 0 there.
    x = torch.ones(1, 1)
    mean = torch.zeros(1, 1)
    logvar = torch.full((1, 1), 90.0)
    grad_mean, grad_logvar = torch.empty(1, 1), torch.empty(1, 1)
    _cpp.gaussian_log_likelihood_forward(torch.empty(()), grad_mean, grad_logvar, x, mean, logvar, "sum", 1.0)
    assert 0 < grad_mean.item() < 1e-38


def test_randn_is_deterministic_and_standard_normal():
    from fastaevb.backends import cpp as _cpp

    offsets = torch.arange(200_000)
    a = _cpp.randn(123, offsets)
    assert a.dtype == torch.float32 and a.shape == offsets.shape
    assert torch.equal(a, _cpp.randn(123, offsets))
    assert not torch.equal(a, _cpp.randn(124, offsets))
    assert abs(a.mean().item()) < 0.01 and abs(a.std().item() - 1) < 0.01
    # int64 offsets past 2**32 and 63-bit seeds are accepted
    far = _cpp.randn(2**63 - 1, torch.tensor([2**32 + 5, 2**62]))
    assert torch.isfinite(far).all()


def test_autograd_nodes_are_built_and_run_the_loss_lines():
    """scripts/setup.sh builds fastaevb._autograd (against the installed torch): without it the
    slower Python autograd path would run unnoticed."""
    import fastaevb
    from fastaevb import functional as FF

    assert fastaevb.build_info()["autograd_nodes"], "fastaevb._autograd not built: pip install --no-build-isolation"
    mu, logvar = torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 3, requires_grad=True)
    z = FF.reparameterize(mu, logvar)
    loss = fastaevb.SGVBLoss("bernoulli")(torch.zeros(2, 4, requires_grad=True), torch.ones(2, 4), mu, logvar)
    assert "CppNode<fastaevb::Reparameterize>" in z.grad_fn.name()
    assert "CppNode<fastaevb::SGVBLoss>" in loss.grad_fn.name()
