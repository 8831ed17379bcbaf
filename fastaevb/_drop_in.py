"""The bodies of the drop-ins for ``torch.nn.functional.binary_cross_entropy`` and
``binary_cross_entropy_with_logits``: torch's legacy ``size_average`` / ``reduce`` arguments,
torch's reductions (``'none'`` elementwise, ``'mean'`` over elements), ``weight`` / ``pos_weight``
broadcasting, torch's autocast rules; the Bernoulli ops with scale -1 (or -1/numel)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _torch_private as private
from . import _validation as check
from . import ops
from ._dtypes import value_dtype
from ._latents import wants_grad_in_forward
from ._likelihoods import differentiable_target
from .ops import autocast


def legacy_reduction(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    """torch's ``size_average`` / ``reduce`` (deprecated, still accepted by torch) over ``reduction``."""
    if size_average is not None or reduce is not None:
        reduction = private.legacy_get_string(size_average, reduce)
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


def bce(
    name: str, input: Tensor, target: Tensor, reduction: str, weight: Tensor | None, pos_weight: Tensor | None = None
) -> Tensor:
    """Either drop-in: op ``name`` is ``bernoulli_probs_log_likelihood`` (``binary_cross_entropy``,
    no ``pos_weight``) or ``bernoulli_log_likelihood`` (``..._with_logits``)."""
    probs = name == "bernoulli_probs_log_likelihood"
    if private.autocast_enabled():  # torch's autocast rules for the two (ops.autocast)
        if probs:
            autocast.check_bce_allowed(input)
        input, target = autocast.to_float32(input, target)  # type: ignore[assignment]
    check.floating("input", input)
    check.target("target", target)
    check.same_device("input", input, target=target)
    if target.shape != input.shape:
        raise ValueError(f"target size {tuple(target.shape)} must be the same as input size {tuple(input.shape)}")
    check.broadcast_factor("weight", weight, input)
    check.broadcast_factor("pos_weight", pos_weight, input)
    rows = input.shape[0] if input.dim() else 1
    event = math.prod(input.shape[1:])
    if reduction == "none":
        op_reduction, scale = "none", -1.0
    else:
        numel = input.numel()
        op_reduction, scale = "sum", -1.0 if reduction == "sum" else (-1.0 / numel if numel else math.nan)
    target, target_grad = differentiable_target(target, input)
    dtype = value_dtype(input.dtype)  # the kernels' accumulation dtype on every device
    factors = [None if t is None else _factor_rows(t, input.shape, rows, event, dtype) for t in (weight, pos_weight)]
    loss = ops.loss(
        name,
        input.reshape(rows, event),
        target.reshape(rows, event),
        *factors[: 1 if probs else 2],
        op_reduction,
        scale,
        wants_grad_in_forward(op_reduction, input, target),
        target_grad,
    )
    return loss.reshape(input.shape) if op_reduction == "none" else loss
