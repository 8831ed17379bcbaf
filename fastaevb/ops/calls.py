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
from .table import FACTOR, FLOAT, SCALE, SEED, TARGET, TOKEN, Op


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
    tensors = [_PREPARE[t.role](getattr(a, t.name), dtype) for t in op.tensors if t.role not in (SCALE, TOKEN)]
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
    if op is table.IWAE_LOSS:
        return _iwae_loss_forward(a)
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
    if op is table.IWAE_LOSS:
        return _iwae_loss_backward(grad_out, a)
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


def _decoder_args(a: SimpleNamespace, with_grad: bool, reduction: str = "sum", scale: float | None = None) -> tuple:
    """The argument tuple of the decoder op of ``sgvb_loss`` (its other part is the KL's) or of
    ``iwae_loss`` (its rows)."""
    scale = -a.ll_scale if scale is None else scale
    if a.likelihood == "gaussian":
        return (a.x, a.decoded, a.decoder_logvar, reduction, scale, with_grad)
    if a.likelihood in table.ERROR_POWERS:
        return (a.x, a.decoded, a.decoder_logvar, reduction, scale, with_grad, table.ERROR_POWERS[a.likelihood])
    extra = (None,) if a.likelihood == "bernoulli" else ()
    return (a.decoded, a.x, None, *extra, reduction, scale, with_grad, False)


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


def _kl_term(a: SimpleNamespace, with_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``w kl_scale`` times the KL term of ``a.kl_form`` (``table.SGVB_LOSS``) and its gradients:
    the KL entry's total or rows (with the plain gradients), then, for a thresholded form, the
    term and the factor of each gradient (a sign per total or row, an indicator per latent
    column) from those few values: ``(R,)`` or ``(J,)``, never a pass over the decoder's data."""
    form = a.kl_form
    rows = form in ("capacity", "capacity_datapoint")
    kl, grad_mu, grad_logvar = forward(
        table.GAUSSIAN_KL, (a.mu, a.logvar, "rows" if rows else "sum", a.kl_scale, with_grad)
    )
    if form == "kl":
        return kl, grad_mu, grad_logvar
    threshold = a.kl_scale * a.kl_threshold_scale  # in the scaled units of the entry's output
    if rows:
        excess = kl.sum() - threshold if form == "capacity" else kl - threshold
        value, factor = excess.abs().sum(), torch.sign(excess).unsqueeze(-1)
    else:  # free bits: the KL of each latent column summed over the rows
        mu, logvar = (t.to(kl.dtype) for t in (a.mu, a.logvar))
        columns = (mu * mu + logvar.exp() - 1 - logvar).sum(0) * (0.5 * a.kl_scale)
        kept = columns >= threshold  # as torch.clamp(min=...): the gradient passes at equality
        value, factor = torch.where(kept, columns, threshold).sum(), kept
    if with_grad:
        factor = factor.to(grad_mu.dtype)
        grad_mu.mul_(factor)
        grad_logvar.mul_(factor)
    return value, grad_mu, grad_logvar


def _fused_entry(op: Op, part: str, a: SimpleNamespace, *same_dtype: Tensor):
    """The backend's optional fused ``<op>_<part>`` entry where it computes ``a.decoded``'s dtype
    and the tensors ``same_dtype`` share it, else None (the op is then built from other entries)."""
    kernels = kernels_for(a.decoded.device)
    entry = getattr(kernels, f"{op.name}_{part}", None)
    dtype = a.decoded.dtype
    return (
        entry if entry is not None and dtype in kernels.DTYPES and all(t.dtype == dtype for t in same_dtype) else None
    )


def _sgvb_loss_forward(a: SimpleNamespace) -> tuple[Tensor, ...]:
    op = table.SGVB_LOSS
    a = _flat(a)
    fused = _fused_entry(op, "forward", a, a.mu) if a.kl_form == "kl" else None
    if fused is not None:
        outputs = empty_outputs(op, a, a.decoded.dtype)
        fused(*outputs, *_entry_args(op, a, a.decoded.dtype))
        return tuple(outputs)
    kl, grad_mu, grad_logvar = _kl_term(a, a.with_grad)
    decoder = table.DECODER_OPS[a.likelihood]
    ll, grad_decoded, *rest = forward(decoder, _decoder_args(a, a.with_grad))
    grad_decoder_logvar = rest[0] if _has_decoder_scale(a) else a.decoded.new_empty(0)
    return kl.add_(ll), grad_decoded, grad_decoder_logvar, grad_mu, grad_logvar


def _sgvb_loss_backward(grad_out: Tensor, a: SimpleNamespace) -> tuple[Tensor, ...]:
    a = _flat(a)
    if a.kl_form == "kl":
        grad_mu, grad_logvar = backward(table.GAUSSIAN_KL, grad_out, (a.mu, a.logvar, "sum", a.kl_scale, False))
    else:  # the factors need the forward's values: recomputed, then scaled
        _, grad_mu, grad_logvar = _kl_term(a, True)
        grad_mu, grad_logvar = grad_mu * grad_out, grad_logvar * grad_out
    grad_decoded, *rest = backward(table.DECODER_OPS[a.likelihood], grad_out, _decoder_args(a, False))
    grad_decoder_logvar = rest[0] if _has_decoder_scale(a) else a.decoded.new_empty(0)
    return grad_decoded, grad_decoder_logvar, grad_mu, grad_logvar


def _has_decoder_scale(a: SimpleNamespace) -> bool:
    return a.likelihood == "gaussian" or a.likelihood in table.ERROR_POWERS


# --- the importance-weighted bound: the decoder op's rows and backward, torch ops on the latents ---


def _iwae_weights(a: SimpleNamespace) -> tuple[Tensor, Tensor, Tensor]:
    """``(bound, w~, (z - mu) exp(-logvar / 2))`` of ``table.IWAE_LOSS``: the bound ``(B,)`` and the
    normalized weights ``(K, B)`` in the value dtype, from one decoder pass (its rows)."""
    samples = a.z.shape[0]
    ll = forward(table.DECODER_OPS[a.likelihood], _decoder_args(a, False, "rows", 1.0))[0]
    z, mu, logvar = (t.to(ll.dtype) for t in (a.z, a.mu, a.logvar))
    standard = (z - mu) * torch.exp(-0.5 * logvar)
    # log p(z) - log q(z|x) = 0.5 sum_j (eps^2 - z^2 + logvar): the log(2 pi) terms cancel
    log_w = ll.view(samples, -1) + 0.5 * (standard.square() - z.square() + logvar).sum(-1)
    top = torch.logsumexp(log_w, 0)
    return top - math.log(samples), torch.exp(log_w - top), standard


def _iwae_grads(a: SimpleNamespace, upstream: Tensor | float, weights: Tensor, standard: Tensor) -> list[Tensor]:
    """The gradients of ``table.IWAE_LOSS`` (placeholders where its shape rule says so), times the
    upstream gradient (0-d, or ``(B,)`` per datapoint for 'rows')."""
    coef = weights * (-a.scale * upstream)  # (K, B): d loss / d log w_k
    # the decoder term: its backward with one upstream value per row, coef_kb for row k B + b
    grad_decoded, *rest = backward(
        table.DECODER_OPS[a.likelihood], coef.reshape(-1), _decoder_args(a, False, "rows", 1.0)
    )
    grad_decoder_logvar = rest[0] if _has_decoder_scale(a) else a.decoded.new_empty(0)
    z, logvar = a.z.to(coef.dtype), a.logvar.to(coef.dtype)
    inv_std = torch.exp(-0.5 * logvar)
    c = coef.unsqueeze(-1)
    grads = [grad_decoded, grad_decoder_logvar, c * (standard * inv_std - z)]  # d(log p(z) - log q(z|x))/dz
    if a.gradient == "iwae":  # log q's parameters: d(-log q)/dmu = -(z - mu) exp(-v), /dv = 0.5 (1 - eps^2)
        grads += [-(c * standard).sum(0) * inv_std, (c * (1 - standard.square())).sum(0) * 0.5]
    else:
        grads += [a.mu.new_empty(0), a.mu.new_empty(0)]
    grads.append(-coef if a.gate is not None else a.mu.new_empty(0))
    dtype = a.decoded.dtype
    return [g if g.dtype == dtype else g.to(dtype) for g in grads]


def _iwae_loss_forward(a: SimpleNamespace) -> tuple[Tensor, ...]:
    op = table.IWAE_LOSS
    fused = _fused_entry(op, "forward", a, a.z, a.mu, a.logvar)
    if fused is not None:
        outputs = empty_outputs(op, a, a.decoded.dtype)
        fused(*outputs, *_entry_args(op, a, a.decoded.dtype))
        return tuple(outputs)
    bound, weights, standard = _iwae_weights(a)
    rows = bound * -a.scale
    value = rows if a.reduction == "rows" else rows.sum()
    if a.with_grad:
        return (value, *_iwae_grads(a, 1.0, weights, standard))
    return (value, *empty_outputs(op, a, a.decoded.dtype, range(1, len(op.outputs))))


def _iwae_loss_backward(grad_out: Tensor, a: SimpleNamespace) -> tuple[Tensor, ...]:
    op = table.IWAE_LOSS
    fused = _fused_entry(op, "backward", a, a.z, a.mu, a.logvar)
    if fused is not None:
        grads = _grad_outputs(op, a, a.decoded.dtype)
        fused(*grads, prepared(grad_out, a.decoded.dtype), *_entry_args(op, a, a.decoded.dtype))
        return tuple(grads)
    _, weights, standard = _iwae_weights(a)  # recomputed: a few values per datapoint, one decoder pass
    return tuple(_iwae_grads(a, grad_out.to(weights.dtype), weights, standard))
