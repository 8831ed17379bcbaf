"""Analytic KL(q(z|x) || N(0, I)) per row (Appendix B), forward and backward.

Reference (fastaevb/reference.py): ``0.5 * (mu**2 + exp(v) - 1 - v).sum(-1)``.
``kl_rows`` is also run inside the decoder forward kernels for the fused loss (``loss.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import math as m
from ._common import acc_dtype, check_width, grid_rows, latent_tile, launch
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
    # grad_out is (R,) for 'rows' (stride 1) or 0-d for 'total' (stride 0)
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


def gaussian_kl_forward(mu, logvar, reduce, scale, with_grad):
    R, J = mu.shape
    check_width(J)
    dev = mu.device
    if with_grad:
        gmu, gv = torch.empty_like(mu), torch.empty_like(logvar)
    else:
        # two distinct empty tensors: custom-op outputs must not alias each other
        gmu, gv = (torch.empty(0, dtype=mu.dtype, device=dev) for _ in range(2))
    total = reduce == "total"
    acc = acc_dtype(mu.dtype)  # KL rows and total: float32 for half inputs
    if R == 0:
        out = torch.full((), 0.0 * scale, dtype=acc, device=dev) if total else torch.empty(0, dtype=acc, device=dev)
        return out, gmu, gv
    partial = torch.empty(R, dtype=acc, device=dev)
    tile = latent_tile(J)
    launch(
        gaussian_kl_fwd_kernel,
        grid_rows(R, tile),
        dev,
        mu,
        logvar,
        partial,
        gmu,
        gv,
        R,
        J,
        float(scale),
        WITH_GRAD=bool(with_grad),
        **tile,
    )
    if not total:
        return partial, gmu, gv
    out = torch.empty((), dtype=acc, device=dev)
    finish(out, (partial,))
    return out, gmu, gv


def gaussian_kl_backward(grad_out, mu, logvar, reduce, scale):
    R, J = mu.shape
    gmu, gv = torch.empty_like(mu), torch.empty_like(logvar)
    if R:
        go = grad_out if grad_out.dtype == mu.dtype else grad_out.to(mu.dtype)
        tile = latent_tile(J)
        launch(
            gaussian_kl_bwd_kernel,
            grid_rows(R, tile),
            mu.device,
            go.contiguous(),
            1 if reduce == "rows" else 0,
            mu,
            logvar,
            gmu,
            gv,
            R,
            J,
            float(scale),
            **tile,
        )
    return gmu, gv
