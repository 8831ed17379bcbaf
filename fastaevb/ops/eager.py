"""The eager call path: the kernel calls of ``ops.calls`` under plain ``torch.autograd.Function``
classes, with no ``torch.library`` dispatch in between (a custom-op call costs tens of
microseconds of Python dispatch; this path costs a few). ``fastaevb.ops`` takes it whenever
``torch.compile`` is not tracing. The backward rules are the custom ops', plus one shortcut: an
upstream gradient of exactly 1 (``loss.backward()``) hands out the gradients written in forward
without a multiply.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from . import calls
from .custom import _used_grads


def upstream_is_one(grad_out: Tensor) -> bool:
    """True when a scalar loss's upstream gradient is exactly 1 (``loss.backward()``): then the
    gradients written during forward are the answer as they are. Only checked eagerly on the CPU,
    where reading the value costs no device sync and no graph break."""
    return (
        grad_out.device.type == "cpu"
        and grad_out.numel() == 1
        and not grad_out.requires_grad  # create_graph=True: keep the multiply in the graph
        and type(grad_out) is torch.Tensor  # not a fake / traced tensor
        and not torch.compiler.is_compiling()
        and grad_out.item() == 1.0
    )


def _take_grads(ctx, grad_out: Tensor) -> tuple[Tensor, ...]:
    """The gradients written in forward, times ``grad_out``. When the graph is freed after this
    backward they are handed over (``.grad`` adopts them, no copy), scaled in place when
    ``grad_out`` is not 1 (a scaled loss); when it is retained they are copies: a ``.grad`` that
    adopted them would otherwise be added into in place by the next backward, which hands the same
    tensors out again."""
    if ctx.grads is None:
        raise RuntimeError(
            "Trying to backward through the graph a second time: the fused loss's gradients were handed "
            "over by the first backward. Specify retain_graph=True to backward through it again."
        )
    one = upstream_is_one(grad_out)
    if torch._C._autograd._get_current_graph_task_keep_graph() or grad_out.requires_grad:
        return tuple(g.clone() for g in ctx.grads) if one else calls.scaled_grads(ctx.grads, grad_out)
    grads, ctx.grads = ctx.grads, None
    if not one:
        torch._foreach_mul_(list(grads), grad_out)
    return grads


class ReducedFunction(torch.autograd.Function):
    """``forward_call(*tensors, reduce, scale, with_grad, *flags) -> (out, *grads)`` with autograd;
    ``backward_call(grad_out, *tensors, reduce, scale, *flags)`` recomputes the gradients when they
    were not written in forward. ``differentiable``: the positions in ``tensors`` they belong to
    (a gradient nobody asked for is an empty placeholder and is never handed out)."""

    @staticmethod
    def forward(
        ctx,
        forward_call: Callable,
        backward_call: Callable,
        differentiable: tuple[int, ...],
        reduce: str,
        scale: float,
        with_grad: bool,
        flags: tuple,
        *tensors: Tensor | None,
    ) -> Tensor:
        out, *grads = forward_call(*tensors, reduce, scale, with_grad, *flags)
        ctx.backward_call, ctx.differentiable = backward_call, differentiable
        ctx.reduce, ctx.scale, ctx.with_grad, ctx.flags = reduce, scale, with_grad, flags
        ctx.grads = tuple(grads) if with_grad else None
        if not with_grad:
            ctx.save_for_backward(*tensors)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        result: list[Tensor | None] = [None] * len(ctx.needs_input_grad)
        if ctx.with_grad:
            grads = _take_grads(ctx, grad_out)
        else:
            grads = ctx.backward_call(grad_out, *ctx.saved_tensors, ctx.reduce, ctx.scale, *ctx.flags)
        for position, grad in zip(ctx.differentiable, grads, strict=True):
            if ctx.needs_input_grad[7 + position]:
                result[7 + position] = grad
        return tuple(result)


# The reduced steps as (forward call, backward call, differentiable positions). Bernoulli tensors:
# (decoded, target, weight, pos_weight); Gaussian: (x, mean, logvar), gradients (mean, logvar, x).
GAUSSIAN_KL = (calls.gaussian_kl_forward, calls.gaussian_kl_backward, (0, 1))
BERNOULLI_LOGITS = (
    partial(calls.bernoulli_forward, "bernoulli_logits"),
    partial(calls.bernoulli_backward, "bernoulli_logits"),
    (0, 1),
)
BERNOULLI_PROBS = (
    partial(calls.bernoulli_forward, "bernoulli_probs"),
    partial(calls.bernoulli_backward, "bernoulli_probs"),
    (0, 1),
)
GAUSSIAN_LL = (calls.gaussian_ll_forward, calls.gaussian_ll_backward, (1, 2, 0))


def shaped_samples(
    z: Tensor,
    kl: Tensor,
    log_q: Tensor,
    log_p: Tensor,
    shape: torch.Size,
    samples: int,
    log_weights: bool,
    with_kl: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The flat outputs of the reparameterize kernels in the shapes of ``mu`` (``shape``)."""
    batch = shape[:-1]
    lead = (samples,) if samples > 1 else ()
    z = z.view(*lead, *shape)
    if with_kl:
        kl = kl.view(batch)
    if log_weights:
        log_q, log_p = log_q.view(*lead, *batch), log_p.view(*lead, *batch)
    return z, kl, log_q, log_p


class ReparameterizeKLFunction(torch.autograd.Function):
    """Eq. (4) + Appendix B (+ log-weights): ``calls.reparameterize_kl_forward`` with autograd;
    eps is regenerated from the seed in backward, never stored. Takes ``mu, logvar`` of any
    ``(*batch, J)`` shape: flattening inside the node costs no autograd view nodes."""

    @staticmethod
    def forward(
        ctx,
        mu: Tensor,
        logvar: Tensor,
        seed: Tensor | None,
        eps: Tensor | None,
        samples: int,
        log_weights: bool,
        with_kl: bool,
    ):
        latent, rows = mu.shape[-1], math.prod(mu.shape[:-1])
        flat_mu, flat_logvar = mu.reshape(rows, latent), logvar.reshape(rows, latent)
        flat_eps = None if eps is None else eps.reshape(samples, rows, latent)
        z, kl, log_q, log_p = calls.reparameterize_kl_forward(
            flat_mu, flat_logvar, seed, flat_eps, samples, log_weights, with_kl
        )
        ctx.save_for_backward(flat_mu, flat_logvar, seed, flat_eps)
        ctx.samples, ctx.log_weights, ctx.with_kl, ctx.shape = samples, log_weights, with_kl, mu.shape
        ctx.set_materialize_grads(False)
        if not log_weights:
            ctx.mark_non_differentiable(log_q, log_p)
        if not with_kl:
            ctx.mark_non_differentiable(kl)
        return shaped_samples(z, kl, log_q, log_p, mu.shape, samples, log_weights, with_kl)

    @staticmethod
    def backward(ctx, grad_z, grad_kl, grad_log_q, grad_log_p):
        grad_z, grad_kl, grad_log_q, grad_log_p = _used_grads(ctx, grad_z, grad_kl, grad_log_q, grad_log_p)
        if all(g is None for g in (grad_z, grad_kl, grad_log_q, grad_log_p)):
            return None, None, None, None, None, None, None
        mu, logvar, seed, eps = ctx.saved_tensors
        rows, samples = mu.shape[0], ctx.samples
        grad_mu, grad_logvar = calls.reparameterize_kl_backward(
            None if grad_z is None else grad_z.reshape(samples, rows, mu.shape[1]),
            None if grad_kl is None else grad_kl.reshape(rows),
            None if grad_log_q is None else grad_log_q.reshape(samples, rows),
            None if grad_log_p is None else grad_log_p.reshape(samples, rows),
            mu,
            logvar,
            seed,
            eps,
            samples,
        )
        return grad_mu.view(ctx.shape), grad_logvar.view(ctx.shape), None, None, None, None, None


class ReparameterizeFunction(torch.autograd.Function):
    """Eq. (4) alone: z only, no KL (the cheapest autograd node for the most frequent call)."""

    @staticmethod
    def forward(ctx, mu: Tensor, logvar: Tensor, seed: Tensor | None, eps: Tensor | None, samples: int):
        latent, rows = mu.shape[-1], math.prod(mu.shape[:-1])
        flat_mu, flat_logvar = mu.reshape(rows, latent), logvar.reshape(rows, latent)
        flat_eps = None if eps is None else eps.reshape(samples, rows, latent)
        z = calls.reparameterize_kl_forward(flat_mu, flat_logvar, seed, flat_eps, samples, False, False)[0]
        ctx.save_for_backward(flat_mu, flat_logvar, seed, flat_eps)
        ctx.samples, ctx.shape = samples, mu.shape
        return z.view(*((samples,) if samples > 1 else ()), *mu.shape)

    @staticmethod
    def backward(ctx, grad_z):
        mu, logvar, seed, eps = ctx.saved_tensors
        grad_mu, grad_logvar = calls.reparameterize_kl_backward(
            grad_z.reshape(ctx.samples, *mu.shape), None, None, None, mu, logvar, seed, eps, ctx.samples
        )
        return grad_mu.view(ctx.shape), grad_logvar.view(ctx.shape), None, None, None


def flat_loss_inputs(decoded: Tensor, x: Tensor, decoder_logvar: Tensor | None):
    """``decoded`` as ``(R, D)`` rows of ``x`` as ``(B, D)``, the decoder log-variance as ``(R, D)`` or ``(1,)``."""
    batch, event = x.shape[0], math.prod(x.shape[1:])
    rows = decoded.numel() // event if event else math.prod(decoded.shape[:-1])
    flat_logvar = None
    if decoder_logvar is not None:
        flat_logvar = decoder_logvar.reshape(1) if decoder_logvar.numel() == 1 else decoder_logvar.reshape(rows, event)
    return decoded.reshape(rows, event), x.reshape(batch, event), flat_logvar


class SGVBLossFunction(torch.autograd.Function):
    """The whole loss of a step (``calls.sgvb_loss_forward``) as one autograd node; the inputs are
    flattened inside it (no autograd view nodes) and the gradients come back in their shapes."""

    @staticmethod
    def forward(
        ctx,
        likelihood: str,
        kl_scale: float,
        ll_scale: float,
        with_grad: bool,
        decoded: Tensor,
        x: Tensor,
        decoder_logvar: Tensor | None,
        mu: Tensor,
        logvar: Tensor,
    ) -> Tensor:
        flat_decoded, flat_x, flat_logvar = flat_loss_inputs(decoded, x, decoder_logvar)
        loss, *grads = calls.sgvb_loss_forward(
            flat_decoded, flat_x, flat_logvar, mu, logvar, likelihood, kl_scale, ll_scale, with_grad
        )
        ctx.likelihood, ctx.kl_scale, ctx.ll_scale, ctx.with_grad = likelihood, kl_scale, ll_scale, with_grad
        ctx.shapes = (decoded.shape, None if decoder_logvar is None else decoder_logvar.shape)
        ctx.grads = tuple(grads) if with_grad else None
        if not with_grad:
            ctx.save_for_backward(flat_decoded, flat_x, flat_logvar, mu, logvar)
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if ctx.with_grad:
            grads = _take_grads(ctx, grad_out)
        else:
            decoded, x, decoder_logvar, mu, logvar = ctx.saved_tensors
            grads = calls.sgvb_loss_backward(
                grad_out, decoded, x, decoder_logvar, mu, logvar, ctx.likelihood, ctx.kl_scale, ctx.ll_scale
            )
        grad_decoded, grad_decoder_logvar, grad_mu, grad_logvar = grads
        decoded_shape, logvar_shape = ctx.shapes
        needs = ctx.needs_input_grad
        return (
            None,
            None,
            None,
            None,
            grad_decoded.view(decoded_shape) if needs[4] else None,
            None,
            grad_decoder_logvar.view(logvar_shape) if needs[6] else None,
            grad_mu if needs[7] else None,
            grad_logvar if needs[8] else None,
        )


def apply(function, *args):
    """``function.apply(*args)`` without the Python layer of ``torch.autograd.Function.apply``
    (argument binding and functorch unwrapping: a few microseconds a call), when no functorch
    transform is active; with one, the full ``apply``."""
    if torch._C._are_functorch_transforms_active():
        return function.apply(*args)
    return super(torch.autograd.Function, function).apply(*args)
