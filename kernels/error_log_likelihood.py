"""Error decoder log-likelihood (``F.mse_loss`` / ``F.l1_loss`` with a log-scale), forward and backward.

Reference (fastaevb/reference.py): ``-(|x - m|^p * exp(-s) + s)`` summed per row, p = ``power``
(2 or 1, the constexpr ``POWER``). ``mean`` is (R, D) and uses data row r % B; ``log_scale`` is
(R, D) or one shared value (1,). The Gaussian decoder's structure (``gaussian_log_likelihood.py``)
with other constants; a shared log-scale's ``exp(-s)`` is computed once per program.
"""

from __future__ import annotations

from itertools import product

import torch
import triton
import triton.language as tl

from . import _aot_spec as aot
from . import formulas as m
from ._common import (
    DTYPES,
    LOSS_KL_TILE,
    check_width,
    data_tile,
    data_tile_name,
    fill_empty_sum,
    fused_kl_launch_args,
    grid_rows,
    launch,
    row_sums,
    wanted,
)
from .gaussian_kl import kl_rows
from .gaussian_log_likelihood import _finish_shared, _grad_slots, _shared
from .reduce import finish

POWERS = (2, 1)


@triton.jit
def _load_scale(s_ptr, off, mask, SHARED_S: tl.constexpr, ACC: tl.constexpr):
    # shared: the one value (its exp broadcasts from one evaluation), else the tile
    if SHARED_S:
        return tl.load(s_ptr).to(ACC)
    else:
        return tl.load(s_ptr + off, mask=mask, other=0.0).to(ACC)


@triton.jit(do_not_specialize=["R", "B", "KR", "KJ"])
def error_log_likelihood_fwd_kernel(
    x_ptr,
    m_ptr,
    s_ptr,
    out_ptr,
    gm_ptr,
    gs_ptr,
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
    POWER: tl.constexpr,
    SHARED_S: tl.constexpr,
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
    acc_gs = tl.zeros([BLOCK_R, BLOCK_D], ACC)  # shared log-scale: per-row partials of its gradient
    sc = m.scalar_as(scale, acc)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        off = base + cols[None, :]
        x = tl.load(x_ptr + xbase + cols[None, :], mask=mask, other=0.0).to(ACC)
        mean = tl.load(m_ptr + off, mask=mask, other=0.0).to(ACC)
        ls = _load_scale(s_ptr, off, mask, SHARED_S, ACC)
        ll, dm, ds = m.error_ll(x, mean, ls, POWER)
        acc += tl.where(mask, ll, 0.0)
        if WITH_GRAD:  # gradient of the scaled total, written in the same pass
            tl.store(gm_ptr + off, sc * dm, mask=mask)
            if SHARED_S:
                acc_gs += tl.where(mask, ds, 0.0)
            else:
                tl.store(gs_ptr + off, sc * ds, mask=mask)
    tl.store(out_ptr + rows, sc * tl.sum(acc, axis=1), mask=rmask)
    if WITH_GRAD and SHARED_S:
        tl.store(gs_ptr + rows, sc * tl.sum(acc_gs, axis=1), mask=rmask)


@triton.jit(do_not_specialize=["go_sr", "R", "B"])
def error_log_likelihood_bwd_kernel(
    go_ptr,
    go_sr: tl.int32,
    x_ptr,
    m_ptr,
    s_ptr,
    gm_ptr,
    gs_ptr,
    R: tl.int64,
    B: tl.int64,
    D,
    scale: tl.float64,
    POWER: tl.constexpr,
    SHARED_S: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if m_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows[:, None] * D
    xbase = (rows % B)[:, None] * D
    # grad_out is (R,) for 'rows' (stride 1) or 0-d for 'sum' (stride 0)
    g = tl.load(go_ptr + rows * go_sr, mask=rmask, other=0.0).to(ACC)
    g = (g * m.scalar_as(scale, g))[:, None]
    acc_gs = tl.zeros([BLOCK_R, BLOCK_D], ACC)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        off = base + cols[None, :]
        x = tl.load(x_ptr + xbase + cols[None, :], mask=mask, other=0.0).to(ACC)
        mean = tl.load(m_ptr + off, mask=mask, other=0.0).to(ACC)
        ls = _load_scale(s_ptr, off, mask, SHARED_S, ACC)
        _, dm, ds = m.error_ll(x, mean, ls, POWER)
        tl.store(gm_ptr + off, g * dm, mask=mask)
        if SHARED_S:
            acc_gs += tl.where(mask, g * ds, 0.0)
        else:
            tl.store(gs_ptr + off, g * ds, mask=mask)
    if SHARED_S:
        tl.store(gs_ptr + rows, tl.sum(acc_gs, axis=1), mask=rmask)


def _check_power(power) -> int:
    if power not in POWERS:
        raise ValueError(f"power must be 2 or 1, got {power!r}")
    return int(power)


def _launch_forward(x, mean, log_scale, out, gm, gs, scale, shared, with_grad, power, kl=None):
    """One forward launch; ``kl``: ``(mu, logvar, kl_partials, grad_mu, grad_logvar, kl_scale)``
    for the fused loss."""
    R, D = mean.shape
    tile = data_tile(D)
    grid, kl_args = fused_kl_launch_args(kl, grid_rows(R, tile), mean)
    launch(
        error_log_likelihood_fwd_kernel,
        grid,
        mean.device,
        x,
        mean,
        log_scale,
        out,
        gm,
        gs,
        R,
        x.shape[0],
        D,
        float(scale),
        *kl_args,
        POWER=_check_power(power),
        SHARED_S=shared,
        WITH_GRAD=bool(with_grad),
        HAS_KL=kl is not None,
        **tile,
        **LOSS_KL_TILE,
    )


def error_log_likelihood_forward(out, grad_mean, grad_log_scale, x, mean, log_scale, reduction, scale, power):
    """``out``: ``(R,)`` for 'rows', 0-d for 'sum'; ``grad_mean`` ``(R, D)`` or ``(0,)``;
    ``grad_log_scale`` ``log_scale``'s shape (``(1,)`` when shared) or ``(0,)``."""
    R, D = mean.shape
    check_width(D)
    _check_power(power)
    shared = _shared(mean, log_scale)
    if R == 0:
        if shared and wanted(grad_log_scale):
            grad_log_scale.zero_()
        return fill_empty_sum(out, reduction, scale)
    # D == 0 still runs: rows get scale * 0 (NaN for a NaN scale)
    with_grad, gm, gs = _grad_slots(grad_mean, grad_log_scale, mean, log_scale, shared)
    part = row_sums(out, reduction, R, mean.dtype)
    _launch_forward(x, mean, log_scale, part, gm, gs, scale, shared, with_grad, power)
    _finish_shared(grad_log_scale, gs, shared, with_grad)
    if part is not out:
        finish(out, (part,))


def error_log_likelihood_backward(grad_mean, grad_log_scale, grad_out, x, mean, log_scale, reduction, scale, power):
    R, D = mean.shape
    _check_power(power)
    shared = _shared(mean, log_scale)
    if R == 0:
        if shared and wanted(grad_log_scale):
            grad_log_scale.zero_()
        return
    if not (wanted(grad_mean) or wanted(grad_log_scale)):
        return
    _, gm, gs = _grad_slots(grad_mean, grad_log_scale, mean, log_scale, shared, always=True)
    go = (grad_out if grad_out.dtype == mean.dtype else grad_out.to(mean.dtype)).contiguous()
    tile = data_tile(D)
    launch(
        error_log_likelihood_bwd_kernel,
        grid_rows(R, tile),
        mean.device,
        go,
        1 if reduction == "rows" else 0,
        x,
        mean,
        log_scale,
        gm,
        gs,
        R,
        x.shape[0],
        D,
        float(scale),
        POWER=int(power),
        SHARED_S=shared,
        **tile,
    )
    _finish_shared(grad_log_scale, gs, shared, True)


def aot_specs() -> list:
    """Every launch of the entries above: each dtype, power and decoder width class, a per-element
    or a shared log-scale, both reductions, with and without gradients (the fused loss's launches,
    with the KL rows: ``sgvb_loss.aot_specs``)."""
    with aot.recording() as rec:
        for dtype, power, D, shared in product(DTYPES, POWERS, aot.widths(data_tile_name), (False, True)):
            mean = aot.rows(dtype, D)
            x = aot.rows(dtype, D, aot.DATA_ROWS)
            log_scale = torch.zeros(1, dtype=dtype) if shared else mean
            for reduction, with_grad in product(("rows", "sum"), (False, True)):
                error_log_likelihood_forward(
                    aot.value_out(mean, reduction),
                    *aot.grads(mean, log_scale, wanted=with_grad),
                    x,
                    mean,
                    log_scale,
                    reduction,
                    1.0,
                    power,
                )
                error_log_likelihood_backward(
                    *aot.grads(mean, log_scale),
                    aot.upstream(mean, reduction),
                    x,
                    mean,
                    log_scale,
                    reduction,
                    1.0,
                    power,
                )
    return rec.specs
