"""Triton backend of fastaevb (installed as ``fastaevb.kernels``): the entry points of
docs/backends.md, one file per op named after it (``bernoulli_log_likelihood.py`` holds both
Bernoulli parameterizations, ``error_log_likelihood.py`` both powers), formulas once in ``formulas.py``.

Every entry takes its outputs first, allocated by the caller, and writes into them (an empty
``(0,)`` output is not wanted). Imported lazily by fastaevb when the triton backend is used (it
imports triton). Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (set before
import). Each kernel module declares its ahead-of-time specializations (``aot_specs``);
``python -m fastaevb.kernels.aot --arch 80 90`` compiles them all (``--quick``: one per kernel,
tile and width kind).
"""

from __future__ import annotations

from . import (
    bernoulli_log_likelihood,
    error_log_likelihood,
    gaussian_kl,
    gaussian_log_likelihood,
    iwae_loss,
    noise,
    reduce,
    reparameterize_kl,
    sgvb_loss,
)
from ._common import DTYPES
from .bernoulli_log_likelihood import (
    bernoulli_log_likelihood_backward,
    bernoulli_log_likelihood_forward,
    bernoulli_probs_log_likelihood_backward,
    bernoulli_probs_log_likelihood_forward,
)
from .error_log_likelihood import error_log_likelihood_backward, error_log_likelihood_forward
from .gaussian_kl import gaussian_kl_backward, gaussian_kl_forward
from .gaussian_log_likelihood import gaussian_log_likelihood_backward, gaussian_log_likelihood_forward
from .iwae_loss import iwae_loss_backward, iwae_loss_forward
from .noise import randn
from .reparameterize_kl import reparameterize_kl_backward, reparameterize_kl_forward
from .sgvb_loss import sgvb_loss_forward

# Every Triton kernel: the sources AOTAutograd's cache key covers (fastaevb/ops/registrar.py names
# them for each op of fastaevb/ops/table.py it registers as a triton_op).
KERNELS = (
    bernoulli_log_likelihood.bernoulli_log_likelihood_fwd_kernel,
    bernoulli_log_likelihood.bernoulli_log_likelihood_bwd_kernel,
    error_log_likelihood.error_log_likelihood_fwd_kernel,
    error_log_likelihood.error_log_likelihood_bwd_kernel,
    gaussian_kl.gaussian_kl_fwd_kernel,
    gaussian_kl.gaussian_kl_bwd_kernel,
    gaussian_log_likelihood.gaussian_log_likelihood_fwd_kernel,
    gaussian_log_likelihood.gaussian_log_likelihood_bwd_kernel,
    iwae_loss.iwae_loss_kernel,
    noise.randn_kernel,
    reduce.finish_kernel,
    reparameterize_kl.reparameterize_kl_fwd_kernel,
    reparameterize_kl.reparameterize_kl_bwd_kernel,
)
# The modules whose ``aot_specs()`` together list every specialization the entries launch.
AOT_MODULES = (
    noise,
    reparameterize_kl,
    gaussian_kl,
    bernoulli_log_likelihood,
    gaussian_log_likelihood,
    error_log_likelihood,
    sgvb_loss,
    iwae_loss,
)

__all__ = [
    "DTYPES",
    "KERNELS",
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
    "sgvb_loss_forward",
    "iwae_loss_forward",
    "iwae_loss_backward",
]
