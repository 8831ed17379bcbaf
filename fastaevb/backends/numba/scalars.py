"""``as_type``: a constant in the float type of a value, for code generic over float32 / float64.

numba types a bare Python float as float64, and ``float32 * float64`` is float64, so every
constant in the formulas goes through ``as_type(value, like)``.
"""

from __future__ import annotations

from numba import types
from numba.extending import overload


def as_type(value, like):
    """``value`` converted to the numba scalar type of ``like`` (jitted code only)."""
    raise NotImplementedError("as_type is only callable from numba-jitted code")


@overload(as_type, inline="always")
def _as_type(value, like):
    target = like.dtype if isinstance(like, types.Array) else like

    def impl(value, like):
        return target(value)

    return impl
