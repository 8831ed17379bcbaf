"""The Triton backend's entry points called directly (docs/backends.md, outputs first and given),
against ``fastaevb/reference.py`` evaluated in float64 with torch autograd for the gradients.

No op layer in between: each test allocates the outputs as the contract gives them (an unwanted
one an empty ``(0,)`` tensor), calls ``fastaevb.kernels.<entry>`` and compares what was written.
Runs on CPU tensors under ``TRITON_INTERPRET=1`` (tests/conftest.py sets it without a GPU).

Tolerances are derived from the compute dtype's rounding: each elementwise term carries a few ulps
(float32: 2**-24 ~ 6e-8; float64: 1e-16), a row sum of D <= 1000 terms at most D of them, so
``|got - want| <= rtol * magnitude`` with rtol 1e-5 (float32) / 1e-12 (float64), the magnitude
being the sum of the terms' absolute values (a bound cancellation cannot shrink).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

import fastaevb.kernels as kernels
from fastaevb import reference as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float32, torch.float64)
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}
R, B, D, J, L = 6, 3, 37, 5, 2  # decoder row r reads data row r % B; R = L * B for the fused loss


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _input(gen, *shape, dtype, low=None, high=None) -> torch.Tensor:
    t = (
        torch.rand(*shape, generator=gen, dtype=torch.float64)
        if low is not None
        else torch.randn(*shape, generator=gen, dtype=torch.float64)
    )
    if low is not None:
        t = low + (high - low) * t
    return t.to(dtype).to(DEVICE)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64 (exactly: the reference sees the kernel's rounded inputs), requiring grad."""
    return t.detach().double().cpu().requires_grad_()


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0)


def _value_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _value_out(like: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return torch.empty_like(like)
    shape = (like.shape[0],) if reduction == "rows" else ()
    return torch.empty(shape, dtype=_value_dtype(like.dtype), device=like.device)


def _reduced(elements: torch.Tensor, reduction: str) -> torch.Tensor:
    return elements if reduction == "none" else elements.sum(-1) if reduction == "rows" else elements.sum()


def _check(got: torch.Tensor, want: torch.Tensor, magnitude: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """``|got - want| <= rtol(dtype) * magnitude`` elementwise (equal values, infinities included, match)."""
    got64, want = got.detach().double().cpu(), want.detach().double()
    assert got64.shape == want.shape, (what, got64.shape, want.shape)
    bound = RTOL[dtype] * (magnitude.detach().double().abs() + 1e-30)
    error = (got64 - want).abs()
    ok = (got64 == want) | (error <= bound)
    assert bool(ok.all()), (
        f"{what}: max error {error.max().item():.3g}, bound {bound[~ok].min().item():.3g} at the worst"
    )


def _magnitude(elements: torch.Tensor, reduction: str) -> torch.Tensor:
    return _reduced(elements.abs(), reduction)


def _upstream(like: torch.Tensor, reduction: str, gen) -> torch.Tensor:
    """A random upstream gradient of the value (input dtype for 'none', the value dtype else)."""
    shape = like.shape if reduction == "none" else like.shape[:1] if reduction == "rows" else ()
    dtype = like.dtype if reduction == "none" else _value_dtype(like.dtype)
    return (0.5 + torch.rand(shape, generator=gen, dtype=torch.float64)).to(dtype).to(DEVICE)


def _grad_magnitude(want: torch.Tensor, upstream: torch.Tensor | None = None, reduction: str = "sum") -> torch.Tensor:
    """Bound of an elementwise gradient: its own magnitude plus the upstream gradient's (for
    gradients that are differences of O(1) values, e.g. ``x - sigmoid(l)``, which cancel)."""
    if upstream is None:
        return want.detach().abs() + 1.0
    up = upstream.double().cpu().abs()
    return want.detach().abs() + (up if reduction == "none" else up[:, None] if reduction == "rows" else up)


# --- gaussian_kl ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["rows", "sum"])
@pytest.mark.parametrize("with_grad", [False, True])
def test_gaussian_kl_forward(dtype, reduction, with_grad):
    gen = _gen(1)
    mu, logvar = _input(gen, R, J, dtype=dtype), _input(gen, R, J, dtype=dtype)
    scale = 0.5
    out = _value_out(mu, reduction)
    grads = (torch.empty_like(mu), torch.empty_like(logvar)) if with_grad else (_empty(mu), _empty(mu))
    assert kernels.gaussian_kl_forward(out, *grads, mu, logvar, reduction, scale) is None
    m, v = _leaf(mu), _leaf(logvar)
    terms = 0.5 * (m.square() + v.exp() - 1 - v)
    kl = ref.gaussian_kl(m, v)
    want = scale * (kl if reduction == "rows" else kl.sum())
    _check(out, want, scale * _magnitude(terms, reduction), dtype, "kl")
    if with_grad:
        gm, gv = torch.autograd.grad(want.sum(), (m, v))
        _check(grads[0], gm, gm, dtype, "grad_mu")
        _check(grads[1], gv, _grad_magnitude(scale * v.exp()), dtype, "grad_logvar")
    else:
        assert all(g.numel() == 0 for g in grads)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["rows", "sum"])
def test_gaussian_kl_backward(dtype, reduction):
    gen = _gen(2)
    mu, logvar = _input(gen, R, J, dtype=dtype), _input(gen, R, J, dtype=dtype)
    scale = -1.5
    up = _upstream(mu, reduction, gen)
    gmu, gv = torch.empty_like(mu), torch.empty_like(logvar)
    kernels.gaussian_kl_backward(gmu, gv, up, mu, logvar, reduction, scale)
    m, v = _leaf(mu), _leaf(logvar)
    value = scale * (ref.gaussian_kl(m, v) if reduction == "rows" else ref.gaussian_kl(m, v).sum())
    want_mu, want_v = torch.autograd.grad((value * up.double().cpu()).sum(), (m, v))
    _check(gmu, want_mu, want_mu, dtype, "grad_mu")
    _check(gv, want_v, _grad_magnitude(scale * v.exp() * up.double().cpu().reshape(-1, 1)), dtype, "grad_logvar")


# --- Bernoulli ------------------------------------------------------------------------------------

# (probs, weight, pos_weight, target_grad, target kind)
BERNOULLI_VARIANTS = {
    "logits": (False, False, False, False, "float"),
    "logits-uint8": (False, False, False, False, "uint8"),
    "logits-bool": (False, False, False, False, "bool"),
    "logits-weight": (False, True, False, False, "float"),
    "logits-pos_weight-target_grad": (False, False, True, True, "float"),
    "logits-weight-pos_weight-target_grad": (False, True, True, True, "float"),
    "probs": (True, False, False, False, "float"),
    "probs-uint8": (True, False, False, False, "uint8"),
    "probs-weight-target_grad": (True, True, False, True, "float"),
}


def _bernoulli_inputs(variant: str, dtype: torch.dtype, seed: int, width: int = D):
    probs, weighted, pos_weighted, target_grad, target = BERNOULLI_VARIANTS[variant]
    gen = _gen(seed)
    inp = _input(gen, R, width, dtype=dtype, low=0.05, high=0.95) if probs else 3 * _input(gen, R, width, dtype=dtype)
    x = torch.rand(B, width, generator=gen, dtype=torch.float64)
    if target != "float":
        x = x > 0.5
    x = (x.to(torch.uint8) if target == "uint8" else x if target == "bool" else x.to(dtype)).to(DEVICE)
    vdt = _value_dtype(dtype)
    # broadcast views of a row of factors, as the drop-ins pass them (row stride 0)
    w = (0.5 + torch.rand(1, width, generator=gen)).to(vdt).to(DEVICE).expand(R, width) if weighted else None
    q = (0.5 + 2 * torch.rand(1, width, generator=gen)).to(vdt).to(DEVICE).expand(R, width) if pos_weighted else None
    return probs, inp, x, w, q, target_grad


def _bernoulli_reference(probs, inp, x, w, q):
    """``(leaf input, leaf (R, D) targets, elementwise ll)`` in float64: the reference module's
    terms, torch's BCE (negated) where a weight or pos_weight is given."""
    v = _leaf(inp)
    xr = _leaf(x.double().repeat(R // B, 1))  # row r reads data row r % B
    w64, q64 = (None if t is None else t.double().cpu() for t in (w, q))
    if w is None and q is None:
        elements = ref.bernoulli_probs_log_likelihood_elements if probs else ref.bernoulli_log_likelihood_elements
        return v, xr, elements(v, xr)
    if probs:
        return v, xr, -F.binary_cross_entropy(v, xr, weight=w64, reduction="none")
    return v, xr, -F.binary_cross_entropy_with_logits(v, xr, weight=w64, pos_weight=q64, reduction="none")


def _bernoulli_entries(probs: bool):
    if probs:
        return kernels.bernoulli_probs_log_likelihood_forward, kernels.bernoulli_probs_log_likelihood_backward
    return kernels.bernoulli_log_likelihood_forward, kernels.bernoulli_log_likelihood_backward


def _factors(probs, w, q) -> tuple:
    return (w,) if probs else (w, q)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["none", "rows", "sum"])
@pytest.mark.parametrize("variant", list(BERNOULLI_VARIANTS))
def test_bernoulli_forward(dtype, reduction, variant):
    probs, inp, x, w, q, target_grad = _bernoulli_inputs(variant, dtype, 3)
    forward, _ = _bernoulli_entries(probs)
    with_grad = reduction != "none"  # gradients in forward: those of a summed value
    scale = -0.7
    out = _value_out(inp, reduction)
    grad = torch.empty_like(inp) if with_grad else _empty(inp)
    grad_x = torch.empty_like(inp) if with_grad and target_grad else _empty(inp)
    assert forward(out, grad, grad_x, inp, x, *_factors(probs, w, q), reduction, scale) is None
    v, xr, ll = _bernoulli_reference(probs, inp, x, w, q)
    want = scale * _reduced(ll, reduction)
    _check(out, want, scale * _magnitude(ll, reduction), dtype, "value")
    if with_grad:
        gv, gx = torch.autograd.grad(want.sum(), (v, xr))
        _check(grad, gv, _grad_magnitude(gv), dtype, "grad")
        if target_grad:
            _check(grad_x, gx, _grad_magnitude(gx), dtype, "grad_x")
    assert grad.numel() == (inp.numel() if with_grad else 0)
    assert grad_x.numel() == (inp.numel() if with_grad and target_grad else 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["none", "rows", "sum"])
@pytest.mark.parametrize(
    "variant", ["logits", "logits-weight-pos_weight-target_grad", "probs-uint8", "probs-weight-target_grad"]
)
def test_bernoulli_backward(dtype, reduction, variant):
    probs, inp, x, w, q, target_grad = _bernoulli_inputs(variant, dtype, 4)
    _, backward = _bernoulli_entries(probs)
    scale = 1.25
    up = _upstream(inp, reduction, _gen(40))
    grad = torch.empty_like(inp)
    grad_x = torch.empty_like(inp) if target_grad else _empty(inp)
    assert backward(grad, grad_x, up, inp, x, *_factors(probs, w, q), reduction, scale) is None
    v, xr, ll = _bernoulli_reference(probs, inp, x, w, q)
    up64 = up.double().cpu()
    gv, gx = torch.autograd.grad((scale * _reduced(ll, reduction) * up64).sum(), (v, xr))
    _check(grad, gv, _grad_magnitude(gv, up, reduction), dtype, "grad")
    if target_grad:
        _check(grad_x, gx, _grad_magnitude(gx, up, reduction), dtype, "grad_x")


@pytest.mark.parametrize("probs", [False, True])
def test_bernoulli_target_gradient_alone(probs):
    """Only ``grad_x`` wanted (the input needs no gradient): the input's gradient goes to scratch."""
    variant = "probs-weight-target_grad" if probs else "logits-pos_weight-target_grad"
    probs, inp, x, w, q, _ = _bernoulli_inputs(variant, torch.float64, 5)
    forward, backward = _bernoulli_entries(probs)
    out, grad_x = _value_out(inp, "sum"), torch.empty_like(inp)
    forward(out, _empty(inp), grad_x, inp, x, *_factors(probs, w, q), "sum", -1.0)
    v, xr, ll = _bernoulli_reference(probs, inp, x, w, q)
    (gx,) = torch.autograd.grad(-ll.sum(), (xr,), retain_graph=True)
    _check(grad_x, gx, _grad_magnitude(gx), torch.float64, "grad_x (forward)")
    up = _upstream(inp, "rows", _gen(50))
    grad_x = torch.empty_like(inp)
    backward(_empty(inp), grad_x, up, inp, x, *_factors(probs, w, q), "rows", -1.0)
    (gx,) = torch.autograd.grad((-ll.sum(-1) * up.double().cpu()).sum(), (xr,))
    _check(grad_x, gx, _grad_magnitude(gx, up, "rows"), torch.float64, "grad_x (backward)")


@pytest.mark.parametrize("probs", [False, True])
def test_bernoulli_width_one(probs):
    """D = 1 (the drop-ins on 1-D inputs): the 1024-row tile and the width constant."""
    probs, inp, x, w, q, _ = _bernoulli_inputs("probs" if probs else "logits", torch.float32, 6, width=1)
    forward, _ = _bernoulli_entries(probs)
    out = _value_out(inp, "none")
    forward(out, _empty(inp), _empty(inp), inp, x, *_factors(probs, w, q), "none", 1.0)
    _, _, ll = _bernoulli_reference(probs, inp, x, w, q)
    _check(out, ll, ll.abs() + 1, torch.float32, "value")


@pytest.mark.filterwarnings("ignore:.*encountered in log:RuntimeWarning")  # the interpreter's numpy log of 2
def test_bernoulli_out_of_range_raises_on_cpu_tensors():
    if DEVICE != "cpu":
        pytest.skip("CUDA tensors report through the device-side assert (tests/test_triton_gpu_path.py)")
    x = torch.tensor([[0.0, 2.0]])
    out = torch.empty(())
    with pytest.raises(ValueError, match=r"target \(x\) must lie in \[0, 1\]"):
        kernels.bernoulli_log_likelihood_forward(
            out, _empty(x), _empty(x), torch.zeros(1, 2), x, None, None, "sum", 1.0
        )
    with pytest.raises(ValueError, match=r"input \(probs\) must lie in \[0, 1\]"):
        kernels.bernoulli_probs_log_likelihood_forward(out, _empty(x), _empty(x), x, x.clamp(0, 1), None, "rows", 1.0)


# --- Gaussian decoder -------------------------------------------------------------------------------


def _gaussian_inputs(dtype, shared, seed):
    gen = _gen(seed)
    x, mean = _input(gen, B, D, dtype=dtype), _input(gen, R, D, dtype=dtype)
    logvar = 0.5 * _input(gen, 1, dtype=dtype) if shared else 0.5 * _input(gen, R, D, dtype=dtype)
    return x, mean, logvar


def _gaussian_reference(x, mean, logvar):
    """``(leaf mean, leaf logvar, elementwise ll, |d ll / d v| bound 0.5 (1 + q))``, q = (x - m)^2 exp(-v)."""
    m, v = _leaf(mean), _leaf(logvar)
    xr = x.double().cpu().repeat(R // B, 1)
    v_ = v.reshape(()) if v.numel() == 1 else v
    q = ((xr - m).square() * (-v_).exp()).detach()
    return m, v, ref.gaussian_log_likelihood_elements(xr, m, v_), 0.5 * (1 + q)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["rows", "sum"])
@pytest.mark.parametrize("shared", [False, True], ids=["full", "shared"])
@pytest.mark.parametrize("with_grad", [False, True])
def test_gaussian_log_likelihood_forward(dtype, reduction, shared, with_grad):
    x, mean, logvar = _gaussian_inputs(dtype, shared, 7)
    scale = -0.25
    out = _value_out(mean, reduction)
    grads = (torch.empty_like(mean), torch.empty_like(logvar)) if with_grad else (_empty(mean), _empty(mean))
    assert kernels.gaussian_log_likelihood_forward(out, *grads, x, mean, logvar, reduction, scale) is None
    m, v, ll, dv_mag = _gaussian_reference(x, mean, logvar)
    want = scale * _reduced(ll, reduction)
    _check(out, want, scale * _magnitude(ll, reduction), dtype, "value")
    if with_grad:
        gm, gv = torch.autograd.grad(want.sum(), (m, v))
        _check(grads[0], gm, _grad_magnitude(gm), dtype, "grad_mean")
        mag = abs(scale) * dv_mag  # summed when shared
        _check(grads[1], gv, mag.sum().reshape(1) if shared else mag, dtype, "grad_logvar")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["rows", "sum"])
@pytest.mark.parametrize("shared", [False, True], ids=["full", "shared"])
def test_gaussian_log_likelihood_backward(dtype, reduction, shared):
    x, mean, logvar = _gaussian_inputs(dtype, shared, 8)
    scale = 2.0
    up = _upstream(mean, reduction, _gen(80))
    gm, gv = torch.empty_like(mean), torch.empty_like(logvar)
    kernels.gaussian_log_likelihood_backward(gm, gv, up, x, mean, logvar, reduction, scale)
    m, v, ll, dv_mag = _gaussian_reference(x, mean, logvar)
    up64 = up.double().cpu()
    want_m, want_v = torch.autograd.grad((scale * _reduced(ll, reduction) * up64).sum(), (m, v))
    _check(gm, want_m, _grad_magnitude(want_m, up, reduction), dtype, "grad_mean")
    mag = abs(scale) * dv_mag * (up64[:, None] if reduction == "rows" else up64)
    _check(gv, want_v, mag.sum().reshape(1) if shared else mag, dtype, "grad_logvar")


# --- reparameterize_kl ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eps_given", [False, True], ids=["seed", "eps"])
@pytest.mark.parametrize("with_kl, log_weights", [(False, False), (True, False), (False, True), (True, True)])
def test_reparameterize_kl_forward(dtype, eps_given, with_kl, log_weights):
    gen = _gen(9)
    mu, logvar = _input(gen, R, J, dtype=dtype), _input(gen, R, J, dtype=dtype)
    seed = 1234567
    if eps_given:
        eps = _input(gen, L, R, J, dtype=dtype)
    else:  # the stream the kernel draws: randn(seed, l*R*J + r*J + j), widened for float64
        eps = kernels.randn(seed, torch.arange(L * R * J, device=DEVICE)).view(L, R, J).to(dtype)
    vdt = _value_dtype(dtype)
    z = torch.empty(L, R, J, dtype=dtype, device=DEVICE)
    kl = torch.empty(R, dtype=vdt, device=DEVICE) if with_kl else torch.empty(0, dtype=vdt, device=DEVICE)
    log_q, log_p = (torch.empty((L, R) if log_weights else (0,), dtype=vdt, device=DEVICE) for _ in range(2))
    result = kernels.reparameterize_kl_forward(
        z, kl, log_q, log_p, mu, logvar, eps if eps_given else None, None if eps_given else seed, L
    )
    assert result is None
    m, v, e = mu.double().cpu(), logvar.double().cpu(), eps.double().cpu()
    want_z = ref.reparameterize(m, v, e)
    _check(z, want_z, m.abs() + (0.5 * v).exp() * e.abs(), dtype, "z")
    if with_kl:
        _check(kl, ref.gaussian_kl(m, v), (0.5 * (m.square() + v.exp() + 1 + v.abs())).sum(-1), dtype, "kl")
    else:
        assert kl.numel() == 0
    if log_weights:
        _check(log_q, ref.log_q(v, e), (1 + v.abs() + e.square()).sum(-1), dtype, "log_q")
        _check(log_p, ref.log_p(want_z), (1 + want_z.square()).sum(-1), dtype, "log_p")
    else:
        assert log_q.numel() == 0 and log_p.numel() == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eps_given", [False, True], ids=["seed", "eps"])
@pytest.mark.parametrize("given", ["z", "kl+log_q", "z+log_p", "all"])
def test_reparameterize_kl_backward(dtype, eps_given, given):
    gen = _gen(10)
    mu, logvar = _input(gen, R, J, dtype=dtype), _input(gen, R, J, dtype=dtype)
    seed = 99
    if eps_given:
        eps = _input(gen, L, R, J, dtype=dtype)
    else:
        eps = kernels.randn(seed, torch.arange(L * R * J, device=DEVICE)).view(L, R, J).to(dtype)
    names = ("z", "kl", "log_q", "log_p") if given == "all" else given.split("+")
    shapes = {"z": (L, R, J), "kl": (R,), "log_q": (L, R), "log_p": (L, R)}
    up = {n: (_input(gen, *shapes[n], dtype=dtype) if n in names else None) for n in shapes}
    gmu, gv = torch.empty_like(mu), torch.empty_like(logvar)
    kernels.reparameterize_kl_backward(
        gmu,
        gv,
        up["z"],
        up["kl"],
        up["log_q"],
        up["log_p"],
        mu,
        logvar,
        eps if eps_given else None,
        None if eps_given else seed,
        L,
    )
    m, v, e = _leaf(mu), _leaf(logvar), eps.double().cpu()
    z = ref.reparameterize(m, v, e)
    outputs = {"z": z, "kl": ref.gaussian_kl(m, v), "log_q": ref.log_q(v, e), "log_p": ref.log_p(z)}
    total = sum((outputs[n] * up[n].double().cpu()).sum() for n in names)
    want_mu, want_v = torch.autograd.grad(total, (m, v))

    # each gradient sums the samples' and the upstream terms: bounded by the sum of their magnitudes
    def a(n):
        return up[n].double().cpu().abs() if up[n] is not None else torch.zeros(shapes[n], dtype=torch.float64)

    m, v, z = m.detach(), v.detach(), z.detach()
    g_zl = a("z") + a("log_p")[..., None] * z.abs()  # |grad_z - grad_log_p z|, per sample
    mag_mu = g_zl.sum(0) + a("kl")[:, None] * m.abs()
    mag_v = (g_zl * 0.5 * e.abs() * (0.5 * v).exp()).sum(0) + 0.5 * a("log_q").sum(0)[:, None]
    mag_v = mag_v + a("kl")[:, None] * 0.5 * (v.exp() + 1)
    _check(gmu, want_mu, mag_mu, dtype, "grad_mu")
    _check(gv, want_v, mag_v, dtype, "grad_logvar")


# --- sgvb_loss ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("likelihood", ["bernoulli", "bernoulli_probs", "gaussian"])
@pytest.mark.parametrize("with_grad", [False, True])
def test_sgvb_loss_forward(dtype, likelihood, with_grad):
    gen = _gen(11)
    mu, logvar = _input(gen, B, J, dtype=dtype), _input(gen, B, J, dtype=dtype)
    x = _input(gen, B, D, dtype=dtype, low=0.0, high=1.0)
    if likelihood == "bernoulli_probs":
        decoded = _input(gen, R, D, dtype=dtype, low=0.05, high=0.95)
    else:
        decoded = 2 * _input(gen, R, D, dtype=dtype)
    decoder_logvar = 0.3 * _input(gen, 1, dtype=dtype) if likelihood == "gaussian" else None
    kl_scale, ll_scale = 0.5, 1.0 / B
    out = torch.empty((), dtype=_value_dtype(dtype), device=DEVICE)

    def slot(t, want=True):
        return torch.empty_like(t) if with_grad and want and t is not None else _empty(decoded)

    grads = (slot(decoded), slot(decoder_logvar), slot(mu), slot(logvar))
    result = kernels.sgvb_loss_forward(
        out, *grads, decoded, x, decoder_logvar, mu, logvar, likelihood, kl_scale, ll_scale
    )
    assert result is None
    d, m, v = _leaf(decoded), _leaf(mu), _leaf(logvar)
    xr = x.double().cpu().repeat(R // B, 1)
    kl_terms = 0.5 * (m.square() + v.exp() - 1 - v)
    if likelihood == "gaussian":
        dv = _leaf(decoder_logvar)
        ll = ref.gaussian_log_likelihood_elements(xr, d, dv.reshape(()))
        dv_mag = 0.5 * (1 + ((xr - d).square() * (-dv).exp()).detach())
    elif likelihood == "bernoulli_probs":
        ll = ref.bernoulli_probs_log_likelihood_elements(d, xr)
    else:
        ll = ref.bernoulli_log_likelihood_elements(d, xr)
    want = kl_scale * ref.gaussian_kl(m, v).sum() - ll_scale * ll.sum()
    _check(out, want, kl_scale * kl_terms.abs().sum() + ll_scale * ll.abs().sum(), dtype, "loss")
    if not with_grad:
        assert all(g.numel() == 0 for g in grads)
        return
    leaves = (d, m, v) + ((dv,) if likelihood == "gaussian" else ())
    wanted = torch.autograd.grad(want, leaves)
    _check(grads[0], wanted[0], _grad_magnitude(wanted[0]), dtype, "grad_decoded")
    _check(grads[2], wanted[1], wanted[1], dtype, "grad_mu")
    _check(grads[3], wanted[2], _grad_magnitude(kl_scale * v.exp()), dtype, "grad_logvar")
    if likelihood == "gaussian":
        _check(grads[1], wanted[3], (ll_scale * dv_mag).sum().reshape(1), dtype, "grad_decoder_logvar")
    else:
        assert grads[1].numel() == 0


# --- no rows, unwanted outputs ----------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2.0, float("nan")])
def test_no_rows_sum_is_scale_times_zero(scale):
    """R = 0: a 0-d sum is ``scale * 0`` (NaN for a NaN scale, so a 'mean' over nothing is NaN);
    a shared log-variance's gradient is 0; nothing else is written."""
    empty2 = torch.empty(0, 4, device=DEVICE)
    for call in (
        lambda out: kernels.gaussian_kl_forward(out, _empty(out), _empty(out), empty2, empty2, "sum", scale),
        lambda out: kernels.bernoulli_log_likelihood_forward(
            out, _empty(out), _empty(out), empty2, empty2, None, None, "sum", scale
        ),
        lambda out: kernels.bernoulli_probs_log_likelihood_forward(
            out, _empty(out), _empty(out), empty2, empty2, None, "sum", scale
        ),
    ):
        out = torch.full((), 7.0, device=DEVICE)
        call(out)
        torch.testing.assert_close(out, torch.tensor(0.0 * scale, device=DEVICE), equal_nan=True)
    out, gv = torch.full((), 7.0, device=DEVICE), torch.full((1,), 7.0, device=DEVICE)
    kernels.gaussian_log_likelihood_forward(
        out, _empty(out), gv, empty2, empty2, torch.zeros(1, device=DEVICE), "sum", scale
    )
    torch.testing.assert_close(out, torch.tensor(0.0 * scale, device=DEVICE), equal_nan=True)
    assert gv.tolist() == [0.0]


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_sgvb_loss_with_no_latent_rows_runs_the_entries_separately(likelihood):
    gen = _gen(12)
    decoded, x = _input(gen, R, D, dtype=torch.float64), _input(gen, B, D, dtype=torch.float64, low=0.0, high=1.0)
    mu = torch.empty(0, J, dtype=torch.float64, device=DEVICE)
    decoder_logvar = torch.zeros(1, dtype=torch.float64, device=DEVICE) if likelihood == "gaussian" else None
    out = torch.empty((), dtype=torch.float64, device=DEVICE)
    grad_decoded = torch.empty_like(decoded)
    grad_dv = torch.empty(1, dtype=torch.float64, device=DEVICE) if decoder_logvar is not None else _empty(decoded)
    kernels.sgvb_loss_forward(
        out,
        grad_decoded,
        grad_dv,
        torch.empty_like(mu),
        torch.empty_like(mu),
        decoded,
        x,
        decoder_logvar,
        mu,
        mu,
        likelihood,
        1.0,
        1.0,
    )
    d = _leaf(decoded)
    xr = x.double().cpu().repeat(R // B, 1)
    ll = (
        ref.gaussian_log_likelihood_elements(xr, d, torch.zeros((), dtype=torch.float64))
        if decoder_logvar is not None
        else ref.bernoulli_log_likelihood_elements(d, xr)
    )
    _check(out, -ll.sum(), ll.abs().sum(), torch.float64, "loss")
    (gd,) = torch.autograd.grad(-ll.sum(), (d,))
    _check(grad_decoded, gd, gd.abs() + 1, torch.float64, "grad_decoded")


def test_every_entry_of_the_contract_is_exported():
    names = [
        f"{op}_{direction}"
        for op, direction in itertools.product(
            (
                "reparameterize_kl",
                "gaussian_kl",
                "bernoulli_log_likelihood",
                "bernoulli_probs_log_likelihood",
                "gaussian_log_likelihood",
            ),
            ("forward", "backward"),
        )
    ] + ["sgvb_loss_forward", "randn"]
    assert all(callable(getattr(kernels, n)) for n in names)
    assert set(names) <= set(kernels.__all__)
    assert kernels.DTYPES[:2] == (torch.float32, torch.float64)
    assert {k.fn.__name__ for k in kernels.KERNELS} >= {
        "bernoulli_log_likelihood_fwd_kernel",
        "bernoulli_log_likelihood_bwd_kernel",
        "gaussian_log_likelihood_fwd_kernel",
        "gaussian_log_likelihood_bwd_kernel",
    }
