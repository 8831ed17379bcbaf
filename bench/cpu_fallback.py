"""The CPU backends without the C++ extension against the eager lines users write (issue: "the
default CPU backend without the extension must be at least as fast as eager").

One training step's loss lines, forward and backward, with a leaf tensor standing in for the
decoder output (so only the loss is measured) and a random upstream gradient for z (what the
decoder's backward would hand back):

- eager: ``z = mu + exp(0.5 logvar) * randn_like(mu)``;
  ``loss = F.binary_cross_entropy_with_logits(l, x, reduction='sum') + KL`` (the classic example's
  KL line); ``torch.autograd.backward([loss, z], [None, grad_z])``.
- a backend (``torch``, ``torch-philox``: the torch backend with its pure-torch Philox noise,
  ``numba``, ``cpp`` as a yardstick when importable): its entries as the op layer calls them for
  that step: ``reparameterize_kl_forward`` (z only), ``sgvb_loss_forward`` with the gradients
  written in forward, ``reparameterize_kl_backward`` for grad_z, and the two adds autograd does
  where the KL and the sample meet (mu, logvar). Outputs are allocated per step, as the op layer
  does. (The op layer is not on the path: it is measured elsewhere.)

Variants alternate within each round, in one process, ``torch.set_num_threads(2)``; the table
gives the median time per step over the rounds and ``speed = eager time / variant time``
(above 1: faster than eager), and the same for the fastest round (the least disturbed by other
load on a shared machine).

    python bench/cpu_fallback.py --sizes 100,8192 --rounds 15
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import statistics
import time

import torch
import torch.nn.functional as F

D, J = 784, 20


def make_inputs(batch: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        mu=torch.randn(batch, J, generator=g),
        logvar=0.1 * torch.randn(batch, J, generator=g),
        l=torch.randn(batch, D, generator=g),
        x=(torch.rand(batch, D, generator=g) < 0.3).float(),
        grad_z=torch.randn(batch, J, generator=g),
    )


def eager_step(inputs: dict):
    mu = inputs["mu"].clone().requires_grad_()
    logvar = inputs["logvar"].clone().requires_grad_()
    l = inputs["l"].clone().requires_grad_()
    x, grad_z = inputs["x"], inputs["grad_z"]

    def step():
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        loss = F.binary_cross_entropy_with_logits(l, x, reduction="sum") + (
            -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        )
        torch.autograd.backward([loss, z], [None, grad_z])
        mu.grad = logvar.grad = l.grad = None

    return step


def entries_step(module, inputs: dict):
    """The new-contract entries (outputs first, given)."""
    mu, logvar, l, x = inputs["mu"], inputs["logvar"], inputs["l"], inputs["x"]
    grad_z = inputs["grad_z"].view(1, *mu.shape)
    batch = mu.shape[0]
    counter = iter(range(1, 1 << 62))

    def step():
        seed = next(counter)
        empty = mu.new_empty
        z = empty((1, batch, J))
        module.reparameterize_kl_forward(z, empty(0), empty(0), empty(0), mu, logvar, None, seed, 1)
        out, grad_l, grad_mu, grad_logvar = empty(()), torch.empty_like(l), empty(mu.shape), empty(mu.shape)
        module.sgvb_loss_forward(
            out, grad_l, empty(0), grad_mu, grad_logvar, l, x, None, mu, logvar, "bernoulli", 1.0, 1.0
        )
        grad_mu_z, grad_logvar_z = empty(mu.shape), empty(mu.shape)
        module.reparameterize_kl_backward(grad_mu_z, grad_logvar_z, grad_z, None, None, None, mu, logvar, None, seed, 1)
        grad_mu.add_(grad_mu_z)
        grad_logvar.add_(grad_logvar_z)

    return step


def old_cpp_step(module, inputs: dict):
    """cpp.py before its conversion to the new contract (outputs returned, with_grad flags)."""
    mu, logvar, l, x = inputs["mu"], inputs["logvar"], inputs["l"], inputs["x"]
    grad_z = inputs["grad_z"].view(1, *mu.shape)
    counter = iter(range(1, 1 << 62))

    def step():
        seed = next(counter)
        module.reparameterize_kl_forward(mu, logvar, None, seed, 1, False, False)
        _, _, _, grad_mu, grad_logvar = module.sgvb_loss_forward(
            l, x, None, mu, logvar, "bernoulli_logits", 1.0, 1.0, True
        )
        grad_mu_z, grad_logvar_z = module.reparameterize_kl_backward(
            grad_z, None, None, None, mu, logvar, None, seed, 1
        )
        grad_mu.add_(grad_mu_z)
        grad_logvar.add_(grad_logvar_z)

    return step


_noted: set[str] = set()  # backends timed through their old entries (said once)


def variants(inputs: dict, names: list[str]) -> dict:
    steps = {"eager": eager_step(inputs)}
    for name in names:
        module_name = {"torch-philox": "torch"}.get(name, name)
        try:
            module = importlib.import_module(f"fastaevb.backends.{module_name}")
        except Exception as error:  # not built / not installed / mid-rewrite
            print(f"# {name}: skipped ({type(error).__name__}: {error})")
            continue
        first = next(iter(inspect.signature(module.reparameterize_kl_forward).parameters))
        step = entries_step(module, inputs) if first == "z" else old_cpp_step(module, inputs)
        if first != "z" and name not in _noted:
            _noted.add(name)
            print(f"# {name}: its pre-conversion entries (outputs returned)")
        if name.startswith("torch"):
            step = _with_noise(module, step, compiled=name == "torch")
        steps[name] = step
    return steps


def _with_noise(module, step, compiled: bool):
    def run():
        saved = module.use_compiled_noise
        module.use_compiled_noise = compiled
        try:
            step()
        finally:
            module.use_compiled_noise = saved

    return run


def time_step(step, repeats: int, clock=time.perf_counter) -> float:
    start = clock()
    for _ in range(repeats):
        step()
    return (clock() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,8192", help="batch sizes B (D=784, J=20), comma-separated")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds (medians over them)")
    parser.add_argument("--backends", default="torch,torch-philox,numba,cpp", help="comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter; cpu: process_time (CPU seconds of this process: robust to other "
        "load on a shared machine, meaningful with --threads 1, where no thread waits or spins)",
    )
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    names = [n for n in args.backends.split(",") if n]
    rows = []
    for batch in (int(s) for s in args.sizes.split(",")):
        inputs = make_inputs(batch)
        steps = variants(inputs, names)
        # a few ms of work per variant and round (process_time ticks are coarser: more steps)
        repeats = max(1, int(2e5 // (batch * D // 8 + 1000))) * (1 if args.clock == "wall" else 4)
        for step in steps.values():  # warm-up (numba compiles or loads its cache here)
            for _ in range(2):
                step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                times[name].append(time_step(step, repeats, clock))
        eager, eager_min = statistics.median(times["eager"]), min(times["eager"])
        for name, ts in times.items():
            median = statistics.median(ts)
            rows.append((batch, name, median * 1e3, eager / median, min(ts) * 1e3, eager_min / min(ts), repeats))
    print(f"threads={args.threads} clock={args.clock} rounds={args.rounds} D={D} J={J} torch {torch.__version__}")
    print(
        f"{'B':>6} {'variant':<14} {'median ms':>10} {'speed vs eager':>15} {'min ms':>9} {'speed (min)':>12}"
        f" {'steps/round':>12}"
    )
    for batch, name, ms, speed, best, best_speed, repeats in rows:
        print(f"{batch:>6} {name:<14} {ms:>10.3f} {speed:>14.2f}x {best:>9.3f} {best_speed:>11.2f}x {repeats:>12}")


if __name__ == "__main__":
    main()
