"""When the loss ops compute their gradients: in the forward pass (the default) or in backward.

A scalar loss's gradients can be written in the same kernel pass as its value, because the
upstream gradient only scales them: one pass over the decoder output instead of two, but the
gradients (a decoder output's worth) are held from forward to backward. Inside
:func:`low_memory` the loss ops hold nothing but references to their inputs between forward and
backward and make that second pass in backward, as eager PyTorch does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_low_memory: list[bool] = []


@contextlib.contextmanager
def low_memory(enabled: bool = True) -> Iterator[None]:
    """Inside the ``with`` block the loss ops (``sgvb_loss``, ``iwae_loss``, the decoder
    log-likelihoods, ``gaussian_kl``, the BCE drop-ins) compute their gradients in backward and
    hold nothing between forward and backward; the value is the same and the gradients agree to
    the rounding of one more pass. Outside it (or with ``enabled=False``) they write their
    gradients in the forward pass: fastest, holding the gradients until backward. The mode in
    effect when an op runs decides; under ``torch.compile`` it is read while tracing, so a compiled
    function called in the other mode is traced once more for it."""
    _low_memory.append(bool(enabled))
    try:
        yield
    finally:
        _low_memory.pop()


def gradients_in_forward() -> bool:
    """Whether a loss op whose gradient autograd will want writes it in the forward pass now."""
    return not (_low_memory and _low_memory[-1])
