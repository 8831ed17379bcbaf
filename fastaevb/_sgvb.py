"""The whole SGVB loss of a training step behind ``functional.sgvb_loss``: the common Bernoulli
call of a step tested in one expression, the general checks, one fused ``sgvb_loss`` op call, or,
per datapoint (``reduction='none'``, a differentiable target, estimator A), the decoder and KL ops."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _likelihoods as likelihoods
from . import _torch_private as private
from . import _validation as check
from . import ops
from ._latents import check_latents, common_latents, gaussian_kl, row_reduction, wants_grad_in_forward
from .ops import autocast
from .ops.table import LIKELIHOODS

ESTIMATORS = ("analytic", "generic")


def reduced(per_datapoint: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return per_datapoint
    return per_datapoint.sum() if reduction == "sum" else per_datapoint.mean()


def _decoder_log_likelihood(
    likelihood: str, recon: Tensor, x: Tensor, decoder_logvar: Tensor | None, reduction: str
) -> Tensor:
    if likelihood == "bernoulli":
        return likelihoods.bernoulli("bernoulli_log_likelihood", "logits", recon, x, reduction)
    if likelihood == "bernoulli_probs":
        return likelihoods.bernoulli("bernoulli_probs_log_likelihood", "probs", recon, x, reduction)
    logvar = recon.new_zeros(()) if decoder_logvar is None else decoder_logvar
    return likelihoods.gaussian(x.to(recon.dtype), recon, logvar, reduction)


def _training_step_samples(recon: object, x: object, mu: object, logvar: object) -> int:
    """L, when the Bernoulli loss of :func:`sgvb_loss` gets the common call of a training step:
    decoder outputs ``(B, D)`` for data of B rows of D values (any event shape), or ``(L, B, D)``
    for data ``(B, D)``; latents ``(B, J)``; floating-point outputs and latents, targets of a
    Bernoulli target dtype; one device; no autocast, no target gradient, a fused backend. Every
    check of the general path passes such a call, so it is tested in one expression (this runs
    every step; the checks one by one cost about 8 us of a 0.2 ms paper-size step, measured in
    place); anything else gives 0 and goes through the checks, which name what is wrong."""
    if not (
        isinstance(recon, Tensor)
        and isinstance(x, Tensor)
        and common_latents(mu, logvar)
        and recon.dtype.is_floating_point
        and (x.dtype.is_floating_point or x.dtype in check.TARGET_DTYPES)
        and mu.dim() == 2  # type: ignore[attr-defined]
        and x.dim() >= 2
        and mu.shape[0] == x.shape[0]  # type: ignore[attr-defined]
        and recon.device == x.device == mu.device  # type: ignore[attr-defined]
        and not (x.requires_grad and torch.is_grad_enabled())
        and not private.autocast_enabled()
    ):
        return 0
    if recon.dim() == 2:
        return 1 if recon.shape[0] == x.shape[0] and recon.numel() == x.numel() else 0
    return recon.shape[0] if recon.dim() == 3 and recon.shape[1:] == x.shape else 0


def sgvb_loss(
    recon: Tensor,
    x: Tensor,
    mu: Tensor | None,
    logvar: Tensor | None,
    likelihood: str,
    reduction: str,
    decoder_logvar: Tensor | None,
    estimator: str,
    log_q: Tensor | None,
    log_p: Tensor | None,
) -> Tensor:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    reduction = check.reduction(reduction)
    bernoulli_step = likelihood != "gaussian" and estimator == "analytic" and reduction != "none"
    if bernoulli_step and decoder_logvar is None and mu is not None and logvar is not None:
        samples = _training_step_samples(recon, x, mu, logvar)
        if samples:  # the common call, which every check below passes
            _, row_scale = row_reduction(reduction, x.shape[0])  # 1 for "sum", 1/B for "mean"
            with_grad = torch.is_grad_enabled() and (recon.requires_grad or mu.requires_grad or logvar.requires_grad)
            return ops.sgvb_loss(recon, x, None, mu, logvar, likelihood, row_scale, row_scale / samples, with_grad)
    if private.autocast_enabled():  # float32 under autocast, as torch's losses (ops.autocast)
        recon, x, mu, logvar, decoder_logvar, log_q, log_p = autocast.to_float32(  # type: ignore[assignment]
            recon, x, mu, logvar, decoder_logvar, log_q, log_p
        )
    check.floating("recon", recon)
    row_shape, event = check.decoder_rows("recon", recon, "x", x)
    batch = x.shape[0]
    samples = math.prod(row_shape[:-1])
    if likelihood == "gaussian" and decoder_logvar is not None:
        check.floating("decoder_logvar", decoder_logvar)
        if decoder_logvar.numel() != 1 and decoder_logvar.shape != recon.shape:
            raise ValueError(
                f"decoder_logvar must have recon's shape {tuple(recon.shape)} or hold one shared value, "
                f"got {tuple(decoder_logvar.shape)}"
            )
    if estimator == "generic":
        return _generic_sgvb_loss(likelihood, recon, x, decoder_logvar, log_q, log_p, row_shape, reduction)

    if mu is None or logvar is None:
        raise ValueError("the analytic estimator needs mu and logvar (the encoder's outputs)")
    check_latents(mu, logvar, 1, None)
    check.same_device("recon", recon, x=x, mu=mu)
    if tuple(mu.shape[:-1]) != (batch,):
        raise ValueError(f"mu of shape {tuple(mu.shape)} must be (B, J) with B = {batch}, the batch of x")
    # per datapoint, then reduced (also when x needs a gradient: the fused loss gives none)
    if reduction == "none" or check.differentiable(x):
        log_px = _decoder_log_likelihood(likelihood, recon, x, decoder_logvar, "none")
        per_datapoint = gaussian_kl(mu, logvar, "none") - log_px.reshape(samples, batch).mean(0)
        return reduced(per_datapoint, reduction)

    # One fused call: kl_scale * sum KL - ll_scale * sum log p(x|z).
    if likelihood == "gaussian":
        check.floating("x", x)
    else:
        check.target("x", x)
    _, row_scale = row_reduction(reduction, batch)  # 1 for "sum", 1/B for "mean"
    if likelihood == "gaussian":
        check.same_float_dtype("recon", recon, mu=mu)
        if decoder_logvar is None:
            decoder_logvar = recon.new_zeros(1)
        x = x.to(recon.dtype)
    grad_from = (recon, mu, logvar) if decoder_logvar is None else (recon, mu, logvar, decoder_logvar)
    return ops.sgvb_loss(
        recon,
        x,
        decoder_logvar,
        mu,
        logvar,
        likelihood,
        row_scale,
        row_scale / samples,
        wants_grad_in_forward("sum", *grad_from),
    )


def _generic_sgvb_loss(
    likelihood: str,
    recon: Tensor,
    x: Tensor,
    decoder_logvar: Tensor | None,
    log_q: Tensor | None,
    log_p: Tensor | None,
    row_shape: tuple[int, ...],
    reduction: str,
) -> Tensor:
    """Estimator A (eq. 6) from the fused log-weights: ``-mean_l (log p(x|z_l) + log p(z_l) - log q(z_l|x))``."""
    if log_q is None or log_p is None:
        raise ValueError(
            "the generic estimator needs log_q and log_p: "
            "z, kl, log_q, log_p = reparameterize_kl(mu, logvar, samples=L, return_log_weights=True)"
        )
    for name, t in (("log_q", log_q), ("log_p", log_p)):
        check.floating(name, t)
        if tuple(t.shape) != row_shape:
            raise ValueError(f"{name} must have shape {row_shape} (samples and batch of recon), got {tuple(t.shape)}")
    batch = row_shape[-1]
    samples = math.prod(row_shape[:-1])
    log_px = _decoder_log_likelihood(likelihood, recon, x, decoder_logvar, "none")
    per_sample = (log_px + log_p - log_q).reshape(samples, batch)
    per_datapoint = -per_sample.mean(0)
    return reduced(per_datapoint, reduction)
