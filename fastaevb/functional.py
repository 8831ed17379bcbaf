"""Drop-in functions, ``torch.nn.functional`` style, backed by the fused custom ops.

Equation numbers refer to Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014).

Reductions of the log-likelihoods and the KL: ``'none'`` gives one value per datapoint
(and per sample when the decoder output has leading sample dimensions), ``'sum'`` their sum,
``'mean'`` their mean over datapoints (and samples). The drop-ins ``binary_cross_entropy`` and
``binary_cross_entropy_with_logits`` keep torch's meaning exactly: elementwise for ``'none'``,
the mean over *elements* for ``'mean'``.

Dtypes: summed values of float16 / bfloat16 inputs (per-datapoint values, reductions, the KL and
log-weight rows) are float32; elementwise values and gradients keep the input dtype
(``fastaevb._dtypes``). Under ``torch.autocast`` the losses run in float32, as torch's
(``fastaevb.ops.autocast``).

Each function checks its arguments before any work (errors name the argument) and runs one fused
op (``fastaevb.ops``); the bodies are ``_latents``, ``_likelihoods``, ``_drop_in`` and ``_sgvb``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _drop_in as drop_in
from . import _iwae as iwae
from . import _latents as latents
from . import _likelihoods as likelihoods
from . import _sgvb as sgvb
from ._sgvb import ESTIMATORS
from .ops.table import IWAE_GRADIENTS, LIKELIHOODS
from .reference import importance_weighted_bound

LIKELIHOODS, ESTIMATORS, IWAE_GRADIENTS = LIKELIHOODS, ESTIMATORS, IWAE_GRADIENTS  # the names the modules check

__all__ = [
    "reparameterize",
    "reparameterize_kl",
    "gaussian_kl",
    "bernoulli_log_likelihood",
    "bernoulli_probs_log_likelihood",
    "gaussian_log_likelihood",
    "error_log_likelihood",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "sgvb_loss",
    "iwae_loss",
    "dreg_gate",
    "importance_weighted_bound",
]


def reparameterize(
    mu: Tensor,
    logvar: Tensor,
    *,
    samples: int = 1,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``z = mu + exp(0.5 * logvar) * eps`` (eq. 4, Sec. 2.4); see :func:`reparameterize_kl`.

    Gradients: ``dz/dmu = 1``, ``dz/dlogvar = 0.5 * eps * exp(0.5 * logvar)``. Computes no KL
    (use :func:`reparameterize_kl` for both in one pass).
    """
    return latents.reparameterize(mu, logvar, samples, eps, generator)


def reparameterize_kl(
    mu: Tensor,
    logvar: Tensor,
    *,
    samples: int = 1,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
    return_log_weights: bool = False,
    latent_dims: int | None = None,
) -> tuple[Tensor, ...]:
    """Reparameterized sample and analytic KL in one fused pass.

    ``z = mu + exp(0.5 * logvar) * eps`` (eq. 4, Sec. 2.4) with ``eps ~ N(0, I)``, and
    ``KL = 0.5 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)`` per datapoint (Appendix B).

    Args:
        mu, logvar: ``(B, J)`` encoder outputs, same shape, dtype and device; other layouts name
            their latent dimensions with ``latent_dims``.
        samples: L >= 1 draws per datapoint; z is ``(*batch, J)`` for L = 1, else ``(L, *batch, J)``.
        eps: optional explicit noise of z's shape (e.g. ``torch.randn_like``); treated as a constant.
            Without it, eps comes from the Philox stream of a seed drawn from ``generator``
            (default: torch's CPU generator, so ``torch.manual_seed`` controls it) and is
            regenerated in backward, never stored.
        return_log_weights: also return ``log q(z|x) = sum_j (-0.5 log 2pi - 0.5 logvar_j - 0.5 eps_j^2)``
            and ``log p(z) = sum_j (-0.5 log 2pi - 0.5 z_j^2)``, shaped like z without J, for
            importance weighting (:func:`importance_weighted_bound`).
        latent_dims: how many trailing dimensions of ``mu`` are one datapoint's latents: 1 for
            ``(*batch, J)``, 3 for feature maps ``(B, C, h, w)`` (one KL per datapoint). Needed
            when ``mu`` has more than two dimensions, which are ambiguous otherwise.

    Returns:
        ``(z, kl)`` with kl of shape ``batch``, or ``(z, kl, log_q, log_p)``.
    """
    return latents.reparameterize_kl(mu, logvar, samples, eps, generator, return_log_weights, latent_dims)


def gaussian_kl(mu: Tensor, logvar: Tensor, reduction: str = "sum", *, latent_dims: int | None = None) -> Tensor:
    """Analytic ``KL(N(mu, exp(logvar)) || N(0, I)) = 0.5 * sum_j (mu^2 + exp(logvar) - 1 - logvar)``
    (Appendix B; eq. 10 is ``-KL + mean_l log p(x|z_l)``), summed over one datapoint's latents.

    ``mu``, ``logvar``: ``(J,)`` or ``(B, J)``; any other layout says how many trailing dimensions
    are one datapoint's latents with ``latent_dims`` (3 for feature maps ``(B, C, h, w)``, 1 for
    ``(L, B, J)``): more than two dimensions without it raise, since both readings are common.
    ``reduction``: ``'none'`` one value per datapoint (the batch shape), ``'sum'`` the total
    (the classic example's ``KLD``), ``'mean'`` the mean over datapoints.
    Gradients: ``dKL/dmu = mu``, ``dKL/dlogvar = 0.5 * (exp(logvar) - 1)``.
    """
    return latents.gaussian_kl(mu, logvar, reduction, latent_dims)


def bernoulli_log_likelihood(logits: Tensor, x: Tensor, reduction: str = "none") -> Tensor:
    """Bernoulli decoder log-likelihood from logits (Appendix C.1):
    ``log p(x|z) = sum_d (x_d * l_d - softplus(l_d))``, softplus computed stably.

    Args:
        logits: ``(*samples, B, *event)`` decoder logits.
        x: ``(B, *event)`` targets: float in [0, 1], uint8 or bool (0/1). Values outside [0, 1]
            raise ``ValueError`` (checked by the kernel in its single pass).
        reduction: ``'none'`` one value per datapoint (shape ``(*samples, B)``), ``'sum'``, or
            ``'mean'`` over datapoints.

    Gradients: ``d/dl = x - sigmoid(l)``; ``d/dx = l`` when ``x`` requires grad (summed over
    sample dimensions).
    """
    return likelihoods.bernoulli("bernoulli_log_likelihood", "logits", logits, x, reduction)


def bernoulli_probs_log_likelihood(probs: Tensor, x: Tensor, reduction: str = "none") -> Tensor:
    """Bernoulli decoder log-likelihood from probabilities, exactly ``-F.binary_cross_entropy``:
    ``log p(x|z) = sum_d (x_d * max(log p_d, -100) + (1 - x_d) * max(log(1 - p_d), -100))``.

    Shapes and ``reduction`` as :func:`bernoulli_log_likelihood`. Gradients as torch's:
    ``d/dp = (x - p) / max(p * (1 - p), 1e-12)``, and ``d/dx = logit(p) = log(p / (1 - p))`` when ``x``
    requires grad (unclamped, as torch's ``binary_cross_entropy`` target gradient).
    """
    return likelihoods.bernoulli("bernoulli_probs_log_likelihood", "probs", probs, x, reduction)


def gaussian_log_likelihood(x: Tensor, mean: Tensor, logvar: Tensor, reduction: str = "none") -> Tensor:
    """Gaussian decoder log-likelihood (Appendix C.2):
    ``log p(x|z) = -0.5 * sum_d (log(2*pi) + v_d + (x_d - m_d)^2 * exp(-v_d))``.

    Args:
        x: ``(B, *event)`` data.
        mean: ``(*samples, B, *event)`` decoder means.
        logvar: per-element log-variances of ``mean``'s shape, or one shared log-variance
            (any tensor with a single element, e.g. a learned scalar parameter).
        reduction: ``'none'`` one value per datapoint (shape ``(*samples, B)``), ``'sum'``, or
            ``'mean'`` over datapoints.

    Gradients: ``d/dm = (x - m) * exp(-v)``, ``d/dv = -0.5 * (1 - (x - m)^2 * exp(-v))``, and
    ``d/dx = -(x - m) * exp(-v)`` when ``x`` requires grad (summed over sample dimensions).
    """
    return likelihoods.gaussian(x, mean, logvar, reduction)


def error_log_likelihood(
    x: Tensor, mean: Tensor, log_scale: Tensor | None = None, *, power: int, reduction: str = "none"
) -> Tensor:
    """The decoders of torch-style VAE losses as a log-likelihood up to a constant:
    ``sum_d -(|x_d - m_d|^p * exp(-s_d) + s_d)``, with ``power`` p = 2 (squared error, the elements
    of ``F.mse_loss``) or 1 (absolute error, ``F.l1_loss``) and an optional learned log-scale s
    (latent diffusion's ``|x - m| / exp(s) + s``; 0 when None). It is the log-density of a Gaussian
    with variance ``exp(s) / 2`` (p = 2) or a Laplace with scale ``exp(s)`` (p = 1) less
    ``0.5 log(pi exp(s))`` resp. ``log 2`` per element (docs/math.md).

    Args:
        x: ``(B, *event)`` data.
        mean: ``(*samples, B, *event)`` decoder outputs.
        log_scale: per-element log-scales of ``mean``'s shape, one shared value (a learned scalar),
            or None.
        reduction: ``'none'`` one value per datapoint, ``'sum'``, or ``'mean'`` over datapoints.

    Gradients: ``d/dm = p |x - m|^(p-1) sign(x - m) exp(-s)``, ``d/ds = |x - m|^p exp(-s) - 1``, and
    ``d/dx = -d/dm`` when ``x`` requires grad.
    """
    return likelihoods.error(x, mean, log_scale, power, reduction)


def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Drop-in for ``torch.nn.functional.binary_cross_entropy`` (same signature and reductions):
    ``loss = -w * (x * max(log p, -100) + (1 - x) * max(log(1 - p), -100))``, the negated
    Bernoulli log-likelihood of Appendix C.1 times ``weight`` w (1 when None), with torch's
    gradients ``d/dp = w * (p - x) / max(p * (1 - p), 1e-12)`` and, when ``target`` requires grad,
    ``d/dx = -w * logit(p)``.

    ``reduction``: ``'none'`` elementwise, ``'sum'``, ``'mean'`` over all elements. ``weight``:
    any real tensor that broadcasts to ``input``'s shape (not differentiated, as torch's).
    Probabilities or targets outside [0, 1] raise ``ValueError``; NaN probabilities give NaN
    (torch raises instead).
    """
    return drop_in.bce(
        "bernoulli_probs_log_likelihood",
        input,
        target,
        drop_in.legacy_reduction(size_average, reduce, reduction),
        weight,
    )


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    """Drop-in for ``torch.nn.functional.binary_cross_entropy_with_logits`` (same signature and
    reductions): ``loss = w * (softplus(l) - x * l)``, the negated Bernoulli log-likelihood of
    Appendix C.1 times ``weight`` w, gradients ``d/dl = w * (sigmoid(l) - x)``, ``d/dx = -w * l``.
    With ``pos_weight`` q, torch's form: ``loss = w * ((1 - x) l - (1 + (q - 1) x) logsigmoid(l))``,
    ``d/dl = w * ((q x + 1 - x) sigmoid(l) - q x)``, ``d/dx = w * (logsigmoid(-l) - q logsigmoid(l))``.

    ``reduction``: ``'none'`` elementwise, ``'sum'``, ``'mean'`` over all elements. ``weight`` and
    ``pos_weight`` (one value per class, broadcast over the last dimension): real tensors that
    broadcast to ``input``'s shape, not differentiated (as torch's). Targets may be float, uint8 or
    bool; values outside [0, 1] raise ``ValueError``.
    """
    return drop_in.bce(
        "bernoulli_log_likelihood",
        input,
        target,
        drop_in.legacy_reduction(size_average, reduce, reduction),
        weight,
        pos_weight,
    )


def sgvb_loss(
    recon: Tensor,
    x: Tensor,
    mu: Tensor | None = None,
    logvar: Tensor | None = None,
    *,
    likelihood: str,
    reduction: str = "sum",
    kl_weight: float | Tensor = 1.0,
    recon_weight: float = 1.0,
    recon_reduction: str | None = None,
    kl_reduction: str | None = None,
    decoder_logvar: Tensor | None = None,
    decoder_log_scale: Tensor | None = None,
    logvar_clamp: tuple[float, float] | None = None,
    capacity: float | Tensor | None = None,
    capacity_per_datapoint: bool = False,
    free_bits: float | Tensor | None = None,
    estimator: str = "analytic",
    log_q: Tensor | None = None,
    log_p: Tensor | None = None,
) -> Tensor:
    """Negative SGVB estimate of the ELBO: the loss of one AEVB step (Algorithm 1), and the
    weighted VAE losses built on it (beta-VAE, KL annealing, torch-style MSE / L1 decoders).

    ``estimator='analytic'`` is estimator B, eq. (7) (eq. 10 for Gaussians):
    ``kl_weight * KL(q(z|x) || p(z)) - recon_weight * mean_l log p(x|z_l)`` with the KL of
    Appendix B from ``mu``, ``logvar``. ``estimator='generic'`` is estimator A, eq. (6):
    ``-mean_l (log p(x|z_l) + log p(z_l) - log q(z_l|x))`` from ``log_q``, ``log_p`` of
    :func:`reparameterize_kl` (``return_log_weights=True``), for encoders whose KL has no closed
    form; both are unbiased for the same bound.

    Args:
        recon: the decoder output for z: ``x``'s shape or ``(B, D)`` rows, optionally with leading
            sample dimensions ``(*L, ...)`` (the log-likelihood is then averaged over them; the
            sample dimension leads: ``(B, S, ...)`` layouts must be transposed, since ``(B, S, D)``
            with ``S == B`` cannot be told from ``(L, B, D)``).
            Logits for ``likelihood='bernoulli'``, probabilities for ``'bernoulli_probs'``, means for
            ``'gaussian'``, reconstructions for ``'mse'`` and ``'l1'``.
        x: ``(B, ...)`` data (targets in [0, 1], uint8 or bool for the Bernoulli decoders).
        mu, logvar: ``(B, J)`` encoder outputs, or feature maps ``(B, C, h, w)`` (any ``(B, ...)``:
            one KL per datapoint, summed over all its latent elements).
        likelihood: the decoder; no default, so probabilities are never read as logits.
            ``'bernoulli'``, ``'bernoulli_probs'``, ``'gaussian'`` (Appendix C); ``'mse'``: the
            squared error ``(x - m)^2`` of ``F.mse_loss``; ``'l1'``: the absolute error of
            ``F.l1_loss``, with ``decoder_log_scale`` s latent diffusion's ``|x - m| / exp(s) + s``
            (both the negative log-likelihood of a Gaussian / Laplace decoder up to a constant,
            :func:`error_log_likelihood`).
        reduction: ``'sum'`` over datapoints (the classic example), ``'mean'`` (or ``'batchmean'``)
            over datapoints, or ``'none'`` for one value per datapoint.
        kl_weight: the KL's weight (beta-VAE's ``beta``, ``kld_weight``, ``kl_coeff``, a KL annealing
            schedule's value): a float >= 0, or a 0-d tensor (CPU or recon's device) for a weight
            that changes every step under ``torch.compile`` (a float is specialized there: one
            recompile per value; the tensor is read inside the op).
        recon_weight: the decoder term's weight (a float >= 0), e.g. pythae's ``0.5 * mse``.
        recon_reduction, kl_reduction: each term's own reduction, for losses that reduce them
            differently (default: as ``reduction``): ``'sum'``, ``'batchmean'`` (sum / B) or
            ``'mean'`` over all elements, torch's words (``F.mse_loss(recon, x)`` is
            ``recon_reduction='mean'``; ``kl.mean()`` over the ``(B, J)`` KL elements is
            ``kl_reduction='mean'``). Only with a scalar ``reduction``.
        decoder_logvar: Gaussian decoder log-variance, ``recon``'s shape or one shared value
            (default 0: unit variance); e.g. sigma-VAE's ``2 * log_sigma``.
        decoder_log_scale: the log-scale s of ``'mse'`` / ``'l1'`` (``recon``'s shape or one shared
            learned value; default 0, the plain errors).
        logvar_clamp: ``(low, high)`` clamps the encoder log-variance first, as diffusers'
            ``DiagonalGaussianDistribution`` (``(-30, 20)``), with ``torch.clamp``'s gradient (0
            outside). Opt-in: it guards ``exp(logvar)`` against inf.
        capacity: C of Burgess et al. (2018): the KL term becomes ``kl_weight * |KL_term - C|``
            with ``KL_term`` the KL reduced by ``kl_reduction`` (AntixK's and 1Konny's
            ``gamma * |kld - C|``: ``reduction='mean'``, ``kl_weight=gamma``); a float >= 0, or a 0-d
            tensor for a capacity that grows every step under ``torch.compile``. The KL gradient
            is multiplied by the sign of ``KL_term - C`` (0 at equality, as ``abs``).
        capacity_per_datapoint: with ``capacity``, take ``|KL_b - C|`` per datapoint, then reduce
            (pythae's disentangled beta-VAE: ``mean_b |KL_b - C|``).
        free_bits: lambda of Kingma et al. (2016): the KL term becomes ``kl_weight * sum_j
            max(lambda, mean_b KL_bj)`` over the latent elements j (times B for
            ``kl_reduction='sum'``, over J for ``'mean'``); a dimension held at lambda gets no
            KL gradient (``torch.clamp(min=lambda)``'s). A float >= 0 or a 0-d tensor.
        log_q, log_p: ``(*L, B)`` log-weights (generic estimator).

    With a scalar reduction and a fused backend, the whole loss (KL, decoder term and all their
    gradients) is one kernel call. docs/migration.md maps the loss lines of public VAE code bases
    to one call each.
    """
    return sgvb.sgvb_loss(
        recon, x, mu, logvar, likelihood, reduction, decoder_logvar, estimator, log_q, log_p,
        decoder_log_scale, kl_weight, recon_weight, recon_reduction, kl_reduction, logvar_clamp,
        capacity, capacity_per_datapoint, free_bits,
    )  # fmt: skip


def iwae_loss(
    recon: Tensor,
    x: Tensor,
    z: Tensor,
    mu: Tensor,
    logvar: Tensor,
    *,
    likelihood: str,
    reduction: str = "mean",
    gradient: str = "iwae",
    gate: Tensor | None = None,
    decoder_logvar: Tensor | None = None,
    decoder_log_scale: Tensor | None = None,
) -> Tensor:
    """Negative importance-weighted bound (Burda, Grosse & Salakhutdinov 2016), the IWAE loss:
    ``-(logsumexp_k log w_k - log K)`` per datapoint, ``log w_k = log p(x|z_k) + log p(z_k) -
    log q(z_k|x)`` (the paper's eq. 6 estimator inside a log-mean-exp; K = 1 is estimator A).

    Args:
        recon: the decoder output for the K samples: ``(K, *x.shape)`` or ``(K, B, D)``; the
            sample dimension leads (pythae's ``(B, K, ...)`` layout: ``recon.transpose(0, 1)``).
        x: ``(B, ...)`` data, as :func:`sgvb_loss`'s.
        z: the samples ``(K, *mu.shape)``, e.g. ``reparameterize(mu, logvar, samples=K)`` (or
            :func:`dreg_gate`'s z), ``mu`` / ``logvar``: q's ``(B, J)`` or ``(B, C, h, w)``.
        likelihood, decoder_logvar, decoder_log_scale: the decoder, as :func:`sgvb_loss`'s
            (``'mse'`` / ``'l1'`` leave out their constants, so the bound is shifted by one).
        reduction: ``'mean'`` over datapoints, ``'sum'``, or ``'none'`` (one value per datapoint).
        gradient: the encoder's gradient estimator. ``'iwae'``: the bound's own. ``'stl'`` (Roeder
            et al. 2017, sticking the landing): log q's parameters held fixed (only the path
            through z). ``'dreg'`` (Tucker et al. 2019, doubly reparameterized): as 'stl' with the
            path weighted by ``w~_k^2``; needs the ``gate`` of :func:`dreg_gate`. The decoder's
            gradient is IWAE's (``w~_k``) for all three; the value is the same.
        gate: :func:`dreg_gate`'s token, with ``gradient='dreg'`` only.

    One ``backward()`` gives every gradient (no second decoder pass): for DReG, ``z, gate =
    dreg_gate(reparameterize(mu, logvar, samples=K))``, decode that z, pass both here.
    """
    return iwae.iwae_loss(
        recon, x, z, mu, logvar, likelihood, reduction, gradient, gate, decoder_logvar, decoder_log_scale
    )


def dreg_gate(z: Tensor) -> tuple[Tensor, Tensor]:
    """``(z, gate)`` for DReG (:func:`iwae_loss` with ``gradient='dreg'``): z unchanged, and a token
    ``(K, B)`` of zeros to pass as ``gate=``. In backward the loss hands the normalized importance
    weights ``w~`` to the token, and the gate multiplies the gradient reaching z (from the decoder
    and the loss) by ``w~_k`` once more, DReG's ``w~_k^2`` (Tucker et al. 2019, eq. 8).

    ``z``: the K samples ``(K, B, ...)``; decode the returned z (not the one passed in).
    """
    return iwae.dreg_gate(z)
