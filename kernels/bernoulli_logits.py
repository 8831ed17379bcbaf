"""Bernoulli decoder log-likelihood from logits (Appendix C.1), forward and backward.

Reference (fastaevb/reference.py): ``x * l + logsigmoid(-l)`` elementwise, summed per row.
Row r of the (R, D) logits uses data row r % B (x broadcast over leading sample dims).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastaevb._errors import check_range

from . import math as m
from ._common import DATA_TILE, acc_dtype, finish, grad_out_strides, grid_rows, target_view


@triton.jit(do_not_specialize=["R", "B", "D"])
def bernoulli_logits_fwd_kernel(
    l_ptr, x_ptr, out_ptr, grad_ptr, bad_ptr,
    R: tl.int32, B: tl.int32, D: tl.int32, scale: tl.float64,
    ELEMENTS: tl.constexpr, WITH_GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if l_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows.to(tl.int64)[:, None] * D
    xbase = (rows % B).to(tl.int64)[:, None] * D
    acc = tl.zeros([BLOCK_R, BLOCK_D], ACC)
    bad = tl.zeros([BLOCK_R, BLOCK_D], tl.int32)
    s = m.scalar_as(scale, acc)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        off = base + cols[None, :]
        xmask = mask & (rows < B)[:, None]  # count each data value once, not once per sample
        l = tl.load(l_ptr + off, mask=mask, other=0.0).to(ACC)
        x = tl.load(x_ptr + xbase + cols[None, :], mask=mask, other=0).to(ACC)
        bad += tl.where(xmask, m.out_of_unit_range(x), 0)
        ll, dll = m.bernoulli_logits(l, x)
        if ELEMENTS:
            tl.store(out_ptr + off, s * ll, mask=mask)
        else:
            acc += tl.where(mask, ll, 0.0)
        if WITH_GRAD:  # gradient of the scaled total, written in the same pass
            tl.store(grad_ptr + off, s * dll, mask=mask)
    if not ELEMENTS:
        tl.store(out_ptr + rows, s * tl.sum(acc, axis=1), mask=rmask)
    tl.store(bad_ptr + rows, tl.sum(bad, axis=1), mask=rmask)  # per-row counts, no atomics


@triton.jit(do_not_specialize=["go_sr", "go_sd", "R", "B", "D"])
def bernoulli_logits_bwd_kernel(
    go_ptr, go_sr: tl.int32, go_sd: tl.int32, l_ptr, x_ptr, grad_ptr,
    R: tl.int32, B: tl.int32, D: tl.int32, scale: tl.float64,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if l_ptr.dtype.element_ty == tl.float64 else tl.float32
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
        l = tl.load(l_ptr + off, mask=mask, other=0.0).to(ACC)
        x = tl.load(x_ptr + xbase + cols[None, :], mask=mask, other=0).to(ACC)
        # grad_out read as (R, D) through strides: elements (D, 1), rows (1, 0), total (0, 0)
        g = tl.load(go_ptr + r64 * go_sr + cols.to(tl.int64)[None, :] * go_sd, mask=mask, other=0.0).to(ACC)
        _, dll = m.bernoulli_logits(l, x)
        tl.store(grad_ptr + off, (g * s) * dll, mask=mask)


def bernoulli_logits_forward(logits, x, reduce, scale, with_grad):
    R, D = logits.shape
    x = target_view(x)
    elements = reduce == "elements"
    out = torch.empty_like(logits) if elements else torch.empty(R, dtype=acc_dtype(logits.dtype), device=logits.device)
    grad = torch.empty_like(logits) if with_grad else torch.empty(0, dtype=logits.dtype, device=logits.device)
    bad = torch.zeros(R, dtype=torch.int32, device=logits.device)
    if R:  # D == 0 still runs: rows get scale * 0 (NaN for a NaN scale)
        bernoulli_logits_fwd_kernel[grid_rows(R, DATA_TILE)](
            logits, x, out, grad, bad, R, x.shape[0], D, float(scale),
            ELEMENTS=elements, WITH_GRAD=bool(with_grad), **DATA_TILE)
    # int(): a device sync on GPU (the price of raising from inside the op; one scalar)
    check_range(int(bad.sum()), "target")
    return (out if elements else finish(out, reduce, logits.dtype, scale)), grad


def bernoulli_logits_backward(grad_out, logits, x, reduce, scale):
    R, D = logits.shape
    x = target_view(x)
    grad = torch.empty_like(logits)
    if R:  # D == 0 still runs: rows get scale * 0 (NaN for a NaN scale)
        go = grad_out.to(logits.dtype).contiguous()
        sr, sd = grad_out_strides(reduce, D)
        bernoulli_logits_bwd_kernel[grid_rows(R, DATA_TILE)](
            go, sr, sd, logits, x, grad, R, x.shape[0], D, float(scale), **DATA_TILE)
    return grad
