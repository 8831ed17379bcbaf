"""fastaevb: fused SGVB / AEVB kernels (Kingma & Welling, *Auto-Encoding Variational Bayes*).

``fastaevb.functional`` holds the drop-in functions, ``fastaevb.SGVBLoss`` the loss module.
Importing fastaevb registers the ``torch.ops.fastaevb`` custom ops; triton and numba are only
imported when their backend first runs.
"""

from . import functional, ops, reference
from ._errors import ProbabilitiesAsLogitsWarning
from ._info import backend_for, build_info
from ._memory import low_memory
from .backends import available_backends, empty_cache, use_backend
from .nn import IWAELoss, SGVBLoss

__all__ = [
    "functional",
    "ops",
    "reference",
    "SGVBLoss",
    "IWAELoss",
    "ProbabilitiesAsLogitsWarning",
    "available_backends",
    "use_backend",
    "build_info",
    "backend_for",
    "empty_cache",
    "low_memory",
]
__version__ = "0.1.0"
