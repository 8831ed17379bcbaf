"""Numerically extreme but valid input gives the float64 reference's finite answer; NaN stays NaN."""

from __future__ import annotations

import pytest
import torch

from conftest import device_for
from fastaevb import functional as F
from fastaevb import reference

TOL = dict(rtol=1e-5, atol=1e-6)


def extreme_inputs(device):
    gen = torch.Generator().manual_seed(5)
    logits = torch.tensor([-1e4, -1e3, -88.0, -30.0, 0.0, 30.0, 88.0, 1e3, 1e4]).repeat(4, 1)
    x = torch.rand(logits.shape, generator=gen)
    x[0] = 0.0
    x[1] = 1.0
    logvar = torch.linspace(-30, 30, 9).repeat(4, 1)
    mu = torch.full((4, 9), 1e3) * torch.tensor([1.0, -1.0, 0.0, 1e-3])[:, None]
    return [t.to(device) for t in (logits, x, logvar, mu)]


EXTREME_CASES = {
    "bernoulli logits +-1e4": (
        lambda l, x, v, m: F.bernoulli_log_likelihood(l, x),
        lambda l, x, v, m: reference.bernoulli_log_likelihood(l, x),
    ),
    "bernoulli logits, uint8 targets": (
        lambda l, x, v, m: F.bernoulli_log_likelihood(l, x.round().to(torch.uint8)),
        lambda l, x, v, m: reference.bernoulli_log_likelihood(l, x.round()),
    ),
    "drop-in bce with logits": (
        lambda l, x, v, m: F.binary_cross_entropy_with_logits(l, x, reduction="none"),
        lambda l, x, v, m: -reference.bernoulli_log_likelihood_elements(l, x),
    ),
    "kl, logvar in [-30, 30], mu 1e3": (
        lambda l, x, v, m: F.gaussian_kl(m, v, "none"),
        lambda l, x, v, m: reference.gaussian_kl(m, v),
    ),
    "gaussian, logvar in [-30, 30]": (
        lambda l, x, v, m: F.gaussian_log_likelihood(x, m * 1e-3, v),
        lambda l, x, v, m: reference.gaussian_log_likelihood(x, m * 1e-3, v),
    ),
    "reparameterize, mu 1e3": (
        lambda l, x, v, m: F.reparameterize_kl(m, v, eps=x - 0.5, return_log_weights=True)[0],
        lambda l, x, v, m: reference.reparameterize(m, v, x - 0.5),
    ),
    "log p(z), mu 1e3": (
        lambda l, x, v, m: F.reparameterize_kl(m, v, eps=x - 0.5, return_log_weights=True)[3],
        lambda l, x, v, m: reference.log_p(reference.reparameterize(m, v, x - 0.5)),
    ),
}


@pytest.mark.parametrize("case", EXTREME_CASES)
def test_extreme_valid_input_is_finite_and_exact(kernel_backend, case):
    ours, expected = EXTREME_CASES[case]
    inputs = extreme_inputs(device_for(kernel_backend))
    grads_of = [inputs[0].requires_grad_(), inputs[2].requires_grad_(), inputs[3].requires_grad_()]
    got = ours(*inputs)
    want = expected(*[t.detach().double().requires_grad_(t.requires_grad) for t in inputs])
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want.detach(), **TOL)
    got.sum().backward()
    for t in grads_of:
        if t.grad is not None:
            assert torch.isfinite(t.grad).all(), case


NAN_CASES = {
    "logits": lambda a, b: F.bernoulli_log_likelihood(a, b),
    "probs": lambda a, b: F.bernoulli_probs_log_likelihood(a.sigmoid(), b),
    "kl mu": lambda a, b: F.gaussian_kl(a, b, "none"),
    "gaussian mean": lambda a, b: F.gaussian_log_likelihood(b, a, b),
    "reparameterize kl": lambda a, b: F.reparameterize_kl(a, b, eps=b)[1],
}


@pytest.mark.parametrize("case", NAN_CASES)
@pytest.mark.parametrize("reduction_total", [False, True])
def test_nan_in_gives_nan_out(kernel_backend, case, reduction_total):
    a = torch.rand(3, 8, device=device_for(kernel_backend))
    b = torch.rand(3, 8, device=a.device)
    a[1, 5] = float("nan")
    out = NAN_CASES[case](a, b)
    if reduction_total:
        assert torch.isnan(out.sum())
    else:
        assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()


@pytest.mark.parametrize("name", ["bernoulli_log_likelihood", "bernoulli_probs_log_likelihood"])
def test_nan_target_gives_nan(kernel_backend, name):
    p = torch.rand(2, 5, device=device_for(kernel_backend))
    x = torch.rand(2, 5, device=p.device)
    x[0, 0] = float("nan")
    out = getattr(F, name)(p, x)
    assert torch.isnan(out[0]) and torch.isfinite(out[1])
