"""Bernoulli decoder log-likelihood from probabilities (Appendix C.1), forward and backward.

Reference (fastaevb/reference.py): ``-F.binary_cross_entropy(p, x, reduction='none')``
(each log clamped at -100), summed per row. Row r of the (R, D) probs uses data row r % B.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastaevb._errors import check_range

from . import math as m
from ._common import DATA_TILE, acc_dtype, finish, grad_out_strides, grid_rows, target_view


@triton.jit(do_not_specialize=["R", "B", "D"])
def bernoulli_probs_fwd_kernel(
    p_ptr, x_ptr, out_ptr, grad_ptr, bad_p_ptr, bad_x_ptr,
    R: tl.int32, B: tl.int32, D: tl.int32, scale: tl.float64,
    ELEMENTS: tl.constexpr, WITH_GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if p_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows.to(tl.int64)[:, None] * D
    xbase = (rows % B).to(tl.int64)[:, None] * D
    acc = tl.zeros([BLOCK_R, BLOCK_D], ACC)
    bad_p = tl.zeros([BLOCK_R, BLOCK_D], tl.int32)
    bad_x = tl.zeros([BLOCK_R, BLOCK_D], tl.int32)
    s = m.scalar_as(scale, acc)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        off = base + cols[None, :]
        xmask = mask & (rows < B)[:, None]  # count each data value once, not once per sample
        p = tl.load(p_ptr + off, mask=mask, other=0.5).to(ACC)
        x = tl.load(x_ptr + xbase + cols[None, :], mask=mask, other=0).to(ACC)
        bad_p += tl.where(mask, m.out_of_unit_range(p), 0)
        bad_x += tl.where(xmask, m.out_of_unit_range(x), 0)
        ll, dll = m.bernoulli_probs(p, x)
        if ELEMENTS:
            tl.store(out_ptr + off, s * ll, mask=mask)
        else:
            acc += tl.where(mask, ll, 0.0)
        if WITH_GRAD:  # gradient of the scaled total, written in the same pass
            tl.store(grad_ptr + off, s * dll, mask=mask)
    if not ELEMENTS:
        tl.store(out_ptr + rows, s * tl.sum(acc, axis=1), mask=rmask)
    tl.store(bad_p_ptr + rows, tl.sum(bad_p, axis=1), mask=rmask)  # per-row counts, no atomics
    tl.store(bad_x_ptr + rows, tl.sum(bad_x, axis=1), mask=rmask)


@triton.jit(do_not_specialize=["go_sr", "go_sd", "R", "B", "D"])
def bernoulli_probs_bwd_kernel(
    go_ptr, go_sr: tl.int32, go_sd: tl.int32, p_ptr, x_ptr, grad_ptr,
    R: tl.int32, B: tl.int32, D: tl.int32, scale: tl.float64,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if p_ptr.dtype.element_ty == tl.float64 else tl.float32
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
        p = tl.load(p_ptr + off, mask=mask, other=0.5).to(ACC)
        x = tl.load(x_ptr + xbase + cols[None, :], mask=mask, other=0).to(ACC)
        # grad_out read as (R, D) through strides: elements (D, 1), rows (1, 0), total (0, 0)
        g = tl.load(go_ptr + r64 * go_sr + cols.to(tl.int64)[None, :] * go_sd, mask=mask, other=0.0).to(ACC)
        _, dll = m.bernoulli_probs(p, x)
        tl.store(grad_ptr + off, (g * s) * dll, mask=mask)


def bernoulli_probs_forward(probs, x, reduce, scale, with_grad):
    R, D = probs.shape
    x = target_view(x)
    elements = reduce == "elements"
    out = torch.empty_like(probs) if elements else torch.empty(R, dtype=acc_dtype(probs.dtype), device=probs.device)
    grad = torch.empty_like(probs) if with_grad else torch.empty(0, dtype=probs.dtype, device=probs.device)
    bad = torch.zeros(2, R, dtype=torch.int32, device=probs.device)
    if R:  # D == 0 still runs: rows get scale * 0 (NaN for a NaN scale)
        bernoulli_probs_fwd_kernel[grid_rows(R, DATA_TILE)](
            probs, x, out, grad, bad[0], bad[1], R, x.shape[0], D, float(scale),
            ELEMENTS=elements, WITH_GRAD=bool(with_grad), **DATA_TILE)
    # .tolist(): one device sync on GPU (the price of raising from inside the op)
    bad_p, bad_x = bad.sum(dim=1).tolist()
    check_range(bad_p, "input")
    check_range(bad_x, "target")
    return (out if elements else finish(out, reduce, probs.dtype, scale)), grad


def bernoulli_probs_backward(grad_out, probs, x, reduce, scale):
    R, D = probs.shape
    x = target_view(x)
    grad = torch.empty_like(probs)
    if R:  # D == 0 still runs: rows get scale * 0 (NaN for a NaN scale)
        go = grad_out.to(probs.dtype).contiguous()
        sr, sd = grad_out_strides(reduce, D)
        bernoulli_probs_bwd_kernel[grid_rows(R, DATA_TILE)](
            go, sr, sd, probs, x, grad, R, x.shape[0], D, float(scale), **DATA_TILE)
    return grad
