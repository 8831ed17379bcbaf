"""The elementwise SGVB formulas (docs/math.md; the noise is docs/noise.md) for the numba backend, written once.

Every kernel in ``kernels`` calls these; none repeats a formula. They are generic over
the float type T of their first argument: constants go through ``as_type(value, like)``,
because numba types a bare Python float as float64 and ``float32 * float64`` is float64.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .scalars import as_type
from .vecmath import exp_neg_abs, log_1_2

__all__ = ["as_type"]  # kernels take it from here

LOG_2PI = math.log(2.0 * math.pi)


# --- value checks -----------------------------------------------------------------------------


@njit(cache=True, inline="always")
def out_of_range(v):
    """1 if a target / probability is outside [0, 1]: ``v < 0 or v > 1`` (NaN is not flagged);
    uint8 (bool) targets: any value but 0 or 1."""
    return 1 if (v < 0 or v > 1) else 0


@njit(cache=True, inline="always")
def max_keep_nan(a, lo):
    """``std::max(a, lo)``: ``lo`` when ``a < lo``, else ``a`` (so NaN stays NaN)."""
    return lo if a < lo else a


# --- Gaussian KL (Appendix B) and the reparameterized sample (eq. 4) --------------------------


@njit(cache=True, inline="always")
def kl_term(mu, v):
    """``(mu^2 + exp(v) - 1 - v, dKL/dmu, dKL/dv)`` with ``exp(v) - 1`` as ``expm1(v)``;
    KL = 0.5 * sum_j of the first, dKL/dmu = mu, dKL/dv = 0.5 * expm1(v). Unused parts are
    dead code after inlining."""
    em1 = math.expm1(v)
    return mu * mu + (em1 - v), mu, as_type(0.5, v) * em1


@njit(cache=True, inline="always")
def kl_row(term_sum):
    """KL of a row from the sum of :func:`kl_term` values."""
    return as_type(0.5, term_sum) * term_sum


@njit(cache=True, inline="always")
def normal_logpdf_std(e, v):
    """``-0.5 * (log(2 pi) + v + e^2)``: log N(z; mu, exp(v)) at the standardized ``e = (z - mu) /
    exp(0.5 v)``. log q(z|x) terms are ``(eps, v)``, log p(z) terms ``(z, 0)``."""
    return as_type(-0.5, e) * (as_type(LOG_2PI, e) + v + e * e)


@njit(cache=True, inline="always")
def reparam_sd(v):
    """``exp(0.5 * v)``, the standard deviation in ``z = mu + sd * eps``."""
    return math.exp(as_type(0.5, v) * v)


# --- Bernoulli decoder (Appendix C.1) ---------------------------------------------------------


@njit(cache=True, inline="always")
def softplus_tail(l):
    """``(e, 1 / (1 + e), log1p(e))`` for ``e = exp(-|l|)``: the sigmoid's one division also corrects
    the rounding of ``u = 1 + e`` in ``log1p(e) = log(u) + (e - (u - 1)) / u`` (docs/math.md).
    No libm call (``vecmath``), so the loops using it vectorize."""
    one = as_type(1.0, l)
    e = exp_neg_abs(l)
    u = one + e
    inv = one / u
    return e, inv, log_1_2(u) + (e - (u - one)) * inv


@njit(cache=True, inline="always")
def bernoulli_logits_term(l, x):
    """``(ll, dll/dl)`` with ``ll = x*l - softplus(l) = (x - [l > 0]) * l - log1p(exp(-|l|))``
    and ``dll/dl = x - sigmoid(l)``, sigmoid from the same ``e = exp(-|l|)``. ``x`` has l's type."""
    one = as_type(1.0, l)
    e, inv, tail = softplus_tail(l)
    pos = l > 0
    dl = x - (inv if pos else e * inv)
    ll = (x - (one if pos else as_type(0.0, l))) * l - tail
    return ll, dl


@njit(cache=True, inline="always")
def bernoulli_probs_term(p, x):
    """Exactly ``-F.binary_cross_entropy`` (ATen CPU): ``x * max(log p, -100) - (x - 1) *
    max(log1p(-p), -100)``, the max keeping NaN."""
    lo = as_type(-100.0, p)
    log_p = max_keep_nan(math.log(p), lo)
    log_1mp = max_keep_nan(math.log1p(-p), lo)
    return x * log_p - (x - as_type(1.0, p)) * log_1mp


@njit(cache=True, inline="always")
def bernoulli_logits_pos_weight_term(l, x, q):
    """``(ll, dll/dl, dll/dx)`` of torch's ``binary_cross_entropy_with_logits`` with ``pos_weight`` q,
    negated, in torch's form: ``ll = (1 + (q - 1) x) logsig(l) - (1 - x) l``,
    ``dll/dl = q x - (q x + 1 - x) sigmoid(l)``, ``dll/dx = q logsig(l) - logsig(-l)``, with torch's
    ``logsig(l) = min(l, 0) - log1p(exp(-|l|))``; one ``exp(-|l|)`` for all of them."""
    zero = as_type(0.0, l)
    one = as_type(1.0, l)
    e, inv, tail = softplus_tail(l)
    log_sig = (l if l < zero else zero) - tail
    log_sig_neg = (-l if -l < zero else zero) - tail
    sig = inv if l > zero else e * inv
    qx = q * x
    ll = ((q - one) * x + one) * log_sig - (one - x) * l
    return ll, qx - (qx + one - x) * sig, q * log_sig - log_sig_neg


@njit(cache=True, inline="always")
def bernoulli_probs_target_grad(p):
    """``dll/dx = logit(p) = log(p / (1 - p))`` of :func:`bernoulli_probs_term`, unclamped as torch's
    ``binary_cross_entropy`` target gradient (``-inf`` at 0, ``inf`` at 1)."""
    if p == as_type(1.0, p):
        return as_type(math.inf, p)
    return math.log(p / (as_type(1.0, p) - p))


# ATen's binary_cross_entropy_backward clamps with `constexpr float EPSILON = 1e-12`: float32
# 1e-12 (9.99999996e-13) even for float64 inputs. Kept bit-identical.
_BCE_EPSILON = float(np.float32(1e-12))


@njit(cache=True, inline="always")
def bernoulli_probs_grad(p, x):
    """d ll / d p of :func:`bernoulli_probs_term`: ``(x - p) / max((1 - p) * p, 1e-12)`` (ATen)."""
    return (x - p) / max_keep_nan((as_type(1.0, p) - p) * p, as_type(_BCE_EPSILON, p))


# --- Gaussian decoder (Appendix C.2) ----------------------------------------------------------
# ll = -0.5 * (log 2pi + v + (x - m)^2 exp(-v)); a row is finished once from the sum of
# q = v + (x - m)^2 exp(-v) by gaussian_row, so log 2pi is added once per row.


@njit(cache=True, inline="always")
def gaussian_term(x, m, v):
    """``(q, dll/dm, dll/dv)`` with ``q = v + (x - m)^2 exp(-v)``, ``dll/dm = (x - m) exp(-v)``,
    ``dll/dv = -0.5 * (1 - (x - m)^2 exp(-v))``."""
    d = x - m
    iv = math.exp(-v)
    sq = d * d * iv
    return v + sq, d * iv, as_type(-0.5, v) * (as_type(1.0, v) - sq)


@njit(cache=True, inline="always")
def gaussian_row(q_sum, n):
    """Row log-likelihood from ``q_sum = sum_d q_d`` over ``n`` elements: ``-0.5 (n log 2pi + q_sum)``."""
    return as_type(-0.5, q_sum) * (as_type(n * LOG_2PI, q_sum) + q_sum)


# One shared log-variance v: a row needs only S2 = sum_d (x_d - m_d)^2 and exp(-v) once;
# dll/dm = (x - m) exp(-v) is one factor times the difference. dll/dv summed over a row,
# -0.5 (n - S2 exp(-v)), cancels once the variance fits the data, so S2 is accumulated in
# float64 (the differences x - m stay in T) and the row values below are float64 formulas.


@njit(cache=True, inline="always")
def gaussian_shared_sq(x, m):
    """``(x - m, (x - m)^2)`` with the difference in T and its square in float64."""
    d = x - m
    d64 = float(d)
    return d, d64 * d64


@njit(cache=True, inline="always")
def gaussian_shared_row(sq_sum, v, inv_var, n):
    """Row log-likelihood, float64: ``-0.5 * (n (log 2pi + v) + S2 exp(-v))``."""
    return -0.5 * (n * (LOG_2PI + v) + sq_sum * inv_var)


@njit(cache=True, inline="always")
def gaussian_shared_grad_logvar(sq_sum, inv_var, n):
    """Row sum of dll/dv, float64: ``-0.5 * (n - S2 exp(-v))``."""
    return -0.5 * (n - sq_sum * inv_var)


# --- error decoders (error_log_likelihood) ----------------------------------------------------
# ll = -(|x - m|^p exp(-s) + s) with p = 2 (squared error) or 1 (absolute error): the Gaussian's
# structure with other constants. A row is finished from the sum of q = |x - m|^p exp(-s) + s.


@njit(cache=True, inline="always")
def error_sign(d):
    """``sign(d)`` exactly as torch's (abs and l1_loss backward): 0 at 0 and for NaN; compare-selects."""
    one = as_type(1.0, d)
    zero = as_type(0.0, d)
    return (one if d > 0 else zero) - (one if d < 0 else zero)


@njit(cache=True, inline="always")
def error_slope(d, power):
    """``p |d|^(p-1) sign(d)``: ``2 d`` (p = 2), ``sign(d)`` (p = 1)."""
    return as_type(2.0, d) * d if power == 2 else error_sign(d)


@njit(cache=True, inline="always")
def error_term(x, m, s, power):
    """``(q, dll/dm, dll/ds)`` with ``e = |x - m|^p exp(-s)``, ``q = e + s``,
    ``dll/dm = p |x - m|^(p-1) sign(x - m) exp(-s)``, ``dll/ds = e - 1``."""
    d = x - m
    iv = math.exp(-s)
    e = (d * d if power == 2 else abs(d)) * iv
    return e + s, error_slope(d, power) * iv, e - as_type(1.0, s)


# One shared log-scale s: a row needs only S = sum_d |x_d - m_d|^p and exp(-s) once. dll/ds summed
# over a row, S exp(-s) - n, cancels once the scale fits the data, so S is float64 (as the Gaussian's).


@njit(cache=True, inline="always")
def error_shared_err(x, m, power):
    """``(x - m, |x - m|^p)`` with the difference in T and its power in float64."""
    d = x - m
    d64 = float(d)
    return d, d64 * d64 if power == 2 else abs(d64)


@njit(cache=True, inline="always")
def error_shared_row(err_sum, s, inv_scale, n):
    """Row log-likelihood, float64: ``-(S exp(-s) + n s)``."""
    return -(err_sum * inv_scale + n * s)


@njit(cache=True, inline="always")
def error_shared_grad_log_scale(err_sum, inv_scale, n):
    """Row sum of dll/ds, float64: ``S exp(-s) - n``."""
    return err_sum * inv_scale - n
