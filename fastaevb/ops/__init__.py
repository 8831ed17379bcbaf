"""The fused ops with autograd, as the public API calls them: ``ops.call(name, *args)``.

Every op is described once in ``ops.table``; ``ops.registrar`` makes its custom op and its eager
``autograd.Function`` from that description. A call takes one of three paths, all running the
same kernels (``ops.calls``) and the same backward rules (``ops.rules``):

- the backend's C++ autograd node, where it has one for the op (``cpp``: ``reparameterize_kl``
  without KL or log-weights, and ``sgvb_loss``, the two calls of a step's loss lines), so
  backward runs no Python;
- the eager ``autograd.Function``: no dispatcher in between, a few microseconds of Python;
- while ``torch.compile`` traces (or inside :func:`use_custom_ops`), the ``torch.library`` custom
  op ``torch.ops.fastaevb.<name>``, which has a fake kernel: one node per op, no graph break.

Arguments are the table's, validated and flattened by the public API: decoder outputs ``(R, D)``,
data ``(B, D)`` with ``R % B == 0``, latents ``(R, J)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from .. import _torch_private as private
from .._memory import gradients_in_forward
from . import calls, registrar, seeds
from .table import OPS

__all__ = [
    "as_rows",
    "loss",
    "sgvb_loss",
    "reparameterize",
    "reparameterize_kl",
    "use_custom_ops",
    "use_python_autograd",
    "OPS",
]

_force_custom: list[bool] = []
_force_python: list[bool] = []


@contextlib.contextmanager
def use_custom_ops() -> Iterator[None]:
    """Run eager calls through the ``torch.library`` custom ops too (as ``torch.compile`` does):
    for tests and debugging; slower."""
    _force_custom.append(True)
    try:
        yield
    finally:
        _force_custom.pop()


@contextlib.contextmanager
def use_python_autograd() -> Iterator[None]:
    """Run eager calls through the Python ``autograd.Function`` even where a backend has a C++
    autograd node: for tests and debugging; slower."""
    _force_python.append(True)
    try:
        yield
    finally:
        _force_python.pop()


def _custom_path() -> bool:
    return bool(_force_custom) or torch.compiler.is_compiling()


def native_entry(name: str, device: torch.device):
    """The backend's C++ autograd entry ``name`` for ``device`` (which returns None for inputs it
    does not take), or None: no such entry, the custom-op or forced Python path, or a functorch
    transform (which C++ nodes do not support)."""
    if _force_python or _custom_path() or private.functorch_active():
        return None
    return getattr(calls.kernels_for(device), name, None)


def as_rows(t: Tensor, rows: int, width: int) -> Tensor:
    """``t`` as ``(rows, width)``, without a view node when it already is."""
    return t if t.dim() == 2 and t.shape[0] == rows and t.shape[1] == width else t.reshape(rows, width)


def _outputs(name: str, *args):
    """Op ``name`` on the custom-op path (all its outputs) or the eager Function (what it returns)."""
    if _custom_path():
        return registrar.CUSTOM[name](*args)
    return private.fast_apply(registrar.EAGER[name], *args)


def loss(name: str, *args) -> Tensor:
    """Loss op ``name`` on its arguments (the table's order): its value (the custom op also
    returns the gradients it wrote; the eager Function keeps them)."""
    return _outputs(name, *args)[0] if _custom_path() else _outputs(name, *args)


def sgvb_loss(
    decoded: Tensor,
    x: Tensor,
    decoder_logvar: Tensor | None,
    mu: Tensor,
    logvar: Tensor,
    kl_weight: Tensor | None,
    likelihood: str,
    kl_scale: float,
    ll_scale: float,
    with_grad: bool,
    kl_threshold: Tensor | None = None,
    kl_form: str = "kl",
    kl_threshold_scale: float = 0.0,
) -> Tensor:
    """The ``sgvb_loss`` op (``ops.table``) on a decoder output of ``R * D`` values for data ``x``
    of ``B`` rows of ``D`` values, in a layout the public API validated: the C++ node takes it as
    it is (no view nodes in the step), the other paths as ``(R, D)`` rows. A 0-d ``kl_weight`` or
    ``kl_threshold`` stays a tensor only on the custom-op path (torch.compile); eagerly it is read
    here. The C++ node takes the plain KL form only."""
    if not _custom_path():
        if kl_weight is not None:
            kl_scale, kl_weight = kl_scale * calls.weight_value("kl_weight", kl_weight), None
        if kl_threshold is not None:
            kl_threshold_scale *= calls.weight_value("kl_threshold", kl_threshold)
            kl_threshold = None
    args = (
        decoded, x, decoder_logvar, mu, logvar, kl_weight, kl_threshold,
        likelihood, kl_scale, ll_scale, kl_form, kl_threshold_scale, with_grad,
    )  # fmt: skip
    # the C++ node hands out forward-written gradients only: under low_memory the Python node recomputes them
    native = (
        native_entry(OPS["sgvb_loss"].native, decoded.device)  # type: ignore[arg-type]
        if kl_form == "kl" and gradients_in_forward()
        else None
    )
    if native is not None:
        value = native(decoded, x, decoder_logvar, mu, logvar, kl_weight, likelihood, kl_scale, ll_scale, with_grad)
        if value is not None:
            return value
    if not _custom_path():  # flattened inside the node: no view nodes in the step's graph
        return private.fast_apply(registrar.EAGER["sgvb_loss"], *args)
    return loss("sgvb_loss", *calls.flat_loss_inputs(decoded, x, decoder_logvar), *args[3:])


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor | None, seed: Tensor | None, samples: int) -> Tensor:
    """z of eq. (4) alone (``reparameterize_kl`` without KL or log-weights) for latents of shape
    ``(*batch, J)``: ``(L, *batch, J)``, or ``mu``'s shape for ``samples = 1``. With neither ``seed``
    nor ``eps`` the seed is drawn from torch's default generator here, or by the C++ node, which
    draws the same value without a Python call."""
    native = native_entry(OPS["reparameterize_kl"].native, mu.device)  # type: ignore[arg-type]
    if native is not None:
        z = native(mu, logvar, eps, seed, samples)
        if z is not None:
            return z
    if seed is None and eps is None:
        seed = seeds.draw(None, mu)
    return reparameterize_kl(mu, logvar, eps, seed, samples, False, False)[0]


def reparameterize_kl(
    mu: Tensor, logvar: Tensor, eps: Tensor | None, seed: Tensor | None, samples: int, log_weights: bool, with_kl: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ``reparameterize_kl`` op for latents ``(*batch, J)``: z ``(L, *batch, J)`` (``mu``'s shape
    for L = 1), kl ``batch``, log_q / log_p ``(L, *batch)`` (``batch`` for L = 1); placeholders as
    the table says."""
    shape, latent = mu.shape, mu.shape[-1]
    rows = mu.numel() // latent if latent else math.prod(shape[:-1])
    flat_eps = None if eps is None else eps.reshape(samples, rows, latent)
    z, kl, log_q, log_p = _outputs(
        "reparameterize_kl",
        as_rows(mu, rows, latent),
        as_rows(logvar, rows, latent),
        flat_eps,
        seed,
        samples,
        log_weights,
        with_kl,
    )
    lead = (samples,) if samples > 1 else ()
    z = z.view(*lead, *shape)
    if with_kl:
        kl = kl.view(shape[:-1])
    if log_weights:
        log_q, log_p = log_q.view(*lead, *shape[:-1]), log_p.view(*lead, *shape[:-1])
    return z, kl, log_q, log_p
