"""Argument checks run before any work: metadata only (shape, dtype, device), never tensor values.

Value checks (targets in [0, 1]) happen inside the kernels, see ``_errors.check_range``.
Every message names the argument at fault.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TARGET_DTYPES = (torch.uint8, torch.bool)


def reduction(value: object, allowed: tuple[str, ...] = ("none", "mean", "sum")) -> str:
    if value not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {value!r}")
    return value  # narrowed to str by the test against allowed


def weight(name: str, value: float) -> float:
    """A loss weight (a KL weight, a reconstruction weight): a finite number >= 0."""
    if not (0.0 <= value < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def floating(name: str, t: object) -> Tensor:
    """``t`` must be a real floating-point tensor."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
    return t


def target(name: str, t: object) -> Tensor:
    """Bernoulli targets: floating point, uint8 or bool."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not (t.dtype.is_floating_point or t.dtype in TARGET_DTYPES):
        raise TypeError(f"{name} must be floating point, uint8 or bool, got {t.dtype}")
    return t


def same_device(reference_name: str, reference: Tensor, **others: Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != reference.device:
            raise ValueError(
                f"{name} is on {t.device} but {reference_name} is on {reference.device}; "
                "all tensors must be on one device"
            )


def same_shape(reference_name: str, reference: Tensor, **others: Tensor) -> None:
    for name, t in others.items():
        if t.shape != reference.shape:
            raise ValueError(
                f"{name} must have the shape of {reference_name} {tuple(reference.shape)}, got {tuple(t.shape)}"
            )


def same_float_dtype(reference_name: str, reference: Tensor, **others: Tensor) -> None:
    for name, t in others.items():
        if t.dtype != reference.dtype:
            raise TypeError(f"{name} must have the dtype of {reference_name} ({reference.dtype}), got {t.dtype}")


def not_requiring_grad(name: str, t: Tensor, why: str = "fastaevb does not differentiate with respect to it") -> None:
    if t.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name} must not require grad: {why}")


def differentiable(t: Tensor) -> bool:
    """Whether autograd wants a gradient for ``t`` in this call."""
    return t.requires_grad and torch.is_grad_enabled()


# Why a weight argument of the BCE drop-ins does not broadcast, as users meet it.
_FACTOR_HINTS = {
    "weight": "weight rescales each element's loss: the input's shape, (C,) per class for input (N, C), "
    "(N, 1) per sample, or one value",
    "pos_weight": "pos_weight holds one weight per class for the positive targets: (C,) for input (..., C)",
}


def broadcast_factor(name: str, t: object, input: Tensor) -> Tensor | None:
    """``weight`` / ``pos_weight`` of the BCE drop-ins, as torch takes them: ``None``, or a real
    tensor on ``input``'s device that broadcasts to ``input``'s shape (torch does not
    differentiate with respect to either)."""
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if t.is_complex():
        raise TypeError(f"{name} must be real (floating point, integer or bool), got {t.dtype}")
    same_device("input", input, **{name: t})
    try:
        fits = torch.broadcast_shapes(t.shape, input.shape) == input.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"{name} of shape {tuple(t.shape)} does not broadcast to input's shape {tuple(input.shape)}. "
            f"Likely cause: {_FACTOR_HINTS[name]}"
        )
    not_requiring_grad(name, t, "torch does not differentiate binary cross-entropy with respect to it either")
    return t


def decoder_rows(output_name: str, output: Tensor, x_name: str, x: Tensor) -> tuple[tuple[int, ...], int]:
    """Check that ``output`` is ``(*sample, *x.shape)`` or ``(*sample, B, D)`` for data ``x`` of shape
    ``(B, *event)`` with ``D = prod(event)`` (a decoder's flat rows, as the classic example's
    ``recon_x`` of shape ``(B, 784)`` for images ``(B, 1, 28, 28)``). Anything else raises, showing
    both shapes: no silent reshape pairs the wrong elements.

    Returns the row shape ``(*sample, B)`` (one value per datapoint and sample) and the
    event size ``D`` (the number of elements summed per row).
    """
    if x.dim() == 0:
        raise ValueError(f"{x_name} must have at least one dimension (the batch)")
    batch, event = x.shape[0], math.prod(x.shape[1:])
    lead = output.dim() - x.dim()
    if lead >= 0 and tuple(output.shape[lead:]) == tuple(x.shape):
        return tuple(output.shape[: lead + 1]), event
    if x.dim() > 2 and output.dim() >= 2 and tuple(output.shape[-2:]) == (batch, event):
        return tuple(output.shape[:-1]), event
    raise ValueError(
        f"{output_name} of shape {tuple(output.shape)} does not match {x_name} of shape {tuple(x.shape)}: "
        f"{output_name} must have {x_name}'s shape or ({batch}, {event}) (its rows), optionally with leading "
        f"sample dimensions"
    )
