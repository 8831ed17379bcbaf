"""The whole loss of a step, fused (the optional ``sgvb_loss_forward`` entry of docs/backends.md):
``kl_scale * sum_r KL_r - ll_scale * sum_r log p(x_r|z_r)`` and, with ``with_grad``, its gradients.

Two launches on CUDA: the decoder forward kernel with ``HAS_KL`` (its first programs also write
the KL rows and their gradients), then ``reduce.finish_kernel`` (fixed-order float64 sum of both
row sets into the 0-d loss, and the range check; a shared Gaussian decoder log-variance with
gradients adds one more finish for its gradient).
"""

from __future__ import annotations

import torch

from . import bernoulli as bn
from . import gaussian_log_likelihood as gl
from ._common import acc_dtype, check_width, target_view
from .gaussian_kl import gaussian_kl_forward
from .reduce import bad_counts, finish


def _separately(decoded, x, decoder_logvar, mu, logvar, likelihood, kl_scale, ll_scale, with_grad):
    """No rows on one side: the plain entries (edge case, not the hot path)."""
    kl, gmu, gv = gaussian_kl_forward(mu, logvar, "total", kl_scale, with_grad)
    if likelihood == "gaussian":
        ll, gd, gdv = gl.gaussian_forward(x, decoded, decoder_logvar, "total", -ll_scale, with_grad)
    else:
        ll, gd, _ = (bn.bernoulli_probs_forward if likelihood == "bernoulli_probs" else bn.bernoulli_logits_forward)(
            decoded, x, "total", -ll_scale, with_grad
        )
        gdv = decoded.new_empty(0)
    return kl + ll, gd, gdv, gmu, gv


def sgvb_loss_forward(decoded, x, decoder_logvar, mu, logvar, likelihood, kl_scale, ll_scale, with_grad):
    R, D = decoded.shape
    KR, KJ = mu.shape
    if R == 0 or KR == 0:
        return _separately(decoded, x, decoder_logvar, mu, logvar, likelihood, kl_scale, ll_scale, with_grad)
    check_width(D)
    check_width(KJ, "latent width")
    dev, dt = decoded.device, decoded.dtype
    acc = acc_dtype(dt)
    kl_part = torch.empty(KR, dtype=acc, device=dev)
    part = torch.empty(R, dtype=acc, device=dev)
    if with_grad:
        gmu, gv = torch.empty_like(mu), torch.empty_like(logvar)
    else:
        gmu, gv = (torch.empty(0, dtype=dt, device=dev) for _ in range(2))
    kl = (mu, logvar, kl_part, gmu, gv, kl_scale)
    out = torch.empty((), dtype=acc, device=dev)  # float32 for half inputs
    if likelihood == "gaussian":
        shared = gl._shared(decoded, decoder_logvar)
        gd, gdv = gl._grad_slots(decoded, decoder_logvar, with_grad, shared)
        gl._launch_forward(x, decoded, decoder_logvar, part, gd, gdv, -ll_scale, shared, with_grad, kl=kl)
        if with_grad and shared:
            gdv = gl._shared_grad(gdv, decoder_logvar)
        finish(out, (part, kl_part))
        return out, gd, gdv, gmu, gv
    probs = likelihood == "bernoulli_probs"
    x = target_view(x)
    gd = torch.empty_like(decoded) if with_grad else torch.empty(0, dtype=dt, device=dev)
    _, bad_in, bad_x = bad_counts(R, dev)
    bn._launch_forward(decoded, x, part, gd, bad_in, bad_x, -ll_scale, probs, False, with_grad, kl=kl)
    finish(out, (part, kl_part), bad_in if probs else None, bad_x)
    return out, gd, decoded.new_empty(0), gmu, gv
