"""The SGVB loss workloads benchmarked, each as eager PyTorch code, torch.compile of that same
code, and fastaevb, with the bytes a fused implementation must move at the least.

A workload is one loss step as a training script writes it: the reparameterized sample
``z = mu + exp(0.5 logvar) * eps`` (eq. 4) and the negative ELBO of the decoder output
(KL of Appendix B + decoder log-likelihood of Appendix C). Without a decoder network between
them, z enters the objective as ``z.sum()`` in every implementation alike, so reparameterize's
backward is timed too. Sizes are the paper's (Sec. 5): D = 784 (MNIST), 560 (Frey Face), J = 20.

The ``drop-in BCE`` workloads time ``binary_cross_entropy_with_logits`` alone, as torch's and as
fastaevb's drop-in: plain (the path without weights or target gradients), with per-pixel
``weight`` and ``pos_weight``, and with soft targets that require grad.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as torch_F

import fastaevb
from fastaevb import functional as FF

# --- the eager code users write --------------------------------------------------------------


def eager_reparameterize(mu, logvar):
    """The classic example's reparameterize: one N(0, I) draw per latent."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def eager_kld(mu, logvar):
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def eager_probs_loss(recon, x, mu, logvar):
    """The classic PyTorch VAE example's loss (probabilities), verbatim but for the sizes."""
    return torch_F.binary_cross_entropy(recon, x.view(recon.shape[-2], -1).expand_as(recon), reduction="sum") / (
        recon.numel() // x.numel()
    ) + eager_kld(mu, logvar)


def eager_logits_loss(recon, x, mu, logvar):
    """The same negative ELBO from decoder logits, as eager code writes it."""
    rows = x.view(recon.shape[-2], -1).expand_as(recon)
    return torch_F.binary_cross_entropy_with_logits(recon, rows, reduction="sum") / (
        recon.numel() // x.numel()
    ) + eager_kld(mu, logvar)


def eager_gaussian_loss(recon, x, mu, logvar):
    """Appendix C.2 decoder with per-pixel log-variance, as eager code writes it."""
    mean, dec_logvar = recon
    log_px = -0.5 * (math.log(2 * math.pi) + dec_logvar + (x - mean).pow(2) * torch.exp(-dec_logvar))
    return -log_px.sum() + eager_kld(mu, logvar)


def eager_step(loss_fn):
    def step(recon, x, mu, logvar):
        z = eager_reparameterize(mu, logvar)
        return loss_fn(recon, x, mu, logvar) + z.sum()

    return step


def fastaevb_step(likelihood):
    loss_fn = fastaevb.SGVBLoss(likelihood)

    def step(recon, x, mu, logvar):
        z = FF.reparameterize(mu, logvar)
        return loss_fn(recon, x, mu, logvar) + z.sum()

    return step


# --- the drop-in BCE over a decoder output alone (issue: weights and target gradients) ------------
# weight and pos_weight per pixel (column), as class-imbalance weights are; fixed for the run.
_FACTORS = torch.Generator().manual_seed(1)
PIXEL_WEIGHT = 0.5 + torch.rand(784, generator=_FACTORS)
POS_WEIGHT = 0.5 + torch.rand(784, generator=_FACTORS)


def drop_in_bce(functional, **factors):
    def step(recon, x, mu, logvar):
        return functional.binary_cross_entropy_with_logits(recon, x, reduction="sum", **factors)

    return step


def eager_reparameterize_only(recon, x, mu, logvar):
    return eager_reparameterize(mu, logvar).sum()


def fastaevb_reparameterize_only(recon, x, mu, logvar):
    return FF.reparameterize(mu, logvar).sum()


# --- workloads ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    batch: int
    pixels: int
    latent: int
    samples: int
    kind: str  # "logits" | "probs" | "gaussian" | "reparameterize" | "bce" | "bce_weighted" | "bce_target_grad"

    @property
    def elements(self) -> int:
        """Decoder elements (or latent values for reparameterize) per step."""
        if self.kind == "reparameterize":
            return self.batch * self.latent
        return self.samples * self.batch * self.pixels

    def bytes_moved(self, backward: bool) -> int:
        """Least traffic of a fused float32 step: each input read once, each output (gradients
        included) written once; the small latent tensors and the data broadcast over samples count once."""
        latents = 4 * self.batch * self.latent * ((2 + 1 + 2 + 2) if backward else 3)  # mu, logvar, z (+ grads)
        if self.kind == "reparameterize":
            return latents
        data = 4 * self.batch * self.pixels
        per_element = {"gaussian": 2}.get(self.kind, 1)  # decoder outputs read
        decoder = 4 * self.elements * per_element * (2 if backward else 1)  # + their gradients
        if self.kind.startswith("bce"):  # no latents; the target's gradient is written too
            return data + decoder + (data if backward and self.kind == "bce_target_grad" else 0)
        return latents + data + decoder

    def inputs(self, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(self.batch, self.pixels, generator=gen)
        shape = (self.samples, self.batch, self.pixels) if self.samples > 1 else (self.batch, self.pixels)
        recon = torch.randn(shape, generator=gen)
        if self.kind == "probs":
            recon = torch.sigmoid(recon)
        recon.requires_grad_()
        if self.kind == "gaussian":
            recon = (
                torch.sigmoid(recon.detach()).requires_grad_(),
                (0.1 * torch.randn(shape, generator=gen)).requires_grad_(),
            )
        if self.kind == "bce_target_grad":  # soft targets produced by another network
            x.requires_grad_()
        mu = torch.randn(self.batch, self.latent, generator=gen).requires_grad_()
        logvar = (0.1 * torch.randn(self.batch, self.latent, generator=gen)).requires_grad_()
        return recon, x, mu, logvar

    def implementations(self) -> dict[str, Callable]:
        """eager code, and the fastaevb step per CPU backend (``compiled`` is made by the caller)."""
        if self.kind == "reparameterize":
            return {"eager": eager_reparameterize_only, "fastaevb": fastaevb_reparameterize_only}
        if self.kind.startswith("bce"):
            factors = {"weight": PIXEL_WEIGHT, "pos_weight": POS_WEIGHT} if self.kind == "bce_weighted" else {}
            return {"eager": drop_in_bce(torch_F, **factors), "fastaevb": drop_in_bce(FF, **factors)}
        eager = {"logits": eager_logits_loss, "probs": eager_probs_loss, "gaussian": eager_gaussian_loss}[self.kind]
        likelihood = {"logits": "bernoulli", "probs": "bernoulli_probs", "gaussian": "gaussian"}[self.kind]
        return {"eager": eager_step(eager), "fastaevb": fastaevb_step(likelihood)}


WORKLOADS = [
    Workload("B=1 logits (call overhead)", 1, 784, 20, 1, "logits"),
    Workload("paper logits", 100, 784, 20, 1, "logits"),
    Workload("paper probabilities (classic)", 100, 784, 20, 1, "probs"),
    Workload("L=16 logits", 100, 784, 20, 16, "logits"),
    Workload("B=8192 logits", 8192, 784, 20, 1, "logits"),
    Workload("B=65536 logits", 65536, 784, 20, 1, "logits"),
    Workload("Gaussian D=560 B=100", 100, 560, 20, 1, "gaussian"),
    Workload("Gaussian D=560 B=8192", 8192, 560, 20, 1, "gaussian"),
    Workload("reparameterize alone", 100, 784, 20, 1, "reparameterize"),
    Workload("drop-in BCE logits B=8192", 8192, 784, 20, 1, "bce"),
    Workload("drop-in BCE logits B=8192, weight + pos_weight", 8192, 784, 20, 1, "bce_weighted"),
    Workload("drop-in BCE logits B=8192, soft targets with grad", 8192, 784, 20, 1, "bce_target_grad"),
]


def grads_of(inputs) -> list[torch.Tensor]:
    flat = []
    for t in inputs:
        flat.extend(t if isinstance(t, tuple) else (t,))
    return [t for t in flat if t.requires_grad]


def run(step, inputs, backward: bool):
    """One timed call: forward (no_grad, as in evaluation) or forward + backward."""
    if not backward:
        with torch.no_grad():
            return step(*inputs)
    loss = step(*inputs)
    loss.backward()
    for t in grads_of(inputs):
        t.grad = None
    return loss
