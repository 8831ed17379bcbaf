"""Gaussian decoder log-likelihood (Appendix C.2), forward and backward.

Reference (fastaevb/reference.py): ``-0.5 * (log 2pi + v + (x - m)**2 * exp(-v))`` summed per
row. ``mean`` is (R, D) and uses data row r % B; ``logvar`` is (R, D) or one shared value (1,).

The kernels and launchers here are the location-scale decoders' one body,
``-sum_d (a |x - m|^p exp(-s) + a s + c)``: the constexpr ``FORM`` is ``GAUSSIAN`` here and the
error decoders' power in ``error_log_likelihood.py``, whose kernels call these (under their own
names, which the AOT table and torch.compile's kernel caches go by).
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
    acc_dtype,
    check_width,
    data_tile,
    data_tile_name,
    fill_empty_sum,
    fused_kl_launch_args,
    grad_slots,
    grid_rows,
    launch,
    row_sums,
    wanted,
)
from .gaussian_kl import kl_rows
from .reduce import finish

GAUSSIAN = 0  # FORM of the Gaussian; the error decoders' FORM is their power p (2 or 1)
_GAUSSIAN = tl.constexpr(GAUSSIAN)  # as the kernels read it (globals there must be constexpr)


@triton.jit
def _load_tile(x_ptr, m_ptr, v_ptr, off, xoff, mask, SHARED_V: tl.constexpr, FORM: tl.constexpr, ACC: tl.constexpr):
    x = tl.load(x_ptr + xoff, mask=mask, other=0.0).to(ACC)
    mean = tl.load(m_ptr + off, mask=mask, other=0.0).to(ACC)
    if SHARED_V:
        v = tl.load(v_ptr).to(ACC)
        if FORM == _GAUSSIAN:  # broadcast, as the Gaussian always loaded it (the errors take exp(-s) once)
            v = v + tl.zeros(mean.shape, ACC)
    else:
        v = tl.load(v_ptr + off, mask=mask, other=0.0).to(ACC)
    return x, mean, v


@triton.jit
def _terms(x, mean, v, FORM: tl.constexpr):
    """``(ll, dll/dm, dll/dv)`` per element: each form's formula (``formulas``)."""
    if FORM == _GAUSSIAN:
        return m.gaussian_ll(x, mean, v)
    else:
        return m.error_ll(x, mean, v, FORM)


@triton.jit(do_not_specialize=["R", "B", "KR", "KJ"])
def gaussian_log_likelihood_fwd_kernel(
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
    FORM: tl.constexpr,
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
    acc_gv = tl.zeros([BLOCK_R, BLOCK_D], ACC)  # shared v: per-row partials of its gradient
    s = m.scalar_as(scale, acc)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        off = base + cols[None, :]
        x, mean, v = _load_tile(x_ptr, m_ptr, v_ptr, off, xbase + cols[None, :], mask, SHARED_V, FORM, ACC)
        ll, dm, dv = _terms(x, mean, v, FORM)
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
def gaussian_log_likelihood_bwd_kernel(
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
    FORM: tl.constexpr,
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
    acc_gv = tl.zeros([BLOCK_R, BLOCK_D], ACC)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        off = base + cols[None, :]
        x, mean, v = _load_tile(x_ptr, m_ptr, v_ptr, off, xbase + cols[None, :], mask, SHARED_V, FORM, ACC)
        _, dm, dv = _terms(x, mean, v, FORM)
        tl.store(gm_ptr + off, g * dm, mask=mask)
        if SHARED_V:
            acc_gv += tl.where(mask, g * dv, 0.0)
        else:
            tl.store(gv_ptr + off, g * dv, mask=mask)
    if SHARED_V:
        tl.store(gv_ptr + rows, tl.sum(acc_gv, axis=1), mask=rmask)


def _shared(mean, logvar) -> bool:
    return logvar.numel() == 1 and logvar.shape != mean.shape


def _flags(form: int, shared: bool) -> dict:
    """The constexprs of a form's kernels (``error_log_likelihood.py`` names its own)."""
    return dict(SHARED_V=shared, FORM=GAUSSIAN) if form == GAUSSIAN else dict(POWER=form, SHARED_S=shared)


def _launch_forward(kernel, form, x, mean, logvar, out, gm, gv, scale, shared, with_grad, kl=None):
    """One forward launch of ``kernel`` (this module's or the error decoders'); ``kl``:
    ``(mu, logvar, kl_partials, grad_mu, grad_logvar, kl_scale)`` for the fused loss."""
    R, D = mean.shape
    tile = data_tile(D)
    grid, kl_args = fused_kl_launch_args(kl, grid_rows(R, tile), mean)
    launch(
        kernel,
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
        **_flags(form, shared),
        WITH_GRAD=bool(with_grad),
        HAS_KL=kl is not None,
        **tile,
        **LOSS_KL_TILE,
    )


def _grad_slots(grad_mean, grad_logvar, mean, logvar, shared, always=False):
    """``(with_grad, grad_mean buffer, grad_logvar buffer)``: a shared log-variance's gradient is
    first written as per-row partials (accumulator dtype, private scratch), see :func:`_finish_shared`."""
    if not shared:
        with_grad, (gm, gv) = grad_slots((grad_mean, mean), (grad_logvar, logvar), always=always)
        return with_grad, gm, gv
    with_grad, (gm,) = grad_slots((grad_mean, mean), always=always or wanted(grad_logvar))
    gv = torch.empty(mean.shape[0], dtype=acc_dtype(mean.dtype), device=mean.device) if with_grad else mean
    return with_grad, gm, gv


def _finish_shared(grad_logvar, partials, shared, with_grad) -> None:
    # one shared log-variance: its gradient is the fixed-order float64 sum of the per-row partials
    if shared and with_grad and wanted(grad_logvar):
        finish(grad_logvar, (partials,))


def _forward(kernel, form, out, grad_mean, grad_logvar, x, mean, logvar, reduction, scale):
    """Either op's forward entry, launching its forward ``kernel`` in its ``form``."""
    R, D = mean.shape
    check_width(D)
    shared = _shared(mean, logvar)
    if R == 0:
        if shared and wanted(grad_logvar):
            grad_logvar.zero_()
        return fill_empty_sum(out, reduction, scale)
    # D == 0 still runs: rows get scale * 0 (NaN for a NaN scale)
    with_grad, gm, gv = _grad_slots(grad_mean, grad_logvar, mean, logvar, shared)
    part = row_sums(out, reduction, R, mean.dtype)
    _launch_forward(kernel, form, x, mean, logvar, part, gm, gv, scale, shared, with_grad)
    _finish_shared(grad_logvar, gv, shared, with_grad)
    if part is not out:
        finish(out, (part,))


def _backward(kernel, form, grad_mean, grad_logvar, grad_out, x, mean, logvar, reduction, scale):
    """Either op's backward entry, launching its backward ``kernel`` in its ``form``."""
    R, D = mean.shape
    shared = _shared(mean, logvar)
    if R == 0:
        if shared and wanted(grad_logvar):
            grad_logvar.zero_()
        return
    if not (wanted(grad_mean) or wanted(grad_logvar)):
        return
    _, gm, gv = _grad_slots(grad_mean, grad_logvar, mean, logvar, shared, always=True)
    go = (grad_out if grad_out.dtype == mean.dtype else grad_out.to(mean.dtype)).contiguous()
    tile = data_tile(D)
    launch(
        kernel,
        grid_rows(R, tile),
        mean.device,
        go,
        1 if reduction == "rows" else 0,
        x,
        mean,
        logvar,
        gm,
        gv,
        R,
        x.shape[0],
        D,
        float(scale),
        **_flags(form, shared),
        **tile,
    )
    _finish_shared(grad_logvar, gv, shared, True)


def gaussian_log_likelihood_forward(out, grad_mean, grad_logvar, x, mean, logvar, reduction, scale):
    """``out``: ``(R,)`` for 'rows', 0-d for 'sum'; ``grad_mean`` ``(R, D)`` or ``(0,)``;
    ``grad_logvar`` ``logvar``'s shape (``(1,)`` when shared) or ``(0,)``."""
    _forward(
        gaussian_log_likelihood_fwd_kernel, GAUSSIAN, out, grad_mean, grad_logvar, x, mean, logvar, reduction, scale
    )


def gaussian_log_likelihood_backward(grad_mean, grad_logvar, grad_out, x, mean, logvar, reduction, scale):
    _backward(
        gaussian_log_likelihood_bwd_kernel,
        GAUSSIAN,
        grad_mean,
        grad_logvar,
        grad_out,
        x,
        mean,
        logvar,
        reduction,
        scale,
    )


def aot_specs() -> list:
    """Every launch of the entries above: each dtype and decoder width class, a per-element or a
    shared log-variance, both reductions, with and without gradients (the fused loss's launches,
    with the KL rows: ``sgvb_loss.aot_specs``)."""
    with aot.recording() as rec:
        for dtype, D, shared in product(DTYPES, aot.widths(data_tile_name), (False, True)):
            mean = aot.rows(dtype, D)
            x = aot.rows(dtype, D, aot.DATA_ROWS)
            logvar = torch.zeros(1, dtype=dtype) if shared else mean
            for reduction, with_grad in product(("rows", "sum"), (False, True)):
                gaussian_log_likelihood_forward(
                    aot.value_out(mean, reduction),
                    *aot.grads(mean, logvar, wanted=with_grad),
                    x,
                    mean,
                    logvar,
                    reduction,
                    1.0,
                )
                gaussian_log_likelihood_backward(
                    *aot.grads(mean, logvar), aot.upstream(mean, reduction), x, mean, logvar, reduction, 1.0
                )
    return rec.specs
