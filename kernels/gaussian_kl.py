"""Analytic KL(q(z|x) || N(0, I)) per row (Appendix B), forward and backward.

Reference (fastaevb/reference.py): ``0.5 * (mu**2 + exp(v) - 1 - v).sum(-1)``.
``kl_rows`` is also run inside the decoder forward kernels for the fused loss (``sgvb_loss.py``).
"""

from __future__ import annotations

from itertools import product

import triton
import triton.language as tl

from . import _aot_spec as aot
from . import formulas as m
from ._common import (
    DTYPES,
    check_width,
    fill_empty_sum,
    grad_slots,
    grid_rows,
    latent_tile,
    latent_tile_name,
    launch,
    row_sums,
    wanted,
)
from .reduce import finish


@triton.jit
def kl_rows(
    pid,
    mu_ptr,
    v_ptr,
    out_ptr,
    gmu_ptr,
    gv_ptr,
    R,
    J,
    scale,
    WITH_GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Rows ``pid * BLOCK_R ...`` of ``scale * KL`` into ``out_ptr`` (and the scaled gradients)."""
    ACC: tl.constexpr = tl.float64 if mu_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows[:, None] * J
    acc = tl.zeros([BLOCK_R, BLOCK_D], ACC)
    s = m.scalar_as(scale, acc)
    for j0 in range(0, J, BLOCK_D):
        cols = j0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < J)[None, :]
        off = base + cols[None, :]
        mu = tl.load(mu_ptr + off, mask=mask, other=0.0).to(ACC)
        v = tl.load(v_ptr + off, mask=mask, other=0.0).to(ACC)
        acc += tl.where(mask, m.kl_term(mu, v), 0.0)
        if WITH_GRAD:  # gradient of the scaled total, written in the same pass
            tl.store(gmu_ptr + off, s * mu, mask=mask)
            tl.store(gv_ptr + off, s * m.kl_grad_logvar(v), mask=mask)
    tl.store(out_ptr + rows, s * tl.sum(acc, axis=1), mask=rmask)


@triton.jit(do_not_specialize=["R"])
def gaussian_kl_fwd_kernel(
    mu_ptr,
    v_ptr,
    out_ptr,
    gmu_ptr,
    gv_ptr,
    R: tl.int64,
    J,
    scale: tl.float64,
    WITH_GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    kl_rows(tl.program_id(0), mu_ptr, v_ptr, out_ptr, gmu_ptr, gv_ptr, R, J, scale, WITH_GRAD, BLOCK_R, BLOCK_D)


@triton.jit(do_not_specialize=["go_sr", "R"])
def gaussian_kl_bwd_kernel(
    go_ptr,
    go_sr: tl.int32,
    mu_ptr,
    v_ptr,
    gmu_ptr,
    gv_ptr,
    R: tl.int64,
    J,
    scale: tl.float64,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if mu_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows[:, None] * J
    # grad_out is (R,) for 'rows' (stride 1) or 0-d for 'sum' (stride 0)
    g = tl.load(go_ptr + rows * go_sr, mask=rmask, other=0.0).to(ACC)
    g = (g * m.scalar_as(scale, g))[:, None]
    for j0 in range(0, J, BLOCK_D):
        cols = j0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < J)[None, :]
        off = base + cols[None, :]
        mu = tl.load(mu_ptr + off, mask=mask, other=0.0).to(ACC)
        v = tl.load(v_ptr + off, mask=mask, other=0.0).to(ACC)
        tl.store(gmu_ptr + off, g * mu, mask=mask)
        tl.store(gv_ptr + off, g * m.kl_grad_logvar(v), mask=mask)


def gaussian_kl_forward(out, grad_mu, grad_logvar, mu, logvar, reduction, scale):
    """``out``: ``(R,)`` for 'rows', 0-d for 'sum'; ``grad_mu`` / ``grad_logvar``: ``(R, J)`` or ``(0,)``."""
    R, J = mu.shape
    check_width(J)
    if R == 0:
        return fill_empty_sum(out, reduction, scale)
    with_grad, (gmu, gv) = grad_slots((grad_mu, mu), (grad_logvar, logvar))
    part = row_sums(out, reduction, R, mu.dtype)
    tile = latent_tile(J)
    launch(
        gaussian_kl_fwd_kernel,
        grid_rows(R, tile),
        mu.device,
        mu,
        logvar,
        part,
        gmu,
        gv,
        R,
        J,
        float(scale),
        WITH_GRAD=with_grad,
        **tile,
    )
    if part is not out:
        finish(out, (part,))


def gaussian_kl_backward(grad_mu, grad_logvar, grad_out, mu, logvar, reduction, scale):
    R, J = mu.shape
    if R == 0 or not (wanted(grad_mu) or wanted(grad_logvar)):
        return
    _, (gmu, gv) = grad_slots((grad_mu, mu), (grad_logvar, logvar), always=True)
    go = grad_out if grad_out.dtype == mu.dtype else grad_out.to(mu.dtype)
    tile = latent_tile(J)
    launch(
        gaussian_kl_bwd_kernel,
        grid_rows(R, tile),
        mu.device,
        go.contiguous(),
        1 if reduction == "rows" else 0,
        mu,
        logvar,
        gmu,
        gv,
        R,
        J,
        float(scale),
        **tile,
    )


def aot_specs() -> list:
    """Every launch of the entries above: each dtype and latent width class, both reductions, with
    and without gradients."""
    with aot.recording() as rec:
        for dtype, J in product(DTYPES, aot.widths(latent_tile_name)):
            mu = aot.rows(dtype, J)
            for reduction, with_grad in product(("rows", "sum"), (False, True)):
                gaussian_kl_forward(
                    aot.value_out(mu, reduction), *aot.grads(mu, mu, wanted=with_grad), mu, mu, reduction, 1.0
                )
                gaussian_kl_backward(*aot.grads(mu, mu), aot.upstream(mu, reduction), mu, mu, reduction, 1.0)
    return rec.specs
