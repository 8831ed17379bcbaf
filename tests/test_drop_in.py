"""Drop-in parity: our functions and ``SGVBLoss`` against torch's own and the classic VAE example."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as torch_F
from torch import nn

import fastaevb
from conftest import device_for
from fastaevb import functional as F

REDUCTIONS = ("none", "sum", "mean")
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def edge_probs(dtype):
    """Probabilities including exactly 0 and 1, each against targets 0, 0.5 and 1, plus random ones."""
    p = torch.tensor([0.0, 1.0, 1e-30, 1 - 1e-7, 0.5, 1e-12])
    x = torch.tensor([0.0, 0.5, 1.0])
    grid_p, grid_x = torch.meshgrid(p, x, indexing="ij")
    gen = torch.Generator().manual_seed(0)
    rand_p, rand_x = torch.rand(8, 18, generator=gen), torch.rand(8, 18, generator=gen)
    return torch.cat([grid_p.reshape(1, -1), rand_p]).to(dtype), torch.cat([grid_x.reshape(1, -1), rand_x]).to(dtype)


def edge_logits(dtype):
    """Logits of +-1e4, +-30 and 0 against targets 0, 0.5 and 1, plus random ones."""
    logits = torch.tensor([-1e4, -30.0, -1.0, 0.0, 1.0, 30.0, 1e4])
    x = torch.tensor([0.0, 0.5, 1.0])
    grid_l, grid_x = torch.meshgrid(logits, x, indexing="ij")
    gen = torch.Generator().manual_seed(1)
    rand_l, rand_x = 5 * torch.randn(8, 21, generator=gen), torch.rand(8, 21, generator=gen)
    return torch.cat([grid_l.reshape(1, -1), rand_l]).to(dtype), torch.cat([grid_x.reshape(1, -1), rand_x]).to(dtype)


DROP_INS = {
    "binary_cross_entropy": (F.binary_cross_entropy, torch_F.binary_cross_entropy, edge_probs),
    "binary_cross_entropy_with_logits": (
        F.binary_cross_entropy_with_logits,
        torch_F.binary_cross_entropy_with_logits,
        edge_logits,
    ),
}


@pytest.mark.parametrize("name", DROP_INS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_equals_torch(backend, name, reduction, dtype):
    ours, theirs, make = DROP_INS[name]
    inputs, target = (t.to(device_for(backend)) for t in make(dtype))
    a, b = inputs.clone().requires_grad_(), inputs.clone().requires_grad_()
    got, want = ours(a, target, reduction=reduction), theirs(b, target, reduction=reduction)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, **TOLERANCE[dtype])
    cotangent = torch.rand_like(want)
    got.backward(cotangent)
    want.backward(cotangent)
    torch.testing.assert_close(a.grad, b.grad, **TOLERANCE[dtype])


@pytest.mark.parametrize("name", DROP_INS)
def test_legacy_size_average_and_reduce(name):
    ours, theirs, make = DROP_INS[name]
    inputs, target = make(torch.float32)
    for legacy in ({"size_average": False}, {"reduce": False}, {"size_average": True, "reduce": True}):
        torch.testing.assert_close(ours(inputs, target, **legacy), theirs(inputs, target, **legacy))


# --- the classic PyTorch VAE example ----------------------------------------------------------


class ClassicVAE(nn.Module):
    """The architecture of the classic PyTorch VAE example (784-400-20)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def encode(self, x):
        h1 = torch.relu(self.fc1(x.view(-1, 784)))
        return self.fc21(h1), self.fc22(h1)

    def decode(self, z):
        return torch.sigmoid(self.fc4(torch.relu(self.fc3(z))))


def classic_loss_function(recon_x, x, mu, logvar):
    """The classic example's loss, verbatim: BCE + KLD, both summed."""
    BCE = torch_F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def classic_step(model, x, eps, *, ours: bool):
    mu, logvar = model.encode(x)
    if ours:
        z = F.reparameterize(mu, logvar, eps=eps)
        loss = fastaevb.SGVBLoss("bernoulli_probs")(model.decode(z), x, mu, logvar)
    else:
        z = mu + eps * torch.exp(0.5 * logvar)
        loss = classic_loss_function(model.decode(z), x, mu, logvar)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss, grads


def test_sgvb_loss_is_a_one_line_swap_for_the_classic_example(kernel_backend):
    """Same model, same eps: the loss agrees to float32 rounding of a 128*784-term sum; parameter
    gradients (sums over the batch through two matmuls) to 1e-4 relative."""
    torch.manual_seed(0)
    model = ClassicVAE()
    x = torch.rand(128, 1, 28, 28)
    eps = torch.randn(128, 20)
    ours_loss, ours_grads = classic_step(model, x, eps, ours=True)
    classic_loss, classic_grads = classic_step(model, x, eps, ours=False)
    torch.testing.assert_close(ours_loss, classic_loss, rtol=1e-5, atol=0)
    for ours_grad, classic_grad in zip(ours_grads, classic_grads, strict=True):
        torch.testing.assert_close(ours_grad, classic_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("likelihood", ["bernoulli", "bernoulli_probs", "gaussian"])
@pytest.mark.parametrize("samples", [1, 3])
def test_sgvb_loss_reductions_agree(backend, likelihood, samples):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(6, 2, 5, generator=gen)
    mu, logvar = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    recon = torch.randn((samples, 6, 10) if samples > 1 else (6, 10), generator=gen)
    if likelihood == "bernoulli_probs":
        recon = torch.sigmoid(recon)
    if likelihood == "gaussian":
        recon = (recon, torch.randn(recon.shape, generator=gen))
    per_datapoint = fastaevb.SGVBLoss(likelihood, reduction="none")(recon, x, mu, logvar)
    assert per_datapoint.shape == (6,)
    torch.testing.assert_close(fastaevb.SGVBLoss(likelihood, "sum")(recon, x, mu, logvar), per_datapoint.sum())
    torch.testing.assert_close(fastaevb.SGVBLoss(likelihood, "mean")(recon, x, mu, logvar), per_datapoint.mean())


def test_sgvb_loss_gaussian_matches_eq_10():
    """``KL - mean_l log p(x|z_l)`` from the reference formulas, with a shared decoder log-variance."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    mean = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64)
    mu, logvar = (
        torch.randn(5, 2, generator=gen, dtype=torch.float64),
        torch.randn(5, 2, generator=gen, dtype=torch.float64),
    )
    shared = torch.tensor(0.3, dtype=torch.float64)
    got = fastaevb.SGVBLoss("gaussian", "none")((mean, shared), x, mu, logvar)
    want = fastaevb.reference.negative_elbo(
        fastaevb.reference.gaussian_log_likelihood(x, mean, shared), fastaevb.reference.gaussian_kl(mu, logvar)
    )
    torch.testing.assert_close(got, want)
