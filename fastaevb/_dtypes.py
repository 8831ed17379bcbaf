"""The dtypes the fused ops return, one rule for every backend (and the pure-torch path).

Summed values (per-row log-likelihoods, KL rows, log-weights, reduced losses) of float16 /
bfloat16 inputs come back in float32: they are accumulated in float32, and rounding a sum to
half would throw that away (a total near 6.5e6 has a bfloat16 spacing of 32768). Elementwise
values (``z``, the drop-ins' ``reduction='none'``) and gradients keep the input dtype, as
torch's do. float32 and float64 inputs give values of their own dtype.
"""

from __future__ import annotations

import torch

HALF = (torch.float16, torch.bfloat16)


def value_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a summed value computed from inputs of ``dtype``."""
    return torch.float32 if dtype in HALF else dtype


def upcast_half(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if it is half (the pure-torch path computes sums as the kernels do)."""
    return t.float() if t.dtype in HALF else t
