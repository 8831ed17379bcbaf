"""pytest-benchmark: one whole AEVB training step (forward, backward, Adagrad update) of the
paper's MNIST model, 784-500-20-500-784 tanh MLPs, M=100, L=1, Adagrad with the N(0, I) prior
as weight decay, the estimator scaled by N/M.

Workloads (``benchmark.group``) and implementations (``extra_info['implementation']``):

``train_step``
    ``eager``: plain PyTorch as the classic VAE example writes it (``fastaevb.aevb.classic`` with the
    paper's sizes and tanh units: sigmoid decoder, ``F.binary_cross_entropy`` + the KLD formula,
    ``mu + randn_like(std) * std``), Adagrad as constructed by default (on CPU the single-tensor
    loop, not fused / foreach).
    ``compiled``: the best stock setup: ``torch.compile`` of model and loss, fused Adagrad.
    ``fastaevb``: ``fastaevb.aevb.train.Trainer.sgvb_step`` (the application's own step:
    ``SGVBLoss('bernoulli')`` on logits, fused ``reparameterize`` with the trainer's explicit eps,
    fused Adagrad).
    ``bound-free-loss``: the fastaevb step with the loss lines replaced by a stand-in that computes
    nothing (``z = mu``; one autograd node whose backward hands out constant gradients of the real
    shapes): the fastest any loss implementation could make this step with the eager model. Its
    ratio to ``compiled`` bounds what a faster loss can reach against ``torch.compile``.
``train_step_loss_swapped``
    ``eager`` as above; ``fastaevb``: the same eager model and optimizer where only the loss
    lines change: ``SGVBLoss('bernoulli')`` and ``fastaevb.functional.reparameterize`` (the
    decoder's final ``sigmoid`` is dropped so the loss gets logits).

``items`` in extra_info is datapoints per call, so datapoints/s = items / time.
``FASTAEVB_BENCH_QUICK=1``: 3 rounds (CI); otherwise 50.
Run: ``pytest bench/test_training.py --benchmark-json=train.json``.
"""

from __future__ import annotations

import os

import pytest
import torch

import fastaevb
from fastaevb import functional as FF
from fastaevb.aevb.classic import ClassicVAE, loss_function
from fastaevb.aevb.models import ModelConfig
from fastaevb.aevb.train import RunConfig, Trainer

M, D, H, J, N = 100, 784, 500, 20, 60_000
LR, WEIGHT_DECAY = 0.02, 1.0
QUICK = os.environ.get("FASTAEVB_BENCH_QUICK") == "1"
ROUNDS, ITERATIONS = (3, 2) if QUICK else (50, 5)


def batch() -> torch.Tensor:
    return (torch.rand(M, D, generator=torch.Generator().manual_seed(0)) < 0.3).float()


def classic_step(model: ClassicVAE, loss_fn, fused: bool | None = None, compiled: bool = False):
    """The classic example's step: forward, the loss scaled by N/M, zero_grad, backward, Adagrad."""
    optimizer = torch.optim.Adagrad(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=fused)

    def compute_loss(x):
        recon, mu, logvar = model(x)
        return loss_fn(recon, x, mu, logvar) * (N / M)

    if compiled:
        compute_loss = torch.compile(compute_loss)

    def step(x):
        loss = compute_loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    return step


def eager_step():
    return classic_step(ClassicVAE.with_paper_units(D, H, J), loss_function)


def compiled_step():
    return classic_step(ClassicVAE.with_paper_units(D, H, J), loss_function, fused=True, compiled=True)


def paper_trainer() -> Trainer:
    """The application's trainer for the paper's MNIST model (its data unused: batches come in)."""
    return Trainer(
        ModelConfig("bernoulli", D, H, J), RunConfig(batch_size=M, lr=LR, weight_decay=WEIGHT_DECAY), torch.zeros(N, D)
    )


def fastaevb_step():
    trainer = paper_trainer()
    noise = torch.Generator().manual_seed(0)

    def step(x):
        return trainer.sgvb_step(x, torch.randn(M, J, generator=noise))

    return step


class FreeLoss(torch.autograd.Function):
    """A loss that costs only its autograd node: 0 forward, constant dense gradients backward."""

    @staticmethod
    def forward(ctx, logits, mu, logvar):
        ctx.shapes = logits.shape, mu.shape, logvar.shape
        return logits.new_zeros(())

    @staticmethod
    def backward(ctx, grad_out):
        return tuple(torch.full(shape, 1e-3) for shape in ctx.shapes)


def free_loss_step():
    trainer = paper_trainer()
    model, optimizer = trainer.model, trainer.optimizer

    def step(x):
        mu, logvar = model.encode(x)
        loss = FreeLoss.apply(model.decode(mu), mu, logvar)
        (loss * trainer.scale).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def swapped_step():
    model = ClassicVAE.with_paper_units(D, H, J, logits=True)
    model.reparameterize = lambda mu, logvar: FF.reparameterize(mu, logvar)
    return classic_step(model, fastaevb.SGVBLoss("bernoulli"))


CASES = {
    ("train_step", "eager"): eager_step,
    ("train_step", "compiled"): compiled_step,
    ("train_step", "fastaevb"): fastaevb_step,
    ("train_step", "bound-free-loss"): free_loss_step,
    ("train_step_loss_swapped", "eager"): eager_step,
    ("train_step_loss_swapped", "fastaevb"): swapped_step,
}


@pytest.mark.parametrize("workload,implementation", list(CASES), ids=["/".join(c) for c in CASES])
def test_training_step(benchmark, workload, implementation):
    torch.manual_seed(0)
    step = CASES[workload, implementation]()
    x = batch()
    for _ in range(5):  # compile and warm up outside the timing
        step(x)
    benchmark.group = workload
    benchmark.extra_info.update(
        implementation=implementation,
        items=M,
        threads=torch.get_num_threads(),
        model="784-500-20-500-784 tanh, Bernoulli, M=100, L=1, Adagrad",
    )
    loss = benchmark.pedantic(step, args=(x,), rounds=ROUNDS, iterations=ITERATIONS, warmup_rounds=2)
    assert torch.isfinite(loss)
