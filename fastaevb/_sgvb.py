"""The whole SGVB loss of a training step behind ``functional.sgvb_loss``: the common Bernoulli
call of a step tested in one expression, the general checks, one fused ``sgvb_loss`` op call, or,
per datapoint (``reduction='none'``, a differentiable target, estimator A), the decoder and KL ops.

The loss is ``kl_weight * KL_term + recon_weight * recon_term``, each term reduced with its own
word (``recon_reduction``, ``kl_reduction``, default ``reduction``): ``'sum'``; ``'batchmean'``
(sum / B, torch's ``F.kl_div`` word; the public ``'mean'`` of this function); ``'mean'`` over the
elements (``F.mse_loss``'s default for the decoder term, ``kl.mean()`` of the KL elements). Each
word is one factor on the fused op's ``kl_scale`` / ``ll_scale``, so every combination is one call.

A capacity C or free bits lambda replace the KL term by ``|KL_term - C|`` (Burgess et al. 2018),
``reduce_b |KL_b - C|`` (``capacity_per_datapoint``, pythae's form) or ``sum_j max(lambda,
mean_b KL_bj)`` (Kingma et al. 2016), as reduced by ``kl_reduction``; the op takes them as a form
and a threshold in units of the KL summed over the batch (``ops.table.SGVB_LOSS``).
"""

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
from .ops.table import ERROR_POWERS, LIKELIHOODS

ESTIMATORS = ("analytic", "generic")
TERM_REDUCTIONS = ("sum", "batchmean", "mean")
# the decoder's second parameter: its public keyword for each likelihood that takes one
DECODER_PARAMETER = {"gaussian": "decoder_logvar", "mse": "decoder_log_scale", "l1": "decoder_log_scale"}


def reduced(per_datapoint: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return per_datapoint
    return per_datapoint.sum() if reduction == "sum" else per_datapoint.mean()


def _decoder_log_likelihood(
    likelihood: str, recon: Tensor, x: Tensor, decoder_param: Tensor | None, reduction: str
) -> Tensor:
    if likelihood == "bernoulli":
        return likelihoods.bernoulli("bernoulli_log_likelihood", "logits", recon, x, reduction)
    if likelihood == "bernoulli_probs":
        return likelihoods.bernoulli("bernoulli_probs_log_likelihood", "probs", recon, x, reduction)
    if likelihood in ERROR_POWERS:
        return likelihoods.error(x.to(recon.dtype), recon, decoder_param, ERROR_POWERS[likelihood], reduction)
    logvar = recon.new_zeros(()) if decoder_param is None else decoder_param
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


def _term_reductions(reduction: str, recon_reduction: str | None, kl_reduction: str | None) -> tuple[str, str]:
    if reduction == "none":
        if recon_reduction is not None or kl_reduction is not None:
            raise ValueError("recon_reduction and kl_reduction need a scalar reduction ('sum' or 'mean'), not 'none'")
        return "none", "none"
    default = "sum" if reduction == "sum" else "batchmean"
    for name, word in (("recon_reduction", recon_reduction), ("kl_reduction", kl_reduction)):
        if word is not None and word not in TERM_REDUCTIONS:
            raise ValueError(f"{name} must be one of {TERM_REDUCTIONS} or None (as reduction), got {word!r}")
    return recon_reduction or default, kl_reduction or default


def _term_scale(word: str, datapoints: int, elements: int) -> float:
    """The factor of a term's sum over ``datapoints`` of ``elements`` values each for ``word``."""
    if word == "sum":
        return 1.0
    count = datapoints if word == "batchmean" else datapoints * elements
    return 1.0 / count if count else math.nan


def _weight(name: str, value: object) -> tuple[float, Tensor | None]:
    """A float weight >= 0 (checked here) or a 0-d tensor (for a value that changes every step
    under torch.compile), which the op reads when it runs and checks, eagerly here."""
    if isinstance(value, Tensor):
        check.floating(name, value)
        if value.numel() != 1 or value.dim() > 1:
            raise ValueError(f"{name} must be a float or a 0-d tensor, got shape {tuple(value.shape)}")
        check.not_requiring_grad(name, value, "it is a weight, not a parameter of the loss")
        if not torch.compiler.is_compiling():  # a traced value the op checks
            check.weight(name, float(value))
        return 1.0, value.reshape(())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or a 0-d tensor, got {type(value).__name__}")
    return check.weight(name, float(value)), None


def _kl_form(capacity: object, capacity_per_datapoint: bool, free_bits: object) -> tuple[str, float, Tensor | None]:
    """The KL term's form (``ops.table.KL_FORMS``) and its threshold (a float, or 1 and a 0-d tensor)."""
    if capacity is not None and free_bits is not None:
        raise ValueError("capacity and free_bits are two forms of the KL term: give one of them")
    if capacity_per_datapoint and capacity is None:
        raise ValueError("capacity_per_datapoint needs a capacity")
    if capacity is not None:
        return ("capacity_datapoint" if capacity_per_datapoint else "capacity", *_weight("capacity", capacity))
    if free_bits is not None:
        return ("free_bits", *_weight("free_bits", free_bits))
    return "kl", 0.0, None


def _clamped(logvar: Tensor, logvar_clamp: tuple[float, float] | None) -> Tensor:
    """The encoder log-variance clamped as diffusers' ``DiagonalGaussianDistribution`` does
    (``torch.clamp``: gradient 0 outside the range)."""
    if logvar_clamp is None:
        return logvar
    low, high = (float(v) for v in logvar_clamp)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"logvar_clamp must be (low, high) with finite low < high, got {logvar_clamp!r}")
    return logvar.clamp(low, high)


def _decoder_parameter(likelihood: str, decoder_logvar: Tensor | None, decoder_log_scale: Tensor | None):
    for name, given in (("decoder_logvar", decoder_logvar), ("decoder_log_scale", decoder_log_scale)):
        if given is not None and DECODER_PARAMETER.get(likelihood) != name:
            takes = DECODER_PARAMETER.get(likelihood)
            raise ValueError(
                f"{name} is not a parameter of likelihood={likelihood!r}"
                + (f" (it takes {takes})" if takes else " (it has no learned scale)")
            )
    return decoder_logvar if likelihood == "gaussian" else decoder_log_scale


def check_decoder_parameter(likelihood: str, decoder_param: Tensor | None, recon: Tensor) -> None:
    """A learned decoder scale: floating point, on recon's device, recon's shape or one value."""
    if decoder_param is None:
        return
    name = DECODER_PARAMETER[likelihood]
    check.floating(name, decoder_param)
    check.same_device("recon", recon, **{name: decoder_param})
    if decoder_param.numel() != 1 and decoder_param.shape != recon.shape:
        raise ValueError(
            f"{name} must have recon's shape {tuple(recon.shape)} or hold one shared value, "
            f"got {tuple(decoder_param.shape)}"
        )


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
    decoder_log_scale: Tensor | None = None,
    kl_weight: float | Tensor = 1.0,
    recon_weight: float = 1.0,
    recon_reduction: str | None = None,
    kl_reduction: str | None = None,
    logvar_clamp: tuple[float, float] | None = None,
    capacity: float | Tensor | None = None,
    capacity_per_datapoint: bool = False,
    free_bits: float | Tensor | None = None,
) -> Tensor:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    reduction = check.reduction(reduction, ("none", "mean", "sum", "batchmean"))
    reduction = "mean" if reduction == "batchmean" else reduction
    kl_value, kl_tensor = _weight("kl_weight", kl_weight)
    kl_form, threshold, threshold_tensor = _kl_form(capacity, capacity_per_datapoint, free_bits)
    plain = (
        kl_tensor is None
        and kl_form == "kl"
        and recon_weight == 1.0
        and recon_reduction is None
        and kl_reduction is None
        and logvar_clamp is None
        and decoder_logvar is None
        and decoder_log_scale is None
    )
    if plain and likelihood in ("bernoulli", "bernoulli_probs") and estimator == "analytic" and reduction != "none":
        samples = _training_step_samples(recon, x, mu, logvar)
        if samples and mu is not None and logvar is not None:  # the common call, which every check below passes
            _, row_scale = row_reduction(reduction, x.shape[0])  # 1 for "sum", 1/B for "mean"
            with_grad = wants_grad_in_forward("sum", recon, mu, logvar)
            return ops.sgvb_loss(
                recon, x, None, mu, logvar, None, likelihood, row_scale * kl_value, row_scale / samples, with_grad
            )
    decoder_param = _decoder_parameter(likelihood, decoder_logvar, decoder_log_scale)
    recon_weight = check.weight("recon_weight", float(recon_weight))
    recon_word, kl_word = _term_reductions(reduction, recon_reduction, kl_reduction)
    if private.autocast_enabled():  # float32 under autocast, as torch's losses (ops.autocast)
        recon, x, mu, logvar, decoder_param, log_q, log_p = autocast.to_float32(  # type: ignore[assignment]
            recon, x, mu, logvar, decoder_param, log_q, log_p
        )
    check.floating("recon", recon)
    row_shape, event = check.decoder_rows("recon", recon, "x", x)
    batch = x.shape[0]
    samples = math.prod(row_shape[:-1])
    check_decoder_parameter(likelihood, decoder_param, recon)
    if estimator == "generic":
        if not (
            kl_tensor is None and kl_value == 1.0 and recon_weight == 1.0 and logvar_clamp is None and kl_form == "kl"
        ):
            raise ValueError(
                "kl_weight, recon_weight, logvar_clamp, capacity and free_bits shape the analytic estimator's terms"
            )
        return _generic_sgvb_loss(likelihood, recon, x, decoder_param, log_q, log_p, row_shape, reduction)

    if mu is None or logvar is None:
        raise ValueError("the analytic estimator needs mu and logvar (the encoder's outputs)")
    check_latents(mu, logvar, 1, None)
    check.same_device("recon", recon, x=x, mu=mu)
    for name, t in (("kl_weight", kl_tensor), ("capacity" if free_bits is None else "free_bits", threshold_tensor)):
        if t is not None and t.device not in (recon.device, torch.device("cpu")):
            raise ValueError(f"{name} is on {t.device}: it must be on the CPU or on recon's {recon.device}")
    if mu.dim() < 2 or mu.shape[0] != batch:
        raise ValueError(
            f"mu of shape {tuple(mu.shape)} must be (B, J) or feature maps (B, C, h, w) with B = {batch}, "
            f"the batch of x of shape {tuple(x.shape)}"
        )
    if mu.dim() > 2:  # feature-map latents: one KL per datapoint, summed over all its latent elements
        mu, logvar = mu.reshape(batch, -1), logvar.reshape(batch, -1)
    logvar = _clamped(logvar, logvar_clamp)
    # per datapoint, then reduced (also when x needs a gradient: the fused loss gives none)
    if reduction == "none" or check.differentiable(x):
        if kl_form in ("capacity", "free_bits"):
            raise ValueError(
                f"{'capacity' if kl_form == 'capacity' else 'free_bits'} couples the datapoints of a batch: it needs "
                "a scalar reduction and a target without a gradient (capacity_per_datapoint=True takes any)"
            )
        capacity_value = None if kl_form == "kl" else threshold if threshold_tensor is None else threshold_tensor
        return _per_datapoint(
            likelihood, recon, x, decoder_param, mu, logvar, samples, reduction, recon_word, kl_word,
            kl_value, kl_tensor, recon_weight, capacity_value,
        )  # fmt: skip

    # One fused call: kl_scale * sum KL - ll_scale * sum log p(x|z).
    if likelihood in ("bernoulli", "bernoulli_probs"):
        check.target("x", x)
    else:
        check.floating("x", x)
        check.same_float_dtype("recon", recon, mu=mu)
        if decoder_param is None:
            decoder_param = recon.new_zeros(1)
        x = x.to(recon.dtype)
    kl_term_scale = _term_scale(kl_word, batch, mu.shape[1])
    kl_scale = kl_value * kl_term_scale
    ll_scale = recon_weight * _term_scale(recon_word, batch, event) / samples
    # the threshold t of the op's forms, in units of the KL summed over the batch (ops.table)
    threshold *= {"kl": 0.0, "capacity": 1 / kl_term_scale, "capacity_datapoint": 1.0, "free_bits": batch}[kl_form]
    grad_from = (recon, mu, logvar) if decoder_param is None else (recon, mu, logvar, decoder_param)
    return ops.sgvb_loss(
        recon,
        x,
        decoder_param,
        mu,
        logvar,
        kl_tensor,
        likelihood,
        kl_scale,
        ll_scale,
        wants_grad_in_forward("sum", *grad_from),
        threshold_tensor,
        kl_form,
        threshold,
    )


def _per_datapoint(
    likelihood: str,
    recon: Tensor,
    x: Tensor,
    decoder_param: Tensor | None,
    mu: Tensor,
    logvar: Tensor,
    samples: int,
    reduction: str,
    recon_word: str,
    kl_word: str,
    kl_value: float,
    kl_tensor: Tensor | None,
    recon_weight: float,
    capacity: float | Tensor | None,
) -> Tensor:
    """The loss from the decoder and KL ops per datapoint: ``reduction='none'``, or a target that
    needs a gradient (which the fused op does not give); ``capacity``: each datapoint's
    ``|KL_b - C|`` (``capacity_per_datapoint``)."""
    batch = x.shape[0]
    log_px = _decoder_log_likelihood(likelihood, recon, x, decoder_param, "none").reshape(samples, batch).mean(0)
    kl = gaussian_kl(mu, logvar, "none")
    if capacity is not None:
        kl = (kl - capacity).abs()
    if kl_tensor is not None:
        kl = kl * kl_tensor
    if reduction == "none":
        return kl_value * kl - recon_weight * log_px
    event, latent = math.prod(x.shape[1:]), mu.shape[1]
    kl_total = kl.sum() * (kl_value * _term_scale(kl_word, batch, latent))
    return kl_total - log_px.sum() * (recon_weight * _term_scale(recon_word, batch, event))


def _generic_sgvb_loss(
    likelihood: str,
    recon: Tensor,
    x: Tensor,
    decoder_param: Tensor | None,
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
    log_px = _decoder_log_likelihood(likelihood, recon, x, decoder_param, "none")
    per_sample = (log_px + log_p - log_q).reshape(samples, batch)
    per_datapoint = -per_sample.mean(0)
    return reduced(per_datapoint, reduction)
