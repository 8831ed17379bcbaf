"""The paper's MLPs (Kingma & Welling 2014, Appendix C), initialised from N(0, 0.01^2).

* :class:`GaussianEncoder`: ``h = tanh(W3 x + b3)``, ``mu = W4 h + b4``, ``log sigma^2 = W5 h + b5``
  (C.2, used as q(z|x) in every experiment). The two heads are one ``Linear(H, 2J)``.
* :class:`BernoulliDecoder`: ``y = W2 tanh(W1 z + b1) + b2`` as *logits*, p(x|z) = Bernoulli(sigmoid(y)) (C.1).
* :class:`GaussianDecoder`: means ``sigmoid(W4 h + b4)`` (data in [0, 1]) and a learned
  log-variance: ``'output'`` an MLP head per pixel and datapoint as in C.2, ``'pixel'`` one
  parameter per pixel, ``'shared'`` one parameter for all pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

LIKELIHOODS = ("bernoulli", "gaussian")
DECODER_VARIANCES = ("shared", "pixel", "output")
INIT_STD = 0.01


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the parameter shapes; stored in checkpoints and checked on resume."""

    likelihood: str = "bernoulli"
    data_dim: int = 784
    hidden: int = 500
    latent: int = 20
    decoder_variance: str = "shared"

    def __post_init__(self) -> None:
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.decoder_variance not in DECODER_VARIANCES:
            raise ValueError(f"decoder variance must be one of {DECODER_VARIANCES}, got {self.decoder_variance!r}")
        for name in ("data_dim", "hidden", "latent"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


def _init_(module: nn.Module) -> None:
    """Every parameter (weights and biases) from N(0, 0.01^2), as in Sec. 5 of the paper."""
    for p in module.parameters():
        nn.init.normal_(p, 0.0, INIT_STD)


class GaussianEncoder(nn.Module):
    """q(z|x) = N(mu, diag(exp(logvar))) from a one-hidden-layer tanh MLP."""

    def __init__(self, data_dim: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(data_dim, hidden)
        self.heads = nn.Linear(hidden, 2 * latent)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.heads(torch.tanh(self.hidden(x))).chunk(2, dim=-1)
        return mu, logvar


class BernoulliDecoder(nn.Module):
    """Logits of p(x|z) for binary data; z may carry leading sample dimensions."""

    def __init__(self, latent: int, hidden: int, data_dim: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(latent, hidden)
        self.out = nn.Linear(hidden, data_dim)

    def forward(self, z: Tensor) -> Tensor:
        return self.out(torch.tanh(self.hidden(z)))

    def mean(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.forward(z))


class GaussianDecoder(nn.Module):
    """``(mean, logvar)`` of p(x|z) for real-valued data in [0, 1]."""

    def __init__(self, latent: int, hidden: int, data_dim: int, variance: str = "shared") -> None:
        super().__init__()
        if variance not in DECODER_VARIANCES:
            raise ValueError(f"variance must be one of {DECODER_VARIANCES}, got {variance!r}")
        self.variance = variance
        self.data_dim = data_dim
        self.hidden = nn.Linear(latent, hidden)
        self.out = nn.Linear(hidden, 2 * data_dim if variance == "output" else data_dim)
        if variance != "output":
            self.logvar = nn.Parameter(torch.zeros(1 if variance == "shared" else data_dim))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        out = self.out(torch.tanh(self.hidden(z)))
        if self.variance == "output":
            mean, logvar = out.split(self.data_dim, dim=-1)
            return torch.sigmoid(mean), logvar
        mean = torch.sigmoid(out)
        if self.variance == "shared":
            return mean, self.logvar
        return mean, self.logvar.expand_as(mean)

    def mean(self, z: Tensor) -> Tensor:
        return self.forward(z)[0]


class VAE(nn.Module):
    """Encoder and decoder of one of the paper's models, built from a :class:`ModelConfig`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = GaussianEncoder(config.data_dim, config.hidden, config.latent)
        if config.likelihood == "bernoulli":
            self.decoder: BernoulliDecoder | GaussianDecoder = BernoulliDecoder(
                config.latent, config.hidden, config.data_dim
            )
        else:
            self.decoder = GaussianDecoder(config.latent, config.hidden, config.data_dim, config.decoder_variance)
        _init_(self)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(x)

    def decode(self, z: Tensor):
        """Logits (Bernoulli) or ``(mean, logvar)`` (Gaussian) -- what ``SGVBLoss`` takes as ``recon``."""
        return self.decoder(z)

    def decode_mean(self, z: Tensor) -> Tensor:
        """E[x|z]: pixel probabilities or Gaussian means, for pictures."""
        return self.decoder.mean(z)
