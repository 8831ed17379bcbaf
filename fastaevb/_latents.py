"""The latent-space functions behind ``functional``: checks, flattening to rows, the op call.

Shapes, dtypes and devices are checked here before any work (errors name the argument); the
kernels run through ``ops``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _torch_private as private
from . import _validation as check
from . import ops
from ._memory import gradients_in_forward
from .ops import as_rows, autocast, seeds


def wants_grad_in_forward(reduction: str, *tensors: Tensor | None) -> bool:
    """A scalar loss whose gradient autograd will want: the kernels write it in the forward pass
    (outside :func:`fastaevb.low_memory`)."""
    return (
        reduction == "sum"
        and gradients_in_forward()
        and torch.is_grad_enabled()
        and any(t is not None and t.requires_grad for t in tensors)
    )


def row_reduction(reduction: str, rows: int) -> tuple[str, float]:
    """The op's reduction and scale for a per-datapoint quantity and a public ``reduction``."""
    if reduction == "none":
        return "rows", 1.0
    if reduction == "sum":
        return "sum", 1.0
    return "sum", 1.0 / rows if rows else math.nan


def common_latents(mu: object, logvar: object) -> bool:
    """The latents of a training step, which every check of :func:`check_latents` passes: tensors
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


def check_latents(mu: Tensor, logvar: Tensor, samples: int, eps: Tensor | None) -> None:
    if eps is None and type(samples) is int and samples == 1 and common_latents(mu, logvar):
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


def latent_split(mu: Tensor, latent_dims: int | None) -> tuple[tuple[int, ...], int]:
    """``(batch shape, J)``: the trailing ``latent_dims`` dimensions of ``mu`` are one datapoint's
    latents. Without it, ``(J,)`` and ``(B, J)`` are clear, and more dimensions are refused: ``(B,
    C, h, w)`` feature maps and ``(L, B, J)`` samples look alike, and summing the wrong dimensions
    would be a silently wrong KL."""
    if latent_dims is None:
        if mu.dim() > 2:
            raise ValueError(
                f"mu of shape {tuple(mu.shape)} is ambiguous: pass latent_dims={mu.dim() - 1} for feature-map "
                f"latents (one KL per datapoint over dims 1..{mu.dim() - 1}) or latent_dims=1 for (*batch, J) "
                f"latents (one KL per {tuple(mu.shape[:-1])})"
            )
        latent_dims = 1
    if isinstance(latent_dims, bool) or not isinstance(latent_dims, int) or not 1 <= latent_dims <= mu.dim():
        raise ValueError(f"latent_dims must be an int in [1, {mu.dim()}] for mu of shape {tuple(mu.shape)}")
    batch = tuple(mu.shape[: mu.dim() - latent_dims])
    return batch, math.prod(mu.shape[mu.dim() - latent_dims :])


def reparameterize_kl(
    mu: Tensor,
    logvar: Tensor,
    samples: int,
    eps: Tensor | None,
    generator: torch.Generator | None,
    return_log_weights: bool,
    latent_dims: int | None = None,
) -> tuple[Tensor, ...]:
    check_latents(mu, logvar, samples, eps)
    shape = tuple(mu.shape)
    batch, latent = latent_split(mu, latent_dims)
    grouped = len(batch) + 1 != mu.dim()  # feature maps: their latents as one J per datapoint
    if grouped:
        mu, logvar = mu.reshape(*batch, latent), logvar.reshape(*batch, latent)
        eps = None if eps is None else eps.reshape(*eps.shape[: eps.dim() - len(shape)], *batch, latent)
    seed = seeds.draw(generator, mu) if eps is None else None
    z, kl, log_q, log_p = ops.reparameterize_kl(mu, logvar, eps, seed, samples, return_log_weights, True)
    if grouped:
        z = z.reshape(shape if samples == 1 else (samples, *shape))
    return (z, kl, log_q, log_p) if return_log_weights else (z, kl)


def reparameterize(
    mu: Tensor, logvar: Tensor, samples: int, eps: Tensor | None, generator: torch.Generator | None
) -> Tensor:
    check_latents(mu, logvar, samples, eps)
    # with torch's default CPU generator, ops draws the seed where the call runs (the C++ node itself)
    seed = None if eps is not None or (generator is None and not mu.is_cuda) else seeds.draw(generator, mu)
    return ops.reparameterize(mu, logvar, eps, seed, samples)


def gaussian_kl(mu: Tensor, logvar: Tensor, reduction: str, latent_dims: int | None = None) -> Tensor:
    reduction = check.reduction(reduction)
    if private.autocast_enabled():  # float32 under autocast, as torch's losses (ops.autocast)
        mu, logvar = autocast.to_float32(mu, logvar)  # type: ignore[assignment]
    check_latents(mu, logvar, 1, None)
    batch, latent = latent_split(mu, latent_dims)
    rows = math.prod(batch)
    op_reduction, scale = row_reduction(reduction, rows)
    kl = ops.loss(
        "gaussian_kl",
        as_rows(mu, rows, latent),
        as_rows(logvar, rows, latent),
        op_reduction,
        scale,
        wants_grad_in_forward(op_reduction, mu, logvar),
    )
    return kl.reshape(batch) if op_reduction == "rows" else kl
