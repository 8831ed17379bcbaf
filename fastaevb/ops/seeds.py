"""The Philox seed of a reparameterized sample (the noise contract, ``docs/math.md``): a 63-bit
integer drawn when the op runs, from torch's generator, so ``torch.manual_seed`` controls it."""

from __future__ import annotations

import torch
from torch import Tensor

# The C++ node draws ``torch.randint(0, SEED_BOUND, ())`` itself (``csrc/autograd_nodes.cpp``,
# ``kSeedBound``): the same value from the same generator, without a Python call.
SEED_BOUND = 2**63 - 1


def draw(generator: torch.Generator | None, like: Tensor) -> Tensor:
    """A seed from torch's CPU generator (or ``generator``) for CPU tensors; for CUDA tensors on
    their device from the CUDA generator (or a CUDA ``generator``), where it stays: no host sync,
    and a captured CUDA graph (or ``torch.compile(mode="reduce-overhead")``) replays the draw, so
    every replay gets fresh noise."""
    if generator is None:
        if like.is_cuda:
            return torch.randint(0, SEED_BOUND, (), dtype=torch.int64, device=like.device)
        return torch.randint(0, SEED_BOUND, (), dtype=torch.int64, device="cpu")
    seed = torch.randint(0, SEED_BOUND, (), dtype=torch.int64, device=generator.device, generator=generator)
    return seed if like.is_cuda else seed.cpu()
