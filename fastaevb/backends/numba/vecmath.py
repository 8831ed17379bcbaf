"""exp(-|l|) and log1p(e) without a libm call, so that LLVM vectorizes the loops that use them.

numba lowers ``math.exp`` / ``math.log1p`` to scalar libm calls (there is no SVML here), and a
call in the loop body stops the loop vectorizer: the Bernoulli kernels then ran 5-10x slower than
their memory traffic allows. These are the classic polynomial forms, branch-free (selects), with
the exponent scaling done by bit manipulation:

- ``exp``: Cody-Waite reduction ``x = k ln2 + r``, ``|r| <= ln2 / 2``; Cephes' ``expf`` polynomial
  (float32) and ``exp`` Pade form (float64); ``2^k`` applied as two factors ``2^(k/2)``, so results
  down to the smallest subnormal are right (the scale factors stay normal).
- ``log(u)`` for ``u`` in [1, 2]: fdlibm's ``__ieee754_log`` / ``logf`` kernel (``s = f / (2 + f)``,
  the Lg minimax polynomial, ``ln2`` split in two), with ``u`` halved above sqrt(2).

Both are within an ulp or so of the correctly rounded value (``tests/test_cpu_backends.py``
sweeps them against float64). ``log1p(e)`` for ``e = exp(-|l|)`` is ``log(u) + (e - (u - 1)) / u``
with ``u = 1 + e``: the rounding of ``u`` corrected to first order, as the C++ kernels do, and
``1 / u`` is the sigmoid's division.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .scalars import as_type

# --- helpers typed on the float type ------------------------------------------------------------


@intrinsic
def _pow2(typingctx, k, like):
    """``2.0**k`` in the float type of ``like`` for an integer ``k`` in the normal exponent range,
    built from its bit pattern: ``(k + 127) << 23`` (float32) or ``(k + 1023) << 52`` (float64)."""
    if not isinstance(k, types.Integer) or like not in (types.float32, types.float64):
        return None
    single = like == types.float32

    def codegen(context, builder, signature, args):
        width, bias, mantissa = (32, 127, 23) if single else (64, 1023, 52)
        itype = ir.IntType(width)
        value = args[0]
        if value.type.width > width:
            value = builder.trunc(value, itype)
        elif value.type.width < width:
            value = builder.sext(value, itype)
        bits = builder.shl(builder.add(value, ir.Constant(itype, bias)), ir.Constant(itype, mantissa))
        return builder.bitcast(bits, ir.FloatType() if single else ir.DoubleType())

    return like(k, like), codegen


def _is_single(like):
    raise NotImplementedError("jitted code only")


@overload(_is_single, inline="always")
def _is_single_overload(like):
    single = like == types.float32

    def impl(like):
        return single

    return impl


# --- exp(-|l|) ------------------------------------------------------------------------------------

# float32: Cephes expf (polynomial for e^r - 1 - r), ln2 split in 9 + 24 bits
_F_LOG2E = 1.44269504088896341
_F_C1, _F_C2 = 0.693359375, -2.12194440e-4
_F_P0, _F_P1, _F_P2 = 1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3
_F_P3, _F_P4, _F_P5 = 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1
_F_LO = -104.0  # exp(-104) < 2^-150: rounds to 0
# float64: Cephes exp (Pade form), ln2 split
_D_C1, _D_C2 = 6.93145751953125e-1, 1.42860682030941723212e-6
_D_P0, _D_P1, _D_P2 = 1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1
_D_Q0, _D_Q1 = 3.00198505138664455042e-6, 2.52448340349684104192e-3
_D_Q2, _D_Q3 = 2.27265548208155028766e-1, 2.00000000000000000009e0
_D_LO = -746.0  # exp(-746) < 2^-1075: rounds to 0


@njit(cache=True, inline="always")
def exp_neg_abs(l):
    """``exp(-|l|)`` in (0, 1] (0 below the smallest subnormal); NaN stays NaN."""
    x = -abs(l)
    single = _is_single(l)
    lo = as_type(_F_LO if single else _D_LO, l)
    kx = x if x > lo else lo  # NaN -> lo (its result is replaced below)
    k = np.floor(kx * as_type(_F_LOG2E, l) + as_type(0.5, l))
    one = as_type(1.0, l)
    if single:
        r = kx - k * as_type(_F_C1, l) - k * as_type(_F_C2, l)
        p = as_type(_F_P0, l) * r + as_type(_F_P1, l)
        p = p * r + as_type(_F_P2, l)
        p = p * r + as_type(_F_P3, l)
        p = p * r + as_type(_F_P4, l)
        p = p * r + as_type(_F_P5, l)
        y = p * (r * r) + r + one
    else:
        r = kx - k * as_type(_D_C1, l) - k * as_type(_D_C2, l)
        rr = r * r
        px = r * ((as_type(_D_P0, l) * rr + as_type(_D_P1, l)) * rr + as_type(_D_P2, l))
        q = ((as_type(_D_Q0, l) * rr + as_type(_D_Q1, l)) * rr + as_type(_D_Q2, l)) * rr + as_type(_D_Q3, l)
        y = one + as_type(2.0, l) * (px / (q - px))
    ki = np.int64(k)
    k1 = ki >> 1
    y = y * _pow2(k1, l) * _pow2(ki - k1, l)  # type: ignore[call-arg]  # a numba intrinsic (typing context implicit); two factors: right down to the subnormals
    return y if x == x else x


# --- log(u), u in [1, 2] -------------------------------------------------------------------------

# fdlibm __ieee754_logf / __ieee754_log: Lg minimax polynomials in s = f / (2 + f), ln2 split
_F_LG1, _F_LG2, _F_LG3, _F_LG4 = 0.66666662693, 0.40000972152, 0.28498786688, 0.24279078841
_F_LN2_HI, _F_LN2_LO = 6.9313812256e-01, 9.0580006145e-06
_D_LG1, _D_LG2, _D_LG3 = 6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01
_D_LG4, _D_LG5 = 2.222219843214978396e-01, 1.818357216161805012e-01
_D_LG6, _D_LG7 = 1.531383769920937332e-01, 1.479819860511658591e-01
_D_LN2_HI, _D_LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_SQRT2 = 1.41421356237309504880


@njit(cache=True, inline="always")
def log_1_2(u):
    """``log(u)`` for ``u`` in [1, 2] (NaN stays NaN)."""
    one = as_type(1.0, u)
    half = as_type(0.5, u)
    big = u > as_type(_SQRT2, u)
    f = (u * half if big else u) - one  # exact (Sterbenz)
    k = one if big else as_type(0.0, u)
    s = f / (as_type(2.0, u) + f)
    z = s * s
    w = z * z
    hfsq = half * f * f
    if _is_single(u):
        rr = z * (as_type(_F_LG1, u) + w * as_type(_F_LG3, u)) + w * (as_type(_F_LG2, u) + w * as_type(_F_LG4, u))
        return k * as_type(_F_LN2_HI, u) - ((hfsq - (s * (hfsq + rr) + k * as_type(_F_LN2_LO, u))) - f)
    t1 = w * (as_type(_D_LG2, u) + w * (as_type(_D_LG4, u) + w * as_type(_D_LG6, u)))
    t2 = z * (as_type(_D_LG1, u) + w * (as_type(_D_LG3, u) + w * (as_type(_D_LG5, u) + w * as_type(_D_LG7, u))))
    return k * as_type(_D_LN2_HI, u) - ((hfsq - (s * (hfsq + (t1 + t2)) + k * as_type(_D_LN2_LO, u))) - f)
