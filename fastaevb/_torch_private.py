"""Every private PyTorch API fastaevb uses, in one place, each with what breaks if torch changes it.

Nothing else in the package (nor ``kernels/``) reaches into ``torch._*``: when a torch release
moves one of these, this file is where to look, and ``tests/test_torch_private.py`` (run by the
test command) fails first, naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

# torch.nn.functional's legacy size_average / reduce arguments -> a reduction string. If it goes,
# the BCE drop-ins' legacy arguments (fastaevb/drop_in.py) lose torch's exact mapping.
from torch.nn._reduction import legacy_get_string  # noqa: F401


def autocast_enabled() -> bool:
    """One C call telling whether any autocast is on (``torch.is_autocast_enabled(device)`` asks
    one device type at a time, several calls per op). If it goes: the losses' float32 rule for
    calls that bypass the dispatcher (``ops.autocast.to_float32``) needs one call per device type."""
    return torch._C._is_any_autocast_enabled()


def functorch_active() -> bool:
    """Whether a functorch transform (vmap, grad) is active. If it goes: the C++ autograd nodes and
    the fast ``Function`` apply (below), which functorch cannot see through, would be used inside
    transforms and fail there."""
    return torch._C._are_functorch_transforms_active()


def graph_kept() -> bool:
    """Whether the running backward keeps its graph (``retain_graph=True``). If it goes: the fused
    losses could no longer hand their forward-written gradients over to ``.grad`` without a copy
    (``ops.autograd_rules.take_grads``); they would have to copy them every step."""
    return torch._C._autograd._get_current_graph_task_keep_graph()


def foreach_mul(tensors: list[Tensor], scalar: Tensor) -> list[Tensor]:
    """One multiply for a list of tensors (one launch on CUDA). If it goes: a loop of ``mul``."""
    return list(torch._foreach_mul(tensors, scalar))


def foreach_mul_(tensors: list[Tensor], scalar: Tensor) -> None:
    """In place, as :func:`foreach_mul`."""
    torch._foreach_mul_(tensors, scalar)


def fast_apply(function: type[torch.autograd.Function], *args: Any) -> Any:
    """``function.apply(*args)`` without the Python layer of ``torch.autograd.Function.apply``
    (argument binding, functorch unwrapping: a few microseconds a call), outside functorch
    transforms. It calls the C base class's ``apply`` (``torch._C._FunctionBase``), a private
    detail of how ``Function`` is built; if that changes, this falls back to ``apply``."""
    if functorch_active():
        return function.apply(*args)
    return super(torch.autograd.Function, function).apply(*args)  # type: ignore[misc]


# torch.nn.functional.softplus with out= (the functional form takes none): the lean torch backend
# writes its softplus pass into a buffer it reuses. If it goes: one more allocation per call.
softplus_out = torch._C._nn.softplus


def is_functional_tracing() -> bool:
    """True while AOTAutograd's functionalization runs (a ``torch.compile`` trace into a
    ``triton_op``'s body). If it goes: the Triton launchers cannot tell a trace from a run, and
    would launch kernels on functional tensors instead of recording them with ``wrap_triton``."""
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FUNCTIONAL) is not None


def narrow_triton_op_decomposition(op: Any, keep: Callable[[tuple], bool]) -> None:
    """Keep torch's decomposition of a ``triton_op`` into its Triton kernels only for calls
    ``keep(args)`` accepts (CUDA tensors on compiled Triton); elsewhere the op stays one opaque
    node. Replaces the op's rule for ``FunctionalTensorMode`` (the private ``_torch_dispatch_fns``
    table of ``CustomOpDef``). If it goes: on CPU, torch.compile would trace into the op's body
    and fail on the C++ / numba kernels."""
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    decompose = op._torch_dispatch_fns[FunctionalTensorMode]

    def functional(mode, func, types, args, kwargs):
        if keep(args):
            return decompose(mode, func, types, args, kwargs)
        return mode.__torch_dispatch__(func, types, args, kwargs)

    op.register_torch_dispatch(FunctionalTensorMode, functional)


def name_triton_kernels(qualname: str, kernels: list) -> None:
    """Tell AOTAutograd's cache which Triton kernels a ``triton_op`` launches (torch finds them by
    reading the op's body; ours sit behind the backend dispatch). If it goes: a changed kernel
    could be served from a stale compile cache."""
    torch._library.triton.triton_ops_to_kernels[qualname] = kernels
