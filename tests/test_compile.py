"""torch.compile(fullgraph=True) of a small VAE step: no graph breaks, eager's numbers, fresh noise."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._inductor.config

import fastaevb
from fastaevb import functional as F
from fastaevb.aevb.models import VAE, ModelConfig


def tiny_vae() -> VAE:
    """The paper's Bernoulli model (tanh MLPs, decoder logits) at 24-16-4: small enough to compile fast."""
    return VAE(ModelConfig("bernoulli", data_dim=24, hidden=16, latent=4))


def elbo_step(model, x):
    """Negative ELBO (eq. 10) with one sample: reparameterize, decode logits, SGVBLoss."""
    mu, logvar = model.encode(x)
    z = F.reparameterize(mu, logvar)
    return fastaevb.SGVBLoss("bernoulli")(model.decoder(z), x, mu, logvar)


def iwae_step(model, x):
    """Negative importance-weighted bound with 5 samples, through log q(z|x) and log p(z)."""
    mu, logvar = model.encode(x)
    z, _, log_q, log_p = F.reparameterize_kl(mu, logvar, samples=5, return_log_weights=True)
    log_px = F.bernoulli_log_likelihood(model.decoder(z), x)
    return -F.importance_weighted_bound(log_px, log_p, log_q).sum()


def dreg_step(model, x):
    """The fused IWAE loss with DReG's encoder gradient: the gate between the samples and the decoder."""
    mu, logvar = model.encode(x)
    z, gate = F.dreg_gate(F.reparameterize(mu, logvar, samples=5))
    return F.iwae_loss(model.decoder(z), x, z, mu, logvar, likelihood="bernoulli", gradient="dreg", gate=gate)


STEPS = {"elbo": elbo_step, "iwae": iwae_step, "dreg": dreg_step}


def run(step, model, x, seed):
    torch.manual_seed(seed)
    loss = step(model, x)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss.detach(), grads


COMPILE_CASES = [("aot_eager", name) for name in ("cpp", "numba", "triton")] + [("inductor", "default")]


@pytest.mark.slow
@pytest.mark.parametrize("objective", STEPS)
@pytest.mark.parametrize("compiler, backend", COMPILE_CASES)
def test_compiled_step(objective, compiler, backend):
    if backend != "default" and backend not in fastaevb.available_backends():
        pytest.skip(f"{backend} is not available")
    # inductor lowers torch.randint to its own generator; fall back to eager's so the seed matches
    with torch._inductor.config.patch(fallback_random=True):
        check_compiled_step(STEPS[objective], compiler, backend)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("objective", STEPS)
def test_inductor_compiles_the_triton_kernels_on_cuda(objective):
    """On a GPU, Inductor compiles the step with fastaevb's Triton kernels inside its graph (the ops
    are triton_ops there): eager's numbers, fresh noise, one graph."""
    from torch._inductor.utils import run_and_get_code

    with torch._inductor.config.patch(fallback_random=True):
        check_compiled_step(STEPS[objective], "inductor", "triton", device="cuda")
        torch._dynamo.reset()
        model, x = tiny_vae().cuda(), (torch.rand(8, 24, device="cuda") > 0.5).float()
        compiled = torch.compile(STEPS[objective], fullgraph=True)
        with fastaevb.use_backend("triton"):
            _, sources = run_and_get_code(run, compiled, model, x, 1)
    # Inductor's generated code defines and launches the kernels themselves (not an opaque op)
    code = "\n".join(sources)
    for kernel in ("reparameterize_kl_fwd_kernel", "bernoulli_log_likelihood_fwd_kernel"):
        assert kernel in code, kernel


def check_compiled_step(step, compiler, backend, device="cpu"):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, x = tiny_vae().to(device), (torch.rand(8, 24) > 0.5).float().to(device)
    compiled = torch.compile(step, fullgraph=True, backend=compiler)

    with fastaevb.use_backend(backend) if backend != "default" else torch.enable_grad():
        eager_loss, eager_grads = run(step, model, x, seed=1)
        compiled_loss, compiled_grads = run(compiled, model, x, seed=1)
        torch.testing.assert_close(compiled_loss, eager_loss)
        for got, want in zip(compiled_grads, eager_grads, strict=True):
            torch.testing.assert_close(got, want)
        # fresh noise on every call: the seed is drawn when the op runs, not baked in at trace time
        assert not torch.equal(compiled(model, x), compiled(model, x))

    explanation = torch._dynamo.explain(step)(model, x)
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1


@pytest.mark.parametrize(
    "likelihood, argument",
    [("bernoulli", "kl_weight"), ("l1", "kl_weight"), ("bernoulli", "capacity"), ("mse", "free_bits")],
)
def test_a_kl_weight_tensor_changing_every_step_compiles_once(likelihood, argument):
    """KL annealing (or a growing capacity, a free-bits schedule) under torch.compile(fullgraph=True):
    a 0-d tensor is an input of the op (one graph for every value), where a Python float is baked
    in (a recompile per value)."""
    compiles = []

    def count(gm, example_inputs):
        compiles.append(gm)
        return gm

    def loss(recon, x, mu, logvar, weight):
        return F.sgvb_loss(recon, x, mu, logvar, likelihood=likelihood, reduction="mean", **{argument: weight})

    gen = torch.Generator().manual_seed(0)
    recon, mu, logvar = (torch.randn(n, d, generator=gen).requires_grad_() for n, d in ((8, 20), (8, 3), (8, 3)))
    x = torch.rand(8, 20, generator=gen)
    torch._dynamo.reset()
    compiled = torch.compile(loss, backend=count, fullgraph=True)
    for weight in (0.1, 0.2, 0.3, 0.4):
        got = compiled(recon, x, mu, logvar, torch.tensor(weight))
        torch.testing.assert_close(got, loss(recon, x, mu, logvar, weight))
        grads = torch.autograd.grad(got, (recon, mu, logvar))
        torch.testing.assert_close(grads, torch.autograd.grad(loss(recon, x, mu, logvar, weight), (recon, mu, logvar)))
    assert len(compiles) == 1
    torch._dynamo.reset()
    floats = torch.compile(loss, backend=count, fullgraph=True)
    for weight in (0.1, 0.2, 0.3):
        floats(recon, x, mu, logvar, weight)
    assert len(compiles) == 1 + 3, "a float weight is a constant of the graph (why the docs say: pass a tensor)"
