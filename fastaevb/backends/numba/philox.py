"""Philox4x32-10 normal noise for the numba backend: Triton's ``tl.randn(seed, offset)``.

The same algorithm as ``triton/language/random.py`` (``philox_impl``, ``randint4x``,
``uint_to_uniform_float``, ``pair_uniform_to_normal``) for an int64 offset, so a seed gives the
same eps on CPU and GPU: the integer words and the uniforms are identical; only the libm
rounding of log / cos may differ by an ulp.

Every 32-bit word is carried in a uint64 and masked with 0xffffffff after each add; the high
word of a 32x32-bit product is ``(a * b) >> 32`` in uint64 (``umulhi``). All constants are
numpy-typed globals: numba turns ``uint64 op int64`` into float64 and ``float32 op float``
into float64, so a bare Python literal here would silently change the arithmetic.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_U32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_SIGN32 = np.uint64(0x80000000)
_KEY_A = np.uint64(0x9E3779B9)  # Weyl increments of the key (golden ratio, sqrt(3) - 1)
_KEY_B = np.uint64(0xBB67AE85)
_ROUND_A = np.uint64(0xD2511F53)  # round multipliers
_ROUND_B = np.uint64(0xCD9E8D57)

_INT32_TO_UNIT = np.float32(4.6566127342e-10)  # uint_to_uniform_float: INT32_MAX maps just below 1
_U1_MIN = np.float32(1.0e-7)
_TWO_PI = np.float32(6.283185307179586)
_MINUS_TWO = np.float32(-2.0)


@njit(cache=True, inline="always")
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on counter (c0, c1, c2, c3), key (k0, k1); all uint64 holding 32 bits."""
    for _ in range(10):
        pa = _ROUND_A * c0  # hi -> c2, lo -> c3
        pb = _ROUND_B * c2  # hi -> c0, lo -> c1
        n0 = (pb >> _SHIFT32) ^ c1 ^ k0
        n2 = (pa >> _SHIFT32) ^ c3 ^ k1
        c1 = pb & _U32
        c3 = pa & _U32
        c0 = n0
        c2 = n2
        k0 = (k0 + _KEY_A) & _U32
        k1 = (k1 + _KEY_B) & _U32
    return c0, c1, c2, c3


@njit(cache=True, inline="always")
def philox_words(seed, offset):
    """``randint4x(seed, offset)`` for int64 ``offset``: key = (seed lo32, seed hi32),
    counter = (offset lo32, offset hi32, 0, 0). ``seed`` is a uint64, ``offset`` an int64."""
    off = np.uint64(offset)  # two's complement bits of the int64
    zero = np.uint64(0)
    return philox4x32_10(off & _U32, off >> _SHIFT32, zero, zero, seed & _U32, seed >> _SHIFT32)


@njit(cache=True, inline="always")
def uint_to_uniform(word):
    """Bitcast the 32-bit word to int32, fold negatives with ``~x``, scale to [0, 1) in float32."""
    folded = word ^ _U32 if word & _SIGN32 else word  # ~x for x < 0, as a value in [0, 2**31)
    return np.float32(np.int64(folded)) * _INT32_TO_UNIT


@njit(cache=True, inline="always")
def box_muller(u1, u2):
    """First output of ``pair_uniform_to_normal``: ``sqrt(-2 log max(u1, 1e-7)) * cos(2 pi u2)``."""
    u1 = max(_U1_MIN, u1)
    th = _TWO_PI * u2
    r = math.sqrt(_MINUS_TWO * math.log(u1))
    return r * math.cos(th)


@njit(cache=True, inline="always")
def randn(seed, offset):
    """``tl.randn(seed, offset)``: float32 standard normal for uint64 ``seed``, int64 ``offset``."""
    w0, w1, _, _ = philox_words(seed, offset)
    return box_muller(uint_to_uniform(w0), uint_to_uniform(w1))
