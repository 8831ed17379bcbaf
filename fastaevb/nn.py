"""Modules: the SGVB loss as a one-line swap for the classic PyTorch VAE example's ``loss_function``."""

from __future__ import annotations

from torch import Tensor, nn

from . import _validation as check
from . import functional as F


class SGVBLoss(nn.Module):
    """Negative SGVB estimate of the ELBO (eq. 10 negated): the loss of one AEVB step.

    ``forward(recon, x, mu, logvar)`` has the signature of ``loss_function(recon_x, x, mu, logvar)``
    of the classic PyTorch VAE example, so ``loss_function = SGVBLoss("bernoulli_probs")`` is a
    one-line swap giving the same number (``BCE + KLD`` with ``reduction='sum'``). See
    :func:`fastaevb.functional.sgvb_loss` for the formulas and shapes.

    Args:
        likelihood: the decoder of Appendix C, required (a default could silently read
            probabilities as logits). ``'bernoulli'``: ``recon`` holds logits (fastest, stable for
            any logit). ``'bernoulli_probs'``: ``recon`` holds probabilities (``sigmoid`` outputs,
            the classic example), matching ``F.binary_cross_entropy`` exactly. ``'gaussian'``:
            ``recon`` is ``(mean, logvar)`` (per element, or one shared log-variance), or just
            ``mean`` for unit variance.
        reduction: ``'sum'`` over datapoints (the classic example), ``'mean'`` over datapoints, or
            ``'none'`` for one value per datapoint.
        estimator: ``'analytic'`` (estimator B, eq. 7: analytic KL; the paper's choice) or
            ``'generic'`` (estimator A, eq. 6), which takes ``log_q=``, ``log_p=`` from
            ``functional.reparameterize_kl(..., return_log_weights=True)`` instead of mu, logvar.

    ``recon`` has ``x``'s shape or ``x``'s rows ``(B, D)``, optionally with leading sample
    dimensions (the log-likelihood is then averaged over them); any other shape raises.
    """

    def __init__(self, likelihood: str, reduction: str = "sum", estimator: str = "analytic") -> None:
        super().__init__()
        if likelihood not in F.LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {F.LIKELIHOODS}, got {likelihood!r}")
        if estimator not in F.ESTIMATORS:
            raise ValueError(f"estimator must be one of {F.ESTIMATORS}, got {estimator!r}")
        self.likelihood = likelihood
        self.reduction = check.reduction(reduction)
        self.estimator = estimator

    def extra_repr(self) -> str:
        return f"likelihood={self.likelihood!r}, reduction={self.reduction!r}, estimator={self.estimator!r}"

    def forward(
        self,
        recon: Tensor | tuple[Tensor, Tensor],
        x: Tensor,
        mu: Tensor | None = None,
        logvar: Tensor | None = None,
        *,
        log_q: Tensor | None = None,
        log_p: Tensor | None = None,
    ) -> Tensor:
        decoder_logvar = None
        if isinstance(recon, (tuple, list)):
            if self.likelihood != "gaussian":
                raise TypeError(
                    f"recon is a (mean, logvar) pair, which only likelihood='gaussian' takes "
                    f"(this loss has likelihood={self.likelihood!r})"
                )
            recon, decoder_logvar = recon
        return F.sgvb_loss(
            recon,
            x,
            mu,
            logvar,
            likelihood=self.likelihood,
            reduction=self.reduction,
            decoder_logvar=decoder_logvar,
            estimator=self.estimator,
            log_q=log_q,
            log_p=log_p,
        )
