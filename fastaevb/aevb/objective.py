"""The SGVB objective of a model, entirely through fastaevb's public API.

Estimator B (eq. 7, ``'analytic'``): ``-KL(q(z|x) || p(z)) + 1/L sum_l log p(x|z_l)``.
Estimator A (eq. 6, ``'generic'``): ``1/L sum_l log p(x|z_l) + log p(z_l) - log q(z_l|x)``,
with ``log q`` and ``log p`` from the fused ``reparameterize_kl(..., return_log_weights=True)``.
Both are unbiased estimators of the same lower bound; B has lower variance.
IWAE (``'iwae'``, Burda et al. 2016) and DReG (``'dreg'``, Tucker et al. 2019): the tighter
K-sample bound ``logsumexp_k log w_k - log K`` (K = ``samples``) through ``fastaevb.IWAELoss``,
with IWAE's encoder gradient or DReG's (the gate of ``functional.dreg_gate`` between the samples
and the decoder).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

import fastaevb
from fastaevb import functional as FF

from .models import VAE

ESTIMATORS = ("analytic", "generic", "iwae", "dreg")
IMPORTANCE_WEIGHTED = ("iwae", "dreg")


def make_loss(likelihood: str, estimator: str = "analytic", reduction: str = "sum") -> nn.Module:
    """``fastaevb.SGVBLoss`` (or ``fastaevb.IWAELoss``) for a model's likelihood ('bernoulli'
    decoders give logits)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator in IMPORTANCE_WEIGHTED:
        return fastaevb.IWAELoss(likelihood, gradient=estimator, reduction=reduction)
    kwargs: dict[str, Any] = {} if estimator == "analytic" else {"estimator": estimator}
    try:
        return fastaevb.SGVBLoss(likelihood=likelihood, reduction=reduction, **kwargs)
    except TypeError as exc:  # a fastaevb without the estimator argument
        raise RuntimeError(
            f"this fastaevb's SGVBLoss does not offer estimator={estimator!r} ({exc}); "
            "use --estimator analytic or update fastaevb"
        ) from exc


class SGVBObjective(nn.Module):
    """``forward(x, eps=None)`` -> the negative SGVB estimate summed over the minibatch.

    ``eps``: the standard-normal noise, ``(B, J)`` for L = 1 or ``(L, B, J)``; ``None`` lets the
    fused kernel draw it (Philox, seeded from torch's generator). This module is what
    DistributedDataParallel wraps, so one forward computes the whole loss.
    """

    def __init__(self, model: VAE, estimator: str = "analytic", samples: int = 1) -> None:
        super().__init__()
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.model = model
        self.estimator = estimator
        self.samples = samples
        self.loss = make_loss(model.config.likelihood, estimator, "sum")

    def forward(self, x: Tensor, eps: Tensor | None = None) -> Tensor:
        mu, logvar = self.model.encode(x)
        if isinstance(self.loss, fastaevb.IWAELoss):  # --estimator iwae | dreg
            z, gate = self.loss.sample(mu, logvar, self.samples, eps=eps)
            return self.loss(self.model.decode(z), x, z, mu, logvar, gate=gate)
        if self.estimator == "analytic":
            z = FF.reparameterize(mu, logvar, samples=self.samples, eps=eps)
            return self.loss(self.model.decode(z), x, mu, logvar)
        z, _, log_q, log_p = FF.reparameterize_kl(mu, logvar, samples=self.samples, eps=eps, return_log_weights=True)
        return self.loss(self.model.decode(z), x, log_q=log_q, log_p=log_p)
