"""Autocast policy of the fused ops: torch's policy for its own losses.

torch runs ``binary_cross_entropy_with_logits`` (and its other losses) in float32 under
``torch.autocast`` on CPU and CUDA, and refuses ``binary_cross_entropy`` on CUDA ("unsafe to
autocast": the probabilities usually come out of a sigmoid that autocast ran in half). fastaevb:

=====================================  ========================================================
op                                     under ``torch.autocast`` (CPU and CUDA)
=====================================  ========================================================
``sgvb_loss``, ``gaussian_kl``,        float32: float16 / bfloat16 inputs are cast to float32
``bernoulli_log_likelihood``,          (float64 and integer targets untouched), as torch's
``bernoulli_probs_log_likelihood``,    ``binary_cross_entropy_with_logits``; gradients flow
``gaussian_log_likelihood``            back to the half inputs in their dtype
``reparameterize_kl``                  no rule: runs in its inputs' dtype, as torch's
                                       elementwise ``exp``/``mul``/``add`` do (its KL and
                                       log-weight rows are float32 for half inputs anyway)
drop-in ``binary_cross_entropy``       CUDA tensors under CUDA autocast raise, as torch's;
                                       float32 under CPU autocast, as torch's
=====================================  ========================================================

Applied in two places: :func:`to_float32` in the public API before any check (both call paths;
mixed half / float32 inputs then pass the dtype checks, as autocast lets them), and on the
``torch.library`` ops for direct ``torch.ops.fastaevb`` calls (``ops.registrar``, from each op's
``float32_under_autocast`` in ``ops.table``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._dtypes import HALF

DEVICE_TYPES = ("cpu", "cuda")

BCE_UNSAFE = (
    "fastaevb.functional.binary_cross_entropy, like torch.nn.functional.binary_cross_entropy, is unsafe "
    "to autocast on CUDA: the probabilities usually come from a sigmoid that autocast ran in half "
    "precision. Pass the logits to fastaevb.functional.binary_cross_entropy_with_logits (or use "
    "SGVBLoss(likelihood='bernoulli')), which are safe to autocast."
)


def to_float32(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """The float32 rule for calls that bypass the dispatcher: each half tensor on a device whose
    autocast is enabled, in float32; everything else as it is. Callers test
    ``_torch_private.autocast_enabled()`` first (one C call: the eager path stays as fast)."""
    return tuple(
        t.float() if t is not None and t.dtype in HALF and torch.is_autocast_enabled(t.device.type) else t
        for t in tensors
    )


def check_bce_allowed(input: Tensor) -> None:
    """torch's rule for ``binary_cross_entropy``: CUDA tensors under CUDA autocast raise."""
    if input.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        raise RuntimeError(BCE_UNSAFE)
