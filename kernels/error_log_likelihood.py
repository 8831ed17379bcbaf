"""Error decoder log-likelihood (``F.mse_loss`` / ``F.l1_loss`` with a log-scale), forward and backward.

Reference (fastaevb/reference.py): ``-(|x - m|^p * exp(-s) + s)`` summed per row, p = ``power``
(2 or 1, the constexpr ``POWER``). ``mean`` is (R, D) and uses data row r % B; ``log_scale`` is
(R, D) or one shared value (1,). The Gaussian decoder's kernel body and launchers
(``gaussian_log_likelihood.py``) in the form ``POWER``; a shared log-scale's ``exp(-s)`` is
computed once per program.
"""

from __future__ import annotations

from itertools import product

import torch
import triton
import triton.language as tl

from . import _aot_spec as aot
from . import gaussian_log_likelihood as gl
from ._common import DTYPES, data_tile_name

POWERS = (2, 1)


# The kernels are the Gaussian's bodies under this op's name (the AOT table's and torch.compile's).
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
    gl.gaussian_log_likelihood_fwd_kernel(
        x_ptr, m_ptr, s_ptr, out_ptr, gm_ptr, gs_ptr, R, B, D, scale, kmu_ptr, kv_ptr, kout_ptr, kgmu_ptr, kgv_ptr,
        KR, KJ, kscale, SHARED_S, POWER, WITH_GRAD, HAS_KL, BLOCK_R, BLOCK_D, KBLOCK_R, KBLOCK_J,
    )  # fmt: skip


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
    gl.gaussian_log_likelihood_bwd_kernel(
        go_ptr, go_sr, x_ptr, m_ptr, s_ptr, gm_ptr, gs_ptr, R, B, D, scale, SHARED_S, POWER, BLOCK_R, BLOCK_D
    )


def _check_power(power) -> int:
    if power not in POWERS:
        raise ValueError(f"power must be 2 or 1, got {power!r}")
    return int(power)


def error_log_likelihood_forward(out, grad_mean, grad_log_scale, x, mean, log_scale, reduction, scale, power):
    """``out``: ``(R,)`` for 'rows', 0-d for 'sum'; ``grad_mean`` ``(R, D)`` or ``(0,)``;
    ``grad_log_scale`` ``log_scale``'s shape (``(1,)`` when shared) or ``(0,)``."""
    form = _check_power(power)
    gl._forward(
        error_log_likelihood_fwd_kernel, form, out, grad_mean, grad_log_scale, x, mean, log_scale, reduction, scale
    )


def error_log_likelihood_backward(grad_mean, grad_log_scale, grad_out, x, mean, log_scale, reduction, scale, power):
    form = _check_power(power)
    gl._backward(
        error_log_likelihood_bwd_kernel, form, grad_mean, grad_log_scale, grad_out, x, mean, log_scale, reduction, scale
    )


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
