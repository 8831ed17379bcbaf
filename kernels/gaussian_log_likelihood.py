"""Gaussian decoder log-likelihood (Appendix C.2), forward and backward.

Reference (fastaevb/reference.py): ``-0.5 * (log 2pi + v + (x - m)**2 * exp(-v))`` summed per
row. ``mean`` is (R, D) and uses data row r % B; ``logvar`` is (R, D) or one shared value (1,).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import math as m
from ._common import LOSS_KL_TILE, acc_dtype, check_width, data_tile, fused_kl_launch_args, grid_rows, launch
from .gaussian_kl import kl_rows
from .reduce import finish


@triton.jit
def _load_tile(x_ptr, m_ptr, v_ptr, off, xoff, mask, SHARED_V: tl.constexpr, ACC: tl.constexpr):
    x = tl.load(x_ptr + xoff, mask=mask, other=0.0).to(ACC)
    mean = tl.load(m_ptr + off, mask=mask, other=0.0).to(ACC)
    if SHARED_V:
        v = tl.load(v_ptr).to(ACC) + tl.zeros(mean.shape, ACC)
    else:
        v = tl.load(v_ptr + off, mask=mask, other=0.0).to(ACC)
    return x, mean, v


@triton.jit(do_not_specialize=["R", "B", "KR", "KJ"])
def gaussian_fwd_kernel(
    x_ptr,
    m_ptr,
    v_ptr,
    out_ptr,
    gm_ptr,
    gv_ptr,
    R: tl.int64,
    B: tl.int64,
    D,
    scale: tl.float64,
    kmu_ptr,
    kv_ptr,
    kout_ptr,
    kgmu_ptr,
    kgv_ptr,
    KR: tl.int64,
    KJ: tl.int32,
    kscale: tl.float64,
    SHARED_V: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    HAS_KL: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    KBLOCK_R: tl.constexpr,
    KBLOCK_J: tl.constexpr,
):
    # HAS_KL (the fused loss): the first programs also compute KL rows
    ACC: tl.constexpr = tl.float64 if m_ptr.dtype.element_ty == tl.float64 else tl.float32
    pid = tl.program_id(0)
    if HAS_KL:
        if pid.to(tl.int64) * KBLOCK_R < KR:
            kl_rows(pid, kmu_ptr, kv_ptr, kout_ptr, kgmu_ptr, kgv_ptr, KR, KJ, kscale, WITH_GRAD, KBLOCK_R, KBLOCK_J)
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows[:, None] * D
    xbase = (rows % B)[:, None] * D
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


@triton.jit(do_not_specialize=["go_sr", "R", "B"])
def gaussian_bwd_kernel(
    go_ptr,
    go_sr: tl.int32,
    x_ptr,
    m_ptr,
    v_ptr,
    gm_ptr,
    gv_ptr,
    R: tl.int64,
    B: tl.int64,
    D,
    scale: tl.float64,
    SHARED_V: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if m_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows[:, None] * D
    xbase = (rows % B)[:, None] * D
    # grad_out is (R,) for 'rows' (stride 1) or 0-d for 'total' (stride 0)
    g = tl.load(go_ptr + rows * go_sr, mask=rmask, other=0.0).to(ACC)
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


def _shared(mean, logvar) -> bool:
    return logvar.numel() == 1 and logvar.shape != mean.shape


def _launch_forward(x, mean, logvar, out, gm, gv, scale, shared, with_grad, kl=None):
    """One forward launch; ``kl``: ``(mu, logvar, kl_partials, grad_mu, grad_logvar, kl_scale)``
    for the fused loss."""
    R, D = mean.shape
    tile = data_tile(D)
    grid, kl_args = fused_kl_launch_args(kl, grid_rows(R, tile), mean)
    launch(
        gaussian_fwd_kernel,
        grid,
        mean.device,
        x,
        mean,
        logvar,
        out,
        gm,
        gv,
        R,
        x.shape[0],
        D,
        float(scale),
        *kl_args,
        SHARED_V=shared,
        WITH_GRAD=bool(with_grad),
        HAS_KL=kl is not None,
        **tile,
        **LOSS_KL_TILE,
    )


def _grad_slots(mean, logvar, with_grad, shared):
    """(grad_mean, grad_logvar buffer): a shared log-variance gets per-row partials (acc dtype)."""
    dev = mean.device
    if not with_grad:  # two distinct empty tensors: custom-op outputs must not alias each other
        return tuple(torch.empty(0, dtype=mean.dtype, device=dev) for _ in range(2))
    R = mean.shape[0]
    return torch.empty_like(mean), (
        torch.empty(R, dtype=acc_dtype(mean.dtype), device=dev) if shared else torch.empty_like(logvar)
    )


def _shared_grad(partials, logvar):
    # one shared log-variance: its gradient is the fixed-order float64 sum of the per-row partials
    out = torch.empty(logvar.shape, dtype=logvar.dtype, device=logvar.device)
    finish(out, (partials,))
    return out


def gaussian_forward(x, mean, logvar, reduce, scale, with_grad):
    R, D = mean.shape
    check_width(D)
    shared = _shared(mean, logvar)
    dev, dt = mean.device, mean.dtype
    acc = acc_dtype(dt)  # rows and total: float32 for half inputs
    total = reduce == "total"
    gm, gv = _grad_slots(mean, logvar, with_grad, shared)
    if R == 0:
        if with_grad and shared:
            gv = torch.zeros(logvar.shape, dtype=dt, device=dev)
        out = torch.full((), 0.0 * scale, dtype=acc, device=dev) if total else torch.empty(0, dtype=acc, device=dev)
        return out, gm, gv
    # D == 0 still runs: rows get scale * 0 (NaN for a NaN scale)
    partial = torch.empty(R, dtype=acc, device=dev)
    _launch_forward(x, mean, logvar, partial, gm, gv, scale, shared, with_grad)
    if with_grad and shared:
        gv = _shared_grad(gv, logvar)
    if not total:
        return partial, gm, gv
    out = torch.empty((), dtype=acc, device=dev)
    finish(out, (partial,))
    return out, gm, gv


def gaussian_backward(grad_out, x, mean, logvar, reduce, scale):
    R, D = mean.shape
    shared = _shared(mean, logvar)
    gm = torch.empty_like(mean)
    if R == 0:
        return gm, (
            torch.zeros(logvar.shape, dtype=logvar.dtype, device=logvar.device) if shared else torch.empty_like(logvar)
        )
    gv = torch.empty(R, dtype=acc_dtype(mean.dtype), device=mean.device) if shared else torch.empty_like(logvar)
    go = (grad_out if grad_out.dtype == mean.dtype else grad_out.to(mean.dtype)).contiguous()
    tile = data_tile(D)
    launch(
        gaussian_bwd_kernel,
        grid_rows(R, tile),
        mean.device,
        go,
        1 if reduce == "rows" else 0,
        x,
        mean,
        logvar,
        gm,
        gv,
        R,
        x.shape[0],
        D,
        float(scale),
        SHARED_V=shared,
        **tile,
    )
    return gm, (_shared_grad(gv, logvar) if shared else gv)
