"""The noise contract (docs/noise.md): one Philox stream, the same eps on every device."""

from __future__ import annotations

import contextlib

import pytest
import torch

import fastaevb
from conftest import KERNEL_BACKENDS, device_for
from fastaevb import functional as F
from fastaevb import ops
from fastaevb.ops import seeds

SEEDS = [0, 1, 42, 2**31 - 1, 2**31, 2**32 + 7, 2**62 + 12345, 2**63 - 1]
OFFSETS = torch.cat(
    [
        torch.arange(0, 300),
        torch.arange(2**31 - 3, 2**31 + 3),
        torch.arange(2**32 - 3, 2**32 + 3),  # offsets past 2^32 use the high counter word
        torch.arange(2**40, 2**40 + 5),
        torch.tensor([2**62, 2**63 - 1]),
    ]
)
# libm's logf / cosf / sqrtf round differently from numpy's by an ulp or two; |eps| <= 5.7.
NOISE_TOL = dict(rtol=1e-5, atol=1e-5)
# First draws of tl.randn(seed=1234, offsets 0..4), recorded from the Triton 3.9 interpreter: a
# frozen stream means experiments reproduce across releases and devices.
GOLDEN_SEED = 1234
GOLDEN_VALUES = [-0.44222745299339294, 0.11843180656433105, 1.157851219177246, -0.19024240970611572, 0.9828140735626221]


@pytest.fixture(scope="module")
def triton_randn():
    triton_kernels = pytest.importorskip("fastaevb.kernels") if "triton" in KERNEL_BACKENDS else None
    if triton_kernels is None:
        pytest.skip("triton is not installed")
    device = device_for("triton")
    return lambda seed, offsets: triton_kernels.randn(seed, offsets.to(device)).cpu()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", [b for b in KERNEL_BACKENDS if b != "triton"])
def test_cpu_eps_equals_triton_tl_randn(name, seed, triton_randn, kernels_of):
    got = kernels_of(name).randn(seed, OFFSETS)
    torch.testing.assert_close(got, triton_randn(seed, OFFSETS), **NOISE_TOL)


@pytest.mark.parametrize("name", KERNEL_BACKENDS)
def test_golden_stream(name, kernels_of):
    got = kernels_of(name).randn(GOLDEN_SEED, torch.arange(5).to(device_for(name))).cpu()
    torch.testing.assert_close(got, torch.tensor(GOLDEN_VALUES), **NOISE_TOL)


@pytest.mark.parametrize("samples", [1, 3])
def test_sample_uses_flat_index_of_l_b_j(kernel_backend, kernels_of, samples):
    """z = mu + exp(logvar/2) * randn(seed, l*B*J + b*J + j): with mu = 0, logvar = 0, z is eps."""
    device = device_for(kernel_backend)
    seed = torch.tensor(987654321987654321)
    zeros = torch.zeros(7, 5, device=device)
    z, *_ = ops.reparameterize_kl(zeros, zeros, None, seed, samples, False, False)
    eps = kernels_of(kernel_backend).randn(int(seed), torch.arange(samples * 35, device=device))
    torch.testing.assert_close(z.reshape(-1), eps.to(z.dtype), rtol=0, atol=0)


def test_same_seed_same_eps_and_manual_seed_controls_it(kernel_backend):
    mu = torch.zeros(4, 6, device=device_for(kernel_backend))
    torch.manual_seed(7)
    first = F.reparameterize(mu, mu)
    second = F.reparameterize(mu, mu)
    torch.manual_seed(7)
    again = F.reparameterize(mu, mu)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(F.reparameterize(mu, mu, generator=gen), F.reparameterize(mu, mu, generator=gen.manual_seed(7)))


@pytest.mark.parametrize("op", ["reparameterize_kl", "reparameterize"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("samples", [1, 4])
def test_seeded_backward_regenerates_eps(kernel_backend, dtype, samples, op):
    """gradcheck through the seeded ops (z with KL and log-weights; z alone, the cpp backend's C++
    autograd node): backward must rebuild exactly the eps forward used."""
    gen = torch.Generator().manual_seed(8)
    device = device_for(kernel_backend)
    mu, logvar = (torch.randn(3, 4, generator=gen, dtype=torch.float64).to(device).requires_grad_() for _ in range(2))
    seed = torch.tensor(2**40 + 3)

    def outputs(mu, logvar):
        if op == "reparameterize":
            return ops.reparameterize(mu, logvar, None, seed, samples)
        return ops.reparameterize_kl(mu, logvar, None, seed, samples, True, True)

    assert torch.autograd.gradcheck(outputs, (mu, logvar))


@pytest.mark.parametrize("name", [b for b in KERNEL_BACKENDS if b != "triton"])
def test_moments_of_a_million_draws(name, kernels_of):
    """Mean and variance of 10^6 draws within 5 standard errors of 0 and 1."""
    n = 10**6
    eps = kernels_of(name).randn(2024, torch.arange(n)).double()
    standard_error_mean, standard_error_var = (1 / n) ** 0.5, (2 / n) ** 0.5
    assert abs(eps.mean().item()) < 5 * standard_error_mean
    assert abs(eps.var().item() - 1) < 5 * standard_error_var


def test_explicit_eps_gives_torch_randn_parity(kernel_backend):
    """Code that draws torch.randn_like gets the same z from the explicit eps= path."""
    gen = torch.Generator().manual_seed(9)
    mu, logvar = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    eps = torch.randn_like(mu)
    torch.testing.assert_close(F.reparameterize(mu, logvar, eps=eps), mu + eps * torch.exp(0.5 * logvar))
    with fastaevb.use_backend("torch"):
        torch.testing.assert_close(F.reparameterize(mu, logvar, eps=eps), mu + eps * torch.exp(0.5 * logvar))


@pytest.mark.parametrize("path", ["eager", "python_autograd", "custom_op"])
def test_every_call_path_draws_the_seed_from_torchs_generator(kernel_backend, path):
    """The seed ``reparameterize`` draws (by the C++ node itself on the cpp backend) is
    ``ops.seeds.draw``'s: after the same ``torch.manual_seed`` every call path gives the same z."""
    device = device_for(kernel_backend)
    mu = torch.zeros(4, 6, device=device, requires_grad=True)
    logvar = torch.zeros(4, 6, device=device, requires_grad=True)
    torch.manual_seed(11)
    want = ops.reparameterize(mu, logvar, None, seeds.draw(None, mu), 1)
    contexts = {"eager": contextlib.nullcontext, "python_autograd": ops.use_python_autograd}
    with contexts.get(path, ops.use_custom_ops)():
        torch.manual_seed(11)
        got = F.reparameterize(mu, logvar)
    assert torch.equal(got, want)
