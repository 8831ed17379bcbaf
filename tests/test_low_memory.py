"""``fastaevb.low_memory()``: the loss ops hold nothing but their inputs between forward and
backward (their gradients are computed in backward), with the default's value and gradients."""

from __future__ import annotations

import pytest
import torch

import fastaevb
from conftest import device_for
from fastaevb import functional as F

LIKELIHOODS = ["bernoulli", "bernoulli_probs", "gaussian", "mse", "l1"]


def inputs(likelihood, device, samples=1):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 4, generator=gen, dtype=torch.float64)
    recon = torch.randn(*((samples,) if samples > 1 else ()), 5, 3, 4, generator=gen, dtype=torch.float64)
    recon = torch.sigmoid(recon) if likelihood == "bernoulli_probs" else recon
    mu = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    logvar = 0.3 * torch.randn(5, 2, generator=gen, dtype=torch.float64)
    return [t.to(device).requires_grad_(t is not x) for t in (recon, x, mu, logvar)]


def decoder_scale(likelihood, like):
    """The location-scale decoders' shared log-scale, given (so that it is one of the inputs)."""
    if likelihood in ("bernoulli", "bernoulli_probs"):
        return {}
    return {"decoder_logvar" if likelihood == "gaussian" else "decoder_log_scale": like.new_full((1,), 0.1)}


def sgvb(likelihood, recon, x, z, mu, logvar, scale):
    return F.sgvb_loss(recon, x, mu, logvar, likelihood=likelihood, kl_weight=0.5, **scale)


def iwae(likelihood, recon, x, z, mu, logvar, scale):
    return F.iwae_loss(recon, x, z, mu, logvar, likelihood=likelihood, gradient="iwae", **scale)


def saved_tensors(loss_of, tensors):
    """The loss, and every tensor autograd saved while computing it."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss = loss_of(*tensors)
    return loss, saved


@pytest.mark.parametrize("loss_of, samples", [(sgvb, 1), (sgvb, 3), (iwae, 3)], ids=["sgvb", "sgvb-L3", "iwae"])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_low_memory_holds_only_the_inputs_and_gives_the_same_gradients(kernel_backend, likelihood, loss_of, samples):
    recon, x, mu, logvar = inputs(likelihood, device_for(kernel_backend), samples)
    z = mu + torch.exp(0.5 * logvar) * torch.linspace(-1, 1, 30, dtype=mu.dtype, device=mu.device).view(3, 5, 2)
    scale = decoder_scale(likelihood, recon)
    tensors, leaves = (recon, x, z, mu, logvar), (recon, mu, logvar)
    default = loss_of(likelihood, *tensors, scale)
    with fastaevb.low_memory():
        low, saved = saved_tensors(lambda *t: loss_of(likelihood, *t, scale), tensors)
    # nothing but the inputs (or views of them) is kept for backward: no gradient written in forward
    inputs_storage = {t.untyped_storage().data_ptr() for t in (*tensors, *scale.values())}
    assert [tuple(t.shape) for t in saved if t.untyped_storage().data_ptr() not in inputs_storage] == []
    assert "CppNode" not in low.grad_fn.name()  # the C++ node always writes its gradients in forward
    # the same kernels' formulas, one rounding apart at most: float64's default tolerance
    torch.testing.assert_close(low, default)
    got = torch.autograd.grad(low, leaves, retain_graph=True)  # z's graph serves both losses
    torch.testing.assert_close(got, torch.autograd.grad(default, leaves))


def test_low_memory_nests_and_restores():
    assert fastaevb._memory.gradients_in_forward()
    with fastaevb.low_memory():
        assert not fastaevb._memory.gradients_in_forward()
        with fastaevb.low_memory(False):
            assert fastaevb._memory.gradients_in_forward()
        assert not fastaevb._memory.gradients_in_forward()
    assert fastaevb._memory.gradients_in_forward()


def test_torch_compile_traces_each_mode(monkeypatch):
    """Compiled, the mode is read while tracing: the backward entries run only in low_memory."""
    from fastaevb.ops import calls

    recon, x, mu, logvar = inputs("mse", "cpu")
    compiled = torch.compile(lambda r, t, m, v: sgvb("mse", r, t, None, m, v, {}), fullgraph=True, backend="aot_eager")
    entries = []
    original = calls.backward
    monkeypatch.setattr(calls, "backward", lambda op, *a: entries.append(op.name) or original(op, *a))
    results = []
    for low in (False, True, False):
        entries.clear()
        with fastaevb.low_memory(low):
            loss = compiled(recon, x, mu, logvar)
        results.append((torch.autograd.grad(loss, (recon, mu, logvar)), bool(entries)))
    assert [used for _, used in results] == [False, True, False]
    torch.testing.assert_close(results[1][0], results[0][0])
