"""Backend choice: automatic by device, use_backend, FASTAEVB_BACKEND; import without triton."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fastaevb
from conftest import KERNEL_BACKENDS
from fastaevb import backends as _backend
from fastaevb.ops.table import OPS, SCALE, TOKEN


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=environment, timeout=300
    )


def test_torch_is_always_available():
    assert "torch" in fastaevb.available_backends()


def test_cpu_default_prefers_cpp_then_numba():
    expected = next(b for b in ("cpp", "numba", "torch") if b in fastaevb.available_backends())
    assert _backend.resolve(torch.device("cpu")) == expected


def test_use_backend_nests_and_restores():
    default = _backend.resolve(torch.device("cpu"))
    with fastaevb.use_backend("torch"):
        assert _backend.resolve(torch.device("cpu")) == "torch"
        with fastaevb.use_backend(default):
            assert _backend.resolve(torch.device("cpu")) == default
        assert _backend.resolve(torch.device("cpu")) == "torch"
    assert _backend.resolve(torch.device("cpu")) == default


@pytest.mark.parametrize("name", [b for b in ("cpp", "numba") if b in fastaevb.available_backends()])
def test_cpu_backend_refuses_cuda_tensors(name):
    with fastaevb.use_backend(name), pytest.raises(ValueError, match=f"backend '{name}' cannot run .* 'cuda'"):
        _backend.resolve(torch.device("cuda"))


def test_environment_variable_selects_backend():
    result = run_python(
        """
        import torch, fastaevb
        from fastaevb import backends as _backend
        print(_backend.resolve(torch.device("cpu")))
        """,
        FASTAEVB_BACKEND="torch",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch"


def test_unknown_environment_backend_is_a_clear_error():
    result = run_python("import fastaevb", FASTAEVB_BACKEND="tpu")
    assert result.returncode != 0
    assert "FASTAEVB_BACKEND: unknown backend 'tpu'" in result.stderr


def test_import_works_without_triton_and_numba():
    """Neither triton nor numba is imported by ``import fastaevb``; with both missing it still works."""
    result = run_python("""
        import sys
        sys.modules["triton"] = None  # makes "import triton" and find_spec fail, as if uninstalled
        sys.modules["numba"] = None
        import torch, fastaevb
        from fastaevb import functional as F
        assert "triton" not in fastaevb.available_backends(), fastaevb.available_backends()
        x = torch.rand(4, 6)
        print(float(F.binary_cross_entropy(x, x)))
        """)
    assert result.returncode == 0, result.stderr


def test_import_is_lazy():
    """numba, triton and the Triton kernels load on first use; without a CUDA device the ops are
    plain custom ops, so ``import fastaevb`` imports neither triton nor torch._inductor
    (registering triton_ops would: fastaevb/ops/registrar.py)."""
    result = run_python("""
        import sys, fastaevb
        print(sorted(m for m in ("fastaevb.kernels", "numba", "triton", "torch._inductor") if m in sys.modules))
        """)
    assert result.returncode == 0, result.stderr
    expected = ["torch._inductor", "triton"] if fastaevb.ops.registrar.TRITON_OPS else []  # a CUDA machine
    assert result.stdout.strip() == str(expected)


def expected_entries() -> dict[str, list[str]]:
    """Each entry point's parameters as the op table describes them (docs/backends.md): the
    outputs first, then the op's tensors (less the SCALE ones, which ops.calls multiplies into
    their scalar) and the scalars its entries take."""
    entries = {}
    for op in OPS.values():
        tensors = [t.name for t in op.tensors if t.role not in (SCALE, TOKEN)]
        outputs = [o.name for o in op.outputs]
        entries[f"{op.name}_forward"] = outputs + tensors + list(op.entry_scalars)
        if op.kind == "sample":
            upstream = [f"grad_{o.name}" for o in op.outputs]
            entries[f"{op.name}_backward"] = ["grad_mu", "grad_logvar", *upstream, *tensors, *op.entry_scalars]
        elif not op.optional_entries:  # sgvb_loss's backward is the KL's and the decoder's
            entries[f"{op.name}_backward"] = outputs[1:] + ["grad_out"] + tensors + list(op.entry_scalars)
    return entries


@pytest.mark.parametrize("name", [*KERNEL_BACKENDS, "torch"])
def test_kernel_modules_implement_the_table(name, kernels_of):
    """Every backend has each op's entries, with the parameters of the op's one description."""
    module = kernels_of(name)
    assert torch.float32 in module.DTYPES and torch.float64 in module.DTYPES
    for entry, params in expected_entries().items():
        if OPS[entry.rsplit("_", 1)[0]].optional_entries and not hasattr(module, entry):
            continue  # optional: ops.calls builds the op from other ops' entries
        assert list(inspect.signature(getattr(module, entry)).parameters) == params, entry
    assert set(_backend.ENTRY_POINTS) - {"randn"} <= set(expected_entries())
