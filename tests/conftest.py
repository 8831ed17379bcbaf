"""Shared fixtures: the backends under test and hypothesis settings.

Without a GPU, Triton kernels run in interpreter mode on CPU tensors. TRITON_INTERPRET must be
set before triton decorates the kernels, i.e. before ``fastaevb.kernels`` is first imported.
"""

import contextlib
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from hypothesis import HealthCheck, settings

import fastaevb
from fastaevb import backends as _backend

settings.register_profile(
    "fastaevb",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# The no-compiler install run (scripts/test_no_compiler.sh) proves the install path on the fallback
# backends; the main suite runs the same properties with the full example count.
settings.register_profile("smoke", parent=settings.get_profile("fastaevb"), max_examples=4)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fastaevb"))

KERNEL_BACKENDS = [name for name in ("cpp", "numba", "triton") if name in fastaevb.available_backends()]
ALL_BACKENDS = KERNEL_BACKENDS + ["torch"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def device_for(backend: str) -> str:
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def assert_sum_of_terms(got: torch.Tensor, terms: torch.Tensor, tol: dict, what: str) -> None:
    """``got`` is a gradient the kernel sums from several terms (``terms``, float64, stacked on dim
    0): each term carries one element's error (``tol``), so the sum's error is bounded by rtol
    times the sum of the terms' magnitudes plus atol per term, not by rtol times the sum, which
    cancellation can make small. Equal infinities match."""
    got64, want = got.detach().cpu().double(), terms.sum(0)
    bound = tol["rtol"] * terms.abs().sum(0) + tol["atol"] * len(terms)
    error = (got64 - want).abs()
    assert bool(((got64 == want) | (error <= bound)).all()), (
        f"{what} exceeds the bound by {(error - bound).max().item():.3g}"
    )


# Each kernel backend on its eager call path (C++ autograd nodes for cpp's reparameterize and
# sgvb_loss where built, else autograd.Function); cpp once more on the Python autograd.Function
# path when it has C++ nodes; and the torch.library custom-op path (what torch.compile runs) once
# more on the first backend: that path is backend-independent.
_CPP_NODES = fastaevb.build_info().get("autograd_nodes", False)
CALL_PATHS = (
    [(name, "eager") for name in KERNEL_BACKENDS]
    + ([("cpp", "python_autograd")] if _CPP_NODES else [])
    + [(KERNEL_BACKENDS[0], "custom_op")]
)
_PATH_CONTEXTS = {
    "eager": contextlib.nullcontext,
    "python_autograd": fastaevb.ops.use_python_autograd,
    "custom_op": fastaevb.ops.use_custom_ops,
}


@pytest.fixture(params=CALL_PATHS, ids=[n if p == "eager" else f"{n}-{p}" for n, p in CALL_PATHS])
def kernel_backend(request):
    """Name of each fused-kernel backend, with that backend (and call path) selected for the test."""
    name, path = request.param
    with fastaevb.use_backend(name), _PATH_CONTEXTS[path]():
        yield name


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    """Every backend including the pure-torch reference, selected for the test."""
    with fastaevb.use_backend(request.param):
        yield request.param


@pytest.fixture
def kernels_of():
    """The kernel module of a backend name (``docs/backends.md`` entry points)."""
    return _backend.kernels
