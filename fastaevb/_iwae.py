"""The importance-weighted bound behind ``functional.iwae_loss`` and the DReG gate.

IWAE (Burda et al. 2016) trains on ``L_K = logsumexp_k log w_k - log K`` with ``log w_k = log
p(x|z_k) + log p(z_k) - log q(z_k|x)`` for K samples z_k of q. Its gradient for any parameter is
``sum_k w~_k d log w_k`` (``w~ = softmax_k log w_k``). Two estimators of the encoder's gradient
drop the term of log q's parameters (only the path through z_k moves mu and logvar): STL (Roeder
et al. 2017) and DReG (Tucker et al. 2019), which also weights that path by ``w~_k^2``. The loss
op (``ops.table.IWAE_LOSS``) returns every z-gradient weighted by ``w~_k`` as IWAE does and
hands ``w~`` to :class:`_Gate` through the gradient of a token, so one ``backward()`` through the
user's decoder gives DReG's ``w~_k^2`` on the encoder and IWAE's ``w~_k`` on the decoder.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _torch_private as private
from . import _validation as check
from . import ops
from ._latents import check_latents, row_reduction, wants_grad_in_forward
from ._sgvb import _decoder_parameter, check_decoder_parameter
from .ops import autocast
from .ops.table import IWAE_GRADIENTS, LIKELIHOODS


class _Gate(torch.autograd.Function):
    """z -> (z, token): identity forward; backward multiplies the gradient of z_k by the token's
    gradient normalized over the samples (the loss hands it ``c w~_k`` for any loss scale c)."""

    @staticmethod
    def forward(ctx, z: Tensor) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)  # a missing token gradient must be seen, not read as zeros
        return z.clone(), z.new_zeros(z.shape[:2])

    @staticmethod
    def backward(ctx, grad_z: Tensor | None, grad_gate: Tensor | None) -> Tensor | None:
        if grad_z is None:
            return None
        if grad_gate is None:
            raise RuntimeError(
                "dreg_gate: the gate token got no gradient. Pass it to the loss: "
                "iwae_loss(..., gradient='dreg', gate=gate)"
            )
        total = grad_gate.sum(0, keepdim=True)
        weights = torch.where(total != 0, grad_gate / torch.where(total != 0, total, 1), 0)
        return grad_z * weights.reshape(*weights.shape, *(1,) * (grad_z.dim() - 2))


def dreg_gate(z: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(z, Tensor) or z.dim() < 3:
        raise ValueError(
            "dreg_gate takes the K samples z of shape (K, B, J) (or (K, B, C, h, w)) from "
            f"reparameterize(mu, logvar, samples=K), got {tuple(z.shape) if isinstance(z, Tensor) else type(z)}"
        )
    check.floating("z", z)
    return _Gate.apply(z)


def _check_shapes(recon: Tensor, x: Tensor, z: Tensor, mu: Tensor) -> tuple[int, int, int]:
    """``(K, B, D)``: z ``(K, *mu.shape)``, x ``(B, *event)``, recon ``(K, *x.shape)`` or ``(K, B, D)``."""
    if z.dim() != mu.dim() + 1 or tuple(z.shape[1:]) != tuple(mu.shape):
        raise ValueError(
            f"z of shape {tuple(z.shape)} must be (K, *mu.shape) = (K, {', '.join(map(str, mu.shape))}): the K "
            f"samples of q(z|x) for mu of shape {tuple(mu.shape)}; the sample dimension leads"
        )
    samples, batch = z.shape[0], mu.shape[0]
    if x.dim() == 0 or x.shape[0] != batch:
        raise ValueError(f"x of shape {tuple(x.shape)} must have the batch of mu of shape {tuple(mu.shape)} first")
    row_shape, event = check.decoder_rows("recon", recon, "x", x)
    if row_shape != (samples, batch):  # one sample dimension, z's K
        raise ValueError(
            f"recon of shape {tuple(recon.shape)} must be (K, *x.shape) = {(samples, *x.shape)} or (K, B, D) = "
            f"{(samples, batch, event)} for z of shape {tuple(z.shape)} and x of shape {tuple(x.shape)}"
        )
    return samples, batch, event


def iwae_loss(
    recon: Tensor,
    x: Tensor,
    z: Tensor,
    mu: Tensor,
    logvar: Tensor,
    likelihood: str,
    reduction: str,
    gradient: str,
    gate: Tensor | None,
    decoder_logvar: Tensor | None,
    decoder_log_scale: Tensor | None,
) -> Tensor:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if gradient not in IWAE_GRADIENTS:
        raise ValueError(f"gradient must be one of {IWAE_GRADIENTS}, got {gradient!r}")
    reduction = check.reduction(reduction)
    if (gradient == "dreg") != (gate is not None):
        raise ValueError(
            "gradient='dreg' needs the gate of the samples the decoder read: z, gate = dreg_gate(reparameterize(mu, "
            "logvar, samples=K)); decoder(z); iwae_loss(..., gradient='dreg', gate=gate)"
            if gate is None
            else f"gate is DReG's (gradient='dreg'), not gradient={gradient!r}'s"
        )
    decoder_param = _decoder_parameter(likelihood, decoder_logvar, decoder_log_scale)
    if private.autocast_enabled():  # float32 under autocast, as torch's losses (ops.autocast)
        recon, x, z, mu, logvar, decoder_param = autocast.to_float32(recon, x, z, mu, logvar, decoder_param)  # type: ignore[assignment]
    check.floating("recon", recon)
    check.floating("z", z)
    bernoulli = likelihood in ("bernoulli", "bernoulli_probs")
    if bernoulli:
        check.target("x", x)
    else:
        check.floating("x", x)
    check_latents(mu, logvar, 1, None)
    check.same_device("recon", recon, x=x, z=z, mu=mu, gate=gate)
    check_decoder_parameter(likelihood, decoder_param, recon)
    check.same_float_dtype("recon", recon, z=z, mu=mu)
    samples, batch, event = _check_shapes(recon, x, z, mu)
    if gate is not None and tuple(gate.shape) != (samples, batch):
        raise ValueError(
            f"gate of shape {tuple(gate.shape)} must be (K, B) = {(samples, batch)}, dreg_gate's token of z"
        )
    check.not_requiring_grad("x", x, "the bound is not differentiated with respect to the data")
    if not bernoulli:
        x = x.to(recon.dtype)
        if decoder_param is None:
            decoder_param = recon.new_zeros(1)
        decoder_param = decoder_param.reshape(1) if decoder_param.numel() == 1 else decoder_param.reshape(-1, event)
    latent = mu.numel() // batch if batch else math.prod(mu.shape[1:])
    op_reduction, scale = row_reduction(reduction, batch)  # 'mean': 1/B
    with_grad = wants_grad_in_forward(op_reduction, recon, z, mu, logvar, decoder_param)
    return ops.loss(
        "iwae_loss",
        recon.reshape(samples * batch, event),
        x.reshape(batch, event),
        decoder_param,
        z.reshape(samples, batch, latent),
        mu.reshape(batch, latent),
        logvar.reshape(batch, latent),
        gate,
        likelihood,
        gradient,
        op_reduction,
        scale,
        with_grad,
    )
