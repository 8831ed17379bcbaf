"""The noise stream: ``eps[i] = tl.randn(seed, i)`` for int64 offsets i (docs/noise.md).

Reference: ``torch.randn`` has a different stream; the contract is Triton's Philox4x32-10
(key = seed lo/hi, counter = (i lo32, i hi32, 0, 0)), which the CPU backends reimplement.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _aot_spec as aot
from ._common import NOISE_BLOCK, launch, seed_tensor


@triton.jit(do_not_specialize=["N"])
def randn_kernel(off_ptr, out_ptr, seed_ptr, N: tl.int64, BLOCK: tl.constexpr):
    seed = tl.load(seed_ptr)
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < N
    offsets = tl.load(off_ptr + idx, mask=mask, other=0)  # int64: counters past 2**32 use hi word
    tl.store(out_ptr + idx, tl.randn(seed, offsets), mask=mask)


def randn(seed, offsets: torch.Tensor) -> torch.Tensor:
    """``seed``: a Python int or a one-element int64 tensor (read on the device)."""
    off = offsets.contiguous().view(-1)
    out = torch.empty(off.shape, dtype=torch.float32, device=off.device)
    n = off.numel()
    if n:
        launch(
            randn_kernel,
            (triton.cdiv(n, NOISE_BLOCK),),
            off.device,
            off,
            out,
            seed_tensor(seed, off.device),
            n,
            BLOCK=NOISE_BLOCK,
        )
    return out.view(offsets.shape)


def aot_specs() -> list:
    """The one launch of :func:`randn` (int64 offsets, float32 normals)."""
    with aot.recording() as rec:
        randn(1, torch.zeros(aot.ROWS, dtype=torch.int64))
    return rec.specs
