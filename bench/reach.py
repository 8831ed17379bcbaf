"""The loss workloads of public VAE code bases (docs/migration.md), each as the code base's own eager
lines, ``torch.compile`` of them, and the one fastaevb call, with the memory a loss step holds.

- AntixK/PyTorch-VAE's vanilla VAE: ``F.mse_loss`` + ``kld_weight`` * batch-mean KL, images
  ``(64, 3, 64, 64)``, J = 128.
- latent diffusion's autoencoder loss (no LPIPS / GAN): ``|x - x_hat| / exp(s) + s`` summed / B with
  a learned scalar s, + ``kl_weight`` * KL of clamped feature-map latents, images
  ``(4, 3, 256, 256)``, latents ``(4, 4, 32, 32)``.
- AntixK's beta-VAE, ``loss_type='B'``: the same with ``gamma * kld_weight * |KL - C|`` and a
  capacity C that grows every step (a 0-d tensor).
- beta-VAE (1Konny's 'H' objective on dSprites-sized logits ``(64, 1, 64, 64)``, J = 10) with a
  KL weight that changes every step (annealing), passed as a 0-d tensor to every implementation.

Memory of one forward + backward (``step_memory``, on CPU from ``torch.profiler``'s allocation
events, at op granularity): **held** is what is alive between forward and backward beyond the inputs (tensors saved
for backward, gradients a fused op wrote in forward, the loss), **peak** the most alive at any time
above the inputs during the step (the inputs' ``.grad`` included, the same for all).
``fastaevb-low-memory`` is the fastaevb call under ``fastaevb.low_memory()`` (gradients in backward).

``python bench/reach.py`` prints the memory table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as torch_F

import fastaevb
from fastaevb import functional as FF

KLD_WEIGHT, LDM_KL_WEIGHT, BETA = 0.00025, 1e-6, 4.0
GAMMA, C_PER_WEIGHT = 1000.0, 6.25  # AntixK's beta_vae.py 'B': gamma, and C growing to C_max = 25


def antixk_eager(recons, x, mu, log_var, scale, weight):
    recons_loss = torch_F.mse_loss(recons, x)
    kld_loss = torch.mean(-0.5 * torch.sum(1 + log_var - mu**2 - log_var.exp(), dim=1), dim=0)
    return recons_loss + KLD_WEIGHT * kld_loss


def antixk_fastaevb(recons, x, mu, log_var, scale, weight):
    return FF.sgvb_loss(
        recons, x, mu, log_var, likelihood="mse", reduction="mean", recon_reduction="mean", kl_weight=KLD_WEIGHT
    )


def antixk_b_eager(recons, x, mu, log_var, scale, weight):
    capacity = C_PER_WEIGHT * weight  # the schedule's C for this step, a 0-d tensor
    recons_loss = torch_F.mse_loss(recons, x)
    kld_loss = torch.mean(-0.5 * torch.sum(1 + log_var - mu**2 - log_var.exp(), dim=1), dim=0)
    return recons_loss + GAMMA * KLD_WEIGHT * (kld_loss - capacity).abs()


def antixk_b_fastaevb(recons, x, mu, log_var, scale, weight):
    return FF.sgvb_loss(
        recons, x, mu, log_var, likelihood="mse", reduction="mean", recon_reduction="mean",
        kl_weight=GAMMA * KLD_WEIGHT, capacity=C_PER_WEIGHT * weight,
    )  # fmt: skip


def ldm_eager(reconstructions, inputs, mean, logvar, s, weight):
    logvar = torch.clamp(logvar, -30.0, 20.0)  # DiagonalGaussianDistribution
    rec_loss = torch.abs(inputs.contiguous() - reconstructions.contiguous())
    nll_loss = rec_loss / torch.exp(s) + s
    nll_loss = torch.sum(nll_loss) / nll_loss.shape[0]
    kl_loss = 0.5 * torch.sum(torch.pow(mean, 2) + torch.exp(logvar) - 1.0 - logvar, dim=[1, 2, 3])
    kl_loss = torch.sum(kl_loss) / kl_loss.shape[0]
    return nll_loss + LDM_KL_WEIGHT * kl_loss


def ldm_fastaevb(reconstructions, inputs, mean, logvar, s, weight):
    return FF.sgvb_loss(
        reconstructions, inputs, mean, logvar, likelihood="l1", reduction="mean", decoder_log_scale=s,
        kl_weight=LDM_KL_WEIGHT, logvar_clamp=(-30.0, 20.0),
    )  # fmt: skip


def beta_eager(x_recon, x, mu, logvar, scale, weight):
    recon_loss = torch_F.binary_cross_entropy_with_logits(x_recon, x, reduction="sum").div(x.shape[0])
    total_kld = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(1).mean(0)
    return recon_loss + weight * total_kld


def beta_fastaevb(x_recon, x, mu, logvar, scale, weight):
    return FF.sgvb_loss(x_recon, x, mu, logvar, likelihood="bernoulli", reduction="mean", kl_weight=weight)


def low_memory(step: Callable) -> Callable:
    """``step`` under ``fastaevb.low_memory()``: its gradients computed in backward, nothing held."""

    def in_low_memory(*inputs):
        with fastaevb.low_memory():
            return step(*inputs)

    return in_low_memory


@dataclass(frozen=True)
class Reach:
    name: str
    image: tuple[int, ...]
    latents: tuple[int, ...]
    decoder: str  # "real" | "logits"
    eager: Callable
    fastaevb: Callable
    learned_scale: bool = False
    annealed: bool = False

    @property
    def elements(self) -> int:
        n = 1
        for d in self.image:
            n *= d
        return n

    def inputs(self, step: int = 0):
        """(recon, x, mu, logvar, scale, weight): leaves that need gradients, a 0-d weight tensor."""
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(self.image, generator=gen)
        raw = torch.randn(self.image, generator=gen)
        recon = (x + 0.1 * raw if self.decoder == "real" else 2 * raw).requires_grad_()
        mu = torch.randn(self.latents, generator=gen).requires_grad_()
        logvar = (0.1 * torch.randn(self.latents, generator=gen)).requires_grad_()
        scale = torch.zeros((), requires_grad=True) if self.learned_scale else None
        weight = torch.tensor(BETA * min(1.0, (step + 1) / 10))  # an annealing schedule's value
        return recon, x, mu, logvar, scale, weight


REACH = [
    Reach("AntixK vanilla VAE (64,3,64,64) J=128", (64, 3, 64, 64), (64, 128), "real", antixk_eager, antixk_fastaevb),
    Reach(
        "AntixK beta-VAE B growing capacity (64,3,64,64) J=128",
        (64, 3, 64, 64),
        (64, 128),
        "real",
        antixk_b_eager,
        antixk_b_fastaevb,
        annealed=True,
    ),
    Reach(
        "latent diffusion AE (4,3,256,256) z (4,4,32,32)",
        (4, 3, 256, 256),
        (4, 4, 32, 32),
        "real",
        ldm_eager,
        ldm_fastaevb,
        learned_scale=True,
    ),
    Reach(
        "beta-VAE annealed weight (64,1,64,64) J=10",
        (64, 1, 64, 64),
        (64, 10),
        "logits",
        beta_eager,
        beta_fastaevb,
        annealed=True,
    ),
]


def leaves(inputs) -> list[torch.Tensor]:
    return [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]


def run(step, inputs, backward: bool = True):
    if not backward:
        with torch.no_grad():
            return step(*inputs)
    loss = step(*inputs)
    loss.backward()
    for t in leaves(inputs):
        t.grad = None
    return loss


def _cached_gradient_bytes() -> int:
    try:
        from fastaevb import _autograd  # type: ignore[attr-defined]
    except ImportError:
        return 0
    return int(_autograd.cached_gradient_bytes())


def step_memory(step, inputs) -> tuple[int, int]:
    """(held, peak) bytes of one forward + backward on CPU above the inputs, from the allocation
    events of ``torch.profiler`` in time order (held: alive when forward has returned)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    run(step, inputs)  # warm: compiled code, JIT, thread pools
    # the gradient buffers the C++ loss node keeps for the next step would hide its gradient
    # allocation: give them back, so the gradients written in forward count as held here
    fastaevb.empty_cache()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with record_function("forward"):
            loss = step(*inputs)
        with record_function("backward"):
            loss.backward()
    for t in leaves(inputs):
        t.grad = None
    # the C++ node takes its decoder gradient from csrc/gradient_cache.h (aligned_alloc, which the
    # profiler does not see); it is alive from the fused forward to the end of the step, and back
    # in the (emptied) cache now that .grad is cleared: count it from forward on
    hidden = _cached_gradient_bytes()
    # each allocation and free is the self memory of the innermost op that made it (or a
    # "[memory]" event outside any op): the live bytes after each event, in start order
    # (op granularity: a peak inside one op is seen as its net)
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    forward_end = max(e.time_range.end for e in prof.events() if e.name == "forward")
    live = peak = held = hidden
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
        if e.time_range.start <= forward_end:
            held = live
    del loss
    return held, peak


def benchmark_step(benchmark, name: str, implementation: str, elements: int, step, inputs, rounds: int, inputs_of=None):
    """pytest-benchmark of one forward + backward of ``step``: the first call (compiles, warms up)
    outside the timing, the held and peak memory (:func:`step_memory`) and the compile time in
    ``extra_info``, then ``rounds`` rounds; ``inputs_of(k)`` gives round k's inputs (default: the same)."""
    benchmark.group = f"{name}, fwd+bwd"
    start = time.perf_counter()
    run(step, inputs)  # compiles / warms up outside the timing
    compile_s = time.perf_counter() - start
    held, peak = step_memory(step, inputs)
    benchmark.extra_info.update(
        workload=name,
        implementation=implementation,
        backward=True,
        elements=elements,
        held_bytes=held,
        peak_bytes=peak,
        compile_s=compile_s,
        threads=torch.get_num_threads(),
    )
    state = {"k": 0}

    def one_round():
        state["k"] += 1
        return run(step, inputs if inputs_of is None else inputs_of(state["k"]))

    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    print("| workload | implementation | held MiB | peak MiB |")
    print("|---|---|---|---|")
    for w in REACH:
        implementations = {
            "eager": w.eager,
            "compiled": torch.compile(w.eager, dynamic=False),
            "fastaevb": w.fastaevb,
            "fastaevb-low-memory": low_memory(w.fastaevb),
        }
        for name, step in implementations.items():
            held, peak = step_memory(step, w.inputs())
            print(f"| {w.name} | {name} | {held / 2**20:.2f} | {peak / 2**20:.2f} |")


if __name__ == "__main__":
    main()
