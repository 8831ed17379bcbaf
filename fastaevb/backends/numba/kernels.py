"""The fused SGVB kernels of the numba backend: one ``prange`` over rows per step.

Calling convention (``fastaevb/backends/numba/__init__.py`` is the only caller): numpy views of contiguous
torch tensors, outputs first, given by the caller. Inputs are 2-D ``(rows, columns)``; an output
whose shape depends on the reduction or on whether it is wanted is a flat 1-D array, so 'none' /
'rows' / 'sum' (and an empty, not wanted output) share one compiled specialization. An output is
written iff it is non-empty (``size > 0``), so no ``with_grad`` flag is passed. An absent optional
input is an empty array of the same type plus a ``has_*`` flag, so ``None`` adds no
specialization either. ``reduce`` is NONE / ROWS / SUM, ``scale`` a float64, ``has_*``
booleans, ``seed`` a uint64.

Rows accumulate in the float type T of the input; 'sum' keeps every row sum in T and adds
them in float64 in row order after the parallel loop, so the result does not depend on the
thread count. (One exception, as in the C++ backend: with a shared Gaussian log-variance or error log-scale
the per-row sums of squares / errors are float64, because its gradient cancels.) The elementwise math is
in ``math``, the noise in ``philox``; ``kernel`` (``jit``) is ``njit``
with an on-disk cache that is invalidated by a change to any of these files.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from .jit import kernel
from .math import (
    as_type,
    bernoulli_logits_pos_weight_term,
    bernoulli_logits_term,
    bernoulli_probs_grad,
    bernoulli_probs_target_grad,
    bernoulli_probs_term,
    error_shared_err,
    error_shared_grad_log_scale,
    error_shared_row,
    error_slope,
    error_term,
    gaussian_row,
    gaussian_shared_grad_logvar,
    gaussian_shared_row,
    gaussian_term,
    kl_row,
    kl_term,
    normal_logpdf_std,
    out_of_range,
    reparam_sd,
)
from .philox import randn as philox_randn

NONE, ROWS, SUM = 0, 1, 2  # the reductions 'none' (elementwise), 'rows', 'sum'


# --- row reduction driver ---------------------------------------------------------------------


@kernel(inline="always")
def _row_sums(out, rows, reduce):
    """Where row r's scaled sum goes: ``out`` itself for 'rows', a scratch row buffer otherwise."""
    return out if reduce == ROWS else np.empty(rows if reduce == SUM else 0, out.dtype)


@kernel(inline="always")
def _row_scale(scale, reduce, like):
    """Factor applied to a row sum when it is stored: ``scale`` for 'rows', 1 for 'sum'
    (scaled once, in float64, by :func:`_finish_total`)."""
    return as_type(scale if reduce == ROWS else 1.0, like)


@kernel()
def _finish_total(sums, scale, reduce, out):
    """'sum': ``out[0] = scale * sum_r sums[r]``, the row sums added in float64 in row order."""
    if reduce == SUM:
        total = 0.0
        for r in range(sums.shape[0]):
            total += sums[r]
        out[0] = as_type(scale * total, out)


@kernel(fastmath={"reassoc", "nsz"})
def _row_sum(buf):
    """``sum(buf)`` in its type, reassociated so that LLVM vectorizes it (a fixed tree of partial
    sums, the same for any thread count). A function of its own: the flags stay on these adds."""
    s = as_type(0.0, buf)
    for i in range(buf.shape[0]):
        s += buf[i]
    return s


@kernel(inline="always")
def _grad_weight(grad_out, reduce, scale, r, columns, c):
    """The incoming gradient of element (r, c) times ``scale``, for any reduce mode."""
    if reduce == NONE:
        g = grad_out[r * columns + c]
    elif reduce == ROWS:
        g = grad_out[r]
    else:
        g = grad_out[0]
    return g * as_type(scale, grad_out)


# --- noise ------------------------------------------------------------------------------------


@kernel(parallel=True)
def randn(out, offsets, seed):
    """``out[i] = tl.randn(seed, offsets[i])`` (float32)."""
    for i in prange(offsets.shape[0]):
        out[i] = philox_randn(seed, offsets[i])


@kernel(parallel=True)
def randn_flat(out, seed):
    """``out[i] = tl.randn(seed, i)`` for every flat index i, widened to out's type: the eps of a
    (L, R, J) sample tensor without an offsets array."""
    for i in prange(out.shape[0]):
        out[i] = as_type(philox_randn(seed, i), out)


@kernel(inline="always")
def _eps(eps, has_eps, seed, i, like):
    """eps at flat index ``i`` of the (L, R, J) sample tensor: given, or regenerated from Philox."""
    return eps[i] if has_eps else as_type(philox_randn(seed, i), like)


# --- reparameterize + KL ----------------------------------------------------------------------


@kernel(parallel=True)
def reparameterize_kl_forward(z, kl, log_q, log_p, mu, logvar, eps, has_eps, seed, samples):
    """z (L*R*J,); kl (R,) or empty (not wanted); log_q / log_p (L*R,) or empty; eps flat
    (L*R*J,) if given."""
    rows, latent = mu.shape
    with_kl = kl.size > 0
    log_weights = log_q.size > 0
    zero = as_type(0.0, mu)
    for r in prange(rows):
        if log_weights:
            for l in range(samples):
                log_q[l * rows + r] = zero
                log_p[l * rows + r] = zero
        kl_sum = zero
        for j in range(latent):
            m = mu[r, j]
            v = logvar[r, j]
            if with_kl:
                term, _, _ = kl_term(m, v)
                kl_sum += term
            sd = reparam_sd(v)
            for l in range(samples):
                i = (l * rows + r) * latent + j
                e = _eps(eps, has_eps, seed, i, m)
                zl = m + sd * e
                z[i] = zl
                if log_weights:
                    log_q[l * rows + r] += normal_logpdf_std(e, v)
                    log_p[l * rows + r] += normal_logpdf_std(zl, zero)
        if with_kl:
            kl[r] = kl_row(kl_sum)


@kernel(parallel=True)
def reparameterize_kl_backward(
    grad_mu,
    grad_logvar,
    grad_z,
    has_grad_z,
    grad_kl,
    has_grad_kl,
    grad_log_q,
    has_grad_log_q,
    grad_log_p,
    has_grad_log_p,
    mu,
    logvar,
    eps,
    has_eps,
    seed,
    samples,
):
    """grad_mu, grad_logvar (R, J) from any subset of grad_z (L*R*J,), grad_kl (R,),
    grad_log_q / grad_log_p (L*R,); z and eps are recomputed, never read back."""
    rows, latent = mu.shape
    zero = as_type(0.0, mu)
    half = as_type(0.5, mu)
    through_z = has_grad_z or has_grad_log_p
    for r in prange(rows):
        g_kl = grad_kl[r] if has_grad_kl else zero
        g_q = zero  # sum_l grad_log_q[l, r]: d log q / d v = -0.5 per element and sample
        if has_grad_log_q:
            for l in range(samples):
                g_q += grad_log_q[l * rows + r]
        for j in range(latent):
            m = mu[r, j]
            v = logvar[r, j]
            g_m = zero  # sum_l g_zl
            g_v = zero  # sum_l g_zl * eps_l
            if through_z:
                sd = reparam_sd(v)
                for l in range(samples):
                    i = (l * rows + r) * latent + j
                    e = _eps(eps, has_eps, seed, i, m)
                    g = grad_z[i] if has_grad_z else zero
                    if has_grad_log_p:  # d log p / d z = -z
                        g -= grad_log_p[l * rows + r] * (m + sd * e)
                    g_m += g
                    g_v += g * e
                g_v = g_v * half * sd  # dz/dv = 0.5 * eps * sd
            if has_grad_kl:
                _, d_mu, d_v = kl_term(m, v)
                g_m += g_kl * d_mu
                g_v += g_kl * d_v
            grad_mu[r, j] = g_m
            grad_logvar[r, j] = g_v - half * g_q


# --- analytic KL ------------------------------------------------------------------------------


@kernel(parallel=True)
def gaussian_kl_forward(out, grad_mu, grad_logvar, mu, logvar, reduce, scale):
    """out (R,) or (1,); grad_mu, grad_logvar flat (R*J,) of the scaled total, each when non-empty."""
    rows, latent = mu.shape
    with_grad_mu = grad_mu.size > 0
    with_grad_logvar = grad_logvar.size > 0
    sums = _row_sums(out, rows, reduce)
    row_scale = _row_scale(scale, reduce, mu)
    g_scale = as_type(scale, mu)
    for r in prange(rows):
        s = as_type(0.0, mu)
        for j in range(latent):
            term, d_mu, d_v = kl_term(mu[r, j], logvar[r, j])
            s += term
            if with_grad_mu:
                grad_mu[r * latent + j] = g_scale * d_mu
            if with_grad_logvar:
                grad_logvar[r * latent + j] = g_scale * d_v
        sums[r] = row_scale * kl_row(s)
    _finish_total(sums, scale, reduce, out)


@kernel(parallel=True)
def gaussian_kl_backward(grad_mu, grad_logvar, grad_out, mu, logvar, reduce, scale):
    """grad_out (R,) or (1,) -> grad_mu, grad_logvar (R, J)."""
    rows, latent = mu.shape
    for r in prange(rows):
        w = _grad_weight(grad_out, reduce, scale, r, latent, 0)
        for j in range(latent):
            _, d_mu, d_v = kl_term(mu[r, j], logvar[r, j])
            grad_mu[r, j] = w * d_mu
            grad_logvar[r, j] = w * d_v


# --- Bernoulli decoder (from logits, or from probabilities with ``probs``) ---------------------
# The drop-ins' extras: ``weight`` (w) multiplies each element's value and gradients,
# ``pos_weight`` (q, logits only) switches to torch's pos-weighted form, ``target_grad`` also
# writes dll/dx. Absent, they cost a loop-invariant branch each (numba hoists them).


@kernel(inline="always")
def _bernoulli_ll(v, x, q, has_pos, probs):
    if has_pos:
        return bernoulli_logits_pos_weight_term(v, x, q)[0]
    return bernoulli_probs_term(v, x) if probs else bernoulli_logits_term(v, x)[0]


@kernel(inline="always")
def _bernoulli_grads(v, x, q, has_pos, probs, target_grad):
    """``(dll/dv, dll/dx)`` (dll/dx 0 unless ``target_grad``); from logits both come from one exp(-|l|)."""
    if has_pos:
        _, dl, dx = bernoulli_logits_pos_weight_term(v, x, q)
        return dl, dx
    if probs:
        return bernoulli_probs_grad(v, x), bernoulli_probs_target_grad(v) if target_grad else as_type(0.0, v)
    return bernoulli_logits_term(v, x)[1], v  # dll/dx = l


@kernel(inline="always")
def _factor(f, row_stride, col_stride, has, r, c, like):
    """Element (r, c) of a broadcast weight (its memory ``f`` from its first element, and its
    strides), or 1 when absent."""
    return f[r * row_stride + c * col_stride] if has else as_type(1.0, like)


@kernel(parallel=True)
def bernoulli_forward(
    out, grad, grad_x, decoded, x, weight, w_rs, w_cs, has_weight, pos_weight, q_rs, q_cs, has_pos, reduce, scale, probs
):
    """out (R*D,) / (R,) / (1,); grad (R*D,) and grad_x (R*D,) of the scaled total, each when non-empty.
    ``decoded`` holds logits, or probabilities (``-F.binary_cross_entropy``) when ``probs``;
    weight / pos_weight (R, D) (broadcast views) when ``has_*``. Returns (out-of-range
    probabilities, always 0 for logits; out-of-range targets, each data row counted once, on its
    first use r < B). A weight is its memory and its two strides (``_factor``): one compiled
    specialization for every layout."""
    rows, cols = decoded.shape
    batch = x.shape[0]
    with_grad = grad.size > 0
    target_grad = grad_x.size > 0
    sums = _row_sums(out, rows, reduce)
    row_scale = _row_scale(scale, reduce, decoded)
    v_scale = as_type(scale, decoded)
    bad_in = 0
    bad_x = 0
    for r in prange(rows):
        b = r % batch
        first = r < batch
        s = as_type(0.0, decoded)
        row_bad_in = 0
        row_bad_x = 0
        for c in range(cols):
            v = decoded[r, c]
            xv = x[b, c]
            if probs:
                row_bad_in += out_of_range(v)
            if first:
                row_bad_x += out_of_range(xv)
            xf = as_type(xv, decoded)
            q = _factor(pos_weight, q_rs, q_cs, has_pos, r, c, v)
            ll = _bernoulli_ll(v, xf, q, has_pos, probs)
            w = _factor(weight, w_rs, w_cs, has_weight, r, c, v)
            if has_weight:
                ll *= w
            if with_grad or target_grad:
                dl, dx = _bernoulli_grads(v, xf, q, has_pos, probs, target_grad)
                if with_grad:
                    grad[r * cols + c] = v_scale * (dl * w if has_weight else dl)
                if target_grad:
                    grad_x[r * cols + c] = v_scale * (dx * w if has_weight else dx)
            s += ll
            if reduce == NONE:
                out[r * cols + c] = v_scale * ll
        if reduce != NONE:
            sums[r] = row_scale * s
        bad_in += row_bad_in
        bad_x += row_bad_x
    _finish_total(sums, scale, reduce, out)
    return bad_in, bad_x


@kernel(parallel=True)
def bernoulli_logits_forward(out, grad, grad_x, logits, x, reduce, scale):
    """From logits without weight / pos_weight (the training loss): the kernel of
    :func:`bernoulli_forward` with each row's elementwise loop free of reductions and libm calls,
    so LLVM vectorizes it; the row's values go to a contiguous row buffer, summed by :func:`_row_sum`
    (or scaled into ``out`` for 'none'). Returns the logits outside [0, 1] (none in a large batch:
    probabilities passed as logits, which sgvb_loss warns of) and the out-of-range targets (data
    rows counted on their first use)."""
    rows, cols = logits.shape
    batch = x.shape[0]
    with_grad = grad.size > 0
    target_grad = grad_x.size > 0
    sums = _row_sums(out, rows, reduce)
    row_scale = _row_scale(scale, reduce, logits)
    v_scale = as_type(scale, logits)
    bad = 0
    outside = 0
    for r in prange(rows):
        b = r % batch
        buf = np.empty(cols, logits.dtype)  # not a view of out: a strided type would not vectorize
        row_bad = 0
        row_outside = 0
        if with_grad:
            for c in range(cols):
                xv = x[b, c]
                row_bad += out_of_range(xv)
                row_outside += out_of_range(logits[r, c])
                ll, dl = bernoulli_logits_term(logits[r, c], as_type(xv, logits))
                buf[c] = ll
                grad[r * cols + c] = v_scale * dl
        else:
            for c in range(cols):
                xv = x[b, c]
                row_bad += out_of_range(xv)
                row_outside += out_of_range(logits[r, c])
                buf[c] = bernoulli_logits_term(logits[r, c], as_type(xv, logits))[0]
        if target_grad:
            for c in range(cols):
                grad_x[r * cols + c] = v_scale * logits[r, c]
        if reduce == NONE:
            for c in range(cols):
                out[r * cols + c] = v_scale * buf[c]
        else:
            sums[r] = row_scale * _row_sum(buf)
        bad += row_bad if r < batch else 0
        outside += row_outside
    _finish_total(sums, scale, reduce, out)
    return outside, bad


@kernel(parallel=True)
def bernoulli_backward(
    grad,
    grad_x,
    grad_out,
    decoded,
    x,
    weight,
    w_rs,
    w_cs,
    has_weight,
    pos_weight,
    q_rs,
    q_cs,
    has_pos,
    reduce,
    scale,
    probs,
):
    """grad (R, D) = grad_out (broadcast by ``reduce``) * scale * w * dll/dv: ``x - sigmoid(l)``
    from logits, ``(x - p) / max(p (1 - p), 1e-12)`` from probabilities (pos-weighted: see
    ``math``); grad_x (R*D,) likewise with dll/dx when non-empty."""
    rows, cols = decoded.shape
    batch = x.shape[0]
    target_grad = grad_x.size > 0
    for r in prange(rows):
        b = r % batch
        for c in range(cols):
            v = decoded[r, c]
            q = _factor(pos_weight, q_rs, q_cs, has_pos, r, c, v)
            dl, dx = _bernoulli_grads(v, as_type(x[b, c], decoded), q, has_pos, probs, target_grad)
            g = _grad_weight(grad_out, reduce, scale, r, cols, c)
            if has_weight:
                g *= _factor(weight, w_rs, w_cs, has_weight, r, c, v)
            grad[r, c] = g * dl
            if target_grad:
                grad_x[r * cols + c] = g * dx


# --- location-scale decoders (Gaussian and error) ---------------------------------------------
# ll = -sum_d (a |x - m|^p exp(-s) + a s + c), one loop each way for both ops. ``form`` is GAUSSIAN
# (a = 1/2, p = 2, c = log(2 pi) / 2, s the log-variance) or the error decoders' power p = 2 or 1
# (a = 1, c = 0, s the log-scale): a loop-invariant branch to math's per-op formulas, which keep
# each op's rounding. log_scale is (R, D), or (1, 1) with ``shared``: then s and exp(-s) are float64
# scalars, the per-row sums S = sum_d |x - m|^p float64 (see math.py), and the gradient of s sums
# the rows' dll_row/ds in float64 in row order.
GAUSSIAN = 0


@kernel(inline="always")
def _ls_term(x, m, s, form):
    """``(q, dll/dm, dll/ds)`` per element, ``q = |x - m|^p exp(-s) + s``."""
    if form == GAUSSIAN:
        return gaussian_term(x, m, s)
    return error_term(x, m, s, form)


@kernel(inline="always")
def _ls_row(q_sum, n, form):
    """Row log-likelihood from ``q_sum = sum_d q_d``."""
    return gaussian_row(q_sum, n) if form == GAUSSIAN else -q_sum


@kernel(inline="always")
def _ls_shared_err(x, m, form):
    """Shared s: ``(x - m, |x - m|^p)``, the power in float64."""
    return error_shared_err(x, m, 2 if form == GAUSSIAN else form)


@kernel(inline="always")
def _ls_shared_slope(d, form):
    """Shared s: dll/dm without exp(-s), ``a p |d|^(p-1) sign(d)`` (the Gaussian's a p = 1: d)."""
    return d if form == GAUSSIAN else error_slope(d, form)


@kernel(inline="always")
def _ls_shared_row(err_sum, s, inv_scale, n, form):
    """Shared s: the row log-likelihood from ``S``, float64."""
    if form == GAUSSIAN:
        return gaussian_shared_row(err_sum, s, inv_scale, n)
    return error_shared_row(err_sum, s, inv_scale, n)


@kernel()
def _shared_grad_log_scale(err_sums, grad_out, weighted, reduce, scale, inv_scale, cols, form):
    """``sum_r w_r * dll_row/ds(err_sums[r])`` in float64 in row order, with ``w_r = scale *
    grad_out[r]`` (``grad_out[0]`` for 'sum') when ``weighted``, else ``scale``. The weight goes
    into each term, so no rows give 0 whatever the scale (a mean over 0 rows)."""
    total = 0.0
    for r in range(err_sums.shape[0]):
        w = scale
        if weighted:
            w *= np.float64(grad_out[r] if reduce == ROWS else grad_out[0])
        if form == GAUSSIAN:
            total += w * gaussian_shared_grad_logvar(err_sums[r], inv_scale, cols)
        else:
            total += w * error_shared_grad_log_scale(err_sums[r], inv_scale, cols)
    return total


@kernel(parallel=True)
def location_scale_forward(out, grad_mean, grad_log_scale, x, mean, log_scale, shared, reduce, scale, form):
    """out (R,) or (1,); grad_mean (R*D,), grad_log_scale (R*D,) or (1,) when shared, each when non-empty."""
    rows, cols = mean.shape
    with_grad_mean = grad_mean.size > 0
    with_grad_log_scale = grad_log_scale.size > 0
    batch = x.shape[0]
    sums = _row_sums(out, rows, reduce)
    row_scale = _row_scale(scale, reduce, mean)
    g_scale = as_type(scale, mean)
    if shared:
        s = np.float64(log_scale[0, 0])
        inv_scale = math.exp(-s)
        g_mean = as_type(scale * inv_scale, mean)  # d (scale * ll) / dm = scale exp(-s) * slope
        err_sums = np.empty(rows, np.float64)
        for r in prange(rows):
            b = r % batch
            err = 0.0
            for c in range(cols):
                d, e = _ls_shared_err(x[b, c], mean[r, c], form)
                err += e
                if with_grad_mean:
                    grad_mean[r * cols + c] = g_mean * _ls_shared_slope(d, form)
            err_sums[r] = err
            sums[r] = row_scale * as_type(_ls_shared_row(err, s, inv_scale, cols, form), mean)
        if with_grad_log_scale:
            grad_log_scale[0] = as_type(
                _shared_grad_log_scale(err_sums, out, False, reduce, scale, inv_scale, cols, form), mean
            )
    else:
        for r in prange(rows):
            b = r % batch
            q_sum = as_type(0.0, mean)
            for c in range(cols):
                q, d_m, d_s = _ls_term(x[b, c], mean[r, c], log_scale[r, c], form)
                q_sum += q
                if with_grad_mean:
                    grad_mean[r * cols + c] = g_scale * d_m
                if with_grad_log_scale:
                    grad_log_scale[r * cols + c] = g_scale * d_s
            sums[r] = row_scale * _ls_row(q_sum, cols, form)
    _finish_total(sums, scale, reduce, out)


@kernel(parallel=True)
def location_scale_backward(grad_mean, grad_log_scale, grad_out, x, mean, log_scale, shared, reduce, scale, form):
    """grad_out (R,) or (1,) -> grad_mean (R*D,), grad_log_scale (R*D,) or (1,) when shared, each when non-empty."""
    rows, cols = mean.shape
    with_grad_mean = grad_mean.size > 0
    with_grad_log_scale = grad_log_scale.size > 0
    batch = x.shape[0]
    if shared:
        inv_scale = math.exp(-np.float64(log_scale[0, 0]))
        err_sums = np.empty(rows, np.float64)
        for r in prange(rows):
            b = r % batch
            go = grad_out[r] if reduce == ROWS else grad_out[0]
            g_mean = as_type(np.float64(go) * scale * inv_scale, mean)
            err = 0.0
            for c in range(cols):
                d, e = _ls_shared_err(x[b, c], mean[r, c], form)
                err += e
                if with_grad_mean:
                    grad_mean[r * cols + c] = g_mean * _ls_shared_slope(d, form)
            err_sums[r] = err
        if with_grad_log_scale:
            grad_log_scale[0] = as_type(
                _shared_grad_log_scale(err_sums, grad_out, True, reduce, scale, inv_scale, cols, form), mean
            )
    else:
        for r in prange(rows):
            b = r % batch
            w = _grad_weight(grad_out, reduce, scale, r, cols, 0)
            for c in range(cols):
                _, d_m, d_s = _ls_term(x[b, c], mean[r, c], log_scale[r, c], form)
                if with_grad_mean:
                    grad_mean[r * cols + c] = w * d_m
                if with_grad_log_scale:
                    grad_log_scale[r * cols + c] = w * d_s


# --- the importance-weighted bound (ops.table's iwae_loss) -------------------------------------
# One pass per datapoint b (``prange`` over b): its K decoder rows k B + b, each row's elementwise
# loop as the decoder's own kernel has it (the same math functions, so the same rounding), their
# gradients with scale 1 into the gradient rows, the log weights and their log-sum-exp in float64,
# then the K gradient rows scaled by ``c_k = -scale up_b w~_k`` while still in cache.
LOGITS, PROBS, LOCATION_SCALE = 0, 1, 2  # the decoder families of iwae_loss


@kernel(inline="always")
def _iwae_decoder_row(grad, grad_log_scale, decoded, x, log_scale, r, b, family, form, shared, s, inv_scale, buf):
    """Row r's log-likelihood (float64) against data row b, d ll / d decoded (and a per-element
    log-scale's) into the flat gradient rows when non-empty, and its range counts (out-of-range
    probabilities, targets, logits outside [0, 1]). A shared log-scale ``s`` (``inv_scale =
    exp(-s)``): the row's float64
    ``|x - m|^p`` sum is returned second (float64), for its gradient once the weights are known."""
    cols = decoded.shape[1]
    base = r * cols
    with_grad = grad.size > 0
    bad_in = 0
    bad_x = 0
    outside = 0
    if family == LOGITS:
        for c in range(cols):  # no libm call and no reduction in the loop: LLVM vectorizes it
            xv = x[b, c]
            bad_x += out_of_range(xv)
            outside += out_of_range(decoded[r, c])
            ll, dl = bernoulli_logits_term(decoded[r, c], as_type(xv, decoded))
            buf[c] = ll
            if with_grad:
                grad[base + c] = dl
        return np.float64(_row_sum(buf)), 0.0, bad_in, bad_x, outside
    if family == PROBS:
        total = as_type(0.0, decoded)
        for c in range(cols):
            v = decoded[r, c]
            xv = x[b, c]
            bad_in += out_of_range(v)
            bad_x += out_of_range(xv)
            total += bernoulli_probs_term(v, as_type(xv, decoded))
            if with_grad:
                grad[base + c] = bernoulli_probs_grad(v, as_type(xv, decoded))
        return np.float64(total), 0.0, bad_in, bad_x, outside
    if shared:
        g_mean = as_type(inv_scale, decoded)
        err = 0.0
        for c in range(cols):
            d, e = _ls_shared_err(x[b, c], decoded[r, c], form)
            err += e
            if with_grad:
                grad[base + c] = g_mean * _ls_shared_slope(d, form)
        return np.float64(as_type(_ls_shared_row(err, s, inv_scale, cols, form), decoded)), err, 0, 0, 0
    q_sum = as_type(0.0, decoded)
    for c in range(cols):
        q, d_m, d_s = _ls_term(x[b, c], decoded[r, c], log_scale[r, c], form)
        q_sum += q
        if with_grad:
            grad[base + c] = d_m
            grad_log_scale[base + c] = d_s
    return np.float64(_ls_row(q_sum, cols, form)), 0.0, 0, 0, 0


@kernel(parallel=True)
def iwae_loss(bounds, shared_grads, grad_decoded, grad_log_scale, grad_z, grad_mu, grad_logvar, grad_gate,
              decoded, x, log_scale, z, mu, logvar, grad_out, upstream_rows, scale, family, form, shared):  # fmt: skip
    """Per datapoint b: ``log w_k = ll_k + 0.5 sum_j (eps_kj^2 - z_kj^2 + v_j)`` (``eps = (z - mu)
    exp(-v / 2)``) for its K decoder rows (:func:`_iwae_decoder_row`), ``bounds[b] =
    logsumexp_k log w_k - log K`` (float64) and, when ``grad_decoded`` is non-empty, with ``c_k =
    -scale up_b w~_k`` (``up_b = grad_out[b]`` with ``upstream_rows``, else ``grad_out[0]``): the
    K gradient rows (and a per-element log-scale's) times c_k, a shared log-scale's gradient
    ``sum_k c_k d ll_k / ds`` into ``shared_grads[b]``, ``d/dz_k = c_k (eps_k exp(-v / 2) - z_k)``,
    the direct ``d/dmu = -exp(-v / 2) sum_k c_k eps_k`` and ``d/dv = 0.5 sum_k c_k (1 - eps_k^2)``
    and ``-c_k`` for the gate, each when non-empty. Returns the range counts (probabilities,
    targets: each data row once) and the logits outside [0, 1]."""
    samples, batch, latent = z.shape
    cols = decoded.shape[1]
    log_k = math.log(samples)
    grads = grad_decoded.size > 0
    s = np.float64(log_scale[0, 0]) if shared else 0.0
    inv_scale = math.exp(-s)
    bad_in = 0
    bad_x = 0
    outside = 0
    for b in prange(batch):
        inv_std = np.empty(latent, np.float64)
        half_v = 0.0
        for j in range(latent):
            v = np.float64(logvar[b, j])
            inv_std[j] = math.exp(-0.5 * v)
            half_v += v
        log_w = np.empty(samples, np.float64)
        errs = np.empty(samples, np.float64)
        buf = np.empty(cols, decoded.dtype)
        top = -np.inf
        for k in range(samples):
            r = k * batch + b
            ll, err, row_bad_in, row_bad_x, row_outside = _iwae_decoder_row(
                grad_decoded, grad_log_scale, decoded, x, log_scale, r, b, family, form, shared, s, inv_scale, buf
            )
            errs[k] = err
            bad_in += row_bad_in
            bad_x += row_bad_x if k == 0 else 0
            outside += row_outside
            q = 0.0
            for j in range(latent):
                zj = np.float64(z[k, b, j])
                e = (zj - np.float64(mu[b, j])) * inv_std[j]
                q += e * e - zj * zj
            log_w[k] = ll + 0.5 * (q + half_v)
            top = max(top, log_w[k])
        total = 0.0
        for k in range(samples):
            total += math.exp(log_w[k] - top)
        lse = top + math.log(total)
        bounds[b] = lse - log_k
        if not grads:
            continue
        up = np.float64(grad_out[b] if upstream_rows else grad_out[0])
        acc_mu = np.zeros(latent, np.float64)
        acc_v = np.zeros(latent, np.float64)
        shared_grad = 0.0
        for k in range(samples):
            r = k * batch + b
            c = -scale * up * math.exp(log_w[k] - lse)
            ct = as_type(c, grad_decoded)
            for i in range(cols):  # the row just written: still in cache (K D values per datapoint)
                grad_decoded[r * cols + i] *= ct
            if grad_log_scale.size > 0:
                for i in range(cols):
                    grad_log_scale[r * cols + i] *= ct
            if shared:
                if form == GAUSSIAN:
                    shared_grad += c * gaussian_shared_grad_logvar(errs[k], inv_scale, cols)
                else:
                    shared_grad += c * error_shared_grad_log_scale(errs[k], inv_scale, cols)
            for j in range(latent):
                zj = np.float64(z[k, b, j])
                e = (zj - np.float64(mu[b, j])) * inv_std[j]
                if grad_z.size > 0:
                    grad_z[r * latent + j] = as_type(c * (e * inv_std[j] - zj), grad_decoded)
                acc_mu[j] -= c * e
                acc_v[j] += c * (1.0 - e * e)
            if grad_gate.size > 0:
                grad_gate[r] = as_type(-c, grad_decoded)
        if shared_grads.size > 0:
            shared_grads[b] = shared_grad
        if grad_mu.size > 0:
            for j in range(latent):
                grad_mu[b * latent + j] = as_type(acc_mu[j] * inv_std[j], grad_decoded)
                grad_logvar[b * latent + j] = as_type(0.5 * acc_v[j], grad_decoded)
    return bad_in, bad_x, outside
