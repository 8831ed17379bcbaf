"""Reparameterised sample (eq. 4) + analytic KL (Appendix B) + importance-weight terms, fused.

Reference (fastaevb/reference.py): ``reparameterize``, ``gaussian_kl``, ``log_q``, ``log_p``.
eps[l, r, j] = tl.randn(seed, l*R*J + r*J + j) (int64 offsets), never stored: the backward
kernel regenerates it from the same seed, as in Triton's low-memory-dropout tutorial.
With an explicit ``eps`` tensor (HAS_EPS) it is read at the same flat index instead.
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
    _zero,
    acc_dtype,
    check_width,
    grad_slots,
    grid_rows,
    latent_bwd_tile,
    latent_tile,
    latent_tile_name,
    launch,
    seed_tensor,
    wanted,
    zero_or,
)


@triton.jit
def _eps(eps_ptr, seed, flat, mask, HAS_EPS: tl.constexpr, ACC: tl.constexpr):
    if HAS_EPS:
        return tl.load(eps_ptr + flat, mask=mask, other=0.0).to(ACC)
    return tl.randn(seed, flat).to(ACC)  # float32 Philox normal, widened for float64


@triton.jit(do_not_specialize=["R", "L"])
def reparameterize_kl_fwd_kernel(
    mu_ptr,
    v_ptr,
    eps_ptr,
    z_ptr,
    kl_ptr,
    lq_ptr,
    lp_ptr,
    seed_ptr,
    R: tl.int64,
    J,
    L: tl.int32,
    HAS_EPS: tl.constexpr,
    LOG_WEIGHTS: tl.constexpr,
    WITH_KL: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if mu_ptr.dtype.element_ty == tl.float64 else tl.float32
    seed = tl.load(seed_ptr)  # a device tensor: drawn on the device, fresh on CUDA-graph replay
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = rows[:, None] * J
    RJ = R * J
    if WITH_KL:  # KL once per row (reparameterize alone skips it)
        acc = tl.zeros([BLOCK_R, BLOCK_D], ACC)
        for j0 in range(0, J, BLOCK_D):
            cols = j0 + tl.arange(0, BLOCK_D)
            mask = rmask[:, None] & (cols < J)[None, :]
            off = base + cols[None, :]
            mu = tl.load(mu_ptr + off, mask=mask, other=0.0).to(ACC)
            v = tl.load(v_ptr + off, mask=mask, other=0.0).to(ACC)
            acc += tl.where(mask, m.kl_term(mu, v), 0.0)
        tl.store(kl_ptr + rows, tl.sum(acc, axis=1), mask=rmask)
    # one pass over J per sample: z, and the log q / log p row sums of that sample
    for l in range(L):
        lbase = tl.cast(l, tl.int64) * RJ
        acc_q = tl.zeros([BLOCK_R, BLOCK_D], ACC)
        acc_p = tl.zeros([BLOCK_R, BLOCK_D], ACC)
        for j0 in range(0, J, BLOCK_D):
            cols = j0 + tl.arange(0, BLOCK_D)
            mask = rmask[:, None] & (cols < J)[None, :]
            off = base + cols[None, :]
            flat = lbase + off  # i = l*R*J + r*J + j
            mu = tl.load(mu_ptr + off, mask=mask, other=0.0).to(ACC)
            v = tl.load(v_ptr + off, mask=mask, other=0.0).to(ACC)
            eps = _eps(eps_ptr, seed, flat, mask, HAS_EPS, ACC)
            z = mu + tl.exp(0.5 * v) * eps
            tl.store(z_ptr + flat, z, mask=mask)
            if LOG_WEIGHTS:
                acc_q += tl.where(mask, m.log_normal_std(eps) - 0.5 * v, 0.0)
                acc_p += tl.where(mask, m.log_normal_std(z), 0.0)
        if LOG_WEIGHTS:
            lr = tl.cast(l, tl.int64) * R + rows
            tl.store(lq_ptr + lr, tl.sum(acc_q, axis=1), mask=rmask)
            tl.store(lp_ptr + lr, tl.sum(acc_p, axis=1), mask=rmask)


@triton.jit(do_not_specialize=["gz_s", "glq_s", "glp_s", "gkl_s", "R", "L"])
def reparameterize_kl_bwd_kernel(
    gz_ptr,
    gz_s: tl.int32,
    glq_ptr,
    glq_s: tl.int32,
    glp_ptr,
    glp_s: tl.int32,
    gkl_ptr,
    gkl_s: tl.int32,
    mu_ptr,
    v_ptr,
    eps_ptr,
    gmu_ptr,
    gv_ptr,
    seed_ptr,
    R: tl.int64,
    J,
    L: tl.int32,
    HAS_EPS: tl.constexpr,
    NEED_Z: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Absent upstream gradients arrive as a cached zero read with stride 0 (gz_s, ... = 0).
    # NEED_Z = grad_z or grad_log_p present: only then is eps regenerated (or read: HAS_EPS).
    ACC: tl.constexpr = tl.float64 if mu_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    r64 = rows
    base = r64[:, None] * J
    RJ = R * J
    gkl = tl.load(gkl_ptr + r64 * gkl_s, mask=rmask, other=0.0).to(ACC)[:, None]
    # -0.5 * sum_l grad_log_q[l, r]: d log q / d v = -0.5 per element
    glq_sum = tl.zeros([BLOCK_R], ACC)
    for l in range(L):
        glq_sum += tl.load(glq_ptr + (tl.cast(l, tl.int64) * R + r64) * glq_s, mask=rmask, other=0.0).to(ACC)
    for j0 in range(0, J, BLOCK_D):
        cols = j0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < J)[None, :]
        off = base + cols[None, :]
        mu = tl.load(mu_ptr + off, mask=mask, other=0.0).to(ACC)
        v = tl.load(v_ptr + off, mask=mask, other=0.0).to(ACC)
        g_mu = gkl * mu
        g_v = gkl * m.kl_grad_logvar(v) - 0.5 * glq_sum[:, None]
        if NEED_Z:
            seed = tl.load(seed_ptr)
            sigma = tl.exp(0.5 * v)
            for l in range(L):
                lbase = tl.cast(l, tl.int64) * RJ
                flat = lbase + off
                eps = _eps(eps_ptr, seed, flat, mask, HAS_EPS, ACC)
                z = mu + sigma * eps
                glp = tl.load(glp_ptr + (tl.cast(l, tl.int64) * R + r64) * glp_s, mask=rmask, other=0.0)
                gz = tl.load(gz_ptr + flat * gz_s, mask=mask, other=0.0).to(ACC)
                g = gz - glp.to(ACC)[:, None] * z  # d log p / d z = -z
                g_mu += g
                g_v += g * (0.5 * eps * sigma)
        tl.store(gmu_ptr + off, g_mu, mask=mask)
        tl.store(gv_ptr + off, g_v, mask=mask)


def reparameterize_kl_forward(z, kl, log_q, log_p, mu, logvar, eps, seed, samples):
    """``z``: ``(samples, R, J)``; ``kl``: ``(R,)`` or ``(0,)`` (reparameterize alone: no KL);
    ``log_q`` / ``log_p``: ``(samples, R)`` or ``(0,)``. ``seed``: a one-element int64 tensor on mu's
    device (CUDA: drawn there, never read on the host), a Python int, or None when ``eps`` is given."""
    R, J = mu.shape
    check_width(J, "latent width")
    if R == 0:
        return
    L = int(samples)
    dev = mu.device
    acc = acc_dtype(mu.dtype)
    with_kl = wanted(kl)
    log_weights = wanted(log_q) or wanted(log_p)
    if log_weights:  # one kernel flag for the pair: one of them alone gets scratch for the other
        log_q, log_p = (t if wanted(t) else torch.empty(L, R, dtype=acc, device=dev) for t in (log_q, log_p))
    if not (with_kl and log_weights):  # never written: stands in for the unwanted row outputs
        unused = _zero(acc, str(dev))
        kl = kl if with_kl else unused
        log_q, log_p = (log_q, log_p) if log_weights else (unused, unused)
    has_eps = eps is not None
    tile = latent_tile(J)
    launch(
        reparameterize_kl_fwd_kernel,
        grid_rows(R, tile),
        dev,
        mu,
        logvar,
        eps if has_eps else mu,
        z,
        kl,
        log_q,
        log_p,
        seed_tensor(None if has_eps else seed, dev),
        R,
        J,
        L,
        HAS_EPS=has_eps,
        LOG_WEIGHTS=log_weights,
        WITH_KL=with_kl,
        **tile,
    )


def reparameterize_kl_backward(
    grad_mu, grad_logvar, grad_z, grad_kl, grad_log_q, grad_log_p, mu, logvar, eps, seed, samples
):
    """``grad_mu`` / ``grad_logvar``: ``(R, J)``; any upstream ``grad_*`` may be None (zero)."""
    R, J = mu.shape
    if R == 0 or not (wanted(grad_mu) or wanted(grad_logvar)):
        return
    L = int(samples)
    dev, dt = mu.device, mu.dtype
    _, (gmu, gv) = grad_slots((grad_mu, mu), (grad_logvar, logvar), always=True)
    need_z = wanted(grad_z) or wanted(grad_log_p)
    gz, gz_s = zero_or(grad_z, dt, dev)
    glq, glq_s = zero_or(grad_log_q, dt, dev)
    glp, glp_s = zero_or(grad_log_p, dt, dev)
    gkl, gkl_s = zero_or(grad_kl, dt, dev)
    has_eps = eps is not None and need_z  # eps is read only to rebuild z
    tile = latent_bwd_tile(J)
    launch(
        reparameterize_kl_bwd_kernel,
        grid_rows(R, tile),
        dev,
        gz,
        gz_s,
        glq,
        glq_s,
        glp,
        glp_s,
        gkl,
        gkl_s,
        mu,
        logvar,
        eps if has_eps else mu,
        gmu,
        gv,
        seed_tensor(None if has_eps else seed, dev),
        R,
        J,
        L,
        HAS_EPS=has_eps,
        NEED_Z=need_z,
        **tile,
    )


def aot_specs() -> list:
    """Every launch of the entries above: each dtype and latent width class, drawn or given eps,
    with or without the KL and the log-weights; backward with every set of upstream gradients."""
    samples = 2
    with aot.recording() as rec:
        for dtype, J in product(DTYPES, aot.widths(latent_tile_name)):
            mu = aot.rows(dtype, J)
            sample = torch.zeros(samples, *mu.shape, dtype=dtype)
            weights = aot.value_out(sample[..., 0], "rows")  # (samples, R) in the value dtype
            kl = aot.value_out(mu, "rows")
            for eps, with_kl, log_weights in product((None, sample), (False, True), (False, True)):
                slots = (
                    torch.empty_like(sample),
                    *aot.grads(kl, wanted=with_kl),
                    *aot.grads(weights, weights, wanted=log_weights),
                )
                reparameterize_kl_forward(*slots, mu, mu, eps, 1, samples)
                for given in product((False, True), repeat=4):
                    upstream = [t if g else None for t, g in zip((sample, kl, weights, weights), given, strict=True)]
                    reparameterize_kl_backward(*aot.grads(mu, mu), *upstream, mu, mu, eps, 1, samples)
    return rec.specs
