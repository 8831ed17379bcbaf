"""Drop-in parity: our functions and ``SGVBLoss`` against torch's own and the classic VAE example.

The BCE functions in full (issue 8): at the edges of their domain in the input's dtype, on
torch's own OpInfo samples (``weight``, ``pos_weight``, gradients with respect to the target) and
on broadcast shapes, through every kernel backend; target gradients of the log-likelihoods.

Ground truth is torch's own function (or ``reference.py``) evaluated in float64 on the same
values. Tolerances are those of ``test_backends`` and for the same reasons: each element costs a
few ulps (float32: ~1e-7 relative) and a sum of at most a few thousand terms drifts by about
sqrt(n) ulps of the sum, below rtol 1e-5 (float64: 1e-10); the atol covers values and gradients
near 0 (a logit near 0.5, a weight near 0), whose relative error is unbounded.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile

import pytest
import torch
import torch.nn.functional as torch_F
from hypothesis import given
from hypothesis import strategies as st
from test_backends import (
    ROW_CASES,
    TOLERANCES,
    check_against_reference,
    gradcheck_case,
    non_contiguous,
    reduce_rows,
    shapes,
    shared_logvar_terms,
)

import fastaevb
from conftest import device_for
from fastaevb import functional as F
from fastaevb import reference
from fastaevb.aevb.classic import ClassicVAE
from fastaevb.aevb.classic import loss_function as classic_loss_function

REDUCTIONS = ("none", "sum", "mean")
DTYPES = (torch.float32, torch.float64)
LIKELIHOODS = ("bernoulli", "bernoulli_probs", "gaussian")
DROP_INS = {  # name: (ours, torch's)
    "binary_cross_entropy": (F.binary_cross_entropy, torch_F.binary_cross_entropy),
    "binary_cross_entropy_with_logits": (
        F.binary_cross_entropy_with_logits,
        torch_F.binary_cross_entropy_with_logits,
    ),
}

# --- torch's functions at the edges, in the input's dtype ---------------------------------------

# Ours and torch's on the same values in the same dtype: float64 to 1e-12.
IN_DTYPE_TOLERANCE = {torch.float32: TOLERANCES[torch.float32], torch.float64: dict(rtol=1e-12, atol=1e-12)}
EDGES = {  # name: (inputs at the edges, generator seed, random inputs)
    # probabilities including exactly 0 and 1
    "binary_cross_entropy": ([0.0, 1.0, 1e-30, 1 - 1e-7, 0.5, 1e-12], 0, torch.rand),
    # logits of +-1e4, +-30 and 0
    "binary_cross_entropy_with_logits": (
        [-1e4, -30.0, -1.0, 0.0, 1.0, 30.0, 1e4],
        1,
        lambda *shape, generator: 5 * torch.randn(*shape, generator=generator),
    ),
}


def edge_inputs(name, dtype):
    """The edge inputs of ``name``, each against targets 0, 0.5 and 1, plus 8 random rows."""
    values, seed, draw = EDGES[name]
    grid_v, grid_x = torch.meshgrid(torch.tensor(values), torch.tensor([0.0, 0.5, 1.0]), indexing="ij")
    gen = torch.Generator().manual_seed(seed)
    rand_v, rand_x = draw(8, grid_v.numel(), generator=gen), torch.rand(8, grid_v.numel(), generator=gen)
    return torch.cat([grid_v.reshape(1, -1), rand_v]).to(dtype), torch.cat([grid_x.reshape(1, -1), rand_x]).to(dtype)


@pytest.mark.parametrize("name", DROP_INS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_equals_torch(backend, name, reduction, dtype):
    ours, theirs = DROP_INS[name]
    inputs, target = (t.to(device_for(backend)) for t in edge_inputs(name, dtype))
    a, b = inputs.clone().requires_grad_(), inputs.clone().requires_grad_()
    got, want = ours(a, target, reduction=reduction), theirs(b, target, reduction=reduction)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, **IN_DTYPE_TOLERANCE[dtype])
    cotangent = torch.rand_like(want)
    got.backward(cotangent)
    want.backward(cotangent)
    torch.testing.assert_close(a.grad, b.grad, **IN_DTYPE_TOLERANCE[dtype])


@pytest.mark.parametrize("name", DROP_INS)
def test_legacy_size_average_and_reduce(name):
    ours, theirs = DROP_INS[name]
    inputs, target = edge_inputs(name, torch.float32)
    for legacy in ({"size_average": False}, {"reduce": False}, {"size_average": True, "reduce": True}):
        torch.testing.assert_close(ours(inputs, target, **legacy), theirs(inputs, target, **legacy))


# --- torch's OpInfo samples, against torch in float64 --------------------------------------------

# The OpInfo samples are drawn in a subprocess: importing torch.testing._internal changes
# process-wide state the rest of the suite relies on (it loads torch's own hypothesis profile,
# freezes torch.backends flags, sets TORCHINDUCTOR_CACHE_DIR). Values come from torch's global
# generator, seeded there, so every run sees the same samples.
_DRAW_SAMPLES = """
import sys, torch
from torch.testing._internal.common_methods_invocations import op_db
torch.manual_seed(0)
ops = {op.name: op for op in op_db}
samples = {}
for name in sys.argv[2:]:
    for dtype in (torch.float32, torch.float64):
        samples[name, str(dtype)] = [
            (s.input.detach(), s.args[0].detach(), dict(s.kwargs))
            for s in ops["nn.functional." + name].sample_inputs("cpu", dtype, requires_grad=True)
        ]
torch.save(samples, sys.argv[1])
"""


def _draw_opinfo_samples() -> dict:
    """``{(name, str(dtype)): [(input, target, kwargs), ...]}`` of torch's OpInfo
    ``nn.functional.<name>``: every sample, no filtering."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory(prefix="fastaevb-opinfo-") as tmp:
        path = os.path.join(tmp, "samples.pt")
        subprocess.run([sys.executable, "-c", _DRAW_SAMPLES, path, *DROP_INS], check=True, env=env)
        return torch.load(path)


OPINFO = _draw_opinfo_samples()
SAMPLES = [(name, i, dtype) for dtype in DTYPES for name in DROP_INS for i in range(len(OPINFO[name, str(dtype)]))]


def test_opinfo_samples_cover_the_new_arguments():
    """torch 2.13 has 11 + 26 samples per dtype; weights, pos_weights and differentiable targets
    are among them (the test below runs every one)."""
    assert len(SAMPLES) >= 2 * (11 + 26)
    every = [kw for samples in OPINFO.values() for _, _, kw in samples]
    assert any("weight" in kw for kw in every) and any("pos_weight" in kw for kw in every)


def _float64(t):
    return t.detach().double() if isinstance(t, torch.Tensor) and t.dtype.is_floating_point else t


def compare_with_torch(ours, theirs, inp, target, kwargs, device, tol, target_grad=True):
    """Our drop-in on (inp, target, **kwargs) against torch's in float64: the value, then the
    gradients with respect to every argument torch differentiates (input, and target unless
    ``target_grad`` is false) for one random cotangent rounded to our output dtype."""
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    a = inp.detach().to(device).requires_grad_()
    b = target.detach().to(device).requires_grad_(target_grad)
    got = ours(a, b, **kwargs)
    a64, b64 = _float64(a).requires_grad_(), _float64(b).requires_grad_(target_grad)
    want = theirs(a64, b64, **{k: _float64(v) for k, v in kwargs.items()})
    assert got.shape == want.shape and got.dtype == inp.dtype
    torch.testing.assert_close(got.double(), want, **tol)
    gen = torch.Generator().manual_seed(7)
    cotangent = torch.randn(want.shape, dtype=torch.float64, generator=gen).to(got.dtype)
    wrt = {"input": (a, a64), "target": (b, b64)} if target_grad else {"input": (a, a64)}
    got_grads = torch.autograd.grad(got, [leaf for leaf, _ in wrt.values()], cotangent.to(device))
    want_grads = torch.autograd.grad(want, [leaf64 for _, leaf64 in wrt.values()], cotangent.double())
    for what, g, w in zip(wrt, got_grads, want_grads, strict=True):
        assert g.dtype == inp.dtype
        torch.testing.assert_close(g.double(), w, **tol, msg=lambda m, what=what: f"gradient of {what}: {m}")


@pytest.mark.parametrize("name, index, dtype", SAMPLES, ids=[f"{n}-{i}-{d}" for n, i, d in SAMPLES])
def test_opinfo_samples_match_torch(kernel_backend, name, index, dtype):
    inp, target, kwargs = OPINFO[name, str(dtype)][index]
    ours, theirs = DROP_INS[name]
    compare_with_torch(ours, theirs, inp, target, kwargs, device_for(kernel_backend), TOLERANCES[dtype])


# --- broadcast shapes of weight and pos_weight -------------------------------------------------


@st.composite
def broadcast_case(draw):
    """An input shape and weight / pos_weight shapes that broadcast to it (as torch allows): a
    suffix of the input's dims, each kept or 1; sometimes absent; pos_weight usually per class."""
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=4)))

    def factor_shape():
        if draw(st.booleans()) and shape:  # one per class: (C,), the documented pos_weight
            return shape[-1:]
        n = draw(st.integers(0, len(shape)))
        suffix = shape[len(shape) - n :]
        return tuple(s if draw(st.booleans()) else 1 for s in suffix)

    weight = factor_shape() if draw(st.booleans()) else None
    pos_weight = factor_shape() if draw(st.booleans()) else None
    return shape, weight, pos_weight


@pytest.mark.parametrize("logits", [True, False], ids=["with_logits", "probs"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@given(
    case=broadcast_case(),
    reduction=st.sampled_from(REDUCTIONS),
    target_grad=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_broadcast_weights_match_torch(kernel_backend, logits, dtype, case, reduction, target_grad, seed):
    shape, weight_shape, pos_shape = case
    gen = torch.Generator().manual_seed(seed)
    inp = 3 * torch.randn(shape, generator=gen, dtype=dtype)
    if not logits:
        inp = torch.sigmoid(inp)
    target = torch.rand(shape, generator=gen, dtype=dtype)
    kwargs = dict(reduction=reduction)
    if weight_shape is not None:
        kwargs["weight"] = torch.randn(weight_shape, generator=gen, dtype=dtype)
    if logits and pos_shape is not None:
        kwargs["pos_weight"] = 2 * torch.rand(pos_shape, generator=gen, dtype=dtype)
    ours, theirs = DROP_INS[f"binary_cross_entropy{'_with_logits' if logits else ''}"]
    # without target_grad, the kernels' paths without a target gradient (weights alone)
    compare_with_torch(
        ours, theirs, inp, target, kwargs, device_for(kernel_backend), TOLERANCES[dtype], target_grad=target_grad
    )


@pytest.mark.parametrize(
    "shape, weight_shape",
    [
        ((2, 3, 4, 5), (3, 1, 1)),  # per channel over (N, C, H, W): expanded to the input first
        ((3, 5000), (3, 5000)),  # wide rows, full weight: the C++ driver's flat chunks
        ((3, 5000), ()),  # one weight: flat chunks too
        ((3, 5000), (5000,)),  # per column: rows kept
        ((1, 9000), (9000,)),  # one wide row, per column: flat chunks of that row
        ((6, 7), (6, 1)),  # per row
    ],
)
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_weight_layouts(kernel_backend, shape, weight_shape, reduction):
    """Weight layouts the backends read differently: expanded copies, chunked and per-row reads."""
    gen = torch.Generator().manual_seed(5)
    inp, target = torch.randn(shape, generator=gen), torch.rand(shape, generator=gen)
    kwargs = dict(
        reduction=reduction,
        weight=torch.rand(weight_shape, generator=gen),
        pos_weight=torch.rand(shape[-1:], generator=gen) + 0.5,
    )
    compare_with_torch(
        *DROP_INS["binary_cross_entropy_with_logits"], inp, target, kwargs, device_for(kernel_backend),
        TOLERANCES[torch.float32],
    )  # fmt: skip


@pytest.mark.parametrize("weight_dtype", [torch.float64, torch.int64, torch.bool, torch.float16], ids=str)
def test_weight_dtypes_as_torch(kernel_backend, weight_dtype):
    """torch takes any real weight and computes in the input's dtype; so do we."""
    gen = torch.Generator().manual_seed(6)
    inp, target = torch.rand(4, 5, generator=gen), torch.rand(4, 5, generator=gen)
    weight = (4 * torch.rand(5, generator=gen)).to(weight_dtype)
    kwargs = dict(weight=weight, reduction="sum")
    compare_with_torch(
        *DROP_INS["binary_cross_entropy"], inp, target, kwargs, device_for(kernel_backend), TOLERANCES[torch.float32]
    )


def test_target_gradient_edges(kernel_backend):
    """torch's target gradients at the ends: -logit(p) is +-inf at p = 0 / 1 (unclamped, as torch's),
    and large logits stay finite with pos_weight; NaN inputs give NaN gradients."""
    device = device_for(kernel_backend)
    p = torch.tensor([0.0, 1.0, 0.25, 1e-30, 1 - 2**-24], dtype=torch.float32)
    compare_with_torch(
        *DROP_INS["binary_cross_entropy"], p, torch.full_like(p, 0.5), dict(reduction="sum"), device,
        TOLERANCES[torch.float32],
    )  # fmt: skip
    logits = torch.tensor([-1e4, -30.0, 0.0, 30.0, 1e4], dtype=torch.float64)
    kwargs = dict(reduction="none", pos_weight=torch.tensor([3.0], dtype=torch.float64))
    compare_with_torch(
        *DROP_INS["binary_cross_entropy_with_logits"], logits, torch.full_like(logits, 0.25), kwargs, device,
        TOLERANCES[torch.float64],
    )  # fmt: skip
    nan = torch.tensor([math.nan, 1.0], device=device, requires_grad=True)
    x = torch.tensor([0.5, 0.5], device=device, requires_grad=True)
    loss = F.binary_cross_entropy_with_logits(nan, x, pos_weight=torch.tensor([2.0], device=device), reduction="sum")
    loss.backward()
    assert loss.isnan() and nan.grad[0].isnan() and x.grad[0].isnan() and x.grad[1].isfinite()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("logits", [True, False], ids=["with_logits", "probs"])
def test_gradcheck_weights_and_target(kernel_backend, reduction, logits):
    """float64 finite differences with respect to input and target, with broadcast weights."""
    device = device_for(kernel_backend)
    gen = torch.Generator().manual_seed(8)
    inp = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    inp = inp if logits else torch.sigmoid(inp).clamp(0.05, 0.95)
    target = torch.rand(3, 4, generator=gen, dtype=torch.float64).clamp(0.05, 0.95)
    kwargs = dict(reduction=reduction, weight=torch.rand(3, 1, generator=gen, dtype=torch.float64).to(device))
    if logits:
        kwargs["pos_weight"] = torch.rand(4, generator=gen, dtype=torch.float64).to(device) + 0.5
    fn = F.binary_cross_entropy_with_logits if logits else F.binary_cross_entropy
    args = [inp.to(device).requires_grad_(), target.to(device).requires_grad_()]
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, **kwargs), args)


# --- target gradients of the log-likelihoods -----------------------------------------------------

TARGET_CASES = {"bernoulli_logits": 1, "bernoulli_probs": 1, "gaussian": 0, "gaussian_shared_logvar": 0}


@pytest.mark.parametrize("case", TARGET_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@given(
    shape=shapes,
    reduction=st.sampled_from(REDUCTIONS),
    strided=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_log_likelihood_target_gradients(kernel_backend, case, dtype, shape, reduction, strided, seed):
    """d/dx of the decoder log-likelihoods against reference.py's autograd in float64, with
    leading sample dimensions (x is shared by the samples: its gradient sums over them)."""
    samples, batch, event = shape
    gen = torch.Generator().manual_seed(seed)
    inputs, differentiable, ours, reference_rows = ROW_CASES[case](
        gen, (*samples, batch), event, dtype, "float", device_for(kernel_backend)
    )
    if strided:
        inputs = [non_contiguous(t) for t in inputs]
    target = TARGET_CASES[case]
    expected = lambda *a: reduce_rows(reference_rows(*a), reduction)  # noqa: E731

    def summed_gradient_terms(ref_in, cotangent):  # of x over the samples, of a shared log-variance
        terms = target_gradient_terms(reference_rows, target, reduction, ref_in, cotangent) if samples else {}
        if case == "gaussian_shared_logvar":
            terms |= shared_logvar_terms(expected, ref_in, cotangent)
        return terms

    check_against_reference(
        lambda *a: ours(*a, reduction=reduction),
        expected,
        inputs,
        (*differentiable, target),
        TOLERANCES[dtype],
        grad_terms=summed_gradient_terms,
    )


def target_gradient_terms(reference_rows, target, reduction, ref_in, cotangent):
    """x is shared by the L samples, so its gradient is a sum of one gradient per sample: those
    terms, from the float64 reference with one x leaf per sample."""
    ref_in = [t.detach() for t in ref_in]
    full = ref_in[1 - target].shape  # the decoder output: (L, B, ...)
    leaves = [ref_in[target].clone().requires_grad_() for _ in range(full[0])]
    rows = []
    for sample, leaf in enumerate(leaves):
        args = [t[sample] if t.shape == full else t for t in ref_in]  # this sample's decoder rows
        args[target] = leaf
        rows.append(reference_rows(*args))
    return {target: torch.stack(torch.autograd.grad(reduce_rows(torch.stack(rows), reduction), leaves, cotangent))}


@pytest.mark.parametrize("case", TARGET_CASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_log_likelihood_targets(kernel_backend, case, reduction):
    assert gradcheck_case(case, reduction, device_for(kernel_backend), also=(TARGET_CASES[case],))


# --- SGVBLoss: the classic PyTorch VAE example, reductions, the Gaussian bound, a differentiable x ---


def classic_step(model, x, eps, *, ours: bool):
    mu, logvar = model.encode(x.view(-1, 784))
    if ours:
        z = F.reparameterize(mu, logvar, eps=eps)
        loss = fastaevb.SGVBLoss("bernoulli_probs")(model.decode(z), x, mu, logvar)
    else:
        z = mu + eps * torch.exp(0.5 * logvar)
        loss = classic_loss_function(model.decode(z), x, mu, logvar)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss, grads


def test_sgvb_loss_is_a_one_line_swap_for_the_classic_example(kernel_backend):
    """Same model, same eps: the loss agrees to float32 rounding of a 128*784-term sum; parameter
    gradients (sums over the batch through two matmuls) to 1e-4 relative."""
    torch.manual_seed(0)
    model = ClassicVAE()
    x = torch.rand(128, 1, 28, 28)
    eps = torch.randn(128, 20)
    ours_loss, ours_grads = classic_step(model, x, eps, ours=True)
    classic_loss, classic_grads = classic_step(model, x, eps, ours=False)
    torch.testing.assert_close(ours_loss, classic_loss, rtol=1e-5, atol=0)
    for ours_grad, classic_grad in zip(ours_grads, classic_grads, strict=True):
        torch.testing.assert_close(ours_grad, classic_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("samples", [1, 3])
def test_sgvb_loss_reductions_agree(backend, likelihood, samples):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(6, 2, 5, generator=gen)
    mu, logvar = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    recon = torch.randn((samples, 6, 10) if samples > 1 else (6, 10), generator=gen)
    if likelihood == "bernoulli_probs":
        recon = torch.sigmoid(recon)
    if likelihood == "gaussian":
        recon = (recon, torch.randn(recon.shape, generator=gen))
    per_datapoint = fastaevb.SGVBLoss(likelihood, reduction="none")(recon, x, mu, logvar)
    assert per_datapoint.shape == (6,)
    torch.testing.assert_close(fastaevb.SGVBLoss(likelihood, "sum")(recon, x, mu, logvar), per_datapoint.sum())
    torch.testing.assert_close(fastaevb.SGVBLoss(likelihood, "mean")(recon, x, mu, logvar), per_datapoint.mean())


def test_sgvb_loss_gaussian_matches_eq_10():
    """``KL - mean_l log p(x|z_l)`` from the reference formulas, with a shared decoder log-variance."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    mean = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64)
    mu, logvar = (
        torch.randn(5, 2, generator=gen, dtype=torch.float64),
        torch.randn(5, 2, generator=gen, dtype=torch.float64),
    )
    shared = torch.tensor(0.3, dtype=torch.float64)
    got = fastaevb.SGVBLoss("gaussian", "none")((mean, shared), x, mu, logvar)
    want = fastaevb.reference.negative_elbo(
        fastaevb.reference.gaussian_log_likelihood(x, mean, shared), fastaevb.reference.gaussian_kl(mu, logvar)
    )
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_sgvb_loss_differentiates_x(kernel_backend, likelihood):
    """The whole loss takes a differentiable x too (the per-datapoint path), as reference autograd."""
    gen = torch.Generator().manual_seed(10)
    device = device_for(kernel_backend)
    x = torch.rand(5, 6, generator=gen, dtype=torch.float64)
    recon = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64)
    recon = torch.sigmoid(recon) if likelihood == "bernoulli_probs" else recon
    mu, logvar = (torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    ours_x = x.to(device).requires_grad_()
    loss = F.sgvb_loss(recon.to(device), ours_x, mu.to(device), logvar.to(device), likelihood=likelihood)
    (got,) = torch.autograd.grad(loss, [ours_x])
    ref_x = x.clone().requires_grad_()
    log_px = {
        "bernoulli": reference.bernoulli_log_likelihood,
        "bernoulli_probs": reference.bernoulli_probs_log_likelihood,
        "gaussian": lambda r, xx: reference.gaussian_log_likelihood(xx, r, torch.zeros((), dtype=torch.float64)),
    }[likelihood](recon, ref_x)
    (want,) = torch.autograd.grad(reference.negative_elbo(log_px, reference.gaussian_kl(mu, logvar)).sum(), [ref_x])
    torch.testing.assert_close(got.double().cpu(), want, **TOLERANCES[torch.float64])
