"""Gaussian decoder log-likelihood (Appendix C.2), forward and backward.

Reference (fastaevb/reference.py): ``-0.5 * (log 2pi + v + (x - m)**2 * exp(-v))`` summed per
row. ``mean`` is (R, D) and uses data row r % B; ``logvar`` is (R, D) or one shared value (1,).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import math as m
from ._common import DATA_TILE, acc_dtype, finish, grid_rows


@triton.jit
def _load_tile(x_ptr, m_ptr, v_ptr, off, xoff, mask, SHARED_V: tl.constexpr, ACC: tl.constexpr):
    x = tl.load(x_ptr + xoff, mask=mask, other=0.0).to(ACC)
    mean = tl.load(m_ptr + off, mask=mask, other=0.0).to(ACC)
    if SHARED_V:
        v = tl.load(v_ptr).to(ACC) + tl.zeros(mean.shape, ACC)
    else:
        v = tl.load(v_ptr + off, mask=mask, other=0.0).to(ACC)
    return x, mean, v


@triton.jit(do_not_specialize=["R", "B", "D"])
def gaussian_fwd_kernel(
    x_ptr, m_ptr, v_ptr, out_ptr, gm_ptr, gv_ptr,
    R: tl.int32, B: tl.int32, D: tl.int32, scale: tl.float64,
    SHARED_V: tl.constexpr, WITH_GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if m_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows.to(tl.int64)[:, None] * D
    xbase = (rows % B).to(tl.int64)[:, None] * D
    acc = tl.zeros([BLOCK_R, BLOCK_D], ACC)
    acc_gv = tl.zeros([BLOCK_R, BLOCK_D], ACC)  # shared logvar: per-row partials of its gradient
    s = m.scalar_as(scale, acc)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        off = base + cols[None, :]
        x, mean, v = _load_tile(x_ptr, m_ptr, v_ptr, off, xbase + cols[None, :], mask, SHARED_V, ACC)
        ll, dm, dv = m.gaussian_ll(x, mean, v)
        acc += tl.where(mask, ll, 0.0)
        if WITH_GRAD:  # gradient of the scaled total, written in the same pass
            tl.store(gm_ptr + off, s * dm, mask=mask)
            if SHARED_V:
                acc_gv += tl.where(mask, dv, 0.0)
            else:
                tl.store(gv_ptr + off, s * dv, mask=mask)
    tl.store(out_ptr + rows, s * tl.sum(acc, axis=1), mask=rmask)
    if WITH_GRAD and SHARED_V:
        tl.store(gv_ptr + rows, s * tl.sum(acc_gv, axis=1), mask=rmask)


@triton.jit(do_not_specialize=["go_sr", "R", "B", "D"])
def gaussian_bwd_kernel(
    go_ptr, go_sr: tl.int32, x_ptr, m_ptr, v_ptr, gm_ptr, gv_ptr,
    R: tl.int32, B: tl.int32, D: tl.int32, scale: tl.float64,
    SHARED_V: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if m_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows.to(tl.int64)[:, None] * D
    xbase = (rows % B).to(tl.int64)[:, None] * D
    # grad_out is (R,) for 'rows' (stride 1) or 0-d for 'total' (stride 0)
    g = tl.load(go_ptr + rows.to(tl.int64) * go_sr, mask=rmask, other=0.0).to(ACC)
    g = (g * m.scalar_as(scale, g))[:, None]
    acc_gv = tl.zeros([BLOCK_R, BLOCK_D], ACC)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        off = base + cols[None, :]
        x, mean, v = _load_tile(x_ptr, m_ptr, v_ptr, off, xbase + cols[None, :], mask, SHARED_V, ACC)
        _, dm, dv = m.gaussian_ll(x, mean, v)
        tl.store(gm_ptr + off, g * dm, mask=mask)
        if SHARED_V:
            acc_gv += tl.where(mask, g * dv, 0.0)
        else:
            tl.store(gv_ptr + off, g * dv, mask=mask)
    if SHARED_V:
        tl.store(gv_ptr + rows, tl.sum(acc_gv, axis=1), mask=rmask)


def _shared_grad(partials, logvar):
    # one shared log-variance: its gradient is the float64 sum of the per-row partials
    return partials.sum(dtype=torch.float64).to(logvar.dtype).reshape(logvar.shape)


def gaussian_forward(x, mean, logvar, reduce, scale, with_grad):
    R, D = mean.shape
    shared = logvar.numel() == 1 and logvar.shape != mean.shape
    acc = acc_dtype(mean.dtype)
    partial = torch.empty(R, dtype=acc, device=mean.device)
    # two distinct empty tensors: custom-op outputs must not alias each other
    gm, gv = (torch.empty(0, dtype=mean.dtype, device=mean.device) for _ in range(2))
    if with_grad:
        gm = torch.empty_like(mean)
        gv = torch.empty(R, dtype=acc, device=mean.device) if shared else torch.empty_like(logvar)
    if R:  # D == 0 still runs: rows get scale * 0 (NaN for a NaN scale)
        gaussian_fwd_kernel[grid_rows(R, DATA_TILE)](
            x, mean, logvar, partial, gm, gv, R, x.shape[0], D, float(scale),
            SHARED_V=shared, WITH_GRAD=bool(with_grad), **DATA_TILE)
    if with_grad and shared:
        gv = _shared_grad(gv, logvar)
    return finish(partial, reduce, mean.dtype, scale), gm, gv


def gaussian_backward(grad_out, x, mean, logvar, reduce, scale):
    R, D = mean.shape
    shared = logvar.numel() == 1 and logvar.shape != mean.shape
    gm = torch.empty_like(mean)
    gv = torch.zeros(R, dtype=acc_dtype(mean.dtype), device=mean.device) if shared else torch.empty_like(logvar)
    if R:  # D == 0 still runs: rows get scale * 0 (NaN for a NaN scale)
        go = grad_out.to(mean.dtype).contiguous()
        gaussian_bwd_kernel[grid_rows(R, DATA_TILE)](
            go, 1 if reduce == "rows" else 0, x, mean, logvar, gm, gv, R, x.shape[0], D, float(scale),
            SHARED_V=shared, **DATA_TILE)
    return gm, (_shared_grad(gv, logvar) if shared else gv)
