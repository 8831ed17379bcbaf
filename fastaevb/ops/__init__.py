"""The fused SGVB steps with autograd, as ``functional`` calls them: one function per step.

Three call paths run the same kernels and the same backward rules:

- eagerly, for ``reparameterize`` and ``sgvb_loss`` (the two calls of a step's loss lines), C++
  autograd nodes where the backend has them (``cpp``: ``autograd_reparameterize``,
  ``autograd_sgvb_loss``), so backward runs no Python;
- eagerly otherwise, a plain ``torch.autograd.Function`` (``ops.eager``): no dispatcher in
  between, a few microseconds of Python per call;
- while ``torch.compile`` traces (or inside :func:`use_custom_ops`), the ``torch.library`` custom
  ops of ``ops.custom`` (``torch.ops.fastaevb.*``), which have fake kernels, so compiled graphs
  hold one opaque node per step and no graph break.

Inputs are validated and flattened by ``functional``: decoder outputs ``(R, D)``, data ``(B, D)``
with ``R % B == 0``, latents ``(R, J)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from . import calls, custom, eager, seeds

__all__ = [
    "sgvb_loss",
    "reparameterize",
    "reparameterize_kl",
    "gaussian_kl",
    "bernoulli_logits_ll",
    "bernoulli_probs_ll",
    "gaussian_ll",
    "use_custom_ops",
    "use_python_autograd",
    "custom",
]

_force_custom: list[bool] = []
_force_python: list[bool] = []


@contextlib.contextmanager
def use_custom_ops() -> Iterator[None]:
    """Run eager calls through the ``torch.library`` custom ops too (as ``torch.compile`` does):
    for tests and debugging; slower."""
    _force_custom.append(True)
    try:
        yield
    finally:
        _force_custom.pop()


@contextlib.contextmanager
def use_python_autograd() -> Iterator[None]:
    """Run eager calls through the Python ``autograd.Function`` path even where a backend has C++
    autograd nodes: for tests and debugging; slower."""
    _force_python.append(True)
    try:
        yield
    finally:
        _force_python.pop()


def _custom_path() -> bool:
    return bool(_force_custom) or torch.compiler.is_compiling()


def _native_entry(name: str, device: torch.device):
    """The backend's C++ autograd entry ``name`` for ``device`` (which returns None for inputs it
    does not take), or None: no such entry, the custom-op or forced Python path, or a functorch
    transform (which C++ nodes do not support). Called by the two calls of a step's loss lines."""
    if _force_python or _custom_path() or torch._C._are_functorch_transforms_active():
        return None
    return getattr(calls.kernels_for(device), name, None)


def sgvb_loss(
    decoded: Tensor,
    x: Tensor,
    decoder_logvar: Tensor | None,
    mu: Tensor,
    logvar: Tensor,
    likelihood: str,
    kl_scale: float,
    ll_scale: float,
    with_grad: bool,
) -> Tensor:
    """``kl_scale * sum_r KL_r - ll_scale * sum_r log p(x_r|z_r)`` (eq. 10 negated, Appendix B + C),
    one call for the whole loss of a step. ``likelihood``: 'bernoulli_logits', 'bernoulli_probs'
    or 'gaussian' (then ``decoder_logvar`` is decoded's shape or one shared value).

    ``x`` is ``(B, ...)``, rows of D values; ``decoded`` holds ``R * D`` values, ``R % B == 0``, in a
    layout ``functional`` validated (flattened to ``(R, D)`` rows here)."""
    native = _native_entry("autograd_sgvb_loss", decoded.device)
    if native is not None:
        loss = native(decoded, x, decoder_logvar, mu, logvar, likelihood, kl_scale, ll_scale, with_grad)
        if loss is not None:
            return loss
    if not _custom_path():
        return eager.apply(
            eager.SGVBLossFunction, likelihood, kl_scale, ll_scale, with_grad, decoded, x, decoder_logvar, mu, logvar
        )
    return custom.sgvb_loss(
        *eager.flat_loss_inputs(decoded, x, decoder_logvar), mu, logvar, likelihood, kl_scale, ll_scale, with_grad
    )[0]


def reparameterize(mu: Tensor, logvar: Tensor, seed: Tensor | None, eps: Tensor | None, samples: int) -> Tensor:
    """z of eq. (4) alone (no KL): ``reparameterize_kl``'s first output. With neither ``seed`` nor
    ``eps``, the seed is drawn from torch's default generator (``seeds.draw``) here, or by the C++
    node, which draws the same value without a Python call."""
    native = _native_entry("autograd_reparameterize", mu.device)
    if native is not None:
        z = native(mu, logvar, seed, eps, samples)
        if z is not None:
            return z
    if seed is None and eps is None:
        seed = seeds.draw(None, mu)
    if not _custom_path():
        return eager.apply(eager.ReparameterizeFunction, mu, logvar, seed, eps, samples)
    return reparameterize_kl(mu, logvar, seed, eps, samples, False, False)[0]


def reparameterize_kl(
    mu: Tensor,
    logvar: Tensor,
    seed: Tensor | None,
    eps: Tensor | None,
    samples: int,
    log_weights: bool,
    with_kl: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(z, kl, log_q, log_p)`` of eq. (4) / Appendix B for ``mu, logvar`` of shape ``(*batch, J)``:
    z ``(*batch, J)`` (``(L, *batch, J)`` for ``samples = L > 1``), kl ``batch`` (empty without
    ``with_kl``), log_q / log_p like z without J (empty without ``log_weights``). See
    ``ops.custom.reparameterize_kl`` for the flat ``(R, J)`` op."""
    if not _custom_path():
        return eager.apply(eager.ReparameterizeKLFunction, mu, logvar, seed, eps, samples, log_weights, with_kl)
    latent = mu.shape[-1]
    rows = math.prod(mu.shape[:-1])
    flat_eps = None if eps is None else eps.reshape(samples, rows, latent)
    z, kl, log_q, log_p = custom.reparameterize_kl(
        mu.reshape(rows, latent), logvar.reshape(rows, latent), seed, flat_eps, samples, log_weights, with_kl
    )
    return eager.shaped_samples(z, kl, log_q, log_p, mu.shape, samples, log_weights, with_kl)


def _reduced(
    custom_op, eager_step, *tensors: Tensor | None, reduce: str, scale: float, with_grad: bool, flags: tuple = ()
) -> Tensor:
    """``flags``: the op's arguments after ``with_grad`` (``target_grad`` of the decoder ops)."""
    if _custom_path():
        return custom_op(*tensors, reduce, scale, with_grad, *flags)[0]
    forward_call, backward_call, differentiable = eager_step
    return eager.apply(
        eager.ReducedFunction, forward_call, backward_call, differentiable, reduce, scale, with_grad, flags, *tensors
    )


def gaussian_kl(mu: Tensor, logvar: Tensor, reduce: str, scale: float, with_grad: bool) -> Tensor:
    """Appendix B: ``scale * KL`` per row ('rows') or in total ('total')."""
    return _reduced(custom.gaussian_kl, eager.GAUSSIAN_KL, mu, logvar, reduce=reduce, scale=scale, with_grad=with_grad)


def bernoulli_logits_ll(
    logits: Tensor,
    x: Tensor,
    reduce: str,
    scale: float,
    with_grad: bool,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    target_grad: bool = False,
) -> Tensor:
    """Appendix C.1 from logits: ``scale * log p(x|z)`` per element, row or in total; ``weight`` /
    ``pos_weight``: ``None`` or ``(R, D)`` (broadcast views), torch's BCE-with-logits factors;
    ``target_grad``: ``x`` is differentiated too."""
    return _reduced(
        custom.bernoulli_logits_ll,
        eager.BERNOULLI_LOGITS,
        logits,
        x,
        weight,
        pos_weight,
        reduce=reduce,
        scale=scale,
        with_grad=with_grad,
        flags=(target_grad,),
    )


def bernoulli_probs_ll(
    probs: Tensor,
    x: Tensor,
    reduce: str,
    scale: float,
    with_grad: bool,
    weight: Tensor | None = None,
    target_grad: bool = False,
) -> Tensor:
    """Appendix C.1 from probabilities (``-F.binary_cross_entropy``): per element, row or in total;
    ``weight`` and ``target_grad`` as :func:`bernoulli_logits_ll`."""
    return _reduced(
        custom.bernoulli_probs_ll,
        eager.BERNOULLI_PROBS,
        probs,
        x,
        weight,
        None,
        reduce=reduce,
        scale=scale,
        with_grad=with_grad,
        flags=(target_grad,),
    )


def gaussian_ll(
    x: Tensor, mean: Tensor, logvar: Tensor, reduce: str, scale: float, with_grad: bool, target_grad: bool = False
) -> Tensor:
    """Appendix C.2: ``scale * log p(x|z)`` per row or in total; ``target_grad``: ``x`` is differentiated too."""
    return _reduced(
        custom.gaussian_ll,
        eager.GAUSSIAN_LL,
        x,
        mean,
        logvar,
        reduce=reduce,
        scale=scale,
        with_grad=with_grad,
        flags=(target_grad,),
    )
