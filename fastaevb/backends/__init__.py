"""Which implementation runs a fused step: automatic by device, overridable.

Order of precedence: ``use_backend(name)`` (innermost wins), then the environment variable
``FASTAEVB_BACKEND`` (read once, at import), then the device default:
CPU -> ``cpp`` (or ``numba`` when the C++ extension is not built, or ``torch``),
CUDA -> ``triton`` (or ``torch``). ``torch`` is ``backends/torch.py``: the entry points in lean torch ops, any device.

Availability is decided once at import from installed modules, so the per-call path is a
couple of dictionary look-ups that ``torch.compile`` traces without a graph break.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from collections.abc import Iterator
from types import ModuleType

import torch as _torch  # not `torch`: the submodule fastaevb.backends.torch takes that name here

BACKENDS = ("cpp", "numba", "triton", "torch")
# What every kernel module exposes (besides DTYPES): the contract of docs/backends.md, one
# forward and one backward entry per op of ops.table (sgvb_loss: an optional fused forward).
ENTRY_POINTS = (
    "randn",
    "reparameterize_kl_forward",
    "reparameterize_kl_backward",
    "gaussian_kl_forward",
    "gaussian_kl_backward",
    "bernoulli_log_likelihood_forward",
    "bernoulli_log_likelihood_backward",
    "bernoulli_probs_log_likelihood_forward",
    "bernoulli_probs_log_likelihood_backward",
    "gaussian_log_likelihood_forward",
    "gaussian_log_likelihood_backward",
    "error_log_likelihood_forward",
    "error_log_likelihood_backward",
)
_MODULES = {
    "cpp": "fastaevb.backends.cpp",
    "numba": "fastaevb.backends.numba",
    "triton": "fastaevb.kernels",
    "torch": "fastaevb.backends.torch",
}
_DEVICES = {"cpp": ("cpu",), "numba": ("cpu",), "triton": ("cuda",), "torch": None}


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


_AVAILABLE = {
    "cpp": _installed("fastaevb._C"),
    "numba": _installed("numba"),
    "triton": _installed("triton") and _installed("fastaevb.kernels"),
    "torch": True,
}
_DEFAULTS = {
    "cpu": next(n for n in ("cpp", "numba", "torch") if _AVAILABLE[n]),
    "cuda": "triton" if _AVAILABLE["triton"] else "torch",
}
_loaded: dict[str, ModuleType] = {}


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check_name(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{where}: unknown backend {name!r}; choose one of {BACKENDS}")
    if not _AVAILABLE[name]:
        raise ValueError(f"{where}: backend {name!r} is not available here; available: {available_backends()}")
    return name


_override: list[str] = []
_env_choice = os.environ.get("FASTAEVB_BACKEND") or None
if _env_choice is not None:
    _check_name(_env_choice, "FASTAEVB_BACKEND")


def available_backends() -> list[str]:
    """Names of the backends that can run here (``torch`` always can)."""
    return [name for name in BACKENDS if _AVAILABLE[name]]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run every fused step inside the ``with`` block on backend ``name``.

    ``name`` is one of :func:`available_backends`. ``cpp`` and ``numba`` run CPU tensors,
    ``triton`` CUDA tensors (and CPU tensors under ``TRITON_INTERPRET=1``), ``torch`` any.
    """
    _override.append(_check_name(name, "use_backend"))
    try:
        yield
    finally:
        _override.pop()


def resolve(device: _torch.device) -> str:
    """The backend name that will run tensors on ``device`` right now."""
    if _override:
        name = _override[-1]
    elif _env_choice is not None:
        name = _env_choice
    else:
        return _DEFAULTS.get(device.type, "torch")
    devices = _DEVICES[name]
    if devices is not None and device.type not in devices:
        if not (name == "triton" and device.type == "cpu" and _triton_interpreted()):
            raise ValueError(
                f"backend {name!r} cannot run tensors on device {device.type!r} "
                f"(it runs {', '.join(devices)}); pick another with fastaevb.use_backend"
            )
    return name


def kernels(name: str) -> ModuleType:
    """The kernel module of backend ``name`` (imported on first use: triton and numba are heavy)."""
    module = _loaded.get(name)
    if module is None:
        module = _loaded[name] = importlib.import_module(_MODULES[name])
    return module


def empty_cache() -> None:
    """Release the decoder-gradient buffers the C++ loss node keeps for the next step
    (``csrc/gradient_cache.h``): at most four, of the sizes the last steps used. Like
    ``torch.cuda.empty_cache``, only for giving the memory back to the system between phases of
    a program; the next step allocates again."""
    if "cpp" in available_backends():
        autograd_nodes = getattr(kernels("cpp"), "_autograd", None)
        if autograd_nodes is not None:
            autograd_nodes.empty_cache()
