"""The CPU backends' entry points (``docs/backends.md``: outputs first, given, written in place)
against ``fastaevb.reference`` in float64: the ``torch`` backend (``fastaevb/backends/torch.py``)
and ``numba``, called directly with allocated outputs, no op layer in between.

Tolerances are bounds derived from each formula's arithmetic, with u = 2^-24 (float32) or 2^-53
(float64): an elementwise result carries at most C rounding errors of the magnitudes its formula
adds or subtracts (``mag``: e.g. ``|l|`` for ``softplus(l) - x l``, whose two terms cancel when the
prediction is confident), ``C u mag``; a sum of n such terms adds at most ``(n - 1) u sum |t|``
(any summation order), so a row of n elements is bounded by ``(C + n) u sum mag``, and a total
by ``(C + n + 2) u sum mag`` (each row rounded once more, the float64 combination and the scale
once). Equal infinities and NaNs match. Nothing here is loosened to pass: where a bound is
exceeded, the formula has an error its arithmetic does not explain.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from fastaevb import reference as ref

torch_backend = importlib.import_module("fastaevb.backends.torch")  # not `from fastaevb.backends import torch`

U = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}
DTYPES = (torch.float32, torch.float64)
LOG_2PI = math.log(2 * math.pi)
B, D, J = 4, 37, 5  # D: a vector body and a tail in the numba loops


def _numba():
    pytest.importorskip("numba")
    return importlib.import_module("fastaevb.backends.numba")


@pytest.fixture(params=["torch", "numba"])
def be(request):
    return torch_backend if request.param == "torch" else _numba()


@pytest.fixture(params=["torch", "torch-philox", "numba"])
def noise_be(request, monkeypatch):
    """The backends with Philox noise: torch with its noise from the numba kernel where numba is
    installed, torch with its own int64 Philox ('torch-philox'), numba."""
    if request.param == "numba":
        return _numba()
    monkeypatch.setattr(torch_backend, "use_compiled_noise", request.param == "torch")
    return torch_backend


# --- comparison ---------------------------------------------------------------------------------


def check(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor | float, what: str) -> None:
    """``|got - want| <= bound`` elementwise (float64), equal values (infinities) and NaN positions
    matching; a tiny absolute floor for results in the subnormal range."""
    got64 = got.detach().double()
    assert got64.shape == want.shape, f"{what}: shape {tuple(got64.shape)} != {tuple(want.shape)}"
    tiny = 4 * torch.finfo(got.dtype).tiny
    bound = torch.as_tensor(bound, dtype=torch.float64) + tiny
    err = (got64 - want).abs()
    ok = (got64 == want) | (got64.isnan() & want.isnan()) | (err <= bound)
    if not bool(ok.all()):
        excess = (err / bound)[~ok]
        raise AssertionError(
            f"{what}: {int((~ok).sum())} element(s) outside the bound, worst at {excess.max():.3g}x it"
        )


def reduce_ref(elements: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return elements
    return elements.sum(-1) if reduction == "rows" else elements.sum()


def reduce_bound(mag: torch.Tensor, reduction: str, dtype, c: float = 8.0) -> torch.Tensor:
    """The bound of :func:`check` for a value of elements with magnitudes ``mag`` (R, n)."""
    u, n = U[dtype], mag.shape[-1]
    if reduction == "none":
        return c * u * mag
    if reduction == "rows":
        return (c + n) * u * mag.sum(-1)
    return (c + n + 2) * u * mag.sum()


def out_for(reduction: str, rows: int, cols: int, dtype) -> torch.Tensor:
    shape = {"none": (rows, cols), "rows": (rows,), "sum": ()}[reduction]
    return torch.empty(shape, dtype=dtype)


def empty(dtype=torch.float32) -> torch.Tensor:
    return torch.empty(0, dtype=dtype)


def grad_out_for(reduction: str, rows: int, cols: int, dtype, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = {"none": (rows, cols), "rows": (rows,), "sum": ()}[reduction]
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def broadcast(go: torch.Tensor, reduction: str) -> torch.Tensor:
    """The upstream gradient as it multiplies each element of (R, n)."""
    return go.double() if reduction == "none" else go.double().reshape(-1, 1) if reduction == "rows" else go.double()


# --- inputs ---------------------------------------------------------------------------------------


def logits_for(rows: int, dtype, seed: int = 0) -> torch.Tensor:
    """Mostly N(0, 3^2), with confident (|l| of 20 to 1e3) and zero logits mixed in."""
    g = torch.Generator().manual_seed(seed)
    l = 3 * torch.randn(rows, D, generator=g, dtype=torch.float64)
    l[:, :6] = torch.tensor([0.0, 25.0, -25.0, 50.0, -50.0, 1e3])
    return l.to(dtype)


def targets_for(kind: str, dtype, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "uint8":
        return (torch.rand(B, D, generator=g) < 0.4).to(torch.uint8)
    x = torch.rand(B, D, generator=g, dtype=torch.float64)
    x[:, ::5] = 1.0
    x[:, 1::5] = 0.0
    return x.to(dtype)


def factors_for(extras: str, rows: int, dtype, seed: int = 2):
    """(weight, pos_weight) as the op layer hands them in: (R, D) broadcast views."""
    g = torch.Generator().manual_seed(seed)
    weight = pos_weight = None
    if extras in ("weight_col", "both"):
        weight = (0.5 + torch.rand(D, generator=g, dtype=torch.float64)).to(dtype).expand(rows, D)  # column stride 1
    if extras == "weight_row":
        weight = (0.5 + torch.rand(rows, 1, generator=g, dtype=torch.float64)).to(dtype).expand(rows, D)  # stride 0
    if extras in ("pos_weight", "both"):
        pos_weight = (0.2 + 3 * torch.rand(D, generator=g, dtype=torch.float64)).to(dtype).expand(rows, D)
    return weight, pos_weight


def rows_of(x: torch.Tensor, samples: int) -> torch.Tensor:
    """Data row r % B for each decoder row r, float64."""
    return x.double().repeat(samples, 1)


# --- Bernoulli from logits ----------------------------------------------------------------------


def logits_reference(l, x, weight, pos_weight):
    """(ll elements, their magnitudes for the bound, d ll/dl, its magnitude, d ll/dx, magnitude), float64."""
    l = l.detach().double().requires_grad_()
    x = x.detach().double().requires_grad_()
    w = None if weight is None else weight.double()
    q = None if pos_weight is None else pos_weight.double()
    if w is None and q is None:
        ll = ref.bernoulli_log_likelihood_elements(l, x)
    else:
        ll = -F.binary_cross_entropy_with_logits(l, x, weight=w, pos_weight=q, reduction="none")
    dl, dx = torch.autograd.grad(ll.sum(), [l, x])
    l, x, ll = l.detach(), x.detach(), ll.detach()
    sp_neg = F.softplus(-l)  # -logsigmoid(l)
    sig = torch.sigmoid(l)
    w_abs = 1.0 if w is None else w.abs()
    if q is None:
        mag = (ll.abs() + l.abs()) * w_abs
        dl_mag = (x.abs() + sig + dl.abs()) * w_abs
        dx_mag = l.abs() * w_abs
    else:
        qx = q * x
        mag = ((1 + (q - 1) * x).abs() * sp_neg + ((1 - x) * l).abs() + l.abs()) * w_abs
        dl_mag = (qx.abs() + (qx + 1 - x).abs() * sig + dl.abs()) * w_abs
        dx_mag = ((1 - q).abs() * sp_neg + l.abs() + dx.abs()) * w_abs
    return ll, mag, dl, dl_mag, dx, dx_mag


GRADS = [(), ("logits",), ("logits", "x"), ("x",)]
EXTRAS = ["none", "weight_col", "weight_row", "pos_weight", "both"]
LAYOUTS = [(1, "float"), (3, "uint8")]  # (samples, target kind); uint8 targets with extras: float (3 samples)


@pytest.mark.parametrize("samples, target", LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("extras", EXTRAS)
@pytest.mark.parametrize("grads", GRADS, ids=lambda g: "+".join(g) or "value")
@pytest.mark.parametrize("reduction", ["none", "rows", "sum"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bernoulli_logits_forward(be, dtype, reduction, grads, extras, samples, target):
    if target == "uint8" and extras != "none":
        target = "float"
    R = samples * B
    l, x = logits_for(R, dtype), targets_for(target, dtype)
    weight, pos_weight = factors_for(extras, R, dtype)
    scale = -0.75
    out = out_for(reduction, R, D, dtype)
    grad_l = torch.empty(R, D, dtype=dtype) if "logits" in grads else empty(dtype)
    grad_x = torch.empty(R, D, dtype=dtype) if "x" in grads else empty(dtype)
    assert be.bernoulli_log_likelihood_forward(out, grad_l, grad_x, l, x, weight, pos_weight, reduction, scale) is None
    ll, mag, dl, dl_mag, dx, dx_mag = logits_reference(l, rows_of(x, samples), weight, pos_weight)
    check(out, scale * reduce_ref(ll, reduction), abs(scale) * reduce_bound(mag, reduction, dtype), "value")
    u = U[dtype]
    if "logits" in grads:
        check(grad_l, scale * dl, abs(scale) * 8 * u * dl_mag, "grad_logits")
    else:
        assert grad_l.numel() == 0
    if "x" in grads:
        check(grad_x, scale * dx, abs(scale) * 8 * u * dx_mag, "grad_x")


@pytest.mark.parametrize("samples, target", LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("extras", EXTRAS)
@pytest.mark.parametrize("target_grad", [False, True])
@pytest.mark.parametrize("reduction", ["none", "rows", "sum"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bernoulli_logits_backward(be, dtype, reduction, target_grad, extras, samples, target):
    if target == "uint8" and extras != "none":
        target = "float"
    R = samples * B
    l, x = logits_for(R, dtype), targets_for(target, dtype)
    weight, pos_weight = factors_for(extras, R, dtype)
    scale, go = 1.5, grad_out_for(reduction, R, D, dtype)
    grad_l = torch.empty(R, D, dtype=dtype)
    grad_x = torch.empty(R, D, dtype=dtype) if target_grad else empty(dtype)
    be.bernoulli_log_likelihood_backward(grad_l, grad_x, go, l, x, weight, pos_weight, reduction, scale)
    _, _, dl, dl_mag, dx, dx_mag = logits_reference(l, rows_of(x, samples), weight, pos_weight)
    g = scale * broadcast(go, reduction)
    u = U[dtype]
    check(grad_l, g * dl, g.abs() * 8 * u * dl_mag + 2 * u * (g * dl).abs(), "grad_logits")
    if target_grad:
        check(grad_x, g * dx, g.abs() * 8 * u * dx_mag + 2 * u * (g * dx).abs(), "grad_x")


# --- Bernoulli from probabilities ----------------------------------------------------------------


def probs_for(rows: int, dtype, seed: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = (1e-3 + (1 - 2e-3) * torch.rand(rows, D, generator=g, dtype=torch.float64)).to(dtype)
    p[:, :4] = torch.tensor([0.0, 1.0, 0.5, 1e-30], dtype=dtype)  # the -100 clamps; logit +-inf
    return p


def probs_reference(p, x, weight):
    p = p.detach().double().requires_grad_()
    x = x.detach().double().requires_grad_()
    w = None if weight is None else weight.double()
    ll = -F.binary_cross_entropy(p, x, weight=w, reduction="none")
    # torch's gradients: (x - p) / max(p (1 - p), 1e-12) and the unclamped logit(p)
    dp, dx = torch.autograd.grad(ll.sum(), [p, x])
    w_abs = 1.0 if w is None else w.abs()
    p, x, ll = p.detach(), x.detach(), ll.detach()
    a, b = torch.log(p).clamp_min(-100), torch.log1p(-p).clamp_min(-100)
    mag = ((x * a).abs() + ((1 - x) * b).abs()) * w_abs
    return ll, mag, dp, dp.abs(), dx, (dx.abs() + w_abs)


@pytest.mark.parametrize("samples, target", LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("extras", ["none", "weight_col", "weight_row"])
@pytest.mark.parametrize("grads", GRADS, ids=lambda g: "+".join(g) or "value")
@pytest.mark.parametrize("reduction", ["none", "rows", "sum"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bernoulli_probs_forward(be, dtype, reduction, grads, extras, samples, target):
    R = samples * B
    p, x = probs_for(R, dtype), targets_for(target, dtype)
    weight, _ = factors_for(extras, R, dtype)
    scale = 0.5
    out = out_for(reduction, R, D, dtype)
    grad_p = torch.empty(R, D, dtype=dtype) if "logits" in grads else empty(dtype)
    grad_x = torch.empty(R, D, dtype=dtype) if "x" in grads else empty(dtype)
    be.bernoulli_probs_log_likelihood_forward(out, grad_p, grad_x, p, x, weight, reduction, scale)
    ll, mag, dp, dp_mag, dx, dx_mag = probs_reference(p, rows_of(x, samples), weight)
    check(out, scale * reduce_ref(ll, reduction), scale * reduce_bound(mag, reduction, dtype), "value")
    u = U[dtype]
    if "logits" in grads:
        check(grad_p, scale * dp, scale * 8 * u * dp_mag, "grad_probs")
    if "x" in grads:
        check(grad_x, scale * dx, scale * 8 * u * dx_mag, "grad_x")


@pytest.mark.parametrize("samples, target", LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("extras", ["none", "weight_row"])
@pytest.mark.parametrize("target_grad", [False, True])
@pytest.mark.parametrize("reduction", ["none", "rows", "sum"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bernoulli_probs_backward(be, dtype, reduction, target_grad, extras, samples, target):
    R = samples * B
    p, x = probs_for(R, dtype), targets_for(target, dtype)
    weight, _ = factors_for(extras, R, dtype)
    scale, go = -2.0, grad_out_for(reduction, R, D, dtype)
    grad_p = torch.empty(R, D, dtype=dtype)
    grad_x = torch.empty(R, D, dtype=dtype) if target_grad else empty(dtype)
    be.bernoulli_probs_log_likelihood_backward(grad_p, grad_x, go, p, x, weight, reduction, scale)
    _, _, dp, dp_mag, dx, dx_mag = probs_reference(p, rows_of(x, samples), weight)
    g = scale * broadcast(go, reduction)
    u = U[dtype]
    check(grad_p, g * dp, g.abs() * 8 * u * dp_mag, "grad_probs")
    if target_grad:
        check(grad_x, g * dx, g.abs() * 8 * u * dx_mag, "grad_x")


# --- range checks, NaN, empty ------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, dtype", [(2.0, torch.float32), (-0.5, torch.float64), (255, torch.uint8), (2, torch.uint8)]
)
def test_targets_out_of_range_raise(be, bad, dtype):
    l = logits_for(B, torch.float32)
    x = targets_for("uint8" if dtype == torch.uint8 else "float", torch.float32).to(dtype)
    x[1, 3] = bad
    with pytest.raises(ValueError, match="target"):
        be.bernoulli_log_likelihood_forward(
            torch.empty(()), empty(), empty(), l.to(torch.float32), x, None, None, "sum", 1.0
        )
    p = probs_for(B, torch.float32)
    with pytest.raises(ValueError, match="found 1 value"):
        be.bernoulli_probs_log_likelihood_forward(torch.empty(B), empty(), empty(), p, x, None, "rows", 1.0)


@pytest.mark.parametrize("bad", [1.5, -1e-7])
def test_probabilities_out_of_range_raise(be, bad):
    p = probs_for(B, torch.float32)
    p[2, 5] = bad
    x = targets_for("float", torch.float32)
    with pytest.raises(ValueError, match="input"):
        be.bernoulli_probs_log_likelihood_forward(torch.empty(()), empty(), empty(), p, x, None, "sum", 1.0)
    with pytest.raises(ValueError, match="input"):
        be.sgvb_loss_forward(
            torch.empty(()), empty(), empty(), empty(), empty(), p, x, None,
            torch.zeros(B, J), torch.zeros(B, J), "bernoulli_probs", 1.0, 1.0,
        )  # fmt: skip


@pytest.mark.parametrize("where", ["input", "target"])
@pytest.mark.parametrize("probs", [False, True])
def test_nan_propagates_to_its_row_and_is_not_flagged(be, probs, where):
    x = targets_for("float", torch.float32)
    d = probs_for(B, torch.float32) if probs else logits_for(B, torch.float32)
    (d if where == "input" else x)[1, 7] = float("nan")
    rows, grad, none = torch.empty(B), torch.empty(B, D), torch.empty(B, D)
    entry = be.bernoulli_probs_log_likelihood_forward if probs else be.bernoulli_log_likelihood_forward
    extra = () if probs else (None,)
    entry(rows, grad, empty(), d, x, None, *extra, "rows", 1.0)
    entry(none, empty(), empty(), d, x, None, *extra, "none", 1.0)
    assert rows.isnan().tolist() == [False, True, False, False]
    assert grad[1, 7].isnan() and not grad.isnan().sum() > 1
    assert none[1, 7].isnan() and int(none.isnan().sum()) == 1


def test_empty_rows(be):
    e = empty()
    out = torch.full((), 7.0)
    be.bernoulli_log_likelihood_forward(out, e, e, torch.empty(0, D), torch.empty(0, D), None, None, "sum", 1.0)
    assert out.item() == 0.0
    be.gaussian_kl_forward(out, e, e, torch.empty(0, J), torch.empty(0, J), "sum", 1.0)
    assert out.item() == 0.0
    rows = torch.empty(0)
    be.gaussian_log_likelihood_forward(rows, e, e, torch.empty(0, D), torch.empty(0, D), torch.empty(0, D), "rows", 1.0)
    z = torch.empty(2, 0, J)
    be.reparameterize_kl_forward(z, torch.empty(0), e, e, torch.empty(0, J), torch.empty(0, J), None, 1, 2)


# --- Gaussian decoder ------------------------------------------------------------------------------


def gaussian_inputs(samples: int, shared: bool, dtype, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    R = samples * B
    x = torch.randn(B, D, generator=g, dtype=torch.float64).to(dtype)
    mean = (x.double().repeat(samples, 1) + 0.5 * torch.randn(R, D, generator=g, dtype=torch.float64)).to(dtype)
    logvar = (torch.randn(1 if shared else R * D, generator=g, dtype=torch.float64) - 1.0).to(dtype)
    return x, mean, logvar if shared else logvar.view(R, D)


def gaussian_reference(x, mean, logvar, samples):
    """(ll elements, magnitudes, d/dm, magnitudes, d/dv (elements), magnitudes), float64."""
    x64 = rows_of(x, samples)
    m = mean.detach().double().requires_grad_()
    v = logvar.detach().double().requires_grad_()
    vv = v.reshape(()) if v.numel() == 1 and v.dim() == 1 else v
    ll = ref.gaussian_log_likelihood_elements(x64, m, vv)
    dm, dv = torch.autograd.grad(ll.sum(), [m, v])
    vv, ll = vv.detach(), ll.detach()
    sq = (x64 - m.detach()).square() * torch.exp(-vv)
    mag = 0.5 * (LOG_2PI + vv.abs() + sq)
    dv_elements = -0.5 * (1 - sq)
    return ll, mag, dm, dm.abs(), dv, dv_elements, 0.5 * (1 + sq)


def _gaussian_dv_bound(dv_mag, shared: bool, u, g=1.0):
    """Per element 10 u; shared: the sum over all elements, accumulated in float64."""
    if shared:
        return (10 * u * (g * dv_mag).abs().sum()).reshape(1)
    return 10 * u * (g * dv_mag).abs()


@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("grads", [False, True])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("reduction", ["rows", "sum"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gaussian_forward(be, dtype, reduction, shared, grads, samples):
    x, mean, logvar = gaussian_inputs(samples, shared, dtype)
    R = mean.shape[0]
    scale = 0.25
    out = out_for(reduction, R, D, dtype)
    grad_m = torch.empty(R, D, dtype=dtype) if grads else empty(dtype)
    grad_v = torch.empty(logvar.shape, dtype=dtype) if grads else empty(dtype)
    be.gaussian_log_likelihood_forward(out, grad_m, grad_v, x, mean, logvar, reduction, scale)
    ll, mag, dm, dm_mag, dv, _, dv_mag = gaussian_reference(x, mean, logvar, samples)
    u = U[dtype]
    check(out, scale * reduce_ref(ll, reduction), scale * reduce_bound(mag, reduction, dtype, c=10), "value")
    if grads:
        check(grad_m, scale * dm, scale * 8 * u * dm_mag, "grad_mean")
        check(
            grad_v,
            scale * dv,
            scale * _gaussian_dv_bound(dv_mag, shared, u) + 2 * u * (scale * dv).abs(),
            "grad_logvar",
        )


@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("reduction", ["rows", "sum"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gaussian_backward(be, dtype, reduction, shared, samples):
    x, mean, logvar = gaussian_inputs(samples, shared, dtype)
    R = mean.shape[0]
    scale, go = -1.25, grad_out_for(reduction, R, D, dtype)
    grad_m, grad_v = torch.empty(R, D, dtype=dtype), torch.empty(logvar.shape, dtype=dtype)
    be.gaussian_log_likelihood_backward(grad_m, grad_v, go, x, mean, logvar, reduction, scale)
    _, _, dm, dm_mag, _, dv_elements, dv_mag = gaussian_reference(x, mean, logvar, samples)
    g = scale * broadcast(go, reduction)
    u = U[dtype]
    check(grad_m, g * dm, g.abs() * 8 * u * dm_mag + 2 * u * (g * dm).abs(), "grad_mean")
    want_v = (g * dv_elements).sum().reshape(1) if shared else g * dv_elements
    check(grad_v, want_v, _gaussian_dv_bound(dv_mag, shared, u, g) + 2 * u * want_v.abs(), "grad_logvar")


# --- analytic KL --------------------------------------------------------------------------------


def latents(rows: int, dtype, seed: int = 6):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(rows, J, generator=g, dtype=torch.float64)
    logvar = torch.randn(rows, J, generator=g, dtype=torch.float64)
    logvar[0, :3] = torch.tensor([1e-6, -1e-4, 0.0])  # expm1 keeps the digits of small logvar
    return mu.to(dtype), logvar.to(dtype)


REF_U = 2.0**-53  # the float64 ground truth's own rounding


def kl_reference(mu, logvar):
    """(terms, magnitudes, dKL/dmu, dKL/dv, the reference's own error in dKL/dv): autograd adds the
    gradients of expm1(v) and -v, exp(v) - 1, which cancels for small v (one float64 rounding of
    exp(v), the digits the backends keep with expm1)."""
    m, v = mu.detach().double().requires_grad_(), logvar.detach().double().requires_grad_()
    terms = 0.5 * (m.square() + torch.expm1(v) - v)
    dm, dv = torch.autograd.grad(terms.sum(), [m, v])
    m, v = m.detach(), v.detach()
    dv_ref = REF_U * (torch.exp(v) + 1)
    return terms.detach(), 0.5 * (m.square() + torch.expm1(v).abs() + v.abs()), dm, dv, dv_ref


@pytest.mark.parametrize("grads", [False, True])
@pytest.mark.parametrize("reduction", ["rows", "sum"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gaussian_kl_forward(be, dtype, reduction, grads):
    mu, logvar = latents(6, dtype)
    scale = 0.3
    out = out_for(reduction, 6, J, dtype)
    grad_mu = torch.empty(6, J, dtype=dtype) if grads else empty(dtype)
    grad_v = torch.empty(6, J, dtype=dtype) if grads else empty(dtype)
    be.gaussian_kl_forward(out, grad_mu, grad_v, mu, logvar, reduction, scale)
    terms, mag, dm, dv, dv_ref = kl_reference(mu, logvar)
    # the reference's own KL (exp(v) - 1 - v) agrees with its terms to float64 rounding
    torch.testing.assert_close(terms.sum(-1), ref.gaussian_kl(mu.double(), logvar.double()), rtol=1e-12, atol=1e-12)
    u = U[dtype]
    check(out, scale * reduce_ref(terms, reduction), scale * reduce_bound(mag, reduction, dtype), "value")
    if grads:
        check(grad_mu, scale * dm, scale * 2 * u * dm.abs(), "grad_mu")
        check(grad_v, scale * dv, scale * (4 * u * dv.abs() + dv_ref), "grad_logvar")


@pytest.mark.parametrize("reduction", ["rows", "sum"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gaussian_kl_backward(be, dtype, reduction):
    mu, logvar = latents(6, dtype)
    scale, go = 2.0, grad_out_for(reduction, 6, J, dtype)
    grad_mu, grad_v = torch.empty(6, J, dtype=dtype), torch.empty(6, J, dtype=dtype)
    be.gaussian_kl_backward(grad_mu, grad_v, go, mu, logvar, reduction, scale)
    _, _, dm, dv, dv_ref = kl_reference(mu, logvar)
    g = scale * broadcast(go, reduction)
    u = U[dtype]
    check(grad_mu, g * dm, 3 * u * (g * dm).abs(), "grad_mu")
    check(grad_v, g * dv, 5 * u * (g * dv).abs() + g.abs() * dv_ref, "grad_logvar")


# --- reparameterize + KL -------------------------------------------------------------------------


def eps_of(be, seed: int, shape, dtype) -> torch.Tensor:
    """The noise the backend draws for ``seed``: tl.randn(seed, flat index), widened."""
    n = math.prod(shape)
    if be is torch_backend:
        return torch_backend._noise(seed, n, torch.empty(0, dtype=dtype)).view(shape).double()
    return be.randn(seed, torch.arange(n)).view(shape).double()


@pytest.mark.parametrize("log_weights", [False, True])
@pytest.mark.parametrize("with_kl", [False, True])
@pytest.mark.parametrize("given_eps", [False, True])
@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reparameterize_kl_forward(noise_be, dtype, samples, given_eps, with_kl, log_weights):
    be = noise_be
    mu, logvar = latents(B, dtype)
    seed = 2**40 + 12345
    shape = (samples, B, J)
    eps = torch.randn(shape, generator=torch.Generator().manual_seed(9), dtype=dtype) if given_eps else None
    z = torch.empty(shape, dtype=dtype)
    kl = torch.empty(B, dtype=dtype) if with_kl else empty(dtype)
    log_q = torch.empty(samples, B, dtype=dtype) if log_weights else empty(dtype)
    log_p = torch.empty(samples, B, dtype=dtype) if log_weights else empty(dtype)
    assert be.reparameterize_kl_forward(z, kl, log_q, log_p, mu, logvar, eps, seed, samples) is None
    e = eps.double() if given_eps else eps_of(be, seed, shape, dtype)
    m, v, u = mu.double(), logvar.double(), U[dtype]
    sd_e = (torch.exp(0.5 * v) * e).abs()
    want_z = ref.reparameterize(m, v, e)
    check(z, want_z, 6 * u * (m.abs() + sd_e), "z")
    if with_kl:
        terms, mag, _, _, _ = kl_reference(mu, logvar)
        check(kl, terms.sum(-1), reduce_bound(mag, "rows", dtype), "kl")
    else:
        assert kl.numel() == 0
    if log_weights:
        check(log_q, ref.log_q(v, e), reduce_bound(0.5 * (LOG_2PI + v.abs() + e.square()), "rows", dtype), "log_q")
        z_mag = 0.5 * (LOG_2PI + want_z.square() + 2 * want_z.abs() * (m.abs() + sd_e))
        check(log_p, ref.log_p(want_z), reduce_bound(z_mag, "rows", dtype, c=14), "log_p")


UPSTREAM = [("z",), ("kl",), ("z", "kl"), ("log_q", "log_p"), ("z", "kl", "log_q", "log_p"), ()]


@pytest.mark.parametrize("upstream", UPSTREAM, ids=lambda g: "+".join(g) or "nothing")
@pytest.mark.parametrize("given_eps", [False, True])
@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reparameterize_kl_backward(noise_be, dtype, samples, given_eps, upstream):
    be = noise_be
    mu, logvar = latents(B, dtype)
    seed = 77
    shape = (samples, B, J)
    gen = torch.Generator().manual_seed(10)
    eps = torch.randn(shape, generator=gen, dtype=dtype) if given_eps else None
    up = {
        "z": torch.randn(shape, generator=gen, dtype=dtype),
        "kl": torch.randn(B, generator=gen, dtype=dtype),
        "log_q": torch.randn(samples, B, generator=gen, dtype=dtype),
        "log_p": torch.randn(samples, B, generator=gen, dtype=dtype),
    }
    ups = [up[k] if k in upstream else None for k in ("z", "kl", "log_q", "log_p")]
    grad_mu, grad_v = torch.empty(B, J, dtype=dtype), torch.empty(B, J, dtype=dtype)
    assert be.reparameterize_kl_backward(grad_mu, grad_v, *ups, mu, logvar, eps, seed, samples) is None
    e = eps.double() if given_eps else eps_of(be, seed, shape, dtype)
    m, v = mu.detach().double().requires_grad_(), logvar.detach().double().requires_grad_()
    z = ref.reparameterize(m, v, e)
    # the KL as docs/math.md writes it (expm1): autograd of ref.gaussian_kl's exp(v) - 1 loses the
    # digits of small logvar that the backends keep
    kl = 0.5 * (m.square() + torch.expm1(v) - v).sum(-1)
    outputs = [z, kl, ref.log_q(v, e), ref.log_p(z)]
    pairs = [(o, g.double()) for o, g in zip(outputs, ups, strict=True) if g is not None]
    if pairs:
        want_mu, want_v = torch.autograd.grad([o for o, _ in pairs], [m, v], [g for _, g in pairs], allow_unused=True)
    else:
        want_mu = want_v = None
    want_mu = torch.zeros_like(m) if want_mu is None else want_mu
    want_v = torch.zeros_like(v) if want_v is None else want_v
    m, v, z = m.detach(), v.detach(), z.detach()
    sd = torch.exp(0.5 * v)
    gz = up["z"].double() if "z" in upstream else torch.zeros(shape, dtype=torch.float64)
    glp = up["log_p"].double().unsqueeze(-1) if "log_p" in upstream else torch.zeros(samples, B, 1, dtype=torch.float64)
    glq = up["log_q"].double() if "log_q" in upstream else torch.zeros(samples, B, dtype=torch.float64)
    gkl = up["kl"].double().unsqueeze(-1) if "kl" in upstream else torch.zeros(B, 1, dtype=torch.float64)
    g_mag = gz.abs() + glp.abs() * (z.abs() + m.abs() + (sd * e).abs())  # |g_l| and the error of z in it
    u, c = U[dtype], 16 + samples
    mu_mag = g_mag.sum(0) + (gkl * m).abs()
    v_mag = (
        0.5 * sd * (g_mag * e.abs()).sum(0) + 0.5 * glq.abs().sum(0).unsqueeze(-1) + 0.5 * (gkl * torch.expm1(v)).abs()
    )
    check(grad_mu, want_mu, c * u * mu_mag, "grad_mu")
    kl_ref_err = gkl.abs() * REF_U * (torch.exp(v) + 1)  # as in kl_reference
    check(grad_v, want_v, c * u * v_mag + kl_ref_err, "grad_logvar")


# --- the fused loss -----------------------------------------------------------------------------


@pytest.mark.parametrize("grads", [False, True])
@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("likelihood", ["bernoulli", "bernoulli_probs", "gaussian", "gaussian_shared"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sgvb_loss_forward(be, dtype, likelihood, samples, grads):
    R = samples * B
    mu, logvar = latents(B, dtype)
    decoder_logvar = None
    if likelihood.startswith("gaussian"):
        x, decoded, decoder_logvar = gaussian_inputs(samples, likelihood == "gaussian_shared", dtype)
        likelihood = "gaussian"
        ll, mag, dd, dd_mag, dv, _, dv_mag = gaussian_reference(x, decoded, decoder_logvar, samples)
        c = 10
    elif likelihood == "bernoulli":
        decoded, x = logits_for(R, dtype), targets_for("float", dtype)
        ll, mag, dd, dd_mag, _, _ = logits_reference(decoded, rows_of(x, samples), None, None)
        c = 8
    else:
        decoded, x = probs_for(R, dtype), targets_for("uint8", dtype)
        ll, mag, dd, dd_mag, _, _ = probs_reference(decoded, rows_of(x, samples), None)
        c = 8
    kl_scale, ll_scale = 0.5, 1.0 / samples
    out = torch.empty((), dtype=dtype)
    wanted = [grads, grads and decoder_logvar is not None, grads, grads]
    likes = [decoded, decoder_logvar, mu, logvar]
    slots = [torch.empty(t.shape, dtype=dtype) if w else empty(dtype) for w, t in zip(wanted, likes, strict=True)]
    be.sgvb_loss_forward(out, *slots, decoded, x, decoder_logvar, mu, logvar, likelihood, kl_scale, ll_scale)
    terms, kl_mag, dm, dvl, dvl_ref = kl_reference(mu, logvar)
    u = U[dtype]
    want = kl_scale * terms.sum() - ll_scale * ll.sum()
    bound = (
        kl_scale * reduce_bound(kl_mag, "sum", dtype)
        + ll_scale * reduce_bound(mag, "sum", dtype, c=c)
        + 2 * u * want.abs()
    )
    check(out, want, bound, "loss")
    if grads:
        check(slots[0], -ll_scale * dd, ll_scale * c * u * dd_mag, "grad_decoded")
        check(slots[2], kl_scale * dm, kl_scale * 2 * u * dm.abs(), "grad_mu")
        check(slots[3], kl_scale * dvl, kl_scale * (4 * u * dvl.abs() + dvl_ref), "grad_logvar")
        if decoder_logvar is not None:
            shared = decoder_logvar.dim() == 1
            check(
                slots[1],
                -ll_scale * dv,
                ll_scale * _gaussian_dv_bound(dv_mag, shared, u) + 2 * u * ll_scale * dv.abs(),
                "grad_decoder_logvar",
            )
    else:
        assert all(s.numel() == 0 for s in slots)


# --- noise ---------------------------------------------------------------------------------------

SEEDS = [0, 1, 1234, 2**31 - 1, 2**32 - 1, 2**32 + 7, 123456789012345, 2**63 - 1]
OFFSETS = [0, 1, 2, 1000, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**40 + 3, 2**62, 2**63 - 1]


def offsets_tensor() -> torch.Tensor:
    return torch.cat([torch.arange(0, 512), torch.arange(2**32 - 8, 2**32 + 8), torch.tensor(OFFSETS)])


@pytest.mark.parametrize("seed", SEEDS)
def test_torch_philox_words_are_numba_philox_words(seed):
    pytest.importorskip("numba")
    import numpy as np

    from fastaevb.backends.numba import philox

    off = offsets_tensor()
    w0, w1 = torch_backend._philox_words(
        torch_backend._round_keys(seed), off.bitwise_and(0xFFFFFFFF), (off >> 32) & 0xFFFFFFFF
    )
    for i, o in enumerate(off.tolist()):
        expected = philox.philox_words(np.uint64(seed), np.int64(o))
        assert (int(w0[i]), int(w1[i])) == (int(expected[0]), int(expected[1])), (seed, o)
    # the flat path (high counter word 0) and the general one agree
    n = 300
    flat = torch_backend._philox_flat(seed, n, torch.device("cpu"))
    assert torch.equal(flat, torch_backend.randn(seed, torch.arange(n)))


@pytest.mark.parametrize("seed", SEEDS)
def test_torch_randn_equals_compiled_randn(seed):
    """Same integer stream and uniforms; log / cos / sqrt of torch (SLEEF) and of libm may differ
    in the last bits: within 4 ulps of each factor, relative to the value."""
    off = offsets_tensor()
    got = torch_backend.randn(seed, off)
    assert got.dtype == torch.float32 and got.shape == off.shape
    others = []
    try:
        others.append(_numba().randn(seed, off))
    except pytest.skip.Exception:
        pass
    try:
        from fastaevb.backends import cpp

        others.append(cpp.randn(seed, off))
    except Exception:  # not built, or mid-conversion
        pass
    if not others:
        pytest.skip("no compiled randn to compare with")
    for other in others:
        check(got, other.double(), 12 * U[torch.float32] * other.double().abs(), "randn")


def test_torch_randn_keeps_the_shape_of_offsets():
    off = torch.arange(24).reshape(2, 3, 4)
    assert torch.equal(torch_backend.randn(7, off).reshape(-1), torch_backend.randn(7, torch.arange(24)))
    assert torch_backend.randn(7, torch.empty(0, 3, dtype=torch.int64)).shape == (0, 3)


# --- numba's vectorizable exp(-|l|) and log1p ------------------------------------------------------


@pytest.mark.parametrize("dtype, exp_ulps, log1p_ulps", [("float32", 1.0, 2.0), ("float64", 2.0, 3.0)])
def test_numba_vecmath_is_within_ulps(dtype, exp_ulps, log1p_ulps):
    """``vecmath.exp_neg_abs`` and ``log1p(e) = log_1_2(1 + e) + (e - (u - 1)) / u`` against numpy's
    extended precision (x86 long double; float64 where long double is float64) over the whole range,
    subnormal results and specials included."""
    _numba()
    import numpy as np
    from numba import njit

    from fastaevb.backends.numba.vecmath import exp_neg_abs, log_1_2

    @njit
    def run(l, e_out, lp_out):
        one = l.dtype.type(1.0)
        for i in range(l.shape[0]):
            e = exp_neg_abs(l[i])
            u = one + e
            e_out[i] = e
            lp_out[i] = log_1_2(u) + (e - (u - one)) / u

    dt = np.dtype(dtype).type
    top = 110.0 if dtype == "float32" else 760.0
    rng = np.random.default_rng(0)
    l = np.concatenate([np.linspace(-top, top, 200_001), 5 * rng.standard_normal(100_000)]).astype(dt)
    e, lp = np.empty_like(l), np.empty_like(l)
    run(l, e, lp)
    wide = np.longdouble if np.finfo(np.longdouble).nmant > 52 or dtype == "float32" else np.float64
    want_e = np.exp(-np.abs(l.astype(wide)))
    want_lp = np.log1p(want_e)
    spacing = np.maximum(np.spacing(np.abs(want_e.astype(dt))), np.spacing(dt(0)))
    assert (np.abs(e.astype(wide) - want_e) / spacing.astype(wide)).max() <= exp_ulps
    spacing = np.maximum(np.spacing(np.abs(want_lp.astype(dt))), np.spacing(dt(0)))
    assert (np.abs(lp.astype(wide) - want_lp) / spacing.astype(wide)).max() <= log1p_ulps
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan], dtype=dt)
    e, lp = np.empty_like(specials), np.empty_like(specials)
    run(specials, e, lp)
    assert e[:4].tolist() == [1.0, 1.0, 0.0, 0.0] and np.isnan(e[4]) and np.isnan(lp[4])
    assert lp[2] == 0.0 and lp[0] == np.log1p(dt(1.0))


def test_torch_randn_takes_a_tensor_seed():
    """A seed drawn on a device stays a tensor (the op layer passes CUDA seeds as they are): the same
    stream as the int."""
    off = torch.arange(100)
    for seed in (0, 1234, 2**32 + 7, 2**63 - 1):
        want = torch_backend.randn(seed, off)
        assert torch.equal(torch_backend.randn(torch.tensor(seed), off), want)
        assert torch.equal(torch_backend._philox_flat(torch.tensor(seed), 100, torch.device("cpu")), want)
