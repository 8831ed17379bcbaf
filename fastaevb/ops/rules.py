"""The backward rules of the ops, written once for both call paths (the eager
``autograd.Function`` and the custom op's ``register_autograd``, ``ops.registrar``).

A loss op with ``with_grad`` wrote its gradients in the forward pass; backward multiplies them by
the upstream gradient and hands them over. Otherwise backward calls the ``<op>_backward`` entry.
Each gradient then goes to its tensor: a placeholder (not wanted) is ``None``, and a target's
gradient written per decoder row ``(R, D)`` is summed over the samples sharing a data row ``(B, D)``.
(The C++ autograd node of ``sgvb_loss``, ``csrc/autograd_nodes.cpp``, applies the same rule in C++;
``tests/test_fused_loss.py`` checks that the two agree.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .. import _torch_private as private
from .table import Op


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


def take_grads(ctx, grad_out: Tensor) -> tuple[Tensor, ...]:
    """The gradients written in forward (``ctx.grads``), times ``grad_out``. When the graph is
    freed after this backward they are handed over (``.grad`` adopts them, no copy), scaled in
    place when ``grad_out`` is not 1 (a scaled loss); when it is retained they are copies: a
    ``.grad`` that adopted them would otherwise be added into in place by the next backward,
    which hands the same tensors out again."""
    if ctx.grads is None:
        raise RuntimeError(
            "Trying to backward through the graph a second time: the fused loss's gradients were handed "
            "over by the first backward. Specify retain_graph=True to backward through it again."
        )
    wanted = [g for g in ctx.grads if g.numel()]
    one = upstream_is_one(grad_out)
    if private.graph_kept() or grad_out.requires_grad:
        scaled = iter([g.clone() for g in wanted] if one else private.foreach_mul(wanted, grad_out))
        return tuple(next(scaled) if g.numel() else g for g in ctx.grads)
    grads, ctx.grads = ctx.grads, None
    if not one and wanted:
        private.foreach_mul_(wanted, grad_out)
    return grads


def scaled(grads: Sequence[Tensor], grad_out: Tensor) -> tuple[Tensor, ...]:
    """Saved gradients times the upstream gradient, without handing over (the custom-op path,
    whose saved tensors autograd owns)."""
    wanted = [g for g in grads if g.numel()]
    products = iter(private.foreach_mul(wanted, grad_out) if wanted else [])
    return tuple(next(products) if g.numel() else g for g in grads)


def to_inputs(op: Op, shapes: Sequence, grads: Sequence[Tensor], needs: Sequence[bool]) -> tuple[Tensor | None, ...]:
    """One entry per argument of ``op``: the gradient of each differentiable tensor that autograd
    asked for (``shapes``: theirs, None for an absent optional tensor), ``None`` elsewhere."""
    result: list[Tensor | None] = [None] * len(needs)
    for i, shape, grad in zip(op.differentiable_positions, shapes, grads, strict=True):
        if not needs[i] or shape is None:
            continue
        if grad.shape != shape:
            numel = math.prod(shape)
            if grad.numel() == 0 and numel != 0:  # a placeholder: this gradient was not computed
                continue
            # the op's rows in the tensor's shape; a target's gradient per decoder row summed per data row
            grad = grad.view(shape) if grad.numel() == numel else grad.view(-1, *shape).sum(0)
        result[i] = grad
    return tuple(result)


def loss_setup(ctx, op: Op, args: Sequence, outputs: Sequence[Tensor], save: Callable) -> None:
    """Forward side of a loss op: keep the forward-written gradients (``save(ctx, grads)``), or
    the tensors to recompute them from."""
    ctx.shapes = tuple(None if args[i] is None else args[i].shape for i in op.differentiable_positions)
    ctx.scalars = tuple(args[len(op.tensors) :])
    ctx.with_grad = args[op.arg_names.index("with_grad")]
    ctx.set_materialize_grads(False)
    if ctx.with_grad:
        save(ctx, tuple(outputs[1:]))
    else:
        ctx.save_for_backward(*args[: len(op.tensors)])


def loss_backward(ctx, op: Op, grad_out: Tensor | None, grads_of: Callable, backward_call: Callable):
    """Backward side of a loss op: ``grads_of(ctx, grad_out)`` scales the saved gradients
    (``with_grad``), else ``backward_call(grad_out, *tensors, *scalars)`` recomputes them."""
    if grad_out is None:
        return (None,) * len(ctx.needs_input_grad)
    if ctx.with_grad:
        grads = grads_of(ctx, grad_out)
    else:
        grads = backward_call(grad_out, *ctx.saved_tensors, *ctx.scalars)
    return to_inputs(op, ctx.shapes, grads, ctx.needs_input_grad)
