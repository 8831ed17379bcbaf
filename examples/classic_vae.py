"""The classic PyTorch VAE example (pytorch/examples, vae/main.py) on Fashion-MNIST, with its loss
swapped for fastaevb in one line: run both side by side and compare the numbers and the time.

    python examples/classic_vae.py --epochs 1 --limit 6000 [--loss torch|fastaevb|both] [--logits]

The model, loss (both from ``fastaevb.aevb.classic``, written once for the example, the tests and
the benchmarks), optimizer and data order are the example's. Both variants draw the same noise
(``eps=torch.randn_like(std)`` from the same seed), so their losses agree to float32 rounding;
``--fused-noise`` lets fastaevb draw eps inside its kernel instead (a different random stream).
``--logits`` drops the decoder's final sigmoid and uses the logits forms (``F.binary_cross_entropy_with_logits``
and ``SGVBLoss("bernoulli")``): the same model, faster, and stable for any logit.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import optim

import fastaevb
from fastaevb import functional as FF
from fastaevb.aevb.classic import ClassicVAE, loss_function
from fastaevb.aevb.data import load_split


def logits_loss_function(recon_logits, x, mu, logvar):
    """The same loss from logits, in torch."""
    BCE = F.binary_cross_entropy_with_logits(recon_logits, x.view(-1, 784), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


# The one-line swap (probabilities, as the example's decoder returns; "bernoulli" for logits):
fastaevb_loss_function = fastaevb.SGVBLoss("bernoulli_probs")
LOSSES = {
    ("torch", False): loss_function,
    ("fastaevb", False): fastaevb_loss_function,
    ("torch", True): logits_loss_function,
    ("fastaevb", True): fastaevb.SGVBLoss("bernoulli"),
}


def train(
    images: torch.Tensor, loss: str, logits: bool, fused_noise: bool, epochs: int, seed: int
) -> tuple[list[float], float]:
    torch.manual_seed(seed)
    model = ClassicVAE(logits=logits)  # 784-400-20-400-784, ReLU, sigmoid decoder (dropped for --logits)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = LOSSES[loss, logits]
    means, start = [], time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(images.shape[0])
        total = 0.0
        for i in range(0, images.shape[0], 128):
            data = images[order[i : i + 128]].view(-1, 1, 28, 28)
            optimizer.zero_grad()
            mu, logvar = model.encode(data.view(-1, 784))
            if loss == "fastaevb" and fused_noise:
                z = FF.reparameterize(mu, logvar)
            else:
                z = model.reparameterize(mu, logvar)
            value = loss_fn(model.decode(z), data, mu, logvar)
            value.backward()
            total += value.item()
            optimizer.step()
        means.append(total / images.shape[0])
    return means, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1, help="passes over the training images (default 1)")
    parser.add_argument("--limit", type=int, default=6000, help="first N training images (default 6000)")
    parser.add_argument("--seed", type=int, default=1, help="torch.manual_seed of both runs (default 1)")
    parser.add_argument("--data-dir", default=None, help="IDX files (default: Debian's Fashion-MNIST)")
    parser.add_argument(
        "--loss",
        choices=("torch", "fastaevb", "both"),
        default="both",
        help="which loss to train with (default both, one after the other)",
    )
    parser.add_argument("--logits", action="store_true", help="decoder returns logits; logits forms of the loss")
    parser.add_argument("--fused-noise", action="store_true", help="fastaevb draws eps in its kernel")
    args = parser.parse_args(argv)
    images, _ = load_split(args.data_dir, "train", args.limit)
    results = {}
    for name in ("torch", "fastaevb") if args.loss == "both" else (args.loss,):
        means, seconds = train(images, name, args.logits, args.fused_noise, args.epochs, args.seed)
        results[name] = means
        print(f"{name:>8}: loss per image by epoch {[round(m, 4) for m in means]}  ({seconds:.1f} s)")
    return results


if __name__ == "__main__":
    main()
