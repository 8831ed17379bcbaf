"""How each fastaevb op is registered with ``torch.library``: visible to Inductor on CUDA, one
opaque node on CPU.

Every op is a ``torch.library.triton_op`` over its body (the kernel call of ``ops.calls``).
On CUDA tensors, AOTAutograd's functionalization traces into that body: the Triton launchers of
``kernels/`` record their kernels through ``torch.library.wrap_triton`` while traced
(``kernels._common.launch``), so a compiled graph holds the kernels themselves
(``triton_kernel_wrapper_functional`` nodes) for Inductor to compile, schedule and CUDA-graph
with the rest of the step. The CPU backends (C++, numba) are registered with
``register_kernel("cpu")``; torch decomposes a triton_op whatever the device, so the
decomposition is narrowed here to tensors the Triton backend runs compiled (CUDA, not the
interpreter): on CPU the op stays one opaque node, as before. The fake kernels are the ops' own
(``ops.custom``), registered after this: the body is not run on fake tensors.

Registering a triton_op makes torch scan the body's source for kernels, which imports ``triton``
and ``torch._inductor`` (about 1 s at ``import fastaevb``). So the ops are triton_ops only where
Inductor can compile Triton kernels (Triton installed and a CUDA device), or where asked with
``FASTAEVB_TRITON_OPS=1`` (tracing on fake CUDA tensors: ``tests/fake_cuda_trace.py``); elsewhere
they are plain ``torch.library.custom_op``s, the same opaque node on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch._library.custom_ops import CustomOpDef
from torch._subclasses.functional_tensor import FunctionalTensorMode

from .. import backends

TRITON_OPS = backends._AVAILABLE["triton"] and (
    os.environ.get("FASTAEVB_TRITON_OPS") == "1" or torch.cuda.is_available()
)


def _on_compiled_triton(args) -> bool:
    """The op's tensors run on the Triton backend's compiled kernels (CUDA, no interpreter)."""
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    return device.type == "cuda" and not backends._triton_interpreted()


def _name_kernel_sources(name: str) -> None:
    """AOTAutograd's cache key covers the source of a triton_op's kernels, which torch finds by
    reading the op's body; ours sit behind the backend dispatch, so they are named here (where a
    GPU and Triton make Inductor compile them)."""
    if backends._AVAILABLE["triton"] and torch.cuda.is_available() and not backends._triton_interpreted():
        torch._library.triton.triton_ops_to_kernels[name] = list(backends.kernels("triton").KERNELS)


def op(name: str) -> Callable:
    """Decorator: define ``fastaevb::{name}`` over the decorated body (see the module docstring)."""

    def define(fn: Callable) -> CustomOpDef:
        qualname = f"fastaevb::{name}"
        register = torch.library.triton_op if TRITON_OPS else torch.library.custom_op
        result: CustomOpDef = register(qualname, fn, mutates_args=())  # type: ignore[assignment]
        result.register_kernel("cpu")(fn)
        if not TRITON_OPS:
            return result
        # torch's decomposition (private attribute: its rule for FunctionalTensorMode), kept for CUDA
        decompose = result._torch_dispatch_fns[FunctionalTensorMode]

        def functional(mode, func, types, args, kwargs):
            if _on_compiled_triton(args):
                return decompose(mode, func, types, args, kwargs)
            return mode.__torch_dispatch__(func, types, args, kwargs)

        result.register_torch_dispatch(FunctionalTensorMode, functional)
        _name_kernel_sources(qualname)
        return result

    return define
