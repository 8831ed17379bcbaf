"""Bernoulli decoder log-likelihood (Appendix C.1), from logits or from probabilities,
forward and backward: one kernel pair, the parameterization a constexpr ``PROBS``.

Reference (fastaevb/reference.py), elementwise, summed per row:
  logits (PROBS=False): ``x * l + logsigmoid(-l)``; only targets are range-checked.
  probs  (PROBS=True):  ``-F.binary_cross_entropy(p, x, reduction='none')`` (each log clamped
                        at -100); probs outside [0, 1] are counted too.
Row r of the (R, D) input uses data row r % B (x broadcast over leading sample dims).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastaevb._errors import check_range

from . import math as m
from ._common import DATA_TILE, acc_dtype, finish, grad_out_strides, grid_rows, target_view


@triton.jit
def _load_input(ptr, mask, PROBS: tl.constexpr):
    """The logits / probs tile; masked lanes get a harmless value (0 logit, p = 0.5)."""
    if PROBS:
        return tl.load(ptr, mask=mask, other=0.5)
    else:
        return tl.load(ptr, mask=mask, other=0.0)


@triton.jit
def _term(v, x, PROBS: tl.constexpr):
    """Elementwise ``(ll, d ll / d v)`` of the parameterization (formulas in math.py)."""
    if PROBS:
        return m.bernoulli_probs(v, x)
    else:
        return m.bernoulli_logits(v, x)


@triton.jit(do_not_specialize=["R", "B", "D"])
def bernoulli_fwd_kernel(
    in_ptr, x_ptr, out_ptr, grad_ptr, bad_in_ptr, bad_x_ptr,
    R: tl.int32, B: tl.int32, D: tl.int32, scale: tl.float64,
    PROBS: tl.constexpr, ELEMENTS: tl.constexpr, WITH_GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if in_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows.to(tl.int64)[:, None] * D
    xbase = (rows % B).to(tl.int64)[:, None] * D
    acc = tl.zeros([BLOCK_R, BLOCK_D], ACC)
    bad_in = tl.zeros([BLOCK_R, BLOCK_D], tl.int32)
    bad_x = tl.zeros([BLOCK_R, BLOCK_D], tl.int32)
    s = m.scalar_as(scale, acc)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        off = base + cols[None, :]
        xmask = mask & (rows < B)[:, None]  # count each data value once, not once per sample
        v = _load_input(in_ptr + off, mask, PROBS).to(ACC)
        x = tl.load(x_ptr + xbase + cols[None, :], mask=mask, other=0).to(ACC)
        if PROBS:  # logits: any real value is valid
            bad_in += tl.where(mask, m.out_of_unit_range(v), 0)
        bad_x += tl.where(xmask, m.out_of_unit_range(x), 0)
        ll, dll = _term(v, x, PROBS)
        if ELEMENTS:
            tl.store(out_ptr + off, s * ll, mask=mask)
        else:
            acc += tl.where(mask, ll, 0.0)
        if WITH_GRAD:  # gradient of the scaled total, written in the same pass
            tl.store(grad_ptr + off, s * dll, mask=mask)
    if not ELEMENTS:
        tl.store(out_ptr + rows, s * tl.sum(acc, axis=1), mask=rmask)
    # per-row counts, no atomics
    if PROBS:
        tl.store(bad_in_ptr + rows, tl.sum(bad_in, axis=1), mask=rmask)
    tl.store(bad_x_ptr + rows, tl.sum(bad_x, axis=1), mask=rmask)


@triton.jit(do_not_specialize=["go_sr", "go_sd", "R", "B", "D"])
def bernoulli_bwd_kernel(
    go_ptr, go_sr: tl.int32, go_sd: tl.int32, in_ptr, x_ptr, grad_ptr,
    R: tl.int32, B: tl.int32, D: tl.int32, scale: tl.float64,
    PROBS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if in_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    r64 = rows.to(tl.int64)[:, None]
    base = r64 * D
    xbase = (rows % B).to(tl.int64)[:, None] * D
    s = m.scalar_as(scale, tl.zeros([1], ACC))
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        off = base + cols[None, :]
        v = _load_input(in_ptr + off, mask, PROBS).to(ACC)
        x = tl.load(x_ptr + xbase + cols[None, :], mask=mask, other=0).to(ACC)
        # grad_out read as (R, D) through strides: elements (D, 1), rows (1, 0), total (0, 0)
        g = tl.load(go_ptr + r64 * go_sr + cols.to(tl.int64)[None, :] * go_sd, mask=mask, other=0.0).to(ACC)
        _, dll = _term(v, x, PROBS)
        tl.store(grad_ptr + off, (g * s) * dll, mask=mask)


def _forward(inp, x, reduce, scale, with_grad, probs: bool):
    """Launch the forward; returns ``(out, grad, bad)`` with ``bad`` the per-row counts,
    shape (2, R) (input, target) for probs and (1, R) (target) for logits."""
    R, D = inp.shape
    x = target_view(x)
    elements = reduce == "elements"
    out = torch.empty_like(inp) if elements else torch.empty(R, dtype=acc_dtype(inp.dtype), device=inp.device)
    grad = torch.empty_like(inp) if with_grad else torch.empty(0, dtype=inp.dtype, device=inp.device)
    bad = torch.zeros(2 if probs else 1, R, dtype=torch.int32, device=inp.device)
    if R:  # D == 0 still runs: rows get scale * 0 (NaN for a NaN scale)
        # bad[0] is the input count (written for probs only), bad[-1] the target count
        bernoulli_fwd_kernel[grid_rows(R, DATA_TILE)](
            inp, x, out, grad, bad[0], bad[-1], R, x.shape[0], D, float(scale),
            PROBS=probs, ELEMENTS=elements, WITH_GRAD=bool(with_grad), **DATA_TILE)
    return (out if elements else finish(out, reduce, inp.dtype, scale)), grad, bad


def _backward(grad_out, inp, x, reduce, scale, probs: bool):
    R, D = inp.shape
    x = target_view(x)
    grad = torch.empty_like(inp)
    if R:  # D == 0 still runs: rows get scale * 0 (NaN for a NaN scale)
        go = grad_out.to(inp.dtype).contiguous()
        sr, sd = grad_out_strides(reduce, D)
        bernoulli_bwd_kernel[grid_rows(R, DATA_TILE)](
            go, sr, sd, inp, x, grad, R, x.shape[0], D, float(scale), PROBS=probs, **DATA_TILE)
    return grad


def bernoulli_logits_forward(logits, x, reduce, scale, with_grad):
    out, grad, bad = _forward(logits, x, reduce, scale, with_grad, probs=False)
    # int(): a device sync on GPU (the price of raising from inside the op; one scalar)
    check_range(int(bad.sum()), "target")
    return out, grad


def bernoulli_logits_backward(grad_out, logits, x, reduce, scale):
    return _backward(grad_out, logits, x, reduce, scale, probs=False)


def bernoulli_probs_forward(probs, x, reduce, scale, with_grad):
    out, grad, bad = _forward(probs, x, reduce, scale, with_grad, probs=True)
    # .tolist(): one device sync on GPU (the price of raising from inside the op)
    bad_p, bad_x = bad.sum(dim=1).tolist()
    check_range(bad_p, "input")
    check_range(bad_x, "target")
    return out, grad


def bernoulli_probs_backward(grad_out, probs, x, reduce, scale):
    return _backward(grad_out, probs, x, reduce, scale, probs=True)
