"""The last step of every reduced op and every range-checked op: one small launch, no host read.

``finish_kernel`` (one program) sums the per-row partials of up to two row sets (the decoder
rows and the KL rows of the fused loss) in a fixed order with float64 accumulators
(deterministic, no atomics), writes the 0-d result in the output dtype, totals the per-row
out-of-range counts into ``count_ptr`` (2 int32: input, target) and, with ``ASSERT``, fails a
device-side assert when a count is nonzero: the report of torch's own CUDA BCE kernels
(``CUDA_KERNEL_ASSERT``), with no device-to-host synchronization. The kernel is compiled with
``debug=True`` so that ``tl.device_assert`` is kept (it is dropped otherwise); only this tiny
kernel pays for it.

On CPU tensors (the interpreter) the launcher reads ``count_ptr`` on the host instead and
raises ``ValueError`` naming the argument (``fastaevb._errors.check_range``).

No ``aot_specs`` here: :func:`finish` is launched by the other entries, and its specializations
are recorded with theirs (each dtype's sums into the value or the input dtype, one or two row
sets, the range checks).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastaevb._errors import check_range

from ._common import FINISH_BLOCK, checks_on_device, launch


@triton.jit
def _sum_f64(ptr, N, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], tl.float64)
    for i0 in range(0, N, BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        acc += tl.load(ptr + idx, mask=idx < N, other=0.0).to(tl.float64)
    return tl.sum(acc, axis=0)


@triton.jit
def _count(ptr, N, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], tl.int32)
    for i0 in range(0, N, BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        acc += tl.load(ptr + idx, mask=idx < N, other=0)
    return tl.sum(acc, axis=0)


@triton.jit(debug=True, do_not_specialize=["N", "N2", "NB"])
def finish_kernel(
    part_ptr,
    N: tl.int64,
    part2_ptr,
    N2: tl.int64,
    out_ptr,
    bad_in_ptr,
    bad_x_ptr,
    NB: tl.int64,
    count_ptr,
    TOTAL: tl.constexpr,
    TWO_PARTS: tl.constexpr,
    CHECK_IN: tl.constexpr,
    CHECK_X: tl.constexpr,
    ASSERT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    if TOTAL:
        total = _sum_f64(part_ptr, N, BLOCK)
        if TWO_PARTS:
            total += _sum_f64(part2_ptr, N2, BLOCK)
        OUT: tl.constexpr = out_ptr.dtype.element_ty
        if OUT == tl.float64:
            tl.store(out_ptr, total)
        else:  # through float32, as torch converts double to half / bfloat16
            tl.store(out_ptr, total.to(tl.float32).to(OUT))
    if CHECK_IN:
        bad_in = _count(bad_in_ptr, NB, BLOCK)
        tl.store(count_ptr, bad_in)
        if ASSERT:
            tl.device_assert(bad_in == 0, "fastaevb: input (probs) must lie in [0, 1]")
    if CHECK_X:
        bad_x = _count(bad_x_ptr, NB, BLOCK)
        tl.store(count_ptr + 1, bad_x)
        if ASSERT:
            tl.device_assert(bad_x == 0, "fastaevb: target (x) must lie in [0, 1] (integer and bool targets 0 or 1)")


def bad_counts(rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row out-of-range count buffers (input, target) the forward kernels write (every row is
    written: no zero fill), as 16-byte aligned views of one allocation."""
    from ._common import padded, traced

    if (
        traced()
    ):  # Inductor plans the memory; and no offset views (which fake CUDA tensors on a CPU-only torch cannot trace)
        buf = torch.empty(0, dtype=torch.int32, device=device)
        return (
            buf,
            torch.empty(rows, dtype=torch.int32, device=device),
            torch.empty(rows, dtype=torch.int32, device=device),
        )
    p = padded(rows)
    buf = torch.empty(2 * p, dtype=torch.int32, device=device)
    return buf, buf[:rows], buf[p : p + rows]


def finish(out: torch.Tensor, parts: tuple[torch.Tensor, ...], bad_in=None, bad_x=None) -> None:
    """Launch :func:`finish_kernel`: ``out`` (0-d) gets the sum of ``parts`` (when given; at most
    two 1-D partial buffers), and the range counts are reported (when given)."""
    device = out.device if out is not None else (bad_x if bad_x is not None else bad_in).device
    total = bool(parts)
    check_in, check_x = bad_in is not None, bad_x is not None
    if not (total or check_in or check_x):
        return
    on_device = checks_on_device(device)
    count = torch.empty(2, dtype=torch.int32, device=device) if (check_in or check_x) else out
    p1 = parts[0] if total else count
    p2 = parts[1] if len(parts) > 1 else p1
    nb = (bad_x if check_x else bad_in).numel() if (check_in or check_x) else 0
    launch(
        finish_kernel,
        (1,),
        device,
        p1,
        p1.numel() if total else 0,
        p2,
        p2.numel() if len(parts) > 1 else 0,
        out if total else count,
        bad_in if check_in else count,
        bad_x if check_x else count,
        nb,
        count,
        TOTAL=total,
        TWO_PARTS=len(parts) > 1,
        CHECK_IN=check_in,
        CHECK_X=check_x,
        ASSERT=on_device,
        BLOCK=FINISH_BLOCK,
    )
    if not on_device and (check_in or check_x):  # CPU tensors: a host read costs nothing
        bad_in_total, bad_x_total = count.tolist()
        if check_in:
            check_range(bad_in_total, "input")
        if check_x:
            check_range(bad_x_total, "target")
