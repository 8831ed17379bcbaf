"""docs/migration.md, row by row: the loss lines of public VAE code bases and the fastaevb call
that replaces them, on the same inputs, in float32 and float64, value and every gradient (recon,
mu, logvar, a learned scale) against the original lines evaluated in float64.

Each ``original`` is written out here from the repository's formula (repository and file named);
it is the float64 reference of its row. Tolerances: ``test_backends.TOLERANCES`` (rows of at most
a few hundred elements summed in float32; a learned shared scale's gradient sums every element,
so it is checked against the bound of a sum of terms, as in test_backends).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as torch_f
from test_backends import TOLERANCES

import fastaevb
from conftest import assert_sum_of_terms, device_for
from fastaevb import functional as F


def _kld_rows(mu, log_var):
    return -0.5 * torch.sum(1 + log_var - mu**2 - log_var.exp(), dim=1)


def _diagonal_gaussian_kl(mean, logvar):
    """latent-diffusion / diffusers ``DiagonalGaussianDistribution(...).kl()``, its logvar clamped
    to [-30, 20] as its constructor does."""
    logvar = torch.clamp(logvar, -30.0, 20.0)
    return 0.5 * torch.sum(torch.pow(mean, 2) + torch.exp(logvar) - 1.0 - logvar, dim=[1, 2, 3])


@dataclass(frozen=True)
class Row:
    decoder: str  # what recon holds: "probs", "logits", "real"
    latents: tuple[int, ...]  # mu's shape after the batch
    original: Callable  # (recon, x, mu, logvar, scale) -> loss, the code base's lines
    ours: Callable  # (recon, x, mu, logvar, scale) -> loss, the fastaevb line
    scale: tuple[int, ...] | None = None  # a learned decoder log-scale's shape


BETA, KLD_WEIGHT, KL_COEFF, KL_WEIGHT = 4.0, 0.00025, 0.1, 1e-6
GAMMA, CAPACITY = 1000.0, 25.0  # AntixK's beta_vae.py defaults (C_max; C grows to it)

ROWS = {
    # pytorch/examples vae/main.py loss_function
    "pytorch-examples": Row(
        "probs",
        (6,),
        lambda r, x, m, v, s: (
            torch_f.binary_cross_entropy(r.view(4, 192), x.view(-1, 192), reduction="sum")
            + (-0.5 * torch.sum(1 + v - m.pow(2) - v.exp()))
        ),
        lambda r, x, m, v, s: fastaevb.SGVBLoss("bernoulli_probs")(r.view(4, 192), x.view(-1, 192), m, v),
    ),
    # AntixK/PyTorch-VAE models/vanilla_vae.py loss_function (M_N = kld_weight)
    "antixk-vanilla": Row(
        "real",
        (6,),
        lambda r, x, m, v, s: torch_f.mse_loss(r, x) + KLD_WEIGHT * torch.mean(_kld_rows(m, v), dim=0),
        lambda r, x, m, v, s: F.sgvb_loss(
            r, x, m, v, likelihood="mse", reduction="mean", recon_reduction="mean", kl_weight=KLD_WEIGHT
        ),
    ),
    # AntixK/PyTorch-VAE models/beta_vae.py loss_function, loss_type 'H'
    "antixk-beta-h": Row(
        "real",
        (6,),
        lambda r, x, m, v, s: torch_f.mse_loss(r, x) + BETA * KLD_WEIGHT * torch.mean(_kld_rows(m, v), dim=0),
        lambda r, x, m, v, s: F.sgvb_loss(
            r, x, m, v, likelihood="mse", reduction="mean", recon_reduction="mean", kl_weight=BETA * KLD_WEIGHT
        ),
    ),
    # AntixK/PyTorch-VAE models/beta_vae.py loss_function, loss_type 'B' (gamma 1000, C up to C_max 25)
    "antixk-beta-b": Row(
        "real",
        (6,),
        lambda r, x, m, v, s: (
            torch_f.mse_loss(r, x) + GAMMA * KLD_WEIGHT * (torch.mean(_kld_rows(m, v), dim=0) - CAPACITY).abs()
        ),
        lambda r, x, m, v, s: F.sgvb_loss(
            r,
            x,
            m,
            v,
            likelihood="mse",
            reduction="mean",
            recon_reduction="mean",
            kl_weight=GAMMA * KLD_WEIGHT,
            capacity=CAPACITY,
        ),  # fmt: skip
    ),
    # pythae models/vae/vae_model.py loss_function, reconstruction_loss 'mse'
    "pythae-vae-mse": Row(
        "real",
        (6,),
        lambda r, x, m, v, s: (
            0.5 * torch_f.mse_loss(r.reshape(4, -1), x.reshape(4, -1), reduction="none").sum(dim=-1)
            + (-0.5 * torch.sum(1 + v - m.pow(2) - v.exp(), dim=-1))
        ).mean(dim=0),
        lambda r, x, m, v, s: F.sgvb_loss(r, x, m, v, likelihood="mse", reduction="mean", recon_weight=0.5),
    ),
    # pythae models/vae/vae_model.py loss_function, reconstruction_loss 'bce'
    "pythae-vae-bce": Row(
        "probs",
        (6,),
        lambda r, x, m, v, s: (
            torch_f.binary_cross_entropy(r.reshape(4, -1), x.reshape(4, -1), reduction="none").sum(dim=-1)
            + (-0.5 * torch.sum(1 + v - m.pow(2) - v.exp(), dim=-1))
        ).mean(dim=0),
        lambda r, x, m, v, s: F.sgvb_loss(r, x, m, v, likelihood="bernoulli_probs", reduction="mean"),
    ),
    # pythae models/beta_vae/beta_vae_model.py loss_function, 'mse'
    "pythae-beta-vae": Row(
        "real",
        (6,),
        lambda r, x, m, v, s: (
            0.5 * torch_f.mse_loss(r.reshape(4, -1), x.reshape(4, -1), reduction="none").sum(dim=-1)
            + BETA * (-0.5 * torch.sum(1 + v - m.pow(2) - v.exp(), dim=-1))
        ).mean(dim=0),
        lambda r, x, m, v, s: F.sgvb_loss(
            r, x, m, v, likelihood="mse", reduction="mean", recon_weight=0.5, kl_weight=BETA
        ),
    ),
    # 1Konny/Beta-VAE solver.py reconstruction_loss 'bernoulli' + beta * kl_divergence (objective 'H')
    "1konny-bernoulli": Row(
        "logits",
        (6,),
        lambda r, x, m, v, s: (
            torch_f.binary_cross_entropy_with_logits(r, x, reduction="sum").div(4)
            + BETA * (-0.5 * (1 + v - m.pow(2) - v.exp())).sum(1).mean(0, True)[0]
        ),
        lambda r, x, m, v, s: F.sgvb_loss(r, x, m, v, likelihood="bernoulli", reduction="mean", kl_weight=BETA),
    ),
    # 1Konny/Beta-VAE solver.py objective 'B': gamma * |total_kld - C|, C a growing 0-d tensor
    "1konny-beta-b": Row(
        "logits",
        (6,),
        lambda r, x, m, v, s: (
            torch_f.binary_cross_entropy_with_logits(r, x, reduction="sum").div(4)
            + GAMMA * ((-0.5 * (1 + v - m.pow(2) - v.exp())).sum(1).mean(0, True)[0] - 2.0).abs()
        ),
        lambda r, x, m, v, s: F.sgvb_loss(
            r, x, m, v, likelihood="bernoulli", reduction="mean", kl_weight=GAMMA, capacity=torch.tensor(2.0)
        ),
    ),
    # pythae models/disentangled_beta_vae/disentangled_beta_vae_model.py loss_function (per datapoint)
    "pythae-disentangled-beta-vae": Row(
        "real",
        (6,),
        lambda r, x, m, v, s: (
            0.5 * torch_f.mse_loss(r.reshape(4, -1), x.reshape(4, -1), reduction="none").sum(dim=-1)
            + BETA * torch.abs(-0.5 * torch.sum(1 + v - m.pow(2) - v.exp(), dim=-1) - 3.0)
        ).mean(dim=0),
        lambda r, x, m, v, s: F.sgvb_loss(
            r,
            x,
            m,
            v,
            likelihood="mse",
            reduction="mean",
            recon_weight=0.5,
            kl_weight=BETA,
            capacity=3.0,
            capacity_per_datapoint=True,
        ),  # fmt: skip
    ),
    # free bits, Kingma et al. 2016 (IAF), from the paper's formula: sum_j max(lambda, mean_b KL_bj)
    "free-bits": Row(
        "logits",
        (6,),
        lambda r, x, m, v, s: (
            torch_f.binary_cross_entropy_with_logits(r, x, reduction="sum") / 4
            + torch.clamp((0.5 * (m.pow(2) + v.exp() - 1 - v)).mean(dim=0), min=0.5).sum()
        ),
        lambda r, x, m, v, s: F.sgvb_loss(r, x, m, v, likelihood="bernoulli", reduction="mean", free_bits=0.5),
    ),
    # 1Konny/Beta-VAE solver.py reconstruction_loss 'gaussian' (sigmoid, then summed MSE / B), 'H'
    "1konny-gaussian": Row(
        "logits",
        (6,),
        lambda r, x, m, v, s: (
            torch_f.mse_loss(torch.sigmoid(r), x, reduction="sum").div(4)
            + BETA * (-0.5 * (1 + v - m.pow(2) - v.exp())).sum(1).mean(0, True)[0]
        ),
        lambda r, x, m, v, s: F.sgvb_loss(
            torch.sigmoid(r), x, m, v, likelihood="mse", reduction="mean", kl_weight=BETA
        ),
    ),
    # YannDubs/disentangling-vae disvae/models/losses.py BetaHLoss, distribution 'bernoulli'
    "yanndubs-bernoulli": Row(
        "probs",
        (6,),
        lambda r, x, m, v, s: (
            torch_f.binary_cross_entropy(r, x, reduction="sum") / 4
            + BETA * (0.5 * (-1 - v + m.pow(2) + v.exp()).mean(dim=0)).sum()
        ),
        lambda r, x, m, v, s: F.sgvb_loss(r, x, m, v, likelihood="bernoulli_probs", reduction="mean", kl_weight=BETA),
    ),
    # YannDubs/disentangling-vae disvae/models/losses.py BetaHLoss, distribution 'gaussian' (x 255)
    "yanndubs-gaussian": Row(
        "real",
        (6,),
        lambda r, x, m, v, s: (
            torch_f.mse_loss(r * 255, x * 255, reduction="sum") / 255 / 4
            + BETA * (0.5 * (-1 - v + m.pow(2) + v.exp()).mean(dim=0)).sum()
        ),
        lambda r, x, m, v, s: F.sgvb_loss(
            r, x, m, v, likelihood="mse", reduction="mean", recon_weight=255.0, kl_weight=BETA
        ),
    ),
    # orybkin/sigma-vae-pytorch model.py loss_function with a learned shared log_sigma
    "sigma-vae": Row(
        "real",
        (6,),
        lambda r, x, m, v, s: (
            (0.5 * torch.pow((x - r) / s.exp(), 2) + s + 0.5 * math.log(2 * math.pi)).sum()
            + (-0.5 * torch.sum(1 + v - m.pow(2) - v.exp()))
        ),
        lambda r, x, m, v, s: fastaevb.SGVBLoss("gaussian")((r, 2 * s), x, m, v),
        scale=(),
    ),
    # Lightning-Universe/lightning-bolts pl_bolts/models/autoencoders/basic_vae/basic_vae_module.py step
    "lightning-bolts": Row(
        "real",
        (6,),
        lambda r, x, m, v, s: (
            torch_f.mse_loss(r, x, reduction="mean")
            + KL_COEFF
            * torch.distributions.kl_divergence(
                torch.distributions.Normal(m, torch.exp(v / 2)), torch.distributions.Normal(0.0, 1.0)
            ).mean()
        ),
        lambda r, x, m, v, s: F.sgvb_loss(
            r,
            x,
            m,
            v,
            likelihood="mse",
            reduction="mean",
            recon_reduction="mean",
            kl_reduction="mean",
            kl_weight=KL_COEFF,
        ),  # fmt: skip
    ),
    # CompVis/latent-diffusion ldm/modules/losses/contperceptual.py LPIPSWithDiscriminator,
    # generator step without the perceptual and GAN terms (perceptual_weight 0, disc_factor 0)
    "latent-diffusion": Row(
        "real",
        (4, 2, 2),
        lambda r, x, m, v, s: (
            torch.sum(torch.abs(x - r) / torch.exp(s) + s) / 4 + KL_WEIGHT * torch.sum(_diagonal_gaussian_kl(m, v)) / 4
        ),
        lambda r, x, m, v, s: F.sgvb_loss(
            r,
            x,
            m,
            v,
            likelihood="l1",
            reduction="mean",
            decoder_log_scale=s,
            kl_weight=KL_WEIGHT,
            logvar_clamp=(-30.0, 20.0),
        ),  # fmt: skip
        scale=(),
    ),
    # huggingface/diffusers examples/research_projects/autoencoderkl/train_autoencoderkl.py, rec_loss l1
    "diffusers-l1": Row(
        "real",
        (4, 2, 2),
        lambda r, x, m, v, s: (
            torch.sum(torch_f.l1_loss(r, x, reduction="none")) / 4 + 0.5 * torch.sum(_diagonal_gaussian_kl(m, v)) / 4
        ),
        lambda r, x, m, v, s: F.sgvb_loss(
            r, x, m, v, likelihood="l1", reduction="mean", kl_weight=0.5, logvar_clamp=(-30.0, 20.0)
        ),
    ),
    # the same, rec_loss l2
    "diffusers-l2": Row(
        "real",
        (4, 2, 2),
        lambda r, x, m, v, s: (
            torch.sum(torch_f.mse_loss(r, x, reduction="none")) / 4 + 0.5 * torch.sum(_diagonal_gaussian_kl(m, v)) / 4
        ),
        lambda r, x, m, v, s: F.sgvb_loss(
            r, x, m, v, likelihood="mse", reduction="mean", kl_weight=0.5, logvar_clamp=(-30.0, 20.0)
        ),
    ),
}


def make_inputs(row: Row, seed: int = 0):
    """float64 leaves: images (4, 3, 8, 8) in [0, 1], the decoder output of ``row.decoder``, latents
    (4, *row.latents) with one log-variance beyond the clamp of the rows that clamp."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    raw = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    recon = {"probs": torch.sigmoid(raw), "logits": 2 * raw, "real": x + 0.3 * raw}[row.decoder]
    mu = torch.randn(4, *row.latents, generator=gen, dtype=torch.float64)
    logvar = 0.5 * torch.randn(4, *row.latents, generator=gen, dtype=torch.float64)
    logvar.view(-1)[0] = 21.0  # beyond diffusers' clamp: exp stays finite in float32, gradient 0 there
    scale = None if row.scale is None else 0.3 * torch.randn(row.scale, generator=gen, dtype=torch.float64)
    return recon, x, mu, logvar, scale


@pytest.mark.parametrize("name", ROWS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_one_call_reproduces_the_code_base(kernel_backend, name, dtype):
    row = ROWS[name]
    device = device_for(kernel_backend)
    inputs = make_inputs(row)
    learned = [i for i, t in enumerate(inputs) if t is not None and i != 1]  # recon, mu, logvar, scale
    ours_in = [t if t is None else t.to(device, dtype).requires_grad_(i in learned) for i, t in enumerate(inputs)]
    # the reference gets the same (exactly representable) inputs, so only our arithmetic differs
    ref = [t if t is None else t.detach().cpu().double().requires_grad_(i in learned) for i, t in enumerate(ours_in)]
    expected = row.original(*ref)
    got = row.ours(*ours_in)
    tol = TOLERANCES[dtype]
    assert got.shape == () and got.dtype == dtype
    torch.testing.assert_close(got.double().cpu(), expected.detach(), **tol)
    grads = torch.autograd.grad(got, [ours_in[i] for i in learned])
    want = torch.autograd.grad(expected, [ref[i] for i in learned])
    for i, g, w in zip(learned, grads, want, strict=True):
        if i == 4:  # a shared scale: its gradient is a sum of one term per element (which cancel)
            assert_sum_of_terms(g, scale_terms(row, ref), tol, "the learned scale's gradient")
            continue
        torch.testing.assert_close(g.double().cpu(), w, **tol, msg=lambda m, i=i: f"gradient of input {i}: {m}")


def scale_terms(row: Row, ref: list) -> torch.Tensor:
    """The float64 per-element terms of a shared scale's gradient: the original's gradient with
    respect to the scale broadcast to every element."""
    recon, x, mu, logvar, scale = (t if t is None else t.detach() for t in ref)
    wide = scale.expand(x.shape).clone().requires_grad_()
    (per_element,) = torch.autograd.grad(row.original(recon, x, mu, logvar, wide), wide)
    return per_element.reshape(-1, 1)
