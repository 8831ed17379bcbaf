"""The loss of a step is one fused autograd node, on both call paths, with strict shapes."""

from __future__ import annotations

import pytest
import torch

import fastaevb
from conftest import device_for
from fastaevb import reference

LIKELIHOODS = ["bernoulli", "bernoulli_probs", "gaussian", "mse", "l1"]
POWERS = {"mse": 2, "l1": 1}


def inputs(likelihood, samples=1, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(5, 1, 3, 4, generator=gen, dtype=dtype)
    shape = (samples, 5, 12) if samples > 1 else (5, 12)
    recon = torch.randn(shape, generator=gen, dtype=dtype)
    if likelihood == "bernoulli_probs":
        recon = torch.sigmoid(recon)
    recon.requires_grad_()
    mu = torch.randn(5, 3, generator=gen, dtype=dtype).requires_grad_()
    logvar = (0.3 * torch.randn(5, 3, generator=gen, dtype=dtype)).requires_grad_()
    return recon, x, mu, logvar


def expected_loss(likelihood, recon, x, mu, logvar):
    rows = x.reshape(5, -1)
    if likelihood == "bernoulli":
        log_px = reference.bernoulli_log_likelihood(recon, rows)
    elif likelihood == "bernoulli_probs":
        log_px = reference.bernoulli_probs_log_likelihood(recon, rows)
    elif likelihood in POWERS:
        log_px = reference.error_log_likelihood(rows, recon, torch.zeros((), dtype=recon.dtype), POWERS[likelihood])
    else:
        log_px = reference.gaussian_log_likelihood(rows, recon, torch.zeros((), dtype=recon.dtype))
    return reference.gaussian_kl(mu, logvar).sum() - log_px.reshape(-1, 5).mean(0).sum()


@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_one_node_values_and_gradients(kernel_backend, likelihood, samples):
    device = device_for(kernel_backend)
    recon, x, mu, logvar = (t.to(device).detach().requires_grad_(t.requires_grad) for t in inputs(likelihood, samples))
    loss = fastaevb.SGVBLoss(likelihood)(recon, x, mu, logvar)
    if not fastaevb.ops._custom_path():
        # one autograd node straight to the leaves: no view / add nodes around it
        # SGVBLossFunctionBackward (Python path) or CppNode<fastaevb::SGVBLoss> (C++ node)
        assert "SGVBLoss" in loss.grad_fn.name() or "sgvb_loss" in loss.grad_fn.name()
        assert {type(f).__name__ for f, _ in loss.grad_fn.next_functions if f is not None} == {"AccumulateGrad"}
    want = expected_loss(likelihood, recon, x, mu, logvar)
    torch.testing.assert_close(loss, want)
    got = torch.autograd.grad(loss, (recon, mu, logvar))
    torch.testing.assert_close(got, torch.autograd.grad(want, (recon, mu, logvar)))


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_upstream_gradient_other_than_one_scales(kernel_backend, likelihood):
    """The gradients written in forward are handed out as they are only for an upstream 1."""
    recon, x, mu, logvar = inputs(likelihood)
    loss_fn = fastaevb.SGVBLoss(likelihood)
    once = torch.autograd.grad(loss_fn(recon, x, mu, logvar), (recon, mu, logvar))
    scaled = torch.autograd.grad(2.5 * loss_fn(recon, x, mu, logvar), (recon, mu, logvar))
    for a, b in zip(once, scaled, strict=True):
        torch.testing.assert_close(2.5 * a, b)


@pytest.mark.parametrize(
    "likelihood, decoder_logvar",
    [
        ("bernoulli", None),
        ("bernoulli_probs", None),
        ("gaussian", "elementwise"),
        ("gaussian", "shared"),
        ("mse", "shared"),
        ("l1", "elementwise"),
        ("l1", None),
    ],
)
def test_gradcheck_float64(kernel_backend, likelihood, decoder_logvar):
    """gradcheck scales the upstream gradient (not 1), so the multiply of backward is checked too."""
    device = device_for(kernel_backend)
    recon, x, mu, logvar = (t.to(device).detach().requires_grad_(t.requires_grad) for t in inputs(likelihood, 2))
    if likelihood == "bernoulli_probs":  # finite differences need p away from the clamp at 0 and 1
        recon = recon.detach().clamp(0.05, 0.95).requires_grad_()
    free = [recon, mu, logvar]
    if decoder_logvar is not None:
        shape = (1,) if decoder_logvar == "shared" else recon.shape
        free.append((0.3 * torch.randn(shape, dtype=torch.float64)).to(device).requires_grad_())

    def loss(recon, mu, logvar, *decoder_logvar):
        name = "decoder_log_scale" if likelihood in POWERS else "decoder_logvar"
        scale = {name: decoder_logvar[0]} if decoder_logvar else {}
        return fastaevb.functional.sgvb_loss(recon, x, mu, logvar, likelihood=likelihood, **scale)

    assert torch.autograd.gradcheck(loss, free)


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_gradients_survive_retain_graph(kernel_backend, scale):
    """The gradients written in forward are handed out again for every retained backward (and the
    .grad they became is not the buffer handed out the next time); a scaled loss scales them
    afresh each time, in place only on the last, graph-freeing backward."""
    recon, x, mu, logvar = (t.to(device_for(kernel_backend)) for t in inputs("bernoulli"))
    loss = scale * fastaevb.SGVBLoss("bernoulli")(recon, x, mu, logvar)
    unscaled = torch.autograd.grad(fastaevb.SGVBLoss("bernoulli")(recon, x, mu, logvar), recon)[0]
    loss.backward(retain_graph=True)
    first = recon.grad.clone()
    torch.testing.assert_close(first, scale * unscaled)
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(recon.grad, 3 * first)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


@pytest.mark.parametrize(
    "recon_shape, x_shape",
    [
        ((12, 5), (5, 12)),  # transposed rows: torch's BCE raises too
        ((5, 12), (2, 12)),  # x of half the batch is not read as 2 samples
        ((10, 12), (5, 12)),  # samples must be a leading dimension
        ((5, 3, 4), (5, 1, 3, 4)),  # neither x's shape nor its rows
    ],
)
def test_shapes_that_do_not_match_raise_with_both_shapes(recon_shape, x_shape):
    recon, x = torch.rand(recon_shape), torch.rand(x_shape)
    mu = logvar = torch.zeros(x_shape[0], 2)
    with pytest.raises(ValueError, match=rf"recon of shape \({recon_shape[0]}, .*x of shape \({x_shape[0]}, "):
        fastaevb.SGVBLoss("bernoulli")(recon, x, mu, logvar)


def test_likelihood_has_no_default():
    with pytest.raises(TypeError, match="likelihood"):
        fastaevb.SGVBLoss()  # type: ignore[call-arg]


@pytest.mark.parametrize("backend_name", [b for b in ("cpp", "numba") if b in fastaevb.available_backends()])
def test_out_of_range_messages_name_the_likely_cause(backend_name):
    mu = logvar = torch.zeros(4, 2)
    pixels = torch.randint(0, 256, (4, 6), dtype=torch.uint8)
    with fastaevb.use_backend(backend_name):
        with pytest.raises(ValueError, match=r"target \(x\).*x / 255"):
            fastaevb.SGVBLoss("bernoulli")(torch.randn(4, 6), pixels, mu, logvar)
        with pytest.raises(ValueError, match=r"input \(probs\).*SGVBLoss\('bernoulli'\)"):
            fastaevb.SGVBLoss("bernoulli_probs")(3 * torch.randn(4, 6), torch.rand(4, 6), mu, logvar)
