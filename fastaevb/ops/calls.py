"""The kernel call of every op, shared by both call paths (the eager ``autograd.Function`` and the
``torch.library`` custom op): pick the backend module for the device, bring the tensors to a
dtype it computes in, allocate the outputs from the op's shape rule (``ops.table``), call the
backend's ``<op>_forward`` / ``<op>_backward`` entry, which writes into them, and give the
outputs back in the dtypes the op declares (gradients and elementwise values in the input dtype,
sums in its value dtype: float32 for half inputs). The backend contract is ``docs/backends.md``.
"""

from __future__ import annotations

import math
from types import ModuleType, SimpleNamespace

import torch
from torch import Tensor

from .. import backends
from .._dtypes import value_dtype
from . import table
from .table import FACTOR, FLOAT, SCALE, SEED, TARGET, Op


def kernels_for(device: torch.device) -> ModuleType:
    return backends.kernels(backends.resolve(device))


def compute_dtype(kernels: ModuleType, dtype: torch.dtype) -> torch.dtype:
    """Backends compute in their native dtypes; anything else (half on CPU) runs in float32."""
    return dtype if dtype in kernels.DTYPES else torch.float32


# --- the output-shape rule, for the fakes and for every backend --------------------------------


def output_specs(op: Op, a: SimpleNamespace, dtype: torch.dtype) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """``(shape, dtype)`` of each output of ``op`` for arguments ``a`` whose main tensor is of ``dtype``."""
    return [(o.shape(a), value_dtype(dtype) if o.summed(a) else dtype) for o in op.outputs]


def empty_outputs(op: Op, a: SimpleNamespace, dtype: torch.dtype, outputs=None) -> list[Tensor]:
    """Fresh outputs (one tensor per slot: custom ops may not return one tensor twice)."""
    like: Tensor = getattr(a, op.main)
    specs = output_specs(op, a, dtype)
    if outputs is not None:
        specs = [specs[i] for i in outputs]
    return [like.new_empty(shape, dtype=dt) for shape, dt in specs]


# --- preparing the inputs ------------------------------------------------------------------------


def prepared(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    # the dtype test skips a no-op .to(): a few microseconds each, several per call
    if t is None:
        return None
    return (t if t.dtype == dtype else t.to(dtype)).contiguous()


def _target(t: Tensor, dtype: torch.dtype) -> Tensor:
    if t.dtype == torch.bool:
        return t.contiguous().view(torch.uint8)
    return t.contiguous() if t.dtype == torch.uint8 else prepared(t, dtype)  # type: ignore[return-value]


def _factor(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A BCE ``weight`` / ``pos_weight``: ``(R, D)``, often a broadcast view (column stride 0 or 1),
    kept as it lies (no copy) in the value dtype, every backend's accumulation dtype."""
    if t is None:
        return None
    want = value_dtype(dtype)
    return t if t.dtype == want else t.to(want)


def _seed(t: Tensor | None) -> int | Tensor:
    """A Python int, or, for a seed drawn on a CUDA device, the device tensor itself (the Triton
    kernels read it there: no host sync, CUDA-graph safe)."""
    if t is None:
        return 0
    return t if t.is_cuda else int(t)


_PREPARE = {FLOAT: prepared, TARGET: _target, FACTOR: _factor, SEED: lambda t, dtype: _seed(t)}


def _entry_args(op: Op, a: SimpleNamespace, dtype: torch.dtype) -> list:
    tensors = [_PREPARE[t.role](getattr(a, t.name), dtype) for t in op.tensors if t.role != SCALE]
    return tensors + [getattr(a, name) for name in op.entry_scalars]


def weight_value(name: str, t: Tensor) -> float:
    """A 0-d weight tensor's value, which must be a finite number >= 0."""
    value = float(t)
    if not (0.0 <= value < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _arguments(op: Op, args: tuple) -> SimpleNamespace:
    """The op's arguments by name, each SCALE tensor multiplied into its scalar (one host read of
    a 0-d tensor inside the op, where torch.compile does not see it)."""
    a = op.args(args)
    for t in op.tensors:
        if t.role == SCALE and getattr(a, t.name) is not None:
            setattr(a, t.scales, getattr(a, t.scales) * weight_value(t.name, getattr(a, t.name)))  # type: ignore[arg-type]
            setattr(a, t.name, None)
    return a


def _restored(outputs: list[Tensor], op: Op, a: SimpleNamespace, dtype: torch.dtype) -> tuple[Tensor, ...]:
    if getattr(a, op.main).dtype == dtype:
        return tuple(outputs)
    want = output_specs(op, a, getattr(a, op.main).dtype)
    return tuple(t if t.dtype == dt else t.to(dt) for t, (_, dt) in zip(outputs, want, strict=True))


# --- forward and backward ------------------------------------------------------------------------


def forward(op: Op, args: tuple) -> tuple[Tensor, ...]:
    """All outputs of ``op`` for its arguments ``args`` (in the table's order)."""
    a = _arguments(op, args)
    if op is table.SGVB_LOSS:
        return _sgvb_loss_forward(a)
    main: Tensor = getattr(a, op.main)
    kernels = kernels_for(main.device)
    dtype = compute_dtype(kernels, main.dtype)
    outputs = empty_outputs(op, a, dtype)
    getattr(kernels, f"{op.name}_forward")(*outputs, *_entry_args(op, a, dtype))
    return _restored(outputs, op, a, dtype)


def _grad_outputs(op: Op, a: SimpleNamespace, dtype: torch.dtype) -> list[Tensor]:
    """The gradients backward writes: the forward's gradient outputs as if ``with_grad`` were set."""
    return empty_outputs(op, SimpleNamespace(**{**vars(a), "with_grad": True}), dtype, range(1, len(op.outputs)))


def backward(op: Op, grad_out: Tensor, args: tuple) -> tuple[Tensor, ...]:
    """``grad_out`` times the gradients of a loss op's value, one per differentiable tensor
    (an empty placeholder where not wanted)."""
    a = _arguments(op, args)
    if op is table.SGVB_LOSS:
        return _sgvb_loss_backward(grad_out, a)
    main: Tensor = getattr(a, op.main)
    kernels = kernels_for(main.device)
    dtype = compute_dtype(kernels, main.dtype)
    grads = _grad_outputs(op, a, dtype)
    getattr(kernels, f"{op.name}_backward")(*grads, prepared(grad_out, dtype), *_entry_args(op, a, dtype))
    return tuple(g if g.dtype == main.dtype else g.to(main.dtype) for g in grads)


def sample_backward(op: Op, upstream: tuple[Tensor | None, ...], args: tuple) -> tuple[Tensor, Tensor]:
    """``(grad_mu, grad_logvar)`` of the sample op from the upstream gradients of its outputs
    (None for an output nobody differentiated)."""
    a = op.args(args)
    kernels = kernels_for(a.mu.device)
    dtype = compute_dtype(kernels, a.mu.dtype)
    grads = [a.mu.new_empty(a.mu.shape, dtype=dtype), a.logvar.new_empty(a.logvar.shape, dtype=dtype)]
    upstream = tuple(prepared(g, dtype) for g in upstream)
    getattr(kernels, f"{op.name}_backward")(*grads, *upstream, *_entry_args(op, a, dtype))
    return grads[0].to(a.mu.dtype), grads[1].to(a.mu.dtype)  # no-ops unless computed in float32


# --- the whole loss of a step: the fused entry, or the KL and decoder entries one after the other ---


def _parts(a: SimpleNamespace, with_grad: bool) -> tuple[tuple, tuple]:
    """The argument tuples of the KL and decoder ops that make up ``sgvb_loss``."""
    kl = (a.mu, a.logvar, "sum", a.kl_scale, with_grad)
    if a.likelihood == "gaussian":
        return kl, (a.x, a.decoded, a.decoder_logvar, "sum", -a.ll_scale, with_grad)
    if a.likelihood in table.ERROR_POWERS:
        return kl, (a.x, a.decoded, a.decoder_logvar, "sum", -a.ll_scale, with_grad, table.ERROR_POWERS[a.likelihood])
    extra = (None,) if a.likelihood == "bernoulli" else ()
    return kl, (a.decoded, a.x, None, *extra, "sum", -a.ll_scale, with_grad, False)


def flat_loss_inputs(decoded: Tensor, x: Tensor, decoder_logvar: Tensor | None) -> tuple:
    """``decoded`` as ``(R, D)`` rows of ``x`` as ``(B, D)``, a decoder log-variance as ``(R, D)`` or ``(1,)``
    (the sgvb_loss op takes any layout the public API validated; its kernels take rows)."""
    batch = x.shape[0]
    event = x.numel() // batch if batch else math.prod(x.shape[1:])
    rows = decoded.numel() // event if event else math.prod(decoded.shape[:-1])
    if decoder_logvar is not None:
        decoder_logvar = (
            decoder_logvar.reshape(1) if decoder_logvar.numel() == 1 else decoder_logvar.reshape(rows, event)
        )
    return decoded.reshape(rows, event), x.reshape(batch, event), decoder_logvar


def _flat(a: SimpleNamespace) -> SimpleNamespace:
    decoded, x, decoder_logvar = flat_loss_inputs(a.decoded, a.x, a.decoder_logvar)
    return SimpleNamespace(**{**vars(a), "decoded": decoded, "x": x, "decoder_logvar": decoder_logvar})


def _sgvb_loss_forward(a: SimpleNamespace) -> tuple[Tensor, ...]:
    op = table.SGVB_LOSS
    a = _flat(a)
    kernels = kernels_for(a.decoded.device)
    fused = getattr(kernels, "sgvb_loss_forward", None)
    if fused is not None and a.decoded.dtype in kernels.DTYPES and a.mu.dtype == a.decoded.dtype:
        outputs = empty_outputs(op, a, a.decoded.dtype)
        fused(*outputs, *_entry_args(op, a, a.decoded.dtype))
        return tuple(outputs)
    kl_args, decoder_args = _parts(a, a.with_grad)
    kl, grad_mu, grad_logvar = forward(table.GAUSSIAN_KL, kl_args)
    decoder = table.DECODER_OPS[a.likelihood]
    ll, grad_decoded, *rest = forward(decoder, decoder_args)
    grad_decoder_logvar = rest[0] if _has_decoder_scale(a) else a.decoded.new_empty(0)
    return kl.add_(ll), grad_decoded, grad_decoder_logvar, grad_mu, grad_logvar


def _sgvb_loss_backward(grad_out: Tensor, a: SimpleNamespace) -> tuple[Tensor, ...]:
    a = _flat(a)
    kl_args, decoder_args = _parts(a, False)
    grad_mu, grad_logvar = backward(table.GAUSSIAN_KL, grad_out, kl_args)
    grad_decoded, *rest = backward(table.DECODER_OPS[a.likelihood], grad_out, decoder_args)
    grad_decoder_logvar = rest[0] if _has_decoder_scale(a) else a.decoded.new_empty(0)
    return grad_decoded, grad_decoder_logvar, grad_mu, grad_logvar


def _has_decoder_scale(a: SimpleNamespace) -> bool:
    return a.likelihood == "gaussian" or a.likelihood in table.ERROR_POWERS
