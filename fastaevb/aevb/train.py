"""Algorithm 1 of the paper: minibatch SGVB with Adagrad, checkpoints, logs, and DDP.

The objective maximised is the paper's: ``(N / M) * sum_{i in minibatch} L~(theta, phi; x_i)``
(the SGVB estimate of the full-data bound) plus ``log p(theta)`` for an N(0, I) prior on the
parameters, i.e. Adagrad on ``(N/M) * SGVBLoss(sum) `` with weight decay 1. The bound is
reported per datapoint (nats).

Determinism: all training noise (dynamic binarization and eps) comes from one
``torch.Generator`` seeded by ``--seed`` and saved in checkpoints; each step draws the noise
of the *global* minibatch and each rank takes its rows, so ranks get different noise and the
run is the same for any number of processes. Data order comes from
``DistributedSampler(seed, epoch)``; the position in the epoch follows from the step count.
"""

from __future__ import annotations

import csv
import gc
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data.distributed import DistributedSampler

from . import checkpoint as ckpt
from . import data as D
from . import distributed as dist_utils
from .evaluate import Estimate, elbo
from .extras import progress_bar
from .models import VAE, ModelConfig
from .objective import ESTIMATORS, IMPORTANCE_WEIGHTED, SGVBObjective

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.csv"
LOG_FIELDS = ("step", "datapoints", "train_bound", "test_bound", "seconds")
TEST_SEED = 2014  # noise of the test-bound evaluations, independent of training noise


@dataclass
class RunConfig:
    """Options that change the optimisation trajectory; a resumed run must repeat them."""

    batch_size: int = 100
    samples: int = 1
    lr: float = 0.02
    weight_decay: float = 1.0
    estimator: str = "analytic"
    binarization: str = "dynamic"
    seed: int = 0
    train_size: int = 0  # N, from the data

    def validate(self) -> None:
        if self.batch_size < 1 or self.samples < 1:
            raise ValueError("batch size and samples must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.binarization not in ("dynamic", "static"):
            raise ValueError(f"binarization must be 'dynamic' or 'static', got {self.binarization!r}")


@dataclass
class Schedule:
    """Options that may change between a run and its resumption."""

    steps: int = 10_000
    log_every: int = 100
    eval_every: int = 1000
    checkpoint_every: int = 1000
    test_limit: int | None = None
    progress: bool = True
    figures: bool = True


def make_optimizer(params, lr: float, weight_decay: float, fused: bool | None = None) -> torch.optim.Optimizer:
    """Adagrad, fused where this torch offers it (CPU and CUDA in torch >= 2.5)."""
    params = list(params)
    if fused is None or fused:
        try:
            return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):
            if fused:
                raise
    return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)


class _StopFlag:
    """SIGINT / SIGTERM set a flag; the loop checkpoints and exits at the next step boundary."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[signal.Signals, Any] = {}  # the handlers signal.signal returned

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum:  # a second signal: give up at once
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """One process's share of a (possibly distributed) AEVB training run."""

    def __init__(
        self,
        model_config: ModelConfig,
        run: RunConfig,
        train_grey: Tensor,
        ctx: dist_utils.Context | None = None,
        fused_optimizer: bool | None = None,
    ) -> None:
        self.ctx = ctx or dist_utils.Context()
        run.train_size = int(train_grey.shape[0])
        run.validate()
        if run.batch_size % self.ctx.world_size:
            raise ValueError(
                f"batch size {run.batch_size} (the global minibatch M) must be divisible by the "
                f"{self.ctx.world_size} processes"
            )
        if run.train_size < run.batch_size:
            raise ValueError(f"{run.train_size} training datapoints are fewer than one minibatch of {run.batch_size}")
        self.model_config, self.run = model_config, run
        self.device = self.ctx.device
        torch.manual_seed(run.seed)  # parameter initialisation, identical on every rank
        self.model = VAE(model_config).to(self.device)
        self.objective = SGVBObjective(self.model, run.estimator, run.samples)
        self.module: torch.nn.Module = self.objective  # or its DDP wrapper
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.module = DistributedDataParallel(
                self.objective, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.optimizer = make_optimizer(self.model.parameters(), run.lr, run.weight_decay, fused_optimizer)
        self.train_grey = train_grey.to(self.device)
        if model_config.likelihood == "bernoulli" and run.binarization == "static":
            self.train_grey = D.binarize_static(self.train_grey)
        self.local_batch = run.batch_size // self.ctx.world_size
        self.steps_per_epoch = run.train_size // run.batch_size
        # (N / M) times the minibatch sum; DDP averages gradients over ranks, so each rank scales its
        # local sum by N / M_local and the average is (N / M) times the global minibatch sum.
        self.scale = run.train_size / self.local_batch
        self.noise = torch.Generator().manual_seed(run.seed)
        self.sampler: DistributedSampler[int] = DistributedSampler(
            range(run.train_size),  # type: ignore[arg-type]  # only its len() is read: a range serves as the dataset
            num_replicas=self.ctx.world_size,
            rank=self.ctx.rank,
            shuffle=True,
            seed=run.seed,
        )
        self.step = 0
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)  # no epoch's order drawn yet
        self.history: list[dict] = []
        self.elapsed = 0.0
        self.data_dir: str | None = None  # recorded in checkpoints for eval / sample

    # --- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "model_config": self.model_config.to_dict(),
            "run_config": asdict(self.run),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "rng": {"noise": self.noise.get_state(), "torch": torch.get_rng_state()},
            "history": list(self.history),
            "elapsed": self.elapsed,
            "world_size": self.ctx.world_size,
            "data_dir": self.data_dir,
        }

    def load_state_dict(self, state: dict, path: str = "checkpoint") -> None:
        ckpt.check_compatible(path, state["model_config"], self.model_config.to_dict(), "model")
        ckpt.check_compatible(path, state["run_config"], asdict(self.run), "training options")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.noise.set_state(state["rng"]["noise"])
            torch.set_rng_state(state["rng"]["torch"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise ckpt.CheckpointError(f"{path}: checkpoint contents do not fit this model: {exc}") from exc
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.elapsed = float(state.get("elapsed", 0.0))

    # --- one step of Algorithm 1 ---------------------------------------------------------------

    def _indices(self, step: int) -> Tensor:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._order = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
            self._epoch = epoch
        return self._order[pos * self.local_batch : (pos + 1) * self.local_batch]

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """This rank's minibatch and eps for the current step (noise drawn for the global batch)."""
        M, R, r = self.run.batch_size, self.ctx.world_size, self.ctx.rank
        x = self.train_grey[self._indices(self.step).to(self.device)]
        if self.model_config.likelihood == "bernoulli" and self.run.binarization == "dynamic":
            u = torch.rand(M, self.model_config.data_dim, generator=self.noise)[r::R]
            x = (u.to(self.device) < x).to(x.dtype)
        shape = (
            (M, self.model_config.latent) if self.run.samples == 1 else (self.run.samples, M, self.model_config.latent)
        )
        eps = torch.randn(shape, generator=self.noise)
        eps = eps[r::R] if self.run.samples == 1 else eps[:, r::R]
        return x, eps.to(self.device)

    def sgvb_step(self, x: Tensor, eps: Tensor | None = None) -> Tensor:
        """Forward, backward and Adagrad update on one minibatch; returns the summed negative
        SGVB estimate of this rank's minibatch (detached)."""
        loss = self.module(x, eps)
        (loss * self.scale).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    # --- the loop --------------------------------------------------------------------------------

    def release_distributed(self) -> None:
        """Drop the DDP wrapper before the process group is destroyed. Its reducer holds the last
        collectives' work and their tensors; freed by Gloo's worker threads while the interpreter
        shuts down, they can abort the process (SIGABRT, "terminate called without an active
        exception"; pytorch/pytorch PR 179291), so they are freed here, while Python is alive."""
        if self.module is not self.objective:
            self.module = self.objective
            gc.collect()  # DDP's hooks hold reference cycles

    def test_bound(self, test_x: Tensor) -> Estimate:
        self.model.eval()
        gen = torch.Generator(device=test_x.device).manual_seed(TEST_SEED)
        # the importance-weighted estimators report the K-sample bound they train on
        samples = self.run.samples if self.run.estimator in IMPORTANCE_WEIGHTED else 1
        values = elbo(self.model, test_x, estimator=self.run.estimator, samples=samples, generator=gen)
        self.model.train()
        return Estimate.of(values)

    def fit(self, schedule: Schedule, out: Path | None, test_x: Tensor | None) -> int:
        """Train up to ``schedule.steps``; returns 0, or 128 + signal number when interrupted."""
        main = self.ctx.is_main
        M = self.run.batch_size
        bar = progress_bar(
            main and schedule.progress,
            total=schedule.steps * M,
            initial=self.step * M,
            unit="dp",
            unit_scale=True,
            smoothing=0.05,
            desc="train",
            dynamic_ncols=True,
            file=sys.stderr,
        )
        started = time.perf_counter() - self.elapsed
        running = torch.zeros(2, dtype=torch.float64)  # sum of per-datapoint bounds, datapoints
        if self.step == 0 and test_x is not None and main:
            self._log(out, None, self.test_bound(test_x).mean, 0.0)
        with _StopFlag() as stop:
            while self.step < schedule.steps:
                x, eps = self.next_batch()
                loss = self.sgvb_step(x, eps)
                self.step += 1
                running[0] -= loss.double().item()
                running[1] += x.shape[0]
                if self.ctx.distributed:  # every rank must agree to stop at the same step
                    flag = dist_utils.all_sum(self.ctx, torch.tensor([float(stop.signum)]))
                    stop.signum = stop.signum or (int(flag.item()) and signal.SIGTERM)
                bar.update(M)
                last = self.step == schedule.steps
                if self.step % schedule.log_every == 0 or last or stop.signum:
                    totals = dist_utils.all_sum(self.ctx, running.clone())
                    train = (totals[0] / totals[1]).item() if totals[1] else math.nan
                    running.zero_()
                    test = None
                    if test_x is not None and main and (self.step % schedule.eval_every == 0 or last):
                        test = self.test_bound(test_x).mean
                    self.elapsed = time.perf_counter() - started
                    if main:
                        self._log(out, train, test, self.elapsed)
                        bar.set_postfix(bound=f"{train:.2f}", refresh=False)
                if stop.signum or self.step % schedule.checkpoint_every == 0 or last:
                    self.elapsed = time.perf_counter() - started
                    if main and out is not None:
                        ckpt.save(self.state_dict(), out / CHECKPOINT_NAME)
                if stop.signum:
                    bar.close()
                    if main:
                        where = out / CHECKPOINT_NAME if out is not None else "nowhere (no --out)"
                        print(
                            f"interrupted by signal {stop.signum} at step {self.step}; checkpoint: {where}",
                            file=sys.stderr,
                        )
                    return 128 + int(stop.signum)
        bar.close()
        return 0

    def _log(self, out: Path | None, train: float | None, test: float | None, seconds: float) -> None:
        row = {
            "step": self.step,
            "datapoints": self.step * self.run.batch_size,
            "train_bound": "" if train is None else f"{train:.4f}",
            "test_bound": "" if test is None else f"{test:.4f}",
            "seconds": f"{seconds:.2f}",
        }
        self.history.append(row)
        if out is not None:
            write_log(out / LOG_NAME, self.history)


def write_log(path: Path, rows: list[dict]) -> None:
    """Rewrite the CSV from the history (so a resumed run's log matches its checkpoint)."""
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_log(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
