"""The classic PyTorch VAE example (pytorch/examples, ``vae/main.py``) in plain PyTorch, written once:
its model and its loss, which ``examples/classic_vae.py``, the drop-in tests, the training
benchmark and the plain-PyTorch baseline trainer (:mod:`fastaevb.aevb.baseline`) compare fastaevb
against. No fastaevb op is used here.

* :class:`ClassicVAE` ``()``: the example's model, 784-400-20-400-784 with ReLU units, a sigmoid
  decoder and torch's default initialisation.
* :meth:`ClassicVAE.with_paper_units`: the same structure with the paper's tanh units and
  N(0, 0.01^2) initialisation (the sizes of :class:`fastaevb.aevb.models.ModelConfig`).
* :func:`loss_function`: the example's loss, verbatim (BCE + KLD, both summed over the batch);
  :func:`per_datapoint_loss`: the same per datapoint.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import INIT_STD


class ClassicVAE(nn.Module):
    """fc1, fc21 / fc22 (mu, logvar), fc3, fc4, as the example names them. ``logits=True`` drops
    the decoder's final sigmoid (for the logits forms of the loss)."""

    def __init__(
        self,
        data_dim: int = 784,
        hidden: int = 400,
        latent: int = 20,
        *,
        activation: Callable[[Tensor], Tensor] = torch.relu,
        init_std: float | None = None,
        logits: bool = False,
    ) -> None:
        super().__init__()
        self.data_dim, self.activation, self.logits = data_dim, activation, logits
        self.fc1, self.fc21, self.fc22 = (
            nn.Linear(data_dim, hidden),
            nn.Linear(hidden, latent),
            nn.Linear(hidden, latent),
        )
        self.fc3, self.fc4 = nn.Linear(latent, hidden), nn.Linear(hidden, data_dim)
        if init_std is not None:
            for p in self.parameters():
                nn.init.normal_(p, 0.0, init_std)

    @classmethod
    def with_paper_units(
        cls, data_dim: int = 784, hidden: int = 500, latent: int = 20, *, logits: bool = False
    ) -> ClassicVAE:
        """The example's structure with the paper's tanh units and N(0, 0.01^2) initialisation."""
        return cls(data_dim, hidden, latent, activation=torch.tanh, init_std=INIT_STD, logits=logits)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h1 = self.activation(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z: Tensor) -> Tensor:
        out = self.fc4(self.activation(self.fc3(z)))
        return out if self.logits else torch.sigmoid(out)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x.view(-1, self.data_dim))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x: Tensor, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """The example's loss, verbatim but for the data size: BCE + KLD, both summed."""
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, recon_x.shape[-1]), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def per_datapoint_loss(recon_x: Tensor, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """The example's BCE + KLD of each datapoint (row): the negative lower bound of each."""
    BCE = F.binary_cross_entropy(recon_x, x, reduction="none").sum(-1)
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1)
    return BCE + KLD
