"""Kernel calls shared by the two call paths (the eager ``autograd.Function`` path of
``ops.eager`` and the ``torch.library`` custom ops of ``ops.custom``): pick the backend's kernel
module for the device, bring tensors to a dtype it computes in, call, cast back: gradients and
elementwise outputs to the input dtype, summed values to ``_dtypes.value_dtype`` of it (float32
for half inputs).

Shapes (validated and flattened by ``functional``): decoder outputs ``(R, D)``, data ``(B, D)``
with ``R % B == 0``, latents ``(R, J)``. The backend contract is ``docs/backends.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import torch
from torch import Tensor

from .. import backends
from .._dtypes import HALF, value_dtype


def kernels_for(device: torch.device) -> ModuleType:
    name = backends.resolve(device)
    if name == "torch":  # an op called directly under use_backend("torch")
        name = backends.kernel_backend(device)
    return backends.kernels(name)


def compute_dtype(kernels: ModuleType, dtype: torch.dtype) -> torch.dtype:
    """Backends compute in their native dtypes; anything else (half on CPU) runs in float32."""
    return dtype if dtype in kernels.DTYPES else torch.float32


def prepared(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    # the dtype test skips a no-op .to(): a few microseconds each, several per call
    if t is None:
        return None
    return (t if t.dtype == dtype else t.to(dtype)).contiguous()


def prepared_target(t: Tensor, dtype: torch.dtype) -> Tensor:
    if t.dtype == torch.bool:
        return t.contiguous().view(torch.uint8)
    return t.contiguous() if t.dtype == torch.uint8 else prepared(t, dtype)  # type: ignore[return-value]


def prepared_factor(t: Tensor | None, like: torch.dtype) -> Tensor | None:
    """A BCE ``weight`` / ``pos_weight``, ``(R, D)`` and often a broadcast view (column stride 0 or 1,
    see ``functional``): kept as it is (no copy), in the value dtype of inputs of dtype ``like``,
    which is every backend's accumulation dtype."""
    if t is None:
        return None
    dtype = value_dtype(like)
    return t if t.dtype == dtype else t.to(dtype)


def per_datum(grad_x: Tensor, x: Tensor) -> Tensor:
    """The target gradient per decoder row ``(R, D)`` summed over the samples that share data row
    ``r % B``, in ``x``'s shape ``(B, D)`` (as it is when ``R == B``, or the empty placeholder ``(0,)``
    when no gradient was computed)."""
    if grad_x.dim() == 1 or grad_x.shape[0] == x.shape[0]:
        return grad_x
    return grad_x.view(-1, *x.shape).sum(0)


def restored(tensors: Sequence[Tensor], dtype: torch.dtype) -> tuple[Tensor, ...]:
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)


def restored_value(value: Tensor, dtype: torch.dtype, reduce: str = "total") -> Tensor:
    """A value output: elementwise values in the input ``dtype``, sums in its value dtype."""
    want = dtype if reduce == "elements" else value_dtype(dtype)
    return value if value.dtype == want else value.to(want)


def restored_outputs(outputs: Sequence[Tensor], dtype: torch.dtype, reduce: str) -> tuple[Tensor, ...]:
    """``(value, *grads)`` of a reduced forward entry, each in the dtype it is returned in."""
    if dtype not in HALF:  # float32 / float64: everything in the input dtype (the common case)
        return restored(outputs, dtype)
    return (restored_value(outputs[0], dtype, reduce), *restored(outputs[1:], dtype))


def seed_value(seed: Tensor | None) -> int | Tensor:
    """The seed as the backends take it: a Python int, or, for a seed drawn on a CUDA device, the
    device tensor itself (the Triton kernels read it there: no host sync, CUDA-graph safe)."""
    if seed is None:
        return 0
    return seed if seed.is_cuda else int(seed)


def scaled_grads(grads: Sequence[Tensor], grad_out: Tensor) -> tuple[Tensor, ...]:
    """The gradients written during forward times the upstream gradient: one foreach multiply (one
    launch on CUDA for all of them, and cheaper than a multiply each on CPU too)."""
    return tuple(torch._foreach_mul(list(grads), grad_out))


# --- one function per backend entry point ------------------------------------------------------


def reparameterize_kl_forward(
    mu: Tensor,
    logvar: Tensor,
    seed: Tensor | None,
    eps: Tensor | None,
    samples: int,
    log_weights: bool,
    with_kl: bool,
) -> tuple[Tensor, ...]:
    kernels = kernels_for(mu.device)
    dtype = compute_dtype(kernels, mu.dtype)
    outputs = kernels.reparameterize_kl_forward(
        prepared(mu, dtype),
        prepared(logvar, dtype),
        prepared(eps, dtype),
        seed_value(seed),
        samples,
        log_weights,
        with_kl,
    )
    if mu.dtype not in HALF:
        return restored(outputs, mu.dtype)
    z, *sums = outputs  # z keeps mu's dtype; the KL and log-weight rows are sums
    return (*restored((z,), mu.dtype), *(restored_value(t, mu.dtype) for t in sums))


def reparameterize_kl_backward(
    grad_z: Tensor | None,
    grad_kl: Tensor | None,
    grad_log_q: Tensor | None,
    grad_log_p: Tensor | None,
    mu: Tensor,
    logvar: Tensor,
    seed: Tensor | None,
    eps: Tensor | None,
    samples: int,
) -> tuple[Tensor, ...]:
    kernels = kernels_for(mu.device)
    dtype = compute_dtype(kernels, mu.dtype)
    grads = kernels.reparameterize_kl_backward(
        prepared(grad_z, dtype),
        prepared(grad_kl, dtype),
        prepared(grad_log_q, dtype),
        prepared(grad_log_p, dtype),
        prepared(mu, dtype),
        prepared(logvar, dtype),
        prepared(eps, dtype),
        seed_value(seed),
        samples,
    )
    return restored(grads, mu.dtype)


def gaussian_kl_forward(mu: Tensor, logvar: Tensor, reduce: str, scale: float, with_grad: bool) -> tuple[Tensor, ...]:
    kernels = kernels_for(mu.device)
    dtype = compute_dtype(kernels, mu.dtype)
    outputs = kernels.gaussian_kl_forward(prepared(mu, dtype), prepared(logvar, dtype), reduce, scale, with_grad)
    return restored_outputs(outputs, mu.dtype, reduce)


def gaussian_kl_backward(grad_out: Tensor, mu: Tensor, logvar: Tensor, reduce: str, scale: float) -> tuple[Tensor, ...]:
    kernels = kernels_for(mu.device)
    dtype = compute_dtype(kernels, mu.dtype)
    grads = kernels.gaussian_kl_backward(
        prepared(grad_out, dtype), prepared(mu, dtype), prepared(logvar, dtype), reduce, scale
    )
    return restored(grads, mu.dtype)


def bernoulli_forward(
    entry: str,
    decoded: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduce: str,
    scale: float,
    with_grad: bool,
    target_grad: bool,
) -> tuple[Tensor, ...]:
    """``entry``: ``'bernoulli_logits'`` or ``'bernoulli_probs'``. Returns ``(out, grad_decoded,
    grad_target)``; ``grad_target`` (``target``'s shape) only with ``with_grad`` and ``target_grad``."""
    kernels = kernels_for(decoded.device)
    dtype = compute_dtype(kernels, decoded.dtype)
    out, grad, grad_x = getattr(kernels, f"{entry}_forward")(
        prepared(decoded, dtype),
        prepared_target(target, dtype),
        reduce,
        scale,
        with_grad,
        prepared_factor(weight, decoded.dtype),
        prepared_factor(pos_weight, decoded.dtype),
        target_grad,
    )
    return restored_outputs((out, grad, per_datum(grad_x, target)), decoded.dtype, reduce)


def bernoulli_backward(
    entry: str,
    grad_out: Tensor,
    decoded: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduce: str,
    scale: float,
    target_grad: bool,
) -> tuple[Tensor, Tensor]:
    """``(grad_decoded, grad_target)``; ``grad_target`` is empty without ``target_grad``."""
    kernels = kernels_for(decoded.device)
    dtype = compute_dtype(kernels, decoded.dtype)
    grad, grad_x = getattr(kernels, f"{entry}_backward")(
        prepared(grad_out, dtype),
        prepared(decoded, dtype),
        prepared_target(target, dtype),
        reduce,
        scale,
        prepared_factor(weight, decoded.dtype),
        prepared_factor(pos_weight, decoded.dtype),
        target_grad,
    )
    return restored((grad, per_datum(grad_x, target)), decoded.dtype)  # type: ignore[return-value]


def _gaussian_x_grad(grad_mean: Tensor, x: Tensor, target_grad: bool) -> Tensor:
    """``d/dx = -(x - m) exp(-v) = -d/dm`` elementwise, summed over the samples of each data row."""
    if not target_grad or grad_mean.dim() == 1:  # not asked for, or no gradients computed
        return grad_mean.new_empty(0)
    return per_datum(grad_mean, x).neg()


def gaussian_ll_forward(
    x: Tensor, mean: Tensor, logvar: Tensor, reduce: str, scale: float, with_grad: bool, target_grad: bool
) -> tuple[Tensor, ...]:
    """``(out, grad_mean, grad_logvar, grad_x)``; ``grad_x`` only with ``with_grad`` and ``target_grad``."""
    kernels = kernels_for(mean.device)
    dtype = compute_dtype(kernels, mean.dtype)
    outputs = kernels.gaussian_forward(
        prepared(x, dtype), prepared(mean, dtype), prepared(logvar, dtype), reduce, scale, with_grad
    )
    return restored_outputs((*outputs, _gaussian_x_grad(outputs[1], x, target_grad)), mean.dtype, reduce)


def gaussian_ll_backward(
    grad_out: Tensor, x: Tensor, mean: Tensor, logvar: Tensor, reduce: str, scale: float, target_grad: bool
) -> tuple[Tensor, ...]:
    """``(grad_mean, grad_logvar, grad_x)``; ``grad_x`` is empty without ``target_grad``."""
    kernels = kernels_for(mean.device)
    dtype = compute_dtype(kernels, mean.dtype)
    grads = kernels.gaussian_backward(
        prepared(grad_out, dtype), prepared(x, dtype), prepared(mean, dtype), prepared(logvar, dtype), reduce, scale
    )
    return restored((*grads, _gaussian_x_grad(grads[0], x, target_grad)), mean.dtype)


# --- the whole SGVB loss of one step: KL + decoder log-likelihood -------------------------------

LIKELIHOODS = ("bernoulli_logits", "bernoulli_probs", "gaussian")


def sgvb_loss_forward(
    decoded: Tensor,
    x: Tensor,
    decoder_logvar: Tensor | None,
    mu: Tensor,
    logvar: Tensor,
    likelihood: str,
    kl_scale: float,
    ll_scale: float,
    with_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``kl_scale * sum KL - ll_scale * sum log p(x|z)`` and, with ``with_grad``, its gradients with
    respect to (decoded, decoder_logvar, mu, logvar); empty tensors stand for absent ones.

    A backend with the optional fused entry ``sgvb_loss_forward`` runs it (one call); otherwise the
    KL and decoder entries run one after the other."""
    kernels = kernels_for(decoded.device)
    fused = getattr(kernels, "sgvb_loss_forward", None)
    if fused is not None and decoded.dtype in kernels.DTYPES and mu.dtype == decoded.dtype:
        dtype = decoded.dtype
        return fused(
            prepared(decoded, dtype),
            prepared_target(x, dtype) if likelihood != "gaussian" else prepared(x, dtype),
            prepared(decoder_logvar, dtype),
            prepared(mu, dtype),
            prepared(logvar, dtype),
            likelihood,
            kl_scale,
            ll_scale,
            with_grad,
        )
    kl, grad_mu, grad_logvar = gaussian_kl_forward(mu, logvar, "total", kl_scale, with_grad)
    if likelihood == "gaussian":
        assert decoder_logvar is not None
        ll, grad_decoded, grad_decoder_logvar, _ = gaussian_ll_forward(
            x, decoded, decoder_logvar, "total", -ll_scale, with_grad, False
        )
    else:
        ll, grad_decoded, _ = bernoulli_forward(
            likelihood, decoded, x, None, None, "total", -ll_scale, with_grad, False
        )
        grad_decoder_logvar = decoded.new_empty(0)
    return kl.add_(ll), grad_decoded, grad_decoder_logvar, grad_mu, grad_logvar


def sgvb_loss_backward(
    grad_out: Tensor,
    decoded: Tensor,
    x: Tensor,
    decoder_logvar: Tensor | None,
    mu: Tensor,
    logvar: Tensor,
    likelihood: str,
    kl_scale: float,
    ll_scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`sgvb_loss_forward` times ``grad_out``: (decoded, decoder_logvar, mu, logvar)."""
    grad_mu, grad_logvar = gaussian_kl_backward(grad_out, mu, logvar, "total", kl_scale)
    if likelihood == "gaussian":
        assert decoder_logvar is not None
        grad_decoded, grad_decoder_logvar, _ = gaussian_ll_backward(
            grad_out, x, decoded, decoder_logvar, "total", -ll_scale, False
        )
    else:
        grad_decoded, _ = bernoulli_backward(likelihood, grad_out, decoded, x, None, None, "total", -ll_scale, False)
        grad_decoder_logvar = decoded.new_empty(0)
    return grad_decoded, grad_decoder_logvar, grad_mu, grad_logvar
