"""Modules: the SGVB loss as a one-line swap for the classic PyTorch VAE example's ``loss_function``."""

from __future__ import annotations

from torch import Tensor, nn

from . import _validation as check
from . import functional as F


def _decoder_output(likelihood: str, recon: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
    """``(recon, learned scale or None)`` of a decoder output, which may be a ``(mean, log-scale)``
    pair for the likelihoods that take a scale."""
    if not isinstance(recon, (tuple, list)):
        return recon, None
    if likelihood not in ("gaussian", "mse", "l1"):
        raise TypeError(
            f"recon is a (mean, log-scale) pair, which only likelihood 'gaussian', 'mse' or 'l1' takes "
            f"(this loss has likelihood={likelihood!r})"
        )
    return recon[0], recon[1]


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
        kl_weight, recon_weight, recon_reduction, kl_reduction, logvar_clamp, capacity,
            capacity_per_datapoint, free_bits: as :func:`fastaevb.functional.sgvb_loss`.
            ``kl_weight`` and ``capacity`` may also be given to ``forward`` (a schedule's value
            for this step), which overrides the module's.

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
        capacity: float | Tensor | None = None,
        capacity_per_datapoint: bool = False,
        free_bits: float | Tensor | None = None,
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
        self.capacity = capacity
        self.capacity_per_datapoint = capacity_per_datapoint
        self.free_bits = free_bits

    def extra_repr(self) -> str:
        text = f"likelihood={self.likelihood!r}, reduction={self.reduction!r}, estimator={self.estimator!r}"
        defaults = {"kl_weight": 1.0, "recon_weight": 1.0, "capacity_per_datapoint": False}
        for name in (*defaults, "recon_reduction", "kl_reduction", "logvar_clamp", "capacity", "free_bits"):
            value = getattr(self, name)
            if value != defaults.get(name) or isinstance(value, Tensor):
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
        capacity: float | Tensor | None = None,
    ) -> Tensor:
        recon, scale = _decoder_output(self.likelihood, recon)
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
            capacity=self.capacity if capacity is None else capacity,
            capacity_per_datapoint=self.capacity_per_datapoint,
            free_bits=self.free_bits,
            estimator=self.estimator,
            log_q=log_q,
            log_p=log_p,
        )


class IWAELoss(nn.Module):
    """Negative importance-weighted bound (Burda et al. 2016) of K samples per datapoint, with the
    encoder gradient of IWAE, STL or DReG: :func:`fastaevb.functional.iwae_loss`.

    ``forward(recon, x, z, mu, logvar, gate=None)``: ``recon`` ``(K, *x.shape)`` (or a ``(mean,
    log-scale)`` pair for 'gaussian', 'mse', 'l1'), z ``(K, *mu.shape)``. For ``gradient='dreg'``
    draw the samples with :meth:`sample`, which also returns the gate to pass back::

        loss_fn = IWAELoss("bernoulli", gradient="dreg")
        z, gate = loss_fn.sample(mu, logvar, samples=50)
        loss = loss_fn(decoder(z), x, z, mu, logvar, gate=gate)
    """

    def __init__(self, likelihood: str, gradient: str = "iwae", reduction: str = "mean") -> None:
        super().__init__()
        if likelihood not in F.LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {F.LIKELIHOODS}, got {likelihood!r}")
        if gradient not in F.IWAE_GRADIENTS:
            raise ValueError(f"gradient must be one of {F.IWAE_GRADIENTS}, got {gradient!r}")
        self.likelihood = likelihood
        self.gradient = gradient
        self.reduction = check.reduction(reduction)

    def extra_repr(self) -> str:
        return f"likelihood={self.likelihood!r}, gradient={self.gradient!r}, reduction={self.reduction!r}"

    def sample(
        self, mu: Tensor, logvar: Tensor, samples: int, eps: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """``(z, gate)``: K reparameterized samples ``(K, *mu.shape)`` and, for DReG, their gate
        (:func:`fastaevb.functional.dreg_gate`; None otherwise)."""
        z = F.reparameterize(mu, logvar, samples=samples, eps=eps)
        if samples == 1:
            z = z.unsqueeze(0)
        return F.dreg_gate(z) if self.gradient == "dreg" else (z, None)

    def forward(
        self,
        recon: Tensor | tuple[Tensor, Tensor],
        x: Tensor,
        z: Tensor,
        mu: Tensor,
        logvar: Tensor,
        gate: Tensor | None = None,
    ) -> Tensor:
        recon, scale = _decoder_output(self.likelihood, recon)
        gaussian = self.likelihood == "gaussian"
        return F.iwae_loss(
            recon,
            x,
            z,
            mu,
            logvar,
            likelihood=self.likelihood,
            reduction=self.reduction,
            gradient=self.gradient,
            gate=gate,
            decoder_logvar=scale if gaussian else None,
            decoder_log_scale=None if gaussian else scale,
        )
