"""Full drop-in parity of the BCE functions (issue 8): ``weight``, ``pos_weight`` and gradients with
respect to the target, on torch's own OpInfo samples and on broadcast shapes, through every kernel
backend; target gradients of the log-likelihoods.

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

from conftest import device_for
from fastaevb import functional as F
from fastaevb import reference

DROP_INS = {
    "nn.functional.binary_cross_entropy": (F.binary_cross_entropy, torch_F.binary_cross_entropy),
    "nn.functional.binary_cross_entropy_with_logits": (
        F.binary_cross_entropy_with_logits,
        torch_F.binary_cross_entropy_with_logits,
    ),
}
DTYPES = (torch.float32, torch.float64)

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
            for s in ops[name].sample_inputs("cpu", dtype, requires_grad=True)
        ]
torch.save(samples, sys.argv[1])
"""


def _draw_opinfo_samples() -> dict:
    """``{(op name, str(dtype)): [(input, target, kwargs), ...]}``: every sample, no filtering."""
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


def compare_with_torch(ours, theirs, inp, target, kwargs, device, tol):
    """Our drop-in on (inp, target, **kwargs) against torch's in float64: the value, then the
    gradients with respect to every argument torch differentiates (input and target) for one
    random cotangent rounded to our output dtype."""
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    a = inp.detach().to(device).requires_grad_()
    b = target.detach().to(device).requires_grad_()
    got = ours(a, b, **kwargs)
    a64, b64 = _float64(a).requires_grad_(), _float64(b).requires_grad_()
    want = theirs(a64, b64, **{k: _float64(v) for k, v in kwargs.items()})
    assert got.shape == want.shape and got.dtype == inp.dtype
    torch.testing.assert_close(got.double(), want, **tol)
    gen = torch.Generator().manual_seed(7)
    cotangent = torch.randn(want.shape, dtype=torch.float64, generator=gen).to(got.dtype)
    got_grads = torch.autograd.grad(got, [a, b], cotangent.to(device))
    want_grads = torch.autograd.grad(want, [a64, b64], cotangent.double())
    for what, g, w in zip(("input", "target"), got_grads, want_grads, strict=True):
        assert g.dtype == inp.dtype
        torch.testing.assert_close(g.double(), w, **tol, msg=lambda m, what=what: f"gradient of {what}: {m}")


@pytest.mark.parametrize("name, index, dtype", SAMPLES, ids=[f"{n.split('.')[-1]}-{i}-{d}" for n, i, d in SAMPLES])
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
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@given(
    case=broadcast_case(),
    reduction=st.sampled_from(["none", "sum", "mean"]),
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
    ours, theirs = DROP_INS[f"nn.functional.binary_cross_entropy{'_with_logits' if logits else ''}"]
    device = device_for(kernel_backend)
    if target_grad:
        compare_with_torch(ours, theirs, inp, target, kwargs, device, TOLERANCES[dtype])
    else:  # the kernels' paths without a target gradient (weights alone)
        a = inp.to(device).requires_grad_()
        got = ours(
            a, target.to(device), **{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        )
        a64 = inp.double().requires_grad_()
        want = theirs(a64, target.double(), **{k: _float64(v) for k, v in kwargs.items()})
        torch.testing.assert_close(got.double(), want, **TOLERANCES[dtype])
        cotangent = torch.rand(want.shape, generator=gen, dtype=torch.float64)
        (g,) = torch.autograd.grad(got, [a], cotangent.to(got))
        (w,) = torch.autograd.grad(want, [a64], cotangent)
        torch.testing.assert_close(g.double(), w, **TOLERANCES[dtype])


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
        F.binary_cross_entropy_with_logits,
        torch_F.binary_cross_entropy_with_logits,
        inp,
        target,
        kwargs,
        device_for(kernel_backend),
        TOLERANCES[torch.float32],
    )


@pytest.mark.parametrize("weight_dtype", [torch.float64, torch.int64, torch.bool, torch.float16], ids=str)
def test_weight_dtypes_as_torch(kernel_backend, weight_dtype):
    """torch takes any real weight and computes in the input's dtype; so do we."""
    gen = torch.Generator().manual_seed(6)
    inp, target = torch.rand(4, 5, generator=gen), torch.rand(4, 5, generator=gen)
    weight = (4 * torch.rand(5, generator=gen)).to(weight_dtype)
    kwargs = dict(weight=weight, reduction="sum")
    compare_with_torch(
        F.binary_cross_entropy, torch_F.binary_cross_entropy, inp, target, kwargs, device_for(kernel_backend),
        TOLERANCES[torch.float32],
    )  # fmt: skip


def test_target_gradient_edges(kernel_backend):
    """torch's target gradients at the ends: -logit(p) is +-inf at p = 0 / 1 (unclamped, as torch's),
    and large logits stay finite with pos_weight; NaN inputs give NaN gradients."""
    device = device_for(kernel_backend)
    p = torch.tensor([0.0, 1.0, 0.25, 1e-30, 1 - 2**-24], dtype=torch.float32)
    compare_with_torch(
        F.binary_cross_entropy, torch_F.binary_cross_entropy, p, torch.full_like(p, 0.5), dict(reduction="sum"),
        device, TOLERANCES[torch.float32],
    )  # fmt: skip
    logits = torch.tensor([-1e4, -30.0, 0.0, 30.0, 1e4], dtype=torch.float64)
    kwargs = dict(reduction="none", pos_weight=torch.tensor([3.0], dtype=torch.float64))
    compare_with_torch(
        F.binary_cross_entropy_with_logits, torch_F.binary_cross_entropy_with_logits, logits,
        torch.full_like(logits, 0.25), kwargs, device, TOLERANCES[torch.float64],
    )  # fmt: skip
    nan = torch.tensor([math.nan, 1.0], device=device, requires_grad=True)
    x = torch.tensor([0.5, 0.5], device=device, requires_grad=True)
    loss = F.binary_cross_entropy_with_logits(nan, x, pos_weight=torch.tensor([2.0], device=device), reduction="sum")
    loss.backward()
    assert loss.isnan() and nan.grad[0].isnan() and x.grad[0].isnan() and x.grad[1].isfinite()


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
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
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@given(
    shape=shapes,
    reduction=st.sampled_from(["none", "sum", "mean"]),
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
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_gradcheck_log_likelihood_targets(kernel_backend, case, reduction):
    assert gradcheck_case(case, reduction, device_for(kernel_backend), also=(TARGET_CASES[case],))


@pytest.mark.parametrize("likelihood", ["bernoulli", "bernoulli_probs", "gaussian"])
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
