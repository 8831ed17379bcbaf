"""Modules: the SGVB loss as a one-line swap for the classic PyTorch VAE example's ``loss_function``."""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

from . import _validation as check
from . import functional as F

_LIKELIHOODS = ("bernoulli", "bernoulli_probs", "gaussian")


class SGVBLoss(nn.Module):
    """Negative SGVB estimate of the ELBO, eq. (10): ``KL(q(z|x) || p(z)) - mean_l log p(x|z_l)``.

    ``forward(recon, x, mu, logvar)`` has the signature of ``loss_function(recon_x, x, mu, logvar)``
    of the classic PyTorch VAE example, so ``loss_function = SGVBLoss("bernoulli_probs")`` is a
    one-line swap giving the same number (``BCE + KLD`` with ``reduction='sum'``).

    Args:
        likelihood: the decoder of Appendix C.
            ``'bernoulli'``: ``recon`` holds logits (fastest and most stable).
            ``'bernoulli_probs'``: ``recon`` holds probabilities (``sigmoid`` outputs), matching
            ``F.binary_cross_entropy`` exactly.
            ``'gaussian'``: ``recon`` is ``(mean, logvar)`` (per element, or a single shared
            log-variance), or just ``mean`` for unit variance.
        reduction: ``'sum'`` over datapoints (the classic example), ``'mean'`` over datapoints, or
            ``'none'`` for one value per datapoint.

    ``x`` is ``(B, ...)``; ``recon`` holds ``B * D`` values, or ``L * B * D`` with a leading
    sample dimension L (the log-likelihood is then averaged over the L samples). Both are
    flattened to rows as the classic example's ``x.view(-1, 784)`` does.
    """

    def __init__(self, likelihood: str = "bernoulli", reduction: str = "sum") -> None:
        super().__init__()
        if likelihood not in _LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {_LIKELIHOODS}, got {likelihood!r}")
        self.likelihood = likelihood
        self.reduction = check.reduction(reduction)

    def extra_repr(self) -> str:
        return f"likelihood={self.likelihood!r}, reduction={self.reduction!r}"

    def forward(self, recon: Union[Tensor, tuple[Tensor, Tensor]], x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        decoder_logvar = None
        if self.likelihood == "gaussian" and isinstance(recon, (tuple, list)):
            recon, decoder_logvar = recon
        check.floating("recon", recon)
        if x.dim() == 0:
            raise ValueError("x must have a batch dimension")
        rows = x.reshape(x.shape[0], -1)
        if recon.numel() == 0 or rows.numel() == 0 or recon.numel() % rows.numel():
            raise ValueError(
                f"recon of shape {tuple(recon.shape)} must hold x's {rows.numel()} values "
                f"(x has shape {tuple(x.shape)}), optionally times a leading number of samples"
            )
        samples = recon.numel() // rows.numel()
        sample_shape = (samples,) if samples > 1 else ()
        recon = recon.reshape(*sample_shape, *rows.shape)

        reduction = "sum" if self.reduction == "sum" else "none"
        if self.likelihood == "bernoulli":
            log_px = F.bernoulli_log_likelihood(recon, rows, reduction)
        elif self.likelihood == "bernoulli_probs":
            log_px = F.bernoulli_probs_log_likelihood(recon, rows, reduction)
        else:
            if decoder_logvar is None:
                decoder_logvar = recon.new_zeros(())
            elif decoder_logvar.numel() != 1:
                decoder_logvar = decoder_logvar.reshape(recon.shape)
            log_px = F.gaussian_log_likelihood(rows.to(recon.dtype), recon, decoder_logvar, reduction)

        if self.reduction == "sum":
            kl = F.gaussian_kl(mu, logvar, "sum")
            return kl - log_px / samples if samples > 1 else kl - log_px
        per_datapoint = F.gaussian_kl(mu, logvar, "none").reshape(-1) - (log_px.mean(0) if samples > 1 else log_px)
        return per_datapoint if self.reduction == "none" else per_datapoint.mean()
