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
    :func:`fastaevb.functional.sgvb_loss` for the formulas, shapes and every argument.

    Args:
        likelihood: the decoder, required (a default could silently read probabilities as
            logits). ``'bernoulli'``: ``recon`` holds logits (fastest, stable for any logit).
            ``'bernoulli_probs'``: ``recon`` holds probabilities (``sigmoid`` outputs, the classic
            example), matching ``F.binary_cross_entropy`` exactly. ``'gaussian'``: ``recon`` is
            ``(mean, logvar)`` (per element, or one shared log-variance), or just ``mean`` for unit
            variance. ``'mse'`` / ``'l1'``: ``F.mse_loss`` / ``F.l1_loss``'s errors; ``recon`` may be
            ``(recon, log_scale)`` with a learned log-scale (latent diffusion's ``nll``).
        reduction: ``'sum'`` over datapoints (the classic example), ``'mean'`` over datapoints, or
            ``'none'`` for one value per datapoint.
        estimator: ``'analytic'`` (estimator B, eq. 7: analytic KL; the paper's choice) or
            ``'generic'`` (estimator A, eq. 6), which takes ``log_q=``, ``log_p=`` from
            ``functional.reparameterize_kl(..., return_log_weights=True)`` instead of mu, logvar.
        kl_weight, recon_weight, recon_reduction, kl_reduction, logvar_clamp: as
            :func:`fastaevb.functional.sgvb_loss`. ``kl_weight`` may also be given to ``forward``
            (a schedule's value for this step), which overrides the module's.

    ``recon`` has ``x``'s shape or ``x``'s rows ``(B, D)``, optionally with leading sample
    dimensions (the log-likelihood is then averaged over them); any other shape raises.
    """

    def __init__(
        self,
        likelihood: str,
        reduction: str = "sum",
        estimator: str = "analytic",
        *,
        kl_weight: float | Tensor = 1.0,
        recon_weight: float = 1.0,
        recon_reduction: str | None = None,
        kl_reduction: str | None = None,
        logvar_clamp: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if likelihood not in F.LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {F.LIKELIHOODS}, got {likelihood!r}")
        if estimator not in F.ESTIMATORS:
            raise ValueError(f"estimator must be one of {F.ESTIMATORS}, got {estimator!r}")
        self.likelihood = likelihood
        self.reduction = check.reduction(reduction, ("none", "mean", "sum", "batchmean"))
        self.estimator = estimator
        self.kl_weight = kl_weight
        self.recon_weight = recon_weight
        self.recon_reduction = recon_reduction
        self.kl_reduction = kl_reduction
        self.logvar_clamp = logvar_clamp

    def extra_repr(self) -> str:
        text = f"likelihood={self.likelihood!r}, reduction={self.reduction!r}, estimator={self.estimator!r}"
        for name in ("kl_weight", "recon_weight", "recon_reduction", "kl_reduction", "logvar_clamp"):
            value = getattr(self, name)
            if value != {"kl_weight": 1.0, "recon_weight": 1.0}.get(name) or isinstance(value, Tensor):
                text += f", {name}={value!r}"
        return text

    def forward(
        self,
        recon: Tensor | tuple[Tensor, Tensor],
        x: Tensor,
        mu: Tensor | None = None,
        logvar: Tensor | None = None,
        *,
        log_q: Tensor | None = None,
        log_p: Tensor | None = None,
        kl_weight: float | Tensor | None = None,
    ) -> Tensor:
        scale = None
        if isinstance(recon, (tuple, list)):
            if self.likelihood not in ("gaussian", "mse", "l1"):
                raise TypeError(
                    f"recon is a (mean, log-scale) pair, which only likelihood 'gaussian', 'mse' or 'l1' takes "
                    f"(this loss has likelihood={self.likelihood!r})"
                )
            recon, scale = recon
        gaussian = self.likelihood == "gaussian"
        return F.sgvb_loss(
            recon,
            x,
            mu,
            logvar,
            likelihood=self.likelihood,
            reduction=self.reduction,
            kl_weight=self.kl_weight if kl_weight is None else kl_weight,
            recon_weight=self.recon_weight,
            recon_reduction=self.recon_reduction,
            kl_reduction=self.kl_reduction,
            decoder_logvar=scale if gaussian else None,
            decoder_log_scale=None if gaussian else scale,
            logvar_clamp=self.logvar_clamp,
            estimator=self.estimator,
            log_q=log_q,
            log_p=log_p,
        )
