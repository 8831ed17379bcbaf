"""Test-set lower bound and importance-sampled marginal likelihood (paper, Appendix D / Sec. 5).

``log p(x) ~= logsumexp_k(log p(x|z_k) + log p(z_k) - log q(z_k|x)) - log K``, z_k ~ q(z|x),
computed with the fused ``reparameterize_kl(samples=k, return_log_weights=True)`` path and
``importance_weighted_bound`` in chunks of k samples, merged with a log-sum-exp, so memory is
bounded by ``--chunk-elements`` for any K. The estimate is itself a lower bound in expectation
(it tightens to log p(x) as K grows) and is never below the ELBO in expectation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fastaevb import functional as FF

from .models import VAE
from .objective import IMPORTANCE_WEIGHTED, make_loss

DEFAULT_CHUNK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class Estimate:
    """Mean over datapoints of a per-datapoint quantity (nats) and its standard error."""

    mean: float
    stderr: float
    count: int

    @classmethod
    def of(cls, values: Tensor) -> Estimate:
        values = values.double()
        n = values.numel()
        stderr = values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
        return cls(values.mean().item(), stderr, n)

    def __str__(self) -> str:
        return f"{self.mean:.3f} +- {self.stderr:.3f} (n={self.count})"


def _batches(x: Tensor, batch_size: int):
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size]


@torch.no_grad()
def elbo(
    model: VAE,
    x: Tensor,
    *,
    estimator: str = "analytic",
    samples: int = 1,
    batch_size: int = 1000,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The SGVB estimate of the lower bound for each datapoint of ``x`` (shape ``(N,)``, nats); for
    the importance-weighted estimators the K-sample bound with K = ``samples``."""
    loss = make_loss(model.config.likelihood, "iwae" if estimator in IMPORTANCE_WEIGHTED else estimator, "none")
    out = []
    for xb in _batches(x, batch_size):
        mu, logvar = model.encode(xb)
        if estimator in IMPORTANCE_WEIGHTED:
            z = FF.reparameterize(mu, logvar, samples=samples, generator=generator)
            z = z.unsqueeze(0) if samples == 1 else z
            out.append(-loss(model.decode(z), xb, z, mu, logvar))
        elif estimator == "analytic":
            z = FF.reparameterize(mu, logvar, samples=samples, generator=generator)
            out.append(-loss(model.decode(z), xb, mu, logvar))
        else:
            z, _, log_q, log_p = FF.reparameterize_kl(
                mu, logvar, samples=samples, generator=generator, return_log_weights=True
            )
            out.append(-loss(model.decode(z), xb, log_q=log_q, log_p=log_p))
    return torch.cat(out)


def decoder_log_likelihood(model: VAE, recon, x: Tensor) -> Tensor:
    """log p(x|z) per sample and datapoint, by the fused likelihood op of the model's decoder."""
    if model.config.likelihood == "bernoulli":
        return FF.bernoulli_log_likelihood(recon, x)
    mean, logvar = recon
    return FF.gaussian_log_likelihood(x, mean, logvar)


@torch.no_grad()
def log_marginal(
    model: VAE,
    x: Tensor,
    *,
    samples: int = 5000,
    batch_size: int = 100,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    generator: torch.Generator | None = None,
    progress=None,
) -> Tensor:
    """Importance-sampled ``log p(x)`` per datapoint with K = ``samples`` draws from q(z|x).

    Samples are drawn ``k`` at a time with ``k * batch * data_dim <= chunk_elements`` (at least
    one), so peak memory does not grow with K. ``progress`` is called with the number of
    datapoints finished after each batch.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    out = []
    for xb in _batches(x, batch_size):
        b = xb.shape[0]
        k_max = max(1, chunk_elements // max(1, b * max(model.config.data_dim, model.config.hidden)))
        mu, logvar = model.encode(xb)
        parts, done = [], 0
        while done < samples:
            k = min(k_max, samples - done)
            z, _, log_q, log_p = FF.reparameterize_kl(
                mu, logvar, samples=k, generator=generator, return_log_weights=True
            )
            log_px = decoder_log_likelihood(model, model.decode(z), xb)
            if k == 1:  # samples=1 drops the sample dimension
                log_px, log_p, log_q = log_px[None], log_p[None], log_q[None]
            # log of the sum of this chunk's k importance weights
            parts.append(FF.importance_weighted_bound(log_px, log_p, log_q) + math.log(k))
            done += k
        out.append(torch.logsumexp(torch.stack(parts), dim=0) - math.log(samples))
        if progress is not None:
            progress(b)
    return torch.cat(out)
