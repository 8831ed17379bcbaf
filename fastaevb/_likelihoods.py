"""The decoder log-likelihoods behind ``functional``: checks, flattening to rows, the op call."""

from __future__ import annotations

import math

from torch import Tensor

from . import _torch_private as private
from . import _validation as check
from . import ops
from ._latents import row_reduction, wants_grad_in_forward
from .ops import as_rows, autocast


def differentiable_target(x: Tensor, like: Tensor) -> tuple[Tensor, bool]:
    """``(x, target_grad)``: a target that needs a gradient is brought to ``like``'s dtype here,
    where autograd records the cast, so the kernels return its gradient in one dtype."""
    if not check.differentiable(x):
        return x, False
    return (x if x.dtype == like.dtype else x.to(like.dtype)), True


def bernoulli(name: str, output_name: str, output: Tensor, x: Tensor, reduction: str) -> Tensor:
    """Either Bernoulli log-likelihood (op ``name``: from logits or from probabilities)."""
    reduction = check.reduction(reduction)
    if private.autocast_enabled():  # float32 under autocast, as torch's losses (ops.autocast)
        output, x = autocast.to_float32(output, x)  # type: ignore[assignment]
    check.floating(output_name, output)
    check.target("x", x)
    check.same_device(output_name, output, x=x)
    row_shape, event = check.decoder_rows(output_name, output, "x", x)
    rows = math.prod(row_shape)
    op_reduction, scale = row_reduction(reduction, rows)
    x, target_grad = differentiable_target(x, output)
    with_grad = wants_grad_in_forward(op_reduction, output, x)
    factors = (None, None) if name == "bernoulli_log_likelihood" else (None,)  # weight (, pos_weight)
    ll = ops.loss(
        name,
        as_rows(output, rows, event),
        as_rows(x, x.shape[0], event),
        *factors,
        op_reduction,
        scale,
        with_grad,
        target_grad,
    )
    return ll.reshape(row_shape) if op_reduction == "rows" else ll


def gaussian(x: Tensor, mean: Tensor, logvar: Tensor, reduction: str) -> Tensor:
    return location_scale("gaussian_log_likelihood", x, mean, "logvar", logvar, reduction)


def error(x: Tensor, mean: Tensor, log_scale: Tensor | None, power: int, reduction: str) -> Tensor:
    if power not in (1, 2):
        raise ValueError(f"power must be 2 (squared error, F.mse_loss) or 1 (absolute error, F.l1_loss), got {power!r}")
    if log_scale is None:
        log_scale = check.floating("mean", mean).new_zeros(1)  # s = 0: the plain errors of F.mse_loss / F.l1_loss
    return location_scale("error_log_likelihood", x, mean, "log_scale", log_scale, reduction, power)


def location_scale(
    name: str, x: Tensor, mean: Tensor, scale_name: str, log_scale: Tensor, reduction: str, *extra: int
) -> Tensor:
    """A decoder of ``x`` with location ``mean`` and a log-scale per element or shared (op ``name``:
    the Gaussian's log-variance, the error decoders' log-scale)."""
    reduction = check.reduction(reduction)
    if private.autocast_enabled():  # float32 under autocast, as torch's losses (ops.autocast)
        x, mean, log_scale = autocast.to_float32(x, mean, log_scale)  # type: ignore[assignment]
    check.floating("x", x)
    check.floating("mean", mean)
    check.floating(scale_name, log_scale)
    check.same_device("mean", mean, x=x, **{scale_name: log_scale})
    check.same_float_dtype("mean", mean, **{scale_name: log_scale})
    shared = log_scale.numel() == 1
    if not shared:
        check.same_shape("mean", mean, **{scale_name: log_scale})
    row_shape, event = check.decoder_rows("mean", mean, "x", x)
    rows = math.prod(row_shape)
    op_reduction, scale = row_reduction(reduction, rows)
    x, target_grad = differentiable_target(x, mean)
    x_rows, mean_rows = as_rows(x, x.shape[0], event), as_rows(mean, rows, event)
    if target_grad:
        # d/dx = -d/dm: the op differentiates mean only, so x enters through mean - (x - x.detach()),
        # which is mean exactly (x - x is 0), and autograd sums -d/dm over the samples of each row
        shift = (x_rows - x_rows.detach()).expand(rows // max(x.shape[0], 1), *x_rows.shape).reshape(rows, event)
        mean_rows, x_rows = mean_rows - shift, x_rows.detach()
    ll = ops.loss(
        name,
        x_rows,
        mean_rows,
        log_scale.reshape(1) if shared else as_rows(log_scale, rows, event),
        op_reduction,
        scale,
        wants_grad_in_forward(op_reduction, mean_rows, log_scale),
        *extra,
    )
    return ll.reshape(row_shape) if op_reduction == "rows" else ll
