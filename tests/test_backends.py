"""Every op on every backend: values and gradients equal to ``reference.py`` evaluated in float64.

Tolerances (on row sums and on elementwise gradients), chosen from the arithmetic, not tuned:
- float32: rtol 1e-5 / atol 1e-6. Each element costs a few ulps (~1e-7 relative); a row of
  D <= 2000 terms accumulated in float32 drifts by about sqrt(D) ulps of the row sum (< 1e-5
  relative), and the atol covers rows whose sum is near 0 (KL of a collapsed posterior).
- float64: rtol 1e-10 / atol 1e-12 (the same argument with 2^-52).
- float16 / bfloat16 inputs: the values (row sums, totals, KL and log-weight rows) are computed
  and returned in float32 from the same (exactly representable) half inputs the float64
  reference gets, so they carry float32's tolerance. Gradients and elementwise values keep the
  input dtype: a gradient written in forward is rounded once when stored and once more when
  backward scales it (or the float32 upstream gradient is rounded to half before the backward
  kernel), 2^-11 resp. 2^-8 relative each. bfloat16 gets one more 2^-8 because the Triton
  interpreter truncates float32 -> bfloat16 instead of rounding to nearest.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import assert_sum_of_terms, device_for
from fastaevb import functional as F
from fastaevb import reference

TOLERANCES = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float16: dict(rtol=2 * 2**-11, atol=1e-3),
    torch.bfloat16: dict(rtol=3 * 2**-8, atol=1e-2),
}
REDUCTIONS = ("none", "sum", "mean")


def reduce_rows(per_row: torch.Tensor, reduction: str) -> torch.Tensor:
    return {"none": lambda t: t, "sum": torch.sum, "mean": torch.mean}[reduction](per_row)


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in a strided view (every other element of a wider buffer)."""
    wide = torch.zeros((*t.shape[:-1], 2 * t.shape[-1]) if t.dim() else (2,), dtype=t.dtype, device=t.device)
    view = wide[..., ::2] if t.dim() else wide[0]
    view.copy_(t)
    return view


def make_target(kind: str, shape, gen, device, dtype) -> torch.Tensor:
    u = torch.rand(shape, generator=gen).to(device)
    if kind == "float":
        return u.to(dtype)
    return (u > 0.5).to(torch.uint8 if kind == "uint8" else torch.bool)


# --- the ops, as (inputs maker, our call, reference call, differentiable input positions) ------


def bernoulli_logits_case(gen, lead, event, dtype, target_kind, device):
    logits = (4 * torch.randn((*lead, *event), generator=gen)).to(device, dtype)
    x = make_target(target_kind, (lead[-1], *event), gen, device, dtype)
    return [logits, x], (0,), F.bernoulli_log_likelihood, reference.bernoulli_log_likelihood


def bernoulli_probs_case(gen, lead, event, dtype, target_kind, device):
    probs = torch.sigmoid(4 * torch.randn((*lead, *event), generator=gen)).to(device, dtype)
    x = make_target(target_kind, (lead[-1], *event), gen, device, dtype)
    return [probs, x], (0,), F.bernoulli_probs_log_likelihood, reference.bernoulli_probs_log_likelihood


def gaussian_case(gen, lead, event, dtype, target_kind, device, shared=False):
    x = torch.randn((lead[-1], *event), generator=gen).to(device, dtype)
    mean = torch.randn((*lead, *event), generator=gen).to(device, dtype)
    logvar = torch.randn((1,) if shared else (*lead, *event), generator=gen).to(device, dtype)
    return [x, mean, logvar], (1, 2), F.gaussian_log_likelihood, reference.gaussian_log_likelihood


def gaussian_shared_case(*args):
    return gaussian_case(*args, shared=True)


def shared_logvar_terms(reference_fn, ref_in, cotangent):
    """The shared log-variance's gradient sums one term per element (and cancels: each is
    -0.5 (1 - (x - m)^2 exp(-v)) times the cotangent): the float64 terms, for ``grad_terms``."""
    x, mean, logvar = ref_in
    wide = logvar.detach().expand(mean.shape).clone().requires_grad_()
    (per_element,) = torch.autograd.grad(reference_fn(x, mean, wide), wide, cotangent)
    return {2: per_element.reshape(-1, 1)}


def error_case(gen, lead, event, dtype, target_kind, device, power=2, shared=False):
    x = torch.randn((lead[-1], *event), generator=gen).to(device, dtype)
    mean = torch.randn((*lead, *event), generator=gen).to(device, dtype)
    log_scale = torch.randn((1,) if shared else (*lead, *event), generator=gen).to(device, dtype)
    ours = partial(F.error_log_likelihood, power=power)
    return [x, mean, log_scale], (1, 2), ours, partial(reference.error_log_likelihood, power=power)


def gaussian_kl_case(gen, lead, event, dtype, target_kind, device):
    mu = torch.randn((*lead, event[-1]), generator=gen).to(device, dtype)
    logvar = torch.randn((*lead, event[-1]), generator=gen).to(device, dtype)
    return [mu, logvar], (0, 1), partial(F.gaussian_kl, latent_dims=1), reference.gaussian_kl


ROW_CASES = {
    "bernoulli_logits": bernoulli_logits_case,
    "bernoulli_probs": bernoulli_probs_case,
    "gaussian": gaussian_case,
    "gaussian_shared_logvar": gaussian_shared_case,
    "gaussian_kl": gaussian_kl_case,
    "mse": partial(error_case, power=2),
    "mse_shared_scale": partial(error_case, power=2, shared=True),
    "l1": partial(error_case, power=1),
    "l1_shared_scale": partial(error_case, power=1, shared=True),
}
SHARED_SCALE_CASES = ("gaussian_shared_logvar", "mse_shared_scale", "l1_shared_scale")


def to_reference(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double() if t.dtype.is_floating_point else t


def check_against_reference(ours, expected_fn, inputs, differentiable, tol, grad_tol=None, grad_terms=None):
    """Compare values (within ``tol``), then vector-Jacobian products for one random cotangent
    (within ``grad_tol``, default ``tol``). ``grad_terms(reference_inputs, cotangent)``, where a
    gradient is a sum the kernel accumulates (over samples, over outputs), gives the float64 terms
    of those inputs' gradients, ``{position: terms stacked on dim 0}``: their gradients are checked
    against the bound of a sum (``assert_sum_of_terms``) instead."""
    ours_in = [
        t.detach().requires_grad_(i in differentiable) if t.dtype.is_floating_point else t for i, t in enumerate(inputs)
    ]
    ref_in = [
        to_reference(t).requires_grad_(i in differentiable) if t.dtype.is_floating_point else t
        for i, t in enumerate(inputs)
    ]
    out = ours(*ours_in)
    expected = expected_fn(*ref_in)
    torch.testing.assert_close(out.double(), expected, equal_nan=True, **tol)
    # the cotangent is rounded to our output dtype first, so both sides see the same one
    gen = torch.Generator().manual_seed(123)
    cotangent = torch.randn(expected.shape, dtype=torch.float64, generator=gen).to(out.dtype).double()
    wrt = [i for i in differentiable]
    grads = torch.autograd.grad(out, [ours_in[i] for i in wrt], cotangent.to(out), allow_unused=True)
    expected_grads = torch.autograd.grad(expected, [ref_in[i] for i in wrt], cotangent, allow_unused=True)
    terms = grad_terms(ref_in, cotangent) if grad_terms else {}
    for i, got, want in zip(wrt, grads, expected_grads, strict=True):
        assert got.dtype == ours_in[i].dtype, "gradients keep the input dtype"
        if i in terms:
            assert_sum_of_terms(got, terms[i], grad_tol or tol, f"the gradient of input {i}")
            continue
        torch.testing.assert_close(
            got.double(), want, **(grad_tol or tol), msg=lambda m, i=i: f"gradient of input {i}: {m}"
        )


shapes = st.tuples(
    st.sampled_from([(), (2,), (3,)]),  # leading sample dims
    st.sampled_from([0, 1, 2, 3, 7, 13]),  # batch (0, 1, primes)
    st.sampled_from([(1,), (5,), (3, 4), (31,), (784,)]),  # event shape
)


@pytest.mark.parametrize("case", ROW_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@given(
    shape=shapes,
    reduction=st.sampled_from(REDUCTIONS),
    target_kind=st.sampled_from(["float", "uint8", "bool"]),
    strided=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_float64_reference(kernel_backend, case, dtype, shape, reduction, target_kind, strided, seed):
    samples, batch, event = shape
    gen = torch.Generator().manual_seed(seed)
    inputs, differentiable, ours, reference_rows = ROW_CASES[case](
        gen, (*samples, batch), event, dtype, target_kind, device_for(kernel_backend)
    )
    if strided:
        inputs = [non_contiguous(t) if t.dtype.is_floating_point else t for t in inputs]
    expected = lambda *a: reduce_rows(reference_rows(*a), reduction)  # noqa: E731
    check_against_reference(
        lambda *a: ours(*a, reduction=reduction),
        expected,
        inputs,
        differentiable,
        TOLERANCES[dtype],
        grad_terms=partial(shared_logvar_terms, expected) if case in SHARED_SCALE_CASES else None,
    )


@pytest.mark.parametrize("case", ROW_CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_half_inputs_accumulate_in_float32(kernel_backend, case, dtype, reduction):
    gen = torch.Generator().manual_seed(0)
    inputs, differentiable, ours, reference_rows = ROW_CASES[case](
        gen, (6,), (257,), dtype, "float", device_for(kernel_backend)
    )
    if case == "bernoulli_probs":  # keep 1 - p representable: at p == 1 the gradient overflows half
        inputs[0] = inputs[0].clamp(0.01, 0.99)
    out = ours(*inputs, reduction=reduction)
    assert out.dtype == torch.float32, "sums of half inputs come back in float32"
    check_against_reference(
        lambda *a: ours(*a, reduction=reduction),
        lambda *a: reduce_rows(reference_rows(*a), reduction),
        inputs,
        differentiable,
        TOLERANCES[torch.float32],
        TOLERANCES[dtype],
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_reparameterize_kl(kernel_backend, dtype):
    """z keeps the half dtype (rounded once from float32); the KL and log-weight rows are float32."""
    gen = torch.Generator().manual_seed(3)
    device = device_for(kernel_backend)
    mu, logvar = (torch.randn(2, 7, 20, generator=gen).to(device, dtype) for _ in range(2))
    eps = torch.randn(3, 2, 7, 20, generator=gen).to(device, dtype)
    z, kl, log_q, log_p = F.reparameterize_kl(mu, logvar, samples=3, eps=eps, return_log_weights=True, latent_dims=1)
    assert z.dtype == dtype and kl.dtype == log_q.dtype == log_p.dtype == torch.float32
    m, v, e = (t.double() for t in (mu, logvar, eps))
    z64 = reference.reparameterize(m, v, e)
    torch.testing.assert_close(z.double(), z64, **TOLERANCES[dtype])
    torch.testing.assert_close(kl.double(), reference.gaussian_kl(m, v), **TOLERANCES[torch.float32])
    torch.testing.assert_close(log_q.double(), reference.log_q(v, e), **TOLERANCES[torch.float32])
    torch.testing.assert_close(log_p.double(), reference.log_p(z64), **TOLERANCES[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("probs", [False, True], ids=["with_logits", "probs"])
def test_half_drop_ins(backend, dtype, reduction, probs):
    """Every backend, the pure-torch one included: elementwise losses keep the half dtype (as
    torch's), sums come back in float32."""
    gen = torch.Generator().manual_seed(4)
    v = torch.randn(9, 31, generator=gen)
    v = torch.sigmoid(v).clamp(0.01, 0.99) if probs else v
    v = v.to(dtype)
    x = torch.rand(9, 31, generator=gen).to(dtype)
    drop_in = F.binary_cross_entropy if probs else F.binary_cross_entropy_with_logits
    nnf = torch.nn.functional
    torch_loss = nnf.binary_cross_entropy if probs else nnf.binary_cross_entropy_with_logits
    out = drop_in(v, x, reduction=reduction)
    assert out.dtype == (dtype if reduction == "none" else torch.float32)
    expected = torch_loss(v.double(), x.double(), reduction=reduction)
    torch.testing.assert_close(out.double(), expected, **TOLERANCES[dtype if reduction == "none" else torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("likelihood", ["bernoulli", "bernoulli_probs", "gaussian"])
def test_half_sgvb_loss(backend, dtype, likelihood):
    """The whole loss of half inputs is float32 on every backend; gradients keep the dtype."""
    gen = torch.Generator().manual_seed(5)
    recon = torch.randn(6, 40, generator=gen)
    recon = torch.sigmoid(recon).clamp(0.01, 0.99) if likelihood == "bernoulli_probs" else recon
    recon = recon.to(dtype).requires_grad_()
    x = torch.rand(6, 40, generator=gen).to(dtype)
    mu, logvar = (torch.randn(6, 5, generator=gen).to(dtype).requires_grad_() for _ in range(2))
    loss = F.sgvb_loss(recon, x, mu, logvar, likelihood=likelihood)
    assert loss.dtype == torch.float32
    loss.backward()
    assert recon.grad.dtype == mu.grad.dtype == logvar.grad.dtype == dtype
    r, xd, m, v = (t.detach().double() for t in (recon, x, mu, logvar))
    log_px = {
        "bernoulli": lambda: reference.bernoulli_log_likelihood(r, xd),
        "bernoulli_probs": lambda: reference.bernoulli_probs_log_likelihood(r, xd),
        "gaussian": lambda: reference.gaussian_log_likelihood(xd, r, torch.zeros((), dtype=torch.float64)),
    }[likelihood]()
    expected = (reference.gaussian_kl(m, v) - log_px).sum()
    torch.testing.assert_close(loss.double(), expected, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("case", ROW_CASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_large_batch(kernel_backend, case, reduction):
    """The paper's MNIST sizes with many rows (exercises the threaded row loop)."""
    if kernel_backend == "triton" and device_for("triton") == "cpu":
        pytest.skip("the interpreter is too slow for the large case; small shapes cover triton")
    gen = torch.Generator().manual_seed(1)
    inputs, differentiable, ours, reference_rows = ROW_CASES[case](gen, (1000,), (784,), torch.float32, "float", "cpu")
    check_against_reference(
        lambda *a: ours(*a, reduction=reduction),
        lambda *a: reduce_rows(reference_rows(*a), reduction),
        inputs,
        differentiable,
        TOLERANCES[torch.float32],
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@given(
    samples=st.sampled_from([1, 2, 5]),
    batch=st.sampled_from([0, 1, 3, 17]),
    latent=st.sampled_from([1, 2, 20, 33]),
    strided=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_reparameterize_kl_with_explicit_eps(kernel_backend, dtype, samples, batch, latent, strided, seed):
    gen = torch.Generator().manual_seed(seed)
    device = device_for(kernel_backend)
    mu, logvar = (torch.randn(batch, latent, generator=gen).to(device, dtype) for _ in range(2))
    eps = torch.randn((samples, batch, latent) if samples > 1 else (batch, latent), generator=gen).to(device, dtype)
    if strided:
        mu, logvar = non_contiguous(mu), non_contiguous(logvar)

    def ours(mu, logvar, eps):
        outputs = F.reparameterize_kl(mu, logvar, samples=samples, eps=eps, return_log_weights=True)
        return torch.cat([o.reshape(-1) for o in outputs])

    def expected(mu, logvar, eps):
        z = reference.reparameterize(mu, logvar, eps)
        outputs = (z, reference.gaussian_kl(mu, logvar), reference.log_q(logvar, eps), reference.log_p(z))
        return torch.cat([o.reshape(-1) for o in outputs])

    def terms(ref_in, cotangent):
        m, v, e = ref_in
        return dict(enumerate(reparameterize_kl_gradient_terms(m, v, e.reshape(samples, *m.shape), cotangent)))

    check_against_reference(ours, expected, [mu, logvar, eps], (0, 1), TOLERANCES[dtype], grad_terms=terms)


def reparameterize_kl_gradient_terms(mu, logvar, eps, cotangent):
    """The float64 reference's gradients of mu and logvar for ``cotangent`` of the concatenated
    ``(z, kl, log_q, log_p)``, as separate terms: the KL's, and per sample z's, log_q's and
    log_p's, stacked on dim 0. They sum to the gradient; the kernels add them (over the samples in
    float32 for float32 inputs), so ``assert_sum_of_terms`` bounds the error."""
    samples, rows = eps.shape[0], mu.shape[0]
    c_z, c_kl, c_q, c_p = cotangent.split([eps.numel(), rows, samples * rows, samples * rows])
    c_z, c_q, c_p = c_z.reshape(eps.shape), c_q.reshape(samples, rows), c_p.reshape(samples, rows)
    pieces = [lambda m, v: (reference.gaussian_kl(m, v) * c_kl).sum()]
    for s in range(samples):
        pieces += [
            lambda m, v, s=s: (reference.reparameterize(m, v, eps[s]) * c_z[s]).sum(),
            lambda m, v, s=s: (reference.log_q(v, eps[s]) * c_q[s]).sum(),
            lambda m, v, s=s: (reference.log_p(reference.reparameterize(m, v, eps[s])) * c_p[s]).sum(),
        ]
    eps = eps.detach()
    terms = []
    for piece in pieces:
        m, v = mu.detach().requires_grad_(), logvar.detach().requires_grad_()
        terms.append(torch.autograd.grad(piece(m, v), (m, v), allow_unused=True, materialize_grads=True))
    return torch.stack([t[0] for t in terms]), torch.stack([t[1] for t in terms])


def gradcheck_case(case: str, reduction: str, device: str, also: tuple[int, ...] = ()) -> bool:
    """float64 finite differences of a ROW_CASES op with respect to its differentiable inputs
    (and the positions ``also``, e.g. the data)."""
    gen = torch.Generator().manual_seed(2)
    inputs, differentiable, ours, _ = ROW_CASES[case](gen, (2, 3), (4,), torch.float64, "float", device)
    if case == "bernoulli_probs":  # finite differences need p away from the clamp at 0 and 1
        inputs[0] = inputs[0].clamp(0.05, 0.95)
    wrt = (*differentiable, *also)
    free = [t.requires_grad_(i in wrt) for i, t in enumerate(inputs)]

    def fn(*diff):
        args = list(free)
        for i, t in zip(wrt, diff, strict=True):
            args[i] = t
        return ours(*args, reduction=reduction)

    return torch.autograd.gradcheck(fn, [free[i] for i in wrt])


@pytest.mark.parametrize("case", ROW_CASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_float64(kernel_backend, case, reduction):
    assert gradcheck_case(case, reduction, device_for(kernel_backend))


def test_reduction_mean_of_empty_batch_is_nan(kernel_backend):
    logits = torch.zeros(0, 5, device=device_for(kernel_backend))
    assert math.isnan(F.bernoulli_log_likelihood(logits, torch.zeros(0, 5, device=logits.device), "mean").item())
    assert F.bernoulli_log_likelihood(logits, torch.zeros(0, 5, device=logits.device), "sum").item() == 0
