"""Plain-PyTorch reference trainer for comparisons: the same model, data, noise schedule and
optimiser settings as ``fastaevb train``, but the loss written in torch as the classic PyTorch
VAE example writes it (``sigmoid`` decoder, ``F.binary_cross_entropy`` + the KLD formula,
``mu + randn_like(std) * std``) and stock (non-fused) Adagrad. No fastaevb op is used: the model
and loss are :mod:`fastaevb.aevb.classic`'s (``ClassicVAE.with_paper_units``).

    python -m fastaevb.aevb.baseline --steps 20000 --out runs/plain

prints the test lower bound per datapoint (same fixed test binarization as ``fastaevb eval``)
and the training time, and writes ``plain.csv``. Bernoulli likelihood only.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import torch

from . import data as D
from .classic import ClassicVAE, per_datapoint_loss


@torch.no_grad()
def test_bound(model: ClassicVAE, x: torch.Tensor, seed: int = 2014) -> tuple[float, float]:
    torch.manual_seed(seed)
    bounds = []
    for xb in x.split(1000):
        recon, mu, logvar = model(xb)
        bounds.append(-per_datapoint_loss(recon, xb, mu, logvar))
    per = torch.cat(bounds).double()
    return per.mean().item(), per.std().item() / math.sqrt(per.numel())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--steps", type=int, default=20_000, help="parameter updates")
    p.add_argument("--batch-size", type=int, default=100, help="minibatch size M")
    p.add_argument("--hidden", type=int, default=500, help="hidden units")
    p.add_argument("--latent", type=int, default=20, help="latent dimension J")
    p.add_argument("--lr", type=float, default=0.02, help="Adagrad step size")
    p.add_argument("--weight-decay", type=float, default=1.0, help="N(0, I) parameter prior weight")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--data-dir", type=Path, default=None, help="IDX directory (default: Fashion-MNIST)")
    p.add_argument("--eval-every", type=int, default=5000, help="steps between test-bound evaluations")
    p.add_argument("--out", type=Path, default=Path("runs/plain"), help="directory for plain.csv")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    train_grey, _ = D.load_split(args.data_dir, "train")
    test_x = D.prepare_test(D.load_split(args.data_dir, "test")[0], "bernoulli", "dynamic")
    n = train_grey.shape[0]
    model = ClassicVAE.with_paper_units(train_grey.shape[1], args.hidden, args.latent)
    optimizer = torch.optim.Adagrad(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = n // args.batch_size
    rows, t0, train_time = [], time.perf_counter(), 0.0
    for step in range(args.steps):
        if step % steps_per_epoch == 0:
            order = torch.randperm(n, generator=gen)
        idx = order[(step % steps_per_epoch) * args.batch_size : (step % steps_per_epoch + 1) * args.batch_size]
        grey = train_grey[idx]
        x = (torch.rand(grey.shape, generator=gen) < grey).float()
        recon, mu, logvar = model(x)
        loss = per_datapoint_loss(recon, x, mu, logvar).sum() * (n / args.batch_size)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            train_time += time.perf_counter() - t0
            bound, se = test_bound(model, test_x)
            rows.append(
                {
                    "step": step + 1,
                    "datapoints": (step + 1) * args.batch_size,
                    "test_bound": f"{bound:.4f}",
                    "seconds": f"{train_time:.2f}",
                }
            )
            print(f"step {step + 1}: test bound {bound:.3f} +- {se:.3f}, {train_time:.1f} s training", file=sys.stderr)
            t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "plain.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(
        f"plain PyTorch: {args.steps} steps in {train_time:.1f} s "
        f"({args.steps * args.batch_size / train_time:.0f} datapoints/s); test_elbo={bound:.4f} (+- {se:.4f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
