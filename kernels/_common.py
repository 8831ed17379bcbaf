"""Launcher helpers shared by the per-step files: tile tables, launch, seed and zero buffers,
output slots (docs/backends.md: outputs are given; an empty ``(0,)`` one is not wanted).

Nothing here inspects tensor values on the host: every launcher of the Triton backend is free
of device-to-host synchronization on CUDA (the range check reports through a device-side
assert, see ``reduce.py``). On CPU tensors (``TRITON_INTERPRET=1``) the check reads the
kernel's count on the host and raises ``ValueError``: there a read costs nothing.
"""

from __future__ import annotations

import functools

import torch

from .._torch_private import is_functional_tracing

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
REDUCTIONS = ("none", "rows", "sum")  # elementwise (Bernoulli ops only), one value per row, 0-d total

# --- tiles ---------------------------------------------------------------------------------------
# Tiles are picked from the row width (D for decoder kernels, J for latent kernels) out of a small
# table, so that each kernel module's ``aot_specs`` reaches every specialization a launcher can
# pick (one width per tile and width kind, ``_aot_spec.widths``). Each entry is
# (BLOCK_R, BLOCK_D, num_warps[, maxnreg]): at most 4 elements per thread (8 spilled in float64 on
# sm_80/sm_90), checked by the AOT resource table. ``maxnreg=96`` on the Philox kernels: without a
# cap ptxas picks as few as 48 registers and spills 4-8 B around libdevice cosf's never-taken
# Payne-Hanek branch; with it, at most 94 registers and no spills on sm_80 and sm_90. Likewise
# ``maxnreg=128`` on the 8-warp decoder tile (uncapped, ptxas picked 64 and spilled 8 B on sm_90).
# The width argument itself is left to Triton's specialization (not ``do_not_specialize``): a
# width of 1 becomes a constant, a width divisible by 16 gets the divisibility hint (``ld.global.v4``
# along columns, see the AOT PTX counts). Width 1 still loads 32 bits per lane (coalesced): the
# row mask ``rows < R`` is not known to be uniform over 4 rows.
#
# Latent-space kernels (reparameterize/KL): J is small (2..200): many rows per program.
LATENT_TILES = {
    "narrow": dict(BLOCK_R=32, BLOCK_D=32, num_warps=8, maxnreg=96),  # J <= 32 (J = 20: 62% of lanes busy)
    "wide": dict(BLOCK_R=16, BLOCK_D=64, num_warps=8, maxnreg=96),  # J > 32
}
# Decoder kernels: wide rows (D = 784, 3072, ...), or D = 1 (drop-in losses on 1-D inputs).
DATA_TILES = {
    "one": dict(BLOCK_R=1024, BLOCK_D=1, num_warps=8),  # D == 1: 1024 rows, 4 contiguous per thread
    "wide": dict(BLOCK_R=4, BLOCK_D=256, num_warps=8, maxnreg=128),  # D > 1 (uncapped: 8 B spills on sm_90)
}
# The BCE drop-ins' extras (weight, pos_weight, the target gradient) keep more values live per
# element: on wide rows half the rows and warps per program, the same 4 elements per thread (so
# float32 loads stay ld.global.v4). The wide tile spilled 8-40 B in float64 on sm_90 under its
# 128-register cap, and this one 16 B (probabilities, uint8 targets, weight); capped at 144 it
# spills nothing on sm_80 and sm_90 (AOT table).
DATA_EXTRAS_TILES = {"one": DATA_TILES["one"], "wide": dict(BLOCK_R=2, BLOCK_D=256, num_warps=4, maxnreg=144)}
# The backward of reparameterize_kl keeps L samples' worth of state per element: fewer rows per
# program keeps it in registers (see the AOT resource table).
# (16, 32) needs 96-167 registers and spills 8 B on sm_80; (8, 32) / (4, 64) need at most 80.
LATENT_BWD_TILES = {
    "narrow": dict(BLOCK_R=8, BLOCK_D=32, num_warps=4),
    "wide": dict(BLOCK_R=4, BLOCK_D=64, num_warps=4),
}
# The KL rows computed inside the fused loss kernels: one fixed tile (the KL is a small part of a
# loss step); J is not specialized there.
LOSS_KL_TILE = dict(KBLOCK_R=16, KBLOCK_J=32)
NOISE_BLOCK = 1024
FINISH_BLOCK = 1024
MAX_WIDTH = 2**31 - 1  # widths are int32 in the kernels (row counts are int64)


# Every tile table, by name (the AOT table names a launch's tile ``<table>.<tile>``).
# The IWAE loss (iwae_loss.py): one program per datapoint walks its K decoder rows, a tile of
# BLOCK_K samples by BLOCK_D columns at a time (x's row broadcast over the samples).
IWAE_TILES = {
    "one": dict(BLOCK_K=256, BLOCK_D=1, num_warps=4, maxnreg=128),  # D == 1
    # D > 1: 4 elements per thread, as the decoder kernels; uncapped, ptxas picked 40-64 registers
    # and spilled 8-16 B (sm_80 and sm_90)
    "wide": dict(BLOCK_K=4, BLOCK_D=256, num_warps=8, maxnreg=128),
}
TILE_TABLES = {
    "latent": LATENT_TILES,
    "latent_bwd": LATENT_BWD_TILES,
    "data": DATA_TILES,
    "data_extras": DATA_EXTRAS_TILES,
    "iwae": IWAE_TILES,
}


def latent_tile_name(width: int) -> str:
    return "narrow" if width <= 32 else "wide"


def data_tile_name(width: int) -> str:
    return "one" if width == 1 else "wide"


def latent_tile(width: int) -> dict:
    return LATENT_TILES[latent_tile_name(width)]


def latent_bwd_tile(width: int) -> dict:
    return LATENT_BWD_TILES[latent_tile_name(width)]


def data_tile(width: int, extras: bool = False) -> dict:
    """``extras``: a Bernoulli launch with the BCE drop-ins' weight / pos_weight / target gradient."""
    return (DATA_EXTRAS_TILES if extras else DATA_TILES)[data_tile_name(width)]


def iwae_tile(width: int) -> dict:
    return IWAE_TILES[data_tile_name(width)]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Row sums accumulate in float64 for float64 inputs, float32 otherwise; summed outputs (rows,
    totals, KL and log-weight rows) are returned in this dtype too (``fastaevb._dtypes.value_dtype``):
    float32 for half inputs, whose gradients and elementwise outputs keep the input dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def grid_rows(rows: int, tile: dict, key: str = "BLOCK_R") -> tuple[int]:
    return (max(1, -(-rows // tile[key])),)


def fused_kl_launch_args(kl, grid: tuple[int], placeholder) -> tuple[tuple[int], tuple]:
    """Grid and trailing kernel arguments of a decoder launch that may also do the KL of the fused
    loss: ``kl`` is ``(mu, logvar, kl_partials, grad_mu, grad_logvar, kl_scale)`` or None (then the
    KL arguments are ``placeholder`` pointers and zero sizes, unused under ``HAS_KL=False``).
    Returns ``(grid, (mu, logvar, kl_partials, grad_mu, grad_logvar, rows, latent, kl_scale))``."""
    if kl is None:
        return grid, (placeholder,) * 5 + (0, 0, 0.0)
    kmu, kv, kout, kgmu, kgv, kscale = kl
    rows, latent = kmu.shape
    grid = (max(grid[0], grid_rows(rows, LOSS_KL_TILE, "KBLOCK_R")[0]),)
    return grid, (kmu, kv, kout, kgmu, kgv, rows, latent, float(kscale))


def check_width(width: int, name: str = "row width") -> None:
    if width > MAX_WIDTH:
        raise ValueError(
            f"the Triton backend takes rows of at most {MAX_WIDTH} values ({name} is {width}); "
            "reshape the input into more rows"
        )


# --- launching -----------------------------------------------------------------------------------

# Test hooks: each is called with the kernel object before every launch (launch counting).
launch_hooks: list = []
# None: the range check reports on the device for CUDA tensors and on the host for CPU tensors
# (the interpreter). Tests set it to True to run the CUDA code path (device-side report, no host
# read) under the interpreter.
device_checks: bool | None = None
# Set by ``_aot_spec.recording``: called as ``recorder(kernel, args, kwargs)`` with what a launch on
# CUDA would pass (launch options included) instead of launching; the AOT table is built from it.
recorder = None


def checks_on_device(device: torch.device) -> bool:
    return device.type != "cpu" if device_checks is None else device_checks


def traced() -> bool:
    """True while ``torch.compile`` traces into a launcher (the functional decomposition of a
    ``torch.library.triton_op``, ``fastaevb/ops/registrar.py``): tensors are functional wrappers,
    kernels are recorded, not run."""
    return is_functional_tracing()


def launch(kernel, grid, device: torch.device, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)`` on ``device``'s own CUDA device (a device guard: tensors
    on ``cuda:1`` with ``cuda:0`` current), with FMA contraction pinned (the Triton 3.9 default,
    which Triton 3.10 changes; nvcc, and so torch's own kernels, contract too).

    While traced (:func:`traced`), the launch is recorded through ``torch.library.wrap_triton``
    for Inductor, which compiles the kernel with its own options and device guard: ``num_warps``
    goes through; ``maxnreg`` and ``enable_fp_fusion`` are not launch arguments there (Inductor
    compiles user kernels with Triton's FMA default, and torch 2.13 drops ``maxnreg``)."""
    for hook in launch_hooks:
        hook(kernel)
    if traced():
        options = {k: v for k, v in kwargs.items() if k != "maxnreg"}
        torch.library.wrap_triton(kernel)[grid](*args, **options)
    elif recorder is not None:
        recorder(kernel, args, dict(kwargs, enable_fp_fusion=True))
    elif device.type == "cuda":
        with torch.cuda.device(device):
            kernel[grid](*args, enable_fp_fusion=True, **kwargs)
    else:
        kernel[grid](*args, enable_fp_fusion=True, **kwargs)


# --- output slots --------------------------------------------------------------------------------


def wanted(t) -> bool:
    """An output slot the caller wants written: given and non-empty (an unwanted one is ``(0,)``)."""
    return t is not None and t.numel() > 0


def grad_slots(*pairs, always: bool = False) -> tuple[bool, tuple]:
    """``(with_grad, buffers)`` for gradients one kernel writes together (under one ``WITH_GRAD``
    flag, or unconditionally in a backward kernel: ``always``). ``pairs``: ``(given slot, input)``.
    Each wanted slot is written where it lies; when any is wanted an unwanted one gets private
    scratch (the kernel writes all or none); when none is, the input stands in for every pointer
    (never written; it keeps the kernel's signature the one the AOT table lists)."""
    with_grad = always or any(wanted(g) for g, _ in pairs)
    return with_grad, tuple(g if wanted(g) else (torch.empty_like(like) if with_grad else like) for g, like in pairs)


def row_sums(out: torch.Tensor, reduction: str, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """The buffer a kernel writes its row sums into: ``out`` itself for 'rows' (and 'none'), private
    per-row partials in the accumulator dtype for 'sum' (``reduce.finish`` sums them into ``out``)."""
    return torch.empty(rows, dtype=acc_dtype(dtype), device=out.device) if reduction == "sum" else out


def fill_empty_sum(out: torch.Tensor, reduction: str, scale: float) -> None:
    """No rows: a 0-d sum is ``scale * 0`` (so a 'mean' over nothing is NaN, like torch's)."""
    if reduction == "sum":
        out.fill_(0.0 * scale)


@functools.cache
def _cached_zero(dtype: torch.dtype, device: str) -> torch.Tensor:
    # cached: a stable address (CUDA-graph safe), never written
    return torch.zeros(1, dtype=dtype, device=device)


def _zero(dtype: torch.dtype, device: str) -> torch.Tensor:
    # traced: a zero in the graph (a cached real tensor must not leak into a trace, nor a traced one into the cache)
    return torch.zeros(1, dtype=dtype, device=device) if traced() else _cached_zero(dtype, device)


def zero_or(t, dtype: torch.dtype, device: torch.device):
    """``(tensor, stride)``: ``t`` read with stride 1, or a cached zero read with stride 0 when
    ``t`` is None or empty (an absent upstream gradient). Avoids one constexpr flag per optional input."""
    if t is None or t.numel() == 0:
        return _zero(dtype, str(device)), 0
    return (t if t.dtype == dtype else t.to(dtype)).contiguous(), 1


def seed_tensor(seed, device: torch.device) -> torch.Tensor:
    """The Philox seed as the one-element int64 tensor on ``device`` that the kernels read.

    On CUDA it arrives as a device tensor (drawn there from the CUDA generator: fresh on every
    CUDA-graph replay) and is passed through untouched; no host read. A Python int (the CPU
    backends' convention, and tests) is put into a tensor; None (eps given) reads a cached zero."""
    if seed is None:
        return _zero(torch.int64, str(device))
    if isinstance(seed, torch.Tensor):
        seed = seed.reshape(1)
        return seed if seed.device == device and seed.dtype == torch.int64 else seed.to(device, torch.int64)
    return torch.tensor([int(seed)], dtype=torch.int64, device=device)


def target_view(x: torch.Tensor) -> torch.Tensor:
    """Bool targets are read as uint8 (zero-copy), so kernels see float or uint8 targets only."""
    return x.view(torch.uint8) if x.dtype == torch.bool else x


def grad_out_strides(reduction: str, width: int) -> tuple[int, int]:
    """Strides (per row, per element) reading ``grad_out`` of a given reduction as (R, D)."""
    if reduction == "none":
        return width, 1
    if reduction == "rows":
        return 1, 0
    return 0, 0


def padded(n: int, multiple: int = 4) -> int:
    """``n`` rounded up: int32 count buffers sliced at this offset stay 16-byte aligned."""
    return -(-n // multiple) * multiple
