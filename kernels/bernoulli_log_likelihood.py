"""Bernoulli decoder log-likelihood (Appendix C.1), from logits or from probabilities,
forward and backward: one kernel pair, the parameterization a constexpr ``PROBS``.

Reference (fastaevb/reference.py), elementwise, summed per row:
  logits (PROBS=False): ``x * l + logsigmoid(-l)``; only targets are range-checked.
  probs  (PROBS=True):  ``-F.binary_cross_entropy(p, x, reduction='none')`` (each log clamped
                        at -100); probs outside [0, 1] are counted too.
Row r of the (R, D) input uses data row r % B (x broadcast over leading sample dims).

The BCE drop-ins' extras, each a constexpr (off: the plain kernel, unchanged): ``WEIGHTED``
multiplies every value and gradient by ``weight``, ``POS_WEIGHT`` (logits) switches to torch's
pos-weighted form, ``TARGET_GRAD`` also writes ``d ll / d x`` (a non-empty ``grad_x``; in forward,
with the input's gradient). ``weight`` / ``pos_weight`` are read as (R, D) through strides
(broadcast views: column stride 0 or 1).
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
    REDUCTIONS,
    check_width,
    data_tile,
    data_tile_name,
    fill_empty_sum,
    fused_kl_launch_args,
    grad_out_strides,
    grad_slots,
    grid_rows,
    launch,
    row_sums,
    target_view,
    wanted,
)
from .gaussian_kl import kl_rows
from .reduce import bad_counts, finish


@triton.jit
def _load_input(ptr, mask, PROBS: tl.constexpr):
    """The logits / probs tile; masked lanes get a harmless value (0 logit, p = 0.5)."""
    if PROBS:
        return tl.load(ptr, mask=mask, other=0.5)
    else:
        return tl.load(ptr, mask=mask, other=0.0)


@triton.jit
def _term(v, x, PROBS: tl.constexpr):
    """Elementwise ``(ll, d ll / d v)`` of the parameterization (formulas in formulas.py)."""
    if PROBS:
        return m.bernoulli_probs(v, x)
    else:
        return m.bernoulli_logits(v, x)


@triton.jit
def _terms(v, x, rows, cols, mask, w_ptr, w_sr, w_sd, q_ptr, q_sr, q_sd, PROBS, WEIGHTED, POS_WEIGHT, TARGET_GRAD, ACC):
    """``(ll, d ll / d v, d ll / d x)`` with the drop-ins' extras (the last is ``v``, unused,
    without ``TARGET_GRAD``): pos-weighted form, then times the weight."""
    if POS_WEIGHT:
        q = tl.load(q_ptr + rows[:, None] * q_sr + cols[None, :] * q_sd, mask=mask, other=1.0).to(ACC)
        ll, dll, dx = m.bernoulli_logits_pos_weight(v, x, q)
    else:
        ll, dll = _term(v, x, PROBS)
        dx = v  # d ll / d x = l from logits
        if TARGET_GRAD and PROBS:
            dx = m.logit(v)
    if WEIGHTED:
        w = tl.load(w_ptr + rows[:, None] * w_sr + cols[None, :] * w_sd, mask=mask, other=0.0).to(ACC)
        ll, dll, dx = ll * w, dll * w, dx * w
    return ll, dll, dx


@triton.jit(do_not_specialize=["R", "B", "KR", "KJ", "w_sr", "w_sd", "q_sr", "q_sd"])
def bernoulli_log_likelihood_fwd_kernel(
    in_ptr,
    x_ptr,
    out_ptr,
    grad_ptr,
    bad_in_ptr,
    bad_x_ptr,
    R: tl.int64,
    B: tl.int64,
    D,
    scale: tl.float64,
    gx_ptr,
    w_ptr,
    w_sr: tl.int64,
    w_sd: tl.int64,
    q_ptr,
    q_sr: tl.int64,
    q_sd: tl.int64,
    kmu_ptr,
    kv_ptr,
    kout_ptr,
    kgmu_ptr,
    kgv_ptr,
    KR: tl.int64,
    KJ: tl.int32,
    kscale: tl.float64,
    PROBS: tl.constexpr,
    ELEMENTS: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    HAS_KL: tl.constexpr,
    WEIGHTED: tl.constexpr,
    POS_WEIGHT: tl.constexpr,
    TARGET_GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    KBLOCK_R: tl.constexpr,
    KBLOCK_J: tl.constexpr,
):
    # HAS_KL (the fused loss): the first programs also compute KL rows (grid: enough programs for
    # both row sets; decoder rows past R are masked).
    ACC: tl.constexpr = tl.float64 if in_ptr.dtype.element_ty == tl.float64 else tl.float32
    pid = tl.program_id(0)
    if HAS_KL:
        if pid.to(tl.int64) * KBLOCK_R < KR:
            kl_rows(pid, kmu_ptr, kv_ptr, kout_ptr, kgmu_ptr, kgv_ptr, KR, KJ, kscale, WITH_GRAD, KBLOCK_R, KBLOCK_J)
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows[:, None] * D
    xbase = (rows % B)[:, None] * D
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
        ll, dll, dx = _terms(
            v, x, rows, cols, mask, w_ptr, w_sr, w_sd, q_ptr, q_sr, q_sd, PROBS, WEIGHTED, POS_WEIGHT, TARGET_GRAD, ACC
        )
        if ELEMENTS:
            tl.store(out_ptr + off, s * ll, mask=mask)
        else:
            acc += tl.where(mask, ll, 0.0)
        if WITH_GRAD:  # gradients of the scaled total, written in the same pass
            tl.store(grad_ptr + off, s * dll, mask=mask)
            if TARGET_GRAD:
                tl.store(gx_ptr + off, s * dx, mask=mask)
    if not ELEMENTS:
        tl.store(out_ptr + rows, s * tl.sum(acc, axis=1), mask=rmask)
    # per-row counts, no atomics: every row < R is written (no zero fill needed)
    if PROBS:
        tl.store(bad_in_ptr + rows, tl.sum(bad_in, axis=1), mask=rmask)
    tl.store(bad_x_ptr + rows, tl.sum(bad_x, axis=1), mask=rmask)


@triton.jit(do_not_specialize=["go_sr", "go_sd", "R", "B", "w_sr", "w_sd", "q_sr", "q_sd"])
def bernoulli_log_likelihood_bwd_kernel(
    go_ptr,
    go_sr: tl.int64,
    go_sd: tl.int32,
    in_ptr,
    x_ptr,
    grad_ptr,
    R: tl.int64,
    B: tl.int64,
    D,
    scale: tl.float64,
    gx_ptr,
    w_ptr,
    w_sr: tl.int64,
    w_sd: tl.int64,
    q_ptr,
    q_sr: tl.int64,
    q_sd: tl.int64,
    PROBS: tl.constexpr,
    WEIGHTED: tl.constexpr,
    POS_WEIGHT: tl.constexpr,
    TARGET_GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if in_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows[:, None] * D
    xbase = (rows % B)[:, None] * D
    s = m.scalar_as(scale, tl.zeros([1], ACC))
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        off = base + cols[None, :]
        v = _load_input(in_ptr + off, mask, PROBS).to(ACC)
        x = tl.load(x_ptr + xbase + cols[None, :], mask=mask, other=0).to(ACC)
        # grad_out read as (R, D) through strides: 'none' (D, 1), 'rows' (1, 0), 'sum' (0, 0)
        g = tl.load(go_ptr + rows[:, None] * go_sr + cols[None, :] * go_sd, mask=mask, other=0.0).to(ACC)
        _, dll, dx = _terms(
            v, x, rows, cols, mask, w_ptr, w_sr, w_sd, q_ptr, q_sr, q_sd, PROBS, WEIGHTED, POS_WEIGHT, TARGET_GRAD, ACC
        )
        tl.store(grad_ptr + off, (g * s) * dll, mask=mask)
        if TARGET_GRAD:
            tl.store(gx_ptr + off, (g * s) * dx, mask=mask)


def _extras_args(inp, grad_x=None, weight=None, pos_weight=None) -> tuple[tuple, dict]:
    """Kernel arguments ``(gx, w, w_sr, w_sd, q, q_sr, q_sd)`` and flags of the drop-ins' extras;
    absent (None, or an empty ``grad_x``) ones read nothing (``inp`` stands in for their pointers)."""

    def strided(t):
        if t is None:
            return inp, 0, 0
        return t, t.stride(0), t.stride(1) if t.shape[1] > 1 else 0

    target_grad = wanted(grad_x)
    flags = dict(WEIGHTED=weight is not None, POS_WEIGHT=pos_weight is not None, TARGET_GRAD=target_grad)
    return (grad_x if target_grad else inp, *strided(weight), *strided(pos_weight)), flags


def _launch_forward(inp, x, out, grad, bad_in, bad_x, scale, probs, elements, with_grad, kl=None, extras=None):
    """One forward launch; ``kl``: ``(mu, logvar, kl_partials, grad_mu, grad_logvar, kl_scale)``
    for the fused loss; ``extras``: :func:`_extras_args` (default: none)."""
    R, D = inp.shape
    extra_args, extra_flags = extras if extras is not None else _extras_args(inp)
    tile = data_tile(D, any(extra_flags.values()))
    grid, kl_args = fused_kl_launch_args(kl, grid_rows(R, tile), inp)
    launch(
        bernoulli_log_likelihood_fwd_kernel,
        grid,
        inp.device,
        inp,
        x,
        out,
        grad,
        bad_in,
        bad_x,
        R,
        x.shape[0],
        D,
        float(scale),
        *extra_args,
        *kl_args,
        PROBS=probs,
        ELEMENTS=elements,
        WITH_GRAD=bool(with_grad),
        HAS_KL=kl is not None,
        **extra_flags,
        **tile,
        **LOSS_KL_TILE,
    )


def _forward(probs: bool, out, grad, grad_x, inp, x, weight, pos_weight, reduction, scale) -> None:
    """From logits, or from probabilities when ``probs``: ``out`` for ``reduction``; ``grad`` and
    ``grad_x`` (the gradients of the scaled value) where wanted."""
    R, D = inp.shape
    check_width(D)
    if R == 0:
        return fill_empty_sum(out, reduction, scale)
    # D == 0 still runs: rows get scale * 0 (NaN for a NaN scale)
    x = target_view(x)
    with_grad, (grad,) = grad_slots((grad, inp), always=wanted(grad_x))  # grad_x alone: grad to scratch
    part = row_sums(out, reduction, R, inp.dtype)
    _, bad_in, bad_x = bad_counts(R, inp.device)
    extras = _extras_args(inp, grad_x, weight, pos_weight)
    _launch_forward(inp, x, part, grad, bad_in, bad_x, scale, probs, reduction == "none", with_grad, extras=extras)
    summed = part is not out
    finish(out if summed else None, (part,) if summed else (), bad_in if probs else None, bad_x)


def _backward(probs: bool, grad, grad_x, grad_out, inp, x, weight, pos_weight, reduction, scale) -> None:
    """From logits, or from probabilities when ``probs``: ``grad`` (and ``grad_x`` where wanted)."""
    R, D = inp.shape
    if R == 0 or not (wanted(grad) or wanted(grad_x)):
        return
    # D == 0 still runs: rows get scale * 0 (NaN for a NaN scale)
    x = target_view(x)
    _, (grad,) = grad_slots((grad, inp), always=True)
    go = (grad_out if grad_out.dtype == inp.dtype else grad_out.to(inp.dtype)).contiguous()
    sr, sd = grad_out_strides(reduction, D)
    extra_args, extra_flags = _extras_args(inp, grad_x, weight, pos_weight)
    tile = data_tile(D, any(extra_flags.values()))
    launch(
        bernoulli_log_likelihood_bwd_kernel,
        grid_rows(R, tile),
        inp.device,
        go,
        sr,
        sd,
        inp,
        x,
        grad,
        R,
        x.shape[0],
        D,
        float(scale),
        *extra_args,
        PROBS=probs,
        **extra_flags,
        **tile,
    )


def bernoulli_log_likelihood_forward(out, grad_logits, grad_x, logits, x, weight, pos_weight, reduction, scale):
    """``out``: ``(R, D)`` for 'none' (the input dtype), ``(R,)`` 'rows', 0-d 'sum'; ``grad_logits``,
    ``grad_x``: ``(R, D)`` or ``(0,)``; ``weight`` / ``pos_weight``: None or ``(R, D)`` views."""
    _forward(False, out, grad_logits, grad_x, logits, x, weight, pos_weight, reduction, scale)


def bernoulli_log_likelihood_backward(grad_logits, grad_x, grad_out, logits, x, weight, pos_weight, reduction, scale):
    _backward(False, grad_logits, grad_x, grad_out, logits, x, weight, pos_weight, reduction, scale)


def bernoulli_probs_log_likelihood_forward(out, grad_probs, grad_x, probs, x, weight, reduction, scale):
    """As :func:`bernoulli_log_likelihood_forward`, from probabilities (no ``pos_weight``)."""
    _forward(True, out, grad_probs, grad_x, probs, x, weight, None, reduction, scale)


def bernoulli_probs_log_likelihood_backward(grad_probs, grad_x, grad_out, probs, x, weight, reduction, scale):
    _backward(True, grad_probs, grad_x, grad_out, probs, x, weight, None, reduction, scale)


def aot_specs() -> list:
    """Every launch of the entries above: each dtype and decoder width class, both
    parameterizations, float (the input dtype) and uint8 targets (bool ones are read as uint8),
    every reduction, gradients in forward with the summed ones ('rows', 'sum'), and the drop-ins'
    extras: weight, pos_weight (logits), the target gradient (float targets). The fused loss's
    launches (with the KL rows): ``sgvb_loss.aot_specs``."""
    entries = {
        False: (bernoulli_log_likelihood_forward, bernoulli_log_likelihood_backward),
        True: (bernoulli_probs_log_likelihood_forward, bernoulli_probs_log_likelihood_backward),
    }
    with aot.recording() as rec:
        for dtype, D, probs, uint8 in product(DTYPES, aot.widths(data_tile_name), (False, True), (False, True)):
            fwd, bwd = entries[probs]
            inp = aot.rows(dtype, D)
            x = aot.rows(torch.uint8 if uint8 else dtype, D, aot.DATA_ROWS)
            factor = torch.zeros(1, D, dtype=aot.value_out(inp, "sum").dtype).expand(inp.shape)  # a broadcast view
            for weighted, pos_weighted, target_grad in product(
                (False, True), (False,) if probs else (False, True), (False,) if uint8 else (False, True)
            ):
                extras = (factor if weighted else None,) + (() if probs else (factor if pos_weighted else None,))
                for reduction in REDUCTIONS:
                    for with_grad in (False, True) if reduction != "none" else (False,):
                        slots = (*aot.grads(inp, wanted=with_grad), *aot.grads(inp, wanted=with_grad and target_grad))
                        fwd(aot.value_out(inp, reduction), *slots, inp, x, *extras, reduction, 1.0)
                    slots = (*aot.grads(inp), *aot.grads(inp, wanted=target_grad))
                    bwd(*slots, aot.upstream(inp, reduction), inp, x, *extras, reduction, 1.0)
    return rec.specs
