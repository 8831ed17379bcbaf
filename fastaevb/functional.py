"""Drop-in functions, ``torch.nn.functional`` style, backed by the fused custom ops.

Equation numbers refer to Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014).

Reductions of the log-likelihoods and the KL: ``'none'`` gives one value per datapoint
(and per sample when the decoder output has leading sample dimensions), ``'sum'`` their sum,
``'mean'`` their mean over datapoints (and samples). The drop-ins ``binary_cross_entropy`` and
``binary_cross_entropy_with_logits`` keep torch's meaning exactly: elementwise for ``'none'``,
the mean over *elements* for ``'mean'``.

Dtypes: summed values of float16 / bfloat16 inputs (per-datapoint values, reductions, the KL and
log-weight rows) are float32; elementwise values and gradients keep the input dtype
(``fastaevb._dtypes``). Under ``torch.autocast`` the losses run in float32, as torch's
(``fastaevb.ops.autocast``).

Under ``fastaevb.use_backend("torch")`` (or when no fused kernel exists for the device) the
pure-PyTorch ``reference`` formulas run instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _errors, backends, ops, reference
from . import _validation as check
from ._dtypes import upcast_half
from .ops import autocast, seeds
from .reference import importance_weighted_bound

__all__ = [
    "reparameterize",
    "reparameterize_kl",
    "gaussian_kl",
    "bernoulli_log_likelihood",
    "bernoulli_probs_log_likelihood",
    "gaussian_log_likelihood",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "importance_weighted_bound",
    "sgvb_loss",
]


def _use_reference(t: Tensor) -> bool:
    return backends.resolve(t.device) == "torch"


def _wants_grad_in_forward(reduce: str, *tensors: Tensor) -> bool:
    return reduce == "total" and torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _row_reduction(reduction: str, rows: int) -> tuple[str, float]:
    """Kernel reduce mode and scale for a per-datapoint quantity."""
    if reduction == "none":
        return "rows", 1.0
    if reduction == "sum":
        return "total", 1.0
    return "total", 1.0 / rows if rows else math.nan


def _reduce_reference(per_row: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return per_row
    return per_row.sum() if reduction == "sum" else per_row.mean()


def _check_reference_range(name: str, t: Tensor) -> None:
    """The kernels flag out-of-range values in their pass; the reference path pays one here."""
    if not t.dtype.is_floating_point and t.dtype != torch.bool:
        _errors.check_range(int((t > 1).sum()), name)
    elif t.dtype.is_floating_point:
        _errors.check_range(int(((t < 0) | (t > 1)).sum()), name)


# --- sampling and KL --------------------------------------------------------------------------


def _common_latents(mu: object, logvar: object) -> bool:
    """The latents of a training step, which every check of :func:`_check_latents` passes: tensors
    of one floating-point dtype, one shape (at least 1-D) and one device. Tested in one expression
    because it runs every step; anything else goes through the checks, which name what is wrong."""
    return (
        isinstance(mu, Tensor)
        and isinstance(logvar, Tensor)
        and mu.dtype == logvar.dtype
        and mu.dtype.is_floating_point
        and mu.shape == logvar.shape
        and mu.dim() > 0
        and mu.device == logvar.device
    )


def _check_latents(mu: Tensor, logvar: Tensor, samples: int, eps: Tensor | None) -> None:
    if eps is None and type(samples) is int and samples == 1 and _common_latents(mu, logvar):
        return
    check.floating("mu", mu)
    check.floating("logvar", logvar)
    if mu.dim() == 0:
        raise ValueError("mu must have at least one dimension (the latent dimension is the last)")
    check.same_shape("mu", mu, logvar=logvar)
    check.same_float_dtype("mu", mu, logvar=logvar)
    check.same_device("mu", mu, logvar=logvar, eps=eps)
    if isinstance(samples, bool) or not isinstance(samples, int):
        raise TypeError(f"samples must be an int, got {type(samples).__name__}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if eps is not None:
        check.floating("eps", eps)
        expected = tuple(mu.shape) if samples == 1 else (samples, *mu.shape)
        if tuple(eps.shape) not in (expected, (samples, *mu.shape)):
            raise ValueError(f"eps must have shape {expected}, got {tuple(eps.shape)}")
        check.not_requiring_grad("eps", eps)


def reparameterize_kl(
    mu: Tensor,
    logvar: Tensor,
    *,
    samples: int = 1,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
    return_log_weights: bool = False,
) -> tuple[Tensor, ...]:
    """Reparameterized sample and analytic KL in one fused pass.

    ``z = mu + exp(0.5 * logvar) * eps`` (eq. 4, Sec. 2.4) with ``eps ~ N(0, I)``, and
    ``KL = 0.5 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)`` per datapoint (Appendix B).

    Args:
        mu, logvar: ``(*batch, J)`` encoder outputs, same shape, dtype and device.
        samples: L >= 1 draws per datapoint; z is ``(*batch, J)`` for L = 1, else ``(L, *batch, J)``.
        eps: optional explicit noise of z's shape (e.g. ``torch.randn_like``); treated as a constant.
            Without it, eps comes from the Philox stream of a seed drawn from ``generator``
            (default: torch's CPU generator, so ``torch.manual_seed`` controls it) and is
            regenerated in backward, never stored.
        return_log_weights: also return ``log q(z|x) = sum_j (-0.5 log 2pi - 0.5 logvar_j - 0.5 eps_j^2)``
            and ``log p(z) = sum_j (-0.5 log 2pi - 0.5 z_j^2)``, shaped like z without J, for
            importance weighting (:func:`importance_weighted_bound`).

    Returns:
        ``(z, kl)`` with kl of shape ``batch``, or ``(z, kl, log_q, log_p)``.
    """
    return _sample(mu, logvar, samples, eps, generator, return_log_weights, with_kl=True)


def _sample(
    mu: Tensor,
    logvar: Tensor,
    samples: int,
    eps: Tensor | None,
    generator: torch.Generator | None,
    return_log_weights: bool,
    with_kl: bool,
) -> tuple[Tensor, ...]:
    """Body of :func:`reparameterize_kl`, and of :func:`reparameterize` (which wants no KL) on the
    reference path."""
    _check_latents(mu, logvar, samples, eps)
    sample_shape = () if samples == 1 else (samples,)
    if _use_reference(mu):
        if eps is None:
            eps = torch.randn((*sample_shape, *mu.shape), dtype=mu.dtype, device=mu.device, generator=generator)
        # as the kernels: in float32 for half inputs, z rounded once, the sums kept in float32
        mu32, logvar32, eps32 = (upcast_half(t) for t in (mu, logvar, eps.reshape(*sample_shape, *mu.shape)))
        z32 = reference.reparameterize(mu32, logvar32, eps32)
        z = z32.to(mu.dtype)
        kl = reference.gaussian_kl(mu32, logvar32) if with_kl else mu32.new_empty(0)
        if not return_log_weights:
            return z, kl
        return z, kl, reference.log_q(logvar32, eps32), reference.log_p(z32)

    seed = seeds.draw(generator, mu) if eps is None else None
    z, kl, log_q, log_p = ops.reparameterize_kl(mu, logvar, seed, eps, samples, return_log_weights, with_kl)
    return (z, kl, log_q, log_p) if return_log_weights else (z, kl)


def reparameterize(
    mu: Tensor,
    logvar: Tensor,
    *,
    samples: int = 1,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``z = mu + exp(0.5 * logvar) * eps`` (eq. 4, Sec. 2.4); see :func:`reparameterize_kl`.

    Gradients: ``dz/dmu = 1``, ``dz/dlogvar = 0.5 * eps * exp(0.5 * logvar)``. Computes no KL
    (use :func:`reparameterize_kl` for both in one pass).
    """
    _check_latents(mu, logvar, samples, eps)
    if _use_reference(mu):
        return _sample(mu, logvar, samples, eps, generator, return_log_weights=False, with_kl=False)[0]
    # with torch's default CPU generator, ops draws the seed where the call runs (the C++ node itself)
    seed = None if eps is not None or (generator is None and not mu.is_cuda) else seeds.draw(generator, mu)
    return ops.reparameterize(mu, logvar, seed, eps, samples)


def gaussian_kl(mu: Tensor, logvar: Tensor, reduction: str = "sum") -> Tensor:
    """Analytic ``KL(N(mu, exp(logvar)) || N(0, I)) = 0.5 * sum_j (mu^2 + exp(logvar) - 1 - logvar)``
    (Appendix B; eq. 10 is ``-KL + mean_l log p(x|z_l)``), summed over the last dimension.

    ``reduction``: ``'none'`` one value per datapoint (shape ``mu.shape[:-1]``), ``'sum'`` the total
    (the classic example's ``KLD``), ``'mean'`` the mean over datapoints.
    Gradients: ``dKL/dmu = mu``, ``dKL/dlogvar = 0.5 * (exp(logvar) - 1)``.
    """
    reduction = check.reduction(reduction)
    if torch._C._is_any_autocast_enabled():  # float32 under autocast, as torch's losses (ops.autocast)
        mu, logvar = autocast.to_float32(mu, logvar)  # type: ignore[assignment]
    _check_latents(mu, logvar, 1, None)
    if _use_reference(mu):
        return _reduce_reference(reference.gaussian_kl(upcast_half(mu), upcast_half(logvar)), reduction)
    batch, latent = tuple(mu.shape[:-1]), mu.shape[-1]
    rows = math.prod(batch)
    reduce, scale = _row_reduction(reduction, rows)
    kl = ops.gaussian_kl(
        mu.reshape(rows, latent),
        logvar.reshape(rows, latent),
        reduce,
        scale,
        _wants_grad_in_forward(reduce, mu, logvar),
    )
    return kl.reshape(batch) if reduce == "rows" else kl


# --- decoder log-likelihoods ------------------------------------------------------------------


def _check_bernoulli(output_name: str, output: Tensor, x_name: str, x: Tensor) -> tuple[tuple[int, ...], int]:
    check.floating(output_name, output)
    check.target(x_name, x)
    check.same_device(output_name, output, **{x_name: x})
    return check.decoder_rows(output_name, output, x_name, x)


def _differentiable_target(x: Tensor, like: Tensor) -> tuple[Tensor, bool]:
    """``(x, target_grad)``: a target that needs a gradient is brought to ``like``'s dtype here,
    where autograd records the cast, so the kernels return its gradient in one dtype."""
    if not check.differentiable(x):
        return x, False
    return (x if x.dtype == like.dtype else x.to(like.dtype)), True


def _bernoulli(op, reference_rows, output_name: str, output: Tensor, x: Tensor, reduction: str) -> Tensor:
    """Shared body of the two Bernoulli log-likelihoods (from logits, from probabilities)."""
    reduction = check.reduction(reduction)
    if torch._C._is_any_autocast_enabled():  # float32 under autocast, as torch's losses (ops.autocast)
        output, x = autocast.to_float32(output, x)  # type: ignore[assignment]
    row_shape, event = _check_bernoulli(output_name, output, "x", x)
    if _use_reference(output):
        _check_reference_range("target", x)
        if output_name == "probs":
            _check_reference_range("input", output)
        rows_view = reference_rows(upcast_half(output).reshape(*row_shape, event), x.reshape(x.shape[0], event))
        return _reduce_reference(rows_view, reduction)
    rows = math.prod(row_shape)
    reduce, scale = _row_reduction(reduction, rows)
    x, target_grad = _differentiable_target(x, output)
    ll = op(
        output.reshape(rows, event),
        x.reshape(x.shape[0], event),
        reduce,
        scale,
        _wants_grad_in_forward(reduce, output, x),
        target_grad=target_grad,
    )
    return ll.reshape(row_shape) if reduce == "rows" else ll


def bernoulli_log_likelihood(logits: Tensor, x: Tensor, reduction: str = "none") -> Tensor:
    """Bernoulli decoder log-likelihood from logits (Appendix C.1):
    ``log p(x|z) = sum_d (x_d * l_d - softplus(l_d))``, softplus computed stably.

    Args:
        logits: ``(*samples, B, *event)`` decoder logits.
        x: ``(B, *event)`` targets: float in [0, 1], uint8 or bool (0/1). Values outside [0, 1]
            raise ``ValueError`` (checked by the kernel in its single pass).
        reduction: ``'none'`` one value per datapoint (shape ``(*samples, B)``), ``'sum'``, or
            ``'mean'`` over datapoints.

    Gradients: ``d/dl = x - sigmoid(l)``; ``d/dx = l`` when ``x`` requires grad (summed over
    sample dimensions).
    """
    return _bernoulli(ops.bernoulli_logits_ll, reference.bernoulli_log_likelihood, "logits", logits, x, reduction)


def bernoulli_probs_log_likelihood(probs: Tensor, x: Tensor, reduction: str = "none") -> Tensor:
    """Bernoulli decoder log-likelihood from probabilities, exactly ``-F.binary_cross_entropy``:
    ``log p(x|z) = sum_d (x_d * max(log p_d, -100) + (1 - x_d) * max(log(1 - p_d), -100))``.

    Shapes and ``reduction`` as :func:`bernoulli_log_likelihood`. Gradients as torch's:
    ``d/dp = (x - p) / max(p * (1 - p), 1e-12)``, and ``d/dx = logit(p) = log(p / (1 - p))`` when ``x``
    requires grad (unclamped, as torch's ``binary_cross_entropy`` target gradient).
    """
    return _bernoulli(ops.bernoulli_probs_ll, reference.bernoulli_probs_log_likelihood, "probs", probs, x, reduction)


def gaussian_log_likelihood(x: Tensor, mean: Tensor, logvar: Tensor, reduction: str = "none") -> Tensor:
    """Gaussian decoder log-likelihood (Appendix C.2):
    ``log p(x|z) = -0.5 * sum_d (log(2*pi) + v_d + (x_d - m_d)^2 * exp(-v_d))``.

    Args:
        x: ``(B, *event)`` data.
        mean: ``(*samples, B, *event)`` decoder means.
        logvar: per-element log-variances of ``mean``'s shape, or one shared log-variance
            (any tensor with a single element, e.g. a learned scalar parameter).
        reduction: ``'none'`` one value per datapoint (shape ``(*samples, B)``), ``'sum'``, or
            ``'mean'`` over datapoints.

    Gradients: ``d/dm = (x - m) * exp(-v)``, ``d/dv = -0.5 * (1 - (x - m)^2 * exp(-v))``, and
    ``d/dx = -(x - m) * exp(-v)`` when ``x`` requires grad (summed over sample dimensions).
    """
    reduction = check.reduction(reduction)
    if torch._C._is_any_autocast_enabled():  # float32 under autocast, as torch's losses (ops.autocast)
        x, mean, logvar = autocast.to_float32(x, mean, logvar)  # type: ignore[assignment]
    check.floating("x", x)
    check.floating("mean", mean)
    check.floating("logvar", logvar)
    check.same_device("mean", mean, x=x, logvar=logvar)
    check.same_float_dtype("mean", mean, logvar=logvar)
    shared = logvar.numel() == 1
    if not shared:
        check.same_shape("mean", mean, logvar=logvar)
    row_shape, event = check.decoder_rows("mean", mean, "x", x)
    if _use_reference(mean):
        x, mean, logvar = (upcast_half(t) for t in (x, mean, logvar))
        per_row = reference.gaussian_log_likelihood(
            x.reshape(x.shape[0], event),
            mean.reshape(*row_shape, event),
            logvar if shared else logvar.reshape(*row_shape, event),
        )
        return _reduce_reference(per_row, reduction)
    rows = math.prod(row_shape)
    reduce, scale = _row_reduction(reduction, rows)
    x, target_grad = _differentiable_target(x, mean)
    ll = ops.gaussian_ll(
        x.reshape(x.shape[0], event),
        mean.reshape(rows, event),
        logvar.reshape(1) if shared else logvar.reshape(rows, event),
        reduce,
        scale,
        _wants_grad_in_forward(reduce, mean, logvar, x),
        target_grad=target_grad,
    )
    return ll.reshape(row_shape) if reduce == "rows" else ll


# --- drop-ins for torch.nn.functional ---------------------------------------------------------


def _drop_in_reduction(size_average, reduce, reduction: str) -> str:
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    return check.reduction(reduction)


def _factor_rows(t: Tensor, shape: torch.Size, rows: int, event: int, dtype: torch.dtype) -> Tensor:
    """``weight`` / ``pos_weight`` broadcast to ``shape`` as ``(rows, event)`` without a copy where the
    broadcast allows it (one value, per element, per row or per column: strides (r, 0 or 1), which
    the kernels read directly); any other broadcast (e.g. ``(C, 1, 1)`` over ``(N, C, H, W)``) is
    expanded to the input's size first."""
    wide = (t if t.dtype == dtype else t.to(dtype)).expand(shape)
    try:
        view = wide.view(rows, event)
    except RuntimeError:
        return wide.reshape(rows, event)  # a copy
    return view if event <= 1 or view.stride(1) in (0, 1) else view.contiguous()


def _bce(op, torch_loss, input: Tensor, target: Tensor, reduction: str, **factors: Tensor | None) -> Tensor:
    """Shared body of the two drop-ins: the Bernoulli kernels with scale -1 (or -1/numel);
    ``factors``: ``weight`` (both) and ``pos_weight`` (with logits), each ``None`` or broadcast to ``input``."""
    if torch._C._is_any_autocast_enabled():  # torch's autocast rules for the two (ops.autocast)
        if torch_loss is F.binary_cross_entropy:
            autocast.check_bce_allowed(input)
        input, target = autocast.to_float32(input, target)  # type: ignore[assignment]
    check.floating("input", input)
    check.target("target", target)
    check.same_device("input", input, target=target)
    if target.shape != input.shape:
        raise ValueError(f"target size {tuple(target.shape)} must be the same as input size {tuple(input.shape)}")
    given = {name: t for name, t in factors.items() if t is not None}  # usually none: nothing to do
    for name, t in given.items():
        check.broadcast_factor(name, t, input)
    if _use_reference(input):
        _check_reference_range("target", target)
        if torch_loss is F.binary_cross_entropy:
            _check_reference_range("input", input)
        wide = upcast_half(input)  # sums in float32 for half inputs; elementwise losses keep the dtype
        loss = torch_loss(wide, target.to(wide.dtype), reduction=reduction, **given)
        return loss.to(input.dtype) if reduction == "none" else loss
    rows = input.shape[0] if input.dim() else 1
    event = math.prod(input.shape[1:])
    if reduction == "none":
        reduce, scale = "elements", -1.0
    else:
        numel = input.numel()
        reduce, scale = "total", -1.0 if reduction == "sum" else (-1.0 / numel if numel else math.nan)
    target, target_grad = _differentiable_target(target, input)
    factor_dtype = upcast_half(input).dtype  # the kernels' accumulation dtype on every device
    loss = op(
        input.reshape(rows, event),
        target.reshape(rows, event),
        reduce,
        scale,
        _wants_grad_in_forward(reduce, input, target),
        target_grad=target_grad,
        **{name: _factor_rows(t, input.shape, rows, event, factor_dtype) for name, t in given.items()},
    )
    return loss.reshape(input.shape) if reduce == "elements" else loss


def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Drop-in for ``torch.nn.functional.binary_cross_entropy`` (same signature and reductions):
    ``loss = -w * (x * max(log p, -100) + (1 - x) * max(log(1 - p), -100))``, the negated
    Bernoulli log-likelihood of Appendix C.1 times ``weight`` w (1 when None), with torch's
    gradients ``d/dp = w * (p - x) / max(p * (1 - p), 1e-12)`` and, when ``target`` requires grad,
    ``d/dx = -w * logit(p)``.

    ``reduction``: ``'none'`` elementwise, ``'sum'``, ``'mean'`` over all elements. ``weight``:
    any real tensor that broadcasts to ``input``'s shape (not differentiated, as torch's).
    Probabilities or targets outside [0, 1] raise ``ValueError``; NaN probabilities give NaN
    (torch raises instead).
    """
    reduction = _drop_in_reduction(size_average, reduce, reduction)
    return _bce(ops.bernoulli_probs_ll, F.binary_cross_entropy, input, target, reduction, weight=weight)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    """Drop-in for ``torch.nn.functional.binary_cross_entropy_with_logits`` (same signature and
    reductions): ``loss = w * (softplus(l) - x * l)``, the negated Bernoulli log-likelihood of
    Appendix C.1 times ``weight`` w, gradients ``d/dl = w * (sigmoid(l) - x)``, ``d/dx = -w * l``.
    With ``pos_weight`` q, torch's form: ``loss = w * ((1 - x) l - (1 + (q - 1) x) logsigmoid(l))``,
    ``d/dl = w * ((q x + 1 - x) sigmoid(l) - q x)``, ``d/dx = w * (logsigmoid(-l) - q logsigmoid(l))``.

    ``reduction``: ``'none'`` elementwise, ``'sum'``, ``'mean'`` over all elements. ``weight`` and
    ``pos_weight`` (one value per class, broadcast over the last dimension): real tensors that
    broadcast to ``input``'s shape, not differentiated (as torch's). Targets may be float, uint8 or
    bool; values outside [0, 1] raise ``ValueError``.
    """
    reduction = _drop_in_reduction(size_average, reduce, reduction)
    return _bce(
        ops.bernoulli_logits_ll,
        F.binary_cross_entropy_with_logits,
        input,
        target,
        reduction,
        weight=weight,
        pos_weight=pos_weight,
    )


# --- the whole SGVB loss of a training step -----------------------------------------------------

LIKELIHOODS = ("bernoulli", "bernoulli_probs", "gaussian")
ESTIMATORS = ("analytic", "generic")
_KERNEL_LIKELIHOOD = {"bernoulli": "bernoulli_logits", "bernoulli_probs": "bernoulli_probs", "gaussian": "gaussian"}


def _decoder_log_likelihood(
    likelihood: str, recon: Tensor, x: Tensor, decoder_logvar: Tensor | None, reduction: str
) -> Tensor:
    if likelihood == "bernoulli":
        return bernoulli_log_likelihood(recon, x, reduction)
    if likelihood == "bernoulli_probs":
        return bernoulli_probs_log_likelihood(recon, x, reduction)
    logvar = recon.new_zeros(()) if decoder_logvar is None else decoder_logvar
    return gaussian_log_likelihood(x.to(recon.dtype), recon, logvar, reduction)


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
        and _common_latents(mu, logvar)
        and recon.dtype.is_floating_point
        and (x.dtype.is_floating_point or x.dtype in check.TARGET_DTYPES)
        and mu.dim() == 2  # type: ignore[attr-defined]
        and x.dim() >= 2
        and mu.shape[0] == x.shape[0]  # type: ignore[attr-defined]
        and recon.device == x.device == mu.device  # type: ignore[attr-defined]
        and not (x.requires_grad and torch.is_grad_enabled())
        and not torch._C._is_any_autocast_enabled()
        and not _use_reference(recon)
    ):
        return 0
    if recon.dim() == 2:
        return 1 if recon.shape[0] == x.shape[0] and recon.numel() == x.numel() else 0
    return recon.shape[0] if recon.dim() == 3 and recon.shape[1:] == x.shape else 0


def sgvb_loss(
    recon: Tensor,
    x: Tensor,
    mu: Tensor | None = None,
    logvar: Tensor | None = None,
    *,
    likelihood: str,
    reduction: str = "sum",
    decoder_logvar: Tensor | None = None,
    estimator: str = "analytic",
    log_q: Tensor | None = None,
    log_p: Tensor | None = None,
) -> Tensor:
    """Negative SGVB estimate of the ELBO: the loss of one AEVB step (Algorithm 1).

    ``estimator='analytic'`` is estimator B, eq. (7) (eq. 10 for Gaussians):
    ``KL(q(z|x) || p(z)) - mean_l log p(x|z_l)`` with the KL of Appendix B from ``mu``, ``logvar``.
    ``estimator='generic'`` is estimator A, eq. (6): ``-mean_l (log p(x|z_l) + log p(z_l) - log q(z_l|x))``
    from ``log_q``, ``log_p`` of :func:`reparameterize_kl` (``return_log_weights=True``), for
    encoders whose KL has no closed form; both are unbiased for the same bound.

    Args:
        recon: the decoder output for z: ``x``'s shape or ``(B, D)`` rows, optionally with leading
            sample dimensions ``(*L, ...)`` (the log-likelihood is then averaged over them).
            Logits for ``likelihood='bernoulli'``, probabilities for ``'bernoulli_probs'``, means for
            ``'gaussian'``.
        x: ``(B, ...)`` data (targets in [0, 1], uint8 or bool for the Bernoulli decoders).
        mu, logvar: ``(B, J)`` encoder outputs (analytic estimator).
        likelihood: the decoder of Appendix C; no default, so probabilities are never read as logits.
        reduction: ``'sum'`` over datapoints (the classic example), ``'mean'`` over datapoints, or
            ``'none'`` for one value per datapoint.
        decoder_logvar: Gaussian decoder log-variance, ``recon``'s shape or one shared value
            (default 0: unit variance).
        log_q, log_p: ``(*L, B)`` log-weights (generic estimator).

    With a scalar reduction and a fused backend, the whole loss (KL, decoder log-likelihood and all
    their gradients) is one kernel call.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    reduction = check.reduction(reduction)
    bernoulli_step = likelihood != "gaussian" and estimator == "analytic" and reduction != "none"
    if bernoulli_step and decoder_logvar is None and mu is not None and logvar is not None:
        samples = _training_step_samples(recon, x, mu, logvar)
        if samples:  # the common call, which every check below passes
            _, row_scale = _row_reduction(reduction, x.shape[0])  # 1 for "sum", 1/B for "mean"
            with_grad = torch.is_grad_enabled() and (recon.requires_grad or mu.requires_grad or logvar.requires_grad)
            return ops.sgvb_loss(
                recon, x, None, mu, logvar, _KERNEL_LIKELIHOOD[likelihood], row_scale, row_scale / samples, with_grad
            )
    if torch._C._is_any_autocast_enabled():  # float32 under autocast, as torch's losses (ops.autocast)
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
    _check_latents(mu, logvar, 1, None)
    check.same_device("recon", recon, x=x, mu=mu)
    if tuple(mu.shape[:-1]) != (batch,):
        raise ValueError(f"mu of shape {tuple(mu.shape)} must be (B, J) with B = {batch}, the batch of x")
    # per datapoint, then reduced (also when x needs a gradient: the fused loss gives none)
    if reduction == "none" or _use_reference(recon) or check.differentiable(x):
        log_px = _decoder_log_likelihood(likelihood, recon, x, decoder_logvar, "none")
        per_datapoint = gaussian_kl(mu, logvar, "none") - log_px.reshape(samples, batch).mean(0)
        return _reduce_reference(per_datapoint, reduction)

    # One fused call: kl_scale * sum KL - ll_scale * sum log p(x|z).
    if likelihood == "gaussian":
        check.floating("x", x)
    else:
        check.target("x", x)
    _, row_scale = _row_reduction(reduction, batch)  # 1 for "sum", 1/B for "mean"
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
        _KERNEL_LIKELIHOOD[likelihood],
        row_scale,
        row_scale / samples,
        _wants_grad_in_forward("total", *grad_from),
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
    return _reduce_reference(per_datapoint, reduction)
