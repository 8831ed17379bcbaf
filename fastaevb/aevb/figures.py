"""PNGs: prior samples, reconstructions, the 2-D latent manifold (paper Fig. 4) and the bound
against datapoints seen (paper Fig. 2). matplotlib with the Agg backend; nothing is shown."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from .data import image_shape
from .models import VAE


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tile(images: Tensor, cols: int, pad: int = 1) -> Tensor:
    """``(n, D)`` images in [0, 1] -> one ``(H, W)`` grid, ``cols`` per row, white padding."""
    h, w = image_shape(images.shape[1])
    n = images.shape[0]
    rows = math.ceil(n / cols)
    grid = torch.ones(rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = images[i].reshape(h, w)
    return grid


def _save_grid(grid: Tensor, path: Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 40, grid.shape[0] / 40 + 0.4), dpi=100)
    ax.imshow(grid.clamp(0, 1).numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


@torch.no_grad()
def prior_samples(model: VAE, path: Path, count: int = 100, seed: int = 0) -> Path:
    """E[x|z] for z ~ N(0, I), ``count`` of them."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(count, model.config.latent, generator=gen).to(next(model.parameters()).device)
    images = model.decode_mean(z).cpu()
    return _save_grid(
        tile(images, int(math.ceil(math.sqrt(count)))), path, "samples from the prior: E[x|z], z ~ N(0, I)"
    )


@torch.no_grad()
def reconstructions(model: VAE, x: Tensor, path: Path, count: int = 40, cols: int = 10) -> Path:
    """Rows of inputs with E[x|z=mu(x)] beneath each row."""
    x = x[:count]
    mu, _ = model.encode(x)
    recon = model.decode_mean(mu)
    rows = []
    for start in range(0, x.shape[0], cols):
        rows += [x[start : start + cols].cpu(), recon[start : start + cols].cpu()]
    images = torch.cat(rows)
    return _save_grid(tile(images, cols), path, "test inputs (odd rows) and reconstructions E[x|z=mu(x)] (even rows)")


@torch.no_grad()
def manifold(model: VAE, path: Path, side: int = 20) -> Path | None:
    """Paper Fig. 4: E[x|z] on a grid of z through the inverse Gaussian CDF of a unit-square grid (J = 2)."""
    if model.config.latent != 2:
        return None
    p = torch.linspace(0.5 / side, 1 - 0.5 / side, side)
    q = torch.distributions.Normal(0.0, 1.0).icdf(p)
    z = torch.stack(torch.meshgrid(q.flip(0), q, indexing="ij"), dim=-1).reshape(-1, 2)
    z = z[:, [1, 0]]  # columns vary z_1, rows vary z_2
    images = model.decode_mean(z.to(next(model.parameters()).device)).cpu()
    return _save_grid(tile(images, side), path, "learned 2-D manifold: E[x|z], z on the Gaussian inverse CDF grid")


def bound_curve(history: Sequence[dict], path: Path, title: str = "") -> Path | None:
    """Paper Fig. 2: the lower bound per datapoint against training datapoints seen (log axis)."""
    train = [
        (float(r["datapoints"]), float(r["train_bound"])) for r in history if r.get("train_bound") not in ("", None)
    ]
    test = [
        (float(r["datapoints"]), float(r["test_bound"]))
        for r in history
        if r.get("test_bound") not in ("", None) and float(r["datapoints"]) > 0
    ]
    if not train and not test:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train (minibatch SGVB estimate)", lw=1)
    if test:
        ax.plot(*zip(*test, strict=True), "o-", label="test (SGVB, L=1)", ms=3, lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("training datapoints evaluated")
    ax.set_ylabel("lower bound per datapoint (nats)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    lows = [v for _, v in train[len(train) // 10 :] + test[len(test) // 10 :]]
    if lows:
        lo, hi = min(lows), max(v for _, v in train + test)
        ax.set_ylim(lo - 0.1 * (hi - lo + 1), hi + 0.05 * (hi - lo + 1))
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_all(model: VAE, test_x: Tensor, history: Sequence[dict], out: Path, title: str = "") -> list[Path]:
    """All pictures of a run into ``out``; returns the files written."""
    model.eval()
    written = [
        prior_samples(model, out / "samples.png"),
        reconstructions(model, test_x, out / "reconstructions.png"),
        manifold(model, out / "manifold.png"),
        bound_curve(history, out / "bound.png", title),
    ]
    model.train()
    return [p for p in written if p is not None]
