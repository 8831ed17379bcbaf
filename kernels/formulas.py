"""Elementwise formulas shared by every Triton kernel of fastaevb (each written once).

All helpers take values already in the accumulation dtype (float32, or float64 for
float64 inputs) and return values of that dtype. Python float literals combined with a
tensor are materialised in the tensor's dtype, so float64 kernels keep full precision.

NaN handling: ``tl.maximum``/``tl.minimum`` may drop NaN on GPU, so every clamp below is
a ``tl.where`` on a comparison that is False for NaN, which keeps the NaN.

``libdevice.expm1``/``log1p`` are extern calls the interpreter cannot run, so both are
built here from ``exp``/``log`` with the usual cancellation-free forms.
"""

import triton
import triton.language as tl

LOG_2PI = tl.constexpr(1.8378770664093453)  # log(2*pi)
# torch's binary_cross_entropy backward clamps p(1-p) at EPSILON = 1e-12 stored as a float32
# (9.99999996e-13); the float64 reference gradient carries that value, so we use it too.
BCE_EPS = tl.constexpr(9.999999960041972e-13)


@triton.jit
def scalar_as(s, like):
    """A runtime float argument (``tl.float64``) as a 0-d value of ``like``'s dtype, exactly.

    Adding to a zero of the target dtype (instead of ``tl.cast``) keeps float64 precision in
    both the compiled kernel (fp64 argument) and the interpreter (Python float)."""
    return (tl.zeros([1], like.dtype) + s).to(like.dtype)


@triton.jit
def div(a, b):
    """``a / b`` correctly rounded, as torch divides. Triton lowers float32 ``/`` to the
    approximate ``div.full.f32`` (about 2 ulp); ``div_rn`` is IEEE division (``div.rn.f32``).
    float64 ``/`` is already ``div.rn.f64``."""
    if b.dtype == tl.float32:
        return tl.math.div_rn(a, b)
    else:
        return a / b


@triton.jit
def exp_m1_m_x(v):
    """``exp(v) - 1 - v`` without cancellation near 0 (Taylor series for |v| < 0.5)."""
    if v.dtype == tl.float64:
        # sum_{n>=2} v^n / n!  up to n = 17 (truncation < 1e-19 relative at |v| = 0.5)
        p = 1.0 / 355687428096000.0
        p = p * v + 1.0 / 20922789888000.0
        p = p * v + 1.0 / 1307674368000.0
        p = p * v + 1.0 / 87178291200.0
        p = p * v + 1.0 / 6227020800.0
        p = p * v + 1.0 / 479001600.0
        p = p * v + 1.0 / 39916800.0
        p = p * v + 1.0 / 3628800.0
        p = p * v + 1.0 / 362880.0
        p = p * v + 1.0 / 40320.0
        p = p * v + 1.0 / 5040.0
        p = p * v + 1.0 / 720.0
        p = p * v + 1.0 / 120.0
        p = p * v + 1.0 / 24.0
        p = p * v + 1.0 / 6.0
        p = p * v + 0.5
    else:
        # up to n = 9 (truncation < 3e-9 relative at |v| = 0.5)
        p = 1.0 / 362880.0
        p = p * v + 1.0 / 40320.0
        p = p * v + 1.0 / 5040.0
        p = p * v + 1.0 / 720.0
        p = p * v + 1.0 / 120.0
        p = p * v + 1.0 / 24.0
        p = p * v + 1.0 / 6.0
        p = p * v + 0.5
    small = v * v * p
    big = tl.exp(v) - 1.0 - v
    return tl.where(tl.abs(v) < 0.5, small, big)  # NaN -> big -> NaN


@triton.jit
def expm1(v):
    """``exp(v) - 1``, accurate near 0 (same series as :func:`exp_m1_m_x`)."""
    return tl.where(tl.abs(v) < 0.5, v + exp_m1_m_x(v), tl.exp(v) - 1.0)


@triton.jit
def log1p(y):
    """``log(1 + y)`` for y >= -1, accurate near 0 (Goldberg: log(u) * y / (u - 1), u = 1 + y)."""
    u = 1.0 + y
    d = u - 1.0
    return tl.where(d == 0.0, y, tl.log(u) * div(y, tl.where(d == 0.0, 1.0, d)))


@triton.jit
def clamp_min_nan(a, lo: tl.constexpr):
    """``max(a, lo)`` that keeps NaN (like ``std::max(a, lo)`` in the torch CPU kernels)."""
    return tl.where(a < lo, lo, a)


# ---------------------------------------------------------------------------------------
# Appendix B: Gaussian KL against N(0, I) and the reparameterised sample
# ---------------------------------------------------------------------------------------
@triton.jit
def kl_term(mu, v):
    """``0.5 * (mu^2 + exp(v) - 1 - v)``, one KL summand."""
    return 0.5 * (mu * mu + exp_m1_m_x(v))


@triton.jit
def kl_grad_logvar(v):
    """``d kl_term / d v = 0.5 * expm1(v)`` (``d / d mu`` is ``mu``)."""
    return 0.5 * expm1(v)


@triton.jit
def log_normal_std(e):
    """``-0.5*log(2 pi) - 0.5*e^2``: log N(e; 0, 1) (log p(z) with e = z; log q adds -0.5 v)."""
    return -0.5 * LOG_2PI - 0.5 * e * e


# ---------------------------------------------------------------------------------------
# Appendix C.1: Bernoulli decoder
# ---------------------------------------------------------------------------------------
@triton.jit
def bernoulli_logits(l, x):
    """``x*l - softplus(l)`` and its gradient ``x - sigmoid(l)``, both from one ``exp(-|l|)``.

    softplus(l) = max(l, 0) + log1p(exp(-|l|)), so ll = (x - [l > 0]) * l - log1p(t)."""
    t = tl.exp(-tl.abs(l))
    pos = l > 0.0
    ll = (x - tl.where(pos, 1.0, 0.0)) * l - log1p(t)
    inv = div(1.0, 1.0 + t)
    sig = tl.where(pos, inv, t * inv)  # NaN l: t is NaN, so sig is NaN
    return ll, x - sig


@triton.jit
def bernoulli_logits_pos_weight(l, x, q):
    """torch's ``binary_cross_entropy_with_logits`` with ``pos_weight`` q, negated, in its form, and
    its gradients, from one ``exp(-|l|)``: ``ll = (1 + (q - 1) x) logsig(l) - (1 - x) l``,
    ``d ll / d l = q x - (q x + 1 - x) sigmoid(l)``, ``d ll / d x = q logsig(l) - logsig(-l)``,
    with torch's ``logsig(l) = min(l, 0) - log1p(exp(-|l|))``."""
    t = tl.exp(-tl.abs(l))
    tail = log1p(t)
    log_sig = tl.where(l < 0.0, l, 0.0) - tail
    log_sig_neg = tl.where(-l < 0.0, -l, 0.0) - tail
    inv = div(1.0, 1.0 + t)
    sig = tl.where(l > 0.0, inv, t * inv)
    qx = q * x
    ll = ((q - 1.0) * x + 1.0) * log_sig - (1.0 - x) * l
    return ll, qx - (qx + 1.0 - x) * sig, q * log_sig - log_sig_neg


@triton.jit
def logit(p):
    """``log(p / (1 - p))``: ``d ll / d x`` of :func:`bernoulli_probs`, unclamped as torch's
    ``binary_cross_entropy`` target gradient (``-inf`` at p = 0, ``inf`` at 1)."""
    at1 = p == 1.0
    return tl.where(at1, float("inf"), tl.log(div(p, tl.where(at1, 1.0, 1.0 - p))))


@triton.jit
def bernoulli_probs(p, x):
    """``-binary_cross_entropy(p, x)`` elementwise (logs clamped at -100) and its gradient
    ``(x - p) / max(p (1 - p), 1e-12)`` (1e-12 as float32, see BCE_EPS), NaN-propagating like torch's CPU kernel."""
    lp = clamp_min_nan(tl.log(p), -100.0)
    l1p = clamp_min_nan(log1p(-p), -100.0)
    ll = x * lp + (1.0 - x) * l1p
    den = clamp_min_nan((1.0 - p) * p, BCE_EPS)
    return ll, div(x - p, den)


@triton.jit
def out_of_unit_range(v):
    """1 where ``v < 0`` or ``v > 1`` (NaN is not flagged), else 0, as int32."""
    return ((v < 0.0) | (v > 1.0)).to(tl.int32)


# ---------------------------------------------------------------------------------------
# Appendix C.2: Gaussian decoder
# ---------------------------------------------------------------------------------------
@triton.jit
def gaussian_ll(x, m, v):
    """``-0.5 (log 2pi + v + (x-m)^2 exp(-v))`` and its gradients wrt m and v."""
    r = x - m
    iv = tl.exp(-v)
    q = r * r * iv
    ll = -0.5 * (LOG_2PI + v + q)
    return ll, r * iv, -0.5 * (1.0 - q)


# ---------------------------------------------------------------------------------------
# The error decoders (F.mse_loss / F.l1_loss with a log-scale): error_log_likelihood
# ---------------------------------------------------------------------------------------
@triton.jit
def error_power(r, POWER: tl.constexpr):
    """``|r|^p`` for p = 2 (squared error) or 1 (absolute error)."""
    if POWER == 2:
        return r * r
    else:
        return tl.abs(r)


@triton.jit
def error_grad_mean(r, POWER: tl.constexpr):
    """``d |x - m|^p / d m`` negated, ``p |r|^(p-1) sign(r)`` with ``r = x - m``: ``2 r`` or
    ``sign(r)`` (0 at r = 0, as torch's abs backward; NaN stays NaN)."""
    if POWER == 2:
        return 2.0 * r
    else:
        return tl.where(r > 0.0, 1.0, tl.where(r < 0.0, -1.0, r))


@triton.jit
def error_ll(x, m, s, POWER: tl.constexpr):
    """``-(|x-m|^p exp(-s) + s)`` and its gradients wrt m and s."""
    r = x - m
    iv = tl.exp(-s)
    q = error_power(r, POWER) * iv
    return -(q + s), error_grad_mean(r, POWER) * iv, q - 1.0
