"""Pure-PyTorch reference of every fused step: the ground truth for tests and benchmarks.

Each function is a short, differentiable torch body of one formula of
Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014). Evaluate it in
float64 to get the values every backend is compared against. Gradients come from
torch autograd, never from hand-written formulas, so they check the kernels'
backward passes independently.

Shapes: data ``x`` is ``(B, *event)``; a decoder output (``logits``, ``probs``,
``mean``) is ``(*sample, B, *event)``, i.e. ``x`` broadcast over optional leading
sample dimensions. Row sums run over the event dimensions and keep the rest.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


def sum_event(elements: Tensor, x: Tensor) -> Tensor:
    """Sum ``elements`` over the event dimensions of ``x`` (all of ``x``'s dims but the first)."""
    event_dims = x.dim() - 1
    if event_dims == 0:
        return elements
    return elements.sum(dim=tuple(range(-event_dims, 0)))


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """Eq. (4), Sec. 2.4: ``z = mu + exp(0.5 * logvar) * eps``."""
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """Appendix B: ``KL(q(z|x) || N(0, I)) = 0.5 * sum_j (mu^2 + exp(logvar) - 1 - logvar)`` per row."""
    return 0.5 * (mu.square() + torch.exp(logvar) - 1.0 - logvar).sum(-1)


def log_q(logvar: Tensor, eps: Tensor) -> Tensor:
    """``log q(z|x) = sum_j (-0.5*log(2*pi) - 0.5*logvar_j - 0.5*eps_j^2)`` for ``z = mu + sigma*eps``."""
    return (-0.5 * LOG_2PI - 0.5 * logvar - 0.5 * eps.square()).sum(-1)


def log_p(z: Tensor) -> Tensor:
    """Standard normal prior: ``log p(z) = sum_j (-0.5*log(2*pi) - 0.5*z_j^2)``."""
    return (-0.5 * LOG_2PI - 0.5 * z.square()).sum(-1)


def bernoulli_log_likelihood_elements(logits: Tensor, x: Tensor) -> Tensor:
    """Appendix C.1 from logits: ``x*l - softplus(l)`` elementwise (``= x*l + logsigmoid(-l)``)."""
    return x * logits + F.logsigmoid(-logits)


def bernoulli_probs_log_likelihood_elements(probs: Tensor, x: Tensor) -> Tensor:
    """Appendix C.1 from probabilities, exactly ``-F.binary_cross_entropy`` (logs clamped at -100)."""
    return -F.binary_cross_entropy(probs, x.expand_as(probs), reduction="none")


def gaussian_log_likelihood_elements(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Appendix C.2: ``-0.5 * (log(2*pi) + v + (x - m)^2 * exp(-v))`` elementwise."""
    return -0.5 * (LOG_2PI + logvar + (x - mean).square() * torch.exp(-logvar))


def error_log_likelihood_elements(x: Tensor, mean: Tensor, log_scale: Tensor, power: int) -> Tensor:
    """The torch-style reconstruction errors as a log-likelihood up to a constant:
    ``-(|x - m|^p * exp(-s) + s)`` elementwise; p = 2 is ``-F.mse_loss`` elements and p = 1
    ``-F.l1_loss`` elements for s = 0, and p = 1 with a learned s is latent diffusion's ``nll``."""
    diff = x - mean
    error = diff.square() if power == 2 else diff.abs()
    return -(error * torch.exp(-log_scale) + log_scale)


def bernoulli_log_likelihood(logits: Tensor, x: Tensor) -> Tensor:
    """Row sums of :func:`bernoulli_log_likelihood_elements`: one value per datapoint (and sample)."""
    return sum_event(bernoulli_log_likelihood_elements(logits, x.to(logits.dtype)), x)


def bernoulli_probs_log_likelihood(probs: Tensor, x: Tensor) -> Tensor:
    """Row sums of :func:`bernoulli_probs_log_likelihood_elements`."""
    return sum_event(bernoulli_probs_log_likelihood_elements(probs, x.to(probs.dtype)), x)


def gaussian_log_likelihood(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Row sums of :func:`gaussian_log_likelihood_elements`; ``logvar`` per element or one shared value."""
    if logvar.numel() == 1:
        logvar = logvar.reshape(())
    return sum_event(gaussian_log_likelihood_elements(x, mean, logvar), x)


def error_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor, power: int) -> Tensor:
    """Row sums of :func:`error_log_likelihood_elements`; ``log_scale`` per element or one shared value."""
    if log_scale.numel() == 1:
        log_scale = log_scale.reshape(())
    return sum_event(error_log_likelihood_elements(x, mean, log_scale, power), x)


def importance_weighted_bound(log_px: Tensor, log_pz: Tensor, log_qz: Tensor) -> Tensor:
    """``logsumexp_l(log p(x|z_l) + log p(z_l) - log q(z_l|x)) - log L`` over the leading sample dim."""
    return torch.logsumexp(log_px + log_pz - log_qz, dim=0) - math.log(log_px.shape[0])


def negative_elbo(log_px: Tensor, kl: Tensor) -> Tensor:
    """Eq. (10) negated: ``KL - mean_l log p(x|z_l)`` per datapoint (``log_px`` is ``(L, B)`` or ``(B,)``)."""
    if log_px.dim() > kl.dim():
        log_px = log_px.mean(0)
    return kl - log_px


def capacity_kl(mu: Tensor, logvar: Tensor, capacity: float, per_datapoint: bool = False) -> Tensor:
    """Burgess et al. (2018), ``|mean_b KL_b - C|`` (AntixK's and 1Konny's ``loss_type='B'``), or
    ``mean_b |KL_b - C|`` with ``per_datapoint`` (pythae's disentangled beta-VAE), ``(B, J)`` latents."""
    kl = gaussian_kl(mu, logvar)
    return (kl - capacity).abs().mean() if per_datapoint else (kl.mean() - capacity).abs()


def free_bits_kl(mu: Tensor, logvar: Tensor, free_bits: float) -> Tensor:
    """Kingma et al. (2016), the IAF paper's free bits: ``sum_j max(lambda, mean_b KL_bj)`` with the
    KL of latent element j, ``0.5 (mu^2 + exp(logvar) - 1 - logvar)``, ``(B, J)`` latents."""
    elements = 0.5 * (mu.square() + torch.exp(logvar) - 1.0 - logvar)
    return torch.clamp(elements.mean(0), min=free_bits).sum()
