"""Launcher helpers shared by the per-step files: tile shapes, accumulator dtypes, reductions.

Everything here is allocation or a tiny torch op; nothing inspects tensor values, so the
launchers stay sync-free except for the documented range check.
"""

from __future__ import annotations

import functools

import torch

# One tile per kernel family, fixed so that ``aot.py`` can enumerate every specialization.
# Latent-space kernels (reparameterize/KL) see small J (2..200): many rows per program.
# Decoder kernels see wide rows (D = 784, 3072, ...): few rows, wide chunks.
LATENT_TILE = dict(BLOCK_R=16, BLOCK_D=64)
DATA_TILE = dict(BLOCK_R=4, BLOCK_D=256)
NOISE_BLOCK = 1024


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Row sums accumulate in float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def grid_rows(rows: int, tile: dict) -> tuple[int]:
    return (max(1, -(-rows // tile["BLOCK_R"])),)


@functools.lru_cache(maxsize=None)
def _zero(dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.zeros(1, dtype=dtype, device=device)


def zero_or(t, numel: int, dtype: torch.dtype, device: torch.device):
    """``(tensor, stride)``: ``t`` read with stride 1, or a cached zero read with stride 0 when
    ``t`` is None (an absent upstream gradient). Avoids one constexpr flag per optional input."""
    if t is None:
        return _zero(dtype, str(device)), 0
    return t.to(dtype).contiguous(), 1


def target_view(x: torch.Tensor) -> torch.Tensor:
    """Bool targets are read as uint8 (zero-copy), so kernels see float or uint8 targets only."""
    return x.view(torch.uint8) if x.dtype == torch.bool else x


def finish(partials: torch.Tensor, reduce: str, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """Per-row partial sums (accumulator dtype) -> 'rows' (R,) or 'total' 0-d, in ``dtype``.

    'total' sums the row partials in float64 in a fixed order: deterministic, no atomics."""
    if reduce == "total":
        if partials.numel() == 0:  # no rows: scale * 0, so a 'mean' over nothing is NaN like torch
            return torch.full((), 0.0 * scale, dtype=dtype, device=partials.device)
        return partials.sum(dtype=torch.float64).to(dtype)
    return partials.to(dtype)


def grad_out_strides(reduce: str, width: int) -> tuple[int, int]:
    """Strides (per row, per element) reading ``grad_out`` of a given reduce mode as (R, D)."""
    if reduce == "elements":
        return width, 1
    if reduce == "rows":
        return 1, 0
    return 0, 0
