"""What will run here: the backend per device, the SIMD target Highway picked for the C++ kernels,
threads and versions. ``python -c "import fastaevb; print(fastaevb.build_info())"``."""

from __future__ import annotations

from typing import Any

import torch

from . import backends


def build_info() -> dict[str, Any]:
    """Backends, the C++ extension's SIMD targets (compiled / supported by this CPU / chosen at run
    time), OpenMP, threads, and versions, as a plain dict."""
    from . import __version__

    info: dict[str, Any] = {
        "fastaevb": __version__,
        "torch": torch.__version__,
        "available_backends": backends.available_backends(),
        "cpu_backend": backends.resolve(torch.device("cpu")),
        "cuda_backend": backends.resolve(torch.device("cuda")) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }
    if "cpp" in info["available_backends"]:
        from . import _C  # type: ignore[attr-defined]
        from .backends import cpp

        info.update(
            simd_target=_C.simd_target(),
            simd_targets_supported=_C.simd_targets_supported(),
            simd_targets_compiled=_C.simd_targets_compiled(),
            openmp=_C.openmp,
            native_build=_C.native,
            # fastaevb._autograd: reparameterize and sgvb_loss as C++ autograd nodes (CMakeLists.txt)
            autograd_nodes=cpp._autograd is not None,
        )
    else:
        info["note"] = (
            "the C++ extension fastaevb._C is not built (installed with FASTAEVB_BUILD_CPP=0, or without "
            "a compiler): CPU tensors run on numba when it is installed (pip install numba), else on torch"
        )
    return info


def backend_for(device: torch.device | str) -> str:
    """The backend that will run tensors on ``device`` right now (``use_backend``,
    ``FASTAEVB_BACKEND`` and availability taken into account)."""
    return backends.resolve(torch.device(device))
