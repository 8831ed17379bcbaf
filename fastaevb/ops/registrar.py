"""From each row of ``ops.table``: the ``torch.library`` custom op ``fastaevb::<name>`` (schema,
fake kernel, autograd, autocast) with its backward op ``fastaevb::<name>_backward``, and the
eager ``torch.autograd.Function`` (the same kernel calls and backward rules without the
dispatcher, a few microseconds per call instead of tens).

Custom ops are ``torch.library.triton_op``s where Inductor can compile Triton kernels (Triton
installed and a CUDA device, or ``FASTAEVB_TRITON_OPS=1`` to trace on fake CUDA tensors): on CUDA
AOTAutograd then traces into the body, and the Triton launchers record their kernels through
``torch.library.wrap_triton``, so a compiled graph holds the kernels themselves. Elsewhere (and on
CPU tensors always) an op is one opaque node. Registering a triton_op imports ``triton`` and
``torch._inductor`` (about 1 s), hence plain ``custom_op``s where Inductor cannot use them.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from .. import _torch_private as private
from .. import backends
from . import autocast, calls, rules
from .table import OPS, Op

TRITON_OPS = backends._AVAILABLE["triton"] and (
    os.environ.get("FASTAEVB_TRITON_OPS") == "1" or torch.cuda.is_available()
)


def _on_compiled_triton(args) -> bool:
    """The op's tensors run on the Triton backend's compiled kernels (CUDA, no interpreter)."""
    device = next(a.device for a in args if isinstance(a, Tensor))
    return device.type == "cuda" and not backends._triton_interpreted()


_ANNOTATIONS = {"Tensor": Tensor, "Tensor?": Tensor | None, "str": str, "float": float, "bool": bool, "int": int}


def _signature(schema: str) -> inspect.Signature:
    """The Python signature of a schema string (``triton_op`` infers the schema from the body's
    signature, so the body, which takes ``*args``, is given the table's)."""
    args, results = schema[1:].split(") -> (")
    params = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=_ANNOTATIONS[kind])
        for kind, name in (arg.split(" ") for arg in args.split(", "))
    ]
    returns = tuple[tuple(Tensor for _ in results.rstrip(")").split(", "))]  # type: ignore[misc,valid-type]
    return inspect.Signature(params, return_annotation=returns)


def _define(name: str, schema: str, body: Callable):
    """``fastaevb::<name>`` over ``body`` (see the module docstring)."""
    qualname = f"fastaevb::{name}"
    body.__signature__ = _signature(schema)  # type: ignore[attr-defined]
    register = torch.library.triton_op if TRITON_OPS else torch.library.custom_op
    op: Any = register(qualname, body, mutates_args=(), schema=schema)
    op.register_kernel("cpu")(body)
    if TRITON_OPS:
        private.narrow_triton_op_decomposition(op, _on_compiled_triton)
        if torch.cuda.is_available() and not backends._triton_interpreted():
            private.name_triton_kernels(qualname, list(backends.kernels("triton").KERNELS))
    return op


def _fake(op: Op, outputs=None) -> Callable:
    def fake(*args):
        a = op.args(args)
        return tuple(calls.empty_outputs(op, a, getattr(a, op.main).dtype, outputs))

    return fake


def _backward_schema(op: Op) -> str:
    """``<name>_backward``: the upstream gradient(s) first, then the op's tensors and entry scalars."""
    tensors = ", ".join(t.schema for t in op.tensors)
    scalars = ", ".join(s.schema for s in op.backward_scalars)
    if op.kind == "sample":
        upstream = ", ".join(f"Tensor? grad_{o.name}" for o in op.outputs)
        return f"({upstream}, {tensors}, {scalars}) -> (Tensor, Tensor)"
    grads = ", ".join("Tensor" for _ in op.differentiable)
    return f"(Tensor grad_out, {tensors}, {scalars}) -> ({grads})"


def _backward_args(op: Op, scalars: tuple) -> tuple:
    """The scalars the backward op takes, out of the forward op's (which end with them)."""
    kept = {s.name for s in op.backward_scalars}
    return tuple(v for s, v in zip(op.scalars, scalars, strict=True) if s.name in kept)


def _loss_backward_call(op: Op) -> Callable:
    """``(grad_out, *tensors, *forward scalars) -> grads``, computed by ``calls.backward``."""

    def call(grad_out, *rest):
        tensors, scalars = rest[: len(op.tensors)], rest[len(op.tensors) :]
        return calls.backward(op, grad_out, (*tensors, *scalars))

    return call


# --- custom ops ----------------------------------------------------------------------------------


def _custom_loss_op(op: Op):
    forward = _define(op.name, op.schema, lambda *args: calls.forward(op, args))
    forward.register_fake(_fake(op))

    def backward_body(grad_out, *rest):
        tensors, scalars = rest[: len(op.tensors)], rest[len(op.tensors) :]
        full = _full_scalars(op, scalars)
        return calls.backward(op, grad_out, (*tensors, *full))

    backward = _define(f"{op.name}_backward", _backward_schema(op), backward_body)

    def backward_fake(grad_out, *rest):
        tensors, scalars = rest[: len(op.tensors)], rest[len(op.tensors) :]
        a = op.args((*tensors, *_full_scalars(op, scalars)))
        return tuple(calls._grad_outputs(op, a, getattr(a, op.main).dtype))

    backward.register_fake(backward_fake)

    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*output[1:])
        rules.loss_setup(ctx, op, inputs, output, lambda ctx, grads: ctx.save_for_backward(*grads))

    def grad(ctx, grad_out, *_):
        def recompute(grad_out, *rest):
            tensors, scalars = rest[: len(op.tensors)], rest[len(op.tensors) :]
            return backward(grad_out, *tensors, *_backward_args(op, scalars))

        return rules.loss_backward(ctx, op, grad_out, lambda ctx, g: rules.scaled(ctx.saved_tensors, g), recompute)

    forward.register_autograd(grad, setup_context=setup_context)
    return forward


def _full_scalars(op: Op, entry: tuple) -> tuple:
    """The forward op's scalars from the backward op's (``with_grad`` is False there, and a
    scalar the backward does not take is unused by it)."""
    given = {s.name: v for s, v in zip(op.backward_scalars, entry, strict=True)}
    return tuple(given.get(s.name, False) for s in op.scalars)


def _custom_sample_op(op: Op):
    forward = _define(op.name, op.schema, lambda *args: calls.forward(op, args))
    forward.register_fake(_fake(op))
    n = len(op.tensors)

    def backward_body(*args):
        upstream, rest = args[: len(op.outputs)], args[len(op.outputs) :]
        full = (*rest[:n], *_full_scalars(op, rest[n:]))
        return calls.sample_backward(op, upstream, full)

    backward = _define(f"{op.name}_backward", _backward_schema(op), backward_body)

    def backward_fake(*args):
        a = op.args((*args[len(op.outputs) :][:n], *_full_scalars(op, args[len(op.outputs) + n :])))
        return torch.empty_like(a.mu), torch.empty_like(a.logvar)

    backward.register_fake(backward_fake)

    def setup_context(ctx, inputs, output):
        sample_setup(ctx, op, inputs)

    def grad(ctx, *upstream):
        return sample_grads(
            ctx,
            op,
            upstream,
            lambda *a: backward(*a[: len(op.outputs) + n], *_backward_args(op, a[len(op.outputs) + n :])),
        )

    forward.register_autograd(grad, setup_context=setup_context)
    return forward


def sample_setup(ctx, op: Op, args: tuple) -> None:
    ctx.save_for_backward(*args[: len(op.tensors)])
    ctx.scalars = tuple(args[len(op.tensors) :])
    ctx.a = SimpleNamespace(**dict(zip([s.name for s in op.scalars], ctx.scalars, strict=True)))
    ctx.set_materialize_grads(False)


def sample_grads(ctx, op: Op, upstream: tuple, backward_call: Callable):
    """``(grad_mu, grad_logvar, None, ...)`` from the upstream gradients; placeholders (no KL, no
    log-weights) may still receive (empty) gradients: they are dropped."""
    grad_z, grad_kl, grad_log_q, grad_log_p = upstream
    if not ctx.a.with_kl:
        grad_kl = None
    if not ctx.a.log_weights:
        grad_log_q = grad_log_p = None
    nones = (None,) * (len(ctx.needs_input_grad) - 2)
    if grad_z is None and grad_kl is None and grad_log_q is None and grad_log_p is None:
        return (None, None, *nones)
    grad_mu, grad_logvar = backward_call(grad_z, grad_kl, grad_log_q, grad_log_p, *ctx.saved_tensors, *ctx.scalars)
    return (grad_mu, grad_logvar, *nones)


# --- eager autograd.Functions --------------------------------------------------------------------


def _eager_loss_function(op: Op) -> type[torch.autograd.Function]:
    backward_call = _loss_backward_call(op)

    def save(ctx, grads):
        ctx.grads = grads

    def forward(ctx, *args):
        outputs = calls.forward(op, args)
        rules.loss_setup(ctx, op, args, outputs, save)
        return outputs[0]

    def backward(ctx, grad_out):
        return rules.loss_backward(ctx, op, grad_out, rules.take_grads, backward_call)

    return type(
        op.name, (torch.autograd.Function,), dict(forward=staticmethod(forward), backward=staticmethod(backward))
    )


def _eager_sample_function(op: Op) -> type[torch.autograd.Function]:
    def forward(ctx, *args):
        outputs = calls.forward(op, args)
        sample_setup(ctx, op, args)
        z, kl, log_q, log_p = outputs
        if not ctx.a.log_weights:
            ctx.mark_non_differentiable(log_q, log_p)
        if not ctx.a.with_kl:
            ctx.mark_non_differentiable(kl)
        return outputs

    def backward(ctx, *upstream):
        def call(*a):
            return calls.sample_backward(op, a[: len(op.outputs)], a[len(op.outputs) :])

        return sample_grads(ctx, op, upstream, call)

    return type(
        op.name, (torch.autograd.Function,), dict(forward=staticmethod(forward), backward=staticmethod(backward))
    )


CUSTOM = {name: (_custom_sample_op if op.kind == "sample" else _custom_loss_op)(op) for name, op in OPS.items()}
EAGER = {
    name: (_eager_sample_function if op.kind == "sample" else _eager_loss_function)(op) for name, op in OPS.items()
}


def _register_autocast() -> None:
    """float32 under ``torch.autocast``, as torch's losses (the policy table is ``ops.autocast``)."""
    for op in OPS.values():
        if op.float32_under_autocast:
            for device_type in autocast.DEVICE_TYPES:
                torch.library.register_autocast(f"fastaevb::{op.name}", device_type, torch.float32)


_register_autocast()
