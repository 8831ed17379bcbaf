"""The importance-weighted bound (``functional.iwae_loss``) and its three encoder gradients.

Every backend's value and IWAE gradient against autograd of the float64 reference bound; STL and
DReG against their definitions written in plain torch (the papers' stop-gradients) in float64;
K = 1 against estimator A; a sample 1000 nats below the rest; gradcheck; and the claim of
Rainforth et al. (2018) that DReG answers: the signal-to-noise ratio of the encoder gradient
falls with K for IWAE and does not for DReG. Tolerances: ``test_backends.TOLERANCES`` (rows of at
most 12 terms, then a log-sum-exp of 4 values per datapoint: a few ulps more, inside rtol).
"""

from __future__ import annotations

import math

import pytest
import torch
from test_backends import TOLERANCES

import fastaevb
from conftest import device_for
from fastaevb import functional as F
from fastaevb import reference

LIKELIHOODS = ["bernoulli", "bernoulli_probs", "gaussian", "mse", "l1"]
POWERS = {"mse": 2, "l1": 1}
K, B, J = 4, 3, 2
EVENT = (3, 4)


def log_px(likelihood, recon, x, scale):
    """The float64 reference decoder rows ``(K, B)``."""
    if likelihood == "bernoulli":
        return reference.bernoulli_log_likelihood(recon, x)
    if likelihood == "bernoulli_probs":
        return reference.bernoulli_probs_log_likelihood(recon, x)
    if likelihood in POWERS:
        return reference.error_log_likelihood(x, recon, scale, POWERS[likelihood])
    return reference.gaussian_log_likelihood(x, recon, scale)


def log_q(z, mu, logvar):
    """``log q(z|x)`` of the samples z under N(mu, exp(logvar)), per sample and datapoint."""
    return (-0.5 * reference.LOG_2PI - 0.5 * logvar - 0.5 * (z - mu).square() * torch.exp(-logvar)).sum(-1)


def reference_loss(likelihood, recon, x, z, mu, logvar, scale, gradient="iwae"):
    """``-L_K`` per datapoint; for STL / DReG log q's parameters are detached (only z moves them)."""
    if gradient != "iwae":
        mu, logvar = mu.detach(), logvar.detach()
    return -reference.importance_weighted_bound(
        log_px(likelihood, recon, x, scale), reference.log_p(z), log_q(z, mu, logvar)
    )


def inputs(likelihood, dtype=torch.float64, seed=0, device="cpu", shape=(K, B, J, EVENT)):
    """``[recon, x, z, mu, logvar, scale]`` of ``shape`` = (samples, batch, latents, event)."""
    samples, batch, latent, event = shape
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, s=1.0):
        return (s * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype).to(device)

    x = torch.rand(batch, *event, generator=gen, dtype=torch.float64).to(dtype).to(device)
    recon = rand(samples, batch, *event)
    if likelihood == "bernoulli_probs":
        recon = torch.sigmoid(recon)
    mu, logvar = rand(batch, latent), rand(batch, latent, s=0.3)
    z = mu + torch.exp(0.5 * logvar) * rand(samples, batch, latent)
    # a learned log-scale: one shared value, or (l1) one per element of recon
    scale = (
        rand(*((samples, batch, *event) if likelihood == "l1" else (1,)), s=0.2)
        if likelihood in POWERS or likelihood == "gaussian"
        else None
    )
    tensors = [recon, x, z, mu, logvar, scale]
    return [t if t is None or t is x else t.requires_grad_() for t in tensors]


def call(likelihood, recon, x, z, mu, logvar, scale, **kwargs):
    name = "decoder_logvar" if likelihood == "gaussian" else "decoder_log_scale"
    return F.iwae_loss(
        recon, x, z, mu, logvar, likelihood=likelihood, **({name: scale} if scale is not None else {}), **kwargs
    )


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("gradient", ["iwae", "stl"])
def test_value_and_gradient_equal_the_reference(kernel_backend, likelihood, dtype, reduction, gradient):
    check_against_the_reference(
        likelihood, inputs(likelihood, dtype, device=device_for(kernel_backend)), reduction, gradient
    )


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_shapes_past_one_tile(kernel_backend, likelihood):
    """18 samples, 37 latents, rows of 260: past one tile of every loop of the Triton kernel (4 and
    16 samples, 32 latents, 256 columns) and of the CPU kernels' vector widths."""
    tensors = inputs(likelihood, device=device_for(kernel_backend), shape=(18, 3, 37, (260,)))
    check_against_the_reference(likelihood, tensors, "none", "iwae")


def check_against_the_reference(likelihood, tensors, reduction, gradient):
    leaves = [t for t in tensors if t is not None and t.requires_grad]
    loss = call(likelihood, *tensors, reduction=reduction, gradient=gradient)
    wide = [t if t is None else t.detach().cpu().double().requires_grad_(t.requires_grad) for t in tensors]
    want = reference_loss(likelihood, *wide, gradient=gradient)
    want = want.mean() if reduction == "mean" else want
    tol = TOLERANCES[tensors[0].dtype]
    torch.testing.assert_close(loss.detach().cpu().double(), want.detach(), **tol)
    batch = tensors[1].shape[0]
    upstream = (
        torch.linspace(0.5, 2.0, batch, dtype=torch.float64)
        if reduction == "none"
        else torch.tensor(1.0, dtype=torch.float64)
    )
    got = torch.autograd.grad(loss, leaves, upstream.to(loss), allow_unused=True)
    expected = torch.autograd.grad(
        want, [t for t in wide if t is not None and t.requires_grad], upstream, allow_unused=True
    )
    for g, e, name in zip(got, expected, ("recon", "z", "mu", "logvar", "scale"), strict=False):
        if e is None:  # STL: no direct term of log q's parameters
            assert g is None, name
            continue
        torch.testing.assert_close(g.cpu().double(), e, **tol, msg=lambda m, name=name: f"{name}: {m}")


def encoder_decoder(dtype=torch.float64):
    """A linear encoder (x -> mu, logvar) and decoder (z -> logits) of 6-dimensional data."""
    gen = torch.Generator().manual_seed(3)
    enc = (0.5 * torch.randn(6, 2 * J, generator=gen, dtype=dtype)).requires_grad_()
    dec = (0.5 * torch.randn(J, 6, generator=gen, dtype=dtype)).requires_grad_()
    x = (torch.rand(B, 6, generator=gen, dtype=dtype) > 0.5).to(dtype)
    eps = torch.randn(K, B, J, generator=gen, dtype=dtype)
    return enc, dec, x, eps


@pytest.mark.parametrize("gradient", ["stl", "dreg"])
def test_stl_and_dreg_equal_their_definitions(kernel_backend, gradient):
    """The papers' estimators written in plain torch: surrogates ``sum_k w~_k.detach() log w_k``
    for the decoder and ``sum_k (w~_k^p).detach() log w_k`` with ``log q`` of detached mu, logvar
    for the encoder (p = 1 STL, 2 DReG; Tucker et al. 2019, eq. 8); one backward of fastaevb's."""
    enc, dec, x, eps = encoder_decoder()
    mu, logvar = (x @ enc).chunk(2, dim=-1)
    z = mu + torch.exp(0.5 * logvar) * eps
    log_w = reference.bernoulli_log_likelihood(z @ dec, x) + reference.log_p(z) - log_q(z, mu.detach(), logvar.detach())
    weights = torch.softmax(log_w, 0).detach()
    power = 2 if gradient == "dreg" else 1
    (want_dec,) = torch.autograd.grad(-(weights * log_w).sum(0).mean(), dec, retain_graph=True)
    (want_enc,) = torch.autograd.grad(-(weights**power * log_w).sum(0).mean(), enc)

    mu, logvar = (x @ enc).chunk(2, dim=-1)
    z, gate = F.dreg_gate(F.reparameterize(mu, logvar, samples=K, eps=eps)) if gradient == "dreg" else (
        F.reparameterize(mu, logvar, samples=K, eps=eps), None)  # fmt: skip
    loss = F.iwae_loss(z @ dec, x, z, mu, logvar, likelihood="bernoulli", gradient=gradient, gate=gate)
    got_enc, got_dec = torch.autograd.grad(3.0 * loss, (enc, dec))  # a scaled loss: DReG's gate normalizes
    torch.testing.assert_close(got_enc, 3.0 * want_enc, **TOLERANCES[torch.float64])
    torch.testing.assert_close(got_dec, 3.0 * want_dec, **TOLERANCES[torch.float64])


def test_one_sample_is_estimator_a(kernel_backend):
    """K = 1: ``-(log p(x|z) + log p(z) - log q(z|x))``, estimator A's value and gradient."""
    enc, dec, x, eps = encoder_decoder()
    mu, logvar = (x @ enc).chunk(2, dim=-1)
    z, _, lq, lp = F.reparameterize_kl(mu, logvar, eps=eps[:1], return_log_weights=True)
    want = F.sgvb_loss(z @ dec, x, likelihood="bernoulli", estimator="generic", log_q=lq, log_p=lp, reduction="mean")
    want_grads = torch.autograd.grad(want, (enc, dec))
    mu, logvar = (x @ enc).chunk(2, dim=-1)
    z = F.reparameterize(mu, logvar, eps=eps[:1]).unsqueeze(0)
    loss = F.iwae_loss(z @ dec, x, z, mu, logvar, likelihood="bernoulli")
    torch.testing.assert_close(loss, want, **TOLERANCES[torch.float64])
    torch.testing.assert_close(torch.autograd.grad(loss, (enc, dec)), want_grads, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_sample_1000_nats_below_the_rest_gives_the_float64_answer(kernel_backend, dtype):
    recon, x, z, mu, logvar, _ = inputs("bernoulli", dtype, device=device_for(kernel_backend))
    with torch.no_grad():
        recon[0, 0] = 120.0 * (1 - 2 * (x[0] > 0.5).to(dtype))  # each of 12 elements about 120 nats off
    loss = call("bernoulli", recon, x, z, mu, logvar, None, reduction="none")
    wide = [t.detach().cpu().double().requires_grad_(t.requires_grad) for t in (recon, x, z, mu, logvar)]
    want = reference_loss("bernoulli", *wide, None)
    assert bool(torch.isfinite(loss).all())
    torch.testing.assert_close(loss.detach().cpu().double(), want.detach(), **TOLERANCES[dtype])
    got = torch.autograd.grad(loss.sum(), (recon, z, mu, logvar))
    for g, e in zip(got, torch.autograd.grad(want.sum(), [wide[0], *wide[2:]]), strict=True):
        assert bool(torch.isfinite(g).all())
        torch.testing.assert_close(g.cpu().double(), e, **TOLERANCES[dtype])


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_an_empty_batch(kernel_backend, reduction):
    """No datapoints: a sum of none is 0, a mean over none NaN (as torch's), no rows, empty gradients."""
    device = device_for(kernel_backend)
    like = dict(dtype=torch.float64, device=device)
    recon = torch.zeros(K, 0, 5, **like, requires_grad=True)
    mu, logvar = (torch.zeros(0, J, **like, requires_grad=True) for _ in range(2))
    z, x = torch.zeros(K, 0, J, **like), torch.zeros(0, 5, **like)
    loss = F.iwae_loss(recon, x, z, mu, logvar, likelihood="bernoulli", reduction=reduction)
    want = {"sum": 0.0, "mean": math.nan, "none": None}[reduction]
    if want is None:
        assert loss.shape == (0,)
    else:
        torch.testing.assert_close(loss, torch.tensor(want, dtype=torch.float64, device=device), equal_nan=True)
    grads = torch.autograd.grad(loss.sum(), (recon, mu, logvar))
    assert [tuple(g.shape) for g in grads] == [(K, 0, 5), (0, J), (0, J)]


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "l1"])
def test_gradcheck(kernel_backend, likelihood):
    tensors = inputs(likelihood, device=device_for(kernel_backend))
    leaves = [i for i, t in enumerate(tensors) if t is not None and t.requires_grad]

    def loss(*values):
        args = list(tensors)
        for i, v in zip(leaves, values, strict=True):
            args[i] = v
        return call(likelihood, *args, reduction="none")

    assert torch.autograd.gradcheck(loss, [tensors[i] for i in leaves])


def encoder_gradient_snr(samples: int, gradient: str, repeats: int = 2000) -> float:
    """Rainforth et al. (2018)'s signal-to-noise ratio ``|mean| / std`` over ``repeats`` noise draws of
    the encoder gradient (of q's mean), averaged over its 5 components, at fixed parameters of their
    Gaussian model: ``p(z) = N(0, I)``, ``p(x|z) = N(z, I)``, q = N(mu, 2/3 I) with mu 0.3 off the
    posterior mean x / 2. Each repeat is a datapoint with its own mu (one call; the gradient of
    the summed loss for row r is that repeat's)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, generator=gen, dtype=torch.float64)
    mu = (x / 2 + 0.3 * torch.randn(5, generator=gen, dtype=torch.float64)).expand(repeats, 5).clone().requires_grad_()
    logvar = torch.full((repeats, 5), math.log(2 / 3), dtype=torch.float64)
    eps = torch.randn(samples, repeats, 5, generator=gen, dtype=torch.float64)
    z = F.reparameterize(mu, logvar, samples=samples, eps=eps).reshape(samples, repeats, 5)
    z, gate = F.dreg_gate(z) if gradient == "dreg" else (z, None)
    loss = F.iwae_loss(
        z, x.expand(repeats, 5), z, mu, logvar, likelihood="gaussian", reduction="sum", gradient=gradient, gate=gate
    )
    (g,) = torch.autograd.grad(loss, mu)
    return float((g.mean(0).abs() / g.std(0)).mean())


def test_encoder_gradient_snr_falls_with_k_for_iwae_and_not_for_dreg():
    """Measured (docs/math.md): IWAE 0.278, 0.112, 0.015 and DReG 1.112, 1.303, 3.630 at K = 1, 5, 50."""
    iwae = [encoder_gradient_snr(k, "iwae") for k in (1, 5, 50)]
    dreg = [encoder_gradient_snr(k, "dreg") for k in (1, 5, 50)]
    assert iwae[0] > iwae[1] > iwae[2], iwae
    assert dreg[0] <= dreg[1] <= dreg[2], dreg
    assert dreg[2] > 10 * iwae[2], (iwae, dreg)


def test_the_module_samples_and_gates(kernel_backend):
    enc, dec, x, eps = encoder_decoder()
    loss_fn = fastaevb.IWAELoss("bernoulli", gradient="dreg")
    mu, logvar = (x @ enc).chunk(2, dim=-1)
    z, gate = loss_fn.sample(mu, logvar, samples=K, eps=eps)
    got = torch.autograd.grad(loss_fn(z @ dec, x, z, mu, logvar, gate=gate), (enc, dec))
    mu, logvar = (x @ enc).chunk(2, dim=-1)
    z, gate = F.dreg_gate(F.reparameterize(mu, logvar, samples=K, eps=eps))
    loss = F.iwae_loss(z @ dec, x, z, mu, logvar, likelihood="bernoulli", gradient="dreg", gate=gate)
    torch.testing.assert_close(got, torch.autograd.grad(loss, (enc, dec)))
    assert "gradient='dreg'" in repr(loss_fn)


def test_a_gate_without_its_loss_raises_in_backward():
    mu, logvar = torch.zeros(B, J, requires_grad=True), torch.zeros(B, J)
    z, _ = F.dreg_gate(F.reparameterize(mu, logvar, samples=K))
    with pytest.raises(RuntimeError, match="gate token got no gradient"):
        z.sum().backward()


def bad_calls():
    recon, x, z, mu, logvar, _ = inputs("bernoulli")
    gate = torch.zeros(K, B)
    return {
        "z without the sample dimension": (dict(z=z[0]), r"z of shape \(3, 2\) must be \(K, \*mu.shape\)"),
        "recon of another batch": (dict(recon=recon[:, :2]), r"recon of shape \(4, 2, 3, 4\) does not match x"),
        "recon of other samples than z": (
            dict(recon=recon[:3]),
            r"recon of shape \(3, 3, 3, 4\) must be \(K, \*x.shape\)",
        ),
        "x of another batch": (dict(x=x[:2]), r"x of shape \(2, 3, 4\) must have the batch of mu"),
        "dreg without its gate": (dict(gradient="dreg"), "gradient='dreg' needs the gate"),
        "a gate for iwae": (dict(gate=gate), "gate is DReG's"),
        "a gate of another shape": (dict(gradient="dreg", gate=gate[:2]), r"gate of shape \(2, 3\) must be \(K, B\)"),
        "a differentiable target": (dict(x=x.clone().requires_grad_()), "x must not require grad"),
        "an unknown gradient": (dict(gradient="rws"), "gradient must be one of"),
        "integer samples": (dict(z=z.detach().long()), "z must have a floating-point dtype"),
        "a learned scale for bernoulli": (dict(decoder_logvar=torch.zeros(1)), "not a parameter of"),
    }


@pytest.mark.parametrize("case", list(bad_calls()))
def test_bad_input_is_refused_naming_the_argument(case):
    recon, x, z, mu, logvar, _ = inputs("bernoulli")
    change, message = bad_calls()[case]
    args = dict(recon=recon, x=x, z=z, mu=mu, logvar=logvar, likelihood="bernoulli") | change
    with pytest.raises((ValueError, TypeError), match=message):
        F.iwae_loss(args.pop("recon"), args.pop("x"), args.pop("z"), args.pop("mu"), args.pop("logvar"), **args)
