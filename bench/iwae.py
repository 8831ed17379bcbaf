"""The importance-weighted bound (IWAE, Burda et al. 2016) as a loss step: fastaevb's one call
against the clearest eager code a user writes (``logsumexp`` of the log weights) and
``torch.compile`` of it, at the IWAE paper's MNIST sizes: B = 100 datapoints of D = 784 pixels,
J = 50 latents, K = 5 and 50 samples (``(K, B, D)`` logits, 0.4 and 3.9 M elements).

``python bench/iwae.py`` prints the encoder gradient's signal-to-noise ratio against K for the
IWAE, STL and DReG gradients (Rainforth et al. 2018; ``tests/test_iwae.py`` holds the claim) and
the memory of each step (``reach.step_memory``).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as torch_F

from fastaevb import functional as FF

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

LOG_2PI = math.log(2 * math.pi)
BATCH, PIXELS, LATENTS = 100, 784, 50


def eager_iwae(logits, x, z, mu, logvar):
    """The IWAE loss as written in plain torch (pythae's IWAE, with the sample dimension first)."""
    log_px = -torch_F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
    log_qz = -0.5 * (logvar + (z - mu).pow(2) / logvar.exp() + LOG_2PI).sum(-1)
    log_w = log_px + log_pz - log_qz
    return -(torch.logsumexp(log_w, dim=0) - math.log(logits.shape[0])).mean()


def fastaevb_iwae(logits, x, z, mu, logvar):
    return FF.iwae_loss(logits, x, z, mu, logvar, likelihood="bernoulli")


@dataclass(frozen=True)
class Workload:
    samples: int

    @property
    def name(self) -> str:
        return f"IWAE K={self.samples} B={BATCH} D={PIXELS} J={LATENTS}"

    @property
    def elements(self) -> int:
        return self.samples * BATCH * PIXELS

    def inputs(self):
        """(logits, x, z, mu, logvar): the decoder's logits, binarized data, the K samples and q's
        parameters, all but x leaves that need gradients (as the loss sees them in a step)."""
        gen = torch.Generator().manual_seed(0)
        x = (torch.rand(BATCH, PIXELS, generator=gen) > 0.5).float()
        logits = (2 * torch.randn(self.samples, BATCH, PIXELS, generator=gen)).requires_grad_()
        mu = torch.randn(BATCH, LATENTS, generator=gen).requires_grad_()
        logvar = (0.1 * torch.randn(BATCH, LATENTS, generator=gen)).requires_grad_()
        eps = torch.randn(self.samples, BATCH, LATENTS, generator=gen)
        z = (mu.detach() + torch.exp(0.5 * logvar.detach()) * eps).requires_grad_()
        return logits, x, z, mu, logvar


WORKLOADS = [Workload(5), Workload(50)]


def main() -> None:
    from reach import step_memory
    from test_iwae import encoder_gradient_snr

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2000, help="noise draws per SNR estimate")
    args = parser.parse_args()
    print("encoder gradient SNR (|mean| / std over draws, mean over q's 5 mean components)")
    print("| gradient | K = 1 | K = 5 | K = 50 |")
    print("|---|---|---|---|")
    for gradient in ("iwae", "stl", "dreg"):
        values = [encoder_gradient_snr(k, gradient, args.repeats) for k in (1, 5, 50)]
        print(f"| {gradient} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    print()
    print("| workload | implementation | held MiB | peak MiB |")
    print("|---|---|---|---|")
    for w in WORKLOADS:
        steps = {"eager": eager_iwae, "compiled": torch.compile(eager_iwae, dynamic=False), "fastaevb": fastaevb_iwae}
        for name, step in steps.items():
            held, peak = step_memory(step, w.inputs())
            print(f"| {w.name} | {name} | {held / 2**20:.2f} | {peak / 2**20:.2f} |")


if __name__ == "__main__":
    main()
