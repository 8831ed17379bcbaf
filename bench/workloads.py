"""The SGVB loss steps benchmarked, each as eager reference code, torch.compile of it, and fastaevb.

Sizes are the paper's MNIST experiments (Sec. 5): batch 100, 784 pixels, J latent dims.
Every callable runs forward *and* backward, so the numbers are per training step of the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as torch_F

import fastaevb
from fastaevb import functional as F

BATCH, PIXELS = 100, 784
LATENTS = (20, 200)


def classic_loss(recon_x, x, mu, logvar):
    """The classic PyTorch VAE example's loss (probabilities), verbatim."""
    BCE = torch_F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def logits_loss(logits, x, mu, logvar):
    """The same negative ELBO from decoder logits, as eager PyTorch code writes it."""
    BCE = torch_F.binary_cross_entropy_with_logits(logits, x.view(-1, 784), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def reparameterize(mu, logvar):
    """The classic example's reparameterize: one N(0, I) draw per latent."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def make_inputs(latent: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(BATCH, 1, 28, 28, generator=gen)
    logits = torch.randn(BATCH, PIXELS, generator=gen).requires_grad_()
    probs = torch.sigmoid(torch.randn(BATCH, PIXELS, generator=gen)).requires_grad_()
    mu = torch.randn(BATCH, latent, generator=gen).requires_grad_()
    logvar = (0.1 * torch.randn(BATCH, latent, generator=gen)).requires_grad_()
    return x, logits, probs, mu, logvar


def step(loss_fn, *inputs):
    """Forward and backward of a scalar loss with respect to its float inputs that need grad."""
    loss = loss_fn(*inputs)
    loss.backward()
    for t in inputs:
        t.grad = None
    return loss


_sgvb_probs, _sgvb_logits = fastaevb.SGVBLoss("bernoulli_probs"), fastaevb.SGVBLoss("bernoulli")


def sample_sum(sample_fn):
    return lambda mu, logvar: sample_fn(mu, logvar).sum()


# workload -> (inputs picker, {implementation -> loss function})
WORKLOADS = {
    "loss_probs": (lambda x, l, p, m, v: (p, x, m, v), {
        "eager": classic_loss, "compiled": torch.compile(classic_loss), "fastaevb": _sgvb_probs}),
    "loss_logits": (lambda x, l, p, m, v: (l, x, m, v), {
        "eager": logits_loss, "compiled": torch.compile(logits_loss), "fastaevb": _sgvb_logits}),
    "reparameterize": (lambda x, l, p, m, v: (m, v), {
        "eager": sample_sum(reparameterize), "compiled": torch.compile(sample_sum(reparameterize)),
        "fastaevb": sample_sum(F.reparameterize)}),
}
