"""Triton backend of fastaevb (installed as ``fastaevb.kernels``): the entry points of
docs/backends.md, one file per fused step (``bernoulli.py`` holds both Bernoulli
parameterizations), formulas once in ``math.py``.

Imported lazily by fastaevb when the triton backend is used (it imports triton). Runs on
CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (set before import).
``python -m fastaevb.kernels.aot --arch 80 90`` compiles every kernel ahead of time.
"""

from __future__ import annotations

import torch

from . import bernoulli, gaussian_kl, gaussian_log_likelihood, noise, reduce, reparameterize_kl
from .bernoulli import (
    bernoulli_logits_backward,
    bernoulli_logits_forward,
    bernoulli_probs_backward,
    bernoulli_probs_forward,
)
from .gaussian_kl import gaussian_kl_backward, gaussian_kl_forward
from .gaussian_log_likelihood import gaussian_backward, gaussian_forward
from .loss import sgvb_loss_forward
from .noise import randn
from .reparameterize_kl import reparameterize_kl_backward, reparameterize_kl_forward

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Every Triton kernel (the source AOTAutograd's cache key covers, fastaevb/ops/library.py).
KERNELS = (
    bernoulli.bernoulli_fwd_kernel,
    bernoulli.bernoulli_bwd_kernel,
    gaussian_kl.gaussian_kl_fwd_kernel,
    gaussian_kl.gaussian_kl_bwd_kernel,
    gaussian_log_likelihood.gaussian_fwd_kernel,
    gaussian_log_likelihood.gaussian_bwd_kernel,
    noise.randn_kernel,
    reduce.finish_kernel,
    reparameterize_kl.reparameterize_kl_fwd_kernel,
    reparameterize_kl.reparameterize_kl_bwd_kernel,
)

__all__ = [
    "DTYPES",
    "KERNELS",
    "randn",
    "reparameterize_kl_forward",
    "reparameterize_kl_backward",
    "gaussian_kl_forward",
    "gaussian_kl_backward",
    "bernoulli_logits_forward",
    "bernoulli_logits_backward",
    "bernoulli_probs_forward",
    "bernoulli_probs_backward",
    "gaussian_forward",
    "gaussian_backward",
    "sgvb_loss_forward",
]
