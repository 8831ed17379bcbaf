"""The eager call path: the kernel calls of ``ops.calls`` under plain ``torch.autograd.Function``
classes, with no ``torch.library`` dispatch in between (a custom-op call costs tens of
microseconds of Python dispatch; this path costs a few). ``fastaevb.ops`` takes it whenever
``torch.compile`` is not tracing. The backward rules are the custom ops', plus one shortcut: an
upstream gradient of exactly 1 (``loss.backward()``) hands out the gradients written in forward
without a multiply.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
from torch import Tensor

from . import calls


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
    """The gradients written in forward, times ``grad_out`` (as they are for ``loss.backward()``:
    the next backward node reads them without a copy)."""
    if upstream_is_one(grad_out):
        return ctx.grads
    return tuple(g * grad_out for g in ctx.grads)


class ReducedFunction(torch.autograd.Function):
    """``forward_call(*tensors, reduce, scale, with_grad) -> (out, *grads)`` with autograd;
    ``backward_call(grad_out, *tensors, reduce, scale)`` recomputes the gradients when they were
    not written in forward. ``differentiable``: the positions in ``tensors`` they belong to."""

    @staticmethod
    def forward(ctx, forward_call: Callable, backward_call: Callable, differentiable: tuple[int, ...],
                reduce: str, scale: float, with_grad: bool, *tensors: Tensor) -> Tensor:
        out, *grads = forward_call(*tensors, reduce, scale, with_grad)
        ctx.backward_call, ctx.differentiable = backward_call, differentiable
        ctx.reduce, ctx.scale, ctx.with_grad = reduce, scale, with_grad
        ctx.grads = tuple(grads) if with_grad else None
        if not with_grad:
            ctx.save_for_backward(*tensors)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        result: list[Optional[Tensor]] = [None] * len(ctx.needs_input_grad)
        if ctx.with_grad:
            grads = _take_grads(ctx, grad_out)
        else:
            grads = ctx.backward_call(grad_out, *ctx.saved_tensors, ctx.reduce, ctx.scale)
        for position, grad in zip(ctx.differentiable, grads):
            if ctx.needs_input_grad[6 + position]:
                result[6 + position] = grad
        return tuple(result)


# The reduced steps as (forward call, backward call, differentiable positions).
GAUSSIAN_KL = (calls.gaussian_kl_forward, calls.gaussian_kl_backward, (0, 1))
BERNOULLI_LOGITS = (partial(calls.bernoulli_forward, "bernoulli_logits"),
                    partial(calls.bernoulli_backward, "bernoulli_logits"), (0,))
BERNOULLI_PROBS = (partial(calls.bernoulli_forward, "bernoulli_probs"),
                   partial(calls.bernoulli_backward, "bernoulli_probs"), (0,))
GAUSSIAN_LL = (calls.gaussian_ll_forward, calls.gaussian_ll_backward, (1, 2))


class ReparameterizeKLFunction(torch.autograd.Function):
    """Eq. (4) + Appendix B (+ log-weights): ``calls.reparameterize_kl_forward`` with autograd;
    eps is regenerated from the seed in backward, never stored."""

    @staticmethod
    def forward(ctx, mu: Tensor, logvar: Tensor, seed: Optional[Tensor], eps: Optional[Tensor],
                samples: int, log_weights: bool):
        z, kl, log_q, log_p = calls.reparameterize_kl_forward(mu, logvar, seed, eps, samples, log_weights)
        ctx.save_for_backward(mu, logvar, seed, eps)
        ctx.samples, ctx.log_weights = samples, log_weights
        ctx.set_materialize_grads(False)
        if not log_weights:
            ctx.mark_non_differentiable(log_q, log_p)
        return z, kl, log_q, log_p

    @staticmethod
    def backward(ctx, grad_z, grad_kl, grad_log_q, grad_log_p):
        if not ctx.log_weights:
            grad_log_q = grad_log_p = None
        if all(g is None for g in (grad_z, grad_kl, grad_log_q, grad_log_p)):
            return None, None, None, None, None, None
        mu, logvar, seed, eps = ctx.saved_tensors
        grad_mu, grad_logvar = calls.reparameterize_kl_backward(
            grad_z, grad_kl, grad_log_q, grad_log_p, mu, logvar, seed, eps, ctx.samples
        )
        return grad_mu, grad_logvar, None, None, None, None


class SGVBLossFunction(torch.autograd.Function):
    """The whole loss of a step (``calls.sgvb_loss_forward``) as one autograd node."""

    @staticmethod
    def forward(ctx, likelihood: str, kl_scale: float, ll_scale: float, with_grad: bool,
                decoded: Tensor, x: Tensor, decoder_logvar: Optional[Tensor], mu: Tensor, logvar: Tensor) -> Tensor:
        loss, *grads = calls.sgvb_loss_forward(
            decoded, x, decoder_logvar, mu, logvar, likelihood, kl_scale, ll_scale, with_grad
        )
        ctx.likelihood, ctx.kl_scale, ctx.ll_scale = likelihood, kl_scale, ll_scale
        ctx.with_grad = with_grad
        ctx.grads = tuple(grads) if with_grad else None
        if not with_grad:
            ctx.save_for_backward(decoded, x, decoder_logvar, mu, logvar)
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if ctx.with_grad:
            grads = _take_grads(ctx, grad_out)
        else:
            decoded, x, decoder_logvar, mu, logvar = ctx.saved_tensors
            grads = calls.sgvb_loss_backward(grad_out, decoded, x, decoder_logvar, mu, logvar,
                                             ctx.likelihood, ctx.kl_scale, ctx.ll_scale)
        grad_decoded, grad_decoder_logvar, grad_mu, grad_logvar = grads
        needs = ctx.needs_input_grad
        return (None, None, None, None,
                grad_decoded if needs[4] else None, None,
                grad_decoder_logvar if needs[6] else None,
                grad_mu if needs[7] else None, grad_logvar if needs[8] else None)
