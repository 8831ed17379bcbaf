"""The loss of a step is one fused autograd node, on both call paths, with strict shapes."""

from __future__ import annotations

import contextlib
import warnings

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

    # the Triton interpreter takes ~0.1 s a call: there gradcheck's fast mode, which compares the
    # Jacobian on random projections (a few calls, not two per input); the values and gradients
    # of every Triton kernel are also compared with the float64 reference above
    assert torch.autograd.gradcheck(loss, free, fast_mode=kernel_backend == "triton")


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


KL_FORMS = {  # the keyword of each thresholded KL term and its float64 reference (batch-mean form)
    "capacity": ({}, lambda mu, logvar, t: reference.capacity_kl(mu, logvar, t)),
    "capacity_datapoint": (
        {"capacity_per_datapoint": True},
        lambda mu, logvar, t: reference.capacity_kl(mu, logvar, t, per_datapoint=True),
    ),
    "free_bits": ({}, lambda mu, logvar, t: reference.free_bits_kl(mu, logvar, t)),
}


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("threshold", [0.1, "tensor", 40.0])  # below, among (2.0) and above the KLs
@pytest.mark.parametrize("form", KL_FORMS)
def test_thresholded_kl_forms_match_the_reference(kernel_backend, form, threshold, reduction):
    """Capacity (both forms) and free bits: value and every gradient against the float64 reference,
    the threshold as a float or a 0-d tensor (a schedule's value); 'sum' is B times the batch mean
    (the capacity of the batch form then compared with the summed KL: C / B in the mean form)."""
    device = device_for(kernel_backend)
    recon, x, mu, logvar = (t.to(device).detach().requires_grad_(t.requires_grad) for t in inputs("mse", 2))
    keywords, kl_term = KL_FORMS[form]
    value = 2.0 if threshold == "tensor" else threshold
    given = torch.tensor(value, dtype=torch.float64) if threshold == "tensor" else value
    name = "free_bits" if form == "free_bits" else "capacity"
    loss = fastaevb.functional.sgvb_loss(
        recon, x, mu, logvar, likelihood="mse", reduction=reduction, kl_weight=3.0, **{name: given}, **keywords
    )
    batch = x.shape[0]
    per_mean = value / batch if (form == "capacity" and reduction == "sum") else value
    factor = batch if reduction == "sum" else 1
    log_px = reference.error_log_likelihood(x.reshape(batch, -1), recon, torch.zeros((), dtype=recon.dtype), 2)
    want = factor * (3.0 * kl_term(mu, logvar, per_mean) - log_px.reshape(-1, batch).mean(0).mean())
    torch.testing.assert_close(loss, want)
    got = torch.autograd.grad(loss, (recon, mu, logvar))
    torch.testing.assert_close(got, torch.autograd.grad(want, (recon, mu, logvar)))


@pytest.mark.parametrize("form", KL_FORMS)
def test_thresholded_kl_forms_gradcheck(kernel_backend, form):
    """The backward entry path too (gradcheck's upstream gradient is not 1); thresholds away from the
    KLs. Only mu and logvar are perturbed: the forms change only their gradients (the decoder's is
    test_gradcheck_float64's), and each perturbed element costs a call (slow in the Triton interpreter)."""
    device = device_for(kernel_backend)
    recon, x, mu, logvar = (t.to(device).detach().requires_grad_(t.requires_grad) for t in inputs("bernoulli", 2))
    keywords, _ = KL_FORMS[form]
    name = "free_bits" if form == "free_bits" else "capacity"

    def loss(mu, logvar):
        return fastaevb.functional.sgvb_loss(
            recon, x, mu, logvar, likelihood="bernoulli", reduction="mean", **{name: 0.3}, **keywords
        )

    assert torch.autograd.gradcheck(loss, (mu, logvar))


@pytest.mark.parametrize(
    "keywords, message",
    [
        ({"capacity": 1.0, "free_bits": 0.5}, "give one of them"),
        ({"capacity": -1.0}, "capacity"),
        ({"free_bits": float("nan")}, "free_bits"),
        ({"capacity": torch.ones(2)}, r"capacity must be a float or a 0-d tensor, got shape \(2,\)"),
        ({"capacity_per_datapoint": True}, "needs a capacity"),
        ({"capacity": 1.0, "reduction": "none"}, "couples the datapoints"),
        ({"free_bits": 1.0, "estimator": "generic"}, "analytic estimator"),
    ],
)
def test_thresholded_kl_forms_refuse_bad_input(keywords, message):
    recon, x, mu, logvar = inputs("bernoulli")
    with pytest.raises((ValueError, TypeError), match=message):
        fastaevb.functional.sgvb_loss(recon, x, mu, logvar, likelihood="bernoulli", **keywords)


@pytest.mark.parametrize("path", ["native", "python_autograd", "custom_op"])
@pytest.mark.parametrize("backend_name", [b for b in ("cpp", "numba") if b in fastaevb.available_backends()])
def test_probabilities_passed_as_logits_warn_once(backend_name, path):
    """The half-done swap: SGVBLoss("bernoulli") with the decoder's sigmoid still in place. The
    kernel counts the logits outside [0, 1] in its one pass; a large batch with none warns once
    per call site (Python's default filter), naming the user's line and 'bernoulli_probs'. Real
    logits, a small batch and the probabilities' own likelihood do not warn. CPU backends only."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 100, generator=gen).bernoulli()
    mu, logvar = torch.randn(64, 5, generator=gen), torch.randn(64, 5, generator=gen)
    logits = torch.randn(64, 100, generator=gen).requires_grad_()
    probs = torch.sigmoid(logits.detach()).requires_grad_()
    contexts = {"native": contextlib.nullcontext, "python_autograd": fastaevb.ops.use_python_autograd}
    with fastaevb.use_backend(backend_name), contexts.get(path, fastaevb.ops.use_custom_ops)():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            for _ in range(3):
                fastaevb.SGVBLoss("bernoulli")(probs, x, mu, logvar).backward()
        assert [w.category for w in caught] == [fastaevb.ProbabilitiesAsLogitsWarning]
        assert "bernoulli_probs" in str(caught[0].message) and caught[0].filename == __file__
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fastaevb.SGVBLoss("bernoulli")(logits, x, mu, logvar)
            fastaevb.SGVBLoss("bernoulli")(probs[:8], x[:8], mu[:8], logvar[:8])  # 800 values: too few to tell
            fastaevb.SGVBLoss("bernoulli_probs")(probs, x, mu, logvar)
